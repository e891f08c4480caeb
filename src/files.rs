//! File-system helpers shared by the WAL (`crate::wal`) and the state machine's files
//! (`crate::raft`): preallocated files, durable replacement of a small file, directory
//! fsync, free space, and giving mapped pages back. Blocking calls, all of them: the
//! async callers run the slow ones on the blocking pool.
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::OnceLock;

/// Mapped pages are given back in steps of at least this much, behind the point up to
/// which they may be: one madvise per step costs nothing measurable, and the step is
/// what each file keeps mapped (and counted in RSS) at most.
pub const PAGE_RELEASE_STEP_BYTES: usize = 1 << 20;

/// Every this many bytes written, a file's mapping is released again from its start
/// (a sweep): reads fault old pages back in, and the sweep bounds what they keep mapped.
pub const PAGE_RELEASE_SWEEP_BYTES: usize = 64 << 20;

/// The size of a memory page (4096 on x86_64; 16 or 64 KiB on some arm64 kernels).
pub fn page_size_bytes() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
    })
}

/// Creates (or truncates) `path` with `size_bytes` of blocks reserved: not a sparse hole,
/// because a write into a hole on a full disk is a SIGBUS through a mapping, and
/// allocating at writeback makes every sync slower. On failure the file is removed.
pub fn create_preallocated(path: &Path, size_bytes: u64) -> io::Result<File> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
    let len = i64::try_from(size_bytes).map_err(|_| io::Error::other("file size does not fit in off_t"))?;
    // SAFETY: plain syscall on an fd we own.
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc != 0 {
        let _ = std::fs::remove_file(path);
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(file)
}

/// fsyncs directory `dir`, making the creation, removal or renaming of its entries
/// durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces a small file so that a crash leaves either the old or the new contents,
/// durably: write a temp file, fsync it, rename it over the target, fsync the
/// directory. Blocks for a write and two fsyncs.
pub fn replace_durably(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp_name = path.file_name().ok_or_else(|| io::Error::other("path has no file name"))?.to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")))
}

/// Bytes an unprivileged writer can still use on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `st` is writable for one statvfs,
    // which the call fills entirely when it returns 0.
    let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let st = unsafe { st.assume_init() };
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// A shared file mapping whose pages can be given back.
pub trait Mapping {
    /// # Safety
    /// No reference into `[offset, offset + len)` may be alive.
    unsafe fn dont_need(&self, offset: usize, len: usize) -> io::Result<()>;
}

impl Mapping for memmap2::Mmap {
    unsafe fn dont_need(&self, offset: usize, len: usize) -> io::Result<()> {
        // SAFETY: forwarded to the caller.
        unsafe { self.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) }
    }
}

impl Mapping for memmap2::MmapMut {
    unsafe fn dont_need(&self, offset: usize, len: usize) -> io::Result<()> {
        // SAFETY: forwarded to the caller.
        unsafe { self.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len) }
    }
}

/// Unmaps `[from, to)` of `map`, page-aligned inwards, from this process. The bytes stay
/// in the page cache and on disk (MADV_DONTNEED on a shared file mapping drops only our
/// page-table entries, dirty data included, which the page cache keeps); a later read
/// faults them back in. Keeps the RSS of long files bounded.
///
/// # Safety
/// No reference into the range may be alive (callers hold the map borrowed only while
/// they read).
pub unsafe fn release_pages(map: &impl Mapping, from: usize, to: usize) {
    let page = page_size_bytes();
    let start = from.div_ceil(page) * page;
    let end = to / page * page;
    if end > start {
        // SAFETY: forwarded to the caller. A failure only leaves the pages mapped.
        let _ = unsafe { map.dont_need(start, end - start) };
    }
}

