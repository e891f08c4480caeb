//! Every limit and default of FleetLM in one place.
//!
//! Sizes are in `*_bytes`, times in `*_ms`/`*_us`, counts in `*_max`. Nothing in the
//! server is unbounded: if a queue, a body or a batch has a size, that size is here.
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything `fleetlm serve` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub cores: usize,
    /// CPU of executor 0 (executor i runs on `first_cpu + i`, modulo the CPUs).
    pub first_cpu: usize,
    /// Pin executor i to CPU `first_cpu + i` (when there are at least as many CPUs as
    /// executors); `false`: the kernel places them (`--no-pin`).
    pub pin_executors: bool,
    /// After SIGTERM or SIGINT, how long the node keeps serving (not ready, streams
    /// ended, connections closed after each answer) before it exits (`crate::shutdown`).
    pub shutdown_grace_ms: u64,
    /// Shards at first start; afterwards the data dir's value wins (must match if given).
    pub shards: Option<u32>,
    /// Message-body segment size at first start (default 64 MiB); then the data dir's.
    pub body_segment_size_bytes: Option<u64>,
    pub node_id: u64,
    /// Where other nodes reach this one: core `c` listens on this port + `c`. `None`:
    /// a single node that no peer can reach.
    pub peer_listen: Option<SocketAddr>,
    /// Shard-aware HTTP ports: core `c` also accepts clients on this port + `c`, so that
    /// a client that sends each context's requests to its core's port saves the
    /// cross-core hop (`GET /v1/cluster` says how to compute it). `None`: only `listen`.
    pub core_listen: Option<SocketAddr>,
    /// The initial members (node id → peer address), this node included. Empty: a
    /// cluster of one. A node not listed here waits to be added
    /// (`POST /v1/cluster/members`).
    pub peers: BTreeMap<u64, String>,
    pub api_key: Option<String>,
    pub http: HttpLimits,
    pub store: StoreLimits,
    pub serve: ServeLimits,
    pub wal: WalConfig,
    pub raft: RaftTimings,
    pub peer: PeerLimits,
    pub stream: StreamLimits,
    /// Write an HdrHistogram interval log of the latency histograms here.
    pub latency_log: Option<PathBuf>,
    pub latency_interval_ms: u64,
}

/// openraft's ticks (each group's, every `heartbeat_interval_ms × 13 / 64`: 10 ms at the
/// default 50 ms; the only sleeps it takes until a deadline) end on a shared grid of this
/// step, so the ticks of a core's groups wake the executor together instead of one
/// wake-up each: an idle 3-node cluster at 64 shards used 62 % of a core, 28–30 % with
/// a 2 ms grid (bench/results/idle-groups.md). A tick is late by at most this.
pub const RAFT_TIMER_SLACK_US: u64 = 2_000;
/// Only sleeps at least this long move to the grid, so that the slack adds at most a
/// quarter to any of them (shorter ticks, from a heartbeat below 40 ms, stay exact).
pub const RAFT_TIMER_COALESCE_MIN_US: u64 = 4 * RAFT_TIMER_SLACK_US;

/// Locked memory each glommio executor registers for io_uring buffers. 1 MiB works
/// under the usual 8 MiB `ulimit -l` of non-root users; below 512 KiB glommio refuses
/// to start (DESIGN.md, measured facts).
pub const GLOMMIO_IO_MEMORY_BYTES: usize = 1 << 20;

/// Limits of the write-ahead log: the type is the WAL's own (`crate::wal::WalConfig`,
/// which checks the relations between them against its record format); the defaults
/// are here.
pub use crate::wal::WalConfig;

