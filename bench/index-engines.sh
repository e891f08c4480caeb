#!/usr/bin/env bash
# The message index and bodies in our body store vs. in redb (bench/index_engines.rs):
# the same appends, durable every 20,000; cold tails of 100; reopen. One process per
# engine, one after the other, in the same run. Root (drops the page cache).
#   MESSAGES=5000000 CONTEXTS=100000 bench/index-engines.sh     (≈ 3 minutes; READS=200 cold
#   reads each, every one after dropping the page cache)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench --no-run --bench index_engines >&2
bin=$(ls target/release/deps/index_engines-* | grep -v '\.d$' | head -1)
scratch=${SCRATCH:-/tmp/fleetlm-index-engines}
out=${OUT:-target/index-engines.jsonl}
: >"$out"
for engine in ours redb; do
  "$bin" "$engine" "$scratch/$engine" | tee -a "$out"
  rm -rf "${scratch:?}/$engine"
done
echo "commit $(git rev-parse --short HEAD)$(git diff --quiet || echo +dirty); results in $out" >&2
