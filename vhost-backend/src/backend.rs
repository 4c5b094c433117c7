//! The [`Backend`] trait: one method per front-end request.
//!
//! Arguments are typed values from `vhost-proto`, already decoded, validated and gated by the
//! server; descriptors arrive as owned values ([`OwnedDescriptor`]: an fd on Unix, a handle
//! on Windows). Optional requests have defaults that answer "not
//! supported", which the server turns into the specification's failure form (a non-zero ack,
//! a zero-size config, no descriptor, or a closed connection where no failure form exists).
//!
//! The trait is declared once through a macro that also derives the wrapper impls
//! (`Box<T>`, `Mutex<T>`, `Arc<Mutex<T>>`), so no method is forwarded by hand. Each method
//! is tagged with its request (`[SetVringNum] fn set_vring_num(..)`), and the macro checks
//! with an exhaustive match over [`FrontendRequest`] that every request declared in
//! `vhost-proto` has exactly one method.

use std::sync::{Arc, Mutex, PoisonError};

use vhost_proto::{
    CryptoSession, FrontendRequest, Inflight, IotlbMsg, LogBase, MemTable, ProtocolFeatures,
    RegionMsg, SharedObject, ShmemConfig, VringAddr,
};

use vhost_transport::OwnedDescriptor;

use crate::backend_client::{BackendClient, SharedNegotiation};

/// Why a [`Backend`] method failed.
///
/// The variants fall in four kinds ([`BackendError::fault`]), kept apart up to the server's
/// error policy, which decides on the kind alone:
///
/// | kind | variants | what the server does |
/// | --- | --- | --- |
/// | [`Fault::Unsupported`] | [`NotSupported`](BackendError::NotSupported) | the failure form (ack 1, ...), keep serving |
/// | [`Fault::Peer`]: the front-end asked for something this back-end refuses | [`Refused`](BackendError::Refused), [`NoSuchVring`](BackendError::NoSuchVring) | the failure form, logged as the peer's fault, keep serving |
/// | [`Fault::Local`]: this side failed (system call, device, a defect) | [`Io`](BackendError::Io), [`Device`](BackendError::Device), [`Internal`](BackendError::Internal) | the failure form, logged as a local error, keep serving |
/// | [`Fault::Broken`] | [`Broken`](BackendError::Broken) | close the connection |
///
/// Where a failure owes nothing and the request changes ring or memory state, the server
/// closes the connection whatever the kind (see the server's policy module).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// The back-end does not implement this request.
    #[error("not supported by this back-end")]
    NotSupported,
    /// The request is valid protocol-wise but this back-end refuses it, for its arguments or
    /// for the state it came in (a region past the end of its file, a ring that is started,
    /// ...): the front-end's fault.
    #[error("refused: {0}")]
    Refused(Box<dyn std::error::Error + Send + Sync>),
    /// The request names a vring the back-end does not have: the front-end's fault.
    #[error("no vring {index}")]
    NoSuchVring {
        /// The index asked for.
        index: u32,
    },
    /// A system call failed: a local fault.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A device-specific failure: a local fault.
    #[error("device error: {0}")]
    Device(Box<dyn std::error::Error + Send + Sync>),
    /// The back-end found its own state inconsistent (a defect, not the front-end's doing).
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The back-end can no longer keep its state in step with the front-end's (a ring
    /// stopped without its outstanding requests, ...): the server closes the connection
    /// whatever the request owes, and the front-end's reconnection sets everything up again.
    #[error("the back-end cannot go on with this front-end: {0}")]
    Broken(Box<dyn std::error::Error + Send + Sync>),
}

/// Whose fault a [`BackendError`] is, which is all the server's error policy looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The request is not implemented.
    Unsupported,
    /// The front-end's request was refused.
    Peer,
    /// This side failed.
    Local,
    /// The two sides no longer agree: the connection must close.
    Broken,
}

impl BackendError {
    /// Whose fault this is.
    pub fn fault(&self) -> Fault {
        match self {
            BackendError::NotSupported => Fault::Unsupported,
            BackendError::Refused(_) | BackendError::NoSuchVring { .. } => Fault::Peer,
            BackendError::Io(_) | BackendError::Device(_) | BackendError::Internal(_) => {
                Fault::Local
            }
            BackendError::Broken(_) => Fault::Broken,
        }
    }
}

/// Result of a [`Backend`] method.
pub type BackendResult<T> = Result<T, BackendError>;

