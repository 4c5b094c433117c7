//! The virtio-blk configuration space (virtio 1.2, 5.2.4) and the feature bits this device
//! offers (5.2.3).
//!
//! The layout is a `#[repr(C)]` zerocopy struct of little-endian fields, pinned by a
//! compile-time size assertion; the front-end reads it with GET_CONFIG and may write the
//! `writeback` byte with SET_CONFIG (VIRTIO_BLK_F_CONFIG_WCE).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Feature bits of virtio-blk (virtio 1.2, 5.2.3) that this device may offer.
pub mod features {
    /// `VIRTIO_BLK_F_SIZE_MAX`: `size_max` is valid.
    pub const SIZE_MAX: u32 = 1;
    /// `VIRTIO_BLK_F_SEG_MAX`: `seg_max` is valid.
    pub const SEG_MAX: u32 = 2;
    /// `VIRTIO_BLK_F_GEOMETRY`: `geometry` is valid (not offered).
    pub const GEOMETRY: u32 = 4;
    /// `VIRTIO_BLK_F_RO`: the device is read-only.
    pub const RO: u32 = 5;
    /// `VIRTIO_BLK_F_BLK_SIZE`: `blk_size` is valid.
    pub const BLK_SIZE: u32 = 6;
    /// `VIRTIO_BLK_F_FLUSH`: the FLUSH command exists.
    pub const FLUSH: u32 = 9;
    /// `VIRTIO_BLK_F_TOPOLOGY`: `topology` is valid.
    pub const TOPOLOGY: u32 = 10;
    /// `VIRTIO_BLK_F_CONFIG_WCE`: `writeback` is valid and writable.
    pub const CONFIG_WCE: u32 = 11;
    /// `VIRTIO_BLK_F_MQ`: `num_queues` is valid.
    pub const MQ: u32 = 12;
    /// `VIRTIO_BLK_F_DISCARD`: the DISCARD command exists; its limits are valid.
    pub const DISCARD: u32 = 13;
    /// `VIRTIO_BLK_F_WRITE_ZEROES`: the WRITE_ZEROES command exists; its limits are valid.
    pub const WRITE_ZEROES: u32 = 14;
}

/// Bytes per virtio-blk sector: `sector` and `capacity` always count 512-byte units.
pub const SECTOR_SIZE: u64 = 512;
/// Largest `size_max`: the largest single data buffer the driver should use.
pub const SIZE_MAX: u32 = 1 << 20;
/// Smallest `size_max` offered: one 4 KiB page (Linux refuses smaller segment sizes).
pub const MIN_SIZE_MAX: u32 = 4096;
/// Most data bytes one read or write request may carry: 32 MiB. The advertised
/// `seg_max` × `size_max` never exceeds it (see [`size_max`]), and with `O_DIRECT` each queue
/// keeps a copy buffer of this size.
pub const MAX_DATA_BYTES: u64 = 32 << 20;
/// Most segments one DISCARD or WRITE_ZEROES request may carry.
pub const MAX_RANGE_SEGMENTS: u32 = 32;
/// Most sectors one DISCARD or WRITE_ZEROES segment may cover (2 GiB).
pub const MAX_RANGE_SECTORS: u32 = 1 << 22;
/// Offset of `writeback` in the configuration space: the only byte SET_CONFIG may change.
pub const WRITEBACK_OFFSET: usize = 32;

/// `struct virtio_blk_geometry`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Geometry {
    /// Cylinders.
    pub cylinders: U16,
    /// Heads.
    pub heads: u8,
    /// Sectors per track.
    pub sectors: u8,
}

/// `struct virtio_blk_topology`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Topology {
    /// Exponent for physical blocks per logical block.
    pub physical_block_exp: u8,
    /// Alignment offset, in logical blocks.
    pub alignment_offset: u8,
    /// Suggested minimum I/O size, in logical blocks.
    pub min_io_size: U16,
    /// Optimal (suggested maximum) I/O size, in logical blocks.
    pub opt_io_size: U32,
}

/// `struct virtio_blk_config` up to and including `write_zeroes_may_unmap` and its padding
/// (the secure-erase and zoned parts are not offered).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VirtioBlkConfig {
    /// Capacity in 512-byte sectors.
    pub capacity: U64,
    /// Largest size of one data buffer (SIZE_MAX).
    pub size_max: U32,
    /// Most data buffers in one request (SEG_MAX).
    pub seg_max: U32,
    /// Legacy geometry (GEOMETRY, not offered).
    pub geometry: Geometry,
    /// Logical block size in bytes (BLK_SIZE).
    pub blk_size: U32,
    /// I/O topology (TOPOLOGY).
    pub topology: Topology,
    /// 1: writeback cache, 0: writethrough (CONFIG_WCE).
    pub writeback: u8,
    /// Padding.
    pub unused0: u8,
    /// Number of request queues (MQ).
    pub num_queues: U16,
    /// Most sectors of one discard segment (DISCARD).
    pub max_discard_sectors: U32,
    /// Most segments of one discard request (DISCARD).
    pub max_discard_seg: U32,
    /// Discard alignment, in 512-byte sectors (DISCARD).
    pub discard_sector_alignment: U32,
    /// Most sectors of one write-zeroes segment (WRITE_ZEROES).
    pub max_write_zeroes_sectors: U32,
    /// Most segments of one write-zeroes request (WRITE_ZEROES).
    pub max_write_zeroes_seg: U32,
    /// 1 when write-zeroes may deallocate (WRITE_ZEROES).
    pub write_zeroes_may_unmap: u8,
    /// Padding.
    pub unused1: [u8; 3],
}

