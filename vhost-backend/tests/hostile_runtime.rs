//! Hostile front-ends against the device runtime's daemon, run in this process.
//!
//! Each test starts a [`Daemon`] serving a `DeviceBackend` (one queue of at most 256, an
//! 8-byte configuration space) on a temporary socket, plays one misbehaving front-end, and
//! checks: the answer the server's error policy gives (an ack of 1 or the failure form and
//! the session goes on, or the connection closed), the daemon thread still running, a new
//! front-end afterwards completing the handshake and one request, and — once the daemon is
//! stopped — exactly as many descriptors open in the process as before it started. The
//! tests run one at a time (a static lock) so that descriptor counts are exact.

#![cfg(unix)]

mod runtime_support;

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use runtime_support::{bfd, count_dir, pattern, GuestQueue, PatternDevice, CONFIG, TIMEOUT};
use vhost_backend::runtime::{Daemon, DeviceBackend, StopHandle};
use vhost_backend::Backend;
use vhost_frontend::{Frontend, FrontendError, GuestMemory, Session, SessionOptions};
use vhost_proto::{
    virtio, FrontendReq, FrontendRequest, Header, HeaderFlags, MemoryRegion, ProtocolFeatures,
    VringAddr, VringState, MAX_BODY_SIZE,
};
use vhost_transport::Listener;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The daemon's bound on a stalled message in these tests.
const STALL: Duration = Duration::from_millis(500);

/// Serialises the tests: descriptor counts are per process.
static SERIAL: Mutex<()> = Mutex::new(());

