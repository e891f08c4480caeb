//! `FileBodies`: the message-body store of one shard on disk.
//!
//! Fixed-size segment files `bodies/<n:08>.bin`, preallocated and memory-mapped; a body
//! never spans two segments (when it does not fit, writing moves to the next segment's
//! start, so offsets may have gaps). Bodies are derived state: they are rebuilt from the
//! Raft log on replay, so an append is not synced. A snapshot syncs the store and
//! records its length; on restart everything beyond that length is dropped and replay
//! writes it again. Written pages are unmapped behind the write point (the bytes stay in
//! the page cache and on disk; a read maps them back), so RSS does not grow with history.
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use crate::store::{Bodies, BodiesError, BodyRef};

/// Unmap written pages once this many have accumulated behind the write point. Each
/// shard keeps up to this much of its recent bodies mapped (counted in RSS): 8 MiB
/// was 32 MiB of a 4-shard node's ~200 MiB after 1M messages.
const RELEASE_STEP_BYTES: u64 = crate::files::PAGE_RELEASE_STEP_BYTES as u64;
/// Every this many bytes written, everything behind the write point is released again:
/// reads of old data (cold contexts' checkpoint records, message index chunks, old
/// bodies) fault pages back into this process, and without a sweep the file-backed RSS
/// grew with every old page ever read (measured: 111 → 406 MiB over 2M appends with
/// 100k contexts, a fifth of them cold). The pages stay in the page cache.
const RELEASE_SWEEP_BYTES: u64 = crate::files::PAGE_RELEASE_SWEEP_BYTES as u64;

struct BodySegment {
    file: File,
    map: MmapMut,
    dirty: bool,
}

/// The body bytes of a snapshot.
#[derive(Debug, Clone)]
pub enum BodiesSource {
    /// Received from elsewhere.
    Bytes(Vec<u8>),
    /// `[0, len)` of a body store on this machine. `pin`: while it lives, the store
    /// frees none of the bytes an older snapshot names (a snapshot being sent).
    Files { dir: PathBuf, segment_size_bytes: u64, len: u64, pin: Option<ReadPin> },
}

/// Counts the snapshots being read from a body store (`BodiesSource::Files`): the state
/// machine releases the space of dead checkpoint records only when none is.
#[derive(Debug, Default)]
pub struct ReadPin(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl ReadPin {
    /// A pin counted by `readers`.
    pub fn new(readers: &ReadPins) -> ReadPin {
        readers.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        ReadPin(readers.0.clone())
    }
}

impl Clone for ReadPin {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        ReadPin(self.0.clone())
    }
}

