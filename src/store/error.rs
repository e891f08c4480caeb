//! The error type of the store: every way a command or query can be refused. Each
//! variant maps to one API error code (`code()`); none of them is a bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum StoreError {
    #[error("Context not found")]
    NotFound,
    #[error("Context is tombstoned")]
    Tombstoned,
    #[error("Context version changed (expected {expected}, found {found})")]
    Conflict { expected: u64, found: u64 },
    #[error("{0}")]
    InvalidConfig(String),
    #[error("{0}")]
    InvalidMessage(String),
    #[error("{0}")]
    InvalidMetadata(String),
    #[error("{0}")]
    InvalidReplacement(String),
    #[error("{0}")]
    InvalidQuery(String),
    // New variants go last: outcomes are kept (idempotency) in snapshots, by index.
    #[error("this shard holds its maximum of {max} contexts; no new context can be created")]
    TooManyContexts { max: u64 },
    /// A context's stored state could not be read (damaged data, or a bug).
    #[error("the context's stored state cannot be read: {0}")]
    Damaged(String),
}

impl StoreError {
    /// The docs/api.md error code.
    pub fn code(&self) -> &'static str {
        match self {
            StoreError::NotFound => "context_not_found",
            StoreError::Tombstoned => "context_tombstoned",
            StoreError::Conflict { .. } => "conflict",
            StoreError::InvalidConfig(_) => "invalid_context_config",
            StoreError::InvalidMessage(_) => "invalid_message",
            StoreError::InvalidMetadata(_) => "invalid_metadata",
            StoreError::InvalidReplacement(_) => "invalid_replacement",
            StoreError::InvalidQuery(_) => "invalid_query",
            StoreError::TooManyContexts { .. } => "too_many_contexts",
            StoreError::Damaged(_) => "internal",
        }
    }

    /// The HTTP status of the error.
    pub fn status(&self) -> u16 {
        match self {
            StoreError::NotFound => 404,
            StoreError::Tombstoned | StoreError::Conflict { .. } | StoreError::TooManyContexts { .. } => 409,
            StoreError::Damaged(_) => 500,
            _ => 400,
        }
    }
}
