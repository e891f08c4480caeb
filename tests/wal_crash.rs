//! Crash safety of the WAL, simulated at the byte level.
//!
//! A random workload on several interleaved groups runs against a real WAL (small
//! segments and a small `segments_soft_max`, so that rolls and the forward copies of
//! reclamation happen between syncs). After every sync that returns, the
//! segment files are copied: that is what the disk is known to hold. Just before every
//! sync, a crash is simulated by building disk images from the last synced copy and
//! the current files (the page cache): unsynced bytes dropped, kept, torn at a random
//! byte, garbled, or written back page by page in random order. Each image is opened:
//! the recovered log must be the state after some prefix of the operations issued
//! since the last returned sync, for every group at once, so it holds every synced
//! record and never a record that was not written (or was truncated away before a
//! sync).
use std::collections::BTreeMap;
use std::path::Path;

use fleetlm::config::WalConfig;
use fleetlm::wal::format::{self, Slot};
use fleetlm::wal::{GroupId, Wal, WalError};

fn small() -> WalConfig {
    WalConfig {
        segment_size_bytes: 8192,
        record_payload_max_bytes: 2048,
        append_batch_max: 64,
        segments_soft_max: 3,
        ..WalConfig::default()
    }
}

const GROUPS: GroupId = 3;

/// The group of the single-group tests below.
const G: GroupId = 0;

/// Opens the log with group `G` starting at index 1 if it is new.
fn open1(dir: &Path) -> Result<Wal, WalError> {
    let (mut wal, report) = Wal::open(dir, small())?;
    if !report.groups.contains_key(&G) {
        wal.purge_before(G, 1)?;
        wal.sync()?;
    }
    Ok(wal)
}

/// splitmix64: deterministic, dependency-free randomness for reproducible workloads.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

type Image = BTreeMap<String, Vec<u8>>;

fn read_image(dir: &Path) -> Image {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect()
}

