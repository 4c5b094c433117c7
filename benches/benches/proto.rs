//! vhost-proto: decoding (header check + body decode) and encoding of representative
//! messages. Each iteration checks its result, so a fast wrong answer cannot pass.

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use vhost_proto::*;

/// A message as it comes off the socket: header bytes, body bytes, descriptors attached.
struct Wire {
    header: [u8; HEADER_SIZE],
    body: Vec<u8>,
    nfds: usize,
}

fn wire_of(msg: &FrontendRequest<'_>) -> Wire {
    let mut buf = [0u8; MAX_BODY_SIZE];
    let enc = msg.encode(HeaderFlags::empty(), &mut buf).unwrap();
    let mut body = buf[..enc.body_len].to_vec();
    body.extend_from_slice(enc.payload);
    Wire {
        header: enc.header.to_wire(),
        body,
        nfds: msg.fd_count(),
    }
}

/// What a server does with a message: header check, then body decode.
fn decode(w: &Wire) -> FrontendRequest<'_> {
    let h = Header::from_wire(&w.header);
    let req = h.check_frontend_request().unwrap();
    FrontendRequest::decode(req, &w.body, w.nfds, DecodeContext::default()).unwrap()
}

fn regions() -> Vec<MemoryRegion> {
    (0..8u64)
        .map(|i| MemoryRegion {
            guest_phys_addr: i << 32,
            memory_size: 0x1000_0000,
            user_addr: 0x7f00_0000_0000 + (i << 32),
            mmap_offset: i * 0x1000,
        })
        .collect()
}

fn bench_requests(c: &mut Criterion) {
    let config_bytes: Vec<u8> = (0..=255u8).collect();
    let addr = VringAddr {
        index: 1,
        flags: 0,
        desc: 0x7f00_0000_1000,
        used: 0x7f00_0000_2000,
        avail: 0x7f00_0000_3000,
        log: 0,
    };
    let table = MemTable::new(&regions()).unwrap();
    let get_config = FrontendRequest::GetConfig(Config {
        offset: 0,
        flags: 0,
        payload: &config_bytes,
    });
    let cases: Vec<(&str, FrontendRequest<'_>)> = vec![
        ("GET_FEATURES", FrontendRequest::GetFeatures),
        ("SET_VRING_ADDR", FrontendRequest::SetVringAddr(addr)),
        ("SET_MEM_TABLE_8", FrontendRequest::SetMemTable(table)),
        ("GET_CONFIG_256", get_config),
    ];

    let mut g = c.benchmark_group("proto/decode");
    for (name, msg) in &cases {
        let w = wire_of(msg);
        g.throughput(Throughput::Bytes((HEADER_SIZE + w.body.len()) as u64));
        g.bench_function(*name, |b| {
            b.iter(|| {
                let got = decode(black_box(&w));
                assert_eq!(&got, msg);
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("proto/encode");
    for (name, msg) in &cases {
        let w = wire_of(msg);
        g.throughput(Throughput::Bytes((HEADER_SIZE + w.body.len()) as u64));
        let mut buf = [0u8; MAX_BODY_SIZE];
        g.bench_function(*name, |b| {
            b.iter(|| {
                let enc = black_box(msg)
                    .encode(HeaderFlags::empty(), &mut buf)
                    .unwrap();
                assert_eq!(enc.header.to_wire(), w.header);
                // The payload is borrowed from the message itself: its length is what can
                // go wrong.
                assert_eq!(enc.body_len + enc.payload.len(), w.body.len());
                assert_eq!(&buf[..enc.body_len], &w.body[..enc.body_len]);
            })
        });
    }
    g.finish();
}

fn bench_replies(c: &mut Criterion) {
    let config_bytes: Vec<u8> = (0..=255u8).rev().collect();
    let reply = FrontendReply::Config(Config {
        offset: 0,
        flags: 0,
        payload: &config_bytes,
    });
    let req = FrontendReq::GetConfig;
    let mut buf = [0u8; MAX_BODY_SIZE];
    let enc = reply.encode(req, &mut buf).unwrap();
    let header = enc.header.to_wire();
    let mut body = buf[..enc.body_len].to_vec();
    body.extend_from_slice(enc.payload);
    let size = (HEADER_SIZE + body.len()) as u64;

    let mut g = c.benchmark_group("proto/reply");
    g.throughput(Throughput::Bytes(size));
    g.bench_function("decode GET_CONFIG_256", |b| {
        b.iter(|| {
            let h = Header::from_wire(black_box(&header));
            h.check_reply(MessageKind::Frontend(req)).unwrap();
            let got =
                FrontendReply::decode(req, ReplyShape::Config, &body, 0, DecodeContext::default())
                    .unwrap();
            assert_eq!(got, reply);
        })
    });
    g.bench_function("encode GET_CONFIG_256", |b| {
        let mut out = [0u8; MAX_BODY_SIZE];
        b.iter(|| {
            let enc = black_box(&reply).encode(req, &mut out).unwrap();
            assert_eq!(enc.header.to_wire(), header);
            assert_eq!(enc.payload, &body[enc.body_len..]);
            assert_eq!(&out[..enc.body_len], &body[..enc.body_len]);
        })
    });
    g.throughput(Throughput::Bytes((HEADER_SIZE + 8) as u64));
    g.bench_function("encode u64 GET_FEATURES", |b| {
        let mut out = [0u8; 8];
        b.iter(|| {
            let h = encode_u64_reply(FrontendReq::GetFeatures, black_box(0x1_7500_7e46), &mut out)
                .unwrap();
            assert_eq!(h.size, 8);
            assert_eq!(u64::from_ne_bytes(out), 0x1_7500_7e46);
        })
    });
    g.finish();
}

criterion_group!(benches, bench_requests, bench_replies);
criterion_main!(benches);
