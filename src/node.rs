//! Starting a node: one pinned glommio executor per core, each opening its shards,
//! joining the cross-core mesh, and accepting HTTP connections on the shared port
//! (glommio binds with SO_REUSEPORT, so the kernel spreads connections over cores).
//! The one place that wires the layers together: `http` connections handed to `api`,
//! which runs calls through `shard`.
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use openraft::BasicNode;

use crate::config::GLOMMIO_IO_MEMORY_BYTES;
pub use crate::config::ServerConfig;
use crate::raft::network::core_port_addr;

use crate::shard::core::{CoreCtx, MeshMsg, NodeShared, Readiness, serve_mesh};
use crate::shard::placement::core_of;

/// How long a port may keep answering at startup before we call it taken.
const PORT_PROBE_MS: u64 = 3_000;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("data dir {0}: {1}")]
    DataDir(PathBuf, String),
    #[error("starting executor {0}: {1}")]
    Executor(usize, String),
    #[error("cannot listen on {0}: {1}")]
    Port(SocketAddr, String),
    #[error("{0}")]
    Resources(String),
    #[error("core {0} stopped: {1}")]
    Core(usize, String),
}

/// Raises this process's soft limit of open files to its hard limit; the new soft limit.
fn raise_nofile_limit() -> std::io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: setrlimit reads the struct; raising the soft limit up to the hard one
        // is always allowed.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    Ok(lim.rlim_cur)
}

/// Client connections per core that the descriptor limit leaves room for, after the
/// reserve for storage (every shard's segment files) and peer links: running out of
/// descriptors while a shard opens its next segment would stop the shard, so clients
/// are refused first.
fn connection_cap_per_core(nofile: u64, config: &ServerConfig, cores: usize, shards: u32) -> usize {
    use crate::config::{FD_RESERVE_BASE, FD_RESERVE_PER_SHARD};
    let peers = (config.peer.connections_max_per_core as u64 + config.peers.len() as u64 * 2) * cores as u64;
    let reserve = FD_RESERVE_BASE + FD_RESERVE_PER_SHARD * u64::from(shards) + peers;
    let for_clients = nofile.saturating_sub(reserve) / cores.max(1) as u64;
    config.http.connections_max_per_core.min(usize::try_from(for_clients).unwrap_or(usize::MAX))
}

