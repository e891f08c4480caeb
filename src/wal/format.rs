//! On-disk byte layout of WAL segments and records (format 2: one log per executor
//! core, shared by every Raft group the core owns). Pure functions, no I/O.
//!
//! All integers are little-endian and fixed-width. Format 1 (one log per shard; records
//! without a group) is read only to convert old data dirs: `super::v1`.
//!
//! # Segment file `<seq:020>.wal`
//! Segments are numbered by a sequence that grows by one per new segment. A segment is
//! preallocated to `segment_size_bytes` (zero-filled, blocks reserved) and begins with
//! a 64-byte header, written and fsync'd before the file is renamed into place:
//!
//! ```text
//! offset size field
//!      0    8 magic               b"FLEETWAL"
//!      8    4 format_version      u32 = 2
//!     12    4 header_crc          crc32 of bytes 0..12 ++ 16..64
//!     16    8 seq                 u64, equals the file name
//!     24    8 reserved, zero      (format 1: first_index)
//!     32    8 segment_size_bytes  u64, size the file was created with
//!     40    4 reserved, zero      (format 1: flags)
//!     44    8 prev_end_offset     u64, where the records of segment seq-1 ended when
//!                                 this one was created; recovery accepts this segment
//!                                 as the continuation only if its scan of seq-1 ended
//!                                 exactly there (0 for the first segment)
//!     52   12 reserved, zero
//! ```
//!
//! # Record, at every 8-aligned offset from 64 on
//!
//! ```text
//! offset size field
//!      0    4 crc                 crc32 of bytes 4..32 ++ payload
//!      4    3 payload_len         u24 (low three bytes of a u32)
//!      7    1 kind                1 data, 2 truncate, 3 reset, 4 copy (below)
//!      8    8 index               u64, a log index of the record's group
//!     16    8 durable_pos         u64, (seq << 32) | offset: every record written before
//!                                 this position had been covered by a returned sync
//!                                 when this record was written
//!     24    4 group               u32, the Raft group (shard) the record belongs to
//!     28    4 reserved, zero
//!     32    n payload             (empty except for data and copy)
//!   32+n    p zero padding to the next multiple of 8 (not covered by the crc)
//! ```
//!
//! Kinds, per group, replayed in log order:
//! - data `i`: the entry at index `i`; `i` is the group's next index (or any index when
//!   nothing of the group precedes it in the surviving segments);
//! - truncate `i`: removes the group's entries from `i` on;
//! - reset `i`: removes all of the group's entries; it goes on at `i` (a purge past the
//!   end, after a snapshot install);
//! - copy `i`: the same entry as the group's live entry `i`, rewritten forward so that
//!   older segments can be deleted (reclamation). A group's copies are written as one
//!   ascending run of all its live entries; the old segments go only once the whole run
//!   is durable, so recovery either finds every original or the whole run.
//!
//! A slot whose 32 header bytes are all zero is *empty*: the end of the written part of
//! a segment. A real record never has an all-zero header (its kind byte is non-zero).
//!
//! Durable bytes are never rewritten: truncation appends a marker instead of zeroing,
//! so a crash during a truncation cannot leave a half-erased durable record behind.
//! Together with `durable_pos` this lets recovery tell a torn tail from corruption: if
//! a damaged slot at position `p` is followed by an intact record that says
//! `durable_pos > p`, then whatever was at `p` had been synced and its loss is
//! corruption.

/// Bytes of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 64;
/// Bytes of a record header.
pub const RECORD_HEADER_BYTES: usize = 32;
/// Records start at multiples of this.
pub const RECORD_ALIGN_BYTES: usize = 8;
/// Segment magic.
pub const SEGMENT_MAGIC: [u8; 8] = *b"FLEETWAL";
/// Version of this layout.
pub const FORMAT_VERSION: u32 = 2;
/// Largest payload the 24-bit length field can describe.
pub const RECORD_PAYLOAD_LIMIT_BYTES: u32 = (1 << 24) - 1;

/// A Raft group's id in the log (its shard number).
pub type GroupId = u32;

/// A byte position in the log, `(seq << 32) | offset`: grows with every record.
pub fn pack_position(seq: u64, offset: usize) -> u64 {
    debug_assert!(offset <= u32::MAX as usize && seq < (1 << 32));
    (seq << 32) | offset as u64
}

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A log entry at `index`.
    Data,
    /// Removes every live index >= `index`.
    Truncate,
    /// Removes every live index; the group goes on at `index`.
    Reset,
    /// A forward copy of the live entry at `index`.
    Copy,
}

impl RecordKind {
    fn to_byte(self) -> u8 {
        match self {
            RecordKind::Data => 1,
            RecordKind::Truncate => 2,
            RecordKind::Reset => 3,
            RecordKind::Copy => 4,
        }
    }
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(RecordKind::Data),
            2 => Some(RecordKind::Truncate),
            3 => Some(RecordKind::Reset),
            4 => Some(RecordKind::Copy),
            _ => None,
        }
    }
}

