//! The negotiation state: gates, what each request owes, ownership, vring indices, ring
//! enablement, reset.

mod common;

use common::spec_rows;
use common::*;
use vhost_proto::features::virtio;
use vhost_proto::*;

const F30: u64 = 1 << 30;

/// A back-end offering everything, nothing acked yet.
fn fresh() -> Negotiation {
    Negotiation::new(ALL_FEATURES, ProtocolFeatures::all(), 8)
}

/// Acks exactly what `gate` needs, the way a front-end would.
fn ack_gate(n: &mut Negotiation, gate: Gate) {
    match gate {
        Gate::None | Gate::ProtocolFeaturesOffered => {}
        Gate::ProtocolFeaturesNegotiated => n.apply(&FrontendRequest::SetFeatures(F30)),
        Gate::Protocol(p) => n.apply(&FrontendRequest::SetProtocolFeatures(p.bits())),
        Gate::Virtio(bit) => n.apply(&FrontendRequest::SetFeatures(virtio::bit(bit))),
    }
}

#[test]
fn every_gated_request_is_refused_before_and_allowed_after_its_feature() {
    let mut gated = 0;
    for g in golden::frontend() {
        let msg = g.expected;
        let (code, name, _, _, gate, _, _) = *spec_rows::frontend_row(msg.code() as u32);
        let n = fresh();
        let want = match gate {
            Gate::None | Gate::ProtocolFeaturesOffered => None,
            Gate::ProtocolFeaturesNegotiated => Some(Requirement::ProtocolFeaturesNegotiated),
            Gate::Protocol(p) => Some(Requirement::Protocol(p)),
            Gate::Virtio(bit) => Some(Requirement::Virtio(bit)),
        };
        match want {
            None => assert_eq!(n.check(&msg), Ok(()), "{name}"),
            Some(feature) => {
                assert_eq!(
                    n.check(&msg),
                    Err(Error::NotNegotiated {
                        request: fk(msg.code()),
                        feature
                    }),
                    "{name} before"
                );
                gated += 1;
            }
        }
        let mut n = fresh();
        ack_gate(&mut n, gate);
        assert_eq!(n.check(&msg), Ok(()), "{name} (code {code}) after");
    }
    // 28 of the 44 requests need a negotiated feature (+1: the Xen form of ADD_MEM_REG).
    assert_eq!(gated, 29);
}

#[test]
fn a_protocol_gate_is_not_opened_by_another_protocol_feature() {
    let mut n = fresh();
    n.apply(&FrontendRequest::SetProtocolFeatures(
        (ProtocolFeatures::all() - ProtocolFeatures::CONFIG).bits(),
    ));
    assert_eq!(
        n.allows(FrontendReq::GetConfig),
        Err(Error::NotNegotiated {
            request: fk(FrontendReq::GetConfig),
            feature: Requirement::Protocol(ProtocolFeatures::CONFIG)
        })
    );
    assert!(n.allows(FrontendReq::SetConfig).is_err());
    assert_eq!(n.allows(FrontendReq::GetQueueNum), Ok(()));
}

#[test]
fn get_protocol_features_is_refused_when_bit_30_is_not_offered() {
    let n = Negotiation::new(1 << 32, ProtocolFeatures::all(), 1);
    for r in [
        FrontendReq::GetProtocolFeatures,
        FrontendReq::SetProtocolFeatures,
    ] {
        assert_eq!(
            n.allows(r),
            Err(Error::NotNegotiated {
                request: fk(r),
                feature: Requirement::ProtocolFeaturesOffered
            })
        );
    }
}

#[test]
fn get_protocol_features_is_allowed_before_set_features_when_offered() {
    let n = fresh();
    assert!(!n.features_set());
    assert_eq!(n.check(&FrontendRequest::GetProtocolFeatures), Ok(()));
}

#[test]
fn set_vring_enable_is_allowed_once_protocol_features_are_set() {
    let mut n = fresh();
    let enable = FrontendRequest::SetVringEnable(VringState { index: 0, num: 1 });
    assert!(n.check(&enable).is_err());
    n.apply(&FrontendRequest::SetProtocolFeatures(0));
    assert_eq!(n.check(&enable), Ok(()));
}

#[test]
fn set_protocol_features_without_get_makes_reply_ack_work() {
    // A restored front-end never asks GET_PROTOCOL_FEATURES.
    let mut n = fresh();
    let set = FrontendRequest::SetProtocolFeatures(ProtocolFeatures::REPLY_ACK.bits());
    assert_eq!(n.check(&set), Ok(()));
    n.apply(&set);
    assert!(n.reply_ack());
    assert_eq!(n.owes(FrontendReq::SetVringNum, true), Owed::Ack);
    assert_eq!(n.owes(FrontendReq::SetMemTable, true), Owed::Ack);
}

/// What the spec says a request owes, computed from the independent rows.
fn expected_owed(code: u32, reply_ack: bool, need_reply: bool, postcopy: bool) -> Owed {
    let (_, _, _, _, _, owes, shape) = *spec_rows::frontend_row(code);
    match owes {
        Owes::Reply => Owed::Reply(shape),
        Owes::ReplyInPostcopy if postcopy => Owed::Reply(shape),
        _ if reply_ack && need_reply => Owed::Ack,
        _ => Owed::Nothing,
    }
}

