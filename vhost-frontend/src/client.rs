//! The front-end's side of the control connection: one typed method per front-end request of
//! the specification (codes 1–44), with typed replies.
//!
//! [`Frontend`] keeps its own view of the negotiation (a [`Negotiation`] that records what was
//! acked), so it knows what each request owes:
//! - requests that always reply (GET_FEATURES, GET_VRING_BASE, GET_CONFIG, ...) wait for
//!   their reply, whose header, code, size and descriptor count are checked before anything
//!   is believed: the back-end is untrusted too;
//! - other requests are sent with NEED_REPLY once REPLY_ACK is acked (unless turned off with
//!   [`Frontend::set_request_acks`]) and then wait for the u64 ack; a non-zero ack is
//!   [`FrontendError::Nack`];
//! - IOTLB_MSG always carries NEED_REPLY, as QEMU sends it, and waits for its u64 status.
//!
//! Arguments that would make a message the back-end must refuse (a configuration payload
//! over 256 bytes or past offset 0x1000, a crypto session payload over 1024 bytes, a
//! descriptor count that does not match) are [`FrontendError::InvalidArgument`], before
//! anything is sent.
//!
//! Send and receive buffers are allocated once, with the client. A reply that could not be
//! read completely leaves the stream out of step: the client then answers every request with
//! [`FrontendError::Broken`]. [`Frontend::send_raw`] and [`Frontend::recv_raw`] bypass all of
//! this for tests that play a hostile front-end.
//!
//! ```no_run
//! # fn main() -> Result<(), vhost_frontend::FrontendError> {
//! use vhost_frontend::Frontend;
//! let mut fe = Frontend::connect("/tmp/vhost.sock")?;
//! let features = fe.get_features()?;
//! let protocol = fe.get_protocol_features()?;
//! fe.set_protocol_features(protocol)?;
//! fe.set_owner()?;
//! fe.set_features(features)?;
//! # Ok(()) }
//! ```

mod error;
mod requests;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use vhost_proto::{
    FrontendReply, FrontendReq, FrontendRequest, Header, HeaderFlags, MemTable, MessageKind,
    Negotiation, Owed, Owes, ProtocolFeatures, RegionMsg, ReplyShape, MAX_BODY_SIZE,
};
use vhost_transport::{Connection, FrontendChannel};

pub use error::{FrontendError, Result};

/// A reply SET_MEM_TABLE or ADD_MEM_REG sent while postcopy was listening: the back-end's
/// own addresses for the regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum PostcopyReply {
    /// The reply to SET_MEM_TABLE.
    MemTable(MemTable),
    /// The reply to ADD_MEM_REG.
    Region(RegionMsg),
}

/// A reply that does not answer `request`: `why`.
fn invalid_reply(request: FrontendReq, why: &'static str) -> FrontendError {
    FrontendError::InvalidReply { request, why }
}

/// A reply read into the receive buffer, not yet decoded.
struct RawReply {
    shape: ReplyShape,
    len: usize,
    fds: Vec<OwnedFd>,
}

/// The front-end client over one control connection. See the [module docs](self).
pub struct Frontend {
    conn: Connection<FrontendChannel>,
    negotiation: Negotiation,
    /// The copy of `negotiation` a back-end channel thread reads, once there is one;
    /// refreshed whenever what is acked changes.
    shared: Option<Arc<Mutex<Negotiation>>>,
    offered_features: Option<u64>,
    offered_protocol: Option<ProtocolFeatures>,
    request_acks: bool,
    broken: bool,
    postcopy_reply: Option<PostcopyReply>,
    tx: Box<[u8; MAX_BODY_SIZE]>,
    rx: Box<[u8; MAX_BODY_SIZE]>,
}

