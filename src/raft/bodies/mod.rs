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

mod jobs;
mod transfer;

pub use jobs::{BodiesSyncJob, PrewarmJob, WritebackJob};
pub use transfer::{BodiesReceiver, BodiesSource, ReadPin, ReadPins};

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