/// Default segment size: 64 MiB (issue #2). Large enough that rollover (a file
/// create + fallocate + two fsyncs) is rare; small enough that purge frees space
/// promptly after a snapshot.
pub const WAL_SEGMENT_SIZE_BYTES_DEFAULT: u64 = 64 << 20;
/// Default record payload cap: 4 MiB, four times the HTTP body limit.
pub const WAL_RECORD_PAYLOAD_MAX_BYTES_DEFAULT: u32 = 4 << 20;
/// Default cap on records per append call.
pub const WAL_APPEND_BATCH_MAX_DEFAULT: usize = 4096;
/// Default segments per core's log before reclamation copies live entries forward:
/// 8 × 64 MiB = 512 MiB of log per core, the same order as four shards' logs each
/// holding a couple of segments before one log per core (issue #14).
pub const WAL_SEGMENTS_SOFT_MAX_DEFAULT: usize = 8;
/// How often each core checks for large shards that pin old segments of its log
/// (`crate::shard::log_pressure`).
pub const LOG_PRESSURE_POLL_MS: u64 = 1_000;
/// How often each core checks whether a shard's changes since its last snapshot hold
/// more than its hot-context byte budget (`crate::shard::memory_pressure`).
pub const MEMORY_PRESSURE_POLL_MS: u64 = 100;
/// Least time between two snapshots one shard is asked for because it pins the log.
pub const LOG_PRESSURE_SNAPSHOT_INTERVAL_MS: u64 = 10_000;
impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_size_bytes: WAL_SEGMENT_SIZE_BYTES_DEFAULT,
            record_payload_max_bytes: WAL_RECORD_PAYLOAD_MAX_BYTES_DEFAULT,
            append_batch_max: WAL_APPEND_BATCH_MAX_DEFAULT,
            segments_soft_max: WAL_SEGMENTS_SOFT_MAX_DEFAULT,
            page_release_sweep_bytes: crate::files::PAGE_RELEASE_SWEEP_BYTES,
        }
    }
}

/// Limits of the context store (`crate::store`). Snapshots hold the first eight fields
/// for compatibility only (`crate::store::Store`); a node applies its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreLimits {
    /// Longest `role` of a message.
    pub role_max_bytes: usize,
    /// Most parts in one message.
    pub parts_max: usize,
    /// Largest `limit` of the last_n / skip_parts policies.
    pub policy_limit_max: u32,
    /// Most `skip_kinds` of the skip_parts policy.
    pub skip_kinds_max: usize,
    /// Idempotency keys remembered per context (docs/api.md: at least 10,000).
    pub idempotency_keys_per_context: usize,
    /// Longest `Idempotency-Key` header.
    pub idempotency_key_max_bytes: usize,
    /// Largest page of tail / replay (larger requests are clamped).
    pub page_limit_max: usize,
    /// Page size of replay when `limit` is absent.
    pub page_limit_default: usize,
    /// Largest metadata object of a context, as compact JSON (PUT and the result of a
    /// PATCH; more → 400). Checked when a PATCH is applied: every node must use the same.
    pub metadata_max_bytes: usize,
    /// Contexts one shard holds, tombstoned ones included (a PUT of a new one beyond it
    /// → 409 `too_many_contexts`). Checked when applied: every node must use the same.
    pub contexts_max_per_shard: usize,
    /// Contexts one shard keeps in memory (≈ 1–2 KB each); beyond it, the least
    /// recently used whose state is durable in a snapshot leave memory after each
    /// snapshot and are read from their checkpoint record when used (a few µs).
    /// Local to the node: replicas may differ.
    pub hot_contexts_max_per_shard: usize,
    /// And at most this many bytes of them, measured by their checkpoint records: a
    /// context with 64 KiB of metadata (parsed, in memory while it is hot) weighs what it
    /// holds; counted alone, 20,000 such contexts per shard would pin 1.25 GiB and more.
    /// In-memory contexts take about 1–3× their record. Local to the node.
    pub hot_contexts_max_bytes_per_shard: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        StoreLimits {
            role_max_bytes: 256,
            parts_max: 1024,
            policy_limit_max: 100_000,
            skip_kinds_max: 32,
            idempotency_keys_per_context: 10_000,
            idempotency_key_max_bytes: 128,
            page_limit_max: 1000,
            page_limit_default: 100,
            metadata_max_bytes: 64 << 10,
            contexts_max_per_shard: 1_000_000,
            hot_contexts_max_per_shard: 20_000,
            hot_contexts_max_bytes_per_shard: 32 << 20,
        }
    }
}

