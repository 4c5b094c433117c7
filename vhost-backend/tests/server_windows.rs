//! The server over Windows named pipes: a minimal back-end negotiates REPLY_ACK, acks
//! SET_OWNER, receives the back-end channel as a pipe handle with SET_BACKEND_REQ_FD, and
//! its back-end requests are acked (or refused) by the front-end end.

#![cfg(windows)]

use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use vhost_backend::{Backend, BackendClient, BackendResult, BackendServer, ClientError};
use vhost_proto::{
    encode_backend_reply, virtio, BackendReq, FrontendReq, FrontendRequest, Header, HeaderFlags,
    MemTable, MessageKind, ProtocolFeatures, VringAddr, MAX_BODY_SIZE,
};
use vhost_transport::{
    AsDescriptor, BackendChannel, BorrowedDescriptor, Connection, FrontendChannel, OwnedDescriptor,
};

const FEATURES: u64 = virtio::bit(virtio::VERSION_1) | virtio::bit(virtio::PROTOCOL_FEATURES);

fn protocol() -> ProtocolFeatures {
    ProtocolFeatures::REPLY_ACK | ProtocolFeatures::BACKEND_REQ | ProtocolFeatures::CONFIG
}

/// Implements what every back-end must, and keeps the back-end channel it is given.
struct Minimal {
    client: Arc<Mutex<Option<BackendClient>>>,
}

impl Backend for Minimal {
    fn get_features(&mut self) -> BackendResult<u64> {
        Ok(FEATURES)
    }
    fn set_features(&mut self, _features: u64) -> BackendResult<()> {
        Ok(())
    }
    fn set_mem_table(
        &mut self,
        _table: &MemTable,
        _fds: Vec<OwnedDescriptor>,
    ) -> BackendResult<()> {
        Ok(())
    }
    fn set_vring_num(&mut self, _index: u32, _num: u32) -> BackendResult<()> {
        Ok(())
    }
    fn set_vring_addr(&mut self, _addr: &VringAddr) -> BackendResult<()> {
        Ok(())
    }
    fn set_vring_base(&mut self, _index: u32, _base: u32) -> BackendResult<()> {
        Ok(())
    }
    fn get_vring_base(&mut self, _index: u32) -> BackendResult<u32> {
        Ok(0)
    }
    fn set_vring_kick(&mut self, _index: u8, _fd: Option<OwnedDescriptor>) -> BackendResult<()> {
        Ok(())
    }
    fn set_vring_call(&mut self, _index: u8, _fd: Option<OwnedDescriptor>) -> BackendResult<()> {
        Ok(())
    }
    fn get_protocol_features(&mut self) -> BackendResult<ProtocolFeatures> {
        Ok(protocol())
    }
    fn set_protocol_features(&mut self, _features: ProtocolFeatures) -> BackendResult<()> {
        Ok(())
    }
    fn set_vring_enable(&mut self, _index: u32, _enable: bool) -> BackendResult<()> {
        Ok(())
    }
    fn set_backend_req_fd(&mut self, client: BackendClient) -> BackendResult<()> {
        *self.client.lock().unwrap_or_else(PoisonError::into_inner) = Some(client);
        Ok(())
    }
}

