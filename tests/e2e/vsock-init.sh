#!/bin/sh
# /init of the vsock end-to-end guest (busybox ash, PID 1), packed over the common guest
# by tests/e2e/vsock.sh. Loads the modules (the common list plus the vsock transport), then
# runs vsock-e2e's steps against the host (tests/e2e/vsock-host.py):
#   e2e.vsock_bytes=N      bytes each way of the single connections (default 16 MiB)
#   e2e.vsock_conc=N       concurrent connections each way (default 20)
#   e2e.vsock_conc_bytes=N bytes each way per concurrent connection (default 256 KiB)
#   e2e.step_timeout=S     timeout of each step; e2e.guest_timeout=S watchdog
# Output: "E2E-RESULT key=value" lines, then "E2E-DONE"; then poweroff -f.

PATH=/bin
export PATH
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t proc proc /proc
mount -t sysfs sysfs /sys
[ -c /dev/console ] && exec </dev/console >/dev/console 2>&1
echo
echo "E2E-BOOT uptime=$(cut -d' ' -f1 /proc/uptime)"

param() { # name default
    v=$(tr ' ' '\n' </proc/cmdline | sed -n "s/^e2e\.$1=//p" | tail -n1)
    echo "${v:-$2}"
}
BYTES=$(param vsock_bytes 16777216)
CONC=$(param vsock_conc 20)
CONC_BYTES=$(param vsock_conc_bytes 262144)
T=$(param step_timeout 60)
GUEST_TIMEOUT=$(param guest_timeout 100)
r() { echo "E2E-RESULT $1=$2"; }
(
    sleep "$GUEST_TIMEOUT"
    r guest_watchdog fired
    poweroff -f
) &

nmod=0
while read -r m; do
    [ -n "$m" ] || continue
    if insmod "/lib/modules/$m.ko"; then nmod=$((nmod + 1)); else r module_failed "$m"; fi
done </etc/e2e-modules
r modules_loaded "$nmod"
i=0
while [ $i -lt 50 ] && ! grep -q '^0x0013$' /sys/bus/virtio/devices/*/device 2>/dev/null; do
    sleep 0.1
    i=$((i + 1))
done
for d in /sys/bus/virtio/devices/*; do
    [ "$(cat "$d/device" 2>/dev/null)" = 0x0013 ] && r vsock_device "${d##*/}:features=$(cat "$d/features")"
done

step() { # name args...
    n=$1
    shift
    timeout "$T" /bin/vsock-e2e "$@"
    r "${n}_status" $?
    r "uptime_$n" "$(cut -d' ' -f1 /proc/uptime)"
}
step g2h client-pattern 5000 "$BYTES" 1
step h2g server-pattern 6000 "$BYTES" 4
step g2h_conc client-echo 5001 "$CONC" "$CONC_BYTES"
step h2g_conc server-echo 6001 "$CONC"
echo "E2E-DONE"
sync
poweroff -f
sleep 10
