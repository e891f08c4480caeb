//! The write-ahead log of one executor core, shared by the Raft groups (shards) it
//! owns: fixed-size, preallocated, memory-mapped segment files holding crc-checked
//! records tagged with their group, with group commit and crash recovery.
//!
//! - `format`: the byte layout (documented there) and its pure codec;
//! - `segment`: one mapped segment file;
//! - `recovery`: pure scan from segment bytes to every group's live log (torn tail vs
//!   corruption);
//! - `log`: `Wal`, the synchronous core (append, sync, read, truncate, purge, reclaim,
//!   open);
//! - `group_commit`: `GroupCommitWal`, the async face for a glommio executor, where
//!   every append waits for one shared sync instead of issuing its own;
//! - `v1`: the format-1 layout (one log per shard), read only to convert old data dirs
//!   (`convert`).
//!
//! - `config`: its limits, checked against the record format.
//!
//! The WAL knows nothing about Raft: records are opaque payloads at contiguous indexes
//! of each group. It imports neither `crate::config` nor `crate::metrics`: its sync
//! statistics are read by the layer above (`GroupCommitWal::with_stats`).
pub mod config;
pub mod convert;
pub mod error;
pub mod format;
pub mod group_commit;
pub mod log;
pub mod recovery;
pub mod segment;
pub mod v1;

pub use config::WalConfig;
pub use error::WalError;
pub use format::GroupId;
pub use group_commit::GroupCommitWal;
pub use log::{Position, RecoveryReport, SyncJob, Wal};
