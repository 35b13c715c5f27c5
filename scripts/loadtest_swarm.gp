# loadtest_swarm.gp -- the swarm scenario's plot (scripts/loadtest_swarm.sh calls it):
#   gnuplot -e "dir='build/loadtest'; title='...'" scripts/loadtest_swarm.gp   ->  DIR/swarm.png
# Four panels: the nodes up over time and each node's start time; RSS per node; the MoE load's rows/s
# before and after the kill; the DHT load's requests/s before and after. Reads swarm_start.dat ("index
# seconds-since-first-start start-ms"), swarm_rss.dat ("index KiB") and the loads' CSVs (time_s, requests,
# rows, requests_per_s, rows_per_s, p50_ms, p99_ms, errors).
set terminal pngcairo size 1200,900 noenhanced
set output dir."/swarm.png"
set datafile separator whitespace
set multiplot layout 2,2 title "swarm: ".title
set grid

set title "start-up"
set xlabel "seconds since the first start"
set ylabel "nodes up"
set y2label "this node's start, ms"
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
plot dir."/swarm_start.dat" using 2:($1 + 1) with lines lw 2 title "nodes up" axes x1y1, \
     dir."/swarm_start.dat" using 2:3 with points pt 7 ps 0.5 title "start ms" axes x1y2
unset y2label
unset y2tics
set ytics mirror

set title "memory"
set xlabel "node"
set ylabel "RSS, MiB"
plot dir."/swarm_rss.dat" using 1:($2 / 1024) with impulses lw 2 title "RSS per node"

set datafile separator ","
set title "MoE layer over the grid (forward + backward)"
set xlabel "seconds"
set ylabel "rows / s"
set y2label "errors / interval"
set ytics nomirror
set y2tics
set y2range [0:*]
plot dir."/swarm_moe_before.csv" using 1:5 skip 1 with linespoints title "before the kill", \
     dir."/swarm_moe_after.csv" using 1:5 skip 1 with linespoints title "after the kill", \
     dir."/swarm_moe_after.csv" using 1:8 skip 1 with impulses lw 4 title "errors after (partial)" axes x1y2
unset y2label
unset y2tics
set ytics mirror

set title "DHT stores and gets"
set ylabel "requests / s"
plot dir."/swarm_dht_before.csv" using 1:4 skip 1 with linespoints title "before the kill", \
     dir."/swarm_dht_after.csv" using 1:4 skip 1 with linespoints title "after the kill"
unset multiplot
