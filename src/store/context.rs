//! One context: its raw log, its LLM window, its version and idempotency memory. Pure.
//!
//! Invariants, asserted where they are decided:
//! - `messages[i].seq == i + 1`, and `last_seq == messages.len()`: seqs start at 1, grow
//!   by one per append, never change, never repeat;
//! - `version == last_seq + compactions`;
//! - `window.tokens` is the sum of the token counts of the window's messages.
use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::bodies::{Bodies, BodiesError};
use super::error::StoreError;
use super::history::{CompactionHistory, CompactionMark, HistoryEvent, HistoryGap};

use super::model::{ContextConfig, Message, NewMessage, Policy, PutContext, Status};

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
    /// derived from the fields above, so not in snapshots (the format is unchanged) and
    /// rebuilt once, in one pass, when missing (after a load or a policy change).
    #[serde(skip)]
    stats: Option<WindowStats>,
}

/// What the window's fields imply, maintained incrementally.
#[derive(Debug, Clone, Default)]
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

/// What an append returned: replayed verbatim for a retry with the same key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Appended {
    pub seq: u64,
    pub version: u64,
    pub token_estimate: u64,
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
    /// The raw log. Held in memory for now; see the note in `store/mod.rs`.
    messages: Vec<Message>,
    window: Window,
    compactions: u64,
    /// Append outcomes by idempotency key, oldest first for eviction.
    idempotency: HashMap<String, Result<Appended, StoreError>>,
    idempotency_order: VecDeque<String>,
    /// The compactions, for streams (`super::history`). Not in the format-2 encoding of
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
            messages: Vec::new(),
            window: Window { live_from: 1, ..Window::default() },
            compactions: 0,
            idempotency: HashMap::new(),
            idempotency_order: VecDeque::new(),
            history: CompactionHistory::default(),
        }
    }

    pub fn last_seq(&self) -> u64 {
        self.messages.len() as u64
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
        if let Some(first) = idempotency_key.as_ref().and_then(|k| self.idempotency.get(k)) {
            return Ok(first.clone());
        }
        let outcome = self.append_once(msg, if_version, now, bodies)?;
        if let Some(key) = idempotency_key {
            self.remember(key, outcome.clone(), keys_max);
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
        let message = Message::new(Some(seq), msg, Some(now.to_owned()), bodies)?;
        // Built (if missing) before the message joins, which then counts once.
        self.window_stats();
        self.messages.push(message);
        assert_eq!(self.messages[seq as usize - 1].seq, Some(seq), "seqs are contiguous from 1");
        self.version += 1;
        debug_assert_eq!(self.version, self.last_seq() + self.compactions);
        let skippable = match &self.config.policy {
            Policy::SkipParts { skip_kinds, .. } => self.messages[seq as usize - 1].has_part_kind(skip_kinds),
            _ => false,
        };
        let bytes = self.messages[seq as usize - 1].json_len_bytes() as u64;
        let stats = self.window_stats();
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
            self.apply_policy();
        }
        self.updated_at = now.to_owned();
        Ok(Ok(Appended { seq, version: self.version, token_estimate: tokens }))
    }

    fn remember(&mut self, key: String, outcome: Result<Appended, StoreError>, keys_max: usize) {
        while self.idempotency_order.len() >= keys_max.max(1) {
            if let Some(old) = self.idempotency_order.pop_front() {
                self.idempotency.remove(&old);
            }
        }
        self.idempotency_order.push_back(key.clone());
        self.idempotency.insert(key, outcome);
    }

    /// Live seqs in the window, oldest first.
    fn live_seqs(&self) -> impl Iterator<Item = u64> + '_ {
        (self.window.live_from..=self.last_seq()).filter(|s| !self.window.skipped.contains(s))
    }

    /// The window's statistics, rebuilt in one pass if missing.
    fn window_stats(&mut self) -> &mut WindowStats {
        if self.window.stats.is_none() {
            let live: Vec<u64> = self.live_seqs().collect();
            let message = |s: u64| &self.messages[s as usize - 1];
            let summary = self.window.summary.iter().map(|m| &**m);
            let all = || summary.clone().chain(live.iter().map(|&s| message(s)));
            let pending_skip = match &self.config.policy {
                Policy::SkipParts { skip_kinds, .. } => {
                    live.iter().copied().filter(|&s| message(s).has_part_kind(skip_kinds)).collect()
                }
                _ => VecDeque::new(),
            };
            self.window.stats = Some(WindowStats {
                live_count: live.len() as u64,
                tokens_exact: all().map(|m| u128::from(m.token_count)).sum(),
                bytes: all().map(|m| m.json_len_bytes() as u64).sum(),
                pending_skip,
                summary_clean: false,
            });
        }
        self.window.stats.as_mut().expect("just built")
    }

    /// Trims the window per the policy. Never touches the raw log or the version.
    /// O(1) amortized per append: every message is dropped (skipped or trimmed) once.
    fn apply_policy(&mut self) {
        let limit = match &self.config.policy {
            Policy::Manual => return,
            Policy::LastN { limit } => *limit as u64,
            Policy::SkipParts { limit, .. } => *limit as u64,
        };
        if let Policy::SkipParts { skip_kinds, .. } = &self.config.policy {
            let kinds = skip_kinds.clone();
            self.window_stats();
            let Context { window, messages, .. } = self;
            let stats = window.stats.as_mut().expect("built above");
            if !stats.summary_clean {
                window.summary.retain(|m| {
                    let keep = !m.has_part_kind(&kinds);
                    if !keep {
                        stats.tokens_exact -= u128::from(m.token_count);
                        stats.bytes -= m.json_len_bytes() as u64;
                    }
                    keep
                });
                stats.summary_clean = true;
            }
            for seq in stats.pending_skip.drain(..) {
                if seq >= window.live_from && window.skipped.insert(seq) {
                    let m = &messages[seq as usize - 1];
                    stats.live_count -= 1;
                    stats.tokens_exact -= u128::from(m.token_count);
                    stats.bytes -= m.json_len_bytes() as u64;
                }
            }
        }
        self.window_stats();
        let Context { window, messages, .. } = self;
        let stats = window.stats.as_mut().expect("built above");
        while window.summary.len() as u64 + stats.live_count > limit {
            let dropped = match window.summary.pop_front() {
                Some(m) => (m.token_count, m.json_len_bytes()),
                None => {
                    // Drop the oldest live message (after any skipped seqs before it).
                    while window.skipped.remove(&window.live_from) {
                        window.live_from += 1;
                    }
                    let m = &messages[window.live_from as usize - 1];
                    window.live_from += 1;
                    stats.live_count -= 1;
                    (m.token_count, m.json_len_bytes())
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
    ) -> Result<Vec<HistoryEvent>, HistoryGap> {
        let size = |e: &HistoryEvent| match e {
            HistoryEvent::Message { seq, .. } => self.messages[*seq as usize - 1].json_len_bytes() + 64,
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
                let message = self.messages[*seq as usize - 1].json_bytes(bodies)?;
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
    pub fn tail(&self, offset: u64, limit: usize) -> &[Message] {
        self.tail_within(offset, limit, usize::MAX)
    }

    /// `tail`, keeping only the newest messages whose stored JSON adds up to at most
    /// `max_bytes` (at least one): a client pages on with `offset` + the count returned.
    pub fn tail_within(&self, offset: u64, limit: usize, max_bytes: usize) -> &[Message] {
        let end = self.messages.len().saturating_sub(usize::try_from(offset).unwrap_or(usize::MAX));
        let page = &self.messages[end.saturating_sub(limit)..end];
        let fit = fitting(page.iter().rev(), max_bytes);
        &page[page.len() - fit..]
    }

    /// Messages with `seq >= from` (from ≥ 1), up to `limit`, and the seq that continues.
    pub fn replay(&self, from: u64, limit: usize) -> (&[Message], u64) {
        self.replay_within(from, limit, usize::MAX)
    }

    /// `replay`, keeping only the oldest messages whose stored JSON adds up to at most
    /// `max_bytes` (at least one); the seq that continues follows the last one kept.
    pub fn replay_within(&self, from: u64, limit: usize, max_bytes: usize) -> (&[Message], u64) {
        let start = (from.max(1) - 1).min(self.last_seq()) as usize;
        let end = start.saturating_add(limit).min(self.messages.len());
        let page = &self.messages[start..end];
        let page = &page[..fitting(page.iter(), max_bytes)];
        let next = page.last().and_then(|m| m.seq).map_or(from.max(1).min(self.last_seq() + 1), |s| s + 1);
        (page, next)
    }

    /// Bytes of the stored JSON of the window's messages (what a window read copies).
    pub fn window_bytes(&self) -> usize {
        if let Some(stats) = &self.window.stats {
            return usize::try_from(stats.bytes).unwrap_or(usize::MAX);
        }
        let summary: usize = self.window.summary.iter().map(|m| m.json_len_bytes()).sum();
        let live: usize = self.live_seqs().map(|s| self.messages[s as usize - 1].json_len_bytes()).sum();
        summary.saturating_add(live)
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
        let live: Vec<u64> = self.live_seqs().collect();
        let (live_from, live_to) = (live.first(), live.last());
        let messages =
            self.window.summary.iter().map(|m| &**m).chain(live.iter().map(|&seq| &self.messages[seq as usize - 1]));
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
