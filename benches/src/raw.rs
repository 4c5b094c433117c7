//! The machine's limits, measured with bare system calls and none of the workspace's code.
//!
//! - [`RawEcho`]: a stream socketpair with an echo thread; one round trip is one `send` and
//!   one `recv` on each side, of the same byte counts as a vhost-user request and its reply.
//! - [`EventfdPingPong`]: two threads handing a token back and forth through two eventfds
//!   (blocking reads), the far side doing one unit of device work per round trip: a
//!   `pread` of 4 KiB from a file, or a `getrandom` of 4 KiB. This is what a queue-depth-1
//!   request through a vhost-user device cannot beat: one kick, one call, the I/O.
//! - [`ProcessPingPong`]: the same round trip between two *processes* (the far side a child
//!   process running [`far_side_main`], the two eventfds its stdin and stdout): what a
//!   vhost-user front-end and back-end, which are two processes, pay on top of two threads
//!   when they share a CPU (the switch of address space). Its far
//!   side either blocks in `read` on the kick eventfd, as [`EventfdPingPong`] does, or
//!   ([`FarWait::Epoll`]) sleeps in `epoll_wait` on it, non-blocking and edge-triggered:
//!   what a back-end has to do, since the kick eventfd's open file description is shared
//!   with the front-end, which made it non-blocking, and a back-end thread must also hear
//!   other descriptors (stop, wake-ups).
//! - [`pread_block`]: the bare `pread` of one 4 KiB block, the queue-depth-16 limit of one
//!   device thread.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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

impl FarWait {
    fn arg(self) -> &'static str {
        match self {
            FarWait::Read => "read",
            FarWait::Epoll => "epoll",
        }
    }

    fn from_arg(arg: &str) -> Option<Self> {
        match arg {
            "read" => Some(FarWait::Read),
            "epoll" => Some(FarWait::Epoll),
            _ => None,
        }
    }
}

/// The first argument that makes a program the far side of a [`ProcessPingPong`]: its
/// `main` hands the arguments after it to [`far_side_main`] (`vhost-user-load` does).
pub const FAR_SIDE_ARG: &str = "--ping-pong-far-side";

/// The far side's first answer, once it is ready to serve kicks.
const READY: u64 = 1;

/// The far side's answer when it failed (and exits): `diff + 1` for a difference from the
/// pattern word that no block of an image can have. The largest value one eventfd write may
/// add is `0xffff_ffff_ffff_fffe`.
const FAILED: u64 = 0xffff_ffff_ffff_fffe;

/// How long [`ProcessPingPong::new`] waits for the far process to be ready.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// [`EventfdPingPong`] with the far side in a child process instead of a thread, reading
/// 4 KiB blocks of a pattern image.
///
/// The child is a program run with [`FAR_SIDE_ARG`] (`vhost-user-load` itself), its stdin
/// the kick eventfd and its stdout the call eventfd. There is no shared memory. Both sides
/// draw the same offsets (4 KiB blocks of the image, from one seed), so a kick carries no
/// data, and the call carries the first word read as its difference from the pattern word
/// of that offset, plus one (a zero write wakes nobody): a correct block answers 1. At most
/// one kick is outstanding. A thread sleeping on the far process's pidfd wakes a round trip
/// waiting for an answer when that process exits (killed, out of memory): the round trip
/// fails instead of hanging.
pub struct ProcessPingPong {
    kick: nix::sys::eventfd::EventFd,
    call: nix::sys::eventfd::EventFd,
    offsets: crate::XorShift,
    blocks: u64,
    child: Option<Child>,
    /// Watches the far process's exit (see [`Watcher`]).
    watcher: Option<Watcher>,
}

/// A thread that sleeps in `poll` on the far process's pidfd and, when the process exits,
/// sets `dead` and then wakes the near side's blocking read of the call eventfd: a round
/// trip waiting for an answer that will never come fails instead of hanging, and the
/// measured loop makes no system call more (only an atomic load).
struct Watcher {
    dead: Arc<std::sync::atomic::AtomicBool>,
    /// Written to stop the thread.
    stop: Arc<nix::sys::eventfd::EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    fn start(child: &Child, call: &nix::sys::eventfd::EventFd) -> io::Result<Self> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let pid = rustix::process::Pid::from_raw(child.id() as i32)
            .ok_or_else(|| io::Error::other("the far process has no pid"))?;
        // The child is not reaped before the drop (which stops this thread first), so its
        // pid names it until then.
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
        let call = File::from(call.as_fd().try_clone_to_owned()?);
        let stop = nix::sys::eventfd::EventFd::from_flags(nix::sys::eventfd::EfdFlags::EFD_CLOEXEC)
            .map_err(nix_io)?;
        let stop = Arc::new(stop);
        let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (thread_stop, thread_dead) = (Arc::clone(&stop), Arc::clone(&dead));
        let thread = std::thread::Builder::new()
            .name("ping-pong-watch".into())
            .spawn(move || loop {
                let mut fds = [
                    PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
                    PollFd::new(thread_stop.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        eprintln!("ping-pong: watching the far process: {e}");
                        return;
                    }
                    Ok(_) => {}
                }
                if fds[1].any().unwrap_or(false) {
                    return;
                }
                if fds[0].any().unwrap_or(false) {
                    thread_dead.store(true, Ordering::Release);
                    // An answer pending in the counter is at most FAILED - 1: adding 1
                    // never blocks.
                    let _ = (&call).write_all(&1u64.to_ne_bytes());
                    return;
                }
            })?;
        Ok(Watcher {
            dead,
            stop,
            thread: Some(thread),
        })
    }

    fn dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::fmt::Debug for ProcessPingPong {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessPingPong")
            .field("far_pid", &self.far_pid())
            .finish_non_exhaustive()
    }
}

