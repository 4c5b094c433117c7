//! CREATE_CRYPTO_SESSION: `session_id i64 | setup data` (the virtio-crypto session setup
//! parameters and keys, at most 1024 bytes here); the reply echoes the layout with the new
//! session id, negative for failure.

use super::{Body, Input};
use crate::codec::{put, read_prefix};
use crate::wire::*;
use crate::{Error, MessageKind};

/// CREATE_CRYPTO_SESSION body: a session id and the opaque virtio-crypto setup data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptoSession<'a> {
    /// Session id (negative in a reply: failure).
    pub session_id: i64,
    /// Setup parameters and keys, as the virtio-crypto device defines them.
    pub payload: &'a [u8],
}

impl<'a> CryptoSession<'a> {
    pub(super) fn decode(body: &'a [u8], kind: MessageKind) -> Result<Self, Error> {
        let (h, payload) = read_prefix::<CryptoSessionHeader>(body, kind)?;
        if payload.len() > MAX_CRYPTO_PAYLOAD {
            return Err(Error::SizeMismatch {
                request: kind,
                expected: 8 + MAX_CRYPTO_PAYLOAD,
                got: body.len(),
            });
        }
        Ok(CryptoSession {
            session_id: h.session_id,
            payload,
        })
    }

    /// Encodes the fixed part into `body`, refusing a payload the decoder would refuse
    /// (over [`MAX_CRYPTO_PAYLOAD`] bytes).
    pub(super) fn encode(&self, kind: MessageKind, body: &mut [u8]) -> Result<usize, Error> {
        if self.payload.len() > MAX_CRYPTO_PAYLOAD {
            return Err(Error::InvalidField {
                request: kind,
                field: "payload",
                why: "larger than the 1024-byte session setup limit",
            });
        }
        put(
            body,
            &CryptoSessionHeader {
                session_id: self.session_id,
            },
        )
    }
}

impl<'a> Body<'a> for CryptoSession<'a> {
    fn decode(input: Input<'a>) -> Result<Self, Error> {
        CryptoSession::decode(input.body, input.kind)
    }

    fn encode(&self, kind: MessageKind, body: &mut [u8]) -> Result<(usize, &'a [u8]), Error> {
        Ok((CryptoSession::encode(self, kind, body)?, self.payload))
    }
}
