//! Recovery of the state machine's data equals the state of a prefix of the log, then
//! the same state: a snapshot taken at any point (the store encoded, the body store's
//! length), a crash that loses or keeps any part of what was written after it (the body
//! store is cut back to the snapshot's length at open), and the log after the snapshot
//! applied again give exactly the contexts, message indexes, idempotency keys and reads
//! of a run that never crashed. The message index and the keys live in the body store
//! (`fleetlm::store::message_log`, `fleetlm::store::idempotency`), so this is their
//! crash test; the body store's own durability (sync before the index that names it) is
//! tested in tests/raft_bodies.rs.
use fleetlm::config::StoreLimits;
use fleetlm::store::{BodyRef, Command, CompactionHistory, MemBodies, NewMessage, PutContext, Store, checkpoint};
use proptest::prelude::*;
use serde_json::json;

const NOW: &str = "2026-12-01T12:00:00.000000Z";
const CONTEXTS: u8 = 4;

fn limits() -> StoreLimits {
    StoreLimits { idempotency_keys_per_context: 5, ..StoreLimits::default() }
}

#[derive(Debug, Clone)]
enum Op {
    Put {
        ctx: u8,
        policy: u8,
    },
    /// `count` appends in a row (long logs: the index's inner levels).
    Append {
        ctx: u8,
        count: u8,
        tool: bool,
        key: Option<u8>,
    },
    Compact {
        ctx: u8,
    },
    Delete {
        ctx: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0..CONTEXTS, 0u8..3).prop_map(|(ctx, policy)| Op::Put { ctx, policy }),
        8 => (0..CONTEXTS, prop_oneof![1u8..3, 20u8..90], any::<bool>(), proptest::option::of(0u8..12))
            .prop_map(|(ctx, count, tool, key)| Op::Append { ctx, count, tool, key }),
        1 => (0..CONTEXTS).prop_map(|ctx| Op::Compact { ctx }),
        1 => (0..CONTEXTS).prop_map(|ctx| Op::Delete { ctx }),
    ]
}

fn message(n: usize, tool: bool) -> NewMessage {
    let part =
        if tool { json!({"type": "tool_call", "name": "f"}) } else { json!({"type": "text", "text": n.to_string()}) };
    NewMessage::from_json(&json!({"role": "user", "parts": [part], "token_count": 3}), true, &limits()).unwrap()
}

/// The commands of `ops`, in log order.
fn commands(ops: &[Op]) -> Vec<Command> {
    let id = |c: u8| format!("c{c}");
    let now = NOW.to_owned();
    let mut out = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op.clone() {
            Op::Put { ctx, policy } => {
                let policy = match policy {
                    0 => json!({"strategy": "manual"}),
                    1 => json!({"strategy": "last_n", "config": {"limit": 5}}),
                    _ => json!({"strategy": "skip_parts", "config": {"limit": 5, "skip_kinds": ["tool"]}}),
                };
                let body = json!({"token_budget": 20, "trigger_ratio": 0.5, "policy": policy, "status": "active"});
                out.push(Command::Put {
                    id: id(ctx),
                    put: PutContext::from_json(&body, &limits()).unwrap(),
                    now: now.clone(),
                });
            }
            Op::Append { ctx, count, tool, key } => {
                for k in 0..count as usize {
                    out.push(Command::Append {
                        id: id(ctx),
                        message: message(i * 1000 + k, tool && k % 2 == 0),
                        if_version: None,
                        // Repeated keys: retries answered from the remembered outcome.
                        idempotency_key: key.map(|key| format!("key-{}", (key as usize + k) % 12)),
                        now: now.clone(),
                    });
                }
            }
            Op::Compact { ctx } => out.push(Command::Compact {
                id: id(ctx),
                replacement: vec![message(0, false), message(1, true)],
                if_version: None,
                now: now.clone(),
            }),
            Op::Delete { ctx } => out.push(Command::Delete { id: id(ctx), now: now.clone() }),
        }
    }
    out
}

