//! The null disk driven through the runtime's request lifecycle on a `TestQueue`: one ring
//! laid out in test-owned guest memory as a driver would, each test on both ring layouts
//! (split, then packed).

use vhost_backend::runtime::testing::{RingSpec, TestQueue};
use vhost_backend::runtime::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vhost_backend::runtime::VirtioDevice;
use vhost_device_null::{NullBlk, S_IOERR, S_OK, S_UNSUPP};

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const HDR: u64 = 0x4000;
const DATA: u64 = 0x8000;
const STATUS: u64 = 0x7000;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
/// Packed rings: the descriptor's AVAIL and USED flags.
const F_AVAIL: u16 = 1 << 7;
const F_USED: u16 = 1 << 15;
/// The layouts each test runs on: split, packed.
const LAYOUTS: [bool; 2] = [false, true];

struct Ring {
    mem: GuestMemoryMmap,
    q: TestQueue,
    /// Split: the available index. Packed: the next available position.
    avail: u16,
    /// Packed rings: the driver's wrap counter, and the next used position and its wrap
    /// counter.
    packed: Option<(bool, u16, bool)>,
}

impl Ring {
    fn new(packed: bool) -> Self {
        Ring::with_memory(0x20000, packed)
    }

    /// A ring of 16 (split: descriptor table, available and used rings; packed: descriptor
    /// ring and the two event areas at the same addresses).
    fn with_memory(size: usize, packed: bool) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]).unwrap();
        let spec = RingSpec {
            packed,
            ..RingSpec::split(0, 16, [DESC, AVAIL, USED])
        };
        let q = TestQueue::new(mem.clone(), spec).unwrap();
        let packed = packed.then_some((true, 0, true));
        Ring {
            mem,
            q,
            avail: 0,
            packed,
        }
    }

    /// Packed rings: lays the chain at the next positions (buffer ID 0), runs the device
    /// and reads the used descriptor.
    fn submit_packed(&mut self, dev: &NullBlk, bufs: &[(u64, u32, bool)]) -> (u32, u8) {
        let (mut wrap, used, used_wrap) = self.packed.expect("a packed ring");
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let d = DESC + 16 * u64::from(self.avail);
            let mut flags = if write { F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            flags |= if wrap { F_AVAIL } else { F_USED };
            self.mem.write_obj(addr, GuestAddress(d)).unwrap();
            self.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
            self.mem.write_obj(0u16, GuestAddress(d + 12)).unwrap();
            self.mem.write_obj(flags, GuestAddress(d + 14)).unwrap();
            self.avail += 1;
            if self.avail == 16 {
                self.avail = 0;
                wrap = !wrap;
            }
        }
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        self.q.process(dev).unwrap();
        let d = DESC + 16 * u64::from(used);
        let flags: u16 = self.mem.read_obj(GuestAddress(d + 14)).unwrap();
        let want = if used_wrap { F_AVAIL | F_USED } else { 0 };
        assert_eq!(
            flags & (F_AVAIL | F_USED),
            want,
            "one used descriptor per request"
        );
        let next = used + bufs.len() as u16;
        self.packed = Some((wrap, next % 16, used_wrap != (next >= 16)));
        let len = self.mem.read_obj(GuestAddress(d + 8)).unwrap();
        (len, self.mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    /// Submits a request whose header is at `HDR`, with `len` bytes at `DATA` for the device
    /// to write and the status byte at `STATUS`.
    fn submit_read(&mut self, dev: &NullBlk, len: u32) -> (u32, u8) {
        self.submit(
            dev,
            &[(HDR, 16, false), (DATA, len, true), (STATUS, 1, true)],
        )
    }

    /// Makes a chain of `(addr, len, device-writable)` buffers available, runs the device
    /// once and returns the used length and the status byte.
    fn submit(&mut self, dev: &NullBlk, bufs: &[(u64, u32, bool)]) -> (u32, u8) {
        if self.packed.is_some() {
            return self.submit_packed(dev, bufs);
        }
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let d = DESC + 16 * i as u64;
            let mut flags = if write { F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= F_NEXT;
            }
            self.mem.write_obj(addr, GuestAddress(d)).unwrap();
            self.mem.write_obj(len, GuestAddress(d + 8)).unwrap();
            self.mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
            self.mem
                .write_obj(i as u16 + 1, GuestAddress(d + 14))
                .unwrap();
        }
        let slot = AVAIL + 4 + 2 * u64::from(self.avail % 16);
        self.mem.write_obj(0u16, GuestAddress(slot)).unwrap();
        self.avail = self.avail.wrapping_add(1);
        self.mem
            .write_obj(self.avail, GuestAddress(AVAIL + 2))
            .unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        self.q.process(dev).unwrap();
        let used_idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(used_idx, self.avail, "one used entry per request");
        let elem = USED + 4 + 8 * u64::from((used_idx - 1) % 16);
        let len = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
        (len, self.mem.read_obj(GuestAddress(STATUS)).unwrap())
    }

    fn header(&self, kind: u32, sector: u64) {
        self.mem.write_obj(kind, GuestAddress(HDR)).unwrap();
        self.mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        self.mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
    }
}