impl Drop for ReadPin {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The pins handed out by one state machine.
#[derive(Debug, Default, Clone)]
pub struct ReadPins(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl ReadPins {
    pub fn any(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire) > 0
    }
}

impl BodiesSource {
    pub fn len(&self) -> u64 {
        match self {
            BodiesSource::Bytes(b) => b.len() as u64,
            BodiesSource::Files { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The segment size the offsets in `[0, len)` were laid out with (0: unknown).
    pub fn segment_size_bytes(&self) -> u64 {
        match self {
            BodiesSource::Bytes(_) => 0,
            BodiesSource::Files { segment_size_bytes, .. } => *segment_size_bytes,
        }
    }

    /// Reads `buf.len()` bytes at logical offset `at` (may span segments).
    pub fn read_at(&self, at: u64, buf: &mut [u8]) -> Result<(), BodiesError> {
        use std::os::unix::fs::FileExt;
        let (dir, size, len) = match self {
            BodiesSource::Bytes(b) => {
                let src = b
                    .get(at as usize..at as usize + buf.len())
                    .ok_or_else(|| BodiesError("read past the end".into()))?;
                buf.copy_from_slice(src);
                return Ok(());
            }
            BodiesSource::Files { dir, segment_size_bytes, len, .. } => (dir, *segment_size_bytes, *len),
        };
        if at + buf.len() as u64 > len {
            return Err(BodiesError(format!("read of {} bytes at {at} is past the end {len}", buf.len())));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = at + done as u64;
            let (n, off) = ((pos / size) as usize, pos % size);
            let take = ((size - off) as usize).min(buf.len() - done);
            let path = dir.join(file_name(n));
            let f = File::open(&path).map_err(|e| io("open", &path, e))?;
            f.read_exact_at(&mut buf[done..done + take], off).map_err(|e| io("read", &path, e))?;
            done += take;
        }
        Ok(())
    }

    /// The bytes of each of `refs`, read with pread (one open per segment, not per read).
    pub fn read_many(&self, refs: &[BodyRef]) -> Result<Vec<Vec<u8>>, BodiesError> {
        use std::os::unix::fs::FileExt;
        let (dir, size, len) = match self {
            BodiesSource::Bytes(_) => {
                return refs
                    .iter()
                    .map(|r| {
                        let mut b = vec![0u8; r.len as usize];
                        self.read_at(r.offset, &mut b).map(|()| b)
                    })
                    .collect();
            }
            BodiesSource::Files { dir, segment_size_bytes, len, .. } => (dir, *segment_size_bytes, *len),
        };
        let mut open: Option<(u64, File)> = None;
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            let (n, off) = (r.offset / size, r.offset % size);
            // A body never spans two segments.
            if r.offset + u64::from(r.len) > len || off + u64::from(r.len) > size {
                return Err(BodiesError::missing(*r));
            }
            if open.as_ref().is_none_or(|(at, _)| *at != n) {
                let path = dir.join(file_name(n as usize));
                open = Some((n, File::open(&path).map_err(|e| io("open", &path, e))?));
            }
            let (_, f) = open.as_ref().expect("opened above");
            let mut b = vec![0u8; r.len as usize];
            f.read_exact_at(&mut b, off).map_err(|e| io("read", &dir.join(file_name(n as usize)), e))?;
            out.push(b);
        }
        Ok(out)
    }

    /// The bytes, read with pread (not through a mapping, so that reading a snapshot
    /// does not map the whole history into this process).
    pub fn read(&self) -> Result<Vec<u8>, BodiesError> {
        use std::os::unix::fs::FileExt;
        let (dir, size, len) = match self {
            BodiesSource::Bytes(b) => return Ok(b.clone()),
            BodiesSource::Files { dir, segment_size_bytes, len, .. } => (dir, *segment_size_bytes, *len),
        };
        let mut out = vec![0u8; len as usize];
        for (n, chunk) in out.chunks_mut(size as usize).enumerate() {
            let path = dir.join(file_name(n));
            let f = File::open(&path).map_err(|e| io("open", &path, e))?;
            f.read_exact_at(chunk, 0).map_err(|e| io("read", &path, e))?;
        }
        Ok(out)
    }
}

pub struct FileBodies {
    dir: PathBuf,
    segment_size_bytes: u64,
    segments: Vec<BodySegment>,
    /// Where the next body goes (a logical offset: segment × size + offset).
    len: u64,
    released_up_to: u64,
    /// Writeback of `[0, written_back_to)` has been started (`writeback_due`).
    written_back_to: u64,
}

/// Reads through a segment's mapping are random (a context's bodies, index chunks and
/// checkpoint record are scattered by arrival order): without this advice every page
/// fault reads the device's whole readahead window around it (8 MiB on this machine's
/// disk), and a cold tail of 20 messages took 120 ms instead of 0.7 ms
/// (`bench/results/index-engines.md`). Snapshot copies and sends read with pread, which
/// keeps its own readahead. A failure only leaves the default.
fn advise_random(map: &MmapMut) {
    let _ = map.advise(memmap2::Advice::Random);
}

fn io(what: &str, path: &Path, e: std::io::Error) -> BodiesError {
    BodiesError(format!("{what} {}: {e}", path.display()))
}

fn file_name(n: usize) -> String {
    format!("{n:08}.bin")
}

impl FileBodies {
    /// Opens the store in `dir` keeping its first `len` bytes (what the last snapshot
    /// covered); segments wholly beyond are deleted.
    pub fn open(dir: &Path, segment_size_bytes: u64, len: u64) -> Result<FileBodies, BodiesError> {
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        let keep = len.div_ceil(segment_size_bytes) as usize;
        let mut segments = Vec::new();
        let mut n = 0;
        loop {
            let path = dir.join(file_name(n));
            if !path.exists() {
                break;
            }
            if n >= keep {
                std::fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
            } else {
                let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|e| io("open", &path, e))?;
                let size = file.metadata().map_err(|e| io("stat", &path, e))?.len();
                if size != segment_size_bytes {
                    return Err(BodiesError(format!(
                        "{} is {size} bytes, expected {segment_size_bytes}",
                        path.display()
                    )));
                }
                // SAFETY: our own file, sized above, not mapped by anyone else.
                let map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| io("mmap", &path, e))?;
                advise_random(&map);
                segments.push(BodySegment { file, map, dirty: false });
            }
            n += 1;
        }
        if segments.len() < keep {
            return Err(BodiesError(format!("{}: segment {} of {keep} is missing", dir.display(), segments.len())));
        }
        Ok(FileBodies {
            dir: dir.to_owned(),
            segment_size_bytes,
            segments,
            len,
            released_up_to: 0,
            written_back_to: len,
        })
    }

