#!/usr/bin/env bash
# Measures the executions per second of one fuzz target, single process, as libFuzzer
# reports them at the end of a run:
#   fuzz/speed.sh [TARGET] [SECONDS] [extra libFuzzer args...]
# (defaults: device_runtime, 60). Runs `cargo +nightly fuzz run TARGET <copy of its seed
# corpus> -- -max_total_time=SECONDS -print_final_stats=1`: the run starts from a temporary
# copy of fuzz/corpus/TARGET so that repeated measurements start alike and leave the
# committed corpus untouched. Prints one line: target, exec/s, runs, seconds, load average.
# The build is done first, so its time is not measured; set REPEAT=N to measure N times.
set -euo pipefail

cd "$(dirname "$0")"
target="${1:-device_runtime}"
seconds="${2:-60}"
shift $(($# > 2 ? 2 : $#))
repeat="${REPEAT:-1}"

cargo +nightly fuzz build "$target" >&2

for _ in $(seq "$repeat"); do
    corpus=$(mktemp -d)
    trap 'rm -rf "$corpus"' EXIT
    if [ -d "corpus/$target" ]; then
        cp -r "corpus/$target/." "$corpus/"
    fi
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    log=$(cargo +nightly fuzz run "$target" "$corpus" -- \
        -max_total_time="$seconds" -print_final_stats=1 "$@" 2>&1) || {
        echo "$log" | tail -40 >&2
        echo "fuzz run of $target failed" >&2
        exit 1
    }
    load_after=$(cut -d' ' -f1-3 /proc/loadavg)
    # libFuzzer's final stats: "stat::number_of_executed_units: N",
    # "stat::average_exec_per_sec: N"; fall back on the last "exec/s: N" status line.
    execs=$(echo "$log" | sed -n 's/^stat::average_exec_per_sec: *//p' | tail -1)
    runs=$(echo "$log" | sed -n 's/^stat::number_of_executed_units: *//p' | tail -1)
    if [ -z "$execs" ]; then
        execs=$(echo "$log" | grep -o 'exec/s: [0-9]*' | tail -1 | cut -d' ' -f2)
    fi
    echo "$target exec/s=${execs:-?} runs=${runs:-?} seconds=$seconds" \
        "load_before=[$load_before] load_after=[$load_after]"
    rm -rf "$corpus"
    trap - EXIT
done
