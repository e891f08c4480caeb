//! Live streams on the real binary: replay after a cursor then live, over SSE and
//! WebSocket; resume with Last-Event-ID; compaction and tombstone events; a slow
//! subscriber gets a gap; the limits answer 4xx; the history survives a restart; a
//! stopping node ends its streams.
mod common;

use std::time::{Duration, Instant};

use common::stream::{Sse, SseEvent, ws_next, ws_open};
use common::{Server, msg_body};

fn put(s: &Server, id: &str) {
    let r = s.req("PUT", &format!("/v1/contexts/{id}"), r#"{"token_budget":100000}"#);
    assert!(r.status == 201 || r.status == 200, "{}", String::from_utf8_lossy(&r.body));
}

fn append(s: &Server, id: &str, text: &str) -> u64 {
    let r = s.req("POST", &format!("/v1/contexts/{id}/messages"), &msg_body(text));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()["version"].as_u64().unwrap()
}

fn compact(s: &Server, id: &str) -> u64 {
    let body = r#"{"replacement":[{"role":"system","parts":[{"type":"text","text":"summary"}],"token_count":7}]}"#;
    let r = s.req("POST", &format!("/v1/contexts/{id}/compact"), body);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["version"].as_u64().unwrap()
}

fn versions(events: &[SseEvent]) -> Vec<u64> {
    events.iter().map(|e| e.data["version"].as_u64().unwrap()).collect()
}

fn stream_path(id: &str, query: &str) -> String {
    format!("/v1/contexts/{id}/stream{query}")
}

#[test]
fn sse_replays_after_the_cursor_then_goes_live_and_resumes_with_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    put(&s, "c");
    for i in 1..=3 {
        assert_eq!(append(&s, "c", &format!("m{i}")), i);
    }
    assert_eq!(compact(&s, "c"), 4);
    assert_eq!(append(&s, "c", "m4"), 5);

    let mut sse = Sse::open(s.port, &stream_path("c", "?cursor=1"), &[]).unwrap();
    let replayed = sse.take(4);
    assert_eq!(versions(&replayed), vec![2, 3, 4, 5]);
    assert_eq!(replayed.iter().map(|e| e.id.unwrap()).collect::<Vec<_>>(), vec![2, 3, 4, 5], "id: is the version");
    assert_eq!(replayed[0].data["type"], "message");
    assert_eq!(replayed[0].data["seq"], 2);
    assert_eq!(replayed[0].data["message"]["parts"][0]["text"], "m2");
    assert_eq!(replayed[0].data["message"]["seq"], 2, "the message as a read returns it");
    assert_eq!(replayed[2].data, serde_json::json!({"type": "compaction", "version": 4, "token_count": 7}));
    assert_eq!(replayed[3].data["seq"], 4, "after a compaction, version and seq differ");

    // Live: an append made now arrives on the open stream.
    assert_eq!(append(&s, "c", "live"), 6);
    let live = sse.next().unwrap();
    assert_eq!(
        (live.id, live.data["seq"].as_u64(), live.data["message"]["parts"][0]["text"].as_str()),
        (Some(6), Some(5), Some("live"))
    );

    // A browser's EventSource resumes with Last-Event-ID; the query parameter wins.
    let mut resumed = Sse::open(s.port, &stream_path("c", ""), &[("Last-Event-ID", "4")]).unwrap();
    assert_eq!(versions(&resumed.take(2)), vec![5, 6]);
    let mut both = Sse::open(s.port, &stream_path("c", "?cursor=5"), &[("Last-Event-ID", "1")]).unwrap();
    assert_eq!(versions(&both.take(1)), vec![6]);

    // No cursor: live from now.
    let mut fresh = Sse::open(s.port, &stream_path("c", ""), &[]).unwrap();
    assert_eq!(append(&s, "c", "later"), 7);
    assert_eq!(versions(&fresh.take(1)), vec![7]);
    // Every open stream got it, once.
    assert_eq!(versions(&sse.take(1)), vec![7]);
    assert_eq!(versions(&resumed.take(1)), vec![7]);
}

#[test]
fn a_tombstone_ends_the_stream_and_a_tombstoned_context_replays_then_ends() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &[]);
    put(&s, "t");
    append(&s, "t", "one");
    let mut live = Sse::open(s.port, &stream_path("t", ""), &[]).unwrap();
    assert_eq!(s.req("DELETE", "/v1/contexts/t", "").status, 204);
    let last = live.next().unwrap();
    assert_eq!(last.data, serde_json::json!({"type": "tombstoned", "version": 1}));
    assert!(live.next().is_none(), "the stream closes after tombstoned");

    let mut again = Sse::open(s.port, &stream_path("t", "?cursor=0"), &[]).unwrap();
    let events = again.take(2);
    assert_eq!(events[0].data["type"], "message");
    assert_eq!(events[1].data["type"], "tombstoned");
    assert!(again.next().is_none());
}

