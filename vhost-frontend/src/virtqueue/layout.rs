//! Split virtqueue memory layout (VIRTIO 1.2, 2.7 "Split Virtqueues"), all little-endian.
//!
//! ```text
//! struct virtq_desc  { le64 addr; le32 len; le16 flags; le16 next; };              // 16 bytes
//! struct virtq_avail { le16 flags; le16 idx; le16 ring[N]; le16 used_event; };     // 6 + 2N
//! struct virtq_used  { le16 flags; le16 idx; struct { le32 id; le32 len; } ring[N];
//!                      le16 avail_event; };                                         // 6 + 8N
//! ```
//! "Descriptor Table: 16, Available Ring: 2, Used Ring: 4" (2.7, alignment requirements).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{Immutable, IntoBytes, KnownLayout};

/// "This marks a buffer as continuing via the next field."
pub const VIRTQ_DESC_F_NEXT: u16 = 1;
/// "This marks a buffer as device write-only (otherwise device read-only)."
pub const VIRTQ_DESC_F_WRITE: u16 = 2;
/// "This means the buffer contains a list of buffer descriptors."
pub const VIRTQ_DESC_F_INDIRECT: u16 = 4;
/// Avail ring flag: the driver does not want a used-buffer notification (no EVENT_IDX).
pub const VRING_AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Used ring flag: the device does not want an available-buffer notification (no EVENT_IDX).
pub const VRING_USED_F_NO_NOTIFY: u16 = 1;
/// "Queue Size ... The maximum Queue Size value is 32768." ([`vhost_proto::MAX_QUEUE_SIZE`]).
pub use vhost_proto::MAX_QUEUE_SIZE;

/// Alignment of the descriptor table.
pub(super) const DESC_ALIGN: u64 = 16;
/// Alignment of the available ring.
pub(super) const AVAIL_ALIGN: u64 = 2;
/// Alignment of the used ring: a page of its own, as in the legacy layout (virtio 1.2,
/// 2.7.2), so that the pages the device writes (used ring) are apart from the ones it only
/// reads (descriptor table, available ring), which a dirty-log check tells apart.
pub(super) const USED_ALIGN: u64 = 4096;
/// Size of `virtq_desc`.
pub(super) const DESC_SIZE: u64 = 16;
/// Offset of `ring` in both rings (after `flags` and `idx`).
pub(super) const RING_HEADER: u64 = 4;
/// Offset of `idx` in both rings.
pub(super) const IDX_OFFSET: u64 = 2;
/// Size of one `virtq_avail.ring` entry.
pub(super) const AVAIL_ELEM_SIZE: u64 = 2;
/// Size of one `virtq_used.ring` entry.
pub(super) const USED_ELEM_SIZE: u64 = 8;

/// One descriptor as it sits in guest memory.
#[derive(Clone, Copy, Debug, IntoBytes, Immutable, KnownLayout)]
#[repr(C)]
pub(super) struct RawDesc {
    pub addr: U64,
    pub len: U32,
    pub flags: U16,
    pub next: U16,
}

const _: () = assert!(std::mem::size_of::<RawDesc>() == DESC_SIZE as usize);

impl RawDesc {
    pub fn new(addr: u64, len: u32, flags: u16, next: u16) -> Self {
        RawDesc {
            addr: U64::new(addr),
            len: U32::new(len),
            flags: U16::new(flags),
            next: U16::new(next),
        }
    }
}

/// Bytes of the descriptor table for `size` entries.
pub(super) fn desc_table_bytes(size: u16) -> u64 {
    DESC_SIZE * u64::from(size)
}

/// Bytes of the available ring for `size` entries, `used_event` included.
pub(super) fn avail_ring_bytes(size: u16) -> u64 {
    RING_HEADER + AVAIL_ELEM_SIZE * u64::from(size) + 2
}

/// Bytes of the used ring for `size` entries, `avail_event` included.
pub(super) fn used_ring_bytes(size: u16) -> u64 {
    RING_HEADER + USED_ELEM_SIZE * u64::from(size) + 2
}
