//! The back-end channel only hands the handler what the negotiation allows: a request whose
//! feature was not acked, or descriptors without BACKEND_SEND_FD, get the failure ack and
//! their descriptors are closed; features acked after the channel was set up count.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vhost_backend::test_utils::RecordingBackend;
use vhost_backend::BackendServer;
use vhost_frontend::backend_channel::{serve_backend_channel, ChannelError};
use vhost_frontend::{BackendRequestHandler, Frontend, HandlerResult};
use vhost_proto::{
    decode_backend_reply, virtio, BackendRequest, FrontendRequest, Header, HeaderFlags, IotlbMsg,
    Negotiation, ProtocolFeatures, VringArea, MAX_BODY_SIZE,
};
use vhost_transport::{BackendChannel, Connection};

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<String>>>);

impl Seen {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

impl BackendRequestHandler for Seen {
    fn iotlb_msg(&mut self, msg: &IotlbMsg) -> HandlerResult<()> {
        self.0
            .lock()
            .unwrap()
            .push(format!("iotlb {:#x}", msg.iova));
        Ok(())
    }
    fn vring_host_notifier(&mut self, area: &VringArea, fd: Option<OwnedFd>) -> HandlerResult<()> {
        let what = format!("host_notifier {} {}", area.size, fd.is_some());
        self.0.lock().unwrap().push(what);
        Ok(())
    }
}

fn acked(protocol: ProtocolFeatures, features: u64) -> Negotiation {
    let mut n = Negotiation::new(u64::MAX, ProtocolFeatures::all(), u32::MAX);
    n.apply(&FrontendRequest::SetProtocolFeatures(protocol.bits()));
    n.apply(&FrontendRequest::SetFeatures(features));
    n
}

type Served = JoinHandle<Result<u64, ChannelError>>;

/// Serves the front-end's end of a channel with `negotiation`; returns the back-end's end.
fn channel(negotiation: Negotiation, seen: &Seen) -> (Connection<BackendChannel>, Served) {
    let (ours, theirs) = Connection::<BackendChannel>::pair().unwrap();
    let mut handler = seen.clone();
    let t = std::thread::spawn(move || serve_backend_channel(&ours, &mut handler, &negotiation));
    theirs
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    (theirs, t)
}

/// Sends `req` with NEED_REPLY and returns the ack.
fn ack(conn: &Connection<BackendChannel>, req: BackendRequest, fds: &[&OwnedFd]) -> u64 {
    let mut body = [0u8; MAX_BODY_SIZE];
    let enc = req.encode(HeaderFlags::NEED_REPLY, &mut body).unwrap();
    let fds: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
    conn.send(&enc.header.to_wire(), &body[..enc.body_len], &[], &fds)
        .unwrap();
    let (wire, reply_fds) = conn.recv_header().unwrap();
    let header = Header::from_wire(&wire);
    let body = conn.recv_body(header.size as usize).unwrap();
    decode_backend_reply(req.code(), &body, reply_fds.len()).unwrap()
}

fn host_notifier(index: u64) -> BackendRequest {
    BackendRequest::VringHostNotifierMsg(VringArea {
        u64_index_flags: index,
        size: 4096,
        offset: 0,
    })
}

fn iotlb_miss() -> BackendRequest {
    BackendRequest::IotlbMsg(vhost_test_support::wire::iotlb_miss(0x5000))
}

const BASE: ProtocolFeatures = ProtocolFeatures::REPLY_ACK
    .union(ProtocolFeatures::BACKEND_REQ)
    .union(ProtocolFeatures::HOST_NOTIFIER);

#[test]
fn descriptor_without_backend_send_fd_is_refused_and_closed_before_the_handler() {
    let seen = Seen::default();
    let (conn, t) = channel(acked(BASE, 0), &seen);
    let (mut read_end, write_end) = {
        let (r, w) = nix::unistd::pipe().unwrap();
        (File::from(r), w)
    };
    assert_ne!(ack(&conn, host_notifier(0), &[&write_end]), 0);
    drop(write_end);
    // The channel closed the copy it received: the pipe has no writer left.
    let mut rest = Vec::new();
    assert_eq!(read_end.read_to_end(&mut rest).unwrap(), 0);
    assert_eq!(seen.take(), Vec::<String>::new());
    // Without a descriptor the same request is delivered, and the channel still serves.
    let nofd = host_notifier(vhost_proto::wire::VRING_NOFD);
    assert_eq!(ack(&conn, nofd, &[]), 0);
    assert_eq!(seen.take(), ["host_notifier 4096 false"]);
    drop(conn);
    assert_eq!(t.join().unwrap().unwrap(), 2);
}

#[test]
fn descriptor_with_backend_send_fd_acked_reaches_the_handler() {
    let seen = Seen::default();
    let protocol = BASE | ProtocolFeatures::BACKEND_SEND_FD;
    let (conn, _t) = channel(acked(protocol, 0), &seen);
    let fd: OwnedFd = File::open("/dev/null").unwrap().into();
    assert_eq!(ack(&conn, host_notifier(0), &[&fd]), 0);
    assert_eq!(seen.take(), ["host_notifier 4096 true"]);
}

#[test]
fn request_whose_feature_is_not_acked_is_refused_before_the_handler() {
    let seen = Seen::default();
    let (conn, _t) = channel(acked(BASE, 0), &seen);
    // BACKEND_IOTLB_MSG needs ACCESS_PLATFORM.
    assert_ne!(ack(&conn, iotlb_miss(), &[]), 0);
    assert_eq!(seen.take(), Vec::<String>::new());

    let features = virtio::bit(virtio::ACCESS_PLATFORM);
    let (conn, _t) = channel(acked(BASE, features), &seen);
    assert_eq!(ack(&conn, iotlb_miss(), &[]), 0);
    assert_eq!(seen.take(), ["iotlb 0x5000"]);
}

#[test]
fn feature_acked_after_set_backend_req_fd_counts_on_the_channel() {
    let backend = RecordingBackend::new().with_features(
        virtio::bit(virtio::VERSION_1)
            | virtio::bit(virtio::PROTOCOL_FEATURES)
            | virtio::bit(virtio::ACCESS_PLATFORM),
    );
    let rec = backend.recording();
    let (server_end, client_end) = Connection::pair().unwrap();
    let mut server = BackendServer::new(server_end, backend).unwrap();
    let _server = std::thread::spawn(move || server.serve());
    let mut fe = Frontend::new(client_end);
    fe.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // QEMU's order: the channel is set up before SET_FEATURES.
    let features = fe.get_features().unwrap();
    fe.get_protocol_features().unwrap();
    fe.set_protocol_features(ProtocolFeatures::all() - ProtocolFeatures::XEN_MMAP)
        .unwrap();
    let seen = Seen::default();
    let _channel = fe.set_backend_req_fd(Box::new(seen.clone())).unwrap();
    fe.set_owner().unwrap();
    fe.set_features(features).unwrap();
    let client = rec.backend_client().expect("back-end got the channel");
    let BackendRequest::IotlbMsg(miss) = iotlb_miss() else {
        unreachable!()
    };
    client.iotlb_msg(miss).unwrap();
    assert_eq!(seen.take(), ["iotlb 0x5000"]);
}
