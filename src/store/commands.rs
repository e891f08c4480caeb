//! `Store`: every context of one shard, and the commands that change them. This is the
//! Raft state machine's logic: `apply` is deterministic (the time comes in the command,
//! taken once by the leader) and never panics; refusals are results.
use std::borrow::Cow;
use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::bodies::{Bodies, BodiesError, BodyRef};
use super::context::Context;
use super::error::StoreError;
use super::model::Appended;
use super::model::{NewMessage, PutContext, Status};
use crate::config::StoreLimits;

/// A change, as proposed through Raft. Inputs are validated before proposal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    Put {
        id: String,
        put: PutContext,
        now: String,
    },
    PatchMetadata {
        id: String,
        #[serde(with = "super::json_text::map")]
        patch: Map<String, Value>,
        now: String,
    },
    Append {
        id: String,
        message: NewMessage,
        if_version: Option<u64>,
        idempotency_key: Option<String>,
        now: String,
    },
    Delete {
        id: String,
        now: String,
    },
    Compact {
        id: String,
        replacement: Vec<NewMessage>,
        if_version: Option<u64>,
        now: String,
    },
}

/// Counts the bytes written to it.
struct ByteCount(u64);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn json_bytes(map: &Map<String, Value>) -> u64 {
    let mut n = ByteCount(0);
    let _ = serde_json::to_writer(&mut n, map);
    n.0
}

impl Command {
    /// An upper bound of what applying it can add to a context in memory: its metadata,
    /// a key, a slot per replacement message (message text goes to the body store).
    pub fn memory_bytes(&self) -> u64 {
        const PER_COMMAND: u64 = 64;
        // A window message: a seq, a token count, part kinds and a body reference, boxed.
        const PER_MESSAGE: u64 = 64;
        let id = self.context_id().len() as u64 + PER_COMMAND;
        id + match self {
            Command::Put { put, .. } => put.metadata.as_ref().map_or(0, json_bytes),
            Command::PatchMetadata { patch, .. } => json_bytes(patch),
            Command::Append { idempotency_key, .. } => idempotency_key.as_ref().map_or(0, |k| k.len() as u64),
            Command::Delete { .. } => 0,
            Command::Compact { replacement, .. } => replacement.len() as u64 * PER_MESSAGE,
        }
    }

    /// The context the command is about (it picks the shard).
    pub fn context_id(&self) -> &str {
        match self {
            Command::Put { id, .. }
            | Command::PatchMetadata { id, .. }
            | Command::Append { id, .. }
            | Command::Delete { id, .. }
            | Command::Compact { id, .. } => id,
        }
    }
}

/// Raft logs commands by their `Display`: name and context, never message bodies.
impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Command::Put { .. } => "put",
            Command::PatchMetadata { .. } => "patch_metadata",
            Command::Append { .. } => "append",
            Command::Delete { .. } => "delete",
            Command::Compact { .. } => "compact",
        };
        write!(f, "{name}({:?})", self.context_id())
    }
}

/// What a command did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// PUT: `created` tells 201 from 200; PATCH: the summary.
    Summary {
        created: bool,
        summary: Value,
    },
    Appended(Appended),
    Deleted,
    Compacted {
        version: u64,
    },
    /// For Raft entries that carry no command (blank and membership entries).
    Nothing,
}

#[derive(Debug, Clone, Default)]
pub struct Store {
    contexts: HashMap<String, Slot>,
    /// A node applies its own configured limits (`with_limits` after a snapshot is
    /// loaded or installed).
    limits: StoreLimits,
    /// Contexts changed since the last checkpoint took them (`take_changed`); `all`:
    /// every context counts as changed (after a failed checkpoint).
    changed: Changed,
    /// Hot contexts; a clock of uses, for evicting the least recently used.
    hot: usize,
    clock: Cell<u64>,
}

/// Where a context's state is.
#[derive(Debug, Clone)]
enum Slot {
    /// In memory. Shared, copy-on-write: a snapshot takes a reference count and encodes
    /// the context on another thread while applies go on. `record`: its checkpoint
    /// record, when the context has not changed since that record was made durable
    /// (then it may be evicted). `used`: the clock at its last use.
    Hot { ctx: Arc<Context>, record: Option<BodyRef>, used: Cell<u64> },
    /// Only its checkpoint record, in the body store: read (decoded) on use, made hot
    /// again when changed.
    Cold(BodyRef),
}

