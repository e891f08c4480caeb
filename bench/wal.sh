#!/usr/bin/env bash
# WAL benchmark next to the disk's fdatasync floor, measured in the same run.
#
#   bench/wal.sh                 # writes bench/results/wal.md
#   SECS=10 bench/wal.sh         # longer runs per combination
#
# 1. fio: 4 KiB sequential writes, fdatasync after each (the floor of one durable
#    write on this disk).
# 2. wal-bench: 200 B and 4 KiB records, 1/8/64 closed-loop appenders on one WAL.
# 3. bench/wal_report.py: the table and the targets as ratios to the fio floor.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-5}
scratch=target/bench-wal
mkdir -p "$scratch" bench/results

if ! command -v fio >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq fio >/dev/null
  else
    echo "fio is missing: install it (Debian: apt-get install fio)" >&2
    exit 1
  fi
fi

cargo build --release --bin wal-bench
floor() {
  fio --name=floor --rw=write --bs=4k --size=256m --fdatasync=1 --runtime="$SECS" --time_based \
      --filename="$scratch/fio.dat" --output-format=json >"$1"
  rm -f "$scratch/fio.dat"
}
# The disk's latency drifts over minutes here, so the floor is taken before and after.
echo "fio floor, before (${SECS}s)..." >&2
floor "$scratch/fio-before.json"
echo "wal-bench (${SECS}s per combination)..." >&2
./target/release/wal-bench --dir "$scratch" --secs "$SECS" >"$scratch/wal.jsonl"
echo "fio floor, after (${SECS}s)..." >&2
floor "$scratch/fio-after.json"
status=0
python3 bench/wal_report.py "$scratch/fio-before.json" "$scratch/fio-after.json" "$scratch/wal.jsonl" \
    "bench/wal.sh (SECS=$SECS)" >bench/results/wal.md || status=$?
cat bench/results/wal.md
exit $status
