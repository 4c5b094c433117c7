//! Runtime defects found in review, each pinned by a session that failed before its fix:
//! a chain published while notifications were off and never served, ring descriptors that
//! are not eventfds wedging or spinning a worker, rings enabled by an earlier SET_FEATURES
//! staying enabled once protocol features are acked, an unreported failed SET_VRING_KICK
//! leaving a dead ring, and a polled ring starved by a busy neighbour.

#![cfg(unix)]

mod runtime_support;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::eventfd::{EfdFlags, EventFd};
use runtime_support::*;
use vhost_backend::runtime::{DeviceBackend, DeviceError, Processed, QueueContext, VirtioDevice};
use vhost_backend::Backend;
use vhost_frontend::{Frontend, GuestMemory};
use vhost_proto::virtio;
use vm_memory::GuestAddress;

const DATA: u64 = 0x4000_0000;

fn eventfd(flags: EfdFlags) -> OwnedFd {
    OwnedFd::from(EventFd::from_value_and_flags(0, flags).expect("eventfd"))
}

/// Waits up to `within` for the next used entry of `q`, without waiting on its call fd.
fn used_within(q: &mut GuestQueue, within: Duration) -> Option<vhost_frontend::UsedElem> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(u) = q.driver.pop_used().expect("pop_used") {
            return Some(u);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Publishes one device-writable chain without kicking; returns its head.
fn publish_quietly(q: &mut GuestQueue) -> (u16, bool) {
    let head = q
        .driver
        .add_chain(&[(GuestAddress(DATA), 64, true)])
        .expect("add_chain");
    let wants_kick = q.driver.publish().expect("publish");
    (head, wants_kick)
}

fn wait_finished<T>(t: &std::thread::JoinHandle<T>, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while !t.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    t.is_finished()
}

/// Hands control to the test the first time a round of `process_queue` takes no chain,
/// standing for a driver on another vCPU publishing in exactly that window.
struct RacyDevice {
    inner: PatternDevice,
    window: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

impl VirtioDevice for RacyDevice {
    vhost_test_support::device_basics!(self; device_type: 4, queues: 1, max_queue_size: 256);
    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        let before = self.inner.counters.chains.load(Ordering::SeqCst);
        let r = self.inner.process_queue(ctx);
        if self.inner.counters.chains.load(Ordering::SeqCst) == before {
            let window = self.window.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some((tx, rx)) = window {
                tx.send(()).expect("test waiting");
                rx.recv().expect("test answers");
            }
        }
        r
    }
}

#[test]
fn chain_published_while_notifications_are_off_is_served_without_a_kick() {
    let (inner, counters) = PatternDevice::new(1);
    let (to_test, from_dev) = mpsc::channel();
    let (to_dev, from_test) = mpsc::channel();
    let dev = RacyDevice {
        inner,
        window: Mutex::new(Some((to_test, from_test))),
    };
    let (mut fe, _t) = serve_in_thread(DeviceBackend::new(dev).expect("backend"));
    handshake(&mut fe, true, false);
    let mem = two_region_memory();
    send_mem_table(&mut fe, &mem);
    let mut q = GuestQueue::new(&mem, 0, false);
    // Enabling the ring makes the worker look at the (empty) ring once.
    q.start(&mut fe, &mem, 0, true);
    from_dev
        .recv_timeout(TIMEOUT)
        .expect("the worker in an empty round");
    let (head, kick) = publish_quietly(&mut q);
    assert!(!kick, "notifications are off during a round: no kick");
    to_dev.send(()).expect("device waiting");
    let used = used_within(&mut q, Duration::from_secs(2)).unwrap_or_else(|| {
        panic!(
            "chain {head} never used (chains served: {}): lost wake-up",
            counters.chains.load(Ordering::Relaxed)
        )
    });
    assert_eq!(used.id, head);
}

/// A pipe whose buffer is full and whose writes block.
fn full_blocking_pipe() -> (OwnedFd, OwnedFd) {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    fcntl(&w, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).expect("O_NONBLOCK");
    let chunk = [0u8; 4096];
    while nix::unistd::write(&w, &chunk).is_ok() {}
    fcntl(&w, FcntlArg::F_SETFL(OFlag::empty())).expect("blocking again");
    (r, w)
}

#[test]
fn call_fd_that_is_a_full_blocking_pipe_is_refused_and_never_wedges_the_worker() {
    let (dev, counters) = PatternDevice::new(1);
    let (mut fe, t) = serve_in_thread(DeviceBackend::new(dev).expect("backend"));
    handshake(&mut fe, true, false);
    let mem = two_region_memory();
    send_mem_table(&mut fe, &mem);
    let mut q = GuestQueue::new(&mem, 0, false);
    let (_r, w) = full_blocking_pipe();
    q.start(&mut fe, &mem, 0, true);
    let e = fe
        .set_vring_call(0, Some(w.as_fd()))
        .expect_err("a pipe is no call eventfd");
    assert_eq!(e.nack_status(), Some(1), "{e}");
    // The ring keeps its eventfd and serves.
    q.round_trip(&mem, DATA, DATA + 0x1000, 64);
    assert_eq!(counters.chains.load(Ordering::Relaxed), 1);
    fe.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    assert_eq!(fe.get_vring_base(0).expect("GET_VRING_BASE answers"), 1);
    drop(fe);
    assert!(
        wait_finished(&t, Duration::from_secs(3)),
        "the session did not end after the disconnect"
    );
}

#[test]
fn blocking_eventfd_with_a_full_counter_as_call_fd_never_blocks_the_worker() {
    let (dev, _) = PatternDevice::new(1);
    let (mut fe, t) = serve_in_thread(DeviceBackend::new(dev).expect("backend"));
    let (_mem, mut q) = start_queue0(&mut fe, false);
    // An eventfd without EFD_NONBLOCK whose counter cannot take one more signal.
    let call = eventfd(EfdFlags::empty());
    nix::unistd::write(&call, &(u64::MAX - 1).to_ne_bytes()).expect("fill the counter");
    fe.set_vring_call(0, Some(call.as_fd()))
        .expect("an eventfd is accepted");
    let (head, kick) = publish_quietly(&mut q);
    if kick {
        q.driver.kick(&q.kick).expect("kick");
    }
    let used = used_within(&mut q, TIMEOUT).expect("chain served");
    assert_eq!(used.id, head);
    fe.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    assert_eq!(fe.get_vring_base(0).expect("GET_VRING_BASE answers"), 1);
    drop(fe);
    assert!(wait_finished(&t, Duration::from_secs(3)), "session wedged");
}

#[test]
fn kick_fd_that_is_a_pipe_at_end_of_file_is_refused() {
    let (dev, _) = PatternDevice::new(1);
    let (mut fe, _t) = serve_in_thread(DeviceBackend::new(dev).expect("backend"));
    let (mem, mut q) = start_queue0(&mut fe, false);
    let (r, w) = nix::unistd::pipe().expect("pipe");
    drop(w);
    let e = fe
        .set_vring_kick(0, Some(r.as_fd()))
        .expect_err("a pipe is no kick eventfd");
    assert_eq!(e.nack_status(), Some(1), "{e}");
    // The eventfd given before still kicks the ring.
    q.round_trip(&mem, DATA, DATA + 0x1000, 64);
}

#[test]
fn set_features_acking_protocol_features_after_one_without_leaves_rings_disabled() {
    let (dev, _) = PatternDevice::new(1);
    let mut b = DeviceBackend::new(dev).expect("backend");
    let offered = b.offered_features();
    let without = offered & !virtio::bit(virtio::PROTOCOL_FEATURES);
    b.set_features(without).expect("SET_FEATURES");
    assert_eq!(b.acked_features(), without, "recorded without a server");
    assert_eq!(b.ring_running(0), Some((false, true)), "enabled at once");
    b.set_features(offered).expect("SET_FEATURES");
    assert_eq!(b.acked_features(), offered);
    assert_eq!(b.ring_running(0), Some((false, false)), "disabled again");
    // An explicit enable survives a later SET_FEATURES.
    b.set_vring_enable(0, true).expect("SET_VRING_ENABLE");
    b.set_features(offered).expect("SET_FEATURES");
    assert_eq!(b.ring_running(0), Some((false, true)));
}

#[test]
fn ring_started_after_protocol_features_are_acked_waits_for_set_vring_enable() {
    let (dev, counters) = PatternDevice::new(1);
    let (mut fe, _t) = serve_in_thread(DeviceBackend::new(dev).expect("backend"));
    let acked = handshake(&mut fe, true, false);
    fe.set_features(acked & !virtio::bit(virtio::PROTOCOL_FEATURES))
        .expect("SET_FEATURES without bit 30");
    fe.set_features(acked).expect("SET_FEATURES with bit 30");
    let mem = two_region_memory();
    send_mem_table(&mut fe, &mem);
    let mut q = GuestQueue::new(&mem, 0, false);
    q.start(&mut fe, &mem, 0, false);
    let (head, _) = publish_quietly(&mut q);
    q.driver.kick(&q.kick).expect("kick");
    assert!(
        used_within(&mut q, Duration::from_millis(300)).is_none(),
        "a disabled ring served a chain"
    );
    assert_eq!(counters.chains.load(Ordering::Relaxed), 0);
    fe.set_vring_enable(0, true).expect("SET_VRING_ENABLE");
    assert_eq!(used_within(&mut q, TIMEOUT).map(|u| u.id), Some(head));
}

#[test]
fn refused_set_vring_kick_without_an_ack_closes_the_connection() {
    let (dev, _) = PatternDevice::new(1);
    let (mut fe, t) = serve_in_thread(DeviceBackend::new(dev).expect("backend"));
    handshake(&mut fe, true, false);
    // As QEMU does: no NEED_REPLY on SET_VRING_KICK. The ring has no addresses, so it
    // cannot start.
    fe.set_request_acks(false);
    let kick = eventfd(EfdFlags::EFD_NONBLOCK);
    fe.set_vring_kick(0, Some(kick.as_fd()))
        .expect("nothing comes back for it");
    assert!(
        fe.get_features().is_err(),
        "the session went on with a dead ring"
    );
    assert!(wait_finished(&t, TIMEOUT), "the server did not close");
}

/// Two queues served by one worker thread; while `busy` is set, each round of queue 0
/// kicks queue 0 again, so its kick fd is readable at every `epoll_wait`.
struct OneWorker {
    inner: PatternDevice,
    kick0: vmm_sys_util::eventfd::EventFd,
    busy: Arc<AtomicBool>,
}

impl VirtioDevice for OneWorker {
    vhost_test_support::device_basics!(self; device_type: 4, queues: 2, max_queue_size: 256);
    fn worker_of(&self, _queue: usize) -> usize {
        0
    }
    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        if ctx.index() == 0 && self.busy.load(Ordering::Relaxed) {
            self.kick0.write(1)?;
        }
        self.inner.process_queue(ctx)
    }
}