fn write_image(img: &Image, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in img {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// The log as a client sees it: records from `first`.
#[derive(Clone, Debug)]
struct Model {
    first: u64,
    recs: Vec<Vec<u8>>,
}

impl Model {
    fn next(&self) -> u64 {
        self.first + self.recs.len() as u64
    }
}

#[derive(Clone, Debug)]
enum Op {
    Append(GroupId, Vec<u8>),
    Truncate(GroupId, u64),
}

fn apply(models: &mut [Model], op: &Op) {
    match op {
        Op::Append(g, p) => models[*g as usize].recs.push(p.clone()),
        Op::Truncate(g, cut) => {
            let m = &mut models[*g as usize];
            m.recs.truncate((cut - m.first) as usize)
        }
    }
}

/// Does every group of the recovered WAL equal `c` (purge may leave extra records
/// below a group's `first`)?
fn matches(wal: &Wal, c: &[Model]) -> bool {
    c.iter().enumerate().all(|(g, c)| {
        let g = g as GroupId;
        wal.first_index(g) <= c.first
            && wal.next_index(g) == c.next()
            && c.recs.iter().enumerate().all(|(k, p)| wal.get(g, c.first + k as u64).is_ok_and(|got| got == &p[..]))
    })
}

#[derive(Clone, Copy, Debug)]
enum Crash {
    DropUnsynced,
    KeepAll,
    Torn,
    Garbled,
    PagesOutOfOrder,
}

/// The disk after a crash: synced bytes kept, unsynced bytes treated per `how`.
fn crash_image(synced: &Image, current: &Image, how: Crash, rng: &mut Rng) -> Image {
    let mut out = Image::new();
    for (name, cur) in current {
        // A segment rolled in since the sync is not durable at all: neither its name
        // (the directory is fsync'd by the next sync) nor its header.
        let new_file = !synced.contains_key(name);
        if new_file && rng.chance(25) {
            continue; // the rename never reached the disk
        }
        let base = synced.get(name).cloned().unwrap_or_else(|| vec![0u8; cur.len()]);
        assert_eq!(base.len(), cur.len(), "segments never change size");
        let lo = base.iter().zip(cur).position(|(a, b)| a != b);
        let Some(lo) = lo else {
            out.insert(name.clone(), base);
            continue;
        };
        let hi = cur.len() - base.iter().rev().zip(cur.iter().rev()).position(|(a, b)| a != b).unwrap();
        let mut img = base.clone();
        match how {
            Crash::DropUnsynced => {}
            Crash::KeepAll => img.copy_from_slice(cur),
            Crash::Torn | Crash::Garbled => {
                let cut = lo + rng.below((hi - lo + 1) as u64) as usize;
                img[..cut].copy_from_slice(&cur[..cut]);
                if matches!(how, Crash::Garbled) {
                    let n = 1 + rng.below(64) as usize;
                    for b in img.iter_mut().skip(cut).take(n.min(hi.saturating_sub(cut))) {
                        *b = rng.next() as u8;
                    }
                }
            }
            Crash::PagesOutOfOrder => {
                const PAGE: usize = 4096;
                for page in (lo / PAGE)..hi.div_ceil(PAGE) {
                    let range = page * PAGE..((page + 1) * PAGE).min(cur.len());
                    if rng.chance(50) {
                        img[range.clone()].copy_from_slice(&cur[range]);
                    }
                }
            }
        }
        out.insert(name.clone(), img);
    }
    out
}

/// Runs the workload; the number of crashes simulated and of forward copies written.
fn run_workload(seed: u64, steps: usize) -> (usize, usize) {
    let mut rng = Rng(seed);
    let root = tempfile::tempdir().unwrap();
    let live_dir = root.path().join("live");
    let (mut wal, _) = Wal::open(&live_dir, small()).unwrap();
    let mut model: Vec<Model> = (0..GROUPS).map(|_| Model { first: 0, recs: vec![] }).collect();
    let mut synced_image = read_image(&live_dir);
    let mut synced_model = model.clone();
    let mut since_sync: Vec<Op> = vec![];
    let mut unique = 0u64;
    let mut crashes = 0usize;
    let mut copies = 0usize;
    for step in 0..steps {
        let roll = rng.below(100);
        // Group 0 writes most; the others go idle and get copied forward.
        let g = if rng.chance(60) { 0 } else { rng.below(u64::from(GROUPS)) as GroupId };
        let m = &model[g as usize];
        if roll < 60 {
            let n = 1 + rng.below(4) as usize;
            let batch: Vec<Vec<u8>> = (0..n)
                .map(|_| {
                    unique += 1;
                    let mut p = format!("seed{seed}-rec{unique}").into_bytes();
                    p.resize(p.len() + rng.below(700) as usize, (unique % 251) as u8);
                    p
                })
                .collect();
            wal.append(g, &batch).unwrap();
            for p in batch {
                let op = Op::Append(g, p);
                apply(&mut model, &op);
                since_sync.push(op);
            }
        } else if roll < 68 && m.next() > m.first {
            let cut = m.first + rng.below(m.recs.len() as u64 + 1);
            wal.truncate_from(g, cut).unwrap();
            let op = Op::Truncate(g, cut);
            apply(&mut model, &op);
            since_sync.push(op);
        } else if roll < 72 {
            // A purge (Raft records its point in its metadata first), then a sync and a
            // reclamation, so that the crash images below never straddle one.
            let upto = m.first + rng.below(m.recs.len() as u64 + 3);
            wal.purge_before(g, upto).unwrap();
            let m = &mut model[g as usize];
            if upto > m.next() {
                *m = Model { first: upto, recs: vec![] };
            } else {
                m.recs.drain(..(upto - m.first) as usize);
                m.first = upto;
            }
            wal.sync().unwrap();
            wal.reclaim_blocking().unwrap();
            synced_image = read_image(&live_dir);
            synced_model = model.clone();
            since_sync.clear();
        } else {
            // Crash just before this sync returns, in every way the disk may hold it.
            let current = read_image(&live_dir);
            for how in [Crash::DropUnsynced, Crash::KeepAll, Crash::Torn, Crash::Garbled, Crash::PagesOutOfOrder] {
                let img = crash_image(&synced_image, &current, how, &mut rng);
                let dir = root.path().join(format!("crash-{step}-{how:?}"));
                write_image(&img, &dir);
                let recovered = Wal::open(&dir, small());
                let (mut rwal, _) = match recovered {
                    Ok(w) => w,
                    Err(e) => panic!("seed {seed} step {step} {how:?}: recovery failed: {e}"),
                };
                // What the Raft log store does at open: purge again to its last purged
                // point (the log does not record purges).
                for (g, m) in synced_model.iter().enumerate() {
                    rwal.purge_before(g as GroupId, m.first).unwrap();
                }
                let mut candidate = synced_model.clone();
                let mut ok = matches(&rwal, &candidate);
                for op in &since_sync {
                    apply(&mut candidate, op);
                    ok = ok || matches(&rwal, &candidate);
                }
                if !ok {
                    eprintln!(
                        "ops since sync: {:?}",
                        since_sync
                            .iter()
                            .map(|o| match o {
                                Op::Append(g, p) => format!("{g}A{}", String::from_utf8_lossy(&p[..p.len().min(16)])),
                                Op::Truncate(g, c) => format!("{g}T{c}"),
                            })
                            .collect::<Vec<_>>()
                    );
                }
                let ranges = |w: &Wal| (0..GROUPS).map(|g| (w.first_index(g), w.next_index(g))).collect::<Vec<_>>();
                let model_ranges = |m: &[Model]| m.iter().map(|m| (m.first, m.next())).collect::<Vec<_>>();
                assert!(
                    ok,
                    "seed {seed} step {step} {how:?}: recovered {:?} is not a prefix state; synced {:?}, now {:?}",
                    ranges(&rwal),
                    model_ranges(&synced_model),
                    model_ranges(&model),
                );
                // The recovered log takes new writes, and a second recovery agrees.
                let next = rwal.next_index(1);
                rwal.append(1, &[b"after-crash"]).unwrap();
                rwal.sync().unwrap();
                drop(rwal);
                let (again, report) = Wal::open(&dir, small()).unwrap();
                assert!(!report.torn_tail, "seed {seed} step {step} {how:?}: second recovery found a torn tail");
                assert_eq!(again.next_index(1), next + 1);
                assert_eq!(again.get(1, next).unwrap(), b"after-crash");
                drop(again);
                std::fs::remove_dir_all(&dir).unwrap();
                crashes += 1;
            }
            wal.sync().unwrap();
            synced_image = read_image(&live_dir);
            copies += synced_image
                .values()
                .flat_map(|b| record_offsets(b))
                .filter(|(_, m)| m.kind == format::RecordKind::Copy)
                .count();
            synced_model = model.clone();
            since_sync.clear();
        }
    }
    (crashes, copies)
}

#[test]
fn crash_at_every_sync_point_recovers_a_prefix_with_every_synced_record() {
    // WAL_CRASH_SEEDS=N widens the search (a soak); CI runs the default.
    let seeds: u64 = std::env::var("WAL_CRASH_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let (mut crashes, mut copies) = (0, 0);
    for seed in 1..=seeds {
        let (c, k) = run_workload(seed, 250);
        crashes += c;
        copies += k;
    }
    assert!(crashes > 1000, "the workload simulated only {crashes} crashes");
    assert!(copies > 100, "reclamation copied only {copies} records forward");
}

/// Offsets of the intact records of a segment file.
fn record_offsets(bytes: &[u8]) -> Vec<(usize, format::RecordMeta)> {
    let mut out = vec![];
    let mut off = format::SEGMENT_HEADER_BYTES;
    while let Slot::Record(m) = format::decode_slot(bytes, off, u32::MAX) {
        out.push((off, m));
        off += m.stored_bytes();
    }
    out
}

#[test]
fn bit_flips_in_synced_records_are_reported_as_corruption() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("wal");
    let mut wal = open1(&dir).unwrap();
    // Sync after every batch, so that each record is attested by a later one.
    for i in 1..=60u64 {
        wal.append(G, &[format!("message {i} ").repeat(1 + (i as usize % 9))]).unwrap();
        wal.sync().unwrap();
    }
    drop(wal);
    let image = read_image(&dir);
    let mut rng = Rng(42);
    let mut checked = 0;
    for (name, bytes) in &image {
        for (off, meta) in record_offsets(bytes) {
            if meta.index >= 60 || meta.kind != format::RecordKind::Data {
                continue; // The last record has no later record to attest it.
            }
            let covered = format::RECORD_HEADER_BYTES + meta.payload_len as usize;
            let bit = rng.below(covered as u64 * 8) as usize;
            let mut damaged = image.clone();
            damaged.get_mut(name).unwrap()[off + bit / 8] ^= 1 << (bit % 8);
            let ddir = root.path().join(format!("flip-{}", meta.index));
            write_image(&damaged, &ddir);
            match Wal::open(&ddir, small()) {
                Err(WalError::Corruption { segment, offset, detail }) => {
                    assert!(segment.ends_with(name), "names the segment: {segment:?} vs {name}");
                    assert_eq!(offset, off as u64, "names the offset of record {}: {detail}", meta.index);
                }
                Err(other) => panic!("record {}: expected corruption, got {other}", meta.index),
                Ok((w, _)) => {
                    panic!("record {}: flip of bit {bit} not detected; recovered up to {}", meta.index, w.next_index(G))
                }
            }
            std::fs::remove_dir_all(&ddir).unwrap();
            checked += 1;
        }
    }
    assert_eq!(checked, 59);
}

#[test]
fn a_missing_middle_segment_is_corruption() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("wal");
    let mut wal = open1(&dir).unwrap();
    for i in 1..=40u64 {
        wal.append(G, &[vec![i as u8; 990]]).unwrap();
        wal.sync().unwrap();
    }
    drop(wal);
    let mut names: Vec<_> = read_image(&dir).into_keys().collect();
    names.sort();
    std::fs::remove_file(dir.join(&names[2])).unwrap();
    let err = open1(&dir).err().expect("a gap must not open");
    assert!(matches!(err, WalError::Corruption { .. }), "{err}");
}
