//! The WAL's limits and the relations between them, checked against the record format
//! (the defaults live in `crate::config`, with every other limit).
use super::format;

/// Limits of the write-ahead log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// Size of every segment file. Segments are preallocated to this size when
    /// created, so appends never extend a file (extending would make every
    /// fdatasync also commit metadata: ≈4 ms instead of ≈0.25 ms here).
    pub segment_size_bytes: u64,
    /// Largest payload of one record. A record never spans segments, so this must
    /// leave room for the segment and record headers.
    pub record_payload_max_bytes: u32,
    /// Most records accepted by one `append` call.
    pub append_batch_max: usize,
    /// Segments the log may hold before reclamation copies the live entries of the
    /// groups pinning the oldest one forward (checked at each roll). The log's disk use
    /// stays within about `segments_soft_max + 1` segments plus the live entries of the
    /// groups that pinned the oldest segment at the last roll (each group's live
    /// entries are bounded by its snapshot policy).
    pub segments_soft_max: usize,
    /// Every this many bytes made durable, every synced page of every segment is
    /// unmapped again, so that pages that reads faulted back in do not stay in RSS
    /// (`crate::files::PAGE_RELEASE_SWEEP_BYTES`; smaller in tests).
    pub page_release_sweep_bytes: usize,
}

impl WalConfig {
    /// Checks the relations between limits; `Wal::open` refuses a config that fails.
    pub fn validate(&self) -> Result<(), String> {
        let overhead = (format::SEGMENT_HEADER_BYTES + format::RECORD_HEADER_BYTES + format::RECORD_ALIGN_BYTES) as u64;
        if self.segment_size_bytes > u32::MAX as u64 {
            return Err("segment_size_bytes must fit in 32 bits (offsets are u32)".into());
        }
        if (self.record_payload_max_bytes as u64) + overhead > self.segment_size_bytes {
            return Err(format!(
                "record_payload_max_bytes ({}) + {overhead} bytes of headers must fit in segment_size_bytes ({})",
                self.record_payload_max_bytes, self.segment_size_bytes
            ));
        }
        if self.record_payload_max_bytes > format::RECORD_PAYLOAD_LIMIT_BYTES {
            return Err(format!(
                "record_payload_max_bytes must be at most {} (24-bit length field)",
                format::RECORD_PAYLOAD_LIMIT_BYTES
            ));
        }
        if self.segment_size_bytes % format::RECORD_ALIGN_BYTES as u64 != 0 {
            return Err("segment_size_bytes must be a multiple of 8".into());
        }
        if self.segments_soft_max < 2 {
            return Err("segments_soft_max must be at least 2".into());
        }
        if self.append_batch_max == 0 {
            return Err("append_batch_max must be at least 1".into());
        }
        Ok(())
    }
}
