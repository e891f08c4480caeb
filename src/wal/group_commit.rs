//! `GroupCommitWal`: the WAL as a glommio executor uses it (one per core, shared by
//! the core's Raft groups).
//!
//! Appends are written into the page cache at once (one pwrite per call); durability
//! comes from one background *flusher* task per WAL that syncs in a loop: it takes
//! everything appended so far (by every group), issues one fdatasync per dirty segment
//! through io_uring, and then publishes the new durable position. Appends that arrive
//! while a sync is in flight are covered by the next one (group commit). A caller
//! learns that its record is durable only from a published position, which is set
//! after the covering sync returned. After a sync, segments that no group needs any
//! more are deleted on the blocking pool.
//!
//! Which sync primitive: measured with `tools/sync_probe.rs` on this machine (2 cores,
//! ext4 on virtio, 4 KiB written then synced, 2000 syncs per primitive, two rounds):
//!
//! ```text
//! primitive                          p50 µs      p99 µs
//! msync (flush_range) of the range   229, 238    335, 417
//! fdatasync(2) on the executor       211, 261    310, 484
//! fdatasync via io_uring (glommio)   259, 259    378, 654
//! fdatasync on the blocking pool     299, 274    478, 590
//! ```
//!
//! msync and fdatasync are the same kernel path here (both end in a ranged
//! `vfs_fsync_range`) and within noise of each other, so the WAL syncs with fdatasync:
//! it needs no range bookkeeping and can go through io_uring. We keep the io_uring form:
//! it costs ≈0–50 µs at p50 over the fastest blocking call (io_uring runs fsync on an
//! io-wq worker), but the executor stays free during the sync to parse requests and
//! append the next batch, which is what makes group commit pay, and other shards on
//! the same core are not stalled. Each segment gets one io_uring handle, kept until the
//! segment is purged (a dup + async close per sync cost another ring round trip:
//! 1-appender append+sync p50 went from 204 µs to 142 µs without it).
//!
//! The executor never blocks on a sync. Segment files are created ahead of need on the
//! blocking pool (`prepare_spare_if_wanted`), and the directory fsync after a roll runs
//! there too. What still runs on the executor: the pwrite of each append (a copy into
//! the page cache: p99 7–20 µs per 200 B record in bench/results/wal.md), and purge's
//! unlinks and the blocking sync before them (rare: after snapshots).
use std::cell::{Cell, RefCell};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::{Rc, Weak};
use std::time::Instant;

use glommio::io::BufferedFile;
use hdrhistogram::Histogram;
use tokio::sync::Notify;

use super::error::{Result, WalError};
use super::format::GroupId;
use super::log::{Position, SyncJob, Wal, delete_segments};

/// What the flusher publishes after every sync: everything written before this
/// position is durable.
type Durability = Position;

/// What a waiter waits for: everything written before this position is durable.
#[derive(Debug, Clone, Copy)]
struct Until(Position);

impl Until {
    fn met(self, d: Durability) -> bool {
        d >= self.0
    }
}

/// One waiting caller. A plain single-threaded queue of these replaced a
/// `tokio::sync::watch`: with 64 closed-loop appenders, re-subscribing and the
/// notify lock cost a measurable part of each group-commit cycle.
struct Waiter {
    until: Until,
    done: Cell<bool>,
    waker: RefCell<Option<std::task::Waker>>,
}

/// Sync statistics since the WAL was opened: the benchmark reads them, and the serving
/// layer copies them into the node's latency histograms (`wal.sync`,
/// `wal.sync_batch_records`) when metrics are collected.
pub struct SyncStats {
    /// Duration of each sync (all its fdatasyncs), µs.
    pub sync_latency_us: Histogram<u64>,
    /// Records made durable by each sync.
    pub sync_batch_records: Histogram<u64>,
    /// Syncs started and completed (successfully) so far.
    pub syncs_started_total: u64,
    pub syncs_completed_total: u64,
    /// Segments deleted by reclamation.
    pub segments_reclaimed_total: u64,
}

