//! Replies that must be refused: header checks, descriptor counts, and bodies.

mod common;

use common::*;
use vhost_proto::*;

const GF: MessageKind = MessageKind::Frontend(FrontendReq::GetFeatures);

#[test]
fn reply_without_reply_flag_is_bad_flags() {
    let e = header(1, 0x1, 8).check_reply(GF).unwrap_err();
    assert_eq!(
        e,
        Error::BadFlags {
            flags: 1,
            why: "REPLY missing on a reply"
        }
    );
    assert!(e.is_framing());
}

#[test]
fn reply_with_need_reply_is_bad_flags() {
    let e = header(1, 0xd, 8).check_reply(GF).unwrap_err();
    assert_eq!(
        e,
        Error::BadFlags {
            flags: 0xd,
            why: "NEED_REPLY set on a reply"
        }
    );
}

#[test]
fn reply_with_wrong_code_is_unexpected_reply() {
    let e = header(15, 0x5, 8).check_reply(GF).unwrap_err();
    assert_eq!(
        e,
        Error::UnexpectedReply {
            expected: GF,
            got: 15
        }
    );
}

#[test]
fn backend_reply_with_wrong_code_is_unexpected_reply() {
    let kind = MessageKind::Backend(BackendReq::SharedObjectLookup);
    assert_eq!(
        header(6, 0x5, 8).check_reply(kind),
        Err(Error::UnexpectedReply {
            expected: kind,
            got: 6
        })
    );
}

#[test]
fn reply_with_bad_version_is_bad_version() {
    assert_eq!(
        header(1, 0x4, 8).check_reply(GF),
        Err(Error::BadVersion { version: 0 })
    );
}

#[test]
fn reply_with_reserved_flag_bits_is_bad_flags() {
    assert_err!(header(1, 0x25, 8).check_reply(GF), Error::BadFlags { .. });
}

#[test]
fn reply_over_max_body_size_is_body_too_large() {
    assert_err!(
        header(1, 0x5, MAX_BODY_SIZE as u32 + 1).check_reply(GF),
        Error::BodyTooLarge { .. }
    );
}

fn reply(r: FrontendReq, s: ReplyShape, body: &[u8], nfds: usize) -> Result<(), Error> {
    FrontendReply::decode(r, s, body, nfds, PLAIN).map(|_| ())
}

#[test]
fn u64_reply_to_get_features_with_an_fd_is_unexpected_fds() {
    assert_eq!(
        reply(FrontendReq::GetFeatures, ReplyShape::U64, &[0; 8], 1),
        Err(Error::UnexpectedFds {
            request: fk(FrontendReq::GetFeatures),
            expected: "none",
            got: 1
        })
    );
}

#[test]
fn vring_state_reply_with_an_fd_is_unexpected_fds() {
    assert_err!(
        reply(
            FrontendReq::GetVringBase,
            ReplyShape::VringState,
            &[0; 8],
            1
        ),
        Error::UnexpectedFds { got: 1, .. }
    );
}

#[test]
fn inflight_reply_with_two_fds_is_unexpected_fds() {
    assert_err!(
        reply(
            FrontendReq::GetInflightFd,
            ReplyShape::Inflight,
            &[0; 24],
            2
        ),
        Error::UnexpectedFds { got: 2, .. }
    );
}

#[test]
fn postcopy_advise_reply_with_two_fds_is_unexpected_fds() {
    assert_err!(
        reply(FrontendReq::PostcopyAdvise, ReplyShape::EmptyWithFd, &[], 2),
        Error::UnexpectedFds { got: 2, .. }
    );
}

#[test]
fn shared_object_reply_with_two_fds_is_unexpected_fds() {
    assert_err!(
        reply(FrontendReq::GetSharedObject, ReplyShape::U64, &[0; 8], 2),
        Error::UnexpectedFds { got: 2, .. }
    );
    assert!(reply(FrontendReq::GetSharedObject, ReplyShape::U64, &[0; 8], 1).is_ok());
}

#[test]
fn mem_table_reply_with_an_fd_is_unexpected_fds() {
    let body = cat(&[&le32(1), &le32(0), &region_bytes(0, 0x1000, 0x1000, 0)]);
    assert_err!(
        reply(FrontendReq::SetMemTable, ReplyShape::MemTable, &body, 1),
        Error::UnexpectedFds { got: 1, .. }
    );
    assert!(reply(FrontendReq::SetMemTable, ReplyShape::MemTable, &body, 0).is_ok());
}

