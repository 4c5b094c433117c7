//! Test harnesses shared by the workspace's crates (not published).
//!
//! - [`Scratch`]: a temporary directory removed on drop, holding sockets and files.
//! - [`Spawned`]: a daemon binary spawned as QEMU would spawn it, its log lines on a channel.
//! - [`InProcess`]: a device's daemon served by a thread of the test process.
//! - [`connect`], [`for_each_layout`], [`with_layout`]: front-end sessions, once per ring
//!   layout.
//! - [`wire`]: raw front-end messages (bodies built by hand, replies checked byte by byte).
//! - [`open_fds`]: descriptor counts, to check that nothing leaks.
//! - [`capabilities`]: a daemon's `--print-capabilities` JSON.
//! - [`hostile`]: the hostile front-end suite, run for every device through
//!   [`hostile_suite!`](crate::hostile_suite).
#![cfg(unix)]

pub mod hostile;
pub mod wire;

use std::cell::Cell;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost_backend::runtime::cli::BackendArgs;
use vhost_backend::runtime::{Daemon, DeviceBackend, StopHandle, VirtioDevice};
use vhost_frontend::{Session, SessionOptions};

/// How long a test waits for one answer, one completion or one log line.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A scratch directory removed on drop.
pub struct Scratch {
    /// The directory.
    pub dir: PathBuf,
}

impl Scratch {
    /// A fresh directory `<tmp>/vhost-it-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vhost-it-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch { dir }
    }

    /// The vhost-user socket of the directory.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("vhost.sock")
    }

    /// The path of `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes `bytes` to `name` in the directory; returns its path.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).expect("scratch file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Calls `attempt` until it succeeds or [`TIMEOUT`] passes (20 ms apart), as a client does
/// while a daemon's socket appears; panics naming `what` then.
pub fn retry<T, E: std::fmt::Display>(what: &Path, mut attempt: impl FnMut() -> Result<T, E>) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match attempt() {
            Ok(v) => return v,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("connecting to {}: {e}", what.display()),
        }
    }
}

thread_local! {
    /// Whether this thread's sessions drive packed virtqueues.
    static PACKED: Cell<bool> = const { Cell::new(false) };
}

/// Runs `test` once per ring layout: split, then packed (VIRTIO_F_RING_PACKED acked by the
/// options passed through [`with_layout`]).
pub fn for_each_layout(test: impl Fn()) {
    for packed in [false, true] {
        PACKED.with(|p| p.set(packed));
        eprintln!("-- packed rings: {packed}");
        test();
    }
    PACKED.with(|p| p.set(false));
}

/// `o` for the current layout of [`for_each_layout`]: outside its packed round the packed
/// ring feature is masked out.
pub fn with_layout(mut o: SessionOptions) -> SessionOptions {
    if packed_layout() {
        o.mask_features &= !vhost_proto::virtio::bit(vhost_proto::virtio::RING_PACKED);
    }
    o
}

/// Whether the sessions [`with_layout`] configures on this thread run packed rings.
pub fn packed_layout() -> bool {
    PACKED.with(|p| p.get())
}

/// Connects (retrying while the socket appears) and starts the device.
pub fn connect(socket: &Path, opts: impl Fn() -> SessionOptions) -> Session {
    let mut s = retry(socket, || Session::connect(socket, opts()));
    s.start().expect("starting the device");
    s
}

/// Polls `done` every 10 ms until it holds; panics with `what` after [`TIMEOUT`].
pub fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A daemon serving a device on a socket in a thread of this process; stopped on drop.
pub struct InProcess {
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
}

