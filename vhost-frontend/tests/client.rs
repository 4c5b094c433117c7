//! The front-end client against the in-process `BackendServer` and the recording back-end:
//! every request reaches the back-end with its arguments, replies come back typed, acks and
//! nacks follow REPLY_ACK, and the back-end channel carries every back-end request.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::eventfd::EventFd;
use vhost_backend::test_utils::{Call, CryptoSessionCall, Recording, RecordingBackend};
use vhost_backend::{BackendServer, ClientError, ServerError};
use vhost_frontend::{
    BackendRequestHandler, Frontend, FrontendError, GuestMemory, HandlerResult, UnsupportedHandler,
};
use vhost_proto::wire::iotlb;
use vhost_proto::{
    virtio, FrontendReq, Inflight, IotlbMsg, LogBase, MemoryRegion, ProtocolFeatures, RegionMsg,
    SharedObject, ShmemMap, VringAddr, VringArea,
};
use vhost_transport::Connection;

const TIMEOUT: Duration = Duration::from_secs(5);

fn offered_features() -> u64 {
    virtio::bit(virtio::VERSION_1)
        | virtio::bit(virtio::PROTOCOL_FEATURES)
        | virtio::bit(virtio::ACCESS_PLATFORM)
        | virtio::bit(virtio::RING_EVENT_IDX)
}

/// Everything the recording back-end offers except XEN_MMAP (which changes region layouts).
fn protocol_to_ack() -> ProtocolFeatures {
    ProtocolFeatures::all() - ProtocolFeatures::XEN_MMAP
}

struct Harness {
    fe: Frontend,
    rec: Recording,
    server: JoinHandle<Result<(), ServerError>>,
}

fn serve(backend: RecordingBackend) -> Harness {
    let rec = backend.recording();
    let (server_end, client_end) = Connection::pair().unwrap();
    let mut server = BackendServer::new(server_end, backend).unwrap();
    // The offer the server read while it was built.
    rec.take_calls();
    let server = std::thread::spawn(move || server.serve());
    let fe = Frontend::new(client_end);
    fe.set_read_timeout(Some(TIMEOUT)).unwrap();
    Harness { fe, rec, server }
}

fn recording_backend() -> RecordingBackend {
    let mut b = RecordingBackend::new().with_features(offered_features());
    b.vring_base = 7;
    b.status = 0x0f;
    b.max_mem_slots = 509;
    b.crypto_session_id = 42;
    b.inflight = Inflight {
        mmap_size: 4096,
        mmap_offset: 0,
        num_queues: 2,
        queue_size: 256,
        padding: [0; 4],
    };
    b
}

/// Negotiates as QEMU does up to SET_OWNER, acking `protocol`.
fn negotiate(h: &mut Harness, protocol: ProtocolFeatures) {
    let features = h.fe.get_features().unwrap();
    h.fe.get_protocol_features().unwrap();
    h.fe.set_protocol_features(protocol).unwrap();
    h.fe.set_features(features).unwrap();
    h.fe.set_owner().unwrap();
    // A request with a reply orders the exchange: everything before it was handled.
    h.fe.get_features().unwrap();
    h.rec.take_calls();
}

fn null_fd() -> OwnedFd {
    File::open("/dev/null").unwrap().into()
}

fn region(mem: &GuestMemory) -> MemoryRegion {
    let r = mem.regions().next().unwrap();
    MemoryRegion {
        guest_phys_addr: r.guest_phys_addr,
        memory_size: r.memory_size,
        user_addr: r.user_addr,
        mmap_offset: r.mmap_offset,
    }
}

