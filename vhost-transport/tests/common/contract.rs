//! The transport contract every platform keeps, written once over [`Platform`] and run as
//! `#[test]`s by [`transport_contract!`](crate::transport_contract): framing, descriptors
//! riding with their own message, the body limit, a peer closing at each point, read
//! timeouts, and changing the channel.

use std::io::{Read, Write};
use std::thread;
use std::time::Duration;

use vhost_transport::{
    BackendChannel, BorrowedDescriptor, Connection, Error, OwnedDescriptor, MAX_BODY_SIZE, MAX_FDS,
};

use super::{assert_partial, header, serial, Conn};

/// A platform's connection with a raw peer, and descriptors that can travel and be checked.
pub trait Platform {
    /// The raw other end of a connection.
    type Raw: Read + Write + Send + 'static;
    /// A descriptor lent to a message, with what checks the received copy.
    type Lent;
    /// Whether a non-blocking sender completes a large message (Unix sockets).
    const NONBLOCKING_SEND: bool;
    /// A connection and the raw other end of it.
    fn conn_and_raw() -> (Conn, Self::Raw);
    /// The bytes the raw end writes for `bytes` of messages that carry no descriptor.
    fn plain(bytes: &[u8]) -> Vec<u8>;
    /// `n` descriptors to lend.
    fn lend(n: usize) -> Vec<Self::Lent>;
    /// The descriptor a message lends for `lent`.
    fn borrow(lent: &Self::Lent) -> BorrowedDescriptor<'_>;
    /// `received` are live copies of `originals`, in order.
    fn check(received: Vec<OwnedDescriptor>, originals: &[Self::Lent]);
}

fn lent<P: Platform>(l: &[P::Lent]) -> Vec<BorrowedDescriptor<'_>> {
    l.iter().map(P::borrow).collect()
}

/// Sends request `code` with `value` as its 8-byte body and one lent descriptor; the lent
/// descriptor, to check the received copy against.
fn send_u64_lending_one<P: Platform>(a: &Conn, code: u32, value: u64) -> Vec<P::Lent> {
    let l = P::lend(1);
    a.send(&header(code, 8), &value.to_ne_bytes(), &[], &lent::<P>(&l))
        .unwrap();
    l
}

/// Header, body and payload arrive as sent, with no descriptor; an empty body needs no
/// read; nothing is left buffered and a non-blocking read then would block.
pub fn message_without_descriptors_round_trips_header_body_and_payload<P: Platform>() {
    let _g = serial();
    let (a, b) = Conn::pair().unwrap();
    let h = header(3, 12);
    a.send(&h, &7u64.to_ne_bytes(), &[1, 2, 3, 4], &[]).unwrap();
    a.send(&header(3, 10), b"0123", b"456789", &[]).unwrap();
    a.send(&header(4, 0), &[], &[], &[]).unwrap();
    let (got, fds) = b.recv_header().unwrap();
    assert_eq!(got, h);
    assert!(fds.is_empty());
    assert_eq!(
        b.recv_body(12).unwrap(),
        [7, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]
    );
    let (got, fds) = b.recv_header().unwrap();
    assert_eq!((got, fds.len()), (header(3, 10), 0));
    assert_eq!(b.recv_body(10).unwrap(), b"0123456789");
    assert_eq!(b.recv_header().unwrap().0, header(4, 0));
    assert!(b.recv_body(0).unwrap().is_empty());
    assert!(!b.has_buffered());
    b.set_nonblocking(true).unwrap();
    assert!(matches!(b.recv_header(), Err(Error::WouldBlock)));
}

/// One descriptor arrives with its message's header, usable.
pub fn one_descriptor_arrives_usable<P: Platform>() {
    let _g = serial();
    let (a, b) = Conn::pair().unwrap();
    let l = send_u64_lending_one::<P>(&a, 12, 0);
    let (_, fds) = b.recv_header().unwrap();
    assert_eq!(b.recv_body(8).unwrap(), 0u64.to_ne_bytes());
    P::check(fds, &l);
}

/// The most descriptors a message may carry arrive in order, in both directions.
pub fn eight_descriptors_arrive_in_order_in_both_directions<P: Platform>() {
    let _g = serial();
    let (a, b) = Conn::pair().unwrap();
    for (from, to) in [(&a, &b), (&b, &a)] {
        let l = P::lend(MAX_FDS);
        from.send(&header(5, 0), &[], &[], &lent::<P>(&l)).unwrap();
        let (_, fds) = to.recv_header().unwrap();
        P::check(fds, &l);
    }
}

