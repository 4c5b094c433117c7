//! The packed layout of [`VirtqueueDriver`] (VIRTIO_F_RING_PACKED; virtio 1.2, 2.8).
//!
//! One ring of 16-byte descriptors (address, length, buffer ID, flags) and two 4-byte event
//! suppression areas: the driver's (in the place of the available ring: when the driver
//! wants used-buffer notifications) and the device's (in the place of the used ring: when
//! the device wants kicks). A buffer is made available by writing its descriptors at the
//! driver's position with AVAIL = the driver's wrap counter and USED = its inverse, the
//! first descriptor's flags last; the device returns it by writing one descriptor with the
//! buffer ID, the length and AVAIL = USED = its wrap counter at its own position, then skips
//! the buffer's other descriptors. Buffer IDs are this driver's head ids (`0..size`).

use std::sync::atomic::{fence, Ordering};

use vm_memory::{Address, Bytes, GuestAddress};

use super::{mem_err, Buffer, Chain, Error, Result, UsedElem, VirtqueueDriver};
use super::{VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE};

/// Descriptor flag: available (compared with the driver's wrap counter).
pub const VIRTQ_DESC_F_AVAIL: u16 = 1 << 7;
/// Descriptor flag: used (compared with the device's wrap counter).
pub const VIRTQ_DESC_F_USED: u16 = 1 << 15;
/// Event suppression: notifications wanted.
pub const RING_EVENT_FLAGS_ENABLE: u16 = 0;
/// Event suppression: no notifications.
pub const RING_EVENT_FLAGS_DISABLE: u16 = 1;
/// Event suppression: a notification at one descriptor position (EVENT_IDX).
pub const RING_EVENT_FLAGS_DESC: u16 = 2;

/// The driver's positions in a packed ring.
#[derive(Debug, Clone, Default)]
pub(super) struct PackedState {
    /// Next descriptor slot to write, and the wrap counter it is written with.
    avail: (u16, bool),
    /// The position (and wrap counter) at the last publish.
    published: (u16, bool),
    /// Next slot the device's used descriptor is read from, and the wrap counter expected.
    used: (u16, bool),
    /// Head slots and head flags written but not yet made available.
    pending: Vec<(u16, u16)>,
    /// Descriptor slots not holding a buffer.
    free_descs: u16,
}

/// The flags that make a descriptor available under wrap counter `wrap`.
fn avail_flags(wrap: bool) -> u16 {
    if wrap {
        VIRTQ_DESC_F_AVAIL
    } else {
        VIRTQ_DESC_F_USED
    }
}

/// The SET/GET_VRING_BASE encoding of a packed ring's state (vhost-user "Ring states").
pub fn encode_packed_base(avail: (u16, bool), used: (u16, bool)) -> u32 {
    let half = |(i, w): (u16, bool)| u32::from(i & 0x7fff) | (u32::from(w) << 15);
    half(avail) | (half(used) << 16)
}

impl PackedState {
    pub(super) fn new(size: u16) -> Self {
        PackedState {
            avail: (0, true),
            published: (0, true),
            used: (0, true),
            pending: Vec::with_capacity(usize::from(size)),
            free_descs: size,
        }
    }
}

impl VirtqueueDriver {
    fn packed_state(&mut self) -> &mut PackedState {
        self.packed.as_mut().expect("packed layout")
    }

