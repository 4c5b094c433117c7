//! Shared pieces of the runtime tests: a pattern device, and a front-end that drives a
//! `DeviceBackend` through the real server with guest memory and virtqueue drivers.
#![allow(dead_code)]

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vhost_backend::runtime::{
    read_config_bytes, DeviceBackend, DeviceError, Processed, QueueContext, VirtioDevice,
};
use vhost_backend::BackendServer;
use vhost_frontend::{Frontend, GuestMemory, RegionSpec, VirtqueueDriver};
use vhost_proto::{virtio, ProtocolFeatures, VringAddr};
use vhost_transport::Connection;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The ring layout the helpers of this thread negotiate and drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Split virtqueues.
    Split,
    /// Packed virtqueues (VIRTIO_F_RING_PACKED).
    Packed,
}

thread_local! {
    static LAYOUT: std::cell::Cell<Layout> = const { std::cell::Cell::new(Layout::Split) };
}

/// The layout [`handshake`] acks and [`GuestQueue::new`] builds on this thread.
pub fn layout() -> Layout {
    LAYOUT.with(|l| l.get())
}

/// `features` without RING_PACKED unless this thread's layout is packed.
pub fn for_layout(features: u64) -> u64 {
    match layout() {
        Layout::Split => features & !virtio::bit(virtio::RING_PACKED),
        Layout::Packed => features,
    }
}

/// What GET_VRING_BASE answers for a ring of [`QUEUE_SIZE`] after `n`
/// [`GuestQueue::round_trip`]s (two descriptors each) all completed: split, the available
/// index; packed, both positions and wrap counters.
pub fn base_after(n: u32) -> u32 {
    base_after_chains(n, 2)
}

/// [`base_after`] for `n` chains of `descs` descriptors each.
pub fn base_after_chains(n: u32, descs: u32) -> u32 {
    match layout() {
        Layout::Split => n & 0xffff,
        Layout::Packed => {
            let size = u32::from(QUEUE_SIZE);
            let descs = descs * n;
            let half = (descs % size) | (u32::from((descs / size) % 2 == 0) << 15);
            half | (half << 16)
        }
    }
}

/// Runs `test` once per ring layout (split, then packed), naming the layout on failure.
pub fn for_each_layout(test: impl Fn()) {
    for l in [Layout::Split, Layout::Packed] {
        LAYOUT.with(|c| c.set(l));
        eprintln!("-- ring layout: {l:?}");
        test();
    }
    LAYOUT.with(|c| c.set(Layout::Split));
}
pub const QUEUE_SIZE: u16 = 64;
pub const CONFIG: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];

/// The byte the device writes into every device-writable buffer of queue `q`.
pub fn pattern(q: usize) -> u8 {
    0xa0 + q as u8
}

/// What the device did, readable by the test while the device runs elsewhere.
#[derive(Debug, Default)]
pub struct Counters {
    pub chains: AtomicU64,
    pub bytes_read: AtomicU64,
    pub resets: AtomicU64,
}

/// A device that fills device-writable buffers with [`pattern`] and reads readable ones.
pub struct PatternDevice {
    pub queues: usize,
    pub counters: Arc<Counters>,
}

impl PatternDevice {
    pub fn new(queues: usize) -> (Self, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        (
            PatternDevice {
                queues,
                counters: Arc::clone(&counters),
            },
            counters,
        )
    }
}

impl VirtioDevice for PatternDevice {
    vhost_test_support::device_basics!(self; device_type: 4, queues: self.queues, max_queue_size: 256);
    fn config_size(&self) -> usize {
        CONFIG.len()
    }
    fn read_config(&self, offset: u32, data: &mut [u8]) -> Result<(), DeviceError> {
        read_config_bytes(&CONFIG, offset, data)
    }
    fn reset(&self) {
        self.counters.resets.fetch_add(1, Ordering::Relaxed);
    }
    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        let fill = [pattern(usize::from(ctx.index())); 512];
        let mut sink = [0u8; 512];
        while let Some(req) = ctx.pop() {
            let mut read = 0u64;
            while read < req.readable_len() {
                let n = (req.readable_len() - read).min(512) as usize;
                if req.read_readable(read, &mut sink[..n]).is_err() {
                    break;
                }
                read += n as u64;
            }
            self.counters.bytes_read.fetch_add(read, Ordering::Relaxed);
            let mut written = 0u64;
            while written < req.writable_len() {
                let n = (req.writable_len() - written).min(512) as usize;
                if req.write_writable(written, &fill[..n]).is_err() {
                    break;
                }
                written += n as u64;
            }
            req.complete(written as u32);
            self.counters.chains.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Processed::Drained)
    }
}

pub fn bfd(e: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: `e` owns this open descriptor and outlives the borrow.
    unsafe { BorrowedFd::borrow_raw(e.as_raw_fd()) }
}

