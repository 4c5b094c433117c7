#!/usr/bin/env bash
# Compares our vhost-user back-ends with peer back-ends under identical load:
#
#   blk: vhost-user-blk          vs  qemu-storage-daemon (vhost-user-blk export)
#   rng: vhost-user-rng          vs  rust-vmm vhost-device-rng
#   vsock: vhost-user-vsock      vs  rust-vmm vhost-device-vsock
#
# Each measurement starts a fresh daemon, drives it with vhost-user-load (4 KiB randread and
# randwrite on the same page-cached raw pattern image for blk, 4 KiB fills for rng), reads
# the daemon's peak RSS (VmHWM) and stops it. vsock is driven by vhost-user-vsock-load
# (guest CID 3, hybrid-vsock Unix sockets on the host side): g2h and h2g are MiB/s over one
# connection with the bytes checked, connect is connections set up and reset per second;
# its qd column is always 1. Ours and theirs alternate (A B A B ...) for
# every case and repetition, so slow drifts of the machine hit both alike. The "pinned"
# pass runs daemon and load generator both on one CPU (taskset -c $CPU); the "unpinned"
# pass lets the scheduler place them. The summary gives medians, the ratio ours/theirs
# (requests per second: above 1 means ours is faster) and the largest VmHWM of each daemon.
#
# Settings (environment):
#   REPS=5          repetitions of every (case, implementation)
#   DURATION=5      measured seconds per run
#   WARMUP=1        seconds run before measuring
#   QDS="1 16"      queue depths
#   PASSES="pinned unpinned direct"
#                   pinned: also measures the machine's limits for blk randread on the same
#                   image and CPU (vhost-user-load --limit): the threads' limit (QD1 an
#                   eventfd ping-pong between two threads with a pread, deeper the bare pread
#                   rate) and at QD1 the processes' limit (the same ping-pong between two
#                   processes, pingpong-procs), and prints ours against each
#                   direct: blk only, pinned, the image opened with O_DIRECT by both daemons
#                   (ours: --direct, with its default engine, io_uring where it works, else
#                   the I/O threads; OURS_DIRECT_ARGS adds arguments; qemu-storage-daemon:
#                   cache.direct=on,aio=native), cases DIRECT_CASES, and fio (io_uring,
#                   O_DIRECT, same file and CPU) as the disk's own limit
#   DIRECT_CASES="randread:1 randread:16 randread:64 randwrite:16"
#                   WORKLOAD:QD[:QUEUES] (QUEUES default 1): QUEUES queues with QD requests in
#                   flight on each (vhost-user-load --queues QUEUES --qd QD; ours gets
#                   --num-queues QUEUES, qemu-storage-daemon's export num-queues=QUEUES). fio
#                   runs ONE job with --iodepth=QD*QUEUES: the disk's limit at the same total
#                   depth (numjobs would add threads competing for the one pinned CPU, which
#                   measures fio, not the disk). With QUEUES > 1 the results and the summary
#                   name the case WORKLOAD/Nq (e.g. randread/4q); qd stays the depth per queue.
#   DIRECT_DIR=     where the O_DIRECT image lives (default WORKDIR; must be a disk file
#                   system, not tmpfs)
#   CPU=0           the CPU of the pinned pass
#   IMG_SIZE=1G     size of the raw image (K, M, G suffixes)
#   DEVICES="blk rng vsock"
#   VSOCK_WORKLOADS="g2h h2g connect"
#   PEER_VSOCK_ARGS="--tx-buffer-size 262144"
#                   extra arguments of vhost-device-vsock: by default its per-connection
#                   buffer (the credit it announces) is set to ours, 256 KiB (its own
#                   default is 64 KiB)
#   BLK_RW="randread randwrite"
#   WORKDIR=        scratch directory (default: a new one under /tmp, removed at the end)
#   KEEP=0          1: keep WORKDIR (raw results, daemon logs)
#   QSD=, PEER_RNG=, PEER_VSOCK=
#                   paths to the peer daemons (default: found in PATH or /opt/peers/bin;
#                   installed with apt-get / cargo install when missing and possible)
#
#   CHART=          also write the chart (SVG) to this path
#
# Next to the summary table the script draws the same medians as an SVG bar chart
# (benches/compare_report.py): $WORKDIR/compare.svg, and $CHART when set.
#
# Quick run:  REPS=2 DURATION=2 WARMUP=0.5 benches/compare.sh
# Redraw:     benches/compare.sh --chart-from RESULTS.tsv   (a results.tsv kept with KEEP=1,
#             or benches/compare.tsv; writes $CHART, default RESULTS.svg; measures nothing)
set -euo pipefail

