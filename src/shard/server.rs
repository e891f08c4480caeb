//! Starting a node: one pinned glommio executor per core, each opening its shards,
//! joining the cross-core mesh, and accepting HTTP connections on the shared port
//! (glommio binds with SO_REUSEPORT, so the kernel spreads connections over cores).
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use serde::{Deserialize, Serialize};

use super::core::{CoreCtx, MeshMsg, serve_mesh};
use super::placement::core_of;
use crate::config::{GLOMMIO_IO_MEMORY_BYTES, HttpLimits, RaftTimings, ServeLimits, StoreLimits, WalConfig};
use crate::raft::Shard;

/// Everything `fleetlm serve` needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub cores: usize,
    /// Shards at first start; afterwards the data dir's value wins (must match if given).
    pub shards: Option<u32>,
    pub node_id: u64,
    pub api_key: Option<String>,
    pub http: HttpLimits,
    pub store: StoreLimits,
    pub serve: ServeLimits,
    pub wal: WalConfig,
    pub raft: RaftTimings,
}

/// Fixed at first start and kept in the data dir.
#[derive(Debug, Serialize, Deserialize)]
struct Layout {
    format: u32,
    shards: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("data dir {0}: {1}")]
    DataDir(PathBuf, String),
    #[error("starting executor {0}: {1}")]
    Executor(usize, String),
    #[error("core {0} stopped: {1}")]
    Core(usize, String),
}

fn load_layout(dir: &Path, wanted: Option<u32>, cores: usize) -> Result<u32, ServeError> {
    let err = |e: String| ServeError::DataDir(dir.to_owned(), e);
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let path = dir.join("fleetlm.json");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let layout: Layout = serde_json::from_slice(&bytes).map_err(|e| err(format!("fleetlm.json: {e}")))?;
            if let Some(w) = wanted.filter(|&w| w != layout.shards) {
                return Err(err(format!("was created with {} shards; --shards {w} cannot change that", layout.shards)));
            }
            Ok(layout.shards)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let shards = wanted.unwrap_or((2 * cores) as u32).max(1);
            let bytes = serde_json::to_vec(&Layout { format: 1, shards }).map_err(|e| err(e.to_string()))?;
            crate::raft::durable_file::replace_durably(&path, &bytes).map_err(|e| err(e.to_string()))?;
            Ok(shards)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// Runs the node until a core fails. Returns only on error.
pub fn serve(config: ServerConfig) -> Result<(), ServeError> {
    let cores = config.cores.max(1);
    let shard_count = load_layout(&config.data_dir, config.shards, cores)?;
    let mesh: MeshBuilder<MeshMsg, _> = MeshBuilder::full(cores, config.serve.mesh_channel_capacity);
    let ready = Arc::new(AtomicUsize::new(0));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut handles = Vec::new();
    for i in 0..cores {
        let (config, mesh, ready) = (config.clone(), mesh.clone(), ready.clone());
        let placement = if cores <= cpus { Placement::Fixed(i) } else { Placement::Unbound };
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("fleetlm-core-{i}"))
            .io_memory(GLOMMIO_IO_MEMORY_BYTES)
            .spawn(move || async move { run_core(config, cores, shard_count, mesh, ready).await })
            .map_err(|e| ServeError::Executor(i, e.to_string()))?;
        handles.push(handle);
    }
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ServeError::Core(i, e)),
            Err(e) => return Err(ServeError::Core(i, e.to_string())),
        }
    }
    Ok(())
}

async fn run_core(
    config: ServerConfig,
    cores: usize,
    shard_count: u32,
    mesh: MeshBuilder<MeshMsg, glommio::channels::channel_mesh::Full>,
    ready: Arc<AtomicUsize>,
) -> Result<(), String> {
    let (senders, receivers) = mesh.join().await.map_err(|_| "joining the cross-core mesh".to_owned())?;
    let core = senders.peer_id();
    let mut shards = HashMap::new();
    for s in (0..shard_count).filter(|&s| core_of(s, cores) == core) {
        let dir = config.data_dir.join("shards").join(s.to_string());
        let shard = Shard::open_single(&dir, config.node_id, config.wal.clone(), config.store.clone(), &config.raft)
            .await
            .map_err(|e| format!("shard {s}: {e}"))?;
        let deadline = std::time::Duration::from_secs(30);
        shard
            .raft
            .wait(Some(deadline))
            .metrics(|m| m.current_leader.is_some(), "shard has a leader")
            .await
            .map_err(|e| format!("shard {s}: no leader: {e}"))?;
        ready.fetch_add(1, Ordering::AcqRel);
        shards.insert(s, Rc::new(shard));
    }
    let ctx = Rc::new(CoreCtx {
        node_id: config.node_id,
        core,
        cores,
        shard_count,
        shards,
        mesh: Some(senders),
        store_limits: config.store.clone(),
        serve_limits: config.serve.clone(),
        api_key: config.api_key.clone(),
        ready,
    });
    serve_mesh(ctx.clone(), receivers);
    let listener =
        glommio::net::TcpListener::bind(config.listen).map_err(|e| format!("bind {}: {e}", config.listen))?;
    let http = Rc::new(config.http.clone());
    let open = Rc::new(std::cell::Cell::new(0usize));
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("core {core}: accept: {e}");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if open.get() >= http.connections_max_per_core {
            drop(stream); // over the limit: refuse by closing
            continue;
        }
        open.set(open.get() + 1);
        let (ctx, http, open) = (ctx.clone(), http.clone(), open.clone());
        glommio::spawn_local(async move {
            let handler = Rc::new(move |req| {
                let ctx = ctx.clone();
                async move { crate::api::handle(req, &ctx).await }
            });
            crate::http::conn::serve_connection(stream, http, handler).await;
            open.set(open.get() - 1);
        })
        .detach();
    }
}
