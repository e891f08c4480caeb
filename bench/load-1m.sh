#!/usr/bin/env bash
# Memory and restart time after a large history: 1M messages of 200 B in 10k contexts.
#
#   bench/load-1m.sh              # prints a markdown section (append it to the results)
#   MESSAGES=200000 bench/load-1m.sh
#
# Loads with loadgen (50 connections), reads the server's RSS, kills it with SIGKILL,
# restarts it on the same data and times start → /health/ready. Loopback only; stops
# by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-1000000}
CONTEXTS=${CONTEXTS:-10000}
PORT=${PORT:-4401}
scratch=target/bench-1m
rm -rf "$scratch" && mkdir -p "$scratch"
cargo build --release --bin fleetlm --bin loadgen >&2
cleanup() { [ -n "${FL_PID:-}" ] && kill -9 "$FL_PID" 2>/dev/null; true; }
trap cleanup EXIT
start() {
  ./target/release/fleetlm serve --listen "127.0.0.1:$PORT" --data-dir "$scratch/data" >>"$scratch/fleetlm.log" 2>&1 &
  FL_PID=$!
  for _ in $(seq 1 12000); do
    curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && return 0
    sleep 0.01
  done
  echo "not ready" >&2; exit 1
}
start
t0=$(date +%s.%N)
./target/release/loadgen --addr "127.0.0.1:$PORT" --connections 50 --contexts "$CONTEXTS" --secs 3600 --warmup-secs 0 \
  --message-bytes 200 --appends-total "$MESSAGES" >"$scratch/load.json"
t1=$(date +%s.%N)
sleep 2
RSS_KB=$(awk '/VmRSS/ {print $2}' "/proc/$FL_PID/status")
DISK=$(du -sh "$scratch/data" | cut -f1)
kill -9 "$FL_PID"; FL_PID=
r0=$(date +%s.%N)
start
r1=$(date +%s.%N)
RSS2_KB=$(awk '/VmRSS/ {print $2}' "/proc/$FL_PID/status")
python3 - "$scratch/load.json" "$RSS_KB" "$RSS2_KB" "$t0" "$t1" "$r0" "$r1" "$MESSAGES" "$CONTEXTS" "$DISK" <<'PY'
import json, sys
load = json.load(open(sys.argv[1]))["ops"]["append"]
rss, rss2 = int(sys.argv[2]) / 1024, int(sys.argv[3]) / 1024
t0, t1, r0, r1 = map(float, sys.argv[4:8])
n, c, disk = int(sys.argv[8]), int(sys.argv[9]), sys.argv[10]
print(f"## After {n:,} messages of 200 B in {c:,} contexts (`bench/load-1m.sh`)")
print()
print(f"- loaded in {t1 - t0:.0f} s ({load['count'] / (t1 - t0):.0f} appends/s; append p99 {load['p99_us'] / 1000:.1f} ms, max {load['max_us'] / 1000:.0f} ms, errors {load['errors']}); data dir {disk}")
print(f"- server RSS after loading: **{rss:.0f} MiB** (target ≤ 200 MB): {'PASS' if rss * 1.048576 <= 200 else 'FAIL'}")
print(f"- `kill -9`, restart → `/health/ready`: **{r1 - r0:.2f} s** (target ≤ 5 s): {'PASS' if r1 - r0 <= 5 else 'FAIL'}; RSS after restart {rss2:.0f} MiB")
PY
