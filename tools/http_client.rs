//! The load tools' HTTP/1.1 client side: one request and its answer on a keep-alive
//! connection (shared by `loadgen` and `stream-bench` through `#[path]`).
use anyhow::{Result, bail};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

/// The `Content-Length` of a parsed head (0 when absent).
pub fn content_length(headers: &[httparse::Header<'_>]) -> usize {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.parse::<usize>().ok())
        .unwrap_or(0)
}

/// Sends `req` and reads its answer into `buf` (head and body); returns the status and
/// where the body starts in `buf`.
pub async fn exchange(conn: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> Result<(u16, usize)> {
    conn.write_all(req).await?;
    buf.clear();
    let mut chunk = [0u8; 16384];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed");
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head) = resp.parse(buf)? {
            let len = content_length(resp.headers);
            let status = resp.code.unwrap_or(0);
            // The rest of the body is read straight into place: the client shares the
            // machine with the server, and a replay answer is ~300 KiB.
            let mut filled = buf.len();
            buf.resize(filled.max(head + len), 0);
            while filled < head + len {
                let n = conn.read(&mut buf[filled..]).await?;
                if n == 0 {
                    bail!("connection closed mid-body");
                }
                filled += n;
            }
            return Ok((status, head));
        }
    }
}