/// The byte offset of the next block `offsets` draws.
fn next_offset(offsets: &mut crate::XorShift, blocks: u64) -> u64 {
    offsets.below(blocks) * BLOCK as u64
}

impl ProcessPingPong {
    /// Starts `program` (a binary whose `main` calls [`far_side_main`] when its first
    /// argument is [`FAR_SIDE_ARG`]) as the far process, which reads the 4 KiB blocks of
    /// `image` in the order `seed` draws them, and waits until it is ready.
    ///
    /// The child is killed and reaped when the ping-pong is dropped. It dies with this
    /// process: its parent-death signal is SIGKILL, which Linux sends when the *thread*
    /// that started it exits, so drop the ping-pong on the thread that made it. When its
    /// work fails it answers a word no block holds (a mismatch at the next round trip) and
    /// exits.
    pub fn new(program: &Path, image: &Path, wait: FarWait, seed: u64) -> io::Result<Self> {
        use nix::sys::eventfd::{EfdFlags, EventFd};
        let blocks = std::fs::metadata(image)?.len() / BLOCK as u64;
        if blocks == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the image holds no 4 KiB block",
            ));
        }
        let kick = match wait {
            FarWait::Read => EventFd::from_flags(EfdFlags::EFD_CLOEXEC),
            FarWait::Epoll => EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK),
        }
        .map_err(nix_io)?;
        let call = EventFd::from_flags(EfdFlags::EFD_CLOEXEC).map_err(nix_io)?;
        // The child gets its own descriptors of the two eventfds as fds 0 and 1 (not
        // close-on-exec there); it inherits no other descriptor of ours: all are CLOEXEC.
        let child = Command::new(program)
            .arg(FAR_SIDE_ARG)
            .arg(wait.arg())
            .arg(image)
            .arg(blocks.to_string())
            .arg(seed.to_string())
            .arg(std::process::id().to_string())
            .stdin(Stdio::from(kick.as_fd().try_clone_to_owned()?))
            .stdout(Stdio::from(call.as_fd().try_clone_to_owned()?))
            .stderr(Stdio::inherit())
            .spawn()?;
        let mut pp = ProcessPingPong {
            kick,
            call,
            offsets: crate::XorShift::new(seed),
            blocks,
            child: Some(child),
            watcher: None,
        };
        // On failure the drop kills and reaps the child.
        pp.wait_ready()?;
        if let Some(child) = pp.child.as_ref() {
            pp.watcher = Some(Watcher::start(child, &pp.call)?);
        }
        Ok(pp)
    }

    /// Waits for the far process's [`READY`] answer, watching for its exit meanwhile.
    fn wait_ready(&mut self) -> io::Result<()> {
        use nix::poll::{poll, PollFd, PollFlags};
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let mut fds = [PollFd::new(self.call.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, 20u16) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => {}
                Ok(_) => {
                    return match self.call.read().map_err(nix_io)? {
                        READY => Ok(()),
                        v => Err(io::Error::other(format!(
                            "the far process failed to start (answered {v:#x})"
                        ))),
                    };
                }
                Err(e) => return Err(nix_io(e)),
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(io::Error::other(format!(
                        "the far process exited before it was ready: {status}"
                    )));
                }
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the far process was not ready in time",
                ));
            }
        }
    }

    /// One round trip for the next block; returns its offset and the first word the far
    /// side got there. Fails (at once from then on) once the far process exited.
    pub fn round_trip(&mut self) -> io::Result<(u64, u64)> {
        let gone = || io::Error::new(io::ErrorKind::BrokenPipe, "the far process exited");
        let dead = || self.watcher.as_ref().is_none_or(Watcher::dead);
        if dead() {
            return Err(gone());
        }
        let offset = next_offset(&mut self.offsets, self.blocks);
        self.kick.write(1).map_err(nix_io)?;
        let reply = self.call.read().map_err(nix_io)?;
        if dead() {
            // Woken by the watcher (perhaps with an answer in the same count).
            return Err(gone());
        }
        Ok((offset, crate::pattern(offset) ^ reply.wrapping_sub(1)))
    }

    /// The process id of the far process (until the drop).
    pub fn far_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for ProcessPingPong {
    fn drop(&mut self) {
        // Stopped before the child is reaped: its pidfd names it until then.
        drop(self.watcher.take());
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The `main` of the far process of a [`ProcessPingPong`], given the arguments after
/// [`FAR_SIDE_ARG`]: its stdin is the kick eventfd, its stdout the call eventfd (nothing
/// else may write to stdout). It serves kicks until it is killed, and exits with a failure,
/// after answering a word no block holds and saying why on stderr, when its arguments are
/// wrong, its parent is not the process named in them (gone already) or its work fails.
pub fn far_side_main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let call = match io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => File::from(fd),
        Err(e) => {
            eprintln!("ping-pong far side: stdout: {e}");
            return ExitCode::FAILURE;
        }
    };
    // A panic answers FAILED too: the near side must not wait for an answer that never
    // comes.
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        match Far::start(args, &call) {
            Ok(far) => far.run(),
            Err(e) => e,
        }
    }));
    let e = served.unwrap_or_else(|_| io::Error::other("the far side panicked"));
    let _ = (&call).write_all(&FAILED.to_ne_bytes());
    eprintln!("ping-pong far side: {e}");
    ExitCode::FAILURE
}

