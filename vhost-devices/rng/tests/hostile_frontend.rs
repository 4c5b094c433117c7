//! Hostile front-ends against the spawned `vhost-user-rng` daemon: the shared hostile
//! front-end suite (`vhost_test_support::hostile`).
//!
//! Each test starts its own daemon on a temporary socket, plays one misbehaving front-end,
//! and checks: the daemon answers as the server's error policy says (an ack of 1 or the
//! request's failure form and the session goes on, or the connection is closed), the
//! daemon process is still running, and a new front-end afterwards completes the handshake
//! and gets entropy.

mod common;

use std::path::Path;

use common::{connect, options, read_guest, TIMEOUT};
use vhost_device_rng::MAX_QUEUE_SIZE;
use vhost_test_support::hostile::{SpawnedTarget, Target};

/// A `vhost-user-rng` process on a temporary socket.
struct Daemon(SpawnedTarget);

impl Target for Daemon {
    fn start(tag: &str) -> Daemon {
        Daemon(SpawnedTarget::start(
            env!("CARGO_BIN_EXE_vhost-user-rng"),
            tag,
            |_| Vec::new(),
        ))
    }

    fn socket(&self) -> &Path {
        &self.0.socket
    }

    fn max_queue_size(&self) -> u32 {
        MAX_QUEUE_SIZE.into()
    }

    /// virtio-rng has no configuration space.
    fn config_size(&self) -> u32 {
        0
    }

    /// The daemon is still running, and a new front-end completes the handshake and gets
    /// 4 KiB of entropy (not all zero).
    fn assert_serves_again(&mut self) {
        self.0.assert_running();
        let mut s = connect(&self.0.socket, options);
        let buf = s.memory().alloc(4096, 8).expect("buffer");
        let used = s
            .round_trip(0, &[(buf, 4096, true)], TIMEOUT)
            .expect("round trip");
        assert_eq!(used.len, 4096);
        assert!(read_guest(&s, buf, 4096).iter().any(|&b| b != 0));
        drop(s);
        self.0.assert_running();
    }
}

vhost_test_support::hostile_suite!(Daemon);
