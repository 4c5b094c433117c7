//! A back-end killed mid-I/O, hundreds of times, under one long-lived guest: every request
//! completes exactly once.
//!
//! The guest side (the project's front-end client and virtqueue driver) keeps one queue
//! busy with reads and writes of a small disk; writes carry sequence numbers, reads are
//! checked against what was written. The back-end (threadless runtime, run by its own
//! thread) holds requests and completes them in random order, or serves them on the spot
//! ([`QueueContext::serve_next`], the path of a synchronous device), or mixes both
//! ([`Mode`], drawn for each back-end). Each back-end is killed
//! either at an injected crash point of the inflight tracking (between any two of its
//! writes to the inflight region or the used ring, including between "marked in flight"
//! and "used published") or between two operations: its thread stops and drops everything
//! without completing or stopping anything, as SIGKILL would. The next back-end gets the
//! same inflight area (SET_INFLIGHT_FD) and the base QEMU sets after a crash (the used
//! index), and carries on. At the end a back-end that is not killed drains the queue.
//!
//! Exactly once: the driver fails on a used entry for a head not in flight (a duplicate),
//! every request submitted completes (nothing lost), each with the used length of its kind,
//! and the disk ends up holding every sector's last write.
//!
//! Notifications: the guest negotiates EVENT_IDX and looks at the used ring only when
//! called, as a real one does. A back-end killed after publishing used entries and before
//! calling (a crash point of its own) leaves them unseen: the next back-end must call.
//!
//! Clean stops: some back-ends get GET_VRING_BASE as soon as their ring starts, with the
//! requests their predecessor left in flight possibly not yet run. A stop that answers
//! must leave nothing taken behind (the base equals the used index); one that cannot run
//! them fails, and the next back-end resubmits them.
//!
//! The run goes on past [`ITERATIONS`] back-ends (up to [`MAX_ITERATIONS`]) until every
//! crash point was hit in every mode and enough requests survived kills, so a slow or loaded
//! machine
//! gets more back-ends rather than a failure.

#![cfg(unix)]

mod runtime_support;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use runtime_support::*;
use vhost_backend::runtime::{
    DeviceBackend, DeviceError, Processed, QueueContext, Request, RequestOf, VirtioDevice,
};
use vhost_frontend::{Frontend, GuestMemory};
use vhost_proto::Inflight;
use vhost_test_support::Rng;
use vm_memory::{Bytes, GuestAddress};

const ITERATIONS: usize = 250;
/// Back-ends at most while some crash point or kind of kill was not hit yet.
const MAX_ITERATIONS: usize = 3000;
/// Requests in flight across kills the run wants at least.
const MIN_SURVIVED: u64 = 100;
const CRASH_POINTS: [&str; 7] = [
    "marked: counter written, flag not yet",
    "marked in flight, not yet completed",
    "publishing: next linked, last_batch_head not yet",
    "publishing: last_batch_head set, used entry not yet",
    "publishing: used index moved, flag not yet cleared",
    "publishing: flag cleared, used_idx not yet recorded",
    "published, call not yet made",
];
const SECTORS: usize = 16;
const BLOCK: usize = 64;
/// Requests the guest keeps in flight at most (three descriptors each).
const SLOTS: usize = 16;
const OP_READ: u32 = 0;
const OP_WRITE: u32 = 1;

/// The block a write with sequence number `seq` puts into `sector`.
fn block(seq: u64, sector: u32) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    b[8..12].copy_from_slice(&sector.to_le_bytes());
    for (i, x) in b[12..].iter_mut().enumerate() {
        *x = (seq as u8).wrapping_mul(31) ^ (sector as u8) ^ i as u8;
    }
    b
}

/// The sequence number of a block read back, or why it is not one a write wrote.
fn parse(b: &[u8; BLOCK], sector: u32) -> Result<u64, String> {
    if b.iter().all(|&x| x == 0) {
        return Ok(0);
    }
    let seq = u64::from_le_bytes(b[..8].try_into().unwrap());
    if *b == block(seq, sector) {
        Ok(seq)
    } else {
        Err(format!("sector {sector}: a block no write wrote: {b:?}"))
    }
}

