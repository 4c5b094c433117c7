//! Asynchronous guest I/O with io_uring: vectored reads and writes straight between a file
//! and requests' buffers, many in flight at once, completed later.
//!
//! A [`GuestUring`] is one io_uring bound to one file (registered with the ring, so the
//! kernel holds it for as long as the ring lives). A device hands it a [`Request`] with
//! [`read_to_writable`](GuestUring::read_to_writable),
//! [`write_from_readable`](GuestUring::write_from_readable) or
//! [`sync_data`](GuestUring::sync_data), sends what it queued with one system call
//! ([`submit`](GuestUring::submit)), and gets the request back from
//! [`reap`](GuestUring::reap) once the kernel is done with its buffers, to write a status
//! and [`complete`](Request::complete) it. The ring signals its eventfd
//! ([`eventfd`](GuestUring::eventfd)) when completions arrive: a device watches it from its
//! worker ([`VirtioDevice::worker_fds`](super::VirtioDevice::worker_fds)) and reaps in
//! [`handle_event`](super::VirtioDevice::handle_event).
//!
//! Why this is sound: a submitted operation points the kernel at guest memory (the iovecs)
//! and at an iovec array. The ring owns every request it was handed until that request's
//! completion is reaped, keyed by the operation's `user_data`; the request holds the memory
//! map its buffers lie in, so the mapping cannot go away while the kernel may still access
//! it (a new memory table unmaps the old one only when the last request holding it is gone).
//! The iovec array is the slot's own, untouched until its completion is reaped. The device
//! never sees the request in between, so it cannot drop it early; dropping the ring waits
//! for every operation in flight first, up to a bound (then leaks them and the ring, keeping
//! their memory mapped). A submission the kernel refuses for now (`EAGAIN`, `ENOMEM`,
//! `EBUSY`) is retried through the eventfd; one it refuses for good fails the operations it
//! carried (given back by the next [`reap`](GuestUring::reap), marked
//! [`not_submitted`](Reaped::not_submitted)) and the ring never submits again: their entries
//! stay in its submission queue, which the kernel reads only when asked to submit, so their
//! buffers are never touched once their requests are returned. A new ring replaces it once
//! nothing is in flight on it; if that one fails before any submission went through, or
//! cannot be set up, the ring is retired: it refuses every operation from then on (the
//! device serves them another way).
//!
//! [`fallocate`](GuestUring::fallocate) queues `IORING_OP_FALLOCATE` operations (punching
//! holes, zeroing ranges) over a list of ranges, one after the other.
//! Short transfers continue where they stopped, like
//! [`FileIo`](super::FileIo)'s loop; pages a read wrote are marked dirty once it completed,
//! or failed (part may have landed).

use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::guest_io::{self, GuestIoError, IoAlign, IOV_MAX};
use super::request::Request;

/// Checks that io_uring can be used here: a ring can be set up (not refused by
/// `kernel.io_uring_disabled`, a seccomp filter or an old kernel) and it knows every
/// operation [`GuestUring`] submits. The error says why not.
pub fn probe() -> io::Result<()> {
    let ring = IoUring::new(2)?;
    let mut p = io_uring::Probe::new();
    ring.submitter().register_probe(&mut p)?;
    for (code, name) in [
        (opcode::Readv::CODE, "READV"),
        (opcode::Writev::CODE, "WRITEV"),
        (opcode::Fsync::CODE, "FSYNC"),
    ] {
        if !p.is_supported(code) {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("the kernel's io_uring lacks IORING_OP_{name}"),
            ));
        }
    }
    Ok(())
}

/// A request the kernel is done with, given back to the device.
#[derive(Debug)]
pub struct Reaped<T> {
    /// The request (not completed: the device writes its status and completes it).
    pub req: Request,
    /// What the device attached to the operation.
    pub tag: T,
    /// Whether the whole transfer (or the sync) succeeded.
    pub result: Result<(), GuestIoError>,
    /// The operation (or what was left of it) never reached the kernel: a submission refused
    /// for good failed it, and `result` holds that refusal, not the operation's own result
    /// (an errno such as `EINVAL` or `EOPNOTSUPP` there says nothing about the file).
    pub not_submitted: bool,
}

/// An operation that was not submitted, and why; the request comes back untouched.
#[derive(Debug)]
pub struct Refused<T> {
    /// The request.
    pub req: Request,
    /// What the device attached to the operation.
    pub tag: T,
    /// Why: [`GuestIoError::Unaligned`] for buffers direct I/O cannot take as they are,
    /// [`GuestIoError::Stale`], a buffer outside guest memory or too short, or (with
    /// [`GuestIoError::Io`]) no free slot, a full submission queue, a ring that failed for
    /// good with operations still in flight on it (not replaced yet), a ring that could not
    /// be replaced or whose replacement failed too (retired: every operation is refused from
    /// then on), or for [`fallocate`](GuestUring::fallocate) a kernel without the operation
    /// or an empty range.
    pub error: GuestIoError,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    SyncData,
    /// `fallocate` over the slot's ranges, one after the other.
    Fallocate,
}

