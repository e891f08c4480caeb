//! The snapshot index file (`snapshot.bin` / `snapshot-g.bin`) of a shard's state
//! machine: its formats, encoding and decoding, and the one-time conversion of the
//! formats that held the whole store (`super::state_machine` writes and reads it).
use std::io;

use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, StoredMembershipOf};
use serde::{Deserialize, Serialize};

use super::bodies::FileBodies;
use super::types::FleetRaft;
use crate::config::StoreLimits;
use crate::store::checkpoint::{self, Extents};
use crate::store::{BodyRef, Store};

type C = FleetRaft;

fn bodies_err(e: crate::store::BodiesError) -> io::Error {
    io::Error::other(e)
}

/// The first bytes of a snapshot index in format 6: `SnapshotIndex` (postcard). The
/// store is not in it: every context's state is a checkpoint record in the body store,
/// named by directory chunks there (`crate::store::checkpoint`); the index lists the
/// chunks, and the body-store ranges of the checkpoints since the last base (and the
/// dead ones not released yet). Its size depends on the number of checkpoints since the
/// last rebase, not on the contexts or their messages.
///
/// Format 5 (`FLMIDX05`) is format 6 without the ranges: read as is (its checkpoint
/// ranges are unknown, so the records it replaced are never released).
/// Older formats held the store in the index, with every message of every context:
/// format 3 (`FLMIDX03`) and format 2 (no magic; its first byte is an `Option` tag, 0
/// or 1, never `F`). They are read and converted once (message indexes and checkpoint
/// records written to the body store, the body store synced, the index rewritten in
/// format 6). Format 4 (`FLMIDX04`) was written only by development builds (8038f5f to
/// 79cf28e) and is refused with a message. An older build refuses a format-6 index
/// (unknown magic) instead of misreading it.
const INDEX_MAGIC_V6: &[u8; 8] = b"FLMIDX06";
const INDEX_MAGIC_V5: &[u8; 8] = b"FLMIDX05";
const INDEX_MAGIC_V4: &[u8; 8] = b"FLMIDX04";
const INDEX_MAGIC_V3: &[u8; 8] = b"FLMIDX03";

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("snapshot: {e}"))
}

pub(super) fn encode_index(index: &SnapshotIndex) -> io::Result<Vec<u8>> {
    postcard::to_extend(index, INDEX_MAGIC_V6.to_vec()).map_err(io::Error::other)
}

type Histories = Vec<(String, crate::store::CompactionHistory)>;

/// A snapshot index as read: current, or in a format that held the store.
pub(super) enum Decoded {
    Current(SnapshotIndex),
    Legacy(LegacySnapshotIndex, Option<Histories>),
}

pub(super) fn decode_index(bytes: &[u8]) -> io::Result<Decoded> {
    if let Some(v6) = bytes.strip_prefix(INDEX_MAGIC_V6) {
        return Ok(Decoded::Current(postcard::from_bytes(v6).map_err(invalid)?));
    }
    if let Some(v5) = bytes.strip_prefix(INDEX_MAGIC_V5) {
        let i: SnapshotIndexV5 = postcard::from_bytes(v5).map_err(invalid)?;
        return Ok(Decoded::Current(SnapshotIndex {
            meta: i.meta,
            last_applied: i.last_applied,
            membership: i.membership,
            bodies_len: i.bodies_len,
            directory: i.directory,
            extents: Extents::default(),
        }));
    }
    if bytes.starts_with(INDEX_MAGIC_V4) {
        return Err(invalid(
            "index format 4 was written by a development build (8038f5f to 79cf28e) and is not read by this one \
             (format 6); start that build's data dir with the build that wrote it, or restore the shard from \
             another replica",
        ));
    }
    let Some(v3) = bytes.strip_prefix(INDEX_MAGIC_V3) else {
        let index: LegacySnapshotIndex = postcard::from_bytes(bytes).map_err(invalid)?;
        return Ok(Decoded::Legacy(index, None));
    };
    let (index, rest) = postcard::take_from_bytes::<LegacySnapshotIndex>(v3).map_err(invalid)?;
    let histories: Histories = postcard::from_bytes(rest).map_err(invalid)?;
    Ok(Decoded::Legacy(index, Some(histories)))
}

impl Decoded {
    pub(super) fn meta(&self) -> &SnapshotMetaOf<C> {
        match self {
            Decoded::Current(i) => &i.meta,
            Decoded::Legacy(i, _) => &i.meta,
        }
    }

    pub(super) fn bodies_len(&self) -> u64 {
        match self {
            Decoded::Current(i) => i.bodies_len,
            Decoded::Legacy(i, _) => i.bodies_len,
        }
    }

    /// The index in the current format and the store it names, read from `bodies`
    /// (opened at the index's length). An index in an older format is converted:
    /// message indexes and checkpoint records are written to `bodies`, and `true` says
    /// that the caller must sync the bodies and write the returned index.
    pub(super) fn open(self, bodies: &mut FileBodies, limits: StoreLimits) -> io::Result<(SnapshotIndex, Store, bool)> {
        let (meta, last_applied, membership, store) = match self {
            Decoded::Current(i) => {
                let store = checkpoint::load(&i.directory, limits, bodies).map_err(bodies_err)?;
                return Ok((i, store, false));
            }
            Decoded::Legacy(i, histories) => {
                let mut store = i.store.into_store(bodies).map_err(bodies_err)?;
                store.restore_histories(histories);
                (i.meta, i.last_applied, i.membership, store)
            }
        };
        let started = std::time::Instant::now();
        let mut store = store.with_limits(limits);
        let all = store.take_changed(true);
        let encoded = checkpoint::encode_all(&all.changed).map_err(bodies_err)?;
        let appended = checkpoint::append(encoded, all.unchanged, bodies).map_err(bodies_err)?;
        tracing::info!(
            contexts = all.changed.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "snapshot index converted to format 6 (contexts checkpointed in the body store)"
        );
        drop(all.changed);
        let mut extents = Extents::default();
        extents.written(&appended.ranges, true);
        let index = SnapshotIndex {
            meta,
            last_applied,
            membership,
            bodies_len: bodies.len(),
            directory: appended.chunks,
            extents,
        };
        // Once the caller has made them durable, the contexts may leave memory like any.
        store.checkpointed(&appended.written);
        Ok((index, store, true))
    }
}

/// The index in formats 2 and 3 (every message in the store's contexts).
#[derive(Deserialize)]
pub(super) struct LegacySnapshotIndex {
    meta: SnapshotMetaOf<C>,
    store: crate::store::LegacyStore,
    last_applied: Option<LogIdOf<C>>,
    membership: StoredMembershipOf<C>,
    bodies_len: u64,
}

/// `snapshot.bin` in format 6: Raft's part, the body store's length, the checkpoint
/// directory's chunks in the body store (base first, then deltas), and the body-store
/// ranges the checkpoints wrote (`Extents`).
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotIndex {
    pub(super) meta: SnapshotMetaOf<C>,
    pub(super) last_applied: Option<LogIdOf<C>>,
    pub(super) membership: StoredMembershipOf<C>,
    pub(super) bodies_len: u64,
    pub(super) directory: Vec<BodyRef>,
    pub(super) extents: Extents,
}

/// Format 5: format 6 without `extents`.
#[derive(Deserialize)]
struct SnapshotIndexV5 {
    meta: SnapshotMetaOf<C>,
    last_applied: Option<LogIdOf<C>>,
    membership: StoredMembershipOf<C>,
    bodies_len: u64,
    directory: Vec<BodyRef>,
}
