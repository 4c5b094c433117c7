//! The virtio-vsock packet header and its constants (virtio 1.2, 5.10.6), from
//! [`virtio_defs::vsock`] (shared with the front-end).
//!
//! Every packet on the rx and tx queues starts with a 44-byte little-endian header; an RW
//! packet's payload follows it (in the same buffer or the next ones of the chain).

pub use virtio_defs::vsock::{
    op, Header, EVENT_TRANSPORT_RESET, HEADER_LEN, HOST_CID, MAX_PAYLOAD, SHUTDOWN_RCV,
    SHUTDOWN_SEND, TYPE_STREAM,
};
