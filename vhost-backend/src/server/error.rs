//! Why the server refused a request or closed a connection.

use vhost_proto::{FrontendReq, ReplyShape};

use crate::BackendError;

/// What went wrong with one front-end message.
///
/// [`ServerError::Refused`], [`ServerError::Backend`], [`ServerError::BackendChannel`] and
/// [`ServerError::NoReply`] concern a single well-framed request: the server answers it with
/// the specification's failure form and keeps serving, except when the request changes
/// ring or memory state and owes nothing that could report the failure (then
/// [`ServerError::Unreported`] ends the connection). The other variants end the
/// connection; [`BackendServer::handle_one`](crate::BackendServer::handle_one)
/// returns only those.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Moving a message failed, or the front-end went away ([`ServerError::is_disconnect`]).
    #[error(transparent)]
    Transport(#[from] vhost_transport::Error),
    /// A new front-end sent nothing within the bound set with
    /// [`BackendServer::set_first_message_timeout`](crate::BackendServer::set_first_message_timeout).
    #[error("the front-end sent no message within {waited:?} of connecting")]
    Silent {
        /// How long the server waited.
        waited: std::time::Duration,
    },
    /// The header broke the framing (version, flags, unknown code, body over the maximum):
    /// the byte stream cannot be resynchronised.
    #[error("bad framing: {0}")]
    Framing(vhost_proto::Error),
    /// A well-framed request was refused: invalid body, wrong descriptor count, or not
    /// allowed by what was negotiated.
    #[error("request refused: {0}")]
    Refused(vhost_proto::Error),
    /// The back-end failed the request.
    #[error("{} failed in the back-end: {error}", .request.name())]
    Backend {
        /// The request.
        request: FrontendReq,
        /// The back-end's error.
        error: BackendError,
    },
    /// The descriptor of SET_BACKEND_REQ_FD is not a connected stream socket (on Windows, a
    /// connected byte-mode named pipe).
    #[error("SET_BACKEND_REQ_FD: the descriptor is not a usable channel: {0}")]
    BackendChannel(vhost_transport::Error),
    /// The request owes a reply the back-end has no way to produce (the postcopy forms of
    /// SET_MEM_TABLE and ADD_MEM_REG carry the back-end's own mapping addresses).
    #[error("{}: the back-end cannot produce the {shape:?} reply", .request.name())]
    NoReply {
        /// The request.
        request: FrontendReq,
        /// The reply it owes.
        shape: ReplyShape,
    },
    /// A request failed and its reply has no failure form ("the specification gives none",
    /// as for GET_VRING_BASE or GET_FEATURES): the front-end would wait for a value that
    /// cannot come, so the connection is closed.
    #[error("{} failed and its reply has no failure form: {cause}", .request.name())]
    Unanswerable {
        /// The request.
        request: FrontendReq,
        /// Why it failed.
        cause: Box<ServerError>,
    },
    /// A request with a lasting effect on rings, memory or negotiated features
    /// (SET_VRING_KICK, SET_MEM_TABLE, SET_FEATURES, ...) was refused or failed, and it owed
    /// no ack or reply to say so (no NEED_REPLY, or REPLY_ACK not negotiated). The front-end
    /// believes the change took effect, so the two sides disagree on the device's state
    /// (a ring it thinks started is dead): the connection is closed.
    #[error("{} failed and nothing was owed to report it; the front-end's view of the device is now wrong: {cause}", .request.name())]
    Unreported {
        /// The request.
        request: FrontendReq,
        /// Why it failed.
        cause: Box<ServerError>,
    },
    /// A reply could not be written at all: the connection is non-blocking and its send
    /// buffer is full (the front-end does not read its replies). The request was consumed,
    /// so the reply cannot be sent later: the connection is closed.
    #[error("{}: the reply could not be written: {cause}", .request.name())]
    ReplyStalled {
        /// The request answered.
        request: FrontendReq,
        /// The transport's error.
        cause: vhost_transport::Error,
    },
    /// A reply did not fit the reply buffer (a defect of the server, not of the peer).
    #[error("{}: encoding the reply failed: {error}", .request.name())]
    Encode {
        /// The request answered.
        request: FrontendReq,
        /// The encoder's error.
        error: vhost_proto::Error,
    },
    /// The back-end could not say what it offers (features, protocol features, queues).
    #[error("reading the back-end's offer ({}) failed: {error}", .request.name())]
    Offer {
        /// The query that failed.
        request: FrontendReq,
        /// The back-end's error.
        error: BackendError,
    },
    /// The back-end could not return to the just-started state after a session ended.
    #[error("resetting the back-end after the session failed: {0}")]
    Reset(BackendError),
}

impl ServerError {
    /// True when the front-end went away, cleanly or in the middle of a message.
    pub fn is_disconnect(&self) -> bool {
        matches!(self, ServerError::Transport(e) if e.is_disconnect())
    }

    /// True when nothing was read and the same call may be repeated (a non-blocking
    /// connection with no header waiting, or a read timeout between messages). Never true
    /// once a message's header has been consumed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ServerError::Transport(e) if e.is_retryable())
    }
}
