//! `O_DIRECT`: guest buffers split or placed anywhere are served (through the bounce buffer
//! when they do not suit the host), requests off the host's block alignment are refused, and
//! the advertised block size follows the host's alignment.

use super::*;
use crate::direct::DirectAlign;

/// A host that wants page-aligned memory (and so page-multiple iovec lengths).
const PAGE_ALIGNED_MEMORY: DirectAlign = DirectAlign {
    memory: 4096,
    offset: 512,
};

/// A host whose direct I/O works in 4 KiB blocks.
const FOUR_K_BLOCKS: DirectAlign = DirectAlign {
    memory: 512,
    offset: 4096,
};

fn direct(align: Option<DirectAlign>) -> Harness {
    Harness::try_with(|c| c.direct = true, align).unwrap()
}

/// A request of type `t` on `sector` with the data buffers `data` (address, length): writes
/// its header at `HDR` and returns the chain, header first and status byte at `ST` last.
/// The device writes the data buffers of a read.
fn chain_of(h: &mut Harness, t: u32, sector: u64, data: &[(u64, u32)]) -> Vec<Buf> {
    h.header(HDR, t, sector);
    let mut bufs = vec![(HDR, 16, false)];
    let device_writes = t == VIRTIO_BLK_T_IN;
    bufs.extend(data.iter().map(|&(at, len)| (at, len, device_writes)));
    bufs.push((ST, 1, true));
    bufs
}

/// [`chain_of`] for a read of `sector`.
fn read_of(h: &mut Harness, sector: u64, data: &[(u64, u32)]) -> Vec<Buf> {
    chain_of(h, VIRTIO_BLK_T_IN, sector, data)
}

#[test]
fn direct_read_split_over_two_256_byte_descriptors_is_served() {
    for align in [None, Some(PAGE_ALIGNED_MEMORY)] {
        let mut h = direct(align);
        let bufs = read_of(&mut h, 1, &[(BUF, 256), (BUF + 0x2000, 256)]);
        assert_eq!(h.one(&bufs, ST), (513, VIRTIO_BLK_S_OK), "{align:?}");
        let want = expected(1, 512);
        assert_eq!(h.guest(BUF, 256), want[..256], "{align:?}");
        assert_eq!(h.guest(BUF + 0x2000, 256), want[256..], "{align:?}");
    }
}

#[test]
fn direct_read_into_unaligned_or_page_crossing_buffer_is_served() {
    for align in [None, Some(PAGE_ALIGNED_MEMORY)] {
        let mut h = direct(align);
        // Odd, half-block, and block-aligned-but-page-crossing addresses.
        for (i, at) in [BUF + 1, BUF + 256, BUF + 0xe00].into_iter().enumerate() {
            let sector = 2 + i as u64;
            h.header(HDR, VIRTIO_BLK_T_IN, sector);
            let bufs = [(HDR, 16, false), (at, 1024, true), (ST, 1, true)];
            assert_eq!(
                h.one(&bufs, ST),
                (1025, VIRTIO_BLK_S_OK),
                "{at:#x} {align:?}"
            );
            assert_eq!(
                h.guest(at, 1024),
                expected(sector, 1024),
                "{at:#x} {align:?}"
            );
        }
    }
}

#[test]
fn direct_read_of_contiguous_split_descriptors_is_served() {
    let mut h = direct(None);
    let bufs = read_of(
        &mut h,
        7,
        &[(BUF, 100), (BUF + 100, 412), (BUF + 512, 3584)],
    );
    assert_eq!(h.one(&bufs, ST), (4097, VIRTIO_BLK_S_OK));
    assert_eq!(h.guest(BUF, 4096), expected(7, 4096));
}

