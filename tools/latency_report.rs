//! latency-report: reads HdrHistogram interval logs written by `fleetlm serve
//! --latency-log` (one or several files, e.g. one per node), merges the histograms by
//! tag over a time range, and prints a percentile table per histogram. With
//! `--csv-dir DIR` it also writes, per tag, the percentile distribution
//! (`TAG.distribution.csv`) and p50/p99/max per interval over time (`TAG.timeline.csv`),
//! which `tools/plot_latency.py` draws as PNG charts.
//!
//!   latency-report node1.hlog node2.hlog node3.hlog [--from-secs 10] [--to-secs 60] \
//!                  [--tag http.append] [--csv-dir out/]
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};

#[derive(Parser)]
struct Args {
    /// Interval log files (merged).
    #[arg(required = true)]
    logs: Vec<PathBuf>,
    /// Only intervals that start at or after this many seconds from each log's start.
    #[arg(long, default_value_t = 0.0)]
    from_secs: f64,
    /// Only intervals that start before this many seconds from each log's start.
    #[arg(long)]
    to_secs: Option<f64>,
    /// Only these tags (repeatable); default all.
    #[arg(long)]
    tag: Vec<String>,
    /// Also write CSV files for charts here.
    #[arg(long)]
    csv_dir: Option<PathBuf>,
}

struct Series {
    merged: Histogram<u64>,
    /// Per interval start (s, rounded to 0.1 s): the interval's histogram, all logs merged.
    timeline: BTreeMap<u64, Histogram<u64>>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut series: BTreeMap<String, Series> = BTreeMap::new();
    let mut deserializer = Deserializer::new();
    for path in &args.logs {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        for entry in IntervalLogIterator::new(&bytes) {
            let entry = entry.map_err(|e| anyhow::anyhow!("{}: {e:?}", path.display()))?;
            let LogEntry::Interval(h) = entry else { continue };
            let start = h.start_timestamp().as_secs_f64();
            if start < args.from_secs || args.to_secs.is_some_and(|t| start >= t) {
                continue;
            }
            let tag = h.tag().map(|t| t.as_str().to_owned()).unwrap_or_else(|| "untagged".into());
            if !args.tag.is_empty() && !args.tag.contains(&tag) {
                continue;
            }
            let decoded = base64_decode(h.encoded_histogram())?;
            let hist: Histogram<u64> = deserializer
                .deserialize(&mut std::io::Cursor::new(decoded))
                .map_err(|e| anyhow::anyhow!("{}: tag {tag}: {e:?}", path.display()))?;
            let s = series
                .entry(tag)
                .or_insert_with(|| Series { merged: Histogram::new_from(&hist), timeline: BTreeMap::new() });
            s.merged.add(&hist).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let slot = (start * 10.0).round() as u64;
            match s.timeline.get_mut(&slot) {
                Some(t) => t.add(&hist).map_err(|e| anyhow::anyhow!("{e:?}"))?,
                None => {
                    s.timeline.insert(slot, hist);
                }
            }
        }
    }
    if series.is_empty() {
        println!("no histograms in range");
        return Ok(());
    }
    println!(
        "{} log(s), intervals from {} s{}",
        args.logs.len(),
        args.from_secs,
        match args.to_secs {
            Some(t) => format!(" to {t} s"),
            None => String::new(),
        }
    );
    println!(
        "{:<28} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "histogram (µs unless named)", "count", "p50", "p90", "p99", "p99.9", "max", "mean"
    );
    for (tag, s) in &series {
        let h = &s.merged;
        println!(
            "{:<28} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9.0}",
            tag,
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max(),
            h.mean()
        );
    }
    if let Some(dir) = &args.csv_dir {
        std::fs::create_dir_all(dir)?;
        for (tag, s) in &series {
            let mut f = std::fs::File::create(dir.join(format!("{tag}.distribution.csv")))?;
            writeln!(f, "percentile,value")?;
            for q in percentile_points() {
                writeln!(f, "{q},{}", s.merged.value_at_quantile(q / 100.0))?;
            }
            let mut f = std::fs::File::create(dir.join(format!("{tag}.timeline.csv")))?;
            writeln!(f, "seconds,count,p50,p99,max")?;
            for (slot, h) in &s.timeline {
                let secs = *slot as f64 / 10.0;
                writeln!(
                    f,
                    "{secs},{},{},{},{}",
                    h.len(),
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.99),
                    h.max()
                )?;
            }
        }
    }
    Ok(())
}

/// 0 … 99.9999, denser towards the tail (the usual HdrHistogram percentile plot).
fn percentile_points() -> Vec<f64> {
    let mut out = Vec::new();
    for nines in 0..6 {
        let lo = 100.0 - 100.0 / 10f64.powi(nines);
        let hi = 100.0 - 100.0 / 10f64.powi(nines + 1);
        for i in 0..10 {
            out.push(lo + (hi - lo) * i as f64 / 10.0);
        }
    }
    out.push(100.0);
    out
}

/// Standard base64 (the interval log's encoding).
fn base64_decode(s: &str) -> Result<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some((c - b'A') as u32),
            b'a'..=b'z' => Some((c - b'a' + 26) as u32),
            b'0'..=b'9' => Some((c - b'0' + 52) as u32),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let clean: Vec<u8> = s.bytes().filter(|&c| c != b'=' && !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c).ok_or_else(|| anyhow::anyhow!("bad base64"))? << (18 - 6 * i);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    Ok(out)
}
