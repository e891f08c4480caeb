//! The context store: the state-machine logic behind the API, called directly.
use fleetlm::config::StoreLimits;
use fleetlm::store::{Command, Context, MemBodies, NewMessage, Outcome, PutContext, ReplayFrom, Store, StoreError};
use proptest::prelude::*;
use serde_json::{Value, json};

const NOW: &str = "2026-11-27T12:00:00.000000Z";

/// A store with its bodies in memory.
struct S {
    store: Store,
    bodies: MemBodies,
}

impl S {
    fn new(limits: StoreLimits) -> S {
        S { store: Store::new(limits), bodies: MemBodies::default() }
    }
    fn apply(&mut self, cmd: Command) -> Result<Outcome, StoreError> {
        self.store.apply(cmd, &mut self.bodies).expect("in-memory bodies do not fail")
    }
    fn get(&self, id: &str) -> Result<std::borrow::Cow<'_, Context>, StoreError> {
        self.store.get(id, &self.bodies)
    }
    fn window(&self, id: &str, budget: u64) -> Value {
        serde_json::from_slice(&self.store.get(id, &self.bodies).unwrap().window_json(budget, &self.bodies).unwrap())
            .expect("the window is JSON")
    }
}

fn limits() -> StoreLimits {
    StoreLimits::default()
}

fn put(store: &mut S, id: &str, body: Value) -> Result<Outcome, StoreError> {
    let put = PutContext::from_json(&body, &limits()).map_err(StoreError::InvalidConfig)?;
    store.apply(Command::Put { id: id.into(), put, now: NOW.into() })
}

fn msg(text: &str) -> NewMessage {
    NewMessage::from_json(&json!({"role":"user","parts":[{"type":"text","text":text}]}), false, &limits()).unwrap()
}

fn append(
    store: &mut S,
    id: &str,
    m: NewMessage,
    if_version: Option<u64>,
    key: Option<&str>,
) -> Result<Outcome, StoreError> {
    store.apply(Command::Append {
        id: id.into(),
        message: m,
        if_version,
        idempotency_key: key.map(str::to_owned),
        now: NOW.into(),
    })
}

fn appended(o: Result<Outcome, StoreError>) -> (u64, u64, u64) {
    match o {
        Ok(Outcome::Appended(a)) => (a.seq, a.version, a.token_estimate),
        other => panic!("expected an append, got {other:?}"),
    }
}

#[test]
fn put_creates_then_replaces_config_but_keeps_log_metadata_and_status() {
    let mut s = S::new(limits());
    let created = put(
        &mut s,
        "c",
        json!({"token_budget": 1000, "trigger_ratio": 0.5,
        "policy": {"strategy":"last_n","config":{"limit":3}}, "metadata": {"a": 1}}),
    );
    assert!(matches!(created, Ok(Outcome::Summary { created: true, .. })));
    appended(append(&mut s, "c", msg("hi"), None, None));
    // A second PUT without trigger_ratio/policy/metadata/status.
    let Ok(Outcome::Summary { created: false, summary }) = put(&mut s, "c", json!({"token_budget": 2000})) else {
        panic!("update")
    };
    assert_eq!(summary["token_budget"], 2000);
    assert_eq!(summary["trigger_ratio"], 0.7, "omitted trigger_ratio goes back to its default");
    assert_eq!(summary["policy"]["strategy"], "manual", "omitted policy goes back to manual");
    assert_eq!(summary["metadata"], json!({"a": 1}), "metadata kept when the body has none");
    assert_eq!(summary["status"], "active");
    assert_eq!((summary["version"].as_u64(), summary["last_seq"].as_u64()), (Some(1), Some(1)));
}

#[test]
fn invalid_configs_are_refused_before_they_reach_the_state_machine() {
    for body in [
        json!({}),
        json!({"token_budget": 0}),
        json!({"token_budget": 1000.0}),
        json!({"token_budget": 10, "trigger_ratio": 0}),
        json!({"token_budget": 10, "trigger_ratio": 1.5}),
        json!({"token_budget": 10, "policy": {"strategy": "nope"}}),
        json!({"token_budget": 10, "policy": {"strategy": "last_n"}}),
        json!({"token_budget": 10, "policy": {"strategy": "last_n", "config": {"limit": 0}}}),
        json!({"token_budget": 10, "policy": {"strategy": "skip_parts", "config": {"limit": 2, "skip_kinds": [1]}}}),
        json!({"token_budget": 10, "metadata": []}),
        json!({"token_budget": 10, "status": "gone"}),
    ] {
        assert!(PutContext::from_json(&body, &limits()).is_err(), "{body}");
    }
}

