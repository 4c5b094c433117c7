//! Host processes and guests that hold resources without using them, and the corners of
//! the protocol around them: the device's own bookkeeping stays bounded, stalled
//! handshakes are closed, and every stream keeps flowing.

mod common;

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use vhost_backend::runtime::cli::BackendArgs;
use vhost_backend::runtime::{Daemon, DeviceBackend, StopHandle};
use vhost_device_vsock::{VsockConfig, VsockDevice, MAX_CONNECTIONS};
use vhost_frontend::devices::vsock::{op, VsockDriver, VsockHeader};

/// A daemon in a thread of this process whose device the test can look at; stopped on drop.
struct Observed {
    device: Arc<VsockDevice>,
    stop: StopHandle,
}

impl Observed {
    fn start(scratch: &Scratch) -> Observed {
        let device = Arc::new(VsockDevice::new(&VsockConfig::new(CID, scratch.uds())).unwrap());
        let backend = DeviceBackend::new(Arc::clone(&device)).unwrap();
        let args = BackendArgs {
            socket_path: Some(scratch.socket()),
            ..BackendArgs::default()
        };
        let mut daemon = Daemon::from_args(&args, backend).unwrap();
        let stop = daemon.stop_handle();
        std::thread::spawn(move || {
            let _ = daemon.run();
        });
        Observed { device, stop }
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.stop.stop();
    }
}

/// A scratch directory named `tag`, an observed daemon on it and a guest connected to it.
fn observed_guest(tag: &str) -> (Scratch, Observed, Guest) {
    let scratch = Scratch::new(tag);
    let dev = Observed::start(&scratch);
    let g = Guest::new(&scratch.socket());
    (scratch, dev, g)
}

/// Guest port 100 connected to a host listener on port 2000: the listener and the host's
/// end of the connection.
fn guest_connected_to_host_2000(scratch: &Scratch, g: &mut Guest) -> (UnixListener, UnixStream) {
    let l = scratch.listen(2000);
    assert_eq!(g.connect(100, 2000, 65536).hdr.op.get(), op::RESPONSE);
    let (h, _) = l.accept().unwrap();
    (l, h)
}

