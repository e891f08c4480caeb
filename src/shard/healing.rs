//! Shards heal themselves: a replica whose Raft core a fatal storage error stopped (no
//! descriptor for a new segment, a full disk, an I/O error on open) is shut down and
//! opened again from its directory, in-process, with backoff, until it opens: once the
//! cause is gone the shard serves again without a restart of the node. Opening is the
//! same recovery as at startup (the WAL's torn tail cut, the snapshot loaded, the log
//! re-applied), so what was acknowledged is all there.
//!
//! `ShardOpener` is how the node opens a shard at startup and again here; `Healing` is
//! the backoff of one stopped shard (pure).
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use openraft::BasicNode;

use crate::config::{PeerLimits, RaftTimings, ServerConfig, StoreLimits, WalConfig};
use crate::raft::{Shard, ShardError, ShardPlacement};

/// First pause before re-opening a stopped shard.
pub const REOPEN_BACKOFF_MIN_MS: u64 = 500;
/// Longest pause between tries while opening keeps failing.
pub const REOPEN_BACKOFF_MAX_MS: u64 = 30_000;

/// Everything needed to open one of this node's shards.
#[derive(Debug, Clone)]
pub struct ShardOpener {
    data_dir: std::path::PathBuf,
    node_id: u64,
    cores: usize,
    body_segment_size_bytes: u64,
    wal: WalConfig,
    store: StoreLimits,
    raft: RaftTimings,
    peer: PeerLimits,
}

impl ShardOpener {
    /// From the node's configuration (whose body segment size is the data dir's by now).
    pub fn new(config: &ServerConfig, cores: usize) -> ShardOpener {
        ShardOpener {
            data_dir: config.data_dir.clone(),
            node_id: config.node_id,
            cores,
            body_segment_size_bytes: config.body_segment_size_bytes.unwrap_or(crate::config::BODY_SEGMENT_SIZE_BYTES),
            wal: config.wal.clone(),
            store: config.store.clone(),
            raft: config.raft.clone(),
            peer: config.peer.clone(),
        }
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
        Shard::open(&dir, placement, self.wal.clone(), self.store.clone(), &self.raft, &self.peer).await
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
