//! The runtime's packed virtqueue ([`TestQueue`] over a [`RingSpec::packed`]) over
//! arbitrary descriptor rings: the input writes the whole descriptor ring, indirect tables,
//! and both event suppression areas as it likes, between rounds in which a device pops what
//! the ring offers, holds some requests and completes the rest in an order the input picks.
//!
//! Input (read with `arbitrary::Unstructured`): the ring size (1 to 32), EVENT_IDX, then up
//! to 32 steps, each one of: bytes written at an offset of the descriptor ring, a
//! well-formed buffer made available at an arbitrary position and wrap counter with an
//! arbitrary ID, bytes written into the indirect-table area, the event areas, a round of
//! the device, the completion of held requests in some order.
//!
//! Properties: nothing panics or touches memory outside guest memory; an ID is never
//! handed out while the device still holds it; every request's buffers lie in guest
//! memory or the request says why not; once every held request is completed and
//! published nothing is outstanding; and the stop answers a base whose positions lie in
//! the ring.
#![no_main]

use std::collections::HashSet;
use std::time::Duration;

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use vhost_backend::runtime::packed::{decode_base, DESC_F_AVAIL, DESC_F_USED};
use vhost_backend::runtime::testing::{KeepDevice, RingSpec, TestQueue};
use vhost_backend::runtime::{ChainFault, Request};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

const MEM: u64 = 0x1_0000;
const DESC: u64 = 0x1000;
const DRIVER_EVENT: u64 = 0x800;
const DEVICE_EVENT: u64 = 0x900;
const TABLES: u64 = 0x2000;

fn check_request(mem: &GuestMemoryMmap, r: &Request) {
    let outside = r
        .readable()
        .iter()
        .chain(r.writable())
        .any(|b| !mem.check_range(b.addr, b.len as usize));
    if outside {
        assert!(
            matches!(
                r.fault(),
                Some(
                    ChainFault::OutsideMemory { .. }
                        | ChainFault::AddressOverflow { .. }
                        | ChainFault::TooManyBuffers
                        | ChainFault::ReadableAfterWritable
                        | ChainFault::NestedIndirect
                )
            ),
            "a buffer outside memory without a fault: {r:?}"
        );
    }
    // Device I/O on the request never panics.
    let mut buf = [0u8; 64];
    let n = (r.readable_len() as usize).min(buf.len());
    let _ = r.read_readable(0, &mut buf[..n]);
    let n = (r.writable_len() as usize).min(buf.len());
    let _ = r.write_writable(0, &buf[..n]);
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let size = 1u16 << u.int_in_range(0..=5u8)?;
    let event_idx = u.arbitrary()?;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM as usize)]).expect("memory");
    let layout = [DESC, DRIVER_EVENT, DEVICE_EVENT];
    let q = TestQueue::new(
        mem.clone(),
        RingSpec::packed(0, size, layout).event_idx(event_idx),
    )
    .expect("queue");
    let dev = KeepDevice::new(32);
    let mut held: Vec<Request> = Vec::new();
    let mut held_ids: HashSet<u16> = HashSet::new();
    let ring_bytes = u64::from(size) * 16;
    for _ in 0..32 {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=5u8)? {
            0 => {
                let off = u.int_in_range(0..=ring_bytes - 1)?;
                let len = u.int_in_range(1..=(ring_bytes - off).min(64))? as usize;
                let bytes = u.bytes(len)?;
                let _ = mem.write_slice(bytes, GuestAddress(DESC + off));
            }
            1 => {
                // A plausible descriptor: address in or near memory, any flags but the
                // AVAIL/USED pair set for a wrap counter.
                let pos = u.int_in_range(0..=size - 1)?;
                let wrap: bool = u.arbitrary()?;
                let addr = u.int_in_range(0..=MEM + 0x100)?;
                let len: u32 = u.int_in_range(0..=0x2000)?;
                let id: u16 = if u.arbitrary()? {
                    u.int_in_range(0..=size - 1)?
                } else {
                    u.arbitrary()?
                };
                let mut flags: u16 = u.arbitrary::<u16>()? & 0x7;
                flags |= if wrap { DESC_F_AVAIL } else { DESC_F_USED };
                let at = DESC + u64::from(pos) * 16;
                let _ = mem.write_obj(addr, GuestAddress(at));
                let _ = mem.write_obj(len, GuestAddress(at + 8));
                let _ = mem.write_obj(id, GuestAddress(at + 12));
                let _ = mem.write_obj(flags, GuestAddress(at + 14));
            }
            2 => {
                let off = u.int_in_range(0..=0xfffu64)?;
                let len = u.int_in_range(1..=64usize)?;
                let bytes = u.bytes(len)?;
                let _ = mem.write_slice(bytes, GuestAddress(TABLES + off));
            }
            3 => {
                let v: [u16; 4] = u.arbitrary()?;
                let _ = mem.write_obj(v[0], GuestAddress(DRIVER_EVENT));
                let _ = mem.write_obj(v[1], GuestAddress(DRIVER_EVENT + 2));
                let _ = mem.write_obj(v[2], GuestAddress(DEVICE_EVENT));
                let _ = mem.write_obj(v[3], GuestAddress(DEVICE_EVENT + 2));
            }
            4 => {
                q.process(&dev).expect("process");
                let popped = dev.take();
                assert!(
                    popped.len() <= usize::from(size),
                    "more than a ring per round"
                );
                for r in popped {
                    check_request(&mem, &r);
                    assert!(
                        held_ids.insert(r.head()),
                        "ID {} handed out twice",
                        r.head()
                    );
                    assert!(r.head() < size);
                    held.push(r);
                }
            }
            _ => {
                let n = u.int_in_range(0..=held.len())?;
                for _ in 0..n {
                    let i = u.int_in_range(0..=held.len() - 1)?;
                    let r = held.swap_remove(i);
                    held_ids.remove(&r.head());
                    let len =
                        u.int_in_range(0..=r.writable_len().min(u64::from(u32::MAX)) as u32)?;
                    r.complete(len);
                }
                q.publish();
            }
        }
    }
    for r in held.drain(..) {
        r.complete(0);
    }
    q.publish();
    assert_eq!(q.outstanding(), 0, "requests left outstanding");
    let base = q.stop(Duration::from_secs(1)).expect("nothing to wait for");
    let (a, _, used, _) = decode_base(base);
    assert!(
        a < size && used < size,
        "base {base:#x} outside a ring of {size}"
    );
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
