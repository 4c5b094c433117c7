//! BACKEND_REQ is offered only to front-ends of a device that keeps the back-end channel
//! ([`VirtioDevice::uses_backend_channel`]): a channel handed over and dropped at once makes
//! QEMU print "Unexpected end-of-file" on every start.
#![cfg(unix)]

mod runtime_support;

use std::sync::{Arc, Mutex};

use runtime_support::{serve_in_thread, PatternDevice};
use vhost_backend::runtime::{
    read_config_bytes, DeviceBackend, DeviceError, Processed, QueueContext, VirtioDevice,
    RUNTIME_PROTOCOL_FEATURES,
};
use vhost_backend::BackendClient;
use vhost_frontend::{Session, SessionOptions};
use vhost_proto::ProtocolFeatures;

/// A device that keeps the channel (or only claims BACKEND_REQ in its protocol features,
/// without saying it uses the channel).
struct ChannelDevice {
    uses: bool,
    client: Mutex<Option<BackendClient>>,
}

impl ChannelDevice {
    fn new(uses: bool) -> Arc<Self> {
        Arc::new(ChannelDevice {
            uses,
            client: Mutex::new(None),
        })
    }
}

impl VirtioDevice for ChannelDevice {
    vhost_test_support::device_basics!(self; device_type: 4, queues: 1, max_queue_size: 64);
    fn protocol_features(&self) -> ProtocolFeatures {
        ProtocolFeatures::BACKEND_REQ
    }
    // A configuration space, so that CONFIG_CHANGE_MSG is allowed.
    fn config_size(&self) -> usize {
        4
    }
    fn read_config(&self, offset: u32, data: &mut [u8]) -> Result<(), DeviceError> {
        read_config_bytes(&[0; 4], offset, data)
    }
    fn uses_backend_channel(&self) -> bool {
        self.uses
    }
    fn set_backend_client(&self, client: BackendClient) {
        *self.client.lock().unwrap() = Some(client);
    }
    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        while let Some(req) = ctx.pop() {
            req.complete(0);
        }
        Ok(Processed::Drained)
    }
}

use vhost_test_support::ConfigWatcher;

#[test]
fn runtime_protocol_features_leave_backend_req_to_the_device() {
    assert!(!RUNTIME_PROTOCOL_FEATURES.contains(ProtocolFeatures::BACKEND_REQ));
}

#[test]
fn device_without_backend_channel_is_not_offered_backend_req() {
    let (dev, _) = PatternDevice::new(1);
    let b = DeviceBackend::new(dev).expect("backend");
    assert!(!b
        .offered_protocol_features()
        .contains(ProtocolFeatures::BACKEND_REQ));
    // Naming it in protocol_features is not enough.
    let b = DeviceBackend::new(ChannelDevice::new(false)).expect("backend");
    assert!(!b
        .offered_protocol_features()
        .contains(ProtocolFeatures::BACKEND_REQ));
}

#[test]
fn session_with_device_without_backend_channel_sets_up_no_channel() {
    let dev = ChannelDevice::new(false);
    let (fe, t) = serve_in_thread(DeviceBackend::new(Arc::clone(&dev)).expect("backend"));
    let opts = SessionOptions {
        queue_size: 64,
        ..SessionOptions::default()
    };
    let mut s = Session::new(fe, opts).expect("session");
    assert!(!s.acked_protocol().contains(ProtocolFeatures::BACKEND_REQ));
    assert!(s.backend_channel().is_none());
    s.start().expect("start");
    drop(s);
    t.join().expect("server thread");
    assert!(dev.client.lock().unwrap().is_none());
}

#[test]
fn device_using_backend_channel_is_offered_backend_req_and_gets_a_working_channel() {
    let dev = ChannelDevice::new(true);
    let b = DeviceBackend::new(Arc::clone(&dev)).expect("backend");
    assert!(b
        .offered_protocol_features()
        .contains(ProtocolFeatures::BACKEND_REQ));
    let (fe, t) = serve_in_thread(b);
    let watcher = ConfigWatcher::default();
    let opts = SessionOptions {
        queue_size: 64,
        backend_handler: Some(Box::new(watcher.clone())),
        ..SessionOptions::default()
    };
    let mut s = Session::new(fe, opts).expect("session");
    assert!(s.acked_protocol().contains(ProtocolFeatures::BACKEND_REQ));
    s.start().expect("start");
    let client = dev
        .client
        .lock()
        .unwrap()
        .take()
        .expect("channel handed over");
    client.config_change().expect("config change acked");
    assert_eq!(*watcher.0.lock().unwrap(), 1);
    drop(client);
    drop(s);
    t.join().expect("server thread");
}
