//! One vring: its state machine, its outstanding requests and its completions.
//!
//! A ring has two independent states (spec "Ring states"): *started* (from SET_VRING_KICK
//! to GET_VRING_BASE) and *enabled* (SET_VRING_ENABLE, or at once when
//! VHOST_USER_F_PROTOCOL_FEATURES is not negotiated). The worker processes the ring only
//! when both hold. Every field of the state machine is private to this module; the control
//! thread changes it only through the transitions below (size, base, addresses, start,
//! stop, enable, kick and call descriptor changes, reset).
//!
//! Requests: a chain popped from the available ring becomes a
//! [`Request`](super::Request) and counts as *outstanding* until its used entry is
//! published. A popped request completes from any thread: its completion is queued here;
//! one served on the spot by the ring's owner (`serve_next`) is recorded under the ring
//! lock instead. The ring's owner (the worker, or whoever holds the ring to stop it)
//! publishes both to the used ring in batches, with one `needs_notification` check (EVENT_IDX)
//! and at most one call per batch. A head already outstanding that the driver offers again
//! is not handed out twice. Completions of requests popped before the ring last stopped or
//! was reset (an older *generation*) are dropped, never published into the new ring.
//!
//! Stopping (GET_VRING_BASE, RESET_DEVICE, RESET_OWNER, disconnect) first *quiesces* the
//! ring: no new chain is popped, and the stop waits, within a bound, until every
//! outstanding request has completed, so the base it answers leaves no request behind.
//! With inflight tracking ([`super::inflight`], INFLIGHT_SHMFD) the ring also records each
//! request in the shared inflight region when popped and when published, and a start
//! resubmits what the region says its predecessor left in flight before taking new
//! available entries.

use std::collections::VecDeque;
use std::fs::File;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use virtio_queue::{Queue, QueueT};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestAddressSpace, GuestMemory, GuestMemoryAtomic,
    GuestMemoryMmap, VolatileMemory, VolatileSlice,
};
use vmm_sys_util::eventfd::EventFd;

use super::dirty_log::DirtyLog;
use super::inflight::QueueInflight;
use super::inflight::{crash_point, InflightArea, InflightError, SplitChain};
use super::inflight_packed::PackedInflight;
use super::log_limit::LogLimiter;
use super::notifier::{self, Notifier};
use super::packed::{PackedRing, INITIAL_BASE};
use super::request::Buffer;

/// Which address of a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingPart {
    /// The descriptor table.
    Desc,
    /// The available ring.
    Avail,
    /// The used ring.
    Used,
}

/// Why a vring request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VringError {
    /// SET_VRING_NUM with 0, a size that is not a power of two, or over the maximum.
    #[error("vring {index}: size {num} is not a power of two in 1..={max}")]
    InvalidSize {
        /// The ring.
        index: u16,
        /// The size asked for.
        num: u32,
        /// The device's maximum.
        max: u16,
    },
    /// SET_VRING_ADDR with an address no memory region holds.
    #[error("vring {index}: {part:?} address {addr:#x} is outside every memory region")]
    AddressNotMapped {
        /// The ring.
        index: u16,
        /// Which address.
        part: RingPart,
        /// The front-end virtual address.
        addr: u64,
    },
    /// The ring cannot start before it has this setting.
    #[error("vring {index}: cannot start without {missing}")]
    NotConfigured {
        /// The ring.
        index: u16,
        /// What is missing.
        missing: &'static str,
    },
    /// The request would change a started ring.
    #[error("vring {index}: not allowed while the ring is started")]
    Started {
        /// The ring.
        index: u16,
    },
    /// SET_FEATURES flipping VIRTIO_F_RING_PACKED while the ring is started.
    #[error(
        "vring {index}: SET_FEATURES would switch the started ring to the {} layout",
        if *packed { "packed" } else { "split" }
    )]
    LayoutChange {
        /// The ring.
        index: u16,
        /// The layout asked for is packed.
        packed: bool,
    },
    /// The queue refused its settings (alignment) or its rings lie outside guest memory.
    #[error("vring {index}: {why}")]
    InvalidQueue {
        /// The ring.
        index: u16,
        /// What is wrong.
        why: String,
    },
    /// A kick, call or error descriptor that is not an eventfd (a pipe, a socket, a file):
    /// writing it could block the worker, or it could be readable forever.
    #[error("vring {index}: the {which} descriptor is {kind}, not an eventfd")]
    NotEventFd {
        /// The ring.
        index: u16,
        /// Which descriptor.
        which: Notifier,
        /// What it is instead (its `/proc/self/fd` link or its file type).
        kind: String,
    },
    /// Inspecting an eventfd or making it non-blocking failed.
    #[error("vring {index}: the {which} eventfd: {source}")]
    EventFd {
        /// The ring.
        index: u16,
        /// Which descriptor.
        which: Notifier,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Stopping the ring waited the whole bound for requests the device still held (or for
    /// resubmitted ones it was never handed: the ring was disabled, the device paused). The
    /// ring is stopped anyway; their completions, when they come, are dropped. With
    /// inflight tracking the region still records them in flight: a back-end started on
    /// it resubmits them (even, in the same process, one the device may still be running).
    #[error(
        "vring {index}: {outstanding} request(s) still outstanding after {waited:?}; the ring \
         was stopped without them"
    )]
    QuiesceTimeout {
        /// The ring.
        index: u16,
        /// Requests popped and never completed, and resubmitted ones never popped.
        outstanding: u16,
        /// How long the stop waited.
        waited: Duration,
    },
}

/// Where the worker learns that the driver made buffers available.
#[derive(Debug, Default)]
pub(crate) enum Kick {
    /// No kick source: the ring is not started.
    #[default]
    None,
    /// The kick eventfd.
    Fd(File),
    /// SET_VRING_KICK with NOFD: the worker polls the ring on a timer.
    Poll,
}

/// A completion waiting to be published, with the request's buffer list to reuse.
#[derive(Debug)]
struct Completion {
    generation: u64,
    head: u16,
    len: u32,
    bufs: Vec<Buffer>,
}

/// Completions waiting to be published, and how many times they were taken for
/// publishing (a stop that waits for completions watches both).
#[derive(Debug, Default)]
struct Completions {
    list: Vec<Completion>,
    taken: u64,
}

/// Ring state behind the per-wake-up lock.
#[derive(Debug)]
pub(crate) struct RingState {
    queue: Queue,
    max_size: u16,
    size: u16,
    /// SET_VRING_BASE: the next available index (split rings), or the packed encoding of
    /// both positions and wrap counters ([`super::packed::encode_base`]).
    base: u32,
    /// A base was set (or a stop recorded one); a packed ring without starts at
    /// [`INITIAL_BASE`].
    base_set: bool,
    /// VIRTIO_F_RING_PACKED was acked: the ring starts as a packed ring.
    packed_layout: bool,
    /// The packed ring, while started with that layout (the split `queue` is then unused).
    packed: Option<PackedRing>,
    /// Descriptors of the last packed buffer popped, reused.
    chain: Vec<virtio_queue::desc::split::Descriptor>,
    addrs: Option<[GuestAddress; 3]>,
    /// Where used-ring writes are logged (SET_VRING_ADDR with VHOST_VRING_F_LOG).
    used_log: Option<u64>,
    kick: Kick,
    /// Bumped at each kick fd change so the worker can drop events of a replaced fd.
    kick_gen: u16,
    started: bool,
    enabled: bool,
    /// `enabled` holds only because VHOST_USER_F_PROTOCOL_FEATURES was not acked, not
    /// because of a SET_VRING_ENABLE: a later SET_FEATURES acking that bit withdraws it
    /// from a ring not started.
    enabled_without_protocol: bool,
    event_idx: bool,
    /// Requests popped and not yet on the used ring.
    outstanding: u16,
    /// One bit per head index: set while that head is outstanding.
    in_flight: Vec<u64>,
    /// Used entries added since the last notification decision.
    unsignalled: u32,
    /// Reused buffer for publishing completions without allocating.
    batch: Vec<Completion>,
    /// Completions made under the lock held now, by requests served on the spot
    /// ([`QueueContext::serve_next`](super::QueueContext::serve_next)): head and used
    /// length, of the current generation, published by the next [`Vring::publish`] (made by
    /// the same lock holder, before it lets go).
    done_here: Vec<(u16, u32)>,
    /// Buffer lists of published requests, reused by the next requests popped.
    spare_bufs: Vec<Vec<Buffer>>,
    /// The ring's queue region of the inflight area, while started with one.
    inflight: Option<QueueInflight>,
    /// A packed ring's queue region of the inflight area, while started with one.
    packed_inflight: Option<PackedInflight>,
    /// Heads left in flight by a previous back-end, to hand out before new available
    /// entries, in the order they were first taken.
    resubmit: VecDeque<u16>,
    /// Split rings: the available index last read. Entries up to it are taken without
    /// reading the index again; it is read again once the ring's next available position
    /// reaches it. Set to the next available position at each start.
    avail_seen: u16,
    /// Packed rings: the descriptors of each resubmitted buffer ID (copied from the
    /// inflight region, indirect tables expanded).
    resubmit_chains: Vec<Vec<virtio_queue::desc::split::Descriptor>>,
    /// The next notification decision calls the driver whatever EVENT_IDX says: set when
    /// the ring resumes a previous back-end's inflight region (see [`Vring::owe_call`]).
    notify_owed: bool,
}

