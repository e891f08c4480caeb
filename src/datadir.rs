//! The data dir's layout: `fleetlm.json` (what a data dir fixes at its creation), the
//! per-core logs, and the one-time conversions between on-disk formats.
//!
//! ```text
//! <data>/fleetlm.json             {"format":3,"shards":N,"node_id":..,"body_segment_size_bytes":..,"wal_logs":L,"incarnation":..}
//! <data>/known-peers.json         the incarnation of each peer (`crate::raft::known_peers`)
//! <data>/wal-<L>/<log>/*.wal      L logs; shard s is group s of log s % L
//! <data>/shards/<s>/              raft-meta.json, snapshots, message-body segments
//! ```
//!
//! Formats: 1 (JSON Raft entries) is refused; 2 (postcard entries, one format-1 WAL per
//! shard in `shards/<s>/wal/`) is converted once at open; 3 is this layout. A format-3
//! dir opened with a different number of cores than it has logs is re-split into one
//! log per core the same way. A conversion writes the new logs into `wal-<L>.tmp`,
//! syncs them, renames the directory into place, and only then rewrites `fleetlm.json`
//! (the switch) and deletes the old logs: a crash at any point leaves either the old
//! layout (the leftovers are deleted and the conversion runs again) or the new one.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::wal::convert::{V1Log, copy_group};
use crate::wal::{Wal, WalConfig, WalError};

/// The on-disk format of a data dir (1: JSON Raft log entries; 2: postcard, one WAL
/// per shard; 3: one WAL per core, shared by its shards).
pub const DATA_FORMAT: u32 = 3;

