#!/usr/bin/env bash
# bench.sh -- `make bench`: run dmoe-bench, write $DMOE_BUILD/bench/results.json, print the table.
#
# dmoe-bench measures, in one run on the same thread count, the machine's BLAS limit, the ffn kernel
# in-process, a dmoe-node over loopback TCP (started and stopped by dmoe-bench itself, which also kills
# it if the bench dies), the node's memory, DHT lookups on 1024 in-memory nodes, and the MoE layer over
# the tutorial's two nodes (forward of 3 and 256 rows, training steps of 3 and 256 rows against the sum
# of their parts: the "moe" keys), and ends with the targets of issue 12 (PASS/MISS, the "targets" key).
# A few minutes on 2 cores at most. Extra arguments go to dmoe-bench (e.g. --seconds 0.5, --skip_dht, --skip_moe).
set -euo pipefail

BUILD=${DMOE_BUILD:-build}
BENCH="$BUILD/dmoe-bench"
NODE="$BUILD/dmoe-node"
for p in "$BENCH" "$NODE"; do
  [ -x "$p" ] || { echo "bench.sh: $p is missing; run make first" >&2; exit 1; }
done
mkdir -p "$BUILD/bench"
OUT="$BUILD/bench/results.json"
# dmoe-bench runs in the background so that an interrupted script can stop it (its node dies with it)
BENCH_PID=
trap '[ -n "$BENCH_PID" ] && kill "$BENCH_PID" 2>/dev/null; true' EXIT
"$BENCH" --node "$NODE" --out "$OUT" "$@" &
BENCH_PID=$!
status=0
wait "$BENCH_PID" || status=$?
BENCH_PID=
exit "$status"
