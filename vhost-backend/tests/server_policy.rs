//! The server's error policy: framing errors close, refused and failed requests get their
//! failure form, gates, and the session sequences that broke other back-ends.

#![cfg(unix)]

mod common;

use common::cases::{self, ACKED, FEATURES};
use common::{borrow, file_fd, Session};
use vhost_backend::test_utils::{Call, RecordingBackend};
use vhost_backend::ServerError;
use vhost_proto::features::virtio;
use vhost_proto::{
    Error, FrontendReply, FrontendReq, FrontendRequest, Gate, Header, HeaderFlags, Owed,
    ProtocolFeatures, ReplyShape, VringFd, VringState,
};

fn state(index: u32, num: u32) -> VringState {
    VringState { index, num }
}

fn framing_error(s: &mut Session, header: Header, body: &[u8]) -> Error {
    s.send_raw(header, body, &[]);
    let result = s.step();
    assert!(s.reply().is_none(), "answered a broken frame");
    assert!(s.rec.take_calls().is_empty());
    match result {
        Err(ServerError::Framing(e)) => e,
        other => panic!("expected a framing error, got {other:?}"),
    }
}

#[test]
fn header_with_bad_version_closes_without_answer() {
    let mut s = Session::new(cases::backend());
    let h = Header {
        request: FrontendReq::GetFeatures as u32,
        flags: 2,
        size: 0,
    };
    assert!(matches!(
        framing_error(&mut s, h, &[]),
        Error::BadVersion { version: 2 }
    ));
}

#[test]
fn header_with_reserved_or_reply_flags_closes_without_answer() {
    for flags in [1 | 0x10, 1 | HeaderFlags::REPLY.bits()] {
        let mut s = Session::new(cases::backend());
        let h = Header {
            request: FrontendReq::GetFeatures as u32,
            flags,
            size: 0,
        };
        assert!(matches!(
            framing_error(&mut s, h, &[]),
            Error::BadFlags { .. }
        ));
    }
}

#[test]
fn unknown_request_codes_close_without_answer() {
    // The first code past the last request is unknown, whatever the rows' count.
    let past_last = vhost_proto::FRONTEND_REQUESTS.len() as u32 + 1;
    for code in [0, past_last, 1006] {
        let mut s = Session::new(cases::backend());
        let h = Header::new(code, HeaderFlags::NEED_REPLY, 0);
        let e = framing_error(&mut s, h, &[]);
        assert_eq!(e, Error::UnknownRequest { code });
    }
}

#[test]
fn body_over_the_request_maximum_closes_before_reading_it() {
    let mut s = Session::new(cases::backend());
    let h = Header::new(FrontendReq::SetVringNum as u32, HeaderFlags::empty(), 9);
    let e = framing_error(&mut s, h, &[0; 9]);
    assert!(
        matches!(
            e,
            Error::BodyTooLarge {
                size: 9,
                max: 8,
                ..
            }
        ),
        "{e:?}"
    );
    let mut s = Session::new(cases::backend());
    let h = Header::new(FrontendReq::GetConfig as u32, HeaderFlags::empty(), 1 << 20);
    assert!(matches!(
        framing_error(&mut s, h, &[]),
        Error::BodyTooLarge { .. }
    ));
}

#[test]
fn invalid_bodies_and_descriptor_counts_get_a_failure_ack_and_the_session_goes_on() {
    let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
    let num = FrontendReq::SetVringNum as u32;
    // A body shorter than its layout.
    s.send_raw(Header::new(num, HeaderFlags::NEED_REPLY, 4), &[0; 4], &[]);
    s.step().expect("kept serving");
    assert_eq!(s.reply().map(|r| r.u64()), Some(1));
    // A descriptor where none may ride.
    let fd = file_fd();
    assert_eq!(
        s.ack(&FrontendRequest::SetVringNum(state(0, 8)), &borrow(&[fd])),
        1
    );
    // NOFD set and a descriptor attached anyway.
    let kick = FrontendRequest::SetVringKick(VringFd {
        index: 0,
        nofd: true,
    });
    assert_eq!(s.ack(&kick, &borrow(&[file_fd()])), 1);
    // An enable flag that is neither 0 nor 1.
    assert_eq!(s.ack(&FrontendRequest::SetVringEnable(state(0, 2)), &[]), 1);
    assert!(
        s.rec.take_calls().is_empty(),
        "refused requests reached the back-end"
    );
    assert_eq!(s.ack(&FrontendRequest::SetVringNum(state(0, 8)), &[]), 0);
}