/// One range of a [`GuestUring::fallocate`]: `fallocate(mode, offset, len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FallocRange {
    /// Byte offset in the file.
    pub offset: u64,
    /// Bytes (not 0).
    pub len: u64,
    /// `FALLOC_FL_*` flags.
    pub mode: i32,
}

struct InFlight<T> {
    req: Request,
    tag: T,
    kind: Kind,
    /// File offset of the next byte to transfer.
    offset: u64,
    /// First iovec of the slot not transferred completely (for a fallocate: its first range
    /// not done).
    first: usize,
    /// Bytes left to transfer.
    left: u64,
    /// Bytes of the whole transfer.
    total: u64,
    /// Times the operation completed with `EINTR` or `EAGAIN` and was queued again.
    retries: u8,
}

struct Slot<T> {
    op: Option<InFlight<T>>,
    /// The operation's iovecs (their array is what READV/WRITEV point the kernel at).
    iov: Vec<libc::iovec>,
    /// A fallocate's ranges.
    ranges: Vec<FallocRange>,
}

impl<T> Slot<T> {
    fn empty() -> Self {
        Slot {
            op: None,
            iov: Vec::new(),
            ranges: Vec::new(),
        }
    }
}

/// One io_uring bound to one file. See the [module docs](self).
pub struct GuestUring<T> {
    /// Dropped only once nothing is in flight (leaked otherwise, see `Drop`).
    ring: ManuallyDrop<IoUring>,
    /// The file, kept to register it with a ring that replaces a broken one.
    file: File,
    /// Whether the kernel knows `IORING_OP_FALLOCATE`.
    fallocate: bool,
    /// A submission failed for good: the entries it left queued belong to operations that
    /// were failed, so this ring never submits again; a new one replaces it once nothing is
    /// in flight.
    broken: bool,
    /// Whether a submission went through since this ring was set up (a ring replacing a
    /// broken one that fails before any is not replaced again).
    submitted: bool,
    /// The ring failed for good again right after it was replaced, or no ring could be set
    /// up to replace it: no new ring is tried, every operation is refused (the device serves
    /// them another way).
    retired: bool,
    /// Whether this ring replaced a broken one.
    renewed: bool,
    /// Slots whose entries are queued and not consumed by the kernel yet, in queue order.
    queued: std::collections::VecDeque<u32>,
    /// Slots whose operation goes on (a short transfer, the next fallocate range) but found
    /// the submission queue full while the kernel refused a submission for now: queued by
    /// the next submission (the eventfd is signalled for it).
    parked: std::collections::VecDeque<u32>,
    /// Submissions refused for now in a row (reset when one goes through).
    refused: u32,
    /// Operations failed without a completion (a submission refused for good), given back
    /// by the next [`reap`](Self::reap).
    failed: Vec<Reaped<T>>,
    eventfd: EventFd,
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    /// How many slots there may be: the completion queue's size (twice the depth or more),
    /// so the kernel never has more completions to post than it holds.
    max_slots: usize,
    in_flight: usize,
    /// Completions copied out of the completion queue, reused.
    cqes: Vec<(u64, i32)>,
    /// How long dropping the ring waits for operations in flight before leaking them.
    drop_timeout: Duration,
    /// When set, dropping waits until then instead (shared by the rings of one device, so
    /// dropping them one after the other waits at most one timeout in all).
    drop_deadline: Option<Instant>,
    /// Test hook: this many submissions fail with this errno.
    #[cfg(any(test, feature = "test-utils"))]
    fail_submit: (i32, u32),
    /// Test hook: this many completions are seen as failing with this errno.
    #[cfg(any(test, feature = "test-utils"))]
    fail_completions: (i32, u32),
    /// Test hook: this many renewals fail (as if setting up the new ring failed).
    #[cfg(any(test, feature = "test-utils"))]
    fail_renewals: u32,
    /// Test hook: how many times a new ring was set up to replace a broken one.
    #[cfg(any(test, feature = "test-utils"))]
    renewals_tried: u32,
}

// SAFETY: the raw pointers a `GuestUring` holds (in its iovecs) point into guest memory
// mapped by the requests it owns, which are `Send`, and into its own iovec arrays; only the
// kernel dereferences them, and every method that touches them takes `&mut self`. Moving the
// ring to another thread moves no unsynchronised access.
unsafe impl<T: Send> Send for GuestUring<T> {}

