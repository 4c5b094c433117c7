//! The device state a migration carries (SET_DEVICE_STATE_FD), beyond what QEMU keeps.
//!
//! QEMU migrates the rings and the virtio status; the configuration space it reads again
//! from the destination's back-end. What the driver wrote into it, the cache mode
//! (`writeback`, CONFIG_WCE), would be lost: the destination would start in its default
//! mode, and a guest that chose writethrough would silently get a volatile cache. The
//! state also names the disk's capacity, whether it is read-only, its block size and its
//! number of queues, so a destination serving a different disk refuses the load instead of
//! handing the guest another disk.
//!
//! Layout (24 bytes): `VBLK`, version 2, `writeback` (0 or 1), read-only (0 or 1), a zero
//! byte, the capacity in 512-byte sectors (u64 little-endian), the block size `blk_size`
//! (u32 little-endian), the number of queues (u16 little-endian), two zero bytes. Version 1
//! (the first 16 bytes, without block size and queues) still loads; its geometry is then
//! not compared. A destination's block size and queue count are what its guest driver
//! already set up against, so a destination with others refuses the state too.

/// What [`BlkState::decode`] refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateError {
    /// Not `VBLK`, an unknown version, the wrong length for its version, or a flag or
    /// reserved byte that is not 0 or 1 (0 for reserved bytes).
    #[error("blk state: {0}")]
    Malformed(&'static str),
    /// The state was saved for a disk of another block size or number of queues.
    #[error(
        "blk state is for a disk of {saved_block_size}-byte blocks and {saved_num_queues} \
         queues, this one has {block_size}-byte blocks and {num_queues} queues"
    )]
    OtherGeometry {
        /// Block size in the state.
        saved_block_size: u32,
        /// Number of queues in the state.
        saved_num_queues: u16,
        /// This disk's block size.
        block_size: u32,
        /// This disk's number of queues.
        num_queues: u16,
    },
    /// The state was saved for a disk of another size or access mode.
    #[error(
        "blk state is for a disk of {saved_sectors} sectors{}, this one has {sectors}{}",
        if *.saved_read_only { " (read-only)" } else { "" },
        if *.read_only { " (read-only)" } else { "" }
    )]
    OtherDisk {
        /// Capacity in the state.
        saved_sectors: u64,
        /// Read-only in the state.
        saved_read_only: bool,
        /// This disk's capacity.
        sectors: u64,
        /// This disk is read-only.
        read_only: bool,
    },
}

/// See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkState {
    /// The `writeback` byte the driver set (0 writethrough, 1 writeback).
    pub writeback: u8,
    /// The disk is read-only.
    pub read_only: bool,
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// `blk_size` of the configuration space (0: unknown, a version 1 state).
    pub block_size: u32,
    /// Number of queues (0: unknown, a version 1 state).
    pub num_queues: u16,
}

impl BlkState {
    const MAGIC: &'static [u8; 4] = b"VBLK";
    const VERSION: u8 = 2;
    /// Encoded length.
    pub const LEN: usize = 24;
    /// Encoded length of version 1.
    const LEN_V1: usize = 16;

