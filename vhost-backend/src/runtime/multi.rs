//! Many devices from one process: a [`MultiDaemon`] serves any number of exports, each a
//! listening socket with a back-end of its own, as qemu-storage-daemon serves repeated
//! `--export`s.
//!
//! Threads. The thread that calls [`MultiDaemon::run`] is the event loop: it sleeps in
//! `epoll_wait` on every listener, every connected front-end, the stop eventfd and the
//! signal eventfd. When a front-end's socket becomes readable, its session goes to a small
//! pool of control threads (at most [`MultiDaemon::with_control_threads`], started on
//! demand), which handles the messages waiting and hands the session back. A session is
//! with at most one control thread at a time, so one front-end's messages stay in order,
//! and a control thread never waits for a front-end: connections are non-blocking and in
//! whole-message mode ([`BackendServer::set_event_driven`]), so a message is handled only
//! once all of it has come, and a front-end that stops in the middle of one holds nothing
//! but its own connection. A slow request (GET_VRING_BASE waiting for I/O,
//! CHECK_DEVICE_STATE) holds one control thread, and the other sessions are served by the
//! others. Device workers start when a ring starts and stop when it stops, so a connected
//! device whose rings are not running costs no thread.
//!
//! Isolation. Each export has its own back-end; a front-end's failure, disconnect or
//! hostile input ends only its own session and resets only its own back-end, after which
//! the export accepts its next front-end. A back-end that panics, or that cannot say what it
//! offers, loses only its own export: its socket is closed (front-ends get a refused
//! connection, not a hang) and the others go on. Like [`Daemon`](super::Daemon), an export
//! serves one front-end at a time: a second one waits in the listen backlog until the first
//! leaves. [`MultiDaemon::with_max_connections`] bounds the front-ends connected at once;
//! one beyond is accepted and closed at once, with a warning.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::Shutdown;
use vhost_transport::{Connection, FrontendChannel, Listener};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::daemon::{bind_error, signal_fd, sys, DaemonError, StopHandle};
use crate::{Backend, BackendServer};

/// Control threads a [`MultiDaemon`] starts at most, by default.
pub const DEFAULT_CONTROL_THREADS: usize = 4;

/// Front-ends a [`MultiDaemon`] keeps connected at once, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// Messages a control thread handles for one session before it gives the others a turn.
const TURN: usize = 64;

/// How long the loop waits before accepting again on a listener whose `accept` failed.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

const TOKEN_STOP: u64 = 0;
const TOKEN_SIGNAL: u64 = 1;
const TOKEN_DONE: u64 = 2;
const LISTENER_BASE: u64 = 1 << 16;
const SESSION_BASE: u64 = 1 << 32;

/// One listening socket and the back-end its front-ends get.
struct Export<B> {
    name: Arc<str>,
    /// `None` once the export is retired (its back-end lost): the socket is closed, so
    /// front-ends are refused instead of waiting in a backlog nobody accepts from.
    listener: Option<Listener>,
    /// `None` while a session has it, or for good once the export is retired.
    backend: Option<B>,
    /// A front-end is being served (its listener is out of the epoll set meanwhile).
    busy: bool,
    /// `accept` failed; the listener goes back into the epoll set at this instant.
    retry_at: Option<Instant>,
}

/// A connected front-end.
struct Session<B> {
    export: usize,
    name: Arc<str>,
    /// `None` while a control thread has the session.
    server: Option<Box<BackendServer<B>>>,
    /// A second descriptor of the connection: registered in the epoll set (so it can be
    /// removed before the connection closes) and used to shut the connection down on a stop.
    sock: OwnedFd,
}

/// What a control thread hands back.
enum Done<B> {
    /// The session goes on; nothing more to read for now.
    Idle {
        slot: usize,
        server: Box<BackendServer<B>>,
    },
    /// The session ended and its back-end has been reset.
    Ended { slot: usize, backend: B },
    /// The back-end panicked while it handled a request; it is gone with its session.
    Lost { slot: usize },
}

/// Serves many exports from one process. See the [module docs](self).
pub struct MultiDaemon<B: Backend> {
    exports: Vec<Export<B>>,
    stop: Arc<EventFd>,
    control_threads: usize,
    max_connections: usize,
}

impl<B: Backend> std::fmt::Debug for MultiDaemon<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiDaemon")
            .field("exports", &self.exports.len())
            .field("control_threads", &self.control_threads)
            .field("max_connections", &self.max_connections)
            .finish_non_exhaustive()
    }
}

