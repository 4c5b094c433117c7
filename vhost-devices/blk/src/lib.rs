//! A virtio-blk device (virtio 1.2, 5.2) served over vhost-user: an image file or block
//! device, read and written with `preadv`/`pwritev` straight into guest memory.
//!
//! [`BlkConfig`] says what to serve, [`BlkDevice::new`] opens it, and the device runs under
//! the `vhost-backend` runtime as a [`VirtioDevice`]. Each queue has its own worker and its
//! own scratch space (a [`FileIo`]), so a request makes one system call (two in writethrough
//! mode) straight between the image and guest memory, through the runtime's guest I/O.
//!
//! Embedding it in a program of one's own (the `vhost-user-blk` daemon is this plus its
//! command line):
//!
//! ```
//! use vhost_backend::runtime::cli::BackendArgs;
//! use vhost_backend::runtime::daemon::Daemon;
//! use vhost_backend::runtime::{DeviceBackend, VirtioDevice};
//! use vhost_device_blk::{BlkConfig, BlkDevice};
//!
//! let dir = std::env::temp_dir().join(format!("vhost-blk-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let image = dir.join("disk.img");
//! std::fs::File::create(&image)?.set_len(64 << 20)?; // a sparse 64 MiB image
//!
//! let mut cfg = BlkConfig::new(&image);
//! cfg.num_queues = 2;
//! cfg.read_only = true;
//! let device = BlkDevice::new(&cfg)?;
//! let mut capacity = [0u8; 8];
//! device.read_config(0, &mut capacity)?; // what the guest reads: 512-byte sectors
//! assert_eq!(u64::from_le_bytes(capacity), (64 << 20) / 512);
//!
//! // The runtime serves the device; the daemon accepts one front-end after another.
//! let backend = DeviceBackend::new(device)?;
//! let args = BackendArgs {
//!     socket_path: Some(dir.join("vub.sock")),
//!     ..BackendArgs::default()
//! };
//! let mut daemon = Daemon::from_args(&args, backend)?;
//! daemon.stop_handle().stop(); // from another thread or a signal; here at once
//! daemon.run()?; // returns once stopped
//! std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! With `O_DIRECT` ([`BlkConfig::direct`]) the device learns the host's alignment rules when
//! it opens the image, advertises a `blk_size` of at least the required offset alignment, and
//! copies through a per-queue aligned buffer of [`config::MAX_DATA_BYTES`] only the requests
//! whose guest buffers are not aligned (module `direct`).
//!
//! Limits: a read or write carries at most [`config::MAX_DATA_BYTES`] (32 MiB) of data;
//! `seg_max` is the queue size less two and `size_max` the largest power of two (at most
//! 1 MiB) that keeps `seg_max × size_max` within that limit ([`config::size_max`]).
//!
//! Requests the driver gets wrong — a short header, a missing or read-only status byte, a
//! buffer of the wrong direction, a range past the end of the disk, an address outside guest
//! memory, a chain too long — are answered with `VIRTIO_BLK_S_IOERR` (`VIRTIO_BLK_S_UNSUPP`
//! for unknown types and flags) and returned to the used ring; the queue goes on. A chain
//! with no writable byte for the status is returned with length 0.
#![warn(missing_docs)]

pub mod config;
pub mod direct;
mod disk;
pub mod engine;
pub mod export;
mod file_ops;
pub mod image;
pub mod request;
pub mod state;
#[cfg(test)]
mod tests;
mod uring;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use vhost_backend::runtime::{
    DeviceError, DeviceFd, FileIo, LogLimiter, Processed, QueueContext, RequestOf, VirtioDevice,
};
use zerocopy::IntoBytes;

pub use config::VirtioBlkConfig;
pub use disk::Disk;
pub use engine::Aio;
pub use request::RequestError;

use config::{features, SECTOR_SIZE, WRITEBACK_OFFSET};
use direct::{Bounce, DirectAlign};
use request::{MAX_DESCRIPTORS, VIRTIO_BLK_S_OK};

/// The virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Largest queue size the device accepts.
pub const MAX_QUEUE_SIZE: u16 = 1024;
/// Most queues the device offers (vring fd messages carry an 8-bit index).
pub const MAX_NUM_QUEUES: u16 = 256;
/// Serial (GET_ID) when none is given.
pub const DEFAULT_SERIAL: &str = "vhost-user-blk";

