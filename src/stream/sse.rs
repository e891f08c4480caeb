//! Server-sent events (`Accept: text/event-stream`): each event is `id: <version>` (when
//! it has one) and one `data:` line of JSON, so a browser's `EventSource` resumes by
//! itself with `Last-Event-ID`. Keep-alive pings are SSE comments. The body ends when
//! the connection closes (no length, no chunking: `Connection: close`).
use std::time::Duration;

use futures_lite::io::AsyncWriteExt;
use glommio::net::TcpStream;

use super::session::{Event, Final, Session};
use crate::config::StreamLimits;

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
X-Accel-Buffering: no\r\nConnection: close\r\n\r\nretry: 1000\n\n";

pub async fn run(mut socket: TcpStream, mut session: Session, limits: &StreamLimits) {
    if socket.write_all(HEAD).await.is_err() {
        return;
    }
    let ping = Duration::from_millis(limits.ping_interval_ms.max(1));
    // Grows to the largest batch sent; small while idle.
    let mut out = Vec::new();
    loop {
        out.clear();
        let mut last = None;
        match crate::raft::runtime::timeout(ping, session.next()).await {
            Err(_) => out.extend_from_slice(b": ping\n\n"),
            Ok(next) => {
                for event in &next.events {
                    frame(&mut out, event);
                }
                crate::metrics::streams(|m| m.events_sent += next.events.len() as u64);
                last = next.last;
            }
        }
        if socket.write_all(&out).await.is_err() {
            return;
        }
        if let Some(how) = last {
            if how == Final::Gap {
                crate::metrics::streams(|m| m.gaps += 1);
            }
            let _ = socket.close().await;
            return;
        }
    }
}

/// One event in SSE form. Line breaks can only be whitespace between JSON tokens (a
/// JSON string holds them escaped), so they become spaces: one `data:` line per event.
fn frame(out: &mut Vec<u8>, event: &Event) {
    if let Some(id) = event.id {
        out.extend_from_slice(format!("id: {id}\n").as_bytes());
    }
    out.extend_from_slice(b"data: ");
    out.extend(event.json.bytes().iter().map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b }));
    out.extend_from_slice(b"\n\n");
}
