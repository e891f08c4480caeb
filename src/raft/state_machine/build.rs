//! Building a snapshot of the state machine: an incremental checkpoint of the contexts
//! changed since the last one, appended to the body store, then the index naming it
//! (`crate::store::checkpoint`; docs/state.md, "Snapshots").
use std::io;

use openraft::RaftSnapshotBuilder;
use openraft::type_config::alias::{SnapshotMetaOf, SnapshotOf};

use super::super::snapshot_index::SnapshotIndex;
use super::*;

impl ShardStateMachine {
    /// Writes the snapshot file durably on glommio's blocking pool: a snapshot of a
    /// large shard is tens of MB, and writing and fsyncing it on the executor stalled
    /// every request of the core (seen: 400–800 ms latency spikes while loading). The
    /// bytes come back for the snapshot openraft keeps.
    pub(super) async fn write_snapshot(&self, generation: u64, bytes: Vec<u8>) -> io::Result<Vec<u8>> {
        let path = self.dir.join(snapshot_file(generation));
        glommio::executor().spawn_blocking(move || crate::files::replace_durably(&path, &bytes).map(|()| bytes)).await
    }
}

impl RaftSnapshotBuilder<C> for ShardStateMachine {
    type SnapshotData = ShardSnapshot;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Self::SnapshotData>, io::Error> {
        let result = self.checkpoint().await;
        if result.is_err() {
            // What the failed checkpoint took as changed may be in no snapshot: the next
            // one writes every context again.
            self.applied.borrow_mut().store.checkpoint_failed();
        }
        result
    }
}

