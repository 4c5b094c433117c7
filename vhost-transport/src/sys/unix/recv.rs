//! The receive side of a Unix stream socket: a per-connection buffer so that
//! one `recvmsg` usually brings a whole message (often several), and the
//! bookkeeping that keeps every descriptor with the message it came with.
//!
//! # Which message descriptors belong to
//!
//! Linux hands out the bytes of several `sendmsg` calls in one `recvmsg`, but
//! stops right after the first one that carried `SCM_RIGHTS`, and detaches the
//! descriptors at the first read that touches that write's bytes. So the
//! descriptors of one read came with its last write, whose first byte lies in
//! the bytes this read returned; a well-behaved sender starts that write with
//! a header. Hence the rule: descriptors belong to the last message whose
//! header starts within the bytes of the read that brought them. A read with
//! descriptors and no header start in its bytes is refused
//! ([`Error::FdsMidHeader`] or [`Error::FdsWithBody`]).
//!
//! Message boundaries are found from the `size` field of each header, which
//! is where the next header starts. Descriptors are parked with the stream
//! offset of the header they belong to and handed out by the
//! [`Socket::recv_header`] call that returns that header; consuming that
//! offset any other way (as body bytes, or inside a header that started
//! earlier) refuses them.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, PoisonError};

use nix::errno::Errno;
use vhost_proto::{Header, HEADER_SIZE, MAX_BODY_SIZE, MAX_FDS};

use super::Socket;
use crate::{Error, Result};

/// Bytes one receive may bring: two largest messages.
pub(super) const RECV_BUFFER_LEN: usize = 2 * (HEADER_SIZE + MAX_BODY_SIZE);

/// Descriptors one receive has room for. More than a message may carry, so
/// that a peer sending a few too many is reported as `TooManyFds` with all of
/// them closed; only a flood beyond this is `ControlTruncated`.
const FD_CAPACITY: usize = 2 * MAX_FDS;
const FD_SIZE: usize = size_of::<RawFd>();
// SAFETY: CMSG_SPACE and CMSG_LEN only do arithmetic on their argument.
const CMSG_BUF_LEN: usize =
    unsafe { libc::CMSG_SPACE((FD_CAPACITY * FD_SIZE) as libc::c_uint) } as usize;
// SAFETY: as above.
const CMSG_HEADER_LEN: usize = unsafe { libc::CMSG_LEN(0) } as usize;

const RECV_FLAGS: libc::c_int = libc::MSG_CMSG_CLOEXEC;

/// Control-message buffer, aligned for `cmsghdr` (at most 8 on every target).
#[repr(C, align(8))]
struct CmsgBuffer([u8; CMSG_BUF_LEN]);

/// Descriptors taken out of one receive, owned from the moment they are
/// parsed. Dropping it closes them.
struct ReceivedFds {
    slots: [Option<OwnedFd>; FD_CAPACITY],
    count: usize,
}

impl ReceivedFds {
    fn new() -> Self {
        ReceivedFds {
            slots: [const { None }; FD_CAPACITY],
            count: 0,
        }
    }

    fn push(&mut self, fd: OwnedFd) {
        // The control buffer cannot hold more than FD_CAPACITY; should one
        // more ever appear it is counted and closed right here.
        if let Some(slot) = self.slots.get_mut(self.count) {
            *slot = Some(fd);
        }
        self.count += 1;
    }

    fn len(&self) -> usize {
        self.count
    }

    fn into_vec(self) -> Vec<OwnedFd> {
        if self.count == 0 {
            return Vec::new();
        }
        self.slots.into_iter().flatten().collect()
    }
}

/// Outcome of one `recvmsg`.
struct Received {
    /// Bytes read; 0 is end of stream.
    len: usize,
    fds: ReceivedFds,
    /// The kernel set `MSG_CTRUNC`: descriptors were dropped.
    truncated: bool,
}

impl Received {
    fn end_of_stream() -> Self {
        Received {
            len: 0,
            fds: ReceivedFds::new(),
            truncated: false,
        }
    }
}

