//! Group commit on a real glommio executor: concurrent appenders share syncs, and no
//! appender is told its record is durable before a sync that started after its append
//! has returned.
use std::cell::Cell;
use std::rc::Rc;

use fleetlm::config::WalConfig;
use fleetlm::wal::{GroupCommitWal, Wal};
use glommio::LocalExecutorBuilder;

fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
    LocalExecutorBuilder::default().io_memory(1 << 20).make().expect("executor").run(f());
}

#[test]
fn concurrent_appenders_share_syncs_and_wait_for_a_covering_sync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    run(move || async move {
        let config = WalConfig { segment_size_bytes: 1 << 20, record_payload_max_bytes: 4096, ..WalConfig::default() };
        let (wal, _) = Wal::open(&path, config.clone(), 1).unwrap();
        let wal = GroupCommitWal::new(wal);
        const APPENDERS: usize = 64;
        const PER_APPENDER: usize = 25;
        let early = Rc::new(Cell::new(0usize));
        let mut tasks = vec![];
        for a in 0..APPENDERS {
            let wal = wal.clone();
            let early = early.clone();
            tasks.push(glommio::spawn_local(async move {
                let mut mine = vec![];
                for k in 0..PER_APPENDER {
                    let payload = format!("appender {a} record {k}");
                    let started_before = wal.with_stats(|s| s.syncs_started_total);
                    let range = wal.append(&[payload.as_bytes()]).unwrap();
                    wal.wait_durable(range.start).await.unwrap();
                    // The covering sync must have started after the append: at least one
                    // sync that had not started before it has completed now.
                    if wal.with_stats(|s| s.syncs_completed_total) <= started_before {
                        early.set(early.get() + 1);
                    }
                    assert!(wal.durable_next() > range.start);
                    mine.push((range.start, payload));
                }
                mine
            }));
        }
        let mut written = vec![];
        for t in tasks {
            written.extend(t.await);
        }
        assert_eq!(early.get(), 0, "an appender was told durable before a covering sync returned");
        let total = APPENDERS * PER_APPENDER;
        let (syncs, max_batch) = wal.with_stats(|s| (s.syncs_completed_total, s.sync_batch_records.max()));
        assert!(max_batch > 1, "no sync covered more than one record");
        assert!((syncs as usize) < total, "{syncs} syncs for {total} records: no group commit");
        // Every index holds exactly what its appender wrote.
        written.sort();
        let indexes: Vec<u64> = written.iter().map(|w| w.0).collect();
        assert_eq!(indexes, (1..=total as u64).collect::<Vec<_>>());
        wal.with(|w| {
            for (i, p) in &written {
                assert_eq!(w.get(*i).unwrap(), p.as_bytes());
            }
        });
        drop(wal);
        // And all of it is on disk.
        let (reopened, report) = Wal::open(&path, config, 1).unwrap();
        assert_eq!(report.next_index, total as u64 + 1);
        for (i, p) in &written {
            assert_eq!(reopened.get(*i).unwrap(), p.as_bytes());
        }
    });
}

#[test]
fn truncate_and_sync_through_the_async_face() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    run(move || async move {
        let (wal, _) = Wal::open(&path, WalConfig::default(), 1).unwrap();
        let wal = GroupCommitWal::new(wal);
        wal.append_durable(&[b"a", b"b", b"c"]).await.unwrap();
        wal.truncate_after(1).await.unwrap();
        wal.append(&[b"B"]).unwrap();
        wal.sync().await.unwrap();
        assert_eq!(wal.durable_next(), 3);
        // Purge past the end restarts the log; waiters on the new position are served.
        wal.with(|w| w.purge_before(10)).unwrap();
        wal.append_durable(&[b"ten"]).await.unwrap();
        drop(wal);
        let (w, report) = Wal::open(&path, WalConfig::default(), 1).unwrap();
        assert_eq!((report.first_index, report.next_index), (10, 11));
        assert_eq!(w.get(10).unwrap(), b"ten");
    });
}
