#!/usr/bin/env python3
"""Turns fio's JSON and wal-bench's JSON lines into bench/results/wal.md."""
import json
import os
import platform
import subprocess
import sys


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return "?"


before_path, after_path, wal_path, command = sys.argv[1:5]


def floor(path):
    job = json.load(open(path))["jobs"][0]
    pct = job["sync"]["lat_ns"]["percentile"]
    return pct["50.000000"] / 1000, pct["99.000000"] / 1000, job["write"]["iops"]


before, after = floor(before_path), floor(after_path)
fio_p50_us = (before[0] + after[0]) / 2
runs = [json.loads(line) for line in open(wal_path) if line.strip()]

commit = sh("git rev-parse --short HEAD") + ("-dirty" if sh("git status --porcelain -uno -- . ':!bench/results'") else "")
disk = sh("df -T . | awk 'NR==2 {print $1\" \"$2}'")
print("# WAL benchmark")
print()
print(f"- command: `{command}`; commit `{commit}`; date {sh('date -u +%Y-%m-%dT%H:%MZ')}")
print(f"- machine: {os.cpu_count()} cores, Linux {platform.release()}, {disk}, loopback only")
print("- one WAL (one shard) on one glommio executor; every appender loops: append one record, wait until a")
print("  sync covering it has returned (closed loop). Group commit: one fdatasync (io_uring) covers all")
print("  records appended before it started.")
print()
print("## Floor: fio, same disk, same run")
print()
print("`fio --rw=write --bs=4k --fdatasync=1` (one writer), run before and after the WAL runs:")
print()
print("| | fdatasync p50 | p99 | durable writes/s |")
print("|---|---:|---:|---:|")
for name, (p50, p99, iops) in (("before", before), ("after", after)):
    print(f"| {name} | {p50:.0f} µs | {p99:.0f} µs | {iops:.0f} |")
print()
print(f"Floor used for the ratios: the mean of the two medians, **{fio_p50_us:.0f} µs**.")
print()
print("## WAL")
print()
print("| record | appenders | records/s | append+sync p50 | p99 | p99.9 | max | syncs/s | records/sync | sync p50 | sync p99 |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in runs:
    print(
        f"| {r['record_bytes']} B | {r['appenders']} | {r['records_per_sec']:.0f} | {r['append_sync_p50_us']} µs"
        f" | {r['append_sync_p99_us']} µs | {r['append_sync_p999_us']} µs | {r['append_sync_max_us']} µs"
        f" | {r['syncs'] / r['secs']:.0f} | {r['records_per_sync_mean']:.1f} | {r['sync_p50_us']} µs | {r['sync_p99_us']} µs |"
    )
print()
print("## Targets (ratios to the fio floor of this run)")
print()
limit = 64 / (fio_p50_us / 1e6)
ok_all = True
for r in runs:
    if r["appenders"] == 64:
        ratio = r["records_per_sec"] / limit
        ok = ratio >= 0.8
        ok_all &= ok
        print(
            f"- {r['record_bytes']} B, 64 appenders: {r['records_per_sec']:.0f} records/s = **{ratio:.2f}×** the limit"
            f" 64 / {fio_p50_us:.0f} µs = {limit:.0f}/s (target ≥ 0.80×): {'PASS' if ok else 'FAIL'}"
        )
for r in runs:
    if r["appenders"] == 1:
        ratio = r["append_sync_p50_us"] / fio_p50_us
        ok = ratio <= 1.5
        ok_all &= ok
        print(
            f"- {r['record_bytes']} B, 1 appender: append+sync median {r['append_sync_p50_us']} µs = **{ratio:.2f}×**"
            f" fio's fdatasync median (target ≤ 1.5×): {'PASS' if ok else 'FAIL'}"
        )
print()
print("Time inside `append` itself (encoding plus one pwrite into the page cache), per run:")
print(", ".join(f"{r['record_bytes']} B × {r['appenders']}: p99.9 {r['append_copy_p999_us']} µs, max {r['append_copy_max_us']} µs" for r in runs) + ".")
print()
print("## Reading the results")
print()
print("- The 1-appender latency target holds with margin: a lone 200 B record shares its page with the")
print("  previous ones, so most syncs write back one already-allocated page.")
print("- The 64-appender throughput target does not hold. Each closed-loop cycle is one sync covering all 64")
print("  records plus the CPU time of 64 tasks waking, appending and waiting again; the table shows the sync")
print("  itself (`sync p50`) well above fio's median, and the cycle (1 / syncs/s) ≈ 80–100 µs above the sync.")
print("  Measured contributors (tools/sync_probe.rs, same disk): fdatasync through io_uring costs ≈ 50 µs more")
print("  than a blocking fdatasync (the kernel runs it on an io-wq worker). A blocking fdatasync on the executor")
print("  would be faster here but would stall every other shard of the core.")
print("- 4 KiB × 64 cannot reach the target on this disk: 64 × 4 KiB per sync at the target rate is")
print(f"  {0.8 * limit * 4096 / 1e6:.0f} MB/s of fdatasync'd writes; fio measures ≈ 200 MB/s for 256 KiB fdatasync'd writes here.")
print("- Records are written with pwrite, not through the mapping (since 1dadbf5). Writing through the")
print("  mapping stalled `append` for 20–32 ms at max (write faults after each writeback re-protected the")
print("  pages) and put the 4 KiB × 64 p99 at 20.8 ms, in bench/wal.sh at 57e50e3 on this machine; the")
print("  table above is the same run with pwrite.")
sys.exit(0 if ok_all else 1)
