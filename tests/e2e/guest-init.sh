#!/bin/sh
# /init of the end-to-end test guest (busybox ash, PID 1).
#
# Parameters come from /proc/cmdline (dotted kernel parameters never reach init's
# environment):
#   e2e.tests=blk,rng          tests to run (comma separated)
#   e2e.seed=S                 fresh per boot; seeds the written patterns
#   e2e.blk_read_mib=4         MiB read (O_DIRECT) from offset 0 and hashed
#   e2e.blk_write_off_mib=8    where the pattern is written
#   e2e.blk_write_mib=1        pattern size
#   e2e.blk_discard_off_mib=12 discarded range (0 length: skip)
#   e2e.blk_discard_mib=1
#   e2e.blk_ro=1               read-only mode: a write must fail, reads must work
#   e2e.reconnect_wait=8       reconnect mode: I/O, E2E-PHASE1-DONE, wait this many
#                              seconds (the host restarts the back-end), I/O again
#   e2e.blk_write2_off_mib=10  where phase 2 of the reconnect mode writes (seed S-2)
#   e2e.rng_bytes=64           bytes read from /dev/hwrng
#   e2e.mig_read_mib=2         migrate mode (test "migrate", see migrate.sh): size of the
#                              two regions (at 0 and at this many MiB) the rounds read
#   e2e.mig_write_off_mib=8    where the rounds write their patterns (4 slots of 256 KiB)
#   e2e.mig_stop_sector=28672  the rounds end once this sector holds E2E-STOP
#   e2e.mig_max_secs=240       ... or after this many seconds
#   e2e.step_timeout=20        timeout of each guest step (s)
#   e2e.guest_timeout=100      watchdog: power off after this many seconds
#
# Output: "E2E-RESULT key=value" lines, then "E2E-DONE"; then poweroff -f.
# Sector s of a pattern is printf '%-511s\n' "E2E-<seed>-sector-<s>" with s the
# absolute sector number (512-byte sectors), so the host can recompute it.

PATH=/bin
export PATH

mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t tmpfs tmpfs /tmp 2>/dev/null
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1

# SeaBIOS leaves escape codes on the serial line: start on a fresh line.
echo
echo "E2E-BOOT uptime=$(cut -d' ' -f1 /proc/uptime)"

# --- parameters --------------------------------------------------------------------
param() { # name default
    v=$(tr ' ' '\n' </proc/cmdline | sed -n "s/^e2e\.$1=//p" | tail -n1)
    echo "${v:-$2}"
}
TESTS=$(param tests blk)
SEED=$(param seed 0)
READ_MIB=$(param blk_read_mib 4)
WOFF_MIB=$(param blk_write_off_mib 8)
WMIB=$(param blk_write_mib 1)
DOFF_MIB=$(param blk_discard_off_mib 12)
DMIB=$(param blk_discard_mib 1)
BLK_RO=$(param blk_ro 0)
RECONNECT_WAIT=$(param reconnect_wait 0)
W2OFF_MIB=$(param blk_write2_off_mib 10)
RNG_BYTES=$(param rng_bytes 64)
T=$(param step_timeout 20)
GUEST_TIMEOUT=$(param guest_timeout 100)

r() { echo "E2E-RESULT $1=$2"; }

finish() {
    echo "E2E-DONE"
    sync
    poweroff -f
    sleep 10
}

# A hang anywhere powers the guest off instead of waiting for the host timeout.
(
    sleep "$GUEST_TIMEOUT"
    r guest_watchdog fired
    poweroff -f
) &

r guest_kernel "$(uname -r)"

# --- modules -----------------------------------------------------------------------
nmod=0
while read -r m; do
    [ -n "$m" ] || continue
    if insmod "/lib/modules/$m.ko"; then
        nmod=$((nmod + 1))
    else
        r module_failed "$m"
    fi
