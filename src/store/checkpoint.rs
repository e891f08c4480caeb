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
//! Each checkpoint's bytes are a few ranges of the body store (`Extents`): it appends
//! in batches (`Writer`), and applies may write between two batches but not within one. After a rebase no directory entry and no cold context
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
/// records written (for `Store::checkpointed` once they are durable) and the ranges of
/// the body store it all lies in (in order, disjoint; empty: nothing written).
pub struct Appended {
    pub chunks: Vec<BodyRef>,
    pub written: Vec<(String, BodyRef)>,
    pub ranges: Vec<(u64, u64)>,
}

/// Writes a checkpoint into the body store in batches. Between two batches other
/// writers (applies) may append to the store, so each batch is its own range; nothing
/// else may write while one batch is appended. A rebase copies every unchanged record:
/// tens of MB at 25,000 contexts per shard, so the server copies them in batches of
/// `copy_slices` and lets the executor run in between.
#[derive(Default)]
pub struct Writer {
    written: Vec<(String, BodyRef)>,
    ranges: Vec<(u64, u64)>,
}

impl Writer {
    /// Appends `records` (context id, record bytes) as one batch.
    pub fn append<B: AsRef<[u8]>>(
        &mut self,
        records: impl IntoIterator<Item = (String, B)>,
        bodies: &mut dyn Bodies,
    ) -> Result<(), BodiesError> {
        let mut range: Option<(u64, u64)> = None;
        for (id, bytes) in records {
            let r = bodies.append(bytes.as_ref())?;
            self.written.push((id, r));
            range = Some(cover(range, r));
        }
        self.note(range);
        Ok(())
    }

    /// The ranges written so far (what a checkpoint that fails now leaves behind).
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    fn note(&mut self, range: Option<(u64, u64)>) {
        let Some((start, end)) = range else { return };
        match self.ranges.last_mut() {
            // Nothing was written between the two batches: one range.
            Some(last) if last.1 == start => last.1 = end,
            _ => self.ranges.push((start, end)),
        }
    }

    /// Appends the directory chunks naming every record written, as the last batch.
    pub fn finish(mut self, bodies: &mut dyn Bodies) -> Result<Appended, BodiesError> {
        let mut chunks = Vec::with_capacity(self.written.len().div_ceil(DIRECTORY_CHUNK_ENTRIES));
        let mut range: Option<(u64, u64)> = None;
        for chunk in self.written.chunks(DIRECTORY_CHUNK_ENTRIES) {
            let bytes = postcard::to_stdvec(chunk).map_err(|e| err("directory", e))?;
            let r = bodies.append(&bytes)?;
            chunks.push(r);
            range = Some(cover(range, r));
        }
        self.note(range);
        Ok(Appended { chunks, written: self.written, ranges: self.ranges })
    }
}

fn cover(range: Option<(u64, u64)>, r: BodyRef) -> (u64, u64) {
    let end = r.offset + u64::from(r.len);
    range.map_or((r.offset, end), |(start, _)| (start, end))
}

/// The `unchanged` records of a rebase in the order they lie in the body store (so that
/// reading them is close to sequential), cut into slices of at most `slice_bytes`
/// (at least one record each): the batches in which the server copies them.
pub fn copy_slices(mut unchanged: Vec<(String, BodyRef)>, slice_bytes: u64) -> Vec<Vec<(String, BodyRef)>> {
    unchanged.sort_by_key(|(_, r)| r.offset);
    cut(unchanged, |(_, r)| u64::from(r.len), slice_bytes)
}

/// `items` in order, cut into runs of at most `max_bytes` as `bytes` weighs them (at
/// least one item each).
pub fn cut<T>(items: Vec<T>, bytes: impl Fn(&T) -> u64, max_bytes: u64) -> Vec<Vec<T>> {
    let mut runs: Vec<Vec<T>> = Vec::new();
    let mut run_bytes = 0u64;
    for item in items {
        let n = bytes(&item);
        match runs.last_mut() {
            Some(run) if run_bytes + n <= max_bytes => {
                run_bytes += n;
                run.push(item);
            }
            _ => {
                run_bytes = n;
                runs.push(vec![item]);
            }
        }
    }
    runs
}

