//! Front-end → back-end requests and their replies: typed values, decoding and encoding.

use crate::codec::{check_fds, expect_empty, put, read_exact, read_prefix};
use crate::table::{FdPolicy, ReplyShape};
use crate::wire::*;
use crate::{Error, FrontendReq, Header, HeaderFlags, MessageKind};

/// Most regions a SET_MEM_TABLE may carry.
pub const MAX_MEM_TABLE_REGIONS: usize = 8;

/// Settings that change body layouts, taken from the negotiation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeContext {
    /// XEN_MMAP acked: memory regions carry Xen flags and a domain id.
    pub xen_mmap: bool,
}

/// The Xen fields of a memory region (XEN_MMAP).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XenMapping {
    /// Xen mapping flags.
    pub flags: u32,
    /// Xen domain id.
    pub domid: u32,
}

/// A decoded SET_MEM_TABLE: up to 8 regions, held inline (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemTable {
    len: usize,
    padding: u32,
    regions: [MemoryRegion; MAX_MEM_TABLE_REGIONS],
    xen: Option<[XenMapping; MAX_MEM_TABLE_REGIONS]>,
}

impl MemTable {
    /// A table of plain regions. Fails with more than 8 regions.
    pub fn new(regions: &[MemoryRegion]) -> Result<Self, Error> {
        Self::build(regions, None)
    }

    /// A table of regions with their Xen fields (XEN_MMAP).
    pub fn new_xen(regions: &[MemoryRegion], xen: &[XenMapping]) -> Result<Self, Error> {
        Self::build(regions, Some(xen))
    }

    fn build(regions: &[MemoryRegion], xen: Option<&[XenMapping]>) -> Result<Self, Error> {
        let kind = MessageKind::Frontend(FrontendReq::SetMemTable);
        if regions.len() > MAX_MEM_TABLE_REGIONS || xen.is_some_and(|x| x.len() != regions.len()) {
            return Err(Error::InvalidField {
                request: kind,
                field: "num_regions",
                why: "more than 8 regions, or Xen fields not one per region",
            });
        }
        let mut t = MemTable {
            len: regions.len(),
            padding: 0,
            regions: [MemoryRegion::default(); MAX_MEM_TABLE_REGIONS],
            xen: xen.map(|_| [XenMapping::default(); MAX_MEM_TABLE_REGIONS]),
        };
        t.regions[..regions.len()].copy_from_slice(regions);
        if let (Some(dst), Some(src)) = (t.xen.as_mut(), xen) {
            dst[..src.len()].copy_from_slice(src);
        }
        Ok(t)
    }

    /// The regions.
    pub fn regions(&self) -> &[MemoryRegion] {
        &self.regions[..self.len]
    }

    /// The regions' Xen fields, when XEN_MMAP is in use.
    pub fn xen(&self) -> Option<&[XenMapping]> {
        self.xen.as_ref().map(|x| &x[..self.len])
    }

    fn decode(body: &[u8], nfds: usize, ctx: DecodeContext) -> Result<Self, Error> {
        let kind = MessageKind::Frontend(FrontendReq::SetMemTable);
        let (hdr, rest) = read_prefix::<MemTableHeader>(body, kind)?;
        let n = hdr.num_regions as usize;
        if n > MAX_MEM_TABLE_REGIONS {
            return Err(Error::InvalidField {
                request: kind,
                field: "num_regions",
                why: "more than 8 regions",
            });
        }
        let rsz = if ctx.xen_mmap {
            core::mem::size_of::<XenMemoryRegion>()
        } else {
            core::mem::size_of::<MemoryRegion>()
        };
        if rest.len() != n * rsz {
            return Err(Error::SizeMismatch {
                request: kind,
                expected: core::mem::size_of::<MemTableHeader>() + n * rsz,
                got: body.len(),
            });
        }
        check_fds(FdPolicy::PerRegion, nfds, kind, false, n)?;
        let mut t = MemTable {
            len: n,
            padding: hdr.padding,
            regions: [MemoryRegion::default(); MAX_MEM_TABLE_REGIONS],
            xen: ctx
                .xen_mmap
                .then_some([XenMapping::default(); MAX_MEM_TABLE_REGIONS]),
        };
        for (i, chunk) in rest.chunks_exact(rsz).enumerate() {
            if ctx.xen_mmap {
                let x = read_exact::<XenMemoryRegion>(chunk, kind)?;
                t.regions[i] = x.region;
                if let Some(xs) = t.xen.as_mut() {
                    xs[i] = XenMapping {
                        flags: x.xen_mmap_flags,
                        domid: x.domid,
                    };
                }
            } else {
                t.regions[i] = read_exact::<MemoryRegion>(chunk, kind)?;
            }
        }
        validate_regions(t.regions(), kind)?;
        Ok(t)
    }

