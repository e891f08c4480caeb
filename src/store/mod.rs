//! Contexts (conversations): the data model, validation of client input, the
//! state-machine logic (`Store::apply`), the LLM window and its policies, and the token
//! estimate. Pure: no I/O, no clocks (times arrive in commands).
//!
//! Known gap (server issue): message bodies are held in memory here; the design keeps
//! them on disk behind the mmap'd log so that memory stays bounded as history grows.
pub mod commands;
pub mod context;
pub mod error;
pub mod model;
pub mod tokens;

pub use commands::{Command, Outcome, Store};
pub use context::{Appended, Context, ReplayFrom};
pub use error::StoreError;
pub use model::{ContextConfig, Message, NewMessage, Policy, PutContext, Status};
