// The blk request matrix and the hostile chains, included once per engine (`tests.rs`):
// `harness` builds the device on that module's engine `AIO`.

#[test]
fn read_three_descriptors_returns_file_bytes_and_len_data_plus_status() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 3);
    let r = h.one(&[(HDR, 16, false), (BUF, 1024, true), (ST, 1, true)], ST);
    assert_eq!(r, (1025, VIRTIO_BLK_S_OK));
    assert_eq!(h.guest(BUF, 1024), expected(3, 1024));
}

#[test]
fn read_header_split_over_three_descriptors_is_served() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 1);
    let bufs = [
        (HDR, 3, false),
        (HDR + 3, 9, false),
        (HDR + 12, 4, false),
        (BUF, 512, true),
        (ST, 1, true),
    ];
    assert_eq!(h.one(&bufs, ST), (513, VIRTIO_BLK_S_OK));
    assert_eq!(h.guest(BUF, 512), expected(1, 512));
}

#[test]
fn read_data_and_status_in_one_descriptor_is_served() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 2);
    let r = h.one(&[(HDR, 16, false), (BUF, 513, true)], BUF + 512);
    assert_eq!(r, (513, VIRTIO_BLK_S_OK));
    assert_eq!(h.guest(BUF, 512), expected(2, 512));
}

#[test]
fn read_buffer_straddling_two_memory_regions_is_served() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 4);
    let at = REGION2 - 1000;
    let r = h.one(&[(HDR, 16, false), (at, 2048, true), (ST, 1, true)], ST);
    assert_eq!(r, (2049, VIRTIO_BLK_S_OK));
    assert_eq!(h.guest(at, 2048), expected(4, 2048));
}

#[test]
fn write_lands_in_file_and_returns_status_only() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_OUT, 5);
    let data: Vec<u8> = (0..1024).map(|i| (i % 13) as u8).collect();
    h.mem.write_slice(&data, GuestAddress(BUF)).unwrap();
    // The data is split in two descriptors and shares the first with the header.
    h.mem
        .write_slice(&data[..100], GuestAddress(HDR + 16))
        .unwrap();
    let bufs = [(HDR, 116, false), (BUF + 100, 924, false), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_OK));
    let file = h.file();
    assert_eq!(&file[5 * 512..5 * 512 + 1024], &data[..]);
    assert_eq!(&file[..5 * 512], &expected(0, 5 * 512)[..]);
}

#[test]
fn write_in_writethrough_mode_lands_in_file() {
    let mut h = harness(false);
    h.dev.write_config_space(32, &[0]).unwrap();
    assert!(h.dev.writethrough());
    h.header(HDR, VIRTIO_BLK_T_OUT, 0);
    h.mem.write_slice(&[9u8; 512], GuestAddress(BUF)).unwrap();
    let bufs = [(HDR, 16, false), (BUF, 512, false), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_OK));
    assert_eq!(&h.file()[..512], &[9u8; 512][..]);
}

#[test]
fn write_on_read_only_device_is_ioerr_and_file_unchanged() {
    let mut h = harness(true);
    h.header(HDR, VIRTIO_BLK_T_OUT, 0);
    let bufs = [(HDR, 16, false), (BUF, 512, false), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_IOERR));
    assert_eq!(h.file(), expected(0, DISK_BYTES));
}

#[test]
fn flush_and_get_id_succeed_with_serial_zero_padded() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.one(&[(HDR, 16, false), (ST, 1, true)], ST), (1, 0));
    h.header(HDR, VIRTIO_BLK_T_GET_ID, 0);
    h.mem.write_slice(&[0xee; 20], GuestAddress(BUF)).unwrap();
    let r = h.one(&[(HDR, 16, false), (BUF, 20, true), (ST, 1, true)], ST);
    assert_eq!(r, (21, VIRTIO_BLK_S_OK));
    let mut want = [0u8; 20];
    want[..11].copy_from_slice(b"unit-serial");
    assert_eq!(h.guest(BUF, 20), want);
}

#[test]
fn discard_and_write_zeroes_zero_their_ranges_only() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_DISCARD, 0);
    h.segment(HDR + 16, 8, 8, 0);
    let bufs = [(HDR, 32, false), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_OK));
    h.header(HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    h.segment(HDR + 16, 20, 1, 0);
    h.segment(HDR + 32, 30, 2, WRITE_ZEROES_FLAG_UNMAP);
    let bufs = [(HDR, 48, false), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_OK));
    let file = h.file();
    let mut want = expected(0, DISK_BYTES);
    for (s, n) in [(8usize, 8usize), (20, 1), (30, 2)] {
        want[s * 512..(s + n) * 512].fill(0);
    }
    assert_eq!(file, want);
}

