#!/usr/bin/env python3
"""bench/results/k6.md: one table over the k6 runs in bench/results/<date>-<scenario>[-clusterN]/
(their summary.json and run.txt), newest date per scenario and setup.

    python3 bench/k6_report.py > bench/results/k6.md"""
import glob
import json
import os
import re

runs = {}
for d in sorted(glob.glob("bench/results/20*-*")):
    if not os.path.exists(f"{d}/summary.json"):
        continue
    m = re.match(r".*/(\d{4}-\d{2}-\d{2})-(.*?)(-cluster\d+)?$", d)
    if not m:
        continue
    runs[(m.group(2), m.group(3) or "")] = d  # sorted: the newest date wins

METRICS = {
    "1-hot-path-throughput": ["append_latency"],
    "2-rest-read-write-mix": ["write_latency", "window_latency", "replay_latency"],
    "3-cold-start-replay": ["replay_latency", "active_write_latency"],
    "4-durability-cadence": ["append_latency", "window_latency", "durability_check"],
}

print("# k6 scenarios on this machine")
print()
print("Made with `bench/run.sh SCENARIO` (single node) and `bench/run.sh SCENARIO --cluster 3` at the default")
print("knobs of each script; every run's directory holds k6's output, its JSON summary, the server-side")
print("latency histograms (`latency.txt`, charts) and `run.txt` (machine, commit, knobs). 2 cores, loopback:")
print("k6 and every node share the two CPUs.")
print()
print("| scenario | setup | requests/s | metric | p50 | p95 | p99 | thresholds | commit |")
print("|---|---|---:|---|---:|---:|---:|---|---|")
for (scenario, cluster), d in sorted(runs.items()):
    s = json.load(open(f"{d}/summary.json"))["metrics"]
    run = open(f"{d}/run.txt").read()
    commit = re.search(r"commit: (\S+)", run).group(1)
    setup = "3 nodes" if cluster else "1 node"
    rps = s.get("http_reqs", {}).get("rate", 0)
    # In k6's summary export a threshold maps to true when it was crossed (failed).
    failed = [f"{m} {k}" for m, v in s.items() for k, crossed in v.get("thresholds", {}).items() if crossed]
    verdict = "all pass" if not failed else "FAIL: " + ", ".join(failed)
    for i, metric in enumerate(METRICS.get(scenario, [])):
        v = s.get(metric, {})
        if metric == "durability_check":
            cells = f"rate {v.get('value', 0):.2f} | – | –"
        else:
            cells = f"{v.get('med', 0):.2f} ms | {v.get('p(95)', 0):.2f} ms | {v.get('p(99)', 0):.2f} ms"
        first = i == 0
        print(f"| {scenario if first else ''} | {setup if first else ''} | {f'{rps:.0f}' if first else ''} | "
              f"`{metric}` | {cells} | {verdict if first else ''} | {commit if first else ''} |")
