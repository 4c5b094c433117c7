//! Pins both request tables, row by row, to the specification, and the wire layouts to
//! their sizes.

mod common;

use common::spec_rows;
use core::mem::size_of;
use vhost_proto::wire::*;
use vhost_proto::*;

/// One row of `spec_rows` against a request's declaration.
type Row = (
    u32,
    &'static str,
    BodyShape,
    FdPolicy,
    Gate,
    Owes,
    ReplyShape,
);

fn check_row(s: &RequestSpec, (code, name, body, fds, gate, owes, reply): Row) {
    assert_eq!(s.name, name, "code {code}");
    assert_eq!(s.body, body, "{name}: body shape");
    assert_eq!(s.fds, fds, "{name}: descriptor policy");
    assert_eq!(s.gate, gate, "{name}: gate");
    assert_eq!(s.owes, owes, "{name}: owes");
    if owes != Owes::AckWhenAsked {
        assert_eq!(s.reply, reply, "{name}: reply shape");
    }
}

/// Each spec row with the request its code decodes to, after checking that the table
/// declares as many requests as the spec has rows.
fn decoded<R, const N: usize>(
    declared: usize,
    rows: [Row; N],
    from_code: fn(u32) -> Option<R>,
) -> impl Iterator<Item = (R, Row)> {
    assert_eq!(declared, N);
    rows.into_iter().map(move |row| {
        let code = row.0;
        (
            from_code(code).unwrap_or_else(|| panic!("code {code} unknown")),
            row,
        )
    })
}

#[test]
fn frontend_table_matches_the_spec_row_by_row() {
    let rows = spec_rows::FRONTEND;
    for (r, row) in decoded(FRONTEND_REQUESTS.len(), rows, FrontendReq::from_code) {
        assert_eq!(r as u32, row.0);
        check_row(r.spec(), row);
    }
}

#[test]
fn backend_table_matches_the_spec_row_by_row() {
    let rows = spec_rows::BACKEND;
    for (r, row) in decoded(BACKEND_REQUESTS.len(), rows, BackendReq::from_code) {
        check_row(r.spec(), row);
        assert_eq!(r.spec().reply, row.6, "{}: reply shape", row.1);
    }
}

#[test]
fn table_codes_outside_the_spec_are_unknown() {
    for code in [0, 45, 46, 1000, 0xffff_ffff] {
        assert_eq!(FrontendReq::from_code(code), None, "{code}");
    }
    for code in [0, 11, 12, 1002, 1006, 1007] {
        assert_eq!(BackendReq::from_code(code), None, "{code}");
    }
}

#[test]
fn wire_layouts_have_the_spec_sizes() {
    assert_eq!(size_of::<Header>(), 12);
    assert_eq!(size_of::<VringState>(), 8);
    assert_eq!(size_of::<VringAddr>(), 40);
    assert_eq!(size_of::<MemoryRegion>(), 32);
    assert_eq!(size_of::<LogBase>(), 16);
    assert_eq!(size_of::<IotlbMsg>(), 32);
    assert_eq!(size_of::<ConfigHeader>(), 12);
    assert_eq!(size_of::<Inflight>(), 24);
    assert_eq!(size_of::<VringArea>(), 24);
    assert_eq!(size_of::<SharedObject>(), 16);
    assert_eq!(size_of::<DeviceStateTransfer>(), 8);
    assert_eq!(size_of::<ShmemConfig>(), 8 + 256 * 8);
    assert_eq!(size_of::<ShmemMap>(), 40);
}

#[test]
fn body_maxima_follow_the_layouts() {
    // SET_MEM_TABLE: 8 bytes + 8 regions of at most 40 bytes (XEN_MMAP).
    assert_eq!(BodyShape::MemTable.max_size(), 8 + 8 * 40);
    // ADD/REM_MEM_REG: 8 bytes of padding + one region of at most 40 bytes.
    assert_eq!(BodyShape::SingleRegion.max_size(), 48);
    assert_eq!(
        FrontendReq::GetConfig.spec().body.max_size(),
        12 + wire::MAX_CONFIG_SIZE
    );
    for &(_, s) in FRONTEND_REQUESTS.iter() {
        assert!(s.body.max_size() <= MAX_BODY_SIZE, "{}", s.name);
    }
    assert_eq!(MAX_FDS, 8);
    assert_eq!(MAX_MEM_TABLE_REGIONS, 8);
}