    /// Bytes written (the logical end).
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn add_segment(&mut self) -> Result<(), BodiesError> {
        let path = self.dir.join(file_name(self.segments.len()));
        let file = crate::files::create_preallocated(&path, self.segment_size_bytes)
            .map_err(|e| io("create preallocated", &path, e))?;
        // SAFETY: as in `open`.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| io("mmap", &path, e))?;
        advise_random(&map);
        self.segments.push(BodySegment { file, map, dirty: true });
        Ok(())
    }

    /// Makes everything written so far durable (before a snapshot records `len`).
    pub fn sync(&mut self) -> Result<(), BodiesError> {
        self.sync_job()?.run()
    }

    /// What `sync` does, as a job that can run on another thread (glommio's blocking
    /// pool): it covers every byte written before this call. The segments count as
    /// clean from here on; a failed job is an error the caller must not survive (the
    /// state machine stops), like a failed WAL sync.
    pub fn sync_job(&mut self) -> Result<BodiesSyncJob, BodiesError> {
        let mut files = Vec::new();
        for (n, s) in self.segments.iter_mut().enumerate().filter(|(_, s)| s.dirty) {
            let path = self.dir.join(file_name(n));
            files.push((s.file.try_clone().map_err(|e| io("dup", &path, e))?, path));
            s.dirty = false;
        }
        Ok(BodiesSyncJob { files, dir: self.dir.clone() })
    }

    /// Once at least `step_bytes` were written since the last one, a job that starts the
    /// kernel's writeback of them (`crate::files::start_writeback`, per segment), to run
    /// on the blocking pool. Bodies are synced only when a snapshot is taken: without
    /// this, their dirty pages accumulate and are written in one burst that every WAL
    /// fdatasync of the machine then waits behind. A hint only: a failure costs nothing
    /// but the burst (the snapshot's fdatasync reports real I/O errors).
    pub fn writeback_due(&mut self, step_bytes: u64) -> Option<WritebackJob> {
        let (from, to) = (self.written_back_to, self.len);
        if to < from.saturating_add(step_bytes) {
            return None;
        }
        let size = self.segment_size_bytes;
        let mut ranges = Vec::new();
        for (n, s) in self.segments.iter().enumerate() {
            let seg_start = n as u64 * size;
            let (a, b) = (from.max(seg_start), to.min(seg_start + size));
            if b > a {
                let Ok(file) = s.file.try_clone() else { continue };
                ranges.push((file, n, a - seg_start, b - seg_start));
            }
        }
        self.written_back_to = to;
        Some(WritebackJob { ranges })
    }

    /// A job that reads the newest `budget_bytes` of the store (newest first) into the
    /// page cache, to run on the blocking pool (`PrewarmJob::run`).
    pub fn prewarm_job(&self, budget_bytes: u64) -> Option<PrewarmJob> {
        let (from, to) = (self.len.saturating_sub(budget_bytes), self.len);
        let size = self.segment_size_bytes;
        let mut ranges = Vec::new();
        for (n, s) in self.segments.iter().enumerate().rev() {
            let seg_start = n as u64 * size;
            let (a, b) = (from.max(seg_start), to.min(seg_start + size));
            if b > a {
                let Ok(file) = s.file.try_clone() else { continue };
                ranges.push((file, a - seg_start, b - seg_start));
            }
        }
        (!ranges.is_empty()).then_some(PrewarmJob { ranges })
    }

    /// Where the bytes `[0, len)` can be read later: a snapshot refers to them instead
    /// of copying them (the store is append-only, so they stay as they are).
    pub fn source(&self) -> BodiesSource {
        self.source_up_to(self.len)
    }

    /// Like `source`, for the first `len` bytes (what an older snapshot covered).
    pub fn source_up_to(&self, len: u64) -> BodiesSource {
        BodiesSource::Files {
            dir: self.dir.clone(),
            segment_size_bytes: self.segment_size_bytes,
            len: len.min(self.len),
            pin: None,
        }
    }

