//! 4 KiB requests per second at queue depth 1 and 16 against the in-process daemon. Ignored
//! by default; run with
//! `cargo test --release -p vhost-device-rng --test rps -- --ignored --nocapture`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use vhost_device_rng::RngConfig;
use vm_memory::GuestAddress;

const REQ: u32 = 4096;
const RUN: Duration = Duration::from_secs(2);

fn run(depth: usize) -> f64 {
    let scratch = Scratch::new(&format!("rps{depth}"));
    let _d = InProcess::start(&RngConfig::default(), &scratch.socket());
    let mut s = connect(&scratch.socket(), options);
    let bufs: Vec<GuestAddress> = (0..depth)
        .map(|_| s.memory().alloc(u64::from(REQ), 8).unwrap())
        .collect();
    // Head ids map to buffers through this table (no allocation in the loop).
    let mut buf_of = vec![GuestAddress(0); 1024];
    for &b in &bufs {
        let head = s.add_chain(0, &[(b, REQ, true)]).unwrap();
        buf_of[usize::from(head)] = b;
    }
    s.publish(0).unwrap();
    let start = Instant::now();
    let mut done = 0u64;
    // A buffer zeroed before it went back to the device; checked when it returns, so a
    // fast wrong answer cannot pass.
    let mut marked: Option<u16> = None;
    let mut checked = 0u32;
    while start.elapsed() < RUN {
        let used = s.wait_used(0, TIMEOUT).unwrap();
        assert_eq!(used.len, REQ);
        let b = buf_of[usize::from(used.id)];
        if marked == Some(used.id) {
            assert!(read_guest(&s, b, REQ as usize).iter().any(|&x| x != 0));
            marked = None;
            checked += 1;
        }
        done += 1;
        let zero = marked.is_none() && done % 1024 == 0;
        if zero {
            fill_guest(&s, b, REQ as usize, 0);
        }
        let head = s.add_chain(0, &[(b, REQ, true)]).unwrap();
        buf_of[usize::from(head)] = b;
        if zero {
            marked = Some(head);
        }
        s.publish(0).unwrap();
    }
    assert!(checked > 0 || done < 2048, "no buffer was checked");
    let rps = done as f64 / start.elapsed().as_secs_f64();
    for _ in 0..depth {
        s.wait_used(0, TIMEOUT).unwrap();
    }
    rps
}

#[test]
#[ignore = "benchmark"]
fn requests_of_4_kib_per_second_at_depth_1_and_16() {
    vhost_test_support::bench_at_depths_1_and_16("4 KiB entropy requests", "requests/s", run);
}
