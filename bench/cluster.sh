#!/usr/bin/env bash
# A local FleetLM cluster on 127.0.0.1, for trying things and for benchmarks.
#
#   bench/cluster.sh up [N]     build if needed, start N nodes (default 3), wait until
#                               ready, print the HTTP base URLs one per line
#   bench/cluster.sh kill I     SIGKILL node I
#   bench/cluster.sh start I    start node I again with its data
#   bench/cluster.sh stop I     SIGTERM node I
#   bench/cluster.sh balanced   wait (≤ 15 s) until every shard is led by its preferred node
#   bench/cluster.sh down       stop all nodes, keep their data
#   bench/cluster.sh clean      stop all nodes and delete their data
#
# Node I: HTTP on 127.0.0.1:$((HTTP_BASE+I)) (4001, 4002, …), peers on
# 127.0.0.1:$((PEER_BASE+10*I)) and the ports after it (one per core), data in
# bench/.cluster/nodeI/, log in bench/.cluster/nodeI.log, pid in bench/.cluster/nodeI.pid.
# Knobs (env): CORES (per node, default 1 so that 3 nodes share 2 cores fairly),
# SHARDS (default: the server's own, 2 × CORES — 2 shards per node at CORES=1, the density
# of a default single node; the shard count is fixed when a data dir is created), EXTRA_ARGS (more `fleetlm serve` flags), BIN (default
# target/release/fleetlm), LATENCY_DIR (node I writes its latency interval log to
# $LATENCY_DIR/nodeI.hlog), CORE_PORTS=1 (node I also serves clients on per-core ports
# 127.0.0.1:$((HTTP_BASE+100+10*I)) + core, `--core-listen`, for shard-aware clients).
# The nodes share a cluster secret made at the first `up`
# (bench/.cluster/secret), or FLEETLM_CLUSTER_SECRET if set.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=bench/.cluster
HTTP_BASE=${HTTP_BASE:-4000}
PEER_BASE=${PEER_BASE:-5000}
CORES=${CORES:-1}
SHARDS=${SHARDS:-}
BIN=${BIN:-target/release/fleetlm}
EXTRA_ARGS=${EXTRA_ARGS:-}

cluster_secret() {
  if [ -n "${FLEETLM_CLUSTER_SECRET:-}" ]; then echo "$FLEETLM_CLUSTER_SECRET"; return; fi
  mkdir -p "$DIR"
  [ -s "$DIR/secret" ] || (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/secret")
  cat "$DIR/secret"
}

http_port() { echo $((HTTP_BASE + $1)); }
core_ports_arg() { [ "${CORE_PORTS:-0}" = 1 ] && echo "--core-listen 127.0.0.1:$((HTTP_BASE + 100 + 10 * $1))"; true; }
peer_port() { echo $((PEER_BASE + 10 * $1)); }

nodes_file="$DIR/nodes"
node_count() { cat "$nodes_file" 2>/dev/null || echo 0; }

peers_arg() {
  local n=$1 out="" i
  for i in $(seq 1 "$n"); do out="$out${out:+,}$i=127.0.0.1:$(peer_port "$i")"; done
  echo "$out"
}

alive() { [ -f "$DIR/node$1.pid" ] && kill -0 "$(cat "$DIR/node$1.pid")" 2>/dev/null; }

start_node() {
  local i=$1 n
  n=$(node_count)
  if alive "$i"; then return 0; fi
  mkdir -p "$DIR/node$i"
  local latency=""
  if [ -n "${LATENCY_DIR:-}" ]; then latency="--latency-log $LATENCY_DIR/node$i.hlog"; fi
  # Made here, not in the backgrounded command below: its expansions run in the
  # background job, and nodes started together would each make a different secret.
  local secret
  secret=$(cluster_secret)
  # shellcheck disable=SC2086
  FLEETLM_CLUSTER_SECRET=$secret nohup "$BIN" serve --node-id "$i" --listen "127.0.0.1:$(http_port "$i")" \
    --peer-listen "127.0.0.1:$(peer_port "$i")" --peers "$(peers_arg "$n")" \
    --data-dir "$DIR/node$i" --cores "$CORES" ${SHARDS:+--shards "$SHARDS"} --first-cpu $(((i - 1) * CORES % $(nproc))) \
    $latency $(core_ports_arg "$i") $EXTRA_ARGS \
    >>"$DIR/node$i.log" 2>&1 </dev/null &
  echo $! >"$DIR/node$i.pid"
}

wait_ready() {
  local i=$1
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$(http_port "$i")/health/ready" >/dev/null && return 0
    alive "$i" || { echo "node $i exited; see $DIR/node$i.log" >&2; tail -5 "$DIR/node$i.log" >&2; return 1; }
    sleep 0.1
  done
  echo "node $i not ready after 30 s; see $DIR/node$i.log" >&2
  return 1
}

# Until every shard is led by its preferred node (shard s → node s mod n + 1, see
# src/shard/leaders.rs), at most 15 s: benchmarks start from a balanced cluster.
wait_balanced() {
  local n=$1
  for _ in $(seq 1 150); do
    if curl -sf "http://127.0.0.1:$(http_port 1)/v1/cluster" | python3 -c "
import json, sys
d = json.load(sys.stdin)
sys.exit(0 if all(s['leader'] == s['shard'] % $n + 1 for s in d['shards']) else 1)" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "leaders not spread after 15 s" >&2
  return 1
}

signal_all() {
  local sig=$1 i
  for i in $(seq 1 "$(node_count)"); do
    if alive "$i"; then kill "-$sig" "$(cat "$DIR/node$i.pid")" 2>/dev/null || true; fi
  done
  for i in $(seq 1 "$(node_count)"); do
    for _ in $(seq 1 50); do alive "$i" || break; sleep 0.1; done
    if alive "$i"; then kill -9 "$(cat "$DIR/node$i.pid")" 2>/dev/null || true; fi
    rm -f "$DIR/node$i.pid"
  done
}

cmd=${1:-}
case "$cmd" in
  up)
    n=${2:-3}
    if [ ! -x "$BIN" ] || [ -n "$(find src Cargo.toml Cargo.lock -newer "$BIN" 2>/dev/null | head -1)" ]; then
      cargo build --release --bin fleetlm >&2
    fi
    mkdir -p "$DIR"
    if [ "$(node_count)" != 0 ] && [ "$(node_count)" != "$n" ]; then
      echo "bench/.cluster holds a $(node_count)-node cluster; run 'bench/cluster.sh clean' first" >&2
      exit 1
    fi
    echo "$n" >"$nodes_file"
    for i in $(seq 1 "$n"); do start_node "$i"; done
    for i in $(seq 1 "$n"); do wait_ready "$i"; done
    wait_balanced "$n" || true # the nodes serve anyway; benchmarks report the spread
    for i in $(seq 1 "$n"); do echo "http://127.0.0.1:$(http_port "$i")"; done
    ;;
  kill)
    i=${2:?node number}
    if alive "$i"; then kill -9 "$(cat "$DIR/node$i.pid")"; fi
    rm -f "$DIR/node$i.pid"
    ;;
  stop)
    i=${2:?node number}
    if alive "$i"; then kill -TERM "$(cat "$DIR/node$i.pid")"; fi
    rm -f "$DIR/node$i.pid"
    ;;
  start)
    i=${2:?node number}
    start_node "$i"
    wait_ready "$i"
    echo "http://127.0.0.1:$(http_port "$i")"
    ;;
  balanced) wait_balanced "$(node_count)" ;;
  down) signal_all TERM ;;
  clean)
    signal_all KILL
    rm -rf "$DIR"
    ;;
  *)
    awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
