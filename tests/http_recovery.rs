//! Durability through the real process: a restart keeps everything, and `kill -9` in
//! the middle of a concurrent write load loses nothing that was acknowledged (201).
mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{Server, connect, msg_body, raw_request, read_response};

#[test]
fn restart_keeps_every_context_and_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("data"), &[]);
    for c in 0..20 {
        s.req("PUT", &format!("/v1/contexts/ctx-{c}"), r#"{"token_budget":1000}"#);
        for i in 0..5 {
            assert_eq!(
                s.req("POST", &format!("/v1/contexts/ctx-{c}/messages"), &msg_body(&format!("{c}/{i}"))).status,
                201
            );
        }
    }
    s.restart();
    for c in 0..20 {
        let page = s.req("GET", &format!("/v1/contexts/ctx-{c}/messages"), "").json();
        let texts: Vec<&str> =
            page["messages"].as_array().unwrap().iter().map(|m| m["parts"][0]["text"].as_str().unwrap()).collect();
        assert_eq!(texts, (0..5).map(|i| format!("{c}/{i}")).collect::<Vec<_>>());
    }
}

#[test]
fn kill_9_during_writes_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Server::start(&dir.path().join("data"), &[]);
    let contexts = 8;
    for c in 0..contexts {
        assert_eq!(s.req("PUT", &format!("/v1/contexts/k{c}"), r#"{"token_budget":100000}"#).status, 201);
    }
    // Writers append until their connection breaks; every 201 is recorded as (seq → text).
    let acked: Arc<Mutex<HashMap<(usize, u64), String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let port = s.port;
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || {
                let c = w % contexts;
                let mut conn = connect(port);
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let text = format!("w{w}-{i}");
                    let req =
                        raw_request("POST", &format!("/v1/contexts/k{c}/messages"), &[], msg_body(&text).as_bytes());
                    if conn.write_all(&req).is_err() {
                        return;
                    }
                    match read_response(&mut conn, false) {
                        Some(r) if r.status == 201 => {
                            let seq = r.json()["seq"].as_u64().unwrap();
                            let prev = acked.lock().unwrap().insert((c, seq), text);
                            assert!(prev.is_none(), "seq {seq} of k{c} acknowledged twice");
                        }
                        _ => return,
                    }
                }
            })
        })
        .collect();
    // Let the load run, then crash the server in the middle of it.
    while acked.lock().unwrap().len() < 400 {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    s.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    s.restart();
    for c in 0..contexts {
        let page = s.req("GET", &format!("/v1/contexts/k{c}/messages?limit=1000"), "").json();
        let messages = page["messages"].as_array().unwrap();
        let seqs: Vec<u64> = messages.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "k{c}: seqs contiguous from 1");
        let stored: HashMap<u64, &str> =
            messages.iter().map(|m| (m["seq"].as_u64().unwrap(), m["parts"][0]["text"].as_str().unwrap())).collect();
        for ((ac, seq), text) in acked.iter().filter(|((ac, _), _)| *ac == c) {
            assert_eq!(
                stored.get(seq).copied(),
                Some(text.as_str()),
                "k{ac} seq {seq} was acknowledged and must be there"
            );
        }
    }
    // And the server takes new writes.
    assert_eq!(s.req("POST", "/v1/contexts/k0/messages", &msg_body("after")).status, 201);
}

/// A restarted node never answers a `consistency=local` read from an older state than
/// it had: until its replica has re-applied what was committed, such reads get 503.
/// Polled from the moment the restarted process accepts connections: every 200 shows
/// every acknowledged append. (A single node re-applies before it answers anyway: the
/// cluster test `a_restarted_follower_never_reads_backwards` shows a replica behind.)
#[test]
fn local_reads_after_a_restart_never_go_backwards() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--shards", "1", "--snapshot-every-entries", "100000"];
    let mut s = Server::start(&data, &args);
    assert_eq!(s.req("PUT", "/v1/contexts/r", r#"{"token_budget":100000000}"#).status, 201);
    let n = 3000;
    let mut c = connect(s.port);
    for i in 0..n {
        c.write_all(&raw_request("POST", "/v1/contexts/r/messages", &[], msg_body(&format!("m{i}")).as_bytes()))
            .unwrap();
        if i % 50 == 49 {
            for _ in 0..50 {
                assert_eq!(read_response(&mut c, false).unwrap().status, 201);
            }
        }
    }
    let port = s.port;
    s.kill9();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fleetlm"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(&data)
        .args(["--segment-size-bytes", "8388608"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let (mut answered, mut refused) = (0, 0);
    loop {
        assert!(std::time::Instant::now() < deadline, "not ready within 60 s");
        match common::try_request(port, "GET", "/v1/contexts/r/tail?limit=1&consistency=local") {
            Some(r) if r.status == 200 => {
                answered += 1;
                assert_eq!(r.json()["messages"][0]["seq"], n, "a local read went backwards after the restart");
                if common::try_request(port, "GET", "/health/ready").is_some_and(|r| r.status == 200) {
                    break;
                }
            }
            Some(r) => {
                assert!(r.status == 503 || r.status == 404, "{} {}", r.status, String::from_utf8_lossy(&r.body));
                refused += 1;
            }
            None => {}
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(answered > 0, "answered {answered}, refused {refused}");
}
