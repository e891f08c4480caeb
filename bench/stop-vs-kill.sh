#!/usr/bin/env bash
# What stopping a node costs the writes of the others: a graceful stop (SIGTERM, which
# hands the node's shards over during its grace period) against a crash (SIGKILL, after
# which its shards elect new leaders).
#
#   bench/stop-vs-kill.sh [ROUNDS]
#
# Each round and each way: a fresh 3-node loopback cluster (bench/cluster.sh), loadgen
# appending through nodes 2 and 3 only (20 connections, 200 contexts, 8 s), node 1
# stopped 3 s in. Prints appends/s, p99, max and errors per run.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
cargo build --release --bin fleetlm --bin loadgen >&2
out=target/bench-stop-vs-kill; rm -rf "$out" && mkdir -p "$out"
trap 'bench/cluster.sh clean >/dev/null 2>&1 || true' EXIT
for r in $(seq 1 "$rounds"); do
  for how in term kill; do
    bench/cluster.sh clean >/dev/null 2>&1 || true
    bench/cluster.sh up 3 >/dev/null
    bench/cluster.sh balanced >/dev/null 2>&1 || true
    led=$(curl -s localhost:4002/v1/cluster | python3 -c \
      "import json,sys; print(sum(1 for s in json.load(sys.stdin)['shards'] if s['leader'] == 1))")
    ./target/release/loadgen --addr 127.0.0.1:4002,127.0.0.1:4003 --connections 20 --contexts 200 --secs 8 \
      --message-bytes 200 --mix append=1 >"$out/$how-$r.json" 2>/dev/null &
    lg=$!
    sleep 3
    if [ "$how" = term ]; then bench/cluster.sh stop 1; else bench/cluster.sh kill 1; fi
    wait "$lg"
    python3 - "$out/$how-$r.json" "$how" "$led" "$r" <<'PY'
import json, sys
a = json.load(open(sys.argv[1]))["ops"]["append"]
print(f"round {sys.argv[4]} {sys.argv[2]:4} (node 1 led {sys.argv[3]} shards): {a['per_sec']:.0f} appends/s  "
      f"p99 {a['p99_us'] / 1000:.1f} ms  max {a['max_us'] / 1000:.1f} ms  errors {a['errors']}")
PY
  done
done
