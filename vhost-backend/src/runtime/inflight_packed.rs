//! Inflight I/O tracking for packed rings: the spec's packed queue region (vhost-user
//! "Inflight I/O tracking", `QueueRegionPacked` and `DescStatePacked`).
//!
//! A packed ring's used descriptors overwrite the available ones, so a restarted back-end
//! cannot read a request it did not finish back from the ring: the region keeps a copy of
//! every descriptor taken (`addr`, `len`, `flags`, `id`), in entries chained from a free
//! list. An entry heading a request records how many descriptors it took (`num`), its last
//! entry (`last`), the order it was taken in (`counter`) and whether it is in flight.
//!
//! - **pop** ([`PackedInflight::mark`]): the head entry (the free list's head) gets
//!   `num = 0`, its counter, `inflight = 1`; then each descriptor of the buffer (as the ring
//!   holds it: an indirect table is one descriptor) is copied into the next free entry,
//!   `num` and `last` follow, `free_head` moves on; `old_free_head` last.
//! - **publish**, one used descriptor at a time (a batch of one):
//!   [`PackedInflight::before_used`] links the request's entries back into the free list
//!   (`desc[last].next`, `free_head`) and records the used position and wrap counter the
//!   ring will have; the used descriptor is written; [`PackedInflight::after_used`] clears
//!   the head's flag and commits `old_free_head`, then `old_used_idx` and
//!   `old_used_wrap_counter` (the ring's used position as it is: unmoved when the write
//!   failed). The four used fields (`used_idx`, `old_used_idx`, `used_wrap_counter`,
//!   `old_used_wrap_counter`, offsets 16 to 21) are always written together, with one
//!   aligned 8-byte store: an index is never seen with another lap's wrap counter.
//! - **start** ([`PackedInflight::recover`]): when the used position differs from the old
//!   one, a publish was interrupted. If `old_free_head` equals `free_head` its commit was
//!   under way (the used descriptor was written): committed. Otherwise, if the ring's
//!   descriptor at the old used position is no longer the available one of the old lap,
//!   the used descriptor was written and the update is committed, else rolled back. Flags
//!   in the free list are cleared; every entry still in
//!   flight is resubmitted in counter order, from its copied descriptors. The ring resumes
//!   its used side at the region's position and its available side past every descriptor
//!   in flight (each descriptor taken is either behind the used position or in flight).
//!   An uninitialised region (version 0) is initialised and the ring resumes at
//!   SET_VRING_BASE.
//!
//! Only the region's state at a start is read back: the back-end keeps its own copy of the
//! free list while the ring runs and only writes the region. What it reads at a start is
//! checked whole before anything is resubmitted (`desc_num`, positions, every chain within
//! bounds, no entry in two chains, no buffer ID twice, no more descriptors in flight than
//! the ring has): a region that fails is refused with [`InflightError::Corrupt`], and the
//! free list is rebuilt from the requests found, whatever links the region had.

use std::sync::Arc;

use virtio_queue::desc::packed::Descriptor as PackedDesc;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::inflight::{crash_point, InflightArea, InflightError};
use super::packed::{decode_base, encode_base, DESC_F_AVAIL, DESC_F_USED};
use vhost_proto::inflight::{INFLIGHT_ALIGNMENT, INFLIGHT_VERSION};