impl<B: Backend + 'static> MultiDaemon<B> {
    /// A daemon with no exports yet.
    pub fn new() -> Result<Self, DaemonError> {
        let stop = EventFd::new(EFD_NONBLOCK).map_err(sys("creating the stop eventfd"))?;
        Ok(MultiDaemon {
            exports: Vec::new(),
            stop: Arc::new(stop),
            control_threads: DEFAULT_CONTROL_THREADS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        })
    }

    /// Adds an export: front-ends connecting on `listener` get `backend`. `name` (the
    /// socket path, say) identifies it in the log.
    pub fn add(&mut self, name: impl Into<String>, listener: Listener, backend: B) {
        self.exports.push(Export {
            name: Arc::from(name.into()),
            listener: Some(listener),
            backend: Some(backend),
            busy: false,
            retry_at: None,
        });
    }

    /// Binds `path` (with `mode`, as `--socket-mode`) and adds it as an export.
    pub fn bind(&mut self, path: &Path, mode: Option<u32>, backend: B) -> Result<(), DaemonError> {
        let listener = Listener::bind(path, mode).map_err(|e| bind_error(path, e))?;
        log::info!("listening on {}", path.display());
        self.add(path.display().to_string(), listener, backend);
        Ok(())
    }

    /// Number of exports.
    pub fn len(&self) -> usize {
        self.exports.len()
    }

    /// True when there is no export.
    pub fn is_empty(&self) -> bool {
        self.exports.is_empty()
    }

    /// Sets how many control threads may run at once (at least 1; default
    /// [`DEFAULT_CONTROL_THREADS`]). They start when there is work for them.
    pub fn with_control_threads(mut self, n: usize) -> Self {
        self.control_threads = n.max(1);
        self
    }

    /// Sets how many front-ends may be connected at once (default
    /// [`DEFAULT_MAX_CONNECTIONS`]); one beyond is accepted and closed at once.
    pub fn with_max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// A handle that stops [`run`](Self::run) from another thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(Arc::clone(&self.stop))
    }

    /// Serves every export until a stop is requested (a [`StopHandle`], or SIGTERM, SIGINT,
    /// SIGHUP, SIGQUIT once [`install_signal_handlers`](super::daemon::install_signal_handlers)
    /// ran). On a stop every connection is shut down and every back-end reset (in parallel,
    /// on the control threads) before this returns.
    pub fn run(&mut self) -> Result<(), DaemonError> {
        let epoll = Epoll::new().map_err(sys("creating an epoll set"))?;
        let done = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(sys("creating an eventfd"))?);
        let add = |fd: RawFd, token: u64| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(sys("adding to the epoll set"))
        };
        add(self.stop.as_raw_fd(), TOKEN_STOP)?;
        if let Some(sig) = signal_fd() {
            add(sig.as_raw_fd(), TOKEN_SIGNAL)?;
        }
        add(done.as_raw_fd(), TOKEN_DONE)?;
        for (i, e) in self.exports.iter().enumerate() {
            if let Some(l) = &e.listener {
                // Readiness can be spurious (a listener shared with another process):
                // accept must not block the loop.
                l.set_nonblocking(true)?;
                add(l.as_raw_fd(), LISTENER_BASE + i as u64)?;
            }
        }
        let (tx, rx) = channel();
        let mut run = Run {
            epoll,
            done: Arc::clone(&done),
            pool: Pool::new(self.control_threads, tx, done),
            rx,
            sessions: Vec::new(),
            max_connections: self.max_connections,
        };
        let result = run.serve(&mut self.exports);
        run.shut_down(&mut self.exports);
        result
    }
}

/// The state of one [`MultiDaemon::run`].
struct Run<B: Backend + 'static> {
    epoll: Epoll,
    /// Written by control threads after they send a [`Done`].
    done: Arc<EventFd>,
    pool: Pool<B>,
    rx: Receiver<Done<B>>,
    sessions: Vec<Option<Session<B>>>,
    max_connections: usize,
}

