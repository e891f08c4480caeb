//! stream-bench: fan-out of live streams (`GET /v1/contexts/:id/stream`, SSE).
//!
//! `--subscribers` S streams over `--contexts` C contexts (subscriber i watches context
//! i mod C, on node i mod nodes) while appends run open-loop at `--rate` per second,
//! spread over the contexts and nodes. Records, in hdrhistograms (µs):
//! - `append`: an append's latency (sent → acknowledged);
//! - `end_to_end`: append sent → the event received by a subscriber, per subscriber
//!   (the send time travels in the message text): commit plus delivery;
//! - `delivery`: append acknowledged → event received, per subscriber, 0 (recorded as
//!   1 µs) when the event was read before the acknowledgement (one client thread reads
//!   both, so this is a lower bound: use `end_to_end − append` as the upper one).
//!
//! With `--idle`, no appends: S subscribers connect and stay, and the server's memory is
//! read from /proc (`--server-pid`, several for a cluster) before and after, for the
//! memory per idle subscriber. Prints one JSON summary on stdout.
//!
//!   stream-bench --addr 127.0.0.1:4000 --subscribers 1000 --contexts 100 --rate 1000 --secs 20
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::LocalExecutorBuilder;
use glommio::net::TcpStream;
use hdrhistogram::Histogram;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Node addresses (comma-separated); subscribers and appends go round-robin over them.
    #[arg(long, default_value = "127.0.0.1:4000", value_delimiter = ',')]
    addr: Vec<SocketAddr>,
    #[arg(long, default_value_t = 1000)]
    subscribers: usize,
    #[arg(long, default_value_t = 100)]
    contexts: usize,
    /// Appends per second, in all.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Connections the appends are sent on.
    #[arg(long, default_value_t = 32)]
    append_connections: usize,
    /// Measured seconds (after --warmup-secs).
    #[arg(long, default_value_t = 20)]
    secs: u64,
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Text bytes per appended message.
    #[arg(long, default_value_t = 200)]
    message_bytes: usize,
    /// Only hold the subscribers (no appends) and report the server's memory.
    #[arg(long)]
    idle: bool,
    /// Server processes whose memory (/proc/PID/status) is reported.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Subscribers connecting at once (0: all together). All at once is a reconnect
    /// storm, and the server's heap keeps its high-water mark; one at a time measures
    /// what a subscriber costs while it is held.
    #[arg(long, default_value_t = 0)]
    connect_concurrency: usize,
    /// Context ids are PREFIX-0 … PREFIX-(C−1).
    #[arg(long, default_value = "fanout")]
    prefix: String,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Shared by the two executors (subscribers, appenders) and the main thread.
struct Shared {
    /// Send times in messages are µs since this.
    epoch: Instant,
    /// When each (context, version) was acknowledged.
    acked: Mutex<HashMap<(usize, u64), Instant>>,
    append_errors: AtomicU64,
    connected: AtomicUsize,
    /// Measuring (after the warmup).
    measuring: AtomicBool,
    stop: AtomicBool,
}

/// What the subscribers' executor counted.
struct SubscriberStats {
    delivery: RefCell<Histogram<u64>>,
    end_to_end: RefCell<Histogram<u64>>,
    events: Cell<u64>,
    gaps: Cell<u64>,
    failures: Cell<u64>,
    connecting: Cell<usize>,
}

/// Resident memory of `pid`: (VmRSS, RssAnon), KiB.
fn rss_kib(pid: u32) -> Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/PID/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("RssAnon:")))
}

fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

#[path = "http_client.rs"]
mod http_client;

