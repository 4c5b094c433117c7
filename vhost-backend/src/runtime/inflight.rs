//! Inflight I/O tracking (INFLIGHT_SHMFD): the shared region that lets a restarted back-end
//! resubmit the requests its predecessor popped and never completed.
//!
//! At every start QEMU asks for the region once (GET_INFLIGHT_FD), keeps its descriptor and
//! hands it back (SET_INFLIGHT_FD) before the vring messages — also to a back-end started
//! after the previous one died. The region holds, per queue, the spec's split-ring layout
//! ([`vhost_proto::inflight`]): one entry per descriptor head saying whether it is in flight
//! and in which order it was taken, plus the bookkeeping of the last batch of used entries.
//!
//! The back-end keeps the region recoverable at every instruction (spec "Inflight I/O
//! tracking"):
//!
//! - **pop** ([`QueueInflight::mark`]): the head's `counter` is set from a per-ring counter,
//!   then its `inflight` flag.
//! - **publish**, one used entry at a time (a batch of one; `virtio-queue` moves the used
//!   index with every entry): [`QueueInflight::before_used`] links the head into the
//!   last-batch list (`next`, then `last_batch_head`), the used entry and index are written,
//!   then [`QueueInflight::after_used`] clears the flag and records the used index.
//! - **start** ([`QueueInflight::recover`]): when the region's `used_idx` differs from the
//!   used ring's, a completion was published but not recorded: the flags of the last batch
//!   are cleared. Every head still flagged is then resubmitted, in counter order, before any
//!   new available entry; the ring resumes taking available entries at
//!   `used index + resubmitted` (every entry taken is either on the used ring or in flight).
//!   An uninitialised region (version 0: a first start, a migration destination) is
//!   initialised and the ring resumes at SET_VRING_BASE, as without tracking.
//! - **after a restart**: the dead back-end may have published used entries and died before
//!   its call, and the driver moves `used_event` only when it reaps. A ring resuming an
//!   initialised region therefore calls the driver once as soon as it has a call eventfd
//!   (QEMU sends SET_VRING_CALL after SET_VRING_KICK), and its first notification decision
//!   calls whatever EVENT_IDX says (as libvhost-user's `signalled_used_valid` and DPDK do).
//! - **stop** (GET_VRING_BASE): resubmitted requests not yet handed to the device count as
//!   outstanding; the device gets them while the stop waits, and a stop that cannot run
//!   them (the ring disabled, the device paused past the bound) fails rather than answer a
//!   base that covers them. The region keeps them flagged.
//!
//! A stop that gave up waiting leaves the flags of the requests the device still holds
//! set: a restart *in the same process* (the front-end reconnecting to a daemon that kept
//! running) resubmits them while the device may still be executing them. Their late
//! completions are dropped (an older generation), but the device runs those requests
//! twice, possibly at once.
//!
//! The front-end can write the region at any time: every value read back from it (`next`,
//! counters, `desc_num`, the flags) is only used within bounds this module fixed itself from
//! the validated queue size. The region is accessed through `vm-memory`'s bounds-checked,
//! atomic loads and stores: no `unsafe` here.
//!
//! Packed rings have their own layout in the spec, chosen when the area is created and
//! mapped (the front-end sends SET_FEATURES before GET_INFLIGHT_FD and SET_INFLIGHT_FD, so
//! the layout follows VIRTIO_F_RING_PACKED as acked then): their queue regions are tracked
//! by [`super::inflight_packed`].

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vhost_proto::inflight::{
    split_area_size, split_offsets as off, split_queue_region_size, INFLIGHT_VERSION,
};
use vhost_proto::Inflight;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{
    Address, Bytes, FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, GuestRegionMmap,
    MmapRegion, VolatileMemory, VolatileSlice,
};

use super::inflight_packed::packed_queue_region_size;
use super::mem_table::{sealed_file_len, SharedFileError};

