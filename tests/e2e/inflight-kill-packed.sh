# shellcheck shell=bash
# The `inflight-kill-packed` case of tests/e2e/run.sh (sourced by it; uses its helpers):
# `inflight-kill` (inflight-kill.sh: SIGKILLs of the blk daemon under O_DIRECT writers,
# QEMU reconnecting, every block checked) with QEMU's `packed=on`, so the rings are packed
# and the inflight area has the spec's packed layout (the daemon resubmits from the
# descriptors the area copied, and resumes both ring positions from it: QEMU's base after
# a crash is stale for packed rings). Also checked: bit 34 in the guest's virtio features
# and the daemon logging the packed layout of the area.

# shellcheck source=tests/e2e/inflight-kill.sh
. "$E2E_DIR/inflight-kill.sh"
# shellcheck source=tests/e2e/packed.sh
. "$E2E_DIR/packed.sh"

test_inflight_kill_packed() {
    INFLIGHT_PACKED=1
    test_inflight_kill
    INFLIGHT_PACKED=
}
