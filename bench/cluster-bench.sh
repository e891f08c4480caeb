#!/usr/bin/env bash
# 3-node loopback cluster vs a single node, same load, same run; then failover time.
#
#   bench/cluster-bench.sh            # writes bench/results/cluster.md
#   SECS=20 ROUNDS=5 bench/cluster-bench.sh
#
# ROUNDS rounds of:
# 1. Single node (all cores, 4 shards): loadgen, 50 connections, 200-byte appends,
#    1000 contexts — the load of bench/single-node.sh.
# 2. 3 nodes from bench/cluster.sh (1 core each, every append fsync'd on 2 of 3), the same
#    loadgen spread over the three nodes' HTTP ports; once with 4 shards (the single node's
#    total) and once with 2 (a 1-core node's default: the same 2 shards per core).
# then
# 3. bench/failover.py on the 2-shard cluster: SIGKILL the node leading the most shards
#    during appends; time from the kill to the first 201 on each of its shards through a
#    survivor. ROUNDS times.
# The report gives each round's ratios and their median, and the CPU steal (time the
# hypervisor took) of every run.
# With SHARD_AWARE=1 every FleetLM run uses a shard-aware client (`loadgen
# --shard-aware` against `--core-listen` ports: each connection sends only the contexts
# whose shard is led by its node and core), and the report goes to OUT (default
# bench/results/cluster.md). Everything on 127.0.0.1, bounded in time, stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-10}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-4400}
scratch=target/bench-cluster
OUT=${OUT:-bench/results/cluster.md}
SINGLE_ARGS=""; LG_AWARE=""
if [ "${SHARD_AWARE:-0}" = 1 ]; then
  export CORE_PORTS=1
  SINGLE_ARGS="--core-listen 127.0.0.1:$((PORT + 10))"
  LG_AWARE=--shard-aware
fi
rm -rf "$scratch" && mkdir -p "$scratch" bench/results
cargo build --release --bin fleetlm --bin loadgen

cleanup() {
  [ -n "${FL_PID:-}" ] && kill -9 "$FL_PID" 2>/dev/null
  bench/cluster.sh clean >/dev/null 2>&1 || true
}
trap cleanup EXIT
bench/cluster.sh clean >/dev/null

# ROUNDS rounds, each: the single node, then the cluster with 4 and with 2 shards per node
# (2 × cores = 2 is a 1-core node's default, the single node's density of 2 shards per
# core; 4 is the single node's total). Ratios are taken within a round — minutes apart,
# this shared VM's speed differs by more than the effect being measured.
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r: single node appends (${SECS}s)" >&2
  rm -rf "$scratch/single"
  # shellcheck disable=SC2086
  ./target/release/fleetlm serve --listen "127.0.0.1:$PORT" --data-dir "$scratch/single" $SINGLE_ARGS >"$scratch/single.log" 2>&1 &
  FL_PID=$!
  for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break; sleep 0.05; done
  ./target/release/loadgen --addr "127.0.0.1:$PORT" --connections 50 --contexts 1000 --secs "$SECS" \
    --message-bytes 200 --mix append=1 $LG_AWARE >"$scratch/single-$r.json"
  kill -9 "$FL_PID"; wait "$FL_PID" 2>/dev/null || true; FL_PID=
  for shards in 4 2; do
    echo "== round $r: 3-node cluster appends, $shards shards (${SECS}s)" >&2
    bench/cluster.sh clean >/dev/null
    SHARDS=$shards bench/cluster.sh up 3 >"$scratch/urls"
    ./target/release/loadgen --addr 127.0.0.1:4001,127.0.0.1:4002,127.0.0.1:4003 --connections 50 --contexts 1000 \
      --secs "$SECS" --message-bytes 200 --mix append=1 $LG_AWARE >"$scratch/cluster-$shards-$r.json"
  done
done
# The last round's 2-shard cluster is still up: failover.py uses it.

echo "== failover (${ROUNDS} rounds)" >&2
# failover.py restarts the killed node through bench/cluster.sh: same shard count.
SHARDS=2 python3 bench/failover.py "$ROUNDS" >"$scratch/failover.json"
bench/cluster.sh clean >/dev/null

# The table of earlier runs is kept by hand (add this run's row to it): keep it.
kept=$(sed -n '/^## Spread over repeated runs/,$p' "$OUT" 2>/dev/null || true)
python3 bench/cluster_report.py "$scratch" \
  "${SHARD_AWARE:+SHARD_AWARE=$SHARD_AWARE }bench/cluster-bench.sh (SECS=$SECS ROUNDS=$ROUNDS)" >"$OUT"
if [ -n "$kept" ]; then printf '\n%s\n' "$kept" >>"$OUT"; fi
cat "$OUT"