/// What to serve and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlkConfig {
    /// Image file or block device.
    pub path: PathBuf,
    /// Refuse writes, discards and write-zeroes; offer VIRTIO_BLK_F_RO.
    pub read_only: bool,
    /// Number of request queues (1 to [`MAX_NUM_QUEUES`]).
    pub num_queues: u16,
    /// Largest queue size (a power of two up to [`MAX_QUEUE_SIZE`]).
    pub queue_size: u16,
    /// Open the image with `O_DIRECT`. Guest buffers that do not suit the host's alignment are
    /// copied through an aligned buffer; `blk_size` is raised to the host's offset alignment.
    pub direct: bool,
    /// GET_ID answer; longer than 20 bytes is cut.
    pub serial: String,
    /// Logical block size in bytes (a power of two, 512 to 65536). `None`: 512, or with
    /// `direct` the host's direct I/O offset alignment when that is larger. A size given
    /// here that is smaller than that alignment is refused.
    pub logical_block_size: Option<u32>,
    /// Where requests run ([`Aio::Sync`] by default).
    pub aio: Aio,
}

impl BlkConfig {
    /// Defaults for `path`: read-write, one queue of 256, buffered I/O, 512-byte blocks.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        BlkConfig {
            path: path.into(),
            read_only: false,
            num_queues: 1,
            queue_size: 256,
            direct: false,
            serial: DEFAULT_SERIAL.to_owned(),
            logical_block_size: None,
            aio: Aio::Sync,
        }
    }
}

/// Why the device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Opening or sizing the image failed.
    #[error("opening {}: {source}{}", path.display(), open_hint(source))]
    Open {
        /// The image.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Starting the I/O threads of [`Aio::Threads`] failed.
    #[error("starting the I/O threads: {0}")]
    Threads(#[source] std::io::Error),
    /// Setting up the io_uring of [`Aio::IoUring`] failed.
    #[error("setting up io_uring: {0}")]
    Uring(#[source] std::io::Error),
    /// The image holds no whole 512-byte sector (an empty file, `/dev/null`, ...).
    #[error("{} holds no whole 512-byte sector ({bytes} bytes): nothing to serve", path.display())]
    Empty {
        /// The image.
        path: PathBuf,
        /// Its size in bytes.
        bytes: u64,
    },
    /// `num_queues` is 0 or over [`MAX_NUM_QUEUES`].
    #[error("number of queues {0} is not between 1 and {MAX_NUM_QUEUES}")]
    NumQueues(u16),
    /// `queue_size` is not a power of two up to [`MAX_QUEUE_SIZE`].
    #[error("queue size {0} is not a power of two between 1 and {MAX_QUEUE_SIZE}")]
    QueueSize(u16),
    /// `logical_block_size` is not a power of two between 512 and 65536.
    #[error("logical block size {0} is not a power of two between 512 and 65536")]
    BlockSize(u32),
    /// With `direct`, `logical_block_size` is smaller than the offset alignment the host
    /// requires of direct I/O on the image.
    #[error(
        "logical block size {block_size} is smaller than the {alignment}-byte alignment direct \
         I/O on {path} requires: use a logical block size of at least {alignment}, or \
         buffered I/O"
    )]
    BlockSizeBelowDirectAlign {
        /// The image.
        path: PathBuf,
        /// The logical block size asked for.
        block_size: u32,
        /// The host's direct I/O offset alignment.
        alignment: u32,
    },
}

/// The fix for an open error where there is an obvious one.
fn open_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            " (opened read-write: use --read-only to serve an image this user can only read)"
        }
        _ => "",
    }
}

/// Why a SET_CONFIG write was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigWriteError {
    /// Only the one-byte `writeback` field is writable.
    #[error(
        "configuration write at {offset:#x}+{len}: only writeback (offset 32, 1 byte) is writable"
    )]
    ReadOnlyField {
        /// Offset written.
        offset: u32,
        /// Length written.
        len: usize,
    },
    /// `writeback` takes 0 or 1.
    #[error("writeback value {0} is not 0 or 1")]
    BadWriteback(u8),
}

/// Scratch space of one queue or I/O thread, reused for every request.
#[derive(Debug)]
struct Scratch {
    io: FileIo,
    /// With `O_DIRECT`: the aligned copy buffer for unaligned guest buffers.
    bounce: Option<Bounce>,
}

impl Scratch {
    fn new(direct: Option<DirectAlign>) -> Scratch {
        Scratch {
            io: FileIo::with_capacity(MAX_DESCRIPTORS * 2),
            bounce: direct.map(|a| Bounce::new(a.memory)),
        }
    }
}

