//! The daemon loop: accept one front-end at a time on a listening socket, serve it with
//! [`BackendServer`], reset the back-end when it goes away, and accept the next one on the
//! same socket, until asked to stop (SIGTERM, SIGINT, SIGHUP, SIGQUIT or a [`StopHandle`]).
//!
//! The loop sleeps in `poll(2)` on the listening socket together with a stop eventfd. A
//! front-end's session runs [`BackendServer::serve`] on a scoped thread while the loop waits
//! for the session's end or a stop; a stop shuts the connection down, so the session ends
//! at once and the back-end is reset. Signals only write to an eventfd (the one
//! async-signal-safe thing the handler does).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::socket::Shutdown;
use vhost_transport::{Connection, FrontendChannel, Inherited, Listener};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::cli::BackendArgs;
use super::device::VirtioDevice;
use super::handler::{DeviceBackend, RuntimeError};
use crate::{Backend, BackendServer, ServerError};

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Neither `--socket-path` nor `--fd` was given.
    #[error("one of --socket-path or --fd is required")]
    NoSocket,
    /// The back-end was lost when a server could not be built for an earlier front-end.
    #[error("the back-end is no longer available")]
    BackendLost,
    /// `--fd N` is not an open descriptor.
    #[error("--fd {0} is not an open descriptor")]
    BadFd(i32),
    /// `--fd N` names standard input, output or error.
    #[error(
        "--fd {0} is standard {std}: pass the socket on descriptor 3 or above",
        std = ["input", "output", "error"][*.0 as usize % 3]
    )]
    StdioFd(i32),
    /// `--fd N` is not a socket, or not a usable one.
    #[error("--fd {fd}: {why}")]
    NotSocket {
        /// The descriptor.
        fd: i32,
        /// What it is, or why it cannot be served.
        why: String,
    },
    /// Binding `--socket-path` failed.
    #[error("cannot listen on {}: {why}", path.display())]
    Bind {
        /// The socket path.
        path: std::path::PathBuf,
        /// The reason, and the fix where there is an obvious one.
        why: String,
    },
    /// Binding, accepting or taking over the socket failed.
    #[error(transparent)]
    Transport(#[from] vhost_transport::Error),
    /// The server could not be built for a front-end (the back-end's offer failed).
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The device could not be set up.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A system call of the loop itself failed (eventfd, poll, sigaction).
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

pub(super) fn sys(what: &'static str) -> impl FnOnce(std::io::Error) -> DaemonError {
    move |source| DaemonError::Sys { what, source }
}

/// Asks a running [`Daemon`] to stop. Cheap to clone; usable from any thread.
#[derive(Debug, Clone)]
pub struct StopHandle(pub(super) Arc<EventFd>);

impl StopHandle {
    /// Requests the stop. The daemon resets the back-end and returns from
    /// [`Daemon::run`].
    pub fn stop(&self) {
        if let Err(e) = self.0.write(1) {
            log::error!("requesting a stop: {e}");
        }
    }
}

/// The eventfd SIGTERM, SIGINT, SIGHUP and SIGQUIT write to; lives for the whole process.
static SIGNAL_EVENT: OnceLock<EventFd> = OnceLock::new();
static SIGNAL_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(_: libc::c_int) {
    let fd = SIGNAL_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one = 1u64.to_ne_bytes();
        // SAFETY: `write` is async-signal-safe; `fd` is the eventfd in `SIGNAL_EVENT`, which
        // is never closed, and `one` is a valid 8-byte buffer.
        unsafe {
            libc::write(fd, one.as_ptr().cast(), one.len());
        }
    }
}

