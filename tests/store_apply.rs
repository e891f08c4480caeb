//! Apply is total: for every command that passed validation it neither panics nor fails,
//! whatever the values (token counts near u64::MAX, every policy, metadata at its limit,
//! more contexts than a shard may hold). `cargo test` builds with overflow checks, so an
//! arithmetic overflow in apply is a panic here.
use fleetlm::config::StoreLimits;
use fleetlm::store::{Command, MemBodies, NewMessage, Outcome, PutContext, Store, StoreError};
use proptest::prelude::*;
use serde_json::{Value, json};

const NOW: &str = "2026-12-01T12:00:00.000000Z";

fn limits() -> StoreLimits {
    StoreLimits { contexts_max_per_shard: 3, metadata_max_bytes: 200, ..StoreLimits::default() }
}

#[derive(Debug, Clone)]
enum Op {
    Put { ctx: u8, budget: u64, policy: u8 },
    Append { ctx: u8, tokens: u64, kind: u8, key: Option<u8> },
    Compact { ctx: u8, tokens: u64 },
    Patch { ctx: u8, key: u8, len: u8 },
    Delete { ctx: u8 },
}

fn tokens() -> impl Strategy<Value = u64> {
    prop_oneof![0u64..100, Just(u64::MAX), Just(u64::MAX - 1), Just(u64::MAX / 2 + 1), any::<u64>()]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (0u8..5, prop_oneof![1u64..200, Just(u64::MAX)], 0u8..3).prop_map(|(ctx, budget, policy)| Op::Put { ctx, budget, policy }),
        5 => (0u8..5, tokens(), 0u8..3, proptest::option::of(0u8..4)).prop_map(|(ctx, tokens, kind, key)| Op::Append { ctx, tokens, kind, key }),
        1 => (0u8..5, tokens()).prop_map(|(ctx, tokens)| Op::Compact { ctx, tokens }),
        1 => (0u8..5, 0u8..6, any::<u8>()).prop_map(|(ctx, key, len)| Op::Patch { ctx, key, len }),
        1 => (0u8..5).prop_map(|ctx| Op::Delete { ctx }),
    ]
}

fn message(tokens: u64, kind: u8) -> NewMessage {
    let part = match kind {
        0 => json!({"type": "text", "text": "t"}),
        1 => json!({"type": "tool_call", "name": "f"}),
        _ => json!({"type": "reasoning", "text": "r"}),
    };
    let v = json!({"role": "user", "parts": [part], "token_count": tokens});
    NewMessage::from_json(&v, true, &limits()).expect("valid message")
}

fn command(op: &Op) -> Option<Command> {
    let id = |c: u8| format!("c{c}");
    let now = NOW.to_owned();
    Some(match op.clone() {
        Op::Put { ctx, budget, policy } => {
            let policy = match policy {
                0 => json!({"strategy": "manual"}),
                1 => json!({"strategy": "last_n", "config": {"limit": 3}}),
                _ => json!({"strategy": "skip_parts", "config": {"limit": 3, "skip_kinds": ["tool"]}}),
            };
            let put = PutContext::from_json(&json!({"token_budget": budget, "policy": policy}), &limits()).ok()?;
            Command::Put { id: id(ctx), put, now }
        }
        Op::Append { ctx, tokens, kind, key } => Command::Append {
            id: id(ctx),
            message: message(tokens, kind),
            if_version: None,
            idempotency_key: key.map(|k| format!("k{k}")),
            now,
        },
        Op::Compact { ctx, tokens } => Command::Compact {
            id: id(ctx),
            replacement: vec![message(tokens, 0), message(tokens, 1)],
            if_version: None,
            now,
        },
        Op::Patch { ctx, key, len } => {
            let mut patch = serde_json::Map::new();
            let value = if len % 7 == 0 { Value::Null } else { Value::String("x".repeat(len as usize)) };
            patch.insert(format!("m{key}"), value);
            Command::PatchMetadata { id: id(ctx), patch, now }
        }
        Op::Delete { ctx } => Command::Delete { id: id(ctx), now },
    })
}