/// Each message's descriptors stay with it, a message without any between two with some.
pub fn descriptors_stay_with_their_own_message<P: Platform>() {
    let _g = serial();
    let (a, b) = Conn::pair().unwrap();
    let l = P::lend(3);
    let all = lent::<P>(&l);
    a.send(&header(1, 0), &[], &[], &all[..1]).unwrap();
    a.send(&header(2, 0), &[], &[], &[]).unwrap();
    a.send(&header(3, 0), &[], &[], &all[1..]).unwrap();
    let (h1, f1) = b.recv_header().unwrap();
    let (h2, f2) = b.recv_header().unwrap();
    let (h3, f3) = b.recv_header().unwrap();
    assert_eq!((h1[0], h2[0], h3[0]), (1, 2, 3));
    assert!(f2.is_empty());
    P::check(f1, &l[..1]);
    P::check(f3, &l[1..]);
}

/// A body of MAX_BODY_SIZE arrives whole; asking for one byte more (or 4 GiB) is refused
/// before anything is read.
pub fn max_size_body_round_trips_and_larger_is_refused_unread<P: Platform>() {
    let _g = serial();
    let (a, b) = Conn::pair().unwrap();
    let body: Vec<u8> = (0..MAX_BODY_SIZE).map(|i| i as u8).collect();
    a.send(&header(1, MAX_BODY_SIZE as u32), &body, &[], &[])
        .unwrap();
    b.recv_header().unwrap();
    let err = b.recv_body(MAX_BODY_SIZE + 1).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BodyTooLarge {
                len: 4097,
                max: 4096
            }
        ),
        "{err:?}"
    );
    let mut big = vec![0u8; MAX_BODY_SIZE + 1];
    assert!(matches!(
        b.recv_body_into(&mut big),
        Err(Error::BodyTooLarge { .. })
    ));
    assert!(matches!(
        b.recv_body(u32::MAX as usize),
        Err(Error::BodyTooLarge { .. })
    ));
    // Nothing was consumed by the refusals.
    let mut buf = [0u8; MAX_BODY_SIZE];
    b.recv_body_into(&mut buf).unwrap();
    assert_eq!(&buf[..], &body[..]);
}

/// Either end closing before any message is a disconnect at the other.
pub fn peer_closing_before_a_message_is_disconnected<P: Platform>() {
    let _g = serial();
    for first_closes in [true, false] {
        let (a, b) = Conn::pair().unwrap();
        let (gone, left) = if first_closes { (a, b) } else { (b, a) };
        drop(gone);
        let err = left.recv_header().unwrap_err();
        assert!(
            matches!(err, Error::Disconnected) && err.is_disconnect(),
            "{err:?}"
        );
    }
}

/// The peer closing five bytes into a header: a partial message, a disconnect.
pub fn peer_closing_inside_a_header_is_partial<P: Platform>() {
    let _g = serial();
    let (conn, mut raw) = P::conn_and_raw();
    raw.write_all(&P::plain(&header(1, 0)[..5])).unwrap();
    drop(raw);
    let err = conn.recv_header().unwrap_err();
    assert_partial(&err, 12, 5);
    assert!(err.is_disconnect());
}

/// The peer closing ten bytes into a 100-byte body: a partial message.
pub fn peer_closing_inside_a_body_is_partial<P: Platform>() {
    let _g = serial();
    let (conn, mut raw) = P::conn_and_raw();
    let mut msg = header(1, 100).to_vec();
    msg.extend_from_slice(&[0u8; 10]);
    raw.write_all(&P::plain(&msg)).unwrap();
    drop(raw);
    conn.recv_header().unwrap();
    let err = conn.recv_body(100).unwrap_err();
    assert_partial(&err, 100, 10);
}

/// A message sent just before the peer closes is delivered whole, with its descriptor;
/// then the connection is disconnected.
pub fn peer_closing_after_a_message_delivers_it_then_disconnects<P: Platform>() {
    let _g = serial();
    let (a, b) = Conn::pair().unwrap();
    let l = send_u64_lending_one::<P>(&a, 1, 42);
    drop(a);
    let (_, fds) = b.recv_header().unwrap();
    assert_eq!(b.recv_body(8).unwrap(), 42u64.to_ne_bytes());
    assert!(matches!(b.recv_header(), Err(Error::Disconnected)));
    P::check(fds, &l);
}

