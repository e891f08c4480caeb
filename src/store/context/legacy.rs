//! Contexts as snapshot index formats 2 and 3 encoded them (every message in a Vec),
//! read once at open or install and turned into today's `Context`, whose message index
//! is written to the body store (`crate::raft::state_machine`, "Formats").
use std::collections::{HashMap, VecDeque};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Context, Window};
use crate::store::bodies::{Bodies, BodiesError};
use crate::store::error::StoreError;
use crate::store::history::CompactionHistory;
use crate::store::idempotency::Keys;
use crate::store::message_log::MessageLog;
use crate::store::model::{Appended, ContextConfig, Message, Status};

/// `Window` as snapshot formats 2 and 3 encode it (without its statistics).
#[derive(Deserialize)]
struct LegacyWindow {
    summary: VecDeque<Box<Message>>,
    live_from: u64,
    skipped: std::collections::BTreeSet<u64>,
    tokens: u64,
}

/// A context as snapshots before the log index (snapshot index formats 2 and 3) encode
/// it: every message in a Vec. Field for field the old `Context` (postcard has no field
/// names), read once and turned into a `Context` whose log is written to the body store.
#[derive(Deserialize)]
pub struct LegacyContext {
    id: String,
    status: Status,
    config: ContextConfig,
    #[serde(with = "crate::store::json_text::map")]
    metadata: Map<String, Value>,
    version: u64,
    created_at: String,
    updated_at: String,
    messages: Vec<Message>,
    window: LegacyWindow,
    compactions: u64,
    idempotency: HashMap<String, Result<Appended, StoreError>>,
    idempotency_order: VecDeque<String>,
}

impl LegacyContext {
    /// The context, its messages' index entries appended to `bodies` (where their
    /// bodies already are).
    pub fn into_context(self, bodies: &mut dyn Bodies) -> Result<Context, BodiesError> {
        let mut log = MessageLog::default();
        for (i, m) in self.messages.iter().enumerate() {
            if m.seq != Some(i as u64 + 1) {
                return Err(BodiesError(format!("context {:?}: message {i} has seq {:?}", self.id, m.seq)));
            }
            log.push(m.entry(), bodies)?;
        }
        // Oldest first, none forgotten (the old store kept at most its limit).
        let mut keys = Keys::default();
        for key in &self.idempotency_order {
            if let Some(outcome) = self.idempotency.get(key) {
                keys.remember(key, outcome, usize::MAX, bodies)?;
            }
        }
        let w = self.window;
        let window =
            Window { summary: w.summary, live_from: w.live_from, skipped: w.skipped, tokens: w.tokens, stats: None };
        let mut ctx = Context {
            id: self.id,
            status: self.status,
            config: self.config,
            metadata: self.metadata,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
            log,
            window,
            compactions: self.compactions,
            keys,
            history: CompactionHistory::default(),
        };
        // Now, while the entries just written are in the page cache: the checkpoint
        // that follows keeps them.
        ctx.window_stats(bodies)?;
        Ok(ctx)
    }
}
