//! The on-disk body store: appends across segment boundaries, reads, reopen at a
//! snapshot's length, snapshot sources, and replacing the whole store.
use fleetlm::raft::bodies::{BodiesSource, FileBodies};
use fleetlm::store::Bodies;

const SEG: u64 = 4096;

fn body(i: usize) -> Vec<u8> {
    format!("{{\"seq\":{i},\"text\":\"{}\"}}", "x".repeat(i * 37 % 900)).into_bytes()
}

#[test]
fn appends_cross_segments_and_reopen_keeps_exactly_the_snapshot_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bodies");
    let mut b = FileBodies::open(&path, SEG, 0).unwrap();
    let refs: Vec<_> = (0..60).map(|i| b.append(&body(i)).unwrap()).collect();
    for (i, r) in refs.iter().enumerate() {
        assert_eq!(b.get(*r).unwrap(), &body(i)[..], "body {i}");
        assert_eq!(r.offset / SEG, (r.offset + u64::from(r.len) - 1) / SEG, "a body never spans segments");
    }
    assert!(b.len() > 5 * SEG, "the test must cross several segments");
    // A snapshot at body 40: sync, remember the length.
    let snap_len = refs[39].offset + u64::from(refs[39].len);
    b.sync().unwrap();
    let source = b.source_up_to(snap_len);
    drop(b);
    // Restart from that snapshot: later bodies are gone, earlier ones intact, and new
    // appends continue at the snapshot's end.
    let mut b = FileBodies::open(&path, SEG, snap_len).unwrap();
    assert_eq!(b.len(), snap_len);
    for (i, r) in refs.iter().enumerate().take(40) {
        assert_eq!(b.get(*r).unwrap(), &body(i)[..]);
    }
    let again = b.append(b"replayed").unwrap();
    assert_eq!(b.get(again).unwrap(), b"replayed");
    assert!(again.offset >= snap_len);
    // The snapshot's bytes, read back without the mapping, install elsewhere.
    let bytes = source.read().unwrap();
    assert_eq!(bytes.len() as u64, snap_len);
    let other = dir.path().join("other");
    let mut c = FileBodies::open(&other, SEG, 0).unwrap();
    c.append(b"stale").unwrap();
    c.replace_all(&bytes).unwrap();
    assert_eq!(c.len(), snap_len);
    for (i, r) in refs.iter().enumerate().take(40) {
        assert_eq!(c.get(*r).unwrap(), &body(i)[..], "installed body {i}");
    }
    drop(c);
    let c = FileBodies::open(&other, SEG, snap_len).unwrap();
    assert_eq!(c.get(refs[39]).unwrap(), &body(39)[..], "installed bodies are durable");
    assert_eq!(BodiesSource::Bytes(vec![1, 2, 3]).read().unwrap(), vec![1, 2, 3]);
}

/// A rebase reads the records it copies with `read_many` on the blocking pool, through
/// files rather than the executor's mapping: the bytes must be those the mapping holds
/// (written, not synced yet), from every segment, and a reference past the source's
/// end is an error, never bytes of what came after.
#[test]
fn read_many_reads_unsynced_bodies_across_segments_and_refuses_what_is_past_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = FileBodies::open(&dir.path().join("bodies"), SEG, 0).unwrap();
    let refs: Vec<_> = (0..60).map(|i| b.append(&body(i)).unwrap()).collect();
    let source = b.source();
    let mut picked: Vec<_> = refs.iter().copied().enumerate().filter(|(i, _)| i % 3 != 1).collect();
    picked.reverse(); // any order
    let got = source.read_many(&picked.iter().map(|(_, r)| *r).collect::<Vec<_>>()).unwrap();
    for ((i, _), bytes) in picked.iter().zip(&got) {
        assert_eq!(bytes, &body(*i), "body {i}");
    }
    let later = b.append(b"after the source").unwrap();
    assert!(source.read_many(&[later]).is_err(), "past the source's end");
    assert!(b.source().read_many(&[later]).unwrap()[0] == b"after the source");
}

#[test]
fn a_body_larger_than_a_segment_is_refused_not_split() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = FileBodies::open(&dir.path().join("bodies"), SEG, 0).unwrap();
    assert!(b.append(&vec![b'x'; SEG as usize + 1]).is_err());
    assert_eq!(b.len(), 0);
}

/// Blocks allocated to a body store's segment files (512-byte units).
fn allocated_blocks(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().blocks()).sum()
}