#[test]
fn polled_ring_is_served_while_a_kick_fd_of_its_worker_fires_nonstop() {
    let mem = two_region_memory();
    let busy_q = GuestQueue::new(&mem, 0, false);
    let mut polled = GuestQueue::new(&mem, 1, false);
    let busy = Arc::new(AtomicBool::new(true));
    let dev = OneWorker {
        inner: PatternDevice::new(2).0,
        kick0: busy_q.kick.try_clone().expect("kick clone"),
        busy: Arc::clone(&busy),
    };
    let (mut fe, _t) = serve_in_thread(DeviceBackend::new(dev).expect("backend"));
    handshake(&mut fe, true, false);
    send_mem_table(&mut fe, &mem);
    busy_q.start(&mut fe, &mem, 0, true);
    start_polled(&mut fe, &mem, &polled);
    // Let the worker finish the look it takes at a ring when it is enabled: from now on
    // only polling can find the chain.
    std::thread::sleep(Duration::from_millis(100));
    let (head, _) = publish_quietly(&mut polled);
    let used = used_within(&mut polled, Duration::from_secs(2));
    busy.store(false, Ordering::Relaxed);
    assert_eq!(used.map(|u| u.id), Some(head), "the polled ring starved");
}

/// NUM, BASE, ADDR, CALL, KICK with NOFD, ENABLE.
fn start_polled(fe: &mut Frontend, mem: &GuestMemory, q: &GuestQueue) {
    let i = q.index;
    fe.set_vring_num(i, u32::from(QUEUE_SIZE)).expect("NUM");
    fe.set_vring_base(i, 0).expect("BASE");
    fe.set_vring_addr(&q.vring_addr(mem)).expect("ADDR");
    fe.set_vring_call(i, Some(bfd(&q.call))).expect("CALL");
    fe.set_vring_kick(i, None).expect("KICK without fd");
    fe.set_vring_enable(i, true).expect("ENABLE");
}

