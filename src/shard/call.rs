//! The serving layer's protocol types, pure: what a request asks of one shard
//! (`ShardCall`), what the shard answers (`Reply`, storage-free: owned bytes, no
//! borrow of the state machine), the one encoding of "this replica does not lead the
//! shard" (`NotLeader`), and peer requests once received (`InboundRpc`). Calls and
//! replies are `Send`: they cross cores and, forwarded to a shard's leader, nodes.
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use serde::{Deserialize, Serialize};

use crate::config::ServeLimits;
use crate::raft::FleetRaft;
use crate::raft::state_machine::ShardSnapshot;
use crate::raft::wire::{WireError, decode, encode};
use crate::store::{Command, ReplayFrom, StoreError};

/// The work a request asks of one shard. Calls cross cores and, forwarded to the
/// shard's leader, nodes (postcard: the variant order is part of the peer protocol).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ShardCall {
    /// A change; its `now` is set by the owner just before proposing (the leader's time).
    Write(Command),
    Get {
        id: String,
        local: bool,
    },
    Tail {
        id: String,
        offset: u64,
        limit: usize,
        local: bool,
    },
    Replay {
        id: String,
        from: ReplayFrom,
        limit: usize,
        local: bool,
    },
    Window {
        id: String,
        budget: Option<u64>,
        if_version: Option<u64>,
        local: bool,
    },
    /// This node's view of one shard's Raft group (for `GET /v1/cluster`).
    ShardStatus {
        shard: u32,
    },
    /// Add node `node_id` (peer address `addr`) to the shard's group: as a learner
    /// until it has caught up, then as a voter.
    AddMember {
        shard: u32,
        node_id: u64,
        addr: String,
    },
    /// Remove node `node_id` from the shard's group.
    RemoveMember {
        shard: u32,
        node_id: u64,
    },
}

impl ShardCall {
    pub fn context_id(&self) -> &str {
        match self {
            ShardCall::Write(cmd) => cmd.context_id(),
            ShardCall::Get { id, .. }
            | ShardCall::Tail { id, .. }
            | ShardCall::Replay { id, .. }
            | ShardCall::Window { id, .. } => id,
            ShardCall::ShardStatus { .. } | ShardCall::AddMember { .. } | ShardCall::RemoveMember { .. } => "",
        }
    }

    /// Served by whichever replica is asked, without the leader.
    pub fn is_local(&self) -> bool {
        match self {
            ShardCall::Write(_) | ShardCall::AddMember { .. } | ShardCall::RemoveMember { .. } => false,
            ShardCall::ShardStatus { .. } => true,
            ShardCall::Get { local, .. }
            | ShardCall::Tail { local, .. }
            | ShardCall::Replay { local, .. }
            | ShardCall::Window { local, .. } => *local,
        }
    }

    /// Changes the shard's state when applied: retried elsewhere only when it certainly
    /// was not proposed.
    pub fn is_write(&self) -> bool {
        matches!(self, ShardCall::Write(_) | ShardCall::AddMember { .. } | ShardCall::RemoveMember { .. })
    }
}

/// A shard's answer to a call: an HTTP status, a JSON body (or none) and the
/// `Retry-After` of a 503. Storage-free, so it crosses cores and nodes; the API layer
/// turns it into the HTTP response. The field order is its peer-protocol encoding.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub status: u16,
    pub retry_after: Option<String>,
    /// The body is JSON (else there is none: a 204).
    pub json: bool,
    pub body: Vec<u8>,
    /// The bytes of a large answer held on the node's budget until it is written
    /// (`crate::budget`); not sent to other nodes.
    #[serde(skip)]
    pub hold: Option<crate::budget::Hold>,
    /// The node that served the call when it is not this one (the call was forwarded
    /// to the shard's leader): told to the client as `FleetLM-Forwarded-To`, so that a
    /// client routing by leader learns that its map is stale. Set by the forwarding node.
    #[serde(skip)]
    pub forwarded_to: Option<u64>,
}

