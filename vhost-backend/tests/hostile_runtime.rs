//! Hostile front-ends against the device runtime's daemon, run in this process.
//!
//! The shared hostile front-end suite (`vhost_test_support::hostile`, also run against the
//! blk and rng daemons) runs here against [`InProcess`]: a `Daemon` serving a
//! `DeviceBackend` (one queue of at most 256, an 8-byte configuration space) on a
//! temporary socket. Each case plays one misbehaving front-end and checks: the answer the
//! server's error policy gives (an ack of 1 or the failure form and the session goes on,
//! or the connection closed), the daemon thread still running, a new front-end afterwards
//! completing the handshake and one request, and — once the daemon is stopped — exactly as
//! many descriptors open in the process as before it started. The cases below are the
//! runtime's own (worker threads, stall bounds, sealing). The tests run one at a time (a
//! static lock) so that descriptor counts are exact.

#![cfg(unix)]

mod runtime_support;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use runtime_support::{bfd, pattern, GuestQueue, PatternDevice, CONFIG, TIMEOUT};
use vhost_backend::runtime::{Daemon, DeviceBackend, StopHandle};
use vhost_backend::Backend;
use vhost_frontend::{Frontend, GuestMemory, Session, SessionOptions};
use vhost_proto::{
    virtio, FrontendReq, FrontendRequest, Header, HeaderFlags, VringAddr, VringState,
};
use vhost_test_support::hostile::{self, Target};
use vhost_test_support::wire::{
    ack, assert_closed, assert_session_goes_on, assert_stream_closed, region_of, send_req,
};
use vhost_test_support::{open_fds, settle};
use vhost_transport::Listener;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The daemon's bound on a stalled message in these tests.
const STALL: Duration = Duration::from_millis(500);

/// Serialises the tests: descriptor counts are per process.
static SERIAL: Mutex<()> = Mutex::new(());

/// A daemon thread serving a pattern device on a temporary socket.
struct InProcess {
    stop: Option<StopHandle>,
    thread: Option<JoinHandle<()>>,
    sock: PathBuf,
    dir: PathBuf,
    fds_before: usize,
    /// Descriptors open while the daemon waits for a front-end.
    fds_idle: usize,
    _serial: MutexGuard<'static, ()>,
}

