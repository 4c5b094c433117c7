//! Connect, handshake, run a request and disconnect 200 times against one daemon: no
//! descriptor or thread may outlive its session. Alone in this test binary so that the
//! process-wide counts in /proc/self are not disturbed by other tests.

#![cfg(unix)]

mod runtime_support;

use std::time::{Duration, Instant};

use runtime_support::*;
use vhost_backend::runtime::{Daemon, DeviceBackend};
use vhost_frontend::Frontend;
use vhost_transport::Listener;

const DATA: u64 = 0x4000_0000;

fn one_session(path: &std::path::Path, with_ring: bool) {
    let mut fe = Frontend::connect(path).expect("connect");
    fe.set_read_timeout(Some(TIMEOUT)).unwrap();
    handshake(&mut fe, true, true);
    if with_ring {
        let mem = two_region_memory();
        send_mem_table(&mut fe, &mem);
        let mut q = GuestQueue::new(&mem, 0, true);
        q.start(&mut fe, &mem, 0, true);
        q.round_trip(&mem, DATA, DATA + 0x1000, 64);
    }
}

/// Waits until the daemon has finished the last session (counts back at `want`).
fn settle(want: (usize, usize)) -> (usize, usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = (count_dir("/proc/self/fd"), count_dir("/proc/self/task"));
        if now == want || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn two_hundred_sessions_leave_no_descriptor_or_thread_behind() {
    let scratch = vhost_test_support::Scratch::new("rt-cycles");
    let path = scratch.socket();
    let (dev, counters) = PatternDevice::new(2);
    let backend = DeviceBackend::new(dev).unwrap();
    let mut daemon = Daemon::new(Listener::bind(&path, None).unwrap(), backend).unwrap();
    let stop = daemon.stop_handle();
    let t = std::thread::spawn(move || daemon.run().expect("daemon"));

    // Warm up (lazily created process-wide state), then take the baseline.
    one_session(&path, true);
    one_session(&path, false);
    std::thread::sleep(Duration::from_millis(100));
    let base = (count_dir("/proc/self/fd"), count_dir("/proc/self/task"));
    for i in 0..200 {
        one_session(&path, i % 2 == 0);
    }
    let after = settle(base);
    assert_eq!(after, base, "(fds, threads) before and after 200 sessions");
    assert_eq!(
        counters.chains.load(std::sync::atomic::Ordering::Relaxed),
        101
    );
    stop.stop();
    t.join().unwrap();
    drop(scratch);
}