impl Reply {
    pub fn json(status: u16, body: &serde_json::Value) -> Reply {
        Reply::raw_json(status, body.to_string().into_bytes())
    }

    /// A JSON body that is already serialized.
    pub fn raw_json(status: u16, body: Vec<u8>) -> Reply {
        Reply { status, retry_after: None, json: true, body, hold: None, forwarded_to: None }
    }

    pub fn empty(status: u16) -> Reply {
        Reply { status, retry_after: None, json: false, body: Vec::new(), hold: None, forwarded_to: None }
    }

    /// The API error shape: `{"error": code, "message": …}`.
    pub fn error(status: u16, code: &str, message: impl std::fmt::Display) -> Reply {
        Reply::json(status, &serde_json::json!({"error": code, "message": message.to_string()}))
    }

    pub fn store_error(e: &StoreError) -> Reply {
        Reply::error(e.status(), e.code(), e)
    }

    /// A 503 with `Retry-After`: the call may succeed if the client tries again.
    pub fn unavailable(limits: &ServeLimits, why: impl std::fmt::Display) -> Reply {
        let mut r = Reply::error(503, "unavailable", why);
        r.retry_after = Some(limits.retry_after_secs.to_string());
        r
    }
}

/// The node that leads a shard, as a replica knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub node_id: u64,
    /// Its peer address.
    pub addr: String,
}

/// The one encoding of "this replica does not lead the shard (any more)": nothing was
/// proposed, so trying the call elsewhere is safe. Carries the leader when the replica
/// knows one (it is not sent over the wire: a forwarded call is never forwarded again).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NotLeader {
    pub leader: Option<Leader>,
}

/// What serving a call on a replica, or on the leader it forwarded to, gave.
pub type Served = Result<Reply, NotLeader>;

/// The peer-protocol form of `Served` (postcard; variant order fixed).
#[derive(Debug, Serialize, Deserialize)]
enum CallReply {
    NotLeader,
    Done(Reply),
}

/// Encodes a forwarded call's answer for the `CallReply` frame.
pub fn encode_served(served: Served) -> Result<Vec<u8>, WireError> {
    encode(&match served {
        Ok(reply) => CallReply::Done(reply),
        Err(NotLeader { .. }) => CallReply::NotLeader,
    })
}

/// Decodes the answer of a forwarded call.
pub fn decode_served(bytes: &[u8]) -> Result<Served, WireError> {
    Ok(match decode(bytes)? {
        CallReply::Done(reply) => Ok(reply),
        CallReply::NotLeader => Err(NotLeader::default()),
    })
}

type C = FleetRaft;

/// A peer request once fully received (snapshot bytes staged on disk); `Send`, so it
/// can cross to the shard's core.
pub enum InboundRpc {
    Append(AppendEntriesRequest<C>),
    Vote(VoteRequest<C>),
    PreVote(VoteRequest<C>),
    TransferLeader(TransferLeaderRequest<C>),
    Snapshot { vote: VoteOf<C>, snapshot: SnapshotOf<C, ShardSnapshot>, staging: std::path::PathBuf },
    Call(ShardCall),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_keeps_its_peer_encoding() {
        // Bytes of `CallReply::Done(WireResponse { 503, Some("1"), true, b"{}" })` and
        // `CallReply::NotLeader` as written before these types moved (postcard).
        let done = || Reply {
            status: 503,
            retry_after: Some("1".into()),
            json: true,
            body: b"{}".to_vec(),
            hold: None,
            forwarded_to: None,
        };
        assert_eq!(encode_served(Ok(done())).unwrap(), [1, 0xf7, 3, 1, 1, b'1', 1, 2, b'{', b'}']);
        assert_eq!(encode_served(Err(NotLeader::default())).unwrap(), [0]);
        assert_eq!(decode_served(&[1, 0xf7, 3, 1, 1, b'1', 1, 2, b'{', b'}']).unwrap(), Ok(done()));
        assert_eq!(decode_served(&[0]).unwrap(), Err(NotLeader::default()));
    }
}