/// Polls `f` until it holds or `wait` passes. Whether it held.
fn eventually(wait: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn connections_opened_and_reset_while_the_guest_posts_no_rx_buffers_keep_the_ready_list_bounded() {
    let scratch = Scratch::new("ready");
    let dev = Observed::start(&scratch);
    let listener = scratch.listen(2100);
    std::thread::spawn(move || {
        let mut keep = Vec::new();
        while let Ok((s, _)) = listener.accept() {
            keep.push(s);
            if keep.len() > 200 {
                keep.drain(..100);
            }
        }
    });
    let mut s = connect(&scratch.socket());
    // No rx buffers at all: nothing the device owes the guest can go out.
    let mut d = VsockDriver::new(&mut s, 0, 4096 + 44, 32).unwrap();
    // A live connection whose RESPONSE waits at the front of the ready list.
    let mut anchor = VsockHeader::to_host(CID, 500, 2100, op::REQUEST);
    anchor.buf_alloc = 65536.into();
    d.send(&mut s, &anchor, &[], TIMEOUT).unwrap();
    let mut req = VsockHeader::to_host(CID, 501, 2100, op::REQUEST);
    req.buf_alloc = 65536.into();
    let rst = VsockHeader::to_host(CID, 501, 2100, op::RST);
    for _ in 0..2000 {
        d.send(&mut s, &req, &[], TIMEOUT).unwrap();
        d.send(&mut s, &rst, &[], TIMEOUT).unwrap();
    }
    d.send(&mut s, &req, &[], TIMEOUT).unwrap();
    assert!(eventually(Duration::from_secs(2), || dev
        .device
        .connections()
        == 2));
    let n = dev.device.debug_ready_len();
    assert!(
        n <= 2 * dev.device.connections(),
        "the ready list holds {n} entries for {} connections",
        dev.device.connections()
    );
}

#[test]
fn idle_host_connections_on_the_listening_socket_do_not_lock_the_guest_out() {
    let (scratch, _dev, mut g) = observed_guest("idlehs");
    let _l = scratch.listen(2000);
    // As many host processes as there are connections connect and never say a word.
    let idle: Vec<UnixStream> = (0..MAX_CONNECTIONS)
        .map(|_| UnixStream::connect(scratch.uds()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let p = g.connect(100, 2000, 65536);
    assert_eq!(
        p.hdr.op.get(),
        op::RESPONSE,
        "idle host handshakes hold every connection slot"
    );
    drop(idle);
}

#[test]
fn a_host_connection_that_never_sends_its_connect_line_is_closed() {
    let (scratch, dev, _g) = observed_guest("hswait");
    let mut s = UnixStream::connect(scratch.uds()).unwrap();
    s.write_all(b"CONNECT").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    let t0 = Instant::now();
    let mut b = [0u8; 8];
    let r = s.read(&mut b);
    // Closed with its bytes unread: the end of the stream or a reset.
    assert!(
        matches!(&r, Ok(0)) || matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "a stalled handshake is still open after {:?}: {r:?}",
        t0.elapsed()
    );
    assert!(t0.elapsed() < Duration::from_secs(4));
    assert!(eventually(Duration::from_secs(1), || dev
        .device
        .debug_handshakes()
        == 0));
}

#[test]
fn a_host_process_gone_with_half_a_connect_line_is_forgotten_at_once() {
    let (scratch, dev, _g) = observed_guest("hshup");
    {
        let mut s = UnixStream::connect(scratch.uds()).unwrap();
        s.write_all(b"CONNECT 5").unwrap();
        assert!(eventually(Duration::from_secs(2), || dev
            .device
            .debug_handshakes()
            == 1));
    }
    // Well within the handshake deadline: the end of the stream alone closes it.
    assert!(
        eventually(Duration::from_millis(500), || dev.device.debug_handshakes()
            == 0),
        "the handshake of a closed host stream is still held"
    );
}

#[test]
fn a_guest_reset_is_never_answered_even_with_an_impossible_fwd_cnt() {
    let (scratch, dev, mut g) = observed_guest("rstrst");
    let (_l, _h) = guest_connected_to_host_2000(&scratch, &mut g);
    // The guest claims bytes it was never sent, and resets.
    g.conns.get_mut(&(100, 2000)).unwrap().fwd_cnt = 5;
    g.control((100, 2000), op::RST, 0);
    if let Some(p) = g.recv_within(Duration::from_millis(300)) {
        panic!("a reset was answered with op {}", p.hdr.op.get());
    }
    assert_eq!(dev.device.connections(), 0);
}

#[test]
fn bytes_behind_a_message_carrying_a_descriptor_reach_the_guest() {
    let (scratch, _dev, mut g) = observed_guest("scmrights");
    let mut host = scratch.host_connect(5000);
    let req = g.recv();
    // The guest accepts with no buffer yet: the host's bytes wait in its stream.
    let key = g.accept(&req, 0);
    read_ok(&mut host);
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let fds = [devnull.as_raw_fd()];
    sendmsg::<()>(
        host.as_raw_fd(),
        &[IoSlice::new(b"AAAA")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .unwrap();
    host.write_all(b"BBBB").unwrap();
    std::thread::sleep(Duration::from_millis(200));
    g.conns.get_mut(&key).unwrap().buf_alloc = 65536;
    g.control(key, op::CREDIT_UPDATE, 0);
    let mut got = Vec::new();
    while got.len() < 8 {
        match g.recv_within(Duration::from_secs(2)) {
            Some(p) if p.hdr.op.get() == op::RW => got.extend_from_slice(&p.data),
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(
        got, b"AAAABBBB",
        "bytes after a descriptor-carrying message never reach the guest"
    );
}

#[test]
fn a_guest_shutdown_of_its_receiving_side_reaches_the_host_writer() {
    let (scratch, _dev, mut g) = observed_guest("shutrcv");
    let (_l, mut h) = guest_connected_to_host_2000(&scratch, &mut g);
    // SHUTDOWN with VIRTIO_VSOCK_SHUTDOWN_RCV only: the guest still sends.
    g.control((100, 2000), op::SHUTDOWN, 1);
    h.set_write_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let refused = eventually(
        Duration::from_secs(2),
        || matches!(h.write(b"x"), Err(e) if e.kind() == ErrorKind::BrokenPipe),
    );
    assert!(
        refused,
        "the host may still write to a guest that takes nothing"
    );
    // The other direction still works.
    g.write((100, 2000), b"still", 4096);
    let mut b = [0u8; 5];
    h.set_read_timeout(Some(TIMEOUT)).unwrap();
    h.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"still");
}

#[test]
fn a_host_connection_never_takes_the_key_of_a_guest_connection_waiting_for_a_backlog() {
    use nix::sys::socket::UnixAddr;
    use nix::sys::socket::{bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType};
    use std::os::unix::net::UnixListener;
    let (scratch, dev, mut g) = observed_guest("keyclash");
    // The first local port of host-initiated connections.
    let first_local = 1u32 << 30;
    // A host listener there whose backlog is full.
    let mut path = scratch.uds().into_os_string();
    path.push(format!("_{first_local}"));
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(fd.as_raw_fd(), &UnixAddr::new(path.as_os_str()).unwrap()).unwrap();
    listen(&fd, Backlog::new(0).unwrap()).unwrap();
    let listener = UnixListener::from(fd);
    let mut filler = Vec::new();
    loop {
        let s = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        match nix::sys::socket::connect(s.as_raw_fd(), &UnixAddr::new(path.as_os_str()).unwrap()) {
            Ok(()) => filler.push(s),
            Err(_) => break,
        }
        assert!(filler.len() < 1000, "the backlog never filled");
    }
    // The guest connects from port 5 to that port: it waits for room in the backlog.
    let key = (5, first_local);
    g.conns.insert(
        key,
        GuestConn {
            guest_port: 5,
            host_port: first_local,
            buf_alloc: 65536,
            ..GuestConn::default()
        },
    );
    g.control(key, op::REQUEST, 0);
    // A host process connects to guest port 5.
    let mut host = scratch.host_connect(5);
    let req = g.recv();
    assert_eq!(req.hdr.op.get(), op::REQUEST);
    assert_ne!(
        key_of(&req),
        key,
        "the host connection took the key of the guest's waiting one"
    );
    let host_key = g.accept(&req, 65536);
    read_ok(&mut host);
    // Room in the backlog: the guest's connection goes through too.
    for _ in 0..filler.len() {
        drop(listener.accept().unwrap());
    }
    drop(filler);
    assert_eq!(g.recv_for(key).hdr.op.get(), op::RESPONSE);
    assert_eq!(dev.device.connections(), 2);
    // Both work.
    let (mut h, _) = listener.accept().unwrap();
    g.write(key, b"guest", 4096);
    let mut b = [0u8; 5];
    h.set_read_timeout(Some(TIMEOUT)).unwrap();
    h.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"guest");
    g.write(host_key, b"hosts", 4096);
    host.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"hosts");
}
