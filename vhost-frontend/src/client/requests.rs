//! One method per front-end request (codes 1–44), in code order.

use std::os::fd::{BorrowedFd, OwnedFd};

use vhost_proto::wire::{DEVICE_STATE_NOFD, MAX_SHMEM_REGIONS};
use vhost_proto::{
    virtio, Config, CryptoSession, DeviceStateTransfer, FrontendReply, FrontendReq,
    FrontendRequest, Inflight, IotlbMsg, LogBase, MemTable, MemoryRegion, ProtocolFeatures,
    RegionMsg, SharedObject, ShmemConfig, VringAddr, VringFd, VringState, XenMapping,
};

use super::{invalid_reply, Frontend, FrontendError, Result};

fn vring_fd(request: FrontendReq, index: u32, fd: Option<BorrowedFd<'_>>) -> Result<VringFd> {
    let index = u8::try_from(index).map_err(|_| FrontendError::InvalidArgument {
        request,
        why: "vring index above 255 cannot be sent in a descriptor message",
    })?;
    Ok(VringFd {
        index,
        nofd: fd.is_none(),
    })
}

fn state(index: u32, num: u32) -> VringState {
    VringState { index, num }
}

impl Frontend {
    fn region_msg(&self, region: &MemoryRegion) -> RegionMsg {
        let mut msg = RegionMsg::new(*region);
        if self.negotiation.decode_context().xen_mmap {
            msg.xen = Some(XenMapping::default());
        }
        msg
    }

    /// GET_FEATURES (1): the virtio features the back-end offers.
    pub fn get_features(&mut self) -> Result<u64> {
        let (v, _) = self.u64_value(FrontendRequest::GetFeatures, &[])?;
        self.offered_features = Some(v);
        Ok(v)
    }

    /// SET_FEATURES (2): ack virtio features.
    pub fn set_features(&mut self, features: u64) -> Result<()> {
        self.simple(FrontendRequest::SetFeatures(features), &[])
    }

    /// SET_OWNER (3): claim the session.
    pub fn set_owner(&mut self) -> Result<()> {
        self.simple(FrontendRequest::SetOwner, &[])
    }

    /// RESET_OWNER (4, deprecated).
    pub fn reset_owner(&mut self) -> Result<()> {
        self.simple(FrontendRequest::ResetOwner, &[])
    }

    /// SET_MEM_TABLE (5): replace the memory table; one descriptor per region, in order.
    /// While postcopy listens, the back-end's reply is kept for
    /// [`Frontend::take_postcopy_reply`].
    pub fn set_mem_table(
        &mut self,
        regions: &[MemoryRegion],
        fds: &[BorrowedFd<'_>],
    ) -> Result<()> {
        let table = match self.negotiation.decode_context().xen_mmap {
            // XEN_MMAP changes the layout: every region carries (zero) Xen fields.
            true => {
                MemTable::new_xen(regions, &[XenMapping::default(); 8][..regions.len().min(8)])?
            }
            false => MemTable::new(regions)?,
        };
        self.simple(FrontendRequest::SetMemTable(table), fds)
    }

    /// SET_LOG_BASE (6, LOG_SHMFD): the dirty log area; the back-end replies with a status.
    pub fn set_log_base(&mut self, log: &LogBase, fd: BorrowedFd<'_>) -> Result<()> {
        self.u64_status(FrontendRequest::SetLogBase(*log), &[fd])
    }

    /// SET_LOG_FD (7): the eventfd the back-end signals after logging.
    pub fn set_log_fd(&mut self, fd: BorrowedFd<'_>) -> Result<()> {
        self.simple(FrontendRequest::SetLogFd, &[fd])
    }

    /// SET_VRING_NUM (8): the ring's size.
    pub fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        self.simple(FrontendRequest::SetVringNum(state(index, num)), &[])
    }

    /// SET_VRING_ADDR (9): the ring's addresses (front-end virtual unless GPA_ADDRESSES).
    pub fn set_vring_addr(&mut self, addr: &VringAddr) -> Result<()> {
        self.simple(FrontendRequest::SetVringAddr(*addr), &[])
    }

