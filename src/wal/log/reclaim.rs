//! Reclamation of the shared log (see `super`'s module docs and docs/wal.md): which
//! segments no group needs any more, the forward copies of small groups that pin old
//! segments, the groups only a snapshot can free, and the durable front that makes the
//! deletion of segments safe against a crash between unlinks.
use std::path::Path;

use super::super::error::{Result, WalError};
use super::super::format::{GroupId, RecordKind};
use super::super::segment::Segment;
use super::Wal;

impl Wal {
    /// After a roll that leaves more than `segments_soft_max` segments: copies the live
    /// entries of every *small* group (live records within half a segment) whose
    /// oldest record lies before the newest `segments_soft_max` segments to the tail,
    /// so that the old segments can go once the copies are durable
    /// (`take_reclaimable`). A large group is not copied: its live records are a
    /// Raft log that its next snapshot purges, and copying it on every roll would
    /// multiply the writes. Checked once per roll.
    pub(super) fn reclaim_if_rolled(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.rolled) || self.segments.len() <= self.config.segments_soft_max {
            return Ok(());
        }
        let window_start = (self.tail().seq() + 1).saturating_sub(self.config.segments_soft_max as u64);
        let small = self.config.segment_size_bytes / 2;
        let pinning: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, l)| l.live_bytes <= small && l.live.front().is_some_and(|f| f.seq < window_start))
            .map(|(g, _)| *g)
            .collect();
        for g in pinning {
            self.copy_forward(g)?;
        }
        self.rolled = false;
        Ok(())
    }

    /// Groups that keep segments older than the newest `segments_soft_max` alive and
    /// are too large to be copied forward (`reclaim_if_rolled`): only their owner can
    /// free them, by a snapshot and the purge after it (`crate::shard::log_pressure`).
    /// Empty while the log is within its soft maximum.
    pub fn groups_pinning_old_segments(&self) -> Vec<GroupId> {
        if self.segments.len() <= self.config.segments_soft_max {
            return Vec::new();
        }
        let window_start = (self.tail().seq() + 1).saturating_sub(self.config.segments_soft_max as u64);
        let small = self.config.segment_size_bytes / 2;
        self.groups
            .iter()
            .filter(|(_, l)| l.live_bytes > small && l.live.front().is_some_and(|f| f.seq < window_start))
            .map(|(g, _)| *g)
            .collect()
    }

    /// Rewrites all of group `g`'s live entries at the tail, as one ascending run of
    /// copy records (recovery joins them to whatever originals survive). Reads go
    /// through the mapping, which sees only what was flushed: the payloads are read in
    /// chunks of `COPY_CHUNK_BYTES`, and the tail is flushed before the next chunk.
    pub(super) fn copy_forward(&mut self, g: GroupId) -> Result<()> {
        /// Payload bytes read before they are written back (a memory-reuse bound).
        const COPY_CHUNK_BYTES: usize = 1 << 20;
        let Some(group) = self.groups.get(&g) else { return Ok(()) };
        let first = group.first_index;
        let n = group.live.len();
        let mut arena: Vec<u8> = Vec::new();
        let mut lens: Vec<usize> = Vec::new();
        let mut k = 0;
        while k < n {
            arena.clear();
            lens.clear();
            let from = k;
            while k < n && (arena.is_empty() || arena.len() < COPY_CHUNK_BYTES) {
                let payload = self.get(g, first + k as u64)?;
                arena.extend_from_slice(payload);
                lens.push(payload.len());
                k += 1;
            }
            let mut at = 0;
            for (j, len) in lens.iter().enumerate() {
                let index = first + (from + j) as u64;
                let loc = self.write_record(RecordKind::Copy, g, index, &arena[at..at + len])?;
                at += len;
                self.groups.get_mut(&g).expect("present above").live[from + j] = loc;
            }
            self.flush_tail()?;
        }
        self.copies_end = self.end_position();
        let group = &self.groups[&g];
        assert!(group.live.iter().zip(group.live.iter().skip(1)).all(|(a, b)| a < b), "copied positions grow");
        Ok(())
    }

    /// Detaches the oldest segments that no group needs any more and whose loss cannot
    /// hide anything: before every group's oldest live entry, before the durable point,
    /// and freed by copies that are durable. The caller deletes the files (front
    /// first) and then fsyncs the directory; a crash in between leaves files that
    /// recovery replays harmlessly (everything in them was superseded).
    pub fn take_reclaimable(&mut self) -> Vec<Segment> {
        // The tail is never reclaimed; this runs after every sync, so skip the scan of
        // every group while there is nothing else.
        if self.segments.len() <= 1 {
            return Vec::new();
        }
        let mut keep_from = self.durable.seq.min(self.tail().seq());
        if self.copies_end > self.durable {
            keep_from = keep_from.min(self.copies_end.seq).min(self.front_seq());
        }
        for l in self.groups.values() {
            if let Some(f) = l.live.front() {
                keep_from = keep_from.min(f.seq);
            }
        }
        let mut out = Vec::new();
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.seq() < keep_from) {
            out.push(self.segments.pop_front().expect("checked"));
        }
        out
    }

    /// Deletes what `take_reclaimable` detaches, on the calling thread.
    pub fn reclaim_blocking(&mut self) -> Result<usize> {
        let gone = self.take_reclaimable();
        delete_segments(&self.dir, &gone)?;
        Ok(gone.len())
    }
}

/// Name of the file that records the oldest segment still needed (`FRONT_FILE`: the
/// seq as decimal text), written durably before reclaimed segments are unlinked.
const FRONT_FILE: &str = "front";

pub(super) fn read_front(dir: &Path) -> Result<u64> {
    let path = dir.join(FRONT_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().map_err(|_| WalError::Corruption {
            segment: path.clone(),
            offset: 0,
            detail: format!("front file holds {text:?}, not a segment seq"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(WalError::io("read front file", &path, e)),
    }
}

/// Deletes reclaimed segment files: first records durably that the log now starts
/// after them (so that whichever unlinks a crash undoes, open deletes them again), then
/// unlinks them oldest first and fsyncs the directory.
pub fn delete_segments(dir: &Path, segments: &[Segment]) -> Result<()> {
    let Some(last) = segments.iter().map(Segment::seq).max() else { return Ok(()) };
    let front = dir.join(FRONT_FILE);
    crate::files::replace_durably(&front, (last + 1).to_string().as_bytes())
        .map_err(|e| WalError::io("write front file", &front, e))?;
    for s in segments {
        std::fs::remove_file(s.path()).map_err(|e| WalError::io("remove reclaimed segment", s.path(), e))?;
    }
    if !segments.is_empty() {
        crate::files::sync_dir(dir).map_err(|e| WalError::io("fsync wal dir", dir, e))?;
    }
    Ok(())
}
