//! vhost-backend: a whole request → reply round trip through `BackendServer` (server on a
//! thread, over `Connection::pair()`), next to a raw socketpair ping-pong of the same bytes:
//!
//! - GET_FEATURES: 12-byte request, 20-byte reply (header + u64);
//! - SET_VRING_ADDR with NEED_REPLY (REPLY_ACK negotiated): 12 + 40-byte request, 20-byte
//!   ack.
//!
//! The front-end side sends pre-encoded bytes with the transport directly, so what is
//! measured on top of the raw ping-pong is the transport on both sides plus the server's
//! header check, decode, gate, dispatch and reply encoding. The back-end answers from
//! memory. Each round trip checks the reply (and the back-end checks that it saw the
//! address sent), so a fast wrong answer cannot pass. Prints the ratios of the medians.

use std::hint::black_box;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use benches::raw::{RawEcho, Syscalls};
use criterion::measurement::WallTime;
use criterion::{criterion_group, BenchmarkGroup, Criterion, Throughput};
use vhost_backend::{Backend, BackendResult, BackendServer};
use vhost_frontend::Frontend;
use vhost_proto::{
    virtio, FrontendReq, FrontendRequest, Header, HeaderFlags, MemTable, ProtocolFeatures,
    VringAddr, HEADER_SIZE,
};
use vhost_transport::{Connection, FrontendChannel};

const FEATURES: u64 = virtio::bit(virtio::PROTOCOL_FEATURES) | virtio::bit(32);

/// A back-end that answers GET_FEATURES and acks everything else from memory, recording the
/// last ring descriptor-table address it was given.
struct Answering {
    last_desc: Arc<AtomicU64>,
}

impl Backend for Answering {
    fn get_features(&mut self) -> BackendResult<u64> {
        Ok(FEATURES)
    }
    fn set_features(&mut self, _: u64) -> BackendResult<()> {
        Ok(())
    }
    fn set_mem_table(&mut self, _: &MemTable, _: Vec<OwnedFd>) -> BackendResult<()> {
        Ok(())
    }
    fn set_vring_num(&mut self, _: u32, _: u32) -> BackendResult<()> {
        Ok(())
    }
    fn set_vring_addr(&mut self, addr: &VringAddr) -> BackendResult<()> {
        self.last_desc.store(addr.desc, Ordering::Relaxed);
        Ok(())
    }
    fn set_vring_base(&mut self, _: u32, _: u32) -> BackendResult<()> {
        Ok(())
    }
    fn get_vring_base(&mut self, _: u32) -> BackendResult<u32> {
        Ok(0)
    }
    fn set_vring_kick(&mut self, _: u8, _: Option<OwnedFd>) -> BackendResult<()> {
        Ok(())
    }
    fn set_vring_call(&mut self, _: u8, _: Option<OwnedFd>) -> BackendResult<()> {
        Ok(())
    }
    fn get_protocol_features(&mut self) -> BackendResult<ProtocolFeatures> {
        Ok(ProtocolFeatures::REPLY_ACK)
    }
    fn set_protocol_features(&mut self, _: ProtocolFeatures) -> BackendResult<()> {
        Ok(())
    }
    fn set_vring_enable(&mut self, _: u32, _: bool) -> BackendResult<()> {
        Ok(())
    }
}