    /// SET_VRING_BASE (10): the next available index.
    pub fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        self.simple(FrontendRequest::SetVringBase(state(index, base)), &[])
    }

    /// GET_VRING_BASE (11): stop the ring; returns its next available index. Without
    /// RING_PACKED acked the rings are split and the index is 16 bits: a larger value is
    /// [`FrontendError::InvalidReply`]. (A packed ring's value carries wrap counters too.)
    pub fn get_vring_base(&mut self, index: u32) -> Result<u32> {
        let code = FrontendReq::GetVringBase;
        let split = self.acked_features() & virtio::bit(virtio::RING_PACKED) == 0;
        let reply = self.reply_of(FrontendRequest::GetVringBase(state(index, 0)), &[])?;
        match self.decode(code, &reply)? {
            FrontendReply::VringState(s) if s.index != index => {
                Err(invalid_reply(code, "reply names another vring"))
            }
            FrontendReply::VringState(s) if split && s.num > u32::from(u16::MAX) => {
                Err(invalid_reply(code, "split-ring index over 0xffff"))
            }
            FrontendReply::VringState(s) => Ok(s.num),
            _ => Err(invalid_reply(code, "reply is not a vring state")),
        }
    }

    /// SET_VRING_KICK (12): the kick eventfd, or `None` (NOFD: the back-end polls).
    pub fn set_vring_kick(&mut self, index: u32, fd: Option<BorrowedFd<'_>>) -> Result<()> {
        let v = vring_fd(FrontendReq::SetVringKick, index, fd)?;
        self.simple(FrontendRequest::SetVringKick(v), fd.as_slice())
    }

    /// SET_VRING_CALL (13): the call eventfd, or `None` (NOFD: no signal).
    pub fn set_vring_call(&mut self, index: u32, fd: Option<BorrowedFd<'_>>) -> Result<()> {
        let v = vring_fd(FrontendReq::SetVringCall, index, fd)?;
        self.simple(FrontendRequest::SetVringCall(v), fd.as_slice())
    }

    /// SET_VRING_ERR (14): the error eventfd, or `None`.
    pub fn set_vring_err(&mut self, index: u32, fd: Option<BorrowedFd<'_>>) -> Result<()> {
        let v = vring_fd(FrontendReq::SetVringErr, index, fd)?;
        self.simple(FrontendRequest::SetVringErr(v), fd.as_slice())
    }

    /// GET_PROTOCOL_FEATURES (15): the protocol features offered (unknown bits kept).
    pub fn get_protocol_features(&mut self) -> Result<ProtocolFeatures> {
        let (v, _) = self.u64_value(FrontendRequest::GetProtocolFeatures, &[])?;
        let offered = ProtocolFeatures::from_bits_retain(v);
        self.offered_protocol = Some(offered);
        Ok(offered)
    }

    /// SET_PROTOCOL_FEATURES (16): ack protocol features. REPLY_ACK takes effect for the
    /// requests after this one.
    pub fn set_protocol_features(&mut self, features: ProtocolFeatures) -> Result<()> {
        self.simple(FrontendRequest::SetProtocolFeatures(features.bits()), &[])
    }

    /// GET_QUEUE_NUM (17, MQ): the number of queues.
    pub fn get_queue_num(&mut self) -> Result<u64> {
        Ok(self.u64_value(FrontendRequest::GetQueueNum, &[])?.0)
    }

    /// SET_VRING_ENABLE (18): enable or disable a ring.
    pub fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        let s = state(index, u32::from(enable));
        self.simple(FrontendRequest::SetVringEnable(s), &[])
    }

    /// SEND_RARP (19, RARP): announce a MAC address.
    pub fn send_rarp(&mut self, mac: [u8; 6]) -> Result<()> {
        let mut b = [0u8; 8];
        b[..6].copy_from_slice(&mac);
        self.simple(FrontendRequest::SendRarp(u64::from_ne_bytes(b)), &[])
    }

    /// NET_SET_MTU (20, NET_MTU).
    pub fn net_set_mtu(&mut self, mtu: u64) -> Result<()> {
        self.simple(FrontendRequest::NetSetMtu(mtu), &[])
    }

    /// SET_BACKEND_REQ_FD (21, BACKEND_REQ) with a socket the caller serves itself. See
    /// [`Frontend::set_backend_req_fd`] for the version that serves it on a thread.
    pub fn send_backend_req_fd(&mut self, fd: BorrowedFd<'_>) -> Result<()> {
        self.simple(FrontendRequest::SetBackendReqFd, &[fd])
    }

    /// IOTLB_MSG (22, ACCESS_PLATFORM): an IOTLB update or invalidation.
    pub fn iotlb_msg(&mut self, msg: &IotlbMsg) -> Result<()> {
        self.simple(FrontendRequest::IotlbMsg(*msg), &[])
    }

    /// SET_VRING_ENDIAN (23, CROSS_ENDIAN): `true` for big-endian.
    pub fn set_vring_endian(&mut self, index: u32, big_endian: bool) -> Result<()> {
        let s = state(index, u32::from(big_endian));
        self.simple(FrontendRequest::SetVringEndian(s), &[])
    }

    /// GET_CONFIG (24, CONFIG): `size` bytes of configuration space at `offset`. A zero-size
    /// reply (the back-end's failure form) is [`FrontendError::Refused`].
    pub fn get_config(&mut self, offset: u32, size: u32, flags: u32) -> Result<Vec<u8>> {
        let code = FrontendReq::GetConfig;
        let placeholder = [0u8; vhost_proto::wire::MAX_CONFIG_SIZE];
        let payload = placeholder
            .get(..size as usize)
            .ok_or(FrontendError::InvalidArgument {
                request: code,
                why: "size larger than the 256-byte configuration space",
            })?;
        let msg = FrontendRequest::GetConfig(Config {
            offset,
            flags,
            payload,
        });
        let reply = self.reply_of(msg, &[])?;
        match self.decode(code, &reply)? {
            FrontendReply::Config(c) if c.payload.is_empty() && size != 0 => {
                Err(FrontendError::Refused {
                    request: code,
                    why: "zero-size configuration reply",
                })
            }
            FrontendReply::Config(c) if c.offset != offset => {
                Err(invalid_reply(code, "reply is for another offset"))
            }
            FrontendReply::Config(c) if c.payload.len() != size as usize => Err(invalid_reply(
                code,
                "reply size differs from the size asked for",
            )),
            FrontendReply::Config(c) => Ok(c.payload.to_vec()),
            _ => Err(invalid_reply(code, "reply is not a configuration")),
        }
    }

    /// SET_CONFIG (25, CONFIG): write `data` at `offset`.
    pub fn set_config(&mut self, offset: u32, data: &[u8], flags: u32) -> Result<()> {
        let msg = FrontendRequest::SetConfig(Config {
            offset,
            flags,
            payload: data,
        });
        self.simple(msg, &[])
    }

    /// CREATE_CRYPTO_SESSION (26, CRYPTO_SESSION): returns the new session id. A negative id
    /// (the failure form) is [`FrontendError::Refused`].
    pub fn create_crypto_session(&mut self, session_id: i64, setup: &[u8]) -> Result<i64> {
        let code = FrontendReq::CreateCryptoSession;
        let msg = FrontendRequest::CreateCryptoSession(CryptoSession {
            session_id,
            payload: setup,
        });
        let reply = self.reply_of(msg, &[])?;
        match self.decode(code, &reply)? {
            FrontendReply::CryptoSession(c) if c.session_id < 0 => Err(FrontendError::Refused {
                request: code,
                why: "negative session id",
            }),
            FrontendReply::CryptoSession(c) => Ok(c.session_id),
            _ => Err(invalid_reply(code, "reply is not a crypto session")),
        }
    }

    /// CLOSE_CRYPTO_SESSION (27, CRYPTO_SESSION).
    pub fn close_crypto_session(&mut self, session_id: u64) -> Result<()> {
        self.simple(FrontendRequest::CloseCryptoSession(session_id), &[])
    }

    /// POSTCOPY_ADVISE (28, PAGEFAULT): the back-end's userfaultfd.
    pub fn postcopy_advise(&mut self) -> Result<OwnedFd> {
        let code = FrontendReq::PostcopyAdvise;
        let mut reply = self.reply_of(FrontendRequest::PostcopyAdvise, &[])?;
        self.decode(code, &reply)?;
        reply.fds.pop().ok_or(FrontendError::Refused {
            request: code,
            why: "no userfaultfd in the reply",
        })
    }

    /// POSTCOPY_LISTEN (29, PAGEFAULT).
    pub fn postcopy_listen(&mut self) -> Result<()> {
        self.simple(FrontendRequest::PostcopyListen, &[])
    }

    /// POSTCOPY_END (30, PAGEFAULT): the back-end replies with a status.
    pub fn postcopy_end(&mut self) -> Result<()> {
        self.u64_status(FrontendRequest::PostcopyEnd, &[])
    }

    /// GET_INFLIGHT_FD (31, INFLIGHT_SHMFD): the inflight area and its descriptor. A reply
    /// without a descriptor (the failure form) is [`FrontendError::Refused`].
    pub fn get_inflight_fd(&mut self, info: &Inflight) -> Result<(Inflight, OwnedFd)> {
        let code = FrontendReq::GetInflightFd;
        let mut reply = self.reply_of(FrontendRequest::GetInflightFd(*info), &[])?;
        let inflight = match self.decode(code, &reply)? {
            FrontendReply::Inflight(i) => i,
            _ => return Err(invalid_reply(code, "reply is not an inflight description")),
        };
        let fd = reply.fds.pop().ok_or(FrontendError::Refused {
            request: code,
            why: "no inflight descriptor in the reply",
        })?;
        Ok((inflight, fd))
    }

    /// SET_INFLIGHT_FD (32, INFLIGHT_SHMFD): hand the inflight area back.
    pub fn set_inflight_fd(&mut self, info: &Inflight, fd: BorrowedFd<'_>) -> Result<()> {
        self.simple(FrontendRequest::SetInflightFd(*info), &[fd])
    }

    /// GPU_SET_SOCKET (33): the vhost-user-gpu socket.
    pub fn gpu_set_socket(&mut self, fd: BorrowedFd<'_>) -> Result<()> {
        self.simple(FrontendRequest::GpuSetSocket, &[fd])
    }

    /// RESET_DEVICE (34, RESET_DEVICE).
    pub fn reset_device(&mut self) -> Result<()> {
        self.simple(FrontendRequest::ResetDevice, &[])
    }

    /// VRING_KICK (35, INBAND_NOTIFICATIONS): an in-band kick.
    pub fn vring_kick(&mut self, index: u32) -> Result<()> {
        self.simple(FrontendRequest::VringKick(state(index, 0)), &[])
    }

    /// GET_MAX_MEM_SLOTS (36, CONFIGURE_MEM_SLOTS).
    pub fn get_max_mem_slots(&mut self) -> Result<u64> {
        Ok(self.u64_value(FrontendRequest::GetMaxMemSlots, &[])?.0)
    }

    /// ADD_MEM_REG (37, CONFIGURE_MEM_SLOTS): add one region with its descriptor.
    pub fn add_mem_reg(&mut self, region: &MemoryRegion, fd: BorrowedFd<'_>) -> Result<()> {
        let msg = self.region_msg(region);
        self.simple(FrontendRequest::AddMemReg(msg), &[fd])
    }

    /// REM_MEM_REG (38, CONFIGURE_MEM_SLOTS): remove the region with these addresses.
    pub fn rem_mem_reg(&mut self, region: &MemoryRegion) -> Result<()> {
        let msg = self.region_msg(region);
        self.simple(FrontendRequest::RemMemReg(msg), &[])
    }

    /// SET_STATUS (39, STATUS): the virtio device status.
    pub fn set_status(&mut self, status: u64) -> Result<()> {
        self.simple(FrontendRequest::SetStatus(status), &[])
    }

    /// GET_STATUS (40, STATUS).
    pub fn get_status(&mut self) -> Result<u64> {
        Ok(self.u64_value(FrontendRequest::GetStatus, &[])?.0)
    }

    /// GET_SHARED_OBJECT (41, SHARED_OBJECT): the object's dmabuf fd, if the back-end sent
    /// one. A non-zero status is a nack.
    pub fn get_shared_object(&mut self, uuid: [u8; 16]) -> Result<Option<OwnedFd>> {
        let code = FrontendReq::GetSharedObject;
        let msg = FrontendRequest::GetSharedObject(SharedObject { uuid });
        match self.u64_value(msg, &[])? {
            (0, fd) => Ok(fd),
            (status, _) => Err(FrontendError::Nack {
                request: code,
                status,
            }),
        }
    }

    /// SET_DEVICE_STATE_FD (42, DEVICE_STATE): start a state transfer over `fd`
    /// (`direction` 0 save, 1 load; `phase` 0 stopped). Returns the descriptor the back-end
    /// wants used instead, if any. An error code in bits 0–7 is a nack.
    pub fn set_device_state_fd(
        &mut self,
        direction: u32,
        phase: u32,
        fd: BorrowedFd<'_>,
    ) -> Result<Option<OwnedFd>> {
        let code = FrontendReq::SetDeviceStateFd;
        let msg = FrontendRequest::SetDeviceStateFd(DeviceStateTransfer { direction, phase });
        let (value, fd) = self.u64_value(msg, &[fd])?;
        if value & 0xff != 0 {
            return Err(FrontendError::Nack {
                request: code,
                status: value,
            });
        }
        let bad = |why| FrontendError::InvalidReply { request: code, why };
        if value & !(0xff | DEVICE_STATE_NOFD) != 0 {
            return Err(bad("reserved reply bits set"));
        }
        match (value & DEVICE_STATE_NOFD != 0, fd) {
            (true, None) => Ok(None),
            (false, Some(fd)) => Ok(Some(fd)),
            (true, Some(_)) => Err(bad("a descriptor came with the no-fd bit set")),
            (false, None) => Err(bad("no descriptor and the no-fd bit clear")),
        }
    }

    /// CHECK_DEVICE_STATE (43, DEVICE_STATE): a non-zero status is a nack.
    pub fn check_device_state(&mut self) -> Result<()> {
        self.u64_status(FrontendRequest::CheckDeviceState, &[])
    }

    /// GET_SHMEM_CONFIG (44, SHMEM): the shared memory regions' sizes.
    pub fn get_shmem_config(&mut self) -> Result<ShmemConfig> {
        let code = FrontendReq::GetShmemConfig;
        let reply = self.reply_of(FrontendRequest::GetShmemConfig, &[])?;
        match self.decode(code, &reply)? {
            FrontendReply::ShmemConfig(c) if c.nregions as usize > MAX_SHMEM_REGIONS => {
                Err(invalid_reply(code, "more than 256 regions"))
            }
            FrontendReply::ShmemConfig(c) => Ok(*c),
            _ => Err(invalid_reply(
                code,
                "reply is not a shared memory configuration",
            )),
        }
    }
}