#[derive(Debug, Clone, Default)]
struct Changed {
    ids: std::collections::HashSet<String>,
    all: bool,
    /// What the changes may have added to memory (`Command::memory_bytes`, and the
    /// records of contexts made hot to change them): changed contexts stay in memory
    /// until a checkpoint makes them durable, so a snapshot is asked for beyond a limit.
    bytes: u64,
}

/// What a checkpoint writes: the contexts to encode, and (rebase) the records of the
/// contexts that did not change since theirs.
pub struct Checkpoint {
    pub changed: Vec<Arc<Context>>,
    pub unchanged: Vec<(String, BodyRef)>,
    /// The ids that were marked changed: handed over so that freeing them (one string
    /// each) can happen off the executor.
    pub retired_ids: std::collections::HashSet<String>,
}

/// A delta checkpoint takes its contexts in one pass over the map, rather than one
/// lookup per changed id, when at least 1/this of the contexts changed.
const DELTA_FULL_PASS_DIVISOR: usize = 16;

/// The limits as snapshots hold them: the eight fields `StoreLimits` had when the
/// snapshot format was fixed (data format 2), in that order. Limits added since are not
/// written (postcard has no field names: a new field would shift every byte after it
/// and make older snapshots unreadable; tests/datadir_compat.rs caught exactly that).
mod limits_in_snapshot {
    use serde::{Deserialize, Deserializer};

    use crate::config::StoreLimits;

    #[derive(Deserialize)]
    struct V2 {
        role_max_bytes: usize,
        parts_max: usize,
        policy_limit_max: u32,
        skip_kinds_max: usize,
        idempotency_keys_per_context: usize,
        idempotency_key_max_bytes: usize,
        page_limit_max: usize,
        page_limit_default: usize,
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<StoreLimits, D::Error> {
        let v = V2::deserialize(d)?;
        Ok(StoreLimits {
            role_max_bytes: v.role_max_bytes,
            parts_max: v.parts_max,
            policy_limit_max: v.policy_limit_max,
            skip_kinds_max: v.skip_kinds_max,
            idempotency_keys_per_context: v.idempotency_keys_per_context,
            idempotency_key_max_bytes: v.idempotency_key_max_bytes,
            page_limit_max: v.page_limit_max,
            page_limit_default: v.page_limit_default,
            ..StoreLimits::default()
        })
    }
}

/// A store as snapshot index formats 2 and 3 encode it (see `LegacyContext`).
#[derive(Deserialize)]
pub struct LegacyStore {
    contexts: HashMap<String, Arc<super::context::LegacyContext>>,
    #[serde(with = "limits_in_snapshot")]
    limits: StoreLimits,
}

impl LegacyStore {
    /// The store, every context's log index written to `bodies` (in the order of the
    /// contexts' ids, so that two conversions of one snapshot write the same bytes).
    pub fn into_store(self, bodies: &mut dyn Bodies) -> Result<Store, BodiesError> {
        let mut legacy: Vec<_> = self.contexts.into_iter().collect();
        legacy.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let mut contexts = Vec::with_capacity(legacy.len());
        for (id, ctx) in legacy {
            let ctx = Arc::try_unwrap(ctx).map_err(|_| BodiesError(format!("context {id:?} is shared")))?;
            contexts.push(ctx.into_context(bodies)?);
        }
        let mut store = Store::new(self.limits);
        store.hot = contexts.len();
        store.contexts = contexts.into_iter().map(|c| (c.id.clone(), Slot::hot(Arc::new(c), None))).collect();
        store.changed.all = true;
        Ok(store)
    }
}

impl Slot {
    fn hot(ctx: Arc<Context>, record: Option<BodyRef>) -> Slot {
        Slot::Hot { ctx, record, used: Cell::new(0) }
    }
}

fn damaged(e: BodiesError) -> StoreError {
    StoreError::Damaged(e.to_string())
}

impl Store {
    pub fn new(limits: StoreLimits) -> Store {
        Store { contexts: HashMap::new(), limits, changed: Changed::default(), hot: 0, clock: Cell::new(0) }
    }

