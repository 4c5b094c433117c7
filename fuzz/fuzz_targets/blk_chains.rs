//! The blk device's request path over arbitrary descriptor tables and available rings.
//!
//! Input (read with `arbitrary::Unstructured`): a queue size (1–16), EVENT_IDX, the
//! available index, one descriptor per slot (address mostly inside the 64 KiB of guest
//! memory, sometimes anywhere; length mostly under 8 KiB; NEXT/WRITE/INDIRECT flags; next
//! index), the available ring entries, and up to 4 KiB of bytes for the data area (request
//! headers, discard ranges, indirect tables). These are written into a `GuestMemoryMmap`
//! and `BlkDevice::process_chains` serves the queue over a 64 KiB temporary image through
//! `RawQueue`.
//!
//! Properties: nothing panics; every chain popped is returned, in order, and lands on the
//! used ring unless its head index is outside the table;
//! a used length is at most the chain's writable bytes, and when it is not 0 the status
//! byte (the last byte of the last writable buffer) is 0, 1 or 2.
#![no_main]

use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use vhost_device_blk::{BlkConfig, BlkDevice, ChainQueue, RawQueue};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: u64 = 0x1_0000;
const DESC_TABLE: u64 = 0x0;
const AVAIL_RING: u64 = 0x200;
const USED_RING: u64 = 0x400;
const DATA: u64 = 0x1000;

/// One device over a 64 KiB image, unlinked as soon as it is open.
fn device() -> &'static BlkDevice {
    static DEVICE: OnceLock<BlkDevice> = OnceLock::new();
    DEVICE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("blk-chains-{}.img", std::process::id()));
        std::fs::write(&path, vec![0x11u8; MEM_SIZE as usize]).expect("image");
        let dev = BlkDevice::new(&BlkConfig::new(&path)).expect("device");
        let _ = std::fs::remove_file(&path);
        dev
    })
}

/// The chain being served: its head, status byte address and writable bytes.
struct Popped {
    head: u16,
    status: Option<GuestAddress>,
    writable: u64,
}

/// `RawQueue` plus the checks of every chain it hands out and takes back.
struct Checked<'q, 'm> {
    raw: RawQueue<'q, 'm, GuestMemoryMmap>,
    popped: Option<Popped>,
    pops: u32,
    returned: u32,
    /// Returned chains whose head is a descriptor of the table: only those can go on the
    /// used ring (an out-of-range head from the available ring yields an empty chain).
    valid: u32,
    size: u16,
}

impl<'m> ChainQueue<'m, GuestMemoryMmap> for Checked<'_, 'm> {
    fn pop(&mut self) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
        assert!(
            self.popped.is_none(),
            "chain popped before the last was returned"
        );
        let chain = self.raw.pop()?;
        let mut status = None;
        let mut writable = 0u64;
        for d in chain.clone() {
            if d.is_write_only() && d.len() > 0 {
                writable += u64::from(d.len());
                if d.addr().0.checked_add(u64::from(d.len())).is_some() {
                    status = Some(GuestAddress(d.addr().0 + u64::from(d.len()) - 1));
                }
            }
        }
        self.popped = Some(Popped {
            head: chain.head_index(),
            status,
            writable,
        });
        self.pops += 1;
        Some(chain)
    }

    fn add_used(&mut self, head: u16, len: u32) {
        let p = self
            .popped
            .take()
            .expect("a used entry for a chain never popped");
        assert_eq!(head, p.head, "used entry for another chain");
        assert!(
            u64::from(len) <= p.writable,
            "used length {len} over {} writable bytes",
            p.writable
        );
        if len > 0 {
            let at = p.status.expect("a used length without a status byte");
            let s: u8 = self.raw.mem.read_obj(at).expect("status byte in memory");
            assert!(s <= 2, "status byte {s}");
        }
        self.returned += 1;
        if head < self.size {
            self.valid += 1;
        }
        self.raw.add_used(head, len);
    }
}

fn addr(u: &mut Unstructured<'_>) -> Result<u64> {
    let raw: u64 = u.arbitrary()?;
    Ok(match u.int_in_range(0..=15u8)? {
        0 => raw,
        1 => MEM_SIZE - (raw % 64),
        _ => DATA + raw % (MEM_SIZE - DATA),
    })
}

fn len(u: &mut Unstructured<'_>) -> Result<u32> {
    let raw: u32 = u.arbitrary()?;
    Ok(match u.int_in_range(0..=15u8)? {
        0 => raw,
        1..=4 => raw % 32,
        _ => raw % 0x2000,
    })
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
        .expect("guest memory");
    let size: u16 = 1 << u.int_in_range(0..=4u16)?;
    let event_idx: bool = u.arbitrary()?;
    let avail_idx: u16 = if u.ratio(7, 8)? {
        u.int_in_range(0..=size)?
    } else {
        u.arbitrary()?
    };
    for i in 0..u64::from(size) {
        let at = GuestAddress(DESC_TABLE + 16 * i);
        let a = addr(u)?;
        let l = len(u)?;
        let flags = u.arbitrary::<u16>()? & 0x7;
        let next = u.int_in_range(0..=size)?;
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&a.to_le_bytes());
        d[8..12].copy_from_slice(&l.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, at).expect("descriptor");
    }
    mem.write_obj(0u16, GuestAddress(AVAIL_RING))
        .expect("avail flags");
    mem.write_obj(avail_idx.to_le(), GuestAddress(AVAIL_RING + 2))
        .expect("avail idx");
    for i in 0..u64::from(size) {
        let head = u.int_in_range(0..=size)?;
        mem.write_obj(head.to_le(), GuestAddress(AVAIL_RING + 4 + 2 * i))
            .expect("avail ring");
    }
    let n = u.len().min(4096);
    mem.write_slice(u.bytes(n)?, GuestAddress(DATA))
        .expect("data");

    let mut q = Queue::new(16).expect("queue");
    q.set_size(size);
    q.set_desc_table_address(Some(DESC_TABLE as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL_RING as u32), Some(0));
    q.set_used_ring_address(Some(USED_RING as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    assert!(q.is_valid(&mem));
    let mut checked = Checked {
        raw: RawQueue {
            queue: &mut q,
            mem: &mem,
        },
        popped: None,
        pops: 0,
        returned: 0,
        valid: 0,
        size,
    };
    let served = device().process_chains(0, &mem, &mut checked);
    assert!(checked.popped.is_none(), "a popped chain was not returned");
    assert_eq!(served, checked.pops);
    assert_eq!(checked.returned, checked.pops);
    let used_idx: u16 = mem.read_obj(GuestAddress(USED_RING + 2)).expect("used idx");
    assert_eq!(u32::from(u16::from_le(used_idx)), checked.valid % 0x1_0000);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
