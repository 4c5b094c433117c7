//! Every front-end request (codes 1–44) through the server: the back-end call it causes,
//! the reply bytes, and the ack rules.

#![cfg(unix)]

mod common;

use std::collections::BTreeSet;

use common::cases::{self, ACKED, FEATURES};
use common::{borrow, Session};
use vhost_backend::ServerError;
use vhost_proto::{
    virtio, FrontendReply, FrontendReq, FrontendRequest, Owes, ProtocolFeatures, ReplyShape,
};

#[test]
fn cases_cover_every_frontend_request() {
    let covered: BTreeSet<FrontendReq> = cases::all().iter().map(|c| c.code()).collect();
    let all: BTreeSet<FrontendReq> = FrontendReq::all().collect();
    assert_eq!(covered, all);
}

#[test]
fn every_request_with_reply_ack_calls_its_method_and_gets_its_reply_or_ack() {
    for case in cases::all() {
        let name = case.code().name();
        let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
        let reply = s
            .exchange_case(&case, true)
            .unwrap_or_else(|| panic!("{name}: nothing came back"));
        assert_eq!(
            reply.decode(case.code(), case.shape()),
            case.reply,
            "{name}: reply"
        );
        assert_eq!(reply.fds.len(), case.reply_fds, "{name}: reply descriptors");
        assert_eq!(s.rec.take_calls(), [case.call], "{name}: back-end call");
    }
}

#[test]
fn every_request_without_reply_ack_sends_only_the_replies_it_always_owes() {
    let acked = ACKED - ProtocolFeatures::REPLY_ACK;
    for case in cases::all() {
        let name = case.code().name();
        let mut s = Session::negotiated(cases::backend(), acked, FEATURES);
        let reply = s.exchange_case(&case, true);
        assert_eq!(
            s.rec.take_calls(),
            std::slice::from_ref(&case.call),
            "{name}: back-end call"
        );
        // The sample SET_PROTOCOL_FEATURES acks REPLY_ACK itself, and the ack rule applies
        // from that request on.
        let acks_itself = matches!(case.request, FrontendRequest::SetProtocolFeatures(_));
        if case.code().spec().owes == Owes::Reply || acks_itself {
            let reply = reply.unwrap_or_else(|| panic!("{name}: reply missing"));
            assert_eq!(
                reply.decode(case.code(), case.shape()),
                case.reply,
                "{name}"
            );
        } else {
            assert!(reply.is_none(), "{name}: answered without REPLY_ACK");
        }
    }
}

#[test]
fn every_request_without_need_reply_gets_no_ack() {
    for case in cases::all() {
        let name = case.code().name();
        let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
        let reply = s.exchange_case(&case, false);
        assert_eq!(
            reply.is_some(),
            case.code().spec().owes == Owes::Reply,
            "{name}"
        );
    }
}

#[test]
fn every_failing_method_gets_the_failure_form_or_closes_when_there_is_none() {
    for case in cases::all() {
        let code = case.code();
        let name = code.name();
        let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
        s.rec.fail_on(code);
        let shape = s.owed_with_need_reply(code);
        let handled = s.send_case(&case, true);
        assert_eq!(
            s.rec.take_calls(),
            std::slice::from_ref(&case.call),
            "{name}: back-end call"
        );
        match FrontendReply::failure(&case.request, shape) {
            Some(failure) => {
                handled.unwrap_or_else(|e| panic!("{name}: closed: {e}"));
                let reply = s
                    .reply()
                    .unwrap_or_else(|| panic!("{name}: no failure form"));
                assert_eq!(reply.decode(code, shape), failure, "{name}: failure form");
                assert!(reply.fds.is_empty(), "{name}: descriptor with a failure");
                // The session goes on.
                s.rec.succeed_on(code);
                let next = s.exchange(&FrontendRequest::GetFeatures, false, &[]);
                assert_eq!(
                    next.map(|r| r.u64()),
                    Some(FEATURES),
                    "{name}: next request"
                );
            }
            None => {
                assert!(
                    matches!(handled, Err(ServerError::Unanswerable { request, .. }) if request == code),
                    "{name}: {handled:?}"
                );
                assert!(s.reply().is_none(), "{name}: answered anyway");
            }
        }
    }
}

