//! Request parsing and hostile chains, over hand-built split rings in a `GuestMemoryMmap`
//! of two adjacent regions (so buffers can straddle a region boundary).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use vhost_backend::runtime::testing::TestQueue;
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::request::*;

mod cache_mode;
mod direct_io;

const QSIZE: u16 = 256;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x3000;
const USED: u64 = 0x4000;
const INDIRECT: u64 = 0x8000;
/// Data buffers live from here; the second region starts at REGION2.
const DATA: u64 = 0x2_0000;
const REGION2: u64 = 0x10_0000;
const MEM_END: u64 = 0x20_0000;
const DISK_BYTES: usize = 64 * 1024;

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// One buffer: guest address, length, device-writable.
type Buf = (u64, u32, bool);

struct Harness {
    mem: GuestMemoryMmap,
    queue: TestQueue,
    dev: BlkDevice,
    path: PathBuf,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

fn pattern(i: usize) -> u8 {
    (i as u8).wrapping_mul(7) ^ ((i / 512) as u8)
}

impl Harness {
    fn new(read_only: bool) -> Harness {
        Harness::with(|c| c.read_only = read_only)
    }

    fn with(tweak: impl FnOnce(&mut BlkConfig)) -> Harness {
        Harness::try_with(tweak, None).unwrap()
    }

