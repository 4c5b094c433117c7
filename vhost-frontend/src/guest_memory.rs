//! Test guest memory: one shareable memfd split into regions, as a VMM would hand it to a
//! back-end with `SET_MEM_TABLE`.
//!
//! Every region lives at its own `mmap_offset` inside the same memfd, so a back-end that
//! ignores `mmap_offset` reads the wrong bytes. Every region also has a front-end virtual
//! address (`user_addr`) that is neither its guest-physical address nor the address this
//! process mapped it at: `SET_VRING_ADDR` carries these addresses and only a back-end that
//! translates them through the memory table finds the rings.
//!
//! This process accesses the memory through a [`GuestMemoryMmap`] whose regions are shared
//! (`MAP_SHARED`) mappings of the memfd, each byte mapped once. The regions own their
//! mappings, so a clone of [`GuestMemory::mem`] stays valid after the `GuestMemory` is dropped.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex, PoisonError};

use nix::sys::memfd::{memfd_create, MFdFlags};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};

/// Alignment of each region's `mmap_offset` inside the memfd. 64 KiB is a multiple of every
/// base page size Linux uses, so each offset is valid for `mmap` on any host.
pub const REGION_ALIGN: u64 = 0x1_0000;

/// Front-end virtual address [`GuestMemory::single`] gives its region.
pub const SINGLE_USER_ADDR: u64 = 0x7f12_3400_0000;

