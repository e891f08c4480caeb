//! Shard-per-core serving: placement (id → shard → core), the protocol types of calls
//! and replies (`call`), running a call on this node's replica (`replica`: propose,
//! read, membership), the per-core context and cross-core mesh (`core`, where a call
//! finds its shard's leader), the free-space guard on writes (`disk`), forwarding calls
//! to the shard's leader node (`forward`), re-opening shards a storage error stopped
//! (`healing`), the peer server for other nodes' Raft RPCs
//! and forwarded calls (`peer`, serving Raft RPCs in `rpc`), and leader spreading and
//! readiness (`leaders`). Knows nothing of HTTP: the API layer turns requests into
//! calls and replies into responses.
pub mod call;
pub mod core;
pub mod disk;
pub mod forward;
pub mod healing;
pub mod leaders;
pub mod log_pressure;
pub mod memory_pressure;
pub mod peer;
pub mod placement;
pub mod replica;
pub mod rpc;

pub use call::{NotLeader, Reply, Served, ShardCall};
pub use core::{CoreCtx, MeshMsg};
