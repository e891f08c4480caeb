#!/usr/bin/env bash
# Idle cost of Raft groups: a 3-node loopback cluster (bench/cluster.sh, 1 core per node)
# with no client load, at each shard count in SHARDS; the CPU time all three servers
# use over SECS seconds (heartbeats, elections at start excluded: measured after
# `balanced` and a settle pause). Appends to bench/results/idle-groups.md.
#
#   bench/idle-groups.sh                 # SHARDS="4 16 64" SECS=20
# Loopback only, bounded in time, stops by itself (the cluster is cleaned up).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARDS=${SHARDS:-4 16 64}
SECS=${SECS:-20}
export HTTP_BASE=${HTTP_BASE:-4100} PEER_BASE=${PEER_BASE:-5100}
cargo build --release --bin fleetlm >&2
trap 'bench/cluster.sh clean >/dev/null 2>&1 || true' EXIT
ticks() { local t=0 p; for p in bench/.cluster/node*.pid; do t=$((t + $(awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$(cat "$p")/stat"))); done; echo $t; }
out=bench/results/idle-groups.md
commit=$(git rev-parse --short HEAD)$(git status --porcelain -uno -- . ':!bench/results' | grep -q . && echo -dirty || true)
{
  echo "## $(date -u +%Y-%m-%dT%H:%MZ), commit \`$commit\`: \`bench/idle-groups.sh\` (SHARDS=\"$SHARDS\" SECS=$SECS)"
  echo
  echo "3 nodes × 1 core on a 2-core machine (loopback), no client load; CPU of the three servers together."
  echo
  echo "| shards | CPU over ${SECS}s (all nodes) | % of one core | per shard |"
  echo "|---:|---:|---:|---:|"
} >>"$out"
for n in $SHARDS; do
  bench/cluster.sh clean >/dev/null 2>&1 || true
  SHARDS=$n bench/cluster.sh up 3 >/dev/null
  bench/cluster.sh balanced >/dev/null || true
  sleep 3
  t0=$(ticks); sleep "$SECS"; t1=$(ticks)
  hz=$(getconf CLK_TCK)
  python3 -c "
cpu = ($t1 - $t0) / $hz
print(f'| $n | {cpu:.2f} s | {100 * cpu / $SECS:.1f} % | {1000 * cpu / $SECS / $n:.2f} ms/s |')" >>"$out"
done
echo >>"$out"
tail -n 12 "$out"
