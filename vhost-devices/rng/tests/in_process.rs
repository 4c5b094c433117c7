//! The device behind the in-process daemon, driven by the front-end client and a guest-side
//! virtqueue driver: buffer sizes, chains, hostile buffers, file sources, reconnects.

mod common;

use std::collections::HashSet;

use common::*;
use vhost_device_rng::RngConfig;
use vhost_frontend::Session;
use vm_memory::GuestAddress;

/// Guard bytes written after each buffer; the device must leave them alone.
const GUARD: usize = 16;
const GUARD_BYTE: u8 = 0xa5;

fn daemon(tag: &str, cfg: &RngConfig) -> (Scratch, InProcess) {
    let scratch = Scratch::new(tag);
    let d = InProcess::start(cfg, &scratch.socket());
    (scratch, d)
}

/// A default daemon on scratch directory `tag`, a session to it and a `len`-byte buffer.
fn served_buffer(tag: &str, len: u64) -> (Scratch, InProcess, Session, GuestAddress) {
    let (scratch, d) = daemon(tag, &RngConfig::default());
    let (s, buf) = session_with_buffer(&scratch.socket(), len);
    (scratch, d, s, buf)
}

#[test]
fn buffers_of_1_byte_to_64_kib_come_back_filled_with_their_length() {
    for_each_layout(|| {
        let (scratch, _d) = daemon("sizes", &RngConfig::default());
        let mut s = connect(&scratch.socket(), options);
        for len in [1usize, 2, 15, 16, 17, 511, 4096, 4097, 32768, 65536] {
            let buf = s.memory().alloc((len + GUARD) as u64, 8).unwrap();
            fill_guest(&s, buf, len, 0);
            fill_guest(&s, GuestAddress(buf.0 + len as u64), GUARD, GUARD_BYTE);
            let used = s
                .round_trip(0, &[(buf, len as u32, true)], TIMEOUT)
                .unwrap();
            assert_eq!(used.len as usize, len, "used length of a {len}-byte buffer");
            let got = read_guest(&s, buf, len + GUARD);
            if len >= 16 {
                assert!(got[..len].iter().any(|&b| b != 0), "{len} bytes all zero");
            }
            assert!(
                got[len..].iter().all(|&b| b == GUARD_BYTE),
                "wrote past a {len}-byte buffer"
            );
        }
    });
}

#[test]
fn sixteen_requests_in_flight_all_complete_with_distinct_data() {
    for_each_layout(|| {
        let (scratch, _d) = daemon("inflight", &RngConfig::default());
        let mut s = connect(&scratch.socket(), options);
        let bufs: Vec<GuestAddress> = (0..16).map(|_| s.memory().alloc(256, 8).unwrap()).collect();
        let mut heads = HashSet::new();
        for &b in &bufs {
            heads.insert(s.add_chain(0, &[(b, 256, true)]).unwrap());
        }
        s.publish(0).unwrap();
        for _ in 0..bufs.len() {
            let used = s.wait_used(0, TIMEOUT).unwrap();
            assert_eq!(used.len, 256);
            assert!(
                heads.remove(&used.id),
                "unexpected or repeated head {}",
                used.id
            );
        }
        assert!(heads.is_empty());
        let contents: HashSet<Vec<u8>> = bufs.iter().map(|&b| read_guest(&s, b, 256)).collect();
        assert_eq!(contents.len(), bufs.len(), "two buffers got the same bytes");
    });
}

#[test]
fn chain_split_over_three_writable_descriptors_fills_all_of_them() {
    for_each_layout(|| {
        let (scratch, _d) = daemon("split", &RngConfig::default());
        let mut s = connect(&scratch.socket(), options);
        let parts = [(100u32, 0u8), (5000, 0), (64, 0)];
        let addrs: Vec<GuestAddress> = parts
            .iter()
            .map(|&(len, _)| s.memory().alloc(u64::from(len), 8).unwrap())
            .collect();
        let chain: Vec<_> = addrs
            .iter()
            .zip(parts)
            .map(|(&a, (len, _))| (a, len, true))
            .collect();
        let used = s.round_trip(0, &chain, TIMEOUT).unwrap();
        assert_eq!(used.len, 100 + 5000 + 64);
        for (&a, (len, _)) in addrs.iter().zip(parts) {
            let got = read_guest(&s, a, len as usize);
            assert!(got.iter().any(|&b| b != 0), "a {len}-byte part stayed zero");
        }
    });
}

