//! Shared helpers of the integration tests: a scratch directory, an in-process daemon on a
//! temporary socket, and front-end sessions against it (over the workspace's
//! `vhost-test-support`).
#![allow(dead_code, unused_imports)]

use std::path::Path;

use vhost_device_rng::{RngConfig, RngDevice};
use vhost_frontend::{Session, SessionOptions};
pub use vhost_test_support::{connect, for_each_layout, Scratch, TIMEOUT};
use vm_memory::{Bytes, GuestAddress};

/// A daemon serving `cfg` on `socket` in a thread of this process; stopped on drop.
pub struct InProcess(vhost_test_support::InProcess);

impl InProcess {
    pub fn start(cfg: &RngConfig, socket: &Path) -> InProcess {
        let device = RngDevice::new(cfg).unwrap();
        InProcess(vhost_test_support::InProcess::start(device, socket))
    }
}

/// Session options for rng: one queue of 256, 16 MiB of guest memory; packed rings inside
/// [`for_each_layout`]'s packed round.
pub fn options() -> SessionOptions {
    vhost_test_support::with_layout(SessionOptions::default())
}

/// A started session to the daemon at `socket` (with [`options`]) and a `len`-byte buffer in
/// its guest memory.
pub fn session_with_buffer(socket: &Path, len: u64) -> (Session, GuestAddress) {
    let s = vhost_test_support::connect(socket, options);
    let buf = s.memory().alloc(len, 8).unwrap();
    (s, buf)
}

/// Reads `len` bytes of guest memory at `addr`.
pub fn read_guest(s: &Session, addr: GuestAddress, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    s.memory().mem().read_slice(&mut v, addr).unwrap();
    v
}

/// Sets `len` bytes of guest memory at `addr` to `byte`.
pub fn fill_guest(s: &Session, addr: GuestAddress, len: usize, byte: u8) {
    s.memory()
        .mem()
        .write_slice(&vec![byte; len], addr)
        .unwrap();
}