REPS=${REPS:-5}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
QDS=${QDS:-"1 16"}
PASSES=${PASSES:-"pinned unpinned direct"}
DIRECT_CASES=${DIRECT_CASES:-"randread:1 randread:16 randread:64 randwrite:16"}
CPU=${CPU:-0}
IMG_SIZE=${IMG_SIZE:-1G}
DEVICES=${DEVICES:-"blk rng vsock"}
VSOCK_WORKLOADS=${VSOCK_WORKLOADS:-"g2h h2g connect"}
PEER_VSOCK_ARGS=${PEER_VSOCK_ARGS:-"--tx-buffer-size 262144"}
BLK_RW=${BLK_RW:-"randread randwrite"}
KEEP=${KEEP:-0}

CHART=${CHART:-}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release
REPORT=$ROOT/benches/compare_report.py

say() { printf '%s\n' "$*" >&2; }
die() { say "compare.sh: $*"; exit 1; }

# --- redraw from a results file -----------------------------------------------------------
if (( $# )); then
    [[ $1 == --chart-from && $# == 2 ]] || die "usage: compare.sh [--chart-from RESULTS.tsv]"
    [[ -r $2 ]] || die "cannot read $2"
    CHART=${CHART:-${2%.tsv}.svg}
    python3 "$REPORT" "$2" "$CHART"
    say "chart: $CHART"
    exit 0
fi

# --- our binaries -----------------------------------------------------------------------
# The daemons are built as shipped: in a cargo invocation of their own, so that features only
# the benches turn on (vhost-backend's test-utils, which `benches` needs) do not reach them
# through feature unification. The binaries measured are those of that build (linked or
# copied into the scratch directory before anything else is built).
DAEMON_PKGS=(-p vhost-device-blk -p vhost-device-rng -p vhost-device-vsock)
say "building our daemons as shipped (release, the daemon packages alone)..."
(cd "$ROOT" && cargo build --release --quiet "${DAEMON_PKGS[@]}" --bins) || die "cargo build failed"
# The check fails the run when `cargo tree` itself fails (a pipe into grep would hide it).
DAEMON_TREE=$(cd "$ROOT" && cargo tree --quiet -e normal,build,features -i vhost-backend "${DAEMON_PKGS[@]}") ||
    die "cargo tree failed: cannot check the daemons' features"
if grep -q 'feature "test-utils"' <<<"$DAEMON_TREE"; then
    die "the daemons' own build turns on vhost-backend's test-utils feature"
fi

WORKDIR=${WORKDIR:-$(mktemp -d /tmp/vhost-compare.XXXXXX)}
mkdir -p "$WORKDIR/bin"
cleanup() {
    local pids
    pids=$(jobs -p)
    [[ -n $pids ]] && kill $pids 2>/dev/null || true
    wait 2>/dev/null || true
    if [[ $KEEP == 1 ]]; then say "results kept in $WORKDIR"; else rm -rf "$WORKDIR"; fi
}
trap cleanup EXIT

for b in vhost-user-blk vhost-user-rng vhost-user-vsock; do
    [[ -x $TARGET/$b ]] || die "missing $TARGET/$b"
    # A hard link keeps this build's file when cargo replaces target/release/$b later.
    ln -f "$TARGET/$b" "$WORKDIR/bin/$b" 2>/dev/null || cp "$TARGET/$b" "$WORKDIR/bin/$b"
done
OURS_BLK=$WORKDIR/bin/vhost-user-blk
OURS_RNG=$WORKDIR/bin/vhost-user-rng
OURS_VSOCK=$WORKDIR/bin/vhost-user-vsock

say "building the load generators (release)..."
(cd "$ROOT" && cargo build --release --quiet -p benches --bins) || die "cargo build failed"
LOAD=$TARGET/vhost-user-load
VSOCK_LOAD=$TARGET/vhost-user-vsock-load
for b in "$LOAD" "$VSOCK_LOAD"; do [[ -x $b ]] || die "missing $b"; done

# --- peers ------------------------------------------------------------------------------
missing=()
want_blk=0; want_rng=0; want_vsock=0
for d in $DEVICES; do
    case $d in
        blk) want_blk=1 ;;
        rng) want_rng=1 ;;
        vsock) want_vsock=1 ;;
        *) die "unknown device $d (blk, rng, vsock)" ;;
    esac
