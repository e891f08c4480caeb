//! Recovery: from the bytes of the segment files to the live log. Pure, no I/O, so the
//! crash tests and the property tests can call it on any bytes they like.
//!
//! The scan reads segments in sequence order and records in offset order, replaying
//! data records and truncation markers. It stops at the first slot that is not the next
//! intact record (a *hole*) and then decides what the hole is:
//! - a torn tail: nothing after the hole proves that the lost record had been synced.
//!   The log ends at the hole; the caller zeroes the garbage and drops later segments.
//! - corruption: some intact record after the hole carries `durable_next` above the lost
//!   index, i.e. it was written after a sync covering the lost record had returned. Data
//!   that was durable is gone; recovery refuses with the segment and offset.
//!
//! One case cannot be told apart and is treated as torn: damage to a synced record
//! when no record was written after that sync returned (the last synced batch). Raft
//! replication repairs such a replica; a single node would lose that last batch.
use std::collections::VecDeque;

use super::format::{self, RecordKind, Slot};

/// Where a live record sits: segment position in the scanned slice, byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub segment: usize,
    pub offset: u32,
}

/// The live log found by a successful scan.
#[derive(Debug)]
pub struct Recovered {
    /// Index of `live[0]` (or the next index when `live` is empty).
    pub first_index: u64,
    pub live: VecDeque<Loc>,
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

/// Scans the segments: `(seq from the file name, full file bytes)`, in seq order.
pub fn scan(files: &[(u64, &[u8])], payload_max: u32) -> Result<Recovered, Damage> {
    let segments: Vec<&[u8]> = files.iter().map(|f| f.1).collect();
    let segments = &segments[..];
    let mut first_index = 0u64;
    let mut live: VecDeque<Loc> = VecDeque::new();
    let mut prev_end = 0usize;
    let mut prev_seq = None;
    for (si, bytes) in segments.iter().enumerate() {
        let next = first_index + live.len() as u64;
        let name_seq = files[si].0;
        if let Some(prev) = prev_seq
            && name_seq != prev + 1
        {
            // Segments are missing: lost renames of a crash, or lost files.
            let why = format!("segment seq {name_seq} does not follow {prev}");
            return resolve_hole(segments, si - 1, prev_end, next, first_index, live, &why);
        }
        let header = match format::decode_segment_header(bytes) {
            Ok(h) => h,
            Err(detail) if si > 0 => {
                // The header of a rolled segment becomes durable with the first sync of
                // its records; a crash before that leaves it zero or torn. Whether that
                // hides synced data is what the hole resolution decides.
                let why = format!("segment seq {name_seq}: {detail}");
                return resolve_hole(segments, si - 1, prev_end, next, first_index, live, &why);
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
        if si == 0 || header.flags & format::SEGMENT_FLAG_RESET != 0 {
            first_index = header.first_index;
            live.clear();
        } else if header.first_index != next || header.prev_end_offset != prev_end as u64 {
            // The previous segment ends short of where its writer left it: records
            // are missing at its end (lost writeback, or damage).
            let why = format!(
                "segment {si} continues index {} from offset {}, but the previous segment's records end at index {next}, offset {prev_end}",
                header.first_index, header.prev_end_offset
            );
            return resolve_hole(segments, si - 1, prev_end, next, first_index, live, &why);
        }
        let mut off = format::SEGMENT_HEADER_BYTES;
        while off + format::RECORD_HEADER_BYTES <= bytes.len() {
            let next = first_index + live.len() as u64;
            let slot = format::decode_slot(bytes, off, payload_max);
            match slot {
                Slot::Record(m) if m.kind == RecordKind::Data && m.index == next => {
                    live.push_back(Loc { segment: si, offset: off as u32 });
                }
                Slot::Record(m) if m.kind == RecordKind::Truncate && m.index <= next => {
                    // A marker below `first_index` cut into segments that a purge has
                    // since deleted: everything we hold is removed and the log goes on
                    // at the marker's index.
                    if m.index < first_index {
                        live.clear();
                        first_index = m.index;
                    } else {
                        live.truncate((m.index - first_index) as usize);
                    }
                }
                Slot::Empty if bytes[off..].iter().all(|&b| b == 0) => break,
                other => {
                    let why = describe(other, next);
                    return resolve_hole(segments, si, off, next, first_index, live, &why);
                }
            }
            let Slot::Record(m) = slot else { unreachable!("only records advance") };
            off += m.stored_bytes();
        }
        prev_end = off;
    }
    let end_segment = segments.len().saturating_sub(1);
    Ok(Recovered { first_index, live, end_segment, end_offset: prev_end, torn: false })
}

fn describe(slot: Slot, expected: u64) -> String {
    match slot {
        Slot::Record(m) => format!("{:?} record with index {} where index {expected} was expected", m.kind, m.index),
        Slot::Empty => "empty slot followed by non-zero bytes".into(),
        Slot::Invalid(reason) => reason.to_string(),
    }
}

/// Decides whether the hole at (`si`, `off`), where index `expected` should have been,
/// is a torn tail or corruption (see the module docs).
fn resolve_hole(
    segments: &[&[u8]],
    si: usize,
    off: usize,
    expected: u64,
    first_index: u64,
    live: VecDeque<Loc>,
    why: &str,
) -> Result<Recovered, Damage> {
    if let Some((sj, at, index)) = find_attestation(segments, si, off, expected) {
        let detail = format!(
            "record {expected} is unreadable ({why}), but the intact record with index {index} in segment {sj} \
             at offset {at} was written after record {expected} had been synced"
        );
        return Err(Damage { segment: si, offset: off as u64, detail });
    }
    Ok(Recovered { first_index, live, end_segment: si, end_offset: off, torn: true })
}

/// Looks for an intact record after (`si`, `off`) whose `durable_next` exceeds
/// `expected`. Every record has `durable_next <= index` (a record is never durable when
/// written), and a record written after the hole has `index <= expected + n` where `n`
/// is how many records could fit after it; those bounds reject garbage before any crc
/// is computed.
fn find_attestation(segments: &[&[u8]], si: usize, off: usize, expected: u64) -> Option<(usize, usize, u64)> {
    let bytes_after: usize = segments[si].len() - off + segments[si + 1..].iter().map(|s| s.len()).sum::<usize>();
    let index_bound = expected.saturating_add((bytes_after / format::RECORD_HEADER_BYTES) as u64);
    for (sj, bytes) in segments.iter().enumerate().skip(si) {
        let start = if sj == si { off } else { format::SEGMENT_HEADER_BYTES };
        let mut at = start;
        while at + format::RECORD_HEADER_BYTES <= bytes.len() {
            if let Some((index, durable_next)) = format::peek_index_fields(bytes, at)
                && durable_next > expected
                && durable_next <= index
                && index <= index_bound
                && let Slot::Record(m) = format::decode_slot(bytes, at, format::RECORD_PAYLOAD_LIMIT_BYTES)
            {
                return Some((sj, at, m.index));
            }
            at += format::RECORD_ALIGN_BYTES;
        }
    }
    None
}
