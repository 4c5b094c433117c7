//! Workers: one per queue (or per group of queues the device asks for), each an epoll set
//! over its rings' kick eventfds, a wake eventfd and the device's own descriptors.
//!
//! A worker is a state machine driven by one *turn* at a time: wait for events (or not), then
//! read kicks, run the device on ready rings, publish completions and signal calls. A
//! threaded worker runs turns on its own thread and sleeps in `epoll_wait` until something
//! is readable, or for [`POLL_INTERVAL_MS`] while a ring of the group has no kick eventfd
//! (SET_VRING_KICK with NOFD: the ring is polled on that timer). A threadless worker
//! ([`DeviceBackend::threadless`](super::DeviceBackend::threadless)) has no thread: whoever
//! owns the back-end runs its turns, without blocking — deterministic, for tests and fuzzing.
//!
//! The control thread adds and removes kick fds in the worker's epoll set directly
//! (`epoll_ctl` is thread-safe) and wakes the worker through its eventfd to make it look at
//! rings flagged `pending` (just enabled) or to stop. A request completed away from the
//! worker wakes it the same way, and the worker publishes the completions.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{Processed, VirtioDevice};
use super::request::QueueContext;
use super::vring::{RingState, Vring};

/// How often a ring without a kick eventfd (NOFD) is polled, in milliseconds.
pub const POLL_INTERVAL_MS: i32 = 2;

const KIND_WAKE: u64 = 1 << 56;
const KIND_KICK: u64 = 2 << 56;
const KIND_DEVICE: u64 = 3 << 56;
const KIND_MASK: u64 = 0xff << 56;

fn kick_token(queue: u16, gen: u16) -> u64 {
    KIND_KICK | (u64::from(gen) << 16) | u64::from(queue)
}

/// What the worker thread and the control thread share.
struct Shared<D> {
    id: usize,
    device: Arc<D>,
    rings: Arc<[Arc<Vring>]>,
    queues: Vec<u16>,
    mem: GuestMemoryAtomic<GuestMemoryMmap>,
    epoll: Epoll,
    wake: Arc<EventFd>,
    stop: AtomicBool,
    polled_rings: AtomicUsize,
}

/// The control thread's handle on one worker. Dropping it stops and joins the thread.
pub(crate) struct Worker<D: VirtioDevice> {
    shared: Arc<Shared<D>>,
    thread: Option<JoinHandle<()>>,
    /// A threadless worker's poll clock.
    next_poll: Mutex<Instant>,
}

impl<D: VirtioDevice> Worker<D> {
    /// Starts worker `id` serving `queues` (indices into `rings`), on its own thread when
    /// `threaded`.
    pub(crate) fn start(
        id: usize,
        device: Arc<D>,
        rings: Arc<[Arc<Vring>]>,
        queues: Vec<u16>,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
        threaded: bool,
    ) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        let wake = Arc::new(EventFd::new(EFD_NONBLOCK)?);
        epoll.ctl(
            ControlOperation::Add,
            wake.as_raw_fd(),
            EpollEvent::new(EventSet::IN, KIND_WAKE),
        )?;
        for fd in device.worker_fds(id) {
            epoll.ctl(
                ControlOperation::Add,
                fd.fd,
                EpollEvent::new(EventSet::IN, KIND_DEVICE | u64::from(fd.token)),
            )?;
        }
        for &q in &queues {
            rings[usize::from(q)].set_waker(Some(Arc::clone(&wake)));
        }
        let shared = Arc::new(Shared {
            id,
            device,
            rings,
            queues,
            mem,
            epoll,
            wake,
            stop: AtomicBool::new(false),
            polled_rings: AtomicUsize::new(0),
        });
        let thread = if threaded {
            let s = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name(format!("vhost-worker-{id}"))
                .spawn(move || run(&s));
            match spawned {
                Ok(t) => Some(t),
                Err(e) => {
                    shared.detach_rings();
                    return Err(e);
                }
            }
        } else {
            None
        };
        Ok(Worker {
            shared,
            thread,
            next_poll: Mutex::new(Instant::now()),
        })
    }

    /// Watches `fd` as the kick eventfd of `queue`, generation `gen`. Edge-triggered: every
    /// kick (every write to the eventfd) is one event, and the worker does not read the
    /// eventfd for a kick that brought chains, one system call less per kick. A kick that
    /// brought nothing new resets it: a front-end may write any value up to the counter's
    /// ceiling (0xffff_ffff_ffff_fffe) in one go, after which every further write fails
    /// with EAGAIN (the descriptor is non-blocking) until the counter is read.
    pub(crate) fn add_kick(&self, queue: u16, gen: u16, fd: RawFd) -> io::Result<()> {
        self.shared.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(
                EventSet::IN | EventSet::EDGE_TRIGGERED,
                kick_token(queue, gen),
            ),
        )
    }

    /// Stops watching a kick eventfd.
    pub(crate) fn remove_kick(&self, fd: RawFd) {
        if let Err(e) = self
            .shared
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        {
            log::debug!("worker {}: removing a kick fd: {e}", self.shared.id);
        }
    }

    /// A ring of this worker entered (`true`) or left (`false`) polling mode.
    pub(crate) fn set_polled(&self, entering: bool) {
        if entering {
            self.shared.polled_rings.fetch_add(1, Ordering::AcqRel);
        } else {
            self.shared.polled_rings.fetch_sub(1, Ordering::AcqRel);
        }
        self.wake();
    }

    /// Wakes the worker: it processes the rings flagged `pending`.
    pub(crate) fn wake(&self) {
        if let Err(e) = self.shared.wake.write(1) {
            log::warn!("worker {}: wake failed: {e}", self.shared.id);
        }
    }

    /// One turn of a threadless worker: everything ready now (kicks, wake-ups, device
    /// events, completions) is handled, and polled rings are looked at. Never blocks.
    /// Returns the number of events handled.
    pub(crate) fn turn(&self) -> usize {
        if self.thread.is_some() {
            return 0;
        }
        let mut events = [EpollEvent::default(); 32];
        let mut next_poll = self
            .next_poll
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // A threadless worker polls NOFD rings at every turn.
        *next_poll = Instant::now();
        turn(&self.shared, 0, &mut events, &mut next_poll).unwrap_or(0)
    }
}