/// Makes SIGTERM, SIGINT, SIGHUP and SIGQUIT stop every [`Daemon`] of the process promptly
/// (each finishes the message in hand, resets its back-end and returns from
/// [`Daemon::run`]). SIGHUP and SIGQUIT stay ignored when the process was started with them
/// ignored (`nohup`, a background job).
pub fn install_signal_handlers() -> Result<(), DaemonError> {
    let ev = match SIGNAL_EVENT.get() {
        Some(ev) => ev,
        None => {
            let ev = EventFd::new(EFD_NONBLOCK).map_err(sys("creating the signal eventfd"))?;
            SIGNAL_EVENT.get_or_init(|| ev)
        }
    };
    SIGNAL_FD.store(ev.as_raw_fd(), Ordering::Relaxed);
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        let failed = |e: Errno| DaemonError::Sys {
            what: "installing a signal handler",
            source: e.into(),
        };
        // SAFETY: the handler only loads an atomic and calls `write`, both async-signal-safe.
        let old = unsafe { sigaction(sig, &action) }.map_err(failed)?;
        let keep_ignored =
            matches!(sig, Signal::SIGHUP | Signal::SIGQUIT) && old.handler() == SigHandler::SigIgn;
        if keep_ignored {
            // SAFETY: restores the disposition the process inherited (ignore).
            unsafe { sigaction(sig, &old) }.map_err(failed)?;
        }
    }
    Ok(())
}

/// The descriptor of an eventfd, borrowed for as long as the eventfd lives.
pub(super) fn borrow(ev: &EventFd) -> BorrowedFd<'_> {
    // SAFETY: `ev` owns this open descriptor and outlives the returned borrow.
    unsafe { BorrowedFd::borrow_raw(ev.as_raw_fd()) }
}

pub(super) fn signal_fd() -> Option<BorrowedFd<'static>> {
    SIGNAL_EVENT.get().map(borrow)
}

enum Source {
    Listener(Listener),
    Connected(Option<Connection<FrontendChannel>>),
    /// Client mode: connect to the front-end listening here, again after each session.
    Client(std::path::PathBuf),
}

/// A client-mode session shorter than this does not reset the back-off: a front-end that
/// accepts and drops every connection is not reconnected to in a tight loop.
const SHORT_SESSION: Duration = Duration::from_secs(2);

/// Serves front-ends one at a time. See the [module docs](self).
pub struct Daemon<B: Backend> {
    backend: Option<B>,
    source: Source,
    stop: Arc<EventFd>,
    stall_timeout: Option<Duration>,
    first_message_timeout: Option<Duration>,
}

impl<B: Backend> std::fmt::Debug for Daemon<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").finish_non_exhaustive()
    }
}

enum Wake {
    /// The descriptor at this index is readable, or the timeout ran out (index 0).
    Ready(usize),
    Stop,
}

impl<B: Backend> Daemon<B> {
    fn with_source(source: Source, backend: B) -> Result<Self, DaemonError> {
        let stop = EventFd::new(EFD_NONBLOCK).map_err(sys("creating the stop eventfd"))?;
        Ok(Daemon {
            backend: Some(backend),
            source,
            stop: Arc::new(stop),
            stall_timeout: Some(crate::STALL_TIMEOUT),
            first_message_timeout: None,
        })
    }

    /// A daemon accepting front-ends on `listener`.
    pub fn new(listener: Listener, backend: B) -> Result<Self, DaemonError> {
        Self::with_source(Source::Listener(listener), backend)
    }

    /// A daemon serving one already connected front-end, then returning.
    pub fn with_connection(
        conn: Connection<FrontendChannel>,
        backend: B,
    ) -> Result<Self, DaemonError> {
        Self::with_source(Source::Connected(Some(conn)), backend)
    }

    /// A daemon connecting to the front-end listening at `path` (client mode): it serves
    /// that front-end and, after a disconnect, connects again with back-off (from
    /// [`CONNECT_RETRY_MIN`] up to [`CONNECT_RETRY_MAX`]) until stopped.
    pub fn client(path: impl Into<std::path::PathBuf>, backend: B) -> Result<Self, DaemonError> {
        Self::with_source(Source::Client(path.into()), backend)
    }

