//! The guest side of a virtqueue, split or packed: the driver that makes buffers available
//! and takes used ones back, over [`GuestMemory`]. The packed layout
//! ([`VirtqueueDriver::with_layout`], VIRTIO_F_RING_PACKED) has the same calls; its three
//! addresses are the descriptor ring and the driver and device event suppression areas.
//!
//! Order of calls for one batch of requests:
//! 1. [`add_chain`](VirtqueueDriver::add_chain) or [`add_indirect`](VirtqueueDriver::add_indirect)
//!    per request (descriptors and avail ring entries are written, not yet visible);
//! 2. [`publish`](VirtqueueDriver::publish), and [`kick`](VirtqueueDriver::kick) when it says so;
//! 3. [`pop_used`](VirtqueueDriver::pop_used) until it returns `None`, then
//!    [`wait_call`](VirtqueueDriver::wait_call) if requests are still in flight. The `None`
//!    answer re-arms the call (EVENT_IDX) and re-checks the ring, so no completion is missed.
//!
//! Everything the device writes (used ring entries, `avail_event`, used flags) is untrusted:
//! an impossible value gives an [`Error`], never a panic. The driver keeps its own copy of the
//! chains it built and never reads descriptors back from guest memory.
//!
//! Adding, publishing and popping allocate nothing: all bookkeeping is sized at construction.

mod error;
mod layout;
mod notify;
mod packed;

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};
use std::time::Duration;

use vm_memory::volatile_memory::Error as VolatileError;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemory as _, GuestMemoryError, GuestMemoryMmap,
    VolatileMemory, VolatileSlice,
};
use vmm_sys_util::eventfd::EventFd;
use zerocopy::IntoBytes;

use crate::guest_memory::GuestMemory;
pub use error::Error;
use layout::{
    RawDesc, AVAIL_ALIGN, AVAIL_ELEM_SIZE, DESC_ALIGN, DESC_SIZE, IDX_OFFSET, RING_HEADER,
    USED_ALIGN, USED_ELEM_SIZE,
};
pub use layout::{
    MAX_QUEUE_SIZE, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
    VRING_AVAIL_F_NO_INTERRUPT, VRING_USED_F_NO_NOTIFY,
};
pub use packed::{
    encode_packed_base, RING_EVENT_FLAGS_DESC, RING_EVENT_FLAGS_DISABLE, RING_EVENT_FLAGS_ENABLE,
    VIRTQ_DESC_F_AVAIL, VIRTQ_DESC_F_USED,
};

/// Result type of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// One buffer of a chain: guest-physical address, length, device-writable.
pub type Buffer = (GuestAddress, u32, bool);

/// A used ring entry: the head of a finished chain and the bytes the device wrote into it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsedElem {
    /// Head descriptor id, as returned by `add_chain`/`add_indirect`.
    pub id: u16,
    /// Bytes written into the chain's device-writable buffers.
    pub len: u32,
}

/// Front-end virtual addresses of a queue's three parts, as `SET_VRING_ADDR` carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VringUserAddrs {
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

/// The driver's record of a chain, by head id.
#[derive(Clone, Copy, Debug, Default)]
struct Chain {
    /// Ring descriptors the chain holds; 0 when this id heads no chain.
    descs: u16,
    /// Total length of the device-writable buffers.
    writable: u64,
}

/// Indirect tables: one per head id, each `max_len` descriptors, at `base + id * max_len * 16`.
#[derive(Clone, Copy, Debug)]
struct IndirectTables {
    base: GuestAddress,
    max_len: u16,
}

/// A split virtqueue, driver side. See the [module docs](self) for the order of calls.
#[derive(Debug)]
pub struct VirtqueueDriver {
    mem: GuestMemoryMmap,
    size: u16,
    event_idx: bool,
    desc_table: GuestAddress,
    avail_ring: GuestAddress,
    used_ring: GuestAddress,
    /// Where the split ring's three areas are, for [`split_rings`].
    areas: SplitAreas,
    indirect: Option<IndirectTables>,
    /// Free descriptor ids, used as a stack.
    free: Vec<u16>,
    /// The `next` field of every descriptor as this driver wrote it.
    next: Vec<u16>,
    /// Chains by head id.
    chains: Vec<Chain>,
    /// Avail index the next added chain goes to (published or not).
    avail_idx: Wrapping<u16>,
    /// Avail index visible to the device.
    published_idx: Wrapping<u16>,
    /// Next used ring entry to read.
    last_used: Wrapping<u16>,
    /// Chains published and not yet used.
    in_flight: u16,
    /// Whether the driver asks for used-buffer notifications.
    calls_enabled: bool,
    /// The packed layout's positions; `None` for a split ring.
    packed: Option<packed::PackedState>,
}