/// Field offsets of the packed queue region (`QueueRegionPacked`) and of its entries
/// (`DescStatePacked`, 32 bytes).
pub(crate) mod off {
    /// `u16 version`.
    pub const VERSION: u64 = 8;
    /// `u16 desc_num`.
    pub const DESC_NUM: u64 = 10;
    /// `u16 free_head`.
    pub const FREE_HEAD: u64 = 12;
    /// `u16 old_free_head`.
    pub const OLD_FREE_HEAD: u64 = 14;
    /// `u16 used_idx`.
    pub const USED_IDX: u64 = 16;
    /// `u16 old_used_idx`.
    pub const OLD_USED_IDX: u64 = 18;
    /// `u8 used_wrap_counter`.
    pub const USED_WRAP: u64 = 20;
    /// `u8 old_used_wrap_counter`.
    pub const OLD_USED_WRAP: u64 = 21;
    /// The used positions as one aligned 8 bytes: `used_idx`, `old_used_idx`,
    /// `used_wrap_counter`, `old_used_wrap_counter` and 2 bytes of padding, written with one
    /// store so that an index is never seen with another lap's wrap counter.
    pub const USED_PAIRS: u64 = USED_IDX;
    /// The entries, after 7 bytes of padding (aligned for their `u64` fields).
    pub const DESCS: u64 = 32;
    /// Bytes per entry.
    pub const DESC_SIZE: u64 = 32;
    /// Entry: `u8 inflight`.
    pub const D_INFLIGHT: u64 = 0;
    /// Entry: `u16 next`.
    pub const D_NEXT: u64 = 2;
    /// Entry: `u16 last`.
    pub const D_LAST: u64 = 4;
    /// Entry: `u16 num`.
    pub const D_NUM: u64 = 6;
    /// Entry: `u64 counter`.
    pub const D_COUNTER: u64 = 8;
    /// Entry: `u16 id`.
    pub const D_ID: u64 = 16;
    /// Entry: `u16 flags`.
    pub const D_FLAGS: u64 = 18;
    /// Entry: `u32 len`.
    pub const D_LEN: u64 = 20;
    /// Entry: `u64 addr`.
    pub const D_ADDR: u64 = 24;
}

/// Bytes of one packed queue region of `queue_size` entries, as DPDK spaces them (the
/// header's fields, then the entries, rounded up to 64 bytes).
pub const fn packed_queue_region_size(queue_size: u16) -> u64 {
    let raw = off::DESC_SIZE * queue_size as u64 + 29;
    raw.div_ceil(INFLIGHT_ALIGNMENT) * INFLIGHT_ALIGNMENT
}

/// No entry.
const NONE: u16 = u16::MAX;

/// A request a previous back-end left in flight.
#[derive(Debug)]
pub(crate) struct Resubmitted {
    /// Its buffer ID.
    pub(crate) id: u16,
    /// Its descriptors as the ring held them.
    pub(crate) descs: Vec<PackedDesc>,
}

/// What [`PackedInflight::recover`] found.
#[derive(Debug)]
pub(crate) struct PackedRecovery {
    /// Where the ring resumes ([`super::packed::encode_base`]).
    pub(crate) base: u32,
    /// Requests to resubmit, in the order they were first taken.
    pub(crate) requests: Vec<Resubmitted>,
    /// An interrupted publish was committed or rolled back.
    pub(crate) repaired: bool,
    /// The region was uninitialised: it says nothing about the ring.
    pub(crate) fresh: bool,
}

/// One packed ring's queue region. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct PackedInflight {
    area: Arc<InflightArea>,
    index: u16,
    /// Offset of the queue region in the area.
    base: u64,
    /// Entries in the region (the area's validated queue size).
    desc_num: u16,
    /// The counter the next request taken gets.
    counter: u64,
    /// The free list's links (the region's copy is written, read only at a start).
    next: Vec<u16>,
    free_head: u16,
    /// Entries in the free list.
    free: u16,
    /// Per entry heading a request: its last entry and its descriptor count.
    last: Vec<u16>,
    num: Vec<u16>,
    /// Head entry of each outstanding buffer ID ([`NONE`] when none).
    head_of: Vec<u16>,
    /// The used position and wrap counter recorded last.
    used: (u16, bool),
}

