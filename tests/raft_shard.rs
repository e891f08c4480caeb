//! One shard as a single-member Raft group on glommio: commands go through openraft and
//! the WAL, survive a restart (log replay) and a restart after snapshot + purge.
use std::path::Path;
use std::time::Duration;

use fleetlm::config::{RaftTimings, StoreLimits, WalConfig};
use fleetlm::raft::{GlommioRuntime, Shard, ShardStateMachine};
use fleetlm::store::{Command, NewMessage, Outcome, PutContext, Store};
use openraft::storage::RaftStateMachine;
use openraft::{AsyncRuntime, RaftSnapshotBuilder, ReadPolicy, ServerState};
use serde_json::json;

const NOW: &str = "2026-11-27T12:00:00.000000Z";

fn wal() -> WalConfig {
    WalConfig { segment_size_bytes: 1 << 20, record_payload_max_bytes: 64 << 10, ..WalConfig::default() }
}

async fn open(dir: &Path, timings: &RaftTimings) -> Shard {
    let shard = Shard::open_single(dir, 1, wal(), StoreLimits::default(), timings).await.expect("open shard");
    shard.raft.wait(Some(Duration::from_secs(10))).state(ServerState::Leader, "leader").await.expect("becomes leader");
    shard
}

fn msg(i: usize) -> NewMessage {
    NewMessage::from_json(
        &json!({"role":"user","parts":[{"type":"text","text":format!("message {i}")}]}),
        false,
        &StoreLimits::default(),
    )
    .unwrap()
}

/// Puts the context, then writes `n` appends concurrently; returns the seqs given.
async fn write(shard: &Shard, n: usize) -> Vec<u64> {
    let put = PutContext::from_json(&json!({"token_budget": 100000}), &StoreLimits::default()).unwrap();
    let cmd = Command::Put { id: "ctx".into(), put, now: NOW.into() };
    shard.raft.client_write(cmd).await.expect("put").data.expect("put applies");
    let mut seqs = append_more(shard, 0, n).await;
    seqs.sort_unstable();
    seqs
}

/// Appends only (the context exists), concurrently, numbered from `first`; the seqs.
async fn append_more(shard: &Shard, first: usize, n: usize) -> Vec<u64> {
    let writes = (first..first + n).map(|i| {
        let raft = shard.raft.clone();
        async move {
            let cmd = Command::Append {
                id: "ctx".into(),
                message: msg(i),
                if_version: None,
                idempotency_key: None,
                now: NOW.into(),
            };
            match raft.client_write(cmd).await.expect("append").data {
                Ok(Outcome::Appended(a)) => a.seq,
                other => panic!("append applied as {other:?}"),
            }
        }
    });
    futures_util::future::join_all(writes).await
}

async fn read_back(shard: &Shard) -> Vec<String> {
    shard.raft.ensure_linearizable(ReadPolicy::ReadIndex).await.expect("linearizable read");
    texts(&shard.state)
}

/// The texts of the context's messages, in seq order, from a state machine.
fn texts(sm: &ShardStateMachine) -> Vec<String> {
    let applied = sm.applied().borrow();
    let ctx = applied.store.get("ctx", &applied.bodies).expect("context exists");
    ctx.replay(1, usize::MAX, &applied.bodies)
        .expect("the log index reads")
        .0
        .iter()
        .map(|m| m.to_json(&applied.bodies).unwrap()["parts"][0]["text"].as_str().unwrap().to_owned())
        .collect()
}

fn last_seq(sm: &ShardStateMachine) -> u64 {
    let applied = sm.applied().borrow();
    applied.store.get("ctx", &applied.bodies).unwrap().last_seq()
}

/// A state machine on its own (no Raft group), as a node opens it.
fn open_state_machine(dir: &Path) -> ShardStateMachine {
    ShardStateMachine::open(dir, Store::new(StoreLimits::default()), fleetlm::config::BODY_SEGMENT_SIZE_BYTES).unwrap()
}

fn run(f: impl AsyncFnOnce() + Send + 'static) {
    std::thread::spawn(move || {
        let mut rt = <GlommioRuntime as AsyncRuntime>::new(1);
        rt.block_on(f());
    })
    .join()
    .expect("test thread");
}

