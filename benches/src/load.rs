//! A request engine that keeps `depth` requests in flight on each of queues `0..queues` of
//! a [`Session`] (total depth `queues * depth`): blk 4 KiB random reads or writes, or rng
//! 4 KiB fills.
//!
//! Once built it allocates nothing, and it is one thread whatever the number of queues.
//! Each wake-up drains every used entry of every queue, checks each completion, refills
//! the slot at once with a new request on the same queue, and publishes (kicking when the
//! device asks for it) once per queue that had completions. Only when no queue had any does
//! it sleep on the call eventfds (one epoll set holds every queue's): in `epoll_wait`,
//! edge-triggered, without reading the counters (one system call per sleep, where `poll`
//! and `read` make two; our back-end's workers wait for kicks the same way). That sleep
//! has no timeout of its own (an `epoll_wait` timeout arms and cancels a kernel timer and
//! reads the clock at every sleep): a periodic timerfd in the same epoll set is the
//! watchdog, see [`Engine::set_timeout`]; it watches each queue on its own, so one queue
//! that stops answering fails the run even while the others flow.
//!
//! Every completion is checked so that a fast wrong answer cannot pass: blk status byte
//! and used length; reads check the first word of the block (the device must have written
//! it: it is cleared before submitting) and the whole block every
//! [`Engine::FULL_CHECK_EVERY`] completions; writes send the block's pattern, so the image
//! stays a pattern image; rng fills check the used length and that the cleared first
//! word was overwritten.

use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::event::{epoll, Timespec};
use rustix::io::Errno;
use rustix::time::{
    timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags,
};
use vhost_frontend::devices::blk::{RequestHeader, S_OK, S_UNWRITTEN, T_IN, T_OUT};
use vhost_frontend::{Buffer, Session, SessionError};
use vm_memory::{Bytes, GuestAddress, GuestMemory as _, GuestMemoryError, VolatileMemory};
use zerocopy::little_endian::{U32, U64};

use crate::{check_pattern, fill_pattern, pattern, XorShift, BLOCK};

/// What the engine asks of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// blk: 4 KiB reads at random 4 KiB-aligned offsets.
    RandRead,
    /// blk: 4 KiB writes of the pattern at random 4 KiB-aligned offsets.
    RandWrite,
    /// rng: 4 KiB fills.
    Rng,
}

impl Workload {
    /// A short name (`randread`, `randwrite`, `rng`).
    pub fn name(self) -> &'static str {
        match self {
            Workload::RandRead => "randread",
            Workload::RandWrite => "randwrite",
            Workload::Rng => "rng",
        }
    }
}

/// Why the engine stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The session (control plane, queue, memory) failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Guest memory could not be read or written.
    #[error("guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The device completed a chain this engine has not in flight.
    #[error("completion for head {0}, which is not in flight")]
    UnknownHead(u16),
    /// A blk request finished with a non-OK status.
    #[error("{workload} of block {block}: status {status}")]
    Status {
        /// The workload.
        workload: &'static str,
        /// The block.
        block: u64,
        /// The status byte (0xff: never written).
        status: u8,
    },
    /// The used length is not what the request should report.
    #[error("{workload}: used length {got}, expected {want}")]
    UsedLen {
        /// The workload.
        workload: &'static str,
        /// Reported length.
        got: u32,
        /// Expected length.
        want: u32,
    },
    /// The data read back is wrong.
    #[error("{workload}: wrong data in block {block}")]
    Data {
        /// The workload.
        workload: &'static str,
        /// The block (0 for rng).
        block: u64,
    },
    /// The configuration cannot run.
    #[error("{0}")]
    Config(String),
}

/// Result of the engine.
pub type Result<T> = std::result::Result<T, LoadError>;

/// Watchdog expiries (every half timeout) in a row that find a busy queue without a new
/// completion before the engine gives up on it: the first may be stale and the second
/// may follow at once, the second and the fourth are a whole timeout apart.
pub const STALLED_TICKS: u32 = 4;

/// Epoll data of the watchdog timerfd (a call eventfd's is its queue index).
const WATCHDOG: u64 = u64::MAX;

/// The most queues an engine drives.
pub const MAX_QUEUES: usize = 64;

/// A request slot: one block of guest memory holding the 4 KiB data buffer, then the
/// 16-byte header, then the status byte, so that one region lookup reaches all three.
#[derive(Debug, Clone, Copy)]
struct Slot {
    data: GuestAddress,
    block: u64,
    /// The queue this slot's requests go to.
    queue: usize,
}

