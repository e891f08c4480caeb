#!/usr/bin/env bash
# What a request costs before the durable path: FleetLM reads that touch neither Raft nor
# the WAL, next to durable appends and to Redis, in the same rounds.
#
#   bench/http-floor.sh                 # writes bench/results/http-floor.md
#   SECS=10 ROUNDS=5 bench/http-floor.sh
#
# Each round, on a fresh data dir / Redis dir, 50 connections, loopback:
# 1. FleetLM durable appends (loadgen, 200-byte messages, 1000 contexts): the load of
#    bench/single-node.sh.
# 2. FleetLM tail reads of those 1000 (empty) contexts (`GET …/tail?limit=50`): the HTTP
#    layer, the executors and the hop to the shard's core, no Raft, no WAL, no fsync.
# 3. The same reads from a shard-aware client (`--core-listen`, `loadgen --shard-aware`):
#    no hop between cores either.
# 4. FleetLM durable appends from wrk (bench/wrk/append.lua), a C client: whether
#    loadgen's own cost moves the figures.
# 5. Redis 7 XADD with appendfsync always (redis-benchmark, -r 1000): the baseline of
#    issue #14's ratio.
# 6. Redis PING (redis-benchmark, the command PING): Redis with no work at all.
# For every run: requests/s, the server's CPU per request and the client's (both user +
# system, from /proc; loadgen measures its own, redis-benchmark is timed by
# /usr/bin/time): on 2 cores shared by client and server, throughput is bounded by
# their sum. Bounded in time, stops by itself, loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-8}
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-4420}
REDIS_PORT=${REDIS_PORT:-6391}
OUT=${OUT:-bench/results/http-floor.md}
scratch=target/bench-floor
rm -rf "$scratch" && mkdir -p "$scratch" bench/results
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
  apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
fi
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release --bin fleetlm --bin loadgen

cleanup() {
  [ -n "${FL_PID:-}" ] && kill -9 "$FL_PID" 2>/dev/null
  [ -n "${RS_PID:-}" ] && kill -9 "$RS_PID" 2>/dev/null
  true
}
trap cleanup EXIT

cpu_ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }

start_fleetlm() {
  rm -rf "$scratch/data"
  ./target/release/fleetlm serve --listen "127.0.0.1:$PORT" --core-listen "127.0.0.1:$((PORT + 10))" \
    --data-dir "$scratch/data" >"$scratch/fleetlm.log" 2>&1 &
  FL_PID=$!
  for _ in $(seq 1 600); do curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && break; sleep 0.05; done
}
stop_fleetlm() { kill -9 "$FL_PID"; wait "$FL_PID" 2>/dev/null || true; FL_PID=; }

fleetlm_run() { # name mix extra-loadgen-args
  start_fleetlm
  # shellcheck disable=SC2086
  ./target/release/loadgen --addr "127.0.0.1:$PORT" --connections 50 --contexts 1000 --secs "$SECS" \
    --message-bytes 200 --mix "$2" --server-pid "$FL_PID" $3 >"$scratch/$1.json"
  stop_fleetlm
}

wrk_run() { # name
  start_fleetlm
  # The contexts first (loadgen creates them), then 1 s of warm-up, then the measured run.
  ./target/release/loadgen --addr "127.0.0.1:$PORT" --connections 10 --contexts 1000 --secs 1 --warmup-secs 0 \
    --mix tail=1 >/dev/null
  wrk -t2 -c50 -d1s -s bench/wrk/append.lua "http://127.0.0.1:$PORT" >/dev/null
  local cpu0; cpu0=$(cpu_ticks "$FL_PID")
  /usr/bin/time -f "%U %S" -o "$scratch/$1.client" \
    wrk -t2 -c50 -d"${SECS}s" -s bench/wrk/append.lua "http://127.0.0.1:$PORT" | tail -1 >"$scratch/$1.wrk"
  echo "$(( $(cpu_ticks "$FL_PID") - cpu0 )) $(getconf CLK_TCK)" >"$scratch/$1.server"
  stop_fleetlm
}