proptest! {
    #[test]
    fn apply_is_total_for_valid_commands(ops in proptest::collection::vec(op(), 1..150)) {
        let mut store = Store::new(limits());
        let mut bodies = MemBodies::default();
        for op in &ops {
            let Some(cmd) = command(op) else { continue };
            let out = store.apply(cmd, &mut bodies).expect("in-memory bodies do not fail");
            match out {
                Ok(_) | Err(StoreError::NotFound | StoreError::Tombstoned | StoreError::InvalidMetadata(_)) => {}
                Err(StoreError::TooManyContexts { max }) => prop_assert_eq!(max, 3),
                Err(e) => prop_assert!(false, "unexpected refusal {e:?} for {op:?}"),
            }
            prop_assert!(store.len() <= 3);
        }
        for c in 0..5u8 {
            let Ok(ctx) = store.get(&format!("c{c}"), &bodies) else { continue };
            prop_assert!(Value::Object(ctx.metadata.clone()).to_string().len() <= 200);
            let window: Value = serde_json::from_slice(&ctx.window_json(u64::MAX, &bodies).unwrap()).unwrap();
            let listed = window["messages"].as_array().unwrap().iter()
                .map(|m| m["token_count"].as_u64().unwrap())
                .fold(0u64, u64::saturating_add);
            prop_assert_eq!(window["token_count"].as_u64().unwrap(), listed);
        }
    }
}

#[test]
fn a_patch_past_the_metadata_limit_changes_nothing_and_says_why() {
    let mut store = Store::new(limits());
    let mut bodies = MemBodies::default();
    let put = PutContext::from_json(&json!({"token_budget": 10}), &limits()).unwrap();
    store.apply(Command::Put { id: "a".into(), put, now: NOW.into() }, &mut bodies).unwrap().unwrap();
    let patch = |v: &str| {
        let mut m = serde_json::Map::new();
        m.insert("k".into(), json!(v));
        Command::PatchMetadata { id: "a".into(), patch: m, now: NOW.into() }
    };
    assert!(matches!(store.apply(patch("small"), &mut bodies).unwrap(), Ok(Outcome::Summary { .. })));
    let refused = store.apply(patch(&"x".repeat(300)), &mut bodies).unwrap().unwrap_err();
    assert_eq!(refused.code(), "invalid_metadata");
    assert!(refused.to_string().contains("over the limit of 200"), "{refused}");
    assert_eq!(store.get("a", &bodies).unwrap().metadata["k"], "small");
    // And a PUT whose metadata alone is over the limit is refused before it is proposed.
    let big = json!({"token_budget": 10, "metadata": {"k": "x".repeat(300)}});
    assert!(PutContext::from_json(&big, &limits()).unwrap_err().contains("over the limit of 200"));
}

/// The window as the policies define it, computed naively over a plain list (the
/// model): on crossing `budget × ratio`, drop skip-kind messages (skip_parts), then the
/// oldest until at most `limit` remain. The store keeps it incrementally; they must agree.
#[derive(Debug, Clone)]
enum WOp {
    Append {
        tokens: u64,
        tool: bool,
    },
    Compact {
        n: u8,
        tool: bool,
    },
    Policy(u8),
    /// Through a snapshot's encoding and back (the derived statistics are rebuilt).
    Reload,
}

fn policy_json(p: u8) -> Value {
    match p % 3 {
        0 => json!({"strategy": "manual"}),
        1 => json!({"strategy": "last_n", "config": {"limit": 4}}),
        _ => json!({"strategy": "skip_parts", "config": {"limit": 4, "skip_kinds": ["tool"]}}),
    }
}

