//! wal-inspect: read-only look at a WAL directory (a core's log, `wal-<L>/<log>/`).
//!
//! Lists the segments and their headers, then runs the same recovery scan as
//! `Wal::open` on copies of the bytes — without repairing anything — and says what
//! opening would find: each group's live index range, a torn tail that would be cut, or
//! the corruption (segment, offset, why) that would stop the core's shards.
//!
//!   wal-inspect data/wal-2/0 [--records]
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use fleetlm::wal::format::{self, Slot};
use fleetlm::wal::recovery;
use fleetlm::wal::segment::parse_file_name;

#[derive(Parser)]
struct Args {
    /// The WAL directory.
    dir: PathBuf,
    /// Also list every record slot (offset, kind, index, length).
    #[arg(long)]
    records: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(&args.dir)
        .with_context(|| format!("reading {}", args.dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| parse_file_name(&e.file_name().to_string_lossy()).map(|seq| (seq, e.path())))
        .collect();
    files.sort();
    let mut contents = Vec::new();
    for (seq, path) in &files {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        match format::decode_segment_header(&bytes) {
            Ok(h) => println!("segment {seq}: {} bytes, prev_end_offset {}", bytes.len(), h.prev_end_offset),
            Err(e) => println!("segment {seq}: {} bytes, header unreadable: {e}", bytes.len()),
        }
        if args.records {
            let mut off = format::SEGMENT_HEADER_BYTES;
            while off + format::RECORD_HEADER_BYTES <= bytes.len() {
                match format::decode_slot(&bytes, off, format::RECORD_PAYLOAD_LIMIT_BYTES) {
                    Slot::Record(m) => {
                        println!(
                            "  @{off}: group {} {:?} index {} len {} durable_pos {}:{}",
                            m.group,
                            m.kind,
                            m.index,
                            m.payload_len,
                            m.durable_pos >> 32,
                            m.durable_pos & 0xffff_ffff
                        );
                        off += m.stored_bytes();
                    }
                    Slot::Empty => break,
                    Slot::Invalid(why) => {
                        println!("  @{off}: invalid ({why})");
                        break;
                    }
                }
            }
        }
        contents.push((*seq, bytes));
    }
    let views: Vec<(u64, &[u8])> = contents.iter().map(|(s, b)| (*s, &b[..])).collect();
    match recovery::scan(&views, format::RECORD_PAYLOAD_LIMIT_BYTES) {
        Ok(r) => {
            println!("opening would find {} groups", r.groups.len());
            for (g, log) in &r.groups {
                let next = log.first_index + log.live.len() as u64;
                println!("  group {g}: indexes {}..{next} ({} records)", log.first_index, log.live.len());
            }
            // Where the valid records end (a torn tail, if any, starts here).
            if let Some((_, path)) = files.get(r.end_segment) {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                println!("valid end: segment {name} offset {}", r.end_offset);
            }
            if r.torn {
                let seq = views.get(r.end_segment).map_or(0, |v| v.0);
                println!("  and cut a torn tail at segment {seq} offset {} (unsynced writes of a crash)", r.end_offset);
            }
        }
        Err(d) => {
            let seq = views.get(d.segment).map_or(0, |v| v.0);
            println!("opening would fail: CORRUPTION in segment {seq} at offset {}: {}", d.offset, d.detail);
            std::process::exit(3);
        }
    }
    Ok(())
}