#[test]
fn appends_get_contiguous_seqs_and_the_version_guard_reports_both_versions() {
    let mut s = S::new(limits());
    put(&mut s, "c", json!({"token_budget": 100000})).unwrap();
    for i in 1..=5 {
        assert_eq!(appended(append(&mut s, "c", msg("How do I deploy this?"), None, None)), (i, i, 6));
    }
    assert_eq!(appended(append(&mut s, "c", msg("x"), Some(5), None)).0, 6);
    let err = append(&mut s, "c", msg("x"), Some(5), None).unwrap_err();
    assert_eq!(err, StoreError::Conflict { expected: 5, found: 6 });
    assert_eq!(err.to_string(), "Context version changed (expected 5, found 6)");
    assert_eq!((err.status(), err.code()), (409, "conflict"));
    assert_eq!(append(&mut s, "nope", msg("x"), None, None).unwrap_err(), StoreError::NotFound);
}

#[test]
fn idempotent_retries_return_the_first_outcome_and_append_nothing() {
    let mut s = S::new(limits());
    put(&mut s, "c", json!({"token_budget": 100000})).unwrap();
    let first = appended(append(&mut s, "c", msg("hello"), Some(0), Some("k1")));
    assert_eq!(first, (1, 1, 2));
    // The retry's guard is stale because its own first attempt succeeded: still the first result.
    assert_eq!(appended(append(&mut s, "c", msg("hello"), Some(0), Some("k1"))), first);
    assert_eq!(s.get("c").unwrap().last_seq(), 1);
    // Keys are per context; a different key appends.
    assert_eq!(appended(append(&mut s, "c", msg("hello"), None, Some("k2"))).0, 2);
    // A refused first attempt is replayed as refused.
    let refused = append(&mut s, "c", msg("x"), Some(99), Some("k3")).unwrap_err();
    assert_eq!(append(&mut s, "c", msg("x"), None, Some("k3")).unwrap_err(), refused);
}

#[test]
fn idempotency_memory_is_bounded() {
    let mut s = S::new(StoreLimits { idempotency_keys_per_context: 3, ..limits() });
    put(&mut s, "c", json!({"token_budget": 100000})).unwrap();
    for k in 0..4 {
        append(&mut s, "c", msg("m"), None, Some(&format!("k{k}"))).unwrap();
    }
    // k0 was evicted: the retry appends again; k3 is remembered.
    assert_eq!(appended(append(&mut s, "c", msg("m"), None, Some("k0"))).0, 5);
    assert_eq!(appended(append(&mut s, "c", msg("m"), None, Some("k3"))).0, 4);
}

#[test]
fn tombstoned_contexts_refuse_writes_keep_reads_and_revive_by_put() {
    let mut s = S::new(limits());
    put(&mut s, "c", json!({"token_budget": 1000})).unwrap();
    append(&mut s, "c", msg("a"), None, None).unwrap();
    assert_eq!(s.apply(Command::Delete { id: "c".into(), now: NOW.into() }), Ok(Outcome::Deleted));
    assert_eq!(s.apply(Command::Delete { id: "c".into(), now: NOW.into() }), Ok(Outcome::Deleted), "idempotent");
    assert_eq!(s.apply(Command::Delete { id: "x".into(), now: NOW.into() }), Err(StoreError::NotFound));
    assert_eq!(append(&mut s, "c", msg("b"), None, None).unwrap_err(), StoreError::Tombstoned);
    let compact = Command::Compact { id: "c".into(), replacement: vec![], if_version: None, now: NOW.into() };
    assert_eq!(s.apply(compact), Err(StoreError::Tombstoned));
    assert_eq!(s.get("c").unwrap().tail(0, 10, &s.bodies).unwrap().len(), 1, "reads keep working");
    assert_eq!(s.get("c").unwrap().version, 1, "tombstoning does not move the version");
    put(&mut s, "c", json!({"token_budget": 1000, "status": "active"})).unwrap();
    assert_eq!(appended(append(&mut s, "c", msg("b"), None, None)).0, 2);
}

