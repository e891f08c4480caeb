//! sync-probe: which sync primitive makes an mmap'd WAL write durable fastest here?
//!
//! Writes `--record-bytes` at an advancing offset of a preallocated, memory-mapped
//! file and makes it durable after each write with one of:
//!   msync        `MmapMut::flush_range` of the written range (MS_SYNC), on the executor thread
//!   fdatasync    `fdatasync(2)` of the file, on the executor thread
//!   uring        glommio `BufferedFile::fdatasync` (io_uring), executor stays free
//!   blocking     `fdatasync(2)` on glommio's blocking pool (`spawn_blocking`)
//! and prints p50/p99/p999 latency per primitive. The result is recorded in
//! `src/wal/sync.rs` and `bench/results/wal.md`.
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use glommio::LocalExecutorBuilder;
use hdrhistogram::Histogram;

#[derive(Parser, Debug)]
struct Args {
    /// Directory for the probe file (removed afterwards).
    #[arg(long, default_value = "./sync-probe.tmp")]
    dir: std::path::PathBuf,
    /// Bytes written before each sync.
    #[arg(long, default_value_t = 4096)]
    record_bytes: usize,
    /// Syncs per primitive.
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
    /// Write zeros over the probe file (and fsync) before the probe, instead of leaving
    /// `posix_fallocate`'s unwritten extents, whose first write makes the next sync also
    /// write extent metadata. (Measured here: zero-filled was slower, see
    /// bench/results/wal.md; the WAL keeps fallocate.)
    #[arg(long)]
    zero_fill: bool,
}

const FILE_BYTES: u64 = 64 << 20;

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)?;
    let ex = LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .make()
        .map_err(|e| anyhow::anyhow!("glommio executor: {e}"))?;
    ex.run(async move {
        for method in ["msync", "fdatasync", "uring", "blocking", "msync", "fdatasync", "uring", "blocking"] {
            let h = probe(&args, method).await?;
            println!(
                "{method:>10}: n={} p50={}us p99={}us p999={}us max={}us",
                h.len(),
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.value_at_quantile(0.999),
                h.max()
            );
        }
        std::fs::remove_dir_all(&args.dir)?;
        Ok::<_, anyhow::Error>(())
    })
}

async fn probe(args: &Args, method: &str) -> Result<Histogram<u64>> {
    let path = args.dir.join(format!("probe-{method}"));
    let _ = std::fs::remove_file(&path);
    let file = if args.zero_fill {
        use std::os::unix::fs::FileExt;
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        let zeros = vec![0u8; 1 << 20];
        for chunk in 0..FILE_BYTES / zeros.len() as u64 {
            file.write_all_at(&zeros, chunk * zeros.len() as u64)?;
        }
        file.sync_all()?;
        file
    } else {
        // Blocks reserved (no allocation at write), but as unwritten extents.
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path)?;
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, FILE_BYTES as i64) };
        anyhow::ensure!(rc == 0, "posix_fallocate: {rc}");
        file.sync_all()?;
        file
    };
    let mut map = unsafe { memmap2::MmapMut::map_mut(&file)? };
    let uring = unsafe { glommio::io::BufferedFile::from_raw_fd(libc::dup(file.as_raw_fd())) };
    let blocking_file = std::sync::Arc::new(file.try_clone()?);
    let mut hist = Histogram::<u64>::new(3)?;
    let payload = vec![0xA5u8; args.record_bytes];
    let mut offset = 0usize;
    for _ in 0..args.iterations {
        if offset + payload.len() > map.len() {
            offset = 0;
        }
        let start = Instant::now();
        map[offset..offset + payload.len()].copy_from_slice(&payload);
        match method {
            "msync" => map.flush_range(offset, payload.len())?,
            "fdatasync" => {
                let rc = unsafe { libc::fdatasync(blocking_file.as_raw_fd()) };
                anyhow::ensure!(rc == 0, "fdatasync failed");
            }
            "uring" => uring.fdatasync().await.map_err(std::io::Error::from)?,
            _ => {
                let f = blocking_file.clone();
                glommio::executor().spawn_blocking(move || f.sync_data()).await?;
            }
        }
        hist.record(start.elapsed().as_micros() as u64)?;
        offset += payload.len();
    }
    uring.close().await.map_err(std::io::Error::from)?;
    drop(map);
    std::fs::remove_file(&path)?;
    Ok(hist)
}
