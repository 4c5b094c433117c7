//! A recording [`Backend`] double for tests (feature `test-utils`).
//!
//! [`RecordingBackend`] implements every request: it records each call as a [`Call`],
//! keeps the descriptors it receives, answers with configurable values, and fails the
//! requests it is told to fail. Its [`Recording`] handle is shared, so a test can read the
//! calls while a server owns the back-end (in another thread, too).
//!
//! ```
//! use vhost_backend::test_utils::{Call, RecordingBackend};
//! use vhost_backend::{Backend, BackendServer};
//! use vhost_proto::FrontendReq;
//! use vhost_transport::Connection;
//!
//! let backend = RecordingBackend::new().with_queues(2);
//! let recording = backend.recording();
//! recording.fail_on(FrontendReq::SetVringNum);
//! let (server_end, _frontend_end) = Connection::pair().unwrap();
//! let server = BackendServer::new(server_end, backend).unwrap();
//! // The server read the offer when it was built.
//! assert_eq!(
//!     recording.take_calls(),
//!     [Call::GetFeatures, Call::GetProtocolFeatures, Call::GetQueueNum]
//! );
//! # drop(server);
//! ```

use std::collections::BTreeSet;
use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vhost_proto::features::virtio;
use vhost_proto::{
    CryptoSession, FrontendReq, Inflight, IotlbMsg, LogBase, MemTable, MemoryRegion,
    ProtocolFeatures, RegionMsg, SharedObject, ShmemConfig, VringAddr,
};

use vhost_transport::OwnedDescriptor;

use crate::{Backend, BackendClient, BackendError, BackendResult, SharedNegotiation};

/// One call a [`RecordingBackend`] received, with its arguments (descriptors as whether
/// or how many came).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Call {
    GetFeatures,
    SetFeatures(u64),
    SetOwner,
    ResetOwner,
    SetMemTable {
        regions: Vec<MemoryRegion>,
        fds: usize,
    },
    SetLogBase(LogBase),
    SetLogFd,
    SetVringNum {
        index: u32,
        num: u32,
    },
    SetVringAddr(VringAddr),
    SetVringBase {
        index: u32,
        base: u32,
    },
    GetVringBase {
        index: u32,
    },
    SetVringKick {
        index: u8,
        fd: bool,
    },
    SetVringCall {
        index: u8,
        fd: bool,
    },
    SetVringErr {
        index: u8,
        fd: bool,
    },
    GetProtocolFeatures,
    SetProtocolFeatures(ProtocolFeatures),
    GetQueueNum,
    SetVringEnable {
        index: u32,
        enable: bool,
    },
    SendRarp([u8; 6]),
    NetSetMtu(u64),
    SetBackendReqFd,
    IotlbMsg(IotlbMsg),
    SetVringEndian {
        index: u32,
        big_endian: bool,
    },
    GetConfig {
        offset: u32,
        size: usize,
        flags: u32,
    },
    SetConfig {
        offset: u32,
        data: Vec<u8>,
        flags: u32,
    },
    CreateCryptoSession {
        session_id: i64,
        payload: Vec<u8>,
    },
    CloseCryptoSession(u64),
    PostcopyAdvise,
    PostcopyListen,
    PostcopyEnd,
    GetInflightFd(Inflight),
    SetInflightFd(Inflight),
    GpuSetSocket,
    ResetDevice,
    VringKick {
        index: u32,
    },
    GetMaxMemSlots,
    AddMemReg(RegionMsg),
    RemMemReg(RegionMsg),
    SetStatus(u64),
    GetStatus,
    GetSharedObject(SharedObject),
    SetDeviceStateFd {
        direction: u32,
        phase: u32,
    },
    CheckDeviceState,
    GetShmemConfig,
    /// Not a request: [`Backend::disconnected`].
    Disconnected,
}