    /// A harness whose device is built by `BlkDevice::open` with `align` replacing the probed
    /// direct I/O alignment; the device's error when it refuses the configuration.
    fn try_with(
        tweak: impl FnOnce(&mut BlkConfig),
        align: Option<direct::DirectAlign>,
    ) -> Result<Harness, Error> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("vhost-blk-unit-{}-{n}.img", std::process::id()));
        let mut f = File::create(&path).unwrap();
        let bytes: Vec<u8> = (0..DISK_BYTES).map(pattern).collect();
        f.write_all(&bytes).unwrap();
        drop(f);
        let mut cfg = BlkConfig::new(&path);
        cfg.serial = "unit-serial".into();
        tweak(&mut cfg);
        let dev = match BlkDevice::open(&cfg, align) {
            Ok(dev) => dev,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                return Err(e);
            }
        };
        let mem = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), REGION2 as usize),
            (GuestAddress(REGION2), (MEM_END - REGION2) as usize),
        ])
        .unwrap();
        let queue = TestQueue::new(0, mem.clone(), QSIZE, [DESC, AVAIL, USED], false).unwrap();
        Ok(Harness {
            mem,
            queue,
            dev,
            path,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        })
    }

    fn write_desc(&self, table: u64, idx: u16, d: SplitDescriptor) {
        let raw = RawDescriptor::from(d);
        self.mem
            .write_obj(raw, GuestAddress(table + u64::from(idx) * 16))
            .unwrap();
    }

    /// Writes `bufs` as a chain in the ring's table and makes it available; returns its head.
    fn submit(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let idx = head + i as u16;
            let last = i + 1 == bufs.len();
            let flags = if w { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            self.write_desc(DESC, idx, SplitDescriptor::new(addr, len, flags, idx + 1));
        }
        self.next_desc += bufs.len().max(1) as u16;
        self.make_available(head);
        head
    }

    /// Writes `bufs` into an indirect table at INDIRECT and makes a one-descriptor chain
    /// pointing at it available.
    fn submit_indirect(&mut self, bufs: &[Buf]) -> u16 {
        for (i, &(addr, len, w)) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let flags = if w { F_WRITE } else { 0 } | if last { 0 } else { F_NEXT };
            let d = SplitDescriptor::new(addr, len, flags, i as u16 + 1);
            self.write_desc(INDIRECT, i as u16, d);
        }
        let head = self.next_desc;
        let table_len = bufs.len() as u32 * 16;
        self.write_desc(
            DESC,
            head,
            SplitDescriptor::new(INDIRECT, table_len, F_INDIRECT, 0),
        );
        self.next_desc += 1;
        self.make_available(head);
        head
    }

    fn make_available(&mut self, head: u16) {
        let slot = AVAIL + 4 + u64::from(self.avail_idx % QSIZE) * 2;
        self.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.mem
            .write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
    }

    /// Runs one batch; returns the used entries it produced.
    fn run(&mut self) -> Vec<(u16, u32)> {
        self.queue.process(&self.dev).unwrap();
        // With I/O threads, requests complete after `process` returns.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.queue.outstanding() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "requests never completed"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
            self.queue.publish();
        }
        let used_idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != used_idx {
            let at = USED + 4 + u64::from(self.used_seen % QSIZE) * 8;
            let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Submits `bufs`, runs, and returns (used len, status byte at `status`).
    fn one(&mut self, bufs: &[Buf], status: u64) -> (u32, u8) {
        self.mem.write_obj(0xffu8, GuestAddress(status)).unwrap();
        let head = self.submit(bufs);
        let used = self.run();
        assert_eq!(used.len(), 1, "one chain submitted, one returned");
        assert_eq!(used[0].0, head);
        (used[0].1, self.mem.read_obj(GuestAddress(status)).unwrap())
    }

    /// Makes `n` one-sector reads available: read `i` of sector `i` into
    /// `DATA + 0x10000 + i * 512`, its header and status at `DATA + 0x8000 + i * 32`.
    /// Returns their heads.
    fn submit_reads(&mut self, n: u64) -> Vec<u16> {
        (0..n)
            .map(|i| {
                let hdr = DATA + 0x8000 + i * 32;
                self.header(hdr, VIRTIO_BLK_T_IN, i);
                self.submit(&[
                    (hdr, 16, false),
                    (DATA + 0x10000 + i * 512, 512, true),
                    (hdr + 16, 1, true),
                ])
            })
            .collect()
    }

    fn header(&self, at: u64, ty: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[..4].copy_from_slice(&ty.to_le_bytes());
        h[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&h, GuestAddress(at)).unwrap();
    }

    fn segment(&self, at: u64, sector: u64, num: u32, flags: u32) {
        let mut s = [0u8; 16];
        s[..8].copy_from_slice(&sector.to_le_bytes());
        s[8..12].copy_from_slice(&num.to_le_bytes());
        s[12..].copy_from_slice(&flags.to_le_bytes());
        self.mem.write_slice(&s, GuestAddress(at)).unwrap();
    }

    fn guest(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    fn file(&self) -> Vec<u8> {
        let mut f = File::open(&self.path).unwrap();
        let mut v = Vec::new();
        f.seek(SeekFrom::Start(0)).unwrap();
        f.read_to_end(&mut v).unwrap();
        v
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

const HDR: u64 = DATA;
const BUF: u64 = DATA + 0x1000;
const ST: u64 = DATA + 0x100;

fn expected(sector: u64, len: usize) -> Vec<u8> {
    let start = sector as usize * 512;
    (start..start + len).map(pattern).collect()
}

#[test]
fn read_three_descriptors_returns_file_bytes_and_len_data_plus_status() {
    let mut h = Harness::new(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 3);
    let r = h.one(&[(HDR, 16, false), (BUF, 1024, true), (ST, 1, true)], ST);
    assert_eq!(r, (1025, VIRTIO_BLK_S_OK));
    assert_eq!(h.guest(BUF, 1024), expected(3, 1024));
}

#[test]
fn read_header_split_over_three_descriptors_is_served() {
    let mut h = Harness::new(false);
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
    let mut h = Harness::new(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 2);
    let r = h.one(&[(HDR, 16, false), (BUF, 513, true)], BUF + 512);
    assert_eq!(r, (513, VIRTIO_BLK_S_OK));
    assert_eq!(h.guest(BUF, 512), expected(2, 512));
}

#[test]
fn read_buffer_straddling_two_memory_regions_is_served() {
    let mut h = Harness::new(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 4);
    let at = REGION2 - 1000;
    let r = h.one(&[(HDR, 16, false), (at, 2048, true), (ST, 1, true)], ST);
    assert_eq!(r, (2049, VIRTIO_BLK_S_OK));
    assert_eq!(h.guest(at, 2048), expected(4, 2048));
}

#[test]
fn write_lands_in_file_and_returns_status_only() {
    let mut h = Harness::new(false);
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
    let mut h = Harness::new(false);
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
    let mut h = Harness::new(true);
    h.header(HDR, VIRTIO_BLK_T_OUT, 0);
    let bufs = [(HDR, 16, false), (BUF, 512, false), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_IOERR));
    assert_eq!(h.file(), expected(0, DISK_BYTES));
}

#[test]
fn flush_and_get_id_succeed_with_serial_zero_padded() {
    let mut h = Harness::new(false);
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
    let mut h = Harness::new(false);
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
    let mut h = Harness::new(false);
    h.header(HDR, VIRTIO_BLK_T_DISCARD, 0);
    h.segment(HDR + 16, 0, 1, WRITE_ZEROES_FLAG_UNMAP);
    let r = h.one(&[(HDR, 32, false), (ST, 1, true)], ST);
    assert_eq!(r, (1, VIRTIO_BLK_S_UNSUPP));
    assert_eq!(h.file(), expected(0, DISK_BYTES));
}

#[test]
fn write_zeroes_segment_past_capacity_or_too_large_is_ioerr() {
    let mut h = Harness::new(false);
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
    let mut h = Harness::new(false);
    h.header(HDR, 99, 0);
    let r = h.one(&[(HDR, 16, false), (ST, 1, true)], ST);
    assert_eq!(r, (1, VIRTIO_BLK_S_UNSUPP));
}

#[test]
fn header_shorter_than_16_bytes_is_ioerr() {
    let mut h = Harness::new(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    let r = h.one(&[(HDR, 8, false), (HDR + 8, 4, false), (ST, 1, true)], ST);
    assert_eq!(r, (1, VIRTIO_BLK_S_IOERR));
}

#[test]
fn chain_without_writable_status_is_returned_with_len_zero_and_queue_goes_on() {
    let mut h = Harness::new(false);
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
    let mut h = Harness::new(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    let bufs = [(HDR, 16, false), (BUF, 512, true), (ST, 1, false)];
    assert_eq!(h.one(&bufs, BUF + 511), (1, VIRTIO_BLK_S_IOERR));
}

#[test]
fn read_with_device_readable_data_buffer_is_ioerr() {
    let mut h = Harness::new(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    h.mem.write_slice(&[0xaa; 512], GuestAddress(BUF)).unwrap();
    let bufs = [(HDR, 16, false), (BUF, 512, false), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_IOERR));
    assert_eq!(h.guest(BUF, 512), vec![0xaa; 512]);
}

#[test]
fn write_with_device_writable_data_buffer_is_ioerr_and_file_unchanged() {
    let mut h = Harness::new(false);
    h.header(HDR, VIRTIO_BLK_T_OUT, 0);
    let bufs = [(HDR, 16, false), (BUF, 512, true), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_IOERR));
    assert_eq!(h.file(), expected(0, DISK_BYTES));
}

#[test]
fn sector_past_capacity_or_overflowing_is_ioerr() {
    let mut h = Harness::new(false);
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
    let mut h = Harness::new(false);
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
    let mut h = Harness::new(false);
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
    let mut h = Harness::new(false);
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
    let mut h = Harness::new(false);
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
    let mut h = Harness::new(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 6);
    h.mem.write_obj(0xffu8, GuestAddress(ST)).unwrap();
    let head = h.submit_indirect(&[(HDR, 16, false), (BUF, 512, true), (ST, 1, true)]);
    assert_eq!(h.run(), vec![(head, 513)]);
    assert_eq!(h.guest(ST, 1), [VIRTIO_BLK_S_OK]);
    assert_eq!(h.guest(BUF, 512), expected(6, 512));
}

#[test]
fn data_buffer_outside_guest_memory_is_ioerr() {
    let mut h = Harness::new(false);
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    let bufs = [(HDR, 16, false), (MEM_END - 512, 1024, true), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_IOERR));
    let bufs = [(HDR, 16, false), (u64::MAX - 100, 512, true), (ST, 1, true)];
    assert_eq!(h.one(&bufs, ST), (1, VIRTIO_BLK_S_IOERR));
}

#[test]
fn status_byte_outside_guest_memory_gives_len_zero() {
    let mut h = Harness::new(false);
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
    let mut h = Harness::new(false);
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
    let mut h = Harness::new(false);
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
    let mut h = Harness::new(false);
    let r = h.one(&[(MEM_END, 16, false), (ST, 1, true)], ST);
    assert_eq!(r, (1, VIRTIO_BLK_S_IOERR));
}

#[test]
fn batch_of_many_chains_is_served_in_one_call() {
    let mut h = Harness::new(false);
    let mut heads = Vec::new();
    heads.extend(h.submit_reads(40));
    let used = h.run();
    assert_eq!(used.len(), 40);
    for (i, (head, len)) in used.into_iter().enumerate() {
        assert_eq!((head, len), (heads[i], 513));
        let got = h.guest(DATA + 0x10000 + i as u64 * 512, 512);
        assert_eq!(got, expected(i as u64, 512), "request {i}");
    }
}

#[test]
fn config_space_reports_capacity_and_writeback_is_the_only_writable_field() {
    let h = Harness::new(false);
    let mut cap = [0u8; 8];
    assert!(h.dev.read_config_space(0, &mut cap));
    assert_eq!(u64::from_le_bytes(cap), (DISK_BYTES / 512) as u64);
    assert!(h.dev.write_config_space(0, &[1]).is_err());
    assert_eq!(
        h.dev.write_config_space(32, &[2]),
        Err(ConfigWriteError::BadWriteback(2))
    );
    assert!(h.dev.write_config_space(32, &[0, 0]).is_err());
    assert!(!h.dev.writethrough());
    h.dev.write_config_space(32, &[0]).unwrap();
    let mut wb = [9u8];
    assert!(h.dev.read_config_space(32, &mut wb));
    assert_eq!(wb, [0]);
    assert!(h.dev.writethrough());
}

#[test]
fn features_offer_ro_without_discard_when_read_only() {
    let ro = Harness::new(true).dev.device_features();
    let rw = Harness::new(false).dev.device_features();
    assert_ne!(ro & 1 << config::features::RO, 0);
    assert_eq!(ro & 1 << config::features::DISCARD, 0);
    assert_eq!(rw & 1 << config::features::RO, 0);
    assert_ne!(rw & 1 << config::features::WRITE_ZEROES, 0);
    assert_ne!(rw & 1 << 32, 0);
}

#[test]
fn flush_not_acked_means_writethrough() {
    let h = Harness::new(false);
    h.dev
        .ack_features(1 << 32 | 1 << config::features::BLK_SIZE);
    assert!(h.dev.writethrough());
    h.dev
        .ack_features(1 << 32 | 1 << config::features::FLUSH | 1 << config::features::BLK_SIZE);
    assert!(!h.dev.writethrough());
}

#[test]
fn invalid_config_is_refused() {
    let path = std::env::temp_dir().join("vhost-blk-unit-does-not-exist.img");
    assert!(matches!(
        BlkDevice::new(&BlkConfig::new(&path)),
        Err(Error::Open { .. })
    ));
    let mut c = BlkConfig::new(&path);
    c.queue_size = 100;
    assert!(matches!(BlkDevice::new(&c), Err(Error::QueueSize(100))));
    c.queue_size = 256;
    c.num_queues = 0;
    assert!(matches!(BlkDevice::new(&c), Err(Error::NumQueues(0))));
    c.num_queues = 1;
    c.logical_block_size = Some(1000);
    assert!(matches!(BlkDevice::new(&c), Err(Error::BlockSize(1000))));
}

#[test]
fn permission_denied_opening_the_image_suggests_read_only() {
    let e = Error::Open {
        path: "/srv/disk.img".into(),
        source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
    };
    let msg = e.to_string();
    assert!(
        msg.contains("/srv/disk.img") && msg.contains("--read-only"),
        "{msg}"
    );
}

mod threads {
    //! The same request path on a pool of I/O threads: requests complete out of order, from
    //! other threads, after `process_queue` returned.
    use super::*;

    fn harness() -> Harness {
        Harness::with(|c| c.aio = Aio::Threads(4))
    }

    #[test]
    fn reads_writes_get_id_and_discard_are_served() {
        let mut h = harness();
        h.header(HDR, VIRTIO_BLK_T_IN, 2);
        let r = h.one(&[(HDR, 16, false), (BUF, 1024, true), (ST, 1, true)], ST);
        assert_eq!(r, (1025, VIRTIO_BLK_S_OK));
        assert_eq!(h.guest(BUF, 1024), expected(2, 1024));
        let data = vec![0x3cu8; 512];
        h.mem.write_slice(&data, GuestAddress(BUF)).unwrap();
        h.header(HDR, VIRTIO_BLK_T_OUT, 4);
        let r = h.one(&[(HDR, 16, false), (BUF, 512, false), (ST, 1, true)], ST);
        assert_eq!(r, (1, VIRTIO_BLK_S_OK));
        assert_eq!(&h.file()[4 * 512..5 * 512], &data[..]);
        h.header(HDR, VIRTIO_BLK_T_GET_ID, 0);
        let r = h.one(&[(HDR, 16, false), (BUF, 20, true), (ST, 1, true)], ST);
        assert_eq!(r, (21, VIRTIO_BLK_S_OK));
        h.header(HDR, 99, 0);
        let r = h.one(&[(HDR, 16, false), (ST, 1, true)], ST);
        assert_eq!(r, (1, VIRTIO_BLK_S_UNSUPP));
    }

    #[test]
    fn many_reads_in_flight_complete_each_once_with_their_data() {
        let mut h = harness();
        let mut heads = Vec::new();
        heads.extend(h.submit_reads(40));
        let used = h.run();
        assert_eq!(used.len(), 40);
        let mut seen = std::collections::HashSet::new();
        for (head, len) in used {
            assert!(seen.insert(head), "head {head} twice");
            assert_eq!(len, 513);
            let i = heads.iter().position(|&x| x == head).unwrap() as u64;
            assert_eq!(h.guest(DATA + 0x10000 + i * 512, 512), expected(i, 512));
        }
    }

    #[test]
    fn a_flush_completes_after_every_write_popped_before_it() {
        for round in 0..5u64 {
            let mut h = harness();
            let mut writes = Vec::new();
            for i in 0..24u64 {
                let hdr = DATA + 0x8000 + i * 32;
                h.header(hdr, VIRTIO_BLK_T_OUT, round * 64 + i);
                writes.push(h.submit(&[
                    (hdr, 16, false),
                    (DATA + 0x10000 + i * 4096, 4096, false),
                    (hdr + 16, 1, true),
                ]));
            }
            let fhdr = DATA + 0x8000 + 24 * 32;
            h.header(fhdr, VIRTIO_BLK_T_FLUSH, 0);
            let flush = h.submit(&[(fhdr, 16, false), (fhdr + 16, 1, true)]);
            let used = h.run();
            assert_eq!(used.len(), 25);
            let at = used.iter().position(|&(head, _)| head == flush).unwrap();
            assert_eq!(
                at, 24,
                "round {round}: the flush completed before a write: {used:?}"
            );
            assert!(writes
                .iter()
                .all(|w| used[..24].iter().any(|&(h, _)| h == *w)));
        }
    }

    #[test]
    fn a_stop_with_requests_in_flight_waits_for_them_and_answers_the_base() {
        let mut h = harness();
        h.submit_reads(30);
        h.queue.process(&h.dev).unwrap();
        let base = h.queue.stop(std::time::Duration::from_secs(10)).unwrap();
        assert_eq!(base, 30);
        let used_idx: u16 = h.mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(
            used_idx, 30,
            "every request completed before the stop answered"
        );
    }

    #[test]
    fn a_host_error_fails_that_request_only() {
        let mut h = harness();
        // The image shrinks under the device: reads past the new end fail on the host.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&h.path)
            .unwrap()
            .set_len(4096)
            .unwrap();
        h.header(HDR, VIRTIO_BLK_T_IN, 64);
        let r = h.one(&[(HDR, 16, false), (BUF, 512, true), (ST, 1, true)], ST);
        assert_eq!(r, (1, VIRTIO_BLK_S_IOERR));
        h.header(HDR, VIRTIO_BLK_T_IN, 0);
        let r = h.one(&[(HDR, 16, false), (BUF, 512, true), (ST, 1, true)], ST);
        assert_eq!(r, (513, VIRTIO_BLK_S_OK));
    }
}

mod pool_order {
    //! Two queues' workers submit to one pool concurrently: a write classified by one before
    //! a flush from the other is queued behind it must not hold that flush.
    use super::*;
    use std::sync::Mutex;
    use vhost_backend::runtime::{DeviceError, Processed, QueueContext, Request, VirtioDevice};

    /// Pops every available request and keeps it.
    #[derive(Default)]
    struct Capture(Mutex<Vec<Request>>);

    impl VirtioDevice for Capture {
        fn device_type(&self) -> u32 {
            2
        }
        fn num_queues(&self) -> usize {
            1
        }
        fn max_queue_size(&self) -> u16 {
            QSIZE
        }
        fn features(&self) -> u64 {
            0
        }
        fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
            while let Some(req) = ctx.pop() {
                self.0.lock().unwrap().push(req);
            }
            Ok(Processed::Drained)
        }
    }

    #[test]
    fn a_flush_queued_ahead_of_a_write_numbered_after_it_does_not_wait_for_it() {
        let mut h = Harness::with(|c| c.aio = Aio::Threads(1));
        h.mem.write_slice(&[7u8; 512], GuestAddress(BUF)).unwrap();
        h.header(HDR, VIRTIO_BLK_T_OUT, 1);
        h.submit(&[(HDR, 16, false), (BUF, 512, false), (ST, 1, true)]);
        let fhdr = HDR + 0x100;
        h.header(fhdr, VIRTIO_BLK_T_FLUSH, 0);
        h.submit(&[(fhdr, 16, false), (ST + 1, 1, true)]);
        let capture = Capture::default();
        h.queue.process(&capture).unwrap();
        let mut held = capture.0.into_inner().unwrap();
        assert_eq!(held.len(), 2);
        let flush = held.pop().unwrap();
        let write = held.pop().unwrap();
        let pool = h.dev.pool.as_ref().expect("pool");
        // The write's worker classified it; the flush's worker queues first.
        let class = engine::classify(&write);
        assert_eq!(class, engine::Class::Write);
        pool.send(flush, engine::Class::Flush, false).unwrap();
        pool.send(write, class, false).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while h.queue.outstanding() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the flush waits for a write queued behind it: deadlock"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
            h.queue.publish();
        }
        assert_eq!(&h.file()[512..1024], &[7u8; 512][..]);
    }
}