#[test]
fn every_frontend_request_reaches_the_backend_with_its_arguments_and_typed_replies() {
    let mut h = serve(recording_backend());
    let fe = &mut h.fe;
    let mut expected = Vec::new();

    assert_eq!(fe.get_features().unwrap(), offered_features());
    expected.push(Call::GetFeatures);
    assert_eq!(fe.get_protocol_features().unwrap(), ProtocolFeatures::all());
    expected.push(Call::GetProtocolFeatures);
    fe.set_protocol_features(protocol_to_ack()).unwrap();
    expected.push(Call::SetProtocolFeatures {
        features: protocol_to_ack(),
    });
    assert_eq!(fe.get_queue_num().unwrap(), 2);
    expected.push(Call::GetQueueNum);
    assert!(
        fe.reply_ack(),
        "REPLY_ACK acked: every later request waits for its ack"
    );
    fe.set_features(offered_features()).unwrap();
    expected.push(Call::SetFeatures {
        features: offered_features(),
    });
    assert_eq!(fe.acked_features(), offered_features());
    fe.set_owner().unwrap();
    expected.push(Call::SetOwner);
    assert_eq!(fe.get_max_mem_slots().unwrap(), 509);
    expected.push(Call::GetMaxMemSlots);
    let channel = fe.set_backend_req_fd(Box::new(UnsupportedHandler)).unwrap();
    expected.push(Call::SetBackendReqFd);

    let mem = GuestMemory::single(1 << 20).unwrap();
    let r = region(&mem);
    fe.set_mem_table(&[r], &[mem.fd()]).unwrap();
    expected.push(Call::SetMemTable {
        table: vec![r],
        fds: 1,
    });
    let log = LogBase {
        mmap_size: 4096,
        mmap_offset: 0,
    };
    fe.set_log_base(&log, null_fd().as_fd()).unwrap();
    expected.push(Call::SetLogBase { log });
    let efd = EventFd::new().unwrap();
    let efd = efd.as_fd();
    fe.set_log_fd(efd).unwrap();
    expected.push(Call::SetLogFd);
    fe.set_vring_num(1, 256).unwrap();
    expected.push(Call::SetVringNum { index: 1, num: 256 });
    let addr = VringAddr {
        index: 1,
        flags: 0,
        desc: 0x7f00_0000_1000,
        used: 0x7f00_0000_3000,
        avail: 0x7f00_0000_2000,
        log: 0x3000,
    };
    fe.set_vring_addr(&addr).unwrap();
    expected.push(Call::SetVringAddr { addr });
    fe.set_vring_base(1, 5).unwrap();
    expected.push(Call::SetVringBase { index: 1, base: 5 });
    assert_eq!(fe.get_vring_base(1).unwrap(), 7);
    expected.push(Call::GetVringBase { index: 1 });
    fe.set_vring_kick(0, Some(efd)).unwrap();
    expected.push(Call::SetVringKick { index: 0, fd: true });
    fe.set_vring_call(1, None).unwrap();
    expected.push(Call::SetVringCall {
        index: 1,
        fd: false,
    });
    fe.set_vring_err(0, Some(efd)).unwrap();
    expected.push(Call::SetVringErr { index: 0, fd: true });
    fe.set_vring_enable(1, true).unwrap();
    expected.push(Call::SetVringEnable {
        index: 1,
        enable: true,
    });
    let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    fe.send_rarp(mac).unwrap();
    expected.push(Call::SendRarp { mac });
    fe.net_set_mtu(1500).unwrap();
    expected.push(Call::NetSetMtu { mtu: 1500 });
    let iotlb_msg = IotlbMsg {
        iova: 0x1000,
        size: 0x1000,
        uaddr: 0x7f00_0000_1000,
        perm: iotlb::PERM_RW,
        msg_type: iotlb::UPDATE,
        padding: [0; 6],
    };
    fe.iotlb_msg(&iotlb_msg).unwrap();
    expected.push(Call::IotlbMsg { msg: iotlb_msg });
    fe.set_vring_endian(0, true).unwrap();
    expected.push(Call::SetVringEndian {
        index: 0,
        big_endian: true,
    });
    assert_eq!(
        fe.get_config(4, 8, 0).unwrap(),
        (4..12).collect::<Vec<u8>>()
    );
    expected.push(Call::GetConfig {
        offset: 4,
        size: 8,
        flags: 0,
    });
    fe.set_config(2, &[9, 9], 0).unwrap();
    expected.push(Call::SetConfig {
        offset: 2,
        data: vec![9, 9],
        flags: 0,
    });
    assert_eq!(fe.create_crypto_session(3, b"key").unwrap(), 42);
    expected.push(Call::CreateCryptoSession {
        session: CryptoSessionCall {
            session_id: 3,
            payload: b"key".to_vec(),
        },
    });
    fe.close_crypto_session(42).unwrap();
    expected.push(Call::CloseCryptoSession { session_id: 42 });
    let _uffd: OwnedFd = fe.postcopy_advise().unwrap();
    expected.push(Call::PostcopyAdvise);
    fe.postcopy_listen().unwrap();
    expected.push(Call::PostcopyListen);
    assert!(fe.negotiation().postcopy_listening());
    fe.postcopy_end().unwrap();
    expected.push(Call::PostcopyEnd);
    assert!(!fe.negotiation().postcopy_listening());
    let ask = Inflight {
        num_queues: 2,
        queue_size: 256,
        ..Inflight::default()
    };
    let (inflight, inflight_fd) = fe.get_inflight_fd(&ask).unwrap();
    assert_eq!(inflight.mmap_size, 4096);
    expected.push(Call::GetInflightFd { info: ask });
    fe.set_inflight_fd(&inflight, inflight_fd.as_fd()).unwrap();
    expected.push(Call::SetInflightFd { info: inflight });
    fe.gpu_set_socket(null_fd().as_fd()).unwrap();
    expected.push(Call::GpuSetSocket);
    fe.vring_kick(0).unwrap();
    expected.push(Call::VringKick { index: 0 });
    fe.add_mem_reg(&r, mem.fd()).unwrap();
    expected.push(Call::AddMemReg {
        region: RegionMsg::new(r),
    });
    fe.rem_mem_reg(&r).unwrap();
    expected.push(Call::RemMemReg {
        region: RegionMsg::new(r),
    });
    fe.set_status(0x0f).unwrap();
    expected.push(Call::SetStatus { status: 0x0f });
    assert_eq!(fe.get_status().unwrap(), 0x0f);
    expected.push(Call::GetStatus);
    let uuid = [7u8; 16];
    assert!(fe.get_shared_object(uuid).unwrap().is_some());
    expected.push(Call::GetSharedObject {
        object: SharedObject { uuid },
    });
    assert!(fe
        .set_device_state_fd(0, 0, null_fd().as_fd())
        .unwrap()
        .is_none());
    expected.push(Call::SetDeviceStateFd {
        direction: 0,
        phase: 0,
    });
    fe.check_device_state().unwrap();
    expected.push(Call::CheckDeviceState);
    assert_eq!(fe.get_shmem_config().unwrap().nregions, 0);
    expected.push(Call::GetShmemConfig);
    fe.reset_device().unwrap();
    expected.push(Call::ResetDevice);
    fe.reset_owner().unwrap();
    expected.push(Call::ResetOwner);

    assert_eq!(h.rec.take_calls(), expected);
    // One call per front-end request, each once: a request added to the rows fails here
    // until this test calls its client method.
    let called: std::collections::BTreeSet<FrontendReq> =
        expected.iter().filter_map(Call::request).collect();
    assert_eq!(called, FrontendReq::all().collect());
    assert_eq!(
        expected.len(),
        FrontendReq::all().count(),
        "one call per front-end request"
    );

    drop(h.fe);
    h.server.join().unwrap().unwrap();
    assert_eq!(channel.stop().unwrap(), 0);
    assert_eq!(h.rec.take_calls(), [Call::Disconnected]);
}

