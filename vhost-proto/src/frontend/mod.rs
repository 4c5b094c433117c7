//! Front-end → back-end requests and their replies: typed values, decoding and encoding.
//!
//! [`FrontendRequest`] and its dispatch (decode, encode, code, descriptor count) are generated
//! from the one row per request of [`for_each_frontend_request!`](crate::for_each_frontend_request);
//! each body type's layout, decoding, encoding and the specification's rules for its fields
//! live with its message family:
//! - `features`: u64 bodies (features, protocol features, RARP, MTU, status, crypto close);
//! - `memory`: SET_MEM_TABLE, ADD/REM_MEM_REG, SET_LOG_BASE;
//! - `vring`: the vring requests (state, addresses, eventfds);
//! - `config`: GET/SET_CONFIG;
//! - `crypto`: CREATE_CRYPTO_SESSION;
//! - `transfer`: IOTLB, inflight area, shared objects, device state;
//! - `reply`: the replies.

mod config;
mod crypto;
mod features;
mod memory;
mod reply;
mod transfer;
mod vring;

use crate::codec::{check_fds, expect_empty};
use crate::table::FdPolicy;
use crate::wire::VringState;
use crate::wire::{DeviceStateTransfer, Inflight, IotlbMsg, LogBase, SharedObject, VringAddr};
use crate::{Error, FrontendReq, Header, HeaderFlags, MessageKind};

pub use config::Config;
pub use crypto::CryptoSession;
pub use memory::{validate_regions, MemTable, RegionMsg, XenMapping, MAX_MEM_TABLE_REGIONS};
pub use reply::{encode_u64_reply, FrontendReply};
pub use vring::VringFd;

/// Settings that change body layouts, taken from the negotiation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeContext {
    /// XEN_MMAP acked: memory regions carry Xen flags and a domain id.
    pub xen_mmap: bool,
}

/// The header, body length and borrowed payload of an encoded message: send
/// `header.to_wire()`, `body[..body_len]` and `payload` together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoded<'a> {
    /// The header, `size` covering body and payload.
    pub header: Header,
    /// Bytes of the caller's buffer used.
    pub body_len: usize,
    /// Bytes to send after the body, borrowed from the message.
    pub payload: &'a [u8],
}

impl<'a> Encoded<'a> {
    pub(crate) fn new(
        request: u32,
        flags: HeaderFlags,
        body_len: usize,
        payload: &'a [u8],
    ) -> Self {
        Encoded {
            header: Header::new(request, flags, (body_len + payload.len()) as u32),
            body_len,
            payload,
        }
    }
}

/// What a body decoder is given.
pub(crate) struct Input<'a> {
    /// The body, exactly as long as the header said.
    pub body: &'a [u8],
    /// The request, for errors.
    pub kind: MessageKind,
    /// Layout settings from the negotiation.
    pub ctx: DecodeContext,
    /// The descriptor count, for a body whose count depends on its content (the memory table
    /// checks it itself).
    pub nfds: usize,
}

