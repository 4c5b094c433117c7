//! Front-end requests and their replies, from arbitrary bytes.
//!
//! Input: one control byte, a 12-byte header, then the body.
//! Control bits 0–3: descriptors attached (0–15); bit 4: XEN_MMAP layouts; bit 5: decode as
//! a reply to the request named in the header; bit 6: postcopy is listening (reply shapes).
//!
//! Properties: nothing panics; a header error is a framing error and a body error is not;
//! whatever decodes re-encodes to the same header and body bytes; the session checks and the
//! failure replies accept whatever decoded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vhost_proto::*;

fuzz_target!(|data: &[u8]| {
    let Some((control, header, rest)) = vhost_fuzz::framed(data) else {
        return;
    };
    let nfds = usize::from(control & 0x0f);
    let ctx = DecodeContext {
        xen_mmap: control & 0x10 != 0,
    };
    if control & 0x20 == 0 {
        request(header, rest, nfds, ctx);
    } else {
        reply(header, rest, nfds, ctx, control & 0x40 != 0);
    }
});

fn request(header: Header, rest: &[u8], nfds: usize, ctx: DecodeContext) {
    let Some((req, body)) =
        vhost_fuzz::request_body(&header, header.check_frontend_request(), rest)
    else {
        return;
    };
    let Some(msg) = vhost_fuzz::decoded(FrontendRequest::decode(req, body, nfds, ctx)) else {
        return;
    };
    assert_eq!(msg.code(), req);
    let mut buf = [0u8; MAX_BODY_SIZE];
    let enc = msg
        .encode(header.header_flags(), &mut buf)
        .expect("a decoded request encodes");
    assert_eq!(enc.header, header);
    assert_eq!(&buf[..enc.body_len], &body[..enc.body_len]);
    assert_eq!(enc.payload, &body[enc.body_len..]);
    if req != FrontendReq::RemMemReg {
        assert_eq!(msg.fd_count(), nfds);
    }

    let mut neg = Negotiation::new(u64::MAX, ProtocolFeatures::all(), 4);
    let _ = neg.check(&msg);
    if let Owed::Reply(shape) = neg.owes(req, header.need_reply()) {
        if let Some(failure) = FrontendReply::failure(&msg, shape) {
            let enc = failure
                .encode(req, &mut buf)
                .expect("a failure reply encodes");
            enc.header
                .check_reply(MessageKind::Frontend(req))
                .expect("a failure reply has a valid header");
        }
    }
    neg.apply(&msg);
    let _ = neg.check(&msg);
}

fn reply(header: Header, rest: &[u8], nfds: usize, ctx: DecodeContext, postcopy: bool) {
    let Some(req) = FrontendReq::from_code(header.request) else {
        return;
    };
    if let Err(e) = header.check_reply(MessageKind::Frontend(req)) {
        assert!(e.is_framing(), "{e:?}");
        return;
    }
    let spec = req.spec();
    let shape = match spec.owes {
        Owes::Reply => spec.reply,
        Owes::ReplyInPostcopy if postcopy => spec.reply,
        _ => ReplyShape::U64,
    };
    let Some(body) = rest.get(..header.size as usize) else {
        return;
    };
    let Ok(reply) = FrontendReply::decode(req, shape, body, nfds, ctx) else {
        return;
    };
    let mut buf = [0u8; MAX_BODY_SIZE];
    let enc = reply
        .encode(req, &mut buf)
        .expect("a decoded reply encodes");
    assert_eq!(enc.header, header);
    assert_eq!(&buf[..enc.body_len], &body[..enc.body_len]);
    assert_eq!(enc.payload, &body[enc.body_len..]);
}
