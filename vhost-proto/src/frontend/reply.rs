//! Replies from the back-end: a u64 (features, counts, statuses, acks), a vring state, a
//! configuration, a crypto session, an inflight description, the shared memory
//! configuration, the postcopy forms of the memory table and of one region, or nothing
//! with a descriptor. A reply's header has the REPLY flag (bit 2) set.

use super::{Config, CryptoSession, DecodeContext, Encoded, MemTable, RegionMsg};
use crate::codec::{check_fds, expect_empty, put, read_exact};
use crate::table::{FdPolicy, ReplyShape};
use crate::wire::*;
use crate::{Error, FrontendReq, FrontendRequest, Header, HeaderFlags, MessageKind};
use zerocopy::FromBytes;

/// A reply from the back-end to a front-end request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum FrontendReply<'a> {
    /// A u64: features, counts, status, or an ack (0 success).
    U64(u64),
    /// GET_VRING_BASE.
    VringState(VringState),
    /// GET_CONFIG: an empty payload means failure.
    Config(Config<'a>),
    /// CREATE_CRYPTO_SESSION: a negative id means failure.
    CryptoSession(CryptoSession<'a>),
    /// GET_INFLIGHT_FD (with an fd unless `mmap_size` is 0).
    Inflight(Inflight),
    /// GET_SHMEM_CONFIG.
    ShmemConfig(Box<ShmemConfig>),
    /// SET_MEM_TABLE in postcopy: the table with the back-end's addresses.
    MemTable(MemTable),
    /// ADD_MEM_REG in postcopy: the region with the back-end's address.
    SingleRegion(RegionMsg),
    /// POSTCOPY_ADVISE: no body, the userfaultfd attached.
    Empty,
}

impl<'a> FrontendReply<'a> {
    /// Decodes the body of a reply of shape `shape` to `req`. `nfds` is checked: at most one
    /// descriptor, and only where the reply may carry one.
    pub fn decode(
        req: FrontendReq,
        shape: ReplyShape,
        body: &'a [u8],
        nfds: usize,
        ctx: DecodeContext,
    ) -> Result<Self, Error> {
        let kind = MessageKind::Frontend(req);
        let spec = req.spec();
        let policy = if spec.reply_fd && shape == spec.reply {
            FdPolicy::NoneOrOne
        } else {
            FdPolicy::None
        };
        check_fds(policy, nfds, kind, false, 0)?;
        Ok(match shape {
            ReplyShape::U64 => FrontendReply::U64(read_exact::<U64Body>(body, kind)?.value),
            ReplyShape::VringState => FrontendReply::VringState(read_exact(body, kind)?),
            ReplyShape::Config => FrontendReply::Config(Config::decode(body, kind, true)?),
            ReplyShape::CryptoSession => {
                FrontendReply::CryptoSession(CryptoSession::decode(body, kind)?)
            }
            ReplyShape::Inflight => FrontendReply::Inflight(read_exact(body, kind)?),
            ReplyShape::ShmemConfig => {
                FrontendReply::ShmemConfig(Box::new(read_exact::<ShmemConfig>(body, kind)?))
            }
            ReplyShape::MemTable => FrontendReply::MemTable(MemTable::decode(body, None, ctx)?),
            ReplyShape::SingleRegion => {
                FrontendReply::SingleRegion(RegionMsg::decode(body, kind, ctx)?)
            }
            ReplyShape::EmptyWithFd => {
                expect_empty(body, kind)?;
                FrontendReply::Empty
            }
        })
    }

    /// Encodes this reply to `req` into `body`; the header has REPLY set. Payloads the
    /// decoder would refuse are refused as in [`FrontendRequest::encode`].
    pub fn encode(&self, req: FrontendReq, body: &mut [u8]) -> Result<Encoded<'a>, Error> {
        let mut payload: &'a [u8] = &[];
        let n = match self {
            FrontendReply::U64(v) => put(body, &U64Body { value: *v })?,
            FrontendReply::VringState(s) => put(body, s)?,
            FrontendReply::Config(c) => {
                c.check(MessageKind::Frontend(req), true)?;
                payload = c.payload;
                put(body, &c.header())?
            }
            FrontendReply::CryptoSession(c) => {
                payload = c.payload;
                c.encode(MessageKind::Frontend(req), body)?
            }
            FrontendReply::Inflight(i) => put(body, i)?,
            FrontendReply::ShmemConfig(s) => put(body, s.as_ref())?,
            FrontendReply::MemTable(t) => t.encode(body)?,
            FrontendReply::SingleRegion(m) => m.encode(body)?,
            FrontendReply::Empty => 0,
        };
        Ok(Encoded::new(req as u32, HeaderFlags::REPLY, n, payload))
    }

    /// The failure form the specification gives for a reply of shape `shape` to `request`,
    /// if it has one. `None` means a failure cannot be reported in-band: the connection must
    /// be closed. Read from the request's declaration
    /// ([`RequestSpec`](crate::RequestSpec)`::failure`); GET_CONFIG's echoes the
    /// offset and flags asked for.
    pub fn failure(request: &FrontendRequest<'a>, shape: ReplyShape) -> Option<Self> {
        let config = match request {
            FrontendRequest::GetConfig(c) => c.header(),
            _ => ConfigHeader::default(),
        };
        Self::failure_form(request.code(), shape, config)
    }

    /// [`FrontendReply::failure`] for a request whose body did not decode: only its code is
    /// known, and the offset and flags of a GET_CONFIG are read from the body where it holds
    /// them.
    pub fn failure_of(req: FrontendReq, shape: ReplyShape, body: &[u8]) -> Option<Self> {
        let (config, _) = ConfigHeader::read_from_prefix(body).unwrap_or_default();
        Self::failure_form(req, shape, config)
    }

    fn failure_form(req: FrontendReq, shape: ReplyShape, config: ConfigHeader) -> Option<Self> {
        let spec = req.spec();
        match shape {
            // Replies that carry a value, not a status, have no failure form.
            ReplyShape::U64 => spec.failure.map(FrontendReply::U64),
            // The specification: a zero-size payload reports a failure.
            ReplyShape::Config if spec.reply == ReplyShape::Config => {
                Some(FrontendReply::Config(Config {
                    offset: config.offset,
                    flags: config.flags,
                    payload: &[],
                }))
            }
            ReplyShape::Config => None,
            // The specification: a negative session id reports a failure.
            ReplyShape::CryptoSession => Some(FrontendReply::CryptoSession(CryptoSession {
                session_id: -1,
                payload: &[],
            })),
            ReplyShape::Inflight => Some(FrontendReply::Inflight(Inflight::default())),
            ReplyShape::ShmemConfig => Some(FrontendReply::ShmemConfig(Box::default())),
            ReplyShape::EmptyWithFd => Some(FrontendReply::Empty),
            ReplyShape::VringState | ReplyShape::MemTable | ReplyShape::SingleRegion => None,
        }
    }
}

/// Encodes a u64 ack or value reply (the most common reply) without building a
/// [`FrontendReply`].
pub fn encode_u64_reply(req: FrontendReq, value: u64, body: &mut [u8]) -> Result<Header, Error> {
    let n = put(body, &U64Body { value })?;
    Ok(Header::new(req as u32, HeaderFlags::REPLY, n as u32))
}
