//! The connection loop: read, frame (pipelined requests included), hand each request to
//! the handler, write the answers in order. Knows nothing about storage.
//!
//! Deadlines: a connection idle between requests is closed after `idle_timeout_ms`; a
//! request whose first byte has arrived must be complete within
//! `request_read_timeout_ms` (slow clients cannot pin a connection). A framing error is
//! answered with its 4xx and the connection is closed: the stream cannot be trusted to
//! resynchronise.
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_util::FutureExt;
use glommio::net::TcpStream;

use super::parse::{ParseState, Parsed, Request, parse_request_with};
use super::response::Response;
use crate::config::HttpLimits;

/// Serves one connection until the peer closes, a deadline passes, or an error.
pub async fn serve_connection<H, F>(mut stream: TcpStream, limits: Rc<HttpLimits>, handler: Rc<H>)
where
    H: Fn(Request) -> F,
    F: Future<Output = Response>,
{
    let _ = stream.set_nodelay(true);
    // A write that makes no progress for this long fails, and the connection ends with
    // it: answers a client does not read are not kept forever.
    if stream.set_write_timeout(Some(Duration::from_millis(limits.write_timeout_ms.max(1)))).is_err() {
        return;
    }
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 64 << 10];
    let mut out: Vec<u8> = Vec::with_capacity(8192);
    let mut request_started: Option<Instant> = None;
    // What parsing the request being read has found so far (it only grows at its end).
    let mut parse_state = ParseState::default();
    // A `100 Continue` was sent for the request being read (one per request).
    let mut continued = false;
    loop {
        // Answer every complete request already buffered, in order.
        let mut close = false;
        let mut answered = 0;
        while answered < limits.pipeline_max {
            match parse_request_with(&buf, &limits, &mut parse_state) {
                Ok(Parsed::Complete(req, used)) => {
                    buf.drain(..used);
                    request_started = None;
                    continued = false;
                    let head_only = req.method == "HEAD";
                    // A stopping node answers, then closes: the client reconnects
                    // (elsewhere, once this node is not ready).
                    close = req.close || crate::shutdown::requested();
                    // A bug must cost one request a 500, not the executor and its shards.
                    // Boxed: the handler's future (every route, down to a Raft proposal)
                    // is many KiB, and inline it would stay in this connection's task
                    // while the connection idles — or streams for hours.
                    let mut resp = AssertUnwindSafe(Box::pin(handler(req))).catch_unwind().await.unwrap_or_else(|_| {
                        Response::error(500, "internal", "internal error (a bug); see the server log")
                    });
                    if let Some(takeover) = resp.takeover.take() {
                        // Answers to the requests before it go first; what the client
                        // sent after it belongs to the new owner.
                        if !out.is_empty() && stream.write_all(&out).await.is_err() {
                            return;
                        }
                        // This loop's buffers go before the new owner runs (a stream
                        // can live for hours; ten thousand idle ones must stay small).
                        drop((std::mem::take(&mut chunk), std::mem::take(&mut out)));
                        takeover.run(stream, std::mem::take(&mut buf)).await;
                        return;
                    }
                    if head_only || resp.body.len() <= limits.response_coalesce_max_bytes {
                        resp.write_to(&mut out, head_only, close);
                    } else {
                        resp.write_head_to(&mut out, close);
                        if stream.write_all(&out).await.is_err() || stream.write_all(&resp.body).await.is_err() {
                            return;
                        }
                        out.clear();
                    }
                    answered += 1;
                    if close {
                        break;
                    }
                }
                Ok(Parsed::Partial) => break,
                Ok(Parsed::ExpectsContinue) => {
                    if !continued {
                        continued = true;
                        out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    break;
                }
                Err(e) => {
                    Response::error(e.status(), e.code(), &e).write_to(&mut out, false, true);
                    close = true;
                    break;
                }
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if close {
            lingering_close(stream, &limits, &mut chunk).await;
            return;
        }
        if answered == limits.pipeline_max {
            continue; // more may be buffered already
        }
        if !buf.is_empty() && request_started.is_none() {
            request_started = Some(Instant::now());
        }
        let timeout = match request_started {
            Some(t0) => Duration::from_millis(limits.request_read_timeout_ms).saturating_sub(t0.elapsed()),
            None => Duration::from_millis(limits.idle_timeout_ms),
        };
        if timeout.is_zero() || stream.set_read_timeout(Some(timeout)).is_err() {
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return, // closed, reset, or a deadline passed
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Closes after the last answer without losing it: stop writing, then read and discard
/// what the client is still sending (say, the rest of an oversized body) for a bounded
/// time and amount. Closing with unread input would make the kernel reset the
/// connection, and a reset can destroy the answer before the client reads it.
async fn lingering_close(stream: TcpStream, limits: &HttpLimits, chunk: &mut [u8]) {
    let mut stream = stream;
    let _ = stream.shutdown(std::net::Shutdown::Write).await;
    let started = Instant::now();
    let linger = Duration::from_millis(limits.linger_ms);
    let mut drained = 0usize;
    while drained < limits.linger_drain_max_bytes {
        let left = linger.saturating_sub(started.elapsed());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match stream.read(chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    let _ = stream.close().await;
}
