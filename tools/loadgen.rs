//! loadgen: a closed-loop HTTP load generator for FleetLM.
//!
//! `--connections` keep-alive connections on one glommio executor; each loops: pick an
//! operation by the `--mix` weights, send it, wait for the answer, record the latency
//! (hdrhistogram, µs) per operation. Contexts `ctx-0 … ctx-{N-1}` are created first.
//! Prints one JSON summary on stdout.
//!
//!   loadgen --addr 127.0.0.1:4000 --connections 50 --contexts 1000 --secs 10 \
//!           --message-bytes 200 --mix append=1
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use fleetlm::shard::placement::{core_of, shard_of};
use glommio::LocalExecutorBuilder;
use glommio::net::TcpStream;
use hdrhistogram::Histogram;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Server address; several (comma-separated, e.g. the nodes of a cluster) are
    /// used round-robin by connection.
    #[arg(long, default_value = "127.0.0.1:4000", value_delimiter = ',')]
    addr: Vec<SocketAddr>,
    #[arg(long, default_value_t = 50)]
    connections: usize,
    #[arg(long, default_value_t = 1000)]
    contexts: usize,
    /// Measured seconds (after --warmup-secs).
    #[arg(long, default_value_t = 10)]
    secs: u64,
    #[arg(long, default_value_t = 1)]
    warmup_secs: u64,
    /// Text bytes per appended message.
    #[arg(long, default_value_t = 200)]
    message_bytes: usize,
    /// Weights, e.g. `append=3,tail=1,replay=1,window=1`.
    #[arg(long, default_value = "append=1")]
    mix: String,
    /// Messages per replay (`from_seq=-N&limit=N`).
    #[arg(long, default_value_t = 1000)]
    replay_limit: usize,
    /// Skip creating the contexts (they exist already).
    #[arg(long)]
    no_create: bool,
    /// Stop after this many appends in total (0 = run for --secs); for loading data.
    #[arg(long, default_value_t = 0)]
    appends_total: u64,
    /// Also report the CPU time (user + system, all threads) the server process PID
    /// spent per measured request, from /proc/PID/stat: a steadier figure than
    /// throughput on a machine where client and server share the cores.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Shard-aware: read the routing from `GET /v1/cluster` of every address (each
    /// node's per-core ports; the shards' leaders from the first); each connection goes
    /// to one core's own port (`--core-listen`) of the node leading its shards and sends
    /// only requests for those contexts, so none crosses cores or nodes (while the
    /// leaders stay where they were).
    #[arg(long)]
    shard_aware: bool,
}

/// `GET /v1/cluster` of one node, as JSON.
fn cluster_view(addr: SocketAddr) -> Result<serde_json::Value> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.write_all(b"GET /v1/cluster HTTP/1.1\r\nHost: loadgen\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").context("no HTTP head")? + 4;
    serde_json::from_slice(&raw[at..]).context("GET /v1/cluster is not JSON")
}

