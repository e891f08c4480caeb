//! A body store leaving or arriving as a snapshot's data: `BodiesSource` (the bytes
//! to send, read with pread; pinned against the release of dead records while it is
//! read) and `BodiesReceiver` (the bytes received, written into a staging directory).
use std::fs::File;
use std::path::{Path, PathBuf};

use super::{file_name, io};
use crate::store::{BodiesError, BodyRef};

/// The body bytes of a snapshot.
#[derive(Debug, Clone)]
pub enum BodiesSource {
    /// Received from elsewhere.
    Bytes(Vec<u8>),
    /// `[0, len)` of a body store on this machine. `pin`: while it lives, the store
    /// frees none of the bytes an older snapshot names (a snapshot being sent).
    Files { dir: PathBuf, segment_size_bytes: u64, len: u64, pin: Option<ReadPin> },
}

/// Counts the snapshots being read from a body store (`BodiesSource::Files`): the state
/// machine releases the space of dead checkpoint records only when none is.
#[derive(Debug, Default)]
pub struct ReadPin(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl ReadPin {
    /// A pin counted by `readers`.
    pub fn new(readers: &ReadPins) -> ReadPin {
        readers.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        ReadPin(readers.0.clone())
    }
}

impl Clone for ReadPin {
    fn clone(&self) -> Self {
        self.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        ReadPin(self.0.clone())
    }
}

impl Drop for ReadPin {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The pins handed out by one state machine.
#[derive(Debug, Default, Clone)]
pub struct ReadPins(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl ReadPins {
    pub fn any(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire) > 0
    }
}

impl BodiesSource {
    pub fn len(&self) -> u64 {
        match self {
            BodiesSource::Bytes(b) => b.len() as u64,
            BodiesSource::Files { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The segment size the offsets in `[0, len)` were laid out with (0: unknown).
    pub fn segment_size_bytes(&self) -> u64 {
        match self {
            BodiesSource::Bytes(_) => 0,
            BodiesSource::Files { segment_size_bytes, .. } => *segment_size_bytes,
        }
    }

    /// Reads `buf.len()` bytes at logical offset `at` (may span segments).
    pub fn read_at(&self, at: u64, buf: &mut [u8]) -> Result<(), BodiesError> {
        use std::os::unix::fs::FileExt;
        let (dir, size, len) = match self {
            BodiesSource::Bytes(b) => {
                let src = b
                    .get(at as usize..at as usize + buf.len())
                    .ok_or_else(|| BodiesError("read past the end".into()))?;
                buf.copy_from_slice(src);
                return Ok(());
            }
            BodiesSource::Files { dir, segment_size_bytes, len, .. } => (dir, *segment_size_bytes, *len),
        };
        if at + buf.len() as u64 > len {
            return Err(BodiesError(format!("read of {} bytes at {at} is past the end {len}", buf.len())));
        }
        let mut done = 0usize;
        while done < buf.len() {
            let pos = at + done as u64;
            let (n, off) = ((pos / size) as usize, pos % size);
            let take = ((size - off) as usize).min(buf.len() - done);
            let path = dir.join(file_name(n));
            let f = File::open(&path).map_err(|e| io("open", &path, e))?;
            f.read_exact_at(&mut buf[done..done + take], off).map_err(|e| io("read", &path, e))?;
            done += take;
        }
        Ok(())
    }

    /// The bytes of each of `refs`, read with pread (one open per segment, not per read).
    pub fn read_many(&self, refs: &[BodyRef]) -> Result<Vec<Vec<u8>>, BodiesError> {
        use std::os::unix::fs::FileExt;
        let (dir, size, len) = match self {
            BodiesSource::Bytes(_) => {
                return refs
                    .iter()
                    .map(|r| {
                        let mut b = vec![0u8; r.len as usize];
                        self.read_at(r.offset, &mut b).map(|()| b)
                    })
                    .collect();
            }
            BodiesSource::Files { dir, segment_size_bytes, len, .. } => (dir, *segment_size_bytes, *len),
        };
        let mut open: Option<(u64, File)> = None;
        let mut out = Vec::with_capacity(refs.len());
        for r in refs {
            let (n, off) = (r.offset / size, r.offset % size);
            // A body never spans two segments.
            if r.offset + u64::from(r.len) > len || off + u64::from(r.len) > size {
                return Err(BodiesError::missing(*r));
            }
            if open.as_ref().is_none_or(|(at, _)| *at != n) {
                let path = dir.join(file_name(n as usize));
                open = Some((n, File::open(&path).map_err(|e| io("open", &path, e))?));
            }
            let (_, f) = open.as_ref().expect("opened above");
            let mut b = vec![0u8; r.len as usize];
            f.read_exact_at(&mut b, off).map_err(|e| io("read", &dir.join(file_name(n as usize)), e))?;
            out.push(b);
        }
        Ok(out)
    }

    /// The bytes, read with pread (not through a mapping, so that reading a snapshot
    /// does not map the whole history into this process).
    pub fn read(&self) -> Result<Vec<u8>, BodiesError> {
        use std::os::unix::fs::FileExt;
        let (dir, size, len) = match self {
            BodiesSource::Bytes(b) => return Ok(b.clone()),
            BodiesSource::Files { dir, segment_size_bytes, len, .. } => (dir, *segment_size_bytes, *len),
        };
        let mut out = vec![0u8; len as usize];
        for (n, chunk) in out.chunks_mut(size as usize).enumerate() {
            let path = dir.join(file_name(n));
            let f = File::open(&path).map_err(|e| io("open", &path, e))?;
            f.read_exact_at(chunk, 0).map_err(|e| io("read", &path, e))?;
        }
        Ok(out)
    }
}

/// The runs of whole pages of zeros in `bytes` (written at file offset `at`), as file
/// ranges, leaving out the last whole page of `bytes`: the page that holds the write
/// point is never a hole (a write into a hole through the mapping on a full disk would
/// be a SIGBUS). A hole reads as zeros, so punching them changes no byte.
fn zero_pages(bytes: &[u8], at: u64) -> Vec<(u64, u64)> {
    let page = crate::files::page_size_bytes() as u64;
    let end = at + bytes.len() as u64;
    let (first, last) = (at.div_ceil(page) * page, (end / page * page).saturating_sub(page));
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut p = first;
    while p + page <= last {
        let i = (p - at) as usize;
        if bytes[i..i + page as usize].iter().all(|&b| b == 0) {
            match runs.last_mut() {
                Some(run) if run.1 == p => run.1 = p + page,
                _ => runs.push((p, p + page)),
            }
        }
        p += page;
    }
    runs
}

/// Writes the body bytes of a snapshot as they arrive from the network into segment
/// files of a staging directory (memory stays at one chunk), for `install_into`.
pub struct BodiesReceiver {
    dir: PathBuf,
    segment_size_bytes: u64,
    len: u64,
    current: Option<File>,
}

impl BodiesReceiver {
    /// Starts an empty staging directory `dir` (anything left in it is removed).
    pub fn create(dir: &Path, segment_size_bytes: u64) -> Result<BodiesReceiver, BodiesError> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| io("remove", dir, e))?;
        }
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        Ok(BodiesReceiver { dir: dir.to_owned(), segment_size_bytes, len: 0, current: None })
    }

    /// Appends the next bytes.
    pub fn write(&mut self, mut bytes: &[u8]) -> Result<(), BodiesError> {
        use std::os::unix::fs::FileExt;
        while !bytes.is_empty() {
            let (n, off) = ((self.len / self.segment_size_bytes) as usize, self.len % self.segment_size_bytes);
            if off == 0 || self.current.is_none() {
                if let Some(f) = self.current.take() {
                    f.sync_data().map_err(|e| io("fdatasync", &self.dir, e))?;
                }
                let path = self.dir.join(file_name(n));
                let file = crate::files::create_preallocated(&path, self.segment_size_bytes)
                    .map_err(|e| io("create preallocated", &path, e))?;
                self.current = Some(file);
            }
            let take = ((self.segment_size_bytes - off) as usize).min(bytes.len());
            let f = self.current.as_ref().expect("opened above");
            let path = self.dir.join(file_name(n));
            f.write_all_at(&bytes[..take], off).map_err(|e| io("write", &path, e))?;
            // Ranges the sender freed (dead checkpoint records) arrive as zeros: they
            // take no space here either.
            for (from, to) in zero_pages(&bytes[..take], off) {
                crate::files::punch_hole(f, from, to).map_err(|e| io("punch a hole in", &path, e))?;
            }
            self.len += take as u64;
            bytes = &bytes[take..];
        }
        Ok(())
    }

    /// Syncs what was received and describes it.
    pub fn finish(mut self) -> Result<BodiesSource, BodiesError> {
        if let Some(f) = self.current.take() {
            f.sync_data().map_err(|e| io("fdatasync", &self.dir, e))?;
        }
        crate::files::sync_dir(&self.dir).map_err(|e| io("fsync", &self.dir, e))?;
        Ok(BodiesSource::Files { dir: self.dir, segment_size_bytes: self.segment_size_bytes, len: self.len, pin: None })
    }
}
