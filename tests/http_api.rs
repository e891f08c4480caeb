//! The real binary over HTTP: every endpoint and error code of docs/api.md (but /stream and
//! /v1/cluster*, which tests/cluster.rs covers), framing edge cases, concurrency,
//! idempotency, and the Prometheus text of /metrics.
mod common;

use std::io::Write;

use common::{Server, connect, msg_body, raw_request, read_response, request};
use serde_json::json;

fn server() -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    (dir, s)
}

#[test]
fn context_lifecycle_and_every_endpoint() {
    let (_d, s) = server();
    let put = s.req("PUT", "/v1/contexts/support-123", r#"{"token_budget":1000,"metadata":{"project":"support"}}"#);
    assert_eq!(put.status, 201);
    let j = put.json();
    assert_eq!(
        (j["version"].as_u64(), j["last_seq"].as_u64(), j["status"].as_str()),
        (Some(0), Some(0), Some("active"))
    );
    assert!(j["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(s.req("PUT", "/v1/contexts/support-123", r#"{"token_budget":2000}"#).status, 200);
    let got = s.req("GET", "/v1/contexts/support-123", "");
    assert_eq!((got.status, got.json()["token_budget"].as_u64()), (200, Some(2000)));
    assert_eq!(got.json()["metadata"], json!({"project": "support"}));
    let head = request(s.port, "HEAD", "/v1/contexts/support-123", &[], b"");
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(head.header("content-length").unwrap(), got.body.len().to_string());

    let a = s.req("POST", "/v1/contexts/support-123/messages", &msg_body("How do I deploy this?"));
    assert_eq!(a.status, 201);
    assert_eq!(a.json(), json!({"seq": 1, "version": 1, "token_estimate": 6}));
    let q = s.req("POST", "/v1/contexts/support-123/messages?if_version=1", &msg_body("second"));
    assert_eq!(q.json()["seq"], 2);
    let stale = s.req("POST", "/v1/contexts/support-123/messages?if_version=1", &msg_body("x"));
    stale.assert_error(409, "conflict");
    assert_eq!(stale.json()["message"], "Context version changed (expected 1, found 2)");

    let tail = s.req("GET", "/v1/contexts/support-123/tail?limit=1", "").json();
    assert_eq!(tail["messages"][0]["seq"], 2);
    let replay = s.req("GET", "/v1/contexts/support-123/messages?from_seq=1&limit=1", "").json();
    assert_eq!((replay["last_seq"].as_u64(), replay["next_seq"].as_u64()), (Some(2), Some(2)));
    let window = s.req("GET", "/v1/contexts/support-123/context?budget_tokens=5", "").json();
    assert_eq!((window["version"].as_u64(), window["needs_compaction"].as_bool()), (Some(2), Some(true)));
    s.req("GET", "/v1/contexts/support-123/context?if_version=1", "").assert_error(409, "conflict");

    let patch = s.req("PATCH", "/v1/contexts/support-123/metadata", r#"{"metadata":{"project":null,"tier":"gold"}}"#);
    assert_eq!((patch.status, patch.json()["metadata"].clone()), (200, json!({"tier": "gold"})));

    let compact = s.req(
        "POST",
        "/v1/contexts/support-123/compact",
        r#"{"replacement":[{"role":"system","parts":[{"type":"text","text":"sum"}]}],"if_version":2}"#,
    );
    assert_eq!((compact.status, compact.json()), (200, json!({"version": 3})));
    let w = s.req("GET", "/v1/contexts/support-123/context", "").json();
    assert_eq!(w["segments"], json!([{"type":"summary","count":1},{"type":"live","from_seq":null,"to_seq":null}]));

    let del = s.req("DELETE", "/v1/contexts/support-123", "");
    assert_eq!((del.status, del.body.len()), (204, 0));
    assert_eq!(s.req("DELETE", "/v1/contexts/support-123", "").status, 204);
    s.req("POST", "/v1/contexts/support-123/messages", &msg_body("x")).assert_error(409, "context_tombstoned");
    assert_eq!(s.req("GET", "/v1/contexts/support-123/tail", "").status, 200, "reads keep working");
    s.req("DELETE", "/v1/contexts/never", "").assert_error(404, "context_not_found");
    s.req("GET", "/v1/contexts/never", "").assert_error(404, "context_not_found");
    s.req("GET", "/v1/contexts/never/tail", "").assert_error(404, "context_not_found");
    assert_eq!(s.req("GET", "/health/live", "").json(), json!({"status": "ok"}));
    // This node's view of the cluster: a cluster of one, every shard led by node 1.
    let cluster = s.req("GET", "/v1/cluster", "").json();
    assert_eq!(cluster["members"], json!([1]));
    let shards = cluster["shards"].as_array().unwrap();
    assert!(!shards.is_empty());
    for sh in shards {
        assert_eq!(sh["leader"], 1, "{sh}");
        assert!(
            sh["commit_index"].as_u64().unwrap() >= sh["applied_index"].as_u64().unwrap_or(0)
                || sh["applied_index"].is_null()
        );
    }
    let applied: u64 = shards.iter().map(|sh| sh["applied_index"].as_u64().unwrap_or(0)).sum();
    assert!(applied >= 10, "the writes above were applied somewhere: {cluster}");
}

#[test]
fn bad_input_gets_the_right_4xx() {
    let (_d, s) = server();
    s.req("PUT", "/v1/contexts/c", r#"{"token_budget":100}"#);
    s.req("PUT", "/v1/contexts/c", "").assert_error(400, "invalid_json");
    s.req("PUT", "/v1/contexts/c", "{nope").assert_error(400, "invalid_json");
    s.req("PUT", "/v1/contexts/c", r#"{"token_budget":100.0}"#).assert_error(400, "invalid_context_config");
    s.req("PUT", "/v1/contexts/c", r#"{"token_budget":1,"policy":{"strategy":"x"}}"#)
        .assert_error(400, "invalid_context_config");
    s.req("PUT", "/v1/contexts/a%2Fb", r#"{"token_budget":1}"#).assert_error(400, "invalid_id");
    s.req("PUT", "/v1/contexts/a%01b", r#"{"token_budget":1}"#).assert_error(400, "invalid_id");
    s.req("PUT", "/v1/contexts/a%zz", r#"{"token_budget":1}"#).assert_error(400, "invalid_id");
    let long = "x".repeat(257);
    s.req("PUT", &format!("/v1/contexts/{long}"), r#"{"token_budget":1}"#).assert_error(400, "invalid_id");
    assert_eq!(s.req("PUT", "/v1/contexts/a+b%20c", r#"{"token_budget":1}"#).json()["id"], "a+b c");
    s.req("GET", "/v1/contexts/c/tail?limit=0", "").assert_error(400, "invalid_query");
    s.req("GET", "/v1/contexts/c/tail?limit=x", "").assert_error(400, "invalid_query");
    s.req("GET", "/v1/contexts/c/messages?limit=-1", "").assert_error(400, "invalid_query");
    s.req("GET", "/v1/contexts/c/context?budget_tokens=0", "").assert_error(400, "invalid_query");
    s.req("POST", "/v1/contexts/c/messages", r#"{"message":{"role":"","parts":[]}}"#)
        .assert_error(400, "invalid_message");
    s.req("POST", "/v1/contexts/c/messages", r#"{"message":{"role":"u","parts":[],"token_count":-1}}"#)
        .assert_error(400, "invalid_message");
    s.req("PATCH", "/v1/contexts/c/metadata", r#"{"metadata":[]}"#).assert_error(400, "invalid_metadata");
    s.req("POST", "/v1/contexts/c/compact", r#"{"replacement":{}}"#).assert_error(400, "invalid_replacement");
    s.req("POST", "/v1/contexts/c/compact", r#"{"replacement":[{"parts":[]}]}"#)
        .assert_error(400, "invalid_replacement");
    let key = "k".repeat(129);
    s.req_h("POST", "/v1/contexts/c/messages", &[("Idempotency-Key", &key)], &msg_body("x"))
        .assert_error(400, "invalid_idempotency_key");
    s.req("GET", "/v1/nothing", "").assert_error(404, "not_found");
    s.req("GET", "/", "").assert_error(404, "not_found");
    s.req("POST", "/v1/contexts/c", "{}").assert_error(405, "method_not_allowed");
    s.req("PUT", "/v1/contexts/c/tail", "{}").assert_error(405, "method_not_allowed");
    // Limits: a 2 MiB body, a 20 KiB head.
    let big = "x".repeat(2 << 20);
    s.req("POST", "/v1/contexts/c/messages", &big).assert_error(413, "payload_too_large");
    let h = "y".repeat(20 << 10);
    s.req_h("GET", "/v1/contexts/c", &[("X-Big", &h)], "").assert_error(431, "headers_too_large");
    // Malformed framing: a 400, then the connection is closed.
    let mut c = connect(s.port);
    c.write_all(b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n").unwrap();
    read_response(&mut c, false).unwrap().assert_error(400, "bad_request");
    assert!(read_response(&mut c, false).is_none(), "closed after an unrecoverable framing error");
}

#[test]
fn api_key_guards_v1_but_not_health() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--api-key", "sekret"]);
    s.req("GET", "/v1/contexts/c", "").assert_error(401, "unauthorized");
    s.req_h("GET", "/v1/contexts/c", &[("Authorization", "Bearer wrong")], "").assert_error(401, "unauthorized");
    s.req_h("GET", "/v1/contexts/c", &[("Authorization", "Bearer sekret")], "").assert_error(404, "context_not_found");
    assert_eq!(s.req("GET", "/health/live", "").status, 200);
}

#[test]
fn pipelined_and_split_requests_are_answered_in_order() {
    let (_d, s) = server();
    s.req("PUT", "/v1/contexts/p", r#"{"token_budget":100000}"#);
    let mut c = connect(s.port);
    let mut all = Vec::new();
    // 2 KiB messages: the tail of all ten is larger than a coalesced response and is
    // written from its own buffer between two small answers of the same batch.
    let filler = "x".repeat(2048);
    for i in 0..10 {
        all.extend(raw_request("POST", "/v1/contexts/p/messages", &[], msg_body(&format!("m{i}{filler}")).as_bytes()));
    }
    all.extend(raw_request("GET", "/v1/contexts/p/tail?limit=1000", &[], b""));
    all.extend(raw_request("GET", "/v1/contexts/p/tail?limit=1", &[], b""));
    c.write_all(&all).unwrap();
    for i in 1..=10u64 {
        let r = read_response(&mut c, false).unwrap();
        assert_eq!((r.status, r.json()["seq"].as_u64()), (201, Some(i)));
    }
    let big = read_response(&mut c, false).unwrap();
    assert!(big.body.len() > 16 << 10, "{} bytes", big.body.len());
    let seqs: Vec<u64> =
        big.json()["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<u64>>());
    assert_eq!(read_response(&mut c, false).unwrap().json()["messages"][0]["seq"], 10);
    // One request trickled in byte by byte on a keep-alive connection, chunked body.
    let body = msg_body("split");
    let mut req = b"POST /v1/contexts/p/messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend(format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).as_bytes());
    for b in &req {
        c.write_all(&[*b]).unwrap();
    }
    assert_eq!(read_response(&mut c, false).unwrap().json()["seq"], 11);
}

#[test]
fn concurrent_appends_get_contiguous_seqs_and_idempotent_retries_append_once() {
    let (_d, s) = server();
    s.req("PUT", "/v1/contexts/hot", r#"{"token_budget":100000}"#);
    let port = s.port;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = connect(port);
                (0..25)
                    .map(|i| {
                        c.write_all(&raw_request(
                            "POST",
                            "/v1/contexts/hot/messages",
                            &[],
                            msg_body(&format!("t{t}-{i}")).as_bytes(),
                        ))
                        .unwrap();
                        read_response(&mut c, false).unwrap().json()["seq"].as_u64().unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>(), "contiguous, no duplicates");

    let first =
        s.req_h("POST", "/v1/contexts/hot/messages?if_version=200", &[("Idempotency-Key", "abc")], &msg_body("once"));
    assert_eq!(first.status, 201);
    let retry =
        s.req_h("POST", "/v1/contexts/hot/messages?if_version=200", &[("Idempotency-Key", "abc")], &msg_body("once"));
    assert_eq!((retry.status, retry.json()), (201, first.json()), "the first outcome, although its guard is stale now");
    assert_eq!(s.req("GET", "/v1/contexts/hot", "").json()["last_seq"], 201);
}

#[test]
fn slow_and_idle_connections_are_cut_off() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--request-read-timeout-ms", "300", "--idle-timeout-ms", "600"]);
    let closed_within = |c: &mut std::net::TcpStream, secs: u64| {
        c.set_read_timeout(Some(std::time::Duration::from_secs(secs))).unwrap();
        let mut b = [0u8; 64];
        match c.read(&mut b) {
            Ok(0) => true, // closed by the server
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut), // reset
            Ok(_) => false,
        }
    };
    // A request that starts and never finishes.
    let mut slow = connect(s.port);
    slow.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n").unwrap();
    let t0 = std::time::Instant::now();
    assert!(closed_within(&mut slow, 10), "a stalled request is cut off");
    assert!(t0.elapsed() < std::time::Duration::from_secs(5));
    // A keep-alive connection that answers once, then idles.
    let mut idle = connect(s.port);
    idle.write_all(&raw_request("GET", "/health/live", &[], b"")).unwrap();
    assert_eq!(read_response(&mut idle, false).unwrap().status, 200);
    let t0 = std::time::Instant::now();
    assert!(closed_within(&mut idle, 10), "an idle connection is closed");
    assert!(t0.elapsed() >= std::time::Duration::from_millis(400), "not before the idle timeout");
}

#[test]
fn metrics_count_requests_by_route_and_status_without_the_api_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--api-key", "sekret", "--shards", "2", "--cores", "1"]);
    let auth = [("Authorization", "Bearer sekret")];
    assert_eq!(s.req_h("PUT", "/v1/contexts/m", &auth, r#"{"token_budget":100}"#).status, 201);
    for i in 0..3 {
        assert_eq!(s.req_h("POST", "/v1/contexts/m/messages", &auth, &msg_body(&format!("m{i}"))).status, 201);
    }
    assert_eq!(s.req("GET", "/v1/contexts/m", "").status, 401);
    let r = s.req("GET", "/metrics", "");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").is_some_and(|c| c.starts_with("text/plain; version=0.0.4")));
    let text = String::from_utf8(r.body).unwrap();
    let value = |series: &str| -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
    };
    assert_eq!(value(r#"fleetlm_http_requests_total{route="append",status="201"}"#), Some(3.0), "{text}");
    assert_eq!(value(r#"fleetlm_http_requests_total{route="put_context",status="201"}"#), Some(1.0));
    assert_eq!(value(r#"fleetlm_http_requests_total{route="get_context",status="401"}"#), Some(1.0));
    assert_eq!(value(r#"fleetlm_latency_microseconds_count{name="http.append"}"#), Some(3.0));
    assert!(
        value(r#"fleetlm_latency_microseconds{name="write.raft_commit",quantile="0.99"}"#).is_some_and(|v| v > 0.0)
    );
    assert!(value("fleetlm_wal_syncs_total").is_some_and(|v| v >= 1.0));
    // A single node leads both of its shards.
    assert_eq!(value(r#"fleetlm_raft_is_leader{shard="0"}"#), Some(1.0));
    assert_eq!(value(r#"fleetlm_raft_leader{shard="1"}"#), Some(1.0));
    assert_eq!(value("fleetlm_ready"), Some(1.0));
    assert_eq!(value("fleetlm_shards_stopped"), Some(0.0));
    assert!(value("fleetlm_disk_free_bytes").is_some_and(|v| v > 0.0), "{text}");
    // The default reserve: one 8 MiB WAL segment per core (each core has one log) and one
    // 4 MiB body segment per shard (the test server's sizes); this server has 1 core.
    let shards = text.lines().filter(|l| l.starts_with("fleetlm_raft_term{")).count() as f64;
    assert_eq!(shards, 2.0);
    assert_eq!(value("fleetlm_disk_reserve_bytes"), Some(shards * f64::from(4u32 << 20) + f64::from(8u32 << 20)));
    // One log, so the per-core sync counters have one core.
    assert!(value(r#"fleetlm_wal_syncs_total{core="0"}"#).is_some_and(|v| v >= 1.0), "{text}");
    assert!(value(r#"fleetlm_wal_records_synced_total{core="0"}"#).is_some_and(|v| v >= 1.0), "{text}");
    // Every sample line is `name{labels} number` or `name number`.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l:?}"));
        assert!(v.parse::<f64>().is_ok(), "bad value in {l:?}");
    }
    assert_eq!(s.req("POST", "/metrics", "").status, 405);
}

/// The routing rule of `GET /v1/cluster`, written out here as a client would (FNV-1a 64
/// of the id's bytes mod the shard count, then mod the cores).
fn core_of_context(id: &str, shards: u64, cores: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in id.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % shards) % cores
}

#[test]
fn per_core_ports_serve_their_contexts_and_the_routing_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::free_ports(2);
    let core_listen = format!("127.0.0.1:{base}");
    let s = Server::start(&dir.path().join("data"), &["--cores", "2", "--shards", "4", "--core-listen", &core_listen]);
    let routing = s.req("GET", "/v1/cluster", "").json()["routing"].clone();
    assert_eq!(routing["core_listen"], json!(core_listen), "{routing}");
    assert_eq!((routing["shard_count"].as_u64(), routing["cores"].as_u64()), (Some(4), Some(2)), "{routing}");
    let port_of = |id: &str| base + core_of_context(id, 4, 2) as u16;
    let mut on_core = [0; 2];
    for i in 0..8 {
        let id = format!("ctx-{i}");
        let own = port_of(&id);
        on_core[usize::from(own - base)] += 1;
        let put = request(own, "PUT", &format!("/v1/contexts/{id}"), &[], br#"{"token_budget":1000}"#);
        assert_eq!(put.status, 201, "{}", String::from_utf8_lossy(&put.body));
        let body = msg_body(&format!("hello {i}"));
        let appended = request(own, "POST", &format!("/v1/contexts/{id}/messages"), &[], body.as_bytes());
        assert_eq!(appended.status, 201);
        // The other core's port serves it too (across cores), and so does the shared port.
        let other = base + (1 - (own - base));
        let tail = request(other, "GET", &format!("/v1/contexts/{id}/tail?limit=1"), &[], b"");
        assert_eq!(tail.json()["messages"][0]["parts"][0]["text"], json!(format!("hello {i}")));
        assert_eq!(s.req("GET", &format!("/v1/contexts/{id}"), "").json()["last_seq"], 1);
    }
    assert!(on_core.iter().all(|&n| n > 0), "the 8 contexts all hash to one core: {on_core:?}");
}

#[test]
fn core_ports_that_overlap_the_http_port_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_ports(3);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetlm"))
        .args(["serve", "--cores", "2", "--listen", &format!("127.0.0.1:{}", port + 1), "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--core-listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("overlap"), "{}", String::from_utf8_lossy(&out.stderr));
}
