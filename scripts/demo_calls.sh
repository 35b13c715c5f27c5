#!/usr/bin/env bash
# demo_calls.sh -- five ffn experts on loopback driven by dmoe-call (info, forward, backward, stats).
#
# Starts dmoe-node (5 experts expert.[0:5], hidden 512) on an OS-chosen port, asks it what it hosts,
# runs a forward and a backward through expert.1 and expert.4 (the backward applies one Adam step on
# the node, visible in the stats), then stops the node with SIGTERM and checks it exited cleanly.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BUILD=${DMOE_BUILD:-build}
LOG=$(mktemp /tmp/dmoe-demo-node.XXXXXX)
WORK=$(mktemp -d /tmp/dmoe-demo.XXXXXX)
NODE_PID=
cleanup() {
    if [ -n "$NODE_PID" ] && kill -0 "$NODE_PID" 2>/dev/null; then kill -KILL "$NODE_PID" 2>/dev/null || true; fi
    rm -rf "$WORK" "$LOG"
}
trap cleanup EXIT

echo "== starting dmoe-node: 5 ffn experts, hidden 512"
"$BUILD/dmoe-node" --expert_cls ffn --hidden_dim 512 --num_experts 5 --expert_pattern "expert.[0:5]" \
    --host_maddrs /ip4/127.0.0.1/tcp/0 2>"$LOG" &
NODE_PID=$!
RC=0
node_wait "$LOG" "$NODE_PID" 10 || RC=$?
[ "$RC" -ne 1 ] || { cat "$LOG"; echo "dmoe-node failed to start" >&2; exit 1; }
ADDR=$NODE_ADDR
[ -n "$ADDR" ] || { cat "$LOG"; echo "dmoe-node did not report its address" >&2; exit 1; }
cat "$LOG"
CALL="$BUILD/dmoe-call --peer $ADDR"

echo; echo "== dmoe-call info expert.1"
$CALL info expert.1
echo; echo "== dmoe-call forward expert.1 --random 3x512"
$CALL forward expert.1 --random 3x512 --seed 1 --output "$WORK/y.npy"
echo; echo "== dmoe-call backward expert.4 --random 3x512 (one Adam step on the node)"
$CALL backward expert.4 --random 3x512 --seed 2 --output "$WORK/gx.npy"
echo; echo "== 64 forwards of 256x512 to expert.4"
start=$(date +%s%N)
for i in $(seq 1 8); do
    pids=()
    for j in $(seq 1 8); do
        $CALL forward expert.4 --random 256x512 --seed $((i * 8 + j)) --json >/dev/null &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || { echo "a forward call failed" >&2; exit 1; }; done
done
end=$(date +%s%N)
echo "64 x 256 rows in $(( (end - start) / 1000000 )) ms, each a fresh dmoe-call process"
echo; echo "== stats after the calls"
$CALL info expert.4 | sed -n '1p;/stats/p'

echo; echo "== stopping the node (SIGTERM)"
kill -TERM "$NODE_PID"
wait "$NODE_PID"
status=$?
NODE_PID=
tail -n 2 "$LOG"
[ "$status" -eq 0 ] || { echo "dmoe-node exited with $status" >&2; exit 1; }
echo "demo finished"
