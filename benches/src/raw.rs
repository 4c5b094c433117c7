//! The machine's limits, measured with bare system calls and none of the workspace's code.
//!
//! - [`RawEcho`]: a stream socketpair with an echo thread; one round trip is one `send` and
//!   one `recv` on each side, of the same byte counts as a vhost-user request and its reply.
//! - [`EventfdPingPong`]: two threads handing a token back and forth through two eventfds
//!   (blocking reads), the far side doing one unit of device work per round trip: a
//!   `pread` of 4 KiB from a file, or a `getrandom` of 4 KiB. This is what a queue-depth-1
//!   request through a vhost-user device cannot beat: one kick, one call, the I/O.
//! - [`ProcessPingPong`]: the same round trip between two *processes* (a forked child on
//!   the far side): what a vhost-user front-end and back-end, which are two processes,
//!   pay on top of two threads when they share a CPU (the switch of address space). Its far
//!   side either blocks in `read` on the kick eventfd, as [`EventfdPingPong`] does, or
//!   ([`FarWait::Epoll`]) sleeps in `epoll_wait` on it, non-blocking and edge-triggered:
//!   what a back-end has to do, since the kick eventfd's open file description is shared
//!   with the front-end, which made it non-blocking, and a back-end thread must also hear
//!   other descriptors (stop, wake-ups).
//! - [`pread_block`]: the bare `pread` of one 4 KiB block, the queue-depth-16 limit of one
//!   device thread.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use vmm_sys_util::eventfd::EventFd;

use crate::BLOCK;

fn nix_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Which system calls a [`RawEcho`] moves its bytes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syscalls {
    /// `send` and `recv`: the cheapest way.
    SendRecv,
    /// `sendmsg` and `recvmsg` with room for 8 descriptors (`MSG_CMSG_CLOEXEC`), as a
    /// vhost-user transport must receive, one iovec each: what the same bytes cost once
    /// descriptors could ride along.
    MsgWithControl,
}

/// One `recvmsg` with a control buffer for 8 descriptors (none expected), through nix's
/// safe wrapper.
fn recvmsg_once(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    const CONTROL: usize = 64;
    // Aligned as a `cmsghdr`, which the kernel writes at the start of the buffer.
    #[repr(C, align(8))]
    struct Control([u8; CONTROL]);
    let mut control = Control([0; CONTROL]);
    let mut iov = [io::IoSliceMut::new(buf)];
    let msg = nix::sys::socket::recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut control.0[..]),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(nix_io)?;
    if msg.cmsgs().map_err(nix_io)?.next().is_some() {
        return Err(io::Error::other("unexpected control message"));
    }
    Ok(msg.bytes)
}

/// One `sendmsg` of `buf` as one iovec, no control message.
fn sendmsg_once(fd: &OwnedFd, buf: &[u8]) -> io::Result<usize> {
    let iov = [io::IoSlice::new(buf)];
    nix::sys::socket::sendmsg::<()>(fd.as_raw_fd(), &iov, &[], MsgFlags::MSG_NOSIGNAL, None)
        .map_err(nix_io)
}

/// Sends all of `buf` (one call unless the kernel takes less).
fn send_all(fd: &OwnedFd, mut buf: &[u8], how: Syscalls) -> io::Result<()> {
    while !buf.is_empty() {
        let n = match how {
            Syscalls::SendRecv => send(fd.as_raw_fd(), buf, MsgFlags::empty()).map_err(nix_io)?,
            Syscalls::MsgWithControl => sendmsg_once(fd, buf)?,
        };
        buf = &buf[n..];
    }
    Ok(())
}

