//! The guest memory table: regions mapped from the front-end's descriptors, the
//! front-end-virtual → guest-physical translation for ring addresses, and the published
//! [`GuestMemoryMmap`] that workers read.
//!
//! Every change (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG) builds a complete new map next to
//! the old one and publishes it with one atomic store ([`GuestMemoryAtomic`]): a worker sees
//! either the old map or the new one, never a half-built one, and old mappings are unmapped
//! when the last worker holding them lets go.
//!
//! A mapping of a file that later shrinks kills the process with SIGBUS on the first access
//! past the new end. So each region's file must be unable to shrink before it is checked
//! against its size and mapped:
//!
//! | the region's descriptor | what the table does |
//! | --- | --- |
//! | a memfd sealed with `F_SEAL_SHRINK` (QEMU's `memory-backend-memfd` default) | maps it |
//! | a memfd that allows sealing | adds `F_SEAL_SHRINK` (the front-end can still grow it), maps it |
//! | a memfd that forbids new seals, a regular or hugetlbfs file | [`MemoryPolicy::Lenient`] (default): maps it and logs a warning; [`MemoryPolicy::Strict`]: refuses it ([`MemError::Unprotected`]) |

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::{Arc, PoisonError};

use vhost_proto::MemoryRegion;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap, MmapRegion,
};

/// Most regions the table holds: the answer to GET_MAX_MEM_SLOTS (as libvhost-user and
/// rust-vmm's vhost-user-backend answer).
pub const MAX_MEM_SLOTS: usize = 509;

/// Why a memory table change was refused. The table is unchanged after any error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemError {
    /// The message carried a different number of descriptors than regions.
    #[error("{regions} regions but {fds} descriptors")]
    FdCount {
        /// Regions in the message.
        regions: usize,
        /// Descriptors that came with it.
        fds: usize,
    },
    /// A region breaks a rule of the protocol: size zero or an address range that
    /// overflows ([`vhost_proto::region::check_region`]).
    #[error("region at guest-physical {gpa:#x}: {fault}")]
    InvalidRegion {
        /// Guest-physical address of the region.
        gpa: u64,
        /// The rule broken.
        fault: vhost_proto::RegionFault,
    },
    /// A region larger than this process's address space.
    #[error("region at guest-physical {gpa:#x}: size {size:#x} does not fit in this process's address space")]
    TooLarge {
        /// Guest-physical address of the region.
        gpa: u64,
        /// Its size.
        size: u64,
    },
    /// `mmap_offset + memory_size` runs past the end of the region's file: mapping it would
    /// succeed and the first access beyond the end would kill the process with SIGBUS.
    #[error(
        "region at guest-physical {gpa:#x}: offset {mmap_offset:#x} + size {size:#x} runs past \
         the end of its file ({file_size:#x} bytes)"
    )]
    PastEndOfFile {
        /// Guest-physical address of the region.
        gpa: u64,
        /// Offset of the region in the file.
        mmap_offset: u64,
        /// Size of the region.
        size: u64,
        /// Size of the file.
        file_size: u64,
    },
    /// A region overlaps one already in the table (guest-physical or front-end virtual).
    #[error("region at guest-physical {gpa:#x} overlaps the region at {other:#x}")]
    Overlap {
        /// Guest-physical address of the new region.
        gpa: u64,
        /// Guest-physical address of the region it overlaps.
        other: u64,
    },
    /// Adding the region would exceed [`MAX_MEM_SLOTS`].
    #[error("the memory table is full ({max} regions)")]
    TooManyRegions {
        /// The limit.
        max: usize,
    },
    /// REM_MEM_REG named a region the table does not hold.
    #[error(
        "no region at guest-physical {gpa:#x} with user address {user_addr:#x} and size {size:#x}"
    )]
    NoSuchRegion {
        /// Guest-physical address asked for.
        gpa: u64,
        /// Front-end virtual address asked for.
        user_addr: u64,
        /// Size asked for.
        size: u64,
    },
    /// `fstat` on the region's descriptor failed.
    #[error("fstat of the region's descriptor failed: {0}")]
    Stat(#[source] std::io::Error),
    /// Mapping the region failed.
    #[error("mapping the region at guest-physical {gpa:#x} failed: {source}")]
    Mmap {
        /// Guest-physical address of the region.
        gpa: u64,
        /// The underlying error.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// Building the guest memory map failed.
    #[error("building the guest memory map failed: {0}")]
    GuestMemory(#[source] vm_memory::Error),
    /// Under [`MemoryPolicy::Strict`]: the region's file could shrink under the mapping.
    #[error(
        "region at guest-physical {gpa:#x}: {why}, so the front-end could shrink it under the \
         mapping (use a sealable memfd, e.g. QEMU's memory-backend-memfd)"
    )]
    Unprotected {
        /// Guest-physical address of the region.
        gpa: u64,
        /// Why the file cannot be kept from shrinking.
        why: String,
    },
}

