//! The message index and bodies in our body store (append-only segment files with a
//! 16-ary index tree per context, `fleetlm::store::message_log`) against an embedded
//! storage engine (redb, a copy-on-write B-tree) holding the same data, on the workload
//! of `bench/load-history.sh`: 200-byte messages appended to random contexts, made
//! durable every 20,000 appends (a snapshot), then tails of 100 messages read from
//! random contexts, each with a cold page cache and the store just opened (nothing
//! mapped or cached in the process), and the time to open the store again.
//!
//! `cargo bench --bench index_engines -- ENGINE DIR` (ENGINE: `ours` or `redb`; one
//! engine per process, so that RSS is its own). `MESSAGES` (5,000,000), `CONTEXTS`
//! (100,000), `READS` (200: each drops the page cache). Run as root to drop the page cache before the reads.
//! Prints one JSON line. `bench/index-engines.sh` runs both and writes the table.
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use fleetlm::raft::bodies::FileBodies;
use fleetlm::store::Bodies;
use fleetlm::store::message_log::{Entry, KindsTag, MessageLog};
use redb::{Database, TableDefinition};

const SNAPSHOT_EVERY: u64 = 20_000;
const TAIL: u64 = 100;
const MESSAGES_TABLE: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("messages");

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A deterministic stream of context numbers (xorshift), the same for both engines.
struct Picker(u64);

impl Picker {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn body(ctx: u64, seq: u64) -> Vec<u8> {
    let mut b = format!("{{\"role\":\"user\",\"parts\":[{{\"type\":\"text\",\"text\":\"{ctx}-{seq} ").into_bytes();
    b.resize(190, b'x');
    b.extend_from_slice(b"\"}]}");
    b
}

fn status_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.metadata().unwrap();
        n += if m.is_dir() { disk_bytes(&e.path()) } else { m.blocks() * 512 };
    }
    n
}

/// Page faults of this process that had to read from the disk.
fn major_faults() -> i64 {
    // SAFETY: getrusage writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    u.ru_majflt
}

fn drop_caches() -> bool {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)].as_secs_f64() * 1e3
}

/// What a run measured.
struct Run {
    /// Bytes written (the body store's length; the database file's size).
    data_bytes: u64,
    load: Duration,
    reopen: Duration,
    reads: Vec<Duration>,
}