/// Shard-aware routing over the nodes of `addrs`: for each (node, core) port that
/// leads shards now, the contexts of those shards (`ctx-0 …`). Each node's `routing`
/// gives its cores and per-core ports; the first node's view gives the shards' leaders.
fn shard_aware_targets(addrs: &[SocketAddr], contexts: usize) -> Result<Vec<(SocketAddr, Vec<usize>)>> {
    let mut ports = BTreeMap::new(); // node id → (cores, base of its core ports)
    let mut first = None;
    for &addr in addrs {
        let v = cluster_view(addr)?;
        let node = v["node_id"].as_u64().context("node_id")?;
        let r = &v["routing"];
        let cores = r["cores"].as_u64().context("routing.cores")? as u32;
        let base: SocketAddr = r["core_listen"]
            .as_str()
            .with_context(|| format!("{addr} has no per-core ports (start it with --core-listen)"))?
            .parse()?;
        ports.insert(node, (cores, base));
        first.get_or_insert(v);
    }
    let first = first.context("no address")?;
    let shards = first["routing"]["shard_count"].as_u64().context("routing.shard_count")? as u32;
    let mut by_target: BTreeMap<SocketAddr, Vec<usize>> = BTreeMap::new();
    for c in 0..contexts {
        let shard = shard_of(&format!("ctx-{c}"), shards);
        let leader = first["shards"]
            .as_array()
            .and_then(|all| all.iter().find(|s| s["shard"].as_u64() == Some(u64::from(shard))))
            .and_then(|s| s["leader"].as_u64())
            .with_context(|| format!("shard {shard} has no leader now"))?;
        let (cores, base) = *ports.get(&leader).with_context(|| format!("node {leader} is not among --addr"))?;
        let core = core_of(shard, cores as usize) as u16;
        by_target.entry(SocketAddr::new(base.ip(), base.port() + core)).or_default().push(c);
    }
    Ok(by_target.into_iter().collect())
}

/// CPU seconds (user + system, all threads) that process `pid` has used.
fn process_cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces:
    // state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks =
        |i: usize| -> Result<f64> { Ok(fields.get(i - 3).ok_or_else(|| anyhow::anyhow!("short stat"))?.parse()?) };
    // SAFETY: sysconf has no preconditions.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(14)? + ticks(15)?) / per_sec)
}

/// Machine-wide CPU ticks from the first line of /proc/stat: (steal, all states).
/// Steal is time the hypervisor ran something else while this VM had work: on a shared
/// cloud VM it can take a fifth of the CPU for minutes, and every figure measured then
/// is low by as much. Reported beside the results so that such runs can be told apart.
fn machine_cpu_ticks() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().unwrap_or_default();
    let ticks: Vec<u64> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>()?;
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is
    // already counted in user.
    let all = ticks.iter().take(8).sum();
    Ok((ticks.get(7).copied().unwrap_or(0), all))
}

const OPS: [&str; 4] = ["append", "tail", "replay", "window"];

struct Stats {
    hist: BTreeMap<&'static str, Histogram<u64>>,
    errors: BTreeMap<&'static str, u64>,
    appends: u64,
    /// Measured answers that another node served (`FleetLM-Forwarded-To`): with
    /// `--shard-aware`, requests whose leader moved during the run.
    forwarded: u64,
}

fn parse_mix(mix: &str) -> Result<Vec<(&'static str, u32)>> {
    let mut out = Vec::new();
    for part in mix.split(',').filter(|p| !p.is_empty()) {
        let (name, w) = part.split_once('=').context("mix entries are name=weight")?;
        let op = OPS.iter().find(|o| **o == name).with_context(|| format!("unknown op {name}"))?;
        out.push((*op, w.parse()?));
    }
    if out.iter().map(|o| o.1).sum::<u32>() == 0 {
        bail!("mix has no weight");
    }
    Ok(out)
}

#[path = "http_client.rs"]
mod http_client;

/// One request/response on a keep-alive connection; returns the status.
async fn exchange(conn: &mut TcpStream, req: &[u8], buf: &mut Vec<u8>) -> Result<u16> {
    Ok(http_client::exchange(conn, req, buf).await?.0)
}

/// Whether an answer's head says another node served it.
fn is_forwarded(head: &[u8]) -> bool {
    const NAME: &[u8] = b"\r\nfleetlm-forwarded-to:";
    head.windows(NAME.len()).any(|w| w.eq_ignore_ascii_case(NAME))
}

fn request(method: &str, path: &str, body: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: loadgen\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mix = parse_mix(&args.mix)?;
    let ex = LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .make()
        .map_err(|e| anyhow::anyhow!("glommio executor: {e}"))?;
    ex.run(async move { run(args, mix).await })
}

