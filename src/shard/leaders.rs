//! Per core, forever: counts the shards that know a leader (for `/health/ready`) and
//! spreads leadership. Each shard prefers the voter at position `shard mod voters` of
//! its sorted voter list, so leaders spread evenly over the nodes; a leader that is not
//! its shard's preferred node hands leadership over once that node has every entry
//! (openraft's transfer: the target times out at once and wins the election).
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use openraft::ServerState;
use openraft_rt::WatchReceiver;

use super::core::CoreCtx;

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

pub async fn watch_leaders(ctx: Rc<CoreCtx>) {
    let balance_every = Duration::from_millis(ctx.serve_limits.leader_balance_interval_ms);
    let mut next_balance = Instant::now() + balance_every;
    loop {
        glommio::timer::sleep(Duration::from_millis(READINESS_POLL_MS)).await;
        let with_leader = ctx
            .shards
            .values()
            .filter(|s| s.raft.metrics().borrow_watched().current_leader.is_some())
            .count();
        ctx.ready.with_leader[ctx.core].store(with_leader, Ordering::Release);
        if Instant::now() < next_balance {
            continue;
        }
        next_balance = Instant::now() + balance_every;
        for (&id, shard) in &ctx.shards {
            let m = shard.raft.metrics().borrow_watched().clone();
            if m.state != ServerState::Leader {
                continue;
            }
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            let Some(preferred) = preferred_leader(id, &voters).filter(|&p| p != ctx.node_id) else {
                continue;
            };
            // Only to a node that has everything: it must win the election at once.
            let caught_up = m
                .replication
                .as_ref()
                .and_then(|r| r.get(&preferred))
                .is_some_and(|matched| matched.as_ref().map(|l| l.index) == m.last_log_index);
            if caught_up {
                let _ = shard.raft.trigger().transfer_leader(preferred).await;
            }
        }
    }
}
