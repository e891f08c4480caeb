//! Raft on glommio: the runtime adapter, the type config, the log store on the WAL,
//! the state machine on the context store, the node-to-node network and its wire protocol,
//! and opening a shard.
pub mod bodies;
pub mod feed;
pub mod known_peers;
pub mod local_channels;
pub mod log_store;
pub mod network;
pub mod peer_auth;
pub mod refused_handovers;
pub mod runtime;
pub mod shard;
mod snapshot_index;
pub mod state_machine;
pub mod types;
pub mod wire;

pub use log_store::WalLogStore;
pub use runtime::GlommioRuntime;
pub use shard::{Shard, ShardError, ShardPlacement};
pub use state_machine::ShardStateMachine;
pub use types::{CommandResult, FleetRaft, ShardRaft};