#[test]
fn a_panic_serving_a_write_on_an_io_thread_leaves_flushes_and_the_thread_working() {
    let mut h = Harness::with(|c| c.aio = Aio::Threads(1));
    h.dev
        .core
        .panic_next
        .store(true, std::sync::atomic::Ordering::Relaxed);
    h.header(HDR, VIRTIO_BLK_T_OUT, 1);
    let write = h.submit(&[(HDR, 16, false), (BUF, 512, false), (ST, 1, true)]);
    let fhdr = HDR + 0x100;
    h.header(fhdr, VIRTIO_BLK_T_FLUSH, 0);
    let flush = h.submit(&[(fhdr, 16, false), (ST + 1, 1, true)]);
    let used = h.run();
    assert_eq!(
        used,
        vec![(write, 0), (flush, 1)],
        "the flush still completes"
    );
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    let r = h.one(&[(HDR, 16, false), (BUF, 512, true), (ST, 1, true)], ST);
    assert_eq!(r, (513, VIRTIO_BLK_S_OK), "the I/O thread still serves");
}

#[test]
fn state_carries_the_cache_mode_and_refuses_another_disk() {
    let a = Harness::new(false);
    assert!(a.dev.supports_state_transfer());
    assert!(!a.dev.writethrough());
    a.dev
        .write_config_space(WRITEBACK_OFFSET as u32, &[0])
        .unwrap();
    assert!(a.dev.writethrough());
    let state = a.dev.snapshot().unwrap();

    let b = Harness::new(false);
    assert!(!b.dev.writethrough(), "a fresh device is in writeback mode");
    b.dev.restore(&state).unwrap();
    assert!(b.dev.writethrough(), "the driver's choice came over");
    assert_eq!(b.dev.config_space().writeback, 0);

    let ro = Harness::new(true);
    assert!(ro.dev.restore(&state).is_err(), "state of a writable disk");
    let mut bad = state.clone();
    bad[5] = 9;
    assert!(b.dev.restore(&bad).is_err());
    assert!(b.dev.restore(&state[..8]).is_err());
}
