//! Opening a log: listing its segments, deleting what a crash or a reclamation left
//! behind, the recovery scan (`super::super::recovery`), cutting a torn tail, and the
//! first sync.
use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::path::Path;

use super::super::config::WalConfig;
use super::super::error::{Result, WalError};
use super::super::format::{self, GroupId};
use super::super::recovery;
use super::super::segment::{self, Segment};
use super::{Group, Loc, Position, RecoveryReport, Wal, reclaim};

impl Wal {
    /// Opens the log in `dir` (created if missing), recovers it, zeroes any torn tail,
    /// and fsyncs, so that everything recovered is durable before the first new append.
    pub fn open(dir: &Path, config: WalConfig) -> Result<(Wal, RecoveryReport)> {
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
        // Segments below the recorded front were reclaimed; a crash between the unlinks
        // and the directory fsync can bring any of them back, in any combination (not
        // every file system keeps unlinks in order), and a gap among them would read
        // as lost data. They are deleted again before recovery looks.
        let front = reclaim::read_front(dir)?;
        let mut stale = false;
        for seq in seqs.iter().filter(|s| **s < front) {
            let p = dir.join(segment::file_name(*seq));
            std::fs::remove_file(&p).map_err(|e| WalError::io("remove reclaimed segment", &p, e))?;
            stale = true;
        }
        seqs.retain(|s| *s >= front);
        if stale {
            crate::files::sync_dir(dir).map_err(|e| WalError::io("fsync wal dir", dir, e))?;
        }
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
        let zero = Position { seq: 0, offset: 0 };
        let mut wal = Wal {
            dir: dir.to_owned(),
            config,
            segments,
            groups: BTreeMap::new(),
            durable: zero,
            sync_started_to: zero,
            poisoned: None,
            spare: None,
            spares_requested: 0,
            dir_dirty: false,
            released_up_to: zero,
            released_since_sweep_bytes: 0,
            copies_end: zero,
            rolled: false,
            records_written: 0,
        };
        let mut torn_tail = false;
        if wal.segments.is_empty() {
            wal.create_segment(0, 0)?;
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
            groups: wal.groups.iter().map(|(g, l)| (*g, l.first_index..l.next_index())).collect(),
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
        let seq_of = |l: &recovery::Loc| self.segments[l.segment].seq();
        self.groups = found
            .groups
            .iter()
            .map(|(g, log)| {
                let mut group = Group { first_index: log.first_index, ..Group::default() };
                for l in &log.live {
                    let seg = &self.segments[l.segment];
                    let stored =
                        match format::decode_slot(seg.bytes(), l.offset as usize, format::RECORD_PAYLOAD_LIMIT_BYTES) {
                            format::Slot::Record(m) => m.stored_bytes() as u32,
                            other => unreachable!("recovery found a record at {}:{}: {other:?}", seg.seq(), l.offset),
                        };
                    group.push_recovered(Loc { seq: seq_of(l), offset: l.offset, stored_bytes: stored });
                }
                (*g, group)
            })
            .collect();
        // A copy run cut by the crash leaves a group with some entries at their copies
        // and the rest at their originals: positions no longer grow with the index,
        // and the oldest one is not the first. Copying the group again restores the
        // order that reclamation relies on (below, once the tail is ready).
        let unordered: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, l)| l.live.iter().zip(l.live.iter().skip(1)).any(|(a, b)| a >= b))
            .map(|(g, _)| *g)
            .collect();
        // Segments after the end hold only unsynced writes of the crash.
        let dropped: Vec<Segment> = self.segments.drain(found.end_segment + 1..).collect();
        for s in &dropped {
            std::fs::remove_file(s.path()).map_err(|e| WalError::io("remove torn segment", s.path(), e))?;
        }
        let zeroed = self.tail_mut().reset_tail(found.end_offset)?;
        if !dropped.is_empty() {
            self.sync_dir()?;
        }
        for g in unordered {
            self.copy_forward(g)?;
        }
        Ok(found.torn || zeroed || !dropped.is_empty())
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
