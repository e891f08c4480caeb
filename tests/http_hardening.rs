//! What a hostile or careless client sends is refused with a 4xx and stops nothing, on
//! the real binary: bodies that grow when rendered, token counts near u64::MAX, metadata
//! past its limit, oversized chunked framing, and the HTTP details (100-continue, Allow,
//! Bearer in any case, too many headers, an empty API key).
mod common;

use std::io::Write;

use common::{Server, connect, msg_body, read_response};

fn put(s: &Server, id: &str, body: &str) {
    let r = s.req("PUT", &format!("/v1/contexts/{id}"), body);
    assert!(r.status == 201 || r.status == 200, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn a_message_that_renders_past_the_log_record_limit_is_413_and_the_shard_lives_on() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--shards", "1"]);
    put(&s, "a", r#"{"token_budget":1000}"#);
    // ≈1 MiB on the wire, ≈3.8 MB once validation renders 9e15 as 9000000000000000.0.
    let numbers = vec!["9e15"; 200_000].join(",");
    let body = format!(r#"{{"message":{{"role":"user","parts":[{{"type":"data","n":[{numbers}]}}]}}}}"#);
    assert!(body.len() < 1 << 20);
    let r = s.req("POST", "/v1/contexts/a/messages", &body);
    r.assert_error(413, "payload_too_large");
    assert!(r.json()["message"].as_str().unwrap().contains("record limit"), "{}", r.json());
    // The shard was not stopped: it takes the next append, and the node stays ready.
    let ok = s.req("POST", "/v1/contexts/a/messages", &msg_body("still here"));
    assert_eq!(ok.status, 201, "{}", String::from_utf8_lossy(&ok.body));
    assert_eq!(ok.json()["seq"], 1);
    assert_eq!(s.req("GET", "/health/ready", "").status, 200);
}

#[test]
fn token_counts_near_u64_max_saturate_and_metadata_has_a_limit() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    put(&s, "t", r#"{"token_budget":1000}"#);
    let huge = format!(r#"{{"message":{{"role":"user","parts":[],"token_count":{}}}}}"#, u64::MAX);
    for seq in 1..=2 {
        let r = s.req("POST", "/v1/contexts/t/messages", &huge);
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["seq"], seq);
    }
    let w = s.req("GET", "/v1/contexts/t/context", "").json();
    assert_eq!(w["token_count"], u64::MAX, "the sum saturates: {w}");
    assert_eq!(s.req("GET", "/health/ready", "").status, 200);

    let big = format!(r#"{{"metadata":{{"k":"{}"}}}}"#, "x".repeat(40_000));
    assert_eq!(s.req("PATCH", "/v1/contexts/t/metadata", &big).status, 200);
    let r = s.req("PATCH", "/v1/contexts/t/metadata", &big.replace("\"k\"", "\"k2\""));
    r.assert_error(400, "invalid_metadata");
    assert!(s.req("GET", "/v1/contexts/t", "").json()["metadata"].get("k2").is_none(), "nothing changed");
    let r =
        s.req("PUT", "/v1/contexts/u", &format!(r#"{{"token_budget":9,"metadata":{{"k":"{}"}}}}"#, "x".repeat(70_000)));
    r.assert_error(400, "invalid_context_config");
}

#[test]
fn http_details_100_continue_allow_bearer_case_and_header_count() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--api-key", "sekret"]);
    let auth = [("Authorization", "bearer sekret")];
    assert_eq!(s.req_h("PUT", "/v1/contexts/c", &auth, r#"{"token_budget":100}"#).status, 201);

    // Expect: 100-continue: the server asks for the body, then answers.
    let body = msg_body("after continue");
    let mut c = connect(s.port);
    let head = format!(
        "POST /v1/contexts/c/messages HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer sekret\r\n\
         Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    let interim = read_response(&mut c, true).expect("an interim answer");
    assert_eq!(interim.status, 100);
    c.write_all(body.as_bytes()).unwrap();
    let done = read_response(&mut c, false).expect("the answer");
    assert_eq!(done.status, 201, "{}", String::from_utf8_lossy(&done.body));

    // 405 names what is allowed.
    let r = s.req_h("POST", "/v1/contexts/c/tail", &auth, "");
    r.assert_error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET, HEAD"));

    // A wrong key of the right length is still wrong.
    assert_eq!(s.req_h("GET", "/v1/contexts/c", &[("Authorization", "Bearer sekreT")], "").status, 401);

    // Too many headers: 431 that says so.
    let many: Vec<(String, String)> = (0..100).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let r = s.req_h("GET", "/health/live", &many, "");
    r.assert_error(431, "headers_too_large");
    assert!(r.json()["message"].as_str().unwrap().contains("headers"), "{}", r.json());
}

#[test]
fn chunked_framing_beyond_its_limit_is_413() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    // 1-byte chunks with 1000-byte extensions: ~70 KiB of framing for 70 bytes of body.
    let mut req = b"PUT /v1/contexts/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..70 {
        req.extend_from_slice(format!("1;{}\r\n ", "e".repeat(1000)).as_bytes());
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let mut c = connect(s.port);
    let _ = c.write_all(&req);
    read_response(&mut c, false).expect("an answer").assert_error(413, "payload_too_large");
    // Unbounded trailers likewise.
    let mut req = b"PUT /v1/contexts/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
    for i in 0..3000 {
        req.extend_from_slice(format!("X-T{i}: {}\r\n", "t".repeat(20)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    let mut c = connect(s.port);
    let _ = c.write_all(&req);
    read_response(&mut c, false).expect("an answer").assert_error(413, "payload_too_large");
    assert_eq!(common::request(s.port, "GET", "/health/ready", &[], b"").status, 200);
}

#[test]
fn a_shard_holds_at_most_its_limit_of_contexts() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--shards", "1", "--contexts-max-per-shard", "2"]);
    put(&s, "one", r#"{"token_budget":10}"#);
    put(&s, "two", r#"{"token_budget":10}"#);
    let r = s.req("PUT", "/v1/contexts/three", r#"{"token_budget":10}"#);
    r.assert_error(409, "too_many_contexts");
    put(&s, "two", r#"{"token_budget":20}"#); // an existing one can still change
    assert_eq!(s.req("GET", "/v1/contexts/three", "").status, 404);
}

#[test]
fn an_empty_api_key_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetlm"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--api-key", ""])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--api-key"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn read_answers_are_bounded_pages_go_on_and_an_oversized_window_is_413() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--response-max-bytes", "4096"]);
    put(&s, "r", r#"{"token_budget":100000000}"#);
    for i in 1..=50 {
        let r = s.req("POST", "/v1/contexts/r/messages", &msg_body(&format!("{i:03}{}", "x".repeat(200))));
        assert_eq!(r.status, 201);
    }
    // Replay: fewer than asked, next_seq continues, and paging reaches every message once.
    let (mut seen, mut from, mut pages) = (Vec::new(), 1, 0);
    loop {
        let page = s.req("GET", &format!("/v1/contexts/r/messages?from_seq={from}&limit=1000"), "");
        assert_eq!(page.status, 200);
        assert!(page.body.len() <= 4096 + 100, "a page of {} bytes", page.body.len());
        let j = page.json();
        let msgs = j["messages"].as_array().unwrap();
        if msgs.is_empty() {
            break;
        }
        seen.extend(msgs.iter().map(|m| m["seq"].as_u64().unwrap()));
        from = j["next_seq"].as_u64().unwrap();
        pages += 1;
    }
    assert_eq!(seen, (1..=50).collect::<Vec<_>>());
    assert!(pages > 1, "the limit cut the pages");
    // Tail: the newest that fit; paging backwards with offset reaches the start.
    let (mut seen, mut offset) = (Vec::new(), 0);
    loop {
        let j = s.req("GET", &format!("/v1/contexts/r/tail?offset={offset}&limit=1000"), "").json();
        let msgs = j["messages"].as_array().unwrap().clone();
        if msgs.is_empty() {
            break;
        }
        offset += msgs.len();
        seen.splice(0..0, msgs.iter().map(|m| m["seq"].as_u64().unwrap()));
    }
    assert_eq!(seen, (1..=50).collect::<Vec<_>>());
    // The manual window holds all 50 (> 4 KiB): refused, with what to do instead.
    let w = s.req("GET", "/v1/contexts/r/context", "");
    w.assert_error(413, "window_too_large");
    assert!(w.json()["message"].as_str().unwrap().contains("compact"), "{}", w.json());
}

#[test]
fn a_client_that_never_reads_its_answers_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--write-timeout-ms", "300"]);
    put(&s, "big", r#"{"token_budget":100000000}"#);
    for i in 0..100 {
        let r = s.req("POST", "/v1/contexts/big/messages", &msg_body(&format!("{i}{}", "y".repeat(20_000))));
        assert_eq!(r.status, 201);
    }
    // 40 pipelined replays of ≈2 MB each, never read: far more than the socket buffers.
    let mut c = connect(s.port);
    for _ in 0..40 {
        c.write_all(&common::raw_request("GET", "/v1/contexts/big/messages?limit=1000", &[], b"")).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    // The server gave up on the connection: what was buffered drains, then it ends.
    let mut complete = 0;
    while read_response(&mut c, false).is_some_and(|r| r.status == 200) {
        complete += 1;
    }
    assert!(complete < 40, "all {complete} answers arrived: the connection was not cut off");
    assert_eq!(s.req("GET", "/health/ready", "").status, 200, "the node is fine");
}

#[test]
fn answers_nobody_reads_are_bounded_node_wide() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--response-buffer-max-bytes", "5000000"]);
    put(&s, "big", r#"{"token_budget":100000000}"#);
    for i in 0..100 {
        let r = s.req("POST", "/v1/contexts/big/messages", &msg_body(&format!("{i}{}", "y".repeat(20_000))));
        assert_eq!(r.status, 201);
    }
    // Three clients pipeline ≈2 MB replays and never read: each keeps one answer held.
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut c = connect(s.port);
        for _ in 0..10 {
            c.write_all(&common::raw_request("GET", "/v1/contexts/big/messages?limit=1000", &[], b"")).unwrap();
        }
        idle.push(c);
    }
    let busy = |s: &Server| {
        let r = s.req("GET", "/v1/contexts/big/messages?limit=1000", "");
        r.status == 503 && r.json()["message"].as_str().unwrap().contains("have not read yet")
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !busy(&s) {
        assert!(std::time::Instant::now() < deadline, "the budget never filled");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Small answers are not held back, and the node is ready.
    assert_eq!(s.req("GET", "/v1/contexts/big/tail?limit=1", "").status, 200);
    assert_eq!(s.req("GET", "/health/ready", "").status, 200);
    // The slow readers go: their answers are dropped and the budget comes back.
    drop(idle);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = s.req("GET", "/v1/contexts/big/messages?limit=1000", "");
        if r.status == 200 {
            assert_eq!(r.json()["messages"].as_array().unwrap().len(), 100);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the budget was not given back: {}", r.status);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// An append whose text is `bytes` long (a body over the rate-limited size).
fn large_append(tag: &str, bytes: usize) -> String {
    msg_body(&format!("{tag}{}", "z".repeat(bytes)))
}

#[test]
fn large_bodies_are_paced_to_the_byte_rate() {
    // 100 KiB/s on one core; the burst is one largest body (256 KiB here). Each 190 KB
    // body costs 1.9 s of the rate: sent one after the other, the second and third wait
    // ≈ 1.9 s less the time the previous one took (well under 2 s, the longest wait),
    // and from the first to the last at least (3 × 190 KB − 256 KiB) / 100 KiB/s ≈ 3.1 s
    // pass, however fast the machine.
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        &["--cores", "1", "--body-max-bytes", "262144", "--large-body-bytes-per-sec", "102400"],
    );
    put(&s, "big", r#"{"token_budget":100000000}"#);
    let started = std::time::Instant::now();
    for i in 0..3 {
        let r = s.req("POST", "/v1/contexts/big/messages", &large_append(&format!("{i}"), 190_000));
        assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    }
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_millis(3_000), "3 large appends in {took:?}: not paced");
    // Small bodies are not paced, and the node is ready.
    assert_eq!(s.req("POST", "/v1/contexts/big/messages", &msg_body("small")).status, 201);
    assert_eq!(s.req("GET", "/health/ready", "").status, 200);
    let metrics = String::from_utf8(s.req("GET", "/metrics", "").body).unwrap();
    let waited = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fleetlm_latency_microseconds_count{name=\"large_body.wait\"} "))
        .expect("large_body.wait in /metrics");
    assert!(waited.parse::<u64>().unwrap() >= 2, "{waited}");
}

#[test]
fn large_bodies_past_the_longest_wait_get_429_with_retry_after() {
    // 64 KiB/s: after one 1 MiB body (the burst), the next 1 MiB would wait ≈ 16 s,
    // far past the 2 s wait limit, however long the first one took.
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--cores", "1", "--large-body-bytes-per-sec", "65536"]);
    put(&s, "big", r#"{"token_budget":100000000}"#);
    let first = s.req("POST", "/v1/contexts/big/messages", &large_append("a", 1_000_000));
    assert_eq!(first.status, 201, "{}", String::from_utf8_lossy(&first.body));
    let r = s.req("POST", "/v1/contexts/big/messages", &large_append("b", 1_000_000));
    r.assert_error(429, "rate_limited");
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=16).contains(&retry), "Retry-After {retry}");
    // Nothing of the refused body was stored; small appends go on.
    let ok = s.req("POST", "/v1/contexts/big/messages", &msg_body("small"));
    assert_eq!(ok.status, 201);
    assert_eq!(ok.json()["seq"], 2, "{}", ok.json());
    assert_eq!(s.req("GET", "/health/ready", "").status, 200);
}
