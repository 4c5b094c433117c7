//! What a device costs in threads when one process serves many ([`MultiDaemon`]): a
//! connected device whose rings are not running costs none; a running ring starts its
//! worker and stopping the ring stops it. Alone in its test binary, so the threads counted
//! are this test's.

#![cfg(target_os = "linux")]

mod runtime_support;

use std::time::Duration;

use runtime_support::*;
use vhost_backend::runtime::{DeviceBackend, MultiDaemon};
use vhost_frontend::Frontend;
use vhost_transport::{Connection, FrontendChannel, Listener};

const DEVICES: usize = 24;
const CONTROL_THREADS: usize = 3;

/// Threads of this process whose name starts with `prefix`.
fn threads(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[test]
fn connected_devices_without_running_rings_cost_no_thread() {
    let dir = std::env::temp_dir().join(format!("multi-idle-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut d = MultiDaemon::new()
        .expect("daemon")
        .with_control_threads(CONTROL_THREADS);
    for i in 0..DEVICES {
        let path = dir.join(format!("s{i}"));
        let (dev, _) = PatternDevice::new(1);
        d.add(
            path.display().to_string(),
            Listener::bind(&path, None).expect("bind"),
            DeviceBackend::new(dev).expect("backend"),
        );
    }
    let stop = d.stop_handle();
    let host = std::thread::spawn(move || d.run().expect("run"));
    // Every device connected, negotiated and given its memory; no ring started.
    let mut fes: Vec<Frontend> = (0..DEVICES)
        .map(|i| {
            let c =
                Connection::<FrontendChannel>::connect(dir.join(format!("s{i}"))).expect("connect");
            let mut fe = Frontend::new(c);
            fe.set_read_timeout(Some(TIMEOUT)).expect("timeout");
            handshake(&mut fe, true, true);
            fe
        })
        .collect();
    let mems: Vec<_> = fes
        .iter_mut()
        .map(|fe| {
            let mem = two_region_memory();
            send_mem_table(fe, &mem);
            mem
        })
        .collect();
    assert_eq!(
        threads("vhost-worker"),
        0,
        "an idle device started a worker"
    );
    let control = threads("vhost-control");
    assert!(
        (1..=CONTROL_THREADS).contains(&control),
        "{control} control threads for {DEVICES} devices"
    );
    // Two devices start a ring: two workers. Stopping the rings stops them.
    let mut queues = Vec::new();
    for i in [3, 7] {
        let mut q = GuestQueue::new(&mems[i], 0, true);
        q.start(&mut fes[i], &mems[i], 0, true);
        q.round_trip(&mems[i], 0x4000_0000, 0x4000_4000, 128);
        queues.push(q);
    }
    assert_eq!(threads("vhost-worker"), 2);
    for i in [3, 7] {
        fes[i].get_vring_base(0).expect("GET_VRING_BASE");
    }
    let deadline = std::time::Instant::now() + TIMEOUT;
    while threads("vhost-worker") > 0 {
        assert!(std::time::Instant::now() < deadline, "workers left running");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(threads("vhost-control") <= CONTROL_THREADS);
    drop(fes);
    stop.stop();
    host.join().expect("daemon");
    // Joined before `run` returned; the kernel may list an exited task a moment longer.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while threads("vhost-control") > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "control threads left after the stop"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
