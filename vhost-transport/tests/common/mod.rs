//! What the transport's test files share: the message helpers, the test lock, the
//! transport contract every platform keeps ([`contract`], run for Unix sockets and Windows
//! named pipes by [`transport_contract!`](crate::transport_contract)) and the Unix socket
//! helpers ([`unix`]).
#![allow(dead_code)]

pub mod contract;
#[cfg(target_os = "linux")]
pub mod unix;

use std::sync::{Mutex, MutexGuard};

use vhost_transport::{Connection, Error, FrontendChannel, HEADER_SIZE};

pub type Conn = Connection<FrontendChannel>;

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises the tests of a file: descriptor counts are per process.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A header of `request` with flags 1 (version 1) and a body of `size` bytes.
pub fn header(request: u32, size: u32) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[0..4].copy_from_slice(&request.to_ne_bytes());
    h[4..8].copy_from_slice(&1u32.to_ne_bytes());
    h[8..12].copy_from_slice(&size.to_ne_bytes());
    h
}

/// Header and body of a message with `request`, body bytes `request * 16 + i`.
pub fn message(request: u32, body_len: usize) -> Vec<u8> {
    let mut m = header(request, body_len as u32).to_vec();
    m.extend((0..body_len).map(|i| (request as usize * 16 + i) as u8));
    m
}

/// `err` is a message cut short after `got` of `expected` bytes.
pub fn assert_partial(err: &Error, expected: usize, got: usize) {
    assert!(
        matches!(err, Error::PartialMessage { expected: e, got: g } if *e == expected && *g == got),
        "{err:?}"
    );
}

/// `err` refuses nine descriptors on one message, eight being the most.
pub fn assert_too_many_fds(err: &Error) {
    assert!(
        matches!(err, Error::TooManyFds { got: 9, max: 8 }),
        "{err:?}"
    );
}

/// Nothing is waiting on `conn`: a non-blocking read would block.
pub fn assert_nothing_waiting(conn: &Conn) {
    conn.set_nonblocking(true).unwrap();
    assert!(matches!(conn.recv_header(), Err(Error::WouldBlock)));
}
