//! A node short of disk space refuses writes before proposing them — 503 with
//! `Retry-After` and a message that says why — and goes on serving reads; with the
//! reserve met again (here: restarted with a reserve the disk has) it takes writes, and
//! nothing written before is lost. (Proposing them instead let a full disk stop a shard's
//! Raft core for good: `src/shard/disk.rs`.)
mod common;

use common::{Server, msg_body};

fn texts(s: &Server, id: &str) -> Vec<String> {
    let page = s.req("GET", &format!("/v1/contexts/{id}/messages"), "").json();
    page["messages"].as_array().unwrap().iter().map(|m| m["parts"][0]["text"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn writes_wait_for_disk_space_while_reads_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start(&data, &[]);
    assert_eq!(s.req("PUT", "/v1/contexts/c", r#"{"token_budget":1000}"#).status, 201);
    assert_eq!(s.req("POST", "/v1/contexts/c/messages", &msg_body("kept")).status, 201);
    s.kill9();

    // More reserve than any disk has free.
    let mut s = Server::start(&data, &["--disk-reserve-bytes", &u64::MAX.to_string()]);
    for (method, path, body) in [
        ("POST", "/v1/contexts/c/messages", msg_body("refused")),
        ("PUT", "/v1/contexts/d", r#"{"token_budget":1000}"#.to_owned()),
        ("PATCH", "/v1/contexts/c/metadata", r#"{"metadata":{"k":1}}"#.to_owned()),
        ("DELETE", "/v1/contexts/c", String::new()),
    ] {
        let r = s.req(method, path, &body);
        assert_eq!(r.status, 503, "{method} {path}");
        let v = r.json();
        assert_eq!(v["error"], "unavailable");
        assert!(v["message"].as_str().unwrap().contains("disk is nearly full"), "{v}");
        assert!(r.header("retry-after").is_some(), "{method} {path}: no Retry-After");
    }
    assert_eq!(texts(&s, "c"), ["kept"], "reads are served");
    assert_eq!(s.req("GET", "/v1/contexts/c", "").json()["version"], 1, "nothing refused was applied");
    assert_eq!(s.req("GET", "/health/ready", "").status, 200, "the node stays ready: reads work");
    s.kill9();

    let s = Server::start(&data, &["--disk-reserve-bytes", "0"]);
    let r = s.req("POST", "/v1/contexts/c/messages", &msg_body("again"));
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["seq"], 2);
    assert_eq!(texts(&s, "c"), ["kept", "again"]);
}
