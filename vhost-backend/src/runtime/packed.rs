//! The device side of a packed virtqueue (virtio 1.2, 2.8 "Packed Virtqueues";
//! VIRTIO_F_RING_PACKED, bit 34).
//!
//! One ring of 16-byte descriptors serves both directions. The driver makes a descriptor
//! available by writing it with its AVAIL flag equal to the driver's wrap counter and its
//! USED flag the inverse; the device returns a buffer by writing one *used* descriptor (the
//! buffer ID and the length written) with both flags equal to the device's wrap counter, at
//! the next used position, and then skips as many positions as the buffer's chain had
//! descriptors. Each side flips its wrap counter when its index passes the end of the ring.
//! Two 4-byte event suppression structures stand beside the ring: the *driver* area (the
//! driver tells when it wants used-buffer notifications: enable, disable, or at one
//! descriptor position when EVENT_IDX is negotiated) and the *device* area (the device tells
//! the same about kicks).
//!
//! This module is the layout only: which buffer is next, where its used descriptor goes,
//! and whether a notification is wanted. The request lifecycle (outstanding IDs, batches of
//! completions, generations, stopping) is the same state machine as for split rings
//! (`runtime/vring.rs`), with the buffer ID in the place of the head index.
//!
//! Whatever the driver writes, nothing here panics or reads outside guest memory: a chain
//! whose next descriptor is not available (a lying wrap counter), a chain longer than the
//! ring, an indirect table of a size that is not a multiple of 16, end the chain where they
//! are found; the buffer is still handed to the device with the descriptors read so far.
//! An entry of an indirect table that is itself marked indirect (virtio 1.2, 2.8.19: the
//! driver must not) is handed on with its INDIRECT flag, and the request walking it records
//! a fault ([`ChainFault::NestedIndirect`](super::ChainFault::NestedIndirect)) instead of
//! using the table as a plain buffer.

use std::sync::atomic::{fence, Ordering};

use virtio_queue::desc::packed::Descriptor as PackedDesc;
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

/// Descriptor flag: the chain goes on in the next descriptor.
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable.
pub const DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors.
pub const DESC_F_INDIRECT: u16 = 4;
/// Descriptor flag: available (compared with the driver's wrap counter).
pub const DESC_F_AVAIL: u16 = 1 << 7;
/// Descriptor flag: used (compared with the device's wrap counter).
pub const DESC_F_USED: u16 = 1 << 15;
/// Event suppression flags: notifications wanted.
pub const EVENT_FLAGS_ENABLE: u16 = 0;
/// Event suppression flags: no notifications.
pub const EVENT_FLAGS_DISABLE: u16 = 1;
/// Event suppression flags: a notification when the given position is passed (EVENT_IDX).
pub const EVENT_FLAGS_DESC: u16 = 2;

/// Most entries of an indirect table read for one buffer (a longer table is cut there).
const MAX_INDIRECT: u32 = 4096;

/// Why the packed ring cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackedError {
    /// A ring area is misaligned or outside guest memory.
    #[error("packed ring: the {what} at {addr:#x} is misaligned or outside guest memory")]
    Area {
        /// Which area.
        what: &'static str,
        /// Its guest-physical address.
        addr: u64,
    },
    /// Guest memory could not be read or written.
    #[error("packed ring: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// Encodes a ring position and its wrap counter the way SET/GET_VRING_BASE carry them for
/// packed rings (vhost-user "Ring states"): the index in bits 0..15, the wrap counter in bit
/// 15; the available side in the low half, the used side in the high half.
pub fn encode_base(avail: u16, avail_wrap: bool, used: u16, used_wrap: bool) -> u32 {
    let half = |i: u16, w: bool| u32::from(i & 0x7fff) | (u32::from(w) << 15);
    half(avail, avail_wrap) | (half(used, used_wrap) << 16)
}