/// A back-end served in its own thread over a socket pair; the join handle gives the
/// back-end back once the front-end is gone.
pub fn serve_in_thread<D: VirtioDevice>(
    backend: DeviceBackend<D>,
) -> (Frontend, JoinHandle<DeviceBackend<D>>) {
    let (fe, be) = Connection::<vhost_transport::FrontendChannel>::pair().expect("socket pair");
    let t = std::thread::spawn(move || {
        let mut server = BackendServer::new(be, backend).expect("server");
        let _ = server.serve();
        server.into_backend()
    });
    (frontend_on(fe), t)
}

/// The front-end on `conn`, with the tests' read timeout.
pub fn frontend_on(conn: Connection<vhost_transport::FrontendChannel>) -> Frontend {
    let fe = Frontend::new(conn);
    fe.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    fe
}

/// Two regions whose front-end virtual addresses are unlike their guest-physical ones
/// (and unlike each other's order).
pub fn two_region_memory() -> GuestMemory {
    GuestMemory::new(&[
        RegionSpec {
            guest_phys_addr: 0x10_0000,
            size: 0x10_0000,
            user_addr: 0x7f55_0000_0000,
        },
        RegionSpec {
            guest_phys_addr: 0x4000_0000,
            size: 0x10_0000,
            user_addr: 0x5500_1000_0000,
        },
    ])
    .expect("guest memory")
}

pub use vhost_test_support::wire::regions;

pub fn send_mem_table(fe: &mut Frontend, mem: &GuestMemory) {
    let regs = regions(mem);
    let fds: Vec<BorrowedFd<'_>> = regs.iter().map(|_| mem.fd()).collect();
    fe.set_mem_table(&regs, &fds).expect("SET_MEM_TABLE");
}

/// GET_FEATURES … SET_FEATURES. With `protocol`, bit 30 and every offered protocol feature
/// are acked; without, bit 30 is left out and no protocol message is sent.
pub fn handshake(fe: &mut Frontend, protocol: bool, event_idx: bool) -> u64 {
    let offered = fe.get_features().expect("GET_FEATURES");
    let mut acked = offered;
    if protocol {
        let p = fe.get_protocol_features().expect("GET_PROTOCOL_FEATURES");
        fe.set_protocol_features(p).expect("SET_PROTOCOL_FEATURES");
    } else {
        acked &= !virtio::bit(virtio::PROTOCOL_FEATURES);
    }
    if !event_idx {
        acked &= !virtio::bit(virtio::RING_EVENT_IDX);
    }
    acked = for_layout(acked);
    fe.set_owner().expect("SET_OWNER");
    fe.set_features(acked).expect("SET_FEATURES");
    acked
}

/// The usual start of a session: handshake with every protocol feature (and EVENT_IDX as
/// asked), the two-region memory table, and queue 0 started and enabled.
pub fn start_queue0(fe: &mut Frontend, event_idx: bool) -> (GuestMemory, GuestQueue) {
    handshake(fe, true, event_idx);
    let mem = two_region_memory();
    send_mem_table(fe, &mem);
    let q = GuestQueue::new(&mem, 0, event_idx);
    q.start(fe, &mem, 0, true);
    (mem, q)
}

/// The guest side of one queue: driver and eventfds.
pub struct GuestQueue {
    pub index: u32,
    pub driver: VirtqueueDriver,
    pub kick: EventFd,
    pub call: EventFd,
}

impl GuestQueue {
    pub fn new(mem: &GuestMemory, index: u32, event_idx: bool) -> Self {
        GuestQueue {
            index,
            driver: VirtqueueDriver::with_layout(
                mem,
                QUEUE_SIZE,
                event_idx,
                0,
                layout() == Layout::Packed,
            )
            .expect("driver"),
            kick: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
            call: EventFd::new(EFD_NONBLOCK).expect("eventfd"),
        }
    }

    /// The SET_VRING_ADDR of this ring: its front-end virtual addresses in `mem`.
    pub fn vring_addr(&self, mem: &GuestMemory) -> VringAddr {
        let a = self.driver.vring_user_addrs(mem).expect("ring addresses");
        VringAddr {
            index: self.index,
            flags: 0,
            desc: a.desc,
            used: a.used,
            avail: a.avail,
            log: 0,
        }
    }

    /// NUM, BASE, ADDR, CALL, KICK — and ENABLE when `enable`. A packed ring's `base` is
    /// the packed encoding; 0 there means where the driver is.
    pub fn start(&self, fe: &mut Frontend, mem: &GuestMemory, base: u32, enable: bool) {
        let i = self.index;
        let base = if self.driver.is_packed() && base == 0 {
            self.driver.vring_base()
        } else {
            base
        };
        fe.set_vring_num(i, u32::from(QUEUE_SIZE)).expect("NUM");
        fe.set_vring_base(i, base).expect("BASE");
        fe.set_vring_addr(&self.vring_addr(mem)).expect("ADDR");
        fe.set_vring_call(i, Some(bfd(&self.call))).expect("CALL");
        fe.set_vring_kick(i, Some(bfd(&self.kick))).expect("KICK");
        if enable {
            fe.set_vring_enable(i, true).expect("ENABLE");
        }
    }

