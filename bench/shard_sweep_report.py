#!/usr/bin/env python3
"""bench/results/shard-sweep.md from the files `bench/single-node.sh --sweep` leaves in its scratch dir."""
import csv
import json
import os
import platform
import re
import statistics
import subprocess
import sys

scratch, rounds, shards, base, command = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4], sys.argv[5]
labels = ["new"] + (["base"] if base else [])


def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def metric(path, name):
    """Sum of the samples of `name` with a core label (or the unlabelled one)."""
    try:
        text = open(path).read()
    except OSError:
        return None
    per_core = [float(v) for v in re.findall(rf'^{name}{{core="\d+"}} (\S+)$', text, re.M)]
    if per_core:
        return sum(per_core)
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def redis(n, r):
    row = list(csv.DictReader(open(f"{scratch}/sweep-{n}-{r}-redis.csv")))[0]
    ticks, per_sec, requests = (int(x) for x in open(f"{scratch}/sweep-{n}-{r}-redis-cpu.txt").read().split())
    return float(row["rps"]), ticks / per_sec * 1e6 / requests


def fleet(n, r, label):
    run = json.load(open(f"{scratch}/sweep-{n}-{r}-{label}.json"))
    op = run["ops"]["append"]
    m = f"{scratch}/sweep-{n}-{r}-{label}.metrics"
    syncs, synced = metric(m, "fleetlm_wal_syncs_total"), metric(m, "fleetlm_wal_records_synced_total")
    return {
        "rps": op["per_sec"],
        "p99_ms": op["p99_us"] / 1000,
        "cpu_us": run.get("server_cpu_us_per_request"),
        "syncs": syncs,
        "per_sync": (synced / syncs) if synced and syncs else None,
    }


commit = sh("git rev-parse --short HEAD") + ("-dirty" if sh("git status --porcelain -uno -- . ':!bench/results'") else "")
print("# Shard-count sweep: durable appends at 1…64 shards per node")
print()
print(f"- command: `{command}`; commit `{commit}`; date {sh('date -u +%Y-%m-%dT%H:%MZ')}")
fs = sh("df -T . | awk 'NR==2 {print $2}'")
print(f"- machine: {os.cpu_count()} cores, Linux {platform.release()}, {fs} on virtio; client and server share the cores, loopback")
print(f"- load: loadgen, 50 connections, 200-byte messages, 1000 contexts, fresh data dir per run; Redis 7 XADD with "
      f"appendfsync always (`redis-benchmark -c 50 -r 1000`) in the same rounds; {sh('redis-server --version')}")
if base:
    print(f"- `base`: `{base}` (the build before this change), run in the same rounds; `new`: this commit")
print("- medians over the rounds; syncs are the group-commit fdatasync rounds of the run (warm-up included), summed over cores")
print()
hdr = "| shards | build | appends/s | × Redis | p99 | server CPU per append | WAL syncs | records per sync |"
print(hdr)
print("|---:|---|---:|---:|---:|---:|---:|---:|")
med = lambda xs: statistics.median([x for x in xs if x is not None]) if any(x is not None for x in xs) else None
summary = {}
for n in shards:
    rd = [redis(n, r) for r in range(1, rounds + 1)]
    for label in labels:
        fl = [fleet(n, r, label) for r in range(1, rounds + 1)]
        ratio = med([f["rps"] / d[0] for f, d in zip(fl, rd)])
        row = {k: med([f[k] for f in fl]) for k in ("rps", "p99_ms", "cpu_us", "syncs", "per_sync")}
        row["ratio"] = ratio
        summary[(n, label)] = row
        fmt = lambda v, f: "–" if v is None else f.format(v)
        print(f"| {n} | {label} | {row['rps']:.0f} | {ratio:.2f}× | {row['p99_ms']:.2f} ms | {fmt(row['cpu_us'], '{:.1f} µs')} | "
              f"{fmt(row['syncs'], '{:.0f}')} | {fmt(row['per_sync'], '{:.1f}')} |")
    print(f"| {n} | Redis | {med([d[0] for d in rd]):.0f} | 1.00× | – | {med([d[1] for d in rd]):.1f} µs | – | – |")
print()
new = {n: summary[(n, "new")] for n in shards}
best = max(r["rps"] for r in new.values())
worst = min(new.values(), key=lambda r: r["rps"])
print(f"- `new`: slowest shard count within {100 * (1 - worst['rps'] / best):.0f} % of the fastest "
      f"(target: 64 shards within 10 %)")
if base:
    for n in shards:
        b, x = summary[(n, "base")], summary[(n, "new")]
        print(f"- {n} shards: new / base throughput {x['rps'] / b['rps']:.2f}×, CPU per append "
              f"{x['cpu_us']:.1f} vs {b['cpu_us']:.1f} µs, syncs {x['syncs'] or 0:.0f} vs {b['syncs'] or 0:.0f}")