/// Decodes [`encode_base`]: `(avail, avail_wrap, used, used_wrap)`.
pub fn decode_base(base: u32) -> (u16, bool, u16, bool) {
    (
        (base & 0x7fff) as u16,
        base & 0x8000 != 0,
        ((base >> 16) & 0x7fff) as u16,
        base & 0x8000_0000 != 0,
    )
}

/// The base of a packed ring never used: both indices 0, both wrap counters 1.
pub const INITIAL_BASE: u32 = 0x8000_8000;

/// The device's view of one packed ring. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct PackedRing {
    size: u16,
    desc: GuestAddress,
    driver_event: GuestAddress,
    device_event: GuestAddress,
    next_avail: u16,
    avail_wrap: bool,
    next_used: u16,
    used_wrap: bool,
    event_idx: bool,
    /// Descriptors in the chain of each outstanding buffer ID (how far its used
    /// descriptor moves the used position).
    chain_len: Vec<u16>,
    /// The last buffer popped and its chain length, until the ring takes it.
    popped: Option<(u16, u16)>,
    /// The descriptors of the last buffer popped, as the ring held them (inflight
    /// tracking copies them).
    raw: Vec<PackedDesc>,
    /// The used position (and wrap counter) at the last notification decision.
    signalled: (u16, bool),
}

/// Whether a descriptor with `flags` is available to a device whose driver wrap counter is
/// `wrap`.
fn is_avail(flags: u16, wrap: bool) -> bool {
    (flags & DESC_F_AVAIL != 0) == wrap && (flags & DESC_F_USED != 0) != wrap
}

impl PackedRing {
    /// A ring of `size` descriptors at `desc`, with its event areas, resuming at `base`
    /// ([`encode_base`]). Checks every area against `mem`.
    pub(crate) fn new(
        mem: &GuestMemoryMmap,
        size: u16,
        [desc, driver_event, device_event]: [GuestAddress; 3],
        base: u32,
        event_idx: bool,
    ) -> Result<Self, PackedError> {
        let check = |what, addr: GuestAddress, len: usize, align: u64| {
            if addr.0 % align != 0 || !mem.check_range(addr, len) {
                return Err(PackedError::Area { what, addr: addr.0 });
            }
            Ok(())
        };
        check("descriptor ring", desc, usize::from(size) * 16, 16)?;
        check("driver event area", driver_event, 4, 4)?;
        check("device event area", device_event, 4, 4)?;
        let (a, aw, u, uw) = decode_base(base);
        Ok(PackedRing {
            size,
            desc,
            driver_event,
            device_event,
            next_avail: a % size,
            avail_wrap: aw,
            next_used: u % size,
            used_wrap: uw,
            event_idx,
            chain_len: vec![0; usize::from(size)],
            popped: None,
            raw: Vec::new(),
            signalled: (u % size, uw),
        })
    }

    /// The state GET_VRING_BASE answers ([`encode_base`]).
    pub(crate) fn base(&self) -> u32 {
        encode_base(
            self.next_avail,
            self.avail_wrap,
            self.next_used,
            self.used_wrap,
        )
    }

    /// The next available position (bit 15: the driver wrap counter the device expects).
    pub(crate) fn next_avail(&self) -> u16 {
        self.next_avail | (u16::from(self.avail_wrap) << 15)
    }

    /// The descriptor ring's address.
    pub(crate) fn desc_table(&self) -> GuestAddress {
        self.desc
    }

