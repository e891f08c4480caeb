#!/usr/bin/env bash
# Fault injection: a local cluster under concurrent writers and a seeded nemesis (kill,
# kill of two nodes, kill of the busiest leader, pause, partition, full disk, torn WAL
# tail), then a checker of the writers' history against every replica (tools/faults.py).
#
#   bench/faults.sh [--seed N] [--seconds S] [--nodes 3] [--faults kill,pause,…] [--out FILE]
#
# Needs root (one network namespace per node on a bridge of its own, 10.77.N.0/24; a
# tmpfs for the full-disk node). Same seed → same schedule of faults (kinds, targets,
# durations). Prints the seed first, the report (JSON) at the end; exits 1 if an
# acknowledged append was lost, duplicated, reordered, or any other check failed.
# BIN=target/debug/fleetlm uses a debug build (CI does, reusing `cargo test`'s build).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench/faults.sh needs root (network namespaces, tmpfs)" >&2; exit 2; }
command -v ip >/dev/null || { apt-get install -y -qq iproute2 >/dev/null; }
BIN=${BIN:-target/release/fleetlm}
# Builds the binaries of BIN's profile (cheap when they are up to date).
case "$BIN" in
  target/debug/*) cargo build --bin fleetlm --bin wal-inspect >&2 ;;
  target/release/*) cargo build --release --bin fleetlm --bin wal-inspect >&2 ;;
esac
WAL_INSPECT=${WAL_INSPECT:-$(dirname "$BIN")/wal-inspect}
dir=${FAULTS_DIR:-target/faults}
umount -l "$dir"/node* 2>/dev/null || true
rm -rf "$dir" && mkdir -p "$dir"
exec python3 tools/faults.py --bin "$BIN" --wal-inspect "$WAL_INSPECT" --dir "$dir" "$@"
