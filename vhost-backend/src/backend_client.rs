//! The back-end → front-end channel (SET_BACKEND_REQ_FD): every back-end request of the
//! specification, sent from any thread, waiting for the ack when REPLY_ACK is negotiated —
//! at most [`DEFAULT_ACK_TIMEOUT`] (or what [`BackendClient::with_ack_timeout`] sets).
//!
//! A front-end that does not answer in time gets [`ClientError::AckTimeout`], and the
//! channel is then given up ([`ClientError::ChannelBroken`] for every later request): an
//! answer arriving late would otherwise be read as the answer to the next request. Giving
//! it up closes this end of the socket, so the front-end sees the channel hang up rather
//! than wait on an open socket that no longer carries requests;
//! [`BackendClient::is_broken`] tells the device.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use vhost_proto::{
    decode_backend_reply, BackendReq, BackendRequest, Header, HeaderFlags, IotlbMsg, MessageKind,
    Negotiation, Owed, SharedObject, ShmemMap, VringArea, VringState, MAX_BODY_SIZE,
};
use vhost_transport::{BackendChannel, BorrowedDescriptor, Connection, OwnedDescriptor};

/// Why a back-end request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The request is not allowed by what was negotiated (or malformed).
    #[error(transparent)]
    Protocol(#[from] vhost_proto::Error),
    /// The channel failed.
    #[error(transparent)]
    Transport(#[from] vhost_transport::Error),
    /// The front-end did not answer within the ack timeout. The channel is given up.
    #[error("{request}: no answer from the front-end within {waited:?}")]
    AckTimeout {
        /// The request.
        request: &'static str,
        /// How long the client waited.
        waited: Duration,
    },
    /// An earlier request's answer did not come in time, so the channel is out of step and
    /// no longer used.
    #[error("the back-end channel was given up after an unanswered request")]
    ChannelBroken,
    /// The front-end answered with a non-zero status.
    #[error("{request} refused by the front-end with status {status}")]
    Refused {
        /// The request.
        request: &'static str,
        /// The front-end's status.
        status: u64,
    },
}

/// The session's negotiation, shared between the server (which updates it as features are
/// acked) and the back-end channel (which reads it to gate and ack its requests).
pub type SharedNegotiation = Arc<Mutex<Negotiation>>;

/// How long a request waits for the front-end's answer by default: QEMU answers back-end
/// requests from its main loop, which a busy guest or a migration may hold up for a while,
/// but not for this long.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// The channel and what the client knows of it.
struct Channel {
    /// `None` once given up (an answer did not come in time, so the channel is out of step):
    /// dropping the connection closed the socket.
    conn: Option<Connection<BackendChannel>>,
    /// The read timeout set on `conn` (`None`: none set yet, or none wanted).
    read_timeout: Option<Duration>,
}

/// A handle on the back-end channel. Cheap to clone (clones share the channel and keep
/// their ack timeout); each request holds the channel for its round trip, so requests from
/// several worker threads do not interleave.
#[derive(Clone)]
pub struct BackendClient {
    channel: Arc<Mutex<Channel>>,
    negotiation: SharedNegotiation,
    ack_timeout: Option<Duration>,
}

impl std::fmt::Debug for BackendClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendClient").finish_non_exhaustive()
    }
}

impl BackendClient {
    /// A client over `conn`. `negotiation` is the session's live negotiation: the channel is
    /// handed over before SET_FEATURES, so gates and acks are decided when each request is
    /// sent, not when the channel arrived.
    pub fn new(conn: Connection<BackendChannel>, negotiation: SharedNegotiation) -> Self {
        BackendClient {
            channel: Arc::new(Mutex::new(Channel {
                conn: Some(conn),
                read_timeout: None,
            })),
            negotiation,
            ack_timeout: Some(DEFAULT_ACK_TIMEOUT),
        }
    }

