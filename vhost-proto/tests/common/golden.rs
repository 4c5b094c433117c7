//! Golden byte vectors: every message of both directions and every reply shape, written out
//! byte by byte from the specification's layouts (little-endian, as on x86_64), with the typed
//! value each one must decode to.
//!
//! Header: `request u32 | flags u32 | size u32`. Flags `01` = version 1, `09` = version 1 +
//! NEED_REPLY, `05` = version 1 + REPLY.

use super::cat;
use vhost_proto::wire::*;
use vhost_proto::*;

/// A front-end request vector.
pub struct Front {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub nfds: usize,
    pub ctx: DecodeContext,
    pub expected: FrontendRequest<'static>,
}

/// A back-end request vector.
pub struct Back {
    pub name: &'static str,
    pub bytes: Vec<u8>,
    pub nfds: usize,
    pub expected: BackendRequest,
}

/// A reply vector (back-end → front-end reply to `req`).
pub struct Reply {
    pub name: &'static str,
    pub req: FrontendReq,
    pub shape: ReplyShape,
    pub bytes: Vec<u8>,
    pub nfds: usize,
    pub ctx: DecodeContext,
    pub expected: FrontendReply<'static>,
}

/// A reply to a back-end request (a u64).
pub struct BackReply {
    pub name: &'static str,
    pub req: BackendReq,
    pub bytes: Vec<u8>,
    pub nfds: usize,
    pub expected: u64,
}

/// One vector a line: `maker(arguments);` rows become a `Vec` of what each maker builds.
macro_rules! rows {
    ($($make:ident($($arg:expr),* $(,)?);)*) => {
        vec![$($make($($arg),*)),*]
    };
}

const PLAIN: DecodeContext = DecodeContext { xen_mmap: false };
const XEN: DecodeContext = DecodeContext { xen_mmap: true };

fn f(
    name: &'static str,
    hdr: [u8; 12],
    body: &[u8],
    nfds: usize,
    expected: FrontendRequest<'static>,
) -> Front {
    Front {
        name,
        bytes: cat(&[&hdr, body]),
        nfds,
        ctx: PLAIN,
        expected,
    }
}

fn b(
    name: &'static str,
    hdr: [u8; 12],
    body: &[u8],
    nfds: usize,
    expected: BackendRequest,
) -> Back {
    Back {
        name,
        bytes: cat(&[&hdr, body]),
        nfds,
        expected,
    }
}

// Each region: `guest_phys_addr u64 | memory_size u64 | user_addr u64 | mmap_offset u64`.

/// `gpa 0, size 0x1000_0000, user_addr 0x7f8a_c000_0000, mmap_offset 0`.
#[rustfmt::skip]
pub const REGION_A: [u8; 32] = [
    0, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00, 0x00, 0x10, 0, 0, 0, 0,
    0x00, 0x00, 0x00, 0xc0, 0x8a, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];
pub const REGION_A_TYPED: MemoryRegion = region(0, 0x1000_0000, 0x7f8a_c000_0000, 0);

/// `gpa 0x1_0000_0000, size 0x4000_0000, user_addr 0x7f13_0000_0000, mmap_offset 0xc_0000`.
#[rustfmt::skip]
pub const REGION_B: [u8; 32] = [
    0x00, 0x00, 0x00, 0x00, 0x01, 0, 0, 0, 0x00, 0x00, 0x00, 0x40, 0, 0, 0, 0,
    0x00, 0x00, 0x00, 0x00, 0x13, 0x7f, 0, 0, 0x00, 0x00, 0x0c, 0x00, 0, 0, 0, 0,
];
pub const REGION_B_TYPED: MemoryRegion =
    region(0x1_0000_0000, 0x4000_0000, 0x7f13_0000_0000, 0xc_0000);

const fn region(
    guest_phys_addr: u64,
    memory_size: u64,
    user_addr: u64,
    mmap_offset: u64,
) -> MemoryRegion {
    MemoryRegion {
        guest_phys_addr,
        memory_size,
        user_addr,
        mmap_offset,
    }
}

pub const UUID: [u8; 16] = [
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
];

pub const CRYPTO_SETUP: [u8; 16] = [
    0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10,
];

