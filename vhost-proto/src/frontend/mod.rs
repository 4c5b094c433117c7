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

use crate::codec::{request_enum, Body, Input};
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
    ($($rows:tt)*) => {
        request_enum! {
            /// A decoded front-end request. Small fixed bodies are copied out; variable
            /// payloads borrow the body buffer.
            FrontendRequest ['a] [] 'a 'a, FrontendReq, Frontend;
            $($rows)*
        }
    };
}

crate::for_each_frontend_request!(frontend_requests);

impl<'a> FrontendRequest<'a> {
    /// Decodes a request body whose header passed [`Header::check_frontend_request`]: exact
    /// size for the layout, field validity, and the descriptor count (`nfds`).
    pub fn decode(
        req: FrontendReq,
        body: &'a [u8],
        nfds: usize,
        ctx: DecodeContext,
    ) -> Result<Self, Error> {
        Self::decode_with(req, body, nfds, ctx)
    }

    /// The vring index this request addresses, if it addresses one.
    pub fn vring_index(&self) -> Option<u32> {
        self.body().and_then(|b| b.vring_index())
    }

    /// The MAC address of a SEND_RARP: the first 6 bytes of its u64.
    pub fn rarp_mac(value: u64) -> [u8; 6] {
        let b = value.to_ne_bytes();
        [b[0], b[1], b[2], b[3], b[4], b[5]]
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
        let (n, payload) = self.encode_body(body)?;
        Ok(Encoded::new(self.code() as u32, flags, n, payload))
    }
}

/// The golden-vector check every family's tests use.
#[cfg(test)]
pub(crate) mod golden {
    use crate::{DecodeContext, Error, FrontendReq, FrontendRequest, HeaderFlags, MAX_BODY_SIZE};

    /// `body` with `nfds` descriptors decodes to `expected`, which encodes back to `body`
    /// (fixed part then payload) with the header of `code`, and wants `nfds` descriptors;
    /// one byte less of a fixed layout is refused.
    pub(crate) fn check(
        code: FrontendReq,
        body: &[u8],
        nfds: usize,
        expected: FrontendRequest<'_>,
    ) {
        let ctx = DecodeContext::default();
        let msg = FrontendRequest::decode(code, body, nfds, ctx).unwrap();
        assert_eq!(msg, expected, "{}", code.name());
        let mut out = [0u8; MAX_BODY_SIZE];
        let enc = msg.encode(HeaderFlags::empty(), &mut out).unwrap();
        assert_eq!(enc.header.request, code as u32);
        assert_eq!(enc.header.size as usize, body.len());
        assert_eq!([&out[..enc.body_len], enc.payload].concat(), body);
        assert_eq!(msg.fd_count(), nfds);
        let fixed = matches!(code.spec().body, crate::BodyShape::Fixed(_));
        if let Some(short) = body.len().checked_sub(1).filter(|_| fixed) {
            let e = FrontendRequest::decode(code, &body[..short], nfds, ctx).unwrap_err();
            assert!(
                matches!(e, Error::SizeMismatch { .. }),
                "{}: {e:?}",
                code.name()
            );
        }
    }
}
