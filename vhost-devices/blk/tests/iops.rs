//! 4 KiB random-read IOPS at queue depth 1 and 16 against the in-process daemon. Ignored by
//! default; run with
//! `cargo test --release -p vhost-device-blk --test iops -- --ignored --nocapture`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use vhost_device_blk::BlkConfig;
use vhost_frontend::devices::blk::{BlkRequest, BlkRequests, S_OK};

const IMAGE: usize = 64 << 20;
const RUN: Duration = Duration::from_secs(2);

fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn run(depth: usize) -> f64 {
    let scratch = Scratch::new(&format!("iops{depth}"));
    let cfg = BlkConfig::new(scratch.image(IMAGE));
    let _d = InProcess::start(&cfg, &scratch.socket());
    let mut s = connect(&scratch.socket(), || options(1));
    let mut reqs = BlkRequests::new(&s, 0, depth, 4096).unwrap();
    let blocks = (IMAGE / 4096) as u64;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut sectors = vec![0u64; depth];
    for _ in 0..depth {
        let sector = next(&mut rng) % blocks * 8;
        let slot = reqs.submit(&mut s, BlkRequest::read(sector, 4096)).unwrap();
        sectors[slot] = sector;
    }
    let start = Instant::now();
    let mut done = 0u64;
    let mut got = [0u8; 4096];
    while start.elapsed() < RUN {
        let c = reqs.complete(&mut s, TIMEOUT).unwrap();
        assert_eq!(c.status, S_OK);
        if done % 1024 == 0 {
            // Check the data now and then: a fast wrong answer must not pass.
            reqs.read_data(&s, c.slot, &mut got).unwrap();
            let at = sectors[c.slot] as usize * 512;
            assert!(got.iter().enumerate().all(|(i, &b)| b == pattern(at + i)));
        }
        done += 1;
        let sector = next(&mut rng) % blocks * 8;
        let slot = reqs.submit(&mut s, BlkRequest::read(sector, 4096)).unwrap();
        sectors[slot] = sector;
    }
    let iops = done as f64 / start.elapsed().as_secs_f64();
    for _ in 0..depth {
        reqs.complete(&mut s, TIMEOUT).unwrap();
    }
    iops
}

#[test]
#[ignore = "benchmark"]
fn random_read_4k_iops_at_depth_1_and_16() {
    vhost_test_support::bench_at_depths_1_and_16("4 KiB random read", "IOPS", run);
}
