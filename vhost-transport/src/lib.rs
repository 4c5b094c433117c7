//! Connections that carry framed vhost-user messages and their descriptors.
//!
//! A vhost-user message on the wire is a 12-byte header, a body of at most
//! [`MAX_BODY_SIZE`] bytes and, riding on the same write, up to [`MAX_FDS`]
//! descriptors. This crate moves those three parts; [`vhost_proto`] decides
//! what the bytes mean. The only header field it reads is `size`, on Unix,
//! to tell where the next message starts in what it has read ahead.
//!
//! The API is message-granular so that every platform implements the same
//! thing:
//!
//! 1. [`Connection::recv_header`] returns the next [`HEADER_SIZE`] bytes and
//!    the descriptors that came with that message. On Unix one `recvmsg` reads
//!    as much as is queued (up to two maximal messages), so a message usually
//!    costs one system call; descriptors are given to the last message whose
//!    header starts inside the read that brought them, because Linux ends a
//!    stream read right after the write that carried them.
//! 2. The caller validates the header and learns the body size.
//! 3. [`Connection::recv_body`] (or [`Connection::recv_body_into`]) reads
//!    exactly that many bytes, refusing sizes over [`MAX_BODY_SIZE`] before
//!    any buffer exists.
//! 4. [`Connection::send`] writes header, body and payload with one vectored
//!    write, descriptors attached to its first byte.
//!
//! A [`Listener`] binds a socket path (or takes one over from a parent
//! process) and hands out one [`Connection`] per front-end.
//!
//! ```
//! use vhost_proto::{FrontendReq, Header, HeaderFlags};
//! use vhost_transport::{AsDescriptor, Connection, FrontendChannel};
//!
//! // Both ends of one connection: a socket pair (on Windows, a pipe pair).
//! // `Connection::connect(path)` and `Listener::bind(path, None)?.accept()`
//! // give the same over a socket path.
//! let (frontend, backend) = Connection::<FrontendChannel>::pair()?;
//!
//! // SET_VRING_KICK: an 8-byte body (ring 0) and one descriptor.
//! let kick = std::fs::File::open(std::env::current_exe()?)?;
//! let header = Header::new(FrontendReq::SetVringKick as u32, HeaderFlags::empty(), 8);
//! frontend.send(&header.to_wire(), &0u64.to_le_bytes(), &[], &[kick.as_descriptor()])?;
//!
//! let (bytes, fds) = backend.recv_header()?;
//! let header = Header::from_wire(&bytes);
//! assert_eq!(header.request, FrontendReq::SetVringKick as u32);
//! // vhost-proto checks the header before the body is read.
//! let body = backend.recv_body(header.size as usize)?;
//! assert_eq!(body, 0u64.to_le_bytes());
//! assert_eq!(fds.len(), 1); // owned: closed when dropped
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Errors and stream state
//!
//! [`Error::WouldBlock`] and [`Error::TimedOut`] are only returned when the
//! call consumed nothing, so the same call may simply be repeated. From
//! [`Connection::recv_header`] that means between messages (on Unix, bytes of
//! a header that has only partly arrived stay buffered for the next call).
//! From a body call it means no byte of the body came, but its header has
//! been consumed: the message is half read. Only the body call may be
//! repeated then; a caller that starts over with [`Connection::recv_header`]
//! would read body bytes as a header, so it must treat the error as
//! [`Error::PartialMessage`] and drop the connection. Every other receive
//! error leaves the stream out of step with the message framing and the
//! connection should be dropped. Descriptors received on a failing path are
//! closed before the error is returned.
//!
//! Platform code lives under `sys/`; the types here are the same on every
//! platform.
//!
//! # Windows
//!
//! On Windows a connection is a byte-mode named pipe, a listener path is a
//! pipe name (`\\.\pipe\NAME`), and descriptors are handles
//! ([`OwnedDescriptor`] is `OwnedHandle`). The sender duplicates each handle
//! into the receiving process and names the new values in a preamble that
//! precedes every message in the same write: a little-endian `u32` count
//! (at most [`MAX_FDS`]), then one little-endian `u64` handle value per
//! handle, then the 12-byte header, body and payload. A message is copied
//! into one buffer for that write, and non-blocking mode applies to
//! receiving and accepting only.

mod connection;
mod error;
mod listener;
mod sys;

pub use connection::{BackendChannel, Connection, FrontendChannel};
pub use error::{Error, Result};
pub use listener::{Inherited, Listener};
pub use sys::{BorrowedDescriptor, OwnedDescriptor};
pub use vhost_proto::{HEADER_SIZE, MAX_BODY_SIZE, MAX_FDS};

/// Borrows a [`BorrowedDescriptor`] from anything that holds one, on every
/// platform: implemented for every `AsFd` type on Unix and every `AsHandle`
/// type on Windows, so code that sends descriptors need not name either.
pub trait AsDescriptor {
    /// The borrowed descriptor (`as_fd` on Unix, `as_handle` on Windows).
    fn as_descriptor(&self) -> BorrowedDescriptor<'_>;
}

#[cfg(unix)]
impl<T: std::os::fd::AsFd + ?Sized> AsDescriptor for T {
    fn as_descriptor(&self) -> BorrowedDescriptor<'_> {
        self.as_fd()
    }
}

#[cfg(windows)]
impl<T: std::os::windows::io::AsHandle + ?Sized> AsDescriptor for T {
    fn as_descriptor(&self) -> BorrowedDescriptor<'_> {
        self.as_handle()
    }
}