    /// A daemon on the socket the command line names: `--socket-path` (bound now, with
    /// `--socket-mode`; with `--client`, connected to instead), `--fd` (a listening socket,
    /// or a connected one served once), or else the listening socket systemd passed
    /// ([`socket_activation`](super::cli::socket_activation)).
    pub fn from_args(args: &BackendArgs, backend: B) -> Result<Self, DaemonError> {
        if let (true, Some(path)) = (args.client, &args.socket_path) {
            log::info!(
                "client mode: connecting to the front-end at {}",
                path.display()
            );
            return Self::client(path, backend);
        }
        if let Some(path) = &args.socket_path {
            let listener =
                Listener::bind(path, args.socket_mode).map_err(|e| bind_error(path, e))?;
            log::info!("listening on {}", path.display());
            return Self::new(listener, backend);
        }
        let n = match (args.fd, super::cli::socket_activation()) {
            (Some(n), _) => n,
            (None, Some(n)) => {
                // (Children see LISTEN_PID name another process: nothing to clear.)
                let count = std::env::var("LISTEN_FDS").unwrap_or_default();
                if count != "1" {
                    log::warn!(
                        "systemd passed {count} descriptors; this daemon serves the first only"
                    );
                }
                log::info!("serving the socket passed by systemd (descriptor {n})");
                n
            }
            (None, None) => return Err(DaemonError::NoSocket),
        };
        if (0..=2).contains(&n) {
            // Taking it over would close it on failure, and with it the error message.
            return Err(DaemonError::StdioFd(n));
        }
        // SAFETY: F_GETFD only reads the descriptor flags; any integer is a valid argument.
        if unsafe { libc::fcntl(n, libc::F_GETFD) } < 0 {
            return Err(DaemonError::BadFd(n));
        }
        {
            // SAFETY: `n` is open (checked above); the borrow ends within this block, before
            // anything takes the descriptor over.
            let borrowed = unsafe { BorrowedFd::borrow_raw(n) };
            let st = nix::sys::stat::fstat(borrowed).map_err(|_| DaemonError::BadFd(n))?;
            let kind = nix::sys::stat::SFlag::from_bits_truncate(st.st_mode)
                & nix::sys::stat::SFlag::S_IFMT;
            if kind != nix::sys::stat::SFlag::S_IFSOCK {
                return Err(DaemonError::NotSocket {
                    fd: n,
                    why: "not a socket".into(),
                });
            }
        }
        // SAFETY: `n` is open (checked above) and was handed to this process for the
        // daemon's use alone (`--fd`); nothing else in the process owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(n) };
        let inherited = Listener::from_fd(fd).map_err(|e| DaemonError::NotSocket {
            fd: n,
            why: e.to_string(),
        })?;
        match inherited {
            Inherited::Listener(l) => {
                log::info!("listening on inherited descriptor {n}");
                Self::new(l, backend)
            }
            Inherited::Connected(c) => {
                log::info!("serving the front-end connected on descriptor {n}");
                Self::with_connection(c, backend)
            }
        }
    }

