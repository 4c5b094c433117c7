//! Device state transfer (SET_DEVICE_STATE_FD, CHECK_DEVICE_STATE): the bytes of
//! [`VirtioDevice::snapshot`](super::VirtioDevice::snapshot) written to, or the bytes for
//! [`VirtioDevice::restore`](super::VirtioDevice::restore) read from, the descriptor the
//! front-end sends.
//!
//! The copy runs on a helper thread, so a front-end that starts reading or writing its end
//! only after the reply to SET_DEVICE_STATE_FD does not deadlock the control thread. A save
//! takes the snapshot before the reply (every ring is stopped then) and only writes it out in
//! the background; a load reads to end-of-file, at most [`MAX_DEVICE_STATE`] bytes, and
//! restores the device from the helper thread. The descriptor is closed when the copy ends:
//! for a save that is the end-of-file the front-end waits for.
//!
//! The helper thread never blocks unbounded: the descriptor is switched to `O_NONBLOCK` and
//! waited on with `poll` together with a cancel eventfd, which a reset, a disconnect, or a
//! CHECK_DEVICE_STATE that waited [`TRANSFER_TIMEOUT`] in vain signals. Writing to a pipe
//! whose reader is gone fails with `EPIPE` (Rust programs ignore `SIGPIPE`).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::DeviceError;

/// Largest device state a load accepts, in bytes (16 MiB).
pub const MAX_DEVICE_STATE: usize = 16 << 20;

/// How long CHECK_DEVICE_STATE waits for a transfer still running before it cancels it and
/// reports [`StateError::TimedOut`].
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes copied per read or write.
const CHUNK: usize = 64 * 1024;

/// Why a device state transfer was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The direction is neither save (0) nor load (1).
    #[error("unknown transfer direction {0}")]
    Direction(u32),
    /// The phase is not "stopped" (0), the only one defined.
    #[error("unsupported transfer phase {0} (only 0, stopped, is defined)")]
    Phase(u32),
    /// A ring is started: state moves only while the device is suspended.
    #[error("ring {index} is started; device state moves only while every ring is stopped")]
    RingStarted {
        /// The started ring.
        index: u16,
    },
    /// Another transfer is still running.
    #[error("a device state transfer is already running")]
    Busy,
    /// CHECK_DEVICE_STATE without a transfer to report on.
    #[error("no device state transfer to check")]
    NoTransfer,
    /// The state to load is larger than [`MAX_DEVICE_STATE`].
    #[error("device state larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// Reading or writing the transfer descriptor failed.
    #[error("transfer descriptor: {0}")]
    Io(#[source] io::Error),
    /// Starting the helper thread (or its cancel eventfd) failed.
    #[error("starting the transfer thread: {0}")]
    Spawn(#[source] io::Error),
    /// The device could not produce its state.
    #[error("snapshot: {0}")]
    Snapshot(#[source] DeviceError),
    /// The device refused the loaded state.
    #[error("restore: {0}")]
    Restore(#[source] DeviceError),
    /// The transfer was stopped by a reset or a disconnect.
    #[error("transfer cancelled")]
    Cancelled,
    /// The transfer did not finish within [`TRANSFER_TIMEOUT`] and was cancelled.
    #[error("transfer did not finish within {0:?}")]
    TimedOut(Duration),
    /// The helper thread panicked.
    #[error("the transfer thread panicked")]
    Panicked,
}

/// Which way a transfer moves state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Back-end → front-end.
    Save,
    /// Front-end → back-end.
    Load,
}

/// One transfer on its helper thread. Dropping it cancels and joins the thread.
struct Running {
    direction: Direction,
    cancel: EventFd,
    done: Receiver<Result<(), StateError>>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Waits for the outcome, at most `timeout` before cancelling.
    fn wait(mut self, timeout: Duration) -> Result<(), StateError> {
        let outcome = match self.done.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Disconnected) => Err(StateError::Panicked),
            Err(RecvTimeoutError::Timeout) => {
                log::warn!("device state transfer still running after {timeout:?}: cancelled");
                self.stop();
                Err(StateError::TimedOut(timeout))
            }
        };
        self.join();
        outcome
    }

    /// Asks the thread to stop.
    fn stop(&self) {
        if let Err(e) = self.cancel.write(1) {
            log::error!("cancelling the device state transfer: {e}");
        }
    }

    fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the device state transfer thread panicked");
            }
        }
    }

    fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop();
            self.join();
        }
    }
}

