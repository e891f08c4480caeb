#!/usr/bin/env bash
# Runs a k6 scenario from the client instance against the cluster (private addresses,
# no public internet in the path) and brings the results back:
#
#   ./run-k6-remote.sh 1-hot-path-throughput        (scenario knobs as env vars:
#   MAX_VUS=200 PIPELINE_DEPTH=5 ./run-k6-remote.sh 1)   they are passed through)
#
# Writes bench/results/aws-<date>-<scenario>/: k6.txt, summary.json, each node's
# latency-nodeI.json (GET /v1/admin/latency) and nodeI.hlog, run.txt (layout, commit, knobs,
# CPU steal on every host).
source "$(dirname "$0")/common.sh"
scenario=${1:?scenario}
script=$(ls "$REPO"/bench/k6/"$scenario"*.js | head -1)
name=$(basename "$script" .js)
out="$REPO/bench/results/aws-$(date -u +%Y-%m-%d)-$name"
mkdir -p "$out"
knobs=$(env | grep -E '^(MAX_VUS|RAMP_UP|STEADY|RAMP_DOWN|PIPELINE_DEPTH|PAYLOAD_SIZE|VUS|DURATION|BACKLOG_SESSIONS|BACKLOG_SIZE|REPLAY_VUS|WRITE_VUS|SESSION_COUNT|WINDOW_EVERY)=' || true)

ssh_to "$CLIENT" "rm -rf ~/k6 && mkdir -p ~/k6"
scp_to "$REPO"/bench/k6/*.js "$SSH_USER@$CLIENT:k6/"
env_args=$(echo "$knobs" | xargs -r printf '%s ')
# CPU steal (time the hypervisor gave to other guests) on every host over the run: on
# shared instance types it can take a large share of the CPU and every figure with it.
hosts=("$CLIENT" "${SERVERS[@]}")
cpu_ticks() { ssh_to "$1" "awk '/^cpu / {print \$9, \$2 + \$3 + \$4 + \$5 + \$6 + \$7 + \$8 + \$9}' /proc/stat"; }
before=()
for h in "${hosts[@]}"; do before+=("$(cpu_ticks "$h")"); done
set +e
ssh_to "$CLIENT" "cd ~/k6 && env K6_NO_USAGE_REPORT=true CLUSTER_NODES=$(cluster_nodes) $env_args k6 run --summary-export summary.json $name.js" | tee "$out/k6.txt"
status=${PIPESTATUS[0]}
set -e
scp_to "$SSH_USER@$CLIENT:k6/summary.json" "$out/summary.json" || true
for i in "${!SERVERS[@]}"; do
  id=$((i + 1))
  ssh_to "${SERVERS[$i]}" curl -sf "http://127.0.0.1:$HTTP_PORT/v1/admin/latency" >"$out/latency-node$id.json" || true
  ssh_to "${SERVERS[$i]}" sudo cat /var/lib/fleetlm/latency.hlog >"$out/node$id.hlog" || true
done
{
  echo "scenario: $name; layout: $($TF output -raw layout); region: $($TF output -raw region)"
  echo "commit: $(cd "$REPO" && git rev-parse --short HEAD)"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "knobs:"; echo "$knobs" | sed 's/^/  /'
  echo "cpu steal during the run (client, then servers 1..N):"
  for i in "${!hosts[@]}"; do
    read -r s0 a0 <<<"${before[$i]}"
    read -r s1 a1 <<<"$(cpu_ticks "${hosts[$i]}")"
    echo "  ${hosts[$i]}: $(((s1 - s0) * 100 / (a1 - a0 > 0 ? a1 - a0 : 1))) %"
  done
} >"$out/run.txt"
echo "results in $out (k6 exit status $status)"
exit "$status"
