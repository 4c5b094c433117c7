//! Requests whose body is one u64: SET_FEATURES and SET_PROTOCOL_FEATURES (the acked bits),
//! SEND_RARP (a MAC address in the first 6 bytes), NET_SET_MTU, CLOSE_CRYPTO_SESSION (the
//! session id) and SET_STATUS (the device status byte).
//!
//! The body is the specification's single 64-bit integer payload (8 bytes). Any value is well-formed here; which bits may be acked is the negotiation's
//! rule ([`Negotiation::check`](crate::Negotiation::check)).

use super::{Body, Input};
use crate::codec::{put, read_exact};
use crate::wire::U64Body;
use crate::{Error, MessageKind};

impl<'a> Body<'a> for u64 {
    fn decode(input: Input<'a>) -> Result<Self, Error> {
        Ok(read_exact::<U64Body>(input.body, input.kind)?.value)
    }

    fn encode(&self, _: MessageKind, body: &mut [u8]) -> Result<(usize, &'a [u8]), Error> {
        Ok((put(body, &U64Body { value: *self })?, &[]))
    }
}

#[cfg(test)]
mod tests {
    use crate::{DecodeContext, FrontendReq, FrontendRequest, HeaderFlags};

    /// SET_FEATURES carrying VERSION_1 | PROTOCOL_FEATURES, as QEMU sends it.
    #[test]
    fn golden_set_features() {
        let bytes = [0x00, 0x00, 0x00, 0x40, 0x01, 0, 0, 0];
        let q = FrontendReq::SetFeatures;
        let msg = FrontendRequest::decode(q, &bytes, 0, DecodeContext::default()).unwrap();
        assert_eq!(msg, FrontendRequest::SetFeatures(0x1_4000_0000));
        let mut out = [0u8; 8];
        let enc = msg.encode(HeaderFlags::empty(), &mut out).unwrap();
        assert_eq!((enc.header.request, enc.header.size), (2, 8));
        assert_eq!(out, bytes);
        assert!(FrontendRequest::decode(q, &bytes[..7], 0, DecodeContext::default()).is_err());
    }
}
