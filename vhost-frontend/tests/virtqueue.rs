//! The guest-side driver against virtio-queue's device-side `Queue` over the same memory.

use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vhost_frontend::guest_memory::{self, GuestMemory, RegionSpec, REGION_ALIGN};
use vhost_frontend::virtqueue::{
    Error, VirtqueueDriver, VIRTQ_DESC_F_INDIRECT, VIRTQ_DESC_F_NEXT, VIRTQ_DESC_F_WRITE,
    VRING_AVAIL_F_NO_INTERRUPT,
};
use vhost_frontend::{Buffer, UsedElem};
use vhost_test_support::Rng;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A device-side queue set up from the driver's layout, as a back-end would after
/// SET_VRING_NUM / SET_VRING_ADDR / SET_VRING_BASE.
fn device_queue(drv: &VirtqueueDriver, mem: &GuestMemoryMmap, base: u16) -> Queue {
    let mut q = Queue::new(drv.size()).unwrap();
    q.set_size(drv.size());
    let split = |a: GuestAddress| (Some(a.0 as u32), Some((a.0 >> 32) as u32));
    let (lo, hi) = split(drv.desc_table());
    q.set_desc_table_address(lo, hi);
    let (lo, hi) = split(drv.avail_ring());
    q.set_avail_ring_address(lo, hi);
    let (lo, hi) = split(drv.used_ring());
    q.set_used_ring_address(lo, hi);
    q.set_event_idx(drv.event_idx());
    q.set_next_avail(base);
    q.set_next_used(base);
    q.set_ready(true);
    assert!(q.is_valid(mem));
    assert_eq!(q.desc_table(), drv.desc_table().0);
    q
}

fn two_region_memory() -> GuestMemory {
    GuestMemory::new(&[
        RegionSpec {
            guest_phys_addr: 0,
            size: 0x10_0000,
            user_addr: 0x7f00_0000_0000,
        },
        RegionSpec {
            guest_phys_addr: 0x1_0000_0000,
            size: 0x40_0000,
            user_addr: 0x7e00_0000_0000,
        },
    ])
    .unwrap()
}

/// Random chains of 1 to 4 buffers each with mixed directions, inside a data area.
fn random_chain(rng: &mut Rng, data: GuestAddress, out: &mut Vec<Buffer>) {
    out.clear();
    for _ in 0..=rng.below(4) {
        let addr = data.unchecked_add(rng.below(0x1000) * 16);
        let len = 1 + rng.below(4096) as u32;
        out.push((addr, len, rng.below(2) == 1));
    }
}

