# shellcheck shell=bash
# The `packed` case of tests/e2e/run.sh (sourced by it; uses its helpers).
#
# Packed virtqueues (VIRTIO_F_RING_PACKED, bit 34): one boot of vhost-user-blk-pci and one
# of vhost-user-rng-pci, each with QEMU's `packed=on`, against our daemons (which offer the
# bit). Checked: the guest's virtio features string (/sys/bus/virtio/devices/*/features,
# one character per bit from bit 0) has bit 34 set, so the guest drives packed rings; then
# the blk checks of `blk-multi` (read md5 == host, pattern written and read back == host
# image, flushes, discard) and the rng checks of `rng`.

# The character for bit 34 in the features string the guest printed.
packed_bit() {
    local f
    f=$(get virtio_device)
    f=${f##*features=}
    printf '%s' "${f:34:1}"
}

test_packed() {
    local img=$RUN_DIR/packed.img sock=$RUN_DIR/packed-blk.sock seed hmd5 cur
    if [ "${E2E_BACKENDS:-ours}" != ours ]; then
        log "packed: skipped with E2E_BACKENDS=$E2E_BACKENDS (reference back-ends mask bit 34)"
        return
    fi

    LOG_NAME=packed-blk
    BOOT_TIME=-
    begin_checks
    make_image "$img"
    if ! start_daemon blk "$sock" "$img" 0; then
        boot_fail packed-blk "daemon did not start"
    else
        seed=$(new_seed)
        hmd5=$(range_md5 "$img" 0 "$READ_MIB")
        launch_qemu vhost-user-blk-pci,packed=on "$QEMU_SOCK" 0 "$(blk_params "$seed")"
        wait_qemu
        log "packed-blk: QEMU exit $QEMU_RC after ${BOOT_TIME}s"
        check_boot_basics
        info "virtio device: $(get virtio_device)"
        check_eq "guest virtio features: bit 34 (RING_PACKED)" "$(packed_bit)" 1
        check_blk_rw "$img" "$seed" "$hmd5"
        finish_boot packed-blk
        stop_proxy
        stop_pid "$DAEMON_PID"
    fi

    LOG_NAME=packed-rng
    BOOT_TIME=-
    begin_checks
    if ! start_daemon rng "$RUN_DIR/packed-rng.sock"; then
        boot_fail packed-rng "daemon did not start"
        return
    fi
    launch_qemu vhost-user-rng-pci,packed=on "$QEMU_SOCK" 0 "e2e.tests=rng e2e.rng_bytes=$RNG_BYTES"
    wait_qemu
    log "packed-rng: QEMU exit $QEMU_RC after ${BOOT_TIME}s"
    check_boot_basics
    info "virtio device: $(get virtio_device)"
    check_eq "guest virtio features: bit 34 (RING_PACKED)" "$(packed_bit)" 1
    cur=$(get rng_current)
    ok "rng_current names virtio_rng" "$(case $cur in virtio_rng*) echo 0 ;; *) echo 1 ;; esac)" "got '$cur'"
    check_eq "/dev/hwrng read status" "$(get rng_status)" 0
    check_eq "bytes read from /dev/hwrng" "$(get rng_bytes)" "$RNG_BYTES"
    check_ne "two reads differ" "$(get rng_second_md5)" "$(get rng_md5)"
    finish_boot packed-rng
    stop_pid "$DAEMON_PID"
}
