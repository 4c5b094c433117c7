//! The request lifecycle through the real server and runtime: a device that holds its
//! requests and completes them later, from another thread, out of order; memory replaced
//! under requests in flight; stops that wait for outstanding requests, or give up at the
//! bound and close the connection; disconnects that leak nothing.
//!
//! The tests of this file run one at a time (they count the process's descriptors,
//! threads and mappings).

#![cfg(unix)]

mod runtime_support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use runtime_support::*;
use vhost_backend::runtime::{
    DeviceBackend, DeviceError, Processed, QueueContext, Request, VirtioDevice,
};
use vhost_frontend::GuestMemory;
use vm_memory::{Bytes, GuestAddress};

/// Guest-physical data area: the second region of [`two_region_memory`].
const DATA: u64 = 0x4000_0000;
/// A data area in the first region (the one the rings live in).
const DATA_LOW: u64 = 0x18_0000;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Requests the device holds, shared with the test.
type Held = Arc<Mutex<Vec<Request>>>;

/// Holds every request it pops while `hold` is set; otherwise fills its writable bytes with
/// a byte derived from the head and completes it at once. Drops what it holds on reset.
struct HoldDevice {
    queues: usize,
    hold: Arc<AtomicBool>,
    held: Held,
}

fn fill_byte(head: u16) -> u8 {
    (head as u8).wrapping_mul(3) ^ 0x5a
}

/// Writes the head's byte into every writable byte of `req` and completes it (with length
/// 0 when a buffer is outside guest memory).
fn finish(req: Request) {
    let data = vec![fill_byte(req.head()); req.writable_len() as usize];
    let len = match req.write_writable(0, &data) {
        Ok(()) => data.len() as u32,
        Err(_) => 0,
    };
    req.complete(len);
}

impl VirtioDevice for HoldDevice {
    vhost_test_support::device_basics!(self; device_type: 4, queues: self.queues, max_queue_size: 256);
    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        while let Some(req) = ctx.pop() {
            if self.hold.load(Ordering::SeqCst) {
                self.held.lock().unwrap().push(req);
            } else {
                finish(req);
            }
        }
        Ok(Processed::Drained)
    }
    fn reset(&self) {
        self.held.lock().unwrap().clear();
    }
}

fn hold_backend(quiesce: Duration) -> (DeviceBackend<HoldDevice>, Arc<AtomicBool>, Held) {
    hold_backend_with(1, quiesce)
}

fn hold_backend_with(
    queues: usize,
    quiesce: Duration,
) -> (DeviceBackend<HoldDevice>, Arc<AtomicBool>, Held) {
    let hold = Arc::new(AtomicBool::new(true));
    let held: Held = Arc::default();
    let dev = HoldDevice {
        queues,
        hold: Arc::clone(&hold),
        held: Arc::clone(&held),
    };
    let b = DeviceBackend::new(dev)
        .expect("backend")
        .with_quiesce_timeout(quiesce);
    (b, hold, held)
}

