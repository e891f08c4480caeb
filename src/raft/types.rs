//! The Raft type configuration of FleetLM's shards: commands of the context store in,
//! their outcomes out, u64 node ids, our glommio runtime.
use crate::raft::GlommioRuntime;
use crate::store::{Command, Outcome, StoreError};

/// What applying a command returns: refusals (404, 409) are results, not failures.
pub type CommandResult = Result<Outcome, StoreError>;

openraft::declare_raft_types!(
    /// The type config of every shard's Raft group.
    pub FleetRaft:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        AsyncRuntime = GlommioRuntime,
);

/// A shard's Raft handle (`!Send`: it lives on the shard's executor).
pub type ShardRaft = openraft::Raft<FleetRaft, crate::raft::ShardStateMachine>;