/// Every front-end request (1–44), plus the XEN_MMAP layouts of the two region messages.
pub fn frontend() -> Vec<Front> {
    use FrontendRequest as R;
    let mut v = rows! {
        f("GET_FEATURES", [1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], &[], 0, R::GetFeatures);
        f("SET_FEATURES", [2, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0], &[0x46, 0x00, 0x00, 0x40, 0x01, 0x00, 0x00, 0x00], 0, R::SetFeatures(0x1_4000_0046));
        f("SET_OWNER", [3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], &[], 0, R::SetOwner);
        f("RESET_OWNER", [4, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], &[], 0, R::ResetOwner);
        f("SET_MEM_TABLE", [5, 0, 0, 0, 9, 0, 0, 0, 72, 0, 0, 0], &cat(&[&[2, 0, 0, 0, 0, 0, 0, 0], &REGION_A, &REGION_B]), 2, R::SetMemTable(MemTable::new(&[REGION_A_TYPED, REGION_B_TYPED]).unwrap()));
        f("SET_LOG_BASE", [6, 0, 0, 0, 1, 0, 0, 0, 16, 0, 0, 0], &[0x00, 0x10, 0, 0, 0, 0, 0, 0, /* mmap_size */ 0x20, 0x00, 0, 0, 0, 0, 0, 0 /* mmap_offset */], 1, R::SetLogBase(LogBase { mmap_size: 0x1000, mmap_offset: 0x20 }));
        f("SET_LOG_FD", [7, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], &[], 1, R::SetLogFd);
        f("SET_VRING_NUM", [8, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0], &[1, 0, 0, 0, 0x00, 0x01, 0, 0], 0, R::SetVringNum(VringState { index: 1, num: 256 }));
        f("SET_VRING_ADDR", [9, 0, 0, 0, 1, 0, 0, 0, 40, 0, 0, 0], &[1, 0, 0, 0, /* index */ 1, 0, 0, 0, /* flags: VHOST_VRING_F_LOG */ 0x00, 0x10, 0x00, 0x00, 0x00, 0x7f, 0, 0, /* desc */ 0x00, 0x20, 0x00, 0x00, 0x00, 0x7f, 0, 0, /* used */ 0x00, 0x30, 0x00, 0x00, 0x00, 0x7f, 0, 0, /* avail */ 0x00, 0x50, 0x34, 0x12, 0x00, 0x00, 0, 0 /* log */], 0, R::SetVringAddr(VringAddr { index: 1, flags: VRING_F_LOG, desc: 0x7f00_0000_1000, used: 0x7f00_0000_2000, avail: 0x7f00_0000_3000, log: 0x1234_5000 }));
        f("SET_VRING_BASE", [10, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0], &[1, 0, 0, 0, 0x13, 0, 0, 0], 0, R::SetVringBase(VringState { index: 1, num: 19 }));
        f("GET_VRING_BASE", [11, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0], &[1, 0, 0, 0, 0, 0, 0, 0], 0, R::GetVringBase(VringState { index: 1, num: 0 }));
        f("SET_VRING_KICK", [12, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0], &[1, 0, 0, 0, 0, 0, 0, 0], 1, R::SetVringKick(VringFd { index: 1, nofd: false }));
        f("SET_VRING_CALL", [13, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0], &[2, 1, 0, 0, 0, 0, 0, 0], 0, R::SetVringCall(VringFd { index: 2, nofd: true }));
        f("SET_VRING_ERR", [14, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0], &[0, 0, 0, 0, 0, 0, 0, 0], 1, R::SetVringErr(VringFd { index: 0, nofd: false }));
        f("GET_PROTOCOL_FEATURES", [15, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], &[], 0, R::GetProtocolFeatures);
        f("SET_PROTOCOL_FEATURES", [16, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0], &[0x2b, 0x8f, 0, 0, 0, 0, 0, 0], 0, R::SetProtocolFeatures(0x8f2b));
        f("GET_QUEUE_NUM", [17, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], &[], 0, R::GetQueueNum);
        f("SET_VRING_ENABLE", [18, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0], &[0, 0, 0, 0, 1, 0, 0, 0], 0, R::SetVringEnable(VringState { index: 0, num: 1 }));
        f("SEND_RARP", [19, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0], &[0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0, 0], 0, R::SendRarp(0x5634_1200_5452));
        f("NET_SET_MTU", [20, 0, 0, 0, 9, 0, 0, 0, 8, 0, 0, 0], &[0xdc, 0x05, 0, 0, 0, 0, 0, 0], 0, R::NetSetMtu(1500));
        f("SET_BACKEND_REQ_FD", [21, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0], &[], 1, R::SetBackendReqFd);
        f("IOTLB_MSG", [22, 0, 0, 0, 9, 0, 0, 0, 32, 0, 0, 0], &[0x00, 0x10, 0, 0, 0, 0, 0, 0, /* iova */ 0x00, 0x20, 0, 0, 0, 0, 0, 0, /* size */ 0x00, 0x00, 0x00, 0x00, 0x00, 0x7f, 0, 0, /* uaddr */ 3, /* perm: RW */ 2, /* type: UPDATE */ 0, 0, 0, 0, 0, 0 /* padding */], 0, R::IotlbMsg(IotlbMsg { iova: 0x1000, size: 0x2000, uaddr: 0x7f00_0000_0000, perm: iotlb::PERM_RW, msg_type: iotlb::UPDATE, padding: [0; 6] }));
        f("SET_VRING_ENDIAN", [23, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0], &[0, 0, 0, 0, 1, 0, 0, 0], 0, R::SetVringEndian(VringState { index: 0, num: 1 }));
        f("GET_CONFIG", [24, 0, 0, 0, 1, 0, 0, 0, 20, 0, 0, 0], &[0, 0, 0, 0, /* offset */ 8, 0, 0, 0, /* size */ 0, 0, 0, 0, /* flags */ 0, 0, 0, 0, 0, 0, 0, 0 /* placeholder payload */], 0, R::GetConfig(Config { offset: 0, flags: 0, payload: &[0; 8] }));
        f("SET_CONFIG", [25, 0, 0, 0, 1, 0, 0, 0, 16, 0, 0, 0], &[0x10, 0, 0, 0, /* offset */ 4, 0, 0, 0, /* size */ 1, 0, 0, 0, /* flags: live migration */ 0xde, 0xad, 0xbe, 0xef ], 0, R::SetConfig(Config { offset: 0x10, flags: CONFIG_FLAG_LIVE_MIGRATION, payload: &[0xde, 0xad, 0xbe, 0xef] }));
        f("CREATE_CRYPTO_SESSION", [26, 0, 0, 0, 1, 0, 0, 0, 24, 0, 0, 0], &cat(&[&[0; 8], &CRYPTO_SETUP]), 0, R::CreateCryptoSession(CryptoSession { session_id: 0, payload: &CRYPTO_SETUP }));
        f("CLOSE_CRYPTO_SESSION", [27, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0], &[7, 0, 0, 0, 0, 0, 0, 0], 0, R::CloseCryptoSession(7));
        f("POSTCOPY_ADVISE", [28, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], &[], 0, R::PostcopyAdvise);
        f("POSTCOPY_LISTEN", [29, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0], &[], 0, R::PostcopyListen);
        f("POSTCOPY_END", [30, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0], &[], 0, R::PostcopyEnd);
        f("GET_INFLIGHT_FD", [31, 0, 0, 0, 1, 0, 0, 0, 24, 0, 0, 0], &[0, 0, 0, 0, 0, 0, 0, 0, /* mmap_size */ 0, 0, 0, 0, 0, 0, 0, 0, /* mmap_offset */ 1, 0, /* num_queues */ 0x80, 0, /* queue_size */ 0, 0, 0, 0 /* padding */], 0, R::GetInflightFd(Inflight { mmap_size: 0, mmap_offset: 0, num_queues: 1, queue_size: 128, padding: [0; 4] }));
        f("SET_INFLIGHT_FD", [32, 0, 0, 0, 1, 0, 0, 0, 24, 0, 0, 0], &[0x00, 0x21, 0, 0, 0, 0, 0, 0, /* mmap_size */ 0, 0, 0, 0, 0, 0, 0, 0, /* mmap_offset */ 1, 0, /* num_queues */ 0x80, 0, /* queue_size */ 0, 0, 0, 0 /* padding */], 1, R::SetInflightFd(Inflight { mmap_size: 0x2100, mmap_offset: 0, num_queues: 1, queue_size: 128, padding: [0; 4] }));
        f("GPU_SET_SOCKET", [33, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], &[], 1, R::GpuSetSocket);
        f("RESET_DEVICE", [34, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], &[], 0, R::ResetDevice);
        f("VRING_KICK", [35, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0], &[1, 0, 0, 0, 0, 0, 0, 0], 0, R::VringKick(VringState { index: 1, num: 0 }));
        f("GET_MAX_MEM_SLOTS", [36, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], &[], 0, R::GetMaxMemSlots);
        f("ADD_MEM_REG", [37, 0, 0, 0, 9, 0, 0, 0, 40, 0, 0, 0], &cat(&[&[0; 8], &REGION_A]), 1, R::AddMemReg(RegionMsg::new(REGION_A_TYPED)));
        f("REM_MEM_REG", [38, 0, 0, 0, 1, 0, 0, 0, 40, 0, 0, 0], &cat(&[&[0; 8], &REGION_A]), 0, R::RemMemReg(RegionMsg::new(REGION_A_TYPED)));
        f("SET_STATUS", [39, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0], &[0x0f, 0, 0, 0, 0, 0, 0, 0], 0, R::SetStatus(0x0f));
        f("GET_STATUS", [40, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], &[], 0, R::GetStatus);
        f("GET_SHARED_OBJECT", [41, 0, 0, 0, 1, 0, 0, 0, 16, 0, 0, 0], &UUID, 0, R::GetSharedObject(SharedObject { uuid: UUID }));
        f("SET_DEVICE_STATE_FD", [42, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0], &[1, 0, 0, 0, 0, 0, 0, 0], 1, R::SetDeviceStateFd(DeviceStateTransfer { direction: TRANSFER_LOAD, phase: TRANSFER_PHASE_STOPPED }));
        f("CHECK_DEVICE_STATE", [43, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], &[], 0, R::CheckDeviceState);
        f("GET_SHMEM_CONFIG", [44, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], &[], 0, R::GetShmemConfig);
    };
    let xen = XenMapping { flags: 1, domid: 7 };
    let xen_region: Vec<u8> = cat(&[&REGION_B, &[1, 0, 0, 0], &[7, 0, 0, 0]]);
    v.push(Front {
        name: "SET_MEM_TABLE (XEN_MMAP)",
        bytes: cat(&[
            &[5, 0, 0, 0, 1, 0, 0, 0, 48, 0, 0, 0],
            &[1, 0, 0, 0, 0, 0, 0, 0],
            &xen_region,
        ]),
        nfds: 1,
        ctx: XEN,
        expected: R::SetMemTable(MemTable::new_xen(&[REGION_B_TYPED], &[xen]).unwrap()),
    });
    v.push(Front {
        name: "ADD_MEM_REG (XEN_MMAP)",
        bytes: cat(&[
            &[37, 0, 0, 0, 1, 0, 0, 0, 48, 0, 0, 0],
            &[0; 8],
            &xen_region,
        ]),
        nfds: 1,
        ctx: XEN,
        expected: R::AddMemReg(RegionMsg {
            padding: 0,
            region: REGION_B_TYPED,
            xen: Some(xen),
        }),
    });
    v
}

