//! The vhost-user protocol as pure data (work in progress).
#![forbid(unsafe_code)]

/// Size of the message header on the wire: `request: u32`, `flags: u32`, `size: u32`.
pub const HEADER_SIZE: usize = 12;
/// Largest body any message of the protocol may carry. Checked before anything allocates.
pub const MAX_BODY_SIZE: usize = 4096;
/// Most descriptors the protocol allows in one message (SET_MEM_TABLE: one per region, 8 regions).
pub const MAX_FDS: usize = 8;
