//! Inflight tracking of packed rings (the spec's packed queue region), through the real
//! server and runtime, on both layouts where the scenario is the same:
//!
//! - a back-end holding requests completes them out of order and dies at each of its crash
//!   points in turn (every write to the region or the ring, including between "used
//!   descriptor written" and "inflight flag cleared"); the next back-end, handed the same
//!   area and the stale base QEMU sends after a crash, completes every request exactly
//!   once and the ring goes on;
//! - GET_INFLIGHT_FD sizes the area with the packed layout once RING_PACKED is acked;
//! - a region another back-end wrote (the spec layout, byte by byte) is resubmitted in
//!   counter order;
//! - a region whose contents lie (desc_num, positions, chains, IDs) is refused with the
//!   failure reply, and the session goes on;
//! - split rings: a chain whose indirect table nests another table ends alike, with the
//!   same fault, whether popped or resubmitted from the region.

#![cfg(unix)]

mod runtime_support;

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use runtime_support::*;
use vhost_backend::runtime::{
    ChainFault, DeviceBackend, DeviceError, Processed, QueueContext, Request, RequestOf,
    VirtioDevice,
};
use vhost_frontend::{Frontend, GuestMemory};
use vhost_proto::Inflight;
use vm_memory::{Bytes, GuestAddress};

const DATA: u64 = 0x4000_0000;
/// What QEMU sends as the base of a packed ring after its back-end died: the last one it
/// knew, here the ring's first.
const STALE_PACKED_BASE: u32 = 0x8000_8000;
/// Requests the first back-end holds and completes out of order.
const HELD: usize = 3;

/// One queue. Holds what it pops until it holds [`HELD`], then completes them newest first
/// (unless `at_once`: completes each as it comes; or `spot`: serves each on the spot with
/// `serve_next`, the path of a synchronous device). Each request's writable bytes get its
/// buffer ID's low byte. Records the IDs it is handed.
#[derive(Default)]
struct Holder {
    at_once: bool,
    spot: bool,
    held: Mutex<Vec<Request>>,
    seen: Arc<Mutex<Vec<u16>>>,
}

impl Holder {
    /// A holder that completes each request as it comes.
    fn at_once() -> Self {
        Holder {
            at_once: true,
            ..Holder::default()
        }
    }
}

/// A back-end over a [`Holder::at_once`], served on its own thread.
fn serve_at_once() -> (Frontend, JoinHandle<DeviceBackend<Holder>>) {
    serve_in_thread(DeviceBackend::new(Holder::at_once()).expect("backend"))
}

/// Fills `req`'s writable bytes with its ID's low byte; answers the used length.
fn fill(req: &RequestOf<'_>) -> u32 {
    let data = vec![req.head() as u8; req.writable_len() as usize];
    match req.write_writable(0, &data) {
        Ok(()) => data.len() as u32,
        Err(_) => 0,
    }
}

fn serve(req: Request) {
    let len = fill(&req);
    req.complete(len);
}

impl VirtioDevice for Holder {
    vhost_test_support::device_basics!(self; device_type: 2, queues: 1, max_queue_size: 256);
    fn supports_inflight_tracking(&self) -> bool {
        true
    }
    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        if self.spot {
            while ctx.serve_next(|req| {
                self.seen.lock().unwrap().push(req.head());
                fill(req)
            }) {}
            return Ok(Processed::Drained);
        }
        let mut held = self.held.lock().unwrap();
        while let Some(req) = ctx.pop() {
            self.seen.lock().unwrap().push(req.head());
            held.push(req);
        }
        if self.at_once || held.len() >= HELD {
            while let Some(req) = held.pop() {
                serve(req);
            }
        }
        Ok(Processed::Drained)
    }
}

fn ask() -> Inflight {
    Inflight {
        num_queues: 1,
        queue_size: QUEUE_SIZE,
        ..Inflight::default()
    }
}

/// A threadless back-end on its own thread, crashing at its `crash_after`th crash point
/// (0: never): it then drops everything without stopping or completing anything, as
/// SIGKILL would. The thread answers how it ended. With `spot`, its device serves on the
/// spot.
fn crashing_backend(crash_after: u64, spot: bool) -> (Frontend, JoinHandle<CrashEnd>) {
    let dev = Holder {
        spot,
        ..Holder::default()
    };
    let backend = DeviceBackend::threadless(dev)
        .expect("backend")
        .with_quiesce_timeout(Duration::from_millis(50));
    spawn_crashing(backend, crash_after, None, |_| {})
}

