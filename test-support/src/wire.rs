//! Raw front-end messages: bodies built by hand (so that they can be wrong), sent with
//! NEED_REPLY, and replies checked byte by byte.

use std::io::Read;
use std::os::fd::BorrowedFd;
use std::os::unix::net::UnixStream;

use nix::sys::eventfd::{EfdFlags, EventFd};
use vhost_frontend::{Frontend, FrontendError, GuestMemory};
use vhost_proto::wire::iotlb;
use vhost_proto::{
    virtio, FrontendReq, FrontendRequest, Header, HeaderFlags, IotlbMsg, MemoryRegion, ShmemMap,
    MAX_BODY_SIZE,
};

/// A u64 body (SET_FEATURES, SET_VRING_KICK/CALL…).
pub fn u64_body(v: u64) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// A vring state body: index, num.
pub fn state_body(index: u32, num: u32) -> Vec<u8> {
    [index.to_ne_bytes(), num.to_ne_bytes()].concat()
}

/// A SET_MEM_TABLE body: count, padding, then `{gpa, size, uva, offset}` per region.
pub fn mem_table_body(regions: &[[u64; 4]]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&(regions.len() as u32).to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    for v in regions.iter().flatten() {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    b
}

/// An ADD/REM_MEM_REG body: padding, then one region `{gpa, size, uva, offset}`.
pub fn region_body(r: [u64; 4]) -> Vec<u8> {
    let mut b = 0u64.to_ne_bytes().to_vec();
    for v in r {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    b
}

/// A GET_CONFIG body (or its reply's head): offset, size, flags, then `payload` zero bytes.
pub fn config_body(offset: u32, size: u32, flags: u32, payload: usize) -> Vec<u8> {
    let mut b = Vec::new();
    for v in [offset, size, flags] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    b.resize(12 + payload, 0);
    b
}

/// An IOTLB miss for one read-only page at `iova`, as a back-end sends it.
pub fn iotlb_miss(iova: u64) -> IotlbMsg {
    IotlbMsg {
        iova,
        size: 0x1000,
        uaddr: 0,
        perm: iotlb::PERM_RO,
        msg_type: iotlb::MISS,
        padding: [0; 6],
    }
}

/// A SHMEM_MAP of `len` bytes at the descriptor's offset 0, to `shm_offset` of shared memory
/// region `shmid`, with `flags`.
pub fn shmem_map(shmid: u8, shm_offset: u64, len: u64, flags: u64) -> ShmemMap {
    ShmemMap {
        shmid,
        padding: [0; 7],
        fd_offset: 0,
        shm_offset,
        len,
        flags,
    }
}

/// Sends request `code` with NEED_REPLY, `body` and `fds`, whatever they are.
pub fn send(fe: &Frontend, code: u32, body: &[u8], fds: &[BorrowedFd<'_>]) {
    let h = Header::new(code, HeaderFlags::NEED_REPLY, body.len() as u32);
    fe.send_raw(&h, body, fds).expect("send");
}

/// Sends a well-formed request with NEED_REPLY.
pub fn send_req(fe: &Frontend, req: &FrontendRequest<'_>, fds: &[BorrowedFd<'_>]) {
    let mut buf = [0u8; MAX_BODY_SIZE];
    let enc = req
        .encode(HeaderFlags::NEED_REPLY, &mut buf)
        .expect("encode");
    let body = [&buf[..enc.body_len], enc.payload].concat();
    fe.send_raw(&enc.header, &body, fds).expect("send");
}

/// Reads the one reply to `code`: REPLY flag set, no descriptor; returns its body.
pub fn reply(fe: &Frontend, code: FrontendReq) -> Vec<u8> {
    let (h, body, fds) = fe.recv_raw().expect("a reply");
    assert_eq!(h.request, code as u32, "reply to another request");
    assert!(h.is_reply(), "REPLY flag missing");
    assert!(fds.is_empty(), "descriptors in the reply");
    body
}

/// Reads the u64 ack of `code`.
pub fn ack(fe: &Frontend, code: FrontendReq) -> u64 {
    let body = reply(fe, code);
    u64::from_ne_bytes(body.as_slice().try_into().expect("an 8-byte ack"))
}

/// Reads the ack of `code` and checks it is the failure status 1.
pub fn assert_nack(fe: &Frontend, code: FrontendReq) {
    assert_eq!(ack(fe, code), 1, "{}: ack status", code.name());
}

/// Sends request `code` with NEED_REPLY, `body` and `fds`, and checks that it is refused
/// with an ack of 1.
pub fn assert_refused(fe: &Frontend, code: FrontendReq, body: &[u8], fds: &[BorrowedFd<'_>]) {
    send(fe, code as u32, body, fds);
    assert_nack(fe, code);
}

/// The same connection still answers requests.
pub fn assert_session_goes_on(fe: &mut Frontend) {
    let f = fe.get_features().expect("GET_FEATURES after the refusal");
    assert_ne!(f & virtio::bit(virtio::VERSION_1), 0);
}

/// A connection reset: the daemon closed with bytes of ours still unread.
pub fn is_reset(e: &(dyn std::error::Error + 'static)) -> bool {
    e.source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionReset)
}

/// The daemon closed the connection without answering.
pub fn assert_closed(fe: &Frontend) {
    match fe.recv_raw() {
        Err(FrontendError::Transport(e)) if e.is_disconnect() || is_reset(&e) => {}
        other => panic!("expected the connection to be closed, got {other:?}"),
    }
}

/// The daemon closed the raw stream (end of file or reset) without answering.
pub fn assert_stream_closed(mut s: UnixStream) {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection to be closed, got {other:?}"),
    }
}

/// A non-blocking eventfd.
pub fn eventfd() -> EventFd {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_NONBLOCK).expect("eventfd")
}

/// The memory region the front-end sends for the single region of `mem`.
pub fn region_of(mem: &GuestMemory) -> MemoryRegion {
    regions(mem).into_iter().next().expect("a region")
}

/// The memory regions the front-end sends for `mem`.
pub fn regions(mem: &GuestMemory) -> Vec<MemoryRegion> {
    mem.regions()
        .map(|r| MemoryRegion {
            guest_phys_addr: r.guest_phys_addr,
            memory_size: r.memory_size,
            user_addr: r.user_addr,
            mmap_offset: r.mmap_offset,
        })
        .collect()
}