#[test]
fn discard_with_unmap_flag_is_unsupp() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_DISCARD, 0);
    h.segment(HDR + 16, 0, 1, WRITE_ZEROES_FLAG_UNMAP);
    let r = h.one(&[(HDR, 32, false), (ST, 1, true)], ST);
    assert_eq!(r, (1, VIRTIO_BLK_S_UNSUPP));
    assert_eq!(h.file(), expected(0, DISK_BYTES));
}

#[test]
fn write_zeroes_segment_past_capacity_or_too_large_is_ioerr() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_WRITE_ZEROES, 0);
    h.segment(HDR + 16, 127, 2, 0);
    assert_eq!(h.one(&[(HDR, 32, false), (ST, 1, true)], ST), (1, 1));
    h.segment(HDR + 16, 0, config::MAX_RANGE_SECTORS + 1, 0);
    assert_eq!(h.one(&[(HDR, 32, false), (ST, 1, true)], ST), (1, 1));
    // Payload not a whole number of segments.
    assert_eq!(h.one(&[(HDR, 30, false), (ST, 1, true)], ST), (1, 1));
    assert_eq!(h.file(), expected(0, DISK_BYTES));
}

#[test]
fn unknown_request_type_is_unsupp() {
    let mut h = harness(false);
    h.header(HDR, 99, 0);
    let r = h.one(&[(HDR, 16, false), (ST, 1, true)], ST);
    assert_eq!(r, (1, VIRTIO_BLK_S_UNSUPP));
}

#[test]
fn header_shorter_than_16_bytes_is_ioerr() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    let r = h.one(&[(HDR, 8, false), (HDR + 8, 4, false), (ST, 1, true)], ST);
    assert_eq!(r, (1, VIRTIO_BLK_S_IOERR));
}

#[test]
fn chain_without_writable_status_is_returned_with_len_zero_and_queue_goes_on() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_OUT, 0);
    h.mem.write_obj(0x55u8, GuestAddress(ST)).unwrap();
    let head = h.submit(&[(HDR, 16, false), (BUF, 512, false), (ST, 1, false)]);
    assert_eq!(h.run(), vec![(head, 0)]);
    assert_eq!(h.guest(ST, 1), [0x55]);
    assert_eq!(h.file(), expected(0, DISK_BYTES));
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    let r = h.one(&[(HDR, 16, false), (BUF, 512, true), (ST, 1, true)], ST);
    assert_eq!(r, (513, VIRTIO_BLK_S_OK));
}

#[test]
fn readable_status_after_writable_data_is_ioerr_in_last_writable_byte() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    let bufs = [(HDR, 16, false), (BUF, 512, true), (ST, 1, false)];
    assert_eq!(h.one(&bufs, BUF + 511), (1, VIRTIO_BLK_S_IOERR));
}

#[test]
fn read_with_device_readable_data_buffer_is_ioerr() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    h.mem.write_slice(&[0xaa; 512], GuestAddress(BUF)).unwrap();
    let bufs = [(HDR, 16, false), (BUF, 512, false), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_IOERR));
    assert_eq!(h.guest(BUF, 512), vec![0xaa; 512]);
}

#[test]
fn write_with_device_writable_data_buffer_is_ioerr_and_file_unchanged() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_OUT, 0);
    let bufs = [(HDR, 16, false), (BUF, 512, true), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_IOERR));
    assert_eq!(h.file(), expected(0, DISK_BYTES));
}

#[test]
fn sector_past_capacity_or_overflowing_is_ioerr() {
    let mut h = harness(false);
    let capacity = (DISK_BYTES / 512) as u64;
    for sector in [capacity, capacity - 1, u64::MAX / 512, u64::MAX] {
        h.header(HDR, VIRTIO_BLK_T_IN, sector);
        let bufs = [(HDR, 16, false), (BUF, 1024, true), (ST, 1, true)];
        assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_IOERR), "sector {sector}");
    }
    // The last sector itself is readable.
    h.header(HDR, VIRTIO_BLK_T_IN, capacity - 1);
    let bufs = [(HDR, 16, false), (BUF, 512, true), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (513, VIRTIO_BLK_S_OK));
}

#[test]
fn data_length_not_multiple_of_512_is_ioerr() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    let bufs = [(HDR, 16, false), (BUF, 500, true), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_IOERR));
    h.header(HDR, VIRTIO_BLK_T_OUT, 0);
    let bufs = [(HDR, 16, false), (BUF, 513, false), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_IOERR));
    assert_eq!(h.file(), expected(0, DISK_BYTES));
}

