//! Unix socket helpers: a connection with a raw socket at its other end, raw sends with
//! descriptors, pipes whose write ends travel, descriptor counts.

use std::fs;
use std::io::{IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use vhost_transport::{Connection, HEADER_SIZE};

use super::contract::Platform;
use super::Conn;

/// Descriptors open in this process.
pub fn open_fds() -> usize {
    fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A connection and the raw socket at its other end.
pub fn conn_and_raw() -> (Conn, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    (Connection::from_stream(a), b)
}

/// One `sendmsg` of `bytes` with `fds` as SCM_RIGHTS; all bytes go.
pub fn raw_send(sock: &UnixStream, bytes: &[u8], fds: &[RawFd]) {
    let iov = [IoSlice::new(bytes)];
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage<'_>] = if fds.is_empty() { &[] } else { &rights };
    let n = sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None).unwrap();
    assert_eq!(n, bytes.len());
}

/// `n` pipes: (read end, write end); the write ends are what travels.
pub fn pipes(n: usize) -> Vec<(OwnedFd, OwnedFd)> {
    (0..n).map(|_| nix::unistd::pipe().unwrap()).collect()
}

/// The raw write ends of `p`.
pub fn write_ends(p: &[(OwnedFd, OwnedFd)]) -> Vec<RawFd> {
    p.iter().map(|(_, w)| w.as_raw_fd()).collect()
}

/// Each received descriptor is close-on-exec and the write end of the matching pipe: a
/// byte written through it comes out of that pipe's read end.
pub fn check_pipes(received: Vec<OwnedFd>, originals: &[(OwnedFd, OwnedFd)]) {
    assert_eq!(received.len(), originals.len(), "descriptor count");
    for (i, (fd, (read_end, _))) in received.into_iter().zip(originals).enumerate() {
        let flags = FdFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFD).unwrap());
        assert!(
            flags.contains(FdFlag::FD_CLOEXEC),
            "fd {i} not close-on-exec"
        );
        let mut w = fs::File::from(fd);
        w.write_all(&[i as u8 + 1]).unwrap();
        let mut r = fs::File::from(read_end.try_clone().unwrap());
        let mut b = [0u8; 1];
        r.read_exact(&mut b).unwrap();
        assert_eq!(b[0], i as u8 + 1, "descriptor {i} is another pipe");
    }
}

/// Receives one message, checks header and body against `expected` (as built by
/// [`message`](super::message)), returns its descriptors.
pub fn recv_message(conn: &Conn, expected: &[u8]) -> Vec<OwnedFd> {
    let (h, fds) = conn.recv_header().unwrap();
    assert_eq!(h[..], expected[..HEADER_SIZE], "header");
    let body = conn.recv_body(expected.len() - HEADER_SIZE).unwrap();
    assert_eq!(body[..], expected[HEADER_SIZE..], "body");
    fds
}

/// Unix sockets: descriptors ride as SCM_RIGHTS, the bytes are the messages themselves.
pub struct Unix;

impl Platform for Unix {
    type Raw = UnixStream;
    type Lent = (OwnedFd, OwnedFd);
    const NONBLOCKING_SEND: bool = true;

    fn conn_and_raw() -> (Conn, UnixStream) {
        conn_and_raw()
    }
    fn plain(bytes: &[u8]) -> Vec<u8> {
        bytes.to_vec()
    }
    fn lend(n: usize) -> Vec<(OwnedFd, OwnedFd)> {
        pipes(n)
    }
    fn borrow(lent: &(OwnedFd, OwnedFd)) -> BorrowedFd<'_> {
        lent.1.as_fd()
    }
    fn check(received: Vec<OwnedFd>, originals: &[(OwnedFd, OwnedFd)]) {
        check_pipes(received, originals)
    }
}
