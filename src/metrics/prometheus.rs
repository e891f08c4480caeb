//! `GET /metrics`: the node's counters, latency histograms and per-shard Raft state in
//! the Prometheus text exposition format (version 0.0.4).
use std::fmt::Write;

use serde_json::Value;

use super::{Counters, Histograms};

/// A per-shard gauge: name, help, and how to read it from a shard's status.
type Gauge = (&'static str, &'static str, fn(&Value) -> Option<f64>);

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Node-wide values shown beside the counters and histograms.
pub struct NodeState {
    pub node_id: u64,
    /// Whether `/health/ready` would answer 200.
    pub ready: bool,
    /// Shards whose Raft core a fatal storage error stopped.
    pub shards_stopped: usize,
    /// Shards re-opened after such a stop since the node started.
    pub shard_restarts: usize,
    /// Free space of the data dir's filesystem (`None`: statvfs failed).
    pub disk_free_bytes: Option<u64>,
    /// Below this free space writes are refused (0: never).
    pub disk_reserve_bytes: u64,
}

/// Renders everything. `shards`: the `ShardStatus` JSON of each shard (as in
/// `GET /v1/cluster`).
pub fn render(node: &NodeState, counters: &Counters, hists: &Histograms, shards: &[Value]) -> String {
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# HELP fleetlm_http_requests_total HTTP requests answered, by route and status.");
    let _ = writeln!(w, "# TYPE fleetlm_http_requests_total counter");
    for ((route, status), n) in &counters.requests {
        let _ = writeln!(w, "fleetlm_http_requests_total{{route=\"{}\",status=\"{status}\"}} {n}", escape(route));
    }
    let _ = writeln!(w, "# HELP fleetlm_http_connections_open Open HTTP connections.");
    let _ = writeln!(w, "# TYPE fleetlm_http_connections_open gauge");
    let _ = writeln!(w, "fleetlm_http_connections_open {}", counters.connections_open);
    let st = &counters.streams;
    for (name, kind, help, value) in [
        ("fleetlm_streams_open", "gauge", "Live streams being served.", st.open as f64),
        ("fleetlm_stream_events_sent_total", "counter", "Events written to stream clients.", st.events_sent as f64),
        ("fleetlm_stream_gaps_total", "counter", "Streams closed with a gap event.", st.gaps as f64),
        ("fleetlm_streams_refused_total", "counter", "Streams refused over a subscriber limit.", st.refused as f64),
    ] {
        let _ = writeln!(w, "# HELP {name} {help}");
        let _ = writeln!(w, "# TYPE {name} {kind}");
        let _ = writeln!(w, "{name} {value}");
    }

    let _ = writeln!(
        w,
        "# HELP fleetlm_latency_microseconds Latency by route (http.*) and append stage; wal.sync_batch_records counts records."
    );
    let _ = writeln!(w, "# TYPE fleetlm_latency_microseconds summary");
    for (name, h) in hists {
        let name = escape(name);
        for q in [0.5, 0.9, 0.99, 0.999] {
            let _ = writeln!(
                w,
                "fleetlm_latency_microseconds{{name=\"{name}\",quantile=\"{q}\"}} {}",
                h.value_at_quantile(q)
            );
        }
        let _ = writeln!(w, "fleetlm_latency_microseconds_sum{{name=\"{name}\"}} {:.0}", h.mean() * h.len() as f64);
        let _ = writeln!(w, "fleetlm_latency_microseconds_count{{name=\"{name}\"}} {}", h.len());
    }
    if let Some(h) = hists.get("wal.sync") {
        let _ = writeln!(
            w,
            "# HELP fleetlm_wal_syncs_total Group-commit syncs (fdatasync rounds) of the WALs, one per core (label core)."
        );
        let _ = writeln!(w, "# TYPE fleetlm_wal_syncs_total counter");
        let _ = writeln!(w, "fleetlm_wal_syncs_total {}", h.len());
        for (name, h) in hists.iter().filter(|(n, _)| n.starts_with("wal.sync.core")) {
            let core = escape(name.trim_start_matches("wal.sync.core"));
            let _ = writeln!(w, "fleetlm_wal_syncs_total{{core=\"{core}\"}} {}", h.len());
        }
        let _ =
            writeln!(w, "# HELP fleetlm_wal_records_synced_total Records made durable by those syncs (label core).");
        let _ = writeln!(w, "# TYPE fleetlm_wal_records_synced_total counter");
        for (name, h) in hists.iter().filter(|(n, _)| n.starts_with("wal.sync_batch_records.core")) {
            let core = escape(name.trim_start_matches("wal.sync_batch_records.core"));
            let _ = writeln!(w, "fleetlm_wal_records_synced_total{{core=\"{core}\"}} {:.0}", h.mean() * h.len() as f64);
        }
    }
    if let Some(h) = hists.get("write.raft_commit") {
        let _ =
            writeln!(w, "# HELP fleetlm_writes_committed_total Writes committed through Raft on this node as leader.");
        let _ = writeln!(w, "# TYPE fleetlm_writes_committed_total counter");
        let _ = writeln!(w, "fleetlm_writes_committed_total {}", h.len());
    }

    let gauges: [Gauge; 7] = [
        ("fleetlm_raft_term", "Current Raft term of the shard on this node.", |s| s["term"].as_f64()),
        ("fleetlm_raft_commit_index", "Raft commit index of the shard.", |s| s["commit_index"].as_f64()),
        ("fleetlm_raft_applied_index", "Last log index applied to the state machine.", |s| s["applied_index"].as_f64()),
        ("fleetlm_raft_leader", "Node id of the shard's leader (0: none known).", |s| {
            Some(s["leader"].as_f64().unwrap_or(0.0))
        }),
        ("fleetlm_raft_is_leader", "1 when this node leads the shard.", |s| {
            Some(if s["state"] == "Leader" { 1.0 } else { 0.0 })
        }),
        ("fleetlm_contexts", "Contexts of the shard on this replica.", |s| s["contexts"].as_f64()),
        (
            "fleetlm_contexts_hot",
            "Contexts of the shard in memory (the others are read from their checkpoint record when used).",
            |s| s["hot_contexts"].as_f64(),
        ),
    ];
    for (name, help, get) in gauges {
        let _ = writeln!(w, "# HELP {name} {help}");
        let _ = writeln!(w, "# TYPE {name} gauge");
        for s in shards {
            if let (Some(shard), Some(v)) = (s["shard"].as_u64(), get(s)) {
                let _ = writeln!(w, "{name}{{shard=\"{shard}\"}} {v}");
            }
        }
    }
    let _ = writeln!(w, "# HELP fleetlm_ready 1 when every shard has a leader this node hears from.");
    let _ = writeln!(w, "# TYPE fleetlm_ready gauge");
    let _ = writeln!(w, "fleetlm_ready {}", u8::from(node.ready));
    let _ = writeln!(
        w,
        "# HELP fleetlm_shards_stopped Shards whose Raft core a fatal storage error stopped (re-opened in-process with backoff)."
    );
    let _ = writeln!(w, "# TYPE fleetlm_shards_stopped gauge");
    let _ = writeln!(w, "fleetlm_shards_stopped {}", node.shards_stopped);
    let _ = writeln!(w, "# HELP fleetlm_shard_restarts_total Shards re-opened in-process after a fatal storage error.");
    let _ = writeln!(w, "# TYPE fleetlm_shard_restarts_total counter");
    let _ = writeln!(w, "fleetlm_shard_restarts_total {}", node.shard_restarts);
    if let Some(free) = node.disk_free_bytes {
        let _ = writeln!(w, "# HELP fleetlm_disk_free_bytes Free space of the data dir's filesystem.");
        let _ = writeln!(w, "# TYPE fleetlm_disk_free_bytes gauge");
        let _ = writeln!(w, "fleetlm_disk_free_bytes {free}");
    }
    let _ = writeln!(w, "# HELP fleetlm_disk_reserve_bytes Writes get 503 while free space is below this (0: never).");
    let _ = writeln!(w, "# TYPE fleetlm_disk_reserve_bytes gauge");
    let _ = writeln!(w, "fleetlm_disk_reserve_bytes {}", node.disk_reserve_bytes);
    let _ = writeln!(w, "# HELP fleetlm_node_id This node's id.");
    let _ = writeln!(w, "# TYPE fleetlm_node_id gauge");
    let _ = writeln!(w, "fleetlm_node_id {}", node.node_id);
    out
}