    /// The state's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::LEN);
        v.extend_from_slice(Self::MAGIC);
        v.extend_from_slice(&[Self::VERSION, self.writeback, u8::from(self.read_only), 0]);
        v.extend_from_slice(&self.capacity.to_le_bytes());
        v.extend_from_slice(&self.block_size.to_le_bytes());
        v.extend_from_slice(&self.num_queues.to_le_bytes());
        v.extend_from_slice(&[0, 0]);
        v
    }

    /// Parses state bytes, refusing anything [`encode`](Self::encode) would not produce.
    pub fn decode(b: &[u8]) -> Result<Self, StateError> {
        let bad = StateError::Malformed;
        if b.len() < 5 || &b[..4] != Self::MAGIC {
            return Err(bad("not blk state"));
        }
        let len = match b[4] {
            1 => Self::LEN_V1,
            Self::VERSION => Self::LEN,
            _ => return Err(bad("unknown version")),
        };
        if b.len() != len {
            return Err(bad("wrong length"));
        }
        if b[5] > 1 || b[6] > 1 || b[7] != 0 {
            return Err(bad("a flag is not 0 or 1"));
        }
        let mut cap = [0u8; 8];
        cap.copy_from_slice(&b[8..16]);
        let (mut block_size, mut num_queues) = (0, 0);
        if len == Self::LEN {
            if b[22..24] != [0, 0] {
                return Err(bad("a reserved byte is not 0"));
            }
            block_size = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
            num_queues = u16::from_le_bytes([b[20], b[21]]);
        }
        Ok(BlkState {
            writeback: b[5],
            read_only: b[6] == 1,
            capacity: u64::from_le_bytes(cap),
            block_size,
            num_queues,
        })
    }

    /// Refuses state saved for another disk than `self` describes: capacity, access mode,
    /// and (unless the state is version 1) block size and number of queues.
    pub fn check_disk(&self, saved: &BlkState) -> Result<(), StateError> {
        if saved.capacity != self.capacity || saved.read_only != self.read_only {
            return Err(StateError::OtherDisk {
                saved_sectors: saved.capacity,
                saved_read_only: saved.read_only,
                sectors: self.capacity,
                read_only: self.read_only,
            });
        }
        let known = saved.block_size != 0 || saved.num_queues != 0;
        if known && (saved.block_size, saved.num_queues) != (self.block_size, self.num_queues) {
            return Err(StateError::OtherGeometry {
                saved_block_size: saved.block_size,
                saved_num_queues: saved.num_queues,
                block_size: self.block_size,
                num_queues: self.num_queues,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_every_malformed_byte() {
        let s = BlkState {
            writeback: 0,
            read_only: true,
            capacity: 0x1234_5678_9abc,
            block_size: 4096,
            num_queues: 3,
        };
        let b = s.encode();
        assert_eq!(b.len(), BlkState::LEN);
        assert_eq!(BlkState::decode(&b), Ok(s));
        assert!(BlkState::decode(&b[..23]).is_err());
        assert!(BlkState::decode(&b[..16]).is_err(), "version 2 in 16 bytes");
        let mut longer = b.clone();
        longer.push(0);
        assert!(BlkState::decode(&longer).is_err());
        // Version 1 (16 bytes, no geometry) still loads, its geometry unknown (0).
        let mut v1 = b[..16].to_vec();
        v1[4] = 1;
        assert_eq!(
            BlkState::decode(&v1),
            Ok(BlkState {
                block_size: 0,
                num_queues: 0,
                ..s
            })
        );
        for (i, v) in [(0, b'X'), (4, 3), (5, 2), (6, 7), (7, 1), (22, 1), (23, 1)] {
            let mut m = b.clone();
            m[i] = v;
            assert!(BlkState::decode(&m).is_err(), "byte {i} = {v}");
        }
    }

    #[test]
    fn another_disk_is_refused() {
        let here = BlkState {
            writeback: 1,
            read_only: false,
            capacity: 2048,
            block_size: 512,
            num_queues: 2,
        };
        assert!(here
            .check_disk(&BlkState {
                writeback: 0,
                ..here
            })
            .is_ok());
        assert!(here
            .check_disk(&BlkState {
                capacity: 4096,
                ..here
            })
            .is_err());
        assert!(here
            .check_disk(&BlkState {
                read_only: true,
                ..here
            })
            .is_err());
        for other in [
            BlkState {
                block_size: 4096,
                ..here
            },
            BlkState {
                num_queues: 1,
                ..here
            },
        ] {
            assert!(matches!(
                here.check_disk(&other),
                Err(StateError::OtherGeometry { .. })
            ));
        }
        // A version 1 state names no geometry: only capacity and access mode are compared.
        assert!(here
            .check_disk(&BlkState {
                block_size: 0,
                num_queues: 0,
                ..here
            })
            .is_ok());
    }
}
