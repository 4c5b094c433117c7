//! The device runtime: everything between the protocol and a virtio device.
//!
//! A device implements [`VirtioDevice`] (queues, features, configuration space, and
//! [`process_queue`](VirtioDevice::process_queue)); [`DeviceBackend`] runs it behind the
//! [`Backend`](crate::Backend) trait:
//!
//! - **memory** ([`mem_table`]): SET_MEM_TABLE and ADD/REM_MEM_REG regions are mapped
//!   (shared, at their `mmap_offset`, each checked against its file's size first) and
//!   published atomically; workers switch to a new table at their next wake-up without
//!   stopping. Up to [`MAX_MEM_SLOTS`] regions.
//! - **rings**: one `virtio-queue` [`Queue`](virtio_queue::Queue) per vring. Ring addresses
//!   are translated from front-end virtual to guest-physical through the memory table. A
//!   ring starts at SET_VRING_KICK (its used index is then read from guest memory) and stops
//!   at GET_VRING_BASE, which waits (up to [`QUIESCE_TIMEOUT`]) for every outstanding request
//!   and answers the next available index. Enabled and started are independent; without `VHOST_USER_F_PROTOCOL_FEATURES`
//!   rings are enabled as soon as they start. When a ring becomes enabled the worker looks
//!   at its whole available ring, so a kick that came while it was disabled is not lost.
//!   SET_VRING_KICK with NOFD makes the worker poll that ring every
//!   [`POLL_INTERVAL_MS`](worker::POLL_INTERVAL_MS) milliseconds, even while other rings of
//!   the same worker are busy. Kick, call and error descriptors must be eventfds (anything
//!   else is refused with [`VringError::NotEventFd`]); they are made non-blocking, and a
//!   signal that finds the counter full counts as delivered.
//! - **enabled state**: once SET_FEATURES acks `VHOST_USER_F_PROTOCOL_FEATURES`, rings not
//!   started are disabled until SET_VRING_ENABLE, also when an earlier SET_FEATURES without
//!   that bit had enabled them.
//! - **requests** ([`request`]): [`QueueContext::pop`] gives the device a [`Request`] —
//!   buffers walked and checked, the memory map kept alive — that it completes at once or
//!   later from any thread; completions reach the used ring through the ring's worker in
//!   batches. Guest I/O with files goes through [`FileIo`] ([`guest_io`]), the one module
//!   that hands guest memory to the kernel; devices need no `unsafe`. Asynchronous file I/O
//!   goes through [`GuestUring`] ([`uring`], Linux): the ring owns each request until the
//!   kernel is done with its buffers and gives it back to the device to complete.
//! - **workers** ([`worker`]): one thread per queue, or per group of queues
//!   ([`VirtioDevice::worker_of`]), each sleeping in `epoll_wait` on its kick eventfds, a
//!   wake eventfd and the device's own descriptors. Per ring processed: one memory
//!   snapshot, one ring lock, the device drains the ring (again when re-enabling
//!   notifications shows chains published meanwhile), the completions are published with
//!   one `needs_notification` check (EVENT_IDX) and at most one call, sent once the ring
//!   lock is released. Threads exist while a ring of their group is started and are joined
//!   at GET_VRING_BASE of the last one, RESET_DEVICE, RESET_OWNER and disconnect.
//!   [`DeviceBackend::threadless`] runs the same workers without threads, for tests and
//!   fuzzing.
//! - **state transfer** ([`state`]): a device that
//!   [supports it](VirtioDevice::supports_state_transfer) gets DEVICE_STATE offered;
//!   SET_DEVICE_STATE_FD while every ring is stopped saves [`VirtioDevice::snapshot`] into,
//!   or loads [`VirtioDevice::restore`]'s bytes from, the front-end's descriptor on a helper
//!   thread, and CHECK_DEVICE_STATE reports the outcome.
//! - **inflight tracking** (`inflight`, INFLIGHT_SHMFD, for a device that
//!   [opts in](VirtioDevice::supports_inflight_tracking)): GET_INFLIGHT_FD creates the shared
//!   area (a sealed memfd in the spec's split-ring layout), SET_INFLIGHT_FD maps the one the
//!   front-end hands back (sealed against shrinking, or refused); each ring records its requests there when popped and when
//!   published, and a start resubmits, in the order they were taken, the requests a killed
//!   back-end left in flight, before any new available entry ([`InflightError`] for what
//!   is refused).
//! - **dirty-page logging** ([`dirty_log`]): VHOST_F_LOG_ALL and LOG_SHMFD are offered for
//!   every device; while the front-end logs (migration), every guest write of the back-end
//!   (request data, used ring, `avail_event`) marks its pages in the shared bitmap after the
//!   write, through [`Request::mark_written`] for request data.
//! - **daemon** ([`daemon`]) and **command line** ([`cli`]): QEMU's conventions for back-end
//!   programs (`--socket-path`, `--fd`, `--print-capabilities`), one front-end at a time,
//!   reset and accept again on disconnect, prompt stop on SIGTERM, SIGINT, SIGHUP
//!   and SIGQUIT.
//!
//! A device binary is then a few lines: its parser with [`BackendArgs`](cli::BackendArgs)
//! flattened in, and [`DeviceCli`](cli::DeviceCli) saying what to serve; the runtime's
//! [`cli::main`] does the rest (capabilities, logging, signals, default socket, daemon,
//! QEMU hint, error report):
//!
//! ```no_run
//! use clap::Parser;
//! use vhost_backend::runtime::cli::{
//!     self, BackendArgs, DaemonInfo, DeviceCli, Devices, DevicesResult, QemuHint, QEMU_USAGE,
//! };
//! # use vhost_backend::runtime::{VirtioDevice, QueueContext, Processed, DeviceError};
//! # struct Rng;
//! # impl VirtioDevice for Rng {
//! #     fn device_type(&self) -> u32 { 4 }
//! #     fn num_queues(&self) -> usize { 1 }
//! #     fn max_queue_size(&self) -> u16 { 256 }
//! #     fn features(&self) -> u64 { 0 }
//! #     fn process_queue(&self, _: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
//! #         Ok(Processed::Drained)
//! #     }
//! # }
//!
//! #[derive(Parser)]
//! #[command(after_long_help = QEMU_USAGE)]
//! struct Cli {
//!     #[command(flatten)]
//!     backend: BackendArgs,
//! }
//!
//! impl DeviceCli for Cli {
//!     type Device = Rng;
//!     // Listens on /tmp/vhost-user-rng.sock without --socket-path or --fd.
//!     const DAEMON: DaemonInfo = DaemonInfo::new("vhost-user-rng", "rng");
//!     fn backend_args(&mut self) -> &mut BackendArgs {
//!         &mut self.backend
//!     }
//!     fn devices(&mut self) -> DevicesResult<Rng> {
//!         let qemu = QemuHint::new("rng0", "vhost-user-rng-pci");
//!         let serving = "entropy from the kernel".to_owned();
//!         Ok(Devices::one(Rng, serving, qemu))
//!     }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     cli::main::<Cli>()
//! }
//! ```

