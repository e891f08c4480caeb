//! Reads: a read barrier on the leader unless the call is local (`consistency=local`),
//! then the answer rendered from this replica's applied state; and the replica's view
//! of its Raft group (`ShardStatus`).
use std::time::{Duration, Instant};

use openraft::ReadPolicy;
use openraft::error::{LinearizableReadError, RaftError};
use openraft_rt::WatchReceiver;
use serde_json::json;

use super::{mark_stopped, not_leader, timed_out};
use std::sync::Arc;

use crate::budget::{Budget, Hold};
use crate::config::{BUDGETED_ANSWER_MIN_BYTES, ServeLimits};
use crate::raft::Shard;
use crate::raft::state_machine::Applied;
use crate::shard::call::{Reply, Served, ShardCall};
use crate::store::StoreError;
use crate::store::bodies::{Bodies, ResidentOnly};

pub(super) async fn read(
    shard: &Shard,
    call: &ShardCall,
    limits: &ServeLimits,
    answers: &Arc<Budget>,
    remaining: Duration,
) -> Served {
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
    Ok(answer_without_waiting_on_core(shard, call, limits, answers, remaining).await)
}

/// Answers from this replica's applied state without waiting for the disk on the core
/// when the context is cold (after a restart every context is), or when the read goes
/// far back in a hot context's history: its record, index
/// chunks and bodies are scattered pages that each would fault on the core, one after
/// the other, holding every other request of the core behind them. So the answer is
/// built from what is in memory (`ResidentOnly`); the pages it lacked are asked for at
/// once and awaited off the core, polling `mincore` (each round gets one level
/// further: record, then index chunks, then bodies); then it is built again. After
/// `COLD_READ_ROUNDS_MAX` rounds or `COLD_READ_WAIT_MAX_MS` (or the call's deadline),
/// it is built as before, faulting what is still missing.
async fn answer_without_waiting_on_core(
    shard: &Shard,
    call: &ShardCall,
    limits: &ServeLimits,
    answers: &Arc<Budget>,
    remaining: Duration,
) -> Reply {
    use crate::config::{COLD_READ_POLL_MAX_US, COLD_READ_POLL_MIN_US, COLD_READ_ROUNDS_MAX, COLD_READ_WAIT_MAX_MS};
    let started = Instant::now();
    let deadline = started + remaining.min(Duration::from_millis(COLD_READ_WAIT_MAX_MS));
    for round in 0..COLD_READ_ROUNDS_MAX {
        let missing = {
            let applied = shard.state.applied().borrow();
            if round == 0 && !applied.store.is_cold(call.context_id()) && !reads_old_history(&applied, call) {
                break;
            }
            let view = ResidentOnly::new(&applied.bodies);
            let reply = applied_state(&applied, &view, call, limits, answers);
            let missing = view.into_missing();
            if missing.is_empty() {
                if round > 0 {
                    crate::metrics::record_since("read.cold_wait", started);
                }
                return reply;
            }
            for r in &missing {
                applied.bodies.prefetch(*r);
            }
            missing
        };
        let mut pause = Duration::from_micros(COLD_READ_POLL_MIN_US);
        loop {
            if Instant::now() + pause > deadline {
                crate::metrics::record_since("read.cold_wait", started);
                let applied = shard.state.applied().borrow();
                return applied_state(&applied, &applied.bodies, call, limits, answers);
            }
            glommio::timer::sleep(pause).await;
            let applied = shard.state.applied().borrow();
            if missing.iter().all(|r| applied.bodies.is_resident(*r)) {
                break;
            }
            pause = (pause * 2).min(Duration::from_micros(COLD_READ_POLL_MAX_US));
        }
    }
    let applied = shard.state.applied().borrow();
    applied_state(&applied, &applied.bodies, call, limits, answers)
}

/// Whether `call` reads a hot context's history far behind its newest message (a replay
/// from early on, a tail with a large offset): those pages are likely out of memory
/// though the context is in it (`COLD_READ_HISTORY_MIN_MESSAGES`).
fn reads_old_history(applied: &Applied, call: &ShardCall) -> bool {
    let Ok(ctx) = applied.store.get(call.context_id(), &applied.bodies) else { return false };
    let behind = match call {
        ShardCall::Replay { from, .. } => ctx.last_seq().saturating_sub(ctx.replay_start(*from)),
        ShardCall::Tail { offset, .. } => *offset,
        _ => 0,
    };
    behind >= crate::config::COLD_READ_HISTORY_MIN_MESSAGES
}

