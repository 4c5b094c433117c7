//! Notifications over eventfds: the driver's kick and the wait for the device's call.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmm_sys_util::eventfd::EventFd;

use super::{Error, Result};

/// Signals `kick`: one available-buffer notification.
pub(super) fn kick(kick: &EventFd) -> Result<()> {
    kick.write(1).map_err(Error::EventFd)
}

/// Waits until `call` is signalled or `timeout` passes, sleeping in `poll`. Consumes the
/// signal. Returns whether it was signalled.
pub(super) fn wait_call(call: &EventFd, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now().checked_add(timeout);
    // SAFETY: `call` owns this descriptor and outlives `fd`, which lives only in this function.
    let fd = unsafe { BorrowedFd::borrow_raw(call.as_raw_fd()) };
    loop {
        let remaining = match deadline {
            Some(deadline) => deadline.saturating_duration_since(Instant::now()),
            None => timeout,
        };
        // Round up so that a sub-millisecond remainder still waits instead of spinning.
        let millis = remaining.as_nanos().div_ceil(1_000_000);
        let poll_timeout =
            PollTimeout::try_from(millis.min(i32::MAX as u128)).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, poll_timeout) {
            Ok(0) => return Ok(false),
            Ok(_) => match call.read() {
                Ok(_) => return Ok(true),
                // A non-blocking eventfd drained by someone else since `poll`: wait again.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::EventFd(e)),
            },
            Err(Errno::EINTR) => {}
            Err(e) => return Err(Error::Poll(e)),
        }
        if remaining.is_zero() {
            return Ok(false);
        }
    }
}