/// Raft timing and log retention of every shard (`crate::raft`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftTimings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A snapshot is built after this many log entries since the last one.
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind a snapshot (for slow followers).
    pub log_entries_kept_after_snapshot: u64,
    /// A follower this far behind is sent a snapshot instead of log entries.
    pub replication_lag_threshold_entries: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        RaftTimings {
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 150,
            election_timeout_max_ms: 300,
            snapshot_every_entries: 20_000,
            log_entries_kept_after_snapshot: 1_000,
            replication_lag_threshold_entries: 50_000,
        }
    }
}

/// Read buffer of each peer connection (Raft RPCs and forwarded calls). A frame is a
/// 4-byte length and a body: unbuffered, that was two reads per frame; buffered, one
/// read brings the length, the body and whatever frames followed.
pub const PEER_READ_BUFFER_BYTES: usize = 64 << 10;

/// Upper bound of `HttpLimits::headers_max`: the parser's header slots live on the stack.
pub const HTTP_HEADERS_MAX_CAP: usize = 256;

/// Limits of the HTTP layer (`crate::http`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// Request line + headers (docs/api.md: 16 KiB → 431).
    pub head_max_bytes: usize,
    /// Request body (docs/api.md: 1 MiB → 413).
    pub body_max_bytes: usize,
    /// Most headers in one request (at most `HTTP_HEADERS_MAX_CAP`).
    pub headers_max: usize,
    /// A keep-alive connection with no request in progress is closed after this.
    pub idle_timeout_ms: u64,
    /// A request must arrive in full within this once its first byte has.
    pub request_read_timeout_ms: u64,
    /// Requests parsed ahead of their responses on one connection (pipelining).
    pub pipeline_max: usize,
    /// Open connections per executor; more are closed at accept.
    pub connections_max_per_core: usize,
    /// After a final answer (an error that closes the connection), input is drained
    /// for at most this long and this much, so that the answer is not lost to a reset.
    pub linger_ms: u64,
    pub linger_drain_max_bytes: usize,
    /// A write to a client that makes no progress for this long closes the connection
    /// (a client that pipelines requests and never reads the answers pins them).
    pub write_timeout_ms: u64,
    /// Response bodies up to this size are copied behind their head and sent with the
    /// other answers of the batch in one write; larger ones (a 1000-message replay is
    /// ~300 KiB) are written from their own buffer, saving a copy of the whole body.
    pub response_coalesce_max_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            head_max_bytes: 16 << 10,
            body_max_bytes: 1 << 20,
            headers_max: 64,
            idle_timeout_ms: 60_000,
            request_read_timeout_ms: 10_000,
            pipeline_max: 64,
            connections_max_per_core: 10_000,
            linger_ms: 2_000,
            linger_drain_max_bytes: 4 << 20,
            write_timeout_ms: 10_000,
            response_coalesce_max_bytes: 16 << 10,
        }
    }
}