/// The request header the driver puts first in each chain.
#[derive(Clone, Copy, zerocopy::FromBytes, zerocopy::IntoBytes, zerocopy::Immutable)]
#[repr(C)]
struct Header {
    op: u32,
    sector: u32,
    seq: u64,
}

/// The disk, which outlives every back-end (the host image).
type Disk = Arc<Mutex<Vec<[u8; BLOCK]>>>;

/// Executes `req` on `disk` and answers its used length: a write stores its block and
/// answers one status byte; a read answers the block and a status byte.
fn serve(disk: &Disk, req: &RequestOf<'_>) -> u32 {
    let Ok(h) = req.read_obj::<Header>(0) else {
        return 0;
    };
    let sector = (h.sector as usize).min(SECTORS - 1);
    match h.op {
        OP_WRITE => {
            let mut b = [0u8; BLOCK];
            if req.read_readable(16, &mut b).is_err() {
                return 0;
            }
            disk.lock().unwrap()[sector] = b;
            let _ = req.write_writable(0, &[0]);
            1
        }
        _ => {
            let b = disk.lock().unwrap()[sector];
            let _ = req.write_writable(0, &b);
            let _ = req.write_writable(BLOCK as u64, &[0]);
            BLOCK as u32 + 1
        }
    }
}

/// [`serve`]s `req` and completes it.
fn execute(disk: &Disk, req: Request) {
    let len = serve(disk, &req);
    req.complete(len);
}

/// How a back-end's device takes its chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    /// Pops and holds each chain.
    Hold,
    /// Serves each chain on the spot (`serve_next`).
    Serve,
    /// Per chain at random: served on the spot or popped and held.
    Mixed,
}

const MODES: [Mode; 3] = [Mode::Hold, Mode::Serve, Mode::Mixed];

/// Takes chains as its [`Mode`] says; at every call completes a random part of what it
/// holds, in random order.
struct Disky {
    disk: Disk,
    mode: Mode,
    held: Mutex<Vec<Request>>,
    rng: Mutex<Rng>,
}

impl VirtioDevice for Disky {
    vhost_test_support::device_basics!(self; device_type: 2, queues: 1, max_queue_size: 256);
    fn supports_inflight_tracking(&self) -> bool {
        true
    }
    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        let mut held = self.held.lock().unwrap();
        let mut rng = self.rng.lock().unwrap();
        loop {
            let spot = match self.mode {
                Mode::Hold => false,
                Mode::Serve => true,
                Mode::Mixed => rng.below(2) == 0,
            };
            if spot {
                if !ctx.serve_next(|req| serve(&self.disk, req)) {
                    break;
                }
            } else {
                match ctx.pop() {
                    Some(req) => held.push(req),
                    None => break,
                }
            }
        }
        let n = rng.below(held.len() as u64 + 1);
        for _ in 0..n {
            let i = rng.below(held.len() as u64) as usize;
            execute(&self.disk, held.swap_remove(i));
        }
        Ok(Processed::Drained)
    }
}

/// A back-end on its own thread, its device in `mode`, killed at the `crash_after`th crash point
/// (0: none) or
/// when `kill` is set. Killed, it drops everything without stopping or completing
/// anything; when the front-end goes away (the last back-end) it finishes the session.
fn spawn_backend(
    disk: &Disk,
    mode: Mode,
    seed: u64,
    crash_after: u64,
    kill: Arc<AtomicBool>,
) -> (Frontend, JoinHandle<CrashEnd>) {
    let dev = Disky {
        disk: Arc::clone(disk),
        mode,
        held: Mutex::new(Vec::new()),
        rng: Mutex::new(Rng(seed | 1)),
    };
    let backend = DeviceBackend::threadless(dev)
        .expect("backend")
        .with_quiesce_timeout(Duration::from_millis(100));
    // A clean end: the front-end closed the connection.
    spawn_crashing(backend, crash_after, Some(kill), |server| {
        let _ = server.finish();
    })
}

