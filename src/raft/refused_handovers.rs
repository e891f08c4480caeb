//! Nodes that refused a leadership transfer, per core: written where the transfer RPC
//! fails (`super::network`), read by the leader balancer (`crate::shard::leaders`),
//! which hands such a node no shard for `LEADER_REFUSED_SKIP_MS`. A refused transfer
//! costs the shard an election (openraft's leader stops its heartbeats as soon as it
//! starts one), and a node short of disk refuses every one: without this record its
//! preferred shards changed leader every balancing round (2 s).
use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

thread_local! {
    /// Nodes that did not take leadership handed to them (or could not be asked), by when.
    static REFUSED: RefCell<HashMap<u64, Instant>> = Default::default();
}

/// Records that `node` did not take a leadership transfer.
pub fn note_leadership_refused(node: u64) {
    REFUSED.with(|r| r.borrow_mut().insert(node, Instant::now()));
}

/// Whether `node` refused a transfer within the last `LEADER_REFUSED_SKIP_MS`.
pub fn refused_recently(node: u64) -> bool {
    let skip = Duration::from_millis(crate::config::LEADER_REFUSED_SKIP_MS);
    REFUSED.with(|r| {
        let mut r = r.borrow_mut();
        r.retain(|_, at| at.elapsed() < skip);
        r.contains_key(&node)
    })
}
