//! The `fleetlm` command line: flags (each also an env var `FLEETLM_<NAME>`) → config →
//! start. No logic lives here.

/// mimalloc instead of glibc malloc: see Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use fleetlm::config::{HttpLimits, PeerLimits, RaftTimings, ServeLimits, StoreLimits, StreamLimits, WalConfig};
use fleetlm::node::{ServerConfig, serve};

#[derive(Parser)]
#[command(name = "fleetlm", version, about = "FleetLM: a durable, replicated conversation log for LLM applications")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a node. With no flags: a single node on 127.0.0.1:4000 with data in ./data.
    Serve(ServeArgs),
}

#[derive(Args)]
struct ServeArgs {
    /// HTTP address to listen on.
    #[arg(long, env = "FLEETLM_LISTEN", default_value = "127.0.0.1:4000")]
    listen: SocketAddr,
    /// This node's id in the cluster (a data dir keeps the id it was created with).
    #[arg(long, env = "FLEETLM_NODE_ID", default_value_t = 1)]
    node_id: u64,
    /// Address other nodes reach this one at; core c listens on this port + c.
    /// Needed for a cluster; without it the node is a cluster of one.
    #[arg(long, env = "FLEETLM_PEER_LISTEN")]
    peer_listen: Option<SocketAddr>,
    /// Shard-aware HTTP ports: core c also serves clients on this port + c. A client
    /// that sends each context's requests to the port of the core that owns it (see
    /// `GET /v1/cluster`, "routing") saves a hop between cores.
    #[arg(long, env = "FLEETLM_CORE_LISTEN")]
    core_listen: Option<SocketAddr>,
    /// The initial members, this node included: `1=10.0.0.1:5000,2=10.0.0.2:5000,…`
    /// (their peer addresses). Every listed node forms the cluster the first time; a node
    /// not listed waits to be added with `POST /v1/cluster/members`.
    #[arg(long, env = "FLEETLM_PEERS", value_parser = parse_peers)]
    peers: Option<BTreeMap<u64, String>>,
    /// Raft heartbeat interval, ms.
    #[arg(long, env = "FLEETLM_HEARTBEAT_INTERVAL_MS", default_value_t = RaftTimings::default().heartbeat_interval_ms)]
    heartbeat_interval_ms: u64,
    /// Raft election timeout (lower bound; the upper is twice this), ms.
    #[arg(long, env = "FLEETLM_ELECTION_TIMEOUT_MS", default_value_t = RaftTimings::default().election_timeout_min_ms)]
    election_timeout_ms: u64,
    /// A shard snapshots after this many log entries and purges its log behind.
    #[arg(long, env = "FLEETLM_SNAPSHOT_EVERY_ENTRIES", default_value_t = RaftTimings::default().snapshot_every_entries)]
    snapshot_every_entries: u64,
    /// Log entries kept behind a snapshot for slow followers.
    #[arg(long, env = "FLEETLM_LOG_KEEP_ENTRIES", default_value_t = RaftTimings::default().log_entries_kept_after_snapshot)]
    log_keep_entries: u64,
    /// Write the latency histograms (per route, per append stage, WAL syncs) to this file
    /// as an HdrHistogram interval log (`tools/latency-report` reads it).
    #[arg(long, env = "FLEETLM_LATENCY_LOG")]
    latency_log: Option<PathBuf>,
    /// Interval of the latency log: `10s`, `500ms`, `1m`.
    #[arg(long, env = "FLEETLM_LATENCY_INTERVAL", default_value = "10s", value_parser = parse_duration_ms)]
    latency_interval: u64,
    /// Data directory (created if missing).
    #[arg(long, env = "FLEETLM_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Executors (one per core, pinned). Default: all cores.
    #[arg(long, env = "FLEETLM_CORES")]
    cores: Option<usize>,
    /// CPU that executor 0 is pinned to (executor i: this + i). For several nodes on
    /// one machine.
    #[arg(long, env = "FLEETLM_FIRST_CPU", default_value_t = 0)]
    first_cpu: usize,
    /// Leave the executors unpinned: the kernel places them. For a node that shares its
    /// CPUs (a container without exclusive cores, several nodes on fewer cores than
    /// they have executors), where pinning would stack executors on the same CPUs.
    #[arg(long, env = "FLEETLM_NO_PIN")]
    no_pin: bool,
    /// After SIGTERM or SIGINT, keep serving this long (not ready, streams ended,
    /// connections closed after each answer), then exit. A second signal exits at once.
    #[arg(long, env = "FLEETLM_SHUTDOWN_GRACE_MS", default_value_t = fleetlm::config::SHUTDOWN_GRACE_MS_DEFAULT)]
    shutdown_grace_ms: u64,
    /// Shards, fixed at the first start (default 2 × cores) and stored in the data dir.
    #[arg(long, env = "FLEETLM_SHARDS")]
    shards: Option<u32>,
    /// Require `Authorization: Bearer <KEY>` on every /v1 request.
    #[arg(long, env = "FLEETLM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Largest request body, bytes (413 beyond).
    #[arg(long, env = "FLEETLM_BODY_MAX_BYTES", default_value_t = HttpLimits::default().body_max_bytes)]
    body_max_bytes: usize,
    /// Largest request head, bytes (431 beyond).
    #[arg(long, env = "FLEETLM_HEAD_MAX_BYTES", default_value_t = HttpLimits::default().head_max_bytes)]
    head_max_bytes: usize,
    /// Idle keep-alive connections are closed after this, ms.
    #[arg(long, env = "FLEETLM_IDLE_TIMEOUT_MS", default_value_t = HttpLimits::default().idle_timeout_ms)]
    idle_timeout_ms: u64,
    /// A started request must be complete within this, ms.
    #[arg(long, env = "FLEETLM_REQUEST_READ_TIMEOUT_MS", default_value_t = HttpLimits::default().request_read_timeout_ms)]
    request_read_timeout_ms: u64,
    /// No leader/quorum within this → 503, ms.
    #[arg(long, env = "FLEETLM_WRITE_DEADLINE_MS", default_value_t = ServeLimits::default().write_deadline_ms)]
    write_deadline_ms: u64,
    /// Adding a node: it must catch up within this or it stays a learner (503), ms.
    #[arg(long, env = "FLEETLM_MEMBERSHIP_DEADLINE_MS", default_value_t = ServeLimits::default().membership_deadline_ms)]
    membership_deadline_ms: u64,
    /// Message-body segment size, bytes, fixed when the data dir is created (each shard
    /// preallocates one such file at a time). Every node of a cluster must use the same.
    /// At least 4 × --body-max-bytes.
    #[arg(long, env = "FLEETLM_BODY_SEGMENT_SIZE_BYTES")]
    body_segment_size_bytes: Option<u64>,
    /// Writes get 503 while the data dir's filesystem has less free space than this,
    /// bytes (default: one WAL segment per core and one body segment per shard; 0: never).
    #[arg(long, env = "FLEETLM_DISK_RESERVE_BYTES")]
    disk_reserve_bytes: Option<u64>,
    /// WAL segment size, bytes.
    #[arg(long, env = "FLEETLM_SEGMENT_SIZE_BYTES", default_value_t = WalConfig::default().segment_size_bytes)]
    segment_size_bytes: u64,
    /// WAL segments per core before reclamation copies the live entries of small, idle
    /// shards forward so that old segments can be deleted (at least 2).
    #[arg(long, env = "FLEETLM_WAL_SEGMENTS_SOFT_MAX", default_value_t = WalConfig::default().segments_soft_max)]
    wal_segments_soft_max: usize,
    /// Largest metadata object of a context, bytes of compact JSON (more → 400). Every
    /// node of a cluster must use the same (PATCH results are checked when applied).
    #[arg(long, env = "FLEETLM_METADATA_MAX_BYTES", default_value_t = StoreLimits::default().metadata_max_bytes)]
    metadata_max_bytes: usize,
    /// Contexts one shard holds, tombstoned ones included (a new one beyond → 409
    /// too_many_contexts). Every node of a cluster must use the same.
    #[arg(long, env = "FLEETLM_CONTEXTS_MAX_PER_SHARD", default_value_t = StoreLimits::default().contexts_max_per_shard)]
    contexts_max_per_shard: usize,
    /// Contexts one shard keeps in memory; the least recently used beyond it, once
    /// durable in a snapshot, are read from disk when used. Local to this node.
    #[arg(long, env = "FLEETLM_HOT_CONTEXTS_PER_SHARD", default_value_t = StoreLimits::default().hot_contexts_max_per_shard)]
    hot_contexts_per_shard: usize,
    /// Bytes of contexts one shard keeps in memory, measured by their checkpoint records
    /// (metadata, compaction replacements in the window): the least recently used beyond
    /// it leave memory like those beyond --hot-contexts-per-shard. Local to this node.
    #[arg(long, env = "FLEETLM_HOT_CONTEXTS_BYTES_PER_SHARD", default_value_t = StoreLimits::default().hot_contexts_max_bytes_per_shard)]
    hot_contexts_bytes_per_shard: u64,
    /// Largest body of one read answer, bytes: tail and replay return fewer messages, a
    /// larger window is 413 window_too_large.
    #[arg(long, env = "FLEETLM_RESPONSE_MAX_BYTES", default_value_t = ServeLimits::default().response_max_bytes)]
    response_max_bytes: usize,
    /// The secret every node of the cluster shares (at least 16 bytes): peers prove they
    /// know it before any frame is read. Required with --peer-listen, unless
    /// --insecure-peers.
    #[arg(long, env = "FLEETLM_CLUSTER_SECRET", hide_env_values = true)]
    cluster_secret: Option<String>,
    /// Accept peer connections without authentication (anyone who reaches the peer port
    /// can then read, write and reconfigure the cluster). For isolated test networks.
    #[arg(long, env = "FLEETLM_INSECURE_PEERS")]
    insecure_peers: bool,
    /// Bytes of large answers rendered and not yet read by their clients, node-wide; a
    /// read that would go past it gets 503 until clients catch up.
    #[arg(long, env = "FLEETLM_RESPONSE_BUFFER_MAX_BYTES", default_value_t = ServeLimits::default().response_buffer_max_bytes)]
    response_buffer_max_bytes: usize,
    /// Request bodies of 16 KiB and up let through per second, node-wide (each core its
    /// share); faster, they wait up to 2 s, then get 429 rate_limited. Large bodies share
    /// the disk with every append's fsync. 0: no limit.
    #[arg(long, env = "FLEETLM_LARGE_BODY_BYTES_PER_SEC", default_value_t = ServeLimits::default().large_body_bytes_per_sec)]
    large_body_bytes_per_sec: u64,
    /// Live streams one core serves (more → 429 too_many_streams).
    #[arg(long, env = "FLEETLM_STREAMS_MAX_PER_CORE", default_value_t = StreamLimits::default().subscribers_max_per_core)]
    streams_max_per_core: usize,
    /// Live streams of one context on this node (more → 429 too_many_streams).
    #[arg(long, env = "FLEETLM_STREAMS_MAX_PER_CONTEXT", default_value_t = StreamLimits::default().subscribers_max_per_context)]
    streams_max_per_context: usize,
    /// Events queued for one stream's client; a client further behind gets `gap` and is closed.
    #[arg(long, env = "FLEETLM_STREAM_BUFFER_EVENTS", default_value_t = StreamLimits::default().buffer_events_max)]
    stream_buffer_events: usize,
    /// Bytes of events queued for one stream's client (as above).
    #[arg(long, env = "FLEETLM_STREAM_BUFFER_MAX_BYTES", default_value_t = StreamLimits::default().buffer_max_bytes)]
    stream_buffer_max_bytes: usize,
    /// A stream with no event for this long gets a ping (10s, 500ms, …).
    #[arg(long, env = "FLEETLM_STREAM_PING_INTERVAL", value_parser = parse_duration_ms, default_value = "30s")]
    stream_ping_interval: u64,
    /// A WebSocket client that sends nothing (no pong) for this long is closed.
    #[arg(long, env = "FLEETLM_STREAM_SILENCE_TIMEOUT", value_parser = parse_duration_ms, default_value = "90s")]
    stream_silence_timeout: u64,
    /// A write to a client that makes no progress for this long closes its connection.
    #[arg(long, env = "FLEETLM_WRITE_TIMEOUT_MS", default_value_t = HttpLimits::default().write_timeout_ms)]
    write_timeout_ms: u64,
}