/// Receives exactly `buf.len()` bytes (one call unless the kernel gives less). `Ok(false)`
/// when the peer closed before the first byte.
fn recv_all(fd: &OwnedFd, buf: &mut [u8], how: Syscalls) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        let n = match how {
            Syscalls::SendRecv => {
                recv(fd.as_raw_fd(), &mut buf[got..], MsgFlags::empty()).map_err(nix_io)?
            }
            Syscalls::MsgWithControl => recvmsg_once(fd, &mut buf[got..])?,
        };
        if n == 0 {
            if got == 0 {
                return Ok(false);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(true)
}

/// A socketpair with an echo thread answering each `request_len`-byte request with
/// `reply_len` bytes (the request's first bytes, zero-padded).
#[derive(Debug)]
pub struct RawEcho {
    how: Syscalls,
    client: Option<OwnedFd>,
    request: Vec<u8>,
    reply: Vec<u8>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl RawEcho {
    /// Starts the echo thread, moving bytes with `send` and `recv`.
    pub fn new(request_len: usize, reply_len: usize) -> io::Result<Self> {
        Self::with_syscalls(request_len, reply_len, Syscalls::SendRecv)
    }

    /// Starts the echo thread, moving bytes with `how`.
    pub fn with_syscalls(request_len: usize, reply_len: usize, how: Syscalls) -> io::Result<Self> {
        let (client, server) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(nix_io)?;
        let thread = std::thread::Builder::new()
            .name("raw-echo".into())
            .spawn(move || {
                let mut req = vec![0u8; request_len];
                let mut reply = vec![0u8; reply_len];
                while recv_all(&server, &mut req, how)? {
                    let n = reply_len.min(request_len);
                    reply[..n].copy_from_slice(&req[..n]);
                    send_all(&server, &reply, how)?;
                }
                Ok(())
            })?;
        Ok(RawEcho {
            how,
            client: Some(client),
            request: (0..request_len).map(|i| i as u8 ^ 0x5a).collect(),
            reply: vec![0; reply_len],
            thread: Some(thread),
        })
    }

    /// One round trip; returns the reply.
    pub fn round_trip(&mut self) -> io::Result<&[u8]> {
        let fd = self.client.as_ref().ok_or(io::ErrorKind::NotConnected)?;
        send_all(fd, &self.request, self.how)?;
        if !recv_all(fd, &mut self.reply, self.how)? {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(&self.reply)
    }

    /// The request bytes sent each round trip.
    pub fn request(&self) -> &[u8] {
        &self.request
    }
}

impl Drop for RawEcho {
    fn drop(&mut self) {
        self.client.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Work done by the far side of an [`EventfdPingPong`] per round trip.
#[derive(Debug)]
pub enum FarWork {
    /// `pread` of 4 KiB at the offset the near side asked for.
    Pread(File),
    /// `getrandom` of 4 KiB.
    Getrandom,
    /// Nothing: the bare notification round trip.
    Nothing,
}

struct Shared {
    offset: AtomicU64,
    /// The first word the far side got, for the near side to check.
    first: AtomicU64,
    kick: EventFd,
    call: EventFd,
}

/// Two threads exchanging a token through two blocking eventfds, the far one doing
/// [`FarWork`] each time.
pub struct EventfdPingPong {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl std::fmt::Debug for EventfdPingPong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventfdPingPong").finish_non_exhaustive()
    }
}

const STOP: u64 = u64::MAX;

impl EventfdPingPong {
    /// Starts the far thread.
    pub fn new(work: FarWork) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            offset: AtomicU64::new(0),
            first: AtomicU64::new(0),
            kick: EventFd::new(libc::EFD_CLOEXEC)?,
            call: EventFd::new(libc::EFD_CLOEXEC)?,
        });
        let far = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("eventfd-far".into())
            .spawn(move || {
                let mut buf = vec![0u8; BLOCK];
                loop {
                    far.kick.read()?;
                    let offset = far.offset.load(Ordering::Acquire);
                    if offset == STOP {
                        return Ok(());
                    }
                    match &work {
                        FarWork::Pread(file) => file.read_exact_at(&mut buf, offset)?,
                        FarWork::Getrandom => getrandom(&mut buf)?,
                        FarWork::Nothing => {}
                    }
                    let first = u64::from_le_bytes(buf[..8].try_into().unwrap_or([0; 8]));
                    far.first.store(first, Ordering::Release);
                    far.call.write(1)?;
                }
            })?;
        Ok(EventfdPingPong {
            shared,
            thread: Some(thread),
        })
    }

    /// One round trip asking for the block at `offset`; returns the first word the far side
    /// got.
    pub fn round_trip(&self, offset: u64) -> io::Result<u64> {
        self.shared.offset.store(offset, Ordering::Release);
        self.shared.kick.write(1)?;
        self.shared.call.read()?;
        Ok(self.shared.first.load(Ordering::Acquire))
    }
}

impl Drop for EventfdPingPong {
    fn drop(&mut self) {
        self.shared.offset.store(STOP, Ordering::Release);
        let _ = self.shared.kick.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How the far side of a [`ProcessPingPong`] waits for a kick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FarWait {
    /// A blocking `read` of the kick eventfd.
    Read,
    /// `epoll_wait` on the kick eventfd, non-blocking and edge-triggered: one event per
    /// write and no `read`, as our back-end's workers wait.
    Epoll,
}

/// [`EventfdPingPong`] with the far side in a forked child process instead of a thread.
///
/// There is no shared memory. Both sides draw the same offsets (4 KiB blocks below
/// `blocks`, from one seed), so a kick carries no data, and the call carries the first word
/// read as its difference from the pattern word of that offset, plus one (a zero write
/// wakes nobody): a correct block answers 1. At most one kick is outstanding.
pub struct ProcessPingPong {
    kick: EventFd,
    call: EventFd,
    offsets: crate::XorShift,
    blocks: u64,
    child: Option<nix::unistd::Pid>,
}

impl std::fmt::Debug for ProcessPingPong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessPingPong")
            .field("child", &self.child)
            .finish_non_exhaustive()
    }
}

/// The byte offset of the next block `offsets` draws.
fn next_offset(offsets: &mut crate::XorShift, blocks: u64) -> u64 {
    offsets.below(blocks) * BLOCK as u64
}

impl ProcessPingPong {
    /// Forks the far process, which reads blocks below `blocks` (at least 1) in the order
    /// `seed` draws them. The child only makes system calls (`epoll_wait`, `read`, `pread`,
    /// `getrandom`, `write`, `pause`) into memory allocated before the fork; it never
    /// returns, and is killed when the ping-pong is dropped or this process dies. When its
    /// work fails it answers a word no block holds and waits for the kill.
    pub fn new(work: FarWork, wait: FarWait, blocks: u64, seed: u64) -> io::Result<Self> {
        use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
        let blocks = blocks.max(1);
        let kick = match wait {
            FarWait::Read => EventFd::new(libc::EFD_CLOEXEC)?,
            FarWait::Epoll => EventFd::new(libc::EFD_CLOEXEC | libc::EFD_NONBLOCK)?,
        };
        let call = EventFd::new(libc::EFD_CLOEXEC)?;
        let mut buf = vec![0u8; BLOCK];
        let epoll = match wait {
            FarWait::Read => None,
            FarWait::Epoll => {
                let epoll = Epoll::new()?;
                epoll.ctl(
                    ControlOperation::Add,
                    kick.as_raw_fd(),
                    EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, 1),
                )?;
                Some(epoll)
            }
        };
        let parent = nix::unistd::getpid();
        // SAFETY: the child runs `Far::run` and then `pause`: it allocates nothing, takes no
        // lock and makes only async-signal-safe system calls until it is killed, so it cannot
        // deadlock on state another thread of this process held at the fork.
        match unsafe { nix::unistd::fork() }.map_err(nix_io)? {
            nix::unistd::ForkResult::Child => {
                let far = Far {
                    kick: &kick,
                    call: &call,
                    epoll: epoll.as_ref(),
                    work: &work,
                    offsets: crate::XorShift::new(seed),
                    blocks,
                };
                far.run(&mut buf, parent);
                // Failed: the near side got an answer that cannot be a pattern word (or
                // none, with the parent gone). Wait for the kill; returning would run the
                // parent's code in the child.
                loop {
                    nix::unistd::pause();
                }
            }
            nix::unistd::ForkResult::Parent { child } => Ok(ProcessPingPong {
                kick,
                call,
                offsets: crate::XorShift::new(seed),
                blocks,
                child: Some(child),
            }),
        }
    }

    /// One round trip for the next block; returns its offset and the first word the far
    /// side got there.
    pub fn round_trip(&mut self) -> io::Result<(u64, u64)> {
        let offset = next_offset(&mut self.offsets, self.blocks);
        self.kick.write(1)?;
        let reply = self.call.read()?;
        Ok((offset, crate::pattern(offset) ^ reply.wrapping_sub(1)))
    }
}

