//! One context: its raw log, its LLM window, its version and idempotency memory. Pure.
//!
//! Invariants, asserted where they are decided:
//! - the raw log's entry at position `i` is the message with seq `i + 1`, and
//!   `last_seq == log.len()`: seqs start at 1, grow by one per append, never change,
//!   never repeat;
//! - `version == last_seq + compactions`;
//! - `window.tokens` is the sum of the token counts of the window's messages.
use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::bodies::{Bodies, BodiesError};
use super::error::StoreError;
use super::history::{CompactionHistory, CompactionMark, HistoryEvent, HistoryGap};

use super::idempotency::Keys;
use super::message_log::MessageLog;
use super::model::{Appended, ContextConfig, Message, NewMessage, Policy, PutContext, Status};

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

/// `Window` as snapshot formats 2 and 3 encode it (without its statistics).
#[derive(Deserialize)]
struct LegacyWindow {
    summary: VecDeque<Box<Message>>,
    live_from: u64,
    skipped: std::collections::BTreeSet<u64>,
    tokens: u64,
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
    #[serde(with = "super::json_text::map")]
    pub metadata: Map<String, Value>,
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
    /// The raw log: an index in the body store, a bounded part of it in memory
    /// (`super::message_log`).
    log: MessageLog,
    window: Window,
    compactions: u64,
    /// Append outcomes by idempotency key, on disk (`super::idempotency`).
    keys: Keys,
    /// The compactions, for streams (`super::history`). Not in the format-2 encoding of
    /// a context: snapshots carry it in a section of their own (`Store::histories`).
    #[serde(skip)]
    history: CompactionHistory,
}

/// A context as snapshots before the log index (snapshot index formats 2 and 3) encode
/// it: every message in a Vec. Field for field the old `Context` (postcard has no field
/// names), read once and turned into a `Context` whose log is written to the body store.
#[derive(Deserialize)]
pub struct LegacyContext {
    id: String,
    status: Status,
    config: ContextConfig,
    #[serde(with = "super::json_text::map")]
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

    /// The events after version `cursor` (a stream's replay), at most `max_events`,
    /// stopping once their JSON reaches about `max_bytes` (at least one).
    pub fn history_after(
        &self,
        cursor: u64,
        max_events: usize,
        max_bytes: usize,
        bodies: &dyn Bodies,
    ) -> Result<Vec<HistoryEvent>, HistoryGap> {
        // A message the index cannot read counts small here; rendering it fails loudly.
        let size = |e: &HistoryEvent| match e {
            HistoryEvent::Message { seq, .. } => self.log.get(seq - 1, bodies).map_or(0, |e| e.body.len as usize) + 64,
            HistoryEvent::Compaction(_) => 64,
        };
        super::history::events_after(
            &self.history,
            self.last_seq(),
            self.compactions,
            cursor,
            max_events,
            max_bytes,
            size,
        )
    }

    /// One event of a stream as its JSON (docs/api.md): a message as a read returns it, or a
    /// compaction with the tokens of the window it made.
    pub fn event_json(&self, event: &HistoryEvent, bodies: &dyn Bodies) -> Result<Vec<u8>, BodiesError> {
        match event {
            HistoryEvent::Message { version, seq } => {
                let message = self.message(*seq, bodies)?;
                let message = message.json_bytes(bodies)?;
                let head = format!("{{\"type\":\"message\",\"version\":{version},\"seq\":{seq},\"message\":");
                let mut out = Vec::with_capacity(head.len() + message.len() + 1);
                out.extend_from_slice(head.as_bytes());
                out.extend_from_slice(message);
                out.push(b'}');
                Ok(out)
            }
            HistoryEvent::Compaction(m) => {
                Ok(format!("{{\"type\":\"compaction\",\"version\":{},\"token_count\":{}}}", m.version, m.token_count)
                    .into_bytes())
            }
        }
    }

    /// The context's compaction history (for the snapshot).
    pub fn history(&self) -> &CompactionHistory {
        &self.history
    }

    /// Puts back the history a snapshot carried; `None`: the snapshot had none (it was
    /// written before histories were kept), so only a context never compacted knows
    /// its whole history.
    pub fn restore_history(&mut self, history: Option<CompactionHistory>) {
        self.history = match history {
            Some(h) => h,
            None if self.compactions == 0 => CompactionHistory::default(),
            None => CompactionHistory::unknown_up_to(self.version),
        };
    }