#[test]
fn failing_set_device_state_fd_reports_failure_with_the_no_fd_bit() {
    let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
    s.rec.fail_on(FrontendReq::SetDeviceStateFd);
    let fd = common::file_fd();
    let req = FrontendRequest::SetDeviceStateFd(Default::default());
    let reply = s.exchange(&req, false, &borrow(std::slice::from_ref(&fd)));
    assert_eq!(reply.map(|r| r.u64()), Some(1 | 1 << 8));
}

#[test]
fn set_device_state_fd_with_a_descriptor_back_replies_zero_and_attaches_it() {
    let mut backend = cases::backend();
    backend.device_state_fd = true;
    let mut s = Session::negotiated(backend, ACKED, FEATURES);
    let fd = common::file_fd();
    let req = FrontendRequest::SetDeviceStateFd(Default::default());
    let reply = s
        .exchange(&req, false, &borrow(std::slice::from_ref(&fd)))
        .expect("reply");
    assert_eq!(reply.u64(), 0);
    assert_eq!(reply.fds.len(), 1);
}

#[test]
fn get_config_reads_zeros_past_the_end_of_the_device_config() {
    let backend = cases::backend().with_config(vec![0xaa; 4]);
    let mut s = Session::negotiated(backend, ACKED, FEATURES);
    let req = FrontendRequest::GetConfig(vhost_proto::Config {
        offset: 2,
        flags: 0,
        payload: &[0xff; 4],
    });
    let reply = s.exchange(&req, false, &[]).expect("reply");
    match reply.decode(FrontendReq::GetConfig, ReplyShape::Config) {
        FrontendReply::Config(c) => assert_eq!((c.offset, c.payload), (2, &[0xaa, 0xaa, 0, 0][..])),
        other => panic!("{other:?}"),
    }
}

#[test]
fn queue_count_not_supported_bounds_vring_indices_to_one_queue() {
    let mut backend = cases::backend();
    backend.queues = None;
    let mut s = Session::negotiated(backend, ACKED, FEATURES);
    assert_eq!(s.server.negotiation().num_queues(), 1);
    let num = |index| FrontendRequest::SetVringNum(vhost_proto::VringState { index, num: 64 });
    assert_eq!(s.ack(&num(0), &[]), 0);
    assert_ne!(s.ack(&num(1), &[]), 0);
}

/// The server records SET_FEATURES in the session's negotiation before the back-end's method
/// runs (the runtime reads acked features there, not from a copy of its own), and a
/// SET_FEATURES the back-end fails leaves the record as it was.
#[test]
fn set_features_is_in_the_bound_negotiation_while_the_backend_applies_it_and_undone_on_failure() {
    let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
    assert_eq!(s.rec.acked_in_negotiation(), Some(FEATURES));
    assert_eq!(s.rec.acked_seen_by_set_features(), vec![FEATURES]);
    let fewer = FEATURES & !virtio::bit(virtio::ACCESS_PLATFORM);
    assert_ne!(fewer, FEATURES, "the offer has ACCESS_PLATFORM to drop");
    s.rec.fail_on(FrontendReq::SetFeatures);
    let ack = s.ack(&FrontendRequest::SetFeatures(fewer), &[]);
    assert_ne!(ack, 0, "the failing SET_FEATURES is nacked");
    assert_eq!(
        s.rec.acked_seen_by_set_features(),
        vec![FEATURES, fewer],
        "the back-end saw the new value while it ran"
    );
    assert_eq!(s.rec.acked_in_negotiation(), Some(FEATURES), "undone");
    assert_eq!(s.server.negotiation().acked_features(), FEATURES);
    s.rec.succeed_on(FrontendReq::SetFeatures);
    assert_eq!(s.ack(&FrontendRequest::SetFeatures(fewer), &[]), 0);
    assert_eq!(s.rec.acked_in_negotiation(), Some(fewer));
}
