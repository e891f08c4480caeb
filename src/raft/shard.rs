//! Opening one shard's Raft group on the current executor: its WAL, log store, state
//! machine and Raft handle, from a shard directory. Node-local wiring only.
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use openraft::{BasicNode, Config, SnapshotPolicy};

use super::network::NoPeers;
use super::types::{FleetRaft, ShardRaft};
use super::{ShardStateMachine, WalLogStore};
use crate::config::{RaftTimings, StoreLimits, WalConfig};
use crate::store::Store;
use crate::wal::{GroupCommitWal, Wal};

/// A running shard: the Raft handle and the state it applies to.
pub struct Shard {
    pub raft: ShardRaft,
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

fn raft_config(t: &RaftTimings) -> Result<Arc<Config>, ShardError> {
    let config = Config {
        cluster_name: "fleetlm".into(),
        heartbeat_interval: t.heartbeat_interval_ms,
        election_timeout_min: t.election_timeout_min_ms,
        election_timeout_max: t.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(t.snapshot_every_entries),
        max_in_snapshot_log_to_keep: t.log_entries_kept_after_snapshot,
        ..Config::default()
    };
    Ok(Arc::new(config.validate().map_err(|e| ShardError::Raft(e.to_string()))?))
}

impl Shard {
    /// Opens (or creates) the shard in `dir` as a single-member group with node id
    /// `node_id`, initializing the group the first time.
    pub async fn open_single(
        dir: &Path,
        node_id: u64,
        wal_config: WalConfig,
        limits: StoreLimits,
        timings: &RaftTimings,
    ) -> Result<Shard, ShardError> {
        std::fs::create_dir_all(dir)?;
        let (wal, _report) = Wal::open(&dir.join("wal"), wal_config, 0)?;
        let log = WalLogStore::<FleetRaft>::open(dir, GroupCommitWal::new(wal))?;
        let state = ShardStateMachine::open(dir, Store::new(limits))?;
        let raft = openraft::Raft::new(node_id, raft_config(timings)?, NoPeers, log.clone(), state.clone())
            .await
            .map_err(|e| ShardError::Raft(e.to_string()))?;
        let initialized = raft.is_initialized().await.map_err(|e| ShardError::Raft(e.to_string()))?;
        if !initialized {
            let members = BTreeMap::from([(node_id, BasicNode::default())]);
            raft.initialize(members).await.map_err(|e| ShardError::Raft(e.to_string()))?;
        }
        Ok(Shard { raft, state, log })
    }
}