    /// The summary object of docs/api.md.
    pub fn summary_json(&self) -> Value {
        serde_json::json!({
            "id": self.id,
            "status": self.status.as_str(),
            "token_budget": self.config.token_budget,
            "trigger_ratio": self.config.trigger_ratio,
            "policy": self.config.policy.to_json(),
            "metadata": self.metadata,
            "version": self.version,
            "last_seq": self.last_seq(),
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }

    /// Skips the `offset` newest messages, takes up to `limit`, oldest first.
    pub fn tail(&self, offset: u64, limit: usize, bodies: &dyn Bodies) -> Result<Vec<Message>, BodiesError> {
        self.tail_within(offset, limit, usize::MAX, bodies)
    }

    /// `tail`, keeping only the newest messages whose stored JSON adds up to at most
    /// `max_bytes` (at least one): a client pages on with `offset` + the count returned.
    pub fn tail_within(
        &self,
        offset: u64,
        limit: usize,
        max_bytes: usize,
        bodies: &dyn Bodies,
    ) -> Result<Vec<Message>, BodiesError> {
        let end = self.last_seq().saturating_sub(offset);
        let start = end.saturating_sub(limit as u64);
        let mut page = self.messages(start + 1, end + 1, bodies)?;
        let fit = fitting(page.iter().rev(), max_bytes);
        page.drain(..page.len() - fit);
        Ok(page)
    }

    /// Messages with `seq >= from` (from ≥ 1), up to `limit`, and the seq that continues.
    pub fn replay(&self, from: u64, limit: usize, bodies: &dyn Bodies) -> Result<(Vec<Message>, u64), BodiesError> {
        self.replay_within(from, limit, usize::MAX, bodies)
    }

    /// `replay`, keeping only the oldest messages whose stored JSON adds up to at most
    /// `max_bytes` (at least one); the seq that continues follows the last one kept.
    pub fn replay_within(
        &self,
        from: u64,
        limit: usize,
        max_bytes: usize,
        bodies: &dyn Bodies,
    ) -> Result<(Vec<Message>, u64), BodiesError> {
        let start = from.max(1).min(self.last_seq() + 1);
        let end = start.saturating_add(limit as u64);
        let mut page = self.messages(start, end, bodies)?;
        page.truncate(fitting(page.iter(), max_bytes));
        let next = page.last().and_then(|m| m.seq).map_or(start, |s| s + 1);
        Ok((page, next))
    }

    /// Bytes of the stored JSON of the window's messages (what a window read copies).
    pub fn window_bytes(&self, bodies: &dyn Bodies) -> Result<usize, BodiesError> {
        if let Some(stats) = &self.window.stats {
            return Ok(usize::try_from(stats.bytes).unwrap_or(usize::MAX));
        }
        let summary: usize = self.window.summary.iter().map(|m| m.json_len_bytes()).sum();
        let mut live = 0usize;
        self.log.for_each(self.window.live_from - 1, self.last_seq(), bodies, |i, e| {
            if !self.window.skipped.contains(&(i + 1)) {
                live = live.saturating_add(e.body.len as usize);
            }
            true
        })?;
        Ok(summary.saturating_add(live))
    }

    /// `{"strategy": …, <config fields>}`, as the window reports its policy.
    fn policy_summary(&self) -> Value {
        let policy = self.config.policy.to_json();
        let mut out = Map::new();
        out.insert("strategy".into(), policy["strategy"].clone());
        if let Some(config) = policy["config"].as_object() {
            out.extend(config.clone());
        }
        Value::Object(out)
    }

    /// Resolves a replay start (docs/api.md): `from_seq` ≥ 1 as is, 0 → 1, −K → the newest K;
    /// `after_seq` N → N + 1.
    pub fn replay_start(&self, from: ReplayFrom) -> u64 {
        match from {
            ReplayFrom::FromSeq(n) if n >= 1 => n as u64,
            ReplayFrom::FromSeq(0) => 1,
            ReplayFrom::FromSeq(n) => (self.last_seq() + 1).saturating_sub(n.unsigned_abs()).max(1),
            ReplayFrom::AfterSeq(n) => n.saturating_add(1),
        }
    }

    /// The LLM window with `budget`, serialized. Messages are copied in as their stored
    /// JSON bytes, never parsed again: a long window costs one copy per message. Fails
    /// only when a message's body is missing from `bodies` (damaged data).
    pub fn window_json(&self, budget: u64, bodies: &dyn Bodies) -> Result<Vec<u8>, BodiesError> {
        let summaries = self.window.summary.len();
        let mut live = self.messages(self.window.live_from, self.last_seq() + 1, bodies)?;
        live.retain(|m| m.seq.is_none_or(|s| !self.window.skipped.contains(&s)));
        let (live_from, live_to) = (live.first().and_then(|m| m.seq), live.last().and_then(|m| m.seq));
        let messages = self.window.summary.iter().map(|m| &**m).chain(live.iter());
        let mut segments = Vec::new();
        if self.compactions > 0 {
            segments.push(serde_json::json!({"type": "summary", "count": summaries}));
        }
        segments.push(serde_json::json!({"type": "live", "from_seq": live_from, "to_seq": live_to}));
        let rest = serde_json::json!({
            "version": self.version,
            "token_count": self.window.tokens,
            "used_tokens": self.window.tokens,
            "needs_compaction": self.window.tokens as f64 > self.config.threshold(budget),
            "metadata": self.policy_summary(),
            "segments": segments,
        })
        .to_string();
        // `rest` is a non-empty object: its fields follow the messages.
        let mut tail = rest.into_bytes();
        tail[0] = b',';
        super::model::messages_object(messages, bodies, &tail)
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

/// How many of `messages`, in order, fit in `max_bytes` of stored JSON (one separator
/// each); at least one when there is one, so that a page always moves forward.
fn fitting<'a>(messages: impl Iterator<Item = &'a Message>, max_bytes: usize) -> usize {
    let mut total = 0usize;
    let mut n = 0;
    for m in messages {
        total = total.saturating_add(m.json_len_bytes() + 1);
        if total > max_bytes && n > 0 {
            break;
        }
        n += 1;
    }
    n
}
