//! Recovery: from the bytes of the segment files to the live log of every group. Pure,
//! no I/O, so the crash tests and the property tests can call it on any bytes they like.
//!
//! The scan reads segments in sequence order and records in offset order, replaying
//! each group's records (`format`: data, truncate, reset, copy). It stops at the first
//! slot that is not an intact record that fits its group's log (a *hole*) and then
//! decides what the hole is:
//! - a torn tail: nothing after the hole proves that what was there had been synced.
//!   The log ends at the hole; the caller zeroes the garbage and drops later segments.
//! - corruption: some intact record after the hole carries `durable_pos` beyond the
//!   hole, i.e. it was written after a sync covering the hole's position had returned.
//!   Data that was durable is gone; recovery refuses with the segment and offset.
//!
//! One case cannot be told apart and is treated as torn: damage to a synced record
//! when no record was written after that sync returned (the last synced batch). Raft
//! replication repairs such a replica; a single node would lose that last batch.
//!
//! Segments before the oldest one on disk were deleted because no group needed them, so
//! a group's first surviving record may be at any index: its log starts there.
use std::collections::{BTreeMap, VecDeque};

use super::format::{self, GroupId, RecordKind, RecordMeta, Slot};

/// Where a live record sits: segment position in the scanned slice, byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub segment: usize,
    pub offset: u32,
}

/// One group's live log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GroupLog {
    /// Index of `live[0]` (or the next index when `live` is empty).
    pub first_index: u64,
    pub live: VecDeque<Loc>,
}

impl GroupLog {
    fn next(&self) -> u64 {
        self.first_index + self.live.len() as u64
    }
}

/// The live logs found by a successful scan.
#[derive(Debug)]
pub struct Recovered {
    pub groups: BTreeMap<GroupId, GroupLog>,
    /// Segment position that writing continues in; segments after it are dropped.
    pub end_segment: usize,
    /// Offset in `end_segment` where the next record goes.
    pub end_offset: usize,
    /// Whether the scan stopped at a torn tail (garbage to zero, or segments to drop).
    pub torn: bool,
}

/// Data that was durable is damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub segment: usize,
    pub offset: u64,
    pub detail: String,
}

/// A group during the scan: its log, and a run of copies of entries below its first
/// surviving one (their originals were in deleted segments) waiting to join it.
#[derive(Default)]
struct Scan {
    log: GroupLog,
    /// First index of the pending copies and their locations.
    pending: Option<(u64, Vec<Loc>)>,
}

/// What replaying one record did.
enum Replay {
    Ok,
    /// The record does not fit its group's log: a hole, with the reason.
    Hole(String),
}

impl Scan {
    fn replay(&mut self, m: &RecordMeta, loc: Loc, seen: bool) -> Replay {
        let (i, next) = (m.index, self.log.next());
        if m.kind != RecordKind::Copy
            && let Some((from, locs)) = &self.pending
        {
            return Replay::Hole(format!(
                "copies of entries {from}..{} of group {} stop short of its entry {}",
                from + locs.len() as u64,
                m.group,
                self.log.first_index
            ));
        }
        let log = &mut self.log;
        match m.kind {
            RecordKind::Data if !seen || i == next => {
                if !seen {
                    log.first_index = i;
                }
                log.live.push_back(loc);
            }
            RecordKind::Truncate if !seen || i < log.first_index => {
                log.live.clear();
                log.first_index = i;
            }
            RecordKind::Truncate if i <= next => log.live.truncate((i - log.first_index) as usize),
            RecordKind::Reset => {
                log.live.clear();
                log.first_index = i;
            }
            RecordKind::Copy => return self.replay_copy(i, loc, seen),
            kind => {
                return Replay::Hole(format!(
                    "{kind:?} record with index {i} where group {} goes on at {next}",
                    m.group
                ));
            }
        }
        Replay::Ok
    }

    /// A copy run covers the group's live entries at the time, ascending. Copies of
    /// entries below the group's first surviving one (their originals were deleted)
    /// wait in `pending` until the run reaches that first entry, and then join the
    /// log in front of it; copies of entries the log holds replace their locations.
    fn replay_copy(&mut self, i: u64, loc: Loc, seen: bool) -> Replay {
        let log = &mut self.log;
        let next = log.next();
        if !seen {
            log.first_index = i;
            log.live.push_back(loc);
        } else if i >= log.first_index && i < next {
            if self.pending.is_some() {
                return Replay::Hole(format!("copies stop short of entry {}, then copy entry {i}", log.first_index));
            }
            log.live[(i - log.first_index) as usize] = loc;
        } else if i == next && self.pending.is_none() {
            log.live.push_back(loc);
        } else if i < log.first_index {
            match &mut self.pending {
                None => self.pending = Some((i, vec![loc])),
                Some((from, locs)) if *from + locs.len() as u64 == i => locs.push(loc),
                Some(_) => return Replay::Hole(format!("copy of entry {i} out of order")),
            }
            if let Some((from, locs)) =
                self.pending.take_if(|(from, locs)| *from + locs.len() as u64 == log.first_index)
            {
                for l in locs.into_iter().rev() {
                    log.live.push_front(l);
                }
                log.first_index = from;
            }
        } else {
            return Replay::Hole(format!("copy of entry {i} beyond the group's end {next}"));
        }
        Replay::Ok
    }
}