/// What the table does with a region whose file it cannot keep from shrinking (see the
/// [module docs](self)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MemoryPolicy {
    /// Map it and log a warning: a front-end that shrinks it kills the process.
    #[default]
    Lenient,
    /// Refuse it with [`MemError::Unprotected`].
    Strict,
}

/// Keeps `file` from shrinking. `Err` with the reason when it cannot be.
pub(crate) fn seal_against_shrinking(file: &File) -> Result<(), String> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    match fcntl(file, FcntlArg::F_GET_SEALS) {
        Ok(bits) => {
            let seals = SealFlag::from_bits_truncate(bits);
            if seals.contains(SealFlag::F_SEAL_SHRINK) {
                Ok(())
            } else if seals.contains(SealFlag::F_SEAL_SEAL) {
                Err(
                    "it forbids new seals (a tmpfs or hugetlbfs file, or a memfd created \
                     without MFD_ALLOW_SEALING) and is not sealed against shrinking"
                        .into(),
                )
            } else {
                fcntl(file, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK))
                    .map(drop)
                    .map_err(|e| format!("sealing its memfd against shrinking failed: {e}"))
            }
        }
        Err(nix::errno::Errno::EINVAL) => {
            Err("it is not a memfd (a regular or hugetlbfs file cannot be sealed)".into())
        }
        Err(e) => Err(format!("reading its seals failed: {e}")),
    }
}

/// Why [`sealed_file_len`] refused a descriptor the front-end shares.
#[derive(Debug)]
pub(crate) enum SharedFileError {
    /// Reading its metadata failed.
    Stat(std::io::Error),
    /// Not a regular file (memfd): a pipe, socket or device.
    NotAFile,
    /// It cannot be sealed against shrinking ([`seal_against_shrinking`]'s reason).
    Unprotected(String),
}

/// The size of `file`, a descriptor the front-end shares to be mapped (a log, an inflight
/// area), once checked to be a regular file and sealed against shrinking: the size
/// returned cannot go down any more, so a mapping within it cannot fault (SIGBUS).
pub(crate) fn sealed_file_len(file: &File) -> Result<u64, SharedFileError> {
    let meta = file.metadata().map_err(SharedFileError::Stat)?;
    if !meta.file_type().is_file() {
        return Err(SharedFileError::NotAFile);
    }
    seal_against_shrinking(file).map_err(SharedFileError::Unprotected)?;
    Ok(file.metadata().map_err(SharedFileError::Stat)?.len())
}

/// One mapped region.
#[derive(Debug, Clone)]
struct Region {
    info: MemoryRegion,
    mapping: Arc<GuestRegionMmap>,
}

impl Region {
    fn contains_user(&self, uva: u64) -> bool {
        uva >= self.info.user_addr && uva - self.info.user_addr < self.info.memory_size
    }
}

/// The memory table of one session. See the [module docs](self).
#[derive(Debug)]
pub struct MemoryTable {
    /// Regions sorted by guest-physical address.
    regions: Vec<Region>,
    published: GuestMemoryAtomic<GuestMemoryMmap>,
    policy: MemoryPolicy,
}

impl Default for MemoryTable {
    fn default() -> Self {
        Self::new()
    }
}

/// The protocol's rules for one region ([`vhost_proto::region`]), and a size this process
/// can map.
fn check_region(r: &MemoryRegion) -> Result<(), MemError> {
    vhost_proto::region::check_region(r).map_err(|fault| MemError::InvalidRegion {
        gpa: r.guest_phys_addr,
        fault,
    })?;
    if usize::try_from(r.memory_size).is_err() {
        return Err(MemError::TooLarge {
            gpa: r.guest_phys_addr,
            size: r.memory_size,
        });
    }
    Ok(())
}

