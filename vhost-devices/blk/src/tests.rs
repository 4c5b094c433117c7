//! Request parsing and hostile chains, over hand-built split rings in a `GuestMemoryMmap`
//! of two adjacent regions (so buffers can straddle a region boundary).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use vhost_backend::runtime::testing::{RingSpec, TestQueue};
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
        Harness::try_in(&std::env::temp_dir(), tweak, align)
    }

    /// [`try_with`](Self::try_with) with the image in `dir`.
    fn try_in(
        dir: &std::path::Path,
        tweak: impl FnOnce(&mut BlkConfig),
        align: Option<direct::DirectAlign>,
    ) -> Result<Harness, Error> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!("vhost-blk-unit-{}-{n}.img", std::process::id()));
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
        let queue =
            TestQueue::new(mem.clone(), RingSpec::split(0, QSIZE, [DESC, AVAIL, USED])).unwrap();
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
        self.settle(10, "requests never completed");
        self.take_used()
    }

    /// The used entries the ring holds past `used_seen`, which moves past them.
    fn take_used(&mut self) -> Vec<(u16, u32)> {
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

    /// `used` holds each of the 513-byte reads `heads` (of sectors 0, 1, ...) exactly once,
    /// in any order, and each read's data landed in its buffer.
    fn assert_reads_each_once(&self, used: Vec<(u16, u32)>, heads: &[u16]) {
        assert_eq!(used.len(), heads.len());
        let mut seen = std::collections::HashSet::new();
        for (head, len) in used {
            assert!(seen.insert(head), "head {head} returned twice");
            assert_eq!(len, 513, "head {head}");
            let i = heads
                .iter()
                .position(|&x| x == head)
                .expect("a head submitted") as u64;
            let got = self.guest(DATA + 0x10000 + i * 512, 512);
            assert_eq!(got, expected(i, 512), "request {i}");
        }
    }

    /// Reaps and publishes until no request is outstanding; fails with `stuck` after `secs`.
    fn settle(&self, secs: u64, stuck: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        while self.queue.outstanding() > 0 {
            assert!(std::time::Instant::now() < deadline, "{stuck}");
            std::thread::sleep(std::time::Duration::from_millis(1));
            self.reap();
            self.queue.publish();
        }
    }

    /// Submits 30 reads and stops the queue while they are in flight: the stop answers
    /// base 30 and only once every request has completed.
    fn stop_with_30_reads_in_flight(&mut self) {
        self.submit_reads(30);
        self.queue.process(&self.dev).unwrap();
        let base = self.stop_while_reaping();
        assert_eq!(base, 30);
        let used_idx: u16 = self.mem.read_obj(GuestAddress(USED + 2)).unwrap();
        assert_eq!(
            used_idx, 30,
            "every request completed before the stop answered"
        );
    }

    /// The status byte at `ST` says VIRTIO_BLK_S_IOERR (a request answered after a panic),
    /// and a read through `ST` is then served.
    fn answered_ioerr_and_the_queue_still_serves(&mut self) {
        assert_eq!(
            self.mem.read_obj::<u8>(GuestAddress(ST)).unwrap(),
            VIRTIO_BLK_S_IOERR
        );
        self.header(HDR, VIRTIO_BLK_T_IN, 0);
        let r = self.one(&[(HDR, 16, false), (BUF, 512, true), (ST, 1, true)], ST);
        assert_eq!(r, (513, VIRTIO_BLK_S_OK), "the queue still serves");
    }

    /// The next request the device serves panics (on whichever thread serves it).
    fn panic_on_next_request(&self) {
        self.dev
            .core
            .panic_next
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// What the queue's worker does when the device's descriptors are readable: an engine
    /// that completes requests on its own event (io_uring) reaps them.
    fn reap(&self) {
        for fd in self.dev.worker_fds(0) {
            self.dev.handle_event(0, fd.token).unwrap();
        }
    }

    /// Stops the queue as GET_VRING_BASE does (up to 10 s) on another thread while this one
    /// reaps as the queue's worker would; returns the base.
    fn stop_while_reaping(&self) -> u32 {
        std::thread::scope(|s| {
            let stop = s.spawn(|| self.queue.stop(std::time::Duration::from_secs(10)));
            while !stop.is_finished() {
                self.reap();
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            stop.join().unwrap().unwrap()
        })
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

/// The request matrix on every engine: `AIO` is the engine, `harness*` build on it.
macro_rules! matrix_on {
    ($name:ident, $aio:expr) => {
        mod $name {
            use super::*;

            const AIO: Aio = $aio;

            fn harness(read_only: bool) -> Harness {
                Harness::with(|c| {
                    c.aio = AIO;
                    c.read_only = read_only;
                })
            }

            include!("tests/matrix.rs");
        }
    };
}

matrix_on!(sync, Aio::Sync);
matrix_on!(threads_matrix, Aio::Threads(4));
matrix_on!(io_uring_matrix, Aio::IoUring);

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

/// Requests completed after `process_queue` returned, out of order, on every engine that
/// keeps requests in flight: `AIO` is the engine.
macro_rules! in_flight_on {
    ($name:ident, $aio:expr) => {
        mod $name {
            const AIO: Aio = $aio;
            use super::*;

            fn harness() -> Harness {
                Harness::with(|c| c.aio = AIO)
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
                let heads = h.submit_reads(40);
                let used = h.run();
                assert_eq!(used.len(), 40);
                h.assert_reads_each_once(used, &heads);
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
                harness().stop_with_30_reads_in_flight();
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
    };
}

in_flight_on!(threads, Aio::Threads(4));
in_flight_on!(io_uring, Aio::IoUring);

mod uring;

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
        h.settle(5, "the flush waits for a write queued behind it: deadlock");
        assert_eq!(&h.file()[512..1024], &[7u8; 512][..]);
    }
}

#[test]
fn a_panic_serving_a_write_on_an_io_thread_leaves_flushes_and_the_thread_working() {
    panic_on_a_write_then_flush_and_read(Aio::Threads(1));
}

/// The sync engine (requests served on the worker's thread with `serve_next`) handles a
/// panic as the I/O threads do: the request is answered VIRTIO_BLK_S_IOERR and the requests
/// after it in the same batch are still served.
#[test]
fn a_panic_serving_a_request_on_the_spot_leaves_the_batch_and_the_queue_working() {
    panic_on_a_write_then_flush_and_read(Aio::Sync);
}

/// A request the I/O threads hand back (none left to take it) is served on the worker, and
/// a panic there is caught as on an I/O thread.
#[test]
fn a_panic_serving_a_request_the_pool_handed_back_leaves_the_queue_working() {
    let mut h = Harness::with(|c| c.aio = Aio::Threads(1));
    h.dev.pool.as_ref().unwrap().close();
    h.panic_on_next_request();
    h.header(HDR, VIRTIO_BLK_T_OUT, 1);
    // A status byte left from an earlier request reads as success.
    h.mem.write_obj(VIRTIO_BLK_S_OK, GuestAddress(ST)).unwrap();
    let write = h.submit(&[(HDR, 16, false), (BUF, 512, false), (ST, 1, true)]);
    assert_eq!(
        h.run(),
        vec![(write, 1)],
        "the panicked write comes back with its status byte"
    );
    h.answered_ioerr_and_the_queue_still_serves();
}

/// With engine `aio`: a write whose serving panics is answered VIRTIO_BLK_S_IOERR (not
/// with a status byte left from an earlier request), the flush behind it in the same batch
/// still completes, and a later read is served.
fn panic_on_a_write_then_flush_and_read(aio: Aio) {
    let mut h = Harness::with(|c| c.aio = aio);
    h.panic_on_next_request();
    h.header(HDR, VIRTIO_BLK_T_OUT, 1);
    h.mem.write_obj(VIRTIO_BLK_S_OK, GuestAddress(ST)).unwrap();
    let write = h.submit(&[(HDR, 16, false), (BUF, 512, false), (ST, 1, true)]);
    let fhdr = HDR + 0x100;
    h.header(fhdr, VIRTIO_BLK_T_FLUSH, 0);
    let flush = h.submit(&[(fhdr, 16, false), (ST + 1, 1, true)]);
    let used = h.run();
    assert_eq!(
        used,
        vec![(write, 1), (flush, 1)],
        "{aio:?}: the flush after the panic still completes"
    );
    assert_eq!(
        h.mem.read_obj::<u8>(GuestAddress(ST)).unwrap(),
        VIRTIO_BLK_S_IOERR,
        "{aio:?}: the panicked write is an I/O error"
    );
    h.header(HDR, VIRTIO_BLK_T_IN, 0);
    let r = h.one(&[(HDR, 16, false), (BUF, 512, true), (ST, 1, true)], ST);
    assert_eq!(r, (513, VIRTIO_BLK_S_OK), "{aio:?}: the queue still serves");
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
