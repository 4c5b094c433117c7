//! The blk device's request path over arbitrary descriptor tables and available rings.
//!
//! Input (read with `arbitrary::Unstructured`): a queue size (1–16), EVENT_IDX, the
//! available index, one descriptor per slot (address mostly inside the 64 KiB of guest
//! memory, sometimes anywhere; length mostly under 8 KiB; NEXT/WRITE/INDIRECT flags; next
//! index), the available ring entries, and up to 4 KiB of bytes for the data area (request
//! headers, discard ranges, indirect tables). These are written into a `GuestMemoryMmap`
//! and the device serves the queue over a 64 KiB temporary image through the runtime's
//! `TestQueue` (the request lifecycle the daemon uses, without threads).
//!
//! Properties: nothing panics; every request popped is completed (none left outstanding);
//! the used ring holds only heads inside the table, each at most once per batch, and no
//! used length exceeds the 64 KiB of guest memory.
#![no_main]

use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use vhost_backend::runtime::testing::{RingSpec, TestQueue};
use vhost_device_blk::{BlkConfig, BlkDevice};
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

    let layout = [DESC_TABLE, AVAIL_RING, USED_RING];
    let q = TestQueue::new(
        mem.clone(),
        RingSpec::split(0, size, layout).event_idx(event_idx),
    )
    .expect("queue");
    q.process(device()).expect("blk never fails its queue");
    assert_eq!(q.outstanding(), 0, "a popped request was not completed");
    let used_idx = u16::from_le(mem.read_obj(GuestAddress(USED_RING + 2)).expect("used idx"));
    assert!(used_idx <= size, "more used entries than one ring's worth");
    let mut seen = 0u32;
    for i in 0..u64::from(used_idx) {
        let id: u32 = mem
            .read_obj(GuestAddress(USED_RING + 4 + 8 * i))
            .expect("used id");
        let len: u32 = mem
            .read_obj(GuestAddress(USED_RING + 8 + 8 * i))
            .expect("used len");
        assert!(id < u32::from(size), "used head {id} outside the table");
        assert!(seen & (1 << id) == 0, "head {id} used twice in one batch");
        seen |= 1 << id;
        assert!(u64::from(len) <= MEM_SIZE, "used length {len}");
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
