//! Read-ahead on Unix sockets: several messages per read, messages spread over
//! many reads, descriptors matched to the message whose header starts the
//! write that carried them, and `has_buffered` for poll-driven users.
//!
//! Tests count the entries of /proc/self/fd, so every test takes `serial()`
//! first: no other test may open descriptors meanwhile.

#![cfg(target_os = "linux")]

mod common;

use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vhost_transport::{Error, HEADER_SIZE, MAX_FDS};

use common::unix::{
    check_pipes, conn_and_raw, open_fds, pipes, raw_send, recv_message, write_ends,
};
use common::{assert_partial, assert_too_many_fds, header, message, serial, Conn};

fn readable(conn: &Conn) -> bool {
    let mut fds = [PollFd::new(conn.as_fd(), PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).unwrap() > 0
}

#[test]
fn connection_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Conn>();
}

#[test]
fn two_messages_in_one_read_each_get_only_their_own_fds() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let p = pipes(2);
    let (m1, m2) = (message(1, 8), message(2, 4));
    raw_send(&raw, &m1, &[]);
    raw_send(&raw, &m2, &write_ends(&p));
    let f1 = recv_message(&conn, &m1);
    assert!(f1.is_empty(), "first message took the second's descriptors");
    assert!(conn.has_buffered(), "both messages should come in one read");
    assert!(!readable(&conn));
    check_pipes(recv_message(&conn, &m2), &p);
    assert!(!conn.has_buffered());
}

#[test]
fn fds_on_the_middle_of_three_messages_go_to_the_middle_one() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let p = pipes(3);
    let (m1, m2, m3) = (message(1, 8), message(2, 4), message(3, 0));
    raw_send(&raw, &m1, &[]);
    // The middle message's header carries the descriptors; its body goes
    // out with the third message.
    raw_send(&raw, &m2[..HEADER_SIZE], &write_ends(&p));
    raw_send(&raw, &[&m2[HEADER_SIZE..], &m3[..]].concat(), &[]);
    assert!(recv_message(&conn, &m1).is_empty());
    check_pipes(recv_message(&conn, &m2), &p);
    assert!(recv_message(&conn, &m3).is_empty());
}

#[test]
fn many_queued_messages_keep_their_own_fds() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let p = pipes(3);
    let msgs: Vec<Vec<u8>> = (0..40).map(|i| message(i, (i as usize * 7) % 30)).collect();
    // Messages 3, 10, 17, ... carry i % 3 + 1 descriptors.
    let fds_of = |i: usize| if i % 7 == 3 { i % 3 + 1 } else { 0 };
    for (i, m) in msgs.iter().enumerate() {
        raw_send(&raw, m, &write_ends(&p[..fds_of(i)]));
    }
    for (i, m) in msgs.iter().enumerate() {
        check_pipes(recv_message(&conn, m), &p[..fds_of(i)]);
    }
}

#[test]
fn fds_with_a_header_starting_in_the_middle_of_a_read_go_to_that_header() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let p = pipes(1);
    let (m1, m2) = (message(1, 8), message(2, 4));
    raw_send(&raw, &m1[..16], &[]);
    assert_eq!(conn.recv_header().unwrap().0[..], m1[..HEADER_SIZE]);
    // Half the body is buffered; the read for the rest brings the end of
    // this body and then the next message with its descriptor.
    raw_send(&raw, &m1[16..], &[]);
    raw_send(&raw, &m2, &write_ends(&p));
    assert_eq!(conn.recv_body(8).unwrap()[..], m1[HEADER_SIZE..]);
    check_pipes(recv_message(&conn, &m2), &p);
}

/// Sends `stream` (the concatenation of `msgs`) cut at `cut` and at every
/// message start, each message's descriptors on the write starting it.
fn send_cut(raw: &UnixStream, msgs: &[Vec<u8>], fds: &[Vec<RawFd>], cut: usize, pause: bool) {
    let stream = msgs.concat();
    let starts: Vec<usize> = msgs
        .iter()
        .scan(0, |at, m| {
            let s = *at;
            *at += m.len();
            Some(s)
        })
        .collect();
    let mut cuts = starts.clone();
    cuts.push(cut);
    cuts.push(stream.len());
    cuts.sort_unstable();
    cuts.dedup();
    for w in cuts.windows(2) {
        let attached = match starts.iter().position(|&s| s == w[0]) {
            Some(i) => fds[i].as_slice(),
            None => &[],
        };
        raw_send(raw, &stream[w[0]..w[1]], attached);
        if pause {
            thread::sleep(Duration::from_millis(2));
        }
    }
}

