//! WAL operations on a real directory, on one group of the shared log (the interleaving
//! of several groups is `wal_groups.rs`): round trip, rollover, truncate, purge,
//! reopen, failed-sync poisoning.
use fleetlm::config::WalConfig;
use fleetlm::wal::{GroupId, Wal, WalError};

fn small() -> WalConfig {
    WalConfig {
        segment_size_bytes: 8192,
        record_payload_max_bytes: 2048,
        append_batch_max: 64,
        segments_soft_max: 64,
        ..WalConfig::default()
    }
}

/// The group these tests use.
const G: GroupId = 7;

/// Opens the log with group `G` starting at index `first` if it is new.
fn open(dir: &std::path::Path, config: WalConfig, first: u64) -> (Wal, fleetlm::wal::RecoveryReport) {
    let (mut wal, report) = Wal::open(dir, config).unwrap();
    if !report.groups.contains_key(&G) {
        wal.purge_before(G, first).unwrap();
        wal.sync().unwrap();
    }
    (wal, report)
}

fn range(report: &fleetlm::wal::RecoveryReport) -> (u64, u64) {
    report.groups.get(&G).map_or((0, 0), |r| (r.start, r.end))
}

fn all_durable(wal: &Wal) -> bool {
    wal.durable_position() == wal.end_position()
}

fn payload(i: u64, len: usize) -> Vec<u8> {
    let mut p = format!("record-{i}-").into_bytes();
    p.resize(len.max(p.len()), (i % 251) as u8);
    p
}

fn contents(wal: &Wal) -> Vec<(u64, Vec<u8>)> {
    wal.iter_from(G, 0).map(|r| r.map(|(i, p)| (i, p.to_vec()))).collect::<Result<_, _>>().unwrap()
}

#[test]
fn round_trip_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, report) = open(dir.path(), small(), 1);
    assert_eq!((range(&report), report.torn_tail), ((0, 0), false), "a new log has no groups");
    let written: Vec<Vec<u8>> = (1..=20).map(|i| payload(i, (i as usize * 37) % 300)).collect();
    assert_eq!(wal.append(G, &written).unwrap(), 1..21);
    assert!(!all_durable(&wal), "nothing is durable before a sync");
    wal.sync().unwrap();
    assert!(all_durable(&wal));
    assert_eq!(wal.get(G, 7).unwrap(), &written[6][..]);
    assert!(matches!(wal.get(G, 21), Err(WalError::OutOfRange { index: 21, .. })));
    assert!(matches!(wal.get(G, 0), Err(WalError::OutOfRange { index: 0, .. })));
    drop(wal);
    let (wal, report) = open(dir.path(), small(), 1);
    assert_eq!((range(&report), report.torn_tail), ((1, 21), false));
    let expect: Vec<(u64, Vec<u8>)> = (1..=20).zip(written).collect();
    assert_eq!(contents(&wal), expect);
    assert!(all_durable(&wal), "what recovery found is synced before use");
}

#[test]
fn empty_payloads_and_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), small(), 0);
    assert_eq!(wal.append(G, &[b"" as &[u8], b"x"]).unwrap(), 0..2);
    assert_eq!(wal.get(G, 0).unwrap(), b"");
    let big = vec![0u8; 2049];
    assert!(matches!(wal.append(G, &[&big]), Err(WalError::RecordTooLarge { len: 2049, max: 2048 })));
    let many = vec![b"a"; 65];
    assert!(matches!(wal.append(G, &many), Err(WalError::BatchTooLarge { len: 65, max: 64 })));
    assert_eq!(wal.next_index(G), 2, "rejected batches write nothing");
    let bad = WalConfig { record_payload_max_bytes: 8192, ..small() };
    assert!(matches!(Wal::open(dir.path(), bad), Err(WalError::Config(_))));
}