/// A server on a thread and the front-end's connection to it, after a handshake that
/// negotiated REPLY_ACK.
struct Served {
    conn: Option<Connection<FrontendChannel>>,
    last_desc: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Served {
    fn new() -> Self {
        let (front, back) = Connection::pair().expect("socketpair");
        let last_desc = Arc::new(AtomicU64::new(0));
        let backend = Answering {
            last_desc: Arc::clone(&last_desc),
        };
        let thread = std::thread::spawn(move || {
            let mut server = BackendServer::new(back, backend).expect("server");
            server.serve().expect("session ended with an error");
        });
        let mut fe = Frontend::new(front);
        assert_eq!(fe.get_features().expect("GET_FEATURES"), FEATURES);
        let pf = fe.get_protocol_features().expect("GET_PROTOCOL_FEATURES");
        fe.set_protocol_features(pf).expect("SET_PROTOCOL_FEATURES");
        fe.set_owner().expect("SET_OWNER");
        fe.set_features(FEATURES).expect("SET_FEATURES");
        assert!(fe.reply_ack(), "REPLY_ACK not negotiated");
        Served {
            conn: Some(fe.into_connection()),
            last_desc,
            thread: Some(thread),
        }
    }

    fn conn(&self) -> &Connection<FrontendChannel> {
        self.conn.as_ref().expect("connection")
    }

    /// Receives a u64 reply to `code` and returns its value.
    fn recv_u64(&self, code: FrontendReq) -> u64 {
        let conn = self.conn();
        let (header, fds) = conn.recv_header().expect("reply header");
        assert!(fds.is_empty());
        let h = Header::from_wire(&header);
        assert!(h.is_reply() && h.request == code as u32 && h.size == 8);
        let mut body = [0u8; 8];
        conn.recv_body_into(&mut body).expect("reply body");
        u64::from_le_bytes(body)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.conn.take();
        if let Some(t) = self.thread.take() {
            t.join().expect("server thread");
        }
    }
}

/// SET_VRING_ADDR with NEED_REPLY, as wire bytes: header and 40-byte body.
fn set_vring_addr_wire() -> ([u8; HEADER_SIZE], Vec<u8>) {
    let addr = VringAddr {
        index: 0,
        flags: 0,
        desc: 0x7f00_0000_0000,
        used: 0x7f00_0001_0000,
        avail: 0x7f00_0002_0000,
        log: 0,
    };
    let mut buf = [0u8; vhost_proto::MAX_BODY_SIZE];
    let enc = FrontendRequest::SetVringAddr(addr)
        .encode(HeaderFlags::NEED_REPLY, &mut buf)
        .expect("encode");
    assert!(enc.payload.is_empty());
    (enc.header.to_wire(), buf[..enc.body_len].to_vec())
}

/// Offset of `desc` in the SET_VRING_ADDR body.
const DESC_AT: std::ops::Range<usize> = 8..16;

/// The raw ping-pong of a `request`-byte request and a 20-byte reply, with `send`/`recv`
/// and with `sendmsg`/`recvmsg` (room for descriptors, as the transport needs).
fn bench_raw(g: &mut BenchmarkGroup<'_, WallTime>, request: usize) {
    for (name, how) in [
        ("raw_socketpair", Syscalls::SendRecv),
        ("raw_sendmsg_recvmsg", Syscalls::MsgWithControl),
    ] {
        let mut raw = RawEcho::with_syscalls(request, HEADER_SIZE + 8, how).expect("socketpair");
        g.bench_function(name, |b| {
            b.iter(|| {
                let reply = raw.round_trip().expect("raw round trip");
                assert_eq!(reply.len(), HEADER_SIZE + 8);
            })
        });
    }
}

fn bench_dispatch(c: &mut Criterion) {
    let served = Served::new();

    let mut g = c.benchmark_group("dispatch/GET_FEATURES");
    g.throughput(Throughput::Elements(1));
    let get = Header::new(FrontendReq::GetFeatures as u32, HeaderFlags::empty(), 0).to_wire();
    g.bench_function("server", |b| {
        b.iter(|| {
            served
                .conn()
                .send(black_box(&get), &[], &[], &[])
                .expect("send");
            assert_eq!(served.recv_u64(FrontendReq::GetFeatures), FEATURES);
        })
    });
    bench_raw(&mut g, HEADER_SIZE);
    g.finish();

    let mut g = c.benchmark_group("dispatch/SET_VRING_ADDR_ack");
    g.throughput(Throughput::Elements(1));
    let (header, mut body) = set_vring_addr_wire();
    let mut desc = 0x7f00_0000_0000u64;
    g.bench_function("server", |b| {
        b.iter(|| {
            desc = desc.wrapping_add(0x1000);
            body[DESC_AT].copy_from_slice(&desc.to_le_bytes());
            served.conn().send(&header, &body, &[], &[]).expect("send");
            assert_eq!(served.recv_u64(FrontendReq::SetVringAddr), 0, "ack");
            assert_eq!(served.last_desc.load(Ordering::Relaxed), desc);
        })
    });
    bench_raw(&mut g, HEADER_SIZE + 40);
    g.finish();
    drop(served);
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = dispatch;
    config = config();
    targets = bench_dispatch
}

/// The same comparisons in alternating rounds (see `benches::report::paired`).
fn paired() {
    let served = Served::new();
    let get = Header::new(FrontendReq::GetFeatures as u32, HeaderFlags::empty(), 0).to_wire();
    let (header, mut body) = set_vring_addr_wire();
    let mut desc = 0x7e00_0000_0000u64;
    for (name, how) in [
        ("raw_socketpair", Syscalls::SendRecv),
        ("raw_sendmsg_recvmsg", Syscalls::MsgWithControl),
    ] {
        let mut raw = RawEcho::with_syscalls(HEADER_SIZE, HEADER_SIZE + 8, how).expect("raw");
        let p = benches::report::paired(
            &format!("dispatch/GET_FEATURES server vs {name}"),
            31,
            20_000,
            || {
                served.conn().send(&get, &[], &[], &[]).expect("send");
                assert_eq!(served.recv_u64(FrontendReq::GetFeatures), FEATURES);
                1
            },
            || {
                assert_eq!(raw.round_trip().expect("raw").len(), HEADER_SIZE + 8);
                1
            },
        );
        println!("{p}");
        let mut raw = RawEcho::with_syscalls(HEADER_SIZE + 40, HEADER_SIZE + 8, how).expect("raw");
        let p = benches::report::paired(
            &format!("dispatch/SET_VRING_ADDR_ack server vs {name}"),
            31,
            20_000,
            || {
                desc = desc.wrapping_add(0x1000);
                body[DESC_AT].copy_from_slice(&desc.to_le_bytes());
                served.conn().send(&header, &body, &[], &[]).expect("send");
                assert_eq!(served.recv_u64(FrontendReq::SetVringAddr), 0, "ack");
                assert_eq!(served.last_desc.load(Ordering::Relaxed), desc);
                1
            },
            || {
                assert_eq!(raw.round_trip().expect("raw").len(), HEADER_SIZE + 8);
                1
            },
        );
        println!("{p}");
    }
}

fn main() {
    dispatch();
    Criterion::default().configure_from_args().final_summary();
    for group in ["dispatch/GET_FEATURES", "dispatch/SET_VRING_ADDR_ack"] {
        println!(
            "{}",
            benches::report::ratios(
                group,
                &[
                    ("server", "raw_socketpair"),
                    ("server", "raw_sendmsg_recvmsg"),
                ],
            )
        );
    }
    if !std::env::args().any(|a| ["--list", "--test", "--profile-time"].contains(&a.as_str())) {
        paired();
    }
}
