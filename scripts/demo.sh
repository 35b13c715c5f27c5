#!/usr/bin/env bash
# demo.sh -- `make demo`: the Mixture-of-Experts tutorial, unattended, on loopback:
#   1. a first node hosts 5 ffn experts expert.[0:5] (hidden 512) and starts the DHT;
#   2. a second node hosts 10 experts drawn from expert.[5:250] and joins it through --initial_peers;
#   3. dmoe-train --task moe trains input projection -> MoE layer (k_best 2 over the live grid) ->
#      output projection for a few hundred steps and prints loss and accuracy as it goes;
#   4. a short summary (start/end loss, accuracy, steps/s); both nodes are stopped on any exit (trap).
# Programs come from $DMOE_BUILD (default build/). Exits 0 when the loss fell.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BUILD=${DMOE_BUILD:-build}
STEPS=${STEPS:-300}
TMP=$(mktemp -d /tmp/dmoe-demo-moe.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

# wait_started LOG PID: wait (<= 20 s) until the node has started (lib.sh's node_wait); sets NODE_DHT
wait_started() {
    node_wait "$1" "$2" 20 || { echo "demo_moe: the node did not start; its log $1:" >&2; cat "$1" >&2; return 1; }
}

echo "== node 1: 5 experts expert.[0:5], hidden 512"
"$BUILD/dmoe-node" --expert_cls ffn --hidden_dim 512 --num_experts 5 --expert_pattern "expert.[0:5]" \
    --num_workers 1 2>"$TMP/node1.log" &
PIDS+=($!)
wait_started "$TMP/node1.log" "$!"
PEER=$NODE_DHT
echo "   DHT address: $PEER"

echo "== node 2: 10 experts from expert.[5:250], joining through node 1"
"$BUILD/dmoe-node" --expert_cls ffn --hidden_dim 512 --num_experts 10 --expert_pattern "expert.[5:250]" \
    --initial_peers "$PEER" --num_workers 1 2>"$TMP/node2.log" &
PIDS+=($!)
wait_started "$TMP/node2.log" "$!"
grep -o "expert\.[0-9]*: FeedforwardBlock" "$TMP/node2.log" | cut -d: -f1 | tr '\n' ' '; echo
sleep 1   # both nodes declare their experts at start; give the declarations a moment to land

echo "== dmoe-train --task moe: $STEPS steps, grid 250, k_best 2"
"$BUILD/dmoe-train" --task moe --initial_peers "$PEER" --hidden_dim 512 --in_dim 64 --num_classes 8 \
    --grid_size 250 --k_best 2 --steps "$STEPS" --batch_size 64 --lr 1e-3 --log_every 25 --seed 1 \
    | tee "$TMP/train.log"

SUMMARY=$(grep "^summary:" "$TMP/train.log")
L0=$(echo "$SUMMARY" | sed 's/.*loss \([0-9.]*\) -> \([0-9.]*\).*/\1/')
L1=$(echo "$SUMMARY" | sed 's/.*loss \([0-9.]*\) -> \([0-9.]*\).*/\2/')
ACC=$(echo "$SUMMARY" | sed 's/.*accuracy \([0-9.]*\).*/\1/')
SPS=$(echo "$SUMMARY" | sed 's/.* \([0-9.]*\) steps\/s.*/\1/')
echo "== summary: loss $L0 -> $L1, accuracy $ACC (chance 0.125), $SPS steps/s"
awk -v a="$L0" -v b="$L1" 'BEGIN { exit !(b < a) }' || { echo "demo_moe: the loss did not fall" >&2; exit 1; }

echo "== a one-off MoE forward and where experts live, from a client that knows one address"
"$BUILD/dmoe-call" --initial_peers "$PEER" moe --uid_prefix expert. --grid_size 250 --k_best 2 --random 3x512
"$BUILD/dmoe-call" --initial_peers "$PEER" find expert.1 expert.4
echo "== stopping both nodes"