    /// Adds one chain (a readable buffer, then a writable one) and kicks if asked to.
    pub fn submit(&mut self, read: (u64, u32), write: (u64, u32)) -> u16 {
        let head = self
            .driver
            .add_chain(&[
                (GuestAddress(read.0), read.1, false),
                (GuestAddress(write.0), write.1, true),
            ])
            .expect("add_chain");
        if self.driver.publish().expect("publish") {
            self.driver.kick(&self.kick).expect("kick");
        }
        head
    }

    /// Waits for the next used entry.
    pub fn wait_used(&mut self) -> vhost_frontend::UsedElem {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(u) = self.driver.pop_used().expect("pop_used") {
                return u;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "queue {}: no used entry within {TIMEOUT:?}",
                self.index
            );
            VirtqueueDriver::wait_call(&self.call, Duration::from_millis(100)).expect("wait");
        }
    }

    /// One request: writable buffer at `write_gpa`; checks the used length and the bytes.
    pub fn round_trip(&mut self, mem: &GuestMemory, read_gpa: u64, write_gpa: u64, len: u32) {
        mem.mem()
            .write_slice(&vec![0u8; len as usize], GuestAddress(write_gpa))
            .expect("clear");
        let head = self.submit((read_gpa, 16), (write_gpa, len));
        let used = self.wait_used();
        assert_eq!(used.id, head);
        assert_eq!(used.len, len);
        let mut got = vec![0u8; len as usize];
        mem.mem()
            .read_slice(&mut got, GuestAddress(write_gpa))
            .expect("read back");
        let want = pattern(self.index as usize);
        assert!(got.iter().all(|&b| b == want), "queue {} data", self.index);
    }
}

pub fn all_protocol() -> ProtocolFeatures {
    vhost_backend::runtime::RUNTIME_PROTOCOL_FEATURES | ProtocolFeatures::CONFIG
}

pub fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

/// How a back-end run by [`spawn_crashing`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashEnd {
    /// It panicked: at this injected crash point, or (`None`) elsewhere.
    Crashed(Option<&'static str>),
    /// Killed between two turns (its `kill` flag was set).
    Killed,
    /// The front-end closed the connection.
    Closed,
}

impl CrashEnd {
    /// The injected crash point it ended at, if it did. A panic anywhere else is a bug in
    /// the back-end, not a crash the test asked for: it fails the test.
    pub fn crash_point(self) -> Option<&'static str> {
        match self {
            CrashEnd::Crashed(None) => {
                panic!("the back-end panicked outside an injected crash point")
            }
            CrashEnd::Crashed(at) => at,
            CrashEnd::Killed | CrashEnd::Closed => None,
        }
    }
}

/// `backend` (threadless) served on its own thread over a socket pair, crashing at its
/// `crash_after`th crash point (0: never; see
/// [`arm_crash`](vhost_backend::runtime::testing::arm_crash)) or killed between two turns
/// once `kill` is set. A turn handles every message there is, then runs the workers; turns
/// are 200 µs apart. Crashed or killed, the thread drops everything without stopping or
/// completing anything, as SIGKILL would. When the front-end closes the connection,
/// `on_close` runs on the server first, the crash still armed. The thread answers how the
/// back-end ended.
pub fn spawn_crashing<D: VirtioDevice + Send + 'static>(
    backend: DeviceBackend<D>,
    crash_after: u64,
    kill: Option<Arc<AtomicBool>>,
    on_close: impl FnOnce(&mut BackendServer<DeviceBackend<D>>) + Send + 'static,
) -> (Frontend, JoinHandle<CrashEnd>) {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use vhost_backend::runtime::testing::{arm_crash, crashed_at};

    let (fe, be) = Connection::<vhost_transport::FrontendChannel>::pair().expect("socket pair");
    be.set_nonblocking(true).expect("non-blocking");
    let t = std::thread::spawn(move || {
        let mut server = BackendServer::new(be, backend).expect("server");
        arm_crash(crash_after);
        let end = loop {
            let turn = catch_unwind(AssertUnwindSafe(|| {
                let closed = loop {
                    match server.handle_one() {
                        Ok(()) => {}
                        Err(e) if e.is_retryable() => break false,
                        Err(_) => break true,
                    }
                };
                server.backend().run_workers();
                closed
            }));
            match turn {
                Err(_) => break CrashEnd::Crashed(crashed_at()),
                Ok(true) => {
                    on_close(&mut server);
                    break CrashEnd::Closed;
                }
                Ok(false) if kill.as_ref().is_some_and(|k| k.load(Ordering::SeqCst)) => {
                    break CrashEnd::Killed
                }
                Ok(false) => std::thread::sleep(Duration::from_micros(200)),
            }
        };
        arm_crash(0);
        // Crashed or killed: no finish, no stop; the requests the device holds are dropped
        // with it.
        drop(server);
        end
    });
    (frontend_on(fe), t)
}
