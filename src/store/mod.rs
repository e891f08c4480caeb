//! Contexts (conversations): the data model, validation of client input, the
//! state-machine logic (`Store::apply`), the LLM window and its policies, and the token
//! estimate. Pure: no I/O, no clocks (times arrive in commands).
//!
//! Message JSON is not kept here: each message holds a `BodyRef` into a `Bodies` store
//! passed in by the caller (on disk in the server), so memory stays small per message.
pub mod bodies;
pub mod commands;
pub mod context;
pub mod error;
pub mod history;
pub mod json_text;
pub mod model;
pub mod tokens;

pub use bodies::{Bodies, BodiesError, BodyRef, MemBodies};
pub use commands::{Command, Outcome, Store};
pub use context::{Appended, Context, ReplayFrom};
pub use error::StoreError;
pub use history::{CompactionHistory, HistoryEvent, HistoryGap};
pub use model::{ContextConfig, Message, NewMessage, Policy, PutContext, Status, messages_object};