const _: () = assert!(size_of::<Geometry>() == 4);
const _: () = assert!(size_of::<Topology>() == 8);
const _: () = assert!(size_of::<VirtioBlkConfig>() == 60);
const _: () = assert!(std::mem::offset_of!(VirtioBlkConfig, writeback) == WRITEBACK_OFFSET);
const _: () = assert!(std::mem::offset_of!(VirtioBlkConfig, num_queues) == 34);
const _: () = assert!(std::mem::offset_of!(VirtioBlkConfig, write_zeroes_may_unmap) == 56);

impl VirtioBlkConfig {
    /// The configuration space of a disk of `capacity_sectors` 512-byte sectors.
    pub fn new(
        capacity_sectors: u64,
        logical_block_size: u32,
        num_queues: u16,
        queue_size: u16,
    ) -> Self {
        let alignment = (logical_block_size / SECTOR_SIZE as u32).max(1);
        VirtioBlkConfig {
            capacity: U64::new(capacity_sectors),
            size_max: U32::new(size_max(queue_size)),
            seg_max: U32::new(seg_max(queue_size)),
            geometry: Geometry::default(),
            blk_size: U32::new(logical_block_size),
            topology: Topology {
                physical_block_exp: 0,
                alignment_offset: 0,
                min_io_size: U16::new(1),
                opt_io_size: U32::new(0),
            },
            writeback: 1,
            unused0: 0,
            num_queues: U16::new(num_queues),
            max_discard_sectors: U32::new(MAX_RANGE_SECTORS),
            max_discard_seg: U32::new(MAX_RANGE_SEGMENTS),
            discard_sector_alignment: U32::new(alignment),
            max_write_zeroes_sectors: U32::new(MAX_RANGE_SECTORS),
            max_write_zeroes_seg: U32::new(MAX_RANGE_SEGMENTS),
            write_zeroes_may_unmap: 1,
            unused1: [0; 3],
        }
    }
}

/// `seg_max` for a queue of `queue_size` entries: two descriptors are the header and status.
pub fn seg_max(queue_size: u16) -> u32 {
    u32::from(queue_size).saturating_sub(2).max(1)
}

/// `size_max` for a queue of `queue_size` entries: the largest power of two, at most
/// [`SIZE_MAX`], with `seg_max × size_max` within [`MAX_DATA_BYTES`], so a driver that fills
/// every segment still sends a request the device accepts. 1 MiB up to 32-entry queues,
/// 128 KiB for 256 entries, 32 KiB for 1024.
pub fn size_max(queue_size: u16) -> u32 {
    let per_segment = MAX_DATA_BYTES / u64::from(seg_max(queue_size));
    // The largest power of two not above `per_segment` (which is at least 1).
    let pow2 = 1u64 << (63 - per_segment.leading_zeros());
    pow2.clamp(u64::from(MIN_SIZE_MAX), u64::from(SIZE_MAX)) as u32
}

// The smallest `size_max` still fits the largest queue's `seg_max` in MAX_DATA_BYTES.
const _: () = assert!((crate::MAX_QUEUE_SIZE as u64 - 2) * MIN_SIZE_MAX as u64 <= MAX_DATA_BYTES);

/// Copies `config[offset..offset + out.len()]` into `out`. `false` (and `out` untouched)
/// when the range is not inside the configuration space.
pub fn read_config(config: &VirtioBlkConfig, offset: u32, out: &mut [u8]) -> bool {
    let bytes = config.as_bytes();
    let Ok(start) = usize::try_from(offset) else {
        return false;
    };
    match start
        .checked_add(out.len())
        .and_then(|end| bytes.get(start..end))
    {
        Some(src) => {
            out.copy_from_slice(src);
            true
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_layout_capacity_and_num_queues_at_spec_offsets() {
        let cfg = VirtioBlkConfig::new(0x8000, 512, 3, 128);
        let b = cfg.as_bytes();
        assert_eq!(&b[0..8], &0x8000u64.to_le_bytes());
        assert_eq!(&b[12..16], &126u32.to_le_bytes());
        assert_eq!(&b[20..24], &512u32.to_le_bytes());
        assert_eq!(b[32], 1);
        assert_eq!(&b[34..36], &3u16.to_le_bytes());
        assert_eq!(b[56], 1);
    }

    #[test]
    fn read_config_range_outside_space_is_refused() {
        let cfg = VirtioBlkConfig::new(1, 512, 1, 256);
        let mut out = [0xaa; 8];
        assert!(!read_config(&cfg, 56, &mut out));
        assert_eq!(out, [0xaa; 8]);
        assert!(!read_config(&cfg, u32::MAX, &mut out[..1]));
        let mut all = [0u8; 57];
        assert!(read_config(&cfg, 0, &mut all));
        assert_eq!(all[0], 1);
    }

    #[test]
    fn seg_max_times_size_max_fits_the_request_cap_for_every_queue_size() {
        for shift in 0..=10 {
            let q = 1u16 << shift;
            let cfg = VirtioBlkConfig::new(8, 512, 1, q);
            let (seg, size) = (cfg.seg_max.get(), cfg.size_max.get());
            assert!(
                u64::from(seg) * u64::from(size) <= MAX_DATA_BYTES,
                "queue {q}: {seg} x {size}"
            );
            assert!(size.is_power_of_two() && (MIN_SIZE_MAX..=SIZE_MAX).contains(&size));
        }
        assert_eq!(size_max(1024), 32 << 10);
        assert_eq!(size_max(256), 128 << 10);
        assert_eq!(size_max(32), SIZE_MAX);
    }

    #[test]
    fn discard_alignment_for_4k_blocks_is_eight_sectors() {
        let cfg = VirtioBlkConfig::new(8, 4096, 1, 256);
        assert_eq!(cfg.discard_sector_alignment.get(), 8);
        assert_eq!(cfg.seg_max.get(), 254);
    }
}
