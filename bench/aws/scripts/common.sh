# Shared by the AWS scripts: addresses from `terraform output`, ssh options.
set -euo pipefail
AWS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPO="$(cd "$AWS_DIR/../.." && pwd)"
TF="terraform -chdir=$AWS_DIR/terraform"
SSH_USER=$($TF output -raw ssh_user)
mapfile -t SERVERS < <($TF output -json server_public_ips | python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin)))')
mapfile -t PRIVATE < <($TF output -json server_private_ips | python3 -c 'import json,sys; print("\n".join(json.load(sys.stdin)))')
CLIENT=$($TF output -raw client_public_ip)
SSH_OPTS=(-o StrictHostKeyChecking=accept-new -o ConnectTimeout=10 ${SSH_KEY:+-i "$SSH_KEY"})
PEER_PORT=5000
HTTP_PORT=4000
ssh_to() { local host=$1; shift; ssh "${SSH_OPTS[@]}" "$SSH_USER@$host" "$@"; }
scp_to() { scp "${SSH_OPTS[@]}" "$@"; }
peers_arg() {
  local out="" i
  for i in "${!PRIVATE[@]}"; do out="$out${out:+,}$((i + 1))=${PRIVATE[$i]}:$PEER_PORT"; done
  echo "$out"
}
cluster_nodes() {
  local out="" ip
  for ip in "${PRIVATE[@]}"; do out="$out${out:+,}http://$ip:$HTTP_PORT"; done
  echo "$out"
}
