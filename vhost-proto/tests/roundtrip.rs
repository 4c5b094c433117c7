//! Property: any valid typed message encodes, then decodes (header check included) to the
//! same value, and encodes again to the same bytes.

mod common;

use common::*;
use proptest::prelude::*;
use vhost_proto::wire::*;
use vhost_proto::*;

#[derive(Debug, Clone)]
struct Params {
    code: u32,
    a: u64,
    b: u64,
    c: u64,
    d: u64,
    x: u32,
    y: u32,
    small: u8,
    flag: bool,
    xen: bool,
    payload: Vec<u8>,
    regions: Vec<(u64, u64, u64, u64)>,
    uuid: [u8; 16],
}

prop_compose! {
    fn params(codes: core::ops::RangeInclusive<u32>)(
        code in codes,
        (a, b, c, d) in any::<(u64, u64, u64, u64)>(),
        (x, y, small, flag, xen) in any::<(u32, u32, u8, bool, bool)>(),
        payload in prop::collection::vec(any::<u8>(), 0..=MAX_CONFIG_SIZE),
        regions in prop::collection::vec(any::<(u64, u64, u64, u64)>(), 0..=8),
        uuid in any::<[u8; 16]>(),
    ) -> Params {
        Params { code, a, b, c, d, x, y, small, flag, xen, payload, regions, uuid }
    }
}

impl Params {
    /// Valid regions: disjoint guest and user ranges, nothing overflows.
    fn regions(&self) -> Vec<MemoryRegion> {
        self.regions
            .iter()
            .enumerate()
            .map(|(i, &(g, s, u, o))| MemoryRegion {
                guest_phys_addr: (i as u64) << 40 | (g & 0xf_ffff),
                memory_size: 1 + (s & 0x3fff_ffff),
                user_addr: 0x7f00_0000_0000 + ((i as u64) << 36) + (u & 0xf_ffff),
                mmap_offset: o >> 1,
            })
            .collect()
    }

    fn xen_maps(&self, n: usize) -> Vec<XenMapping> {
        (0..n as u32)
            .map(|i| XenMapping {
                flags: self.x ^ i,
                domid: self.y.wrapping_add(i),
            })
            .collect()
    }

    fn mem_table(&self) -> MemTable {
        let regions = self.regions();
        if self.xen {
            MemTable::new_xen(&regions, &self.xen_maps(regions.len())).unwrap()
        } else {
            MemTable::new(&regions).unwrap()
        }
    }

    fn region_msg(&self) -> RegionMsg {
        let mut regions = self.regions();
        regions.push(MemoryRegion {
            guest_phys_addr: 0,
            memory_size: 1,
            user_addr: 0,
            mmap_offset: 0,
        });
        RegionMsg {
            padding: self.a,
            region: regions[0],
            xen: self.xen.then(|| self.xen_maps(1)[0]),
        }
    }

    fn state(&self) -> VringState {
        VringState {
            index: self.x,
            num: self.y,
        }
    }

    fn bool_state(&self) -> VringState {
        VringState {
            index: self.x,
            num: u32::from(self.flag),
        }
    }