/// Every front-end request has its client method: the match is exhaustive over
/// [`FrontendRequest`] and each arm names the method, so a request declared in `vhost-proto`
/// without one does not compile.
#[allow(dead_code)]
fn every_request_has_a_method(request: &FrontendRequest<'_>) {
    use FrontendRequest as R;
    fn method<F>(_: F) {}
    match request {
        R::GetFeatures { .. } => method(Frontend::get_features),
        R::SetFeatures { .. } => method(Frontend::set_features),
        R::SetOwner { .. } => method(Frontend::set_owner),
        R::ResetOwner { .. } => method(Frontend::reset_owner),
        R::SetMemTable { .. } => method(Frontend::set_mem_table),
        R::SetLogBase { .. } => method(Frontend::set_log_base),
        R::SetLogFd { .. } => method(Frontend::set_log_fd),
        R::SetVringNum { .. } => method(Frontend::set_vring_num),
        R::SetVringAddr { .. } => method(Frontend::set_vring_addr),
        R::SetVringBase { .. } => method(Frontend::set_vring_base),
        R::GetVringBase { .. } => method(Frontend::get_vring_base),
        R::SetVringKick { .. } => method(Frontend::set_vring_kick),
        R::SetVringCall { .. } => method(Frontend::set_vring_call),
        R::SetVringErr { .. } => method(Frontend::set_vring_err),
        R::GetProtocolFeatures { .. } => method(Frontend::get_protocol_features),
        R::SetProtocolFeatures { .. } => method(Frontend::set_protocol_features),
        R::GetQueueNum { .. } => method(Frontend::get_queue_num),
        R::SetVringEnable { .. } => method(Frontend::set_vring_enable),
        R::SendRarp { .. } => method(Frontend::send_rarp),
        R::NetSetMtu { .. } => method(Frontend::net_set_mtu),
        R::SetBackendReqFd { .. } => method(Frontend::send_backend_req_fd),
        R::IotlbMsg { .. } => method(Frontend::iotlb_msg),
        R::SetVringEndian { .. } => method(Frontend::set_vring_endian),
        R::GetConfig { .. } => method(Frontend::get_config),
        R::SetConfig { .. } => method(Frontend::set_config),
        R::CreateCryptoSession { .. } => method(Frontend::create_crypto_session),
        R::CloseCryptoSession { .. } => method(Frontend::close_crypto_session),
        R::PostcopyAdvise { .. } => method(Frontend::postcopy_advise),
        R::PostcopyListen { .. } => method(Frontend::postcopy_listen),
        R::PostcopyEnd { .. } => method(Frontend::postcopy_end),
        R::GetInflightFd { .. } => method(Frontend::get_inflight_fd),
        R::SetInflightFd { .. } => method(Frontend::set_inflight_fd),
        R::GpuSetSocket { .. } => method(Frontend::gpu_set_socket),
        R::ResetDevice { .. } => method(Frontend::reset_device),
        R::VringKick { .. } => method(Frontend::vring_kick),
        R::GetMaxMemSlots { .. } => method(Frontend::get_max_mem_slots),
        R::AddMemReg { .. } => method(Frontend::add_mem_reg),
        R::RemMemReg { .. } => method(Frontend::rem_mem_reg),
        R::SetStatus { .. } => method(Frontend::set_status),
        R::GetStatus { .. } => method(Frontend::get_status),
        R::GetSharedObject { .. } => method(Frontend::get_shared_object),
        R::SetDeviceStateFd { .. } => method(Frontend::set_device_state_fd),
        R::CheckDeviceState { .. } => method(Frontend::check_device_state),
        R::GetShmemConfig { .. } => method(Frontend::get_shmem_config),
    }
}
