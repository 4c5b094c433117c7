//! No descriptor leaks: every descriptor a message carries is either handed to the back-end
//! or closed, on every path. Tests here count the process's open descriptors, so each one
//! holds a lock while it runs.

#![cfg(unix)]

mod common;

use std::sync::{Mutex, MutexGuard, PoisonError};

use common::cases::{self, ACKED, FEATURES};
use common::{borrow, file_fd, Session};
use vhost_proto::{FrontendRequest, Header, MemTable, VringFd};

static FD_COUNTING: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    FD_COUNTING.lock().unwrap_or_else(PoisonError::into_inner)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[test]
fn every_request_refused_failed_or_reset_leaves_no_descriptor_open() {
    let _serial = serial();
    let before = open_fds();
    for case in cases::all() {
        let name = case.code().name();
        // Not negotiated: refused before the back-end.
        let mut s = Session::new(cases::backend());
        s.send(&case.request, true, &borrow(&case.make_fds()));
        let _ = s.step();
        drop(s);
        // Negotiated, and the back-end fails.
        let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
        s.rec.fail_on(case.code());
        s.send(&case.request, true, &borrow(&case.make_fds()));
        let _ = s.step();
        let reply = s.reply();
        assert!(reply.as_ref().is_none_or(|r| r.fds.is_empty()), "{name}");
        drop((s, reply));
        // Negotiated and accepted: held by the back-end until the session ends.
        let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
        s.send(&case.request, true, &borrow(&case.make_fds()));
        let _ = s.step();
        drop(s.reply());
        s.server.finish().expect("reset");
        drop(s);
        assert_eq!(open_fds(), before, "{name} leaked a descriptor");
    }
}

/// Under the test lock, a negotiated session and the count of descriptors open with it.
fn negotiated_session() -> (MutexGuard<'static, ()>, Session, usize) {
    let serial = serial();
    let s = Session::negotiated(cases::backend(), ACKED, FEATURES);
    let before = open_fds();
    (serial, s, before)
}

/// The ack of SET_VRING_KICK for queue `index` with `nofd` as given and a descriptor
/// attached.
fn ack_kick_with_a_descriptor(s: &mut Session, index: u8, nofd: bool) -> u64 {
    let kick = FrontendRequest::SetVringKick(VringFd { index, nofd });
    s.ack(&kick, &borrow(&[file_fd()]))
}

/// The ack of a SET_MEM_TABLE of one region that carries `fds` descriptors.
fn ack_one_region_table(s: &mut Session, fds: usize) -> u64 {
    let table = FrontendRequest::SetMemTable(MemTable::new(&[cases::region()]).expect("table"));
    let fds: Vec<_> = (0..fds).map(|_| file_fd()).collect();
    s.ack(&table, &borrow(&fds))
}

#[test]
fn malformed_messages_close_the_descriptors_they_carry() {
    let (_serial, mut s, before) = negotiated_session();
    // NOFD set, descriptor attached.
    assert_eq!(ack_kick_with_a_descriptor(&mut s, 0, true), 1);
    // One region, two descriptors.
    assert_eq!(ack_one_region_table(&mut s, 2), 1);
    // REM_MEM_REG may carry a descriptor, which is closed unused.
    let rem = FrontendRequest::RemMemReg(vhost_proto::RegionMsg::new(cases::region()));
    assert_eq!(s.ack(&rem, &borrow(&[file_fd()])), 0);
    assert_eq!(s.rec.fd_count(), 0);
    // A broken frame with descriptors.
    let bad = Header {
        request: 1,
        flags: 3,
        size: 0,
    };
    s.send_raw(bad, &[], &borrow(&[file_fd(), file_fd(), file_fd()]));
    assert!(s.step().is_err());
    assert_eq!(open_fds(), before);
}

#[test]
fn descriptors_accepted_by_the_backend_stay_open_until_the_session_ends() {
    let (_serial, mut s, before) = negotiated_session();
    assert_eq!(ack_kick_with_a_descriptor(&mut s, 1, false), 0);
    assert_eq!(ack_one_region_table(&mut s, 1), 0);
    assert_eq!(open_fds(), before + 2);
    s.server.finish().expect("reset");
    assert_eq!(open_fds(), before);
}

#[test]
fn reply_descriptors_go_to_the_frontend_and_the_server_keeps_no_copy() {
    let (_serial, mut s, before) = negotiated_session();
    let requests = [
        FrontendRequest::PostcopyAdvise,
        FrontendRequest::GetInflightFd(Default::default()),
        FrontendRequest::GetSharedObject(Default::default()),
    ];
    for req in requests {
        let reply = s.exchange(&req, false, &[]).expect("reply");
        assert_eq!(reply.fds.len(), 1, "{}", req.code().name());
    }
    assert_eq!(open_fds(), before);
}
