//! Request helpers for virtio devices, on top of a [`Session`](crate::Session): the request
//! layouts and a few ready-made operations, for tests, benchmarks and the probe tool.

pub mod blk;
pub mod rng;
pub mod vsock;

use crate::session::SessionError;

/// Why a device request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The session (control plane, queue or memory) failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Reading or writing a request buffer in guest memory failed.
    #[error("guest memory access: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The device completed the request with a non-OK status.
    #[error("request type {kind} completed with status {status}")]
    Status {
        /// The request type.
        kind: u32,
        /// The status byte (0xff: the device never wrote it).
        status: u8,
    },
    /// The data does not fit the buffers set up for the requests.
    #[error("{len} bytes do not fit a {max}-byte request buffer")]
    TooLong {
        /// Bytes asked for.
        len: usize,
        /// Buffer size.
        max: u32,
    },
    /// Every request slot is in flight.
    #[error("all {depth} request slots are in flight")]
    NoFreeSlot {
        /// Number of slots.
        depth: usize,
    },
    /// The device completed a chain this helper did not submit.
    #[error("completion for unknown head {head}")]
    UnknownCompletion {
        /// The head id.
        head: u16,
    },
}

/// Result of a device request.
pub type Result<T> = std::result::Result<T, DeviceError>;
