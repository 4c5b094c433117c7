//! A virtio-vsock (device id 19) back-end for the vhost-user device runtime, bridging guest
//! `AF_VSOCK` stream sockets to host Unix sockets the hybrid-vsock way (Firecracker, Cloud
//! Hypervisor and rust-vmm's vhost-device-vsock use the same convention):
//!
//! - **host → guest**: a host process connects to the Unix socket at
//!   [`VsockConfig::uds_path`], writes `CONNECT <port>\n`, and once the guest accepts gets
//!   `OK <host-port>\n`; from then on the stream is the guest socket's peer (guest port
//!   `<port>`, host port `<host-port>`, a local port from 2^30 on). A guest that refuses
//!   (RST), or does not answer within [`HOST_CONNECT_WAIT`], closes the stream without an
//!   answer. A host process has [`HOST_HANDSHAKE_WAIT`] to send its line, and at most
//!   [`MAX_HANDSHAKES`] may be sending theirs at once, apart from the [`MAX_CONNECTIONS`]
//!   connections.
//! - **guest → host**: a guest connection to CID 2 (the host), port `P`, is bridged to the
//!   Unix socket `<uds-path>_P`; nobody listening there means a reset (a listener whose
//!   backlog is full is tried again for 2 s first).
//!
//! Queues: rx (0, packets to the guest), tx (1, packets from the guest), event (2, a
//! transport reset after the device lost its connections: a back-end restart, a front-end
//! reconnect). The configuration space holds the guest's CID (8 bytes, little-endian).
//! Stream sockets only: SEQPACKET (feature bit 1) is not offered.
//!
//! Flow control follows virtio 1.2, 5.10.6.3 in both directions: the device never sends a
//! guest socket more than its announced credit, reads a host stream only as far as that
//! credit goes, and buffers at most [`BUF_ALLOC`] bytes per connection for a host stream
//! that does not keep up (a guest that sends past that credit is reset). Hostile packets —
//! a foreign source CID (dropped), another destination CID or socket type, an unknown
//! operation, data on an unknown connection, a length beyond the chain or over 64 KiB, a
//! credit that cannot be true — get a reset or are dropped; nothing blocks, so a slow or
//! vanished host peer never holds up other connections.
//!
//! ```no_run
//! use vhost_backend::runtime::DeviceBackend;
//! use vhost_device_vsock::{VsockConfig, VsockDevice};
//!
//! let config = VsockConfig::new(3, "/tmp/vm3.vsock");
//! let backend = DeviceBackend::new(VsockDevice::new(&config)?)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bridge;
mod conn;
mod host;
pub mod packet;

use std::os::fd::RawFd;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use vhost_backend::runtime::{
    read_config_bytes, DeviceError, DeviceFd, Processed, QueueContext, VirtioDevice,
};

pub use bridge::{HOST_CONNECT_WAIT, HOST_HANDSHAKE_WAIT, MAX_CONNECTIONS, MAX_HANDSHAKES};
pub use conn::BUF_ALLOC;

use bridge::Bridge;
use packet::EVENT_TRANSPORT_RESET;

/// The virtio device id of a socket device.
pub const VIRTIO_ID_VSOCK: u32 = 19;

/// Default and largest queue size the device offers.
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// The rx queue (packets to the guest).
pub const RX_QUEUE: u16 = 0;
/// The tx queue (packets from the guest).
pub const TX_QUEUE: u16 = 1;
/// The event queue.
pub const EVENT_QUEUE: u16 = 2;

/// Token of the device's epoll set among its worker's descriptors.
const EPOLL_TOKEN: u32 = 1;

/// What the device serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's CID (3 or more, below 2^32 - 1).
    pub guest_cid: u64,
    /// The Unix socket host processes connect to; guest connections to host port `P` go
    /// to `<uds_path>_P`.
    pub uds_path: PathBuf,
    /// Largest queue size the driver may choose (a power of two, at most 32768).
    pub queue_size: u16,
}

impl VsockConfig {
    /// A configuration for guest `guest_cid` with host sockets at `uds_path`.
    pub fn new(guest_cid: u64, uds_path: impl Into<PathBuf>) -> VsockConfig {
        VsockConfig {
            guest_cid,
            uds_path: uds_path.into(),
            queue_size: MAX_QUEUE_SIZE,
        }
    }
}

