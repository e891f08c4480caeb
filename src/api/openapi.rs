//! The API's OpenAPI 3.1 document (docs/openapi.yaml, made JSON by build.rs), served at
//! `GET /v1/openapi.json`, and the tests that keep it and the server in step.

/// The document, as JSON.
pub const DOCUMENT: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::DOCUMENT;
    use crate::api::routes::ROUTES;

    fn document() -> Value {
        serde_json::from_str(DOCUMENT).expect("the embedded document is JSON")
    }

    #[test]
    fn the_document_lists_exactly_the_routes_the_server_serves() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut in_spec = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                if ["get", "put", "post", "patch", "delete", "head"].contains(&method.as_str()) {
                    in_spec.insert((path.clone(), method.to_uppercase()));
                }
            }
        }
        let served: BTreeSet<(String, String)> =
            ROUTES.iter().flat_map(|(p, ms)| ms.iter().map(move |m| (p.to_string(), m.to_string()))).collect();
        assert_eq!(in_spec, served, "docs/openapi.yaml and the route table differ");
    }

    /// Every error code the server's source can answer with (`error(<status>, "<code>"`,
    /// `bad("<code>"`, and the `code()` of the error enums) appears in the document's
    /// `ErrorCode`, and the document lists no code the server never sends.
    #[test]
    fn every_error_code_the_server_emits_is_in_the_document() {
        let doc = document();
        let listed: BTreeSet<String> = doc["components"]["schemas"]["ErrorCode"]["enum"]
            .as_array()
            .expect("ErrorCode enum")
            .iter()
            .map(|v| v.as_str().expect("code").to_owned())
            .collect();
        let mut emitted = BTreeSet::new();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut dirs = vec![root];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("src").flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    codes_in(&std::fs::read_to_string(&path).expect("source"), &mut emitted);
                }
            }
        }
        assert!(emitted.len() >= 20, "the scan found too few codes: {emitted:?}");
        let missing: Vec<_> = emitted.difference(&listed).collect();
        assert!(missing.is_empty(), "codes the server emits, missing from docs/openapi.yaml: {missing:?}");
        let unused: Vec<_> = listed.difference(&emitted).collect();
        assert!(unused.is_empty(), "codes in docs/openapi.yaml that the server never emits: {unused:?}");
    }

    /// The codes of one source file (see above).
    fn codes_in(source: &str, out: &mut BTreeSet<String>) {
        let compact: String = source.split_whitespace().collect::<Vec<_>>().join(" ");
        let literal_after = |text: &str| -> Option<String> {
            let rest = text.strip_prefix('"')?;
            let end = rest.find('"')?;
            let code = &rest[..end];
            (!code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')).then(|| code.to_owned())
        };
        // `error(503, "unavailable"` and `bad("invalid_query"`.
        for (i, _) in compact.match_indices("error(") {
            let rest = &compact[i + "error(".len()..];
            if let Some((status, after)) = rest.split_once(',')
                && status.trim().len() == 3
                && status.trim().bytes().all(|b| b.is_ascii_digit())
                && let Some(code) = literal_after(after.trim_start())
            {
                out.insert(code);
            }
        }
        for (i, _) in compact.match_indices("bad(") {
            if let Some(code) = literal_after(&compact[i + "bad(".len()..]) {
                out.insert(code);
            }
        }
        // The `code()` of an error enum: its arms' literals.
        for (i, _) in compact.match_indices("pub fn code(&self) -> &'static str {") {
            let body = &compact[i..];
            let body = &body[..body.find("} }").unwrap_or(body.len())];
            for (j, _) in body.match_indices("=> \"") {
                if let Some(code) = literal_after(&body[j + 3..]) {
                    out.insert(code);
                }
            }
        }
    }
}
