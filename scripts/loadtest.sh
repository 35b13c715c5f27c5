#!/usr/bin/env bash
# loadtest.sh SCENARIO -- one scripted load test on loopback, with a plot.
#
#   bash scripts/loadtest.sh ffn_small_batch          (scenarios: run it without arguments for the list)
#
# Starts the dmoe-node(s) the scenario needs (port 0: the OS picks, read from the node's log), drives them
# with `dmoe-call --peer ADDR load ...` (closed loop: each client keeps one request in flight) -- or, for
# the network scenarios moe and dht, starts two nodes as the tutorial does (the second joins the first
# through --initial_peers, read from its "Running DHT node on [...]" line) and runs `dmoe-call
# --initial_peers MADDR load --moe|--dht ...` -- stops the nodes with SIGTERM and checks they exited
# cleanly, prints the summary, and writes next to each other
#   $DMOE_BUILD/loadtest/SCENARIO.csv   per-second samples: time, requests, rows, rates, p50, p99, errors
#   $DMOE_BUILD/loadtest/SCENARIO.txt   the summary
#   $DMOE_BUILD/loadtest/SCENARIO.png   rows/s, requests/s and latency over time, one panel each (gaps
#                                       where a second had no replies; gnuplot, the Debian package
#                                       gnuplot-nox is installed with apt-get when gnuplot is missing)
# While the load runs, dmoe-call load rewrites a progress line a second on the terminal (rows/s,
# requests/s, p50, errors); with stderr redirected it stays quiet.
# The scenarios follow hivemind's benchmark_throughput.py presets, sized for 2 cores; `swarm` (many nodes,
# a share of them killed) is scripts/loadtest_swarm.sh. The wan scenario
# puts each of the tutorial's two nodes on a loopback address of its own behind an emulated wide-area
# link (build/test/wan-link, test/integration/wan/wan_link.h; the node announces the link's address) and
# runs one MoE client -- a trainer's forward then backward -- at 10, 50 and 150 ms RTT; it writes
# wan.json (one load report per RTT, with the forward's breakdown) and wan.png (the step time, stacked:
# beam search, dispatch, waiting for the experts, backward). A scenario passes
# only with zero errors and zero lost replies; otherwise the script exits 1. 2: unknown or unavailable
# scenario. Every process it starts is stopped on exit (trap). $DMOE_CALL overrides the dmoe-call used.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

BUILD=${DMOE_BUILD:-build}
CALL=${DMOE_CALL:-$BUILD/dmoe-call}
NODE_BIN="$BUILD/dmoe-node"
SCENARIO=${1:-}

usage() {
    cat >&2 <<'USAGE'
usage: loadtest.sh SCENARIO
  ffn_forward                 4 ffn experts (hidden 1024), 16 clients, batch 2048, forward only
  ffn_fwdbwd                  4 ffn experts (hidden 512), 16 clients, batch 2048, forward then backward
  ffn_small_batch             4 ffn experts (hidden 1024), 64 clients, batch 32, forward only
  ffn_small_batch_512clients  1 ffn expert (hidden 1024), 512 clients, batch 1, forward then backward
  moe                         the tutorial's 2 nodes (5 + 10 ffn experts, hidden 512); 8 clients, each a MoE
                              layer (grid 250, k_best 2) over the DHT, batch 64, forward then backward
  dht                         2 nodes; 16 client-mode DHT peers storing 64-byte values under fresh keys
                              and getting random keys stored by the run, half and half
  swarm                       N real nodes (N=64; N=1000 on a big box), 4 ffn experts each, each joining a
                              random earlier node; start-up, RSS, lookups, MoE and DHT load; 30% SIGKILLed,
                              measured again (scripts/loadtest_swarm.sh lists its settings)
  wan                         the moe scenario's two nodes at hidden 128 (one worker each), each behind an
                              emulated link of 12,800 KiB/s (100 Mbit/s) on its own loopback address;
                              1 client, batch 64, forward then backward, 12 s at each of 10, 50, 150 ms RTT
USAGE
}

