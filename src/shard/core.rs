//! `CoreCtx`: what one executor (core) knows: its shards, the senders to the other
//! cores, the limits. Routes a call to the shard's core: locally, or once across the
//! bounded cross-core mesh, with the answer coming back through a oneshot.
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use glommio::channels::channel_mesh::{Receivers, Senders};

use super::placement::{core_of, shard_of};
use crate::api::calls::{ShardCall, execute, unavailable};
use crate::config::{ServeLimits, StoreLimits};
use crate::http::Response;
use crate::raft::Shard;

/// A call crossing to the core that owns `shard`.
pub struct MeshMsg {
    pub shard: u32,
    pub call: ShardCall,
    pub reply: tokio::sync::oneshot::Sender<Response>,
}

pub struct CoreCtx {
    pub node_id: u64,
    pub core: usize,
    pub cores: usize,
    pub shard_count: u32,
    pub shards: HashMap<u32, Rc<Shard>>,
    pub mesh: Option<Senders<MeshMsg>>,
    pub store_limits: StoreLimits,
    pub serve_limits: ServeLimits,
    pub api_key: Option<String>,
    /// Shards of the whole node that are open and have a leader.
    pub ready: Arc<AtomicUsize>,
}

impl CoreCtx {
    /// `(shards ready, shards)` of this node.
    pub fn readiness(&self) -> (usize, usize) {
        (self.ready.load(Ordering::Acquire), self.shard_count as usize)
    }

    /// Runs `call` on its shard's core and returns the answer.
    pub async fn route(&self, call: ShardCall) -> Response {
        let shard = shard_of(call.context_id(), self.shard_count);
        self.route_to_shard(shard, call).await
    }

    /// Runs `call` on the core that owns `shard`.
    pub async fn route_to_shard(&self, shard: u32, call: ShardCall) -> Response {
        let owner = core_of(shard, self.cores);
        if owner == self.core {
            return match self.shards.get(&shard) {
                Some(s) => execute(s, call, &self.serve_limits).await,
                None => unavailable(&self.serve_limits, format!("shard {shard} is not open yet")),
            };
        }
        let Some(mesh) = &self.mesh else {
            return Response::error(500, "internal", "no cross-core mesh");
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if mesh.send_to(owner, MeshMsg { shard, call, reply }).await.is_err() {
            return unavailable(&self.serve_limits, format!("core {owner} is not accepting requests"));
        }
        answer.await.unwrap_or_else(|_| unavailable(&self.serve_limits, format!("core {owner} dropped the request")))
    }
}

/// Serves calls that other cores send to this one, each in its own task so that
/// concurrent appends share a WAL sync.
pub fn serve_mesh(ctx: Rc<CoreCtx>, mut receivers: Receivers<MeshMsg>) {
    for (_peer, rx) in receivers.streams() {
        let ctx = ctx.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                let ctx = ctx.clone();
                glommio::spawn_local(async move {
                    let resp = match ctx.shards.get(&msg.shard) {
                        Some(s) => execute(s, msg.call, &ctx.serve_limits).await,
                        None => unavailable(&ctx.serve_limits, format!("shard {} is not open yet", msg.shard)),
                    };
                    let _ = msg.reply.send(resp);
                })
                .detach();
            }
        })
        .detach();
    }
}
