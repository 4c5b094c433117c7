//! Packed virtqueues driven by hand through `TestQueue` over a `RingSpec::packed`:
//! well-formed buffers of every shape, out-of-order completion, event suppression, and what
//! a hostile driver can write into the descriptor ring (wrap counters that lie, an ID made
//! available twice, IDs out of range, a chain running past the ring, broken indirect
//! tables). Each must leave the ring serving, never panic, and never hand one buffer out
//! twice.

#![cfg(unix)]

use std::time::Duration;

use vhost_backend::runtime::packed::{
    encode_base, DESC_F_AVAIL, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_USED, DESC_F_WRITE,
    EVENT_FLAGS_DESC, EVENT_FLAGS_DISABLE,
};
use vhost_backend::runtime::testing::{KeepDevice as Keep, RingSpec, TestQueue};
use vhost_backend::runtime::{ChainFault, Request};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const SIZE: u16 = 8;
const DESC: u64 = 0x1000;
const DRIVER_EVENT: u64 = 0x2000;
const DEVICE_EVENT: u64 = 0x2100;
const DATA: u64 = 0x4000;

/// The driver side, written by hand: position and wrap counter of the next descriptor.
struct Driver {
    mem: GuestMemoryMmap,
    pos: u16,
    wrap: bool,
    size: u16,
}

impl Driver {
    fn new() -> (Self, TestQueue) {
        Self::with_event_idx(false)
    }

    fn with_event_idx(event_idx: bool) -> (Self, TestQueue) {
        Self::with(SIZE, event_idx)
    }

    fn with(size: u16, event_idx: bool) -> (Self, TestQueue) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let q = TestQueue::new(
            mem.clone(),
            RingSpec::packed(0, size, [DESC, DRIVER_EVENT, DEVICE_EVENT]).event_idx(event_idx),
        )
        .unwrap();
        (
            Driver {
                mem,
                pos: 0,
                wrap: true,
                size,
            },
            q,
        )
    }

    fn avail_flags(wrap: bool) -> u16 {
        if wrap {
            DESC_F_AVAIL
        } else {
            DESC_F_USED
        }
    }

    /// Writes a raw descriptor at `pos` (flags exactly as given).
    fn raw(&self, pos: u16, addr: u64, len: u32, id: u16, flags: u16) {
        self.desc_at(DESC + u64::from(pos) * 16, addr, len, id, flags);
    }

    /// Writes a descriptor at guest address `at` (a ring position, an indirect table entry).
    fn desc_at(&self, at: u64, addr: u64, len: u32, id: u16, flags: u16) {
        self.mem.write_obj(addr, GuestAddress(at)).unwrap();
        self.mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        self.mem.write_obj(id, GuestAddress(at + 12)).unwrap();
        self.mem.write_obj(flags, GuestAddress(at + 14)).unwrap();
    }

    /// Makes one buffer available: `bufs` are (len, writable), laid at DATA + pos * 0x100.
    fn add(&mut self, id: u16, bufs: &[(u32, bool)]) {
        for (i, &(len, write)) in bufs.iter().enumerate() {
            let mut flags = Self::avail_flags(self.wrap);
            if write {
                flags |= DESC_F_WRITE;
            }
            if i + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            }
            self.raw(self.pos, DATA + u64::from(self.pos) * 0x100, len, id, flags);
            self.step();
        }
    }

    fn step(&mut self) {
        self.pos += 1;
        if self.pos == self.size {
            self.pos = 0;
            self.wrap = !self.wrap;
        }
    }

    /// The used descriptor at `pos`: (id, len, flags).
    fn used(&self, pos: u16) -> (u16, u32, u16) {
        let at = DESC + u64::from(pos) * 16;
        (
            self.mem.read_obj(GuestAddress(at + 12)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 8)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 14)).unwrap(),
        )
    }
}

/// `rounds` rounds of three buffers of shape `bufs` (IDs 0 to 2), each round popped,
/// completed and published whole.
fn serve_rounds(d: &mut Driver, q: &TestQueue, rounds: u16, bufs: &[(u32, bool)]) {
    let dev = Keep::new(SIZE);
    for round in 0..rounds {
        for id in 0..3 {
            d.add(id, bufs);
        }
        q.process(&dev).unwrap();
        let reqs = dev.take();
        assert_eq!(reqs.len(), 3, "round {round}");
        for r in reqs {
            r.complete(8);
        }
        assert_eq!(q.publish(), 3);
    }
}

