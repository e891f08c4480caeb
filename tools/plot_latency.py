#!/usr/bin/env python3
"""Draws the CSVs of `latency-report --csv-dir` as two PNG charts:

    plot_latency.py CSV_DIR OUT_DIR [TITLE]

- OUT_DIR/latency-percentiles.png: latency by percentile (the HdrHistogram plot: x is
  1/(1-p) on a log scale, so the tail gets the room), one line per histogram.
- OUT_DIR/latency-p99-over-time.png: p99 per interval over the run.
Histograms of counts (names ending in _records) are left out. Needs matplotlib
(bench/run.sh installs it into bench/.venv)."""
import csv
import glob
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

csv_dir, out_dir = sys.argv[1], sys.argv[2]
title = sys.argv[3] if len(sys.argv) > 3 else "FleetLM"


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


tags = sorted(os.path.basename(p)[: -len(".distribution.csv")] for p in glob.glob(f"{csv_dir}/*.distribution.csv"))
tags = [t for t in tags if not t.endswith("_records")]
if not tags:
    sys.exit("no histograms to plot")

fig, ax = plt.subplots(figsize=(10, 6))
for tag in tags:
    pts = [(float(r["percentile"]), float(r["value"]) / 1000.0) for r in rows(f"{csv_dir}/{tag}.distribution.csv")]
    pts = [(p, v) for p, v in pts if p < 100.0]
    ax.plot([1.0 / (1.0 - p / 100.0) for p, _ in pts], [v for _, v in pts], label=tag)
ax.set_xscale("log")
ticks = [1, 2, 10, 100, 1000, 10000, 100000, 1000000]
ax.set_xticks(ticks)
ax.set_xticklabels(["0%", "50%", "90%", "99%", "99.9%", "99.99%", "99.999%", "99.9999%"])
ax.set_xlim(1, max(ticks))
ax.set_xlabel("percentile")
ax.set_ylabel("latency (ms)")
ax.set_title(f"{title}: server-side latency by percentile")
ax.grid(True, which="both", alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(f"{out_dir}/latency-percentiles.png", dpi=110)

fig, ax = plt.subplots(figsize=(10, 6))
for tag in tags:
    r = rows(f"{csv_dir}/{tag}.timeline.csv")
    if len(r) < 2:
        continue
    ax.plot([float(x["seconds"]) for x in r], [float(x["p99"]) / 1000.0 for x in r], label=tag)
ax.set_xlabel("seconds since the server started")
ax.set_ylabel("p99 latency per interval (ms)")
ax.set_title(f"{title}: p99 over time")
ax.grid(True, alpha=0.3)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(f"{out_dir}/latency-p99-over-time.png", dpi=110)
print(f"wrote {out_dir}/latency-percentiles.png and {out_dir}/latency-p99-over-time.png")
