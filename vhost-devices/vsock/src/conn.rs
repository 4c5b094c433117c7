//! One connection between a guest socket and a host Unix stream: its state and the
//! credit accounting of both directions (virtio 1.2, 5.10.6.3).
//!
//! Guest → host: the device announces [`BUF_ALLOC`] bytes of buffer and, as `fwd_cnt`, how
//! many of the guest's bytes it has written to the host stream. Bytes the host stream does
//! not take at once wait in [`Conn::pending`], never more than [`BUF_ALLOC`]: a guest that
//! sends past the credit it was given is reset, not buffered for.
//!
//! Host → guest: the guest announces its `buf_alloc` and `fwd_cnt` in every packet; the
//! device sends at most `buf_alloc - (rx_cnt - fwd_cnt)` bytes ahead of what the guest has
//! consumed, and reads the host stream only that far.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::socket::{recv, send, MsgFlags};

use crate::packet::Header;

/// Receive buffer the device announces per connection (guest → host bytes not yet taken by
/// the host stream).
pub const BUF_ALLOC: u32 = 256 * 1024;

/// Capacity of an emptied pending buffer past which its memory is given back.
const SHRINK_ABOVE: usize = 16 * 1024;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// A host process asked for it (`CONNECT <port>`); the guest has not answered yet.
    Connecting,
    /// Both ends agreed; data flows.
    Established,
}

/// A credit the guest announced that cannot be true.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CreditViolation;

/// One connection. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Conn {
    pub stream: UnixStream,
    pub phase: Phase,
    /// While [`Phase::Connecting`]: when the host process stops waiting for the guest.
    pub deadline: Instant,
    /// The host port (the local end of a host-initiated connection, or the port the guest
    /// connected to).
    pub host_port: u32,
    // What the rx queue owes the guest for this connection.
    pub send_request: bool,
    pub send_response: bool,
    pub credit_update: bool,
    /// A CREDIT_REQUEST went out and no credit came back since.
    pub credit_requested: bool,
    /// The host stream reached its end and the guest has not been told yet.
    pub eof_to_send: bool,
    /// The host stream reached its end.
    pub host_eof: bool,
    /// The host stream may have bytes to read (edge-triggered: until a read says otherwise).
    pub host_readable: bool,
    /// The host stream said it sends no more (EPOLLRDHUP/EPOLLHUP): reads go on until they
    /// see the end, short or not.
    pub host_hup: bool,
    /// In the device's ready list.
    pub queued: bool,
    // Guest → host.
    pub guest_shut_send: bool,
    pub guest_shut_rcv: bool,
    host_write_shut: bool,
    pending: VecDeque<u8>,
    /// Leading bytes of `pending` that are the device's own (`OK <port>\n`), not the guest's.
    preamble: usize,
    recv_cnt: u32,
    fwd_cnt: u32,
    last_fwd_sent: u32,
    // Host → guest.
    rx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
}