fn mem_err(e: GuestMemoryError) -> Error {
    Error::Memory(e)
}

fn volatile_err(e: VolatileError) -> Error {
    Error::Memory(e.into())
}

/// A ring area of `len` bytes at `at`, resolved to this process's mapping once for all the
/// accesses of one call (one region lookup, then bounds-checked offsets into the slice).
fn area(mem: &GuestMemoryMmap, at: GuestAddress, len: u64) -> Result<VolatileSlice<'_>> {
    // Ring areas are at most 16 * 32768 bytes, so `len` fits in usize.
    mem.get_slice(at, len as usize).map_err(mem_err)
}

/// The places of a split ring's three areas.
#[derive(Clone, Copy, Debug)]
struct SplitAreas {
    desc: GuestAddress,
    avail: GuestAddress,
    used: GuestAddress,
    size: u16,
    /// Bytes from `desc` to the end of the used ring when the three areas lie in that order
    /// in one region (as the bump allocator places them): then one lookup reaches all three.
    span: Option<u64>,
}

impl SplitAreas {
    fn new(
        mem: &GuestMemoryMmap,
        desc: GuestAddress,
        avail: GuestAddress,
        used: GuestAddress,
        size: u16,
    ) -> Self {
        let span = (desc
            .0
            .checked_add(layout::desc_table_bytes(size))
            .is_some_and(|e| e <= avail.0)
            && avail
                .0
                .checked_add(layout::avail_ring_bytes(size))
                .is_some_and(|e| e <= used.0))
        .then(|| used.0.checked_add(layout::used_ring_bytes(size)))
        .flatten()
        .map(|end| end - desc.0)
        .filter(|&len| mem.get_slice(desc, len as usize).is_ok());
        SplitAreas {
            desc,
            avail,
            used,
            size,
            span,
        }
    }
}

/// A split ring's three areas, resolved for the accesses of one call.
struct SplitRings<'a> {
    desc: VolatileSlice<'a>,
    avail: VolatileSlice<'a>,
    used: VolatileSlice<'a>,
}

/// Resolves the three areas of a split ring: one region lookup when they share a span.
fn split_rings<'a>(mem: &'a GuestMemoryMmap, a: &SplitAreas) -> Result<SplitRings<'a>> {
    let (desc_len, avail_len, used_len) = (
        layout::desc_table_bytes(a.size),
        layout::avail_ring_bytes(a.size),
        layout::used_ring_bytes(a.size),
    );
    match a.span {
        Some(span) => {
            let all = area(mem, a.desc, span)?;
            // The offsets are below `span`, checked when it was computed.
            let sub = |at: GuestAddress, len: u64| {
                all.subslice((at.0 - a.desc.0) as usize, len as usize)
                    .map_err(volatile_err)
            };
            Ok(SplitRings {
                desc: sub(a.desc, desc_len)?,
                avail: sub(a.avail, avail_len)?,
                used: sub(a.used, used_len)?,
            })
        }
        None => Ok(SplitRings {
            desc: area(mem, a.desc, desc_len)?,
            avail: area(mem, a.avail, avail_len)?,
            used: area(mem, a.used, used_len)?,
        }),
    }
}

/// Writes descriptor `id` of the table `table` with one 16-byte store.
fn store_desc(
    table: &VolatileSlice<'_>,
    id: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) -> Result<()> {
    let word = u64::from(len) | u64::from(flags) << 32 | u64::from(next) << 48;
    table
        .get_ref::<[u64; 2]>(usize::from(id) * DESC_SIZE as usize)
        .map_err(volatile_err)?
        .store([addr.to_le(), word.to_le()]);
    Ok(())
}