impl InProcess {
    /// Serves `device` on `socket` as `Daemon::from_args` does with default arguments.
    pub fn start<D: VirtioDevice + 'static>(device: D, socket: &Path) -> InProcess {
        let backend = DeviceBackend::new(device).expect("backend");
        let args = BackendArgs {
            socket_path: Some(socket.to_path_buf()),
            ..BackendArgs::default()
        };
        let mut daemon = Daemon::from_args(&args, backend).expect("daemon");
        let stop = daemon.stop_handle();
        let thread = std::thread::spawn(move || daemon.run().expect("daemon run"));
        InProcess {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            // A daemon that failed fails the test (unless it is failing already).
            if let Err(panic) = t.join() {
                if !std::thread::panicking() {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
}

/// A spawned daemon whose stderr lines arrive on a channel; killed on drop.
pub struct Spawned {
    /// The process.
    pub child: Child,
    lines: mpsc::Receiver<String>,
}

impl Spawned {
    /// Spawns `program` with `args` and `RUST_LOG=info`, stdin and stdout null.
    pub fn start(program: &str, args: &[&str]) -> Spawned {
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Spawned { child, lines }
    }

    /// Spawns `program --socket-path <socket>` and `args` as [`Spawned::start`] does.
    pub fn serving(program: &str, socket: &Path, args: &[&str]) -> Spawned {
        let socket = socket.to_str().expect("a UTF-8 socket path");
        let all: Vec<&str> = ["--socket-path", socket]
            .iter()
            .chain(args)
            .copied()
            .collect();
        Spawned::start(program, &all)
    }

    /// Spawns `program` with `args`, no log and every standard stream null.
    pub fn quiet<A: AsRef<std::ffi::OsStr>>(program: &str, args: &[A]) -> Spawned {
        let child = Command::new(program)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {program}: {e}"));
        let (_, lines) = mpsc::channel();
        Spawned { child, lines }
    }

    /// Waits for a log line containing `needle`; returns it.
    pub fn wait_line(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("no log line containing {needle:?}");
    }

    /// The next log line, if one comes within `wait`.
    pub fn next_line(&self, wait: Duration) -> Option<String> {
        self.lines.recv_timeout(wait).ok()
    }

    /// Sends `sig` to the process.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).expect("kill");
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    /// Waits (at most [`TIMEOUT`]) for the process to exit; returns its status.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "daemon did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `program --print-capabilities` prints (the vhost-user JSON QEMU reads), checked to
/// exit 0 and to be JSON.
pub fn capabilities(program: &str) -> serde_json::Value {
    let out = Command::new(program)
        .arg("--print-capabilities")
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} --print-capabilities failed"
    );
    serde_json::from_slice(&out.stdout).expect("capabilities JSON")
}

/// A back-end channel handler that counts CONFIG_CHANGE_MSG (clones share the count).
#[derive(Clone, Default)]
pub struct ConfigWatcher(pub std::sync::Arc<std::sync::Mutex<u32>>);

impl vhost_frontend::BackendRequestHandler for ConfigWatcher {
    fn config_change(&mut self) -> vhost_frontend::HandlerResult<()> {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) += 1;
        Ok(())
    }
}

/// The number of entries in directory `path` (`/proc/self/fd`, `/proc/self/task`…).
pub fn count_dir(path: &str) -> usize {
    std::fs::read_dir(path).map(|d| d.count()).unwrap_or(0)
}

/// The number of descriptors open in this process.
pub fn open_fds() -> usize {
    count_dir("/proc/self/fd")
}

/// Waits (at most [`TIMEOUT`]) until `count()` is `want`; returns the last count.
pub fn settle(want: usize, count: impl Fn() -> usize) -> usize {
    let deadline = Instant::now() + TIMEOUT;
    let mut n = count();
    while n != want && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        n = count();
    }
    n
}

/// The four `VirtioDevice` methods a test device spells like every other: its type, its
/// queue count and queue size (expressions, which may use `self` when the first argument
/// is `self`), no device features.
///
/// ```text
/// impl VirtioDevice for MyDevice {
///     vhost_test_support::device_basics!(self; device_type: 4, queues: self.queues, max_queue_size: 256);
///     fn process_queue(/* … */) { /* … */ }
/// }
/// ```
#[macro_export]
macro_rules! device_basics {
    ($s:ident; device_type: $t:expr, queues: $q:expr, max_queue_size: $m:expr $(,)?) => {
        fn device_type(&$s) -> u32 {
            $t
        }
        fn num_queues(&$s) -> usize {
            $q
        }
        fn max_queue_size(&$s) -> u16 {
            $m
        }
        fn features(&$s) -> u64 {
            0
        }
    };
}

/// xorshift64*: a small deterministic generator, seeded so that a failure replays.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n` (not 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Runs the benchmark `run` at queue depths 1 and 16 and prints each rate as
/// "`what`, QD`depth`: `rate` `unit`"; every rate is positive.
pub fn bench_at_depths_1_and_16(what: &str, unit: &str, run: impl Fn(usize) -> f64) {
    for depth in [1, 16] {
        let rate = run(depth);
        println!("{what}, QD{depth}: {rate:.0} {unit}");
        assert!(rate > 0.0);
    }
}
