#!/usr/bin/env bash
# Single-node benchmark, FleetLM next to Redis measured in the same run on this machine.
#
#   bench/single-node.sh            # writes bench/results/single-node.md
#   SECS=20 ROUNDS=5 bench/single-node.sh
#
# 1. FleetLM durable appends: loadgen, 50 connections, 200-byte messages, 1000 contexts.
# 2. Redis 7 (appendonly yes, appendfsync always): redis-benchmark XADD, 50 clients,
#    200-byte values over 1000 streams. 1 and 2 alternate, ROUNDS (3) times each.
# 3. FleetLM replay of 1000 messages (from_seq=-1000&limit=1000) on preloaded contexts,
#    at 1, 10 and 50 connections.
# Only loopback, bounded in time; everything stops by itself.
#
#   SHARD_AWARE=1 OUT=/tmp/aware.md bench/single-node.sh   # a shard-aware client: the
#       server gets --core-listen, loadgen --shard-aware (each connection sends only the
#       contexts of its core, to that core's port)
#
#   bench/single-node.sh --sweep    # writes bench/results/shard-sweep.md instead
#   SHARDS="1 2 4 16 64" BASE=/tmp/fleetlm-before bench/single-node.sh --sweep
#
# The sweep runs the append load at each shard count (SHARDS), ROUNDS alternating rounds
# of FleetLM and Redis, and, with BASE=<an earlier fleetlm binary>, that binary too in
# the same rounds (same-run ratios); WAL syncs and records per sync come from /metrics.
set -euo pipefail
SWEEP=0
[ "${1:-}" = "--sweep" ] && SWEEP=1
cd "$(dirname "$0")/.."
SECS=${SECS:-10}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-4400}
REDIS_PORT=${REDIS_PORT:-6390}
scratch=target/bench-single
OUT=${OUT:-bench/results/single-node.md}
LG_AWARE=""
if [ "${SHARD_AWARE:-0}" = 1 ]; then
  FL_ARGS="${FL_ARGS:-} --core-listen 127.0.0.1:$((PORT + 10))"
  LG_AWARE=--shard-aware
fi
rm -rf "$scratch" && mkdir -p "$scratch" bench/results

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
cargo build --release --bin fleetlm --bin loadgen

cleanup() {
  # Only our own children: never `kill 0` (that is the whole process group).
  [ -n "${FL_PID:-}" ] && kill -9 "$FL_PID" 2>/dev/null
  [ -n "${RS_PID:-}" ] && kill -9 "$RS_PID" 2>/dev/null
  true
}
trap cleanup EXIT

start_fleetlm() {
  "${FL_BIN:-./target/release/fleetlm}" serve --listen "127.0.0.1:$PORT" --data-dir "$1" ${FL_ARGS:-} >"$scratch/fleetlm.log" 2>&1 &
  FL_PID=$!
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && return 0
    sleep 0.05
  done
  echo "fleetlm did not become ready" >&2; cat "$scratch/fleetlm.log" >&2; exit 1
}

VALUE=$(head -c 200 /dev/zero | tr '\0' x)
cpu_ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }
redis_round() {
  rm -rf "$scratch/redis" && mkdir -p "$scratch/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always \
    --dir "$PWD/$scratch/redis" --daemonize no >"$scratch/redis.log" 2>&1 &
  RS_PID=$!
  for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
  # Run for about SECS: size the request count from a short probe.
  redis-benchmark -p "$REDIS_PORT" -c 50 -n 20000 -r 1000 --csv XADD 'stream:__rand_int__' '*' f "$VALUE" >"$scratch/redis-probe.csv"
  PROBE_RPS=$(python3 -c "import csv,sys; r=list(csv.reader(open('$scratch/redis-probe.csv'))); print(int(float(r[1][1])))")
  N=$((PROBE_RPS * SECS))
  # redis-server's CPU time (user + system, all threads) over the run, as loadgen's
  # --server-pid measures FleetLM's: CPU per request is steadier than throughput here.
  cpu0=$(cpu_ticks "$RS_PID")
  redis-benchmark -p "$REDIS_PORT" -c 50 -n "$N" -r 1000 --csv XADD 'stream:__rand_int__' '*' f "$VALUE" >"$1"
  echo "$(( $(cpu_ticks "$RS_PID") - cpu0 )) $(getconf CLK_TCK) $N" >"$2"
  kill -9 $RS_PID; wait $RS_PID 2>/dev/null || true; RS_PID=
}

