//! `WalLogStore`: openraft's log storage on the WAL: one per shard, a view of its group
//! in the core's shared log.
//!
//! - Raft log index = the group's WAL index; entries are postcard-encoded WAL records (commands carry
//!   client JSON as text, `crate::store::json_text`, so a compact non-self-describing
//!   codec round-trips them; it costs a fraction of JSON's CPU per append and per read
//!   for replication).
//! - `append` copies entries into the WAL and returns at once; the openraft callback
//!   fires when the group-commit sync covering them has returned (so concurrent
//!   appends of every shard on the core share one fdatasync).
//! - `truncate_after` appends a WAL truncation marker; it becomes durable with the
//!   next sync, before anything appended after it can be.
//! - Vote, committed log id and last purged log id live in a small metadata file
//!   (`raft-meta.json`), replaced atomically (write, fsync, rename, fsync dir). The vote
//!   is durable before `save_vote` returns, as Raft requires.
//! - `purge` records the purged log id first, then drops the entries from the group's
//!   index (the WAL deletes a segment once no group needs it); reads never return
//!   entries at or below it, even when a segment still holds them.
//!
//! Cloning shares the store; a clone is the `LogReader` that replication tasks use.
use std::cell::{Cell, RefCell};
use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::type_config::alias::{LogIdOf, VoteOf};
use openraft::{OptionalSend, RaftLogReader, RaftTypeConfig};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::wal::{GroupCommitWal, GroupId, WalError};

/// What Raft must keep besides the log.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct Meta<C: RaftTypeConfig> {
    vote: Option<VoteOf<C>>,
    committed: Option<LogIdOf<C>>,
    last_purged: Option<LogIdOf<C>>,
}

impl<C: RaftTypeConfig> Default for Meta<C> {
    fn default() -> Self {
        Meta { vote: None, committed: None, last_purged: None }
    }
}

impl<C: RaftTypeConfig> Clone for Meta<C> {
    fn clone(&self) -> Self {
        Meta { vote: self.vote.clone(), committed: self.committed.clone(), last_purged: self.last_purged.clone() }
    }
}

struct Shared<C: RaftTypeConfig> {
    wal: GroupCommitWal,
    group: GroupId,
    meta: RefCell<Meta<C>>,
    meta_path: PathBuf,
    /// See `recovery_bound`.
    recovery_bound: Cell<u64>,
}

/// The log store of one shard. `!Send`: it lives on its shard's executor.
pub struct WalLogStore<C: RaftTypeConfig> {
    shared: Rc<Shared<C>>,
    _c: PhantomData<C>,
}

impl<C: RaftTypeConfig> Clone for WalLogStore<C> {
    fn clone(&self) -> Self {
        WalLogStore { shared: self.shared.clone(), _c: PhantomData }
    }
}

fn to_io(e: WalError) -> io::Error {
    let kind = match e {
        WalError::Corruption { .. } => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

const META_FILE: &str = "raft-meta.json";

impl<C> WalLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    /// Opens the store of group `group` in the shared `wal`; its metadata file lives in
    /// `dir`.
    pub fn open(dir: &Path, wal: GroupCommitWal, group: GroupId) -> io::Result<Self> {
        let meta_path = dir.join(META_FILE);
        let meta = match std::fs::read(&meta_path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", meta_path.display())))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Meta::default(),
            Err(e) => return Err(e),
        };
        // The log does not record purges: records purged before a restart come back
        // with recovery and would pin their segments until the next snapshot. Purge them
        // again (index only; past the end it restarts the group there, as before).
        if let Some(purged) = &meta.last_purged {
            wal.with(|w| w.purge_before(group, purged.index() + 1)).map_err(to_io)?;
        }
        // Everything this replica applied before it opened was committed, so it is in
        // the log (or a snapshot) it opens with: at most up to this next index.
        let purged_next = meta.last_purged.as_ref().map_or(0, |p| p.index() + 1);
        let next = wal.with(|w| w.next_index(group)).max(purged_next);
        let shared = Shared { wal, group, meta: RefCell::new(meta), meta_path, recovery_bound: Cell::new(next) };
        Ok(WalLogStore { shared: Rc::new(shared), _c: PhantomData })
    }

    /// A next log index such that a replica that has applied every entry before it has
    /// applied at least what it had applied before it opened: the end of the log it
    /// opened with, lowered by truncations since (only entries that were never
    /// committed, so never applied, are truncated). Unlike the commit index heard from
    /// a leader (a new leader's may be behind what this replica had applied, and the
    /// one kept on disk is only a lower bound), it is known at open and never chases a
    /// moving log under load.
    pub fn recovery_bound(&self) -> u64 {
        self.shared.recovery_bound.get()
    }

    /// The WAL underneath (for metrics and tests).
    pub fn wal(&self) -> &GroupCommitWal {
        &self.shared.wal
    }

    /// This store's group in the WAL.
    pub fn group(&self) -> GroupId {
        self.shared.group
    }

    /// Replaces the metadata file atomically and durably: a write and two fsyncs.
    /// `off_core`: on glommio's blocking pool, so the core keeps serving (purges, after
    /// every snapshot). Votes are written on the executor instead (a few ms, on
    /// elections only): the pool is one FIFO thread that may be busy for tens of ms
    /// with a snapshot or a segment preallocation, and a vote waiting behind that could
    /// outlast the election timeout.
    async fn persist_meta(&self, meta: &Meta<C>, off_core: bool) -> io::Result<()> {
        let bytes = serde_json::to_vec(meta).map_err(io::Error::other)?;
        let path = self.shared.meta_path.clone();
        if off_core {
            glommio::executor().spawn_blocking(move || crate::files::replace_durably(&path, &bytes)).await?;
        } else {
            crate::files::replace_durably(&path, &bytes)?;
        }
        *self.shared.meta.borrow_mut() = meta.clone();
        Ok(())
    }

    fn decode(index: u64, bytes: &[u8]) -> io::Result<C::Entry> {
        let entry: C::Entry = postcard::from_bytes(bytes)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("log entry {index}: {e}")))?;
        if entry.index() != index {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("wal index {index} holds log entry {}", entry.index()),
            ));
        }
        Ok(entry)
    }

    /// First index a reader may see: past the purge point, and present in the WAL.
    fn first_readable(&self) -> u64 {
        let purged_next = self.shared.meta.borrow().last_purged.as_ref().map_or(0, |l| l.index() + 1);
        let g = self.shared.group;
        self.shared.wal.with(|w| w.first_index(g)).max(purged_next)
    }
}

