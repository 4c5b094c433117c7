//! One decoded, checked request to one [`Backend`] call, generated from the `=> backend(...)`
//! clause of each row of [`vhost_proto::for_each_frontend_request!`]; this file holds the
//! generator and the functions the clauses name to shape replies.
//!
//! Decoding, descriptor counts and gates were checked before this point
//! (`FrontendRequest::decode`, `Negotiation::check`), so nothing here validates; it only
//! hands arguments over and shapes the result as the request's reply.

use vhost_proto::wire::{DEVICE_STATE_NOFD, MAX_CONFIG_SIZE};
use vhost_proto::{
    Config, CryptoSession, Error, FrontendReply, FrontendRequest, Inflight, MessageKind,
    ProtocolFeatures, ShmemConfig, VringState,
};
use vhost_transport::{BackendChannel, Connection, OwnedDescriptor};

use super::ServerError;
use crate::backend_client::SharedNegotiation;
use crate::{Backend, BackendClient, BackendError};

/// What a request produced when it succeeded.
// Built once per message and moved straight into the reply: no need to box it.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Answer<'a> {
    /// Nothing beyond success: an ack of 0 if one is owed.
    Done,
    /// The reply, and the descriptor that rides with it.
    Reply(FrontendReply<'a>, Option<OwnedDescriptor>),
}

/// A failure inside a dispatch arm, before the request code is attached.
enum Failure {
    Backend(BackendError),
    Server(ServerError),
}

impl From<BackendError> for Failure {
    fn from(e: BackendError) -> Self {
        Failure::Backend(e)
    }
}

impl From<ServerError> for Failure {
    fn from(e: ServerError) -> Self {
        Failure::Server(e)
    }
}

/// Calls the back-end method for `req`, with the descriptors that came with it.
///
/// `config` holds the GET_CONFIG reply payload, so the reply can borrow it.
pub(super) fn dispatch<'a, B: Backend + ?Sized>(
    backend: &mut B,
    negotiation: &SharedNegotiation,
    req: &FrontendRequest<'a>,
    fds: Vec<OwnedDescriptor>,
    config: &'a mut [u8; MAX_CONFIG_SIZE],
) -> Result<Answer<'a>, ServerError> {
    call(backend, negotiation, req, fds, config).map_err(|f| match f {
        Failure::Backend(error) => ServerError::Backend {
            request: req.code(),
            error,
        },
        Failure::Server(e) => e,
    })
}

/// Generates [`call`] from the `=> backend(...)` clause of each row of
/// [`vhost_proto::for_each_frontend_request!`]:
/// `|body| fn method(name: Type = source, ..) -> Output => shape(extra)`.
///
/// - `|body|` binds the decoded body (by reference); absent for a request without one.
/// - Each argument's source is one token: `fd` (the one descriptor, counted by the
///   decoder), `fd_or_nofd` (`None` for NOFD), `fds` (every descriptor, in order), `channel`
///   (the back-end channel over the one descriptor), or an expression (parenthesised unless
///   it is the body's name). Names and types are the trait's (`backend.rs`).
/// - `=> shape(extra)` names the function here that turns the method's success into the
///   answer, called as `shape(extra.., output)`.
/// - `=> via helper` hands the request to a helper of its own (GET_CONFIG, whose reply
///   borrows the buffer the method fills); the sources are then `_`.
macro_rules! dispatch_rows {
    ($($(#[$m:meta])* $v:ident $(($($ty:tt)*))? = $code:literal => $spec:expr => backend($($clause:tt)*) $(=> $other:ident($($o:tt)*))*;)*) => {
        fn call<'a, B: Backend + ?Sized>(
            backend: &mut B,
            negotiation: &SharedNegotiation,
            req: &FrontendRequest<'a>,
            mut fds: Vec<OwnedDescriptor>,
            config: &'a mut [u8; MAX_CONFIG_SIZE],
        ) -> Result<Answer<'a>, Failure> {
            Ok(match *req {
                $(dispatch_rows!(@pattern $v $($clause)*) =>
                    dispatch_rows!(@arm (backend, negotiation, req, fds, config) $($clause)*),)*
            })
        }
    };
    (@pattern $v:ident $(#[$d:meta])* | $body:tt | $($rest:tt)*) => { FrontendRequest::$v(ref $body) };
    (@pattern $v:ident $($rest:tt)*) => { FrontendRequest::$v };
    (@arm $ctx:tt $(#[$d:meta])* | $body:tt | fn $method:ident($($arg:ident : $aty:ty = _),*) -> $ret:ty $(= $default:block)?
        => via $helper:ident) => {
        dispatch_rows!(@ctx $ctx $helper, $body)
    };
    (@arm $ctx:tt $(#[$d:meta])* $(| $body:tt |)? fn $method:ident($($arg:ident : $aty:ty = $src:tt),*) -> $ret:ty $(= $default:block)?
        => $shape:ident $(($($extra:tt),*))?) => {{
        let output = dispatch_rows!(@call $ctx $method [$($src)*] []);
        $shape($($($extra,)*)? output)
    }};
    // Arguments are turned into expressions one at a time, then the method is called.
    (@call ($backend:ident, $($c:ident),*) $method:ident [] [$($done:expr),*]) => {
        $backend.$method($($done),*)?
    };
    (@call $ctx:tt $method:ident [$arg:tt $($rest:tt)*] [$($done:expr),*]) => {
        dispatch_rows!(@call $ctx $method [$($rest)*] [$($done,)* dispatch_rows!(@arg $ctx $arg)])
    };
    (@arg ($b:ident, $n:ident, $req:ident, $fds:ident, $c:ident) fd) => { one_fd(&mut $fds, $req)? };
    (@arg ($b:ident, $n:ident, $req:ident, $fds:ident, $c:ident) fd_or_nofd) => { $fds.pop() };
    (@arg ($b:ident, $n:ident, $req:ident, $fds:ident, $c:ident) fds) => { std::mem::take(&mut $fds) };
    (@arg ($b:ident, $n:ident, $req:ident, $fds:ident, $c:ident) channel) => { channel(one_fd(&mut $fds, $req)?, $n)? };
    (@arg $ctx:tt $e:tt) => { $e };
    (@ctx ($b:ident, $n:ident, $req:ident, $fds:ident, $c:ident) $helper:ident, $body:tt) => {
        $helper($b, *$body, $c)?
    };
}

vhost_proto::for_each_frontend_request!(dispatch_rows);

fn done(_: ()) -> Answer<'static> {
    Answer::Done
}

fn reply(r: FrontendReply<'_>) -> Answer<'_> {
    Answer::Reply(r, None)
}

fn value(v: u64) -> Answer<'static> {
    reply(FrontendReply::U64(v))
}

/// The u64 status reply of a request that always replies: 0 for success.
fn status(_: ()) -> Answer<'static> {
    value(0)
}

/// GET_VRING_BASE's reply: the ring's index and its next available index.
fn vring_state(s: &VringState, num: u32) -> Answer<'static> {
    reply(FrontendReply::VringState(VringState {
        index: s.index,
        num,
    }))
}

fn protocol_features(features: ProtocolFeatures) -> Answer<'static> {
    value(features.bits())
}

