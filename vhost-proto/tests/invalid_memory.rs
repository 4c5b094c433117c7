//! Memory-table and single-region messages that must be refused.

mod common;

use common::*;
use vhost_proto::*;

const G: u64 = 0x4000_0000;

fn table(regions: &[Vec<u8>]) -> Vec<u8> {
    let mut b = cat(&[&le32(regions.len() as u32), &le32(0)]);
    for r in regions {
        b.extend_from_slice(r);
    }
    b
}

fn good(i: u64) -> Vec<u8> {
    region_bytes(i * G, G, 0x7f00_0000_0000 + i * G, 0)
}

/// Through the header check too, as a server would.
fn decode_table(body: &[u8], nfds: usize) -> Result<FrontendRequest<'_>, Error> {
    let h = Header::new(5, HeaderFlags::empty(), body.len() as u32);
    let r = h.check_frontend_request()?;
    FrontendRequest::decode(r, body, nfds, PLAIN)
}

fn region_error(body: &[u8], nfds: usize, index: usize, why: &str) {
    match decode_table(body, nfds) {
        Err(Error::RegionOverflow {
            request,
            index: i,
            why: w,
        }) => {
            assert_eq!(request, fk(FrontendReq::SetMemTable));
            assert_eq!(i, index);
            assert!(w.contains(why), "{w}");
        }
        other => panic!("expected RegionOverflow ({why}), got {other:?}"),
    }
}

#[test]
fn mem_table_with_eight_regions_is_accepted() {
    let regions: Vec<_> = (0..8).map(good).collect();
    let FrontendRequest::SetMemTable(t) = decode_table(&table(&regions), 8).unwrap() else {
        panic!()
    };
    assert_eq!(t.regions().len(), 8);
    assert_eq!(t.regions()[7].guest_phys_addr, 7 * G);
}

#[test]
fn mem_table_with_nine_regions_is_invalid_field() {
    // 8 + 9 * 32 = 296 bytes: within the header's maximum, refused by the count.
    let regions: Vec<_> = (0..9).map(good).collect();
    assert_err!(
        decode_table(&table(&regions), 9),
        Error::InvalidField {
            field: "num_regions",
            ..
        }
    );
}

#[test]
fn mem_table_claiming_nine_regions_with_no_bodies_is_invalid_field() {
    let body = cat(&[&le32(9), &le32(0)]);
    assert_err!(
        decode_table(&body, 0),
        Error::InvalidField {
            field: "num_regions",
            ..
        }
    );
}

#[test]
fn mem_table_count_larger_than_body_is_size_mismatch() {
    let mut body = table(&[good(0)]);
    body[0] = 2;
    assert_eq!(
        decode_table(&body, 2),
        Err(Error::SizeMismatch {
            request: fk(FrontendReq::SetMemTable),
            expected: 72,
            got: 40
        })
    );
}

#[test]
fn mem_table_count_smaller_than_body_is_size_mismatch() {
    let mut body = table(&[good(0), good(1)]);
    body[0] = 1;
    assert_err!(
        decode_table(&body, 1),
        Error::SizeMismatch {
            expected: 40,
            got: 72,
            ..
        }
    );
}

#[test]
fn mem_table_body_not_a_whole_number_of_regions_is_size_mismatch() {
    let mut body = table(&[good(0)]);
    body.push(0);
    assert_err!(decode_table(&body, 1), Error::SizeMismatch { .. });
}

#[test]
fn mem_table_shorter_than_its_count_is_size_mismatch() {
    assert_err!(
        decode_table(&[1, 0, 0, 0], 0),
        Error::SizeMismatch {
            expected: 8,
            got: 4,
            ..
        }
    );
}

#[test]
fn mem_table_plain_layout_under_xen_mmap_is_size_mismatch() {
    let body = table(&[good(0)]);
    let ctx = DecodeContext { xen_mmap: true };
    assert_err!(
        FrontendRequest::decode(FrontendReq::SetMemTable, &body, 1, ctx),
        Error::SizeMismatch {
            expected: 48,
            got: 40,
            ..
        }
    );
}

#[test]
fn mem_table_with_fewer_fds_than_regions_is_unexpected_fds() {
    let body = table(&[good(0), good(1)]);
    assert_eq!(
        decode_table(&body, 1),
        Err(Error::UnexpectedFds {
            request: fk(FrontendReq::SetMemTable),
            expected: "one per memory region",
            got: 1
        })
    );
}

#[test]
fn mem_table_with_more_fds_than_regions_is_unexpected_fds() {
    let body = table(&[good(0), good(1)]);
    assert_err!(decode_table(&body, 3), Error::UnexpectedFds { got: 3, .. });
}

