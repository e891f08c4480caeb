#!/usr/bin/env bash
# Runs bench/hardening.py against a release build and prints one table row per phase
# (also written to target/hardening-rows.md; the JSON to target/hardening.json), to be
# recorded in bench/results/hardening.md with the command and the commit. ~2.5 minutes.
#   bench/hardening.sh            SECS=8 per phase (env)
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-8}
cargo build --release --bin fleetlm >&2
out=target/hardening.json
python3 bench/hardening.py target/release/fleetlm "$out" --secs "$SECS"
python3 - "$out" "$(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty)" "$SECS" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); commit, secs = sys.argv[2], sys.argv[3]
rows = []
for r in d["phases"]:
    got = ", ".join(f"{k}: {v}" for k, v in sorted(r["attack_got"].items())) or "—"
    ratio = f"{r['p99_vs_quiet']:.2f}×" if r["p99_vs_quiet"] else "—"
    rows.append(f"| {r['phase']} | {got} | {r['honest_requests']} | {r['honest_errors']} | {r['honest_p50_ms']:.2f} | "
                f"{r['honest_p99_ms']:.2f} | {ratio} | {r['rss_max_mib']:.0f} | {r['server_cpu_pct']:.0f} % | {r['clients_cpu_pct']:.0f} % | {r['not_ready_polls']}/{r['ready_polls']} | "
                f"{'yes' if r['alive'] else 'NO'} |")
print("\n".join(rows))
open("target/hardening-rows.md", "w").write("\n".join(rows) + "\n")
PY