impl PackedInflight {
    /// The packed tracking of ring `index` in `area` (which has the packed layout and
    /// covers the ring).
    pub(crate) fn new(area: &Arc<InflightArea>, index: u16) -> Self {
        let desc_num = area.queue_size();
        let n = usize::from(desc_num);
        PackedInflight {
            area: Arc::clone(area),
            index,
            base: u64::from(index) * packed_queue_region_size(desc_num),
            desc_num,
            counter: 0,
            next: vec![NONE; n],
            free_head: NONE,
            free: 0,
            last: vec![NONE; n],
            num: vec![0; n],
            head_of: Vec::new(),
            used: (0, true),
        }
    }

    fn header(&self, field: u64) -> GuestAddress {
        GuestAddress(self.base + field)
    }

    /// Entry `e`'s `field`; `e < desc_num` (the callers' bound).
    fn desc(&self, e: u16, field: u64) -> GuestAddress {
        GuestAddress(self.base + off::DESCS + u64::from(e) * off::DESC_SIZE + field)
    }

    fn store<T: vm_memory::AtomicAccess>(&self, v: T, at: GuestAddress) {
        self.area.store(v, at);
    }

    fn load<T: vm_memory::AtomicAccess + Default>(&self, at: GuestAddress) -> T {
        self.area.load(at)
    }

    /// Writes the used position `cur` and the committed one `old` with one store (see
    /// [`off::USED_PAIRS`]).
    fn store_used(&self, cur: (u16, bool), old: (u16, bool)) {
        let mut b = [0u8; 8];
        b[0..2].copy_from_slice(&cur.0.to_ne_bytes());
        b[2..4].copy_from_slice(&old.0.to_ne_bytes());
        b[4] = u8::from(cur.1);
        b[5] = u8::from(old.1);
        self.store(u64::from_ne_bytes(b), self.header(off::USED_PAIRS));
    }

    fn corrupt(&self, why: String) -> InflightError {
        InflightError::Corrupt {
            index: self.index,
            why,
        }
    }

    /// Pop: buffer `id` was taken, its descriptors `descs` as the ring held them. A buffer
    /// the region has no room for (which the ring's size rules out) is not tracked.
    pub(crate) fn mark(&mut self, id: u16, descs: &[PackedDesc]) {
        let n = descs.len();
        let Some(slot) = self.head_of.get(usize::from(id)) else {
            return;
        };
        if n == 0 || n > usize::from(self.free) || *slot != NONE {
            log::error!(
                "vring {}: buffer {id} of {n} descriptor(s) cannot be tracked in the inflight \
                 region ({} entries free)",
                self.index,
                self.free
            );
            return;
        }
        let head = self.free_head;
        self.store(0u16, self.desc(head, off::D_NUM));
        self.store(self.counter, self.desc(head, off::D_COUNTER));
        self.counter = self.counter.wrapping_add(1);
        self.store(1u8, self.desc(head, off::D_INFLIGHT));
        crash_point("packed: head marked in flight, descriptors not yet copied");
        for (i, d) in descs.iter().enumerate() {
            let e = self.free_head;
            if i + 1 == n {
                self.store(e, self.desc(head, off::D_LAST));
                self.last[usize::from(head)] = e;
            }
            self.store((i + 1) as u16, self.desc(head, off::D_NUM));
            self.store(d.addr().raw_value(), self.desc(e, off::D_ADDR));
            self.store(d.len(), self.desc(e, off::D_LEN));
            self.store(d.flags(), self.desc(e, off::D_FLAGS));
            self.store(d.id(), self.desc(e, off::D_ID));
            self.free_head = self.next[usize::from(e)];
            self.store(self.free_head, self.header(off::FREE_HEAD));
            crash_point("packed: a descriptor copied, free_head moved past it");
        }
        self.num[usize::from(head)] = n as u16;
        self.free -= n as u16;
        self.head_of[usize::from(id)] = head;
        crash_point("packed: descriptors copied, old_free_head not yet moved");
        self.store(self.free_head, self.header(off::OLD_FREE_HEAD));
        crash_point("packed: marked in flight, not yet completed");
    }