#[test]
fn segment_rollover_keeps_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), small(), 1);
    // 974-byte records take 1008 bytes: 8 fit after the 64-byte header (and the first
    // segment's 32-byte reset marker that starts the group at 1), so 100 need 13 segments.
    for i in 1..=100u64 {
        wal.append(G, &[payload(i, 974)]).unwrap();
        if i % 7 == 0 {
            wal.sync().unwrap();
        }
    }
    wal.sync().unwrap();
    assert_eq!(wal.segment_count(), 13);
    let files = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(files, 13, "one file per segment, no leftovers");
    for f in std::fs::read_dir(dir.path()).unwrap() {
        assert_eq!(f.unwrap().metadata().unwrap().len(), 8192, "segments are preallocated, never extended");
    }
    drop(wal);
    let (wal, report) = open(dir.path(), small(), 1);
    assert_eq!(range(&report), (1, 101));
    for i in 1..=100u64 {
        assert_eq!(wal.get(G, i).unwrap(), &payload(i, 974)[..]);
    }
}

#[test]
fn truncate_after_then_append_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), small(), 1);
    for i in 1..=30u64 {
        wal.append(G, &[payload(i, 500)]).unwrap();
    }
    wal.sync().unwrap();
    // Cut back into an earlier segment, then write a different suffix.
    wal.truncate_after(G, 9).unwrap();
    assert_eq!(wal.next_index(G), 10);
    assert!(!all_durable(&wal), "the truncation marker is not durable yet");
    assert!(matches!(wal.get(G, 10), Err(WalError::OutOfRange { .. })));
    let new: Vec<Vec<u8>> = (10..=15).map(|i| payload(i + 1000, 300)).collect();
    assert_eq!(wal.append(G, &new).unwrap(), 10..16);
    wal.sync().unwrap();
    drop(wal);
    let (wal, report) = open(dir.path(), small(), 1);
    assert_eq!(range(&report), (1, 16));
    for i in 1..=9u64 {
        assert_eq!(wal.get(G, i).unwrap(), &payload(i, 500)[..]);
    }
    for (k, i) in (10..=15u64).enumerate() {
        assert_eq!(wal.get(G, i).unwrap(), &new[k][..], "index {i} holds the new suffix, not the truncated one");
    }
    // Truncating everything, and below the start, behave.
    let (mut wal, _) = open(dir.path(), small(), 1);
    wal.truncate_after(G, 0).unwrap();
    assert_eq!((wal.first_index(G), wal.next_index(G)), (1, 1));
    wal.sync().unwrap();
    drop(wal);
    let (wal, report) = open(dir.path(), small(), 1);
    assert_eq!(range(&report), (1, 1));
    drop(wal);
}

#[test]
fn purge_before_deletes_whole_segments_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), small(), 1);
    for i in 1..=40u64 {
        wal.append(G, &[payload(i, 974)]).unwrap(); // 8 per segment: 1..=8, 9..=16, ...
    }
    wal.sync().unwrap();
    assert_eq!(wal.segment_count(), 5);
    wal.purge_before(G, 20).unwrap(); // 1..=16 are in the first two segments
    assert_eq!(wal.first_index(G), 20);
    assert_eq!(wal.segment_count(), 5, "purge only drops indexes; reclamation deletes segments");
    assert_eq!(wal.reclaim_blocking().unwrap(), 2);
    assert_eq!(wal.segment_count(), 3, "segments holding only indexes < 17 are deleted");
    assert!(matches!(wal.get(G, 19), Err(WalError::OutOfRange { .. })));
    assert_eq!(wal.get(G, 20).unwrap(), &payload(20, 974)[..]);
    drop(wal);
    let (mut wal, report) = open(dir.path(), small(), 1);
    // Purge is by segment: after reopen the log starts at its first segment.
    assert_eq!(range(&report), (17, 41));
    for i in 17..=40u64 {
        assert_eq!(wal.get(G, i).unwrap(), &payload(i, 974)[..]);
    }
    // Purge past the end (a snapshot ahead of the log): the log restarts there.
    wal.purge_before(G, 100).unwrap();
    assert_eq!((wal.first_index(G), wal.next_index(G)), (100, 100));
    wal.sync().unwrap();
    wal.reclaim_blocking().unwrap();
    assert_eq!(wal.segment_count(), 1);
    wal.append(G, &[payload(100, 10)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (wal, report) = open(dir.path(), small(), 1);
    assert_eq!(range(&report), (100, 101));
    assert_eq!(wal.get(G, 100).unwrap(), &payload(100, 10)[..]);
}

#[test]
fn failed_sync_poisons_every_later_write() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), small(), 1);
    wal.append(G, &[b"a"]).unwrap();
    let job = wal.begin_sync().unwrap().expect("one record to sync");
    let eio = WalError::Io {
        op: "fdatasync segment",
        path: dir.path().into(),
        source: std::io::Error::from_raw_os_error(libc::EIO),
    };
    assert!(wal.complete_sync(job, Err(eio)).is_err());
    assert!(!all_durable(&wal), "a failed sync makes nothing durable");
    assert!(matches!(wal.append(G, &[b"b"]), Err(WalError::Poisoned(_))));
    assert!(matches!(wal.sync(), Err(WalError::Poisoned(_))));
    assert!(matches!(wal.truncate_after(G, 0), Err(WalError::Poisoned(_))));
    assert!(matches!(wal.purge_before(G, 1), Err(WalError::Poisoned(_))));
    assert_eq!(wal.get(G, 1).unwrap(), b"a", "reads still work");
    let msg = wal.append(G, &[b"c"]).unwrap_err().to_string();
    assert!(msg.contains("read-only after a failed sync"), "{msg}");
}

