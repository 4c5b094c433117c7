//! Non-blocking receive on Unix with part of a header buffered: the header
//! read says "would block" and keeps that part (and its descriptors) for the
//! next call, and `has_buffered` only counts whole headers, so a poll-driven
//! user waits for the socket to become readable instead of spinning or
//! blocking.

#![cfg(target_os = "linux")]

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use vhost_transport::{Connection, Error, Result, HEADER_SIZE};

type Received = Result<([u8; HEADER_SIZE], Vec<OwnedFd>)>;

use common::unix::raw_send;
use common::{assert_partial, message, Conn};

fn conn_and_raw() -> (Arc<Conn>, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    (Arc::new(Connection::from_stream(a)), b)
}

/// A non-blocking connection with read timeout `timeout` that has read the header of
/// message `request` (16-byte body) and of whose body only 4 bytes have come; the raw
/// peer and the whole message.
fn body_started(request: u32, timeout: Duration) -> (Arc<Conn>, UnixStream, Vec<u8>) {
    let (conn, raw) = conn_and_raw();
    let m = message(request, 16);
    raw_send(&raw, &m[..HEADER_SIZE + 4], &[]);
    conn.set_nonblocking(true).unwrap();
    conn.set_read_timeout(Some(timeout)).unwrap();
    conn.recv_header().unwrap();
    (conn, raw, m)
}

/// `recv_header` on another thread, failing the test rather than hanging
/// when it does not return within two seconds.
fn recv_header_within_2s(conn: &Arc<Conn>) -> Received {
    let (tx, rx) = mpsc::channel();
    let conn = Arc::clone(conn);
    thread::spawn(move || {
        let _ = tx.send(conn.recv_header());
    });
    rx.recv_timeout(Duration::from_secs(2))
        .expect("recv_header blocked on a non-blocking connection")
}

/// Receives one message without descriptors, checks header and body against `expected`.
fn recv_message(conn: &Conn, expected: &[u8]) {
    assert!(common::unix::recv_message(conn, expected).is_empty());
}

#[test]
fn nonblocking_header_read_with_part_of_a_header_buffered_would_block_and_keeps_the_part() {
    let (conn, raw) = conn_and_raw();
    let (m1, m2) = (message(1, 8), message(2, 4));
    raw_send(&raw, &[&m1[..], &m2[..5]].concat(), &[]);
    conn.set_nonblocking(true).unwrap();
    recv_message(&conn, &m1);
    assert!(
        !conn.has_buffered(),
        "five bytes of a header are not a header"
    );
    let err = recv_header_within_2s(&conn).unwrap_err();
    assert!(matches!(err, Error::WouldBlock), "{err:?}");
    assert!(err.is_retryable());
    assert!(!conn.has_buffered());
    raw_send(&raw, &m2[5..], &[]);
    recv_message(&conn, &m2);
    assert!(matches!(conn.recv_header(), Err(Error::WouldBlock)));
}

#[test]
fn descriptors_of_a_partly_arrived_header_wait_with_it_across_would_block() {
    let (conn, raw) = conn_and_raw();
    let (m1, m2) = (message(1, 0), message(2, 0));
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    raw_send(&raw, &m1, &[]);
    raw_send(&raw, &m2[..3], &[write_end.as_raw_fd()]);
    drop(write_end);
    conn.set_nonblocking(true).unwrap();
    recv_message(&conn, &m1);
    // The first read may have stopped before the descriptor-carrying write.
    let err = recv_header_within_2s(&conn).unwrap_err();
    assert!(matches!(err, Error::WouldBlock), "{err:?}");
    let err = recv_header_within_2s(&conn).unwrap_err();
    assert!(matches!(err, Error::WouldBlock), "{err:?}");
    raw_send(&raw, &m2[3..], &[]);
    let (h, fds) = conn.recv_header().unwrap();
    assert_eq!(h[..], m2[..]);
    assert_eq!(fds.len(), 1, "the descriptor stayed with its header");
    let mut w = fs::File::from(fds.into_iter().next().unwrap());
    w.write_all(b"x").unwrap();
    drop(w);
    let mut got = Vec::new();
    fs::File::from(read_end).read_to_end(&mut got).unwrap();
    assert_eq!(got, b"x", "it is the pipe that was sent");
}

#[test]
fn blocking_header_read_with_part_of_a_header_buffered_waits_for_the_rest() {
    let (conn, raw) = conn_and_raw();
    let (m1, m2) = (message(1, 8), message(2, 0));
    raw_send(&raw, &[&m1[..], &m2[..5]].concat(), &[]);
    recv_message(&conn, &m1);
    let rest = m2[5..].to_vec();
    let writer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        raw_send(&raw, &rest, &[]);
        raw
    });
    assert_eq!(recv_header_within_2s(&conn).unwrap().0[..], m2[..]);
    writer.join().unwrap();
}