/// One request of the guest in flight.
#[derive(Debug, Clone, Copy)]
struct Pending {
    slot: usize,
    op: u32,
    sector: u32,
    seq: u64,
    /// Reads: the oldest sequence number the block read may carry (the last write
    /// completed before the read was submitted; writes submitted after it may land first).
    lo: u64,
}

/// The guest: one queue, buffer slots, and what it expects of the disk.
struct Guest {
    mem: GuestMemory,
    q: GuestQueue,
    slots: Vec<u64>,
    free: Vec<usize>,
    pending: HashMap<u16, Pending>,
    /// Sequence number of the last completed write of each sector.
    done: Vec<u64>,
    /// The write in flight on each sector (one at a time).
    writing: Vec<Option<u64>>,
    /// Sequence number of the last write submitted to each sector.
    latest: Vec<u64>,
    seq: u64,
    completed: u64,
    submitted: u64,
}

impl Guest {
    fn new() -> Self {
        let mem = two_region_memory();
        let q = GuestQueue::new(&mem, 0, true);
        let slots = (0..SLOTS)
            .map(|i| 0x4000_0000 + i as u64 * 0x1000)
            .collect();
        Guest {
            mem,
            q,
            slots,
            free: (0..SLOTS).collect(),
            pending: HashMap::new(),
            done: vec![0; SECTORS],
            writing: vec![None; SECTORS],
            latest: vec![0; SECTORS],
            seq: 0,
            completed: 0,
            submitted: 0,
        }
    }

    fn used_idx(&self) -> u16 {
        let at = GuestAddress(self.q.driver.used_ring().0 + 2);
        self.mem.mem().read_obj(at).expect("used idx")
    }

    /// Entries on the used ring the guest has not reaped.
    fn unreaped(&self) -> u16 {
        self.used_idx().wrapping_sub(self.completed as u16)
    }

    /// Waits up to `timeout` for a call and, called, reaps everything there is. The guest
    /// never looks at the used ring uncalled.
    fn reap_on_call(&mut self, timeout: Duration) -> bool {
        let called = vhost_frontend::VirtqueueDriver::wait_call(&self.q.call, timeout)
            .expect("waiting for a call");
        if called {
            self.reap();
        }
        called
    }

    /// Submits a random request if a slot is free; a write only to a sector with no write
    /// in flight.
    fn submit(&mut self, rng: &mut Rng) {
        let Some(slot) = self.free.pop() else { return };
        let sector = rng.below(SECTORS as u64) as u32;
        let s = sector as usize;
        let base = self.slots[slot];
        let m = self.mem.mem();
        let write = rng.below(2) == 0 && self.writing[s].is_none();
        let p = if write {
            self.seq += 1;
            let h = Header {
                op: OP_WRITE,
                sector,
                seq: self.seq,
            };
            m.write_slice(zerocopy::IntoBytes::as_bytes(&h), GuestAddress(base))
                .unwrap();
            m.write_slice(&block(self.seq, sector), GuestAddress(base + 16))
                .unwrap();
            m.write_obj(0xffu8, GuestAddress(base + 0x100)).unwrap();
            self.writing[s] = Some(self.seq);
            self.latest[s] = self.seq;
            Pending {
                slot,
                op: OP_WRITE,
                sector,
                seq: self.seq,
                lo: 0,
            }
        } else {
            let h = Header {
                op: OP_READ,
                sector,
                seq: 0,
            };
            m.write_slice(zerocopy::IntoBytes::as_bytes(&h), GuestAddress(base))
                .unwrap();
            m.write_slice(&[0xee; BLOCK], GuestAddress(base + 16))
                .unwrap();
            m.write_obj(0xffu8, GuestAddress(base + 0x100)).unwrap();
            Pending {
                slot,
                op: OP_READ,
                sector,
                seq: 0,
                lo: self.done[s],
            }
        };
        let data_writable = p.op == OP_READ;
        let head = self
            .q
            .driver
            .add_chain(&[
                (GuestAddress(base), 16, false),
                (GuestAddress(base + 16), BLOCK as u32, data_writable),
                (GuestAddress(base + 0x100), 1, true),
            ])
            .expect("add_chain");
        self.q.driver.publish().expect("publish");
        assert!(
            self.pending.insert(head, p).is_none(),
            "head {head} reused while in flight"
        );
        self.submitted += 1;
    }