/// Garbage anywhere past the last record (up to the segment's last byte) is a torn
/// tail: recovery zeroes all of it in the file, keeps every record, and appends after
/// it survive the next reopen. The segment is larger than the zeroing chunk (1 MiB).
#[test]
fn garbage_up_to_the_segment_end_is_zeroed_on_recovery() {
    use std::os::unix::fs::FileExt;
    let config = WalConfig { segment_size_bytes: 3 << 20, ..small() };
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), config.clone(), 1);
    let written: Vec<Vec<u8>> = (1..=5).map(|i| payload(i, 100)).collect();
    wal.append(G, &written).unwrap();
    wal.sync().unwrap();
    drop(wal);

    let segment = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .unwrap();
    let size = std::fs::metadata(&segment).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&segment).unwrap();
    file.write_all_at(&[0xAB; 64], (1 << 20) + 4096).unwrap();
    file.write_all_at(&[0xCD], size - 1).unwrap();
    drop(file);

    let (mut wal, report) = open(dir.path(), config.clone(), 1);
    assert_eq!((range(&report), report.torn_tail), ((1, 6), true));
    let bytes = std::fs::read(&segment).unwrap();
    assert!(bytes[1 << 20..].iter().all(|&b| b == 0), "the garbage was zeroed in the file");
    wal.append(G, &[payload(6, 100)]).unwrap();
    wal.sync().unwrap();
    drop(wal);

    let (wal, report) = open(dir.path(), config, 1);
    assert_eq!((range(&report), report.torn_tail), ((1, 7), false));
    let expect: Vec<(u64, Vec<u8>)> = (1..=6).map(|i| (i, payload(i, 100))).collect();
    assert_eq!(contents(&wal), expect);
}

/// Overlapping syncs: a sync started while another is in flight lists only what was
/// written since (the first took the dirty flags), an idle second start is `None`, and
/// the blocking sync (`sync`: open, purge) covers everything the in-flight one does,
/// directory included: it must not trust the flags.
#[test]
fn overlapping_syncs_and_the_blocking_sync_covers_what_is_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), small(), 1);
    wal.append(G, &[payload(1, 100)]).unwrap();
    let first = wal.begin_sync().unwrap().expect("a record is waiting");
    assert_eq!(first.segments.len(), 1);
    assert!(wal.begin_sync().unwrap().is_none(), "the sync in flight covers everything written");

    // Roll into new segments while `first` is in flight.
    let big: Vec<Vec<u8>> = (2..=40).map(|i| payload(i, 1500)).collect();
    wal.append(G, &big).unwrap();
    assert!(wal.segment_count() > 1);
    let second = wal.begin_sync().unwrap().expect("new records are waiting");
    assert!(second.segments.iter().any(|s| *s > first.segments[0]), "the new segments are in the second sync");
    assert!(second.dir, "a segment was renamed in since the first sync started");

    let covering = wal.begin_sync_covering_all().unwrap().expect("nothing is durable yet");
    for seq in first.segments.iter().chain(&second.segments) {
        assert!(covering.segments.contains(seq), "segment {seq} of an in-flight sync is not covered");
    }
    assert!(covering.dir, "the in-flight syncs carry the directory fsync");
    drop((first, second, covering));

    wal.sync().unwrap();
    assert!(all_durable(&wal));
    assert!(wal.begin_sync_covering_all().unwrap().is_none());
    assert!(wal.begin_sync().unwrap().is_none());
}

