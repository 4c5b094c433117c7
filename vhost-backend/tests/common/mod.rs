//! A front-end end for server tests: the server and the front-end share one thread over a
//! connection pair, so every exchange is deterministic (a request is written, the server
//! handles exactly one message, and whatever it answered is read without waiting).
#![allow(dead_code)]

pub mod cases;

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use vhost_backend::test_utils::{Recording, RecordingBackend};
use vhost_backend::{BackendServer, ServerError};
use vhost_proto::{
    DecodeContext, FrontendReply, FrontendReq, FrontendRequest, Header, HeaderFlags, MessageKind,
    Owed, ProtocolFeatures, ReplyShape, MAX_BODY_SIZE,
};
use vhost_transport::{Connection, FrontendChannel};

/// What came back for one request.
#[derive(Debug)]
pub struct Reply {
    pub header: Header,
    pub body: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

impl Reply {
    /// The body as a u64 (replies and acks).
    pub fn u64(&self) -> u64 {
        let bytes: [u8; 8] = self.body.as_slice().try_into().expect("an 8-byte body");
        u64::from_ne_bytes(bytes)
    }

    /// The body decoded as a reply of `shape` to `code`.
    pub fn decode(&self, code: FrontendReq, shape: ReplyShape) -> FrontendReply<'_> {
        FrontendReply::decode(
            code,
            shape,
            &self.body,
            self.fds.len(),
            DecodeContext::default(),
        )
        .unwrap_or_else(|e| panic!("{}: undecodable reply: {e}", code.name()))
    }
}

/// A server over one end of a pair, the front-end on the other.
pub struct Session {
    pub server: BackendServer<RecordingBackend>,
    pub front: Connection<FrontendChannel>,
    pub rec: Recording,
}

impl Session {
    /// A session with `backend`; the calls made to read its offer are forgotten.
    pub fn new(backend: RecordingBackend) -> Self {
        let (back, front) = Connection::pair().expect("socket pair");
        front.set_nonblocking(true).expect("non-blocking");
        let rec = backend.recording();
        let server = BackendServer::new(back, backend).expect("server");
        rec.take_calls();
        Session { server, front, rec }
    }

    /// A session whose front-end acked `protocol` and then `features` (without asking for
    /// acks); the calls are forgotten.
    pub fn negotiated(
        backend: RecordingBackend,
        protocol: ProtocolFeatures,
        features: u64,
    ) -> Self {
        let mut s = Session::new(backend);
        s.exchange(
            &FrontendRequest::SetProtocolFeatures(protocol.bits()),
            false,
            &[],
        );
        s.exchange(&FrontendRequest::SetFeatures(features), false, &[]);
        s.rec.take_calls();
        s
    }

    /// Writes a request, NEED_REPLY set when asked.
    pub fn send(&self, req: &FrontendRequest<'_>, need_reply: bool, fds: &[BorrowedFd<'_>]) {
        let mut flags = HeaderFlags::empty();
        flags.set(HeaderFlags::NEED_REPLY, need_reply);
        let mut body = [0u8; MAX_BODY_SIZE];
        let enc = req.encode(flags, &mut body).expect("encodable request");
        let (header, body) = (enc.header.to_wire(), &body[..enc.body_len]);
        self.front
            .send(&header, body, enc.payload, fds)
            .expect("send");
    }

    /// Writes raw bytes as a message.
    pub fn send_raw(&self, header: Header, body: &[u8], fds: &[BorrowedFd<'_>]) {
        self.front
            .send(&header.to_wire(), body, &[], fds)
            .expect("send");
    }

    /// Lets the server handle one message.
    pub fn step(&mut self) -> Result<(), ServerError> {
        self.server.handle_one()
    }

    /// The next message the server sent, if any.
    pub fn reply(&self) -> Option<Reply> {
        match self.front.recv_header() {
            Ok((wire, fds)) => {
                let header = Header::from_wire(&wire);
                let body = self
                    .front
                    .recv_body(header.size as usize)
                    .expect("reply body");
                Some(Reply { header, body, fds })
            }
            Err(vhost_transport::Error::WouldBlock) => None,
            Err(e) => panic!("reading a reply: {e}"),
        }
    }

    /// Sends a request, lets the server handle it (it must keep the connection), and
    /// returns the one message it answered, checked as a reply to that request.
    pub fn exchange(
        &mut self,
        req: &FrontendRequest<'_>,
        need_reply: bool,
        fds: &[BorrowedFd<'_>],
    ) -> Option<Reply> {
        self.send(req, need_reply, fds);
        if let Err(e) = self.step() {
            panic!("{}: server closed the connection: {e}", req.code().name());
        }
        let reply = self.reply();
        if let Some(r) = &reply {
            r.header
                .check_reply(MessageKind::Frontend(req.code()))
                .expect("a reply header for the request");
        }
        assert!(self.reply().is_none(), "more than one message came back");
        reply
    }

    /// The shape of what the server owes for `code` sent with NEED_REPLY (an ack is a u64).
    pub fn owed_with_need_reply(&self, code: FrontendReq) -> ReplyShape {
        match self.server.negotiation().owes(code, true) {
            Owed::Ack => ReplyShape::U64,
            Owed::Reply(shape) => shape,
            Owed::Nothing => panic!("{}: owes nothing with NEED_REPLY", code.name()),
        }
    }

    /// Sends `case`'s request with its descriptors and lets the server handle it.
    pub fn send_case(&mut self, case: &cases::Case, need_reply: bool) -> Result<(), ServerError> {
        let fds = case.make_fds();
        self.send(&case.request, need_reply, &borrow(&fds));
        self.step()
    }

    /// [`exchange`](Self::exchange) of `case`'s request with its descriptors.
    pub fn exchange_case(&mut self, case: &cases::Case, need_reply: bool) -> Option<Reply> {
        let fds = case.make_fds();
        self.exchange(&case.request, need_reply, &borrow(&fds))
    }

    /// Sends a request with NEED_REPLY and returns its u64 ack.
    pub fn ack(&mut self, req: &FrontendRequest<'_>, fds: &[BorrowedFd<'_>]) -> u64 {
        self.exchange(req, true, fds)
            .unwrap_or_else(|| panic!("{}: no ack", req.code().name()))
            .u64()
    }
}

/// A descriptor that is not a socket.
pub fn file_fd() -> OwnedFd {
    File::open("/dev/null").expect("/dev/null").into()
}

/// A connected socket descriptor (its peer is dropped).
pub fn socket_fd() -> OwnedFd {
    let (a, _b) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    a.into()
}

/// Borrows a list of owned descriptors.
pub fn borrow(fds: &[OwnedFd]) -> Vec<BorrowedFd<'_>> {
    fds.iter().map(|f| f.as_fd()).collect()
}