done </etc/e2e-modules
r modules_loaded "$nmod"
r uptime_modules "$(cut -d' ' -f1 /proc/uptime)"

for d in /sys/bus/virtio/devices/*; do
    [ -e "$d/device" ] || continue
    r virtio_device "${d##*/}:id=$(cat "$d/device"):vendor=$(cat "$d/vendor"):features=$(cat "$d/features")"
done

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# pattern SEED OFF_MIB MIB > file
pattern() {
    awk -v seed="$1" -v first="$(($2 * 2048))" -v n="$(($3 * 2048))" \
        'BEGIN { for (i = 0; i < n; i++) printf "%-511s\n", "E2E-" seed "-sector-" (first + i) }'
}

md5() { md5sum "$1" | cut -d' ' -f1; }

# read_range KEY OFF_MIB MIB: O_DIRECT read, print KEY_status and KEY_md5
read_range() {
    drop_caches
    rm -f /tmp/rd
    timeout "$T" dd if="$DEV" of=/tmp/rd bs=1M skip="$2" count="$3" iflag=direct 2>/tmp/err
    st=$?
    r "${1}_status" "$st"
    [ "$st" = 0 ] || r "${1}_error" "$(grep -v records /tmp/err | head -n1)"
    r "${1}_md5" "$(md5 /tmp/rd)"
}

# write_pattern PREFIX SEED OFF_MIB MIB: O_DIRECT write, read back
write_pattern() {
    pattern "$2" "$3" "$4" >/tmp/pat
    r "${1}_pattern_md5" "$(md5 /tmp/pat)"
    timeout "$T" dd if=/tmp/pat of="$DEV" bs=1M seek="$3" oflag=direct conv=notrunc 2>/tmp/err
    st=$?
    r "${1}_write_status" "$st"
    [ "$st" = 0 ] || r "${1}_write_error" "$(grep -v records /tmp/err | head -n1)"
    read_range "${1}_readback" "$3" "$4"
}

