//! Live streams on a real 3-node cluster: every node serves streams from its own
//! replica (followers included), and a client whose node is killed resumes elsewhere
//! with its cursor and receives every event exactly once.
mod common;

use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::msg_body;
use common::stream::Sse;

fn put(c: &Cluster, node: usize, id: &str) {
    let r = c.req(node, "PUT", &format!("/v1/contexts/{id}"), r#"{"token_budget":100000}"#).expect("answer");
    assert!(r.status == 201 || r.status == 200, "PUT {id}: {} {:?}", r.status, String::from_utf8_lossy(&r.body));
}

/// Appends through node `node` until acknowledged (the key makes retries safe).
fn append(c: &Cluster, node: usize, id: &str, text: &str) -> u64 {
    let key = format!("key-{text}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let headers = [("Idempotency-Key", key.as_str())];
        if let Some(r) = c.req_h(node, "POST", &format!("/v1/contexts/{id}/messages"), &headers, &msg_body(text))
            && r.status == 201
        {
            return r.json()["version"].as_u64().unwrap();
        }
        assert!(Instant::now() < deadline, "append {text} never acknowledged");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Opens a stream on node `node`, retrying while its replica is not ready for it (503).
fn open(c: &Cluster, node: usize, path: &str, headers: &[(&str, &str)]) -> Sse {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Sse::open(c.nodes[node].http_port, path, headers) {
            Ok(sse) => return sse,
            Err(r) => assert!(r.status == 503 && Instant::now() < deadline, "{} {:?}", r.status, r.body),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_node_streams_from_its_own_replica() {
    let dir = tempfile::tempdir().unwrap();
    let c = Cluster::start(dir.path(), 3, 1, &[]);
    put(&c, 0, "fan");
    append(&c, 0, "fan", "before");
    let mut streams: Vec<Sse> = (0..3).map(|n| open(&c, n, "/v1/contexts/fan/stream?cursor=0", &[])).collect();
    for (n, s) in streams.iter_mut().enumerate() {
        let e = s.next().unwrap();
        assert_eq!((e.id, e.data["message"]["parts"][0]["text"].as_str()), (Some(1), Some("before")), "node {n}");
    }
    // Appended through one node (forwarded to the leader if it is not), seen on all three.
    for (i, via) in [2usize, 1, 0].into_iter().enumerate() {
        let text = format!("via {via}");
        let version = append(&c, via, "fan", &text);
        assert_eq!(version, i as u64 + 2);
        for (n, s) in streams.iter_mut().enumerate() {
            let e = s.next().unwrap();
            assert_eq!(
                (e.id, e.data["message"]["parts"][0]["text"].as_str()),
                (Some(version), Some(text.as_str())),
                "node {n}"
            );
        }
    }
}

#[test]
fn a_client_whose_node_is_killed_resumes_elsewhere_and_gets_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(dir.path(), 3, 1, &[]);
    put(&c, 0, "k");
    const N: u64 = 300;
    let mut sse = open(&c, 2, "/v1/contexts/k/stream?cursor=0", &[]);
    let writer = {
        let port = c.nodes[0].http_port;
        std::thread::spawn(move || {
            for i in 1..=N {
                let key = format!("key-{i}");
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let r = common::try_request_full(
                        port,
                        "POST",
                        "/v1/contexts/k/messages",
                        &[("Idempotency-Key", &key)],
                        msg_body(&format!("m{i}")).as_bytes(),
                    );
                    if r.is_some_and(|r| r.status == 201) {
                        break;
                    }
                    assert!(Instant::now() < deadline, "append {i} never acknowledged");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })
    };
    let mut seen: Vec<u64> = Vec::new();
    let mut node = 2;
    while seen.last().copied().unwrap_or(0) < N {
        match sse.next() {
            Some(e) => {
                assert_eq!(e.data["type"], "message", "{}", e.data);
                seen.push(e.id.unwrap());
                if seen.len() == 100 && node == 2 {
                    c.kill9(2);
                }
            }
            None => {
                // The node went away: resume on another with the last version received.
                node = 1;
                let last = seen.last().copied().unwrap_or(0).to_string();
                sse = open(&c, node, "/v1/contexts/k/stream", &[("Last-Event-ID", &last)]);
            }
        }
    }
    writer.join().unwrap();
    assert_eq!(node, 1, "the stream moved to node 2's replacement");
    assert_eq!(seen, (1..=N).collect::<Vec<_>>(), "every version exactly once, in order");
}
