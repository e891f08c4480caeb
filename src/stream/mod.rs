//! Live streams: `GET /v1/contexts/:id/stream` over SSE (`sse`) or WebSocket (`ws`).
//!
//! A stream runs on the core that owns the context's shard, from this node's replica
//! (leader or follower): the connection that asked for it is handed to that core
//! (`open`), the `Session` replays the context's history after the cursor from the
//! applied state, then subscribes to the replica's `Feed` in the same step as it reads
//! the last version (no await in between: no event can fall between replay and live),
//! and delivers what each apply changes. A stream never slows apply: a client too far
//! behind gets `gap` and is closed. Its connection stays counted on the core that
//! accepted it until the stream ends.
mod session;
mod sse;
mod ws;

use std::cell::RefCell;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_lite::io::AsyncWriteExt;
use glommio::net::TcpStream;

use crate::http::Response;
use crate::shard::CoreCtx;
use crate::shard::placement::{core_of, shard_of};
pub use session::Session;

/// How the client wants its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// `Accept: text/event-stream`.
    Sse,
    /// `Upgrade: websocket`; `accept_key` answers the client's `Sec-WebSocket-Key`.
    WebSocket { accept_key: String },
}

/// A validated stream request (`crate::api::build::build_stream`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamOpen {
    pub context_id: String,
    /// Events after this version; `None`: live from now.
    pub cursor: Option<u64>,
    pub transport: Transport,
}

/// Serves the stream `open` on connection `socket` of this core (`read_ahead`: what the
/// client sent after its request), on the core that owns the context's shard. Returns
/// when the stream has ended.
pub async fn open(core: Rc<CoreCtx>, socket: TcpStream, read_ahead: Vec<u8>, open: StreamOpen) {
    let shard = shard_of(&open.context_id, core.shard_count);
    let owner = core_of(shard, core.cores);
    if owner == core.core {
        return serve(core, shard, socket, read_ahead, open).await;
    }
    // The socket moves as a descriptor of its own: glommio's sockets belong to the
    // executor that made them.
    // SAFETY: the descriptor is the open socket of `socket`, which lives until the dup.
    let fd = match unsafe { BorrowedFd::borrow_raw(socket.as_raw_fd()) }.try_clone_to_owned() {
        Ok(fd) => fd,
        Err(e) => return refuse(socket, unavailable(&core, format!("cannot hand the stream over: {e}"))).await,
    };
    drop(socket);
    let job: crate::shard::core::CoreJob = Box::new(move |ctx| {
        Box::pin(async move {
            // SAFETY: `fd` is an open TCP socket that nothing else owns any more.
            let socket = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
            serve(ctx, shard, socket, read_ahead, open).await
        })
    });
    // On failure the job, and with it the socket, was dropped: the client sees a close.
    let _ = core.run_on_core(owner, shard, job).await;
}

thread_local! {
    /// Streams served by this core, by context.
    static SERVED: RefCell<HashMap<String, usize>> = RefCell::default();
}

/// Counts one served stream while it lives (in this core's map and in `/metrics`).
struct Served(String);

impl Served {
    /// Counts a stream of `id`, unless a limit refuses it (the 429 to send).
    fn admit(id: &str, core: &CoreCtx) -> Result<Served, Response> {
        let limits = &core.stream_limits;
        let (total, of_context) = SERVED.with(|s| {
            let s = s.borrow();
            (s.values().sum::<usize>(), s.get(id).copied().unwrap_or(0))
        });
        let why = if total >= limits.subscribers_max_per_core {
            format!("this node's core serves {total} streams, its limit")
        } else if of_context >= limits.subscribers_max_per_context {
            format!("context {id:?} has {of_context} streams on this node, the limit")
        } else {
            SERVED.with(|s| *s.borrow_mut().entry(id.to_owned()).or_insert(0) += 1);
            crate::metrics::streams(|m| m.open += 1);
            return Ok(Served(id.to_owned()));
        };
        crate::metrics::streams(|m| m.refused += 1);
        let retry = core.serve_limits.retry_after_secs.to_string();
        Err(Response::error(429, "too_many_streams", format!("{why}: retry later, or on another node"))
            .with_header("Retry-After", retry))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        SERVED.with(|s| {
            let mut s = s.borrow_mut();
            if let Some(n) = s.get_mut(&self.0) {
                *n -= 1;
                if *n == 0 {
                    s.remove(&self.0);
                }
            }
        });
        crate::metrics::streams(|m| m.open -= 1);
    }
}

/// On the shard's core: admits the stream, then runs it on its transport.
async fn serve(core: Rc<CoreCtx>, shard: u32, socket: TcpStream, read_ahead: Vec<u8>, open: StreamOpen) {
    let write_timeout = Duration::from_millis(core.client_write_timeout_ms.max(1));
    // No read deadline: the connection loop's (idle, request) do not apply to a stream;
    // a WebSocket client's silence has its own timer (`ws`).
    if socket.set_write_timeout(Some(write_timeout)).is_err() || socket.set_read_timeout(None).is_err() {
        return;
    }
    if crate::shutdown::requested() {
        return refuse(socket, unavailable(&core, "this node is shutting down: open the stream on another node")).await;
    }
    let (session, served) = match Session::admit(&core, shard, &open)
        .and_then(|session| Served::admit(&open.context_id, &core).map(|served| (session, served)))
    {
        Ok(admitted) => admitted,
        Err(refusal) => return refuse(socket, refusal).await,
    };
    let run = async move {
        let _served = served; // counted until the stream ends
        match open.transport {
            Transport::Sse => {
                drop(read_ahead); // an SSE client sends nothing more
                sse::run(socket, session, &core.stream_limits).await
            }
            Transport::WebSocket { accept_key } => {
                ws::run(socket, read_ahead, &accept_key, session, &core.stream_limits).await
            }
        }
    };
    // In the core's stream queue (`STREAM_TASK_QUEUE_SHARES`); awaited, so that the
    // stream still ends with (and is cancelled with) the task that accepted it.
    match glommio::spawn_local_into(run, stream_queue()) {
        Ok(task) => task.await,
        Err(e) => tracing::warn!("stream not started: {e}"),
    }
}

thread_local! {
    /// This core's task queue for streams, made at the first stream.
    static STREAM_QUEUE: std::cell::OnceCell<glommio::TaskQueueHandle> = const { std::cell::OnceCell::new() };
}

fn stream_queue() -> glommio::TaskQueueHandle {
    STREAM_QUEUE.with(|q| {
        *q.get_or_init(|| {
            let shares = glommio::Shares::Static(crate::config::STREAM_TASK_QUEUE_SHARES);
            glommio::executor().create_task_queue(shares, glommio::Latency::NotImportant, "streams")
        })
    })
}

fn unavailable(core: &CoreCtx, why: impl std::fmt::Display) -> Response {
    Response::error(503, "unavailable", why).with_header("Retry-After", core.serve_limits.retry_after_secs.to_string())
}

/// Answers `refusal` instead of a stream, and closes.
async fn refuse(mut socket: TcpStream, refusal: Response) {
    let mut out = Vec::new();
    refusal.write_to(&mut out, false, true);
    let _ = socket.write_all(&out).await;
    let _ = socket.close().await;
}
