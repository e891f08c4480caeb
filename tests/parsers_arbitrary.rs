//! The pure parsers take arbitrary input without a panic, and answer it with a typed
//! error (a 4xx where it reaches a client): WAL record and segment decoding, recovery's
//! scan, peer frames, and request JSON into shard calls. (HTTP framing has the same in
//! `src/http/parse.rs`.) The same properties are fuzzed with cargo-fuzz in `tests/fuzz/`
//! (nightly toolchain); these run in `cargo test` on stable.
use fleetlm::api::build::{CONTEXT_OPS, build_call};
use fleetlm::config::StoreLimits;
use fleetlm::http::Request;
use fleetlm::raft::wire::{PeerRequest, PeerResponse, read_frame};
use fleetlm::wal::{format, recovery};
use proptest::prelude::*;
use serde_json::Value;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
        "[a-z_]{0,12}".prop_map(Value::from),
        Just(Value::from("text")),
        Just(Value::from("tool_call")),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("message".to_owned()),
                    Just("role".to_owned()),
                    Just("parts".to_owned()),
                    Just("type".to_owned()),
                    Just("metadata".to_owned()),
                    Just("token_count".to_owned()),
                    Just("token_budget".to_owned()),
                    Just("policy".to_owned()),
                    Just("strategy".to_owned()),
                    Just("config".to_owned()),
                    Just("limit".to_owned()),
                    Just("replacement".to_owned()),
                    Just("if_version".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn wal_slots_and_recovery_take_any_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        offset in any::<usize>(),
        small_offset in 0usize..2100,
    ) {
        for at in [offset, small_offset, usize::MAX - 3, usize::MAX - 30] {
            if let format::Slot::Record(meta) = format::decode_slot(&bytes, at, 1 << 20) {
                let _ = format::payload_at(&bytes, at, meta.payload_len);
            }
        }
        let _ = format::decode_segment_header(&bytes);
        let _ = recovery::scan(&[(0, &bytes[..]), (1, &bytes[..])], 1 << 20);
    }

    #[test]
    fn peer_frames_take_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let mut r = futures_lite::io::Cursor::new(bytes.clone());
        let _ = futures_lite::future::block_on(read_frame::<_, PeerRequest>(&mut r, 1 << 20));
        let mut r = futures_lite::io::Cursor::new(bytes);
        let _ = futures_lite::future::block_on(read_frame::<_, PeerResponse>(&mut r, 1 << 20));
    }

    #[test]
    fn request_json_becomes_a_call_or_a_4xx(
        body in json_value(),
        raw in proptest::collection::vec(any::<u8>(), 0..64),
        query in "[a-z_=&%0-9-]{0,40}",
        op in 0usize..9,
    ) {
        for bytes in [body.to_string().into_bytes(), raw.clone()] {
            let req = Request {
                method: "POST".into(),
                path: "/v1/contexts/x".into(),
                query: query.clone(),
                headers: vec![("idempotency-key".into(), "k".into())],
                body: bytes,
                close: false,
            };
            if let Err(resp) = build_call(CONTEXT_OPS[op], "x".into(), &req, &StoreLimits::default()) {
                prop_assert!((400..500).contains(&resp.status), "{} for {:?}", resp.status, String::from_utf8_lossy(&resp.body));
            }
        }
    }
}