/// Sends `req` (NEED_REPLY when asked) and, when `reply` is true, returns the u64 that
/// came back, checked as the reply to `req`.
fn request(
    front: &Connection<FrontendChannel>,
    req: &FrontendRequest<'_>,
    need_reply: bool,
    handles: &[BorrowedDescriptor<'_>],
    reply: bool,
) -> Option<u64> {
    let flags = if need_reply {
        HeaderFlags::NEED_REPLY
    } else {
        HeaderFlags::empty()
    };
    let mut body = [0u8; MAX_BODY_SIZE];
    let enc = req.encode(flags, &mut body).expect("encodable request");
    front
        .send(
            &enc.header.to_wire(),
            &body[..enc.body_len],
            enc.payload,
            handles,
        )
        .expect("send request");
    if !reply {
        return None;
    }
    let (wire, fds) = front.recv_header().expect("reply header");
    let header = Header::from_wire(&wire);
    header
        .check_reply(MessageKind::Frontend(req.code()))
        .expect("a reply to the request");
    assert!(
        fds.is_empty(),
        "{}: handles with the reply",
        req.code().name()
    );
    let body = front.recv_body(header.size as usize).expect("reply body");
    let bytes: [u8; 8] = body.as_slice().try_into().expect("an 8-byte reply");
    Some(u64::from_ne_bytes(bytes))
}

/// Plays the front-end on the back-end channel: reads one request, expects
/// CONFIG_CHANGE_MSG with NEED_REPLY and no handles, and answers `status`.
fn answer_config_change(conn: &Connection<BackendChannel>, status: u64) {
    let (wire, fds) = conn.recv_header().expect("back-end request");
    let header = Header::from_wire(&wire);
    let code = header.check_backend_request().expect("valid header");
    assert_eq!(code, BackendReq::ConfigChangeMsg);
    assert!(
        header.need_reply(),
        "REPLY_ACK is negotiated: NEED_REPLY set"
    );
    assert!(fds.is_empty());
    assert!(conn
        .recv_body(header.size as usize)
        .expect("body")
        .is_empty());
    let mut out = [0u8; MAX_BODY_SIZE];
    let enc = encode_backend_reply(code, status, &mut out).expect("reply");
    conn.send(&enc.header.to_wire(), &out[..enc.body_len], &[], &[])
        .expect("send ack");
}

#[test]
fn server_over_pipes_acks_requests_and_hands_over_a_working_backend_channel() {
    let slot = Arc::new(Mutex::new(None));
    let backend = Minimal {
        client: Arc::clone(&slot),
    };
    let (back, front) = Connection::<FrontendChannel>::pair().expect("pipe pair");
    let mut server = BackendServer::new(back, backend).expect("server");
    let serving = thread::spawn(move || server.serve());

    let features = request(&front, &FrontendRequest::GetFeatures, false, &[], true);
    assert_eq!(features, Some(FEATURES));
    let offered = request(
        &front,
        &FrontendRequest::GetProtocolFeatures,
        false,
        &[],
        true,
    );
    assert_eq!(offered, Some(protocol().bits()));
    let set_protocol = FrontendRequest::SetProtocolFeatures(protocol().bits());
    request(&front, &set_protocol, false, &[], false);
    request(
        &front,
        &FrontendRequest::SetFeatures(FEATURES),
        false,
        &[],
        false,
    );
    assert_eq!(
        request(&front, &FrontendRequest::SetOwner, true, &[], true),
        Some(0),
        "SET_OWNER acked with success"
    );

    let (channel_front, channel_back) = Connection::<BackendChannel>::pair().expect("pipe pair");
    let handle = OwnedDescriptor::from(channel_back);
    assert_eq!(
        request(
            &front,
            &FrontendRequest::SetBackendReqFd,
            true,
            &[handle.as_descriptor()],
            true
        ),
        Some(0),
        "{} acked with success",
        FrontendReq::SetBackendReqFd.name()
    );
    drop(handle);
    let client = slot
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .expect("the back-end was given a channel");

    let sender = client.clone();
    let acked = thread::spawn(move || sender.config_change());
    answer_config_change(&channel_front, 0);
    acked
        .join()
        .expect("sender thread")
        .expect("CONFIG_CHANGE_MSG acked with success");

    let refused = thread::spawn(move || client.config_change());
    answer_config_change(&channel_front, 1);
    match refused.join().expect("sender thread") {
        Err(ClientError::Refused { status: 1, .. }) => {}
        other => panic!("a non-zero ack must be Refused, got {other:?}"),
    }

    drop(front);
    serving
        .join()
        .expect("server thread")
        .expect("a clean disconnect ends the session with Ok");
}