/// [`Call::request`]: one arm per row of [`vhost_proto::for_each_frontend_request!`], so
/// that `Call` has a variant for every request and no other (the compiler checks both).
macro_rules! call_requests {
    ($($(#[$m:meta])* $v:ident $(($($body:tt)*))? = $code:literal => $spec:expr $(=> backend($($backend:tt)*))?;)*) => {
        impl Call {
            /// The request this call answered; `None` for [`Call::Disconnected`].
            pub fn request(&self) -> Option<FrontendReq> {
                match self {
                    $(Call::$v { .. } => Some(FrontendReq::$v),)*
                    Call::Disconnected => None,
                }
            }
        }
    };
}

vhost_proto::for_each_frontend_request!(call_requests);

#[derive(Debug, Default)]
struct State {
    calls: Vec<Call>,
    fds: Vec<(FrontendReq, OwnedDescriptor)>,
    failing: BTreeSet<FrontendReq>,
    client: Option<BackendClient>,
    negotiation: Option<SharedNegotiation>,
    /// What the bound negotiation said was acked when each SET_FEATURES came.
    acked_seen: Vec<u64>,
}

/// A shared view of what a [`RecordingBackend`] received; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Recording(Arc<Mutex<State>>);

impl Recording {
    fn state(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The calls so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    /// The calls so far, forgetting them.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.state().calls)
    }

    /// The descriptors received since the last disconnect, with the request each came
    /// with, forgetting them.
    pub fn take_fds(&self) -> Vec<(FrontendReq, OwnedDescriptor)> {
        std::mem::take(&mut self.state().fds)
    }

    /// How many descriptors are kept.
    pub fn fd_count(&self) -> usize {
        self.state().fds.len()
    }

    /// The acked features in the negotiation the server bound
    /// ([`Backend::bind_negotiation`]), if one is bound.
    pub fn acked_in_negotiation(&self) -> Option<u64> {
        let negotiation = self.state().negotiation.clone()?;
        let acked = negotiation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .acked_features();
        Some(acked)
    }

    /// For each SET_FEATURES so far, the acked features the bound negotiation showed while
    /// the method ran.
    pub fn acked_seen_by_set_features(&self) -> Vec<u64> {
        self.state().acked_seen.clone()
    }

    /// Makes the method for `request` fail from now on, with [`BackendError::Refused`]
    /// holding an [`InjectedFailure`].
    pub fn fail_on(&self, request: FrontendReq) {
        self.state().failing.insert(request);
    }

    /// Makes the method for `request` succeed again.
    pub fn succeed_on(&self, request: FrontendReq) {
        self.state().failing.remove(&request);
    }

    /// The back-end channel handed over with SET_BACKEND_REQ_FD, if any.
    pub fn backend_client(&self) -> Option<BackendClient> {
        self.state().client.clone()
    }
}

/// The failure a [`RecordingBackend`] was told to produce ([`Recording::fail_on`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{} set to fail", .request.name())]
pub struct InjectedFailure {
    /// The request told to fail.
    pub request: FrontendReq,
}

/// A [`Backend`] that records every call. Answers are the public fields; the defaults
/// offer VERSION_1 and PROTOCOL_FEATURES, every protocol feature, two queues and 32 bytes
/// of configuration space holding `0, 1, 2, ...`.
#[derive(Debug, Clone)]
pub struct RecordingBackend {
    /// GET_FEATURES answer.
    pub features: u64,
    /// GET_PROTOCOL_FEATURES answer.
    pub protocol: ProtocolFeatures,
    /// GET_QUEUE_NUM answer (`None`: not supported).
    pub queues: Option<u64>,
    /// The configuration space GET_CONFIG reads (zeros past its end).
    pub config: Vec<u8>,
    /// GET_VRING_BASE answer.
    pub vring_base: u32,
    /// GET_STATUS answer.
    pub status: u64,
    /// GET_MAX_MEM_SLOTS answer.
    pub max_mem_slots: u64,
    /// CREATE_CRYPTO_SESSION answer.
    pub crypto_session_id: i64,
    /// GET_INFLIGHT_FD answer (a descriptor of the null device rides with it).
    pub inflight: Inflight,
    /// GET_SHMEM_CONFIG answer.
    pub shmem: ShmemConfig,
    /// SET_DEVICE_STATE_FD hands a descriptor back.
    pub device_state_fd: bool,
    recording: Recording,
}

impl Default for RecordingBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl RecordingBackend {
    /// A back-end with the default answers.
    pub fn new() -> Self {
        RecordingBackend {
            features: virtio::bit(virtio::VERSION_1) | virtio::bit(virtio::PROTOCOL_FEATURES),
            protocol: ProtocolFeatures::all(),
            queues: Some(2),
            config: (0..32).collect(),
            vring_base: 0,
            status: 0,
            max_mem_slots: 32,
            crypto_session_id: 1,
            inflight: Inflight::default(),
            shmem: ShmemConfig::default(),
            device_state_fd: false,
            recording: Recording::default(),
        }
    }

    /// With these virtio features offered.
    pub fn with_features(mut self, features: u64) -> Self {
        self.features = features;
        self
    }

    /// With these protocol features offered.
    pub fn with_protocol(mut self, protocol: ProtocolFeatures) -> Self {
        self.protocol = protocol;
        self
    }

    /// With this many queues (GET_QUEUE_NUM).
    pub fn with_queues(mut self, queues: u64) -> Self {
        self.queues = Some(queues);
        self
    }

    /// With this configuration space.
    pub fn with_config(mut self, config: Vec<u8>) -> Self {
        self.config = config;
        self
    }

    /// The shared record of calls and descriptors.
    pub fn recording(&self) -> Recording {
        self.recording.clone()
    }

    /// Records `call`, then fails if told to fail its request.
    fn record(&self, call: Call) -> BackendResult<()> {
        let mut state = self.recording.state();
        let request = call.request();
        state.calls.push(call);
        if let Some(request) = request.filter(|r| state.failing.contains(r)) {
            return Err(BackendError::Refused(Box::new(InjectedFailure { request })));
        }
        Ok(())
    }

    /// Keeps the descriptors that came with `request`.
    fn keep(&self, request: FrontendReq, fds: impl IntoIterator<Item = OwnedDescriptor>) {
        let mut state = self.recording.state();
        state.fds.extend(fds.into_iter().map(|fd| (request, fd)));
    }

    fn record_with_fd(&self, call: Call, fd: Option<OwnedDescriptor>) -> BackendResult<()> {
        let request = call.request();
        self.record(call)?;
        if let Some(request) = request {
            self.keep(request, fd);
        }
        Ok(())
    }
}

/// A descriptor to hand back to the front-end: the null device.
fn fresh_fd() -> BackendResult<OwnedDescriptor> {
    let null = if cfg!(windows) { "NUL" } else { "/dev/null" };
    Ok(File::open(null)?.into())
}

use FrontendReq as Q;

impl Backend for RecordingBackend {
    fn get_features(&mut self) -> BackendResult<u64> {
        self.record(Call::GetFeatures)?;
        Ok(self.features)
    }
    fn bind_negotiation(&mut self, negotiation: SharedNegotiation) {
        self.recording.state().negotiation = Some(negotiation);
    }
    fn set_features(&mut self, features: u64) -> BackendResult<()> {
        if let Some(acked) = self.recording.acked_in_negotiation() {
            self.recording.state().acked_seen.push(acked);
        }
        self.record(Call::SetFeatures(features))
    }
    fn set_owner(&mut self) -> BackendResult<()> {
        self.record(Call::SetOwner)
    }
    fn reset_owner(&mut self) -> BackendResult<()> {
        self.record(Call::ResetOwner)
    }
    fn set_mem_table(&mut self, table: &MemTable, fds: Vec<OwnedDescriptor>) -> BackendResult<()> {
        let regions = table.regions().to_vec();
        let n = fds.len();
        self.record(Call::SetMemTable { regions, fds: n })?;
        self.keep(Q::SetMemTable, fds);
        Ok(())
    }
    fn set_log_base(&mut self, log: &LogBase, fd: OwnedDescriptor) -> BackendResult<()> {
        self.record_with_fd(Call::SetLogBase(*log), Some(fd))
    }
    fn set_log_fd(&mut self, fd: OwnedDescriptor) -> BackendResult<()> {
        self.record_with_fd(Call::SetLogFd, Some(fd))
    }
    fn set_vring_num(&mut self, index: u32, num: u32) -> BackendResult<()> {
        self.record(Call::SetVringNum { index, num })
    }
    fn set_vring_addr(&mut self, addr: &VringAddr) -> BackendResult<()> {
        self.record(Call::SetVringAddr(*addr))
    }
    fn set_vring_base(&mut self, index: u32, base: u32) -> BackendResult<()> {
        self.record(Call::SetVringBase { index, base })
    }
    fn get_vring_base(&mut self, index: u32) -> BackendResult<u32> {
        self.record(Call::GetVringBase { index })?;
        Ok(self.vring_base)
    }
    fn set_vring_kick(&mut self, index: u8, fd: Option<OwnedDescriptor>) -> BackendResult<()> {
        let call = Call::SetVringKick {
            index,
            fd: fd.is_some(),
        };
        self.record_with_fd(call, fd)
    }
    fn set_vring_call(&mut self, index: u8, fd: Option<OwnedDescriptor>) -> BackendResult<()> {
        let call = Call::SetVringCall {
            index,
            fd: fd.is_some(),
        };
        self.record_with_fd(call, fd)
    }
    fn set_vring_err(&mut self, index: u8, fd: Option<OwnedDescriptor>) -> BackendResult<()> {
        let call = Call::SetVringErr {
            index,
            fd: fd.is_some(),
        };
        self.record_with_fd(call, fd)
    }
    fn get_protocol_features(&mut self) -> BackendResult<ProtocolFeatures> {
        self.record(Call::GetProtocolFeatures)?;
        Ok(self.protocol)
    }
    fn set_protocol_features(&mut self, features: ProtocolFeatures) -> BackendResult<()> {
        self.record(Call::SetProtocolFeatures(features))
    }
    fn get_queue_num(&mut self) -> BackendResult<u64> {
        self.record(Call::GetQueueNum)?;
        self.queues.ok_or(BackendError::NotSupported)
    }
    fn set_vring_enable(&mut self, index: u32, enable: bool) -> BackendResult<()> {
        self.record(Call::SetVringEnable { index, enable })
    }
    fn send_rarp(&mut self, mac: [u8; 6]) -> BackendResult<()> {
        self.record(Call::SendRarp(mac))
    }
    fn net_set_mtu(&mut self, mtu: u64) -> BackendResult<()> {
        self.record(Call::NetSetMtu(mtu))
    }
    fn set_backend_req_fd(&mut self, client: BackendClient) -> BackendResult<()> {
        self.record(Call::SetBackendReqFd)?;
        self.recording.state().client = Some(client);
        Ok(())
    }
    fn iotlb_msg(&mut self, msg: &IotlbMsg) -> BackendResult<()> {
        self.record(Call::IotlbMsg(*msg))
    }
    fn set_vring_endian(&mut self, index: u32, big_endian: bool) -> BackendResult<()> {
        let call = Call::SetVringEndian { index, big_endian };
        self.record(call)
    }
    fn get_config(&mut self, offset: u32, buf: &mut [u8], flags: u32) -> BackendResult<()> {
        let size = buf.len();
        self.record(Call::GetConfig {
            offset,
            size,
            flags,
        })?;
        for (i, b) in buf.iter_mut().enumerate() {
            let at = (offset as usize).saturating_add(i);
            *b = self.config.get(at).copied().unwrap_or(0);
        }
        Ok(())
    }
    fn set_config(&mut self, offset: u32, data: &[u8], flags: u32) -> BackendResult<()> {
        let data = data.to_vec();
        self.record(Call::SetConfig {
            offset,
            data,
            flags,
        })
    }
    fn create_crypto_session(&mut self, session: &CryptoSession<'_>) -> BackendResult<i64> {
        let call = Call::CreateCryptoSession {
            session_id: session.session_id,
            payload: session.payload.to_vec(),
        };
        self.record(call)?;
        Ok(self.crypto_session_id)
    }
    fn close_crypto_session(&mut self, session_id: u64) -> BackendResult<()> {
        self.record(Call::CloseCryptoSession(session_id))
    }
    fn postcopy_advise(&mut self) -> BackendResult<OwnedDescriptor> {
        self.record(Call::PostcopyAdvise)?;
        fresh_fd()
    }
    fn postcopy_listen(&mut self) -> BackendResult<()> {
        self.record(Call::PostcopyListen)
    }
    fn postcopy_end(&mut self) -> BackendResult<()> {
        self.record(Call::PostcopyEnd)
    }
    fn get_inflight_fd(&mut self, info: &Inflight) -> BackendResult<(Inflight, OwnedDescriptor)> {
        self.record(Call::GetInflightFd(*info))?;
        Ok((self.inflight, fresh_fd()?))
    }
    fn set_inflight_fd(&mut self, info: &Inflight, fd: OwnedDescriptor) -> BackendResult<()> {
        self.record_with_fd(Call::SetInflightFd(*info), Some(fd))
    }
    fn gpu_set_socket(&mut self, fd: OwnedDescriptor) -> BackendResult<()> {
        self.record_with_fd(Call::GpuSetSocket, Some(fd))
    }
    fn reset_device(&mut self) -> BackendResult<()> {
        self.record(Call::ResetDevice)
    }
    fn vring_kick(&mut self, index: u32) -> BackendResult<()> {
        self.record(Call::VringKick { index })
    }
    fn get_max_mem_slots(&mut self) -> BackendResult<u64> {
        self.record(Call::GetMaxMemSlots)?;
        Ok(self.max_mem_slots)
    }
    fn add_mem_region(&mut self, region: &RegionMsg, fd: OwnedDescriptor) -> BackendResult<()> {
        self.record_with_fd(Call::AddMemReg(*region), Some(fd))
    }
    fn remove_mem_region(&mut self, region: &RegionMsg) -> BackendResult<()> {
        self.record(Call::RemMemReg(*region))
    }
    fn set_status(&mut self, status: u64) -> BackendResult<()> {
        self.record(Call::SetStatus(status))
    }
    fn get_status(&mut self) -> BackendResult<u64> {
        self.record(Call::GetStatus)?;
        Ok(self.status)
    }
    fn get_shared_object(&mut self, object: &SharedObject) -> BackendResult<OwnedDescriptor> {
        self.record(Call::GetSharedObject(*object))?;
        fresh_fd()
    }
    fn set_device_state_fd(
        &mut self,
        direction: u32,
        phase: u32,
        fd: OwnedDescriptor,
    ) -> BackendResult<Option<OwnedDescriptor>> {
        let call = Call::SetDeviceStateFd { direction, phase };
        self.record_with_fd(call, Some(fd))?;
        self.device_state_fd.then(fresh_fd).transpose()
    }
    fn check_device_state(&mut self) -> BackendResult<()> {
        self.record(Call::CheckDeviceState)
    }
    fn get_shmem_config(&mut self) -> BackendResult<ShmemConfig> {
        self.record(Call::GetShmemConfig)?;
        Ok(self.shmem)
    }
    /// Records the call and drops the descriptors and back-end channel it kept.
    fn disconnected(&mut self) -> BackendResult<()> {
        let mut state = self.recording.state();
        state.calls.push(Call::Disconnected);
        state.fds.clear();
        state.client = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_names_its_request_and_fails_when_told() {
        assert_eq!(Call::GetFeatures.request(), Some(Q::GetFeatures));
        let kick = Call::SetVringKick {
            index: 1,
            fd: false,
        };
        assert_eq!(kick.request(), Some(Q::SetVringKick));
        assert_eq!(Call::Disconnected.request(), None);
        let mut backend = RecordingBackend::new();
        backend.recording().fail_on(Q::SetVringNum);
        let e = backend.set_vring_num(0, 8).unwrap_err();
        assert!(matches!(&e, BackendError::Refused(inner)
            if inner.downcast_ref::<InjectedFailure>() == Some(&InjectedFailure { request: Q::SetVringNum })));
        assert!(backend.set_vring_base(0, 0).is_ok());
        assert_eq!(
            backend.recording().calls().len(),
            2,
            "a failed call is recorded too"
        );
    }
}
