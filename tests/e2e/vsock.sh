#!/usr/bin/env bash
# QEMU end to end for vhost-user-vsock (run.sh's `vsock` case, or on its own): one TCG boot
# of the common guest, with the vsock transport modules, a static guest program
# (vsock-guest.c, built here with gcc -static) and its own /init (vsock-init.sh) packed
# over it, against our daemon; the host side is vsock-host.py on the daemon's Unix sockets.
#
# Checked: 16 MiB each way on a guest-initiated and on a host-initiated connection (CRC-32
# of each direction against the pattern both sides compute), then 20 concurrent connections
# each way with their echo checked.
#
# Environment (defaults): WORK_DIR (tests/e2e/work), RUN_DIR ($WORK_DIR/run), QEMU, ACCEL
# (tcg), CPU (max), MEM (256M), BOOT_TIMEOUT (240), STEP_TIMEOUT (120), VSOCK_BYTES
# (16777216), VSOCK_CONC (20), VSOCK_CONC_BYTES (262144), VSOCK_DAEMON (our release
# binary, built when unset), KERNEL_APPEND.
set -uo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=env.sh
. "$E2E_DIR/env.sh"
defaults BOOT_TIMEOUT=240 STEP_TIMEOUT=120 VSOCK_BYTES=16777216 VSOCK_CONC=20 \
    VSOCK_CONC_BYTES=262144
export RUST_LOG=${RUST_LOG:-info}

log() { echo "[e2e-vsock $(date +%H:%M:%S)] $*"; }
die() { echo "vsock.sh: $*" >&2; exit 1; }
# wait_sockets PID TRIES EXITED LATE SOCKET...: every SOCKET exists within TRIES tries of
# 0.05 s; dies with EXITED when PID ends first, with LATE when the tries run out.
wait_sockets() {
    local pid=$1 tries=$2 exited=$3 late=$4 i=0 s
    shift 4
    for s in "$@"; do
        while [ ! -S "$s" ]; do
            kill -0 "$pid" 2>/dev/null || die "$exited"
            [ $i -lt "$tries" ] || die "$late"
            sleep 0.05
            i=$((i + 1))
        done
    done
}
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
    return 0
}
trap cleanup EXIT

# --- guest: the common one with the vsock modules, plus the overlay -------------------
GW=$WORK_DIR/vsock
mkdir -p "$GW" "$WORK_DIR/downloads"
# Share the kernel download with the common guest.
[ -e "$GW/downloads" ] || ln -s ../downloads "$GW/downloads"
WORK_DIR=$GW GUEST_MODULES="virtio_pci vmw_vsock_virtio_transport" "$E2E_DIR/build-guest.sh" ||
    die "guest build failed"
command -v gcc >/dev/null || die "gcc needed (apt-get install gcc libc6-dev)"
gcc -static -O2 -Wall -o "$GW/vsock-e2e" "$E2E_DIR/vsock-guest.c" || die "building vsock-e2e failed"
OVERLAY=$(mktemp -d "$GW/overlay.XXXXXX")
mkdir -p "$OVERLAY/bin"
install -m 0755 "$E2E_DIR/vsock-init.sh" "$OVERLAY/init"
install -m 0755 "$GW/vsock-e2e" "$OVERLAY/bin/vsock-e2e"
# A second archive after the first: the kernel unpacks both, later files win (/init).
(cd "$OVERLAY" && find . -mindepth 1 | LC_ALL=C sort | busybox cpio -o -H newc 2>/dev/null) |
    gzip -9n >"$GW/overlay.cpio.gz"
rm -rf "$OVERLAY"
cat "$GW/guest/initramfs.cpio.gz" "$GW/overlay.cpio.gz" >"$GW/initrd.gz"

# --- daemon --------------------------------------------------------------------------
if [ -z "${VSOCK_DAEMON:-}" ]; then
    log "cargo build --release -p vhost-device-vsock"
    (cd "$REPO_ROOT" && cargo build --release -q -p vhost-device-vsock) || die "cargo build failed"
    VSOCK_DAEMON=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/vhost-user-vsock
fi
SOCK=$RUN_DIR/vsock.sock
UDS=$RUN_DIR/vm.vsock
rm -f "$SOCK" "$UDS" "$UDS"_*
DLOG=$RUN_DIR/vsock.daemon.log
read -ra dcmd <<<"$VSOCK_DAEMON"
"${dcmd[@]}" --socket-path "$SOCK" --guest-cid 3 --uds-path "$UDS" </dev/null >"$DLOG" 2>&1 &
DAEMON_PID=$!
PIDS+=("$DAEMON_PID")
wait_sockets "$DAEMON_PID" 400 "daemon exited (see $DLOG)" "daemon did not listen within 20 s" \
    "$SOCK" "$UDS"

# --- host side -----------------------------------------------------------------------
HOST_RESULTS=$RUN_DIR/vsock.host.txt
rm -f "$HOST_RESULTS"
python3 "$E2E_DIR/vsock-host.py" "$UDS" "$VSOCK_BYTES" "$VSOCK_CONC" "$VSOCK_CONC_BYTES" \
    "$HOST_RESULTS" "$BOOT_TIMEOUT" 2>"$RUN_DIR/vsock.host.log" &
HOST_PID=$!
PIDS+=("$HOST_PID")
wait_sockets "$HOST_PID" 200 "host side exited (see $RUN_DIR/vsock.host.log)" \
    "host side did not start (see $RUN_DIR/vsock.host.log)" "${UDS}_5001"