impl std::fmt::Debug for Frontend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frontend")
            .field("conn", &self.conn)
            .field("negotiation", &self.negotiation)
            .field("request_acks", &self.request_acks)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl Frontend {
    /// A client over an established connection (for example one end of
    /// [`Connection::pair`]).
    pub fn new(conn: Connection<FrontendChannel>) -> Self {
        Frontend {
            conn,
            // The front-end does not police what the back-end offered: the back-end does.
            // This value only records what was acked, for REPLY_ACK and postcopy.
            negotiation: Negotiation::new(u64::MAX, ProtocolFeatures::all(), u32::MAX),
            shared: None,
            offered_features: None,
            offered_protocol: None,
            request_acks: true,
            broken: false,
            postcopy_reply: None,
            tx: Box::new([0; MAX_BODY_SIZE]),
            rx: Box::new([0; MAX_BODY_SIZE]),
        }
    }

    /// Connects to a back-end listening at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self::new(Connection::connect(path)?))
    }

    /// Bounds how long a reply may take (`None`: forever). A back-end that does not answer in
    /// time gives [`vhost_transport::Error::TimedOut`], after which the client is broken.
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        Ok(self.conn.set_read_timeout(timeout)?)
    }

    /// Whether requests that owe nothing are sent with NEED_REPLY (and their ack awaited)
    /// once REPLY_ACK is acked. On by default.
    pub fn set_request_acks(&mut self, on: bool) {
        self.request_acks = on;
    }

    /// See [`Frontend::set_request_acks`].
    pub fn request_acks(&self) -> bool {
        self.request_acks
    }

    /// The client's view of the negotiation: acked virtio and protocol features, postcopy.
    pub fn negotiation(&self) -> &Negotiation {
        &self.negotiation
    }

    /// Virtio features the back-end offered in its last GET_FEATURES reply.
    pub fn offered_features(&self) -> Option<u64> {
        self.offered_features
    }

    /// Protocol features the back-end offered in its last GET_PROTOCOL_FEATURES reply.
    pub fn offered_protocol(&self) -> Option<ProtocolFeatures> {
        self.offered_protocol
    }

    /// Virtio features acked by the last successful SET_FEATURES.
    pub fn acked_features(&self) -> u64 {
        self.negotiation.acked_features()
    }

    /// Protocol features acked by the last successful SET_PROTOCOL_FEATURES.
    pub fn acked_protocol(&self) -> ProtocolFeatures {
        self.negotiation.acked_protocol()
    }

    /// True once REPLY_ACK is acked.
    pub fn reply_ack(&self) -> bool {
        self.negotiation.reply_ack()
    }

    /// True when an earlier exchange left the stream out of step.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The reply of the last SET_MEM_TABLE or ADD_MEM_REG sent while postcopy listened.
    pub fn take_postcopy_reply(&mut self) -> Option<PostcopyReply> {
        self.postcopy_reply.take()
    }

    /// The connection, for raw access.
    pub fn connection(&self) -> &Connection<FrontendChannel> {
        &self.conn
    }

    /// Gives the connection back.
    pub fn into_connection(self) -> Connection<FrontendChannel> {
        self.conn
    }

    /// Sends one message exactly as given, without any check: for tests that play a hostile
    /// front-end. The client's negotiation view does not change.
    pub fn send_raw(&self, header: &Header, body: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
        Ok(self.conn.send(&header.to_wire(), body, &[], fds)?)
    }

    /// Receives one message without validating it: header, body (at most
    /// [`MAX_BODY_SIZE`] bytes, refused before allocating) and descriptors.
    pub fn recv_raw(&self) -> Result<(Header, Vec<u8>, Vec<OwnedFd>)> {
        let (hdr, fds) = self.conn.recv_header()?;
        let header = Header::from_wire(&hdr);
        let body = self.conn.recv_body(header.size as usize)?;
        Ok((header, body, fds))
    }

    /// Sends `msg` with `fds` and reads what it owes. `Ok(None)`: nothing is owed, or the ack
    /// came back zero. `Some`: a reply in the receive buffer.
    fn exchange(
        &mut self,
        msg: &FrontendRequest<'_>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<Option<RawReply>> {
        if self.broken {
            return Err(FrontendError::Broken);
        }
        let code = msg.code();
        if fds.len() != msg.fd_count() {
            return Err(FrontendError::InvalidArgument {
                request: code,
                why: "descriptor count does not match the request",
            });
        }
        // IOTLB_MSG always replies, and QEMU always asks for it: NEED_REPLY goes with it
        // whatever was negotiated.
        let need_reply = code == FrontendReq::IotlbMsg
            || self.request_acks && self.negotiation.reply_ack() && code.spec().owes != Owes::Reply;
        let flags = if need_reply {
            HeaderFlags::NEED_REPLY
        } else {
            HeaderFlags::empty()
        };
        // Nothing is sent for a message the back-end's decoder would refuse.
        let enc = msg.encode(flags, &mut self.tx[..]).map_err(|e| match e {
            vhost_proto::Error::InvalidField { why, .. } => {
                FrontendError::InvalidArgument { request: code, why }
            }
            e => FrontendError::Protocol(e),
        })?;
        let sent = self.conn.send(
            &enc.header.to_wire(),
            &self.tx[..enc.body_len],
            enc.payload,
            fds,
        );
        if let Err(e) = sent {
            self.broken = !matches!(e, vhost_transport::Error::TooManyFds { .. });
            return Err(e.into());
        }
        log::trace!("sent {} (need_reply {need_reply})", code.name());
        match self.negotiation.owes(code, need_reply) {
            Owed::Nothing => {
                self.apply(msg);
                Ok(None)
            }
            Owed::Ack => {
                let reply = self.read_reply(code, ReplyShape::U64)?;
                let status = self.decode_u64(code, &reply, "ack is not a u64")?;
                if status != 0 {
                    return Err(FrontendError::Nack {
                        request: code,
                        status,
                    });
                }
                self.apply(msg);
                Ok(None)
            }
            Owed::Reply(shape) => {
                let reply = self.read_reply(code, shape)?;
                self.apply(msg);
                Ok(Some(reply))
            }
        }
    }

    /// Records the effect of a request the back-end took, in the client's view and in the
    /// back-end channel's copy.
    fn apply(&mut self, msg: &FrontendRequest<'_>) {
        let before = (
            self.negotiation.acked_features(),
            self.negotiation.acked_protocol(),
        );
        self.negotiation.apply(msg);
        let after = (
            self.negotiation.acked_features(),
            self.negotiation.acked_protocol(),
        );
        if let Some(shared) = self.shared.as_ref().filter(|_| before != after) {
            *shared.lock().unwrap_or_else(PoisonError::into_inner) = self.negotiation.clone();
        }
    }

    /// The negotiation as the back-end channel sees it: kept up to date with what this
    /// client acks from now on.
    pub(crate) fn shared_negotiation(&mut self) -> Arc<Mutex<Negotiation>> {
        if let Some(shared) = &self.shared {
            *shared.lock().unwrap_or_else(PoisonError::into_inner) = self.negotiation.clone();
            return Arc::clone(shared);
        }
        let shared = Arc::new(Mutex::new(self.negotiation.clone()));
        self.shared = Some(Arc::clone(&shared));
        shared
    }

    /// Reads a reply to `code` into the receive buffer. Any failure here breaks the client.
    fn read_reply(&mut self, code: FrontendReq, shape: ReplyShape) -> Result<RawReply> {
        let res = (|| {
            let (hdr, fds) = self.conn.recv_header()?;
            let header = Header::from_wire(&hdr);
            // Version, REPLY, same code, size within MAX_BODY_SIZE: before any body is read.
            header.check_reply(MessageKind::Frontend(code))?;
            let len = header.size as usize;
            let buf = self
                .rx
                .get_mut(..len)
                .ok_or(invalid_reply(code, "reply larger than the receive buffer"))?;
            self.conn.recv_body_into(buf)?;
            Ok(RawReply { shape, len, fds })
        })();
        if res.is_err() {
            self.broken = true;
        }
        res
    }

    /// Decodes a reply read by [`Frontend::read_reply`] (layout and descriptor count).
    fn decode(&self, code: FrontendReq, reply: &RawReply) -> Result<FrontendReply<'_>> {
        Ok(FrontendReply::decode(
            code,
            reply.shape,
            &self.rx[..reply.len],
            reply.fds.len(),
            self.negotiation.decode_context(),
        )?)
    }

    /// Sends a request that always replies and returns the reply, undecoded.
    fn reply_of(&mut self, msg: FrontendRequest<'_>, fds: &[BorrowedFd<'_>]) -> Result<RawReply> {
        let code = msg.code();
        self.exchange(&msg, fds)?
            .ok_or(invalid_reply(code, "no reply where one is owed"))
    }

    /// Decodes a u64 reply; `why` names what else came.
    fn decode_u64(&self, code: FrontendReq, reply: &RawReply, why: &'static str) -> Result<u64> {
        match self.decode(code, reply)? {
            FrontendReply::U64(v) => Ok(v),
            _ => Err(invalid_reply(code, why)),
        }
    }

    /// Sends a request that owes nothing or an ack (or, in postcopy, a memory-table reply).
    fn simple(&mut self, msg: FrontendRequest<'_>, fds: &[BorrowedFd<'_>]) -> Result<()> {
        let code = msg.code();
        let Some(reply) = self.exchange(&msg, fds)? else {
            return Ok(());
        };
        let postcopy = match self.decode(code, &reply)? {
            FrontendReply::MemTable(t) => PostcopyReply::MemTable(t),
            FrontendReply::SingleRegion(r) => PostcopyReply::Region(r),
            FrontendReply::U64(0) => return Ok(()),
            FrontendReply::U64(status) => {
                return Err(FrontendError::Nack {
                    request: code,
                    status,
                })
            }
            _ => return Err(invalid_reply(code, "unexpected reply shape")),
        };
        self.postcopy_reply = Some(postcopy);
        Ok(())
    }

    /// Sends a request whose reply is a u64 value and returns it (with any descriptor).
    fn u64_value(
        &mut self,
        msg: FrontendRequest<'_>,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(u64, Option<OwnedFd>)> {
        let code = msg.code();
        let mut reply = self.reply_of(msg, fds)?;
        let value = self.decode_u64(code, &reply, "reply is not a u64")?;
        Ok((value, reply.fds.pop()))
    }

    /// Sends a request whose reply is a u64 status: zero is success, anything else a nack.
    fn u64_status(&mut self, msg: FrontendRequest<'_>, fds: &[BorrowedFd<'_>]) -> Result<()> {
        let code = msg.code();
        match self.u64_value(msg, fds)?.0 {
            0 => Ok(()),
            status => Err(FrontendError::Nack {
                request: code,
                status,
            }),
        }
    }
}

impl AsFd for Frontend {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.conn.as_fd()
    }
}
