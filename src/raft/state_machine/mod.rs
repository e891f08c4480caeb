//! `ShardStateMachine`: the context store as openraft's state machine.
//!
//! Apply runs `Store::apply` (deterministic, never panics) and hands each outcome to the
//! waiting `client_write`. The store is shared (`Rc<RefCell>`) with the API layer of the
//! same executor, which reads it directly after a linearizable-read barrier.
//!
//! Message bodies, and each context's message index (`crate::store::message_log`), live
//! in the shard's `FileBodies` (on disk, mapped); the store holds per context only the
//! newest few index entries and references. A snapshot syncs the body store, then writes
//! `snapshot.bin`: the store (postcard; its size grows with the number of contexts, not
//! of messages) and the body store's length. On start the state machine loads it, cuts
//! the body store back to that length and openraft re-applies the log after it.
//! Snapshot data (`ShardSnapshot`) refers to the body bytes instead of copying them.
use std::cell::RefCell;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use futures_util::StreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend};

use super::bodies::{BodiesSource, FileBodies, ReadPin, ReadPins};
use super::feed::{EndReason, Feed};
use super::snapshot_index::{decode_index, encode_index};
use super::types::FleetRaft;
use crate::store::checkpoint::{self, Extents};
use crate::store::{BodyRef, Store};

mod build;

type C = FleetRaft;

/// The state machine's files come in generations: generation g is the snapshot index
/// `snapshot-g.bin` and the body store `bodies-g/` it points into (generation 0 is
/// `snapshot.bin` and `bodies/`). A build rewrites the current generation's index (the
/// body store only grows). An install creates generation g+1 beside g and commits it
/// by the rename that writes `snapshot-(g+1).bin`; only then is g deleted. At open the
/// newest generation with an index wins and every other one is removed, so a crash at
/// any point of an install leaves either the old state or the new one, never an old
/// index over new body files (which the in-place install this replaced could).
fn snapshot_file(generation: u64) -> String {
    if generation == 0 { "snapshot.bin".to_owned() } else { format!("snapshot-{generation}.bin") }
}

fn bodies_dir(generation: u64) -> String {
    if generation == 0 { "bodies".to_owned() } else { format!("bodies-{generation}") }
}

/// The generation a state-machine file or directory belongs to, if it is one.
fn generation_of(name: &str) -> Option<u64> {
    match name {
        "snapshot.bin" | "snapshot.bin.tmp" | "bodies" => Some(0),
        _ => {
            let g = name.strip_prefix("snapshot-").and_then(|r| r.strip_suffix(".bin").or(r.strip_suffix(".bin.tmp")));
            g.or_else(|| name.strip_prefix("bodies-")).and_then(|g| g.parse().ok())
        }
    }
}

/// The current generation's checkpoint directory (chunks in its body store: base, then
/// deltas), how many entries they hold in all, and the body-store ranges of its
/// checkpoints.
#[derive(Default)]
struct Directory {
    chunks: Vec<BodyRef>,
    entries: u64,
    extents: Extents,
}

/// Releases the space of the dead checkpoint ranges of `extents` (none is named by
/// anything any more) unless a snapshot that may name them is being read.
fn release_dead(extents: &mut Extents, bodies: &mut FileBodies, pins: &ReadPins, dir: &Path) {
    if extents.dead.is_empty() || pins.any() {
        return;
    }
    for (from, to) in std::mem::take(&mut extents.dead) {
        if let Err(e) = bodies.release_range(from, to) {
            // Only space is lost: the range stays as it was.
            tracing::warn!(shard_dir = %dir.display(), "releasing dead checkpoint records: {e}");
        }
    }
}

/// What the state machine holds.
pub struct Applied {
    pub store: Store,
    pub last_applied: Option<LogIdOf<C>>,
    pub membership: StoredMembershipOf<C>,
    pub bodies: FileBodies,
}

/// A snapshot's data: the index, and the body bytes by reference. Building or
/// offering a snapshot reads no bodies (openraft keeps only the meta of a built one);
/// an installer reads them. Sending one to another node (the cluster issue) streams
/// `[index length: u64 LE][index][bodies]` from this.
#[derive(Debug, Clone)]
pub struct ShardSnapshot {
    pub index: Vec<u8>,
    pub bodies: BodiesSource,
}