done

if [[ $want_blk == 1 ]]; then
    QSD=${QSD:-$(command -v qemu-storage-daemon || true)}
    if [[ -z $QSD ]]; then
        say "qemu-storage-daemon not found; installing package qemu-system-common..."
        if [[ $(id -u) == 0 ]]; then
            apt-get install -y qemu-system-common >&2 || true
        elif command -v sudo >/dev/null; then
            sudo apt-get install -y qemu-system-common >&2 || true
        fi
        QSD=$(command -v qemu-storage-daemon || true)
    fi
    [[ -n $QSD ]] || missing+=("qemu-storage-daemon (apt-get install qemu-system-common)")
fi
if [[ $want_rng == 1 ]]; then
    PEER_RNG=${PEER_RNG:-$(command -v vhost-device-rng || true)}
    [[ -z $PEER_RNG && -x /opt/peers/bin/vhost-device-rng ]] && PEER_RNG=/opt/peers/bin/vhost-device-rng
    if [[ -z $PEER_RNG ]]; then
        say "vhost-device-rng not found; cargo install --locked vhost-device-rng..."
        cargo install --locked vhost-device-rng --root "$WORKDIR/peers" >&2 || true
        [[ -x $WORKDIR/peers/bin/vhost-device-rng ]] && PEER_RNG=$WORKDIR/peers/bin/vhost-device-rng
    fi
    [[ -n $PEER_RNG ]] || missing+=("vhost-device-rng (cargo install --locked vhost-device-rng)")
fi
if [[ $want_vsock == 1 ]]; then
    PEER_VSOCK=${PEER_VSOCK:-$(command -v vhost-device-vsock || true)}
    [[ -z $PEER_VSOCK && -x /opt/peers/bin/vhost-device-vsock ]] && PEER_VSOCK=/opt/peers/bin/vhost-device-vsock
    if [[ -z $PEER_VSOCK ]]; then
        say "vhost-device-vsock not found; cargo install --locked vhost-device-vsock..."
        cargo install --locked vhost-device-vsock --root "$WORKDIR/peers" >&2 || true
        [[ -x $WORKDIR/peers/bin/vhost-device-vsock ]] && PEER_VSOCK=$WORKDIR/peers/bin/vhost-device-vsock
    fi
    [[ -n $PEER_VSOCK ]] || missing+=("vhost-device-vsock (cargo install --locked vhost-device-vsock)")
fi
want_direct=0
[[ " $PASSES " == *" direct "* && $want_blk == 1 ]] && want_direct=1
if [[ $want_direct == 1 ]] && ! command -v fio >/dev/null; then
    say "fio not found; installing package fio..."
    if [[ $(id -u) == 0 ]]; then
        apt-get install -y fio >&2 || true
    elif command -v sudo >/dev/null; then
        sudo apt-get install -y fio >&2 || true
    fi
    command -v fio >/dev/null || missing+=("fio (apt-get install fio)")