/// Runs the node until a core fails (returns the error) or a signal stops it (the
/// process exits from `crate::shutdown`).
pub fn serve(config: ServerConfig) -> Result<(), ServeError> {
    // Before any thread starts: they inherit the blocked signals, which only the
    // signal thread then receives.
    crate::shutdown::install(std::time::Duration::from_millis(config.shutdown_grace_ms))
        .map_err(|e| ServeError::Resources(format!("handling SIGTERM and SIGINT: {e}")))?;
    let cores = config.cores.max(1);
    let fixed = crate::datadir::load(
        &config.data_dir,
        config.shards,
        config.body_segment_size_bytes,
        cores,
        config.node_id,
        &config.wal,
    )
    .map_err(|e| ServeError::DataDir(e.dir, e.why))?;
    let shard_count = fixed.shards;
    // From here on the data dir's value.
    let mut config = config;
    match raise_nofile_limit() {
        Ok(nofile) => {
            let cap = connection_cap_per_core(nofile, &config, cores, shard_count);
            if cap < config.http.connections_max_per_core {
                eprintln!(
                    "fleetlm: {nofile} open files allowed: at most {cap} client connections per core (of {}), the \
                     rest kept for storage and peers; raise `ulimit -n` for more",
                    config.http.connections_max_per_core
                );
            }
            if cap == 0 {
                return Err(ServeError::Resources(format!(
                    "{nofile} open files allowed leave none for client connections; raise `ulimit -n`"
                )));
            }
            config.http.connections_max_per_core = cap;
        }
        Err(e) => eprintln!("fleetlm: cannot read the open-files limit ({e}); connection cap as configured"),
    }
    config.body_segment_size_bytes = Some(fixed.body_segment_size_bytes);
    let me = crate::raft::known_peers::Identity { node_id: config.node_id, incarnation: fixed.incarnation };
    let book = crate::raft::known_peers::PeerBook::open(&config.data_dir, me)
        .map_err(|e| ServeError::DataDir(config.data_dir.clone(), e.to_string()))?;
    config.peer.peer_book = Some(crate::raft::known_peers::SharedPeerBook(std::sync::Arc::new(book)));
    // A message body is at most one log record: bodies must fit in a body segment, or
    // applying a valid command would fail and stop its shard.
    if fixed.body_segment_size_bytes < u64::from(config.wal.record_payload_max_bytes) {
        return Err(ServeError::DataDir(
            config.data_dir.clone(),
            format!(
                "its {}-byte body segments cannot hold a message of up to {} bytes (the log's record limit, from \
                 --body-max-bytes); lower --body-max-bytes",
                fixed.body_segment_size_bytes, config.wal.record_payload_max_bytes
            ),
        ));
    }
    // glommio binds with SO_REUSEPORT, which would let a second server on the same
    // port silently take half of the connections: make sure the ports are ours.
    let mut ports = vec![config.listen];
    let peer_ports: Vec<SocketAddr> =
        config.peer_listen.map(|base| (0..cores).map(|c| core_port_addr(base, c)).collect()).unwrap_or_default();
    ports.extend(&peer_ports);
    if let Some(base) = config.core_listen {
        ports.extend((0..cores).map(|c| core_port_addr(base, c)));
    }
    // Two of these ports the same would share connections between two listeners
    // (SO_REUSEPORT): every other connection would reach the wrong one.
    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < ports.len() {
        let why = if peer_ports.contains(&config.listen) {
            "the HTTP port is one of the peer ports (--peer-listen + core)"
        } else {
            "the HTTP port, the peer ports (--peer-listen + core) and the core ports (--core-listen + core) overlap"
        };
        return Err(ServeError::Port(config.listen, why.into()));
    }
    // A bind probe cannot tell (connections in TIME_WAIT of our own previous run block
    // a plain bind); a live listener is found by connecting to it.
    for addr in ports {
        let mut probe = addr;
        if probe.ip().is_unspecified() {
            probe.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        // A process that just died can keep its listener for a moment (io_uring tears
        // down its files asynchronously after exit): only a listener that stays is one.
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(PORT_PROBE_MS);
        while std::net::TcpStream::connect_timeout(&probe, std::time::Duration::from_millis(200)).is_ok() {
            if std::time::Instant::now() > deadline {
                return Err(ServeError::Port(addr, "another process is listening there".into()));
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    let mesh: MeshBuilder<MeshMsg, _> = MeshBuilder::full(cores, config.serve.mesh_channel_capacity);
    let ready = Arc::new(Readiness {
        opened: AtomicUsize::new(0),
        with_leader: (0..cores).map(|_| AtomicUsize::new(0)).collect(),
        stopped: (0..cores).map(|_| AtomicUsize::new(0)).collect(),
        restarts: AtomicUsize::new(0),
    });
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let offload = crate::offload::Offload::start(cores, crate::config::OFFLOAD_QUEUE_PER_CORE * cores)
        .map_err(|e| ServeError::Resources(format!("starting the offload threads: {e}")))?;
    let answers = crate::budget::Budget::new(config.serve.response_buffer_max_bytes);
    let shared = NodeShared { ready, offload, answers };
    let mut handles = Vec::new();
    // The first core to stop (say, its peer port is taken) stops the node: half a node,
    // with some shards served and others not, must not look alive.
    let (stopped_tx, stopped_rx) = std::sync::mpsc::channel::<(usize, Result<(), String>)>();
    for i in 0..cores {
        let stopped_tx = stopped_tx.clone();
        let (config, mesh, shared) = (config.clone(), mesh.clone(), shared.clone());
        // Executor i on CPU first_cpu + i: several nodes on one machine (a local
        // cluster) must not all pin their first executor to CPU 0.
        let placement = if config.pin_executors && cores <= cpus {
            Placement::Fixed((config.first_cpu + i) % cpus)
        } else {
            Placement::Unbound
        };
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("fleetlm-core-{i}"))
            .io_memory(GLOMMIO_IO_MEMORY_BYTES)
            .spawn(move || async move {
                let mut report = CoreStopped { core: i, tx: Some(stopped_tx) };
                let result = run_core(config, cores, shard_count, mesh, shared).await;
                report.send(result.clone());
                result
            })
            .map_err(|e| ServeError::Executor(i, e.to_string()))?;
        handles.push(handle);
    }
    drop(stopped_tx);
    for _ in 0..cores {
        match stopped_rx.recv() {
            Ok((_, Ok(()))) => {}
            Ok((i, Err(e))) => return Err(ServeError::Core(i, e)),
            Err(_) => break,
        }
    }
    for (i, h) in handles.into_iter().enumerate() {
        if let Err(e) = h.join() {
            return Err(ServeError::Core(i, e.to_string()));
        }
    }
    Ok(())
}

/// Tells `serve` that a core stopped: with its result, or (dropped while a panic
/// unwinds the executor) as a failure.
struct CoreStopped {
    core: usize,
    tx: Option<std::sync::mpsc::Sender<(usize, Result<(), String>)>>,
}

impl CoreStopped {
    fn send(&mut self, result: Result<(), String>) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send((self.core, result));
        }
    }
}

impl Drop for CoreStopped {
    fn drop(&mut self) {
        self.send(Err("the executor panicked".into()));
    }
}

async fn run_core(
    config: ServerConfig,
    cores: usize,
    shard_count: u32,
    mesh: MeshBuilder<MeshMsg, glommio::channels::channel_mesh::Full>,
    shared: NodeShared,
) -> Result<(), String> {
    let (senders, receivers) = mesh.join().await.map_err(|_| "joining the cross-core mesh".to_owned())?;
    let core = senders.peer_id();
    // Bind before the (possibly slow) shard recovery, so that a port clash fails fast.
    let peer_listener = match config.peer_listen {
        Some(base) => {
            let addr = core_port_addr(base, core);
            Some(glommio::net::TcpListener::bind(addr).map_err(|e| format!("bind peer port {addr}: {e}"))?)
        }
        None => None,
    };
    let initial_members: Option<BTreeMap<u64, BasicNode>> = if config.peers.is_empty() {
        let addr = config.peer_listen.map(|a| a.to_string()).unwrap_or_default();
        Some(BTreeMap::from([(config.node_id, BasicNode { addr })]))
    } else if config.peers.contains_key(&config.node_id) {
        Some(config.peers.iter().map(|(&id, addr)| (id, BasicNode { addr: addr.clone() })).collect())
    } else {
        None
    };
    let opener = crate::shard::healing::ShardOpener::new(&config, cores, core);
    let mut shards = HashMap::new();
    for s in (0..shard_count).filter(|&s| core_of(s, cores) == core) {
        let shard = opener.open(s, initial_members.clone()).await.map_err(|e| format!("shard {s}: {e}"))?;
        shared.ready.opened.fetch_add(1, Ordering::AcqRel);
        shards.insert(s, Rc::new(shard));
    }
    let ctx = Rc::new(CoreCtx::new(&config, core, shard_count, shards, opener, Some(senders), shared));
    serve_mesh(ctx.clone(), receivers);
    if let Some(listener) = peer_listener {
        glommio::spawn_local(crate::shard::peer::serve_peers(ctx.clone(), listener)).detach();
    }
    glommio::spawn_local(crate::shard::leaders::watch_leaders(ctx.clone())).detach();
    glommio::spawn_local(stop_when_asked(ctx.clone())).detach();
    glommio::spawn_local(crate::shard::log_pressure::snapshot_shards_pinning_the_log(ctx.clone())).detach();
    glommio::spawn_local(crate::shard::memory_pressure::snapshot_shards_over_their_memory_budget(ctx.clone())).detach();
    if core == 0
        && let Some(path) = config.latency_log.clone()
    {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("latency log {}: {e}", path.display()))?;
        let interval = std::time::Duration::from_millis(config.latency_interval_ms.max(100));
        let ctx = ctx.clone();
        glommio::spawn_local(async move {
            let next = || {
                let ctx = ctx.clone();
                async move { ctx.collect_metrics(true).await.histograms }
            };
            if let Err(e) = crate::metrics::interval_log::run(file, interval, ctx.node_id, next).await {
                eprintln!("latency log {}: {e}; no longer written", path.display());
            }
        })
        .detach();
    }
    let listener =
        glommio::net::TcpListener::bind(config.listen).map_err(|e| format!("bind {}: {e}", config.listen))?;
    let http = Rc::new(config.http.clone());
    // Connections of this core, from either port (one cap for both).
    let open = Rc::new(std::cell::Cell::new(0usize));
    if let Some(base) = config.core_listen {
        let addr = core_port_addr(base, core);
        let own = glommio::net::TcpListener::bind(addr).map_err(|e| format!("bind core port {addr}: {e}"))?;
        glommio::spawn_local(accept_clients(own, ctx.clone(), http.clone(), open.clone(), format!("core {core} port")))
            .detach();
    }
    accept_clients(listener, ctx, http, open, format!("core {core}")).await;
    Ok(())
}

