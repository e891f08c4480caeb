//! One context: its raw log, its LLM window, its version and idempotency memory. Pure.
//!
//! Invariants, asserted where they are decided:
//! - the raw log's entry at position `i` is the message with seq `i + 1`, and
//!   `last_seq == log.len()`: seqs start at 1, grow by one per append, never change,
//!   never repeat;
//! - `version == last_seq + compactions`;
//! - `window.tokens` is the sum of the token counts of the window's messages.
//!
//! Here the state and its changes (append, compact, policies); reads and rendering in
//! `read`, the conversion from snapshot formats 2 and 3 in `legacy`.
mod legacy;
mod read;

pub use legacy::LegacyContext;

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::store::bodies::{Bodies, BodiesError};
use crate::store::error::StoreError;
use crate::store::history::{CompactionHistory, CompactionMark};

use crate::store::idempotency::Keys;
use crate::store::message_log::MessageLog;
use crate::store::model::{Appended, ContextConfig, Message, NewMessage, Policy, PutContext, Status};

/// The LLM window: the replacement messages of the last compaction that are still in
/// it, then the live messages from `live_from` on, minus those a skip_parts policy
/// dropped. Live messages are not listed one by one: a window as long as the history
/// (the manual policy) costs nothing per message.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Window {
    summary: VecDeque<Box<Message>>,
    live_from: u64,
    skipped: std::collections::BTreeSet<u64>,
    tokens: u64,
    /// Kept up to date by appends and policy trims so that both cost O(1) amortized;
    /// derived from the fields above and rebuilt, in one pass over the window, when
    /// missing (after a policy change). In checkpoints (a rebuild reads the window's
    /// index entries from the body store: after a restart, rebuilding every context's
    /// read most of the body store's pages and took seconds).
    stats: Option<WindowStats>,
}

/// What the window's fields imply, maintained incrementally.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct WindowStats {
    /// Live messages in the window (not skipped).
    live_count: u64,
    /// The exact sum of the window's token counts (`tokens` is it, saturated to u64).
    tokens_exact: u128,
    /// Bytes of the window's stored JSON.
    bytes: u64,
    /// Live seqs with a part of a skip kind, not yet dropped (skip_parts only).
    pending_skip: VecDeque<u64>,
    /// The summary holds no message of a skip kind any more (skip_parts only).
    summary_clean: bool,
}

/// Equal windows hold the same messages; the derived statistics do not count.
impl PartialEq for Window {
    fn eq(&self, other: &Self) -> bool {
        (&self.summary, self.live_from, &self.skipped, self.tokens)
            == (&other.summary, other.live_from, &other.skipped, other.tokens)
    }
}

