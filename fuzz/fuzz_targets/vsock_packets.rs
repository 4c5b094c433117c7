//! The vsock device over arbitrary guest packets: one batch of tx chains (headers with
//! biased CIDs, ports, ops, lengths and credit; payloads; the chain split anywhere over up
//! to three descriptors), the device's host events, then a batch of rx buffers of arbitrary
//! sizes, through the runtime's `TestQueue` (the request lifecycle the daemon uses, without
//! threads). Two host listeners (never reading) give guest connections somewhere to go.
//!
//! Properties: nothing panics; every request popped is completed; every rx buffer the device
//! used holds at most its length, and a packet in it comes from the host CID to the guest's,
//! with no data (no host process ever writes), and a used length of header plus `len`.
#![no_main]

use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::OnceLock;

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use vhost_backend::runtime::testing::{RingSpec, TestQueue};
use vhost_backend::runtime::VirtioDevice;
use vhost_device_vsock::{VsockConfig, VsockDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: u64 = 0x4_0000;
const TX_RINGS: [u64; 3] = [0x0, 0x200, 0x400];
const RX_RINGS: [u64; 3] = [0x1000, 0x1200, 0x1400];
const DATA: u64 = 0x2000;
const SIZE: u16 = 16;
const CID: u64 = 3;

struct Fixture {
    device: VsockDevice,
    listeners: Vec<UnixListener>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vsock-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let uds: PathBuf = dir.join("vm.vsock");
        let device = VsockDevice::new(&VsockConfig::new(CID, &uds)).expect("device");
        let listeners = [1u32, 2]
            .iter()
            .map(|p| {
                let mut path = uds.clone().into_os_string();
                path.push(format!("_{p}"));
                let _ = std::fs::remove_file(&path);
                let l = UnixListener::bind(&path).expect("listener");
                l.set_nonblocking(true).expect("non-blocking");
                l
            })
            .collect();
        Fixture { device, listeners }
    })
}

fn header(u: &mut Unstructured<'_>, payload_len: usize) -> Result<[u8; 44]> {
    let src_cid: u64 = if u.ratio(7, 8)? { CID } else { u.arbitrary()? };
    let dst_cid: u64 = if u.ratio(7, 8)? { 2 } else { u.arbitrary()? };
    let src_port: u32 = u.int_in_range(0..=3)?;
    let dst_port: u32 = if u.ratio(7, 8)? {
        u.int_in_range(1..=3)?
    } else {
        u.arbitrary()?
    };
    let len: u32 = if u.ratio(3, 4)? {
        payload_len as u32
    } else {
        u.arbitrary()?
    };
    let type_: u16 = if u.ratio(7, 8)? { 1 } else { u.arbitrary()? };
    let op: u16 = u.int_in_range(0..=8)?;
    let flags: u32 = u.int_in_range(0..=3)?;
    let buf_alloc: u32 = if u.ratio(1, 2)? {
        65536
    } else {
        u.arbitrary()?
    };
    let fwd_cnt: u32 = if u.ratio(3, 4)? { 0 } else { u.arbitrary()? };
    let mut h = [0u8; 44];
    h[0..8].copy_from_slice(&src_cid.to_le_bytes());
    h[8..16].copy_from_slice(&dst_cid.to_le_bytes());
    h[16..20].copy_from_slice(&src_port.to_le_bytes());
    h[20..24].copy_from_slice(&dst_port.to_le_bytes());
    h[24..28].copy_from_slice(&len.to_le_bytes());
    h[28..30].copy_from_slice(&type_.to_le_bytes());
    h[30..32].copy_from_slice(&op.to_le_bytes());
    h[32..36].copy_from_slice(&flags.to_le_bytes());
    h[36..40].copy_from_slice(&buf_alloc.to_le_bytes());
    h[40..44].copy_from_slice(&fwd_cnt.to_le_bytes());
    Ok(h)
}

fn desc(mem: &GuestMemoryMmap, table: u64, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    let mut d = [0u8; 16];
    d[..8].copy_from_slice(&addr.to_le_bytes());
    d[8..12].copy_from_slice(&len.to_le_bytes());
    d[12..14].copy_from_slice(&flags.to_le_bytes());
    d[14..].copy_from_slice(&next.to_le_bytes());
    mem.write_slice(&d, GuestAddress(table + 16 * u64::from(i)))
        .expect("descriptor");
}

