//! What a [`Session`](super::Session) negotiates and builds.

use std::time::Duration;

use vhost_proto::{virtio, ProtocolFeatures};

use crate::backend_channel::BackendRequestHandler;
use crate::guest_memory::RegionSpec;

/// Virtio features a session never acks by default: dirty logging for every write
/// (`VHOST_F_LOG_ALL`, acked by [`Session::start_logging`](super::Session::start_logging)
/// only, as QEMU acks it only while migrating), ACCESS_PLATFORM (the
/// session sends no IOTLB entries) and packed rings (unmask RING_PACKED to run the
/// session's drivers with the packed layout).
pub const DEFAULT_FEATURE_MASK: u64 = virtio::bit(virtio::LOG_ALL)
    | virtio::bit(virtio::ACCESS_PLATFORM)
    | virtio::bit(virtio::RING_PACKED);

/// Protocol features a session never acks by default: XEN_MMAP (other region layout, Xen
/// mappings), GET_VRING_BASE_INFLIGHT (GET_VRING_BASE would no longer drain the ring) and
/// GPA_ADDRESSES (ring addresses would be guest-physical; QEMU 7.2 sends its own virtual
/// addresses, which is what back-ends must translate). Unmask GPA_ADDRESSES to run the
/// session in that mode.
pub const DEFAULT_PROTOCOL_MASK: ProtocolFeatures = ProtocolFeatures::XEN_MMAP
    .union(ProtocolFeatures::GET_VRING_BASE_INFLIGHT)
    .union(ProtocolFeatures::GPA_ADDRESSES);

/// Which of QEMU 7.2's start and stop orders a [`Session`](super::Session) follows: they
/// differ between vhost-user-blk and the other (generic) vhost-user devices. See
/// [`Session::start`](super::Session::start) and [`Session::stop`](super::Session::stop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sequence {
    /// rng, vsock, gpio, i2c, fs, scsi: SET_VRING_CALL per queue before SET_FEATURES, and
    /// again after the rings are enabled and after they are stopped.
    #[default]
    Generic,
    /// vhost-user-blk: SET_FEATURES before and after SET_VRING_CALL per queue; no
    /// SET_VRING_CALL after enabling or stopping the rings.
    Blk,
}

/// Options of a [`Session`](super::Session). `Default` gives: one queue of 256, EVENT_IDX
/// when offered, every offered feature acked except [`DEFAULT_FEATURE_MASK`] and
/// [`DEFAULT_PROTOCOL_MASK`], 16 MiB of guest memory in one region, acks requested when
/// REPLY_ACK is negotiated, replies awaited at most 10 s, no GET_CONFIG, the
/// [`Sequence::Generic`] start and stop order.
pub struct SessionOptions {
    /// Number of queues to set up (default 1). Must not exceed the back-end's GET_QUEUE_NUM
    /// answer when MQ is negotiated.
    pub num_queues: u16,
    /// Size of every queue (a power of two).
    pub queue_size: u16,
    /// Virtio feature bits never acked, even when offered.
    pub mask_features: u64,
    /// Protocol features never acked, even when offered.
    pub mask_protocol: ProtocolFeatures,
    /// Ack VIRTIO_RING_F_EVENT_IDX when offered (and run the driver with its rules).
    pub event_idx: bool,
    /// Speak protocol features (GET/SET_PROTOCOL_FEATURES, bit 30 acked, SET_VRING_ENABLE).
    /// `false` plays an old front-end: bit 30 is not acked and rings start enabled.
    pub protocol_features: bool,
    /// Guest memory regions; empty means one region of `memory_size` bytes.
    pub memory: Vec<RegionSpec>,
    /// Size of the single default region.
    pub memory_size: u64,
    /// Bytes of configuration space to read with GET_CONFIG at the end of the handshake
    /// (when CONFIG is negotiated); `None` skips it.
    pub config_size: Option<u32>,
    /// Indirect table capacity per head (0: no indirect tables).
    pub max_indirect: u16,
    /// Send NEED_REPLY (and wait for the ack) once REPLY_ACK is negotiated.
    pub request_acks: bool,
    /// Longest wait for a control-plane reply (`None`: forever).
    pub read_timeout: Option<Duration>,
    /// Serves the back-end channel when BACKEND_REQ is negotiated (default: a handler that
    /// refuses everything).
    pub backend_handler: Option<Box<dyn BackendRequestHandler>>,
    /// The order of the start and stop messages.
    pub sequence: Sequence,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            num_queues: 1,
            queue_size: 256,
            mask_features: DEFAULT_FEATURE_MASK,
            mask_protocol: DEFAULT_PROTOCOL_MASK,
            event_idx: true,
            protocol_features: true,
            memory: Vec::new(),
            memory_size: 16 << 20,
            config_size: None,
            max_indirect: 0,
            request_acks: true,
            read_timeout: Some(Duration::from_secs(10)),
            backend_handler: None,
            sequence: Sequence::Generic,
        }
    }
}

impl std::fmt::Debug for SessionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionOptions")
            .field("num_queues", &self.num_queues)
            .field("queue_size", &self.queue_size)
            .field("mask_features", &format_args!("{:#x}", self.mask_features))
            .field("mask_protocol", &self.mask_protocol)
            .field("event_idx", &self.event_idx)
            .field("protocol_features", &self.protocol_features)
            .field("memory", &self.memory)
            .field("memory_size", &self.memory_size)
            .field("config_size", &self.config_size)
            .field("max_indirect", &self.max_indirect)
            .field("request_acks", &self.request_acks)
            .field("read_timeout", &self.read_timeout)
            .field("backend_handler", &self.backend_handler.is_some())
            .field("sequence", &self.sequence)
            .finish()
    }
}