/// Maps one region from `fd` at its `mmap_offset`, shared, after keeping the file from
/// shrinking (as `policy` allows) and checking the region against the file's size.
fn map_region(r: &MemoryRegion, fd: OwnedFd, policy: MemoryPolicy) -> Result<Region, MemError> {
    check_region(r)?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(MemError::Stat)?;
    let protected = if meta.file_type().is_file() {
        seal_against_shrinking(&file)
    } else {
        Err("it is not a regular file or memfd (a device, say), whose size is not checked".into())
    };
    if let Err(why) = protected {
        match policy {
            MemoryPolicy::Strict => {
                return Err(MemError::Unprotected {
                    gpa: r.guest_phys_addr,
                    why,
                })
            }
            MemoryPolicy::Lenient => log::warn!(
                "memory region at guest-physical {:#x}: {why}; a front-end that shrinks it \
                 kills this process (--strict-memory refuses such regions)",
                r.guest_phys_addr
            ),
        }
    }
    // Sized after sealing: the size cannot go down any more.
    let meta = file.metadata().map_err(MemError::Stat)?;
    // Only regular files (memfd, tmpfs, hugetlbfs) have a size that bounds the mapping.
    if meta.file_type().is_file() {
        let end = r.mmap_offset + r.memory_size;
        if end > meta.len() {
            return Err(MemError::PastEndOfFile {
                gpa: r.guest_phys_addr,
                mmap_offset: r.mmap_offset,
                size: r.memory_size,
                file_size: meta.len(),
            });
        }
    }
    let gpa = r.guest_phys_addr;
    // Checked by `check_region`.
    let size = r.memory_size as usize;
    let mmap = MmapRegion::from_file(FileOffset::new(file, r.mmap_offset), size)
        .map_err(|source| MemError::Mmap { gpa, source })?;
    let mapping = GuestRegionMmap::new(mmap, GuestAddress(gpa)).map_err(MemError::GuestMemory)?;
    Ok(Region {
        info: *r,
        mapping: Arc::new(mapping),
    })
}

impl MemoryTable {
    /// An empty table, published as an empty map.
    pub fn new() -> Self {
        MemoryTable {
            regions: Vec::new(),
            published: GuestMemoryAtomic::new(GuestMemoryMmap::new()),
            policy: MemoryPolicy::default(),
        }
    }

    /// Sets what happens to regions whose file cannot be kept from shrinking.
    pub fn set_policy(&mut self, policy: MemoryPolicy) {
        self.policy = policy;
    }

    /// What happens to regions (and the dirty log) whose file cannot be kept from shrinking.
    pub fn policy(&self) -> MemoryPolicy {
        self.policy
    }

    /// The end of the highest region in guest-physical address space (0 without regions).
    pub fn guest_end(&self) -> u64 {
        self.regions
            .iter()
            .map(|r| r.info.guest_phys_addr + r.info.memory_size)
            .max()
            .unwrap_or(0)
    }

    /// The published memory: clone it into workers; `memory()` gives the current snapshot.
    pub fn atomic(&self) -> &GuestMemoryAtomic<GuestMemoryMmap> {
        &self.published
    }