    fn config(&self) -> Config<'_> {
        let len = self.payload.len() as u32;
        Config {
            offset: self.x % (0x1000 - len + 1),
            flags: self.y,
            payload: &self.payload,
        }
    }

    fn iotlb(&self) -> IotlbMsg {
        let mut padding = [0; 6];
        padding.copy_from_slice(&self.uuid[..6]);
        IotlbMsg {
            iova: self.a,
            size: self.b,
            uaddr: self.c,
            perm: self.small,
            msg_type: self.x as u8,
            padding,
        }
    }

    fn inflight(&self) -> Inflight {
        let mut padding = [0; 4];
        padding.copy_from_slice(&self.uuid[..4]);
        Inflight {
            mmap_size: self.a,
            mmap_offset: self.b,
            num_queues: self.x as u16,
            queue_size: self.y as u16,
            padding,
        }
    }

    fn frontend(&self) -> FrontendRequest<'_> {
        use FrontendRequest as R;
        let fd = VringFd {
            index: self.small,
            nofd: self.flag,
        };
        match FrontendReq::from_code(self.code).unwrap() {
            FrontendReq::GetFeatures => R::GetFeatures,
            FrontendReq::SetFeatures => R::SetFeatures(self.a),
            FrontendReq::SetOwner => R::SetOwner,
            FrontendReq::ResetOwner => R::ResetOwner,
            FrontendReq::SetMemTable => R::SetMemTable(self.mem_table()),
            FrontendReq::SetLogBase => R::SetLogBase(LogBase {
                mmap_size: self.a,
                mmap_offset: self.b,
            }),
            FrontendReq::SetLogFd => R::SetLogFd,
            FrontendReq::SetVringNum => R::SetVringNum(self.state()),
            FrontendReq::SetVringAddr => R::SetVringAddr(VringAddr {
                index: self.x,
                flags: u32::from(self.flag),
                desc: self.a,
                used: self.b,
                avail: self.c,
                log: self.d,
            }),
            FrontendReq::SetVringBase => R::SetVringBase(self.state()),
            FrontendReq::GetVringBase => R::GetVringBase(self.state()),
            FrontendReq::SetVringKick => R::SetVringKick(fd),
            FrontendReq::SetVringCall => R::SetVringCall(fd),
            FrontendReq::SetVringErr => R::SetVringErr(fd),
            FrontendReq::GetProtocolFeatures => R::GetProtocolFeatures,
            FrontendReq::SetProtocolFeatures => R::SetProtocolFeatures(self.a),
            FrontendReq::GetQueueNum => R::GetQueueNum,
            FrontendReq::SetVringEnable => R::SetVringEnable(self.bool_state()),
            FrontendReq::SendRarp => R::SendRarp(self.a),
            FrontendReq::NetSetMtu => R::NetSetMtu(self.a),
            FrontendReq::SetBackendReqFd => R::SetBackendReqFd,
            FrontendReq::IotlbMsg => R::IotlbMsg(self.iotlb()),
            FrontendReq::SetVringEndian => R::SetVringEndian(self.bool_state()),
            FrontendReq::GetConfig => R::GetConfig(self.config()),
            FrontendReq::SetConfig => R::SetConfig(self.config()),
            FrontendReq::CreateCryptoSession => R::CreateCryptoSession(CryptoSession {
                session_id: self.a as i64,
                payload: &self.payload,
            }),
            FrontendReq::CloseCryptoSession => R::CloseCryptoSession(self.a),
            FrontendReq::PostcopyAdvise => R::PostcopyAdvise,
            FrontendReq::PostcopyListen => R::PostcopyListen,
            FrontendReq::PostcopyEnd => R::PostcopyEnd,
            FrontendReq::GetInflightFd => R::GetInflightFd(self.inflight()),
            FrontendReq::SetInflightFd => R::SetInflightFd(self.inflight()),
            FrontendReq::GpuSetSocket => R::GpuSetSocket,
            FrontendReq::ResetDevice => R::ResetDevice,
            FrontendReq::VringKick => R::VringKick(self.state()),
            FrontendReq::GetMaxMemSlots => R::GetMaxMemSlots,
            FrontendReq::AddMemReg => R::AddMemReg(self.region_msg()),
            FrontendReq::RemMemReg => R::RemMemReg(self.region_msg()),
            FrontendReq::SetStatus => R::SetStatus(self.a),
            FrontendReq::GetStatus => R::GetStatus,
            FrontendReq::GetSharedObject => R::GetSharedObject(SharedObject { uuid: self.uuid }),
            FrontendReq::SetDeviceStateFd => R::SetDeviceStateFd(DeviceStateTransfer {
                direction: u32::from(self.flag),
                phase: TRANSFER_PHASE_STOPPED,
            }),
            FrontendReq::CheckDeviceState => R::CheckDeviceState,
            FrontendReq::GetShmemConfig => R::GetShmemConfig,
            other => panic!("no generator for {other:?}"),
        }
    }

    fn backend(&self) -> BackendRequest {
        use BackendRequest as R;
        let shmem = ShmemMap {
            shmid: self.small,
            padding: [0; 7],
            fd_offset: self.a >> 2,
            shm_offset: self.b >> 2,
            len: 1 + (self.c >> 2),
            flags: self.d,
        };
        let uuid = SharedObject { uuid: self.uuid };
        match BackendReq::from_code(self.code).unwrap() {
            BackendReq::IotlbMsg => R::IotlbMsg(self.iotlb()),
            BackendReq::ConfigChangeMsg => R::ConfigChangeMsg,
            BackendReq::VringHostNotifierMsg => R::VringHostNotifierMsg(VringArea {
                u64_index_flags: u64::from(self.small) | if self.flag { VRING_NOFD } else { 0 },
                size: self.a,
                offset: self.b,
            }),
            BackendReq::VringCall => R::VringCall(self.state()),
            BackendReq::VringErr => R::VringErr(self.state()),
            BackendReq::SharedObjectAdd => R::SharedObjectAdd(uuid),
            BackendReq::SharedObjectRemove => R::SharedObjectRemove(uuid),
            BackendReq::SharedObjectLookup => R::SharedObjectLookup(uuid),
            BackendReq::ShmemMap => R::ShmemMap(shmem),
            BackendReq::ShmemUnmap => R::ShmemUnmap(shmem),
            other => panic!("no generator for {other:?}"),
        }
    }

    /// A reply of the shape picked by `code % 9`, with the request it answers and the
    /// descriptors that come with it.
    fn reply(&self) -> (FrontendReq, ReplyShape, FrontendReply<'_>, usize) {
        use FrontendReply as P;
        match self.code % 9 {
            0 => (FrontendReq::GetFeatures, ReplyShape::U64, P::U64(self.a), 0),
            1 => (
                FrontendReq::GetVringBase,
                ReplyShape::VringState,
                P::VringState(self.state()),
                0,
            ),
            2 => (
                FrontendReq::GetConfig,
                ReplyShape::Config,
                P::Config(self.config()),
                0,
            ),
            3 => (
                FrontendReq::CreateCryptoSession,
                ReplyShape::CryptoSession,
                P::CryptoSession(CryptoSession {
                    session_id: self.a as i64,
                    payload: &self.payload,
                }),
                0,
            ),
            4 => (
                FrontendReq::GetInflightFd,
                ReplyShape::Inflight,
                P::Inflight(self.inflight()),
                usize::from(self.flag),
            ),
            5 => {
                let mut s = ShmemConfig {
                    nregions: self.x,
                    padding: self.y,
                    ..ShmemConfig::default()
                };
                for (i, v) in [self.a, self.b, self.c, self.d].into_iter().enumerate() {
                    s.memory_sizes[(i * 67 + self.small as usize) % MAX_SHMEM_REGIONS] = v;
                }
                (
                    FrontendReq::GetShmemConfig,
                    ReplyShape::ShmemConfig,
                    P::ShmemConfig(Box::new(s)),
                    0,
                )
            }
            6 => {
                // The postcopy reply carries no Xen fields when the context has none.
                let regions = self.regions();
                (
                    FrontendReq::SetMemTable,
                    ReplyShape::MemTable,
                    P::MemTable(MemTable::new(&regions).unwrap()),
                    0,
                )
            }
            7 => (
                FrontendReq::AddMemReg,
                ReplyShape::SingleRegion,
                P::SingleRegion(RegionMsg {
                    xen: None,
                    ..self.region_msg()
                }),
                0,
            ),
            _ => (
                FrontendReq::PostcopyAdvise,
                ReplyShape::EmptyWithFd,
                P::Empty,
                1,
            ),
        }
    }
}

