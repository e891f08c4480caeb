#!/usr/bin/env bash
# A/B of fleetlm builds under the single-node append load, alternating, for changes
# whose effect is smaller than this machine's drift (same-binary throughput moves by
# ±10 % between minutes, more under CPU steal).
#
#   cp target/release/fleetlm /tmp/fl-a   # before the change
#   cargo build --release && cp target/release/fleetlm /tmp/fl-b
#   bench/ab.sh /tmp/fl-a /tmp/fl-b
#   ROUNDS=5 SECS=8 bench/ab.sh /tmp/fl-a FLEETLM_LOG=warn:/tmp/fl-b   # ENV=V[,ENV=V]:binary
#   bench/ab.sh /tmp/fl FLEETLM_CORE_LISTEN=127.0.0.1:4410,SHARD_AWARE=1:/tmp/fl   # shard-aware client
#
# Each round runs every spec once, in order, on a fresh data dir: loadgen, 50
# connections (CONNS), 200-byte appends, 1000 contexts. Prints one line per run
# (appends/s, p50/p99, server CPU per append, CPU steal) and the means per spec. Loopback
# only, bounded in time, stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n '2,14p' "$0" >&2; exit 2; }
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-10}
CONNS=${CONNS:-50}
PORT=${PORT:-4402}
scratch=target/bench-ab
rm -rf "$scratch" && mkdir -p "$scratch"
cargo build --release --bin loadgen >&2
cleanup() { [ -n "${FL_PID:-}" ] && kill -9 "$FL_PID" 2>/dev/null; true; }
trap cleanup EXIT

for r in $(seq 1 "$ROUNDS"); do
  for i in $(seq 1 $#); do
    spec=${!i}
    envs=""; bin=$spec
    if [[ $spec == *:* ]]; then envs=${spec%:*}; bin=${spec##*:}; fi
    rm -rf "$scratch/data"
    # shellcheck disable=SC2086
    env ${envs//,/ } "$bin" serve --listen "127.0.0.1:$PORT" --data-dir "$scratch/data" >"$scratch/server.log" 2>&1 &
    FL_PID=$!
    for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break; sleep 0.05; done
    # A spec with SHARD_AWARE=1 (and FLEETLM_CORE_LISTEN for the server) drives the
    # per-core ports: each connection sends only its core's contexts.
    aware=""; [[ ",$envs," == *,SHARD_AWARE=1,* ]] && aware=--shard-aware
    ./target/release/loadgen --addr "127.0.0.1:$PORT" --connections "$CONNS" --contexts 1000 --secs "$SECS" \
      --message-bytes 200 --mix append=1 --server-pid "$FL_PID" $aware >"$scratch/run-$r-$i.json"
    kill -9 "$FL_PID"; wait "$FL_PID" 2>/dev/null || true; FL_PID=
    python3 - "$scratch/run-$r-$i.json" "$spec" "$r" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); a = d["ops"]["append"]
print(f"round {sys.argv[3]}  {sys.argv[2]}: {a['per_sec']:.0f} appends/s  p50 {a['p50_us'] / 1000:.2f} ms  "
      f"p99 {a['p99_us'] / 1000:.2f} ms  server CPU {d['server_cpu_us_per_request']:.1f} µs/append  "
      f"steal {d['cpu_steal_pct']:.0f} %  errors {a['errors']}")
PY
  done
done

python3 - "$scratch" "$@" <<'PY'
import json, statistics, sys
scratch, specs = sys.argv[1], sys.argv[2:]
print("\nmeans over the rounds:")
for i, spec in enumerate(specs, 1):
    runs = []
    r = 1
    while True:
        try:
            runs.append(json.load(open(f"{scratch}/run-{r}-{i}.json")))
        except FileNotFoundError:
            break
        r += 1
    rate = statistics.mean(x["ops"]["append"]["per_sec"] for x in runs)
    cpu = statistics.mean(x["server_cpu_us_per_request"] for x in runs)
    p99 = statistics.median(x["ops"]["append"]["p99_us"] for x in runs) / 1000
    print(f"  {spec}: {rate:.0f} appends/s, server CPU {cpu:.1f} µs/append, p99 (median) {p99:.2f} ms")
PY