/// Why a device could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VsockError {
    /// The CID is reserved (0, 1, 2, 2^32 - 1) or does not fit 32 bits.
    #[error("invalid guest CID {0}: 3 to 4294967294 is needed")]
    InvalidCid(u64),
    /// The queue size is not a power of two between 1 and 32768.
    #[error("invalid queue size {0}: a power of two between 1 and 32768 is needed")]
    InvalidQueueSize(u16),
    /// Something other than a socket is at the Unix socket path.
    #[error("{} exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    /// Listening on the Unix socket path failed.
    #[error("listening on {}: {source}", path.display())]
    Listen {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The device's epoll set or eventfd could not be created.
    #[error("setting up the host side: {0}")]
    Setup(#[source] std::io::Error),
}

/// The virtio-vsock device. See the [crate docs](crate).
pub struct VsockDevice {
    guest_cid: u64,
    queue_size: u16,
    epoll_fd: RawFd,
    bridge: Mutex<Bridge>,
}

impl std::fmt::Debug for VsockDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VsockDevice")
            .field("guest_cid", &self.guest_cid)
            .finish_non_exhaustive()
    }
}

impl VsockDevice {
    /// Listens on `config.uds_path` (a stale socket file there is replaced) and sets up the
    /// host side.
    pub fn new(config: &VsockConfig) -> Result<Self, VsockError> {
        let path = &config.uds_path;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(VsockError::NotASocket(path.clone()));
            }
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(|source| VsockError::Listen {
            path: path.clone(),
            source,
        })?;
        Self::with_listener(config, listener)
    }

    /// Like [`new`](Self::new), with a listening socket the caller made (socket activation,
    /// tests).
    pub fn with_listener(config: &VsockConfig, listener: UnixListener) -> Result<Self, VsockError> {
        let cid = config.guest_cid;
        if cid <= packet::HOST_CID || cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(cid));
        }
        let qs = config.queue_size;
        if !vhost_backend::runtime::valid_queue_size(qs) {
            return Err(VsockError::InvalidQueueSize(qs));
        }
        let bridge =
            Bridge::new(cid, config.uds_path.clone(), listener).map_err(VsockError::Setup)?;
        Ok(VsockDevice {
            guest_cid: cid,
            queue_size: qs,
            epoll_fd: bridge.epoll_fd(),
            bridge: Mutex::new(bridge),
        })
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.bridge().connections()
    }

    /// Entries in the list of connections that owe the guest a packet (for tests).
    #[doc(hidden)]
    pub fn debug_ready_len(&self) -> usize {
        self.bridge().ready_len()
    }

    /// Host handshakes in progress: host processes that connected and have not sent their
    /// whole `CONNECT` line yet (for tests).
    #[doc(hidden)]
    pub fn debug_handshakes(&self) -> usize {
        self.bridge().handshakes()
    }

    fn bridge(&self) -> MutexGuard<'_, Bridge> {
        self.bridge.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl VirtioDevice for VsockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn num_queues(&self) -> usize {
        3
    }

    fn max_queue_size(&self) -> u16 {
        self.queue_size
    }

    fn features(&self) -> u64 {
        // Stream sockets are implied when no socket-type bit is negotiated.
        0
    }

    fn config_size(&self) -> usize {
        8
    }

    fn read_config(&self, offset: u32, data: &mut [u8]) -> Result<(), DeviceError> {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data)
    }

    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        let mut bridge = self.bridge();
        match ctx.index() {
            RX_QUEUE => Ok(bridge.fill_rx(ctx)),
            TX_QUEUE => {
                while let Some(req) = ctx.pop() {
                    bridge.handle_tx(&req);
                    req.complete(0);
                }
                if bridge.take_rx_new() {
                    bridge.wake();
                }
                Ok(Processed::Drained)
            }
            _ => {
                while bridge.event_reset {
                    let Some(req) = ctx.pop() else {
                        return Ok(Processed::Drained);
                    };
                    if req.writable_len() >= 4
                        && req
                            .write_writable(0, &EVENT_TRANSPORT_RESET.to_le_bytes())
                            .is_ok()
                    {
                        bridge.event_reset = false;
                        req.complete(4);
                    } else {
                        req.complete(0);
                    }
                }
                // Event buffers stay in the ring until there is an event.
                Ok(Processed::Paused)
            }
        }
    }

    fn worker_of(&self, _queue: usize) -> usize {
        // One worker: the queues share the connection table.
        0
    }

    fn worker_fds(&self, _worker: usize) -> Vec<DeviceFd> {
        vec![DeviceFd {
            fd: self.epoll_fd,
            token: EPOLL_TOKEN,
        }]
    }

    fn handle_event(&self, _worker: usize, _token: u32) -> Result<bool, DeviceError> {
        Ok(self.bridge().handle_events()?)
    }

    fn reset(&self) {
        self.bridge().reset();
    }
}