/// One vring. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Vring {
    pub(crate) index: u16,
    state: Mutex<RingState>,
    call: Mutex<Option<File>>,
    err: Mutex<Option<File>>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    /// Completions not yet published.
    completions: Mutex<Completions>,
    /// Signalled on a completion while a stop waits (`quiescing`).
    completed: Condvar,
    quiescing: AtomicBool,
    /// The ring's generation: bumped whenever it stops or resets.
    generation: AtomicU64,
    /// True while the owner runs the device on this ring and publishes completions itself
    /// when the device returns: completions made meanwhile need no wake-up.
    draining: AtomicBool,
    /// Wakes the ring's owner to publish completions made elsewhere.
    waker: Mutex<Option<Arc<EventFd>>>,
    /// Set while a stop waits: the device gets no new chain.
    stopping: AtomicBool,
    /// A used-buffer notification is owed to the driver (see [`owe_call`](Self::owe_call)).
    call_owed: AtomicBool,
    /// Process at the next worker wake-up even without a kick (ring just enabled, device
    /// event).
    pending: AtomicBool,
    /// Rate limit for the ring's guest-driven warnings (a driver can repeat them at will).
    pub(crate) log: LogLimiter,
    /// The back-end's dirty-page log (migration).
    pub(crate) dirty: Arc<DirtyLog>,
}

/// Signals the eventfd in `fd`, if any. The eventfd is non-blocking
/// ([`notifier::accept`]), so this never waits.
fn signal(fd: &Mutex<Option<File>>) {
    let guard = fd.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(f) = guard.as_ref() {
        notifier::signal(f);
    }
}

/// A split ring's used ring (flags, index and entries) as one slice, when one region holds
/// it.
fn used_slice<'m>(q: &Queue, mem: &'m GuestMemoryMmap) -> Option<VolatileSlice<'m, ()>> {
    let len = 4 + 8 * usize::from(q.size());
    mem.get_slice(GuestAddress(q.used_ring()), len).ok()
}

/// Puts `head` (`len` bytes used) on a split ring's used ring and moves its index on, as
/// `virtio-queue`'s `add_used` does (head checked against the ring size, entry written,
/// next used position moved on, index stored with Release), through `used` (the used ring
/// as one slice, [`used_slice`]) when there is one: one region lookup per batch instead of
/// two per entry. The notification decision that follows counts the entries itself
/// ([`split_needs_notification`]).
fn split_add_used(
    q: &mut Queue,
    mem: &GuestMemoryMmap,
    used: Option<&VolatileSlice<'_, ()>>,
    head: u16,
    len: u32,
) -> Result<(), String> {
    let size = q.size();
    if head >= size {
        return Err(format!("head {head} is out of range for a ring of {size}"));
    }
    let next = q.next_used();
    // 4 bytes of flags and index, then 8 bytes per entry.
    let entry = 4 + 8 * u64::from(next % size);
    // `struct virtq_used_elem { le32 id; le32 len; }` as one little-endian u64.
    let elem = (u64::from(len) << 32 | u64::from(head)).to_le();
    let new_idx = next.wrapping_add(1);
    let err = |e: &dyn std::fmt::Display| e.to_string();
    match used {
        Some(ring) => {
            ring.get_ref::<u64>(entry as usize)
                .map_err(|e| err(&e))?
                .store(elem);
            q.set_next_used(new_idx);
            ring.get_atomic_ref::<AtomicU16>(2)
                .map_err(|e| err(&e))?
                .store(new_idx.to_le(), Ordering::Release);
        }
        None => {
            let base = GuestAddress(q.used_ring());
            let overflow = || "used ring address overflows".to_string();
            mem.write_obj(elem, base.checked_add(entry).ok_or_else(overflow)?)
                .map_err(|e| err(&e))?;
            q.set_next_used(new_idx);
            mem.store(
                new_idx.to_le(),
                base.checked_add(2).ok_or_else(overflow)?,
                Ordering::Release,
            )
            .map_err(|e| err(&e))?;
        }
    }
    Ok(())
}

/// Whether the driver wants a used-buffer notification for the `added` entries put on a
/// split ring since the last decision, as `virtio-queue`'s `needs_notification` decides it
/// (a full fence first, unless `fenced`: the caller made one since its last used-ring
/// write; without EVENT_IDX always; with it, when `used_event` lies among the entries
/// added, Linux's `vring_need_event`).
fn split_needs_notification(
    q: &Queue,
    mem: &GuestMemoryMmap,
    event_idx: bool,
    added: u32,
    fenced: bool,
) -> Result<bool, String> {
    // The used entries and index written before must be visible before `used_event` is
    // read.
    if !fenced {
        std::sync::atomic::fence(Ordering::SeqCst);
    }
    if !event_idx {
        return Ok(true);
    }
    // `used_event` follows the available ring's 4 header bytes and 2 bytes per entry.
    let at = GuestAddress(q.avail_ring())
        .checked_add(4 + 2 * u64::from(q.size()))
        .ok_or_else(|| "available ring address overflows".to_string())?;
    let used_event = u16::from_le(
        mem.load::<u16>(at, Ordering::Relaxed)
            .map_err(|e| e.to_string())?,
    );
    let used_idx = q.next_used();
    let old = used_idx.wrapping_sub(added as u16);
    Ok(used_idx.wrapping_sub(used_event).wrapping_sub(1) < used_idx.wrapping_sub(old))
}

/// What publishing a batch of completions asks for.
#[derive(Debug, Default, Clone, Copy)]
#[must_use]
pub(crate) struct Published {
    /// Used entries added.
    pub(crate) count: u32,
    /// The driver wants a used-buffer notification.
    pub(crate) notify: bool,
}

impl Vring {
    pub(crate) fn new(
        index: u16,
        max_size: u16,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        dirty: Arc<DirtyLog>,
    ) -> Self {
        Vring {
            index,
            state: Mutex::new(RingState::new(max_size)),
            call: Mutex::new(None),
            err: Mutex::new(None),
            mem,
            completions: Mutex::new(Completions::default()),
            completed: Condvar::new(),
            quiescing: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            draining: AtomicBool::new(false),
            waker: Mutex::new(None),
            stopping: AtomicBool::new(false),
            call_owed: AtomicBool::new(false),
            pending: AtomicBool::new(false),
            log: LogLimiter::new("ring warnings"),
            dirty,
        }
    }

    /// Takes the ring lock (waits for a worker processing the ring).
    pub(crate) fn lock(&self) -> MutexGuard<'_, RingState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The ring's current generation.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether a stop is waiting: `pop` gives nothing.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// SET_VRING_CALL: replaces the call eventfd (`None`: do not signal).
    pub(crate) fn set_call(&self, fd: Option<File>) {
        *self.call.lock().unwrap_or_else(PoisonError::into_inner) = fd;
    }

    /// SET_VRING_ERR: replaces the error eventfd.
    pub(crate) fn set_err(&self, fd: Option<File>) {
        *self.err.lock().unwrap_or_else(PoisonError::into_inner) = fd;
    }

    /// Signals the used-buffer notification (which pays a call [owed](Self::owe_call)).
    pub(crate) fn signal_call(&self) {
        let guard = self.call.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = guard.as_ref() {
            notifier::signal(f);
            self.call_owed.store(false, Ordering::Release);
        }
    }

    /// Records that the driver is owed one used-buffer notification: the ring resumed a
    /// previous back-end's inflight region, and that back-end may have published used
    /// entries and died before calling. The driver moves `used_event` only when it reaps,
    /// so without this call it could wait for ever on entries already in its used ring.
    /// The call is made by [`pay_call`](Self::pay_call) as soon as the ring has a call
    /// eventfd (QEMU sends SET_VRING_CALL after SET_VRING_KICK), or by any call before.
    pub(crate) fn owe_call(&self) {
        self.call_owed.store(true, Ordering::Release);
    }

    /// Makes the call [owed](Self::owe_call), if any, when the ring has a call eventfd.
    pub(crate) fn pay_call(&self) {
        if self.call_owed.load(Ordering::Acquire) {
            self.signal_call();
        }
    }

    /// Signals the error eventfd.
    pub(crate) fn signal_err(&self) {
        signal(&self.err);
    }

    /// Sets (or clears) what wakes the ring's owner for completions made elsewhere.
    pub(crate) fn set_waker(&self, waker: Option<Arc<EventFd>>) {
        *self.waker.lock().unwrap_or_else(PoisonError::into_inner) = waker;
    }

    /// Marks the ring for processing at its worker's next wake-up.
    pub(crate) fn set_pending(&self) {
        self.pending.store(true, Ordering::Release);
    }

    /// Takes the pending mark.
    pub(crate) fn take_pending(&self) -> bool {
        self.pending.swap(false, Ordering::AcqRel)
    }

    /// The owner starts (`true`) or ends (`false`) running the device on this ring.
    pub(crate) fn set_draining(&self, on: bool) {
        self.draining.store(on, Ordering::SeqCst);
    }

    /// Whether completions wait to be published.
    pub(crate) fn has_completions(&self) -> bool {
        !self
            .completions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .list
            .is_empty()
    }

    /// Queues the completion of request `head` of `generation` with `len` bytes used. Called
    /// from any thread, once per request.
    pub(crate) fn complete(&self, generation: u64, head: u16, len: u32, bufs: Vec<Buffer>) {
        let was_empty = {
            let mut c = self
                .completions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let was_empty = c.list.is_empty();
            c.list.push(Completion {
                generation,
                head,
                len,
                bufs,
            });
            was_empty
        };
        if self.quiescing.load(Ordering::SeqCst) {
            self.completed.notify_all();
        }
        if was_empty && !self.draining.load(Ordering::SeqCst) {
            self.wake_owner();
        }
    }