impl<B: Backend + 'static> Run<B> {
    fn serve(&mut self, exports: &mut [Export<B>]) -> Result<(), DaemonError> {
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let timeout = exports
                .iter()
                .filter_map(|e| e.retry_at)
                .min()
                .map(|t| {
                    let ms = t.saturating_duration_since(Instant::now()).as_millis() + 1;
                    i32::try_from(ms).unwrap_or(i32::MAX)
                })
                .unwrap_or(-1);
            let n = match self.epoll.wait(timeout, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(sys("epoll_wait")(e)),
            };
            for ev in &events[..n] {
                match ev.data() {
                    TOKEN_STOP | TOKEN_SIGNAL => {
                        log::info!("stop requested");
                        return Ok(());
                    }
                    TOKEN_DONE => {
                        let _ = self.done.read();
                        while let Ok(d) = self.rx.try_recv() {
                            self.take_back(exports, d)?;
                        }
                    }
                    t if t >= SESSION_BASE => {
                        let slot = (t - SESSION_BASE) as usize;
                        if let Some((name, server)) = self
                            .sessions
                            .get_mut(slot)
                            .and_then(Option::as_mut)
                            .and_then(|s| Some((Arc::clone(&s.name), s.server.take()?)))
                        {
                            self.pool.submit(slot, name, server);
                        }
                    }
                    t => self.accept(exports, (t - LISTENER_BASE) as usize)?,
                }
            }
            let now = Instant::now();
            for (i, e) in exports.iter_mut().enumerate() {
                if e.retry_at.is_some_and(|t| t <= now) {
                    e.retry_at = None;
                    if !e.busy {
                        self.listen(e, i, ControlOperation::Add)?;
                    }
                }
            }
        }
    }

    /// Adds export `i`'s listener to the epoll set or removes it (nothing for a retired
    /// export).
    fn listen(&self, e: &Export<B>, i: usize, op: ControlOperation) -> Result<(), DaemonError> {
        let Some(l) = &e.listener else {
            return Ok(());
        };
        self.epoll
            .ctl(
                op,
                l.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER_BASE + i as u64),
            )
            .map_err(sys("changing the epoll set"))
    }

    /// Closes export `i`'s socket for good: its back-end is gone.
    fn retire(&self, e: &mut Export<B>, i: usize, why: &str) {
        log::error!("{}: {why}; this export serves no more front-ends", e.name);
        let _ = self.listen(e, i, ControlOperation::Delete);
        // Dropping the listener closes the socket and removes its file: front-ends get a
        // refused connection rather than waiting in a backlog nobody accepts from.
        e.listener = None;
        e.backend = None;
        e.busy = false;
        e.retry_at = None;
    }

    fn connected(&self) -> usize {
        self.sessions.iter().filter(|s| s.is_some()).count()
    }

    /// A front-end is waiting on export `i`.
    fn accept(&mut self, exports: &mut [Export<B>], i: usize) -> Result<(), DaemonError> {
        let Some(e) = exports.get_mut(i) else {
            return Ok(());
        };
        if e.busy || e.backend.is_none() {
            return Ok(());
        }
        let Some(listener) = &e.listener else {
            return Ok(());
        };
        let conn: Connection<FrontendChannel> = match listener.accept() {
            Ok(c) => c,
            Err(vhost_transport::Error::WouldBlock) => return Ok(()),
            Err(err) => {
                // A persistent error (EMFILE: the connection stays queued and the socket
                // readable) must not spin the loop.
                log::warn!("{}: accepting a front-end: {err}; retrying shortly", e.name);
                self.listen(e, i, ControlOperation::Delete)?;
                e.retry_at = Some(Instant::now() + ACCEPT_RETRY);
                return Ok(());
            }
        };
        let open = self.connected();
        if open >= self.max_connections {
            log::warn!(
                "{}: refusing a front-end: {open} front-ends connected, the most this \
                 process serves at once (--max-connections)",
                e.name
            );
            return Ok(());
        }
        let Some(backend) = e.backend.take() else {
            return Ok(());
        };
        let server = match BackendServer::new(conn, backend) {
            Ok(s) => Box::new(s),
            Err(err) => {
                let why = format!("the back-end could not say what it offers ({err})");
                self.retire(e, i, &why);
                return Ok(());
            }
        };
        let sock = server
            .as_fd()
            .try_clone_to_owned()
            .map_err(sys("duplicating the connection"));
        let ready = sock.and_then(|sock| {
            server.set_event_driven()?;
            Ok(sock)
        });
        let sock = match ready {
            Ok(sock) => sock,
            Err(err) => {
                log::error!("{}: {err}", e.name);
                let mut server = server;
                let _ = server.finish();
                e.backend = Some(server.into_backend());
                return Ok(());
            }
        };
        // One front-end at a time per export: the next waits in the backlog.
        self.listen(e, i, ControlOperation::Delete)?;
        e.busy = true;
        log::info!("{}: front-end connected", e.name);
        let slot = match self.sessions.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                self.sessions.push(None);
                self.sessions.len() - 1
            }
        };
        self.epoll
            .ctl(
                ControlOperation::Add,
                sock.as_raw_fd(),
                EpollEvent::new(
                    EventSet::IN | EventSet::ONE_SHOT,
                    SESSION_BASE + slot as u64,
                ),
            )
            .map_err(sys("adding a connection to the epoll set"))?;
        self.sessions[slot] = Some(Session {
            export: i,
            name: Arc::clone(&e.name),
            server: Some(server),
            sock,
        });
        Ok(())
    }

    /// Removes session `slot` (its connection leaves the epoll set and closes).
    fn remove(&mut self, slot: usize) -> Option<Session<B>> {
        let s = self.sessions.get_mut(slot).and_then(Option::take)?;
        let _ = self.epoll.ctl(
            ControlOperation::Delete,
            s.sock.as_raw_fd(),
            EpollEvent::default(),
        );
        Some(s)
    }

    /// A control thread handed a session back.
    fn take_back(&mut self, exports: &mut [Export<B>], done: Done<B>) -> Result<(), DaemonError> {
        match done {
            Done::Idle { slot, server } => {
                let Some(s) = self.sessions.get_mut(slot).and_then(Option::as_mut) else {
                    return Ok(());
                };
                if server.has_buffered() {
                    // A whole message is already read ahead: the socket may never become
                    // readable for it.
                    let name = Arc::clone(&s.name);
                    self.pool.submit(slot, name, server);
                    return Ok(());
                }
                s.server = Some(server);
                self.epoll
                    .ctl(
                        ControlOperation::Modify,
                        s.sock.as_raw_fd(),
                        EpollEvent::new(
                            EventSet::IN | EventSet::ONE_SHOT,
                            SESSION_BASE + slot as u64,
                        ),
                    )
                    .map_err(sys("re-arming a connection"))
            }
            Done::Ended { slot, backend } => {
                let Some(s) = self.remove(slot) else {
                    return Ok(());
                };
                let i = s.export;
                let e = &mut exports[i];
                log::info!("{}: front-end session ended", e.name);
                e.backend = Some(backend);
                e.busy = false;
                if e.retry_at.is_none() {
                    self.listen(e, i, ControlOperation::Add)?;
                }
                Ok(())
            }
            Done::Lost { slot } => {
                let Some(s) = self.remove(slot) else {
                    return Ok(());
                };
                self.retire(&mut exports[s.export], s.export, "the back-end panicked");
                Ok(())
            }
        }
    }

    /// Ends every session and resets every back-end, then stops the control threads. Every
    /// connection is shut down first; the sessions then end on the control threads, in
    /// parallel (a reset waits for the I/O in flight, within the quiesce bound).
    fn shut_down(&mut self, exports: &mut [Export<B>]) {
        let mut away = 0;
        for slot in 0..self.sessions.len() {
            let Some(s) = self.sessions[slot].as_mut() else {
                continue;
            };
            if let Err(e) = nix::sys::socket::shutdown(s.sock.as_raw_fd(), Shutdown::Both) {
                log::warn!("{}: shutting the connection down: {e}", s.name);
            }
            // With the loop: a control thread reads the end of the stream and resets it.
            if let Some(server) = s.server.take() {
                let name = Arc::clone(&s.name);
                self.pool.submit(slot, name, server);
            }
            away += 1;
        }
        while away > 0 {
            match self.rx.recv() {
                Ok(Done::Idle { slot, server }) => {
                    // Not ended by the shutdown (cannot happen on Linux): once more.
                    if let Some(name) = self
                        .sessions
                        .get(slot)
                        .and_then(|s| Some(Arc::clone(&s.as_ref()?.name)))
                    {
                        self.pool.submit(slot, name, server);
                        continue;
                    }
                }
                Ok(d) => {
                    let _ = self.take_back(exports, d);
                }
                Err(_) => break,
            }
            away -= 1;
        }
        self.pool.close();
    }
}

