//! Disk stays bounded through the real process: one shard writes far more than the
//! core's log may keep while another shard on the same core sits idle with an old
//! entry. Snapshots purge the busy shard; reclamation copies the idle one's entries
//! forward; old segments are deleted. After `kill -9` and a restart everything reads
//! back and the log is still small.
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{msg_body, request, try_request_full};
use fleetlm::shard::placement::shard_of;

const SEGMENT_BYTES: u64 = 1 << 20;
const SOFT_MAX: usize = 3;

/// The server process, killed when dropped (also when an assertion fails).
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(data: &Path, port: u16, soft_max: usize) -> Node {
    start_with(data, port, soft_max, 100)
}

fn start_with(data: &Path, port: u16, soft_max: usize, snapshot_every: u64) -> Node {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(data.with_extension("log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_fleetlm"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(data)
        .args(["--cores", "1", "--shards", "2", "--segment-size-bytes", &SEGMENT_BYTES.to_string()])
        .args(["--body-segment-size-bytes", "4194304", "--body-max-bytes", "65536"])
        .args(["--snapshot-every-entries", &snapshot_every.to_string(), "--log-keep-entries", "10"])
        .args(["--wal-segments-soft-max", &soft_max.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("start fleetlm");
    let deadline = Instant::now() + Duration::from_secs(60);
    while try_request_full(port, "GET", "/health/ready", &[], b"").is_none_or(|r| r.status != 200) {
        assert!(
            Instant::now() < deadline,
            "not ready: {}",
            std::fs::read_to_string(data.with_extension("log")).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Node(child)
}

fn segments(data: &Path) -> usize {
    let logs = data.join("wal-1").join("0");
    std::fs::read_dir(logs)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "wal"))
        .count()
}

/// Waits (bounded) until the log holds at most `max` segments; the count at the end.
fn settle(data: &Path, max: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(15);
    while segments(data) > max && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    segments(data)
}

fn run(soft_max: usize, appends: usize) -> (usize, tempfile::TempDir, u16, Node, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = common::free_ports(1);
    let child = start(&data, port, soft_max);
    // One context per shard (both on the only core).
    let idle = (0..).map(|i| format!("idle-{i}")).find(|c| shard_of(c, 2) == 0).unwrap();
    let busy = (0..).map(|i| format!("busy-{i}")).find(|c| shard_of(c, 2) == 1).unwrap();
    for c in [&idle, &busy] {
        assert_eq!(request(port, "PUT", &format!("/v1/contexts/{c}"), &[], br#"{"token_budget":1000000}"#).status, 201);
    }
    assert_eq!(
        request(port, "POST", &format!("/v1/contexts/{idle}/messages"), &[], msg_body("the idle one").as_bytes())
            .status,
        201
    );
    let filler = "x".repeat(2000);
    for i in 0..appends {
        let body = msg_body(&format!("{i} {filler}"));
        assert_eq!(request(port, "POST", &format!("/v1/contexts/{busy}/messages"), &[], body.as_bytes()).status, 201);
    }
    (settle(&data, soft_max + 2), dir, port, child, idle, busy)
}

#[test]
fn an_idle_shard_does_not_pin_the_log_and_everything_survives_a_restart() {
    // ≈ 2.3 KB per log entry: 3000 appends write ≈ 7 segments of 1 MiB.
    let appends = 3000;
    let (left, dir, port, child, idle, busy) = run(SOFT_MAX, appends);
    let data = dir.path().join("data");
    assert!(left <= SOFT_MAX + 2, "{left} segments of {SEGMENT_BYTES} bytes left (soft max {SOFT_MAX})");
    drop(child);
    let _child = start(&data, port, SOFT_MAX);
    let get = |path: &str| request(port, "GET", path, &[], b"").json();
    assert_eq!(get(&format!("/v1/contexts/{busy}"))["last_seq"], appends as u64);
    assert_eq!(get(&format!("/v1/contexts/{idle}"))["last_seq"], 1);
    let page = get(&format!("/v1/contexts/{idle}/messages"));
    assert_eq!(page["messages"][0]["parts"][0]["text"], "the idle one");
    let tail = get(&format!("/v1/contexts/{busy}/tail?limit=1"));
    assert!(tail["messages"][0]["parts"][0]["text"].as_str().unwrap().starts_with(&format!("{} ", appends - 1)));
    assert!(segments(&data) <= SOFT_MAX + 2, "{} segments after the restart", segments(&data));
}

/// A shard too large to be copied forward that stops taking writes would never reach
/// its next snapshot by count and would pin every later segment: the core asks it for a
/// snapshot (and the purge after it), and then its remainder is copied forward. Here no
/// shard ever snapshots by count (every 100,000 entries), so only that request frees
/// the log.
#[test]
fn a_large_shard_that_pins_the_log_is_asked_for_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = common::free_ports(1);
    let _node = start_with(&data, port, SOFT_MAX, 100_000);
    let idle = (0..).map(|i| format!("idle-{i}")).find(|c| shard_of(c, 2) == 0).unwrap();
    let busy = (0..).map(|i| format!("busy-{i}")).find(|c| shard_of(c, 2) == 1).unwrap();
    for c in [&idle, &busy] {
        assert_eq!(
            request(port, "PUT", &format!("/v1/contexts/{c}"), &[], br#"{"token_budget":100000000}"#).status,
            201
        );
    }
    let filler = "x".repeat(2000);
    let append = |c: &str, i: usize| {
        let body = msg_body(&format!("{i} {filler}"));
        assert_eq!(request(port, "POST", &format!("/v1/contexts/{c}/messages"), &[], body.as_bytes()).status, 201);
    };
    // The idle shard: ≈ 0.7 MiB of live log, more than half a segment.
    for i in 0..300 {
        append(&idle, i);
    }
    // The busy one writes ≈ 7 segments, then, after a pause in which the core asks for
    // snapshots, ≈ 3 more (rolls that copy the now small remainders forward).
    for i in 0..3000 {
        append(&busy, i);
    }
    std::thread::sleep(Duration::from_secs(3));
    for i in 3000..4500 {
        append(&busy, i);
    }
    let left = settle(&data, SOFT_MAX + 2);
    assert!(left <= SOFT_MAX + 2, "{left} segments of {SEGMENT_BYTES} bytes left (soft max {SOFT_MAX})");
    let get = |path: &str| request(port, "GET", path, &[], b"").json();
    assert_eq!(get(&format!("/v1/contexts/{idle}"))["last_seq"], 300);
    assert_eq!(get(&format!("/v1/contexts/{busy}"))["last_seq"], 4500);
}