VALUE=$(head -c 200 /dev/zero | tr '\0' x)
redis_run() { # name appendfsync benchmark-args...
  local name=$1 fsync=$2; shift 2
  rm -rf "$scratch/redis" && mkdir -p "$scratch/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync "$fsync" \
    --dir "$PWD/$scratch/redis" --daemonize no >"$scratch/redis.log" 2>&1 &
  RS_PID=$!
  for _ in $(seq 1 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
  # Run for about SECS: size the request count from a short probe.
  redis-benchmark -p "$REDIS_PORT" -c 50 -n 20000 -r 1000 --csv "$@" >"$scratch/probe.csv"
  local n
  n=$(python3 -c "import csv; r=list(csv.reader(open('$scratch/probe.csv'))); print(int(float(r[1][1])) * $SECS)")
  local cpu0; cpu0=$(cpu_ticks "$RS_PID")
  /usr/bin/time -f "%U %S" -o "$scratch/$name.client" \
    redis-benchmark -p "$REDIS_PORT" -c 50 -n "$n" -r 1000 --csv "$@" >"$scratch/$name.csv"
  echo "$(( $(cpu_ticks "$RS_PID") - cpu0 )) $(getconf CLK_TCK) $n" >"$scratch/$name.server"
  kill -9 "$RS_PID"; wait "$RS_PID" 2>/dev/null || true; RS_PID=
}

for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r/$ROUNDS" >&2
  fleetlm_run "append-$r" append=1 ""
  fleetlm_run "tail-$r" tail=1 ""
  fleetlm_run "tail-aware-$r" tail=1 --shard-aware
  wrk_run "append-wrk-$r"
  redis_run "xadd-$r" always XADD 'stream:__rand_int__' '*' f "$VALUE"
  redis_run "ping-$r" always PING
done

commit=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src tools Cargo.toml || echo "-dirty")
python3 - "$scratch" "$ROUNDS" "$commit" "$SECS" >"$OUT" <<'PY'
import csv, json, statistics, sys, datetime
scratch, rounds, commit, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
runs = {
    "append": "FleetLM durable append (`POST …/messages`, 201 after fdatasync via Raft)",
    "tail": "FleetLM tail read (`GET …/tail?limit=50`, empty contexts; no Raft, no WAL)",
    "tail-aware": "FleetLM tail read, shard-aware client (no hop between cores)",
    "append-wrk": "FleetLM durable append, wrk client (`bench/wrk/append.lua`)",
    "xadd": "Redis XADD, appendfsync always",
    "ping": "Redis PING (no work)",
}
def fleetlm(name, r):
    d = json.load(open(f"{scratch}/{name}-{r}.json"))
    op = next(iter(d["ops"].values()))
    return d["requests_per_sec"], d["server_cpu_us_per_request"], d["client_cpu_us_per_request"], op["errors"]
def wrk(name, r):
    d = json.loads(open(f"{scratch}/{name}-{r}.wrk").read())
    ticks, hz = map(int, open(f"{scratch}/{name}-{r}.server").read().split())
    user, system = map(float, open(f"{scratch}/{name}-{r}.client").read().split()[-2:])
    n = max(d["requests"], 1)
    return n / (d["duration_us"] / 1e6), ticks / hz * 1e6 / n, (user + system) * 1e6 / n, d["non_2xx_3xx"] + d["socket_errors"]
def redis(name, r):
    rps = float(list(csv.reader(open(f"{scratch}/{name}-{r}.csv")))[1][1])
    ticks, hz, n = map(int, open(f"{scratch}/{name}-{r}.server").read().split())
    user, system = map(float, open(f"{scratch}/{name}-{r}.client").read().split()[-2:])
    return rps, ticks / hz * 1e6 / n, (user + system) * 1e6 / n, 0
kind = lambda k: fleetlm if k in ("append", "tail", "tail-aware") else wrk if k == "append-wrk" else redis
rows = {k: [kind(k)(k, r) for r in range(1, rounds + 1)] for k in runs}
med = lambda xs: statistics.median(xs)
print("# What a request costs before the durable path (HTTP layer floor)\n")
print(f"- command: `bench/http-floor.sh` (SECS={secs} ROUNDS={rounds}); commit `{commit}`; "
      f"date {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%MZ')}")
print("- machine: 2 cores, loopback; client and server share the cores; 50 connections; "
      "FleetLM at its defaults (2 executors, 4 shards), fresh data dir per run")
print("- medians over the rounds; ratios within each round, then their median; CPU is user + system "
      "from /proc (the server's, all threads; the client's own)\n")
print("| run | requests/s | × Redis XADD | server CPU per request | client CPU per request | errors |")
print("|---|---:|---:|---:|---:|---:|")
for k, label in runs.items():
    ratio = med([rows[k][i][0] / rows["xadd"][i][0] for i in range(rounds)])
    print(f"| {label} | {med([x[0] for x in rows[k]]):.0f} | {ratio:.2f}× | {med([x[1] for x in rows[k]]):.1f} µs | "
          f"{med([x[2] for x in rows[k]]):.1f} µs | {sum(x[3] for x in rows[k])} |")
print("\nPer round (requests/s):\n")
for i in range(rounds):
    print(f"- round {i + 1}: " + ", ".join(f"{k} {rows[k][i][0]:.0f}" for k in runs))
PY
cat "$OUT"