    fn encode(&self, buf: &mut [u8]) -> Result<usize, Error> {
        let mut n = put(
            buf,
            &MemTableHeader {
                num_regions: self.len as u32,
                padding: self.padding,
            },
        )?;
        for (i, r) in self.regions().iter().enumerate() {
            let have = buf.len();
            let dst = buf
                .get_mut(n..)
                .ok_or(Error::BufferTooSmall { need: n, have })?;
            n += match self.xen() {
                Some(x) => put(
                    dst,
                    &XenMemoryRegion {
                        region: *r,
                        xen_mmap_flags: x[i].flags,
                        domid: x[i].domid,
                    },
                )?,
                None => put(dst, r)?,
            };
        }
        Ok(n)
    }
}

/// Checks each region for emptiness and overflow, and the set for overlaps (guest-physical
/// and front-end virtual ranges): [`region::check_regions`](crate::region::check_regions).
pub fn validate_regions(regions: &[MemoryRegion], request: MessageKind) -> Result<(), Error> {
    crate::region::check_regions(regions).map_err(|(index, fault)| Error::RegionOverflow {
        request,
        index,
        why: fault.why(),
    })
}

/// ADD_MEM_REG / REM_MEM_REG body: one region (with Xen fields under XEN_MMAP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionMsg {
    /// Padding, as received.
    pub padding: u64,
    /// The region.
    pub region: MemoryRegion,
    /// Xen fields, when XEN_MMAP is in use.
    pub xen: Option<XenMapping>,
}

impl RegionMsg {
    /// A message for one plain region.
    pub fn new(region: MemoryRegion) -> Self {
        RegionMsg {
            padding: 0,
            region,
            xen: None,
        }
    }

    fn decode(body: &[u8], kind: MessageKind, ctx: DecodeContext) -> Result<Self, Error> {
        let m = if ctx.xen_mmap {
            let x = read_exact::<XenSingleRegion>(body, kind)?;
            RegionMsg {
                padding: x.padding,
                region: x.region.region,
                xen: Some(XenMapping {
                    flags: x.region.xen_mmap_flags,
                    domid: x.region.domid,
                }),
            }
        } else {
            let s = read_exact::<SingleRegion>(body, kind)?;
            RegionMsg {
                padding: s.padding,
                region: s.region,
                xen: None,
            }
        };
        Ok(m)
    }

    fn encode(&self, buf: &mut [u8]) -> Result<usize, Error> {
        match self.xen {
            Some(x) => put(
                buf,
                &XenSingleRegion {
                    padding: self.padding,
                    region: XenMemoryRegion {
                        region: self.region,
                        xen_mmap_flags: x.flags,
                        domid: x.domid,
                    },
                },
            ),
            None => put(
                buf,
                &SingleRegion {
                    padding: self.padding,
                    region: self.region,
                },
            ),
        }
    }
}

/// SET_VRING_KICK / CALL / ERR body: a vring index and whether a descriptor comes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringFd {
    /// The vring index (8 bits on the wire).
    pub index: u8,
    /// NOFD: no descriptor; the back-end polls (kick) or does not signal (call, err).
    pub nofd: bool,
}

impl VringFd {
    fn decode(v: u64, kind: MessageKind) -> Result<Self, Error> {
        if v & !(VRING_INDEX_MASK | VRING_NOFD) != 0 {
            return Err(Error::InvalidField {
                request: kind,
                field: "u64",
                why: "bits above NOFD (8) are reserved",
            });
        }
        Ok(VringFd {
            index: (v & VRING_INDEX_MASK) as u8,
            nofd: v & VRING_NOFD != 0,
        })
    }

    fn to_u64(self) -> u64 {
        u64::from(self.index) | if self.nofd { VRING_NOFD } else { 0 }
    }
}