    /// Takes every used entry there is and checks it. The driver itself fails on a head
    /// that is not in flight (a request completed twice).
    fn reap(&mut self) {
        while let Some(u) = self
            .q
            .driver
            .pop_used()
            .expect("pop_used (a duplicate completion?)")
        {
            let p = self
                .pending
                .remove(&u.id)
                .unwrap_or_else(|| panic!("completion of head {} that is not pending", u.id));
            let base = self.slots[p.slot];
            let m = self.mem.mem();
            let s = p.sector as usize;
            match p.op {
                OP_WRITE => {
                    assert_eq!(u.len, 1, "write used length");
                    assert_eq!(m.read_obj::<u8>(GuestAddress(base + 0x100)).unwrap(), 0);
                    self.done[s] = p.seq;
                    self.writing[s] = None;
                }
                _ => {
                    assert_eq!(u.len, BLOCK as u32 + 1, "read used length");
                    assert_eq!(m.read_obj::<u8>(GuestAddress(base + 0x100)).unwrap(), 0);
                    let mut b = [0u8; BLOCK];
                    m.read_slice(&mut b, GuestAddress(base + 16)).unwrap();
                    let seq = parse(&b, p.sector).unwrap();
                    let hi = self.latest[s];
                    assert!(
                        (p.lo..=hi).contains(&seq),
                        "sector {}: read seq {seq}, expected {}..={hi}",
                        p.sector,
                        p.lo,
                    );
                }
            }
            self.free.push(p.slot);
            self.completed += 1;
        }
    }

    /// A new back-end's session, as QEMU opens it after a back-end restart: the same
    /// inflight area, the base from the used index.
    fn connect(&self, fe: &mut Frontend, area: &mut Option<(Inflight, OwnedFd)>) {
        handshake(fe, true, true);
        send_mem_table(fe, &self.mem);
        if area.is_none() {
            let ask = Inflight {
                num_queues: 1,
                queue_size: QUEUE_SIZE,
                ..Inflight::default()
            };
            *area = Some(fe.get_inflight_fd(&ask).expect("GET_INFLIGHT_FD"));
        }
        let (info, fd) = area.as_ref().unwrap();
        fe.set_inflight_fd(info, fd.as_fd())
            .expect("SET_INFLIGHT_FD");
        self.q
            .start(fe, &self.mem, u32::from(self.used_idx()), true);
    }
}