#[test]
fn whole_buffered_header_counts_as_buffered_and_is_served_without_readability() {
    let (conn, raw) = conn_and_raw();
    let (m1, m2) = (message(1, 8), message(2, 4));
    raw_send(&raw, &[&m1[..], &m2[..HEADER_SIZE]].concat(), &[]);
    conn.set_nonblocking(true).unwrap();
    let (h, _) = conn.recv_header().unwrap();
    assert_eq!(h[..], m1[..HEADER_SIZE]);
    assert!(conn.has_buffered(), "the next header is already here");
    conn.recv_body(8).unwrap();
    assert!(conn.has_buffered());
    let (h, _) = conn.recv_header().unwrap();
    assert_eq!(h[..], m2[..HEADER_SIZE]);
    assert!(!conn.has_buffered(), "only a body is expected now");
    let err = conn.recv_body(4).unwrap_err();
    assert!(matches!(err, Error::WouldBlock), "{err:?}");
    raw_send(&raw, &m2[HEADER_SIZE..], &[]);
    assert_eq!(conn.recv_body(4).unwrap()[..], m2[HEADER_SIZE..]);
}

/// A body that starts but does not finish is waited for on a non-blocking
/// connection, but only within the read timeout: a peer that stops in the
/// middle of a message cannot hold the reader (an event loop's thread).
#[test]
fn nonblocking_body_read_stopped_midway_ends_at_the_read_timeout() {
    let (conn, raw, _) = body_started(3, Duration::from_millis(200));
    let (tx, rx) = mpsc::channel();
    let reader = Arc::clone(&conn);
    thread::spawn(move || {
        let _ = tx.send(reader.recv_body(16));
    });
    let err = rx
        .recv_timeout(Duration::from_secs(3))
        .expect("the body read waited past its read timeout")
        .unwrap_err();
    assert_partial(&err, 16, 4);
    drop(raw);
}

/// Within the read timeout, the rest of a started body is waited for.
#[test]
fn nonblocking_body_read_gets_the_rest_that_comes_within_the_read_timeout() {
    let (conn, raw, m) = body_started(4, Duration::from_secs(2));
    let rest = m[HEADER_SIZE + 4..].to_vec();
    let writer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(50));
        raw_send(&raw, &rest, &[]);
        raw
    });
    assert_eq!(conn.recv_body(16).unwrap()[..], m[HEADER_SIZE..]);
    writer.join().unwrap();
}

/// Whole-message mode: a header whose body has not all come stays buffered
/// (would block), with its descriptors; once the body is here the header and
/// body are read without waiting, and `has_buffered` counts whole messages.
#[test]
fn whole_message_mode_hands_out_a_header_only_with_its_body() {
    let (conn, raw) = conn_and_raw();
    conn.set_nonblocking(true).unwrap();
    conn.set_whole_messages(true);
    let m = message(5, 16);
    let (read_end, write_end) = nix::unistd::pipe().unwrap();
    raw_send(&raw, &m[..HEADER_SIZE + 3], &[write_end.as_raw_fd()]);
    drop(write_end);
    for _ in 0..2 {
        let err = recv_header_within_2s(&conn).unwrap_err();
        assert!(matches!(err, Error::WouldBlock), "{err:?}");
        assert!(!conn.has_buffered(), "no whole message yet");
    }
    // The rest of the body, and a whole second message behind it.
    let m2 = message(6, 4);
    raw_send(&raw, &[&m[HEADER_SIZE + 3..], &m2[..]].concat(), &[]);
    let (h, fds) = conn.recv_header().unwrap();
    assert_eq!(h[..], m[..HEADER_SIZE]);
    assert_eq!(fds.len(), 1, "the descriptor stayed with its header");
    assert_eq!(conn.recv_body(16).unwrap()[..], m[HEADER_SIZE..]);
    assert!(conn.has_buffered(), "the second message is whole");
    recv_message(&conn, &m2);
    assert!(!conn.has_buffered());
    drop(read_end);
    // A peer that stops in the middle of a body never makes a read wait.
    raw_send(&raw, &message(7, 32)[..HEADER_SIZE + 1], &[]);
    let err = recv_header_within_2s(&conn).unwrap_err();
    assert!(matches!(err, Error::WouldBlock), "{err:?}");
    // Gone with half a body buffered: the message is cut short.
    drop(raw);
    let err = recv_header_within_2s(&conn).unwrap_err();
    assert_partial(&err, HEADER_SIZE + 32, HEADER_SIZE + 1);
}