    /// Sets the ring as a device that resumes at `base` (the packed SET_VRING_BASE
    /// encoding) expects it. Only with nothing added or in flight.
    pub(super) fn packed_start_at(&mut self, base: u32) -> Result<()> {
        let size = self.size;
        let half = |h: u32| ((h & 0x7fff) as u16 % size, h & 0x8000 != 0);
        let p = self.packed_state();
        p.avail = half(base);
        p.published = p.avail;
        p.used = half(base >> 16);
        p.pending.clear();
        p.free_descs = size;
        self.calls_enabled = true;
        self.store_u16(self.avail_ring, 0)?;
        self.store_u16(self.avail_ring.unchecked_add(2), RING_EVENT_FLAGS_ENABLE)?;
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// The packed base encoding of this driver's state: what SET_VRING_BASE carries to
    /// resume a ring with nothing in flight.
    pub(super) fn packed_base(&self) -> u32 {
        let p = self.packed.as_ref().expect("packed layout");
        encode_packed_base(p.published, p.used)
    }

    /// Writes one buffer's descriptors at the driver's position; the head's flags wait for
    /// [`packed_publish`](Self::packed_publish).
    pub(super) fn packed_add_chain(&mut self, bufs: &[Buffer], writable: u64) -> Result<u16> {
        self.packed_add(bufs.len(), writable, |i| {
            let (addr, len, write) = bufs[i];
            (addr.0, len, if write { VIRTQ_DESC_F_WRITE } else { 0 })
        })
    }

    /// Writes `n` descriptors (`desc(i)`: address, length, WRITE/INDIRECT flags) as one
    /// buffer.
    fn packed_add(
        &mut self,
        n: usize,
        writable: u64,
        desc: impl Fn(usize) -> (u64, u32, u16),
    ) -> Result<u16> {
        let p = self.packed.as_ref().expect("packed layout");
        if n > usize::from(p.free_descs) || self.free.is_empty() {
            return Err(Error::NotEnoughDescriptors {
                needed: n,
                free: usize::from(p.free_descs).min(self.free.len() * n),
            });
        }
        let id = *self.free.last().expect("checked");
        let (mut pos, mut wrap) = p.avail;
        let (head_pos, head_wrap) = (pos, wrap);
        let mut head_flags = 0;
        for i in 0..n {
            let (addr, len, flags) = desc(i);
            if i == 0 {
                head_flags = flags;
            }
            let next = if i + 1 < n { VIRTQ_DESC_F_NEXT } else { 0 };
            let at = self.desc_addr(self.desc_table, pos);
            self.write_packed_desc_body(at, addr, len, id)?;
            if i > 0 {
                self.mem
                    .store(
                        (flags | next | avail_flags(wrap)).to_le(),
                        at.unchecked_add(14),
                        Ordering::Release,
                    )
                    .map_err(mem_err)?;
            }
            pos += 1;
            if pos == self.size {
                pos = 0;
                wrap = !wrap;
            }
        }
        let head_flags = head_flags | if n > 1 { VIRTQ_DESC_F_NEXT } else { 0 };
        self.free.pop();
        self.chains[usize::from(id)] = Chain {
            descs: n as u16,
            writable,
        };
        let p = self.packed_state();
        p.avail = (pos, wrap);
        p.free_descs -= n as u16;
        p.pending
            .push((head_pos, head_flags | avail_flags(head_wrap)));
        Ok(id)
    }

    /// Adds a chain as one descriptor pointing at this id's indirect table.
    pub(super) fn packed_add_indirect(&mut self, bufs: &[Buffer], writable: u64) -> Result<u16> {
        let tables = self.indirect.ok_or(Error::IndirectUnavailable)?;
        if bufs.len() > usize::from(tables.max_len) {
            return Err(Error::IndirectTooLong {
                len: bufs.len(),
                max: tables.max_len,
            });
        }
        let id = *self
            .free
            .last()
            .ok_or(Error::NotEnoughDescriptors { needed: 1, free: 0 })?;
        let table = tables
            .base
            .unchecked_add(u64::from(id) * u64::from(tables.max_len) * 16);
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let at = table.unchecked_add(i as u64 * 16);
            let flags = if write { VIRTQ_DESC_F_WRITE } else { 0 };
            self.write_packed_desc(at, addr.0, len, 0, flags)?;
        }
        let table_len = (bufs.len() as u64 * 16) as u32;
        self.packed_add(1, writable, |_| (table.0, table_len, VIRTQ_DESC_F_INDIRECT))
    }

    /// Makes the buffers added since the last call available (head flags, in order) and
    /// says whether the device wants a kick (the device event suppression area).
    pub(super) fn packed_publish(&mut self) -> Result<bool> {
        let size = self.size;
        let p = self.packed.as_mut().expect("packed layout");
        if p.pending.is_empty() {
            return Ok(false);
        }
        let count = p.pending.len() as u16;
        let pending = std::mem::take(&mut p.pending);
        for &(pos, flags) in &pending {
            let at = self.desc_table.unchecked_add(u64::from(pos) * 16 + 14);
            self.mem
                .store(flags.to_le(), at, Ordering::Release)
                .map_err(mem_err)?;
        }
        let p = self.packed_state();
        let mut pending = pending;
        pending.clear();
        p.pending = pending;
        let (old, _) = p.published;
        let (new, new_wrap) = p.avail;
        p.published = p.avail;
        self.in_flight += count;
        fence(Ordering::SeqCst);
        let off_wrap = self.load_u16(self.used_ring, Ordering::Relaxed)?;
        let flags = self.load_u16(self.used_ring.unchecked_add(2), Ordering::Relaxed)?;
        Ok(match flags & 3 {
            RING_EVENT_FLAGS_DISABLE => false,
            RING_EVENT_FLAGS_DESC if self.event_idx => {
                let mut off = off_wrap & 0x7fff;
                if (off_wrap & 0x8000 != 0) != new_wrap {
                    off = off.wrapping_sub(size);
                }
                let old = if new <= old {
                    old.wrapping_sub(size)
                } else {
                    old
                };
                new.wrapping_sub(off).wrapping_sub(1) < new.wrapping_sub(old)
            }
            _ => true,
        })
    }