/// A read timeout with nothing sent is `TimedOut`, retryable, and consumes nothing; a zero
/// timeout is refused.
pub fn read_timeout_before_any_byte_is_timed_out<P: Platform>() {
    let _g = serial();
    let (a, b) = Conn::pair().unwrap();
    b.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let err = b.recv_header().unwrap_err();
    assert!(
        matches!(err, Error::TimedOut) && err.is_retryable(),
        "{err:?}"
    );
    // Nothing was consumed: the connection still works.
    a.send(&header(4, 0), &[], &[], &[]).unwrap();
    assert_eq!(b.recv_header().unwrap().0, header(4, 0));
    assert!(b.set_read_timeout(Some(Duration::ZERO)).is_err());
}

/// A read timeout three bytes into a header is a partial message.
pub fn read_timeout_in_the_middle_of_a_header_is_partial<P: Platform>() {
    let _g = serial();
    let (conn, mut raw) = P::conn_and_raw();
    conn.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    raw.write_all(&P::plain(&header(1, 0)[..3])).unwrap();
    let err = conn.recv_header().unwrap_err();
    assert_partial(&err, 12, 3);
    drop(raw);
}

/// A connection turned into the other channel keeps its socket or pipe.
pub fn into_channel_keeps_the_connection<P: Platform>() {
    let _g = serial();
    let (a, b) = Conn::pair().unwrap();
    let a: Connection<BackendChannel> = a.into_channel();
    a.send(&header(1, 0), &[], &[], &[]).unwrap();
    assert_eq!(b.recv_header().unwrap().0, header(1, 0));
}

/// A 4 MiB message (with a descriptor) goes through as the peer drains it in body-sized
/// reads, from a non-blocking sender where the platform has one.
pub fn large_message_completes_once_the_peer_drains<P: Platform>() {
    let _g = serial();
    let (a, b) = Conn::pair().unwrap();
    if P::NONBLOCKING_SEND {
        a.set_nonblocking(true).unwrap();
    }
    let payload: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
    let expected = payload.clone();
    let reader = thread::spawn(move || {
        let (h, fds) = b.recv_header().unwrap();
        let mut got = Vec::with_capacity(expected.len());
        let mut chunk = [0u8; MAX_BODY_SIZE];
        while got.len() < expected.len() {
            let n = (expected.len() - got.len()).min(MAX_BODY_SIZE);
            b.recv_body_into(&mut chunk[..n]).unwrap();
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got == expected);
        (h, fds.len())
    });
    let l = P::lend(1);
    let h = header(1, payload.len() as u32);
    a.send(&h, &[], &payload, &lent::<P>(&l)).unwrap();
    assert_eq!(reader.join().unwrap(), (h, 1));
}

/// A sender thread does not wait for a receiver blocked on the same connection.
pub fn send_goes_through_while_another_thread_waits_to_receive<P: Platform>() {
    let _g = serial();
    let (a, b) = Conn::pair().unwrap();
    thread::scope(|s| {
        let waiting = s.spawn(|| b.recv_header().unwrap().0);
        thread::sleep(Duration::from_millis(50));
        // `b` is blocked in a read; its write side must still work.
        b.send(&header(6, 0), &[], &[], &[]).unwrap();
        assert_eq!(a.recv_header().unwrap().0, header(6, 0));
        a.send(&header(7, 0), &[], &[], &[]).unwrap();
        assert_eq!(waiting.join().unwrap(), header(7, 0));
    });
}

/// The contract's cases as `#[test]` functions of the calling test file, run for the
/// platform `$p` (a [`Platform`]).
#[macro_export]
macro_rules! transport_contract {
    (@cases $p:ty; [$($case:ident),* $(,)?]) => {
        $(
            #[test]
            fn $case() {
                common::contract::$case::<$p>()
            }
        )*
    };
    ($p:ty) => {
        $crate::transport_contract!(@cases $p; [
            // Framing, descriptors and the body limit.
            message_without_descriptors_round_trips_header_body_and_payload,
            one_descriptor_arrives_usable,
            eight_descriptors_arrive_in_order_in_both_directions,
            descriptors_stay_with_their_own_message,
            max_size_body_round_trips_and_larger_is_refused_unread,
            // A peer closing at each point.
            peer_closing_before_a_message_is_disconnected,
            peer_closing_inside_a_header_is_partial,
            peer_closing_inside_a_body_is_partial,
            peer_closing_after_a_message_delivers_it_then_disconnects,
            // Read timeouts, the channel, and both directions at once.
            read_timeout_before_any_byte_is_timed_out,
            read_timeout_in_the_middle_of_a_header_is_partial,
            into_channel_keeps_the_connection,
            send_goes_through_while_another_thread_waits_to_receive,
            large_message_completes_once_the_peer_drains,
        ]);
    };
}
