//! Raft on glommio: the runtime adapter (and, as they land, the type config, the log
//! store on the WAL, the state machine and the node-to-node network).
pub mod log_store;
pub mod runtime;

pub use log_store::WalLogStore;
pub use runtime::GlommioRuntime;