/// The far process of a [`ProcessPingPong`].
struct Far<'a> {
    kick: File,
    call: &'a File,
    epoll: Option<vmm_sys_util::epoll::Epoll>,
    image: File,
    offsets: crate::XorShift,
    blocks: u64,
}

impl<'a> Far<'a> {
    /// Parses `wait image blocks seed parent-pid`, dies with the parent from now on, opens
    /// the image and answers [`READY`].
    fn start(args: impl IntoIterator<Item = OsString>, call: &'a File) -> io::Result<Self> {
        use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidInput, what.to_string());
        let args: Vec<OsString> = args.into_iter().collect();
        let [wait, image, blocks, seed, parent] = &args[..] else {
            return Err(bad("arguments: read|epoll IMAGE BLOCKS SEED PARENT_PID"));
        };
        let number = |s: &OsString| s.to_str().and_then(|s| s.parse::<u64>().ok());
        let wait = wait.to_str().and_then(FarWait::from_arg);
        let wait = wait.ok_or_else(|| bad("the wait is read or epoll"))?;
        let blocks = number(blocks)
            .filter(|&b| b > 0)
            .ok_or_else(|| bad("BLOCKS"))?;
        let seed = number(seed).ok_or_else(|| bad("SEED"))?;
        let parent = number(parent)
            .and_then(|p| i32::try_from(p).ok())
            .ok_or_else(|| bad("PARENT_PID"))?;
        // Killed when the parent dies; a parent that died before this line is seen in the
        // check after it (the child was reparented).
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(nix_io)?;
        if nix::unistd::getppid() != nix::unistd::Pid::from_raw(parent) {
            return Err(io::Error::other("the parent is gone"));
        }
        let kick = File::from(io::stdin().as_fd().try_clone_to_owned()?);
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
        let far = Far {
            kick,
            call,
            epoll,
            image: File::open(image)?,
            offsets: crate::XorShift::new(seed),
            blocks,
        };
        far.answer(READY)?;
        Ok(far)
    }

    fn answer(&self, value: u64) -> io::Result<()> {
        (&*self.call).write_all(&value.to_ne_bytes())
    }

    /// Serves kicks; returns what failed.
    fn run(mut self) -> io::Error {
        let mut buf = vec![0u8; BLOCK];
        let mut counter = [0u8; 8];
        let mut events = [vmm_sys_util::epoll::EpollEvent::default(); 4];
        loop {
            let woken = match &self.epoll {
                Some(epoll) => epoll.wait(-1, &mut events).map(|_| ()),
                None => (&self.kick).read_exact(&mut counter),
            };
            match woken {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return e,
            }
            let offset = next_offset(&mut self.offsets, self.blocks);
            if let Err(e) = self.image.read_exact_at(&mut buf, offset) {
                return e;
            }
            let first = u64::from_le_bytes(buf[..8].try_into().unwrap_or([0; 8]));
            let diff = (first ^ crate::pattern(offset)).min(FAILED - 2);
            if let Err(e) = self.answer(diff + 1) {
                return e;
            }
        }
    }
}

/// Fills `buf` from the kernel's random source.
pub fn getrandom(buf: &mut [u8]) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match rustix::rand::getrandom(&mut buf[got..], rustix::rand::GetRandomFlags::empty()) {
            Ok(0) => return Err(io::Error::other("getrandom returned no byte")),
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
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
