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

#[test]
fn malformed_messages_close_the_descriptors_they_carry() {
    let _serial = serial();
    let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
    let before = open_fds();
    // NOFD set, descriptor attached.
    let kick = FrontendRequest::SetVringKick(VringFd {
        index: 0,
        nofd: true,
    });
    assert_eq!(s.ack(&kick, &borrow(&[file_fd()])), 1);
    // One region, two descriptors.
    let table = FrontendRequest::SetMemTable(MemTable::new(&[cases::region()]).expect("table"));
    assert_eq!(s.ack(&table, &borrow(&[file_fd(), file_fd()])), 1);
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
    let _serial = serial();
    let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
    let before = open_fds();
    let kick = FrontendRequest::SetVringKick(VringFd {
        index: 1,
        nofd: false,
    });
    assert_eq!(s.ack(&kick, &borrow(&[file_fd()])), 0);
    let table = FrontendRequest::SetMemTable(MemTable::new(&[cases::region()]).expect("table"));
    assert_eq!(s.ack(&table, &borrow(&[file_fd()])), 0);
    assert_eq!(open_fds(), before + 2);
    s.server.finish().expect("reset");
    assert_eq!(open_fds(), before);
}

#[test]
fn reply_descriptors_go_to_the_frontend_and_the_server_keeps_no_copy() {
    let _serial = serial();
    let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
    let before = open_fds();
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
