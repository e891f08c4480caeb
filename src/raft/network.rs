//! openraft's network over our peer protocol (`wire`): one `PeerClient` per (shard,
//! target node) that openraft asks for, each owning at most one TCP connection, kept
//! and reused across RPCs, dropped after any error (a late answer must never be read
//! as the answer to the next request), and re-opened with exponential backoff.
//!
//! Traffic stays shard-per-core: core `c` of every node listens on `peer port + c`, and
//! shard `s` lives on core `s mod cores`. A client assumes the target has as many cores
//! as this node and connects to `port + s mod cores`; when nothing listens there (the
//! target has fewer cores) it falls back to the base port, whose core forwards the
//! request over its cross-core mesh. A single node has no member to send to, so openraft
//! never creates a client: a cluster of one runs the same code.
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncWriteExt, BufReader};
use glommio::net::TcpStream;
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, v2::RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotOf, VoteOf};
use openraft::{AnyError, BasicNode, OptionalSend};

use super::state_machine::ShardSnapshot;
use super::types::FleetRaft;
use super::wire::{PeerRequest, PeerResponse, WireError, read_frame, write_frame};
use crate::config::{PEER_READ_BUFFER_BYTES, PeerLimits};

type C = FleetRaft;

/// Where core `core` of the node whose peer address is `addr` listens.
pub fn core_port_addr(addr: SocketAddr, core: usize) -> SocketAddr {
    SocketAddr::new(addr.ip(), addr.port().saturating_add(core as u16))
}

fn resolve(addr: &str) -> std::io::Result<SocketAddr> {
    addr.to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{addr} resolves to nothing")))
}

/// Connects to core `core` of the peer at `addr` (its port + `core`), falling back to
/// the base port (remembered in `use_base_port`) when nothing listens there, and proves
/// (and checks) knowledge of the cluster secret when there is one
/// (`super::peer_auth`). Every failure is `WireError::Connect`: nothing was sent.
pub async fn connect_peer(
    addr: &str,
    dialled: Option<u64>,
    core: usize,
    use_base_port: &mut bool,
    limits: &PeerLimits,
) -> Result<TcpStream, WireError> {
    let timeout = Duration::from_millis(limits.connect_timeout_ms);
    let base = resolve(addr).map_err(WireError::Connect)?;
    let port_addr = if *use_base_port { base } else { core_port_addr(base, core) };
    let stream = match TcpStream::connect_timeout(port_addr, timeout).await {
        Ok(s) => s,
        Err(_) if port_addr != base => {
            let s = TcpStream::connect_timeout(base, timeout)
                .await
                .map_err(|e| WireError::Connect(std::io::Error::from(e)))?;
            *use_base_port = true;
            s
        }
        Err(e) => return Err(WireError::Connect(e.into())),
    };
    match handshake(stream, dialled, limits).await {
        // `port + core` answered but is not our peer (a target with fewer cores, and
        // another process on that port: seen in CI, where another test's node listened
        // there): its base port, like a refused connection.
        Err(_) if port_addr != base && !*use_base_port => {
            let s = TcpStream::connect_timeout(base, timeout)
                .await
                .map_err(|e| WireError::Connect(std::io::Error::from(e)))?;
            let s = handshake(s, dialled, limits).await?;
            *use_base_port = true;
            Ok(s)
        }
        done => done,
    }
}

/// Proves (and checks) knowledge of the cluster secret on a new connection, and that
/// the node at the other end is `dialled` (when known) on the data dir this node knows
/// it by (`super::known_peers`).
async fn handshake(stream: TcpStream, dialled: Option<u64>, limits: &PeerLimits) -> Result<TcpStream, WireError> {
    stream.set_nodelay(true).map_err(|e| WireError::Connect(std::io::Error::from(e)))?;
    let mut stream = stream;
    let denied = |e: String| WireError::Connect(std::io::Error::new(std::io::ErrorKind::PermissionDenied, e));
    let secret = limits.cluster_secret.as_ref();
    match &limits.peer_book {
        Some(book) => {
            let deadline = Duration::from_millis(limits.handshake_timeout_ms);
            super::peer_auth::connect(&mut stream, secret, &book.0, dialled, deadline).await.map_err(|e| {
                // (A wrong node is expected once when `port + core` belongs to another
                // node of a host with fewer cores; the base port is tried next.)
                if let super::peer_auth::AuthError::Refused(r) = &e
                    && !matches!(r, super::known_peers::Refusal::WrongNode { .. })
                {
                    log_refusal(r);
                }
                denied(e.to_string())
            })?;
        }
        None if secret.is_some() => return Err(denied("peer handshake: this node has no identity".into())),
        None => {}
    }
    Ok(stream)
}