/// Waits until the device holds `n` requests.
fn wait_held(held: &Held, n: usize) {
    let deadline = Instant::now() + TIMEOUT;
    while held.lock().unwrap().len() < n {
        assert!(
            Instant::now() < deadline,
            "the device never got {n} requests"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Makes `n` one-buffer chains of `len` writable bytes available (buffer `i` at
/// `base + i * len`) and kicks once; returns the heads in order.
fn submit_many(q: &mut GuestQueue, base: u64, n: u16, len: u32) -> Vec<(u16, u64)> {
    let mut heads = Vec::new();
    for i in 0..n {
        let addr = base + u64::from(i) * u64::from(len);
        let head = q
            .driver
            .add_chain(&[(GuestAddress(addr), len, true)])
            .expect("add_chain");
        heads.push((head, addr));
    }
    if q.driver.publish().expect("publish") {
        q.driver.kick(&q.kick).expect("kick");
    }
    heads
}

/// Completes every held request from another thread, in a scrambled order.
fn complete_elsewhere(held: &Held, delay: Duration) -> std::thread::JoinHandle<()> {
    let reqs = std::mem::take(&mut *held.lock().unwrap());
    std::thread::spawn(move || {
        std::thread::sleep(delay);
        let mut reqs: Vec<Option<Request>> = reqs.into_iter().map(Some).collect();
        let n = reqs.len();
        // Odd positions backwards, then even ones forwards.
        let order = (0..n)
            .rev()
            .filter(|i| i % 2 == 1)
            .chain((0..n).filter(|i| i % 2 == 0));
        for i in order {
            finish(reqs[i].take().expect("each once"));
        }
    })
}

/// Collects `n` used entries and checks each is a distinct submitted head, with its full
/// length and its bytes in guest memory.
fn check_used(q: &mut GuestQueue, mem: &GuestMemory, heads: &[(u16, u64)], len: u32) {
    let mut seen = HashSet::new();
    for _ in 0..heads.len() {
        let used = q.wait_used();
        assert!(seen.insert(used.id), "head {} completed twice", used.id);
        let &(_, addr) = heads
            .iter()
            .find(|(h, _)| *h == used.id)
            .expect("a submitted head");
        assert_eq!(used.len, len, "head {}", used.id);
        let mut got = vec![0u8; len as usize];
        mem.mem().read_slice(&mut got, GuestAddress(addr)).unwrap();
        assert!(
            got.iter().all(|&b| b == fill_byte(used.id)),
            "head {} data",
            used.id
        );
    }
}

#[test]
fn requests_completed_later_from_another_thread_out_of_order_at_full_depth_complete_once() {
    for_each_layout(|| {
        let _s = serial();
        for event_idx in [false, true] {
            let (b, _hold, held) = hold_backend(TIMEOUT);
            let (mut fe, t) = serve_in_thread(b);
            let (mem, mut q) = start_queue0(&mut fe, event_idx);
            // Three rounds of a whole ring (64) outstanding at once; the indices wrap.
            for round in 0..3u64 {
                let heads = submit_many(&mut q, DATA + round * 0x1_0000, QUEUE_SIZE, 0x100);
                wait_held(&held, usize::from(QUEUE_SIZE));
                complete_elsewhere(&held, Duration::ZERO).join().unwrap();
                check_used(&mut q, &mem, &heads, 0x100);
            }
            assert_eq!(
                fe.get_vring_base(0).expect("GET_VRING_BASE"),
                base_after_chains(3 * 64, 1)
            );
            drop(fe);
            let b = t.join().unwrap();
            assert_eq!(b.outstanding(0), Some(0));
        }
    });
}

#[test]
fn memory_replaced_and_region_removed_under_requests_in_flight_their_data_lands() {
    for_each_layout(|| {
        let _s = serial();
        let (b, hold, held) = hold_backend(TIMEOUT);
        let (mut fe, t) = serve_in_thread(b);
        let (mem, mut q) = start_queue0(&mut fe, true);
        // Eight requests into the second region, held.
        let heads = submit_many(&mut q, DATA, 8, 0x200);
        wait_held(&held, 8);
        // A new table (the same memory mapped anew), then the second region removed: the held
        // requests keep the mapping they were popped from.
        send_mem_table(&mut fe, &mem);
        let second = regions(&mem)
            .into_iter()
            .find(|r| r.guest_phys_addr == DATA)
            .unwrap();
        fe.rem_mem_reg(&second).expect("REM_MEM_REG");
        complete_elsewhere(&held, Duration::ZERO).join().unwrap();
        check_used(&mut q, &mem, &heads, 0x200);
        // New requests use the new table: the first region serves, the removed one does not.
        hold.store(false, Ordering::SeqCst);
        let low = submit_many(&mut q, DATA_LOW, 2, 0x100);
        check_used(&mut q, &mem, &low, 0x100);
        let gone = q
            .driver
            .add_chain(&[(GuestAddress(DATA), 0x100, true)])
            .unwrap();
        if q.driver.publish().unwrap() {
            q.driver.kick(&q.kick).unwrap();
        }
        let used = q.wait_used();
        assert_eq!((used.id, used.len), (gone, 0));
        let mut got = [0u8; 0x100];
        mem.mem().read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert!(
            got.iter().all(|&b| b == fill_byte(heads[0].0)),
            "a buffer in the removed region is not written"
        );
        // Added back, it serves again.
        fe.add_mem_reg(&second, mem.fd()).expect("ADD_MEM_REG");
        let back = submit_many(&mut q, DATA + 0x8000, 1, 0x100);
        check_used(&mut q, &mem, &back, 0x100);
        drop(fe);
        t.join().expect("server thread");
    });
}

#[test]
fn get_vring_base_with_requests_held_replies_after_they_complete_with_the_right_base() {
    for_each_layout(|| {
        let _s = serial();
        let (b, _hold, held) = hold_backend(TIMEOUT);
        let (mut fe, t) = serve_in_thread(b);
        let (_mem, mut q) = start_queue0(&mut fe, true);
        let heads = submit_many(&mut q, DATA, 5, 0x100);
        wait_held(&held, 5);
        let delay = Duration::from_millis(300);
        let completer = complete_elsewhere(&held, delay);
        let started = Instant::now();
        let base = fe.get_vring_base(0).expect("GET_VRING_BASE");
        let waited = started.elapsed();
        completer.join().unwrap();
        assert_eq!(base, base_after_chains(5, 1));
        assert!(
            waited >= delay - Duration::from_millis(20),
            "GET_VRING_BASE answered after {waited:?}, before the requests completed"
        );
        // Every held request reached the used ring before the reply.
        for _ in 0..5 {
            assert!(
                q.driver.pop_used().unwrap().is_some(),
                "a used entry is missing"
            );
        }
        let _ = heads;
        drop(fe);
        t.join().expect("server thread");
    });
}

#[test]
fn device_that_never_completes_hits_the_bound_the_connection_closes_and_the_next_frontend_works() {
    for_each_layout(|| {
        let _s = serial();
        let (b, hold, held) = hold_backend(Duration::from_millis(300));
        let (mut fe, t) = serve_in_thread(b);
        let (_mem, mut q) = start_queue0(&mut fe, true);
        submit_many(&mut q, DATA, 3, 0x100);
        wait_held(&held, 3);
        let started = Instant::now();
        let e = fe.get_vring_base(0).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(280), "{e}");
        // The server closed the connection: the front-end sees the end of the stream.
        assert!(fe.get_queue_num().is_err(), "the connection is closed");
        drop(fe);
        let b = t.join().expect("server thread");
        assert_eq!(b.running_workers(), 0);
        // The next front-end on the same back-end works; the late completions of the old
        // requests are dropped, not published into its ring.
        hold.store(false, Ordering::SeqCst);
        let stale = std::mem::take(&mut *held.lock().unwrap());
        let (mut fe, t) = serve_in_thread(b);
        let (mem, mut q) = start_queue0(&mut fe, true);
        let heads = submit_many(&mut q, DATA, 4, 0x100);
        check_used(&mut q, &mem, &heads, 0x100);
        for r in stale {
            r.complete(7);
        }
        let heads = submit_many(&mut q, DATA + 0x1000, 2, 0x100);
        check_used(&mut q, &mem, &heads, 0x100);
        assert!(
            q.driver.pop_used().unwrap().is_none(),
            "a stale completion was published"
        );
        assert_eq!(fe.get_vring_base(0).unwrap(), base_after_chains(6, 1));
        drop(fe);
        t.join().expect("server thread");
    });
}

/// Threads of the runtime (other tests' harness threads come and go meanwhile).
fn count_workers() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("vhost-worker"))
        .count()
}

fn count_maps_of(inode: u64) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter(|l| l.split_whitespace().nth(4) == Some(&inode.to_string()))
        .count()
}