impl<C> RaftLogReader<C> for WalLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e.saturating_add(1),
            Bound::Excluded(&e) => e,
            Bound::Unbounded => u64::MAX,
        };
        let start = start.max(self.first_readable());
        let g = self.shared.group;
        self.shared.wal.with(|w| {
            let end = end.min(w.next_index(g));
            (start..end).map(|i| w.get(g, i).map_err(to_io).and_then(|b| Self::decode(i, b))).collect()
        })
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(self.shared.meta.borrow().vote.clone())
    }
}

impl<C> RaftLogStorage<C> for WalLogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let last_purged = self.shared.meta.borrow().last_purged.clone();
        let first = self.first_readable();
        let g = self.shared.group;
        let last = self.shared.wal.with(|w| {
            let next = w.next_index(g);
            if next > first {
                w.get(g, next - 1).map_err(to_io).and_then(|b| Self::decode(next - 1, b)).map(|e| Some(e.log_id()))
            } else {
                Ok(None)
            }
        })?;
        Ok(LogState { last_log_id: last.or_else(|| last_purged.clone()), last_purged_log_id: last_purged })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        let mut meta = self.shared.meta.borrow().clone();
        meta.vote = Some(vote.clone());
        self.persist_meta(&meta, false).await
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        // Not made durable on its own: a stale committed id on restart only means
        // re-applying from the snapshot (openraft's documented fallback). It is written
        // with the next vote or purge.
        self.shared.meta.borrow_mut().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.shared.meta.borrow().committed.clone())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let g = self.shared.group;
        let mut next = self.shared.wal.with(|w| w.next_index(g));
        let empty = next <= self.first_readable();
        let mut encoded = Vec::new();
        for entry in entries {
            // An empty log (new, or everything purged behind a snapshot) may go on at
            // any later index: restart the WAL there.
            if encoded.is_empty() && empty && entry.index() > next {
                next = entry.index();
                self.shared.wal.with(|w| w.purge_before(g, next)).map_err(to_io)?;
            }
            // The WAL assigns contiguous indexes; Raft's must match them exactly.
            if entry.index() != next {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("append of log index {} where the log continues at {next}", entry.index()),
                ));
            }
            next += 1;
            encoded.push(postcard::to_stdvec(&entry).map_err(io::Error::other)?);
        }
        let batch_max = self.shared.wal.with(|w| w.config().append_batch_max);
        for chunk in encoded.chunks(batch_max) {
            self.shared.wal.append(g, chunk).map_err(to_io)?;
        }
        let end = self.shared.wal.with(|w| w.end_position());
        let wal = self.shared.wal.clone();
        glommio::spawn_local(async move {
            let flushed = wal.wait_durable_position(end).await.map_err(to_io);
            callback.io_completed(flushed);
        })
        .detach();
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let cut = last_log_id.as_ref().map_or(0, |l| l.index() + 1);
        let bound = &self.shared.recovery_bound;
        bound.set(bound.get().min(cut));
        let g = self.shared.group;
        self.shared.wal.with(|w| w.truncate_from(g, cut.max(w.first_index(g)))).map_err(to_io)
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        let mut meta = self.shared.meta.borrow().clone();
        if meta.last_purged.as_ref().is_some_and(|p| p.index() >= log_id.index()) {
            return Ok(());
        }
        let upto = log_id.index() + 1;
        meta.last_purged = Some(log_id);
        self.persist_meta(&meta, true).await?;
        // Only the group's index changes here; the flusher deletes segments that no
        // group needs any more after its next sync.
        let g = self.shared.group;
        let started = std::time::Instant::now();
        let purged = self.shared.wal.with(|w| w.purge_before(g, upto)).map_err(to_io);
        crate::metrics::record_since("wal.purge", started);
        self.shared.wal.nudge();
        purged
    }
}