impl<T> std::fmt::Debug for GuestUring<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestUring")
            .field("depth", &self.slots.len())
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

/// How long dropping a ring waits by default for operations in flight (storage that stopped
/// answering, e.g. a hard-mounted NFS server gone) before leaking them: the quiesce timeout.
pub const DROP_TIMEOUT: Duration = super::handler::QUIESCE_TIMEOUT;

/// How many times an operation completing with `EINTR` or `EAGAIN` is queued again before
/// it fails with that error.
const MAX_RETRIES: u8 = 16;

/// How many submissions in a row the kernel may refuse for now while the ring is dropped
/// before the operations it did not take fail (about half a second with the pauses between).
const DROP_REFUSALS: u32 = 20;

/// The file's index among the ring's registered files.
const FILE: types::Fixed = types::Fixed(0);

// A refused operation gives its request back by value, which makes the error large; it is
// the rare path.
#[allow(clippy::result_large_err)]
impl<T> GuestUring<T> {
    /// A ring for I/O on `file` with room for `depth` operations in flight (a queue's size),
    /// with its completion eventfd registered.
    pub fn new(file: &File, depth: u16) -> io::Result<Self> {
        let depth = depth.max(1);
        let eventfd = EventFd::new(EFD_NONBLOCK)?;
        let file = file.try_clone()?;
        let ring = new_ring(&file, u32::from(depth), &eventfd)?;
        let mut p = io_uring::Probe::new();
        let fallocate = ring.submitter().register_probe(&mut p).is_ok()
            && p.is_supported(opcode::Fallocate::CODE);
        let max_slots = (ring.params().cq_entries() as usize).max(usize::from(depth));
        Ok(GuestUring {
            max_slots,
            ring: ManuallyDrop::new(ring),
            file,
            fallocate,
            broken: false,
            submitted: false,
            retired: false,
            renewed: false,
            queued: std::collections::VecDeque::with_capacity(usize::from(depth)),
            parked: std::collections::VecDeque::new(),
            refused: 0,
            failed: Vec::new(),
            eventfd,
            slots: (0..depth).map(|_| Slot::empty()).collect(),
            free: (0..u32::from(depth)).rev().collect(),
            in_flight: 0,
            cqes: Vec::with_capacity(usize::from(depth)),
            drop_timeout: DROP_TIMEOUT,
            drop_deadline: None,
            #[cfg(any(test, feature = "test-utils"))]
            fail_submit: (0, 0),
            #[cfg(any(test, feature = "test-utils"))]
            fail_completions: (0, 0),
            #[cfg(any(test, feature = "test-utils"))]
            fail_renewals: 0,
            #[cfg(any(test, feature = "test-utils"))]
            renewals_tried: 0,
        })
    }

    /// How long dropping the ring waits for operations in flight (default [`DROP_TIMEOUT`])
    /// before it leaks them, their requests and the ring, keeping guest memory mapped.
    pub fn set_drop_timeout(&mut self, timeout: Duration) {
        self.drop_timeout = timeout;
    }

    /// How long dropping the ring waits for operations in flight (see
    /// [`set_drop_timeout`](Self::set_drop_timeout)).
    pub fn drop_timeout(&self) -> Duration {
        self.drop_timeout
    }

    /// Dropping the ring waits for operations in flight until `deadline` (instead of its
    /// timeout from the moment it is dropped). A device with several rings gives them one
    /// deadline before they are dropped one after the other: operations progress in the
    /// kernel whichever ring is being waited for, so that bounds the whole at one timeout.
    pub fn set_drop_deadline(&mut self, deadline: Instant) {
        self.drop_deadline = Some(deadline);
    }

    /// Whether [`fallocate`](Self::fallocate) can be used (the kernel knows
    /// `IORING_OP_FALLOCATE`, Linux 5.6 and later).
    pub fn supports_fallocate(&self) -> bool {
        self.fallocate
    }

    /// Test hook: the next system call that submits fails with `errno` (nothing is sent).
    #[cfg(any(test, feature = "test-utils"))]
    pub fn fail_next_submit(&mut self, errno: i32) {
        self.fail_submit = (errno, 1);
    }

    /// Test hook: the next `n` system calls that submit fail with `errno` (nothing is sent).
    #[cfg(any(test, feature = "test-utils"))]
    pub fn fail_next_submits(&mut self, errno: i32, n: u32) {
        self.fail_submit = (errno, n);
    }

