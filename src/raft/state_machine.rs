//! `ShardStateMachine`: the context store as openraft's state machine.
//!
//! Apply runs `Store::apply` (deterministic, never panics) and hands each outcome to the
//! waiting `client_write`. The store is shared (`Rc<RefCell>`) with the API layer of the
//! same executor, which reads it directly after a linearizable-read barrier.
//!
//! Snapshots serialize the whole store (postcard: compact, and no escaping of the stored
//! message JSON) to `snapshot.bin` in the shard directory (written to a temp file,
//! fsync'd, renamed). On start the state machine loads it; the
//! log after it is re-applied by openraft. Known gap: a snapshot is one in-memory buffer
//! (the design streams it); fine while the store itself is in memory.
use std::cell::RefCell;
use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use futures_util::StreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use super::types::FleetRaft;
use crate::store::Store;

type C = FleetRaft;

const SNAPSHOT_FILE: &str = "snapshot.bin";

fn decode_snapshot(bytes: &[u8]) -> io::Result<SnapshotFile> {
    postcard::from_bytes(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("snapshot: {e}")))
}

/// What the state machine holds.
#[derive(Default, Serialize, Deserialize)]
pub struct Applied {
    pub store: Store,
    pub last_applied: Option<LogIdOf<C>>,
    pub membership: StoredMembershipOf<C>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMetaOf<C>,
    applied: Applied,
}

#[derive(Clone)]
pub struct ShardStateMachine {
    applied: Rc<RefCell<Applied>>,
    dir: PathBuf,
}

impl ShardStateMachine {
    /// Opens the state machine of the shard in `dir`, from its snapshot if it has one.
    pub fn open(dir: &Path, store: Store) -> io::Result<Self> {
        let path = dir.join(SNAPSHOT_FILE);
        let applied = match std::fs::read(&path) {
            Ok(bytes) => {
                decode_snapshot(&bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{}: {e}", path.display())))?
                    .applied
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Applied { store, ..Applied::default() },
            Err(e) => return Err(e),
        };
        Ok(ShardStateMachine { applied: Rc::new(RefCell::new(applied)), dir: dir.to_owned() })
    }

    /// The applied state, for reads on this executor. Do not hold across an await.
    pub fn applied(&self) -> &Rc<RefCell<Applied>> {
        &self.applied
    }

    /// Writes the snapshot file durably on glommio's blocking pool: a snapshot of a
    /// large shard is tens of MB, and writing and fsyncing it on the executor stalled
    /// every request of the core (seen: 400–800 ms latency spikes while loading).
    async fn write_snapshot(&self, bytes: Vec<u8>) -> io::Result<()> {
        let dir = self.dir.clone();
        glommio::executor()
            .spawn_blocking(move || {
                let path = dir.join(SNAPSHOT_FILE);
                let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                std::fs::File::open(&dir)?.sync_all()
            })
            .await
    }
}

impl RaftSnapshotBuilder<C> for ShardStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Self::SnapshotData>, io::Error> {
        let bytes;
        let meta;
        {
            let applied = self.applied.borrow();
            meta =
                SnapshotMetaOf::<C> { last_log_id: applied.last_applied, last_membership: applied.membership.clone() };
            #[derive(Serialize)]
            struct SnapshotRef<'a> {
                meta: &'a SnapshotMetaOf<C>,
                applied: &'a Applied,
            }
            bytes = postcard::to_stdvec(&SnapshotRef { meta: &meta, applied: &applied }).map_err(io::Error::other)?;
        }
        self.write_snapshot(bytes.clone()).await?;
        Ok(SnapshotOf::<C, _> { meta, snapshot: Cursor::new(bytes) })
    }
}

impl RaftStateMachine<C> for ShardStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        let a = self.applied.borrow();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let outcome = {
                let mut a = self.applied.borrow_mut();
                a.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => None,
                    EntryPayload::Normal(cmd) => Some(a.store.apply(cmd)),
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
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<C>,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        let bytes = snapshot.into_inner();
        let file = decode_snapshot(&bytes)?;
        if file.meta.last_log_id != meta.last_log_id {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot data does not match its meta"));
        }
        self.write_snapshot(bytes).await?;
        *self.applied.borrow_mut() = file.applied;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, Self::SnapshotData>>, io::Error> {
        match std::fs::read(self.dir.join(SNAPSHOT_FILE)) {
            Ok(bytes) => {
                let file = decode_snapshot(&bytes)?;
                Ok(Some(SnapshotOf::<C, _> { meta: file.meta, snapshot: Cursor::new(bytes) }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}
