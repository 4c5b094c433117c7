//! Unix stream sockets. Descriptors travel as `SCM_RIGHTS` control messages
//! attached to the first byte of a message, and arrive close-on-exec.
//!
//! Written for Linux and Android (`MSG_CMSG_CLOEXEC`, `MSG_NOSIGNAL`,
//! `SOCK_CLOEXEC`), the platforms vhost-user runs on.

use std::fmt;
use std::fs;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    self, getsockopt, sendmsg, sockopt, AddressFamily, Backlog, ControlMessage, MsgFlags, SockFlag,
    SockType, SockaddrLike, SockaddrStorage, UnixAddr,
};
use vhost_proto::MAX_FDS;

use crate::{Connection, Error, Inherited, Listener, Result};

mod recv;

use recv::RecvState;

/// A descriptor received with a message.
pub type OwnedDescriptor = OwnedFd;
/// A descriptor lent to [`Connection::send`].
pub type BorrowedDescriptor<'a> = BorrowedFd<'a>;

/// Rejects anything but a Unix-family stream socket.
fn check_local_stream(fd: &OwnedFd) -> Result<()> {
    match getsockopt(fd, sockopt::SockType) {
        Ok(SockType::Stream) => {}
        Ok(_) | Err(Errno::ENOTSOCK) => return Err(Error::NotASocket),
        Err(e) => return Err(Error::io("getsockopt(SO_TYPE)", e)),
    }
    let addr: SockaddrStorage =
        socket::getsockname(fd.as_raw_fd()).map_err(|e| Error::io("getsockname", e))?;
    if addr.family() != Some(AddressFamily::Unix) {
        return Err(Error::NotASocket);
    }
    Ok(())
}

fn is_listening(fd: &OwnedFd) -> Result<bool> {
    getsockopt(fd, sockopt::AcceptConn).map_err(|e| Error::io("getsockopt(SO_ACCEPTCONN)", e))
}

/// A connected Unix stream socket with message framing.
pub(crate) struct Socket {
    stream: UnixStream,
    /// The receive buffer and the descriptors parked in it; held for the
    /// length of a receive call.
    rx: Mutex<RecvState>,
    /// Whether `rx` holds unconsumed bytes, readable without taking the lock.
    buffered: AtomicBool,
    /// Whole-message mode: a header is handed out only with all of its body
    /// buffered behind it ([`Socket::set_whole_messages`]).
    whole_messages: AtomicBool,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("fd", &self.stream.as_raw_fd())
            .field("buffered", &self.has_buffered())
            .finish()
    }
}

impl Socket {
    fn new(stream: UnixStream) -> Self {
        Socket {
            stream,
            rx: Mutex::new(RecvState::new()),
            buffered: AtomicBool::new(false),
            whole_messages: AtomicBool::new(false),
        }
    }

    pub(crate) fn pair() -> Result<(Self, Self)> {
        // std creates both ends with SOCK_CLOEXEC.
        let (a, b) = UnixStream::pair().map_err(|e| Error::io("socketpair", e))?;
        Ok((Socket::new(a), Socket::new(b)))
    }

    pub(crate) fn connect(path: &Path) -> Result<Self> {
        let stream = UnixStream::connect(path).map_err(|e| Error::io("connect", e))?;
        Ok(Socket::new(stream))
    }

    /// The stream, for a caller taking the descriptor over; bytes still
    /// buffered are lost with the connection.
    fn into_stream(mut self) -> UnixStream {
        let rx = self.rx.get_mut().unwrap_or_else(PoisonError::into_inner);
        if rx.buffered() > 0 {
            log::warn!("connection given up with received bytes still unread");
        }
        self.stream
    }