/// `n` owes for every request, with and without NEED_REPLY, what [`expected_owed`] says
/// with `reply_ack` and `postcopy`; the number of cases checked.
fn assert_owes_what_the_spec_says(n: &Negotiation, reply_ack: bool, postcopy: bool) -> usize {
    let mut cases = 0;
    for r in FrontendReq::all() {
        for need_reply in [false, true] {
            assert_eq!(
                n.owes(r, need_reply),
                expected_owed(r as u32, reply_ack, need_reply, postcopy),
                "{} reply_ack={reply_ack} need_reply={need_reply}",
                r.name()
            );
            cases += 1;
        }
    }
    cases
}

#[test]
fn owes_for_every_request_with_and_without_reply_ack_and_need_reply() {
    let mut cases = 0;
    for reply_ack in [false, true] {
        let mut n = fresh();
        if reply_ack {
            n.apply(&FrontendRequest::SetProtocolFeatures(
                ProtocolFeatures::REPLY_ACK.bits(),
            ));
        }
        cases += assert_owes_what_the_spec_says(&n, reply_ack, false);
    }
    assert_eq!(cases, 44 * 4);
}

#[test]
fn owes_always_replies_to_iotlb_msg_even_without_reply_ack() {
    let n = fresh();
    assert_eq!(
        n.owes(FrontendReq::IotlbMsg, true),
        Owed::Reply(ReplyShape::U64)
    );
}

#[test]
fn owes_switches_region_messages_to_replies_while_postcopy_listens() {
    let mut n = fresh();
    n.apply(&FrontendRequest::SetProtocolFeatures(
        (ProtocolFeatures::REPLY_ACK | ProtocolFeatures::PAGEFAULT).bits(),
    ));
    assert_eq!(n.owes(FrontendReq::SetMemTable, true), Owed::Ack);
    n.apply(&FrontendRequest::PostcopyAdvise);
    assert!(!n.postcopy_listening());
    n.apply(&FrontendRequest::PostcopyListen);
    assert!(n.postcopy_listening());
    assert_owes_what_the_spec_says(&n, true, true);
    assert_eq!(
        n.owes(FrontendReq::SetMemTable, false),
        Owed::Reply(ReplyShape::MemTable)
    );
    assert_eq!(
        n.owes(FrontendReq::AddMemReg, false),
        Owed::Reply(ReplyShape::SingleRegion)
    );
    assert_eq!(n.owes(FrontendReq::RemMemReg, false), Owed::Nothing);
    n.apply(&FrontendRequest::PostcopyEnd);
    assert!(!n.postcopy_listening());
    assert_eq!(n.owes(FrontendReq::SetMemTable, false), Owed::Nothing);
    assert_eq!(n.owes(FrontendReq::AddMemReg, true), Owed::Ack);
}

#[test]
fn set_features_with_unoffered_bits_is_unoffered_features() {
    let n = Negotiation::new(F30 | 1 << 32, ProtocolFeatures::empty(), 1);
    assert_eq!(
        n.check(&FrontendRequest::SetFeatures(F30 | 1 << 32 | 1 << 29 | 1)),
        Err(Error::UnofferedFeatures {
            request: fk(FrontendReq::SetFeatures),
            bits: 1 << 29 | 1
        })
    );
    assert_eq!(n.check(&FrontendRequest::SetFeatures(1 << 32)), Ok(()));
}

#[test]
fn set_protocol_features_with_unoffered_bits_is_unoffered_features() {
    let n = Negotiation::new(F30, ProtocolFeatures::MQ, 1);
    assert_eq!(
        n.check(&FrontendRequest::SetProtocolFeatures(0b1001)),
        Err(Error::UnofferedFeatures {
            request: fk(FrontendReq::SetProtocolFeatures),
            bits: 0b1000
        })
    );
}

#[test]
fn second_set_owner_is_already_owned() {
    let mut n = fresh();
    assert_eq!(n.check(&FrontendRequest::SetOwner), Ok(()));
    n.apply(&FrontendRequest::SetOwner);
    assert_eq!(
        n.check(&FrontendRequest::SetOwner),
        Err(Error::AlreadyOwned)
    );
    // RESET_OWNER gives the session up; SET_OWNER is allowed again.
    n.apply(&FrontendRequest::ResetOwner);
    assert_eq!(n.check(&FrontendRequest::SetOwner), Ok(()));
}

