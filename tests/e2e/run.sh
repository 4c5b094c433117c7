#!/usr/bin/env bash
# End-to-end test: QEMU (TCG) boots a small Linux guest against our vhost-user-blk and
# vhost-user-rng daemons; the guest exercises the devices and the host checks the results.
#
#   tests/e2e/run.sh [TEST...]        TEST: blk-multi blk-ro blk-direct blk-two rng reconnect
#                                     client inflight-kill vsock migrate packed
#                                     inflight-kill-packed
#                                     (default: all)
#
# See tests/e2e/README.md for every parameter. The most useful ones:
#   WORK_DIR=tests/e2e/work   downloads, guest, run logs (git-ignored)
#   BLK_DAEMON=CMD            blk back-end command; gets --socket-path P --blk-file I [--read-only]
#   RNG_DAEMON=CMD            rng back-end command; gets --socket-path P
#   RNG_SOCKET_SUFFIX=        appended to P for QEMU (a back-end listening on P0: 0)
#   E2E_BACKENDS=reference    preset: qemu-storage-daemon (via backends/) + vhost-device-rng
#   BOOT_TIMEOUT=120          per boot (s)
#   PROXY=1                   put vhost-proxy.py between QEMU and the blk daemon (not reconnect)
set -uo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=env.sh
. "$E2E_DIR/env.sh"
export WORK_DIR

defaults QEMU_EXTRA= BOOT_TIMEOUT=120 STEP_TIMEOUT=20 DAEMON_START_TIMEOUT=20 IMG_MIB=16 \
    READ_MIB=4 WRITE_OFF_MIB=8 WRITE_MIB=1 WRITE2_OFF_MIB=10 DISCARD_OFF_MIB=12 DISCARD_MIB=1 \
    MULTI_BOOTS=3 RECONNECT_WAIT=8 RECONNECT_DELAY=1.2 RNG_BYTES=64 PROXY=0 SKIP_INSTALL=0
export RUST_LOG=${RUST_LOG:-info}

case ${E2E_BACKENDS:-ours} in
    ours) ;;
    reference)
        : "${BLK_DAEMON:=$E2E_DIR/backends/qsd-vhost-user-blk}"
        if [ -z "${RNG_DAEMON:-}" ]; then
            RNG_DAEMON=$(command -v vhost-device-rng || echo /opt/peers/bin/vhost-device-rng)
            RNG_SOCKET_SUFFIX=${RNG_SOCKET_SUFFIX-0}
        fi
        ;;
    *) echo "run.sh: E2E_BACKENDS must be 'ours' or 'reference'" >&2; exit 2 ;;
esac
RNG_SOCKET_SUFFIX=${RNG_SOCKET_SUFFIX:-}

ALL_TESTS="blk-multi blk-ro blk-direct blk-two rng reconnect client inflight-kill vsock migrate packed inflight-kill-packed"
TESTS=${*:-${TESTS:-$ALL_TESTS}}
for t in $TESTS; do
    case " $ALL_TESTS " in *" $t "*) ;; *) echo "run.sh: unknown test $t (known: $ALL_TESTS)" >&2; exit 2 ;; esac
done
wants() { case " $TESTS " in *" $1 "*) return 0 ;; esac; return 1; }
wants_blk() { wants blk-multi || wants blk-ro || wants blk-direct || wants blk-two || wants reconnect || wants client || wants inflight-kill || wants migrate || wants packed || wants inflight-kill-packed; }

log() { echo "[e2e $(date +%H:%M:%S)] $*"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

# --- bookkeeping -------------------------------------------------------------------
SUMMARY=()      # "STATUS name time"
FAILED=0
PIDS=()         # everything we started, ended on exit

cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
    done
    return 0
}
trap cleanup EXIT
trap 'echo "run.sh: interrupted" >&2; exit 130' INT TERM

record() { # status name time note
    SUMMARY+=("$(printf '%-4s  %-12s %7ss  %s' "$1" "$2" "$3" "${4:-}")")
    [ "$1" = PASS ] || FAILED=$((FAILED + 1))
}

