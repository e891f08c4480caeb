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

/// Parses one request from the front of `buf`.
pub fn parse_request(buf: &[u8], limits: &HttpLimits) -> Result<Parsed, ParseError> {
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
                return Ok(Parsed::Partial);
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
    let rest = &buf[head_len..];
    // HTTP/1.1 clients that sent `Expect: 100-continue` wait for a 100 before the body.
    let waiting =
        if expect_continue && rest.is_empty() && version == 1 { Parsed::ExpectsContinue } else { Parsed::Partial };
    let (body, body_len) = if chunked {
        match decode_chunked(rest, limits.body_max_bytes)? {
            Some(b) => b,
            None => return Ok(waiting),
        }
    } else {
        let n = content_length.unwrap_or(0);
        if n > limits.body_max_bytes {
            return Err(ParseError::BodyTooLarge(limits.body_max_bytes));
        }
        if rest.len() < n {
            return Ok(waiting);
        }
        (rest[..n].to_vec(), n)
    };
    let request = Request { method, path, query, headers: out_headers, body, close };
    Ok(Parsed::Complete(request, head_len + body_len))
}

/// Bytes of chunked framing (size lines with their extensions, CRLFs, trailers) one
/// body may carry beyond its data: without a bound, 1-byte chunks with 1 KiB extensions
/// would make a 1 MiB body a gigabyte on the wire, all of it buffered.
pub const CHUNKED_FRAMING_MAX_BYTES: usize = 64 << 10;

/// Decodes a chunked body from the front of `buf`: `Some((body, bytes used))`, or
/// `None` when more bytes are needed. Trailers are read and ignored. Framing beyond
/// `CHUNKED_FRAMING_MAX_BYTES` is refused (413).
fn decode_chunked(buf: &[u8], max: usize) -> Result<Option<(Vec<u8>, usize)>, ParseError> {
    let mut body = Vec::new();
    let mut at = 0;
    let framing_over = |at: usize, body: &Vec<u8>| at.saturating_sub(body.len()) > CHUNKED_FRAMING_MAX_BYTES;
    loop {
        if framing_over(at, &body) {
            return Err(ParseError::BodyTooLarge(max));
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
        at += line_end + 2;
        if size == 0 {
            // Trailers: lines until an empty one.
            loop {
                let Some(end) = find_crlf(&buf[at..]) else {
                    if buf.len() - at > 8192 {
                        return Err(malformed("trailers too long"));
                    }
                    return Ok(None);
                };
                at += end + 2;
                if end == 0 {
                    return Ok(Some((body, at)));
                }
                if framing_over(at, &body) {
                    return Err(ParseError::BodyTooLarge(max));
                }
            }
        }
        if body.len().saturating_add(size) > max {
            return Err(ParseError::BodyTooLarge(max));
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[at..at + size]);
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err(malformed("chunk not followed by CRLF"));
        }
        at += size + 2;
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
}
