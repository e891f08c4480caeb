//! Membership changes of one shard's group, on the replica that leads it: adding a
//! node (a learner until it has caught up, then a voter) and removing one.
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use openraft_rt::WatchReceiver;
use serde_json::json;

use super::propose::write_failed;
use super::timed_out;
use crate::config::ServeLimits;
use crate::raft::Shard;
use crate::shard::call::{Reply, Served};

/// Adds node `node_id` at peer address `addr`: as a learner, then, once it holds
/// (nearly) all of the leader's log, as a voter.
pub(super) async fn add(shard: &Shard, node_id: u64, addr: &str, limits: &ServeLimits, remaining: Duration) -> Served {
    let deadline = Instant::now() + remaining;
    let node = BasicNode { addr: addr.to_owned() };
    // Adding a learner is a membership change too: it waits for an earlier one the
    // same way (seen in CI: a POST right after a leader change inherited an
    // uncommitted membership entry and answered 503).
    let learner = ChangeMembers::AddNodes(std::collections::BTreeMap::from([(node_id, node)]));
    if let Err(failed) = change(shard, learner, deadline, limits).await {
        return failed;
    }
    // openraft's blocking add waits only until the learner is within
    // `replication_lag_threshold` entries, which an empty node that nobody can reach
    // already is on a young log. Promote only a node that has acknowledged (nearly)
    // all of the leader's log.
    let target = shard.raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
    let lag_max = limits.leader_transfer_lag_max_entries;
    let caught_up = shard
        .raft
        .wait(Some(deadline.saturating_duration_since(Instant::now())))
        .metrics(
            |m| {
                let matched = m.replication.as_ref().and_then(|r| r.get(&node_id)).and_then(|l| l.as_ref());
                matched.is_some_and(|l| l.index + lag_max >= target)
            },
            "the new node has caught up",
        )
        .await;
    if caught_up.is_err() {
        let why = format!("node {node_id} ({addr}) did not catch up within the deadline; it stays a learner");
        return Ok(Reply::unavailable(limits, why));
    }
    let voters = BTreeSet::from([node_id]);
    if let Err(failed) = change(shard, ChangeMembers::AddVoterIds(voters), deadline, limits).await {
        return failed;
    }
    Ok(Reply::json(200, &json!({"node_id": node_id, "voter": true})))
}

/// Removes node `node_id`: a voter leaves the group entirely (retain = false); a
/// learner (say, one that never caught up) is dropped from the nodes.
pub(super) async fn remove(shard: &Shard, node_id: u64, limits: &ServeLimits, remaining: Duration) -> Served {
    let ids = BTreeSet::from([node_id]);
    let is_voter =
        shard.raft.metrics().borrow_watched().membership_config.membership().voter_ids().any(|v| v == node_id);
    let members = if is_voter { ChangeMembers::RemoveVoters(ids) } else { ChangeMembers::RemoveNodes(ids) };
    if let Err(failed) = change(shard, members, Instant::now() + remaining, limits).await {
        return failed;
    }
    Ok(Reply::json(200, &json!({"node_id": node_id, "removed": true})))
}

/// Proposes a membership change, waiting (until `deadline`) while an earlier change is
/// still being committed: right after another change, or after a leader change that
/// inherited an uncommitted one, openraft refuses with `InProgress` — nothing was
/// proposed, so trying again is safe. Seen as a flaky 503 for a DELETE that followed
/// a POST of members. A failure comes back as the answer to send.
async fn change(
    shard: &Shard,
    members: ChangeMembers<u64, BasicNode>,
    deadline: Instant,
    limits: &ServeLimits,
) -> Result<(), Served> {
    let pause = Duration::from_millis(limits.leader_retry_pause_ms);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match crate::raft::runtime::timeout(remaining, shard.raft.change_membership(members.clone(), false)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_),
            )))) if remaining > pause => {
                glommio::timer::sleep(pause).await;
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                // Refused before anything was proposed (found by schemathesis: removing
                // the only voter answered 503 "outcome unknown").
                return Err(Ok(match e {
                    ChangeMembershipError::InProgress(_) => Reply::unavailable(
                        limits,
                        format!("another membership change is still being committed: retry ({e})"),
                    ),
                    e => Reply::error(409, "conflict", format!("the membership change was refused: {e}")),
                }));
            }
            Ok(Err(e)) => return Err(write_failed(limits, e)),
            Err(_) => return Err(timed_out(limits)),
        }
    }
}
