//! [`DeviceBackend`]: the [`Backend`] implementation that runs any [`VirtioDevice`].
//!
//! It owns the memory table, one [`Vring`] per queue and the worker threads, and turns each
//! front-end request into a state change of those. Workers exist only while at least one
//! ring of their group is started: the first SET_VRING_KICK of a group spawns its thread,
//! the GET_VRING_BASE that stops the last started ring joins it, and RESET_DEVICE,
//! RESET_OWNER and a disconnect join them all.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use vhost_proto::wire::VRING_F_LOG;
use vhost_proto::wire::{TRANSFER_LOAD, TRANSFER_PHASE_STOPPED, TRANSFER_SAVE};
use vhost_proto::{
    virtio, FrontendRequest, Inflight, LogBase, MemTable, Negotiation, ProtocolFeatures, RegionMsg,
    VringAddr,
};
use vm_memory::GuestAddressSpace;

use super::device::{DeviceError, VirtioDevice};
use super::dirty_log::{DirtyLog, LogError};
use super::inflight::{self, InflightArea, InflightError};
use super::mem_table::{MemError, MemoryTable, MAX_MEM_SLOTS};
use super::notifier::{self, Notifier};
use super::state::{Direction, StateError, StateTransfer};
use super::vring::{Kick, RingPart, Vring, VringError};
use super::worker::Worker;
use crate::{Backend, BackendClient, BackendError, BackendResult, SharedNegotiation};

/// Virtio features the runtime implements itself and always offers: protocol features
/// (bit 30), VERSION_1, EVENT_IDX, INDIRECT_DESC (descriptor chains are walked by
/// `virtio-queue`, indirect tables included), RING_PACKED (the runtime's own packed
/// ring, [`super::packed`], behind the same request API; not offered to a device whose
/// [`VirtioDevice::supports_packed_ring`] is `false`) and VHOST_F_LOG_ALL (dirty-page
/// logging for live migration, see [`dirty_log`](super::dirty_log)).
pub const RUNTIME_FEATURES: u64 = virtio::bit(virtio::PROTOCOL_FEATURES)
    | virtio::bit(virtio::VERSION_1)
    | virtio::bit(virtio::RING_EVENT_IDX)
    | virtio::bit(virtio::RING_INDIRECT_DESC)
    | virtio::bit(virtio::RING_PACKED)
    | virtio::bit(virtio::LOG_ALL);

/// Virtio features the runtime cannot serve and removes from a device's offer: IOTLB
/// translation.
pub const UNSUPPORTED_FEATURES: u64 = virtio::bit(virtio::ACCESS_PLATFORM);

/// Protocol features the runtime implements and always offers. Added per device: CONFIG
/// when it has a configuration space ([`VirtioDevice::config_size`]), BACKEND_REQ when it
/// uses the back-end channel ([`VirtioDevice::uses_backend_channel`]), DEVICE_STATE when
/// it supports state transfer ([`VirtioDevice::supports_state_transfer`]).
pub const RUNTIME_PROTOCOL_FEATURES: ProtocolFeatures = ProtocolFeatures::MQ
    .union(ProtocolFeatures::LOG_SHMFD)
    .union(ProtocolFeatures::REPLY_ACK)
    .union(ProtocolFeatures::CONFIGURE_MEM_SLOTS)
    .union(ProtocolFeatures::RESET_DEVICE)
    .union(ProtocolFeatures::STATUS);

/// Most queues a device may have: vring fd messages carry an 8-bit index
/// ([`vhost_proto::MAX_QUEUES`], the protocol's limit).
pub use vhost_proto::MAX_QUEUES;

