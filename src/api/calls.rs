//! From a validated HTTP request to a `ShardCall` (what the shard's core must do), and
//! from a call to its response on the owning core. Calls are `Send`: they cross cores.
use std::time::Duration;

use openraft::error::{ClientWriteError, ForwardToLeader, LinearizableReadError, RaftError};
use openraft::{BasicNode, ReadPolicy};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::ServeLimits;
use crate::http::Response;
use crate::raft::{FleetRaft, Shard};
use crate::store::{Command, Outcome, ReplayFrom, StoreError};

/// The work a request asks of one shard. Calls cross cores and, forwarded to the
/// shard's leader, nodes (postcard).
#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Add node `node_id` (peer address `addr`) to the shard's group: as a learner
    /// until it has caught up, then as a voter.
    AddMember {
        shard: u32,
        node_id: u64,
        addr: String,
    },
    /// Remove node `node_id` from the shard's group.
    RemoveMember {
        shard: u32,
        node_id: u64,
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
            ShardCall::ShardStatus { .. } | ShardCall::AddMember { .. } | ShardCall::RemoveMember { .. } => "",
        }
    }

    /// Served by whichever replica is asked, without the leader.
    fn is_local(&self) -> bool {
        match self {
            ShardCall::Write(_) | ShardCall::AddMember { .. } | ShardCall::RemoveMember { .. } => false,
            ShardCall::ShardStatus { .. } => true,
            ShardCall::Get { local, .. }
            | ShardCall::Tail { local, .. }
            | ShardCall::Replay { local, .. }
            | ShardCall::Window { local, .. } => *local,
        }
    }
}

/// What one try at a call on this replica gave.
#[derive(Debug)]
pub enum Attempt {
    Done(Response),
    /// This replica does not lead the shard; the leader, if it knows one (id, peer
    /// address). Nothing was proposed, so trying elsewhere is safe.
    NotLeader(Option<(u64, String)>),
}

fn not_leader(f: &ForwardToLeader<FleetRaft>) -> Attempt {
    match (f.leader_id, &f.leader_node) {
        (Some(id), Some(node)) => Attempt::NotLeader(Some((id, node.addr.clone()))),
        _ => Attempt::NotLeader(None),
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
        "learners": m.membership_config.membership().learner_ids().collect::<Vec<u64>>(),
        // On the leader: the last entry each member is known to hold.
        "replication": m.replication.as_ref().map(|r| {
            r.iter().map(|(id, matched)| (id.to_string(), json!(matched.as_ref().map(|l| l.index)))).collect::<serde_json::Map<_, _>>()
        }),
    })
}

fn write_failed(limits: &ServeLimits, e: RaftError<FleetRaft, ClientWriteError<FleetRaft>>) -> Attempt {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(&f),
        // Proposed, then cut from the log by a new leader: the outcome is not known
        // here (another leader may have committed it). The client retries, with its
        // Idempotency-Key for appends.
        e => Attempt::Done(unavailable(limits, format!("the write's outcome is unknown: {e}"))),
    }
}

/// This replica's Raft core was stopped by a fatal storage error (say, no space for a
/// message-body segment): nothing will be served from it until the node restarts.
fn stopped(shard: &Shard, limits: &ServeLimits) -> Attempt {
    shard.stopped.set(true);
    let why = "this node's replica of the shard stopped after a storage failure (see the node's log); \
               restart the node once the cause is fixed";
    Attempt::Done(unavailable(limits, why))
}

fn timed_out(limits: &ServeLimits) -> Attempt {
    Attempt::Done(unavailable(limits, "no leader with a quorum within the deadline"))
}

/// Proposes a membership change, waiting (until `deadline`) while an earlier change is
/// still being committed: right after another change, or after a leader change that
/// inherited an uncommitted one, openraft refuses with `InProgress` — nothing was
/// proposed, so trying again is safe. Seen as a flaky 503 for a DELETE that followed
/// a POST of members.
async fn change_membership(
    shard: &Shard,
    change: openraft::ChangeMembers<u64, BasicNode>,
    deadline: std::time::Instant,
    limits: &ServeLimits,
) -> Result<(), Attempt> {
    use openraft::error::ChangeMembershipError;
    let pause = Duration::from_millis(limits.leader_retry_pause_ms);
    loop {
        let remaining = deadline.saturating_duration_since(std::time::Instant::now());
        match crate::raft::runtime::timeout(remaining, shard.raft.change_membership(change.clone(), false)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            )))) if remaining > pause => {
                glommio::timer::sleep(pause).await;
            }
            Ok(Err(e)) => return Err(write_failed(limits, e)),
            Err(_) => return Err(timed_out(limits)),
        }
    }
}

