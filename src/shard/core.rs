//! `CoreCtx`: what one executor (core) knows: its shards, the senders to the other
//! cores, the limits, its links to other nodes. Routes a call to the shard's core
//! (locally, or once across the bounded cross-core mesh), and there to the shard's
//! leader: this replica when it leads (`super::replica`), else forwarded to the leader
//! node (`super::forward`). The client never sees a redirect. Peer RPCs reach their
//! shard's core the same way (`dispatch_peer`).
use std::cell::RefCell;
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{Receivers, Senders};
use hdrhistogram::Histogram;

use super::call::{InboundRpc, NotLeader, Reply, Served, ShardCall, encode_served};
use super::disk::DiskGuard;
use super::forward::Forwarder;
use super::healing::{Healing, ShardOpener};
use super::placement::{core_of, shard_of};
use super::replica::attempt;
use super::rpc::handle_raft_rpc;
use crate::config::{PeerLimits, ServeLimits, StoreLimits, StreamLimits};
use crate::raft::Shard;
use crate::raft::wire::{PeerResponse, WireError, encode};

/// Work crossing to the core that owns a shard.
pub enum MeshWork {
    Call {
        call: ShardCall,
        forwarded: bool,
        received: Instant,
        reply: tokio::sync::oneshot::Sender<Served>,
    },
    /// This core's counters and histograms (`interval`: the interval set, taken and reset).
    Metrics {
        interval: bool,
        reply: tokio::sync::oneshot::Sender<crate::metrics::Snapshot>,
    },
    Peer {
        rpc: InboundRpc,
        reply: tokio::sync::oneshot::Sender<PeerResponse>,
    },
    /// Work that must run where the shard lives (a stream, handed its connection):
    /// `done` is sent when it ends.
    OnCore {
        job: CoreJob,
        done: tokio::sync::oneshot::Sender<()>,
    },
}