    /// Reads the next used descriptor, if the device wrote one.
    fn packed_peek_used(&self) -> Result<Option<(u16, u32)>> {
        let p = self.packed.as_ref().expect("packed layout");
        let (pos, wrap) = p.used;
        let at = self.desc_addr(self.desc_table, pos);
        let flags = self.load_u16(at.unchecked_add(14), Ordering::Acquire)?;
        let avail = flags & VIRTQ_DESC_F_AVAIL != 0;
        let used = flags & VIRTQ_DESC_F_USED != 0;
        if avail != wrap || used != wrap {
            return Ok(None);
        }
        let id = self.load_u16(at.unchecked_add(12), Ordering::Relaxed)?;
        let len = u32::from_le(
            self.mem
                .read_obj::<u32>(at.unchecked_add(8))
                .map_err(mem_err)?,
        );
        Ok(Some((id, len)))
    }

    /// [`pop_used`](VirtqueueDriver::pop_used) for the packed layout.
    pub(super) fn packed_pop_used(&mut self) -> Result<Option<UsedElem>> {
        let mut next = self.packed_peek_used()?;
        if next.is_none() && self.in_flight > 0 && self.calls_enabled {
            self.packed_arm_calls()?;
            fence(Ordering::SeqCst);
            next = self.packed_peek_used()?;
        }
        let Some((id, len)) = next else {
            return Ok(None);
        };
        let (pos, _) = self.packed.as_ref().expect("packed layout").used;
        if self.in_flight == 0 {
            return Err(Error::UsedIdxTooFar {
                used_idx: pos,
                last_used: pos,
                ahead: 1,
                in_flight: 0,
            });
        }
        if id >= self.size {
            return Err(Error::UsedIdOutOfRange {
                used_idx: pos,
                id: u32::from(id),
                size: self.size,
            });
        }
        let chain = self.chains[usize::from(id)];
        if chain.descs == 0 {
            return Err(Error::UsedIdNotInFlight { used_idx: pos, id });
        }
        if u64::from(len) > chain.writable {
            return Err(Error::UsedLenTooLong {
                used_idx: pos,
                id,
                len,
                writable: chain.writable,
            });
        }
        self.chains[usize::from(id)] = Chain::default();
        self.free.push(id);
        self.in_flight -= 1;
        let size = self.size;
        let p = self.packed_state();
        p.free_descs += chain.descs;
        let (pos, wrap) = p.used;
        let next = u32::from(pos) + u32::from(chain.descs);
        p.used = if next >= u32::from(size) {
            ((next - u32::from(size)) as u16, !wrap)
        } else {
            (next as u16, wrap)
        };
        Ok(Some(UsedElem { id, len }))
    }

    /// Asks for a call at the next used descriptor (EVENT_IDX: at its position; otherwise
    /// for every one).
    fn packed_arm_calls(&mut self) -> Result<()> {
        let (pos, wrap) = self.packed.as_ref().expect("packed layout").used;
        if self.event_idx {
            self.store_u16(self.avail_ring, pos | (u16::from(wrap) << 15))?;
            self.store_u16(self.avail_ring.unchecked_add(2), RING_EVENT_FLAGS_DESC)?;
        } else {
            self.store_u16(self.avail_ring.unchecked_add(2), RING_EVENT_FLAGS_ENABLE)?;
        }
        Ok(())
    }

    /// [`enable_calls`](VirtqueueDriver::enable_calls) for the packed layout.
    pub(super) fn packed_enable_calls(&mut self, enabled: bool) -> Result<()> {
        self.calls_enabled = enabled;
        if enabled {
            self.packed_arm_calls()?;
        } else {
            self.store_u16(self.avail_ring.unchecked_add(2), RING_EVENT_FLAGS_DISABLE)?;
        }
        fence(Ordering::SeqCst);
        Ok(())
    }

    /// Descriptor slots free (packed: slots not holding a buffer, when an id is free).
    pub(super) fn packed_num_free(&self) -> usize {
        match &self.packed {
            Some(p) if !self.free.is_empty() => usize::from(p.free_descs),
            _ => 0,
        }
    }

    /// Buffers added and not yet published.
    pub(super) fn packed_pending(&self) -> u16 {
        self.packed.as_ref().map_or(0, |p| p.pending.len() as u16)
    }

    fn write_packed_desc(
        &self,
        at: GuestAddress,
        addr: u64,
        len: u32,
        id: u16,
        flags: u16,
    ) -> Result<()> {
        self.write_packed_desc_body(at, addr, len, id)?;
        self.mem
            .write_obj(flags.to_le(), at.unchecked_add(14))
            .map_err(mem_err)
    }

    /// Writes a packed descriptor's address, length and id (not its flags, which make it
    /// available and are written last).
    fn write_packed_desc_body(&self, at: GuestAddress, addr: u64, len: u32, id: u16) -> Result<()> {
        self.mem.write_obj(addr.to_le(), at).map_err(mem_err)?;
        self.mem
            .write_obj(len.to_le(), at.unchecked_add(8))
            .map_err(mem_err)?;
        self.mem
            .write_obj(id.to_le(), at.unchecked_add(12))
            .map_err(mem_err)
    }
}
