//! One segment file: a preallocated file, memory-mapped read-only, that records are
//! appended to.
//!
//! A segment knows nothing about log indexes beyond its header; `Wal` decides what goes
//! where. Reads (and recovery's scan) go through the mapping. Writes do not: records are
//! encoded into a buffer and written with one `pwrite` per `Wal` append call, which the
//! shared mapping sees at once (same page cache). Writing through a writable mapping
//! costs more than the syscall: every fdatasync has to write-protect the dirty pages
//! again (`folio_mkclean`, a TLB-shootdown IPI to the other cores running this
//! process) and the next append to the same page takes a write fault; measured with
//! `perf` under 50-connection load, that was ≈7 % of the machine's CPU.
//! Durability comes from `fdatasync` of the file.
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::{Result, WalError};
use super::format::{self, RecordHead, SegmentHeader};

/// Capacity a segment's buffer of encoded, not yet written records keeps between
/// appends; a larger burst (a snapshot-sized batch) frees its buffer afterwards. A
/// memory-reuse policy of this file, not a limit: no input is refused by it.
const PENDING_KEEP_BYTES: usize = 1 << 20;

/// File name of segment `seq`.
pub fn file_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

/// Parses a segment file name back into its sequence number.
pub fn parse_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A preallocated, zero-filled file waiting to become the next segment.
pub struct Spare {
    path: PathBuf,
    file: File,
    size_bytes: u64,
}

/// What it takes to make a spare; `Send`, so it can run on a blocking thread.
pub struct SpareRequest {
    pub path: PathBuf,
    pub size_bytes: u64,
}

impl SpareRequest {
    /// Creates the spare: a preallocated file (`crate::files::create_preallocated`), fsync'd. Blocks
    /// for a few milliseconds, which is why the async WAL runs it on the blocking pool
    /// ahead of time.
    pub fn create_blocking(self) -> Result<Spare> {
        let path = self.path;
        let file = crate::files::create_preallocated(&path, self.size_bytes)
            .map_err(|e| WalError::io("create preallocated spare segment", &path, e))?;
        file.sync_all().map_err(|e| WalError::io("fsync spare segment", &path, e))?;
        Ok(Spare { path, file, size_bytes: self.size_bytes })
    }
}

impl Spare {
    /// Deletes an unneeded spare.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub struct Segment {
    path: PathBuf,
    file: File,
    map: Mmap,
    /// From the file name; recovery checks it against the header.
    seq: u64,
    /// Where the next record goes. Everything from here to the end is zero, in the file
    /// and in `pending` beyond what it holds.
    write_offset: usize,
    /// Records encoded but not yet written to the file: they belong at
    /// `write_offset - pending.len()`. Empty whenever the `Wal` is between calls.
    pending: Vec<u8>,
    /// Written since the last sync was started.
    dirty: bool,
}

impl Segment {
    /// Turns a spare file (see [`SpareRequest`]) into segment `header.seq`: renames it
    /// into place, writes the header and maps it. The header, like
    /// the records, becomes durable with the next fdatasync of the file, and the new
    /// name with the next fsync of the directory; the caller marks the directory dirty
    /// so that the sync which makes records here durable makes the name durable too.
    pub fn activate(dir: &Path, spare: Spare, header: SegmentHeader) -> Result<Segment> {
        let path = dir.join(file_name(header.seq));
        let Spare { path: spare_path, file, size_bytes } = spare;
        if size_bytes != header.segment_size_bytes {
            let _ = std::fs::remove_file(&spare_path);
            return Err(WalError::Config(format!(
                "spare of {size_bytes} bytes for a {} byte segment",
                header.segment_size_bytes
            )));
        }
        std::fs::rename(&spare_path, &path).map_err(|e| WalError::io("rename segment", &path, e))?;
        file.write_all_at(&format::encode_segment_header(header), 0)
            .map_err(|e| WalError::io("write segment header", &path, e))?;
        // SAFETY: the file is ours, preallocated to its size, and no other process
        // writes it; we only write it with pwrite, which the mapping sees coherently.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| WalError::io("mmap segment", &path, e))?;
        let write_offset = format::SEGMENT_HEADER_BYTES;
        Ok(Segment { path, file, map, seq: header.seq, write_offset, pending: Vec::new(), dirty: true })
    }