    fn from_connected_fd(fd: OwnedFd) -> Result<Self> {
        check_local_stream(&fd)?;
        if is_listening(&fd)? {
            return Err(Error::NotConnected);
        }
        match socket::getpeername::<SockaddrStorage>(fd.as_raw_fd()) {
            Ok(_) => Ok(Socket::new(UnixStream::from(fd))),
            Err(Errno::ENOTCONN) => Err(Error::NotConnected),
            Err(e) => Err(Error::io("getpeername", e)),
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.stream.as_fd()
    }

    pub(crate) fn send(&self, parts: &[&[u8]; 3], fds: &[BorrowedFd<'_>]) -> Result<()> {
        let mut slices = [IoSlice::new(&[]); 3];
        let mut used = 0;
        for part in parts.iter().filter(|p| !p.is_empty()) {
            slices[used] = IoSlice::new(part);
            used += 1;
        }
        let mut raw = [0 as RawFd; MAX_FDS];
        let raw = raw.get_mut(..fds.len()).ok_or(Error::TooManyFds {
            got: fds.len(),
            max: MAX_FDS,
        })?;
        for (r, fd) in raw.iter_mut().zip(fds) {
            *r = fd.as_raw_fd();
        }
        let rights = [ControlMessage::ScmRights(raw)];
        let mut cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
        let mut iov = &mut slices[..used];
        let mut sent = 0usize;
        while !iov.is_empty() {
            match sendmsg::<()>(
                self.stream.as_raw_fd(),
                iov,
                cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(0) => return Err(Error::io("sendmsg", io::ErrorKind::WriteZero)),
                Ok(n) => {
                    sent += n;
                    // The descriptors went with the first byte sent.
                    cmsgs = &[];
                    IoSlice::advance_slices(&mut iov, n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) if sent == 0 => return Err(self.blocked()),
                // Part of the message is out: finish it rather than leave the
                // stream mid-frame.
                Err(Errno::EAGAIN) => self.wait(PollFlags::POLLOUT)?,
                Err(Errno::EPIPE | Errno::ECONNRESET) => return Err(Error::Disconnected),
                Err(e) => return Err(Error::io("sendmsg", e)),
            }
        }
        Ok(())
    }

    pub(crate) fn set_nonblocking(&self, on: bool) -> Result<()> {
        self.stream
            .set_nonblocking(on)
            .map_err(|e| Error::io("set_nonblocking", e))
    }

    pub(crate) fn set_whole_messages(&self, on: bool) {
        self.whole_messages
            .store(on, std::sync::atomic::Ordering::Relaxed);
        let rx = self.rx();
        self.buffered
            .store(rx.next_buffered(on), std::sync::atomic::Ordering::Release);
    }

    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        self.stream
            .set_read_timeout(timeout)
            .map_err(|e| Error::io("setsockopt(SO_RCVTIMEO)", e))
    }

    fn is_nonblocking(&self) -> bool {
        fcntl(self.fd(), FcntlArg::F_GETFL)
            .map(|flags| OFlag::from_bits_truncate(flags).contains(OFlag::O_NONBLOCK))
            .unwrap_or(false)
    }

    /// What EAGAIN means on this socket: non-blocking mode or a timeout.
    fn blocked(&self) -> Error {
        if self.is_nonblocking() {
            Error::WouldBlock
        } else {
            Error::TimedOut
        }
    }

    /// Sleeps until the socket is readable (or has an error, which the next
    /// call then reports), at most for the read timeout when one is set.
    /// `false` when that timeout ran out first.
    pub(crate) fn wait_readable(&self) -> Result<bool> {
        let timeout = self
            .stream
            .read_timeout()
            .map_err(|e| Error::io("getsockopt(SO_RCVTIMEO)", e))?;
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            let left = match deadline {
                None => PollTimeout::NONE,
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Ok(false);
                    }
                    // Rounded up, so the wait never ends before the deadline.
                    PollTimeout::try_from(left.as_micros().div_ceil(1000))
                        .unwrap_or(PollTimeout::MAX)
                }
            };
            let mut fds = [PollFd::new(self.fd(), PollFlags::POLLIN)];
            match poll(&mut fds, left) {
                Ok(0) => {}
                Ok(_) => return Ok(true),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::io("poll", e)),
            }
        }
    }

    /// Sleeps until the socket is ready for `events` (or has an error, which
    /// the next call then reports).
    fn wait(&self, events: PollFlags) -> Result<()> {
        loop {
            let mut fds = [PollFd::new(self.fd(), events)];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(Error::io("poll", e)),
            }
        }
    }
}

