//! A request body (and query string) into a shard call, for every operation that takes
//! one: a call or a 4xx answer, never a panic.
#![no_main]
use fleetlm::api::build::{CONTEXT_OPS, build_call};
use fleetlm::config::StoreLimits;
use fleetlm::http::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else { return };
    // The first byte picks the operation; up to the first newline is the query.
    let (query, body) = match rest.iter().position(|b| *b == b'\n') {
        Some(i) => (String::from_utf8_lossy(&rest[..i]).into_owned(), rest[i + 1..].to_vec()),
        None => (String::new(), rest.to_vec()),
    };
    let req = Request {
        method: "POST".into(),
        path: "/v1/contexts/x".into(),
        query,
        headers: vec![("idempotency-key".into(), "k".into())],
        body,
        close: false,
    };
    let op = CONTEXT_OPS[usize::from(selector) % CONTEXT_OPS.len()];
    if let Err(resp) = build_call(op, "x".into(), &req, &StoreLimits::default()) {
        assert!((400..500).contains(&resp.status), "{} for {:?}", resp.status, String::from_utf8_lossy(&resp.body));
    }
});