    /// Frees the disk space of `[from, to)`, bytes that will never be read again (dead
    /// checkpoint records), page-aligned inwards: a hole in each segment file it spans.
    /// Unmapped first, so that nothing in this process reads the zeros.
    pub fn release_range(&mut self, from: u64, to: u64) -> Result<(), BodiesError> {
        let size = self.segment_size_bytes;
        let to = to.min(self.len);
        for (n, s) in self.segments.iter().enumerate() {
            let seg_start = n as u64 * size;
            let (a, b) = (from.max(seg_start), to.min(seg_start + size));
            if b <= a {
                continue;
            }
            let (a, b) = (a - seg_start, b - seg_start);
            // SAFETY: `&mut self`: no slice into the mapping is alive.
            unsafe { crate::files::release_pages(&s.map, a as usize, b as usize) };
            let path = self.dir.join(file_name(n));
            crate::files::punch_hole(&s.file, a, b).map_err(|e| io("punch a hole in", &path, e))?;
        }
        Ok(())
    }

    /// Replaces the whole store with `bytes` (an installed snapshot) and syncs it.
    pub fn replace_all(&mut self, bytes: &[u8]) -> Result<(), BodiesError> {
        self.segments.clear();
        let mut n = 0;
        loop {
            let path = self.dir.join(file_name(n));
            if !path.exists() {
                break;
            }
            std::fs::remove_file(&path).map_err(|e| io("remove", &path, e))?;
            n += 1;
        }
        self.len = 0;
        self.released_up_to = 0;
        for chunk in bytes.chunks(self.segment_size_bytes as usize) {
            self.add_segment()?;
            let s = self.segments.last_mut().expect("just added");
            s.map[..chunk.len()].copy_from_slice(chunk);
            self.len += chunk.len() as u64;
        }
        self.written_back_to = self.len;
        self.sync()
    }

    /// A new store in `new_dir` (which must not exist) holding what `source` holds, for
    /// an installed snapshot; this store is left as it is. Segment files received into
    /// a staging directory (`staged`: nobody else reads it) are moved, not read, so
    /// memory stays bounded; other sources are copied. The new directory and its
    /// parent are synced before this returns.
    pub fn install_into(&self, source: &BodiesSource, new_dir: &Path, staged: bool) -> Result<FileBodies, BodiesError> {
        let parent = new_dir.parent().unwrap_or(Path::new("."));
        match source {
            BodiesSource::Bytes(b) => {
                let mut fresh = FileBodies::open(new_dir, self.segment_size_bytes, 0)?;
                fresh.replace_all(b)?;
            }
            BodiesSource::Files { dir, segment_size_bytes, len, .. } => {
                if *segment_size_bytes != self.segment_size_bytes {
                    return Err(BodiesError(format!(
                        "snapshot body segments are {segment_size_bytes} bytes, this store uses {}",
                        self.segment_size_bytes
                    )));
                }
                let segments = len.div_ceil(self.segment_size_bytes) as usize;
                if staged {
                    // Segments beyond `len` are never written to a staging directory.
                    std::fs::rename(dir, new_dir).map_err(|e| io("rename", dir, e))?;
                } else {
                    std::fs::create_dir_all(new_dir).map_err(|e| io("create", new_dir, e))?;
                    for n in 0..segments {
                        let (from, to) = (dir.join(file_name(n)), new_dir.join(file_name(n)));
                        std::fs::copy(&from, &to).map_err(|e| io("copy", &from, e))?;
                        File::open(&to).and_then(|f| f.sync_data()).map_err(|e| io("fdatasync", &to, e))?;
                    }
                }
                crate::files::sync_dir(new_dir).map_err(|e| io("fsync", new_dir, e))?;
            }
        }
        crate::files::sync_dir(parent).map_err(|e| io("fsync", parent, e))?;
        FileBodies::open(new_dir, self.segment_size_bytes, source.len())
    }

