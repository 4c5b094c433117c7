//! Driving a device's queue without a front-end (feature `test-utils`).
//!
//! [`TestQueue`] is one started, enabled ring over guest memory the test owns, with the
//! runtime's own request lifecycle behind it: the test lays out a split ring (descriptor
//! table, available ring, used ring) in guest memory as a driver would, calls
//! [`TestQueue::process`] to run the device's
//! [`process_queue`](super::VirtioDevice::process_queue) once, and reads the used ring.
//! Requests the device keeps are published by [`TestQueue::publish`] once completed. No
//! thread, no socket: device crates test and fuzz themselves with it.
//!
//! ```
//! use vhost_backend::runtime::testing::{RingSpec, TestQueue};
//! use vhost_backend::runtime::{DeviceError, Processed, QueueContext, VirtioDevice};
//! use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
//!
//! struct Zero;
//! impl VirtioDevice for Zero {
//!     fn device_type(&self) -> u32 { 4 }
//!     fn num_queues(&self) -> usize { 1 }
//!     fn max_queue_size(&self) -> u16 { 16 }
//!     fn features(&self) -> u64 { 0 }
//!     fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
//!         while let Some(req) = ctx.pop() {
//!             let n = req.writable_len() as u32;
//!             req.write_writable(0, &vec![0; n as usize]).unwrap();
//!             req.complete(n);
//!         }
//!         Ok(Processed::Drained)
//!     }
//! }
//!
//! let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
//! // One writable descriptor of 64 bytes at 0x8000, made available as head 0.
//! mem.write_obj(0x8000u64, GuestAddress(0x1000)).unwrap();
//! mem.write_obj(64u32, GuestAddress(0x1008)).unwrap();
//! mem.write_obj(2u16, GuestAddress(0x100c)).unwrap(); // VRING_DESC_F_WRITE
//! mem.write_obj(0u16, GuestAddress(0x2004)).unwrap(); // avail.ring[0] = 0
//! mem.write_obj(1u16, GuestAddress(0x2002)).unwrap(); // avail.idx = 1
//! let spec = RingSpec::split(0, 16, [0x1000, 0x2000, 0x3000]);
//! let q = TestQueue::new(mem.clone(), spec).unwrap();
//! q.process(&Zero).unwrap();
//! assert_eq!(mem.read_obj::<u16>(GuestAddress(0x3002)).unwrap(), 1); // used.idx
//! assert_eq!(mem.read_obj::<u32>(GuestAddress(0x3008)).unwrap(), 64); // used.ring[0].len
//! ```

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use super::device::{DeviceError, Processed, VirtioDevice};
use super::request::{QueueContext, Request};
use super::vring::{Vring, VringError};

/// A one-queue device that keeps every request it pops, for tests and fuzz targets that
/// complete requests themselves, in the order they choose.
#[derive(Debug)]
pub struct KeepDevice {
    max_queue_size: u16,
    reqs: Mutex<Vec<Request>>,
}

impl KeepDevice {
    /// A device of one queue of at most `max_queue_size` entries.
    pub fn new(max_queue_size: u16) -> Self {
        KeepDevice {
            max_queue_size,
            reqs: Mutex::new(Vec::new()),
        }
    }

    /// The requests popped since the last call, in the order they were popped.
    pub fn take(&self) -> Vec<Request> {
        std::mem::take(&mut *self.reqs.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl VirtioDevice for KeepDevice {
    fn device_type(&self) -> u32 {
        4
    }
    fn num_queues(&self) -> usize {
        1
    }
    fn max_queue_size(&self) -> u16 {
        self.max_queue_size
    }
    fn features(&self) -> u64 {
        0
    }
    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        let mut reqs = self.reqs.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(r) = ctx.pop() {
            reqs.push(r);
        }
        Ok(Processed::Drained)
    }
}

/// Where a [`TestQueue`]'s ring lies in guest memory and how it runs: queue `index` of
/// `size` entries, the three areas at the guest-physical addresses `rings` (split layout:
/// descriptor table, available ring, used ring; packed layout, VIRTIO_F_RING_PACKED:
/// descriptor ring, driver event area, device event area), VIRTIO_F_EVENT_IDX on or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSpec {
    /// Queue index.
    pub index: u16,
    /// Entries in the ring.
    pub size: u16,
    /// Guest-physical addresses of the ring's three areas.
    pub rings: [u64; 3],
    /// VIRTIO_F_EVENT_IDX negotiated.
    pub event_idx: bool,
    /// Packed layout (VIRTIO_F_RING_PACKED) instead of split.
    pub packed: bool,
}

impl RingSpec {
    /// A split ring without event index.
    pub const fn split(index: u16, size: u16, rings: [u64; 3]) -> Self {
        RingSpec {
            index,
            size,
            rings,
            event_idx: false,
            packed: false,
        }
    }

    /// A packed ring without event index.
    pub const fn packed(index: u16, size: u16, rings: [u64; 3]) -> Self {
        RingSpec {
            packed: true,
            ..Self::split(index, size, rings)
        }
    }

