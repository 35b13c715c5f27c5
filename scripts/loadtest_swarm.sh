#!/usr/bin/env bash
# loadtest_swarm.sh -- the swarm scenario of loadtest.sh (`bash scripts/loadtest.sh swarm`): a swarm of
# real dmoe-node processes on one machine, measured, a share of it SIGKILLed, measured again.
#
#   bash scripts/loadtest.sh swarm                         64 nodes, sized for a 2-core machine
#   N=1000 bash scripts/loadtest.sh swarm                  a big box
#   N=1000 PATTERN='ffn.[0:64].[0:64]' bash scripts/loadtest.sh swarm   the grid of issue 17
#
# Settings (environment): N nodes (64); EXPERTS ffn experts per node (4); PATTERN (default
# ffn.[0:R].[0:64], R rows so that the N * EXPERTS experts fill FILL_PCT percent of it, default 80);
# HIDDEN the experts' width (64); KILL_PCT the share SIGKILLed (30); SAMPLE uids looked up (64);
# LOAD_S seconds per load (10); START_TIMEOUT seconds one node may take to start (60).
#
# Steps. Start the nodes one after the other on loopback (port 0), each joining a random earlier node
# (--initial_peers), each start waiting for the previous node's "Server started": the joins are paced
# and spread over the swarm instead of stampeding one bootstrap node. Then measure: start-up time (the
# whole and per node), RSS per node (/proc), the experts each node got (all of them while the grid has
# free uids: dht_free.h), lookups of a sample of the declared uids (`dmoe-call find`), a MoE load over
# the whole grid (`load --moe`, forwards and backwards) and a DHT load (`load --dht`), both through the
# last nodes started. SIGKILL KILL_PCT percent of the nodes (never the three the loads join through),
# measure lookups (of the survivors' uids) and both loads again, then stop the survivors with SIGTERM.
# Every process it starts is stopped on exit (trap).
#
# Output, in $DMOE_BUILD/loadtest/: swarm.json (every figure), swarm.txt (the summary), swarm.png
# (scripts/loadtest_swarm.gp: start-up, RSS per node, MoE and DHT throughput before and after the kill),
# swarm_{start,rss}.dat and swarm_{moe,dht}_{before,after}.csv. Exit status 0 when every node started
# with all its experts and none logged a declaration that reached no replica, every sampled uid was
# found, the loads before the kill had no error, after it the MoE layer still answered with no error but
# the partial results it defines (a chosen expert gone: "other"; every expert of a sample gone: "timed
# out") and the DHT load had none, and every survivor exited 0 on SIGTERM; 1 otherwise; 2 for a bad
# setting.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

BUILD=${DMOE_BUILD:-build}
CALL=${DMOE_CALL:-$BUILD/dmoe-call}
NODE_BIN="$BUILD/dmoe-node"
N=${N:-64}
EXPERTS=${EXPERTS:-4}
FILL_PCT=${FILL_PCT:-80}
HIDDEN=${HIDDEN:-64}
KILL_PCT=${KILL_PCT:-30}
SAMPLE=${SAMPLE:-64}
LOAD_S=${LOAD_S:-10}
START_TIMEOUT=${START_TIMEOUT:-60}
ROW=64   # uids per row of the default pattern: one prefix dictionary each
ROWS=$(((N * EXPERTS * 100 + FILL_PCT * ROW - 1) / (FILL_PCT * ROW)))
PATTERN=${PATTERN:-"ffn.[0:$ROWS].[0:$ROW]"}