blk_wait() {
    i=0
    DEV=
    while [ $i -lt 50 ]; do
        for b in /sys/block/vd*; do
            [ -e "$b" ] && DEV=/dev/${b##*/}
        done
        [ -n "$DEV" ] && [ -b "$DEV" ] && return 0
        sleep 0.1
        i=$((i + 1))
    done
    return 1
}

blk_info() {
    b=/sys/block/${DEV##*/}
    r blk_dev "$DEV"
    r blk_size_bytes "$(blockdev --getsize64 "$DEV")"
    r blk_ro "$(blockdev --getro "$DEV")"
    r blk_write_cache "$(tr ' ' '_' <"$b/queue/write_cache")"
    r blk_discard_max_bytes "$(cat "$b/queue/discard_max_bytes")"
}

blk_flush() {
    timeout "$T" sync
    r blk_sync_status $?
    # fsync() on the device: the kernel sends a virtio-blk FLUSH (write-back cache).
    timeout "$T" sync "$DEV"
    r blk_fsync_status $?
    timeout "$T" blockdev --flushbufs "$DEV"
    r blk_flushbufs_status $?
}

blk_discard() {
    [ "$DMIB" -gt 0 ] || return 0
    # Fill the range first so that zeros afterwards mean the discard reached the image.
    pattern "$SEED-d" "$DOFF_MIB" "$DMIB" >/tmp/pat
    timeout "$T" dd if=/tmp/pat of="$DEV" bs=1M seek="$DOFF_MIB" oflag=direct conv=notrunc 2>/dev/null
    r blk_discard_prefill_status $?
    timeout "$T" blkdiscard -o $((DOFF_MIB * 1048576)) -l $((DMIB * 1048576)) "$DEV" 2>/tmp/err
    st=$?
    r blk_discard_status "$st"
    [ "$st" = 0 ] || r blk_discard_error "$(head -n1 /tmp/err)"
    read_range blk_discard_readback "$DOFF_MIB" "$DMIB"
    dd if=/dev/zero of=/tmp/zero bs=1M count="$DMIB" 2>/dev/null
    if cmp -s /tmp/rd /tmp/zero; then r blk_discard_zeroes 1; else r blk_discard_zeroes 0; fi
    rm -f /tmp/zero
}

blk_ro_write() {
    # Must fail cleanly: an error from dd, no hang, the guest keeps working.
    pattern "$SEED" "$WOFF_MIB" 1 >/tmp/pat
    timeout "$T" dd if=/tmp/pat of="$DEV" bs=1M seek="$WOFF_MIB" count=1 oflag=direct conv=notrunc 2>/tmp/err
    st=$?
    r blk_ro_write_status "$st"
    r blk_ro_write_error "$(grep -v records /tmp/err | head -n1)"
}

test_blk() {
    if ! blk_wait; then
        r blk_present 0
        return
    fi
    r blk_present 1
    blk_info
    read_range blk_read 0 "$READ_MIB"
    if [ "$BLK_RO" = 1 ]; then
        blk_ro_write
        read_range blk_read2 0 "$READ_MIB"
        return
    fi
    write_pattern blk "$SEED" "$WOFF_MIB" "$WMIB"
    blk_flush
    blk_discard
    r uptime_blk_done "$(cut -d' ' -f1 /proc/uptime)"
    if [ "$RECONNECT_WAIT" -gt 0 ]; then
        echo "E2E-PHASE1-DONE"
        start=$(cut -d. -f1 /proc/uptime)
        while [ $(($(cut -d. -f1 /proc/uptime) - start)) -lt "$RECONNECT_WAIT" ]; do
            sleep 0.5
        done
        echo "E2E-PHASE2-START"
        read_range p2_blk_read 0 "$READ_MIB"
        write_pattern p2_blk "$SEED-2" "$W2OFF_MIB" "$WMIB"
        read_range p2_blk_phase1 "$WOFF_MIB" "$WMIB"
        timeout "$T" sync "$DEV"
        r p2_blk_fsync_status $?
    fi
}

test_rng() {
    f=/sys/class/misc/hw_random/rng_current
    i=0
    while [ $i -lt 50 ] && ! grep -q virtio "$f" 2>/dev/null; do
        sleep 0.1
        i=$((i + 1))
    done
    r rng_current "$(cat "$f" 2>/dev/null)"
    r rng_available "$(tr ' ' ',' <"${f%/*}/rng_available" 2>/dev/null)"
    rm -f /tmp/rng
    timeout "$T" dd if=/dev/hwrng of=/tmp/rng bs="$RNG_BYTES" count=1 iflag=fullblock 2>/tmp/err
    st=$?
    r rng_status "$st"
    [ "$st" = 0 ] || r rng_error "$(grep -v records /tmp/err | head -n1)"
    r rng_bytes "$(wc -c </tmp/rng)"
    r rng_md5 "$(md5 /tmp/rng)"
    # A second read must differ from the first.
    timeout "$T" dd if=/dev/hwrng of=/tmp/rng2 bs="$RNG_BYTES" count=1 iflag=fullblock 2>/dev/null
    r rng_second_md5 "$(md5 /tmp/rng2)"
}

# --- inflight (tests/e2e/inflight-kill.sh): O_DIRECT writers at queue depth >= 8 ------
#   e2e.inflight_secs=30     how long the writers start new rounds
#   e2e.inflight_writers=8   concurrent writers (each one request in flight at a time)
#   e2e.inflight_mib=1       MiB each writer owns: writer j at offset j * that
# Writer j writes round r = 1, 2, ... of its region, each a fresh pattern
# "E2E-<seed>-<j>-<r>-sector-<s>", 64 KiB at a time with O_DIRECT, until told to stop; it
# reports its last completed round and dd's status. The host kills the daemon meanwhile.
inflight_writer() { # j mib
    off=$(($1 * $2))
    round=0
    st=0
    while [ ! -e /tmp/inflight-stop ]; do
        awk -v seed="$SEED-$1-$((round + 1))" -v first="$((off * 2048))" -v n="$(($2 * 2048))" \
            'BEGIN { for (i = 0; i < n; i++) printf "%-511s\n", "E2E-" seed "-sector-" (first + i) }' \
            >/tmp/iw$1
        timeout "$T" dd if=/tmp/iw$1 of="$DEV" bs=64k seek=$((off * 16)) oflag=direct \
            conv=notrunc 2>/tmp/iw$1.err
        st=$?
        if [ "$st" != 0 ]; then
            r "inflight_w$1_error" "$(grep -v records /tmp/iw$1.err | head -n1 | tr ' ' '_')"
            break
        fi
        round=$((round + 1))
    done
    r "inflight_w$1_rounds" "$round"
    r "inflight_w$1_status" "$st"
}

test_inflight() {
    blk_wait || { r blk_present 0; return; }
    r blk_present 1
    secs=$(param inflight_secs 30)
    n=$(param inflight_writers 8)
    mib=$(param inflight_mib 1)
    q=/sys/block/${DEV##*/}/inflight
    # Write-through (CONFIG_WCE): the daemon makes each write durable before completing
    # it, so requests stay in flight in the daemon long enough for kills to find them.
    echo "write through" >"/sys/block/${DEV##*/}/cache_type" 2>/dev/null
    r inflight_cache_type "$(tr ' ' '_' <"/sys/block/${DEV##*/}/cache_type")"
    rm -f /tmp/inflight-stop
    echo "E2E-INFLIGHT-START"
    j=0
    pids=
    while [ $j -lt "$n" ]; do
        inflight_writer $j "$mib" &
        pids="$pids $!"
        j=$((j + 1))
    done
    # Deepest queue seen (reads + writes in flight in the block layer).
    max=0
    start=$(cut -d. -f1 /proc/uptime)
    while [ $(($(cut -d. -f1 /proc/uptime) - start)) -lt "$secs" ]; do
        set -- $(cat "$q")
        [ $(($1 + $2)) -gt $max ] && max=$(($1 + $2))
        sleep 0.05
    done
    touch /tmp/inflight-stop
    for p in $pids; do wait "$p"; done
    r inflight_max_qd "$max"
    echo "E2E-INFLIGHT-END"
    timeout "$T" sync "$DEV"
    r inflight_fsync_status $?
    read_range inflight_readback 0 $((n * mib))
}

# Migrate mode: while the host migrates the VM back and forth, round after round checks the
# md5 of one of two known regions in the page cache (read there by the previous round) and
# reads the other one into the cache. Every fourth round also reads that region with
# O_DIRECT into RAM and checks its md5, writes a fresh pattern into slot (n / 4) % 4 and
# reads it back, and looks for E2E-STOP in the stop sector, which ends the rounds. Then the
# copies of the regions kept in RAM since the start are checked too. Sector s of round n's
# pattern is printf '%-511s\n' "E2E-<seed>-<n>-sector-<s>".
test_migrate() {
    if ! blk_wait; then
        r blk_present 0
        return
    fi
    r blk_present 1
    mr=$(param mig_read_mib 2)
    mw=$(param mig_write_off_mib 8)
    stop=$(param mig_stop_sector 28672)
    max=$(param mig_max_secs 240)
    # Two regions of mr MiB (at 0 and at mr MiB), different random data.
    drop_caches
    for k in 0 1; do
        timeout "$T" dd if="$DEV" of=/tmp/ref$k bs=1M skip=$((k * mr)) count="$mr" iflag=direct 2>/dev/null
        r mig_ref${k}_status $?
        eval "ref$k=$(md5 /tmp/ref$k)"
        r mig_ref${k}_md5 "$(md5 /tmp/ref$k)"
    done
    # Each round reads one region into the page cache and the next round checks it there.
    # The cache pages are written by the back-end only (and, freed and reused, hold the
    # other region's data before): on a destination they hold what the back-end wrote last
    # only if the source logged those writes.
    drop_caches
    timeout "$T" dd if="$DEV" of=/dev/null bs=1M count="$mr" 2>/dev/null
    echo "E2E-MIGRATE-READY"
    n=0 rbad=0 wbad=0 cbad=0
    start=$(cut -d. -f1 /proc/uptime)
    while :; do
        n=$((n + 1))
        prev=$(((n - 1) % 2)) cur=$((n % 2))
        eval "want=\$ref$prev"
        if [ "$(dd if="$DEV" bs=1M skip=$((prev * mr)) count="$mr" 2>/dev/null | md5sum | cut -d' ' -f1)" != "$want" ]; then
            cbad=$((cbad + 1))
            r mig_cache_mismatch_round "$n"
        fi
        drop_caches
        timeout "$T" dd if="$DEV" of=/dev/null bs=1M skip=$((cur * mr)) count="$mr" 2>/dev/null
        # Three rounds in four only do this: little else runs, so the pages of the cache
        # stay the back-end's alone between rounds.
        [ $((n % 4)) = 0 ] || continue
        eval "want=\$ref$cur"
        # In place (no truncate): the loop frees as few pages as it can, so the page cache
        # reads above mostly get pages nothing but the back-end wrote since they were freed.
        timeout "$T" dd if="$DEV" of=/tmp/rd bs=1M skip=$((cur * mr)) count="$mr" iflag=direct conv=notrunc 2>/dev/null
        if [ "$(md5 /tmp/rd)" != "$want" ]; then
            rbad=$((rbad + 1))
            r mig_read_mismatch_round "$n"
        fi
        slot=$(((n / 4) % 4))
        first=$(((mw * 4 + slot) * 512))
        awk -v seed="$SEED-$n" -v first="$first" \
            'BEGIN { for (i = 0; i < 512; i++) printf "%-511s\n", "E2E-" seed "-sector-" (first + i) }' |
            dd of=/tmp/pat bs=256K conv=notrunc 2>/dev/null
        timeout "$T" dd if=/tmp/pat of="$DEV" bs=256K seek=$((mw * 4 + slot)) oflag=direct conv=notrunc 2>/dev/null
        timeout "$T" dd if="$DEV" of=/tmp/rb bs=256K skip=$((mw * 4 + slot)) count=1 iflag=direct conv=notrunc 2>/dev/null
        if ! cmp -s /tmp/pat /tmp/rb; then
            wbad=$((wbad + 1))
            r mig_write_mismatch_round "$n"
        fi
        [ $((n % 10)) = 0 ] && echo "E2E-MIGRATE-ROUND n=$n uptime=$(cut -d' ' -f1 /proc/uptime)"
        timeout "$T" dd if="$DEV" of=/tmp/stop bs=512 skip="$stop" count=1 iflag=direct 2>/dev/null
        grep -q E2E-STOP /tmp/stop && break
        if [ $(($(cut -d. -f1 /proc/uptime) - start)) -ge "$max" ]; then
            r mig_timeout 1
            break
        fi
    done
    r mig_rounds "$n"
    r mig_read_mismatches "$rbad"
    r mig_write_mismatches "$wbad"
    r mig_cache_mismatches "$cbad"
    r mig_ram_copy0_md5 "$(md5 /tmp/ref0)"
    r mig_ram_copy1_md5 "$(md5 /tmp/ref1)"
}

for t in $(echo "$TESTS" | tr ',' ' '); do
    case $t in
        blk) test_blk ;;
        rng) test_rng ;;
        inflight) test_inflight ;;
        migrate) test_migrate ;;
        *) r unknown_test "$t" ;;
    esac
done
r uptime_end "$(cut -d' ' -f1 /proc/uptime)"
finish
