//! Every request of both directions, declared once: code, name, body shape, descriptor
//! policy, the feature that gates it, and what it owes. Generic code checks size,
//! descriptors, features and replies from these tables; nothing else repeats them.

use crate::features::{virtio, ProtocolFeatures as P};
use crate::wire;
use core::mem::size_of;

/// What a body looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyShape {
    /// No body.
    Empty,
    /// A fixed-size structure.
    Fixed(usize),
    /// A fixed-size structure followed by at most `max_payload` bytes.
    FixedPlusPayload {
        /// Size of the fixed part.
        fixed: usize,
        /// Largest payload allowed.
        max_payload: usize,
    },
    /// SET_MEM_TABLE: header plus up to 8 regions (32 bytes each, 40 with XEN_MMAP).
    MemTable,
    /// ADD_MEM_REG / REM_MEM_REG: padding plus one region (40 bytes, 48 with XEN_MMAP).
    SingleRegion,
}

impl BodyShape {
    /// The largest body of this shape.
    pub const fn max_size(&self) -> usize {
        match *self {
            BodyShape::Empty => 0,
            BodyShape::Fixed(n) => n,
            BodyShape::FixedPlusPayload { fixed, max_payload } => fixed + max_payload,
            BodyShape::MemTable => {
                size_of::<wire::MemTableHeader>()
                    + crate::MAX_MEM_TABLE_REGIONS * size_of::<wire::XenMemoryRegion>()
            }
            BodyShape::SingleRegion => size_of::<wire::XenSingleRegion>(),
        }
    }
}

/// Which descriptors a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdPolicy {
    /// None.
    None,
    /// Exactly one.
    One,
    /// None or one (one is accepted and must then be closed).
    NoneOrOne,
    /// One unless the NOFD bit (bit 8) of the u64 body is set, then none.
    OneUnlessNofd,
    /// One per memory region.
    PerRegion,
}

/// What must have been negotiated before a request may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Always allowed.
    None,
    /// The back-end offers `VHOST_USER_F_PROTOCOL_FEATURES` (GET/SET_PROTOCOL_FEATURES may
    /// come before SET_FEATURES).
    ProtocolFeaturesOffered,
    /// `VHOST_USER_F_PROTOCOL_FEATURES` negotiated (acked, or protocol features set).
    ProtocolFeaturesNegotiated,
    /// A protocol feature acked with SET_PROTOCOL_FEATURES.
    Protocol(P),
    /// A virtio feature bit acked with SET_FEATURES.
    Virtio(u32),
}

/// What a request owes its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owes {
    /// A u64 ack, only when REPLY_ACK is negotiated and NEED_REPLY is set.
    AckWhenAsked,
    /// A reply message, always.
    Reply,
    /// A reply message while postcopy is listening, else an ack when asked.
    ReplyInPostcopy,
}

/// The shape of a reply, and how a failure is reported in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyShape {
    /// A u64 (features, counts, status, acks). Failure form: a non-zero value where the
    /// value is a status, otherwise none.
    U64,
    /// A vring state (GET_VRING_BASE).
    VringState,
    /// A config header plus payload; a zero-size payload means failure.
    Config,
    /// A crypto session; a negative session id means failure.
    CryptoSession,
    /// An inflight description plus one fd; `mmap_size` 0 and no fd means "none".
    Inflight,
    /// The shared memory configuration.
    ShmemConfig,
    /// The memory table (postcopy).
    MemTable,
    /// One memory region (postcopy ADD_MEM_REG).
    SingleRegion,
    /// No body, one fd (POSTCOPY_ADVISE's userfaultfd).
    EmptyWithFd,
}

/// One request's declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestSpec {
    /// The specification's name, without the `VHOST_USER_` prefix.
    pub name: &'static str,
    /// Body shape of the request.
    pub body: BodyShape,
    /// Descriptors the request carries.
    pub fds: FdPolicy,
    /// What must be negotiated first.
    pub gate: Gate,
    /// What it owes.
    pub owes: Owes,
    /// Shape of its reply when it owes one.
    pub reply: ReplyShape,
}

const fn spec(
    name: &'static str,
    body: BodyShape,
    fds: FdPolicy,
    gate: Gate,
    owes: Owes,
    reply: ReplyShape,
) -> RequestSpec {
    RequestSpec {
        name,
        body,
        fds,
        gate,
        owes,
        reply,
    }
}

