# lib.sh -- shell helpers the scripts share: `. "$(dirname "$0")/lib.sh"`.
#
# Reading a node's start-up lines out of its log (stderr). They are the lines actors/node/node_banner.h
# defines, and this is the shell's one parser of them (node_banner_parse is the C one):
#   Listening on /ip4/127.0.0.1/tcp/PORT       (bound)
#   Announcing /ip4/127.0.0.1/tcp/PORT         (told to others; never a wildcard)
#   Running DHT node on ['MADDR'], initial peers = [...]
#   Server started with N experts
# Safe under `set -euo pipefail`: a line not printed yet gives an empty result, not an exit.

# node_addr LOG: prints the node's first listening address, or its first announced one when it listens on
# a wildcard (0.0.0.0, ::); nothing when not printed yet.
node_addr() {
    local a
    a=$(sed -n "s/.*Listening on \([^ ]*\).*/\1/p" "$1" 2>/dev/null | head -n 1 || true)
    case "$a" in
        /ip4/0.0.0.0/*|/ip6/::/*) a=$(sed -n "s/.*Announcing \([^ ]*\).*/\1/p" "$1" 2>/dev/null | head -n 1 || true) ;;
    esac
    if [ -n "$a" ]; then echo "$a"; fi
}

# node_dht_addr LOG: prints the node's DHT multiaddr (nothing when not printed yet).
node_dht_addr() {
    grep -o "Running DHT node on \['[^']*'" "$1" 2>/dev/null | head -n 1 | sed "s/.*\['//; s/'//" || true
}

# node_wait LOG PID SECONDS: waits until the node PID, logging to LOG, listens and has started, polling
# every 0.05 s. Sets NODE_ADDR (its address) and NODE_DHT (its DHT multiaddr, "" when none). Returns 0,
# 1 when the process exited first, 2 when SECONDS passed; NODE_ADDR is then "".
node_wait() {
    local log=$1 pid=$2 tries=$(($3 * 20))
    NODE_ADDR=
    NODE_DHT=
    for _ in $(seq 1 "$tries"); do
        NODE_ADDR=$(node_addr "$log")
        if [ -n "$NODE_ADDR" ] && grep -q "Server started" "$log" 2>/dev/null; then
            NODE_DHT=$(node_dht_addr "$log")
            return 0
        fi
        NODE_ADDR=
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 2
}
