//! A context's history of versions, as a stream replays it (`GET /v1/contexts/:id/stream`).
//! Pure.
//!
//! Every version is one event: an appended message (its seq) or a manual compaction.
//! Messages are in the raw log already; compactions leave no trace there, so each
//! context keeps a record of its compactions (`CompactionHistory`). From it and the log,
//! the events after any version (a cursor) follow without a per-version index:
//! the messages with a version ≤ cursor are `cursor − (compactions ≤ cursor)`, and every
//! compaction sits between the message it followed and the next.
use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// One manual compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionMark {
    /// The context's version after it.
    pub version: u64,
    /// The context's last seq when it happened (it precedes message `after_seq + 1`).
    pub after_seq: u64,
    /// Tokens of the window it made (the replacement's).
    pub token_count: u64,
}

/// The compactions of one context, oldest first, at most
/// `config::STREAM_COMPACTIONS_KEPT_PER_CONTEXT` of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactionHistory {
    /// The oldest cursor from which every later event can be replayed: 0 while every
    /// compaction is recorded; older cursors get a `gap`.
    floor_version: u64,
    marks: VecDeque<CompactionMark>,
}

impl CompactionHistory {
    /// Records a compaction; the oldest record goes when there are more than `kept_max`.
    pub fn record(&mut self, mark: CompactionMark, kept_max: usize) {
        self.marks.push_back(mark);
        while self.marks.len() > kept_max.max(1) {
            if let Some(dropped) = self.marks.pop_front() {
                self.floor_version = dropped.version;
            }
        }
    }

    /// No record of what happened up to `version` (a context loaded from a snapshot
    /// written before histories were kept, whose compactions are not known).
    pub fn unknown_up_to(version: u64) -> CompactionHistory {
        CompactionHistory { floor_version: version, marks: VecDeque::new() }
    }

    pub fn floor_version(&self) -> u64 {
        self.floor_version
    }

    pub fn is_empty(&self) -> bool {
        self.marks.is_empty() && self.floor_version == 0
    }
}

/// One version of a context's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryEvent {
    Message { version: u64, seq: u64 },
    Compaction(CompactionMark),
}

impl HistoryEvent {
    pub fn version(&self) -> u64 {
        match self {
            HistoryEvent::Message { version, .. } => *version,
            HistoryEvent::Compaction(m) => m.version,
        }
    }
}

/// The cursor is older than the history kept: events from `floor_version` on can be
/// replayed, not before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryGap {
    pub floor_version: u64,
}

/// The events after version `cursor`, oldest first, of a context with `last_seq`
/// messages and `compactions` in all (its version is their sum). Stops after
/// `max_events`, or once `size` of the events taken reaches `max_bytes` (at least one
/// event). A cursor at or past the current version gives none.
pub fn events_after(
    history: &CompactionHistory,
    last_seq: u64,
    compactions: u64,
    cursor: u64,
    max_events: usize,
    max_bytes: usize,
    size: impl Fn(&HistoryEvent) -> usize,
) -> Result<Vec<HistoryEvent>, HistoryGap> {
    if cursor < history.floor_version {
        return Err(HistoryGap { floor_version: history.floor_version });
    }
    let cursor = cursor.min(last_seq + compactions);
    let marks = &history.marks;
    // Compactions at or before the cursor (those no longer recorded are all before the
    // floor, so before the cursor).
    let first_after = marks.partition_point(|m| m.version <= cursor);
    let compactions_before = compactions - (marks.len() - first_after) as u64;
    let mut seq = cursor - compactions_before + 1;
    let mut next_mark = first_after;
    let (mut out, mut bytes) = (Vec::new(), 0usize);
    while out.len() < max_events && (seq <= last_seq || next_mark < marks.len()) {
        let event = match marks.get(next_mark) {
            Some(m) if m.after_seq < seq => {
                next_mark += 1;
                HistoryEvent::Compaction(*m)
            }
            _ => {
                let version = seq + compactions_before + (next_mark - first_after) as u64;
                seq += 1;
                HistoryEvent::Message { version, seq: seq - 1 }
            }
        };
        bytes = bytes.saturating_add(size(&event));
        out.push(event);
        if bytes >= max_bytes {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A context's life as (is_compaction) steps; the events every version makes.
    fn replayed(steps: &[bool], kept_max: usize) -> (CompactionHistory, u64, u64, Vec<HistoryEvent>) {
        let (mut h, mut last_seq, mut compactions, mut all) = (CompactionHistory::default(), 0u64, 0u64, Vec::new());
        for &compaction in steps {
            let version = last_seq + compactions + 1;
            if compaction {
                compactions += 1;
                let mark = CompactionMark { version, after_seq: last_seq, token_count: version * 10 };
                h.record(mark, kept_max);
                all.push(HistoryEvent::Compaction(mark));
            } else {
                last_seq += 1;
                all.push(HistoryEvent::Message { version, seq: last_seq });
            }
        }
        (h, last_seq, compactions, all)
    }

    #[test]
    fn every_cursor_replays_exactly_the_later_versions() {
        let steps = [false, false, true, false, true, true, false, false, false, true];
        let (h, last_seq, compactions, all) = replayed(&steps, 100);
        for cursor in 0..=steps.len() as u64 + 2 {
            let got = events_after(&h, last_seq, compactions, cursor, usize::MAX, usize::MAX, |_| 1).unwrap();
            let want: Vec<_> = all.iter().copied().filter(|e| e.version() > cursor).collect();
            assert_eq!(got, want, "cursor {cursor}");
        }
        // Pages: by count and by size, at least one event each.
        let page = events_after(&h, last_seq, compactions, 1, 3, usize::MAX, |_| 1).unwrap();
        assert_eq!(page.iter().map(|e| e.version()).collect::<Vec<_>>(), vec![2, 3, 4]);
        let page = events_after(&h, last_seq, compactions, 1, usize::MAX, 1, |_| 100).unwrap();
        assert_eq!(page.len(), 1);
    }

    #[test]
    fn a_cursor_older_than_the_kept_compactions_is_a_gap() {
        let steps = [false, true, false, true, false, true, false];
        let (h, last_seq, compactions, all) = replayed(&steps, 2);
        assert_eq!(h.floor_version(), 2, "the first compaction (version 2) was dropped");
        assert_eq!(
            events_after(&h, last_seq, compactions, 1, 10, usize::MAX, |_| 1),
            Err(HistoryGap { floor_version: 2 })
        );
        for cursor in 2..=7 {
            let got = events_after(&h, last_seq, compactions, cursor, usize::MAX, usize::MAX, |_| 1).unwrap();
            let want: Vec<_> = all.iter().copied().filter(|e| e.version() > cursor).collect();
            assert_eq!(got, want, "cursor {cursor}");
        }
        // Unknown history (an old snapshot): only from the version it was loaded at.
        let unknown = CompactionHistory::unknown_up_to(7);
        assert!(events_after(&unknown, last_seq, compactions, 6, 10, usize::MAX, |_| 1).is_err());
        assert_eq!(events_after(&unknown, last_seq, compactions, 7, 10, usize::MAX, |_| 1), Ok(vec![]));
    }
}