fn store_u16_at(area: &VolatileSlice<'_>, offset: u64, value: u16, order: Ordering) -> Result<()> {
    // Offsets stay inside a ring area (below 2^20), so they fit in usize.
    area.store(value.to_le(), offset as usize, order)
        .map_err(volatile_err)
}

fn load_u16_at(area: &VolatileSlice<'_>, offset: u64, order: Ordering) -> Result<u16> {
    area.load::<u16>(offset as usize, order)
        .map(u16::from_le)
        .map_err(volatile_err)
}

impl VirtqueueDriver {
    /// Allocates the descriptor table and both rings in `mem`, without indirect tables.
    /// `event_idx` says whether VIRTIO_F_EVENT_IDX is negotiated.
    pub fn new(mem: &GuestMemory, size: u16, event_idx: bool) -> Result<Self> {
        Self::with_indirect(mem, size, event_idx, 0)
    }

    /// Like [`new`](Self::new), and also reserves one indirect table of `max_indirect`
    /// descriptors per head id for [`add_indirect`](Self::add_indirect) (none when 0).
    pub fn with_indirect(
        mem: &GuestMemory,
        size: u16,
        event_idx: bool,
        max_indirect: u16,
    ) -> Result<Self> {
        Self::with_layout(mem, size, event_idx, max_indirect, false)
    }

    /// Like [`with_indirect`](Self::with_indirect), with the packed layout when `packed`
    /// (VIRTIO_F_RING_PACKED negotiated): a descriptor ring of `size` entries and two 4-byte
    /// event suppression areas, in the places of the descriptor table and the available
    /// and used rings.
    pub fn with_layout(
        mem: &GuestMemory,
        size: u16,
        event_idx: bool,
        max_indirect: u16,
        packed: bool,
    ) -> Result<Self> {
        if !vhost_proto::limits::valid_queue_size(size) {
            return Err(Error::InvalidSize { size });
        }
        if max_indirect > size {
            return Err(Error::InvalidIndirectMax {
                max: max_indirect,
                size,
            });
        }
        let alloc = |bytes, align| mem.alloc(bytes, align).map_err(Error::Alloc);
        let desc_table = alloc(layout::desc_table_bytes(size), DESC_ALIGN)?;
        let (avail_ring, used_ring) = if packed {
            (alloc(4, 4)?, alloc(4, 4)?)
        } else {
            (
                alloc(layout::avail_ring_bytes(size), AVAIL_ALIGN)?,
                alloc(layout::used_ring_bytes(size), USED_ALIGN)?,
            )
        };
        let indirect = match max_indirect {
            0 => None,
            max_len => Some(IndirectTables {
                base: alloc(u64::from(size) * u64::from(max_len) * DESC_SIZE, DESC_ALIGN)?,
                max_len,
            }),
        };
        let mut driver = VirtqueueDriver {
            mem: mem.mem().clone(),
            size,
            event_idx,
            desc_table,
            avail_ring,
            used_ring,
            areas: SplitAreas::new(mem.mem(), desc_table, avail_ring, used_ring, size),
            indirect,
            free: (0..size).rev().collect(),
            next: vec![0; usize::from(size)],
            chains: vec![Chain::default(); usize::from(size)],
            avail_idx: Wrapping(0),
            published_idx: Wrapping(0),
            last_used: Wrapping(0),
            in_flight: 0,
            calls_enabled: true,
            packed: packed.then(|| packed::PackedState::new(size)),
        };
        if packed {
            driver.packed_start_at(encode_packed_base((0, true), (0, true)))?;
        } else {
            driver.start_at(0, 0)?;
        }
        Ok(driver)
    }

