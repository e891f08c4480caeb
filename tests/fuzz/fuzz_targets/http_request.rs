//! HTTP/1.1 framing (head, Content-Length and chunked bodies, extensions, trailers) on
//! arbitrary bytes: never a panic; every error is a 4xx; and parsing the same bytes as
//! they arrive in two pieces (through one `ParseState`) gives what one parse gives.
#![no_main]
use fleetlm::config::HttpLimits;
use fleetlm::http::parse::{ParseState, Parsed, parse_request, parse_request_with};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, wire)) = data.split_first() else { return };
    // Small limits, so that the fuzzer reaches them.
    let limits = HttpLimits { head_max_bytes: 512, body_max_bytes: 256, ..HttpLimits::default() };
    let whole = parse_request(wire, &limits);
    if let Err(e) = &whole {
        assert!((400..500).contains(&e.status()), "{e:?} is not a 4xx");
    }
    let cut = usize::from(cut) % (wire.len() + 1);
    let mut state = ParseState::default();
    let pieces = match parse_request_with(&wire[..cut], &limits, &mut state) {
        Ok(Parsed::Partial | Parsed::ExpectsContinue) if cut < wire.len() => {
            parse_request_with(wire, &limits, &mut state)
        }
        other => other,
    };
    assert_eq!(pieces, whole, "in two pieces cut at {cut}");
});
