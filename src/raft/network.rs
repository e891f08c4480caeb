//! The network of a cluster of one: there is no peer to reach. `fleetlm serve` without
//! `--peers` runs every shard as a single-member Raft group through the same code path
//! as a cluster; openraft never sends an RPC when it has no other member. The TCP
//! transport between nodes comes with the cluster issue.
use std::future::Future;

use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::{AnyError, BasicNode, OptionalSend};

use super::types::FleetRaft;

type C = FleetRaft;

/// Creates `NoPeer` clients.
pub struct NoPeers;

/// A client for a node that is not part of this process's world.
pub struct NoPeer {
    target: u64,
}

impl NoPeer {
    fn unreachable(&self) -> Unreachable<C> {
        Unreachable::new(&AnyError::error(format!(
            "node {} is not reachable: single-node mode has no peers",
            self.target
        )))
    }
}

impl RaftNetworkFactory<C> for NoPeers {
    type Network = NoPeer;
    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Self::Network {
        NoPeer { target }
    }
}

impl RaftNetworkV2<C> for NoPeer {
    type SnapshotData = super::state_machine::ShardSnapshot;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<C>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(&mut self, _rpc: VoteRequest<C>, _option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: VoteOf<C>,
        _snapshot: SnapshotOf<C, Self::SnapshotData>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        Err(StreamingError::Unreachable(self.unreachable()))
    }
}
