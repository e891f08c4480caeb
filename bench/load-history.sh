#!/usr/bin/env bash
# Memory, throughput and restart as history grows: MESSAGES messages of 200 B in
# CONTEXTS contexts on one node, loaded in steps of STEP messages.
#
#   bench/load-history.sh                                # 10M messages, 100k contexts
#   MESSAGES=2000000 STEP=500000 bench/load-history.sh
#   BIN=/tmp/fleetlm-old LABEL=old bench/load-history.sh # another build, same load
#
# After each step: RSS (anonymous and file-backed separately, from /proc/PID/status),
# the step's append throughput and p99 (loadgen, 50 connections). At the end: kill -9,
# the page cache dropped (when run as root), restart → /health/ready, RSS after restart,
# then 10 s of tail/replay/window reads of random contexts, 1 s after ready. Prints a markdown section and
# writes target/bench-history/<label>.json. Loopback only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-10000000}
CONTEXTS=${CONTEXTS:-100000}
STEP=${STEP:-1000000}
PORT=${PORT:-4411}
BIN=${BIN:-target/release/fleetlm}
LABEL=${LABEL:-$(git rev-parse --short HEAD)}
scratch=target/bench-history/$LABEL
rm -rf "$scratch" && mkdir -p "$scratch"
cargo build --release --bin fleetlm --bin loadgen >&2
cleanup() { [ -n "${FL_PID:-}" ] && kill -9 "$FL_PID" 2>/dev/null; true; }
trap cleanup EXIT
start() {
  "$BIN" serve --listen "127.0.0.1:$PORT" --data-dir "$scratch/data" >>"$scratch/fleetlm.log" 2>&1 &
  FL_PID=$!
  for _ in $(seq 1 30000); do
    curl -sf "http://127.0.0.1:$PORT/health/ready" >/dev/null && return 0
    sleep 0.01
  done
  echo "not ready" >&2; exit 1
}
rss() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$FL_PID/status"; }
start
steps=$(( (MESSAGES + STEP - 1) / STEP ))
: >"$scratch/steps.jsonl"
for i in $(seq 1 "$steps"); do
  create=--no-create
  [ "$i" = 1 ] && create=
  t0=$(date +%s.%N)
  ./target/release/loadgen --addr "127.0.0.1:$PORT" --connections 50 --contexts "$CONTEXTS" --secs 36000 \
    --warmup-secs 0 --message-bytes 200 --appends-total "$STEP" $create >"$scratch/step-$i.json"
  t1=$(date +%s.%N)
  echo "{\"messages\": $((i * STEP)), \"secs\": $(awk "BEGIN {print $t1 - $t0}"), \"anon_kb\": $(rss RssAnon), \"file_kb\": $(rss RssFile), \"disk_kb\": $(du -sk "$scratch/data" | cut -f1), \"load\": $(cat "$scratch/step-$i.json")}" >>"$scratch/steps.jsonl"
  echo "step $i/$steps done" >&2
done
kill -9 "$FL_PID"; FL_PID=
# A cold machine (as after a reboot): the page cache dropped before the restart, so the
# restart and the reads after it find nothing cached (as root). Until ac2161a the cache
# was dropped after the restart instead.
if [ "$(id -u)" = 0 ]; then sync; echo 3 >/proc/sys/vm/drop_caches; fi
r0=$(date +%s.%N)
start
r1=$(date +%s.%N)
sleep 1
after_restart="{\"restart_secs\": $(awk "BEGIN {print $r1 - $r0}"), \"anon_kb\": $(rss RssAnon), \"file_kb\": $(rss RssFile)}"
./target/release/loadgen --addr "127.0.0.1:$PORT" --connections 10 --contexts "$CONTEXTS" --secs 10 --warmup-secs 0 \
  --mix tail=1,replay=1,window=1 --replay-limit 100 --no-create >"$scratch/cold-reads.json"
python3 - "$scratch" "$after_restart" "$MESSAGES" "$CONTEXTS" "$LABEL" "$BIN" <<'PY'
import json, sys
scratch, after, n, c, label, binary = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
steps = [json.loads(l) for l in open(f"{scratch}/steps.jsonl")]
cold = json.load(open(f"{scratch}/cold-reads.json"))["ops"]
mib = lambda kb: kb / 1024
print(f"### `{label}` ({binary}): {n:,} messages of 200 B in {c:,} contexts")
print()
print("| messages | anonymous RSS | file-backed RSS | data dir | appends/s in the step | append p99 | errors |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for s in steps:
    a = s["load"]["ops"]["append"]
    step_n = a["count"]
    print(f"| {s['messages']:,} | {mib(s['anon_kb']):.0f} MiB | {mib(s['file_kb']):.0f} MiB | {mib(s['disk_kb']):.0f} MiB "
          f"| {step_n / s['secs']:.0f} | {a['p99_us'] / 1000:.1f} ms | {a['errors']} |")
print()
print(f"- `kill -9`, restart → `/health/ready`: **{after['restart_secs']:.2f} s**; after restart anonymous RSS "
      f"{mib(after['anon_kb']):.0f} MiB, file-backed {mib(after['file_kb']):.0f} MiB")
reads = ", ".join(f"{op} p50 {v['p50_us'] / 1000:.1f} ms p99 {v['p99_us'] / 1000:.1f} ms ({v['count']} reads, {v['errors']} errors)"
                  for op, v in sorted(cold.items()))
print(f"- reads from 1 s after the restart, the page cache dropped before it (10 connections, 10 s; replay of 100): {reads}")
json.dump({"label": label, "binary": binary, "steps": steps, "after_restart": after, "cold_reads": cold},
          open(f"{scratch}/../{label}.json", "w"))
PY
