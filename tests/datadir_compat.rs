//! A data dir written by an earlier build opens in this one and answers exactly as that
//! build did: format 2 (one WAL per shard) is converted once to format 3 (one WAL per
//! core), and Raft metadata, snapshots and message bodies did not change under us. A
//! data dir started with another number of cores has its logs re-split, and answers the
//! same. The fixtures come from `tests/fixtures/make-datadir.sh` run with the earlier
//! binary (the commit is in their names). Snapshot indexes of formats 2 and 3 (every
//! message in the index) are converted to format 6 (message indexes and contexts in the body store);
//! format 5 (the same without the checkpoints' body-store ranges) is read as it is.
mod common;

use common::{Server, msg_body};

/// The format of every shard's snapshot index (its first 8 bytes), or "none".
fn snapshot_formats(data: &std::path::Path) -> Vec<String> {
    let mut formats = Vec::new();
    for shard in std::fs::read_dir(data.join("shards")).unwrap().flatten() {
        for file in std::fs::read_dir(shard.path()).unwrap().flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if name.starts_with("snapshot") && name.ends_with(".bin") {
                let bytes = std::fs::read(file.path()).unwrap();
                formats.push(String::from_utf8_lossy(&bytes[..8.min(bytes.len())]).into_owned());
            }
        }
    }
    formats
}

/// `index`: the snapshot index formats expected once the data dir has been opened.
fn opens_and_answers_as_written(name: &str, format: u64, index: &[&str]) {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let tmp = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(fixtures.join(format!("{name}.tar.gz")))
        .arg("-C")
        .arg(tmp.path())
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed: {status}");
    let answers: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures.join(format!("{name}.answers.json"))).unwrap()).unwrap();
    let data = tmp.path().join("data");
    let layout =
        || -> serde_json::Value { serde_json::from_slice(&std::fs::read(data.join("fleetlm.json")).unwrap()).unwrap() };
    assert_eq!(layout()["format"], format, "the fixture is a format-{format} data dir");
    assert!(!snapshot_formats(&data).is_empty(), "the fixture has a snapshot");
    let s = Server::start(&data, &["--cores", "2"]);
    // Formats 2 and 3 are in format 6 now: the message indexes and the contexts'
    // checkpoint records were written to the body store and the index rewritten, once.
    assert!(snapshot_formats(&data).iter().all(|f| index.contains(&f.as_str())), "{:?}", snapshot_formats(&data));
    assert_eq!(layout()["format"], 3, "converted at open");
    assert_eq!(layout()["wal_logs"], 2);
    assert!(data.join("wal-2/0").is_dir() && data.join("wal-2/1").is_dir());
    assert!(!data.join("shards/0/wal").exists(), "the per-shard logs are gone once converted");
    let check = |s: &Server| {
        for (path, expected) in answers.as_object().unwrap() {
            let r = s.req("GET", path, "");
            assert_eq!(u64::from(r.status), expected["status"], "GET {path}");
            assert_eq!(r.json(), expected["body"], "GET {path}");
        }
    };
    check(&s);
    drop(s);
    // One core: the two logs are merged into one, and the answers stay.
    let s = Server::start(&data, &["--cores", "1"]);
    assert_eq!(layout()["wal_logs"], 1);
    assert!(data.join("wal-1/0").is_dir() && !data.join("wal-2").exists());
    check(&s);
    drop(s);
    let s = Server::start(&data, &["--cores", "2"]);
    check(&s);
    // The idempotency keys the old build remembered (in its snapshot and its log) are
    // remembered still: a retry of the 30th append returns its outcome, appends nothing.
    let retry = s.req_h("POST", "/v1/contexts/a/messages", &[("Idempotency-Key", "a-30")], &msg_body("hello 30"));
    assert_eq!(retry.json()["seq"], 30, "{}", String::from_utf8_lossy(&retry.body));
    let retry = s.req_h("POST", "/v1/contexts/a/messages", &[("Idempotency-Key", "a-3")], &msg_body("hello 3"));
    assert_eq!(retry.json()["seq"], 3, "{}", String::from_utf8_lossy(&retry.body));
    assert_eq!(s.req("GET", "/v1/contexts/a", "").json()["last_seq"], 30);
    // And it goes on from there: the next append gets the next seq, after a restart too.
    let r = s.req("POST", "/v1/contexts/a/messages", &msg_body("after the upgrade"));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["seq"], 31);
    let mut s = s;
    s.restart();
    assert_eq!(s.req("GET", "/v1/contexts/a", "").json()["last_seq"], 31);
}

#[test]
fn a_data_dir_written_at_d64b5b2_opens_and_answers_the_same() {
    opens_and_answers_as_written("datadir-d64b5b2", 2, &["FLMIDX06"]);
}

/// Written by the last build with one WAL per shard (format 2 with snapshot index
/// format 3, live-stream compaction histories).
#[test]
fn a_data_dir_written_at_9f83b16_opens_and_answers_the_same() {
    opens_and_answers_as_written("datadir-9f83b16", 2, &["FLMIDX06"]);
}

/// Written by the last build that held every message in memory and in the snapshot
/// index (data dir format 3, one WAL per core; snapshot index format 3).
#[test]
fn a_data_dir_written_at_0907b86_opens_and_answers_the_same() {
    opens_and_answers_as_written("datadir-0907b86", 3, &["FLMIDX06"]);
}

/// Written by the last build before checkpoint ranges were released (snapshot index
/// format 5: read as is, rewritten in format 6 by the next snapshot).
#[test]
fn a_data_dir_written_at_c69e77b_opens_and_answers_the_same() {
    opens_and_answers_as_written("datadir-c69e77b", 3, &["FLMIDX05", "FLMIDX06"]);
}