# --- 1. host dependencies ----------------------------------------------------------
install_missing() {
    local pkgs=()
    command -v "$QEMU" >/dev/null || pkgs+=(qemu-system-x86)
    # A static busybox is packed into the guest.
    if [ ! -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then pkgs+=(busybox-static); fi
    command -v xz >/dev/null || pkgs+=(xz-utils)
    command -v zstd >/dev/null || pkgs+=(zstd)
    command -v apt-get >/dev/null || { [ ${#pkgs[@]} = 0 ] && return 0; echo "need: ${pkgs[*]}" >&2; return 1; }
    case ${BLK_DAEMON:-} in *qsd-vhost-user-blk*)
        command -v qemu-storage-daemon >/dev/null || pkgs+=(qemu-system-common) ;;
    esac
    if { [ "$PROXY" = 1 ] || wants migrate; } && ! command -v python3 >/dev/null; then pkgs+=(python3); fi
    [ ${#pkgs[@]} = 0 ] && return 0
    log "installing ${pkgs[*]}"
    apt-get update -qq &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
}

# --- 2. daemons --------------------------------------------------------------------
build_daemons() {
    local pkgs=()
    if [ -z "${BLK_DAEMON:-}" ] && wants_blk; then pkgs+=(-p vhost-device-blk); fi
    if [ -z "${RNG_DAEMON:-}" ] && { wants rng || wants packed; }; then pkgs+=(-p vhost-device-rng); fi
    local target=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
    : "${BLK_DAEMON:=$target/release/vhost-user-blk}"
    : "${RNG_DAEMON:=$target/release/vhost-user-rng}"
    [ ${#pkgs[@]} = 0 ] && return 0
    log "cargo build --release ${pkgs[*]}"
    (cd "$REPO_ROOT" && cargo build --release "${pkgs[@]}")
}

# start_daemon blk SOCK IMG RO | start_daemon rng SOCK
# Sets DAEMON_PID and QEMU_SOCK (the path QEMU connects to). Logs to $RUN_DIR/$LOG_NAME.daemon.log.
start_daemon() {
    local kind=$1 sock=$2 cmd listen
    case $kind in
        blk)
            read -ra cmd <<<"$BLK_DAEMON"
            cmd+=(--socket-path "$sock" --blk-file "$3")
            [ "$4" = 1 ] && cmd+=(--read-only)
            listen=$sock ;;
        blk-direct)
            # O_DIRECT with the default engine for it (io_uring where it works, else the
            # I/O threads; the daemon's log says which), two queues.
            read -ra cmd <<<"$BLK_DAEMON"
            cmd+=(--socket-path "$sock" --blk-file "$3" --direct --num-queues 2)
            listen=$sock ;;
        blk-two)
            # One process, two exports: SOCK.a serves IMG ($3), SOCK.b serves IMG2 ($4).
            read -ra cmd <<<"$BLK_DAEMON"
            cmd+=(--export "socket=$sock.a,file=$3" --export "socket=$sock.b,file=$4")
            listen=$sock.b ;;
        blk-client)
            # Client mode: QEMU listens on $sock; the daemon connects (and reconnects).
            read -ra cmd <<<"$BLK_DAEMON"
            cmd+=(--socket-path "$sock" --client --blk-file "$3")
            listen= ;;
        rng)
            read -ra cmd <<<"$RNG_DAEMON"
            cmd+=(--socket-path "$sock")
            listen=$sock$RNG_SOCKET_SUFFIX ;;
    esac
    local dlog=$RUN_DIR/$LOG_NAME.daemon.log
    echo "### $(date +%T.%N) start: ${cmd[*]}" >>"$dlog"
    "${cmd[@]}" </dev/null >>"$dlog" 2>&1 &
    DAEMON_PID=$!
    PIDS+=("$DAEMON_PID")
    local t0 i=0
    t0=$(now)
    if [ -z "$listen" ]; then
        sleep 0.2
        kill -0 "$DAEMON_PID" 2>/dev/null || { echo "daemon exited (see $dlog)"; return 1; }
        return 0
    fi
    while [ ! -S "$listen" ]; do
        if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
            echo "daemon exited before listening on $listen (see $dlog):"
            tail -n 5 "$dlog" | sed 's/^/    | /'
            return 1
        fi
        if [ $i -ge $((DAEMON_START_TIMEOUT * 20)) ]; then
            echo "daemon did not listen on $listen within ${DAEMON_START_TIMEOUT}s"
            return 1
        fi
        sleep 0.05
        i=$((i + 1))
    done
    QEMU_SOCK=$listen
    echo "### $(date +%T.%N) listening after $(elapsed "$t0" "$(now)")s pid=$DAEMON_PID" >>"$dlog"
    if [ "$PROXY" = 1 ] && [ "$kind" = blk ]; then
        start_proxy "$listen" || return 1
    fi
}

stop_pid() { # pid: TERM, then KILL after 5 s
    local p=$1 i=0
    kill -0 "$p" 2>/dev/null || { wait "$p" 2>/dev/null; return 0; }
    kill -TERM "$p" 2>/dev/null
    while kill -0 "$p" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null
    wait "$p" 2>/dev/null
    return 0
}

PROXY_PID=
PROXY_LOG=
start_proxy() { # backend socket -> sets QEMU_SOCK to the proxy's socket
    local psock=$1.proxy plog=$RUN_DIR/$LOG_NAME.proxy-all.log i=0
    PROXY_LOG=$plog
    rm -f "$psock"
    python3 "$E2E_DIR/vhost-proxy.py" --listen "$psock" --connect "$1" --log "$plog" \
        2>>"$RUN_DIR/$LOG_NAME.proxy.log" &
    PROXY_PID=$!
    PIDS+=("$PROXY_PID")
    while [ ! -S "$psock" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
    [ -S "$psock" ] || { echo "proxy did not start"; return 1; }
    QEMU_SOCK=$psock
}

# --- 3. QEMU -----------------------------------------------------------------------
# launch_qemu DEVICE SOCK RECONNECT APPEND...: starts QEMU in the background, serial
# console and QEMU's own messages to $SERIAL. Sets QEMU_PID, QEMU_T0.
launch_qemu() {
    local device=$1 sock=$2 reconnect=$3
    shift 3
    local chardev="socket,id=vu0,path=$sock"
    [ "$reconnect" = 1 ] && chardev+=",reconnect=1"
    # QEMU listens and waits for the back-end to connect (the back-end's client mode).
    [ "$reconnect" = server ] && chardev+=",server=on"
    local extra=()
    [ -n "$QEMU_EXTRA" ] && read -ra extra <<<"$QEMU_EXTRA"
    qemu_cmd "$WORK_DIR/guest/vmlinuz" "$WORK_DIR/guest/initramfs.cpio.gz" \
        "e2e.step_timeout=$STEP_TIMEOUT e2e.guest_timeout=$((BOOT_TIMEOUT - 10)) $*"
    local cmd=("${QEMU_CMD[@]}" -chardev "$chardev" -device "$device,chardev=vu0" "${extra[@]}")
    printf '%q ' "${cmd[@]}" >"$RUN_DIR/$LOG_NAME.qemu-cmd"
    echo >>"$RUN_DIR/$LOG_NAME.qemu-cmd"
    SERIAL=$RUN_DIR/$LOG_NAME.serial.log
    : >"$SERIAL"
    QEMU_T0=$(now)
    "${cmd[@]}" </dev/null >"$SERIAL" 2>&1 &
    QEMU_PID=$!
    PIDS+=("$QEMU_PID")
}

wait_qemu() { # sets QEMU_RC, BOOT_TIME
    wait "$QEMU_PID"
    QEMU_RC=$?
    BOOT_TIME=$(elapsed "$QEMU_T0" "$(now)")
}

# --- 4. checks ---------------------------------------------------------------------
CHECK_FAILS=0
CHECK_NOTES=
begin_checks() { CHECK_FAILS=0; CHECK_NOTES=; }

# get KEY: last value the guest printed for KEY
get() {
    grep -a -o "E2E-RESULT $1=.*" "$SERIAL" 2>/dev/null | tail -n1 | cut -d= -f2- | tr -d '\r'
}

ok() { # description condition-status(0=ok) detail
    if [ "$2" = 0 ]; then
        printf '    ok    %s\n' "$1"
    else
        printf '    FAIL  %s  (%s)\n' "$1" "$3"
        CHECK_FAILS=$((CHECK_FAILS + 1))
        [ -n "$CHECK_NOTES" ] || CHECK_NOTES=$1
    fi
}
ok_alive() { # description pid: ok while the process runs
    local alive=1
    kill -0 "$2" 2>/dev/null && alive=0
    ok "$1" $alive "pid $2 gone"
}
wait_serial_mark() { # marker: until $SERIAL shows it, QEMU exits or BOOT_TIMEOUT passes
    local deadline
    deadline=$(($(date +%s) + BOOT_TIMEOUT))
    while ! grep -aq "$1" "$SERIAL"; do
        if ! kill -0 "$QEMU_PID" 2>/dev/null || [ "$(date +%s)" -ge "$deadline" ]; then break; fi
        sleep 0.1
    done
}
check_eq() { # description actual expected
    local s=1
    [ -n "$2" ] && [ "$2" = "$3" ] && s=0
    ok "$1" $s "got '${2}', want '${3}'"
}
check_ne() { # description actual unwanted
    local s=1
    [ -n "$2" ] && [ "$2" != "$3" ] && s=0
    ok "$1" $s "got '${2}'"
}
info() { printf '    info  %s\n' "$*"; }

check_boot_basics() {
    if [ "$QEMU_RC" = 124 ] || [ "$QEMU_RC" = 137 ]; then
        ok "QEMU exit status" 1 "killed by the ${BOOT_TIMEOUT}s boot timeout"
    else
        check_eq "QEMU exit status" "$QEMU_RC" 0
    fi
    local fin=1
    grep -aq 'E2E-DONE' "$SERIAL" && fin=0
    ok "guest printed E2E-DONE" $fin "see $SERIAL"
    local wd
    wd=$(get guest_watchdog)
    [ -z "$wd" ] || ok "guest watchdog" 1 "fired"
    check_qemu_messages "${1:-}"
}

# QEMU's own messages (its stderr shares $SERIAL with the console): a line with
# `qemu-system-...: ` (at its start, or after console output QEMU interrupted) is an error
# or warning QEMU printed (its `info:` notes, such as "waiting for connection" with
# server=on, excepted), and fails the boot. With LINES,
# only the first LINES lines of the log count (the reconnect test kills the daemon on
# purpose; what QEMU says after that is shown, not judged).
check_qemu_messages() { # [lines]
    local msgs later=
    if [ -n "$1" ]; then
        msgs=$(head -n "$1" "$SERIAL" | tr -d '\r' | grep -a -E 'qemu-system-[A-Za-z0-9_]+: ' |
            grep -av ': info: ')
        later=$(tail -n +"$(($1 + 1))" "$SERIAL" | tr -d '\r' | grep -a -E 'qemu-system-[A-Za-z0-9_]+: ')
    else
        msgs=$(tr -d '\r' <"$SERIAL" | grep -a -E 'qemu-system-[A-Za-z0-9_]+: ' | grep -av ': info: ')
    fi
    if [ -z "$msgs" ]; then
        ok "no error lines from QEMU" 0
    else
        ok "no error lines from QEMU" 1 "$(printf '%s' "$msgs" | head -n1)"
        printf '%s\n' "$msgs" | sed 's/^/    | /'
    fi
    if [ -n "$later" ]; then
        info "QEMU after the daemon was killed:"
        printf '%s\n' "$later" | sed 's/^/    | /'
    fi
}

# host-side helpers
range_md5() { # img off_mib mib
    dd if="$1" bs=1M skip="$2" count="$3" status=none | md5sum | cut -d' ' -f1
}
pattern_md5() { # seed off_mib mib: the guest's pattern, computed on the host
    awk -v seed="$1" -v first="$(($2 * 2048))" -v n="$(($3 * 2048))" \
        'BEGIN { for (i = 0; i < n; i++) printf "%-511s\n", "E2E-" seed "-sector-" (first + i) }' |
        md5sum | cut -d' ' -f1
}
new_seed() { printf '%04x%04x%04x' $RANDOM $RANDOM $RANDOM; }

make_image() { # path
    rm -f "$1"
    truncate -s "${IMG_MIB}M" "$1"
    dd if=/dev/urandom of="$1" bs=1M count="$IMG_MIB" conv=notrunc status=none
}

blk_params() { # seed
    echo "e2e.tests=blk e2e.seed=$1 e2e.blk_read_mib=$READ_MIB e2e.blk_write_off_mib=$WRITE_OFF_MIB" \
        "e2e.blk_write_mib=$WRITE_MIB e2e.blk_discard_off_mib=$DISCARD_OFF_MIB e2e.blk_discard_mib=$DISCARD_MIB" \
        "e2e.blk_write2_off_mib=$WRITE2_OFF_MIB"
}

# The blk read/write/flush/discard checks of one boot.
check_blk_rw() { # img seed host_read_md5 [prefix]
    local img=$1 seed=$2 hmd5=$3 pat
    pat=$(pattern_md5 "$seed" "$WRITE_OFF_MIB" "$WRITE_MIB")
    check_eq "device present" "$(get blk_present)" 1
    check_eq "size in bytes" "$(get blk_size_bytes)" $((IMG_MIB * 1048576))
    check_eq "read status" "$(get blk_read_status)" 0
    check_eq "guest md5 of first ${READ_MIB} MiB == host md5" "$(get blk_read_md5)" "$hmd5"
    check_eq "guest pattern == host-computed pattern" "$(get blk_pattern_md5)" "$pat"
    check_eq "write status" "$(get blk_write_status)" 0
    check_eq "read-back == pattern" "$(get blk_readback_md5)" "$pat"
    check_eq "host image holds the pattern @${WRITE_OFF_MIB} MiB" "$(range_md5 "$img" "$WRITE_OFF_MIB" "$WRITE_MIB")" "$pat"
    check_eq "sync status" "$(get blk_sync_status)" 0
    check_eq "fsync(device) status" "$(get blk_fsync_status)" 0
    check_eq "blockdev --flushbufs status" "$(get blk_flushbufs_status)" 0
    info "write cache: $(get blk_write_cache), discard_max_bytes: $(get blk_discard_max_bytes)"
    if [ "$DISCARD_MIB" -gt 0 ]; then
        check_eq "discard status" "$(get blk_discard_status)" 0
        local z hz=0
        z=$(get blk_discard_zeroes)
        cmp -s <(dd if="$img" bs=1M skip="$DISCARD_OFF_MIB" count="$DISCARD_MIB" status=none) \
            <(head -c $((DISCARD_MIB * 1048576)) /dev/zero) && hz=1
        info "discarded range reads as zeros: guest=$z host=$hz (not required by virtio-blk)"
    fi
}

# --- 5. the boots --------------------------------------------------------------------
boot_fail() { # name reason
    echo "    FAIL  $2"
    record FAIL "$1" "${BOOT_TIME:--}" "$2"
}

finish_boot() { # name
    if [ "$CHECK_FAILS" = 0 ]; then
        record PASS "$1" "$BOOT_TIME"
    else
        record FAIL "$1" "$BOOT_TIME" "$CHECK_FAILS failed: $CHECK_NOTES"
        echo "    last lines of $SERIAL:"
        tail -n 15 "$SERIAL" | tr -d '\r' | sed 's/^/    | /'
    fi
}

proxy_checks() {
    [ "$PROXY" = 1 ] && [ -n "$PROXY_LOG" ] || return 0
    # The messages of this boot: the proxy's last connection.
    local seg=$RUN_DIR/$LOG_NAME.messages.log n
    awk '/ --- connection /{ buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' "$PROXY_LOG" >"$seg"
    n=$(grep -c -- '--- connection' "$PROXY_LOG")
    info "proxy: connection $n, $(grep -c '[FB]>[FB] [A-Z]' "$seg") messages ($seg)"
    local what pat s
    for what in "GET_FEATURES reply" "SET_FEATURES" "GET_CONFIG reply" "SET_MEM_TABLE|ADD_MEM_REG" \
        "SET_VRING_KICK" "SET_VRING_ENABLE .*num=1" "SET_VRING_ENABLE .*num=0" "GET_VRING_BASE reply"; do
        s=1
        grep -Eq "F>B|B>F" "$seg" && grep -Eq " ($what)" "$seg" && s=0
        ok "proxy saw $what" $s "see $seg"
    done
}

stop_proxy() {
    [ -n "$PROXY_PID" ] || return 0
    stop_pid "$PROXY_PID"
    PROXY_PID=
}

test_blk_multi() {
    local img=$RUN_DIR/blk.img sock=$RUN_DIR/blk.sock pid k name seed hmd5
    LOG_NAME=blk-multi
    make_image "$img"
    log "blk-multi: starting the blk daemon"
    if ! start_daemon blk "$sock" "$img" 0; then
        BOOT_TIME=-
        boot_fail blk-rw-1 "daemon did not start"
        return
    fi
    pid=$DAEMON_PID
    for k in $(seq 1 "$MULTI_BOOTS"); do
        name=blk-rw-$k
        LOG_NAME=$name
        begin_checks
        if ! kill -0 "$pid" 2>/dev/null; then
            BOOT_TIME=-
            boot_fail "$name" "daemon (pid $pid) died before this boot"
            continue
        fi
        seed=$(new_seed)
        hmd5=$(range_md5 "$img" 0 "$READ_MIB")
        log "$name: boot (seed $seed) against daemon pid $pid"
        launch_qemu vhost-user-blk-pci "$QEMU_SOCK" 0 "$(blk_params "$seed")"
        wait_qemu
        log "$name: QEMU exit $QEMU_RC after ${BOOT_TIME}s"
        check_boot_basics
        check_blk_rw "$img" "$seed" "$hmd5"
        ok_alive "same daemon process still running after the boot" "$pid"
        proxy_checks
        finish_boot "$name"
    done
    stop_proxy
    stop_pid "$pid"
}

# One boot against `--direct --num-queues 2` (our daemon only: the flags are ours).
test_blk_direct() {
    local img=$RUN_DIR/blk-direct.img sock=$RUN_DIR/blk-direct.sock pid seed hmd5
    LOG_NAME=blk-direct
    BOOT_TIME=-
    begin_checks
    if [ "${E2E_BACKENDS:-ours}" != ours ]; then
        log "blk-direct: skipped with E2E_BACKENDS=$E2E_BACKENDS"
        return
    fi
    make_image "$img"
    if ! start_daemon blk-direct "$sock" "$img" 0; then
        boot_fail blk-direct "daemon did not start"
        return
    fi
    pid=$DAEMON_PID
    seed=$(new_seed)
    hmd5=$(range_md5 "$img" 0 "$READ_MIB")
    launch_qemu vhost-user-blk-pci,num-queues=2 "$QEMU_SOCK" 0 "$(blk_params "$seed")"
    wait_qemu
    log "blk-direct: QEMU exit $QEMU_RC after ${BOOT_TIME}s"
    check_boot_basics
    check_blk_rw "$img" "$seed" "$hmd5"
    info "engine: $(grep -ho 'requests run on [^)]*' "$RUN_DIR/$LOG_NAME.daemon.log" | tail -n 1)"
    finish_boot blk-direct
    stop_pid "$pid"
}

# Two guests booted at the same time against one daemon with two exports (our daemon
# only: --export is ours), each checking its own disk.
test_blk_two() {
    local sock=$RUN_DIR/blk-two.sock pid g imgs=() seeds=() hmd5s=() serials=() qpids=() t0s=()
    LOG_NAME=blk-two
    BOOT_TIME=-
    begin_checks
    if [ "${E2E_BACKENDS:-ours}" != ours ]; then
        log "blk-two: skipped with E2E_BACKENDS=$E2E_BACKENDS"
        return
    fi
    for g in a b; do
        make_image "$RUN_DIR/blk-two-$g.img"
        imgs+=("$RUN_DIR/blk-two-$g.img")
    done
    if ! start_daemon blk-two "$sock" "${imgs[0]}" "${imgs[1]}"; then
        boot_fail blk-two-a "daemon did not start"
        return
    fi
    pid=$DAEMON_PID
    for g in 0 1; do
        seeds+=("$(new_seed)")
        hmd5s+=("$(range_md5 "${imgs[$g]}" 0 "$READ_MIB")")
        LOG_NAME=blk-two-$([ $g = 0 ] && echo a || echo b)
        launch_qemu vhost-user-blk-pci "$sock.$([ $g = 0 ] && echo a || echo b)" 0 \
            "$(blk_params "${seeds[$g]}")"
        serials+=("$SERIAL")
        qpids+=("$QEMU_PID")
        t0s+=("$QEMU_T0")
    done
    log "blk-two: two guests booting against one daemon"
    for g in 0 1; do
        LOG_NAME=blk-two-$([ $g = 0 ] && echo a || echo b)
        QEMU_PID=${qpids[$g]}
        QEMU_T0=${t0s[$g]}
        SERIAL=${serials[$g]}
        begin_checks
        wait_qemu
        log "$LOG_NAME: QEMU exit $QEMU_RC after ${BOOT_TIME}s"
        check_boot_basics
        check_blk_rw "${imgs[$g]}" "${seeds[$g]}" "${hmd5s[$g]}"
        ok_alive "the daemon serves on" "$pid"
        finish_boot "$LOG_NAME"
    done
    stop_pid "$pid"
}

test_blk_ro() {
    local img=$RUN_DIR/blk-ro.img sock=$RUN_DIR/blk-ro.sock before hmd5
    LOG_NAME=blk-ro
    BOOT_TIME=-
    begin_checks
    make_image "$img"
    before=$(md5sum <"$img" | cut -d' ' -f1)
    hmd5=$(range_md5 "$img" 0 "$READ_MIB")
    log "blk-ro: starting the blk daemon read-only"
    if ! start_daemon blk "$sock" "$img" 1; then
        boot_fail blk-ro "daemon did not start"
        return
    fi
    launch_qemu vhost-user-blk-pci "$QEMU_SOCK" 0 "$(blk_params "$(new_seed)") e2e.blk_ro=1"
    wait_qemu
    log "blk-ro: QEMU exit $QEMU_RC after ${BOOT_TIME}s"
    check_boot_basics
    check_eq "device present" "$(get blk_present)" 1
    check_eq "size in bytes" "$(get blk_size_bytes)" $((IMG_MIB * 1048576))
    check_eq "guest sees a read-only disk" "$(get blk_ro)" 1
    check_ne "guest write fails" "$(get blk_ro_write_status)" 0
    info "write error: $(get blk_ro_write_error)"
    check_eq "read before the write attempt == host" "$(get blk_read_md5)" "$hmd5"
    check_eq "read after the write attempt == host" "$(get blk_read2_md5)" "$hmd5"
    check_eq "host image unchanged" "$(md5sum <"$img" | cut -d' ' -f1)" "$before"
    proxy_checks
    finish_boot blk-ro
    stop_proxy
    stop_pid "$DAEMON_PID"
}

test_rng() {
    local sock=$RUN_DIR/rng.sock
    LOG_NAME=rng
    BOOT_TIME=-
    begin_checks
    log "rng: starting the rng daemon"
    if ! start_daemon rng "$sock"; then
        boot_fail rng "daemon did not start"
        return
    fi
    launch_qemu vhost-user-rng-pci "$QEMU_SOCK" 0 "e2e.tests=rng e2e.rng_bytes=$RNG_BYTES"
    wait_qemu
    log "rng: QEMU exit $QEMU_RC after ${BOOT_TIME}s"
    check_boot_basics
    local cur
    cur=$(get rng_current)
    ok "rng_current names virtio_rng" "$(case $cur in virtio_rng*) echo 0 ;; *) echo 1 ;; esac)" "got '$cur'"
    check_eq "/dev/hwrng read status" "$(get rng_status)" 0
    check_eq "bytes read from /dev/hwrng" "$(get rng_bytes)" "$RNG_BYTES"
    check_ne "two reads differ" "$(get rng_second_md5)" "$(get rng_md5)"
    finish_boot rng
    stop_pid "$DAEMON_PID"
}

# The daemon is SIGKILLed after the guest's phase 1 and started again; the guest's phase 2
# must find its data. NAME reconnect: the daemon listens, QEMU connects with reconnect=1.
# NAME client: QEMU listens (server=on), the daemon connects in client mode.
test_reconnect() { run_restart reconnect; }
test_client() { run_restart client; }

run_restart() {
    local name=$1
    local img=$RUN_DIR/$name.img sock=$RUN_DIR/$name.sock seed hmd5 pid1 pid2 kind=blk
    local t_mark t_kill t_up i phase2_early=1 before_kill=
    local PROXY=0 # the proxy does not follow a daemon restart
    LOG_NAME=$name
    BOOT_TIME=-
    begin_checks
    make_image "$img"
    hmd5=$(range_md5 "$img" 0 "$READ_MIB")
    seed=$(new_seed)
    local params
    params="$(blk_params "$seed") e2e.reconnect_wait=$RECONNECT_WAIT"
    if [ "$name" = client ]; then
        kind=blk-client
        rm -f "$sock"
        launch_qemu vhost-user-blk-pci "$sock" server "$params"
        log "$name: QEMU listens on $sock; starting the blk daemon in client mode"
        if ! start_daemon "$kind" "$sock" "$img" 0; then
            boot_fail "$name" "daemon did not start"
            return
        fi
    else
        log "$name: starting the blk daemon"
        if ! start_daemon "$kind" "$sock" "$img" 0; then
            boot_fail "$name" "daemon did not start"
            return
        fi
        launch_qemu vhost-user-blk-pci "$QEMU_SOCK" 1 "$params"
    fi
    pid1=$DAEMON_PID
    # Wait for the guest to finish phase 1.
    wait_serial_mark E2E-PHASE1-DONE
    if grep -aq 'E2E-PHASE1-DONE' "$SERIAL"; then
        t_mark=$(now)
        before_kill=$(wc -l <"$SERIAL")
        kill -KILL "$pid1" 2>/dev/null
        wait "$pid1" 2>/dev/null
        t_kill=$(now)
        sleep "$RECONNECT_DELAY"
        # A killed daemon leaves its socket file behind; a service manager would remove it.
        # (In client mode the socket is QEMU's.)
        [ "$kind" = blk ] && rm -f "$sock"
        if start_daemon "$kind" "$sock" "$img" 0; then
            pid2=$DAEMON_PID
            t_up=$(now)
            grep -aq 'E2E-PHASE2-START' "$SERIAL" || phase2_early=0
            log "$name: daemon $pid1 killed $(elapsed "$QEMU_T0" "$t_kill")s into the boot" \
                "($(elapsed "$t_mark" "$t_kill")s after the marker), pid $pid2 listening" \
                "$(elapsed "$t_kill" "$t_up")s later"
        else
            ok "daemon restarted" 1 "did not listen again"
        fi
    fi
    wait_qemu
    log "$name: QEMU exit $QEMU_RC after ${BOOT_TIME}s"
    check_boot_basics "$before_kill"
    local marked=1
    grep -aq 'E2E-PHASE1-DONE' "$SERIAL" && marked=0
    ok "guest reached E2E-PHASE1-DONE" $marked "no marker"
    if [ $marked = 0 ]; then
        ok "daemon back before the guest's phase 2" $phase2_early "restart too late; raise RECONNECT_WAIT"
    fi
    local pat1 pat2
    pat1=$(pattern_md5 "$seed" "$WRITE_OFF_MIB" "$WRITE_MIB")
    pat2=$(pattern_md5 "$seed-2" "$WRITE2_OFF_MIB" "$WRITE_MIB")
    check_eq "phase 1: read == host" "$(get blk_read_md5)" "$hmd5"
    check_eq "phase 1: read-back == pattern" "$(get blk_readback_md5)" "$pat1"
    check_eq "phase 2: read == host" "$(get p2_blk_read_md5)" "$hmd5"
    check_eq "phase 2: write status" "$(get p2_blk_write_status)" 0
    check_eq "phase 2: read-back == new pattern" "$(get p2_blk_readback_md5)" "$pat2"
    check_eq "phase 2: phase-1 pattern still there" "$(get p2_blk_phase1_md5)" "$pat1"
    check_eq "phase 2: fsync status" "$(get p2_blk_fsync_status)" 0
    check_eq "host image holds pattern 1" "$(range_md5 "$img" "$WRITE_OFF_MIB" "$WRITE_MIB")" "$pat1"
    check_eq "host image holds pattern 2" "$(range_md5 "$img" "$WRITE2_OFF_MIB" "$WRITE_MIB")" "$pat2"
    if [ -n "${pid2:-}" ]; then
        ok_alive "restarted daemon still running" "$pid2"
        stop_pid "$pid2"
    fi
    finish_boot "$name"
    stop_proxy
    return 0
}

# vsock: its own script (guest overlay, daemon, host side), one boot.
test_vsock() {
    local t0
    t0=$(now)
    log "vsock: tests/e2e/vsock.sh"
    if RUN_DIR=$RUN_DIR "$E2E_DIR/vsock.sh"; then
        record PASS vsock "$(elapsed "$t0" "$(now)")"
    else
        record FAIL vsock "$(elapsed "$t0" "$(now)")" "see tests/e2e/vsock.sh output above"
    fi
}

# Live migration, three times between two daemons on one image: migrate.sh (our daemon only).
test_migrate() {
    local t
    t=$(now)
    [ "${E2E_BACKENDS:-ours}" = ours ] || { log "migrate: skipped with E2E_BACKENDS=$E2E_BACKENDS"; return; }
    log "migrate: $E2E_DIR/migrate.sh"
    if SKIP_GUEST_BUILD=1 BLK_DAEMON=$BLK_DAEMON WORK_DIR=$WORK_DIR RUN_DIR=$RUN_DIR "$E2E_DIR/migrate.sh"; then
        record PASS migrate "$(elapsed "$t" "$(now)")"
    else
        record FAIL migrate "$(elapsed "$t" "$(now)")" "see the migrate checks above"
    fi
}

# --- main ------------------------------------------------------------------------------
T_START=$(now)
rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR"

if [ "$SKIP_INSTALL" != 1 ]; then
    install_missing || { record FAIL install - "apt-get failed"; }
fi

t=$(now)
if "$E2E_DIR/build-guest.sh"; then
    log "guest ready in $(elapsed "$t" "$(now)")s"
else
    record FAIL build-guest "$(elapsed "$t" "$(now)")" "see output above"
fi

t=$(now)
if build_daemons; then
    log "daemons: blk='$BLK_DAEMON' rng='$RNG_DAEMON'${RNG_SOCKET_SUFFIX:+ (QEMU socket suffix '$RNG_SOCKET_SUFFIX')}"
else
    record FAIL cargo-build "$(elapsed "$t" "$(now)")" "cargo build failed"
fi

if [ "$FAILED" = 0 ]; then
    wants blk-multi && test_blk_multi
    wants blk-ro && test_blk_ro
    wants blk-direct && test_blk_direct
    wants blk-two && test_blk_two
    wants rng && test_rng
    wants reconnect && test_reconnect
    wants client && test_client
    # shellcheck source=tests/e2e/inflight-kill.sh
    wants inflight-kill && . "$E2E_DIR/inflight-kill.sh" && test_inflight_kill
    wants vsock && test_vsock
    wants migrate && test_migrate
    # shellcheck source=tests/e2e/packed.sh
    wants packed && . "$E2E_DIR/packed.sh" && test_packed
    # shellcheck source=tests/e2e/inflight-kill-packed.sh
    wants inflight-kill-packed && . "$E2E_DIR/inflight-kill-packed.sh" && test_inflight_kill_packed
fi

echo
echo "== e2e summary (logs: $RUN_DIR) =="
printf '%s\n' "${SUMMARY[@]}" | tee "$RUN_DIR/summary.txt"
echo "total $(elapsed "$T_START" "$(now)")s, $FAILED failed"
[ "${KEEP_IMAGES:-0}" = 1 ] || rm -f "$RUN_DIR"/*.img
[ "$FAILED" = 0 ]
