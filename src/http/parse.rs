//! HTTP/1.1 request framing on httparse. Pure: bytes in, a request (and how many bytes
//! it took) or "need more" or an error out. No I/O, so it is tested (and fuzzable)
//! directly.
//!
//! - The head is at most `head_max_bytes` (431 beyond), with at most `headers_max`
//!   headers.
//! - The body is framed by `Content-Length` or `Transfer-Encoding: chunked` (both at once,
//!   or conflicting lengths, is a 400: request smuggling), at most `body_max_bytes` (413).
//! - Every error means the stream cannot be resynchronised: the caller answers with
//!   the error's status and closes the connection.
use crate::config::{HTTP_HEADERS_MAX_CAP, HttpLimits};

/// A parsed request. The path and query are still percent-encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// HTTP/1.0, or `Connection: close`.
    pub close: bool,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

/// Why a request cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("request head larger than {0} bytes")]
    HeadTooLarge(usize),
    #[error("more than {0} request headers")]
    TooManyHeaders(usize),
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(usize),
    #[error("malformed request: {0}")]
    Malformed(String),
}

impl ParseError {
    pub fn status(&self) -> u16 {
        match self {
            ParseError::HeadTooLarge(_) | ParseError::TooManyHeaders(_) => 431,
            ParseError::BodyTooLarge(_) => 413,
            ParseError::Malformed(_) => 400,
        }
    }
    pub fn code(&self) -> &'static str {
        match self {
            ParseError::HeadTooLarge(_) | ParseError::TooManyHeaders(_) => "headers_too_large",
            ParseError::BodyTooLarge(_) => "payload_too_large",
            ParseError::Malformed(_) => "bad_request",
        }
    }
}

/// Outcome of trying to parse the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A request and the number of bytes it occupied.
    Complete(Request, usize),
    /// The buffer holds only part of a request.
    Partial,
    /// The head is complete and asks `Expect: 100-continue`; the body has not arrived:
    /// the client waits for a `100 Continue` before sending it.
    ExpectsContinue,
}

fn malformed(s: impl Into<String>) -> ParseError {
    ParseError::Malformed(s.into())
}

/// How the body of a request is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
}

/// A complete head: the request without its body, and what the body needs.
#[derive(Debug)]
struct Head {
    request: Request,
    len: usize,
    framing: Framing,
    /// HTTP/1.1 with `Expect: 100-continue`.
    expect_continue: bool,
}

/// What an earlier, partial parse of the same buffer found, so that the next one goes
/// on from there instead of from byte 0: the head once it is complete, and the chunks
/// decoded so far. Without it a body arriving in small pieces cost a re-parse of
/// everything buffered per read (one slow client held its core for seconds).
#[derive(Debug, Default)]
pub struct ParseState {
    head: Option<Head>,
    chunked: ChunkedState,
}

/// Parses one request from the front of `buf`.
pub fn parse_request(buf: &[u8], limits: &HttpLimits) -> Result<Parsed, ParseError> {
    parse_request_with(buf, limits, &mut ParseState::default())
}

/// Parses one request from the front of `buf`, going on from `state`, which must come
/// from earlier calls on the same buffer (grown only at its end since). After a complete
/// request or an error the state is fresh again.
pub fn parse_request_with(buf: &[u8], limits: &HttpLimits, state: &mut ParseState) -> Result<Parsed, ParseError> {
    if state.head.is_none() {
        match parse_head(buf, limits) {
            Ok(Some(head)) => state.head = Some(head),
            Ok(None) => return Ok(Parsed::Partial),
            Err(e) => {
                *state = ParseState::default();
                return Err(e);
            }
        }
    }
    let head = state.head.as_ref().expect("parsed above");
    let rest = &buf[head.len..];
    // HTTP/1.1 clients that sent `Expect: 100-continue` wait for a 100 before the body.
    let waiting = if head.expect_continue && rest.is_empty() { Parsed::ExpectsContinue } else { Parsed::Partial };
    let (body, body_len) = match head.framing {
        Framing::Length(n) if rest.len() < n => return Ok(waiting),
        Framing::Length(n) => (rest[..n].to_vec(), n),
        Framing::Chunked => match state.chunked.resume(rest, limits.body_max_bytes) {
            Ok(Some(used)) => (std::mem::take(&mut state.chunked.body), used),
            Ok(None) => return Ok(waiting),
            Err(e) => {
                *state = ParseState::default();
                return Err(e);
            }
        },
    };
    let head = state.head.take().expect("parsed above");
    *state = ParseState::default();
    Ok(Parsed::Complete(Request { body, ..head.request }, head.len + body_len))
}

