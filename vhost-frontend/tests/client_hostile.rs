//! The front-end client against a scripted, misbehaving back-end: replies are checked
//! before they are believed, and a stream left out of step is never read again.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost_frontend::{Frontend, FrontendError};
use vhost_proto::{FrontendReq, Header, HeaderFlags, ProtocolFeatures};
use vhost_transport::{Connection, FrontendChannel};

/// One scripted answer: a reply header, its body, whether a descriptor rides with it;
/// `None` never answers.
type Answer = Option<(Header, Vec<u8>, bool)>;

/// A back-end that answers each request with the next scripted answer and returns the
/// headers it received once the front-end hangs up.
fn fake(script: Vec<Answer>) -> (Frontend, JoinHandle<Vec<Header>>) {
    let (ours, theirs) = Connection::<FrontendChannel>::pair().unwrap();
    let thread = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let mut script = script.into_iter();
        while let Ok((hdr, _fds)) = ours.recv_header() {
            let h = Header::from_wire(&hdr);
            if ours.recv_body(h.size as usize).is_err() {
                break;
            }
            seen.push(h);
            if let Some(Some((reply, body, with_fd))) = script.next() {
                let fd: OwnedFd = File::open("/dev/null").unwrap().into();
                let fds = if with_fd { vec![fd.as_fd()] } else { vec![] };
                if ours.send(&reply.to_wire(), &body, &[], &fds).is_err() {
                    break;
                }
            }
        }
        seen
    });
    let fe = Frontend::new(theirs);
    fe.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    (fe, thread)
}

fn reply(req: FrontendReq, size: u32) -> Header {
    Header::new(req as u32, HeaderFlags::REPLY, size)
}

fn u64_answer(req: FrontendReq, v: u64) -> Answer {
    Some((reply(req, 8), v.to_ne_bytes().to_vec(), false))
}

#[test]
fn reply_with_another_request_code_is_protocol_error_then_client_is_broken() {
    let (mut fe, t) = fake(vec![u64_answer(FrontendReq::SetFeatures, 1)]);
    let err = fe.get_features().unwrap_err();
    assert!(
        matches!(
            err,
            FrontendError::Protocol(vhost_proto::Error::UnexpectedReply { .. })
        ),
        "{err:?}"
    );
    assert!(fe.is_broken());
    assert!(matches!(fe.get_features(), Err(FrontendError::Broken)));
    drop(fe);
    assert_eq!(t.join().unwrap().len(), 1, "nothing sent after breaking");
}