fn shape(r: &Request) -> (u16, usize, usize) {
    (r.head(), r.readable().len(), r.writable().len())
}

#[test]
fn chains_complete_out_of_order_each_used_descriptor_skips_its_chain() {
    let (mut d, q) = Driver::new();
    let dev = Keep::new(SIZE);
    d.add(0, &[(16, false)]);
    d.add(1, &[(16, false), (64, true)]);
    d.add(2, &[(32, true)]);
    q.process(&dev).unwrap();
    let mut reqs = dev.take();
    assert_eq!(
        reqs.iter().map(shape).collect::<Vec<_>>(),
        [(0, 1, 0), (1, 1, 1), (2, 0, 1)]
    );
    assert_eq!(reqs[1].writable()[0].addr, GuestAddress(DATA + 0x200));
    // Completed 2, 0, 1: used descriptors at positions 0, 1 (2 took one slot), 2 (0 took
    // one), and the used position ends at 4 (1 took two).
    let r1 = reqs.remove(1);
    let r0 = reqs.remove(0);
    let r2 = reqs.remove(0);
    r2.complete(32);
    r0.complete(0);
    r1.complete(64);
    assert_eq!(q.publish(), 3);
    let used = DESC_F_AVAIL | DESC_F_USED;
    assert_eq!(d.used(0), (2, 32, used | DESC_F_WRITE));
    assert_eq!(d.used(1), (0, 0, used));
    assert_eq!(d.used(2), (1, 64, used | DESC_F_WRITE));
    assert_eq!(q.outstanding(), 0);
    assert_eq!(
        q.stop(Duration::from_secs(1)).unwrap(),
        encode_base(4, true, 4, true)
    );
}

#[test]
fn ring_wraps_and_both_wrap_counters_flip() {
    let (mut d, q) = Driver::new();
    // Four rounds of three two-descriptor buffers in a ring of 8: positions wrap three times.
    serve_rounds(&mut d, &q, 4, &[(8, false), (8, true)]);
    // 24 descriptors: position 0 after three wraps, both wrap counters 0.
    assert_eq!((d.pos, d.wrap), (0, false));
    assert_eq!(
        q.stop(Duration::from_secs(1)).unwrap(),
        encode_base(0, false, 0, false)
    );
}

#[test]
fn indirect_table_is_expanded_and_a_table_of_odd_length_gives_an_empty_request() {
    let (d, q) = Driver::new();
    let dev = Keep::new(SIZE);
    let table = 0x3000u64;
    for (i, (len, flags)) in [(16u32, 0u16), (512, DESC_F_WRITE), (1, DESC_F_WRITE)]
        .into_iter()
        .enumerate()
    {
        d.desc_at(
            table + i as u64 * 16,
            DATA + i as u64 * 0x1000,
            len,
            0,
            flags,
        );
    }
    d.raw(0, table, 48, 5, DESC_F_AVAIL | DESC_F_INDIRECT);
    d.raw(1, table, 47, 6, DESC_F_AVAIL | DESC_F_INDIRECT);
    q.process(&dev).unwrap();
    let reqs = dev.take();
    assert_eq!(
        reqs.iter().map(shape).collect::<Vec<_>>(),
        [(5, 1, 2), (6, 0, 0)]
    );
    assert_eq!(reqs[0].writable_len(), 513);
    for r in reqs {
        r.complete(0);
    }
    assert_eq!(q.publish(), 2);
    assert_eq!(q.outstanding(), 0);
}

/// virtio 1.2, 2.8.19: an indirect table must not point to another one. The entry is not
/// taken as a plain buffer: the request carries the fault, and its other entries stay.
#[test]
fn an_indirect_table_inside_an_indirect_table_faults_the_request() {
    let (d, q) = Driver::new();
    let dev = Keep::new(SIZE);
    let (table, inner) = (0x3000u64, 0x3800u64);
    let entries = [
        (DATA, 16u32, 0u16),
        (inner, 32, DESC_F_INDIRECT),
        (DATA + 0x1000, 64, DESC_F_WRITE),
    ];
    for (i, (addr, len, flags)) in entries.into_iter().enumerate() {
        d.desc_at(table + i as u64 * 16, addr, len, 0, flags);
    }
    d.raw(0, table, 48, 3, DESC_F_AVAIL | DESC_F_INDIRECT);
    q.process(&dev).unwrap();
    let reqs = dev.take();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.fault(), Some(ChainFault::NestedIndirect));
    assert_eq!(shape(r), (3, 1, 1), "the nested table is no buffer");
    assert_eq!((r.readable_len(), r.writable_len()), (16, 64));
    for r in reqs {
        r.complete(0);
    }
    assert_eq!(q.publish(), 1);
}

