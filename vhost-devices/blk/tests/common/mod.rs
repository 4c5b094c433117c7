//! Shared helpers of the integration tests: images with a known pattern, an in-process
//! daemon on a temporary socket, and front-end sessions against it (over the workspace's
//! `vhost-test-support`).
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};

use vhost_device_blk::{BlkConfig, BlkDevice};
use vhost_frontend::SessionOptions;
pub use vhost_test_support::{connect, for_each_layout, Scratch, TIMEOUT};

/// Byte `i` of a test image.
pub fn pattern(i: usize) -> u8 {
    (i as u8).wrapping_mul(31) ^ ((i >> 9) as u8)
}

/// Test images in a scratch directory.
pub trait Image {
    /// Writes an image of `len` pattern bytes; returns its path.
    fn image(&self, len: usize) -> PathBuf;
}

impl Image for Scratch {
    fn image(&self, len: usize) -> PathBuf {
        let bytes: Vec<u8> = (0..len).map(pattern).collect();
        self.file("disk.img", &bytes)
    }
}

/// A daemon serving a blk device on a socket in a thread of this process; stopped on drop.
pub struct InProcess(vhost_test_support::InProcess);

impl InProcess {
    /// Serves `cfg` on `socket`.
    pub fn start(cfg: &BlkConfig, socket: &Path) -> InProcess {
        let device = BlkDevice::new(cfg).unwrap();
        InProcess(vhost_test_support::InProcess::start(device, socket))
    }
}

/// Session options for blk: `queues` queues of 256, the configuration space read; packed
/// rings inside [`for_each_layout`]'s packed round.
pub fn options(queues: u16) -> SessionOptions {
    vhost_test_support::with_layout(SessionOptions {
        num_queues: queues,
        queue_size: 256,
        config_size: Some(60),
        ..SessionOptions::default()
    })
}