/// The base QEMU sends after the back-end died: split, the used index it reads from guest
/// memory; packed, the last base it knew (`started_at`, the one it sent at the start).
fn stale_base(mem: &GuestMemory, q: &GuestQueue, started_at: u32) -> u32 {
    match layout() {
        Layout::Split => {
            let at = GuestAddress(q.driver.used_ring().0 + 2);
            u32::from(mem.mem().read_obj::<u16>(at).expect("used idx"))
        }
        Layout::Packed => started_at,
    }
}

/// How a crash run fills the ring.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fill {
    /// From the ring's first position, chains of two descriptors.
    FromTheStart,
    /// From 4 descriptors before the ring's end (a back-end without inflight area took the
    /// driver there first, with chains of two), chains of 3, 1 and 1 descriptors in each
    /// round: in a packed ring the first round straddles the end, and its last publish
    /// (the oldest request, of three) moves the used position from 62 across the end to 1,
    /// a position that still holds the previous lap's available flags (a chain's tail
    /// the driver has not made available again).
    NearTheEnd,
}

/// Adds request `k` of a run (its writable 64 bytes at `w`), publishes and kicks.
fn add_request(q: &mut GuestQueue, fill: Fill, k: u64, w: u64) -> u16 {
    let read = (GuestAddress(DATA), 16, false);
    let id = match (fill, k % 3) {
        (Fill::FromTheStart, _) => q
            .driver
            .add_chain(&[read, (GuestAddress(w), 64, true)])
            .expect("add_chain"),
        (Fill::NearTheEnd, 0) => q
            .driver
            .add_chain(&[
                read,
                (GuestAddress(w), 32, true),
                (GuestAddress(w + 32), 32, true),
            ])
            .expect("add_chain"),
        (Fill::NearTheEnd, _) => q
            .driver
            .add_chain(&[(GuestAddress(w), 64, true)])
            .expect("add_chain"),
    };
    if q.driver.publish().expect("publish") {
        q.driver.kick(&q.kick).expect("kick");
    }
    id
}

/// Takes the driver (and the ring) to 4 descriptors before the end of the ring, through a
/// back-end without inflight area.
fn advance_near_the_end(mem: &GuestMemory, q: &mut GuestQueue) {
    let (mut fe, t) = serve_at_once();
    handshake(&mut fe, true, false);
    send_mem_table(&mut fe, mem);
    q.start(&mut fe, mem, 0, true);
    for _ in 0..(QUEUE_SIZE - 4) / 2 {
        let id = q.submit((DATA, 16), (DATA + 0x8000, 64));
        assert_eq!(q.wait_used().id, id);
    }
    drop(fe);
    t.join().unwrap();
}

/// [`GuestQueue::start`] for a back-end that may die on the way (at a crash point of its
/// start): errors are left for the run to notice.
fn start_may_crash(fe: &mut Frontend, mem: &GuestMemory, q: &GuestQueue, base: u32) {
    let _ = fe.set_vring_num(0, u32::from(QUEUE_SIZE));
    let _ = fe.set_vring_base(0, base);
    let _ = fe.set_vring_addr(&q.vring_addr(mem));
    let _ = fe.set_vring_call(0, Some(bfd(&q.call)));
    let _ = fe.set_vring_kick(0, Some(bfd(&q.kick)));
    let _ = fe.set_vring_enable(0, true);
}