/// GET_CONFIG / SET_CONFIG body: where, how much, and the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config<'a> {
    /// Offset in the configuration space.
    pub offset: u32,
    /// Flags ([`CONFIG_FLAG_WRITABLE`], [`CONFIG_FLAG_LIVE_MIGRATION`]).
    pub flags: u32,
    /// The bytes (for GET_CONFIG requests, `size` placeholder bytes).
    pub payload: &'a [u8],
}

impl<'a> Config<'a> {
    /// Decodes a request body, or a reply body when `reply` (see [`Config::check`]).
    fn decode(body: &'a [u8], kind: MessageKind, reply: bool) -> Result<Self, Error> {
        let (h, payload) = read_prefix::<ConfigHeader>(body, kind)?;
        if h.size as usize != payload.len() {
            return Err(Error::SizeMismatch {
                request: kind,
                expected: 12 + h.size as usize,
                got: body.len(),
            });
        }
        let config = Config {
            offset: h.offset,
            flags: h.flags,
            payload,
        };
        config.check(kind, reply)?;
        Ok(config)
    }

    /// The limits both the decoder and the encoder enforce: at most [`MAX_CONFIG_SIZE`]
    /// bytes, ending within the configuration space ([`CONFIG_SPACE_END`]). A reply with
    /// no bytes is the failure form, which echoes the offset asked for whatever it was.
    fn check(&self, kind: MessageKind, reply: bool) -> Result<(), Error> {
        if reply && self.payload.is_empty() {
            return Ok(());
        }
        if self.payload.len() > MAX_CONFIG_SIZE {
            return Err(Error::InvalidField {
                request: kind,
                field: "size",
                why: "larger than the 256-byte configuration space",
            });
        }
        if u64::from(self.offset) + self.payload.len() as u64 > CONFIG_SPACE_END {
            return Err(Error::InvalidField {
                request: kind,
                field: "offset",
                why: "offset + size beyond the configuration space",
            });
        }
        Ok(())
    }

    fn header(&self) -> ConfigHeader {
        ConfigHeader {
            offset: self.offset,
            size: self.payload.len() as u32,
            flags: self.flags,
        }
    }
}

/// CREATE_CRYPTO_SESSION body: a session id and the opaque virtio-crypto setup data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptoSession<'a> {
    /// Session id (negative in a reply: failure).
    pub session_id: i64,
    /// Setup parameters and keys, as the virtio-crypto device defines them.
    pub payload: &'a [u8],
}

impl<'a> CryptoSession<'a> {
    fn decode(body: &'a [u8], kind: MessageKind) -> Result<Self, Error> {
        let (h, payload) = read_prefix::<CryptoSessionHeader>(body, kind)?;
        if payload.len() > MAX_CRYPTO_PAYLOAD {
            return Err(Error::SizeMismatch {
                request: kind,
                expected: 8 + MAX_CRYPTO_PAYLOAD,
                got: body.len(),
            });
        }
        Ok(CryptoSession {
            session_id: h.session_id,
            payload,
        })
    }

    /// Encodes the fixed part into `body`, refusing a payload the decoder would refuse
    /// (over [`MAX_CRYPTO_PAYLOAD`] bytes).
    fn encode(&self, kind: MessageKind, body: &mut [u8]) -> Result<usize, Error> {
        if self.payload.len() > MAX_CRYPTO_PAYLOAD {
            return Err(Error::InvalidField {
                request: kind,
                field: "payload",
                why: "larger than the 1024-byte session setup limit",
            });
        }
        put(
            body,
            &CryptoSessionHeader {
                session_id: self.session_id,
            },
        )
    }
}