/// Deadlines and sizes of the serving path (`crate::api`, `crate::shard`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeLimits {
    /// A request that cannot reach a leader with a quorum within this gets 503.
    pub write_deadline_ms: u64,
    /// Sent as `Retry-After` (seconds) with a 503.
    pub retry_after_secs: u64,
    /// Capacity of each cross-core channel (requests in flight from one core to another).
    pub mesh_channel_capacity: usize,
    /// Adding or removing a node (the new node catches up within this).
    pub membership_deadline_ms: u64,
    /// Pause before trying again when no leader is known or the leader moved.
    pub leader_retry_pause_ms: u64,
    /// How often each core checks whether it leads more shards than its share and
    /// hands leadership to the preferred node.
    pub leader_balance_interval_ms: u64,
    /// Leadership is handed to the preferred node only when it is at most this many
    /// entries behind.
    pub leader_transfer_lag_max_entries: u64,
    /// `/health/ready` counts a shard's leader as reachable when it was heard from
    /// (a quorum ack on the leader, a heartbeat on a follower) within this.
    pub leader_stale_after_ms: u64,
    /// Writes are refused (503) while the data dir's filesystem has less free space
    /// than this (`crate::shard::disk`); `None`: one WAL segment and one message-body
    /// segment per shard; 0: never.
    pub disk_reserve_bytes: Option<u64>,
    /// Largest body of a read answer, rendered on the shard's core: tail and replay
    /// return fewer messages (the client pages on), a larger window is 413
    /// `window_too_large`.
    pub response_max_bytes: usize,
    /// Bytes of large answers (`BUDGETED_ANSWER_MIN_BYTES` and up) rendered and not yet
    /// written to their clients, node-wide; a read that would go past it gets 503
    /// (`crate::budget`): slow readers pin at most this much memory in all.
    pub response_buffer_max_bytes: usize,
    /// Request bodies of `RATE_LIMITED_BODY_MIN_BYTES` and up the node lets through per
    /// second (each core its share); faster, they wait, and past
    /// `LARGE_BODY_WAIT_MAX_MS` get 429 `rate_limited` (`crate::api::byte_rate`: the
    /// disk is shared, and a stream of large bodies delays every append's fsync).
    /// 0: no limit.
    pub large_body_bytes_per_sec: u64,
}

/// Live streams (`GET /v1/contexts/:id/stream`, `crate::shard::stream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamLimits {
    /// Streams served by one core (each is also an HTTP connection of the core that
    /// accepted it, within `connections_max_per_core`); more → 429 `too_many_streams`.
    pub subscribers_max_per_core: usize,
    /// Streams of one context on one node; more → 429 `too_many_streams`.
    pub subscribers_max_per_context: usize,
    /// Events queued for one stream that its client has not taken yet; a stream that
    /// falls further behind gets `gap` and is closed (apply never waits for it).
    pub buffer_events_max: usize,
    /// Bytes of those queued events.
    pub buffer_max_bytes: usize,
    /// Bytes of history rendered at once while a stream replays from its cursor (at
    /// least one event), and events per such page.
    pub replay_page_max_bytes: usize,
    pub replay_page_events_max: usize,
    /// A `ping` after this long without an event.
    pub ping_interval_ms: u64,
    /// A WebSocket client silent for this long (no pong, no message) is closed.
    pub silence_timeout_ms: u64,
    /// Largest WebSocket message or frame a client may send (clients send pongs).
    pub client_message_max_bytes: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            subscribers_max_per_core: 10_000,
            subscribers_max_per_context: 1_000,
            buffer_events_max: 1_024,
            buffer_max_bytes: 8 << 20,
            replay_page_max_bytes: 256 << 10,
            replay_page_events_max: 512,
            ping_interval_ms: 30_000,
            silence_timeout_ms: 90_000,
            client_message_max_bytes: 64 << 10,
        }
    }
}

/// Answers of at least this many bytes count against `response_buffer_max_bytes`.
pub const BUDGETED_ANSWER_MIN_BYTES: usize = 64 << 10;

/// How long a free-space reading of the data dir is trusted, ms.
pub const DISK_FREE_RECHECK_MS: u64 = 100;

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            write_deadline_ms: 2_000,
            retry_after_secs: 1,
            mesh_channel_capacity: 1024,
            membership_deadline_ms: 60_000,
            leader_retry_pause_ms: 20,
            leader_balance_interval_ms: 2_000,
            leader_transfer_lag_max_entries: 1_000,
            leader_stale_after_ms: 1_000,
            disk_reserve_bytes: None,
            response_max_bytes: 16 << 20,
            response_buffer_max_bytes: 256 << 20,
            large_body_bytes_per_sec: 4 << 20,
        }
    }
}