#[test]
fn read_only_buffer_gets_length_zero_and_the_next_request_is_served() {
    for_each_layout(|| {
        let (_scratch, _d, mut s, ro) = served_buffer("readonly", 64);
        fill_guest(&s, ro, 64, 0x77);
        let used = s.round_trip(0, &[(ro, 64, false)], TIMEOUT).unwrap();
        assert_eq!(used.len, 0);
        assert!(
            read_guest(&s, ro, 64).iter().all(|&b| b == 0x77),
            "read-only buffer written"
        );
        // A readable buffer in front of a writable one is skipped, the writable one filled.
        let w = s.memory().alloc(64, 8).unwrap();
        let used = s
            .round_trip(0, &[(ro, 64, false), (w, 64, true)], TIMEOUT)
            .unwrap();
        assert_eq!(used.len, 64);
        assert!(read_guest(&s, ro, 64).iter().all(|&b| b == 0x77));
        assert!(read_guest(&s, w, 64).iter().any(|&b| b != 0));
    });
}

#[test]
fn buffer_outside_guest_memory_ends_the_chain_and_the_queue_keeps_serving() {
    for_each_layout(|| {
        let (_scratch, _d, mut s, w) = served_buffer("outside", 64);
        let outside = GuestAddress(0x10_0000_0000);
        let used = s.round_trip(0, &[(outside, 64, true)], TIMEOUT).unwrap();
        assert_eq!(used.len, 0);
        let used = s
            .round_trip(
                0,
                &[(w, 64, true), (outside, 64, true), (w, 64, true)],
                TIMEOUT,
            )
            .unwrap();
        assert_eq!(used.len, 64, "the chain ends at the bad buffer");
        // A buffer that starts inside guest memory and runs past its end (16 MiB) is refused
        // whole: none of its bytes are written.
        let end = GuestAddress((16 << 20) - 32);
        let used = s.round_trip(0, &[(end, 64, true)], TIMEOUT).unwrap();
        assert_eq!(used.len, 0);
        let used = s.round_trip(0, &[(w, 64, true)], TIMEOUT).unwrap();
        assert_eq!(used.len, 64);
    });
}

#[test]
fn source_file_bytes_reach_the_guest_exactly_and_in_order() {
    for_each_layout(|| {
        let scratch = Scratch::new("source");
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let cfg = RngConfig {
            source: Some(scratch.file("entropy.bin", &bytes)),
            ..RngConfig::default()
        };
        let _d = InProcess::start(&cfg, &scratch.socket());
        let (mut s, buf) = session_with_buffer(&scratch.socket(), 4096);
        let mut got = Vec::new();
        for expected in [4096u32, 4096, 10_000 - 8192] {
            let used = s.round_trip(0, &[(buf, 4096, true)], TIMEOUT).unwrap();
            assert_eq!(used.len, expected);
            got.extend(read_guest(&s, buf, used.len as usize));
        }
        assert_eq!(got, bytes);
        let used = s.round_trip(0, &[(buf, 4096, true)], TIMEOUT).unwrap();
        assert_eq!(used.len, 0, "the file is exhausted");
    });
}

#[test]
fn second_session_after_disconnect_gets_data() {
    for_each_layout(|| {
        let (scratch, _d) = daemon("reconnect", &RngConfig::default());
        for round in 0..2 {
            let (mut s, buf) = session_with_buffer(&scratch.socket(), 1024);
            for _ in 0..10 {
                let used = s.round_trip(0, &[(buf, 1024, true)], TIMEOUT).unwrap();
                assert_eq!(used.len, 1024, "session {round}");
            }
            assert!(read_guest(&s, buf, 1024).iter().any(|&b| b != 0));
        }
    });
}

#[test]
fn queue_stopped_and_restarted_keeps_serving() {
    for_each_layout(|| {
        let (_scratch, _d, mut s, buf) = served_buffer("restart", 512);
        for _ in 0..3 {
            assert_eq!(
                s.round_trip(0, &[(buf, 512, true)], TIMEOUT).unwrap().len,
                512
            );
        }
        let base = s.stop_queue(0).unwrap();
        // The next available index (split), or position 3 with both wrap counters 1 in
        // the low and high halves (packed).
        let want = match s.driver(0).unwrap().is_packed() {
            false => 3,
            true => 0x8003_8003,
        };
        assert_eq!(base, want);
        s.restart_queue(0, base).unwrap();
        assert_eq!(
            s.round_trip(0, &[(buf, 512, true)], TIMEOUT).unwrap().len,
            512
        );
    });
}
