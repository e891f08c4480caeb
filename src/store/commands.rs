//! `Store`: every context of one shard, and the commands that change them. This is the
//! Raft state machine's logic: `apply` is deterministic (the time comes in the command,
//! taken once by the leader) and never panics; refusals are results.
use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::bodies::{Bodies, BodiesError};
use super::context::{Appended, Context};
use super::error::StoreError;
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

impl Command {
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

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Store {
    /// Shared, copy-on-write: a snapshot takes a clone of the map (one reference count
    /// per context) and encodes it on another thread while applies go on; a context
    /// written meanwhile is copied once (`Arc::make_mut`).
    contexts: HashMap<String, Arc<Context>>,
    /// Written into snapshots in the form the snapshot format fixed (`limits_in_snapshot`)
    /// but never taken from one: a node applies its own configured limits
    /// (`with_limits` after a snapshot is loaded or installed).
    #[serde(with = "limits_in_snapshot")]
    limits: StoreLimits,
    /// Contexts changed since the last checkpoint took them (`take_changed`); `all`:
    /// every context counts as changed (after a failed checkpoint).
    #[serde(skip)]
    changed: Changed,
}

#[derive(Debug, Clone, Default)]
struct Changed {
    ids: std::collections::HashSet<String>,
    all: bool,
}

/// The limits as snapshots hold them: the eight fields `StoreLimits` had when the
/// snapshot format was fixed (data format 2), in that order. Limits added since are not
/// written (postcard has no field names: a new field would shift every byte after it
/// and make older snapshots unreadable; tests/datadir_compat.rs caught exactly that).
mod limits_in_snapshot {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::config::StoreLimits;

    #[derive(Serialize, Deserialize)]
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

    pub fn serialize<S: Serializer>(l: &StoreLimits, s: S) -> Result<S::Ok, S::Error> {
        V2 {
            role_max_bytes: l.role_max_bytes,
            parts_max: l.parts_max,
            policy_limit_max: l.policy_limit_max,
            skip_kinds_max: l.skip_kinds_max,
            idempotency_keys_per_context: l.idempotency_keys_per_context,
            idempotency_key_max_bytes: l.idempotency_key_max_bytes,
            page_limit_max: l.page_limit_max,
            page_limit_default: l.page_limit_default,
        }
        .serialize(s)
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
        let mut contexts = HashMap::with_capacity(legacy.len());
        for (id, ctx) in legacy {
            let ctx = Arc::try_unwrap(ctx).map_err(|_| BodiesError(format!("context {id:?} is shared")))?;
            contexts.insert(id, Arc::new(ctx.into_context(bodies)?));
        }
        Ok(Store { contexts, limits: self.limits, changed: Changed { ids: Default::default(), all: true } })
    }
}

impl Store {
    pub fn new(limits: StoreLimits) -> Store {
        Store { contexts: HashMap::new(), limits, changed: Changed::default() }
    }

    /// A store of `contexts` as a checkpoint holds them (none counts as changed).
    pub fn from_contexts(limits: StoreLimits, contexts: Vec<Context>) -> Store {
        let contexts = contexts.into_iter().map(|c| (c.id.clone(), Arc::new(c))).collect();
        Store { contexts, limits, changed: Changed::default() }
    }

    /// The contexts changed since the last call (all of them with `all`, or when a
    /// checkpoint failed since), and from now on none. Shared: encoding them elsewhere
    /// costs the executor a reference count each.
    pub fn take_changed(&mut self, all: bool) -> Vec<Arc<Context>> {
        let changed = std::mem::take(&mut self.changed);
        if all || changed.all {
            return self.contexts.values().cloned().collect();
        }
        changed.ids.iter().filter_map(|id| self.contexts.get(id).cloned()).collect()
    }

    /// How many contexts changed since the last checkpoint; `None`: all of them.
    pub fn changed_count(&self) -> Option<usize> {
        (!self.changed.all).then_some(self.changed.ids.len())
    }

    /// A checkpoint that took the changed contexts failed: the next one writes them all.
    pub fn checkpoint_failed(&mut self) {
        self.changed.all = true;
    }

    fn mark_changed(&mut self, id: &str) {
        if !self.changed.all && !self.changed.ids.contains(id) {
            self.changed.ids.insert(id.to_owned());
        }
    }