/// Offset of the header in a slot (after the data buffer).
const HEADER_OFFSET: u64 = BLOCK as u64;
/// Size of the header.
const HEADER_LEN: u64 = 16;
/// Offset of the status byte in a slot (right after the header).
const STATUS_OFFSET: u64 = HEADER_OFFSET + HEADER_LEN;
/// Bytes of a slot.
const SLOT_LEN: usize = STATUS_OFFSET as usize + 1;

impl Slot {
    fn header(&self) -> GuestAddress {
        GuestAddress(self.data.0 + HEADER_OFFSET)
    }

    fn status(&self) -> GuestAddress {
        GuestAddress(self.data.0 + STATUS_OFFSET)
    }
}

fn volatile_err(e: vm_memory::VolatileMemoryError) -> LoadError {
    LoadError::Memory(GuestMemoryError::from(e))
}

/// Counters of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests completed and checked.
    pub completed: u64,
    /// Times the engine slept on the call eventfd.
    pub waits: u64,
    /// Kicks sent (publishes the device asked to be notified of).
    pub kicks: u64,
    /// Publishes (batches made visible).
    pub publishes: u64,
}

/// The request engine. See the [module docs](self).
pub struct Engine {
    session: Session,
    workload: Workload,
    /// Queues driven: `0..queues`.
    queues: usize,
    /// `depth` slots per queue, queue by queue.
    slots: Vec<Slot>,
    /// Slot of each in-flight head of each queue (queue `q`'s head `h` at
    /// `q * queue_size + h`), `usize::MAX` when none.
    by_head: Vec<usize>,
    /// Size of each queue (the stride of `by_head`).
    queue_size: usize,
    in_flight: usize,
    blocks: u64,
    rng: XorShift,
    scratch: Box<[u8; BLOCK]>,
    stats: Stats,
    timeout: Duration,
    /// The watchdog: a timerfd that expires every half `timeout`, in the `calls` set.
    watchdog: OwnedFd,
    /// Watchdog expiries seen (for tests).
    ticks: u64,
    /// Completions since the watchdog was last looked at between wake-ups.
    since_look: u64,
    /// Completions taken on each queue since the engine was built (never reset).
    progress: Vec<u64>,
    /// `progress` at the last watchdog expiry seen (or when it was armed).
    progress_at_tick: Vec<u64>,
    /// Expiries seen in a row that found the queue busy and without a new completion.
    stalled: Vec<u32>,
    /// `progress` at the last [`Engine::reset_stats`] (or when the engine was built).
    progress_at_reset: Vec<u64>,
    /// For the test of the data checks: on this queue the header asks the device for the
    /// block after the one the check expects (a device answering with a wrong block).
    #[cfg(test)]
    wrong_block_on: Option<usize>,
    /// An epoll set with every queue's call eventfd (data: the queue index), edge-triggered:
    /// one event per call, nothing to read. Waited on with a raw `epoll_pwait` (rustix),
    /// without the C library's cancellation-point wrapper.
    calls: OwnedFd,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("workload", &self.workload)
            .field("queues", &self.queues)
            .field("depth", &(self.slots.len() / self.queues))
            .field("in_flight", &self.in_flight)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Guest memory a session needs for `depth` slots on a queue of `queue_size` (rings,
/// headers, status bytes and 4 KiB-aligned data buffers), rounded up to 2 MiB.
pub fn memory_size(depth: usize, queue_size: u16) -> u64 {
    memory_size_queues(1, depth, queue_size)
}

/// Guest memory a session needs for `depth` slots on each of `queues` queues of
/// `queue_size`, rounded up to 2 MiB.
pub fn memory_size_queues(queues: usize, depth: usize, queue_size: u16) -> u64 {
    let queues = queues.max(1) as u64;
    let rings = queues * (64 * 1024 + u64::from(queue_size) * 64);
    let slots = queues * depth as u64 * (2 * BLOCK as u64 + 64);
    (rings + slots + (1 << 20)).div_ceil(2 << 20) * (2 << 20)
}

impl Engine {
    /// Full data checks of reads happen once every this many completions (a power of two).
    pub const FULL_CHECK_EVERY: u64 = 256;

    /// [`Engine::run_for`] looks at the clock once every this many completions.
    pub const CLOCK_EVERY: u64 = 32;

    /// An engine on queue 0 of a started `session`, with `depth` request slots. `blocks` is
    /// the number of 4 KiB blocks of the disk (ignored for rng).
    pub fn new(
        session: Session,
        workload: Workload,
        depth: usize,
        blocks: u64,
        seed: u64,
    ) -> Result<Self> {
        Self::with_queues(session, workload, 1, depth, blocks, seed)
    }

    /// An engine on queues `0..queues` of a started `session`, with `depth` request slots on
    /// each (total depth `queues * depth`). `blocks` is the number of 4 KiB blocks of the
    /// disk (ignored for rng).
    pub fn with_queues(
        session: Session,
        workload: Workload,
        queues: usize,
        depth: usize,
        blocks: u64,
        seed: u64,
    ) -> Result<Self> {
        if queues == 0 || queues > MAX_QUEUES || queues > session.num_queues() {
            return Err(LoadError::Config(format!(
                "{queues} queues asked; the session has {} (at most {MAX_QUEUES})",
                session.num_queues()
            )));
        }
        let mut qsize = None;
        for q in 0..queues {
            let size = session
                .driver(q)
                .map(|d| usize::from(d.size()))
                .ok_or(LoadError::Config(format!("the session has no queue {q}")))?;
            // `by_head` gives every queue `qsize` entries: heads index it per queue.
            if qsize.is_some_and(|s| s != size) {
                return Err(LoadError::Config(format!(
                    "queue {q} has {size} entries, queue 0 {}: the queues must be alike",
                    qsize.unwrap_or_default()
                )));
            }
            qsize = Some(size);
        }
        let qsize = qsize.unwrap_or_default();
        let descs = if workload == Workload::Rng { 1 } else { 3 };
        if depth == 0 || depth * descs > qsize {
            return Err(LoadError::Config(format!(
                "depth {depth} needs {} descriptors; the queue has {qsize}",
                depth * descs
            )));
        }
        if workload != Workload::Rng && blocks == 0 {
            return Err(LoadError::Config("the disk has no 4 KiB block".into()));
        }
        let eventfd_err = |e: Errno| SessionError::EventFd(e.into());
        let calls = epoll::create(epoll::CreateFlags::CLOEXEC).map_err(eventfd_err)?;
        for q in 0..queues {
            let call = session
                .call_fd(q)
                .ok_or(LoadError::Config(format!("the session has no queue {q}")))?;
            epoll::add(
                &calls,
                call,
                epoll::EventData::new_u64(q as u64),
                epoll::EventFlags::IN | epoll::EventFlags::ET,
            )
            .map_err(eventfd_err)?;
        }
        let watchdog = timerfd_create(
            TimerfdClockId::Monotonic,
            TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
        )
        .map_err(eventfd_err)?;
        epoll::add(
            &calls,
            &watchdog,
            epoll::EventData::new_u64(WATCHDOG),
            epoll::EventFlags::IN,
        )
        .map_err(eventfd_err)?;
        let mem = session.memory();
        let mut slots = Vec::with_capacity(queues * depth);
        for queue in 0..queues {
            for _ in 0..depth {
                slots.push(Slot {
                    data: mem
                        .alloc(SLOT_LEN as u64, 4096)
                        .map_err(SessionError::from)?,
                    block: 0,
                    queue,
                });
            }
        }
        let mut engine = Engine {
            session,
            workload,
            queues,
            slots,
            by_head: vec![usize::MAX; queues * qsize],
            queue_size: qsize,
            in_flight: 0,
            blocks,
            rng: XorShift::new(seed),
            scratch: Box::new([0; BLOCK]),
            stats: Stats::default(),
            timeout: Duration::from_secs(10),
            watchdog,
            progress: vec![0; queues],
            progress_at_tick: vec![0; queues],
            stalled: vec![0; queues],
            ticks: 0,
            since_look: 0,
            progress_at_reset: vec![0; queues],
            #[cfg(test)]
            wrong_block_on: None,
            calls,
        };
        engine.set_timeout(engine.timeout)?;
        Ok(engine)
    }

    /// Sets how long the engine waits for a completion before it gives up (10 s unless
    /// set), and restarts the watchdog: it expires every half `timeout`, and a queue that
    /// has requests in flight and no new completion at [`STALLED_TICKS`] expiries in a row
    /// ends the wait with [`SessionError::Timeout`] naming that queue. Expiries count only
    /// when the engine sees them, in its waits or, between wake-ups, once every
    /// [`Engine::CLOCK_EVERY`] completions: the first one seen after time spent elsewhere
    /// (set-up, a pause) may be stale and the next may come at once, so four make at least
    /// one whole `timeout`. A queue thus fails the run after at least `timeout` without a
    /// completion, and, while the engine waits, at most `2.5 * timeout` after its last one
    /// (the expiry right after it still sees it, then four more).
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        let period = Timespec::try_from((timeout / 2).max(Duration::from_millis(1)))
            .map_err(|_| LoadError::Config(format!("timeout {timeout:?} too long")))?;
        let spec = Itimerspec {
            it_interval: period,
            it_value: period,
        };
        timerfd_settime(&self.watchdog, TimerfdTimerFlags::empty(), &spec)
            .map_err(|e| SessionError::EventFd(e.into()))?;
        self.timeout = timeout;
        self.progress_at_tick.copy_from_slice(&self.progress);
        self.stalled.fill(0);
        Ok(())
    }

    /// The session (for its control plane or memory).
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Counters since the engine was built (or [`Engine::reset_stats`]).
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Zeroes the counters.
    pub fn reset_stats(&mut self) {
        self.stats = Stats::default();
        self.progress_at_reset.copy_from_slice(&self.progress);
    }

    /// Queues driven.
    pub fn queues(&self) -> usize {
        self.queues
    }

    /// Requests completed and checked on queue `queue` since the engine was built (or
    /// [`Engine::reset_stats`]); 0 for a queue not driven.
    pub fn completed_on(&self, queue: usize) -> u64 {
        match (self.progress.get(queue), self.progress_at_reset.get(queue)) {
            (Some(now), Some(then)) => now - then,
            _ => 0,
        }
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Writes slot `slot`'s request into guest memory and adds its chain (not published).
    fn add(&mut self, slot: usize) -> Result<()> {
        let s = self.slots[slot];
        let area = self.session.memory().mem().get_slice(s.data, SLOT_LEN)?;
        // The stores are relaxed: `publish` makes them visible with its release store.
        let chain: &[Buffer] = match self.workload {
            Workload::Rng => {
                area.store(0u64, 0, Ordering::Relaxed)
                    .map_err(volatile_err)?;
                &[(s.data, BLOCK as u32, true)]
            }
            kind => {
                let block = self.rng.below(self.blocks);
                self.slots[slot].block = block;
                #[cfg(test)]
                let block = match self.wrong_block_on {
                    Some(q) if q == s.queue => (block + 1) % self.blocks,
                    _ => block,
                };
                let (t, writable) = if kind == Workload::RandRead {
                    // The device must overwrite this word; a skipped read fails the check.
                    let poison = !pattern(block * BLOCK as u64);
                    area.store(poison.to_le(), 0, Ordering::Relaxed)
                        .map_err(volatile_err)?;
                    (T_IN, true)
                } else {
                    fill_pattern(&mut self.scratch[..], block * BLOCK as u64);
                    area.write_slice(&self.scratch[..], 0)
                        .map_err(volatile_err)?;
                    (T_OUT, false)
                };
                let header = RequestHeader {
                    request_type: U32::new(t),
                    reserved: U32::new(0),
                    sector: U64::new(block * (BLOCK as u64 / 512)),
                };
                // Header and status byte: a 16-byte store and a byte store.
                let words: [u64; 2] = zerocopy::transmute!(header);
                area.get_ref::<[u64; 2]>(HEADER_OFFSET as usize)
                    .map_err(volatile_err)?
                    .store(words);
                area.store(S_UNWRITTEN, STATUS_OFFSET as usize, Ordering::Relaxed)
                    .map_err(volatile_err)?;
                &[
                    (s.header(), HEADER_LEN as u32, false),
                    (s.data, BLOCK as u32, writable),
                    (s.status(), 1, true),
                ]
            }
        };
        let head = self.session.add_chain(s.queue, chain)?;
        // `add_chain` returns a head below the queue's size, `queue_size` (all queues alike).
        self.by_head[s.queue * self.queue_size + usize::from(head)] = slot;
        self.in_flight += 1;
        Ok(())
    }

    fn publish(&mut self, queue: usize) -> Result<()> {
        self.stats.publishes += 1;
        if self.session.publish(queue)? {
            self.stats.kicks += 1;
        }
        Ok(())
    }

    /// Checks a completion of slot `slot` with used length `len`.
    fn check(&mut self, slot: usize, len: u32) -> Result<()> {
        let s = self.slots[slot];
        let name = self.workload.name();
        let want_len = match self.workload {
            Workload::RandRead => BLOCK as u32 + 1,
            Workload::RandWrite => 1,
            Workload::Rng => BLOCK as u32,
        };
        if len != want_len {
            return Err(LoadError::UsedLen {
                workload: name,
                got: len,
                want: want_len,
            });
        }
        let area = self.session.memory().mem().get_slice(s.data, SLOT_LEN)?;
        // Relaxed loads: `pop_used` read the used index with acquire ordering.
        if self.workload == Workload::Rng {
            let first: u64 = area.load(0, Ordering::Relaxed).map_err(volatile_err)?;
            if first == 0 {
                return Err(LoadError::Data {
                    workload: name,
                    block: 0,
                });
            }
            return Ok(());
        }
        let status: u8 = area
            .load(STATUS_OFFSET as usize, Ordering::Relaxed)
            .map_err(volatile_err)?;
        if status != S_OK {
            return Err(LoadError::Status {
                workload: name,
                block: s.block,
                status,
            });
        }
        if self.workload == Workload::RandRead {
            let offset = s.block * BLOCK as u64;
            let ok = if self.stats.completed & (Self::FULL_CHECK_EVERY - 1) == 0 {
                area.read_slice(&mut self.scratch[..], 0)
                    .map_err(volatile_err)?;
                check_pattern(&self.scratch[..], offset)
            } else {
                let first: u64 = area.load(0, Ordering::Relaxed).map_err(volatile_err)?;
                u64::from_le(first) == pattern(offset)
            };
            if !ok {
                return Err(LoadError::Data {
                    workload: name,
                    block: s.block,
                });
            }
        }
        Ok(())
    }

    /// Takes a completion off queue `queue`'s used ring: checks it and frees its slot.
    /// Returns the slot.
    fn complete(&mut self, queue: usize, id: u16, len: u32) -> Result<usize> {
        let index = usize::from(id);
        let entry = match index < self.queue_size {
            true => self.by_head.get_mut(queue * self.queue_size + index),
            false => None,
        };
        let slot = match entry {
            Some(s) if *s != usize::MAX => std::mem::replace(s, usize::MAX),
            _ => return Err(LoadError::UnknownHead(id)),
        };
        self.in_flight -= 1;
        self.progress[queue] += 1;
        self.check(slot, len)?;
        self.stats.completed += 1;
        Ok(slot)
    }

    /// Sleeps until a call (or the watchdog's expiry) is an event; fails when the watchdog
    /// finds a queue with no completion taken for a whole timeout ([`Engine::set_timeout`]).
    /// Called right after [`Session::pop_used`] answered `None` on every queue.
    ///
    /// That answer comes only after re-arming the call (EVENT_IDX: after writing
    /// `used_event`) and looking again, so a completion after that answer writes the call
    /// eventfd, and that write is an event here. An event can also be left over from a call
    /// whose entry was taken already: then the rings are empty and the caller waits again.
    /// The clock is never read and the sleep has no timeout: the watchdog's expiry is an
    /// event.
    fn wait_calls(&mut self) -> Result<()> {
        let none = epoll::Event {
            flags: epoll::EventFlags::empty(),
            data: epoll::EventData::new_u64(0),
        };
        let mut events = [none; 4];
        let n = match epoll::wait(&self.calls, &mut events, None) {
            Ok(n) => n,
            Err(Errno::INTR) => 0,
            Err(e) => return Err(SessionError::EventFd(e.into()).into()),
        };
        for event in &events[..n] {
            if event.data.u64() == WATCHDOG {
                self.read_watchdog()?;
                self.watchdog_expired()?;
            }
        }
        Ok(())
    }

    /// Reads the watchdog's expiries (without blocking): whether one was there.
    fn read_watchdog(&mut self) -> Result<bool> {
        let mut expirations = [0u8; 8];
        match rustix::io::read(&self.watchdog, &mut expirations) {
            Ok(_) => Ok(true),
            Err(Errno::AGAIN) => Ok(false),
            Err(e) => Err(SessionError::EventFd(e.into()).into()),
        }
    }

    /// Looks at the watchdog between wake-ups, once every [`Engine::CLOCK_EVERY`]
    /// completions: an engine that never has to sleep (another queue always has a
    /// completion ready) must still notice a queue that stopped answering.
    fn look_at_watchdog(&mut self, completed: u64) -> Result<()> {
        self.since_look += completed;
        if self.since_look < Self::CLOCK_EVERY {
            return Ok(());
        }
        self.since_look = 0;
        if self.read_watchdog()? {
            self.watchdog_expired()?;
        }
        Ok(())
    }

    /// The watchdog expired (an expiry the engine saw, in a wait or between wake-ups):
    /// fails if a queue has had requests in flight and no new completion at
    /// [`STALLED_TICKS`] expiries in a row. (How many expiries the timer counted does not
    /// matter: those that passed while the caller was elsewhere are not the engine's time.)
    fn watchdog_expired(&mut self) -> Result<()> {
        self.ticks += 1;
        for queue in 0..self.queues {
            let heads = &self.by_head[queue * self.queue_size..][..self.queue_size];
            let busy = heads.iter().any(|&s| s != usize::MAX);
            if !busy || self.progress[queue] != self.progress_at_tick[queue] {
                self.stalled[queue] = 0;
                continue;
            }
            self.stalled[queue] += 1;
            if self.stalled[queue] >= STALLED_TICKS {
                return Err(SessionError::Timeout {
                    queue,
                    timeout: self.timeout,
                }
                .into());
            }
        }
        self.progress_at_tick.copy_from_slice(&self.progress);
        Ok(())
    }

    /// Fills every free slot and publishes once per queue.
    pub fn fill(&mut self) -> Result<()> {
        if self.in_flight != 0 {
            return Err(LoadError::Config("fill with requests in flight".into()));
        }
        for slot in 0..self.slots.len() {
            self.add(slot)?;
        }
        for queue in 0..self.queues {
            self.publish(queue)?;
        }
        Ok(())
    }

    /// One wake-up: drains every used entry of every queue (sleeping until there is one if
    /// none is there), refills each slot on its queue when `refill`, then publishes each
    /// queue that had completions once. Returns how many completed.
    pub fn step(&mut self, refill: bool) -> Result<u64> {
        let mut slept = false;
        loop {
            let mut n = 0;
            for queue in 0..self.queues {
                let mut got = 0;
                while let Some(used) = self.session.pop_used(queue)? {
                    let slot = self.complete(queue, used.id, used.len)?;
                    got += 1;
                    if refill {
                        self.add(slot)?;
                    }
                }
                if refill && got > 0 {
                    self.publish(queue)?;
                }
                n += got;
            }
            if n > 0 {
                self.look_at_watchdog(n)?;
                return Ok(n);
            }
            if !slept {
                self.stats.waits += 1;
                slept = true;
            }
            self.wait_calls()?;
        }
    }

    /// Keeps the queue full until at least `count` requests completed; returns how many
    /// did. [`Engine::fill`] must have been called.
    pub fn run_count(&mut self, count: u64) -> Result<u64> {
        let mut done = 0;
        while done < count {
            done += self.step(true)?;
        }
        Ok(done)
    }

    /// Keeps the queue full for `duration`; returns the requests completed and the time
    /// taken. [`Engine::fill`] must have been called.
    ///
    /// The clock is read once every [`Engine::CLOCK_EVERY`] completions or more, not at every
    /// wake-up; the time returned is the time those requests took.
    pub fn run_for(&mut self, duration: Duration) -> Result<(u64, Duration)> {
        let start = Instant::now();
        let mut done = 0;
        let mut next_look = Self::CLOCK_EVERY;
        loop {
            done += self.step(true)?;
            if done < next_look {
                continue;
            }
            next_look = done + Self::CLOCK_EVERY;
            let elapsed = start.elapsed();
            if elapsed >= duration {
                return Ok((done, elapsed));
            }
        }
    }

    /// Waits for every request in flight, without submitting new ones.
    pub fn drain(&mut self) -> Result<u64> {
        let mut n = 0;
        while self.in_flight > 0 {
            n += self.step(false)?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::TempImage;
    use crate::inproc::InProcess;
    use vhost_device_blk::{BlkConfig, BlkDevice};
    use vhost_frontend::SessionOptions;

    const SIZE: u64 = 4 << 20;

    fn engine(image: &TempImage, depth: usize) -> (InProcess, Engine) {
        engine_on(image, 1, depth)
    }

    /// An engine driving `queues` queues of a blk device with that many queues.
    fn engine_on(image: &TempImage, queues: usize, depth: usize) -> (InProcess, Engine) {
        let mut config = BlkConfig::new(image.path());
        config.num_queues = queues as u16;
        let device = BlkDevice::new(&config).unwrap();
        let options = SessionOptions {
            num_queues: queues as u16,
            memory_size: memory_size_queues(queues, depth, 256),
            config_size: Some(60),
            ..SessionOptions::default()
        };
        let (daemon, session) = InProcess::start(device, options).unwrap();
        let blocks = SIZE / BLOCK as u64;
        let engine =
            Engine::with_queues(session, Workload::RandRead, queues, depth, blocks, 5).unwrap();
        (daemon, engine)
    }

    /// With 2 and 4 queues, every queue completes requests (each keeps its own depth in
    /// flight, refilled on the same queue), the per-queue counts add up to the total, and
    /// the batches are published queue by queue (at least one publish per queue).
    #[test]
    fn every_queue_completes_requests() {
        let image = TempImage::new("load-mq", SIZE).unwrap();
        for queues in [2usize, 4] {
            let depth = 4;
            let (daemon, mut e) = engine_on(&image, queues, depth);
            e.set_timeout(Duration::from_secs(5)).unwrap();
            e.fill().unwrap();
            assert_eq!(e.in_flight(), queues * depth);
            let mut done = 0;
            while done < 4000 {
                let before: Vec<u64> = (0..queues).map(|q| e.completed_on(q)).collect();
                let published = e.stats().publishes;
                done += e.step(true).unwrap();
                let touched = (0..queues)
                    .filter(|&q| e.completed_on(q) > before[q])
                    .count() as u64;
                assert!(touched > 0);
                assert_eq!(
                    e.stats().publishes - published,
                    touched,
                    "one publish per queue that had completions"
                );
            }
            e.drain().unwrap();
            assert_eq!(e.in_flight(), 0);
            let per_queue: Vec<u64> = (0..queues).map(|q| e.completed_on(q)).collect();
            let stats = e.stats();
            assert_eq!(stats.completed, done + (queues * depth) as u64, "{queues}");
            assert_eq!(
                per_queue.iter().sum::<u64>(),
                stats.completed,
                "{per_queue:?}"
            );
            for (q, &n) in per_queue.iter().enumerate() {
                // Each queue's depth is refilled on it: no queue can starve while another
                // runs (a few hundred at least out of 4000).
                assert!(n >= 4000 / (queues as u64 * 10), "queue {q}: {per_queue:?}");
            }
            assert_eq!(e.completed_on(queues), 0);
            e.reset_stats();
            assert_eq!(e.completed_on(0), 0);
            drop(e);
            daemon.stop().unwrap();
        }
    }

    /// The data checks still run on every queue: when queue 1's requests read the block
    /// after the one the engine expects, the run fails with a data error, while the same
    /// device on queue 0 alone runs clean.
    #[test]
    fn a_wrong_block_on_queue_1_is_caught() {
        let image = TempImage::new("load-mq-wrong", SIZE).unwrap();
        let (daemon, mut e) = engine_on(&image, 2, 4);
        e.set_timeout(Duration::from_secs(5)).unwrap();
        e.fill().unwrap();
        e.run_count(500).unwrap();
        e.drain().unwrap();
        e.wrong_block_on = Some(1);
        e.fill().unwrap();
        let err = e.run_count(500).unwrap_err();
        assert!(
            matches!(
                err,
                LoadError::Data {
                    workload: "randread",
                    ..
                }
            ),
            "{err}"
        );
        drop(e);
        daemon.stop().unwrap();
    }

    /// A device that stops answering on queue 1 only fails the run with a timeout naming
    /// queue 1, though queue 0 keeps completing requests (the watchdog watches each queue).
    #[test]
    fn a_queue_that_never_answers_times_out_while_the_others_flow() {
        let image = TempImage::new("load-mq-timeout", SIZE).unwrap();
        let (daemon, mut e) = engine_on(&image, 2, 2);
        e.session().frontend().set_vring_enable(1, false).unwrap();
        let start = Instant::now();
        e.set_timeout(Duration::from_millis(200)).unwrap();
        e.fill().unwrap();
        let err = e.run_count(u64::MAX).unwrap_err();
        let elapsed = start.elapsed();
        assert!(
            matches!(
                err,
                LoadError::Session(SessionError::Timeout { queue: 1, .. })
            ),
            "{err}"
        );
        assert!(e.completed_on(0) > 0, "queue 0 flowed meanwhile");
        assert_eq!(e.completed_on(1), 0);
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        // At most two timeouts (400 ms), with room for a loaded machine.
        assert!(elapsed < Duration::from_millis(1000), "{elapsed:?}");
        drop(e);
        daemon.stop().unwrap();
    }

    /// The edge-triggered sleep on the call eventfd never misses a completion (a miss
    /// would end in the timeout), at queue depth 1 (a sleep per request) and 16 (calls
    /// batched: fewer sleeps than requests).
    #[test]
    fn sleeping_on_calls_misses_no_completion() {
        let image = TempImage::new("load-engine", SIZE).unwrap();
        for depth in [1usize, 16] {
            let (daemon, mut e) = engine(&image, depth);
            e.set_timeout(Duration::from_secs(5)).unwrap();
            e.fill().unwrap();
            let done = e.run_count(3000).unwrap();
            e.drain().unwrap();
            let stats = e.stats();
            assert!(done >= 3000, "depth {depth}: {done}");
            assert_eq!(stats.completed, done + depth as u64, "depth {depth}");
            assert!(stats.waits > 0, "depth {depth}: {stats:?}");
            if depth == 16 {
                assert!(stats.waits < stats.completed / 2, "depth 16: {stats:?}");
            }
            drop(e);
            daemon.stop().unwrap();
        }
    }

    /// The watchdog expires many times during a run with a short timeout, and never fails
    /// it while completions keep coming.
    #[test]
    fn the_watchdog_lets_a_flowing_run_go_on() {
        let image = TempImage::new("load-watchdog", SIZE).unwrap();
        let (daemon, mut e) = engine(&image, 1);
        e.set_timeout(Duration::from_millis(200)).unwrap();
        e.fill().unwrap();
        let (done, elapsed) = e.run_for(Duration::from_millis(1000)).unwrap();
        assert!(elapsed >= Duration::from_millis(1000), "{elapsed:?}");
        assert!(done > 0);
        // About ten expiries passed (every 100 ms), none failing the run.
        assert!(e.ticks >= 4, "{} expiries seen", e.ticks);
        assert!(e.progress_at_tick[0] > 0, "{:?}", e.progress_at_tick);
        e.drain().unwrap();
        drop(e);
        daemon.stop().unwrap();
    }

    /// Time spent outside the engine (set-up, a pause between phases) counts for nothing:
    /// expiries that passed meanwhile do not fail the first wait after it.
    #[test]
    fn the_first_wait_after_a_pause_is_not_a_timeout() {
        let image = TempImage::new("load-pause", SIZE).unwrap();
        let (daemon, mut e) = engine(&image, 1);
        e.set_timeout(Duration::from_millis(200)).unwrap();
        std::thread::sleep(Duration::from_millis(450));
        e.fill().unwrap();
        e.run_count(100).unwrap();
        e.drain().unwrap();
        drop(e);
        daemon.stop().unwrap();
    }

    /// A wait that starts after a pause gets a whole timeout before it fails, whatever
    /// phase the watchdog's period is in.
    #[test]
    fn a_wait_after_a_pause_gets_a_whole_timeout() {
        let image = TempImage::new("load-pause-stuck", SIZE).unwrap();
        let (daemon, mut e) = engine(&image, 1);
        e.set_timeout(Duration::from_millis(300)).unwrap();
        e.fill().unwrap();
        e.run_count(10).unwrap();
        e.drain().unwrap();
        std::thread::sleep(Duration::from_millis(550));
        e.session().frontend().set_vring_enable(0, false).unwrap();
        e.fill().unwrap();
        let start = Instant::now();
        let err = e.step(true).unwrap_err();
        let elapsed = start.elapsed();
        assert!(
            matches!(
                err,
                LoadError::Session(SessionError::Timeout { queue: 0, .. })
            ),
            "{err}"
        );
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
        drop(e);
        daemon.stop().unwrap();
    }

    /// A queue that never answers is caught even when another queue keeps the engine from
    /// ever sleeping (a caller that comes back to it slowly, as a busy front-end would).
    #[test]
    fn a_stuck_queue_is_caught_even_when_the_engine_never_waits() {
        let image = TempImage::new("load-stuck-busy", SIZE).unwrap();
        let (daemon, mut e) = engine_on(&image, 2, 4);
        e.session().frontend().set_vring_enable(1, false).unwrap();
        e.set_timeout(Duration::from_millis(100)).unwrap();
        e.fill().unwrap();
        let start = Instant::now();
        let err = loop {
            match e.step(true) {
                Err(err) => break err,
                Ok(_) if start.elapsed() > Duration::from_secs(3) => {
                    panic!("queue 1 stuck for 3 s and the run goes on")
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        };
        assert!(
            matches!(
                err,
                LoadError::Session(SessionError::Timeout { queue: 1, .. })
            ),
            "{err}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{:?}",
            start.elapsed()
        );
        assert!(e.completed_on(0) > 0);
        assert_eq!(e.completed_on(1), 0);
        drop(e);
        daemon.stop().unwrap();
    }

    /// A device that never answers makes the wait fail after the timeout (at least one
    /// whole timeout with no completion, at most two), not hang.
    #[test]
    fn a_device_that_never_answers_times_out() {
        let image = TempImage::new("load-timeout", SIZE).unwrap();
        let (daemon, mut e) = engine(&image, 1);
        // Queue 0 stops being served: its ring is disabled, so the request stays unused.
        e.session().frontend().set_vring_enable(0, false).unwrap();
        let start = Instant::now();
        e.set_timeout(Duration::from_millis(200)).unwrap();
        e.fill().unwrap();
        let err = e.step(true).unwrap_err();
        let elapsed = start.elapsed();
        assert!(
            matches!(err, LoadError::Session(SessionError::Timeout { .. })),
            "{err}"
        );
        assert!(elapsed >= Duration::from_millis(200), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(2000), "{elapsed:?}");
        drop(e);
        daemon.stop().unwrap();
    }
}