fn avail(mem: &GuestMemoryMmap, ring: u64, heads: &[u16]) {
    for (i, h) in heads.iter().enumerate() {
        mem.write_obj(h.to_le(), GuestAddress(ring + 4 + 2 * i as u64))
            .expect("avail ring");
    }
    mem.write_obj((heads.len() as u16).to_le(), GuestAddress(ring + 2))
        .expect("avail idx");
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let f = fixture();
    // A fresh session: no connections left from the previous input, none waiting in the
    // listeners' backlogs.
    f.device.reset();
    for l in &f.listeners {
        while l.accept().is_ok() {}
    }
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
        .expect("guest memory");

    // tx: up to 5 packets, each over up to 3 descriptors.
    let mut next_desc = 0u16;
    let mut heads = Vec::new();
    let mut data = DATA;
    for _ in 0..u.int_in_range(1..=5)? {
        let payload_len = u.int_in_range(0..=2048usize)?;
        let mut bytes = header(u, payload_len)?.to_vec();
        bytes.extend(u.bytes(payload_len.min(u.len()))?);
        mem.write_slice(&bytes, GuestAddress(data)).expect("packet");
        let total = bytes.len() as u32;
        let cut1 = u.int_in_range(0..=total)?;
        let cut2 = u.int_in_range(cut1..=total)?;
        let pieces: Vec<(u64, u32)> = [(0, cut1), (cut1, cut2), (cut2, total)]
            .iter()
            .filter(|(a, b)| b > a)
            .map(|&(a, b)| (data + u64::from(a), b - a))
            .collect();
        if pieces.is_empty() || next_desc as usize + pieces.len() > SIZE as usize {
            break;
        }
        heads.push(next_desc);
        for (i, &(addr, len)) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            let flags = if last { 0 } else { 1 };
            desc(
                &mem,
                TX_RINGS[0],
                next_desc,
                addr,
                len,
                flags,
                next_desc + 1,
            );
            next_desc += 1;
        }
        data += u64::from(total) + 64;
    }
    avail(&mem, TX_RINGS[1], &heads);

    // rx: buffers of arbitrary sizes.
    let mut rx_lens = Vec::new();
    for i in 0..u.int_in_range(0..=SIZE)? {
        let len = if u.ratio(3, 4)? {
            4096 + 44
        } else {
            u.int_in_range(0..=5000u32)?
        };
        desc(&mem, RX_RINGS[0], i, data, len, 2, 0);
        data += u64::from(len) + 64;
        rx_lens.push(len);
    }
    let rx_heads: Vec<u16> = (0..rx_lens.len() as u16).collect();
    avail(&mem, RX_RINGS[1], &rx_heads);

    let tx = TestQueue::new(mem.clone(), RingSpec::split(1, SIZE, TX_RINGS)).expect("tx queue");
    let rx = TestQueue::new(mem.clone(), RingSpec::split(0, SIZE, RX_RINGS)).expect("rx queue");
    tx.process(&f.device).expect("tx never fails");
    assert_eq!(tx.outstanding(), 0, "a tx request was not completed");
    let _ = f.device.handle_event(0, 1);
    rx.process(&f.device).expect("rx never fails");
    tx.publish();
    rx.publish();
    assert_eq!(rx.outstanding(), 0, "an rx request was not completed");

    let used_idx = u16::from_le(
        mem.read_obj(GuestAddress(RX_RINGS[2] + 2))
            .expect("used idx"),
    );
    assert!(
        usize::from(used_idx) <= rx_lens.len(),
        "more rx used than offered"
    );
    for i in 0..u64::from(used_idx) {
        let id: u32 = mem
            .read_obj(GuestAddress(RX_RINGS[2] + 4 + 8 * i))
            .expect("used id");
        let len: u32 = mem
            .read_obj(GuestAddress(RX_RINGS[2] + 8 + 8 * i))
            .expect("used len");
        let buf_len = rx_lens[id as usize];
        assert!(
            len <= buf_len,
            "used length {len} of a {buf_len}-byte buffer"
        );
        if len == 0 {
            continue;
        }
        assert!(len >= 44, "a packet shorter than its header");
        let mut desc_raw = [0u8; 8];
        mem.read_slice(
            &mut desc_raw,
            GuestAddress(RX_RINGS[0] + 16 * u64::from(id)),
        )
        .expect("descriptor");
        let at = u64::from_le_bytes(desc_raw);
        let mut h = [0u8; 44];
        mem.read_slice(&mut h, GuestAddress(at)).expect("header");
        let src_cid = u64::from_le_bytes(h[0..8].try_into().unwrap());
        let dst_cid = u64::from_le_bytes(h[8..16].try_into().unwrap());
        let plen = u32::from_le_bytes(h[24..28].try_into().unwrap());
        let op = u16::from_le_bytes(h[30..32].try_into().unwrap());
        // A reset answers what the guest sent, ends swapped: only those carry the guest's
        // (possibly foreign) destination CID back as their source.
        assert_eq!(dst_cid, CID, "op {op} to another CID");
        if op != 3 {
            assert_eq!(src_cid, 2, "op {op} from another CID");
        }
        assert_ne!(op, 5, "data that no host process wrote");
        assert_eq!(len, 44 + plen, "used length and header length differ");
    }
    assert!(f.device.connections() <= vhost_device_vsock::MAX_CONNECTIONS);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
