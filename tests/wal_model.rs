//! Property test: random append / sync / truncate / purge / reclaim / reopen sequences
//! on several interleaved groups of one shared log, against a plain in-memory model
//! (one vector per group). Small segments and a small `segments_soft_max` make rolls,
//! reclamation and forward copies of idle groups frequent.
use fleetlm::config::WalConfig;
use fleetlm::wal::Wal;
use proptest::prelude::*;

const GROUPS: u32 = 3;

fn small() -> WalConfig {
    WalConfig {
        segment_size_bytes: 4096,
        record_payload_max_bytes: 1024,
        append_batch_max: 16,
        segments_soft_max: 3,
        ..WalConfig::default()
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Payload sizes of one batch of a group.
    Append(u32, Vec<usize>),
    Sync,
    /// Keep this fraction (per mille) of the group's live records.
    TruncateKeep(u32, u16),
    /// Purge this many records from the group's front (may run past the end).
    Purge(u32, u8),
    /// Delete the segments no group needs (after a sync).
    Reclaim,
    /// Drop and reopen: a process restart (the page cache keeps unsynced writes).
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let g = 0..GROUPS;
    prop_oneof![
        // Group 0 writes most: the others go idle and pin old segments.
        6 => (prop_oneof![3 => Just(0u32), 1 => g.clone()], proptest::collection::vec(0usize..1024, 1..6))
            .prop_map(|(g, sizes)| Op::Append(g, sizes)),
        2 => Just(Op::Sync),
        1 => (g.clone(), 0u16..=1000).prop_map(|(g, k)| Op::TruncateKeep(g, k)),
        1 => (g, any::<u8>()).prop_map(|(g, n)| Op::Purge(g, n)),
        1 => Just(Op::Reclaim),
        1 => Just(Op::Reopen),
    ]
}

#[derive(Default)]
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
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn every_group_behaves_like_a_vec(ops in proptest::collection::vec(op(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(dir.path(), small()).unwrap();
        let mut models: Vec<Model> = (0..GROUPS).map(|_| Model::default()).collect();
        let mut counter = 0u64;
        let mut max_segments = 0;
        for op in ops {
            match op {
                Op::Append(g, sizes) => {
                    let model = &mut models[g as usize];
                    let batch: Vec<Vec<u8>> = sizes.iter().map(|&n| {
                        counter += 1;
                        let mut p = counter.to_le_bytes().to_vec();
                        p.resize(n.max(8), counter as u8);
                        p
                    }).collect();
                    let range = wal.append(g, &batch).unwrap();
                    prop_assert_eq!(range.start, model.next());
                    model.recs.extend(batch);
                    prop_assert_eq!(range.end, model.next());
                }
                Op::Sync => {
                    wal.sync().unwrap();
                    prop_assert_eq!(wal.durable_position(), wal.end_position());
                }
                Op::TruncateKeep(g, permille) => {
                    let model = &mut models[g as usize];
                    let keep = model.recs.len() * permille as usize / 1000;
                    wal.truncate_from(g, model.first + keep as u64).unwrap();
                    model.recs.truncate(keep);
                }
                Op::Purge(g, n) => {
                    let model = &mut models[g as usize];
                    let upto = model.first + u64::from(n);
                    wal.purge_before(g, upto).unwrap();
                    if upto > model.next() {
                        *model = Model { first: upto, recs: vec![] };
                    } else {
                        model.recs.drain(..n as usize);
                        model.first = upto;
                    }
                }
                Op::Reclaim => {
                    wal.sync().unwrap();
                    wal.reclaim_blocking().unwrap();
                }
                Op::Reopen => {
                    drop(wal);
                    let (w, report) = Wal::open(dir.path(), small()).unwrap();
                    prop_assert!(!report.torn_tail, "a clean restart has no torn tail");
                    wal = w;
                    prop_assert_eq!(wal.durable_position(), wal.end_position(), "reopen syncs what it found");
                    // Purge points are not in the log (Raft keeps its last purged id in
                    // its metadata): records purged before the restart come back until
                    // the owner purges again, which the Raft log store does at open.
                    for (g, model) in models.iter().enumerate() {
                        wal.purge_before(g as u32, model.first).unwrap();
                    }
                }
            }
            max_segments = max_segments.max(wal.segment_count());
            for (g, model) in models.iter().enumerate() {
                let g = g as u32;
                prop_assert!(wal.first_index(g) <= model.first, "purge keeps every record of group {} at or after its point", g);
                prop_assert_eq!(wal.next_index(g), model.next(), "group {}", g);
                for (k, p) in model.recs.iter().enumerate() {
                    let i = model.first + k as u64;
                    prop_assert_eq!(wal.get(g, i).unwrap(), &p[..], "group {} index {}", g, i);
                }
                let iterated: Vec<u64> = wal.iter_from(g, model.first).map(|r| r.unwrap().0).collect();
                prop_assert_eq!(iterated, (model.first..model.next()).collect::<Vec<_>>());
            }
        }
        // Bounded disk. Large groups (live records over half a segment) are not copied:
        // their next snapshot purges them. Purge those, then roll the log past the soft
        // maximum with a filler group that purges too: a sync and a reclamation leave the
        // newest `segments_soft_max` segments plus what the small groups' copies take.
        let stored = |p: &Vec<u8>| (32 + p.len()).div_ceil(8) * 8;
        for (g, model) in models.iter_mut().enumerate() {
            if model.recs.iter().map(stored).sum::<usize>() > 4096 / 2 {
                wal.purge_before(g as u32, model.next()).unwrap();
                model.first = model.next();
                model.recs.clear();
            }
        }
        let filler = GROUPS;
        for _ in 0..(small().segments_soft_max + 2) * 4 {
            wal.append(filler, &[vec![0u8; 1000]]).unwrap();
        }
        wal.purge_before(filler, wal.next_index(filler)).unwrap();
        wal.sync().unwrap();
        wal.reclaim_blocking().unwrap();
        let small_live: usize = models.iter().flat_map(|m| m.recs.iter()).map(stored).sum();
        let bound = small().segments_soft_max + 2 + small_live.div_ceil(4096 - 64 - 1056);
        let state: Vec<(u64, u64)> = (0..=GROUPS).map(|g| (wal.first_index(g), wal.next_index(g))).collect();
        prop_assert!(wal.segment_count() <= bound, "{} segments for {} live bytes (bound {}); most {} during the run; groups {:?}, durable {:?}, end {:?}",
            wal.segment_count(), small_live, bound, max_segments, state, wal.durable_position(), wal.end_position());
        for (g, model) in models.iter().enumerate() {
            for (k, p) in model.recs.iter().enumerate() {
                prop_assert_eq!(wal.get(g as u32, model.first + k as u64).unwrap(), &p[..]);
            }
        }
        drop(wal);
        let (wal, _) = Wal::open(dir.path(), small()).unwrap();
        for (g, model) in models.iter().enumerate() {
            for (k, p) in model.recs.iter().enumerate() {
                prop_assert_eq!(wal.get(g as u32, model.first + k as u64).unwrap(), &p[..], "after reclamation and reopen");
            }
        }
    }
}
