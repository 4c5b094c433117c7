//! virtio-vsock (virtio 1.2, 5.10): the packet header and its constants.
//!
//! Every packet on the rx and tx queues starts with a 44-byte little-endian [`Header`]; an
//! RW packet's payload follows it (in the same buffer or the next ones of the chain).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The host's CID: where guest packets to the host are addressed.
pub const HOST_CID: u64 = 2;

/// Size of [`Header`] on the wire.
pub const HEADER_LEN: usize = 44;

/// Largest payload of one packet, in either direction (Linux's
/// `VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`). A guest packet claiming more is malformed.
pub const MAX_PAYLOAD: u32 = 64 * 1024;

/// `type` of a stream socket packet.
pub const TYPE_STREAM: u16 = 1;

/// Packet operations (`op`).
pub mod op {
    /// Connection request.
    pub const REQUEST: u16 = 1;
    /// Connection accepted.
    pub const RESPONSE: u16 = 2;
    /// Reset: the connection is gone (or never was).
    pub const RST: u16 = 3;
    /// One or both directions are shut down (`flags`).
    pub const SHUTDOWN: u16 = 4;
    /// Data.
    pub const RW: u16 = 5;
    /// The sender's `buf_alloc`/`fwd_cnt`, unasked.
    pub const CREDIT_UPDATE: u16 = 6;
    /// Asks the peer for a CREDIT_UPDATE.
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// Event queue: the transport was reset; connections are gone and the guest CID is to be
/// read again.
pub const EVENT_TRANSPORT_RESET: u32 = 0;

/// `struct virtio_vsock_hdr`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Header {
    /// Source CID.
    pub src_cid: U64,
    /// Destination CID.
    pub dst_cid: U64,
    /// Source port.
    pub src_port: U32,
    /// Destination port.
    pub dst_port: U32,
    /// Payload length.
    pub len: U32,
    /// Socket type ([`TYPE_STREAM`]).
    pub type_: U16,
    /// Operation ([`op`]).
    pub op: U16,
    /// Operation flags (SHUTDOWN: [`SHUTDOWN_RCV`], [`SHUTDOWN_SEND`]).
    pub flags: U32,
    /// Receive buffer space the sender has for this connection.
    pub buf_alloc: U32,
    /// Bytes the sender has consumed (forwarded) of what it received.
    pub fwd_cnt: U32,
}

const _: () = assert!(core::mem::size_of::<Header>() == HEADER_LEN);

impl Header {
    /// A header from the host (`host_port`) to the guest (`guest_cid`, `guest_port`).
    pub fn to_guest(guest_cid: u64, host_port: u32, guest_port: u32, op: u16) -> Header {
        Header {
            src_cid: HOST_CID.into(),
            dst_cid: guest_cid.into(),
            src_port: host_port.into(),
            dst_port: guest_port.into(),
            type_: TYPE_STREAM.into(),
            op: op.into(),
            ..Header::default()
        }
    }

    /// The reset answering this packet: ports swapped, no payload. `None` for a reset
    /// (a reset is never answered).
    pub fn reset_reply(&self) -> Option<Header> {
        if self.op.get() == op::RST {
            return None;
        }
        Some(Header {
            src_cid: self.dst_cid,
            dst_cid: self.src_cid,
            src_port: self.dst_port,
            dst_port: self.src_port,
            type_: self.type_,
            op: op::RST.into(),
            ..Header::default()
        })
    }

    /// A stream packet from the guest (`guest_cid`, `guest_port`) to host port `host_port`.
    pub fn to_host(guest_cid: u64, guest_port: u32, host_port: u32, op: u16) -> Header {
        Header {
            src_cid: guest_cid.into(),
            dst_cid: HOST_CID.into(),
            src_port: guest_port.into(),
            dst_port: host_port.into(),
            type_: TYPE_STREAM.into(),
            op: op.into(),
            ..Header::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_44_little_endian_bytes_in_spec_order() {
        let h = Header {
            src_cid: 0x0102030405060708.into(),
            dst_cid: 2.into(),
            src_port: 0x11223344.into(),
            dst_port: 5.into(),
            len: 6.into(),
            type_: 1.into(),
            op: 5.into(),
            flags: 3.into(),
            buf_alloc: 0x10000.into(),
            fwd_cnt: 9.into(),
        };
        let b = h.as_bytes();
        assert_eq!(b.len(), 44);
        assert_eq!(&b[0..8], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[16..20], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&b[24..28], &[6, 0, 0, 0]);
        assert_eq!(&b[28..30], &[1, 0]);
        assert_eq!(&b[30..32], &[5, 0]);
        assert_eq!(&b[32..36], &[3, 0, 0, 0]);
        assert_eq!(&b[36..40], &[0, 0, 1, 0]);
        assert_eq!(&b[40..44], &[9, 0, 0, 0]);
    }

    #[test]
    fn reset_reply_swaps_ends_and_a_reset_gets_none() {
        let h = Header::to_guest(3, 1024, 77, op::RW);
        let r = h.reset_reply().unwrap();
        assert_eq!((r.src_cid.get(), r.dst_cid.get()), (3, 2));
        assert_eq!((r.src_port.get(), r.dst_port.get()), (77, 1024));
        assert_eq!(r.op.get(), op::RST);
        assert_eq!(r.reset_reply(), None);
        let g = Header::to_host(3, 77, 1024, op::REQUEST);
        assert_eq!(
            g.reset_reply().unwrap(),
            Header::to_guest(3, 1024, 77, op::RST)
        );
    }
}