/// Writes as much of `data` as the stream takes now. `Ok(n)`: `n` bytes taken (0 when it
/// is full).
fn send_some(stream: &UnixStream, data: &[u8]) -> io::Result<usize> {
    loop {
        match send(
            stream.as_raw_fd(),
            data,
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(n) => return Ok(n),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
}

impl Conn {
    /// A connection over `stream` (non-blocking) to host port `host_port`.
    pub fn new(stream: UnixStream, phase: Phase, host_port: u32) -> Conn {
        Conn {
            stream,
            phase,
            deadline: Instant::now(),
            host_port,
            send_request: false,
            send_response: false,
            credit_update: false,
            credit_requested: false,
            eof_to_send: false,
            host_eof: false,
            host_readable: false,
            host_hup: false,
            queued: false,
            guest_shut_send: false,
            guest_shut_rcv: false,
            host_write_shut: false,
            pending: VecDeque::new(),
            preamble: 0,
            recv_cnt: 0,
            fwd_cnt: 0,
            last_fwd_sent: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
        }
    }

    /// Takes the guest's `buf_alloc` and `fwd_cnt` from one of its packets. `Ok(true)` when
    /// the credit grew. A `fwd_cnt` ahead of what was sent is refused.
    pub fn update_peer(&mut self, buf_alloc: u32, fwd_cnt: u32) -> Result<bool, CreditViolation> {
        // The guest cannot have consumed bytes it was never sent. Anything from its last
        // `fwd_cnt` up to `rx_cnt` is possible, however many bytes are in flight (a guest
        // buffer may exceed 2 GiB); outside that, a signed distance tells an older value
        // (accepted, as before) from one ahead of `rx_cnt`.
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        let behind = self.rx_cnt.wrapping_sub(fwd_cnt);
        if behind > in_flight && (behind as i32) < 0 {
            return Err(CreditViolation);
        }
        let before = self.credit();
        self.peer_buf_alloc = buf_alloc;
        if fwd_cnt != self.peer_fwd_cnt {
            self.credit_requested = false;
        }
        self.peer_fwd_cnt = fwd_cnt;
        Ok(self.credit() > before)
    }

    /// Bytes the guest can take now. Never more than its `buf_alloc` minus the bytes in
    /// flight; 0 when the guest shrank its buffer under what is in flight.
    pub fn credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// `n` bytes were sent to the guest.
    pub fn sent_to_guest(&mut self, n: u32) {
        self.rx_cnt = self.rx_cnt.wrapping_add(n);
    }

    /// Stamps the device's credit on a packet to the guest.
    pub fn stamp(&mut self, hdr: &mut Header) {
        hdr.buf_alloc = BUF_ALLOC.into();
        hdr.fwd_cnt = self.fwd_cnt.into();
        self.last_fwd_sent = self.fwd_cnt;
    }

    /// Whether the guest should hear of the space freed since the last packet: when it
    /// believes less than half of the buffer is free and more is.
    pub fn credit_update_due(&self) -> bool {
        let believed_used = self.recv_cnt.wrapping_sub(self.last_fwd_sent);
        self.fwd_cnt != self.last_fwd_sent && believed_used > BUF_ALLOC / 2
    }

    /// Whether the guest may send `len` more bytes (its credit covers them).
    pub fn has_room(&self, len: u32) -> bool {
        let buffered = self.recv_cnt.wrapping_sub(self.fwd_cnt);
        u64::from(buffered) + u64::from(len) <= u64::from(BUF_ALLOC)
    }

    /// Guest bytes for the host stream: written now as far as the stream takes them (behind
    /// any pending bytes), the rest kept (the caller checked [`has_room`](Self::has_room)).
    pub fn push_guest_bytes(&mut self, data: &[u8]) -> io::Result<()> {
        self.recv_cnt = self.recv_cnt.wrapping_add(data.len() as u32);
        let mut taken = 0;
        if self.pending.is_empty() {
            while taken < data.len() {
                let n = send_some(&self.stream, &data[taken..])?;
                if n == 0 {
                    break;
                }
                taken += n;
            }
            self.fwd_cnt = self.fwd_cnt.wrapping_add(taken as u32);
        }
        self.pending.extend(&data[taken..]);
        self.flush()
    }

    /// Queues the device's own bytes for the host stream, ahead of any guest bytes.
    pub fn preamble(&mut self, line: &[u8]) -> io::Result<()> {
        for &b in line.iter().rev() {
            self.pending.push_front(b);
        }
        self.preamble += line.len();
        self.flush()
    }

    /// Writes pending bytes to the host stream until it is full; then, once the guest has
    /// shut its sending side and everything is written, shuts the stream's writing side.
    pub fn flush(&mut self) -> io::Result<()> {
        while !self.pending.is_empty() {
            let (front, _) = self.pending.as_slices();
            let n = send_some(&self.stream, front)?;
            if n == 0 {
                break;
            }
            self.pending.drain(..n);
            let ours = n.min(self.preamble);
            self.preamble -= ours;
            self.fwd_cnt = self.fwd_cnt.wrapping_add((n - ours) as u32);
        }
        if self.pending.is_empty() && self.pending.capacity() > SHRINK_ABOVE {
            // A host stream that fell behind once does not keep its buffer for good.
            self.pending = VecDeque::new();
        }
        if self.guest_shut_send && self.pending.is_empty() && !self.host_write_shut {
            self.host_write_shut = true;
            // The host may have closed its end already; nothing is lost either way.
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }

    /// Whether bytes wait for the host stream to take them.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Bytes waiting for the host stream.
    #[cfg(test)]
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Whether both directions are over: the guest sends nothing more and all it sent
    /// reached the host, and the host sends nothing more (or the guest takes nothing more).
    pub fn finished(&self) -> bool {
        let to_host_done = self.guest_shut_send && self.pending.is_empty();
        let to_guest_done = (self.host_eof && !self.eof_to_send) || self.guest_shut_rcv;
        to_host_done && to_guest_done
    }

    /// Whether the host stream has nothing to read now (a look, nothing is taken). A read
    /// can stop short with bytes left (a Unix stream stops after a message that carried
    /// descriptors), so only this says a stream was drained.
    pub fn host_drained(&self) -> bool {
        let mut b = [0u8; 1];
        loop {
            match recv(
                self.stream.as_raw_fd(),
                &mut b,
                MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
            ) {
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return true,
                // Bytes, the end, or an error: the next read reports it.
                _ => return false,
            }
        }
    }

    /// Reads up to `buf.len()` bytes of the host stream. `Ok(None)` when none are there
    /// now; `Ok(Some(0))` at its end.
    pub fn read_host(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match self.stream.read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> (Conn, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        (Conn::new(a, Phase::Established, 1), b)
    }

    #[test]
    fn credit_is_buf_alloc_minus_bytes_in_flight() {
        let (mut c, _peer) = conn();
        assert_eq!(c.credit(), 0, "no credit before the guest announced any");
        assert!(c.update_peer(1000, 0).unwrap());
        assert_eq!(c.credit(), 1000);
        c.sent_to_guest(600);
        assert_eq!(c.credit(), 400);
        assert!(c.update_peer(1000, 500).unwrap());
        assert_eq!(c.credit(), 900);
        // The guest shrinks its buffer under what is in flight: no credit, no underflow.
        assert!(!c.update_peer(50, 500).unwrap());
        assert_eq!(c.credit(), 0);
    }

    #[test]
    fn credit_survives_counter_wrap_and_refuses_fwd_cnt_ahead_of_what_was_sent() {
        let (mut c, _peer) = conn();
        c.rx_cnt = u32::MAX - 10;
        c.update_peer(4096, u32::MAX - 10).unwrap();
        c.sent_to_guest(100);
        assert_eq!(c.credit(), 3996);
        c.update_peer(4096, 89).unwrap();
        assert_eq!(c.credit(), 4096);
        assert_eq!(c.update_peer(4096, 200), Err(CreditViolation));
        assert_eq!(
            c.update_peer(u32::MAX, 89 + 0x8000_0000),
            Err(CreditViolation)
        );
    }

    #[test]
    fn more_than_two_gib_in_flight_to_a_guest_with_a_large_buffer_is_no_violation() {
        let (mut c, _peer) = conn();
        c.update_peer(u32::MAX, 0).unwrap();
        // 3 GiB sent, the guest has consumed 1 GiB of it: 2 GiB in flight.
        c.sent_to_guest(3 << 30);
        assert_eq!(c.update_peer(u32::MAX, 1 << 30), Ok(true));
        assert_eq!(c.credit(), u32::MAX - (2 << 30));
        // Every value up to what was sent stays acceptable, nothing past it.
        assert_eq!(c.update_peer(u32::MAX, 3 << 30), Ok(true));
        assert_eq!(c.credit(), u32::MAX);
        assert_eq!(c.update_peer(u32::MAX, (3 << 30) + 1), Err(CreditViolation));
    }

    #[test]
    fn guest_bytes_beyond_the_announced_buffer_are_refused_and_a_full_host_is_buffered() {
        let (mut c, peer) = conn();
        let chunk = vec![7u8; 64 * 1024];
        let mut sent = 0u64;
        while c.has_room(chunk.len() as u32) {
            c.push_guest_bytes(&chunk).unwrap();
            sent += chunk.len() as u64;
            assert!(sent <= 64 << 20, "room never ran out");
        }
        assert!(c.pending_len() as u64 <= u64::from(BUF_ALLOC));
        assert!(c.has_pending(), "the socket buffer should be full");
        // The host reads everything: fwd_cnt catches up with recv_cnt.
        peer.set_nonblocking(true).unwrap();
        let mut got = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match (&peer).read(&mut buf) {
                Ok(n) => got += n as u64,
                Err(_) => {
                    c.flush().unwrap();
                    if !c.has_pending() {
                        while let Ok(n) = (&peer).read(&mut buf) {
                            got += n as u64;
                        }
                        break;
                    }
                }
            }
        }
        assert_eq!(got, sent);
        assert_eq!(c.fwd_cnt, c.recv_cnt);
        assert!(c.has_room(BUF_ALLOC));
    }

    #[test]
    fn a_pending_buffer_gives_its_memory_back_once_the_host_caught_up() {
        let (mut c, peer) = conn();
        let chunk = vec![7u8; 64 * 1024];
        while c.has_room(chunk.len() as u32) {
            c.push_guest_bytes(&chunk).unwrap();
        }
        assert!(c.pending.capacity() > SHRINK_ABOVE, "nothing was buffered");
        peer.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        while c.has_pending() {
            while (&peer).read(&mut buf).is_ok() {}
            c.flush().unwrap();
        }
        assert!(
            c.pending.capacity() <= SHRINK_ABOVE,
            "an emptied pending buffer keeps {} bytes",
            c.pending.capacity()
        );
    }

    #[test]
    fn preamble_goes_ahead_of_pending_guest_bytes_and_is_not_counted_as_forwarded() {
        let (mut c, mut peer) = conn();
        // Bytes still pending (as when the host stream is full) stay behind the preamble.
        c.pending.extend(b"data");
        c.recv_cnt = 4;
        c.preamble(b"OK 5\n").unwrap();
        let mut buf = [0u8; 9];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"OK 5\ndata");
        assert_eq!(c.fwd_cnt, 4);
    }

    #[test]
    fn finished_needs_both_directions_done() {
        let (mut c, _peer) = conn();
        c.guest_shut_send = true;
        assert!(!c.finished());
        c.host_eof = true;
        c.eof_to_send = true;
        assert!(
            !c.finished(),
            "the guest has not been told of the host's end yet"
        );
        c.eof_to_send = false;
        assert!(c.finished());
    }
}