#[test]
fn failing_backend_method_with_reply_ack_is_a_nack_and_the_connection_goes_on() {
    let mut h = serve(recording_backend());
    negotiate(&mut h, protocol_to_ack());
    h.rec.fail_on(FrontendReq::SetVringNum);
    let err = h.fe.set_vring_num(0, 256).unwrap_err();
    assert!(
        matches!(
            err,
            FrontendError::Nack {
                request: FrontendReq::SetVringNum,
                status
            } if status != 0
        ),
        "{err:?}"
    );
    assert!(err.is_refusal());
    assert!(!h.fe.is_broken());
    h.rec.succeed_on(FrontendReq::SetVringNum);
    h.fe.set_vring_num(0, 128).unwrap();
    assert_eq!(
        h.rec.take_calls(),
        [
            Call::SetVringNum { index: 0, num: 256 },
            Call::SetVringNum { index: 0, num: 128 }
        ]
    );
}

#[test]
fn failing_backend_method_with_acks_turned_off_goes_unnoticed() {
    let mut h = serve(recording_backend());
    negotiate(&mut h, protocol_to_ack());
    h.fe.set_request_acks(false);
    // A request without lasting effect: an unreported failure of one that sets up rings or
    // memory makes the server close the connection.
    h.rec.fail_on(FrontendReq::SetStatus);
    h.fe.set_status(0xf).unwrap();
    // A request with a reply orders the exchange: the server handled the one before.
    h.fe.get_features().unwrap();
    assert_eq!(
        h.rec.take_calls(),
        [Call::SetStatus { status: 0xf }, Call::GetFeatures]
    );
}

#[test]
fn failing_backend_method_without_reply_ack_negotiated_goes_unnoticed() {
    let mut h = serve(recording_backend());
    negotiate(&mut h, protocol_to_ack() - ProtocolFeatures::REPLY_ACK);
    assert!(!h.fe.reply_ack());
    h.rec.fail_on(FrontendReq::SetStatus);
    h.fe.set_status(0xf).unwrap();
    h.fe.get_features().unwrap();
    assert_eq!(
        h.rec.take_calls(),
        [Call::SetStatus { status: 0xf }, Call::GetFeatures]
    );
}

