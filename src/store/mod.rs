//! Contexts (conversations): the data model, validation of client input, the
//! state-machine logic (`Store::apply`), the LLM window and its policies, and the token
//! estimate. Pure: no I/O, no clocks (times arrive in commands).
//!
//! Message JSON is not kept here, nor the list of a context's messages: both are in a
//! `Bodies` store passed in by the caller (on disk in the server). A context keeps in
//! memory what the next append needs (version, window statistics, the newest index
//! entries; `message_log`), so memory depends on the number of contexts, not on history.
pub mod bodies;
pub mod checkpoint;
pub mod commands;
pub mod context;
pub mod error;
pub mod history;
pub mod idempotency;
pub mod json_text;
pub mod message_log;
pub mod model;
pub mod record;
pub mod tokens;

pub use bodies::{Bodies, BodiesError, BodyRef, MemBodies};
pub use commands::{Checkpoint, Command, LegacyStore, Outcome, Store};
pub use context::{Context, LegacyContext, ReplayFrom};
pub use error::StoreError;
pub use history::{CompactionHistory, HistoryEvent, HistoryGap};
pub use model::{Appended, ContextConfig, Message, NewMessage, Policy, PutContext, Status, messages_object};