#[test]
fn get_config_beyond_the_config_space_gets_a_zero_size_reply_echoing_the_offset() {
    let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
    let mut body = Vec::new();
    for v in [0xff0u32, 0x20, 0] {
        body.extend_from_slice(&v.to_ne_bytes());
    }
    body.extend_from_slice(&[0; 0x20]);
    let h = Header::new(
        FrontendReq::GetConfig as u32,
        HeaderFlags::empty(),
        body.len() as u32,
    );
    s.send_raw(h, &body, &[]);
    s.step().expect("kept serving");
    let reply = s.reply().expect("failure form");
    match reply.decode(FrontendReq::GetConfig, ReplyShape::Config) {
        FrontendReply::Config(c) => assert_eq!((c.offset, c.payload.len()), (0xff0, 0)),
        other => panic!("{other:?}"),
    }
    assert!(s.rec.take_calls().is_empty());
}

#[test]
fn every_gated_request_not_negotiated_gets_its_failure_form_without_reaching_the_backend() {
    let features = virtio::bit(virtio::VERSION_1) | virtio::bit(virtio::PROTOCOL_FEATURES);
    let mut checked = 0;
    for case in cases::all() {
        let code = case.code();
        let name = code.name();
        match code.spec().gate {
            Gate::Protocol(p) if p != ProtocolFeatures::REPLY_ACK => {}
            Gate::Virtio(_) => {}
            _ => continue,
        }
        let mut s = Session::negotiated(cases::backend(), ProtocolFeatures::REPLY_ACK, features);
        let shape = s.owed_with_need_reply(code);
        let handled = s.send_case(&case, true);
        assert!(
            s.rec.take_calls().is_empty(),
            "{name}: reached the back-end"
        );
        match FrontendReply::failure(&case.request, shape) {
            Some(failure) => {
                handled.unwrap_or_else(|e| panic!("{name}: closed: {e}"));
                let reply = s.reply().unwrap_or_else(|| panic!("{name}: no answer"));
                assert_eq!(reply.decode(code, shape), failure, "{name}");
            }
            None => assert!(
                matches!(&handled, Err(ServerError::Unanswerable { cause, .. })
                    if matches!(**cause, ServerError::Refused(Error::NotNegotiated { .. }))),
                "{name}: {handled:?}"
            ),
        }
        checked += 1;
    }
    assert!(checked > 20, "only {checked} gated requests");
}

#[test]
fn second_set_owner_gets_a_failure_ack_and_reaches_the_backend_once() {
    let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
    assert_eq!(s.ack(&FrontendRequest::SetOwner, &[]), 0);
    assert_eq!(s.ack(&FrontendRequest::SetOwner, &[]), 1);
    assert_eq!(s.rec.take_calls(), [Call::SetOwner]);
}

#[test]
fn vring_index_beyond_the_queues_gets_a_failure_ack() {
    let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
    assert_eq!(s.ack(&FrontendRequest::SetVringBase(state(2, 0)), &[]), 1);
    let call = FrontendRequest::SetVringCall(VringFd {
        index: 200,
        nofd: true,
    });
    assert_eq!(s.ack(&call, &[]), 1);
    assert!(s.rec.take_calls().is_empty());
}

#[test]
fn set_features_with_bits_never_offered_is_refused_and_not_recorded() {
    let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
    assert_eq!(
        s.ack(&FrontendRequest::SetFeatures(FEATURES | 1 << 40), &[]),
        1
    );
    assert!(s.rec.take_calls().is_empty());
    assert_eq!(s.server.negotiation().acked_features(), FEATURES);
}