/// Runs `test` on a fresh 1 MiB disk with a ring of each layout (split, then packed).
fn on_each_layout(test: impl Fn(NullBlk, Ring)) {
    for packed in LAYOUTS {
        test(NullBlk::new(1 << 20), Ring::new(packed));
    }
}

#[test]
fn capacity_is_in_the_configuration_space() {
    let dev = NullBlk::new(8 << 20);
    let mut cap = [0u8; 8];
    dev.read_config(0, &mut cap).unwrap();
    assert_eq!(u64::from_le_bytes(cap), (8 << 20) / 512);
    assert!(dev.read_config(56, &mut [0u8; 8]).is_err());
}

#[test]
fn read_fills_zeros_and_reports_the_bytes_written() {
    on_each_layout(|dev, mut r| {
        r.mem
            .write_slice(&[0xaa; 8192], GuestAddress(DATA))
            .unwrap();
        r.header(0, 10);
        let (len, status) = r.submit_read(&dev, 8192);
        assert_eq!((len, status), (8193, S_OK));
        let mut data = [0xffu8; 8192];
        r.mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
        assert!(data.iter().all(|&b| b == 0));
    });
}

#[test]
fn write_and_flush_succeed_and_past_the_end_fails() {
    on_each_layout(|dev, mut r| {
        r.header(1, 0);
        let write = [(HDR, 16, false), (DATA, 4096, false), (STATUS, 1, true)];
        assert_eq!(r.submit(&dev, &write), (1, S_OK));
        r.header(4, 0);
        assert_eq!(
            r.submit(&dev, &[(HDR, 16, false), (STATUS, 1, true)]),
            (1, S_OK)
        );
        // The last sector is 2047: a 2-sector write from there does not fit.
        r.header(1, 2047);
        let write = [(HDR, 16, false), (DATA, 1024, false), (STATUS, 1, true)];
        assert_eq!(r.submit(&dev, &write), (1, S_IOERR));
    });
}

#[test]
fn get_id_names_the_disk_and_unknown_types_are_unsupported() {
    on_each_layout(|dev, mut r| {
        r.header(8, 0);
        let (len, status) = r.submit_read(&dev, 20);
        assert_eq!((len, status), (21, S_OK));
        let mut id = [0u8; 8];
        r.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"null-blk");
        r.header(99, 0);
        assert_eq!(
            r.submit(&dev, &[(HDR, 16, false), (STATUS, 1, true)]),
            (1, S_UNSUPP)
        );
    });
}

#[test]
fn short_header_gets_an_error_status() {
    on_each_layout(|dev, mut r| {
        assert_eq!(
            r.submit(&dev, &[(HDR, 8, false), (STATUS, 1, true)]),
            (1, S_IOERR)
        );
    });
}

#[test]
fn the_used_length_runs_to_the_status_byte_at_the_end_of_the_writable_bytes() {
    for packed in LAYOUTS {
        let dev = NullBlk::new(1 << 20);
        // GET_ID with a 64-byte buffer: 20 bytes of id, the status in the last byte.
        let mut r = Ring::new(packed);
        r.header(8, 0); // GET_ID
        let got = r.submit_read(&dev, 64);
        assert_eq!(got, (65, S_OK));
        // A read past the end: an error status, and the used length of the writable bytes.
        let mut r = Ring::new(packed);
        r.header(0, 1 << 20); // IN
        let got = r.submit_read(&dev, 512);
        assert_eq!(got, (513, S_IOERR));
    }
}

#[test]
fn a_read_over_the_data_limit_fails_before_writing_anything() {
    for packed in LAYOUTS {
        let dev = NullBlk::new(1 << 40);
        let mut r = Ring::with_memory(4 << 20, packed);
        r.mem.write_slice(&[0x55; 16], GuestAddress(DATA)).unwrap();
        r.header(0, 0); // IN
                        // Fourteen aliased buffers of 3 MiB: 42 MiB, over MAX_DATA.
        let mut bufs = vec![(HDR, 16, false)];
        bufs.extend(std::iter::repeat_n((DATA, 3 << 20, true), 14));
        bufs.push((STATUS, 1, true));
        let got = r.submit(&dev, &bufs);
        assert_eq!(got, (14 * (3 << 20) + 1, S_IOERR));
        let mut head = [0u8; 16];
        r.mem.read_slice(&mut head, GuestAddress(DATA)).unwrap();
        assert_eq!(head, [0x55; 16], "nothing was zeroed");
    }
}
