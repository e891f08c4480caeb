//! Moving groups' live entries into new logs: a format-1 log (one per shard) or a
//! format-2 log of another layout (a data dir started with a different number of
//! cores) is read, and each group's entries are appended to the log that now owns it,
//! at the same indexes. The data dir layer (`crate::datadir`) decides where things go
//! and makes the switch atomic; here are the reads and the copy.
use std::path::Path;

use memmap2::Mmap;

use super::error::{Result, WalError};
use super::format::GroupId;
use super::log::Wal;
use super::segment;
use super::v1;

/// The live entries of a format-1 log, read from its segment files (read-only: the
/// files are not repaired; a torn tail is simply not part of the result).
pub struct V1Log {
    maps: Vec<Mmap>,
    pub first_index: u64,
    live: Vec<(usize, u32)>,
}

impl V1Log {
    /// Reads the format-1 log in `dir`; an absent or empty directory is an empty log.
    pub fn read(dir: &Path, payload_max: u32) -> Result<V1Log> {
        let mut seqs = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(entries) => {
                for entry in entries {
                    let entry = entry.map_err(|e| WalError::io("list v1 wal dir", dir, e))?;
                    if let Some(seq) = segment::parse_file_name(&entry.file_name().to_string_lossy()) {
                        seqs.push(seq);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(WalError::io("list v1 wal dir", dir, e)),
        }
        seqs.sort_unstable();
        let mut maps = Vec::new();
        for seq in &seqs {
            let path = dir.join(segment::file_name(*seq));
            let file = std::fs::File::open(&path).map_err(|e| WalError::io("open v1 segment", &path, e))?;
            // SAFETY: read-only mapping of a file nothing else writes while we convert.
            let map = unsafe { Mmap::map(&file) }.map_err(|e| WalError::io("mmap v1 segment", &path, e))?;
            maps.push(map);
        }
        // As format 1's open did: a lone segment whose header was never written never
        // held a record.
        if maps.len() == 1 && maps[0].iter().take(v1::format::SEGMENT_HEADER_BYTES).all(|&b| b == 0) {
            maps.clear();
            seqs.clear();
        }
        if maps.is_empty() {
            return Ok(V1Log { maps, first_index: 0, live: Vec::new() });
        }
        let views: Vec<(u64, &[u8])> = seqs.iter().zip(&maps).map(|(s, m)| (*s, &m[..])).collect();
        let found = v1::recovery::scan(&views, payload_max).map_err(|d| WalError::Corruption {
            segment: dir.join(segment::file_name(seqs[d.segment])),
            offset: d.offset,
            detail: format!("format-1 log: {}", d.detail),
        })?;
        let live = found.live.iter().map(|l| (l.segment, l.offset)).collect();
        Ok(V1Log { first_index: found.first_index, live, maps })
    }

    /// The index after the last live entry.
    pub fn next_index(&self) -> u64 {
        self.first_index + self.live.len() as u64
    }

    /// The payload of the `k`-th live entry.
    fn payload(&self, k: usize) -> Result<&[u8]> {
        let (si, off) = self.live[k];
        match v1::format::decode_slot(&self.maps[si], off as usize, v1::format::RECORD_PAYLOAD_LIMIT_BYTES) {
            v1::format::Slot::Record(m) => Ok(v1::format::payload_at(&self.maps[si], off as usize, m.payload_len)),
            other => Err(WalError::Corruption {
                segment: Default::default(),
                offset: u64::from(off),
                detail: format!("format-1 entry {}: {other:?}", self.first_index + k as u64),
            }),
        }
    }

    /// Copies every live entry into group `g` of `dst` (which must not hold `g` yet).
    pub fn copy_into(&self, dst: &mut Wal, g: GroupId) -> Result<()> {
        start_group(dst, g, self.first_index)?;
        let batch = dst.config().append_batch_max;
        let mut k = 0;
        while k < self.live.len() {
            let end = (k + batch).min(self.live.len());
            let payloads = (k..end).map(|i| self.payload(i)).collect::<Result<Vec<_>>>()?;
            dst.append(g, &payloads)?;
            k = end;
        }
        debug_assert_eq!(dst.next_index(g), self.next_index());
        Ok(())
    }
}

/// Copies group `g`'s live entries from `src` into `dst` (which must not hold `g` yet).
pub fn copy_group(src: &Wal, dst: &mut Wal, g: GroupId) -> Result<()> {
    let (first, next) = (src.first_index(g), src.next_index(g));
    start_group(dst, g, first)?;
    let batch = dst.config().append_batch_max as u64;
    let mut i = first;
    while i < next {
        let end = (i + batch).min(next);
        let payloads = (i..end).map(|i| src.get(g, i)).collect::<Result<Vec<_>>>()?;
        dst.append(g, &payloads)?;
        i = end;
    }
    Ok(())
}

/// Makes group `g` of `dst` start at `first_index` (a reset marker).
fn start_group(dst: &mut Wal, g: GroupId, first_index: u64) -> Result<()> {
    assert_eq!(dst.next_index(g), 0, "group {g} is copied into a log that already holds it");
    dst.purge_before(g, first_index)?;
    Ok(())
}