    fn release_behind(&mut self) {
        let page = crate::files::page_size_bytes() as u64;
        let upto = self.len / page * page;
        if upto < self.released_up_to + RELEASE_STEP_BYTES {
            return;
        }
        let size = self.segment_size_bytes;
        let sweep = upto / RELEASE_SWEEP_BYTES > self.released_up_to / RELEASE_SWEEP_BYTES;
        let released_from = if sweep { 0 } else { self.released_up_to };
        for (n, s) in self.segments.iter().enumerate() {
            let seg_start = n as u64 * size;
            let from = released_from.max(seg_start);
            let to = upto.min(seg_start + size);
            if to > from {
                let (a, b) = ((from - seg_start) as usize, (to - seg_start) as usize);
                // SAFETY: no borrow of the range is alive: reads hand out slices only
                // while `&self` is borrowed, and this holds `&mut self`.
                unsafe { crate::files::release_pages(&s.map, a, b) };
            }
        }
        self.released_up_to = upto;
    }
}

impl Bodies for FileBodies {
    fn append(&mut self, json: &[u8]) -> Result<BodyRef, BodiesError> {
        let size = self.segment_size_bytes;
        if json.len() as u64 > size {
            return Err(BodiesError(format!("a {} byte body is larger than a {size} byte segment", json.len())));
        }
        let mut at = self.len;
        if at % size + json.len() as u64 > size {
            at = (at / size + 1) * size; // next segment's start
        }
        let n = (at / size) as usize;
        while self.segments.len() <= n {
            self.add_segment()?;
        }
        let off = (at % size) as usize;
        let s = &mut self.segments[n];
        s.map[off..off + json.len()].copy_from_slice(json);
        s.dirty = true;
        self.len = at + json.len() as u64;
        self.release_behind();
        Ok(BodyRef { offset: at, len: json.len() as u32 })
    }

    fn get(&self, r: BodyRef) -> Result<&[u8], BodiesError> {
        let size = self.segment_size_bytes;
        let (n, off) = ((r.offset / size) as usize, (r.offset % size) as usize);
        let bytes = self.segments.get(n).and_then(|s| s.map.get(off..off.saturating_add(r.len as usize)));
        bytes.ok_or_else(|| BodiesError::missing(r))
    }

    fn is_resident(&self, r: BodyRef) -> bool {
        self.get(r).map_or(true, crate::files::pages_resident)
    }

    fn prefetch(&self, r: BodyRef) {
        if let Ok(bytes) = self.get(r) {
            crate::files::will_need(bytes);
        }
    }
}

/// Starts the writeback of ranges of body segments (`FileBodies::writeback_due`).
pub struct WritebackJob {
    ranges: Vec<(File, usize, u64, u64)>,
}

impl WritebackJob {
    /// `(segment, from, to)` of each range, offsets within the segment.
    pub fn ranges(&self) -> Vec<(usize, u64, u64)> {
        self.ranges.iter().map(|(_, n, from, to)| (*n, *from, *to)).collect()
    }

    /// Queues the ranges' dirty pages for writing (may block while the device's queue
    /// is full: run it on the blocking pool). Errors are ignored (see `writeback_due`).
    pub fn run(self) {
        for (file, _, from, to) in &self.ranges {
            let _ = crate::files::start_writeback(file, *from, *to);
        }
    }
}

/// Reads ranges of body segments into the page cache (`FileBodies::prewarm_job`).
pub struct PrewarmJob {
    /// `(file, from, to)`, newest first; within a range, from its end backwards.
    ranges: Vec<(File, u64, u64)>,
}

impl PrewarmJob {
    /// Reads the ranges in 1 MiB preads at the idle I/O priority (so they wait for every
    /// other request of the machine's disk), newest bytes first; stops at the first
    /// error (only warmth is lost). Returns the bytes read.
    pub fn run(mut self) -> u64 {
        let mut read = 0;
        while let Some(n) = self.step(u64::MAX) {
            read += n;
        }
        read
    }

    /// Reads up to `max_bytes` more (at least one 1 MiB pread) and returns how many, or
    /// `None` once done or after an error. The executor's blocking pool is one thread:
    /// the caller runs one step per job there, so that a snapshot's syncs or a WAL spare
    /// never wait for a whole prewarm (1 GiB: seconds on a slow disk).
    pub fn step(&mut self, max_bytes: u64) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        const PREAD_BYTES: u64 = 1 << 20;
        let _idle = crate::files::IdleIoPriority::set();
        let mut buf = vec![0u8; PREAD_BYTES as usize];
        let mut read = 0;
        while read < max_bytes {
            let Some((file, from, to)) = self.ranges.first_mut() else {
                return (read > 0).then_some(read);
            };
            if *to <= *from {
                self.ranges.remove(0);
                continue;
            }
            let start = to.saturating_sub(PREAD_BYTES).max(*from);
            let n = (*to - start) as usize;
            if file.read_exact_at(&mut buf[..n], start).is_err() {
                self.ranges.clear();
                return (read > 0).then_some(read);
            }
            read += n as u64;
            *to = start;
        }
        Some(read)
    }
}