    /// Number of regions.
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// True when no region is mapped.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// The regions as the front-end described them, sorted by guest-physical address.
    pub fn regions(&self) -> impl Iterator<Item = MemoryRegion> + '_ {
        self.regions.iter().map(|r| r.info)
    }

    /// SET_MEM_TABLE: replaces every region. Each region is mapped from its descriptor
    /// (one per region, in order) before anything is published.
    pub fn replace(&mut self, regions: &[MemoryRegion], fds: Vec<OwnedFd>) -> Result<(), MemError> {
        if regions.len() != fds.len() {
            return Err(MemError::FdCount {
                regions: regions.len(),
                fds: fds.len(),
            });
        }
        if regions.len() > MAX_MEM_SLOTS {
            return Err(MemError::TooManyRegions { max: MAX_MEM_SLOTS });
        }
        let mut new: Vec<Region> = Vec::with_capacity(regions.len());
        for (r, fd) in regions.iter().zip(fds) {
            check_region(r)?;
            Self::check_overlap(&new, r)?;
            new.push(map_region(r, fd, self.policy)?);
        }
        new.sort_by_key(|r| r.info.guest_phys_addr);
        self.publish(new)
    }

    /// ADD_MEM_REG: maps one more region.
    pub fn add(&mut self, region: &MemoryRegion, fd: OwnedFd) -> Result<(), MemError> {
        if self.regions.len() >= MAX_MEM_SLOTS {
            return Err(MemError::TooManyRegions { max: MAX_MEM_SLOTS });
        }
        check_region(region)?;
        Self::check_overlap(&self.regions, region)?;
        let mapped = map_region(region, fd, self.policy)?;
        let mut new = self.regions.clone();
        let at = new.partition_point(|r| r.info.guest_phys_addr < region.guest_phys_addr);
        new.insert(at, mapped);
        self.publish(new)
    }

    /// REM_MEM_REG: unmaps the region with this guest-physical address, user address and
    /// size. The mapping goes away when the last worker using it lets go.
    pub fn remove(&mut self, region: &MemoryRegion) -> Result<(), MemError> {
        let pos = self
            .regions
            .iter()
            .position(|r| {
                r.info.guest_phys_addr == region.guest_phys_addr
                    && r.info.user_addr == region.user_addr
                    && r.info.memory_size == region.memory_size
            })
            .ok_or(MemError::NoSuchRegion {
                gpa: region.guest_phys_addr,
                user_addr: region.user_addr,
                size: region.memory_size,
            })?;
        let mut new = self.regions.clone();
        new.remove(pos);
        self.publish(new)
    }

    /// Drops every region (the published map becomes empty).
    pub fn clear(&mut self) {
        // An empty vector always publishes.
        let _ = self.publish(Vec::new());
    }

    /// Translates a front-end virtual address to guest-physical, requiring `len` bytes from
    /// it to lie in the same region. `None` when no region holds the range.
    pub fn user_to_guest(&self, uva: u64, len: u64) -> Option<GuestAddress> {
        let r = self.regions.iter().find(|r| r.contains_user(uva))?;
        let offset = uva - r.info.user_addr;
        if len > r.info.memory_size - offset {
            return None;
        }
        Some(GuestAddress(r.info.guest_phys_addr + offset))
    }

    /// The protocol's overlap rule ([`vhost_proto::region::check_overlap`]) against the
    /// regions `existing` holds.
    fn check_overlap(existing: &[Region], r: &MemoryRegion) -> Result<(), MemError> {
        vhost_proto::region::check_overlap(r, existing.iter().map(|o| &o.info)).map_err(|fault| {
            MemError::Overlap {
                gpa: r.guest_phys_addr,
                other: fault
                    .other()
                    .and_then(|i| existing.get(i))
                    .map_or(0, |o| o.info.guest_phys_addr),
            }
        })
    }

    fn publish(&mut self, regions: Vec<Region>) -> Result<(), MemError> {
        let map = if regions.is_empty() {
            GuestMemoryMmap::new()
        } else {
            GuestMemoryMmap::from_arc_regions(
                regions.iter().map(|r| Arc::clone(&r.mapping)).collect(),
            )
            .map_err(MemError::GuestMemory)?
        };
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(map);
        self.regions = regions;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use vm_memory::{Bytes, GuestAddressSpace, GuestMemory as _};

    fn memfd(size: u64) -> File {
        let fd =
            nix::sys::memfd::memfd_create(c"mem-table-test", nix::sys::memfd::MFdFlags::empty())
                .unwrap();
        let f = File::from(fd);
        f.set_len(size).unwrap();
        f
    }

    fn dup(f: &File) -> OwnedFd {
        f.as_fd().try_clone_to_owned().unwrap()
    }

    fn region(gpa: u64, size: u64, uva: u64, off: u64) -> MemoryRegion {
        MemoryRegion {
            guest_phys_addr: gpa,
            memory_size: size,
            user_addr: uva,
            mmap_offset: off,
        }
    }

    #[test]
    fn replace_two_regions_translates_user_addresses_and_honours_offsets() {
        let f = memfd(0x3_0000);
        let mut t = MemoryTable::new();
        let regs = [
            region(0x10_0000, 0x1_0000, 0x7f00_0000_0000, 0x2_0000),
            region(0, 0x1_0000, 0x5500_0000_0000, 0),
        ];
        t.replace(&regs, vec![dup(&f), dup(&f)]).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.user_to_guest(0x7f00_0000_0010, 16),
            Some(GuestAddress(0x10_0010))
        );
        assert_eq!(
            t.user_to_guest(0x5500_0000_fff0, 16),
            Some(GuestAddress(0xfff0))
        );
        // Runs past the end of its region.
        assert_eq!(t.user_to_guest(0x5500_0000_fff0, 17), None);
        assert_eq!(t.user_to_guest(0x1234, 1), None);
        // The second region lives at offset 0x20000 in the file.
        let mem = t.atomic().memory();
        mem.write_obj(0xabcd_u16, GuestAddress(0x10_0000)).unwrap();
        let mut b = [0u8; 2];
        nix::sys::uio::pread(f.as_fd(), &mut b, 0x2_0000).unwrap();
        assert_eq!(u16::from_ne_bytes(b), 0xabcd);
    }

    #[test]
    fn region_past_end_of_file_is_refused_and_table_unchanged() {
        let f = memfd(0x1_0000);
        let mut t = MemoryTable::new();
        let err = t
            .replace(&[region(0, 0x1_0000, 0x1000_0000, 0x1000)], vec![dup(&f)])
            .unwrap_err();
        assert!(
            matches!(
                err,
                MemError::PastEndOfFile {
                    file_size: 0x1_0000,
                    ..
                }
            ),
            "{err}"
        );
        let err = t
            .add(&region(0, 0x2_0000, 0x1000_0000, 0), dup(&f))
            .unwrap_err();
        assert!(matches!(err, MemError::PastEndOfFile { .. }), "{err}");
        assert!(t.is_empty());
    }

    #[test]
    fn add_overlapping_region_is_refused_in_either_address_space() {
        let f = memfd(0x4_0000);
        let mut t = MemoryTable::new();
        t.add(&region(0, 0x1_0000, 0x1000_0000, 0), dup(&f))
            .unwrap();
        let e = t.add(&region(0x8000, 0x1_0000, 0x2000_0000, 0x1_0000), dup(&f));
        assert!(matches!(e, Err(MemError::Overlap { .. })));
        let e = t.add(&region(0x10_0000, 0x1_0000, 0x1000_8000, 0x1_0000), dup(&f));
        assert!(matches!(e, Err(MemError::Overlap { .. })));
        let e = t.replace(
            &[
                region(0, 0x1_0000, 0, 0),
                region(0xffff, 0x1_0000, 0x10_0000, 0),
            ],
            vec![dup(&f), dup(&f)],
        );
        assert!(matches!(e, Err(MemError::Overlap { .. })));
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn zero_size_and_overflowing_regions_are_invalid() {
        let f = memfd(0x1000);
        let mut t = MemoryTable::new();
        let e = t.add(&region(0, 0, 0, 0), dup(&f));
        assert!(matches!(e, Err(MemError::InvalidRegion { .. })));
        let e = t.add(&region(u64::MAX - 10, 0x1000, 0, 0), dup(&f));
        assert!(matches!(e, Err(MemError::InvalidRegion { .. })));
        let e = t.replace(&[region(0, 0x1000, 0, 0)], vec![]);
        assert!(matches!(e, Err(MemError::FdCount { regions: 1, fds: 0 })));
    }

    #[test]
    fn add_holds_509_regions_and_refuses_the_510th_then_remove_frees_a_slot() {
        let page = 0x1000u64;
        let f = memfd(page * (MAX_MEM_SLOTS as u64 + 1));
        let mut t = MemoryTable::new();
        for i in 0..MAX_MEM_SLOTS as u64 {
            t.add(
                &region(i * page, page, 0x7f00_0000_0000 + i * page, i * page),
                dup(&f),
            )
            .unwrap();
        }
        assert_eq!(t.len(), MAX_MEM_SLOTS);
        assert_eq!(t.atomic().memory().num_regions(), MAX_MEM_SLOTS);
        let extra = region(0x1000_0000, page, 0x1000_0000, 0);
        assert!(matches!(
            t.add(&extra, dup(&f)),
            Err(MemError::TooManyRegions { max: 509 })
        ));
        t.remove(&region(5 * page, page, 0x7f00_0000_0000 + 5 * page, 0))
            .unwrap();
        assert_eq!(t.user_to_guest(0x7f00_0000_0000 + 5 * page, 1), None);
        t.add(&extra, dup(&f)).unwrap();
        assert_eq!(t.len(), MAX_MEM_SLOTS);
    }

    #[test]
    fn remove_unknown_region_is_an_error() {
        let f = memfd(0x1000);
        let mut t = MemoryTable::new();
        t.add(&region(0, 0x1000, 0x1000, 0), dup(&f)).unwrap();
        let e = t.remove(&region(0, 0x1000, 0x2000, 0));
        assert!(matches!(e, Err(MemError::NoSuchRegion { .. })));
        assert_eq!(t.len(), 1);
    }

    fn sealable_memfd(size: u64) -> File {
        let flags = nix::sys::memfd::MFdFlags::MFD_ALLOW_SEALING;
        let fd = nix::sys::memfd::memfd_create(c"mem-table-sealable", flags).unwrap();
        let f = File::from(fd);
        f.set_len(size).unwrap();
        f
    }

    fn seals(f: &File) -> nix::fcntl::SealFlag {
        let bits = nix::fcntl::fcntl(f, nix::fcntl::FcntlArg::F_GET_SEALS).unwrap();
        nix::fcntl::SealFlag::from_bits_truncate(bits)
    }

    #[test]
    fn a_sealable_memfd_is_sealed_against_shrinking_before_it_is_mapped() {
        let f = sealable_memfd(0x2000);
        let mut t = MemoryTable::new();
        t.set_policy(MemoryPolicy::Strict);
        t.replace(&[region(0, 0x2000, 0x1000, 0)], vec![dup(&f)])
            .unwrap();
        assert!(seals(&f).contains(nix::fcntl::SealFlag::F_SEAL_SHRINK));
        // The front-end can no longer shrink it (no SIGBUS), but can still grow it.
        let e = f.set_len(0x1000).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EPERM));
        f.set_len(0x4000).unwrap();
        let mem = t.atomic().memory();
        mem.write_obj(1u8, GuestAddress(0x1fff)).unwrap();
    }

    #[test]
    fn a_memfd_already_sealed_against_shrinking_is_mapped_under_the_strict_policy() {
        let f = sealable_memfd(0x1000);
        let add = nix::fcntl::FcntlArg::F_ADD_SEALS(
            nix::fcntl::SealFlag::F_SEAL_SHRINK | nix::fcntl::SealFlag::F_SEAL_SEAL,
        );
        nix::fcntl::fcntl(&f, add).unwrap();
        let mut t = MemoryTable::new();
        t.set_policy(MemoryPolicy::Strict);
        t.add(&region(0, 0x1000, 0x1000, 0), dup(&f)).unwrap();
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn unsealable_memfd_and_regular_file_are_refused_when_strict_and_served_when_lenient() {
        // A memfd created without MFD_ALLOW_SEALING forbids new seals.
        let unsealable = memfd(0x1000);
        // A regular file (a temporary one, unlinked once open).
        let file = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        file.set_len(0x1000).unwrap();
        for f in [&unsealable, &file] {
            let mut t = MemoryTable::new();
            t.set_policy(MemoryPolicy::Strict);
            let e = t
                .replace(&[region(0, 0x1000, 0x1000, 0)], vec![dup(f)])
                .unwrap_err();
            assert!(matches!(e, MemError::Unprotected { gpa: 0, .. }), "{e}");
            assert!(t.is_empty());
            let mut t = MemoryTable::new();
            t.replace(&[region(0, 0x1000, 0x1000, 0)], vec![dup(f)])
                .unwrap();
            assert_eq!(t.len(), 1, "lenient: served with a warning");
        }
    }

    #[test]
    fn old_snapshot_stays_readable_after_replace() {
        let a = memfd(0x1000);
        let b = memfd(0x1000);
        let mut t = MemoryTable::new();
        t.replace(&[region(0, 0x1000, 0x1000, 0)], vec![dup(&a)])
            .unwrap();
        let old = t.atomic().memory();
        old.write_obj(7u8, GuestAddress(0)).unwrap();
        t.replace(&[region(0, 0x1000, 0x1000, 0)], vec![dup(&b)])
            .unwrap();
        // The old snapshot still maps file `a`; the new one maps file `b`.
        assert_eq!(old.read_obj::<u8>(GuestAddress(0)).unwrap(), 7);
        assert_eq!(
            t.atomic().memory().read_obj::<u8>(GuestAddress(0)).unwrap(),
            0
        );
        t.clear();
        assert_eq!(t.atomic().memory().num_regions(), 0);
    }
}
