//! Stream clients for the tests: SSE on a raw socket, WebSocket through tungstenite.
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::{Resp, raw_request};

/// One SSE event: its `id:` and its JSON `data:`.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: Option<u64>,
    pub data: serde_json::Value,
}

pub struct Sse {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Sse {
    /// Opens a stream on `path` (with `headers`); `Err` with the answer if it is not a stream.
    pub fn open(port: u16, path: &str, headers: &[(&str, &str)]) -> Result<Sse, Resp> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut all = vec![("Accept", "text/event-stream")];
        all.extend_from_slice(headers);
        s.write_all(&raw_request("GET", path, &all, b"")).unwrap();
        // The head of a stream has no length: read it alone.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match s.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => panic!("connection closed in the head: {:?}", String::from_utf8_lossy(&head)),
            }
        }
        let text = String::from_utf8_lossy(&head).into_owned();
        if text.starts_with("HTTP/1.1 200") {
            assert!(text.to_ascii_lowercase().contains("content-type: text/event-stream"), "{text}");
            return Ok(Sse { s, buf: Vec::new() });
        }
        // Not a stream: an answer with a length.
        let mut lines = text.split("\r\n");
        let status: u16 = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|c| c.parse().ok()).unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())))
            .collect();
        let len = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        Err(Resp { status, headers, body })
    }

    /// The next event (comments and `retry:` skipped); `None` once the server closed.
    pub fn next(&mut self) -> Option<SseEvent> {
        loop {
            while let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buf.drain(..end + 2).collect();
                let text = String::from_utf8(block).unwrap();
                let (mut id, mut data) = (None, None);
                for line in text.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.parse().unwrap());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = Some(serde_json::from_str(v).unwrap_or_else(|e| panic!("{e}: {v}")));
                    }
                }
                if let Some(data) = data {
                    return Some(SseEvent { id, data });
                }
            }
            let mut chunk = [0u8; 65536];
            match self.s.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading the stream: {e}"),
            }
        }
    }

    /// The next `n` events (panics if the stream ends first).
    pub fn take(&mut self, n: usize) -> Vec<SseEvent> {
        (0..n).map(|i| self.next().unwrap_or_else(|| panic!("the stream ended after {i} of {n} events"))).collect()
    }
}

/// A WebSocket stream client.
pub type Ws = tungstenite::WebSocket<TcpStream>;

/// Opens a WebSocket stream on `path`.
pub fn ws_open(port: u16, path: &str) -> Ws {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (ws, resp) = tungstenite::client(format!("ws://127.0.0.1:{port}{path}"), s).expect("websocket handshake");
    assert_eq!(resp.status(), 101);
    ws
}

/// The next JSON text message; `None` once the server closed.
pub fn ws_next(ws: &mut Ws) -> Option<serde_json::Value> {
    loop {
        match ws.read() {
            Ok(tungstenite::Message::Text(t)) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(tungstenite::Message::Close(_)) => return None,
            Ok(_) => continue,
            Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => return None,
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("websocket: {e}"),
        }
    }
}