    /// Publishes every queued completion of the current generation to the used ring, under
    /// the ring lock `st`, and decides whether the driver wants a notification for what was
    /// added since the last decision. The completions recorded under this lock
    /// ([`RingState::complete_here`]) go first, then those queued from anywhere.
    pub(crate) fn publish(&self, st: &mut RingState) -> Published {
        self.publish_in(st, None)
    }

    /// [`publish`](Self::publish) through `mem` when given: the memory snapshot the caller
    /// drained the ring with (the worker), saving a second load of the current table per
    /// wake-up. The requests of that drain wrote their data through it too.
    pub(crate) fn publish_in(
        &self,
        st: &mut RingState,
        mem: Option<&GuestMemoryMmap>,
    ) -> Published {
        let mut batch = std::mem::take(&mut st.batch);
        {
            let mut c = self
                .completions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::swap(&mut c.list, &mut batch);
            // A stop waiting for completions learns of those made here the same way as of
            // the others (it watches `taken`: see `quiesce_and_stop`).
            if !batch.is_empty() || !st.done_here.is_empty() {
                c.taken += 1;
            }
        }
        if (!batch.is_empty() || !st.done_here.is_empty()) && self.quiescing.load(Ordering::SeqCst)
        {
            self.completed.notify_all();
        }
        let generation = self.generation();
        let first_used = st.queue.next_used();
        let mut published = Published::default();
        let work = !batch.is_empty() || !st.done_here.is_empty() || st.unsignalled > 0;
        let mut fenced = false;
        let current;
        let mem: Option<&GuestMemoryMmap> = match (work, mem) {
            (false, _) => None,
            (true, Some(m)) => Some(m),
            (true, None) => {
                current = self.mem.memory();
                Some(&current)
            }
        };
        if let Some(mem) = mem {
            // A split ring's used ring, looked up once for the batch.
            let used = match st.packed {
                None if st.started => used_slice(&st.queue, mem),
                _ => None,
            };
            let used = used.as_ref();
            let mut here = std::mem::take(&mut st.done_here);
            for &(head, len) in &here {
                // Made under this lock: of the current generation, on a started ring (a stop
                // takes the lock); checked all the same.
                if st.started {
                    published.count += u32::from(self.publish_one(st, mem, used, head, len));
                }
            }
            here.clear();
            st.done_here = here;
            for mut c in batch.drain(..) {
                if st.spare_bufs.len() < usize::from(st.size) {
                    c.bufs.clear();
                    st.spare_bufs.push(std::mem::take(&mut c.bufs));
                }
                if c.generation != generation || !st.started {
                    log::debug!(
                        "vring {}: dropping the completion of head {} from before the ring \
                         stopped",
                        self.index,
                        c.head
                    );
                    continue;
                }
                published.count += u32::from(self.publish_one(st, mem, used, c.head, c.len));
            }
            st.unsignalled += published.count;
            // The check's fence also orders the used writes before the `used_event` read
            // of the notification decision below.
            fenced = published.count > 0;
            if fenced && self.dirty.active_after_writes() {
                self.log_used_entries(st, first_used);
            }
        }
        st.batch = batch;
        if let (true, Some(mem)) = (st.unsignalled > 0, &mem) {
            let needs = match &mut st.packed {
                Some(p) => p.needs_notification(mem).map_err(|e| e.to_string()),
                None => {
                    split_needs_notification(&st.queue, mem, st.event_idx, st.unsignalled, fenced)
                }
            };
            let wanted = match needs {
                Ok(n) => n,
                Err(e) => {
                    self.log.warn(format_args!(
                        "vring {}: reading used_event: {e}",
                        self.index
                    ));
                    true
                }
            };
            // After resuming a previous back-end's region the first decision calls: the
            // driver may be waiting for entries that back-end published without calling,
            // and `needs_notification` only looks at the entries added since.
            published.notify = wanted | std::mem::take(&mut st.notify_owed);
            st.unsignalled = 0;
        }
        if published.notify {
            // Every caller signals the call eventfd next.
            crash_point("published, call not yet made");
        }
        published
    }

    /// Puts the completion of outstanding request `head` (`len` bytes used) on the used
    /// ring. `false` when it was not outstanding or the used ring could not be written.
    fn publish_one(
        &self,
        st: &mut RingState,
        mem: &GuestMemoryMmap,
        used: Option<&VolatileSlice<'_, ()>>,
        head: u16,
        len: u32,
    ) -> bool {
        if !st.clear_in_flight(head) {
            self.log.log(
                log::Level::Error,
                format_args!(
                    "vring {}: completion of head {head} that is not outstanding",
                    self.index
                ),
            );
            return false;
        }
        st.outstanding -= 1;
        // Inflight tracking: link the head into the last batch before the used index moves,
        // clear its flag after.
        if let Some(inflight) = &st.inflight {
            inflight.before_used(head);
        }
        let added = match &mut st.packed {
            Some(p) => {
                if let Some(pi) = &mut st.packed_inflight {
                    pi.before_used(head, p.used_after(head));
                }
                p.add_used(mem, head, len).map_err(|e| e.to_string())
            }
            None => split_add_used(&mut st.queue, mem, used, head, len),
        };
        // The packed region forgets the request either way: the ring no longer counts it
        // outstanding, and its entries went back to the free list. It commits the ring's used
        // position as it is: unmoved when the write failed.
        if let (Some(pi), Some(p)) = (&mut st.packed_inflight, &st.packed) {
            let (_, _, used, used_wrap) = super::packed::decode_base(p.base());
            pi.after_used(head, (used, used_wrap));
        }
        if let Err(e) = added {
            self.log.warn(format_args!(
                "vring {}: returning head {head}: {e}",
                self.index
            ));
            return false;
        }
        if let Some(inflight) = &st.inflight {
            inflight.after_used(head, st.queue.next_used());
        }
        true
    }

    /// Marks in the dirty log the used entries written from `first` to the queue's next used
    /// index, and the used index. Called after the writes, only while logging is on.
    fn log_used_entries(&self, st: &RingState, first: u16) {
        if let Some(p) = &st.packed {
            // Packed rings: the used descriptors went into the descriptor ring, at its own
            // guest-physical address (a ring of at most 32768 * 16 bytes: marked whole).
            self.dirty
                .mark_all([(p.desc_table().0, 16 * u64::from(st.size.max(1)))]);
            self.dirty.signal();
            return;
        }
        let Some(base) = st.used_log_base() else {
            return;
        };
        let size = st.queue.size().max(1);
        let count = st.queue.next_used().wrapping_sub(first).min(size);
        let start = first % size;
        let n1 = count.min(size - start);
        let entry = |i: u16| base.wrapping_add(4 + 8 * u64::from(i));
        self.dirty.mark_all([
            (entry(start), 8 * u64::from(n1)),
            (entry(0), 8 * u64::from(count - n1)),
            (base.wrapping_add(2), 2),
        ]);
        self.dirty.signal();
    }

    /// Marks in the dirty log what enabling (`true`) or disabling notifications just wrote
    /// into the used ring: the flags without EVENT_IDX, `avail_event` with it (written when
    /// enabling only). Called after the write, from the worker's drain.
    pub(crate) fn log_notification_write(&self, st: &RingState, enable: bool) {
        let written = match (&st.packed, st.addrs) {
            // Packed rings: the flags of the device event suppression area.
            (Some(_), Some([_, _, device_event])) => Some((device_event.0.wrapping_add(2), 2)),
            (Some(_), None) => None,
            (None, _) => match st.used_log_base() {
                None => None,
                Some(base) if !st.event_idx => Some((base, 2)),
                Some(base) if enable => {
                    Some((base.wrapping_add(4 + 8 * u64::from(st.queue.size())), 2))
                }
                // EVENT_IDX: disabling notifications writes nothing, so nothing is checked
                // (no fence per drain for it).
                Some(_) => None,
            },
        };
        let Some(range) = written else {
            return;
        };
        if !self.dirty.active_after_writes() {
            return;
        }
        self.dirty.mark_all([range]);
    }

    /// Publishes queued completions and signals the call eventfd when the driver wants it.
    /// For completions made while no worker runs the ring (a stop, a threadless runtime).
    pub(crate) fn publish_and_signal(&self) -> u32 {
        let p = {
            let mut st = self.lock();
            self.publish(&mut st)
        };
        if p.notify {
            self.signal_call();
        }
        p.count
    }

