//! `Session` against the in-process server and the recording back-end: the handshake and
//! start sequences QEMU 7.2 sends, their variants, and stopping and restarting a queue.

use std::thread::JoinHandle;
use std::time::Duration;

use vhost_backend::test_utils::{Call, Recording, RecordingBackend};
use vhost_backend::{BackendServer, ServerError};
use vhost_frontend::session::status;
use vhost_frontend::{Frontend, Sequence, Session, SessionError, SessionOptions};
use vhost_proto::{virtio, MemoryRegion, ProtocolFeatures, RegionMsg, VringAddr};
use vhost_transport::Connection;

fn offered() -> u64 {
    virtio::bit(virtio::VERSION_1)
        | virtio::bit(virtio::PROTOCOL_FEATURES)
        | virtio::bit(virtio::RING_EVENT_IDX)
        | virtio::bit(virtio::RING_PACKED)
        | virtio::bit(virtio::LOG_ALL)
}

fn serve(backend: RecordingBackend) -> (Frontend, Recording, JoinHandle<Result<(), ServerError>>) {
    let rec = backend.recording();
    let (server_end, client_end) = Connection::pair().unwrap();
    let mut server = BackendServer::new(server_end, backend).unwrap();
    rec.take_calls();
    let t = std::thread::spawn(move || server.serve());
    (Frontend::new(client_end), rec, t)
}

fn regions_of(s: &Session) -> Vec<MemoryRegion> {
    vhost_test_support::wire::regions(s.memory())
}

fn vring_addr(s: &Session, i: usize) -> VringAddr {
    let d = s.driver(i).unwrap();
    let m = s.memory();
    VringAddr {
        index: i as u32,
        flags: 0,
        desc: m.gpa_to_uva(d.desc_table().0).unwrap(),
        used: m.gpa_to_uva(d.used_ring().0).unwrap(),
        avail: m.gpa_to_uva(d.avail_ring().0).unwrap(),
        log: d.used_ring().0,
    }
}

/// Queue 0 enabled, then the status read and set to 0x0f (DRIVER_OK with FEATURES_OK).
fn enable_queue_0_then_driver_ok() -> [Call; 3] {
    [
        Call::SetVringEnable {
            index: 0,
            enable: true,
        },
        Call::GetStatus,
        Call::SetStatus { status: 0x0f },
    ]
}

fn queue_setup(s: &Session, i: usize, base: u32) -> Vec<Call> {
    let index = i as u32;
    vec![
        Call::SetVringNum { index, num: 256 },
        Call::SetVringBase { index, base },
        Call::SetVringAddr {
            addr: vring_addr(s, i),
        },
        Call::SetVringKick {
            index: i as u8,
            fd: true,
        },
    ]
}