/// A task to run on another core, with that core's context.
pub type CoreJob = Box<dyn FnOnce(Rc<CoreCtx>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send>;

pub struct MeshMsg {
    pub shard: u32,
    pub work: MeshWork,
}

/// Readiness of the node, shared by its cores.
#[derive(Debug, Default)]
pub struct Readiness {
    /// Shards opened (all of them once startup is done).
    pub opened: AtomicUsize,
    /// Per core: its shards that currently know a leader.
    pub with_leader: Vec<AtomicUsize>,
    /// Per core: its shards whose Raft core a fatal storage error stopped.
    pub stopped: Vec<AtomicUsize>,
    /// Shards re-opened after such a stop, since the node started.
    pub restarts: AtomicUsize,
}

/// What every core of a node shares.
#[derive(Clone)]
pub struct NodeShared {
    pub ready: Arc<Readiness>,
    /// Low-priority threads for CPU-heavy pure work (`crate::offload`).
    pub offload: Arc<crate::offload::Offload>,
    /// Large answers rendered and not yet written (`crate::budget`).
    pub answers: Arc<crate::budget::Budget>,
}

/// `CoreCtx::readiness`.
#[derive(Debug, Clone, Copy)]
pub struct ReadinessCounts {
    pub opened: usize,
    pub with_leader: usize,
    pub stopped: usize,
    pub restarts: usize,
    pub total: usize,
}

impl ReadinessCounts {
    pub fn ready(&self) -> bool {
        self.opened == self.total && self.with_leader == self.total && self.stopped == 0
    }
}

pub struct CoreCtx {
    pub node_id: u64,
    pub core: usize,
    pub cores: usize,
    pub shard_count: u32,
    pub data_dir: PathBuf,
    /// This core's shards; a slot's shard is replaced when it is re-opened (`healing`).
    shards: HashMap<u32, RefCell<Rc<Shard>>>,
    opener: Rc<ShardOpener>,
    /// Stopped shards waiting to be re-opened, with their schedule.
    healing: RefCell<HashMap<u32, Healing>>,
    pub mesh: Option<Senders<MeshMsg>>,
    pub store_limits: StoreLimits,
    pub serve_limits: ServeLimits,
    pub peer_limits: PeerLimits,
    pub stream_limits: StreamLimits,
    /// A write to a client that makes no progress for this long fails (HTTP and streams).
    pub client_write_timeout_ms: u64,
    pub api_key: Option<String>,
    /// This node's shard-aware HTTP ports (core `c`: this port + `c`), if any.
    pub core_listen: Option<std::net::SocketAddr>,
    pub ready: Arc<Readiness>,
    /// This node's message-body segment size (snapshots must match it).
    pub body_segment_size_bytes: u64,
    /// Largest WAL record: one log entry, so one command (`replica::command_too_large`).
    pub record_payload_max_bytes: usize,
    /// The node's low-priority threads for CPU-heavy pure work.
    pub offload: Arc<crate::offload::Offload>,
    /// The node's budget of large answers rendered and not yet written.
    pub answers: Arc<crate::budget::Budget>,
    /// This core's share of `large_body_bytes_per_sec` (`crate::api::byte_rate`).
    pub large_bodies: RefCell<crate::api::byte_rate::ByteRate>,
    /// Multiplexed connections for forwarding calls to leaders.
    forwarder: Forwarder,
    /// Refuses writes while the data disk is nearly full.
    disk: DiskGuard,
    /// The core log's sync histograms as of the last interval collection (the log
    /// keeps its own statistics since it opened; the interval log wants deltas).
    wal_interval_mark: RefCell<Option<WalSyncHistograms>>,
}

/// A WAL's sync latency (µs) and records per sync.
type WalSyncHistograms = (Histogram<u64>, Histogram<u64>);

impl CoreCtx {
    /// The context of executor `core`, from the node's configuration (whose
    /// `body_segment_size_bytes` is the data dir's by now).
    pub fn new(
        config: &crate::config::ServerConfig,
        core: usize,
        shard_count: u32,
        shards: HashMap<u32, Rc<Shard>>,
        opener: Rc<ShardOpener>,
        mesh: Option<Senders<MeshMsg>>,
        node: NodeShared,
    ) -> CoreCtx {
        let NodeShared { ready, offload, answers } = node;
        CoreCtx {
            node_id: config.node_id,
            core,
            cores: config.cores.max(1),
            shard_count,
            data_dir: config.data_dir.clone(),
            shards: shards.into_iter().map(|(id, s)| (id, RefCell::new(s))).collect(),
            opener,
            healing: RefCell::default(),
            mesh,
            store_limits: config.store.clone(),
            serve_limits: config.serve.clone(),
            peer_limits: config.peer.clone(),
            stream_limits: config.stream.clone(),
            client_write_timeout_ms: config.http.write_timeout_ms,
            api_key: config.api_key.clone(),
            core_listen: config.core_listen,
            ready,
            body_segment_size_bytes: config.body_segment_size_bytes.unwrap_or(crate::config::BODY_SEGMENT_SIZE_BYTES),
            record_payload_max_bytes: config.wal.record_payload_max_bytes as usize,
            offload,
            answers,
            large_bodies: RefCell::new(crate::api::byte_rate::ByteRate::new(
                config.serve.large_body_bytes_per_sec.div_ceil(config.cores.max(1) as u64),
                // Any one body the server accepts passes an idle limiter.
                config.http.body_max_bytes as u64,
                Duration::from_millis(crate::config::LARGE_BODY_WAIT_MAX_MS),
            )),
            forwarder: Forwarder::new(config.peer.clone()),
            disk: DiskGuard::new(
                config.data_dir.clone(),
                disk_reserve_bytes(config, shard_count),
                Duration::from_millis(crate::config::DISK_FREE_RECHECK_MS),
            ),
            wal_interval_mark: RefCell::default(),
        }
    }

    /// The core's log (shared by its shards), once opened.
    pub fn core_log(&self) -> Option<crate::wal::GroupCommitWal> {
        self.opener.current_log()
    }

    /// This core's replica of shard `id` (now: a re-open replaces it).
    pub fn shard(&self, id: u32) -> Option<Rc<Shard>> {
        self.shards.get(&id).map(|slot| slot.borrow().clone())
    }

    /// This core's shards, by id.
    pub fn shards(&self) -> Vec<(u32, Rc<Shard>)> {
        let mut all: Vec<_> = self.shards.iter().map(|(&id, slot)| (id, slot.borrow().clone())).collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        all
    }

    /// Re-opens the shards a fatal storage error stopped, each when its backoff is due
    /// (called from the readiness loop). The stopped Raft is shut down first; calls
    /// still holding it get 503 from it as before.
    pub async fn heal_stopped_shards(&self) {
        let now = Instant::now();
        // A poisoned log stops every shard on it: none may keep a handle that writes
        // while the log is re-opened from disk.
        if self.opener.log_poisoned() {
            for (_, shard) in self.shards() {
                if !shard.stopped.get() {
                    shard.mark_stopped();
                }
            }
        }
        for (id, shard) in self.shards() {
            if !shard.stopped.get() {
                continue;
            }
            let due = self.healing.borrow_mut().entry(id).or_insert_with(|| Healing::new(now)).due(now);
            if !due {
                continue;
            }
            // Bounded: this runs in the readiness loop, which also serves every other
            // shard's readiness and leader balancing; a shutdown that hangs must not stop it.
            let _ = crate::raft::runtime::timeout(Duration::from_secs(5), shard.raft.shutdown()).await;
            drop(shard);
            match self.opener.open(id, None).await {
                Ok(fresh) => {
                    let failures = self.healing.borrow_mut().remove(&id).map_or(0, |h| h.failures);
                    *self.shards[&id].borrow_mut() = Rc::new(fresh);
                    self.ready.restarts.fetch_add(1, Ordering::AcqRel);
                    eprintln!(
                        "core {}: shard {id} re-opened after a storage failure ({failures} failed tries)",
                        self.core
                    );
                }
                Err(e) => {
                    let mut healing = self.healing.borrow_mut();
                    let h = healing.entry(id).or_insert_with(|| Healing::new(now));
                    h.failed(Instant::now());
                    if h.failures.is_power_of_two() {
                        eprintln!("core {}: shard {id} could not be re-opened (try {}): {e}", self.core, h.failures);
                    }
                }
            }
        }
    }

    /// Free space below which this node refuses writes (0: never).
    pub fn disk_reserve_bytes(&self) -> u64 {
        self.disk.reserve_bytes()
    }

    /// Why this node takes no new writes or log entries now, if it must not.
    pub fn disk_refusal(&self) -> Option<String> {
        self.disk.refusal()
    }

    /// This node's shards: opened, with a live leader, stopped by a fatal error, in all.
    pub fn readiness(&self) -> ReadinessCounts {
        let sum = |v: &[AtomicUsize]| v.iter().map(|n| n.load(Ordering::Acquire)).sum();
        ReadinessCounts {
            opened: self.ready.opened.load(Ordering::Acquire),
            with_leader: sum(&self.ready.with_leader),
            stopped: sum(&self.ready.stopped),
            restarts: self.ready.restarts.load(Ordering::Acquire),
            total: self.shard_count as usize,
        }
    }

    /// Runs `call` on its shard's leader and returns the answer.
    /// `received`: when the request was parsed (for the queue-wait histogram).
    pub async fn route(&self, call: ShardCall, received: Instant) -> Reply {
        let shard = shard_of(call.context_id(), self.shard_count);
        self.route_to_shard_since(shard, call, received).await
    }

    /// The counters and latency histograms of every core of this node, merged
    /// (`interval`: the interval sets, taken and reset, for the interval log).
    pub async fn collect_metrics(&self, interval: bool) -> crate::metrics::Snapshot {
        let mut all = self.local_metrics(interval);
        let Some(mesh) = &self.mesh else { return all };
        for core in (0..self.cores).filter(|&c| c != self.core) {
            let (reply, answer) = tokio::sync::oneshot::channel();
            if mesh.send_to(core, MeshMsg { shard: 0, work: MeshWork::Metrics { interval, reply } }).await.is_ok()
                && let Ok(snapshot) = answer.await
            {
                all.merge(snapshot);
            }
        }
        all
    }

    /// This core's counters and histograms (`interval`: the interval set, taken and
    /// reset), with the group-commit syncs of the core's log as `wal.sync` and
    /// `wal.sync_batch_records`.
    pub fn local_metrics(&self, interval: bool) -> crate::metrics::Snapshot {
        let mut snapshot = crate::metrics::snapshot(interval);
        let Some(log) = self.opener.current_log() else { return snapshot };
        let (mut latency, mut batch) = log.with_stats(|s| (s.sync_latency_us.clone(), s.sync_batch_records.clone()));
        if interval {
            let mut mark = self.wal_interval_mark.borrow_mut();
            let since_start = (latency.clone(), batch.clone());
            // A re-opened log starts its statistics again: then the mark is stale.
            if let Some((latency_mark, batch_mark)) = mark.as_ref().filter(|(l, _)| l.len() <= latency.len()) {
                let _ = latency.subtract(latency_mark);
                let _ = batch.subtract(batch_mark);
            }
            *mark = Some(since_start);
        }
        crate::metrics::add_histogram(&mut snapshot.histograms, "wal.sync", &latency);
        crate::metrics::add_histogram(&mut snapshot.histograms, "wal.sync_batch_records", &batch);
        // Per core too: each core has its own log and fdatasync stream.
        let core = self.core;
        crate::metrics::add_histogram(&mut snapshot.histograms, &format!("wal.sync.core{core}"), &latency);
        crate::metrics::add_histogram(&mut snapshot.histograms, &format!("wal.sync_batch_records.core{core}"), &batch);
        snapshot
    }

    /// Runs `call` for `shard`: on its leader, or for a local call on this node's replica.
    pub async fn route_to_shard(&self, shard: u32, call: ShardCall) -> Reply {
        self.route_to_shard_since(shard, call, Instant::now()).await
    }

    async fn route_to_shard_since(&self, shard: u32, call: ShardCall, received: Instant) -> Reply {
        // Not forwarded, so `serve_call` never answers `NotLeader` (it retries instead).
        self.dispatch_call(shard, call, false, received)
            .await
            .unwrap_or_else(|NotLeader { .. }| Reply::unavailable(&self.serve_limits, "the shard's leader moved"))
    }

    /// Takes `call` to the core that owns `shard`. `forwarded`: it came from another node
    /// (see `serve_call`).
    async fn dispatch_call(&self, shard: u32, call: ShardCall, forwarded: bool, received: Instant) -> Served {
        let owner = core_of(shard, self.cores);
        if owner == self.core {
            return self.serve_call(shard, call, forwarded, received).await;
        }
        let Some(mesh) = &self.mesh else {
            return Ok(Reply::error(500, "internal", "no cross-core mesh"));
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let msg = MeshMsg { shard, work: MeshWork::Call { call, forwarded, received, reply } };
        if mesh.send_to(owner, msg).await.is_err() {
            return Ok(Reply::unavailable(&self.serve_limits, format!("core {owner} is not accepting requests")));
        }
        answer
            .await
            .unwrap_or_else(|_| Ok(Reply::unavailable(&self.serve_limits, format!("core {owner} dropped the request"))))
    }

    /// Takes a peer RPC to the core that owns `shard`. A forwarded call's answer comes
    /// back as `CallReply` with id 0: the connection handler puts the call's id in.
    pub async fn dispatch_peer(&self, shard: u32, rpc: InboundRpc) -> PeerResponse {
        let owner = core_of(shard, self.cores);
        if owner == self.core {
            return match (self.shard(shard), rpc) {
                (_, InboundRpc::Call(call)) => {
                    call_reply(0, Box::pin(self.dispatch_call(shard, call, true, Instant::now())).await)
                }
                (Some(s), rpc) => handle_raft_rpc(&s, rpc, self.node_id, &self.disk).await,
                (None, _) => PeerResponse::Refused(format!("shard {shard} is not open on node {}", self.node_id)),
            };
        }
        let Some(mesh) = &self.mesh else {
            return PeerResponse::Refused("no cross-core mesh".into());
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if mesh.send_to(owner, MeshMsg { shard, work: MeshWork::Peer { rpc, reply } }).await.is_err() {
            return PeerResponse::Refused(format!("core {owner} is not accepting requests"));
        }
        answer.await.unwrap_or_else(|_| PeerResponse::Refused(format!("core {owner} dropped the request")))
    }

    /// Runs `job` on core `core` (this one included) and waits until it ends; `Err`
    /// when that core takes no work (the job is dropped).
    pub async fn run_on_core(self: &Rc<Self>, core: usize, shard: u32, job: CoreJob) -> Result<(), ()> {
        if core == self.core {
            job(self.clone()).await;
            return Ok(());
        }
        let Some(mesh) = &self.mesh else { return Err(()) };
        let (done, ended) = tokio::sync::oneshot::channel();
        mesh.send_to(core, MeshMsg { shard, work: MeshWork::OnCore { job, done } }).await.map_err(|_| ())?;
        let _ = ended.await;
        Ok(())
    }

    fn deadline_of(&self, call: &ShardCall) -> Duration {
        match call {
            ShardCall::AddMember { .. } | ShardCall::RemoveMember { .. } => {
                Duration::from_millis(self.serve_limits.membership_deadline_ms)
            }
            _ => Duration::from_millis(self.serve_limits.write_deadline_ms),
        }
    }

    /// On the owning core: tries this replica, else the leader it names, until the
    /// deadline. A retry happens only when the call certainly was not applied: this
    /// replica refused before proposing, or the forward did not reach the leader, or
    /// the call is a read.
    ///
    /// The forward-at-most-once rule lives here: a call that another node `forwarded`
    /// to this one is never forwarded again; if this replica does not lead the shard,
    /// `NotLeader` goes back to the forwarding node, which retries with what it learns.
    /// A call of this node's own clients never answers `NotLeader`.
    async fn serve_call(&self, shard_id: u32, call: ShardCall, forwarded: bool, received: Instant) -> Served {
        if matches!(call, ShardCall::Write(crate::store::Command::Append { .. })) {
            crate::metrics::record_since("append.queue_wait", received);
        }
        let Some(shard) = self.shard(shard_id) else {
            return Ok(Reply::unavailable(&self.serve_limits, format!("shard {shard_id} is not open yet")));
        };
        // Every replica stores every entry: a node short of disk refuses the writes it
        // handles, as receiver or as leader, before anything is proposed.
        if matches!(call, ShardCall::Write(_))
            && let Some(why) = self.disk_refusal()
        {
            return Ok(Reply::unavailable(&self.serve_limits, why));
        }
        // A forwarded call gets a tenth less than the node that forwarded it waits, so
        // that its answer (a success, or a 503 saying why) arrives before that node
        // gives up with a vaguer "did not answer".
        let budget = self.deadline_of(&call);
        let budget = if forwarded { budget - budget / 10 } else { budget };
        let deadline = Instant::now() + budget;
        let is_write = call.is_write();
        let pause = Duration::from_millis(self.serve_limits.leader_retry_pause_ms);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Ok(Reply::unavailable(&self.serve_limits, "no leader with a quorum within the deadline"));
            }
            match attempt(&shard, &call, &self.serve_limits, &self.answers, remaining).await {
                Ok(reply) => return Ok(reply),
                Err(not_leader) if forwarded => return Err(not_leader),
                Err(NotLeader { leader: Some(leader) }) if leader.node_id != self.node_id => {
                    let node = leader.node_id;
                    // A leader cut off from the cluster answers nothing until the deadline;
                    // once this replica hears of another leader, waiting on is pointless.
                    let forwarded = std::pin::pin!(self.forward(node, &leader.addr, shard_id, &call, remaining));
                    let moved = std::pin::pin!(leader_moved_from(&shard, node));
                    let answer = match futures_util::future::select(forwarded, moved).await {
                        futures_util::future::Either::Left((answer, _)) => answer,
                        futures_util::future::Either::Right(((), _)) if !is_write => continue,
                        futures_util::future::Either::Right(((), _)) => {
                            let why = format!(
                                "node {node} lost the shard's leadership while the write was in flight; its outcome is \
                                 unknown (it may still be applied): retry with the same Idempotency-Key"
                            );
                            return Ok(Reply::unavailable(&self.serve_limits, why));
                        }
                    };
                    match answer {
                        Ok(Ok(mut reply)) => {
                            reply.forwarded_to = Some(node);
                            return Ok(reply);
                        }
                        Ok(Err(NotLeader { .. })) | Err(WireError::Connect(_)) => {}
                        Err(_) if !is_write => {}
                        Err(e) => {
                            let why = format!("the leader (node {node}) did not answer; the write may be applied: {e}");
                            return Ok(Reply::unavailable(&self.serve_limits, why));
                        }
                    }
                }
                Err(NotLeader { .. }) => {}
            }
            glommio::timer::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// Sends `call` to node `node` (which leads `shard`, as far as we know).
    async fn forward(
        &self,
        node: u64,
        addr: &str,
        shard: u32,
        call: &ShardCall,
        remaining: Duration,
    ) -> Result<Served, WireError> {
        let core = core_of(shard, self.cores);
        self.forwarder.call(node, addr, core, shard, encode(call)?, remaining).await
    }
}

/// Returns once this replica knows that a later term elected a leader other than
/// `node`: a call forwarded to `node` will not be answered by the shard's leader. (A
/// later term, not just another name: this replica's published view can lag the one
/// that chose `node`, and a lag must not cut a forward short.)
async fn leader_moved_from(shard: &Shard, node: u64) {
    use openraft_rt::WatchReceiver;
    let mut metrics = shard.raft.metrics();
    let term_at_start = metrics.borrow_watched().current_term;
    loop {
        let (term, leader) = {
            let m = metrics.borrow_watched();
            (m.current_term, m.current_leader)
        };
        if term > term_at_start && leader.is_some_and(|l| l != node) {
            return;
        }
        if metrics.changed().await.is_err() {
            // The Raft core stopped: no leader will be learned here.
            return std::future::pending().await;
        }
    }
}

/// The free space kept in reserve: as configured, else one WAL segment and one
/// message-body segment for each shard (every node holds a replica of every shard).
/// Default reserve: a WAL segment per core (each core's log rolls on its own) and a body
/// segment per shard.
fn disk_reserve_bytes(config: &crate::config::ServerConfig, shard_count: u32) -> u64 {
    config.serve.disk_reserve_bytes.unwrap_or_else(|| {
        let body = config.body_segment_size_bytes.unwrap_or(crate::config::BODY_SEGMENT_SIZE_BYTES);
        let cores = config.cores.max(1) as u64;
        u64::from(shard_count).saturating_mul(body).saturating_add(cores.saturating_mul(config.wal.segment_size_bytes))
    })
}

/// A forwarded call's answer as its peer frame.
pub fn call_reply(id: u64, served: Served) -> PeerResponse {
    match encode_served(served) {
        Ok(reply) => PeerResponse::CallReply { id, reply },
        Err(e) => PeerResponse::Refused(e.to_string()),
    }
}

/// Serves work that other cores send to this one, each in its own task so that
/// concurrent appends share a WAL sync.
pub fn serve_mesh(ctx: Rc<CoreCtx>, mut receivers: Receivers<MeshMsg>) {
    for (_peer, rx) in receivers.streams() {
        let ctx = ctx.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                let ctx = ctx.clone();
                glommio::spawn_local(async move {
                    match msg.work {
                        MeshWork::Call { call, forwarded, received, reply } => {
                            let _ = reply.send(ctx.serve_call(msg.shard, call, forwarded, received).await);
                        }
                        MeshWork::Metrics { interval, reply } => {
                            let _ = reply.send(ctx.local_metrics(interval));
                        }
                        MeshWork::Peer { rpc, reply } => {
                            let _ = reply.send(ctx.dispatch_peer(msg.shard, rpc).await);
                        }
                        MeshWork::OnCore { job, done } => {
                            job(ctx).await;
                            let _ = done.send(());
                        }
                    }
                })
                .detach();
            }
        })
        .detach();
    }
}