/// One `recvmsg` into `buf`, descriptors close-on-exec. Every descriptor the
/// kernel installed is owned by the result, including on `MSG_CTRUNC`.
fn recv_once(fd: BorrowedFd<'_>, buf: &mut [u8]) -> std::result::Result<Received, Errno> {
    let mut cmsg = CmsgBuffer([0; CMSG_BUF_LEN]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr holds only integers and pointers; all zeroes is a valid
    // value (no address, no buffers) that is filled in below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    msg.msg_controllen = CMSG_BUF_LEN as _;
    // SAFETY: `msg` points to one iovec covering `buf` (writable, `buf.len()` bytes) and to
    // `cmsg` (CMSG_BUF_LEN bytes, aligned for cmsghdr); both outlive the call and the kernel
    // writes only inside them.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, RECV_FLAGS) };
    let n = Errno::result(n)?;
    let fds = take_fds(&msg);
    Ok(Received {
        len: usize::try_from(n).unwrap_or(0),
        fds,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
}

/// Takes ownership of every descriptor in the `SCM_RIGHTS` messages of a
/// control buffer that a successful `recvmsg` filled in.
// The length fields are size_t with glibc and socklen_t with musl.
#[allow(clippy::unnecessary_cast)]
fn take_fds(msg: &libc::msghdr) -> ReceivedFds {
    let mut fds = ReceivedFds::new();
    if msg.msg_controllen == 0 {
        return fds;
    }
    let control_end = (msg.msg_control as usize).saturating_add(msg.msg_controllen as usize);
    // SAFETY: `msg` was filled in by a successful recvmsg, so msg_control and
    // msg_controllen describe control bytes inside a live, aligned buffer.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(msg) };
    while !cmsg.is_null() {
        // SAFETY: CMSG_FIRSTHDR and CMSG_NXTHDR return null or a pointer to a
        // complete cmsghdr inside the control bytes. read_unaligned makes no
        // alignment demand.
        let hdr = unsafe { ptr::read_unaligned(cmsg) };
        if hdr.cmsg_level == libc::SOL_SOCKET && hdr.cmsg_type == libc::SCM_RIGHTS {
            // SAFETY: `cmsg` points to a complete header; CMSG_DATA only
            // offsets the pointer past it.
            let data = unsafe { libc::CMSG_DATA(cmsg) };
            let claimed = (hdr.cmsg_len as usize).saturating_sub(CMSG_HEADER_LEN);
            let available = control_end.saturating_sub(data as usize);
            let count = claimed.min(available) / FD_SIZE;
            for i in 0..count {
                // SAFETY: bytes i*FD_SIZE..(i+1)*FD_SIZE past `data` lie inside
                // the control bytes (count is bounded by `available`).
                let raw: RawFd = unsafe { ptr::read_unaligned(data.add(i * FD_SIZE).cast()) };
                if raw >= 0 {
                    // SAFETY: the kernel just installed `raw` in this process
                    // for this message; nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                }
            }
        }
        // SAFETY: `msg` describes the filled control buffer and `cmsg` is a
        // header inside it; CMSG_NXTHDR checks the next one against the end.
        cmsg = unsafe { libc::CMSG_NXTHDR(msg, cmsg) };
    }
    fds
}

/// Descriptors (or a truncated control message) waiting for the header they
/// belong to.
struct Parked {
    /// Stream offset of that header's first byte.
    at: u64,
    fds: ReceivedFds,
    truncated: bool,
}

impl Parked {
    /// The descriptors, for the header at `at`.
    fn accept(self) -> Result<Vec<OwnedFd>> {
        if self.truncated {
            log::warn!(
                "control data truncated: {} descriptors received, all closed",
                self.fds.len()
            );
            return Err(Error::ControlTruncated);
        }
        if self.fds.len() > MAX_FDS {
            return Err(Error::TooManyFds {
                got: self.fds.len(),
                max: MAX_FDS,
            });
        }
        Ok(self.fds.into_vec())
    }

    /// The error for descriptors whose offset was consumed as something other
    /// than the start of a header; dropping `self` closes them.
    fn refuse(self, mid_header: bool) -> Error {
        refusal(self.truncated, self.fds.len(), mid_header)
    }
}

fn refusal(truncated: bool, count: usize, mid_header: bool) -> Error {
    if truncated {
        Error::ControlTruncated
    } else if mid_header {
        Error::FdsMidHeader { count }
    } else {
        Error::FdsWithBody { count }
    }
}

/// Received bytes not yet handed out, and where they sit in the stream.
///
/// Invariant: parked descriptors belong to a header whose offset lies within
/// the buffered bytes (`pos <= at < pos + buffered`), so a read, which only
/// happens once the buffer has been (nearly) drained, never finds some parked.
pub(super) struct RecvState {
    buf: Box<[u8]>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Stream offset of `buf[start]`.
    pos: u64,
    /// Stream offset of the next header not yet returned, from the `size`
    /// of the last one returned.
    next_header: u64,
    parked: Option<Parked>,
}

impl RecvState {
    pub(super) fn new() -> Self {
        RecvState {
            buf: vec![0u8; RECV_BUFFER_LEN].into_boxed_slice(),
            start: 0,
            end: 0,
            pos: 0,
            next_header: 0,
            parked: None,
        }
    }

    pub(super) fn buffered(&self) -> usize {
        self.end - self.start
    }

    fn bytes(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.buffered());
        self.start += n;
        self.pos += n as u64;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Moves the unconsumed bytes to the front, making room behind them.
    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// The body size declared by the header at stream offset `at`, if all of
    /// that header is buffered.
    fn declared_size(&self, at: u64) -> Option<u64> {
        let offset = usize::try_from(at.checked_sub(self.pos)?).ok()?;
        let bytes = self.bytes().get(offset..offset.checked_add(HEADER_SIZE)?)?;
        let header = Header::from_wire(bytes.try_into().ok()?);
        Some(u64::from(header.size))
    }

    /// The last header that starts within the stream bytes `from..to`, found
    /// by walking the buffered headers from `next_header` by their sizes.
    fn last_header_within(&self, from: u64, to: u64) -> Option<u64> {
        let mut found = None;
        let mut at = self.next_header;
        while at < to {
            if at >= from {
                found = Some(at);
            }
            match self.declared_size(at) {
                Some(size) => at = at.saturating_add(HEADER_SIZE as u64).saturating_add(size),
                None => break,
            }
        }
        found
    }

    /// Whether all of the next header is buffered: the one after the body of
    /// the last header returned, or (between messages) the one at the
    /// front of the buffer.
    fn header_buffered(&self) -> bool {
        let start = self.next_header.max(self.pos);
        self.pos + self.buffered() as u64 >= start + HEADER_SIZE as u64
    }

    /// Bytes the message whose header is at the front of the buffer needs:
    /// its header, and in whole-message mode its body (unless the header
    /// declares more than a body may hold, which the reader refuses anyway).
    /// `None` while the header itself is not all buffered.
    fn front_message_len(&self, whole: bool) -> Option<usize> {
        let size = self.declared_size(self.pos)?;
        Some(match usize::try_from(size) {
            Ok(size) if whole && size <= MAX_BODY_SIZE => HEADER_SIZE + size,
            _ => HEADER_SIZE,
        })
    }

    /// Whether the next message is buffered as far as a header read would
    /// need it: its header, and in whole-message mode its body.
    pub(super) fn next_buffered(&self, whole: bool) -> bool {
        if !self.header_buffered() {
            return false;
        }
        if !whole || self.next_header > self.pos {
            // Between a header and its body: the body is next, not a message.
            return self.header_buffered();
        }
        self.front_message_len(true)
            .is_some_and(|need| self.buffered() >= need)
    }

    /// Refuses parked descriptors whose header offset lies before `until`,
    /// bytes about to be consumed as a body.
    fn check_body_bytes(&mut self, until: u64) -> Result<()> {
        match self.parked.take_if(|p| p.at < until) {
            Some(parked) => Err(parked.refuse(false)),
            None => Ok(()),
        }
    }
}

impl Socket {
    pub(super) fn rx(&self) -> MutexGuard<'_, RecvState> {
        self.rx.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs one receive operation under the receive lock; on an error that
    /// leaves the stream out of step, closes any parked descriptors too.
    fn with_rx<T>(&self, op: impl FnOnce(&Self, &mut RecvState) -> Result<T>) -> Result<T> {
        let mut rx = self.rx();
        let result = op(self, &mut rx);
        if matches!(&result, Err(e) if !e.is_retryable()) {
            rx.parked = None;
        }
        let whole = self.whole_messages.load(Ordering::Relaxed);
        self.buffered
            .store(rx.next_buffered(whole), Ordering::Release);
        result
    }

    /// True when a whole header waits in the buffer (a part of one does
    /// not count: the rest has yet to make the socket readable).
    pub(crate) fn has_buffered(&self) -> bool {
        self.buffered.load(Ordering::Acquire)
    }

    /// One receive step of a read that needs `expected` bytes and has `got`
    /// (a header when `in_header`). A reset connection counts as end of
    /// stream.
    ///
    /// In non-blocking mode a header read with part of the header buffered
    /// is [`Error::WouldBlock`] too: those bytes stay in the buffer for the
    /// next call. A body read that has taken some bytes waits for the rest.
    fn recv_step(
        &self,
        buf: &mut [u8],
        expected: usize,
        got: usize,
        in_header: bool,
    ) -> Result<Received> {
        loop {
            match recv_once(self.fd(), buf) {
                Ok(received) => return Ok(received),
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) if got == 0 => return Err(self.blocked()),
                Err(Errno::EAGAIN) if self.is_nonblocking() && in_header => {
                    return Err(Error::WouldBlock)
                }
                // The rest of a started body: waited for, but within the read timeout
                // (when one is set), so a peer that stops mid-message cannot hold the
                // reader.
                Err(Errno::EAGAIN) if self.is_nonblocking() => {
                    if !self.wait_readable()? {
                        return Err(Error::PartialMessage { expected, got });
                    }
                }
                // The read timeout ran out with the read half done.
                Err(Errno::EAGAIN) => return Err(Error::PartialMessage { expected, got }),
                Err(Errno::ECONNRESET) => return Ok(Received::end_of_stream()),
                Err(e) => return Err(Error::io("recvmsg", e)),
            }
        }
    }

    /// One `recvmsg` of as many bytes as fit behind the buffered ones, for a
    /// read that needs `expected` bytes and has `got`. Descriptors are parked
    /// with the header they belong to, or refused (as arriving in the middle
    /// of a header when `in_header`, else with body bytes) if no header starts
    /// within the bytes read. Returns the number of bytes read, 0 at end of
    /// stream.
    fn fill(
        &self,
        rx: &mut RecvState,
        expected: usize,
        got: usize,
        in_header: bool,
    ) -> Result<usize> {
        let from = rx.pos + rx.buffered() as u64;
        let space = rx.buf.get_mut(rx.end..).unwrap_or_default();
        let received = self.recv_step(space, expected, got, in_header)?;
        let len = received.len.min(space.len());
        rx.end += len;
        if received.fds.len() == 0 && !received.truncated {
            return Ok(len);
        }
        let to = from + len as u64;
        let Some(at) = rx.last_header_within(from, to) else {
            return Err(refusal(received.truncated, received.fds.len(), in_header));
        };
        let parked = Parked {
            at,
            fds: received.fds,
            truncated: received.truncated,
        };
        if let Some(earlier) = rx.parked.replace(parked) {
            // Unreachable by the invariant on `parked`; refused all the same
            // rather than handed to a message they may not belong to.
            return Err(earlier.refuse(in_header));
        }
        Ok(len)
    }

    pub(crate) fn recv_header(&self) -> Result<([u8; HEADER_SIZE], Vec<OwnedFd>)> {
        self.with_rx(Self::recv_header_locked)
    }

    fn recv_header_locked(&self, rx: &mut RecvState) -> Result<([u8; HEADER_SIZE], Vec<OwnedFd>)> {
        let at = rx.pos;
        rx.next_header = at;
        let header_end = at + HEADER_SIZE as u64;
        let mut own = None;
        loop {
            if let Some(parked) = rx.parked.take_if(|p| p.at < header_end) {
                match parked.at.cmp(&at) {
                    std::cmp::Ordering::Equal => own = Some(parked),
                    // Offsets consumed as body by the previous call.
                    std::cmp::Ordering::Less => return Err(parked.refuse(false)),
                    std::cmp::Ordering::Greater => return Err(parked.refuse(true)),
                }
            }
            // In whole-message mode the header waits until its body is here
            // too, so that a reader driven by readiness never waits for a
            // body (the bytes stay buffered; a body cannot outgrow the buffer).
            let whole = self.whole_messages.load(Ordering::Relaxed);
            let need = rx.front_message_len(whole).unwrap_or(HEADER_SIZE);
            if rx.buffered() >= need {
                break;
            }
            rx.compact();
            let got = rx.buffered();
            let filled = match self.fill(rx, need, got, true) {
                Ok(n) => n,
                Err(e) if e.is_retryable() => {
                    // Nothing consumed: the descriptors of the buffered part
                    // of this header wait with it for the next call.
                    if let Some(parked) = own {
                        rx.parked = Some(parked);
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            };
            if filled == 0 {
                return Err(if got == 0 {
                    Error::Disconnected
                } else {
                    Error::PartialMessage {
                        expected: need,
                        got,
                    }
                });
            }
        }
        let mut header = [0u8; HEADER_SIZE];
        header.copy_from_slice(rx.bytes().get(..HEADER_SIZE).unwrap_or(&[0; HEADER_SIZE]));
        rx.consume(HEADER_SIZE);
        rx.next_header = header_end + u64::from(Header::from_wire(&header).size);
        let fds = match own {
            Some(parked) => parked.accept()?,
            None => Vec::new(),
        };
        Ok((header, fds))
    }

    pub(crate) fn recv_body(&self, buf: &mut [u8]) -> Result<()> {
        self.with_rx(|this, rx| this.recv_body_locked(rx, buf))
    }

    fn recv_body_locked(&self, rx: &mut RecvState, buf: &mut [u8]) -> Result<()> {
        let expected = buf.len();
        let mut got = 0;
        while let Some(rest) = buf.get_mut(got..).filter(|r| !r.is_empty()) {
            if rx.buffered() == 0 {
                if self.fill(rx, expected, got, false)? == 0 {
                    return Err(Error::PartialMessage { expected, got });
                }
                continue;
            }
            let n = rest.len().min(rx.buffered());
            rx.check_body_bytes(rx.pos + n as u64)?;
            rest[..n].copy_from_slice(&rx.bytes()[..n]);
            rx.consume(n);
            got += n;
        }
        Ok(())
    }
}