impl InProcess {
    fn start(tag: &str) -> InProcess {
        let serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
        let fds_before = open_fds();
        let dir =
            std::env::temp_dir().join(format!("vhost-hostile-rt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let sock = dir.join("dev.sock");
        let listener = Listener::bind(&sock, None).expect("bind");
        let (device, _) = PatternDevice::new(1);
        let backend = DeviceBackend::new(device).expect("backend");
        let mut daemon = Daemon::new(listener, backend)
            .expect("daemon")
            .with_stall_timeout(Some(STALL))
            .with_first_message_timeout(Some(STALL));
        let stop = daemon.stop_handle();
        let thread = std::thread::spawn(move || daemon.run().expect("daemon run"));
        let fds_idle = open_fds();
        InProcess {
            stop: Some(stop),
            thread: Some(thread),
            sock,
            dir,
            fds_before,
            fds_idle,
            _serial: serial,
        }
    }

    fn assert_alive(&self) {
        let t = self.thread.as_ref().expect("daemon thread");
        assert!(!t.is_finished(), "the daemon stopped");
    }

    fn stream(&self) -> UnixStream {
        hostile::stream(self)
    }

    fn negotiated(&self) -> Frontend {
        hostile::negotiated(self)
    }

    /// The daemon still runs, and a new front-end completes the handshake and one request
    /// whose writable buffer comes back filled by the device.
    fn assert_serves_again(&self) {
        self.assert_alive();
        let opts = SessionOptions {
            queue_size: 64,
            memory_size: 1 << 20,
            ..SessionOptions::default()
        };
        let mut s = Session::connect(&self.sock, opts).expect("session");
        s.start().expect("start");
        let buf = s.memory().alloc(512, 16).expect("buffer");
        let used = s
            .round_trip(0, &[(buf, 512, true)], TIMEOUT)
            .expect("round trip");
        assert_eq!(used.len, 512);
        let mut got = [0u8; 512];
        s.memory().mem().read_slice(&mut got, buf).expect("read");
        assert!(got.iter().all(|&b| b == pattern(0)), "device data");
        drop(s);
        self.assert_alive();
        // Once the daemon has noticed the disconnect, it holds what it held before any
        // front-end came: every descriptor of both sessions is closed.
        assert_eq!(
            settle(self.fds_idle, open_fds),
            self.fds_idle,
            "descriptors left open after the sessions"
        );
    }

    /// The end of every hostile case: [`assert_serves_again`](Self::assert_serves_again),
    /// then [`finish`](Self::finish).
    fn serves_again_then_finish(self) {
        self.assert_serves_again();
        self.finish();
    }

    /// Stops the daemon and checks that every descriptor it held is closed.
    fn finish(mut self) {
        // The stop handle shares the daemon's stop eventfd: it goes too.
        self.stop.take().expect("stop handle").stop();
        let t = self.thread.take().expect("daemon thread");
        t.join().expect("daemon thread panicked");
        // The last session's worker threads and mappings went with the daemon.
        assert_eq!(
            settle(self.fds_before, open_fds),
            self.fds_before,
            "descriptors leaked"
        );
    }
}

impl Target for InProcess {
    fn start(tag: &str) -> Self {
        InProcess::start(tag)
    }
    fn socket(&self) -> &Path {
        &self.sock
    }
    fn max_queue_size(&self) -> u32 {
        256
    }
    fn config_size(&self) -> u32 {
        CONFIG.len() as u32
    }
    fn check_config(&self, config: &[u8]) {
        assert_eq!(config, CONFIG);
    }
    fn assert_serves_again(&mut self) {
        InProcess::assert_serves_again(self);
    }
    fn finish(self) {
        InProcess::finish(self);
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.stop();
        }
        if let Some(t) = self.thread.take() {
            // A test that failed may have left the daemon stuck: do not wait for it then.
            if !std::thread::panicking() {
                let _ = t.join();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

vhost_test_support::hostile_suite!(InProcess);

fn eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).expect("eventfd")
}

/// A running ring whose memory is removed (REM_MEM_REG) and then kicked: the worker finds
/// no memory, nothing crashes, and GET_VRING_BASE still answers.
#[test]
fn kick_after_the_ring_memory_is_removed_is_harmless() {
    let d = InProcess::start("unmapped");
    let mut fe = d.negotiated();
    let mem = GuestMemory::single(1 << 20).expect("memory");
    let r = region_of(&mem);
    fe.add_mem_reg(&r, mem.fd()).expect("ADD_MEM_REG");
    fe.set_features(fe.offered_features().expect("offer") & !virtio::bit(virtio::RING_PACKED))
        .expect("SET_FEATURES");
    let mut q = GuestQueue::new(&mem, 0, true);
    q.start(&mut fe, &mem, 0, true);
    let buf = mem.alloc(64, 16).expect("buffer");
    q.round_trip(&mem, buf.0, buf.0, 64);
    fe.rem_mem_reg(&r).expect("REM_MEM_REG");
    q.submit((buf.0, 16), (buf.0, 64));
    q.driver.kick(&q.kick).expect("kick");
    std::thread::sleep(Duration::from_millis(100));
    fe.get_vring_base(0).expect("GET_VRING_BASE");
    assert_session_goes_on(&mut fe);
    drop(fe);
    drop(q);
    drop(mem);
    d.serves_again_then_finish();
}

/// A ring whose available ring lies on its used ring: every used entry the device adds
/// moves the available index one further, so the ring never runs dry. The worker must
/// still let go of the ring: SET_VRING_ENABLE on it is answered, and after a disconnect
/// the daemon resets and serves the next front-end.
#[test]
fn ring_laid_over_its_own_used_ring_neither_blocks_control_nor_disconnect() {
    let d = InProcess::start("selffeeding");
    let mut fe = d.negotiated();
    let offered = fe.get_features().expect("GET_FEATURES");
    fe.set_features(
        offered & !virtio::bit(virtio::RING_EVENT_IDX) & !virtio::bit(virtio::RING_PACKED),
    )
    .expect("SET_FEATURES");
    let mem = GuestMemory::single(1 << 20).expect("memory");
    let r = region_of(&mem);
    fe.set_mem_table(&[r], &[mem.fd()]).expect("SET_MEM_TABLE");
    // Descriptor 0: 16 device-readable bytes, so every used length is 0 and every used
    // entry written over the available ring names head 0 again.
    let g = mem.mem();
    g.write_obj(0x8000u64, GuestAddress(0x1000))
        .expect("desc addr");
    g.write_obj(16u32, GuestAddress(0x1008)).expect("desc len");
    g.write_obj(0u32, GuestAddress(0x100c))
        .expect("desc flags, next");
    // Available and used ring at 0x2000: flags 0, idx 1, heads 0.
    g.write_obj(1u32 << 16, GuestAddress(0x2000))
        .expect("ring header");
    fe.set_vring_num(0, 16).expect("SET_VRING_NUM");
    fe.set_vring_base(0, 0).expect("SET_VRING_BASE");
    fe.set_vring_addr(&VringAddr {
        index: 0,
        flags: 0,
        desc: r.user_addr + 0x1000,
        used: r.user_addr + 0x2000,
        avail: r.user_addr + 0x2000,
        log: 0,
    })
    .expect("SET_VRING_ADDR");
    let (kick, call) = (eventfd(), eventfd());
    fe.set_vring_call(0, Some(bfd(&call)))
        .expect("SET_VRING_CALL");
    fe.set_vring_kick(0, Some(bfd(&kick)))
        .expect("SET_VRING_KICK");
    fe.set_vring_enable(0, true).expect("SET_VRING_ENABLE 1");
    std::thread::sleep(Duration::from_millis(100));
    let used: u16 = g.read_obj(GuestAddress(0x2002)).expect("idx");
    assert!(used > 1, "the ring was not served");
    fe.set_vring_enable(0, false)
        .expect("SET_VRING_ENABLE 0 on the busy ring");
    fe.set_vring_enable(0, true).expect("SET_VRING_ENABLE 1");
    std::thread::sleep(Duration::from_millis(50));
    drop(fe);
    drop((kick, call, mem));
    d.serves_again_then_finish();
}

/// Two queues served by one worker, each taking 50 ms per wake-up.
struct SlowDevice;

impl vhost_backend::runtime::VirtioDevice for SlowDevice {
    vhost_test_support::device_basics!(self; device_type: 4, queues: 2, max_queue_size: 16);
    fn worker_of(&self, _queue: usize) -> usize {
        0
    }
    fn process_queue(
        &self,
        _ctx: &mut vhost_backend::runtime::QueueContext<'_>,
    ) -> Result<vhost_backend::runtime::Processed, vhost_backend::runtime::DeviceError> {
        std::thread::sleep(Duration::from_millis(50));
        Ok(vhost_backend::runtime::Processed::Drained)
    }
}

/// A disconnect that comes while the worker handles a kick, with a wake-up of its own
/// still queued behind that kick in the same batch of events, stops the worker: the wake
/// the stop request writes is not swallowed with the earlier one.
#[test]
fn disconnect_while_a_wake_is_queued_behind_a_kick_stops_the_worker() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut b = DeviceBackend::new(SlowDevice).expect("backend");
        let mem = GuestMemory::single(1 << 20).expect("memory");
        let r = region_of(&mem);
        let table = vhost_proto::MemTable::new(&[r]).expect("table");
        let kicks = [eventfd(), eventfd()];
        b.set_features(b.offered_features()).expect("SET_FEATURES");
        let fd = mem.fd().try_clone_to_owned().expect("dup");
        b.set_mem_table(&table, vec![fd]).expect("SET_MEM_TABLE");
        for q in 0..2u8 {
            let base = r.user_addr + 0x1_0000 * u64::from(q);
            b.set_vring_num(q.into(), 16).expect("SET_VRING_NUM");
            b.set_vring_addr(&VringAddr {
                index: q.into(),
                flags: 0,
                desc: base,
                used: base + 0x2000,
                avail: base + 0x1000,
                log: 0,
            })
            .expect("SET_VRING_ADDR");
            let fd = bfd(&kicks[usize::from(q)])
                .try_clone_to_owned()
                .expect("dup");
            b.set_vring_kick(q, Some(fd)).expect("SET_VRING_KICK");
            b.set_vring_enable(q.into(), true)
                .expect("SET_VRING_ENABLE");
        }
        // Let the worker finish the wake-ups of the setup and go back to sleep.
        std::thread::sleep(Duration::from_millis(300));
        // The worker takes ring 1 (50 ms). Meanwhile ring 0 is kicked, then re-enabled,
        // which wakes the worker: kick 0 and the wake wait in that order.
        kicks[1].write(1).expect("kick 1");
        std::thread::sleep(Duration::from_millis(5));
        kicks[0].write(1).expect("kick 0");
        b.set_vring_enable(0, false).expect("SET_VRING_ENABLE 0");
        b.set_vring_enable(0, true).expect("SET_VRING_ENABLE 1");
        // The worker is now on kick 0 (50 to 100 ms), the wake still to handle.
        std::thread::sleep(Duration::from_millis(70));
        b.disconnected().expect("disconnect");
        assert_eq!(b.running_workers(), 0);
        // Closed before the test ends and lets the next one count descriptors.
        drop((b, kicks, mem));
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the disconnect waited for ever on its worker");
}

/// The harness itself: a well-behaved session leaves no descriptor behind either.
#[test]
fn well_behaved_session_leaves_no_descriptor_open() {
    let d = InProcess::start("clean");
    let mut fe = d.negotiated();
    send_req(
        &fe,
        &FrontendRequest::SetVringNum(VringState { index: 0, num: 16 }),
        &[],
    );
    assert_eq!(ack(&fe, FrontendReq::SetVringNum), 0);
    assert_session_goes_on(&mut fe);
    drop(fe);
    d.serves_again_then_finish();
}

/// A front-end that shrinks its memory after SET_MEM_TABLE cannot (the back-end sealed the
/// memfd against shrinking before mapping it), so no access can fault: the ring keeps
/// serving and the daemon lives.
#[test]
fn front_end_shrinking_its_memory_after_the_table_is_set_cannot_and_is_served() {
    let d = InProcess::start("shrink");
    let opts = SessionOptions {
        queue_size: 64,
        memory_size: 1 << 20,
        ..SessionOptions::default()
    };
    let mut s = Session::connect(&d.sock, opts).expect("session");
    s.start().expect("start");
    let e = nix::unistd::ftruncate(s.memory().fd(), 4096).unwrap_err();
    assert_eq!(
        e,
        nix::errno::Errno::EPERM,
        "the memfd is sealed against shrinking"
    );
    let buf = s.memory().alloc(512, 16).expect("buffer");
    let used = s
        .round_trip(0, &[(buf, 512, true)], TIMEOUT)
        .expect("round trip");
    assert_eq!(used.len, 512);
    drop(s);
    d.serves_again_then_finish();
}

/// Half a header, then nothing: the connection is closed once the stall bound passes, and
/// the next front-end is served.
#[test]
fn half_a_header_that_stalls_closes_that_connection_within_the_bound() {
    let d = InProcess::start("stallhdr");
    let mut s = d.stream();
    let h = Header::new(FrontendReq::GetFeatures as u32, HeaderFlags::empty(), 0).to_wire();
    s.write_all(&h[..5]).expect("write");
    let started = Instant::now();
    assert_stream_closed(s);
    assert!(
        started.elapsed() < STALL * 4,
        "closed after {:?}",
        started.elapsed()
    );
    d.serves_again_then_finish();
}

/// A header whose body stops half way: closed once the stall bound passes.
#[test]
fn half_a_body_that_stalls_closes_that_connection_within_the_bound() {
    let d = InProcess::start("stallbody");
    let fe = d.negotiated();
    let h = Header::new(FrontendReq::SetFeatures as u32, HeaderFlags::empty(), 8);
    fe.send_raw(&h, &[1, 2, 3], &[]).expect("send");
    let started = Instant::now();
    assert_closed(&fe);
    assert!(
        started.elapsed() < STALL * 4,
        "closed after {:?}",
        started.elapsed()
    );
    drop(fe);
    d.serves_again_then_finish();
}

/// With a first-message bound, a client that connects and never sends a message does not
/// hold the daemon: it is closed after the bound, and the next front-end is served.
#[test]
fn a_client_that_connects_and_sends_nothing_is_closed_within_the_first_message_bound() {
    let d = InProcess::start("silent");
    let started = Instant::now();
    let s = d.stream();
    assert_stream_closed(s);
    // The receive timeout counts in timer ticks: allow one early tick.
    let slack = Duration::from_millis(20);
    assert!(
        started.elapsed() + slack >= STALL,
        "closed before the bound"
    );
    assert!(
        started.elapsed() < STALL * 4,
        "closed after {:?}",
        started.elapsed()
    );
    d.serves_again_then_finish();
}

/// Idle time between messages is legitimate: a front-end quiet for longer than the bound is
/// still served.
#[test]
fn a_front_end_idle_between_messages_longer_than_the_bound_stays_connected() {
    let d = InProcess::start("idle");
    let mut fe = d.negotiated();
    std::thread::sleep(STALL * 2);
    assert_session_goes_on(&mut fe);
    drop(fe);
    d.serves_again_then_finish();
}

/// Without a first-message bound (the default) a front-end may connect long before it sends
/// anything, as QEMU does while it sets itself up: the stall bound does not cut it off.
#[test]
fn by_default_a_front_end_silent_after_connecting_is_not_cut_off() {
    let _serial = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let (be, fe) = vhost_transport::Connection::<vhost_transport::FrontendChannel>::pair()
        .expect("socket pair");
    let (device, _) = PatternDevice::new(1);
    let backend = DeviceBackend::new(device).expect("backend");
    let mut server = vhost_backend::BackendServer::new(be, backend).expect("server");
    server.set_stall_timeout(Some(Duration::from_millis(100)));
    let t = std::thread::spawn(move || server.serve());
    let mut fe = Frontend::new(fe);
    fe.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    std::thread::sleep(Duration::from_millis(500));
    assert_session_goes_on(&mut fe);
    drop(fe);
    t.join().expect("server thread").expect("clean end");
}