proptest! {
    #[test]
    fn the_incremental_window_equals_the_naive_one(ops in proptest::collection::vec(prop_oneof![
        6 => (0u64..30, any::<bool>()).prop_map(|(tokens, tool)| WOp::Append { tokens, tool }),
        1 => (0u8..4, any::<bool>()).prop_map(|(n, tool)| WOp::Compact { n, tool }),
        1 => any::<u8>().prop_map(WOp::Policy),
        1 => Just(WOp::Reload),
    ], 1..200)) {
        let mut store = Store::new(StoreLimits::default());
        let mut bodies = MemBodies::default();
        let (budget, ratio) = (40u64, 0.5);
        let put = |p: u8| {
            let body = json!({"token_budget": budget, "trigger_ratio": ratio, "policy": policy_json(p)});
            Command::Put { id: "w".into(), put: PutContext::from_json(&body, &StoreLimits::default()).unwrap(), now: NOW.into() }
        };
        store.apply(put(0), &mut bodies).unwrap().unwrap();
        let mut policy = 0u8;
        // The model: (seq or None for a summary message, tokens, tool) in window order.
        let mut window: Vec<(Option<u64>, u64, bool)> = Vec::new();
        let mut seq = 0u64;
        for op in ops {
            match op {
                WOp::Append { tokens, tool } => {
                    seq += 1;
                    store.apply(Command::Append { id: "w".into(), message: msg_of(tokens, tool), if_version: None, idempotency_key: None, now: NOW.into() }, &mut bodies).unwrap().unwrap();
                    window.push((Some(seq), tokens, tool));
                    let total: u64 = window.iter().map(|m| m.1).sum();
                    if total as f64 > budget as f64 * ratio && policy % 3 != 0 {
                        if policy % 3 == 2 {
                            window.retain(|m| !m.2);
                        }
                        while window.len() > 4 {
                            window.remove(0);
                        }
                    }
                }
                WOp::Compact { n, tool } => {
                    let replacement: Vec<NewMessage> = (0..n).map(|_| msg_of(3, tool)).collect();
                    store.apply(Command::Compact { id: "w".into(), replacement, if_version: None, now: NOW.into() }, &mut bodies).unwrap().unwrap();
                    window = (0..n).map(|_| (None, 3, tool)).collect();
                }
                WOp::Policy(p) => {
                    policy = p;
                    store.apply(put(p), &mut bodies).unwrap().unwrap();
                }
                WOp::Reload => {
                    // As a snapshot and a restart do: a checkpoint, then the store loaded from it.
                    let cp = store.take_changed(true);
                    let encoded = fleetlm::store::checkpoint::encode_all(&cp.changed).unwrap();
                    let appended = fleetlm::store::checkpoint::append(encoded, cp.unchanged, &mut bodies).unwrap();
                    store = fleetlm::store::checkpoint::load(&appended.chunks, StoreLimits::default(), &bodies).unwrap();
                }
            }
            let ctx = store.get("w", &bodies).unwrap();
            let got: Value = serde_json::from_slice(&ctx.window_json(budget, &bodies).unwrap()).unwrap();
            let got_msgs: Vec<(Option<u64>, u64)> = got["messages"].as_array().unwrap().iter()
                .map(|m| (m["seq"].as_u64(), m["token_count"].as_u64().unwrap())).collect();
            let want: Vec<(Option<u64>, u64)> = window.iter().map(|m| (m.0, m.1)).collect();
            prop_assert_eq!(&got_msgs, &want);
            prop_assert_eq!(got["token_count"].as_u64().unwrap(), window.iter().map(|m| m.1).sum::<u64>());
            prop_assert_eq!(ctx.window_bytes(&bodies).unwrap(), got["messages"].as_array().unwrap().iter().map(|m| m.to_string().len()).sum::<usize>());
        }
    }
}

fn msg_of(tokens: u64, tool: bool) -> NewMessage {
    let part = if tool { json!({"type": "tool_result", "x": 1}) } else { json!({"type": "text", "text": "t"}) };
    NewMessage::from_json(
        &json!({"role": "user", "parts": [part], "token_count": tokens}),
        true,
        &StoreLimits::default(),
    )
    .unwrap()
}
