//! One method per front-end request (codes 1–44), in code order, generated from the
//! `=> client(...)` clause of each row of [`vhost_proto::for_each_frontend_request!`];
//! the helpers here are the ones the clauses name.

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

/// SEND_RARP's body: the MAC address in the first 6 bytes of the u64.
fn rarp_value(mac: [u8; 6]) -> u64 {
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(&mac);
    u64::from_ne_bytes(b)
}

/// Generates the [`Frontend`] method of every request from the `=> client(...)` clause of
/// each row of [`vhost_proto::for_each_frontend_request!`]:
///
/// ```text
/// /// the method's doc
/// |fe| fn method(name: Type, ...) -> Output = reader(body) with fds
/// /// or
/// fn method(name: Type, ...) -> Output = via helper
/// ```
///
/// The public method is `fn method(&mut self, name: Type, ...) -> Result<Output>`. Its
/// message is the row's request holding `body` (an expression over the arguments; absent
/// for a request without a body), sent with the descriptors `fds` (an expression giving a
/// `&[BorrowedFd]`; none without `with`). `|fe|` names the client (shared) for the body
/// expression. `reader` is how the reply is read:
/// - `simple`: nothing owed, an ack, or a postcopy memory-table reply ([`Frontend::simple`]);
/// - `u64_status`: a u64 reply, zero for success, anything else a nack;
/// - `value`: a u64 reply, returned.
///
/// `via helper` hands the arguments to `Frontend::helper`, the private method of a request
/// whose building or reply checks are its own (the Xen layout of SET_MEM_TABLE, the checks
/// of GET_VRING_BASE's reply, ...). A row without a client clause does not compile.
macro_rules! client_rows {
    ($($(#[$m:meta])* $v:ident $(($($body:tt)*))? = $code:literal => $spec:expr
        => backend($($backend:tt)*) => client($($client:tt)*);)*) => {
        impl Frontend {
            $(client_rows!(@method $v $($client)*);)*
        }
    };
    (@method $v:ident $(#[$d:meta])* fn $name:ident($($arg:ident : $aty:ty),*) -> $ret:ty
        = via $helper:ident) => {
        $(#[$d])*
        pub fn $name(&mut self, $($arg: $aty),*) -> Result<$ret> {
            self.$helper($($arg),*)
        }
    };
    (@method $v:ident $(#[$d:meta])* $(|$fe:ident|)?
        fn $name:ident($($arg:ident : $aty:ty),*) -> $ret:ty
        = $reader:ident $(($body:expr))? $(with $fds:expr)?) => {
        $(#[$d])*
        pub fn $name(&mut self, $($arg: $aty),*) -> Result<$ret> {
            $(let $fe: &Frontend = self;)?
            let msg = FrontendRequest::$v $(($body))?;
            client_rows!(@read self, $reader, msg, client_rows!(@fds $($fds)?))
        }
    };
    (@fds) => { &[] };
    (@fds $fds:expr) => { $fds };
    (@read $s:ident, simple, $msg:ident, $fds:expr) => { $s.simple($msg, $fds) };
    (@read $s:ident, u64_status, $msg:ident, $fds:expr) => { $s.u64_status($msg, $fds) };
    (@read $s:ident, value, $msg:ident, $fds:expr) => { Ok($s.u64_value($msg, $fds)?.0) };
}

vhost_proto::for_each_frontend_request!(client_rows);

impl Frontend {
    fn region_msg(&self, region: &MemoryRegion) -> RegionMsg {
        let mut msg = RegionMsg::new(*region);
        if self.negotiation.decode_context().xen_mmap {
            msg.xen = Some(XenMapping::default());
        }
        msg
    }

    /// [`Frontend::get_features`], whose row goes `via features_offered`.
    fn features_offered(&mut self) -> Result<u64> {
        let (v, _) = self.u64_value(FrontendRequest::GetFeatures, &[])?;
        self.offered_features = Some(v);
        Ok(v)
    }

    /// [`Frontend::set_mem_table`], whose row goes `via mem_table`.
    fn mem_table(&mut self, regions: &[MemoryRegion], fds: &[BorrowedFd<'_>]) -> Result<()> {
        let table = match self.negotiation.decode_context().xen_mmap {
            // XEN_MMAP changes the layout: every region carries (zero) Xen fields.
            true => {
                MemTable::new_xen(regions, &[XenMapping::default(); 8][..regions.len().min(8)])?
            }
            false => MemTable::new(regions)?,
        };
        self.simple(FrontendRequest::SetMemTable(table), fds)
    }

    /// [`Frontend::get_vring_base`], whose row goes `via vring_base`.
    fn vring_base(&mut self, index: u32) -> Result<u32> {
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

    /// [`Frontend::get_protocol_features`], whose row goes `via protocol_offered`.
    fn protocol_offered(&mut self) -> Result<ProtocolFeatures> {
        let (v, _) = self.u64_value(FrontendRequest::GetProtocolFeatures, &[])?;
        let offered = ProtocolFeatures::from_bits_retain(v);
        self.offered_protocol = Some(offered);
        Ok(offered)
    }

    /// [`Frontend::get_config`], whose row goes `via config`.
    fn config(&mut self, offset: u32, size: u32, flags: u32) -> Result<Vec<u8>> {
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

    /// [`Frontend::create_crypto_session`], whose row goes `via crypto_session`.
    fn crypto_session(&mut self, session_id: i64, setup: &[u8]) -> Result<i64> {
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

    /// [`Frontend::postcopy_advise`], whose row goes `via userfaultfd`.
    fn userfaultfd(&mut self) -> Result<OwnedFd> {
        let code = FrontendReq::PostcopyAdvise;
        let mut reply = self.reply_of(FrontendRequest::PostcopyAdvise, &[])?;
        self.decode(code, &reply)?;
        reply.fds.pop().ok_or(FrontendError::Refused {
            request: code,
            why: "no userfaultfd in the reply",
        })
    }

    /// [`Frontend::get_inflight_fd`], whose row goes `via inflight_area`.
    fn inflight_area(&mut self, info: &Inflight) -> Result<(Inflight, OwnedFd)> {
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

    /// [`Frontend::get_shared_object`], whose row goes `via shared_object`.
    fn shared_object(&mut self, uuid: [u8; 16]) -> Result<Option<OwnedFd>> {
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

    /// [`Frontend::set_device_state_fd`], whose row goes `via device_state_transfer`.
    fn device_state_transfer(
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

    /// [`Frontend::get_shmem_config`], whose row goes `via shmem_config`.
    fn shmem_config(&mut self) -> Result<ShmemConfig> {
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
