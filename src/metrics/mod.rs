//! Latency recorders: one set of hdrhistograms per executor thread (no locks, no
//! sharing: a core records into its own), merged across cores on demand.
//!
//! Every histogram is kept twice: `total` since start (for `GET /v1/admin/latency`) and
//! `interval` since the last interval-log write (`--latency-log`), which is taken and
//! reset by the writer. Values are µs unless the name ends otherwise (`…_records`).
//! Names: `http.<route>` per route, `append.queue_wait` (HTTP request parsed → the call
//! starts on the shard's core, mesh hop included), `write.raft_commit` (proposal →
//! applied, i.e. fsync'd on a quorum), `wal.sync` (one group-commit sync) and
//! `wal.sync_batch_records` (records made durable by one sync).
pub mod interval_log;
pub mod prometheus;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::config::LATENCY_HISTOGRAM_MAX_US;

/// Histograms by name.
pub type Histograms = BTreeMap<String, Histogram<u64>>;

#[derive(Default)]
struct Recorder {
    total: BTreeMap<&'static str, Histogram<u64>>,
    interval: BTreeMap<&'static str, Histogram<u64>>,
    requests: BTreeMap<(&'static str, u16), u64>,
    connections_open: i64,
    streams: StreamCounters,
}

/// Live streams (`crate::shard::stream`) of one core (or, merged, of a node).
#[derive(Debug, Default, Clone, Copy)]
pub struct StreamCounters {
    pub open: i64,
    /// Events written to stream clients (replayed and live; pings not counted).
    pub events_sent: u64,
    /// Streams closed with `gap` (a client too far behind, or a cursor older than the
    /// history kept).
    pub gaps: u64,
    /// Streams refused with 429 (over a subscriber limit).
    pub refused: u64,
}

/// Counts of one core (or, merged, of a node).
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Requests answered, by route label and status.
    pub requests: BTreeMap<(String, u16), u64>,
    pub connections_open: i64,
    pub streams: StreamCounters,
}

/// Counts one answered request.
pub fn count_request(route: &'static str, status: u16) {
    RECORDER.with(|r| *r.borrow_mut().requests.entry((route, status)).or_insert(0) += 1);
}

/// An HTTP connection opened (+1) or closed (-1) on this core.
pub fn connections_delta(delta: i64) {
    RECORDER.with(|r| r.borrow_mut().connections_open += delta);
}

/// Changes this core's stream counters.
pub fn streams(change: impl FnOnce(&mut StreamCounters)) {
    RECORDER.with(|r| change(&mut r.borrow_mut().streams));
}

/// Adds `from` into `into`.
fn merge_counters(into: &mut Counters, from: Counters) {
    for (k, n) in from.requests {
        *into.requests.entry(k).or_insert(0) += n;
    }
    into.connections_open += from.connections_open;
    let (a, b) = (&mut into.streams, from.streams);
    (a.open, a.events_sent, a.gaps, a.refused) =
        (a.open + b.open, a.events_sent + b.events_sent, a.gaps + b.gaps, a.refused + b.refused);
}

thread_local! {
    static RECORDER: RefCell<Recorder> = RefCell::new(Recorder::default());
}

/// Two significant digits (1 % resolution): a 3-digit histogram over 1 µs … 60 s is
/// ≈ 420 KiB, and there are two per name per core (seen: +9 MiB RSS); 2 digits ≈ 50 KiB.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_HISTOGRAM_MAX_US, 2).expect("valid histogram bounds")
}

/// Records `value` in this thread's histogram `name` (clamped to the histogram's range).
pub fn record(name: &'static str, value: u64) {
    let value = value.clamp(1, LATENCY_HISTOGRAM_MAX_US);
    RECORDER.with(|r| {
        let mut r = r.borrow_mut();
        let _ = r.total.entry(name).or_insert_with(new_histogram).record(value);
        let _ = r.interval.entry(name).or_insert_with(new_histogram).record(value);
    });
}

/// Records the µs since `start`.
pub fn record_since(name: &'static str, start: Instant) {
    record(name, start.elapsed().as_micros() as u64);
}

/// What one core (or, merged, a node) has recorded.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub counters: Counters,
    pub histograms: Histograms,
}

impl Snapshot {
    /// Adds another core's (or node's) snapshot into this one.
    pub fn merge(&mut self, other: Snapshot) {
        merge_counters(&mut self.counters, other.counters);
        merge(&mut self.histograms, other.histograms);
    }
}

/// This thread's counters and histograms: the totals since start, or (`interval`) the
/// interval set, which is taken and reset.
pub fn snapshot(interval: bool) -> Snapshot {
    RECORDER.with(|r| {
        let mut r = r.borrow_mut();
        let histograms = if interval {
            std::mem::take(&mut r.interval).into_iter().map(|(k, h)| (k.to_owned(), h)).collect()
        } else {
            r.total.iter().map(|(k, h)| ((*k).to_owned(), h.clone())).collect()
        };
        let counters = Counters {
            requests: r.requests.iter().map(|((route, status), n)| (((*route).to_owned(), *status), *n)).collect(),
            connections_open: r.connections_open,
            streams: r.streams,
        };
        Snapshot { counters, histograms }
    })
}

/// Adds histogram `h` (recorded elsewhere, say by a WAL) into `into` as `name`, its
/// values clamped into the recorders' range like `record`'s.
pub fn add_histogram(into: &mut Histograms, name: &str, h: &Histogram<u64>) {
    if h.is_empty() {
        return;
    }
    let mine = into.entry(name.to_owned()).or_insert_with(new_histogram);
    for v in h.iter_recorded() {
        let value = v.value_iterated_to().clamp(1, LATENCY_HISTOGRAM_MAX_US);
        let _ = mine.record_n(value, v.count_at_value());
    }
}

/// Adds `from` into `into` (histograms of several cores or nodes).
pub fn merge(into: &mut Histograms, from: Histograms) {
    for (name, h) in from {
        match into.get_mut(&name) {
            Some(mine) => {
                let _ = mine.add(&h);
            }
            None => {
                into.insert(name, h);
            }
        }
    }
}

/// `{name: {count, p50, p90, p99, p999, max}}`.
pub fn percentiles_json(hists: &Histograms) -> Value {
    let mut out = serde_json::Map::new();
    for (name, h) in hists {
        out.insert(
            name.clone(),
            json!({
                "count": h.len(),
                "p50": h.value_at_quantile(0.5),
                "p90": h.value_at_quantile(0.9),
                "p99": h.value_at_quantile(0.99),
                "p999": h.value_at_quantile(0.999),
                "max": h.max(),
            }),
        );
    }
    Value::Object(out)
}