/// What executing a request needs, shared with the I/O threads.
#[derive(Debug)]
struct Core {
    disk: Disk,
    /// Rate limit for failed-request warnings (the guest sets the request rate).
    errors: LogLimiter,
    /// Makes the next request served panic (tests of what a panic leaves behind).
    #[cfg(test)]
    panic_next: std::sync::atomic::AtomicBool,
    /// When not 0: counted down by each request the io_uring engine starts, which panics
    /// on reaching 0 (tests of a panic outside `serve`, mid-batch).
    #[cfg(test)]
    panic_starting: std::sync::atomic::AtomicU32,
}

impl Core {
    /// Runs `serve` (which serves `req`: [`serve`](Self::serve)) with a panic caught: the
    /// request is then answered with `VIRTIO_BLK_S_IOERR` (used length 1, or 0 without a
    /// status byte) so that the driver never takes a status byte left from an earlier
    /// request in that buffer (success, perhaps) for this one's, and the thread goes on. The
    /// panic is logged through the failed requests' rate limit (a guest could trigger it
    /// again and again).
    fn caught(&self, req: &RequestOf<'_>, serve: impl FnOnce() -> u32) -> u32 {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(serve)).unwrap_or_else(|_| {
            self.errors.log(
                log::Level::Error,
                format_args!("serving a request panicked; answered VIRTIO_BLK_S_IOERR"),
            );
            match req.write_last_byte(request::VIRTIO_BLK_S_IOERR) {
                Ok(()) => 1,
                Err(_) => 0,
            }
        })
    }

    /// Serves one request; returns its used length (bytes written to the guest, status
    /// byte included; 0 when no status byte could be written).
    /// `header`: the request's header when the caller read it already.
    fn serve(
        &self,
        scratch: &mut Scratch,
        req: &RequestOf<'_>,
        header: Option<request::Header>,
        writethrough: bool,
    ) -> u32 {
        #[cfg(test)]
        if self.panic_next.swap(false, Ordering::Relaxed) {
            panic!("a panic serving a request, as a test asked");
        }
        // The status is the chain's last writable byte.
        if req.last_writable_byte().is_none() {
            log::debug!("chain without a status byte returned with length 0");
            return 0;
        }
        let result = self.disk.execute(
            req,
            header,
            &mut scratch.io,
            scratch.bounce.as_mut(),
            writethrough,
        );
        self.finish(req, result)
    }

    /// Writes the status `result` calls for into `req`'s status byte; returns the used
    /// length (`result`'s data bytes and the status byte; 0 when no status byte could be
    /// written).
    fn finish(&self, req: &RequestOf<'_>, result: Result<u32, RequestError>) -> u32 {
        let (status, written) = match result {
            Ok(n) => (VIRTIO_BLK_S_OK, n),
            Err(RequestError::Io(e)) => {
                self.errors
                    .warn(format_args!("request failed on the image: {e}"));
                (request::VIRTIO_BLK_S_IOERR, 0)
            }
            Err(e) => {
                log::debug!("request refused: {e}");
                (e.status(), 0)
            }
        };
        match req.write_last_byte(status) {
            Ok(()) => written.saturating_add(1),
            Err(e) => {
                log::debug!("status byte: {e}");
                0
            }
        }
    }
}

/// The virtio-blk device.
#[derive(Debug)]
pub struct BlkDevice {
    core: Arc<Core>,
    num_queues: u16,
    queue_size: u16,
    config: VirtioBlkConfig,
    writeback: AtomicU8,
    acked: AtomicU64,
    scratch: Box<[Mutex<Scratch>]>,
    /// With [`Aio::Threads`].
    pool: Option<engine::Pool>,
    /// With [`Aio::IoUring`]: one ring per queue.
    urings: Box<[Mutex<uring::UringQueue>]>,
}

impl BlkDevice {
    /// Checks `cfg` and opens its image.
    pub fn new(cfg: &BlkConfig) -> Result<Self, Error> {
        BlkDevice::open(cfg, None)
    }