#[test]
fn request_not_negotiated_with_reply_ack_is_a_nack() {
    let mut h = serve(recording_backend());
    negotiate(
        &mut h,
        ProtocolFeatures::REPLY_ACK | ProtocolFeatures::MQ | ProtocolFeatures::CONFIG,
    );
    let err = h.fe.net_set_mtu(9000).unwrap_err();
    assert_eq!(err.nack_status(), Some(1), "{err:?}");
    // The back-end never saw it, and the session continues.
    assert_eq!(h.fe.get_queue_num().unwrap(), 2);
    assert_eq!(h.rec.take_calls(), [Call::GetQueueNum]);
}

#[test]
fn get_config_refused_by_backend_is_refused_error_and_connection_stays_usable() {
    let mut h = serve(recording_backend());
    negotiate(&mut h, protocol_to_ack());
    h.rec.fail_on(FrontendReq::GetConfig);
    let err = h.fe.get_config(0, 16, 0).unwrap_err();
    assert!(
        matches!(
            err,
            FrontendError::Refused {
                request: FrontendReq::GetConfig,
                ..
            }
        ),
        "{err:?}"
    );
    h.rec.succeed_on(FrontendReq::GetConfig);
    assert_eq!(h.fe.get_config(0, 4, 0).unwrap(), [0, 1, 2, 3]);
}

#[test]
fn second_set_owner_is_nacked_with_reply_ack() {
    let mut h = serve(recording_backend());
    negotiate(&mut h, protocol_to_ack());
    let err = h.fe.set_owner().unwrap_err();
    assert!(err.nack_status().is_some(), "{err:?}");
}

#[test]
fn descriptor_count_not_matching_regions_is_refused_locally_before_sending() {
    let mut h = serve(recording_backend());
    negotiate(&mut h, protocol_to_ack());
    let mem = GuestMemory::single(1 << 20).unwrap();
    let err = h.fe.set_mem_table(&[region(&mem)], &[]).unwrap_err();
    assert!(
        matches!(err, FrontendError::InvalidArgument { .. }),
        "{err:?}"
    );
    assert!(!h.fe.is_broken());
    h.fe.get_features().unwrap();
    assert_eq!(h.rec.take_calls(), [Call::GetFeatures]);
}

/// Records every back-end request it handles.
#[derive(Default, Clone)]
struct RecordingHandler(Arc<Mutex<Vec<String>>>);

impl RecordingHandler {
    fn push(&self, s: String) -> HandlerResult<()> {
        self.0.lock().unwrap().push(s);
        Ok(())
    }
}

impl BackendRequestHandler for RecordingHandler {
    fn iotlb_msg(&mut self, msg: &IotlbMsg) -> HandlerResult<()> {
        self.push(format!("iotlb {:#x}", msg.iova))
    }
    fn config_change(&mut self) -> HandlerResult<()> {
        self.push("config_change".into())
    }
    fn vring_host_notifier(&mut self, area: &VringArea, fd: Option<OwnedFd>) -> HandlerResult<()> {
        self.push(format!(
            "host_notifier {:#x} {}",
            area.u64_index_flags,
            fd.is_some()
        ))
    }
    fn vring_call(&mut self, index: u32) -> HandlerResult<()> {
        self.push(format!("call {index}"))
    }
    fn vring_err(&mut self, index: u32) -> HandlerResult<()> {
        self.push(format!("err {index}"))
    }
    fn shared_object_add(&mut self, uuid: &[u8; 16]) -> HandlerResult<()> {
        self.push(format!("add {}", uuid[0]))
    }
    fn shared_object_remove(&mut self, uuid: &[u8; 16]) -> HandlerResult<()> {
        self.push(format!("remove {}", uuid[0]))
    }
    fn shared_object_lookup(&mut self, uuid: &[u8; 16]) -> HandlerResult<Option<OwnedFd>> {
        self.push(format!("lookup {}", uuid[0]))?;
        Ok(Some(null_fd()))
    }
    fn shmem_map(&mut self, map: &ShmemMap, _fd: OwnedFd) -> HandlerResult<()> {
        self.push(format!("map {} {:#x}", map.shmid, map.len))
    }
    fn shmem_unmap(&mut self, map: &ShmemMap) -> HandlerResult<()> {
        self.push(format!("unmap {} {:#x}", map.shmid, map.len))
    }
}