/// Runs `requests` requests through `drv` and `queue`, in batches, mixing direct and
/// indirect chains, completing each batch in a shuffled order, and checking on the way that
/// both sides agree on every descriptor, id, length and index.
fn run_requests(
    drv: &mut VirtqueueDriver,
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    data: GuestAddress,
    requests: u64,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let size = usize::from(drv.size());
    let mut expected: Vec<Vec<Buffer>> = vec![Vec::new(); size];
    let mut bufs = Vec::new();
    let mut done = 0u64;
    while done < requests {
        // Fill part of the ring.
        let batch = 1 + rng.below(size as u64 / 2) as usize;
        let mut heads = Vec::new();
        for _ in 0..batch {
            random_chain(&mut rng, data, &mut bufs);
            let indirect = rng.below(3) == 0;
            let head = if indirect {
                drv.add_indirect(&bufs)
            } else {
                drv.add_chain(&bufs)
            };
            let head = match head {
                Ok(head) => head,
                Err(Error::NotEnoughDescriptors { .. }) => break,
                Err(e) => panic!("add failed: {e}"),
            };
            if indirect {
                let ring_desc: Descriptor = mem
                    .read_obj(drv.desc_table().unchecked_add(u64::from(head) * 16))
                    .unwrap();
                assert_eq!(ring_desc.flags(), VIRTQ_DESC_F_INDIRECT);
                assert_eq!(ring_desc.len() as usize, bufs.len() * 16);
            }
            expected[usize::from(head)] = bufs.clone();
            heads.push(head);
        }
        drv.publish().unwrap();
        assert_eq!(
            queue.avail_idx(mem, Ordering::Acquire).unwrap().0,
            drv.avail_idx()
        );

        // Device: take every chain and check it descriptor by descriptor.
        let mut taken = Vec::new();
        for chain in queue.iter(mem).unwrap() {
            let head = chain.head_index();
            let want = &expected[usize::from(head)];
            let mut n = 0;
            let mut writable = 0u32;
            for (i, desc) in chain.enumerate() {
                let (addr, len, write) = want[i];
                assert_eq!(desc.addr(), addr, "head {head} desc {i}");
                assert_eq!(desc.len(), len, "head {head} desc {i}");
                let mut flags = if write { VIRTQ_DESC_F_WRITE } else { 0 };
                if i + 1 < want.len() {
                    flags |= VIRTQ_DESC_F_NEXT;
                }
                assert_eq!(desc.flags(), flags, "head {head} desc {i}");
                writable += if write { len } else { 0 };
                n += 1;
            }
            assert_eq!(n, want.len(), "head {head}");
            let used_len = if writable == 0 {
                0
            } else {
                rng.below(u64::from(writable) + 1) as u32
            };
            taken.push(UsedElem {
                id: head,
                len: used_len,
            });
        }
        let mut taken_heads: Vec<u16> = taken.iter().map(|e| e.id).collect();
        taken_heads.sort_unstable();
        heads.sort_unstable();
        assert_eq!(taken_heads, heads);
        assert_eq!(queue.next_avail(), drv.avail_idx());

        // Device: complete in a shuffled order.
        for i in (1..taken.len()).rev() {
            taken.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for elem in &taken {
            queue.add_used(mem, elem.id, elem.len).unwrap();
        }

        // Driver: the same entries, in the same order, then nothing.
        for want in &taken {
            assert_eq!(drv.pop_used().unwrap(), Some(*want));
        }
        assert_eq!(drv.pop_used().unwrap(), None);
        assert_eq!(drv.last_used_idx(), queue.next_used());
        assert_eq!(drv.in_flight(), 0);
        assert_eq!(drv.num_free(), size);
        done += taken.len() as u64;
    }
}

#[test]
fn chains_agree_with_device_queue_across_index_wrap() {
    for event_idx in [false, true] {
        let gm = two_region_memory();
        let mut drv = VirtqueueDriver::with_indirect(&gm, 64, event_idx, 8).unwrap();
        let data = gm.alloc(0x1_0000 + 4096, 16).unwrap();
        let mut queue = device_queue(&drv, gm.mem(), 0);
        run_requests(&mut drv, &mut queue, gm.mem(), data, 70_000, 0x1234_5678);
        // More than 65536 requests went through: both indices wrapped.
        assert_eq!(drv.avail_idx(), queue.next_avail());
        assert_eq!(drv.last_used_idx(), queue.next_used());
    }
}

#[test]
fn full_ring_of_single_descriptors_cycles() {
    let gm = GuestMemory::single(0x10_0000).unwrap();
    let mut drv = VirtqueueDriver::new(&gm, 4, false).unwrap();
    let data = gm.alloc(4096, 8).unwrap();
    let mut queue = device_queue(&drv, gm.mem(), 0);
    for round in 0..20_000u32 {
        for i in 0..4u64 {
            drv.add_chain(&[(data.unchecked_add(i * 64), 64, true)])
                .unwrap();
        }
        assert!(matches!(
            drv.add_chain(&[(data, 1, false)]),
            Err(Error::NotEnoughDescriptors { needed: 1, free: 0 })
        ));
        drv.publish().unwrap();
        while let Some(chain) = queue.pop_descriptor_chain(gm.mem()) {
            queue
                .add_used(gm.mem(), chain.head_index(), round % 65)
                .unwrap();
        }
        for _ in 0..4 {
            assert_eq!(drv.pop_used().unwrap().unwrap().len, round % 65);
        }
        assert_eq!(drv.pop_used().unwrap(), None);
    }
    assert_eq!(drv.avail_idx(), 80_000u32 as u16);
    assert_eq!(queue.next_used(), drv.last_used_idx());
}

#[test]
fn resume_on_a_new_device_queue_at_the_returned_base() {
    let gm = two_region_memory();
    let mut drv = VirtqueueDriver::with_indirect(&gm, 16, true, 4).unwrap();
    let data = gm.alloc(0x1_0000 + 4096, 16).unwrap();
    let mut queue = device_queue(&drv, gm.mem(), 0);
    run_requests(&mut drv, &mut queue, gm.mem(), data, 1000, 1);
    // GET_VRING_BASE: the back-end stops and answers its next avail index.
    let base = queue.next_avail();
    assert_eq!(base, drv.avail_idx());
    // A new back-end (SET_VRING_BASE base) continues where the old one stopped.
    let mut queue = device_queue(&drv, gm.mem(), base);
    run_requests(&mut drv, &mut queue, gm.mem(), data, 1000, 2);
    assert_eq!(queue.next_avail(), drv.avail_idx());
}

#[test]
fn driver_started_near_wrap_agrees_with_device_at_that_base() {
    for event_idx in [false, true] {
        let gm = GuestMemory::single(0x40_0000).unwrap();
        let mut drv = VirtqueueDriver::with_indirect(&gm, 8, event_idx, 4).unwrap();
        let data = gm.alloc(0x1_0000 + 4096, 16).unwrap();
        drv.start_at(65_530, 65_530).unwrap();
        assert_eq!(drv.avail_idx(), 65_530);
        assert_eq!(drv.last_used_idx(), 65_530);
        let mut queue = device_queue(&drv, gm.mem(), 65_530);
        run_requests(&mut drv, &mut queue, gm.mem(), data, 100, 3);
        assert!(drv.avail_idx() < 200);
    }
}

#[test]
fn start_at_with_chains_in_flight_is_busy() {
    let gm = GuestMemory::single(0x10_0000).unwrap();
    let mut drv = VirtqueueDriver::new(&gm, 8, false).unwrap();
    let data = gm.alloc(4096, 8).unwrap();
    drv.add_chain(&[(data, 8, false)]).unwrap();
    assert!(matches!(
        drv.start_at(5, 5),
        Err(Error::Busy {
            in_flight: 0,
            pending: 1
        })
    ));
    drv.publish().unwrap();
    assert!(matches!(
        drv.start_at(5, 5),
        Err(Error::Busy {
            in_flight: 1,
            pending: 0
        })
    ));
}

#[test]
fn publish_without_event_idx_follows_device_no_notify_flag() {
    let gm = GuestMemory::single(0x10_0000).unwrap();
    let mem = gm.mem();
    let mut drv = VirtqueueDriver::new(&gm, 8, false).unwrap();
    let data = gm.alloc(4096, 8).unwrap();
    let mut queue = device_queue(&drv, mem, 0);

    assert!(!drv.publish().unwrap(), "nothing added: no notification");
    drv.add_chain(&[(data, 8, false)]).unwrap();
    assert!(drv.publish().unwrap());

    queue.disable_notification(mem).unwrap();
    drv.add_chain(&[(data, 8, false)]).unwrap();
    assert!(!drv.publish().unwrap(), "device set VRING_USED_F_NO_NOTIFY");

    // Re-enabling reports the chains that arrived meanwhile.
    assert!(queue.enable_notification(mem).unwrap());
    drv.add_chain(&[(data, 8, false)]).unwrap();
    assert!(drv.publish().unwrap());

    // Without EVENT_IDX the device calls after every completion.
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        queue.add_used(mem, chain.head_index(), 0).unwrap();
        assert!(queue.needs_notification(mem).unwrap());
    }
    // The driver's call suppression is the avail flag.
    drv.enable_calls(false).unwrap();
    let flags: u16 = mem.read_obj(drv.avail_ring()).unwrap();
    assert_eq!(u16::from_le(flags), VRING_AVAIL_F_NO_INTERRUPT);
    drv.enable_calls(true).unwrap();
    let flags: u16 = mem.read_obj(drv.avail_ring()).unwrap();
    assert_eq!(flags, 0);
}

