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


rounds = sorted(int(f[len("single-"):-len(".json")]) for f in os.listdir(scratch) if f.startswith("single-"))
load = lambda name: json.load(open(f"{scratch}/{name}.json"))
runs = {"single": [load(f"single-{r}") for r in rounds]}
runs.update({n: [load(f"cluster-{n}-{r}") for r in rounds] for n in (2, 4)})
appends = {k: [run["ops"]["append"] for run in v] for k, v in runs.items()}
steal = {k: [run.get("cpu_steal_pct", 0.0) for run in v] for k, v in runs.items()}
failover = json.load(open(f"{scratch}/failover.json"))
commit = sh("git rev-parse --short HEAD") + ("-dirty" if sh("git status --porcelain -uno -- . ':!bench/results'") else "")
ok = lambda b: "PASS" if b else "FAIL"
med = statistics.median
span = lambda v: f"{min(v):.0f}" if f"{min(v):.0f}" == f"{max(v):.0f}" else f"{min(v):.0f}–{max(v):.0f}"
# Ratios within each round (the runs of a round are minutes apart at most).
round_ratios = {n: [c["per_sec"] / s["per_sec"] for c, s in zip(appends[n], appends["single"])] for n in (2, 4)}
ratios = {n: med(v) for n, v in round_ratios.items()}
p99 = {k: med(a["p99_us"] for a in v) for k, v in appends.items()}
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
print(f"Medians over {len(rounds)} rounds (a round: the single node, then the cluster with 4 and with 2 shards per node, "
      f"{runs['single'][0]['secs']:.0f} s each); the ratio is the median of the rounds' ratios.")
print()
print("| setup | appends/s | vs single | p50 | p99 | p99.9 | max | errors | forwarded | CPU steal |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
# Answers served by a node other than the one asked (`FleetLM-Forwarded-To`), as a share of
# the measured requests; "–" for runs by a loadgen that did not count them.
def forwarded(v):
    if any("forwarded" not in run for run in v):
        return "–"
    total = sum(run["requests_per_sec"] * run["secs"] for run in v)
    return f"{100 * sum(run['forwarded'] for run in v) / max(total, 1):.1f} %"


names = {"single": "single node, 4 shards", 2: "3-node cluster, 2 shards per node", 4: "3-node cluster, 4 shards per node"}
for k in ("single", 2, 4):
    a = appends[k]
    x = 1.0 if k == "single" else ratios[k]
    m = lambda f: med(r[f] for r in a) / 1000
    print(f"| {names[k]} | {med(r['per_sec'] for r in a):.0f} | {x:.2f}× | {m('p50_us'):.2f} ms | {m('p99_us'):.2f} ms | "
          f"{m('p999_us'):.2f} ms | {m('max_us'):.1f} ms | {sum(r['errors'] for r in a)} | "
          f"{forwarded(runs[k])} | {span(steal[k])} % |")
print()
print("Each round:")
print()
print("| round | single appends/s | 2 shards appends/s | ratio | 4 shards appends/s | ratio | CPU steal (single / 2 / 4) |")
print("|---|---:|---:|---:|---:|---:|---|")
for i, r in enumerate(rounds):
    print(f"| {r} | {appends['single'][i]['per_sec']:.0f} | {appends[2][i]['per_sec']:.0f} | {round_ratios[2][i]:.2f}× | "
          f"{appends[4][i]['per_sec']:.0f} | {round_ratios[4][i]:.2f}× | "
          f"{steal['single'][i]:.0f} / {steal[2][i]:.0f} / {steal[4][i]:.0f} % |")
print()
print("CPU steal: the share of the machine's CPU time that the hypervisor gave to other guests during the "
      "measured window (/proc/stat, read by `loadgen`); every run is slower by about that much.")
print()
print("Clients are spread over the 3 nodes; a request for a shard another node leads is forwarded to it "
      "(`forwarded`: the share of answers another node served, from their `FleetLM-Forwarded-To` header; "
      "with a shard-aware client, requests whose shard's leader moved during the run).")
print()
for n in (2, 4):
    print(f"- {n} shards per node: 3-node / single node = **{ratios[n]:.2f}×** (median of {len(rounds)} rounds; target ≥ 0.5×): {ok(ratios[n] >= 0.5)}; "
          f"append p99 **{p99[n]/1000:.2f} ms** (target ≤ 20 ms): {ok(p99[n] <= 20000)}")
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
