#!/usr/bin/env python3
"""bench/results/single-node.md from the files bench/single-node.sh leaves in its scratch dir."""
import csv
import json
import os
import platform
import statistics
import subprocess
import sys

scratch, rss_kb, rounds, command = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]


def sh(cmd):
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


fl_runs = [json.load(open(f"{scratch}/fleetlm-append-{r}.json")) for r in range(1, rounds + 1)]
fls = [run["ops"]["append"] for run in fl_runs]
# Server CPU time (user + system, all threads) per request: FleetLM's from loadgen's
# --server-pid over the measured window, Redis's from redis-server around the run.
fl_cpu_us = [run.get("server_cpu_us_per_request") for run in fl_runs]


def redis_cpu_us(r):
    ticks, per_sec, requests = (int(x) for x in open(f"{scratch}/redis-cpu-{r}.txt").read().split())
    return ticks / per_sec * 1e6 / requests


rd_cpu_us = [redis_cpu_us(r) for r in range(1, rounds + 1)]
rds = [list(csv.DictReader(open(f"{scratch}/redis-xadd-{r}.csv")))[0] for r in range(1, rounds + 1)]
replays = {c: json.load(open(f"{scratch}/fleetlm-replay-c{c}.json"))["ops"]["replay"] for c in (1, 10, 50)}
ratios = [fl["per_sec"] / float(rd["rps"]) for fl, rd in zip(fls, rds)]
ratio = statistics.median(ratios)
p99_ms = statistics.median(fl["p99_us"] / 1000 for fl in fls)
commit = sh("git rev-parse --short HEAD") + ("-dirty" if sh("git status --porcelain -uno -- . ':!bench/results'") else "")
ok = lambda b: "PASS" if b else "FAIL"

print("# Single-node benchmark")
print()
print(f"- command: `{command}`; commit `{commit}`; date {sh('date -u +%Y-%m-%dT%H:%MZ')}")
fs = sh("df -T . | awk 'NR==2 {print $2}'")
print(f"- machine: {os.cpu_count()} cores, Linux {platform.release()}, {fs} on virtio; client and server share the 2 cores, loopback")
print(f"- {sh('redis-server --version')}")
print()
print(f"## Durable appends: 50 connections, 200-byte messages, 1000 contexts ({rounds} alternating rounds)")
print()
# The share of the machine's CPU time the hypervisor gave to other guests while
# FleetLM's run was measured (loadgen reads /proc/stat).
steal = [run.get("cpu_steal_pct") for run in fl_runs]
steal_cell = lambda v: "–" if v is None else f"{v:.0f} %"
print("| round | system | appends/s | p50 | p99 | p99.9 | max | errors | server CPU per append | FleetLM / Redis | CPU steal |")
print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r, (fl, rd, x, fc, rc, st) in enumerate(zip(fls, rds, ratios, fl_cpu_us, rd_cpu_us, steal), 1):
    print(f"| {r} | FleetLM (`loadgen`, HTTP, 201 after fdatasync via Raft) | {fl['per_sec']:.0f} | {fl['p50_us']/1000:.2f} ms | "
          f"{fl['p99_us']/1000:.2f} ms | {fl['p999_us']/1000:.2f} ms | {fl['max_us']/1000:.1f} ms | {fl['errors']} | {fc:.1f} µs | {x:.2f}× | {steal_cell(st)} |")
    print(f"| {r} | Redis XADD, appendfsync always (`redis-benchmark -c 50 -r 1000`) | {float(rd['rps']):.0f} | "
          f"{float(rd['p50_latency_ms']):.2f} ms | {float(rd['p99_latency_ms']):.2f} ms | – | {float(rd['max_latency_ms']):.1f} ms | – | {rc:.1f} µs | | |")
print()
print(f"- throughput: FleetLM / Redis, median of the rounds = **{ratio:.2f}×** (rounds: {', '.join(f'{x:.2f}' for x in ratios)}; target ≥ 1.0×): {ok(ratio >= 1.0)}")
p99s = ", ".join(f"{fl['p99_us'] / 1000:.2f}" for fl in fls)
print(f"- FleetLM append p99, median of the rounds = **{p99_ms:.2f} ms** (rounds: {p99s}; target ≤ 5 ms): {ok(p99_ms <= 5)}")
cpu_fl, cpu_rd = statistics.median(fl_cpu_us), statistics.median(rd_cpu_us)
print(f"- server CPU time per append (user + system, all threads; medians): FleetLM {cpu_fl:.1f} µs, Redis {cpu_rd:.1f} µs "
      f"= {cpu_fl / cpu_rd:.2f}× (steadier than throughput here, where client and server share the cores)")
print(f"- server RSS after the last append round: {rss_kb/1024:.0f} MiB")
print()
print("## Replay of 1000 messages (`from_seq=-1000&limit=1000`, 20 contexts of ≥ 1000 messages, ~300 KiB per answer)")
print()
print("| connections | replays/s | p50 | p99 | p99.9 | max | errors | p99 ≤ 10 ms |")
print("|---:|---:|---:|---:|---:|---:|---:|---|")
for c, rp in replays.items():
    print(f"| {c} | {rp['per_sec']:.0f} | {rp['p50_us']/1000:.2f} ms | {rp['p99_us']/1000:.2f} ms | {rp['p999_us']/1000:.2f} ms | {rp['max_us']/1000:.1f} ms | {rp['errors']} | {ok(rp['p99_us'] <= 10000)} |")
print()
mean_ms = 50 / replays[50]["per_sec"] * 1000
print(f"At 50 connections the replay is throughput-bound: client and server copy every ~300 KiB answer through")
print(f"loopback on the 2 shared cores, and 50 / throughput = {mean_ms:.1f} ms is already the mean latency (queueing).")
