//! FleetLM: a durable, replicated conversation log for LLM applications.
//!
//! Architecture (see DESIGN.md in the shared docs): thread-per-core glommio executors,
//! each owning a disjoint set of shards; each shard is a Raft group whose log is a
//! segmented, memory-mapped WAL with group commit. Dependencies point down:
//! `api → shard → raft → wal`, `api → store`; `http` knows no storage.
//!
//! Modules:
//! - [`config`]: every limit and default;
//! - [`wal`]: the per-shard write-ahead log;
//! - [`raft`]: openraft on glommio (runtime adapter, log store on the WAL, state
//!   machine and body store, node-to-node network and its wire format);
//! - [`store`]: contexts and the state-machine logic (pure);
//! - [`http`]: HTTP/1.1 framing and the connection loop;
//! - [`api`]: routes, validation, running calls on shards (and on their leaders);
//! - [`shard`]: placement, per-core context, cross-core mesh, forwarding to leaders,
//!   the peer server, leader spreading and readiness, node startup;
//! - [`metrics`]: per-core latency histograms and counters, interval logs, Prometheus.
pub mod api;
pub mod config;
pub mod files;
pub mod http;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod shard;
pub mod store;
pub mod wal;
