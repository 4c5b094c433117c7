//! Back-end requests (the back-end channel) and their replies, from arbitrary bytes.
//!
//! Input: one control byte, a 12-byte header, then the body.
//! Control bits 0–3: descriptors attached (0–15); bit 5: decode as a reply to the request
//! named in the header.
//!
//! Properties: nothing panics; a header error is a framing error and a body error is not;
//! whatever decodes re-encodes to the same header and body bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_proto::*;

fuzz_target!(|data: &[u8]| {
    let Some((control, header, rest)) = vhost_fuzz::framed(data) else {
        return;
    };
    let nfds = usize::from(control & 0x0f);
    if control & 0x20 == 0 {
        request(header, rest, nfds);
    } else {
        reply(header, rest, nfds);
    }
});

fn request(header: Header, rest: &[u8], nfds: usize) {
    let Some((req, body)) = vhost_fuzz::request_body(&header, header.check_backend_request(), rest)
    else {
        return;
    };
    let Some(msg) = vhost_fuzz::decoded(BackendRequest::decode(req, body, nfds)) else {
        return;
    };
    assert_eq!(msg.code(), req);
    assert_eq!(msg.fd_count(), nfds);
    let mut buf = [0u8; MAX_BODY_SIZE];
    let enc = msg
        .encode(header.header_flags(), &mut buf)
        .expect("a decoded request encodes");
    assert_eq!(enc.header, header);
    assert_eq!(&buf[..enc.body_len], body);
    assert!(enc.payload.is_empty());

    let mut neg = Negotiation::new(u64::MAX, ProtocolFeatures::all(), 4);
    let _ = neg.allows_backend(req);
    let _ = neg.backend_owes(req, header.need_reply());
    neg.apply(&FrontendRequest::SetProtocolFeatures(
        ProtocolFeatures::all().bits(),
    ));
    let _ = neg.allows_backend(req);
}

fn reply(header: Header, rest: &[u8], nfds: usize) {
    let Some(req) = BackendReq::from_code(header.request) else {
        return;
    };
    if let Err(e) = header.check_reply(MessageKind::Backend(req)) {
        assert!(e.is_framing(), "{e:?}");
        return;
    }
    let Some(body) = rest.get(..header.size as usize) else {
        return;
    };
    let Ok(value) = decode_backend_reply(req, body, nfds) else {
        return;
    };
    let mut buf = [0u8; 8];
    let enc = encode_backend_reply(req, value, &mut buf).expect("a u64 reply encodes");
    assert_eq!(enc.header, header);
    assert_eq!(&buf[..enc.body_len], body);
}