/// The head at the front of `buf`, if it is complete.
fn parse_head(buf: &[u8], limits: &HttpLimits) -> Result<Option<Head>, ParseError> {
    // Uninitialised, on the stack: a zeroed `Vec` of `headers_max` headers per parse
    // (called again for every partial read) was ≈2 % of the server's CPU.
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; HTTP_HEADERS_MAX_CAP];
    let mut req = httparse::Request::new(&mut []);
    let head_len =
        match req.parse_with_uninit_headers(buf, &mut headers[..limits.headers_max.min(HTTP_HEADERS_MAX_CAP)]) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                if buf.len() > limits.head_max_bytes {
                    return Err(ParseError::HeadTooLarge(limits.head_max_bytes));
                }
                return Ok(None);
            }
            Err(httparse::Error::TooManyHeaders) => return Err(ParseError::TooManyHeaders(limits.headers_max)),
            Err(e) => return Err(malformed(e.to_string())),
        };
    if head_len > limits.head_max_bytes {
        return Err(ParseError::HeadTooLarge(limits.head_max_bytes));
    }
    let method = req.method.ok_or_else(|| malformed("no method"))?.to_owned();
    let target = req.path.ok_or_else(|| malformed("no target"))?;
    let version = req.version.ok_or_else(|| malformed("no version"))?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (target.to_owned(), String::new()),
    };
    if !path.starts_with('/') {
        return Err(malformed("request target must be an absolute path"));
    }
    let mut out_headers = Vec::with_capacity(req.headers.len());
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut close = version == 0;
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let value = std::str::from_utf8(h.value).map_err(|_| malformed("header value is not UTF-8"))?.trim().to_owned();
        match name.as_str() {
            "content-length" => {
                let n: usize = value.parse().map_err(|_| malformed("bad Content-Length"))?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(malformed("conflicting Content-Length headers"));
                }
                content_length = Some(n);
            }
            "transfer-encoding" => {
                if !value.eq_ignore_ascii_case("chunked") {
                    return Err(malformed("only chunked transfer-encoding is supported"));
                }
                chunked = true;
            }
            "expect" if value.eq_ignore_ascii_case("100-continue") => expect_continue = true,
            "connection" => {
                let v = value.to_ascii_lowercase();
                if v.split(',').any(|t| t.trim() == "close") {
                    close = true;
                } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                    close = false;
                }
            }
            _ => {}
        }
        out_headers.push((name, value));
    }
    if chunked && content_length.is_some() {
        return Err(malformed("both Content-Length and Transfer-Encoding"));
    }
    let framing = if chunked {
        Framing::Chunked
    } else {
        let n = content_length.unwrap_or(0);
        if n > limits.body_max_bytes {
            return Err(ParseError::BodyTooLarge(limits.body_max_bytes));
        }
        Framing::Length(n)
    };
    let request = Request { method, path, query, headers: out_headers, body: Vec::new(), close };
    Ok(Some(Head { request, len: head_len, framing, expect_continue: expect_continue && version == 1 }))
}

/// Bytes of chunked framing (size lines with their extensions, CRLFs, trailers) one
/// body may carry beyond its data: without a bound, 1-byte chunks with 1 KiB extensions
/// would make a 1 MiB body a gigabyte on the wire, all of it buffered.
pub const CHUNKED_FRAMING_MAX_BYTES: usize = 64 << 10;

/// Where decoding a chunked body stands: `at` is the offset (from the body's start) of
/// the next chunk-size line, or trailer line, not yet consumed; `body` the data of the
/// chunks before it.
#[derive(Debug, Default)]
struct ChunkedState {
    at: usize,
    body: Vec<u8>,
    trailers: bool,
}

