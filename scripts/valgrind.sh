#!/usr/bin/env bash
# valgrind.sh -- `make valgrind`: the node under valgrind through a round of good and bad requests.
#
# Starts dmoe-node (two small ffn experts, a checkpoint folder, metrics) under memcheck, drives it with
# dmoe-call (info, forward, backward, DHT store/get, a bad shape) and with raw bytes (a frame that is not
# msgpack, a truncated frame, a length over the limit), stops it with SIGTERM and fails unless valgrind
# saw no error and no definitely lost block.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BUILD=${DMOE_BUILD:-build}
command -v valgrind >/dev/null || { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q valgrind; }
LOG=$(mktemp /tmp/dmoe-vg.XXXXXX)
CK=$(mktemp -d /tmp/dmoe-vg-ckpt.XXXXXX)
PID=
cleanup() { [ -n "$PID" ] && kill -KILL "$PID" 2>/dev/null; rm -rf "$LOG" "$CK"; }
trap cleanup EXIT

valgrind --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite \
    "$BUILD/dmoe-node" --hidden_dim 32 --expert_uids expert.0 expert.1 --checkpoint_dir "$CK" \
    --max_frame_mb 1 --metrics_port 0 2>"$LOG" &
PID=$!
RC=0
node_wait "$LOG" "$PID" 60 || RC=$?
[ "$RC" -eq 0 ] || { cat "$LOG"; echo "valgrind: dmoe-node did not start (node_wait: $RC)" >&2; exit 1; }
ADDR=$NODE_ADDR
DHT=$NODE_DHT
PORT=${ADDR##*/}
C="$BUILD/dmoe-call --peer $ADDR --timeout 60"
$C info --all >/dev/null
$C forward expert.0 --random 8x32 >/dev/null
$C backward expert.1 --random 8x32 >/dev/null
$C forward expert.0 --random 8x31 >/dev/null 2>&1 && { echo "a bad shape was accepted" >&2; exit 1; }
$BUILD/dmoe-call --initial_peers "$DHT" dht store k v --expiration 30 >/dev/null
$BUILD/dmoe-call --initial_peers "$DHT" dht get k >/dev/null
printf '\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1' > "/dev/tcp/127.0.0.1/$PORT" || true
printf '\x00\x00\x01\x00\x82\xa2id' > "/dev/tcp/127.0.0.1/$PORT" || true
printf '\x00\x20\x00\x00' > "/dev/tcp/127.0.0.1/$PORT" || true
$C forward expert.1 --random 4x32 >/dev/null
kill -TERM "$PID"
status=0
wait "$PID" || status=$?
PID=
grep -E "ERROR SUMMARY|definitely lost" "$LOG" || true
if [ "$status" -ne 0 ]; then cat "$LOG" >&2; echo "valgrind: dmoe-node exited with $status" >&2; exit 1; fi
echo "valgrind: clean"
