//! SIGTERM stops a daemon promptly, in the middle of a session. Alone in its test binary:
//! the handlers are process-wide.

#![cfg(unix)]

mod runtime_support;

use std::time::{Duration, Instant};

use nix::sys::signal::{raise, Signal};
use runtime_support::*;
use vhost_backend::runtime::daemon::install_signal_handlers;
use vhost_backend::runtime::{Daemon, DeviceBackend};
use vhost_frontend::Frontend;
use vhost_transport::Listener;

#[test]
fn sigterm_stops_daemon_with_frontend_connected_and_resets_device() {
    let scratch = vhost_test_support::Scratch::new("rt-signal");
    let path = scratch.socket();
    let (dev, counters) = PatternDevice::new(1);
    let mut daemon = Daemon::new(
        Listener::bind(&path, None).unwrap(),
        DeviceBackend::new(dev).unwrap(),
    )
    .unwrap();
    install_signal_handlers().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(daemon.run().is_ok()).unwrap());
    let mut fe = Frontend::connect(&path).unwrap();
    fe.set_read_timeout(Some(TIMEOUT)).unwrap();
    handshake(&mut fe, true, true);
    let t0 = Instant::now();
    raise(Signal::SIGTERM).unwrap();
    let ok = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("daemon stopped");
    assert!(ok);
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(
        counters.resets.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    drop(scratch);
}
