//! The [`VirtioDevice`] trait: what a device tells the runtime, and the per-wake-up
//! [`QueueContext`] it processes requests through.

use std::os::fd::RawFd;

use vhost_proto::ProtocolFeatures;

pub use super::request::QueueContext;
use crate::BackendClient;

/// Why a device operation failed. Converted to [`crate::BackendError`] for the front-end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    /// The device does not implement this operation.
    #[error("not supported by this device")]
    NotSupported,
    /// A configuration access outside the device's configuration space.
    #[error("configuration access at {offset:#x}+{len} outside the {size}-byte space")]
    ConfigOutOfRange {
        /// Offset asked for.
        offset: u32,
        /// Length asked for.
        len: usize,
        /// Size of the configuration space.
        size: usize,
    },
    /// The queue itself is broken (its rings are outside guest memory, ...).
    #[error("queue error: {0}")]
    Queue(#[from] virtio_queue::Error),
    /// A system call failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Anything else the device reports.
    #[error("{0}")]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// What [`VirtioDevice::process_queue`] did with the available ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Processed {
    /// Took every chain it was offered ([`QueueContext::pop`] returned `None`, or
    /// [`QueueContext::serve_next`] `false`). The
    /// runtime re-enables notifications and looks once more for chains that raced in.
    Drained,
    /// Stopped early on purpose (rate limit, back-pressure). Notifications stay off and the
    /// runtime does not call again until the next kick or a device event asks for it
    /// ([`VirtioDevice::handle_event`] returning `true`).
    Paused,
}

/// A descriptor the device wants its worker to watch, with the token
/// [`VirtioDevice::handle_event`] receives when it becomes readable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceFd {
    /// The descriptor (owned by the device; it must stay open while the device lives).
    pub fd: RawFd,
    /// The device's token for it.
    pub token: u32,
}

