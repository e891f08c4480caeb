//! wal-bench: closed-loop appenders on one WAL (one shard) with group commit.
//!
//! For every record size × appender count, N tasks on one glommio executor each loop
//! "append one record, wait until it is durable" for `--secs`. Reports records/s, the
//! append+sync latency each appender saw (p50/p99/p999, hdrhistogram) and the syncs
//! behind it (latency, records per sync). One JSON object per line on stdout;
//! `bench/wal.sh` runs it next to fio and writes `bench/results/wal.md`.
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Parser;
use fleetlm::config::WalConfig;
use fleetlm::wal::{GroupCommitWal, Wal};
use glommio::LocalExecutorBuilder;
use hdrhistogram::Histogram;

#[derive(Parser, Debug)]
struct Args {
    /// Scratch directory (a fresh WAL per run is made under it, and removed).
    #[arg(long, default_value = "./wal-bench.tmp")]
    dir: std::path::PathBuf,
    /// Record payload sizes, bytes.
    #[arg(long, value_delimiter = ',', default_value = "200,4096")]
    record_bytes: Vec<usize>,
    /// Concurrent appenders per WAL.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    appenders: Vec<usize>,
    /// Measured seconds per combination (after `--warmup-ms`).
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Unmeasured warm-up per combination, ms.
    #[arg(long, default_value_t = 500)]
    warmup_ms: u64,
    /// glommio `spin_before_park`, µs: the executor spins this long before sleeping
    /// when idle (0 = sleep at once).
    #[arg(long, default_value_t = 0)]
    spin_before_park_us: u64,
    /// Segment size, bytes.
    #[arg(long, default_value_t = fleetlm::config::WAL_SEGMENT_SIZE_BYTES_DEFAULT)]
    segment_size_bytes: u64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut builder = LocalExecutorBuilder::default().io_memory(1 << 20);
    if args.spin_before_park_us > 0 {
        builder = builder.spin_before_park(Duration::from_micros(args.spin_before_park_us));
    }
    let ex = builder.make().map_err(|e| anyhow::anyhow!("glommio executor: {e}"))?;
    ex.run(async move {
        for &bytes in &args.record_bytes {
            for &n in &args.appenders {
                run_one(&args, bytes, n).await?;
            }
        }
        Ok(())
    })
}

async fn run_one(args: &Args, record_bytes: usize, appenders: usize) -> Result<()> {
    let dir = args.dir.join(format!("wal-{record_bytes}-{appenders}"));
    let _ = std::fs::remove_dir_all(&dir);
    let config = WalConfig { segment_size_bytes: args.segment_size_bytes, ..WalConfig::default() };
    let (wal, _) = Wal::open(&dir, config)?;
    let wal = GroupCommitWal::new(wal);
    let latency_us = Rc::new(RefCell::new(Histogram::<u64>::new(3)?));
    // Time inside `append` alone (copy into the mapping, page faults included).
    let copy_us = Rc::new(RefCell::new(Histogram::<u64>::new(3)?));
    let measured = Rc::new(RefCell::new(0u64));
    let warmup_end = Instant::now() + Duration::from_millis(args.warmup_ms);
    let end = warmup_end + Duration::from_secs(args.secs);
    let mut tasks = vec![];
    for a in 0..appenders {
        let (wal, latency_us, measured) = (wal.clone(), latency_us.clone(), measured.clone());
        let copy_us = copy_us.clone();
        let payload = vec![(a % 251) as u8; record_bytes];
        tasks.push(glommio::spawn_local(async move {
            loop {
                let start = Instant::now();
                if start >= end {
                    return Ok::<_, anyhow::Error>(());
                }
                wal.append(0, &[&payload])?;
                let copied_us = start.elapsed().as_micros() as u64;
                wal.sync().await?;
                if start >= warmup_end {
                    copy_us.borrow_mut().record(copied_us)?;
                    latency_us.borrow_mut().record(start.elapsed().as_micros() as u64)?;
                    *measured.borrow_mut() += 1;
                }
            }
        }));
    }
    // Sync statistics count from the end of the warm-up.
    glommio::timer::sleep(warmup_end.saturating_duration_since(Instant::now())).await;
    wal.with_stats(|s| {
        s.sync_latency_us.reset();
        s.sync_batch_records.reset();
    });
    let t0 = Instant::now();
    for t in tasks {
        t.await?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let h = latency_us.borrow();
    let c = copy_us.borrow();
    let records = *measured.borrow();
    let (sync_p50, sync_p99, sync_p999, sync_max, syncs, mean_batch) = wal.with_stats(|s| {
        (
            s.sync_latency_us.value_at_quantile(0.5),
            s.sync_latency_us.value_at_quantile(0.99),
            s.sync_latency_us.value_at_quantile(0.999),
            s.sync_latency_us.max(),
            s.sync_latency_us.len(),
            s.sync_batch_records.mean(),
        )
    });
    let segments = wal.with(|w| w.segment_count());
    println!(
        "{}",
        serde_json::json!({
            "record_bytes": record_bytes,
            "appenders": appenders,
            "records": records,
            "secs": secs,
            "records_per_sec": records as f64 / secs,
            "append_sync_p50_us": h.value_at_quantile(0.5),
            "append_sync_p99_us": h.value_at_quantile(0.99),
            "append_sync_p999_us": h.value_at_quantile(0.999),
            "append_sync_max_us": h.max(),
            "append_copy_p99_us": c.value_at_quantile(0.99),
            "append_copy_p999_us": c.value_at_quantile(0.999),
            "append_copy_max_us": c.max(),
            "sync_p50_us": sync_p50,
            "sync_p99_us": sync_p99,
            "sync_p999_us": sync_p999,
            "sync_max_us": sync_max,
            "syncs": syncs,
            "records_per_sync_mean": mean_batch,
            "segments": segments,
        })
    );
    drop(wal);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