    /// The same contexts under `limits` (a store loaded from a snapshot takes the node's).
    pub fn with_limits(mut self, limits: StoreLimits) -> Store {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// The compaction histories of the contexts that have one (a snapshot's section).
    pub fn histories(&self) -> Vec<(&str, &super::history::CompactionHistory)> {
        let mut all: Vec<_> = self
            .contexts
            .iter()
            .filter(|(_, c)| !c.history().is_empty())
            .map(|(id, c)| (id.as_str(), c.history()))
            .collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        all
    }

    /// Gives every context its history from a snapshot's section (`None`: a snapshot
    /// without one; see `Context::restore_history`).
    pub fn restore_histories(&mut self, histories: Option<Vec<(String, super::history::CompactionHistory)>>) {
        let mut by_id: HashMap<String, super::history::CompactionHistory> = HashMap::new();
        let known = histories.is_some();
        by_id.extend(histories.unwrap_or_default());
        for (id, ctx) in &mut self.contexts {
            let history = by_id.remove(id);
            let history = if known { Some(history.unwrap_or_default()) } else { None };
            Arc::make_mut(ctx).restore_history(history);
        }
    }

    /// A refusal that the current state already decides for `cmd`, found before it is
    /// proposed (so that it costs no log entry): a PATCH past the metadata limit, a new
    /// context past the contexts limit. Only a filter: `apply` decides, on the state
    /// the command meets in the log.
    pub fn precheck(&self, cmd: &Command) -> Result<(), StoreError> {
        match cmd {
            Command::PatchMetadata { id, patch, .. } => match self.get(id) {
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

    pub fn get(&self, id: &str) -> Result<&Context, StoreError> {
        self.contexts.get(id).map(|c| &**c).ok_or(StoreError::NotFound)
    }

    pub fn len(&self) -> usize {
        self.contexts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.contexts.is_empty()
    }

    fn get_mut(&mut self, id: &str) -> Result<&mut Context, StoreError> {
        if self.contexts.contains_key(id) {
            self.mark_changed(id);
        }
        self.contexts.get_mut(id).map(Arc::make_mut).ok_or(StoreError::NotFound)
    }

    /// Applies `cmd`. The outer `Err` is a body-store failure: nothing changed, and the
    /// caller must stop applying (see `BodiesError`); the inner result is the command's.
    pub fn apply(&mut self, cmd: Command, bodies: &mut dyn Bodies) -> Result<Result<Outcome, StoreError>, BodiesError> {
        match cmd {
            Command::Append { id, message, if_version, idempotency_key, now } => {
                let keys_max = self.limits.idempotency_keys_per_context;
                let Ok(ctx) = self.get_mut(&id) else { return Ok(Err(StoreError::NotFound)) };
                Ok(ctx.append(message, if_version, idempotency_key, &now, keys_max, bodies)?.map(Outcome::Appended))
            }
            Command::Compact { id, replacement, if_version, now } => {
                let Ok(ctx) = self.get_mut(&id) else { return Ok(Err(StoreError::NotFound)) };
                Ok(ctx.compact(replacement, if_version, &now, bodies)?.map(|version| Outcome::Compacted { version }))
            }
            other => Ok(self.apply_meta(other)),
        }
    }

    /// Commands that write no message body.
    fn apply_meta(&mut self, cmd: Command) -> Result<Outcome, StoreError> {
        match cmd {
            Command::Put { id, put, now } => {
                if let Ok(ctx) = self.get_mut(&id) {
                    ctx.update(put, &now);
                    return Ok(Outcome::Summary { created: false, summary: ctx.summary_json() });
                }
                if self.contexts.len() >= self.limits.contexts_max_per_shard {
                    return Err(StoreError::TooManyContexts { max: self.limits.contexts_max_per_shard as u64 });
                }
                let ctx = Context::new(id.clone(), put, &now);
                let summary = ctx.summary_json();
                self.mark_changed(&id);
                self.contexts.insert(id, Arc::new(ctx));
                Ok(Outcome::Summary { created: true, summary })
            }
            Command::PatchMetadata { id, patch, now } => {
                let max = self.limits.metadata_max_bytes;
                let ctx = self.get_mut(&id)?;
                ctx.patch_metadata(patch, &now, max)?;
                Ok(Outcome::Summary { created: false, summary: ctx.summary_json() })
            }
            Command::Delete { id, now } => {
                let ctx = self.get_mut(&id)?;
                if ctx.status != Status::Tombstoned {
                    ctx.tombstone(&now);
                }
                Ok(Outcome::Deleted)
            }
            Command::Append { .. } | Command::Compact { .. } => unreachable!("apply handles body-writing commands"),
        }
    }
}
