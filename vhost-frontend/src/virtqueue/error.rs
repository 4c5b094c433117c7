//! Errors of the virtqueue driver.

use vm_memory::GuestMemoryError;

use crate::guest_memory;

/// Errors of the virtqueue driver.
///
/// `UsedIdOutOfRange`, `UsedIdNotInFlight`, `UsedLenTooLong` and `UsedIdxTooFar` are device
/// misbehaviour; the others are local.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The queue size is zero, not a power of two, or above
    /// [`MAX_QUEUE_SIZE`](super::MAX_QUEUE_SIZE).
    #[error("invalid queue size {size}: must be a power of two from 1 to 32768")]
    InvalidSize {
        /// The size asked for.
        size: u16,
    },
    /// The indirect table capacity exceeds the queue size ("A driver MUST NOT create a
    /// descriptor chain longer than the Queue Size of the device").
    #[error("indirect table capacity {max} exceeds the queue size {size}")]
    InvalidIndirectMax {
        /// The capacity asked for.
        max: u16,
        /// The queue size.
        size: u16,
    },
    /// Allocating the rings or indirect tables in guest memory failed.
    #[error("allocating virtqueue memory failed: {0}")]
    Alloc(#[source] guest_memory::Error),
    /// Reading or writing the rings failed.
    #[error("virtqueue memory access failed: {0}")]
    Memory(#[source] GuestMemoryError),
    /// A chain with no buffer was offered.
    #[error("a descriptor chain needs at least one buffer")]
    EmptyChain,
    /// The buffers add up to more than 2^32 - 1 bytes ("Drivers MUST NOT add a descriptor
    /// chain longer than 2^32 bytes in total").
    #[error("descriptor chain of {bytes} bytes is longer than 2^32 - 1")]
    ChainTooLong {
        /// Total length of the buffers.
        bytes: u64,
    },
    /// Not enough free descriptors for the chain.
    #[error("chain needs {needed} descriptors but only {free} are free")]
    NotEnoughDescriptors {
        /// Descriptors the chain needs.
        needed: usize,
        /// Descriptors free now.
        free: usize,
    },
    /// `add_indirect` on a driver built without indirect tables.
    #[error("this driver has no indirect tables (build it with `with_indirect`)")]
    IndirectUnavailable,
    /// More buffers than one indirect table holds.
    #[error("indirect chain of {len} buffers exceeds the table capacity {max}")]
    IndirectTooLong {
        /// Buffers offered.
        len: usize,
        /// Capacity of each indirect table.
        max: u16,
    },
    /// The device put a head id at or above the queue size in the used ring.
    #[error("used ring entry {used_idx}: id {id} is out of range for queue size {size}")]
    UsedIdOutOfRange {
        /// Index of the used ring entry.
        used_idx: u16,
        /// The id the device wrote.
        id: u32,
        /// The queue size.
        size: u16,
    },
    /// The device returned an id that is not the head of a chain in flight.
    #[error("used ring entry {used_idx}: id {id} is not the head of a chain in flight")]
    UsedIdNotInFlight {
        /// Index of the used ring entry.
        used_idx: u16,
        /// The id the device wrote.
        id: u16,
    },
    /// The device reported writing more bytes than the chain's device-writable buffers hold.
    #[error(
        "used ring entry {used_idx}: id {id} reports {len} bytes written, \
         chain has {writable} writable"
    )]
    UsedLenTooLong {
        /// Index of the used ring entry.
        used_idx: u16,
        /// The head id.
        id: u16,
        /// The length the device wrote.
        len: u32,
        /// Total length of the chain's device-writable buffers.
        writable: u64,
    },
    /// The device moved the used index past the number of chains in flight.
    #[error(
        "used idx {used_idx} is {ahead} entries past {last_used}, \
         but only {in_flight} chains are in flight"
    )]
    UsedIdxTooFar {
        /// The used index the device wrote.
        used_idx: u16,
        /// The next used entry the driver expected.
        last_used: u16,
        /// `used_idx - last_used`, wrapping.
        ahead: u16,
        /// Chains published and not yet used.
        in_flight: u16,
    },
    /// `start_at` while chains are added, published or in flight.
    #[error("the queue still has {in_flight} chains in flight and {pending} unpublished")]
    Busy {
        /// Chains published and not yet used.
        in_flight: u16,
        /// Chains added and not yet published.
        pending: u16,
    },
    /// Writing or reading an eventfd failed.
    #[error("eventfd access failed: {0}")]
    EventFd(#[source] std::io::Error),
    /// `poll` on the call eventfd failed.
    #[error("poll on the call eventfd failed: {0}")]
    Poll(#[source] nix::Error),
}