#[test]
fn looping_chain_is_ioerr_and_next_request_works() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    // 0 -> 1 -> 0 -> ...: header, status, header, status, ...
    h.write_desc(DESC, 0, SplitDescriptor::new(HDR, 16, F_NEXT, 1));
    h.write_desc(DESC, 1, SplitDescriptor::new(ST, 1, F_NEXT | F_WRITE, 0));
    h.next_desc = 2;
    h.make_available(0);
    h.mem.write_obj(0xffu8, GuestAddress(ST)).unwrap();
    assert_eq!(h.run(), vec![(0, 1)]);
    assert_eq!(h.guest(ST, 1), [VIRTIO_BLK_S_IOERR]);
    let r = h.one(&[(HDR, 16, false), (BUF, 512, true), (ST, 1, true)], ST);
    assert_eq!(r, (513, VIRTIO_BLK_S_OK));
}

#[test]
fn chain_longer_than_cap_is_ioerr() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    // Three 100 MiB buffers that do not exist: refused on length before any is mapped.
    let big = 100 << 20;
    let bufs = [
        (HDR, 16, false),
        (0x1_0000_0000, big, true),
        (0x2_0000_0000, big, true),
        (0x3_0000_0000, big, true),
        (ST, 1, true),
    ];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_IOERR));
}

#[test]
fn indirect_chain_with_too_many_descriptors_is_ioerr() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    let mut bufs = vec![(HDR, 16, false)];
    bufs.extend((0..MAX_DESCRIPTORS as u64).map(|i| (BUF + i, 1, true)));
    bufs.push((ST, 1, true));
    h.mem.write_obj(0xffu8, GuestAddress(ST)).unwrap();
    let head = h.submit_indirect(&bufs);
    assert_eq!(h.run(), vec![(head, 1)]);
    assert_eq!(h.guest(ST, 1), [VIRTIO_BLK_S_IOERR]);
}

#[test]
fn indirect_chain_is_served() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 6);
    h.mem.write_obj(0xffu8, GuestAddress(ST)).unwrap();
    let head = h.submit_indirect(&[(HDR, 16, false), (BUF, 512, true), (ST, 1, true)]);
    assert_eq!(h.run(), vec![(head, 513)]);
    assert_eq!(h.guest(ST, 1), [VIRTIO_BLK_S_OK]);
    assert_eq!(h.guest(BUF, 512), expected(6, 512));
}

#[test]
fn data_buffer_outside_guest_memory_is_ioerr() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    let bufs = [(HDR, 16, false), (MEM_END - 512, 1024, true), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_IOERR));
    let bufs = [(HDR, 16, false), (u64::MAX - 100, 512, true), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_IOERR));
}

#[test]
fn status_byte_outside_guest_memory_gives_len_zero() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    let head = h.submit(&[
        (HDR, 16, false),
        (BUF, 512, true),
        (MEM_END + 4096, 1, true),
    ]);
    assert_eq!(h.run(), vec![(head, 0)]);
}

#[test]
fn status_in_a_buffer_whose_end_overflows_is_not_written_at_a_wrapped_address() {
    let mut h = harness(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    // The last writable buffer runs past the end of the address space: its last byte does
    // not exist, and nothing is written where the address would wrap to (0xff).
    let bufs = [
        (HDR, 16, false),
        (BUF, 512, true),
        (u64::MAX - 0xff, 0x200, true),
    ];
    assert_eq!(h.one(&bufs, 0xff), (0, 0xff));
}

#[test]
fn unsupported_type_with_an_unused_buffer_outside_memory_is_unsupp() {
    let mut h = harness(false);
    h.header(HDR, 99, 0);
    let bufs = [
        (HDR, 16, false),
        (MEM_END + 0x1000, 16, false),
        (ST, 1, true),
    ];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_UNSUPP));
    // A flush with one still flushes.
    h.header(HDR, VIRTIO_BLK_T_FLUSH, 0);
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_OK));
}

#[test]
fn header_outside_guest_memory_is_ioerr() {
    let mut h = harness(false);
    let r = h.one(&[(MEM_END, 16, false), (ST, 1, true)], ST);
    assert_eq!(r, (1, VIRTIO_BLK_S_IOERR));
}

#[test]
fn batch_of_many_chains_is_served_in_one_call() {
    let mut h = harness(false);
    let heads = h.submit_reads(40);
    let used = h.run();
    assert_eq!(used.len(), 40);
    // Engines with requests in flight may complete them in any order; each exactly once.
    h.assert_reads_each_once(used, &heads);
}
