#!/usr/bin/env bash
# One restart of an existing data dir on a cold machine, then 10 s of cold reads:
#
#   bench/restart-reads.sh BIN DATADIR     # e.g. the data dir bench/load-history.sh left
#
# Drops the page cache (root), starts BIN on DATADIR, times it to /health/ready, waits
# 1 s, runs 10 connections of tail/replay/window reads of random contexts for 10 s
# (loadgen, as bench/load-history.sh does after its restart), then kill -9. Prints one
# line: time to ready, reads done, p50/p99 ms per operation, and the node's
# read.cold_wait summary. Alternate builds on the same data dir to compare them (the
# disk of a VM is noisy). Loopback only; stops by itself.
set -u
BIN=$1; D=$2; PORT=${PORT:-4498}
cd "$(dirname "$0")/.."
[ -x target/release/loadgen ] || cargo build --release --bin loadgen >&2
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
if [ "$(id -u)" = 0 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; else echo "not root: the page cache is not dropped" >&2; fi
t0=$(date +%s.%N)
"$BIN" serve --listen 127.0.0.1:$PORT --data-dir "$D" >>"${LOG:-/dev/null}" 2>&1 &
P=$!
for _ in $(seq 1 30000); do curl -sf http://127.0.0.1:$PORT/health/ready >/dev/null && break; sleep 0.01; done
t1=$(date +%s.%N)
sleep 1
./target/release/loadgen --addr 127.0.0.1:$PORT --connections 10 --contexts 100000 --secs 10 --warmup-secs 0 \
  --mix tail=1,replay=1,window=1 --replay-limit 100 --no-create > "$TMP/reads.json" 2>/dev/null
curl -s http://127.0.0.1:$PORT/metrics | grep -E 'name="read.cold_wait",quantile="0.5"|cold_wait"} ' | tr '\n' ' ' > "$TMP/metrics"
kill -9 $P; wait $P 2>/dev/null
python3 - "$t0" "$t1" "$TMP" <<'PY'
import json,sys
t0,t1,tmp=float(sys.argv[1]),float(sys.argv[2]),sys.argv[3]
ops=json.load(open(f'{tmp}/reads.json'))['ops']
tot=sum(v['count'] for v in ops.values())
print(f"ready {t1-t0:.2f}s reads {tot} " + " ".join(f"{k} {v['p50_us']/1000:.1f}/{v['p99_us']/1000:.1f}" for k,v in sorted(ops.items())), open(f'{tmp}/metrics').read()[:200])
PY