#[test]
fn backend_channel_delivers_every_backend_request_to_the_handler_and_acks_it() {
    let mut h = serve(recording_backend());
    negotiate(&mut h, protocol_to_ack());
    let handler = RecordingHandler::default();
    let channel = h.fe.set_backend_req_fd(Box::new(handler.clone())).unwrap();
    let client = h.rec.backend_client().expect("back-end got the channel");

    let msg = vhost_test_support::wire::iotlb_miss(0x5000);
    client.iotlb_msg(msg).unwrap();
    client.config_change().unwrap();
    let notifier = null_fd();
    client
        .vring_host_notifier(1, 4096, 0, Some(notifier.as_fd()))
        .unwrap();
    client.vring_host_notifier(1, 0, 0, None).unwrap();
    client.vring_call(0).unwrap();
    client.vring_err(1).unwrap();
    client.shared_object_add([3; 16]).unwrap();
    client.shared_object_remove([3; 16]).unwrap();
    let looked_up = client.shared_object_lookup([4; 16]).unwrap();
    assert!(looked_up.is_some(), "the lookup reply carries the fd");
    let map = vhost_test_support::wire::shmem_map(2, 0x1000, 0x2000, 1);
    client.shmem_map(map, null_fd().as_fd()).unwrap();
    client.shmem_unmap(map).unwrap();

    let expected = [
        "iotlb 0x5000",
        "config_change",
        "host_notifier 0x1 true",
        "host_notifier 0x101 false",
        "call 0",
        "err 1",
        "add 3",
        "remove 3",
        "lookup 4",
        "map 2 0x2000",
        "unmap 2 0x2000",
    ];
    assert_eq!(*handler.0.lock().unwrap(), expected);
    drop(client);
    drop(h.fe);
    h.server.join().unwrap().unwrap();
    // The back-end dropped its end on disconnect: the channel thread ended by itself.
    assert_eq!(channel.stop().unwrap(), expected.len() as u64);
}

#[test]
fn backend_channel_default_handler_refuses_with_nonzero_ack() {
    let mut h = serve(recording_backend());
    negotiate(&mut h, protocol_to_ack());
    let _channel =
        h.fe.set_backend_req_fd(Box::new(UnsupportedHandler))
            .unwrap();
    let client = h.rec.backend_client().unwrap();
    let err = client.config_change().unwrap_err();
    assert!(
        matches!(err, ClientError::Refused { status, .. } if status != 0),
        "{err:?}"
    );
    let err = client.shared_object_lookup([1; 16]).unwrap_err();
    assert!(matches!(err, ClientError::Refused { .. }), "{err:?}");
    // Still serving.
    assert!(client.vring_call(0).is_err());
}

#[test]
fn backend_channel_without_reply_ack_sends_no_acks_but_delivers() {
    let mut h = serve(recording_backend());
    negotiate(&mut h, protocol_to_ack() - ProtocolFeatures::REPLY_ACK);
    let handler = RecordingHandler::default();
    let channel = h.fe.set_backend_req_fd(Box::new(handler.clone())).unwrap();
    // Without REPLY_ACK the request owes nothing: a sync point is needed.
    h.fe.get_features().unwrap();
    let client = h.rec.backend_client().unwrap();
    client.config_change().unwrap();
    client.vring_call(3).unwrap();
    // The lookup always replies, and orders the two before it.
    assert!(client.shared_object_lookup([9; 16]).unwrap().is_some());
    assert_eq!(
        *handler.0.lock().unwrap(),
        ["config_change", "call 3", "lookup 9"]
    );
    drop(client);
    drop(h.fe);
    h.server.join().unwrap().unwrap();
    assert_eq!(channel.stop().unwrap(), 3);
}

#[test]
fn memory_messages_with_xen_mmap_acked_carry_the_xen_layout() {
    let mut h = serve(recording_backend());
    negotiate(&mut h, ProtocolFeatures::all());
    let mem = GuestMemory::single(1 << 20).unwrap();
    let r = region(&mem);
    h.fe.set_mem_table(&[r], &[mem.fd()]).unwrap();
    h.fe.add_mem_reg(&r, mem.fd()).unwrap();
    h.fe.rem_mem_reg(&r).unwrap();
    let calls = h.rec.take_calls();
    assert_eq!(
        calls[0],
        Call::SetMemTable {
            table: vec![r],
            fds: 1
        }
    );
    assert!(matches!(calls[1], Call::AddMemReg { region: m } if m.region == r && m.xen.is_some()));
    assert!(matches!(calls[2], Call::RemMemReg { region: m } if m.region == r && m.xen.is_some()));
}