/// Every back-end request (1–10), plus the NOFD form of the host notifier message.
pub fn backend() -> Vec<Back> {
    use BackendRequest as R;
    let shmem = |flags: u64| ShmemMap {
        shmid: 2,
        padding: [0; 7],
        fd_offset: 0x1000,
        shm_offset: 0x2000,
        len: 0x3000,
        flags,
    };
    let shmem_bytes = |flags: u8| -> Vec<u8> {
        cat(&[
            &[2, 0, 0, 0, 0, 0, 0, 0],       // shmid + padding
            &[0x00, 0x10, 0, 0, 0, 0, 0, 0], // fd_offset
            &[0x00, 0x20, 0, 0, 0, 0, 0, 0], // shm_offset
            &[0x00, 0x30, 0, 0, 0, 0, 0, 0], // len
            &[flags, 0, 0, 0, 0, 0, 0, 0],   // flags
        ])
    };
    rows! {
        b("BACKEND_IOTLB_MSG", [1, 0, 0, 0, 9, 0, 0, 0, 32, 0, 0, 0], &[0x00, 0x40, 0, 0, 0, 0, 0, 0, /* iova */ 0x00, 0x10, 0, 0, 0, 0, 0, 0, /* size */ 0, 0, 0, 0, 0, 0, 0, 0, /* uaddr */ 1, /* perm: RO */ 1, /* type: MISS */ 0, 0, 0, 0, 0, 0 /* padding */], 0, R::IotlbMsg(IotlbMsg { iova: 0x4000, size: 0x1000, uaddr: 0, perm: iotlb::PERM_RO, msg_type: iotlb::MISS, padding: [0; 6] }));
        b("BACKEND_CONFIG_CHANGE_MSG", [2, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0], &[], 0, R::ConfigChangeMsg);
        b("BACKEND_VRING_HOST_NOTIFIER_MSG", [3, 0, 0, 0, 1, 0, 0, 0, 24, 0, 0, 0], &[1, 0, 0, 0, 0, 0, 0, 0, /* index 1, fd attached */ 0x00, 0x10, 0, 0, 0, 0, 0, 0, /* size */ 0x00, 0x30, 0, 0, 0, 0, 0, 0 /* offset */], 1, R::VringHostNotifierMsg(VringArea { u64_index_flags: 1, size: 0x1000, offset: 0x3000 }));
        b("BACKEND_VRING_HOST_NOTIFIER_MSG (NOFD)", [3, 0, 0, 0, 1, 0, 0, 0, 24, 0, 0, 0], &[1, 1, 0, 0, 0, 0, 0, 0, /* index 1 | NOFD */ 0, 0, 0, 0, 0, 0, 0, 0, /* size */ 0, 0, 0, 0, 0, 0, 0, 0 /* offset */], 0, R::VringHostNotifierMsg(VringArea { u64_index_flags: 0x101, size: 0, offset: 0 }));
        b("BACKEND_VRING_CALL", [4, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0], &[1, 0, 0, 0, 0, 0, 0, 0], 0, R::VringCall(VringState { index: 1, num: 0 }));
        b("BACKEND_VRING_ERR", [5, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0], &[3, 0, 0, 0, 0, 0, 0, 0], 0, R::VringErr(VringState { index: 3, num: 0 }));
        b("BACKEND_SHARED_OBJECT_ADD", [6, 0, 0, 0, 1, 0, 0, 0, 16, 0, 0, 0], &UUID, 0, R::SharedObjectAdd(SharedObject { uuid: UUID }));
        b("BACKEND_SHARED_OBJECT_REMOVE", [7, 0, 0, 0, 1, 0, 0, 0, 16, 0, 0, 0], &UUID, 0, R::SharedObjectRemove(SharedObject { uuid: UUID }));
        b("BACKEND_SHARED_OBJECT_LOOKUP", [8, 0, 0, 0, 1, 0, 0, 0, 16, 0, 0, 0], &UUID, 0, R::SharedObjectLookup(SharedObject { uuid: UUID }));
        b("BACKEND_SHMEM_MAP", [9, 0, 0, 0, 1, 0, 0, 0, 40, 0, 0, 0], &shmem_bytes(1), 1, R::ShmemMap(shmem(SHMEM_MAP_WRITABLE)));
        b("BACKEND_SHMEM_UNMAP", [10, 0, 0, 0, 1, 0, 0, 0, 40, 0, 0, 0], &shmem_bytes(0), 0, R::ShmemUnmap(shmem(0)));
    }
}