/// Fixed at first start and kept in the data dir.
#[derive(Debug, Serialize, Deserialize)]
struct Layout {
    format: u32,
    shards: u32,
    /// The node this data dir belongs to (a data dir never changes identity).
    #[serde(default)]
    node_id: Option<u64>,
    /// Message-body segment size (absent: the default of the time, 64 MiB).
    #[serde(default)]
    body_segment_size_bytes: Option<u64>,
    /// Number of logs (format 3): the cores of the node that wrote them.
    #[serde(default)]
    wal_logs: Option<u32>,
    /// Random, drawn when the data dir is created (or first opened by a build that has
    /// them): peers tell a node that lost its data from the one they knew by it.
    #[serde(default)]
    incarnation: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
#[error("data dir {dir}: {why}")]
pub struct DataDirError {
    pub dir: PathBuf,
    pub why: String,
}

/// What a data dir fixes.
#[derive(Debug, Clone, Copy)]
pub struct Fixed {
    pub shards: u32,
    pub body_segment_size_bytes: u64,
    /// Number of logs (`wal_dir`); equals the node's cores after `load`.
    pub wal_logs: u32,
    /// This data dir's incarnation (`crate::raft::known_peers`); never 0.
    pub incarnation: u64,
}

fn new_incarnation() -> u64 {
    rand::random::<u64>().max(1)
}

/// The directory of log `log` among `logs`.
pub fn wal_dir(data_dir: &Path, logs: u32, log: u32) -> PathBuf {
    logs_dir(data_dir, logs).join(log.to_string())
}

fn logs_dir(data_dir: &Path, logs: u32) -> PathBuf {
    data_dir.join(format!("wal-{logs}"))
}

/// The log that holds shard `shard`'s Raft log.
pub fn log_of(shard: u32, logs: u32) -> u32 {
    shard % logs.max(1)
}

/// Opens (creating, converting or re-splitting as needed) the data dir for a node with
/// `cores` executors.
pub fn load(
    dir: &Path,
    wanted: Option<u32>,
    wanted_body_segment: Option<u64>,
    cores: usize,
    node_id: u64,
    wal: &WalConfig,
) -> Result<Fixed, DataDirError> {
    let err = |why: String| DataDirError { dir: dir.to_owned(), why };
    let cores = u32::try_from(cores.max(1)).map_err(|_| err("too many cores".into()))?;
    std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    let path = dir.join("fleetlm.json");
    let mut layout = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Layout>(&bytes).map_err(|e| err(format!("fleetlm.json: {e}")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let layout = Layout {
                format: DATA_FORMAT,
                shards: wanted.unwrap_or(2 * cores).max(1),
                node_id: Some(node_id),
                body_segment_size_bytes: Some(wanted_body_segment.unwrap_or(crate::config::BODY_SEGMENT_SIZE_BYTES)),
                wal_logs: Some(cores),
                incarnation: Some(new_incarnation()),
            };
            write_layout(dir, &layout).map_err(err)?;
            layout
        }
        Err(e) => return Err(err(e.to_string())),
    };
    if layout.format != 2 && layout.format != DATA_FORMAT {
        return Err(err(format!(
            "holds data format {} and this FleetLM reads formats 2 (converted at open) and {DATA_FORMAT}; start it \
             on an empty data dir",
            layout.format
        )));
    }
    if let Some(w) = wanted.filter(|&w| w != layout.shards) {
        return Err(err(format!("was created with {} shards; --shards {w} cannot change that", layout.shards)));
    }
    if let Some(n) = layout.node_id.filter(|&n| n != node_id) {
        return Err(err(format!("belongs to node {n}; it cannot start as node {node_id}")));
    }
    let body = layout.body_segment_size_bytes.unwrap_or(crate::config::BODY_SEGMENT_SIZE_BYTES);
    if let Some(w) = wanted_body_segment.filter(|&w| w != body) {
        return Err(err(format!(
            "was created with {body}-byte body segments; --body-segment-size-bytes {w} cannot change that"
        )));
    }
    remove_leftovers(dir, &layout).map_err(err)?;
    if layout.incarnation.is_none() {
        // Written by a build before incarnations: this data dir is the one its peers
        // knew (none of them has recorded an incarnation for it yet).
        layout.incarnation = Some(new_incarnation());
        write_layout(dir, &layout).map_err(err)?;
    }
    let current = layout.wal_logs.filter(|_| layout.format == DATA_FORMAT);
    if current != Some(cores) {
        match current {
            None => eprintln!(
                "fleetlm: data dir {}: converting format 2 (one log per shard) to format {DATA_FORMAT} (one log per \
                 core, {cores} logs)",
                dir.display()
            ),
            Some(old) => {
                eprintln!("fleetlm: data dir {}: re-splitting {old} logs into {cores} (one per core)", dir.display())
            }
        }
        convert(dir, &layout, cores, wal).map_err(|e| err(format!("converting the logs: {e}")))?;
        let old_format = layout.format;
        layout.format = DATA_FORMAT;
        layout.wal_logs = Some(cores);
        write_layout(dir, &layout).map_err(err)?;
        if old_format == 2 {
            for s in 0..layout.shards {
                remove_dir_if_present(&dir.join("shards").join(s.to_string()).join("wal")).map_err(err)?;
            }
        }
        remove_leftovers(dir, &layout).map_err(err)?;
    }
    let incarnation = layout.incarnation.expect("set above");
    Ok(Fixed { shards: layout.shards, body_segment_size_bytes: body, wal_logs: cores, incarnation })
}

fn write_layout(dir: &Path, layout: &Layout) -> Result<(), String> {
    let bytes = serde_json::to_vec(layout).map_err(|e| e.to_string())?;
    crate::files::replace_durably(&dir.join("fleetlm.json"), &bytes).map_err(|e| e.to_string())
}

/// Deletes log directories that the layout does not name (the old logs after a
/// switch, a conversion cut short by a crash).
fn remove_leftovers(dir: &Path, layout: &Layout) -> Result<(), String> {
    let live = (layout.format == DATA_FORMAT).then(|| format!("wal-{}", layout.wal_logs.unwrap_or(0)));
    let entries = std::fs::read_dir(dir).map_err(|e| e.to_string())?;
    let mut removed = false;
    for entry in entries {
        let entry = entry.map_err(|e| e.to_string())?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("wal-") && Some(&name) != live.as_ref() {
            remove_dir_if_present(&entry.path())?;
            removed = true;
        }
    }
    if removed {
        crate::files::sync_dir(dir).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn remove_dir_if_present(p: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("removing {}: {e}", p.display())),
    }
}

/// Writes every shard's live log entries into `cores` new logs and renames them into
/// place as `wal-<cores>` (the caller then switches `fleetlm.json` to them).
fn convert(dir: &Path, layout: &Layout, cores: u32, wal: &WalConfig) -> Result<(), WalError> {
    let tmp = dir.join(format!("wal-{cores}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    let mut logs = Vec::new();
    for l in 0..cores {
        logs.push(Wal::open(&tmp.join(l.to_string()), wal.clone())?.0);
    }
    match layout.wal_logs.filter(|_| layout.format == DATA_FORMAT) {
        None => {
            for s in 0..layout.shards {
                let src =
                    V1Log::read(&dir.join("shards").join(s.to_string()).join("wal"), wal.record_payload_max_bytes)?;
                src.copy_into(&mut logs[log_of(s, cores) as usize], s)?;
            }
        }
        Some(old) => {
            for l in 0..old {
                let (src, _) = Wal::open(&wal_dir(dir, old, l), wal.clone())?;
                for s in (0..layout.shards).filter(|&s| log_of(s, old) == l) {
                    copy_group(&src, &mut logs[log_of(s, cores) as usize], s)?;
                }
            }
        }
    }
    for log in &mut logs {
        log.sync()?;
    }
    drop(logs);
    let dst = logs_dir(dir, cores);
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::rename(&tmp, &dst).map_err(|e| WalError::io("rename converted logs", &dst, e))?;
    crate::files::sync_dir(dir).map_err(|e| WalError::io("fsync data dir", dir, e))?;
    Ok(())
}