#[test]
fn set_protocol_features_without_get_protocol_features_enables_acks_at_once() {
    // A front-end restored after migration skips GET_PROTOCOL_FEATURES.
    let mut s = Session::new(cases::backend());
    let set = FrontendRequest::SetProtocolFeatures(ProtocolFeatures::REPLY_ACK.bits());
    assert_eq!(s.ack(&set, &[]), 0);
    assert_eq!(s.ack(&FrontendRequest::SetFeatures(FEATURES), &[]), 0);
    assert_eq!(s.ack(&FrontendRequest::SetVringNum(state(0, 8)), &[]), 0);
}

#[test]
fn frontend_without_protocol_features_gets_rings_enabled_and_no_set_vring_enable() {
    let backend = cases::backend().with_features(virtio::bit(virtio::VERSION_1));
    let mut s = Session::new(backend);
    let features = virtio::bit(virtio::VERSION_1);
    assert!(s
        .exchange(&FrontendRequest::SetFeatures(features), false, &[])
        .is_none());
    assert!(s.server.negotiation().rings_start_enabled());
    // SET_VRING_ENABLE is not negotiated, and without REPLY_ACK there is no ack to refuse
    // it with: the front-end would believe a ring state the back-end does not have.
    let enable = FrontendRequest::SetVringEnable(state(0, 1));
    s.send(&enable, true, &[]);
    let handled = s.step();
    assert!(
        matches!(&handled, Err(ServerError::Unreported { request: FrontendReq::SetVringEnable, cause })
            if matches!(**cause, ServerError::Refused(Error::NotNegotiated { .. }))),
        "{handled:?}"
    );
    assert!(s.reply().is_none(), "no REPLY_ACK, no ack");
    assert_eq!(s.rec.take_calls(), [Call::SetFeatures { features }]);
    // GET_PROTOCOL_FEATURES has no answer to give: the connection closes.
    s.send(&FrontendRequest::GetProtocolFeatures, false, &[]);
    assert!(matches!(s.step(), Err(ServerError::Unanswerable { .. })));
}

#[test]
fn set_features_twice_per_start_reaches_the_backend_twice_and_keeps_the_last() {
    let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
    let first = virtio::bit(virtio::VERSION_1) | virtio::bit(virtio::PROTOCOL_FEATURES);
    for f in [first, FEATURES] {
        assert_eq!(s.ack(&FrontendRequest::SetFeatures(f), &[]), 0);
    }
    assert_eq!(
        s.rec.take_calls(),
        [
            Call::SetFeatures { features: first },
            Call::SetFeatures { features: FEATURES }
        ]
    );
    assert_eq!(s.server.negotiation().acked_features(), FEATURES);
    assert!(!s.server.negotiation().rings_start_enabled());
}

#[test]
fn serve_returns_ok_when_the_frontend_closes_and_tells_the_backend_once() {
    let Session {
        mut server,
        front,
        rec,
    } = Session::new(cases::backend());
    let mut body = [0u8; 64];
    let enc = FrontendRequest::SetOwner
        .encode(HeaderFlags::empty(), &mut body)
        .expect("encode");
    front
        .send(&enc.header.to_wire(), &[], &[], &[])
        .expect("send");
    drop(front);
    server.serve().expect("clean end");
    server.finish().expect("second finish does nothing");
    assert_eq!(rec.take_calls(), [Call::SetOwner, Call::Disconnected]);
}

#[test]
fn serve_returns_the_framing_error_and_still_tells_the_backend() {
    let Session {
        mut server,
        front,
        rec,
    } = Session::new(cases::backend());
    front
        .send(
            &Header::new(99, HeaderFlags::empty(), 0).to_wire(),
            &[],
            &[],
            &[],
        )
        .expect("send");
    let e = server.serve().expect_err("closed");
    assert!(
        matches!(e, ServerError::Framing(Error::UnknownRequest { code: 99 })),
        "{e}"
    );
    assert_eq!(rec.take_calls(), [Call::Disconnected]);
}

#[test]
fn serve_reports_a_frontend_gone_mid_message_as_a_disconnect() {
    let Session {
        mut server,
        front,
        rec,
    } = Session::new(cases::backend());
    let h = Header::new(FrontendReq::SetVringNum as u32, HeaderFlags::empty(), 8);
    front.send(&h.to_wire(), &[0; 4], &[], &[]).expect("send");
    drop(front);
    let e = server.serve().expect_err("partial message");
    assert!(e.is_disconnect(), "{e}");
    assert_eq!(rec.take_calls(), [Call::Disconnected]);
}