struct Inner {
    wal: RefCell<Wal>,
    /// io_uring handles of segments, opened once per segment (a dup and an async close
    /// per sync cost a ring round trip each).
    uring_files: RefCell<Vec<(u64, Rc<BufferedFile>)>>,
    /// A spare segment is being created on the blocking pool.
    spare_in_flight: Cell<bool>,
    /// Reclaimed segments are being deleted on the blocking pool.
    reclaim_in_flight: Cell<bool>,
    published: Cell<Durability>,
    failed: RefCell<Option<String>>,
    waiters: RefCell<Vec<Rc<Waiter>>>,
    wake: Rc<Notify>,
    stats: RefCell<SyncStats>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets the flusher see that the WAL is gone and exit.
        self.wake.notify_one();
    }
}

/// A WAL owned by one executor, with group commit. Cheap to clone (`Rc`); `!Send`.
#[derive(Clone)]
pub struct GroupCommitWal {
    inner: Rc<Inner>,
}

impl GroupCommitWal {
    /// Wraps an opened WAL and spawns its flusher on the current glommio executor.
    pub fn new(wal: Wal) -> GroupCommitWal {
        let published = Cell::new(wal.durable_position());
        let failed = RefCell::new(wal.poisoned().map(str::to_owned));
        let stats = SyncStats {
            sync_latency_us: Histogram::new(3).expect("3 significant figures is valid"),
            sync_batch_records: Histogram::new(3).expect("3 significant figures is valid"),
            syncs_started_total: 0,
            syncs_completed_total: 0,
            segments_reclaimed_total: 0,
        };
        let wake = Rc::new(Notify::new());
        let inner = Rc::new(Inner {
            wal: RefCell::new(wal),
            uring_files: RefCell::new(Vec::new()),
            spare_in_flight: Cell::new(false),
            reclaim_in_flight: Cell::new(false),
            published,
            failed,
            waiters: RefCell::new(Vec::new()),
            wake: wake.clone(),
            stats: RefCell::new(stats),
        });
        glommio::spawn_local(flusher(Rc::downgrade(&inner), wake)).detach();
        GroupCommitWal { inner }
    }

    /// Runs `f` with the WAL borrowed, for reads and the non-append operations. Must
    /// not be held across an await (it is a `RefCell` borrow). If `f` moved the
    /// durable point (a purge past the end does), waiters are told.
    pub fn with<R>(&self, f: impl FnOnce(&mut Wal) -> R) -> R {
        let mut wal = self.inner.wal.borrow_mut();
        let out = f(&mut wal);
        let durable = wal.durable_position();
        drop(wal);
        if self.inner.published.get() < durable {
            publish(&self.inner, durable);
        }
        out
    }

    /// Appends records to group `g` (not yet durable) and wakes the flusher.
    pub fn append<P: AsRef<[u8]>>(&self, g: GroupId, payloads: &[P]) -> Result<std::ops::Range<u64>> {
        let range = self.inner.wal.borrow_mut().append(g, payloads)?;
        self.inner.wake.notify_one();
        self.prepare_spare_if_wanted();
        Ok(range)
    }

    /// Creates the next segment file on the blocking pool before the tail fills, so
    /// that a roll is a rename and a header write instead of a fallocate and fsyncs on
    /// the executor (measured: ≈25 ms stalls per roll without this).
    fn prepare_spare_if_wanted(&self) {
        if self.inner.spare_in_flight.get() || !self.inner.wal.borrow().wants_spare() {
            return;
        }
        self.inner.spare_in_flight.set(true);
        let request = self.inner.wal.borrow_mut().spare_request();
        let weak = Rc::downgrade(&self.inner);
        glommio::spawn_local(async move {
            let created = glommio::executor().spawn_blocking(move || request.create_blocking()).await;
            let Some(inner) = weak.upgrade() else {
                if let Ok(spare) = created {
                    spare.discard();
                }
                return;
            };
            inner.spare_in_flight.set(false);
            // On error the roll creates its segment itself and reports the error there.
            if let Ok(spare) = created {
                inner.wal.borrow_mut().install_spare(spare);
            }
        })
        .detach();
    }