#[test]
fn direct_write_from_split_unaligned_buffers_lands_in_file() {
    for align in [None, Some(PAGE_ALIGNED_MEMORY)] {
        let mut h = direct(align);
        let data: Vec<u8> = (0..1024u32).map(|i| (i % 241) as u8 ^ 0x5a).collect();
        h.mem
            .write_slice(&data[..300], GuestAddress(BUF + 1))
            .unwrap();
        h.mem
            .write_slice(&data[300..], GuestAddress(BUF + 0x2003))
            .unwrap();
        let bufs = chain_of(
            &mut h,
            VIRTIO_BLK_T_OUT,
            4,
            &[(BUF + 1, 300), (BUF + 0x2003, 724)],
        );
        assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_OK), "{align:?}");
        let file = h.file();
        assert_eq!(&file[4 * 512..6 * 512], &data[..], "{align:?}");
        assert_eq!(&file[..4 * 512], &expected(0, 4 * 512)[..], "{align:?}");
        assert_eq!(&file[6 * 512..], &expected(6, DISK_BYTES - 6 * 512)[..]);
    }
}

#[test]
fn direct_write_from_page_crossing_buffer_on_page_aligned_host_lands_in_file() {
    let mut h = direct(Some(PAGE_ALIGNED_MEMORY));
    let data = [0xc3u8; 4096];
    h.mem.write_slice(&data, GuestAddress(BUF + 0x200)).unwrap();
    h.header(HDR, VIRTIO_BLK_T_OUT, 8);
    let bufs = [(HDR, 16, false), (BUF + 0x200, 4096, false), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_OK));
    assert_eq!(&h.file()[8 * 512..16 * 512], &data[..]);
}

#[test]
fn direct_request_off_the_host_block_alignment_is_ioerr() {
    let mut h = direct(Some(FOUR_K_BLOCKS));
    h.mem.write_slice(&[0u8; 4096], GuestAddress(BUF)).unwrap();
    for (sector, len) in [(1u64, 4096u32), (0, 512), (8, 4608)] {
        h.header(HDR, VIRTIO_BLK_T_IN, sector);
        let bufs = [(HDR, 16, false), (BUF, len, true), (ST, 1, true)];
        let r = h.one(&bufs, ST);
        assert_eq!(r, (1, VIRTIO_BLK_S_IOERR), "sector {sector} len {len}");
    }
    h.header(HDR, VIRTIO_BLK_T_OUT, 1);
    let bufs = [(HDR, 16, false), (BUF, 4096, false), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_IOERR));
    assert_eq!(h.file(), expected(0, DISK_BYTES));
    h.header(HDR, VIRTIO_BLK_T_IN, 8);
    let bufs = [(HDR, 16, false), (BUF + 1, 4096, true), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (4097, VIRTIO_BLK_S_OK));
    assert_eq!(h.guest(BUF + 1, 4096), expected(8, 4096));
}

#[test]
fn direct_block_size_follows_host_alignment_and_smaller_one_is_refused() {
    let h = direct(Some(FOUR_K_BLOCKS));
    assert_eq!(h.dev.config_space().blk_size.get(), 4096);
    assert_eq!(h.dev.config_space().discard_sector_alignment.get(), 8);
    let err = Harness::try_with(
        |c| {
            c.direct = true;
            c.logical_block_size = Some(512);
        },
        Some(FOUR_K_BLOCKS),
    )
    .err()
    .expect("a block size below the direct I/O alignment was accepted");
    assert!(
        matches!(
            err,
            Error::BlockSizeBelowDirectAlign {
                block_size: 512,
                alignment: 4096,
                ..
            }
        ),
        "{err}"
    );
    let h = Harness::try_with(
        |c| {
            c.direct = true;
            c.logical_block_size = Some(8192);
        },
        Some(FOUR_K_BLOCKS),
    )
    .unwrap();
    assert_eq!(h.dev.block_size(), 8192);
    // Buffered I/O keeps the 512-byte default whatever the host's direct I/O alignment.
    let h = Harness::try_with(|_| {}, Some(FOUR_K_BLOCKS)).unwrap();
    assert_eq!(h.dev.block_size(), 512);
}
