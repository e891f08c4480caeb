//! Shard-per-core serving: placement (id → shard → core), the per-core context and
//! cross-core mesh (`core`), the free-space guard on writes (`disk`), forwarding calls
//! to the shard's leader node (`forward`), the peer server for other nodes' Raft RPCs
//! and forwarded calls (`peer`), leader spreading and readiness (`leaders`), and node
//! startup (`server`).
pub mod core;
pub mod disk;
pub mod forward;
pub mod leaders;
pub mod peer;
pub mod placement;
pub mod server;

pub use core::{CoreCtx, MeshMsg};
pub use server::{ServeError, ServerConfig, serve};