/// Where a replay starts, as the client said it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplayFrom {
    FromSeq(i64),
    AfterSeq(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Context {
    pub id: String,
    pub status: Status,
    pub config: ContextConfig,
    #[serde(with = "crate::store::json_text::map")]
    pub metadata: Map<String, Value>,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    /// The raw log: an index in the body store, a bounded part of it in memory
    /// (`crate::store::message_log`).
    log: MessageLog,
    window: Window,
    compactions: u64,
    /// Append outcomes by idempotency key, on disk (`crate::store::idempotency`).
    keys: Keys,
    /// The compactions, for streams (`crate::store::history`). Not in the format-2 encoding of
    /// a context: snapshots carry it in a section of their own (`Store::histories`).
    #[serde(skip)]
    history: CompactionHistory,
}

impl Context {
    pub fn new(id: String, put: PutContext, now: &str) -> Context {
        Context {
            id,
            status: put.status.unwrap_or(Status::Active),
            config: put.config,
            metadata: put.metadata.unwrap_or_default(),
            version: 0,
            created_at: now.to_owned(),
            updated_at: now.to_owned(),
            log: MessageLog::default(),
            window: Window { live_from: 1, ..Window::default() },
            compactions: 0,
            keys: Keys::default(),
            history: CompactionHistory::default(),
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.log.len()
    }

    /// The message with `seq` (1 ≤ seq ≤ last_seq), read from the log index.
    fn message(&self, seq: u64, bodies: &dyn Bodies) -> Result<Message, BodiesError> {
        Ok(Message::from_entry(seq, self.log.get(seq.wrapping_sub(1), bodies)?))
    }

    /// The messages with seqs `from..to` (cut to the log), oldest first.
    fn messages(&self, from: u64, to: u64, bodies: &dyn Bodies) -> Result<Vec<Message>, BodiesError> {
        let mut out = Vec::with_capacity(to.saturating_sub(from).min(1024) as usize);
        self.log.for_each(from.max(1) - 1, to.max(1) - 1, bodies, |i, e| {
            out.push(Message::from_entry(i + 1, e));
            true
        })?;
        Ok(out)
    }

    /// PUT on an existing context: the config is replaced as a whole; metadata and
    /// status only when given. The log and version stay.
    pub fn update(&mut self, put: PutContext, now: &str) {
        self.config = put.config;
        // The policy may have changed: what is pending a skip is computed again.
        self.window.stats = None;
        if let Some(m) = put.metadata {
            self.metadata = m;
        }
        if let Some(s) = put.status {
            self.status = s;
        }
        self.updated_at = now.to_owned();
    }

    /// Shallow merge; a `null` value removes the key.
    /// Merges `patch` into the metadata (a null removes a key), unless the result would
    /// be larger than `max_bytes` as compact JSON: then nothing changes.
    pub fn patch_metadata(&mut self, patch: Map<String, Value>, now: &str, max_bytes: usize) -> Result<(), StoreError> {
        self.metadata = self.patched_metadata(&patch, max_bytes)?;
        self.updated_at = now.to_owned();
        Ok(())
    }

    /// The metadata `patch` would make, or why it is refused (pure).
    pub fn patched_metadata(
        &self,
        patch: &Map<String, Value>,
        max_bytes: usize,
    ) -> Result<Map<String, Value>, StoreError> {
        let mut merged = self.metadata.clone();
        for (k, v) in patch {
            if v.is_null() {
                merged.remove(k);
            } else {
                merged.insert(k.clone(), v.clone());
            }
        }
        // Writing a map of JSON values into a String cannot fail.
        let len = serde_json::to_string(&merged).map_or(usize::MAX, |text| text.len());
        if len > max_bytes {
            return Err(StoreError::InvalidMetadata(format!(
                "the context's metadata would be {len} bytes, over the limit of {max_bytes}"
            )));
        }
        Ok(merged)
    }

    pub fn tombstone(&mut self, now: &str) {
        self.status = Status::Tombstoned;
        self.updated_at = now.to_owned();
    }

    fn check_guard(&self, if_version: Option<u64>) -> Result<(), StoreError> {
        if self.status == Status::Tombstoned {
            return Err(StoreError::Tombstoned);
        }
        match if_version {
            Some(expected) if expected != self.version => Err(StoreError::Conflict { expected, found: self.version }),
            _ => Ok(()),
        }
    }

    /// Appends a message. With an idempotency key seen before, returns the first
    /// outcome and appends nothing (checked before the version guard).
    /// The outer `Err` is a body-store failure: nothing changed, and applying must stop.
    pub fn append(
        &mut self,
        msg: NewMessage,
        if_version: Option<u64>,
        idempotency_key: Option<String>,
        now: &str,
        keys_max: usize,
        bodies: &mut dyn Bodies,
    ) -> Result<Result<Appended, StoreError>, BodiesError> {
        if let Some(key) = &idempotency_key
            && let Some(first) = self.keys.get(key, keys_max, bodies)?
        {
            return Ok(first);
        }
        let outcome = self.append_once(msg, if_version, now, bodies)?;
        if let Some(key) = idempotency_key {
            self.keys.remember(&key, &outcome, keys_max, bodies)?;
        }
        Ok(outcome)
    }

    fn append_once(
        &mut self,
        msg: NewMessage,
        if_version: Option<u64>,
        now: &str,
        bodies: &mut dyn Bodies,
    ) -> Result<Result<Appended, StoreError>, BodiesError> {
        if let Err(e) = self.check_guard(if_version) {
            return Ok(Err(e));
        }
        let seq = self.last_seq() + 1;
        let tokens = msg.token_count;
        // Built (if missing) before the message joins, which then counts once.
        self.window_stats(bodies)?;
        let message = Message::new(Some(seq), msg, Some(now.to_owned()), bodies)?;
        let skippable = match &self.config.policy {
            Policy::SkipParts { skip_kinds, .. } => message.has_part_kind(skip_kinds, bodies)?,
            _ => false,
        };
        self.log.push(message.entry(), bodies)?;
        assert_eq!(self.last_seq(), seq, "seqs are contiguous from 1");
        self.version += 1;
        debug_assert_eq!(self.version, self.last_seq() + self.compactions);
        let bytes = message.json_len_bytes() as u64;
        let stats = self.window_stats(bodies)?;
        stats.live_count += 1;
        stats.tokens_exact += u128::from(tokens);
        stats.bytes += bytes;
        if skippable {
            stats.pending_skip.push_back(seq);
        }
        // Saturated: a client's token_count may be near u64::MAX; the sum must have a
        // defined value on every replica (and never panic in a checked build).
        self.window.tokens = saturate(stats.tokens_exact);
        if self.window.tokens as f64 > self.config.threshold(self.config.token_budget) {
            self.apply_policy(bodies)?;
        }
        self.updated_at = now.to_owned();
        Ok(Ok(Appended { seq, version: self.version, token_estimate: tokens }))
    }

    /// The window's statistics, rebuilt in one pass over the window if missing (after a
    /// load or a policy change), reading the log index.
    fn window_stats(&mut self, bodies: &dyn Bodies) -> Result<&mut WindowStats, BodiesError> {
        if self.window.stats.is_none() {
            let mut stats = WindowStats::default();
            for m in self.window.summary.iter() {
                stats.tokens_exact += u128::from(m.token_count);
                stats.bytes += m.json_len_bytes() as u64;
            }
            let skip_kinds = match &self.config.policy {
                Policy::SkipParts { skip_kinds, .. } => Some(skip_kinds),
                _ => None,
            };
            let mut failed = None;
            let skipped = &self.window.skipped;
            self.log.for_each(self.window.live_from - 1, self.last_seq(), bodies, |i, e| {
                let seq = i + 1;
                if skipped.contains(&seq) {
                    return true;
                }
                stats.live_count += 1;
                stats.tokens_exact += u128::from(e.token_count);
                stats.bytes += u64::from(e.body.len);
                if let Some(kinds) = skip_kinds {
                    match Message::from_entry(seq, e).has_part_kind(kinds, bodies) {
                        Ok(true) => stats.pending_skip.push_back(seq),
                        Ok(false) => {}
                        Err(err) => {
                            failed = Some(err);
                            return false;
                        }
                    }
                }
                true
            })?;
            if let Some(err) = failed {
                return Err(err);
            }
            self.window.stats = Some(stats);
        }
        Ok(self.window.stats.as_mut().expect("just built"))
    }

    /// Trims the window per the policy. Never touches the raw log or the version.
    /// O(1) amortized per append: every message is dropped (skipped or trimmed) once.
    fn apply_policy(&mut self, bodies: &dyn Bodies) -> Result<(), BodiesError> {
        let limit = match &self.config.policy {
            Policy::Manual => return Ok(()),
            Policy::LastN { limit } => *limit as u64,
            Policy::SkipParts { limit, .. } => *limit as u64,
        };
        if let Policy::SkipParts { skip_kinds, .. } = &self.config.policy {
            let kinds = skip_kinds.clone();
            self.window_stats(bodies)?;
            let Context { window, log, .. } = self;
            let stats = window.stats.as_mut().expect("built above");
            if !stats.summary_clean {
                let mut kept = VecDeque::with_capacity(window.summary.len());
                for m in window.summary.drain(..) {
                    if m.has_part_kind(&kinds, bodies)? {
                        stats.tokens_exact -= u128::from(m.token_count);
                        stats.bytes -= m.json_len_bytes() as u64;
                    } else {
                        kept.push_back(m);
                    }
                }
                window.summary = kept;
                stats.summary_clean = true;
            }
            while let Some(&seq) = stats.pending_skip.front() {
                if seq >= window.live_from && !window.skipped.contains(&seq) {
                    let e = log.get(seq - 1, bodies)?;
                    window.skipped.insert(seq);
                    stats.live_count -= 1;
                    stats.tokens_exact -= u128::from(e.token_count);
                    stats.bytes -= u64::from(e.body.len);
                }
                stats.pending_skip.pop_front();
            }
        }
        self.window_stats(bodies)?;
        let Context { window, log, .. } = self;
        let stats = window.stats.as_mut().expect("built above");
        while window.summary.len() as u64 + stats.live_count > limit {
            let dropped = match window.summary.pop_front() {
                Some(m) => (m.token_count, m.json_len_bytes()),
                None => {
                    // Drop the oldest live message (after any skipped seqs before it).
                    while window.skipped.remove(&window.live_from) {
                        window.live_from += 1;
                    }
                    let e = log.get(window.live_from - 1, bodies)?;
                    window.live_from += 1;
                    stats.live_count -= 1;
                    (e.token_count, e.body.len as usize)
                }
            };
            stats.tokens_exact -= u128::from(dropped.0);
            stats.bytes -= dropped.1 as u64;
        }
        // Skipped seqs at the front are behind the window now: forget them, so that a
        // context whose messages are all skipped keeps no list of them.
        while window.skipped.remove(&window.live_from) {
            window.live_from += 1;
        }
        window.tokens = saturate(stats.tokens_exact);
        Ok(())
    }

    /// Replaces the window with `replacement`. The raw log is untouched.
    /// The outer `Err` is a body-store failure (see `append`).
    pub fn compact(
        &mut self,
        replacement: Vec<NewMessage>,
        if_version: Option<u64>,
        now: &str,
        bodies: &mut dyn Bodies,
    ) -> Result<Result<u64, StoreError>, BodiesError> {
        if let Err(e) = self.check_guard(if_version) {
            return Ok(Err(e));
        }
        let mut summary = VecDeque::with_capacity(replacement.len());
        for m in replacement {
            let (seq, inserted_at) = (m.seq, m.inserted_at.clone());
            summary.push_back(Box::new(Message::new(seq, m, inserted_at, bodies)?));
        }
        let tokens = saturating_sum(summary.iter().map(|m| m.token_count));
        let live_from = self.last_seq() + 1;
        self.window = Window { summary, live_from, skipped: Default::default(), tokens, stats: None };
        self.compactions += 1;
        self.version += 1;
        debug_assert_eq!(self.version, self.last_seq() + self.compactions);
        let mark = CompactionMark { version: self.version, after_seq: self.last_seq(), token_count: tokens };
        self.history.record(mark, crate::config::STREAM_COMPACTIONS_KEPT_PER_CONTEXT);
        self.updated_at = now.to_owned();
        Ok(Ok(self.version))
    }
}

/// An exact token sum as the u64 the API reports: `u64::MAX` when it does not fit.
fn saturate(exact: u128) -> u64 {
    u64::try_from(exact).unwrap_or(u64::MAX)
}

/// The sum of token counts, stopping at `u64::MAX` instead of wrapping.
fn saturating_sum(counts: impl Iterator<Item = u64>) -> u64 {
    counts.fold(0, u64::saturating_add)
}