/// Why GET_INFLIGHT_FD or SET_INFLIGHT_FD was refused, or a ring could not be tracked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InflightError {
    /// A queue count of 0 or more than the device has.
    #[error("inflight area for {asked} queues: the device has {max}")]
    QueueCount {
        /// The count asked for.
        asked: u16,
        /// The device's queue count.
        max: usize,
    },
    /// A queue size of 0 or over the device's maximum.
    #[error("inflight area with queue size {asked}: must be in 1..={max}")]
    QueueSize {
        /// The size asked for.
        asked: u16,
        /// The device's maximum queue size.
        max: u16,
    },
    /// SET_INFLIGHT_FD whose `mmap_size` cannot hold the queues it names.
    #[error(
        "inflight area of {mmap_size} bytes: {num_queues} queues of {queue_size} need {needed}"
    )]
    TooSmall {
        /// The size given.
        mmap_size: u64,
        /// Queues named.
        num_queues: u16,
        /// Their size.
        queue_size: u16,
        /// Bytes they need.
        needed: u64,
    },
    /// The descriptor is not a regular file (memfd): a pipe, socket or device cannot be
    /// mapped as the area.
    #[error("the inflight descriptor is not a regular file or memfd")]
    NotAFile,
    /// The area's file is not sealed against shrinking and cannot be (a memfd created
    /// without `MFD_ALLOW_SEALING`, a tmpfs or plain file): it could shrink under the mapping.
    #[error("the inflight area: {0}, so the front-end could shrink it under the mapping")]
    Unprotected(String),
    /// `mmap_offset + size` runs past the end of the file (or overflows).
    #[error(
        "inflight area at offset {offset:#x}, {size} bytes, runs past its file ({file_size} bytes)"
    )]
    PastEndOfFile {
        /// `mmap_offset`.
        offset: u64,
        /// Bytes needed.
        size: u64,
        /// The file's size.
        file_size: u64,
    },
    /// Reading the descriptor's metadata, creating or sizing the memfd failed.
    #[error("inflight area: {0}")]
    Io(#[source] std::io::Error),
    /// Mapping the area failed (an offset that is not page-aligned, say).
    #[error("mapping the inflight area: {0}")]
    Mmap(#[source] vm_memory::mmap::MmapRegionError),
    /// Building the area's memory object failed.
    #[error("mapping the inflight area: {0}")]
    Map(#[source] vm_memory::Error),
    /// A ring whose layout (split or packed) is not the one the area was made for.
    #[error("vring {index}: the inflight area has the {area} layout, the ring is {ring}")]
    Layout {
        /// The ring.
        index: u16,
        /// The area's layout.
        area: &'static str,
        /// The ring's layout.
        ring: &'static str,
    },
    /// A packed queue region whose contents contradict themselves (the front-end wrote
    /// it, or it is not a region of this layout): the ring is not started from it.
    #[error("vring {index}: the packed inflight region is inconsistent: {why}")]
    Corrupt {
        /// The ring.
        index: u16,
        /// What is wrong.
        why: String,
    },
    /// A ring larger than the area's queue regions.
    #[error("vring {index}: size {size} is larger than the inflight area's queue size {desc_num}")]
    RingTooLarge {
        /// The ring.
        index: u16,
        /// Its size.
        size: u16,
        /// Entries per queue region.
        desc_num: u16,
    },
}

/// Checks a queue count and size against the device's.
fn check_shape(
    num_queues: u16,
    queue_size: u16,
    max_queues: usize,
    max_size: u16,
) -> Result<(), InflightError> {
    if num_queues == 0 || usize::from(num_queues) > max_queues {
        return Err(InflightError::QueueCount {
            asked: num_queues,
            max: max_queues,
        });
    }
    if queue_size == 0 || queue_size > max_size {
        return Err(InflightError::QueueSize {
            asked: queue_size,
            max: max_size,
        });
    }
    Ok(())
}

/// Bytes of an area of `num_queues` queue regions of `queue_size` entries in the split or
/// the `packed` layout.
fn area_size(num_queues: u16, queue_size: u16, packed: bool) -> u64 {
    if packed {
        u64::from(num_queues) * packed_queue_region_size(queue_size)
    } else {
        split_area_size(num_queues, queue_size)
    }
}

/// GET_INFLIGHT_FD: a zeroed area for `info.num_queues` queues of `info.queue_size` in the
/// split or the `packed` layout, in a memfd sealed against growing, shrinking and further
/// seals. Returns the reply and the descriptor to send; the back-end keeps no mapping (the
/// front-end hands the descriptor back with SET_INFLIGHT_FD).
pub(crate) fn create_area(
    info: &Inflight,
    max_queues: usize,
    max_size: u16,
    packed: bool,
) -> Result<(Inflight, OwnedFd), InflightError> {
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    use nix::sys::memfd::{memfd_create, MFdFlags};
    check_shape(info.num_queues, info.queue_size, max_queues, max_size)?;
    let size = area_size(info.num_queues, info.queue_size, packed);
    let io = |e: nix::errno::Errno| InflightError::Io(e.into());
    let fd = memfd_create(
        c"vhost-inflight",
        MFdFlags::MFD_ALLOW_SEALING | MFdFlags::MFD_CLOEXEC,
    )
    .map_err(io)?;
    let file = File::from(fd);
    // A fresh memfd reads as zeros: the area starts with every queue region uninitialised.
    file.set_len(size).map_err(InflightError::Io)?;
    fcntl(
        &file,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_SEAL,
        ),
    )
    .map_err(io)?;
    let reply = Inflight {
        mmap_size: size,
        mmap_offset: 0,
        num_queues: info.num_queues,
        queue_size: info.queue_size,
        padding: [0; 4],
    };
    Ok((reply, file.into()))
}

/// A mapped inflight area (SET_INFLIGHT_FD), shared by the rings it covers.
#[derive(Debug)]
pub(crate) struct InflightArea {
    /// The area as one region at address 0: offsets are addresses.
    mem: GuestMemoryMmap,
    num_queues: u16,
    queue_size: u16,
    /// The queue regions have the packed layout.
    packed: bool,
}

impl InflightArea {
    /// Validates SET_INFLIGHT_FD (queue count and size against the device's, `mmap_size`
    /// against what they need in the split or `packed` layout, the descriptor a regular
    /// file sealed against shrinking and long enough) and maps the queue regions.
    pub(crate) fn open(
        info: &Inflight,
        fd: OwnedFd,
        max_queues: usize,
        max_size: u16,
        packed: bool,
    ) -> Result<Self, InflightError> {
        check_shape(info.num_queues, info.queue_size, max_queues, max_size)?;
        let needed = area_size(info.num_queues, info.queue_size, packed);
        if info.mmap_size < needed {
            return Err(InflightError::TooSmall {
                mmap_size: info.mmap_size,
                num_queues: info.num_queues,
                queue_size: info.queue_size,
                needed,
            });
        }
        let file = File::from(fd);
        // Whatever the memory policy: the area is read at every ring start, and a file
        // shrunk under the mapping would kill the process (SIGBUS) there. QEMU hands back
        // the sealed memfd GET_INFLIGHT_FD made (libvhost-user's and DPDK's are sealed too).
        let file_size = sealed_file_len(&file).map_err(|e| match e {
            SharedFileError::Stat(e) => InflightError::Io(e),
            SharedFileError::NotAFile => InflightError::NotAFile,
            SharedFileError::Unprotected(why) => InflightError::Unprotected(why),
        })?;
        let past = || InflightError::PastEndOfFile {
            offset: info.mmap_offset,
            size: needed,
            file_size,
        };
        let end = info.mmap_offset.checked_add(needed).ok_or_else(past)?;
        if end > file_size {
            return Err(past());
        }
        // Only what the queues need is mapped; `needed` is at most 256 * 524352 bytes.
        let len = usize::try_from(needed).map_err(|_| past())?;
        let mmap = MmapRegion::from_file(FileOffset::new(file, info.mmap_offset), len)
            .map_err(InflightError::Mmap)?;
        let region = GuestRegionMmap::new(mmap, GuestAddress(0)).map_err(InflightError::Map)?;
        let mem = GuestMemoryMmap::from_regions(vec![region]).map_err(InflightError::Map)?;
        Ok(InflightArea {
            mem,
            num_queues: info.num_queues,
            queue_size: info.queue_size,
            packed,
        })
    }

    /// Entries per queue region.
    pub(crate) fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// Whether the queue regions have the packed layout.
    pub(crate) fn is_packed(&self) -> bool {
        self.packed
    }

    /// Whether the area has a queue region for ring `index`.
    pub(crate) fn covers(&self, index: u16) -> bool {
        index < self.num_queues
    }

    // Every address the queue types pass lies inside the mapped area and is naturally
    // aligned (the area is page-aligned, queue regions 64-byte aligned, fields at their
    // natural offsets): the accesses cannot fail, and a failure is logged rather than
    // trusted.
    pub(crate) fn store<T: vm_memory::AtomicAccess>(&self, v: T, at: GuestAddress) {
        if let Err(e) = self.mem.store(v, at, Ordering::Release) {
            log::error!("inflight area: writing at {:#x}: {e}", at.0);
        }
    }

    pub(crate) fn load<T: vm_memory::AtomicAccess + Default>(&self, at: GuestAddress) -> T {
        self.mem.load(at, Ordering::Acquire).unwrap_or_else(|e| {
            log::error!("inflight area: reading at {:#x}: {e}", at.0);
            T::default()
        })
    }

    /// Queues the area covers.
    pub(crate) fn num_queues(&self) -> u16 {
        self.num_queues
    }

    /// The split-ring tracking of queue `index`, or `None` when the area does not cover it
    /// or has the packed layout.
    pub(crate) fn queue(self: &Arc<Self>, index: u16) -> Option<QueueInflight> {
        (index < self.num_queues && !self.packed).then(|| QueueInflight {
            area: Arc::clone(self),
            base: u64::from(index) * split_queue_region_size(self.queue_size),
            desc_num: self.queue_size,
            counter: 0,
        })
    }
}

/// What [`QueueInflight::recover`] found.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Heads to resubmit, in the order they were first taken.
    pub(crate) heads: Vec<u16>,
    /// The region's used index differed from the ring's: a half-published completion was
    /// repaired.
    pub(crate) repaired: bool,
    /// The region was uninitialised (version 0): no back-end tracked this ring in it before
    /// (a first start, a migration destination), so it says nothing about the ring.
    pub(crate) fresh: bool,
}

