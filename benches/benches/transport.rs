//! vhost-transport: a header + u64 request/reply round trip over `Connection::pair()` (an
//! echo thread answers each request) next to a raw socketpair ping-pong of the same 20
//! bytes each way (one send and one recv per side). Prints the ratio of the medians.
//!
//! Each round trip checks the reply, so a fast wrong answer cannot pass.

use std::hint::black_box;
use std::thread::JoinHandle;
use std::time::Duration;

use benches::raw::{RawEcho, Syscalls};
use criterion::{criterion_group, Criterion, Throughput};
use vhost_proto::{FrontendReq, Header, HeaderFlags, HEADER_SIZE};
use vhost_transport::{Connection, FrontendChannel};

/// A connection whose peer thread echoes each header + 8-byte body back as a reply.
struct Echo {
    conn: Connection<FrontendChannel>,
    header: [u8; HEADER_SIZE],
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn new() -> Self {
        let (conn, peer) = Connection::<FrontendChannel>::pair().expect("socketpair");
        let thread = std::thread::spawn(move || {
            let reply =
                Header::new(FrontendReq::GetFeatures as u32, HeaderFlags::REPLY, 8).to_wire();
            let mut body = [0u8; 8];
            while let Ok((header, fds)) = peer.recv_header() {
                assert!(fds.is_empty());
                let size = Header::from_wire(&header).size as usize;
                assert_eq!(size, 8);
                peer.recv_body_into(&mut body).expect("body");
                peer.send(&reply, &body, &[], &[]).expect("reply");
            }
        });
        let header =
            Header::new(FrontendReq::GetFeatures as u32, HeaderFlags::empty(), 8).to_wire();
        Echo {
            conn,
            header,
            thread: Some(thread),
        }
    }

    fn round_trip(&self, value: u64) -> u64 {
        self.conn
            .send(&self.header, &value.to_le_bytes(), &[], &[])
            .expect("send");
        let (header, fds) = self.conn.recv_header().expect("reply header");
        assert!(fds.is_empty());
        let h = Header::from_wire(&header);
        assert!(h.is_reply() && h.size == 8);
        let mut body = [0u8; 8];
        self.conn.recv_body_into(&mut body).expect("reply body");
        u64::from_le_bytes(body)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        // Closing our end ends the echo thread's loop.
        let (dead, _) = Connection::pair().expect("socketpair");
        drop(std::mem::replace(&mut self.conn, dead));
        if let Some(t) = self.thread.take() {
            t.join().expect("echo thread");
        }
    }
}

/// The raw socketpair echoes the connection is compared with: each with its name and the
/// reply it must give.
fn raw_echos() -> Vec<(&'static str, RawEcho, Vec<u8>)> {
    [
        ("raw_socketpair", Syscalls::SendRecv),
        ("raw_sendmsg_recvmsg", Syscalls::MsgWithControl),
    ]
    .into_iter()
    .map(|(name, how)| {
        let raw =
            RawEcho::with_syscalls(HEADER_SIZE + 8, HEADER_SIZE + 8, how).expect("socketpair");
        let want = raw.request().to_vec();
        (name, raw, want)
    })
    .collect()
}

fn bench_round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("transport/round_trip_20B");
    g.throughput(Throughput::Elements(1));

    let echo = Echo::new();
    let mut n = 0u64;
    g.bench_function("connection", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            assert_eq!(echo.round_trip(black_box(n)), n);
        })
    });
    drop(echo);

    for (name, mut raw, want) in raw_echos() {
        g.bench_function(name, |b| {
            b.iter(|| {
                let reply = raw.round_trip().expect("raw round trip");
                assert_eq!(reply, &want[..]);
            })
        });
    }
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = transport;
    config = config();
    targets = bench_round_trip
}

/// The same comparison in alternating rounds (see `benches::report::paired`).
fn paired() {
    let echo = Echo::new();
    let mut n = 0u64;
    for (name, mut raw, want) in raw_echos() {
        let p = benches::report::paired(
            &format!("transport/round_trip_20B connection vs {name}"),
            31,
            20_000,
            || {
                n = n.wrapping_add(1);
                assert_eq!(echo.round_trip(black_box(n)), n);
                1
            },
            || {
                assert_eq!(raw.round_trip().expect("raw round trip"), &want[..]);
                1
            },
        );
        println!("{p}");
    }
}

fn main() {
    transport();
    Criterion::default().configure_from_args().final_summary();
    println!(
        "{}",
        benches::report::ratios(
            "transport/round_trip_20B",
            &[
                ("connection", "raw_socketpair"),
                ("connection", "raw_sendmsg_recvmsg"),
            ],
        )
    );
    if !std::env::args().any(|a| ["--list", "--test", "--profile-time"].contains(&a.as_str())) {
        paired();
    }
}
