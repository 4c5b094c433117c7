//! The encoders refuse what the decoders refuse: a configuration payload over 256 bytes or
//! ending beyond offset 0x1000, and a crypto session payload over 1024 bytes, never go out
//! as messages the other side must reject.

use vhost_proto::wire::{CONFIG_SPACE_END, MAX_CONFIG_SIZE, MAX_CRYPTO_PAYLOAD};
use vhost_proto::*;

fn config(offset: u32, payload: &[u8]) -> Config<'_> {
    Config {
        offset,
        flags: 0,
        payload,
    }
}

fn crypto(payload: &[u8]) -> CryptoSession<'_> {
    CryptoSession {
        session_id: 7,
        payload,
    }
}

/// Encodes `req` (the encoder's error, if any), then decodes the bytes as a receiver would,
/// which must give `req` back.
fn round_trip(req: &FrontendRequest<'_>) -> Result<(), Error> {
    let mut body = [0u8; MAX_BODY_SIZE];
    let enc = req.encode(HeaderFlags::empty(), &mut body)?;
    let mut wire = body[..enc.body_len].to_vec();
    wire.extend_from_slice(enc.payload);
    let decoded = FrontendRequest::decode(req.code(), &wire, 0, DecodeContext::default())
        .unwrap_or_else(|e| panic!("encoded, but the decoder refuses it: {e}"));
    assert_eq!(&decoded, req);
    Ok(())
}

fn assert_invalid_field(r: Result<impl std::fmt::Debug, Error>, field: &str) {
    match r {
        Err(Error::InvalidField { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected an invalid `{field}`, got {other:?}"),
    }
}

#[test]
fn config_request_over_256_bytes_is_refused_by_the_encoder() {
    let big = [0u8; MAX_CONFIG_SIZE + 1];
    for req in [
        FrontendRequest::GetConfig(config(0, &big)),
        FrontendRequest::SetConfig(config(0, &big)),
    ] {
        assert_invalid_field(round_trip(&req), "size");
    }
    let full = [0u8; MAX_CONFIG_SIZE];
    round_trip(&FrontendRequest::SetConfig(config(0, &full))).unwrap();
}

#[test]
fn config_request_ending_beyond_the_config_space_is_refused_by_the_encoder() {
    let end = CONFIG_SPACE_END as u32;
    let bytes = [0u8; 16];
    assert_invalid_field(
        round_trip(&FrontendRequest::SetConfig(config(end - 15, &bytes))),
        "offset",
    );
    assert_invalid_field(
        round_trip(&FrontendRequest::GetConfig(config(u32::MAX, &bytes))),
        "offset",
    );
    round_trip(&FrontendRequest::SetConfig(config(end - 16, &bytes))).unwrap();
}

#[test]
fn crypto_session_request_over_1024_bytes_is_refused_by_the_encoder() {
    let big = [0u8; MAX_CRYPTO_PAYLOAD + 1];
    assert_invalid_field(
        round_trip(&FrontendRequest::CreateCryptoSession(crypto(&big))),
        "payload",
    );
    let full = [0u8; MAX_CRYPTO_PAYLOAD];
    round_trip(&FrontendRequest::CreateCryptoSession(crypto(&full))).unwrap();
}

#[test]
fn replies_the_decoder_would_refuse_are_refused_by_the_encoder() {
    let mut body = [0u8; MAX_BODY_SIZE];
    let big_config = [0u8; MAX_CONFIG_SIZE + 1];
    let r = FrontendReply::Config(config(0, &big_config)).encode(FrontendReq::GetConfig, &mut body);
    assert_invalid_field(r, "size");
    let r = FrontendReply::Config(config(CONFIG_SPACE_END as u32, &[1]))
        .encode(FrontendReq::GetConfig, &mut body);
    assert_invalid_field(r, "offset");
    // The failure form (no bytes) echoes whatever offset was asked for, both ways.
    let failure = FrontendReply::Config(config(u32::MAX - 15, &[]));
    let enc = failure.encode(FrontendReq::GetConfig, &mut body).unwrap();
    let decoded = FrontendReply::decode(
        FrontendReq::GetConfig,
        ReplyShape::Config,
        &body[..enc.body_len],
        0,
        DecodeContext::default(),
    )
    .unwrap();
    assert_eq!(decoded, failure);
    let big_crypto = [0u8; MAX_CRYPTO_PAYLOAD + 1];
    let r = FrontendReply::CryptoSession(crypto(&big_crypto))
        .encode(FrontendReq::CreateCryptoSession, &mut body);
    assert_invalid_field(r, "payload");
    // At the limits, the reply decodes.
    let full = [0u8; MAX_CRYPTO_PAYLOAD];
    let enc = FrontendReply::CryptoSession(crypto(&full))
        .encode(FrontendReq::CreateCryptoSession, &mut body)
        .unwrap();
    let mut wire = body[..enc.body_len].to_vec();
    wire.extend_from_slice(enc.payload);
    let decoded = FrontendReply::decode(
        FrontendReq::CreateCryptoSession,
        ReplyShape::CryptoSession,
        &wire,
        0,
        DecodeContext::default(),
    )
    .unwrap();
    assert_eq!(decoded, FrontendReply::CryptoSession(crypto(&full)));
}