/// Declares [`Backend`] from its rows: `[Request] fn method(...) -> T (= { default })?;`.
///
/// What the `[Request]` tags prove, and what they do not:
/// - every front-end request is tagged on some row: the tags make the arms of one `match`
///   over [`FrontendRequest`], which the compiler requires to be exhaustive;
/// - no request is tagged twice: a repeated arm is an unreachable pattern, denied on that
///   `match` (`#[deny(unreachable_patterns)]`, an error even in a plain build);
/// - the tag is not tied to its method by the compiler (a row could carry the wrong tag):
///   the unit test `tagged_methods_are_named_after_their_request` checks each tag against
///   its method's name (the snake case of the request, with the listed exceptions).
///
/// Rows without a tag are methods that are not requests.
macro_rules! declare_backend {
    ($($(#[$m:meta])* $([$req:ident])? fn $name:ident(&mut self $(, $arg:ident : $ty:ty)* $(,)?) -> $ret:ty $(= $default:block)? ;)*) => {
        /// Every front-end request is tagged on a row: one arm per tag, exhaustive (checked
        /// by the compiler) and without repeats (an unreachable pattern, denied here).
        #[allow(dead_code)]
        #[deny(unreachable_patterns)]
        fn every_request_has_a_method(request: &FrontendRequest<'_>) {
            match request {
                $($(FrontendRequest::$req { .. } => {})?)*
            }
        }

        /// Each tag with the method of its row, for the test that the two agree.
        #[cfg(test)]
        const TAGGED_METHODS: &[(&str, &str)] = &[$($((stringify!($req), stringify!($name)),)?)*];

        /// A vhost-user back-end: one method per front-end request (codes 1–44).
        ///
        /// Methods without a default must be implemented; the others answer
        /// [`BackendError::NotSupported`] unless overridden (or, where noted, accept and
        /// ignore the request as the specification allows).
        pub trait Backend: Send {
            $(declare_backend!(@method $(#[$m])* fn $name(&mut self $(, $arg: $ty)*) -> $ret $(= $default)?);)*

            /// Not a request: [`BackendServer::new`](crate::BackendServer::new) hands the
            /// back-end the session's negotiation, the one record of what is acked. The server
            /// updates it before it dispatches a request that changes it (and restores it if
            /// the back-end fails the request), so a back-end reads acked features there
            /// instead of keeping a copy. Ignored by default.
            #[allow(unused_variables)]
            fn bind_negotiation(&mut self, negotiation: SharedNegotiation) {}
        }

        impl<T: Backend + ?Sized> Backend for Box<T> {
            fn bind_negotiation(&mut self, negotiation: SharedNegotiation) {
                (**self).bind_negotiation(negotiation)
            }

            $(fn $name(&mut self $(, $arg: $ty)*) -> $ret { (**self).$name($($arg),*) })*
        }

        impl<T: Backend> Backend for Mutex<T> {
            fn bind_negotiation(&mut self, negotiation: SharedNegotiation) {
                self.get_mut().unwrap_or_else(PoisonError::into_inner).bind_negotiation(negotiation)
            }

            $(fn $name(&mut self $(, $arg: $ty)*) -> $ret {
                self.get_mut().unwrap_or_else(PoisonError::into_inner).$name($($arg),*)
            })*
        }

        impl<T: Backend> Backend for Arc<Mutex<T>> {
            fn bind_negotiation(&mut self, negotiation: SharedNegotiation) {
                self.lock().unwrap_or_else(PoisonError::into_inner).bind_negotiation(negotiation)
            }

            $(fn $name(&mut self $(, $arg: $ty)*) -> $ret {
                self.lock().unwrap_or_else(PoisonError::into_inner).$name($($arg),*)
            })*
        }
    };
    (@method $(#[$m:meta])* fn $name:ident(&mut self $(, $arg:ident : $ty:ty)*) -> $ret:ty = $default:block) => {
        $(#[$m])*
        #[allow(unused_variables)]
        fn $name(&mut self $(, $arg: $ty)*) -> $ret $default
    };
    (@method $(#[$m:meta])* fn $name:ident(&mut self $(, $arg:ident : $ty:ty)*) -> $ret:ty) => {
        $(#[$m])*
        fn $name(&mut self $(, $arg: $ty)*) -> $ret;
    };
}

declare_backend! {
    /// GET_FEATURES: the virtio features offered (include bit 30 to speak protocol features).
    [GetFeatures] fn get_features(&mut self) -> BackendResult<u64>;
    /// SET_FEATURES: the features the driver acked (a subset of the offer; checked).
    [SetFeatures] fn set_features(&mut self, features: u64) -> BackendResult<()>;
    /// SET_OWNER: a front-end claims the session. Accepted by default.
    [SetOwner] fn set_owner(&mut self) -> BackendResult<()> = { Ok(()) };
    /// RESET_OWNER (deprecated): accepted and ignored by default, as the spec allows.
    [ResetOwner] fn reset_owner(&mut self) -> BackendResult<()> = { Ok(()) };
    /// SET_MEM_TABLE: replace the memory table; one descriptor per region, in order.
    [SetMemTable] fn set_mem_table(&mut self, table: &MemTable, fds: Vec<OwnedDescriptor>) -> BackendResult<()>;
    /// SET_LOG_BASE: the dirty-log area (LOG_SHMFD).
    [SetLogBase] fn set_log_base(&mut self, log: &LogBase, fd: OwnedDescriptor) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// SET_LOG_FD: the eventfd to signal after logging.
    [SetLogFd] fn set_log_fd(&mut self, fd: OwnedDescriptor) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// SET_VRING_NUM: the ring's size.
    [SetVringNum] fn set_vring_num(&mut self, index: u32, num: u32) -> BackendResult<()>;
    /// SET_VRING_ADDR: the ring's addresses (front-end virtual unless GPA_ADDRESSES).
    [SetVringAddr] fn set_vring_addr(&mut self, addr: &VringAddr) -> BackendResult<()>;
    /// SET_VRING_BASE: the next available index (packed rings: the spec's bit encoding).
    [SetVringBase] fn set_vring_base(&mut self, index: u32, base: u32) -> BackendResult<()>;
    /// GET_VRING_BASE: stop the ring and return its next available index.
    [GetVringBase] fn get_vring_base(&mut self, index: u32) -> BackendResult<u32>;
    /// SET_VRING_KICK: the kick eventfd (`None`: NOFD, poll the ring). Starts the ring.
    [SetVringKick] fn set_vring_kick(&mut self, index: u8, fd: Option<OwnedDescriptor>) -> BackendResult<()>;
    /// SET_VRING_CALL: the call eventfd (`None`: NOFD, do not signal).
    [SetVringCall] fn set_vring_call(&mut self, index: u8, fd: Option<OwnedDescriptor>) -> BackendResult<()>;
    /// SET_VRING_ERR: the error eventfd (`None`: NOFD). Accepted and kept by nobody by default.
    [SetVringErr] fn set_vring_err(&mut self, index: u8, fd: Option<OwnedDescriptor>) -> BackendResult<()> = { Ok(()) };
    /// GET_PROTOCOL_FEATURES: the protocol features offered.
    [GetProtocolFeatures] fn get_protocol_features(&mut self) -> BackendResult<ProtocolFeatures>;
    /// SET_PROTOCOL_FEATURES: the protocol features acked (a subset of the offer; checked).
    [SetProtocolFeatures] fn set_protocol_features(&mut self, features: ProtocolFeatures) -> BackendResult<()>;
    /// GET_QUEUE_NUM (MQ): the number of queues.
    [GetQueueNum] fn get_queue_num(&mut self) -> BackendResult<u64> = { Err(BackendError::NotSupported) };
    /// SET_VRING_ENABLE: enable or disable a ring.
    [SetVringEnable] fn set_vring_enable(&mut self, index: u32, enable: bool) -> BackendResult<()>;
    /// SEND_RARP (RARP): announce a MAC address after migration.
    [SendRarp] fn send_rarp(&mut self, mac: [u8; 6]) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// NET_SET_MTU (NET_MTU).
    [NetSetMtu] fn net_set_mtu(&mut self, mtu: u64) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// SET_BACKEND_REQ_FD (BACKEND_REQ): the back-end → front-end channel.
    [SetBackendReqFd] fn set_backend_req_fd(&mut self, client: BackendClient) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// IOTLB_MSG (ACCESS_PLATFORM): an IOTLB update or invalidation.
    [IotlbMsg] fn iotlb_msg(&mut self, msg: &IotlbMsg) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// SET_VRING_ENDIAN (CROSS_ENDIAN): `true` for big-endian.
    [SetVringEndian] fn set_vring_endian(&mut self, index: u32, big_endian: bool) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// GET_CONFIG (CONFIG): fill `buf` from the configuration space at `offset`.
    [GetConfig] fn get_config(&mut self, offset: u32, buf: &mut [u8], flags: u32) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// SET_CONFIG (CONFIG): write `data` to the configuration space at `offset`.
    [SetConfig] fn set_config(&mut self, offset: u32, data: &[u8], flags: u32) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// CREATE_CRYPTO_SESSION (CRYPTO_SESSION): returns the new session id.
    [CreateCryptoSession] fn create_crypto_session(&mut self, session: &CryptoSession<'_>) -> BackendResult<i64> = { Err(BackendError::NotSupported) };
    /// CLOSE_CRYPTO_SESSION (CRYPTO_SESSION).
    [CloseCryptoSession] fn close_crypto_session(&mut self, session_id: u64) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// POSTCOPY_ADVISE (PAGEFAULT): returns a userfaultfd.
    [PostcopyAdvise] fn postcopy_advise(&mut self) -> BackendResult<OwnedDescriptor> = { Err(BackendError::NotSupported) };
    /// POSTCOPY_LISTEN (PAGEFAULT).
    [PostcopyListen] fn postcopy_listen(&mut self) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// POSTCOPY_END (PAGEFAULT).
    [PostcopyEnd] fn postcopy_end(&mut self) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// GET_INFLIGHT_FD (INFLIGHT_SHMFD): allocate the inflight area.
    [GetInflightFd] fn get_inflight_fd(&mut self, info: &Inflight) -> BackendResult<(Inflight, OwnedDescriptor)> = { Err(BackendError::NotSupported) };
    /// SET_INFLIGHT_FD (INFLIGHT_SHMFD): the inflight area handed back.
    [SetInflightFd] fn set_inflight_fd(&mut self, info: &Inflight, fd: OwnedDescriptor) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// GPU_SET_SOCKET: the vhost-user-gpu socket.
    [GpuSetSocket] fn gpu_set_socket(&mut self, fd: OwnedDescriptor) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// RESET_DEVICE (RESET_DEVICE): disable all rings and reset device state.
    [ResetDevice] fn reset_device(&mut self) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// VRING_KICK (INBAND_NOTIFICATIONS): an in-band kick.
    [VringKick] fn vring_kick(&mut self, index: u32) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// GET_MAX_MEM_SLOTS (CONFIGURE_MEM_SLOTS).
    [GetMaxMemSlots] fn get_max_mem_slots(&mut self) -> BackendResult<u64> = { Err(BackendError::NotSupported) };
    /// ADD_MEM_REG (CONFIGURE_MEM_SLOTS).
    [AddMemReg] fn add_mem_region(&mut self, region: &RegionMsg, fd: OwnedDescriptor) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// REM_MEM_REG (CONFIGURE_MEM_SLOTS): regions are matched on address and size.
    [RemMemReg] fn remove_mem_region(&mut self, region: &RegionMsg) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// SET_STATUS (STATUS): the virtio device status byte.
    [SetStatus] fn set_status(&mut self, status: u64) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// GET_STATUS (STATUS).
    [GetStatus] fn get_status(&mut self) -> BackendResult<u64> = { Err(BackendError::NotSupported) };
    /// GET_SHARED_OBJECT (SHARED_OBJECT): the dmabuf fd of an object.
    [GetSharedObject] fn get_shared_object(&mut self, object: &SharedObject) -> BackendResult<OwnedDescriptor> = { Err(BackendError::NotSupported) };
    /// SET_DEVICE_STATE_FD (DEVICE_STATE): start a state transfer; optionally return an fd
    /// the front-end should use instead.
    [SetDeviceStateFd] fn set_device_state_fd(&mut self, direction: u32, phase: u32, fd: OwnedDescriptor) -> BackendResult<Option<OwnedDescriptor>> = { Err(BackendError::NotSupported) };
    /// CHECK_DEVICE_STATE (DEVICE_STATE): did the transfer succeed?
    [CheckDeviceState] fn check_device_state(&mut self) -> BackendResult<()> = { Err(BackendError::NotSupported) };
    /// GET_SHMEM_CONFIG (SHMEM).
    [GetShmemConfig] fn get_shmem_config(&mut self) -> BackendResult<ShmemConfig> = { Err(BackendError::NotSupported) };
    /// Not a request: the front-end went away. Stop the rings, drop mappings and
    /// descriptors, and return to the just-started state for the next front-end.
    fn disconnected(&mut self) -> BackendResult<()> = { Ok(()) };
}

#[cfg(test)]
mod tag_tests {
    use super::TAGGED_METHODS;

    /// `SetVringNum` → `set_vring_num`.
    fn snake_case(camel: &str) -> String {
        let mut out = String::new();
        for (i, c) in camel.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    }

    #[test]
    fn tagged_methods_are_named_after_their_request() {
        // Methods named more fully than the specification's abbreviation.
        const EXCEPTIONS: [(&str, &str); 2] = [
            ("AddMemReg", "add_mem_region"),
            ("RemMemReg", "remove_mem_region"),
        ];
        for &(tag, method) in TAGGED_METHODS {
            assert!(
                snake_case(tag) == method || EXCEPTIONS.contains(&(tag, method)),
                "[{tag}] tags fn {method}"
            );
        }
        assert_eq!(
            TAGGED_METHODS.len(),
            vhost_proto::FrontendReq::all().count()
        );
        assert_eq!(snake_case("SetBackendReqFd"), "set_backend_req_fd");
    }
}
