//! [`BackendServer`]: reads front-end requests off a connection, checks them with
//! `vhost-proto`, calls the [`Backend`], and answers as the specification says.
//!
//! One message goes through these steps, each owned by one layer:
//! 1. the transport reads the 12-byte header and the descriptors that came with it;
//! 2. `vhost-proto` checks the header: version, flags, known code, size within that
//!    request's maximum (before any body byte is read);
//! 3. the transport reads exactly the announced body into a buffer of the protocol maximum,
//!    allocated once per server;
//! 4. `vhost-proto` decodes the body, counts the descriptors and checks the negotiation
//!    (gates, vring indices, features never offered, a second SET_OWNER);
//! 5. one [`Backend`] method is called for the request, with the descriptors moved in;
//! 6. on success the negotiation records the request's effect, then the reply, the ack,
//!    or the failure form goes back.
//!
//! # Error policy
//!
//! Decided in one function (`policy::disposition`), from the kind of failure alone: what
//! the front-end did wrong (a refused request, [`Fault::Peer`](crate::Fault::Peer)) is
//! logged with `log::warn!`, what failed on this side ([`Fault::Local`](crate::Fault::Local),
//! a reply the back-end cannot produce) with `log::error!`, and
//! [`Fault::Broken`](crate::Fault::Broken) closes the connection. Which requests change
//! state and what their failure form is are columns of the request's declaration
//! ([`vhost_proto::RequestSpec`]).
//!
//! | what went wrong | what the server does |
//! | --- | --- |
//! | framing: bad version or flags, unknown code, body over the request's maximum | close ([`ServerError::Framing`]) |
//! | transport: peer gone (also mid-message), body not following its header (non-blocking connection or read timeout), descriptors where none may ride, I/O error | close ([`ServerError::Transport`]) |
//! | the reply cannot be written (non-blocking connection, send buffer full) | close ([`ServerError::ReplyStalled`]) |
//! | invalid body, wrong descriptor count, not negotiated, vring index out of range, second SET_OWNER | failure form, keep serving |
//! | the [`Backend`] method refuses the request ([`Fault::Peer`](crate::Fault::Peer)) or fails ([`Fault::Local`](crate::Fault::Local)) | failure form, keep serving |
//! | the [`Backend`] method says the two sides no longer agree ([`Fault::Broken`](crate::Fault::Broken)) | close |
//! | either of the two above, for a request that changes ring, memory or negotiated state (SET_FEATURES, SET_PROTOCOL_FEATURES, RESET_OWNER, RESET_DEVICE, SET_MEM_TABLE, ADD/REM_MEM_REG, SET_LOG_BASE/FD, SET_VRING_NUM/ADDR/BASE/KICK/CALL/ERR/ENABLE/ENDIAN, SET_INFLIGHT_FD, SET_DEVICE_STATE_FD, POSTCOPY_LISTEN) that owes nothing (no NEED_REPLY, or REPLY_ACK not negotiated) | close ([`ServerError::Unreported`]): the front-end believes the change took effect |
//! | the owed reply has no failure form (GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS, GET_STATUS, GET_VRING_BASE, postcopy memory tables) | close ([`ServerError::Unanswerable`]) |
//!
//! The failure form is what the request owes, failed: nothing when it owes nothing (no
//! NEED_REPLY, or REPLY_ACK not negotiated; only for requests without lasting effect, see
//! above); an ack of 1 when it owes an ack; otherwise
//! `FrontendReply::failure` (a status of 1, a zero-size config, session id -1, an empty
//! inflight description, ...). A request that always replies sends only its reply, with
//! NEED_REPLY or without. Descriptors received are owned values: whatever path a message
//! takes, those not handed to the back-end are closed before the next message is read.

mod dispatch;
mod error;
mod policy;

#[cfg(unix)]
use std::os::fd::{AsFd, BorrowedFd};
#[cfg(windows)]
use std::os::windows::io::{AsHandle, BorrowedHandle};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use vhost_proto::wire::MAX_CONFIG_SIZE;
use vhost_proto::{
    virtio, FrontendReq, FrontendRequest, Header, MessageKind, Negotiation, ProtocolFeatures,
    MAX_BODY_SIZE,
};
use vhost_transport::{Connection, FrontendChannel, OwnedDescriptor};

pub use error::ServerError;

use crate::backend_client::SharedNegotiation;
use crate::{Backend, BackendError};