/// Every context's state and every read of it, as JSON text.
fn reads(store: &Store, bodies: &MemBodies) -> Vec<String> {
    let mut out = Vec::new();
    for c in 0..CONTEXTS {
        let Ok(ctx) = store.get(&format!("c{c}")) else {
            out.push("absent".into());
            continue;
        };
        out.push(ctx.summary_json().to_string());
        let (all, next) = ctx.replay(1, usize::MAX, bodies).unwrap();
        let texts: Vec<&[u8]> = all.iter().map(|m| m.json_bytes(bodies).unwrap()).collect();
        out.push(format!("{next} {}", texts.iter().map(|t| String::from_utf8_lossy(t)).collect::<Vec<_>>().join(",")));
        out.push(String::from_utf8(ctx.window_json(20, bodies).unwrap()).unwrap());
        out.push(ctx.window_bytes(bodies).unwrap().to_string());
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn recovery_from_any_snapshot_and_any_crash_gives_the_state_of_the_run_that_never_crashed(
        ops in proptest::collection::vec(op(), 1..40),
        snapshot_at in 0.0f64..1.0,
        kept_after_crash in 0.0f64..1.0,
    ) {
        let log = commands(&ops);
        let k = (log.len() as f64 * snapshot_at) as usize;
        // The run that never crashed.
        let (mut store, mut bodies) = (Store::new(limits()), MemBodies::default());
        let mut outcomes = Vec::new();
        for cmd in &log {
            outcomes.push(store.apply(cmd.clone(), &mut bodies).unwrap());
        }
        // The run that snapshots after entry k, writes on, and crashes.
        let (mut crashed, mut crashed_bodies) = (Store::new(limits()), MemBodies::default());
        for cmd in &log[..k] {
            let _ = crashed.apply(cmd.clone(), &mut crashed_bodies).unwrap();
        }
        let histories: Vec<(String, CompactionHistory)> =
            crashed.histories().into_iter().map(|(id, h)| (id.to_owned(), h.clone())).collect();
        let snapshot = (postcard::to_stdvec(&crashed).unwrap(), crashed_bodies.len());
        for cmd in &log[k..] {
            let _ = crashed.apply(cmd.clone(), &mut crashed_bodies).unwrap();
        }
        // The crash: some of the bytes written after the snapshot reached the disk.
        let written_after = crashed_bodies.len() - snapshot.1;
        crashed_bodies.truncate(snapshot.1 + (written_after as f64 * kept_after_crash) as u64);
        drop(crashed);
        // Open: the body store cut back to the snapshot's length, the store decoded, the
        // log after the snapshot applied again.
        crashed_bodies.truncate(snapshot.1);
        let mut recovered = postcard::from_bytes::<Store>(&snapshot.0).unwrap().with_limits(limits());
        recovered.restore_histories(Some(histories));
        for (cmd, outcome) in log[k..].iter().zip(&outcomes[k..]) {
            let again = recovered.apply(cmd.clone(), &mut crashed_bodies).unwrap();
            prop_assert_eq!(&again, outcome, "a re-applied command answers as the first time");
        }
        for c in 0..CONTEXTS {
            let id = format!("c{c}");
            prop_assert_eq!(recovered.get(&id).ok(), store.get(&id).ok(), "context {}", id);
        }
        prop_assert_eq!(reads(&recovered, &crashed_bodies), reads(&store, &bodies));
        prop_assert_eq!(crashed_bodies.len(), bodies.len(), "the same bytes were written again");
    }
}

/// A checkpoint as the state machine takes one (`src/raft/state_machine.rs`): the
/// changed contexts (all of them on a rebase) written to the body store, the directory
/// extended (or restarted); returns the snapshot: the directory and the body length.
fn take_checkpoint(
    store: &mut Store,
    bodies: &mut MemBodies,
    directory: &mut Vec<BodyRef>,
    rebase: bool,
) -> (Vec<BodyRef>, u64) {
    let changed = store.take_changed(rebase);
    let chunks = checkpoint::append(checkpoint::encode_all(&changed).unwrap(), bodies).unwrap();
    if rebase {
        directory.clear();
    }
    directory.extend(chunks);
    (directory.clone(), bodies.len())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    /// With incremental checkpoints (a base, deltas, a failed one, rebases) as the
    /// snapshot: loading the last one and re-applying the log after it gives exactly
    /// the state of the run that went on without crashing.
    #[test]
    fn recovery_from_incremental_checkpoints_gives_the_state_of_the_run_that_never_crashed(
        ops in proptest::collection::vec(op(), 1..40),
        points in proptest::collection::vec((0.0f64..1.0, 0u8..6), 1..5),
        kept_after_crash in 0.0f64..1.0,
    ) {
        let log = commands(&ops);
        let mut at: Vec<(usize, u8)> = points.iter().map(|(p, kind)| ((log.len() as f64 * p) as usize, *kind)).collect();
        at.sort();
        let (mut store, mut bodies) = (Store::new(limits()), MemBodies::default());
        let mut directory = Vec::new();
        let mut snapshot = None;
        let mut outcomes = Vec::new();
        let mut next = at.iter().peekable();
        for (i, cmd) in log.iter().enumerate() {
            while let Some(&&(k, kind)) = next.peek() && k == i {
                next.next();
                match kind {
                    // A checkpoint that failed after taking the changed contexts.
                    0 => { store.take_changed(false); store.checkpoint_failed(); }
                    1 => snapshot = Some((take_checkpoint(&mut store, &mut bodies, &mut directory, true), i)),
                    _ => snapshot = Some((take_checkpoint(&mut store, &mut bodies, &mut directory, false), i)),
                }
            }
            outcomes.push(store.apply(cmd.clone(), &mut bodies).unwrap());
        }
        let Some(((dir, len), k)) = snapshot else { return Ok(()) };
        // The crashed run wrote what the reference wrote (apply is deterministic), and a
        // part of what followed the snapshot reached the disk.
        let mut crashed_bodies = bodies.clone();
        crashed_bodies.truncate(len + ((bodies.len() - len) as f64 * kept_after_crash) as u64);
        // Open: the body store cut back to the snapshot's length, the store loaded from
        // the checkpoint directory, the log after the snapshot applied again.
        crashed_bodies.truncate(len);
        let mut recovered = checkpoint::load(&dir, limits(), &crashed_bodies).unwrap();
        for (cmd, outcome) in log[k..].iter().zip(&outcomes[k..]) {
            let again = recovered.apply(cmd.clone(), &mut crashed_bodies).unwrap();
            prop_assert_eq!(&again, outcome, "a re-applied command answers as the first time");
        }
        for c in 0..CONTEXTS {
            let id = format!("c{c}");
            prop_assert_eq!(recovered.get(&id).ok(), store.get(&id).ok(), "context {}", id);
        }
        prop_assert_eq!(reads(&recovered, &crashed_bodies), reads(&store, &bodies));
        prop_assert_eq!(crashed_bodies.len(), bodies.len(), "the same bytes were written again");
    }
}
