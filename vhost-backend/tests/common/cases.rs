//! One valid sample of every front-end request (codes 1–44), the back-end call it must
//! cause, and its successful reply.

use std::os::fd::OwnedFd;

use vhost_backend::test_utils::{Call, CryptoSessionCall, RecordingBackend};
use vhost_proto::features::virtio;
use vhost_proto::wire::{iotlb, DEVICE_STATE_NOFD};
use vhost_proto::{
    Config, CryptoSession, DeviceStateTransfer, FrontendReply, FrontendReq, FrontendRequest,
    Inflight, IotlbMsg, LogBase, MemTable, MemoryRegion, ProtocolFeatures, RegionMsg, ReplyShape,
    SharedObject, ShmemConfig, VringAddr, VringFd, VringState,
};

/// Virtio features the sample back-end offers (and sessions ack).
pub const FEATURES: u64 = virtio::bit(virtio::VERSION_1)
    | virtio::bit(virtio::PROTOCOL_FEATURES)
    | virtio::bit(virtio::ACCESS_PLATFORM);

/// Protocol features sessions ack: everything but XEN_MMAP, which changes region layouts.
pub const ACKED: ProtocolFeatures = ProtocolFeatures::all().difference(ProtocolFeatures::XEN_MMAP);

pub const VRING_BASE: u32 = 19;
pub const STATUS: u64 = 0xf;

/// The back-end the cases expect.
pub fn backend() -> RecordingBackend {
    let mut b = RecordingBackend::new().with_features(FEATURES);
    b.vring_base = VRING_BASE;
    b.status = STATUS;
    b.inflight = inflight_reply();
    b.shmem = shmem();
    b
}

pub fn region() -> MemoryRegion {
    MemoryRegion {
        guest_phys_addr: 0,
        memory_size: 0x1000_0000,
        user_addr: 0x7f00_0000_0000,
        mmap_offset: 0,
    }
}

fn inflight_reply() -> Inflight {
    Inflight {
        mmap_size: 4096,
        mmap_offset: 0,
        num_queues: 2,
        queue_size: 128,
        padding: [0; 4],
    }
}

fn shmem() -> ShmemConfig {
    let mut memory_sizes = [0; 256];
    memory_sizes[0] = 0x1000;
    ShmemConfig {
        nregions: 1,
        padding: 0,
        memory_sizes,
    }
}

/// Queue 1's rings on consecutive pages at `RINGS`.
fn addr() -> VringAddr {
    const RINGS: u64 = 0x7f00_0000_0000;
    VringAddr {
        index: 1,
        flags: 0,
        desc: RINGS + 0x1000,
        used: RINGS + 0x2000,
        avail: RINGS + 0x3000,
        log: 0,
    }
}

fn iotlb_msg() -> IotlbMsg {
    IotlbMsg {
        iova: 0x1000,
        size: 0x1000,
        uaddr: 0x7f00_0000_0000,
        perm: iotlb::PERM_RW,
        msg_type: iotlb::UPDATE,
        padding: [0; 6],
    }
}

/// One request, what it must cause, and what comes back.
pub struct Case {
    pub request: FrontendRequest<'static>,
    /// Descriptors to attach.
    pub fds: usize,
    /// The back-end call expected.
    pub call: Call,
    /// The reply on success (for requests owing an ack: the ack of 0).
    pub reply: FrontendReply<'static>,
    /// Descriptors riding with the reply.
    pub reply_fds: usize,
}

impl Case {
    /// Fresh descriptors for this case: a socket for SET_BACKEND_REQ_FD, files otherwise.
    pub fn make_fds(&self) -> Vec<OwnedFd> {
        (0..self.fds)
            .map(|_| match self.request {
                FrontendRequest::SetBackendReqFd => super::socket_fd(),
                _ => super::file_fd(),
            })
            .collect()
    }

    pub fn code(&self) -> FrontendReq {
        self.request.code()
    }

