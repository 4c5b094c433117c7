//! virtio-rng: the device fills device-writable buffers with random bytes.

use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::{DeviceError, Result};
use crate::session::Session;

/// One guest buffer for entropy requests on one queue.
#[derive(Debug, Clone, Copy)]
pub struct RngReader {
    queue: usize,
    buf: GuestAddress,
    len: u32,
}

impl RngReader {
    /// Allocates a `len`-byte buffer in the session's guest memory.
    pub fn new(session: &Session, queue: usize, len: u32) -> Result<Self> {
        let buf = session
            .memory()
            .alloc(u64::from(len.max(1)), 8)
            .map_err(crate::session::SessionError::from)?;
        Ok(RngReader { queue, buf, len })
    }

    /// Asks the device for up to `out.len()` bytes and copies what it wrote into `out`.
    /// Returns the number of bytes the device wrote.
    pub fn read(&self, session: &mut Session, out: &mut [u8], timeout: Duration) -> Result<usize> {
        let len = u32::try_from(out.len())
            .ok()
            .filter(|&l| l <= self.len)
            .ok_or(DeviceError::TooLong {
                len: out.len(),
                max: self.len,
            })?;
        let used = session.round_trip(self.queue, &[(self.buf, len, true)], timeout)?;
        // The driver checked `used.len` against the writable length of the chain.
        let n = used.len as usize;
        session.memory().mem().read_slice(&mut out[..n], self.buf)?;
        Ok(n)
    }
}