/// One request/response on a keep-alive connection; returns the status and the body.
async fn exchange(conn: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> Result<(u16, Vec<u8>)> {
    let (status, body_at) = http_client::exchange(conn, req, buf).await?;
    Ok((status, buf[body_at..].to_vec()))
}

fn request(method: &str, path: &str, body: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

/// The first `"version":N` of an event's JSON (events start `{"type":…,"version":N`).
fn version_of(data: &[u8]) -> Option<u64> {
    let key = b"\"version\":";
    let at = data.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = data[at..].iter().copied().take_while(u8::is_ascii_digit).collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// The send time (µs since the epoch of this process's `Shared`) in a message's text.
fn sent_micros(data: &[u8]) -> Option<u64> {
    let key = b"\"text\":\"t";
    let at = data.windows(key.len()).position(|w| w == key)? + key.len();
    let digits: Vec<u8> = data[at..].iter().copied().take_while(u8::is_ascii_digit).collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

/// One SSE subscriber of context `ctx` on `addr`, until `stop`; at most
/// `concurrency` (0: any number) of them connect at once.
async fn subscribe(
    addr: SocketAddr,
    path: String,
    ctx: usize,
    concurrency: usize,
    shared: Arc<Shared>,
    stats: Rc<SubscriberStats>,
) -> Result<()> {
    while concurrency > 0 && stats.connecting.get() >= concurrency {
        glommio::timer::sleep(Duration::from_micros(200)).await;
    }
    stats.connecting.set(stats.connecting.get() + 1);
    let mut conn = TcpStream::connect(addr).await.map_err(|e| anyhow::anyhow!("connect {addr}: {e}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n");
    conn.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 16384];
    let mut head_done = false;
    while !shared.stop.load(Relaxed) {
        conn.set_read_timeout(Some(Duration::from_millis(500))).map_err(|e| anyhow::anyhow!("{e}"))?;
        let n = match conn.read(&mut chunk).await {
            Ok(0) => bail!("stream closed by the server"),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(e) => return Err(e.into()),
        };
        buf.extend_from_slice(&chunk[..n]);
        if !head_done {
            let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else { continue };
            if !buf.starts_with(b"HTTP/1.1 200") {
                bail!("not a stream: {}", String::from_utf8_lossy(&buf[..end]));
            }
            buf.drain(..end + 4);
            head_done = true;
            shared.connected.fetch_add(1, Relaxed);
            stats.connecting.set(stats.connecting.get() - 1);
        }
        let now = Instant::now();
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = buf.drain(..end + 2).collect();
            let Some(data) = block.split(|&b| b == b'\n').find_map(|l| l.strip_prefix(b"data: ")) else { continue };
            if data.starts_with(b"{\"type\":\"gap\"") {
                stats.gaps.set(stats.gaps.get() + 1);
                bail!("gap");
            }
            let Some(version) = version_of(data) else { continue };
            if !shared.measuring.load(Relaxed) {
                continue;
            }
            stats.events.set(stats.events.get() + 1);
            let acked = shared.acked.lock().unwrap().get(&(ctx, version)).copied();
            let delivery = acked.map_or(0, |t| now.saturating_duration_since(t).as_micros());
            let _ = stats.delivery.borrow_mut().record((delivery as u64).max(1));
            if let Some(sent_us) = sent_micros(data) {
                let sent = shared.epoch + Duration::from_micros(sent_us);
                let _ = stats.end_to_end.borrow_mut().record(now.duration_since(sent).as_micros().max(1) as u64);
            }
        }
    }
    Ok(())
}

/// Appends open-loop: connection `k` of `n` sends every `n / rate` seconds.
async fn appender(args: Arc<Args>, k: usize, shared: Arc<Shared>, hist: Rc<RefCell<Histogram<u64>>>) -> Result<()> {
    let addr = args.addr[k % args.addr.len()];
    let mut conn = TcpStream::connect(addr).await.map_err(|e| anyhow::anyhow!("connect {addr}: {e}"))?;
    let mut buf = Vec::new();
    let every = Duration::from_secs_f64(args.append_connections as f64 / args.rate.max(1) as f64);
    let started = Instant::now() + every.mul_f64(k as f64 / args.append_connections as f64);
    let padding = "x".repeat(args.message_bytes.saturating_sub(24));
    let mut i: u64 = 0;
    while !shared.stop.load(Relaxed) {
        let due = started + every.mul_f64(i as f64);
        let wait = due.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            glommio::timer::sleep(wait).await;
        }
        let ctx = (k + i as usize * args.append_connections) % args.contexts;
        i += 1;
        let sent = Instant::now();
        // The send time travels in the message, so a subscriber measures from it
        // whether or not this task has seen the acknowledgement yet.
        let text = format!("t{}-{padding}", sent.duration_since(shared.epoch).as_micros());
        let body =
            serde_json::json!({"message": {"role": "user", "parts": [{"type": "text", "text": text}]}}).to_string();
        let (status, body) = exchange(
            &mut conn,
            &request("POST", &format!("/v1/contexts/{}-{ctx}/messages", args.prefix), &body),
            &mut buf,
        )
        .await?;
        let acked = Instant::now();
        if status != 201 {
            shared.append_errors.fetch_add(1, Relaxed);
            continue;
        }
        let version = serde_json::from_slice::<serde_json::Value>(&body)?["version"].as_u64().unwrap_or(0);
        shared.acked.lock().unwrap().insert((ctx, version), acked);
        if shared.measuring.load(Relaxed) {
            let _ = hist.borrow_mut().record(acked.duration_since(sent).as_micros().max(1) as u64);
        }
    }
    Ok(())
}

fn percentiles(h: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.5),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    })
}