/// The far process of a [`ProcessPingPong`].
struct Far<'a> {
    kick: &'a EventFd,
    call: &'a EventFd,
    epoll: Option<&'a vmm_sys_util::epoll::Epoll>,
    work: &'a FarWork,
    offsets: crate::XorShift,
    blocks: u64,
}

impl Far<'_> {
    /// Serves kicks until killed; returns when something fails, after answering the kick
    /// it was serving with a word no block holds.
    fn run(mut self, buf: &mut [u8], parent: nix::unistd::Pid) {
        if nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).is_err()
            || nix::unistd::getppid() != parent
        {
            return;
        }
        let mut events = [vmm_sys_util::epoll::EpollEvent::default(); 4];
        loop {
            let woken = match self.epoll {
                Some(epoll) => epoll.wait(-1, &mut events).map(|_| ()),
                None => self.kick.read().map(|_| ()),
            };
            match woken {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
            let offset = next_offset(&mut self.offsets, self.blocks);
            let done = match self.work {
                FarWork::Pread(file) => file.read_exact_at(buf, offset),
                FarWork::Getrandom => getrandom(buf),
                FarWork::Nothing => Ok(()),
            };
            // The largest value one write may add is 0xffff_ffff_ffff_fffe.
            let diff = match done {
                Ok(()) => {
                    let first = u64::from_le_bytes(buf[..8].try_into().unwrap_or([0; 8]));
                    (first ^ crate::pattern(offset)).min(0xffff_ffff_ffff_fffd)
                }
                Err(_) => 0xffff_ffff_ffff_fffd,
            };
            if self.call.write(diff + 1).is_err() || done.is_err() {
                return;
            }
        }
    }
}

