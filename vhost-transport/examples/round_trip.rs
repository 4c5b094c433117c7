//! Control round-trip latency: a 12-byte header and a `u64` body each way
//! between two threads, over `Connection::pair()` and over a bare socket pair
//! doing one `send` and one `recv` per side; for reference also over a bare
//! socket pair making the system calls `Connection` makes (a two-slice
//! `sendmsg`, a `recvmsg` with room for descriptors) and nothing else.
//!
//! `cargo run --release -p vhost-transport --example round_trip [batches] [round trips per batch]`
//!
//! Batches of the three variants alternate, so that load from elsewhere on
//! the machine hits them alike. Pin both threads to one CPU with
//! `taskset -c 0` to take cross-CPU wake-ups out of the figures.
//!
//! The variants use Unix stream sockets; elsewhere the example does nothing.

fn main() {
    #[cfg(unix)]
    unix::main();
}

#[cfg(unix)]
mod unix {
    use std::io::{IoSlice, IoSliceMut};
    use std::os::fd::{AsRawFd, OwnedFd, RawFd};
    use std::thread;
    use std::time::Instant;

    use nix::sys::socket::{
        recv, recvmsg, send, sendmsg, socketpair, AddressFamily, MsgFlags, SockFlag, SockType,
    };
    use vhost_transport::{Connection, Error, FrontendChannel, HEADER_SIZE, MAX_BODY_SIZE};

    const MSG: usize = HEADER_SIZE + 8;

    fn header(size: u32) -> [u8; HEADER_SIZE] {
        let mut h = [0u8; HEADER_SIZE];
        h[0..4].copy_from_slice(&1u32.to_ne_bytes());
        h[4..8].copy_from_slice(&1u32.to_ne_bytes());
        h[8..12].copy_from_slice(&size.to_ne_bytes());
        h
    }

    /// Runs one batch of round trips and returns nanoseconds per round trip.
    type Batch = Box<dyn FnMut(usize) -> f64>;

    fn time(per_batch: usize, mut round_trip: impl FnMut(u64)) -> f64 {
        let start = Instant::now();
        for i in 0..per_batch {
            round_trip(i as u64);
        }
        start.elapsed().as_nanos() as f64 / per_batch as f64
    }

    fn stream_pair() -> (OwnedFd, OwnedFd) {
        socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair")
    }

    /// `Connection` on both sides.
    fn connection() -> Batch {
        let (a, b) = Connection::<FrontendChannel>::pair().expect("pair");
        thread::spawn(move || {
            let mut body = [0u8; 8];
            loop {
                let h = match b.recv_header() {
                    Ok((h, _fds)) => h,
                    Err(Error::Disconnected) => return,
                    Err(e) => panic!("echo recv_header: {e}"),
                };
                b.recv_body_into(&mut body).expect("echo recv_body");
                b.send(&h, &body, &[], &[]).expect("echo send");
            }
        });
        let h = header(8);
        Box::new(move |per_batch| {
            let mut body = [0u8; 8];
            time(per_batch, |v| {
                a.send(&h, &v.to_ne_bytes(), &[], &[]).expect("send");
                let (got, _fds) = a.recv_header().expect("recv_header");
                a.recv_body_into(&mut body).expect("recv_body");
                assert_eq!((got, u64::from_ne_bytes(body)), (h, v));
            })
        })
    }

    fn send_all(fd: &OwnedFd, buf: &[u8]) {
        let n = send(fd.as_raw_fd(), buf, MsgFlags::MSG_NOSIGNAL).expect("send");
        assert_eq!(n, buf.len());
    }