/// A decoded front-end request. Small fixed bodies are copied out; variable payloads borrow
/// the body buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
// The memory table is held inline (8 regions, no allocation per message).
#[allow(clippy::large_enum_variant)]
pub enum FrontendRequest<'a> {
    GetFeatures,
    SetFeatures(u64),
    SetOwner,
    ResetOwner,
    SetMemTable(MemTable),
    SetLogBase(LogBase),
    SetLogFd,
    SetVringNum(VringState),
    SetVringAddr(VringAddr),
    SetVringBase(VringState),
    GetVringBase(VringState),
    SetVringKick(VringFd),
    SetVringCall(VringFd),
    SetVringErr(VringFd),
    GetProtocolFeatures,
    SetProtocolFeatures(u64),
    GetQueueNum,
    SetVringEnable(VringState),
    /// The MAC address is in the first 6 bytes (see [`FrontendRequest::rarp_mac`]).
    SendRarp(u64),
    NetSetMtu(u64),
    SetBackendReqFd,
    IotlbMsg(IotlbMsg),
    SetVringEndian(VringState),
    GetConfig(Config<'a>),
    SetConfig(Config<'a>),
    CreateCryptoSession(CryptoSession<'a>),
    CloseCryptoSession(u64),
    PostcopyAdvise,
    PostcopyListen,
    PostcopyEnd,
    GetInflightFd(Inflight),
    SetInflightFd(Inflight),
    GpuSetSocket,
    ResetDevice,
    VringKick(VringState),
    GetMaxMemSlots,
    AddMemReg(RegionMsg),
    RemMemReg(RegionMsg),
    SetStatus(u64),
    GetStatus,
    GetSharedObject(SharedObject),
    SetDeviceStateFd(DeviceStateTransfer),
    CheckDeviceState,
    GetShmemConfig,
}

fn bool_field(v: u32, kind: MessageKind, field: &'static str) -> Result<(), Error> {
    if v > 1 {
        Err(Error::InvalidField {
            request: kind,
            field,
            why: "must be 0 or 1",
        })
    } else {
        Ok(())
    }
}

/// The header, body length and borrowed payload of an encoded message: send
/// `header.to_wire()`, `body[..body_len]` and `payload` together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoded<'a> {
    /// The header, `size` covering body and payload.
    pub header: Header,
    /// Bytes of the caller's buffer used.
    pub body_len: usize,
    /// Bytes to send after the body, borrowed from the message.
    pub payload: &'a [u8],
}

impl<'a> Encoded<'a> {
    fn new(request: u32, flags: HeaderFlags, body_len: usize, payload: &'a [u8]) -> Self {
        Encoded {
            header: Header::new(request, flags, (body_len + payload.len()) as u32),
            body_len,
            payload,
        }
    }
}

impl<'a> FrontendRequest<'a> {
    /// Decodes a request body whose header passed [`Header::check_frontend_request`]:
    /// exact size for the layout, field validity, and the descriptor count (`nfds`).
    pub fn decode(
        req: FrontendReq,
        body: &'a [u8],
        nfds: usize,
        ctx: DecodeContext,
    ) -> Result<Self, Error> {
        use FrontendReq as Q;
        use FrontendRequest as R;
        let kind = MessageKind::Frontend(req);
        let spec = req.spec();
        if req == Q::SetMemTable {
            return Ok(R::SetMemTable(MemTable::decode(body, nfds, ctx)?));
        }
        let u64_of = |b: &[u8]| read_exact::<U64Body>(b, kind).map(|v| v.value);
        let state = |b: &[u8]| read_exact::<VringState>(b, kind);
        let mut nofd = false;
        let r = match req {
            Q::GetFeatures => expect_empty(body, kind).map(|_| R::GetFeatures)?,
            Q::SetFeatures => R::SetFeatures(u64_of(body)?),
            Q::SetOwner => expect_empty(body, kind).map(|_| R::SetOwner)?,
            Q::ResetOwner => expect_empty(body, kind).map(|_| R::ResetOwner)?,
            Q::SetMemTable => unreachable_mem_table(kind)?,
            Q::SetLogBase => R::SetLogBase(read_exact(body, kind)?),
            Q::SetLogFd => expect_empty(body, kind).map(|_| R::SetLogFd)?,
            Q::SetVringNum => R::SetVringNum(state(body)?),
            Q::SetVringAddr => {
                let a: VringAddr = read_exact(body, kind)?;
                if a.flags & !VRING_F_LOG != 0 {
                    return Err(Error::InvalidField {
                        request: kind,
                        field: "flags",
                        why: "only bit 0 (VHOST_VRING_F_LOG) is defined",
                    });
                }
                R::SetVringAddr(a)
            }
            Q::SetVringBase => R::SetVringBase(state(body)?),
            Q::GetVringBase => R::GetVringBase(state(body)?),
            Q::SetVringKick | Q::SetVringCall | Q::SetVringErr => {
                let f = VringFd::decode(u64_of(body)?, kind)?;
                nofd = f.nofd;
                match req {
                    Q::SetVringKick => R::SetVringKick(f),
                    Q::SetVringCall => R::SetVringCall(f),
                    _ => R::SetVringErr(f),
                }
            }
            Q::GetProtocolFeatures => expect_empty(body, kind).map(|_| R::GetProtocolFeatures)?,
            Q::SetProtocolFeatures => R::SetProtocolFeatures(u64_of(body)?),
            Q::GetQueueNum => expect_empty(body, kind).map(|_| R::GetQueueNum)?,
            Q::SetVringEnable => {
                let s = state(body)?;
                bool_field(s.num, kind, "num")?;
                R::SetVringEnable(s)
            }
            Q::SendRarp => R::SendRarp(u64_of(body)?),
            Q::NetSetMtu => R::NetSetMtu(u64_of(body)?),
            Q::SetBackendReqFd => expect_empty(body, kind).map(|_| R::SetBackendReqFd)?,
            Q::IotlbMsg => R::IotlbMsg(read_exact(body, kind)?),
            Q::SetVringEndian => {
                let s = state(body)?;
                bool_field(s.num, kind, "num")?;
                R::SetVringEndian(s)
            }
            Q::GetConfig => R::GetConfig(Config::decode(body, kind, false)?),
            Q::SetConfig => R::SetConfig(Config::decode(body, kind, false)?),
            Q::CreateCryptoSession => R::CreateCryptoSession(CryptoSession::decode(body, kind)?),
            Q::CloseCryptoSession => R::CloseCryptoSession(u64_of(body)?),
            Q::PostcopyAdvise => expect_empty(body, kind).map(|_| R::PostcopyAdvise)?,
            Q::PostcopyListen => expect_empty(body, kind).map(|_| R::PostcopyListen)?,
            Q::PostcopyEnd => expect_empty(body, kind).map(|_| R::PostcopyEnd)?,
            Q::GetInflightFd => R::GetInflightFd(read_exact(body, kind)?),
            Q::SetInflightFd => R::SetInflightFd(read_exact(body, kind)?),
            Q::GpuSetSocket => expect_empty(body, kind).map(|_| R::GpuSetSocket)?,
            Q::ResetDevice => expect_empty(body, kind).map(|_| R::ResetDevice)?,
            Q::VringKick => R::VringKick(state(body)?),
            Q::GetMaxMemSlots => expect_empty(body, kind).map(|_| R::GetMaxMemSlots)?,
            Q::AddMemReg | Q::RemMemReg => {
                let m = RegionMsg::decode(body, kind, ctx)?;
                validate_regions(core::slice::from_ref(&m.region), kind)?;
                if req == Q::AddMemReg {
                    R::AddMemReg(m)
                } else {
                    R::RemMemReg(m)
                }
            }
            Q::SetStatus => R::SetStatus(u64_of(body)?),
            Q::GetStatus => expect_empty(body, kind).map(|_| R::GetStatus)?,
            Q::GetSharedObject => R::GetSharedObject(read_exact(body, kind)?),
            Q::SetDeviceStateFd => {
                let t: DeviceStateTransfer = read_exact(body, kind)?;
                bool_field(t.direction, kind, "direction")?;
                if t.phase != TRANSFER_PHASE_STOPPED {
                    return Err(Error::InvalidField {
                        request: kind,
                        field: "phase",
                        why: "only phase 0 (stopped) is defined",
                    });
                }
                R::SetDeviceStateFd(t)
            }
            Q::CheckDeviceState => expect_empty(body, kind).map(|_| R::CheckDeviceState)?,
            Q::GetShmemConfig => expect_empty(body, kind).map(|_| R::GetShmemConfig)?,
        };
        check_fds(spec.fds, nfds, kind, nofd, 0)?;
        Ok(r)
    }

    /// Which request this is.
    pub fn code(&self) -> FrontendReq {
        use FrontendReq as Q;
        use FrontendRequest as R;
        match self {
            R::GetFeatures => Q::GetFeatures,
            R::SetFeatures(_) => Q::SetFeatures,
            R::SetOwner => Q::SetOwner,
            R::ResetOwner => Q::ResetOwner,
            R::SetMemTable(_) => Q::SetMemTable,
            R::SetLogBase(_) => Q::SetLogBase,
            R::SetLogFd => Q::SetLogFd,
            R::SetVringNum(_) => Q::SetVringNum,
            R::SetVringAddr(_) => Q::SetVringAddr,
            R::SetVringBase(_) => Q::SetVringBase,
            R::GetVringBase(_) => Q::GetVringBase,
            R::SetVringKick(_) => Q::SetVringKick,
            R::SetVringCall(_) => Q::SetVringCall,
            R::SetVringErr(_) => Q::SetVringErr,
            R::GetProtocolFeatures => Q::GetProtocolFeatures,
            R::SetProtocolFeatures(_) => Q::SetProtocolFeatures,
            R::GetQueueNum => Q::GetQueueNum,
            R::SetVringEnable(_) => Q::SetVringEnable,
            R::SendRarp(_) => Q::SendRarp,
            R::NetSetMtu(_) => Q::NetSetMtu,
            R::SetBackendReqFd => Q::SetBackendReqFd,
            R::IotlbMsg(_) => Q::IotlbMsg,
            R::SetVringEndian(_) => Q::SetVringEndian,
            R::GetConfig(_) => Q::GetConfig,
            R::SetConfig(_) => Q::SetConfig,
            R::CreateCryptoSession(_) => Q::CreateCryptoSession,
            R::CloseCryptoSession(_) => Q::CloseCryptoSession,
            R::PostcopyAdvise => Q::PostcopyAdvise,
            R::PostcopyListen => Q::PostcopyListen,
            R::PostcopyEnd => Q::PostcopyEnd,
            R::GetInflightFd(_) => Q::GetInflightFd,
            R::SetInflightFd(_) => Q::SetInflightFd,
            R::GpuSetSocket => Q::GpuSetSocket,
            R::ResetDevice => Q::ResetDevice,
            R::VringKick(_) => Q::VringKick,
            R::GetMaxMemSlots => Q::GetMaxMemSlots,
            R::AddMemReg(_) => Q::AddMemReg,
            R::RemMemReg(_) => Q::RemMemReg,
            R::SetStatus(_) => Q::SetStatus,
            R::GetStatus => Q::GetStatus,
            R::GetSharedObject(_) => Q::GetSharedObject,
            R::SetDeviceStateFd(_) => Q::SetDeviceStateFd,
            R::CheckDeviceState => Q::CheckDeviceState,
            R::GetShmemConfig => Q::GetShmemConfig,
        }
    }

    /// The vring index this request addresses, if it addresses one.
    pub fn vring_index(&self) -> Option<u32> {
        use FrontendRequest as R;
        match self {
            R::SetVringNum(s)
            | R::SetVringBase(s)
            | R::GetVringBase(s)
            | R::SetVringEnable(s)
            | R::SetVringEndian(s)
            | R::VringKick(s) => Some(s.index),
            R::SetVringAddr(a) => Some(a.index),
            R::SetVringKick(f) | R::SetVringCall(f) | R::SetVringErr(f) => Some(f.index.into()),
            _ => None,
        }
    }

    /// The MAC address of a SEND_RARP.
    pub fn rarp_mac(value: u64) -> [u8; 6] {
        let b = value.to_ne_bytes();
        [b[0], b[1], b[2], b[3], b[4], b[5]]
    }

    /// How many descriptors must accompany this request when sent.
    pub fn fd_count(&self) -> usize {
        use FrontendRequest as R;
        match self {
            R::SetMemTable(t) => t.regions().len(),
            R::SetVringKick(f) | R::SetVringCall(f) | R::SetVringErr(f) => usize::from(!f.nofd),
            R::RemMemReg(_) => 0,
            _ => match self.code().spec().fds {
                FdPolicy::One => 1,
                _ => 0,
            },
        }
    }

    /// Encodes this request into `body` (the fixed part) and returns the header and the
    /// borrowed payload. `flags` may add NEED_REPLY; the version is always set.
    ///
    /// What the decoder would refuse is refused here too, with the same error: a
    /// configuration payload over [`MAX_CONFIG_SIZE`] bytes or ending beyond
    /// [`CONFIG_SPACE_END`], a crypto session payload over [`MAX_CRYPTO_PAYLOAD`] bytes
    /// ([`Error::InvalidField`]); a `body` too small is [`Error::BufferTooSmall`].
    pub fn encode(&self, flags: HeaderFlags, body: &mut [u8]) -> Result<Encoded<'a>, Error> {
        use FrontendRequest as R;
        let mut payload: &'a [u8] = &[];
        let n = match *self {
            R::GetFeatures
            | R::SetOwner
            | R::ResetOwner
            | R::SetLogFd
            | R::GetProtocolFeatures
            | R::GetQueueNum
            | R::SetBackendReqFd
            | R::PostcopyAdvise
            | R::PostcopyListen
            | R::PostcopyEnd
            | R::GpuSetSocket
            | R::ResetDevice
            | R::GetMaxMemSlots
            | R::GetStatus
            | R::CheckDeviceState
            | R::GetShmemConfig => 0,
            R::SetFeatures(v)
            | R::SetProtocolFeatures(v)
            | R::SendRarp(v)
            | R::NetSetMtu(v)
            | R::CloseCryptoSession(v)
            | R::SetStatus(v) => put(body, &U64Body { value: v })?,
            R::SetMemTable(ref t) => t.encode(body)?,
            R::SetLogBase(ref l) => put(body, l)?,
            R::SetVringNum(ref s)
            | R::SetVringBase(ref s)
            | R::GetVringBase(ref s)
            | R::SetVringEnable(ref s)
            | R::SetVringEndian(ref s)
            | R::VringKick(ref s) => put(body, s)?,
            R::SetVringAddr(ref a) => put(body, a)?,
            R::SetVringKick(f) | R::SetVringCall(f) | R::SetVringErr(f) => {
                put(body, &U64Body { value: f.to_u64() })?
            }
            R::IotlbMsg(ref m) => put(body, m)?,
            R::GetConfig(c) | R::SetConfig(c) => {
                c.check(MessageKind::Frontend(self.code()), false)?;
                payload = c.payload;
                put(body, &c.header())?
            }
            R::CreateCryptoSession(c) => {
                payload = c.payload;
                c.encode(MessageKind::Frontend(self.code()), body)?
            }
            R::GetInflightFd(ref i) | R::SetInflightFd(ref i) => put(body, i)?,
            R::AddMemReg(ref m) | R::RemMemReg(ref m) => m.encode(body)?,
            R::GetSharedObject(ref o) => put(body, o)?,
            R::SetDeviceStateFd(ref t) => put(body, t)?,
        };
        Ok(Encoded::new(self.code() as u32, flags, n, payload))
    }
}