# The swarm scenario starts many nodes and measures more than one load: a script of its own.
if [ "$SCENARIO" = swarm ]; then exec bash "$(dirname "$0")/loadtest_swarm.sh"; fi

# Scenario table: node flags (NODE2_ARGS: a second node joining the first through the DHT), load flags.
# Durations keep each scenario under a minute on 2 cores.
NODE2_ARGS=()
WAN_RTTS=()
case "$SCENARIO" in
    ffn_forward)
        NODE_ARGS=(--expert_cls ffn --hidden_dim 1024 --num_experts 4 --max_batch_size 16384)
        LOAD_ARGS=(--all --clients 16 --batch 2048 --mix 0 --duration 20 --warmup 2 --timeout 120) ;;
    ffn_fwdbwd)
        # hidden 512: at 1024 a round of 16 x 2048-row backwards (each followed by an Adam step) takes
        # over 20 s on 2 cores; the generous call timeout keeps a slow machine from failing the scenario
        NODE_ARGS=(--expert_cls ffn --hidden_dim 512 --num_experts 4 --max_batch_size 16384)
        LOAD_ARGS=(--all --clients 16 --batch 2048 --mix 0.5 --duration 30 --warmup 3 --timeout 120) ;;
    ffn_small_batch)
        NODE_ARGS=(--expert_cls ffn --hidden_dim 1024 --num_experts 4 --max_batch_size 8192)
        LOAD_ARGS=(--all --clients 64 --batch 32 --mix 0 --duration 20 --warmup 2) ;;
    ffn_small_batch_512clients)
        NODE_ARGS=(--expert_cls ffn --hidden_dim 1024 --num_experts 1 --max_batch_size 8192)
        LOAD_ARGS=(--uids expert.0 --clients 512 --batch 1 --mix 0.5 --duration 20 --warmup 2) ;;
    moe)
        # one worker per node: two nodes share the 2 cores with the clients
        NODE_ARGS=(--expert_cls ffn --hidden_dim 512 --num_experts 5 --expert_pattern "expert.[0:5]" --num_workers 1)
        NODE2_ARGS=(--expert_cls ffn --hidden_dim 512 --num_experts 10 --expert_pattern "expert.[5:250]" --num_workers 1)
        LOAD_ARGS=(--moe --uid_prefix expert. --grid_size 250 --k_best 2 --in_features 512 --clients 8 --batch 64
                   --mix 0.5 --duration 20 --warmup 2 --timeout 60) ;;
    dht)
        # the nodes host one tiny expert each (a node needs one); the load is on their DHT. The request
        # bound keeps the keys stored far below a node's DHT storage bounds, so nothing is evicted
        NODE_ARGS=(--expert_cls nop --hidden_dim 16 --expert_uids dht_host.0 --num_workers 1)
        NODE2_ARGS=(--expert_cls nop --hidden_dim 16 --expert_uids dht_host.1 --num_workers 1)
        LOAD_ARGS=(--dht --clients 16 --batch 64 --mix 0.5 --requests 300000 --duration 20 --warmup 2 --timeout 30) ;;
    wan)
        # hidden 128: small enough that the network, not 2 loaded cores, sets the step time
        NODE_ARGS=(--expert_cls ffn --hidden_dim 128 --num_experts 5 --expert_pattern "expert.[0:5]" --num_workers 1)
        NODE2_ARGS=(--expert_cls ffn --hidden_dim 128 --num_experts 10 --expert_pattern "expert.[5:250]" --num_workers 1)
        LOAD_ARGS=(--moe --uid_prefix expert. --grid_size 250 --k_best 2 --in_features 128 --clients 1 --batch 64
                   --mix 0.5 --duration 12 --warmup 2 --timeout 60)
        WAN_RTTS=(10 50 150)
        WAN_RATE=12800 ;;
    *)
        usage
        exit 2 ;;
esac