/// A request body type: its layout on the wire and the rules that belong to the type
/// itself. Rules of one request only are the `where` check of its row.
pub(crate) trait Body<'a> {
    /// Decodes a whole body.
    fn decode(input: Input<'a>) -> Result<Self, Error>
    where
        Self: Sized;

    /// Encodes the fixed part into `body`; returns its length and the borrowed payload.
    fn encode(&self, kind: MessageKind, body: &mut [u8]) -> Result<(usize, &'a [u8]), Error>;

    /// Checks the descriptor count against the request's policy.
    fn check_fds(&self, policy: FdPolicy, nfds: usize, kind: MessageKind) -> Result<(), Error> {
        check_fds(policy, nfds, kind, false, 0)
    }

    /// How many descriptors go with this body when sent.
    fn fd_count(&self, policy: FdPolicy) -> usize {
        usize::from(policy == FdPolicy::One)
    }

    /// The vring the body addresses, if it addresses one.
    fn vring_index(&self) -> Option<u32> {
        None
    }
}

/// A request whose fields must be 0 or 1.
pub(crate) fn bool_field(v: u32, kind: MessageKind, field: &'static str) -> Result<(), Error> {
    if v > 1 {
        Err(Error::InvalidField {
            request: kind,
            field,
            why: "must be 0 or 1",
        })
    } else {
        Ok(())
    }
}

/// Generates [`FrontendRequest`] and its dispatch from the rows of
/// [`for_each_frontend_request!`](crate::for_each_frontend_request).
macro_rules! frontend_requests {
    ($($(#[$m:meta])* $v:ident $(($ty:ty $(where $check:path)?))? = $code:literal => $spec:expr;)*) => {
        /// A decoded front-end request. Small fixed bodies are copied out; variable payloads
        /// borrow the body buffer.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        // The memory table is held inline (8 regions, no allocation per message).
        #[allow(clippy::large_enum_variant)]
        pub enum FrontendRequest<'a> {
            $($(#[$m])* $v $(($ty))?,)*
        }

        impl<'a> FrontendRequest<'a> {
            /// Decodes a request body whose header passed [`Header::check_frontend_request`]:
            /// exact size for the layout, field validity, and the descriptor count (`nfds`).
            pub fn decode(req: FrontendReq, body: &'a [u8], nfds: usize, ctx: DecodeContext) -> Result<Self, Error> {
                let kind = MessageKind::Frontend(req);
                let fds = req.spec().fds;
                match req {
                    $(FrontendReq::$v => frontend_requests!(
                        @decode $v, body, kind, ctx, nfds, fds $(, $ty $(, $check)?)?
                    ),)*
                }
            }

            /// Which request this is.
            pub fn code(&self) -> FrontendReq {
                match self {
                    $(frontend_requests!(@pattern $v $(, $ty)?) => FrontendReq::$v,)*
                }
            }

            /// The body, for the requests that have one.
            fn body(&self) -> Option<&dyn Body<'a>> {
                match self {
                    $(frontend_requests!(@bind $v, b $(, $ty)?) => frontend_requests!(@some b $(, $ty)?),)*
                }
            }
        }
    };
    (@decode $v:ident, $body:ident, $kind:ident, $ctx:ident, $nfds:ident, $fds:ident) => {{
        expect_empty($body, $kind)?;
        check_fds($fds, $nfds, $kind, false, 0)?;
        Ok(FrontendRequest::$v)
    }};
    (@decode $v:ident, $body:ident, $kind:ident, $ctx:ident, $nfds:ident, $fds:ident, $ty:ty $(, $check:path)?) => {{
        let input = Input { body: $body, kind: $kind, ctx: $ctx, nfds: $nfds };
        let value = <$ty as Body>::decode(input)?;
        $($check(&value, $kind)?;)?
        value.check_fds($fds, $nfds, $kind)?;
        Ok(FrontendRequest::$v(value))
    }};
    (@pattern $v:ident) => { FrontendRequest::$v };
    (@pattern $v:ident, $ty:ty) => { FrontendRequest::$v(_) };
    (@bind $v:ident, $b:ident) => { FrontendRequest::$v };
    (@bind $v:ident, $b:ident, $ty:ty) => { FrontendRequest::$v($b) };
    (@some $b:ident) => { None };
    (@some $b:ident, $ty:ty) => { Some($b) };
}

crate::for_each_frontend_request!(frontend_requests);

impl<'a> FrontendRequest<'a> {
    /// The vring index this request addresses, if it addresses one.
    pub fn vring_index(&self) -> Option<u32> {
        self.body().and_then(|b| b.vring_index())
    }

    /// The MAC address of a SEND_RARP: the first 6 bytes of its u64.
    pub fn rarp_mac(value: u64) -> [u8; 6] {
        let b = value.to_ne_bytes();
        [b[0], b[1], b[2], b[3], b[4], b[5]]
    }

    /// How many descriptors must accompany this request when sent.
    pub fn fd_count(&self) -> usize {
        let policy = self.code().spec().fds;
        match self.body() {
            Some(b) => b.fd_count(policy),
            None => usize::from(policy == FdPolicy::One),
        }
    }

    /// Encodes this request into `body` (the fixed part) and returns the header and the
    /// borrowed payload. `flags` may add NEED_REPLY; the version is always set.
    ///
    /// What the decoder would refuse is refused here too, with the same error: a
    /// configuration payload over [`MAX_CONFIG_SIZE`](crate::wire::MAX_CONFIG_SIZE) bytes or
    /// ending beyond [`CONFIG_SPACE_END`](crate::wire::CONFIG_SPACE_END), a crypto session
    /// payload over [`MAX_CRYPTO_PAYLOAD`](crate::wire::MAX_CRYPTO_PAYLOAD) bytes
    /// ([`Error::InvalidField`]); a `body` too small is [`Error::BufferTooSmall`].
    pub fn encode(&self, flags: HeaderFlags, body: &mut [u8]) -> Result<Encoded<'a>, Error> {
        let code = self.code();
        let (n, payload) = match self.body() {
            Some(b) => b.encode(MessageKind::Frontend(code), body)?,
            None => (0, &[][..]),
        };
        Ok(Encoded::new(code as u32, flags, n, payload))
    }
}
