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
    /// Whether the request has a lasting effect on ring, memory or negotiated state, so that
    /// an unreported failure leaves the front-end believing in a state the back-end is not
    /// in (the server then closes the connection).
    pub changes_state: bool,
    /// The u64 a failure is reported with, in an ack or a u64 reply ([`ACK_FAILURE`] unless
    /// declared otherwise). `None`: the u64 reply is a value (features, a count, a status
    /// byte) and has no failure form.
    ///
    /// [`ACK_FAILURE`]: crate::ACK_FAILURE
    pub failure: Option<u64>,
    /// Whether the reply may carry one descriptor (the inflight area, the userfaultfd, a
    /// shared object's dmabuf, the device-state pipe handed back).
    pub reply_fd: bool,
}

/// A request that owes `owes`, replies with `reply`, changes nothing lasting, reports a
/// failure as [`ACK_FAILURE`](crate::ACK_FAILURE) and whose reply carries no descriptor; the
/// builders below say otherwise.
pub(crate) const fn spec(
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
        changes_state: false,
        failure: Some(ACK_FAILURE),
        reply_fd: false,
    }
}

/// Value of a failed ack.
pub const ACK_FAILURE: u64 = 1;

impl RequestSpec {
    /// Declares a lasting effect on ring, memory or negotiated state.
    pub(crate) const fn changes(self) -> Self {
        RequestSpec {
            changes_state: true,
            ..self
        }
    }

    /// Declares a u64 reply that is a value, with no failure form.
    pub(crate) const fn value(self) -> Self {
        RequestSpec {
            failure: None,
            ..self
        }
    }

    /// Declares the u64 a failure is reported with.
    pub(crate) const fn failure(self, status: u64) -> Self {
        RequestSpec {
            failure: Some(status),
            ..self
        }
    }

    /// Declares a reply that may carry a descriptor.
    pub(crate) const fn reply_fd(self) -> Self {
        RequestSpec {
            reply_fd: true,
            ..self
        }
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

/// Turns the rows of [`for_each_frontend_request!`](crate::for_each_frontend_request) into
/// [`FrontendReq`] and [`FRONTEND_REQUESTS`].
macro_rules! frontend_table {
    ($($(#[$m:meta])* $v:ident $(($($body:tt)*))? = $code:literal => $spec:expr $(=> $clause:ident($($ct:tt)*))*;)*) => {
        requests!(
            /// Requests the front-end sends to the back-end (codes 1–44).
            FrontendReq, FRONTEND_REQUESTS, [$($(#[$m])* $v = $code => $spec),*]
        );
    };
}

crate::for_each_frontend_request!(frontend_table);

/// Turns the rows of [`for_each_backend_request!`](crate::for_each_backend_request) into
/// [`BackendReq`] and [`BACKEND_REQUESTS`].
macro_rules! backend_table {
    ($($(#[$m:meta])* $v:ident $(($($body:tt)*))? = $code:literal => $spec:expr $(=> $clause:ident($($ct:tt)*))*;)*) => {
        requests!(
            /// Requests the back-end sends to the front-end on its channel (codes 1–10).
            BackendReq, BACKEND_REQUESTS, [$($(#[$m])* $v = $code => $spec),*]
        );
    };
}

crate::for_each_backend_request!(backend_table);

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
    fn policy_columns_are_pinned() {
        use FrontendReq::*;
        let changes = [
            SetFeatures,
            SetProtocolFeatures,
            ResetOwner,
            ResetDevice,
            SetMemTable,
            AddMemReg,
            RemMemReg,
            SetLogBase,
            SetLogFd,
            SetVringNum,
            SetVringAddr,
            SetVringBase,
            SetVringKick,
            SetVringCall,
            SetVringErr,
            SetVringEnable,
            SetVringEndian,
            SetInflightFd,
            SetDeviceStateFd,
            PostcopyListen,
        ];
        let values = [
            GetFeatures,
            GetProtocolFeatures,
            GetQueueNum,
            GetMaxMemSlots,
            GetStatus,
        ];
        let reply_fd = [
            PostcopyAdvise,
            GetInflightFd,
            GetSharedObject,
            SetDeviceStateFd,
        ];
        for r in FrontendReq::all() {
            let s = r.spec();
            assert_eq!(s.changes_state, changes.contains(&r), "{}", s.name);
            assert_eq!(s.reply_fd, reply_fd.contains(&r), "{}", s.name);
            let failure = match r {
                _ if values.contains(&r) => None,
                SetDeviceStateFd => Some(ACK_FAILURE | wire::DEVICE_STATE_NOFD),
                _ => Some(ACK_FAILURE),
            };
            assert_eq!(s.failure, failure, "{}", s.name);
        }
        for r in BackendReq::all() {
            let s = r.spec();
            assert_eq!(
                s.reply_fd,
                r == BackendReq::SharedObjectLookup,
                "{}",
                s.name
            );
            assert!(!s.changes_state, "{}", s.name);
        }
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
