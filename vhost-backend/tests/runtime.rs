//! Whole sessions against `DeviceBackend`: the front-end client and guest-side virtqueue
//! drivers run real requests through the server and the runtime's workers.

#![cfg(unix)]

mod runtime_support;

use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use runtime_support::*;
use vhost_backend::runtime::{
    Daemon, DeviceBackend, MAX_MEM_SLOTS, RUNTIME_FEATURES, UNSUPPORTED_FEATURES,
};
use vhost_frontend::{Frontend, GuestMemory, RegionSpec, VirtqueueDriver};
use vhost_proto::{virtio, MemoryRegion, VringAddr};
use vhost_transport::Listener;
use vm_memory::{Bytes, GuestAddress};

const DATA: u64 = 0x4000_0000;

fn backend(queues: usize) -> (DeviceBackend<PatternDevice>, std::sync::Arc<Counters>) {
    let (dev, counters) = PatternDevice::new(queues);
    (DeviceBackend::new(dev).expect("backend"), counters)
}

/// A pattern back-end of `queues` queues served on its own thread, and its counters.
fn served(
    queues: usize,
) -> (
    Frontend,
    std::thread::JoinHandle<DeviceBackend<PatternDevice>>,
    std::sync::Arc<Counters>,
) {
    let (b, counters) = backend(queues);
    let (fe, t) = serve_in_thread(b);
    (fe, t, counters)
}

#[test]
fn offer_adds_runtime_features_and_strips_unsupported_ones() {
    let (b, _) = backend(1);
    assert_eq!(b.offered_features() & RUNTIME_FEATURES, RUNTIME_FEATURES);
    assert_eq!(b.offered_features() & UNSUPPORTED_FEATURES, 0);
    assert!(b.offered_protocol_features().contains(all_protocol()));
}

#[test]
fn two_regions_with_user_addresses_unlike_guest_physical_serve_requests() {
    for_each_layout(|| {
        let (mut fe, t, counters) = served(1);
        let (mem, mut q) = start_queue0(&mut fe, true);
        for i in 0..50 {
            q.round_trip(&mem, DATA, DATA + 0x1000 + (i % 8) * 0x800, 0x800);
        }
        assert_eq!(counters.chains.load(Ordering::Relaxed), 50);
        assert_eq!(counters.bytes_read.load(Ordering::Relaxed), 50 * 16);
        assert_eq!(
            fe.get_vring_base(0).expect("GET_VRING_BASE"),
            base_after(50)
        );
        drop(fe);
        let b = t.join().expect("server thread");
        assert_eq!(b.running_workers(), 0);
        assert!(b.memory().is_empty(), "disconnect drops the mappings");
    });
}

#[test]
fn ring_address_outside_every_region_is_refused() {
    let (mut fe, _t, _) = served(1);
    handshake(&mut fe, true, true);
    let mem = two_region_memory();
    send_mem_table(&mut fe, &mem);
    fe.set_vring_num(0, 64).unwrap();
    // The guest-physical address instead of the front-end virtual one: not in the table.
    let e = fe
        .set_vring_addr(&VringAddr {
            index: 0,
            flags: 0,
            desc: 0x10_0000,
            used: 0x10_1000,
            avail: 0x10_2000,
            log: 0,
        })
        .unwrap_err();
    assert!(e.nack_status().is_some(), "{e}");
    // The session goes on.
    assert_eq!(fe.get_queue_num().unwrap(), 1);
}

#[test]
fn mem_table_replaced_and_region_added_while_ring_runs_keeps_serving() {
    for_each_layout(|| {
        let (mut fe, _t, _) = served(1);
        let (mem, mut q) = start_queue0(&mut fe, true);
        q.round_trip(&mem, DATA, DATA + 0x1000, 256);
        // The same memory again (hot-plug style re-send) while the ring runs.
        send_mem_table(&mut fe, &mem);
        q.round_trip(&mem, DATA, DATA + 0x2000, 256);
        // A new region from another memfd, added while the ring runs; a buffer in it is used.
        let extra = GuestMemory::new(&[RegionSpec {
            guest_phys_addr: 0x8000_0000,
            size: 0x1_0000,
            user_addr: 0x6000_0000_0000,
        }])
        .unwrap();
        let r = regions(&extra)[0];
        fe.add_mem_reg(&r, extra.fd()).expect("ADD_MEM_REG");
        extra
            .mem()
            .write_slice(&[0u8; 128], GuestAddress(0x8000_0000))
            .unwrap();
        let head = q.submit((DATA, 16), (0x8000_0000, 128));
        let used = q.wait_used();
        assert_eq!((used.id, used.len), (head, 128));
        let mut got = [0u8; 128];
        extra
            .mem()
            .read_slice(&mut got, GuestAddress(0x8000_0000))
            .unwrap();
        assert!(got.iter().all(|&b| b == pattern(0)));
        // Removed again: a buffer there now fails (used length 0), the queue keeps going.
        fe.rem_mem_reg(&r).expect("REM_MEM_REG");
        q.submit((DATA, 16), (0x8000_0000, 128));
        assert_eq!(q.wait_used().len, 0);
        q.round_trip(&mem, DATA, DATA + 0x3000, 64);
    });
}

