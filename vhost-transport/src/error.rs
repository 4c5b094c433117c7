//! The one error type of the transport layer.

use std::io;
use std::path::PathBuf;

/// Result of a transport operation.
pub type Result<T> = std::result::Result<T, Error>;

/// What went wrong while moving a message, or while setting up a connection.
///
/// Variants up to [`Error::BodyTooLarge`] describe peer misbehaviour or a
/// closed peer; the rest are local conditions.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer closed the connection on a message boundary.
    #[error("peer closed the connection")]
    Disconnected,
    /// The peer closed the connection, or stalled past the read timeout, in
    /// the middle of a message.
    #[error("message cut short: got {got} of {expected} bytes")]
    PartialMessage {
        /// Bytes this read needed.
        expected: usize,
        /// Bytes that arrived before the stream ended.
        got: usize,
    },
    /// The peer attached more descriptors than the receive buffer holds; the
    /// kernel dropped the rest and every descriptor that did arrive was closed.
    #[error("control data truncated: the peer sent more descriptors than fit")]
    ControlTruncated,
    /// Descriptors arrived with the bytes of a message body (closed).
    #[error("{count} descriptors arrived with body bytes")]
    FdsWithBody {
        /// How many descriptors came (all closed).
        count: usize,
    },
    /// Descriptors arrived after the first bytes of a header (closed); a
    /// message's descriptors ride on its first byte.
    #[error("{count} descriptors arrived in the middle of a header")]
    FdsMidHeader {
        /// How many descriptors came (all closed).
        count: usize,
    },
    /// More descriptors than one message may carry, received (all closed) or
    /// about to be sent (nothing sent).
    #[error("{got} descriptors in one message, at most {max} allowed")]
    TooManyFds {
        /// How many descriptors there were.
        got: usize,
        /// The protocol limit.
        max: usize,
    },
    /// A handle value in a message's preamble is not an open handle of this
    /// process, or repeats within the message (Windows). The valid handles
    /// of the message were closed.
    #[error("peer named handle value {value:#x}, which is not a handle it gave us")]
    InvalidHandle {
        /// The first bad value.
        value: u64,
    },
    /// A body length over the protocol maximum, refused before any buffer was
    /// allocated and before any byte was read.
    #[error("body of {len} bytes exceeds the maximum of {max}")]
    BodyTooLarge {
        /// The requested length.
        len: usize,
        /// The protocol limit.
        max: usize,
    },
    /// Another process is listening on this socket path, or the path holds
    /// something that is not a socket.
    #[error("address in use: {}", .0.display())]
    AddressInUse(PathBuf),
    /// The descriptor is not a stream socket of the local (Unix) family.
    #[error("descriptor is not a local stream socket")]
    NotASocket,
    /// The descriptor is a stream socket that is neither connected nor
    /// listening.
    #[error("socket is not connected")]
    NotConnected,
    /// The handle is not a byte-mode named pipe (Windows).
    #[error("handle is not a byte-mode named pipe")]
    NotAPipe,
    /// The read timeout expired before any byte of this read arrived.
    #[error("timed out waiting for the peer")]
    TimedOut,
    /// The connection is in non-blocking mode and nothing could be moved.
    #[error("operation would block")]
    WouldBlock,
    /// A system call failed.
    #[error("{op} failed")]
    Io {
        /// The call that failed.
        op: &'static str,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// True when the peer went away (cleanly or mid-message): the caller
    /// should reset its state and wait for a new connection.
    pub fn is_disconnect(&self) -> bool {
        matches!(self, Error::Disconnected | Error::PartialMessage { .. })
    }

    /// True when nothing was consumed and the same call may be repeated
    /// ([`Error::WouldBlock`], [`Error::TimedOut`]).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::WouldBlock | Error::TimedOut)
    }

    pub(crate) fn io(op: &'static str, source: impl Into<io::Error>) -> Self {
        Error::Io {
            op,
            source: source.into(),
        }
    }
}