/// QEMU 7.2 with vhost-user-blk: realize, firmware start, Linux restart, poweroff.
#[test]
fn qemu_blk_boot_sequence_gets_the_replies_qemu_expects() {
    use FrontendRequest as R;
    let offered: u64 = 0x1_7500_7e46;
    let protocol = ProtocolFeatures::from_bits_truncate(0x8f2b);
    let backend = RecordingBackend::new()
        .with_features(offered)
        .with_protocol(protocol)
        .with_queues(1)
        .with_config((0..60).collect());
    let mut s = Session::new(backend);
    let u64_of = |r: Option<common::Reply>| r.map(|r| r.u64());
    // A. Realize.
    assert_eq!(
        u64_of(s.exchange(&R::GetFeatures, false, &[])),
        Some(offered)
    );
    assert_eq!(
        u64_of(s.exchange(&R::GetProtocolFeatures, false, &[])),
        Some(0x8f2b)
    );
    assert!(s
        .exchange(&R::SetProtocolFeatures(0x8f2b), false, &[])
        .is_none());
    assert_eq!(u64_of(s.exchange(&R::GetQueueNum, false, &[])), Some(1));
    assert_eq!(u64_of(s.exchange(&R::GetMaxMemSlots, false, &[])), Some(32));
    assert_eq!(
        s.ack(&R::SetBackendReqFd, &borrow(&[common::socket_fd()])),
        0
    );
    assert!(s.exchange(&R::SetOwner, false, &[]).is_none());
    assert_eq!(
        u64_of(s.exchange(&R::GetFeatures, false, &[])),
        Some(offered)
    );
    let vfd = |index| VringFd { index, nofd: false };
    for req in [R::SetVringCall(vfd(0)), R::SetVringErr(vfd(0))] {
        assert!(s.exchange(&req, false, &borrow(&[file_fd()])).is_none());
    }
    let get_config = R::GetConfig(vhost_proto::Config {
        offset: 0,
        flags: 0,
        payload: &[0; 57],
    });
    let reply = s.exchange(&get_config, false, &[]).expect("config");
    let expected: Vec<u8> = (0..57).collect();
    match reply.decode(FrontendReq::GetConfig, ReplyShape::Config) {
        FrontendReply::Config(c) => assert_eq!(c.payload, &expected[..]),
        other => panic!("{other:?}"),
    }
    // B. Firmware start, then D. Linux start: each stopped by C / F.
    let region = vhost_proto::RegionMsg::new(cases::region());
    for (features, base) in [(0x1_4000_0046u64, 0u32), (0x1_7000_6e46, 19)] {
        s.server.backend_mut().vring_base = base;
        assert!(s.exchange(&R::SetFeatures(features), false, &[]).is_none());
        assert!(s
            .exchange(&R::SetVringCall(vfd(0)), false, &borrow(&[file_fd()]))
            .is_none());
        assert!(s.exchange(&R::SetFeatures(features), false, &[]).is_none());
        if base == 0 {
            assert_eq!(s.ack(&R::AddMemReg(region), &borrow(&[file_fd()])), 0);
        }
        assert!(s
            .exchange(&R::SetVringNum(state(0, 128)), false, &[])
            .is_none());
        assert!(s
            .exchange(&R::SetVringBase(state(0, 0)), false, &[])
            .is_none());
        let addr = vhost_proto::VringAddr {
            index: 0,
            flags: 0,
            desc: 0x7f00_0000_0000,
            used: 0x7f00_0000_1000,
            avail: 0x7f00_0000_0800,
            log: 0,
        };
        assert!(s.exchange(&R::SetVringAddr(addr), false, &[]).is_none());
        assert!(s
            .exchange(&R::SetVringKick(vfd(0)), false, &borrow(&[file_fd()]))
            .is_none());
        assert!(s
            .exchange(&R::SetVringEnable(state(0, 1)), false, &[])
            .is_none());
        assert!(s
            .exchange(&R::SetVringEnable(state(0, 0)), false, &[])
            .is_none());
        let reply = s
            .exchange(&R::GetVringBase(state(0, 0)), false, &[])
            .expect("base");
        let got = reply.decode(FrontendReq::GetVringBase, ReplyShape::VringState);
        assert_eq!(got, FrontendReply::VringState(state(0, base)));
        assert_eq!(s.server.negotiation().acked_features(), features);
    }
    let calls = s.rec.take_calls();
    assert_eq!(calls.len(), 11 + 2 * 10 + 1, "{calls:?}");
    assert!(s.rec.backend_client().is_some());
    assert_eq!(
        s.rec.fd_count(),
        2 + 2 * 2 + 1,
        "call, err, then call and kick per start, one region"
    );
    // QEMU closes the socket.
    drop(std::mem::replace(
        &mut s.front,
        vhost_transport::Connection::pair().expect("pair").0,
    ));
    assert!(s.step().is_err_and(|e| e.is_disconnect()));
    s.server.finish().expect("reset");
    assert_eq!(s.rec.fd_count(), 0);
    assert!(s.rec.backend_client().is_none());
}