#[test]
fn session_sends_qemu_72_realize_and_start_sequence_with_two_queues() {
    let backend = RecordingBackend::new().with_features(offered());
    let (fe, rec, t) = serve(backend);
    let opts = SessionOptions {
        num_queues: 2,
        queue_size: 256,
        config_size: Some(16),
        ..SessionOptions::default()
    };
    let mut s = Session::new(fe, opts).unwrap();
    let acked_protocol = ProtocolFeatures::all() - vhost_frontend::session::DEFAULT_PROTOCOL_MASK;
    let mut expected = vec![
        Call::GetFeatures,
        Call::GetProtocolFeatures,
        Call::SetProtocolFeatures {
            features: acked_protocol,
        },
        Call::GetQueueNum,
        Call::GetMaxMemSlots,
        Call::SetBackendReqFd,
        Call::SetOwner,
        Call::GetFeatures,
    ];
    for index in 0..2u8 {
        expected.push(Call::SetVringCall { index, fd: true });
        expected.push(Call::SetVringErr { index, fd: true });
    }
    expected.push(Call::GetConfig {
        offset: 0,
        size: 16,
        flags: 0,
    });
    assert_eq!(rec.take_calls(), expected);
    assert_eq!(s.config().unwrap(), (0..16).collect::<Vec<u8>>());
    assert_eq!(s.queue_num(), Some(2));
    assert_eq!(s.max_mem_slots(), Some(32));

    s.start().unwrap();
    // LOG_ALL and RING_PACKED are masked by default; EVENT_IDX and bit 30 are acked.
    let features = offered() & !virtio::bit(virtio::LOG_ALL) & !virtio::bit(virtio::RING_PACKED);
    assert_eq!(s.features(), features);
    // The recording back-end reports status 0 at every GET_STATUS, so each SET_STATUS adds
    // to 0.
    let mut expected = vec![
        Call::SetVringCall { index: 0, fd: true },
        Call::SetVringCall { index: 1, fd: true },
        Call::SetFeatures { features },
        Call::GetStatus,
        Call::SetStatus {
            status: status::FEATURES_OK,
        },
    ];
    let regions = regions_of(&s);
    expected.extend(regions.iter().map(|r| Call::AddMemReg {
        region: RegionMsg::new(*r),
    }));
    expected.extend(queue_setup(&s, 0, 0));
    expected.extend(queue_setup(&s, 1, 0));
    expected.push(Call::SetVringEnable {
        index: 0,
        enable: true,
    });
    expected.push(Call::SetVringEnable {
        index: 1,
        enable: true,
    });
    expected.push(Call::GetStatus);
    expected.push(Call::SetStatus {
        status: status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
    });
    // Generic devices send the call fds again once the rings are enabled.
    expected.push(Call::SetVringCall { index: 0, fd: true });
    expected.push(Call::SetVringCall { index: 1, fd: true });
    assert_eq!(rec.take_calls(), expected);

    // Stopping the device: status 0, every ring disabled, then every base read, then the
    // call fds again.
    assert_eq!(s.stop().unwrap(), [0, 0]);
    let mut expected = vec![
        Call::SetStatus { status: 0 },
        Call::SetVringEnable {
            index: 0,
            enable: false,
        },
        Call::SetVringEnable {
            index: 1,
            enable: false,
        },
        Call::GetVringBase { index: 0 },
        Call::GetVringBase { index: 1 },
    ];
    expected.push(Call::SetVringCall { index: 0, fd: true });
    expected.push(Call::SetVringCall { index: 1, fd: true });
    assert_eq!(rec.take_calls(), expected);

    // Ring addresses are front-end virtual addresses, not guest-physical ones.
    let a = vring_addr(&s, 1);
    assert_ne!(a.desc, s.driver(1).unwrap().desc_table().0);

    drop(s);
    t.join().unwrap().unwrap();
}

#[test]
fn session_without_mem_slots_sends_set_mem_table_at_every_start() {
    let backend = RecordingBackend::new().with_features(offered());
    let (fe, rec, _t) = serve(backend);
    let opts = SessionOptions {
        mask_protocol: vhost_frontend::session::DEFAULT_PROTOCOL_MASK
            | ProtocolFeatures::CONFIGURE_MEM_SLOTS
            | ProtocolFeatures::STATUS,
        memory: vec![
            vhost_frontend::RegionSpec {
                guest_phys_addr: 0,
                size: 1 << 20,
                user_addr: 0x7f00_0000_0000,
            },
            vhost_frontend::RegionSpec {
                guest_phys_addr: 0x1_0000_0000,
                size: 1 << 20,
                user_addr: 0x7e00_0000_0000,
            },
        ],
        ..SessionOptions::default()
    };
    let mut s = Session::new(fe, opts).unwrap();
    rec.take_calls();
    s.start().unwrap();
    let table = Call::SetMemTable {
        table: regions_of(&s),
        fds: 2,
    };
    let calls = rec.take_calls();
    assert_eq!(calls[2], table);
    assert!(!calls
        .iter()
        .any(|c| matches!(c, Call::AddMemReg { region: _ })));

    // Stop and start again: the table comes again, the queue resumes at its base.
    let base = s.stop_queue(0).unwrap();
    assert_eq!(base, 0);
    assert_eq!(
        rec.take_calls(),
        [
            Call::SetVringEnable {
                index: 0,
                enable: false
            },
            Call::GetVringBase { index: 0 },
            Call::SetVringCall { index: 0, fd: true },
        ]
    );
    s.start().unwrap();
    assert_eq!(rec.take_calls()[2], table);
}

