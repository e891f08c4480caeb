//! Test harness: the real `fleetlm` binary on a free loopback port, and a tiny HTTP/1.1
//! client on std sockets (raw bytes in, status/headers/body out) so that tests can also
//! send malformed, split and pipelined requests.
#![allow(dead_code)]
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

/// `n` consecutive ports that are free now, below the kernel's ephemeral range (so
/// that outgoing connections do not take them), distinct for every call in this
/// process and spread by pid across concurrently running test binaries.
pub fn free_ports(n: u16) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let _ = NEXT.compare_exchange(0, 20_000 + (std::process::id() % 500) * 20, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let base = NEXT.fetch_add(n as u32, Ordering::SeqCst);
        let base = (20_000 + (base - 20_000) % 12_000) as u16;
        let held: Vec<_> = (0..n).filter_map(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).ok()).collect();
        if held.len() == n as usize {
            return base;
        }
    }
}

fn free_port() -> u16 {
    free_ports(1)
}

impl Server {
    /// Starts a server with its data in `dir` and waits until it is ready.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        let mut s = Server {
            port: free_port(),
            dir: dir.to_owned(),
            child: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.with_extension("log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_fleetlm"))
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port), "--data-dir"])
            .arg(&self.dir)
            .args(["--segment-size-bytes", "8388608", "--body-segment-size-bytes", "4194304"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start fleetlm");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if try_request(self.port, "GET", "/health/ready").is_some_and(|r| r.status == 200) {
                return;
            }
            let log = || std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default();
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("server exited ({status}) before it was ready; log:\n{}", log());
            }
            assert!(Instant::now() < deadline, "server did not become ready; log:\n{}", log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sends `signal` (say `libc::SIGTERM`) to the server.
    pub fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as i32, signal) };
        }
    }

    /// Waits up to `timeout` for the server to exit by itself; its exit status, or
    /// `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.child.as_mut()?.try_wait().ok().flatten();
            if let Some(status) = status {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// Starts again on the same data dir and port.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn req(&self, method: &str, path: &str, body: &str) -> Resp {
        request(self.port, method, path, &[], body.as_bytes())
    }

    pub fn req_h(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        request(self.port, method, path, headers, body.as_bytes())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// Asserts the docs/api.md error shape with `code`.
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {:?}", String::from_utf8_lossy(&self.body));
        let j = self.json();
        assert_eq!(j["error"], code, "{j}");
        assert!(j["message"].is_string(), "{j}");
    }
}

pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

pub fn raw_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n", body.len()).into_bytes();
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A GET that tolerates a server that is not up (yet).
pub fn try_request(port: u16, method: &str, path: &str) -> Option<Resp> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(&raw_request(method, path, &[], b"")).ok()?;
    read_response(&mut s, false)
}

/// One request on a fresh connection.
pub fn request(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = connect(port);
    // The server may answer (413, say) and stop reading before the body is sent.
    let _ = s.write_all(&raw_request(method, path, headers, body));
    read_response(&mut s, method == "HEAD").expect("a response")
}

/// Reads one response; `None` if the connection closed first.
pub fn read_response(s: &mut TcpStream, head_only: bool) -> Option<Resp> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(0) | Err(_) => return None,
            Ok(_) => buf.push(byte[0]),
        }
    }
    let head = String::from_utf8(buf).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())))
        .collect();
    let len: usize =
        headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("content-length")).map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0u8; if head_only { 0 } else { len }];
    s.read_exact(&mut body).ok()?;
    Some(Resp { status, headers, body })
}

pub fn msg_body(text: &str) -> String {
    serde_json::json!({"message": {"role": "user", "parts": [{"type": "text", "text": text}]}}).to_string()
}

/// Any request, tolerating a server that is down or dies mid-request (`None`).
pub fn try_request_full(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Option<Resp> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    s.write_all(&raw_request(method, path, headers, body)).ok()?;
    read_response(&mut s, method == "HEAD")
}

pub mod cluster;
pub mod stream;