/// Dead checkpoint records are released as holes: the range's disk blocks are freed,
/// page-aligned inwards, across segment boundaries, and every byte outside the range
/// reads as before, also after a reopen.
#[test]
fn a_released_range_frees_its_blocks_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bodies");
    let seg = 1 << 20;
    let mut b = FileBodies::open(&path, seg, 0).unwrap();
    let refs: Vec<_> = (0..3000).map(|i| b.append(&body(i)).unwrap()).collect();
    b.sync().unwrap();
    let before = allocated_blocks(&path);
    // From the middle of body 100 to the middle of body 2500 (three segments).
    let (from, to) = (refs[100].offset + 3, refs[2500].offset + 5);
    b.release_range(from, to).unwrap();
    let freed_bytes = (before - allocated_blocks(&path)) * 512;
    assert!(freed_bytes + 2 * 4096 + 16 * 4096 >= to - from, "freed {freed_bytes} of {} bytes", to - from);
    assert!(freed_bytes <= to - from, "freed {freed_bytes} bytes, more than the {} released", to - from);
    let outside = |i: usize| refs[i].offset + u64::from(refs[i].len) <= from / 4096 * 4096 || refs[i].offset >= to;
    for (i, r) in refs.iter().enumerate().filter(|(i, _)| outside(*i)) {
        assert_eq!(b.get(*r).unwrap(), &body(i)[..], "body {i} outside the released range");
    }
    let len = b.len();
    drop(b);
    let b = FileBodies::open(&path, seg, len).unwrap();
    for (i, r) in refs.iter().enumerate().filter(|(i, _)| outside(*i)) {
        assert_eq!(b.get(*r).unwrap(), &body(i)[..], "body {i} after a reopen");
    }
}

/// A snapshot's bytes arrive with the sender's freed ranges as zeros: the receiver
/// stores those pages as holes too, and every byte reads back as sent.
#[test]
fn a_receiver_stores_runs_of_zeros_as_holes() {
    let dir = tempfile::tempdir().unwrap();
    let seg = 1 << 20;
    let mut sent = vec![b'x'; 3 << 20];
    sent[100_000..2_600_000].fill(0);
    let staging = dir.path().join("incoming");
    let mut r = fleetlm::raft::bodies::BodiesReceiver::create(&staging, seg).unwrap();
    for chunk in sent.chunks(300_000) {
        r.write(chunk).unwrap();
    }
    let source = r.finish().unwrap();
    assert_eq!(source.read().unwrap(), sent, "every byte as sent");
    let allocated = allocated_blocks(&staging) * 512;
    assert!(allocated < (3 << 20) - 2_000_000, "{allocated} bytes allocated for 3 MiB of which 2.5 MB are zeros");
}

/// `cachestat(2)` (Linux ≥ 6.5) of a whole file: (pages cached, dirty, under writeback),
/// or `None` where the kernel lacks it.
fn cachestat(file: &std::path::Path) -> Option<(u64, u64, u64)> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451; // the same number on every architecture
    let f = std::fs::File::open(file).unwrap();
    let range = Range { off: 0, len: 0 }; // len 0: to the end of the file
    let mut stat = Stat::default();
    // SAFETY: the syscall reads `range` and writes `stat`, both live for the call.
    let rc = unsafe { libc::syscall(SYS_CACHESTAT, f.as_raw_fd(), &range as *const Range, &mut stat as *mut Stat, 0) };
    (rc == 0).then_some((stat.nr_cache, stat.nr_dirty, stat.nr_writeback))
}