/// `10s`, `500ms`, `2m` or plain milliseconds → milliseconds.
fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1_000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else {
        (s, 1)
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("{s:?} is not a duration like 10s or 500ms"))?;
    match n.checked_mul(mult) {
        Some(ms) if ms >= 100 => Ok(ms),
        _ => Err(format!("{s:?}: at least 100ms")),
    }
}

/// `1=host:port,2=host:port`.
fn parse_peers(s: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (id, addr) = item.split_once('=').ok_or_else(|| format!("{item:?}: expected ID=HOST:PORT"))?;
        let id: u64 = id.trim().parse().map_err(|_| format!("{id:?} is not a node id"))?;
        let addr = addr.trim();
        if addr.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
            return Err(format!("{addr:?} is not HOST:PORT"));
        }
        if id == 0 || peers.insert(id, addr.to_owned()).is_some() {
            return Err(format!("node id {id} is 0 or listed twice"));
        }
    }
    Ok(peers)
}

fn main() -> std::process::ExitCode {
    let Cli { command: Command::Serve(a) } = Cli::parse();
    // Diagnostics of the Raft layer (openraft logs through `tracing`), e.g.
    // FLEETLM_LOG=openraft=info,fleetlm=debug.
    let filter = tracing_subscriber::EnvFilter::try_from_env("FLEETLM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(false).init();
    let cores = a.cores.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    // The peer port takes Raft RPCs, membership changes, snapshots and forwarded calls:
    // it is never open to strangers by default.
    let cluster_secret = match (&a.cluster_secret, a.insecure_peers, a.peer_listen) {
        (Some(s), _, _) => match fleetlm::raft::peer_auth::ClusterSecret::new(s.as_bytes()) {
            Ok(secret) => Some(secret),
            Err(e) => {
                eprintln!("fleetlm: --cluster-secret: {e}");
                return std::process::ExitCode::FAILURE;
            }
        },
        (None, true, _) | (None, _, None) => None,
        (None, false, Some(_)) => {
            eprintln!(
                "fleetlm: --peer-listen needs --cluster-secret (FLEETLM_CLUSTER_SECRET, the same on every node, at least \
                 16 bytes), or --insecure-peers on an isolated network"
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    let config = ServerConfig {
        listen: a.listen,
        data_dir: a.data_dir,
        cores,
        first_cpu: a.first_cpu,
        pin_executors: !a.no_pin,
        shutdown_grace_ms: a.shutdown_grace_ms,
        shards: a.shards,
        body_segment_size_bytes: a.body_segment_size_bytes,
        node_id: a.node_id,
        peer_listen: a.peer_listen,
        core_listen: a.core_listen,
        peers: a.peers.unwrap_or_default(),
        api_key: a.api_key,
        http: HttpLimits {
            body_max_bytes: a.body_max_bytes,
            head_max_bytes: a.head_max_bytes,
            idle_timeout_ms: a.idle_timeout_ms,
            request_read_timeout_ms: a.request_read_timeout_ms,
            write_timeout_ms: a.write_timeout_ms,
            ..HttpLimits::default()
        },
        store: StoreLimits {
            metadata_max_bytes: a.metadata_max_bytes,
            contexts_max_per_shard: a.contexts_max_per_shard,
            hot_contexts_max_per_shard: a.hot_contexts_per_shard,
            hot_contexts_max_bytes_per_shard: a.hot_contexts_bytes_per_shard,
            ..StoreLimits::default()
        },
        serve: ServeLimits {
            write_deadline_ms: a.write_deadline_ms,
            membership_deadline_ms: a.membership_deadline_ms,
            disk_reserve_bytes: a.disk_reserve_bytes,
            response_max_bytes: a.response_max_bytes,
            response_buffer_max_bytes: a.response_buffer_max_bytes,
            large_body_bytes_per_sec: a.large_body_bytes_per_sec,
            ..ServeLimits::default()
        },
        // A WAL record holds one Raft entry: a command with a message of at most one
        // request body, JSON-encoded, with room for escaping.
        wal: WalConfig {
            segment_size_bytes: a.segment_size_bytes,
            segments_soft_max: a.wal_segments_soft_max,
            record_payload_max_bytes: (a.body_max_bytes.saturating_mul(2) + (64 << 10))
                .min(fleetlm::wal::format::RECORD_PAYLOAD_LIMIT_BYTES as usize)
                as u32,
            ..WalConfig::default()
        },
        raft: RaftTimings {
            heartbeat_interval_ms: a.heartbeat_interval_ms,
            election_timeout_min_ms: a.election_timeout_ms,
            election_timeout_max_ms: a.election_timeout_ms * 2,
            snapshot_every_entries: a.snapshot_every_entries,
            log_entries_kept_after_snapshot: a.log_keep_entries,
            ..RaftTimings::default()
        },
        peer: PeerLimits { cluster_secret, ..PeerLimits::default() },
        stream: StreamLimits {
            subscribers_max_per_core: a.streams_max_per_core,
            subscribers_max_per_context: a.streams_max_per_context,
            buffer_events_max: a.stream_buffer_events.max(1),
            buffer_max_bytes: a.stream_buffer_max_bytes,
            ping_interval_ms: a.stream_ping_interval,
            silence_timeout_ms: a.stream_silence_timeout,
            ..StreamLimits::default()
        },
        latency_log: a.latency_log,
        latency_interval_ms: a.latency_interval,
    };
    if let Some(b) = config.body_segment_size_bytes
        && b < 4 * config.http.body_max_bytes as u64
    {
        eprintln!("fleetlm: --body-segment-size-bytes must be at least 4 × --body-max-bytes");
        return std::process::ExitCode::FAILURE;
    }
    if config.api_key.as_ref().is_some_and(|k| k.trim().is_empty()) {
        // An empty key used to turn authentication off without a word.
        eprintln!("fleetlm: --api-key (FLEETLM_API_KEY) is empty: give a key, or leave it out to run without one");
        return std::process::ExitCode::FAILURE;
    }
    if config.node_id == 0 {
        eprintln!("fleetlm: --node-id must be > 0");
        return std::process::ExitCode::FAILURE;
    }
    if !config.peers.is_empty() && config.peer_listen.is_none() {
        eprintln!("fleetlm: --peers needs --peer-listen (where the other nodes reach this one)");
        return std::process::ExitCode::FAILURE;
    }
    if let Err(e) = config.wal.validate() {
        eprintln!("fleetlm: {e} (raise --segment-size-bytes or lower --body-max-bytes)");
        return std::process::ExitCode::FAILURE;
    }
    eprintln!(
        "fleetlm: node {} serving http://{} ({} cores, data in {})",
        config.node_id,
        config.listen,
        config.cores,
        config.data_dir.display()
    );
    match serve(config) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fleetlm: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
