//! Connections over real Unix sockets: framing, descriptor passing, peer
//! misbehaviour and listener life cycle. The platform-neutral part is the shared transport
//! contract (`common/contract.rs`), run here for Unix sockets.
//!
//! Several tests count the entries of /proc/self/fd to prove that error paths
//! close what they received, so every test in this binary takes `serial()`
//! first: no other test may open descriptors meanwhile.

#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread;
use std::time::Duration;

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
use vhost_transport::{Connection, Error, FrontendChannel, Inherited, Listener, MAX_FDS};

use common::unix::{check_pipes, conn_and_raw, open_fds, pipes, raw_send};
use common::{assert_nothing_waiting, assert_too_many_fds, header, serial, Conn};

// The transport contract, as Windows named pipes keep it too.
transport_contract!(common::unix::Unix);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vhost-transport-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn empty_body_needs_no_read() {
    let _g = serial();
    let (a, b) = Conn::pair().unwrap();
    a.send(&header(1, 0), &[], &[], &[]).unwrap();
    b.recv_header().unwrap();
    assert!(b.recv_body(0).unwrap().is_empty());
    assert_nothing_waiting(&b);
}

#[test]
fn sending_nine_fds_is_refused_before_writing() {
    let _g = serial();
    let (a, b) = Conn::pair().unwrap();
    let p = pipes(MAX_FDS + 1);
    let lent: Vec<BorrowedFd<'_>> = p.iter().map(|(_, w)| w.as_fd()).collect();
    let err = a.send(&header(5, 0), &[], &[], &lent).unwrap_err();
    assert_too_many_fds(&err);
    assert_nothing_waiting(&b);
}

#[test]
fn receiving_nine_fds_is_too_many_and_closes_them() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let p = pipes(MAX_FDS + 1);
    let raws: Vec<RawFd> = p.iter().map(|(_, w)| w.as_raw_fd()).collect();
    let before = open_fds();
    raw_send(&raw, &header(5, 0), &raws);
    let err = conn.recv_header().unwrap_err();
    assert_too_many_fds(&err);
    assert_eq!(open_fds(), before);
}

#[test]
fn control_flood_is_truncated_and_nothing_leaks() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let p = pipes(40);
    let raws: Vec<RawFd> = p.iter().map(|(_, w)| w.as_raw_fd()).collect();
    let before = open_fds();
    raw_send(&raw, &header(5, 0), &raws);
    let err = conn.recv_header().unwrap_err();
    assert!(matches!(err, Error::ControlTruncated), "{err:?}");
    assert_eq!(open_fds(), before);
}

#[test]
fn fds_with_body_bytes_are_refused_and_closed() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let p = pipes(2);
    let raws: Vec<RawFd> = p.iter().map(|(_, w)| w.as_raw_fd()).collect();
    let before = open_fds();
    raw_send(&raw, &header(5, 8), &[]);
    let (_, fds) = conn.recv_header().unwrap();
    assert!(fds.is_empty());
    // The body's write starts no header: its descriptors belong to no message.
    raw_send(&raw, &[0u8; 8], &raws);
    let err = conn.recv_body(8).unwrap_err();
    assert!(matches!(err, Error::FdsWithBody { count: 2 }), "{err:?}");
    assert_eq!(open_fds(), before);
}

#[test]
fn fds_after_the_first_header_byte_are_refused_and_closed() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let p = pipes(1);
    let fd = p[0].1.as_raw_fd();
    let before = open_fds();
    let h = header(5, 0);
    raw_send(&raw, &h[..1], &[]);
    let writer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100));
        raw_send(&raw, &h[1..], &[fd]);
        raw
    });
    let err = conn.recv_header().unwrap_err();
    let raw = writer.join().unwrap();
    assert!(matches!(err, Error::FdsMidHeader { count: 1 }), "{err:?}");
    drop(raw);
    assert_eq!(open_fds(), before - 1);
}

#[test]
fn message_dribbled_byte_by_byte_is_reassembled() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let p = pipes(1);
    let fd = p[0].1.as_raw_fd();
    let h = header(9, 16);
    let body: Vec<u8> = (0..16).collect();
    let sent_body = body.clone();
    let writer = thread::spawn(move || {
        raw_send(&raw, &h[..1], &[fd]);
        for byte in h[1..].iter().chain(&sent_body) {
            thread::sleep(Duration::from_millis(1));
            raw_send(&raw, std::slice::from_ref(byte), &[]);
        }
        raw
    });
    let (got, fds) = conn.recv_header().unwrap();
    assert_eq!(got, h);
    assert_eq!(conn.recv_body(16).unwrap(), body);
    writer.join().unwrap();
    check_pipes(fds, &p);
}

#[test]
fn sending_to_a_closed_peer_is_disconnected_without_sigpipe() {
    let _g = serial();
    let (a, b) = Conn::pair().unwrap();
    drop(b);
    let err = a.send(&header(1, 0), &[], &[], &[]).unwrap_err();
    assert!(matches!(err, Error::Disconnected), "{err:?}");
}

