#!/usr/bin/env bash
# fuzz.sh -- runs the libFuzzer harnesses built by `make fuzz` (test/fuzz/; README "Fuzzing").
#
# Usage: scripts/fuzz.sh BUILD_DIR SECONDS NAME...
# Each harness BUILD_DIR/fuzz/NAME runs for SECONDS seconds, one after the other, on the working corpus
# BUILD_DIR/corpus/NAME (new inputs land there and are kept for the next run) and the committed seeds of
# test/fuzz/corpus/NAME (read only), with the dictionary test/fuzz/dict/NAME.dict, or else the one named
# by NAME's first word (dht_proto and dht_apply share dht.dict), when there is one.
# A crash, leak, sanitizer report, timeout or out-of-memory leaves its input in BUILD_DIR/findings/NAME/
# (crash-*, leak-*, timeout-*, oom-*). At the end one line per harness gives its executions; the exit
# status is 1 when any harness failed or left a finding.
#
# Environment: FUZZ_JOBS (default 1) runs that many harnesses at once; FUZZ_ARGS adds libFuzzer flags.
set -uo pipefail
cd "$(dirname "$0")/.."

[ $# -ge 3 ] || { echo "usage: $0 BUILD_DIR SECONDS NAME..." >&2; exit 2; }
build=$1 secs=$2
shift 2

# One harness: run it, then print "NAME EXECS EXEC/S STATUS" on stdout; its log stays in BUILD/logs.
run_one() {
    local name=$1 bin=$build/fuzz/$1 log=$build/logs/$1.log
    local corpus=$build/corpus/$name findings=$build/findings/$name seeds=test/fuzz/corpus/$name
    local dict=() seeddir=()
    mkdir -p "$corpus" "$findings" "$build/logs"
    if [ -f "test/fuzz/dict/$name.dict" ]; then dict=(-dict="test/fuzz/dict/$name.dict")
    elif [ -f "test/fuzz/dict/${name%%_*}.dict" ]; then dict=(-dict="test/fuzz/dict/${name%%_*}.dict"); fi
    [ -d "$seeds" ] && seeddir=("$seeds")
    # -timeout: one input may take 10 s; -rss_limit_mb: a harness over 2 GiB is a finding (oom-*).
    ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 UBSAN_OPTIONS=print_stacktrace=1 \
        "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$findings/" "${dict[@]}" ${FUZZ_ARGS:-} "$corpus" "${seeddir[@]}" >"$log" 2>&1
    local rc=$?
    local execs rate
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    local found
    found=$(find "$findings" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
    local status=ok
    if [ "$rc" -ne 0 ] || [ "$found" -ne 0 ]; then status="FAILED (exit $rc, $found finding(s) in $findings, log $log)"; fi
    printf '%-12s %12s execs %8s/s  %s\n' "$name" "${execs:-?}" "${rate:-?}" "$status"
}

jobs=${FUZZ_JOBS:-1}
summary=$(mktemp)
trap 'rm -f "$summary"' EXIT
running=0
for name in "$@"; do
    [ -x "$build/fuzz/$name" ] || { echo "fuzz.sh: $build/fuzz/$name is not built" >&2; exit 2; }
    echo "fuzz: $name for ${secs}s (log $build/logs/$name.log)"
    run_one "$name" >>"$summary" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
done
wait

echo "fuzz: executions per harness (${secs}s each)"
sort "$summary"
if grep -q FAILED "$summary"; then
    echo "fuzz: FAILED -- reproduce a finding with: $build/fuzz/NAME $build/findings/NAME/crash-..." >&2
    exit 1
fi
echo "fuzz: no finding"