/// This core's part of a stop (`crate::shutdown`), once one is requested: sends every
/// stream of its replicas its final `end` event (`shutdown`), so that clients resume
/// elsewhere, then hands the shards it leads to other voters until the process exits.
async fn stop_when_asked(ctx: Rc<CoreCtx>) {
    while !crate::shutdown::requested() {
        glommio::timer::sleep(std::time::Duration::from_millis(crate::config::SHUTDOWN_POLL_MS)).await;
    }
    for (_, shard) in ctx.shards() {
        shard.state.feed().end_all(crate::raft::feed::EndReason::Shutdown);
    }
    crate::shard::leaders::hand_over_leadership_until_exit(ctx).await;
}

/// Serves the client connections of `listener` on this core, while it has fewer than
/// `connections_max_per_core` (counted in `open`, shared by the core's listeners).
async fn accept_clients(
    listener: glommio::net::TcpListener,
    ctx: Rc<CoreCtx>,
    http: Rc<crate::config::HttpLimits>,
    open: Rc<std::cell::Cell<usize>>,
    what: String,
) {
    let mut pacing = crate::accept::AcceptPacing::default();
    loop {
        let stream = crate::accept::next_connection(&listener, &mut pacing, &what).await;
        if open.get() >= http.connections_max_per_core {
            drop(stream); // over the limit: refuse by closing
            continue;
        }
        open.set(open.get() + 1);
        crate::metrics::connections_delta(1);
        let (ctx, http, open) = (ctx.clone(), http.clone(), open.clone());
        glommio::spawn_local(async move {
            let handler = Rc::new(move |req| {
                let ctx = ctx.clone();
                async move { crate::api::handle(req, &ctx).await }
            });
            crate::http::conn::serve_connection(stream, http, handler).await;
            open.set(open.get() - 1);
            crate::metrics::connections_delta(-1);
        })
        .detach();
    }
}
