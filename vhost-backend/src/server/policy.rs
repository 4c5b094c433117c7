//! The one place that turns a request's outcome into what goes back: a reply, an ack, the
//! specification's failure form, nothing, or the end of the connection.
//!
//! | outcome | owes nothing | owes an ack | owes a reply |
//! | --- | --- | --- | --- |
//! | success | — | ack 0 | the reply (and its descriptor) |
//! | refused or failed, request with a lasting effect on rings or memory ([`RequestSpec::changes_state`](vhost_proto::RequestSpec::changes_state)) | close | ack 1 | the failure form; none exists: close |
//! | refused or failed, any other request | log | ack 1 | the failure form; none exists: close |
//! | failed with [`Fault::Broken`] | close | close | close |
//!
//! "Refused" is the front-end's fault: a request the protocol layer refused
//! ([`ServerError::Refused`]) or one the back-end refused ([`Fault::Peer`], logged as a
//! warning). "Failed" is this side's ([`Fault::Local`]: a system call, the device, a defect;
//! logged as an error). The kind comes from [`BackendError::fault`](crate::BackendError::fault)
//! and is never lost on the way here.
//!
//! A front-end that asked for no ack believes a request took effect. When the request sets
//! up rings or memory (QEMU never sets NEED_REPLY on SET_VRING_KICK, for one), carrying on
//! would leave a ring silently dead and the guest waiting on it: the two sides no longer
//! agree on the device's state, so the connection is closed ([`ServerError::Unreported`])
//! and the front-end's reconnection sets everything up again.

use vhost_proto::{
    FrontendReply, FrontendReq, FrontendRequest, Header, Negotiation, Owed, ACK_FAILURE,
};
use vhost_transport::{AsDescriptor, Connection, FrontendChannel, OwnedDescriptor};

use super::dispatch::Answer;
use super::ServerError;
use crate::Fault;

/// A request as far as the policy needs it.
pub(super) struct Handled<'a, 'b> {
    /// The request's header.
    pub header: Header,
    /// The request code (the header passed the framing checks).
    pub code: FrontendReq,
    /// The decoded request, when its body decoded.
    pub request: Option<&'b FrontendRequest<'a>>,
    /// The raw body, to find the failure form of a request that did not decode.
    pub body: &'b [u8],
}

/// Answers a handled request as it deserves. `Err` means the connection must be closed.
pub(super) fn respond(
    conn: &Connection<FrontendChannel>,
    negotiation: &Negotiation,
    buf: &mut [u8],
    msg: Handled<'_, '_>,
    outcome: Result<Answer<'_>, ServerError>,
) -> Result<(), ServerError> {
    let code = msg.code;
    let owed = negotiation.owes(code, msg.header.need_reply());
    let (reply, fd) = match (outcome, owed) {
        (Ok(_), Owed::Nothing) => (None, None),
        (Ok(_), Owed::Ack) => (Some(FrontendReply::U64(0)), None),
        (Ok(Answer::Reply(reply, fd)), Owed::Reply(_)) => (Some(reply), fd),
        (Ok(Answer::Done), Owed::Reply(shape)) => {
            let e = ServerError::NoReply {
                request: code,
                shape,
            };
            (disposition(e, owed, &msg)?, None)
        }
        (Err(e), _) => (disposition(e, owed, &msg)?, None),
    };
    log::debug!("{} handled, owed {owed:?}", code.name());
    match reply {
        Some(reply) => send(conn, buf, code, &reply, fd.as_ref()),
        None => Ok(()),
    }
}

/// The error policy: what goes back for a request that failed with `error` and owes
/// `owed`. `Ok(None)`: nothing, keep serving. `Ok(Some(reply))`: the failure form, keep
/// serving. `Err`: close the connection.
fn disposition<'a>(
    error: ServerError,
    owed: Owed,
    msg: &Handled<'a, '_>,
) -> Result<Option<FrontendReply<'a>>, ServerError> {
    match &error {
        // Whose fault it is decides: a broken back-end closes, a refusal (the front-end's
        // fault) and a local failure are reported in-band, each logged as what it is.
        ServerError::Backend { error: e, .. } => match e.fault() {
            Fault::Broken => return Err(error),
            Fault::Local => log::error!("{error}"),
            Fault::Peer | Fault::Unsupported => log::warn!("{error}"),
        },
        ServerError::Refused(_) | ServerError::BackendChannel(_) => log::warn!("{error}"),
        // A defect of this side: the back-end has no way to produce the reply.
        ServerError::NoReply { .. } => log::error!("{error}"),
        // The stream, the server or the back-end is broken: nothing more can be said.
        _ => return Err(error),
    }
    match owed {
        Owed::Nothing if msg.code.spec().changes_state => Err(ServerError::Unreported {
            request: msg.code,
            cause: Box::new(error),
        }),
        Owed::Nothing => Ok(None),
        Owed::Ack => Ok(Some(FrontendReply::U64(ACK_FAILURE))),
        Owed::Reply(shape) => match failure_form(msg, shape) {
            Some(reply) => Ok(Some(reply)),
            None => Err(ServerError::Unanswerable {
                request: msg.code,
                cause: Box::new(error),
            }),
        },
    }
}

fn send(
    conn: &Connection<FrontendChannel>,
    buf: &mut [u8],
    code: FrontendReq,
    reply: &FrontendReply<'_>,
    fd: Option<&OwnedDescriptor>,
) -> Result<(), ServerError> {
    let enc = reply
        .encode(code, buf)
        .map_err(|error| ServerError::Encode {
            request: code,
            error,
        })?;
    let body = buf.get(..enc.body_len).unwrap_or_default();
    let fds = fd.map(AsDescriptor::as_descriptor);
    conn.send(&enc.header.to_wire(), body, enc.payload, fds.as_slice())
        .map_err(|e| match e {
            // Nothing was written, but the request is consumed: a later call could not
            // send this reply any more.
            e if e.is_retryable() => ServerError::ReplyStalled {
                request: code,
                cause: e,
            },
            e => ServerError::Transport(e),
        })
}

/// The failure form of the reply `msg` owes, or `None` when the specification gives none.
fn failure_form<'a>(
    msg: &Handled<'a, '_>,
    shape: vhost_proto::ReplyShape,
) -> Option<FrontendReply<'a>> {
    match msg.request {
        Some(request) => FrontendReply::failure(request, shape),
        // The body did not decode: the failure form follows from the code alone.
        None => FrontendReply::failure_of(msg.code, shape, msg.body),
    }
}
