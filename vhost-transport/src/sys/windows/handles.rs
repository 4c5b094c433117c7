//! Handles riding with a message: duplication into the peer process on the
//! sending side, the preamble that names them, and taking ownership of them
//! on the receiving side.

use std::io;
use std::os::windows::io::{AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle};
use std::ptr;

use vhost_proto::MAX_FDS;
use windows_sys::Win32::Foundation::{
    DuplicateHandle, GetHandleInformation, DUPLICATE_CLOSE_SOURCE, DUPLICATE_SAME_ACCESS, FALSE,
    HANDLE,
};
use windows_sys::Win32::System::Threading::{
    GetCurrentProcess, GetCurrentProcessId, OpenProcess, PROCESS_DUP_HANDLE,
};

use super::overlapped::last_error;
use crate::{Error, Result};

/// Size of the count that starts every preamble.
pub(super) const COUNT_SIZE: usize = size_of::<u32>();
/// Size of one handle value in the preamble.
pub(super) const VALUE_SIZE: usize = size_of::<u64>();
/// Handle values one receive reads and takes ownership of. More than a
/// message may carry, so that a peer sending a few too many is reported as
/// `TooManyFds` with all of them closed; a count beyond this is
/// `ControlTruncated`.
pub(super) const HANDLE_CAPACITY: usize = 2 * MAX_FDS;

/// The process at the other end of a pipe, opened for `PROCESS_DUP_HANDLE`.
#[derive(Debug)]
pub(super) enum PeerProcess {
    /// Both ends are in this process (for example a connection pair).
    Current,
    /// Another process.
    Other(OwnedHandle),
}

impl PeerProcess {
    pub(super) fn open(pid: u32) -> Result<Self> {
        // SAFETY: returns the calling process's id; no arguments.
        if pid == unsafe { GetCurrentProcessId() } {
            return Ok(PeerProcess::Current);
        }
        // SAFETY: only opens a process object; failure is a null handle.
        let raw = unsafe { OpenProcess(PROCESS_DUP_HANDLE, FALSE, pid) };
        if raw.is_null() {
            return Err(last_error("OpenProcess(PROCESS_DUP_HANDLE)"));
        }
        // SAFETY: OpenProcess just returned this handle; nothing else owns it.
        Ok(PeerProcess::Other(unsafe {
            OwnedHandle::from_raw_handle(raw)
        }))
    }

    fn raw(&self) -> HANDLE {
        match self {
            // SAFETY: returns a pseudo-handle; nothing to close.
            PeerProcess::Current => unsafe { GetCurrentProcess() },
            PeerProcess::Other(h) => h.as_raw_handle(),
        }
    }
}

/// Handles duplicated into the peer for one message. Until
/// [`PeerHandles::keep`] they belong to nobody on the other side, so dropping
/// this closes them there (`DUPLICATE_CLOSE_SOURCE`).
pub(super) struct PeerHandles<'a> {
    peer: &'a PeerProcess,
    values: [u64; MAX_FDS],
    count: usize,
}

impl<'a> PeerHandles<'a> {
    /// Duplicates each of `handles` into `peer`. On failure the ones already
    /// duplicated are closed in the peer and nothing is left behind.
    pub(super) fn duplicate(peer: &'a PeerProcess, handles: &[BorrowedHandle<'_>]) -> Result<Self> {
        let mut this = PeerHandles {
            peer,
            values: [0; MAX_FDS],
            count: 0,
        };
        for handle in handles {
            let slot = this.values.get_mut(this.count).ok_or(Error::TooManyFds {
                got: handles.len(),
                max: MAX_FDS,
            })?;
            let mut target: HANDLE = ptr::null_mut();
            // SAFETY: the source handle is borrowed, so open for the call;
            // `target` is a valid out pointer; both process handles are
            // open (or the current-process pseudo-handle).
            let ok = unsafe {
                DuplicateHandle(
                    GetCurrentProcess(),
                    handle.as_raw_handle(),
                    peer.raw(),
                    &mut target,
                    0,
                    FALSE,
                    DUPLICATE_SAME_ACCESS,
                )
            };
            if ok == FALSE {
                return Err(last_error("DuplicateHandle"));
            }
            *slot = target as usize as u64;
            this.count += 1;
        }
        Ok(this)
    }

    pub(super) fn values(&self) -> &[u64] {
        self.values.get(..self.count).unwrap_or(&[])
    }

    /// The peer may hold the handles now: leave them to it.
    pub(super) fn keep(mut self) {
        self.count = 0;
    }
}

impl Drop for PeerHandles<'_> {
    fn drop(&mut self) {
        for &value in self.values() {
            // SAFETY: `value` is a handle this process duplicated into the
            // peer and that nobody there has been told about; closing it with
            // DUPLICATE_CLOSE_SOURCE and no target touches nothing else.
            let ok = unsafe {
                DuplicateHandle(
                    self.peer.raw(),
                    value as usize as HANDLE,
                    ptr::null_mut(),
                    ptr::null_mut(),
                    0,
                    FALSE,
                    DUPLICATE_CLOSE_SOURCE,
                )
            };
            if ok == FALSE {
                log::warn!(
                    "cannot close undelivered handle {value:#x} in the peer: {}",
                    io::Error::last_os_error()
                );
            }
        }
    }
}

/// Writes the preamble for `values`: the count as a little-endian `u32`,
/// then each value as a little-endian `u64`.
pub(super) fn encode_preamble(values: &[u64], out: &mut Vec<u8>) {
    out.extend_from_slice(&(values.len() as u32).to_le_bytes());
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Whether a received handle value may be owned: an open handle, in
/// canonical form, not already taken for this message.
fn check_value(value: u64, earlier: &[OwnedHandle]) -> bool {
    // Handle values are multiples of 4 that fit in 31 bits; anything else
    // is a pseudo-handle or garbage.
    if value == 0 || value % 4 != 0 || value > i32::MAX as u64 {
        return false;
    }
    let raw = value as usize as HANDLE;
    if earlier.iter().any(|h| h.as_raw_handle() == raw) {
        return false;
    }
    let mut flags = 0u32;
    // SAFETY: only queries the handle table; an invalid value fails.
    unsafe { GetHandleInformation(raw, &mut flags) != FALSE }
}

/// Takes ownership of the handle values of one preamble (`bytes` holds
/// whole 8-byte values). Values that are not open handles, or that repeat,
/// are counted and not owned.
pub(super) fn take_handles(bytes: &[u8]) -> (Vec<OwnedHandle>, Option<u64>) {
    let mut owned = Vec::with_capacity(bytes.len() / VALUE_SIZE);
    let mut first_bad = None;
    for chunk in bytes.chunks_exact(VALUE_SIZE) {
        let mut v = [0u8; VALUE_SIZE];
        v.copy_from_slice(chunk);
        let value = u64::from_le_bytes(v);
        if check_value(value, &owned) {
            // A peer that can duplicate handles into this process can already close any
            // handle of it, so its word on which values it duplicated is trusted.
            // SAFETY: the peer duplicated this open handle (checked above) into this process
            // for this message; nothing else here owns or refers to it.
            owned.push(unsafe { OwnedHandle::from_raw_handle(value as usize as HANDLE) });
        } else if first_bad.is_none() {
            first_bad = Some(value);
        }
    }
    (owned, first_bad)
}