#[test]
fn backend_reply_with_an_fd_is_unexpected_fds() {
    assert_err!(
        decode_backend_reply(BackendReq::IotlbMsg, &[0; 8], 1),
        Error::UnexpectedFds { got: 1, .. }
    );
}

#[test]
fn backend_lookup_reply_with_two_fds_is_unexpected_fds() {
    assert_err!(
        decode_backend_reply(BackendReq::SharedObjectLookup, &[0; 8], 2),
        Error::UnexpectedFds { got: 2, .. }
    );
}

#[test]
fn u64_reply_of_four_bytes_is_size_mismatch() {
    assert_err!(
        reply(FrontendReq::GetFeatures, ReplyShape::U64, &[0; 4], 0),
        Error::SizeMismatch {
            expected: 8,
            got: 4,
            ..
        }
    );
}

#[test]
fn backend_reply_of_nine_bytes_is_size_mismatch() {
    assert_err!(
        decode_backend_reply(BackendReq::IotlbMsg, &[0; 9], 0),
        Error::SizeMismatch {
            expected: 8,
            got: 9,
            ..
        }
    );
}

#[test]
fn config_reply_size_not_matching_payload_is_size_mismatch() {
    let body = cat(&[&le32(0), &le32(8), &le32(0), &[0; 4]]);
    assert_err!(
        reply(FrontendReq::GetConfig, ReplyShape::Config, &body, 0),
        Error::SizeMismatch { .. }
    );
}

#[test]
fn postcopy_advise_reply_with_a_body_is_size_mismatch() {
    assert_err!(
        reply(
            FrontendReq::PostcopyAdvise,
            ReplyShape::EmptyWithFd,
            &[0; 8],
            1
        ),
        Error::SizeMismatch {
            expected: 0,
            got: 8,
            ..
        }
    );
}

#[test]
fn shmem_config_reply_of_wrong_size_is_size_mismatch() {
    assert_err!(
        reply(
            FrontendReq::GetShmemConfig,
            ReplyShape::ShmemConfig,
            &[0; 2048],
            0
        ),
        Error::SizeMismatch { expected: 2056, .. }
    );
}

#[test]
fn failure_forms_encode_as_the_spec_says() {
    let get_config = FrontendRequest::GetConfig(Config {
        offset: 0,
        flags: 0,
        payload: &[0; 8],
    });
    // GET_CONFIG: a zero-size payload.
    let f = FrontendReply::failure(&get_config, ReplyShape::Config).unwrap();
    assert_eq!(
        encode_reply(&f, FrontendReq::GetConfig),
        cat(&[&[24, 0, 0, 0, 5, 0, 0, 0, 12, 0, 0, 0], &[0; 12]])
    );
    // Acks: 1.
    let f = FrontendReply::failure(&FrontendRequest::SetOwner, ReplyShape::U64).unwrap();
    assert_eq!(f, FrontendReply::U64(ACK_FAILURE));
    // IOTLB_MSG: always answered, 1 on failure.
    let iotlb = FrontendRequest::IotlbMsg(IotlbMsg::default());
    assert_eq!(
        FrontendReply::failure(&iotlb, ReplyShape::U64),
        Some(FrontendReply::U64(1))
    );
    // SET_DEVICE_STATE_FD: error bits and "no fd".
    let dsf = FrontendRequest::SetDeviceStateFd(DeviceStateTransfer::default());
    assert_eq!(
        FrontendReply::failure(&dsf, ReplyShape::U64),
        Some(FrontendReply::U64(0x101))
    );
    // Crypto: a negative session id.
    let cs = FrontendRequest::CreateCryptoSession(CryptoSession {
        session_id: 0,
        payload: &[],
    });
    let f = FrontendReply::failure(&cs, ReplyShape::CryptoSession).unwrap();
    assert_eq!(
        encode_reply(&f, FrontendReq::CreateCryptoSession),
        cat(&[&[26, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0], &[0xff; 8]])
    );
    // Value replies have no failure form: the connection is closed instead.
    assert_eq!(
        FrontendReply::failure(&FrontendRequest::GetFeatures, ReplyShape::U64),
        None
    );
    let gvb = FrontendRequest::GetVringBase(VringState::default());
    assert_eq!(FrontendReply::failure(&gvb, ReplyShape::VringState), None);
}