    /// Test hook: the next `n` completions taken are seen as failing with `errno`.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn fail_next_completions(&mut self, errno: i32, n: u32) {
        self.fail_completions = (errno, n);
    }

    /// Test hook: the next `n` attempts to set up a ring replacing a broken one fail.
    #[cfg(any(test, feature = "test-utils"))]
    pub fn fail_next_renewals(&mut self, n: u32) {
        self.fail_renewals = n;
    }

    /// Test hook: how many times a ring replacing a broken one was set up (or tried).
    #[cfg(any(test, feature = "test-utils"))]
    pub fn renewals_tried(&self) -> u32 {
        self.renewals_tried
    }

    /// The eventfd the ring signals when operations complete (non-blocking; [`reap`](Self::reap)
    /// resets it).
    pub fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Operations submitted or queued and not reaped yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Queues a read of `len` bytes of the file at `offset` into the request's writable bytes
    /// from their start. With `align`, buffers (host-adjacent ones merged) that do not meet
    /// it are refused with [`GuestIoError::Unaligned`] before anything is queued.
    pub fn read_to_writable(
        &mut self,
        req: Request,
        offset: u64,
        len: u64,
        align: Option<IoAlign>,
        tag: T,
    ) -> Result<(), Refused<T>> {
        self.start(req, tag, Kind::Read, offset, 0, len, align, &[])
    }

    /// Queues a write of `len` readable bytes of the request, from `skip` on, to the file at
    /// `offset`. `align` as for [`read_to_writable`](Self::read_to_writable).
    pub fn write_from_readable(
        &mut self,
        req: Request,
        offset: u64,
        skip: u64,
        len: u64,
        align: Option<IoAlign>,
        tag: T,
    ) -> Result<(), Refused<T>> {
        self.start(req, tag, Kind::Write, offset, skip, len, align, &[])
    }

    /// Queues an `fdatasync` of the file for `req` (which the sync does not touch).
    pub fn sync_data(&mut self, req: Request, tag: T) -> Result<(), Refused<T>> {
        self.start(req, tag, Kind::SyncData, 0, 0, 0, None, &[])
    }

    /// Queues `fallocate`s of the file over `ranges` for `req` (which they do not touch),
    /// one after the other in the kernel's worker threads; the first failure ends them and
    /// fails the operation (ranges before it are done). Refused with
    /// [`GuestIoError::Io`] (`EOPNOTSUPP`) when the kernel lacks the operation
    /// ([`supports_fallocate`](Self::supports_fallocate)), or an empty `ranges` or a range
    /// of 0 bytes (`EINVAL`).
    pub fn fallocate(
        &mut self,
        req: Request,
        ranges: &[FallocRange],
        tag: T,
    ) -> Result<(), Refused<T>> {
        let errno = if !self.fallocate {
            Some(libc::EOPNOTSUPP)
        } else if ranges.is_empty() || ranges.iter().any(|r| r.len == 0) {
            Some(libc::EINVAL)
        } else {
            None
        };
        if let Some(errno) = errno {
            return Err(Refused {
                req,
                tag,
                error: GuestIoError::Io(io::Error::from_raw_os_error(errno)),
            });
        }
        self.start(req, tag, Kind::Fallocate, 0, 0, 0, None, ranges)
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        &mut self,
        req: Request,
        tag: T,
        kind: Kind,
        offset: u64,
        skip: u64,
        len: u64,
        align: Option<IoAlign>,
        ranges: &[FallocRange],
    ) -> Result<(), Refused<T>> {
        if self.broken {
            if let Err(error) = self.renew() {
                return Err(Refused {
                    req,
                    tag,
                    error: GuestIoError::Io(error),
                });
            }
        }
        if self.free.is_empty() && self.slots.len() < self.max_slots {
            // Every slot is taken: operations a timed-out stop left behind keep theirs until
            // they complete, and the queue's next generation may have a queue's size of its
            // own. One more slot (the completion queue has room for them all).
            self.free.push(self.slots.len() as u32);
            self.slots.push(Slot::empty());
        }
        let Some(&idx) = self.free.last() else {
            return Err(Refused {
                req,
                tag,
                error: GuestIoError::Io(io::Error::from_raw_os_error(libc::EBUSY)),
            });
        };
        let slot = &mut self.slots[idx as usize];
        slot.iov.clear();
        slot.ranges.clear();
        slot.ranges.extend_from_slice(ranges);
        if matches!(kind, Kind::Read | Kind::Write) {
            if let Err(error) = build_iov(&req, kind, skip, len, align, &mut slot.iov) {
                slot.iov.clear();
                return Err(Refused { req, tag, error });
            }
        }
        slot.op = Some(InFlight {
            req,
            tag,
            kind,
            offset,
            first: 0,
            left: len,
            total: len,
            retries: 0,
        });
        let mut pushed = self.push(idx);
        if pushed.is_err() {
            // Entries left over from a submission that failed: send them, then try again.
            pushed = self.submit().and_then(|()| self.push(idx));
        }
        if let Err(error) = pushed {
            let slot = &mut self.slots[idx as usize];
            slot.iov.clear();
            let op = slot.op.take().expect("the operation just stored");
            return Err(Refused {
                req: op.req,
                tag: op.tag,
                error: GuestIoError::Io(error),
            });
        }
        self.free.pop();
        self.in_flight += 1;
        Ok(())
    }

    /// Queues the submission entry for what is left of slot `idx`'s operation.
    fn push(&mut self, idx: u32) -> io::Result<()> {
        if self.broken {
            return Err(io::Error::other("the ring failed and submits nothing more"));
        }
        let slot = &self.slots[idx as usize];
        let Some(op) = slot.op.as_ref() else {
            return Err(io::Error::other("no operation in the slot"));
        };
        let entry = match op.kind {
            Kind::Read | Kind::Write => {
                let iov = &slot.iov[op.first..];
                // At most IOV_MAX (1024) entries a call: the rest follows as a short transfer.
                let n = iov.len().min(IOV_MAX) as u32;
                if op.kind == Kind::Read {
                    opcode::Readv::new(FILE, iov.as_ptr(), n)
                        .offset(op.offset)
                        .build()
                } else {
                    opcode::Writev::new(FILE, iov.as_ptr(), n)
                        .offset(op.offset)
                        .build()
                }
            }
            Kind::SyncData => opcode::Fsync::new(FILE)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            Kind::Fallocate => {
                let Some(r) = slot.ranges.get(op.first) else {
                    return Err(io::Error::other("no fallocate range left"));
                };
                opcode::Fallocate::new(FILE, r.len)
                    .offset(r.offset)
                    .mode(r.mode)
                    .build()
            }
        }
        .user_data(u64::from(idx));
        let mut sq = self.ring.submission();
        // The slot's iovec heap buffer stays put (also when slots are added and the slot
        // moves) and unchanged until this slot's completion is reaped; the request the slot
        // holds keeps the checked guest memory mapped until then (dropping the ring waits for
        // every operation, up to a bound, or leaks them and the ring; see the module docs).
        // SAFETY: the entry's iovecs and the guest ranges they name stay valid until the
        // kernel completes it (above); the file is registered; a read writes only those ranges.
        let pushed = unsafe { sq.push(&entry) };
        drop(sq);
        pushed.map_err(|_| io::Error::other("the submission queue is full"))?;
        self.queued.push_back(idx);
        Ok(())
    }

    /// Forgets the queued slots whose entries the kernel consumed (they are the oldest).
    fn note_consumed(&mut self) {
        let left = self.ring.submission().len();
        let consumed = self.queued.len().saturating_sub(left);
        self.queued.drain(..consumed);
    }

    /// Replaces a broken ring with a new one, once nothing is in flight on it.
    fn renew(&mut self) -> io::Result<()> {
        if self.retired {
            return Err(io::Error::other(
                "io_uring failed again on a new ring: not used any more",
            ));
        }
        if self.in_flight > 0 {
            return Err(io::Error::other(
                "the ring failed; operations are still in flight on it",
            ));
        }
        let entries = self.ring.params().sq_entries();
        #[cfg(any(test, feature = "test-utils"))]
        {
            self.renewals_tried += 1;
        }
        #[cfg(any(test, feature = "test-utils"))]
        let injected = if self.fail_renewals > 0 {
            self.fail_renewals -= 1;
            Some(io::Error::from_raw_os_error(libc::ENOMEM))
        } else {
            None
        };
        #[cfg(not(any(test, feature = "test-utils")))]
        let injected = None;
        let ring = match injected.map_or_else(|| new_ring(&self.file, entries, &self.eventfd), Err)
        {
            Ok(ring) => ring,
            Err(e) => {
                // Setting up rings fails here (out of memory, a limit reached): trying again
                // for every operation would repeat the setup each time, to serve it at once
                // anyway.
                log::error!(
                    "io_uring: setting up a ring to replace the one that failed: {e}; \
                     requests are served another way"
                );
                self.retired = true;
                return Err(e);
            }
        };
        let old = std::mem::replace(&mut *self.ring, ring);
        // The entries left in the old ring's submission queue are never submitted: the
        // kernel consumes them only in io_uring_enter, which nothing calls on it any more.
        drop(old);
        self.queued.clear();
        self.broken = false;
        self.submitted = false;
        self.renewed = true;
        log::info!("io_uring: a new ring replaces the one that failed");
        Ok(())
    }

    /// Sends every queued operation to the kernel with one system call.
    ///
    /// When the kernel refuses for now (`EAGAIN`, `ENOMEM`, `EBUSY`: out of resources, or
    /// completions to take first), the operations stay queued, the ring signals its own
    /// eventfd and [`reap`](Self::reap) sends them again: this returns `Ok`. Another error is
    /// returned: the operations still queued fail (given back, marked
    /// [`not_submitted`](Reaped::not_submitted), by the next `reap`, which the eventfd is
    /// signalled for) and the ring submits nothing more; a new one replaces it once nothing
    /// is in flight on it. Once the ring failed, this does nothing and returns `Ok`.
    pub fn submit(&mut self) -> io::Result<()> {
        if self.broken {
            return Ok(());
        }
        let error = loop {
            self.push_parked();
            if self.ring.submission().is_empty() {
                self.queued.clear();
                self.refused = 0;
                return Ok(());
            }
            #[cfg(any(test, feature = "test-utils"))]
            if self.fail_submit.1 > 0 {
                self.fail_submit.1 -= 1;
                break io::Error::from_raw_os_error(self.fail_submit.0);
            }
            let r = self.ring.submit();
            self.note_consumed();
            match r {
                Ok(_) => {
                    self.submitted = true;
                    self.refused = 0;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break e,
            }
        };
        // Nothing else may come to send what is queued (no kick, no completion), or failed
        // operations are to be given back: wake the worker through the eventfd, whose
        // handler reaps (and so submits again).
        if let Err(e) = self.eventfd.write(1) {
            log::error!("io_uring: signalling a failed submission: {e}");
        }
        if let Some(libc::EAGAIN | libc::ENOMEM | libc::EBUSY) = error.raw_os_error() {
            log::debug!("io_uring: submission refused for now ({error}), retried");
            self.refused = self.refused.saturating_add(1);
            return Ok(());
        }
        // Anything else will not get better by retrying (a ring the kernel refuses, e.g.
        // disabled or entered from the wrong task): the operations still queued fail, and
        // the ring submits nothing more (the entries stay queued in it) until a new ring
        // replaces it.
        log::error!(
            "io_uring: submission failed ({error}); {} queued operations fail",
            self.queued.len()
        );
        self.broken = true;
        if self.renewed && !self.submitted {
            log::error!("io_uring: the new ring failed too; requests are served another way");
            self.retired = true;
        }
        self.fail_unsubmitted(&error);
        Err(error)
    }

    /// Queues the parked slots, oldest first, while the submission queue has room.
    fn push_parked(&mut self) {
        while let Some(&idx) = self.parked.front() {
            if self.slots[idx as usize].op.is_some() && self.push(idx).is_err() {
                return;
            }
            self.parked.pop_front();
        }
    }

    /// Fails every operation the kernel did not get (queued or parked) with `error`, given
    /// back by the next [`reap`](Self::reap), and marks the ring broken: the entries left in
    /// its submission queue (which name the freed slots) are never submitted.
    fn fail_unsubmitted(&mut self, error: &io::Error) {
        self.broken = true;
        let mut failed = std::mem::take(&mut self.failed);
        let queued = std::mem::take(&mut self.queued);
        let parked = std::mem::take(&mut self.parked);
        for idx in queued.into_iter().chain(parked) {
            let e = error.raw_os_error().map_or_else(
                || io::Error::new(error.kind(), error.to_string()),
                io::Error::from_raw_os_error,
            );
            self.finish(idx, Err(GuestIoError::Io(e)), true, &mut failed);
        }
        self.failed = failed;
    }

    /// Takes every completion the kernel posted: finished operations are appended to `out`
    /// (their requests given back), short transfers and interrupted operations are queued
    /// again for what is left (and submitted). Resets the eventfd first, so a completion
    /// posted after this looked signals it again. Returns the number appended.
    pub fn reap(&mut self, out: &mut Vec<Reaped<T>>) -> usize {
        let _ = self.eventfd.read();
        let mut n = self.take_completions(out);
        // What a failed submission left queued (taking completions first makes room).
        if let Err(e) = self.submit() {
            log::warn!("io_uring: submission failed again: {e}");
        }
        // Last: submissions above (and resubmitted short transfers) may have failed some.
        n += self.failed.len();
        out.append(&mut self.failed);
        n
    }

    /// [`reap`](Self::reap) without a system call when nothing was posted (right after a
    /// submission, for what the kernel served inline, e.g. from the page cache). Leaves the
    /// eventfd readable when it finds nothing: the handler of the eventfd must use `reap`.
    pub fn reap_ready(&mut self, out: &mut Vec<Reaped<T>>) -> usize {
        if self.ring.completion().is_empty() && self.failed.is_empty() {
            return 0;
        }
        self.reap(out)
    }

    fn take_completions(&mut self, out: &mut Vec<Reaped<T>>) -> usize {
        let before = out.len();
        loop {
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
            if cqes.is_empty() {
                self.cqes = cqes;
                break;
            }
            #[cfg(any(test, feature = "test-utils"))]
            for c in cqes.iter_mut() {
                if self.fail_completions.1 > 0 {
                    self.fail_completions.1 -= 1;
                    c.1 = -self.fail_completions.0;
                }
            }
            let mut again = false;
            for &(data, res) in &cqes {
                again |= self.on_completion(data, res, out);
            }
            cqes.clear();
            self.cqes = cqes;
            if again {
                // A refusal for now is retried through the eventfd; one for good fails the
                // operations queued (see `submit`), given back by `reap`.
                if let Err(e) = self.submit() {
                    log::warn!("io_uring: resubmitting a short transfer: {e}");
                }
            }
        }
        out.len() - before
    }

    /// Handles one completion; `true` when the operation was queued again.
    fn on_completion(&mut self, data: u64, res: i32, out: &mut Vec<Reaped<T>>) -> bool {
        let Some(slot) = usize::try_from(data)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
        else {
            log::error!("io_uring: completion for an unknown slot {data}");
            return false;
        };
        let Some(op) = slot.op.as_mut() else {
            log::error!("io_uring: completion for the empty slot {data}");
            return false;
        };
        let result = if res < 0 {
            let errno = -res;
            if (errno == libc::EINTR || errno == libc::EAGAIN) && op.retries < MAX_RETRIES {
                // Bounded: an operation that completes with these at once for ever would
                // keep the worker reaping it.
                op.retries += 1;
                return self.requeue(data as u32, out);
            }
            Err(io::Error::from_raw_os_error(errno))
        } else if op.kind == Kind::SyncData {
            Ok(())
        } else if op.kind == Kind::Fallocate {
            op.first += 1;
            if op.first < slot.ranges.len() {
                return self.requeue(data as u32, out);
            }
            Ok(())
        } else {
            let done = res as u64;
            if done >= op.left {
                Ok(())
            } else if done == 0 {
                Err(match op.kind {
                    Kind::Read => io::ErrorKind::UnexpectedEof.into(),
                    _ => io::ErrorKind::WriteZero.into(),
                })
            } else {
                op.left -= done;
                op.offset += done;
                advance(&mut slot.iov, &mut op.first, done);
                return self.requeue(data as u32, out);
            }
        };
        self.finish(data as u32, result.map_err(GuestIoError::Io), false, out);
        false
    }

    /// Queues slot `idx`'s operation again; fails it when that is impossible (the ring
    /// failed for good). A full submission queue (there may be more slots than entries, and
    /// a fallocate queues each range in turn) is sent to the kernel first; when the kernel
    /// refuses that for now, the slot is parked and the next submission queues it.
    fn requeue(&mut self, idx: u32, out: &mut Vec<Reaped<T>>) -> bool {
        let mut pushed = self.push(idx);
        if pushed.is_err() && !self.broken {
            pushed = self.submit().and_then(|()| self.push(idx));
            if pushed.is_err() && !self.broken {
                self.parked.push_back(idx);
                return true;
            }
        }
        match pushed {
            Ok(()) => true,
            Err(e) => {
                self.finish(idx, Err(GuestIoError::Io(e)), true, out);
                false
            }
        }
    }

    /// Frees slot `idx` and gives its request back with `result`.
    /// `not_submitted`: see [`Reaped::not_submitted`].
    fn finish(
        &mut self,
        idx: u32,
        result: Result<(), GuestIoError>,
        not_submitted: bool,
        out: &mut Vec<Reaped<T>>,
    ) {
        let slot = &mut self.slots[idx as usize];
        let Some(op) = slot.op.take() else {
            return;
        };
        slot.iov.clear();
        slot.ranges.clear();
        self.free.push(idx);
        self.in_flight -= 1;
        // Also after a failure, as `FileIo` does: a short read may have landed before the
        // retry failed, and a failed transfer may have written part of its buffers.
        if op.kind == Kind::Read {
            op.req.mark_written(0, op.total);
        }
        out.push(Reaped {
            req: op.req,
            tag: op.tag,
            result,
            not_submitted,
        });
    }
}