fi
if (( ${#missing[@]} )); then
    die "missing peer back-ends: ${missing[*]}"
fi

# --- the image --------------------------------------------------------------------------
IMG=$WORKDIR/disk.img
if [[ $want_blk == 1 ]]; then
    say "writing a $IMG_SIZE pattern image and reading it into the page cache..."
    "$LOAD" --make-image "$IMG" --size "$IMG_SIZE" >&2
    cat "$IMG" > /dev/null
fi
DIRECT_IMG=${DIRECT_DIR:-$WORKDIR}/direct.img
if [[ $want_direct == 1 ]]; then
    say "writing a $IMG_SIZE pattern image for the O_DIRECT pass at $DIRECT_IMG..."
    "$LOAD" --make-image "$DIRECT_IMG" --size "$IMG_SIZE" >&2
    # fio's writes are not the pattern the daemons' readers check: fio writes to a copy.
    if [[ " $DIRECT_CASES " == *write* ]]; then
        "$LOAD" --make-image "$DIRECT_IMG.fio" --size "$IMG_SIZE" >&2
    fi
fi

# --- one measurement --------------------------------------------------------------------
RESULTS=$WORKDIR/results.tsv
: > "$RESULTS"

# start_daemon IMPL DEVICE SOCK PIN [QUEUES] -> sets DPID and CONNECT (the path to connect to)
start_daemon() {
    local impl=$1 device=$2 sock=$3 pin=$4 queues=${5:-1} log=$WORKDIR/$1-$2.log
    local -a pre=()
    [[ $pin == pinned || $pin == direct ]] && pre=(taskset -c "$CPU")
    rm -f "$sock" "${sock}0" "$WORKDIR/$impl.vsock" "$WORKDIR/$impl.vsock"_*
    CONNECT=$sock
    case $impl-$device-$pin in
        ours-blk-direct)
            local -a nq=()
            # One queue is the daemon's default: OURS_DIRECT_ARGS may then set its own.
            [[ $queues != 1 ]] && nq=(--num-queues "$queues")
            # shellcheck disable=SC2086 # OURS_DIRECT_ARGS is a list of words
            "${pre[@]}" "$OURS_BLK" --socket-path "$sock" --blk-file "$DIRECT_IMG" --direct \
                "${nq[@]}" ${OURS_DIRECT_ARGS:-} >>"$log" 2>&1 & ;;
        theirs-blk-direct)
            "${pre[@]}" "$QSD" \
                --blockdev "driver=file,node-name=file,filename=$DIRECT_IMG,cache.direct=on,aio=native" \
                --blockdev driver=raw,node-name=disk,file=file \
                --export "type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path=$sock,writable=on,num-queues=$queues" \
                >>"$log" 2>&1 & ;;
        ours-blk-*) "${pre[@]}" "$OURS_BLK" --socket-path "$sock" --blk-file "$IMG" >>"$log" 2>&1 & ;;
        theirs-blk-*)
            "${pre[@]}" "$QSD" \
                --blockdev "driver=file,node-name=file,filename=$IMG,cache.direct=off" \
                --blockdev driver=raw,node-name=disk,file=file \
                --export "type=vhost-user-blk,id=exp,node-name=disk,addr.type=unix,addr.path=$sock,writable=on" \
                >>"$log" 2>&1 & ;;
        ours-rng-*) "${pre[@]}" "$OURS_RNG" --socket-path "$sock" >>"$log" 2>&1 & ;;
        theirs-rng-*)
            # rust-vmm's daemon appends the socket index to the path.
            "${pre[@]}" "$PEER_RNG" --socket-path "$sock" >>"$log" 2>&1 &
            CONNECT=${sock}0 ;;
        ours-vsock-*)
            "${pre[@]}" "$OURS_VSOCK" --socket-path "$sock" --guest-cid 3 \
                --uds-path "$WORKDIR/ours.vsock" >>"$log" 2>&1 & ;;
        theirs-vsock-*)
            local -a extra=()
            read -ra extra <<<"$PEER_VSOCK_ARGS"
            "${pre[@]}" "$PEER_VSOCK" --socket "$sock" --guest-cid 3 \
                --uds-path "$WORKDIR/theirs.vsock" "${extra[@]}" >>"$log" 2>&1 & ;;
    esac
    DPID=$!
}