/// Why the runtime refused a request or a device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// A memory table change was refused.
    #[error(transparent)]
    Memory(#[from] MemError),
    /// A vring request was refused.
    #[error(transparent)]
    Vring(#[from] VringError),
    /// The device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// A device state transfer was refused or failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// GET/SET_INFLIGHT_FD was refused or failed.
    #[error(transparent)]
    Inflight(#[from] InflightError),
    /// SET_LOG_BASE or SET_LOG_FD was refused.
    #[error(transparent)]
    Log(#[from] LogError),
    /// Starting a worker thread failed.
    #[error("starting worker {worker}: {source}")]
    Worker {
        /// The worker.
        worker: usize,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The device describes itself impossibly (no queues, too many, bad queue size).
    #[error("invalid device: {0}")]
    InvalidDevice(&'static str),
}

impl RuntimeError {
    /// True when this side failed (a system call, a mapping, a thread, the device itself);
    /// false when the front-end's request was refused for what it asked.
    ///
    /// Every variant is classified by an exhaustive match (no catch-all), so a new variant
    /// must be decided here. Deliberate choices: [`MemError::TooLarge`] is the front-end's
    /// (it asked for a region this process cannot map), [`InflightError::Corrupt`] is the
    /// front-end's (it handed over an inconsistent area), [`VringError::LayoutChange`] is the
    /// front-end's (SET_FEATURES against a started ring), [`StateError::TimedOut`] is the
    /// front-end's (the snapshot is in memory: the transfer only waits for the front-end to
    /// drain or fill its pipe) and [`StateError::Cancelled`] too (cancelled on its request).
    /// [`LogError::LogFd`] is classified as the [`VringError`] it wraps.
    pub fn is_local(&self) -> bool {
        match self {
            RuntimeError::Memory(e) => mem_is_local(e),
            RuntimeError::Vring(e) => vring_is_local(e),
            RuntimeError::Device(e) => device_is_local(e),
            RuntimeError::State(e) => state_is_local(e),
            RuntimeError::Inflight(e) => inflight_is_local(e),
            RuntimeError::Log(e) => log_is_local(e),
            RuntimeError::Worker { .. } | RuntimeError::InvalidDevice(_) => true,
        }
    }
}

fn mem_is_local(e: &MemError) -> bool {
    match e {
        MemError::Stat(_) | MemError::Mmap { .. } | MemError::GuestMemory(_) => true,
        MemError::FdCount { .. }
        | MemError::InvalidRegion { .. }
        | MemError::TooLarge { .. }
        | MemError::PastEndOfFile { .. }
        | MemError::Overlap { .. }
        | MemError::TooManyRegions { .. }
        | MemError::NoSuchRegion { .. }
        | MemError::Unprotected { .. } => false,
    }
}

fn vring_is_local(e: &VringError) -> bool {
    match e {
        VringError::EventFd { .. } | VringError::QuiesceTimeout { .. } => true,
        VringError::InvalidSize { .. }
        | VringError::AddressNotMapped { .. }
        | VringError::NotConfigured { .. }
        | VringError::Started { .. }
        | VringError::LayoutChange { .. }
        | VringError::InvalidQueue { .. }
        | VringError::NotEventFd { .. } => false,
    }
}

fn device_is_local(e: &DeviceError) -> bool {
    match e {
        DeviceError::Io(_) | DeviceError::Other(_) | DeviceError::NotSupported => true,
        DeviceError::ConfigOutOfRange { .. } | DeviceError::Queue(_) => false,
    }
}

fn state_is_local(e: &StateError) -> bool {
    match e {
        StateError::Io(_)
        | StateError::Spawn(_)
        | StateError::Snapshot(_)
        | StateError::Restore(_)
        | StateError::Panicked => true,
        StateError::Direction(_)
        | StateError::Phase(_)
        | StateError::RingStarted { .. }
        | StateError::Busy
        | StateError::NoTransfer
        | StateError::TooLarge { .. }
        | StateError::Cancelled
        | StateError::TimedOut(_) => false,
    }
}

fn inflight_is_local(e: &InflightError) -> bool {
    match e {
        InflightError::Io(_) | InflightError::Mmap(_) | InflightError::Map(_) => true,
        InflightError::QueueCount { .. }
        | InflightError::QueueSize { .. }
        | InflightError::TooSmall { .. }
        | InflightError::NotAFile
        | InflightError::Unprotected(_)
        | InflightError::PastEndOfFile { .. }
        | InflightError::Layout { .. }
        | InflightError::Corrupt { .. }
        | InflightError::RingTooLarge { .. } => false,
    }
}

fn log_is_local(e: &LogError) -> bool {
    match e {
        LogError::Stat(_) | LogError::Mmap(_) => true,
        LogError::LogFd(v) => vring_is_local(v),
        LogError::Empty
        | LogError::TooSmall { .. }
        | LogError::UnalignedOffset { .. }
        | LogError::PastEndOfFile { .. }
        | LogError::NotAFile
        | LogError::Unprotected(_) => false,
    }
}

/// The runtime's edge: a refused request stays the front-end's fault
/// ([`BackendError::Refused`]), a failure of this side stays local
/// ([`BackendError::Device`]), so the server's policy can tell them apart.
impl From<RuntimeError> for BackendError {
    fn from(e: RuntimeError) -> Self {
        match e {
            RuntimeError::Device(DeviceError::NotSupported) => BackendError::NotSupported,
            e if e.is_local() => BackendError::Device(Box::new(e)),
            e => BackendError::Refused(Box::new(e)),
        }
    }
}

fn fail<E: Into<RuntimeError>>(e: E) -> BackendError {
    e.into().into()
}

/// A failure after which the back-end and the front-end no longer agree on the rings: the
/// server closes the connection.
fn broken(e: VringError) -> BackendError {
    BackendError::Broken(Box::new(e))
}

/// Runs a [`VirtioDevice`] behind the [`Backend`] trait.
///
/// It owns the memory table, one vring per queue and the worker threads, and turns each
/// front-end request into a state change of those. Workers exist only while at least one
/// ring of their group is started: the first SET_VRING_KICK of a group spawns its thread,
/// the GET_VRING_BASE that stops the last started ring joins it, and RESET_DEVICE,
/// RESET_OWNER and a disconnect ([`Backend::disconnected`]) join them all. A disconnect also
/// drops every mapping and descriptor and forgets the negotiated features: the back-end is
/// then as [`DeviceBackend::new`] made it, ready for the next front-end.
///
/// Requests it answers itself: GET_QUEUE_NUM (the device's queue count), GET_MAX_MEM_SLOTS
/// ([`MAX_MEM_SLOTS`]), SET/GET_STATUS (stored), RESET_DEVICE. GET/SET_CONFIG go to the
/// device after a range check against [`VirtioDevice::config_size`].
///
/// Dirty-page logging (VHOST_F_LOG_ALL and LOG_SHMFD, always offered): SET_LOG_BASE maps
/// the log after checking it against its file and the memory table, SET_FEATURES turns it
/// on and off, SET_VRING_ADDR with VHOST_VRING_F_LOG sets where a ring's used-ring writes
/// are logged (also on a started ring, when its ring addresses stay the same); see
/// [`dirty_log`](super::dirty_log).
///
/// Device state transfer (offered as DEVICE_STATE when
/// [`VirtioDevice::supports_state_transfer`]): SET_DEVICE_STATE_FD is refused unless the
/// phase is "stopped", every ring is stopped and no other transfer runs. A save takes
/// [`VirtioDevice::snapshot`] at once and writes it to the descriptor on a helper thread; a
/// load reads the descriptor to end-of-file on a helper thread (at most
/// [`MAX_DEVICE_STATE`](super::state::MAX_DEVICE_STATE) bytes) and calls
/// [`VirtioDevice::restore`]. Either closes the descriptor when done, and the reply says the
/// back-end returns no descriptor of its own. CHECK_DEVICE_STATE waits for the transfer and
/// reports its outcome; SET_VRING_KICK is refused while a load runs. RESET_DEVICE,
/// RESET_OWNER and a disconnect cancel and join a running transfer.
pub struct DeviceBackend<D: VirtioDevice> {
    device: Arc<D>,
    rings: Arc<[Arc<Vring>]>,
    /// Queues of each worker.
    groups: Vec<Vec<u16>>,
    /// Worker of each queue.
    worker_of: Vec<usize>,
    workers: Vec<Option<Worker<D>>>,
    /// Workers run on their own threads (`false`: [`DeviceBackend::run_workers`] runs them).
    threaded: bool,
    quiesce_timeout: Duration,
    mem: MemoryTable,
    offered_features: u64,
    offered_protocol: ProtocolFeatures,
    /// The session's negotiation: the server's record of what is acked
    /// ([`Backend::bind_negotiation`]); a fresh one of this back-end's own until a server
    /// binds it and after a disconnect.
    negotiation: SharedNegotiation,
    /// A server bound `negotiation` and records every request's effect in it; while not
    /// (the back-end driven directly), the back-end records them itself.
    bound: bool,
    status: u64,
    state: StateTransfer,
    /// The inflight area of SET_INFLIGHT_FD, attached to each ring it covers at its start.
    inflight: Option<Arc<InflightArea>>,
    dirty: Arc<DirtyLog>,
}

impl<D: VirtioDevice> std::fmt::Debug for DeviceBackend<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBackend")
            .field("queues", &self.rings.len())
            .field("regions", &self.mem.len())
            .field(
                "acked_features",
                &format_args!("{:#x}", self.acked_features()),
            )
            .field("status", &self.status)
            .field("state_transfer", &self.state)
            .finish_non_exhaustive()
    }
}

/// How long stopping a ring (GET_VRING_BASE, RESET_DEVICE, RESET_OWNER, disconnect) waits
/// for the requests a device still holds, by default.
pub const QUIESCE_TIMEOUT: Duration = Duration::from_secs(10);

impl<D: VirtioDevice> DeviceBackend<D> {
    /// A back-end for `device`, in the just-started state, with a worker thread per worker
    /// group.
    pub fn new(device: D) -> Result<Self, RuntimeError> {
        Self::build(device, true)
    }

    /// A back-end for `device` whose workers have no thread: the caller runs them with
    /// [`run_workers`](Self::run_workers), which reads kicks, runs the device on ready rings,
    /// publishes completions and signals calls without ever blocking. The same state machine
    /// as [`new`](Self::new), single-threaded and deterministic, for tests and fuzzing.
    pub fn threadless(device: D) -> Result<Self, RuntimeError> {
        Self::build(device, false)
    }

    /// Sets how long stopping a ring waits for the requests the device still holds (default
    /// [`QUIESCE_TIMEOUT`]). Past it the ring is stopped anyway, the request that stopped it
    /// fails and the connection is closed.
    pub fn with_quiesce_timeout(mut self, timeout: Duration) -> Self {
        self.quiesce_timeout = timeout;
        self
    }

    /// Sets what happens to memory regions whose file cannot be kept from shrinking
    /// ([`MemoryPolicy`](super::mem_table::MemoryPolicy); lenient by default).
    pub fn with_memory_policy(mut self, policy: super::mem_table::MemoryPolicy) -> Self {
        self.mem.set_policy(policy);
        self
    }

    /// Runs every threadless worker once (see [`threadless`](Self::threadless)); also
    /// publishes completions made away from the workers. Returns the number of events
    /// handled. Does nothing for threaded workers beyond that publishing.
    pub fn run_workers(&self) -> usize {
        let mut n = 0;
        for w in self.workers.iter().flatten() {
            n += w.turn();
        }
        if !self.threaded {
            for r in self.rings.iter() {
                if r.has_completions() {
                    r.publish_and_signal();
                }
            }
        }
        n
    }

    /// Requests popped from ring `index` and not yet on its used ring (`None` for an unknown
    /// ring).
    pub fn outstanding(&self, index: usize) -> Option<u16> {
        Some(self.rings.get(index)?.lock().outstanding())
    }

    fn build(device: D, threaded: bool) -> Result<Self, RuntimeError> {
        let device = Arc::new(device);
        let n = device.num_queues();
        if n == 0 || n > MAX_QUEUES {
            return Err(RuntimeError::InvalidDevice("num_queues must be in 1..=256"));
        }
        let max = device.max_queue_size();
        if !vhost_proto::limits::valid_queue_size(max) {
            return Err(RuntimeError::InvalidDevice(
                "max_queue_size must be a power of two in 1..=32768",
            ));
        }
        let mem = MemoryTable::new();
        let dirty = Arc::new(DirtyLog::new());
        // `n <= 256` fits in u16.
        let rings: Arc<[Arc<Vring>]> = (0..n as u16)
            .map(|i| Arc::new(Vring::new(i, max, mem.atomic().clone(), Arc::clone(&dirty))))
            .collect();
        let worker_of: Vec<usize> = (0..n).map(|q| device.worker_of(q)).collect();
        let nworkers = worker_of.iter().copied().max().unwrap_or(0) + 1;
        if nworkers > n {
            return Err(RuntimeError::InvalidDevice(
                "worker_of must map queues to 0..num_queues",
            ));
        }
        let mut groups = vec![Vec::new(); nworkers];
        for (q, &w) in worker_of.iter().enumerate() {
            groups[w].push(q as u16);
        }
        // BACKEND_REQ only for a device that keeps the channel: a front-end whose channel is
        // closed at once reports it (QEMU: "Unexpected end-of-file").
        let mut offered_protocol = RUNTIME_PROTOCOL_FEATURES
            | (device.protocol_features()
                - ProtocolFeatures::DEVICE_STATE
                - ProtocolFeatures::BACKEND_REQ);
        if device.uses_backend_channel() {
            offered_protocol |= ProtocolFeatures::BACKEND_REQ;
        } else if device
            .protocol_features()
            .contains(ProtocolFeatures::BACKEND_REQ)
        {
            log::warn!(
                "the device names BACKEND_REQ but does not use the back-end channel \
                 (VirtioDevice::uses_backend_channel): not offered"
            );
        }
        if device.supports_state_transfer() {
            offered_protocol |= ProtocolFeatures::DEVICE_STATE;
        }
        offered_protocol -= ProtocolFeatures::INFLIGHT_SHMFD;
        if device.supports_inflight_tracking() {
            offered_protocol |= ProtocolFeatures::INFLIGHT_SHMFD;
        }
        if device.config_size() > 0 {
            offered_protocol |= ProtocolFeatures::CONFIG;
        }
        let mut offered_features = (device.features() & !UNSUPPORTED_FEATURES) | RUNTIME_FEATURES;
        if !device.supports_packed_ring() {
            offered_features &= !virtio::bit(virtio::RING_PACKED);
        }
        Ok(DeviceBackend {
            device,
            rings,
            groups,
            worker_of,
            workers: (0..nworkers).map(|_| None).collect(),
            threaded,
            quiesce_timeout: QUIESCE_TIMEOUT,
            mem,
            offered_features,
            offered_protocol,
            negotiation: fresh_negotiation(offered_features, offered_protocol, n),
            bound: false,
            status: 0,
            state: StateTransfer::default(),
            inflight: None,
            dirty,
        })
    }

    /// The device.
    pub fn device(&self) -> &Arc<D> {
        &self.device
    }

    /// The memory table.
    pub fn memory(&self) -> &MemoryTable {
        &self.mem
    }

    /// The dirty-page log.
    pub fn dirty_log(&self) -> &DirtyLog {
        &self.dirty
    }

    /// Whether the last SET_FEATURES the rings took acked VIRTIO_F_RING_PACKED (every ring
    /// has the same layout).
    fn packed_acked(&self) -> bool {
        self.rings.first().is_some_and(|r| r.lock().is_packed())
    }

    /// Virtio features offered to the front-end.
    pub fn offered_features(&self) -> u64 {
        self.offered_features
    }

    /// Protocol features offered to the front-end.
    pub fn offered_protocol_features(&self) -> ProtocolFeatures {
        self.offered_protocol
    }

    /// Virtio features acked by the last SET_FEATURES, as the session's negotiation records
    /// them.
    pub fn acked_features(&self) -> u64 {
        self.negotiation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .acked_features()
    }

    /// Number of worker threads running now.
    pub fn running_workers(&self) -> usize {
        self.workers.iter().filter(|w| w.is_some()).count()
    }

    /// Whether ring `index` is started and enabled (`None` for an unknown ring).
    pub fn ring_running(&self, index: usize) -> Option<(bool, bool)> {
        let g = self.rings.get(index)?.lock();
        Some((g.started(), g.enabled()))
    }

    fn ring(&self, index: u32) -> BackendResult<&Arc<Vring>> {
        self.rings
            .get(index as usize)
            .ok_or(BackendError::NoSuchVring { index })
    }

    /// Records a request's effect on the negotiation when no server does
    /// ([`Backend::bind_negotiation`]): the back-end driven directly.
    fn record(&self, request: &FrontendRequest<'_>) {
        if !self.bound {
            self.negotiation
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .apply(request);
        }
    }

    /// Bit 30 not acked: rings are enabled as soon as they start.
    fn rings_start_enabled(&self) -> bool {
        self.acked_features() & virtio::bit(virtio::PROTOCOL_FEATURES) == 0
    }

    fn worker(&mut self, w: usize) -> Result<&Worker<D>, RuntimeError> {
        if self.workers[w].is_none() {
            let worker = Worker::start(
                w,
                Arc::clone(&self.device),
                Arc::clone(&self.rings),
                self.groups[w].clone(),
                self.mem.atomic().clone(),
                self.threaded,
            )
            .map_err(|source| RuntimeError::Worker { worker: w, source })?;
            self.workers[w] = Some(worker);
        }
        self.workers[w]
            .as_ref()
            .ok_or(RuntimeError::InvalidDevice("worker vanished"))
    }

    /// Joins worker `w` if none of its rings is started.
    fn retire_idle_worker(&mut self, w: usize) {
        let busy = self.groups[w]
            .iter()
            .any(|&q| self.rings[usize::from(q)].lock().started());
        if !busy {
            self.workers[w] = None;
        }
    }

    /// Marks a started ring for processing and wakes its worker.
    fn poke(&self, index: usize) {
        self.rings[index].set_pending();
        if let Some(w) = &self.workers[self.worker_of[index]] {
            w.wake();
        }
    }

    /// Stops ring `index` once its outstanding requests completed (until `deadline`), and
    /// forgets its kick source. Returns the base, or the timeout.
    fn stop_ring(&mut self, index: usize, deadline: Instant) -> Result<u32, VringError> {
        let r = Arc::clone(&self.rings[index]);
        let (kick, result) = r.quiesce_and_stop(deadline);
        if let Some(worker) = &self.workers[self.worker_of[index]] {
            match &kick {
                Kick::Fd(f) => worker.remove_kick(f.as_raw_fd()),
                Kick::Poll => worker.set_polled(false),
                Kick::None => {}
            }
        }
        drop(kick);
        if let Err(e) = &result {
            log::error!("{e}");
        }
        result
    }

    /// Stops every ring (waiting for outstanding requests, one bound for all of them) and
    /// every worker, and returns every ring to its initial state. The first timeout, if any;
    /// after it the other rings are stopped without waiting.
    fn reset_rings(&mut self) -> Result<(), VringError> {
        let mut deadline = Instant::now() + self.quiesce_timeout;
        let mut first = Ok(());
        for i in 0..self.rings.len() {
            if self.rings[i].lock().started() {
                if let Err(e) = self.stop_ring(i, deadline) {
                    if first.is_ok() {
                        first = Err(e);
                    }
                    deadline = Instant::now();
                }
            }
        }
        for w in &mut self.workers {
            *w = None;
        }
        for r in self.rings.iter() {
            r.reset();
        }
        first
    }

    fn reset_device_state(&mut self) -> Result<(), VringError> {
        // Before the device resets: a load may be restoring it.
        self.state.abandon();
        let stopped = self.reset_rings();
        self.dirty.set_enabled(false);
        self.status = 0;
        // The front-end hands the area back (SET_INFLIGHT_FD) at every start.
        self.inflight = None;
        self.device.reset();
        stopped
    }

    /// Refuses a state transfer unless the device is suspended (every ring stopped).
    fn check_suspended(&self) -> Result<(), StateError> {
        match self.rings.iter().find(|r| r.lock().started()) {
            Some(r) => Err(StateError::RingStarted { index: r.index }),
            None => Ok(()),
        }
    }

    fn check_config(&self, offset: u32, len: usize) -> BackendResult<()> {
        let size = self.device.config_size();
        let end = (offset as usize).checked_add(len);
        if end.is_none_or(|end| end > size) {
            return Err(fail(DeviceError::ConfigOutOfRange { offset, len, size }));
        }
        Ok(())
    }
}

impl<D: VirtioDevice> Backend for DeviceBackend<D> {
    fn bind_negotiation(&mut self, negotiation: SharedNegotiation) {
        self.negotiation = negotiation;
        self.bound = true;
    }

    fn get_features(&mut self) -> BackendResult<u64> {
        Ok(self.offered_features)
    }

    fn set_features(&mut self, features: u64) -> BackendResult<()> {
        // A server recorded `features` in the session's negotiation before this call.
        self.record(&FrontendRequest::SetFeatures(features));
        // Before the rings see anything else: writes from here on are logged.
        self.dirty
            .set_enabled(features & virtio::bit(virtio::LOG_ALL) != 0);
        let event_idx = features & virtio::bit(virtio::RING_EVENT_IDX) != 0;
        let protocol = features & virtio::bit(virtio::PROTOCOL_FEATURES) != 0;
        let packed = features & virtio::bit(virtio::RING_PACKED) != 0;
        // A started ring keeps its layout: its descriptors are where it reads them now.
        if let Some(r) = self.rings.iter().find(|r| {
            let g = r.lock();
            g.started() && g.is_packed() != packed
        }) {
            return Err(fail(VringError::LayoutChange {
                index: r.index,
                packed,
            }));
        }
        for (i, r) in self.rings.iter().enumerate() {
            let mut g = r.lock();
            g.set_event_idx(event_idx);
            g.set_packed(packed);
            // Without bit 30 every ring is enabled at once; with it a ring not started
            // starts disabled (unless SET_VRING_ENABLE enabled it already).
            let became = g.follow_features(protocol);
            let started = g.started();
            drop(g);
            if became && started {
                self.poke(i);
            }
        }
        self.device.set_acked_features(features);
        Ok(())
    }

    fn reset_owner(&mut self) -> BackendResult<()> {
        self.record(&FrontendRequest::ResetOwner);
        self.reset_device_state().map_err(broken)
    }

    fn set_mem_table(&mut self, table: &MemTable, fds: Vec<OwnedFd>) -> BackendResult<()> {
        self.mem.replace(table.regions(), fds).map_err(fail)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> BackendResult<()> {
        let r = self.ring(index)?;
        r.lock().set_size(r.index, num).map_err(fail)
    }

    fn set_log_base(&mut self, log: &LogBase, fd: OwnedFd) -> BackendResult<()> {
        // A refusal is fatal for the session: QEMU checks only the reply's request code, so
        // it would go on believing its new log is marked (and free the old one) while the
        // back-end kept marking the old one, and the migration would end with stale pages.
        // The log is dropped at once, so nothing marks it before the connection closes.
        self.dirty
            .set_base(fd, log.mmap_size, log.mmap_offset, self.mem.guest_end())
            .map_err(|e| {
                self.dirty.clear();
                BackendError::Broken(Box::new(e))
            })
    }

    fn set_log_fd(&mut self, fd: OwnedFd) -> BackendResult<()> {
        self.dirty.set_log_fd(Some(fd)).map_err(fail)
    }

    fn set_vring_addr(&mut self, addr: &VringAddr) -> BackendResult<()> {
        let r = self.ring(addr.index)?;
        let mut g = r.lock();
        let n = u64::from(g.size());
        let tr = |part, uva: u64, len| {
            self.mem
                .user_to_guest(uva, len)
                .ok_or(VringError::AddressNotMapped {
                    index: r.index,
                    part,
                    addr: uva,
                })
        };
        // Packed rings: the descriptor ring, then the driver and device event suppression
        // areas (4 bytes each) in the places of the available and used rings.
        let (avail_len, used_len) = if g.is_packed() {
            (4, 4)
        } else {
            (6 + 2 * n, 6 + 8 * n)
        };
        let desc = tr(RingPart::Desc, addr.desc, 16 * n).map_err(fail)?;
        let avail = tr(RingPart::Avail, addr.avail, avail_len).map_err(fail)?;
        let used = tr(RingPart::Used, addr.used, used_len).map_err(fail)?;
        let log = (addr.flags & VRING_F_LOG != 0).then_some(addr.log);
        // QEMU turns logging on and off by sending a running ring's addresses again with
        // the log flag changed: only that is allowed while the ring is started.
        if g.started() && g.addrs() != Some([desc, avail, used]) {
            return Err(fail(VringError::Started { index: r.index }));
        }
        if !g.started() {
            g.set_addrs(r.index, [desc, avail, used]).map_err(fail)?;
        }
        g.set_used_log(log);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> BackendResult<()> {
        let r = self.ring(index)?;
        r.lock().set_base(r.index, base).map_err(fail)
    }

    fn get_vring_base(&mut self, index: u32) -> BackendResult<u32> {
        self.ring(index)?;
        let i = index as usize;
        let result = self.stop_ring(i, Instant::now() + self.quiesce_timeout);
        self.retire_idle_worker(self.worker_of[i]);
        result.map_err(broken)
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<OwnedFd>) -> BackendResult<()> {
        let i = usize::from(index);
        let r = Arc::clone(self.ring(u32::from(index))?);
        // The device may be in the middle of restoring its state.
        if self.state.running(Some(Direction::Load)) {
            return Err(fail(StateError::Busy));
        }
        // Checked before anything changes: a refused descriptor leaves the ring as it was.
        let fd = fd
            .map(|fd| notifier::accept(r.index, Notifier::Kick, fd))
            .transpose()
            .map_err(fail)?;
        let w = self.worker_of[i];
        let start_enabled = self.rings_start_enabled();
        let mem = self.mem.atomic().memory();
        self.worker(w).map_err(fail)?;
        let worker = self.workers[w].as_ref().ok_or(BackendError::Internal(
            "the worker of a ring being started is missing",
        ))?;
        let mut g = r.lock();
        // Replace the previous kick source, if any.
        match g.take_kick() {
            Kick::Fd(f) => worker.remove_kick(f.as_raw_fd()),
            Kick::Poll => worker.set_polled(false),
            Kick::None => {}
        }
        if !g.started() {
            if let Some(area) = self.inflight.as_ref().filter(|a| !a.covers(r.index)) {
                log::warn!(
                    "vring {}: the inflight area covers {} queue(s) only: this ring runs \
                     untracked, and a restart loses its requests in flight",
                    r.index,
                    area.num_queues()
                );
            }
        }
        let owed = match g.start(r.index, &mem, self.inflight.as_ref()) {
            Ok(owed) => owed,
            Err(e) => {
                drop(g);
                self.retire_idle_worker(w);
                return Err(fail(e));
            }
        };
        match fd {
            Some(file) => {
                worker
                    .add_kick(r.index, g.kick_gen(), file.as_raw_fd())
                    .map_err(|source| fail(RuntimeError::Worker { worker: w, source }))?;
                g.set_kick(Kick::Fd(file));
            }
            None => {
                g.set_kick(Kick::Poll);
                worker.set_polled(true);
            }
        }
        // Without bit 30 the ring is enabled as soon as it starts; a kick never disables it.
        if start_enabled {
            g.follow_features(false);
        }
        drop(g);
        if owed {
            // Paid at once if the ring has a call eventfd, else at SET_VRING_CALL.
            r.owe_call();
            r.pay_call();
        }
        // Look at the ring at once: buffers made available before the kick fd arrived.
        self.poke(i);
        Ok(())
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<OwnedFd>) -> BackendResult<()> {
        let r = self.ring(u32::from(index))?;
        let fd = fd
            .map(|fd| notifier::accept(r.index, Notifier::Call, fd))
            .transpose()
            .map_err(fail)?;
        r.set_call(fd);
        r.pay_call();
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<OwnedFd>) -> BackendResult<()> {
        let r = self.ring(u32::from(index))?;
        let fd = fd
            .map(|fd| notifier::accept(r.index, Notifier::Err, fd))
            .transpose()
            .map_err(fail)?;
        r.set_err(fd);
        Ok(())
    }

    fn get_protocol_features(&mut self) -> BackendResult<ProtocolFeatures> {
        Ok(self.offered_protocol)
    }

    fn set_protocol_features(&mut self, features: ProtocolFeatures) -> BackendResult<()> {
        self.record(&FrontendRequest::SetProtocolFeatures(features.bits()));
        Ok(())
    }

    fn get_queue_num(&mut self) -> BackendResult<u64> {
        Ok(self.rings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> BackendResult<()> {
        let r = self.ring(index)?;
        let mut g = r.lock();
        let became = g.set_enabled(enable);
        let started = g.started();
        drop(g);
        // Kicks consumed while disabled were dropped: look at the whole ring now.
        if became && started {
            self.poke(index as usize);
        }
        Ok(())
    }

    fn set_backend_req_fd(&mut self, client: BackendClient) -> BackendResult<()> {
        self.device.set_backend_client(client);
        Ok(())
    }

    fn get_config(&mut self, offset: u32, buf: &mut [u8], _flags: u32) -> BackendResult<()> {
        self.check_config(offset, buf.len())?;
        self.device.read_config(offset, buf).map_err(fail)
    }

    fn set_config(&mut self, offset: u32, data: &[u8], _flags: u32) -> BackendResult<()> {
        self.check_config(offset, data.len())?;
        self.device.write_config(offset, data).map_err(fail)
    }

    fn reset_device(&mut self) -> BackendResult<()> {
        self.record(&FrontendRequest::ResetDevice);
        self.reset_device_state().map_err(broken)
    }

    fn get_max_mem_slots(&mut self) -> BackendResult<u64> {
        Ok(MAX_MEM_SLOTS as u64)
    }

    fn add_mem_region(&mut self, region: &RegionMsg, fd: OwnedFd) -> BackendResult<()> {
        self.mem.add(&region.region, fd).map_err(fail)
    }

    fn remove_mem_region(&mut self, region: &RegionMsg) -> BackendResult<()> {
        self.mem.remove(&region.region).map_err(fail)
    }

    fn set_status(&mut self, status: u64) -> BackendResult<()> {
        self.status = status;
        Ok(())
    }

    fn get_status(&mut self) -> BackendResult<u64> {
        Ok(self.status)
    }

    fn set_device_state_fd(
        &mut self,
        direction: u32,
        phase: u32,
        fd: OwnedFd,
    ) -> BackendResult<Option<OwnedFd>> {
        if !self.device.supports_state_transfer() {
            return Err(BackendError::NotSupported);
        }
        if phase != TRANSFER_PHASE_STOPPED {
            return Err(fail(StateError::Phase(phase)));
        }
        self.check_suspended().map_err(fail)?;
        self.state.check_idle().map_err(fail)?;
        match direction {
            TRANSFER_SAVE => {
                let bytes = self.device.snapshot().map_err(StateError::Snapshot);
                self.state
                    .start_save(fd, bytes.map_err(fail)?)
                    .map_err(fail)?;
            }
            TRANSFER_LOAD => {
                let device = Arc::clone(&self.device);
                self.state
                    .start_load(fd, move |state| device.restore(state))
                    .map_err(fail)?;
            }
            other => return Err(fail(StateError::Direction(other))),
        }
        Ok(None)
    }

    fn check_device_state(&mut self) -> BackendResult<()> {
        if !self.device.supports_state_transfer() {
            return Err(BackendError::NotSupported);
        }
        self.state.outcome().map_err(fail)
    }

    fn get_inflight_fd(&mut self, info: &Inflight) -> BackendResult<(Inflight, OwnedFd)> {
        if !self.device.supports_inflight_tracking() {
            return Err(BackendError::NotSupported);
        }
        let max_size = self.device.max_queue_size();
        // QEMU acks the features before it asks (`vhost_dev_prepare_inflight`): the layout
        // follows VIRTIO_F_RING_PACKED as acked now.
        inflight::create_area(info, self.rings.len(), max_size, self.packed_acked()).map_err(fail)
    }

    fn set_inflight_fd(&mut self, info: &Inflight, fd: OwnedFd) -> BackendResult<()> {
        if !self.device.supports_inflight_tracking() {
            return Err(BackendError::NotSupported);
        }
        if let Some(r) = self.rings.iter().find(|r| r.lock().started()) {
            return Err(fail(VringError::Started { index: r.index }));
        }
        let max_size = self.device.max_queue_size();
        let packed = self.packed_acked();
        let area =
            InflightArea::open(info, fd, self.rings.len(), max_size, packed).map_err(fail)?;
        // tests/e2e/inflight-kill.sh reads this line (its shape, anchored at the end).
        log::info!(
            "inflight area: {} queue(s) of {} entries, offset {:#x}",
            info.num_queues,
            info.queue_size,
            info.mmap_offset
        );
        if packed {
            log::info!("inflight area: the packed layout (VIRTIO_F_RING_PACKED acked)");
        }
        self.inflight = Some(Arc::new(area));
        Ok(())
    }

    fn disconnected(&mut self) -> BackendResult<()> {
        // A timeout is logged; the front-end is gone, and so are the rings.
        let _ = self.reset_device_state();
        self.bound = false;
        self.negotiation = fresh_negotiation(
            self.offered_features,
            self.offered_protocol,
            self.rings.len(),
        );
        self.dirty.clear();
        self.mem.clear();
        Ok(())
    }
}

/// A negotiation of this back-end's own offer with nothing acked yet.
fn fresh_negotiation(features: u64, protocol: ProtocolFeatures, rings: usize) -> SharedNegotiation {
    let queues = u32::try_from(rings).unwrap_or(u32::MAX);
    Arc::new(Mutex::new(Negotiation::new(features, protocol, queues)))
}

impl<D: VirtioDevice> Drop for DeviceBackend<D> {
    fn drop(&mut self) {
        // Join the transfer and the workers before the rings and the memory they use go away.
        self.state.abandon();
        for w in &mut self.workers {
            *w = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Fault;

    #[test]
    fn runtime_errors_keep_whose_fault_they_are() {
        let peer = BackendError::from(RuntimeError::from(MemError::TooManyRegions { max: 8 }));
        assert!(matches!(peer, BackendError::Refused(_)), "{peer:?}");
        assert_eq!(peer.fault(), Fault::Peer);
        let local = BackendError::from(RuntimeError::Worker {
            worker: 0,
            source: std::io::Error::from(std::io::ErrorKind::OutOfMemory),
        });
        assert!(matches!(local, BackendError::Device(_)), "{local:?}");
        assert_eq!(local.fault(), Fault::Local);
        let io = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let local = BackendError::from(RuntimeError::from(MemError::Stat(io)));
        assert_eq!(local.fault(), Fault::Local);
        let unsupported = BackendError::from(RuntimeError::from(DeviceError::NotSupported));
        assert!(matches!(unsupported, BackendError::NotSupported));
        assert_eq!(
            BackendError::from(RuntimeError::from(StateError::Busy)).fault(),
            Fault::Peer
        );
    }

    #[test]
    fn a_failed_log_eventfd_check_is_local() {
        // SET_LOG_FD whose fcntl/fstat fails on this side (dirty_log notifier::accept).
        let e = RuntimeError::from(LogError::LogFd(VringError::EventFd {
            index: 0,
            which: Notifier::Log,
            source: std::io::Error::from(std::io::ErrorKind::OutOfMemory),
        }));
        assert_eq!(BackendError::from(e).fault(), Fault::Local);
        // What the front-end sent: still its fault.
        let e = RuntimeError::from(LogError::LogFd(VringError::NotEventFd {
            index: 0,
            which: Notifier::Log,
            kind: "a regular file".into(),
        }));
        assert_eq!(BackendError::from(e).fault(), Fault::Peer);
        let peer = [
            RuntimeError::from(MemError::TooLarge { gpa: 0, size: 1 }),
            RuntimeError::from(InflightError::Corrupt {
                index: 0,
                why: String::new(),
            }),
            RuntimeError::from(VringError::LayoutChange {
                index: 0,
                packed: true,
            }),
            RuntimeError::from(StateError::TimedOut(Duration::from_secs(1))),
        ];
        for e in peer {
            assert_eq!(BackendError::from(e).fault(), Fault::Peer);
        }
    }
}