/// A link refused for its identity is logged (at most one line per interval for the
/// whole process: every shard's link to that peer fails the same way).
fn log_refusal(r: &super::known_peers::Refusal) {
    static LOG: std::sync::Mutex<Option<crate::accept::RateLimitedLog>> = std::sync::Mutex::new(None);
    let mut log = LOG.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(line) =
        log.get_or_insert_with(Default::default).line(Instant::now(), &format!("peer link refused: {r}"))
    {
        eprintln!("fleetlm: {line}");
    }
}

/// The reconnect policy of every peer link (Raft connections here, forwarding links in
/// `crate::shard::forward`): after a failed or broken connection, no attempt before the
/// wait is over; the wait doubles with each failure, from `reconnect_backoff_min_ms` up
/// to `reconnect_backoff_max_ms`, and is back at the minimum after a connection works.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    retry_at: Instant,
    wait: Duration,
    min: Duration,
    max: Duration,
    /// After a protocol error (`failed_protocol`).
    protocol: Duration,
}

impl Backoff {
    pub fn new(limits: &PeerLimits) -> Backoff {
        let min = Duration::from_millis(limits.reconnect_backoff_min_ms);
        let max = Duration::from_millis(limits.reconnect_backoff_max_ms).max(min);
        let protocol = Duration::from_millis(limits.protocol_error_backoff_ms).max(max);
        Backoff { retry_at: Instant::now(), wait: min, min, max, protocol }
    }

    /// A connection failed (or broke): wait before the next attempt, longer each time.
    pub fn failed(&mut self) {
        self.retry_at = Instant::now() + self.wait;
        self.wait = (self.wait * 2).min(self.max);
    }

    /// The peer answered in another protocol, or refused our cluster secret: the
    /// address or the secret is wrong, and retrying soon cannot help.
    pub fn failed_protocol(&mut self) {
        self.retry_at = Instant::now() + self.protocol;
        self.wait = self.max;
    }

    /// A connection was made.
    pub fn succeeded(&mut self) {
        self.wait = self.min;
    }

    /// Whether a connection may be tried now. Asking is not a failure: callers that
    /// retry faster than the backoff must not push the next attempt further out.
    pub fn may_try(&self) -> bool {
        Instant::now() >= self.retry_at
    }
}

/// One reusable connection to one core of one peer, with reconnect backoff. Used by
/// the Raft clients here and by request forwarding (`crate::shard::peer`).
pub struct PeerConn {
    /// The target node (checked at the handshake).
    node: u64,
    addr: String,
    /// Core of the target to aim at first.
    core: usize,
    /// The target's `port + core` refused: use its base port.
    use_base_port: bool,
    /// Buffered for reading (answers arrive as a length and a body); writes pass through.
    stream: Option<BufReader<TcpStream>>,
    /// An exchange started and did not finish (its future was dropped): the stream may
    /// hold half a frame or a late answer, so it must not be reused.
    in_flight: bool,
    backoff: Backoff,
    limits: PeerLimits,
}

impl PeerConn {
    pub fn new(node: u64, addr: String, core: usize, limits: PeerLimits) -> PeerConn {
        PeerConn {
            node,
            addr,
            core,
            use_base_port: false,
            stream: None,
            in_flight: false,
            backoff: Backoff::new(&limits),
            limits,
        }
    }

    pub fn set_addr(&mut self, addr: &str) {
        if self.addr != addr {
            self.addr = addr.to_owned();
            self.stream = None;
        }
    }

    fn failed(&mut self, e: &WireError) {
        self.stream = None;
        if is_protocol_error(e) {
            self.backoff.failed_protocol();
        } else {
            self.backoff.failed();
        }
    }

