//! The store's durable form, written incrementally into the body store. Pure (the body
//! store is passed in).
//!
//! Each checkpoint writes one record per context that changed since the previous one
//! (postcard: the context, then its compaction history) and *directory chunks* listing
//! `(context id, record)` for them, at most `DIRECTORY_CHUNK_ENTRIES` per chunk. A
//! snapshot names its directory as a list of chunk references: a base (every context)
//! followed by the deltas of later checkpoints; loading reads them in order, later
//! entries winning. So building a snapshot costs what changed since the last one, not
//! the whole store, and the snapshot index itself is a few references; a snapshot is
//! rebased (every context's record written again: encoded if it changed, copied if not)
//! when its deltas list more entries than twice the contexts, which bounds the
//! directory at twice the contexts.
//!
//! Each checkpoint's bytes are one range of the body store (`Extents`): nothing else is
//! written while it appends. After a rebase no directory entry and no cold context
//! names a record of an earlier range, so once the rebase is durable those ranges are
//! dead and their disk space is released (`crate::raft::state_machine`): replaced
//! records take at most what was written since the last base.
use std::collections::HashMap;
use std::sync::Arc;

use super::bodies::{Bodies, BodiesError, BodyRef};
use super::commands::Store;
use super::context::Context;
use super::record::encode_context;
use crate::config::StoreLimits;

/// Entries per directory chunk: a chunk of ids of the maximum length (256 bytes) stays
/// under 300 KB, well within a body segment.
pub const DIRECTORY_CHUNK_ENTRIES: usize = 1024;

fn err(what: &str, e: impl std::fmt::Display) -> BodiesError {
    BodiesError(format!("checkpoint {what}: {e}"))
}

/// The records of `changed` (contexts) encoded: the CPU part of a checkpoint, which can
/// run on another thread (the contexts are shared, copy-on-write).
pub fn encode_all(changed: &[Arc<Context>]) -> Result<Vec<(String, Vec<u8>)>, BodiesError> {
    changed.iter().map(|c| Ok((c.id.clone(), encode_context(c)?))).collect()
}

/// What a checkpoint appended: the directory chunks (for the snapshot's list), the
/// records written (for `Store::checkpointed` once they are durable) and the range of
/// the body store it all lies in (`None`: nothing written).
pub struct Appended {
    pub chunks: Vec<BodyRef>,
    pub written: Vec<(String, BodyRef)>,
    pub extent: Option<(u64, u64)>,
}

/// Appends the encoded records, copies of the `unchanged` records (a rebase writes every
/// context, so that no earlier range stays needed), then directory chunks naming them
/// all, to `bodies`. Nothing else may write to `bodies` meanwhile: the checkpoint is
/// one range.
pub fn append(
    encoded: Vec<(String, Vec<u8>)>,
    unchanged: Vec<(String, BodyRef)>,
    bodies: &mut dyn Bodies,
) -> Result<Appended, BodiesError> {
    let mut written = Vec::with_capacity(encoded.len() + unchanged.len());
    let mut extent: Option<(u64, u64)> = None;
    let mut note = |r: BodyRef| {
        let end = r.offset + u64::from(r.len);
        extent = Some(extent.map_or((r.offset, end), |(start, _)| (start, end)));
        r
    };
    for (id, bytes) in encoded {
        written.push((id, note(bodies.append(&bytes)?)));
    }
    for (id, r) in unchanged {
        let bytes = bodies.get(r)?.to_vec();
        written.push((id, note(bodies.append(&bytes)?)));
    }
    let mut chunks = Vec::with_capacity(written.len().div_ceil(DIRECTORY_CHUNK_ENTRIES));
    for chunk in written.chunks(DIRECTORY_CHUNK_ENTRIES) {
        let bytes = postcard::to_stdvec(chunk).map_err(|e| err("directory", e))?;
        chunks.push(note(bodies.append(&bytes)?));
    }
    Ok(Appended { chunks, written, extent })
}