    /// Whether the ring has the packed layout.
    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
    }

    /// Sets the rings for a device resuming at `base`, as SET_VRING_BASE carries it: split
    /// rings, the next available (and used) index in the low 16 bits; packed rings, both
    /// positions and wrap counters ([`encode_packed_base`]). Only with nothing in flight.
    pub fn start_at_base(&mut self, base: u32) -> Result<()> {
        let pending = self.pending();
        if self.in_flight != 0 || pending != 0 {
            return Err(Error::Busy {
                in_flight: self.in_flight,
                pending,
            });
        }
        if self.packed.is_some() {
            self.packed_start_at(base)
        } else {
            self.start_at(base as u16, base as u16)
        }
    }

    /// What SET_VRING_BASE carries to resume the ring where this driver is, with nothing
    /// in flight: the available index (split), or the packed encoding of both positions.
    pub fn vring_base(&self) -> u32 {
        if self.packed.is_some() {
            self.packed_base()
        } else {
            u32::from(self.published_idx.0)
        }
    }

    /// Sets the rings as a previous user left them, for a device that resumes at
    /// `next_avail`/`next_used` (`SET_VRING_BASE`): writes avail `idx` = `next_avail`, used
    /// `idx` = `next_used`, zero flags, and `used_event` = `next_used`. Only with nothing added
    /// or in flight; for a back-end's "next avail index" both values are normally equal.
    pub fn start_at(&mut self, next_avail: u16, next_used: u16) -> Result<()> {
        let pending = self.pending();
        if self.in_flight != 0 || pending != 0 {
            return Err(Error::Busy {
                in_flight: self.in_flight,
                pending,
            });
        }
        self.avail_idx = Wrapping(next_avail);
        self.published_idx = Wrapping(next_avail);
        self.last_used = Wrapping(next_used);
        self.calls_enabled = true;
        self.store_u16(self.avail_ring, 0)?;
        self.store_u16(self.avail_ring.unchecked_add(IDX_OFFSET), next_avail)?;
        self.store_u16(self.used_ring, 0)?;
        self.store_u16(self.used_ring.unchecked_add(IDX_OFFSET), next_used)?;
        self.store_u16(self.used_event_addr(), next_used)?;
        self.store_u16(self.avail_event_addr(), next_avail)?;
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Whether VIRTIO_F_EVENT_IDX rules are in use.
    pub fn event_idx(&self) -> bool {
        self.event_idx
    }

    /// Guest-physical address of the descriptor table.
    pub fn desc_table(&self) -> GuestAddress {
        self.desc_table
    }

    /// Guest-physical address of the available ring.
    pub fn avail_ring(&self) -> GuestAddress {
        self.avail_ring
    }

    /// Guest-physical address of the used ring.
    pub fn used_ring(&self) -> GuestAddress {
        self.used_ring
    }

    /// The rings' front-end virtual addresses in `mem` (the memory this driver was built on),
    /// or `None` if `mem` does not hold them.
    pub fn vring_user_addrs(&self, mem: &GuestMemory) -> Option<VringUserAddrs> {
        Some(VringUserAddrs {
            desc: mem.gpa_to_uva(self.desc_table.0)?,
            avail: mem.gpa_to_uva(self.avail_ring.0)?,
            used: mem.gpa_to_uva(self.used_ring.0)?,
        })
    }

    /// Capacity of each indirect table (0 when the driver has none).
    pub fn max_indirect(&self) -> u16 {
        self.indirect.map_or(0, |t| t.max_len)
    }

    /// Free descriptors in the ring.
    pub fn num_free(&self) -> usize {
        if self.packed.is_some() {
            return self.packed_num_free();
        }
        self.free.len()
    }

    /// The avail `idx` the device sees: what `GET_VRING_BASE` returns once the device has
    /// taken every published chain.
    pub fn avail_idx(&self) -> u16 {
        self.published_idx.0
    }

    /// The used ring index this driver reads next; equals the device's used `idx` once every
    /// completion has been popped.
    pub fn last_used_idx(&self) -> u16 {
        self.last_used.0
    }

    /// Chains published and not yet returned by `pop_used`.
    pub fn in_flight(&self) -> u16 {
        self.in_flight
    }

    /// Chains added and not yet published.
    pub fn pending(&self) -> u16 {
        if self.packed.is_some() {
            return self.packed_pending();
        }
        (self.avail_idx - self.published_idx).0
    }

    /// Adds a chain of direct descriptors, one per buffer, in order. Returns the head id.
    /// The chain becomes visible to the device at the next [`publish`](Self::publish).
    pub fn add_chain(&mut self, bufs: &[Buffer]) -> Result<u16> {
        let writable = check_chain(bufs)?;
        if self.packed.is_some() {
            return self.packed_add_chain(bufs, writable);
        }
        if bufs.len() > self.free.len() {
            return Err(Error::NotEnoughDescriptors {
                needed: bufs.len(),
                free: self.free.len(),
            });
        }
        // The chain takes the top `bufs.len()` ids of the free stack, head first.
        let top = self.free.len() - 1;
        let start = self.free.len() - bufs.len();
        let head = self.free[top];
        let rings = split_rings(&self.mem, &self.areas)?;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let id = self.free[top - i];
            // For every buffer but the last, `top - i - 1 >= start`.
            let (flags, next) = if i + 1 < bufs.len() {
                (VIRTQ_DESC_F_NEXT, self.free[top - i - 1])
            } else {
                (0, 0)
            };
            let flags = flags | if write { VIRTQ_DESC_F_WRITE } else { 0 };
            store_desc(&rings.desc, id, addr.0, len, flags, next)?;
            self.next[usize::from(id)] = next;
        }
        store_u16_at(
            &rings.avail,
            self.avail_entry_offset(),
            head,
            Ordering::Relaxed,
        )?;
        self.free.truncate(start);
        // `bufs.len() <= free.len() <= size`, which fits in u16.
        self.record_avail(head, bufs.len() as u16, writable);
        Ok(head)
    }

    /// Adds a chain as one ring descriptor (VIRTQ_DESC_F_INDIRECT) pointing at this head's
    /// indirect table, which holds one descriptor per buffer. Returns the head id.
    pub fn add_indirect(&mut self, bufs: &[Buffer]) -> Result<u16> {
        let tables = self.indirect.ok_or(Error::IndirectUnavailable)?;
        let writable = check_chain(bufs)?;
        if self.packed.is_some() {
            return self.packed_add_indirect(bufs, writable);
        }
        if bufs.len() > usize::from(tables.max_len) {
            return Err(Error::IndirectTooLong {
                len: bufs.len(),
                max: tables.max_len,
            });
        }
        let head = *self
            .free
            .last()
            .ok_or(Error::NotEnoughDescriptors { needed: 1, free: 0 })?;
        let table = tables
            .base
            .unchecked_add(u64::from(head) * u64::from(tables.max_len) * DESC_SIZE);
        let last = bufs.len() - 1;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            // `i < max_len <= size`, so `i + 1` fits in u16.
            let (flags, next) = if i < last {
                (VIRTQ_DESC_F_NEXT, i as u16 + 1)
            } else {
                (0, 0)
            };
            let flags = flags | if write { VIRTQ_DESC_F_WRITE } else { 0 };
            self.write_desc(self.desc_addr(table, i as u16), addr.0, len, flags, next)?;
        }
        // `bufs.len() <= max_len`, so the table length fits in u32.
        let table_len = (bufs.len() as u64 * DESC_SIZE) as u32;
        self.write_desc(
            self.desc_addr(self.desc_table, head),
            table.0,
            table_len,
            VIRTQ_DESC_F_INDIRECT,
            0,
        )?;
        self.free.pop();
        self.push_avail(head, 1, writable)?;
        Ok(head)
    }

    /// Makes the chains added since the last call visible to the device (ring entries are
    /// already written; a release store of avail `idx` publishes them) and returns whether the
    /// device must be notified: with EVENT_IDX when the new `idx` passed `avail_event`
    /// (`vring_need_event`), otherwise unless the device set VRING_USED_F_NO_NOTIFY.
    /// Returns `false` when nothing was added.
    pub fn publish(&mut self) -> Result<bool> {
        if self.packed.is_some() {
            return self.packed_publish();
        }
        let old = self.published_idx;
        let new = self.avail_idx;
        if new == old {
            return Ok(false);
        }
        let rings = split_rings(&self.mem, &self.areas)?;
        store_u16_at(&rings.avail, IDX_OFFSET, new.0, Ordering::Release)?;
        self.in_flight += (new - old).0;
        self.published_idx = new;
        // The idx store must be visible before the device's suppression field is read, or
        // both sides may decide the other will act.
        fence(Ordering::SeqCst);
        if self.event_idx {
            let avail_event =
                load_u16_at(&rings.used, self.avail_event_offset(), Ordering::Relaxed)?;
            Ok(need_event(Wrapping(avail_event), new, old))
        } else {
            let flags = load_u16_at(&rings.used, 0, Ordering::Relaxed)?;
            Ok(flags & VRING_USED_F_NO_NOTIFY == 0)
        }
    }

    /// Takes the next used ring entry, frees its chain and returns it; `None` when the device
    /// has used nothing more. With EVENT_IDX (and calls enabled) it writes `used_event` so the
    /// device calls on the next completion; the `None` answer comes only after a re-check that
    /// follows that write, so waiting for a call after it cannot miss a completion.
    ///
    /// A bad entry gives an error and is not consumed.
    pub fn pop_used(&mut self) -> Result<Option<UsedElem>> {
        if self.packed.is_some() {
            return self.packed_pop_used();
        }
        let rings = split_rings(&self.mem, &self.areas)?;
        let load_idx = || load_u16_at(&rings.used, IDX_OFFSET, Ordering::Acquire).map(Wrapping);
        let mut used_idx = load_idx()?;
        if used_idx == self.last_used {
            if !self.rearm_calls(&rings.avail)? {
                return Ok(None);
            }
            used_idx = load_idx()?;
            if used_idx == self.last_used {
                return Ok(None);
            }
        }
        let ahead = (used_idx - self.last_used).0;
        if ahead > self.in_flight {
            return Err(Error::UsedIdxTooFar {
                used_idx: used_idx.0,
                last_used: self.last_used.0,
                ahead,
                in_flight: self.in_flight,
            });
        }
        let slot = u64::from(self.last_used.0 & (self.size - 1));
        // The whole entry (`id`, `len`) in one load.
        let [raw_id, len] = rings
            .used
            .get_ref::<[u32; 2]>((RING_HEADER + slot * USED_ELEM_SIZE) as usize)
            .map_err(volatile_err)?
            .load();
        let (raw_id, len) = (u32::from_le(raw_id), u32::from_le(len));
        let id = match u16::try_from(raw_id) {
            Ok(id) if id < self.size => id,
            _ => {
                return Err(Error::UsedIdOutOfRange {
                    used_idx: self.last_used.0,
                    id: raw_id,
                    size: self.size,
                })
            }
        };
        let chain = self.chains[usize::from(id)];
        if chain.descs == 0 {
            return Err(Error::UsedIdNotInFlight {
                used_idx: self.last_used.0,
                id,
            });
        }
        if u64::from(len) > chain.writable {
            return Err(Error::UsedLenTooLong {
                used_idx: self.last_used.0,
                id,
                len,
                writable: chain.writable,
            });
        }
        let last_used = self.last_used + Wrapping(1);
        if self.event_idx && self.calls_enabled {
            store_u16_at(
                &rings.avail,
                self.used_event_offset(),
                last_used.0,
                Ordering::Relaxed,
            )?;
        }
        self.free_chain(id, chain.descs);
        self.last_used = last_used;
        self.in_flight -= 1;
        Ok(Some(UsedElem { id, len }))
    }

    /// Asks for used-buffer notifications (`true`) or asks the device not to send them
    /// (`false`): without EVENT_IDX through VRING_AVAIL_F_NO_INTERRUPT, with it through
    /// `used_event` (set to the entry just behind the next one, which the device will not
    /// reach for 65535 completions). Both are hints the device may ignore.
    pub fn enable_calls(&mut self, enabled: bool) -> Result<()> {
        if self.packed.is_some() {
            return self.packed_enable_calls(enabled);
        }
        self.calls_enabled = enabled;
        if self.event_idx {
            let event = if enabled {
                self.last_used
            } else {
                self.last_used - Wrapping(1)
            };
            self.store_u16(self.used_event_addr(), event.0)?;
        } else {
            let flags = if enabled {
                0
            } else {
                VRING_AVAIL_F_NO_INTERRUPT
            };
            self.store_u16(self.avail_ring, flags)?;
        }
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Signals the device through its kick eventfd.
    pub fn kick(&self, kick: &EventFd) -> Result<()> {
        notify::kick(kick)
    }

    /// Sleeps until the call eventfd is signalled (and consumes the signal) or `timeout`
    /// passes; returns whether it was signalled. Drain [`pop_used`](Self::pop_used) to `None`
    /// before waiting.
    pub fn wait_call(call: &EventFd, timeout: Duration) -> Result<bool> {
        notify::wait_call(call, timeout)
    }

    /// Writes the avail ring entry for a new chain and records it.
    fn push_avail(&mut self, head: u16, descs: u16, writable: u64) -> Result<()> {
        let avail = area(
            &self.mem,
            self.avail_ring,
            layout::avail_ring_bytes(self.size),
        )?;
        store_u16_at(&avail, self.avail_entry_offset(), head, Ordering::Relaxed)?;
        self.record_avail(head, descs, writable);
        Ok(())
    }

    /// Offset in the available ring of the entry the next added chain goes to.
    fn avail_entry_offset(&self) -> u64 {
        RING_HEADER + u64::from(self.avail_idx.0 & (self.size - 1)) * AVAIL_ELEM_SIZE
    }

    /// Records a chain whose available ring entry was written.
    fn record_avail(&mut self, head: u16, descs: u16, writable: u64) {
        self.chains[usize::from(head)] = Chain { descs, writable };
        self.avail_idx += 1;
    }

    /// Returns the descriptors of the chain at `head` to the free stack.
    fn free_chain(&mut self, head: u16, descs: u16) {
        self.chains[usize::from(head)] = Chain::default();
        let mut id = head;
        for _ in 0..descs {
            self.free.push(id);
            id = self.next[usize::from(id)];
        }
    }

    /// With EVENT_IDX and calls enabled: sets `used_event` to the next entry and fences, so a
    /// following re-read of used `idx` either sees a new entry or the device will call.
    /// Returns whether a re-read is worth doing.
    fn rearm_calls(&self, avail: &VolatileSlice<'_>) -> Result<bool> {
        if !(self.event_idx && self.calls_enabled) {
            return Ok(false);
        }
        store_u16_at(
            avail,
            self.used_event_offset(),
            self.last_used.0,
            Ordering::Relaxed,
        )?;
        fence(Ordering::SeqCst);
        Ok(true)
    }

    fn desc_addr(&self, table: GuestAddress, id: u16) -> GuestAddress {
        table.unchecked_add(u64::from(id) * DESC_SIZE)
    }

    fn used_event_addr(&self) -> GuestAddress {
        self.avail_ring.unchecked_add(self.used_event_offset())
    }

    fn avail_event_addr(&self) -> GuestAddress {
        self.used_ring.unchecked_add(self.avail_event_offset())
    }

    /// Offset of `used_event` in the available ring.
    fn used_event_offset(&self) -> u64 {
        RING_HEADER + u64::from(self.size) * AVAIL_ELEM_SIZE
    }

    /// Offset of `avail_event` in the used ring.
    fn avail_event_offset(&self) -> u64 {
        RING_HEADER + u64::from(self.size) * USED_ELEM_SIZE
    }

    fn write_desc(
        &self,
        at: GuestAddress,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) -> Result<()> {
        let desc = RawDesc::new(addr, len, flags, next);
        self.mem.write_slice(desc.as_bytes(), at).map_err(mem_err)
    }

    fn store_u16(&self, at: GuestAddress, value: u16) -> Result<()> {
        self.mem
            .store(value.to_le(), at, Ordering::Relaxed)
            .map_err(mem_err)
    }

    fn load_u16(&self, at: GuestAddress, order: Ordering) -> Result<u16> {
        self.mem
            .load::<u16>(at, order)
            .map(u16::from_le)
            .map_err(mem_err)
    }
}

/// Checks a chain's buffers and returns the total length of the device-writable ones.
fn check_chain(bufs: &[Buffer]) -> Result<u64> {
    if bufs.is_empty() {
        return Err(Error::EmptyChain);
    }
    // At most `size` (≤ 32768) buffers get this far in practice; a u64 sum of u32 lengths
    // cannot overflow for any slice that fits in memory.
    let (total, writable) = bufs.iter().fold((0u64, 0u64), |(total, writable), b| {
        let len = u64::from(b.1);
        (total + len, if b.2 { writable + len } else { writable })
    });
    if total > u64::from(u32::MAX) {
        return Err(Error::ChainTooLong { bytes: total });
    }
    Ok(writable)
}

/// `vring_need_event`: whether moving an index from `old` to `new` crosses `event`.
fn need_event(event: Wrapping<u16>, new: Wrapping<u16>, old: Wrapping<u16>) -> bool {
    new - event - Wrapping(1) < new - old
}
