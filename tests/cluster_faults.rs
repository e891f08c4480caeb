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

/// An operator's mistake that Raft cannot survive on its own: a node loses its data dir
/// and is started again under its old id. It would vote for any candidate, so a node
/// that missed an acknowledged append (down when it was made) and the wiped node, with
/// the third node down, would elect a leader without it: the append lost. Peers now know
/// each node's data dir by a random incarnation and refuse the wiped node until it joins
/// under a new id (`fleetlm::raft::known_peers`); the acknowledged append survives.
#[test]
fn a_node_wiped_and_restarted_under_its_old_id_cannot_help_lose_an_acknowledged_append() {
    let dir = tmp("wiped-node");
    let mut c = Cluster::start(dir.path(), 3, 1, &[]);
    put(&c, 0, "ledger");
    assert!(append_acked(&c, &[0], "ledger", "before", 30).is_some());
    // Node 2 has linked with both peers (their incarnations are on its disk) and has
    // the first append.
    let book = c.nodes[1].dir.join("known-peers.json");
    c.eventually(30, "node 2 knows both peers", || {
        std::fs::read_to_string(&book).is_ok_and(|s| s.contains("\"1\"") && s.contains("\"3\""))
    });
    c.eventually(30, "node 2 has the first append", || {
        messages(&c, 1, "ledger", true).is_some_and(|m| texts(&m) == ["before"])
    });

    // Node 2 down; an append acknowledged by nodes 1 and 3.
    c.kill9(1);
    assert!(append_acked(&c, &[0, 2], "ledger", "acknowledged", 60).is_some(), "nodes 1 and 3 are a quorum");
    // Node 3 loses its data dir and comes back under its old id; node 1 goes down.
    c.kill9(2);
    std::fs::remove_dir_all(&c.nodes[2].dir).unwrap();
    c.spawn(2);
    c.kill9(0);
    // Node 2 (without the append) comes back: with node 3's vote it would lead.
    c.spawn(1);
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut answered = 0;
    while Instant::now() < deadline {
        for i in [1, 2] {
            if let Some(m) = messages(&c, i, "ledger", false) {
                answered += 1;
                assert!(
                    texts(&m).contains(&"acknowledged".to_string()),
                    "node {} answered a linearizable read without the acknowledged append: {:?}",
                    i + 1,
                    texts(&m)
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(answered, 0, "nodes 2 and 3 alone have no leader");
    assert!(c.log(1).contains("now runs on another data dir"), "node 2 says why:\n{}", c.log(1));
    assert!(c.log(2).contains("the peer refused this node's data dir"), "node 3 says why:\n{}", c.log(2));

    // Node 1 returns: nodes 1 and 2 lead, with the append; node 3 stays cut off.
    c.spawn(0);
    c.eventually(60, "the acknowledged append is read through node 2", || {
        messages(&c, 1, "ledger", false).is_some_and(|m| texts(&m) == ["before", "acknowledged"])
    });
    assert!(
        messages(&c, 2, "ledger", true).is_none_or(|m| m.len() < 2),
        "node 3 was not replicated to under its old id"
    );
}
