//! The 12-byte message header and its flags.

use bitflags::bitflags;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{BackendReq, Error, FrontendReq, MessageKind, HEADER_SIZE, MAX_BODY_SIZE};

bitflags! {
    /// The header's `flags` word. Bits 0–1 hold the version (always 1), bit 2 marks a reply
    /// and bit 3 asks for an ack; every other bit is reserved and rejected.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct HeaderFlags: u32 {
        /// Version 1, the only one there is.
        const VERSION_1 = 0x1;
        /// This message is a reply.
        const REPLY = 0x4;
        /// The sender asks for an ack (with REPLY_ACK negotiated).
        const NEED_REPLY = 0x8;
    }
}

/// Mask of the version bits.
pub const VERSION_MASK: u32 = 0x3;
/// The only protocol version.
pub const VERSION: u32 = 1;
const KNOWN_FLAGS: u32 = VERSION_MASK | 0x4 | 0x8;

/// The message header: `request`, `flags`, `size` (of the body), native byte order.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Header {
    /// The request code.
    pub request: u32,
    /// Version and REPLY/NEED_REPLY bits.
    pub flags: u32,
    /// Size of the body that follows, in bytes.
    pub size: u32,
}

const _: () = assert!(core::mem::size_of::<Header>() == HEADER_SIZE);

impl Header {
    /// A version-1 header with the given flags added.
    pub fn new(request: u32, flags: HeaderFlags, size: u32) -> Self {
        Header {
            request,
            flags: (flags | HeaderFlags::VERSION_1).bits(),
            size,
        }
    }

    /// Reads a header from its wire bytes (no validation).
    pub fn from_wire(bytes: &[u8; HEADER_SIZE]) -> Self {
        // A 12-byte array always holds a header: every bit pattern is valid.
        Self::read_from_bytes(bytes).unwrap_or_default()
    }

    /// The wire bytes of this header.
    pub fn to_wire(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        out.copy_from_slice(self.as_bytes());
        out
    }

    /// The flags, as far as they are known bits.
    pub fn header_flags(&self) -> HeaderFlags {
        HeaderFlags::from_bits_truncate(self.flags)
    }

    /// True when NEED_REPLY is set.
    pub fn need_reply(&self) -> bool {
        self.flags & HeaderFlags::NEED_REPLY.bits() != 0
    }

    /// True when REPLY is set.
    pub fn is_reply(&self) -> bool {
        self.flags & HeaderFlags::REPLY.bits() != 0
    }

    fn check_flags(&self, reply: bool) -> Result<(), Error> {
        let version = self.flags & VERSION_MASK;
        if version != VERSION {
            return Err(Error::BadVersion { version });
        }
        if self.flags & !KNOWN_FLAGS != 0 {
            return Err(Error::BadFlags {
                flags: self.flags,
                why: "reserved bits set",
            });
        }
        if reply != self.is_reply() {
            return Err(Error::BadFlags {
                flags: self.flags,
                why: if reply {
                    "REPLY missing on a reply"
                } else {
                    "REPLY set on a request"
                },
            });
        }
        if reply && self.need_reply() {
            return Err(Error::BadFlags {
                flags: self.flags,
                why: "NEED_REPLY set on a reply",
            });
        }
        Ok(())
    }

    /// Validates a front-end request header: version, flags, known code, and the body size
    /// bounded by that request's maximum. Call before reading (or allocating) the body.
    pub fn check_frontend_request(&self) -> Result<FrontendReq, Error> {
        self.check_request(FrontendReq::from_code, MessageKind::Frontend)
    }

    /// Validates a back-end request header (on the back-end channel).
    pub fn check_backend_request(&self) -> Result<BackendReq, Error> {
        self.check_request(BackendReq::from_code, MessageKind::Backend)
    }

    fn check_request<R: Copy>(
        &self,
        from_code: fn(u32) -> Option<R>,
        kind: fn(R) -> MessageKind,
    ) -> Result<R, Error> {
        self.check_flags(false)?;
        let req = from_code(self.request).ok_or(Error::UnknownRequest { code: self.request })?;
        let request = kind(req);
        let max = request.spec().body.max_size().min(MAX_BODY_SIZE);
        if self.size as usize > max {
            return Err(Error::BodyTooLarge {
                request,
                size: self.size,
                max,
            });
        }
        Ok(req)
    }

    /// Validates the header of a reply to `expected`: version, REPLY set, same code, size
    /// within the maximum.
    pub fn check_reply(&self, expected: MessageKind) -> Result<(), Error> {
        self.check_flags(true)?;
        let code = match expected {
            MessageKind::Frontend(r) => r as u32,
            MessageKind::Backend(r) => r as u32,
        };
        if self.request != code {
            return Err(Error::UnexpectedReply {
                expected,
                got: self.request,
            });
        }
        if self.size as usize > MAX_BODY_SIZE {
            return Err(Error::BodyTooLarge {
                request: expected,
                size: self.size,
                max: MAX_BODY_SIZE,
            });
        }
        Ok(())
    }
}
