#!/usr/bin/env bash
# Measures the executions per second of one fuzz target, single process, as libFuzzer
# reports them at the end of a run:
#   fuzz/speed.sh [TARGET] [SECONDS] [extra libFuzzer args...]
# (defaults: device_runtime, 60). Runs `cargo +nightly fuzz run TARGET <copy of its seed
# corpus> -- -max_total_time=SECONDS -print_final_stats=1`: the run starts from a temporary
# copy of fuzz/corpus/TARGET so that repeated measurements start alike and leave the
# committed corpus untouched. Prints one line: target, exec/s (libFuzzer's figure: runs per
# wall-clock second), runs, the CPU seconds the run used (user+system, cargo's included)
# and runs per CPU second (a figure less sensitive to other processes on a shared machine
# than exec/s), and the load average before and after. The build is done first, so its
# time is not measured; set REPEAT=N to measure N times.
set -euo pipefail

cd "$(dirname "$0")"
target="${1:-device_runtime}"
seconds="${2:-60}"
shift $(($# > 2 ? 2 : $#))
repeat="${REPEAT:-1}"

# CPU seconds (user + system) used so far by this shell's finished children, into $cpu_now
# (`times` must run in this shell, not in a command substitution's subshell).
times_file=$(mktemp)
children_cpu() {
    times >"$times_file"
    cpu_now=$(tail -1 "$times_file" | awk '{
        t = 0
        for (i = 1; i <= 2; i++) { split($i, p, "m"); sub("s", "", p[2]); t += p[1] * 60 + p[2] }
        print t
    }')
}

cargo +nightly fuzz build "$target" >&2

for _ in $(seq "$repeat"); do
    corpus=$(mktemp -d)
    trap 'rm -rf "$corpus" "$times_file"' EXIT
    if [ -d "corpus/$target" ]; then
        cp -r "corpus/$target/." "$corpus/"
    fi
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    children_cpu
    cpu_before=$cpu_now
    log=$(cargo +nightly fuzz run "$target" "$corpus" -- \
        -max_total_time="$seconds" -print_final_stats=1 "$@" 2>&1) || {
        echo "$log" | tail -40 >&2
        echo "fuzz run of $target failed" >&2
        exit 1
    }
    load_after=$(cut -d' ' -f1-3 /proc/loadavg)
    children_cpu
    cpu=$(awk -v a="$cpu_before" -v b="$cpu_now" 'BEGIN { printf "%.1f", b - a }')
    # libFuzzer's final stats: "stat::number_of_executed_units: N",
    # "stat::average_exec_per_sec: N"; fall back on the last "exec/s: N" status line.
    execs=$(echo "$log" | sed -n 's/^stat::average_exec_per_sec: *//p' | tail -1)
    runs=$(echo "$log" | sed -n 's/^stat::number_of_executed_units: *//p' | tail -1)
    if [ -z "$execs" ]; then
        execs=$(echo "$log" | grep -o 'exec/s: [0-9]*' | tail -1 | cut -d' ' -f2)
    fi
    per_cpu=$(awk -v r="${runs:-0}" -v c="$cpu" 'BEGIN { if (c > 0) printf "%d", r / c; else print "?" }')
    echo "$target exec/s=${execs:-?} runs=${runs:-?} seconds=$seconds cpu_s=$cpu" \
        "runs_per_cpu_s=$per_cpu load_before=[$load_before] load_after=[$load_after]"
    rm -rf "$corpus"
done
rm -f "$times_file"