/// A virtio device served over vhost-user by [`crate::runtime::DeviceBackend`].
///
/// The device is shared between the control thread and its worker threads, hence `&self`
/// everywhere: keep mutable state behind the device's own locks or atomics, and nothing on
/// the per-request path that blocks other queues.
///
/// Required: [`device_type`](Self::device_type), [`num_queues`](Self::num_queues),
/// [`max_queue_size`](Self::max_queue_size), [`features`](Self::features),
/// [`process_queue`](Self::process_queue). Everything else has a documented default.
pub trait VirtioDevice: Send + Sync + 'static {
    /// The virtio device id (2 = block, 4 = entropy, ...; see [`device_type_name`]).
    fn device_type(&self) -> u32;

    /// Number of queues (at most 256: vring fd messages carry an 8-bit index).
    fn num_queues(&self) -> usize;

    /// Largest size the driver may give each queue (a power of two, at most 32768).
    fn max_queue_size(&self) -> u16;

    /// Device-specific virtio feature bits. The runtime adds what it implements itself
    /// ([`RUNTIME_FEATURES`](crate::runtime::RUNTIME_FEATURES)).
    fn features(&self) -> u64;

    /// Protocol features the device implements on top of what the runtime implements
    /// ([`RUNTIME_PROTOCOL_FEATURES`](crate::runtime::RUNTIME_PROTOCOL_FEATURES)). None by
    /// default. BACKEND_REQ is offered only when
    /// [`uses_backend_channel`](Self::uses_backend_channel) says so (named here without it,
    /// it is left out with a warning).
    fn protocol_features(&self) -> ProtocolFeatures {
        ProtocolFeatures::empty()
    }

    /// Size of the configuration space in bytes; CONFIG is offered when non-zero. 0 by
    /// default.
    fn config_size(&self) -> usize {
        0
    }

    /// Reads `data.len()` bytes of configuration space at `offset` (range already checked
    /// against [`config_size`](Self::config_size)). Not supported by default.
    fn read_config(&self, offset: u32, data: &mut [u8]) -> Result<(), DeviceError> {
        let _ = (offset, data);
        Err(DeviceError::NotSupported)
    }

    /// Writes configuration space at `offset` (range already checked). Not supported by
    /// default.
    fn write_config(&self, offset: u32, data: &[u8]) -> Result<(), DeviceError> {
        let _ = (offset, data);
        Err(DeviceError::NotSupported)
    }

    /// The driver acked these virtio features (SET_FEATURES; may come more than once).
    /// Ignored by default.
    fn set_acked_features(&self, features: u64) {
        let _ = features;
    }

    /// Takes the queue's available requests ([`QueueContext::pop`], or
    /// [`QueueContext::serve_next`] to serve one on the spot). Called by the queue's
    /// worker after a kick, when the ring becomes enabled, and when
    /// [`handle_event`](Self::handle_event) asks; never concurrently for the same queue.
    ///
    /// Each popped [`Request`](super::Request) is completed with
    /// [`Request::complete`](super::Request::complete), before this returns or later from
    /// any thread (an I/O engine's completion, a device event); one served with `serve_next`
    /// is completed when its closure returns. Any number may be outstanding, up to the ring
    /// size. Stopping the ring waits for them (within a bound)
    /// before [`reset`](Self::reset) is called, so a request must complete on its own — its
    /// I/O finishing — not only when the device is reset; during the wait the runtime calls
    /// this method once more (it pops nothing), for devices that reap completions here.
    /// Bad chains are the device's to answer (error status); an `Err` means the queue itself
    /// is unusable and is logged and reported on the ring's error eventfd.
    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError>;

    /// Which worker thread serves `queue`: queues with the same number share a thread. One
    /// thread per queue by default.
    fn worker_of(&self, queue: usize) -> usize {
        queue
    }

    /// Extra descriptors worker `worker` watches besides its kick fds (timers, completion
    /// eventfds, ...). None by default. Asked each time the worker starts.
    fn worker_fds(&self, worker: usize) -> Vec<DeviceFd> {
        let _ = worker;
        Vec::new()
    }

    /// One of [`worker_fds`](Self::worker_fds) is readable (the device reads or resets it).
    /// Returns `true` to have the worker process every started, enabled queue it serves.
    fn handle_event(&self, worker: usize, token: u32) -> Result<bool, DeviceError> {
        let _ = (worker, token);
        Ok(false)
    }

    /// Back to the power-on state (RESET_DEVICE, RESET_OWNER, front-end disconnect). Every
    /// worker is stopped when this is called. Nothing by default.
    fn reset(&self) {}

    /// Whether the device keeps the back-end → front-end channel
    /// ([`set_backend_client`](Self::set_backend_client)). When it does, the runtime offers
    /// [`ProtocolFeatures::BACKEND_REQ`]; when it does not, BACKEND_REQ is never offered,
    /// even if [`protocol_features`](Self::protocol_features) names it, so the front-end
    /// does not set up a channel that nobody keeps open. `false` by default.
    fn uses_backend_channel(&self) -> bool {
        false
    }

    /// The back-end → front-end channel (BACKEND_REQ), e.g. to announce a configuration
    /// change. Called only for a device whose
    /// [`uses_backend_channel`](Self::uses_backend_channel) is `true`. Dropped by default.
    ///
    /// A request the front-end leaves unanswered past the ack timeout breaks the channel
    /// for good: the client closes its socket (the front-end sees a hangup), every later
    /// request fails with [`ClientError::ChannelBroken`](crate::ClientError::ChannelBroken)
    /// and [`BackendClient::is_broken`] is true. The runtime keeps serving the session; a
    /// device that depends on the channel checks `is_broken` (or the error) and degrades, and
    /// a new SET_BACKEND_REQ_FD calls this again with a fresh client.
    fn set_backend_client(&self, client: BackendClient) {
        let _ = client;
    }

    /// Whether the device implements [`snapshot`](Self::snapshot) and
    /// [`restore`](Self::restore). When it does, the runtime offers
    /// [`ProtocolFeatures::DEVICE_STATE`] and moves the state over SET_DEVICE_STATE_FD (see
    /// [`DeviceBackend`](crate::runtime::DeviceBackend)); when it does not, DEVICE_STATE is
    /// never offered, even if [`protocol_features`](Self::protocol_features) names it.
    /// `false` by default.
    fn supports_state_transfer(&self) -> bool {
        false
    }

    /// Whether the runtime may track this device's requests in an inflight area and
    /// resubmit, after a back-end restart, the ones a previous back-end left in flight. When
    /// it does, the runtime offers [`ProtocolFeatures::INFLIGHT_SHMFD`] and serves
    /// GET/SET_INFLIGHT_FD; a resubmitted request comes through
    /// [`QueueContext::pop`](crate::runtime::QueueContext::pop) like any other, so the
    /// device must be able to execute a request again (block reads and writes can; a
    /// request with side effects outside the guest's buffers may not). `false` by default.
    fn supports_inflight_tracking(&self) -> bool {
        false
    }

    /// Whether the runtime offers VIRTIO_F_RING_PACKED (bit 34) for this device: its
    /// requests come through the same [`QueueContext::pop`](crate::runtime::QueueContext::pop)
    /// whatever the layout, so `true` by default; a device that must not be driven with
    /// packed rings (a front-end or guest known to mishandle them) answers `false`.
    fn supports_packed_ring(&self) -> bool {
        true
    }

    /// Serialises device state for migration. Called from the control thread while every
    /// ring is stopped; the bytes are opaque to the front-end and come back unchanged to
    /// [`restore`](Self::restore), possibly in another process. Not supported by default.
    fn snapshot(&self) -> Result<Vec<u8>, DeviceError> {
        Err(DeviceError::NotSupported)
    }

    /// Restores state produced by [`snapshot`](Self::snapshot). Called from a helper thread
    /// while every ring is stopped; no ring starts before it returns. `state` comes from the
    /// front-end: check it and refuse what is malformed with an error. Not supported by
    /// default.
    fn restore(&self, state: &[u8]) -> Result<(), DeviceError> {
        let _ = state;
        Err(DeviceError::NotSupported)
    }
}

