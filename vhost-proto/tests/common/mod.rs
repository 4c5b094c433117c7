//! Shared by the integration tests: the golden byte vectors and small helpers.
#![allow(dead_code)]

pub mod golden;
pub mod spec_rows;

use vhost_proto::*;

/// Concatenates byte slices.
pub fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Every virtio feature bit the tests may ack, and every protocol feature.
pub const ALL_FEATURES: u64 = u64::MAX;

/// A session where everything is offered and acked (8 queues).
pub fn negotiated_all() -> Negotiation {
    let mut n = Negotiation::new(ALL_FEATURES, ProtocolFeatures::all(), 8);
    n.apply(&FrontendRequest::SetFeatures(ALL_FEATURES));
    n.apply(&FrontendRequest::SetProtocolFeatures(
        ProtocolFeatures::all().bits(),
    ));
    n
}

/// Decodes a whole front-end request (header + body) as a server would.
pub fn decode_frontend(
    bytes: &[u8],
    nfds: usize,
    ctx: DecodeContext,
) -> Result<FrontendRequest<'_>, Error> {
    let (h, body) = split(bytes);
    let req = h.check_frontend_request()?;
    assert_eq!(body.len(), h.size as usize, "test vector size field");
    FrontendRequest::decode(req, body, nfds, ctx)
}

/// Decodes a whole back-end request (header + body).
pub fn decode_backend(bytes: &[u8], nfds: usize) -> Result<BackendRequest, Error> {
    let (h, body) = split(bytes);
    let req = h.check_backend_request()?;
    assert_eq!(body.len(), h.size as usize, "test vector size field");
    BackendRequest::decode(req, body, nfds)
}

/// The header and the rest of a message.
pub fn split(bytes: &[u8]) -> (Header, &[u8]) {
    let mut h = [0u8; HEADER_SIZE];
    h.copy_from_slice(&bytes[..HEADER_SIZE]);
    (Header::from_wire(&h), &bytes[HEADER_SIZE..])
}

/// Header, body and payload of an encoding, as they go on the wire.
pub fn wire_of(enc: &Encoded<'_>, body: &[u8]) -> Vec<u8> {
    cat(&[&enc.header.to_wire(), &body[..enc.body_len], enc.payload])
}

/// Encodes a front-end request with the flags of `like` (NEED_REPLY kept).
pub fn encode_frontend(msg: &FrontendRequest<'_>, flags: HeaderFlags) -> Vec<u8> {
    let mut buf = [0u8; MAX_BODY_SIZE];
    let enc = msg.encode(flags, &mut buf).expect("encode");
    wire_of(&enc, &buf)
}

/// Encodes a back-end request.
pub fn encode_backend(msg: &BackendRequest, flags: HeaderFlags) -> Vec<u8> {
    let mut buf = [0u8; MAX_BODY_SIZE];
    let enc = msg.encode(flags, &mut buf).expect("encode");
    wire_of(&enc, &buf)
}

/// Encodes a reply to a front-end request.
pub fn encode_reply(reply: &FrontendReply<'_>, req: FrontendReq) -> Vec<u8> {
    let mut buf = [0u8; MAX_BODY_SIZE];
    let enc = reply.encode(req, &mut buf).expect("encode");
    wire_of(&enc, &buf)
}

/// Asserts that an expression is an `Err` matching a pattern, printing what it was otherwise.
#[macro_export]
macro_rules! assert_err {
    ($e:expr, $p:pat) => {
        match $e {
            Err($p) => {}
            other => panic!("expected Err({}), got {:?}", stringify!($p), other),
        }
    };
}

/// A header as a struct (for invalid cases that need any bit pattern).
pub fn header(request: u32, flags: u32, size: u32) -> Header {
    Header {
        request,
        flags,
        size,
    }
}

/// The kind of a front-end request, as errors carry it.
pub fn fk(r: FrontendReq) -> MessageKind {
    MessageKind::Frontend(r)
}

/// The kind of a back-end request.
pub fn bk(r: BackendReq) -> MessageKind {
    MessageKind::Backend(r)
}

pub const PLAIN: DecodeContext = DecodeContext { xen_mmap: false };

/// Little-endian bytes of a u64 (test vectors are built for x86_64).
pub fn le64(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

/// Little-endian bytes of a u32.
pub fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

/// A 32-byte memory region from its four fields, in wire order.
pub fn region_bytes(gpa: u64, size: u64, user: u64, offset: u64) -> Vec<u8> {
    cat(&[&le64(gpa), &le64(size), &le64(user), &le64(offset)])
}