/// Scans the segments: `(seq from the file name, full file bytes)`, in seq order.
pub fn scan(files: &[(u64, &[u8])], payload_max: u32) -> Result<Recovered, Damage> {
    let segments: Vec<&[u8]> = files.iter().map(|f| f.1).collect();
    let segments = &segments[..];
    let mut groups: BTreeMap<GroupId, Scan> = BTreeMap::new();
    let mut prev_end = 0usize;
    let mut prev_seq = None;
    for (si, bytes) in segments.iter().enumerate() {
        let name_seq = files[si].0;
        if let Some(prev) = prev_seq
            && name_seq != prev + 1
        {
            // Segments are missing: lost renames of a crash, or lost files.
            let why = format!("segment seq {name_seq} does not follow {prev}");
            return resolve_hole(files, si - 1, prev_end, groups, &why);
        }
        let header = match format::decode_segment_header(bytes) {
            Ok(h) => h,
            Err(detail) if si > 0 => {
                // The header of a rolled segment becomes durable with the first sync of
                // its records; a crash before that leaves it zero or torn. Whether that
                // hides synced data is what the hole resolution decides.
                let why = format!("segment seq {name_seq}: {detail}");
                return resolve_hole(files, si - 1, prev_end, groups, &why);
            }
            Err(detail) => return Err(Damage { segment: si, offset: 0, detail: detail.into() }),
        };
        if header.seq != name_seq {
            let detail = format!("segment header says seq {} but the file name says {name_seq}", header.seq);
            return Err(Damage { segment: si, offset: 0, detail });
        }
        if header.segment_size_bytes != bytes.len() as u64 {
            let detail = format!("segment is {} bytes, header says {}", bytes.len(), header.segment_size_bytes);
            return Err(Damage { segment: si, offset: 0, detail });
        }
        prev_seq = Some(header.seq);
        if si > 0 && header.prev_end_offset != prev_end as u64 {
            // The previous segment ends short of where its writer left it: records
            // are missing at its end (lost writeback, or damage).
            let why = format!(
                "segment {si} continues from offset {}, but the previous segment's records end at offset {prev_end}",
                header.prev_end_offset
            );
            return resolve_hole(files, si - 1, prev_end, groups, &why);
        }
        let mut off = format::SEGMENT_HEADER_BYTES;
        while off + format::RECORD_HEADER_BYTES <= bytes.len() {
            let slot = format::decode_slot(bytes, off, payload_max);
            let m = match slot {
                Slot::Record(m) => m,
                Slot::Empty if bytes[off..].iter().all(|&b| b == 0) => break,
                Slot::Empty => return resolve_hole(files, si, off, groups, "empty slot followed by non-zero bytes"),
                Slot::Invalid(reason) => return resolve_hole(files, si, off, groups, &reason.to_string()),
            };
            let seen = groups.contains_key(&m.group);
            let loc = Loc { segment: si, offset: off as u32 };
            if let Replay::Hole(why) = groups.entry(m.group).or_default().replay(&m, loc, seen) {
                if !seen {
                    groups.remove(&m.group);
                }
                return resolve_hole(files, si, off, groups, &why);
            }
            off += m.stored_bytes();
        }
        prev_end = off;
    }
    let end_segment = segments.len().saturating_sub(1);
    finish(groups, end_segment, prev_end, false)
}

/// The scan's result; copies still waiting to join their group mean that originals
/// were deleted before the copies were durable, which never happens: corruption.
fn finish(
    groups: BTreeMap<GroupId, Scan>,
    end_segment: usize,
    end_offset: usize,
    torn: bool,
) -> Result<Recovered, Damage> {
    let mut out = BTreeMap::new();
    for (g, s) in groups {
        if let Some((from, locs)) = s.pending {
            let detail = format!(
                "group {g}: copies of entries {from}..{} have no originals after them (their first surviving \
                 entry is {})",
                from + locs.len() as u64,
                s.log.first_index
            );
            return Err(Damage { segment: locs[0].segment, offset: u64::from(locs[0].offset), detail });
        }
        out.insert(g, s.log);
    }
    Ok(Recovered { groups: out, end_segment, end_offset, torn })
}

/// Decides whether the hole at (`si`, `off`) is a torn tail or corruption (see the
/// module docs).
fn resolve_hole(
    files: &[(u64, &[u8])],
    si: usize,
    off: usize,
    groups: BTreeMap<GroupId, Scan>,
    why: &str,
) -> Result<Recovered, Damage> {
    let hole = format::pack_position(files[si].0, off);
    if let Some((sj, at, m)) = find_attestation(files, si, off, hole) {
        let detail = format!(
            "the record at this position is unreadable ({why}), but the intact {:?} record of group {} (index {}) \
             in segment {sj} at offset {at} was written after a sync covering this position had returned",
            m.kind, m.group, m.index
        );
        return Err(Damage { segment: si, offset: off as u64, detail });
    }
    finish(groups, si, off, true)
}

/// Looks for an intact record after (`si`, `off`) whose `durable_pos` is beyond `hole`.
/// Every record has `durable_pos <=` its own position (a record is never durable when
/// written); that bound rejects garbage before any crc is computed.
fn find_attestation(files: &[(u64, &[u8])], si: usize, off: usize, hole: u64) -> Option<(usize, usize, RecordMeta)> {
    for (sj, (seq, bytes)) in files.iter().enumerate().skip(si) {
        let start = if sj == si { off } else { format::SEGMENT_HEADER_BYTES };
        let mut at = start;
        while at + format::RECORD_HEADER_BYTES <= bytes.len() {
            if let Some(durable_pos) = format::peek_durable_pos(bytes, at)
                && durable_pos > hole
                && durable_pos <= format::pack_position(*seq, at)
                && let Slot::Record(m) = format::decode_slot(bytes, at, format::RECORD_PAYLOAD_LIMIT_BYTES)
            {
                return Some((sj, at, m));
            }
            at += format::RECORD_ALIGN_BYTES;
        }
    }
    None
}
