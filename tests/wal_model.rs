//! Property test: random append / sync / truncate / purge / reopen sequences against a
//! plain in-memory model of the log.
use fleetlm::config::WalConfig;
use fleetlm::wal::Wal;
use proptest::prelude::*;

fn small() -> WalConfig {
    WalConfig { segment_size_bytes: 4096, record_payload_max_bytes: 1024, append_batch_max: 16 }
}

#[derive(Debug, Clone)]
enum Op {
    /// Payload sizes of one batch.
    Append(Vec<usize>),
    Sync,
    /// Keep this fraction (per mille) of the live records.
    TruncateKeep(u16),
    /// Purge this many records from the front (may run past the end).
    Purge(u8),
    /// Drop and reopen: a process restart (the page cache keeps unsynced writes).
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => proptest::collection::vec(0usize..1024, 1..6).prop_map(Op::Append),
        2 => Just(Op::Sync),
        1 => (0u16..=1000).prop_map(Op::TruncateKeep),
        1 => any::<u8>().prop_map(Op::Purge),
        1 => Just(Op::Reopen),
    ]
}

struct Model {
    first: u64,
    recs: Vec<Vec<u8>>,
}

impl Model {
    fn next(&self) -> u64 {
        self.first + self.recs.len() as u64
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn wal_behaves_like_a_vec(ops in proptest::collection::vec(op(), 1..80)) {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), small(), 1).unwrap();
        let mut model = Model { first: 1, recs: vec![] };
        let mut counter = 0u64;
        for op in ops {
            match op {
                Op::Append(sizes) => {
                    let batch: Vec<Vec<u8>> = sizes.iter().map(|&n| {
                        counter += 1;
                        let mut p = counter.to_le_bytes().to_vec();
                        p.resize(n.max(8), counter as u8);
                        p
                    }).collect();
                    let range = wal.append(&batch).unwrap();
                    prop_assert_eq!(range.start, model.next());
                    model.recs.extend(batch);
                    prop_assert_eq!(range.end, model.next());
                }
                Op::Sync => {
                    wal.sync().unwrap();
                    prop_assert_eq!(wal.durable_next(), model.next());
                }
                Op::TruncateKeep(permille) => {
                    let keep = model.recs.len() * permille as usize / 1000;
                    wal.truncate_after(model.first + keep as u64 - 1).unwrap();
                    model.recs.truncate(keep);
                }
                Op::Purge(n) => {
                    let upto = model.first + u64::from(n);
                    wal.purge_before(upto).unwrap();
                    if upto > model.next() {
                        model = Model { first: upto, recs: vec![] };
                    } else {
                        model.recs.drain(..n as usize);
                        model.first = upto;
                    }
                }
                Op::Reopen => {
                    drop(wal);
                    let (w, report) = Wal::open(dir.path(), small(), 1).unwrap();
                    prop_assert!(!report.torn_tail, "a clean restart has no torn tail");
                    wal = w;
                    prop_assert_eq!(wal.durable_next(), model.next(), "reopen syncs what it found");
                }
            }
            prop_assert!(wal.first_index() <= model.first, "purge keeps every record at or after its point");
            prop_assert_eq!(wal.next_index(), model.next());
            prop_assert!(wal.durable_next() <= wal.next_index());
            for (k, p) in model.recs.iter().enumerate() {
                let i = model.first + k as u64;
                prop_assert_eq!(wal.get(i).unwrap(), &p[..], "index {}", i);
            }
            let iterated: Vec<u64> = wal.iter_from(model.first).map(|r| r.unwrap().0).collect();
            prop_assert_eq!(iterated, (model.first..model.next()).collect::<Vec<_>>());
        }
    }
}