    /// A store whose contexts are the checkpoint records `records` (id, record): all
    /// cold, nothing read. Opening a shard costs its directory, not its contexts.
    pub fn from_records(limits: StoreLimits, records: HashMap<String, BodyRef>) -> Store {
        let contexts = records.into_iter().map(|(id, r)| (id, Slot::Cold(r))).collect();
        Store { contexts, ..Store::new(limits) }
    }

    /// What the next checkpoint writes: the contexts changed since the last call, and
    /// with `rebase` (or when a checkpoint failed since) every context, those with a
    /// durable record by reference. Changed contexts are shared: encoding them elsewhere
    /// costs the executor a reference count each.
    pub fn take_changed(&mut self, rebase: bool) -> Checkpoint {
        let changed = std::mem::take(&mut self.changed);
        let mut out = Checkpoint { changed: Vec::new(), unchanged: Vec::new(), retired_ids: Default::default() };
        if rebase || changed.all {
            for (id, slot) in &self.contexts {
                match slot {
                    Slot::Hot { ctx, record: None, .. } => out.changed.push(ctx.clone()),
                    Slot::Hot { record: Some(r), .. } | Slot::Cold(r) => out.unchanged.push((id.clone(), *r)),
                }
            }
            return out;
        }
        if changed.ids.len() >= self.contexts.len() / DELTA_FULL_PASS_DIVISOR {
            // Most contexts changed: one pass over the map beats a lookup per id (measured
            // on 25,000 contexts with 20,000 changed: 4.5 ms against 13–14 ms, the lookups
            // being memory-latency bound). The contexts changed since the last durable
            // checkpoint are the hot ones without a record (`get_mut` clears it,
            // `checkpointed` sets it only for those unchanged since the capture; tested in
            // `checkpoint.rs` against the by-id path).
            for slot in self.contexts.values() {
                if let Slot::Hot { ctx, record: None, .. } = slot {
                    out.changed.push(ctx.clone());
                }
            }
        } else {
            for id in &changed.ids {
                if let Some(Slot::Hot { ctx, .. }) = self.contexts.get(id) {
                    out.changed.push(ctx.clone());
                }
            }
        }
        out.retired_ids = changed.ids;
        out
    }

    /// What the changes since the last checkpoint may have added to memory.
    pub fn changed_bytes(&self) -> u64 {
        self.changed.bytes
    }

    /// How many contexts changed since the last checkpoint; `None`: all of them.
    pub fn changed_count(&self) -> Option<usize> {
        (!self.changed.all).then_some(self.changed.ids.len())
    }

    /// A checkpoint that took the changed contexts failed: the next one writes them all.
    pub fn checkpoint_failed(&mut self) {
        self.changed.all = true;
    }

    /// A checkpoint is durable: the contexts it wrote that did not change since have a
    /// record now (and may be evicted).
    /// A cold context takes its new record (a rebase copied its old one): after a
    /// rebase no context names a record of an earlier checkpoint.
    pub fn checkpointed(&mut self, written: &[(String, BodyRef)]) {
        for (id, r) in written {
            let changed_since = self.changed.all || self.changed.ids.contains(id);
            match self.contexts.get_mut(id) {
                // Cold since it was taken: unchanged, and the copy is byte for byte its record.
                Some(Slot::Cold(old)) => *old = *r,
                Some(Slot::Hot { record, .. }) if !changed_since => *record = Some(*r),
                _ => {}
            }
        }
    }

