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
    use super::super::golden::check;
    use crate::{FrontendReq as Q, FrontendRequest as R};

    #[test]
    fn golden_vectors() {
        // VERSION_1 | PROTOCOL_FEATURES, as QEMU acks them.
        check(
            Q::SetFeatures,
            &[0, 0, 0, 0x40, 1, 0, 0, 0],
            0,
            R::SetFeatures(0x1_4000_0000),
        );
        // 52:54:00:12:34:56 in the first six bytes.
        let mac = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0, 0];
        check(Q::SendRarp, &mac, 0, R::SendRarp(0x5634_1200_5452));
        check(
            Q::SetStatus,
            &[0x0f, 0, 0, 0, 0, 0, 0, 0],
            0,
            R::SetStatus(0x0f),
        );
        check(Q::GetFeatures, &[], 0, R::GetFeatures);
    }
}