fn executor(name: &str) -> Result<glommio::LocalExecutor> {
    LocalExecutorBuilder::default()
        .name(name)
        .io_memory(1 << 20)
        .make()
        .map_err(|e| anyhow::anyhow!("glommio executor: {e}"))
}

/// Creates the contexts (on a plain socket: before the executors start).
fn create_contexts(args: &Args) -> Result<()> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(args.addr[0])?;
    for c in 0..args.contexts {
        let body = r#"{"token_budget":1000000000}"#;
        conn.write_all(&request("PUT", &format!("/v1/contexts/{}-{c}", args.prefix), body))?;
        let mut buf = Vec::new();
        let mut byte = [0u8; 4096];
        loop {
            let n = conn.read(&mut byte)?;
            if n == 0 {
                bail!("closed while creating contexts");
            }
            buf.extend_from_slice(&byte[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(head) = resp.parse(&buf)? {
                let len = http_client::content_length(resp.headers);
                if buf.len() < head + len {
                    continue;
                }
                let status = resp.code.unwrap_or(0);
                if status != 200 && status != 201 {
                    bail!("PUT context {c}: {status}");
                }
                break;
            }
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    raise_nofile();
    let args = Arc::new(Args::parse());
    create_contexts(&args)?;
    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        acked: Mutex::default(),
        append_errors: AtomicU64::new(0),
        connected: AtomicUsize::new(0),
        measuring: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    });
    let memory_before: Vec<(u64, u64)> = args.server_pid.iter().map(|&p| rss_kib(p)).collect::<Result<_>>()?;
    // Subscribers and appenders on executors (threads) of their own: the time the
    // client spends reading events must not show up as append latency.
    let subscribers = {
        let (args, shared) = (args.clone(), shared.clone());
        std::thread::spawn(move || -> Result<serde_json::Value> {
            executor("subscribers")?.run(async move { run_subscribers(args, shared).await })
        })
    };
    let connecting = Instant::now();
    while shared.connected.load(Relaxed) < args.subscribers {
        if subscribers.is_finished() || connecting.elapsed() > Duration::from_secs(120) {
            shared.stop.store(true, Relaxed);
            bail!("only {} of {} subscribers connected", shared.connected.load(Relaxed), args.subscribers);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let connect_secs = connecting.elapsed().as_secs_f64();
    let appenders = (!args.idle).then(|| {
        let (args, shared) = (args.clone(), shared.clone());
        std::thread::spawn(move || -> Result<Histogram<u64>> {
            executor("appenders")?.run(async move { run_appenders(args, shared).await })
        })
    });
    std::thread::sleep(Duration::from_secs(args.warmup_secs));
    shared.measuring.store(true, Relaxed);
    let measured = Instant::now();
    std::thread::sleep(Duration::from_secs(args.secs));
    let memory_after: Vec<(u64, u64)> = args.server_pid.iter().map(|&p| rss_kib(p)).collect::<Result<_>>()?;
    shared.measuring.store(false, Relaxed);
    let secs = measured.elapsed().as_secs_f64();
    shared.stop.store(true, Relaxed);
    let append = match appenders {
        Some(t) => t.join().map_err(|_| anyhow::anyhow!("appenders panicked"))??,
        None => histogram(),
    };
    let subs = subscribers.join().map_err(|_| anyhow::anyhow!("subscribers panicked"))??;
    let rss_delta_kib: i64 = memory_after.iter().zip(&memory_before).map(|(a, b)| a.0 as i64 - b.0 as i64).sum();
    let anon_delta_kib: i64 = memory_after.iter().zip(&memory_before).map(|(a, b)| a.1 as i64 - b.1 as i64).sum();
    let mut summary = serde_json::json!({
        "subscribers": args.subscribers,
        "connect_concurrency": args.connect_concurrency,
        "contexts": args.contexts,
        "nodes": args.addr.len(),
        "rate_target": if args.idle { 0 } else { args.rate },
        "secs": secs,
        "subscribers_connected": shared.connected.load(Relaxed),
        "connect_secs": connect_secs,
        "appends": append.len(),
        "appends_per_sec": append.len() as f64 / secs,
        "append_errors": shared.append_errors.load(Relaxed),
        "append": percentiles(&append),
        "server_rss_kib_before": memory_before.iter().map(|m| m.0).collect::<Vec<_>>(),
        "server_rss_kib_after": memory_after.iter().map(|m| m.0).collect::<Vec<_>>(),
        "server_rss_delta_kib": rss_delta_kib,
        "server_anon_delta_kib": anon_delta_kib,
        "server_kib_per_subscriber": if args.subscribers > 0 { rss_delta_kib as f64 / args.subscribers as f64 } else { 0.0 },
    });
    if let (Some(out), Some(subs)) = (summary.as_object_mut(), subs.as_object()) {
        out.extend(subs.clone());
    }
    println!("{summary}");
    Ok(())
}

async fn run_subscribers(args: Arc<Args>, shared: Arc<Shared>) -> Result<serde_json::Value> {
    let stats = Rc::new(SubscriberStats {
        delivery: RefCell::new(histogram()),
        end_to_end: RefCell::new(histogram()),
        events: Cell::new(0),
        gaps: Cell::new(0),
        failures: Cell::new(0),
        connecting: Cell::new(0),
    });
    let mut tasks = Vec::new();
    for i in 0..args.subscribers {
        let ctx = i % args.contexts.max(1);
        let path = format!("/v1/contexts/{}-{ctx}/stream", args.prefix);
        let (addr, shared, stats) = (args.addr[i % args.addr.len()], shared.clone(), stats.clone());
        let concurrency = args.connect_concurrency;
        tasks.push(glommio::spawn_local(async move {
            if let Err(e) = subscribe(addr, path, ctx, concurrency, shared, stats.clone()).await {
                if stats.failures.get() < 5 {
                    eprintln!("subscriber {i}: {e}");
                }
                stats.failures.set(stats.failures.get() + 1);
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    Ok(serde_json::json!({
        "subscriber_failures": stats.failures.get(),
        "events_received": stats.events.get(),
        "gaps": stats.gaps.get(),
        "delivery": percentiles(&stats.delivery.borrow()),
        "end_to_end": percentiles(&stats.end_to_end.borrow()),
    }))
}

async fn run_appenders(args: Arc<Args>, shared: Arc<Shared>) -> Result<Histogram<u64>> {
    let hist = Rc::new(RefCell::new(histogram()));
    let mut tasks = Vec::new();
    for k in 0..args.append_connections {
        let (args, shared, hist) = (args.clone(), shared.clone(), hist.clone());
        tasks.push(glommio::spawn_local(async move {
            if let Err(e) = appender(args, k, shared.clone(), hist).await {
                eprintln!("appender {k}: {e}");
                shared.append_errors.fetch_add(1, Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await;
    }
    let merged = hist.borrow().clone();
    Ok(merged)
}
