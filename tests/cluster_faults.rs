//! Real 3-node clusters under the faults that bench/faults.sh found mishandled: a node
//! that answers nothing (paused) is neither handed leadership nor waited on by forwards.
mod common;

use std::time::{Duration, Instant};

use common::cluster::{Cluster, append_acked, leaders, messages, put, texts, tmp};
use common::msg_body;

/// Waits until the shards' leaders are spread over all three nodes, then returns the
/// index of the node leading the shard of context `id` (the tests' clusters have 4 shards).
fn balanced_leader_of(c: &Cluster, id: &str) -> usize {
    let shard = fleetlm::shard::placement::shard_of(id, 4) as usize;
    let mut leader = None;
    c.eventually(30, "shard leaders balanced", || {
        let l = leaders(c, 0);
        leader = l[shard];
        l.iter().filter_map(|x| *x).collect::<std::collections::BTreeSet<_>>().len() == 3
    });
    leader.expect("a leader") as usize - 1
}

/// Found by bench/faults.sh: the leader balancer handed a shard back to its preferred
/// node while that node answered nothing (cut off or paused, yet close behind by entry
/// count), and the shard had no leader until the next election, every balance interval.
#[test]
fn a_node_that_answers_nothing_is_not_handed_leadership() {
    let dir = tmp("paused-preferred");
    let c = Cluster::start(dir.path(), 3, 1, &[]);
    // Wait until leaders are spread (each shard on its preferred node), then pause the
    // leader of the shard of context "p".
    put(&c, 0, "p");
    let paused = balanced_leader_of(&c, "p");
    let others: Vec<usize> = (0..3).filter(|&i| i != paused).collect();
    c.signal(paused, true);
    // Failover: the first append through the others that is acknowledged.
    assert!(append_acked(&c, &others, "p", "after failover", 30).is_some(), "no failover");
    // Then, for more than two balance intervals (2 s each), every append succeeds at once.
    let until = Instant::now() + Duration::from_secs(5);
    let mut failures = Vec::new();
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let node = others[n % 2];
        match c.req(node, "POST", "/v1/contexts/p/messages", &msg_body(&format!("m{n}"))) {
            Some(r) if r.status == 201 => {}
            other => failures.push(other.map(|r| (r.status, String::from_utf8_lossy(&r.body).into_owned()))),
        }
    }
    c.signal(paused, false);
    assert!(
        failures.is_empty(),
        "{} of {n} appends failed while node {} was paused: {failures:?}",
        failures.len(),
        paused + 1
    );
}

/// Found by bench/faults.sh: a write forwarded to a leader that stopped answering
/// waited for the whole deadline, then said "did not answer", although this node had
/// long heard of the new leader. It now answers as soon as it does (503, outcome
/// unknown: the old leader may have logged the entry), and the retry goes to the new one.
#[test]
fn a_write_forwarded_to_a_silent_leader_is_answered_once_another_leads() {
    let dir = tmp("silent-leader");
    let c = Cluster::start(dir.path(), 3, 1, &[]);
    put(&c, 0, "s");
    let silent = balanced_leader_of(&c, "s");
    let via = (silent + 1) % 3;
    c.signal(silent, true);
    // Sent at once: this node still takes the paused node for the leader and forwards.
    let r = c
        .req_h(via, "POST", "/v1/contexts/s/messages", &[("Idempotency-Key", "k-silent")], &msg_body("k-silent"))
        .expect("an answer");
    let body = String::from_utf8_lossy(&r.body).into_owned();
    c.signal(silent, false);
    match r.status {
        // The election was faster than the forward (the paused node had not been asked yet).
        201 => {}
        503 => assert!(body.contains("lost the shard's leadership"), "{body}"),
        other => panic!("{other}: {body}"),
    }
    // The retry with the same key is acknowledged once, whatever the first outcome was.
    assert!(append_acked(&c, &[via], "s", "k-silent", 30).is_some());
    let all = messages(&c, via, "s", false).expect("readable");
    assert_eq!(texts(&all), vec!["k-silent".to_owned()], "appended exactly once");
}
