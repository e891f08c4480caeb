//! Per core, forever: counts the shards that know a leader (for `/health/ready`) and
//! spreads leadership. Each shard prefers the voter at position `shard mod voters` of
//! its sorted voter list, so leaders spread evenly over the nodes; a leader that is not
//! its shard's preferred node hands leadership over once that node is close behind
//! (openraft's transfer: the target catches up, times out at once and wins the election).
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openraft::ServerState;
use openraft_rt::WatchReceiver;

use super::core::CoreCtx;
use crate::raft::refused_handovers::refused_recently;

/// How often readiness is refreshed.
const READINESS_POLL_MS: u64 = 100;

/// The node shard `shard` prefers as its leader.
pub fn preferred_leader(shard: u32, voters: &[u64]) -> Option<u64> {
    if voters.is_empty() {
        return None;
    }
    let mut sorted = voters.to_vec();
    sorted.sort_unstable();
    Some(sorted[shard as usize % sorted.len()])
}

/// Whether the shard has a leader that this node hears from: this node, acknowledged
/// by a quorum within `stale_after`, or another node whose heartbeat renewed this
/// replica's vote within it. (A known leader id alone can be a dead node's.) A renewal
/// must come after the replica opened: openraft marks the vote it loads at start as
/// renewed then, and a restarted follower that took that for a heartbeat counted as
/// ready (and, before `WalLogStore::recovery_bound`, as caught up: a local read
/// answered 9 of 100 acknowledged messages after a restart).
async fn has_live_leader(shard: &crate::raft::Shard, me: u64, stale_after: Duration) -> bool {
    // Asking the core first: a core stopped by a fatal error answers nothing (its last
    // metrics would still name a leader).
    let vote_modified = match shard.raft.with_raft_state(|st| st.vote_last_modified()).await {
        Ok(t) => t,
        Err(_) => {
            shard.mark_stopped();
            return false;
        }
    };
    let m = shard.raft.metrics().borrow_watched().clone();
    let Some(leader) = m.current_leader else {
        return false;
    };
    let fresh = |t: Option<Instant>| t.is_some_and(|t| t.elapsed() < stale_after);
    if leader == me {
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        return voters == [me] || fresh(m.last_quorum_acked.map(|t| *t));
    }
    fresh(vote_modified) && vote_modified.is_some_and(|t| t > shard.opened_at)
}

pub async fn watch_leaders(ctx: Rc<CoreCtx>) {
    let stale_after = Duration::from_millis(ctx.serve_limits.leader_stale_after_ms);
    let balance_every = Duration::from_millis(ctx.serve_limits.leader_balance_interval_ms);
    let mut next_balance = Instant::now() + balance_every;
    loop {
        glommio::timer::sleep(Duration::from_millis(READINESS_POLL_MS)).await;
        ctx.heal_stopped_shards().await;
        let (mut with_leader, mut stopped) = (0, 0);
        for (_, shard) in ctx.shards() {
            if !shard.stopped.get() && has_live_leader(&shard, ctx.node_id, stale_after).await {
                with_leader += 1;
                // Local reads of a restarted replica wait for this (`Shard::caught_up`).
                shard.note_live_leader();
            }
            stopped += usize::from(shard.stopped.get());
        }
        let shards = ctx.shards();
        if shards.iter().all(|(_, s)| s.caught_up()) {
            for (_, shard) in &shards {
                shard.prewarm_once();
            }
        }
        ctx.ready.with_leader[ctx.core].store(with_leader, Ordering::Release);
        ctx.ready.stopped[ctx.core].store(stopped, Ordering::Release);
        if Instant::now() < next_balance {
            continue;
        }
        next_balance = Instant::now() + balance_every;
        // A leader short of disk refuses every write of its shards (`crate::shard::disk`):
        // it hands them to other voters. (A stopping one does so from `node::stop_when_asked`.)
        let leaving = ctx.disk_refusal().is_some();
        hand_over_leadership(&ctx, leaving, stale_after).await;
    }
}

/// For each shard this node leads: hands leadership to its preferred node if that is
/// another one close behind, or, `leaving`, to any other voter close behind (the
/// preferred one first).
async fn hand_over_leadership(ctx: &CoreCtx, leaving: bool, stale_after: Duration) {
    for (id, shard) in ctx.shards() {
        let m = shard.raft.metrics().borrow_watched().clone();
        if m.state != ServerState::Leader || shard.stopped.get() {
            continue;
        }
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        // Only to a node that answers now and is close behind (under load nobody is
        // ever exactly caught up): the target waits until it holds the leader's last
        // entry, then wins the election at once. A node that stopped answering (cut
        // off, paused) may still be close behind by count: handing it the shard
        // would leave the shard without a leader until an election (found by
        // bench/faults.sh: a partitioned node took its shards back every 2 s).
        let lag_max = ctx.serve_limits.leader_transfer_lag_max_entries;
        let answers = |node: u64| {
            m.heartbeat.as_ref().and_then(|h| h.get(&node)).and_then(|t| t.as_ref()).is_some_and(|t| {
                let acked: Instant = **t;
                acked.elapsed() < stale_after
            })
        };
        let caught_up = |node: u64| {
            answers(node)
                && !refused_recently(node)
                && m.replication.as_ref().and_then(|r| r.get(&node)).is_some_and(|matched| {
                    let matched = matched.as_ref().map_or(0, |l| l.index + 1);
                    m.last_log_index.map_or(0, |i| i + 1).saturating_sub(matched) <= lag_max
                })
        };
        let target = if leaving {
            let others: Vec<u64> = voters.iter().copied().filter(|&v| v != ctx.node_id).collect();
            preferred_leader(id, &others)
                .filter(|&p| caught_up(p))
                .or_else(|| others.into_iter().find(|&v| caught_up(v)))
        } else {
            preferred_leader(id, &voters).filter(|&p| p != ctx.node_id && caught_up(p))
        };
        if let Some(target) = target {
            let _ = shard.raft.trigger().transfer_leader(target).await;
        }
    }
}

/// For a stopping node (`crate::shutdown`): hands the shards it leads to other voters
/// close behind at once, and again every `LEADER_HANDOFF_RETRY_MS` while it still leads
/// any, so that their writes go on without an election timeout after it exits. (Its RPC
/// handler refuses replication meanwhile, so that no new leader hands a shard back.) A
/// node alone in its shards' membership has no one to hand them to.
pub async fn hand_over_leadership_until_exit(ctx: Rc<CoreCtx>) {
    let stale_after = Duration::from_millis(ctx.serve_limits.leader_stale_after_ms);
    loop {
        hand_over_leadership(&ctx, true, stale_after).await;
        glommio::timer::sleep(Duration::from_millis(crate::config::LEADER_HANDOFF_RETRY_MS)).await;
    }
}