#[test]
fn publish_with_event_idx_follows_device_avail_event() {
    let gm = GuestMemory::single(0x10_0000).unwrap();
    let mem = gm.mem();
    let mut drv = VirtqueueDriver::new(&gm, 8, true).unwrap();
    let data = gm.alloc(4096, 8).unwrap();
    let mut queue = device_queue(&drv, mem, 0);
    let buf = [(data, 8, true)];

    // avail_event starts at 0: the move 0 -> 1 crosses it.
    drv.add_chain(&buf).unwrap();
    assert!(drv.publish().unwrap());
    // The device has not asked again: 1 -> 2 does not cross 0.
    drv.add_chain(&buf).unwrap();
    assert!(!drv.publish().unwrap());

    // The device drains and re-arms at its next avail index (2).
    let mut heads = Vec::new();
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        heads.push(chain.head_index());
    }
    assert!(!queue.enable_notification(mem).unwrap());
    // A batch of three (2 -> 5) crosses 2.
    for _ in 0..3 {
        drv.add_chain(&buf).unwrap();
    }
    assert!(drv.publish().unwrap());
    // The device has not caught up: its avail_event stays at 2, so 5 -> 6 does not notify.
    drv.add_chain(&buf).unwrap();
    assert!(!drv.publish().unwrap());
    // The device catches up and re-arms at 6: the move 6 -> 7 notifies.
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        heads.push(chain.head_index());
    }
    assert!(!queue.enable_notification(mem).unwrap());
    drv.add_chain(&buf).unwrap();
    assert!(drv.publish().unwrap());
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        heads.push(chain.head_index());
    }
    assert_eq!(heads.len(), 7);
}