#[test]
fn mem_table_with_zero_size_region_is_region_overflow() {
    let body = table(&[good(0), region_bytes(G, 0, 0x7f00_0000_0000 + G, 0)]);
    region_error(&body, 2, 1, "size is zero");
}

#[test]
fn mem_table_with_gpa_plus_size_overflow_is_region_overflow() {
    let body = table(&[region_bytes(u64::MAX - 0xfff, 0x1000, 0x7f00_0000_0000, 0)]);
    region_error(&body, 1, 0, "guest_phys_addr + memory_size");
}

#[test]
fn mem_table_with_user_addr_plus_size_overflow_is_region_overflow() {
    let body = table(&[region_bytes(0, 0x2000, u64::MAX - 0xfff, 0)]);
    region_error(&body, 1, 0, "user_addr + memory_size");
}

#[test]
fn mem_table_with_mmap_offset_plus_size_overflow_is_region_overflow() {
    let body = table(&[region_bytes(0, 0x2000, 0x7f00_0000_0000, u64::MAX)]);
    region_error(&body, 1, 0, "mmap_offset + memory_size");
}

#[test]
fn mem_table_with_overlapping_guest_ranges_is_region_overflow() {
    let body = table(&[
        good(0),
        region_bytes(G - 0x1000, 0x2000, 0x7f80_0000_0000, 0),
    ]);
    region_error(&body, 2, 1, "guest-physical range overlaps");
}

#[test]
fn mem_table_with_overlapping_user_ranges_is_region_overflow() {
    let body = table(&[
        good(0),
        region_bytes(8 * G, 0x2000, 0x7f00_0000_0000 + G - 1, 0),
    ]);
    region_error(&body, 2, 1, "user address range overlaps");
}

#[test]
fn mem_table_with_adjacent_regions_is_accepted() {
    let body = table(&[good(0), good(1)]);
    assert!(decode_table(&body, 2).is_ok());
}

fn single(gpa: u64, size: u64, user: u64, off: u64) -> Vec<u8> {
    cat(&[&[0; 8], &region_bytes(gpa, size, user, off)])
}

/// Decodes `code` with a body of one good region and `fds` descriptors.
fn decode_one_region(code: FrontendReq, fds: usize) -> Result<(), Error> {
    let body = single(0, G, 0x7f00_0000_0000, 0);
    FrontendRequest::decode(code, &body, fds, PLAIN).map(drop)
}

/// `code` with one good region and `fds` descriptors is refused as `fds` unexpected ones.
fn assert_unexpected_fds(code: FrontendReq, fds: usize) {
    let err = decode_one_region(code, fds).unwrap_err();
    assert!(
        matches!(err, Error::UnexpectedFds { got, .. } if got == fds),
        "{err:?}"
    );
}

#[test]
fn add_mem_reg_without_fd_is_unexpected_fds() {
    assert_unexpected_fds(FrontendReq::AddMemReg, 0);
}

#[test]
fn add_mem_reg_with_two_fds_is_unexpected_fds() {
    assert_unexpected_fds(FrontendReq::AddMemReg, 2);
}

#[test]
fn rem_mem_reg_with_one_fd_is_accepted() {
    assert!(decode_one_region(FrontendReq::RemMemReg, 1).is_ok());
}

#[test]
fn rem_mem_reg_with_two_fds_is_unexpected_fds() {
    assert_unexpected_fds(FrontendReq::RemMemReg, 2);
}

#[test]
fn add_mem_reg_of_zero_size_is_region_overflow() {
    let body = single(0, 0, 0x7f00_0000_0000, 0);
    assert_err!(
        FrontendRequest::decode(FrontendReq::AddMemReg, &body, 1, PLAIN),
        Error::RegionOverflow { index: 0, .. }
    );
}

#[test]
fn add_mem_reg_with_gpa_overflow_is_region_overflow() {
    let body = single(u64::MAX, 2, 0, 0);
    assert_err!(
        FrontendRequest::decode(FrontendReq::AddMemReg, &body, 1, PLAIN),
        Error::RegionOverflow { .. }
    );
}

#[test]
fn add_mem_reg_of_32_bytes_is_size_mismatch() {
    let body = region_bytes(0, G, 0, 0);
    assert_err!(
        FrontendRequest::decode(FrontendReq::AddMemReg, &body, 1, PLAIN),
        Error::SizeMismatch {
            expected: 40,
            got: 32,
            ..
        }
    );
}

#[test]
fn mem_table_constructor_refuses_nine_regions() {
    let r = MemoryRegion {
        guest_phys_addr: 0,
        memory_size: 1,
        user_addr: 0,
        mmap_offset: 0,
    };
    assert_err!(MemTable::new(&[r; 9]), Error::InvalidField { .. });
}