#[test]
fn vring_index_at_or_beyond_num_queues_is_vring_index() {
    let n = {
        let mut n = Negotiation::new(ALL_FEATURES, ProtocolFeatures::all(), 2);
        n.apply(&FrontendRequest::SetFeatures(ALL_FEATURES));
        n.apply(&FrontendRequest::SetProtocolFeatures(
            ProtocolFeatures::all().bits(),
        ));
        n
    };
    let s = |index| VringState { index, num: 1 };
    let fd = |index| VringFd { index, nofd: true };
    let addr = VringAddr {
        index: 2,
        ..VringAddr::default()
    };
    let requests = [
        FrontendRequest::SetVringNum(s(2)),
        FrontendRequest::SetVringAddr(addr),
        FrontendRequest::SetVringBase(s(2)),
        FrontendRequest::GetVringBase(s(2)),
        FrontendRequest::SetVringKick(fd(2)),
        FrontendRequest::SetVringCall(fd(255)),
        FrontendRequest::SetVringErr(fd(3)),
        FrontendRequest::SetVringEnable(s(2)),
        FrontendRequest::SetVringEndian(s(u32::MAX)),
        FrontendRequest::VringKick(s(2)),
    ];
    for msg in requests {
        assert_err!(n.check(&msg), Error::VringIndex { queues: 2, .. });
        assert_eq!(msg.vring_index().map(|i| i >= 2), Some(true));
    }
    assert_eq!(n.check(&FrontendRequest::SetVringNum(s(1))), Ok(()));
}

#[test]
fn rings_start_enabled_without_bit_30_and_disabled_with_it() {
    let mut n = fresh();
    n.apply(&FrontendRequest::SetFeatures(1 << 32));
    assert!(n.rings_start_enabled());
    n.apply(&FrontendRequest::SetFeatures(F30 | 1 << 32));
    assert!(!n.rings_start_enabled());
    assert!(n.protocol_features_negotiated());
    // Decided by the last SET_FEATURES.
    n.apply(&FrontendRequest::SetFeatures(1 << 32));
    assert!(n.rings_start_enabled());
}

#[test]
fn reset_forgets_acks_and_owner_but_keeps_the_offer() {
    let mut n = negotiated_all();
    n.apply(&FrontendRequest::SetOwner);
    n.apply(&FrontendRequest::PostcopyListen);
    n.reset();
    assert_eq!(n, fresh());
    assert_eq!(n.acked_features(), 0);
    assert_eq!(n.acked_protocol(), ProtocolFeatures::empty());
    assert!(!n.features_set());
    assert!(!n.reply_ack());
    assert!(!n.postcopy_listening());
    assert_eq!(n.offered_features(), ALL_FEATURES);
    assert_eq!(n.offered_protocol(), ProtocolFeatures::all());
    assert_eq!(n.num_queues(), 8);
    assert_eq!(n.check(&FrontendRequest::SetOwner), Ok(()));
}

#[test]
fn reset_device_forgets_features_but_keeps_protocol_features() {
    let mut n = negotiated_all();
    n.apply(&FrontendRequest::ResetDevice);
    assert!(!n.features_set());
    assert_eq!(n.acked_features(), 0);
    assert!(n.reply_ack());
}

#[test]
fn decode_context_follows_xen_mmap() {
    let mut n = fresh();
    assert!(!n.decode_context().xen_mmap);
    n.apply(&FrontendRequest::SetProtocolFeatures(
        ProtocolFeatures::XEN_MMAP.bits(),
    ));
    assert!(n.decode_context().xen_mmap);
}

#[test]
fn backend_requests_need_backend_req_and_their_own_gate() {
    for (code, name, _, _, gate, _, _) in spec_rows::BACKEND {
        let r = BackendReq::from_code(code).unwrap();
        let mut n = fresh();
        assert_eq!(
            n.allows_backend(r),
            Err(Error::NotNegotiated {
                request: bk(r),
                feature: Requirement::Protocol(ProtocolFeatures::BACKEND_REQ)
            }),
            "{name}"
        );
        n.apply(&FrontendRequest::SetProtocolFeatures(
            ProtocolFeatures::BACKEND_REQ.bits(),
        ));
        assert!(n.allows_backend(r).is_err(), "{name} without its gate");
        let mut extra = ProtocolFeatures::BACKEND_REQ;
        match gate {
            Gate::Protocol(p) => extra |= p,
            Gate::Virtio(bit) => n.apply(&FrontendRequest::SetFeatures(virtio::bit(bit))),
            _ => unreachable!("{name}"),
        }
        n.apply(&FrontendRequest::SetProtocolFeatures(extra.bits()));
        assert_eq!(n.allows_backend(r), Ok(()), "{name}");
    }
}

#[test]
fn backend_owes_an_ack_only_with_reply_ack_and_need_reply() {
    let mut n = fresh();
    n.apply(&FrontendRequest::SetProtocolFeatures(
        ProtocolFeatures::BACKEND_REQ.bits(),
    ));
    assert_eq!(
        n.backend_owes(BackendReq::ConfigChangeMsg, true),
        Owed::Nothing
    );
    assert_eq!(
        n.backend_owes(BackendReq::SharedObjectLookup, false),
        Owed::Reply(ReplyShape::U64)
    );
    n.apply(&FrontendRequest::SetProtocolFeatures(
        (ProtocolFeatures::BACKEND_REQ | ProtocolFeatures::REPLY_ACK).bits(),
    ));
    assert_eq!(n.backend_owes(BackendReq::ConfigChangeMsg, true), Owed::Ack);
    assert_eq!(
        n.backend_owes(BackendReq::ConfigChangeMsg, false),
        Owed::Nothing
    );
}
