//! Shared helpers of the integration tests: a scratch directory, an in-process daemon on a
//! temporary socket, and front-end sessions against it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost_backend::runtime::cli::BackendArgs;
use vhost_backend::runtime::{Daemon, DeviceBackend, StopHandle};
use vhost_device_rng::{RngConfig, RngDevice};
use vhost_frontend::{Session, SessionOptions};
use vm_memory::{Bytes, GuestAddress};

/// How long a test waits for one completion.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A scratch directory removed on drop, holding a socket and source files.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("vhost-rng-it-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch { dir }
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("rng.sock")
    }

    /// Writes `bytes` to a file in the directory; returns its path.
    pub fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A daemon serving `cfg` on `socket` in a thread of this process; stopped on drop.
pub struct InProcess {
    stop: StopHandle,
    thread: Option<JoinHandle<()>>,
}

impl InProcess {
    pub fn start(cfg: &RngConfig, socket: &Path) -> InProcess {
        let device = RngDevice::new(cfg).unwrap();
        let backend = DeviceBackend::new(device).unwrap();
        let args = BackendArgs {
            socket_path: Some(socket.to_path_buf()),
            ..BackendArgs::default()
        };
        let mut daemon = Daemon::from_args(&args, backend).unwrap();
        let stop = daemon.stop_handle();
        let thread = std::thread::spawn(move || daemon.run().unwrap());
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
            let _ = t.join();
        }
    }
}

thread_local! {
    /// Whether this thread's sessions drive packed virtqueues.
    static PACKED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `test` once per ring layout: split, then packed (VIRTIO_F_RING_PACKED acked).
pub fn for_each_layout(test: impl Fn()) {
    for packed in [false, true] {
        PACKED.with(|p| p.set(packed));
        eprintln!("-- packed rings: {packed}");
        test();
    }
    PACKED.with(|p| p.set(false));
}

/// Session options for rng: one queue of 256, 16 MiB of guest memory; packed rings inside
/// [`for_each_layout`]'s packed round.
pub fn options() -> SessionOptions {
    let mut o = SessionOptions::default();
    if PACKED.with(|p| p.get()) {
        o.mask_features &= !vhost_proto::virtio::bit(vhost_proto::virtio::RING_PACKED);
    }
    o
}

/// Connects (retrying while the socket appears) and starts the device.
pub fn connect(socket: &Path, opts: impl Fn() -> SessionOptions) -> Session {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match Session::connect(socket, opts()) {
            Ok(mut s) => {
                s.start().unwrap();
                return s;
            }
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("connecting to {}: {e}", socket.display()),
        }
    }
}

/// Reads `len` bytes of guest memory at `addr`.
pub fn read_guest(s: &Session, addr: GuestAddress, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    s.memory().mem().read_slice(&mut v, addr).unwrap();
    v
}

/// Sets `len` bytes of guest memory at `addr` to `byte`.
pub fn fill_guest(s: &Session, addr: GuestAddress, len: usize, byte: u8) {
    s.memory()
        .mem()
        .write_slice(&vec![byte; len], addr)
        .unwrap();
}