/// The whole checkpoint in one go: the encoded records, copies of the `unchanged`
/// records (a rebase writes every context, so that no earlier range stays needed),
/// then directory chunks naming them all. Nothing else may write to `bodies`
/// meanwhile. (Tests, and the conversion of old snapshot indexes at open.)
pub fn append(
    encoded: Vec<(String, Vec<u8>)>,
    unchanged: Vec<(String, BodyRef)>,
    bodies: &mut dyn Bodies,
) -> Result<Appended, BodiesError> {
    let mut writer = Writer::default();
    writer.append(encoded, bodies)?;
    let copies = unchanged
        .into_iter()
        .map(|(id, r)| Ok((id, bodies.get(r)?.to_vec())))
        .collect::<Result<Vec<_>, BodiesError>>()?;
    writer.append(copies, bodies)?;
    writer.finish(bodies)
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
    /// After a checkpoint that wrote `ranges`: a rebase makes every earlier range dead.
    pub fn written(&mut self, ranges: &[(u64, u64)], rebase: bool) {
        if rebase {
            let old = std::mem::take(&mut self.live);
            self.dead.extend(old);
        }
        self.live.extend_from_slice(ranges);
    }
}

/// Entries in the directory chunks `chunks` (to decide when to rebase): each chunk's
/// count only (postcard writes a sequence's length first, as a varint), so this reads
/// one page per chunk and decodes no id.
pub fn entries_in(chunks: &[BodyRef], bodies: &dyn Bodies) -> Result<u64, BodiesError> {
    let mut n = 0u64;
    for r in chunks {
        let (len, _) = postcard::take_from_bytes::<u64>(bodies.get(*r)?).map_err(|e| err("directory", e))?;
        n += len;
    }
    Ok(n)
}

