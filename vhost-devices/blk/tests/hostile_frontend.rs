//! Hostile front-ends against the spawned `vhost-user-blk` daemon.
//!
//! Each test starts its own daemon on a temporary socket and image, plays one misbehaving
//! front-end, and checks three things: the daemon answers as the server's error policy says
//! (an ack of 1 or the request's failure form and the session goes on, or the connection is
//! closed), the daemon process is still running, and a new front-end afterwards completes
//! the handshake and reads the image correctly.

mod common;

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{connect, options, pattern, Scratch, TIMEOUT};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use vhost_frontend::devices::blk::BlkRequests;
use vhost_frontend::{Frontend, FrontendError, GuestMemory};
use vhost_proto::{
    virtio, FrontendReq, FrontendRequest, Header, HeaderFlags, MemoryRegion, ProtocolFeatures,
    VringAddr, VringState, MAX_BODY_SIZE,
};

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-blk");
/// How long a hostile exchange waits for the daemon's answer.
const REPLY_WAIT: Duration = Duration::from_secs(5);
/// Size of the blk configuration space the daemon offers.
const BLK_CONFIG_SIZE: u32 = 60;

/// A `vhost-user-blk` process on a temporary socket and a 1 MiB pattern image; killed on
/// drop.
struct Daemon {
    child: Child,
    sock: PathBuf,
    _scratch: Scratch,
}

impl Daemon {
    fn start(tag: &str) -> Daemon {
        let scratch = Scratch::new(&format!("hostile-{tag}"));
        let image = scratch.image(1 << 20);
        let sock = scratch.socket();
        let child = Command::new(BIN)
            .arg("--socket-path")
            .arg(&sock)
            .arg("--blk-file")
            .arg(&image)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning vhost-user-blk");
        Daemon {
            child,
            sock,
            _scratch: scratch,
        }
    }

    /// A raw stream to the daemon (retrying while the socket appears).
    fn stream(&self) -> UnixStream {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            match UnixStream::connect(&self.sock) {
                Ok(s) => {
                    s.set_read_timeout(Some(REPLY_WAIT)).expect("timeout");
                    return s;
                }
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("connecting to {}: {e}", self.sock.display()),
            }
        }
    }

    /// A front-end client that has not sent anything yet.
    fn frontend(&self) -> Frontend {
        let deadline = Instant::now() + TIMEOUT;
        let fe = loop {
            match Frontend::connect(&self.sock) {
                Ok(fe) => break fe,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("connecting to {}: {e}", self.sock.display()),
            }
        };
        fe.set_read_timeout(Some(REPLY_WAIT)).expect("timeout");
        fe
    }

    /// A front-end that negotiated every offered protocol feature (REPLY_ACK included) and
    /// took ownership, as QEMU does before anything else.
    fn negotiated(&self) -> Frontend {
        let mut fe = self.frontend();
        fe.get_features().expect("GET_FEATURES");
        let p = fe.get_protocol_features().expect("GET_PROTOCOL_FEATURES");
        fe.set_protocol_features(p).expect("SET_PROTOCOL_FEATURES");
        assert!(fe.reply_ack(), "REPLY_ACK not negotiated");
        fe.set_owner().expect("SET_OWNER");
        fe
    }

    /// The daemon is still running, and a new front-end completes the handshake and reads
    /// four sectors of the image correctly.
    fn assert_serves_again(&mut self) {
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "the daemon exited"
        );
        let mut s = connect(&self.sock, || options(1));
        let mut reqs = BlkRequests::new(&s, 0, 1, 4096).expect("requests");
        let mut buf = vec![0u8; 2048];
        reqs.read(&mut s, 3, &mut buf, TIMEOUT).expect("read");
        let want: Vec<u8> = (3 * 512..3 * 512 + 2048).map(pattern).collect();
        assert_eq!(buf, want, "data read after the hostile session");
        drop(s);
        assert!(
            self.child.try_wait().expect("try_wait").is_none(),
            "the daemon exited"
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    for r in regions {
        for v in r {
            b.extend_from_slice(&v.to_ne_bytes());
        }
    }
    b
}