    /// The same ring with VIRTIO_F_EVENT_IDX `on` or off.
    pub const fn event_idx(self, on: bool) -> Self {
        RingSpec {
            event_idx: on,
            ..self
        }
    }
}

/// One started, enabled ring a test drives by hand. See the [module docs](self).
pub struct TestQueue {
    ring: Arc<Vring>,
    dirty: Arc<super::dirty_log::DirtyLog>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    notifications: std::sync::atomic::AtomicU64,
}

impl TestQueue {
    /// The started, enabled queue `spec` describes, over `mem`. A split ring reads its used
    /// index from memory and starts reading the available ring at index 0; a packed ring
    /// starts at position 0 with both wrap counters 1.
    pub fn new(mem: GuestMemoryMmap, spec: RingSpec) -> Result<Self, VringError> {
        let RingSpec {
            index,
            size,
            rings,
            event_idx,
            packed,
        } = spec;
        let atomic = GuestMemoryAtomic::new(mem);
        let dirty = Arc::new(super::dirty_log::DirtyLog::new());
        let ring = Arc::new(Vring::new(index, size, atomic.clone(), dirty.clone()));
        {
            let snapshot = atomic.memory();
            let mut st = ring.lock();
            st.set_packed(packed);
            st.set_size(index, u32::from(size))?;
            st.set_addrs(index, rings.map(GuestAddress))?;
            st.set_event_idx(event_idx);
            st.set_enabled(true);
            st.start(index, &snapshot, None)?;
        }
        Ok(TestQueue {
            ring,
            dirty,
            mem: atomic,
            notifications: Default::default(),
        })
    }

    /// Runs `device`'s `process_queue` on this queue once, then publishes the requests
    /// completed so far.
    pub fn process<D: VirtioDevice + ?Sized>(&self, device: &D) -> Result<Processed, DeviceError> {
        let mem = self.mem.memory().into_inner();
        let mut st = self.ring.lock();
        /// Ends the drain also when the device panics (a test catching it goes on).
        struct Draining<'r>(&'r Vring);
        impl Drop for Draining<'_> {
            fn drop(&mut self) {
                self.0.set_draining(false);
            }
        }
        self.ring.set_draining(true);
        let draining = Draining(&self.ring);
        let mut ctx = QueueContext {
            ring: &self.ring,
            state: &mut st,
            mem: &mem,
            taken: 0,
        };
        let result = device.process_queue(&mut ctx);
        drop(draining);
        let p = self.ring.publish(&mut st);
        if p.notify {
            self.notifications
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    /// Publishes requests completed since the last publish (from any thread). Returns the
    /// number of used entries added.
    pub fn publish(&self) -> u32 {
        let mut st = self.ring.lock();
        let p = self.ring.publish(&mut st);
        if p.notify {
            self.notifications
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        p.count
    }

    /// The queue's dirty-page log: map one ([`DirtyLog::set_base`](super::DirtyLog::set_base))
    /// and turn it on ([`DirtyLog::set_enabled`](super::DirtyLog::set_enabled)) to check
    /// that a device's writes are marked.
    pub fn dirty_log(&self) -> &super::dirty_log::DirtyLog {
        &self.dirty
    }

    /// Requests popped and not yet on the used ring.
    pub fn outstanding(&self) -> u16 {
        self.ring.lock().outstanding()
    }

    /// The next available index the queue will read.
    pub fn next_avail(&self) -> u16 {
        self.ring.lock().next_avail()
    }

    /// How many times publishing decided the driver wants a used-buffer notification.
    pub fn notifications(&self) -> u64 {
        self.notifications
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Replaces the guest memory new requests are popped from (requests already popped
    /// keep theirs), as SET_MEM_TABLE does.
    pub fn replace_memory(&self, mem: GuestMemoryMmap) {
        if let Ok(guard) = self.mem.lock() {
            guard.replace(mem);
        }
    }

    /// Stops the queue as GET_VRING_BASE does: waits up to `timeout` for outstanding
    /// requests, then returns the next available index (packed rings: the packed base
    /// encoding, [`packed::encode_base`](super::packed::encode_base)), or the timeout; the
    /// queue is stopped either way.
    pub fn stop(&self, timeout: Duration) -> Result<u32, VringError> {
        self.ring
            .quiesce_and_stop(std::time::Instant::now() + timeout)
            .1
    }
}

thread_local! {
    /// Crash points left before the injected crash (0: none armed).
    static CRASH_COUNTDOWN: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// The crash point that fired last on this thread.
    static CRASHED_AT: std::cell::Cell<Option<&'static str>> = const { std::cell::Cell::new(None) };
}

/// Arms an injected crash of the back-end on this thread: the `n`th crash point the
/// inflight tracking passes from now on (one between every two writes to the inflight
/// region or the used ring, and one between publishing used entries and calling) panics, so that nothing after it happens, as if the process
/// had been killed at that instruction. `0` disarms. A threadless back-end
/// ([`DeviceBackend::threadless`](super::DeviceBackend::threadless)) runs on the caller's
/// thread, so the crash lands there; catch it with [`std::panic::catch_unwind`] and drop
/// the back-end without [`Backend::disconnected`](crate::Backend::disconnected).
pub fn arm_crash(n: u64) {
    CRASH_COUNTDOWN.with(|c| c.set(n));
    CRASHED_AT.with(|c| c.set(None));
}

/// Where the injected crash happened on this thread, if it did.
pub fn crashed_at() -> Option<&'static str> {
    CRASHED_AT.with(std::cell::Cell::get)
}

/// A crash point: panics when the armed countdown reaches it.
pub(crate) fn crash_point(name: &'static str) {
    let fire = CRASH_COUNTDOWN.with(|c| match c.get() {
        0 => false,
        1 => {
            c.set(0);
            true
        }
        n => {
            c.set(n - 1);
            false
        }
    });
    if fire {
        CRASHED_AT.with(|c| c.set(Some(name)));
        panic!("injected back-end crash: {name}");
    }
}