    /// This client with another ack timeout: how long a request waits for the front-end's
    /// answer (`None`: forever; a zero duration is taken as `None`). Default:
    /// [`DEFAULT_ACK_TIMEOUT`].
    pub fn with_ack_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.ack_timeout = timeout.filter(|t| !t.is_zero());
        self
    }

    /// The ack timeout of this handle.
    pub fn ack_timeout(&self) -> Option<Duration> {
        self.ack_timeout
    }

    /// Whether the channel was given up (after a request went unanswered): its socket is
    /// closed, every request fails with [`ClientError::ChannelBroken`], and only a new
    /// channel from the front-end (another SET_BACKEND_REQ_FD) brings requests back.
    /// Clones share the answer.
    pub fn is_broken(&self) -> bool {
        self.channel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .conn
            .is_none()
    }

    /// Sends one request with its descriptors. Returns the front-end's u64 answer and the
    /// descriptor it attached, when the request owes a reply or an ack was asked for;
    /// `Ok(None)` when nothing comes back. A non-zero ack is [`ClientError::Refused`].
    pub fn request(
        &self,
        req: &BackendRequest,
        fds: &[BorrowedDescriptor<'_>],
    ) -> Result<Option<(u64, Option<OwnedDescriptor>)>, ClientError> {
        let code = req.code();
        let negotiation = self
            .negotiation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        negotiation.allows_backend(code)?;
        let need_reply = negotiation.reply_ack();
        let flags = if need_reply {
            HeaderFlags::NEED_REPLY
        } else {
            HeaderFlags::empty()
        };
        let mut body = vec![0u8; code.spec().body.max_size()];
        let enc = req.encode(flags, &mut body)?;
        if fds.len() != req.fd_count() {
            return Err(vhost_proto::Error::UnexpectedFds {
                request: MessageKind::Backend(code),
                expected: "as many as the request carries",
                got: fds.len(),
            }
            .into());
        }
        let mut channel = self.channel.lock().unwrap_or_else(PoisonError::into_inner);
        let Channel { conn, read_timeout } = &mut *channel;
        let Some(live) = conn.as_ref() else {
            return Err(ClientError::ChannelBroken);
        };
        let owed = negotiation.backend_owes(code, need_reply);
        if owed != Owed::Nothing && *read_timeout != self.ack_timeout {
            live.set_read_timeout(self.ack_timeout)?;
            *read_timeout = self.ack_timeout;
        }
        live.send(&enc.header.to_wire(), &body[..enc.body_len], &[], fds)?;
        if owed == Owed::Nothing {
            return Ok(None);
        }
        let (body, mut rfds) = match self.read_answer(live, code) {
            Ok(answer) => answer,
            Err(e) => {
                // No answer, part of one, or not this request's: the next answer read would
                // not be the next request's. Closing the socket tells the front-end.
                log::warn!("back-end channel given up and closed: {e}");
                *conn = None;
                return Err(e);
            }
        };
        let value = decode_backend_reply(code, &body, rfds.len())?;
        if value != 0 && code != BackendReq::SharedObjectLookup {
            return Err(ClientError::Refused {
                request: code.name(),
                status: value,
            });
        }
        Ok(Some((value, rfds.pop())))
    }

    /// Reads the front-end's answer to `code`: its body and descriptors.
    fn read_answer(
        &self,
        conn: &Connection<BackendChannel>,
        code: BackendReq,
    ) -> Result<(Vec<u8>, Vec<OwnedDescriptor>), ClientError> {
        let (hdr, rfds) = conn.recv_header().map_err(|e| match e {
            vhost_transport::Error::TimedOut => ClientError::AckTimeout {
                request: code.name(),
                waited: self.ack_timeout.unwrap_or_default(),
            },
            e => e.into(),
        })?;
        let hdr = Header::from_wire(&hdr);
        hdr.check_reply(MessageKind::Backend(code))?;
        let size = hdr.size as usize;
        if size > MAX_BODY_SIZE {
            return Err(vhost_proto::Error::BodyTooLarge {
                request: MessageKind::Backend(code),
                size: hdr.size,
                max: MAX_BODY_SIZE,
            }
            .into());
        }
        Ok((conn.recv_body(size)?, rfds))
    }

    fn simple(
        &self,
        req: BackendRequest,
        fds: &[BorrowedDescriptor<'_>],
    ) -> Result<(), ClientError> {
        self.request(&req, fds).map(|_| ())
    }

    /// [`BackendClient::shared_object_lookup`], whose row goes `via lookup`: the u64 status
    /// comes back whatever was negotiated, zero with the descriptor.
    fn lookup(&self, uuid: [u8; 16]) -> Result<Option<OwnedDescriptor>, ClientError> {
        match self.request(
            &BackendRequest::SharedObjectLookup(SharedObject { uuid }),
            &[],
        )? {
            Some((0, fd)) => Ok(fd),
            Some((status, _)) => Err(ClientError::Refused {
                request: BackendReq::SharedObjectLookup.name(),
                status,
            }),
            None => Ok(None),
        }
    }
}

/// BACKEND_VRING_HOST_NOTIFIER_MSG's body: the ring index, with NOFD when unmapping.
fn host_notifier_area(index: u8, size: u64, offset: u64, nofd: bool) -> VringArea {
    let flags = if nofd {
        vhost_proto::wire::VRING_NOFD
    } else {
        0
    };
    VringArea {
        u64_index_flags: u64::from(index) | flags,
        size,
        offset,
    }
}

/// Generates the [`BackendClient`] method of every back-end request from the
/// `=> client(...)` clause of each row of [`vhost_proto::for_each_backend_request!`]:
/// `fn method(name: Type, ...) -> Output = simple(body) with fds` sends the row's request
/// holding `body` (absent without a body) with the descriptors `fds` (none without `with`)
/// and waits for the ack if one is owed; `= via helper` hands the arguments to the private
/// method `helper` of a request whose reply is its own. A row without the clause does not
/// compile.
macro_rules! client_rows {
    ($($(#[$m:meta])* $v:ident $(($($body:tt)*))? = $code:literal => $spec:expr
        => handler($($handler:tt)*) => client($($client:tt)*);)*) => {
        impl BackendClient {
            $(client_rows!(@method $v $($client)*);)*
        }
    };
    (@method $v:ident $(#[$d:meta])* fn $name:ident($($arg:ident : $aty:ty),*) -> $ret:ty
        = via $helper:ident) => {
        $(#[$d])*
        pub fn $name(&self, $($arg: $aty),*) -> Result<$ret, ClientError> {
            self.$helper($($arg),*)
        }
    };
    (@method $v:ident $(#[$d:meta])* fn $name:ident($($arg:ident : $aty:ty),*) -> $ret:ty
        = simple $(($body:expr))? $(with $fds:expr)?) => {
        $(#[$d])*
        pub fn $name(&self, $($arg: $aty),*) -> Result<$ret, ClientError> {
            let msg = BackendRequest::$v $(($body))?;
            self.simple(msg, client_rows!(@fds $($fds)?))
        }
    };
    (@fds) => { &[] };
    (@fds $fds:expr) => { $fds };
}

vhost_proto::for_each_backend_request!(client_rows);

#[cfg(all(test, unix))]
mod tests {
    use std::time::Instant;

    use vhost_proto::{encode_backend_reply, FrontendRequest, ProtocolFeatures};

    use super::*;

    /// A client whose negotiation acked BACKEND_REQ, REPLY_ACK and the protocol features
    /// of the requests sent here, and the front-end's end of its channel.
    fn client() -> (BackendClient, Connection<BackendChannel>) {
        let protocol = ProtocolFeatures::BACKEND_REQ
            | ProtocolFeatures::REPLY_ACK
            | ProtocolFeatures::CONFIG
            | ProtocolFeatures::INBAND_NOTIFICATIONS
            | ProtocolFeatures::SHARED_OBJECT;
        let mut neg = Negotiation::new(1 << 30, protocol, 1);
        neg.apply(&FrontendRequest::SetFeatures(1 << 30));
        neg.apply(&FrontendRequest::SetProtocolFeatures(protocol.bits()));
        let (frontend, backend) = Connection::<BackendChannel>::pair().unwrap();
        (
            BackendClient::new(backend, Arc::new(Mutex::new(neg))),
            frontend,
        )
    }

    /// Reads one request on the front-end's end: its code and body length.
    fn receive(frontend: &Connection<BackendChannel>) -> (BackendReq, usize) {
        let (wire, _) = frontend.recv_header().unwrap();
        let header = Header::from_wire(&wire);
        let code = header.check_backend_request().unwrap();
        assert!(header.need_reply(), "REPLY_ACK: NEED_REPLY is set");
        let body = frontend.recv_body(header.size as usize).unwrap();
        (code, body.len())
    }

    #[test]
    fn a_front_end_that_never_acks_times_out_and_the_channel_is_given_up() {
        let (client, frontend) = client();
        assert_eq!(client.ack_timeout(), Some(DEFAULT_ACK_TIMEOUT));
        let client = client.with_ack_timeout(Some(Duration::from_millis(200)));
        let start = Instant::now();
        let err = client.config_change().unwrap_err();
        let waited = start.elapsed();
        assert!(
            matches!(
                err,
                ClientError::AckTimeout {
                    request: "BACKEND_CONFIG_CHANGE_MSG",
                    waited,
                } if waited == Duration::from_millis(200)
            ),
            "{err:?}"
        );
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        // The request did go out; the front-end's late ack is never taken for the answer to
        // a later request.
        assert_eq!(receive(&frontend), (BackendReq::ConfigChangeMsg, 0));
        let mut out = [0u8; 8];
        let ack = encode_backend_reply(BackendReq::ConfigChangeMsg, 0, &mut out).unwrap();
        // The back-end closed its end when it gave up, so the late ack may not even go out.
        let _ = frontend.send(&ack.header.to_wire(), &out[..ack.body_len], &[], &[]);
        // Clones share the channel, so they see it given up too.
        let err = client.clone().vring_call(0).unwrap_err();
        assert!(matches!(err, ClientError::ChannelBroken), "{err:?}");
    }

    #[test]
    fn after_an_ack_timeout_the_front_end_sees_the_channel_hang_up() {
        let (client, frontend) = client();
        let client = client.with_ack_timeout(Some(Duration::from_millis(100)));
        assert!(!client.is_broken());
        let err = client.vring_call(0).unwrap_err();
        assert!(matches!(err, ClientError::AckTimeout { .. }), "{err:?}");
        assert!(client.is_broken() && client.clone().is_broken());
        // The request went out, then the channel closed: the front-end reads end of file
        // instead of waiting for requests that will never come.
        assert_eq!(receive(&frontend), (BackendReq::VringCall, 8));
        frontend
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let end = frontend.recv_header().unwrap_err();
        assert!(
            matches!(end, vhost_transport::Error::Disconnected),
            "{end:?}"
        );
    }

    #[test]
    fn requests_are_encoded_at_their_own_size_and_acked_within_the_timeout() {
        let (client, frontend) = client();
        let frontend = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for _ in 0..2 {
                let (code, len) = receive(&frontend);
                seen.push((code, len));
                let mut out = [0u8; 8];
                let ack = encode_backend_reply(code, 0, &mut out).unwrap();
                frontend
                    .send(&ack.header.to_wire(), &out[..ack.body_len], &[], &[])
                    .unwrap();
            }
            seen
        });
        client.vring_call(1).unwrap();
        client.shared_object_remove([7; 16]).unwrap();
        let seen = frontend.join().unwrap();
        assert_eq!(
            seen,
            [
                (BackendReq::VringCall, 8),
                (BackendReq::SharedObjectRemove, 16)
            ]
        );
    }
}
