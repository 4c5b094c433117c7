//! The rate limit: requests over the budget are delayed to the next period, not dropped,
//! and the delivered rate matches the limit.

mod common;

use std::time::{Duration, Instant};

use common::*;
use vhost_device_rng::{RateLimit, RngConfig};
use vm_memory::GuestAddress;

fn limited(period_ms: u64, max_bytes: u64) -> RngConfig {
    RngConfig {
        rate_limit: Some(RateLimit {
            period: Duration::from_millis(period_ms),
            max_bytes,
        }),
        ..RngConfig::default()
    }
}

/// A daemon in process on a fresh scratch directory named `name`, limited to `max_bytes`
/// per `period_ms`.
fn limited_daemon(name: &str, period_ms: u64, max_bytes: u64) -> (Scratch, InProcess) {
    let scratch = Scratch::new(name);
    let d = InProcess::start(&limited(period_ms, max_bytes), &scratch.socket());
    (scratch, d)
}

#[test]
fn delivered_rate_stays_within_ten_percent_of_64_kib_per_100_ms_over_3_s() {
    const REQ: u32 = 4096;
    const DEPTH: usize = 16;
    let (scratch, _d) = limited_daemon("rate", 100, 64 << 10);
    let mut s = connect(&scratch.socket(), options);
    let bufs: Vec<GuestAddress> = (0..DEPTH)
        .map(|_| s.memory().alloc(u64::from(REQ), 8).unwrap())
        .collect();
    let start = Instant::now();
    let run = Duration::from_secs(3);
    for &b in &bufs {
        s.add_chain(0, &[(b, REQ, true)]).unwrap();
    }
    s.publish(0).unwrap();
    let mut bytes = 0u64;
    let mut completions = 0u64;
    while start.elapsed() < run {
        let used = s.wait_used(0, TIMEOUT).unwrap();
        // 4 KiB divides the budget: every request is filled completely, none dropped.
        assert_eq!(used.len, REQ);
        bytes += u64::from(used.len);
        completions += 1;
        let b = bufs[usize::from(used.id) % DEPTH];
        s.add_chain(0, &[(b, REQ, true)]).unwrap();
        s.publish(0).unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let rate = bytes as f64 / elapsed;
    let limit = f64::from(64u32 << 10) / 0.1;
    println!(
        "{completions} requests, {bytes} bytes in {elapsed:.2} s: {rate:.0} B/s (limit {limit:.0})"
    );
    assert!(
        (rate - limit).abs() / limit < 0.10,
        "{rate:.0} B/s against a limit of {limit:.0} B/s"
    );
}

#[test]
fn request_larger_than_the_budget_is_filled_partially_and_the_next_waits_a_period() {
    let (scratch, _d) = limited_daemon("partial", 50, 1000);
    let (mut s, buf) = session_with_buffer(&scratch.socket(), 4096);
    let mut done = Vec::new();
    for _ in 0..3 {
        let used = s.round_trip(0, &[(buf, 4096, true)], TIMEOUT).unwrap();
        assert_eq!(used.len, 1000, "a request gets at most one period's budget");
        done.push(Instant::now());
    }
    // The second request took the whole budget of its period: the third waits for the next.
    let gap = done[2] - done[1];
    assert!(
        gap >= Duration::from_millis(30),
        "third request after {gap:?}"
    );
}

#[test]
fn paused_queue_resumes_for_a_new_session_after_disconnect() {
    let (scratch, _d) = limited_daemon("pausedreconnect", 100, 512);
    {
        let (mut s, buf) = session_with_buffer(&scratch.socket(), 4096);
        // Spend the budget and leave a request waiting for the next period.
        assert_eq!(
            s.round_trip(0, &[(buf, 4096, true)], TIMEOUT).unwrap().len,
            512
        );
        s.submit(0, &[(buf, 4096, true)]).unwrap();
    }
    let (mut s, buf) = session_with_buffer(&scratch.socket(), 4096);
    let used = s.round_trip(0, &[(buf, 4096, true)], TIMEOUT).unwrap();
    assert_eq!(used.len, 512);
}
