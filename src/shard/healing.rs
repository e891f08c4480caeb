//! Shards heal themselves: a replica whose Raft core a fatal storage error stopped (no
//! descriptor for a new segment, a full disk, an I/O error on open) is shut down and
//! opened again from its directory, in-process, with backoff, until it opens: once the
//! cause is gone the shard serves again without a restart of the node. Opening is the
//! same recovery as at startup (the WAL's torn tail cut, the snapshot loaded, the log
//! re-applied), so what was acknowledged is all there.
//!
//! `ShardOpener` is how the node opens a shard at startup and again here; `Healing` is
//! the backoff of one stopped shard (pure).
//!
//! A core's shards share its log (`crate::wal`). A failed sync poisons that log for all
//! of them; it is re-opened from disk (recovery) only once every shard on it has been
//! stopped, so that two `Wal`s never write the same files (`ShardOpener::log`).
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use openraft::BasicNode;

use crate::config::{PeerLimits, RaftTimings, ServerConfig, StoreLimits, WalConfig};
use crate::raft::{Shard, ShardError, ShardPlacement};
use crate::wal::{GroupCommitWal, Wal};

/// First pause before re-opening a stopped shard.
pub const REOPEN_BACKOFF_MIN_MS: u64 = 500;
/// Longest pause between tries while opening keeps failing.
pub const REOPEN_BACKOFF_MAX_MS: u64 = 30_000;

/// Everything needed to open one of this core's shards, and the core's log. `!Send`: it
/// lives on its core.
pub struct ShardOpener {
    data_dir: std::path::PathBuf,
    /// The core's log directory, and the log once opened.
    wal_dir: std::path::PathBuf,
    log: RefCell<Option<GroupCommitWal>>,
    node_id: u64,
    cores: usize,
    body_segment_size_bytes: u64,
    wal: WalConfig,
    store: StoreLimits,
    raft: RaftTimings,
    peer: PeerLimits,
}

impl ShardOpener {
    /// For executor `core`, from the node's configuration (whose body segment size is
    /// the data dir's by now); the data dir has one log per core (`crate::datadir`).
    pub fn new(config: &ServerConfig, cores: usize, core: usize) -> Rc<ShardOpener> {
        let logs = u32::try_from(cores).expect("cores fit in u32 (checked by datadir::load)");
        let log = u32::try_from(core).expect("core < cores");
        Rc::new(ShardOpener {
            data_dir: config.data_dir.clone(),
            wal_dir: crate::datadir::wal_dir(&config.data_dir, logs, log),
            log: RefCell::new(None),
            node_id: config.node_id,
            cores,
            body_segment_size_bytes: config.body_segment_size_bytes.unwrap_or(crate::config::BODY_SEGMENT_SIZE_BYTES),
            wal: config.wal.clone(),
            store: config.store.clone(),
            raft: config.raft.clone(),
            peer: config.peer.clone(),
        })
    }

    /// The core's log, opened (recovered from disk) on first use, or again after a
    /// failed sync poisoned it. The caller must have stopped every shard that used the
    /// poisoned log (`CoreCtx::heal_stopped_shards` does).
    pub fn log(&self) -> Result<GroupCommitWal, ShardError> {
        if let Some(log) = self.log.borrow().as_ref().filter(|l| !l.poisoned()) {
            return Ok(log.clone());
        }
        let (wal, _report) = Wal::open(&self.wal_dir, self.wal.clone())?;
        let log = GroupCommitWal::new(wal);
        *self.log.borrow_mut() = Some(log.clone());
        Ok(log)
    }

    /// The core's log if it is open.
    pub fn current_log(&self) -> Option<GroupCommitWal> {
        self.log.borrow().clone()
    }

    /// Whether the core's log refuses writes after a failed sync.
    pub fn log_poisoned(&self) -> bool {
        self.log.borrow().as_ref().is_some_and(GroupCommitWal::poisoned)
    }

    /// Opens shard `shard` from its directory; `initial_members` initialize a pristine
    /// group (an initialized one is left as it is).
    pub async fn open(
        &self,
        shard: u32,
        initial_members: Option<BTreeMap<u64, BasicNode>>,
    ) -> Result<Shard, ShardError> {
        let dir = self.data_dir.join("shards").join(shard.to_string());
        let placement = ShardPlacement {
            shard,
            node_id: self.node_id,
            cores: self.cores,
            initial_members,
            body_segment_size_bytes: self.body_segment_size_bytes,
        };
        let log = self.log()?;
        Shard::open(&dir, placement, log, self.store.clone(), &self.raft, &self.peer).await
    }
}

/// The re-open schedule of one stopped shard: first try soon, then twice as long
/// after each failure, up to the ceiling.
#[derive(Debug, Clone, Copy)]
pub struct Healing {
    next_try: Instant,
    wait: Duration,
    pub failures: u32,
}

impl Healing {
    pub fn new(now: Instant) -> Healing {
        let wait = Duration::from_millis(REOPEN_BACKOFF_MIN_MS);
        Healing { next_try: now + wait, wait, failures: 0 }
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next_try
    }

    /// A try failed at `now`.
    pub fn failed(&mut self, now: Instant) {
        self.failures = self.failures.saturating_add(1);
        self.wait = (self.wait * 2).min(Duration::from_millis(REOPEN_BACKOFF_MAX_MS));
        self.next_try = now + self.wait;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tries_back_off_to_the_ceiling() {
        let t0 = Instant::now();
        let mut h = Healing::new(t0);
        assert!(!h.due(t0));
        assert!(h.due(t0 + Duration::from_millis(REOPEN_BACKOFF_MIN_MS)));
        let mut now = t0;
        for _ in 0..20 {
            h.failed(now);
            now += Duration::from_millis(1);
        }
        assert_eq!(h.failures, 20);
        assert!(!h.due(now + Duration::from_millis(REOPEN_BACKOFF_MAX_MS - 100)));
        assert!(h.due(now + Duration::from_millis(REOPEN_BACKOFF_MAX_MS)));
    }
}
