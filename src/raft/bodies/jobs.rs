//! Work on a body store's files that blocks, so it runs on the executor's blocking
//! pool: starting the kernel's writeback of what was written, reading the newest bytes
//! into the page cache after a restart, and the syncs of a snapshot. `FileBodies`
//! prepares each job (duplicated descriptors and ranges) on the executor.
use std::fs::File;
use std::path::PathBuf;

use super::io;
use crate::store::BodiesError;

/// Starts the writeback of ranges of body segments (`FileBodies::writeback_due`).
pub struct WritebackJob {
    pub(super) ranges: Vec<(File, usize, u64, u64)>,
}

impl WritebackJob {
    /// `(segment, from, to)` of each range, offsets within the segment.
    pub fn ranges(&self) -> Vec<(usize, u64, u64)> {
        self.ranges.iter().map(|(_, n, from, to)| (*n, *from, *to)).collect()
    }

    /// Queues the ranges' dirty pages for writing (may block while the device's queue
    /// is full: run it on the blocking pool). Errors are ignored (see `writeback_due`).
    pub fn run(self) {
        for (file, _, from, to) in &self.ranges {
            let _ = crate::files::start_writeback(file, *from, *to);
        }
    }
}

/// Reads ranges of body segments into the page cache (`FileBodies::prewarm_job`).
pub struct PrewarmJob {
    /// `(file, from, to)`, newest first; within a range, from its end backwards.
    pub(super) ranges: Vec<(File, u64, u64)>,
}

impl PrewarmJob {
    /// Reads the ranges in 1 MiB preads at the idle I/O priority (so they wait for every
    /// other request of the machine's disk), newest bytes first; stops at the first
    /// error (only warmth is lost). Returns the bytes read.
    pub fn run(mut self) -> u64 {
        let mut read = 0;
        while let Some(n) = self.step(u64::MAX) {
            read += n;
        }
        read
    }

    /// Reads up to `max_bytes` more (at least one 1 MiB pread) and returns how many, or
    /// `None` once done or after an error. The executor's blocking pool is one thread:
    /// the caller runs one step per job there, so that a snapshot's syncs or a WAL spare
    /// never wait for a whole prewarm (1 GiB: seconds on a slow disk).
    pub fn step(&mut self, max_bytes: u64) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        const PREAD_BYTES: u64 = 1 << 20;
        let _idle = crate::files::IdleIoPriority::set();
        let mut buf = vec![0u8; PREAD_BYTES as usize];
        let mut read = 0;
        while read < max_bytes {
            let Some((file, from, to)) = self.ranges.first_mut() else {
                return (read > 0).then_some(read);
            };
            if *to <= *from {
                self.ranges.remove(0);
                continue;
            }
            let start = to.saturating_sub(PREAD_BYTES).max(*from);
            let n = (*to - start) as usize;
            if file.read_exact_at(&mut buf[..n], start).is_err() {
                self.ranges.clear();
                return (read > 0).then_some(read);
            }
            read += n as u64;
            *to = start;
        }
        Some(read)
    }
}

/// fdatasyncs of the dirty body segments and the directory (`FileBodies::sync_job`).
pub struct BodiesSyncJob {
    pub(super) files: Vec<(File, PathBuf)>,
    pub(super) dir: PathBuf,
}

impl BodiesSyncJob {
    /// Blocks for the syncs.
    pub fn run(self) -> Result<(), BodiesError> {
        for (file, path) in &self.files {
            file.sync_data().map_err(|e| io("fdatasync", path, e))?;
        }
        crate::files::sync_dir(&self.dir).map_err(|e| io("fsync", &self.dir, e))
    }
}
