//! SET_BACKEND_REQ_FD hands the back-end a [`BackendClient`]; every back-end request is
//! sent on it and acked by the front-end end, played here by a thread.

#![cfg(unix)]

mod common;

use std::os::fd::AsFd;
use std::thread;

use common::cases::{self, ACKED, FEATURES};
use common::{borrow, file_fd, Session};
use vhost_backend::{BackendClient, ClientError};
use vhost_proto::{
    encode_backend_reply, BackendReq, BackendRequest, FrontendRequest, Header, MAX_BODY_SIZE,
};
use vhost_transport::{BackendChannel, Connection};

/// A session whose back-end holds a client, and the front-end end of its channel.
fn channel() -> (Session, BackendClient, Connection<BackendChannel>) {
    let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
    let (frontend_end, backend_end) = Connection::<BackendChannel>::pair().expect("pair");
    assert_eq!(
        s.ack(&FrontendRequest::SetBackendReqFd, &[backend_end.as_fd()]),
        0
    );
    drop(backend_end);
    let client = s.rec.backend_client().expect("client handed over");
    (s, client, frontend_end)
}

/// Plays the front-end: answers `n` requests with `status`, attaching a descriptor to
/// SHARED_OBJECT_LOOKUP replies, and returns what came (code, NEED_REPLY, fds).
fn answer(
    conn: Connection<BackendChannel>,
    n: usize,
    status: u64,
) -> thread::JoinHandle<Vec<(BackendReq, bool, usize)>> {
    thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..n {
            let (wire, fds) = conn.recv_header().expect("request");
            let header = Header::from_wire(&wire);
            let code = header.check_backend_request().expect("valid header");
            let body = conn.recv_body(header.size as usize).expect("body");
            BackendRequest::decode(code, &body, fds.len()).expect("valid request");
            seen.push((code, header.need_reply(), fds.len()));
            let mut out = [0u8; MAX_BODY_SIZE];
            let enc = encode_backend_reply(code, status, &mut out).expect("reply");
            let reply_fd = file_fd();
            let attach = if code == BackendReq::SharedObjectLookup {
                vec![reply_fd.as_fd()]
            } else {
                vec![]
            };
            conn.send(&enc.header.to_wire(), &out[..enc.body_len], &[], &attach)
                .expect("send reply");
        }
        seen
    })
}

#[test]
fn every_backend_request_is_sent_with_need_reply_and_acked() {
    use BackendReq as B;
    // What the front-end end sees: code, NEED_REPLY, descriptors (the host notifier twice,
    // map and unmap).
    let expected = [
        (B::IotlbMsg, true, 0),
        (B::ConfigChangeMsg, true, 0),
        (B::VringHostNotifierMsg, true, 1),
        (B::VringHostNotifierMsg, true, 0),
        (B::VringCall, true, 0),
        (B::VringErr, true, 0),
        (B::SharedObjectAdd, true, 0),
        (B::SharedObjectRemove, true, 0),
        (B::SharedObjectLookup, true, 0),
        (B::ShmemMap, true, 1),
        (B::ShmemUnmap, true, 0),
    ];
    // Every back-end request is sent: a request added to the rows fails here until this
    // test sends it.
    let covered: std::collections::BTreeSet<BackendReq> =
        expected.iter().map(|(code, ..)| *code).collect();
    assert_eq!(covered, BackendReq::all().collect());
    let (_s, client, conn) = channel();
    let frontend = answer(conn, expected.len(), 0);
    let msg = vhost_test_support::wire::iotlb_miss(0x1000);
    let map = vhost_test_support::wire::shmem_map(0, 0, 0x1000, 0);
    let fd = file_fd();
    client.iotlb_msg(msg).expect("IOTLB");
    client.config_change().expect("config change");
    client
        .vring_host_notifier(0, 0x1000, 0, Some(fd.as_fd()))
        .expect("notifier map");
    client
        .vring_host_notifier(0, 0, 0, None)
        .expect("notifier unmap");
    client.vring_call(1).expect("call");
    client.vring_err(1).expect("err");
    client.shared_object_add([1; 16]).expect("add");
    client.shared_object_remove([1; 16]).expect("remove");
    let found = client.shared_object_lookup([1; 16]).expect("lookup");
    assert!(found.is_some(), "lookup reply descriptor");
    client.shmem_map(map, fd.as_fd()).expect("map");
    client.shmem_unmap(map).expect("unmap");
    let seen = frontend.join().expect("front-end thread");
    assert_eq!(seen, expected);
}

#[test]
fn backend_request_refused_by_the_frontend_is_a_refused_error() {
    let (_s, client, conn) = channel();
    let frontend = answer(conn, 1, 1);
    let e = client.config_change().expect_err("refused");
    assert!(matches!(e, ClientError::Refused { status: 1, .. }), "{e}");
    frontend.join().expect("front-end thread");
}

#[test]
fn set_backend_req_fd_with_a_descriptor_that_is_not_a_socket_gets_a_failure_ack() {
    let mut s = Session::negotiated(cases::backend(), ACKED, FEATURES);
    assert_eq!(
        s.ack(&FrontendRequest::SetBackendReqFd, &borrow(&[file_fd()])),
        1
    );
    assert!(s.rec.take_calls().is_empty());
    assert!(s.rec.backend_client().is_none());
}

/// QEMU hands the channel over before SET_FEATURES: a request gated on a virtio feature
/// (BACKEND_IOTLB_MSG needs ACCESS_PLATFORM) is refused until that feature is acked, then
/// goes through on the same client, because the client reads the live negotiation.
#[test]
fn backend_channel_handed_over_before_set_features_follows_later_acks() {
    let mut s = Session::new(cases::backend());
    s.exchange(
        &FrontendRequest::SetProtocolFeatures(ACKED.bits()),
        false,
        &[],
    );
    let (frontend_end, backend_end) = Connection::<BackendChannel>::pair().expect("pair");
    assert_eq!(
        s.ack(&FrontendRequest::SetBackendReqFd, &[backend_end.as_fd()]),
        0
    );
    drop(backend_end);
    let client = s.rec.backend_client().expect("client handed over");
    let msg = vhost_test_support::wire::iotlb_miss(0x1000);
    assert!(matches!(
        client.iotlb_msg(msg),
        Err(ClientError::Protocol(
            vhost_proto::Error::NotNegotiated { .. }
        ))
    ));
    s.exchange(&FrontendRequest::SetFeatures(FEATURES), false, &[]);
    let frontend = answer(frontend_end, 1, 0);
    client
        .iotlb_msg(msg)
        .expect("allowed once ACCESS_PLATFORM is acked");
    let seen = frontend.join().expect("front-end thread");
    assert_eq!(seen, vec![(BackendReq::IotlbMsg, true, 0)]);
}