#[test]
fn a_descriptor_written_for_the_wrong_wrap_counter_is_not_taken() {
    let (d, q) = Driver::new();
    let dev = Keep::new(SIZE);
    // AVAIL clear and USED set: available only to a driver wrap counter of 0.
    d.raw(0, DATA, 16, 0, DESC_F_USED);
    q.process(&dev).unwrap();
    assert!(dev.take().is_empty());
    // Both flags set: a used descriptor, not an available one.
    d.raw(0, DATA, 16, 0, DESC_F_AVAIL | DESC_F_USED);
    q.process(&dev).unwrap();
    assert!(dev.take().is_empty());
    // Written right, it is taken.
    d.raw(0, DATA, 16, 0, DESC_F_AVAIL);
    q.process(&dev).unwrap();
    assert_eq!(dev.take().len(), 1);
}

#[test]
fn a_chain_whose_next_descriptor_lies_about_its_wrap_counter_ends_there() {
    let (d, q) = Driver::new();
    let dev = Keep::new(SIZE);
    d.raw(0, DATA, 16, 1, DESC_F_AVAIL | DESC_F_NEXT);
    // The chain says it goes on, but the next descriptor is not available.
    d.raw(1, DATA + 0x100, 16, 1, DESC_F_USED | DESC_F_WRITE);
    q.process(&dev).unwrap();
    let reqs = dev.take();
    assert_eq!(reqs.iter().map(shape).collect::<Vec<_>>(), [(1, 1, 0)]);
    drop(reqs);
    q.publish();
    // The ring goes on at position 1 once the driver writes it properly.
    d.raw(1, DATA + 0x100, 16, 2, DESC_F_AVAIL | DESC_F_WRITE);
    q.process(&dev).unwrap();
    assert_eq!(
        dev.take().iter().map(shape).collect::<Vec<_>>(),
        [(2, 0, 1)]
    );
}

#[test]
fn an_id_made_available_twice_is_handed_out_once() {
    let (mut d, q) = Driver::new();
    let dev = Keep::new(SIZE);
    d.add(3, &[(16, true)]);
    d.add(3, &[(16, true)]);
    d.add(4, &[(16, true)]);
    q.process(&dev).unwrap();
    let reqs = dev.take();
    assert_eq!(
        reqs.iter().map(shape).collect::<Vec<_>>(),
        [(3, 0, 1), (4, 0, 1)]
    );
    assert_eq!(q.outstanding(), 2);
    for r in reqs {
        r.complete(16);
    }
    assert_eq!(q.publish(), 2);
    assert_eq!(q.outstanding(), 0);
}

/// A duplicate of an outstanding ID, with a chain of another length, is skipped and leaves
/// the outstanding buffer's length alone: its used entry skips its own chain.
#[test]
fn a_skipped_duplicate_id_does_not_change_the_chain_length_its_used_entry_skips() {
    let (mut d, q) = Driver::new();
    let dev = Keep::new(SIZE);
    d.add(3, &[(16, false), (16, false), (16, true)]);
    d.add(3, &[(16, true)]);
    q.process(&dev).unwrap();
    let reqs = dev.take();
    assert_eq!(reqs.iter().map(shape).collect::<Vec<_>>(), [(3, 2, 1)]);
    for r in reqs {
        r.complete(16);
    }
    assert_eq!(q.publish(), 1);
    // The used position moved past the three descriptors of the buffer, not the one of
    // the duplicate.
    d.add(5, &[(16, true)]);
    q.process(&dev).unwrap();
    for r in dev.take() {
        r.complete(16);
    }
    assert_eq!(q.publish(), 1);
    assert_eq!(
        d.used(3).0,
        5,
        "the next used entry lands after the first chain"
    );
}