impl<T> Drop for GuestUring<T> {
    fn drop(&mut self) {
        let start = Instant::now();
        let deadline = self.drop_deadline.unwrap_or(start + self.drop_timeout);
        let mut out = Vec::new();
        loop {
            // `reap` resets the eventfd before it looks: what completes later signals again.
            self.reap(&mut out);
            for r in out.drain(..) {
                log::debug!("io_uring: request {} returned at shutdown", r.req.head());
                r.req.complete(0);
            }
            if self.in_flight == 0 {
                break;
            }
            if self.refused >= DROP_REFUSALS {
                // The kernel keeps refusing to take what is queued: those operations never
                // reached it, their buffers are free to go (the ones it has are waited for).
                log::error!(
                    "io_uring: submissions refused {} times in a row at shutdown; the \
                     operations not submitted fail",
                    self.refused
                );
                self.refused = 0;
                self.fail_unsubmitted(&io::Error::from_raw_os_error(libc::EAGAIN));
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                // The storage does not answer (e.g. a hard-mounted NFS server gone): the
                // kernel may still use the buffers, keep them mapped for ever, with the ring.
                log::error!(
                    "io_uring: {} operations still in flight after waiting {:?}; their \
                     requests and the ring are leaked",
                    self.in_flight,
                    start.elapsed()
                );
                std::mem::forget(std::mem::take(&mut self.slots));
                return;
            }
            if self.refused > 0 {
                // Refused for now: the eventfd is signalled already, do not spin on it.
                let pause = Duration::from_millis(1 << self.refused.min(5));
                std::thread::sleep(pause.min(deadline - now));
            }
            let wait = (deadline - now).as_millis().clamp(1, i32::MAX as u128) as i32;
            let mut pfd = libc::pollfd {
                fd: self.eventfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: `pfd` is one valid pollfd that outlives the call; poll only writes its
            // `revents`.
            let r = unsafe { libc::poll(&mut pfd, 1, wait) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("io_uring: waiting for operations in flight: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
        // SAFETY: nothing is in flight any more, so the kernel uses neither the ring's
        // memory nor guest buffers; `ring` is not used after this.
        unsafe { ManuallyDrop::drop(&mut self.ring) };
    }
}

/// A ring of `entries` entries (rounded up to a power of two) with `file` registered as
/// [`FILE`] and `eventfd` signalled on completions.
fn new_ring(file: &File, entries: u32, eventfd: &EventFd) -> io::Result<IoUring> {
    let ring = IoUring::new(entries.max(1).next_power_of_two())?;
    ring.submitter().register_files(&[file.as_raw_fd()])?;
    ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
    Ok(ring)
}

/// The iovecs of `len` bytes of the request (writable ones from the start for a read,
/// readable ones from `skip` for a write), host-adjacent ones merged.
fn build_iov(
    req: &Request,
    kind: Kind,
    skip: u64,
    len: u64,
    align: Option<IoAlign>,
    iov: &mut Vec<libc::iovec>,
) -> Result<(), GuestIoError> {
    req.check_current()?;
    let mem = req.memory();
    let mut total = 0u64;
    let pieces: &mut dyn Iterator<Item = _> = match kind {
        Kind::Read => &mut req.writable_pieces(skip, len),
        _ => &mut req.readable_pieces(skip, len),
    };
    for (addr, n) in pieces {
        guest_io::push_range(mem, iov, addr, n)?;
        total += n;
    }
    if total != len {
        return Err(GuestIoError::Short {
            wanted: len,
            got: total,
        });
    }
    guest_io::merge_contiguous(iov);
    if let Some(a) = align {
        if !guest_io::is_aligned(iov, a) {
            return Err(GuestIoError::Unaligned);
        }
    }
    Ok(())
}

/// Moves `first` past `done` transferred bytes of `iov`, shortening the iovec it stops in.
fn advance(iov: &mut [libc::iovec], first: &mut usize, mut done: u64) {
    while done > 0 {
        let Some(v) = iov.get_mut(*first) else {
            return;
        };
        let len = v.iov_len as u64;
        if done >= len {
            done -= len;
            *first += 1;
        } else {
            v.iov_base = v.iov_base.cast::<u8>().wrapping_add(done as usize).cast();
            v.iov_len -= done as usize;
            done = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_skips_whole_entries_and_shortens_the_one_it_stops_in() {
        let e = |addr: usize, len: usize| libc::iovec {
            iov_base: addr as *mut libc::c_void,
            iov_len: len,
        };
        let mut v = [e(0x1000, 512), e(0x3000, 1024), e(0x8000, 512)];
        let mut first = 0;
        advance(&mut v, &mut first, 512 + 100);
        assert_eq!(first, 1);
        assert_eq!((v[1].iov_base as usize, v[1].iov_len), (0x3000 + 100, 924));
        advance(&mut v, &mut first, 924 + 512);
        assert_eq!(first, 3);
    }
}