const fn fixed<T>() -> BodyShape {
    BodyShape::Fixed(size_of::<T>())
}

macro_rules! requests {
    ($(#[$m:meta])* $enum:ident, $table:ident, [$($(#[$vm:meta])* $variant:ident = $code:literal => $spec:expr),* $(,)?]) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u32)]
        #[non_exhaustive]
        pub enum $enum { $($(#[$vm])* $variant = $code),* }

        /// The declaration of every request of this direction, in code order.
        pub static $table: &[($enum, RequestSpec)] = &[$(($enum::$variant, $spec)),*];

        impl $enum {
            /// The request for a wire code, if known.
            pub fn from_code(code: u32) -> Option<Self> {
                match code { $($code => Some($enum::$variant),)* _ => None }
            }

            /// This request's declaration.
            pub fn spec(self) -> &'static RequestSpec {
                // Codes are dense from 1, in table order.
                &$table[self as usize - 1].1
            }

            /// The specification's name.
            pub fn name(self) -> &'static str {
                self.spec().name
            }

            /// Every request of this direction.
            pub fn all() -> impl Iterator<Item = Self> {
                $table.iter().map(|(r, _)| *r)
            }
        }
    };
}

use BodyShape::Empty;
use FdPolicy as F;
use Owes::*;
use ReplyShape as R;

requests!(
    /// Requests the front-end sends to the back-end (codes 1–44).
    FrontendReq, FRONTEND_REQUESTS, [
    /// Read the back-end's virtio features.
    GetFeatures = 1 => spec("GET_FEATURES", Empty, F::None, Gate::None, Reply, R::U64),
    /// Ack virtio features.
    SetFeatures = 2 => spec("SET_FEATURES", fixed::<wire::U64Body>(), F::None, Gate::None, AckWhenAsked, R::U64),
    /// Claim the session.
    SetOwner = 3 => spec("SET_OWNER", Empty, F::None, Gate::None, AckWhenAsked, R::U64),
    /// Deprecated: give up the session.
    ResetOwner = 4 => spec("RESET_OWNER", Empty, F::None, Gate::None, AckWhenAsked, R::U64),
    /// Replace the whole memory table.
    SetMemTable = 5 => spec("SET_MEM_TABLE", BodyShape::MemTable, F::PerRegion, Gate::None, ReplyInPostcopy, R::MemTable),
    /// Set the dirty log area.
    SetLogBase = 6 => spec("SET_LOG_BASE", fixed::<wire::LogBase>(), F::One, Gate::Protocol(P::LOG_SHMFD), Reply, R::U64),
    /// Set the eventfd signalled after log writes.
    SetLogFd = 7 => spec("SET_LOG_FD", Empty, F::One, Gate::None, AckWhenAsked, R::U64),
    /// Set a vring's size.
    SetVringNum = 8 => spec("SET_VRING_NUM", fixed::<wire::VringState>(), F::None, Gate::None, AckWhenAsked, R::U64),
    /// Set a vring's addresses.
    SetVringAddr = 9 => spec("SET_VRING_ADDR", fixed::<wire::VringAddr>(), F::None, Gate::None, AckWhenAsked, R::U64),
    /// Set a vring's next available index.
    SetVringBase = 10 => spec("SET_VRING_BASE", fixed::<wire::VringState>(), F::None, Gate::None, AckWhenAsked, R::U64),
    /// Stop a vring and read its next available index.
    GetVringBase = 11 => spec("GET_VRING_BASE", fixed::<wire::VringState>(), F::None, Gate::None, Reply, R::VringState),
    /// Set a vring's kick eventfd (starts the ring).
    SetVringKick = 12 => spec("SET_VRING_KICK", fixed::<wire::U64Body>(), F::OneUnlessNofd, Gate::None, AckWhenAsked, R::U64),
    /// Set a vring's call eventfd.
    SetVringCall = 13 => spec("SET_VRING_CALL", fixed::<wire::U64Body>(), F::OneUnlessNofd, Gate::None, AckWhenAsked, R::U64),
    /// Set a vring's error eventfd.
    SetVringErr = 14 => spec("SET_VRING_ERR", fixed::<wire::U64Body>(), F::OneUnlessNofd, Gate::None, AckWhenAsked, R::U64),
    /// Read the back-end's protocol features.
    GetProtocolFeatures = 15 => spec("GET_PROTOCOL_FEATURES", Empty, F::None, Gate::ProtocolFeaturesOffered, Reply, R::U64),
    /// Ack protocol features.
    SetProtocolFeatures = 16 => spec("SET_PROTOCOL_FEATURES", fixed::<wire::U64Body>(), F::None, Gate::ProtocolFeaturesOffered, AckWhenAsked, R::U64),
    /// Read the number of queues.
    GetQueueNum = 17 => spec("GET_QUEUE_NUM", Empty, F::None, Gate::Protocol(P::MQ), Reply, R::U64),
    /// Enable or disable a vring.
    SetVringEnable = 18 => spec("SET_VRING_ENABLE", fixed::<wire::VringState>(), F::None, Gate::ProtocolFeaturesNegotiated, AckWhenAsked, R::U64),
    /// Send a RARP for a MAC address (after migration).
    SendRarp = 19 => spec("SEND_RARP", fixed::<wire::U64Body>(), F::None, Gate::Protocol(P::RARP), AckWhenAsked, R::U64),
    /// Set the network MTU.
    NetSetMtu = 20 => spec("NET_SET_MTU", fixed::<wire::U64Body>(), F::None, Gate::Protocol(P::NET_MTU), AckWhenAsked, R::U64),
    /// Hand over the back-end channel socket.
    SetBackendReqFd = 21 => spec("SET_BACKEND_REQ_FD", Empty, F::One, Gate::Protocol(P::BACKEND_REQ), AckWhenAsked, R::U64),
    /// IOTLB update or invalidation. Always answered with a u64 (0 success): the front-end
    /// sets NEED_REPLY on it and waits, REPLY_ACK or not.
    IotlbMsg = 22 => spec("IOTLB_MSG", fixed::<wire::IotlbMsg>(), F::None, Gate::Virtio(virtio::ACCESS_PLATFORM), Reply, R::U64),
    /// Set a vring's endianness (legacy devices).
    SetVringEndian = 23 => spec("SET_VRING_ENDIAN", fixed::<wire::VringState>(), F::None, Gate::Protocol(P::CROSS_ENDIAN), AckWhenAsked, R::U64),
    /// Read device configuration space.
    GetConfig = 24 => spec("GET_CONFIG", BodyShape::FixedPlusPayload { fixed: 12, max_payload: wire::MAX_CONFIG_SIZE }, F::None, Gate::Protocol(P::CONFIG), Reply, R::Config),
    /// Write device configuration space.
    SetConfig = 25 => spec("SET_CONFIG", BodyShape::FixedPlusPayload { fixed: 12, max_payload: wire::MAX_CONFIG_SIZE }, F::None, Gate::Protocol(P::CONFIG), AckWhenAsked, R::U64),
    /// Create a crypto session.
    CreateCryptoSession = 26 => spec("CREATE_CRYPTO_SESSION", BodyShape::FixedPlusPayload { fixed: 8, max_payload: wire::MAX_CRYPTO_PAYLOAD }, F::None, Gate::Protocol(P::CRYPTO_SESSION), Reply, R::CryptoSession),
    /// Close a crypto session.
    CloseCryptoSession = 27 => spec("CLOSE_CRYPTO_SESSION", fixed::<wire::U64Body>(), F::None, Gate::Protocol(P::CRYPTO_SESSION), AckWhenAsked, R::U64),
    /// Postcopy: ask for a userfaultfd.
    PostcopyAdvise = 28 => spec("POSTCOPY_ADVISE", Empty, F::None, Gate::Protocol(P::PAGEFAULT), Reply, R::EmptyWithFd),
    /// Postcopy: start listening for faults.
    PostcopyListen = 29 => spec("POSTCOPY_LISTEN", Empty, F::None, Gate::Protocol(P::PAGEFAULT), AckWhenAsked, R::U64),
    /// Postcopy: migration finished.
    PostcopyEnd = 30 => spec("POSTCOPY_END", Empty, F::None, Gate::Protocol(P::PAGEFAULT), Reply, R::U64),
    /// Ask for an inflight area.
    GetInflightFd = 31 => spec("GET_INFLIGHT_FD", fixed::<wire::Inflight>(), F::None, Gate::Protocol(P::INFLIGHT_SHMFD), Reply, R::Inflight),
    /// Hand back the inflight area.
    SetInflightFd = 32 => spec("SET_INFLIGHT_FD", fixed::<wire::Inflight>(), F::One, Gate::Protocol(P::INFLIGHT_SHMFD), AckWhenAsked, R::U64),
    /// Hand over a vhost-user-gpu socket.
    GpuSetSocket = 33 => spec("GPU_SET_SOCKET", Empty, F::One, Gate::None, AckWhenAsked, R::U64),
    /// Reset the device.
    ResetDevice = 34 => spec("RESET_DEVICE", Empty, F::None, Gate::Protocol(P::RESET_DEVICE), AckWhenAsked, R::U64),
    /// In-band kick.
    VringKick = 35 => spec("VRING_KICK", fixed::<wire::VringState>(), F::None, Gate::Protocol(P::INBAND_NOTIFICATIONS), AckWhenAsked, R::U64),
    /// Read how many memory slots the back-end supports.
    GetMaxMemSlots = 36 => spec("GET_MAX_MEM_SLOTS", Empty, F::None, Gate::Protocol(P::CONFIGURE_MEM_SLOTS), Reply, R::U64),
    /// Add one memory region.
    AddMemReg = 37 => spec("ADD_MEM_REG", BodyShape::SingleRegion, F::One, Gate::Protocol(P::CONFIGURE_MEM_SLOTS), ReplyInPostcopy, R::SingleRegion),
    /// Remove one memory region.
    RemMemReg = 38 => spec("REM_MEM_REG", BodyShape::SingleRegion, F::NoneOrOne, Gate::Protocol(P::CONFIGURE_MEM_SLOTS), AckWhenAsked, R::U64),
    /// Set the virtio device status.
    SetStatus = 39 => spec("SET_STATUS", fixed::<wire::U64Body>(), F::None, Gate::Protocol(P::STATUS), AckWhenAsked, R::U64),
    /// Read the virtio device status.
    GetStatus = 40 => spec("GET_STATUS", Empty, F::None, Gate::Protocol(P::STATUS), Reply, R::U64),
    /// Look up a shared object; the reply carries its dmabuf fd.
    GetSharedObject = 41 => spec("GET_SHARED_OBJECT", fixed::<wire::SharedObject>(), F::None, Gate::Protocol(P::SHARED_OBJECT), Reply, R::U64),
    /// Start a device-state transfer through a pipe.
    SetDeviceStateFd = 42 => spec("SET_DEVICE_STATE_FD", fixed::<wire::DeviceStateTransfer>(), F::One, Gate::Protocol(P::DEVICE_STATE), Reply, R::U64),
    /// Ask whether the device-state transfer succeeded.
    CheckDeviceState = 43 => spec("CHECK_DEVICE_STATE", Empty, F::None, Gate::Protocol(P::DEVICE_STATE), Reply, R::U64),
    /// Read the shared memory regions' configuration.
    GetShmemConfig = 44 => spec("GET_SHMEM_CONFIG", Empty, F::None, Gate::Protocol(P::SHMEM), Reply, R::ShmemConfig),
]);

requests!(
    /// Requests the back-end sends to the front-end on its channel (codes 1–10).
    BackendReq, BACKEND_REQUESTS, [
    /// IOTLB miss or access failure.
    IotlbMsg = 1 => spec("BACKEND_IOTLB_MSG", fixed::<wire::IotlbMsg>(), F::None, Gate::Virtio(virtio::ACCESS_PLATFORM), AckWhenAsked, R::U64),
    /// The device configuration changed.
    ConfigChangeMsg = 2 => spec("BACKEND_CONFIG_CHANGE_MSG", Empty, F::None, Gate::Protocol(P::CONFIG), AckWhenAsked, R::U64),
    /// Map (or unmap, with NOFD) a host notifier area for a vring.
    VringHostNotifierMsg = 3 => spec("BACKEND_VRING_HOST_NOTIFIER_MSG", fixed::<wire::VringArea>(), F::OneUnlessNofd, Gate::Protocol(P::HOST_NOTIFIER), AckWhenAsked, R::U64),
    /// In-band call.
    VringCall = 4 => spec("BACKEND_VRING_CALL", fixed::<wire::VringState>(), F::None, Gate::Protocol(P::INBAND_NOTIFICATIONS), AckWhenAsked, R::U64),
    /// In-band error.
    VringErr = 5 => spec("BACKEND_VRING_ERR", fixed::<wire::VringState>(), F::None, Gate::Protocol(P::INBAND_NOTIFICATIONS), AckWhenAsked, R::U64),
    /// Add a shared object.
    SharedObjectAdd = 6 => spec("BACKEND_SHARED_OBJECT_ADD", fixed::<wire::SharedObject>(), F::None, Gate::Protocol(P::SHARED_OBJECT), AckWhenAsked, R::U64),
    /// Remove a shared object.
    SharedObjectRemove = 7 => spec("BACKEND_SHARED_OBJECT_REMOVE", fixed::<wire::SharedObject>(), F::None, Gate::Protocol(P::SHARED_OBJECT), AckWhenAsked, R::U64),
    /// Look up a shared object; the reply carries a u64 status and its fd.
    SharedObjectLookup = 8 => spec("BACKEND_SHARED_OBJECT_LOOKUP", fixed::<wire::SharedObject>(), F::None, Gate::Protocol(P::SHARED_OBJECT), Reply, R::U64),
    /// Map a file range into a shared memory region.
    ShmemMap = 9 => spec("BACKEND_SHMEM_MAP", fixed::<wire::ShmemMap>(), F::One, Gate::Protocol(P::SHMEM), AckWhenAsked, R::U64),
    /// Unmap a range of a shared memory region.
    ShmemUnmap = 10 => spec("BACKEND_SHMEM_UNMAP", fixed::<wire::ShmemMap>(), F::None, Gate::Protocol(P::SHMEM), AckWhenAsked, R::U64),
]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_dense_and_in_code_order() {
        assert_eq!(FRONTEND_REQUESTS.len(), 44);
        assert_eq!(BACKEND_REQUESTS.len(), 10);
        for (i, (r, s)) in FRONTEND_REQUESTS.iter().enumerate() {
            assert_eq!(*r as usize, i + 1, "{}", s.name);
            assert_eq!(FrontendReq::from_code(i as u32 + 1), Some(*r));
            assert!(s.body.max_size() <= crate::MAX_BODY_SIZE, "{}", s.name);
        }
        for (i, (r, s)) in BACKEND_REQUESTS.iter().enumerate() {
            assert_eq!(*r as usize, i + 1, "{}", s.name);
            assert_eq!(BackendReq::from_code(i as u32 + 1), Some(*r));
        }
        assert_eq!(FrontendReq::from_code(0), None);
        assert_eq!(FrontendReq::from_code(45), None);
        assert_eq!(BackendReq::from_code(11), None);
    }

    #[test]
    fn spec_codes_are_pinned() {
        use FrontendReq::*;
        let pins = [
            (GetFeatures, 1, "GET_FEATURES"),
            (SetMemTable, 5, "SET_MEM_TABLE"),
            (GetVringBase, 11, "GET_VRING_BASE"),
            (SetVringKick, 12, "SET_VRING_KICK"),
            (GetProtocolFeatures, 15, "GET_PROTOCOL_FEATURES"),
            (SetVringEnable, 18, "SET_VRING_ENABLE"),
            (SetBackendReqFd, 21, "SET_BACKEND_REQ_FD"),
            (GetConfig, 24, "GET_CONFIG"),
            (GetInflightFd, 31, "GET_INFLIGHT_FD"),
            (ResetDevice, 34, "RESET_DEVICE"),
            (GetMaxMemSlots, 36, "GET_MAX_MEM_SLOTS"),
            (AddMemReg, 37, "ADD_MEM_REG"),
            (GetStatus, 40, "GET_STATUS"),
            (SetDeviceStateFd, 42, "SET_DEVICE_STATE_FD"),
            (GetShmemConfig, 44, "GET_SHMEM_CONFIG"),
        ];
        for (r, code, name) in pins {
            assert_eq!(r as u32, code);
            assert_eq!(r.name(), name);
        }
        assert_eq!(BackendReq::ConfigChangeMsg as u32, 2);
        assert_eq!(BackendReq::SharedObjectLookup as u32, 8);
        assert_eq!(BackendReq::ShmemUnmap as u32, 10);
    }
}
