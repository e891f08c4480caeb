//! FleetLM: a durable, replicated conversation log for LLM applications.
//!
//! Architecture: thread-per-core glommio executors, each owning a disjoint set of
//! shards; each shard is a Raft group whose log is a segmented, memory-mapped WAL with
//! group commit. Dependencies point one way: `node → api → stream → shard → raft → wal → files`,
//! `raft → store` (pure); `http` knows no storage; `config` holds everyone's limits.
//!
//! Modules:
//! - [`accept`]: pacing of the accept loops (HTTP and peer) when accepts fail;
//! - [`budget`]: the node-wide budget of answers rendered but not yet written;
//! - [`config`]: every limit and default;
//! - [`files`]: file-system helpers (preallocation, durable replace, directory fsync,
//!   free space, page release);
//! - [`wal`]: the per-shard write-ahead log;
//! - [`raft`]: openraft on glommio (runtime adapter, log store on the WAL, state
//!   machine and body store, node-to-node network and its wire format);
//! - [`store`]: contexts and the state-machine logic (pure);
//! - [`shard`]: the serving protocol (calls, replies), running calls on this node's
//!   replica, placement, per-core context and cross-core mesh, forwarding to leaders,
//!   the peer server, leader spreading and readiness; no HTTP;
//! - [`http`]: HTTP/1.1 framing and the connection loop;
//! - [`api`]: the route table, request validation into shard calls, replies into
//!   responses;
//! - [`stream`]: live streams of a context (SSE, WebSocket) from this node's replica;
//! - [`node`]: node startup, wiring the layers together;
//! - [`offload`]: low-priority threads for CPU-heavy pure work (large request bodies);
//! - [`metrics`]: per-core latency histograms and counters, interval logs, Prometheus.
pub mod accept;
pub mod api;
pub mod budget;
pub mod config;
pub mod datadir;
pub mod files;
pub mod http;
pub mod metrics;
pub mod node;
pub mod offload;
pub mod raft;
pub mod shard;
pub mod shutdown;
pub mod store;
pub mod stream;
pub mod wal;
