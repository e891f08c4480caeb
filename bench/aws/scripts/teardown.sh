#!/usr/bin/env bash
# Destroys everything ../terraform created (instances, VPC, key pair, placement group).
set -euo pipefail
terraform -chdir="$(dirname "$0")/../terraform" destroy "$@"