pub mod cli;
pub mod daemon;
mod device;
pub mod dirty_log;
pub mod guest_io;
mod handler;
mod inflight;
mod inflight_packed;
pub mod log_limit;
pub mod mem_table;
pub mod multi;
mod notifier;
pub mod packed;
pub mod request;
pub mod state;
#[cfg(feature = "test-utils")]
pub mod testing;
#[cfg(target_os = "linux")]
pub mod uring;
mod vring;
pub mod worker;

pub use daemon::{Daemon, DaemonError, StopHandle};
pub use device::{
    device_type_name, read_config_bytes, DeviceError, DeviceFd, Processed, VirtioDevice,
};
pub use dirty_log::{DirtyLog, LogError, LOG_PAGE_SIZE};
pub use guest_io::{FileIo, GuestIoError, IoAlign};
pub use handler::{
    DeviceBackend, RuntimeError, MAX_QUEUES, QUIESCE_TIMEOUT, RUNTIME_FEATURES,
    RUNTIME_PROTOCOL_FEATURES, UNSUPPORTED_FEATURES,
};
pub use inflight::InflightError;
pub use log_limit::LogLimiter;
pub use mem_table::{MemError, MemoryPolicy, MemoryTable, MAX_MEM_SLOTS};
pub use multi::MultiDaemon;
pub use notifier::Notifier;
pub use request::{Buffer, ChainFault, QueueContext, Request, RequestOf, MAX_REQUEST_BUFFERS};
pub use state::{StateError, MAX_DEVICE_STATE, TRANSFER_TIMEOUT};
#[cfg(target_os = "linux")]
pub use uring::{FallocRange, GuestUring, Reaped, Refused};
/// The split-ring size rule (a power of two up to 32768, virtio 1.2, 2.7) and the largest
/// size of either layout: what every device's
/// [`max_queue_size`](VirtioDevice::max_queue_size) and queue-size option is checked against,
/// so the maximum suits a split ring. A packed ring may have any size up to 32768 (2.8).
pub use vhost_proto::limits::{valid_queue_size, MAX_QUEUE_SIZE as MAX_VIRTIO_QUEUE_SIZE};
pub use vring::{RingPart, VringError};

/// The `vm-memory` crate (0.16) the runtime is built on: [`Request::memory`] is a
/// [`GuestMemoryMmap`](vm_memory::GuestMemoryMmap), a [`Buffer`]'s address a
/// [`GuestAddress`](vm_memory::GuestAddress), and `testing::TestQueue` (feature
/// `test-utils`) takes guest memory of that type. Use it through this re-export to be sure
/// of the same version.
pub use vm_memory;

/// The `virtio-queue` crate (0.16) whose split-ring [`Queue`](virtio_queue::Queue) each vring
/// is; its [`Error`](virtio_queue::Error) is [`DeviceError::Queue`].
pub use virtio_queue;
