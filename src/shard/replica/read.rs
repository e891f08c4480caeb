//! Reads: a read barrier on the leader unless the call is local (`consistency=local`),
//! then the answer rendered from this replica's applied state; and the replica's view
//! of its Raft group (`ShardStatus`).
use std::time::Duration;

use openraft::ReadPolicy;
use openraft::error::{LinearizableReadError, RaftError};
use openraft_rt::WatchReceiver;
use serde_json::json;

use super::{mark_stopped, not_leader, timed_out};
use crate::config::ServeLimits;
use crate::raft::Shard;
use crate::shard::call::{Reply, Served, ShardCall};
use crate::store::StoreError;

pub(super) async fn read(shard: &Shard, call: &ShardCall, limits: &ServeLimits, remaining: Duration) -> Served {
    if call.is_local() && !shard.caught_up() {
        let why = "this replica restarted and has not yet applied what was committed before: retry, or read \
                   without consistency=local";
        return Ok(Reply::unavailable(limits, why));
    }
    if !call.is_local() {
        // Linearizable: the state machine has applied everything acknowledged before now.
        let barrier =
            crate::raft::runtime::timeout(remaining, shard.raft.ensure_linearizable(ReadPolicy::ReadIndex)).await;
        match barrier {
            Ok(Ok(_)) => {}
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => return not_leader(&f),
            Ok(Err(RaftError::Fatal(_))) => return mark_stopped(shard, limits),
            Ok(Err(e)) => return Ok(Reply::unavailable(limits, format!("cannot confirm leadership: {e}"))),
            Err(_) => return timed_out(limits),
        }
    }
    Ok(applied_state(shard, call, limits.response_max_bytes))
}

/// Answers a read from this replica's applied state, its body at most about
/// `max_bytes` (tail and replay pages are cut shorter; a larger window is refused).
fn applied_state(shard: &Shard, call: &ShardCall, max_bytes: usize) -> Reply {
    let applied = shard.state.applied().borrow();
    let store = &applied.store;
    let bodies = &applied.bodies;
    let ctx = match store.get(call.context_id()) {
        Ok(c) => c,
        Err(e) => return Reply::store_error(&e),
    };
    let rendered = match call {
        ShardCall::Get { .. } => return Reply::json(200, &ctx.summary_json()),
        ShardCall::Tail { offset, limit, .. } => {
            crate::store::messages_object(ctx.tail_within(*offset, *limit, max_bytes).iter(), bodies, b"}")
        }
        ShardCall::Replay { from, limit, .. } => {
            let start = ctx.replay_start(*from);
            let (page, next) = ctx.replay_within(start, *limit, max_bytes);
            let tail = format!(",\"last_seq\":{},\"next_seq\":{next}}}", ctx.last_seq());
            crate::store::messages_object(page.iter(), bodies, tail.as_bytes())
        }
        ShardCall::Window { budget, if_version, .. } => {
            if let Some(expected) = *if_version
                && expected != ctx.version
            {
                return Reply::store_error(&StoreError::Conflict { expected, found: ctx.version });
            }
            let bytes = ctx.window_bytes();
            if bytes > max_bytes {
                let why = format!(
                    "the window holds {bytes} bytes of messages, over the {max_bytes}-byte limit of one answer: compact \
                     it (POST /compact), or read its messages in pages (GET /messages)"
                );
                return Reply::error(413, "window_too_large", why);
            }
            ctx.window_json(budget.unwrap_or(ctx.config.token_budget), bodies)
        }
        _ => return Reply::error(500, "internal", "not a read"),
    };
    match rendered {
        Ok(body) => Reply::raw_json(200, body),
        // A message whose body is not in the body store: the shard's data is damaged.
        Err(e) => Reply::error(500, "internal", format!("corruption in shard data: {e}")),
    }
}

/// One shard's Raft state as this node sees it.
pub(super) fn shard_status(shard: &Shard, id: u32) -> serde_json::Value {
    let m = shard.raft.metrics().borrow_watched().clone();
    let members: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    json!({
        "shard": id,
        "leader": m.current_leader,
        "term": m.current_term,
        "state": format!("{:?}", m.state),
        "commit_index": m.cluster_committed.map(|l| l.index),
        "applied_index": m.last_applied.map(|l| l.index),
        "last_log_index": m.last_log_index,
        "snapshot_index": m.snapshot.map(|l| l.index),
        "voters": members,
        "learners": m.membership_config.membership().learner_ids().collect::<Vec<u64>>(),
        // On the leader: the last entry each member is known to hold.
        "replication": m.replication.as_ref().map(|r| {
            r.iter().map(|(id, matched)| (id.to_string(), json!(matched.as_ref().map(|l| l.index)))).collect::<serde_json::Map<_, _>>()
        }),
    })
}