#[test]
fn region_past_end_of_file_is_nacked_and_session_continues() {
    let (mut fe, _t, _) = served(1);
    handshake(&mut fe, true, true);
    assert_eq!(fe.get_max_mem_slots().unwrap(), MAX_MEM_SLOTS as u64);
    let mem = GuestMemory::single(0x1_0000).unwrap();
    let mut r = regions(&mem)[0];
    r.memory_size = 0x10_0000;
    let e = fe.add_mem_reg(&r, mem.fd()).unwrap_err();
    assert!(e.nack_status().is_some(), "{e}");
    r.memory_size = 0x1_0000;
    fe.add_mem_reg(&r, mem.fd())
        .expect("a region inside its file");
}

#[test]
fn kick_before_enable_is_processed_when_ring_is_enabled() {
    for_each_layout(|| {
        let (mut fe, _t, counters) = served(1);
        handshake(&mut fe, true, true);
        let mem = two_region_memory();
        send_mem_table(&mut fe, &mem);
        let mut q = GuestQueue::new(&mem, 0, true);
        q.start(&mut fe, &mem, 0, false);
        let head = q.submit((DATA, 16), (DATA + 0x1000, 64));
        q.driver.kick(&q.kick).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            counters.chains.load(Ordering::Relaxed),
            0,
            "disabled ring ran"
        );
        assert!(q.driver.pop_used().unwrap().is_none());
        fe.set_vring_enable(0, true).unwrap();
        let used = q.wait_used();
        assert_eq!((used.id, used.len), (head, 64));
    });
}

#[test]
fn disabled_then_reenabled_ring_processes_chains_queued_meanwhile() {
    for_each_layout(|| {
        let (mut fe, _t, _) = served(1);
        let (mem, mut q) = start_queue0(&mut fe, false);
        q.round_trip(&mem, DATA, DATA + 0x1000, 64);
        fe.set_vring_enable(0, false).unwrap();
        let head = q.submit((DATA, 16), (DATA + 0x2000, 64));
        std::thread::sleep(Duration::from_millis(50));
        assert!(q.driver.pop_used().unwrap().is_none());
        fe.set_vring_enable(0, true).unwrap();
        assert_eq!(q.wait_used().id, head);
    });
}

#[test]
fn frontend_without_protocol_features_gets_rings_enabled_at_kick() {
    for_each_layout(|| {
        let (mut fe, _t, _) = served(1);
        let acked = handshake(&mut fe, false, true);
        assert_eq!(acked & virtio::bit(virtio::PROTOCOL_FEATURES), 0);
        let mem = two_region_memory();
        send_mem_table(&mut fe, &mem);
        let mut q = GuestQueue::new(&mem, 0, true);
        q.start(&mut fe, &mem, 0, false);
        q.round_trip(&mem, DATA, DATA + 0x1000, 128);
        // A second SET_VRING_KICK (new eventfd) must not disable the ring.
        let kick2 =
            vmm_sys_util::eventfd::EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap();
        fe.set_vring_kick(0, Some(bfd(&kick2))).unwrap();
        q.kick = kick2;
        q.round_trip(&mem, DATA, DATA + 0x2000, 128);
    });
}

#[test]
fn get_vring_base_then_set_vring_base_resumes_without_loss() {
    for_each_layout(|| {
        let (mut fe, _t, counters) = served(1);
        let (mem, mut q) = start_queue0(&mut fe, true);
        for i in 0..10 {
            q.round_trip(&mem, DATA, DATA + 0x1000 * (i + 1), 32);
        }
        fe.set_vring_enable(0, false).unwrap();
        let base = fe.get_vring_base(0).expect("GET_VRING_BASE");
        assert_eq!(base, q.driver.vring_base());
        // Chains published while the ring is stopped are not touched...
        let heads: Vec<u16> = (0..5)
            .map(|i| q.submit((DATA, 16), (DATA + 0x10_000 + i * 0x100, 64)))
            .collect();
        q.driver.kick(&q.kick).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(counters.chains.load(Ordering::Relaxed), 10);
        // ...and all of them are served after the restart at the returned base.
        q.start(&mut fe, &mem, base, true);
        let mut got: Vec<u16> = (0..5).map(|_| q.wait_used().id).collect();
        got.sort_unstable();
        let mut want = heads.clone();
        want.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(fe.get_vring_base(0).unwrap(), q.driver.vring_base());
        assert_ne!(q.driver.vring_base(), base);
    });
}