/// An ADD/REM_MEM_REG body: padding, then one region.
fn region_body(r: [u64; 4]) -> Vec<u8> {
    let mut b = 0u64.to_ne_bytes().to_vec();
    for v in r {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    b
}

fn send(fe: &Frontend, code: u32, body: &[u8], fds: &[BorrowedFd<'_>]) {
    let h = Header::new(code, HeaderFlags::NEED_REPLY, body.len() as u32);
    fe.send_raw(&h, body, fds).expect("send");
}

/// Sends a well-formed request with NEED_REPLY.
fn send_req(fe: &Frontend, req: &FrontendRequest<'_>, fds: &[BorrowedFd<'_>]) {
    let mut buf = [0u8; MAX_BODY_SIZE];
    let enc = req
        .encode(HeaderFlags::NEED_REPLY, &mut buf)
        .expect("encode");
    let body = [&buf[..enc.body_len], enc.payload].concat();
    fe.send_raw(&enc.header, &body, fds).expect("send");
}

/// Reads the one reply to `code`.
fn reply(fe: &Frontend, code: FrontendReq) -> Vec<u8> {
    let (h, body, fds) = fe.recv_raw().expect("a reply");
    assert_eq!(h.request, code as u32, "reply to another request");
    assert!(h.is_reply(), "REPLY flag missing");
    assert!(fds.is_empty(), "descriptors in the reply");
    body
}

/// Reads the u64 ack of `code` and checks it is the failure status 1.
fn assert_nack(fe: &Frontend, code: FrontendReq) {
    let body = reply(fe, code);
    let v = u64::from_ne_bytes(body.as_slice().try_into().expect("an 8-byte ack"));
    assert_eq!(v, 1, "{}: ack status", code.name());
}

/// The same connection still answers requests.
fn assert_session_goes_on(fe: &mut Frontend) {
    let f = fe.get_features().expect("GET_FEATURES after the refusal");
    assert_ne!(f & virtio::bit(virtio::VERSION_1), 0);
}

/// The daemon closed the connection without answering.
fn assert_closed(fe: &Frontend) {
    match fe.recv_raw() {
        Err(FrontendError::Transport(e)) if e.is_disconnect() || is_reset(&e) => {}
        other => panic!("expected the connection to be closed, got {other:?}"),
    }
}

/// A connection reset: the daemon closed with bytes of ours still unread.
fn is_reset(e: &(dyn std::error::Error + 'static)) -> bool {
    e.source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset)
}

/// The daemon closed the raw stream (end of file or reset) without answering.
fn assert_stream_closed(mut s: UnixStream) {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection to be closed, got {other:?}"),
    }
}

fn eventfd() -> EventFd {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).expect("eventfd")
}

fn bfd(e: &EventFd) -> BorrowedFd<'_> {
    e.as_fd()
}

/// The front-end virtual address of the test memory's single region.
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
    let mut d = Daemon::start("codes");
    for code in [0, 45, 1006, u32::MAX] {
        let fe = d.negotiated();
        send(&fe, code, &[], &[]);
        assert_closed(&fe);
    }
    d.assert_serves_again();
}

/// A header announcing a 4 GiB body is a framing error: closed before any body is read.
#[test]
fn header_claiming_a_4_gib_body_closes_the_connection() {
    let mut d = Daemon::start("4gib");
    let fe = d.negotiated();
    let h = Header::new(
        FrontendReq::SetMemTable as u32,
        HeaderFlags::NEED_REPLY,
        u32::MAX,
    );
    fe.send_raw(&h, &[0; 64], &[]).expect("send");
    assert_closed(&fe);
    d.assert_serves_again();
}

/// A body cut short by the front-end going away ends that session only.
#[test]
fn truncated_body_then_close_ends_the_session_only() {
    let mut d = Daemon::start("truncated");
    let fe = d.negotiated();
    let h = Header::new(FrontendReq::SetVringNum as u32, HeaderFlags::NEED_REPLY, 8);
    fe.send_raw(&h, &[0; 4], &[]).expect("send");
    drop(fe);
    d.assert_serves_again();
}

/// SET_VRING_KICK with two descriptors is refused with an ack of 1; the session goes on.
#[test]
fn vring_kick_with_two_descriptors_is_refused() {
    let mut d = Daemon::start("kick2");
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
    d.assert_serves_again();
}

/// SET_MEM_TABLE naming two regions with one descriptor is refused with an ack of 1.
#[test]
fn mem_table_with_fewer_descriptors_than_regions_is_refused() {
    let mut d = Daemon::start("memfds");
    let mut fe = d.negotiated();
    let mem = GuestMemory::single(2 << 20).expect("memory");
    let r = region_of(&mem);
    let half = r.memory_size / 2;
    let body = mem_table_body(&[
        [r.guest_phys_addr, half, r.user_addr, 0],
        [r.guest_phys_addr + half, half, r.user_addr + half, half],
    ]);
    send(&fe, FrontendReq::SetMemTable as u32, &body, &[mem.fd()]);
    assert_nack(&fe, FrontendReq::SetMemTable);
    assert_session_goes_on(&mut fe);
    drop(fe);
    d.assert_serves_again();
}

