//! The front-end's end of the back-end channel (SET_BACKEND_REQ_FD): a socket pair whose
//! other end goes to the back-end, served on a thread by a [`BackendRequestHandler`].
//!
//! Each back-end request is decoded with [`BackendRequest::decode`] and handed to one handler
//! method; every method defaults to "not supported". What goes back follows the negotiation
//! the front-end had when it handed the channel over: a u64 ack (0 success, non-zero failure)
//! when REPLY_ACK was acked and the request carries NEED_REPLY, and always a u64 status plus
//! an optional descriptor for BACKEND_SHARED_OBJECT_LOOKUP. A well-framed request that does
//! not decode gets a failure ack (when one is owed) and the channel keeps going; a framing
//! error closes the channel. A request the negotiation does not allow
//! ([`Negotiation::allows_backend`]: BACKEND_REQ and the request's own feature, as acked
//! when the request is read) and a request carrying descriptors without BACKEND_SEND_FD
//! acked never reach the handler: they get the failure ack (when one is owed), their
//! descriptors are closed, and the channel keeps going.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use vhost_proto::{
    encode_backend_reply, BackendReq, BackendRequest, Header, IotlbMsg, Negotiation, Owed,
    ProtocolFeatures, ShmemMap, VringArea, ACK_FAILURE, MAX_BODY_SIZE,
};
use vhost_transport::{BackendChannel, Connection};

use crate::client::{Frontend, FrontendError};

/// Why a handler method refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// The front-end does not implement this request (acked with status 1).
    #[error("not supported")]
    NotSupported,
    /// The request failed with this status (sent as is; 0 is sent as 1).
    #[error("failed with status {0}")]
    Failed(u64),
}

impl HandlerError {
    fn status(self) -> u64 {
        match self {
            HandlerError::NotSupported | HandlerError::Failed(0) => ACK_FAILURE,
            HandlerError::Failed(s) => s,
        }
    }
}

/// Result of a handler method.
pub type HandlerResult<T> = Result<T, HandlerError>;

/// What a handler method's success sends back with the reply.
trait ReplyFd {
    fn reply_fd(self) -> Option<OwnedFd>;
}

impl ReplyFd for () {
    fn reply_fd(self) -> Option<OwnedFd> {
        None
    }
}

impl ReplyFd for Option<OwnedFd> {
    fn reply_fd(self) -> Option<OwnedFd> {
        self
    }
}