/// The control threads: started on demand up to a bound, each taking one session at a
/// time from a shared queue.
struct Pool<B: Backend + 'static> {
    shared: Arc<PoolShared<B>>,
    threads: Vec<JoinHandle<()>>,
    max: usize,
    tx: Sender<Done<B>>,
    done: Arc<EventFd>,
}

struct PoolShared<B> {
    queue: Mutex<PoolQueue<B>>,
    ready: Condvar,
}

type Job<B> = (usize, Arc<str>, Box<BackendServer<B>>);

struct PoolQueue<B> {
    jobs: VecDeque<Job<B>>,
    idle: usize,
    closed: bool,
}

impl<B: Backend + 'static> Pool<B> {
    fn new(max: usize, tx: Sender<Done<B>>, done: Arc<EventFd>) -> Self {
        Pool {
            shared: Arc::new(PoolShared {
                queue: Mutex::new(PoolQueue {
                    jobs: VecDeque::new(),
                    idle: 0,
                    closed: false,
                }),
                ready: Condvar::new(),
            }),
            threads: Vec::new(),
            max,
            tx,
            done,
        }
    }

    /// Hands a session to a control thread, starting one if all are busy and the bound
    /// allows. When no thread can be started at all, the session's turn runs here.
    fn submit(&mut self, slot: usize, name: Arc<str>, server: Box<BackendServer<B>>) {
        let q = self
            .shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let wanted = q.idle <= q.jobs.len() && self.threads.len() < self.max;
        drop(q);
        if wanted {
            let shared = Arc::clone(&self.shared);
            let tx = self.tx.clone();
            let done = Arc::clone(&self.done);
            match std::thread::Builder::new()
                .name("vhost-control".into())
                .spawn(move || control_thread(&shared, &tx, &done))
            {
                Ok(handle) => self.threads.push(handle),
                Err(e) => log::warn!("starting a control thread: {e}"),
            }
        }
        if self.threads.is_empty() {
            // Not one control thread: served here, degraded but never lost.
            let d = run_turn(slot, &name, server);
            let _ = self.tx.send(d);
            let _ = self.done.write(1);
            return;
        }
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .jobs
            .push_back((slot, name, server));
        self.shared.ready.notify_one();
    }

    fn close(&mut self) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .closed = true;
        self.shared.ready.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn control_thread<B: Backend>(shared: &PoolShared<B>, tx: &Sender<Done<B>>, done: &EventFd) {
    loop {
        let mut q = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let (slot, name, server) = loop {
            if let Some(job) = q.jobs.pop_front() {
                break job;
            }
            if q.closed {
                return;
            }
            q.idle += 1;
            q = shared.ready.wait(q).unwrap_or_else(PoisonError::into_inner);
            q.idle -= 1;
        };
        drop(q);
        let d = run_turn(slot, &name, server);
        if tx.send(d).is_err() {
            return;
        }
        if let Err(e) = done.write(1) {
            log::error!("waking the event loop: {e}");
        }
    }
}