/// Serves one front-end connection for a [`Backend`].
///
/// The server keeps the session's negotiation state. What the back-end offers is read when
/// the server is built: [`Backend::get_features`], [`Backend::get_protocol_features`] when
/// virtio bit 30 (`VHOST_USER_F_PROTOCOL_FEATURES`) is offered, and
/// [`Backend::get_queue_num`], which bounds vring indices; a back-end that answers
/// [`BackendError::NotSupported`] there has one queue. Offered features are passed on
/// unchanged (packed rings included).
///
/// [`BackendServer::serve`] runs the whole session. An event loop can instead wait for the
/// connection (`AsFd` on Unix, `AsHandle` on Windows) to become readable, call [`BackendServer::handle_one`], and call
/// [`BackendServer::finish`] once that fails.
///
/// ```no_run
/// # fn run<B: vhost_backend::Backend>(mut backend: B) -> Result<(), Box<dyn std::error::Error>> {
/// use vhost_backend::BackendServer;
/// use vhost_transport::Listener;
///
/// let listener = Listener::bind("/tmp/device.sock", None)?;
/// loop {
///     // One front-end at a time; the back-end is reset after each.
///     let mut server = BackendServer::new(listener.accept()?, backend)?;
///     if let Err(e) = server.serve() {
///         log::warn!("front-end connection closed: {e}");
///     }
///     backend = server.into_backend();
/// }
/// # }
/// ```
pub struct BackendServer<B> {
    conn: Connection<FrontendChannel>,
    backend: B,
    negotiation: Negotiation,
    /// The copy of `negotiation` the back-end and its channel read; refreshed whenever a
    /// request changes what is acked.
    shared: SharedNegotiation,
    /// Request bodies, up to the protocol maximum.
    body: Box<[u8; MAX_BODY_SIZE]>,
    /// The fixed part of replies.
    reply: Box<[u8; MAX_BODY_SIZE]>,
    /// GET_CONFIG reply payloads.
    config: [u8; MAX_CONFIG_SIZE],
    finished: bool,
    /// [`BackendServer::serve`]'s bound on a stalled message.
    stall_timeout: Option<Duration>,
    /// [`BackendServer::serve`]'s bound on a new front-end's silence (none by default).
    first_message_timeout: Option<Duration>,
}

/// How long [`BackendServer::serve`] waits for the rest of a message whose first bytes came
/// before it closes the connection, by default.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(5);

