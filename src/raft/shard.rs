//! Opening one shard's Raft group on the current executor: its WAL, log store, state
//! machine and Raft handle, from a shard directory. Node-local wiring only.
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use openraft::{BasicNode, Config, SnapshotPolicy};

use super::network::PeerNetwork;
use super::types::{FleetRaft, ShardRaft};
use super::{ShardStateMachine, WalLogStore};
use crate::config::{PeerLimits, RaftTimings, StoreLimits, WalConfig};
use crate::store::Store;
use crate::wal::{GroupCommitWal, Wal};

/// A running shard: the Raft handle and the state it applies to.
pub struct Shard {
    pub raft: ShardRaft,
    /// Set (`mark_stopped`) once openraft has stopped this replica's Raft core after a
    /// fatal storage error.
    pub stopped: Cell<bool>,
    /// Since it opened, this replica has applied everything it could have applied
    /// before (`WalLogStore::recovery_bound`) and what was committed when it first heard
    /// from a live leader (`note_live_leader`). Until then it may hold an older state than it served before
    /// a restart (a follower learns the commit index from its leader; the one it kept
    /// on disk is only a lower bound): local reads wait for it (503), so reads on a
    /// restarted node never go backwards. Readiness does not: a replica short of disk
    /// takes no entries and may stay behind.
    caught_up: Cell<bool>,
    /// `prewarm_once` ran.
    prewarmed: Cell<bool>,
    /// The commit index (next index) heard when a live leader was first seen: a new or
    /// far-behind replica (a node just added, a follower back from a long partition)
    /// waits for it too, so that its local reads do not answer from an empty or old
    /// state. Best effort (it may lag, see `note_live_leader`); `recovery_bound` is the
    /// guarantee.
    heard_commit: Cell<Option<u64>>,
    /// When this replica opened. openraft loads the persisted vote as renewed *now*: a
    /// vote renewed before this instant is not a leader's heartbeat (`has_live_leader`).
    pub opened_at: std::time::Instant,
    pub state: ShardStateMachine,
    pub log: WalLogStore<FleetRaft>,
}

/// Why a shard could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("wal: {0}")]
    Wal(#[from] crate::wal::WalError),
    #[error("storage: {0}")]
    Io(#[from] std::io::Error),
    #[error("raft: {0}")]
    Raft(String),
}

fn raft_config(t: &RaftTimings, peer: &PeerLimits) -> Result<Arc<Config>, ShardError> {
    let config = Config {
        cluster_name: "fleetlm".into(),
        heartbeat_interval: t.heartbeat_interval_ms,
        election_timeout_min: t.election_timeout_min_ms,
        election_timeout_max: t.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_every_entries),
        max_in_snapshot_log_to_keep: t.log_entries_kept_after_snapshot,
        replication_lag_threshold: t.replication_lag_threshold_entries,
        // A restarted or cut-off node must not raise its term and depose a healthy
        // leader (seen without it: a restarted node campaigning forever).
        enable_pre_vote: Some(true),
        max_payload_entries: peer.append_entries_max,
        install_snapshot_timeout: peer.snapshot_timeout_ms,
        ..Config::default()
    };
    Ok(Arc::new(config.validate().map_err(|e| ShardError::Raft(e.to_string()))?))
}

/// Where a shard sits and who its first members are.
pub struct ShardPlacement {
    pub shard: u32,
    pub node_id: u64,
    /// This node's executors (the guess for a peer's, see `network`).
    pub cores: usize,
    /// The members a pristine shard is initialized with; `None` for a node that waits
    /// to be added to an existing cluster. Every initial member initializes with the
    /// same set, which openraft allows: the vote picks one leader.
    pub initial_members: Option<BTreeMap<u64, BasicNode>>,
    /// Size of the message-body segment files (fixed when the data dir is created; the
    /// same on every node, since body offsets travel in snapshots).
    pub body_segment_size_bytes: u64,
}