/// [`turn`], with a panic of the back-end contained to its own session.
fn run_turn<B: Backend>(slot: usize, name: &str, server: Box<BackendServer<B>>) -> Done<B> {
    std::panic::catch_unwind(AssertUnwindSafe(|| turn(slot, name, server))).unwrap_or_else(|_| {
        log::error!("{name}: the back-end panicked while handling a request");
        Done::Lost { slot }
    })
}

/// Handles the messages waiting on one session, up to [`TURN`] of them.
fn turn<B: Backend>(slot: usize, name: &str, mut server: Box<BackendServer<B>>) -> Done<B> {
    for _ in 0..TURN {
        match server.handle_one() {
            Ok(()) => {}
            Err(e) if e.is_retryable() => break,
            Err(e) => {
                let reset = server.finish();
                match &e {
                    crate::ServerError::Transport(vhost_transport::Error::Disconnected) => {
                        log::info!("{name}: front-end disconnected");
                    }
                    e => log::warn!("{name}: closing the front-end connection: {e}"),
                }
                if let Err(r) = reset {
                    log::error!("{name}: {r}");
                }
                return Done::Ended {
                    slot,
                    backend: server.into_backend(),
                };
            }
        }
    }
    Done::Idle { slot, server }
}

/// `path0`, `path1`, … `path{n-1}`: the sockets of `--socket-count n`, named as rust-vmm's
/// vhost-device-* name them.
pub fn numbered_paths(path: &Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let mut p = path.as_os_str().to_owned();
            p.push(i.to_string());
            PathBuf::from(p)
        })
        .collect()
}