#[test]
fn reply_without_reply_flag_is_protocol_error() {
    let h = Header::new(FrontendReq::GetFeatures as u32, HeaderFlags::empty(), 8);
    let (mut fe, _t) = fake(vec![Some((h, vec![0; 8], false))]);
    let err = fe.get_features().unwrap_err();
    assert!(
        matches!(
            err,
            FrontendError::Protocol(vhost_proto::Error::BadFlags { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn reply_announcing_oversized_body_is_refused_before_reading_it() {
    // Only the header is sent: a client that tried to read the body would time out instead.
    let h = reply(FrontendReq::GetFeatures, 0x10_0000);
    let (mut fe, _t) = fake(vec![Some((h, vec![], false))]);
    let err = fe.get_features().unwrap_err();
    assert!(
        matches!(
            err,
            FrontendError::Protocol(vhost_proto::Error::BodyTooLarge { .. })
        ),
        "{err:?}"
    );
    assert!(fe.is_broken());
}

#[test]
fn reply_body_of_wrong_size_is_protocol_error_and_stream_stays_in_step() {
    let (mut fe, _t) = fake(vec![
        Some((reply(FrontendReq::GetFeatures, 4), vec![1; 4], false)),
        u64_answer(FrontendReq::GetFeatures, 0x1_0000_0000),
    ]);
    let err = fe.get_features().unwrap_err();
    assert!(
        matches!(
            err,
            FrontendError::Protocol(vhost_proto::Error::SizeMismatch { .. })
        ),
        "{err:?}"
    );
    assert!(!fe.is_broken());
    assert_eq!(fe.get_features().unwrap(), 0x1_0000_0000);
}

#[test]
fn reply_with_descriptor_where_none_may_ride_is_protocol_error() {
    let (mut fe, _t) = fake(vec![Some((
        reply(FrontendReq::GetFeatures, 8),
        vec![0; 8],
        true,
    ))]);
    let err = fe.get_features().unwrap_err();
    assert!(
        matches!(
            err,
            FrontendError::Protocol(vhost_proto::Error::UnexpectedFds { got: 1, .. })
        ),
        "{err:?}"
    );
}

#[test]
fn get_vring_base_reply_for_another_ring_is_invalid_reply() {
    let mut body = 3u32.to_ne_bytes().to_vec();
    body.extend(9u32.to_ne_bytes());
    let (mut fe, _t) = fake(vec![Some((
        reply(FrontendReq::GetVringBase, 8),
        body,
        false,
    ))]);
    let err = fe.get_vring_base(0).unwrap_err();
    assert!(
        matches!(
            err,
            FrontendError::InvalidReply {
                request: FrontendReq::GetVringBase,
                ..
            }
        ),
        "{err:?}"
    );
}

fn config_reply(offset: u32, payload: &[u8]) -> Answer {
    let mut body = offset.to_ne_bytes().to_vec();
    body.extend((payload.len() as u32).to_ne_bytes());
    body.extend(0u32.to_ne_bytes());
    body.extend(payload);
    Some((
        reply(FrontendReq::GetConfig, body.len() as u32),
        body,
        false,
    ))
}

#[test]
fn get_config_reply_checks_offset_size_and_failure_form() {
    let (mut fe, _t) = fake(vec![
        config_reply(8, &[1, 2, 3, 4]),
        config_reply(0, &[1, 2]),
        config_reply(0, &[]),
        config_reply(0, &[5, 6, 7, 8]),
    ]);
    let err = fe.get_config(0, 4, 0).unwrap_err();
    assert!(matches!(err, FrontendError::InvalidReply { .. }), "{err:?}");
    let err = fe.get_config(0, 4, 0).unwrap_err();
    assert!(matches!(err, FrontendError::InvalidReply { .. }), "{err:?}");
    let err = fe.get_config(0, 4, 0).unwrap_err();
    assert!(matches!(err, FrontendError::Refused { .. }), "{err:?}");
    assert_eq!(fe.get_config(0, 4, 0).unwrap(), [5, 6, 7, 8]);
}

#[test]
fn silent_backend_times_out_then_client_is_broken() {
    let (mut fe, t) = fake(vec![None]);
    let err = fe.get_vring_base(0).unwrap_err();
    assert!(
        matches!(
            err,
            FrontendError::Transport(vhost_transport::Error::TimedOut)
        ),
        "{err:?}"
    );
    assert!(matches!(fe.get_features(), Err(FrontendError::Broken)));
    drop(fe);
    assert_eq!(t.join().unwrap().len(), 1);
}

#[test]
fn need_reply_is_set_only_after_reply_ack_is_acked_and_a_nonzero_ack_is_a_nack() {
    let (mut fe, t) = fake(vec![
        None, // SET_PROTOCOL_FEATURES owes nothing yet
        u64_answer(FrontendReq::SetOwner, 5),
        u64_answer(FrontendReq::GetFeatures, 0),
    ]);
    fe.set_protocol_features(ProtocolFeatures::REPLY_ACK)
        .unwrap();
    let err = fe.set_owner().unwrap_err();
    assert!(
        matches!(
            err,
            FrontendError::Nack {
                request: FrontendReq::SetOwner,
                status: 5
            }
        ),
        "{err:?}"
    );
    assert_eq!(fe.get_features().unwrap(), 0);
    drop(fe);
    let seen = t.join().unwrap();
    let need: Vec<bool> = seen.iter().map(Header::need_reply).collect();
    // GET_FEATURES always replies: NEED_REPLY is not added to it.
    assert_eq!(need, [false, true, false]);
}

#[test]
fn set_device_state_fd_reply_without_fd_and_without_nofd_bit_is_invalid() {
    let (mut fe, _t) = fake(vec![
        u64_answer(FrontendReq::SetDeviceStateFd, 0),
        Some((
            reply(FrontendReq::SetDeviceStateFd, 8),
            0u64.to_ne_bytes().to_vec(),
            true,
        )),
        u64_answer(FrontendReq::SetDeviceStateFd, 0x100 | 3),
    ]);
    let pipe: OwnedFd = File::open("/dev/null").unwrap().into();
    let err = fe.set_device_state_fd(0, 0, pipe.as_fd()).unwrap_err();
    assert!(matches!(err, FrontendError::InvalidReply { .. }), "{err:?}");
    assert!(fe
        .set_device_state_fd(0, 0, pipe.as_fd())
        .unwrap()
        .is_some());
    let err = fe.set_device_state_fd(0, 0, pipe.as_fd()).unwrap_err();
    assert_eq!(err.nack_status(), Some(0x103));
}

#[test]
fn raw_messages_go_out_unchecked() {
    let (fe, t) = fake(vec![]);
    let bogus = Header {
        request: 0,
        flags: 0x7,
        size: 3,
    };
    fe.send_raw(&bogus, &[1, 2, 3], &[]).unwrap();
    drop(fe);
    assert_eq!(t.join().unwrap(), [bogus]);
}

fn iotlb_update() -> vhost_proto::IotlbMsg {
    vhost_proto::IotlbMsg {
        iova: 0x1000,
        size: 0x1000,
        uaddr: 0x7f00_0000_0000,
        perm: vhost_proto::wire::iotlb::PERM_RO,
        msg_type: vhost_proto::wire::iotlb::UPDATE,
        padding: [0; 6],
    }
}

#[test]
fn iotlb_msg_always_carries_need_reply_and_a_nonzero_status_is_a_nack() {
    let (mut fe, t) = fake(vec![
        u64_answer(FrontendReq::IotlbMsg, 0),
        u64_answer(FrontendReq::IotlbMsg, 0),
        u64_answer(FrontendReq::IotlbMsg, 3),
    ]);
    // Neither REPLY_ACK acked nor acks requested: IOTLB_MSG asks all the same.
    fe.iotlb_msg(&iotlb_update()).unwrap();
    fe.set_request_acks(false);
    fe.iotlb_msg(&iotlb_update()).unwrap();
    let err = fe.iotlb_msg(&iotlb_update()).unwrap_err();
    assert_eq!(err.nack_status(), Some(3));
    drop(fe);
    let need: Vec<bool> = t.join().unwrap().iter().map(Header::need_reply).collect();
    assert_eq!(need, [true, true, true]);
}

fn vring_state_answer(index: u32, num: u32) -> Answer {
    let mut body = index.to_ne_bytes().to_vec();
    body.extend(num.to_ne_bytes());
    Some((reply(FrontendReq::GetVringBase, 8), body, false))
}

#[test]
fn get_vring_base_over_0xffff_is_invalid_for_split_rings_only() {
    let (mut fe, _t) = fake(vec![
        vring_state_answer(0, 0xffff),
        vring_state_answer(0, 0x1_0000),
    ]);
    assert_eq!(fe.get_vring_base(0).unwrap(), 0xffff);
    let err = fe.get_vring_base(0).unwrap_err();
    assert!(
        matches!(
            err,
            FrontendError::InvalidReply {
                request: FrontendReq::GetVringBase,
                ..
            }
        ),
        "{err:?}"
    );

    // With packed rings acked the value carries wrap counters: passed on as is.
    let (mut fe, _t) = fake(vec![None, vring_state_answer(0, 0x8000_8005)]);
    fe.set_features(vhost_proto::virtio::bit(vhost_proto::virtio::RING_PACKED))
        .unwrap();
    assert_eq!(fe.get_vring_base(0).unwrap(), 0x8000_8005);
}

#[test]
fn config_and_crypto_payloads_the_backend_must_refuse_are_invalid_arguments_and_not_sent() {
    let (mut fe, t) = fake(vec![u64_answer(FrontendReq::GetFeatures, 9)]);
    let err = fe.set_config(0xff8, &[0; 16], 0).unwrap_err();
    assert!(
        matches!(
            err,
            FrontendError::InvalidArgument {
                request: FrontendReq::SetConfig,
                ..
            }
        ),
        "{err:?}"
    );
    let err = fe.set_config(0, &[0; 257], 0).unwrap_err();
    assert!(
        matches!(err, FrontendError::InvalidArgument { .. }),
        "{err:?}"
    );
    let err = fe.get_config(0xf80, 0x100, 0).unwrap_err();
    assert!(
        matches!(err, FrontendError::InvalidArgument { .. }),
        "{err:?}"
    );
    let err = fe.create_crypto_session(1, &[0; 1025]).unwrap_err();
    assert!(
        matches!(
            err,
            FrontendError::InvalidArgument {
                request: FrontendReq::CreateCryptoSession,
                ..
            }
        ),
        "{err:?}"
    );
    // Nothing went out and the client is still usable.
    assert_eq!(fe.get_features().unwrap(), 9);
    drop(fe);
    let seen: Vec<u32> = t.join().unwrap().iter().map(|h| h.request).collect();
    assert_eq!(seen, [FrontendReq::GetFeatures as u32]);
}