/// Hands freed heap pages back to the kernel. Replaying a log tail after a restart (or
/// catching up) decodes and renders thousands of commands whose temporaries glibc keeps
/// in its arenas: measured after a restart with 1M messages, 27 MB of RSS (202 → 175
/// MB anonymous) came back this way. Steady-state applies are small batches and skip it.
fn release_freed_heap() {
    let started = std::time::Instant::now();
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
    // It runs on the executor: how often and how long is in /v1/admin/latency.
    crate::metrics::record_since("heap.trim", started);
}

fn bodies_err(e: crate::store::BodiesError) -> io::Error {
    io::Error::other(e)
}

#[derive(Clone)]
pub struct ShardStateMachine {
    applied: Rc<RefCell<Applied>>,
    dir: PathBuf,
    /// The current generation (see `snapshot_file`). openraft builds snapshots in a
    /// task of their own, concurrent with applies and installs; a build that an install
    /// overtook must not write its (older) index into the new generation.
    generation: Rc<std::cell::Cell<u64>>,
    /// The checkpoint directory of the current generation's last snapshot.
    directory: Rc<RefCell<Directory>>,
    /// Snapshots of this state machine being read (sent to a follower): while any is,
    /// dead checkpoint ranges are kept.
    pins: ReadPins,
    /// Contexts, and bytes of their records, kept in memory at most: the least recently
    /// used with a durable record are evicted after each snapshot (`Store::evict`).
    hot_contexts_max: (usize, u64),
    /// The streams watching this replica's contexts.
    feed: Rc<Feed>,
    /// A body-store writeback job is running on the blocking pool (one at a time).
    writeback_in_flight: Rc<std::cell::Cell<bool>>,
}

impl ShardStateMachine {
    /// Opens the state machine of the shard in `dir`, from its snapshot if it has one.
    pub fn open(dir: &Path, store: Store, body_segment_size_bytes: u64) -> io::Result<Self> {
        let store_hot_max =
            (store.limits().hot_contexts_max_per_shard, store.limits().hot_contexts_max_bytes_per_shard);
        let mut generations = Vec::new();
        for entry in std::fs::read_dir(dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("incoming-") {
                // Snapshots half-received before a crash (`crate::shard::peer` stages them here).
                std::fs::remove_dir_all(entry.path())?;
            } else if let Some(g) = generation_of(&name) {
                generations.push((g, name));
            }
        }
        let current = generations.iter().filter(|(g, n)| *n == snapshot_file(*g)).map(|(g, _)| *g).max().unwrap_or(0);
        for (g, name) in generations.iter().filter(|(g, n)| *g != current || n.ends_with(".tmp")) {
            // An install that crashed before its commit (g > current) or after it, before
            // the old generation was deleted (g < current); or a torn index write.
            tracing::warn!(shard_dir = %dir.display(), generation = g, current, "removing {name}");
            let path = dir.join(name);
            if path.is_dir() { std::fs::remove_dir_all(&path)? } else { std::fs::remove_file(&path)? }
        }
        let path = dir.join(snapshot_file(current));
        let bodies_dir = dir.join(bodies_dir(current));
        let seg = body_segment_size_bytes;
        let (applied, directory) = match std::fs::read(&path) {
            Ok(bytes) => {
                let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
                let decoded = decode_index(&bytes).map_err(named)?;
                let mut bodies = FileBodies::open(&bodies_dir, seg, decoded.bodies_len()).map_err(bodies_err)?;
                // The node's configured limits, not the ones the snapshot was written under.
                let (i, store, converted) = decoded.open(&mut bodies, store.limits().clone()).map_err(named)?;
                if converted {
                    // Durably in the new format before anything else happens: what the
                    // conversion wrote to the body store first, then the index naming it.
                    bodies.sync().map_err(bodies_err)?;
                    crate::files::replace_durably(&path, &encode_index(&i)?).map_err(named)?;
                }
                let entries = checkpoint::entries_in(&i.directory, &bodies).map_err(bodies_err)?;
                let mut extents = i.extents;
                // What a crash (or a snapshot being sent) kept from being released.
                release_dead(&mut extents, &mut bodies, &ReadPins::default(), dir);
                let applied = Applied { store, last_applied: i.last_applied, membership: i.membership, bodies };
                (applied, Directory { chunks: i.directory, entries, extents })
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let applied = Applied {
                    store,
                    last_applied: None,
                    membership: StoredMembershipOf::<C>::default(),
                    bodies: FileBodies::open(&bodies_dir, seg, 0).map_err(bodies_err)?,
                };
                (applied, Directory::default())
            }
            Err(e) => return Err(e),
        };
        Ok(ShardStateMachine {
            applied: Rc::new(RefCell::new(applied)),
            dir: dir.to_owned(),
            generation: Rc::new(std::cell::Cell::new(current)),
            directory: Rc::new(RefCell::new(directory)),
            pins: ReadPins::default(),
            hot_contexts_max: store_hot_max,
            feed: Rc::default(),
            writeback_in_flight: Rc::default(),
        })
    }