/// The body-store ranges checkpoints wrote: `live`, since (and including) the last
/// base, which the directory and the cold contexts may name; `dead`, earlier ones that
/// a rebase made unreachable and whose space is not released yet (a snapshot being
/// sent may still name them). Both are in the snapshot index, so a restart releases
/// what a crash left unreleased.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Extents {
    pub live: Vec<(u64, u64)>,
    pub dead: Vec<(u64, u64)>,
}

impl Extents {
    /// After a checkpoint that wrote `extent`: a rebase makes every earlier range dead.
    pub fn written(&mut self, extent: Option<(u64, u64)>, rebase: bool) {
        if rebase {
            let old = std::mem::take(&mut self.live);
            self.dead.extend(old);
        }
        self.live.extend(extent);
    }
}

/// Entries in the directory chunks `chunks` (to decide when to rebase).
pub fn entries_in(chunks: &[BodyRef], bodies: &dyn Bodies) -> Result<u64, BodiesError> {
    let mut n = 0u64;
    for r in chunks {
        let entries: Vec<(String, BodyRef)> = postcard::from_bytes(bodies.get(*r)?).map_err(|e| err("directory", e))?;
        n += entries.len() as u64;
    }
    Ok(n)
}

/// The store that the directory `chunks` (base, then deltas) names: every context
/// cold (its record is read when it is used), so opening costs the directory only.
pub fn load(chunks: &[BodyRef], limits: StoreLimits, bodies: &dyn Bodies) -> Result<Store, BodiesError> {
    let mut latest: HashMap<String, BodyRef> = HashMap::new();
    for r in chunks {
        let entries: Vec<(String, BodyRef)> = postcard::from_bytes(bodies.get(*r)?).map_err(|e| err("directory", e))?;
        latest.extend(entries);
    }
    Ok(Store::from_records(limits, latest))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use serde_json::json;

    use super::*;
    use crate::store::{Command, MemBodies, NewMessage, PutContext};

    /// Counts the reads of a body store.
    struct Counting {
        inner: MemBodies,
        reads: Cell<u64>,
    }

    impl Bodies for Counting {
        fn append(&mut self, json: &[u8]) -> Result<BodyRef, BodiesError> {
            self.inner.append(json)
        }
        fn get(&self, r: BodyRef) -> Result<&[u8], BodiesError> {
            self.reads.set(self.reads.get() + 1);
            self.inner.get(r)
        }
    }

    fn append(id: &str) -> Command {
        let m = json!({"role": "user", "parts": [{"type": "text", "text": "x"}]});
        let message = NewMessage::from_json(&m, false, &StoreLimits::default()).unwrap();
        Command::Append { id: id.into(), message, if_version: None, idempotency_key: None, now: "t".into() }
    }

    /// After a restart every touched context used to rebuild its window statistics by
    /// reading its whole window from the body store (a manual window is the whole
    /// history): most of the body store's pages, seconds at 10M messages. The
    /// statistics are in the checkpoint now: the next append reads nothing.
    #[test]
    fn an_append_after_a_load_does_not_read_the_window() {
        let limits = StoreLimits::default();
        let mut bodies = Counting { inner: MemBodies::default(), reads: Cell::new(0) };
        let mut store = Store::new(limits.clone());
        let put = PutContext::from_json(&json!({"token_budget": 1_000_000}), &limits).unwrap();
        store.apply(Command::Put { id: "c".into(), put, now: "t".into() }, &mut bodies).unwrap().unwrap();
        for _ in 0..2000 {
            store.apply(append("c"), &mut bodies).unwrap().unwrap();
        }
        let cp = store.take_changed(true);
        let appended = super::append(encode_all(&cp.changed).unwrap(), cp.unchanged, &mut bodies).unwrap();
        let mut loaded = load(&appended.chunks, limits, &bodies).unwrap();
        bodies.reads.set(0);
        loaded.apply(append("c"), &mut bodies).unwrap().unwrap();
        // One: the context's record (it was cold after the load).
        assert_eq!(bodies.reads.get(), 1, "body store reads for one append after a load");
        assert_eq!(loaded.get("c", &bodies).unwrap().last_seq(), 2001);
    }
}
