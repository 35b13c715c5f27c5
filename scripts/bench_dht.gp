# bench_dht.gp -- plots of `make bench-dht` (scripts/bench_dht.sh): gnuplot -e "dir='build/bench-dht'" bench_dht.gp
# Columns of DIR/{size,hostile,churn}.dat: x success stale_rate hops_p50 hops_p99 latency_p50_ms latency_p99_ms
# msgs_per_lookup bytes_per_lookup wall_s cpu_s peak_rss_mb bytes_per_peer
if (!exists("dir")) dir = "build/bench-dht"
set terminal pngcairo size 1500,1000 font ",10"
set output dir."/dht.png"
set multiplot layout 3,4 title "dmoe DHT by simulation (virtual time; make bench-dht)"
set key left bottom
set grid
do for [s in "size hostile churn"] {
  f = dir."/".s.".dat"
  xl = s eq "size" ? "peers" : (s eq "hostile" ? "hostile share" : "median uptime (s)")
  if (s ne "hostile") { set logscale x } else { unset logscale x }
  set xlabel xl
  set title "uid lookups: success, stale (".s.")"
  set yrange [0:1.05]
  plot f using 1:2 with linespoints title "success", f using 1:3 with linespoints title "stale"
  set autoscale y
  set title "hops (".s.")"
  plot f using 1:4 with linespoints title "p50", f using 1:5 with linespoints title "p99"
  set title "latency, ms (".s.")"
  plot f using 1:6 with linespoints title "p50", f using 1:7 with linespoints title "p99"
  set title "per lookup (".s.")"
  plot f using 1:8 with linespoints title "messages", f using 1:($9/1000) with linespoints title "kB"
}
unset multiplot
