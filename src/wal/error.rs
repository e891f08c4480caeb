//! The error type of the WAL layer.
use std::path::PathBuf;

/// Everything that can go wrong in the WAL. `Corruption` is kept apart from `Io`:
/// an I/O error may be transient, corruption means the disk lost data that was
/// durable, and the shard must stop loudly instead of serving a damaged log.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal i/o error during {op} on {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("wal corruption in segment {segment} at offset {offset}: {detail}")]
    Corruption { segment: PathBuf, offset: u64, detail: String },
    /// A sync failed earlier. The page cache can no longer be trusted to hold what
    /// was written (Linux may drop dirty pages after a writeback error), so the WAL
    /// refuses every further write until it is reopened and recovered from disk.
    #[error("wal is read-only after a failed sync: {0}")]
    Poisoned(String),
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { len: usize, max: u32 },
    #[error("append batch of {len} records exceeds the limit of {max}")]
    BatchTooLarge { len: usize, max: usize },
    #[error("index {index} is not in the log (first {first}, next {next})")]
    OutOfRange { index: u64, first: u64, next: u64 },
    #[error("invalid wal configuration: {0}")]
    Config(String),
}

impl WalError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        WalError::Io { op, path: path.into(), source }
    }
}

pub type Result<T, E = WalError> = std::result::Result<T, E>;