impl<B> std::fmt::Debug for BackendServer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendServer")
            .field("conn", &self.conn)
            .field("negotiation", &self.negotiation)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> BackendServer<B> {
    /// A server for the front-end on `conn`. Fails when the back-end cannot say what it
    /// offers.
    pub fn new(conn: Connection<FrontendChannel>, mut backend: B) -> Result<Self, ServerError> {
        let negotiation = offer(&mut backend)?;
        let shared = Arc::new(Mutex::new(negotiation.clone()));
        backend.bind_negotiation(Arc::clone(&shared));
        Ok(BackendServer {
            conn,
            backend,
            shared,
            negotiation,
            body: Box::new([0; MAX_BODY_SIZE]),
            reply: Box::new([0; MAX_BODY_SIZE]),
            config: [0; MAX_CONFIG_SIZE],
            finished: false,
            stall_timeout: Some(STALL_TIMEOUT),
            first_message_timeout: None,
        })
    }

    /// The back-end.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The back-end, mutably.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The back-end, giving up the server and closing its connection.
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// True when a whole message header already waits in the connection's buffer: the
    /// next [`handle_one`](Self::handle_one) serves it even though the descriptor may not
    /// be readable. An event loop checks this before it waits for readability again.
    pub fn has_buffered(&self) -> bool {
        self.conn.has_buffered()
    }

    /// Prepares the connection for a caller that drives [`handle_one`](Self::handle_one)
    /// from an event loop: non-blocking, and (on Unix) in whole-message mode, so a call
    /// never waits for the peer. No message waiting, or one whose body has not all come,
    /// is a retryable error with nothing consumed; wait for readability (or
    /// [`has_buffered`](Self::has_buffered)) and call again. A peer that stops in the
    /// middle of a message therefore holds no thread, only its own connection.
    pub fn set_event_driven(&self) -> Result<(), ServerError> {
        self.conn.set_nonblocking(true)?;
        self.conn.set_read_timeout(None)?;
        #[cfg(unix)]
        self.conn.set_whole_messages(true);
        Ok(())
    }

    /// The session's negotiation state.
    pub fn negotiation(&self) -> &Negotiation {
        &self.negotiation
    }

    /// Sets [`serve`](Self::serve)'s bound on a stalled message (default
    /// [`STALL_TIMEOUT`]); `None`: wait for ever.
    pub fn set_stall_timeout(&mut self, timeout: Option<Duration>) {
        self.stall_timeout = timeout;
    }

    /// Makes [`serve`](Self::serve) close a connection whose first message does not start
    /// within `timeout` ([`ServerError::Silent`]; checked at the stall bound's granularity).
    /// None by default: QEMU may connect long before it sends anything (while it
    /// preallocates guest memory, say), and a daemon handed an already connected socket
    /// must wait for its front-end.
    pub fn set_first_message_timeout(&mut self, timeout: Option<Duration>) {
        self.first_message_timeout = timeout;
    }

    /// Serves the front-end until it goes away or the connection must be closed, then
    /// tells the back-end ([`BackendServer::finish`]).
    ///
    /// `Ok` when the front-end closed the connection between messages. `Err` with the
    /// reason the session ended otherwise: a framing error, a failure that cannot be
    /// reported in-band, a transport error (a front-end gone in the middle of a message, a
    /// read timeout the caller set), or the back-end failing to reset. The connection is
    /// switched to blocking mode first.
    ///
    /// A message that starts must finish: when its next bytes do not come within the stall
    /// bound ([`set_stall_timeout`](Self::set_stall_timeout), [`STALL_TIMEOUT`] by default),
    /// the connection is closed ([`vhost_transport::Error::PartialMessage`]): a peer that
    /// stops in the middle of a message does not hold the back-end. (The bound is per read:
    /// a peer that keeps sending a byte now and then is not cut off.) Idle time between
    /// messages is not bounded, nor, unless
    /// [`set_first_message_timeout`](Self::set_first_message_timeout) says otherwise, before
    /// the first one.
    pub fn serve(&mut self) -> Result<(), ServerError> {
        let ready = self
            .conn
            .set_nonblocking(false)
            .and_then(|()| self.conn.set_read_timeout(self.stall_timeout));
        let started = std::time::Instant::now();
        let mut first = true;
        let ended = match ready {
            Ok(()) => loop {
                match self.handle_one() {
                    Ok(()) => first = false,
                    Err(e) if e.is_retryable() => {
                        // Idle (between messages, or before the first).
                        let waited = started.elapsed();
                        if first && self.first_message_timeout.is_some_and(|t| waited >= t) {
                            break ServerError::Silent { waited };
                        }
                    }
                    Err(e) => break e,
                }
            },
            Err(e) => e.into(),
        };
        let reset = self.finish();
        match ended {
            ServerError::Transport(vhost_transport::Error::Disconnected) => {
                log::info!("front-end disconnected");
                reset
            }
            e => {
                log::warn!("closing the front-end connection: {e}");
                if let Err(r) = reset {
                    log::error!("{r}");
                }
                Err(e)
            }
        }
    }

    /// Reads, handles and answers one message.
    ///
    /// `Ok` when the request was answered as it deserves, which includes the failure form
    /// of a refused or failed request (logged). `Err` when the connection must be closed,
    /// except [`ServerError::is_retryable`]: no header was waiting on a non-blocking
    /// connection (or a read timeout ran out before one came) and nothing was consumed.
    ///
    /// Once a header has been read, no error is retryable: calling again would read the
    /// rest of that message as a new header. On a non-blocking connection, call this when
    /// the connection is readable; a body that is not there with its header (or a read
    /// timeout running out before it comes) is [`vhost_transport::Error::PartialMessage`]
    /// and a reply that cannot be written at once is [`ServerError::ReplyStalled`]: both
    /// close the connection.
    pub fn handle_one(&mut self) -> Result<(), ServerError> {
        let (wire, fds) = self.conn.recv_header()?;
        self.handle_message(&wire, fds)
    }

    /// Handles the message whose header (and descriptors) [`BackendServer::handle_one`]
    /// has consumed.
    fn handle_message(
        &mut self,
        wire: &[u8; vhost_proto::HEADER_SIZE],
        fds: Vec<OwnedDescriptor>,
    ) -> Result<(), ServerError> {
        let header = Header::from_wire(wire);
        let code = header
            .check_frontend_request()
            .map_err(ServerError::Framing)?;
        let size = header.size as usize;
        let body = self.body.get_mut(..size).ok_or(ServerError::Framing(
            vhost_proto::Error::BodyTooLarge {
                request: MessageKind::Frontend(code),
                size: header.size,
                max: MAX_BODY_SIZE,
            },
        ))?;
        self.conn.recv_body_into(body).map_err(|e| match e {
            // Nothing of the body came, but its header is gone: the message is cut short.
            e if e.is_retryable() => {
                ServerError::Transport(vhost_transport::Error::PartialMessage {
                    expected: size,
                    got: 0,
                })
            }
            e => ServerError::Transport(e),
        })?;
        let body: &[u8] = body;
        log::debug!("{} ({size} bytes, {} fds)", code.name(), fds.len());
        let ctx = self.negotiation.decode_context();
        let decoded = FrontendRequest::decode(code, body, fds.len(), ctx);
        let outcome = match &decoded {
            Ok(request) => handle(
                &mut self.backend,
                &mut self.negotiation,
                &self.shared,
                request,
                fds,
                &mut self.config,
            ),
            Err(e) => {
                drop(fds);
                Err(ServerError::Refused(e.clone()))
            }
        };
        let msg = policy::Handled {
            header,
            code,
            request: decoded.as_ref().ok(),
            body,
        };
        policy::respond(
            &self.conn,
            &self.negotiation,
            &mut self.reply[..],
            msg,
            outcome,
        )
    }

    /// Ends the session: the back-end stops its rings and drops mappings and descriptors
    /// ([`Backend::disconnected`]). Called once; later calls do nothing. The connection
    /// stays open until the server is dropped.
    pub fn finish(&mut self) -> Result<(), ServerError> {
        if std::mem::replace(&mut self.finished, true) {
            return Ok(());
        }
        self.backend.disconnected().map_err(ServerError::Reset)
    }
}