    /// Publish, before the used descriptor of `id` is written: its entries go back to the
    /// free list, and the region records `used` (position, wrap counter), the ring's used
    /// side once the descriptor is written.
    pub(crate) fn before_used(&mut self, id: u16, used: (u16, bool)) {
        let Some(&head) = self.head_of.get(usize::from(id)) else {
            return;
        };
        if head == NONE {
            return;
        }
        let last = self.last[usize::from(head)];
        self.store(self.free_head, self.desc(last, off::D_NEXT));
        self.next[usize::from(last)] = self.free_head;
        self.free_head = head;
        self.free += self.num[usize::from(head)];
        self.store(head, self.header(off::FREE_HEAD));
        crash_point("packed publishing: entries freed, used_idx not yet moved");
        // `self.used` is the committed position (`after_used` and `record_used` commit it).
        self.store_used(used, self.used);
        self.used = used;
        crash_point("packed publishing: used_idx moved, used descriptor not yet written");
    }

    /// Publish, after the used descriptor of `id` was written, or failed to be: clears its
    /// flag and commits the ring's used position `used` (position, wrap counter) as it is
    /// now, which is the one [`before_used`](Self::before_used) recorded when the write
    /// succeeded and the unmoved one when it failed.
    pub(crate) fn after_used(&mut self, id: u16, used: (u16, bool)) {
        let Some(slot) = self.head_of.get_mut(usize::from(id)) else {
            return;
        };
        let head = std::mem::replace(slot, NONE);
        if head == NONE {
            return;
        }
        crash_point("packed publishing: used descriptor written, flag not yet cleared");
        self.store(0u8, self.desc(head, off::D_INFLIGHT));
        crash_point("packed publishing: flag cleared, not yet committed");
        if used != self.used {
            // Nothing was written: the used position goes back before `old_free_head`
            // moves, so that a start never takes the commit as under way (see `recover`).
            self.store_used(used, used);
            self.used = used;
        }
        self.store(self.free_head, self.header(off::OLD_FREE_HEAD));
        crash_point("packed publishing: old_free_head committed, used position not yet");
        self.store_used(self.used, self.used);
    }

    /// Makes every entry free (in order) except those of `taken`, in the region and here.
    fn rebuild_free_list(&mut self, taken: &[bool]) {
        let mut prev = NONE;
        self.free = 0;
        self.free_head = NONE;
        for e in 0..self.desc_num {
            if taken[usize::from(e)] {
                continue;
            }
            self.store(0u8, self.desc(e, off::D_INFLIGHT));
            if prev == NONE {
                self.free_head = e;
            } else {
                self.next[usize::from(prev)] = e;
                self.store(e, self.desc(prev, off::D_NEXT));
            }
            prev = e;
            self.free += 1;
            if self.free == 2 {
                crash_point("packed recovery: free list partly relinked");
            }
        }
        if prev != NONE {
            // The end of the list: DPDK links entry i to i + 1, the last to desc_num.
            self.next[usize::from(prev)] = self.desc_num;
            self.store(self.desc_num, self.desc(prev, off::D_NEXT));
        } else {
            self.free_head = self.desc_num;
        }
        crash_point("packed recovery: free list relinked, free_head not yet written");
        self.store(self.free_head, self.header(off::FREE_HEAD));
        self.store(self.free_head, self.header(off::OLD_FREE_HEAD));
    }

    fn record_used(&mut self, used: (u16, bool)) {
        self.used = used;
        self.store_used(used, used);
    }