    /// The applied state, for reads on this executor. Do not hold across an await.
    pub fn applied(&self) -> &Rc<RefCell<Applied>> {
        &self.applied
    }

    /// What applies change, for streams.
    pub fn feed(&self) -> &Rc<Feed> {
        &self.feed
    }
}

impl ShardStateMachine {
    /// Reads the newest bytes of the body store into the page cache in the background
    /// (`crate::config::BODIES_PREWARM_BYTES_PER_SHARD`; once the shard caught up).
    pub fn start_prewarm(&self, budget_bytes: u64) {
        let Some(mut job) = self.applied.borrow().bodies.prewarm_job(budget_bytes) else { return };
        let dir = self.dir.clone();
        glommio::spawn_local(async move {
            let started = std::time::Instant::now();
            let mut read = 0;
            // 8 MiB per turn of the (one-thread) blocking pool; other jobs queue between.
            loop {
                let (back, n) = glommio::executor()
                    .spawn_blocking(move || {
                        let n = job.step(8 << 20);
                        (job, n)
                    })
                    .await;
                job = back;
                let Some(n) = n else { break };
                read += n;
            }
            crate::metrics::record_since("bodies.prewarm", started);
            tracing::debug!(shard_dir = %dir.display(), read, ms = started.elapsed().as_millis() as u64, "prewarmed bodies");
        })
        .detach();
    }

    /// Starts the writeback of the bodies written since the last one, once enough were
    /// (`FileBodies::writeback_due`), on the blocking pool; never waits for it.
    fn start_writeback(&self) {
        if self.writeback_in_flight.get() {
            return;
        }
        let Some(job) = self.applied.borrow_mut().bodies.writeback_due(crate::config::BODIES_WRITEBACK_STEP_BYTES)
        else {
            return;
        };
        self.writeback_in_flight.set(true);
        let in_flight = self.writeback_in_flight.clone();
        glommio::spawn_local(async move {
            glommio::executor().spawn_blocking(move || job.run()).await;
            in_flight.set(false);
        })
        .detach();
    }
}