if [ "$SWEEP" = 1 ]; then
  SHARDS=${SHARDS:-1 2 4 16 64}
  bins=("new=./target/release/fleetlm")
  [ -n "${BASE:-}" ] && bins+=("base=$BASE")
  for n in $SHARDS; do
    for r in $(seq 1 "$ROUNDS"); do
      for spec in "${bins[@]}"; do
        label=${spec%%=*}; FL_BIN=${spec#*=}; FL_ARGS="--shards $n"
        echo "== $n shards, round $r/$ROUNDS: FleetLM $label (${SECS}s)" >&2
        start_fleetlm "$scratch/data"
        ./target/release/loadgen --addr "127.0.0.1:$PORT" --connections 50 --contexts 1000 --secs "$SECS" \
          --message-bytes 200 --mix append=1 --server-pid "$FL_PID" >"$scratch/sweep-$n-$r-$label.json"
        curl -sf "http://127.0.0.1:$PORT/metrics" >"$scratch/sweep-$n-$r-$label.metrics" || true
        kill -9 $FL_PID; wait $FL_PID 2>/dev/null || true; FL_PID=
        rm -rf "$scratch/data"
      done
      echo "== $n shards, round $r/$ROUNDS: Redis XADD (appendfsync always)" >&2
      redis_round "$scratch/sweep-$n-$r-redis.csv" "$scratch/sweep-$n-$r-redis-cpu.txt"
    done
  done
  python3 bench/shard_sweep_report.py "$scratch" "$ROUNDS" "$SHARDS" "${BASE:-}" \
    "bench/single-node.sh --sweep (SECS=$SECS ROUNDS=$ROUNDS SHARDS=\"$SHARDS\"${BASE:+ BASE=$BASE})" >bench/results/shard-sweep.md
  cat bench/results/shard-sweep.md
  exit 0
fi

# FleetLM and Redis alternate, ROUNDS times each (runs here vary by ±20 %): the report
# takes the median of the per-round ratios.
for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r/$ROUNDS: FleetLM appends (${SECS}s)" >&2
  start_fleetlm "$scratch/data-$r"
  ./target/release/loadgen --addr "127.0.0.1:$PORT" --connections 50 --contexts 1000 --secs "$SECS" \
    --message-bytes 200 --mix append=1 --server-pid "$FL_PID" $LG_AWARE >"$scratch/fleetlm-append-$r.json"
  RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$FL_PID/status")
  kill -9 $FL_PID; wait $FL_PID 2>/dev/null || true; FL_PID=
  rm -rf "$scratch/data-$r"
  echo "== round $r/$ROUNDS: Redis XADD (appendfsync always)" >&2
  redis_round "$scratch/redis-xadd-$r.csv" "$scratch/redis-cpu-$r.txt"
done

echo "== FleetLM replay of 1000 messages (${SECS}s per concurrency)" >&2
start_fleetlm "$scratch/data-replay"
# 20 contexts with ≥1000 messages each, then replay them.
./target/release/loadgen --addr "127.0.0.1:$PORT" --connections 50 --contexts 20 --secs 1 --warmup-secs 0 \
  --message-bytes 200 --mix append=1 --appends-total 21000 >/dev/null
# At 1, 10 and 50 connections: latency alone, moderate load, and the append run's concurrency.
for c in 1 10 50; do
  ./target/release/loadgen --addr "127.0.0.1:$PORT" --connections "$c" --contexts 20 --secs "$SECS" --no-create \
    --mix replay=1 --replay-limit 1000 >"$scratch/fleetlm-replay-c$c.json"
done
kill -9 $FL_PID; FL_PID=

# The 1M-message section comes from bench/load-1m.sh (a separate, longer run): keep it.
kept=$(sed -n '/^## After 1,000,000/,$p' "$OUT" 2>/dev/null || true)
python3 bench/single_node_report.py "$scratch" "$RSS_KB" "$ROUNDS" \
  "${SHARD_AWARE:+SHARD_AWARE=$SHARD_AWARE }bench/single-node.sh (SECS=$SECS ROUNDS=$ROUNDS)" >"$OUT"
if [ -n "$kept" ]; then printf '\n%s\n' "$kept" >>"$OUT"; fi
cat "$OUT"