/// Unlinks of reclaimed segments may reach the disk in any order: after a crash between
/// them and the directory fsync, any subset of the deleted files can be back, with gaps.
/// The recorded front makes open delete them again instead of reading a gap as lost
/// data.
#[test]
fn reclaimed_segments_that_come_back_after_a_crash_are_deleted_again() {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, _) = open(dir.path(), small(), 1);
    for i in 1..=40u64 {
        wal.append(G, &[payload(i, 974)]).unwrap(); // 8 per segment: 5 segments
    }
    wal.sync().unwrap();
    let names = |d: &std::path::Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".wal"))
            .collect();
        v.sort();
        v
    };
    let before = names(dir.path());
    assert_eq!(before.len(), 5);
    let saved: Vec<Vec<u8>> = before.iter().map(|n| std::fs::read(dir.path().join(n)).unwrap()).collect();
    wal.purge_before(G, 33).unwrap(); // 1..=32 are in the first four segments
    assert_eq!(wal.reclaim_blocking().unwrap(), 4);
    drop(wal);
    // The crash undid the unlinks of the first and the third segment only.
    for k in [0, 2] {
        std::fs::write(dir.path().join(&before[k]), &saved[k]).unwrap();
    }
    let (wal, report) = Wal::open(dir.path(), small()).unwrap();
    assert_eq!(names(dir.path()), vec![before[4].clone()], "the stale segments are deleted again");
    assert_eq!(range(&report), (33, 41));
    for i in 33..=40u64 {
        assert_eq!(wal.get(G, i).unwrap(), &payload(i, 974)[..]);
    }
}

/// Resident bytes of this process's mappings of files under `dir` (smaps `Rss`).
fn mapped_resident_bytes(dir: &std::path::Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
    let dir = dir.to_str().unwrap();
    let mut ours = false;
    let mut kb = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            ours = line.contains(dir);
        } else if ours && let Some(rest) = line.strip_prefix("Rss:") {
            kb += rest.trim().trim_end_matches(" kB").trim().parse::<u64>().unwrap();
        }
    }
    kb * 1024
}

/// Reading records (apply, replication to followers) faults their released pages back
/// into the process; they used to stay mapped until their segment was deleted (≈1 GB of
/// file-backed RSS on a 2-core node under 900 KB compactions). A sweep every
/// `page_release_sweep_bytes` made durable unmaps them again.
#[test]
fn pages_that_reads_faulted_back_are_unmapped_by_the_next_sweep() {
    const MIB: usize = 1 << 20;
    let dir = tempfile::tempdir().unwrap();
    let config = WalConfig {
        segment_size_bytes: MIB as u64,
        record_payload_max_bytes: 64 << 10,
        append_batch_max: 64,
        segments_soft_max: 64,
        page_release_sweep_bytes: 4 * MIB,
    };
    let (mut wal, _) = open(dir.path(), config, 0);
    let record = vec![7u8; 60 << 10];
    let append_mib = |wal: &mut Wal, mib: usize| {
        for _ in 0..mib * 17 {
            wal.append(G, &[&record]).unwrap();
            wal.sync().unwrap();
        }
    };
    append_mib(&mut wal, 3);
    let written = mapped_resident_bytes(dir.path());
    assert!(written <= 2 * MIB as u64, "{written} bytes mapped after writing 3 MiB");
    // Read every record back: the pages are mapped again.
    let mut sum = 0u64;
    for i in 0..wal.next_index(G) {
        sum += wal.get(G, i).unwrap().iter().map(|b| u64::from(*b)).sum::<u64>();
    }
    assert!(sum > 0);
    let read = mapped_resident_bytes(dir.path());
    assert!(read >= 3 * MIB as u64, "{read} bytes mapped after reading 3 MiB back");
    // Past the sweep, what the reads mapped goes again; at most the tail's last step
    // (< 1 MiB) stays. (Without the sweep the first two segments, 2 MiB, stayed: the
    // ordinary release covers the tail segment and later ones only.)
    append_mib(&mut wal, 5);
    let swept = mapped_resident_bytes(dir.path());
    assert!(swept < (MIB + MIB / 2) as u64, "{swept} bytes still mapped after the sweep ({read} after the reads)");
}
