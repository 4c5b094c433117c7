//! One end of a vhost-user connection, typed by which side sends requests.

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;
use std::time::Duration;

use vhost_proto::{HEADER_SIZE, MAX_BODY_SIZE, MAX_FDS};

use crate::sys::{self, BorrowedDescriptor, OwnedDescriptor};
use crate::{Error, Result};

/// The main connection: the front-end sends requests, the back-end replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendChannel;

/// The back-end channel (set up by `SET_BACKEND_REQ_FD`): the back-end sends
/// requests, the front-end replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendChannel;

/// A connected stream that carries framed messages and descriptors.
///
/// `D` is [`FrontendChannel`] or [`BackendChannel`]; it only records which
/// side sends requests and costs nothing at run time.
///
/// Sending and receiving take `&self`: one thread may send while another
/// receives, but two concurrent senders (or receivers) would interleave
/// messages and need their own lock.
///
/// Receiving may read ahead: one read can bring the next messages too, which
/// then wait in the connection, so polling its descriptor does not report
/// them. A poll-driven user keeps calling [`Connection::recv_header`] (and
/// the body calls) while [`Connection::has_buffered`] is true, and only then
/// waits for the descriptor to become readable again. A header read that
/// returns [`Error::WouldBlock`] also means: wait for readability.
pub struct Connection<D> {
    pub(crate) sock: sys::Socket,
    _d: PhantomData<fn() -> D>,
}

impl<D> fmt::Debug for Connection<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("sock", &self.sock)
            .finish()
    }
}

impl<D> Connection<D> {
    pub(crate) fn from_sys(sock: sys::Socket) -> Self {
        Connection {
            sock,
            _d: PhantomData,
        }
    }

    /// Two connected ends, as for a front-end and a back-end in one process.
    /// Neither end is inherited by child processes.
    pub fn pair() -> Result<(Self, Self)> {
        let (a, b) = sys::Socket::pair()?;
        Ok((Self::from_sys(a), Self::from_sys(b)))
    }

    /// Connects to a back-end listening at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        sys::Socket::connect(path.as_ref()).map(Self::from_sys)
    }

    /// Sends one message: `header`, then `body`, then `payload`, with `fds`
    /// attached to its first byte.
    ///
    /// The three parts go out in one vectored write without being copied
    /// together; a partial write is completed with further writes that carry
    /// no descriptors. At most [`MAX_FDS`] descriptors may be attached
    /// ([`Error::TooManyFds`] otherwise, before anything is written). A closed
    /// peer is [`Error::Disconnected`].
    pub fn send(
        &self,
        header: &[u8; HEADER_SIZE],
        body: &[u8],
        payload: &[u8],
        fds: &[BorrowedDescriptor<'_>],
    ) -> Result<()> {
        if fds.len() > MAX_FDS {
            return Err(Error::TooManyFds {
                got: fds.len(),
                max: MAX_FDS,
            });
        }
        self.sock.send(&[header, body, payload], fds)
    }

    /// Receives exactly one header and the descriptors that came with it.
    ///
    /// Bytes read beyond the header stay buffered for the next calls, and
    /// descriptors go to the message whose header starts at the beginning of
    /// the write that carried them (found from each header's `size`).
    /// Errors: [`Error::WouldBlock`] (non-blocking mode) or
    /// [`Error::TimedOut`] (read timeout) when no header byte has come, and in
    /// non-blocking mode on Unix also when only part of the header has come
    /// (that part stays buffered; nothing is consumed, descriptors included);
    /// [`Error::Disconnected`] when the peer closed
    /// before the first byte, [`Error::PartialMessage`] when it closed in the
    /// middle, [`Error::TooManyFds`] for more than [`MAX_FDS`] descriptors,
    /// [`Error::ControlTruncated`] when even more came than the receive
    /// buffer holds, [`Error::FdsMidHeader`] for descriptors that came after
    /// the header's first byte.
    /// In each case every descriptor received is closed.
    pub fn recv_header(&self) -> Result<([u8; HEADER_SIZE], Vec<OwnedDescriptor>)> {
        self.sock.recv_header()
    }

    /// Receives exactly `len` body bytes into a new buffer.
    ///
    /// `len` over [`MAX_BODY_SIZE`] is [`Error::BodyTooLarge`] before
    /// anything is allocated or read. Descriptors arriving with body bytes are
    /// closed and reported as [`Error::FdsWithBody`].
    ///
    /// [`Error::WouldBlock`] (non-blocking mode) or [`Error::TimedOut`] (read
    /// timeout) means no byte of the body has come and none was consumed, but
    /// the header before it was: the message is half read. Repeat the body
    /// call, or treat the error as [`Error::PartialMessage`] and drop the
    /// connection; calling [`Connection::recv_header`] instead would read the
    /// body as a header. Once body bytes have come, the call waits for the
    /// rest in non-blocking mode, and a read timeout running out is
    /// [`Error::PartialMessage`].
    pub fn recv_body(&self, len: usize) -> Result<Vec<u8>> {
        check_body_len(len)?;
        let mut body = vec![0u8; len];
        self.sock.recv_body(&mut body)?;
        Ok(body)
    }

    /// Receives exactly `buf.len()` body bytes into `buf`; otherwise as
    /// [`Connection::recv_body`].
    pub fn recv_body_into(&self, buf: &mut [u8]) -> Result<()> {
        check_body_len(buf.len())?;
        self.sock.recv_body(buf)
    }

    /// True when a whole header waits in the connection (the next one after
    /// the body of the last header received): the next
    /// [`Connection::recv_header`] returns it even if the descriptor is not
    /// readable. Part of a header does not count; the rest of it makes the
    /// descriptor readable when it comes.
    pub fn has_buffered(&self) -> bool {
        self.sock.has_buffered()
    }

    /// Switches whole-message mode (Unix): a header read hands a header out only
    /// once all of its body is buffered behind it, so the body reads that follow
    /// never wait; until then a non-blocking header read is
    /// [`Error::WouldBlock`] with the bytes kept, and
    /// [`has_buffered`](Self::has_buffered) counts whole messages only. For a
    /// reader driven by readiness that must never block on a slow peer.
    #[cfg(unix)]
    pub fn set_whole_messages(&self, on: bool) {
        self.sock.set_whole_messages(on)
    }

    /// Switches non-blocking mode. In that mode a read or write that can move
    /// nothing returns [`Error::WouldBlock`]. On Unix a header read does so
    /// too while only part of the header has come (the part stays buffered);
    /// once part of a body or an outgoing message has moved (on Windows, also
    /// of a header), the call waits for the rest.
    pub fn set_nonblocking(&self, on: bool) -> Result<()> {
        self.sock.set_nonblocking(on)
    }

    /// Bounds how long a read waits for the peer (`None`: forever; a zero
    /// duration is refused). Expiry before the first byte of a read is
    /// [`Error::TimedOut`]; expiry in the middle is
    /// [`Error::PartialMessage`].
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.sock.set_read_timeout(timeout)
    }

    /// The same connection with another channel type, for example a socket
    /// received with `SET_BACKEND_REQ_FD`.
    pub fn into_channel<E>(self) -> Connection<E> {
        Connection::from_sys(self.sock)
    }
}

fn check_body_len(len: usize) -> Result<()> {
    if len > MAX_BODY_SIZE {
        return Err(Error::BodyTooLarge {
            len,
            max: MAX_BODY_SIZE,
        });
    }
    Ok(())
}
