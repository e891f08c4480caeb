#!/usr/bin/env bash
# Runs each fuzz target for SECS seconds (default 60) on its corpus in tests/fuzz/corpus/,
# with cargo-fuzz (libFuzzer) on the nightly toolchain; installs cargo-fuzz if missing.
# A crash stops the run and leaves the input in tests/fuzz/artifacts/<target>/.
#
#   tests/fuzz/run.sh            # every target, 60 s each
#   tests/fuzz/run.sh 600 http_request
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-60}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(http_request wal_decode peer_frame request_json)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
for t in "${TARGETS[@]}"; do
  echo "== $t (${SECS} s)"
  cargo +nightly fuzz run --fuzz-dir tests/fuzz -O "$t" -- -max_total_time="$SECS" -max_len=4096 2>&1 |
    grep -E '^(#[0-9]+.*(DONE|pulse)|Done|==[0-9]+==|SUMMARY|INFO: seed corpus)' || true
done