/// Driven directly (no server records the negotiation), a back-end whose front-end acked
/// bit 30 starts a ring disabled, as through a server: SET_VRING_ENABLE enables it.
#[test]
fn a_backend_driven_without_a_server_starts_rings_disabled_once_bit_30_is_acked() {
    let (dev, _) = PatternDevice::new(1);
    let mut b = DeviceBackend::new(dev).expect("backend");
    b.set_owner().expect("SET_OWNER");
    b.set_features(b.offered_features()).expect("SET_FEATURES");
    let mem = two_region_memory();
    let regs = regions(&mem);
    let table = vhost_proto::MemTable::new(&regs).expect("table");
    let fds = regs
        .iter()
        .map(|_| mem.fd().try_clone_to_owned().expect("dup"))
        .collect();
    b.set_mem_table(&table, fds).expect("SET_MEM_TABLE");
    let q = GuestQueue::new(&mem, 0, false);
    b.set_vring_num(0, u32::from(QUEUE_SIZE)).expect("NUM");
    b.set_vring_addr(&q.vring_addr(&mem)).expect("ADDR");
    let kick = bfd(&q.kick).try_clone_to_owned().expect("dup");
    b.set_vring_kick(0, Some(kick)).expect("KICK");
    assert_eq!(
        b.ring_running(0),
        Some((true, false)),
        "started, not enabled"
    );
    b.set_vring_enable(0, true).expect("ENABLE");
    assert_eq!(b.ring_running(0), Some((true, true)));
}

/// A front-end may write any value up to the eventfd's ceiling (0xffff_ffff_ffff_fffe) to
/// a kick eventfd. The worker never read it, so one such write left it saturated: every
/// later kick failed with EAGAIN (the descriptor is non-blocking) and was lost. A kick that
/// brings nothing new now resets the counter.
#[test]
fn a_kick_eventfd_written_up_to_its_ceiling_is_reset_and_later_kicks_are_served() {
    let (dev, _counters) = PatternDevice::new(1);
    let (mut fe, _t) = serve_in_thread(DeviceBackend::new(dev).expect("backend"));
    let (_mem, mut q) = start_queue0(&mut fe, false);
    q.kick
        .write(0xffff_ffff_ffff_fffe)
        .expect("a legal write up to the ceiling");
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = q.kick.write(1) {
        assert_eq!(e.raw_os_error(), Some(nix::libc::EAGAIN), "{e}");
        assert!(
            Instant::now() < deadline,
            "the kick eventfd stays saturated: every later kick is lost"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let head = q.submit((DATA, 16), (DATA + 0x1000, 64));
    assert_eq!(q.wait_used().id, head);
}