#[test]
fn writes_commit_through_raft_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let timings = RaftTimings::default();
    let t = timings.clone();
    let p = path.clone();
    run(async move || {
        let shard = open(&p, &t).await;
        let syncs_before = shard.log.wal().with_stats(|s| s.syncs_completed_total);
        let seqs = write(&shard, 200).await;
        assert_eq!(seqs, (1..=200).collect::<Vec<u64>>(), "contiguous, no duplicates");
        // Group commit end to end: 200 concurrent writes through Raft shared WAL syncs.
        let syncs = shard.log.wal().with_stats(|s| s.syncs_completed_total) - syncs_before;
        assert!(syncs < 100, "{syncs} WAL syncs for 200 concurrent writes: appends did not share syncs");
        shard.raft.shutdown().await.expect("shutdown");
    });
    run(async move || {
        let shard = open(&path, &timings).await;
        let texts = read_back(&shard).await;
        assert_eq!(texts.len(), 200);
        let mut sorted = texts.clone();
        sorted.sort();
        let mut expected: Vec<String> = (0..200).map(|i| format!("message {i}")).collect();
        expected.sort();
        assert_eq!(sorted, expected, "every acknowledged append is there exactly once");
        shard.raft.shutdown().await.expect("shutdown");
    });
}

#[test]
fn restart_after_snapshot_and_purge_restores_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let timings =
        RaftTimings { snapshot_every_entries: 50, log_entries_kept_after_snapshot: 10, ..RaftTimings::default() };
    let t = timings.clone();
    let p = path.clone();
    run(async move || {
        let shard = open(&p, &t).await;
        write(&shard, 300).await;
        // Snapshots are built in the background: wait for one covering most of the log.
        shard
            .raft
            .wait(Some(Duration::from_secs(10)))
            .metrics(|m| m.snapshot.is_some_and(|s| s.index >= 250) && m.purged.is_some(), "snapshot and purge")
            .await
            .expect("snapshot taken and log purged");
        shard.raft.shutdown().await.expect("shutdown");
    });
    assert!(path.join("snapshot.bin").exists());
    assert!(path.join("bodies").join("00000000.bin").exists(), "message bodies live on disk");
    run(async move || {
        let shard = open(&path, &timings).await;
        let texts = read_back(&shard).await;
        assert_eq!(texts.len(), 300, "snapshot + remaining log restore every message");
        shard.raft.shutdown().await.expect("shutdown");
    });
}

/// Two scratch directories (kept alive by the first element) for a state machine that
/// builds a snapshot and one that receives it.
fn two_dirs() -> ([tempfile::TempDir; 2], std::path::PathBuf, std::path::PathBuf) {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (a, b) = (dirs[0].path().to_owned(), dirs[1].path().to_owned());
    (dirs, a, b)
}

#[test]
fn a_snapshot_built_on_one_state_machine_installs_on_another() {
    let (_dirs, a_path, b_path) = two_dirs();
    run(async move || {
        // Fill A through a real shard, then snapshot its state machine.
        let shard = open(&a_path, &RaftTimings::default()).await;
        write(&shard, 50).await;
        let mut a = shard.state.clone();
        let snap = a.try_create_snapshot_builder(true).await.unwrap().build_snapshot().await.unwrap();
        shard.raft.shutdown().await.unwrap();
        let mut b = open_state_machine(&b_path);
        b.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
        assert_eq!(b.applied_state().await.unwrap(), a.applied_state().await.unwrap());
        assert_eq!((last_seq(&a), last_seq(&b)), (50, 50));
        // And B reopens from the installed snapshot file.
        let reopened = open_state_machine(&b_path);
        assert_eq!(last_seq(&reopened), 50);
        let current = b.get_current_snapshot().await.unwrap().expect("a current snapshot");
        assert_eq!(current.meta, snap.meta);
        drop(reopened);
        // The install made generation 1 beside B's empty generation 0 and then removed
        // generation 0; A's files (not a staging directory) were copied, not moved.
        assert!(b_path.join("snapshot-1.bin").exists() && b_path.join("bodies-1").join("00000000.bin").exists());
        assert!(!b_path.join("bodies").exists() && !b_path.join("snapshot.bin").exists());
        assert!(a_path.join("bodies").join("00000000.bin").exists());

        // A crash after an install's commit, before the old generation was deleted: the
        // newest generation with an index wins (the old one here is garbage and must
        // not even be read) ...
        std::fs::write(b_path.join("snapshot.bin"), b"not an index").unwrap();
        std::fs::create_dir_all(b_path.join("bodies")).unwrap();
        std::fs::write(b_path.join("bodies").join("00000000.bin"), b"old bodies").unwrap();
        // ... and a crash before a later install's commit: its body directory and
        // torn index are dropped.
        std::fs::create_dir_all(b_path.join("bodies-2")).unwrap();
        std::fs::write(b_path.join("bodies-2").join("00000000.bin"), b"new bodies").unwrap();
        std::fs::write(b_path.join("snapshot-2.bin.tmp"), b"torn").unwrap();
        let recovered = open_state_machine(&b_path);
        assert_eq!(last_seq(&recovered), 50);
        let recovered_texts = texts(&recovered);
        assert_eq!(recovered_texts.len(), 50);
        assert!(
            recovered_texts.iter().all(|t| t.starts_with("message ")),
            "bodies come from generation 1: {recovered_texts:?}"
        );
        for gone in ["snapshot.bin", "bodies", "bodies-2", "snapshot-2.bin.tmp"] {
            assert!(!b_path.join(gone).exists(), "{gone} is removed at open");
        }
    });
}