    /// Maps an existing segment `seq` for recovery. The header is not checked here:
    /// recovery sees the bytes and decides (a zero header can be an unsynced roll).
    pub fn open(path: &Path, seq: u64) -> Result<Segment> {
        let file =
            OpenOptions::new().read(true).write(true).open(path).map_err(|e| WalError::io("open segment", path, e))?;
        let len = file.metadata().map_err(|e| WalError::io("stat segment", path, e))?.len();
        if len < format::SEGMENT_HEADER_BYTES as u64 || len > u32::MAX as u64 {
            return Err(WalError::Corruption {
                segment: path.to_owned(),
                offset: 0,
                detail: format!("segment file has impossible size {len}"),
            });
        }
        // SAFETY: as in `activate`; the file is not shared with other writers.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| WalError::io("mmap segment", path, e))?;
        let write_offset = format::SEGMENT_HEADER_BYTES;
        Ok(Segment { path: path.to_owned(), file, map, seq, write_offset, pending: Vec::new(), dirty: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// The file's bytes through the mapping (records still pending are not there yet).
    pub fn bytes(&self) -> &[u8] {
        debug_assert!(self.pending.is_empty(), "the Wal flushes before it reads");
        &self.map
    }
    pub fn write_offset(&self) -> usize {
        self.write_offset
    }
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether a record with `payload_len` bytes fits after the current end.
    pub fn fits(&self, payload_len: usize) -> bool {
        self.write_offset + format::record_stored_bytes(payload_len) <= self.map.len()
    }

    /// Encodes one record for the write offset into the pending buffer; returns its
    /// offset. It reaches the file (and the mapping) with the next `flush`.
    pub fn append(&mut self, head: RecordHead, payload: &[u8]) -> u32 {
        assert!(self.fits(payload.len()), "caller checks fits() and rolls first");
        let at = self.write_offset;
        let stored = format::record_stored_bytes(payload.len());
        let from = self.pending.len();
        self.pending.resize(from + stored, 0);
        format::encode_record(&mut self.pending[from..], head, payload);
        self.write_offset = at + stored;
        self.dirty = true;
        u32::try_from(at).expect("segment size is validated to fit in u32")
    }

    /// Writes the pending records to the file (one pwrite into the page cache; no sync).
    pub fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let at = (self.write_offset - self.pending.len()) as u64;
        let written = self.file.write_all_at(&self.pending, at);
        // Cleared even on failure: the `Wal` is poisoned then, and reads of the lost
        // records find what the file holds (a corruption error), not a stale buffer.
        self.pending.clear();
        written.map_err(|e| WalError::io("write segment", &self.path, e))?;
        // A burst (a snapshot-sized batch) must not keep its buffer for good.
        if self.pending.capacity() > PENDING_KEEP_BYTES {
            self.pending = Vec::new();
        }
        Ok(())
    }

    /// Sets the write offset found by recovery, after zeroing whatever lies between it
    /// and the last non-zero byte (garbage of a torn tail must not survive to confuse
    /// a later recovery). Returns whether anything was zeroed.
    pub fn reset_tail(&mut self, write_offset: usize) -> Result<bool> {
        debug_assert!(self.pending.is_empty());
        let tail = &self.map[write_offset..];
        let Some(last_nonzero) = tail.iter().rposition(|&b| b != 0) else {
            self.write_offset = write_offset;
            return Ok(false);
        };
        // In bounded chunks: garbage can reach the end of a 64 MiB segment.
        let zeros = vec![0u8; (last_nonzero + 1).min(1 << 20)];
        let end = write_offset + last_nonzero + 1;
        let mut at = write_offset;
        while at < end {
            let n = (end - at).min(zeros.len());
            self.file
                .write_all_at(&zeros[..n], at as u64)
                .map_err(|e| WalError::io("zero torn tail", &self.path, e))?;
            at += n;
        }
        self.write_offset = write_offset;
        self.dirty = true;
        Ok(true)
    }

    /// Unmaps `[from, to)` (page-aligned inwards) from this process
    /// (`crate::files::release_pages`). Keeps the RSS of a long log bounded: written and
    /// synced pages would otherwise stay mapped forever, and recovery's scan touches
    /// every page of every segment. Only for synced ranges.
    pub fn release_pages(&self, from: usize, to: usize) {
        // SAFETY: no reference into the range outlives this call (reads borrow the map
        // immutably, and we hold &self only for the call).
        unsafe { crate::files::release_pages(&self.map, from, to) }
    }

    /// Clears the dirty flag; called when a sync covering this segment starts.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::replace(&mut self.dirty, false)
    }

    /// Blocking fdatasync of this segment.
    pub fn sync_data(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| WalError::io("fdatasync segment", &self.path, e))
    }
}
