//! Contexts leave memory and come back, through the real process: with a hot limit of
//! 3 contexts per shard and frequent snapshots, 40 contexts are written, most of them
//! become cold (read from their checkpoint records), and every read, every idempotent
//! retry and every further append answers as if all were in memory — before and after
//! a kill -9 (after which every context starts cold).
mod common;

use common::{Server, msg_body};

const CONTEXTS: usize = 40;

fn hot_contexts(s: &Server) -> u64 {
    let cluster = s.req("GET", "/v1/cluster", "").json();
    cluster["shards"].as_array().unwrap().iter().map(|sh| sh["hot_contexts"].as_u64().unwrap()).sum()
}

fn check_all(s: &Server, messages: u64) {
    for c in 0..CONTEXTS {
        let page = s.req("GET", &format!("/v1/contexts/p{c}/messages?from_seq=1&limit=100"), "").json();
        let texts: Vec<&str> =
            page["messages"].as_array().unwrap().iter().map(|m| m["parts"][0]["text"].as_str().unwrap()).collect();
        let want: Vec<String> = (1..=messages).map(|i| format!("p{c}-{i}")).collect();
        assert_eq!(texts, want, "context p{c}");
        let window = s.req("GET", &format!("/v1/contexts/p{c}/context"), "").json();
        assert_eq!(window["messages"].as_array().unwrap().len() as u64, messages, "window of p{c}");
    }
}

