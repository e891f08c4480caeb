//! Serving one Raft RPC from another node on this node's replica of the shard, on the
//! core that owns it. A node short of disk refuses the RPCs that would write to it
//! (the caller sees it as unreachable and retries with backoff). A stopping node
//! (`crate::shutdown`) refuses replication and leadership: its leaders are handing their
//! shards over (`crate::shard::leaders`), and a node that still answered heartbeats
//! would look close behind to the new leaders, which would hand the shards back.
use super::call::InboundRpc;
use super::disk::DiskGuard;
use crate::raft::Shard;
use crate::raft::wire::PeerResponse;

/// Serves `rpc` (any but a forwarded call) on `shard` of node `node_id`.
pub async fn handle_raft_rpc(shard: &Shard, rpc: InboundRpc, node_id: u64, disk: &DiskGuard) -> PeerResponse {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let refused = || disk.refusal().map(|why| PeerResponse::Refused(format!("node {node_id}: {why}")));
    if crate::shutdown::requested() && matches!(rpc, InboundRpc::Append(_) | InboundRpc::TransferLeader(_)) {
        return PeerResponse::Refused(format!("node {node_id}: shutting down"));
    }
    match rpc {
        InboundRpc::Append(req) => {
            // Entries per replication request (0 = heartbeat): how well followers batch.
            crate::metrics::record("raft.append_entries_batch", req.entries.len() as u64);
            // A replica short of disk takes no new entries: each would have to be
            // applied, and applying can need a new body segment (`crate::shard::disk`).
            // The leader sees it as unreachable and retries with backoff; this node
            // catches up once space is freed. Heartbeats (no entries) still pass, so it
            // stays a follower and keeps the cluster's view of it.
            if !req.entries.is_empty()
                && let Some(refused) = refused()
            {
                return refused;
            }
            PeerResponse::Append(shard.raft.append_entries(req).await.map_err(|e| s(&e)))
        }
        InboundRpc::Vote(req) => PeerResponse::Vote(shard.raft.vote(req).await.map_err(|e| s(&e))),
        InboundRpc::PreVote(req) => PeerResponse::Vote(shard.raft.pre_vote(req).await.map_err(|e| s(&e))),
        // A node short of disk would refuse every write as leader: it does not take
        // leadership that is handed to it (it still votes).
        InboundRpc::TransferLeader(_) if let Some(refused) = refused() => refused,
        InboundRpc::TransferLeader(req) => {
            PeerResponse::TransferLeader(shard.raft.handle_transfer_leader(req).await.map_err(|e| s(&e)))
        }
        InboundRpc::Snapshot { vote, snapshot, staging } => {
            // Installing writes a new body generation beside the current one.
            let answer = match refused() {
                Some(refused) => refused,
                None => {
                    PeerResponse::Snapshot(shard.raft.install_full_snapshot(vote, snapshot).await.map_err(|e| s(&e)))
                }
            };
            let _ = std::fs::remove_dir_all(&staging);
            answer
        }
        InboundRpc::Call(_) => PeerResponse::Refused("a forwarded call is not a Raft RPC".into()),
    }
}
