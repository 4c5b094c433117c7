//! Hostile front-ends against the spawned `vhost-user-blk` daemon: the shared hostile
//! front-end suite (`vhost_test_support::hostile`).
//!
//! Each test starts its own daemon on a temporary socket and image, plays one misbehaving
//! front-end, and checks three things: the daemon answers as the server's error policy says
//! (an ack of 1 or the request's failure form and the session goes on, or the connection is
//! closed), the daemon process is still running, and a new front-end afterwards completes
//! the handshake and reads the image correctly.

mod common;

use std::path::Path;

use common::{connect, options, pattern, Image, TIMEOUT};
use vhost_frontend::devices::blk::BlkRequests;
use vhost_test_support::hostile::{SpawnedTarget, Target};

/// A `vhost-user-blk` process on a temporary socket and a 1 MiB pattern image.
struct Daemon(SpawnedTarget);

impl Target for Daemon {
    fn start(tag: &str) -> Daemon {
        Daemon(SpawnedTarget::start(
            env!("CARGO_BIN_EXE_vhost-user-blk"),
            tag,
            |s| vec!["--blk-file".into(), s.image(1 << 20).into()],
        ))
    }

    fn socket(&self) -> &Path {
        &self.0.socket
    }

    fn max_queue_size(&self) -> u32 {
        256
    }

    /// The virtio-blk configuration space.
    fn config_size(&self) -> u32 {
        60
    }

    /// Capacity: 2048 sectors of the 1 MiB image.
    fn check_config(&self, config: &[u8]) {
        assert_eq!(config[..8], 2048u64.to_le_bytes());
    }

    /// The daemon is still running, and a new front-end completes the handshake and reads
    /// four sectors of the image correctly.
    fn assert_serves_again(&mut self) {
        self.0.assert_running();
        let mut s = connect(&self.0.socket, || options(1));
        let mut reqs = BlkRequests::new(&s, 0, 1, 4096).expect("requests");
        let mut buf = vec![0u8; 2048];
        reqs.read(&mut s, 3, &mut buf, TIMEOUT).expect("read");
        let want: Vec<u8> = (3 * 512..3 * 512 + 2048).map(pattern).collect();
        assert_eq!(buf, want, "data read after the hostile session");
        drop(s);
        self.0.assert_running();
    }
}

vhost_test_support::hostile_suite!(Daemon);