/// The node-to-node transport (`crate::raft::network`, `crate::shard::peer`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLimits {
    /// Largest frame (one request or answer without snapshot bytes). Raft batches are
    /// kept under it by `append_entries_max`.
    pub frame_max_bytes: u64,
    /// Entries per append-entries RPC: with 2 MiB entries at most this stays under
    /// `frame_max_bytes`.
    pub append_entries_max: u64,
    pub connect_timeout_ms: u64,
    /// Floor under openraft's per-RPC deadline (which is one heartbeat interval).
    pub rpc_timeout_min_ms: u64,
    /// Sending a whole snapshot.
    pub snapshot_timeout_ms: u64,
    /// Snapshot bytes are read and written in chunks of this size (the memory used).
    pub snapshot_chunk_bytes: usize,
    pub reconnect_backoff_min_ms: u64,
    pub reconnect_backoff_max_ms: u64,
    /// Wait after a peer that answered but does not speak the peer protocol (wrong
    /// address, e.g. an HTTP port) or failed the cluster-secret handshake: a
    /// misconfiguration, not an outage, so retries are slow (and so are their log lines).
    pub protocol_error_backoff_ms: u64,
    /// Open inbound peer connections per core; more are closed at accept.
    pub connections_max_per_core: usize,
    /// Largest snapshot index (the in-memory part of a shard) accepted from a peer.
    pub snapshot_index_max_bytes: u64,
    /// Requests served at once per inbound peer connection (forwarded calls are
    /// multiplexed); reading pauses beyond it.
    pub calls_in_flight_max_per_connection: usize,
    /// The cluster secret peers prove they know before any frame is read
    /// (`crate::raft::peer_auth`); `None`: no handshake (a single node, or
    /// `--insecure-peers`).
    pub cluster_secret: Option<ClusterSecret>,
    /// This node's identity and the data dirs it knows its peers by
    /// (`crate::raft::known_peers`), set when the node opens its data dir. With it,
    /// every peer connection starts with the handshake (even without a secret).
    pub peer_book: Option<crate::raft::known_peers::SharedPeerBook>,
    /// The peer handshake completes within this.
    pub handshake_timeout_ms: u64,
    /// Once the first byte of a peer frame (or of a snapshot chunk) has arrived, the
    /// rest must arrive within this, or the connection is closed. Between frames an
    /// authenticated peer may stay quiet (a long call may be in flight on the link).
    pub frame_read_timeout_ms: u64,
}

impl Default for PeerLimits {
    fn default() -> Self {
        PeerLimits {
            frame_max_bytes: 160 << 20,
            append_entries_max: 64,
            connect_timeout_ms: 500,
            rpc_timeout_min_ms: 1_000,
            snapshot_timeout_ms: 300_000,
            snapshot_chunk_bytes: 1 << 20,
            reconnect_backoff_min_ms: 20,
            reconnect_backoff_max_ms: 200,
            protocol_error_backoff_ms: 5_000,
            connections_max_per_core: 1_024,
            snapshot_index_max_bytes: 1 << 30,
            calls_in_flight_max_per_connection: 4_096,
            cluster_secret: None,
            peer_book: None,
            handshake_timeout_ms: 5_000,
            frame_read_timeout_ms: 60_000,
        }
    }
}

/// Request bodies at least this large are validated (parsed, checked, rendered) on the
/// low-priority offload threads rather than on the executor (`crate::offload`).
pub const VALIDATE_OFF_CORE_MIN_BYTES: usize = 64 << 10;
/// Large bodies waiting for an offload thread, per core; beyond, 503 with Retry-After.
pub const OFFLOAD_QUEUE_PER_CORE: usize = 16;
/// Request bodies at least this large count against `large_body_bytes_per_sec`
/// (an LLM message of a few thousand tokens is under it; a pasted document, a tool's
/// output or a compaction summary of hundreds of KB is over it).
pub const RATE_LIMITED_BODY_MIN_BYTES: usize = 16 << 10;
/// Longest a large body waits for its share of `large_body_bytes_per_sec`; one that
/// would wait longer gets 429 at once. Bounds the bytes waiting per core to
/// `rate × wait + one body`.
pub const LARGE_BODY_WAIT_MAX_MS: u64 = 2_000;