    /// One `send` and one `recv` per side and message.
    fn raw() -> Batch {
        let (a, b) = stream_pair();
        thread::spawn(move || {
            let mut buf = [0u8; MSG];
            loop {
                match recv(b.as_raw_fd(), &mut buf, MsgFlags::empty()).expect("echo recv") {
                    0 => return,
                    MSG => send_all(&b, &buf),
                    n => panic!("short read of {n}"),
                }
            }
        });
        let mut msg = [0u8; MSG];
        msg[..HEADER_SIZE].copy_from_slice(&header(8));
        Box::new(move |per_batch| {
            let mut buf = [0u8; MSG];
            time(per_batch, |v| {
                msg[HEADER_SIZE..].copy_from_slice(&v.to_ne_bytes());
                send_all(&a, &msg);
                let n = recv(a.as_raw_fd(), &mut buf, MsgFlags::empty()).expect("recv");
                assert_eq!((n, buf), (MSG, msg));
            })
        })
    }

    fn send_parts(fd: &OwnedFd, header: &[u8], body: &[u8]) {
        let iov = [IoSlice::new(header), IoSlice::new(body)];
        let n = sendmsg::<()>(fd.as_raw_fd(), &iov, &[], MsgFlags::MSG_NOSIGNAL, None)
            .expect("sendmsg");
        assert_eq!(n, header.len() + body.len());
    }

    fn recv_with_room(fd: &OwnedFd, buf: &mut [u8]) -> usize {
        let mut cmsg = nix::cmsg_space!([RawFd; 16]);
        let mut iov = [IoSliceMut::new(buf)];
        recvmsg::<()>(
            fd.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .expect("recvmsg")
        .bytes
    }

    /// The system calls of `Connection`, without its logic.
    fn syscalls_only() -> Batch {
        let (a, b) = stream_pair();
        thread::spawn(move || {
            let mut buf = vec![0u8; 2 * (HEADER_SIZE + MAX_BODY_SIZE)];
            loop {
                match recv_with_room(&b, &mut buf) {
                    0 => return,
                    MSG => send_parts(&b, &buf[..HEADER_SIZE], &buf[HEADER_SIZE..MSG]),
                    n => panic!("short read of {n}"),
                }
            }
        });
        let h = header(8);
        Box::new(move |per_batch| {
            let mut buf = vec![0u8; 2 * (HEADER_SIZE + MAX_BODY_SIZE)];
            time(per_batch, |v| {
                send_parts(&a, &h, &v.to_ne_bytes());
                assert_eq!(recv_with_room(&a, &mut buf), MSG);
                assert_eq!(buf[HEADER_SIZE..MSG], v.to_ne_bytes());
            })
        })
    }

    fn min_and_median(mut v: Vec<f64>) -> (f64, f64) {
        v.sort_by(f64::total_cmp);
        (v[0], v[v.len() / 2])
    }

    pub fn main() {
        let mut args = std::env::args().skip(1);
        let batches: usize = args.next().map_or(40, |s| s.parse().expect("batches"));
        let per_batch: usize = args
            .next()
            .map_or(5000, |s| s.parse().expect("round trips"));
        let mut variants: Vec<(&str, Batch, Vec<f64>)> = vec![
            ("raw send/recv", raw(), Vec::new()),
            ("sendmsg/recvmsg", syscalls_only(), Vec::new()),
            ("Connection", connection(), Vec::new()),
        ];
        for (_, batch, _) in &mut variants {
            batch(per_batch / 10 + 1);
        }
        for _ in 0..batches {
            for (_, batch, times) in &mut variants {
                times.push(batch(per_batch));
            }
        }
        println!("{batches} batches of {per_batch} round trips, ns per round trip");
        let mut figures = Vec::new();
        for (name, _, times) in variants {
            let (min, median) = min_and_median(times);
            println!("{name:16} min {min:6.0}  median {median:6.0}");
            figures.push((min, median));
        }
        let ((raw_min, raw_med), (conn_min, conn_med)) = (figures[0], figures[2]);
        println!(
            "Connection / raw: min {:.3}  median {:.3}",
            conn_min / raw_min,
            conn_med / raw_med
        );
    }
}