/// The socket file a listener created, identified by device and inode so
/// that a file someone else put there later is left alone.
#[derive(Debug)]
struct BoundPath {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

/// A listening Unix stream socket.
#[derive(Debug)]
pub(crate) struct SocketListener {
    listener: UnixListener,
    bound: Option<BoundPath>,
}

impl SocketListener {
    pub(crate) fn bind(path: &Path, mode: Option<u32>) -> Result<Self> {
        remove_stale_socket(path)?;
        let addr = UnixAddr::new(path).map_err(|e| Error::io("socket address", e))?;
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(|e| Error::io("socket", e))?;
        match socket::bind(fd.as_raw_fd(), &addr) {
            Ok(()) => {}
            Err(Errno::EADDRINUSE) => return Err(Error::AddressInUse(path.to_path_buf())),
            Err(e) => return Err(Error::io("bind", e)),
        }
        let meta = match fs::symlink_metadata(path) {
            Ok(meta) => meta,
            Err(e) => {
                // Without its identity the file could not be cleaned up safely later.
                let _ = fs::remove_file(path);
                return Err(Error::io("stat", e));
            }
        };
        // From here on, dropping `this` removes the socket file.
        let this = SocketListener {
            listener: UnixListener::from(fd),
            bound: Some(BoundPath {
                path: path.to_path_buf(),
                dev: meta.dev(),
                ino: meta.ino(),
            }),
        };
        // Permissions are set before listen(), so nobody can connect in
        // between with the umask's looser bits.
        if let Some(mode) = mode {
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(|e| Error::io("chmod", e))?;
        }
        socket::listen(&this.listener, Backlog::MAXCONN).map_err(|e| Error::io("listen", e))?;
        Ok(this)
    }

    pub(crate) fn accept(&self) -> Result<Socket> {
        loop {
            // std uses accept4(SOCK_CLOEXEC) and retries EINTR itself.
            match self.listener.accept() {
                Ok((stream, _)) => return Ok(Socket::new(stream)),
                Err(e) => match e.raw_os_error() {
                    Some(libc::EINTR | libc::ECONNABORTED) => {}
                    Some(libc::EAGAIN) => return Err(Error::WouldBlock),
                    _ => return Err(Error::io("accept", e)),
                },
            }
        }
    }

    pub(crate) fn path(&self) -> Option<&Path> {
        self.bound.as_ref().map(|b| b.path.as_path())
    }

    pub(crate) fn set_nonblocking(&self, on: bool) -> Result<()> {
        self.listener
            .set_nonblocking(on)
            .map_err(|e| Error::io("set_nonblocking", e))
    }
}

impl Drop for SocketListener {
    fn drop(&mut self) {
        let Some(bound) = &self.bound else { return };
        match fs::symlink_metadata(&bound.path) {
            Ok(meta) if meta.dev() == bound.dev && meta.ino() == bound.ino => {
                if let Err(e) = fs::remove_file(&bound.path) {
                    log::warn!("cannot remove socket {}: {e}", bound.path.display());
                }
            }
            Ok(_) => log::debug!("socket {} was replaced; leaving it", bound.path.display()),
            Err(_) => {}
        }
    }
}

/// Clears `path` for bind(): nothing there is fine, a socket file nobody
/// accepts on is removed, a live socket or any other file is refused.
fn remove_stale_socket(path: &Path) -> Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("stat", e)),
    };
    if !meta.file_type().is_socket() {
        return Err(Error::AddressInUse(path.to_path_buf()));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(Error::AddressInUse(path.to_path_buf())),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            log::info!("removing stale socket {}", path.display());
            match fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(Error::io("unlink", e)),
            }
        }
        Err(e) => Err(Error::io("connect", e)),
    }
}

impl<D> Connection<D> {
    /// Wraps a connected Unix stream.
    pub fn from_stream(stream: UnixStream) -> Self {
        Connection::from_sys(Socket::new(stream))
    }

    /// Takes over a descriptor that must be a connected Unix stream socket
    /// ([`Error::NotASocket`] or [`Error::NotConnected`] otherwise; the
    /// descriptor is closed then).
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        Socket::from_connected_fd(fd).map(Connection::from_sys)
    }
}

impl<D> AsFd for Connection<D> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.fd()
    }
}

impl<D> AsRawFd for Connection<D> {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.stream.as_raw_fd()
    }
}

impl<D> From<Connection<D>> for OwnedFd {
    fn from(conn: Connection<D>) -> OwnedFd {
        conn.sock.into_stream().into()
    }
}

impl<D> IntoRawFd for Connection<D> {
    fn into_raw_fd(self) -> RawFd {
        self.sock.into_stream().into_raw_fd()
    }
}

impl Listener {
    /// Takes over an inherited descriptor (`--fd N`): a listening Unix stream
    /// socket becomes a [`Listener`] (which removes no file on drop), a
    /// connected one a [`Connection`]. Anything else is refused and closed.
    pub fn from_fd<D>(fd: OwnedFd) -> Result<Inherited<D>> {
        check_local_stream(&fd)?;
        if is_listening(&fd)? {
            let inner = SocketListener {
                listener: UnixListener::from(fd),
                bound: None,
            };
            return Ok(Inherited::Listener(Listener { inner }));
        }
        Connection::from_fd(fd).map(Inherited::Connected)
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.listener.as_fd()
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.listener.as_raw_fd()
    }
}
