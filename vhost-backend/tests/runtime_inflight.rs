//! Inflight I/O tracking (INFLIGHT_SHMFD) through the real server and runtime: who is
//! offered it, the area GET_INFLIGHT_FD creates, SET_INFLIGHT_FD's validation against hostile
//! values (each refused with the failure reply while the session goes on), and a back-end
//! that loses the requests it held being replaced by one that resubmits them, in the order
//! they were taken.

#![cfg(unix)]

mod runtime_support;

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use runtime_support::*;
use vhost_backend::runtime::{
    DeviceBackend, DeviceError, Processed, QueueContext, Request, VirtioDevice,
};
use vhost_frontend::{Frontend, GuestMemory};
use vhost_proto::inflight::split_area_size;
use vhost_proto::{FrontendReq, Header, HeaderFlags, Inflight, ProtocolFeatures};
use vm_memory::{Bytes, GuestAddress};

const DATA: u64 = 0x4000_0000;

/// Two queues of at most 256 entries; holds the requests it pops while `hold` is set,
/// otherwise fills their writable bytes with the head's low byte and completes them. Records
/// the heads it is handed, in order.
#[derive(Default)]
struct Tracked {
    hold: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<Request>>>,
    seen: Arc<Mutex<Vec<u16>>>,
}

fn finish(req: Request) {
    let data = vec![req.head() as u8; req.writable_len() as usize];
    let len = match req.write_writable(0, &data) {
        Ok(()) => data.len() as u32,
        Err(_) => 0,
    };
    req.complete(len);
}

impl VirtioDevice for Tracked {
    fn device_type(&self) -> u32 {
        2
    }
    fn num_queues(&self) -> usize {
        2
    }
    fn max_queue_size(&self) -> u16 {
        256
    }
    fn features(&self) -> u64 {
        0
    }
    fn supports_inflight_tracking(&self) -> bool {
        true
    }
    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        while let Some(req) = ctx.pop() {
            self.seen.lock().unwrap().push(req.head());
            if self.hold.load(Ordering::SeqCst) {
                self.held.lock().unwrap().push(req);
            } else {
                finish(req);
            }
        }
        Ok(Processed::Drained)
    }
}

fn tracked() -> (Frontend, std::thread::JoinHandle<DeviceBackend<Tracked>>) {
    let backend = DeviceBackend::new(Tracked::default())
        .expect("backend")
        .with_quiesce_timeout(Duration::from_millis(200));
    serve_in_thread(backend)
}

fn ask(num_queues: u16, queue_size: u16) -> Inflight {
    Inflight {
        num_queues,
        queue_size,
        ..Inflight::default()
    }
}

fn assert_session_goes_on(fe: &mut Frontend) {
    assert_eq!(
        fe.get_queue_num().expect("GET_QUEUE_NUM after a refusal"),
        2
    );
}

fn memfd(len: u64) -> File {
    let fd = nix::sys::memfd::memfd_create(c"test-inflight", nix::sys::memfd::MFdFlags::empty())
        .expect("memfd");
    let f = File::from(fd);
    f.set_len(len).expect("size");
    f
}

#[test]
fn inflight_shmfd_is_offered_only_to_devices_that_opt_in() {
    let (mut fe, t) = tracked();
    let p = fe.get_protocol_features().expect("GET_PROTOCOL_FEATURES");
    assert!(p.contains(ProtocolFeatures::INFLIGHT_SHMFD));
    drop(fe);
    t.join().unwrap();

    let (dev, _) = PatternDevice::new(1);
    let (mut fe, t) = serve_in_thread(DeviceBackend::new(dev).expect("backend"));
    let p = fe.get_protocol_features().expect("GET_PROTOCOL_FEATURES");
    assert!(!p.contains(ProtocolFeatures::INFLIGHT_SHMFD));
    drop(fe);
    t.join().unwrap();
}

#[test]
fn get_inflight_fd_gives_a_zeroed_sealed_area_of_the_spec_size() {
    let (mut fe, t) = tracked();
    handshake(&mut fe, true, false);
    let (info, fd) = fe.get_inflight_fd(&ask(2, 128)).expect("GET_INFLIGHT_FD");
    assert_eq!(
        info.mmap_size,
        2 * 2112,
        "ALIGN_UP(16 * 128 + 2, 64) per queue"
    );
    assert_eq!(info.mmap_offset, 0);
    assert_eq!((info.num_queues, info.queue_size), (2, 128));
    let f = File::from(fd);
    assert_eq!(f.metadata().unwrap().len(), info.mmap_size);
    assert!(f.set_len(64).is_err(), "the area cannot shrink");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &f, &mut bytes).unwrap();
    assert!(bytes.iter().all(|&b| b == 0), "zeroed");
    drop(fe);
    t.join().unwrap();
}

