#!/usr/bin/env bash
# Live-stream fan-out on this machine, with the same-run baselines the targets compare to.
#
#   bench/streams.sh [--secs S] [--rounds R] [--no-cluster]
#
# Single node (127.0.0.1:4000, fresh data dir under target/bench-streams/), R rounds
# alternating:
#   baseline  appends at 1000/s over 100 contexts, no subscribers
#   fanout    the same appends with 1000 SSE subscribers (10 per context)
# then 10,000 idle subscribers over 100 contexts (server memory per subscriber; connecting
# one at a time, then all at once), then
# (unless --no-cluster) one baseline/fanout pair on a 3-node cluster (bench/cluster.sh,
# subscribers and appends spread over the nodes). Each run prints one JSON line
# (tools/stream_bench.rs); all of them, with the machine and commit, go to
# target/bench-streams/results.jsonl. bench/results/streams.md holds a recorded run.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=15; rounds=3; cluster=1
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) secs=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --no-cluster) cluster=0; shift ;;
    *) echo "usage: bench/streams.sh [--secs S] [--rounds R] [--no-cluster]" >&2; exit 2 ;;
  esac
done
out=target/bench-streams
rm -rf "$out" && mkdir -p "$out"
cargo build --release --bin fleetlm --bin stream-bench >&2
BENCH=target/release/stream-bench
results=$out/results.jsonl
{
  echo "{\"commit\":\"$(git rev-parse --short HEAD)\",\"cores\":$(nproc),\"kernel\":\"$(uname -r)\",\"date\":\"$(date -u +%FT%TZ)\"}"
} >"$results"

cleanup() {
  [ -n "${FL_PID:-}" ] && kill -9 "$FL_PID" 2>/dev/null
  [ "$cluster" = 1 ] && bench/cluster.sh clean >/dev/null 2>&1
  true
}
trap cleanup EXIT

run() { # label, stream-bench args...
  local label=$1; shift
  echo "== $label" >&2
  local line
  line=$("$BENCH" "$@")
  echo "{\"run\":\"$label\",\"result\":$line}" | tee -a "$results"
}

ulimit -n "$(ulimit -Hn)"
./target/release/fleetlm serve --listen 127.0.0.1:4000 --data-dir "$out/data" >"$out/node.log" 2>&1 &
FL_PID=$!
for _ in $(seq 1 300); do curl -sf http://127.0.0.1:4000/health/ready >/dev/null && break; sleep 0.1; done
for r in $(seq 1 "$rounds"); do
  run "single baseline $r" --addr 127.0.0.1:4000 --subscribers 0 --contexts 100 --rate 1000 --secs "$secs" --prefix "s$r"
  run "single fanout $r" --addr 127.0.0.1:4000 --subscribers 1000 --contexts 100 --rate 1000 --secs "$secs" --prefix "s$r"
done
kill -9 "$FL_PID"; FL_PID=""
# Idle subscribers, each on a fresh node: one at a time (the cost of holding one), then
# all at once (a reconnect storm: the heap's high-water mark).
for concurrency in 1 0; do
  rm -rf "$out/data-idle"
  ./target/release/fleetlm serve --listen 127.0.0.1:4000 --data-dir "$out/data-idle" >"$out/node-idle.log" 2>&1 &
  FL_PID=$!
  for _ in $(seq 1 300); do curl -sf http://127.0.0.1:4000/health/ready >/dev/null && break; sleep 0.1; done
  run "single idle 10000 connecting ${concurrency/#0/all} at once" --addr 127.0.0.1:4000 --subscribers 10000 \
    --contexts 100 --idle --secs 5 --server-pid "$FL_PID" --connect-concurrency "$concurrency" --prefix idle
  kill -9 "$FL_PID"; FL_PID=""
done

if [ "$cluster" = 1 ]; then
  bench/cluster.sh clean >/dev/null 2>&1 || true
  bench/cluster.sh up 3 >/dev/null
  nodes=127.0.0.1:4001,127.0.0.1:4002,127.0.0.1:4003
  run "cluster3 baseline" --addr "$nodes" --subscribers 0 --contexts 100 --rate 1000 --secs "$secs" --prefix c
  run "cluster3 fanout" --addr "$nodes" --subscribers 1000 --contexts 100 --rate 1000 --secs "$secs" --prefix c
  bench/cluster.sh clean >/dev/null
fi
echo "results: $results" >&2