fn unreachable_mem_table(kind: MessageKind) -> Result<FrontendRequest<'static>, Error> {
    // SET_MEM_TABLE is decoded before the match; reaching here means the table is wrong.
    Err(Error::InvalidField {
        request: kind,
        field: "request",
        why: "internal: SET_MEM_TABLE decoded out of order",
    })
}

/// Value of a failed ack.
pub const ACK_FAILURE: u64 = 1;

/// A reply from the back-end to a front-end request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum FrontendReply<'a> {
    /// A u64: features, counts, status, or an ack (0 success).
    U64(u64),
    /// GET_VRING_BASE.
    VringState(VringState),
    /// GET_CONFIG: an empty payload means failure.
    Config(Config<'a>),
    /// CREATE_CRYPTO_SESSION: a negative id means failure.
    CryptoSession(CryptoSession<'a>),
    /// GET_INFLIGHT_FD (with an fd unless `mmap_size` is 0).
    Inflight(Inflight),
    /// GET_SHMEM_CONFIG.
    ShmemConfig(Box<ShmemConfig>),
    /// SET_MEM_TABLE in postcopy: the table with the back-end's addresses.
    MemTable(MemTable),
    /// ADD_MEM_REG in postcopy: the region with the back-end's address.
    SingleRegion(RegionMsg),
    /// POSTCOPY_ADVISE: no body, the userfaultfd attached.
    Empty,
}

impl<'a> FrontendReply<'a> {
    /// Decodes the body of a reply of shape `shape` to `req`. `nfds` is checked: at most one
    /// descriptor, and only where the reply may carry one.
    pub fn decode(
        req: FrontendReq,
        shape: ReplyShape,
        body: &'a [u8],
        nfds: usize,
        ctx: DecodeContext,
    ) -> Result<Self, Error> {
        let kind = MessageKind::Frontend(req);
        let may_carry_fd = matches!(shape, ReplyShape::Inflight | ReplyShape::EmptyWithFd)
            || matches!(
                req,
                FrontendReq::GetSharedObject | FrontendReq::SetDeviceStateFd
            ) && shape == ReplyShape::U64;
        let policy = if may_carry_fd {
            FdPolicy::NoneOrOne
        } else {
            FdPolicy::None
        };
        check_fds(policy, nfds, kind, false, 0)?;
        Ok(match shape {
            ReplyShape::U64 => FrontendReply::U64(read_exact::<U64Body>(body, kind)?.value),
            ReplyShape::VringState => FrontendReply::VringState(read_exact(body, kind)?),
            ReplyShape::Config => FrontendReply::Config(Config::decode(body, kind, true)?),
            ReplyShape::CryptoSession => {
                FrontendReply::CryptoSession(CryptoSession::decode(body, kind)?)
            }
            ReplyShape::Inflight => FrontendReply::Inflight(read_exact(body, kind)?),
            ReplyShape::ShmemConfig => {
                FrontendReply::ShmemConfig(Box::new(read_exact::<ShmemConfig>(body, kind)?))
            }
            ReplyShape::MemTable => {
                FrontendReply::MemTable(MemTable::decode(body, t_count(body), ctx)?)
            }
            ReplyShape::SingleRegion => {
                FrontendReply::SingleRegion(RegionMsg::decode(body, kind, ctx)?)
            }
            ReplyShape::EmptyWithFd => {
                expect_empty(body, kind)?;
                FrontendReply::Empty
            }
        })
    }

    /// Encodes this reply to `req` into `body`; the header has REPLY set. Payloads the
    /// decoder would refuse are refused as in [`FrontendRequest::encode`].
    pub fn encode(&self, req: FrontendReq, body: &mut [u8]) -> Result<Encoded<'a>, Error> {
        let mut payload: &'a [u8] = &[];
        let n = match self {
            FrontendReply::U64(v) => put(body, &U64Body { value: *v })?,
            FrontendReply::VringState(s) => put(body, s)?,
            FrontendReply::Config(c) => {
                c.check(MessageKind::Frontend(req), true)?;
                payload = c.payload;
                put(body, &c.header())?
            }
            FrontendReply::CryptoSession(c) => {
                payload = c.payload;
                c.encode(MessageKind::Frontend(req), body)?
            }
            FrontendReply::Inflight(i) => put(body, i)?,
            FrontendReply::ShmemConfig(s) => put(body, s.as_ref())?,
            FrontendReply::MemTable(t) => t.encode(body)?,
            FrontendReply::SingleRegion(m) => m.encode(body)?,
            FrontendReply::Empty => 0,
        };
        Ok(Encoded::new(req as u32, HeaderFlags::REPLY, n, payload))
    }

    /// The failure form the specification gives for a reply to `request`, if it has one.
    /// `None` means a failure cannot be reported in-band: the connection must be closed.
    pub fn failure(request: &FrontendRequest<'a>, shape: ReplyShape) -> Option<Self> {
        use FrontendReq as Q;
        let code = request.code();
        match shape {
            ReplyShape::U64 => match code {
                // Replies that carry a value, not a status, have no failure form.
                Q::GetFeatures
                | Q::GetProtocolFeatures
                | Q::GetQueueNum
                | Q::GetMaxMemSlots
                | Q::GetStatus => None,
                Q::SetDeviceStateFd => Some(FrontendReply::U64(ACK_FAILURE | DEVICE_STATE_NOFD)),
                _ => Some(FrontendReply::U64(ACK_FAILURE)),
            },
            ReplyShape::Config => match request {
                FrontendRequest::GetConfig(c) => Some(FrontendReply::Config(Config {
                    offset: c.offset,
                    flags: c.flags,
                    payload: &[],
                })),
                _ => None,
            },
            ReplyShape::CryptoSession => Some(FrontendReply::CryptoSession(CryptoSession {
                session_id: -1,
                payload: &[],
            })),
            ReplyShape::Inflight => Some(FrontendReply::Inflight(Inflight::default())),
            ReplyShape::ShmemConfig => Some(FrontendReply::ShmemConfig(Box::default())),
            ReplyShape::EmptyWithFd => Some(FrontendReply::Empty),
            ReplyShape::VringState | ReplyShape::MemTable | ReplyShape::SingleRegion => None,
        }
    }
}

/// A postcopy memory-table reply carries no descriptors: the count the decoder expects is
/// the region count, read from the body itself.
fn t_count(body: &[u8]) -> usize {
    MemTableHeader::read_from_prefix(body)
        .map(|(h, _)| h.num_regions as usize)
        .unwrap_or(0)
}

use zerocopy::FromBytes;

/// Encodes a u64 ack or value reply (the most common reply) without building a
/// [`FrontendReply`].
pub fn encode_u64_reply(req: FrontendReq, value: u64, body: &mut [u8]) -> Result<Header, Error> {
    let n = put(body, &U64Body { value })?;
    Ok(Header::new(req as u32, HeaderFlags::REPLY, n as u32))
}
