//! The shared inflight region of GET/SET_INFLIGHT_FD (spec "Inflight I/O tracking").
//!
//! The region is one queue region after another, each holding a header and one entry per
//! descriptor. Only the split-ring layout is described here; packed rings have their own
//! (larger) layout in the same section of the spec and would get their own types next to
//! these.
//!
//! Sizes and the spacing between queue regions follow QEMU's libvhost-user (and DPDK), so a
//! region one of them created can be handed to another back-end: each queue region takes
//! `16 * queue_size + 2` bytes rounded up to [`INFLIGHT_ALIGNMENT`].

use core::mem::{offset_of, size_of};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The version a back-end writes into a queue region it has initialised; 0 means "never
/// initialised" (spec: "Zero value indicates an uninitialized buffer").
pub const INFLIGHT_VERSION: u16 = 1;

/// Alignment of each queue region inside the inflight area (libvhost-user's
/// `INFLIGHT_ALIGNMENT`).
pub const INFLIGHT_ALIGNMENT: u64 = 64;

/// Header of one split-ring queue region (spec `QueueRegionSplit` without its array).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct InflightSplitHeader {
    /// Feature flags of the region; 0.
    pub features: u64,
    /// [`INFLIGHT_VERSION`] once initialised, 0 before.
    pub version: u16,
    /// Number of descriptor entries (the queue size).
    pub desc_num: u16,
    /// Head of the list of the last batch of used descriptors (linked through `next`).
    pub last_batch_head: u16,
    /// The used ring's `idx` as of the last completed batch.
    pub used_idx: u16,
}
const _: () = assert!(size_of::<InflightSplitHeader>() == 16);

/// One descriptor entry of a split-ring queue region (spec `DescStateSplit`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct InflightDescSplit {
    /// 1 while the chain with this head is in flight (head descriptors only).
    pub inflight: u8,
    /// Padding.
    pub padding: [u8; 5],
    /// Next entry of the last-batch list.
    pub next: u16,
    /// Order in which the head was taken from the available ring.
    pub counter: u64,
}
const _: () = assert!(size_of::<InflightDescSplit>() == 16);

/// Byte offsets of the fields, for accessing them one at a time in shared memory.
pub mod split_offsets {
    use super::*;

    /// [`InflightSplitHeader::version`].
    pub const VERSION: u64 = offset_of!(InflightSplitHeader, version) as u64;
    /// [`InflightSplitHeader::desc_num`].
    pub const DESC_NUM: u64 = offset_of!(InflightSplitHeader, desc_num) as u64;
    /// [`InflightSplitHeader::last_batch_head`].
    pub const LAST_BATCH_HEAD: u64 = offset_of!(InflightSplitHeader, last_batch_head) as u64;
    /// [`InflightSplitHeader::used_idx`].
    pub const USED_IDX: u64 = offset_of!(InflightSplitHeader, used_idx) as u64;
    /// Where the descriptor entries start.
    pub const DESCS: u64 = size_of::<InflightSplitHeader>() as u64;
    /// Size of one descriptor entry.
    pub const DESC_SIZE: u64 = size_of::<InflightDescSplit>() as u64;
    /// [`InflightDescSplit::inflight`].
    pub const DESC_INFLIGHT: u64 = offset_of!(InflightDescSplit, inflight) as u64;
    /// [`InflightDescSplit::next`].
    pub const DESC_NEXT: u64 = offset_of!(InflightDescSplit, next) as u64;
    /// [`InflightDescSplit::counter`].
    pub const DESC_COUNTER: u64 = offset_of!(InflightDescSplit, counter) as u64;
}

/// Bytes one split-ring queue region of `queue_size` descriptors takes in the area,
/// padding included (libvhost-user's `vu_inflight_queue_size`).
pub const fn split_queue_region_size(queue_size: u16) -> u64 {
    let raw = size_of::<InflightDescSplit>() as u64 * queue_size as u64 + 2;
    raw.div_ceil(INFLIGHT_ALIGNMENT) * INFLIGHT_ALIGNMENT
}

/// Bytes the whole area takes for `num_queues` split rings of `queue_size` descriptors.
pub const fn split_area_size(num_queues: u16, queue_size: u16) -> u64 {
    split_queue_region_size(queue_size) * num_queues as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_regions_are_spaced_as_libvhost_user_spaces_them() {
        // ALIGN_UP(16 * n + 2, 64).
        assert_eq!(split_queue_region_size(1), 64);
        assert_eq!(split_queue_region_size(3), 64);
        assert_eq!(split_queue_region_size(4), 128);
        assert_eq!(split_queue_region_size(128), 2112);
        assert_eq!(split_queue_region_size(256), 4160);
        assert_eq!(split_queue_region_size(32768), 524_352);
        assert_eq!(split_area_size(2, 128), 4224);
        // The header and every entry always fit.
        for n in [1u16, 2, 3, 4, 5, 63, 64, 127, 128, 1024, 32768] {
            assert!(split_queue_region_size(n) >= 16 + 16 * u64::from(n), "{n}");
        }
    }

    #[test]
    fn field_offsets_match_the_spec_layout() {
        assert_eq!(split_offsets::VERSION, 8);
        assert_eq!(split_offsets::DESC_NUM, 10);
        assert_eq!(split_offsets::LAST_BATCH_HEAD, 12);
        assert_eq!(split_offsets::USED_IDX, 14);
        assert_eq!(split_offsets::DESCS, 16);
        assert_eq!(split_offsets::DESC_INFLIGHT, 0);
        assert_eq!(split_offsets::DESC_NEXT, 6);
        assert_eq!(split_offsets::DESC_COUNTER, 8);
    }
}
