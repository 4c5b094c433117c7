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

/// Handles back-end requests: one method per request, each defaulting to "not supported".
#[allow(unused_variables)]
pub trait BackendRequestHandler: Send {
    /// BACKEND_IOTLB_MSG (1): an IOTLB miss or access failure.
    fn iotlb_msg(&mut self, msg: &IotlbMsg) -> HandlerResult<()> {
        Err(HandlerError::NotSupported)
    }
    /// BACKEND_CONFIG_CHANGE_MSG (2): the device configuration changed.
    fn config_change(&mut self) -> HandlerResult<()> {
        Err(HandlerError::NotSupported)
    }
    /// BACKEND_VRING_HOST_NOTIFIER_MSG (3): map `fd` as a ring's host notifier (`None`:
    /// unmap).
    fn vring_host_notifier(&mut self, area: &VringArea, fd: Option<OwnedFd>) -> HandlerResult<()> {
        Err(HandlerError::NotSupported)
    }
    /// BACKEND_VRING_CALL (4): an in-band call for ring `index`.
    fn vring_call(&mut self, index: u32) -> HandlerResult<()> {
        Err(HandlerError::NotSupported)
    }
    /// BACKEND_VRING_ERR (5): an in-band error for ring `index`.
    fn vring_err(&mut self, index: u32) -> HandlerResult<()> {
        Err(HandlerError::NotSupported)
    }
    /// BACKEND_SHARED_OBJECT_ADD (6).
    fn shared_object_add(&mut self, uuid: &[u8; 16]) -> HandlerResult<()> {
        Err(HandlerError::NotSupported)
    }
    /// BACKEND_SHARED_OBJECT_REMOVE (7).
    fn shared_object_remove(&mut self, uuid: &[u8; 16]) -> HandlerResult<()> {
        Err(HandlerError::NotSupported)
    }
    /// BACKEND_SHARED_OBJECT_LOOKUP (8): the object's descriptor, if known. Always answered
    /// with a u64 status and the descriptor.
    fn shared_object_lookup(&mut self, uuid: &[u8; 16]) -> HandlerResult<Option<OwnedFd>> {
        Err(HandlerError::NotSupported)
    }
    /// BACKEND_SHMEM_MAP (9): map a range of `fd` into a shared memory region.
    fn shmem_map(&mut self, map: &ShmemMap, fd: OwnedFd) -> HandlerResult<()> {
        Err(HandlerError::NotSupported)
    }
    /// BACKEND_SHMEM_UNMAP (10).
    fn shmem_unmap(&mut self, map: &ShmemMap) -> HandlerResult<()> {
        Err(HandlerError::NotSupported)
    }
}

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

/// Calls the handler method for `msg`; returns the status and the descriptor to send back.
fn dispatch(
    handler: &mut dyn BackendRequestHandler,
    msg: BackendRequest,
    mut fds: Vec<OwnedFd>,
) -> HandlerResult<Option<OwnedFd>> {
    use BackendRequest as R;
    match msg {
        R::IotlbMsg(m) => handler.iotlb_msg(&m).map(|_| None),
        R::ConfigChangeMsg => handler.config_change().map(|_| None),
        R::VringHostNotifierMsg(a) => handler.vring_host_notifier(&a, fds.pop()).map(|_| None),
        R::VringCall(s) => handler.vring_call(s.index).map(|_| None),
        R::VringErr(s) => handler.vring_err(s.index).map(|_| None),
        R::SharedObjectAdd(o) => handler.shared_object_add(&o.uuid).map(|_| None),
        R::SharedObjectRemove(o) => handler.shared_object_remove(&o.uuid).map(|_| None),
        R::SharedObjectLookup(o) => handler.shared_object_lookup(&o.uuid),
        R::ShmemMap(m) => match fds.pop() {
            Some(fd) => handler.shmem_map(&m, fd).map(|_| None),
            None => Err(HandlerError::Failed(ACK_FAILURE)),
        },
        R::ShmemUnmap(m) => handler.shmem_unmap(&m).map(|_| None),
    }
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
