//! Creating and opening named pipe instances.

use std::ffi::OsStr;
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::{FromRawHandle, OwnedHandle};
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use windows_sys::Win32::Foundation::{
    GetLastError, ERROR_ACCESS_DENIED, ERROR_PIPE_BUSY, ERROR_SEM_TIMEOUT, FALSE, GENERIC_READ,
    GENERIC_WRITE, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_FLAG_FIRST_PIPE_INSTANCE, FILE_FLAG_OVERLAPPED, OPEN_EXISTING,
    PIPE_ACCESS_DUPLEX, SECURITY_IDENTIFICATION, SECURITY_SQOS_PRESENT,
};
use windows_sys::Win32::System::Pipes::{
    CreateNamedPipeW, WaitNamedPipeW, PIPE_READMODE_BYTE, PIPE_REJECT_REMOTE_CLIENTS,
    PIPE_TYPE_BYTE, PIPE_WAIT,
};
use windows_sys::Win32::System::Threading::GetCurrentProcessId;

use super::overlapped::win_error;
use crate::{Error, Result};

/// Buffer size suggested to the system for each direction.
const BUFFER_SIZE: u32 = 64 * 1024;
/// How long [`open_client`] keeps retrying a pipe whose instances are all
/// busy.
const BUSY_WAIT: Duration = Duration::from_secs(10);

/// Instances a listener's pipe may have: one per connected front-end plus
/// the one waiting for the next.
pub(super) use windows_sys::Win32::System::Pipes::PIPE_UNLIMITED_INSTANCES as UNLIMITED;

/// A pipe name as a NUL-terminated UTF-16 string.
pub(super) fn wide(name: &Path) -> Vec<u16> {
    OsStr::new(name)
        .encode_wide()
        .chain(std::iter::once(0))
        .collect()
}

/// A pipe name nobody else uses: process id, a per-process counter and the
/// clock.
pub(super) fn unique_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    // SAFETY: returns the calling process's id; no arguments.
    let pid = unsafe { GetCurrentProcessId() };
    format!(r"\\.\pipe\vhost-transport-{pid}-{n}-{nanos:08x}")
}

/// Creates a byte-mode, overlapped, local-only instance of the pipe `name`
/// (`path` in UTF-16), of which at most `max_instances` may exist. `first`
/// demands that no instance of that name exist yet (another owner is
/// [`Error::AddressInUse`]).
pub(super) fn create_instance(
    path: &Path,
    name: &[u16],
    first: bool,
    max_instances: u32,
) -> Result<OwnedHandle> {
    let mut open_mode = PIPE_ACCESS_DUPLEX | FILE_FLAG_OVERLAPPED;
    if first {
        // The flag alone settles it on Windows; the check before it also
        // catches a live pipe where the flag is not enforced (wine 8).
        if exists(name) {
            return Err(Error::AddressInUse(path.to_path_buf()));
        }
        open_mode |= FILE_FLAG_FIRST_PIPE_INSTANCE;
    }
    let pipe_mode = PIPE_TYPE_BYTE | PIPE_READMODE_BYTE | PIPE_WAIT | PIPE_REJECT_REMOTE_CLIENTS;
    // SAFETY: `name` is NUL-terminated UTF-16 and outlives the call; null
    // security attributes give the default descriptor, not inheritable.
    let raw = unsafe {
        CreateNamedPipeW(
            name.as_ptr(),
            open_mode,
            pipe_mode,
            max_instances,
            BUFFER_SIZE,
            BUFFER_SIZE,
            0,
            ptr::null(),
        )
    };
    if raw == INVALID_HANDLE_VALUE {
        // SAFETY: reads the calling thread's last-error value.
        return Err(match unsafe { GetLastError() } {
            ERROR_ACCESS_DENIED | ERROR_PIPE_BUSY => Error::AddressInUse(path.to_path_buf()),
            code => win_error("CreateNamedPipeW", code),
        });
    }
    // SAFETY: CreateNamedPipeW just returned this handle; nothing else owns it.
    Ok(unsafe { OwnedHandle::from_raw_handle(raw) })
}

/// Whether a pipe of this name exists, free or busy. Does not connect.
fn exists(name: &[u16]) -> bool {
    // SAFETY: `name` is NUL-terminated UTF-16; waits at most 1 ms.
    if unsafe { WaitNamedPipeW(name.as_ptr(), 1) } != FALSE {
        return true;
    }
    // SAFETY: reads the calling thread's last-error value.
    let code = unsafe { GetLastError() };
    matches!(code, ERROR_SEM_TIMEOUT | ERROR_PIPE_BUSY)
}

/// Opens the client end of the pipe `name` for overlapped I/O, waiting for
/// a free instance (`WaitNamedPipeW`) while all are busy.
pub(super) fn open_client(name: &[u16]) -> Result<OwnedHandle> {
    let deadline = Instant::now() + BUSY_WAIT;
    loop {
        // SAFETY: `name` is NUL-terminated UTF-16 and outlives the call; no
        // security attributes (not inheritable), no template. The server
        // may identify the client but not impersonate it.
        let raw = unsafe {
            CreateFileW(
                name.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                0,
                ptr::null(),
                OPEN_EXISTING,
                FILE_FLAG_OVERLAPPED | SECURITY_SQOS_PRESENT | SECURITY_IDENTIFICATION,
                ptr::null_mut(),
            )
        };
        if raw != INVALID_HANDLE_VALUE {
            // SAFETY: CreateFileW just returned this handle; nothing else owns it.
            return Ok(unsafe { OwnedHandle::from_raw_handle(raw) });
        }
        // SAFETY: reads the calling thread's last-error value.
        let code = unsafe { GetLastError() };
        let left = deadline.saturating_duration_since(Instant::now());
        if code != ERROR_PIPE_BUSY || left.is_zero() {
            return Err(win_error("CreateFileW", code));
        }
        let ms = u32::try_from(left.as_millis()).unwrap_or(u32::MAX).max(1);
        // SAFETY: `name` is NUL-terminated UTF-16. Failure (timeout, or the
        // pipe vanished) is noticed by the next CreateFileW.
        unsafe { WaitNamedPipeW(name.as_ptr(), ms) };
    }
}