    /// Sets how long a front-end may stall in the middle of a message (or before its first
    /// message) before its connection is closed (default
    /// [`STALL_TIMEOUT`](crate::STALL_TIMEOUT); `None`: no bound). See
    /// [`BackendServer::serve`].
    pub fn with_stall_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.stall_timeout = timeout;
        self
    }

    /// Closes a front-end's connection when its first message does not start within
    /// `timeout` (none by default; see
    /// [`BackendServer::set_first_message_timeout`]).
    pub fn with_first_message_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.first_message_timeout = timeout;
        self
    }

    /// A handle that stops [`run`](Self::run) from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.stop))
    }

    /// The back-end (between runs).
    pub fn backend(&self) -> Option<&B> {
        self.backend.as_ref()
    }

    /// Serves front-ends until a stop is requested (or, with a connected `--fd`, until that
    /// front-end leaves). Each front-end's session ends with [`Backend::disconnected`].
    pub fn run(&mut self) -> Result<(), DaemonError> {
        // Client mode: the wait before reconnecting after a short session.
        let mut backoff = CONNECT_RETRY_MIN;
        loop {
            let conn = match &mut self.source {
                Source::Listener(l) => match wait(&self.stop, &[l.as_fd()], None)? {
                    Wake::Stop => return Ok(()),
                    Wake::Ready(_) => match l.accept() {
                        Ok(c) => c,
                        Err(e) => {
                            // A persistent error (EMFILE: the pending connection stays
                            // queued and the socket readable) must not spin the loop.
                            log::warn!("accepting a front-end: {e}; retrying shortly");
                            match wait(&self.stop, &[], Some(ACCEPT_RETRY))? {
                                Wake::Stop => return Ok(()),
                                Wake::Ready(_) => continue,
                            }
                        }
                    },
                },
                Source::Connected(c) => match c.take() {
                    Some(c) => c,
                    None => return Ok(()),
                },
                Source::Client(path) => match connect(&self.stop, path)? {
                    Some(c) => c,
                    None => return Ok(()),
                },
            };
            log::info!("front-end connected");
            let started = Instant::now();
            if let Wake::Stop = self.serve(conn)? {
                return Ok(());
            }
            if let Source::Client(_) = self.source {
                if started.elapsed() < SHORT_SESSION {
                    if let Wake::Stop = wait(&self.stop, &[], Some(backoff))? {
                        return Ok(());
                    }
                    backoff = (backoff * 2).min(CONNECT_RETRY_MAX);
                } else {
                    backoff = CONNECT_RETRY_MIN;
                }
            }
        }
    }

    /// Serves one front-end until it leaves or a stop is requested.
    ///
    /// The session runs [`BackendServer::serve`] on a thread of its own (the transport may
    /// hold read-ahead bytes, so readiness of the socket says nothing about the next
    /// message); this thread waits for the session to end or for a stop, which shuts the
    /// socket down so the session ends at once. Either way the back-end comes back reset.
    fn serve(&mut self, conn: Connection<FrontendChannel>) -> Result<Wake, DaemonError> {
        let backend = self.backend.take().ok_or(DaemonError::BackendLost)?;
        let mut server = BackendServer::new(conn, backend)?;
        server.set_stall_timeout(self.stall_timeout);
        server.set_first_message_timeout(self.first_message_timeout);
        // A second descriptor of the same socket, to shut it down from here.
        let sock = server
            .as_fd()
            .try_clone_to_owned()
            .map_err(sys("duplicating the connection"))?;
        let done = EventFd::new(EFD_NONBLOCK).map_err(sys("creating an eventfd"))?;
        let stop = &self.stop;
        let listener = match &self.source {
            Source::Listener(l) => Some(l.as_fd()),
            Source::Connected(_) | Source::Client(_) => None,
        };
        let (woke, joined) = std::thread::scope(|scope| {
            let session = std::thread::Builder::new()
                .name("vhost-session".into())
                .spawn_scoped(scope, || {
                    let result = server.serve();
                    if let Err(e) = done.write(1) {
                        log::error!("signalling the end of a session: {e}");
                    }
                    (server.into_backend(), result)
                });
            let session = match session {
                Ok(s) => s,
                Err(e) => return (Err(sys("starting the session thread")(e)), None),
            };
            let mut woke = match listener {
                Some(l) => wait(stop, &[borrow(&done), l], None),
                None => wait(stop, &[borrow(&done)], None),
            };
            if let Ok(Wake::Ready(1)) = woke {
                // Said once per session: the listener stays readable while it waits.
                log::warn!(
                    "another front-end is waiting to connect; this daemon serves one front-end \
                     at a time, so it waits until the current one disconnects"
                );
                woke = wait(stop, &[borrow(&done)], None);
            }
            if !matches!(woke, Ok(Wake::Ready(_))) {
                if let Err(e) = nix::sys::socket::shutdown(sock.as_raw_fd(), Shutdown::Both) {
                    log::warn!("shutting the front-end connection down: {e}");
                }
            }
            (woke, session.join().ok())
        });
        match joined {
            Some((backend, result)) => {
                self.backend = Some(backend);
                match result {
                    Ok(()) => log::info!("front-end session ended"),
                    Err(e) => log::info!("front-end session ended: {e}"),
                }
            }
            None => log::error!("the session thread failed; the back-end is lost"),
        }
        woke
    }
}

