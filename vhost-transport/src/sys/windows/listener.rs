//! A named pipe that front-ends connect to: one instance always waits for
//! the next client.

use std::os::windows::io::{AsHandle, AsRawHandle, BorrowedHandle, OwnedHandle};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use windows_sys::Win32::Foundation::{
    GetLastError, ERROR_IO_PENDING, ERROR_PIPE_CONNECTED, FALSE, TRUE, WAIT_OBJECT_0,
};
use windows_sys::Win32::System::Pipes::{ConnectNamedPipe, DisconnectNamedPipe};
use windows_sys::Win32::System::Threading::{ResetEvent, WaitForSingleObject};
use windows_sys::Win32::System::IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED};

use super::overlapped::{is_disconnect, last_error, win_error, Event};
use super::pipe::{self, UNLIMITED};
use super::socket::{End, Socket};
use crate::{Error, Result};

/// Where a `ConnectNamedPipe` stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Connect {
    /// A client is connected to the instance.
    Connected,
    /// Still waiting; the `OVERLAPPED` is in use.
    Pending,
    /// A client connected and closed again; the instance must be
    /// disconnected before it can wait again.
    ClientGone,
}

/// Starts waiting for a client on `pipe`.
///
/// # Safety
///
/// When this returns [`Connect::Pending`], `ov` (and the event it names) must
/// stay in place and alive until [`finish_connect`] has returned for it.
unsafe fn start_connect(pipe: BorrowedHandle<'_>, ov: *mut OVERLAPPED) -> Result<Connect> {
    // SAFETY: `ov` is valid for the operation, as the caller promised.
    if unsafe { ConnectNamedPipe(pipe.as_raw_handle(), ov) } != FALSE {
        return Ok(Connect::Connected);
    }
    // SAFETY: reads the calling thread's last-error value.
    match unsafe { GetLastError() } {
        ERROR_IO_PENDING => Ok(Connect::Pending),
        ERROR_PIPE_CONNECTED => Ok(Connect::Connected),
        code if is_disconnect(code) => Ok(Connect::ClientGone),
        code => Err(win_error("ConnectNamedPipe", code)),
    }
}

/// Waits for a pending connect to end. Afterwards nothing refers to `ov`.
fn finish_connect(pipe: BorrowedHandle<'_>, ov: &OVERLAPPED) -> Result<Connect> {
    let mut n = 0u32;
    // SAFETY: `ov` names a connect on `pipe`; bWait = TRUE returns once it
    // is over.
    if unsafe { GetOverlappedResult(pipe.as_raw_handle(), ov, &mut n, TRUE) } != FALSE {
        return Ok(Connect::Connected);
    }
    // SAFETY: reads the calling thread's last-error value.
    match unsafe { GetLastError() } {
        code if is_disconnect(code) => Ok(Connect::ClientGone),
        code => Err(win_error("ConnectNamedPipe", code)),
    }
}

fn disconnect(pipe: BorrowedHandle<'_>) -> Result<()> {
    // SAFETY: only changes the state of the instance `pipe`.
    if unsafe { DisconnectNamedPipe(pipe.as_raw_handle()) } == FALSE {
        return Err(last_error("DisconnectNamedPipe"));
    }
    Ok(())
}

fn overlapped_for(event: &Event) -> Box<OVERLAPPED> {
    // SAFETY: OVERLAPPED holds only integers and a handle; all zeroes is its
    // documented initial state.
    let mut ov: Box<OVERLAPPED> = Box::new(unsafe { std::mem::zeroed() });
    ov.hEvent = event.raw();
    ov
}

/// Blocks until a client has connected to the fresh instance `pipe`.
pub(super) fn wait_for_client(pipe: BorrowedHandle<'_>, event: &Event) -> Result<()> {
    let mut ov = overlapped_for(event);
    // SAFETY: `ov` and `event` outlive the call to finish_connect below,
    // which every Pending outcome reaches.
    let state = unsafe { start_connect(pipe, &mut *ov)? };
    let state = match state {
        Connect::Pending => finish_connect(pipe, &ov)?,
        other => other,
    };
    match state {
        Connect::Connected => Ok(()),
        // The client of a fresh pair went away: report it as such.
        Connect::ClientGone | Connect::Pending => Err(Error::Disconnected),
    }
}

/// The instance that waits for the next client.
struct Instance {
    pipe: OwnedHandle,
    event: Event,
    /// In use by the kernel while `pending`; boxed so that it stays put when
    /// the instance moves. An instance is never dropped while pending (see
    /// [`Instance::cancel`]).
    ov: Box<OVERLAPPED>,
    pending: bool,
}

// SAFETY: the raw event handle inside `ov` belongs to `event`, owned by the
// same instance; the kernel may write `ov` from any thread, and the instance
// is only used under the listener's mutex.
unsafe impl Send for Instance {}