/// Errors from building or allocating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `GuestMemory::new` was given no region.
    #[error("guest memory needs at least one region")]
    NoRegions,
    /// A region has size zero.
    #[error("region {index} has size zero")]
    EmptyRegion {
        /// Position of the region in the list given to `new`.
        index: usize,
    },
    /// `guest_phys_addr + size` or `user_addr + size` of a region overflows `u64`, or the
    /// region does not fit in this process's address space.
    #[error("region {index}: address plus size overflows")]
    AddressOverflow {
        /// Position of the region in the list given to `new`.
        index: usize,
    },
    /// Two regions overlap in guest-physical address space.
    #[error("regions {first} and {second} overlap in guest-physical address space")]
    GuestAddrOverlap {
        /// Position of the first region.
        first: usize,
        /// Position of the second region.
        second: usize,
    },
    /// Two regions overlap in front-end virtual address space.
    #[error("regions {first} and {second} overlap in front-end virtual address space")]
    UserAddrOverlap {
        /// Position of the first region.
        first: usize,
        /// Position of the second region.
        second: usize,
    },
    /// Creating the memfd failed.
    #[error("memfd_create failed: {0}")]
    MemfdCreate(#[source] nix::Error),
    /// Sizing the memfd failed.
    #[error("sizing the memfd to {size} bytes failed: {source}")]
    Truncate {
        /// Requested file size.
        size: u64,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Mapping a region of the memfd failed.
    #[error("mapping region {index} failed: {source}")]
    Mmap {
        /// Position of the region in the list given to `new`.
        index: usize,
        /// The underlying error.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// Building the `GuestMemoryMmap` failed.
    #[error("building the guest memory map failed: {0}")]
    GuestMemory(#[source] vm_memory::Error),
    /// `alloc` was given a zero size or an alignment that is not a power of two.
    #[error("invalid allocation request: size {size}, align {align}")]
    InvalidAlloc {
        /// Requested size.
        size: u64,
        /// Requested alignment.
        align: u64,
    },
    /// No region has `size` free bytes left at the requested alignment.
    #[error("out of guest memory: no region has {size} free bytes aligned to {align}")]
    OutOfMemory {
        /// Requested size.
        size: u64,
        /// Requested alignment.
        align: u64,
    },
}

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// One region to create, as the caller chooses it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionSpec {
    /// Guest-physical address of the first byte.
    pub guest_phys_addr: u64,
    /// Size in bytes.
    pub size: u64,
    /// Front-end virtual address of the first byte, as announced to the back-end.
    pub user_addr: u64,
}

/// One region as created: what a `SET_MEM_TABLE` or `ADD_MEM_REG` entry carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionInfo {
    /// Guest-physical address of the first byte.
    pub guest_phys_addr: u64,
    /// Size in bytes.
    pub memory_size: u64,
    /// Front-end virtual address of the first byte.
    pub user_addr: u64,
    /// Offset of the first byte inside the memfd ([`GuestMemory::fd`]).
    pub mmap_offset: u64,
}

impl RegionInfo {
    fn contains_gpa(&self, gpa: u64) -> bool {
        gpa >= self.guest_phys_addr && gpa - self.guest_phys_addr < self.memory_size
    }

    fn contains_uva(&self, uva: u64) -> bool {
        uva >= self.user_addr && uva - self.user_addr < self.memory_size
    }
}

/// Shareable guest memory backed by one memfd. See the [module docs](self).
#[derive(Debug)]
pub struct GuestMemory {
    file: Arc<File>,
    regions: Vec<RegionInfo>,
    mem: GuestMemoryMmap,
    /// Next free guest-physical address in each region (same order as `regions`).
    bump: Mutex<Vec<u64>>,
}

fn ranges_overlap(a_start: u64, b_start: u64, a_len: u64, b_len: u64) -> bool {
    // Lengths are non-zero and `start + len` does not overflow (checked by the caller).
    a_start < b_start + b_len && b_start < a_start + a_len
}

fn align_up(value: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    value.checked_add(align - 1).map(|v| v & !(align - 1))
}

impl GuestMemory {
    /// Creates the memfd, lays the regions out one after another in it (each `mmap_offset`
    /// a multiple of [`REGION_ALIGN`], in the order given) and maps them.
    pub fn new(specs: &[RegionSpec]) -> Result<Self> {
        if specs.is_empty() {
            return Err(Error::NoRegions);
        }
        let mut regions = Vec::with_capacity(specs.len());
        let mut file_size = 0u64;
        for (index, spec) in specs.iter().enumerate() {
            if spec.size == 0 {
                return Err(Error::EmptyRegion { index });
            }
            let overflow = || Error::AddressOverflow { index };
            spec.guest_phys_addr
                .checked_add(spec.size)
                .ok_or_else(overflow)?;
            spec.user_addr.checked_add(spec.size).ok_or_else(overflow)?;
            usize::try_from(spec.size).map_err(|_| overflow())?;
            let mmap_offset = file_size;
            let end = mmap_offset.checked_add(spec.size).ok_or_else(overflow)?;
            file_size = align_up(end, REGION_ALIGN).ok_or_else(overflow)?;
            regions.push(RegionInfo {
                guest_phys_addr: spec.guest_phys_addr,
                memory_size: spec.size,
                user_addr: spec.user_addr,
                mmap_offset,
            });
        }
        for (first, a) in regions.iter().enumerate() {
            for (second, b) in regions.iter().enumerate().skip(first + 1) {
                let len = (a.memory_size, b.memory_size);
                if ranges_overlap(a.guest_phys_addr, b.guest_phys_addr, len.0, len.1) {
                    return Err(Error::GuestAddrOverlap { first, second });
                }
                if ranges_overlap(a.user_addr, b.user_addr, len.0, len.1) {
                    return Err(Error::UserAddrOverlap { first, second });
                }
            }
        }

        // Sealable, as QEMU's memory-backend-memfd: a back-end can keep it from shrinking.
        let flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
        let fd = memfd_create(c"vhost-frontend-guest-memory", flags).map_err(Error::MemfdCreate)?;
        let file = Arc::new(File::from(fd));
        file.set_len(file_size).map_err(|source| Error::Truncate {
            size: file_size,
            source,
        })?;

        let mut mapped = Vec::with_capacity(regions.len());
        for (index, info) in regions.iter().enumerate() {
            // Checked above that the size fits in `usize`.
            let size = info.memory_size as usize;
            let mapping = MmapRegion::from_file(
                FileOffset::from_arc(Arc::clone(&file), info.mmap_offset),
                size,
            )
            .map_err(|source| Error::Mmap { index, source })?;
            let region = GuestRegionMmap::new(mapping, GuestAddress(info.guest_phys_addr))
                .map_err(Error::GuestMemory)?;
            mapped.push(region);
        }
        mapped.sort_by_key(GuestMemoryRegion::start_addr);
        let mem = GuestMemoryMmap::from_regions(mapped).map_err(Error::GuestMemory)?;

        let bump = Mutex::new(regions.iter().map(|r| r.guest_phys_addr).collect());
        Ok(GuestMemory {
            file,
            regions,
            mem,
            bump,
        })
    }

    /// One region of `size` bytes at guest-physical address 0, announced at front-end virtual
    /// address [`SINGLE_USER_ADDR`].
    pub fn single(size: u64) -> Result<Self> {
        Self::new(&[RegionSpec {
            guest_phys_addr: 0,
            size,
            user_addr: SINGLE_USER_ADDR,
        }])
    }

    /// The regions in the order they were given to [`new`](Self::new).
    pub fn regions(&self) -> impl ExactSizeIterator<Item = RegionInfo> + '_ {
        self.regions.iter().copied()
    }

    /// The memfd that backs every region (each at its own `mmap_offset`).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The front-end virtual address of `gpa`, or `None` when no region holds it.
    pub fn gpa_to_uva(&self, gpa: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|r| r.contains_gpa(gpa))
            .map(|r| r.user_addr + (gpa - r.guest_phys_addr))
    }

    /// The guest-physical address of front-end virtual address `uva`, or `None` when no
    /// region holds it.
    pub fn uva_to_gpa(&self, uva: u64) -> Option<u64> {
        self.regions
            .iter()
            .find(|r| r.contains_uva(uva))
            .map(|r| r.guest_phys_addr + (uva - r.user_addr))
    }

    /// This process's view of the memory, for `vm_memory::Bytes` access.
    pub fn mem(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Reserves `size` bytes aligned to `align` (a power of two) inside one region (the first,
    /// in the order given to `new`, with room left) and returns their guest-physical address.
    /// Memory is never given back; fresh memory reads as zero.
    pub fn alloc(&self, size: u64, align: u64) -> Result<GuestAddress> {
        if size == 0 || !align.is_power_of_two() {
            return Err(Error::InvalidAlloc { size, align });
        }
        let mut next_free = self.bump.lock().unwrap_or_else(PoisonError::into_inner);
        for (region, next) in self.regions.iter().zip(next_free.iter_mut()) {
            let region_end = region.guest_phys_addr + region.memory_size;
            let end =
                align_up(*next, align).and_then(|start| Some((start, start.checked_add(size)?)));
            if let Some((start, end)) = end.filter(|&(_, end)| end <= region_end) {
                *next = end;
                return Ok(GuestAddress(start));
            }
        }
        Err(Error::OutOfMemory { size, align })
    }
}