#[test]
fn cold_contexts_answer_as_hot_ones_before_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--shards", "2", "--hot-contexts-per-shard", "3", "--snapshot-every-entries", "30"];
    let mut s = Server::start(&dir.path().join("data"), &args);
    for c in 0..CONTEXTS {
        assert_eq!(s.req("PUT", &format!("/v1/contexts/p{c}"), r#"{"token_budget":100000}"#).status, 201);
    }
    for i in 1..=3 {
        for c in 0..CONTEXTS {
            let key = format!("p{c}-{i}");
            let r =
                s.req_h("POST", &format!("/v1/contexts/p{c}/messages"), &[("Idempotency-Key", &key)], &msg_body(&key));
            assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.json()["seq"], i);
        }
    }
    // Every context changed since the last snapshot: more snapshots (appends to four
    // other contexts) make them durable and cold. Snapshots run in the background.
    for f in 0..4 {
        assert_eq!(s.req("PUT", &format!("/v1/contexts/f{f}"), r#"{"token_budget":100000}"#).status, 201);
        for i in 0..40 {
            assert_eq!(s.req("POST", &format!("/v1/contexts/f{f}/messages"), &msg_body(&format!("f{i}"))).status, 201);
        }
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while hot_contexts(&s) >= CONTEXTS as u64 / 2 {
        assert!(std::time::Instant::now() < deadline, "contexts stayed hot: {}", hot_contexts(&s));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    check_all(&s, 3);
    // A retry of a cold context's first append: its key is found in its key log.
    let retry = s.req_h("POST", "/v1/contexts/p7/messages", &[("Idempotency-Key", "p7-1")], &msg_body("p7-1"));
    assert_eq!(retry.json()["seq"], 1, "{}", String::from_utf8_lossy(&retry.body));
    s.kill9();
    s.restart();
    check_all(&s, 3);
    let retry = s.req_h("POST", "/v1/contexts/p9/messages", &[("Idempotency-Key", "p9-2")], &msg_body("p9-2"));
    assert_eq!(retry.json()["seq"], 2, "{}", String::from_utf8_lossy(&retry.body));
    for c in 0..CONTEXTS {
        let key = format!("p{c}-4");
        let r = s.req_h("POST", &format!("/v1/contexts/p{c}/messages"), &[("Idempotency-Key", &key)], &msg_body(&key));
        assert_eq!(r.json()["seq"], 4, "p{c}: {}", String::from_utf8_lossy(&r.body));
    }
    check_all(&s, 4);
    let metrics = s.req("GET", "/metrics", "");
    assert!(String::from_utf8_lossy(&metrics.body).contains("fleetlm_contexts_hot{shard=\"0\"}"));
}

/// A one-shard node with a hot budget of 100 KB and a snapshot every `snapshot_every`
/// entries, holding six contexts of 60 KB of metadata each.
fn with_heavy_contexts(dir: &tempfile::TempDir, snapshot_every: &str) -> Server {
    let args =
        ["--shards", "1", "--hot-contexts-bytes-per-shard", "100000", "--snapshot-every-entries", snapshot_every];
    let s = Server::start(&dir.path().join("data"), &args);
    let heavy = format!(r#"{{"token_budget":1000,"metadata":{{"blob":"{}"}}}}"#, "m".repeat(60_000));
    for c in 0..6 {
        assert_eq!(s.req("PUT", &format!("/v1/contexts/heavy{c}"), &heavy).status, 201);
    }
    s
}

/// The weight limit through the real process: contexts with 60 KB of metadata each
/// leave memory once the shard's records pass `--hot-contexts-bytes-per-shard`, though
/// far fewer than `--hot-contexts-per-shard`, and read back whole.
#[test]
fn heavy_contexts_leave_memory_by_weight() {
    let dir = tempfile::tempdir().unwrap();
    let s = with_heavy_contexts(&dir, "10");
    assert_eq!(s.req("PUT", "/v1/contexts/light", r#"{"token_budget":100000}"#).status, 201);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut i = 0;
    // Appends make snapshots (every 10 entries); the heavy contexts become durable, then cold.
    while hot_contexts(&s) > 2 {
        assert!(std::time::Instant::now() < deadline, "heavy contexts stayed in memory: {}", hot_contexts(&s));
        i += 1;
        assert_eq!(s.req("POST", "/v1/contexts/light/messages", &msg_body(&format!("l{i}"))).status, 201);
    }
    for c in 0..6 {
        let r = s.req("GET", &format!("/v1/contexts/heavy{c}"), "").json();
        assert_eq!(r["metadata"]["blob"].as_str().map(str::len), Some(60_000), "heavy{c}");
    }
}

/// Changed contexts stay in memory until a snapshot makes them durable; with snapshots
/// far apart by count (100,000 entries), changes heavier than the byte budget ask for
/// one early, after which the heavy contexts leave memory.
#[test]
fn heavy_changes_ask_for_an_early_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let s = with_heavy_contexts(&dir, "100000");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while hot_contexts(&s) > 2 {
        assert!(std::time::Instant::now() < deadline, "heavy contexts stayed in memory: {}", hot_contexts(&s));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let snapshot = &s.req("GET", "/v1/cluster", "").json()["shards"][0]["snapshot_index"];
    assert!(!snapshot.is_null(), "a snapshot was taken: {snapshot}");
    for c in 0..6 {
        let r = s.req("GET", &format!("/v1/contexts/heavy{c}"), "").json();
        assert_eq!(r["metadata"]["blob"].as_str().map(str::len), Some(60_000), "heavy{c}");
    }
}

/// Bytes of disk allocated under `dir`, recursively.
fn allocated_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        n += if m.is_dir() { allocated_bytes(&e.path()) } else { m.blocks() * 512 };
    }
    n
}

/// Every snapshot writes the records of the contexts that changed; the records they
/// replace are released after each rebase, so the disk holds about what was written
/// since the last base, not every record ever written. Here each snapshot (every 10
/// entries) rewrites contexts of 60 KB of metadata: ≈ 120 MB of records over the run,
/// of which a few MB are live. (The test servers use 4 MiB body segments.)
#[test]
fn replaced_checkpoint_records_give_their_disk_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--shards", "1", "--snapshot-every-entries", "10", "--hot-contexts-bytes-per-shard", "1000000000"];
    let s = Server::start(&data, &args);
    let blob = "m".repeat(60_000);
    let heavy = format!(r#"{{"token_budget":1000000,"metadata":{{"blob":"{blob}"}}}}"#);
    for c in 0..20 {
        assert_eq!(s.req("PUT", &format!("/v1/contexts/r{c}"), &heavy).status, 201);
    }
    for i in 0..2000 {
        let c = i % 20;
        assert_eq!(s.req("POST", &format!("/v1/contexts/r{c}/messages"), &msg_body(&format!("m{i}"))).status, 201);
    }
    let shard = data.join("shards").join("0");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let bytes = allocated_bytes(&shard);
        if bytes < 40 << 20 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the shard's files hold {} MiB", bytes >> 20);
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // Everything reads back.
    for c in 0..20 {
        let r = s.req("GET", &format!("/v1/contexts/r{c}"), "").json();
        assert_eq!(r["metadata"]["blob"].as_str().map(str::len), Some(60_000), "r{c}");
        assert_eq!(r["last_seq"], 100, "r{c}");
    }
}

/// Syncs and drops from the page cache every body-store file under `data` (pages that
/// the running node has mapped in stay: the kernel keeps mapped pages).
fn evict_bodies(data: &std::path::Path) {
    use std::os::fd::AsRawFd;
    for shard in std::fs::read_dir(data.join("shards")).unwrap().flatten() {
        for dir in std::fs::read_dir(shard.path()).unwrap().flatten() {
            if !dir.file_name().to_string_lossy().starts_with("bodies") {
                continue;
            }
            for file in std::fs::read_dir(dir.path()).unwrap().flatten() {
                let f = std::fs::File::open(file.path()).unwrap();
                f.sync_all().unwrap();
                // SAFETY: fadvise on an open descriptor; no memory is passed.
                unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            }
        }
    }
}

/// How many values the node's latency histogram `name` holds (`read.cold_wait`: reads
/// of cold contexts that waited for pages off the core; `bodies.prewarm`: shards
/// prewarmed).
fn latency_count(s: &Server, name: &str) -> u64 {
    let metrics = String::from_utf8(s.req("GET", "/metrics", "").body).unwrap();
    let prefix = format!("fleetlm_latency_microseconds_count{{name=\"{name}\"}}");
    let line = metrics.lines().find(|l| l.starts_with(&prefix));
    line.and_then(|l| l.rsplit(' ').next()).map_or(0, |n| n.parse().unwrap())
}

/// After a restart every context is cold, and with the page cache dropped its record,
/// index chunks and bodies are on disk only. A read then builds its answer from what is
/// in memory and awaits the rest off the core, round after round (`read.cold_wait`):
/// the answers must be byte for byte those of before the restart.
#[test]
fn reads_of_contexts_on_disk_wait_off_the_core_and_answer_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = Server::start(&data, &["--shards", "2", "--snapshot-every-entries", "50"]);
    let contexts = 24;
    // Context after context, 120 KB each: the log replayed after the restart (entries
    // since the last snapshot) touches the last few only, and the others stay cold, on
    // pages that the node does not map (the kernel maps the cached pages around a fault,
    // and mapped pages cannot be evicted).
    for c in 0..contexts {
        assert_eq!(s.req("PUT", &format!("/v1/contexts/d{c}"), r#"{"token_budget":100000}"#).status, 201);
        for i in 1..=40 {
            let r = s.req(
                "POST",
                &format!("/v1/contexts/d{c}/messages"),
                &msg_body(&format!("d{c}-{i} {}", "x".repeat(3000))),
            );
            assert_eq!(r.status, 201);
        }
    }
    let reads = |c: usize| {
        [
            format!("/v1/contexts/d{c}/tail?limit=25"),
            format!("/v1/contexts/d{c}/messages?from_seq=3&limit=30"),
            format!("/v1/contexts/d{c}/context"),
            format!("/v1/contexts/d{c}"),
        ]
    };
    let answers = |s: &Server| -> Vec<Vec<u8>> {
        (0..contexts)
            .flat_map(|c| reads(c).into_iter())
            .map(|path| {
                let r = s.req("GET", &path, "");
                assert_eq!(r.status, 200, "{path}: {}", String::from_utf8_lossy(&r.body));
                r.body
            })
            .collect()
    };
    let before = answers(&s);
    s.kill9();
    s.restart();
    // The node reads the newest bodies back into the page cache once after it opened
    // (the prewarm, one per shard): evict them after it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while latency_count(&s, "bodies.prewarm") < 2 {
        assert!(std::time::Instant::now() < deadline, "the shards' prewarm did not end");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    evict_bodies(&data);
    assert_eq!(answers(&s), before, "answers after the restart, pages on disk");
    assert!(latency_count(&s, "read.cold_wait") > 0, "no read of a cold context waited for its pages");
}

/// A hot context's old history is likely out of memory though the context is in it: a
/// replay from early on (at least `COLD_READ_HISTORY_MIN_MESSAGES` behind the newest)
/// takes the cold path too, and answers the messages it holds.
#[test]
fn a_replay_of_a_hot_contexts_old_history_waits_off_the_core_and_answers_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = Server::start(&data, &["--shards", "1"]);
    assert_eq!(s.req("PUT", "/v1/contexts/h", r#"{"token_budget":100000}"#).status, 201);
    for i in 1..=1200 {
        let r = s.req("POST", "/v1/contexts/h/messages", &msg_body(&format!("h-{i} {}", "x".repeat(3000))));
        assert_eq!(r.status, 201);
    }
    // (Read nothing before: a read maps the pages it touches, and mapped pages are not
    // evicted.)
    evict_bodies(&data);
    let texts = |path: &str| -> Vec<String> {
        let r = s.req("GET", path, "");
        assert_eq!(r.status, 200, "{path}");
        let j = r.json();
        j["messages"].as_array().unwrap().iter().map(|m| m["parts"][0]["text"].as_str().unwrap().to_owned()).collect()
    };
    let want = |seqs: std::ops::RangeInclusive<usize>| -> Vec<String> {
        seqs.map(|i| format!("h-{i} {}", "x".repeat(3000))).collect()
    };
    assert_eq!(texts("/v1/contexts/h/messages?from_seq=1&limit=60"), want(1..=60));
    assert_eq!(texts("/v1/contexts/h/tail?offset=1100&limit=50"), want(51..=100));
    assert!(latency_count(&s, "read.cold_wait") > 0, "no read of old history waited for its pages");
}
