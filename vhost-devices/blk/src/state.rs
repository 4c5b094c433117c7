//! The device state a migration carries (SET_DEVICE_STATE_FD), beyond what QEMU keeps.
//!
//! QEMU migrates the rings and the virtio status; the configuration space it reads again
//! from the destination's back-end. What the driver wrote into it, the cache mode
//! (`writeback`, CONFIG_WCE), would be lost: the destination would start in its default
//! mode, and a guest that chose writethrough would silently get a volatile cache. The
//! state also names the disk's capacity and whether it is read-only, so a destination
//! serving a different disk refuses the load instead of handing the guest another disk.
//!
//! Layout (16 bytes): `VBLK`, version 1, `writeback` (0 or 1), read-only (0 or 1), a zero
//! byte, then the capacity in 512-byte sectors (u64 little-endian).

/// What [`BlkState::decode`] refuses.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateError {
    /// Not 16 bytes, not `VBLK`, an unknown version, or a flag that is not 0 or 1.
    #[error("blk state: {0}")]
    Malformed(&'static str),
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
}

impl BlkState {
    const MAGIC: &'static [u8; 4] = b"VBLK";
    const VERSION: u8 = 1;
    /// Encoded length.
    pub const LEN: usize = 16;

    /// The state's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::LEN);
        v.extend_from_slice(Self::MAGIC);
        v.extend_from_slice(&[Self::VERSION, self.writeback, u8::from(self.read_only), 0]);
        v.extend_from_slice(&self.capacity.to_le_bytes());
        v
    }

    /// Parses state bytes, refusing anything [`encode`](Self::encode) would not produce.
    pub fn decode(b: &[u8]) -> Result<Self, StateError> {
        let bad = StateError::Malformed;
        if b.len() != Self::LEN {
            return Err(bad("wrong length"));
        }
        if &b[..4] != Self::MAGIC {
            return Err(bad("not blk state"));
        }
        if b[4] != Self::VERSION {
            return Err(bad("unknown version"));
        }
        if b[5] > 1 || b[6] > 1 || b[7] != 0 {
            return Err(bad("a flag is not 0 or 1"));
        }
        let mut cap = [0u8; 8];
        cap.copy_from_slice(&b[8..16]);
        Ok(BlkState {
            writeback: b[5],
            read_only: b[6] == 1,
            capacity: u64::from_le_bytes(cap),
        })
    }

    /// Refuses state saved for another disk than `self` describes.
    pub fn check_disk(&self, saved: &BlkState) -> Result<(), StateError> {
        if saved.capacity != self.capacity || saved.read_only != self.read_only {
            return Err(StateError::OtherDisk {
                saved_sectors: saved.capacity,
                saved_read_only: saved.read_only,
                sectors: self.capacity,
                read_only: self.read_only,
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
        };
        let b = s.encode();
        assert_eq!(b.len(), BlkState::LEN);
        assert_eq!(BlkState::decode(&b), Ok(s));
        assert!(BlkState::decode(&b[..15]).is_err());
        let mut longer = b.clone();
        longer.push(0);
        assert!(BlkState::decode(&longer).is_err());
        for (i, v) in [(0, b'X'), (4, 2), (5, 2), (6, 7), (7, 1)] {
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
    }
}
