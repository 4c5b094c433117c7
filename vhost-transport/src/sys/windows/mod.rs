//! Windows named pipes, in byte mode: the same 12-byte header, body and
//! payload as on a Unix stream socket, with handles in place of descriptors.
//!
//! # The Windows mapping
//!
//! A pipe cannot carry handles the way `SCM_RIGHTS` carries descriptors, so
//! the sender hands them over itself. It learns the peer's process id
//! (`GetNamedPipeClientProcessId` on the server end,
//! `GetNamedPipeServerProcessId` on the client end), opens that process for
//! `PROCESS_DUP_HANDLE`, duplicates each handle into it with
//! `DuplicateHandle` (same access, not inheritable) and names the resulting
//! values in a preamble that comes before every message, in the same
//! `WriteFile`:
//!
//! ```text
//! offset          size    field
//! 0               4       count: number of handles, u32 little-endian (0..=8)
//! 4               8*count handle values in the receiver's process, each a
//!                         u64 little-endian, in the order they were passed
//! 4+8*count       12      vhost-user header
//! 16+8*count      size    body (the header's size field), then any payload
//! ```
//!
//! Every message has a preamble, so a message without handles starts with
//! four zero bytes. The receiver reads the count, then the values, then the
//! header, never a byte more; the body follows as on Unix.
//!
//! Receiving: every value becomes an `OwnedHandle` as soon as it is read,
//! and every error path closes them. A value that is not an open handle of
//! this process, or that repeats within one message, is
//! [`crate::Error::InvalidHandle`] (the open ones are closed). A count above
//! 8 is [`crate::Error::TooManyFds`] with all of them closed; a count above
//! 16 is [`crate::Error::ControlTruncated`]: only the first 16 are read and
//! closed, and the stream is out of step. The receiver has to trust the
//! values: a peer able to duplicate handles into this process can already
//! close any handle of it.
//!
//! Sending: if duplicating a handle fails, the ones already duplicated are
//! closed in the peer with `DUPLICATE_CLOSE_SOURCE` and nothing is written.
//! If the write fails before any byte entered the pipe, all of them are
//! closed in the peer the same way. Once a byte is in, the peer may have read
//! the preamble and own them, so they are left to it.
//!
//! # Differences from Unix
//!
//! - A message is copied into one buffer before its single `WriteFile`:
//!   pipes have no vectored write.
//! - Non-blocking mode applies to receiving and accepting. A send waits until
//!   the pipe has taken the whole message.
//! - Listener paths are pipe names, `\\.\pipe\NAME`; the permission bits
//!   given to [`crate::Listener::bind`] are ignored. Pipes only accept local
//!   clients, and a client lets the server identify it but not impersonate
//!   it.
//! - Handles are opened for overlapped I/O, so that one thread may send
//!   while another waits in a receive, and so that a read timeout can cancel
//!   a read.

mod handles;
mod listener;
mod overlapped;
mod pipe;
mod socket;

use std::os::windows::io::{
    AsHandle, AsRawHandle, BorrowedHandle, IntoRawHandle, OwnedHandle, RawHandle,
};

pub(crate) use listener::SocketListener;
pub(crate) use socket::Socket;

use crate::{Connection, Result};

/// A handle received with a message.
pub type OwnedDescriptor = OwnedHandle;
/// A handle lent to [`Connection::send`].
pub type BorrowedDescriptor<'a> = BorrowedHandle<'a>;

impl<D> Connection<D> {
    /// Takes over a handle that must be either end of a connected byte-mode
    /// named pipe, opened for overlapped I/O ([`crate::Error::NotAPipe`]
    /// otherwise; the handle is closed then).
    pub fn from_handle(handle: OwnedHandle) -> Result<Self> {
        Socket::from_handle(handle).map(Connection::from_sys)
    }
}

impl<D> AsHandle for Connection<D> {
    fn as_handle(&self) -> BorrowedHandle<'_> {
        self.sock.pipe.as_handle()
    }
}

impl<D> AsRawHandle for Connection<D> {
    fn as_raw_handle(&self) -> RawHandle {
        self.sock.pipe.as_raw_handle()
    }
}

impl<D> From<Connection<D>> for OwnedHandle {
    fn from(conn: Connection<D>) -> OwnedHandle {
        conn.sock.pipe
    }
}

impl<D> IntoRawHandle for Connection<D> {
    fn into_raw_handle(self) -> RawHandle {
        self.sock.pipe.into_raw_handle()
    }
}