    /// Quiesces and stops the ring: no new chain is popped, completions keep being
    /// published, and the stop waits until `deadline` for every outstanding request. Returns
    /// the next available index (what GET_VRING_BASE answers and the next start resumes
    /// from) and the kick source the ring had, or the timeout error once the ring is
    /// stopped regardless.
    pub(crate) fn quiesce_and_stop(&self, deadline: Instant) -> (Kick, Result<u32, VringError>) {
        let start = Instant::now();
        self.stopping.store(true, Ordering::SeqCst);
        self.quiescing.store(true, Ordering::SeqCst);
        // A device that reaps its completions when the runtime calls it gets called: the
        // worker processes the ring (popping nothing while the stop waits).
        self.set_pending();
        self.wake_owner();
        let mut timed_out = None;
        let mut st = loop {
            let mut st = self.lock();
            let p = self.publish(&mut st);
            if p.notify {
                self.signal_call();
            }
            // Requests a previous back-end left in flight and not yet handed to the device
            // are owed too: the base answered covers them, and whoever resumes from it
            // (a migration destination, a fresh inflight area) would never run them. The
            // device gets them while the stop waits (`pop`), but only on a running ring.
            let owed = st.outstanding as usize + st.resubmit.len();
            if owed == 0 || !st.started {
                break st;
            }
            let now = Instant::now();
            let stuck = st.outstanding == 0 && !st.running();
            if now >= deadline || stuck {
                timed_out = Some(owed.min(usize::from(u16::MAX)) as u16);
                break st;
            }
            // Completions published by anyone after this point move `taken` on.
            let seen = self
                .completions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .taken;
            drop(st);
            let c = self
                .completions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if c.list.is_empty() && c.taken == seen {
                let _ = self
                    .completed
                    .wait_timeout(c, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        self.quiescing.store(false, Ordering::SeqCst);
        let kick = st.take_kick();
        let base = st.stop();
        self.call_owed.store(false, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(st);
        self.stopping.store(false, Ordering::SeqCst);
        let result = match timed_out {
            Some(outstanding) => Err(VringError::QuiesceTimeout {
                index: self.index,
                outstanding,
                waited: start.elapsed(),
            }),
            None => Ok(base),
        };
        (kick, result)
    }

    /// Writes the wake eventfd of the ring's owner, if it has one.
    fn wake_owner(&self) {
        let waker = self.waker.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(w) = waker.as_ref() {
            if let Err(e) = w.write(1) {
                log::warn!("vring {}: waking the worker: {e}", self.index);
            }
        }
    }

    /// Back to the just-created state; drops every descriptor. The ring must have no
    /// worker; outstanding requests (if a stop timed out) are forgotten.
    pub(crate) fn reset(&self) {
        let mut st = self.lock();
        let max = st.max_size;
        *st = RingState::new(max);
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(st);
        self.completions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .list
            .clear();
        self.set_call(None);
        self.set_err(None);
        self.log.reset();
        self.stopping.store(false, Ordering::Relaxed);
        self.call_owed.store(false, Ordering::Relaxed);
        self.pending.store(false, Ordering::Relaxed);
    }
}

impl RingState {
    fn new(max_size: u16) -> Self {
        RingState {
            queue: Queue::new(max_size).unwrap_or_default(),
            max_size,
            size: max_size,
            base: 0,
            base_set: false,
            packed_layout: false,
            packed: None,
            chain: Vec::new(),
            addrs: None,
            used_log: None,
            kick: Kick::None,
            kick_gen: 0,
            started: false,
            enabled: false,
            enabled_without_protocol: false,
            event_idx: false,
            outstanding: 0,
            in_flight: Vec::new(),
            unsignalled: 0,
            batch: Vec::new(),
            done_here: Vec::new(),
            spare_bufs: Vec::new(),
            inflight: None,
            packed_inflight: None,
            resubmit: VecDeque::new(),
            resubmit_chains: Vec::new(),
            avail_seen: 0,
            notify_owed: false,
        }
    }

    /// Whether the ring is started.
    pub(crate) fn started(&self) -> bool {
        self.started
    }

    /// Whether the ring is enabled.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the worker should process the ring.
    pub(crate) fn running(&self) -> bool {
        self.started && self.enabled
    }

    /// The ring size in use.
    pub(crate) fn size(&self) -> u16 {
        self.size
    }

    /// Requests popped and not yet on the used ring.
    pub(crate) fn outstanding(&self) -> u16 {
        self.outstanding
    }

    /// The current kick generation.
    pub(crate) fn kick_gen(&self) -> u16 {
        self.kick_gen
    }

    /// The kick eventfd, when the ring has one.
    pub(crate) fn kick_fd(&self) -> Option<&File> {
        match &self.kick {
            Kick::Fd(f) => Some(f),
            _ => None,
        }
    }

    /// Whether the ring is polled (SET_VRING_KICK with NOFD).
    pub(crate) fn polled(&self) -> bool {
        matches!(self.kick, Kick::Poll)
    }

    /// SET_VRING_NUM.
    pub(crate) fn set_size(&mut self, index: u16, num: u32) -> Result<(), VringError> {
        if self.started {
            return Err(VringError::Started { index });
        }
        match u16::try_from(num) {
            // Packed rings may have any size (virtio 1.2, 2.8); split rings a power of two.
            Ok(n)
                if n != 0 && (self.packed_layout || n.is_power_of_two()) && n <= self.max_size =>
            {
                self.size = n;
                Ok(())
            }
            _ => Err(VringError::InvalidSize {
                index,
                num,
                max: self.max_size,
            }),
        }
    }

    /// SET_VRING_BASE (split rings: the next available index in the low 16 bits; packed
    /// rings: both positions and wrap counters, [`super::packed::encode_base`]).
    pub(crate) fn set_base(&mut self, index: u16, base: u32) -> Result<(), VringError> {
        if self.started {
            return Err(VringError::Started { index });
        }
        self.base = base;
        self.base_set = true;
        Ok(())
    }

    /// SET_FEATURES: whether VIRTIO_F_RING_PACKED was acked (the layout of the next start).
    pub(crate) fn set_packed(&mut self, on: bool) {
        self.packed_layout = on;
    }

    /// Whether the ring has (or will start with) the packed layout.
    pub(crate) fn is_packed(&self) -> bool {
        self.packed_layout
    }

    /// SET_VRING_ADDR, with the addresses already translated to guest-physical.
    pub(crate) fn set_addrs(
        &mut self,
        index: u16,
        addrs: [GuestAddress; 3],
    ) -> Result<(), VringError> {
        if self.started {
            return Err(VringError::Started { index });
        }
        self.addrs = Some(addrs);
        Ok(())
    }

    /// The guest-physical ring addresses of the last SET_VRING_ADDR (desc, avail, used).
    pub(crate) fn addrs(&self) -> Option<[GuestAddress; 3]> {
        self.addrs
    }

    /// SET_VRING_ADDR's log address (`Some` with VHOST_VRING_F_LOG): used-ring writes are
    /// logged there. Allowed on a started ring (the front-end turns logging on and off while
    /// rings run).
    pub(crate) fn set_used_log(&mut self, log: Option<u64>) {
        self.used_log = log;
    }

    /// Where used-ring writes are logged: the ring's log address, or else the used ring's
    /// own guest-physical address.
    fn used_log_base(&self) -> Option<u64> {
        self.used_log.or(self.addrs.map(|a| a[2].0))
    }

    /// Takes the kick source out, leaving none; the kick generation moves on so events of
    /// the old descriptor are ignored.
    pub(crate) fn take_kick(&mut self) -> Kick {
        self.kick_gen = self.kick_gen.wrapping_add(1);
        std::mem::take(&mut self.kick)
    }

    /// Sets the kick source (after [`take_kick`](Self::take_kick); the worker watches a kick
    /// eventfd under the current [`kick_gen`](Self::kick_gen)).
    pub(crate) fn set_kick(&mut self, kick: Kick) {
        self.kick = kick;
    }

    /// Builds the queue from the stored settings and marks the ring started. The used index
    /// is read from guest memory: after a guest reboot or a back-end restart it need not
    /// equal the base. Starting a started ring changes nothing.
    ///
    /// With `area` (SET_INFLIGHT_FD) the ring's queue region is repaired and the heads it
    /// holds in flight are queued for resubmission; the next available index is then the
    /// used index plus their number, whatever the base. A fresh region (version 0: a first
    /// start, a migration destination) says nothing: the ring resumes at the base. A ring
    /// the area has no region for runs untracked.
    ///
    /// Returns whether the ring resumed a region a previous back-end initialised: the
    /// caller then owes the driver a call ([`Vring::owe_call`]), and the first notification
    /// decision calls whatever EVENT_IDX says.
    pub(crate) fn start(
        &mut self,
        index: u16,
        mem: &GuestMemoryMmap,
        area: Option<&Arc<InflightArea>>,
    ) -> Result<bool, VringError> {
        if self.started {
            return Ok(false);
        }
        let area = area.filter(|a| a.covers(index));
        let layout = |packed| if packed { "packed" } else { "split" };
        if let Some(a) = area {
            let why = if a.is_packed() != self.packed_layout {
                Some(InflightError::Layout {
                    index,
                    area: layout(a.is_packed()),
                    ring: layout(self.packed_layout),
                })
            } else if self.size > a.queue_size() {
                Some(InflightError::RingTooLarge {
                    index,
                    size: self.size,
                    desc_num: a.queue_size(),
                })
            } else {
                None
            };
            if let Some(why) = why {
                return Err(VringError::InvalidQueue {
                    index,
                    why: why.to_string(),
                });
            }
        }
        if self.packed_layout {
            return self.start_packed(index, mem, area.map(|a| PackedInflight::new(a, index)));
        }
        let inflight = area.and_then(|a| a.queue(index));
        if !self.size.is_power_of_two() {
            // Set while the packed layout was acked; the features changed since.
            return Err(VringError::InvalidSize {
                index,
                num: u32::from(self.size),
                max: self.max_size,
            });
        }
        let [desc, avail, used] = self.addrs.ok_or(VringError::NotConfigured {
            index,
            missing: "SET_VRING_ADDR",
        })?;
        let invalid = |why: String| VringError::InvalidQueue { index, why };
        let mut q = Queue::new(self.max_size).map_err(|e| invalid(e.to_string()))?;
        q.try_set_size(self.size)
            .map_err(|e| invalid(e.to_string()))?;
        q.try_set_desc_table_address(desc)
            .map_err(|e| invalid(e.to_string()))?;
        q.try_set_avail_ring_address(avail)
            .map_err(|e| invalid(e.to_string()))?;
        q.try_set_used_ring_address(used)
            .map_err(|e| invalid(e.to_string()))?;
        q.set_event_idx(self.event_idx);
        q.set_ready(true);
        if !q.is_valid(mem) {
            return Err(invalid("rings lie outside guest memory".into()));
        }
        let used_idx = q
            .used_idx(mem, Ordering::Acquire)
            .map_err(|e| invalid(e.to_string()))?;
        let base = self.base as u16;
        let mut next_avail = base;
        let mut resumed = false;
        self.resubmit.clear();
        self.inflight = inflight;
        if let Some(inflight) = &mut self.inflight {
            let rec = inflight.recover(self.size, used_idx.0);
            resumed = !rec.fresh;
            if resumed {
                // Every entry taken is on the used ring or in flight.
                next_avail = used_idx.0.wrapping_add(rec.heads.len() as u16);
            }
            if !rec.heads.is_empty() || rec.repaired || next_avail != base {
                log::info!(
                    "vring {index}: inflight region: {} request(s) resubmitted{}, resuming at \
                     available index {next_avail} (base was {})",
                    rec.heads.len(),
                    if rec.repaired {
                        ", a half-published completion repaired"
                    } else {
                        ""
                    },
                    self.base
                );
            }
            self.resubmit.extend(rec.heads);
        }
        q.set_next_avail(next_avail);
        q.set_next_used(used_idx.0);
        self.queue = q;
        self.avail_seen = next_avail;
        self.packed = None;
        self.mark_started(resumed);
        Ok(resumed)
    }

    /// Clears the request bookkeeping and marks the ring started (`resumed`: a call is owed
    /// to the driver, see `notify_owed`).
    fn mark_started(&mut self, resumed: bool) {
        self.outstanding = 0;
        self.in_flight.clear();
        self.in_flight
            .resize(usize::from(self.size).div_ceil(64), 0);
        self.done_here.clear();
        self.unsignalled = 0;
        self.notify_owed = resumed;
        self.started = true;
    }

    /// [`start`](Self::start) for the packed layout: the positions and wrap counters come
    /// from the base (nothing in guest memory records them), or from the inflight region
    /// when a previous back-end ran the ring with it: the front-end's base is then not the
    /// ring's position (after a crash QEMU sends the base of the last clean stop). The
    /// requests the region holds in flight are queued for resubmission, from the
    /// descriptors it copied.
    fn start_packed(
        &mut self,
        index: u16,
        mem: &GuestMemoryMmap,
        mut inflight: Option<PackedInflight>,
    ) -> Result<bool, VringError> {
        let addrs = self.addrs.ok_or(VringError::NotConfigured {
            index,
            missing: "SET_VRING_ADDR",
        })?;
        let invalid = |why: String| VringError::InvalidQueue { index, why };
        let mut base = if self.base_set {
            self.base
        } else {
            INITIAL_BASE
        };
        // Checks the areas before the region is read.
        PackedRing::new(mem, self.size, addrs, base, self.event_idx)
            .map_err(|e| invalid(e.to_string()))?;
        let mut requests = Vec::new();
        let mut resumed = false;
        if let Some(q) = &mut inflight {
            let rec = q
                .recover(mem, addrs[0], self.size, base)
                .map_err(|e| invalid(e.to_string()))?;
            resumed = !rec.fresh;
            if !rec.requests.is_empty() || rec.repaired || (resumed && rec.base != base) {
                log::info!(
                    "vring {index}: packed inflight region: {} request(s) resubmitted{}, \
                     resuming at {:#x} (base was {base:#x})",
                    rec.requests.len(),
                    if rec.repaired {
                        ", an interrupted publish repaired"
                    } else {
                        ""
                    },
                    rec.base
                );
            }
            base = rec.base;
            requests = rec.requests;
        }
        let mut ring = PackedRing::new(mem, self.size, addrs, base, self.event_idx)
            .map_err(|e| invalid(e.to_string()))?;
        self.resubmit.clear();
        self.resubmit_chains.clear();
        self.resubmit_chains
            .resize_with(usize::from(self.size), Vec::new);
        for r in requests {
            ring.set_chain_len(r.id, r.descs.len() as u16);
            let mut out = Vec::new();
            super::packed::expand(mem, &r.descs, &mut out);
            self.resubmit_chains[usize::from(r.id)] = out;
            self.resubmit.push_back(r.id);
        }
        self.inflight = None;
        self.packed_inflight = inflight;
        self.packed = Some(ring);
        self.mark_started(resumed);
        Ok(resumed)
    }

    /// Stops the ring and returns the next available index. Outstanding requests are
    /// forgotten (the caller waited for them, or gave up).
    fn stop(&mut self) -> u32 {
        if self.started {
            self.base = match self.packed.take() {
                Some(p) => p.base(),
                None => u32::from(self.queue.next_avail()),
            };
            self.base_set = true;
        }
        self.started = false;
        self.queue.set_ready(false);
        self.kick = Kick::None;
        self.kick_gen = self.kick_gen.wrapping_add(1);
        self.outstanding = 0;
        self.in_flight.iter_mut().for_each(|w| *w = 0);
        self.done_here.clear();
        self.unsignalled = 0;
        self.inflight = None;
        self.packed_inflight = None;
        self.resubmit.clear();
        self.resubmit_chains.clear();
        self.notify_owed = false;
        self.base
    }

    /// The enabled state SET_FEATURES gives: without VHOST_USER_F_PROTOCOL_FEATURES every
    /// ring is enabled; with it a ring not started is disabled unless SET_VRING_ENABLE
    /// enabled it. Returns whether the ring just became enabled.
    pub(crate) fn follow_features(&mut self, protocol_features: bool) -> bool {
        if !protocol_features {
            let became = !self.enabled;
            if became {
                self.enabled = true;
                self.enabled_without_protocol = true;
            }
            became
        } else {
            if !self.started && self.enabled_without_protocol {
                self.enabled = false;
                self.enabled_without_protocol = false;
            }
            false
        }
    }

    /// SET_VRING_ENABLE. Returns whether the ring just became enabled.
    pub(crate) fn set_enabled(&mut self, enable: bool) -> bool {
        let became = enable && !self.enabled;
        self.enabled = enable;
        self.enabled_without_protocol = false;
        became
    }

    /// Sets EVENT_IDX, also on a running queue.
    pub(crate) fn set_event_idx(&mut self, on: bool) {
        self.event_idx = on;
        self.queue.set_event_idx(on);
        if let Some(p) = &mut self.packed {
            p.set_event_idx(on);
        }
    }

    /// The next available position the ring reads (packed rings: bit 15 is the wrap
    /// counter expected).
    pub(crate) fn next_avail(&self) -> u16 {
        match &self.packed {
            Some(p) => p.next_avail(),
            None => self.queue.next_avail(),
        }
    }

    /// Asks the driver for no kicks while the ring is drained.
    pub(crate) fn disable_notification(&mut self, mem: &GuestMemoryMmap) -> Result<(), String> {
        match &self.packed {
            Some(p) => p.disable_notification(mem).map_err(|e| e.to_string()),
            None => QueueT::disable_notification(&mut self.queue, mem).map_err(|e| e.to_string()),
        }
    }

    /// Asks the driver for kicks again; `true` when more work became available meanwhile.
    pub(crate) fn enable_notification(&mut self, mem: &GuestMemoryMmap) -> Result<bool, String> {
        match &self.packed {
            Some(p) => p.enable_notification(mem).map_err(|e| e.to_string()),
            None => QueueT::enable_notification(&mut self.queue, mem).map_err(|e| e.to_string()),
        }
    }

    /// How far the driver's available entries run ahead of the next one the ring reads
    /// (packed rings: 1 when the next descriptor is available, else 0).
    pub(crate) fn avail_ahead(&self, mem: &GuestMemoryMmap) -> Result<u16, String> {
        match &self.packed {
            Some(p) => p
                .has_available(mem)
                .map(u16::from)
                .map_err(|e| e.to_string()),
            None => QueueT::avail_idx(&self.queue, mem, Ordering::Acquire)
                .map(|idx| idx.0.wrapping_sub(self.queue.next_avail()))
                .map_err(|e| e.to_string()),
        }
    }

    /// Takes the next available chain: its head index (packed rings: its buffer ID) and its
    /// descriptors. `None` when the ring is empty or unreadable.
    /// Give the chain back with [`recycle_chain`](Self::recycle_chain) once walked.
    pub(crate) fn pop_chain<'m>(
        &mut self,
        mem: &'m GuestMemoryMmap,
    ) -> Option<(u16, PoppedChain<'m>)> {
        match &mut self.packed {
            Some(p) => {
                let mut descs = std::mem::take(&mut self.chain);
                match p.pop(mem, &mut descs) {
                    Ok(Some(id)) => Some((id, PoppedChain::Packed { descs, next: 0 })),
                    Ok(None) => {
                        self.chain = descs;
                        None
                    }
                    Err(e) => {
                        self.chain = descs;
                        log::debug!("packed ring: {e}");
                        None
                    }
                }
            }
            None => {
                // The chain is walked like a resubmitted one, which hands on a nested
                // indirect table (the request faults it) where `virtio-queue`'s walk would
                // end silently.
                let head = self.pop_split_head(mem)?;
                Some((
                    head,
                    PoppedChain::Split(SplitChain::new(
                        mem,
                        GuestAddress(self.queue.desc_table()),
                        self.size,
                        head,
                    )),
                ))
            }
        }
    }

    /// Takes the next head from a split ring's available ring, as `virtio-queue`'s
    /// `pop_descriptor_chain` does (the index read with Acquire, at most a ring ahead, the
    /// entry read with Acquire), without reading the available index again while entries
    /// it announced are left: one guest memory read per head instead of two.
    fn pop_split_head(&mut self, mem: &GuestMemoryMmap) -> Option<u16> {
        let q = &mut self.queue;
        if !q.ready() {
            return None;
        }
        let next = q.next_avail();
        if next == self.avail_seen {
            let idx = match QueueT::avail_idx(q, mem, Ordering::Acquire) {
                Ok(idx) => idx.0,
                Err(e) => {
                    log::error!("vring: reading the available index: {e}");
                    return None;
                }
            };
            if idx == next {
                return None;
            }
            if idx.wrapping_sub(next) > self.size {
                log::error!(
                    "vring: available index {idx} is more than a ring of {} ahead of {next}",
                    self.size
                );
                return None;
            }
            self.avail_seen = idx;
        }
        // 4 bytes of flags and index, then 2 bytes per entry.
        let at = GuestAddress(q.avail_ring()).checked_add(4 + 2 * u64::from(next % self.size))?;
        let head = match mem.load::<u16>(at, Ordering::Acquire) {
            Ok(h) => u16::from_le(h),
            Err(e) => {
                log::error!("vring: reading available entry {next}: {e}");
                return None;
            }
        };
        q.set_next_avail(next.wrapping_add(1));
        Some(head)
    }

    /// An empty buffer list for a request, reused when one is spare.
    pub(crate) fn buffer_list(&mut self) -> Vec<Buffer> {
        self.spare_bufs.pop().unwrap_or_default()
    }

    /// Records the completion of request `head` (`len` bytes used), served under the lock
    /// held now; the next [`Vring::publish`] puts it on the used ring. `bufs` is the
    /// request's buffer list, kept for the next request.
    pub(crate) fn complete_here(&mut self, head: u16, len: u32, mut bufs: Vec<Buffer>) {
        if self.spare_bufs.len() < usize::from(self.size) {
            bufs.clear();
            self.spare_bufs.push(bufs);
        }
        self.done_here.push((head, len));
    }

    /// Records `head` as outstanding. `false` when it is out of range or already
    /// outstanding (a driver offering one chain twice): the chain must not be handed out.
    pub(crate) fn take_head(&mut self, head: u16) -> bool {
        let (word, bit) = (usize::from(head) / 64, u64::from(head) % 64);
        match self.in_flight.get_mut(word) {
            Some(w) if head < self.size && *w & (1 << bit) == 0 => {
                *w |= 1 << bit;
                self.outstanding += 1;
                if let Some(p) = &mut self.packed {
                    p.commit_pop(head);
                }
                true
            }
            _ => false,
        }
    }

    /// Inflight tracking: `head` was just taken from the available ring.
    pub(crate) fn mark_inflight(&mut self, head: u16) {
        if let Some(inflight) = &mut self.inflight {
            inflight.mark(head);
        }
        if let (Some(pi), Some(p)) = (&mut self.packed_inflight, &self.packed) {
            pi.mark(head, p.last_popped());
        }
    }

    /// Inflight tracking: the next head a previous back-end left in flight and its chain,
    /// if any (also while a stop waits: the stop waits for them). Give the chain back with
    /// [`recycle_chain`](Self::recycle_chain) once walked.
    pub(crate) fn next_resubmit<'m>(
        &mut self,
        mem: &'m GuestMemoryMmap,
    ) -> Option<(u16, PoppedChain<'m>)> {
        let head = self.resubmit.pop_front()?;
        let chain = match &self.packed {
            Some(_) => PoppedChain::Packed {
                descs: self
                    .resubmit_chains
                    .get_mut(usize::from(head))
                    .map(std::mem::take)
                    .unwrap_or_default(),
                next: 0,
            },
            None => PoppedChain::Split(SplitChain::new(
                mem,
                GuestAddress(self.queue.desc_table()),
                self.size,
                head,
            )),
        };
        Some((head, chain))
    }

    /// Gives back the descriptor list of a packed chain, to reuse.
    pub(crate) fn recycle_chain(&mut self, chain: PoppedChain<'_>) {
        if let PoppedChain::Packed { mut descs, .. } = chain {
            descs.clear();
            self.chain = descs;
        }
    }

    fn clear_in_flight(&mut self, head: u16) -> bool {
        let (word, bit) = (usize::from(head) / 64, u64::from(head) % 64);
        match self.in_flight.get_mut(word) {
            Some(w) if *w & (1 << bit) != 0 => {
                *w &= !(1 << bit);
                true
            }
            _ => false,
        }
    }
}

/// The descriptors of a chain just popped, of either layout.
pub(crate) enum PoppedChain<'m> {
    /// A split ring's chain (popped, or one a previous back-end left in flight), walked
    /// from the descriptor table as it is read.
    Split(SplitChain<'m>),
    /// A packed ring's buffer, already read (the list goes back to the ring afterwards).
    Packed {
        /// The descriptors.
        descs: Vec<virtio_queue::desc::split::Descriptor>,
        /// The next one to yield.
        next: usize,
    },
}

impl Iterator for PoppedChain<'_> {
    type Item = virtio_queue::desc::split::Descriptor;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            PoppedChain::Split(c) => c.next(),
            PoppedChain::Packed { descs, next } => {
                let d = descs.get(*next).copied();
                *next += 1;
                d
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
    }

    fn ring(index: u16, max: u16, m: &GuestMemoryMmap) -> Vring {
        Vring::new(
            index,
            max,
            GuestMemoryAtomic::new(m.clone()),
            Arc::new(DirtyLog::new()),
        )
    }

    const ADDRS: [GuestAddress; 3] = [
        GuestAddress(0x1000),
        GuestAddress(0x2000),
        GuestAddress(0x3000),
    ];

    #[test]
    fn set_size_rejects_zero_non_power_of_two_and_over_max() {
        let m = mem();
        let r = ring(0, 256, &m);
        let mut i = r.lock();
        for bad in [0, 3, 512, 0x1_0000 + 64] {
            assert!(
                matches!(i.set_size(0, bad), Err(VringError::InvalidSize { .. })),
                "{bad}"
            );
        }
        i.set_size(0, 128).unwrap();
        assert_eq!(i.size(), 128);
        i.set_size(0, 256).unwrap();
    }

    #[test]
    fn start_reads_used_index_from_guest_memory_not_base() {
        let m = mem();
        // Used ring at 0x3000: idx field at +2.
        m.write_obj(7u16.to_le(), GuestAddress(0x3002)).unwrap();
        let r = ring(0, 256, &m);
        {
            let mut i = r.lock();
            i.set_size(0, 16).unwrap();
            i.set_base(0, 9).unwrap();
            i.set_addrs(0, ADDRS).unwrap();
            i.start(0, &m, None).unwrap();
            assert!(i.started());
            assert_eq!(i.queue.next_avail(), 9);
            assert_eq!(i.queue.next_used(), 7);
            assert!(matches!(i.set_base(0, 1), Err(VringError::Started { .. })));
            assert!(matches!(i.set_size(0, 32), Err(VringError::Started { .. })));
            assert!(matches!(
                i.set_addrs(0, ADDRS),
                Err(VringError::Started { .. })
            ));
        }
        let (_, base) = r.quiesce_and_stop(Instant::now() + Duration::from_secs(1));
        assert_eq!(base.unwrap(), 9);
        assert!(!r.lock().started());
        // Stopping again answers the same base.
        let (_, base) = r.quiesce_and_stop(Instant::now() + Duration::from_secs(1));
        assert_eq!(base.unwrap(), 9);
    }

    /// The available index is read again only once the entries it announced are taken:
    /// entries the driver adds meanwhile are found then; an index more than a ring ahead
    /// gives nothing (and is read again at the next pop); a restart forgets what was read.
    #[test]
    fn split_heads_are_taken_up_to_the_index_read_then_the_index_is_read_again() {
        let m = mem();
        let avail = |idx: u16, entries: &[(u16, u16)]| {
            for &(slot, head) in entries {
                m.write_obj(head.to_le(), GuestAddress(0x2004 + 2 * u64::from(slot)))
                    .unwrap();
            }
            m.write_obj(idx.to_le(), GuestAddress(0x2002)).unwrap();
        };
        let r = ring(0, 256, &m);
        let mut i = r.lock();
        i.set_size(0, 8).unwrap();
        i.set_addrs(0, ADDRS).unwrap();
        i.start(0, &m, None).unwrap();
        assert_eq!(i.pop_split_head(&m), None);
        avail(2, &[(0, 5), (1, 6)]);
        assert_eq!(i.pop_split_head(&m), Some(5));
        // Added after the index was read: taken once the first two are.
        avail(3, &[(2, 7)]);
        assert_eq!(i.pop_split_head(&m), Some(6));
        assert_eq!(i.pop_split_head(&m), Some(7));
        assert_eq!(i.pop_split_head(&m), None);
        assert_eq!(i.queue.next_avail(), 3);
        // Nine ahead in a ring of eight: refused, every time, without moving.
        avail(12, &[]);
        assert_eq!(i.pop_split_head(&m), None);
        assert_eq!(i.pop_split_head(&m), None);
        assert_eq!(i.queue.next_avail(), 3);
        // Back to a sane index: served again (slot 3 of the ring).
        avail(4, &[(3, 1)]);
        assert_eq!(i.pop_split_head(&m), Some(1));
        drop(i);
        // A restart from base 0 reads the index again rather than trusting the old one.
        let (_, base) = r.quiesce_and_stop(Instant::now() + Duration::from_secs(1));
        assert_eq!(base.unwrap(), 4);
        let mut i = r.lock();
        i.set_base(0, 0).unwrap();
        avail(0, &[]);
        i.start(0, &m, None).unwrap();
        assert_eq!(i.pop_split_head(&m), None);
    }

    /// `split_add_used` and `split_needs_notification` write the same used ring and take
    /// the same decisions as `virtio-queue`'s `add_used` and `needs_notification`, with and
    /// without the used ring as one slice, across the index's wrap.
    #[test]
    fn split_used_entries_and_notification_decisions_match_virtio_queue() {
        let m = mem();
        let queue = |event_idx: bool, next_used: u16| {
            let mut q = Queue::new(8).unwrap();
            q.try_set_desc_table_address(ADDRS[0]).unwrap();
            q.try_set_avail_ring_address(ADDRS[1]).unwrap();
            q.try_set_used_ring_address(ADDRS[2]).unwrap();
            q.set_event_idx(event_idx);
            q.set_ready(true);
            q.set_next_used(next_used);
            q
        };
        let used_bytes = |m: &GuestMemoryMmap| {
            let mut b = vec![0u8; 4 + 8 * 8];
            m.read_slice(&mut b, ADDRS[2]).unwrap();
            b
        };
        for event_idx in [false, true] {
            for start in [0u16, 5, 65533] {
                for added in 1u16..=5 {
                    for used_event in [
                        start.wrapping_sub(1),
                        start,
                        start.wrapping_add(2),
                        start.wrapping_add(4),
                        9,
                    ] {
                        for whole in [false, true] {
                            // `used_event` sits after the 8 entries of the available ring.
                            m.write_obj(used_event.to_le(), GuestAddress(0x2000 + 4 + 16))
                                .unwrap();
                            m.write_slice(&[0u8; 4 + 8 * 8], ADDRS[2]).unwrap();
                            let mut theirs = queue(event_idx, start);
                            for h in 0..added {
                                theirs.add_used(&m, h, 100 + u32::from(h)).unwrap();
                            }
                            let want_ring = used_bytes(&m);
                            let want = theirs.needs_notification(&m).unwrap();
                            m.write_slice(&[0u8; 4 + 8 * 8], ADDRS[2]).unwrap();
                            let mut ours = queue(event_idx, start);
                            let slice = used_slice(&ours, &m);
                            let used = if whole { slice.as_ref() } else { None };
                            for h in 0..added {
                                split_add_used(&mut ours, &m, used, h, 100 + u32::from(h)).unwrap();
                            }
                            assert_eq!(used_bytes(&m), want_ring);
                            assert_eq!(ours.next_used(), theirs.next_used());
                            let got = split_needs_notification(
                                &ours,
                                &m,
                                event_idx,
                                u32::from(added),
                                false,
                            )
                            .unwrap();
                            assert_eq!(
                                got, want,
                                "event_idx {event_idx} start {start} added {added} used_event \
                                 {used_event}"
                            );
                        }
                    }
                }
            }
        }
        // A head out of range is refused and moves nothing.
        let mut q = queue(false, 3);
        assert!(split_add_used(&mut q, &m, None, 8, 0).is_err());
        assert_eq!(q.next_used(), 3);
    }

    #[test]
    fn start_without_addresses_or_outside_memory_fails() {
        let m = mem();
        let r = ring(0, 256, &m);
        let mut i = r.lock();
        assert!(matches!(
            i.start(0, &m, None),
            Err(VringError::NotConfigured { .. })
        ));
        // 256 descriptors * 16 bytes from 0xf000 run past 0x10000; 0x1001 is misaligned.
        for desc in [0xf000, 0x1001] {
            let addrs = [desc, 0x2000, 0x3000].map(GuestAddress);
            i.set_addrs(0, addrs).unwrap();
            assert!(
                matches!(i.start(0, &m, None), Err(VringError::InvalidQueue { .. })),
                "descriptor table at {desc:#x}"
            );
        }
        assert!(!i.started());
    }

    #[test]
    fn reset_returns_ring_to_initial_state() {
        let m = mem();
        let r = ring(1, 64, &m);
        {
            let mut i = r.lock();
            i.set_size(1, 16).unwrap();
            i.set_addrs(1, ADDRS).unwrap();
            i.set_enabled(true);
            i.start(1, &m, None).unwrap();
        }
        let g = r.generation();
        r.reset();
        assert_ne!(r.generation(), g);
        let i = r.lock();
        assert!(!i.started() && !i.enabled() && i.addrs.is_none());
        assert_eq!(i.size(), 64);
        assert_eq!(i.base, 0);
    }

    #[test]
    fn heads_are_taken_once_and_completions_publish_in_batches() {
        let m = mem();
        let r = ring(0, 16, &m);
        let mut st = r.lock();
        st.set_size(0, 16).unwrap();
        st.set_addrs(0, ADDRS).unwrap();
        st.start(0, &m, None).unwrap();
        assert!(st.take_head(3));
        assert!(!st.take_head(3), "a head already outstanding");
        assert!(!st.take_head(16), "a head past the ring");
        assert!(st.take_head(5));
        assert_eq!(st.outstanding(), 2);
        drop(st);
        let g = r.generation();
        r.complete(g, 5, 10, Vec::new());
        r.complete(g, 3, 20, Vec::new());
        // A stale completion and a head never taken are dropped.
        r.complete(g.wrapping_sub(1), 3, 1, Vec::new());
        r.complete(g, 9, 1, Vec::new());
        let mut st = r.lock();
        let p = r.publish(&mut st);
        assert_eq!(p.count, 2);
        assert!(p.notify, "no EVENT_IDX: every batch notifies");
        assert_eq!(st.outstanding(), 0);
        drop(st);
        let used_idx: u16 = m.read_obj(GuestAddress(0x3002)).unwrap();
        assert_eq!(used_idx, 2);
        let first: [u32; 2] = m.read_obj(GuestAddress(0x3004)).unwrap();
        assert_eq!(first, [5, 10]);
    }

    /// `serve_next` serves a chain on the spot: its used entry goes out with the next
    /// publish, together with completions queued from elsewhere, and its buffer list is
    /// reused; an empty ring gives `false` without calling the closure.
    #[test]
    fn requests_served_on_the_spot_publish_with_the_batch() {
        let m = mem();
        // Head 0: one writable buffer of 64 bytes; head 1: a readable one of 16 bytes.
        m.write_obj(0x8000u64, GuestAddress(0x1000)).unwrap();
        m.write_obj(64u32, GuestAddress(0x1008)).unwrap();
        m.write_obj(2u16, GuestAddress(0x100c)).unwrap();
        m.write_obj(0x9000u64, GuestAddress(0x1010)).unwrap();
        m.write_obj(16u32, GuestAddress(0x1018)).unwrap();
        m.write_obj([0u16, 1], GuestAddress(0x2004)).unwrap();
        m.write_obj(2u16, GuestAddress(0x2002)).unwrap();
        let r = started_ring(&m);
        let mut st = r.lock();
        let map = Arc::new(m.clone());
        let mut ctx = context(&r, &mut st, &map);
        let served = ctx.serve_next(|req| {
            assert_eq!((req.head(), req.writable_len()), (0, 64));
            req.write_writable(0, &[7; 8]).unwrap();
            8
        });
        assert!(served);
        assert_eq!(
            ctx.state.spare_bufs.len(),
            1,
            "the served request's list is kept"
        );
        // Head 1 is popped as a request of its own and completed through the shared queue.
        let kept = ctx.pop().expect("head 1");
        assert_eq!(kept.readable_len(), 16);
        assert!(!ctx.serve_next(|_| unreachable!("the ring is empty")));
        assert_eq!(ctx.outstanding(), 2);
        kept.complete(0);
        assert_eq!(st.done_here, [(0, 8)]);
        let p = r.publish(&mut st);
        assert_eq!(p.count, 2);
        assert_eq!(st.outstanding(), 0);
        assert!(st.done_here.is_empty());
        drop(st);
        let used: [u32; 5] = m.read_obj(GuestAddress(0x3000)).unwrap();
        // flags/idx, then (id, len) of the served request first, then the queued one.
        assert_eq!(used[0] >> 16, 2);
        assert_eq!(&used[1..], &[0, 8, 1, 0]);
        assert_eq!(m.read_obj::<[u8; 8]>(GuestAddress(0x8000)).unwrap(), [7; 8]);
    }

    /// Ring 0 of 16 entries at `ADDRS` over `m`, started.
    fn started_ring(m: &GuestMemoryMmap) -> Arc<Vring> {
        let r = Arc::new(ring(0, 16, m));
        {
            let mut st = r.lock();
            st.set_size(0, 16).unwrap();
            st.set_addrs(0, ADDRS).unwrap();
            st.start(0, m, None).unwrap();
        }
        r
    }

    /// The worker's view of `r` while it holds `st`, as `process_queue` gets it.
    fn context<'a>(
        r: &'a Arc<Vring>,
        st: &'a mut RingState,
        map: &'a Arc<GuestMemoryMmap>,
    ) -> super::super::request::QueueContext<'a> {
        super::super::request::QueueContext {
            ring: r,
            state: st,
            mem: map,
            taken: 0,
        }
    }

    /// Lays out `n` one-buffer chains (head `i`: 64 writable bytes at `0x8000 + 0x100 * i`)
    /// in the descriptor table of [`ADDRS`]; with `offer`, offers them in the available ring.
    fn writable_chains(m: &GuestMemoryMmap, n: u16, offer: bool) {
        for i in 0..n {
            let d = 0x1000 + 16 * u64::from(i);
            m.write_obj(0x8000 + 0x100 * u64::from(i), GuestAddress(d))
                .unwrap();
            m.write_obj(64u32, GuestAddress(d + 8)).unwrap();
            m.write_obj(2u16, GuestAddress(d + 12)).unwrap();
            if offer {
                m.write_obj(i, GuestAddress(0x2004 + 2 * u64::from(i)))
                    .unwrap();
            }
        }
        if offer {
            m.write_obj(n, GuestAddress(0x2002)).unwrap();
        }
    }

    /// A header in one buffer that crosses from one region into the next (regions with
    /// contiguous guest addresses, which `walk` accepts) reads as the byte copy reads it.
    #[test]
    fn a_header_across_two_adjacent_regions_reads_whole() {
        let m = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x8000),
            (GuestAddress(0x8000), 0x8000),
        ])
        .unwrap();
        let header: [u8; 16] = std::array::from_fn(|i| 0xa0 + i as u8);
        m.write_slice(&header, GuestAddress(0x7ff8)).unwrap();
        // Head 0: 16 readable bytes at 0x7ff8, 8 in each region.
        m.write_obj(0x7ff8u64, GuestAddress(0x1000)).unwrap();
        m.write_obj(16u32, GuestAddress(0x1008)).unwrap();
        m.write_obj(0u16, GuestAddress(0x1000 + 12)).unwrap();
        m.write_obj(0u16, GuestAddress(0x2004)).unwrap();
        m.write_obj(1u16, GuestAddress(0x2002)).unwrap();
        let r = started_ring(&m);
        let mut st = r.lock();
        let map = Arc::new(m.clone());
        let mut ctx = context(&r, &mut st, &map);
        let mut got = None;
        assert!(ctx.serve_next(|req| {
            assert_eq!(req.fault(), None);
            let mut copied = [0u8; 16];
            req.read_readable(0, &mut copied).unwrap();
            got = Some((copied, req.read_array::<16>(0)));
            0
        }));
        let (copied, array) = got.unwrap();
        assert_eq!(copied, header);
        assert_eq!(array.unwrap(), header);
    }

    /// A request's data and its status byte are marked after one fenced check (the
    /// store-load race of `DirtyLog::active_after_writes`), made when the request completes,
    /// after both writes: none while it is served, one for the two writes.
    #[test]
    fn data_and_status_byte_are_marked_after_one_fenced_check_at_completion() {
        use super::super::dirty_log::FENCED_CHECKS;
        let m = mem();
        writable_chains(&m, 1, true);
        let r = started_ring(&m);
        let mut st = r.lock();
        let map = Arc::new(m.clone());
        let mut ctx = context(&r, &mut st, &map);
        let mut fenced_while_served = None;
        let before = FENCED_CHECKS.with(|c| c.get());
        assert!(ctx.serve_next(|req| {
            req.write_writable(0, &[7; 16]).unwrap();
            req.write_last_byte(0x5a).unwrap();
            fenced_while_served = Some(FENCED_CHECKS.with(|c| c.get()) - before);
            17
        }));
        assert_eq!(fenced_while_served, Some(0), "no check before completion");
        assert_eq!(
            FENCED_CHECKS.with(|c| c.get()) - before,
            1,
            "one fenced check for the data and the status byte"
        );
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x8000 + 63)).unwrap(), 0x5a);
    }

    /// A stop waiting for resubmitted requests wakes when the owner serves them on the spot
    /// (`serve_next`: completions recorded under the ring lock, not queued): it answers at
    /// once, not at its bound, with the base covering them.
    #[test]
    fn a_stop_wakes_for_requests_served_on_the_spot() {
        let m = mem();
        writable_chains(&m, 2, false);
        let r = Arc::new(ring(0, 16, &m));
        {
            let mut st = r.lock();
            st.set_size(0, 16).unwrap();
            st.set_base(0, 2).unwrap();
            st.set_addrs(0, ADDRS).unwrap();
            st.set_enabled(true);
            st.start(0, &m, None).unwrap();
            // What a previous back-end left in flight (as an inflight region would say).
            st.resubmit.extend([0, 1]);
        }
        let r2 = Arc::clone(&r);
        let stop = std::thread::spawn(move || {
            let t = Instant::now();
            let (_, base) = r2.quiesce_and_stop(Instant::now() + Duration::from_secs(30));
            (t.elapsed(), base)
        });
        while !r.is_stopping() {
            std::thread::yield_now();
        }
        // The stop is now waiting for the two resubmitted requests (it can do nothing else).
        std::thread::sleep(Duration::from_millis(200));
        let release = Arc::new(std::sync::Barrier::new(2));
        let releaser = {
            let release = Arc::clone(&release);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                release.wait();
            })
        };
        let mut st = r.lock();
        let map = Arc::new(m.clone());
        let mut ctx = context(&r, &mut st, &map);
        assert!(ctx.serve_next(|req| {
            assert_eq!(req.head(), 0);
            release.wait();
            4
        }));
        assert!(ctx.serve_next(|req| {
            assert_eq!(req.head(), 1);
            4
        }));
        assert!(!ctx.serve_next(|_| unreachable!("stopping: nothing new is handed out")));
        let p = r.publish(&mut st);
        assert_eq!(p.count, 2);
        drop(st);
        releaser.join().unwrap();
        let (took, base) = stop.join().unwrap();
        // Without the wake-up the stop sleeps to its 30 s bound; with it, it answers as soon
        // as the owner publishes (well under 10 s even on a loaded machine).
        assert!(took < Duration::from_secs(10), "the stop waited {took:?}");
        let used_idx: u16 = m.read_obj(GuestAddress(0x3002)).unwrap();
        assert_eq!((base.unwrap(), used_idx), (2, 2));
    }

    /// A `serve_next` closure that panics: its request is completed with length 0 and
    /// published with the others, and the next chain is served after it.
    #[test]
    fn a_panicking_serve_completes_its_request_with_length_zero() {
        let m = mem();
        writable_chains(&m, 3, true);
        let r = started_ring(&m);
        let mut st = r.lock();
        let map = Arc::new(m.clone());
        let mut ctx = context(&r, &mut st, &map);
        assert!(ctx.serve_next(|req| {
            assert_eq!(req.head(), 0);
            8
        }));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            ctx.serve_next(|req| {
                assert_eq!(req.head(), 1);
                panic!("device bug")
            })
        }));
        assert!(caught.is_err());
        assert!(ctx.serve_next(|req| {
            assert_eq!(req.head(), 2);
            16
        }));
        assert!(!ctx.serve_next(|_| unreachable!("the ring is empty")));
        let p = r.publish(&mut st);
        assert_eq!(p.count, 3);
        assert_eq!(st.outstanding(), 0);
        drop(st);
        let used: [u32; 7] = m.read_obj(GuestAddress(0x3000)).unwrap();
        assert_eq!(used[0] >> 16, 3);
        // Served on the spot first (0 and 2), then the panicked one (queued by its drop).
        assert_eq!(&used[1..], &[0, 8, 2, 16, 1, 0]);
        let (_, base) = r.quiesce_and_stop(Instant::now() + Duration::from_secs(1));
        assert_eq!(base.unwrap(), 3);
    }

    #[test]
    fn quiesce_waits_for_a_completion_from_another_thread_and_times_out_without_one() {
        let m = mem();
        let r = Arc::new(ring(0, 16, &m));
        {
            let mut st = r.lock();
            st.set_size(0, 16).unwrap();
            st.set_addrs(0, ADDRS).unwrap();
            st.start(0, &m, None).unwrap();
            assert!(st.take_head(1));
        }
        let g = r.generation();
        let r2 = Arc::clone(&r);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            r2.complete(g, 1, 4, Vec::new());
        });
        let (_, base) = r.quiesce_and_stop(Instant::now() + Duration::from_secs(5));
        t.join().unwrap();
        assert_eq!(base.unwrap(), 0);
        let used_idx: u16 = m.read_obj(GuestAddress(0x3002)).unwrap();
        assert_eq!(
            used_idx, 1,
            "the held request was published before the stop"
        );

        // Held for ever: the bound ends the wait and the ring stops anyway.
        {
            let mut st = r.lock();
            st.start(0, &m, None).unwrap();
            assert!(st.take_head(2));
        }
        let g = r.generation();
        let (_, base) = r.quiesce_and_stop(Instant::now() + Duration::from_millis(100));
        assert!(matches!(
            base,
            Err(VringError::QuiesceTimeout { outstanding: 1, .. })
        ));
        assert!(!r.lock().started());
        // Its late completion is dropped, not published into a later start.
        r.complete(g, 2, 4, Vec::new());
        r.lock().start(0, &m, None).unwrap();
        assert_eq!(r.publish_and_signal(), 0);
    }
}