impl<D: VirtioDevice> Drop for Worker<D> {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.wake();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("worker {} panicked", self.shared.id);
            }
        }
        self.shared.detach_rings();
    }
}

impl<D: VirtioDevice> Shared<D> {
    /// The rings stop waking this worker.
    fn detach_rings(&self) {
        for &q in &self.queues {
            self.rings[usize::from(q)].set_waker(None);
        }
    }
}

fn run<D: VirtioDevice>(s: &Shared<D>) {
    let mut events = [EpollEvent::default(); 32];
    let interval = Duration::from_millis(POLL_INTERVAL_MS as u64);
    let mut next_poll = Instant::now() + interval;
    log::debug!("worker {} started for queues {:?}", s.id, s.queues);
    loop {
        // Checked before sleeping too: a stop requested while this thread handled the
        // previous batch of events wrote its wake-up to the wake eventfd, and a wake event
        // of that batch may have read it already.
        if s.stop.load(Ordering::Acquire) {
            log::debug!("worker {} stopping", s.id);
            return;
        }
        let polling = s.polled_rings.load(Ordering::Acquire) > 0;
        let timeout = if polling {
            let left = next_poll.saturating_duration_since(Instant::now());
            // Round up: waking a little late is fine, spinning on a zero timeout is not.
            i32::try_from(left.as_micros().div_ceil(1000)).unwrap_or(POLL_INTERVAL_MS)
        } else {
            -1
        };
        if turn(s, timeout, &mut events, &mut next_poll).is_none() {
            return;
        }
    }
}