fn r(
    name: &'static str,
    req: FrontendReq,
    shape: ReplyShape,
    hdr: [u8; 12],
    body: &[u8],
    nfds: usize,
    expected: FrontendReply<'static>,
) -> Reply {
    Reply {
        name,
        req,
        shape,
        bytes: cat(&[&hdr, body]),
        nfds,
        ctx: PLAIN,
        expected,
    }
}

/// One reply per reply shape (U64 both as a value and as an ack), all with REPLY set.
pub fn replies() -> Vec<Reply> {
    use FrontendReply as P;
    use FrontendReq as Q;
    use ReplyShape as S;
    let mut shmem = ShmemConfig {
        nregions: 2,
        ..ShmemConfig::default()
    };
    shmem.memory_sizes[0] = 0x1000_0000;
    shmem.memory_sizes[1] = 0x20_0000;
    let mut shmem_bytes = cat(&[
        &[44, 0, 0, 0, 5, 0, 0, 0, 0x08, 0x08, 0, 0], // size 2056
        &[2, 0, 0, 0, 0, 0, 0, 0],                    // nregions, padding
        &[0x00, 0x00, 0x00, 0x10, 0, 0, 0, 0],        // memory_sizes[0]
        &[0x00, 0x00, 0x20, 0x00, 0, 0, 0, 0],        // memory_sizes[1]
    ]);
    shmem_bytes.resize(12 + 2056, 0);
    rows! {
        r("GET_FEATURES reply (U64)", Q::GetFeatures, S::U64, [1, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0], &[0x46, 0x7e, 0x00, 0x75, 0x01, 0, 0, 0], 0, P::U64(0x1_7500_7e46));
        r("SET_BACKEND_REQ_FD ack (U64)", Q::SetBackendReqFd, S::U64, [21, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0], &[0, 0, 0, 0, 0, 0, 0, 0], 0, P::U64(0));
        r("SET_DEVICE_STATE_FD reply (U64, fd back)", Q::SetDeviceStateFd, S::U64, [42, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0], &[0, 0, 0, 0, 0, 0, 0, 0], 1, P::U64(0));
        r("GET_VRING_BASE reply (VringState)", Q::GetVringBase, S::VringState, [11, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0], &[0, 0, 0, 0, 0x13, 0, 0, 0], 0, P::VringState(VringState { index: 0, num: 19 }));
        r("GET_CONFIG reply (Config)", Q::GetConfig, S::Config, [24, 0, 0, 0, 5, 0, 0, 0, 20, 0, 0, 0], &[0, 0, 0, 0, /* offset */ 8, 0, 0, 0, /* size */ 0, 0, 0, 0, /* flags */ 0x00, 0x80, 0, 0, 0, 0, 0, 0 /* capacity 0x8000 sectors */], 0, P::Config(Config { offset: 0, flags: 0, payload: &[0x00, 0x80, 0, 0, 0, 0, 0, 0] }));
        r("CREATE_CRYPTO_SESSION reply (CryptoSession)", Q::CreateCryptoSession, S::CryptoSession, [26, 0, 0, 0, 5, 0, 0, 0, 24, 0, 0, 0], &cat(&[&[5, 0, 0, 0, 0, 0, 0, 0], &CRYPTO_SETUP]), 0, P::CryptoSession(CryptoSession { session_id: 5, payload: &CRYPTO_SETUP }));
        r("GET_INFLIGHT_FD reply (Inflight)", Q::GetInflightFd, S::Inflight, [31, 0, 0, 0, 5, 0, 0, 0, 24, 0, 0, 0], &[0x00, 0x21, 0, 0, 0, 0, 0, 0, /* mmap_size */ 0, 0, 0, 0, 0, 0, 0, 0, /* mmap_offset */ 1, 0, 0x80, 0, 0, 0, 0, 0 /* num_queues, queue_size, padding */], 1, P::Inflight(Inflight { mmap_size: 0x2100, mmap_offset: 0, num_queues: 1, queue_size: 128, padding: [0; 4] }));
        r("GET_SHMEM_CONFIG reply (ShmemConfig)", Q::GetShmemConfig, S::ShmemConfig, shmem_bytes[..12].try_into().unwrap(), &shmem_bytes[12..], 0, P::ShmemConfig(Box::new(shmem)));
        r("SET_MEM_TABLE postcopy reply (MemTable)", Q::SetMemTable, S::MemTable, [5, 0, 0, 0, 5, 0, 0, 0, 40, 0, 0, 0], &cat(&[&[1, 0, 0, 0, 0, 0, 0, 0], &REGION_A]), 0, P::MemTable(MemTable::new(&[REGION_A_TYPED]).unwrap()));
        r("ADD_MEM_REG postcopy reply (SingleRegion)", Q::AddMemReg, S::SingleRegion, [37, 0, 0, 0, 5, 0, 0, 0, 40, 0, 0, 0], &cat(&[&[0; 8], &REGION_A]), 0, P::SingleRegion(RegionMsg::new(REGION_A_TYPED)));
        r("POSTCOPY_ADVISE reply (Empty + userfaultfd)", Q::PostcopyAdvise, S::EmptyWithFd, [28, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0], &[], 1, P::Empty);
    }
}

/// Replies to back-end requests.
pub fn backend_replies() -> Vec<BackReply> {
    vec![
        BackReply {
            name: "BACKEND_SHARED_OBJECT_LOOKUP reply (u64 + fd)",
            req: BackendReq::SharedObjectLookup,
            bytes: cat(&[&[8, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0], &[0; 8]]),
            nfds: 1,
            expected: 0,
        },
        BackReply {
            name: "BACKEND_IOTLB_MSG ack failure",
            req: BackendReq::IotlbMsg,
            bytes: cat(&[
                &[1, 0, 0, 0, 5, 0, 0, 0, 8, 0, 0, 0],
                &[1, 0, 0, 0, 0, 0, 0, 0],
            ]),
            nfds: 0,
            expected: 1,
        },
    ]
}
