//! The vhost-user protocol as pure data: no I/O, no `unsafe`.
//!
//! This crate knows every message of the vhost-user specification in both directions —
//! 44 front-end requests and 10 back-end requests — with their header, body layouts,
//! descriptor rules, the protocol features that gate them and what they owe (nothing, an
//! ack when asked, or a reply). It never sees a socket or a descriptor: it is told how many
//! descriptors arrived with a message and answers whether that is right.
//!
//! # Receiving a request
//! ```
//! use vhost_proto::*;
//! let mut neg = Negotiation::new(1 << 30 | 1 << 32, ProtocolFeatures::REPLY_ACK, 1);
//! // Bytes as they came off the socket: header, then body (no descriptors).
//! let header = Header::new(FrontendReq::GetFeatures as u32, HeaderFlags::empty(), 0);
//! let req = header.check_frontend_request().unwrap(); // framing: close on error
//! let msg = FrontendRequest::decode(req, &[], 0, neg.decode_context()).unwrap();
//! neg.check(&msg).unwrap(); // gates and indices: reply with the failure form on error
//! assert_eq!(neg.owes(req, header.need_reply()), Owed::Reply(ReplyShape::U64));
//! let mut body = [0u8; MAX_BODY_SIZE];
//! let enc = FrontendReply::U64(neg.offered_features()).encode(req, &mut body).unwrap();
//! assert_eq!(enc.header.size, 8);
//! neg.apply(&msg);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod backend;
mod codec;
mod error;
pub mod features;
mod frontend;
mod header;
pub mod inflight;
pub mod limits;
mod negotiation;
pub mod region;
pub mod table;
pub mod wire;

pub use backend::{decode_backend_reply, encode_backend_reply, BackendRequest};
pub use error::{Error, MessageKind, Requirement};
pub use features::{virtio, ProtocolFeatures};
pub use frontend::{
    encode_u64_reply, validate_regions, Config, CryptoSession, DecodeContext, Encoded,
    FrontendReply, FrontendRequest, MemTable, RegionMsg, VringFd, XenMapping, ACK_FAILURE,
    MAX_MEM_TABLE_REGIONS,
};
pub use header::{Header, HeaderFlags, VERSION, VERSION_MASK};
pub use limits::{MAX_QUEUES, MAX_QUEUE_SIZE};
pub use negotiation::{Negotiation, Owed};
pub use region::RegionFault;
pub use table::{
    BackendReq, BodyShape, FdPolicy, FrontendReq, Gate, Owes, ReplyShape, RequestSpec,
    BACKEND_REQUESTS, FRONTEND_REQUESTS,
};
pub use wire::{
    ConfigHeader, DeviceStateTransfer, Inflight, IotlbMsg, LogBase, MemoryRegion, SharedObject,
    ShmemConfig, ShmemMap, VringAddr, VringArea, VringState,
};

/// Size of the message header on the wire: `request: u32`, `flags: u32`, `size: u32`.
pub const HEADER_SIZE: usize = 12;
/// Largest body any message of the protocol may carry. Checked before anything allocates.
pub const MAX_BODY_SIZE: usize = 4096;
/// Most descriptors the protocol allows in one message (SET_MEM_TABLE: one per region, 8 regions).
pub const MAX_FDS: usize = 8;