    async fn connect(&mut self) -> Result<(), WireError> {
        if std::mem::take(&mut self.in_flight) {
            self.stream = None;
        }
        if self.stream.is_none() {
            if !self.backoff.may_try() {
                return Err(WireError::Connect(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!("{}: backing off after a failed connection", self.addr),
                )));
            }
            let stream =
                connect_peer(&self.addr, Some(self.node), self.core, &mut self.use_base_port, &self.limits).await?;
            self.stream = Some(BufReader::with_capacity(PEER_READ_BUFFER_BYTES, stream));
            self.backoff.succeeded();
        }
        Ok(())
    }

    /// Sends `req` (and for a snapshot, its bytes) and reads the answer, all within
    /// `timeout`. Any failure drops the connection.
    pub async fn call_with(
        &mut self,
        req: &PeerRequest,
        snapshot: Option<&ShardSnapshot>,
        timeout: Duration,
    ) -> Result<PeerResponse, WireError> {
        let frame_max = self.limits.frame_max_bytes;
        let chunk = self.limits.snapshot_chunk_bytes;
        let attempt = async {
            self.connect().await?;
            self.in_flight = true;
            let stream = self.stream.as_mut().expect("connected above");
            write_frame(stream, req, frame_max).await?;
            if let Some(snap) = snapshot {
                stream.write_all(&snap.index).await?;
                let mut buf = vec![0u8; chunk.min(snap.bodies.len().max(1) as usize)];
                let mut at = 0u64;
                while at < snap.bodies.len() {
                    let n = ((snap.bodies.len() - at) as usize).min(buf.len());
                    let source = snap.bodies.clone();
                    let (filled, read) = glommio::executor()
                        .spawn_blocking(move || {
                            let mut b = buf;
                            let r = source.read_at(at, &mut b[..n]);
                            (b, r)
                        })
                        .await;
                    buf = filled;
                    read.map_err(|e| WireError::Io(std::io::Error::other(e)))?;
                    stream.write_all(&buf[..n]).await?;
                    at += n as u64;
                }
            }
            stream.flush().await?;
            let resp = read_frame::<_, PeerResponse>(stream, frame_max).await?;
            self.in_flight = false;
            Ok(resp)
        };
        let result = match super::runtime::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => {
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "peer did not answer in time");
                if self.in_flight { Err(WireError::Io(e)) } else { Err(WireError::Connect(e)) }
            }
        };
        match &result {
            Err(WireError::Connect(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => self.failed(e),
            Ok(_) => {}
        }
        result
    }

    /// A request with no trailing bytes.
    pub async fn call(&mut self, req: &PeerRequest, timeout: Duration) -> Result<PeerResponse, WireError> {
        self.call_with(req, None, timeout).await
    }
}

/// Whether the peer answered, but not as a FleetLM peer with our cluster secret: a frame
/// that cannot be ours (`"HTTP"` read as a length is 1.3 GB), or a failed handshake.
pub fn is_protocol_error(e: &WireError) -> bool {
    match e {
        WireError::TooLarge(..) | WireError::Decode(_) => true,
        WireError::Connect(io) => io.kind() == std::io::ErrorKind::PermissionDenied,
        WireError::Io(_) => false,
    }
}

/// Creates the clients of one shard's Raft group.
pub struct PeerNetwork {
    pub shard: u32,
    /// This node's core count: the guess for the target's (see the module doc).
    pub local_cores: usize,
    pub limits: PeerLimits,
}

/// openraft's client for one target node, for one shard.
pub struct PeerClient {
    shard: u32,
    target: u64,
    conn: PeerConn,
    limits: PeerLimits,
}

impl RaftNetworkFactory<C> for PeerNetwork {
    type Network = PeerClient;
    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Self::Network {
        let core = self.shard as usize % self.local_cores.max(1);
        PeerClient {
            shard: self.shard,
            target,
            conn: PeerConn::new(target, node.addr.clone(), core, self.limits.clone()),
            limits: self.limits.clone(),
        }
    }
}

fn unreachable(target: u64, e: impl std::fmt::Display) -> Unreachable<C> {
    Unreachable::new(&AnyError::error(format!("node {target}: {e}")))
}

impl PeerClient {
    /// openraft's deadline, but never below our floor: a heartbeat-sized deadline
    /// (50 ms) is shorter than one fsync under load on a busy machine, and every
    /// timeout costs a reconnect.
    fn timeout(&self, option: &RPCOption) -> Duration {
        option.hard_ttl().max(Duration::from_millis(self.limits.rpc_timeout_min_ms))
    }

