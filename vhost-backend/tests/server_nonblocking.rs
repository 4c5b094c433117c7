//! A server driven by an event loop: once a message's header is consumed, no error says
//! "call again", since the next call would read the rest of that message as a header.

#![cfg(unix)]

mod common;

use std::time::Duration;

use common::cases::{self, FEATURES};
use vhost_backend::test_utils::RecordingBackend;
use vhost_backend::{BackendServer, ServerError};
use vhost_proto::{FrontendReq, Header, HeaderFlags};
use vhost_transport::{Connection, Error, FrontendChannel};

type Conn = Connection<FrontendChannel>;

/// A server whose end of the connection is non-blocking.
fn server() -> (BackendServer<RecordingBackend>, Conn) {
    let (back, front) = Conn::pair().expect("socket pair");
    back.set_nonblocking(true).expect("non-blocking");
    let server = BackendServer::new(back, cases::backend()).expect("server");
    (server, front)
}

fn send_header(front: &Conn, code: FrontendReq, size: u32) {
    let header = Header::new(code as u32, HeaderFlags::empty(), size);
    front.send(&header.to_wire(), &[], &[], &[]).expect("send");
}

fn assert_cut_short(e: &ServerError, size: usize) {
    assert!(!e.is_retryable(), "{e:?}");
    assert!(e.is_disconnect(), "{e:?}");
    assert!(
        matches!(
            e,
            ServerError::Transport(Error::PartialMessage { expected, got: 0 }) if *expected == size
        ),
        "{e:?}"
    );
}

#[test]
fn nonblocking_server_with_no_message_waiting_is_retryable() {
    let (mut server, _front) = server();
    let e = server.handle_one().unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
}

#[test]
fn nonblocking_server_with_a_header_and_no_body_closes_instead_of_retrying() {
    let (mut server, front) = server();
    send_header(&front, FrontendReq::SetFeatures, 8);
    let e = server.handle_one().unwrap_err();
    assert_cut_short(&e, 8);
}

#[test]
fn read_timeout_between_header_and_body_closes_instead_of_retrying() {
    let (back, front) = Conn::pair().expect("socket pair");
    back.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("timeout");
    let mut server = BackendServer::new(back, cases::backend()).expect("server");
    send_header(&front, FrontendReq::SetFeatures, 8);
    let e = server.handle_one().unwrap_err();
    assert_cut_short(&e, 8);
}

#[test]
fn nonblocking_server_whose_replies_are_not_read_closes_instead_of_retrying() {
    let (mut server, front) = server();
    // The front-end never reads: sooner or later a reply cannot be written.
    let mut last = None;
    for _ in 0..100_000 {
        send_header(&front, FrontendReq::GetFeatures, 0);
        if let Err(e) = server.handle_one() {
            last = Some(e);
            break;
        }
    }
    let e = last.expect("the reply buffer never filled up");
    assert!(!e.is_retryable(), "{e:?}");
    assert!(
        matches!(
            e,
            ServerError::ReplyStalled {
                request: FrontendReq::GetFeatures,
                cause: Error::WouldBlock
            }
        ),
        "{e:?}"
    );
    // Whatever was answered before is intact.
    let (wire, _) = front.recv_header().expect("a reply");
    let header = Header::from_wire(&wire);
    assert_eq!(header.request, FrontendReq::GetFeatures as u32);
    let body = front.recv_body(header.size as usize).expect("reply body");
    assert_eq!(body, FEATURES.to_ne_bytes());
}