/// Where the back-end's transfer stands.
#[derive(Default)]
enum Slot {
    /// None started since the last check, reset or disconnect.
    #[default]
    Idle,
    /// On its helper thread, or finished with its outcome not yet asked for.
    Running(Running),
}

/// The back-end's device state transfer: at most one at a time, its outcome kept for
/// CHECK_DEVICE_STATE.
#[derive(Default)]
pub(crate) struct StateTransfer {
    slot: Slot,
}

impl std::fmt::Debug for StateTransfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.slot {
            Slot::Idle => "idle",
            Slot::Running(r) if r.finished() => "finished",
            Slot::Running(_) => "running",
        };
        f.write_str(state)
    }
}

impl StateTransfer {
    /// Whether a transfer in `direction` (any, with `None`) is still copying or restoring.
    pub(crate) fn running(&self, direction: Option<Direction>) -> bool {
        match &self.slot {
            Slot::Running(r) => !r.finished() && direction.is_none_or(|d| d == r.direction),
            _ => false,
        }
    }

    /// Refuses a new transfer while one runs; an earlier one that finished unchecked is
    /// forgotten.
    pub(crate) fn check_idle(&mut self) -> Result<(), StateError> {
        if self.running(None) {
            return Err(StateError::Busy);
        }
        if let Slot::Running(_) = self.slot {
            if let Err(e) = self.outcome() {
                log::warn!("unchecked device state transfer had failed: {e}");
            }
        }
        Ok(())
    }

    /// Writes `state` to `fd` on a helper thread, then closes `fd`.
    pub(crate) fn start_save(&mut self, fd: OwnedFd, state: Vec<u8>) -> Result<(), StateError> {
        self.start(Direction::Save, fd, move |mut file, cancel| {
            write_all(&mut file, &state, cancel)
        })
    }

    /// Reads `fd` to end-of-file on a helper thread, closes it, and hands the bytes to
    /// `restore`.
    pub(crate) fn start_load<F>(&mut self, fd: OwnedFd, restore: F) -> Result<(), StateError>
    where
        F: FnOnce(&[u8]) -> Result<(), DeviceError> + Send + 'static,
    {
        self.start(Direction::Load, fd, move |mut file, cancel| {
            let state = read_to_end(&mut file, cancel)?;
            drop(file);
            restore(&state).map_err(StateError::Restore)
        })
    }

