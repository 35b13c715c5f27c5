#!/usr/bin/env bash
# bench_dht.sh -- `make bench-dht`: the DHT at scale, by simulation (dmoe-dhtsim; README "The DHT at scale").
#
# Runs dmoe-dhtsim over three sweeps, each run one JSON file in $DMOE_BUILD/bench-dht/:
#   size     peers in $DHT_PEERS (default "1000 10000 100000"), 10% hostile, median uptime 1 h
#   hostile  0, 10 and 30% hostile peers at $DHT_SWEEP_PEERS (default 10000), median uptime 1 h
#   churn    median uptime 4 h, 1 h and 15 min at $DHT_SWEEP_PEERS, 10% hostile
# Servers: 5% of the peers, at most 1,000 (2 uids each: the expert grid does not grow with the DHT);
# trainers: 1% of the peers; 100 beam steps per second. A run identical to one already made in this
# sweep (the 10%, 1 h point of each) is not made twice. Then it gathers them into results.json (one
# object per run, with "sweep" and "x") and, when gnuplot is installed, plots bench_dht.gp into dht.png.
# Each run measures 60 s of virtual time after 30 s of warmup ($DHT_DURATION, $DHT_WARMUP). Extra
# arguments go to every dmoe-dhtsim run (e.g. --alpha 5 --cache). DHT_REUSE=1 keeps the JSON of runs
# already in $DMOE_BUILD/bench-dht/ instead of running them again. The 100,000-peer run takes minutes
# and about 7 GB (7.5 min and 6.9 GB peak on the 2-core machine; its wall and CPU time are in its JSON).
set -euo pipefail

BUILD=${DMOE_BUILD:-build}
SIM="$BUILD/dmoe-dhtsim"
[ -x "$SIM" ] || { echo "bench_dht.sh: $SIM is missing; run make first" >&2; exit 1; }
OUT="$BUILD/bench-dht"
mkdir -p "$OUT"
PEERS=${DHT_PEERS:-"1000 10000 100000"}
SWEEP_PEERS=${DHT_SWEEP_PEERS:-10000}
DUR=${DHT_DURATION:-60}
WARM=${DHT_WARMUP:-30}
REUSE=${DHT_REUSE:-0}
declare -A DONE   # arguments -> the run that had them

run() {   # run NAME SWEEP X ARGS...
  local name=$1 sweep=$2 x=$3
  shift 3
  local servers=$(( $2 / 20 < 1000 ? $2 / 20 : 1000 ))   # $2: the value of --peers
  local args="--duration $DUR --warmup $WARM --servers $servers --lookup_rate 100 $*"
  if [ -n "${DONE[$args]:-}" ]; then
    cp "$OUT/${DONE[$args]}.json" "$OUT/$name.json"
  elif [ "$REUSE" = 1 ] && [ -s "$OUT/$name.json" ]; then
    echo "bench_dht: $name: kept from an earlier run" >&2
  else
    echo "bench_dht: $name: dmoe-dhtsim $args" >&2
    # shellcheck disable=SC2086
    "$SIM" $args --out "$OUT/$name.json"
  fi
  DONE[$args]=$name
  printf '{"sweep": "%s", "x": %s, "run": ' "$sweep" "$x" > "$OUT/$name.row"
  cat "$OUT/$name.json" >> "$OUT/$name.row"
  echo "}" >> "$OUT/$name.row"
}

EXTRA=("$@")
ROWS=()
for n in $PEERS; do
  run "size_$n" size "$n" --peers "$n" --hostile 0.1 --median_uptime 3600 "${EXTRA[@]}"
  ROWS+=("$OUT/size_$n.row")
done
for h in 0 0.1 0.3; do
  run "hostile_$h" hostile "$h" --peers "$SWEEP_PEERS" --hostile "$h" --median_uptime 3600 "${EXTRA[@]}"
  ROWS+=("$OUT/hostile_$h.row")
done
for u in 14400 3600 900; do
  run "churn_$u" churn "$u" --peers "$SWEEP_PEERS" --hostile 0.1 --median_uptime "$u" "${EXTRA[@]}"
  ROWS+=("$OUT/churn_$u.row")
done

# results.json: the runs, in order; one .dat table per sweep for gnuplot
/usr/bin/python3 - "$OUT" "${ROWS[@]}" <<'PY'
import json, sys
out, rows = sys.argv[1], [json.load(open(p)) for p in sys.argv[2:]]
json.dump(rows, open(out + "/results.json", "w"), indent=1)
cols = ["success", "stale_rate", "hops_p50", "hops_p99", "latency_p50_ms", "latency_p99_ms",
        "msgs_per_lookup", "bytes_per_lookup", "wall_s", "cpu_s", "peak_rss_mb", "bytes_per_peer"]
for sweep in ("size", "hostile", "churn"):
    with open("%s/%s.dat" % (out, sweep), "w") as f:
        f.write("# x " + " ".join(cols) + "\n")
        for r in rows:
            if r["sweep"] == sweep:
                f.write("%s %s\n" % (r["x"], " ".join(str(r["run"][c]) for c in cols)))
print("%-10s %8s %8s %7s %5s %5s %8s %8s %8s %9s %7s %7s %7s" % ("sweep", "x", "success", "stale", "h50", "h99",
      "lat50ms", "lat99ms", "msgs/lk", "bytes/lk", "wall_s", "cpu_s", "rss_mb"))
for r in rows:
    x = r["run"]
    print("%-10s %8s %8.4f %7.4f %5d %5d %8.0f %8.0f %8.1f %9.0f %7.1f %7.1f %7.0f" % (r["sweep"], r["x"], x["success"],
          x["stale_rate"], x["hops_p50"], x["hops_p99"], x["latency_p50_ms"], x["latency_p99_ms"], x["msgs_per_lookup"],
          x["bytes_per_lookup"], x["wall_s"], x["cpu_s"], x["peak_rss_mb"]))
PY
if command -v gnuplot >/dev/null; then
  gnuplot -e "dir='$OUT'" scripts/bench_dht.gp && echo "bench_dht: plotted $OUT/dht.png" >&2
else
  echo "bench_dht: gnuplot is not installed: the tables are in $OUT/*.dat (plot them with scripts/bench_dht.gp)" >&2
fi
echo "bench_dht: figures in $OUT/results.json" >&2
