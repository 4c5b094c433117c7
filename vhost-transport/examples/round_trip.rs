//! Control round-trip latency: a 12-byte header and a `u64` body each way
//! between two threads, over `Connection::pair()` and over a bare socket pair
//! doing one `send` and one `recv` per side, and, for reference, over a bare
//! socket pair making the system calls `Connection` makes (a two-slice
//! `sendmsg`, a `recvmsg` with room for descriptors) and nothing else.
//!
//! `cargo run --release -p vhost-transport --example round_trip [batches] [round trips per batch]`
//! Pin both threads to one CPU with `taskset -c 0` to take cross-CPU wake-ups
//! out of the figures.

use std::os::fd::{AsRawFd, OwnedFd};
use std::thread;
use std::time::Instant;

use std::io::{IoSlice, IoSliceMut};

use nix::sys::socket::{
    recv, recvmsg, send, sendmsg, socketpair, AddressFamily, MsgFlags, SockFlag, SockType,
};
use vhost_transport::{Connection, FrontendChannel, HEADER_SIZE};

const MSG: usize = HEADER_SIZE + 8;

fn header(size: u32) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[0..4].copy_from_slice(&1u32.to_ne_bytes());
    h[4..8].copy_from_slice(&1u32.to_ne_bytes());
    h[8..12].copy_from_slice(&size.to_ne_bytes());
    h
}

/// Nanoseconds per round trip of each batch, over `Connection`.
fn connection_batches(batches: usize, per_batch: usize) -> Vec<f64> {
    let (a, b) = Connection::<FrontendChannel>::pair().expect("pair");
    let total = batches * per_batch;
    let echo = thread::spawn(move || {
        let mut body = [0u8; 8];
        for _ in 0..total {
            let (h, _fds) = b.recv_header().expect("echo recv_header");
            b.recv_body_into(&mut body).expect("echo recv_body");
            b.send(&h, &body, &[], &[]).expect("echo send");
        }
    });
    let h = header(8);
    let mut body = [0u8; 8];
    let mut out = Vec::with_capacity(batches);
    for batch in 0..batches {
        let start = Instant::now();
        for i in 0..per_batch {
            let v = (batch * per_batch + i) as u64;
            a.send(&h, &v.to_ne_bytes(), &[], &[]).expect("send");
            let (got, _fds) = a.recv_header().expect("recv_header");
            a.recv_body_into(&mut body).expect("recv_body");
            assert_eq!((got, u64::from_ne_bytes(body)), (h, v));
        }
        out.push(start.elapsed().as_nanos() as f64 / per_batch as f64);
    }
    echo.join().expect("echo thread");
    out
}

fn send_all(fd: &OwnedFd, buf: &[u8]) {
    let n = send(fd.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL).expect("send");
    assert_eq!(n, buf.len());
}

fn recv_all(fd: &OwnedFd, buf: &mut [u8]) {
    let n = recv(fd.as_raw_fd(), buf, MsgFlags::empty()).expect("recv");
    assert_eq!(n, buf.len(), "short read");
}

/// Nanoseconds per round trip of each batch, one `send` and one `recv` per
/// side and message.
fn raw_batches(batches: usize, per_batch: usize) -> Vec<f64> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    let total = batches * per_batch;
    let echo = thread::spawn(move || {
        let mut buf = [0u8; MSG];
        for _ in 0..total {
            recv_all(&b, &mut buf);
            send_all(&b, &buf);
        }
    });
    let mut msg = [0u8; MSG];
    msg[..HEADER_SIZE].copy_from_slice(&header(8));
    let mut buf = [0u8; MSG];
    let mut out = Vec::with_capacity(batches);
    for batch in 0..batches {
        let start = Instant::now();
        for i in 0..per_batch {
            let v = (batch * per_batch + i) as u64;
            msg[HEADER_SIZE..].copy_from_slice(&v.to_ne_bytes());
            send_all(&a, &msg);
            recv_all(&a, &mut buf);
            assert_eq!(buf, msg);
        }
        out.push(start.elapsed().as_nanos() as f64 / per_batch as f64);
    }
    echo.join().expect("echo thread");
    out
}

/// One `sendmsg` of header and body as two slices, one `recvmsg` with room
/// for descriptors: the system calls `Connection` makes, without its logic.
fn msg_batches(batches: usize, per_batch: usize) -> Vec<f64> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .expect("socketpair");
    fn send_parts(fd: &OwnedFd, header: &[u8], body: &[u8]) {
        let iov = [IoSlice::new(header), IoSlice::new(body)];
        let n = sendmsg::<()>(fd.as_raw_fd(), &iov, &[], MsgFlags::MSG_NOSIGNAL, None)
            .expect("sendmsg");
        assert_eq!(n, MSG);
    }
    fn recv_with_room(fd: &OwnedFd, buf: &mut [u8]) -> usize {
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 16]);
        let mut iov = [IoSliceMut::new(buf)];
        let msg = recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .expect("recvmsg");
        msg.bytes
    }
    let total = batches * per_batch;
    let echo = thread::spawn(move || {
        let mut buf = vec![0u8; 8216];
        for _ in 0..total {
            assert_eq!(recv_with_room(&b, &mut buf), MSG);
            send_parts(&b, &buf[..HEADER_SIZE], &buf[HEADER_SIZE..MSG]);
        }
    });
    let h = header(8);
    let mut buf = vec![0u8; 8216];
    let mut out = Vec::with_capacity(batches);
    for batch in 0..batches {
        let start = Instant::now();
        for i in 0..per_batch {
            let v = (batch * per_batch + i) as u64;
            send_parts(&a, &h, &v.to_ne_bytes());
            assert_eq!(recv_with_room(&a, &mut buf), MSG);
            assert_eq!(buf[HEADER_SIZE..MSG], v.to_ne_bytes());
        }
        out.push(start.elapsed().as_nanos() as f64 / per_batch as f64);
    }
    echo.join().expect("echo thread");
    out
}

fn min_and_median(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn main() {
    let mut args = std::env::args().skip(1);
    let batches: usize = args.next().map_or(40, |s| s.parse().expect("batches"));
    let per_batch: usize = args.next().map_or(5000, |s| s.parse().expect("round trips"));
    // Warm up both paths once.
    connection_batches(2, per_batch / 10 + 1);
    raw_batches(2, per_batch / 10 + 1);
    let (raw_min, raw_med) = min_and_median(raw_batches(batches, per_batch));
    let (conn_min, conn_med) = min_and_median(connection_batches(batches, per_batch));
    let (msg_min, msg_med) = min_and_median(msg_batches(batches, per_batch));
    println!("{batches} batches of {per_batch} round trips, ns per round trip");
    println!("raw send/recv:  min {raw_min:8.0}  median {raw_med:8.0}");
    println!("sendmsg/recvmsg min {msg_min:8.0}  median {msg_med:8.0}");
    println!("Connection:     min {conn_min:8.0}  median {conn_med:8.0}");
    println!(
        "ratio:          min {:8.3}  median {:8.3}",
        conn_min / raw_min,
        conn_med / raw_med
    );
}