/// Bodies are synced only by snapshots; `writeback_due` starts the kernel's writeback of
/// what was written once a step has accumulated, so that dirty pages do not pile up into
/// one burst that every WAL fdatasync waits behind. Its job covers exactly the bytes
/// written since the last one, across segments, and the pages it covers stop being
/// dirty without any fsync (seen with cachestat(2) where the kernel and file system
/// have it).
#[test]
fn writeback_is_started_for_each_step_written_and_cleans_those_pages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bodies");
    let seg = 1 << 20;
    let mut b = FileBodies::open(&path, seg, 0).unwrap();
    let chunk = vec![7u8; 100_000];
    while b.len() < 600_000 {
        b.append(&chunk).unwrap();
    }
    assert!(b.writeback_due(1 << 20).is_none(), "less than a step written");
    while b.len() < 3 * seg - 200_000 {
        b.append(&chunk).unwrap();
    }
    let job = b.writeback_due(1 << 20).expect("more than a step written");
    // Whole segments behind the write point (a segment's unused end is clean zeros),
    // then the third up to the store's length.
    assert_eq!(job.ranges(), vec![(0, 0, seg), (1, 0, seg), (2, 0, b.len() - 2 * seg)]);
    let first = path.join("00000000.bin");
    let before = cachestat(&first);
    job.run();
    assert!(b.writeback_due(1 << 20).is_none(), "nothing new written since the job");
    b.append(&chunk).unwrap();
    let next = b.writeback_due(1).expect("a step of one byte");
    assert_eq!(next.ranges(), vec![(2, b.len() - 2 * seg - 100_000, b.len() - 2 * seg)], "only what came after");
    match before {
        Some((_, dirty, writeback)) if dirty + writeback > 0 => {
            // The write-back completes on its own; bounded wait (the kernel's own
            // periodic write-back would take 30 s: dirty_expire_centisecs).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let (_, dirty, writeback) = cachestat(&first).unwrap();
                if dirty + writeback == 0 {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "pages still dirty ({dirty}) or under writeback ({writeback})"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        other => eprintln!("cachestat shows no dirty pages here ({other:?}): the write-back itself is not observed"),
    }
}

/// Drops the clean cached pages of every file in `dir` (posix_fadvise DONTNEED; no root
/// needed, unlike drop_caches).
fn evict_from_page_cache(dir: &std::path::Path) {
    use std::os::fd::AsRawFd;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let f = std::fs::File::open(e.path()).unwrap();
        // SAFETY: fadvise on an open descriptor; no memory is passed.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

/// A store in `path` holding `bodies`, synced, its pages evicted from the page cache,
/// then opened again (nothing mapped): what a restarted node finds. Its refs and length.
fn written_synced_and_evicted(
    path: &std::path::Path,
    seg: u64,
    bodies: impl Iterator<Item = Vec<u8>>,
) -> (FileBodies, Vec<fleetlm::store::BodyRef>, u64) {
    let mut b = FileBodies::open(path, seg, 0).unwrap();
    let refs: Vec<_> = bodies.map(|body| b.append(&body).unwrap()).collect();
    b.sync().unwrap();
    let len = b.len();
    drop(b);
    evict_from_page_cache(path);
    (FileBodies::open(path, seg, len).unwrap(), refs, len)
}

/// A cold read checks one page (`is_resident`) and, when it is out, starts reading every
/// body of the answer at once (`prefetch`): the check must tell a page that is out from
/// one that is in, and a prefetch must bring the page in without the body being read;
/// and a read through the mapping reads its own pages, not a readahead window.
#[test]
fn residency_tells_cold_pages_and_prefetch_brings_them_in() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bodies");
    let body = |i: usize| vec![b'a' + (i % 26) as u8; 8000];
    let (b, refs, _) = written_synced_and_evicted(&path, 4 << 20, (0..200).map(body));
    let (cold, later, far) = (refs[10], refs[100], refs[199]);
    if b.is_resident(cold) {
        eprintln!("the file system kept the pages cached (tmpfs?): residency is not observed here");
        return;
    }
    assert!(!b.is_resident(later), "evicted pages are reported out");
    b.prefetch(cold);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !b.is_resident(cold) {
        assert!(std::time::Instant::now() < deadline, "a prefetched page never came in");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(!b.is_resident(later), "a prefetch reads the body's pages, not the store's");
    assert_eq!(b.get(cold).unwrap(), &body(10)[..]);
    assert_eq!(b.get(later).unwrap(), &body(100)[..]);
    assert!(b.is_resident(later), "a read brings its page in");
    // Random-access advice: a fault reads its page, not the device's readahead window
    // around it (8 MiB on some disks: 120 ms for a cold tail of 20 messages).
    assert!(!b.is_resident(far), "a read 800 KB away pulled this page in: readahead on the mapping");
}

/// After a restart the newest bytes of the store are read into the page cache in the
/// background (cold reads through the mapping read one page per fault): a prewarm
/// reads the newest `budget` bytes, across segments, and not the older ones.
#[test]
fn a_prewarm_reads_the_newest_bytes_into_the_page_cache_and_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bodies");
    let seg = 1 << 20;
    let (b, refs, len) = written_synced_and_evicted(&path, seg, (0..300).map(|i| vec![b'p' + (i % 7) as u8; 8000]));
    let (newest, crossing, oldest) = (refs[299], refs[140], refs[0]);
    if b.is_resident(newest) {
        eprintln!("the file system kept the pages cached (tmpfs?): the prewarm is not observed here");
        return;
    }
    // ≈ 2.4 MB written in 1 MiB segments: a budget of 1.5 MB spans the last two.
    let budget = 1_500_000;
    assert!(len - crossing.offset < budget && crossing.offset / seg < (len - 1) / seg, "the test must cross a segment");
    let read = b.prewarm_job(budget).expect("something to read").run();
    assert!(read >= budget - 2 * 4096 && read <= budget + 4096, "read {read} bytes for a budget of {budget}");
    assert!(b.is_resident(newest) && b.is_resident(crossing), "the newest bytes are in memory");
    assert!(!b.is_resident(oldest), "the oldest bytes are not read");
    assert!(FileBodies::open(&dir.path().join("empty"), seg, 0).unwrap().prewarm_job(budget).is_none());
}