/// Packed rings may have any size (virtio 1.2, 2.8): a ring of 7 serves buffers through
/// three laps, both wrap counters flipping.
#[test]
fn a_ring_whose_size_is_not_a_power_of_two_serves_and_wraps() {
    let (mut d, q) = Driver::with(7, false);
    serve_rounds(&mut d, &q, 7, &[(8, true)]);
    // 21 descriptors in a ring of 7: three laps, back at position 0 with wrap counters 0.
    assert_eq!((d.pos, d.wrap), (0, false));
    assert_eq!(
        q.stop(Duration::from_secs(1)).unwrap(),
        encode_base(0, false, 0, false)
    );
}

#[test]
fn an_id_out_of_range_is_skipped_and_the_ring_goes_on() {
    let (mut d, q) = Driver::new();
    let dev = Keep::new(SIZE);
    d.add(SIZE, &[(16, true)]);
    d.add(u16::MAX, &[(16, true)]);
    d.add(2, &[(16, true)]);
    q.process(&dev).unwrap();
    let reqs = dev.take();
    assert_eq!(reqs.iter().map(shape).collect::<Vec<_>>(), [(2, 0, 1)]);
    assert_eq!(q.outstanding(), 1);
}

#[test]
fn an_id_never_returned_keeps_its_slot_and_stop_gives_up_on_it() {
    let (mut d, q) = Driver::new();
    let dev = Keep::new(SIZE);
    d.add(0, &[(16, true)]);
    d.add(1, &[(16, true)]);
    q.process(&dev).unwrap();
    let mut reqs = dev.take();
    let kept = reqs.remove(0);
    reqs.remove(0).complete(16);
    assert_eq!(q.publish(), 1);
    // The device holds ID 0; the driver offers it again: refused.
    d.add(0, &[(16, true)]);
    q.process(&dev).unwrap();
    assert!(dev.take().is_empty());
    // The stop waits its bound, then gives up on it.
    assert!(q.stop(Duration::from_millis(50)).is_err());
    drop(kept);
}

#[test]
fn a_chain_running_past_the_whole_ring_is_cut_at_the_ring_size() {
    let (d, q) = Driver::new();
    let dev = Keep::new(SIZE);
    for pos in 0..SIZE {
        d.raw(pos, DATA, 16, 7, DESC_F_AVAIL | DESC_F_NEXT | DESC_F_WRITE);
    }
    q.process(&dev).unwrap();
    let reqs = dev.take();
    assert_eq!(
        reqs.iter().map(shape).collect::<Vec<_>>(),
        [(7, 0, usize::from(SIZE))]
    );
    // The ring wrapped: position 0 under wrap counter 0 is not available.
    q.process(&dev).unwrap();
    assert!(dev.take().is_empty());
    for r in reqs {
        r.complete(0);
    }
    assert_eq!(q.publish(), 1);
    assert_eq!(
        q.stop(Duration::from_secs(1)).unwrap(),
        encode_base(0, false, 0, false)
    );
}

#[test]
fn driver_event_area_suppresses_calls_and_event_idx_asks_for_one_position() {
    // Disabled: no notification at all.
    let (mut d, q) = Driver::new();
    let dev = Keep::new(SIZE);
    d.mem
        .write_obj(EVENT_FLAGS_DISABLE, GuestAddress(DRIVER_EVENT + 2))
        .unwrap();
    d.add(0, &[(16, true)]);
    q.process(&dev).unwrap();
    dev.take().into_iter().for_each(|r| r.complete(1));
    q.publish();
    assert_eq!(q.notifications(), 0);

    // EVENT_IDX: a call only once the used position passes position 2 (wrap 1).
    let (mut d, q) = Driver::with_event_idx(true);
    d.mem
        .write_obj(2u16 | 0x8000, GuestAddress(DRIVER_EVENT))
        .unwrap();
    d.mem
        .write_obj(EVENT_FLAGS_DESC, GuestAddress(DRIVER_EVENT + 2))
        .unwrap();
    let mut calls = Vec::new();
    for id in 0..4 {
        d.add(id, &[(16, true)]);
        q.process(&dev).unwrap();
        dev.take().into_iter().for_each(|r| r.complete(1));
        q.publish();
        calls.push(q.notifications());
    }
    // Used positions 1, 2, 3, 4: the entry written at position 2 is the one asked for.
    assert_eq!(calls, [0, 0, 1, 1]);
}