    /// The shape of the expected reply.
    pub fn shape(&self) -> ReplyShape {
        match self.reply {
            FrontendReply::U64(_) => ReplyShape::U64,
            FrontendReply::VringState(_) => ReplyShape::VringState,
            FrontendReply::Config(_) => ReplyShape::Config,
            FrontendReply::CryptoSession(_) => ReplyShape::CryptoSession,
            FrontendReply::Inflight(_) => ReplyShape::Inflight,
            FrontendReply::ShmemConfig(_) => ReplyShape::ShmemConfig,
            FrontendReply::MemTable(_) => ReplyShape::MemTable,
            FrontendReply::SingleRegion(_) => ReplyShape::SingleRegion,
            FrontendReply::Empty => ReplyShape::EmptyWithFd,
        }
    }
}

fn case(request: FrontendRequest<'static>, fds: usize, call: Call) -> Case {
    Case {
        request,
        fds,
        call,
        reply: FrontendReply::U64(0),
        reply_fds: 0,
    }
}

fn replying(
    request: FrontendRequest<'static>,
    fds: usize,
    call: Call,
    reply: FrontendReply<'static>,
    reply_fds: usize,
) -> Case {
    Case {
        request,
        fds,
        call,
        reply,
        reply_fds,
    }
}

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const CONFIG_BYTES: [u8; 8] = [4, 5, 6, 7, 8, 9, 10, 11];

