//! openraft's storage test suite against `WalLogStore` (the log store on our WAL).
//!
//! The suite also exercises a state machine; the one here is a minimal test harness
//! (last applied id, membership, a snapshot of both), because the subject is the log
//! store. FleetLM's real state machine is the context store.
use std::cell::RefCell;
use std::io::{self, Cursor};
use std::rc::Rc;

use fleetlm::config::WalConfig;
use fleetlm::raft::{GlommioRuntime, WalLogStore};
use fleetlm::wal::{GroupCommitWal, Wal};
use futures_util::StreamExt;
use openraft::entry::RaftEntry;
use openraft::error::ErrorSource;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{AsyncRuntime, OptionalSend, RaftSnapshotBuilder, StorageError};

openraft::declare_raft_types!(
    pub TestConfig:
        D = String,
        R = String,
        AsyncRuntime = GlommioRuntime,
);
type C = TestConfig;

#[derive(Default, Clone, serde::Serialize, serde::Deserialize)]
struct SmState {
    last_applied: Option<LogIdOf<C>>,
    membership: StoredMembershipOf<C>,
}

/// The last snapshot built or installed: its meta and bytes.
type StoredSnapshot = Option<(SnapshotMetaOf<C>, Vec<u8>)>;

#[derive(Default, Clone)]
struct TestSm {
    state: Rc<RefCell<SmState>>,
    snapshot: Rc<RefCell<StoredSnapshot>>,
}

impl RaftSnapshotBuilder<C> for TestSm {
    type SnapshotData = Cursor<Vec<u8>>;
    async fn build_snapshot(&mut self) -> Result<SnapshotOf<C, Self::SnapshotData>, io::Error> {
        let state = self.state.borrow().clone();
        let bytes = serde_json::to_vec(&state).map_err(io::Error::other)?;
        let meta = SnapshotMetaOf::<C> { last_log_id: state.last_applied, last_membership: state.membership };
        *self.snapshot.borrow_mut() = Some((meta.clone(), bytes.clone()));
        Ok(SnapshotOf::<C, _> { meta, snapshot: Cursor::new(bytes) })
    }
}

impl RaftStateMachine<C> for TestSm {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogIdOf<C>>, StoredMembershipOf<C>), io::Error> {
        let s = self.state.borrow();
        Ok((s.last_applied, s.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<C>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let log_id = entry.log_id();
            {
                let mut s = self.state.borrow_mut();
                s.last_applied = Some(log_id);
                if let Some(m) = entry.get_membership() {
                    s.membership = StoredMembershipOf::<C>::new(Some(log_id), m);
                }
            }
            if let Some(r) = responder {
                r.send(String::new());
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
        let state: SmState = serde_json::from_slice(snapshot.get_ref()).map_err(io::Error::other)?;
        *self.state.borrow_mut() = state;
        *self.snapshot.borrow_mut() = Some((meta.clone(), snapshot.into_inner()));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<SnapshotOf<C, Self::SnapshotData>>, io::Error> {
        Ok(self
            .snapshot
            .borrow()
            .clone()
            .map(|(meta, bytes)| SnapshotOf::<C, _> { meta, snapshot: Cursor::new(bytes) }))
    }
}

struct Builder;

impl StoreBuilder<C, WalLogStore<C>, TestSm, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, WalLogStore<C>, TestSm), StorageError<C>> {
        let err = |e: &dyn std::fmt::Display| StorageError::read(openraft::impls::BoxedErrorSource::from_string(e));
        let dir = tempfile::tempdir().map_err(|e| err(&e))?;
        let config =
            WalConfig { segment_size_bytes: 1 << 20, record_payload_max_bytes: 64 << 10, ..WalConfig::default() };
        let (mut wal, _) = Wal::open(&dir.path().join("wal"), config).map_err(|e| err(&e))?;
        // The group under test shares the log with others, which hold records before,
        // at and after the indexes the suite uses (one log per core, many groups).
        for other in [0u32, 2] {
            let payloads: Vec<Vec<u8>> = (0..50).map(|i| format!("group {other} entry {i}").into_bytes()).collect();
            wal.append(other, &payloads).map_err(|e| err(&e))?;
        }
        wal.truncate_from(2, 20).map_err(|e| err(&e))?;
        wal.purge_before(0, 10).map_err(|e| err(&e))?;
        let store = WalLogStore::open(dir.path(), GroupCommitWal::new(wal), 1).map_err(|e| err(&e))?;
        Ok((dir, store, TestSm::default()))
    }
}

#[test]
fn wal_log_store_passes_openraft_storage_suite() {
    let mut rt = <GlommioRuntime as AsyncRuntime>::new(1);
    rt.block_on(async { Suite::test_all(Builder).await }).expect("storage suite");
}

/// `recovery_bound` is what a restarted replica must apply before it serves local reads
/// (`Shard::caught_up`): the end of the log it opened with, lowered by truncations only
/// (they remove entries that were never committed), not raised by appends since.
#[test]
fn recovery_bound_is_the_log_end_at_open_lowered_by_truncations_only() {
    use openraft::storage::RaftLogStorage;
    use openraft::testing::{blank_ent, log_id};
    let mut rt = <GlommioRuntime as AsyncRuntime>::new(1);
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let config =
            WalConfig { segment_size_bytes: 1 << 20, record_payload_max_bytes: 64 << 10, ..WalConfig::default() };
        let open = || {
            let (wal, _) = Wal::open(&dir.path().join("wal"), config.clone()).unwrap();
            WalLogStore::<C>::open(dir.path(), GroupCommitWal::new(wal), 1).unwrap()
        };
        assert_eq!(open().recovery_bound(), 0, "an empty log");
        {
            let (mut wal, _) = Wal::open(&dir.path().join("wal"), config.clone()).unwrap();
            let entries: Vec<Vec<u8>> =
                (0..30).map(|i| postcard::to_stdvec(&blank_ent::<C>(1, 0, i)).unwrap()).collect();
            wal.append(1, &entries).unwrap();
            // Another group's records do not count.
            wal.append(0, &vec![b"x".to_vec(); 50]).unwrap();
            wal.sync().unwrap();
        }
        let mut store = open();
        assert_eq!(store.recovery_bound(), 30);
        assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(log_id::<C>(1, 0, 29)));
        store.truncate_after(Some(log_id::<C>(1, 0, 19))).await.unwrap();
        assert_eq!(store.recovery_bound(), 20, "entries 20.. were never committed, so never applied");
        store.truncate_after(Some(log_id::<C>(1, 0, 24))).await.unwrap();
        assert_eq!(store.recovery_bound(), 20, "a later cut does not raise it");
    });
}