/// One ring's queue region. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct QueueInflight {
    area: Arc<InflightArea>,
    /// Offset of the queue region in the area.
    base: u64,
    /// Entries in the region (the validated queue size; the region's own `desc_num` field is
    /// never read).
    desc_num: u16,
    /// The counter the next head taken gets.
    counter: u64,
}

#[cfg(feature = "test-utils")]
pub(crate) use super::testing::crash_point;

/// Fault injection is compiled in only with the `test-utils` feature.
#[cfg(not(feature = "test-utils"))]
#[inline(always)]
pub(crate) fn crash_point(_: &'static str) {}

impl QueueInflight {
    fn header(&self, field: u64) -> GuestAddress {
        GuestAddress(self.base + field)
    }

    /// Entry `head`'s `field`; `head < desc_num` (the callers' bound).
    fn desc(&self, head: u16, field: u64) -> GuestAddress {
        GuestAddress(self.base + off::DESCS + u64::from(head) * off::DESC_SIZE + field)
    }

    fn store<T: vm_memory::AtomicAccess>(&self, v: T, at: GuestAddress) {
        self.area.store(v, at);
    }

    fn load<T: vm_memory::AtomicAccess + Default>(&self, at: GuestAddress) -> T {
        self.area.load(at)
    }

    /// Pop: `head` (below the ring size, itself at most `desc_num`) was taken from the
    /// available ring. Counter first, then the flag.
    pub(crate) fn mark(&mut self, head: u16) {
        if head >= self.desc_num {
            return;
        }
        self.store(self.counter, self.desc(head, off::DESC_COUNTER));
        self.counter = self.counter.wrapping_add(1);
        crash_point("marked: counter written, flag not yet");
        self.store(1u8, self.desc(head, off::DESC_INFLIGHT));
        crash_point("marked in flight, not yet completed");
    }

    /// Publish, before the used entry of `head` is written: links it into the last-batch
    /// list.
    pub(crate) fn before_used(&self, head: u16) {
        if head >= self.desc_num {
            return;
        }
        let last: u16 = self.load(self.header(off::LAST_BATCH_HEAD));
        self.store(last, self.desc(head, off::DESC_NEXT));
        crash_point("publishing: next linked, last_batch_head not yet");
        self.store(head, self.header(off::LAST_BATCH_HEAD));
        crash_point("publishing: last_batch_head set, used entry not yet");
    }

    /// Publish, after the used entry of `head` is written and the used index moved to
    /// `used_idx`: the flag is cleared, then the used index recorded.
    pub(crate) fn after_used(&self, head: u16, used_idx: u16) {
        if head >= self.desc_num {
            return;
        }
        crash_point("publishing: used index moved, flag not yet cleared");
        self.store(0u8, self.desc(head, off::DESC_INFLIGHT));
        crash_point("publishing: flag cleared, used_idx not yet recorded");
        self.store(used_idx, self.header(off::USED_IDX));
    }

    /// Start of ring of `ring_size` entries (at most `desc_num`) whose used ring's index is
    /// `used_idx`: repairs a half-published completion and lists the heads to resubmit in
    /// counter order. An uninitialised region (version 0) is initialised: nothing to
    /// resubmit. The next head taken gets a counter above every resubmitted one.
    pub(crate) fn recover(&mut self, ring_size: u16, used_idx: u16) -> Recovery {
        let mut rec = Recovery::default();
        let version: u16 = self.load(self.header(off::VERSION));
        if version == 0 {
            for head in 0..self.desc_num {
                self.store(0u8, self.desc(head, off::DESC_INFLIGHT));
            }
            self.store(used_idx, self.header(off::USED_IDX));
            self.store(self.desc_num, self.header(off::DESC_NUM));
            self.store(INFLIGHT_VERSION, self.header(off::VERSION));
            self.counter = 0;
            rec.fresh = true;
            return rec;
        }
        self.store(self.desc_num, self.header(off::DESC_NUM));
        let recorded: u16 = self.load(self.header(off::USED_IDX));
        if recorded != used_idx {
            // Entries published after `used_idx` was last recorded: at most a ring's worth,
            // each in the list from `last_batch_head`.
            let batch = used_idx.wrapping_sub(recorded).min(self.desc_num);
            let mut head: u16 = self.load(self.header(off::LAST_BATCH_HEAD));
            for _ in 0..batch {
                if head >= self.desc_num {
                    break;
                }
                self.store(0u8, self.desc(head, off::DESC_INFLIGHT));
                head = self.load(self.desc(head, off::DESC_NEXT));
            }
            self.store(used_idx, self.header(off::USED_IDX));
            rec.repaired = true;
        }
        let mut found: Vec<(u64, u16)> = Vec::new();
        for head in 0..self.desc_num {
            let flag: u8 = self.load(self.desc(head, off::DESC_INFLIGHT));
            if flag == 0 {
                continue;
            }
            if head >= ring_size {
                // Not a head of this ring: forget it.
                self.store(0u8, self.desc(head, off::DESC_INFLIGHT));
                continue;
            }
            found.push((self.load(self.desc(head, off::DESC_COUNTER)), head));
        }
        found.sort_unstable();
        self.counter = found.last().map_or(0, |&(c, _)| c.wrapping_add(1));
        rec.heads = found.into_iter().map(|(_, h)| h).collect();
        rec
    }
}

/// The descriptors of the chain at `head` of a split ring's descriptor table, read from
/// guest memory: the walk of every split chain, popped from the available ring (whose
/// head `virtio-queue` takes) or left in flight by a previous back-end (whose head comes
/// from the inflight region), so that both end alike. `virtio-queue`'s rules: an indirect
/// table (a multiple of 16 bytes) replaces the rest of the chain, a chain is at most as
/// long as its table, a chain ends at the first descriptor that cannot be read or past
/// 2^32 bytes; and one more: a table nested in a table is yielded with its INDIRECT flag
/// and ends the walk (the request records [`ChainFault::NestedIndirect`]), where
/// `virtio-queue` would end the chain without a word.
///
/// [`ChainFault::NestedIndirect`]: super::ChainFault::NestedIndirect
pub(crate) struct SplitChain<'a> {
    mem: &'a GuestMemoryMmap,
    table: GuestAddress,
    table_len: u16,
    /// The whole current table when it lies in one memory region: each descriptor is then
    /// one bounds-checked load, without a region lookup. `None` otherwise (a table across
    /// regions or partly outside memory), and descriptors are read one by one from `mem`.
    slice: Option<VolatileSlice<'a, ()>>,
    next: u16,
    ttl: u16,
    indirect: bool,
    bytes: u32,
}