#[test]
fn device_calls_follow_driver_used_event() {
    let gm = GuestMemory::single(0x10_0000).unwrap();
    let mem = gm.mem();
    let mut drv = VirtqueueDriver::new(&gm, 8, true).unwrap();
    let data = gm.alloc(4096, 8).unwrap();
    let mut queue = device_queue(&drv, mem, 0);
    let buf = [(data, 8, true)];

    for _ in 0..4 {
        drv.add_chain(&buf).unwrap();
    }
    drv.publish().unwrap();
    let mut heads = Vec::new();
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        heads.push(chain.head_index());
    }
    // used_event is 0: the first completion calls, the second (driver not back yet) does not.
    queue.add_used(mem, heads[0], 1).unwrap();
    assert!(queue.needs_notification(mem).unwrap());
    queue.add_used(mem, heads[1], 2).unwrap();
    assert!(!queue.needs_notification(mem).unwrap());
    // The driver drains to None: that re-arms, so the next completion calls.
    assert_eq!(drv.pop_used().unwrap().map(|e| e.len), Some(1));
    assert_eq!(drv.pop_used().unwrap().map(|e| e.len), Some(2));
    assert_eq!(drv.pop_used().unwrap(), None);
    queue.add_used(mem, heads[2], 3).unwrap();
    assert!(queue.needs_notification(mem).unwrap());
    // With calls disabled the device stays quiet.
    drv.enable_calls(false).unwrap();
    assert_eq!(drv.pop_used().unwrap().map(|e| e.len), Some(3));
    assert_eq!(drv.pop_used().unwrap(), None);
    queue.add_used(mem, heads[3], 4).unwrap();
    assert!(!queue.needs_notification(mem).unwrap());
    drv.enable_calls(true).unwrap();
    assert_eq!(drv.pop_used().unwrap().map(|e| e.len), Some(4));
    assert_eq!(drv.pop_used().unwrap(), None);
    // A batch of completions calls once.
    for _ in 0..3 {
        drv.add_chain(&buf).unwrap();
    }
    drv.publish().unwrap();
    let mut calls = 0;
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        queue.add_used(mem, chain.head_index(), 0).unwrap();
        calls += usize::from(queue.needs_notification(mem).unwrap());
    }
    assert_eq!(calls, 1);
}