#[test]
fn websocket_replays_then_goes_live_pings_and_closes_a_silent_client() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(
        &dir.path().join("data"),
        &["--stream-ping-interval", "300ms", "--stream-silence-timeout", "1500ms"],
    );
    put(&s, "w");
    append(&s, "w", "a");
    compact(&s, "w");
    let mut ws = ws_open(s.port, &stream_path("w", "?cursor=0"));
    let first = ws_next(&mut ws).unwrap();
    assert_eq!((first["type"].as_str(), first["version"].as_u64()), (Some("message"), Some(1)));
    let second = ws_next(&mut ws).unwrap();
    assert_eq!((second["type"].as_str(), second["version"].as_u64()), (Some("compaction"), Some(2)));
    append(&s, "w", "b");
    // Pings may come first; the append arrives.
    let event = std::iter::from_fn(|| ws_next(&mut ws)).find(|e| e["type"] != "ping").unwrap();
    assert_eq!((event["version"].as_u64(), event["seq"].as_u64()), (Some(3), Some(2)));

    // A client that answers pings stays open past the silence timeout...
    let started = Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(2500) {
        let e = ws_next(&mut ws).expect("an answering client is not closed");
        assert_eq!(e["type"], "ping");
        pings += 1;
        ws.send(tungstenite::Message::text(r#"{"type":"pong"}"#)).unwrap();
    }
    assert!(pings >= 3, "pings every 300 ms: {pings}");
    // ...and one that does not is closed.
    let started = Instant::now();
    while ws_next(&mut ws).is_some() {}
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_subscriber_that_does_not_read_gets_a_gap_and_apply_never_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--stream-buffer-events", "4", "--write-timeout-ms", "60000"]);
    put(&s, "slow");
    let mut sse = Sse::open(s.port, &stream_path("slow", ""), &[]).unwrap();
    // 16 MB of events: more than the socket buffers take, with a reader that reads nothing.
    let big = "x".repeat(64 << 10);
    let started = Instant::now();
    for _ in 0..256 {
        append(&s, "slow", &big);
    }
    let appended_in = started.elapsed();
    let mut got = Vec::new();
    let gap = loop {
        let e = sse.next().expect("a gap event before the close");
        if e.data["type"] == "gap" {
            break e;
        }
        got.push(e.data["version"].as_u64().unwrap());
    };
    assert!(sse.next().is_none(), "closed after the gap");
    assert!(!got.is_empty() && got.len() < 256, "some events were sent, not all: {}", got.len());
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>(), "in order, without holes, up to the gap");
    assert_eq!(gap.data["expected"].as_u64(), Some(got.len() as u64 + 1), "{}", gap.data);
    assert!(gap.data["actual"].as_u64().unwrap() > got.len() as u64, "{}", gap.data);
    // Resuming from the last event received gives the rest.
    let mut resumed = Sse::open(s.port, &stream_path("slow", &format!("?cursor={}", got.len())), &[]).unwrap();
    let rest = resumed.take(256 - got.len());
    assert_eq!(versions(&rest), (got.len() as u64 + 1..=256).collect::<Vec<_>>());
    let metrics = String::from_utf8(s.req("GET", "/metrics", "").body).unwrap();
    assert!(metrics.contains("fleetlm_stream_gaps_total 1"), "{metrics}");
    eprintln!("256 appends of 64 KiB with a stalled subscriber: {appended_in:?}");
}