/// Every front-end request, in code order.
pub fn all() -> Vec<Case> {
    use FrontendReply as P;
    use FrontendRequest as R;
    let table = MemTable::new(&[region()]).expect("table");
    let state = |index, num| VringState { index, num };
    let vfd = |index, nofd| VringFd { index, nofd };
    let inflight_req = Inflight {
        num_queues: 2,
        queue_size: 128,
        ..Inflight::default()
    };
    let log = LogBase {
        mmap_size: 4096,
        mmap_offset: 0,
    };
    let uuid = SharedObject { uuid: [7; 16] };
    let transfer = DeviceStateTransfer {
        direction: 0,
        phase: 0,
    };
    let mut rarp = [0u8; 8];
    rarp[..6].copy_from_slice(&MAC);
    vec![
        replying(R::GetFeatures, 0, Call::GetFeatures, P::U64(FEATURES), 0),
        case(
            R::SetFeatures(FEATURES),
            0,
            Call::SetFeatures { features: FEATURES },
        ),
        case(R::SetOwner, 0, Call::SetOwner),
        case(R::ResetOwner, 0, Call::ResetOwner),
        case(
            R::SetMemTable(table),
            1,
            Call::SetMemTable {
                table: vec![region()],
                fds: 1,
            },
        ),
        replying(
            R::SetLogBase(log),
            1,
            Call::SetLogBase { log },
            P::U64(0),
            0,
        ),
        case(R::SetLogFd, 1, Call::SetLogFd),
        case(
            R::SetVringNum(state(1, 256)),
            0,
            Call::SetVringNum { index: 1, num: 256 },
        ),
        case(
            R::SetVringAddr(addr()),
            0,
            Call::SetVringAddr { addr: addr() },
        ),
        case(
            R::SetVringBase(state(1, 7)),
            0,
            Call::SetVringBase { index: 1, base: 7 },
        ),
        replying(
            R::GetVringBase(state(1, 0)),
            0,
            Call::GetVringBase { index: 1 },
            P::VringState(state(1, VRING_BASE)),
            0,
        ),
        case(
            R::SetVringKick(vfd(1, false)),
            1,
            Call::SetVringKick { index: 1, fd: true },
        ),
        case(
            R::SetVringCall(vfd(1, true)),
            0,
            Call::SetVringCall {
                index: 1,
                fd: false,
            },
        ),
        case(
            R::SetVringErr(vfd(0, false)),
            1,
            Call::SetVringErr { index: 0, fd: true },
        ),
        replying(
            R::GetProtocolFeatures,
            0,
            Call::GetProtocolFeatures,
            P::U64(ProtocolFeatures::all().bits()),
            0,
        ),
        case(
            R::SetProtocolFeatures(ProtocolFeatures::all().bits()),
            0,
            Call::SetProtocolFeatures {
                features: ProtocolFeatures::all(),
            },
        ),
        replying(R::GetQueueNum, 0, Call::GetQueueNum, P::U64(2), 0),
        case(
            R::SetVringEnable(state(1, 1)),
            0,
            Call::SetVringEnable {
                index: 1,
                enable: true,
            },
        ),
        case(
            R::SendRarp(u64::from_ne_bytes(rarp)),
            0,
            Call::SendRarp { mac: MAC },
        ),
        case(R::NetSetMtu(1500), 0, Call::NetSetMtu { mtu: 1500 }),
        case(R::SetBackendReqFd, 1, Call::SetBackendReqFd),
        case(
            R::IotlbMsg(iotlb_msg()),
            0,
            Call::IotlbMsg { msg: iotlb_msg() },
        ),
        case(
            R::SetVringEndian(state(0, 1)),
            0,
            Call::SetVringEndian {
                index: 0,
                big_endian: true,
            },
        ),
        replying(
            R::GetConfig(Config {
                offset: 4,
                flags: 0,
                payload: &[0; 8],
            }),
            0,
            Call::GetConfig {
                offset: 4,
                size: 8,
                flags: 0,
            },
            P::Config(Config {
                offset: 4,
                flags: 0,
                payload: &CONFIG_BYTES,
            }),
            0,
        ),
        case(
            R::SetConfig(Config {
                offset: 2,
                flags: 1,
                payload: &[9, 9],
            }),
            0,
            Call::SetConfig {
                offset: 2,
                data: vec![9, 9],
                flags: 1,
            },
        ),
        replying(
            R::CreateCryptoSession(CryptoSession {
                session_id: 0,
                payload: &[1, 2, 3],
            }),
            0,
            Call::CreateCryptoSession {
                session: CryptoSessionCall {
                    session_id: 0,
                    payload: vec![1, 2, 3],
                },
            },
            P::CryptoSession(CryptoSession {
                session_id: 1,
                payload: &[1, 2, 3],
            }),
            0,
        ),
        case(
            R::CloseCryptoSession(5),
            0,
            Call::CloseCryptoSession { session_id: 5 },
        ),
        replying(R::PostcopyAdvise, 0, Call::PostcopyAdvise, P::Empty, 1),
        case(R::PostcopyListen, 0, Call::PostcopyListen),
        replying(R::PostcopyEnd, 0, Call::PostcopyEnd, P::U64(0), 0),
        replying(
            R::GetInflightFd(inflight_req),
            0,
            Call::GetInflightFd { info: inflight_req },
            P::Inflight(inflight_reply()),
            1,
        ),
        case(
            R::SetInflightFd(inflight_reply()),
            1,
            Call::SetInflightFd {
                info: inflight_reply(),
            },
        ),
        case(R::GpuSetSocket, 1, Call::GpuSetSocket),
        case(R::ResetDevice, 0, Call::ResetDevice),
        case(R::VringKick(state(1, 0)), 0, Call::VringKick { index: 1 }),
        replying(R::GetMaxMemSlots, 0, Call::GetMaxMemSlots, P::U64(32), 0),
        case(
            R::AddMemReg(RegionMsg::new(region())),
            1,
            Call::AddMemReg {
                region: RegionMsg::new(region()),
            },
        ),
        case(
            R::RemMemReg(RegionMsg::new(region())),
            0,
            Call::RemMemReg {
                region: RegionMsg::new(region()),
            },
        ),
        case(R::SetStatus(8), 0, Call::SetStatus { status: 8 }),
        replying(R::GetStatus, 0, Call::GetStatus, P::U64(STATUS), 0),
        replying(
            R::GetSharedObject(uuid),
            0,
            Call::GetSharedObject { object: uuid },
            P::U64(0),
            1,
        ),
        replying(
            R::SetDeviceStateFd(transfer),
            1,
            Call::SetDeviceStateFd {
                direction: 0,
                phase: 0,
            },
            P::U64(DEVICE_STATE_NOFD),
            0,
        ),
        replying(R::CheckDeviceState, 0, Call::CheckDeviceState, P::U64(0), 0),
        replying(
            R::GetShmemConfig,
            0,
            Call::GetShmemConfig,
            P::ShmemConfig(Box::new(shmem())),
            0,
        ),
    ]
}
