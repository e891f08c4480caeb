//! One segment file: a preallocated, memory-mapped region that records are copied into.
//!
//! A segment knows nothing about log indexes beyond its header; `Wal` decides what goes
//! where. Writes go through the mapping (a memcpy, no syscall); durability comes from
//! `fdatasync` of the file, which on Linux writes back the mapping's dirty pages too.
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use super::error::{Result, WalError};
use super::format::{self, RecordKind, SegmentHeader};

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

pub struct Segment {
    path: PathBuf,
    file: File,
    map: MmapMut,
    header: SegmentHeader,
    /// Where the next record goes. Everything from here to the end is zero.
    write_offset: usize,
    /// Written since the last sync was started.
    dirty: bool,
}

impl Segment {
    /// Creates segment `seq` in `dir`: writes a `.tmp` file, reserves its blocks,
    /// writes the header, fsyncs it, and renames it into place. The caller fsyncs the
    /// directory before relying on the new name.
    pub fn create(dir: &Path, header: SegmentHeader) -> Result<Segment> {
        let path = dir.join(file_name(header.seq));
        let tmp = dir.join(format!("{}.tmp", file_name(header.seq)));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| WalError::io("create segment", &tmp, e))?;
        // Real blocks, not a sparse hole: a write into a hole on a full disk would be a
        // SIGBUS through the mapping, and allocating at writeback makes syncs slower.
        let len = i64::try_from(header.segment_size_bytes).map_err(|_| WalError::Config("segment size".into()))?;
        // SAFETY: plain syscall on an fd we own.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
        if rc != 0 {
            return Err(WalError::io("fallocate segment", &tmp, std::io::Error::from_raw_os_error(rc)));
        }
        // SAFETY: the file is ours, sized above, and no other process maps it.
        let mut map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| WalError::io("mmap segment", &tmp, e))?;
        map[..format::SEGMENT_HEADER_BYTES].copy_from_slice(&format::encode_segment_header(header));
        file.sync_all().map_err(|e| WalError::io("fsync new segment", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| WalError::io("rename segment", &path, e))?;
        Ok(Segment { path, file, map, header, write_offset: format::SEGMENT_HEADER_BYTES, dirty: false })
    }

    /// Maps an existing segment for recovery. The header is validated by recovery,
    /// which sees the bytes; `write_offset` is set by `set_write_offset` afterwards.
    pub fn open(path: &Path) -> Result<Segment> {
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
        // SAFETY: as in `create`; the file is not shared with other writers.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(|e| WalError::io("mmap segment", path, e))?;
        let header = format::decode_segment_header(&map).map_err(|detail| WalError::Corruption {
            segment: path.to_owned(),
            offset: 0,
            detail: detail.into(),
        })?;
        Ok(Segment {
            path: path.to_owned(),
            file,
            map,
            header,
            write_offset: format::SEGMENT_HEADER_BYTES,
            dirty: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn header(&self) -> SegmentHeader {
        self.header
    }
    pub fn seq(&self) -> u64 {
        self.header.seq
    }
    pub fn bytes(&self) -> &[u8] {
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

    /// Copies one record into the mapping at the write offset; returns its offset.
    pub fn append(&mut self, kind: RecordKind, index: u64, durable_next: u64, payload: &[u8]) -> u32 {
        assert!(self.fits(payload.len()), "caller checks fits() and rolls first");
        let at = self.write_offset;
        let end = at + format::record_stored_bytes(payload.len());
        format::encode_record(&mut self.map[at..end], kind, index, durable_next, payload);
        self.write_offset = end;
        self.dirty = true;
        u32::try_from(at).expect("segment size is validated to fit in u32")
    }

    /// Sets the write offset found by recovery, after zeroing whatever lies between it
    /// and the last non-zero byte (garbage of a torn tail must not survive to confuse
    /// a later recovery). Returns whether anything was zeroed.
    pub fn reset_tail(&mut self, write_offset: usize) -> bool {
        let tail = &self.map[write_offset..];
        let Some(last_nonzero) = tail.iter().rposition(|&b| b != 0) else {
            self.write_offset = write_offset;
            return false;
        };
        self.map[write_offset..=write_offset + last_nonzero].fill(0);
        self.write_offset = write_offset;
        self.dirty = true;
        true
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
