//! Overlapped reads and writes on a pipe handle, each waited for before the
//! call returns.
//!
//! Pipe handles are opened for overlapped I/O so that one thread can write
//! while another waits in a read (a handle opened for synchronous I/O
//! serialises the two), and so that a read can be abandoned when the read
//! timeout expires. An `OVERLAPPED` lives on the stack of the call that
//! started the operation and every started operation is waited for (after a
//! cancel, if need be) before that call returns, so the kernel never writes
//! into a dead frame.

use std::io;
use std::os::windows::io::{AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle};
use std::ptr;

use windows_sys::Win32::Foundation::{
    GetLastError, ERROR_BROKEN_PIPE, ERROR_IO_PENDING, ERROR_NO_DATA, ERROR_OPERATION_ABORTED,
    ERROR_PIPE_NOT_CONNECTED, FALSE, HANDLE, TRUE, WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::Storage::FileSystem::{ReadFile, WriteFile};
use windows_sys::Win32::System::Pipes::PeekNamedPipe;
use windows_sys::Win32::System::Threading::{CreateEventW, WaitForSingleObject, INFINITE};
use windows_sys::Win32::System::IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED};

use crate::{Error, Result};

/// A manual-reset event that signals the end of one overlapped operation.
#[derive(Debug)]
pub(super) struct Event(OwnedHandle);

impl Event {
    pub(super) fn new() -> Result<Self> {
        // SAFETY: null security attributes and name are allowed; the call
        // only creates a kernel object.
        let raw = unsafe { CreateEventW(ptr::null(), TRUE, FALSE, ptr::null()) };
        if raw.is_null() {
            return Err(Error::io("CreateEventW", io::Error::last_os_error()));
        }
        // SAFETY: CreateEventW just returned this handle; nothing else owns it.
        Ok(Event(unsafe { OwnedHandle::from_raw_handle(raw) }))
    }

    pub(super) fn raw(&self) -> HANDLE {
        self.0.as_raw_handle()
    }
}

/// What one read produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadOutcome {
    /// This many bytes arrived (possibly 0 if the peer wrote nothing).
    Data(usize),
    /// The peer closed its end and everything it wrote has been read.
    EndOfStream,
    /// The timeout expired and the read was cancelled before any byte moved.
    TimedOut,
}

/// True for the errors a pipe reports once the other end has gone.
pub(super) fn is_disconnect(code: u32) -> bool {
    matches!(
        code,
        ERROR_BROKEN_PIPE | ERROR_PIPE_NOT_CONNECTED | ERROR_NO_DATA
    )
}

fn fresh_overlapped(event: &Event) -> OVERLAPPED {
    // SAFETY: OVERLAPPED holds only integers and a handle; all zeroes is its
    // documented initial state.
    let mut ov: OVERLAPPED = unsafe { std::mem::zeroed() };
    ov.hEvent = event.raw();
    ov
}

/// One overlapped `ReadFile` of at most `buf.len()` bytes, waiting at most
/// `timeout_ms` (`INFINITE` for no limit) for the first byte.
pub(super) fn read_once(
    pipe: BorrowedHandle<'_>,
    event: &Event,
    buf: &mut [u8],
    timeout_ms: u32,
) -> Result<ReadOutcome> {
    let h = pipe.as_raw_handle();
    let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
    let mut ov = fresh_overlapped(event);
    // SAFETY: `buf` (writable, `len` bytes) and `ov` outlive the operation: every path
    // below waits for it to finish (GetOverlappedResult with bWait) before returning.
    let ok = unsafe { ReadFile(h, buf.as_mut_ptr(), len, ptr::null_mut(), &mut ov) };
    if ok == FALSE {
        // SAFETY: reads the calling thread's last-error value.
        match unsafe { GetLastError() } {
            ERROR_IO_PENDING => {}
            code if is_disconnect(code) => return Ok(ReadOutcome::EndOfStream),
            code => return Err(win_error("ReadFile", code)),
        }
    }
    let mut timed_out = false;
    if timeout_ms != INFINITE {
        // SAFETY: waits on an event handle this call keeps alive.
        let waited = unsafe { WaitForSingleObject(event.raw(), timeout_ms) };
        if waited == WAIT_TIMEOUT {
            timed_out = true;
            // SAFETY: `ov` identifies the read started above. Failure
            // (ERROR_NOT_FOUND) only means it already completed.
            unsafe { CancelIoEx(h, &ov) };
        } else if waited != WAIT_OBJECT_0 {
            // Fall through: GetOverlappedResult below waits without a limit,
            // so the operation still ends before `ov` goes away.
            log::warn!("waiting for a pipe read: {}", io::Error::last_os_error());
        }
    }
    let mut n = 0u32;
    // SAFETY: `ov` belongs to the read started above; bWait = TRUE returns
    // only once the operation is over, after which nothing refers to `buf`
    // or `ov`.
    let ok = unsafe { GetOverlappedResult(h, &ov, &mut n, TRUE) };
    let n = n as usize;
    if ok != FALSE {
        return Ok(ReadOutcome::Data(n));
    }
    // SAFETY: reads the calling thread's last-error value.
    match unsafe { GetLastError() } {
        // A cancelled read may still have moved bytes; they are data.
        ERROR_OPERATION_ABORTED if timed_out && n > 0 => Ok(ReadOutcome::Data(n)),
        ERROR_OPERATION_ABORTED if timed_out => Ok(ReadOutcome::TimedOut),
        code if is_disconnect(code) => Ok(ReadOutcome::EndOfStream),
        code => Err(win_error("ReadFile", code)),
    }
}

