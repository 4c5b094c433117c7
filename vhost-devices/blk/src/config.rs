//! The virtio-blk configuration space this device offers (virtio 1.2, 5.2.4) and its limits.
//!
//! The layout and the feature bits are [`virtio_defs::blk`]'s, shared with the front-end;
//! the front-end reads the space with GET_CONFIG and may write the `writeback` byte with
//! SET_CONFIG (VIRTIO_BLK_F_CONFIG_WCE).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::IntoBytes;

pub use virtio_defs::blk::{
    features, Geometry, Topology, VirtioBlkConfig, SECTOR_SIZE, WRITEBACK_OFFSET,
};

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
/// The configuration space this device offers for a disk of `capacity_sectors` 512-byte
/// sectors.
pub fn config_space(
    capacity_sectors: u64,
    logical_block_size: u32,
    num_queues: u16,
    queue_size: u16,
) -> VirtioBlkConfig {
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
        let cfg = config_space(0x8000, 512, 3, 128);
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
        let cfg = config_space(1, 512, 1, 256);
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
            let cfg = config_space(8, 512, 1, q);
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
        let cfg = config_space(8, 4096, 1, 256);
        assert_eq!(cfg.discard_sector_alignment.get(), 8);
        assert_eq!(cfg.seg_max.get(), 254);
    }
}