stop_daemon() {
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# read_hwm PID: sets hwm to the process's VmHWM in kB when it is still there (shell builtins
# only: nothing is spawned next to the measured processes).
read_hwm() {
    local k v _
    [[ -r /proc/$1/status ]] || return 0
    while read -r k v _; do
        [[ $k == VmHWM: ]] && hwm=$v
    done <"/proc/$1/status" 2>/dev/null || true
}

# measure PASS IMPL DEVICE WORKLOAD QD REP [QUEUES]
measure() {
    local pass=$1 impl=$2 device=$3 workload=$4 qd=$5 rep=$6 queues=${7:-1}
    local sock=$WORKDIR/$impl-$device.sock
    local -a pre=() args=()
    [[ $pass == pinned || $pass == direct ]] && pre=(taskset -c "$CPU")
    # The host may reclaim idle page-cache pages (e.g. DAMON): read the image back in before
    # each page-cache measurement so every run starts from the same cache.
    [[ $device == blk && $pass != direct ]] && cat "$IMG" >/dev/null
    start_daemon "$impl" "$device" "$sock" "$pass" "$queues"
    local pid=$DPID
    local load=$LOAD
    if [[ $device == blk ]]; then args=(--device blk --rw "$workload" --qd "$qd" --queues "$queues")
    elif [[ $device == vsock ]]; then
        load=$VSOCK_LOAD
        args=(--uds "$WORKDIR/$impl.vsock" --workload "$workload")
    else args=(--device rng --qd "$qd"); fi
    # The load runs in the background while the daemon's VmHWM (monotonic) is sampled, so
    # it is read even from a daemon that exits when its front-end leaves.
    local out=$WORKDIR/load.out lpid status=0
    hwm=0
    "${pre[@]}" "$load" --socket "$CONNECT" "${args[@]}" \
        --duration "$DURATION" --warmup "$WARMUP" --label "$impl" >"$out" 2>&1 &
    lpid=$!
    while kill -0 "$lpid" 2>/dev/null; do
        read_hwm "$pid"
        sleep 0.5
    done
    wait "$lpid" || status=$?
    read_hwm "$pid"
    stop_daemon "$pid"
    # The case's name in the results: WORKLOAD, or WORKLOAD/Nq with N > 1 queues.
    [[ $queues != 1 ]] && workload=$workload/${queues}q
    if [[ $status != 0 ]]; then
        say "  $pass $impl $device $workload qd$qd: FAILED: $(cat "$out")"
        printf '%s\t%s\t%s\t%s\t%s\t%s\tNaN\t%s\n' "$pass" "$impl" "$device" "$workload" "$qd" "$rep" "$hwm" >>"$RESULTS"
        return
    fi
    local rate
    rate=$(sed -n 's/^RESULT .* rate=\([0-9.]*\).*/\1/p' "$out")
    local unit=req/s
    [[ $device == vsock ]] && unit=$(sed -n 's/^RESULT .* unit=\([^ ]*\).*/\1/p' "$out")
    say "  $pass rep $rep: $impl $device $workload qd$qd: $rate $unit, VmHWM ${hwm:-0} kB"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$pass" "$impl" "$device" "$workload" "$qd" \
        "$rep" "${rate:-NaN}" "${hwm:-0}" >>"$RESULTS"
}

cases=()
for d in $DEVICES; do
    if [[ $d == blk ]]; then
        for rw in $BLK_RW; do for qd in $QDS; do cases+=("blk $rw $qd"); done; done
    elif [[ $d == vsock ]]; then
        for w in $VSOCK_WORKLOADS; do cases+=("vsock $w 1"); done
    else
        for qd in $QDS; do cases+=("rng rng $qd"); done
    fi
done

SETTINGS="REPS=$REPS DURATION=$DURATION WARMUP=$WARMUP QDS='$QDS' PASSES='$PASSES' CPU=$CPU IMG_SIZE=$IMG_SIZE"
say "settings: $SETTINGS"
say "peers: ${QSD:-} ${PEER_RNG:-} ${PEER_VSOCK:-} ${PEER_VSOCK:+($PEER_VSOCK_ARGS)}"
# The first comment line is the chart's subtitle.
printf '# %s, %s CPUs\n# peers: %s\n' "$SETTINGS" "$(nproc)" "${QSD:-} ${PEER_RNG:-} ${PEER_VSOCK:-}" >>"$RESULTS"
direct_cases=()
for c in $DIRECT_CASES; do
    IFS=: read -r w qd queues <<<"$c"
    # Positive decimal numbers without a leading zero (bash reads 08 as octal).
    [[ -n $w && $qd =~ ^[1-9][0-9]*$ && ${queues:-1} =~ ^[1-9][0-9]*$ ]] ||
        die "DIRECT_CASES: '$c' is not WORKLOAD:QD[:QUEUES] (QD, QUEUES: 1 or more)"
    direct_cases+=("blk $w $qd ${queues:-1}")
done

# fio_limit WORKLOAD DEPTH: fio's IOPS on the O_DIRECT image (io_uring, pinned like the
# daemons), one job at that total depth.
fio_limit() {
    local file=$DIRECT_IMG
    [[ $1 == *write* ]] && file=$DIRECT_IMG.fio
    taskset -c "$CPU" fio --name=limit --filename="$file" --direct=1 --rw="$1" --bs=4k \
        --iodepth="$2" --ioengine=io_uring --runtime="$DURATION" --ramp_time="$WARMUP" \
        --time_based --output-format=json 2>/dev/null |
        python3 -c 'import json, sys; j = json.load(sys.stdin)["jobs"][0]; print(int(j["read"]["iops"] + j["write"]["iops"]))'
}

# page_cache_limit HOW: the machine's limit for 4 KiB random reads of the page-cached image,
# pinned like the daemons (vhost-user-load --limit HOW): pingpong, an eventfd round trip
# between two threads with a pread on the far side (QD1); pingpong-procs, the same between two
# processes (QD1, as a front-end and a back-end are); pread, the bare pread rate (deeper).
page_cache_limit() {
    cat "$IMG" >/dev/null
    taskset -c "$CPU" "$LOAD" --limit "$1" --image "$IMG" --duration "$DURATION" \
        --warmup "$WARMUP" | sed -n 's/^RESULT .* rate=\([0-9.]*\).*/\1/p'
}

for pass in $PASSES; do
    [[ $pass == direct && $want_direct == 0 ]] && continue
    for rep in $(seq "$REPS"); do
        if [[ $pass == direct ]]; then pass_cases=("${direct_cases[@]}"); else pass_cases=("${cases[@]}"); fi
        for c in "${pass_cases[@]}"; do
            read -r device workload qd queues <<<"$c"
            queues=${queues:-1}
            measure "$pass" ours "$device" "$workload" "$qd" "$rep" "$queues"
            measure "$pass" theirs "$device" "$workload" "$qd" "$rep" "$queues"
            if [[ $pass == direct ]]; then
                limit=$(fio_limit "$workload" $((qd * queues)) || echo NaN)
                name=$workload
                [[ $queues != 1 ]] && name=$workload/${queues}q
                say "  direct rep $rep: fio io_uring $workload iodepth $((qd * queues)) (for $name qd$qd): $limit IOPS"
                printf '# fio\t%s\t%s\t%s\t%s\n' "$name" "$qd" "$rep" "$limit" >>"$RESULTS"
            elif [[ $pass == pinned && $device == blk && $workload == randread ]]; then
                how=pread
                [[ $qd == 1 ]] && how=pingpong
                limit=$(page_cache_limit "$how" || echo NaN)
                say "  pinned rep $rep: machine limit randread qd$qd ($how): ${limit:-NaN} req/s"
                printf '# limit\t%s\t%s\t%s\t%s\n' "$workload" "$qd" "$rep" "${limit:-NaN}" >>"$RESULTS"
                if [[ $qd == 1 ]]; then
                    limit=$(page_cache_limit pingpong-procs || echo NaN)
                    say "  pinned rep $rep: machine limit randread qd$qd (pingpong-procs): ${limit:-NaN} req/s"
                    printf '# limit-procs\t%s\t%s\t%s\t%s\n' "$workload" "$qd" "$rep" "${limit:-NaN}" >>"$RESULTS"
                fi
            fi
        done
    done
done

# --- summary ----------------------------------------------------------------------------
python3 "$REPORT" "$RESULTS" "$WORKDIR/compare.svg"
if [[ $want_direct == 1 ]]; then
    # Ours against the disk's own limit (fio), medians over the repetitions.
    python3 - "$RESULTS" <<'PY' >&2
import statistics, sys
from collections import defaultdict
ours, fio = defaultdict(list), defaultdict(list)
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if f[0] == "# fio" and f[4] != "NaN":
        fio[(f[1], f[2])].append(float(f[4]))
    elif f[0] == "direct" and f[1] == "ours" and f[6] != "NaN":
        ours[(f[3], f[4])].append(float(f[6]))
def queues(workload):
    # "randread/4q": 4 queues; a bare workload: 1.
    return int(workload.split("/")[1][:-1]) if "/" in workload else 1
print("\n== direct: ours against the disk (fio io_uring, same file, same CPU, same total depth) ==")
print(f"{'workload':10} {'queues':>6} {'qd':>3} {'total':>5} {'ours IOPS':>10} {'fio IOPS':>10} {'ours/fio':>9}")
for key in sorted(ours, key=lambda k: (k[0].split("/")[0], queues(k[0]) * int(k[1]), queues(k[0]))):
    o = statistics.median(ours[key])
    l = statistics.median(fio[key]) if fio[key] else float("nan")
    q = queues(key[0])
    print(f"{key[0].split('/')[0]:10} {q:>6} {key[1]:>3} {q * int(key[1]):>5} {o:>10.0f} {l:>10.0f} {o / l:>8.2f}x")
PY
fi
if grep -q '^# limit' "$RESULTS"; then
    # Ours against the machine's limits on the page cache (pinned pass), medians: the
    # threads' limit (QD1 a ping-pong between two threads, deeper the pread rate) and, at QD1,
    # the processes' limit (the same ping-pong between two processes).
    python3 - "$RESULTS" <<'PY' >&2
import math, statistics, sys
from collections import defaultdict
ours, limit, procs = defaultdict(list), defaultdict(list), defaultdict(list)
for line in open(sys.argv[1]):
    f = line.rstrip("\n").split("\t")
    if f[0] in ("# limit", "# limit-procs") and f[4] not in ("NaN", ""):
        (limit if f[0] == "# limit" else procs)[(f[1], f[2])].append(float(f[4]))
    elif f[0] == "pinned" and f[1] == "ours" and f[2] == "blk" and f[6] != "NaN":
        ours[(f[3], f[4])].append(float(f[6]))
def med(xs):
    return statistics.median(xs) if xs else float("nan")
def ratio(a, b):
    # NaN, not ZeroDivisionError, for a limit whose median is 0 (or missing).
    return a / b if not math.isnan(a) and not math.isnan(b) and b else float("nan")
print("\n== pinned: ours against the machine's limits ==")
print("threads: QD1 an eventfd ping-pong between two threads + pread, deeper the pread rate;")
print("procs: QD1 the same ping-pong between two processes (as a front-end and a back-end are)")
print(f"{'workload':10} {'qd':>3} {'ours req/s':>11} {'threads':>10} {'ours/thr':>9} {'procs':>10} {'ours/procs':>11}")
for key in sorted(set(limit) | set(procs), key=lambda k: (k[0], int(k[1]))):
    o, l, p = med(ours[key]), med(limit[key]), med(procs[key])
    pcols = f"{p:>10.0f} {ratio(o, p):>10.2f}x" if procs[key] else f"{'-':>10} {'-':>11}"
    print(f"{key[0]:10} {key[1]:>3} {o:>11.0f} {l:>10.0f} {ratio(o, l):>8.2f}x {pcols}")
PY
fi
if [[ -n $CHART ]]; then
    cp "$WORKDIR/compare.svg" "$CHART"
    say "chart: $CHART"
elif [[ $KEEP == 1 ]]; then
    say "chart: $WORKDIR/compare.svg"
else
    say "chart: set CHART=path.svg (or KEEP=1) to keep it"
fi