#[test]
fn restart_reads_used_index_from_guest_memory() {
    // After a back-end restart the front-end starts the ring at the used index it read from
    // guest memory; the back-end must not assume used == base.
    let (mut fe, _t, _) = served(1);
    handshake(&mut fe, true, true);
    let mem = two_region_memory();
    send_mem_table(&mut fe, &mem);
    let mut q = GuestQueue::new(&mem, 0, true);
    q.driver.start_at(7, 3).unwrap();
    // Four chains were "in flight" at 3..7 and are lost to this driver's bookkeeping; the
    // next chain goes to avail 7 and must come back at used slot 3 — the used index read
    // from the ring, not the base.
    q.start(&mut fe, &mem, 7, true);
    let used_idx_addr = GuestAddress(q.driver.used_ring().0 + 2);
    q.submit((DATA, 16), (DATA + 0x1000, 16));
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let idx: u16 = mem.mem().read_obj(used_idx_addr).unwrap();
        if idx != 3 {
            assert_eq!(idx, 4);
            break;
        }
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn event_idx_on_and_off_both_serve_and_event_idx_suppresses_unwanted_calls() {
    for_each_layout(|| {
        for event_idx in [false, true] {
            let (mut fe, _t, _) = served(1);
            handshake(&mut fe, true, event_idx);
            let mem = two_region_memory();
            send_mem_table(&mut fe, &mem);
            let mut q = GuestQueue::new(&mem, 0, event_idx);
            q.start(&mut fe, &mem, 0, true);
            for i in 0..100 {
                q.round_trip(&mem, DATA, DATA + 0x1000 + (i % 16) * 0x100, 0x100);
            }
            if event_idx {
                // The driver asks for no call: the device completes the chain without one.
                while q.call.read().is_ok() {}
                q.driver.enable_calls(false).unwrap();
                let head = q.submit((DATA, 16), (DATA + 0x1000, 16));
                let deadline = std::time::Instant::now() + TIMEOUT;
                let used = loop {
                    if let Some(u) = q.driver.pop_used().unwrap() {
                        break u;
                    }
                    assert!(std::time::Instant::now() < deadline);
                    std::thread::sleep(Duration::from_millis(2));
                };
                assert_eq!(used.id, head);
                assert!(
                    !VirtqueueDriver::wait_call(&q.call, Duration::from_millis(100)).unwrap(),
                    "call signalled although used_event asked for none"
                );
            } else {
                // Without EVENT_IDX every completion is signalled (the driver never set
                // NO_INTERRUPT).
                for i in 0..5 {
                    while q.call.read().is_ok() {}
                    let head = q.submit((DATA, 16), (DATA + 0x1000, 16));
                    assert!(
                        VirtqueueDriver::wait_call(&q.call, TIMEOUT).unwrap(),
                        "completion {i}: no call"
                    );
                    assert_eq!(q.driver.pop_used().unwrap().map(|u| u.id), Some(head));
                }
            }
        }
    });
}

#[test]
fn four_queues_run_concurrently_each_with_its_data() {
    for_each_layout(|| {
        let (mut fe, _t, counters) = served(4);
        handshake(&mut fe, true, true);
        assert_eq!(fe.get_queue_num().unwrap(), 4);
        let mem = two_region_memory();
        send_mem_table(&mut fe, &mem);
        let mut queues: Vec<GuestQueue> = (0..4).map(|i| GuestQueue::new(&mem, i, true)).collect();
        for q in &queues {
            q.start(&mut fe, &mem, 0, true);
        }
        std::thread::scope(|s| {
            for q in &mut queues {
                let mem = &mem;
                s.spawn(move || {
                    let base = DATA + 0x2_0000 * u64::from(q.index + 1);
                    for i in 0..100 {
                        q.round_trip(mem, DATA, base + (i % 8) * 0x1000, 0x1000);
                    }
                });
            }
        });
        assert_eq!(counters.chains.load(Ordering::Relaxed), 400);
        for i in 0..4 {
            assert_eq!(fe.get_vring_base(i).unwrap(), base_after(100));
        }
    });
}

#[test]
fn device_started_twice_with_new_rings_serves_both_times() {
    for_each_layout(|| {
        // Firmware start, stop, then the OS start with new ring addresses and SET_FEATURES twice.
        let (mut fe, _t, _) = served(1);
        let (mem, mut q) = start_queue0(&mut fe, false);
        q.round_trip(&mem, DATA, DATA + 0x1000, 64);
        fe.set_vring_enable(0, false).unwrap();
        assert_eq!(fe.get_vring_base(0).unwrap(), base_after(1));
        let features = for_layout(fe.get_features().unwrap());
        fe.set_features(features).unwrap();
        fe.set_features(features).unwrap();
        let mut q2 = GuestQueue::new(&mem, 0, true);
        q2.start(&mut fe, &mem, 0, true);
        for i in 0..20 {
            q2.round_trip(&mem, DATA, DATA + 0x1000 + i * 0x100, 0x100);
        }
    });
}

#[test]
fn kick_without_fd_polls_the_ring() {
    for_each_layout(|| {
        let (mut fe, _t, _) = served(1);
        let (_mem, mut q) = start_queue0(&mut fe, true);
        fe.set_vring_kick(0, None).expect("SET_VRING_KICK NOFD");
        for i in 0..5 {
            let head = q
                .driver
                .add_chain(&[(GuestAddress(DATA + 0x1000 * i), 64, true)])
                .unwrap();
            q.driver.publish().unwrap(); // no kick: the worker polls
            assert_eq!(q.wait_used().id, head);
        }
    });
}

#[test]
fn config_status_reset_and_queue_number_requests() {
    for_each_layout(|| {
        let (mut fe, t, counters) = served(2);
        handshake(&mut fe, true, true);
        assert_eq!(fe.get_config(2, 4, 0).unwrap(), CONFIG[2..6].to_vec());
        assert!(
            fe.get_config(4, 8, 0).is_err(),
            "read past the config space"
        );
        fe.set_status(0xf).unwrap();
        assert_eq!(fe.get_status().unwrap(), 0xf);
        let mem = two_region_memory();
        send_mem_table(&mut fe, &mem);
        let mut q = GuestQueue::new(&mem, 1, true);
        q.start(&mut fe, &mem, 0, true);
        for _ in 0..3 {
            q.round_trip(&mem, DATA, DATA + 0x1000, 64);
        }
        // Stopped: GET_VRING_BASE answers the next available index, past the three chains.
        assert_eq!(fe.get_vring_base(1).unwrap(), base_after(3));
        // Restarted from there, it serves on and stops one further.
        q.start(&mut fe, &mem, base_after(3), true);
        q.round_trip(&mem, DATA, DATA + 0x1000, 64);
        assert_eq!(fe.get_vring_base(1).unwrap(), base_after(4));
        q.start(&mut fe, &mem, base_after(4), true);
        fe.reset_device().unwrap();
        assert_eq!(counters.resets.load(Ordering::Relaxed), 1);
        assert_eq!(fe.get_status().unwrap(), 0);
        // The reset stopped the running ring and forgot its base: back to the initial state.
        assert_eq!(fe.get_vring_base(1).unwrap(), 0);
        drop(fe);
        let b = t.join().unwrap();
        assert_eq!(b.running_workers(), 0);
        assert_eq!(
            counters.resets.load(Ordering::Relaxed),
            2,
            "disconnect resets too"
        );
    });
}

#[test]
fn set_vring_num_rejects_invalid_sizes() {
    let (mut fe, _t, _) = served(1);
    handshake(&mut fe, true, true);
    for bad in [0, 3, 100, 512] {
        assert!(fe.set_vring_num(0, bad).is_err(), "{bad}");
    }
    fe.set_vring_num(0, 256).unwrap();
}

fn daemon_on_socket(
    path: &std::path::Path,
) -> (
    vhost_backend::runtime::StopHandle,
    std::thread::JoinHandle<()>,
    std::sync::Arc<Counters>,
) {
    let (b, counters) = backend(1);
    let listener = Listener::bind(path, None).expect("bind");
    let mut daemon = Daemon::new(listener, b).expect("daemon");
    let stop = daemon.stop_handle();
    let t = std::thread::spawn(move || daemon.run().expect("daemon run"));
    (stop, t, counters)
}

fn connect_and_start(path: &std::path::Path) -> (Frontend, GuestMemory, GuestQueue) {
    start_on(vhost_transport::Connection::connect(path).expect("connect"))
}

#[test]
fn daemon_serves_second_frontend_after_first_disconnects_mid_traffic() {
    let dir = std::env::temp_dir().join(format!("vhost-rt-{}-a", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let (stop, t, counters) = daemon_on_socket(&path);
    {
        let (fe, mem, mut q) = connect_and_start(&path);
        q.round_trip(&mem, DATA, DATA + 0x1000, 64);
        // Leave with chains in flight and the ring running.
        for i in 0..8 {
            q.submit((DATA, 16), (DATA + 0x2000 + i * 0x100, 0x100));
        }
        drop(fe);
    }
    let (mut fe, mem, mut q) = connect_and_start(&path);
    for i in 0..20 {
        q.round_trip(&mem, DATA, DATA + 0x1000 + i * 0x100, 0x100);
    }
    assert_eq!(fe.get_vring_base(0).unwrap(), 20);
    drop(fe);
    stop.stop();
    t.join().expect("daemon thread");
    assert!(counters.resets.load(Ordering::Relaxed) >= 2);
    assert!(!path.exists(), "socket file removed when the daemon ends");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn daemon_stops_promptly_while_a_frontend_is_connected() {
    let dir = std::env::temp_dir().join(format!("vhost-rt-{}-b", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.sock");
    let (stop, t, counters) = daemon_on_socket(&path);
    let (_fe, _mem, _q) = connect_and_start(&path);
    let t0 = std::time::Instant::now();
    stop.stop();
    t.join().expect("daemon thread");
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(counters.resets.load(Ordering::Relaxed), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn set_mem_table_with_descriptor_past_its_file_is_nacked() {
    let (mut fe, _t, _) = served(1);
    handshake(&mut fe, true, true);
    let mem = GuestMemory::single(0x1_0000).unwrap();
    let r = MemoryRegion {
        mmap_offset: 0x8000,
        ..regions(&mem)[0]
    };
    let fds: [BorrowedFd<'_>; 1] = [mem.fd()];
    let e = fe.set_mem_table(&[r], &fds).unwrap_err();
    assert!(e.nack_status().is_some(), "{e}");
}

/// Handshake and one started ring on `conn` (connected, or accepted in client mode).
fn start_on(
    conn: vhost_transport::Connection<vhost_transport::FrontendChannel>,
) -> (Frontend, GuestMemory, GuestQueue) {
    let mut fe = Frontend::new(conn);
    fe.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (mem, q) = start_queue0(&mut fe, true);
    (fe, mem, q)
}

#[test]
fn client_mode_daemon_waits_for_the_front_end_then_reconnects_after_each_session() {
    let dir = std::env::temp_dir().join(format!("vhost-rt-{}-client", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("frontend.sock");
    let _ = std::fs::remove_file(&path);
    let (b, counters) = backend(1);
    // The daemon starts first: nothing listens yet, it retries.
    let mut daemon = Daemon::client(&path, b).expect("daemon");
    let stop = daemon.stop_handle();
    let t = std::thread::spawn(move || daemon.run().expect("daemon run"));
    std::thread::sleep(Duration::from_millis(300));
    let listener = Listener::bind(&path, None).expect("front-end listens");
    for session in 0..2u64 {
        let conn = listener.accept().expect("the daemon connects");
        let (mut fe, mem, mut q) = start_on(conn);
        for i in 0..5 {
            q.round_trip(&mem, DATA, DATA + 0x1000 + i * 0x100, 0x100);
        }
        assert_eq!(fe.get_vring_base(0).unwrap(), 5, "session {session}");
        // The front-end goes away (QEMU restarting): the daemon resets and comes back.
    }
    stop.stop();
    t.join().expect("daemon thread");
    assert!(counters.resets.load(Ordering::Relaxed) >= 2);
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn client_mode_backs_off_from_a_front_end_that_drops_every_connection() {
    let dir = std::env::temp_dir().join(format!("vhost-rt-{}-clientdrop", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("frontend.sock");
    let _ = std::fs::remove_file(&path);
    let listener = Listener::bind(&path, None).expect("front-end listens");
    let (b, _) = backend(1);
    let mut daemon = Daemon::client(&path, b).expect("daemon");
    let stop = daemon.stop_handle();
    let t = std::thread::spawn(move || daemon.run().expect("daemon run"));
    let mut accepted = 0;
    let end = std::time::Instant::now() + Duration::from_millis(1500);
    listener.set_nonblocking(true).unwrap();
    while std::time::Instant::now() < end {
        match listener.accept::<vhost_transport::FrontendChannel>() {
            Ok(conn) => {
                accepted += 1;
                drop(conn);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    stop.stop();
    t.join().expect("daemon thread");
    // 100, 200, 400, 800 ms of back-off: a handful of connections, not thousands.
    assert!(
        (2..=8).contains(&accepted),
        "{accepted} connections in 1.5 s"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