    /// [`BlkDevice::new`], with the probed direct I/O alignment replaced by `align_override`
    /// when `cfg.direct` (tests use it to act as a stricter host).
    fn open(cfg: &BlkConfig, align_override: Option<DirectAlign>) -> Result<Self, Error> {
        if cfg.num_queues == 0 || cfg.num_queues > MAX_NUM_QUEUES {
            return Err(Error::NumQueues(cfg.num_queues));
        }
        if !cfg.queue_size.is_power_of_two() || cfg.queue_size > MAX_QUEUE_SIZE {
            return Err(Error::QueueSize(cfg.queue_size));
        }
        if let Some(bs) = cfg.logical_block_size {
            if !bs.is_power_of_two() || !(512..=65536).contains(&bs) {
                return Err(Error::BlockSize(bs));
            }
        }
        let mut disk =
            Disk::open(&cfg.path, cfg.read_only, cfg.direct, &cfg.serial).map_err(|source| {
                Error::Open {
                    path: cfg.path.clone(),
                    source,
                }
            })?;
        if disk.capacity() == 0 {
            return Err(Error::Empty {
                path: cfg.path.clone(),
                bytes: disk.bytes(),
            });
        }
        if disk.bytes() % SECTOR_SIZE != 0 {
            log::warn!(
                "{} is {} bytes, not a whole number of 512-byte sectors: the last {} bytes are \
                 not served",
                cfg.path.display(),
                disk.bytes(),
                disk.bytes() % SECTOR_SIZE
            );
        }
        if let (true, Some(align)) = (cfg.direct, align_override) {
            disk.set_direct_align(align);
        }
        let direct = disk.direct_align();
        let bs = match (cfg.logical_block_size, direct) {
            (Some(bs), Some(align)) if bs < align.offset => {
                return Err(Error::BlockSizeBelowDirectAlign {
                    path: cfg.path.clone(),
                    block_size: bs,
                    alignment: align.offset,
                });
            }
            (Some(bs), _) => bs,
            (None, Some(align)) => align.offset.max(SECTOR_SIZE as u32),
            (None, None) => SECTOR_SIZE as u32,
        };
        let config = config::config_space(disk.capacity(), bs, cfg.num_queues, cfg.queue_size);
        let scratch = (0..cfg.num_queues)
            .map(|_| Mutex::new(Scratch::new(direct)))
            .collect();
        let core = Arc::new(Core {
            disk,
            errors: LogLimiter::new("failed requests"),
            #[cfg(test)]
            panic_next: Default::default(),
            #[cfg(test)]
            panic_starting: Default::default(),
        });
        let urings = match cfg.aio {
            Aio::IoUring => (0..cfg.num_queues)
                .map(|_| {
                    uring::UringQueue::new(&core, cfg.queue_size, Scratch::new(direct))
                        .map(Mutex::new)
                })
                .collect::<Result<_, _>>()
                .map_err(Error::Uring)?,
            _ => Box::default(),
        };
        let pool = match cfg.aio {
            Aio::Sync | Aio::IoUring => None,
            Aio::Threads(n) => {
                let n = n.max(1);
                let pool = engine::Pool::start(n, Arc::clone(&core), || Scratch::new(direct))
                    .map_err(Error::Threads)?;
                Some(pool)
            }
        };
        Ok(BlkDevice {
            core,
            num_queues: cfg.num_queues,
            queue_size: cfg.queue_size,
            writeback: AtomicU8::new(config.writeback),
            config,
            acked: AtomicU64::new(0),
            scratch,
            pool,
            urings,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.core.disk.capacity()
    }

    /// Capacity in bytes.
    pub fn size_bytes(&self) -> u64 {
        self.core.disk.capacity() * SECTOR_SIZE
    }

    /// Number of queues.
    pub fn queue_count(&self) -> u16 {
        self.num_queues
    }

    /// Largest queue size.
    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// Whether the device is read-only.
    pub fn read_only(&self) -> bool {
        self.core.disk.read_only()
    }

    /// The virtio-blk feature bits offered (plus VERSION_1; ring features are the
    /// runtime's).
    pub fn device_features(&self) -> u64 {
        let mut bits = [
            features::SIZE_MAX,
            features::SEG_MAX,
            features::BLK_SIZE,
            features::FLUSH,
            features::TOPOLOGY,
            features::CONFIG_WCE,
            features::MQ,
        ]
        .iter()
        .fold(0u64, |acc, b| acc | 1 << b);
        if self.core.disk.read_only() {
            bits |= 1 << features::RO;
        } else {
            bits |= 1 << features::DISCARD | 1 << features::WRITE_ZEROES;
        }
        bits | 1 << vhost_proto::virtio::VERSION_1
    }

    /// Records the features the driver acked.
    pub fn ack_features(&self, acked: u64) {
        self.acked.store(acked, Ordering::Relaxed);
    }

    /// Logical block size advertised in `blk_size`.
    pub fn block_size(&self) -> u32 {
        self.config.blk_size.get()
    }

    /// The configuration space as the driver currently sees it: `writeback` is the cache
    /// mode in force ([`BlkDevice::writethrough`]), so it reads 0 once features without FLUSH
    /// are acked, whatever was written to it.
    pub fn config_space(&self) -> VirtioBlkConfig {
        let mut cfg = self.config;
        cfg.writeback = u8::from(!self.writethrough());
        cfg
    }

    /// Writes configuration space: only `writeback` (CONFIG_WCE), with 0 or 1. Writing 1
    /// without FLUSH acked is accepted but leaves the device in writethrough mode.
    pub fn write_config_space(&self, offset: u32, data: &[u8]) -> Result<(), ConfigWriteError> {
        match (offset as usize, data) {
            (WRITEBACK_OFFSET, &[v @ (0 | 1)]) => {
                self.writeback.store(v, Ordering::Relaxed);
                log::info!(
                    "cache mode set to {}",
                    if self.writethrough() {
                        "writethrough"
                    } else {
                        "writeback"
                    }
                );
                Ok(())
            }
            (WRITEBACK_OFFSET, &[v]) => Err(ConfigWriteError::BadWriteback(v)),
            _ => Err(ConfigWriteError::ReadOnlyField {
                offset,
                len: data.len(),
            }),
        }
    }

    /// Whether every write must be durable before it completes: the driver chose
    /// writethrough, or cannot flush (FLUSH not acked; before feature negotiation the cache
    /// is writeback).
    pub fn writethrough(&self) -> bool {
        let acked = self.acked.load(Ordering::Relaxed);
        let flush_acked = acked == 0 || acked & (1 << features::FLUSH) != 0;
        self.writeback.load(Ordering::Relaxed) == 0 || !flush_acked
    }

    /// Reads configuration space; `false` when the range is outside it.
    pub fn read_config_space(&self, offset: u32, out: &mut [u8]) -> bool {
        config::read_config(&self.config_space(), offset, out)
    }

    /// Size of the configuration space in bytes.
    pub fn config_len(&self) -> usize {
        self.config.as_bytes().len()
    }
}

impl VirtioDevice for BlkDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn num_queues(&self) -> usize {
        usize::from(self.num_queues)
    }

    fn max_queue_size(&self) -> u16 {
        self.queue_size
    }

    fn features(&self) -> u64 {
        self.device_features()
    }

    fn config_size(&self) -> usize {
        self.config_len()
    }

    fn read_config(&self, offset: u32, data: &mut [u8]) -> Result<(), DeviceError> {
        vhost_backend::runtime::read_config_bytes(self.config_space().as_bytes(), offset, data)
    }

    fn write_config(&self, offset: u32, data: &[u8]) -> Result<(), DeviceError> {
        self.write_config_space(offset, data)
            .map_err(|e| DeviceError::Other(Box::new(e)))
    }

    fn set_acked_features(&self, features: u64) {
        self.ack_features(features);
    }

    // Block reads and writes can be executed again: a request a killed daemon left in
    // flight is resubmitted by the next one (INFLIGHT_SHMFD).
    fn supports_inflight_tracking(&self) -> bool {
        true
    }

    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        let Some(slot) = self.scratch.get(usize::from(ctx.index())) else {
            return Ok(Processed::Drained);
        };
        let writethrough = self.writethrough();
        if let Some(q) = self.urings.get(usize::from(ctx.index())) {
            // A panic here must not end the queue's worker, which reaps the ring: the
            // requests it held are returned with length 0 as they are dropped (a panic
            // serving one, in `Core::serve`, is answered IOERR before that), and what was
            // queued before it is still submitted.
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let mut q = q.lock().unwrap_or_else(PoisonError::into_inner);
                while let Some(req) = ctx.pop() {
                    q.start(&self.core, req, writethrough);
                }
                q.submit();
                // Requests the kernel served during the submission (the page cache)
                // complete now, with this batch.
                q.reap_ready(&self.core);
            }));
            if served.is_err() {
                // Through the failed requests' rate limit, as a panic serving one: a guest
                // may be able to repeat it batch after batch (the standard panic hook still
                // prints each panic itself).
                self.core.errors.log(
                    log::Level::Error,
                    format_args!("queue {}: a panic starting requests", ctx.index()),
                );
                let submitted = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    q.lock().unwrap_or_else(PoisonError::into_inner).submit();
                }));
                if submitted.is_err() {
                    self.core.errors.log(
                        log::Level::Error,
                        format_args!("queue {}: a panic submitting requests", ctx.index()),
                    );
                }
            }
            return Ok(Processed::Drained);
        }
        if let Some(pool) = &self.pool {
            while let Some(req) = ctx.pop() {
                if let Err(req) = pool.submit(req, writethrough) {
                    let mut scratch = slot.lock().unwrap_or_else(PoisonError::into_inner);
                    let len = self.serve_caught(&mut scratch, &req, writethrough);
                    req.complete(len);
                }
            }
            return Ok(Processed::Drained);
        }
        // Served on the spot: each request borrows the ring and memory from the worker and
        // is completed under the ring lock it holds (no reference count or lock per request).
        // A panic serving one answers it VIRTIO_BLK_S_IOERR and the loop goes on, as on an
        // I/O thread or the io_uring engine.
        let mut scratch = slot.lock().unwrap_or_else(PoisonError::into_inner);
        while ctx.serve_next(|req| self.serve_caught(&mut scratch, req, writethrough)) {}
        Ok(Processed::Drained)
    }

    fn worker_fds(&self, worker: usize) -> Vec<DeviceFd> {
        // Worker `w` serves queue `w` (the default `worker_of`) and watches its ring.
        match self.urings.get(worker) {
            Some(q) => vec![DeviceFd {
                fd: q.lock().unwrap_or_else(PoisonError::into_inner).eventfd(),
                token: worker as u32,
            }],
            None => Vec::new(),
        }
    }

    fn handle_event(&self, worker: usize, token: u32) -> Result<bool, DeviceError> {
        if let Some(q) = self.urings.get(token as usize) {
            debug_assert_eq!(worker, token as usize);
            // As in `process_queue`: a panic completing requests leaves the worker reaping.
            let reaped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                q.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .reap(&self.core);
            }));
            if reaped.is_err() {
                self.core.errors.log(
                    log::Level::Error,
                    format_args!("queue {token}: a panic completing requests"),
                );
            }
        }
        Ok(false)
    }

    fn reset(&self) {
        for q in self.urings.iter() {
            q.lock().unwrap_or_else(PoisonError::into_inner).reset();
        }
        self.writeback
            .store(self.config.writeback, Ordering::Relaxed);
        self.acked.store(0, Ordering::Relaxed);
        self.core.errors.reset();
    }

    fn supports_state_transfer(&self) -> bool {
        true
    }

    /// The cache mode the driver chose, and the disk it was chosen for ([`state`]).
    fn snapshot(&self) -> Result<Vec<u8>, DeviceError> {
        let mut s = self.disk_state();
        s.writeback = self.writeback.load(Ordering::Relaxed);
        Ok(s.encode())
    }

    fn restore(&self, bytes: &[u8]) -> Result<(), DeviceError> {
        let saved = state::BlkState::decode(bytes).map_err(|e| DeviceError::Other(e.into()))?;
        self.disk_state()
            .check_disk(&saved)
            .map_err(|e| DeviceError::Other(e.into()))?;
        self.writeback.store(saved.writeback, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for BlkDevice {
    fn drop(&mut self) {
        // The queues' rings are dropped in turn, each waiting for its operations in flight:
        // one deadline for all bounds the whole at one timeout.
        uring::set_drop_deadline(&self.urings);
    }
}

impl BlkDevice {
    /// Serves `req` on this thread; a panic serving it answers VIRTIO_BLK_S_IOERR
    /// ([`Core::caught`]), as on an I/O thread or the io_uring engine, and the caller goes
    /// on.
    fn serve_caught(&self, scratch: &mut Scratch, req: &RequestOf<'_>, writethrough: bool) -> u32 {
        let core = &self.core;
        core.caught(req, || core.serve(scratch, req, None, writethrough))
    }

    /// This disk as migration state describes it (`writeback` as configured).
    fn disk_state(&self) -> state::BlkState {
        state::BlkState {
            writeback: self.config.writeback,
            read_only: self.device_features() & (1 << features::RO) != 0,
            capacity: self.capacity(),
            block_size: self.config.blk_size.get(),
            num_queues: self.config.num_queues.get(),
        }
    }
}
