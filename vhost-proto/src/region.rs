//! The protocol's rules for memory regions (SET_MEM_TABLE, ADD_MEM_REG), the ones that need
//! no mapping: a region is not empty, none of its three ranges (guest-physical, front-end
//! virtual, file offset) overflows the 64-bit address space, and no two regions of a table
//! overlap in guest-physical or front-end virtual space.
//!
//! One rule set for everyone who looks at regions: the decoder checks a message's regions
//! with [`check_regions`] (failing with [`Error::RegionOverflow`](crate::Error)), and a
//! back-end that keeps a table checks each region it adds with [`check_region`] and
//! [`check_overlap`] against the regions it already holds, naming the same
//! [`RegionFault`].

use crate::MemoryRegion;

/// Which rule a memory region breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegionFault {
    /// `memory_size` is zero.
    #[error("size is zero")]
    Empty,
    /// `guest_phys_addr + memory_size` overflows.
    #[error("guest_phys_addr + memory_size overflows")]
    GuestRangeOverflow,
    /// `user_addr + memory_size` overflows.
    #[error("user_addr + memory_size overflows")]
    UserRangeOverflow,
    /// `mmap_offset + memory_size` overflows.
    #[error("mmap_offset + memory_size overflows")]
    OffsetRangeOverflow,
    /// The guest-physical range overlaps that of the other region at this index.
    #[error("guest-physical range overlaps region {other}")]
    GuestOverlap {
        /// Index of the other region, among those it was checked against.
        other: usize,
    },
    /// The front-end virtual range overlaps that of the other region at this index.
    #[error("user address range overlaps region {other}")]
    UserOverlap {
        /// Index of the other region, among those it was checked against.
        other: usize,
    },
}

impl RegionFault {
    /// The index of the region overlapped, for an overlap.
    pub fn other(&self) -> Option<usize> {
        match *self {
            RegionFault::GuestOverlap { other } | RegionFault::UserOverlap { other } => Some(other),
            _ => None,
        }
    }

    /// The rule broken, as a fixed text (for errors that carry a `&'static str`).
    pub fn why(&self) -> &'static str {
        match self {
            RegionFault::Empty => "size is zero",
            RegionFault::GuestRangeOverflow => "guest_phys_addr + memory_size overflows",
            RegionFault::UserRangeOverflow => "user_addr + memory_size overflows",
            RegionFault::OffsetRangeOverflow => "mmap_offset + memory_size overflows",
            RegionFault::GuestOverlap { .. } => "guest-physical range overlaps an earlier region",
            RegionFault::UserOverlap { .. } => "user address range overlaps an earlier region",
        }
    }
}

/// Checks one region on its own: not empty, and none of its ranges overflows.
pub fn check_region(r: &MemoryRegion) -> Result<(), RegionFault> {
    if r.memory_size == 0 {
        return Err(RegionFault::Empty);
    }
    if r.guest_phys_addr.checked_add(r.memory_size).is_none() {
        return Err(RegionFault::GuestRangeOverflow);
    }
    if r.user_addr.checked_add(r.memory_size).is_none() {
        return Err(RegionFault::UserRangeOverflow);
    }
    if r.mmap_offset.checked_add(r.memory_size).is_none() {
        return Err(RegionFault::OffsetRangeOverflow);
    }
    Ok(())
}

/// Checks `r` against `others` (each already passed [`check_region`], as `r` has): no
/// overlap in guest-physical or front-end virtual space. The fault names the index of the
/// first region overlapped.
pub fn check_overlap<'a>(
    r: &MemoryRegion,
    others: impl IntoIterator<Item = &'a MemoryRegion>,
) -> Result<(), RegionFault> {
    // Both ranges were checked not to overflow.
    let overlaps = |a: u64, b: u64, b_len: u64| a < b + b_len && b < a + r.memory_size;
    for (other, o) in others.into_iter().enumerate() {
        if overlaps(r.guest_phys_addr, o.guest_phys_addr, o.memory_size) {
            return Err(RegionFault::GuestOverlap { other });
        }
        if overlaps(r.user_addr, o.user_addr, o.memory_size) {
            return Err(RegionFault::UserOverlap { other });
        }
    }
    Ok(())
}

/// Checks a table: each region on its own, then against the earlier ones. The error is the
/// index of the first region that breaks a rule, and the rule.
pub fn check_regions(regions: &[MemoryRegion]) -> Result<(), (usize, RegionFault)> {
    for (index, r) in regions.iter().enumerate() {
        check_region(r)
            .and_then(|()| check_overlap(r, &regions[..index]))
            .map_err(|fault| (index, fault))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(gpa: u64, size: u64, uva: u64, offset: u64) -> MemoryRegion {
        MemoryRegion {
            guest_phys_addr: gpa,
            memory_size: size,
            user_addr: uva,
            mmap_offset: offset,
        }
    }

    #[test]
    fn each_rule_names_its_fault() {
        assert_eq!(check_region(&region(0, 0, 0, 0)), Err(RegionFault::Empty));
        assert_eq!(
            check_region(&region(u64::MAX, 1, 0, 0)),
            Err(RegionFault::GuestRangeOverflow)
        );
        assert_eq!(
            check_region(&region(0, 2, u64::MAX - 1, 0)),
            Err(RegionFault::UserRangeOverflow)
        );
        assert_eq!(
            check_region(&region(0, 2, 0, u64::MAX)),
            Err(RegionFault::OffsetRangeOverflow)
        );
        // The last byte of the address space is usable.
        assert_eq!(check_region(&region(u64::MAX - 1, 1, 0, 0)), Ok(()));
    }

    #[test]
    fn overlaps_are_found_in_either_space_and_touching_ranges_are_fine() {
        let a = region(0x1000, 0x1000, 0x10_0000, 0);
        let touching = region(0x2000, 0x1000, 0x10_1000, 0);
        assert_eq!(check_regions(&[a, touching]), Ok(()));
        let gpa = region(0x1fff, 0x10, 0x20_0000, 0);
        assert_eq!(
            check_regions(&[a, touching, gpa]),
            Err((2, RegionFault::GuestOverlap { other: 0 }))
        );
        let uva = region(0x8000, 0x1000, 0x10_1800, 0);
        assert_eq!(
            check_regions(&[a, touching, uva]),
            Err((2, RegionFault::UserOverlap { other: 1 }))
        );
        assert_eq!(check_overlap(&uva, [&a]), Ok(()));
        assert_eq!(RegionFault::UserOverlap { other: 1 }.other(), Some(1));
        assert_eq!(RegionFault::Empty.other(), None);
        assert_eq!(
            check_regions(&[a, region(0, 0, 0, 0)]),
            Err((1, RegionFault::Empty))
        );
    }
}