impl Instance {
    fn new(pipe: OwnedHandle) -> Result<Self> {
        let event = Event::new()?;
        let ov = overlapped_for(&event);
        Ok(Instance {
            pipe,
            event,
            ov,
            pending: false,
        })
    }

    /// Drives the connect one step: starts it, or finishes it when it has
    /// ended or `block` allows waiting.
    fn poll(&mut self, block: bool) -> Result<Connect> {
        if !self.pending {
            // SAFETY: resets an event this instance owns.
            unsafe { ResetEvent(self.event.raw()) };
            // SAFETY: `ov` is boxed and owned by this instance, which does
            // not drop it while `pending` without finishing the connect
            // (see `Drop`).
            let state = unsafe { start_connect(self.pipe.as_handle(), &mut *self.ov)? };
            if state != Connect::Pending {
                return Ok(state);
            }
            self.pending = true;
        }
        // SAFETY: waits on an event this instance owns, without blocking.
        let ready = unsafe { WaitForSingleObject(self.event.raw(), 0) } == WAIT_OBJECT_0;
        if !block && !ready {
            return Ok(Connect::Pending);
        }
        let result = finish_connect(self.pipe.as_handle(), &self.ov);
        self.pending = false;
        result
    }
}

impl Instance {
    /// Ends a pending connect. Must run before an instance that may be
    /// pending goes away: only the listener's `Drop` can meet one, since
    /// `poll` never leaves a connect pending on an error path.
    fn cancel(&mut self) {
        if self.pending {
            // SAFETY: `ov` names the pending connect on this pipe; cancelling
            // it and waiting for the end keeps `ov` alive for as long as the
            // kernel may touch it.
            unsafe { CancelIoEx(self.pipe.as_raw_handle(), &*self.ov) };
            let _ = finish_connect(self.pipe.as_handle(), &self.ov);
            self.pending = false;
        }
    }
}

/// A listening named pipe.
pub(crate) struct SocketListener {
    path: PathBuf,
    name: Vec<u16>,
    /// `None` only after creating the next instance failed; the next accept
    /// tries again.
    waiting: Mutex<Option<Instance>>,
    nonblocking: AtomicBool,
}

impl std::fmt::Debug for SocketListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketListener")
            .field("path", &self.path)
            .finish()
    }
}

impl SocketListener {
    /// Creates the first instance of the pipe `path` (`\\.\pipe\NAME`). An
    /// existing pipe of that name is [`Error::AddressInUse`]. `mode` has no
    /// meaning for a pipe: the default security descriptor applies.
    pub(crate) fn bind(path: &Path, mode: Option<u32>) -> Result<Self> {
        if let Some(mode) = mode {
            log::debug!(
                "permission bits {mode:o} ignored for named pipe {}",
                path.display()
            );
        }
        let name = pipe::wide(path);
        let first = pipe::create_instance(path, &name, true, UNLIMITED)?;
        Ok(SocketListener {
            path: path.to_path_buf(),
            name,
            waiting: Mutex::new(Some(Instance::new(first)?)),
            nonblocking: AtomicBool::new(false),
        })
    }

    fn new_instance(&self) -> Result<Instance> {
        Instance::new(pipe::create_instance(
            &self.path, &self.name, false, UNLIMITED,
        )?)
    }

    pub(crate) fn accept(&self) -> Result<Socket> {
        let block = !self.nonblocking.load(Ordering::Relaxed);
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let instance = match waiting.as_mut() {
                Some(instance) => instance,
                None => waiting.insert(self.new_instance()?),
            };
            match instance.poll(block) {
                Ok(Connect::Connected) => break,
                Ok(Connect::Pending) => return Err(Error::WouldBlock),
                Ok(Connect::ClientGone) => {
                    if let Err(e) = disconnect(instance.pipe.as_handle()) {
                        *waiting = None;
                        return Err(e);
                    }
                }
                Err(e) => {
                    *waiting = None;
                    return Err(e);
                }
            }
        }
        // Put the next instance in place before handing this one out, so a
        // client never finds the pipe name missing.
        let next = match self.new_instance() {
            Ok(next) => Some(next),
            Err(e) => {
                log::warn!(
                    "cannot create the next instance of {}: {e}",
                    self.path.display()
                );
                None
            }
        };
        let connected = std::mem::replace(&mut *waiting, next).ok_or(Error::NotConnected)?;
        let Instance { pipe, .. } = connected;
        Socket::new(pipe, End::Server)
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }

    pub(crate) fn set_nonblocking(&self, on: bool) -> Result<()> {
        self.nonblocking.store(on, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for SocketListener {
    fn drop(&mut self) {
        let waiting = self
            .waiting
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(instance) = waiting {
            instance.cancel();
        }
    }
}