impl ShardStateMachine {
    /// A snapshot: the contexts changed since the last one written to the body store
    /// (`crate::store::checkpoint`), the body store synced, then an index naming them
    /// written. On the executor only the capture (a reference count per changed
    /// context) and the appends (a copy of the encoded records; a rebase's copies of
    /// unchanged records in slices of `CHECKPOINT_COPY_SLICE_BYTES`); the encoding, the
    /// reads of the records to copy and the syncs run on the blocking pool. Cost: the
    /// changed contexts, not the store (a rebase: every context's record, once per
    /// rebase, which comes after as many changes as there are contexts).
    async fn checkpoint(&mut self) -> Result<SnapshotOf<C, ShardSnapshot>, io::Error> {
        let started = std::time::Instant::now();
        let generation = self.generation.get();
        let (taken, rebase, meta, last_applied, membership) = {
            let mut a = self.applied.borrow_mut();
            let contexts = a.store.len() as u64;
            // Rebased (every context listed, the directory restarted) once the deltas
            // would list more entries than twice the contexts: the directory stays
            // within twice the contexts. A rebase writes every context (copies of the
            // records of those that did not change), so that earlier ranges die.
            let pending = a.store.changed_count().map_or(u64::MAX, |n| n as u64);
            let rebase = self.directory.borrow().entries.saturating_add(pending) > 2 * contexts;
            let taken = a.store.take_changed(rebase);
            let meta = SnapshotMetaOf::<C> { last_log_id: a.last_applied, last_membership: a.membership.clone() };
            (taken, rebase, meta, a.last_applied, a.membership.clone())
        };
        crate::metrics::record_since("snapshot.capture", started);
        let crate::store::Checkpoint { changed, unchanged, retired_ids } = taken;
        let listed = (changed.len() + unchanged.len()) as u64;
        let encoded = glommio::executor()
            .spawn_blocking(move || {
                let started = std::time::Instant::now();
                let encoded = checkpoint::encode_all(&changed);
                // Dropping the captured contexts and the changed ids here, not on the
                // executor.
                drop(changed);
                drop(retired_ids);
                (encoded, started.elapsed())
            })
            .await;
        crate::metrics::record("snapshot.encode", encoded.1.as_micros() as u64);
        let encoded = encoded.0.map_err(bodies_err)?;
        if self.generation.get() != generation {
            return Ok(self.overtaken(meta));
        }
        // The changed records, then copies of the unchanged ones (a rebase), in slices
        // of `CHECKPOINT_COPY_SLICE_BYTES` (copies read on the blocking pool), each
        // appended in one go; applies run between two (`checkpoint::Writer`).
        let mut writer = checkpoint::Writer::default();
        let slice_bytes = crate::config::CHECKPOINT_COPY_SLICE_BYTES;
        for batch in checkpoint::cut(encoded, |(_, bytes)| bytes.len() as u64, slice_bytes) {
            let started = std::time::Instant::now();
            writer.append(batch, &mut self.applied.borrow_mut().bodies).map_err(bodies_err)?;
            crate::metrics::record_since("snapshot.append", started);
            // Tens of MB when most contexts changed: the executor's other tasks (requests,
            // applies) run between two slices.
            futures_lite::future::yield_now().await;
            if self.generation.get() != generation {
                return Ok(self.overtaken(meta));
            }
        }
        let source = self.applied.borrow().bodies.source();
        let mut read_fallback_logged = false;
        for slice in checkpoint::copy_slices(unchanged, slice_bytes) {
            let source = source.clone();
            let read = glommio::executor()
                .spawn_blocking(move || {
                    let refs: Vec<_> = slice.iter().map(|(_, r)| *r).collect();
                    match source.read_many(&refs) {
                        Ok(bytes) => Ok(slice.into_iter().map(|(id, _)| id).zip(bytes).collect::<Vec<_>>()),
                        Err(e) => Err((e, slice)),
                    }
                })
                .await;
            if self.generation.get() != generation {
                // The install replaced the body store, copies and all.
                return Ok(self.overtaken(meta));
            }
            let started = std::time::Instant::now();
            let mut a = self.applied.borrow_mut();
            let read = match read {
                Ok(read) => read,
                // pread opens the segment files: out of descriptors (or on a read error)
                // this slice is copied through the mapping on the executor instead, as
                // before slicing, rather than failing the build (fatal to the Raft core).
                Err((e, slice)) => {
                    if !read_fallback_logged {
                        read_fallback_logged = true;
                        tracing::warn!(shard_dir = %self.dir.display(), error = %e, "snapshot copies read through the mapping");
                    }
                    let mut copies = Vec::with_capacity(slice.len());
                    for (id, r) in slice {
                        copies.push((id, crate::store::Bodies::get(&a.bodies, r).map_err(bodies_err)?.to_vec()));
                    }
                    copies
                }
            };
            writer.append(read, &mut a.bodies).map_err(bodies_err)?;
            drop(a);
            crate::metrics::record_since("snapshot.append", started);
        }
        let started = std::time::Instant::now();
        let (index, written, bodies, bodies_synced) = {
            let mut a = self.applied.borrow_mut();
            let appended = writer.finish(&mut a.bodies).map_err(bodies_err)?;
            let current = self.directory.borrow();
            let mut directory = if rebase { Vec::new() } else { current.chunks.clone() };
            directory.extend(appended.chunks);
            let mut extents = current.extents.clone();
            extents.written(&appended.ranges, rebase);
            let index = SnapshotIndex {
                meta: meta.clone(),
                last_applied,
                membership,
                bodies_len: a.bodies.len(),
                directory,
                extents,
            };
            (index, appended.written, a.bodies.source(), a.bodies.sync_job().map_err(bodies_err)?)
        };
        crate::metrics::record_since("snapshot.append", started);
        let entries = if rebase { listed } else { self.directory.borrow().entries + listed };
        let (directory, extents) = (index.directory.clone(), index.extents.clone());
        let bytes = glommio::executor()
            .spawn_blocking(move || {
                // Bodies first: the index on disk must never name bytes that are not durable.
                bodies_synced.run().map_err(bodies_err)?;
                encode_index(&index)
            })
            .await?;
        // The check and the queueing of the write happen without an await in between,
        // and the blocking pool (one thread) runs jobs in order: an install that starts
        // later writes its file after this one.
        if self.generation.get() != generation {
            return Ok(self.overtaken(meta));
        }
        let bytes = self.write_snapshot(generation, bytes).await?;
        if self.generation.get() == generation {
            let mut d = self.directory.borrow_mut();
            *d = Directory { chunks: directory, entries, extents };
            // The records are durable: the contexts they hold that did not change since
            // may leave memory. After a rebase nothing names an earlier range any more.
            let mut a = self.applied.borrow_mut();
            a.store.checkpointed(&written);
            release_dead(&mut d.extents, &mut a.bodies, &self.pins, &self.dir);
            let evicted = a.store.evict(self.hot_contexts_max.0, self.hot_contexts_max.1);
            tracing::debug!(shard_dir = %self.dir.display(), evicted, hot = a.store.hot_len(), "checkpoint");
        }
        Ok(SnapshotOf::<C, _> { meta, snapshot: ShardSnapshot { index: bytes, bodies } })
    }

    /// The answer of a build that an install overtook: the installed state replaced the
    /// captured one, nothing was written, and openraft, which keeps only the meta of a
    /// built snapshot, ignores one older than the installed snapshot. (An error here
    /// would be fatal to the Raft core.)
    fn overtaken(&self, meta: SnapshotMetaOf<C>) -> SnapshotOf<C, ShardSnapshot> {
        tracing::info!(shard_dir = %self.dir.display(), "snapshot build overtaken by an install");
        let bodies = self.applied.borrow().bodies.source_up_to(0);
        SnapshotOf::<C, _> { meta, snapshot: ShardSnapshot { index: Vec::new(), bodies } }
    }
}