fn open_fds() -> usize {
    count_dir("/proc/self/fd")
}

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
        let s = UnixStream::connect(&self.sock).expect("connect");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        s
    }

    fn frontend(&self) -> Frontend {
        let fe = Frontend::connect(&self.sock).expect("connect");
        fe.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        fe
    }

    /// A front-end that negotiated every offered protocol feature (REPLY_ACK included) and
    /// took ownership.
    fn negotiated(&self) -> Frontend {
        let mut fe = self.frontend();
        fe.get_features().expect("GET_FEATURES");
        let p = fe.get_protocol_features().expect("GET_PROTOCOL_FEATURES");
        fe.set_protocol_features(p).expect("SET_PROTOCOL_FEATURES");
        assert!(fe.reply_ack(), "REPLY_ACK not negotiated");
        fe.set_owner().expect("SET_OWNER");
        fe
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
        let deadline = Instant::now() + TIMEOUT;
        while open_fds() != self.fds_idle && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            open_fds(),
            self.fds_idle,
            "descriptors left open after the sessions"
        );
    }

    /// Stops the daemon and checks that every descriptor it held is closed.
    fn finish(mut self) {
        // The stop handle shares the daemon's stop eventfd: it goes too.
        self.stop.take().expect("stop handle").stop();
        let t = self.thread.take().expect("daemon thread");
        t.join().expect("daemon thread panicked");
        // The last session's worker threads and mappings went with the daemon.
        let deadline = Instant::now() + TIMEOUT;
        while open_fds() != self.fds_before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(open_fds(), self.fds_before, "descriptors leaked");
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

fn u64_body(v: u64) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

fn state_body(index: u32, num: u32) -> Vec<u8> {
    [index.to_ne_bytes(), num.to_ne_bytes()].concat()
}

/// A SET_MEM_TABLE body: count, padding, then `{gpa, size, uva, offset}` per region.
fn mem_table_body(regions: &[[u64; 4]]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(regions.len() as u32).to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    for v in regions.iter().flatten() {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    b
}

fn send(fe: &Frontend, code: u32, body: &[u8], fds: &[BorrowedFd<'_>]) {
    let h = Header::new(code, HeaderFlags::NEED_REPLY, body.len() as u32);
    fe.send_raw(&h, body, fds).expect("send");
}

fn send_req(fe: &Frontend, req: &FrontendRequest<'_>) {
    let mut buf = [0u8; MAX_BODY_SIZE];
    let enc = req
        .encode(HeaderFlags::NEED_REPLY, &mut buf)
        .expect("encode");
    let body = [&buf[..enc.body_len], enc.payload].concat();
    fe.send_raw(&enc.header, &body, &[]).expect("send");
}

fn reply(fe: &Frontend, code: FrontendReq) -> Vec<u8> {
    let (h, body, fds) = fe.recv_raw().expect("a reply");
    assert_eq!(h.request, code as u32, "reply to another request");
    assert!(h.is_reply(), "REPLY flag missing");
    assert!(fds.is_empty(), "descriptors in the reply");
    body
}

fn ack(fe: &Frontend, code: FrontendReq) -> u64 {
    let body = reply(fe, code);
    u64::from_ne_bytes(body.as_slice().try_into().expect("an 8-byte ack"))
}

fn assert_nack(fe: &Frontend, code: FrontendReq) {
    assert_eq!(ack(fe, code), 1, "{}: ack status", code.name());
}

fn assert_session_goes_on(fe: &mut Frontend) {
    let f = fe.get_features().expect("GET_FEATURES after the refusal");
    assert_ne!(f & virtio::bit(virtio::VERSION_1), 0);
}

fn is_reset(e: &(dyn std::error::Error + 'static)) -> bool {
    e.source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset)
}

fn assert_closed(fe: &Frontend) {
    match fe.recv_raw() {
        Err(FrontendError::Transport(e)) if e.is_disconnect() || is_reset(&e) => {}
        other => panic!("expected the connection to be closed, got {other:?}"),
    }
}

fn assert_stream_closed(mut s: UnixStream) {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection to be closed, got {other:?}"),
    }
}

fn eventfd() -> EventFd {
    EventFd::new(EFD_NONBLOCK).expect("eventfd")
}

fn region_of(mem: &GuestMemory) -> MemoryRegion {
    let r = mem.regions().next().expect("a region");
    MemoryRegion {
        guest_phys_addr: r.guest_phys_addr,
        memory_size: r.memory_size,
        user_addr: r.user_addr,
        mmap_offset: r.mmap_offset,
    }
}

/// Request codes 0, 45, 1006 and 0xffffffff get the connection closed, unanswered.
#[test]
fn unknown_request_codes_close_the_connection() {
    let d = InProcess::start("codes");
    for code in [0, 45, 1006, u32::MAX] {
        let fe = d.negotiated();
        send(&fe, code, &[], &[]);
        assert_closed(&fe);
    }
    d.assert_serves_again();
    d.finish();
}

/// A header announcing a 4 GiB body is a framing error: closed before any body is read.
#[test]
fn header_claiming_a_4_gib_body_closes_the_connection() {
    let d = InProcess::start("4gib");
    let fe = d.negotiated();
    let h = Header::new(
        FrontendReq::SetMemTable as u32,
        HeaderFlags::NEED_REPLY,
        u32::MAX,
    );
    fe.send_raw(&h, &[0; 64], &[]).expect("send");
    assert_closed(&fe);
    drop(fe);
    d.assert_serves_again();
    d.finish();
}

/// A body cut short by the front-end going away ends that session only; the descriptors
/// that rode with its header are closed.
#[test]
fn truncated_body_then_close_ends_the_session_only() {
    let d = InProcess::start("truncated");
    let fe = d.negotiated();
    let mem = GuestMemory::single(1 << 20).expect("memory");
    let h = Header::new(FrontendReq::SetMemTable as u32, HeaderFlags::NEED_REPLY, 40);
    fe.send_raw(&h, &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[mem.fd()])
        .expect("send");
    drop(fe);
    drop(mem);
    d.assert_serves_again();
    d.finish();
}

/// SET_VRING_KICK with two descriptors is refused with an ack of 1; both are closed.
#[test]
fn vring_kick_with_two_descriptors_is_refused() {
    let d = InProcess::start("kick2");
    let mut fe = d.negotiated();
    let (a, b) = (eventfd(), eventfd());
    send(
        &fe,
        FrontendReq::SetVringKick as u32,
        &u64_body(0),
        &[bfd(&a), bfd(&b)],
    );
    assert_nack(&fe, FrontendReq::SetVringKick);
    assert_session_goes_on(&mut fe);
    drop(fe);
    drop((a, b));
    d.assert_serves_again();
    d.finish();
}

/// SET_MEM_TABLE naming two regions with one descriptor is refused with an ack of 1.
#[test]
fn mem_table_with_fewer_descriptors_than_regions_is_refused() {
    let d = InProcess::start("memfds");
    let mut fe = d.negotiated();
    let mem = GuestMemory::single(2 << 20).expect("memory");
    let r = region_of(&mem);
    let half = r.memory_size / 2;
    let body = mem_table_body(&[
        [0, half, r.user_addr, 0],
        [half, half, r.user_addr + half, half],
    ]);
    send(&fe, FrontendReq::SetMemTable as u32, &body, &[mem.fd()]);
    assert_nack(&fe, FrontendReq::SetMemTable);
    assert_session_goes_on(&mut fe);
    drop(fe);
    drop(mem);
    d.assert_serves_again();
    d.finish();
}

/// Nine descriptors on one message break the transport's limit: the connection is closed
/// and all nine are closed in the daemon.
#[test]
fn nine_descriptors_on_a_message_close_the_connection() {
    let d = InProcess::start("fds9");
    let s = d.stream();
    let fds: Vec<EventFd> = (0..9).map(|_| eventfd()).collect();
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let h = Header::new(FrontendReq::SetOwner as u32, HeaderFlags::empty(), 0).to_wire();
    sendmsg::<()>(
        s.as_raw_fd(),
        &[std::io::IoSlice::new(&h)],
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    )
    .expect("sendmsg");
    assert_stream_closed(s);
    drop(fds);
    d.assert_serves_again();
    d.finish();
}

/// SET_MEM_TABLE with overlapping regions is refused with an ack of 1.
#[test]
fn mem_table_with_overlapping_regions_is_refused() {
    let d = InProcess::start("overlap");
    let mut fe = d.negotiated();
    let mem = GuestMemory::single(2 << 20).expect("memory");
    let size = region_of(&mem).memory_size;
    let half = size / 2;
    let body = mem_table_body(&[
        [0, size, 0x7000_0000_0000, 0],
        [half, half, 0x7100_0000_0000, half],
    ]);
    send(
        &fe,
        FrontendReq::SetMemTable as u32,
        &body,
        &[mem.fd(), mem.fd()],
    );
    assert_nack(&fe, FrontendReq::SetMemTable);
    assert_session_goes_on(&mut fe);
    drop(fe);
    drop(mem);
    d.assert_serves_again();
    d.finish();
}

/// Regions whose address + size overflows (guest-physical, user or mmap offset) are
/// refused with an ack of 1.
#[test]
fn mem_table_with_address_overflow_is_refused() {
    let d = InProcess::start("overflow");
    let mut fe = d.negotiated();
    let mem = GuestMemory::single(1 << 20).expect("memory");
    for r in [
        [u64::MAX - 0xfff, 0x10_0000, 0x7000_0000_0000, 0],
        [0, 0x10_0000, u64::MAX - 0xfff, 0],
        [0, 0x10_0000, 0x7000_0000_0000, u64::MAX - 0xfff],
    ] {
        send(
            &fe,
            FrontendReq::SetMemTable as u32,
            &mem_table_body(&[r]),
            &[mem.fd()],
        );
        assert_nack(&fe, FrontendReq::SetMemTable);
    }
    assert_session_goes_on(&mut fe);
    drop(fe);
    drop(mem);
    d.assert_serves_again();
    d.finish();
}

/// A region running past the end of its memfd is refused with an ack of 1 (never mapped,
/// so no SIGBUS later): SET_MEM_TABLE and ADD_MEM_REG alike, and a ring placed in it is
/// refused too.
#[test]
fn mem_table_region_past_end_of_memfd_is_refused() {
    let d = InProcess::start("pastend");
    let mut fe = d.negotiated();
    let mem = GuestMemory::single(1 << 20).expect("memory");
    let r = region_of(&mem);
    let past = [r.guest_phys_addr, r.memory_size, r.user_addr, 0x1000];
    send(
        &fe,
        FrontendReq::SetMemTable as u32,
        &mem_table_body(&[past]),
        &[mem.fd()],
    );
    assert_nack(&fe, FrontendReq::SetMemTable);
    let mut add = 0u64.to_ne_bytes().to_vec();
    for v in past {
        add.extend_from_slice(&v.to_ne_bytes());
    }
    send(&fe, FrontendReq::AddMemReg as u32, &add, &[mem.fd()]);
    assert_nack(&fe, FrontendReq::AddMemReg);
    fe.set_vring_num(0, 16).expect("SET_VRING_NUM");
    send_req(
        &fe,
        &FrontendRequest::SetVringAddr(VringAddr {
            index: 0,
            flags: 0,
            desc: r.user_addr,
            used: r.user_addr + 0x1000,
            avail: r.user_addr + 0x2000,
            log: 0,
        }),
    );
    assert_nack(&fe, FrontendReq::SetVringAddr);
    assert_session_goes_on(&mut fe);
    drop(fe);
    drop(mem);
    d.assert_serves_again();
    d.finish();
}

/// SET_VRING_NUM of 0, 3, 512 (over the maximum of 256) and 2^32-1 are each refused with
/// an ack of 1.
#[test]
fn vring_num_zero_odd_or_over_maximum_is_refused() {
    let d = InProcess::start("num");
    let mut fe = d.negotiated();
    for num in [0, 3, 512, u32::MAX] {
        send(
            &fe,
            FrontendReq::SetVringNum as u32,
            &state_body(0, num),
            &[],
        );
        assert_nack(&fe, FrontendReq::SetVringNum);
    }
    assert_session_goes_on(&mut fe);
    drop(fe);
    d.assert_serves_again();
    d.finish();
}

/// Vring index 7 on a one-queue device (SET_VRING_NUM) and 255 (SET_VRING_CALL, with its
/// eventfd closed) are refused with an ack of 1; GET_VRING_BASE of ring 1, which has no
/// failure form, closes the connection.
#[test]
fn vring_index_out_of_range_is_refused() {
    let d = InProcess::start("index");
    let fe = d.negotiated();
    send(
        &fe,
        FrontendReq::SetVringNum as u32,
        &state_body(7, 16),
        &[],
    );
    assert_nack(&fe, FrontendReq::SetVringNum);
    let call = eventfd();
    send(
        &fe,
        FrontendReq::SetVringCall as u32,
        &u64_body(255),
        &[bfd(&call)],
    );
    assert_nack(&fe, FrontendReq::SetVringCall);
    send(
        &fe,
        FrontendReq::GetVringBase as u32,
        &state_body(1, 0),
        &[],
    );
    assert_closed(&fe);
    drop(fe);
    drop(call);
    d.assert_serves_again();
    d.finish();
}

/// SET_VRING_ADDR with any of its three addresses outside every region (or running past
/// the end of one) is refused with an ack of 1.
#[test]
fn vring_addr_outside_every_region_is_refused() {
    let d = InProcess::start("addr");
    let mut fe = d.negotiated();
    let mem = GuestMemory::single(1 << 20).expect("memory");
    let r = region_of(&mem);
    fe.set_mem_table(&[r], &[mem.fd()]).expect("SET_MEM_TABLE");
    fe.set_vring_num(0, 16).expect("SET_VRING_NUM");
    let (lo, end) = (r.user_addr, r.user_addr + r.memory_size);
    for (desc, avail, used) in [
        (r.guest_phys_addr + 0x1000, lo, lo + 0x1000),
        (lo, end, lo + 0x1000),
        (lo, lo + 0x1000, end - 8),
        (u64::MAX - 8, lo, lo + 0x1000),
    ] {
        send_req(
            &fe,
            &FrontendRequest::SetVringAddr(VringAddr {
                index: 0,
                flags: 0,
                desc,
                used,
                avail,
                log: 0,
            }),
        );
        assert_nack(&fe, FrontendReq::SetVringAddr);
    }
    assert_session_goes_on(&mut fe);
    drop(fe);
    drop(mem);
    d.assert_serves_again();
    d.finish();
}

/// SET_VRING_KICK before any memory table is refused with an ack of 1 (the ring has no
/// addresses; no worker is left behind); signalling the eventfd afterwards does nothing.
#[test]
fn kick_before_any_memory_table_is_refused_and_signals_are_harmless() {
    let d = InProcess::start("kick");
    let mut fe = d.negotiated();
    let kick = eventfd();
    send(
        &fe,
        FrontendReq::SetVringKick as u32,
        &u64_body(0),
        &[bfd(&kick)],
    );
    assert_nack(&fe, FrontendReq::SetVringKick);
    // NOFD (polling) is refused the same way.
    send(
        &fe,
        FrontendReq::SetVringKick as u32,
        &u64_body(1 << 8),
        &[],
    );
    assert_nack(&fe, FrontendReq::SetVringKick);
    for _ in 0..3 {
        kick.write(1).expect("kick");
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(fe.get_vring_base(0).expect("GET_VRING_BASE"), 0);
    assert_session_goes_on(&mut fe);
    drop(fe);
    drop(kick);
    d.assert_serves_again();
    d.finish();
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
    d.assert_serves_again();
    d.finish();
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
    d.assert_serves_again();
    d.finish();
}

/// Two queues served by one worker, each taking 50 ms per wake-up.
struct SlowDevice;

impl vhost_backend::runtime::VirtioDevice for SlowDevice {
    fn device_type(&self) -> u32 {
        4
    }
    fn num_queues(&self) -> usize {
        2
    }
    fn max_queue_size(&self) -> u16 {
        16
    }
    fn features(&self) -> u64 {
        0
    }
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
        let _ = done_tx.send(());
    });
    done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the disconnect waited for ever on its worker");
}

/// GET_VRING_BASE on a ring never started answers its base: index 0, num 0.
#[test]
fn get_vring_base_on_a_ring_never_started_answers_zero() {
    let d = InProcess::start("base");
    let mut fe = d.negotiated();
    send(
        &fe,
        FrontendReq::GetVringBase as u32,
        &state_body(0, 0),
        &[],
    );
    assert_eq!(reply(&fe, FrontendReq::GetVringBase), state_body(0, 0));
    assert_session_goes_on(&mut fe);
    drop(fe);
    d.assert_serves_again();
    d.finish();
}

/// A second SET_OWNER is refused with an ack of 1.
#[test]
fn second_set_owner_is_refused() {
    let d = InProcess::start("owner");
    let mut fe = d.negotiated();
    send(&fe, FrontendReq::SetOwner as u32, &[], &[]);
    assert_nack(&fe, FrontendReq::SetOwner);
    assert_session_goes_on(&mut fe);
    drop(fe);
    d.assert_serves_again();
    d.finish();
}

/// SET_FEATURES acking a bit never offered is refused with an ack of 1.
#[test]
fn set_features_with_bits_never_offered_is_refused() {
    let d = InProcess::start("features");
    let mut fe = d.negotiated();
    let offered = fe.get_features().expect("GET_FEATURES");
    let never = !offered;
    let bit = 1u64 << (63 - never.leading_zeros());
    send(
        &fe,
        FrontendReq::SetFeatures as u32,
        &u64_body(offered | bit),
        &[],
    );
    assert_nack(&fe, FrontendReq::SetFeatures);
    assert_session_goes_on(&mut fe);
    drop(fe);
    d.assert_serves_again();
    d.finish();
}

/// GET_CONFIG reaching past the 8-byte configuration space gets the zero-size failure
/// reply (offset and flags echoed, no payload).
#[test]
fn get_config_beyond_the_config_space_gets_a_zero_size_reply() {
    let d = InProcess::start("config");
    let mut fe = d.negotiated();
    assert!(fe.acked_protocol().contains(ProtocolFeatures::CONFIG));
    let size = CONFIG.len() as u32;
    for (offset, len) in [(4u32, size), (size, 1), (0xffff_fff0, 32)] {
        let mut body = Vec::new();
        for v in [offset, len, 0] {
            body.extend_from_slice(&v.to_ne_bytes());
        }
        body.resize(12 + len as usize, 0);
        send(&fe, FrontendReq::GetConfig as u32, &body, &[]);
        let mut want = Vec::new();
        for v in [offset, 0, 0] {
            want.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(
            reply(&fe, FrontendReq::GetConfig),
            want,
            "{offset:#x}+{len}"
        );
    }
    assert_eq!(fe.get_config(0, size, 0).expect("GET_CONFIG"), CONFIG);
    assert_session_goes_on(&mut fe);
    drop(fe);
    d.assert_serves_again();
    d.finish();
}

/// REM_MEM_REG of a region never added is refused with an ack of 1.
#[test]
fn rem_mem_reg_of_a_region_never_added_is_refused() {
    let d = InProcess::start("remreg");
    let mut fe = d.negotiated();
    assert!(fe
        .acked_protocol()
        .contains(ProtocolFeatures::CONFIGURE_MEM_SLOTS));
    let mut body = 0u64.to_ne_bytes().to_vec();
    for v in [0u64, 0x10_0000, 0x7000_0000_0000, 0] {
        body.extend_from_slice(&v.to_ne_bytes());
    }
    send(&fe, FrontendReq::RemMemReg as u32, &body, &[]);
    assert_nack(&fe, FrontendReq::RemMemReg);
    assert_session_goes_on(&mut fe);
    drop(fe);
    d.assert_serves_again();
    d.finish();
}

/// Bytes that are no vhost-user header get the connection closed, unanswered.
#[test]
fn garbage_bytes_close_the_connection() {
    let d = InProcess::start("garbage");
    for garbage in [
        &[0xde_u8; 64][..],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0xff; 12],
    ] {
        let mut s = d.stream();
        s.write_all(garbage).expect("write");
        assert_stream_closed(s);
    }
    d.assert_serves_again();
    d.finish();
}

/// The harness itself: a well-behaved session leaves no descriptor behind either.
#[test]
fn well_behaved_session_leaves_no_descriptor_open() {
    let d = InProcess::start("clean");
    let mut fe = d.negotiated();
    send_req(
        &fe,
        &FrontendRequest::SetVringNum(VringState { index: 0, num: 16 }),
    );
    assert_eq!(ack(&fe, FrontendReq::SetVringNum), 0);
    assert_session_goes_on(&mut fe);
    drop(fe);
    d.assert_serves_again();
    d.finish();
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
    d.assert_serves_again();
    d.finish();
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
    d.assert_serves_again();
    d.finish();
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
    d.assert_serves_again();
    d.finish();
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
    d.assert_serves_again();
    d.finish();
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
    d.assert_serves_again();
    d.finish();
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