#[test]
fn a_back_end_killed_at_random_points_loses_and_repeats_nothing() {
    // The injected crashes are panics: keep their messages out of the output.
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let injected = info
            .payload()
            .downcast_ref::<String>()
            .is_some_and(|m| m.starts_with("injected back-end crash"));
        if !injected {
            default(info);
        }
    }));
    let seed = std::env::var("INFLIGHT_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_1234_abcd_9876u64);
    let mut rng = Rng(seed);
    let disk: Disk = Arc::new(Mutex::new(vec![[0u8; BLOCK]; SECTORS]));
    let mut g = Guest::new();
    let mut area = None;
    let mut points: HashMap<(Mode, &'static str), usize> = HashMap::new();
    let mut killed_between = 0;
    let mut survived = 0u64;
    // The previous back-end published entries and never called for them.
    let mut call_owed = false;
    let mut owed_calls_made = 0u64;
    let (mut stops_clean, mut stops_refused) = (0u64, 0u64);
    let mut iterations = 0usize;
    loop {
        let all_points = MODES
            .iter()
            .all(|&m| CRASH_POINTS.iter().all(|&p| points.contains_key(&(m, p))));
        if iterations >= ITERATIONS
            && all_points
            && killed_between > 0
            && survived > MIN_SURVIVED
            && owed_calls_made > 0
        {
            break;
        }
        assert!(
            iterations < MAX_ITERATIONS,
            "after {iterations} back-ends: crash points {points:?}, {killed_between} killed \
             between operations, {survived} request-kills survived, {owed_calls_made} owed \
             calls"
        );
        iterations += 1;
        let crash_after = match rng.below(4) {
            0 => 0,
            _ => 1 + rng.below(60),
        };
        let mode = MODES[rng.below(MODES.len() as u64) as usize];
        let kill = Arc::new(AtomicBool::new(false));
        let (mut fe, t) = spawn_backend(&disk, mode, rng.next(), crash_after, Arc::clone(&kill));
        g.connect(&mut fe, &mut area);
        if call_owed {
            // Paid when the ring starts (the session above waited for every reply).
            assert!(
                g.reap_on_call(Duration::from_secs(2)),
                "{} used entries the dead back-end published without a call: the next \
                 back-end never called",
                g.unreaped()
            );
            owed_calls_made += 1;
        }
        let mut stop = None;
        if rng.below(8) == 0 {
            // A clean stop at once, the resubmitted requests maybe not yet run.
            let base = fe.get_vring_base(0);
            if let Ok(base) = base {
                assert_eq!(
                    base,
                    u32::from(g.used_idx()),
                    "a clean stop answered a base covering requests not on the used ring"
                );
                stops_clean += 1;
            } else {
                stops_refused += 1;
            }
            stop = Some(base.is_ok());
        } else {
            let steps = 1 + rng.below(40);
            for _ in 0..steps {
                if t.is_finished() {
                    break;
                }
                for _ in 0..rng.below(4) {
                    g.submit(&mut rng);
                }
                g.q.driver.kick(&g.q.kick).expect("kick");
                g.reap_on_call(Duration::from_millis(1));
            }
        }
        kill.store(true, Ordering::SeqCst);
        match t.join().expect("back-end thread") {
            end @ CrashEnd::Crashed(_) => {
                *points
                    .entry((mode, end.crash_point().unwrap()))
                    .or_default() += 1
            }
            CrashEnd::Killed => killed_between += 1,
            // A stop that failed closes the connection.
            CrashEnd::Closed if stop == Some(false) => {}
            CrashEnd::Closed => panic!("the connection ended before the kill"),
        }
        drop(fe);
        // Calls the dead back-end made are honoured; what it published without a call is
        // owed by the next one.
        g.reap_on_call(Duration::ZERO);
        call_owed = g.unreaped() != 0;
        survived += u64::from(g.q.driver.avail_idx().wrapping_sub(g.used_idx()));
    }

    // The last back-end is not killed: everything left completes.
    let (mut fe, t) = spawn_backend(
        &disk,
        Mode::Mixed,
        rng.next(),
        0,
        Arc::new(AtomicBool::new(false)),
    );
    g.connect(&mut fe, &mut area);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut uncalled_since: Option<Instant> = None;
    while !g.pending.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} request(s) never completed: {:?}",
            g.pending.len(),
            g.pending
        );
        g.q.driver.kick(&g.q.kick).expect("kick");
        g.reap_on_call(Duration::from_millis(1));
        // Used entries the guest was never called for: it would wait for ever.
        if g.unreaped() == 0 {
            uncalled_since = None;
        } else {
            let since = *uncalled_since.get_or_insert_with(Instant::now);
            assert!(
                since.elapsed() < Duration::from_secs(2),
                "{} used entries and no call",
                g.unreaped()
            );
        }
    }
    let base = fe.get_vring_base(0).expect("GET_VRING_BASE");
    assert_eq!(
        base,
        u32::from(g.q.driver.avail_idx()),
        "every entry taken once"
    );
    drop(fe);
    assert!(matches!(t.join().unwrap(), CrashEnd::Closed));

    assert_eq!(g.completed, g.submitted, "every request completed");
    assert_eq!(g.q.driver.in_flight(), 0);
    let disk = disk.lock().unwrap();
    for (s, b) in disk.iter().enumerate() {
        assert_eq!(
            parse(b, s as u32),
            Ok(g.done[s]),
            "sector {s} holds its last write"
        );
    }
    eprintln!(
        "{iterations} back-ends killed: {killed_between} between operations, at crash points \
         {points:?}; {} requests, {survived} request-kills survived in flight; \
         {owed_calls_made} owed calls made; stops at start: {stops_clean} clean, \
         {stops_refused} refused",
        g.submitted
    );
}