impl Shard {
    /// Opens (or creates) the shard in `dir`, its Raft log being group
    /// `placement.shard` of `wal` (its core's log), initializing its group the first
    /// time (never again: a group with any log or vote is left as it is).
    pub async fn open(
        dir: &Path,
        placement: ShardPlacement,
        wal: GroupCommitWal,
        limits: StoreLimits,
        timings: &RaftTimings,
        peer: &PeerLimits,
    ) -> Result<Shard, ShardError> {
        std::fs::create_dir_all(dir)?;
        let log = WalLogStore::<FleetRaft>::open(dir, wal, placement.shard)?;
        let state = ShardStateMachine::open(dir, Store::new(limits), placement.body_segment_size_bytes)?;
        let network = PeerNetwork { shard: placement.shard, local_cores: placement.cores, limits: peer.clone() };
        let raft =
            openraft::Raft::new(placement.node_id, raft_config(timings, peer)?, network, log.clone(), state.clone())
                .await
                .map_err(|e| ShardError::Raft(e.to_string()))?;
        let initialized = raft.is_initialized().await.map_err(|e| ShardError::Raft(e.to_string()))?;
        if let Some(members) = placement.initial_members.filter(|_| !initialized) {
            raft.initialize(members).await.map_err(|e| ShardError::Raft(e.to_string()))?;
        }
        Ok(Shard {
            raft,
            stopped: Cell::new(false),
            caught_up: Cell::new(false),
            prewarmed: Cell::new(false),
            heard_commit: Cell::new(None),
            opened_at: std::time::Instant::now(),
            state,
            log,
        })
    }

    /// Records that openraft stopped this replica's Raft core after a fatal storage
    /// error (it never restarts in-process): calls are answered without asking it,
    /// readiness reports it, and the streams it served end (they resume elsewhere or
    /// once it is re-opened).
    pub fn mark_stopped(&self) {
        self.stopped.set(true);
        self.state.feed().end_all(super::feed::EndReason::ShardStopped);
    }

    /// See `caught_up`.
    pub fn caught_up(&self) -> bool {
        self.caught_up.get()
    }

    /// Called while the shard has a leader this replica hears from (every readiness
    /// poll): whether it has caught up since it opened (see `caught_up`).
    pub fn note_live_leader(&self) -> bool {
        if self.caught_up.get() {
            return true;
        }
        use openraft_rt::WatchReceiver;
        let m = self.raft.metrics().borrow_watched().clone();
        let next = |l: Option<&openraft::type_config::alias::LogIdOf<FleetRaft>>| l.map_or(0, |l| l.index + 1);
        // The commit index heard from a leader alone is not enough: a new leader's can be
        // behind what this replica applied before it restarted, and the published
        // metrics can lag the vote that made the leader count as live (a follower that
        // took its target from them alone answered 18 of 100 acknowledged messages after
        // a restart). The end of the log it opened with is.
        let heard = self.heard_commit.get().unwrap_or_else(|| next(m.cluster_committed.as_ref()));
        self.heard_commit.set(Some(heard));
        let done = next(m.last_applied.as_ref()) >= heard.max(self.log.recovery_bound());
        self.caught_up.set(done);
        done
    }

    /// Reads the newest bodies into the page cache in the background, the first time
    /// only (`crate::config::BODIES_PREWARM_BYTES_PER_SHARD`). Called once every shard of
    /// the core has caught up: started with the shard, the prewarm's reads (even at the
    /// idle I/O priority) slowed the opening of a 10M-message node from 0.7 to 1.0–1.2 s.
    pub fn prewarm_once(&self) {
        if !self.prewarmed.replace(true) {
            self.state.start_prewarm(crate::config::BODIES_PREWARM_BYTES_PER_SHARD);
        }
    }

    /// Opens the shard in `dir` as a single-member group of node `node_id`, with a log
    /// of its own in `dir/wal` (for tests and tools).
    pub async fn open_single(
        dir: &Path,
        node_id: u64,
        wal_config: WalConfig,
        limits: StoreLimits,
        timings: &RaftTimings,
    ) -> Result<Shard, ShardError> {
        let placement = ShardPlacement {
            shard: 0,
            node_id,
            cores: 1,
            initial_members: Some(BTreeMap::from([(node_id, BasicNode::default())])),
            body_segment_size_bytes: crate::config::BODY_SEGMENT_SIZE_BYTES,
        };
        std::fs::create_dir_all(dir)?;
        let (wal, _report) = Wal::open(&dir.join("wal"), wal_config)?;
        Shard::open(dir, placement, GroupCommitWal::new(wal), limits, timings, &PeerLimits::default()).await
    }
}