/// Bytes waiting in the pipe, `None` when the peer has closed it and nothing
/// is left to read.
pub(super) fn bytes_available(pipe: BorrowedHandle<'_>) -> Result<Option<u32>> {
    let mut avail = 0u32;
    // SAFETY: no buffer is passed (size 0); `avail` is a valid out pointer.
    let ok = unsafe {
        PeekNamedPipe(
            pipe.as_raw_handle(),
            ptr::null_mut(),
            0,
            ptr::null_mut(),
            &mut avail,
            ptr::null_mut(),
        )
    };
    if ok != FALSE {
        return Ok(Some(avail));
    }
    // SAFETY: reads the calling thread's last-error value.
    match unsafe { GetLastError() } {
        code if is_disconnect(code) => Ok(None),
        code => Err(win_error("PeekNamedPipe", code)),
    }
}

/// A write that failed after `written` bytes had gone into the pipe.
#[derive(Debug)]
pub(super) struct WriteFailure {
    pub(super) written: usize,
    pub(super) error: Error,
}

/// Writes all of `bytes` with overlapped `WriteFile`s, each waited for. A
/// closed peer is [`Error::Disconnected`].
pub(super) fn write_all(
    pipe: BorrowedHandle<'_>,
    event: &Event,
    bytes: &[u8],
) -> std::result::Result<(), WriteFailure> {
    let h = pipe.as_raw_handle();
    let mut written = 0usize;
    while let Some(rest) = bytes.get(written..).filter(|r| !r.is_empty()) {
        let len = u32::try_from(rest.len()).unwrap_or(u32::MAX);
        let fail = move |error| WriteFailure { written, error };
        let mut ov = fresh_overlapped(event);
        // SAFETY: `rest` is valid for reads of `len` bytes and `ov` for the
        // operation, which is waited for below before either goes away.
        let ok = unsafe { WriteFile(h, rest.as_ptr(), len, ptr::null_mut(), &mut ov) };
        if ok == FALSE {
            // SAFETY: reads the calling thread's last-error value.
            match unsafe { GetLastError() } {
                ERROR_IO_PENDING => {}
                code => return Err(fail(write_error(code))),
            }
        }
        let mut n = 0u32;
        // SAFETY: `ov` belongs to the write started above; bWait = TRUE
        // returns once it is over.
        let ok = unsafe { GetOverlappedResult(h, &ov, &mut n, TRUE) };
        if ok == FALSE {
            // SAFETY: reads the calling thread's last-error value.
            let code = unsafe { GetLastError() };
            written += n as usize;
            return Err(WriteFailure {
                written,
                error: write_error(code),
            });
        }
        if n == 0 {
            return Err(fail(Error::io("WriteFile", io::ErrorKind::WriteZero)));
        }
        written += n as usize;
    }
    Ok(())
}

fn write_error(code: u32) -> Error {
    if is_disconnect(code) {
        Error::Disconnected
    } else {
        win_error("WriteFile", code)
    }
}

/// An [`Error::Io`] from a Win32 error code.
pub(super) fn win_error(op: &'static str, code: u32) -> Error {
    Error::io(op, io::Error::from_raw_os_error(code as i32))
}

/// An [`Error::Io`] from the calling thread's last error.
pub(super) fn last_error(op: &'static str) -> Error {
    Error::io(op, io::Error::last_os_error())
}