proptest! {
    #[test]
    fn frontend_request_encode_then_decode_is_identity(
        p in params(1..=FRONTEND_REQUESTS.len() as u32),
    ) {
        let msg = p.frontend();
        let flags = if p.small & 1 == 1 { HeaderFlags::NEED_REPLY } else { HeaderFlags::empty() };
        let bytes = encode_frontend(&msg, flags);
        let ctx = DecodeContext { xen_mmap: p.xen };
        let decoded = decode_frontend(&bytes, msg.fd_count(), ctx).unwrap();
        prop_assert_eq!(decoded, msg);
        let (h, _) = split(&bytes);
        prop_assert_eq!(h.need_reply(), p.small & 1 == 1);
        prop_assert_eq!(encode_frontend(&decoded, h.header_flags()), bytes);
    }

    #[test]
    fn backend_request_encode_then_decode_is_identity(
        p in params(1..=BACKEND_REQUESTS.len() as u32),
    ) {
        let msg = p.backend();
        let flags = if p.flag { HeaderFlags::NEED_REPLY } else { HeaderFlags::empty() };
        let bytes = encode_backend(&msg, flags);
        let decoded = decode_backend(&bytes, msg.fd_count()).unwrap();
        prop_assert_eq!(decoded, msg);
        prop_assert_eq!(encode_backend(&decoded, split(&bytes).0.header_flags()), bytes);
    }

    #[test]
    fn reply_encode_then_decode_is_identity(p in params(0..=8)) {
        let (req, shape, reply, nfds) = p.reply();
        let bytes = encode_reply(&reply, req);
        let (h, body) = split(&bytes);
        h.check_reply(MessageKind::Frontend(req)).unwrap();
        prop_assert_eq!(body.len(), h.size as usize);
        let decoded = FrontendReply::decode(req, shape, body, nfds, PLAIN).unwrap();
        prop_assert_eq!(&decoded, &reply);
        prop_assert_eq!(encode_reply(&decoded, req), bytes);
    }

    #[test]
    fn backend_reply_encode_then_decode_is_identity(
        value in any::<u64>(),
        code in 1..=BACKEND_REQUESTS.len() as u32,
    ) {
        let req = BackendReq::from_code(code).unwrap();
        let mut buf = [0u8; 8];
        let enc = encode_backend_reply(req, value, &mut buf).unwrap();
        enc.header.check_reply(MessageKind::Backend(req)).unwrap();
        prop_assert_eq!(decode_backend_reply(req, &buf[..enc.body_len], 0), Ok(value));
    }

    #[test]
    fn header_wire_form_round_trips(request in any::<u32>(), flags in any::<u32>(), size in any::<u32>()) {
        let h = Header { request, flags, size };
        prop_assert_eq!(Header::from_wire(&h.to_wire()), h);
        let mut expected = [0u8; 12];
        expected[..4].copy_from_slice(&request.to_le_bytes());
        expected[4..8].copy_from_slice(&flags.to_le_bytes());
        expected[8..].copy_from_slice(&size.to_le_bytes());
        prop_assert_eq!(h.to_wire(), expected);
    }
}
