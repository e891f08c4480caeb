//! Running a call on this node's replica of a shard, on the core that owns it: a write
//! is proposed (`propose`), a read answered from the applied state after a read
//! barrier unless it is local (`read`), a membership change proposed and waited for
//! (`membership`). Each answers a storage-free `Served`: a reply, or `NotLeader` when
//! this replica does not lead the shard and nothing was proposed.
//!
//! A replica whose Raft core a fatal storage error stopped answers 503 without asking
//! openraft (which would refuse every call, logging an error each): `mark_stopped`;
//! the core re-opens it (`crate::shard::healing`).
mod membership;
mod propose;
mod read;

use std::sync::Arc;
use std::time::Duration;

use openraft::error::ForwardToLeader;

use super::call::{Leader, NotLeader, Reply, Served, ShardCall};
use crate::budget::Budget;
use crate::config::ServeLimits;
use crate::raft::{FleetRaft, Shard};

pub use propose::{command_too_large, now_rfc3339};

/// Tries `call` on this replica of the shard (which this core owns), within `remaining`.
/// `answers`: the node's budget of large answers not yet written (`crate::budget`).
pub async fn attempt(
    shard: &Shard,
    call: &ShardCall,
    limits: &ServeLimits,
    answers: &Arc<Budget>,
    remaining: Duration,
) -> Served {
    match call {
        ShardCall::ShardStatus { shard: s } => Ok(Reply::json(200, &read::shard_status(shard, *s))),
        _ if shard.stopped.get() => Ok(stopped_reply(limits)),
        ShardCall::Write(cmd) => propose::write(shard, cmd, limits, remaining).await,
        ShardCall::AddMember { node_id, addr, .. } => membership::add(shard, *node_id, addr, limits, remaining).await,
        ShardCall::RemoveMember { node_id, .. } => membership::remove(shard, *node_id, limits, remaining).await,
        ShardCall::Get { .. } | ShardCall::Tail { .. } | ShardCall::Replay { .. } | ShardCall::Window { .. } => {
            read::read(shard, call, limits, answers, remaining).await
        }
    }
}

/// Records that openraft stopped this replica's Raft core (it never restarts
/// in-process): from now on calls are answered without asking it, and readiness
/// reports the shard as stopped.
fn mark_stopped(shard: &Shard, limits: &ServeLimits) -> Served {
    shard.mark_stopped();
    Ok(stopped_reply(limits))
}

fn stopped_reply(limits: &ServeLimits) -> Reply {
    let why = "this node's replica of the shard stopped after a storage failure (see the node's log); it is \
               re-opened by itself once the cause is fixed";
    Reply::unavailable(limits, why)
}

fn timed_out(limits: &ServeLimits) -> Served {
    Ok(Reply::unavailable(limits, "no leader with a quorum within the deadline"))
}

/// openraft's "ask the leader" as ours.
fn not_leader(f: &ForwardToLeader<FleetRaft>) -> Served {
    let leader = match (f.leader_id, &f.leader_node) {
        (Some(node_id), Some(node)) => Some(Leader { node_id, addr: node.addr.clone() }),
        _ => None,
    };
    Err(NotLeader { leader })
}