#[test]
fn messages_split_at_every_byte_offset_keep_their_fds() {
    let _g = serial();
    let p = pipes(3);
    let msgs = vec![message(1, 8), message(2, 4), message(3, 0), message(4, 5)];
    // Descriptors on the first, second and last message.
    let sets: [&[(OwnedFd, OwnedFd)]; 4] = [&p[..1], &p[1..3], &[], &p[..2]];
    let fds: Vec<Vec<RawFd>> = sets.iter().map(|s| write_ends(s)).collect();
    let total: usize = msgs.iter().map(Vec::len).sum();
    let before = open_fds();
    for pause in [false, true] {
        for cut in 1..total {
            let (conn, raw) = conn_and_raw();
            let writer = {
                let (msgs, fds) = (msgs.clone(), fds.clone());
                thread::spawn(move || {
                    send_cut(&raw, &msgs, &fds, cut, pause);
                    raw
                })
            };
            for (m, set) in msgs.iter().zip(sets) {
                check_pipes(recv_message(&conn, m), set);
            }
            drop(writer.join().unwrap());
            assert!(matches!(conn.recv_header(), Err(Error::Disconnected)));
        }
    }
    assert_eq!(open_fds(), before);
}

#[test]
fn two_messages_dribbled_byte_by_byte_keep_their_fds() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let p = pipes(2);
    let (m1, m2) = (message(1, 6), message(2, 3));
    let fds = write_ends(&p);
    let writer = {
        let stream = [&m1[..], &m2[..]].concat();
        let m2_start = m1.len();
        thread::spawn(move || {
            for (i, byte) in stream.iter().enumerate() {
                let attached = match i {
                    0 => &fds[..1],
                    i if i == m2_start => &fds[1..],
                    _ => &[],
                };
                raw_send(&raw, std::slice::from_ref(byte), attached);
                thread::sleep(Duration::from_millis(1));
            }
            raw
        })
    };
    check_pipes(recv_message(&conn, &m1), &p[..1]);
    check_pipes(recv_message(&conn, &m2), &p[1..]);
    writer.join().unwrap();
}

#[test]
fn fds_with_the_tail_of_a_buffered_header_are_mid_header_and_closed() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let p = pipes(2);
    let (m1, m2) = (message(1, 8), message(2, 0));
    let before = open_fds();
    raw_send(&raw, &[&m1[..], &m2[..5]].concat(), &[]);
    assert!(recv_message(&conn, &m1).is_empty());
    assert!(!conn.has_buffered(), "part of a header is not a header");
    raw_send(&raw, &m2[5..], &write_ends(&p));
    let err = conn.recv_header().unwrap_err();
    assert!(matches!(err, Error::FdsMidHeader { count: 2 }), "{err:?}");
    assert_eq!(open_fds(), before);
}

#[test]
fn fds_with_the_tail_of_a_buffered_body_are_refused_and_closed() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let p = pipes(2);
    let m1 = message(1, 8);
    let before = open_fds();
    raw_send(&raw, &m1[..16], &[]);
    conn.recv_header().unwrap();
    raw_send(&raw, &m1[16..], &write_ends(&p));
    let err = conn.recv_body(8).unwrap_err();
    assert!(matches!(err, Error::FdsWithBody { count: 2 }), "{err:?}");
    assert_eq!(open_fds(), before);
}

#[test]
fn fds_of_a_header_read_as_body_are_refused_and_closed() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let p = pipes(1);
    let (m1, m2) = (message(1, 4), message(2, 0));
    let before = open_fds();
    raw_send(&raw, &m1, &[]);
    raw_send(&raw, &m2, &write_ends(&p));
    conn.recv_header().unwrap();
    // A body longer than the header says swallows the next header.
    let err = conn.recv_body(16).unwrap_err();
    assert!(matches!(err, Error::FdsWithBody { count: 1 }), "{err:?}");
    assert_eq!(open_fds(), before);
}

#[test]
fn too_many_fds_on_a_buffered_second_message_spare_the_first_and_are_closed() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let p = pipes(MAX_FDS + 1);
    let (m1, m2) = (message(1, 8), message(2, 0));
    let before = open_fds();
    raw_send(&raw, &m1, &[]);
    raw_send(&raw, &m2, &write_ends(&p));
    assert!(recv_message(&conn, &m1).is_empty());
    let err = conn.recv_header().unwrap_err();
    assert_too_many_fds(&err);
    assert_eq!(open_fds(), before);
}

