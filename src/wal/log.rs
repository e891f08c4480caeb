//! `Wal`: the log of one shard. Synchronous core; `group_commit` makes it async.
//!
//! Invariants (asserted where they are decided):
//! - live indexes are contiguous: `first_index .. next_index()`;
//! - live records sit at strictly increasing positions `(segment seq, offset)`;
//! - `durable_next <= next_index()`, and every live index below it is covered by a
//!   sync that has returned; nothing is reported durable before that.
use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::config::WalConfig;
use super::error::{Result, WalError};
use super::format::{self, RecordKind, SegmentHeader, Slot};
use super::recovery;
use super::segment::{self, Segment, Spare, SpareRequest};

/// Where a live record sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Loc {
    seq: u64,
    offset: u32,
}

/// A write position in the log: `(segment seq, byte offset)`. Positions only grow
/// (truncation appends a marker; a new segment has a higher seq), so "durable up to a
/// position" is well defined even when indexes are truncated and reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    seq: u64,
    offset: usize,
}

/// What `Wal::open` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub first_index: u64,
    pub next_index: u64,
    pub segments: usize,
    /// A torn tail was cut off (unsynced writes of a crash).
    pub torn_tail: bool,
}

/// The work of one sync, detached from the `Wal` so that it can run through io_uring
/// while appends go on: which segments to fdatasync, whether the directory needs an
/// fsync (a segment was renamed in), and the position it makes durable.
pub struct SyncJob {
    /// Seqs of the segments written since the last sync started.
    pub segments: Vec<u64>,
    pub dir: bool,
    target: Position,
}

pub struct Wal {
    dir: PathBuf,
    config: WalConfig,
    segments: VecDeque<Segment>,
    first_index: u64,
    live: VecDeque<Loc>,
    durable: Position,
    /// The target of the latest sync started: beyond `durable`, a sync is in flight.
    sync_started_to: Position,
    durable_next: u64,
    poisoned: Option<String>,
    /// The next segment, preallocated ahead of need.
    spare: Option<Spare>,
    spares_requested: u64,
    /// A segment was renamed in since the last sync started: the sync must fsync the
    /// directory too.
    dir_dirty: bool,
    /// Pages before this position have been unmapped (`Segment::release_pages`).
    released_up_to: Position,
}