#[test]
fn bad_stream_requests_are_4xx_and_the_limits_are_429() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--streams-max-per-context", "1", "--api-key", "k"]);
    let auth = ("Authorization", "Bearer k");
    assert_eq!(s.req_h("PUT", "/v1/contexts/x", &[auth], r#"{"token_budget":10}"#).status, 201);
    Sse::open(s.port, &stream_path("x", ""), &[]).err().unwrap().assert_error(401, "unauthorized");
    Sse::open(s.port, &stream_path("nope", ""), &[auth]).err().unwrap().assert_error(404, "context_not_found");
    Sse::open(s.port, &stream_path("x", "?cursor=-1"), &[auth]).err().unwrap().assert_error(400, "invalid_query");
    Sse::open(s.port, &stream_path("x", ""), &[auth, ("Last-Event-ID", "abc")])
        .err()
        .unwrap()
        .assert_error(400, "invalid_query");
    s.req_h("GET", &stream_path("x", ""), &[auth], "").assert_error(406, "not_acceptable");
    let head = s.req_h("HEAD", &stream_path("x", ""), &[auth], "");
    assert_eq!((head.status, head.header("Allow")), (405, Some("GET")));
    let old_ws = [auth, ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "8")];
    let r = s.req_h("GET", &stream_path("x", ""), &old_ws, "");
    r.assert_error(426, "upgrade_required");
    assert_eq!(r.header("Sec-WebSocket-Version"), Some("13"));
    let no_key = [auth, ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13")];
    s.req_h("GET", &stream_path("x", ""), &no_key, "").assert_error(400, "invalid_stream_request");

    let _first = Sse::open(s.port, &stream_path("x", ""), &[auth]).unwrap();
    let refused = Sse::open(s.port, &stream_path("x", ""), &[auth]).err().unwrap();
    refused.assert_error(429, "too_many_streams");
    assert!(refused.header("Retry-After").is_some());
    drop(_first);
    // The slot comes back once the first stream has gone (the server notices at its
    // next write: an event).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(s.req_h("POST", "/v1/contexts/x/messages", &[auth], &msg_body("poke")).status, 201);
        match Sse::open(s.port, &stream_path("x", ""), &[auth]) {
            Ok(_) => break,
            Err(r) => r.assert_error(429, "too_many_streams"),
        }
        assert!(Instant::now() < deadline, "the stream slot never came back");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_burst_of_appends_during_the_replay_shows_no_gap_or_duplicate_on_any_core() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--cores", "2", "--shards", "4"]);
    let ids: Vec<String> = (0..6).map(|i| format!("burst-{i}")).collect();
    for id in &ids {
        put(&s, id);
        for i in 0..600 {
            append(&s, id, &format!("before {i}"));
        }
    }
    for id in &ids {
        let port = s.port;
        let writer_id = id.clone();
        let writer = std::thread::spawn(move || {
            for i in 0..300 {
                let r = common::request(
                    port,
                    "POST",
                    &format!("/v1/contexts/{writer_id}/messages"),
                    &[],
                    msg_body(&format!("during {i}")).as_bytes(),
                );
                assert_eq!(r.status, 201);
            }
        });
        // Replays in pages of at most 512 events while the writer appends.
        let mut sse = Sse::open(s.port, &stream_path(id, "?cursor=0"), &[]).unwrap();
        let events = sse.take(900);
        writer.join().unwrap();
        assert_eq!(versions(&events), (1..=900).collect::<Vec<_>>(), "{id}");
        assert_eq!(events[899].data["message"]["parts"][0]["text"], "during 299", "{id}");
    }
}

#[test]
fn compaction_history_survives_a_restart_and_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("data"), &["--shards", "1", "--snapshot-every-entries", "5"]);
    put(&s, "h");
    let mut expected = Vec::new();
    for round in 0..4 {
        for i in 0..3 {
            expected.push(("message", append(&s, "h", &format!("r{round} m{i}"))));
        }
        expected.push(("compaction", compact(&s, "h")));
    }
    s.restart();
    let mut sse = Sse::open(s.port, &stream_path("h", "?cursor=0"), &[]).unwrap();
    let events = sse.take(expected.len());
    let got: Vec<(&str, u64)> =
        events.iter().map(|e| (e.data["type"].as_str().unwrap(), e.data["version"].as_u64().unwrap())).collect();
    assert_eq!(got, expected);
}

#[test]
fn a_quiet_websocket_client_outlives_the_http_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    // One core: the stream runs on the very socket the HTTP loop read with its deadlines.
    let s = Server::start(&dir.path().join("data"), &["--cores", "1", "--idle-timeout-ms", "300"]);
    put(&s, "q");
    let mut ws = ws_open(s.port, &stream_path("q", ""));
    std::thread::sleep(Duration::from_millis(1500));
    append(&s, "q", "still listening");
    let e = ws_next(&mut ws).expect("the stream is still open");
    assert_eq!(e["message"]["parts"][0]["text"], "still listening");
}