/// Holds the bytes of a large answer on the node's budget before it is rendered, or
/// the 503 to send instead.
fn hold(answers: &Arc<Budget>, bytes: usize, limits: &ServeLimits) -> Result<Option<Hold>, Reply> {
    if bytes < BUDGETED_ANSWER_MIN_BYTES {
        return Ok(None);
    }
    answers.try_hold(bytes).map(Some).ok_or_else(|| {
        let why = format!(
            "this node holds {} MiB of answers that their clients have not read yet (limit {} MiB): retry shortly",
            answers.used_bytes() >> 20,
            answers.max_bytes() >> 20
        );
        Reply::unavailable(limits, why)
    })
}

/// Bytes of the stored JSON of `messages`, with a separator each.
fn page_bytes(messages: &[crate::store::Message]) -> usize {
    messages.iter().map(|m| m.json_len_bytes() + 1).sum()
}

/// Answers a read from this replica's applied state, its body at most about
/// `response_max_bytes` (tail and replay pages are cut shorter; a larger window is
/// refused), a large one held on the node's budget of unwritten answers.
fn applied_state(
    applied: &Applied,
    bodies: &dyn Bodies,
    call: &ShardCall,
    limits: &ServeLimits,
    answers: &Arc<Budget>,
) -> Reply {
    let max_bytes = limits.response_max_bytes;
    let store = &applied.store;
    let ctx = match store.get(call.context_id(), bodies) {
        Ok(c) => c,
        Err(e) => return Reply::store_error(&e),
    };
    let held = |bytes| hold(answers, bytes, limits);
    let (rendered, held) = match call {
        ShardCall::Get { .. } => return Reply::json(200, &ctx.summary_json()),
        ShardCall::Tail { offset, limit, .. } => {
            let page = match ctx.tail_within(*offset, *limit, max_bytes, bodies) {
                Ok(page) => page,
                Err(e) => return corrupt(&e),
            };
            let held = match held(page_bytes(&page)) {
                Ok(h) => h,
                Err(busy) => return busy,
            };
            (crate::store::messages_object(page.iter(), bodies, b"}"), held)
        }
        ShardCall::Replay { from, limit, .. } => {
            let start = ctx.replay_start(*from);
            let (page, next) = match ctx.replay_within(start, *limit, max_bytes, bodies) {
                Ok(page) => page,
                Err(e) => return corrupt(&e),
            };
            let held = match held(page_bytes(&page)) {
                Ok(h) => h,
                Err(busy) => return busy,
            };
            let tail = format!(",\"last_seq\":{},\"next_seq\":{next}}}", ctx.last_seq());
            (crate::store::messages_object(page.iter(), bodies, tail.as_bytes()), held)
        }
        ShardCall::Window { budget, if_version, .. } => {
            if let Some(expected) = *if_version
                && expected != ctx.version
            {
                return Reply::store_error(&StoreError::Conflict { expected, found: ctx.version });
            }
            let bytes = match ctx.window_bytes(bodies) {
                Ok(bytes) => bytes,
                Err(e) => return corrupt(&e),
            };
            if bytes > max_bytes {
                let why = format!(
                    "the window holds {bytes} bytes of messages, over the {max_bytes}-byte limit of one answer: compact \
                     it (POST /compact), or read its messages in pages (GET /messages)"
                );
                return Reply::error(413, "window_too_large", why);
            }
            let held = match held(bytes) {
                Ok(h) => h,
                Err(busy) => return busy,
            };
            (ctx.window_json(budget.unwrap_or(ctx.config.token_budget), bodies), held)
        }
        _ => return Reply::error(500, "internal", "not a read"),
    };
    match rendered {
        Ok(body) => Reply { hold: held, ..Reply::raw_json(200, body) },
        Err(e) => corrupt(&e),
    }
}

/// A message whose body or index entry is not in the body store: the shard's data is damaged.
fn corrupt(e: &crate::store::BodiesError) -> Reply {
    Reply::error(500, "internal", format!("corruption in shard data: {e}"))
}

/// One shard's Raft state as this node sees it.
pub(super) fn shard_status(shard: &Shard, id: u32) -> serde_json::Value {
    let m = shard.raft.metrics().borrow_watched().clone();
    let members: Vec<u64> = m.membership_config.membership().voter_ids().collect();
    let (contexts, hot_contexts) = {
        let applied = shard.state.applied().borrow();
        (applied.store.len(), applied.store.hot_len())
    };
    json!({
        "shard": id,
        "contexts": contexts,
        "hot_contexts": hot_contexts,
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
