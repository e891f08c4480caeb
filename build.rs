//! Embeds the API's OpenAPI document (docs/openapi.yaml) as JSON, served at
//! `GET /v1/openapi.json`: a YAML error fails the build instead of a request.
fn main() {
    let source = "docs/openapi.yaml";
    println!("cargo:rerun-if-changed={source}");
    let text = std::fs::read_to_string(source).unwrap_or_else(|e| panic!("reading {source}: {e}"));
    let value: serde_json::Value =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{source} is not valid YAML: {e}"));
    let out = std::path::Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR set by cargo")).join("openapi.json");
    std::fs::write(&out, serde_json::to_vec(&value).expect("JSON"))
        .unwrap_or_else(|e| panic!("{}: {e}", out.display()));
}