#[test]
fn session_playing_old_frontend_skips_protocol_features_and_vring_enable() {
    let backend = RecordingBackend::new().with_features(offered());
    let (fe, rec, _t) = serve(backend);
    let opts = SessionOptions {
        protocol_features: false,
        event_idx: false,
        ..SessionOptions::default()
    };
    let mut s = Session::new(fe, opts).unwrap();
    s.start().unwrap();
    // Nothing is acked without REPLY_ACK: a request with a reply orders the exchange.
    s.frontend().get_features().unwrap();
    let calls = rec.take_calls();
    assert!(!calls.iter().any(|c| matches!(
        c,
        Call::GetProtocolFeatures
            | Call::SetProtocolFeatures { features: _ }
            | Call::SetVringEnable { .. }
    )));
    let features = virtio::bit(virtio::VERSION_1);
    assert!(calls.contains(&Call::SetFeatures { features }), "{calls:?}");
    assert!(calls.iter().any(|c| matches!(c, Call::SetMemTable { .. })));
    assert_eq!(s.features(), features);
}

#[test]
fn stop_queue_returns_backend_base_and_restart_sends_it_back() {
    let mut backend = RecordingBackend::new().with_features(offered());
    backend.vring_base = 0;
    let (fe, rec, _t) = serve(backend);
    let mut s = Session::new(fe, SessionOptions::default()).unwrap();
    s.start().unwrap();
    rec.take_calls();
    let base = s.stop_queue(0).unwrap();
    s.restart_queue(0, base + 3).unwrap();
    let mut expected = vec![
        Call::SetStatus { status: 0 },
        Call::SetVringEnable {
            index: 0,
            enable: false,
        },
        Call::GetVringBase { index: 0 },
        Call::SetVringCall { index: 0, fd: true },
        Call::SetVringCall { index: 0, fd: true },
    ];
    expected.extend(queue_setup(&s, 0, 3));
    expected.extend(enable_queue_0_then_driver_ok());
    expected.push(Call::SetVringCall { index: 0, fd: true });
    assert_eq!(rec.take_calls(), expected);
    assert_eq!(s.driver(0).unwrap().avail_idx(), 3);

    // A split ring's index is 16 bits: a larger base is refused before anything is sent.
    s.stop_queue(0).unwrap();
    rec.take_calls();
    let err = s.restart_queue(0, 0x1_0000).unwrap_err();
    assert!(matches!(err, SessionError::Options(_)), "{err:?}");
    assert_eq!(rec.take_calls(), []);
}

#[test]
fn blk_sequence_matches_a_qemu_72_boot_log() {
    // The back-end keeps FEATURES_OK once set, as a real one does.
    let mut backend = RecordingBackend::new().with_features(offered());
    backend.status = status::FEATURES_OK;
    backend.vring_base = 11;
    let (fe, rec, _t) = serve(backend);
    let opts = SessionOptions {
        sequence: Sequence::Blk,
        ..SessionOptions::default()
    };
    let mut s = Session::new(fe, opts).unwrap();
    rec.take_calls();
    s.start().unwrap();
    let features = s.features();
    let mut expected = vec![
        Call::SetFeatures { features },
        Call::GetStatus,
        Call::SetVringCall { index: 0, fd: true },
        Call::SetFeatures { features },
        Call::GetStatus,
    ];
    let regions = regions_of(&s);
    expected.extend(regions.iter().map(|r| Call::AddMemReg {
        region: RegionMsg::new(*r),
    }));
    expected.extend(queue_setup(&s, 0, 0));
    expected.extend(enable_queue_0_then_driver_ok());
    assert_eq!(rec.take_calls(), expected);

    // Stop: no SET_VRING_CALL afterwards for blk.
    assert_eq!(s.stop_queue(0).unwrap(), 11);
    assert_eq!(
        rec.take_calls(),
        [
            Call::SetStatus { status: 0 },
            Call::SetVringEnable {
                index: 0,
                enable: false
            },
            Call::GetVringBase { index: 0 },
        ]
    );
    // Start again: with memory slots, no memory message.
    s.start().unwrap();
    let calls = rec.take_calls();
    assert_eq!(
        calls[..3],
        [
            Call::SetFeatures { features },
            Call::GetStatus,
            Call::SetVringCall { index: 0, fd: true },
        ]
    );
    assert!(!calls
        .iter()
        .any(|c| matches!(c, Call::AddMemReg { region: _ })));
}