async fn run(args: Args, mix: Vec<(&'static str, u32)>) -> Result<()> {
    if !args.no_create {
        // Over several connections (and every address): one at a time, creating 100k
        // contexts on a 3-node cluster took 8 minutes (a Raft commit each).
        let creators = args.connections.clamp(1, 16);
        let mut tasks = Vec::new();
        for t in 0..creators {
            let args = args.clone();
            tasks.push(glommio::spawn_local(async move {
                let addr = args.addr[t % args.addr.len()];
                let mut conn = TcpStream::connect(addr).await.map_err(|e| anyhow::anyhow!("connect: {e}"))?;
                let mut buf = Vec::new();
                for c in (t..args.contexts).step_by(creators) {
                    let put = request("PUT", &format!("/v1/contexts/ctx-{c}"), r#"{"token_budget":1000000}"#);
                    let status = exchange(&mut conn, &put, &mut buf).await?;
                    if status >= 300 {
                        bail!("creating ctx-{c}: HTTP {status}");
                    }
                }
                Ok::<(), anyhow::Error>(())
            }));
        }
        for task in tasks {
            task.await?;
        }
    }
    let stats = Rc::new(RefCell::new(Stats {
        hist: OPS.iter().map(|o| (*o, Histogram::new(3).expect("valid"))).collect(),
        errors: OPS.iter().map(|o| (*o, 0)).collect(),
        appends: 0,
        forwarded: 0,
    }));
    let warmup_end = Instant::now() + Duration::from_secs(args.warmup_secs);
    let end = warmup_end + Duration::from_secs(args.secs);
    let total_weight: u32 = mix.iter().map(|m| m.1).sum();
    let text = "x".repeat(args.message_bytes);
    let body = format!(r#"{{"message":{{"role":"user","parts":[{{"type":"text","text":"{text}"}}]}}}}"#);
    // Shard-aware: per core, its port and the contexts it owns.
    // Shard-aware: the port of the core (of the node) that leads each context's shard.
    let by_core = if args.shard_aware { Some(shard_aware_targets(&args.addr, args.contexts)?) } else { None };
    let mut tasks = Vec::new();
    for t in 0..args.connections {
        let (args, mix, stats, body) = (args.clone(), mix.clone(), stats.clone(), body.clone());
        let own = by_core.as_ref().map(|b| b[t % b.len()].clone()).filter(|(_, ctxs)| !ctxs.is_empty());
        tasks.push(glommio::spawn_local(async move {
            let addr = own.as_ref().map_or(args.addr[t % args.addr.len()], |o| o.0);
            let mut conn = TcpStream::connect(addr).await.map_err(|e| anyhow::anyhow!("connect: {e}"))?;
            let mut buf = Vec::new();
            let mut rng: u64 = 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1);
            loop {
                let start = Instant::now();
                if start >= end || (args.appends_total > 0 && stats.borrow().appends >= args.appends_total) {
                    return Ok::<_, anyhow::Error>(());
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let c = match &own {
                    Some((_, ctxs)) => ctxs[(rng >> 16) as usize % ctxs.len()],
                    None => (rng >> 16) as usize % args.contexts,
                };
                let mut pick = (rng % u64::from(total_weight)) as u32;
                let op = mix
                    .iter()
                    .find(|(_, w)| {
                        if pick < *w {
                            true
                        } else {
                            pick -= w;
                            false
                        }
                    })
                    .map_or("append", |m| m.0);
                let req = match op {
                    "append" => request("POST", &format!("/v1/contexts/ctx-{c}/messages"), &body),
                    "tail" => request("GET", &format!("/v1/contexts/ctx-{c}/tail?limit=50"), ""),
                    "replay" => {
                        let n = args.replay_limit;
                        request("GET", &format!("/v1/contexts/ctx-{c}/messages?from_seq=-{n}&limit={n}"), "")
                    }
                    _ => request("GET", &format!("/v1/contexts/ctx-{c}/context"), ""),
                };
                let (status, head) = http_client::exchange(&mut conn, &req, &mut buf).await?;
                let forwarded = is_forwarded(&buf[..head]);
                let mut s = stats.borrow_mut();
                if forwarded && start >= warmup_end {
                    s.forwarded += 1;
                }
                if op == "append" && status == 201 {
                    s.appends += 1;
                }
                if start >= warmup_end || args.appends_total > 0 {
                    if status >= 300 {
                        *s.errors.get_mut(op).expect("known op") += 1;
                    } else {
                        let _ = s.hist.get_mut(op).expect("known op").record(start.elapsed().as_micros() as u64);
                    }
                }
            }
        }));
    }
    let t0 = Instant::now().max(warmup_end);
    glommio::timer::sleep(warmup_end.saturating_duration_since(Instant::now())).await;
    let cpu_at_start = args.server_pid.map(process_cpu_secs).transpose()?;
    let client_cpu_at_start = process_cpu_secs(std::process::id())?;
    let machine_at_start = machine_cpu_ticks()?;
    for t in tasks {
        t.await?;
    }
    let server_cpu_secs = match (args.server_pid, cpu_at_start) {
        (Some(pid), Some(start)) => Some(process_cpu_secs(pid)? - start),
        _ => None,
    };
    let client_cpu_secs = process_cpu_secs(std::process::id())? - client_cpu_at_start;
    let machine_at_end = machine_cpu_ticks()?;
    let steal_ticks = machine_at_end.0.saturating_sub(machine_at_start.0);
    let cpu_steal_pct = 100.0 * steal_ticks as f64 / machine_at_end.1.saturating_sub(machine_at_start.1).max(1) as f64;
    let secs = if args.appends_total > 0 { t0.elapsed().as_secs_f64() } else { args.secs as f64 };
    let s = stats.borrow();
    let mut ops = serde_json::Map::new();
    let mut total = 0u64;
    for (op, h) in &s.hist {
        if h.is_empty() && s.errors[op] == 0 {
            continue;
        }
        total += h.len();
        ops.insert(
            op.to_string(),
            serde_json::json!({
                "count": h.len(), "errors": s.errors[op], "per_sec": h.len() as f64 / secs,
                "p50_us": h.value_at_quantile(0.5), "p90_us": h.value_at_quantile(0.9),
                "p99_us": h.value_at_quantile(0.99), "p999_us": h.value_at_quantile(0.999), "max_us": h.max(),
            }),
        );
    }
    println!(
        "{}",
        serde_json::json!({
            "connections": args.connections, "contexts": args.contexts, "message_bytes": args.message_bytes,
            "mix": args.mix, "secs": secs, "requests_per_sec": total as f64 / secs, "ops": ops,
            "server_cpu_us_per_request": server_cpu_secs.map(|c| c * 1e6 / total.max(1) as f64),
            // This load generator's own CPU: on cores it shares with the server, what the
            // client costs bounds the throughput as much as the server does.
            "client_cpu_us_per_request": client_cpu_secs * 1e6 / total.max(1) as f64,
            "forwarded": s.forwarded,
            "cpu_steal_pct": cpu_steal_pct,
        })
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_forwarded;

    #[test]
    fn a_forwarded_answer_is_told_by_its_header_in_any_case() {
        let served_here = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n";
        let forwarded = b"HTTP/1.1 201 Created\r\nFleetLM-Forwarded-To: 2\r\nContent-Length: 2\r\n\r\n";
        let lower = b"HTTP/1.1 201 Created\r\nfleetlm-forwarded-to: 3\r\n\r\n";
        assert!(!is_forwarded(served_here));
        assert!(is_forwarded(forwarded));
        assert!(is_forwarded(lower));
        // Only a header of that name: not the same words in a value.
        assert!(!is_forwarded(b"HTTP/1.1 200 OK\r\nX-Note: fleetlm-forwarded-to: 1\r\n\r\n"));
    }
}