impl ChunkedState {
    /// Goes on decoding the chunked body at the front of `buf` (the same body as in
    /// earlier calls, grown at its end): `Some(bytes used)` once complete (the data is
    /// in `body`), `None` when more bytes are needed. Each call reads only what
    /// earlier calls did not consume (at most a partial line or chunk again). Trailers
    /// are read and ignored. Framing beyond `CHUNKED_FRAMING_MAX_BYTES` is refused (413).
    fn resume(&mut self, buf: &[u8], max: usize) -> Result<Option<usize>, ParseError> {
        let framing_over = |at: usize, body: &Vec<u8>| at.saturating_sub(body.len()) > CHUNKED_FRAMING_MAX_BYTES;
        loop {
            if framing_over(self.at, &self.body) {
                return Err(ParseError::BodyTooLarge(max));
            }
            let at = self.at;
            if self.trailers {
                // Trailers: lines until an empty one.
                let Some(end) = find_crlf(&buf[at..]) else {
                    if buf.len() - at > 8192 {
                        return Err(malformed("trailer line too long"));
                    }
                    return Ok(None);
                };
                self.at += end + 2;
                if end == 0 {
                    return Ok(Some(self.at));
                }
                continue;
            }
            let Some(line_end) = find_crlf(&buf[at..]) else {
                if buf.len() - at > 1024 {
                    return Err(malformed("chunk size line too long"));
                }
                return Ok(None);
            };
            let line = std::str::from_utf8(&buf[at..at + line_end]).map_err(|_| malformed("bad chunk size"))?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16).map_err(|_| malformed("bad chunk size"))?;
            let data = at + line_end + 2;
            if size == 0 {
                self.at = data;
                self.trailers = true;
                continue;
            }
            if self.body.len().saturating_add(size) > max {
                return Err(ParseError::BodyTooLarge(max));
            }
            if buf.len() < data + size + 2 {
                return Ok(None);
            }
            if &buf[data + size..data + size + 2] != b"\r\n" {
                return Err(malformed("chunk not followed by CRLF"));
            }
            self.body.extend_from_slice(&buf[data..data + size]);
            self.at = data + size + 2;
        }
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

/// Percent-decodes a path segment or query component (`+` stays a plus). `None` if an
/// escape is malformed or the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Splits a query string into decoded `(key, value)` pairs.
pub fn parse_query(q: &str) -> Option<Vec<(String, String)>> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Some((percent_decode(k)?, percent_decode(v)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HttpLimits {
        HttpLimits { head_max_bytes: 256, body_max_bytes: 32, ..HttpLimits::default() }
    }

    fn complete(buf: &[u8]) -> (Request, usize) {
        match parse_request(buf, &limits()) {
            Ok(Parsed::Complete(r, n)) => (r, n),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn content_length_body_and_pipelining() {
        let two = b"POST /v1/a?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /b HTTP/1.1\r\n\r\n";
        let (r, n) = complete(two);
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), r.query.as_str(), &r.body[..]),
            ("POST", "/v1/a", "x=1", &b"hi"[..])
        );
        let (r2, n2) = complete(&two[n..]);
        assert_eq!((r2.method.as_str(), r2.path.as_str(), n + n2), ("GET", "/b", two.len()));
    }

    #[test]
    fn every_split_point_is_partial_then_complete() {
        let req = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext\r\nde\r\n0\r\n\r\n";
        for cut in 0..req.len() {
            assert_eq!(parse_request(&req[..cut], &limits()), Ok(Parsed::Partial), "cut at {cut}");
        }
        let (r, n) = complete(req);
        assert_eq!((&r.body[..], n), (&b"abcde"[..], req.len()));
    }

    #[test]
    fn limits_and_malformed_input() {
        let big_head = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(300));
        assert_eq!(parse_request(big_head.as_bytes(), &limits()).unwrap_err().status(), 431);
        let partial_big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(300));
        assert_eq!(parse_request(partial_big.as_bytes(), &limits()).unwrap_err().status(), 431);
        let big_body = b"POST / HTTP/1.1\r\nContent-Length: 33\r\n\r\n";
        assert_eq!(parse_request(big_body, &limits()).unwrap_err().status(), 413);
        let big_chunks = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n21\r\n";
        assert_eq!(parse_request(big_chunks, &limits()).unwrap_err().status(), 413);
        for bad in [
            &b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"\x00\x01garbage\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ] {
            assert_eq!(parse_request(bad, &limits()).unwrap_err().status(), 400, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn connection_close_and_http10() {
        assert!(complete(b"GET / HTTP/1.0\r\n\r\n").0.close);
        assert!(!complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").0.close);
        assert!(complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").0.close);
        assert!(!complete(b"GET / HTTP/1.1\r\n\r\n").0.close);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%2fc+d").as_deref(), Some("a/b/c+d"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
        assert_eq!(percent_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(
            parse_query("a=1&b=x%20y&c").unwrap(),
            vec![("a".into(), "1".into()), ("b".into(), "x y".into()), ("c".into(), "".into())]
        );
    }

    /// Feeds `wire` in pieces (cut at `cuts`), as reads would bring it, through one
    /// `ParseState`; the first outcome that is not "need more".
    fn parse_in_pieces(wire: &[u8], cuts: &[usize], limits: &HttpLimits) -> Result<Parsed, ParseError> {
        let mut state = ParseState::default();
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        ends.push(wire.len());
        ends.sort_unstable();
        for end in ends {
            match parse_request_with(&wire[..end], limits, &mut state) {
                Ok(Parsed::Partial | Parsed::ExpectsContinue) if end < wire.len() => continue,
                other => return other,
            }
        }
        unreachable!("the last piece is the whole wire")
    }

    proptest::proptest! {
        /// Arbitrary bytes: never a panic; an error is a 4xx.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            if let Err(e) = parse_request(&bytes, &limits()) {
                proptest::prop_assert!((400..500).contains(&e.status()));
            }
        }

        /// A chunked request (random chunk sizes, extensions, trailers) parsed as it
        /// arrives in random pieces gives what one parse of the whole gives.
        #[test]
        fn incremental_parsing_equals_one_parse(
            chunks in proptest::collection::vec((1usize..9, 0usize..20), 0..6),
            trailers in 0usize..3,
            cuts in proptest::collection::vec(0usize..400, 0..12),
        ) {
            let mut wire = b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for (i, (size, ext)) in chunks.iter().enumerate() {
                wire.extend_from_slice(format!("{size:x};{}\r\n", "e".repeat(*ext)).as_bytes());
                wire.extend(std::iter::repeat_n(b'a' + i as u8, *size));
                wire.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b"0\r\n");
            for t in 0..trailers {
                wire.extend_from_slice(format!("X-T{t}: v\r\n").as_bytes());
            }
            wire.extend_from_slice(b"\r\nGET /next HTTP/1.1\r\n\r\n");
            let whole = parse_request(&wire, &limits());
            proptest::prop_assert_eq!(parse_in_pieces(&wire, &cuts, &limits()), whole);
        }
    }
}