/// Nine descriptors on one message break the transport's limit: the connection is closed.
#[test]
fn nine_descriptors_on_a_message_close_the_connection() {
    let mut d = Daemon::start("fds9");
    let s = d.stream();
    let fds: Vec<EventFd> = (0..9).map(|_| eventfd()).collect();
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let h = Header::new(FrontendReq::GetFeatures as u32, HeaderFlags::empty(), 0).to_wire();
    let iov = [std::io::IoSlice::new(&h)];
    sendmsg::<()>(
        s.as_fd().as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&raw)],
        MsgFlags::empty(),
        None,
    )
    .expect("sendmsg");
    assert_stream_closed(s);
    d.assert_serves_again();
}

/// SET_MEM_TABLE with overlapping regions is refused with an ack of 1.
#[test]
fn mem_table_with_overlapping_regions_is_refused() {
    let mut d = Daemon::start("overlap");
    let mut fe = d.negotiated();
    let mem = GuestMemory::single(2 << 20).expect("memory");
    let r = region_of(&mem);
    let half = r.memory_size / 2;
    let body = mem_table_body(&[
        [0, r.memory_size, 0x7000_0000_0000, 0],
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
    d.assert_serves_again();
}

/// A region whose `guest_phys_addr + memory_size` overflows is refused with an ack of 1.
#[test]
fn mem_table_with_address_overflow_is_refused() {
    let mut d = Daemon::start("overflow");
    let mut fe = d.negotiated();
    let mem = GuestMemory::single(1 << 20).expect("memory");
    let body = mem_table_body(&[[u64::MAX - 0xfff, 0x10_0000, 0x7000_0000_0000, 0]]);
    send(&fe, FrontendReq::SetMemTable as u32, &body, &[mem.fd()]);
    assert_nack(&fe, FrontendReq::SetMemTable);
    assert_session_goes_on(&mut fe);
    drop(fe);
    d.assert_serves_again();
}

/// A region running past the end of its memfd is refused with an ack of 1 (never mapped,
/// so it cannot raise SIGBUS later); ring addresses inside it are then refused too.
#[test]
fn mem_table_region_past_end_of_memfd_is_refused() {
    let mut d = Daemon::start("pastend");
    let mut fe = d.negotiated();
    let mem = GuestMemory::single(1 << 20).expect("memory");
    let r = region_of(&mem);
    let body = mem_table_body(&[[
        r.guest_phys_addr,
        r.memory_size,
        r.user_addr,
        r.mmap_offset + 0x1000,
    ]]);
    send(&fe, FrontendReq::SetMemTable as u32, &body, &[mem.fd()]);
    assert_nack(&fe, FrontendReq::SetMemTable);
    send_req(
        &fe,
        &FrontendRequest::SetVringNum(VringState { index: 0, num: 16 }),
        &[],
    );
    assert_eq!(
        u64::from_ne_bytes(reply(&fe, FrontendReq::SetVringNum).try_into().unwrap()),
        0
    );
    let addr = VringAddr {
        index: 0,
        flags: 0,
        desc: r.user_addr,
        used: r.user_addr + 0x1000,
        avail: r.user_addr + 0x2000,
        log: 0,
    };
    send_req(&fe, &FrontendRequest::SetVringAddr(addr), &[]);
    assert_nack(&fe, FrontendReq::SetVringAddr);
    assert_session_goes_on(&mut fe);
    drop(fe);
    d.assert_serves_again();
}

/// SET_VRING_NUM of 0, 3 (not a power of two) and 512 (over the maximum of 256) are each
/// refused with an ack of 1.
#[test]
fn vring_num_zero_odd_or_over_maximum_is_refused() {
    let mut d = Daemon::start("num");
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
}

/// Vring index 7 on a one-queue device (SET_VRING_NUM) and 255 (SET_VRING_CALL) are each
/// refused with an ack of 1.
#[test]
fn vring_index_out_of_range_is_refused() {
    let mut d = Daemon::start("index");
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
    // GET_VRING_BASE has no failure form: refusing it closes the connection.
    assert_closed(&fe);
    drop(fe);
    d.assert_serves_again();
}

/// SET_VRING_ADDR with addresses no region of the memory table holds is refused with an
/// ack of 1.
#[test]
fn vring_addr_outside_every_region_is_refused() {
    let mut d = Daemon::start("addr");
    let mut fe = d.negotiated();
    let mem = GuestMemory::single(1 << 20).expect("memory");
    let r = region_of(&mem);
    fe.set_mem_table(&[r], &[mem.fd()]).expect("SET_MEM_TABLE");
    fe.set_vring_num(0, 16).expect("SET_VRING_NUM");
    let end = r.user_addr + r.memory_size;
    for (desc, avail, used) in [
        (
            r.guest_phys_addr + 0x1000,
            r.user_addr,
            r.user_addr + 0x1000,
        ),
        (r.user_addr, end, r.user_addr + 0x1000),
        (r.user_addr, r.user_addr + 0x1000, end - 8),
    ] {
        let addr = VringAddr {
            index: 0,
            flags: 0,
            desc,
            used,
            avail,
            log: 0,
        };
        send_req(&fe, &FrontendRequest::SetVringAddr(addr), &[]);
        assert_nack(&fe, FrontendReq::SetVringAddr);
    }
    assert_session_goes_on(&mut fe);
    drop(fe);
    d.assert_serves_again();
}

/// SET_VRING_KICK before any memory table (the ring has no addresses) is refused with an
/// ack of 1; signalling the eventfd afterwards does nothing and the ring reports base 0.
#[test]
fn kick_before_any_memory_table_is_refused_and_signals_are_harmless() {
    let mut d = Daemon::start("kick");
    let mut fe = d.negotiated();
    let kick = eventfd();
    send(
        &fe,
        FrontendReq::SetVringKick as u32,
        &u64_body(0),
        &[bfd(&kick)],
    );
    assert_nack(&fe, FrontendReq::SetVringKick);
    for _ in 0..3 {
        kick.write(1).expect("kick");
    }
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(fe.get_vring_base(0).expect("GET_VRING_BASE"), 0);
    assert_session_goes_on(&mut fe);
    drop(fe);
    d.assert_serves_again();
}

/// GET_VRING_BASE on a ring never started answers its base: index 0, num 0.
#[test]
fn get_vring_base_on_a_ring_never_started_answers_zero() {
    let mut d = Daemon::start("base");
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
}

/// A second SET_OWNER is refused with an ack of 1.
#[test]
fn second_set_owner_is_refused() {
    let mut d = Daemon::start("owner");
    let mut fe = d.negotiated();
    send(&fe, FrontendReq::SetOwner as u32, &[], &[]);
    assert_nack(&fe, FrontendReq::SetOwner);
    assert_session_goes_on(&mut fe);
    drop(fe);
    d.assert_serves_again();
}

/// SET_FEATURES acking a bit never offered is refused with an ack of 1.
#[test]
fn set_features_with_bits_never_offered_is_refused() {
    let mut d = Daemon::start("features");
    let mut fe = d.negotiated();
    let offered = fe.get_features().expect("GET_FEATURES");
    let never = !offered;
    assert_ne!(never, 0);
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
}

/// GET_CONFIG reaching past the 60-byte configuration space gets the zero-size failure
/// reply (offset and flags echoed, no payload).
#[test]
fn get_config_beyond_the_config_space_gets_a_zero_size_reply() {
    let mut d = Daemon::start("config");
    let mut fe = d.negotiated();
    assert!(fe.acked_protocol().contains(ProtocolFeatures::CONFIG));
    for (offset, size) in [(40u32, 40u32), (BLK_CONFIG_SIZE, 1), (0xffff_fff0, 32)] {
        let mut body = Vec::new();
        for v in [offset, size, 0] {
            body.extend_from_slice(&v.to_ne_bytes());
        }
        body.resize(12 + size as usize, 0);
        send(&fe, FrontendReq::GetConfig as u32, &body, &[]);
        let got = reply(&fe, FrontendReq::GetConfig);
        let mut want = Vec::new();
        for v in [offset, 0, 0] {
            want.extend_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(got, want, "GET_CONFIG {offset:#x}+{size}");
    }
    assert_session_goes_on(&mut fe);
    drop(fe);
    d.assert_serves_again();
}

/// REM_MEM_REG of a region never added is refused with an ack of 1.
#[test]
fn rem_mem_reg_of_a_region_never_added_is_refused() {
    let mut d = Daemon::start("remreg");
    let mut fe = d.negotiated();
    assert!(fe
        .acked_protocol()
        .contains(ProtocolFeatures::CONFIGURE_MEM_SLOTS));
    let body = region_body([0, 0x10_0000, 0x7000_0000_0000, 0]);
    send(&fe, FrontendReq::RemMemReg as u32, &body, &[]);
    assert_nack(&fe, FrontendReq::RemMemReg);
    assert_session_goes_on(&mut fe);
    drop(fe);
    d.assert_serves_again();
}

/// Bytes that are no vhost-user header get the connection closed, unanswered.
#[test]
fn garbage_bytes_close_the_connection() {
    let mut d = Daemon::start("garbage");
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
}