    /// Sets EVENT_IDX (the driver area's DESC mode is honoured only with it).
    pub(crate) fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
    }

    fn desc_addr(&self, pos: u16) -> GuestAddress {
        self.desc.unchecked_add(u64::from(pos) * 16)
    }

    /// Whether the descriptor at the next available position is available.
    pub(crate) fn has_available(&self, mem: &GuestMemoryMmap) -> Result<bool, PackedError> {
        let flags: u16 = mem.load(
            self.desc_addr(self.next_avail).unchecked_add(14),
            Ordering::Acquire,
        )?;
        Ok(is_avail(flags, self.avail_wrap))
    }

    /// Takes the next available buffer: its descriptors (indirect tables expanded by
    /// [`expand`]) go into `out`, and its buffer ID is returned. `None` when no buffer is
    /// available.
    pub(crate) fn pop(
        &mut self,
        mem: &GuestMemoryMmap,
        out: &mut Vec<Descriptor>,
    ) -> Result<Option<u16>, PackedError> {
        out.clear();
        self.raw.clear();
        if !self.has_available(mem)? {
            return Ok(None);
        }
        // The flags were read with Acquire: the rest of the descriptor is the driver's
        // finished write.
        let mut pos = self.next_avail;
        let mut wrap = self.avail_wrap;
        let mut count = 0u16;
        let mut id;
        loop {
            let d: PackedDesc = mem.read_obj(self.desc_addr(pos))?;
            id = d.id();
            count += 1;
            pos += 1;
            if pos == self.size {
                pos = 0;
                wrap = !wrap;
            }
            self.raw.push(d);
            if !d.has_next() || d.refers_to_indirect_table() || count == self.size {
                break;
            }
            let flags: u16 = mem.load(self.desc_addr(pos).unchecked_add(14), Ordering::Acquire)?;
            if !is_avail(flags, wrap) {
                // The chain says it goes on, but the next descriptor is not available:
                // the chain ends here.
                break;
            }
        }
        expand(mem, &self.raw, out);
        self.next_avail = pos;
        self.avail_wrap = wrap;
        // Recorded by `commit_pop` once the ring took the ID: a duplicate of an ID still
        // outstanding is skipped and must not change the length its used entry skips.
        self.popped = Some((id, count));
        Ok(Some(id))
    }

    /// The descriptors of the buffer [`pop`](Self::pop) just returned, as the ring held
    /// them.
    pub(crate) fn last_popped(&self) -> &[PackedDesc] {
        &self.raw
    }

    /// Buffer `id`, resubmitted from the inflight region, takes `count` descriptors: its
    /// used descriptor skips as many.
    pub(crate) fn set_chain_len(&mut self, id: u16, count: u16) {
        if let Some(n) = self.chain_len.get_mut(usize::from(id)) {
            *n = count;
        }
    }

    /// The used position and wrap counter once the used descriptor of `id` is written.
    pub(crate) fn used_after(&self, id: u16) -> (u16, bool) {
        let n = self
            .chain_len
            .get(usize::from(id))
            .copied()
            .unwrap_or(1)
            .max(1);
        let next = u32::from(self.next_used) + u32::from(n);
        let wrapped = next >= u32::from(self.size);
        (
            (next % u32::from(self.size)) as u16,
            self.used_wrap != wrapped,
        )
    }

    /// The buffer [`pop`](Self::pop) just returned was taken (its ID was not outstanding):
    /// its used entry will skip its chain's length.
    pub(crate) fn commit_pop(&mut self, id: u16) {
        if let Some((popped, count)) = self.popped.take() {
            if popped == id {
                if let Some(n) = self.chain_len.get_mut(usize::from(id)) {
                    *n = count;
                }
            }
        }
    }

    /// Writes the used descriptor of buffer `id` (taken by [`pop`](Self::pop) and
    /// outstanding) with `len` bytes written, and moves the used position past its chain.
    pub(crate) fn add_used(
        &mut self,
        mem: &GuestMemoryMmap,
        id: u16,
        len: u32,
    ) -> Result<(), PackedError> {
        let at = self.desc_addr(self.next_used);
        mem.write_obj(len.to_le(), at.unchecked_add(8))?;
        mem.write_obj(id.to_le(), at.unchecked_add(12))?;
        let mut flags = if self.used_wrap {
            DESC_F_AVAIL | DESC_F_USED
        } else {
            0
        };
        if len > 0 {
            flags |= DESC_F_WRITE;
        }
        // The flags go last: the driver owns the descriptor once it sees them.
        mem.store(flags.to_le(), at.unchecked_add(14), Ordering::Release)?;
        (self.next_used, self.used_wrap) = self.used_after(id);
        Ok(())
    }

    /// Whether the driver wants a used-buffer notification for what was returned since the
    /// last decision (the driver event suppression area; EVENT_IDX semantics for packed
    /// rings: notify when the used position passed the driver's event position).
    pub(crate) fn needs_notification(
        &mut self,
        mem: &GuestMemoryMmap,
    ) -> Result<bool, PackedError> {
        // The used descriptors are written before the driver's area is read.
        fence(Ordering::SeqCst);
        let off_wrap: u16 = mem.load(self.driver_event, Ordering::Acquire)?;
        let flags: u16 = mem.load(self.driver_event.unchecked_add(2), Ordering::Acquire)?;
        let (old, _) = self.signalled;
        let new = self.next_used;
        self.signalled = (self.next_used, self.used_wrap);
        match flags & 3 {
            EVENT_FLAGS_DISABLE => Ok(false),
            EVENT_FLAGS_DESC if self.event_idx => {
                let size = self.size;
                let mut off = off_wrap & 0x7fff;
                let old = if new <= old {
                    old.wrapping_sub(size)
                } else {
                    old
                };
                if (off_wrap & 0x8000 != 0) != self.used_wrap {
                    off = off.wrapping_sub(size);
                }
                // vring_need_event(event, new, old).
                Ok(new.wrapping_sub(off).wrapping_sub(1) < new.wrapping_sub(old))
            }
            _ => Ok(true),
        }
    }

    /// Asks the driver for no kicks (device event area).
    pub(crate) fn disable_notification(&self, mem: &GuestMemoryMmap) -> Result<(), PackedError> {
        mem.store(
            EVENT_FLAGS_DISABLE.to_le(),
            self.device_event.unchecked_add(2),
            Ordering::Release,
        )?;
        Ok(())
    }

    /// Asks the driver for kicks again, and says whether a buffer became available
    /// meanwhile.
    pub(crate) fn enable_notification(&self, mem: &GuestMemoryMmap) -> Result<bool, PackedError> {
        mem.store(
            EVENT_FLAGS_ENABLE.to_le(),
            self.device_event.unchecked_add(2),
            Ordering::Release,
        )?;
        // The flag is visible before the ring is looked at again.
        fence(Ordering::SeqCst);
        self.has_available(mem)
    }
}