fail_usage() { echo "loadtest_swarm.sh: $*" >&2; exit 2; }
[ "$N" -ge 4 ] || fail_usage "N must be at least 4"
[ "$KILL_PCT" -ge 0 ] && [ "$KILL_PCT" -lt 100 ] || fail_usage "KILL_PCT must be in 0..99"
# The MoE layer needs the grid as a uid prefix and dimensions: every block after the name is [0:D].
PREFIX="${PATTERN%%.*}."
DIMS=$(echo "${PATTERN#*.}" | tr '.' '\n' | sed -n 's/^\[0:\([0-9][0-9]*\)\]$/\1/p' | tr '\n' ' ')
[ "$(echo "$DIMS" | wc -w)" -eq "$(echo "${PATTERN#*.}" | tr '.' '\n' | wc -l)" ] ||
    fail_usage "PATTERN must be NAME.[0:D1].[0:D2]... for the MoE load, got $PATTERN"
GRID=1
for d in $DIMS; do GRID=$((GRID * d)); done
for p in "$NODE_BIN" "${CALL%% *}"; do
    [ -x "$p" ] || { echo "loadtest_swarm.sh: $p is missing; run make first" >&2; exit 1; }
done

OUT="$BUILD/loadtest"
mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/dmoe-swarm.XXXXXX)
PIDS=()
DHTS=()
cleanup() {
    for p in "${PIDS[@]}"; do
        if [ "$p" != 0 ] && kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

now() { date +%s.%N; }
ms_since() { echo "$1 $(now)" | awk '{printf "%.0f", ($2 - $1) * 1000}'; }
status=0
problem() { echo "== PROBLEM: $*" >&2; status=1; }

echo "== swarm: $N nodes x $EXPERTS ffn experts (hidden $HIDDEN) from $PATTERN ($GRID uids), on $(nproc) cores"
echo "   load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
T0=$(now)
: >"$OUT/swarm_start.dat"
for ((i = 0; i < N; i++)); do
    args=(--expert_cls ffn --hidden_dim "$HIDDEN" --num_experts "$EXPERTS" --expert_pattern "$PATTERN"
          --num_workers 1 --host_maddrs /ip4/127.0.0.1/tcp/0)
    if [ "$i" -gt 0 ]; then
        j=$(( (RANDOM * 32768 + RANDOM) % i ))   # a random earlier node
        args+=(--initial_peers "${DHTS[$j]}")
    fi
    t=$(now)
    "$NODE_BIN" "${args[@]}" 2>"$TMP/node$i.log" &
    PIDS+=("$!")
    rc=0
    node_wait "$TMP/node$i.log" "$!" "$START_TIMEOUT" || rc=$?
    if [ "$rc" -ne 0 ] || [ -z "$NODE_DHT" ]; then
        tail -n 5 "$TMP/node$i.log" >&2
        echo "loadtest_swarm.sh: node $i did not start ($([ "$rc" -eq 1 ] && echo exited || echo timed out))" >&2
        exit 1
    fi
    DHTS+=("$NODE_DHT")
    echo "$i $(echo "$T0 $(now)" | awk '{printf "%.3f", $2 - $1}') $(ms_since "$t")" >>"$OUT/swarm_start.dat"
    if [ $(((i + 1) % 16)) -eq 0 ]; then echo "   $((i + 1)) nodes up"; fi
done
START_S=$(echo "$T0 $(now)" | awk '{printf "%.1f", $2 - $1}')
START_P50=$(sort -n -k3 "$OUT/swarm_start.dat" | awk -v n="$N" 'NR == int((n + 1) / 2) {print $3}')
START_MAX=$(sort -n -k3 "$OUT/swarm_start.dat" | tail -n 1 | awk '{print $3}')
echo "== $N nodes started in $START_S s (per node: p50 $START_P50 ms, max $START_MAX ms)"

# RSS per node, in KiB, from /proc
: >"$OUT/swarm_rss.dat"
for ((i = 0; i < N; i++)); do
    echo "$i $(awk '/^VmRSS/ {print $2}' "/proc/${PIDS[$i]}/status")" >>"$OUT/swarm_rss.dat"
done
RSS_MEAN=$(awk '{s += $2} END {printf "%.1f", s / NR / 1024}' "$OUT/swarm_rss.dat")
RSS_MAX=$(sort -n -k2 "$OUT/swarm_rss.dat" | tail -n 1 | awk '{printf "%.1f", $2 / 1024}')
echo "== RSS per node: mean $RSS_MEAN MiB, max $RSS_MAX MiB"

# The experts each node got, from its log
SHORT=0
: >"$TMP/uids"
for ((i = 0; i < N; i++)); do
    sed -n 's/.*\] \([^ ]*\): FeedforwardBlock.*/\1/p' "$TMP/node$i.log" >"$TMP/uids$i"
    cat "$TMP/uids$i" >>"$TMP/uids"
    [ "$(wc -l <"$TMP/uids$i")" -eq "$EXPERTS" ] || SHORT=$((SHORT + 1))
done
DECLARED=$(wc -l <"$TMP/uids")
DISTINCT=$(sort -u "$TMP/uids" | wc -l)
WARNED=$(grep -l "free uids for" "$TMP"/node*.log 2>/dev/null | wc -l || true)
echo "== experts: $DECLARED hosted ($DISTINCT distinct uids of $GRID), $SHORT nodes short of $EXPERTS, $WARNED warned"
[ "$SHORT" -eq 0 ] && [ "$WARNED" -eq 0 ] || problem "$SHORT nodes got fewer than $EXPERTS experts"
# declarations that did not reach a replica ("some experts could not be declared"), counted at the end
declare_failures() { grep -l "declaring experts in the DHT" "$TMP"/node*.log 2>/dev/null | wc -l || true; }

# lookup SAMPLE uids of the given nodes (indices on stdin) through the last node; prints "found sampled"
lookups() {
    local files=() i
    while read -r i; do files+=("$TMP/uids$i"); done
    cat "${files[@]}" | sort -u | shuf -n "$SAMPLE" >"$TMP/sample"
    local n
    n=$(wc -l <"$TMP/sample")
    # shellcheck disable=SC2046
    timeout 120 $CALL --initial_peers "${DHTS[$((N - 1))]}" find $(cat "$TMP/sample") >"$TMP/found" 2>&1 || true
    echo "$(grep -c ': /ip' "$TMP/found" || true) $n"
}

# load NAME MODE...: one load through the last three nodes, its JSON in $TMP/NAME.json
load() {
    local name=$1
    shift
    local rc=0
    timeout --kill-after=5 $((LOAD_S + 120)) $CALL --initial_peers "${DHTS[$((N - 1))]}" "${DHTS[$((N - 2))]}" \
        "${DHTS[$((N - 3))]}" load "$@" --duration "$LOAD_S" --warmup 1 --timeout 30 --csv "$OUT/swarm_$name.csv" \
        --json >"$TMP/$name.json" 2>"$TMP/$name.err" || rc=$?
    [ -s "$TMP/$name.json" ] || { cat "$TMP/$name.err" >&2; echo '{"ok": false}' >"$TMP/$name.json"; }
    return "$rc"
}
field() { sed -n "s/.*\"$2\": \([0-9.]*\).*/\1/p" "$TMP/$1.json" | head -n 1; }
kinds() { sed -n 's/.*"errors_by_kind": {\([^}]*\)}.*/\1/p' "$TMP/$1.json"; }
show() { echo "   $1: $(field "$1" replies) replies, $(field "$1" errors) errors ($(kinds "$1")), $(field "$1" lost) lost, $(field "$1" requests_per_s) requests/s, $(field "$1" rows_per_s) rows/s"; }
MOE=(--moe --uid_prefix "$PREFIX" --grid_size $DIMS --k_best 4 --in_features "$HIDDEN" --clients 8 --batch 16 --mix 0.5)
DHT=(--dht --clients 8 --batch 64 --mix 0.5 --requests 100000)

read -r FOUND_BEFORE SAMPLED_BEFORE < <(seq 0 $((N - 1)) | lookups)
echo "== lookups: $FOUND_BEFORE of $SAMPLED_BEFORE sampled uids found"
[ "$FOUND_BEFORE" -eq "$SAMPLED_BEFORE" ] || problem "$((SAMPLED_BEFORE - FOUND_BEFORE)) sampled uids not found"
echo "== MoE load over the grid, then DHT load ($LOAD_S s each)"
load moe_before "${MOE[@]}" || problem "the MoE load had errors before the kill"
show moe_before
load dht_before "${DHT[@]}" || problem "the DHT load had errors before the kill"
show dht_before

KILL=$((N * KILL_PCT / 100))
echo "== SIGKILL $KILL of $N nodes ($KILL_PCT%)"
for i in $(shuf -i 0-$((N - 4)) -n "$KILL"); do
    kill -KILL "${PIDS[$i]}" 2>/dev/null || true
    wait "${PIDS[$i]}" 2>/dev/null || true
    PIDS[$i]=0
done
read -r FOUND_AFTER SAMPLED_AFTER < <(for ((i = 0; i < N; i++)); do [ "${PIDS[$i]}" = 0 ] || echo "$i"; done | lookups)
echo "== lookups of the survivors' uids: $FOUND_AFTER of $SAMPLED_AFTER found"
[ "$FOUND_AFTER" -eq "$SAMPLED_AFTER" ] || problem "$((SAMPLED_AFTER - FOUND_AFTER)) survivors' uids not found"
load moe_after "${MOE[@]}" || true   # partial results are expected: checked below
show moe_after
REPLIES_AFTER=$(field moe_after replies)
OTHER_ERRORS=$(kinds moe_after | tr ',' '\n' | grep -v -e '"other"' -e '"timed out"' | grep -c ':' || true)
[ "${REPLIES_AFTER:-0}" -gt 0 ] && [ "$OTHER_ERRORS" -eq 0 ] && [ "$(field moe_after lost)" = 0 ] ||
    problem "after the kill the MoE layer did not answer, or failed otherwise than by partial results"
load dht_after "${DHT[@]}" || problem "the DHT load had errors after the kill"
show dht_after

echo "== stopping the $((N - KILL)) survivors (SIGTERM)"
UNCLEAN=0
for ((i = 0; i < N; i++)); do
    [ "${PIDS[$i]}" != 0 ] || continue
    kill -TERM "${PIDS[$i]}" 2>/dev/null || true
done
for ((i = 0; i < N; i++)); do
    [ "${PIDS[$i]}" != 0 ] || continue
    rc=0
    wait "${PIDS[$i]}" || rc=$?
    PIDS[$i]=0
    if [ "$rc" -ne 0 ]; then UNCLEAN=$((UNCLEAN + 1)); tail -n 3 "$TMP/node$i.log" >&2; fi
done
[ "$UNCLEAN" -eq 0 ] || problem "$UNCLEAN survivors did not exit 0 on SIGTERM"
LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
DECLARE_FAILED=$(declare_failures)
[ "$DECLARE_FAILED" -eq 0 ] || problem "$DECLARE_FAILED nodes logged a declaration that reached no replica"

{
    printf '{"scenario": "swarm", "ok": %s, "nodes": %d, "experts_per_node": %d, "pattern": "%s", "grid": %d, ' \
        "$([ "$status" -eq 0 ] && echo true || echo false)" "$N" "$EXPERTS" "$PATTERN" "$GRID"
    printf '"cores": %d, "start_s": %s, "start_ms_p50": %s, "start_ms_max": %s, "rss_mib_mean": %s, "rss_mib_max": %s, ' \
        "$(nproc)" "$START_S" "$START_P50" "$START_MAX" "$RSS_MEAN" "$RSS_MAX"
    printf '"experts_hosted": %d, "distinct_uids": %d, "nodes_short": %d, "nodes_declare_failed": %d, ' "$DECLARED" \
        "$DISTINCT" "$SHORT" "$DECLARE_FAILED"
    printf '"lookups_before": {"sampled": %d, "found": %d}, "lookups_after": {"sampled": %d, "found": %d}, ' \
        "$SAMPLED_BEFORE" "$FOUND_BEFORE" "$SAMPLED_AFTER" "$FOUND_AFTER"
    printf '"killed": %d, "survivors_unclean": %d, "load_average_end": "%s", ' "$KILL" "$UNCLEAN" "$LOADAVG"
    printf '"moe_before": %s, "dht_before": %s, "moe_after": %s, "dht_after": %s}\n' "$(cat "$TMP/moe_before.json")" \
        "$(cat "$TMP/dht_before.json")" "$(cat "$TMP/moe_after.json")" "$(cat "$TMP/dht_after.json")"
} >"$OUT/swarm.json"
{
    echo "swarm: $N nodes x $EXPERTS experts from $PATTERN ($GRID uids) on $(nproc) cores"
    echo "  start-up   $START_S s (per node p50 $START_P50 ms, max $START_MAX ms)"
    echo "  RSS        mean $RSS_MEAN MiB per node, max $RSS_MAX MiB"
    echo "  experts    $DECLARED hosted, $DISTINCT distinct uids, $SHORT nodes short, $DECLARE_FAILED with a failed declaration"
    echo "  lookups    before: $FOUND_BEFORE/$SAMPLED_BEFORE found; after killing $KILL: $FOUND_AFTER/$SAMPLED_AFTER"
    show moe_before
    show dht_before
    show moe_after
    show dht_after
    echo "  stop       $UNCLEAN survivors unclean; load average at the end $LOADAVG"
} >"$OUT/swarm.txt"
cat "$OUT/swarm.txt"

if ! command -v gnuplot >/dev/null 2>&1; then
    echo "== installing gnuplot-nox for the plot"
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q gnuplot-nox; } >/dev/null 2>&1 || true
fi
if command -v gnuplot >/dev/null 2>&1; then
    gnuplot -e "dir='$OUT'; title='$N nodes x $EXPERTS experts, $PATTERN, $KILL_PCT% killed'" \
        "$(dirname "$0")/loadtest_swarm.gp" && echo "== plot: $OUT/swarm.png"
else
    echo "== no plot (gnuplot unavailable); data in $OUT"
fi

if [ "$status" -eq 0 ]; then
    echo "== swarm PASSED (summary $OUT/swarm.txt, figures $OUT/swarm.json)"
else
    echo "== swarm FAILED: see the problems above and $OUT/swarm.txt" >&2
    exit 1
fi
