//! Many devices from one process ([`MultiDaemon`]): exports served at once, each with its
//! own back-end; a slow request or a hostile front-end on one socket does not hold up
//! another; the connection bound refuses politely; a stop resets every back-end.

#![cfg(target_os = "linux")]

mod runtime_support;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use runtime_support::*;
use vhost_backend::runtime::daemon::StopHandle;
use vhost_backend::runtime::{
    DeviceBackend, DeviceError, MultiDaemon, Processed, QueueContext, VirtioDevice,
};
use vhost_backend::Backend;
use vhost_frontend::Frontend;
use vhost_transport::{Connection, FrontendChannel, Listener};

type Boxed = Box<dyn Backend>;

/// Guest-physical address of request data (the second region).
const DATA: u64 = 0x4000_0000;

/// A pattern device whose GET_CONFIG takes `delay`.
struct SlowConfig {
    inner: PatternDevice,
    delay: Duration,
}

/// Waits up to `TIMEOUT` for `path` to be removed; `stuck` says what is still there.
fn wait_gone(path: &Path, stuck: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while path.exists() {
        assert!(Instant::now() < deadline, "{stuck}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl SlowConfig {
    /// A one-queue pattern device whose config reads take `delay`, and its counters.
    fn new(delay: Duration) -> (Self, Arc<Counters>) {
        let (inner, counters) = PatternDevice::new(1);
        (SlowConfig { inner, delay }, counters)
    }
}

impl VirtioDevice for SlowConfig {
    fn device_type(&self) -> u32 {
        self.inner.device_type()
    }
    fn num_queues(&self) -> usize {
        self.inner.num_queues()
    }
    fn max_queue_size(&self) -> u16 {
        self.inner.max_queue_size()
    }
    fn features(&self) -> u64 {
        self.inner.features()
    }
    fn config_size(&self) -> usize {
        self.inner.config_size()
    }
    fn read_config(&self, offset: u32, data: &mut [u8]) -> Result<(), DeviceError> {
        std::thread::sleep(self.delay);
        self.inner.read_config(offset, data)
    }
    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        self.inner.process_queue(ctx)
    }
    fn reset(&self) {
        self.inner.reset()
    }
}

struct Host {
    dir: PathBuf,
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
}

impl Host {
    /// Starts a daemon with `backends`, export `i` on socket `dir/s{i}`.
    fn start(
        name: &str,
        backends: Vec<Boxed>,
        tune: impl FnOnce(MultiDaemon<Boxed>) -> MultiDaemon<Boxed>,
    ) -> Host {
        let dir = std::env::temp_dir().join(format!("multi-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let mut d = tune(MultiDaemon::new().expect("daemon"));
        for (i, b) in backends.into_iter().enumerate() {
            let path = dir.join(format!("s{i}"));
            let l = Listener::bind(&path, None).expect("bind");
            d.add(path.display().to_string(), l, b);
        }
        let stop = d.stop_handle();
        let thread = std::thread::spawn(move || d.run().expect("run"));
        Host {
            dir,
            stop,
            thread: Some(thread),
        }
    }

    fn path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("s{i}"))
    }

    fn connect(&self, i: usize) -> Frontend {
        connect(&self.path(i))
    }

    /// Stops the daemon and waits for it; fails the test if it takes longer than `bound`.
    fn stop_within(mut self, bound: Duration) {
        self.stop.stop();
        let t = self.thread.take().expect("running");
        let start = Instant::now();
        while !t.is_finished() {
            assert!(start.elapsed() < bound, "the daemon did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        t.join().expect("daemon thread");
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            self.stop.stop();
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn connect(path: &Path) -> Frontend {
    let c = Connection::<FrontendChannel>::connect(path).expect("connect");
    let fe = Frontend::new(c);
    fe.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    fe
}

fn pattern_backends(n: usize) -> (Vec<Boxed>, Vec<Arc<Counters>>) {
    (0..n)
        .map(|_| {
            let (d, c) = PatternDevice::new(1);
            let b: Boxed = Box::new(DeviceBackend::new(d).expect("backend"));
            (b, c)
        })
        .unzip()
}

/// A whole session: handshake, memory, queue 0, `n` verified round trips.
fn verified_io(fe: &mut Frontend, n: usize) {
    let (mem, mut q) = start_queue0(fe, true);
    for i in 0..n {
        let len = 64 + (i as u32 % 7) * 512;
        q.round_trip(&mem, DATA, DATA + 0x4000, len);
    }
}

#[test]
fn exports_are_served_at_once_each_with_its_own_backend() {
    let (backends, counters) = pattern_backends(3);
    let host = Host::start("each", backends, |d| d);
    let mut fes: Vec<Frontend> = (0..3).map(|i| host.connect(i)).collect();
    // Every front-end is connected at once; each does its own I/O, a different amount.
    let handles: Vec<_> = fes
        .drain(..)
        .enumerate()
        .map(|(i, mut fe)| {
            std::thread::spawn(move || {
                verified_io(&mut fe, 10 * (i + 1));
                fe
            })
        })
        .collect();
    let fes: Vec<Frontend> = handles.into_iter().map(|h| h.join().expect("io")).collect();
    for (i, c) in counters.iter().enumerate() {
        assert_eq!(
            c.chains.load(Ordering::Relaxed),
            10 * (i as u64 + 1),
            "export {i} served its own front-end's requests only"
        );
    }
    drop(fes);
    // Each back-end is reset when its front-end leaves, and the export serves the next one.
    let mut again = host.connect(1);
    verified_io(&mut again, 1);
    for c in &counters {
        assert!(c.resets.load(Ordering::Relaxed) >= 1);
    }
    drop(again);
    host.stop_within(TIMEOUT);
}

#[test]
fn a_slow_request_on_one_export_does_not_delay_another_handshake() {
    let (slow, _) = SlowConfig::new(Duration::from_secs(3));
    let (mut backends, _) = pattern_backends(1);
    backends.insert(0, Box::new(DeviceBackend::new(slow).expect("backend")));
    let host = Host::start("slow", backends, |d| d);
    let mut a = host.connect(0);
    handshake(&mut a, true, true);
    let slow_call = std::thread::spawn(move || {
        let c = a.get_config(0, 8, 0).expect("GET_CONFIG");
        (a, c)
    });
    // Let the slow request reach its control thread.
    std::thread::sleep(Duration::from_millis(200));
    let mut b = host.connect(1);
    verified_io(&mut b, 5);
    assert!(
        !slow_call.is_finished(),
        "the other export's whole session ran while the slow GET_CONFIG was in hand"
    );
    let (a, config) = slow_call.join().expect("slow call");
    assert_eq!(config, CONFIG);
    drop((a, b));
    host.stop_within(TIMEOUT);
}

/// Each hostile input, on export 0, while export 1 does verified I/O without pause. What
/// each gets: bad framing closes that connection; a message cut off in its body is waited
/// for (holding no thread) until the peer goes; a
/// memory table past its file and a ring outside memory get failure replies; GET_VRING_BASE
/// of a ring that does not exist closes the connection (no failure form); a front-end that
/// stops in the middle of a header is left waiting (it holds no thread); a connection flood
/// waits its turn in the backlog. Export 0 then serves a well-behaved front-end.
#[test]
fn a_hostile_front_end_on_one_export_does_not_disturb_another() {
    let (backends, counters) = pattern_backends(2);
    let host = Host::start("hostile", backends, |d| d.with_control_threads(2));
    let mut good = host.connect(1);
    let (mem, mut q) = start_queue0(&mut good, true);
    let hostile_path = host.path(0);
    let hostile = std::thread::spawn(move || {
        let raw = |bytes: &[u8]| {
            let mut s = UnixStream::connect(&hostile_path).expect("connect");
            s.write_all(bytes).expect("write");
            s
        };
        // Bad framing: version 0 in the flags.
        let s = raw(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        wait_closed(s);
        // A header promising 8 body bytes, 2 of them sent: waited for without a thread;
        // the connection ends when the peer goes.
        let s = raw(&[15, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 1, 2]);
        std::thread::sleep(Duration::from_millis(200));
        drop(s);
        // A front-end that negotiates, then sends what the runtime refuses: a memory
        // table whose region lies past its file and a ring outside guest memory get their
        // failure replies and the session goes on.
        let mut fe = connect(&hostile_path);
        handshake(&mut fe, true, true);
        let mem = two_region_memory();
        let mut regs = regions(&mem);
        regs[0].mmap_offset = 1 << 40;
        let fds: Vec<_> = regs.iter().map(|_| mem.fd()).collect();
        assert!(
            fe.set_mem_table(&regs, &fds).is_err(),
            "region past its file"
        );
        send_mem_table(&mut fe, &mem);
        fe.set_vring_num(0, 64).expect("NUM");
        let outside = vhost_proto::VringAddr {
            index: 0,
            flags: 0,
            desc: 0x1234_0000_0000,
            used: 0x1234_0000_0000,
            avail: 0x1234_0000_0000,
            log: 0,
        };
        assert!(fe.set_vring_addr(&outside).is_err(), "ring outside memory");
        assert!(fe.get_features().is_ok(), "the session goes on");
        // GET_VRING_BASE has no failure form: a ring that does not exist closes the
        // connection.
        assert!(fe.get_vring_base(9).is_err(), "no ring 9");
        assert!(fe.get_features().is_err(), "closed");
        drop(fe);
        // Half a header, then silence, while a flood of connections waits behind it.
        let s = raw(&[1, 0, 0, 0, 1, 0]);
        let flood: Vec<UnixStream> = (0..20)
            .map(|_| UnixStream::connect(&hostile_path).expect("connect"))
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        drop(s);
        drop(flood);
    });
    let mut done = 0;
    while !hostile.is_finished() || done < 50 {
        q.round_trip(&mem, DATA, DATA + 0x4000, 256);
        done += 1;
    }
    hostile.join().expect("hostile front-ends");
    assert_eq!(counters[1].chains.load(Ordering::Relaxed), done as u64);
    // Export 0 serves a well-behaved front-end (after the flood's connections are gone).
    let deadline = Instant::now() + TIMEOUT;
    let mut next = loop {
        let mut fe = host.connect(0);
        if fe.get_features().is_ok() {
            break fe;
        }
        assert!(Instant::now() < deadline, "export 0 does not serve again");
    };
    verified_io(&mut next, 3);
    drop((next, good));
    host.stop_within(TIMEOUT);
}

fn is_disconnect(e: &vhost_frontend::FrontendError) -> bool {
    matches!(e, vhost_frontend::FrontendError::Transport(t) if t.is_disconnect())
}

/// Reads until end of stream; fails the test if the daemon keeps the connection open.
fn wait_closed(mut s: UnixStream) {
    use std::io::Read;
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("the daemon kept a hostile connection open: {e}"),
        }
    }
}

#[test]
fn beyond_max_connections_a_front_end_is_closed_and_a_later_one_served() {
    let (backends, _) = pattern_backends(2);
    let host = Host::start("max", backends, |d| d.with_max_connections(1));
    let mut a = host.connect(0);
    handshake(&mut a, true, true);
    let mut b = host.connect(1);
    let e = b.get_features().expect_err("beyond the bound");
    assert!(is_disconnect(&e), "closed at once, not left waiting: {e}");
    drop(a);
    let deadline = Instant::now() + TIMEOUT;
    loop {
        b = host.connect(1);
        if b.get_features().is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "export 1 never served");
        std::thread::sleep(Duration::from_millis(20));
    }
    verified_io(&mut b, 2);
    drop(b);
    host.stop_within(TIMEOUT);
}

#[test]
fn a_stop_ends_every_session_and_resets_every_backend() {
    let (slow, slow_counters) = SlowConfig::new(Duration::from_millis(500));
    let (mut backends, mut counters) = pattern_backends(2);
    backends.push(Box::new(DeviceBackend::new(slow).expect("backend")));
    counters.push(slow_counters);
    let host = Host::start("stop", backends, |d| d);
    let mut fes: Vec<Frontend> = (0..2).map(|i| host.connect(i)).collect();
    let sessions: Vec<_> = fes.iter_mut().map(|fe| start_queue0(fe, true)).collect();
    let mut slow_fe = host.connect(2);
    handshake(&mut slow_fe, true, true);
    // A request in hand on a control thread when the stop comes.
    let pending = std::thread::spawn(move || slow_fe.get_config(0, 8, 0));
    std::thread::sleep(Duration::from_millis(100));
    host.stop_within(TIMEOUT);
    for (i, c) in counters.iter().enumerate() {
        assert!(
            c.resets.load(Ordering::Relaxed) >= 1,
            "export {i} was not reset"
        );
    }
    // Every connection is closed (not left open until a read times out).
    for mut fe in fes {
        let e = fe.get_features().expect_err("closed");
        assert!(is_disconnect(&e), "{e}");
    }
    // The request in hand when the stop came: its connection is closed under it.
    let e = pending.join().expect("pending").expect_err("closed");
    assert!(is_disconnect(&e), "{e}");
    drop(sessions);
}

/// Front-ends that stop in the middle of a message body, or send it a byte at a time, on
/// more exports than there are control threads: none of them holds a control thread, so
/// another export's control requests are answered while they are still at it.
#[test]
fn front_ends_dripping_a_body_hold_no_control_thread() {
    let (backends, _) = pattern_backends(4);
    let host = Host::start("drip", backends, |d| d.with_control_threads(2));
    let drippers: Vec<_> = (0..3)
        .map(|i| {
            let path = host.path(i);
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&path).expect("connect");
                // SET_FEATURES (15) promising 8 body bytes, sent one every 150 ms.
                s.write_all(&[15, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0])
                    .expect("header");
                for b in 0..8u8 {
                    std::thread::sleep(Duration::from_millis(150));
                    if s.write_all(&[b]).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut fe = host.connect(3);
    handshake(&mut fe, true, true);
    for _ in 0..20 {
        assert_eq!(fe.get_config(0, 8, 0).expect("GET_CONFIG"), CONFIG);
    }
    assert!(
        drippers.iter().all(|d| !d.is_finished()),
        "the drippers finished before another export's 20 control requests were answered"
    );
    for d in drippers {
        d.join().expect("dripper");
    }
    drop(fe);
    host.stop_within(TIMEOUT);
}

/// A header and its body in separate writes (a slow front-end) are one message.
#[test]
fn a_body_that_comes_after_its_header_is_served() {
    let (backends, _) = pattern_backends(1);
    let host = Host::start("split", backends, |d| d);
    let mut s = UnixStream::connect(host.path(0)).expect("connect");
    // SET_OWNER, then GET_VRING_BASE (11) of ring 0 with its 8-byte body sent 100 ms after
    // its header.
    s.write_all(&[3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
        .expect("SET_OWNER");
    s.write_all(&[11, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0])
        .expect("header");
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(&[0; 8]).expect("body");
    use std::io::Read;
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut reply = [0u8; 12 + 8];
    s.read_exact(&mut reply).expect("GET_VRING_BASE reply");
    assert_eq!(reply[0], 11, "the reply to GET_VRING_BASE");
    assert_eq!(&reply[12..], &[0; 8], "ring 0, base 0");
    drop(s);
    host.stop_within(TIMEOUT);
}

/// A device that panics while handling a request loses its own export only: its socket is
/// closed (connections refused, not left hanging), the other exports go on, and a stop
/// still returns.
#[test]
fn a_backend_that_panics_loses_its_export_only() {
    struct Panicky(PatternDevice);
    impl VirtioDevice for Panicky {
        fn device_type(&self) -> u32 {
            self.0.device_type()
        }
        fn num_queues(&self) -> usize {
            self.0.num_queues()
        }
        fn max_queue_size(&self) -> u16 {
            self.0.max_queue_size()
        }
        fn features(&self) -> u64 {
            self.0.features()
        }
        fn config_size(&self) -> usize {
            self.0.config_size()
        }
        fn read_config(&self, _: u32, _: &mut [u8]) -> Result<(), DeviceError> {
            panic!("a device bug");
        }
        fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
            self.0.process_queue(ctx)
        }
    }
    let (mut backends, _) = pattern_backends(1);
    backends.insert(
        0,
        Box::new(DeviceBackend::new(Panicky(PatternDevice::new(1).0)).expect("backend")),
    );
    let host = Host::start("panic", backends, |d| d.with_control_threads(1));
    let mut bad = host.connect(0);
    handshake(&mut bad, true, true);
    let e = bad.get_config(0, 8, 0).expect_err("the device panicked");
    assert!(is_disconnect(&e), "{e}");
    wait_gone(&host.path(0), "the retired export's socket is still there");
    assert!(
        Connection::<FrontendChannel>::connect(host.path(0)).is_err(),
        "a front-end is refused, not left waiting"
    );
    // The other export, on the same (single) control thread, goes on.
    let mut good = host.connect(1);
    verified_io(&mut good, 3);
    drop(good);
    host.stop_within(TIMEOUT);
}

/// A back-end that cannot say what it offers retires its export the same way.
#[test]
fn a_backend_whose_offer_fails_closes_its_socket() {
    let rec = vhost_backend::test_utils::RecordingBackend::new();
    rec.recording()
        .fail_on(vhost_proto::FrontendReq::GetFeatures);
    let (mut backends, _) = pattern_backends(1);
    backends.insert(0, Box::new(rec));
    let host = Host::start("offer", backends, |d| d);
    let mut fe = host.connect(0);
    assert!(fe.get_features().is_err());
    wait_gone(&host.path(0), "the export's socket is still there");
    let mut good = host.connect(1);
    verified_io(&mut good, 1);
    drop(good);
    host.stop_within(TIMEOUT);
}