#[cfg(unix)]
impl<B> AsFd for BackendServer<B> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.conn.as_fd()
    }
}

#[cfg(windows)]
impl<B> AsHandle for BackendServer<B> {
    fn as_handle(&self) -> BorrowedHandle<'_> {
        self.conn.as_handle()
    }
}

/// Checks a decoded request against the session, dispatches it and records its effect.
fn handle<'a, B: Backend>(
    backend: &mut B,
    negotiation: &mut Negotiation,
    shared: &SharedNegotiation,
    request: &FrontendRequest<'a>,
    fds: Vec<OwnedDescriptor>,
    config: &'a mut [u8; MAX_CONFIG_SIZE],
) -> Result<dispatch::Answer<'a>, ServerError> {
    negotiation.check(request).map_err(ServerError::Refused)?;
    // The request's effect is recorded before the back-end sees it, so the back-end reads
    // the acked features it is being asked to apply; a refused request leaves the record
    // as it was. (The back-end channel may see the new record while the back-end handles
    // the request; if the back-end then fails it, the record goes back.)
    let before = negotiation.clone();
    negotiation.apply(request);
    let acked = |n: &Negotiation| (n.acked_features(), n.acked_protocol());
    let changes = acked(negotiation) != acked(&before);
    if changes {
        *shared.lock().unwrap_or_else(PoisonError::into_inner) = negotiation.clone();
    }
    let answer = dispatch::dispatch(backend, shared, request, fds, config);
    if answer.is_err() {
        if changes {
            *shared.lock().unwrap_or_else(PoisonError::into_inner) = before.clone();
        }
        *negotiation = before;
    }
    answer
}

/// Reads what the back-end offers into a fresh negotiation.
fn offer<B: Backend>(backend: &mut B) -> Result<Negotiation, ServerError> {
    let failed = |request| move |error| ServerError::Offer { request, error };
    let features = backend
        .get_features()
        .map_err(failed(FrontendReq::GetFeatures))?;
    let protocol = if features & virtio::bit(virtio::PROTOCOL_FEATURES) != 0 {
        backend
            .get_protocol_features()
            .map_err(failed(FrontendReq::GetProtocolFeatures))?
    } else {
        ProtocolFeatures::empty()
    };
    let queues = match backend.get_queue_num() {
        Ok(n) => u32::try_from(n).unwrap_or(u32::MAX),
        Err(BackendError::NotSupported) => 1,
        Err(e) => return Err(failed(FrontendReq::GetQueueNum)(e)),
    };
    Ok(Negotiation::new(features, protocol, queues))
}