/// fdatasyncs of the dirty body segments and the directory (`FileBodies::sync_job`).
pub struct BodiesSyncJob {
    files: Vec<(File, PathBuf)>,
    dir: PathBuf,
}

impl BodiesSyncJob {
    /// Blocks for the syncs.
    pub fn run(self) -> Result<(), BodiesError> {
        for (file, path) in &self.files {
            file.sync_data().map_err(|e| io("fdatasync", path, e))?;
        }
        crate::files::sync_dir(&self.dir).map_err(|e| io("fsync", &self.dir, e))
    }
}

/// Writes the body bytes of a snapshot as they arrive from the network into segment
/// files of a staging directory (memory stays at one chunk), for `install_into`.
/// The runs of whole pages of zeros in `bytes` (written at file offset `at`), as file
/// ranges, leaving out the last whole page of `bytes`: the page that holds the write
/// point is never a hole (a write into a hole through the mapping on a full disk would
/// be a SIGBUS). A hole reads as zeros, so punching them changes no byte.
fn zero_pages(bytes: &[u8], at: u64) -> Vec<(u64, u64)> {
    let page = crate::files::page_size_bytes() as u64;
    let end = at + bytes.len() as u64;
    let (first, last) = (at.div_ceil(page) * page, (end / page * page).saturating_sub(page));
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut p = first;
    while p + page <= last {
        let i = (p - at) as usize;
        if bytes[i..i + page as usize].iter().all(|&b| b == 0) {
            match runs.last_mut() {
                Some(run) if run.1 == p => run.1 = p + page,
                _ => runs.push((p, p + page)),
            }
        }
        p += page;
    }
    runs
}

pub struct BodiesReceiver {
    dir: PathBuf,
    segment_size_bytes: u64,
    len: u64,
    current: Option<File>,
}

impl BodiesReceiver {
    /// Starts an empty staging directory `dir` (anything left in it is removed).
    pub fn create(dir: &Path, segment_size_bytes: u64) -> Result<BodiesReceiver, BodiesError> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| io("remove", dir, e))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        Ok(BodiesReceiver { dir: dir.to_owned(), segment_size_bytes, len: 0, current: None })
    }

    /// Appends the next bytes.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<(), BodiesError> {
        use std::os::unix::fs::FileExt;
        while !bytes.is_empty() {
            let (n, off) = ((self.len / self.segment_size_bytes) as usize, self.len % self.segment_size_bytes);
            if off == 0 || self.current.is_none() {
                if let Some(f) = self.current.take() {
                    f.sync_data().map_err(|e| io("fdatasync", &self.dir, e))?;
                }
                let path = self.dir.join(file_name(n));
                let file = crate::files::create_preallocated(&path, self.segment_size_bytes)
                    .map_err(|e| io("create preallocated", &path, e))?;
                self.current = Some(file);
            }
            let take = ((self.segment_size_bytes - off) as usize).min(bytes.len());
            let f = self.current.as_ref().expect("opened above");
            let path = self.dir.join(file_name(n));
            f.write_all_at(&bytes[..take], off).map_err(|e| io("write", &path, e))?;
            // Ranges the sender freed (dead checkpoint records) arrive as zeros: they
            // take no space here either.
            for (from, to) in zero_pages(&bytes[..take], off) {
                crate::files::punch_hole(f, from, to).map_err(|e| io("punch a hole in", &path, e))?;
            }
            self.len += take as u64;
            bytes = &bytes[take..];
        }
        Ok(())
    }

    /// Syncs what was received and describes it.
    pub fn finish(mut self) -> Result<BodiesSource, BodiesError> {
        if let Some(f) = self.current.take() {
            f.sync_data().map_err(|e| io("fdatasync", &self.dir, e))?;
        }
        crate::files::sync_dir(&self.dir).map_err(|e| io("fsync", &self.dir, e))?;
        Ok(BodiesSource::Files { dir: self.dir, segment_size_bytes: self.segment_size_bytes, len: self.len, pin: None })
    }
}
