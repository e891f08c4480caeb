#!/usr/bin/env bash
# A/B of two server builds under live-stream fan-out: what a change does to the appends'
# latency with subscribers, measured against each build's own baseline in the same run.
#
#   bench/streams-ab.sh BIN_A BIN_B [--secs S] [--rounds R]
#
# Each round, for A then B (the order flips every round): a fresh single node
# (127.0.0.1:4000), appends at 1000/s over 100 contexts without subscribers (baseline),
# then the same with 1000 SSE subscribers (fanout), as bench/streams.sh does. One JSON
# line per run (tools/stream_bench.rs) to target/bench-streams-ab/results.jsonl, then a
# table: append p99 per run and fanout ÷ baseline per build and round.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bench/streams-ab.sh BIN_A BIN_B [--secs S] [--rounds R]" >&2; exit 2; }
bin_a=$(realpath "$1"); bin_b=$(realpath "$2"); shift 2
secs=15; rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) secs=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
out=target/bench-streams-ab
rm -rf "$out" && mkdir -p "$out"
cargo build --release --bin stream-bench >&2
BENCH=target/release/stream-bench
results=$out/results.jsonl
echo "{\"commit\":\"$(git rev-parse --short HEAD)\",\"a\":\"$bin_a\",\"b\":\"$bin_b\",\"cores\":$(nproc),\"date\":\"$(date -u +%FT%TZ)\"}" >"$results"
cleanup() { [ -n "${FL_PID:-}" ] && kill -9 "$FL_PID" 2>/dev/null; true; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) = 1 ]; then order="a b"; else order="b a"; fi
  for which in $order; do
    bin=$bin_a; [ "$which" = b ] && bin=$bin_b
    rm -rf "$out/data"
    "$bin" serve --listen 127.0.0.1:4000 --data-dir "$out/data" >"$out/node-$which.log" 2>&1 &
    FL_PID=$!
    for _ in $(seq 1 300); do curl -sf http://127.0.0.1:4000/health/ready >/dev/null && break; sleep 0.1; done
    for run in baseline fanout; do
      subs=0; [ "$run" = fanout ] && subs=1000
      echo "== round $r $which $run" >&2
      line=$("$BENCH" --addr 127.0.0.1:4000 --subscribers "$subs" --contexts 100 --rate 1000 --secs "$secs" --prefix "r$r$run")
      echo "{\"round\":$r,\"build\":\"$which\",\"run\":\"$run\",\"result\":$line}" >>"$results"
    done
    kill -9 "$FL_PID"; wait "$FL_PID" 2>/dev/null || true; FL_PID=""
  done
done

python3 - "$results" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])][1:]
print("round build run       append_p50_ms append_p99_ms event_p99_ms gaps")
by = {}
for r in rows:
    res = r["result"]
    a, e = res["append"], res["end_to_end"]
    ev = f'{e["p99_us"] / 1000:.2f}' if e["count"] else ""
    print(f'{r["round"]:>5} {r["build"]:>5} {r["run"]:<9} {a["p50_us"] / 1000:>13.2f} {a["p99_us"] / 1000:>13.2f} {ev:>12} {res["gaps"]:>4}')
    by[(r["round"], r["build"], r["run"])] = res
for b in "ab":
    ratios = [v["append"]["p99_us"] / by[(rnd, b, "baseline")]["append"]["p99_us"]
              for (rnd, bb, run), v in by.items() if bb == b and run == "fanout" and (rnd, b, "baseline") in by]
    p50s = [v["append"]["p50_us"] / by[(rnd, b, "baseline")]["append"]["p50_us"]
            for (rnd, bb, run), v in by.items() if bb == b and run == "fanout" and (rnd, b, "baseline") in by]
    events = [v["end_to_end"]["p99_us"] / 1000 for (rnd, bb, run), v in by.items() if bb == b and run == "fanout"]
    if ratios:
        print(f'{b}: append p99 fanout / baseline per round {[round(x, 2) for x in ratios]}, median {statistics.median(ratios):.2f};'
              f' p50 {[round(x, 2) for x in p50s]}, median {statistics.median(p50s):.2f};'
              f' sent -> event p99 ms {events}, median {statistics.median(events):.2f}')
PY
