//! The receiving side of the node-to-node transport: core `c` accepts peer connections
//! on `peer port + c`, reads one request at a time (`crate::raft::wire`), hands it to
//! the shard's core and writes the answer. Snapshot bytes are written to a staging
//! directory as they arrive, then installed by moving the files (bounded memory).
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::cell::{Cell, RefCell};

use futures_lite::io::{AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf};
use glommio::net::{TcpListener, TcpStream};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};

use super::core::{CoreCtx, NotLeader};
use crate::api::calls::ShardCall;
use crate::config::PEER_READ_BUFFER_BYTES;
use crate::http::Response;
use crate::raft::bodies::BodiesReceiver;
use crate::raft::state_machine::ShardSnapshot;
use crate::raft::wire::{PeerRequest, PeerResponse, WireError, decode, encode, encode_frame, read_frame};
use crate::raft::{FleetRaft, Shard};

type C = FleetRaft;

/// A forwarded call's answer.
#[derive(Debug, Serialize, Deserialize)]
pub enum CallReply {
    /// The node does not lead the shard; nothing was proposed.
    NotLeader,
    Done(WireResponse),
}

/// A `Response` on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireResponse {
    pub status: u16,
    pub retry_after: Option<String>,
    pub json: bool,
    pub body: Vec<u8>,
}

impl WireResponse {
    pub fn from_response(r: Response) -> WireResponse {
        let retry_after = r.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("retry-after")).map(|(_, v)| v.clone());
        WireResponse { status: r.status, retry_after, json: !r.content_type.is_empty(), body: r.body }
    }

    pub fn into_response(self) -> Response {
        let mut r = if self.json { Response::raw_json(self.status, self.body) } else { Response::empty(self.status) };
        if let Some(v) = self.retry_after {
            r = r.with_header("Retry-After", v);
        }
        r
    }
}

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

/// The answer of a node short of disk to an RPC that would write to it (the caller
/// sees the node as unreachable and retries with backoff).
fn disk_refused(ctx: &CoreCtx) -> Option<PeerResponse> {
    ctx.disk_refusal().map(|why| PeerResponse::Refused(format!("node {}: {why}", ctx.node_id)))
}

/// Serves one peer RPC on the core that owns the shard.
pub async fn handle_rpc(ctx: &CoreCtx, shard_id: u32, shard: &Shard, rpc: InboundRpc) -> PeerResponse {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    match rpc {
        InboundRpc::Append(req) => {
            // Entries per replication request (0 = heartbeat): how well followers batch.
            crate::metrics::record("raft.append_entries_batch", req.entries.len() as u64);
            // A replica short of disk takes no new entries: each would have to be
            // applied, and applying can need a new body segment (`crate::shard::disk`).
            // The leader sees it as unreachable and retries with backoff; this node
            // catches up once space is freed. Heartbeats (no entries) still pass, so it
            // stays a follower and keeps the cluster's view of it.
            if !req.entries.is_empty()
                && let Some(refused) = disk_refused(ctx)
            {
                return refused;
            }
            PeerResponse::Append(shard.raft.append_entries(req).await.map_err(|e| s(&e)))
        }
        InboundRpc::Vote(req) => PeerResponse::Vote(shard.raft.vote(req).await.map_err(|e| s(&e))),
        InboundRpc::PreVote(req) => PeerResponse::Vote(shard.raft.pre_vote(req).await.map_err(|e| s(&e))),
        // A node short of disk would refuse every write as leader: it does not take
        // leadership that is handed to it (it still votes).
        InboundRpc::TransferLeader(_) if let Some(refused) = disk_refused(ctx) => refused,
        InboundRpc::TransferLeader(req) => {
            PeerResponse::TransferLeader(shard.raft.handle_transfer_leader(req).await.map_err(|e| s(&e)))
        }
        InboundRpc::Snapshot { vote, snapshot, staging } => {
            // Installing writes a new body generation beside the current one.
            if let Some(refused) = disk_refused(ctx) {
                let _ = std::fs::remove_dir_all(&staging);
                return refused;
            }
            let r = shard.raft.install_full_snapshot(vote, snapshot).await.map_err(|e| s(&e));
            let _ = std::fs::remove_dir_all(&staging);
            PeerResponse::Snapshot(r)
        }
        InboundRpc::Call(call) => {
            let reply = match Box::pin(ctx.dispatch_call(shard_id, call, true, std::time::Instant::now())).await {
                Ok(resp) => CallReply::Done(WireResponse::from_response(resp)),
                Err(NotLeader) => CallReply::NotLeader,
            };
            // The connection handler puts the call's id in.
            call_reply(0, reply)
        }
    }
}

