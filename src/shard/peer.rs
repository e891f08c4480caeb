//! The receiving side of the node-to-node transport: core `c` accepts peer connections
//! on `peer port + c`, reads one request at a time (`crate::raft::wire`), hands it to
//! the shard's core and writes the answer. Snapshot bytes are written to a staging
//! directory as they arrive, then installed by moving the files (bounded memory).
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use std::cell::{Cell, RefCell};

use futures_lite::io::{AsyncReadExt, AsyncWriteExt, BufReader, ReadHalf};
use glommio::net::{TcpListener, TcpStream};
use openraft::type_config::alias::SnapshotOf;
use tokio::sync::{Notify, Semaphore};

use super::call::{InboundRpc, NotLeader};
use super::core::{CoreCtx, call_reply};
use crate::config::PEER_READ_BUFFER_BYTES;
use crate::raft::FleetRaft;
use crate::raft::bodies::BodiesReceiver;
use crate::raft::state_machine::ShardSnapshot;
use crate::raft::wire::{PeerRequest, PeerResponse, WireError, decode, encode_frame, read_frame};

type C = FleetRaft;

/// Accepts peer connections on this core's peer port, forever.
pub async fn serve_peers(ctx: Rc<CoreCtx>, listener: TcpListener) {
    let open = Rc::new(std::cell::Cell::new(0usize));
    let mut pacing = crate::accept::AcceptPacing::default();
    // Failed handshakes and broken connections are logged at a bounded rate: anyone who
    // can reach the peer port can cause them.
    let errors = Rc::new(RefCell::new(crate::accept::RateLimitedLog::default()));
    let what = format!("core {}: peer", ctx.core);
    loop {
        let stream = crate::accept::next_connection(&listener, &mut pacing, &what).await;
        if open.get() >= ctx.peer_limits.connections_max_per_core {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        open.set(open.get() + 1);
        let (ctx, open, errors) = (ctx.clone(), open.clone(), errors.clone());
        glommio::spawn_local(async move {
            if let Err(e) = serve_connection(&ctx, stream).await
                && !matches!(&e, WireError::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof)
                && let Some(line) =
                    errors.borrow_mut().line(std::time::Instant::now(), &format!("peer connection: {e}"))
            {
                eprintln!("core {}: {line}", ctx.core);
            }
            open.set(open.get() - 1);
        })
        .detach();
    }
}

/// `read`, failed with a timeout if it does not finish within the peer read deadline.
async fn within_read_deadline<T>(
    ctx: &CoreCtx,
    read: impl std::future::Future<Output = Result<T, WireError>>,
) -> Result<T, WireError> {
    let deadline = std::time::Duration::from_millis(ctx.peer_limits.frame_read_timeout_ms);
    crate::raft::runtime::timeout(deadline, read).await.unwrap_or_else(|_| {
        let why = "a peer frame did not arrive whole within the read deadline";
        Err(WireError::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, why)))
    })
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
    // The bodies go to disk: a stream larger than the free space (less the write
    // reserve) could only fill the disk. The sender retries later.
    let free = crate::files::free_bytes(&ctx.data_dir).unwrap_or(u64::MAX);
    let room = free.saturating_sub(ctx.disk_reserve_bytes());
    if bodies_len > room {
        return Err(WireError::TooLarge(bodies_len, room));
    }
    let mut index = vec![0u8; index_len as usize];
    within_read_deadline(ctx, async { Ok(stream.read_exact(&mut index).await?) }).await?;
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
        within_read_deadline(ctx, async { Ok(stream.read_exact(&mut buf[..take]).await?) }).await?;
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
    let mut stream = stream;
    let limits = &ctx.peer_limits;
    // Nothing is decoded from a peer that has not proven it knows the cluster secret,
    // nor from a node on another data dir than the one this node knows it by.
    let denied = |e: String| WireError::Io(std::io::Error::new(std::io::ErrorKind::PermissionDenied, e));
    let secret = limits.cluster_secret.as_ref();
    match &limits.peer_book {
        Some(book) => {
            let deadline = std::time::Duration::from_millis(limits.handshake_timeout_ms);
            crate::raft::peer_auth::accept(&mut stream, secret, &book.0, deadline)
                .await
                .map_err(|e| denied(e.to_string()))?;
        }
        None if secret.is_some() => return Err(denied("peer handshake: this node has no identity".into())),
        None => {}
    }
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
            // Quiet between frames is fine (a long call may be in flight); a frame that
            // has begun must arrive whole within the read deadline.
            if futures_lite::io::AsyncBufReadExt::fill_buf(&mut reader).await?.is_empty() {
                return Err(WireError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
            let req: PeerRequest = within_read_deadline(ctx, read_frame(&mut reader, frame_max)).await?;
            let shard = req.shard();
            let permit = in_flight.clone().acquire_owned().await.map_err(|e| WireError::Decode(e.to_string()))?;
            let (id, rpc) = match req {
                _ if shard >= ctx.shard_count => {
                    let why = format!("node {} has no shard {shard}", ctx.node_id);
                    let answer = match req {
                        PeerRequest::Call { id, .. } => call_reply(id, Err(NotLeader::default())),
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
                    (Some(id), _) => call_reply(id, Err(NotLeader::default())),
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