    fn start<F>(&mut self, direction: Direction, fd: OwnedFd, copy: F) -> Result<(), StateError>
    where
        F: FnOnce(File, &EventFd) -> Result<(), StateError> + Send + 'static,
    {
        self.check_idle()?;
        set_nonblocking(&fd).map_err(StateError::Io)?;
        let cancel = EventFd::new(EFD_NONBLOCK).map_err(StateError::Spawn)?;
        let thread_cancel = cancel.try_clone().map_err(StateError::Spawn)?;
        let (tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("vhost-state".into())
            .spawn(move || {
                // The descriptor is closed when `copy` returns: end-of-file for a reader.
                let outcome = copy(File::from(fd), &thread_cancel);
                match &outcome {
                    Ok(()) => log::debug!("device state {direction:?} done"),
                    Err(e) => log::warn!("device state {direction:?} failed: {e}"),
                }
                // The receiver is gone only when the transfer was abandoned.
                let _ = tx.send(outcome);
            })
            .map_err(StateError::Spawn)?;
        self.slot = Slot::Running(Running {
            direction,
            cancel,
            done,
            thread: Some(thread),
        });
        Ok(())
    }

    /// The outcome of the last transfer, waiting for it (at most [`TRANSFER_TIMEOUT`]) if it
    /// still runs. Asking again without a new transfer is [`StateError::NoTransfer`].
    pub(crate) fn outcome(&mut self) -> Result<(), StateError> {
        match std::mem::take(&mut self.slot) {
            Slot::Idle => Err(StateError::NoTransfer),
            Slot::Running(r) => r.wait(TRANSFER_TIMEOUT),
        }
    }

    /// Stops a running transfer (cancel, join) and forgets any outcome.
    pub(crate) fn abandon(&mut self) {
        if self.running(None) {
            log::info!("device state transfer abandoned");
        }
        self.slot = Slot::Idle;
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = fcntl(fd, FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(fd, FcntlArg::F_SETFL(flags))?;
    Ok(())
}

/// Waits until `fd` is ready for `events` or `cancel` is signalled.
fn wait_ready(fd: BorrowedFd<'_>, events: PollFlags, cancel: &EventFd) -> Result<(), StateError> {
    let mut fds = [
        PollFd::new(fd, events),
        PollFd::new(cancel_fd(cancel), PollFlags::POLLIN),
    ];
    loop {
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(StateError::Io(e.into())),
        }
    }
    if fds[1].any().unwrap_or(false) {
        return Err(StateError::Cancelled);
    }
    // Ready, hung up or in error: the next read or write says which.
    Ok(())
}

fn cancel_fd(cancel: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: the descriptor is owned by `cancel`, open for as long as `cancel` lives, and
    // the borrow does not outlive `cancel`.
    unsafe { BorrowedFd::borrow_raw(cancel.as_raw_fd()) }
}

/// Writes all of `data` to the non-blocking `fd`.
fn write_all(file: &mut File, mut data: &[u8], cancel: &EventFd) -> Result<(), StateError> {
    while !data.is_empty() {
        let n = data.len().min(CHUNK);
        match file.write(&data[..n]) {
            Ok(0) => return Err(StateError::Io(io::ErrorKind::WriteZero.into())),
            Ok(k) => data = &data[k..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_ready(file.as_fd(), PollFlags::POLLOUT, cancel)?
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StateError::Io(e)),
        }
    }
    Ok(())
}

/// Reads the non-blocking `fd` to end-of-file, at most [`MAX_DEVICE_STATE`] bytes.
fn read_to_end(file: &mut File, cancel: &EventFd) -> Result<Vec<u8>, StateError> {
    let mut state = Vec::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(state),
            Ok(k) => {
                if state.len() + k > MAX_DEVICE_STATE {
                    return Err(StateError::TooLarge {
                        max: MAX_DEVICE_STATE,
                    });
                }
                state.extend_from_slice(&buf[..k]);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_ready(file.as_fd(), PollFlags::POLLIN, cancel)?
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(StateError::Io(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe().expect("pipe")
    }

    #[test]
    fn save_of_state_larger_than_the_pipe_reaches_reader_then_eof() {
        let (r, w) = pipe();
        let state: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let mut t = StateTransfer::default();
        t.start_save(w, state.clone()).unwrap();
        let mut got = Vec::new();
        File::from(r).read_to_end(&mut got).unwrap();
        assert_eq!(got, state);
        t.outcome().unwrap();
        assert!(matches!(t.outcome(), Err(StateError::NoTransfer)));
    }

    #[test]
    fn load_beyond_the_limit_is_too_large() {
        let (r, w) = pipe();
        let mut t = StateTransfer::default();
        t.start_load(r, |_| Ok(())).unwrap();
        let writer = std::thread::spawn(move || {
            let mut f = File::from(w);
            let chunk = vec![7u8; 1 << 20];
            for _ in 0..=MAX_DEVICE_STATE / chunk.len() {
                if f.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        assert!(matches!(t.outcome(), Err(StateError::TooLarge { .. })));
        writer.join().unwrap();
    }

    #[test]
    fn abandoned_load_with_writer_still_open_joins_promptly() {
        let (r, _w) = pipe();
        let mut t = StateTransfer::default();
        t.start_load(r, |_| Ok(())).unwrap();
        assert!(t.running(Some(Direction::Load)));
        assert!(matches!(t.check_idle(), Err(StateError::Busy)));
        let start = std::time::Instant::now();
        t.abandon();
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(!t.running(None));
        assert!(matches!(t.outcome(), Err(StateError::NoTransfer)));
    }

    #[test]
    fn load_hands_every_byte_to_restore() {
        let (r, w) = pipe();
        let (tx, rx) = mpsc::channel();
        let mut t = StateTransfer::default();
        t.start_load(r, move |s| {
            tx.send(s.to_vec()).unwrap();
            Ok(())
        })
        .unwrap();
        File::from(w).write_all(b"state bytes").unwrap();
        t.outcome().unwrap();
        assert_eq!(rx.recv().unwrap(), b"state bytes");
    }
}
