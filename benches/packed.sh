#!/usr/bin/env bash
# Split vs packed virtqueues side by side, in one run: our vhost-user-blk (4 KiB random
# reads of a page-cached pattern image) and vhost-user-rng (4 KiB fills) at queue depth 1
# and 16, driven by vhost-user-load with split rings and with --packed (VIRTIO_F_RING_PACKED
# acked). Daemon and load generator both run on one CPU (taskset -c $CPU), as in
# compare.sh's pinned pass; the two layouts alternate within each repetition (order
# flipped every repetition) so a burst of load on a shared machine hits both alike.
# Prints a table of median requests/s per case and the packed/split ratio.
#
#   benches/packed.sh                         REPS=5 DURATION=3 WARMUP=0.5 QDS="1 16" CPU=0
#   SKIP_BUILD=1 benches/packed.sh            use the release binaries already built
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPS=${REPS:-5}
DURATION=${DURATION:-3}
WARMUP=${WARMUP:-0.5}
QDS=${QDS:-1 16}
CPU=${CPU:-0}
IMG_SIZE=${IMG_SIZE:-256M}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release

die() { echo "packed.sh: $*" >&2; exit 1; }

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    # (`--bin` would apply to every package named: the daemons are built apart.)
    (cd "$ROOT" && cargo build --release --quiet -p vhost-device-blk -p vhost-device-rng &&
        cargo build --release --quiet -p benches --bin vhost-user-load) || die "cargo build failed"
fi
LOAD=$TARGET/vhost-user-load

WORKDIR=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORKDIR"
}
trap cleanup EXIT

IMG=$WORKDIR/img
"$LOAD" --make-image "$IMG" --size "$IMG_SIZE" >/dev/null
cat "$IMG" >/dev/null

taskset -c "$CPU" "$TARGET/vhost-user-blk" --socket-path "$WORKDIR/blk.sock" --blk-file "$IMG" \
    2>"$WORKDIR/blk.log" &
PIDS+=($!)
taskset -c "$CPU" "$TARGET/vhost-user-rng" --socket-path "$WORKDIR/rng.sock" 2>"$WORKDIR/rng.log" &
PIDS+=($!)

RESULTS=$WORKDIR/results.tsv
: >"$RESULTS"
for rep in $(seq 1 "$REPS"); do
    if (( rep % 2 )); then rings="split packed"; else rings="packed split"; fi
    for device in blk rng; do
        for qd in $QDS; do
            for ring in $rings; do
                args=(--socket "$WORKDIR/$device.sock" --device "$device" --qd "$qd"
                    --duration "$DURATION" --warmup "$WARMUP" --label "$ring")
                [[ $device == blk ]] && args+=(--rw randread)
                [[ $ring == packed ]] && args+=(--packed)
                out=$(taskset -c "$CPU" "$LOAD" "${args[@]}") || die "load failed: ${args[*]}"
                rate=$(sed -n 's/^RESULT .* ring=\([a-z]*\) .* rate=\([0-9.]*\).*/\1 \2/p' <<<"$out")
                [[ ${rate%% *} == "$ring" ]] || die "the load generator ran '${rate%% *}', not $ring"
                printf '%s\t%s\t%s\t%s\t%s\n' "$device" "$qd" "$ring" "$rep" "${rate#* }" >>"$RESULTS"
            done
        done
    done
done

for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null || die "a daemon died (logs in $WORKDIR)"; done

python3 - "$RESULTS" "$REPS" "$DURATION" "$CPU" <<'PY'
import statistics, sys
rows = [l.split('\t') for l in open(sys.argv[1]).read().split('\n') if l]
med = {}
for dev, qd, ring, _, rate in rows:
    med.setdefault((dev, int(qd), ring), []).append(float(rate))
print(f"split vs packed virtqueues: median requests/s of {sys.argv[2]} reps x {sys.argv[3]} s, "
      f"daemon and load generator on CPU {sys.argv[4]}")
print(f"{'device':<8}{'qd':>4}{'split':>12}{'packed':>12}{'packed/split':>14}")
for dev, qd in sorted({(d, q) for d, q, _ in med}):
    s = statistics.median(med[(dev, qd, 'split')])
    p = statistics.median(med[(dev, qd, 'packed')])
    print(f"{dev:<8}{qd:>4}{s:>12.0f}{p:>12.0f}{p / s:>14.3f}")
PY