#[test]
fn last_n_policy_trims_the_window_not_the_log() {
    let mut s = S::new(limits());
    // Budget 10 × 0.5: crossing at > 5 tokens; each "abcd" message is 1 token.
    put(
        &mut s,
        "c",
        json!({"token_budget": 10, "trigger_ratio": 0.5, "policy": {"strategy":"last_n","config":{"limit":2}}}),
    )
    .unwrap();
    for _ in 0..6 {
        append(&mut s, "c", msg("abcd"), None, None).unwrap();
    }
    let ctx = s.get("c").unwrap();
    let w = s.window("c", 10);
    assert_eq!(w["messages"].as_array().unwrap().len(), 2);
    assert_eq!(w["segments"], json!([{"type":"live","from_seq":5,"to_seq":6}]));
    assert_eq!(w["metadata"], json!({"strategy":"last_n","limit":2}));
    assert_eq!(ctx.last_seq(), 6, "the raw log keeps everything");
    assert_eq!(ctx.version, 6, "policy trims do not move the version");
}

#[test]
fn skip_parts_drops_tool_messages_then_keeps_the_newest() {
    let mut s = S::new(limits());
    put(
        &mut s,
        "c",
        json!({"token_budget": 4, "trigger_ratio": 1.0, "policy": {"strategy":"skip_parts","config":{"limit":3}}}),
    )
    .unwrap();
    let tool = NewMessage::from_json(
        &json!({"role":"assistant","parts":[{"type":"tool_call","x":1}],"token_count":1}),
        false,
        &limits(),
    )
    .unwrap();
    append(&mut s, "c", msg("a"), None, None).unwrap(); // 1
    append(&mut s, "c", tool, None, None).unwrap(); // 2
    append(&mut s, "c", msg("b"), None, None).unwrap(); // 3
    append(&mut s, "c", msg("c"), None, None).unwrap(); // 4
    append(&mut s, "c", msg("d"), None, None).unwrap(); // 5 → 5 tokens > 4: trim
    let w = s.window("c", 4);
    let seqs: Vec<u64> = w["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![3, 4, 5]);
    assert_eq!(w["needs_compaction"], false);
}

/// Bodies that count the reads made of them.
#[derive(Default)]
struct CountingBodies {
    inner: MemBodies,
    reads: std::cell::Cell<u64>,
}

impl fleetlm::store::Bodies for CountingBodies {
    fn append(&mut self, json: &[u8]) -> Result<fleetlm::store::BodyRef, fleetlm::store::BodiesError> {
        self.inner.append(json)
    }
    fn get(&self, r: fleetlm::store::BodyRef) -> Result<&[u8], fleetlm::store::BodiesError> {
        self.reads.set(self.reads.get() + 1);
        self.inner.get(r)
    }
}

/// Regression (issue #12): a skip_parts context whose messages were all skipped made
/// every append walk the whole window again, O(n) per append on every replica. Each
/// append now reads a bounded number of bodies, however long the log.
#[test]
fn skip_parts_appends_cost_bounded_reads_when_every_message_is_skipped() {
    let mut store = Store::new(limits());
    let mut bodies = CountingBodies::default();
    let put = PutContext::from_json(
        &json!({"token_budget": 4, "trigger_ratio": 1.0, "policy": {"strategy":"skip_parts","config":{"limit":100000}}}),
        &limits(),
    )
    .unwrap();
    store.apply(Command::Put { id: "c".into(), put, now: NOW.into() }, &mut bodies).unwrap().unwrap();
    let tool = || {
        NewMessage::from_json(
            &json!({"role":"assistant","parts":[{"type":"tool_call","x":1}],"token_count":1}),
            false,
            &limits(),
        )
        .unwrap()
    };
    let mut most_reads = 0;
    for i in 0..4000u64 {
        let before = bodies.reads.get();
        let cmd = Command::Append {
            id: "c".into(),
            message: tool(),
            if_version: None,
            idempotency_key: None,
            now: NOW.into(),
        };
        let done = store.apply(cmd, &mut bodies).unwrap().unwrap();
        assert!(matches!(done, Outcome::Appended(ref a) if a.seq == i + 1), "{done:?}");
        if i >= 100 {
            most_reads = most_reads.max(bodies.reads.get() - before);
        }
    }
    // Each append reads its own message's parts (to skip it) and the message index's
    // chunks on the way (they are in the body store too: a few levels); a walk of the
    // window would read thousands by the end.
    assert!(most_reads <= 16, "an append read {most_reads} bodies");
    let per_append = bodies.reads.get() as f64 / 4000.0;
    assert!(per_append <= 4.0, "{per_append} reads per append on average");
    let w: Value = serde_json::from_slice(&store.get("c", &bodies).unwrap().window_json(4, &bodies).unwrap()).unwrap();
    let kept = w["messages"].as_array().unwrap().len();
    assert_eq!(kept, 0, "every message is skipped: {kept} kept");
}

#[test]
fn manual_policy_flags_compaction_and_compact_replaces_the_window() {
    let mut s = S::new(limits());
    put(&mut s, "c", json!({"token_budget": 10, "trigger_ratio": 0.5})).unwrap();
    for _ in 0..6 {
        append(&mut s, "c", msg("abcd"), None, None).unwrap();
    }
    let w = s.window("c", 10);
    assert_eq!((w["token_count"].as_u64(), w["needs_compaction"].as_bool()), (Some(6), Some(true)));
    assert_eq!(s.window("c", 100)["needs_compaction"], false, "budget_tokens override");
    let summary = NewMessage::from_json(
        &json!({"role":"system","parts":[{"type":"text","text":"summary"}],"seq":3}),
        true,
        &limits(),
    )
    .unwrap();
    let stale =
        Command::Compact { id: "c".into(), replacement: vec![summary.clone()], if_version: Some(5), now: NOW.into() };
    assert_eq!(s.apply(stale), Err(StoreError::Conflict { expected: 5, found: 6 }));
    let ok = Command::Compact { id: "c".into(), replacement: vec![summary], if_version: Some(6), now: NOW.into() };
    assert_eq!(s.apply(ok), Ok(Outcome::Compacted { version: 7 }));
    append(&mut s, "c", msg("new"), None, None).unwrap();
    let ctx = s.get("c").unwrap();
    let w = s.window("c", 10);
    assert_eq!(w["segments"], json!([{"type":"summary","count":1},{"type":"live","from_seq":7,"to_seq":7}]));
    assert_eq!(w["messages"][0]["seq"], 3, "a replacement keeps its given seq");
    assert_eq!((ctx.version, ctx.last_seq()), (8, 7), "version = last_seq + compactions");
    assert_eq!(ctx.replay(1, 100, &s.bodies).unwrap().0.len(), 7, "the raw log is untouched");
}

#[test]
fn tail_and_replay_pages() {
    let mut s = S::new(limits());
    put(&mut s, "c", json!({"token_budget": 100000})).unwrap();
    for i in 1..=10 {
        append(&mut s, "c", msg(&format!("m{i}")), None, None).unwrap();
    }
    let ctx = s.get("c").unwrap();
    let seqs = |ms: &[fleetlm::store::Message]| ms.iter().map(|m| m.seq.unwrap()).collect::<Vec<_>>();
    assert_eq!(seqs(&ctx.tail(0, 3, &s.bodies).unwrap()), vec![8, 9, 10]);
    assert_eq!(seqs(&ctx.tail(2, 3, &s.bodies).unwrap()), vec![6, 7, 8]);
    assert_eq!(seqs(&ctx.tail(9, 3, &s.bodies).unwrap()), vec![1]);
    assert!(ctx.tail(10, 3, &s.bodies).unwrap().is_empty(), "empty means the start of history");
    assert_eq!(ctx.replay_start(ReplayFrom::FromSeq(-3)), 8);
    assert_eq!(ctx.replay_start(ReplayFrom::FromSeq(-50)), 1);
    assert_eq!(ctx.replay_start(ReplayFrom::FromSeq(0)), 1);
    assert_eq!(ctx.replay_start(ReplayFrom::AfterSeq(4)), 5);
    let (page, next) = ctx.replay(4, 3, &s.bodies).unwrap();
    assert_eq!((seqs(&page), next), (vec![4, 5, 6], 7));
    let (page, next) = ctx.replay(9, 100, &s.bodies).unwrap();
    assert_eq!((seqs(&page), next), (vec![9, 10], 11));
    let (page, next) = ctx.replay(50, 100, &s.bodies).unwrap();
    assert_eq!((page.len(), next), (0, 11));
}

#[test]
fn message_validation() {
    let l = limits();
    for bad in [
        json!({"parts": []}),
        json!({"role": "", "parts": []}),
        json!({"role": "user"}),
        json!({"role": "user", "parts": [{"text": "no type"}]}),
        json!({"role": "user", "parts": ["str"]}),
        json!({"role": "user", "parts": [], "metadata": 1}),
        json!({"role": "user", "parts": [], "token_count": -1}),
        json!({"role": "user", "parts": [], "token_count": 1.5}),
        json!("not an object"),
    ] {
        assert!(NewMessage::from_json(&bad, false, &l).is_err(), "{bad}");
    }
    let ok = NewMessage::from_json(&json!({"role":"user","parts":[],"token_count":null}), false, &l).unwrap();
    assert_eq!(ok.token_count, 0);
}

#[derive(Debug, Clone)]
enum Op {
    Append(u8, Option<u8>),
    Compact(u8),
    Delete,
    Revive,
}

proptest! {
    /// Whatever the sequence: seqs contiguous from 1, no duplicates, version = last_seq +
    /// compactions, the window token count matches its messages, and apply never panics.
    #[test]
    fn invariants_hold_under_random_commands(ops in proptest::collection::vec(prop_oneof![
        4 => (any::<u8>(), proptest::option::of(0u8..20)).prop_map(|(n, k)| Op::Append(n, k)),
        1 => any::<u8>().prop_map(Op::Compact),
        1 => Just(Op::Delete),
        1 => Just(Op::Revive),
    ], 1..120)) {
        let mut s = S::new(limits());
        put(&mut s, "c", json!({"token_budget": 50, "trigger_ratio": 0.5, "policy": {"strategy":"last_n","config":{"limit":4}}})).unwrap();
        let (mut last_seq, mut compactions, mut tombstoned) = (0u64, 0u64, false);
        let mut keys = std::collections::HashMap::new();
        for op in ops {
            match op {
                Op::Append(n, key) => {
                    let key = key.map(|k| format!("k{k}"));
                    let out = append(&mut s, "c", msg(&"y".repeat(n as usize)), None, key.as_deref());
                    match (&key, key.as_ref().and_then(|k| keys.get(k))) {
                        (Some(_), Some(first)) => prop_assert_eq!(&out, first),
                        _ => {
                            if tombstoned {
                                prop_assert_eq!(&out, &Err(StoreError::Tombstoned));
                            } else {
                                last_seq += 1;
                                let (seq, version, _) = appended(out.clone());
                                prop_assert_eq!((seq, version), (last_seq, last_seq + compactions));
                            }
                            if let Some(k) = key { keys.insert(k, out); }
                        }
                    }
                }
                Op::Compact(n) => {
                    let cmd = Command::Compact { id: "c".into(), replacement: vec![msg(&"z".repeat(n as usize))], if_version: None, now: NOW.into() };
                    let out = s.apply(cmd);
                    if tombstoned { prop_assert_eq!(out, Err(StoreError::Tombstoned)); } else { compactions += 1; prop_assert!(out.is_ok()); }
                }
                Op::Delete => { s.apply(Command::Delete { id: "c".into(), now: NOW.into() }).unwrap(); tombstoned = true; }
                Op::Revive => { put(&mut s, "c", json!({"token_budget": 50, "trigger_ratio": 0.5, "status": "active", "policy": {"strategy":"last_n","config":{"limit":4}}})).unwrap(); tombstoned = false; }
            }
            let ctx = s.get("c").unwrap();
            prop_assert_eq!(ctx.last_seq(), last_seq);
            prop_assert_eq!(ctx.version, last_seq + compactions);
            let all = ctx.replay(1, usize::MAX, &s.bodies).unwrap().0.iter().map(|m| m.seq.unwrap()).collect::<Vec<_>>();
            prop_assert_eq!(all, (1..=last_seq).collect::<Vec<_>>());
            let w = s.window("c", 50);
            let listed: u64 = w["messages"].as_array().unwrap().iter().map(|m| m["token_count"].as_u64().unwrap()).sum();
            prop_assert_eq!(w["token_count"].as_u64().unwrap(), listed);
        }
    }
}

/// The stored JSON of a message is byte for byte what a `json!` map renders (sorted
/// keys, serde_json's escaping): bodies written before and after the renderer changed
/// must read back the same, and replays hand the stored bytes out as they are.
#[test]
fn stored_message_json_is_the_sorted_key_rendering() {
    let mut m = MemBodies::default();
    let input = json!({
        "role": "assistant",
        "parts": [{"type": "text", "text": "é \"quoted\" \u{1F600}\n"}, {"type": "tool_call", "args": {"b": 1, "a": [true, null]}}],
        "metadata": {"z": 1, "a": {"nested": "x"}},
        "token_count": 7
    });
    let new = NewMessage::from_json(&input, false, &limits()).unwrap();
    let expected = json!({
        "seq": 3,
        "role": input["role"],
        "parts": input["parts"],
        "metadata": input["metadata"],
        "token_count": 7,
        "inserted_at": NOW,
    })
    .to_string();
    let stored = fleetlm::store::Message::new(Some(3), new, Some(NOW.to_owned()), &mut m).unwrap();
    assert_eq!(stored.json(&m).unwrap(), expected);

    let replacement = NewMessage::from_json(&json!({"role": "system", "parts": []}), true, &limits()).unwrap();
    let stored = fleetlm::store::Message::new(None, replacement, None, &mut m).unwrap();
    assert_eq!(
        stored.json(&m).unwrap(),
        r#"{"inserted_at":null,"metadata":{},"parts":[],"role":"system","seq":null,"token_count":0}"#
    );
}

/// Contexts leave memory by weight as well as by count: with room for 1000 contexts but
/// 100 KB of records, after a checkpoint at most one of three contexts that each hold
/// 60 KB of metadata stays in memory (the most recently used), and the small ones stay.
/// Counted alone, 20,000 contexts with 64 KiB of metadata each would have stayed in
/// memory per shard.
#[test]
fn heavy_contexts_leave_memory_by_the_bytes_of_their_records() {
    let mut s = S::new(limits());
    let heavy = json!({"token_budget": 1000, "metadata": {"blob": "x".repeat(60_000)}});
    for id in ["h1", "h2", "h3"] {
        put(&mut s, id, heavy.clone()).unwrap();
    }
    for id in ["s1", "s2"] {
        put(&mut s, id, json!({"token_budget": 1000})).unwrap();
    }
    // h3 is the most recently used heavy one.
    appended(append(&mut s, "h3", msg("latest"), None, None));
    let cp = s.store.take_changed(true);
    let encoded = fleetlm::store::checkpoint::encode_all(&cp.changed).unwrap();
    let written = fleetlm::store::checkpoint::append(encoded, cp.unchanged, &mut s.bodies).unwrap().written;
    s.store.checkpointed(&written);
    assert_eq!(s.store.hot_len(), 5);
    assert_eq!(s.store.evict(1000, u64::MAX), 0, "no limit reached");
    assert_eq!(s.store.evict(1000, 100_000), 2, "two heavy ones leave");
    assert_eq!(s.store.hot_len(), 3);
    // The heavy ones read the same from their records.
    for id in ["h1", "h2", "h3"] {
        assert_eq!(s.get(id).unwrap().metadata["blob"].as_str().map(str::len), Some(60_000), "{id}");
    }
    assert_eq!(s.get("h3").unwrap().last_seq(), 1);
    // And the count limit still applies on its own.
    assert_eq!(s.store.evict(1, u64::MAX), 2);
    assert_eq!(s.store.hot_len(), 1);
}
