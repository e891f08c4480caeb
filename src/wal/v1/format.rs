//! On-disk byte layout of format-1 WAL segments and records (one log per shard). Pure
//! functions, no I/O.
//!
//! All integers are little-endian and fixed-width.
//!
//! # Segment file `<seq:020>.wal`
//! Segments are numbered by a sequence that grows by one per new segment. A segment is
//! preallocated to `segment_size_bytes` (zero-filled, blocks reserved) and begins with
//! a 64-byte header, written and fsync'd before the file is renamed into place:
//!
//! ```text
//! offset size field
//!      0    8 magic               b"FLEETWAL"
//!      8    4 format_version      u32 = 1
//!     12    4 header_crc          crc32 of bytes 0..12 ++ 16..64
//!     16    8 seq                 u64, equals the file name
//!     24    8 first_index         u64, index the first data record here will have
//!     32    8 segment_size_bytes  u64, size the file was created with
//!     40    4 flags               u32; bit 0 RESET: the log restarts at first_index
//!                                 (written when a snapshot purges past the log's end)
//!     44    8 prev_end_offset     u64, where the records of segment seq-1 ended when
//!                                 this one was created; recovery accepts this segment
//!                                 as the continuation only if its scan of seq-1 ended
//!                                 exactly there (0 for the first or a RESET segment)
//!     52   12 reserved, zero
//! ```
//!
//! # Record, at every 8-aligned offset from 64 on
//!
//! ```text
//! offset size field
//!      0    4 crc                 crc32 of bytes 4..24 ++ payload
//!      4    3 payload_len         u24 (low three bytes of a u32)
//!      7    1 kind                1 = data, 2 = truncate marker
//!      8    8 index               u64: data: the record's log index;
//!                                 marker: the first index it removes
//!     16    8 durable_next        u64: every live index < durable_next was durable
//!                                 (covered by a returned sync) when this was written
//!     24    n payload             (empty for a marker)
//!   24+n    p zero padding to the next multiple of 8 (not covered by the crc)
//! ```
//!
//! A slot whose 24 header bytes are all zero is *empty*: the end of the written part of
//! a segment. A real record never has an all-zero header (its kind byte is non-zero).
//!
//! Durable bytes are never rewritten: truncation appends a marker instead of zeroing,
//! so a crash during a truncation cannot leave a half-erased durable record behind.
//! Together with `durable_next` this lets recovery tell a torn tail from corruption: if
//! a damaged record at expected index `i` is followed by an intact record that says
//! `durable_next > i`, then `i` had been synced and its loss is corruption.

/// Bytes of the segment header.
pub const SEGMENT_HEADER_BYTES: usize = 64;
/// Bytes of a record header.
pub const RECORD_HEADER_BYTES: usize = 24;
/// Records start at multiples of this.
pub const RECORD_ALIGN_BYTES: usize = 8;
/// Segment magic.
pub const SEGMENT_MAGIC: [u8; 8] = *b"FLEETWAL";
/// Version of this layout.
pub const FORMAT_VERSION: u32 = 1;
/// Segment flag: the log restarts at this segment's first index.
pub const SEGMENT_FLAG_RESET: u32 = 1;
/// Largest payload the 24-bit length field can describe.
pub const RECORD_PAYLOAD_LIMIT_BYTES: u32 = (1 << 24) - 1;

/// What a record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A log entry at `index`.
    Data,
    /// Removes every live index >= `index`.
    Truncate,
}

impl RecordKind {
    fn to_byte(self) -> u8 {
        match self {
            RecordKind::Data => 1,
            RecordKind::Truncate => 2,
        }
    }
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(RecordKind::Data),
            2 => Some(RecordKind::Truncate),
            _ => None,
        }
    }
}

/// The decoded segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub seq: u64,
    pub first_index: u64,
    pub segment_size_bytes: u64,
    pub flags: u32,
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
    pub index: u64,
    pub durable_next: u64,
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
    b[24..32].copy_from_slice(&h.first_index.to_le_bytes());
    b[32..40].copy_from_slice(&h.segment_size_bytes.to_le_bytes());
    b[40..44].copy_from_slice(&h.flags.to_le_bytes());
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
    if u32_at(b, 8) != FORMAT_VERSION {
        return Err("unknown segment format version");
    }
    if u32_at(b, 12) != segment_header_crc(b) {
        return Err("segment header crc mismatch");
    }
    Ok(SegmentHeader {
        seq: u64_at(b, 16),
        first_index: u64_at(b, 24),
        segment_size_bytes: u64_at(b, 32),
        flags: u32_at(b, 40),
        prev_end_offset: u64_at(b, 44),
    })
}

