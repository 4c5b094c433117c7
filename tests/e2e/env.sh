# shellcheck shell=bash
# Sourced by run.sh and by the e2e scripts that also run on their own (migrate.sh,
# vsock.sh) once they have set E2E_DIR: the repository and work directories (created), the
# QEMU defaults and the guest's QEMU command line. Each caller keeps its own timeouts.
REPO_ROOT=$(cd "$E2E_DIR/../.." && pwd)
WORK_DIR=${WORK_DIR:-$E2E_DIR/work}
mkdir -p "$WORK_DIR"
WORK_DIR=$(cd "$WORK_DIR" && pwd)
RUN_DIR=${RUN_DIR:-$WORK_DIR/run}
mkdir -p "$RUN_DIR"
QEMU=${QEMU:-qemu-system-x86_64}
ACCEL=${ACCEL:-tcg}
CPU=${CPU:-max}
MEM=${MEM:-256M}
KERNEL_APPEND=${KERNEL_APPEND:-console=ttyS0 quiet panic=-1 edd=off}

# qemu_cmd KERNEL INITRD APPEND: sets QEMU_CMD to the command booting the e2e guest
# (KERNEL and INITRD, APPEND after KERNEL_APPEND) within BOOT_TIMEOUT: ACCEL, one CPU, q35
# with shared memfd memory (vhost-user maps it), the serial on stdio. Callers add devices.
qemu_cmd() {
    QEMU_CMD=(timeout -k 5 "$BOOT_TIMEOUT" "$QEMU" -accel "$ACCEL" -cpu "$CPU" -smp 1
        -machine q35,memory-backend=mem
        -object "memory-backend-memfd,id=mem,size=$MEM,share=on" -m "$MEM"
        -kernel "$1" -initrd "$2" -append "$KERNEL_APPEND $3"
        -nographic -nodefaults -no-reboot -serial stdio)
}

# defaults NAME=VALUE...: each NAME unset or empty takes VALUE (NAME=${NAME:-VALUE}).
defaults() {
    local kv name
    for kv in "$@"; do
        name=${kv%%=*}
        [ -n "${!name:-}" ] || printf -v "$name" '%s' "${kv#*=}"
    done
}
