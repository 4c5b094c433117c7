//! virtio-blk (virtio 1.2, 5.2): feature bits, the configuration space, the request header,
//! DISCARD / WRITE_ZEROES range segments, request types and status values.
//!
//! A request is a descriptor chain: a device-readable [`RequestHeader`], the data (for
//! DISCARD and WRITE_ZEROES, [`RangeSegment`]s), and one device-writable status byte
//! (`VIRTIO_BLK_S_*`).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Feature bits of virtio-blk (virtio 1.2, 5.2.3).
pub mod features {
    /// `VIRTIO_BLK_F_SIZE_MAX`: `size_max` is valid.
    pub const SIZE_MAX: u32 = 1;
    /// `VIRTIO_BLK_F_SEG_MAX`: `seg_max` is valid.
    pub const SEG_MAX: u32 = 2;
    /// `VIRTIO_BLK_F_GEOMETRY`: `geometry` is valid.
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
/// Offset of `writeback` in the configuration space: the only byte SET_CONFIG may change
/// (VIRTIO_BLK_F_CONFIG_WCE).
pub const WRITEBACK_OFFSET: usize = 32;
/// Offset of `num_queues` in the configuration space.
pub const NUM_QUEUES_OFFSET: usize = 34;

/// `VIRTIO_BLK_T_IN`: read sectors.
pub const VIRTIO_BLK_T_IN: u32 = 0;
/// `VIRTIO_BLK_T_OUT`: write sectors.
pub const VIRTIO_BLK_T_OUT: u32 = 1;
/// `VIRTIO_BLK_T_FLUSH`: make earlier completed writes durable.
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
/// `VIRTIO_BLK_T_GET_ID`: read the device serial ([`ID_BYTES`] bytes).
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;
/// `VIRTIO_BLK_T_DISCARD`: deallocate ranges.
pub const VIRTIO_BLK_T_DISCARD: u32 = 11;
/// `VIRTIO_BLK_T_WRITE_ZEROES`: zero ranges.
pub const VIRTIO_BLK_T_WRITE_ZEROES: u32 = 13;

/// `VIRTIO_BLK_S_OK`: success.
pub const VIRTIO_BLK_S_OK: u8 = 0;
/// `VIRTIO_BLK_S_IOERR`: I/O error.
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
/// `VIRTIO_BLK_S_UNSUPP`: unsupported request.
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Size of the request header `{type: u32, reserved: u32, sector: u64}`.
pub const HEADER_SIZE: u64 = 16;
/// Size of a discard / write-zeroes segment `{sector: u64, num_sectors: u32, flags: u32}`.
pub const SEGMENT_SIZE: u64 = 16;
/// `VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP`, bit 0 of a segment's flags.
pub const WRITE_ZEROES_FLAG_UNMAP: u32 = 1;
/// Length of the GET_ID answer.
pub const ID_BYTES: usize = 20;

/// `struct virtio_blk_req` header as the driver lays it out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RequestHeader {
    /// `VIRTIO_BLK_T_*`.
    pub request_type: U32,
    /// Reserved.
    pub reserved: U32,
    /// First 512-byte sector.
    pub sector: U64,
}

/// `struct virtio_blk_discard_write_zeroes`: one range of a DISCARD or WRITE_ZEROES request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RangeSegment {
    /// First 512-byte sector.
    pub sector: U64,
    /// Number of sectors.
    pub num_sectors: U32,
    /// [`WRITE_ZEROES_FLAG_UNMAP`] or 0.
    pub flags: U32,
}

const _: () = assert!(core::mem::size_of::<RequestHeader>() == HEADER_SIZE as usize);
const _: () = assert!(core::mem::size_of::<RangeSegment>() == SEGMENT_SIZE as usize);

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
/// (the secure-erase and zoned parts are not included).
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
    /// Legacy geometry (GEOMETRY).
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

const _: () = assert!(core::mem::size_of::<Geometry>() == 4);
const _: () = assert!(core::mem::size_of::<Topology>() == 8);
const _: () = assert!(core::mem::size_of::<VirtioBlkConfig>() == 60);
const _: () = assert!(core::mem::offset_of!(VirtioBlkConfig, writeback) == WRITEBACK_OFFSET);
const _: () = assert!(core::mem::offset_of!(VirtioBlkConfig, num_queues) == NUM_QUEUES_OFFSET);
const _: () = assert!(core::mem::offset_of!(VirtioBlkConfig, write_zeroes_may_unmap) == 56);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_segment_are_little_endian_in_spec_order() {
        let h = RequestHeader {
            request_type: VIRTIO_BLK_T_OUT.into(),
            reserved: 0.into(),
            sector: 0x0102_0304_0506_0708.into(),
        };
        assert_eq!(
            h.as_bytes(),
            &[1, 0, 0, 0, 0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]
        );
        let s = RangeSegment {
            sector: 9.into(),
            num_sectors: 0x0a0b.into(),
            flags: WRITE_ZEROES_FLAG_UNMAP.into(),
        };
        assert_eq!(
            s.as_bytes(),
            &[9, 0, 0, 0, 0, 0, 0, 0, 0x0b, 0x0a, 0, 0, 1, 0, 0, 0]
        );
    }

    #[test]
    fn config_fields_sit_at_spec_offsets() {
        let cfg = VirtioBlkConfig {
            capacity: 0x8000.into(),
            seg_max: 126.into(),
            blk_size: 512.into(),
            writeback: 1,
            num_queues: 3.into(),
            write_zeroes_may_unmap: 1,
            ..VirtioBlkConfig::default()
        };
        let b = cfg.as_bytes();
        assert_eq!(&b[0..8], &0x8000u64.to_le_bytes());
        assert_eq!(&b[12..16], &126u32.to_le_bytes());
        assert_eq!(&b[20..24], &512u32.to_le_bytes());
        assert_eq!(b[WRITEBACK_OFFSET], 1);
        assert_eq!(&b[34..36], &3u16.to_le_bytes());
        assert_eq!(b[56], 1);
    }
}
