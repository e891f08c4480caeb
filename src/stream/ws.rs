//! WebSocket (RFC 6455, `Upgrade: websocket`): the upgrade answer is ours, the framing
//! is tungstenite's (`async-tungstenite` over the glommio socket). Every event is one
//! text message. The server sends `{"type":"ping"}` every ping interval whatever else
//! it sends; a client that sends nothing (its `{"type":"pong"}` answers, or any other
//! message or WebSocket ping) for the silence timeout is closed.
use std::pin::pin;
use std::time::{Duration, Instant};

use async_tungstenite::WebSocketStream;
use async_tungstenite::tungstenite::Message;
use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use futures_lite::io::AsyncWriteExt;
use futures_util::StreamExt;
use futures_util::future::{Either, select};
use glommio::net::TcpStream;

use super::session::{Final, Session};
use crate::config::StreamLimits;

pub async fn run(
    mut socket: TcpStream,
    read_ahead: Vec<u8>,
    accept_key: &str,
    mut session: Session,
    limits: &StreamLimits,
) {
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept_key}\r\n\r\n"
    );
    if socket.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    // Small buffers: clients send pongs, and an idle stream should cost little (the
    // defaults are 128 KiB each way).
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(limits.client_message_max_bytes))
        .max_frame_size(Some(limits.client_message_max_bytes));
    let ws = WebSocketStream::from_partially_read(socket, read_ahead, Role::Server, Some(config)).await;
    let (mut tx, mut rx) = ws.split();
    let ping_every = Duration::from_millis(limits.ping_interval_ms.max(1));
    let silence = Duration::from_millis(limits.silence_timeout_ms.max(1));
    let (mut heard, mut next_ping) = (Instant::now(), Instant::now() + ping_every);
    loop {
        if heard.elapsed() >= silence {
            let reason = format!("nothing heard for {} ms (answer pings with a pong)", silence.as_millis());
            let _ = tx.close(Some(CloseFrame { code: CloseCode::Policy, reason: reason.into() })).await;
            return;
        }
        let wait = next_ping.saturating_duration_since(Instant::now());
        let events = pin!(crate::raft::runtime::timeout(wait, session.next()));
        let incoming = pin!(rx.next());
        match select(events, incoming).await {
            Either::Left((Err(_), _)) => {
                next_ping = Instant::now() + ping_every;
                if tx.send(Message::text("{\"type\":\"ping\"}")).await.is_err() {
                    return;
                }
            }
            Either::Left((Ok(next), _)) => {
                for event in &next.events {
                    let text = String::from_utf8_lossy(event.json.bytes()).into_owned();
                    if tx.send(Message::text(text)).await.is_err() {
                        return;
                    }
                }
                crate::metrics::streams(|m| m.events_sent += next.events.len() as u64);
                if let Some(how) = next.last {
                    if how == Final::Gap {
                        crate::metrics::streams(|m| m.gaps += 1);
                    }
                    let _ = tx.close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() })).await;
                    return;
                }
            }
            // Any message counts as a sign of life; tungstenite answers pings and closes.
            Either::Right((Some(Ok(Message::Close(_))), _)) => return,
            Either::Right((Some(Ok(_)), _)) => heard = Instant::now(),
            Either::Right((Some(Err(_)) | None, _)) => return,
        }
    }
}