impl<'a> SplitChain<'a> {
    pub(crate) fn new(mem: &'a GuestMemoryMmap, table: GuestAddress, size: u16, head: u16) -> Self {
        SplitChain {
            mem,
            table,
            table_len: size,
            slice: table_slice(mem, table, size),
            next: head,
            ttl: size,
            indirect: false,
            bytes: 0,
        }
    }

    /// Descriptor `index` of the current table (`index < table_len`).
    fn read(&self, index: u16) -> Option<Descriptor> {
        let offset = usize::from(index) * 16;
        match &self.slice {
            Some(s) => s.get_ref::<Descriptor>(offset).ok().map(|r| r.load()),
            None => {
                let at = self.table.checked_add(offset as u64)?;
                self.mem.read_obj::<Descriptor>(at).ok()
            }
        }
    }
}

/// The `len` descriptors of the table at `table` as one slice, when one region holds them.
fn table_slice(
    mem: &GuestMemoryMmap,
    table: GuestAddress,
    len: u16,
) -> Option<VolatileSlice<'_, ()>> {
    mem.get_slice(table, usize::from(len) * 16).ok()
}

impl Iterator for SplitChain<'_> {
    type Item = Descriptor;

    fn next(&mut self) -> Option<Descriptor> {
        loop {
            if self.ttl == 0 || self.next >= self.table_len {
                return None;
            }
            let Some(desc) = self.read(self.next) else {
                self.ttl = 0;
                return None;
            };
            if desc.refers_to_indirect_table() {
                let len = desc.len();
                if self.indirect {
                    // A table inside a table: handed on as it is, and the request walking
                    // it records the fault.
                    self.ttl = 0;
                    return Some(desc);
                }
                if len % 16 != 0 || len / 16 > u32::from(u16::MAX) {
                    self.ttl = 0;
                    return None;
                }
                self.table = desc.addr();
                self.table_len = (len / 16) as u16;
                self.slice = table_slice(self.mem, self.table, self.table_len);
                self.next = 0;
                self.ttl = self.table_len;
                self.indirect = true;
                continue;
            }
            // A chain longer than 2^32 bytes is illegal (virtio 1.2, 2.7.5.2).
            self.bytes = self.bytes.checked_add(desc.len())?;
            if desc.has_next() {
                self.next = desc.next();
                self.ttl -= 1;
            } else {
                self.ttl = 0;
            }
            return Some(desc);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(num_queues: u16, queue_size: u16) -> (Arc<InflightArea>, File) {
        let info = Inflight {
            num_queues,
            queue_size,
            ..Inflight::default()
        };
        let (reply, fd) = create_area(&info, 4, 256, false).unwrap();
        let keep = File::from(fd.try_clone().unwrap());
        let a = InflightArea::open(&reply, fd, 4, 256, false).unwrap();
        (Arc::new(a), keep)
    }

    #[test]
    fn created_area_is_sealed_zeroed_and_sized_like_libvhost_user() {
        let info = Inflight {
            num_queues: 2,
            queue_size: 128,
            ..Inflight::default()
        };
        let (reply, fd) = create_area(&info, 2, 256, false).unwrap();
        assert_eq!(reply.mmap_size, 2 * 2112);
        assert_eq!(reply.mmap_offset, 0);
        let f = File::from(fd);
        assert_eq!(f.metadata().unwrap().len(), 4224);
        assert!(f.set_len(100).is_err(), "sealed against shrinking");
        assert!(f.set_len(10_000).is_err(), "sealed against growing");
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut &f, &mut bytes).unwrap();
        assert!(bytes.iter().all(|&b| b == 0));
    }

    #[test]
    fn marks_publish_and_recovery_follow_the_spec() {
        let (a, _f) = area(2, 16);
        let mut q = a.queue(1).unwrap();
        assert!(a.queue(2).is_none());
        // Fresh region: initialised, nothing to resubmit.
        let r = q.recover(16, 5);
        assert!(r.heads.is_empty() && !r.repaired);
        for h in [3, 7, 1] {
            q.mark(h);
        }
        // Head 7 published completely, head 3 half (used index moved, flag not cleared).
        q.before_used(7);
        q.after_used(7, 6);
        q.before_used(3);
        let mut q2 = a.queue(1).unwrap();
        let r = q2.recover(16, 7);
        assert!(r.repaired);
        assert_eq!(r.heads, vec![1], "3 was published, 7 completed; 1 is left");
        // A new head gets a counter after the resubmitted ones.
        q2.mark(9);
        let mut q3 = a.queue(1).unwrap();
        assert_eq!(q3.recover(16, 7).heads, vec![1, 9]);
        // Queue 0's region is untouched by queue 1.
        let mut q0 = a.queue(0).unwrap();
        assert!(q0.recover(16, 0).heads.is_empty());
    }

    /// A resubmitted split chain whose indirect table holds another indirect descriptor:
    /// the nested one is handed on with its flag (the request faults it), and the walk
    /// ends there.
    #[test]
    fn a_resubmitted_chain_hands_on_a_nested_indirect_table_and_ends() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let put = |at: u64, addr: u64, len: u32, flags: u16, next: u16| {
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        };
        // Head 0 of the table at 0x1000: an indirect table of three at 0x2000.
        put(0x1000, 0x2000, 48, 4, 0);
        put(0x2000, 0x4000, 16, 1, 1);
        put(0x2010, 0x3000, 32, 4 | 1, 2);
        put(0x2020, 0x5000, 16, 2, 0);
        let got: Vec<_> = SplitChain::new(&mem, GuestAddress(0x1000), 8, 0)
            .map(|d| (d.addr().0, d.refers_to_indirect_table()))
            .collect();
        assert_eq!(got, [(0x4000, false), (0x3000, true)]);
    }

    /// A table read as one slice (inside one region), across two adjacent regions, or
    /// running out of guest memory: the same descriptors, read one by one where no single
    /// region holds the table, and the chain ends at the first one outside memory.
    #[test]
    fn a_chain_reads_the_same_whether_its_table_lies_in_one_region_or_not() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x10000), 0x10000),
        ])
        .unwrap();
        let put = |at: u64, addr: u64, next: u16| {
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(512u32, GuestAddress(at + 8)).unwrap();
            mem.write_obj(1u16, GuestAddress(at + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
        };
        let walk = |table: u64, size: u16, head: u16| -> Vec<u64> {
            SplitChain::new(&mem, GuestAddress(table), size, head)
                .map(|d| d.addr().0)
                .collect()
        };
        // Table of 4 at 0x1000 (one region): 0 -> 1 -> 2 -> 3, the last without NEXT.
        for (i, at) in (0x1000u64..0x1040).step_by(16).enumerate() {
            put(at, 0x100 * (i as u64 + 1), i as u16 + 1);
        }
        mem.write_obj(0u16, GuestAddress(0x1030 + 12)).unwrap();
        assert_eq!(walk(0x1000, 4, 0), [0x100, 0x200, 0x300, 0x400]);
        // Table of 4 at 0xffe0: two descriptors in each region.
        for (i, at) in (0xffe0u64..0x10020).step_by(16).enumerate() {
            put(at, 0x100 * (i as u64 + 1), i as u16 + 1);
        }
        mem.write_obj(0u16, GuestAddress(0x10010 + 12)).unwrap();
        assert_eq!(walk(0xffe0, 4, 0), [0x100, 0x200, 0x300, 0x400]);
        // Table of 4 at 0x1ffe0: the last two entries lie past the end of guest memory.
        for (i, at) in (0x1ffe0u64..0x20000).step_by(16).enumerate() {
            put(at, 0x100 * (i as u64 + 1), i as u16 + 1);
        }
        assert_eq!(walk(0x1ffe0, 4, 0), [0x100, 0x200]);
    }

    #[test]
    fn hostile_region_contents_stay_in_bounds() {
        let (a, _f) = area(1, 8);
        let mut q = a.queue(0).unwrap();
        q.recover(8, 0);
        // The front-end scribbles: a huge last_batch_head, next pointers in a loop, every
        // flag set, counters anywhere.
        a.mem
            .write_slice(&[0xff; 16 * 8], GuestAddress(off::DESCS))
            .unwrap();
        a.mem
            .write_obj(0xffffu16, GuestAddress(off::LAST_BATCH_HEAD))
            .unwrap();
        let mut q = a.queue(0).unwrap();
        // Ring of 4: heads 4..8 are dropped; the used index mismatch walks nothing.
        let r = q.recover(4, 1000);
        assert!(r.repaired);
        assert_eq!(r.heads.len(), 4);
        assert!(r.heads.iter().all(|&h| h < 4));
        // Equal counters (all 0xff..): the counter wraps to 0 without a panic.
        q.mark(2);
    }
}