/// Frees the disk blocks of `[from, to)` of `file`, page-aligned inwards (a hole: the
/// size stays, reads of the range return zeros). For bytes that will never be read again.
pub fn punch_hole(file: &File, from: u64, to: u64) -> io::Result<()> {
    let page = page_size_bytes() as u64;
    let start = from.div_ceil(page) * page;
    let end = to / page * page;
    if end <= start {
        return Ok(());
    }
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: fallocate(2) on an open descriptor; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, start as libc::off_t, (end - start) as libc::off_t) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Starts the kernel's writeback of `[from, to)` of `file` (sync_file_range with
/// `SYNC_FILE_RANGE_WRITE`): it queues the dirty pages for writing and returns without
/// waiting for them (it may wait for room in the device's queue). Not durability: no
/// metadata, no cache flush; a later fdatasync still decides that, and finds less to do.
pub fn start_writeback(file: &File, from: u64, to: u64) -> io::Result<()> {
    if to <= from {
        return Ok(());
    }
    // SAFETY: sync_file_range(2) on an open descriptor; no memory is passed.
    let rc = unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            from as libc::off64_t,
            (to - from) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The calling thread's I/O priority set to the idle class while this lives (then the
/// previous one again): the requests it submits are dispatched after everyone else's by
/// the I/O schedulers that honour classes (mq-deadline, bfq). For reads nothing waits
/// for (a prewarm), so that they never queue ahead of a WAL fdatasync or a client's
/// read. A failure leaves the priority as it was.
pub struct IdleIoPriority(Option<libc::c_int>);

const IOPRIO_WHO_PROCESS: libc::c_int = 1;
const IOPRIO_CLASS_IDLE: libc::c_int = 3;
const IOPRIO_CLASS_SHIFT: libc::c_int = 13;

impl IdleIoPriority {
    pub fn set() -> IdleIoPriority {
        // SAFETY: ioprio_get/ioprio_set of the calling thread (who = 0); no memory passed.
        unsafe {
            let before = libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, 0) as libc::c_int;
            if before < 0 {
                return IdleIoPriority(None);
            }
            let idle = IOPRIO_CLASS_IDLE << IOPRIO_CLASS_SHIFT;
            let set = libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, idle);
            IdleIoPriority((set == 0).then_some(before))
        }
    }
}

impl Drop for IdleIoPriority {
    fn drop(&mut self) {
        if let Some(before) = self.0 {
            // SAFETY: as in `set`.
            unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, 0, before) };
        }
    }
}

/// Whether every page of `mapped` (bytes of a file mapping) is in memory, so that
/// reading them does not wait for the disk (mincore). An error counts as resident: the
/// read then faults as it would have.
pub fn pages_resident(mapped: &[u8]) -> bool {
    if mapped.is_empty() {
        return true;
    }
    let page = page_size_bytes();
    let start = mapped.as_ptr() as usize / page * page;
    let end = (mapped.as_ptr() as usize + mapped.len()).div_ceil(page) * page;
    let pages = (end - start) / page;
    let mut one = 0u8;
    let mut many = Vec::new();
    let vec: &mut [u8] = if pages == 1 {
        std::slice::from_mut(&mut one)
    } else {
        many.resize(pages, 0u8);
        &mut many
    };
    // SAFETY: `[start, end)` are the pages of a live mapping (borrowed for the call);
    // mincore writes one byte per page of the range into `vec`, which has that many.
    let rc = unsafe { libc::mincore(start as *mut libc::c_void, end - start, vec.as_mut_ptr()) };
    rc != 0 || vec.iter().all(|b| b & 1 == 1)
}

/// Starts reading the pages of `mapped` (bytes of a file mapping) into the page cache
/// without waiting (madvise WILLNEED). A failure only leaves them to be faulted in.
pub fn will_need(mapped: &[u8]) {
    if mapped.is_empty() {
        return;
    }
    let page = page_size_bytes();
    let start = mapped.as_ptr() as usize / page * page;
    let end = (mapped.as_ptr() as usize + mapped.len()).div_ceil(page) * page;
    // SAFETY: the page-aligned range covers only pages of a live mapping (borrowed for
    // the call); WILLNEED changes no memory, it starts reads of the file.
    let _ = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_WILLNEED) };
}

/// `offset` rounded down to a page boundary.
pub fn page_floor(offset: usize) -> usize {
    offset / page_size_bytes() * page_size_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_replace_leaves_the_new_contents_and_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.json");
        replace_durably(&path, b"old").unwrap();
        replace_durably(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        assert!(!dir.path().join("f.json.tmp").exists());
    }

    #[test]
    fn preallocated_files_have_their_size_and_pages_align() {
        let dir = tempfile::tempdir().unwrap();
        let f = create_preallocated(&dir.path().join("seg"), 3 * 4096).unwrap();
        assert_eq!(f.metadata().unwrap().len(), 3 * 4096);
        assert!(page_size_bytes().is_power_of_two());
        assert_eq!(page_floor(page_size_bytes() + 1), page_size_bytes());
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }
}