fn inode(mem: &GuestMemory) -> u64 {
    let st = nix::sys::stat::fstat(mem.fd()).unwrap();
    st.st_ino
}

#[test]
fn disconnect_with_requests_held_leaks_nothing_and_the_next_frontend_works() {
    let _s = serial();
    for_each_layout(|| {
        let (b, hold, held) = hold_backend(Duration::from_millis(200));
        let fds_before = count_dir("/proc/self/fd");
        let workers_before = count_workers();
        let (mut fe, t) = serve_in_thread(b);
        let mem = two_region_memory();
        let ino = inode(&mem);
        let own_maps = count_maps_of(ino);
        {
            handshake(&mut fe, true, true);
            send_mem_table(&mut fe, &mem);
            let mut q = GuestQueue::new(&mem, 0, true);
            q.start(&mut fe, &mem, 0, true);
            submit_many(&mut q, DATA, 6, 0x100);
            wait_held(&held, 6);
            assert!(
                count_maps_of(ino) > own_maps,
                "the back-end maps the memory"
            );
            assert_eq!(
                count_workers(),
                workers_before + 1,
                "the ring's worker runs"
            );
            drop(fe);
        }
        let b = t.join().expect("server thread");
        assert!(held.lock().unwrap().is_empty(), "the reset dropped them");
        assert_eq!(b.running_workers(), 0);
        assert_eq!(
            count_maps_of(ino),
            own_maps,
            "the back-end's mappings are gone"
        );
        drop(mem);
        let deadline = Instant::now() + TIMEOUT;
        while count_workers() > workers_before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(count_workers(), workers_before, "worker threads left");
        assert_eq!(count_dir("/proc/self/fd"), fds_before, "descriptors left");
        // The next front-end works.
        hold.store(false, Ordering::SeqCst);
        let (mut fe, t) = serve_in_thread(b);
        let (mem, mut q) = start_queue0(&mut fe, true);
        let heads = submit_many(&mut q, DATA, 3, 0x100);
        check_used(&mut q, &mem, &heads, 0x100);
        drop(fe);
        t.join().expect("server thread");
    });
}

