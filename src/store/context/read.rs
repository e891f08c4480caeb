//! A context's reads: tail, replay and the LLM window rendered from the stored JSON, the
//! events a stream replays, the summary object. Pure (the body store is passed in).
use serde_json::{Map, Value};

use super::{Context, ReplayFrom};
use crate::store::bodies::{Bodies, BodiesError};
use crate::store::history::{CompactionHistory, HistoryEvent, HistoryGap};
use crate::store::model::Message;

impl Context {
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
        crate::store::history::events_after(
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
        crate::store::model::messages_object(messages, bodies, &tail)
    }
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