/// Descriptors kept out of the client-connection cap (`crate::node`): for the process
/// (listeners, io_uring, the blocking pool, logs) and for each shard (its WAL and
/// body segment files, spares, snapshot files, io_uring handles of segments).
pub const FD_RESERVE_BASE: u64 = 256;
pub const FD_RESERVE_PER_SHARD: u64 = 32;

/// The shared secret of a cluster's nodes (`crate::raft::peer_auth` proves it). Its
/// `Debug` does not show it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterSecret(std::sync::Arc<[u8]>);

impl ClusterSecret {
    /// At least 16 bytes, so that it is not guessed over the network.
    pub fn new(secret: &[u8]) -> Result<ClusterSecret, String> {
        if secret.len() < 16 {
            return Err(format!("the cluster secret must be at least 16 bytes (it is {})", secret.len()));
        }
        Ok(ClusterSecret(secret.into()))
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

/// Latency histograms record 1 µs … this (larger values are clamped to it).
pub const LATENCY_HISTOGRAM_MAX_US: u64 = 60_000_000;

/// Size of each message-body segment file of a shard (`crate::raft::bodies`).
pub const BODY_SEGMENT_SIZE_BYTES: u64 = 64 << 20;

/// Each shard's body store starts the kernel's writeback of what it wrote every this
/// many bytes (`FileBodies::writeback_due`, on the blocking pool). Bodies are synced only
/// by snapshots, so without it their dirty pages piled up (≈ 1 GB under 120 MB/s of
/// compactions) until the kernel or a snapshot wrote them all at once, and every WAL
/// fdatasync queued behind that burst: 70 ms syncs, 130–150 ms appends (the
/// `heavy-contexts` phase of `bench/hardening.py`). RocksDB's `bytes_per_sync` does
/// the same for its files.
pub const BODIES_WRITEBACK_STEP_BYTES: u64 = 4 << 20;

/// Once every shard of a core has caught up after opening, each reads its body store's
/// newest bytes, up to this many, into the page cache in the background at the idle
/// I/O priority (`FileBodies::prewarm_job`). Reads through the body mappings are
/// advised random access (one page per fault, not the disk's readahead window): right
/// for a history larger than memory, but without a prewarm a restarted node warmed only
/// as fast as clients read it. Measured on a cold machine (`bench/results/history.md`):
/// 2M messages, reads from 1 s after ready p99 18.8 → 0.9 ms with 256 MiB; 10M messages
/// (3.75 GB), p50 12–14 → 2.4–3.2 ms with 1 GiB. The newest bytes are the likeliest read
/// (recent conversations). Page cache, not RSS.
pub const BODIES_PREWARM_BYTES_PER_SHARD: u64 = 1 << 30;

/// A snapshot appends the records of the changed contexts and (a rebase) copies of the
/// unchanged ones (each tens of MB per shard at 25,000 contexts) in slices of at most
/// this many bytes, each appended on the executor in one go (copies read on the
/// blocking pool first); applies run between two slices.
pub const CHECKPOINT_COPY_SLICE_BYTES: u64 = 1 << 20;

/// Longest `inserted_at` a compaction replacement may carry, bytes (the OpenAPI
/// document says at most 64 characters: 256 bytes of UTF-8).
pub const REPLACEMENT_INSERTED_AT_MAX_BYTES: usize = 256;

/// Times a membership change (`POST`/`DELETE /v1/cluster/members`) is tried on a shard
/// that answers 503 (leadership moved mid-change) before the request reports it.
pub const MEMBERSHIP_CHANGE_ATTEMPTS: usize = 3;

/// Lifetime of a stream token (`POST /v1/contexts/:id/stream-token`) when the request
/// names none, and the longest it may name, seconds. A token is checked when a stream
/// opens; an open stream outlives it.
pub const STREAM_TOKEN_TTL_DEFAULT_SECS: u64 = 300;
pub const STREAM_TOKEN_TTL_MAX_SECS: u64 = 86_400;

/// A read of a cold context is built from the pages in memory, and the pages it lacked
/// awaited off the core (`crate::shard::replica::read`): at most this many rounds
/// (each finds the next level: record, index chunks, bodies) …
pub const COLD_READ_ROUNDS_MAX: usize = 8;
/// … and this long in all (or the call's deadline, if sooner); then it is built by
/// faulting what is still missing, on the core, as any read.
pub const COLD_READ_WAIT_MAX_MS: u64 = 200;
/// First and longest pause between two checks (`mincore`) that awaited pages arrived;
/// the pause doubles from the first to the longest.
pub const COLD_READ_POLL_MIN_US: u64 = 100;
pub const COLD_READ_POLL_MAX_US: u64 = 2_000;

/// A read of a hot context that starts at least this many messages behind its newest
/// (a replay from early on, a tail with a large offset) takes the cold path too: old
/// history is likely out of memory though the context is in it. Reads near the end do
/// not (checking each body's pages would cost a warm tail of 100 ≈ 50 µs).
pub const COLD_READ_HISTORY_MIN_MESSAGES: u64 = 1024;

/// Entries the state machine takes from openraft at a time: it asks for the checkpoint
/// records of the cold contexts among them all at once (their disk reads overlap,
/// instead of one page fault after the other on the core), and between two such
/// batches lets the core's other tasks run. A log replay after a restart applies tens
/// of thousands of entries to contexts that are all cold.
pub const APPLY_BATCH_ENTRIES: usize = 256;

/// A state-machine apply of at least this many entries (a log replay after restart, a
/// follower catching up) ends by returning freed heap to the kernel (`malloc_trim`).
pub const HEAP_TRIM_AFTER_APPLIED_ENTRIES: usize = 1024;

/// Compactions each context records for streams (`crate::store::history`); a stream
/// whose cursor is older than the oldest one kept gets `gap`. Part of the replicated
/// state, so a constant (the same on every node), not a flag.
pub const STREAM_COMPACTIONS_KEPT_PER_CONTEXT: usize = 1024;

/// Shares of each core's stream task queue, against the default queue's 1000 that
/// runs requests, Raft and apply. A stream's work (replay, writing events) is woken by
/// an apply in the same step as the answers to the appends it applied; in a queue of its
/// own it runs after them instead of before (an apply of 20 appends over 20 contexts
/// wakes 200 subscribers, each a send on its socket), and while both are busy requests
/// get 1000 / (1000 + this) of the core.
pub const STREAM_TASK_QUEUE_SHARES: usize = 250;

/// Default of `--shutdown-grace-ms`: long enough for answers in flight (a durable
/// append takes milliseconds) and for every stream's final event to be written; short
/// enough not to hold up a restart.
pub const SHUTDOWN_GRACE_MS_DEFAULT: u64 = 1_000;
/// How often each core checks whether a stop was requested.
pub const SHUTDOWN_POLL_MS: u64 = 50;

/// A node that refused leadership handed to it (short of disk) or could not be asked is
/// handed none again for this long (`crate::shard::leaders`): each refusal costs the
/// shard an election. Shards go back to their preferred node this long after it has
/// disk space again.
pub const LEADER_REFUSED_SKIP_MS: u64 = 60_000;
/// While a stopping node still leads shards, how often it tries again to hand them over
/// (a handover on loopback takes milliseconds; a second one while the first is under
/// way would start another election).
pub const LEADER_HANDOFF_RETRY_MS: u64 = 500;