#[test]
fn kick_and_wait_call_use_eventfds() {
    let gm = GuestMemory::single(0x10_0000).unwrap();
    let drv = VirtqueueDriver::new(&gm, 8, false).unwrap();
    let kick = EventFd::new(EFD_NONBLOCK).unwrap();
    drv.kick(&kick).unwrap();
    drv.kick(&kick).unwrap();
    assert_eq!(kick.read().unwrap(), 2);

    let call = EventFd::new(0).unwrap();
    let start = Instant::now();
    assert!(!VirtqueueDriver::wait_call(&call, Duration::from_millis(20)).unwrap());
    assert!(start.elapsed() >= Duration::from_millis(20));
    call.write(1).unwrap();
    assert!(VirtqueueDriver::wait_call(&call, Duration::from_secs(5)).unwrap());
    // The signal was consumed.
    assert!(!VirtqueueDriver::wait_call(&call, Duration::ZERO).unwrap());

    // A call from another thread wakes the waiter.
    let remote = call.try_clone().unwrap();
    let signaller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(10));
        remote.write(1).unwrap();
    });
    assert!(VirtqueueDriver::wait_call(&call, Duration::from_secs(5)).unwrap());
    signaller.join().unwrap();
}

/// Publishes one chain of one writable 8-byte buffer and returns its head.
fn one_in_flight(gm: &GuestMemory, size: u16) -> (VirtqueueDriver, u16) {
    let mut drv = VirtqueueDriver::new(gm, size, false).unwrap();
    let data = gm.alloc(4096, 8).unwrap();
    let head = drv.add_chain(&[(data, 8, true)]).unwrap();
    drv.publish().unwrap();
    (drv, head)
}

/// Writes used ring entry `slot` and used idx as a (possibly hostile) device would.
fn write_used(
    drv: &VirtqueueDriver,
    mem: &GuestMemoryMmap,
    slot: u64,
    id: u32,
    len: u32,
    idx: u16,
) {
    let elem = drv.used_ring().unchecked_add(4 + slot * 8);
    mem.write_obj(id.to_le(), elem).unwrap();
    mem.write_obj(len.to_le(), elem.unchecked_add(4)).unwrap();
    mem.write_obj(idx.to_le(), drv.used_ring().unchecked_add(2))
        .unwrap();
}

#[test]
fn used_id_out_of_range_is_an_error_and_not_consumed() {
    let gm = GuestMemory::single(0x10_0000).unwrap();
    let (mut drv, head) = one_in_flight(&gm, 8);
    for bad in [8, 0xffff, 0x1_0000 + u32::from(head), u32::MAX] {
        write_used(&drv, gm.mem(), 0, bad, 0, 1);
        match drv.pop_used() {
            Err(Error::UsedIdOutOfRange {
                used_idx: 0,
                id,
                size: 8,
            }) => assert_eq!(id, bad),
            other => panic!("expected UsedIdOutOfRange, got {other:?}"),
        }
    }
    // The entry was left alone: a corrected one is accepted.
    write_used(&drv, gm.mem(), 0, u32::from(head), 8, 1);
    assert_eq!(drv.pop_used().unwrap(), Some(UsedElem { id: head, len: 8 }));
}

#[test]
fn used_entries_that_do_not_match_a_chain_are_errors() {
    let gm = GuestMemory::single(0x10_0000).unwrap();
    let (mut drv, head) = one_in_flight(&gm, 8);
    let other = (head + 1) % 8;
    write_used(&drv, gm.mem(), 0, u32::from(other), 0, 1);
    assert!(matches!(
        drv.pop_used(),
        Err(Error::UsedIdNotInFlight { used_idx: 0, id }) if id == other
    ));
    write_used(&drv, gm.mem(), 0, u32::from(head), 9, 1);
    assert!(matches!(
        drv.pop_used(),
        Err(Error::UsedLenTooLong {
            len: 9,
            writable: 8,
            ..
        })
    ));
    write_used(&drv, gm.mem(), 0, u32::from(head), 8, 2);
    assert!(matches!(
        drv.pop_used(),
        Err(Error::UsedIdxTooFar {
            used_idx: 2,
            last_used: 0,
            ahead: 2,
            in_flight: 1
        })
    ));
    write_used(&drv, gm.mem(), 0, u32::from(head), 8, 1);
    assert_eq!(drv.pop_used().unwrap(), Some(UsedElem { id: head, len: 8 }));
}

