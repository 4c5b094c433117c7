//! Bodies that pass the header check but break their layout, a field rule, or the descriptor
//! policy. None of these is a framing error: the message was read whole.

mod common;

use common::*;
use vhost_proto::wire::*;
use vhost_proto::*;

fn decode(r: FrontendReq, body: &[u8], nfds: usize) -> Result<FrontendRequest<'_>, Error> {
    let res = FrontendRequest::decode(r, body, nfds, PLAIN);
    if let Err(e) = &res {
        assert!(!e.is_framing(), "{e:?} is a body error");
    }
    res
}

#[test]
fn body_every_fixed_request_one_byte_short_or_long_is_size_mismatch() {
    let mut checked = 0;
    for &(r, spec) in FRONTEND_REQUESTS {
        let BodyShape::Fixed(n) = spec.body else {
            continue;
        };
        for len in [0, n - 1, n + 1] {
            let body = vec![0u8; len];
            let nfds =
                usize::from(spec.fds == FdPolicy::One || spec.fds == FdPolicy::OneUnlessNofd);
            assert_eq!(
                decode(r, &body, nfds),
                Err(Error::SizeMismatch {
                    request: fk(r),
                    expected: n,
                    got: len
                }),
                "{} with {len} bytes",
                spec.name
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 22);
}

#[test]
fn body_every_empty_request_with_a_byte_is_size_mismatch() {
    let mut checked = 0;
    for &(r, spec) in FRONTEND_REQUESTS {
        if spec.body != BodyShape::Empty {
            continue;
        }
        let nfds = usize::from(spec.fds == FdPolicy::One);
        assert_eq!(
            decode(r, &[0], nfds),
            Err(Error::SizeMismatch {
                request: fk(r),
                expected: 0,
                got: 1
            }),
            "{}",
            spec.name
        );
        checked += 1;
    }
    assert_eq!(checked, 16);
}

#[test]
fn body_every_fixed_backend_request_of_wrong_size_is_size_mismatch() {
    let mut checked = 0;
    for &(r, spec) in BACKEND_REQUESTS {
        let BodyShape::Fixed(n) = spec.body else {
            assert_eq!(
                BackendRequest::decode(r, &[0], 0),
                Err(Error::SizeMismatch {
                    request: bk(r),
                    expected: 0,
                    got: 1
                })
            );
            continue;
        };
        for len in [n - 1, n + 1] {
            let nfds =
                usize::from(spec.fds == FdPolicy::One || spec.fds == FdPolicy::OneUnlessNofd);
            assert_eq!(
                BackendRequest::decode(r, &vec![0u8; len], nfds),
                Err(Error::SizeMismatch {
                    request: bk(r),
                    expected: n,
                    got: len
                }),
                "{}",
                spec.name
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 9);
}

#[test]
fn vring_kick_with_nofd_and_an_fd_is_unexpected_fds() {
    let body = le64(VRING_NOFD | 1);
    assert_err!(
        decode(FrontendReq::SetVringKick, &body, 1),
        Error::UnexpectedFds { got: 1, .. }
    );
}

#[test]
fn vring_call_without_nofd_and_without_fd_is_unexpected_fds() {
    let body = le64(1);
    assert_err!(
        decode(FrontendReq::SetVringCall, &body, 0),
        Error::UnexpectedFds { got: 0, .. }
    );
}

#[test]
fn vring_err_with_two_fds_is_unexpected_fds() {
    assert_err!(
        decode(FrontendReq::SetVringErr, &le64(0), 2),
        Error::UnexpectedFds { got: 2, .. }
    );
}

#[test]
fn vring_fd_message_with_reserved_bit_9_is_invalid_field() {
    for r in [
        FrontendReq::SetVringKick,
        FrontendReq::SetVringCall,
        FrontendReq::SetVringErr,
    ] {
        assert_err!(
            decode(r, &le64(1 << 9), 1),
            Error::InvalidField { field: "u64", .. }
        );
    }
}

#[test]
fn vring_fd_message_with_reserved_bit_63_is_invalid_field() {
    assert_err!(
        decode(FrontendReq::SetVringKick, &le64(1 << 63 | VRING_NOFD), 0),
        Error::InvalidField { field: "u64", .. }
    );
}

#[test]
fn set_vring_enable_num_2_is_invalid_field() {
    let body = cat(&[&le32(0), &le32(2)]);
    assert_err!(
        decode(FrontendReq::SetVringEnable, &body, 0),
        Error::InvalidField { field: "num", .. }
    );
}

#[test]
fn set_vring_endian_num_2_is_invalid_field() {
    let body = cat(&[&le32(0), &le32(2)]);
    assert_err!(
        decode(FrontendReq::SetVringEndian, &body, 0),
        Error::InvalidField { field: "num", .. }
    );
}

#[test]
fn vring_addr_with_unknown_flag_bit_1_is_invalid_field() {
    let mut body = vec![0u8; 40];
    body[4] = 0x2;
    assert_eq!(
        decode(FrontendReq::SetVringAddr, &body, 0),
        Err(Error::InvalidField {
            request: fk(FrontendReq::SetVringAddr),
            field: "flags",
            why: "only bit 0 (VHOST_VRING_F_LOG) is defined"
        })
    );
}

fn config_body(offset: u32, size: u32, payload_len: usize) -> Vec<u8> {
    cat(&[
        &le32(offset),
        &le32(size),
        &le32(0),
        &vec![0u8; payload_len],
    ])
}

#[test]
fn get_config_size_larger_than_payload_is_size_mismatch() {
    let body = config_body(0, 8, 4);
    assert_eq!(
        decode(FrontendReq::GetConfig, &body, 0),
        Err(Error::SizeMismatch {
            request: fk(FrontendReq::GetConfig),
            expected: 20,
            got: 16
        })
    );
}

#[test]
fn set_config_size_smaller_than_payload_is_size_mismatch() {
    let body = config_body(0, 2, 4);
    assert_err!(
        decode(FrontendReq::SetConfig, &body, 0),
        Error::SizeMismatch {
            expected: 14,
            got: 16,
            ..
        }
    );
}

#[test]
fn get_config_shorter_than_its_header_is_size_mismatch() {
    assert_err!(
        decode(FrontendReq::GetConfig, &[0; 8], 0),
        Error::SizeMismatch {
            expected: 12,
            got: 8,
            ..
        }
    );
}

#[test]
fn get_config_of_257_bytes_is_invalid_field() {
    let body = config_body(0, 257, 257);
    assert_err!(
        decode(FrontendReq::GetConfig, &body, 0),
        Error::InvalidField { field: "size", .. }
    );
}

#[test]
fn get_config_offset_plus_size_beyond_0x1000_is_invalid_field() {
    let body = config_body(0x1000 - 4, 8, 8);
    assert_err!(
        decode(FrontendReq::GetConfig, &body, 0),
        Error::InvalidField {
            field: "offset",
            ..
        }
    );
    // Ending exactly at 0x1000 is fine.
    let body = config_body(0x1000 - 8, 8, 8);
    assert!(decode(FrontendReq::GetConfig, &body, 0).is_ok());
}

#[test]
fn set_config_offset_u32_max_is_invalid_field_not_overflow() {
    let body = config_body(u32::MAX, 4, 4);
    assert_err!(
        decode(FrontendReq::SetConfig, &body, 0),
        Error::InvalidField {
            field: "offset",
            ..
        }
    );
}

#[test]
fn create_crypto_session_payload_over_1024_bytes_is_size_mismatch() {
    let body = vec![0u8; 8 + 1025];
    assert_err!(
        decode(FrontendReq::CreateCryptoSession, &body, 0),
        Error::SizeMismatch {
            expected: 1032,
            got: 1033,
            ..
        }
    );
}

#[test]
fn create_crypto_session_shorter_than_its_id_is_size_mismatch() {
    assert_err!(
        decode(FrontendReq::CreateCryptoSession, &[0; 7], 0),
        Error::SizeMismatch {
            expected: 8,
            got: 7,
            ..
        }
    );
}

#[test]
fn set_device_state_fd_direction_2_is_invalid_field() {
    let body = cat(&[&le32(2), &le32(0)]);
    assert_err!(
        decode(FrontendReq::SetDeviceStateFd, &body, 1),
        Error::InvalidField {
            field: "direction",
            ..
        }
    );
}

#[test]
fn set_device_state_fd_phase_1_is_invalid_field() {
    let body = cat(&[&le32(0), &le32(1)]);
    assert_err!(
        decode(FrontendReq::SetDeviceStateFd, &body, 1),
        Error::InvalidField { field: "phase", .. }
    );
}

#[test]
fn set_device_state_fd_without_fd_is_unexpected_fds() {
    let body = cat(&[&le32(0), &le32(0)]);
    assert_err!(
        decode(FrontendReq::SetDeviceStateFd, &body, 0),
        Error::UnexpectedFds { got: 0, .. }
    );
}

#[test]
fn get_features_with_an_fd_is_unexpected_fds() {
    assert_eq!(
        decode(FrontendReq::GetFeatures, &[], 1),
        Err(Error::UnexpectedFds {
            request: fk(FrontendReq::GetFeatures),
            expected: "none",
            got: 1
        })
    );
}

#[test]
fn every_request_with_a_single_fd_policy_refuses_zero_and_two() {
    let mut checked = 0;
    for g in common::golden::frontend() {
        let r = g.expected.code();
        if r.spec().fds != FdPolicy::One {
            continue;
        }
        let (_, body) = split(&g.bytes);
        for nfds in [0, 2] {
            assert_err!(
                FrontendRequest::decode(r, body, nfds, g.ctx),
                Error::UnexpectedFds { .. }
            );
        }
        checked += 1;
    }
    // SET_LOG_BASE, SET_LOG_FD, SET_BACKEND_REQ_FD, SET_INFLIGHT_FD, GPU_SET_SOCKET,
    // ADD_MEM_REG (twice: plain and Xen), SET_DEVICE_STATE_FD.
    assert_eq!(checked, 8);
}

#[test]
fn every_request_without_fds_refuses_one() {
    for g in common::golden::frontend() {
        let r = g.expected.code();
        if r.spec().fds != FdPolicy::None {
            continue;
        }
        let (_, body) = split(&g.bytes);
        assert_err!(
            FrontendRequest::decode(r, body, 1, g.ctx),
            Error::UnexpectedFds { got: 1, .. }
        );
    }
}

#[test]
fn backend_host_notifier_with_nofd_and_an_fd_is_unexpected_fds() {
    let body = cat(&[&le64(VRING_NOFD), &le64(0), &le64(0)]);
    assert_err!(
        BackendRequest::decode(BackendReq::VringHostNotifierMsg, &body, 1),
        Error::UnexpectedFds { got: 1, .. }
    );
}

#[test]
fn backend_host_notifier_without_nofd_and_without_fd_is_unexpected_fds() {
    let body = cat(&[&le64(0), &le64(0x1000), &le64(0)]);
    assert_err!(
        BackendRequest::decode(BackendReq::VringHostNotifierMsg, &body, 0),
        Error::UnexpectedFds { got: 0, .. }
    );
}

#[test]
fn backend_host_notifier_with_reserved_bits_is_invalid_field() {
    let body = cat(&[&le64(1 << 9), &le64(0x1000), &le64(0)]);
    assert_err!(
        BackendRequest::decode(BackendReq::VringHostNotifierMsg, &body, 1),
        Error::InvalidField { field: "u64", .. }
    );
}

fn shmem_body(fd_offset: u64, shm_offset: u64, len: u64) -> Vec<u8> {
    cat(&[
        &[0; 8],
        &le64(fd_offset),
        &le64(shm_offset),
        &le64(len),
        &le64(0),
    ])
}

#[test]
fn backend_shmem_map_of_zero_length_is_invalid_field() {
    assert_err!(
        BackendRequest::decode(BackendReq::ShmemMap, &shmem_body(0, 0, 0), 1),
        Error::InvalidField { field: "len", .. }
    );
}

#[test]
fn backend_shmem_unmap_with_shm_offset_overflow_is_invalid_field() {
    assert_err!(
        BackendRequest::decode(BackendReq::ShmemUnmap, &shmem_body(0, u64::MAX, 2), 0),
        Error::InvalidField { field: "len", .. }
    );
}

#[test]
fn backend_shmem_map_with_fd_offset_overflow_is_invalid_field() {
    assert_err!(
        BackendRequest::decode(BackendReq::ShmemMap, &shmem_body(u64::MAX, 0, 2), 1),
        Error::InvalidField {
            field: "fd_offset",
            ..
        }
    );
}

#[test]
fn backend_shmem_map_without_fd_is_unexpected_fds() {
    assert_err!(
        BackendRequest::decode(BackendReq::ShmemMap, &shmem_body(0, 0, 0x1000), 0),
        Error::UnexpectedFds { got: 0, .. }
    );
}

#[test]
fn backend_shared_object_add_with_an_fd_is_unexpected_fds() {
    assert_err!(
        BackendRequest::decode(BackendReq::SharedObjectAdd, &[0; 16], 1),
        Error::UnexpectedFds { got: 1, .. }
    );
}