/// Accepts peer connections on this core's peer port, forever.
pub async fn serve_peers(ctx: Rc<CoreCtx>, listener: TcpListener) {
    let open = Rc::new(std::cell::Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("core {}: peer accept: {e}", ctx.core);
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if open.get() >= ctx.peer_limits.connections_max_per_core {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        open.set(open.get() + 1);
        let (ctx, open) = (ctx.clone(), open.clone());
        glommio::spawn_local(async move {
            if let Err(e) = serve_connection(&ctx, stream).await
                && !matches!(&e, WireError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof)
            {
                eprintln!("core {}: peer connection: {e}", ctx.core);
            }
            open.set(open.get() - 1);
        })
        .detach();
    }
}

static STAGING_SEQ: AtomicU64 = AtomicU64::new(0);

/// Reads one snapshot's bytes off the stream: the index into memory, the bodies into
/// segment files of a fresh staging directory of the shard.
async fn receive_snapshot(
    ctx: &CoreCtx,
    stream: &mut BufReader<ReadHalf<TcpStream>>,
    shard: u32,
    index_len: u64,
    bodies_len: u64,
) -> Result<(Vec<u8>, crate::raft::bodies::BodiesSource, std::path::PathBuf), WireError> {
    let limits = &ctx.peer_limits;
    if index_len > limits.snapshot_index_max_bytes {
        return Err(WireError::TooLarge(index_len, limits.snapshot_index_max_bytes));
    }
    let mut index = vec![0u8; index_len as usize];
    stream.read_exact(&mut index).await?;
    let n = STAGING_SEQ.fetch_add(1, Ordering::Relaxed);
    let staging = ctx.data_dir.join("shards").join(shard.to_string()).join(format!("incoming-{}-{n}", ctx.core));
    // File work (fallocate of each segment, writes, fdatasync) runs on the blocking
    // pool: on the executor it would stall every other shard of this core for as long
    // as a 64 MiB segment takes to allocate or sync.
    let io = |e: crate::store::BodiesError| WireError::Io(std::io::Error::other(e));
    let blocking = glommio::executor();
    let (dir, size) = (staging.clone(), ctx.body_segment_size_bytes);
    let mut receiver = blocking.spawn_blocking(move || BodiesReceiver::create(&dir, size)).await.map_err(io)?;
    let mut buf = vec![0u8; limits.snapshot_chunk_bytes.max(1)];
    let mut left = bodies_len;
    while left > 0 {
        let take = (left as usize).min(buf.len());
        stream.read_exact(&mut buf[..take]).await?;
        let (r, b, written) = blocking
            .spawn_blocking(move || {
                let written = receiver.write(&buf[..take]);
                (receiver, buf, written)
            })
            .await;
        (receiver, buf) = (r, b);
        written.map_err(io)?;
        left -= take as u64;
    }
    let source = blocking.spawn_blocking(move || receiver.finish()).await.map_err(io)?;
    Ok((index, source, staging))
}

async fn serve_connection(ctx: &Rc<CoreCtx>, stream: TcpStream) -> Result<(), WireError> {
    let frame_max = ctx.peer_limits.frame_max_bytes;
    let (reader, mut writer) = futures_lite::io::split(stream);
    let mut reader = BufReader::with_capacity(PEER_READ_BUFFER_BYTES, reader);
    // Answers are queued and written by one task, several per write when they pile up;
    // requests are served concurrently (forwarded calls are multiplexed; a Raft client
    // sends its next request only after the answer, so its order holds).
    let out: Rc<RefCell<Vec<u8>>> = Rc::default();
    let wake = Rc::new(Notify::new());
    let closed = Rc::new(Cell::new(false));
    let in_flight = std::sync::Arc::new(Semaphore::new(ctx.peer_limits.calls_in_flight_max_per_connection));
    let writer_task = {
        let (out, wake, closed) = (out.clone(), wake.clone(), closed.clone());
        glommio::spawn_local(async move {
            loop {
                let buf = std::mem::take(&mut *out.borrow_mut());
                if buf.is_empty() {
                    if closed.get() {
                        return Ok::<(), std::io::Error>(());
                    }
                    wake.notified().await;
                    continue;
                }
                writer.write_all(&buf).await?;
                writer.flush().await?;
            }
        })
    };
    let result = async {
        loop {
            let req: PeerRequest = read_frame(&mut reader, frame_max).await?;
            let shard = req.shard();
            let permit = in_flight.clone().acquire_owned().await.map_err(|e| WireError::Decode(e.to_string()))?;
            let (id, rpc) = match req {
                _ if shard >= ctx.shard_count => {
                    let why = format!("node {} has no shard {shard}", ctx.node_id);
                    let answer = match req {
                        PeerRequest::Call { id, .. } => call_reply(id, CallReply::NotLeader),
                        _ => PeerResponse::Refused(why),
                    };
                    encode_frame(&mut out.borrow_mut(), &answer, frame_max)?;
                    wake.notify_one();
                    continue;
                }
                PeerRequest::Append { rpc, .. } => (None, InboundRpc::Append(rpc)),
                PeerRequest::Vote { rpc, .. } => (None, InboundRpc::Vote(rpc)),
                PeerRequest::PreVote { rpc, .. } => (None, InboundRpc::PreVote(rpc)),
                PeerRequest::TransferLeader { rpc, .. } => (None, InboundRpc::TransferLeader(rpc)),
                PeerRequest::Call { id, call, .. } => (Some(id), InboundRpc::Call(decode(&call)?)),
                PeerRequest::Snapshot { vote, meta, index_len, bodies_len, segment_size_bytes, .. } => {
                    if segment_size_bytes != ctx.body_segment_size_bytes {
                        // The body offsets in the index would point elsewhere here. The
                        // stream cannot be resynchronised: answer and close.
                        let why = format!(
                            "snapshot bodies use {segment_size_bytes}-byte segments, node {} uses {}: every node \
                             must be created with the same --body-segment-size-bytes",
                            ctx.node_id, ctx.body_segment_size_bytes
                        );
                        encode_frame(&mut out.borrow_mut(), &PeerResponse::Snapshot(Err(why.clone())), frame_max)?;
                        wake.notify_one();
                        return Err(WireError::Decode(why));
                    }
                    let (index, bodies, staging) =
                        receive_snapshot(ctx, &mut reader, shard, index_len, bodies_len).await?;
                    let snapshot = SnapshotOf::<C, _> { meta, snapshot: ShardSnapshot { index, bodies } };
                    (None, InboundRpc::Snapshot { vote, snapshot, staging })
                }
            };
            let (ctx, out, wake) = (ctx.clone(), out.clone(), wake.clone());
            glommio::spawn_local(async move {
                let answer = match (id, ctx.dispatch_peer(shard, rpc).await) {
                    (Some(id), PeerResponse::CallReply { reply, .. }) => PeerResponse::CallReply { id, reply },
                    (Some(id), _) => call_reply(id, CallReply::NotLeader),
                    (None, answer) => answer,
                };
                if let Err(e) = encode_frame(&mut out.borrow_mut(), &answer, frame_max) {
                    eprintln!("core {}: peer answer not sent: {e}", ctx.core);
                }
                wake.notify_one();
                drop(permit);
            })
            .detach();
        }
    }
    .await;
    closed.set(true);
    wake.notify_one();
    // Let the last answers (e.g. a refusal) go out, but not forever.
    let _ = crate::raft::runtime::timeout(std::time::Duration::from_secs(5), writer_task).await;
    result
}

fn call_reply(id: u64, reply: CallReply) -> PeerResponse {
    match encode(&reply) {
        Ok(reply) => PeerResponse::CallReply { id, reply },
        Err(e) => PeerResponse::Refused(e.to_string()),
    }
}