/// The descriptors of a buffer as the ring held them (`raw`), as split descriptors with
/// only the WRITE flag kept, indirect tables expanded ([`read_indirect`]), into `out`.
pub(crate) fn expand(mem: &GuestMemoryMmap, raw: &[PackedDesc], out: &mut Vec<Descriptor>) {
    for d in raw {
        if d.refers_to_indirect_table() {
            read_indirect(mem, d, out);
            // Nothing follows an indirect descriptor in a chain.
            return;
        }
        out.push(Descriptor::new(
            d.addr().0,
            d.len(),
            d.flags() & DESC_F_WRITE,
            0,
        ));
    }
}

/// Appends the entries of the indirect table `d` points to (up to [`MAX_INDIRECT`]; a
/// table whose length is not a multiple of 16 adds nothing, one that runs outside guest
/// memory adds the entries before). An entry marked indirect keeps that flag: the request
/// records the fault.
fn read_indirect(mem: &GuestMemoryMmap, d: &PackedDesc, out: &mut Vec<Descriptor>) {
    let len = d.len();
    if len % 16 != 0 {
        return;
    }
    let entries = (len / 16).min(MAX_INDIRECT);
    for i in 0..entries {
        let Some(at) = d.addr().checked_add(u64::from(i) * 16) else {
            return;
        };
        let Ok(e) = mem.read_obj::<PackedDesc>(at) else {
            return;
        };
        out.push(Descriptor::new(
            e.addr().0,
            e.len(),
            e.flags() & (DESC_F_WRITE | DESC_F_INDIRECT),
            0,
        ));
    }
}