/// Waits up to `timeout` milliseconds (-1: for ever) for events and handles them. `None`
/// when the worker must end (stop requested, or its epoll set failed).
fn turn<D: VirtioDevice>(
    s: &Shared<D>,
    timeout: i32,
    events: &mut [EpollEvent],
    next_poll: &mut Instant,
) -> Option<usize> {
    let n = match s.epoll.wait(timeout, events) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => return Some(0),
        Err(e) => {
            // The worker cannot serve its rings any more: say so where the front-end
            // listens for it.
            log::error!(
                "worker {}: epoll_wait failed, queues {:?} stop being served: {e}",
                s.id,
                s.queues
            );
            for &q in &s.queues {
                if let Some(ring) = s.rings.get(usize::from(q)) {
                    ring.signal_err();
                }
            }
            return None;
        }
    };
    if s.stop.load(Ordering::Acquire) {
        log::debug!("worker {} stopping", s.id);
        return None;
    }
    for ev in &events[..n] {
        let data = ev.data();
        match data & KIND_MASK {
            KIND_WAKE => {
                // Non-blocking: a concurrent wake may already have been consumed.
                let _ = s.wake.read();
                for &q in &s.queues {
                    let ring = &s.rings[usize::from(q)];
                    if ring.take_pending() {
                        process(s, q, Trigger::Pending);
                    } else if ring.has_completions() {
                        ring.publish_and_signal();
                    }
                }
            }
            KIND_KICK => {
                let q = (data & 0xffff) as u16;
                let gen = ((data >> 16) & 0xffff) as u16;
                process(s, q, Trigger::Kick(gen));
            }
            KIND_DEVICE => {
                // Requests the device completes in its handler (an I/O engine reaping) are
                // published right after it, as during a drain: they need no wake-up.
                let draining = Draining::new(&s.rings, &s.queues);
                let handled = s.device.handle_event(s.id, data as u32);
                drop(draining);
                match handled {
                    Ok(true) => {
                        for &q in &s.queues {
                            process(s, q, Trigger::Pending);
                        }
                    }
                    Ok(false) | Err(_) => {
                        if let Err(e) = handled {
                            log::warn!("worker {}: device event {}: {e}", s.id, data as u32);
                        }
                        for &q in &s.queues {
                            let ring = &s.rings[usize::from(q)];
                            if ring.has_completions() {
                                ring.publish_and_signal();
                            }
                        }
                    }
                }
            }
            _ => log::error!("worker {}: unknown event token {data:#x}", s.id),
        }
    }
    // Polled rings go by the clock, not by epoll timing out: a busy kick fd of another
    // ring of this worker must not starve them. Without one the clock is not read (one
    // clock read less per wake-up); the first turn of a polled ring is then due at once.
    if s.polled_rings.load(Ordering::Acquire) > 0 {
        let now = Instant::now();
        if now >= *next_poll {
            for &q in &s.queues {
                process(s, q, Trigger::Poll);
            }
            *next_poll = now + Duration::from_millis(POLL_INTERVAL_MS as u64);
        }
    }
    Some(n)
}

/// Marks rings as drained by their owner ([`Vring::set_draining`]) while it lives; unmarks
/// them when dropped, also when the device panics: a ring left marked would never be
/// signalled for completions made outside a drain again.
struct Draining<'a> {
    rings: &'a [Arc<Vring>],
    queues: &'a [u16],
}

impl<'a> Draining<'a> {
    /// Marks `rings[q]` for each `q` of `queues`.
    fn new(rings: &'a [Arc<Vring>], queues: &'a [u16]) -> Self {
        let d = Draining { rings, queues };
        d.set(true);
        d
    }

    fn set(&self, on: bool) {
        for &q in self.queues {
            if let Some(r) = self.rings.get(usize::from(q)) {
                r.set_draining(on);
            }
        }
    }
}

impl Drop for Draining<'_> {
    fn drop(&mut self) {
        self.set(false);
    }
}

#[derive(Clone, Copy)]
enum Trigger {
    Kick(u16),
    Poll,
    Pending,
}

/// Runs the device on one ring if it is started and enabled, publishes the completions
/// made meanwhile, and signals its call eventfd once if the driver wants it. The memory
/// snapshot is taken here, per ring processed, so a table replaced while the worker handled
/// other events is seen at once; each request popped keeps the snapshot it came from.
fn process<D: VirtioDevice>(s: &Shared<D>, q: u16, why: Trigger) {
    let Some(ring) = s.rings.get(usize::from(q)) else {
        return;
    };
    let mut st = ring.lock();
    match why {
        // An event of a kick fd that has since been replaced or removed: ignore it.
        Trigger::Kick(gen) if st.kick_gen() != gen => return,
        // The kick fd is edge-triggered: nothing to read (but see below).
        Trigger::Kick(_) => {}
        Trigger::Poll if !st.polled() => return,
        _ => {}
    }
    let avail_before = st.next_avail();
    // While disabled the kick is consumed and forgotten: enabling the ring sets `pending`
    // and wakes this worker, which then looks at the whole available ring.
    let mem = st.running().then(|| s.mem.memory().into_inner());
    let outcome = match &mem {
        Some(mem) => {
            let _draining = Draining::new(&s.rings, std::slice::from_ref(&q));
            drain(s.device.as_ref(), ring, &mut st, mem)
        }
        None => Signals::default(),
    };
    let mut recheck = false;
    if matches!(why, Trigger::Kick(_)) && st.next_avail() == avail_before {
        // A kick that brought nothing new: reset the counter, which nothing else reads, so
        // a front-end's write up to its ceiling cannot leave it saturated (see `add_kick`).
        // epoll checks the fd again before it reports a pending edge, so the read may
        // swallow a kick written since the drain looked: the ring is looked at once more,
        // after the read.
        if let Some(mut f) = st.kick_fd() {
            let mut count = [0u8; 8];
            recheck = std::io::Read::read(&mut f, &mut count).is_ok() && st.running();
        }
    }
    // Published through the drain's snapshot (no second load of the table).
    let published = ring.publish_in(&mut st, mem.as_deref());
    drop(st);
    // The eventfds are signalled after the ring lock is released: GET_VRING_BASE never
    // waits on a write (which cannot block anyway: the runtime only accepts non-blocking
    // eventfds).
    if outcome.failed {
        ring.signal_err();
    }
    if published.notify {
        ring.signal_call();
    }
    if outcome.unfinished || recheck {
        ring.set_pending();
        if let Err(e) = s.wake.write(1) {
            log::warn!("worker {}: wake failed: {e}", s.id);
        }
    }
}

