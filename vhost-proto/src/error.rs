//! Errors of the protocol layer: every variant names the message and the field at fault.

use crate::features::ProtocolFeatures;

/// Which message kind an error is about, as printed in errors.
///
/// Front-end and back-end codes overlap numerically, so the direction is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A front-end → back-end request.
    Frontend(crate::FrontendReq),
    /// A back-end → front-end request.
    Backend(crate::BackendReq),
}

impl MessageKind {
    /// The request's declaration.
    pub fn spec(&self) -> &'static crate::RequestSpec {
        match self {
            MessageKind::Frontend(r) => r.spec(),
            MessageKind::Backend(r) => r.spec(),
        }
    }
}

impl core::fmt::Display for MessageKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            MessageKind::Frontend(r) => write!(f, "{}", r.name()),
            MessageKind::Backend(r) => write!(f, "{}", r.name()),
        }
    }
}

/// A requirement a request was sent without.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// A vhost-user protocol feature that must have been acked with SET_PROTOCOL_FEATURES.
    Protocol(ProtocolFeatures),
    /// `VHOST_USER_F_PROTOCOL_FEATURES` (virtio bit 30) offered by the back-end.
    ProtocolFeaturesOffered,
    /// `VHOST_USER_F_PROTOCOL_FEATURES` (virtio bit 30) negotiated.
    ProtocolFeaturesNegotiated,
    /// A virtio feature bit that must have been acked with SET_FEATURES.
    Virtio(u32),
}

impl core::fmt::Display for Requirement {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Requirement::Protocol(p) => write!(f, "protocol feature {p:?}"),
            Requirement::ProtocolFeaturesOffered => {
                write!(f, "VHOST_USER_F_PROTOCOL_FEATURES offered by the back-end")
            }
            Requirement::ProtocolFeaturesNegotiated => {
                write!(f, "VHOST_USER_F_PROTOCOL_FEATURES negotiated")
            }
            Requirement::Virtio(bit) => write!(f, "virtio feature bit {bit}"),
        }
    }
}

/// Everything that can be wrong with a message, from its header to the negotiation state.
///
/// Framing errors ([`Error::is_framing`]) mean the byte stream cannot be trusted any more and
/// the connection must be closed; the others concern one well-framed message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The version bits of the header flags are not 1.
    #[error("header version {version} (only 1 exists)")]
    BadVersion {
        /// The version found.
        version: u32,
    },
    /// Reserved header flag bits are set, or REPLY/NEED_REPLY where they do not belong.
    #[error("bad header flags {flags:#x}: {why}")]
    BadFlags {
        /// The flags word as received.
        flags: u32,
        /// Which rule was broken.
        why: &'static str,
    },
    /// The request code is not one of this direction's known requests.
    #[error("unknown request code {code}")]
    UnknownRequest {
        /// The code found.
        code: u32,
    },
    /// The header announces a body larger than the message may have.
    #[error("{request}: body of {size} bytes exceeds the maximum of {max}")]
    BodyTooLarge {
        /// The message.
        request: MessageKind,
        /// The announced size.
        size: u32,
        /// The largest allowed size.
        max: usize,
    },
    /// The body length does not fit the message's layout.
    #[error("{request}: body is {got} bytes, expected {expected}")]
    SizeMismatch {
        /// The message.
        request: MessageKind,
        /// The expected size (for variable bodies: the size the fixed fields imply).
        expected: usize,
        /// The size found.
        got: usize,
    },
    /// The number of descriptors attached does not fit the message.
    #[error("{request}: {got} descriptors attached, expected {expected}")]
    UnexpectedFds {
        /// The message.
        request: MessageKind,
        /// A description of what was expected.
        expected: &'static str,
        /// How many came.
        got: usize,
    },
    /// A field holds a value the protocol does not allow.
    #[error("{request}: field `{field}` is invalid: {why}")]
    InvalidField {
        /// The message.
        request: MessageKind,
        /// The field name.
        field: &'static str,
        /// Which check failed.
        why: &'static str,
    },
    /// A memory region is empty, overflows the address space, or overlaps another.
    #[error("{request}: memory region {index} is invalid: {why}")]
    RegionOverflow {
        /// The message.
        request: MessageKind,
        /// Index of the region within the message.
        index: usize,
        /// Which check failed.
        why: &'static str,
    },
    /// A vring index beyond the queues the back-end has.
    #[error("{request}: vring index {index} out of range (the device has {queues} queues)")]
    VringIndex {
        /// The message.
        request: MessageKind,
        /// The index found.
        index: u32,
        /// Number of queues.
        queues: u32,
    },
    /// The request needs a feature that was not negotiated.
    #[error("{request} requires {feature}, which was not negotiated")]
    NotNegotiated {
        /// The message.
        request: MessageKind,
        /// What was missing.
        feature: Requirement,
    },
    /// Features acked that the other side did not offer.
    #[error("{request}: acked bits {bits:#x} were never offered")]
    UnofferedFeatures {
        /// The message.
        request: MessageKind,
        /// The offending bits.
        bits: u64,
    },
    /// SET_OWNER on a session that already has an owner.
    #[error("SET_OWNER: the session already has an owner")]
    AlreadyOwned,
    /// A reply that does not answer the request it should.
    #[error("reply for code {got} while waiting for {expected}")]
    UnexpectedReply {
        /// The request awaiting its reply.
        expected: MessageKind,
        /// The code found in the reply.
        got: u32,
    },
    /// The caller's buffer is too small to encode into.
    #[error("encode buffer of {have} bytes, {need} needed")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

impl Error {
    /// True for errors after which the stream cannot be resynchronised: bad header, unknown
    /// code, or an announced size over the maximum. The connection must be closed.
    pub fn is_framing(&self) -> bool {
        matches!(
            self,
            Error::BadVersion { .. }
                | Error::BadFlags { .. }
                | Error::UnknownRequest { .. }
                | Error::BodyTooLarge { .. }
        )
    }
}