#[test]
fn session_refuses_more_queues_than_the_backend_has() {
    let backend = RecordingBackend::new()
        .with_features(offered())
        .with_queues(1);
    let (fe, _rec, _t) = serve(backend);
    let opts = SessionOptions {
        num_queues: 2,
        ..SessionOptions::default()
    };
    let err = Session::new(fe, opts).unwrap_err();
    assert!(matches!(err, SessionError::Options(_)), "{err:?}");
}

#[test]
fn wait_used_without_a_device_times_out() {
    let backend = RecordingBackend::new().with_features(offered());
    let (fe, _rec, _t) = serve(backend);
    let mut s = Session::new(fe, SessionOptions::default()).unwrap();
    s.start().unwrap();
    let buf = s.memory().alloc(64, 8).unwrap();
    let err = s
        .round_trip(0, &[(buf, 64, true)], Duration::from_millis(50))
        .unwrap_err();
    assert!(
        matches!(err, SessionError::Timeout { queue: 0, .. }),
        "{err:?}"
    );
    assert_eq!(s.driver(0).unwrap().in_flight(), 1);
}

use vhost_test_support::ConfigWatcher;

#[test]
fn session_serves_backend_channel_with_the_given_handler() {
    let backend = RecordingBackend::new().with_features(offered());
    let (fe, rec, _t) = serve(backend);
    let watcher = ConfigWatcher::default();
    let opts = SessionOptions {
        backend_handler: Some(Box::new(watcher.clone())),
        ..SessionOptions::default()
    };
    let _s = Session::new(fe, opts).unwrap();
    let client = rec.backend_client().unwrap();
    client.config_change().unwrap();
    client.config_change().unwrap();
    assert_eq!(*watcher.0.lock().unwrap(), 2);
}

#[test]
fn session_with_gpa_addresses_acked_sends_guest_physical_ring_addresses() {
    let backend = RecordingBackend::new().with_features(offered());
    let (fe, rec, _t) = serve(backend);
    let opts = SessionOptions {
        mask_protocol: ProtocolFeatures::XEN_MMAP,
        ..SessionOptions::default()
    };
    let mut s = Session::new(fe, opts).unwrap();
    assert!(s.acked_protocol().contains(ProtocolFeatures::GPA_ADDRESSES));
    s.start().unwrap();
    let d = s.driver(0).unwrap();
    let addr = rec
        .take_calls()
        .into_iter()
        .find_map(|c| match c {
            Call::SetVringAddr { addr: a } => Some(a),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (addr.desc, addr.avail, addr.used),
        (d.desc_table().0, d.avail_ring().0, d.used_ring().0)
    );
}

/// start_logging changes the session's state only once the back-end took each step: a
/// refused SET_FEATURES leaves the features as they were, a refused SET_VRING_ADDR turns
/// logging back off (the features sent again without VHOST_F_LOG_ALL).
#[test]
fn start_logging_refused_leaves_logging_off_and_the_features_unchanged() {
    use vhost_proto::FrontendReq;
    let (fe, rec, _t) = serve(RecordingBackend::new().with_features(offered()));
    let mut s = Session::new(fe, SessionOptions::default()).unwrap();
    s.start().unwrap();
    let before = s.features();
    let log_all = virtio::bit(virtio::LOG_ALL);
    assert_eq!(before & log_all, 0);
    let log = vhost_frontend::DirtyLogArea::new(64 << 20).unwrap();

    rec.fail_on(FrontendReq::SetFeatures);
    assert!(s.start_logging(&log).is_err());
    assert!(!s.logging());
    assert_eq!(s.features(), before, "SET_FEATURES was refused");
    rec.succeed_on(FrontendReq::SetFeatures);

    rec.fail_on(FrontendReq::SetVringAddr);
    rec.take_calls();
    assert!(s.start_logging(&log).is_err());
    assert!(!s.logging(), "SET_VRING_ADDR was refused");
    assert_eq!(s.features(), before);
    let features: Vec<u64> = rec
        .take_calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::SetFeatures { features: f } => Some(f),
            _ => None,
        })
        .collect();
    assert_eq!(features, [before | log_all, before], "turned back off");
}
