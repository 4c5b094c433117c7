//! Headers that must be refused before any body is read: each is a framing error.

mod common;

use common::*;
use vhost_proto::*;

fn framing(e: Result<impl std::fmt::Debug, Error>) -> Error {
    let e = e.expect_err("header accepted");
    assert!(e.is_framing(), "{e:?} must close the connection");
    e
}

#[test]
fn header_version_zero_is_bad_version() {
    let e = framing(header(1, 0, 0).check_frontend_request());
    assert_eq!(e, Error::BadVersion { version: 0 });
}

#[test]
fn header_version_two_is_bad_version() {
    let e = framing(header(1, 2, 0).check_frontend_request());
    assert_eq!(e, Error::BadVersion { version: 2 });
}

#[test]
fn header_version_three_on_backend_request_is_bad_version() {
    let e = framing(header(2, 3, 0).check_backend_request());
    assert_eq!(e, Error::BadVersion { version: 3 });
}

#[test]
fn header_reserved_flag_bit_4_is_bad_flags() {
    let e = framing(header(1, 0x1 | 0x10, 0).check_frontend_request());
    assert_err!(Err::<(), _>(e), Error::BadFlags { flags: 0x11, .. });
}

#[test]
fn header_reserved_flag_bit_31_is_bad_flags() {
    let e = framing(header(1, 0x8000_0001, 0).check_frontend_request());
    assert_err!(Err::<(), _>(e), Error::BadFlags { .. });
}

#[test]
fn header_reserved_flag_bit_on_backend_request_is_bad_flags() {
    let e = framing(header(2, 0x101, 0).check_backend_request());
    assert_err!(Err::<(), _>(e), Error::BadFlags { .. });
}

#[test]
fn header_reply_flag_on_frontend_request_is_bad_flags() {
    let e = framing(header(1, 0x5, 0).check_frontend_request());
    assert_eq!(
        e,
        Error::BadFlags {
            flags: 5,
            why: "REPLY set on a request"
        }
    );
}

#[test]
fn header_reply_flag_on_backend_request_is_bad_flags() {
    let e = framing(header(2, 0x5, 0).check_backend_request());
    assert_err!(Err::<(), _>(e), Error::BadFlags { flags: 5, .. });
}

#[test]
fn header_code_zero_is_unknown_request() {
    let e = framing(header(0, 1, 0).check_frontend_request());
    assert_eq!(e, Error::UnknownRequest { code: 0 });
}

#[test]
fn header_code_45_is_unknown_request() {
    let e = framing(header(45, 1, 0).check_frontend_request());
    assert_eq!(e, Error::UnknownRequest { code: 45 });
}

#[test]
fn header_code_u32_max_is_unknown_request() {
    let e = framing(header(0xffff_ffff, 1, 0).check_frontend_request());
    assert_eq!(e, Error::UnknownRequest { code: 0xffff_ffff });
}

#[test]
fn header_backend_code_11_is_unknown_request() {
    let e = framing(header(11, 1, 0).check_backend_request());
    assert_eq!(e, Error::UnknownRequest { code: 11 });
}

#[test]
fn header_backend_code_zero_is_unknown_request() {
    let e = framing(header(0, 1, 0).check_backend_request());
    assert_eq!(e, Error::UnknownRequest { code: 0 });
}

#[test]
fn header_backend_crosvm_code_1006_is_unknown_request() {
    let e = framing(header(1006, 1, 0).check_backend_request());
    assert_eq!(e, Error::UnknownRequest { code: 1006 });
}

#[test]
fn header_body_on_empty_request_exceeds_its_maximum() {
    let e = framing(header(1, 1, 8).check_frontend_request());
    assert_eq!(
        e,
        Error::BodyTooLarge {
            request: fk(FrontendReq::GetFeatures),
            size: 8,
            max: 0
        }
    );
}

#[test]
fn header_vring_addr_of_41_bytes_exceeds_its_maximum() {
    let e = framing(header(9, 1, 41).check_frontend_request());
    assert_eq!(
        e,
        Error::BodyTooLarge {
            request: fk(FrontendReq::SetVringAddr),
            size: 41,
            max: 40
        }
    );
}

#[test]
fn header_every_request_one_byte_over_its_maximum_is_body_too_large() {
    for &(r, spec) in FRONTEND_REQUESTS {
        let max = spec.body.max_size();
        let e = framing(header(r as u32, 1, max as u32 + 1).check_frontend_request());
        assert_eq!(
            e,
            Error::BodyTooLarge {
                request: fk(r),
                size: max as u32 + 1,
                max
            },
            "{}",
            spec.name
        );
        // And exactly the maximum passes the header check.
        assert_eq!(
            header(r as u32, 1, max as u32).check_frontend_request(),
            Ok(r)
        );
    }
    for &(r, spec) in BACKEND_REQUESTS {
        let max = spec.body.max_size();
        let e = framing(header(r as u32, 1, max as u32 + 1).check_backend_request());
        assert_eq!(
            e,
            Error::BodyTooLarge {
                request: bk(r),
                size: max as u32 + 1,
                max
            },
            "{}",
            spec.name
        );
    }
}

#[test]
fn header_mem_table_body_over_its_328_byte_maximum_is_body_too_large() {
    let e = framing(header(5, 1, 329).check_frontend_request());
    assert_err!(Err::<(), _>(e), Error::BodyTooLarge { max: 328, .. });
}

#[test]
fn header_get_config_over_268_bytes_is_body_too_large() {
    let e = framing(header(24, 1, 12 + 257).check_frontend_request());
    assert_err!(Err::<(), _>(e), Error::BodyTooLarge { max: 268, .. });
}

#[test]
fn header_crypto_session_over_its_maximum_is_body_too_large() {
    let e = framing(header(26, 1, 8 + 1025).check_frontend_request());
    assert_err!(Err::<(), _>(e), Error::BodyTooLarge { max: 1032, .. });
}

#[test]
fn header_size_over_max_body_size_is_body_too_large_for_every_request() {
    for size in [MAX_BODY_SIZE as u32 + 1, 0x10_0000, u32::MAX] {
        for r in FrontendReq::all() {
            let e = framing(header(r as u32, 1, size).check_frontend_request());
            assert!(
                matches!(e, Error::BodyTooLarge { max, .. } if max <= MAX_BODY_SIZE),
                "{e:?}"
            );
        }
        for r in BackendReq::all() {
            let e = framing(header(r as u32, 1, size).check_backend_request());
            assert_err!(Err::<(), _>(e), Error::BodyTooLarge { .. });
        }
    }
}

#[test]
fn header_need_reply_on_a_request_is_accepted() {
    let h = header(2, 0x9, 8);
    assert_eq!(h.check_frontend_request(), Ok(FrontendReq::SetFeatures));
    assert!(h.need_reply());
}