#[test]
fn control_flood_on_a_buffered_second_message_is_truncated_and_closed() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let p = pipes(40);
    let (m1, m2) = (message(1, 8), message(2, 0));
    let before = open_fds();
    raw_send(&raw, &m1, &[]);
    raw_send(&raw, &m2, &write_ends(&p));
    assert!(recv_message(&conn, &m1).is_empty());
    let err = conn.recv_header().unwrap_err();
    assert!(matches!(err, Error::ControlTruncated), "{err:?}");
    assert_eq!(open_fds(), before);
}

#[test]
fn an_error_in_one_message_closes_the_fds_already_read_for_the_next() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let p = pipes(MAX_FDS + 1);
    let (m1, m2) = (message(1, 0), message(2, 0));
    let before = open_fds();
    // The first read stops after the write with descriptors (5 bytes); the
    // second brings the rest of the header and the next message with its own.
    raw_send(&raw, &m1[..5], &write_ends(&p));
    raw_send(&raw, &m1[5..], &[]);
    raw_send(&raw, &m2, &write_ends(&p[..2]));
    let err = conn.recv_header().unwrap_err();
    assert_too_many_fds(&err);
    assert_eq!(open_fds(), before, "with the connection still open");
}

#[test]
fn fds_of_a_buffered_unread_message_close_with_the_connection() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let p = pipes(2);
    let (m1, m2) = (message(1, 8), message(2, 0));
    let before = open_fds();
    raw_send(&raw, &m1, &[]);
    raw_send(&raw, &m2, &write_ends(&p));
    assert!(recv_message(&conn, &m1).is_empty());
    assert!(conn.has_buffered());
    drop(conn);
    drop(raw);
    assert_eq!(open_fds(), before - 2);
}

#[test]
fn buffered_message_is_served_while_the_socket_is_not_readable() {
    let _g = serial();
    let (a, b) = Conn::pair().unwrap();
    assert!(!b.has_buffered());
    a.send(&header(1, 8), &1u64.to_ne_bytes(), &[], &[])
        .unwrap();
    a.send(&header(2, 8), &2u64.to_ne_bytes(), &[], &[])
        .unwrap();
    b.set_nonblocking(true).unwrap();
    assert_eq!(b.recv_header().unwrap().0, header(1, 8));
    assert_eq!(b.recv_body(8).unwrap(), 1u64.to_ne_bytes());
    assert!(!readable(&b), "second message should already be buffered");
    assert!(b.has_buffered());
    assert_eq!(b.recv_header().unwrap().0, header(2, 8));
    assert_eq!(b.recv_body(8).unwrap(), 2u64.to_ne_bytes());
    assert!(!b.has_buffered());
    assert!(matches!(b.recv_header(), Err(Error::WouldBlock)));
}

#[test]
fn read_timeout_after_the_buffered_messages_is_timed_out_and_retryable() {
    let _g = serial();
    let (a, b) = Conn::pair().unwrap();
    b.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    a.send(&header(1, 0), &[], &[], &[]).unwrap();
    a.send(&header(2, 0), &[], &[], &[]).unwrap();
    assert_eq!(b.recv_header().unwrap().0, header(1, 0));
    assert_eq!(b.recv_header().unwrap().0, header(2, 0));
    let err = b.recv_header().unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    let p = pipes(1);
    a.send(&header(3, 0), &[], &[], &[p[0].1.as_fd()]).unwrap();
    let (h, fds) = b.recv_header().unwrap();
    assert_eq!(h, header(3, 0));
    check_pipes(fds, &p);
}

#[test]
fn read_timeout_with_a_buffered_partial_header_is_partial() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    conn.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let (m1, m2) = (message(1, 8), message(2, 0));
    raw_send(&raw, &[&m1[..], &m2[..5]].concat(), &[]);
    recv_message(&conn, &m1);
    let err = conn.recv_header().unwrap_err();
    assert_partial(&err, 12, 5);
}

#[test]
fn peer_closing_after_buffered_messages_delivers_them_then_disconnects() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let (m1, m2) = (message(1, 8), message(2, 3));
    raw_send(&raw, &[&m1[..], &m2[..]].concat(), &[]);
    drop(raw);
    recv_message(&conn, &m1);
    recv_message(&conn, &m2);
    assert!(matches!(conn.recv_header(), Err(Error::Disconnected)));
}

#[test]
fn peer_closing_inside_a_buffered_header_is_partial() {
    let _g = serial();
    let (conn, raw) = conn_and_raw();
    let (m1, m2) = (message(1, 8), message(2, 0));
    raw_send(&raw, &[&m1[..], &m2[..7]].concat(), &[]);
    drop(raw);
    recv_message(&conn, &m1);
    let err = conn.recv_header().unwrap_err();
    assert_partial(&err, 12, 7);
}
