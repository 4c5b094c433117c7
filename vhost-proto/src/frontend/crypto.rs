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

#[cfg(test)]
mod tests {
    use super::super::golden::check;
    use super::*;
    use crate::{FrontendReq as Q, FrontendRequest as R};

    #[test]
    fn golden_vectors() {
        // session id 3, then four bytes of setup data.
        let body = [3, 0, 0, 0, 0, 0, 0, 0, 0xa, 0xb, 0xc, 0xd];
        let session = CryptoSession {
            session_id: 3,
            payload: &body[8..],
        };
        check(
            Q::CreateCryptoSession,
            &body,
            0,
            R::CreateCryptoSession(session),
        );
    }

    #[test]
    fn setup_data_over_the_limit_is_refused_both_ways() {
        let big = [0u8; MAX_CRYPTO_PAYLOAD + 1];
        let session = CryptoSession {
            session_id: 1,
            payload: &big,
        };
        let mut out = [0u8; 64];
        let e = R::CreateCryptoSession(session).encode(crate::HeaderFlags::empty(), &mut out);
        assert!(
            matches!(
                e,
                Err(Error::InvalidField {
                    field: "payload",
                    ..
                })
            ),
            "{e:?}"
        );
        let mut body = vec![0u8; 8];
        body.extend_from_slice(&big);
        let e = R::decode(
            Q::CreateCryptoSession,
            &body,
            0,
            crate::DecodeContext::default(),
        );
        assert!(matches!(e, Err(Error::SizeMismatch { .. })), "{e:?}");
    }
}
