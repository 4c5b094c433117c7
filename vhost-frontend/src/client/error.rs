//! Errors of the front-end client.

use vhost_proto::FrontendReq;

/// Why a front-end request failed.
///
/// [`FrontendError::Nack`] and [`FrontendError::Refused`] are the back-end's answer to one
/// well-formed exchange: the connection stays usable. Every other error that happened while
/// waiting for a reply leaves the stream out of step, and the client refuses further requests
/// with [`FrontendError::Broken`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FrontendError {
    /// Sending or receiving failed (includes [`vhost_transport::Error::TimedOut`] when the
    /// back-end does not answer within the read timeout).
    #[error("transport: {0}")]
    Transport(#[from] vhost_transport::Error),
    /// A message could not be encoded, or a reply broke the protocol (bad flags, another
    /// request's code, wrong size or descriptor count).
    #[error("protocol: {0}")]
    Protocol(#[from] vhost_proto::Error),
    /// The back-end acked a request with a non-zero status.
    #[error("{} refused with status {status}", request.name())]
    Nack {
        /// The request.
        request: FrontendReq,
        /// The back-end's status (non-zero).
        status: u64,
    },
    /// The back-end answered with the request's in-band failure form (a zero-size config, a
    /// negative crypto session id, a missing descriptor, ...).
    #[error("{} refused by the back-end: {why}", request.name())]
    Refused {
        /// The request.
        request: FrontendReq,
        /// What the reply said.
        why: &'static str,
    },
    /// A well-framed reply whose content does not answer the request (another vring index,
    /// another config offset, a descriptor where none may come, ...).
    #[error("{}: invalid reply: {why}", request.name())]
    InvalidReply {
        /// The request.
        request: FrontendReq,
        /// Which check failed.
        why: &'static str,
    },
    /// The caller's arguments do not make a valid request (for example a descriptor count
    /// that does not match the regions).
    #[error("{}: invalid argument: {why}", request.name())]
    InvalidArgument {
        /// The request.
        request: FrontendReq,
        /// Which check failed.
        why: &'static str,
    },
    /// An earlier exchange failed half-way; the stream is out of step with the framing.
    #[error("the connection is out of step after an earlier error")]
    Broken,
    /// Setting up the back-end channel failed locally (thread, socket).
    #[error("back-end channel: {0}")]
    BackendChannel(#[source] std::io::Error),
}

impl FrontendError {
    /// True when the back-end answered in-band (a nack or a failure form) and the connection
    /// can still be used.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            FrontendError::Nack { .. } | FrontendError::Refused { .. }
        )
    }

    /// The status of a nack, if this is one.
    pub fn nack_status(&self) -> Option<u64> {
        match self {
            FrontendError::Nack { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Result of a front-end request.
pub type Result<T> = std::result::Result<T, FrontendError>;