/// Generates [`BackendRequestHandler`] and [`dispatch`] from the `=> handler(...)` clause of
/// each row of [`vhost_proto::for_each_backend_request!`]:
/// `|body| fn method(name: Type = source, ...) -> Output`.
///
/// Every method defaults to [`HandlerError::NotSupported`]. `|body|` names the decoded
/// body (by reference; absent without one); each argument's source is one token: `fd` (the
/// one descriptor; a request without it is failed with status 1), `fd_or_nofd` (`None` for
/// NOFD), the body's name, or a parenthesised expression over it. The output is `()` (no
/// descriptor goes back) or the `Option<OwnedFd>` sent with the reply ([`ReplyFd`]). A row
/// without the clause does not compile.
macro_rules! handler_rows {
    ($($(#[$m:meta])* $v:ident $(($($body:tt)*))? = $code:literal => $spec:expr
        => handler($(#[$d:meta])* $(|$b:ident|)?
            fn $name:ident($($arg:ident : $aty:ty = $src:tt),*) -> $ret:ty)
        => client($($client:tt)*);)*) => {
        /// Handles back-end requests: one method per request, each defaulting to "not supported".
        #[allow(unused_variables)]
        pub trait BackendRequestHandler: Send {
            $($(#[$d])*
            fn $name(&mut self, $($arg: $aty),*) -> HandlerResult<$ret> {
                Err(HandlerError::NotSupported)
            })*
        }

        /// Calls the handler method for `msg`; returns the descriptor to send back.
        fn dispatch(
            handler: &mut dyn BackendRequestHandler,
            msg: BackendRequest,
            mut fds: Vec<OwnedFd>,
        ) -> HandlerResult<Option<OwnedFd>> {
            match msg {
                $(BackendRequest::$v $((ref $b))? => {
                    handler.$name($(handler_rows!(@arg fds, $src)),*).map(ReplyFd::reply_fd)
                })*
            }
        }
    };
    (@arg $fds:ident, fd) => {
        match $fds.pop() {
            Some(fd) => fd,
            None => return Err(HandlerError::Failed(ACK_FAILURE)),
        }
    };
    (@arg $fds:ident, fd_or_nofd) => { $fds.pop() };
    (@arg $fds:ident, $e:tt) => { $e };
}

vhost_proto::for_each_backend_request!(handler_rows);

/// A handler that supports nothing: every request gets a failure ack.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnsupportedHandler;

impl BackendRequestHandler for UnsupportedHandler {}

/// Why serving the back-end channel stopped, other than a clean close.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelError {
    /// The channel failed (includes a reply that could not be sent).
    #[error("transport: {0}")]
    Transport(#[from] vhost_transport::Error),
    /// A framing error: the stream cannot be trusted any more.
    #[error("protocol: {0}")]
    Protocol(#[from] vhost_proto::Error),
}

/// Serves back-end requests on `conn` until the back-end closes the channel (`Ok` with the
/// number of requests served) or a transport or framing error (`Err`). `negotiation` decides
/// what each request owes and whether it is allowed at all.
pub fn serve_backend_channel(
    conn: &Connection<BackendChannel>,
    handler: &mut dyn BackendRequestHandler,
    negotiation: &Negotiation,
) -> Result<u64, ChannelError> {
    serve(conn, handler, &Mutex::new(negotiation.clone()))
}

/// Why the negotiation refuses `req` with `nfds` descriptors, if it does.
fn refusal(negotiation: &Negotiation, req: BackendReq, nfds: usize) -> Option<String> {
    if let Err(e) = negotiation.allows_backend(req) {
        return Some(e.to_string());
    }
    if nfds > 0
        && !negotiation
            .acked_protocol()
            .contains(ProtocolFeatures::BACKEND_SEND_FD)
    {
        return Some(format!(
            "{}: {nfds} descriptors without BACKEND_SEND_FD acked",
            req.name()
        ));
    }
    None
}

/// [`serve_backend_channel`] with the negotiation as it stands when each request is read.
fn serve(
    conn: &Connection<BackendChannel>,
    handler: &mut dyn BackendRequestHandler,
    negotiation: &Mutex<Negotiation>,
) -> Result<u64, ChannelError> {
    let mut buf = Box::new([0u8; MAX_BODY_SIZE]);
    let mut served = 0u64;
    loop {
        let (hdr, fds) = match conn.recv_header() {
            Ok(h) => h,
            Err(vhost_transport::Error::Disconnected) => return Ok(served),
            Err(e) => return Err(e.into()),
        };
        let header = Header::from_wire(&hdr);
        let req: BackendReq = header.check_backend_request()?;
        let len = header.size as usize;
        conn.recv_body_into(&mut buf[..len])?;
        let (owed, refused) = {
            let n = negotiation.lock().unwrap_or_else(PoisonError::into_inner);
            (
                n.backend_owes(req, header.need_reply()),
                refusal(&n, req, fds.len()),
            )
        };
        let decoded = match refused {
            Some(why) => {
                log::warn!("back-end channel: {why}");
                drop(fds);
                Err(None)
            }
            None => BackendRequest::decode(req, &buf[..len], fds.len())
                .map(|msg| (msg, fds))
                .map_err(Some),
        };
        let outcome = match decoded {
            Ok((msg, fds)) => dispatch(handler, msg, fds),
            Err(None) => Err(HandlerError::Failed(ACK_FAILURE)),
            Err(Some(e)) => {
                log::warn!("back-end channel: {e}");
                Err(HandlerError::Failed(ACK_FAILURE))
            }
        };
        served += 1;
        let (status, fd) = match outcome {
            Ok(fd) => (0, fd),
            Err(e) => {
                log::debug!("back-end channel: {} refused: {e}", req.name());
                (e.status(), None)
            }
        };
        if owed == Owed::Nothing {
            continue;
        }
        let enc = encode_backend_reply(req, status, &mut buf[..])?;
        let fds: Vec<BorrowedFd<'_>> = fd.iter().map(AsFd::as_fd).collect();
        conn.send(&enc.header.to_wire(), &buf[..enc.body_len], &[], &fds)?;
    }
}

/// The thread serving the back-end channel. Dropping it (or [`BackendChannelHandle::stop`])
/// shuts the channel down and joins the thread.
#[derive(Debug)]
pub struct BackendChannelHandle {
    shutdown: OwnedFd,
    thread: Option<JoinHandle<Result<u64, ChannelError>>>,
}

impl BackendChannelHandle {
    /// True once the serving thread has ended (the back-end closed the channel, or an error).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Shuts the channel down, joins the thread and returns how it ended: the number of
    /// requests served, or the error that stopped it.
    pub fn stop(mut self) -> Result<u64, ChannelError> {
        self.shut_and_join().unwrap_or(Ok(0))
    }

    fn shut_and_join(&mut self) -> Option<Result<u64, ChannelError>> {
        let thread = self.thread.take()?;
        if let Err(e) =
            nix::sys::socket::shutdown(raw(&self.shutdown), nix::sys::socket::Shutdown::Both)
        {
            log::debug!("back-end channel shutdown: {e}");
        }
        match thread.join() {
            Ok(r) => Some(r),
            Err(_) => {
                log::warn!("back-end channel handler panicked");
                None
            }
        }
    }
}

fn raw(fd: &OwnedFd) -> std::os::fd::RawFd {
    use std::os::fd::AsRawFd;
    fd.as_raw_fd()
}

impl Drop for BackendChannelHandle {
    fn drop(&mut self) {
        let _ = self.shut_and_join();
    }
}

impl Frontend {
    /// SET_BACKEND_REQ_FD (21, BACKEND_REQ): creates the back-end channel, serves it with
    /// `handler` on a new thread and hands the other end to the back-end. What each
    /// back-end request owes and whether it is allowed follow the negotiation as it stands
    /// when the request is read (features acked later, such as ACCESS_PLATFORM for IOTLB
    /// misses, count from then on).
    pub fn set_backend_req_fd(
        &mut self,
        handler: Box<dyn BackendRequestHandler>,
    ) -> Result<BackendChannelHandle, FrontendError> {
        let (ours, theirs) = Connection::<BackendChannel>::pair()?;
        let shutdown = ours
            .as_fd()
            .try_clone_to_owned()
            .map_err(FrontendError::BackendChannel)?;
        let negotiation: Arc<Mutex<Negotiation>> = self.shared_negotiation();
        let mut handler = handler;
        let thread = std::thread::Builder::new()
            .name("vhost-backend-channel".into())
            .spawn(move || {
                let r = serve(&ours, handler.as_mut(), &negotiation);
                if let Err(e) = &r {
                    log::warn!("back-end channel closed: {e}");
                }
                r
            })
            .map_err(FrontendError::BackendChannel)?;
        let handle = BackendChannelHandle {
            shutdown,
            thread: Some(thread),
        };
        // The thread already serves: a back-end may use the channel before it acks.
        self.send_backend_req_fd(theirs.as_fd())?;
        Ok(handle)
    }
}