#[test]
fn chain_returned_twice_is_an_error() {
    let gm = GuestMemory::single(0x10_0000).unwrap();
    let mut drv = VirtqueueDriver::new(&gm, 8, false).unwrap();
    let first = drv.add_chain(&[(GuestAddress(0x8000), 8, true)]).unwrap();
    drv.add_chain(&[(GuestAddress(0x9000), 8, true)]).unwrap();
    drv.publish().unwrap();
    write_used(&drv, gm.mem(), 0, u32::from(first), 8, 1);
    write_used(&drv, gm.mem(), 1, u32::from(first), 8, 2);
    assert_eq!(
        drv.pop_used().unwrap(),
        Some(UsedElem { id: first, len: 8 })
    );
    assert!(matches!(
        drv.pop_used(),
        Err(Error::UsedIdNotInFlight { used_idx: 1, id }) if id == first
    ));
    assert_eq!(drv.in_flight(), 1);
}

#[test]
fn running_out_of_descriptors_is_an_error() {
    let gm = GuestMemory::single(0x10_0000).unwrap();
    let mut drv = VirtqueueDriver::with_indirect(&gm, 8, false, 4).unwrap();
    let buf = (GuestAddress(0x8000), 16, false);
    drv.add_chain(&[buf; 5]).unwrap();
    assert!(matches!(
        drv.add_chain(&[buf; 4]),
        Err(Error::NotEnoughDescriptors { needed: 4, free: 3 })
    ));
    assert_eq!(drv.num_free(), 3, "a failed add takes nothing");
    drv.add_chain(&[buf; 2]).unwrap();
    drv.add_indirect(&[buf; 4]).unwrap();
    assert!(matches!(
        drv.add_indirect(&[buf]),
        Err(Error::NotEnoughDescriptors { needed: 1, free: 0 })
    ));
    assert!(matches!(
        drv.add_chain(&[buf; 9]),
        Err(Error::NotEnoughDescriptors { needed: 9, free: 0 })
    ));
    assert_eq!(drv.pending(), 3);
}

#[test]
fn invalid_chains_and_sizes_are_errors() {
    let gm = GuestMemory::single(0x10_0000).unwrap();
    for size in [0, 3, 48, 65535] {
        assert!(matches!(
            VirtqueueDriver::new(&gm, size, false),
            Err(Error::InvalidSize { size: s }) if s == size
        ));
    }
    assert!(matches!(
        VirtqueueDriver::with_indirect(&gm, 8, false, 9),
        Err(Error::InvalidIndirectMax { max: 9, size: 8 })
    ));
    let mut drv = VirtqueueDriver::new(&gm, 8, false).unwrap();
    let buf = (GuestAddress(0x8000), u32::MAX, true);
    assert!(matches!(drv.add_chain(&[]), Err(Error::EmptyChain)));
    assert!(matches!(
        drv.add_indirect(&[buf]),
        Err(Error::IndirectUnavailable)
    ));
    assert!(matches!(
        drv.add_chain(&[buf, (GuestAddress(0), 1, false)]),
        Err(Error::ChainTooLong {
            bytes: 0x1_0000_0000
        })
    ));
    let mut drv = VirtqueueDriver::with_indirect(&gm, 8, false, 2).unwrap();
    assert!(matches!(
        drv.add_indirect(&[(GuestAddress(0x8000), 8, true); 3]),
        Err(Error::IndirectTooLong { len: 3, max: 2 })
    ));
    assert_eq!(drv.num_free(), 8);
}

#[test]
fn largest_queue_fits_and_works() {
    let gm = GuestMemory::single(0x100_0000).unwrap();
    let mut drv = VirtqueueDriver::new(&gm, 32768, true).unwrap();
    let mut queue = device_queue(&drv, gm.mem(), 0);
    for _ in 0..32768 {
        drv.add_chain(&[(GuestAddress(0x80_0000), 512, true)])
            .unwrap();
    }
    assert!(drv.publish().unwrap());
    let mut n = 0;
    while let Some(chain) = queue.pop_descriptor_chain(gm.mem()) {
        queue.add_used(gm.mem(), chain.head_index(), 512).unwrap();
        n += 1;
    }
    assert_eq!(n, 32768);
    while drv.pop_used().unwrap().is_some() {}
    assert_eq!(drv.last_used_idx(), queue.next_used());
    assert_eq!(drv.num_free(), 32768);
}

