//! The back-end → front-end channel (SET_BACKEND_REQ_FD): every back-end request of the
//! specification, sent from any thread, waiting for the ack when REPLY_ACK is negotiated.

use std::sync::{Arc, Mutex, PoisonError};

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

/// A handle on the back-end channel. Cheap to clone; each request holds the channel for its
/// round trip, so requests from several worker threads do not interleave.
#[derive(Clone)]
pub struct BackendClient {
    channel: Arc<Mutex<Connection<BackendChannel>>>,
    negotiation: SharedNegotiation,
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
            channel: Arc::new(Mutex::new(conn)),
            negotiation,
        }
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
        let mut body = [0u8; 64];
        let enc = req.encode(flags, &mut body)?;
        if fds.len() != req.fd_count() {
            return Err(vhost_proto::Error::UnexpectedFds {
                request: MessageKind::Backend(code),
                expected: "as many as the request carries",
                got: fds.len(),
            }
            .into());
        }
        let conn = self.channel.lock().unwrap_or_else(PoisonError::into_inner);
        conn.send(&enc.header.to_wire(), &body[..enc.body_len], &[], fds)?;
        match negotiation.backend_owes(code, need_reply) {
            Owed::Nothing => Ok(None),
            Owed::Ack | Owed::Reply(_) => {
                let (hdr, mut rfds) = conn.recv_header()?;
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
                let body = conn.recv_body(size)?;
                let value = decode_backend_reply(code, &body, rfds.len())?;
                if value != 0 && code != BackendReq::SharedObjectLookup {
                    return Err(ClientError::Refused {
                        request: code.name(),
                        status: value,
                    });
                }
                Ok(Some((value, rfds.pop())))
            }
        }
    }

    fn simple(
        &self,
        req: BackendRequest,
        fds: &[BorrowedDescriptor<'_>],
    ) -> Result<(), ClientError> {
        self.request(&req, fds).map(|_| ())
    }

    /// BACKEND_IOTLB_MSG: report an IOTLB miss or access failure.
    pub fn iotlb_msg(&self, msg: IotlbMsg) -> Result<(), ClientError> {
        self.simple(BackendRequest::IotlbMsg(msg), &[])
    }

    /// BACKEND_CONFIG_CHANGE_MSG: the device configuration changed.
    pub fn config_change(&self) -> Result<(), ClientError> {
        self.simple(BackendRequest::ConfigChangeMsg, &[])
    }

    /// BACKEND_VRING_HOST_NOTIFIER_MSG: map `fd` (or unmap, with `None`) as the host
    /// notifier of a ring.
    pub fn vring_host_notifier(
        &self,
        index: u8,
        size: u64,
        offset: u64,
        fd: Option<BorrowedDescriptor<'_>>,
    ) -> Result<(), ClientError> {
        let flags = if fd.is_none() {
            vhost_proto::wire::VRING_NOFD
        } else {
            0
        };
        let area = VringArea {
            u64_index_flags: u64::from(index) | flags,
            size,
            offset,
        };
        let fds: Vec<BorrowedDescriptor<'_>> = fd.into_iter().collect();
        self.simple(BackendRequest::VringHostNotifierMsg(area), &fds)
    }

    /// BACKEND_VRING_CALL: an in-band call.
    pub fn vring_call(&self, index: u32) -> Result<(), ClientError> {
        self.simple(BackendRequest::VringCall(VringState { index, num: 0 }), &[])
    }

    /// BACKEND_VRING_ERR: an in-band error notification.
    pub fn vring_err(&self, index: u32) -> Result<(), ClientError> {
        self.simple(BackendRequest::VringErr(VringState { index, num: 0 }), &[])
    }

    /// BACKEND_SHARED_OBJECT_ADD.
    pub fn shared_object_add(&self, uuid: [u8; 16]) -> Result<(), ClientError> {
        self.simple(BackendRequest::SharedObjectAdd(SharedObject { uuid }), &[])
    }

    /// BACKEND_SHARED_OBJECT_REMOVE.
    pub fn shared_object_remove(&self, uuid: [u8; 16]) -> Result<(), ClientError> {
        self.simple(
            BackendRequest::SharedObjectRemove(SharedObject { uuid }),
            &[],
        )
    }

    /// BACKEND_SHARED_OBJECT_LOOKUP: the object's fd, if the front-end knows it.
    pub fn shared_object_lookup(
        &self,
        uuid: [u8; 16],
    ) -> Result<Option<OwnedDescriptor>, ClientError> {
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

    /// BACKEND_SHMEM_MAP: map a range of `fd` into a shared memory region.
    pub fn shmem_map(&self, map: ShmemMap, fd: BorrowedDescriptor<'_>) -> Result<(), ClientError> {
        self.simple(BackendRequest::ShmemMap(map), &[fd])
    }

    /// BACKEND_SHMEM_UNMAP.
    pub fn shmem_unmap(&self, map: ShmemMap) -> Result<(), ClientError> {
        self.simple(BackendRequest::ShmemUnmap(map), &[])
    }
}