impl Wal {
    /// Opens the log in `dir` (created if missing, starting at index `first_index`),
    /// recovers it, zeroes any torn tail, and fsyncs, so that everything recovered is
    /// durable before the first new append.
    pub fn open(dir: &Path, config: WalConfig, first_index: u64) -> Result<(Wal, RecoveryReport)> {
        config.validate().map_err(WalError::Config)?;
        std::fs::create_dir_all(dir).map_err(|e| WalError::io("create wal dir", dir, e))?;
        let mut seqs = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| WalError::io("list wal dir", dir, e))? {
            let entry = entry.map_err(|e| WalError::io("list wal dir", dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = segment::parse_file_name(&name) {
                seqs.push(seq);
            } else if name.ends_with(".tmp") {
                // A spare that was never renamed into place; it never held a record.
                let p = entry.path();
                std::fs::remove_file(&p).map_err(|e| WalError::io("remove temp segment", &p, e))?;
            }
        }
        seqs.sort_unstable();
        // A crash during the very first open leaves one segment whose header was never
        // written back; it never held a record.
        if let [only] = seqs[..] {
            let p = dir.join(segment::file_name(only));
            if header_is_zero(&p)? {
                std::fs::remove_file(&p).map_err(|e| WalError::io("remove unsynced segment", &p, e))?;
                seqs.clear();
            }
        }
        let mut segments = VecDeque::new();
        for seq in &seqs {
            segments.push_back(Segment::open(&dir.join(segment::file_name(*seq)), *seq)?);
        }
        let mut wal = Wal {
            dir: dir.to_owned(),
            config,
            segments,
            first_index,
            live: VecDeque::new(),
            durable: Position { seq: 0, offset: 0 },
            sync_started_to: Position { seq: 0, offset: 0 },
            durable_next: first_index,
            poisoned: None,
            spare: None,
            spares_requested: 0,
            dir_dirty: false,
            released_up_to: Position { seq: 0, offset: 0 },
        };
        let mut torn_tail = false;
        if wal.segments.is_empty() {
            wal.create_segment(first_index, 0, 0, 0)?;
            wal.dir_dirty = true;
        } else {
            torn_tail = wal.recover()?;
        }
        wal.sync()?;
        // Recovery touched every page; none needs to stay mapped.
        for s in &wal.segments {
            s.release_pages(0, s.bytes().len());
        }
        wal.released_up_to = wal.end_position();
        let report = RecoveryReport {
            first_index: wal.first_index,
            next_index: wal.next_index(),
            segments: wal.segments.len(),
            torn_tail,
        };
        Ok((wal, report))
    }

    fn recover(&mut self) -> Result<bool> {
        let views: Vec<(u64, &[u8])> = self.segments.iter().map(|s| (s.seq(), s.bytes())).collect();
        let found = recovery::scan(&views, self.config.record_payload_max_bytes).map_err(|d| WalError::Corruption {
            segment: self.segments[d.segment].path().to_owned(),
            offset: d.offset,
            detail: d.detail,
        })?;
        self.first_index = found.first_index;
        self.durable_next = found.first_index;
        self.live = found.live.iter().map(|l| Loc { seq: self.segments[l.segment].seq(), offset: l.offset }).collect();
        // Segments after the end hold only unsynced writes of the crash.
        let dropped: Vec<Segment> = self.segments.drain(found.end_segment + 1..).collect();
        for s in &dropped {
            std::fs::remove_file(s.path()).map_err(|e| WalError::io("remove torn segment", s.path(), e))?;
        }
        let zeroed = self.tail_mut().reset_tail(found.end_offset)?;
        if !dropped.is_empty() {
            self.sync_dir()?;
        }
        Ok(found.torn || zeroed || !dropped.is_empty())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn config(&self) -> &WalConfig {
        &self.config
    }
    /// Lowest readable index (may be below the last purge point: purge is by segment).
    pub fn first_index(&self) -> u64 {
        self.first_index
    }
    /// The index the next appended record gets.
    pub fn next_index(&self) -> u64 {
        self.first_index + self.live.len() as u64
    }
    /// Every index below this is durable.
    pub fn durable_next(&self) -> u64 {
        self.durable_next
    }
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
    /// Whether writes are refused after a failed sync.
    pub fn poisoned(&self) -> Option<&str> {
        self.poisoned.as_deref()
    }

    fn check_writable(&self) -> Result<()> {
        match &self.poisoned {
            Some(why) => Err(WalError::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    fn tail(&self) -> &Segment {
        self.segments.back().expect("a wal always has a tail segment")
    }

    fn tail_mut(&mut self) -> &mut Segment {
        self.segments.back_mut().expect("a wal always has a tail segment")
    }

    fn segment(&self, seq: u64) -> &Segment {
        let front = self.segments.front().expect("a wal always has a tail segment").seq();
        &self.segments[(seq - front) as usize]
    }

    /// Appends records with contiguous indexes; returns the index range. Nothing is
    /// durable until a sync covering it returns.
    pub fn append<P: AsRef<[u8]>>(&mut self, payloads: &[P]) -> Result<std::ops::Range<u64>> {
        self.check_writable()?;
        if payloads.len() > self.config.append_batch_max {
            return Err(WalError::BatchTooLarge { len: payloads.len(), max: self.config.append_batch_max });
        }
        let max = self.config.record_payload_max_bytes;
        if let Some(p) = payloads.iter().find(|p| p.as_ref().len() > max as usize) {
            return Err(WalError::RecordTooLarge { len: p.as_ref().len(), max });
        }
        let start = self.next_index();
        for p in payloads {
            let index = self.next_index();
            let offset = self.write_record(RecordKind::Data, index, p.as_ref())?;
            self.live.push_back(offset);
        }
        self.flush_tail()?;
        Ok(start..self.next_index())
    }

    /// Writes the tail's pending records to the file. `live` already names them, so a
    /// failed write poisons the log: those indexes cannot be read back.
    fn flush_tail(&mut self) -> Result<()> {
        let outcome = self.tail_mut().flush();
        if let Err(e) = &outcome {
            self.poisoned = Some(e.to_string());
        }
        outcome
    }

    fn write_record(&mut self, kind: RecordKind, index: u64, payload: &[u8]) -> Result<Loc> {
        if !self.tail().fits(payload.len()) {
            let (seq, prev_end) = (self.tail().seq() + 1, self.tail().write_offset() as u64);
            self.create_segment(self.next_index(), seq, 0, prev_end)?;
        }
        let durable_next = self.durable_next;
        debug_assert!(durable_next <= index, "a record is never durable when written");
        let tail = self.tail_mut();
        let offset = tail.append(kind, index, durable_next, payload);
        let loc = Loc { seq: tail.seq(), offset };
        debug_assert!(self.live.back().is_none_or(|l| *l < loc), "positions grow");
        Ok(loc)
    }

    /// Activates a spare (making one now if none was prepared) as segment `seq`. The
    /// directory is marked dirty: the sync that makes records here durable also
    /// fsyncs the directory, so no sync happens on this path.
    fn create_segment(&mut self, first_index: u64, seq: u64, flags: u32, prev_end_offset: u64) -> Result<()> {
        if !self.segments.is_empty() {
            self.flush_tail()?;
        }
        let spare = match self.spare.take() {
            Some(s) => s,
            None => self.spare_request().create_blocking()?,
        };
        let segment_size_bytes = self.config.segment_size_bytes;
        let header = SegmentHeader { seq, first_index, segment_size_bytes, flags, prev_end_offset };
        let s = Segment::activate(&self.dir, spare, header)?;
        self.segments.push_back(s);
        self.dir_dirty = true;
        Ok(())
    }

    /// Whether a spare segment should be prepared now: none is ready and the tail is
    /// half full, so a blocking-pool thread has ample time before the roll needs it.
    pub fn wants_spare(&self) -> bool {
        self.spare.is_none() && self.tail().write_offset() as u64 > self.config.segment_size_bytes / 2
    }

    /// Names a new spare file; run `create_blocking` on it anywhere, then `install_spare`.
    pub fn spare_request(&mut self) -> SpareRequest {
        self.spares_requested += 1;
        let path = self.dir.join(format!("spare-{}.tmp", self.spares_requested));
        SpareRequest { path, size_bytes: self.config.segment_size_bytes }
    }

    /// Keeps a prepared spare for the next roll (or discards it if one is ready).
    pub fn install_spare(&mut self, spare: Spare) {
        if self.spare.is_some() || self.poisoned.is_some() {
            spare.discard();
        } else {
            self.spare = Some(spare);
        }
    }

    /// fsync of the WAL directory (names of created and deleted segments).
    pub fn sync_dir(&self) -> Result<()> {
        crate::files::sync_dir(&self.dir).map_err(|e| WalError::io("fsync wal dir", &self.dir, e))
    }

    /// Reads the payload of `index`: a slice of the mapping, crc-checked.
    pub fn get(&self, index: u64) -> Result<&[u8]> {
        let loc = self.loc(index)?;
        let seg = self.segment(loc.seq);
        match format::decode_slot(seg.bytes(), loc.offset as usize, self.config.record_payload_max_bytes) {
            Slot::Record(m) if m.index == index && m.kind == RecordKind::Data => {
                Ok(format::payload_at(seg.bytes(), loc.offset as usize, m.payload_len))
            }
            other => Err(WalError::Corruption {
                segment: seg.path().to_owned(),
                offset: u64::from(loc.offset),
                detail: format!("reading index {index}: found {other:?}"),
            }),
        }
    }

    fn loc(&self, index: u64) -> Result<Loc> {
        let out = || WalError::OutOfRange { index, first: self.first_index, next: self.next_index() };
        let i = index.checked_sub(self.first_index).ok_or_else(out)?;
        self.live.get(i as usize).copied().ok_or_else(out)
    }

    /// Iterates `(index, payload)` from `from` (clamped to `first_index`) to the end.
    pub fn iter_from(&self, from: u64) -> impl Iterator<Item = Result<(u64, &[u8])>> + '_ {
        (from.max(self.first_index)..self.next_index()).map(move |i| self.get(i).map(|p| (i, p)))
    }

    /// Removes every index after `last_kept` (see `truncate_from`).
    pub fn truncate_after(&mut self, last_kept: u64) -> Result<()> {
        let cut = last_kept.checked_add(1).ok_or(WalError::OutOfRange {
            index: last_kept,
            first: self.first_index,
            next: self.next_index(),
        })?;
        self.truncate_from(cut)
    }

    /// Removes every index from `cut` on by appending a truncation marker. Durable
    /// once a sync covers it; until then a crash may bring the removed records back,
    /// exactly as if the truncation had not been called.
    pub fn truncate_from(&mut self, cut: u64) -> Result<()> {
        self.check_writable()?;
        if cut >= self.next_index() {
            return Ok(());
        }
        if cut < self.first_index {
            return Err(WalError::OutOfRange { index: cut, first: self.first_index, next: self.next_index() });
        }
        self.durable_next = self.durable_next.min(cut);
        // Write the marker before cutting `live`: if it rolls into a new segment, that
        // segment's header must name the index recovery expects there, which is the
        // one before the marker takes effect.
        self.write_record(RecordKind::Truncate, cut, &[])?;
        self.flush_tail()?;
        self.live.truncate((cut - self.first_index) as usize);
        Ok(())
    }

    /// Forgets every index below `index` (after a snapshot covers them) and deletes
    /// segments that hold no live record. Purge is by whole segment: indexes below
    /// `index` that share a segment with live ones stay readable, here and after a
    /// reopen. Purging past the end restarts the log at `index` in a new segment.
    pub fn purge_before(&mut self, index: u64) -> Result<()> {
        self.check_writable()?;
        if index <= self.first_index {
            return Ok(());
        }
        // Make the segments that stay durable (headers and names included) before any
        // is deleted: recovery must find the log's start in what is left.
        self.sync()?;
        let tail_seq = self.tail_mut().seq();
        if index > self.next_index() {
            // The gap must survive a restart: a RESET segment records the new start.
            self.create_segment(index, tail_seq + 1, format::SEGMENT_FLAG_RESET, 0)?;
            // The RESET segment must be durable before older segments disappear, or a
            // crash could leave neither the old log nor the restart on disk.
            self.tail().sync_data()?;
            self.sync_dir()?;
            self.dir_dirty = false;
            self.live.clear();
            self.first_index = index;
            self.durable_next = index;
            let tail = self.tail_mut();
            self.durable = Position { seq: tail.seq(), offset: tail.write_offset() };
        } else {
            let n = (index - self.first_index) as usize;
            self.live.drain(..n);
            self.first_index = index;
            self.durable_next = self.durable_next.max(index);
        }
        let keep_from = self.live.front().map_or(self.tail().seq(), |l| l.seq);
        let mut removed = false;
        while self.segments.front().is_some_and(|s| s.seq() < keep_from) {
            let s = self.segments.pop_front().expect("checked");
            std::fs::remove_file(s.path()).map_err(|e| WalError::io("remove purged segment", s.path(), e))?;
            removed = true;
        }
        if removed {
            self.sync_dir()?;
        }
        Ok(())
    }

    /// Starts a sync of everything appended so far; `None` when all of it is durable or
    /// covered by a sync already started. The job lists only the segments written since
    /// the previous job started (it takes their dirty flags), so jobs must complete in
    /// the order they started (`group_commit` runs one at a time).
    pub fn begin_sync(&mut self) -> Result<Option<SyncJob>> {
        self.check_writable()?;
        let target = self.end_position();
        let segments: Vec<u64> = self.segments.iter_mut().filter_map(|s| s.take_dirty().then(|| s.seq())).collect();
        let dir = std::mem::take(&mut self.dir_dirty);
        if segments.is_empty() && !dir && target <= self.durable.max(self.sync_started_to) {
            return Ok(None);
        }
        self.sync_started_to = self.sync_started_to.max(target);
        Ok(Some(SyncJob { segments, dir, target }))
    }

    /// Starts a sync that makes everything appended so far durable on its own, even
    /// while jobs from `begin_sync` are in flight (they took the dirty flags of what
    /// they cover, so the flags cannot be trusted): every segment from the durable
    /// point on, and the directory if it is dirty or a sync is in flight. For the rare
    /// blocking syncs (`sync`: open, purge); `None` when everything is durable.
    pub fn begin_sync_covering_all(&mut self) -> Result<Option<SyncJob>> {
        self.check_writable()?;
        let target = self.end_position();
        let in_flight = self.sync_started_to > self.durable;
        let dir = std::mem::take(&mut self.dir_dirty) || in_flight;
        let from = self.durable.seq;
        let mut segments = Vec::new();
        let mut dirty = false;
        for s in self.segments.iter_mut() {
            dirty |= s.take_dirty();
            if s.seq() >= from {
                segments.push(s.seq());
            }
        }
        if !dirty && !dir && target <= self.durable {
            return Ok(None);
        }
        self.sync_started_to = self.sync_started_to.max(target);
        Ok(Some(SyncJob { segments, dir, target }))
    }

    /// Runs a sync job on the calling thread.
    fn run_blocking(&self, job: &SyncJob) -> Result<()> {
        for &seq in &job.segments {
            if let Some(s) = self.segment_if_present(seq) {
                s.sync_data()?;
            }
        }
        if job.dir {
            self.sync_dir()?;
        }
        Ok(())
    }

    fn segment_if_present(&self, seq: u64) -> Option<&Segment> {
        let front = self.segments.front()?.seq();
        self.segments.get(usize::try_from(seq.checked_sub(front)?).ok()?)
    }

    /// A duplicate handle of segment `seq` (for syncing it outside the `Wal`); `None`
    /// if the segment is gone (purged).
    pub fn dup_segment_file(&self, seq: u64) -> Result<Option<File>> {
        let Some(s) = self.segment_if_present(seq) else { return Ok(None) };
        s.file().try_clone().map(Some).map_err(|e| WalError::io("dup segment fd", s.path(), e))
    }

    /// Seq of the oldest segment still in the log.
    pub fn front_seq(&self) -> u64 {
        self.segments.front().expect("a wal always has a tail segment").seq()
    }

    /// The position after the last record written.
    pub fn end_position(&self) -> Position {
        let tail = self.tail();
        Position { seq: tail.seq(), offset: tail.write_offset() }
    }

    /// Everything written before this position is durable.
    pub fn durable_position(&self) -> Position {
        self.durable
    }

    /// Finishes a sync started by `begin_sync`. A failed sync poisons the WAL.
    pub fn complete_sync(&mut self, job: SyncJob, outcome: Result<()>) -> Result<()> {
        if let Err(e) = outcome {
            let why = e.to_string();
            self.poisoned = Some(why);
            if let Some(spare) = self.spare.take() {
                spare.discard();
            }
            return Err(e);
        }
        // A job older than a purge past the end targets a deleted segment.
        if job.target <= self.durable {
            return Ok(());
        }
        self.durable = job.target;
        self.release_synced_pages();
        let next = self.next_index();
        while self.durable_next < next {
            let loc = self.live[(self.durable_next - self.first_index) as usize];
            if (Position { seq: loc.seq, offset: loc.offset as usize }) >= self.durable {
                break;
            }
            self.durable_next += 1;
        }
        debug_assert!(self.durable_next <= next);
        Ok(())
    }

    /// Unmaps synced pages once enough have accumulated: whole older segments, and the
    /// synced part of the tail in steps of `crate::files::PAGE_RELEASE_STEP_BYTES`.
    fn release_synced_pages(&mut self) {
        const RELEASE_STEP_BYTES: usize = crate::files::PAGE_RELEASE_STEP_BYTES;
        let durable = self.durable;
        let from = self.released_up_to;
        if durable.seq == from.seq && durable.offset < from.offset + RELEASE_STEP_BYTES {
            return;
        }
        for s in self.segments.iter().filter(|s| s.seq() >= from.seq && s.seq() <= durable.seq) {
            let start = if s.seq() == from.seq { from.offset } else { 0 };
            let end = if s.seq() == durable.seq { durable.offset } else { s.bytes().len() };
            s.release_pages(start, end);
        }
        self.released_up_to = Position { seq: durable.seq, offset: crate::files::page_floor(durable.offset) };
    }

    /// Makes everything appended so far durable, blocking the calling thread.
    pub fn sync(&mut self) -> Result<()> {
        if let Some(job) = self.begin_sync_covering_all()? {
            let outcome = self.run_blocking(&job);
            self.complete_sync(job, outcome)?;
        }
        Ok(())
    }
}

/// Whether the file's segment header bytes are all zero (never written back).
fn header_is_zero(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut head = [0u8; format::SEGMENT_HEADER_BYTES];
    let mut f = File::open(path).map_err(|e| WalError::io("open segment", path, e))?;
    match f.read_exact(&mut head) {
        Ok(()) => Ok(head.iter().all(|&b| b == 0)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(WalError::io("read segment header", path, e)),
    }
}