impl<T: VirtioDevice + ?Sized> VirtioDevice for std::sync::Arc<T> {
    fn device_type(&self) -> u32 {
        (**self).device_type()
    }
    fn num_queues(&self) -> usize {
        (**self).num_queues()
    }
    fn max_queue_size(&self) -> u16 {
        (**self).max_queue_size()
    }
    fn features(&self) -> u64 {
        (**self).features()
    }
    fn protocol_features(&self) -> ProtocolFeatures {
        (**self).protocol_features()
    }
    fn config_size(&self) -> usize {
        (**self).config_size()
    }
    fn read_config(&self, offset: u32, data: &mut [u8]) -> Result<(), DeviceError> {
        (**self).read_config(offset, data)
    }
    fn write_config(&self, offset: u32, data: &[u8]) -> Result<(), DeviceError> {
        (**self).write_config(offset, data)
    }
    fn set_acked_features(&self, features: u64) {
        (**self).set_acked_features(features)
    }
    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        (**self).process_queue(ctx)
    }
    fn worker_of(&self, queue: usize) -> usize {
        (**self).worker_of(queue)
    }
    fn worker_fds(&self, worker: usize) -> Vec<DeviceFd> {
        (**self).worker_fds(worker)
    }
    fn handle_event(&self, worker: usize, token: u32) -> Result<bool, DeviceError> {
        (**self).handle_event(worker, token)
    }
    fn reset(&self) {
        (**self).reset()
    }
    fn uses_backend_channel(&self) -> bool {
        (**self).uses_backend_channel()
    }
    fn supports_inflight_tracking(&self) -> bool {
        (**self).supports_inflight_tracking()
    }
    fn supports_packed_ring(&self) -> bool {
        (**self).supports_packed_ring()
    }
    fn set_backend_client(&self, client: BackendClient) {
        (**self).set_backend_client(client)
    }
    fn supports_state_transfer(&self) -> bool {
        (**self).supports_state_transfer()
    }
    fn snapshot(&self) -> Result<Vec<u8>, DeviceError> {
        (**self).snapshot()
    }
    fn restore(&self, state: &[u8]) -> Result<(), DeviceError> {
        (**self).restore(state)
    }
}

/// The `type` name QEMU's vhost-user.json uses for a virtio device id, if it has one.
pub fn device_type_name(virtio_id: u32) -> Option<&'static str> {
    Some(match virtio_id {
        1 => "net",
        2 => "block",
        3 => "console",
        4 => "rng",
        5 => "balloon",
        7 => "rpmsg",
        8 => "scsi",
        9 => "9p",
        11 => "rproc-serial",
        12 => "caif",
        16 => "gpu",
        18 => "input",
        19 => "vsock",
        20 => "crypto",
        26 => "fs",
        _ => return None,
    })
}

/// Copies `data.len()` bytes of `space` at `offset` into `data`, or says why not. A helper
/// for [`VirtioDevice::read_config`] over a plain byte image.
pub fn read_config_bytes(space: &[u8], offset: u32, data: &mut [u8]) -> Result<(), DeviceError> {
    let start = offset as usize;
    let src = start
        .checked_add(data.len())
        .and_then(|end| space.get(start..end))
        .ok_or(DeviceError::ConfigOutOfRange {
            offset,
            len: data.len(),
            size: space.len(),
        })?;
    data.copy_from_slice(src);
    Ok(())
}