/// The decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub seq: u64,
    pub segment_size_bytes: u64,
    pub prev_end_offset: u64,
}

/// What sits at one record slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// An intact record: header and payload match the crc.
    Record(RecordMeta),
    /// All-zero header: nothing was written here.
    Empty,
    /// Anything else: a torn or garbled write, or corruption.
    Invalid(InvalidReason),
}

/// Header fields of an intact record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    pub kind: RecordKind,
    pub group: GroupId,
    pub index: u64,
    pub durable_pos: u64,
    pub payload_len: u32,
}

impl RecordMeta {
    /// Bytes this record occupies including header and padding.
    pub fn stored_bytes(&self) -> usize {
        record_stored_bytes(self.payload_len as usize)
    }
}

/// Why a slot is not an intact record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    /// Fewer than a header's bytes remain in the segment.
    HeaderPastEnd,
    /// The length runs past the end of the segment or over the configured maximum.
    LengthOutOfBounds,
    /// The crc does not match.
    CrcMismatch,
    /// The crc matches but the kind byte is unknown (written by a newer format?).
    UnknownKind,
}

impl std::fmt::Display for InvalidReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InvalidReason::HeaderPastEnd => "record header runs past the segment end",
            InvalidReason::LengthOutOfBounds => "record length out of bounds",
            InvalidReason::CrcMismatch => "crc mismatch",
            InvalidReason::UnknownKind => "unknown record kind",
        })
    }
}

/// Bytes a record with `payload_len` bytes of payload occupies, padded to alignment.
pub fn record_stored_bytes(payload_len: usize) -> usize {
    align_up(RECORD_HEADER_BYTES + payload_len)
}

/// Rounds up to the record alignment.
pub fn align_up(n: usize) -> usize {
    n.div_ceil(RECORD_ALIGN_BYTES) * RECORD_ALIGN_BYTES
}

/// Encodes a segment header.
pub fn encode_segment_header(h: SegmentHeader) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut b = [0u8; SEGMENT_HEADER_BYTES];
    b[0..8].copy_from_slice(&SEGMENT_MAGIC);
    b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    b[16..24].copy_from_slice(&h.seq.to_le_bytes());
    b[32..40].copy_from_slice(&h.segment_size_bytes.to_le_bytes());
    b[44..52].copy_from_slice(&h.prev_end_offset.to_le_bytes());
    let crc = segment_header_crc(&b);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

fn segment_header_crc(b: &[u8; SEGMENT_HEADER_BYTES]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&b[0..12]);
    h.update(&b[16..SEGMENT_HEADER_BYTES]);
    h.finalize()
}

/// Decodes a segment header; `Err` says what is wrong with it.
pub fn decode_segment_header(bytes: &[u8]) -> Result<SegmentHeader, &'static str> {
    let b: &[u8; SEGMENT_HEADER_BYTES] =
        bytes.get(..SEGMENT_HEADER_BYTES).and_then(|s| s.try_into().ok()).ok_or("segment shorter than its header")?;
    if b[0..8] != SEGMENT_MAGIC {
        return Err("bad segment magic");
    }
    match u32_at(b, 8) {
        FORMAT_VERSION => {}
        1 => return Err("segment of format 1 (one log per shard): convert the data dir by starting this build on it"),
        _ => return Err("unknown segment format version"),
    }
    if u32_at(b, 12) != segment_header_crc(b) {
        return Err("segment header crc mismatch");
    }
    Ok(SegmentHeader { seq: u64_at(b, 16), segment_size_bytes: u64_at(b, 32), prev_end_offset: u64_at(b, 44) })
}

/// Writes one record (header, payload and zero padding) into `dst`, which must be
/// exactly `record_stored_bytes(payload.len())` long. Returns the record's crc.
/// What a record says besides its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHead {
    pub kind: RecordKind,
    pub group: GroupId,
    pub index: u64,
    pub durable_pos: u64,
}

pub fn encode_record(dst: &mut [u8], head: RecordHead, payload: &[u8]) -> u32 {
    assert_eq!(dst.len(), record_stored_bytes(payload.len()), "record slot size");
    assert!(payload.len() <= RECORD_PAYLOAD_LIMIT_BYTES as usize, "payload length checked by the caller");
    let len_and_kind = payload.len() as u32 | (u32::from(head.kind.to_byte()) << 24);
    dst[4..8].copy_from_slice(&len_and_kind.to_le_bytes());
    dst[8..16].copy_from_slice(&head.index.to_le_bytes());
    dst[16..24].copy_from_slice(&head.durable_pos.to_le_bytes());
    dst[24..28].copy_from_slice(&head.group.to_le_bytes());
    dst[28..32].fill(0);
    let end = RECORD_HEADER_BYTES + payload.len();
    dst[RECORD_HEADER_BYTES..end].copy_from_slice(payload);
    dst[end..].fill(0);
    let mut h = crc32fast::Hasher::new();
    h.update(&dst[4..end]);
    let crc = h.finalize();
    dst[0..4].copy_from_slice(&crc.to_le_bytes());
    crc
}

