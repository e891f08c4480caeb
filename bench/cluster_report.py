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
clusters = {n: json.load(open(f"{scratch}/cluster-{n}.json"))["ops"]["append"] for n in (2, 4)}
failover = json.load(open(f"{scratch}/failover.json"))
commit = sh("git rev-parse --short HEAD") + ("-dirty" if sh("git status --porcelain -uno -- . ':!bench/results'") else "")
ok = lambda b: "PASS" if b else "FAIL"
ratios = {n: c["per_sec"] / single["per_sec"] for n, c in clusters.items()}
times = [t for r in failover for t in r["first_append_ms"].values()]
missing = sum(len(r["shards"]) - len(r["first_append_ms"]) for r in failover)

print("# Cluster benchmark")
print()
print(f"- command: `{command}`; commit `{commit}`; date {sh('date -u +%Y-%m-%dT%H:%MZ')}")
fs = sh("df -T . | awk 'NR==2 {print $2}'")
print(f"- machine: {os.cpu_count()} cores, Linux {platform.release()}, {fs} on virtio; "
      "every process (3 nodes, or 1 node, and the load generator) shares the same 2 cores; loopback")
print("- cluster: `bench/cluster.sh up 3` — 3 nodes × 1 core, leaders spread; an append is acknowledged after its "
      "entry is fsync'd on 2 of 3 nodes. Run with 2 shards (a 1-core node's default, 2 × cores: the single node's "
      "density of 2 shards per core) and with 4 (the single node's total)")
print("- single node: `fleetlm serve` with defaults (2 cores, 4 shards)")
print()
print("## Durable appends: 50 connections, 200-byte messages, 1000 contexts (`loadgen`)")
print()
print("| setup | appends/s | vs single | p50 | p99 | p99.9 | max | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
rows = [("single node, 4 shards", single, 1.0)]
rows += [(f"3-node cluster, {n} shards per node", clusters[n], ratios[n]) for n in (2, 4)]
for name, r, x in rows:
    print(f"| {name} | {r['per_sec']:.0f} | {x:.2f}× | {r['p50_us']/1000:.2f} ms | {r['p99_us']/1000:.2f} ms | "
          f"{r['p999_us']/1000:.2f} ms | {r['max_us']/1000:.1f} ms | {r['errors']} |")
print()
print("Clients are spread over the 3 nodes; a request for a shard another node leads is forwarded to it.")
print()
for n in (2, 4):
    print(f"- {n} shards per node: 3-node / single node = **{ratios[n]:.2f}×** (target ≥ 0.5×): {ok(ratios[n] >= 0.5)}; "
          f"append p99 **{clusters[n]['p99_us']/1000:.2f} ms** (target ≤ 20 ms): {ok(clusters[n]['p99_us'] <= 20000)}")
print()
print("## Failover (`bench/failover.py`)")
print()
print("On the 2-shard cluster: SIGKILL of the node leading the most shards while one writer per shard appends through the survivors; "
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