#[test]
fn a_snapshot_is_the_state_at_its_log_id_while_appends_go_on() {
    let (_dirs, a_path, b_path) = two_dirs();
    run(async move || {
        let shard = open(&a_path, &RaftTimings::default()).await;
        write(&shard, 100).await;
        // The build captures the store at its first poll and encodes it on the blocking
        // pool, behind a body-store fdatasync; the appends apply meanwhile.
        let mut builder = shard.state.clone();
        // (Measured: all 100 appends are applied before the build returns.)
        let (snap, _) = futures_util::join!(builder.build_snapshot(), append_more(&shard, 100, 100));
        let snap = snap.expect("snapshot");
        let last_log_index = |sm: &ShardStateMachine| sm.applied().borrow().last_applied.unwrap().index;
        // Every entry after the first append is an append: seq = log index − offset.
        let offset = last_log_index(&shard.state) - last_seq(&shard.state);
        assert_eq!(last_seq(&shard.state), 200);
        shard.raft.shutdown().await.unwrap();
        let snap_index = snap.meta.last_log_id.unwrap().index;
        let mut b = open_state_machine(&b_path);
        b.install_snapshot(&snap.meta, snap.snapshot).await.unwrap();
        assert_eq!(last_log_index(&b), snap_index);
        assert_eq!(last_seq(&b), snap_index - offset, "the snapshot holds exactly the appends up to its log id");
        assert!(last_seq(&b) >= 100, "taken after the first 100 appends");
        for text in texts(&b) {
            assert!(text.starts_with("message "), "{text}");
        }
    });
}

/// The state machine applies entries in batches of 256 (`APPLY_BATCH_ENTRIES`, with the
/// cold contexts' records asked for first): every entry of a long replay is applied in
/// order, and an entry that cannot be read ends the apply with its error after the ones
/// before it, none after.
#[test]
fn apply_in_batches_applies_everything_in_order_and_stops_at_a_read_error() {
    use fleetlm::raft::FleetRaft;
    use openraft::entry::RaftEntry;
    use openraft::testing::log_id;
    type Entry = openraft::type_config::alias::EntryOf<FleetRaft>;
    run(async || {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open_state_machine(dir.path());
        let put = PutContext::from_json(&json!({"token_budget": 100000}), &StoreLimits::default()).unwrap();
        let append = |i: usize| Command::Append {
            id: "ctx".into(),
            message: msg(i),
            if_version: None,
            idempotency_key: None,
            now: NOW.into(),
        };
        let mut entries = vec![Entry::new_normal(
            log_id::<FleetRaft>(1, 1, 1),
            Command::Put { id: "ctx".into(), put, now: NOW.into() },
        )];
        entries.extend((0..600).map(|i| Entry::new_normal(log_id::<FleetRaft>(1, 1, i as u64 + 2), append(i))));
        let items: Vec<Result<_, std::io::Error>> = entries.into_iter().map(|e| Ok((e, None))).collect();
        sm.apply(futures_util::stream::iter(items)).await.expect("apply");
        assert_eq!(texts(&sm), (0..600).map(|i| format!("message {i}")).collect::<Vec<_>>());
        assert_eq!(sm.applied().borrow().last_applied.unwrap().index, 601);

        // 300 more, the 101st of them unreadable.
        let items: Vec<Result<_, std::io::Error>> = (600..900)
            .map(|i| match i {
                700 => Err(std::io::Error::other("log entry 702 cannot be read")),
                _ => Ok((Entry::new_normal(log_id::<FleetRaft>(1, 1, i as u64 + 2), append(i)), None)),
            })
            .collect();
        let err = sm.apply(futures_util::stream::iter(items)).await.expect_err("the read error");
        assert!(err.to_string().contains("702"), "{err}");
        assert_eq!(last_seq(&sm), 700, "applied up to the entry before the unreadable one");
        assert_eq!(sm.applied().borrow().last_applied.unwrap().index, 701);
    });
}
