# shellcheck shell=bash
# Sourced by the e2e scripts that also run on their own (migrate.sh, vsock.sh) once they
# have set E2E_DIR: the repository and work directories (created) and the QEMU defaults
# they share with run.sh. Each caller keeps its own timeouts.
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