    /// Sends `req` and takes the answer apart with `pick`, which returns `None` for an
    /// answer of the wrong kind. The remote's `Err(String)` and transport failures are
    /// `Unreachable` (openraft backs off); a wrong answer is a `Network` error.
    async fn rpc<T>(
        &mut self,
        req: PeerRequest,
        option: &RPCOption,
        pick: fn(PeerResponse) -> Option<Result<T, String>>,
    ) -> Result<T, RPCError<C>> {
        let target = self.target;
        let gone = |e: &dyn std::fmt::Display| RPCError::Unreachable(unreachable(target, e));
        match self.conn.call(&req, self.timeout(option)).await {
            Ok(PeerResponse::Refused(why)) => Err(gone(&why)),
            Ok(resp) => match pick(resp) {
                Some(answer) => answer.map_err(|e| gone(&e)),
                None => Err(RPCError::Network(NetworkError::new(&AnyError::error(format!(
                    "node {target} answered another request"
                ))))),
            },
            Err(WireError::Io(e) | WireError::Connect(e)) => Err(gone(&e)),
            // Not a FleetLM peer at that address: unreachable as far as Raft can tell,
            // so openraft backs off too (a `Network` error it retries at once).
            Err(e) => Err(gone(&format!("{e} (does the address point at a FleetLM peer port?)"))),
        }
    }
}

/// Votes and pre-votes are answered alike.
fn vote_answer(r: PeerResponse) -> Option<Result<VoteResponse<C>, String>> {
    if let PeerResponse::Vote(v) = r { Some(v) } else { None }
}

impl RaftNetworkV2<C> for PeerClient {
    type SnapshotData = ShardSnapshot;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C>, RPCError<C>> {
        let pick = |r| if let PeerResponse::Append(a) = r { Some(a) } else { None };
        self.rpc(PeerRequest::Append { shard: self.shard, rpc }, &option, pick).await
    }

    async fn vote(&mut self, rpc: VoteRequest<C>, option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        self.rpc(PeerRequest::Vote { shard: self.shard, rpc }, &option, vote_answer).await
    }

    /// Pre-Vote: a node that could not win (it restarted, or was cut off) asks first and
    /// does not raise its term, so it cannot depose a healthy leader when it returns.
    async fn pre_vote(&mut self, rpc: VoteRequest<C>, option: RPCOption) -> Result<VoteResponse<C>, RPCError<C>> {
        self.rpc(PeerRequest::PreVote { shard: self.shard, rpc }, &option, vote_answer).await
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<C>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<C>, RPCError<C>> {
        let pick = |r| if let PeerResponse::TransferLeader(t) = r { Some(t) } else { None };
        // openraft sends the request to every member; only the target's answer says
        // whether it takes the shard.
        let to_target = *rpc.to_node_id() == self.target;
        let answer = self.rpc(PeerRequest::TransferLeader { shard: self.shard, rpc }, &option, pick).await;
        if to_target && answer.is_err() {
            super::refused_handovers::note_leadership_refused(self.target);
        }
        answer
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<C>,
        snapshot: SnapshotOf<C, Self::SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<C>, StreamingError<C>> {
        let req = PeerRequest::Snapshot {
            shard: self.shard,
            vote,
            meta: snapshot.meta.clone(),
            index_len: snapshot.snapshot.index.len() as u64,
            bodies_len: snapshot.snapshot.bodies.len(),
            segment_size_bytes: snapshot.snapshot.bodies.segment_size_bytes(),
        };
        let timeout = Duration::from_millis(self.limits.snapshot_timeout_ms);
        let target = self.target;
        let resp = {
            let send = self.conn.call_with(&req, Some(&snapshot.snapshot), timeout);
            match futures_util::future::select(std::pin::pin!(send), std::pin::pin!(cancel)).await {
                futures_util::future::Either::Left((r, _)) => Ok(r),
                futures_util::future::Either::Right((closed, _)) => Err(closed),
            }
        };
        match resp {
            Ok(Ok(PeerResponse::Snapshot(r))) => r.map_err(|e| StreamingError::Unreachable(unreachable(target, e))),
            Ok(Ok(PeerResponse::Refused(why))) => Err(StreamingError::Unreachable(unreachable(target, why))),
            Ok(Ok(_)) => Err(StreamingError::Network(NetworkError::new(&AnyError::error(format!(
                "node {target} answered another request"
            ))))),
            Ok(Err(e)) => Err(StreamingError::Unreachable(unreachable(target, e))),
            Err(closed) => {
                // The stream stopped mid-exchange: `call_with` left `in_flight` set,
                // so the next call starts on a fresh connection.
                Err(StreamingError::Closed(closed))
            }
        }
    }
}
