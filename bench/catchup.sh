#!/usr/bin/env bash
# How long a new node takes to catch up with a 3-node cluster's history: MESSAGES
# messages of 200 B in CONTEXTS contexts are appended through all three nodes, node 3 is
# removed (DELETE /v1/cluster/members/3) and killed, and an empty node 4 is started and
# added (POST /v1/cluster/members); timed from the add until every shard on node 4 has
# applied what nodes 1 and 2 had (it gets each shard by snapshot: their logs are purged).
# Then a few contexts are read from node 4 locally and compared with node 1.
#
#   bench/catchup.sh                        # 1M messages in 10k contexts
#   MESSAGES=200000 bench/catchup.sh
#   BIN=/tmp/fleetlm-old bench/catchup.sh   # another build
#
# Uses bench/cluster.sh (loopback, 1 core per node); prints a markdown section. (A node
# wiped and restarted under its old id is not a way to measure this: its leaders keep
# its old match index, and Raft's safety assumes a member never forgets its log.)
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-1000000}
CONTEXTS=${CONTEXTS:-10000}
export BIN=${BIN:-target/release/fleetlm}
cargo build --release --bin fleetlm --bin loadgen >&2
bench/cluster.sh clean >/dev/null 2>&1 || true
trap 'bench/cluster.sh clean >/dev/null 2>&1 || true' EXIT
bench/cluster.sh up 3 >/dev/null
./target/release/loadgen --addr 127.0.0.1:4001,127.0.0.1:4002,127.0.0.1:4003 --connections 50 \
  --contexts "$CONTEXTS" --secs 36000 --warmup-secs 0 --message-bytes 200 --appends-total "$MESSAGES" \
  >bench/.cluster/load.json
# The applied index of every shard on nodes 1 and 2, once they agree (no more writes).
applied() {
  curl -sf "http://127.0.0.1:$1/metrics" | awk -F'[{}" ]+' '/^fleetlm_raft_applied_index\{/ {print $3, $NF}' | sort -n
}
for _ in $(seq 1 300); do
  a=$(applied 4001); b=$(applied 4002)
  [ -n "$a" ] && [ "$a" = "$b" ] && break
  sleep 0.1
done
target=$a
disk=$(du -sh bench/.cluster/node1 | cut -f1)
curl -sf -X DELETE http://127.0.0.1:4001/v1/cluster/members/3 >/dev/null
bench/cluster.sh kill 3
rm -rf bench/.cluster/node3 bench/.cluster/node4
FLEETLM_CLUSTER_SECRET=$(cat bench/.cluster/secret) "$BIN" serve --node-id 4 --listen 127.0.0.1:4004 \
  --peer-listen 127.0.0.1:5040 --peers "1=127.0.0.1:5010,2=127.0.0.1:5020,3=127.0.0.1:5030" \
  --data-dir bench/.cluster/node4 --cores 1 >>bench/.cluster/node4.log 2>&1 &
NODE4=$!
trap 'kill -9 $NODE4 2>/dev/null; bench/cluster.sh clean >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:4004/health/live" && break; sleep 0.1; done
t0=$(date +%s.%N)
# Answers once node 4 votes in every shard, or 503 at the membership deadline: either
# way the catch-up goes on, and is timed below.
curl -s -X POST http://127.0.0.1:4001/v1/cluster/members -d '{"node_id":4,"addr":"127.0.0.1:5040"}' >/dev/null || true
caught_up=
for _ in $(seq 1 6000); do
  now=$(applied 4004 || true)
  if [ -n "$now" ] && python3 - "$target" "$now" <<'PY'; then caught_up=1; break; fi
import sys
want = dict(l.split() for l in sys.argv[1].splitlines())
got = dict(l.split() for l in sys.argv[2].splitlines())
sys.exit(0 if all(int(got.get(s, -1)) >= int(v) for s, v in want.items()) else 1)
PY
  sleep 0.1
done
t1=$(date +%s.%N)
[ -n "$caught_up" ] || { echo "node 4 did not catch up in 600 s" >&2; exit 1; }
same=0
for c in 0 1 2 $((CONTEXTS / 2)) $((CONTEXTS - 1)); do
  p="/v1/contexts/ctx-$c/tail?limit=20&consistency=local"
  if [ "$(curl -sf "http://127.0.0.1:4004$p")" = "$(curl -sf "http://127.0.0.1:4001$p")" ]; then same=$((same + 1)); fi
done
python3 - bench/.cluster/load.json "$t0" "$t1" "$MESSAGES" "$CONTEXTS" "$disk" "$same" "$BIN" "$(git rev-parse --short HEAD)" <<'PY'
import json, sys
load = json.load(open(sys.argv[1]))["ops"]["append"]
t0, t1 = float(sys.argv[2]), float(sys.argv[3])
n, c, disk, same, binary, commit = int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], int(sys.argv[7]), sys.argv[8], sys.argv[9]
print(f"### A new node catches up ({binary}, checkout {commit}): {n:,} messages of 200 B in {c:,} contexts, 3 nodes")
print()
print(f"- loaded through all nodes: {load['count']:,} appends, {load['errors']} errors; node 1's data dir {disk}")
print(f"- node 3 removed and killed; empty node 4 added → every shard on it applied what nodes 1 and 2 had: **{t1 - t0:.1f} s**")
print(f"- tails of 5 contexts read locally on node 4 equal node 1's: {same}/5")
PY