#[test]
fn listener_serves_clients_one_after_another_on_one_socket_file() {
    let _g = serial();
    let dir = temp_dir("serve");
    let path = dir.join("sock");
    let listener = Listener::bind(&path, Some(0o600)).unwrap();
    assert_eq!(listener.path(), Some(path.as_path()));
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    for round in 0..2u32 {
        let client: Connection<FrontendChannel> = Connection::connect(&path).unwrap();
        let server: Conn = listener.accept().unwrap();
        client.send(&header(round, 0), &[], &[], &[]).unwrap();
        assert_eq!(server.recv_header().unwrap().0, header(round, 0));
        drop(client);
        assert!(matches!(server.recv_header(), Err(Error::Disconnected)));
        assert_eq!(fs::metadata(&path).unwrap().ino(), meta.ino());
    }
    listener.set_nonblocking(true).unwrap();
    assert!(matches!(
        listener.accept::<FrontendChannel>(),
        Err(Error::WouldBlock)
    ));
    drop(listener);
    assert!(!path.exists(), "socket file left behind");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bind_replaces_a_stale_socket_and_refuses_a_live_one() {
    let _g = serial();
    let dir = temp_dir("stale");
    let path = dir.join("sock");
    // std leaves the file behind when the listener goes away: a stale socket.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let listener = Listener::bind(&path, None).unwrap();
    let err = Listener::bind(&path, None).unwrap_err();
    assert!(
        matches!(&err, Error::AddressInUse(p) if *p == path),
        "{err:?}"
    );
    // The refused bind did not remove the live socket.
    let _client: Conn = Connection::connect(&path).unwrap();
    drop(listener);

    let file = dir.join("file");
    fs::write(&file, b"x").unwrap();
    let err = Listener::bind(&file, None).unwrap_err();
    assert!(matches!(err, Error::AddressInUse(_)), "{err:?}");
    assert_eq!(fs::read(&file).unwrap(), b"x");
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn dropping_a_listener_leaves_a_replaced_socket_file_alone() {
    let _g = serial();
    let dir = temp_dir("replaced");
    let path = dir.join("sock");
    let listener = Listener::bind(&path, None).unwrap();
    fs::remove_file(&path).unwrap();
    let other = UnixListener::bind(&path).unwrap();
    drop(listener);
    assert!(path.exists());
    drop(other);
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn from_fd_takes_a_listening_socket() {
    let _g = serial();
    let dir = temp_dir("inherit");
    let path = dir.join("sock");
    let std_listener = UnixListener::bind(&path).unwrap();
    let inherited = Listener::from_fd::<FrontendChannel>(OwnedFd::from(std_listener)).unwrap();
    let Inherited::Listener(listener) = inherited else {
        panic!("listening socket taken for a connection");
    };
    assert_eq!(listener.path(), None);
    let client: Conn = Connection::connect(&path).unwrap();
    let server: Conn = listener.accept().unwrap();
    client.send(&header(2, 0), &[], &[], &[]).unwrap();
    assert_eq!(server.recv_header().unwrap().0, header(2, 0));
    drop(listener);
    assert!(
        path.exists(),
        "an inherited listener must not remove the file"
    );
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn from_fd_takes_a_connected_socket() {
    let _g = serial();
    let (a, b) = UnixStream::pair().unwrap();
    let Inherited::Connected(conn) =
        Listener::from_fd::<FrontendChannel>(OwnedFd::from(a)).unwrap()
    else {
        panic!("connected socket taken for a listener");
    };
    let peer: Conn = Connection::from_fd(OwnedFd::from(b)).unwrap();
    peer.send(&header(3, 0), &[], &[], &[]).unwrap();
    assert_eq!(conn.recv_header().unwrap().0, header(3, 0));
}

#[test]
fn from_fd_refuses_what_is_not_a_connected_local_stream() {
    let _g = serial();
    let before = open_fds();
    let (r, _w) = nix::unistd::pipe().unwrap();
    assert!(matches!(
        Listener::from_fd::<FrontendChannel>(r),
        Err(Error::NotASocket)
    ));
    let dgram = socket(
        AddressFamily::Unix,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    assert!(matches!(Conn::from_fd(dgram), Err(Error::NotASocket)));
    let inet = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    assert!(matches!(Conn::from_fd(inet), Err(Error::NotASocket)));
    let unconnected = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    assert!(matches!(
        Listener::from_fd::<FrontendChannel>(unconnected),
        Err(Error::NotConnected)
    ));
    let dir = temp_dir("notconn");
    let std_listener = UnixListener::bind(dir.join("sock")).unwrap();
    assert!(matches!(
        Conn::from_fd(OwnedFd::from(std_listener)),
        Err(Error::NotConnected)
    ));
    drop(_w);
    assert_eq!(open_fds(), before);
    fs::remove_dir_all(dir).unwrap();
}