/// Reaps used entries until `want` were seen (each checked by the driver: an ID not in
/// flight, a duplicate, fails it) and `settle` passes without another.
fn reap(q: &mut GuestQueue, got: &mut Vec<u16>, want: usize, settle: Duration) {
    let deadline = Instant::now() + TIMEOUT;
    let mut quiet_since = Instant::now();
    loop {
        match q
            .driver
            .pop_used()
            .expect("a used entry the driver accepts")
        {
            Some(u) => {
                got.push(u.id);
                quiet_since = Instant::now();
            }
            None if got.len() >= want && quiet_since.elapsed() >= settle => return,
            None => {
                assert!(
                    Instant::now() < deadline,
                    "{} of {want} completed",
                    got.len()
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// One run: the first back-end crashes at its `crash_after`th crash point (or never),
/// the second finishes the work. Returns where the first crashed.
fn crash_and_resume(crash_after: u64, fill: Fill, spot: bool) -> Option<&'static str> {
    let mem = two_region_memory();
    let mut q = GuestQueue::new(&mem, 0, false);
    if fill == Fill::NearTheEnd {
        advance_near_the_end(&mem, &mut q);
    }
    let started_at = q.driver.vring_base();
    let (mut fe, t) = crashing_backend(crash_after, spot);
    handshake(&mut fe, true, false);
    send_mem_table(&mut fe, &mem);
    let (info, area) = fe.get_inflight_fd(&ask()).expect("GET_INFLIGHT_FD");
    fe.set_inflight_fd(&info, area.as_fd())
        .expect("SET_INFLIGHT_FD");
    start_may_crash(&mut fe, &mem, &q, started_at);
    // Two rounds, so the ring's positions are not the start's when the crash comes.
    let mut ids = Vec::new();
    let mut got = Vec::new();
    for round in 0..2u64 {
        if t.is_finished() {
            break;
        }
        for i in 0..HELD as u64 {
            let k = round * HELD as u64 + i;
            let w = DATA + 0x800 * (1 + k);
            mem.mem()
                .write_slice(&[0u8; 64], GuestAddress(w))
                .expect("clear");
            ids.push((add_request(&mut q, fill, k, w), w));
        }
        let want = ids.len();
        let deadline = Instant::now() + TIMEOUT;
        while got.len() < want && !t.is_finished() {
            assert!(Instant::now() < deadline, "the first back-end stalled");
            if let Some(u) = q.driver.pop_used().expect("used entry") {
                got.push(u.id);
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        if t.is_finished() {
            break;
        }
    }
    drop(fe);
    let crashed = t.join().expect("the back-end thread").crash_point();

    // The second back-end: same area, the base QEMU would send.
    let dev = Holder {
        spot,
        ..Holder::at_once()
    };
    let seen = Arc::clone(&dev.seen);
    let (mut fe, t) = serve_in_thread(DeviceBackend::new(dev).expect("backend"));
    handshake(&mut fe, true, false);
    send_mem_table(&mut fe, &mem);
    fe.set_inflight_fd(&info, area.as_fd())
        .expect("SET_INFLIGHT_FD");
    q.start(&mut fe, &mem, stale_base(&mem, &q, started_at), true);
    reap(&mut q, &mut got, ids.len(), Duration::from_millis(20));
    let mut sorted = got.clone();
    sorted.sort_unstable();
    let mut want: Vec<u16> = ids.iter().map(|&(id, _)| id).collect();
    want.sort_unstable();
    assert_eq!(
        sorted, want,
        "every request completed exactly once ({crashed:?})"
    );
    // Resubmitted requests were served again: each buffer holds its ID.
    for &(id, w) in &ids {
        let mut b = [0u8; 64];
        mem.mem().read_slice(&mut b, GuestAddress(w)).unwrap();
        assert!(
            b.iter().all(|&x| x == id as u8),
            "request {id} ({crashed:?})"
        );
    }
    assert_eq!(q.driver.in_flight(), 0);
    if fill == Fill::NearTheEnd && layout() == Layout::Packed && !ids.is_empty() {
        // The first round alone takes 5 descriptors from position 60.
        assert_eq!(
            q.driver.vring_base() & 0x8000_8000,
            0,
            "the driver is on the next lap ({crashed:?})"
        );
    }
    // The ring resumed where the driver is: a new request goes through, and a clean stop
    // answers the driver's position.
    let next = q.submit((DATA, 16), (DATA + 0x8000, 64));
    let u = q.wait_used();
    assert_eq!((u.id, u.len), (next, 64), "({crashed:?})");
    assert!(
        seen.lock().unwrap().len() <= HELD * 2 + 1,
        "nothing was resubmitted that was already published"
    );
    assert_eq!(
        fe.get_vring_base(0).expect("GET_VRING_BASE"),
        q.driver.vring_base()
    );
    drop(fe);
    t.join().unwrap();
    crashed
}

/// The first back-end dies at every one of its crash points in turn (until a run where it
/// does not crash) in a run of six requests, two rounds of three held and completed newest
/// first, filled two ways ([`Fill`]): from the ring's first position with chains of two,
/// and from 4 descriptors before the ring's end with chains of 3, 1 and 1 (packed: a chain
/// straddles the end, and a held batch publishes across it, flipping the used wrap
/// counter onto a position holding the previous lap's flags). Each crash point of the split and
/// packed tracking is a run: the fresh
/// region's initialisation at the first start (free list, used position, version), each
/// descriptor a pop copies, each store of a publish and of its commit (the packed points
/// are checked by name for both fills). After each crash the next back-end, handed the
/// area and the base QEMU would send, completes every request exactly once and with its
/// data, and the ring goes on where the driver is.
///
/// Not covered here: a crash while the next back-end recovers a written region, and a
/// used descriptor that fails to be written (the unit tests of `inflight_packed` cover the
/// latter).
#[test]
fn a_back_end_dying_anywhere_loses_and_duplicates_nothing() {
    crash_sweep(false);
}

/// The same sweep with back-ends that serve each request on the spot
/// (`QueueContext::serve_next`, a synchronous device's path): the same crash points hit,
/// the same guarantees.
#[test]
fn a_back_end_serving_on_the_spot_dying_anywhere_loses_and_duplicates_nothing() {
    crash_sweep(true);
}

/// Every crash point of the first back-end in turn, for each layout and [`Fill`]; `spot`:
/// the back-ends serve on the spot.
fn crash_sweep(spot: bool) {
    for_each_layout(|| {
        for fill in [Fill::FromTheStart, Fill::NearTheEnd] {
            let mut hit = Vec::new();
            for n in 1.. {
                match crash_and_resume(n, fill, spot) {
                    Some(at) => hit.push(at),
                    None => break,
                }
                assert!(n < 200, "the crash points never run out ({fill:?})");
            }
            if layout() == Layout::Packed {
                for point in [
                    "packed recovery: free list partly relinked",
                    "packed recovery: free list relinked, free_head not yet written",
                    "packed recovery: used position recorded, version not yet written",
                    "packed: head marked in flight, descriptors not yet copied",
                    "packed: a descriptor copied, free_head moved past it",
                    "packed: descriptors copied, old_free_head not yet moved",
                    "packed: marked in flight, not yet completed",
                    "packed publishing: entries freed, used_idx not yet moved",
                    "packed publishing: used_idx moved, used descriptor not yet written",
                    "packed publishing: used descriptor written, flag not yet cleared",
                    "packed publishing: flag cleared, not yet committed",
                    "packed publishing: old_free_head committed, used position not yet",
                    "published, call not yet made",
                ] {
                    assert!(
                        hit.contains(&point),
                        "never crashed at {point:?} ({fill:?}, on the spot: {spot})"
                    );
                }
            }
        }
    });
}

/// Runs `test` with the packed layout only.
fn packed_only(test: impl Fn()) {
    for_each_layout(|| {
        if layout() == Layout::Packed {
            test()
        }
    });
}

#[test]
fn get_inflight_fd_sizes_the_area_with_the_layout_acked() {
    for_each_layout(|| {
        let (mut fe, t) = serve_in_thread(DeviceBackend::new(Holder::default()).unwrap());
        handshake(&mut fe, true, false);
        let (info, fd) = fe
            .get_inflight_fd(&Inflight {
                num_queues: 1,
                queue_size: 128,
                ..Inflight::default()
            })
            .expect("GET_INFLIGHT_FD");
        let want = match layout() {
            // ALIGN_UP(16 * 128 + 2, 64).
            Layout::Split => 2112,
            // ALIGN_UP(32 * 128 + 29, 64): DescStatePacked is 32 bytes.
            Layout::Packed => 4160,
        };
        assert_eq!(info.mmap_size, want);
        assert_eq!(File::from(fd).metadata().unwrap().len(), want);
        drop(fe);
        t.join().unwrap();
    });
}

/// The packed queue region, written as the spec lays it out.
struct Region<'a>(&'a File);

impl Region<'_> {
    fn put(&self, at: u64, bytes: &[u8]) {
        self.0.write_all_at(bytes, at).expect("write the region");
    }
    fn header(&self, free_head: u16, used: u16, wrap: u8) {
        self.put(8, &1u16.to_le_bytes()); // version
        self.put(10, &QUEUE_SIZE.to_le_bytes()); // desc_num
        for off in [12, 14] {
            self.put(off, &free_head.to_le_bytes()); // free_head, old_free_head
        }
        for off in [16, 18] {
            self.put(off, &used.to_le_bytes()); // used_idx, old_used_idx
        }
        self.put(20, &[wrap, wrap]); // used_wrap_counter, old_used_wrap_counter
    }
    /// Entry `e`: in flight when `head` = Some((num, last, counter)), its next link, and
    /// the descriptor `desc` (16 bytes as the ring holds it: addr, len, id, flags).
    fn entry(&self, e: u16, head: Option<(u16, u16, u64)>, next: u16, desc: &[u8; 16]) {
        let at = 32 + 32 * u64::from(e);
        let mut b = [0u8; 32];
        b[2..4].copy_from_slice(&next.to_le_bytes());
        if let Some((num, last, counter)) = head {
            b[0] = 1;
            b[4..6].copy_from_slice(&last.to_le_bytes());
            b[6..8].copy_from_slice(&num.to_le_bytes());
            b[8..16].copy_from_slice(&counter.to_le_bytes());
        }
        b[16..18].copy_from_slice(&desc[12..14]); // id
        b[18..20].copy_from_slice(&desc[14..16]); // flags
        b[20..24].copy_from_slice(&desc[8..12]); // len
        b[24..32].copy_from_slice(&desc[0..8]); // addr
        self.put(at, &b);
    }
}

/// A packed session whose queue 0 has two chains of two descriptors available (IDs in
/// `ids`, ring positions 0..4) and an area the test fills; the ring is not started.
fn foreign_area() -> (
    GuestMemory,
    GuestQueue,
    Vec<u16>,
    [[u8; 16]; 4],
    Inflight,
    OwnedFd,
) {
    let mem = two_region_memory();
    let mut q = GuestQueue::new(&mem, 0, false);
    let ids: Vec<u16> = (0..2u64)
        .map(|i| {
            let w = DATA + 0x1000 * (1 + i);
            q.driver
                .add_chain(&[(GuestAddress(DATA), 16, false), (GuestAddress(w), 64, true)])
                .expect("add_chain")
        })
        .collect();
    q.driver.publish().expect("publish");
    let mut descs = [[0u8; 16]; 4];
    for (i, d) in descs.iter_mut().enumerate() {
        let at = GuestAddress(q.driver.desc_table().0 + 16 * i as u64);
        mem.mem().read_slice(d, at).expect("ring descriptor");
    }
    let (info, fd) = packed_area();
    (mem, q, ids, descs, info, fd)
}

/// A zeroed area of one packed queue region of [`QUEUE_SIZE`] entries.
fn packed_area() -> (Inflight, OwnedFd) {
    let fd = nix::sys::memfd::memfd_create(
        c"test-inflight-packed",
        nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING,
    )
    .expect("memfd");
    let size = (32 * u64::from(QUEUE_SIZE) + 29).div_ceil(64) * 64;
    File::from(fd.try_clone().unwrap()).set_len(size).unwrap();
    let info = Inflight {
        mmap_size: size,
        mmap_offset: 0,
        num_queues: 1,
        queue_size: QUEUE_SIZE,
        padding: [0; 4],
    };
    (info, fd)
}

/// The two chains in flight, the second taken first (counters 7 and 3), their entries
/// scattered (0-5 and 9-2), the free list the rest.
fn write_two_in_flight(r: &Region<'_>, descs: &[[u8; 16]; 4]) {
    r.header(1, 0, 1);
    r.entry(0, Some((2, 5, 7)), 5, &descs[0]);
    r.entry(5, None, 0, &descs[1]);
    r.entry(9, Some((2, 2, 3)), 2, &descs[2]);
    r.entry(2, None, 0, &descs[3]);
    let free: Vec<u16> = (0..QUEUE_SIZE)
        .filter(|e| ![0, 5, 9, 2].contains(e))
        .collect();
    for (i, &e) in free.iter().enumerate() {
        // The list ends with desc_num (as DPDK links it).
        r.entry(
            e,
            None,
            free.get(i + 1).copied().unwrap_or(QUEUE_SIZE),
            &[0; 16],
        );
    }
    r.put(12, &free[0].to_le_bytes());
    r.put(14, &free[0].to_le_bytes());
}

fn start_on(fe: &mut Frontend, mem: &GuestMemory, q: &GuestQueue, info: &Inflight, fd: &OwnedFd) {
    handshake(fe, true, false);
    send_mem_table(fe, mem);
    fe.set_inflight_fd(info, fd.as_fd())
        .expect("SET_INFLIGHT_FD");
    q.start(fe, mem, STALE_PACKED_BASE, true);
}

#[test]
fn a_region_another_back_end_wrote_is_resubmitted_in_counter_order() {
    packed_only(|| {
        let (mem, mut q, ids, descs, info, fd) = foreign_area();
        let file = File::from(fd.try_clone().unwrap());
        write_two_in_flight(&Region(&file), &descs);
        let dev = Holder::at_once();
        let seen = Arc::clone(&dev.seen);
        let (mut fe, t) = serve_in_thread(DeviceBackend::new(dev).unwrap());
        start_on(&mut fe, &mem, &q, &info, &fd);
        let mut got = Vec::new();
        reap(&mut q, &mut got, 2, Duration::from_millis(20));
        assert_eq!(*seen.lock().unwrap(), vec![ids[1], ids[0]], "counter order");
        assert_eq!(got.len(), 2);
        // The ring resumed past both chains (positions 4 on).
        let next = q.submit((DATA, 16), (DATA + 0x8000, 64));
        assert_eq!(q.wait_used().id, next);
        assert_eq!(seen.lock().unwrap().len(), 3);
        drop(fe);
        t.join().unwrap();
    });
}

/// A region whose used index was committed without its wrap counter (`old_used_idx` and
/// `old_used_wrap_counter` written apart, the back-end killed between them) after a publish
/// that crossed the end of the ring: the ring resumes on the lap the driver is on, although
/// the old index's descriptor still holds the previous lap's available flags (the tail of
/// a chain, which no used descriptor overwrote).
#[test]
fn an_old_used_index_committed_without_its_wrap_counter_resumes_on_the_right_lap() {
    packed_only(|| {
        let mem = two_region_memory();
        let mut q = GuestQueue::new(&mem, 0, false);
        // A first back-end (no inflight area) takes the driver round the ring: a chain of
        // two at positions 0-1 (its used descriptor at 0, position 1 keeps the first lap's
        // available flags), chains of two to the end, then one descriptor at position 0 of
        // the second lap: both sides at position 1, wrap counter 0.
        let (mut fe, t) = serve_at_once();
        handshake(&mut fe, true, false);
        send_mem_table(&mut fe, &mem);
        q.start(&mut fe, &mem, 0, true);
        for _ in 0..QUEUE_SIZE / 2 {
            let id = q.submit((DATA, 16), (DATA + 0x1000, 64));
            assert_eq!(q.wait_used().id, id);
        }
        let id = q
            .driver
            .add_chain(&[(GuestAddress(DATA + 0x1000), 64, true)])
            .expect("add_chain");
        if q.driver.publish().expect("publish") {
            q.driver.kick(&q.kick).expect("kick");
        }
        assert_eq!(q.wait_used().id, id);
        assert_eq!(q.driver.vring_base(), 0x0001_0001, "position 1, wrap 0");
        drop(fe);
        t.join().unwrap();
        // The region: nothing in flight, the free list whole, used (1, wrap 0), old used
        // index 1 with the previous wrap counter 1.
        let (info, fd) = packed_area();
        let file = File::from(fd.try_clone().unwrap());
        let r = Region(&file);
        r.header(0, 1, 0);
        r.put(21, &[1]);
        for e in 0..QUEUE_SIZE {
            r.entry(e, None, e + 1, &[0; 16]);
        }
        let (mut fe, t) = serve_at_once();
        start_on(&mut fe, &mem, &q, &info, &fd);
        let next = q.submit((DATA, 16), (DATA + 0x8000, 64));
        let u = q.wait_used();
        assert_eq!((u.id, u.len), (next, 64));
        assert_eq!(
            fe.get_vring_base(0).expect("GET_VRING_BASE"),
            q.driver.vring_base()
        );
        drop(fe);
        t.join().unwrap();
    });
}

#[test]
fn a_lying_region_is_refused_and_the_session_goes_on() {
    type Lie = fn(&Region<'_>);
    let lies: [(&str, Lie); 10] = [
        ("desc_num not the area's queue size", |r| {
            r.put(10, &7u16.to_le_bytes())
        }),
        ("a used wrap counter of 5", |r| r.put(20, &[5, 5])),
        ("a used index past the ring", |r| {
            r.put(16, &500u16.to_le_bytes());
            r.put(18, &500u16.to_le_bytes());
        }),
        ("an old used index past the ring", |r| {
            r.put(18, &500u16.to_le_bytes())
        }),
        ("a head of no descriptor", |r| {
            r.put(32 + 6, &0u16.to_le_bytes())
        }),
        ("a head of more descriptors than the ring", |r| {
            r.put(32 + 6, &1000u16.to_le_bytes())
        }),
        ("a chain running out of the region", |r| {
            r.put(32 + 2, &9999u16.to_le_bytes())
        }),
        ("a last entry that is not the chain's end", |r| {
            r.put(32 + 4, &33u16.to_le_bytes())
        }),
        ("two requests with one buffer ID", |r| {
            // Entry 2 (the second chain's last) says the first chain's ID.
            let id: [u8; 2] = [0, 0];
            r.put(32 + 32 * 2 + 16, &id);
            r.put(32 + 32 * 5 + 16, &id);
        }),
        ("every byte 0xff", |r| {
            r.put(0, &[0xff; 32 + 32 * QUEUE_SIZE as usize])
        }),
    ];
    packed_only(|| {
        let (mem, q, _ids, descs, info, fd) = foreign_area();
        let file = File::from(fd.try_clone().unwrap());
        let (mut fe, t) = serve_at_once();
        handshake(&mut fe, true, false);
        send_mem_table(&mut fe, &mem);
        for (what, lie) in &lies {
            let r = Region(&file);
            write_two_in_flight(&r, &descs);
            lie(&r);
            fe.set_inflight_fd(&info, fd.as_fd())
                .expect("SET_INFLIGHT_FD");
            fe.set_vring_num(0, u32::from(QUEUE_SIZE)).unwrap();
            fe.set_vring_base(0, STALE_PACKED_BASE).unwrap();
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
            assert!(
                fe.set_vring_kick(0, Some(bfd(&q.kick))).is_err(),
                "{what}: the ring started"
            );
            assert_eq!(
                fe.get_queue_num().expect("the session goes on"),
                1,
                "{what}"
            );
        }
        drop(fe);
        t.join().unwrap();
    });
}

/// SET_FEATURES cannot flip RING_PACKED under a started ring; with the ring stopped it
/// can.
#[test]
fn a_layout_change_on_a_started_ring_is_refused() {
    for_each_layout(|| {
        let (dev, _) = PatternDevice::new(1);
        let (mut fe, t) = serve_in_thread(DeviceBackend::new(dev).unwrap());
        let (_mem, _q) = start_queue0(&mut fe, false);
        let acked = fe.get_features().unwrap()
            & !vhost_proto::virtio::bit(vhost_proto::virtio::RING_EVENT_IDX);
        let acked = for_layout(acked);
        let flipped = acked ^ vhost_proto::virtio::bit(vhost_proto::virtio::RING_PACKED);
        assert!(
            fe.set_features(flipped).is_err(),
            "flipped under a started ring"
        );
        assert_eq!(fe.get_queue_num().expect("the session goes on"), 1);
        assert!(fe.set_features(acked).is_ok(), "the same layout again");
        fe.get_vring_base(0).expect("GET_VRING_BASE");
        assert!(fe.set_features(flipped).is_ok(), "the ring is stopped");
        drop(fe);
        t.join().unwrap();
    });
}

/// A device may opt out of RING_PACKED.
#[test]
fn a_device_can_opt_out_of_packed_rings() {
    struct SplitOnly;
    impl VirtioDevice for SplitOnly {
        fn device_type(&self) -> u32 {
            4
        }
        fn num_queues(&self) -> usize {
            1
        }
        fn max_queue_size(&self) -> u16 {
            64
        }
        fn features(&self) -> u64 {
            0
        }
        fn supports_packed_ring(&self) -> bool {
            false
        }
        fn process_queue(&self, _: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
            Ok(Processed::Drained)
        }
    }
    let packed = vhost_proto::virtio::bit(vhost_proto::virtio::RING_PACKED);
    let b = DeviceBackend::new(SplitOnly).unwrap();
    assert_eq!(b.offered_features() & packed, 0);
    let (dev, _) = PatternDevice::new(1);
    let b = DeviceBackend::new(dev).unwrap();
    assert_ne!(b.offered_features() & packed, 0, "offered by default");
}

/// A request's head, fault, readable and writable lengths.
type Seen = (u16, Option<ChainFault>, u64, u64);

/// Records the fault and lengths of each request and completes it with nothing written.
#[derive(Default)]
struct FaultRecorder {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl VirtioDevice for FaultRecorder {
    vhost_test_support::device_basics!(self; device_type: 2, queues: 1, max_queue_size: 256);
    fn supports_inflight_tracking(&self) -> bool {
        true
    }
    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        while let Some(req) = ctx.pop() {
            self.seen.lock().unwrap().push((
                req.head(),
                req.fault(),
                req.readable_len(),
                req.writable_len(),
            ));
            req.complete(0);
        }
        Ok(Processed::Drained)
    }
}

/// Adds a chain whose head descriptor is then rewritten into an indirect table of three:
/// a readable buffer, a table nested in the table (illegal), a writable buffer. Not
/// published. Returns its head.
fn add_nested_indirect_chain(mem: &GuestMemory, q: &mut GuestQueue) -> u16 {
    let head = q
        .driver
        .add_chain(&[
            (GuestAddress(DATA), 16, false),
            (GuestAddress(DATA + 0x1000), 64, true),
        ])
        .expect("add_chain");
    let table = DATA + 0x1_0000;
    let desc = |addr: u64, len: u32, flags: u16, next: u16| {
        let mut b = [0u8; 16];
        b[0..8].copy_from_slice(&addr.to_le_bytes());
        b[8..12].copy_from_slice(&len.to_le_bytes());
        b[12..14].copy_from_slice(&flags.to_le_bytes());
        b[14..16].copy_from_slice(&next.to_le_bytes());
        b
    };
    let (next, write, indirect) = (1u16, 2u16, 4u16);
    for (i, d) in [
        desc(DATA, 16, next, 1),
        desc(DATA + 0x2_0000, 32, indirect | next, 2),
        desc(DATA + 0x1000, 64, write, 0),
    ]
    .iter()
    .enumerate()
    {
        mem.mem()
            .write_slice(d, GuestAddress(table + 16 * i as u64))
            .expect("indirect table");
    }
    let at = GuestAddress(q.driver.desc_table().0 + 16 * u64::from(head));
    mem.mem()
        .write_slice(&desc(table, 48, indirect, 0), at)
        .expect("head descriptor");
    head
}

/// A split chain whose indirect table nests another table: popped from the available ring,
/// then resubmitted from the inflight region by the next back-end, the request sees the
/// same buffers and the same fault (the nested table ends the chain).
#[test]
fn a_nested_indirect_table_ends_a_split_chain_alike_popped_or_resubmitted() {
    for_each_layout(|| {
        if layout() != Layout::Split {
            return;
        }
        let mem = two_region_memory();
        let mut q = GuestQueue::new(&mem, 0, false);
        // Popped.
        let dev = FaultRecorder::default();
        let fresh = Arc::clone(&dev.seen);
        let (mut fe, t) = serve_in_thread(DeviceBackend::new(dev).unwrap());
        handshake(&mut fe, true, false);
        send_mem_table(&mut fe, &mem);
        q.start(&mut fe, &mem, 0, true);
        let popped = add_nested_indirect_chain(&mem, &mut q);
        if q.driver.publish().expect("publish") {
            q.driver.kick(&q.kick).expect("kick");
        }
        assert_eq!(q.wait_used().id, popped);
        drop(fe);
        t.join().unwrap();
        // Resubmitted: the next chain is made available while no back-end runs, and the
        // region says it is in flight; the next back-end resumes past it.
        let resubmitted = add_nested_indirect_chain(&mem, &mut q);
        q.driver.publish().expect("publish");
        let dev = FaultRecorder::default();
        let again = Arc::clone(&dev.seen);
        let (mut fe, t) = serve_in_thread(DeviceBackend::new(dev).unwrap());
        handshake(&mut fe, true, false);
        send_mem_table(&mut fe, &mem);
        let (info, area) = fe.get_inflight_fd(&ask()).expect("GET_INFLIGHT_FD");
        let file = File::from(area.try_clone().unwrap());
        let put = |at: u64, b: &[u8]| file.write_all_at(b, at).expect("write the region");
        put(8, &1u16.to_le_bytes()); // version
        put(10, &QUEUE_SIZE.to_le_bytes()); // desc_num
        put(14, &1u16.to_le_bytes()); // used_idx: the one request published
        let entry = 16 + 16 * u64::from(resubmitted);
        put(entry, &[1]); // inflight
        put(entry + 8, &0u64.to_le_bytes()); // counter
        fe.set_inflight_fd(&info, area.as_fd())
            .expect("SET_INFLIGHT_FD");
        q.start(&mut fe, &mem, 2, true);
        assert_eq!(q.wait_used().id, resubmitted);
        drop(fe);
        t.join().unwrap();
        let fresh = fresh.lock().unwrap().clone();
        let again = again.lock().unwrap().clone();
        assert_eq!(fresh.len(), 1);
        assert_eq!(again.len(), 1);
        assert_eq!(
            fresh[0],
            (popped, Some(ChainFault::NestedIndirect), 16, 0),
            "popped"
        );
        assert_eq!(
            again[0],
            (resubmitted, Some(ChainFault::NestedIndirect), 16, 0),
            "resubmitted"
        );
    });
}

/// A back-end that panics somewhere other than an injected crash point has a bug: the crash
/// sweep must fail on it rather than read it as "the crash points ran out" and stop.
#[test]
#[should_panic(expected = "outside an injected crash point")]
fn a_panic_outside_the_crash_points_fails_the_sweep() {
    let _ = CrashEnd::Crashed(None).crash_point();
}