/// A browser cannot send `Authorization` on `EventSource` or `WebSocket`: with an API key,
/// a stream token (asked for with the key) opens that context's stream, over SSE and
/// WebSocket, and nothing else: not another context's stream, not another route, not
/// after it expires, not altered.
#[test]
fn a_stream_token_opens_its_context_stream_only_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("data"), &["--api-key", "k"]);
    let auth = ("Authorization", "Bearer k");
    for id in ["t", "u"] {
        assert_eq!(s.req_h("PUT", &format!("/v1/contexts/{id}"), &[auth], r#"{"token_budget":1000}"#).status, 201);
    }
    assert_eq!(s.req_h("POST", "/v1/contexts/t/messages", &[auth], &msg_body("first")).status, 201);
    s.req("POST", "/v1/contexts/t/stream-token", "").assert_error(401, "unauthorized");
    let issued = s.req_h("POST", "/v1/contexts/t/stream-token", &[auth], "");
    assert_eq!(issued.status, 200, "{}", String::from_utf8_lossy(&issued.body));
    let j = issued.json();
    assert_eq!(j["ttl_secs"], 300);
    assert!(j["expires_at"].as_str().unwrap().ends_with('Z'), "{j}");
    let token = j["token"].as_str().unwrap().to_owned();

    // SSE and WebSocket with the token only: the history, then live.
    let mut sse = Sse::open(s.port, &stream_path("t", &format!("?cursor=0&token={token}")), &[]).unwrap();
    assert_eq!(sse.next().unwrap().data["message"]["parts"][0]["text"], "first");
    let mut ws = ws_open(s.port, &stream_path("t", &format!("?cursor=0&token={token}")));
    assert_eq!(ws_next(&mut ws).unwrap()["message"]["parts"][0]["text"], "first");
    assert_eq!(s.req_h("POST", "/v1/contexts/t/messages", &[auth], &msg_body("second")).status, 201);
    assert_eq!(sse.next().unwrap().data["message"]["parts"][0]["text"], "second");
    assert_eq!(ws_next(&mut ws).unwrap()["message"]["parts"][0]["text"], "second");

    // Nothing else.
    let refused = |path: &str, why: &str| {
        let r = Sse::open(s.port, path, &[]).err().expect("refused");
        r.assert_error(401, "unauthorized");
        let message = r.json()["message"].as_str().unwrap().to_owned();
        assert!(message.contains(why), "{path}: {message}");
    };
    refused(&stream_path("u", &format!("?token={token}")), "not issued for this context");
    refused(&stream_path("t", &format!("?token={}", token.replacen("v1.", "v1.9", 1))), "not issued");
    refused(&stream_path("t", "?token=nonsense"), "malformed");
    refused(&stream_path("t", ""), "API key");
    s.req("GET", &format!("/v1/contexts/t/tail?token={token}"), "").assert_error(401, "unauthorized");

    let short = s.req_h("POST", "/v1/contexts/t/stream-token", &[auth], r#"{"ttl_secs":1}"#).json();
    let short = short["token"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_millis(2100));
    refused(&stream_path("t", &format!("?token={short}")), "expired");

    for body in [r#"{"ttl_secs":0}"#, r#"{"ttl_secs":86401}"#, r#"{"ttl":5}"#, "[1]", "{"] {
        s.req_h("POST", "/v1/contexts/t/stream-token", &[auth], body).assert_error(400, "invalid_json");
    }
}

#[test]
fn sigterm_ends_every_stream_then_the_node_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("data"), &["--shutdown-grace-ms", "3000"]);
    put(&s, "a");
    put(&s, "b");
    assert_eq!(append(&s, "a", "m1"), 1);
    // One stream live, one over WebSocket from its history.
    let mut sse = Sse::open(s.port, &stream_path("a", ""), &[]).unwrap();
    let mut ws = ws_open(s.port, &stream_path("a", "?cursor=0"));
    assert_eq!(ws_next(&mut ws).unwrap()["version"], 1);
    assert_eq!(append(&s, "a", "m2"), 2);
    assert_eq!(versions(&sse.take(1)), vec![2]);
    assert_eq!(ws_next(&mut ws).unwrap()["version"], 2);

    s.signal(libc::SIGTERM);
    let last = sse.next().expect("a final event before the close");
    assert_eq!(last.data, serde_json::json!({"type": "end", "reason": "shutdown"}));
    assert!(sse.next().is_none(), "the stream closes after its end event");
    let mut ws_last = ws_next(&mut ws).expect("a final event before the close");
    // A WebSocket stream may have sent a ping first.
    while ws_last["type"] == "ping" {
        ws_last = ws_next(&mut ws).expect("a final event before the close");
    }
    assert_eq!(ws_last, serde_json::json!({"type": "end", "reason": "shutdown"}));

    // During the grace period: not ready, answers close their connection, no new stream.
    let ready = s.req("GET", "/health/ready", "");
    assert_eq!((ready.status, ready.json()["status"].as_str()), (503, Some("shutting_down")));
    let read = s.req("GET", "/v1/contexts/b", "");
    assert_eq!(read.status, 200, "requests are still answered");
    assert_eq!(read.header("Connection"), Some("close"));
    match Sse::open(s.port, &stream_path("b", ""), &[]) {
        Ok(_) => panic!("a stream opened on a stopping node"),
        Err(refused) => refused.assert_error(503, "unavailable"),
    }

    let status = s.wait_exit(Duration::from_secs(20)).expect("the node exits after its grace period");
    assert!(status.success(), "exit status {status}");
}