impl RaftStateMachine<C> for ShardStateMachine {
    type SnapshotData = ShardSnapshot;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        let a = self.applied.borrow();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        let mut applied_entries = 0usize;
        let mut batch = Vec::with_capacity(crate::config::APPLY_BATCH_ENTRIES);
        // An entry that cannot be read ends the apply with its error, after the ones read
        // before it (as when entries were applied one by one).
        let mut failed = None;
        loop {
            while batch.len() < crate::config::APPLY_BATCH_ENTRIES {
                match entries.next().await {
                    Some(Ok(item)) => batch.push(item),
                    Some(Err(e)) => {
                        failed = Some(e);
                        break;
                    }
                    None => break,
                }
            }
            let full = batch.len() == crate::config::APPLY_BATCH_ENTRIES && failed.is_none();
            if batch.is_empty() {
                break;
            }
            {
                let a = self.applied.borrow();
                let ids = batch.iter().filter_map(|(e, _): &EntryResponder<C>| match &e.payload {
                    EntryPayload::Normal(cmd) => Some(cmd.context_id()),
                    _ => None,
                });
                a.store.prefetch_records(ids, &a.bodies);
            }
            for (entry, responder) in batch.drain(..) {
                applied_entries += 1;
                let outcome = {
                    let mut guard = self.applied.borrow_mut();
                    let a = &mut *guard;
                    a.last_applied = Some(entry.log_id);
                    match entry.payload {
                        EntryPayload::Blank => None,
                        // A body-store failure stops applying (openraft treats it as fatal):
                        // every replica must apply the same commands.
                        EntryPayload::Normal(cmd) => {
                            // What a watched context looked like before, to publish the change.
                            let watched = self.feed.watches(cmd.context_id()).then(|| cmd.context_id().to_owned());
                            let before = watched
                                .as_ref()
                                .and_then(|id| a.store.get(id, &a.bodies).ok().map(|c| (c.version, c.status)));
                            let outcome = a.store.apply(cmd, &mut a.bodies).map_err(bodies_err)?;
                            if let Some(ctx) = watched.and_then(|id| a.store.get(&id, &a.bodies).ok()) {
                                self.feed.publish(&ctx, before, &a.bodies);
                            }
                            Some(outcome)
                        }
                        EntryPayload::Membership(m) => {
                            a.membership = StoredMembershipOf::<C>::new(Some(entry.log_id), m);
                            None
                        }
                    }
                };
                if let Some(r) = responder {
                    r.send(outcome.unwrap_or(Ok(crate::store::Outcome::Nothing)));
                }
            }
            if !full {
                break;
            }
            // A replay of thousands of entries: the core's other tasks (other shards
            // opening, heartbeats, requests) run between two batches.
            futures_lite::future::yield_now().await;
        }
        if applied_entries >= crate::config::HEAP_TRIM_AFTER_APPLIED_ENTRIES {
            release_freed_heap();
        }
        self.start_writeback();
        failed.map_or(Ok(()), Err)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let decoded = decode_index(&snapshot.index)?;
        if decoded.meta().last_log_id != meta.last_log_id || decoded.bodies_len() != snapshot.bodies.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot data does not match its meta"));
        }
        let limits = self.applied.borrow().store.limits().clone();
        // The new generation is built beside the current one and the in-memory state
        // switched to it at once (no await in between: a concurrent build sees the old
        // state or the new one); the index write below is the commit point on disk.
        let (old, new) = (self.generation.get(), self.generation.get() + 1);
        let new_dir = self.dir.join(bodies_dir(new));
        let staged = match &snapshot.bodies {
            BodiesSource::Files { dir, .. } => {
                dir.parent() == Some(self.dir.as_path())
                    && dir.file_name().is_some_and(|n| n.to_string_lossy().starts_with("incoming-"))
            }
            BodiesSource::Bytes(_) => false,
        };
        let mut bodies =
            self.applied.borrow().bodies.install_into(&snapshot.bodies, &new_dir, staged).map_err(bodies_err)?;
        // From a node of an older build: converted here, and written in the current format.
        let (i, store, converted) = decoded.open(&mut bodies, limits)?;
        let index_bytes = if converted {
            bodies.sync().map_err(bodies_err)?;
            encode_index(&i)?
        } else {
            snapshot.index
        };
        let entries = checkpoint::entries_in(&i.directory, &bodies).map_err(bodies_err)?;
        let mut extents = i.extents;
        // The sender's dead ranges came as bytes; nothing here can be reading them.
        release_dead(&mut extents, &mut bodies, &ReadPins::default(), &self.dir);
        {
            let mut a = self.applied.borrow_mut();
            a.store = store;
            a.last_applied = i.last_applied;
            a.membership = i.membership;
            a.bodies = bodies;
        }
        *self.directory.borrow_mut() = Directory { chunks: i.directory, entries, extents };
        self.generation.set(new);
        // The state jumped: streams cannot be told what changed event by event, so they
        // end, and resume from their cursor on the new state.
        self.feed.end_all(EndReason::SnapshotInstalled);
        self.write_snapshot(new, index_bytes).await?;
        let (old_index, old_bodies) = (self.dir.join(snapshot_file(old)), self.dir.join(bodies_dir(old)));
        let removed = glommio::executor()
            .spawn_blocking(move || {
                match std::fs::remove_file(&old_index) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                std::fs::remove_dir_all(&old_bodies)
            })
            .await;
        if let Err(e) = removed {
            // Harmless: the next open removes what is left of older generations.
            tracing::warn!(shard_dir = %self.dir.display(), "removing snapshot generation {old}: {e}");
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, Self::SnapshotData>>, io::Error> {
        let index = match std::fs::read(self.dir.join(snapshot_file(self.generation.get()))) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let i = decode_index(&index)?;
        let mut bodies = self.applied.borrow().bodies.source_up_to(i.bodies_len());
        if let BodiesSource::Files { pin, .. } = &mut bodies {
            // Until it is sent, no record it names is released.
            *pin = Some(ReadPin::new(&self.pins));
        }
        Ok(Some(SnapshotOf::<C, _> { meta: i.meta().clone(), snapshot: ShardSnapshot { index, bodies } }))
    }
}
