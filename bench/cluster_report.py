#!/usr/bin/env python3
"""bench/results/cluster.md from the files bench/cluster-bench.sh leaves in its scratch dir."""
import json
import os
import platform
import statistics
import subprocess
import sys

scratch, command = sys.argv[1], sys.argv[2]


def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


single = json.load(open(f"{scratch}/single.json"))["ops"]["append"]
cluster = json.load(open(f"{scratch}/cluster.json"))["ops"]["append"]
failover = json.load(open(f"{scratch}/failover.json"))
commit = sh("git rev-parse --short HEAD") + ("-dirty" if sh("git status --porcelain -uno -- . ':!bench/results'") else "")
ok = lambda b: "PASS" if b else "FAIL"
ratio = cluster["per_sec"] / single["per_sec"]
times = [t for r in failover for t in r["first_append_ms"].values()]
missing = sum(len(r["shards"]) - len(r["first_append_ms"]) for r in failover)

print("# Cluster benchmark")
print()
print(f"- command: `{command}`; commit `{commit}`; date {sh('date -u +%Y-%m-%dT%H:%MZ')}")
fs = sh("df -T . | awk 'NR==2 {print $2}'")
print(f"- machine: {os.cpu_count()} cores, Linux {platform.release()}, {fs} on virtio; "
      "every process (3 nodes, or 1 node, and the load generator) shares the same 2 cores; loopback")
print("- cluster: `bench/cluster.sh up 3` — 3 nodes × 1 core, 4 shards, leaders spread (node 1 leads shards 0 and 3); "
      "an append is acknowledged after its entry is fsync'd on 2 of 3 nodes")
print("- single node: `fleetlm serve` with defaults (2 cores, 4 shards)")
print()
print("## Durable appends: 50 connections, 200-byte messages, 1000 contexts (`loadgen`)")
print()
print("| setup | appends/s | p50 | p99 | p99.9 | max | errors |")
print("|---|---:|---:|---:|---:|---:|---:|")
for name, r in (("single node", single), ("3-node cluster (clients spread over the 3 nodes)", cluster)):
    print(f"| {name} | {r['per_sec']:.0f} | {r['p50_us']/1000:.2f} ms | {r['p99_us']/1000:.2f} ms | "
          f"{r['p999_us']/1000:.2f} ms | {r['max_us']/1000:.1f} ms | {r['errors']} |")
print()
print(f"- throughput: 3-node / single node = **{ratio:.2f}×** (target ≥ 0.5×): {ok(ratio >= 0.5)}")
print(f"- 3-node append p99 **{cluster['p99_us']/1000:.2f} ms** (target ≤ 20 ms): {ok(cluster['p99_us'] <= 20000)}")
print()
print("## Failover (`bench/failover.py`)")
print()
print("SIGKILL of the node leading shards 0 and 3 while one writer per shard appends through the survivors; "
      "time from just before the kill to the first 201 for an append *sent after* the killed process is gone, per shard.")
print()
print("| round | killed node | first append after the kill, per shard |")
print("|---|---|---|")
for r in failover:
    per = ", ".join(f"shard {s}: {t} ms" for s, t in r["first_append_ms"].items()) or "none"
    print(f"| {r['round']} | {r['killed_node']} | {per} |")
print()
if times:
    print(f"- worst {max(times)} ms, median {statistics.median(times):.0f} ms over {len(times)} shard failovers; "
          f"{missing} shard(s) without a successful append within 30 s")
    print(f"- target ≤ 2000 ms: {ok(max(times) <= 2000 and missing == 0)}")