    /// Start of a packed ring of `ring_size` descriptors (at most `desc_num`) at `desc`,
    /// whose SET_VRING_BASE was `base`: repairs an interrupted publish, checks the region
    /// and lists the requests to resubmit and where the ring resumes. See the
    /// [module docs](self).
    pub(crate) fn recover(
        &mut self,
        mem: &GuestMemoryMmap,
        desc: GuestAddress,
        ring_size: u16,
        base: u32,
    ) -> Result<PackedRecovery, InflightError> {
        let size = ring_size.max(1);
        self.head_of = vec![NONE; usize::from(size)];
        let version: u16 = self.load(self.header(off::VERSION));
        if version == 0 {
            let (a, aw, u, uw) = decode_base(base);
            self.store(self.desc_num, self.header(off::DESC_NUM));
            self.rebuild_free_list(&vec![false; usize::from(self.desc_num)]);
            self.record_used((u % size, uw));
            crash_point("packed recovery: used position recorded, version not yet written");
            self.store(INFLIGHT_VERSION, self.header(off::VERSION));
            self.counter = 0;
            return Ok(PackedRecovery {
                base: encode_base(a % size, aw, u % size, uw),
                requests: Vec::new(),
                repaired: false,
                fresh: true,
            });
        }
        let desc_num: u16 = self.load(self.header(off::DESC_NUM));
        if desc_num != self.desc_num {
            return Err(self.corrupt(format!(
                "desc_num {desc_num}, the area's queue size is {}",
                self.desc_num
            )));
        }
        let wrap = |v: u8, what: &str| match v {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(self.corrupt(format!("{what} {v}"))),
        };
        let cur = (
            self.load::<u16>(self.header(off::FREE_HEAD)),
            self.load::<u16>(self.header(off::USED_IDX)),
            wrap(self.load(self.header(off::USED_WRAP)), "used_wrap_counter")?,
        );
        let old = (
            self.load::<u16>(self.header(off::OLD_FREE_HEAD)),
            self.load::<u16>(self.header(off::OLD_USED_IDX)),
            wrap(
                self.load(self.header(off::OLD_USED_WRAP)),
                "old_used_wrap_counter",
            )?,
        );
        let mut repaired = false;
        let (free_head, used_idx, used_wrap) = if (cur.1, cur.2) != (old.1, old.2) {
            repaired = true;
            if old.1 >= ring_size {
                return Err(
                    self.corrupt(format!("old_used_idx {} in a ring of {ring_size}", old.1))
                );
            }
            if cur.0 == old.0 {
                // `old_free_head` is committed first when a publish commits, and the free
                // head moved when it began (to the request's head, which the committed
                // free list did not hold): equal heads with the used positions apart mean
                // the commit was under way, after the used descriptor was written. This
                // also settles a region whose old index was committed without its wrap
                // counter (separate stores: an older back-end, DPDK), where the flags at
                // the old index say nothing of the lap.
                cur
            } else {
                // The publish had begun, `old` is the ring's used position before it (the
                // pair is written whole): the descriptor there is still the available one
                // (the driver's flags for that lap) when the used descriptor was not
                // written.
                let at = desc
                    .checked_add(u64::from(old.1) * 16 + 14)
                    .ok_or_else(|| self.corrupt("descriptor ring address overflows".into()))?;
                let flags: u16 = mem
                    .read_obj(at)
                    .map_err(|e| self.corrupt(format!("reading the descriptor ring: {e}")))?;
                let avail = if old.2 { DESC_F_AVAIL } else { DESC_F_USED };
                if u16::from_le(flags) & (DESC_F_AVAIL | DESC_F_USED) == avail {
                    old
                } else {
                    cur
                }
            }
        } else {
            // Whatever moved since the last commit (a pop or a publish cut short before
            // the used position moved) is rolled back.
            old
        };
        if used_idx >= ring_size {
            return Err(self.corrupt(format!("used_idx {used_idx} in a ring of {ring_size}")));
        }
        // The free list as the region has it, bounded by its length.
        let n = usize::from(self.desc_num);
        let mut in_free = vec![false; n];
        let mut e = free_head;
        while usize::from(e) < n && !in_free[usize::from(e)] {
            in_free[usize::from(e)] = true;
            e = self.load(self.desc(e, off::D_NEXT));
        }
        // Every entry outside it flagged in flight heads a request.
        let mut taken = vec![false; n];
        let mut found: Vec<(u64, u16, Resubmitted)> = Vec::new();
        let mut total: u32 = 0;
        for head in 0..self.desc_num {
            if in_free[usize::from(head)] {
                continue;
            }
            let flag: u8 = self.load(self.desc(head, off::D_INFLIGHT));
            if flag == 0 {
                continue;
            }
            let num: u16 = self.load(self.desc(head, off::D_NUM));
            let last: u16 = self.load(self.desc(head, off::D_LAST));
            if num == 0 || num > ring_size {
                return Err(self.corrupt(format!("entry {head}: num {num}")));
            }
            total += u32::from(num);
            if total > u32::from(ring_size) {
                return Err(self.corrupt(format!(
                    "more descriptors in flight than the ring's {ring_size}"
                )));
            }
            let mut descs = Vec::with_capacity(usize::from(num));
            let mut e = head;
            for k in 0..num {
                if usize::from(e) >= n || in_free[usize::from(e)] || taken[usize::from(e)] {
                    return Err(self.corrupt(format!(
                        "entry {head}: its descriptor {k} is entry {e}, free, taken or out of \
                         range"
                    )));
                }
                taken[usize::from(e)] = true;
                descs.push(PackedDesc::new(
                    self.load(self.desc(e, off::D_ADDR)),
                    self.load(self.desc(e, off::D_LEN)),
                    self.load(self.desc(e, off::D_ID)),
                    self.load(self.desc(e, off::D_FLAGS)),
                ));
                if k + 1 < num {
                    let next = self.load(self.desc(e, off::D_NEXT));
                    // The chain goes back to the free list whole when it completes.
                    self.next[usize::from(e)] = next;
                    e = next;
                }
            }
            if e != last {
                return Err(self.corrupt(format!(
                    "entry {head}: last is {last}, its chain ends at {e}"
                )));
            }
            // The buffer ID is the last descriptor's (what the ring's pop keeps).
            let id = descs.last().map_or(0, |d| d.id());
            if id >= ring_size || self.head_of[usize::from(id)] != NONE {
                return Err(self.corrupt(format!(
                    "entry {head}: buffer ID {id} out of range or in flight twice"
                )));
            }
            self.head_of[usize::from(id)] = head;
            self.last[usize::from(head)] = last;
            self.num[usize::from(head)] = num;
            let counter: u64 = self.load(self.desc(head, off::D_COUNTER));
            found.push((counter, head, Resubmitted { id, descs }));
        }
        found.sort_unstable_by_key(|&(c, h, _)| (c, h));
        self.counter = found.last().map_or(0, |&(c, _, _)| c.wrapping_add(1));
        self.rebuild_free_list(&taken);
        self.record_used((used_idx, used_wrap));
        // Every descriptor taken is behind the used position or in flight.
        let lap = 2 * u32::from(size);
        let used_lin = u32::from(used_idx) + if used_wrap { 0 } else { u32::from(size) };
        let avail_lin = (used_lin + total) % lap;
        let avail_wrap = avail_lin < u32::from(size);
        let avail = (avail_lin % u32::from(size)) as u16;
        Ok(PackedRecovery {
            base: encode_base(avail, avail_wrap, used_idx, used_wrap),
            requests: found.into_iter().map(|(_, _, r)| r).collect(),
            repaired,
            fresh: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::runtime::inflight::create_area;
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use vhost_proto::Inflight;

    fn area(queue_size: u16) -> (Arc<InflightArea>, File) {
        let info = Inflight {
            num_queues: 1,
            queue_size,
            ..Inflight::default()
        };
        let (reply, fd) = create_area(&info, 1, 256, true).unwrap();
        let keep = File::from(fd.try_clone().unwrap());
        let a = InflightArea::open(&reply, fd, 1, 256, true).unwrap();
        (Arc::new(a), keep)
    }

    fn ring_memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap()
    }

    /// Makes ring position `pos` available for the lap of driver wrap counter `wrap`, with
    /// buffer ID `id`.
    fn make_available(mem: &GuestMemoryMmap, pos: u16, id: u16, wrap: bool) -> PackedDesc {
        let flags = if wrap { DESC_F_AVAIL } else { DESC_F_USED };
        let d = PackedDesc::new(0x800, 16, id, flags);
        mem.write_obj(d, GuestAddress(16 * u64::from(pos))).unwrap();
        d
    }

    #[test]
    fn a_failed_used_write_commits_the_unmoved_position() {
        let (a, _f) = area(8);
        let mem = ring_memory();
        let mut pi = PackedInflight::new(&a, 0);
        let r = pi
            .recover(&mem, GuestAddress(0), 8, encode_base(3, true, 3, true))
            .unwrap();
        assert!(r.fresh);
        let d = make_available(&mem, 3, 3, true);
        pi.mark(3, &[d]);
        // The write would have moved the used position to 5; it failed, the ring is at 3.
        pi.before_used(3, (5, true));
        pi.after_used(3, (3, true));
        let mut again = PackedInflight::new(&a, 0);
        let r = again
            .recover(&mem, GuestAddress(0), 8, encode_base(0, true, 0, true))
            .unwrap();
        assert!(r.requests.is_empty());
        assert!(!r.repaired);
        let (_, _, used, used_wrap) = decode_base(r.base);
        assert_eq!(
            (used, used_wrap),
            (3, true),
            "the ring's real used position"
        );
    }

    #[test]
    fn the_used_positions_are_written_whole() {
        let (a, f) = area(8);
        let mem = ring_memory();
        let mut pi = PackedInflight::new(&a, 0);
        pi.recover(&mem, GuestAddress(0), 8, encode_base(7, true, 7, true))
            .unwrap();
        let d = make_available(&mem, 7, 0, true);
        pi.mark(0, &[d]);
        pi.before_used(0, (0, false));
        let mut h = [0u8; 8];
        f.read_exact_at(&mut h, off::USED_PAIRS).unwrap();
        assert_eq!(h, [0, 0, 7, 0, 0, 1, 0, 0], "used (0, 0), old (7, 1)");
        pi.after_used(0, (0, false));
        f.read_exact_at(&mut h, off::USED_PAIRS).unwrap();
        assert_eq!(h, [0; 8], "used and old (0, 0)");
    }

    /// An old index committed without its wrap counter (two stores, cut between them): the
    /// old free head was committed before, so the publish was; the old index's flags (the
    /// lap before's, as a chain's tail leaves them) do not turn it into a rollback.
    #[test]
    fn a_torn_old_pair_after_the_free_head_commit_is_committed() {
        let (a, _f) = area(8);
        let mem = ring_memory();
        let mut pi = PackedInflight::new(&a, 0);
        pi.recover(&mem, GuestAddress(0), 8, 0).unwrap();
        make_available(&mem, 2, 0, true);
        pi.store_used((2, false), (2, true));
        let mut again = PackedInflight::new(&a, 0);
        let r = again
            .recover(&mem, GuestAddress(0), 8, encode_base(0, true, 0, true))
            .unwrap();
        assert!(r.repaired);
        let (avail, avail_wrap, used, used_wrap) = decode_base(r.base);
        assert_eq!((used, used_wrap), (2, false));
        assert_eq!((avail, avail_wrap), (2, false));
    }

    #[test]
    fn the_layout_is_the_spec_one_and_spaced_like_dpdk() {
        assert_eq!(off::DESCS, 32);
        assert_eq!(off::D_ADDR + 8, off::DESC_SIZE);
        assert_eq!(packed_queue_region_size(1), 64);
        assert_eq!(packed_queue_region_size(2), 128);
        assert_eq!(packed_queue_region_size(3), 128);
        assert_eq!(packed_queue_region_size(256), 8256);
        for n in [1u16, 2, 3, 127, 128, 1024, 32768] {
            assert!(packed_queue_region_size(n) >= 32 + 32 * u64::from(n), "{n}");
        }
    }
}