#[test]
fn regions_share_one_memfd_at_distinct_offsets() {
    let gm = two_region_memory();
    let regions: Vec<_> = gm.regions().collect();
    assert_eq!(regions.len(), 2);
    assert_eq!(regions[0].mmap_offset, 0);
    assert_eq!(regions[1].mmap_offset, 0x10_0000);
    assert_eq!(regions[1].mmap_offset % REGION_ALIGN, 0);
    for r in &regions {
        assert_ne!(r.user_addr, r.guest_phys_addr);
        assert_eq!(gm.gpa_to_uva(r.guest_phys_addr), Some(r.user_addr));
        assert_eq!(
            gm.gpa_to_uva(r.guest_phys_addr + r.memory_size - 1),
            Some(r.user_addr + r.memory_size - 1)
        );
        assert_eq!(gm.uva_to_gpa(r.user_addr + 5), Some(r.guest_phys_addr + 5));
    }
    assert_eq!(gm.gpa_to_uva(0x10_0000), None);
    // SET_VRING_ADDR addresses: the rings' front-end virtual addresses.
    let drv = VirtqueueDriver::new(&gm, 8, false).unwrap();
    let addrs = drv.vring_user_addrs(&gm).unwrap();
    assert_eq!(gm.uva_to_gpa(addrs.desc), Some(drv.desc_table().0));
    assert_eq!(gm.uva_to_gpa(addrs.avail), Some(drv.avail_ring().0));
    assert_eq!(gm.uva_to_gpa(addrs.used), Some(drv.used_ring().0));
    assert_eq!(addrs.desc, 0x7f00_0000_0000 + drv.desc_table().0);
    assert_eq!(gm.gpa_to_uva(0x1_0040_0000), None);

    // What this process writes at a guest address is in the memfd at that region's offset,
    // which is where a back-end that honours mmap_offset finds it.
    gm.mem()
        .write_slice(b"second", GuestAddress(0x1_0000_0010))
        .unwrap();
    gm.mem().write_slice(b"first", GuestAddress(0x10)).unwrap();
    let file_size = nix::sys::stat::fstat(gm.fd()).unwrap().st_size as u64;
    assert!(file_size >= regions[1].mmap_offset + regions[1].memory_size);
    let mut buf = [0u8; 6];
    nix::sys::uio::pread(gm.fd(), &mut buf, (regions[1].mmap_offset + 0x10) as i64).unwrap();
    assert_eq!(&buf, b"second");
    nix::sys::uio::pread(gm.fd(), &mut buf[..5], 0x10).unwrap();
    assert_eq!(&buf[..5], b"first");
    // Close-on-exec, as every descriptor this process creates.
    let flags = nix::fcntl::fcntl(gm.fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
    assert_ne!(flags & libc::FD_CLOEXEC, 0);
    assert!(gm.fd().as_raw_fd() >= 0);
}

#[test]
fn alloc_respects_alignment_and_moves_to_the_next_region() {
    let gm = two_region_memory();
    let a = gm.alloc(3, 1).unwrap();
    let b = gm.alloc(16, 16).unwrap();
    assert_eq!(a, GuestAddress(0));
    assert_eq!(b, GuestAddress(16));
    // Too big for the first region: comes from the second.
    let c = gm.alloc(0x20_0000, 4096).unwrap();
    assert_eq!(c, GuestAddress(0x1_0000_0000));
    // Small ones still fill the first region.
    assert_eq!(gm.alloc(4, 4).unwrap(), GuestAddress(32));
    assert!(matches!(
        gm.alloc(0x40_0000, 8),
        Err(guest_memory::Error::OutOfMemory { .. })
    ));
    assert!(matches!(
        gm.alloc(8, 3),
        Err(guest_memory::Error::InvalidAlloc { size: 8, align: 3 })
    ));
    assert!(matches!(
        gm.alloc(0, 8),
        Err(guest_memory::Error::InvalidAlloc { .. })
    ));
}

#[test]
fn invalid_region_lists_are_errors() {
    use guest_memory::Error as E;
    let spec = |gpa, size, uva| RegionSpec {
        guest_phys_addr: gpa,
        size,
        user_addr: uva,
    };
    assert!(matches!(GuestMemory::new(&[]), Err(E::NoRegions)));
    assert!(matches!(
        GuestMemory::new(&[spec(0, 0, 0x1000)]),
        Err(E::EmptyRegion { index: 0 })
    ));
    assert!(matches!(
        GuestMemory::new(&[spec(u64::MAX - 10, 0x1000, 0)]),
        Err(E::AddressOverflow { index: 0 })
    ));
    assert!(matches!(
        GuestMemory::new(&[spec(0, 0x2000, 0x10_0000), spec(0x1000, 0x1000, 0x20_0000)]),
        Err(E::GuestAddrOverlap {
            first: 0,
            second: 1
        })
    ));
    assert!(matches!(
        GuestMemory::new(&[spec(0, 0x2000, 0x10_0000), spec(0x4000, 0x1000, 0x10_1000)]),
        Err(E::UserAddrOverlap {
            first: 0,
            second: 1
        })
    ));
}

#[test]
fn memory_clone_outlives_guest_memory() {
    let gm = GuestMemory::single(0x1_0000).unwrap();
    gm.mem().write_obj(0xabcd_u32, GuestAddress(0x100)).unwrap();
    let mem = gm.mem().clone();
    drop(gm);
    assert_eq!(mem.read_obj::<u32>(GuestAddress(0x100)).unwrap(), 0xabcd);
}

/// Two-region memory whose first region keeps only `room` bytes free at its end: a
/// descriptor table of up to `room` bytes goes there and the rings after it go to the
/// second region, so the driver cannot reach its three areas through one slice.
fn memory_with_room_at_the_end(room: u64) -> GuestMemory {
    let gm = two_region_memory();
    gm.alloc(0x10_0000 - room, 16).unwrap();
    gm
}

#[test]
fn rings_in_another_region_than_the_table_agree_with_device_queue() {
    for event_idx in [false, true] {
        // 16 bytes more than the 64-entry table: virtio-queue refuses a table that ends
        // exactly at its region's end.
        let gm = memory_with_room_at_the_end(64 * 16 + 16);
        let mut drv = VirtqueueDriver::with_indirect(&gm, 64, event_idx, 8).unwrap();
        assert!(drv.desc_table().0 < 0x10_0000);
        assert!(drv.avail_ring().0 >= 0x1_0000_0000);
        assert!(drv.used_ring().0 >= 0x1_0000_0000);
        let data = gm.alloc(0x1_0000 + 4096, 16).unwrap();
        let mut queue = device_queue(&drv, gm.mem(), 0);
        run_requests(&mut drv, &mut queue, gm.mem(), data, 3_000, 0x5eed);
        assert_eq!(drv.avail_idx(), queue.next_avail());
        assert_eq!(drv.last_used_idx(), queue.next_used());
    }
}

#[test]
fn a_table_ending_at_its_regions_end_cycles() {
    let gm = memory_with_room_at_the_end(8 * 16);
    let mut drv = VirtqueueDriver::new(&gm, 8, false).unwrap();
    assert_eq!(drv.desc_table().0 + 8 * 16, 0x10_0000);
    let data = gm.alloc(4096, 8).unwrap();
    for round in 0..256u32 {
        let head = drv
            .add_chain(&[(data, 8, true), (data.unchecked_add(8), 8, false)])
            .unwrap();
        drv.publish().unwrap();
        // The device's view: the avail entry and the chain's first descriptor.
        let slot = u64::from(round % 8);
        let avail: u16 = gm
            .mem()
            .read_obj(drv.avail_ring().unchecked_add(4 + slot * 2))
            .unwrap();
        assert_eq!(avail, head);
        let desc: Descriptor = gm
            .mem()
            .read_obj(drv.desc_table().unchecked_add(u64::from(head) * 16))
            .unwrap();
        assert_eq!((desc.addr(), desc.len()), (data, 8));
        assert_eq!(desc.flags(), VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT);
        write_used(
            &drv,
            gm.mem(),
            slot,
            u32::from(head),
            round % 9,
            (round + 1) as u16,
        );
        assert_eq!(
            drv.pop_used().unwrap(),
            Some(UsedElem {
                id: head,
                len: round % 9
            })
        );
        assert_eq!(drv.pop_used().unwrap(), None);
    }
}
