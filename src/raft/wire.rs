//! The node-to-node protocol: length-prefixed postcard frames over TCP.
//!
//! ```text
//! frame    = [len: u32 LE][postcard bytes: len]
//! exchange = request frame, (snapshot only) raw index bytes + raw body bytes, response frame
//! ```
//! A Raft connection carries one exchange at a time (the client owns it with `&mut`);
//! connections are kept and reused. A `Snapshot` request announces its two byte counts
//! and the raw bytes follow the frame, so that neither side holds the history in one
//! buffer. `Call` carries a forwarded client request, encoded by the serving layer
//! (`crate::shard::forward`); Raft does not look inside it. Calls are multiplexed: many
//! are in flight on one connection, each answered by `CallReply` with its `id`, in any
//! order, so that frames queued together go out in one write.
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotMetaOf, VoteOf};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::types::FleetRaft;

type C = FleetRaft;

/// What one node asks another, about one shard.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    Append {
        shard: u32,
        rpc: AppendEntriesRequest<C>,
    },
    Vote {
        shard: u32,
        rpc: VoteRequest<C>,
    },
    PreVote {
        shard: u32,
        rpc: VoteRequest<C>,
    },
    TransferLeader {
        shard: u32,
        rpc: TransferLeaderRequest<C>,
    },
    /// Followed by `index_len` bytes of snapshot index and `bodies_len` bytes of bodies.
    Snapshot {
        shard: u32,
        vote: VoteOf<C>,
        meta: SnapshotMetaOf<C>,
        index_len: u64,
        bodies_len: u64,
        /// The sender's body segment size: body offsets in the index depend on it.
        segment_size_bytes: u64,
    },
    /// A client request forwarded to the node that leads the shard.
    Call {
        id: u64,
        shard: u32,
        call: Vec<u8>,
    },
}

impl PeerRequest {
    pub fn shard(&self) -> u32 {
        match self {
            PeerRequest::Append { shard, .. }
            | PeerRequest::Vote { shard, .. }
            | PeerRequest::PreVote { shard, .. }
            | PeerRequest::TransferLeader { shard, .. }
            | PeerRequest::Snapshot { shard, .. }
            | PeerRequest::Call { shard, .. } => *shard,
        }
    }
}

/// The answer. `Err(String)`: the receiving node could not serve it (its Raft stopped,
/// the shard is not open there yet, the snapshot could not be stored).
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    Append(Result<AppendEntriesResponse<C>, String>),
    Vote(Result<VoteResponse<C>, String>),
    TransferLeader(Result<TransferLeaderResponse<C>, String>),
    Snapshot(Result<SnapshotResponse<C>, String>),
    /// The answer to `Call` number `id`.
    CallReply {
        id: u64,
        reply: Vec<u8>,
    },
    Refused(String),
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// Nothing was sent: the request certainly did not reach the peer.
    #[error("peer connect: {0}")]
    Connect(std::io::Error),
    #[error("peer i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer frame of {0} bytes is over the {1} byte limit")]
    TooLarge(u64, u64),
    #[error("peer frame does not decode: {0}")]
    Decode(String),
}

/// Writes one frame (not flushed).
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    value: &T,
    frame_max_bytes: u64,
) -> Result<(), WireError> {
    let mut buf = Vec::new();
    encode_frame(&mut buf, value, frame_max_bytes)?;
    w.write_all(&buf).await?;
    Ok(())
}

/// Appends one frame to `out` (for writing several frames at once).
pub fn encode_frame<T: Serialize>(out: &mut Vec<u8>, value: &T, frame_max_bytes: u64) -> Result<(), WireError> {
    let at = out.len();
    out.extend_from_slice(&[0u8; 4]);
    postcard::to_io(value, &mut *out).map_err(|e| WireError::Decode(e.to_string()))?;
    let len = (out.len() - at - 4) as u64;
    if len > frame_max_bytes {
        out.truncate(at);
        return Err(WireError::TooLarge(len, frame_max_bytes));
    }
    out[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(())
}

/// Reads one frame.
pub async fn read_frame<R: AsyncRead + Unpin, T: DeserializeOwned>(
    r: &mut R,
    frame_max_bytes: u64,
) -> Result<T, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_le_bytes(len) as u64;
    if len > frame_max_bytes {
        return Err(WireError::TooLarge(len, frame_max_bytes));
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await?;
    postcard::from_bytes(&buf).map_err(|e| WireError::Decode(e.to_string()))
}

/// Encodes a value for a `Call` payload.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    postcard::to_stdvec(value).map_err(|e| WireError::Decode(e.to_string()))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, WireError> {
    postcard::from_bytes(bytes).map_err(|e| WireError::Decode(e.to_string()))
}
