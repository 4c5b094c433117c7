//! Worker threads: one per queue (or per group of queues the device asks for), each an
//! epoll loop over its rings' kick eventfds, a wake eventfd and the device's own
//! descriptors. No busy loop: the thread sleeps in `epoll_wait` until something is
//! readable, or for [`POLL_INTERVAL_MS`] while a ring of the group has no kick eventfd
//! (SET_VRING_KICK with NOFD: the ring is polled on that timer).
//!
//! The control thread adds and removes kick fds in the worker's epoll set directly
//! (`epoll_ctl` is thread-safe) and wakes the worker through its eventfd to make it look at
//! rings flagged `pending` (just enabled) or to stop.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::{Processed, QueueContext, VirtioDevice};
use super::vring::{Kick, Vring};

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
    wake: EventFd,
    stop: AtomicBool,
    polled_rings: AtomicUsize,
}

/// The control thread's handle on one worker thread. Dropping it stops and joins the thread.
pub(crate) struct Worker<D: VirtioDevice> {
    shared: Arc<Shared<D>>,
    thread: Option<JoinHandle<()>>,
}

impl<D: VirtioDevice> Worker<D> {
    /// Starts worker `id` serving `queues` (indices into `rings`).
    pub(crate) fn start(
        id: usize,
        device: Arc<D>,
        rings: Arc<[Arc<Vring>]>,
        queues: Vec<u16>,
        mem: GuestMemoryAtomic<GuestMemoryMmap>,
    ) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        let wake = EventFd::new(EFD_NONBLOCK)?;
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
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("vhost-worker-{id}"))
            .spawn(move || run(&s))?;
        Ok(Worker {
            shared,
            thread: Some(thread),
        })
    }

    /// Watches `fd` as the kick eventfd of `queue`, generation `gen`.
    pub(crate) fn add_kick(&self, queue: u16, gen: u16, fd: RawFd) -> io::Result<()> {
        self.shared.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(EventSet::IN, kick_token(queue, gen)),
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
    }
}

fn run<D: VirtioDevice>(s: &Shared<D>) {
    let mut events = [EpollEvent::default(); 32];
    log::debug!("worker {} started for queues {:?}", s.id, s.queues);
    loop {
        let timeout = if s.polled_rings.load(Ordering::Acquire) > 0 {
            POLL_INTERVAL_MS
        } else {
            -1
        };
        let n = match s.epoll.wait(timeout, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log::error!("worker {}: epoll_wait failed: {e}", s.id);
                return;
            }
        };
        if s.stop.load(Ordering::Acquire) {
            log::debug!("worker {} stopping", s.id);
            return;
        }
        // One memory snapshot per wake-up: a table replaced meanwhile is seen next time.
        let mem = s.mem.memory();
        if n == 0 {
            for &q in &s.queues {
                process(s, q, &mem, Trigger::Poll);
            }
        }
        for ev in &events[..n] {
            let data = ev.data();
            match data & KIND_MASK {
                KIND_WAKE => {
                    // Non-blocking: a concurrent wake may already have been consumed.
                    let _ = s.wake.read();
                    for &q in &s.queues {
                        if s.rings[usize::from(q)]
                            .pending
                            .swap(false, Ordering::AcqRel)
                        {
                            process(s, q, &mem, Trigger::Pending);
                        }
                    }
                }
                KIND_KICK => {
                    let q = (data & 0xffff) as u16;
                    let gen = ((data >> 16) & 0xffff) as u16;
                    process(s, q, &mem, Trigger::Kick(gen));
                }
                KIND_DEVICE => match s.device.handle_event(s.id, data as u32) {
                    Ok(true) => {
                        for &q in &s.queues {
                            process(s, q, &mem, Trigger::Pending);
                        }
                    }
                    Ok(false) => {}
                    Err(e) => log::warn!("worker {}: device event {}: {e}", s.id, data as u32),
                },
                _ => log::error!("worker {}: unknown event token {data:#x}", s.id),
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Trigger {
    Kick(u16),
    Poll,
    Pending,
}

/// Processes one ring if it is started and enabled: lets the device drain the available
/// ring, re-enables notifications and re-checks, then signals the call eventfd once if
/// the driver wants it.
fn process<D: VirtioDevice>(s: &Shared<D>, q: u16, mem: &GuestMemoryMmap, why: Trigger) {
    let Some(ring) = s.rings.get(usize::from(q)) else {
        return;
    };
    let mut guard = ring.lock();
    match why {
        // An event of a kick fd that has since been replaced or removed: ignore it.
        Trigger::Kick(gen) if guard.kick_gen != gen => return,
        Trigger::Kick(_) => guard.consume_kick(),
        Trigger::Poll if !matches!(guard.kick, Kick::Poll) => return,
        _ => {}
    }
    // While disabled the kick is consumed and forgotten: enabling the ring sets `pending`
    // and wakes this worker, which then looks at the whole available ring.
    if !(guard.started && guard.enabled) {
        return;
    }
    let inner = &mut *guard;
    let mut ctx = QueueContext {
        index: q,
        queue: &mut inner.queue,
        mem,
        stopping: &ring.stopping,
        used: 0,
    };
    loop {
        let before = ctx.queue.next_avail();
        if let Err(e) = QueueT::disable_notification(ctx.queue, mem) {
            log::warn!("queue {q}: disabling notifications: {e}");
        }
        match s.device.process_queue(&mut ctx) {
            Ok(Processed::Drained) => {}
            Ok(Processed::Paused) => break,
            Err(e) => {
                log::warn!("queue {q}: {e}");
                ring.signal_err();
                break;
            }
        }
        // Nothing taken this round (stopping, or an avail index the queue refuses): do not
        // spin on a ring that will not move.
        if ring.stopping.load(Ordering::Relaxed) || ctx.queue.next_avail() == before {
            let _ = QueueT::enable_notification(ctx.queue, mem);
            break;
        }
        match QueueT::enable_notification(ctx.queue, mem) {
            Ok(true) => continue,
            Ok(false) => break,
            Err(e) => {
                log::warn!("queue {q}: enabling notifications: {e}");
                break;
            }
        }
    }
    if ctx.used > 0 {
        match QueueT::needs_notification(ctx.queue, mem) {
            Ok(false) => {}
            Ok(true) => ring.signal_call(),
            Err(e) => {
                log::warn!("queue {q}: reading used_event: {e}");
                ring.signal_call();
            }
        }
    }
}
