//! Which data dir each peer runs on: a node that lost its data must not come back under
//! its old id.
//!
//! Raft's safety rests on every voter remembering its vote and its log. A node whose data
//! dir was wiped (a replaced disk, a mistaken `rm -r`) and that is started again under its
//! old `--node-id` remembers neither: it votes for any candidate, including one that
//! misses acknowledged entries, so with one more node down a stale node and the wiped one
//! elect a leader that has lost them. (Seen without this check: the leaders kept the wiped
//! node's old match index and it never caught up; with a stale peer it would have voted.)
//!
//! So each data dir carries a random *incarnation*, drawn when it is created
//! (`crate::datadir`), and every peer handshake exchanges `(node id, incarnation)` under
//! the cluster secret's MACs (`super::peer_auth`). A node keeps the first incarnation it
//! saw of each peer in `known-peers.json`, written durably before the link is used, and
//! refuses a link to the same node id with another: the wiped node is cut off (its shards
//! can neither vote nor be replicated to) and both sides log why, until an operator
//! removes it from the cluster and adds it under a new id, or restores its data dir.
//!
//! Not covered: a data dir restored from an old copy (same incarnation, older log), and a
//! peer wiped before this node ever linked with it.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

const FILE_NAME: &str = "known-peers.json";

/// A node as its data dir identifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub node_id: u64,
    /// Drawn once when the data dir was created; never 0.
    pub incarnation: u64,
}

impl Identity {
    pub const BYTES: usize = 16;

    pub fn to_bytes(self) -> [u8; Self::BYTES] {
        let mut b = [0u8; Self::BYTES];
        b[..8].copy_from_slice(&self.node_id.to_le_bytes());
        b[8..].copy_from_slice(&self.incarnation.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8; Self::BYTES]) -> Identity {
        let (id, inc) = b.split_at(8);
        Identity {
            node_id: u64::from_le_bytes(id.try_into().expect("8 bytes")),
            incarnation: u64::from_le_bytes(inc.try_into().expect("8 bytes")),
        }
    }
}

/// Why a link to a peer is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "node {node} now runs on another data dir (incarnation {presented:016x}; this node knew {known:016x}): a node \
         that lost its data must not rejoin under its old id, or acknowledged writes can be lost. Remove node {node} \
         from the cluster and add it under a new --node-id, or bring back its data dir"
    )]
    Replaced { node: u64, known: u64, presented: u64 },
    #[error("dialled node {expected} but node {got} answered: check --peers")]
    WrongNode { expected: u64, got: u64 },
    #[error("a peer without a node identity")]
    Anonymous,
    #[error(
        "the peer refused this node's data dir (its log says why): the cluster knew node {me} with another data dir. A \
         node that lost its data must join under a new --node-id"
    )]
    RefusedByPeer { me: u64 },
    #[error("{FILE_NAME}: {0}")]
    Io(String),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct File {
    /// node id → the first incarnation seen.
    peers: BTreeMap<u64, u64>,
}

/// This node's identity and the incarnations it has seen of its peers. Shared by the
/// node's cores; touched only at peer handshakes.
#[derive(Debug)]
pub struct PeerBook {
    me: Identity,
    path: Option<PathBuf>,
    known: Mutex<File>,
}

impl PeerBook {
    /// Reads `known-peers.json` in `data_dir` (none yet: no peer known).
    pub fn open(data_dir: &Path, me: Identity) -> Result<PeerBook, Refusal> {
        let path = data_dir.join(FILE_NAME);
        let known = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Refusal::Io(e.to_string()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => File::default(),
            Err(e) => return Err(Refusal::Io(e.to_string())),
        };
        Ok(PeerBook { me, path: Some(path), known: Mutex::new(known) })
    }

    /// A book that remembers nothing on disk (tests that link in-process).
    pub fn in_memory(me: Identity) -> PeerBook {
        PeerBook { me, path: None, known: Mutex::new(File::default()) }
    }

    pub fn me(&self) -> Identity {
        self.me
    }

    /// Whether a link with `peer` may be used: the first incarnation seen of a node id is
    /// recorded (durably, before the link carries anything), another one is refused.
    /// The file is written once per peer over the data dir's life, so the sync on the
    /// calling executor is rare.
    pub fn admit(&self, peer: Identity) -> Result<(), Refusal> {
        if peer.node_id == 0 || peer.incarnation == 0 {
            return Err(Refusal::Anonymous);
        }
        if peer.node_id == self.me.node_id {
            // A link to ourselves (a shard's group lists every member): the same data
            // dir, or a second process started with our id on another one.
            return match peer.incarnation == self.me.incarnation {
                true => Ok(()),
                false => Err(Refusal::Replaced {
                    node: peer.node_id,
                    known: self.me.incarnation,
                    presented: peer.incarnation,
                }),
            };
        }
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        match known.peers.get(&peer.node_id) {
            Some(&k) if k == peer.incarnation => Ok(()),
            Some(&k) => Err(Refusal::Replaced { node: peer.node_id, known: k, presented: peer.incarnation }),
            None => {
                known.peers.insert(peer.node_id, peer.incarnation);
                if let Some(path) = &self.path {
                    let bytes = serde_json::to_vec(&*known).map_err(|e| Refusal::Io(e.to_string()))?;
                    if let Err(e) = crate::files::replace_durably(path, &bytes) {
                        known.peers.remove(&peer.node_id);
                        return Err(Refusal::Io(e.to_string()));
                    }
                }
                Ok(())
            }
        }
    }
}

/// The book as the peer limits carry it to every link (compared by identity).
#[derive(Debug, Clone)]
pub struct SharedPeerBook(pub Arc<PeerBook>);

impl PartialEq for SharedPeerBook {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedPeerBook {}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Identity = Identity { node_id: 1, incarnation: 11 };

    #[test]
    fn the_first_incarnation_seen_is_kept_across_restarts_and_another_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let book = PeerBook::open(dir.path(), ME).unwrap();
        assert_eq!(book.admit(Identity { node_id: 2, incarnation: 22 }), Ok(()));
        assert_eq!(book.admit(Identity { node_id: 2, incarnation: 22 }), Ok(()));
        assert_eq!(book.admit(ME), Ok(()));
        drop(book);
        let book = PeerBook::open(dir.path(), ME).unwrap();
        assert_eq!(
            book.admit(Identity { node_id: 2, incarnation: 23 }),
            Err(Refusal::Replaced { node: 2, known: 22, presented: 23 })
        );
        assert_eq!(book.admit(Identity { node_id: 3, incarnation: 33 }), Ok(()));
        assert!(matches!(book.admit(Identity { node_id: 1, incarnation: 12 }), Err(Refusal::Replaced { .. })));
        assert_eq!(book.admit(Identity { node_id: 0, incarnation: 5 }), Err(Refusal::Anonymous));
        assert_eq!(Identity::from_bytes(&ME.to_bytes()), ME);
    }
}