/// Requests with a lasting effect on rings, memory or negotiation that owe nothing unless
/// NEED_REPLY is set.
const STATE_CHANGES: [FrontendReq; 18] = [
    FrontendReq::SetFeatures,
    FrontendReq::SetProtocolFeatures,
    FrontendReq::ResetOwner,
    FrontendReq::ResetDevice,
    FrontendReq::SetMemTable,
    FrontendReq::AddMemReg,
    FrontendReq::RemMemReg,
    FrontendReq::SetLogFd,
    FrontendReq::SetVringNum,
    FrontendReq::SetVringAddr,
    FrontendReq::SetVringBase,
    FrontendReq::SetVringKick,
    FrontendReq::SetVringCall,
    FrontendReq::SetVringErr,
    FrontendReq::SetVringEnable,
    FrontendReq::SetVringEndian,
    FrontendReq::SetInflightFd,
    FrontendReq::PostcopyListen,
];

#[test]
fn failing_state_change_without_need_reply_closes_the_connection() {
    for case in cases::all() {
        let code = case.code();
        if !STATE_CHANGES.contains(&code) {
            continue;
        }
        let name = code.name();
        let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
        assert_eq!(s.server.negotiation().owes(code, false), Owed::Nothing);
        s.rec.fail_on(code);
        let handled = s.send_case(&case, false);
        assert!(
            matches!(&handled, Err(ServerError::Unreported { request, cause })
                if *request == code && matches!(**cause, ServerError::Backend { .. })),
            "{name}: {handled:?}"
        );
        assert!(s.reply().is_none(), "{name}: answered");
        assert_eq!(
            s.rec.take_calls(),
            std::slice::from_ref(&case.call),
            "{name}"
        );
    }
}

#[test]
fn failing_state_change_with_an_ack_owed_reports_it_and_the_session_goes_on() {
    for code in STATE_CHANGES {
        let Some(case) = cases::all().into_iter().find(|c| c.code() == code) else {
            panic!("{}: no case", code.name());
        };
        let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
        s.rec.fail_on(code);
        let fds = case.make_fds();
        assert_eq!(s.ack(&case.request, &borrow(&fds)), 1, "{}", code.name());
        assert_eq!(
            s.exchange(&FrontendRequest::GetFeatures, false, &[])
                .map(|r| r.u64()),
            Some(FEATURES)
        );
    }
}

#[test]
fn failing_request_without_lasting_effect_and_without_need_reply_keeps_serving() {
    for code in [
        FrontendReq::SetConfig,
        FrontendReq::SetStatus,
        FrontendReq::VringKick,
    ] {
        let Some(case) = cases::all().into_iter().find(|c| c.code() == code) else {
            panic!("{}: no case", code.name());
        };
        let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
        s.rec.fail_on(code);
        assert!(
            s.exchange(&case.request, false, &[]).is_none(),
            "{}",
            code.name()
        );
        assert_eq!(
            s.exchange(&FrontendRequest::GetFeatures, false, &[])
                .map(|r| r.u64()),
            Some(FEATURES)
        );
    }
}
