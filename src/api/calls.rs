//! From a validated HTTP request to a `ShardCall` (what the shard's core must do), and
//! from a call to its response on the owning core. Calls are `Send`: they cross cores.
use std::time::Duration;

use openraft::ReadPolicy;
use serde_json::json;

use crate::config::ServeLimits;
use crate::http::Response;
use crate::raft::Shard;
use crate::store::{Command, Outcome, ReplayFrom, StoreError};

/// The work a request asks of one shard.
#[derive(Debug)]
pub enum ShardCall {
    /// A change; its `now` is set by the owner just before proposing (the leader's time).
    Write(Command),
    Get {
        id: String,
        local: bool,
    },
    Tail {
        id: String,
        offset: u64,
        limit: usize,
        local: bool,
    },
    Replay {
        id: String,
        from: ReplayFrom,
        limit: usize,
        local: bool,
    },
    Window {
        id: String,
        budget: Option<u64>,
        if_version: Option<u64>,
        local: bool,
    },
    /// This node's view of one shard's Raft group (for `GET /v1/cluster`).
    ShardStatus {
        shard: u32,
    },
}

impl ShardCall {
    pub fn context_id(&self) -> &str {
        match self {
            ShardCall::Write(cmd) => cmd.context_id(),
            ShardCall::Get { id, .. }
            | ShardCall::Tail { id, .. }
            | ShardCall::Replay { id, .. }
            | ShardCall::Window { id, .. } => id,
            ShardCall::ShardStatus { .. } => "",
        }
    }
}

/// RFC 3339, UTC, microseconds, `Z` (API.md).
pub fn now_rfc3339() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn set_now(cmd: &mut Command) {
    let now = now_rfc3339();
    match cmd {
        Command::Put { now: n, .. }
        | Command::PatchMetadata { now: n, .. }
        | Command::Append { now: n, .. }
        | Command::Delete { now: n, .. }
        | Command::Compact { now: n, .. } => *n = now,
    }
}

pub fn unavailable(limits: &ServeLimits, why: impl std::fmt::Display) -> Response {
    Response::error(503, "unavailable", why).with_header("Retry-After", limits.retry_after_secs.to_string())
}

fn store_error(e: &StoreError) -> Response {
    Response::error(e.status(), e.code(), e)
}

fn outcome_response(outcome: Result<Outcome, StoreError>) -> Response {
    match outcome {
        Ok(Outcome::Summary { created, summary }) => Response::json(if created { 201 } else { 200 }, &summary),
        Ok(Outcome::Appended(a)) => {
            Response::json(201, &json!({"seq": a.seq, "version": a.version, "token_estimate": a.token_estimate}))
        }
        Ok(Outcome::Deleted) => Response::empty(204),
        Ok(Outcome::Compacted { version }) => Response::json(200, &json!({"version": version})),
        Ok(Outcome::Nothing) => Response::error(500, "internal", "command produced no outcome"),
        Err(e) => store_error(&e),
    }
}

/// One shard's Raft state as this node sees it.
fn shard_status(shard: &Shard, id: u32) -> serde_json::Value {
    use openraft_rt::WatchReceiver;
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
    })
}

/// `{"messages":[…]` + `tail`, from the messages' stored JSON.
fn messages_body(messages: &[crate::store::Message], bodies: &dyn crate::store::Bodies, tail: &str) -> Vec<u8> {
    let len: usize = messages.iter().map(|m| m.json(bodies).len() + 1).sum();
    let mut out = Vec::with_capacity(len + 16 + tail.len());
    out.extend_from_slice(b"{\"messages\":[");
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m.json(bodies).as_bytes());
    }
    out.push(b']');
    out.extend_from_slice(tail.as_bytes());
    out
}

/// Runs `call` on `shard` (which this core owns).
pub async fn execute(shard: &Shard, call: ShardCall, limits: &ServeLimits) -> Response {
    let deadline = Duration::from_millis(limits.write_deadline_ms);
    if let ShardCall::ShardStatus { shard: s } = call {
        return Response::json(200, &shard_status(shard, s));
    }
    let local = match &call {
        ShardCall::Write(_) | ShardCall::ShardStatus { .. } => false,
        ShardCall::Get { local, .. }
        | ShardCall::Tail { local, .. }
        | ShardCall::Replay { local, .. }
        | ShardCall::Window { local, .. } => *local,
    };
    if let ShardCall::Write(mut cmd) = call {
        set_now(&mut cmd);
        let write = crate::raft::runtime::timeout(deadline, shard.raft.client_write(cmd)).await;
        return match write {
            Ok(Ok(resp)) => outcome_response(resp.data),
            Ok(Err(e)) => unavailable(limits, format!("no leader accepted the write: {e}")),
            Err(_) => unavailable(limits, "no leader with a quorum within the deadline"),
        };
    }
    if !local {
        // Linearizable: the state machine has applied everything acknowledged before now.
        let barrier =
            crate::raft::runtime::timeout(deadline, shard.raft.ensure_linearizable(ReadPolicy::ReadIndex)).await;
        match barrier {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return unavailable(limits, format!("cannot confirm leadership: {e}")),
            Err(_) => return unavailable(limits, "no leader with a quorum within the deadline"),
        }
    }
    let applied = shard.state.applied().borrow();
    let store = &applied.store;
    let bodies = &applied.bodies;
    let ctx = match store.get(call.context_id()) {
        Ok(c) => c,
        Err(e) => return store_error(&e),
    };
    match call {
        ShardCall::Write(_) | ShardCall::ShardStatus { .. } => unreachable!("handled above"),
        ShardCall::Get { .. } => Response::json(200, &ctx.summary_json()),
        ShardCall::Tail { offset, limit, .. } => {
            let body = messages_body(ctx.tail(offset, limit), bodies, "}");
            Response::raw_json(200, body)
        }
        ShardCall::Replay { from, limit, .. } => {
            let start = ctx.replay_start(from);
            let (page, next) = ctx.replay(start, limit);
            let body = messages_body(page, bodies, &format!(",\"last_seq\":{},\"next_seq\":{next}}}", ctx.last_seq()));
            Response::raw_json(200, body)
        }
        ShardCall::Window { budget, if_version, .. } => {
            if let Some(expected) = if_version
                && expected != ctx.version
            {
                return store_error(&StoreError::Conflict { expected, found: ctx.version });
            }
            Response::json(200, &ctx.window_json(budget.unwrap_or(ctx.config.token_budget), bodies))
        }
    }
}
