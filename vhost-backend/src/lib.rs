//! vhost-user back-end: write a virtio device, and this crate serves it to QEMU (or any
//! vhost-user front-end).
//!
//! # Writing a device
//!
//! A device implements [`runtime::VirtioDevice`]: what the guest sees (device type, queues,
//! features, configuration space) and
//! [`process_queue`](runtime::VirtioDevice::process_queue), where it takes requests off a
//! queue. [`runtime::DeviceBackend`] does everything else: guest memory, vrings, worker
//! threads, notifications, reset and reconnect. A complete entropy device (virtio-rng,
//! which QEMU's `vhost-user-rng-pci` drives), checked here against an in-process
//! front-end:
//!
//! ```
//! use std::fs::File;
//! use std::io::Read;
//!
//! use vhost_backend::runtime::{DeviceError, Processed, QueueContext, VirtioDevice};
//!
//! /// Fills each request's device-writable buffers with bytes from /dev/urandom.
//! struct Entropy {
//!     source: File,
//! }
//!
//! impl VirtioDevice for Entropy {
//!     fn device_type(&self) -> u32 {
//!         4 // entropy (virtio 1.2, 5.4)
//!     }
//!     fn num_queues(&self) -> usize {
//!         1
//!     }
//!     fn max_queue_size(&self) -> u16 {
//!         256
//!     }
//!     fn features(&self) -> u64 {
//!         0 // virtio-rng has no feature bits; the runtime adds its own (EVENT_IDX, ...)
//!     }
//!
//!     // Called by the queue's worker after each kick, never twice at once for a queue.
//!     fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
//!         let mut buf = [0u8; 4096];
//!         while let Some(req) = ctx.pop() {
//!             // The chain's buffers are walked and checked against guest memory already:
//!             // req.readable() / req.writable() list them, req.read_readable(..) and
//!             // req.write_writable(..) copy from and to them.
//!             let len = req.writable_len().min(buf.len() as u64) as usize;
//!             let written = match (&self.source).read_exact(&mut buf[..len]) {
//!                 Ok(()) if req.write_writable(0, &buf[..len]).is_ok() => len as u32,
//!                 _ => 0, // nothing to give: an empty answer
//!             };
//!             // Puts the chain on the used ring with the number of bytes written. Here at
//!             // once; a device with asynchronous I/O keeps `req` and completes it later,
//!             // from any thread.
//!             req.complete(written);
//!         }
//!         Ok(Processed::Drained) // took everything the ring offered
//!     }
//! }
//!
//! // A daemon serving it on a socket, with the command line every device shares:
//! // `--socket-path PATH` or `--fd N`, `--print-capabilities` (see `runtime::cli`).
//! use vhost_backend::runtime::cli::BackendArgs;
//!
//! fn serve(args: &BackendArgs) -> Result<(), Box<dyn std::error::Error>> {
//!     let device = Entropy { source: File::open("/dev/urandom")? };
//!     vhost_backend::runtime::daemon::run_device(args, device)?;
//!     Ok(())
//! }
//!
//! // The same device behind the server, over a socket pair, driven by the front-end of
//! // `vhost-frontend` the way QEMU drives it.
//! use std::time::Duration;
//! use vhost_backend::runtime::DeviceBackend;
//! use vhost_backend::BackendServer;
//! use vhost_frontend::{Frontend, Session, SessionOptions};
//! use vhost_transport::{Connection, FrontendChannel};
//!
//! let (ours, theirs) = Connection::<FrontendChannel>::pair()?;
//! let backend = DeviceBackend::new(Entropy { source: File::open("/dev/urandom")? })?;
//! let server = std::thread::spawn(move || BackendServer::new(theirs, backend)?.serve());
//!
//! let mut session = Session::new(Frontend::new(ours), SessionOptions::default())?;
//! session.start()?;
//! let buf = session.memory().alloc(64, 8)?;
//! let used = session.round_trip(0, &[(buf, 64, true)], Duration::from_secs(5))?;
//! assert_eq!(used.len, 64);
//! drop(session); // the front-end disconnects; the server returns
//! server.join().unwrap()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! What the runtime promises a device (the full story is in [`runtime`] and
//! [`runtime::request`]):
//!
//! - Work reaches the device through [`QueueContext::pop`](runtime::QueueContext::pop)
//!   (or [`serve_next`](runtime::QueueContext::serve_next), which serves a chain on the
//!   spot). A [`Request`](runtime::Request) keeps the guest memory it was popped from
//!   mapped until it is completed or dropped, even if the front-end replaces the memory
//!   table meanwhile.
//! - Any number of requests may be outstanding per queue, up to its size; completions from
//!   other threads wake the queue's worker, which publishes them in batches.
//! - A request dropped without [`complete`](runtime::Request::complete) is returned with
//!   length 0 and logged as a device bug. Stopping a queue waits for its outstanding requests
//!   (up to [`QUIESCE_TIMEOUT`](runtime::QUIESCE_TIMEOUT)).
//! - Bad chains are the device's to answer (blk: an error status); `Err` from
//!   `process_queue` means the queue itself is broken.
//! - Guest I/O goes through the request (`read_readable`, `write_writable`, `read_obj`) or,
//!   between a file and guest buffers, [`FileIo`](runtime::FileIo); devices need no
//!   `unsafe`.
//! - Optional: configuration space ([`config_size`](runtime::VirtioDevice::config_size),
//!   [`read_config`](runtime::VirtioDevice::read_config)), several queues per worker
//!   thread, the device's own descriptors in the worker's poll loop, migration state, the
//!   back-end → front-end channel
//!   ([`uses_backend_channel`](runtime::VirtioDevice::uses_backend_channel)).
//!
//! Tests: `runtime::testing::TestQueue` (feature `test-utils`) runs `process_queue` on one
//! ring in memory the test lays out, with no thread or socket; `vhost-frontend`'s `Session`
//! drives a whole device through the server as above. The `vhost-device-null` crate
//! (`vhost-devices/null`) is a complete small device with its daemon and tests to copy
//! from; `vhost-device-blk` and `vhost-device-rng` are the full ones.
//!
//! # The crates a device sees
//!
//! Guest memory types come from `vm-memory` 0.16 and the split ring from `virtio-queue`
//! 0.16; both are re-exported as [`runtime::vm_memory`] and [`runtime::virtio_queue`], so a
//! device needs no dependency of its own on them (and cannot get a second version by
//! mistake). [`Request::memory`](runtime::Request::memory) is a
//! `vm_memory::GuestMemoryMmap`, [`Buffer::addr`](runtime::Buffer::addr) a
//! `vm_memory::GuestAddress`, [`DeviceError::Queue`](runtime::DeviceError::Queue) wraps a
//! `virtio_queue::Error`.
//!
//! # Below the runtime
//!
//! The runtime is one implementation of [`Backend`]: one method per front-end request
//! (44; the optional ones answer "not supported" by default). [`BackendServer`] reads each
//! request from a connection, validates it against what was negotiated, calls the method
//! and sends the owed reply, with one written error policy ([`server`]). [`BackendClient`] is the
//! back-end → front-end channel. Implement [`Backend`] directly only for what the runtime
//! does not serve (dirty logging, IOTLB, ...).
//!
//! The trait, the server and the channel build on every platform the transport supports
//! (descriptors are fds on Unix, handles on Windows). The device [`runtime`] (guest
//! memory, eventfds, epoll) is Unix-only.
#![warn(missing_docs)]
// The recording test back-end is generated by munching every request row and its
// arguments (`test_utils.rs`), deeper than the default limit of 128; nothing else needs it.
#![cfg_attr(feature = "test-utils", recursion_limit = "256")]

mod backend;
mod backend_client;
#[cfg(unix)]
pub mod runtime;
pub mod server;
#[cfg(feature = "test-utils")]
pub mod test_utils;

pub use backend::{Backend, BackendError, BackendResult, Fault};
pub use backend_client::{BackendClient, ClientError, SharedNegotiation, DEFAULT_ACK_TIMEOUT};
pub use server::{BackendServer, ServerError, STALL_TIMEOUT};