/// Explains a failed bind of `path`, with the fix where there is an obvious one.
pub(super) fn bind_error(path: &std::path::Path, e: vhost_transport::Error) -> DaemonError {
    use std::io::ErrorKind;
    let why = match &e {
        vhost_transport::Error::AddressInUse(_) => match std::fs::symlink_metadata(path) {
            Ok(m) if !std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()) => {
                "it exists and is not a socket (left as it is): remove it or choose another \
                 path"
                    .to_owned()
            }
            _ => "another process is listening on it".to_owned(),
        },
        vhost_transport::Error::Io { source, .. } => {
            let hint = match source.kind() {
                ErrorKind::NotFound => " (does the directory exist?)",
                ErrorKind::PermissionDenied => " (is the directory writable for this user?)",
                _ => "",
            };
            format!("{e}: {source}{hint}")
        }
        other => other.to_string(),
    };
    DaemonError::Bind {
        path: path.to_path_buf(),
        why,
    }
}

/// First wait before connecting again in client mode.
pub const CONNECT_RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest wait between connection attempts in client mode.
pub const CONNECT_RETRY_MAX: Duration = Duration::from_secs(5);

/// Connects to the front-end at `path`, retrying with back-off until it listens. `None`
/// when a stop is requested first.
fn connect(
    stop: &EventFd,
    path: &std::path::Path,
) -> Result<Option<Connection<FrontendChannel>>, DaemonError> {
    let mut delay = CONNECT_RETRY_MIN;
    let mut said = false;
    loop {
        match Connection::<FrontendChannel>::connect(path) {
            Ok(c) => {
                log::info!("connected to the front-end at {}", path.display());
                return Ok(Some(c));
            }
            Err(e) if !said => {
                log::info!(
                    "waiting for the front-end to listen at {}: {e}; retrying",
                    path.display()
                );
                said = true;
            }
            Err(e) => log::debug!("connecting to {}: {e}", path.display()),
        }
        if let Wake::Stop = wait(stop, &[], Some(delay))? {
            return Ok(None);
        }
        delay = (delay * 2).min(CONNECT_RETRY_MAX);
    }
}

/// How long the loop waits before accepting again after `accept` failed.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Sleeps until one of `fds` is readable ([`Wake::Ready`] with its index), `timeout` ran out
/// ([`Wake::Ready`]`(0)`) or a stop is requested ([`Wake::Stop`]).
fn wait(
    stop: &EventFd,
    fds: &[BorrowedFd<'_>],
    timeout: Option<Duration>,
) -> Result<Wake, DaemonError> {
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let mut polled = vec![PollFd::new(borrow(stop), PollFlags::POLLIN)];
        if let Some(sig) = signal_fd() {
            polled.push(PollFd::new(sig, PollFlags::POLLIN));
        }
        let stops = polled.len();
        polled.extend(fds.iter().map(|fd| PollFd::new(*fd, PollFlags::POLLIN)));
        let left = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                // Rounded up, so the wait never ends before the deadline.
                let ms = d
                    .saturating_duration_since(Instant::now())
                    .as_micros()
                    .div_ceil(1000);
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX)
            }
        };
        let n = match poll(&mut polled, left) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                return Err(DaemonError::Sys {
                    what: "poll",
                    source: e.into(),
                })
            }
        };
        let ready = |p: &PollFd<'_>| p.revents().is_some_and(|r| !r.is_empty());
        if polled[..stops].iter().any(ready) {
            log::info!("stop requested");
            return Ok(Wake::Stop);
        }
        if let Some(i) = polled[stops..].iter().position(ready) {
            return Ok(Wake::Ready(i));
        }
        if n == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Wake::Ready(0));
        }
    }
}

/// Runs `device` the way a device binary does: logging from `RUST_LOG`, SIGTERM/SIGINT/SIGHUP/SIGQUIT
/// handlers, the socket from `args`, one front-end at a time until a signal.
pub fn run_device<D: VirtioDevice>(args: &BackendArgs, device: D) -> Result<(), DaemonError> {
    super::cli::init_logging();
    install_signal_handlers()?;
    let backend = DeviceBackend::new(device)?.with_memory_policy(args.memory_policy());
    Daemon::from_args(args, backend)?.run()
}
