//! Inflight I/O tracking (INFLIGHT_SHMFD) through the real server and runtime: who is
//! offered it, the area GET_INFLIGHT_FD creates, SET_INFLIGHT_FD's validation against hostile
//! values (each refused with the failure reply while the session goes on), and a back-end
//! that loses the requests it held being replaced by one that resubmits them, in the order
//! they were taken. Around a restart: the restarted back-end calls the guest for what its
//! predecessor published without calling (with and without EVENT_IDX), GET_VRING_BASE never
//! answers a base covering resubmitted requests it did not run, a fresh area resumes at the
//! base, and an area that could shrink under the mapping is refused.

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
    /// While set, `process_queue` pops nothing and answers `Paused` (back-pressure).
    paused: Arc<AtomicBool>,
    held: Arc<Mutex<Vec<Request>>>,
    seen: Arc<Mutex<Vec<u16>>>,
}

fn finish(req: Request) {
    let data = vec![req.head() as u8; req.writable_len() as usize];
    // A buffer the guest cannot take completes with nothing written.
    let len = req
        .write_writable(0, &data)
        .map_or(0, |()| data.len() as u32);
    req.complete(len);
}

impl VirtioDevice for Tracked {
    vhost_test_support::device_basics!(self; device_type: 2, queues: 2, max_queue_size: 256);
    fn supports_inflight_tracking(&self) -> bool {
        true
    }
    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        if self.paused.load(Ordering::SeqCst) {
            return Ok(Processed::Paused);
        }
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

/// A memfd that can be sealed (as QEMU's, libvhost-user's and DPDK's areas are).
fn memfd(len: u64) -> File {
    memfd_with(len, nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING)
}

fn memfd_with(len: u64, flags: nix::sys::memfd::MFdFlags) -> File {
    let fd = nix::sys::memfd::memfd_create(c"test-inflight", flags).expect("memfd");
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
    fe.set_vring_addr(&q.vring_addr(&mem)).unwrap();
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

/// Makes three chains available, each one writable 32-byte buffer (at `first`, then
/// 0x1000 apart), published one by one with no back-end there; returns their heads.
fn make_available(q: &mut GuestQueue, first: u64) -> Vec<u16> {
    (0..3u64)
        .map(|i| {
            let h = q
                .driver
                .add_chain(&[(GuestAddress(first + i * 0x1000), 32, true)])
                .unwrap();
            q.driver.publish().unwrap();
            h
        })
        .collect()
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
    let heads = make_available(&mut q, DATA + 0x4000);
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

/// Waits (bounded) until `cond` holds.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !cond() {
        assert!(std::time::Instant::now() < deadline, "{what}: timed out");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A back-end holding every request, its stop bounded to 100 ms.
fn holding() -> (Tracked, Arc<AtomicBool>, Arc<Mutex<Vec<Request>>>) {
    let dev = Tracked::default();
    dev.hold.store(true, Ordering::SeqCst);
    let (hold, held) = (Arc::clone(&dev.hold), Arc::clone(&dev.held));
    (dev, hold, held)
}

type Session = (
    Frontend,
    std::thread::JoinHandle<DeviceBackend<Tracked>>,
    Option<(Inflight, OwnedFd)>,
);

/// Serves `dev` with a 100 ms stop bound (a back-end holding requests loses them quickly);
/// handshake, memory table and (when `area` is `None`) a new inflight area, which is
/// returned.
fn session(
    dev: Tracked,
    mem: &GuestMemory,
    event_idx: bool,
    area: Option<(&Inflight, &OwnedFd)>,
) -> Session {
    session_with(dev, mem, event_idx, area, Duration::from_millis(100))
}

/// [`session`] with the stop bound `quiesce`.
fn session_with(
    dev: Tracked,
    mem: &GuestMemory,
    event_idx: bool,
    area: Option<(&Inflight, &OwnedFd)>,
    quiesce: Duration,
) -> Session {
    let backend = DeviceBackend::new(dev)
        .unwrap()
        .with_quiesce_timeout(quiesce);
    let (mut fe, t) = serve_in_thread(backend);
    handshake(&mut fe, true, event_idx);
    send_mem_table(&mut fe, mem);
    let created = match area {
        Some((info, fd)) => {
            fe.set_inflight_fd(info, fd.as_fd())
                .expect("SET_INFLIGHT_FD");
            None
        }
        None => {
            let (info, fd) = fe
                .get_inflight_fd(&ask(1, QUEUE_SIZE))
                .expect("GET_INFLIGHT_FD");
            fe.set_inflight_fd(&info, fd.as_fd())
                .expect("SET_INFLIGHT_FD");
            Some((info, fd))
        }
    };
    (fe, t, created)
}

/// The first back-end of the restart-call tests: it holds what it pops, gets `n` requests
/// (A first, then B, ...), publishes A alone (used index 1) and dies; the call for A, if
/// made, is lost with it. Returns the guest memory, the queue and the inflight area for
/// the next back-end.
fn publish_a_and_die(event_idx: bool, n: u64) -> (GuestMemory, GuestQueue, Inflight, OwnedFd) {
    let mem = two_region_memory();
    let mut q = GuestQueue::new(&mem, 0, event_idx);
    let (dev, _hold, held) = holding();
    let (mut fe, t, area) = session(dev, &mem, event_idx, None);
    let (info, area) = area.unwrap();
    q.start(&mut fe, &mem, 0, true);
    for i in 1..=n {
        q.submit((DATA, 16), (DATA + 0x1000 * i, 64));
    }
    wait_until("the device holds every request", || {
        held.lock().unwrap().len() == n as usize
    });
    let a = held.lock().unwrap().remove(0);
    finish(a);
    wait_until("A published", || used_idx(&mem, &q) == 1);
    // The call for A, if made, is lost with the back-end: drop the session first so that
    // no later call can land, then swallow it.
    drop(fe);
    t.join().unwrap();
    held.lock().unwrap().clear();
    let _ = q.call.read();
    (mem, q, info, area)
}

/// EVENT_IDX. The guest has A and B in flight and asked to be called at used entry 0. The
/// back-end publishes A (used index 1) and dies before its call (the test swallows it).
/// The next back-end resubmits B and publishes it (used index 2): virtio-queue's check
/// alone (used_event 0 is not in [1, 2)) would call nobody, and the guest, which moves
/// used_event only when it reaps, would wait for ever. The restarted back-end must call.
#[test]
fn a_restarted_back_end_calls_the_guest_for_what_its_predecessor_published_with_event_idx() {
    let (mem, q, info, area) = publish_a_and_die(true, 2);
    let (mut fe, t, _) = session(Tracked::default(), &mem, true, Some((&info, &area)));
    q.start(&mut fe, &mem, u32::from(used_idx(&mem, &q)), true);
    wait_until("B published", || used_idx(&mem, &q) == 2);
    let called = vhost_frontend::VirtqueueDriver::wait_call(&q.call, Duration::from_secs(2));
    drop(fe);
    t.join().unwrap();
    assert!(
        matches!(called, Ok(true)),
        "two completions on the used ring, the guest was never called: {called:?}"
    );
}

/// No EVENT_IDX. The back-end publishes the only request in flight and dies before its
/// call. Nothing is left to resubmit, so nothing completes after the restart: the
/// restarted back-end must still call the guest once, or a guest waiting for that request
/// waits for ever.
#[test]
fn a_restarted_back_end_calls_the_guest_once_even_with_nothing_to_resubmit() {
    let (mem, q, info, area) = publish_a_and_die(false, 1);
    let (mut fe, t, _) = session(Tracked::default(), &mem, false, Some((&info, &area)));
    q.start(&mut fe, &mem, 1, true);
    let called = vhost_frontend::VirtqueueDriver::wait_call(&q.call, Duration::from_secs(2));
    drop(fe);
    t.join().unwrap();
    assert!(
        matches!(called, Ok(true)),
        "the restarted back-end never called: {called:?}"
    );
}

/// A, B and C taken, B completed, the back-end lost: the next back-end has A and C to
/// resubmit. Returns the three heads, the area and the guest queue.
fn lose_a_and_c(mem: &GuestMemory) -> (GuestQueue, Vec<u16>, Inflight, OwnedFd) {
    let mut q = GuestQueue::new(mem, 0, false);
    let (dev, _hold, held) = holding();
    let (mut fe, t, area) = session(dev, mem, false, None);
    let (info, area) = area.unwrap();
    q.start(&mut fe, mem, 0, true);
    let heads: Vec<u16> = (0..3u64)
        .map(|i| q.submit((DATA, 16), (DATA + 0x1000 * (i + 1), 64)))
        .collect();
    wait_until("the device holds three", || held.lock().unwrap().len() == 3);
    let b = held.lock().unwrap().remove(1);
    finish(b);
    assert_eq!(q.wait_used().id, heads[1]);
    drop(fe);
    t.join().unwrap();
    held.lock().unwrap().clear();
    (q, heads, info, area)
}

/// The restarted back-end's device pushes back (Paused) when the ring starts, so the
/// resubmitted A and C are still queued when GET_VRING_BASE comes; the device is ready again
/// by then. The stop runs them before answering: the base it answers covers requests that
/// really completed, and a migration destination (a fresh area, that base) owes nothing.
#[test]
fn get_vring_base_runs_the_resubmitted_requests_before_answering() {
    let mem = two_region_memory();
    let (mut q, heads, info, area) = lose_a_and_c(&mem);
    let dev = Tracked::default();
    dev.paused.store(true, Ordering::SeqCst);
    let (paused, seen) = (Arc::clone(&dev.paused), Arc::clone(&dev.seen));
    // The stop waits as long as it takes the worker to run them (a loaded machine).
    let (mut fe, t, _) = session_with(dev, &mem, false, Some((&info, &area)), TIMEOUT);
    q.start(&mut fe, &mem, u32::from(used_idx(&mem, &q)), true);
    std::thread::sleep(Duration::from_millis(50));
    assert!(seen.lock().unwrap().is_empty(), "the device was paused");
    paused.store(false, Ordering::SeqCst);
    let base = fe.get_vring_base(0).expect("a clean stop");
    drop(fe);
    t.join().unwrap();
    assert_eq!(base, 3, "every entry the driver made available");
    let mut got = Vec::new();
    while let Some(u) = q.driver.pop_used().unwrap() {
        got.push(u.id);
    }
    got.sort_unstable();
    assert_eq!(
        got,
        vec![heads[0], heads[2]],
        "A and C completed before the answer"
    );
    assert_eq!(*seen.lock().unwrap(), vec![heads[0], heads[2]]);
    assert_eq!(q.driver.in_flight(), 0);
}

/// The same, but the device stays paused: GET_VRING_BASE must not answer a clean base
/// covering A and C (QEMU would take them as done, and a migration destination would never
/// run them). It fails, and the area still holds them: the next back-end handed it runs
/// A and C exactly once.
#[test]
fn get_vring_base_with_resubmits_the_device_never_ran_is_not_a_clean_stop() {
    let mem = two_region_memory();
    let (mut q, heads, info, area) = lose_a_and_c(&mem);
    let dev = Tracked::default();
    dev.paused.store(true, Ordering::SeqCst);
    let (mut fe, t, _) = session(dev, &mem, false, Some((&info, &area)));
    q.start(&mut fe, &mem, u32::from(used_idx(&mem, &q)), true);
    std::thread::sleep(Duration::from_millis(50));
    let base = fe.get_vring_base(0);
    drop(fe);
    t.join().unwrap();
    assert!(
        base.is_err(),
        "a clean base {base:?} with A and C never run"
    );

    let dev = Tracked::default();
    let seen = Arc::clone(&dev.seen);
    let (mut fe, t, _) = session(dev, &mem, false, Some((&info, &area)));
    q.start(&mut fe, &mem, u32::from(used_idx(&mem, &q)), true);
    let mut got: Vec<u16> = (0..2).map(|_| q.wait_used().id).collect();
    std::thread::sleep(Duration::from_millis(50));
    drop(fe);
    t.join().unwrap();
    got.sort_unstable();
    assert_eq!(got, vec![heads[0], heads[2]], "A and C exactly once");
    assert_eq!(*seen.lock().unwrap(), vec![heads[0], heads[2]]);
    assert_eq!(q.driver.pop_used().unwrap(), None, "nothing twice");
}

/// A fresh area (a migration destination, or a first start) knows nothing: the ring
/// resumes at SET_VRING_BASE, as without tracking, even where it differs from the used
/// index.
#[test]
fn a_fresh_area_resumes_at_the_base_not_the_used_index() {
    let mem = two_region_memory();
    let mut q = GuestQueue::new(&mem, 0, false);
    // Three chains available, none used; the source says the first two were taken.
    let heads = make_available(&mut q, DATA + 0x1000);
    let dev = Tracked::default();
    let seen = Arc::clone(&dev.seen);
    let (mut fe, t, _area) = session(dev, &mem, false, None);
    q.start(&mut fe, &mem, 2, true);
    assert_eq!(q.wait_used().id, heads[2]);
    std::thread::sleep(Duration::from_millis(50));
    drop(fe);
    t.join().unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        vec![heads[2]],
        "only the one after the base"
    );
}

/// The area must be sealed against shrinking (QEMU hands back the back-end's own sealed
/// memfd): a memfd created without MFD_ALLOW_SEALING, or a plain file, could be truncated
/// under the mapping, and the next access to it would kill the daemon with SIGBUS. Each is
/// refused with the failure reply and the session goes on; a sealable memfd is sealed.
#[test]
fn an_area_that_cannot_be_sealed_against_shrinking_is_refused() {
    let (mut fe, t) = tracked();
    handshake(&mut fe, true, false);
    let mem = two_region_memory();
    send_mem_table(&mut fe, &mem);
    let needed = split_area_size(1, QUEUE_SIZE);
    let info = Inflight {
        mmap_size: needed,
        ..ask(1, QUEUE_SIZE)
    };
    let unsealable = memfd_with(needed, nix::sys::memfd::MFdFlags::empty());
    let dir = std::env::temp_dir().join(format!("inflight-plain-{}", std::process::id()));
    // Read-write, created or truncated: a plain file that cannot be sealed.
    let mode = nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR;
    let flags = nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CREAT | nix::fcntl::OFlag::O_TRUNC;
    let plain = File::from(nix::fcntl::open(&dir, flags, mode).unwrap());
    std::fs::remove_file(&dir).unwrap();
    plain.set_len(needed).unwrap();
    for (what, f) in [("unsealable memfd", &unsealable), ("plain file", &plain)] {
        assert_ne!(
            send_set_inflight(&fe, &info, &[f.as_fd()]),
            0,
            "{what}: accepted"
        );
        assert_session_goes_on(&mut fe);
    }
    // The truncation the refusal guards against: the ring starts untracked, and survives.
    unsealable.set_len(0).unwrap();
    let q = GuestQueue::new(&mem, 0, false);
    q.start(&mut fe, &mem, 0, true);
    assert_session_goes_on(&mut fe);
    fe.get_vring_base(0).expect("GET_VRING_BASE");
    // A sealable memfd is taken (between ring starts), and sealed: it can no longer shrink.
    let sealable = memfd(needed);
    assert_eq!(send_set_inflight(&fe, &info, &[sealable.as_fd()]), 0);
    assert!(sealable.set_len(0).is_err(), "sealed against shrinking");
    drop(fe);
    t.join().unwrap();
}