/// The store that the directory `chunks` (base, then deltas) names: every context
/// cold (its record is read when it is used), so opening costs the directory only.
pub fn load(chunks: &[BodyRef], limits: StoreLimits, bodies: &dyn Bodies) -> Result<Store, BodiesError> {
    // Every chunk's pages asked for at once: the body store's mappings read no further
    // than the faulting page, so a directory read chunk after chunk would wait for the
    // disk once per 4 KiB (≈ 1 MB per shard at 25,000 contexts).
    for r in chunks {
        bodies.prefetch(*r);
    }
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
        prefetched: std::cell::RefCell<Vec<BodyRef>>,
    }

    impl Bodies for Counting {
        fn append(&mut self, json: &[u8]) -> Result<BodyRef, BodiesError> {
            self.inner.append(json)
        }
        fn get(&self, r: BodyRef) -> Result<&[u8], BodiesError> {
            self.reads.set(self.reads.get() + 1);
            self.inner.get(r)
        }
        fn prefetch(&self, r: BodyRef) {
            self.prefetched.borrow_mut().push(r);
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
        let mut bodies = Counting { inner: MemBodies::default(), reads: Cell::new(0), prefetched: Default::default() };
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

    /// A store with contexts `c0` … `c{n-1}`, no messages.
    fn contexts(n: usize) -> (Store, MemBodies) {
        let limits = StoreLimits::default();
        let (mut store, mut bodies) = (Store::new(limits.clone()), MemBodies::default());
        for i in 0..n {
            let put = PutContext::from_json(&json!({"token_budget": 1000}), &limits).unwrap();
            store.apply(Command::Put { id: format!("c{i}"), put, now: "t".into() }, &mut bodies).unwrap().unwrap();
        }
        (store, bodies)
    }

    /// A log replay after a restart applies commands to contexts that are all cold: the
    /// state machine asks for their records first (`Store::prefetch_records`), and
    /// `load` for the directory's chunks. The records asked for are exactly those of
    /// the cold contexts named (not hot ones, not unknown ids), and the first append to
    /// a prefetched context reads that record.
    #[test]
    fn prefetch_asks_for_the_directory_and_the_cold_contexts_records() {
        let (mut store, inner) = contexts(3);
        let mut bodies = Counting { inner, reads: Cell::new(0), prefetched: Default::default() };
        let cp = store.take_changed(true);
        let appended = super::append(encode_all(&cp.changed).unwrap(), cp.unchanged, &mut bodies).unwrap();
        let record = |id: &str| appended.written.iter().find(|(i, _)| i == id).unwrap().1;
        let mut loaded = load(&appended.chunks, StoreLimits::default(), &bodies).unwrap();
        assert_eq!(*bodies.prefetched.borrow(), appended.chunks, "the directory, before it is read");
        bodies.prefetched.borrow_mut().clear();
        loaded.apply(append("c1"), &mut bodies).unwrap().unwrap(); // c1 is hot now
        bodies.prefetched.borrow_mut().clear();
        loaded.prefetch_records(["c0", "c1", "c2", "nope", "c0"], &bodies);
        assert_eq!(*bodies.prefetched.borrow(), [record("c0"), record("c2"), record("c0")]);
        bodies.reads.set(0);
        loaded.apply(append("c2"), &mut bodies).unwrap().unwrap();
        assert_eq!(bodies.reads.get(), 1, "the append read the record that was prefetched");
    }

    /// `entries_in` reads only each chunk's length: it must count what `load` decodes,
    /// over chunks that are full, partial and (for a base of 0 contexts) empty.
    #[test]
    fn entries_in_counts_what_load_decodes() {
        for n in [0, 1, DIRECTORY_CHUNK_ENTRIES, 2 * DIRECTORY_CHUNK_ENTRIES + 300] {
            let (mut store, mut bodies) = contexts(n);
            let cp = store.take_changed(true);
            let appended = super::append(encode_all(&cp.changed).unwrap(), cp.unchanged, &mut bodies).unwrap();
            assert_eq!(appended.chunks.len(), n.div_ceil(DIRECTORY_CHUNK_ENTRIES));
            assert_eq!(entries_in(&appended.chunks, &bodies).unwrap(), n as u64);
            let loaded = load(&appended.chunks, StoreLimits::default(), &bodies).unwrap();
            assert_eq!(loaded.len() as u64, n as u64);
        }
    }

    /// A rebase copies unchanged records in slices while applies keep writing bodies:
    /// the checkpoint's ranges must cover its own bytes and none of the applies' (those
    /// would be freed as dead by the next rebase).
    #[test]
    fn a_checkpoint_written_in_slices_names_its_own_bytes_and_none_of_an_apply() {
        let limits = StoreLimits::default();
        let (mut store, mut bodies) = contexts(50);
        for i in 0..50 {
            store.apply(append(&format!("c{i}")), &mut bodies).unwrap().unwrap();
        }
        let first = store.take_changed(true);
        let appended = super::append(encode_all(&first.changed).unwrap(), first.unchanged, &mut bodies).unwrap();
        store.checkpointed(&appended.written);
        let dead = appended.ranges.clone();
        store.evict(0, 0);
        store.apply(append("c0"), &mut bodies).unwrap().unwrap();
        let cp = store.take_changed(true);
        assert_eq!((cp.changed.len(), cp.unchanged.len()), (1, 49));

        let slices = copy_slices(cp.unchanged.clone(), 3 * u64::from(cp.unchanged[0].1.len));
        assert!(slices.len() > 5, "{} slices", slices.len());
        assert!(slices.iter().flatten().map(|(_, r)| r.offset).is_sorted());
        assert_eq!(slices.iter().map(Vec::len).sum::<usize>(), 49);
        let mut writer = Writer::default();
        writer.append(encode_all(&cp.changed).unwrap(), &mut bodies).unwrap();
        let mut applies = Vec::new();
        for slice in slices {
            // An apply between two slices.
            let before = bodies.len();
            store.apply(append("c0"), &mut bodies).unwrap().unwrap();
            applies.push((before, bodies.len()));
            let copies: Vec<_> = slice.into_iter().map(|(id, r)| (id, bodies.get(r).unwrap().to_vec())).collect();
            writer.append(copies, &mut bodies).unwrap();
        }
        let appended = writer.finish(&mut bodies).unwrap();
        for (from, to) in &applies {
            for (start, end) in &appended.ranges {
                assert!(to <= start || end <= from, "range {start}..{end} overlaps an apply's {from}..{to}");
            }
        }
        for (_, r) in
            appended.written.iter().chain(&appended.chunks.iter().map(|r| (String::new(), *r)).collect::<Vec<_>>())
        {
            let end = r.offset + u64::from(r.len);
            assert!(appended.ranges.iter().any(|(s, e)| *s <= r.offset && end <= *e), "{r:?} outside the ranges");
        }
        // The rebase made the first checkpoint dead: with its bytes scrubbed, every
        // context still reads from the new directory.
        for (from, to) in dead {
            bodies.scrub(from, to);
        }
        let loaded = load(&appended.chunks, limits, &bodies).unwrap();
        for i in 0..50 {
            let last = loaded.get(&format!("c{i}"), &bodies).unwrap().last_seq();
            assert_eq!(last, if i == 0 { 2 } else { 1 }, "c{i}");
        }
    }

    /// A delta takes its contexts by id when few changed and in one pass over the map
    /// when many did: both must give exactly the contexts changed since the last
    /// durable checkpoint, including one changed again while a checkpoint was in flight.
    #[test]
    fn a_delta_takes_exactly_the_changed_contexts_by_id_or_in_one_pass() {
        let (mut store, mut bodies) = contexts(100);
        let complete = |store: &mut Store, cp: crate::store::Checkpoint, bodies: &mut MemBodies| {
            let appended = super::append(encode_all(&cp.changed).unwrap(), cp.unchanged, bodies).unwrap();
            store.checkpointed(&appended.written);
        };
        let ids = |cp: &crate::store::Checkpoint| {
            let mut v: Vec<String> = cp.changed.iter().map(|c| c.id.clone()).collect();
            v.sort();
            v
        };
        let names = |r: std::ops::Range<usize>| {
            let mut v: Vec<String> = r.map(|i| format!("c{i}")).collect();
            v.sort();
            v
        };
        let base = store.take_changed(true);
        complete(&mut store, base, &mut bodies);
        // Many changed (one pass).
        for i in 0..50 {
            store.apply(append(&format!("c{i}")), &mut bodies).unwrap().unwrap();
        }
        let a = store.take_changed(false);
        assert_eq!(ids(&a), names(0..50));
        // c0 and c60 change while it is in flight.
        store.apply(append("c0"), &mut bodies).unwrap().unwrap();
        store.apply(append("c60"), &mut bodies).unwrap().unwrap();
        complete(&mut store, a, &mut bodies);
        // Few changed (by id).
        let b = store.take_changed(false);
        assert_eq!(ids(&b), vec!["c0".to_owned(), "c60".to_owned()]);
        store.apply(append("c0"), &mut bodies).unwrap().unwrap();
        complete(&mut store, b, &mut bodies);
        // Many again (one pass): c0, changed during b, and c1..c20; not c60.
        for i in 1..21 {
            store.apply(append(&format!("c{i}")), &mut bodies).unwrap().unwrap();
        }
        let c = store.take_changed(false);
        assert_eq!(ids(&c), names(0..21));
    }
}