    /// Evicts the least recently used hot contexts that have a durable record, until at
    /// most `max_hot` are hot and those with a durable record weigh at most `max_bytes`
    /// (measured by their records: metadata, the window's replacement messages, index
    /// tails — what a count does not see), or none is left to evict.
    /// Returns how many. Cost: one pass over the contexts and a sort of the hot ones.
    pub fn evict(&mut self, max_hot: usize, max_bytes: u64) -> usize {
        let mut clean: Vec<(u64, &String, u64)> = self
            .contexts
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Hot { record: Some(r), used, .. } if !self.changed.ids.contains(id) => {
                    Some((used.get(), id, u64::from(r.len)))
                }
                _ => None,
            })
            .collect();
        let mut bytes: u64 = clean.iter().map(|c| c.2).sum();
        if self.hot <= max_hot && bytes <= max_bytes {
            return 0;
        }
        clean.sort_unstable_by_key(|c| c.0);
        let mut hot = self.hot;
        let evict: Vec<String> = clean
            .iter()
            .take_while(|c| {
                let over = hot > max_hot || bytes > max_bytes;
                if over {
                    hot -= 1;
                    bytes -= c.2;
                }
                over
            })
            .map(|c| c.1.clone())
            .collect();
        for id in &evict {
            if let Some(slot) = self.contexts.get_mut(id)
                && let Slot::Hot { record: Some(r), .. } = slot
            {
                *slot = Slot::Cold(*r);
                self.hot -= 1;
            }
        }
        evict.len()
    }

    /// Contexts in memory.
    pub fn hot_len(&self) -> usize {
        self.hot
    }

    fn mark_changed(&mut self, id: &str) {
        if !self.changed.all && !self.changed.ids.contains(id) {
            self.changed.ids.insert(id.to_owned());
        }
    }

    fn tick(&self) -> u64 {
        self.clock.set(self.clock.get() + 1);
        self.clock.get()
    }

    /// The same contexts under `limits` (a store loaded from a snapshot takes the node's).
    pub fn with_limits(mut self, limits: StoreLimits) -> Store {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// Gives every context its history from a snapshot's section (`None`: a snapshot
    /// without one; see `Context::restore_history`). For stores converted from old
    /// snapshots, whose contexts are all hot.
    pub fn restore_histories(&mut self, histories: Option<Vec<(String, super::history::CompactionHistory)>>) {
        let mut by_id: HashMap<String, super::history::CompactionHistory> = HashMap::new();
        let known = histories.is_some();
        by_id.extend(histories.unwrap_or_default());
        for (id, slot) in &mut self.contexts {
            if let Slot::Hot { ctx, .. } = slot {
                let history = by_id.remove(id);
                let history = if known { Some(history.unwrap_or_default()) } else { None };
                Arc::make_mut(ctx).restore_history(history);
            }
        }
    }

    /// A refusal that the current state already decides for `cmd`, found before it is
    /// proposed (so that it costs no log entry): a PATCH past the metadata limit, a new
    /// context past the contexts limit. Only a filter: `apply` decides, on the state
    /// the command meets in the log.
    pub fn precheck(&self, cmd: &Command, bodies: &dyn Bodies) -> Result<(), StoreError> {
        match cmd {
            Command::PatchMetadata { id, patch, .. } => match self.get(id, bodies) {
                Ok(ctx) => ctx.patched_metadata(patch, self.limits.metadata_max_bytes).map(|_| ()),
                Err(_) => Ok(()),
            },
            Command::Put { id, .. }
                if !self.contexts.contains_key(id) && self.contexts.len() >= self.limits.contexts_max_per_shard =>
            {
                Err(StoreError::TooManyContexts { max: self.limits.contexts_max_per_shard as u64 })
            }
            _ => Ok(()),
        }
    }

    /// The context `id`: borrowed when hot, read from its record when cold (a few
    /// microseconds; a record that cannot be read is `Damaged`).
    pub fn get(&self, id: &str, bodies: &dyn Bodies) -> Result<Cow<'_, Context>, StoreError> {
        match self.contexts.get(id) {
            None => Err(StoreError::NotFound),
            Some(Slot::Hot { ctx, used, .. }) => {
                used.set(self.tick());
                Ok(Cow::Borrowed(&**ctx))
            }
            Some(Slot::Cold(r)) => {
                let bytes = bodies.get(*r).map_err(damaged)?;
                Ok(Cow::Owned(super::record::decode_context(bytes).map_err(damaged)?))
            }
        }
    }

    /// Asks for the records of the cold contexts among `ids` to be read from the disk,
    /// without waiting (`Bodies::prefetch`): commands about to be applied to them then
    /// find their records in memory, and the reads overlap.
    pub fn prefetch_records<'a>(&self, ids: impl IntoIterator<Item = &'a str>, bodies: &dyn Bodies) {
        for id in ids {
            if let Some(Slot::Cold(r)) = self.contexts.get(id) {
                bodies.prefetch(*r);
            }
        }
    }

    /// Whether `id` is a context whose state is only its record in the body store (a
    /// read of it reads that record first).
    pub fn is_cold(&self, id: &str) -> bool {
        matches!(self.contexts.get(id), Some(Slot::Cold(_)))
    }

    pub fn len(&self) -> usize {
        self.contexts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.contexts.is_empty()
    }

    /// The context `id` to change: made hot (read from its record) if cold, counted as
    /// changed. The outer `Err`: its record cannot be read (the caller stops applying).
    fn get_mut(&mut self, id: &str, bodies: &dyn Bodies) -> Result<Result<&mut Context, StoreError>, BodiesError> {
        let Some(slot) = self.contexts.get(id) else { return Ok(Err(StoreError::NotFound)) };
        if let Slot::Cold(r) = slot {
            let len = u64::from(r.len);
            let ctx = super::record::decode_context(bodies.get(*r)?)?;
            self.contexts.insert(id.to_owned(), Slot::hot(Arc::new(ctx), None));
            self.hot += 1;
            self.changed.bytes = self.changed.bytes.saturating_add(len);
        }
        self.mark_changed(id);
        let now = self.tick();
        match self.contexts.get_mut(id) {
            Some(Slot::Hot { ctx, record, used }) => {
                *record = None;
                used.set(now);
                Ok(Ok(Arc::make_mut(ctx)))
            }
            _ => unreachable!("made hot above"),
        }
    }

    /// Applies `cmd`. The outer `Err` is a body-store failure: nothing changed, and the
    /// caller must stop applying (see `BodiesError`); the inner result is the command's.
    pub fn apply(&mut self, cmd: Command, bodies: &mut dyn Bodies) -> Result<Result<Outcome, StoreError>, BodiesError> {
        self.changed.bytes = self.changed.bytes.saturating_add(cmd.memory_bytes());
        match cmd {
            Command::Append { id, message, if_version, idempotency_key, now } => {
                let keys_max = self.limits.idempotency_keys_per_context;
                let ctx = match self.get_mut(&id, bodies)? {
                    Ok(ctx) => ctx,
                    Err(e) => return Ok(Err(e)),
                };
                Ok(ctx.append(message, if_version, idempotency_key, &now, keys_max, bodies)?.map(Outcome::Appended))
            }
            Command::Compact { id, replacement, if_version, now } => {
                let ctx = match self.get_mut(&id, bodies)? {
                    Ok(ctx) => ctx,
                    Err(e) => return Ok(Err(e)),
                };
                Ok(ctx.compact(replacement, if_version, &now, bodies)?.map(|version| Outcome::Compacted { version }))
            }
            other => self.apply_meta(other, bodies),
        }
    }

    /// Commands that write no message body.
    fn apply_meta(&mut self, cmd: Command, bodies: &dyn Bodies) -> Result<Result<Outcome, StoreError>, BodiesError> {
        Ok(match cmd {
            Command::Put { id, put, now } => {
                if let Ok(ctx) = self.get_mut(&id, bodies)? {
                    ctx.update(put, &now);
                    return Ok(Ok(Outcome::Summary { created: false, summary: ctx.summary_json() }));
                }
                if self.contexts.len() >= self.limits.contexts_max_per_shard {
                    return Ok(Err(StoreError::TooManyContexts { max: self.limits.contexts_max_per_shard as u64 }));
                }
                let ctx = Context::new(id.clone(), put, &now);
                let summary = ctx.summary_json();
                self.mark_changed(&id);
                let used = Cell::new(self.tick());
                self.contexts.insert(id, Slot::Hot { ctx: Arc::new(ctx), record: None, used });
                self.hot += 1;
                Ok(Outcome::Summary { created: true, summary })
            }
            Command::PatchMetadata { id, patch, now } => {
                let max = self.limits.metadata_max_bytes;
                match self.get_mut(&id, bodies)? {
                    Ok(ctx) => ctx
                        .patch_metadata(patch, &now, max)
                        .map(|()| Outcome::Summary { created: false, summary: ctx.summary_json() }),
                    Err(e) => Err(e),
                }
            }
            Command::Delete { id, now } => match self.get_mut(&id, bodies)? {
                Ok(ctx) => {
                    if ctx.status != Status::Tombstoned {
                        ctx.tombstone(&now);
                    }
                    Ok(Outcome::Deleted)
                }
                Err(e) => Err(e),
            },
            Command::Append { .. } | Command::Compact { .. } => unreachable!("apply handles body-writing commands"),
        })
    }
}
