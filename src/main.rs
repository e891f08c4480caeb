//! The `fleetlm` command line: flags (each also an env var `FLEETLM_<NAME>`) → config →
//! start. No logic lives here.
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use fleetlm::config::{HttpLimits, RaftTimings, ServeLimits, StoreLimits, WalConfig};
use fleetlm::shard::{ServerConfig, serve};

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
    /// Data directory (created if missing).
    #[arg(long, env = "FLEETLM_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// Executors (one per core, pinned). Default: all cores.
    #[arg(long, env = "FLEETLM_CORES")]
    cores: Option<usize>,
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
    /// WAL segment size, bytes.
    #[arg(long, env = "FLEETLM_SEGMENT_SIZE_BYTES", default_value_t = WalConfig::default().segment_size_bytes)]
    segment_size_bytes: u64,
}

fn main() -> std::process::ExitCode {
    let Cli { command: Command::Serve(a) } = Cli::parse();
    let cores = a.cores.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let config = ServerConfig {
        listen: a.listen,
        data_dir: a.data_dir,
        cores,
        shards: a.shards,
        node_id: 1,
        api_key: a.api_key.filter(|k| !k.is_empty()),
        http: HttpLimits {
            body_max_bytes: a.body_max_bytes,
            head_max_bytes: a.head_max_bytes,
            idle_timeout_ms: a.idle_timeout_ms,
            request_read_timeout_ms: a.request_read_timeout_ms,
            ..HttpLimits::default()
        },
        store: StoreLimits::default(),
        serve: ServeLimits { write_deadline_ms: a.write_deadline_ms, ..ServeLimits::default() },
        // A WAL record holds one Raft entry: a command with a message of at most one
        // request body, JSON-encoded, with room for escaping.
        wal: WalConfig {
            segment_size_bytes: a.segment_size_bytes,
            record_payload_max_bytes: (a.body_max_bytes.saturating_mul(2) + (64 << 10))
                .min(fleetlm::wal::format::RECORD_PAYLOAD_LIMIT_BYTES as usize)
                as u32,
            ..WalConfig::default()
        },
        raft: RaftTimings::default(),
    };
    if let Err(e) = config.wal.validate() {
        eprintln!("fleetlm: {e} (raise --segment-size-bytes or lower --body-max-bytes)");
        return std::process::ExitCode::FAILURE;
    }
    eprintln!(
        "fleetlm: serving http://{} ({} cores, data in {})",
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
