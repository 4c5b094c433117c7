//! Notifications over eventfds: the driver's kick and the wait for the device's call.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmm_sys_util::eventfd::EventFd;

use super::{Error, Result};

/// `fd`'s descriptor, borrowed for as long as `fd` is.
fn borrowed(fd: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: `fd` owns this descriptor and outlives the borrow, which is tied to it.
    unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) }
}

/// Signals `kick`: one available-buffer notification. The write is a raw system call
/// (rustix), without the C library's cancellation-point wrapper around `write`.
pub(super) fn kick(kick: &EventFd) -> Result<()> {
    let value = 1u64.to_ne_bytes();
    match rustix::io::write(borrowed(kick), &value) {
        Ok(n) if n == value.len() => Ok(()),
        // An eventfd write is all or nothing; anything else is not an eventfd.
        Ok(n) => Err(Error::EventFd(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("kick eventfd took {n} of 8 bytes"),
        ))),
        Err(e) => Err(Error::EventFd(e.into())),
    }
}

/// Waits until `call` is signalled or `timeout` passes, sleeping in `poll`. Consumes the
/// signal. Returns whether it was signalled.
pub(super) fn wait_call(call: &EventFd, timeout: Duration) -> Result<bool> {
    let deadline = Instant::now().checked_add(timeout);
    let fd = borrowed(call);
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