    /// Appends records to group `g` and returns once a sync covering them has returned.
    pub async fn append_durable<P: AsRef<[u8]>>(&self, g: GroupId, payloads: &[P]) -> Result<std::ops::Range<u64>> {
        let range = self.append(g, payloads)?;
        self.sync().await?;
        Ok(range)
    }

    /// Truncates group `g` after `last_kept` (see `Wal::truncate_after`) and waits until
    /// the truncation is durable.
    pub async fn truncate_after(&self, g: GroupId, last_kept: u64) -> Result<()> {
        self.inner.wal.borrow_mut().truncate_after(g, last_kept)?;
        self.sync().await
    }

    /// Waits until everything written so far (records and truncation markers) is
    /// durable. Later writes do not delay it.
    pub async fn sync(&self) -> Result<()> {
        let end = self.inner.wal.borrow().end_position();
        self.wait_durable_position(end).await
    }

    /// Waits until everything written before `end` (a `Wal::end_position`) is durable.
    pub async fn wait_durable_position(&self, end: Position) -> Result<()> {
        self.inner.wake.notify_one();
        self.wait_until(Until(end)).await
    }

    async fn wait_until(&self, until: Until) -> Result<()> {
        let failed = || self.inner.failed.borrow().clone().map(WalError::Poisoned);
        if let Some(e) = failed() {
            return Err(e);
        }
        if until.met(self.inner.published.get()) {
            return Ok(());
        }
        let waiter = Rc::new(Waiter { until, done: Cell::new(false), waker: RefCell::new(None) });
        self.inner.waiters.borrow_mut().push(waiter.clone());
        std::future::poll_fn(|cx| {
            if waiter.done.get() {
                std::task::Poll::Ready(())
            } else {
                *waiter.waker.borrow_mut() = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        })
        .await;
        match failed() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Wakes the flusher: after a purge, so that segments no group needs any more are
    /// deleted even if nothing is appended.
    pub fn nudge(&self) {
        self.inner.wake.notify_one();
    }

    /// Position before which everything is durable.
    pub fn durable_position(&self) -> Position {
        self.inner.published.get()
    }

    /// Whether the log refuses writes after a failed sync (it must be reopened).
    pub fn poisoned(&self) -> bool {
        self.inner.failed.borrow().is_some()
    }

    /// Runs `f` on the sync statistics.
    pub fn with_stats<R>(&self, f: impl FnOnce(&mut SyncStats) -> R) -> R {
        f(&mut self.inner.stats.borrow_mut())
    }
}

/// The background task: one sync at a time, each covering everything appended before
/// it started.
async fn flusher(inner: Weak<Inner>, wake: Rc<Notify>) {
    let mut synced_records = match inner.upgrade() {
        Some(inner) => inner.wal.borrow().records_written(),
        None => return,
    };
    let synced_records = &mut synced_records;
    loop {
        let job = {
            let Some(inner) = inner.upgrade() else { return };
            let started = inner.wal.borrow_mut().begin_sync();
            match started {
                Ok(Some(job)) => {
                    inner.stats.borrow_mut().syncs_started_total += 1;
                    job
                }
                Ok(None) => {
                    // Nothing to sync: a purge may still have freed segments.
                    reclaim(&inner);
                    drop(inner);
                    wake.notified().await;
                    continue;
                }
                Err(e) => {
                    publish_failure(&inner, &e);
                    return;
                }
            }
        };
        let started_at = Instant::now();
        let (files, dir) = {
            let Some(inner) = inner.upgrade() else { return };
            let dir = job.dir.then(|| inner.wal.borrow().dir().to_owned());
            (uring_files_for(&inner, &job), dir)
        };
        let outcome = match files {
            Ok(files) => sync_through_uring(&files, dir).await,
            Err(e) => Err(e),
        };
        let Some(inner) = inner.upgrade() else { return };
        let records = job.records_written.saturating_sub(*synced_records);
        *synced_records = job.records_written;
        let done = inner.wal.borrow_mut().complete_sync(job, outcome);
        if let Err(e) = done {
            publish_failure(&inner, &e);
            return;
        }
        let durable = inner.wal.borrow().durable_position();
        {
            let mut stats = inner.stats.borrow_mut();
            let _ = stats.sync_latency_us.record(started_at.elapsed().as_micros() as u64);
            let _ = stats.sync_batch_records.record(records);
            stats.syncs_completed_total += 1;
        }
        publish(&inner, durable);
        reclaim(&inner);
    }
}

/// Deletes the segments that no group needs any more, on the blocking pool (unlinks of
/// preallocated files and a directory fsync take milliseconds). One batch at a time.
fn reclaim(inner: &Rc<Inner>) {
    if inner.reclaim_in_flight.get() {
        return;
    }
    let gone = inner.wal.borrow_mut().take_reclaimable();
    if gone.is_empty() {
        return;
    }
    inner.reclaim_in_flight.set(true);
    let front = inner.wal.borrow().front_seq();
    inner.uring_files.borrow_mut().retain(|(seq, _)| *seq >= front);
    let dir = inner.wal.borrow().dir().to_owned();
    let weak = Rc::downgrade(inner);
    glommio::spawn_local(async move {
        let n = gone.len() as u64;
        let deleted = glommio::executor().spawn_blocking(move || delete_segments(&dir, &gone)).await;
        let Some(inner) = weak.upgrade() else { return };
        inner.reclaim_in_flight.set(false);
        match deleted {
            Ok(()) => inner.stats.borrow_mut().segments_reclaimed_total += n,
            // The files stay behind; recovery replays them harmlessly. Not a reason to
            // stop every group on the core, but worth a line in the log.
            Err(e) => eprintln!("fleetlm: wal reclamation: {e}"),
        }
    })
    .detach();
}

/// Records the new durable point and wakes every waiter it satisfies.
fn publish(inner: &Inner, d: Durability) {
    inner.published.set(d);
    inner.waiters.borrow_mut().retain(|w| {
        if w.until.met(d) {
            w.done.set(true);
            if let Some(waker) = w.waker.borrow_mut().take() {
                waker.wake();
            }
            false
        } else {
            true
        }
    });
}

/// Records the failure and wakes every waiter (they return the error).
fn publish_failure(inner: &Inner, e: &WalError) {
    *inner.failed.borrow_mut() = Some(e.to_string());
    for w in inner.waiters.borrow_mut().drain(..) {
        w.done.set(true);
        if let Some(waker) = w.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

/// The io_uring handles for the job's segments, from the cache or newly opened; drops
/// handles of purged segments.
fn uring_files_for(inner: &Inner, job: &SyncJob) -> Result<Vec<Rc<BufferedFile>>> {
    let wal = inner.wal.borrow();
    let mut cache = inner.uring_files.borrow_mut();
    let front = wal.front_seq();
    cache.retain(|(seq, _)| *seq >= front);
    let mut out = Vec::with_capacity(job.segments.len());
    for &seq in &job.segments {
        if let Some((_, f)) = cache.iter().find(|(s, _)| *s == seq) {
            out.push(f.clone());
        } else if let Some(file) = wal.dup_segment_file(seq)? {
            // SAFETY: the fd is a dup we own; BufferedFile takes ownership and closes it.
            let f = Rc::new(unsafe { BufferedFile::from_raw_fd(file.into_raw_fd()) });
            cache.push((seq, f.clone()));
            out.push(f);
        }
    }
    Ok(out)
}

/// fdatasync of every file of the job through io_uring (the executor keeps running),
/// then the directory if a segment was renamed in.
async fn sync_through_uring(files: &[Rc<BufferedFile>], dir: Option<std::path::PathBuf>) -> Result<()> {
    for f in files {
        f.fdatasync().await.map_err(|e| {
            WalError::io("fdatasync segment", f.path().map(|p| p.to_path_buf()).unwrap_or_default(), e.into())
        })?;
    }
    // Once per segment roll. glommio's file API has no plain fsync, so it goes to the
    // blocking pool.
    if let Some(dir) = dir {
        let synced = glommio::executor()
            .spawn_blocking({
                let dir = dir.clone();
                move || crate::files::sync_dir(&dir)
            })
            .await;
        synced.map_err(|e| WalError::io("fsync wal dir", dir, e))?;
    }
    Ok(())
}