/// CREATE_CRYPTO_SESSION's reply: the request's payload with the new session id.
fn crypto_session<'a>(s: &CryptoSession<'a>, session_id: i64) -> Answer<'a> {
    reply(FrontendReply::CryptoSession(CryptoSession {
        session_id,
        payload: s.payload,
    }))
}

/// An empty reply carrying a descriptor (POSTCOPY_ADVISE's userfaultfd).
fn empty_with_fd(fd: OwnedDescriptor) -> Answer<'static> {
    Answer::Reply(FrontendReply::Empty, Some(fd))
}

/// A u64 success carrying a descriptor (GET_SHARED_OBJECT's dmabuf).
fn u64_with_fd(fd: OwnedDescriptor) -> Answer<'static> {
    Answer::Reply(FrontendReply::U64(0), Some(fd))
}

fn inflight_with_fd((info, area): (Inflight, OwnedDescriptor)) -> Answer<'static> {
    Answer::Reply(FrontendReply::Inflight(info), Some(area))
}

/// SET_DEVICE_STATE_FD's reply: 0 with the back-end's own descriptor, or NOFD set.
fn device_state(back: Option<OwnedDescriptor>) -> Answer<'static> {
    match back {
        Some(back) => Answer::Reply(FrontendReply::U64(0), Some(back)),
        None => value(DEVICE_STATE_NOFD),
    }
}

fn shmem_config(config: ShmemConfig) -> Answer<'static> {
    reply(FrontendReply::ShmemConfig(Box::new(config)))
}

/// The one descriptor of a request that carries exactly one (counted by the decoder).
fn one_fd(
    fds: &mut Vec<OwnedDescriptor>,
    req: &FrontendRequest<'_>,
) -> Result<OwnedDescriptor, ServerError> {
    fds.pop().ok_or(ServerError::Refused(Error::UnexpectedFds {
        request: MessageKind::Frontend(req.code()),
        expected: "exactly one",
        got: 0,
    }))
}

/// The back-end channel over the socket (on Windows, the pipe) of SET_BACKEND_REQ_FD.
fn channel(
    fd: OwnedDescriptor,
    negotiation: &SharedNegotiation,
) -> Result<BackendClient, ServerError> {
    #[cfg(unix)]
    let conn = Connection::<BackendChannel>::from_fd(fd);
    #[cfg(windows)]
    let conn = Connection::<BackendChannel>::from_handle(fd);
    let conn = conn.map_err(ServerError::BackendChannel)?;
    Ok(BackendClient::new(conn, negotiation.clone()))
}

fn get_config<'a, B: Backend + ?Sized>(
    backend: &mut B,
    c: Config<'a>,
    buf: &'a mut [u8; MAX_CONFIG_SIZE],
) -> Result<Answer<'a>, Failure> {
    // The decoder bounds the size by the configuration space.
    let size = c.payload.len().min(MAX_CONFIG_SIZE);
    let (payload, _) = buf.split_at_mut(size);
    backend.get_config(c.offset, payload, c.flags)?;
    Ok(reply(FrontendReply::Config(Config { payload, ..c })))
}