/// What one [`drain`] asks for.
#[derive(Default)]
struct Signals {
    failed: bool,
    /// The drain stopped after [`MAX_DRAIN_ROUNDS`] with chains still coming.
    unfinished: bool,
}

/// Most rounds one [`drain`] runs while chains keep coming. The ring lock is held for the
/// whole drain, so a ring that never runs dry (a driver that keeps publishing, or a ring
/// laid over its own used ring, where each used entry moves the available index on) must
/// not keep the control thread, or a worker being stopped, waiting for ever: past this
/// many rounds the ring is marked pending and the worker comes back to it after its next
/// `epoll_wait`.
const MAX_DRAIN_ROUNDS: u32 = 64;

/// Lets the device drain the available ring with notifications off, re-enables them and
/// looks again for chains published meanwhile.
///
/// A round that takes no chain normally ends the drain. But the driver may have published
/// a chain after the device last looked and before notifications were back on, without
/// kicking (it saw them off): when re-enabling says more work is available, the ring is
/// drained again. The ring is only trusted that far when its available index is at most
/// one ring ahead; a second empty round in a row with work announced means the queue
/// refuses what the index offers (a broken ring), which is logged instead of spun on.
fn drain<D: VirtioDevice>(
    device: &D,
    ring: &Arc<Vring>,
    st: &mut RingState,
    mem: &Arc<GuestMemoryMmap>,
) -> Signals {
    let q = ring.index;
    let mut failed = false;
    let mut empty_rounds = 0u32;
    let mut rounds = 0u32;
    let mut unfinished = false;
    loop {
        let before = st.next_avail();
        if let Err(e) = st.disable_notification(mem) {
            ring.log
                .warn(format_args!("queue {q}: disabling notifications: {e}"));
        }
        ring.log_notification_write(st, false);
        let mut ctx = QueueContext {
            ring,
            state: &mut *st,
            mem,
            taken: 0,
        };
        match device.process_queue(&mut ctx) {
            Ok(Processed::Drained) => {}
            Ok(Processed::Paused) => break,
            Err(e) => {
                ring.log.warn(format_args!("queue {q}: {e}"));
                failed = true;
                break;
            }
        }
        let stopping = ring.is_stopping();
        let enabled = st.enable_notification(mem);
        ring.log_notification_write(st, true);
        let more = match enabled {
            Ok(more) => more,
            Err(e) => {
                ring.log
                    .warn(format_args!("queue {q}: enabling notifications: {e}"));
                break;
            }
        };
        if stopping || !more {
            break;
        }
        if st.next_avail() != before {
            empty_rounds = 0;
            rounds += 1;
            if rounds >= MAX_DRAIN_ROUNDS {
                unfinished = true;
                break;
            }
            continue;
        }
        // Nothing taken, yet the available index moved past it.
        empty_rounds += 1;
        let next = st.next_avail();
        let size = st.size();
        let ahead = st.avail_ahead(mem);
        match ahead {
            Ok(ahead) if ahead <= size && empty_rounds < 2 => continue,
            Ok(ahead) => {
                ring.log.warn(format_args!(
                    "queue {q}: broken ring: available index {ahead} ahead of {next} in a ring \
                     of {size}, and nothing can be taken",
                ));
                break;
            }
            Err(e) => {
                ring.log
                    .warn(format_args!("queue {q}: reading the available index: {e}"));
                break;
            }
        }
    }
    Signals { failed, unfinished }
}