fn ours(dir: &Path, messages: u64, contexts: u64, reads: u64) -> Run {
    let seg = 64 << 20;
    let mut bodies = FileBodies::open(dir, seg, 0).unwrap();
    let mut logs: HashMap<u64, MessageLog> = HashMap::new();
    let mut pick = Picker(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    for i in 1..=messages {
        let ctx = pick.next(contexts);
        let log = logs.entry(ctx).or_default();
        let seq = log.len() + 1;
        let r = bodies.append(&body(ctx, seq)).unwrap();
        log.push(Entry { body: r, token_count: 50, kinds: KindsTag::Text }, &mut bodies).unwrap();
        if i % SNAPSHOT_EVERY == 0 {
            bodies.sync().unwrap();
        }
    }
    bodies.sync().unwrap();
    let load = started.elapsed();
    // A restart: the store opens at its synced length (the contexts' in-memory parts
    // come from their checkpoint records, a few hundred bytes each: kept here).
    let len = bodies.len();
    drop(bodies);
    let started = Instant::now();
    let mut bodies = FileBodies::open(dir, seg, len).unwrap();
    let reopen = started.elapsed();
    let mut dropped = true;
    let faults_before = major_faults();
    // WARM=1: no drops (what the residency check costs a warm read); NO_PREFETCH=1:
    // one fault at a time, as before the prefetch.
    let warm = std::env::var("WARM").is_ok();
    let mut out = Vec::new();
    let mut pick = Picker(7);
    for _ in 0..reads {
        let ctx = pick.next(contexts);
        let Some(log) = logs.get(&ctx) else { continue };
        // Cold for every read: the mapping's pages and the page cache both (readahead
        // of earlier reads would otherwise warm the whole store within a few hundred).
        if !warm {
            drop(bodies);
            dropped &= drop_caches();
            bodies = FileBodies::open(dir, seg, len).unwrap();
        }
        let started = Instant::now();
        // As the server's reads do (`messages_object`): if the oldest body's page is
        // out, start reading every body at once.
        let mut refs = Vec::new();
        log.for_each(log.len().saturating_sub(TAIL), log.len(), &bodies, |_, e| {
            refs.push(e.body);
            true
        })
        .unwrap();
        if std::env::var("NO_PREFETCH").is_err() && refs.first().is_some_and(|r| !bodies.is_resident(*r)) {
            for r in &refs {
                bodies.prefetch(*r);
            }
        }
        // Copied out, as an answer is: a slice's length alone reads no page.
        let mut answer = Vec::new();
        for r in &refs {
            answer.extend_from_slice(bodies.get(*r).unwrap());
        }
        assert!(!answer.is_empty());
        out.push(started.elapsed());
    }
    assert!(dropped || warm || reads == 0 || std::env::var("ALLOW_WARM").is_ok(), "run as root to drop the page cache");
    eprintln!("ours: major faults during the reads: {}", major_faults() - faults_before);
    Run { data_bytes: len, load, reopen, reads: out }
}

fn redb(dir: &Path, messages: u64, contexts: u64, reads: u64) -> Run {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("index.redb");
    let db = Database::create(&path).unwrap();
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut pick = Picker(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    let mut i = 0;
    while i < messages {
        // One write transaction per snapshot interval, committed durably at its end: the
        // state machine would apply into it and commit when it snapshots.
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(MESSAGES_TABLE).unwrap();
            for _ in 0..SNAPSHOT_EVERY.min(messages - i) {
                let ctx = pick.next(contexts);
                let seq = last.entry(ctx).or_default();
                *seq += 1;
                table.insert((ctx, *seq), body(ctx, *seq).as_slice()).unwrap();
                i += 1;
            }
        }
        txn.commit().unwrap();
    }
    let load = started.elapsed();
    drop(db);
    let data_bytes = std::fs::metadata(&path).unwrap().len();
    let started = Instant::now();
    let mut db = Database::open(&path).unwrap();
    let reopen = started.elapsed();
    let mut dropped = true;
    let mut out = Vec::new();
    let mut pick = Picker(7);
    for _ in 0..reads {
        let ctx = pick.next(contexts);
        let Some(&n) = last.get(&ctx) else { continue };
        // Cold for every read: redb's own cache and the page cache both.
        drop(db);
        dropped &= drop_caches();
        db = Database::open(&path).unwrap();
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(MESSAGES_TABLE).unwrap();
        let started = Instant::now();
        let mut answer = Vec::new();
        for item in table.range((ctx, n.saturating_sub(TAIL) + 1)..=(ctx, n)).unwrap() {
            answer.extend_from_slice(item.unwrap().1.value());
        }
        assert!(!answer.is_empty());
        out.push(started.elapsed());
    }
    assert!(dropped || reads == 0 || std::env::var("ALLOW_WARM").is_ok(), "run as root to drop the page cache");
    Run { data_bytes, load, reopen, reads: out }
}

fn main() {
    // `cargo bench` passes `--bench` first.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let (Some(engine), Some(dir)) = (args.first(), args.get(1)) else {
        eprintln!("usage: cargo bench --bench index_engines -- ours|redb DIR");
        std::process::exit(2);
    };
    let dir = Path::new(dir);
    let _ = std::fs::remove_dir_all(dir);
    let (messages, contexts, reads) = (env("MESSAGES", 5_000_000), env("CONTEXTS", 100_000), env("READS", 200));
    let mut run = match engine.as_str() {
        "ours" => ours(dir, messages, contexts, reads),
        "redb" => redb(dir, messages, contexts, reads),
        other => panic!("unknown engine {other}"),
    };
    run.reads.sort();
    println!(
        "{{\"engine\":\"{engine}\",\"messages\":{messages},\"contexts\":{contexts},\"appends_per_s\":{:.0},\
         \"rss_anon_mib\":{:.0},\"rss_file_mib\":{:.0},\"data_mib\":{:.0},\"allocated_mib\":{:.0},\"reopen_ms\":{:.1},\
         \"cold_tail100_p50_ms\":{:.2},\"cold_tail100_p99_ms\":{:.2},\"reads\":{}}}",
        messages as f64 / run.load.as_secs_f64(),
        status_kib("RssAnon:") as f64 / 1024.0,
        status_kib("RssFile:") as f64 / 1024.0,
        run.data_bytes as f64 / (1 << 20) as f64,
        disk_bytes(dir) as f64 / (1 << 20) as f64,
        run.reopen.as_secs_f64() * 1e3,
        percentile(&run.reads, 0.5),
        percentile(&run.reads, 0.99),
        run.reads.len(),
    );
}