/// Tries `call` on this replica of the shard (which this core owns), within `remaining`.
pub async fn attempt(shard: &Shard, call: &ShardCall, limits: &ServeLimits, remaining: Duration) -> Attempt {
    match call {
        ShardCall::ShardStatus { shard: s } => return Attempt::Done(Response::json(200, &shard_status(shard, *s))),
        // openraft would refuse every message to a stopped core, logging an error each.
        _ if shard.stopped.get() => return stopped(shard, limits),
        ShardCall::Write(cmd) => {
            let mut cmd = cmd.clone();
            set_now(&mut cmd);
            let proposed = std::time::Instant::now();
            return match crate::raft::runtime::timeout(remaining, shard.raft.client_write(cmd)).await {
                Ok(Ok(resp)) => {
                    crate::metrics::record_since("write.raft_commit", proposed);
                    Attempt::Done(outcome_response(resp.data))
                }
                Ok(Err(RaftError::Fatal(_))) => stopped(shard, limits),
                Ok(Err(e)) => write_failed(limits, e),
                Err(_) => timed_out(limits),
            };
        }
        ShardCall::AddMember { node_id, addr, .. } => {
            let deadline = std::time::Instant::now() + remaining;
            let node = BasicNode { addr: addr.clone() };
            match crate::raft::runtime::timeout(remaining, shard.raft.add_learner(*node_id, node, false)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return write_failed(limits, e),
                Err(_) => return timed_out(limits),
            }
            // openraft's blocking add waits only until the learner is within
            // `replication_lag_threshold` entries, which an empty node that nobody can
            // reach already is on a young log. Promote only a node that has
            // acknowledged (nearly) all of the leader's log.
            let target = openraft_rt::WatchReceiver::borrow_watched(&shard.raft.metrics()).last_log_index.unwrap_or(0);
            let lag_max = limits.leader_transfer_lag_max_entries;
            let id = *node_id;
            let caught_up = shard
                .raft
                .wait(Some(deadline.saturating_duration_since(std::time::Instant::now())))
                .metrics(
                    |m| {
                        let matched = m.replication.as_ref().and_then(|r| r.get(&id)).and_then(|l| l.as_ref());
                        matched.is_some_and(|l| l.index + lag_max >= target)
                    },
                    "the new node has caught up",
                )
                .await;
            if caught_up.is_err() {
                let why = format!("node {id} ({addr}) did not catch up within the deadline; it stays a learner");
                return Attempt::Done(unavailable(limits, why));
            }
            let voters = std::collections::BTreeSet::from([id]);
            return match change_membership(shard, openraft::ChangeMembers::AddVoterIds(voters), deadline, limits).await
            {
                Ok(()) => Attempt::Done(Response::json(200, &json!({"node_id": node_id, "voter": true}))),
                Err(failed) => failed,
            };
        }
        ShardCall::RemoveMember { node_id, .. } => {
            let ids = std::collections::BTreeSet::from([*node_id]);
            let is_voter = openraft_rt::WatchReceiver::borrow_watched(&shard.raft.metrics())
                .membership_config
                .membership()
                .voter_ids()
                .any(|v| v == *node_id);
            // A voter leaves the group entirely (retain = false); a learner (say, one
            // that never caught up) is dropped from the nodes.
            let change = if is_voter {
                openraft::ChangeMembers::RemoveVoters(ids)
            } else {
                openraft::ChangeMembers::RemoveNodes(ids)
            };
            let deadline = std::time::Instant::now() + remaining;
            return match change_membership(shard, change, deadline, limits).await {
                Ok(()) => Attempt::Done(Response::json(200, &json!({"node_id": node_id, "removed": true}))),
                Err(failed) => failed,
            };
        }
        _ => {}
    }
    if !call.is_local() {
        // Linearizable: the state machine has applied everything acknowledged before now.
        let barrier =
            crate::raft::runtime::timeout(remaining, shard.raft.ensure_linearizable(ReadPolicy::ReadIndex)).await;
        match barrier {
            Ok(Ok(_)) => {}
            Ok(Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f)))) => return not_leader(&f),
            Ok(Err(RaftError::Fatal(_))) => return stopped(shard, limits),
            Ok(Err(e)) => return Attempt::Done(unavailable(limits, format!("cannot confirm leadership: {e}"))),
            Err(_) => return timed_out(limits),
        }
    }
    Attempt::Done(read(shard, call))
}

/// Answers a read from this replica's applied state.
fn read(shard: &Shard, call: &ShardCall) -> Response {
    let applied = shard.state.applied().borrow();
    let store = &applied.store;
    let bodies = &applied.bodies;
    let ctx = match store.get(call.context_id()) {
        Ok(c) => c,
        Err(e) => return store_error(&e),
    };
    match call {
        ShardCall::Get { .. } => Response::json(200, &ctx.summary_json()),
        ShardCall::Tail { offset, limit, .. } => {
            let body = crate::store::messages_object(ctx.tail(*offset, *limit).iter(), bodies, b"}");
            Response::raw_json(200, body)
        }
        ShardCall::Replay { from, limit, .. } => {
            let start = ctx.replay_start(*from);
            let (page, next) = ctx.replay(start, *limit);
            let tail = format!(",\"last_seq\":{},\"next_seq\":{next}}}", ctx.last_seq());
            let body = crate::store::messages_object(page.iter(), bodies, tail.as_bytes());
            Response::raw_json(200, body)
        }
        ShardCall::Window { budget, if_version, .. } => {
            if let Some(expected) = *if_version
                && expected != ctx.version
            {
                return store_error(&StoreError::Conflict { expected, found: ctx.version });
            }
            Response::raw_json(200, ctx.window_json(budget.unwrap_or(ctx.config.token_budget), bodies))
        }
        _ => Response::error(500, "internal", "not a read"),
    }
}