#[test]
fn a_request_dropped_without_completion_is_returned_with_length_zero() {
    for_each_layout(|| {
        let _s = serial();
        let (b, _hold, held) = hold_backend(TIMEOUT);
        let (mut fe, t) = serve_in_thread(b);
        let (_mem, mut q) = start_queue0(&mut fe, false);
        let heads = submit_many(&mut q, DATA, 2, 0x100);
        wait_held(&held, 2);
        held.lock().unwrap().clear();
        for _ in 0..2 {
            let used = q.wait_used();
            assert!(heads.iter().any(|(h, _)| *h == used.id));
            assert_eq!(used.len, 0);
        }
        assert_eq!(fe.get_vring_base(0).unwrap(), base_after_chains(2, 1));
        drop(fe);
        t.join().expect("server thread");
    });
}

#[test]
fn reset_with_requests_held_on_four_rings_closes_within_one_bound_not_four() {
    for_each_layout(|| {
        let _s = serial();
        let bound = Duration::from_millis(250);
        let (b, _hold, held) = hold_backend_with(4, bound);
        let (mut fe, t) = serve_in_thread(b);
        handshake(&mut fe, true, true);
        let mem = two_region_memory();
        send_mem_table(&mut fe, &mem);
        let mut queues: Vec<GuestQueue> = (0..4).map(|i| GuestQueue::new(&mem, i, true)).collect();
        for (i, q) in queues.iter_mut().enumerate() {
            q.start(&mut fe, &mem, 0, true);
            submit_many(q, DATA + i as u64 * 0x1_0000, 2, 0x100);
        }
        wait_held(&held, 8);
        let started = Instant::now();
        assert!(fe.reset_device().is_err(), "the connection closes");
        let took = started.elapsed();
        assert!(
            took < 2 * bound,
            "RESET_DEVICE took {took:?}: each ring waited its own bound"
        );
        drop(fe);
        t.join().expect("server thread");
    });
}

#[test]
fn a_request_left_behind_by_a_stop_that_gave_up_cannot_touch_guest_memory() {
    for_each_layout(|| {
        let _s = serial();
        let (b, _hold, held) = hold_backend(Duration::from_millis(50));
        let (mut fe, t) = serve_in_thread(b);
        let (mem, mut q) = start_queue0(&mut fe, true);
        mem.mem()
            .write_slice(&[0x11; 0x100], GuestAddress(DATA))
            .unwrap();
        submit_many(&mut q, DATA, 1, 0x100);
        wait_held(&held, 1);
        // The test keeps the request (the device's reset would drop it).
        let req = held.lock().unwrap().pop().expect("held");
        assert!(
            fe.get_vring_base(0).is_err(),
            "the stop gives up and closes"
        );
        assert!(matches!(
            req.write_writable(0, &[0x22; 0x100]),
            Err(vhost_backend::runtime::GuestIoError::Stale)
        ));
        let mut got = [0u8; 0x100];
        mem.mem().read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert!(got.iter().all(|&b| b == 0x11), "guest memory untouched");
        req.complete(0x100);
        drop(fe);
        t.join().expect("server thread");
    });
}
