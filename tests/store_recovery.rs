//! Recovery of the state machine's data equals the state of a prefix of the log, then
//! the same state: snapshots (incremental checkpoints of the contexts into the body
//! store: bases, deltas, rebases, a failed one; contexts evicted from memory after each)
//! taken at any points, a crash that loses or keeps any part of what was written after
//! the last one (the body store is cut back to the snapshot's length at open), and the
//! log after the snapshot applied again give exactly the contexts, message indexes,
//! idempotency keys, reads and bytes of a run that never crashed. The message index, the
//! keys and the checkpoints live in the body store (`fleetlm::store::message_log`,
//! `idempotency`, `checkpoint`), so this is their crash test; the body store's own
//! durability (sync before the index that names it) is tested in tests/raft_bodies.rs.
use fleetlm::config::StoreLimits;
use fleetlm::store::{Bodies, BodyRef, Command, MemBodies, NewMessage, PutContext, Store, checkpoint};
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
        let Ok(ctx) = store.get(&format!("c{c}"), bodies) else {
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

/// A checkpoint in flight: what `Store::take_changed` gave at log position `at`, already
/// encoded; the state machine appends it after an await, while applies go on, and a
/// rebase's copies of unchanged records in slices with applies between them.
struct Capture {
    at: usize,
    rebase: bool,
    encoded: Option<Vec<(String, Vec<u8>)>>,
    slices: std::collections::VecDeque<Vec<(String, BodyRef)>>,
    writer: checkpoint::Writer,
}

fn capture(store: &mut Store, at: usize, rebase: bool) -> Capture {
    let cp = store.take_changed(rebase);
    Capture {
        at,
        rebase,
        encoded: Some(checkpoint::encode_all(&cp.changed).unwrap()),
        // Two records per slice at most (records here are tens of bytes), so that
        // applies land between slices.
        slices: checkpoint::copy_slices(cp.unchanged, 96).into(),
        writer: checkpoint::Writer::default(),
    }
}

impl Capture {
    /// One batch as the state machine appends it between two awaits: the encoded
    /// records first, then one slice of copies.
    fn step(&mut self, bodies: &mut MemBodies) {
        if let Some(encoded) = self.encoded.take() {
            self.writer.append(encoded, bodies).unwrap();
        } else if let Some(slice) = self.slices.pop_front() {
            let copies: Vec<_> = slice.into_iter().map(|(id, r)| (id, bodies.get(r).unwrap().to_vec())).collect();
            self.writer.append(copies, bodies).unwrap();
        }
    }
}

/// The rest of a checkpoint as the state machine does it (`src/raft/state_machine.rs`):
/// the batches not appended yet and the directory chunks, the directory extended (or
/// restarted), and once durable (at once here) the records marked, the ranges a rebase
/// made dead released (overwritten with bytes nothing decodes, so a read of them fails
/// the test) and all but one context evicted, so that later commands and reads meet
/// cold contexts. Returns the snapshot: the directory, the body length and the log
/// position captured.
fn complete(
    mut c: Capture,
    store: &mut Store,
    bodies: &mut MemBodies,
    directory: &mut Vec<BodyRef>,
    extents: &mut checkpoint::Extents,
) -> (Vec<BodyRef>, u64, usize) {
    while c.encoded.is_some() || !c.slices.is_empty() {
        c.step(bodies);
    }
    let appended = c.writer.finish(bodies).unwrap();
    if c.rebase {
        directory.clear();
    }
    directory.extend(appended.chunks);
    extents.written(&appended.ranges, c.rebase);
    store.checkpointed(&appended.written);
    for (from, to) in std::mem::take(&mut extents.dead) {
        bodies.scrub(from, to);
    }
    store.evict(1, u64::MAX);
    (directory.clone(), bodies.len(), c.at)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    /// With incremental checkpoints (a base, deltas, a failed one, rebases; completed at
    /// once or after more commands were applied) as the snapshot: loading the last one
    /// and re-applying the log after its capture gives the state of the run that went
    /// on without crashing (exactly, when nothing was applied during the checkpoint).
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
        let mut extents = checkpoint::Extents::default();
        let mut snapshot = None;
        let mut in_flight: Option<(Capture, usize)> = None;
        let mut outcomes = Vec::new();
        let mut next = at.iter().peekable();
        for (i, cmd) in log.iter().enumerate() {
            if in_flight.as_ref().is_some_and(|(_, done_at)| *done_at == i) {
                let (c, _) = in_flight.take().unwrap();
                snapshot = Some((complete(c, &mut store, &mut bodies, &mut directory, &mut extents), false));
            }
            while let Some(&&(k, kind)) = next.peek() && k == i {
                next.next();
                if in_flight.is_some() {
                    continue; // one build at a time, as openraft runs them
                }
                match kind {
                    // A checkpoint that failed after taking the changed contexts.
                    0 => { store.take_changed(false); store.checkpoint_failed(); }
                    1 => snapshot = Some((complete(capture(&mut store, i, true), &mut store, &mut bodies, &mut directory, &mut extents), true)),
                    2 => snapshot = Some((complete(capture(&mut store, i, false), &mut store, &mut bodies, &mut directory, &mut extents), true)),
                    // Completed after `kind` more commands were applied.
                    _ => in_flight = Some((capture(&mut store, i, kind == 5), i + kind as usize)),
                }
            }
            // A batch of the checkpoint in flight, then this command.
            if let Some((c, _)) = in_flight.as_mut() {
                c.step(&mut bodies);
            }
            outcomes.push(store.apply(cmd.clone(), &mut bodies).unwrap());
        }
        let Some(((dir, len, k), exact)) = snapshot else { return Ok(()) };
        // A checkpoint still in flight at the end wrote some of its batches after the
        // snapshot: bytes a recovery does not write again.
        let exact = exact && in_flight.is_none();
        // The crashed run wrote what the reference wrote (apply is deterministic), and a
        // part of what followed the snapshot reached the disk.
        let mut crashed_bodies = bodies.clone();
        crashed_bodies.truncate(len + ((bodies.len() - len) as f64 * kept_after_crash) as u64);
        // Open: the body store cut back to the snapshot's length, the store loaded from
        // the checkpoint directory, the log after the capture applied again.
        crashed_bodies.truncate(len);
        let mut recovered = checkpoint::load(&dir, limits(), &crashed_bodies).unwrap();
        for (cmd, outcome) in log[k..].iter().zip(&outcomes[k..]) {
            let again = recovered.apply(cmd.clone(), &mut crashed_bodies).unwrap();
            prop_assert_eq!(&again, outcome, "a re-applied command answers as the first time");
        }
        // What was applied while a checkpoint was in flight is written again after it,
        // at other offsets: then only what a client sees is equal.
        if exact {
            prop_assert_eq!(crashed_bodies.len(), bodies.len(), "the same bytes were written again");
            for c in 0..CONTEXTS {
                let id = format!("c{c}");
                let (got, want) = (recovered.get(&id, &crashed_bodies).ok(), store.get(&id, &bodies).ok());
                prop_assert_eq!(got.as_deref(), want.as_deref(), "context {}", id);
            }
        }
        prop_assert_eq!(reads(&recovered, &crashed_bodies), reads(&store, &bodies));
        // And both equal a store that never checkpointed nor evicted anything (the
        // checkpoints, evictions and cold reads change nothing a client sees).
        let (mut plain, mut plain_bodies) = (Store::new(limits()), MemBodies::default());
        for (cmd, outcome) in log.iter().zip(&outcomes) {
            let first = plain.apply(cmd.clone(), &mut plain_bodies).unwrap();
            prop_assert_eq!(&first, outcome);
        }
        prop_assert_eq!(reads(&plain, &plain_bodies), reads(&store, &bodies));
    }
}