/// Decodes the slot at `offset` of a segment's bytes. `payload_max` bounds the length
/// field so that garbage cannot make us checksum megabytes.
pub fn decode_slot(segment: &[u8], offset: usize, payload_max: u32) -> Slot {
    let Some(header) = offset.checked_add(RECORD_HEADER_BYTES).and_then(|end| segment.get(offset..end)) else {
        return Slot::Invalid(InvalidReason::HeaderPastEnd);
    };
    if header.iter().all(|&b| b == 0) {
        return Slot::Empty;
    }
    let len_and_kind = u32_at(header, 4);
    let payload_len = len_and_kind & RECORD_PAYLOAD_LIMIT_BYTES;
    // `offset + RECORD_HEADER_BYTES` is within `segment` (checked above): no overflow.
    let end = offset + RECORD_HEADER_BYTES + payload_len as usize;
    if payload_len > payload_max || end > segment.len() {
        return Slot::Invalid(InvalidReason::LengthOutOfBounds);
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&segment[offset + 4..end]);
    if h.finalize() != u32_at(header, 0) {
        return Slot::Invalid(InvalidReason::CrcMismatch);
    }
    let Some(kind) = RecordKind::from_byte((len_and_kind >> 24) as u8) else {
        return Slot::Invalid(InvalidReason::UnknownKind);
    };
    Slot::Record(RecordMeta {
        kind,
        group: u32_at(header, 24),
        index: u64_at(header, 8),
        durable_pos: u64_at(header, 16),
        payload_len,
    })
}

/// The payload of an intact record at `offset` (already validated by `decode_slot`).
pub fn payload_at(segment: &[u8], offset: usize, payload_len: u32) -> &[u8] {
    let start = offset + RECORD_HEADER_BYTES;
    &segment[start..start + payload_len as usize]
}

/// Cheap pre-check for the forward search of recovery: `durable_pos` read without
/// validating anything.
pub fn peek_durable_pos(segment: &[u8], offset: usize) -> Option<u64> {
    let b = segment.get(offset.checked_add(16)?..offset.checked_add(24)?)?;
    Some(u64_at(b, 0))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn zero_header_is_empty_and_real_records_never_are() {
        let zeros = [0u8; 64];
        assert_eq!(decode_slot(&zeros, 0, 1024), Slot::Empty);
        // The smallest possible record: index 0, nothing durable, empty payload.
        let mut slot = vec![0u8; record_stored_bytes(0)];
        encode_record(&mut slot, RecordHead { kind: RecordKind::Data, group: 0, index: 0, durable_pos: 0 }, b"");
        assert_ne!(
            slot[..RECORD_HEADER_BYTES],
            [0u8; RECORD_HEADER_BYTES],
            "an all-zero record header must be impossible"
        );
        assert!(matches!(decode_slot(&slot, 0, 1024), Slot::Record(m) if m.index == 0));
    }

    #[test]
    fn segment_header_round_trip_and_damage() {
        let h = SegmentHeader { seq: 3, segment_size_bytes: 1 << 20, prev_end_offset: 4096 };
        let mut b = encode_segment_header(h);
        assert_eq!(decode_segment_header(&b), Ok(h));
        b[20] ^= 1;
        assert_eq!(decode_segment_header(&b), Err("segment header crc mismatch"));
    }

    proptest! {
        #[test]
        fn record_round_trip(group: u32, index: u64, durable_pos: u64, kind in 0usize..4, payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let kind = [RecordKind::Data, RecordKind::Truncate, RecordKind::Reset, RecordKind::Copy][kind];
            let mut seg = vec![0u8; record_stored_bytes(payload.len()) + 16];
            let n = record_stored_bytes(payload.len());
            encode_record(&mut seg[..n], RecordHead { kind, group, index, durable_pos }, &payload);
            prop_assert_eq!(n % RECORD_ALIGN_BYTES, 0);
            match decode_slot(&seg, 0, 1024) {
                Slot::Record(m) => {
                    prop_assert_eq!(m, RecordMeta { kind, group, index, durable_pos, payload_len: payload.len() as u32 });
                    prop_assert_eq!(payload_at(&seg, 0, m.payload_len), &payload[..]);
                }
                other => prop_assert!(false, "decoded {:?}", other),
            }
        }

        #[test]
        fn any_single_bit_flip_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..100), bit in 0usize..1000) {
            let n = record_stored_bytes(payload.len());
            let mut seg = vec![0u8; n];
            encode_record(&mut seg, RecordHead { kind: RecordKind::Truncate, group: 7, index: 5, durable_pos: 3 }, &payload);
            // Flip a bit among the crc-covered bytes (header + payload, not padding).
            let covered = RECORD_HEADER_BYTES + payload.len();
            let bit = bit % (covered * 8);
            seg[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(!matches!(decode_slot(&seg, 0, 1024), Slot::Record(_)));
        }
    }
}