#[test]
fn get_inflight_fd_with_a_queue_count_or_size_the_device_lacks_is_refused() {
    let (mut fe, t) = tracked();
    handshake(&mut fe, true, false);
    for (nq, qs) in [(0, 128), (3, 128), (2, 0), (2, 512), (u16::MAX, u16::MAX)] {
        assert!(
            fe.get_inflight_fd(&ask(nq, qs)).is_err(),
            "{nq} queues of {qs}"
        );
        assert_session_goes_on(&mut fe);
    }
    drop(fe);
    t.join().unwrap();
}

fn send_set_inflight(fe: &Frontend, info: &Inflight, fds: &[BorrowedFd<'_>]) -> u64 {
    use zerocopy::IntoBytes;
    let h = Header::new(
        FrontendReq::SetInflightFd as u32,
        HeaderFlags::NEED_REPLY,
        24,
    );
    fe.send_raw(&h, info.as_bytes(), fds).expect("send");
    let (h, body, fds) = fe.recv_raw().expect("a reply");
    assert_eq!(h.request, FrontendReq::SetInflightFd as u32);
    assert!(fds.is_empty());
    u64::from_ne_bytes(body.as_slice().try_into().expect("an 8-byte ack"))
}

#[test]
fn set_inflight_fd_with_hostile_values_is_refused_and_the_session_goes_on() {
    let (mut fe, t) = tracked();
    handshake(&mut fe, true, false);
    let (good, area) = fe.get_inflight_fd(&ask(2, 64)).expect("GET_INFLIGHT_FD");
    let needed = split_area_size(2, 64);
    let area_fd = area.as_fd();
    let eventfd = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
    let event_fd = bfd(&eventfd);
    let short = memfd(needed - 1);
    let big = memfd(2 * needed + 4096);
    let cases: Vec<(&str, Inflight, Vec<BorrowedFd<'_>>)> = vec![
        (
            "mmap_size too small",
            Inflight {
                mmap_size: needed - 1,
                ..good
            },
            vec![area_fd],
        ),
        (
            "no queues",
            Inflight {
                num_queues: 0,
                ..good
            },
            vec![area_fd],
        ),
        (
            "more queues than the device",
            Inflight {
                num_queues: 3,
                ..good
            },
            vec![area_fd],
        ),
        (
            "queue size 0",
            Inflight {
                queue_size: 0,
                ..good
            },
            vec![area_fd],
        ),
        (
            "queue size over the maximum",
            Inflight {
                queue_size: 512,
                ..good
            },
            vec![area_fd],
        ),
        (
            "queue size the area is too small for",
            Inflight {
                queue_size: 128,
                ..good
            },
            vec![area_fd],
        ),
        ("no descriptor", good, vec![]),
        ("two descriptors", good, vec![area_fd, area_fd]),
        ("an eventfd", good, vec![event_fd]),
        ("a file shorter than the area", good, vec![short.as_fd()]),
        (
            "an offset past the file",
            Inflight {
                mmap_offset: 2 * needed + 4096,
                ..good
            },
            vec![big.as_fd()],
        ),
        (
            "an offset that overflows",
            Inflight {
                mmap_offset: u64::MAX - 8,
                ..good
            },
            vec![big.as_fd()],
        ),
        (
            "an offset that is not page-aligned",
            Inflight {
                mmap_offset: 8,
                ..good
            },
            vec![big.as_fd()],
        ),
    ];
    for (what, info, fds) in &cases {
        assert_ne!(send_set_inflight(&fe, info, fds), 0, "{what}: accepted");
        assert_session_goes_on(&mut fe);
    }
    // The area QEMU would hand back is taken, also at an offset in a larger file.
    assert_eq!(send_set_inflight(&fe, &good, &[area_fd]), 0);
    let at_offset = Inflight {
        mmap_offset: 4096,
        ..good
    };
    assert_eq!(send_set_inflight(&fe, &at_offset, &[big.as_fd()]), 0);
    drop(fe);
    t.join().unwrap();
}

/// Queue 0 with the area of `area`, its ring size `size`, its base `base`.
fn start_tracked(
    fe: &mut Frontend,
    mem: &GuestMemory,
    q: &GuestQueue,
    info: &Inflight,
    area: &OwnedFd,
    base: u32,
) {
    fe.set_inflight_fd(info, area.as_fd())
        .expect("SET_INFLIGHT_FD");
    q.start(fe, mem, base, true);
}

#[test]
fn a_ring_larger_than_the_area_queue_size_does_not_start() {
    let (mut fe, t) = tracked();
    handshake(&mut fe, true, false);
    let mem = two_region_memory();
    send_mem_table(&mut fe, &mem);
    // Queue size 32 in the area, 64 in the ring.
    let (info, area) = fe.get_inflight_fd(&ask(1, 32)).expect("GET_INFLIGHT_FD");
    fe.set_inflight_fd(&info, area.as_fd())
        .expect("SET_INFLIGHT_FD");
    let q = GuestQueue::new(&mem, 0, false);
    fe.set_vring_num(0, u32::from(QUEUE_SIZE)).unwrap();
    fe.set_vring_base(0, 0).unwrap();
    let a = q.driver.vring_user_addrs(&mem).unwrap();
    fe.set_vring_addr(&vhost_proto::VringAddr {
        index: 0,
        flags: 0,
        desc: a.desc,
        used: a.used,
        avail: a.avail,
        log: 0,
    })
    .unwrap();
    assert!(fe.set_vring_kick(0, Some(bfd(&q.kick))).is_err());
    assert_session_goes_on(&mut fe);
    drop(fe);
    t.join().unwrap();
}

fn used_idx(mem: &GuestMemory, q: &GuestQueue) -> u16 {
    let at = GuestAddress(q.driver.used_ring().0 + 2);
    mem.mem().read_obj(at).expect("used idx")
}

/// A back-end holding requests completes one out of order and loses the others (its stop
/// gives up waiting; its late completions are dropped): the next back-end, handed the same
/// area and the base QEMU computes after a crash (the used index), resubmits exactly the
/// lost requests, in the order they were taken, before new ones, and the driver sees each
/// complete once. (Rewinding the available ring to the used index would run the completed
/// one again and never see the last one.)
#[test]
fn requests_a_lost_back_end_held_are_resubmitted_by_the_next_in_order() {
    let mem = two_region_memory();
    let mut q = GuestQueue::new(&mem, 0, false);

    // First back-end: one request completes, three are held and lost.
    let dev = Tracked::default();
    let (hold, held) = (Arc::clone(&dev.hold), Arc::clone(&dev.held));
    let backend = DeviceBackend::new(dev)
        .unwrap()
        .with_quiesce_timeout(Duration::from_millis(100));
    let (mut fe, t) = serve_in_thread(backend);
    handshake(&mut fe, true, false);
    send_mem_table(&mut fe, &mem);
    let (info, area) = fe
        .get_inflight_fd(&ask(2, QUEUE_SIZE))
        .expect("GET_INFLIGHT_FD");
    start_tracked(&mut fe, &mem, &q, &info, &area, 0);
    let first = q.submit((DATA, 16), (DATA + 0x1000, 64));
    assert_eq!(q.wait_used().id, first);
    hold.store(true, Ordering::SeqCst);
    let mut lost: Vec<u16> = (0..4u64)
        .map(|i| q.submit((DATA, 16), (DATA + 0x2000 + i * 0x1000, 64)))
        .collect();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while held.lock().unwrap().len() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the device never got them"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // The second one completes first.
    let second = held.lock().unwrap().remove(1);
    finish(second);
    assert_eq!(q.wait_used().id, lost.remove(1));
    // The front-end goes away (QEMU sees the back-end die); the stop gives up on them.
    drop(fe);
    t.join().unwrap();
    // Their completions, if they ever come, are dropped: this back-end is gone.
    for r in held.lock().unwrap().drain(..) {
        finish(r);
    }
    assert_eq!(
        used_idx(&mem, &q),
        2,
        "nothing of the lost requests was published"
    );

    // Second back-end: the same area, base = used index as QEMU sets it.
    let dev = Tracked::default();
    let seen = Arc::clone(&dev.seen);
    let (mut fe, t) = serve_in_thread(DeviceBackend::new(dev).unwrap());
    handshake(&mut fe, true, false);
    send_mem_table(&mut fe, &mem);
    start_tracked(
        &mut fe,
        &mem,
        &q,
        &info,
        &area,
        u32::from(used_idx(&mem, &q)),
    );
    let mut got: Vec<u16> = (0..3).map(|_| q.wait_used().id).collect();
    got.sort_unstable();
    let mut want = lost.clone();
    want.sort_unstable();
    assert_eq!(got, want, "each lost request completes once");
    assert_eq!(
        *seen.lock().unwrap(),
        lost,
        "resubmitted in the order they were taken"
    );
    for (i, &head) in lost.iter().enumerate() {
        let mut b = [0u8; 64];
        let slot = [0u64, 2, 3][i];
        mem.mem()
            .read_slice(&mut b, GuestAddress(DATA + 0x2000 + slot * 0x1000))
            .unwrap();
        assert!(
            b.iter().all(|&x| x == head as u8),
            "request {head} was served"
        );
    }
    // New requests come after them, and nothing more is resubmitted.
    let next = q.submit((DATA, 16), (DATA + 0x8000, 64));
    assert_eq!(q.wait_used().id, next);
    assert_eq!(seen.lock().unwrap().len(), 4, "three resubmitted, one new");
    assert_eq!(q.driver.in_flight(), 0);
    // A clean stop: the next start (same area) finds nothing in flight.
    let base = fe.get_vring_base(0).expect("GET_VRING_BASE");
    assert_eq!(base, u32::from(q.driver.avail_idx()));
    drop(fe);
    t.join().unwrap();
    let dev = Tracked::default();
    let seen = Arc::clone(&dev.seen);
    let (mut fe, t) = serve_in_thread(DeviceBackend::new(dev).unwrap());
    handshake(&mut fe, true, false);
    send_mem_table(&mut fe, &mem);
    start_tracked(&mut fe, &mem, &q, &info, &area, base);
    let next = q.submit((DATA, 16), (DATA + 0x8000, 64));
    assert_eq!(q.wait_used().id, next);
    assert_eq!(*seen.lock().unwrap(), vec![next]);
    drop(fe);
    t.join().unwrap();
}

/// An area another back-end (libvhost-user, DPDK) filled, laid out byte by byte as the spec
/// says: queue regions `ALIGN_UP(16 * size + 2, 64)` apart, a 16-byte header (features,
/// version, desc_num, last_batch_head, used_idx) and 16-byte entries (inflight, 5 bytes of
/// padding, next, counter). Its heads in flight are resubmitted in counter order, not head
/// or ring order.
#[test]
fn an_area_written_by_another_back_end_is_resubmitted_in_counter_order() {
    let mem = two_region_memory();
    let mut q = GuestQueue::new(&mem, 0, false);
    // Three chains made available; their back-end died with all three in flight.
    let heads: Vec<u16> = (0..3u64)
        .map(|i| {
            let h = q
                .driver
                .add_chain(&[(GuestAddress(DATA + 0x4000 + i * 0x1000), 32, true)])
                .unwrap();
            q.driver.publish().unwrap();
            h
        })
        .collect();
    let region = 2112u64; // ALIGN_UP(16 * 128 + 2, 64)
    let area = memfd(2 * region);
    let mut bytes = vec![0u8; 2 * region as usize];
    // Queue 1 starts at `region`: the other back-end tracked queue 0 only.
    let hdr = |b: &mut [u8], version: u16, desc_num: u16, last: u16, used: u16| {
        b[8..10].copy_from_slice(&version.to_ne_bytes());
        b[10..12].copy_from_slice(&desc_num.to_ne_bytes());
        b[12..14].copy_from_slice(&last.to_ne_bytes());
        b[14..16].copy_from_slice(&used.to_ne_bytes());
    };
    hdr(&mut bytes, 1, 128, 0, 0);
    for (&h, counter) in heads.iter().zip([41u64, 40, 42]) {
        let e = 16 + 16 * usize::from(h);
        bytes[e] = 1;
        bytes[e + 8..e + 16].copy_from_slice(&counter.to_ne_bytes());
    }
    std::io::Write::write_all(&mut &area, &bytes).unwrap();
    let info = Inflight {
        mmap_size: 2 * region,
        mmap_offset: 0,
        num_queues: 2,
        queue_size: 128,
        padding: [0; 4],
    };

    let dev = Tracked::default();
    let seen = Arc::clone(&dev.seen);
    let (mut fe, t) = serve_in_thread(DeviceBackend::new(dev).unwrap());
    handshake(&mut fe, true, false);
    send_mem_table(&mut fe, &mem);
    fe.set_inflight_fd(&info, area.as_fd())
        .expect("SET_INFLIGHT_FD");
    // QEMU's base after a crash: the used index, 0.
    q.start(&mut fe, &mem, 0, true);
    let mut got: Vec<u16> = (0..3).map(|_| q.wait_used().id).collect();
    got.sort_unstable();
    let mut want = heads.clone();
    want.sort_unstable();
    assert_eq!(got, want);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![heads[1], heads[0], heads[2]],
        "counters 40, 41, 42"
    );
    // The area now records them complete: flags cleared, used_idx 3.
    let mut after = vec![0u8; 2 * region as usize];
    std::os::unix::fs::FileExt::read_exact_at(&area, &mut after, 0).unwrap();
    assert_eq!(u16::from_ne_bytes([after[14], after[15]]), 3, "used_idx");
    for &h in &heads {
        assert_eq!(after[16 + 16 * usize::from(h)], 0, "head {h} still flagged");
    }
    drop(fe);
    t.join().unwrap();
}