/// Writes one record (header, payload and zero padding) into `dst`, which must be
/// exactly `record_stored_bytes(payload.len())` long. Returns the record's crc.
pub fn encode_record(dst: &mut [u8], kind: RecordKind, index: u64, durable_next: u64, payload: &[u8]) -> u32 {
    assert_eq!(dst.len(), record_stored_bytes(payload.len()), "record slot size");
    assert!(payload.len() <= RECORD_PAYLOAD_LIMIT_BYTES as usize, "payload length checked by the caller");
    let len_and_kind = payload.len() as u32 | (u32::from(kind.to_byte()) << 24);
    dst[4..8].copy_from_slice(&len_and_kind.to_le_bytes());
    dst[8..16].copy_from_slice(&index.to_le_bytes());
    dst[16..24].copy_from_slice(&durable_next.to_le_bytes());
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
    Slot::Record(RecordMeta { kind, index: u64_at(header, 8), durable_next: u64_at(header, 16), payload_len })
}

/// The payload of an intact record at `offset` (already validated by `decode_slot`).
pub fn payload_at(segment: &[u8], offset: usize, payload_len: u32) -> &[u8] {
    let start = offset + RECORD_HEADER_BYTES;
    &segment[start..start + payload_len as usize]
}

/// Cheap pre-check for the forward search of recovery: `(index, durable_next)` read
/// without validating anything.
pub fn peek_index_fields(segment: &[u8], offset: usize) -> Option<(u64, u64)> {
    let b = segment.get(offset.checked_add(8)?..offset.checked_add(24)?)?;
    Some((u64_at(b, 0), u64_at(b, 8)))
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
        encode_record(&mut slot, RecordKind::Data, 0, 0, b"");
        assert_ne!(
            slot[..RECORD_HEADER_BYTES],
            [0u8; RECORD_HEADER_BYTES],
            "an all-zero record header must be impossible"
        );
        assert!(matches!(decode_slot(&slot, 0, 1024), Slot::Record(m) if m.index == 0));
    }

    #[test]
    fn segment_header_round_trip_and_damage() {
        let h = SegmentHeader {
            seq: 3,
            first_index: 77,
            segment_size_bytes: 1 << 20,
            flags: SEGMENT_FLAG_RESET,
            prev_end_offset: 4096,
        };
        let mut b = encode_segment_header(h);
        assert_eq!(decode_segment_header(&b), Ok(h));
        b[20] ^= 1;
        assert_eq!(decode_segment_header(&b), Err("segment header crc mismatch"));
    }

    proptest! {
        #[test]
        fn record_round_trip(index: u64, durable_next: u64, payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut seg = vec![0u8; record_stored_bytes(payload.len()) + 16];
            let n = record_stored_bytes(payload.len());
            encode_record(&mut seg[..n], RecordKind::Data, index, durable_next, &payload);
            prop_assert_eq!(n % RECORD_ALIGN_BYTES, 0);
            match decode_slot(&seg, 0, 1024) {
                Slot::Record(m) => {
                    prop_assert_eq!(m, RecordMeta { kind: RecordKind::Data, index, durable_next, payload_len: payload.len() as u32 });
                    prop_assert_eq!(payload_at(&seg, 0, m.payload_len), &payload[..]);
                }
                other => prop_assert!(false, "decoded {:?}", other),
            }
        }

        #[test]
        fn any_single_bit_flip_is_detected(payload in proptest::collection::vec(any::<u8>(), 0..100), bit in 0usize..1000) {
            let n = record_stored_bytes(payload.len());
            let mut seg = vec![0u8; n];
            encode_record(&mut seg, RecordKind::Truncate, 5, 3, &payload);
            // Flip a bit among the crc-covered bytes (header + payload, not padding).
            let covered = RECORD_HEADER_BYTES + payload.len();
            let bit = bit % (covered * 8);
            seg[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(!matches!(decode_slot(&seg, 0, 1024), Slot::Record(_)));
        }
    }
}