# --- boot ----------------------------------------------------------------------------
SERIAL=$RUN_DIR/vsock.serial.log
qemu_cmd "$GW/guest/vmlinuz" "$GW/initrd.gz" \
    "e2e.step_timeout=$STEP_TIMEOUT e2e.guest_timeout=$((BOOT_TIMEOUT - 10)) e2e.vsock_bytes=$VSOCK_BYTES e2e.vsock_conc=$VSOCK_CONC e2e.vsock_conc_bytes=$VSOCK_CONC_BYTES"
cmd=("${QEMU_CMD[@]}"
    -chardev "socket,id=vu0,path=$SOCK" -device vhost-user-vsock-pci,chardev=vu0)
printf '%q ' "${cmd[@]}" >"$RUN_DIR/vsock.qemu-cmd"
log "booting (serial: $SERIAL)"
t0=$(date +%s.%N)
"${cmd[@]}" </dev/null >"$SERIAL" 2>&1
QEMU_RC=$?
BOOT_TIME=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
log "QEMU exit $QEMU_RC after ${BOOT_TIME}s"
# The host side ends once its connections are done (or at its own deadline); stopped
# earlier, it has written every result it got (vsock-host.py writes them as they come).
i=0
while kill -0 "$HOST_PID" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
kill "$HOST_PID" 2>/dev/null
wait "$HOST_PID" 2>/dev/null

# --- checks --------------------------------------------------------------------------
FAILS=0
get() { grep -a -o "E2E-RESULT $1=.*" "$SERIAL" 2>/dev/null | tail -n1 | cut -d= -f2- | tr -d '\r'; }
host() { sed -n "s/^$1=//p" "$HOST_RESULTS" 2>/dev/null | tail -n1; }
check_eq() { # description actual expected
    if [ -n "$2" ] && [ "$2" = "$3" ]; then
        printf '    ok    %s\n' "$1"
    else
        printf '    FAIL  %s  (got %s, want %s)\n' "$1" "'$2'" "'$3'"
        FAILS=$((FAILS + 1))
    fi
}
check_eq "QEMU exit status" "$QEMU_RC" 0
check_eq "guest printed E2E-DONE" "$(grep -ac 'E2E-DONE' "$SERIAL")" 1
check_eq "no guest watchdog" "$(get guest_watchdog)x" x
qmsg=$(tr -d '\r' <"$SERIAL" | grep -a -E 'qemu-system-[A-Za-z0-9_]+: ' | grep -av ': info: ' | head -n1)
check_eq "no error lines from QEMU" "${qmsg}x" x
check_eq "virtio-vsock device probed" "$(get vsock_device | grep -c features)" 1
want_g2h=$(host expect_g2h_crc)
want_g2h_reply=$(host expect_g2h_reply_crc)
want_h2g=$(host expect_h2g_crc)
want_h2g_reply=$(host expect_h2g_reply_crc)
check_eq "guest->host: step status" "$(get g2h_status)" 0
check_eq "guest->host: guest's pattern CRC == host-computed" "$(get vsock_g2h_sent_crc)" "$want_g2h"
check_eq "guest->host: host got $VSOCK_BYTES bytes" "$(host g2h_recv_bytes)" "$VSOCK_BYTES"
check_eq "guest->host: host CRC of what it got" "$(host g2h_recv_crc)" "$want_g2h"
check_eq "guest->host: guest got $VSOCK_BYTES reply bytes" "$(get vsock_g2h_reply_bytes)" "$VSOCK_BYTES"
check_eq "guest->host: guest CRC of the reply" "$(get vsock_g2h_reply_crc)" "$want_g2h_reply"
check_eq "host->guest: step status" "$(get h2g_status)" 0
check_eq "host->guest: guest got $VSOCK_BYTES bytes" "$(get vsock_h2g_recv_bytes)" "$VSOCK_BYTES"
check_eq "host->guest: guest CRC of what it got" "$(get vsock_h2g_recv_crc)" "$want_h2g"
check_eq "host->guest: guest's reply pattern CRC" "$(get vsock_h2g_sent_crc)" "$want_h2g_reply"
check_eq "host->guest: host got $VSOCK_BYTES reply bytes" "$(host h2g_reply_bytes)" "$VSOCK_BYTES"
check_eq "host->guest: host CRC of the reply" "$(host h2g_reply_crc)" "$want_h2g_reply"
check_eq "$VSOCK_CONC concurrent guest->host: echoes right (guest)" "$(get vsock_g2h_conc_ok)" "$VSOCK_CONC"
check_eq "$VSOCK_CONC concurrent guest->host: echoed (host)" "$(host g2h_conc_echoed)" "$VSOCK_CONC"
check_eq "$VSOCK_CONC concurrent host->guest: served (guest)" "$(get vsock_h2g_conc_served)" "$VSOCK_CONC"
check_eq "$VSOCK_CONC concurrent host->guest: echoes right (host)" "$(host h2g_conc_ok)" "$VSOCK_CONC"
alive=0
kill -0 "$DAEMON_PID" 2>/dev/null && alive=1
check_eq "daemon still running" "$alive" 1
printf '    info  guest uptime at each step end: g2h %s, h2g %s, g2h_conc %s, h2g_conc %s\n' \
    "$(get uptime_g2h)" "$(get uptime_h2g)" "$(get uptime_g2h_conc)" "$(get uptime_h2g_conc)"
grep -a -E '_error=' "$HOST_RESULTS" 2>/dev/null | sed 's/^/    host  /'
kill -TERM "$DAEMON_PID" 2>/dev/null
wait "$DAEMON_PID" 2>/dev/null
if [ "$FAILS" != 0 ]; then
    echo "    last lines of $SERIAL:"
    tail -n 15 "$SERIAL" | tr -d '\r' | sed 's/^/    | /'
    log "vsock: $FAILS checks failed"
    exit 1
fi
log "vsock: all checks passed in ${BOOT_TIME}s"