impl Drop for ProcessPingPong {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(child, None);
        }
    }
}

/// Fills `buf` from the kernel's random source.
pub fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let rest = &mut buf[got..];
        // SAFETY: `rest` is a valid writable buffer of `rest.len()` bytes for the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += n as usize;
    }
    Ok(())
}

/// One `pread` of a 4 KiB block at `offset`; returns the first word.
pub fn pread_block(file: &File, buf: &mut [u8; BLOCK], offset: u64) -> io::Result<u64> {
    file.read_exact_at(buf, offset)?;
    Ok(u64::from_le_bytes(buf[..8].try_into().unwrap_or([0; 8])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_syscall_pairs_echo_the_request() {
        for how in [Syscalls::SendRecv, Syscalls::MsgWithControl] {
            let mut echo = RawEcho::with_syscalls(40, 12, how).unwrap();
            let want = echo.request()[..12].to_vec();
            for _ in 0..3 {
                assert_eq!(echo.round_trip().unwrap(), want, "{how:?}");
            }
        }
    }

    #[test]
    fn process_ping_pong_reads_the_blocks_drawn() {
        let path = std::env::temp_dir().join(format!("raw-pp-{}", std::process::id()));
        crate::image::create(&path, 64 * BLOCK as u64).unwrap();
        // Block 5 no longer holds its pattern: the near side must see the word there.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        file.write_all_at(&7u64.to_le_bytes(), 5 * BLOCK as u64)
            .unwrap();
        for wait in [FarWait::Read, FarWait::Epoll] {
            let far = FarWork::Pread(file.try_clone().unwrap());
            let mut pp = ProcessPingPong::new(far, wait, 64, 3).unwrap();
            let mut offsets = crate::XorShift::new(3);
            let (mut good, mut bad) = (0, 0);
            for _ in 0..200 {
                let (offset, first) = pp.round_trip().unwrap();
                assert_eq!(offset, next_offset(&mut offsets, 64), "{wait:?}");
                if offset == 5 * BLOCK as u64 {
                    assert_eq!(first, 7, "{wait:?}");
                    bad += 1;
                } else {
                    assert_eq!(first, crate::pattern(offset), "{wait:?}");
                    good += 1;
                }
            }
            assert!(bad > 0 && good > 0, "{wait:?}: {bad} {good}");
            let child = pp.child.unwrap();
            drop(pp);
            // The far process is gone (killed and reaped by the drop).
            assert!(nix::sys::signal::kill(child, None).is_err(), "{wait:?}");
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn recvmsg_refuses_a_descriptor_it_did_not_expect() {
        use nix::sys::socket::{sendmsg, ControlMessage};
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let fds = [a.as_raw_fd()];
        let iov = [io::IoSlice::new(b"x")];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(a.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None).unwrap();
        let mut buf = [0u8; 1];
        let e = recvmsg_once(&b, &mut buf).unwrap_err();
        assert!(e.to_string().contains("unexpected control message"), "{e}");
        send_all(&a, b"y", Syscalls::MsgWithControl).unwrap();
        assert_eq!(recvmsg_once(&b, &mut buf).unwrap(), 1);
        assert_eq!(&buf, b"y");
    }
}
