//! A request whose body does not decode still gets the failure form of the reply it owes
//! (`FrontendReply::failure_of`), or the connection closes as `Unanswerable` when the
//! specification gives that reply no failure form.

#![cfg(unix)]

mod common;

use common::cases::{self, ACKED, FEATURES};
use common::{borrow, file_fd, Session};
use vhost_backend::ServerError;
use vhost_proto::{
    FrontendReply, FrontendReq, FrontendRequest, Header, HeaderFlags, IotlbMsg, Owed, MAX_BODY_SIZE,
};

/// The sample's body and payload as they go on the wire.
fn wire_body(case: &cases::Case) -> Vec<u8> {
    let mut body = vec![0u8; MAX_BODY_SIZE];
    let enc = case
        .request
        .encode(HeaderFlags::NEED_REPLY, &mut body)
        .expect("encodable sample");
    let mut bytes = body[..enc.body_len].to_vec();
    bytes.extend_from_slice(enc.payload);
    bytes
}

#[test]
fn every_request_owing_a_reply_answers_an_undecodable_body_with_its_failure_form() {
    let mut checked = 0;
    for case in cases::all() {
        let code = case.code();
        let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
        let Owed::Reply(shape) = s.server.negotiation().owes(code, true) else {
            continue;
        };
        let full = wire_body(&case);
        let ctx = s.server.negotiation().decode_context();
        // One byte short; where that still decodes (a variable payload) or there is no body,
        // one descriptor too many; else no body at all.
        let short = &full[..full.len().saturating_sub(1)];
        let attempts: [(&str, &[u8], usize); 3] = [
            ("one byte short", short, case.fds),
            ("an extra descriptor", &full, case.fds + 1),
            ("no body", &[], case.fds),
        ];
        let (how, body, nfds) = attempts
            .into_iter()
            .find(|(_, body, nfds)| FrontendRequest::decode(code, body, *nfds, ctx).is_err())
            .unwrap_or_else(|| panic!("{}: no undecodable variant", code.name()));
        let body = body.to_vec();
        let mut fds = case.make_fds();
        fds.extend((case.fds..nfds).map(|_| file_fd()));
        let header = Header::new(code as u32, HeaderFlags::NEED_REPLY, body.len() as u32);
        s.send_raw(header, &body, &borrow(&fds));
        let result = s.step();
        assert!(
            s.rec.take_calls().is_empty(),
            "{}: an undecodable request reached the back-end",
            code.name()
        );
        match FrontendReply::failure_of(code, shape, &body) {
            Some(expected) => {
                result.unwrap_or_else(|e| panic!("{} ({how}): closed: {e}", code.name()));
                let reply = s
                    .reply()
                    .unwrap_or_else(|| panic!("{} ({how}): no reply", code.name()));
                assert_eq!(
                    reply.decode(code, shape),
                    expected,
                    "{} ({how})",
                    code.name()
                );
                assert!(s.reply().is_none(), "{}: a second message", code.name());
            }
            None => {
                assert!(
                    matches!(result, Err(ServerError::Unanswerable { request, .. }) if request == code),
                    "{} ({how}): {result:?}",
                    code.name()
                );
                assert!(s.reply().is_none(), "{}: answered anyway", code.name());
            }
        }
        checked += 1;
    }
    // GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM, GET_MAX_MEM_SLOTS, GET_STATUS,
    // GET_VRING_BASE, GET_CONFIG, IOTLB_MSG, ... : the table has more than a handful.
    assert!(checked >= 8, "only {checked} requests owe a reply");
}

#[test]
fn a_short_iotlb_msg_gets_failure_and_the_session_goes_on() {
    // ACCESS_PLATFORM is among the acked features, so IOTLB_MSG is allowed; it owes a reply
    // whether or not NEED_REPLY is set.
    let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
    assert_eq!(
        s.server.negotiation().owes(FrontendReq::IotlbMsg, false),
        Owed::Reply(vhost_proto::ReplyShape::U64)
    );
    let layout = std::mem::size_of::<IotlbMsg>();
    assert_eq!(layout, 32);
    // Request 22, flags: version 1 only, size 31: one byte short of the layout.
    let header = [22u8, 0, 0, 0, 1, 0, 0, 0, 31, 0, 0, 0];
    s.front.send(&header, &[0u8; 31], &[], &[]).unwrap();
    s.step().expect("kept serving");
    assert!(s.rec.take_calls().is_empty());
    assert_eq!(s.reply().map(|r| r.u64()), Some(1));
    // The session goes on: the next request is answered.
    let features = s
        .exchange(&vhost_proto::FrontendRequest::GetFeatures, false, &[])
        .expect("GET_FEATURES reply")
        .u64();
    assert_eq!(features, FEATURES);
}

#[test]
fn an_iotlb_msg_larger_than_its_layout_is_a_framing_error() {
    // Size 63 is beyond the largest IOTLB_MSG body: the header is refused before the body
    // is read, so the stream is out of step and the connection closes unanswered.
    let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
    let header = [22u8, 0, 0, 0, 1, 0, 0, 0, 63, 0, 0, 0];
    s.front.send(&header, &[0u8; 63], &[], &[]).unwrap();
    let result = s.step();
    assert!(
        matches!(
            result,
            Err(ServerError::Framing(vhost_proto::Error::BodyTooLarge {
                size: 63,
                ..
            }))
        ),
        "{result:?}"
    );
    assert!(s.reply().is_none());
    assert!(s.rec.take_calls().is_empty());
}