for p in "$NODE_BIN" "${CALL%% *}"; do
    [ -x "$p" ] || { echo "loadtest.sh: $p is missing; run make first" >&2; exit 1; }
done
OUT="$BUILD/loadtest"
mkdir -p "$OUT"
CSV="$OUT/$SCENARIO.csv"
TXT="$OUT/$SCENARIO.txt"
PNG="$OUT/$SCENARIO.png"
TMP=$(mktemp -d /tmp/dmoe-loadtest.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do
        if kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

# start_node LOG ARGS...: start a node in the background (its pid appended to PIDS) and wait (<= 20 s)
# for "Server started"; sets ADDR (its expert address) and DHT_ADDR (its DHT multiaddr).
start_node() {
    local log=$1
    shift
    "$NODE_BIN" "$@" --host_maddrs /ip4/127.0.0.1/tcp/0 2>"$log" &
    local pid=$!
    PIDS+=("$pid")
    local rc=0
    node_wait "$log" "$pid" 20 || rc=$?
    [ "$rc" -ne 1 ] || { cat "$log" >&2; echo "loadtest.sh: dmoe-node failed to start" >&2; exit 1; }
    [ "$rc" -eq 0 ] || { cat "$log" >&2; echo "loadtest.sh: dmoe-node did not start in 20 s" >&2; exit 1; }
    ADDR=$NODE_ADDR
    DHT_ADDR=$NODE_DHT
}

# ---- wan: the same two nodes behind emulated links, once per RTT ----

# free_port HOST: a port free on HOST now.
free_port() {
    python3 -c "import socket,sys; s=socket.socket(); s.bind((sys.argv[1], 0)); print(s.getsockname()[1])" "$1"
}

# start_wan_node I RTT ARGS...: node I on 127.0.0.(2+I) behind a link on 127.0.0.(12+I) with RTT/2 ms each
# way; it announces the link. Sets DHT_ADDR.
start_wan_node() {
    local i=$1 rtt=$2
    shift 2
    local host=127.0.0.$((2 + i)) link=127.0.0.$((12 + i)) port lport log="$TMP/link$i.log"
    port=$(free_port "$host")
    "$LINK_BIN" --listen "$link:0" --target "$host:$port" --delay_ms "$(awk -v r="$rtt" 'BEGIN { print r / 2 }')" \
        --jitter_ms 1 --rate_kib_s "$WAN_RATE" >"$log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 1 100); do
        lport=$(sed -n "s/.*listening on $link:\([0-9]*\).*/\1/p" "$log")
        [ -z "$lport" ] || break
        sleep 0.05
    done
    [ -n "$lport" ] || { cat "$log" >&2; echo "loadtest.sh: wan-link did not start" >&2; exit 1; }
    "$NODE_BIN" "$@" --host_maddrs "/ip4/$host/tcp/$port" --announce_maddrs "/ip4/$link/tcp/$lport" 2>"$TMP/node$((i + 1)).log" &
    local pid=$!
    PIDS+=("$pid")
    local rc=0
    node_wait "$TMP/node$((i + 1)).log" "$pid" 20 || rc=$?
    [ "$rc" -eq 0 ] || { cat "$TMP/node$((i + 1)).log" >&2; echo "loadtest.sh: dmoe-node did not start" >&2; exit 1; }
    DHT_ADDR=$NODE_DHT
}

# stop_all: SIGTERM every process started, the last first; a node that does not exit 0 fails the run.
stop_all() {
    for ((i = ${#PIDS[@]}; i >= 1; i--)); do
        p=${PIDS[$((i - 1))]}
        kill -TERM "$p" 2>/dev/null || true
        rc=0
        wait "$p" || rc=$?
        [ "$rc" -eq 0 ] || { echo "loadtest.sh: process $p exited with $rc" >&2; status=1; }
    done
    PIDS=()
}

if [ "${#WAN_RTTS[@]}" -gt 0 ]; then
    LINK_BIN="$BUILD/test/wan-link"
    [ -x "$LINK_BIN" ] || { echo "loadtest.sh: $LINK_BIN is missing; run make $LINK_BIN" >&2; exit 1; }
    python3 -c "import socket; socket.socket().bind(('127.0.0.12', 0))" 2>/dev/null ||
        { echo "loadtest.sh: this machine cannot bind 127.0.0.12: no wan scenario" >&2; exit 2; }
    status=0
    JSON="$OUT/wan.json"
    DAT="$OUT/wan.dat"
    echo "# rtt_ms search_ms dispatch_ms wait_ms backward_ms step_ms" >"$DAT"
    echo "[" >"$JSON"
    sep=""
    for rtt in "${WAN_RTTS[@]}"; do
        echo "== wan at ${rtt} ms RTT, ${WAN_RATE} KiB/s: dmoe-node ${NODE_ARGS[*]} / ${NODE2_ARGS[*]}"
        start_wan_node 0 "$rtt" "${NODE_ARGS[@]}"
        PEER=$DHT_ADDR
        start_wan_node 1 "$rtt" "${NODE2_ARGS[@]}" --initial_peers "$PEER"
        sleep 1
        rc=0
        timeout --kill-after=5 300 $CALL --initial_peers "$PEER" load "${LOAD_ARGS[@]}" --csv "$OUT/wan_$rtt.csv" --json \
            >"$TMP/wan_$rtt.json" || rc=$?
        [ "$rc" -eq 0 ] || status=1
        stop_all
        printf '%s{"rtt_ms": %s, "rate_kib_s": %s, "load": %s}' "$sep" "$rtt" "$WAN_RATE" "$(cat "$TMP/wan_$rtt.json")" >>"$JSON"
        sep=$',\n'
        python3 - "$TMP/wan_$rtt.json" "$rtt" >>"$DAT" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m = r.get("moe_forward_ms", {})
b = r.get("backward_latency_us", {}).get("mean", 0) / 1000.0
print(sys.argv[2], *("%.3f" % v for v in (m.get("search", 0), m.get("dispatch", 0), m.get("wait", 0), b,
                                          m.get("total", 0) + b)))
PY
        tail -n 1 "$DAT" | awk '{ printf "   step %.1f ms = beam search %.1f + dispatch %.1f + waiting %.1f + backward %.1f\n", $6, $2, $3, $4, $5 }'
    done
    echo "]" >>"$JSON"
    if ! command -v gnuplot >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
        { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q gnuplot-nox; } >/dev/null 2>&1 || true
    fi
    if command -v gnuplot >/dev/null 2>&1; then
        gnuplot <<PLOT
set terminal pngcairo size 900,600 noenhanced
set output "$OUT/wan.png"
set title "MoE training step over emulated WAN links (${WAN_RATE} KiB/s, 2 nodes, hidden 128, 1 client, batch 64)"
set style data histograms
set style histogram rowstacked
set style fill solid 0.8 border -1
set boxwidth 0.6
set grid ytics
set ylabel "ms per step (mean)"
set xlabel "round-trip time, ms"
set key left top
plot "$DAT" using 2:xtic(1) title "beam search", '' using 3 title "dispatch", '' using 4 title "waiting for the experts", \
     '' using 5 title "backward"
PLOT
        echo "== plot: $OUT/wan.png"
    fi
    if [ "$status" -eq 0 ]; then
        echo "== wan PASSED: zero errors, zero lost replies at every RTT (reports $JSON, table $DAT)"
    else
        echo "== wan FAILED: see $JSON" >&2
        exit 1
    fi
    exit 0
fi

echo "== $SCENARIO: dmoe-node ${NODE_ARGS[*]}"
start_node "$TMP/node1.log" "${NODE_ARGS[@]}"
if [ "${#NODE2_ARGS[@]}" -gt 0 ]; then
    [ -n "$DHT_ADDR" ] || { cat "$TMP/node1.log" >&2; echo "loadtest.sh: the first node printed no DHT address" >&2; exit 1; }
    PEER=$DHT_ADDR
    echo "== second node, joining $PEER: dmoe-node ${NODE2_ARGS[*]}"
    start_node "$TMP/node2.log" "${NODE2_ARGS[@]}" --initial_peers "$PEER"
    sleep 1   # both nodes declare their experts at start; give the declarations a moment to land
    TARGET=(--initial_peers "$PEER")
    echo "== DHT at $PEER; load: ${LOAD_ARGS[*]}"
else
    TARGET=(--peer "$ADDR")
    echo "== node at $ADDR; load: ${LOAD_ARGS[*]}"
fi

# dmoe-call load bounds itself (duration, then at most the call timeout for the last replies);
# timeout(1) is a second fence.
status=0
timeout --kill-after=5 300 $CALL "${TARGET[@]}" load "${LOAD_ARGS[@]}" --csv "$CSV" >"$TXT" || status=$?
cat "$TXT"

echo "== stopping the node(s) (SIGTERM), the last started first"
for ((i = ${#PIDS[@]}; i >= 1; i--)); do
    p=${PIDS[$((i - 1))]}
    kill -TERM "$p" 2>/dev/null || true
    node_status=0
    wait "$p" || node_status=$?
    if [ "$node_status" -ne 0 ]; then
        tail -n 5 "$TMP/node$i.log" >&2
        echo "loadtest.sh: dmoe-node $i exited with $node_status" >&2
        status=1
    fi
done
PIDS=()

# plot_csv CSV PNG TITLE: three panels over time, each series on its own axis -- rows/s, requests/s (with
# a fixed batch they are proportional: on one axis pair they would draw the same curve), and p50/p99
# latency. A second without replies has no latency (nan in the CSV): gnuplot leaves a gap there, not 0.
plot_csv() {
    gnuplot <<PLOT
set terminal pngcairo size 1000,1000 noenhanced
set output "$2"
set datafile separator ","
set multiplot layout 3,1 title "$3"
set grid
set xlabel "seconds"
set yrange [0:*]
set offsets 0, 0, graph 0.2, 0
set key top right
set ylabel "rows / s"
plot "$1" using 1:5 skip 1 with linespoints lc rgb "#1f77b4" title "rows/s"
set ylabel "requests / s"
plot "$1" using 1:4 skip 1 with linespoints lc rgb "#2ca02c" title "requests/s"
set ylabel "latency, ms"
plot "$1" using 1:6 skip 1 with linespoints lc rgb "#ff7f0e" title "p50", \\
     "$1" using 1:7 skip 1 with linespoints lc rgb "#d62728" title "p99"
unset multiplot
PLOT
}

# The plot: throughput and latency over time, from the CSV.
if ! command -v gnuplot >/dev/null 2>&1; then
    echo "== installing gnuplot-nox for the plot"
    if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
    { $SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q gnuplot-nox; } >/dev/null 2>&1 || true
fi
if command -v gnuplot >/dev/null 2>&1 && [ -s "$CSV" ] && [ "$(wc -l <"$CSV")" -gt 1 ]; then
    # the title folded to the width of the image (gnuplot reads \n in a double-quoted string)
    TITLE=$(printf '%s: dmoe-call load %s' "$SCENARIO" "${LOAD_ARGS[*]}" | fold -s -w 100 \
            | awk 'NR > 1 { printf "\\n" } { sub(/ +$/, ""); printf "%s", $0 }')
    plot_csv "$CSV" "$PNG" "$TITLE"
    echo "== plot: $PNG"
else
    echo "== no plot (gnuplot unavailable or no samples); samples in $CSV"
fi

if [ "$status" -eq 0 ]; then
    echo "== $SCENARIO PASSED: zero errors, zero lost replies (summary $TXT, samples $CSV)"
else
    echo "== $SCENARIO FAILED (dmoe-call load exited $status): see $TXT" >&2
    exit 1
fi
