//! Proposing a write (a command of the state machine) on the replica that leads the
//! shard, and waiting for it to be committed and applied.
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use serde_json::json;

use super::{mark_stopped, not_leader};
use crate::config::ServeLimits;
use crate::raft::{FleetRaft, Shard};
use crate::shard::call::{Reply, Served};
use crate::store::{Command, Outcome, StoreError};

/// RFC 3339, UTC, microseconds, `Z` (docs/api.md). (`to_rfc3339_opts` writes the same
/// text as the format string `%Y-%m-%dT%H:%M:%S%.6fZ` without parsing that string on
/// every append.)
pub fn now_rfc3339() -> String {
    rfc3339_micros(chrono::Utc::now())
}

fn rfc3339_micros(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The leader's clock stamps a command just before it is proposed.
fn set_now(cmd: &mut Command) {
    let now = now_rfc3339();
    match cmd {
        Command::Put { now: n, .. }
        | Command::PatchMetadata { now: n, .. }
        | Command::Append { now: n, .. }
        | Command::Delete { now: n, .. }
        | Command::Compact { now: n, .. } => *n = now,
    }
}

/// Room a Raft log entry takes around its command as checked (log id, payload tag, and
/// the leader's timestamp, set after the check), bytes: well above the actual ≤ 64.
const ENTRY_OVERHEAD_MAX_BYTES: usize = 128;

/// A command whose log entry would not fit in one WAL record, found before it is
/// proposed: proposed, the log store would fail to write it and openraft would stop
/// the shard for good. (Validation re-renders client JSON, so a body within the HTTP
/// limit can grow: a part full of `9e15` numbers renders at ≈3.8× its size.)
fn too_large(shard: &Shard, cmd: &Command) -> Option<Reply> {
    let record_max = shard.log.wal().with(|w| w.config().record_payload_max_bytes) as usize;
    command_too_large(cmd, record_max)
}

/// The 413 for a command whose log entry would not fit a WAL record of
/// `record_max_bytes` (pure; the API layer runs it off the executor for large bodies).
pub fn command_too_large(cmd: &Command, record_max: usize) -> Option<Reply> {
    let size = postcard::experimental::serialized_size(cmd).unwrap_or(usize::MAX);
    (size.saturating_add(ENTRY_OVERHEAD_MAX_BYTES) > record_max).then(|| {
        let why = format!(
            "the command renders to {size} bytes, over the log's record limit of {} bytes; send less (JSON              numbers are stored as they render, e.g. 9e15 as 9000000000000000.0)",
            record_max - ENTRY_OVERHEAD_MAX_BYTES.min(record_max)
        );
        Reply::error(413, "payload_too_large", why)
    })
}

pub(super) async fn write(shard: &Shard, cmd: &Command, limits: &ServeLimits, remaining: Duration) -> Served {
    if let Some(refused) = too_large(shard, cmd) {
        return Ok(refused);
    }
    let prechecked = {
        let applied = shard.state.applied().borrow();
        applied.store.precheck(cmd, &applied.bodies)
    };
    if let Err(e) = prechecked {
        return Ok(Reply::store_error(&e));
    }
    let mut cmd = cmd.clone();
    set_now(&mut cmd);
    let proposed = std::time::Instant::now();
    match crate::raft::runtime::timeout(remaining, shard.raft.client_write(cmd)).await {
        Ok(Ok(resp)) => {
            crate::metrics::record_since("write.raft_commit", proposed);
            Ok(outcome_reply(resp.data))
        }
        Ok(Err(RaftError::Fatal(_))) => mark_stopped(shard, limits),
        Ok(Err(e)) => write_failed(limits, e),
        // The entry may have been proposed and may still commit: say so (a plain "no
        // leader" would invite a blind retry that appends twice).
        Err(_) => Ok(Reply::unavailable(
            limits,
            "the write was not committed within the deadline; its outcome is unknown (it may still be applied): \
             retry with the same Idempotency-Key",
        )),
    }
}

/// A failed proposal (a write or a membership change).
pub(super) fn write_failed(limits: &ServeLimits, e: RaftError<FleetRaft, ClientWriteError<FleetRaft>>) -> Served {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => not_leader(&f),
        // Proposed, then cut from the log by a new leader: the outcome is not known
        // here (another leader may have committed it). The client retries, with its
        // Idempotency-Key for appends.
        e => Ok(Reply::unavailable(limits, format!("the write's outcome is unknown: {e}"))),
    }
}

fn outcome_reply(outcome: Result<Outcome, StoreError>) -> Reply {
    match outcome {
        Ok(Outcome::Summary { created, summary }) => Reply::json(if created { 201 } else { 200 }, &summary),
        Ok(Outcome::Appended(a)) => {
            Reply::json(201, &json!({"seq": a.seq, "version": a.version, "token_estimate": a.token_estimate}))
        }
        Ok(Outcome::Deleted) => Reply::empty(204),
        Ok(Outcome::Compacted { version }) => Reply::json(200, &json!({"version": version})),
        Ok(Outcome::Nothing) => Reply::error(500, "internal", "command produced no outcome"),
        Err(e) => Reply::store_error(&e),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    #[test]
    fn timestamps_keep_their_documented_shape() {
        let t = chrono::Utc.with_ymd_and_hms(2026, 12, 2, 9, 5, 7).unwrap() + chrono::Duration::microseconds(42);
        assert_eq!(super::rfc3339_micros(t), "2026-12-02T09:05:07.000042Z");
        assert_eq!(super::rfc3339_micros(t), t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
    }
}
