//! The io_uring engine ([`Aio::IoUring`](crate::Aio::IoUring)): one ring per queue, driven
//! by the queue's worker. Reads and writes go to the kernel as vectored operations straight
//! into and out of guest memory (the runtime's [`GuestUring`]); every request popped in one
//! wake-up is submitted with one system call; completions arrive on the ring's eventfd,
//! which the worker watches, and are reaped in bursts (the runtime then publishes them with
//! one used-ring update and at most one notification).
//!
//! DISCARD and WRITE_ZEROES go to the kernel as `fallocate` operations (punching a hole,
//! zeroing a range; run by the kernel's worker threads, so the queue's worker does not wait
//! for them) where the kernel knows `IORING_OP_FALLOCATE`; a WRITE_ZEROES the file system
//! cannot zero that way is then served at once (holes or written zeros), a DISCARD it cannot
//! deallocate succeeds (a hint), as on the other engines.
//!
//! What else is not a plain read or write (GET_ID, requests that fail a check, guest buffers
//! `O_DIRECT` cannot take as they are, and what the ring has no room for) is served at once
//! on the worker, as [`Aio::Sync`](crate::Aio::Sync) does. A device reset forgets the
//! previous generation's writes, so a write that never completes (storage stalled past a
//! stop's timeout) does not hold back later flushes. A submission the kernel refuses for
//! good fails the requests it carried with IOERR (DISCARD and WRITE_ZEROES too, whatever the
//! errno: it is not the file system's answer); the ring is replaced once nothing is in
//! flight on it, and meanwhile requests are served at once (from then on if the new ring
//! fails too before serving anything, or cannot be set up).
//!
//! Ordering: a FLUSH's `fdatasync` is submitted only once every write (OUT, DISCARD,
//! WRITE_ZEROES) submitted on this queue before the flush completed (its used entry queued,
//! its own sync in writethrough mode done), so the flush makes them stable and completes
//! after them. virtio asks this for the writes completed before the flush was made
//! available; those of other queues are complete before it already.

use std::collections::{BTreeSet, VecDeque};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use vhost_backend::runtime::{FallocRange, GuestIoError, GuestUring, Reaped, Refused, Request};

use crate::config::MAX_RANGE_SEGMENTS;
use crate::disk::Plan;
use crate::request::{read_header, Header, RequestError, HEADER_SIZE, VIRTIO_BLK_T_DISCARD};
use crate::{Core, Scratch};

/// What an operation in flight is to the queue.
#[derive(Debug, Clone, Copy)]
enum Tag {
    /// A read of this many bytes.
    Read(u32),
    /// Write `id`; `sync`: an `fdatasync` follows before it completes (writethrough).
    Write { id: u64, sync: bool },
    /// The `fdatasync` after write `id`.
    WriteSync(u64),
    /// A DISCARD (`discard`) or WRITE_ZEROES as write `id`, its ranges `fallocate`d;
    /// `sync` as for [`Tag::Write`]; `header` as parsed when it started (for serving it
    /// again at once without parsing the header again: its segments are read from the
    /// guest's chain, and checked, again).
    Ranges {
        id: u64,
        discard: bool,
        sync: bool,
        header: Header,
    },
    /// A flush's `fdatasync`.
    Flush,
}

/// One queue's ring and what orders its flushes.
#[derive(Debug)]
pub(crate) struct UringQueue {
    ring: GuestUring<Tag>,
    /// For the requests served at once.
    scratch: Scratch,
    next_write: u64,
    /// Writes submitted and not completed.
    writes: BTreeSet<u64>,
    /// Flushes waiting for the writes before their horizon, in order.
    flushes: VecDeque<(u64, Request)>,
    reaped: Vec<Reaped<Tag>>,
}

impl UringQueue {
    /// A ring on `core`'s image for a queue of up to `depth` requests.
    pub(crate) fn new(core: &Core, depth: u16, scratch: Scratch) -> std::io::Result<Self> {
        Self::on_file(core.disk.file(), depth, scratch)
    }

    /// A ring whose reads and writes go to `file` (tests: a pipe, whose writes stay in flight
    /// while it is full); the rest is served on `core`'s image.
    pub(crate) fn on_file(
        file: &std::fs::File,
        depth: u16,
        scratch: Scratch,
    ) -> std::io::Result<Self> {
        Ok(UringQueue {
            ring: GuestUring::new(file, depth)?,
            scratch,
            next_write: 0,
            writes: BTreeSet::new(),
            flushes: VecDeque::new(),
            reaped: Vec::with_capacity(usize::from(depth)),
        })
    }

    /// The eventfd the ring signals completions on.
    pub(crate) fn eventfd(&self) -> RawFd {
        self.ring.eventfd()
    }

    /// How long dropping the ring waits for operations in flight.
    pub(crate) fn drop_timeout(&self) -> Duration {
        self.ring.drop_timeout()
    }

    /// Dropping the ring waits for operations in flight until `deadline` at most (one for
    /// every queue of a device, so dropping them in turn waits one timeout in all).
    pub(crate) fn set_drop_deadline(&mut self, deadline: Instant) {
        self.ring.set_drop_deadline(deadline);
    }

    /// Test hook: the ring's next submission fails with `errno`.
    #[cfg(test)]
    pub(crate) fn fail_next_submit(&mut self, errno: i32) {
        self.ring.fail_next_submit(errno);
    }

    /// Test hook: the ring's next `n` completions are seen as failing with `errno`.
    #[cfg(test)]
    pub(crate) fn fail_next_completions(&mut self, errno: i32, n: u32) {
        self.ring.fail_next_completions(errno, n);
    }

    /// Test hook: the next `n` attempts to replace a failed ring fail.
    #[cfg(test)]
    pub(crate) fn fail_next_renewals(&mut self, n: u32) {
        self.ring.fail_next_renewals(n);
    }

    /// Test hook: how many times a new ring was set up (or tried) to replace a failed one.
    #[cfg(test)]
    pub(crate) fn renewals_tried(&self) -> u32 {
        self.ring.renewals_tried()
    }

    /// Test hook: flushes waiting for earlier writes to complete.
    #[cfg(test)]
    pub(crate) fn waiting_flushes(&self) -> usize {
        self.flushes.len()
    }

    /// Test hook: the ring's drop timeout.
    #[cfg(test)]
    pub(crate) fn set_drop_timeout(&mut self, timeout: Duration) {
        self.ring.set_drop_timeout(timeout);
    }

    /// Requests whose I/O is in flight or waiting for earlier writes.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.ring.in_flight() + self.flushes.len()
    }

    /// Starts `req`: queued on the ring (sent by [`submit`](Self::submit)), or served and
    /// completed at once.
    pub(crate) fn start(&mut self, core: &Core, req: Request, writethrough: bool) {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering::Relaxed;
            let left = core.panic_starting.load(Relaxed);
            if left != 0 {
                core.panic_starting.store(left - 1, Relaxed);
                assert!(left != 1, "a panic starting a request, as a test asked");
            }
        }
        if req.last_writable_byte().is_none() {
            log::debug!("chain without a status byte returned with length 0");
            req.complete(0);
            return;
        }
        let header = read_header(&req).ok();
        let plan = header.and_then(|h| core.disk.plan(&req, h));
        let align = core.disk.io_align();
        match plan {
            Some(Plan::Read { offset, len }) => {
                // `len` is at most MAX_DATA_BYTES, far below u32::MAX.
                let tag = Tag::Read(len as u32);
                if let Err(Refused { req, error, .. }) =
                    self.ring.read_to_writable(req, offset, len, align, tag)
                {
                    let r = match error {
                        GuestIoError::Unaligned => core
                            .disk
                            .bounced(&req, offset, len, self.scratch.bounce.as_mut(), false)
                            .map(|()| len as u32),
                        GuestIoError::Io(_) => {
                            // No room on the ring (slots a timed-out stop left taken, a
                            // full submission queue): served here, as `Aio::Sync` does.
                            return self.serve(core, req, header, writethrough);
                        }
                        e => Err(e.into()),
                    };
                    complete(core, req, r);
                }
            }
            Some(Plan::Write { offset, len }) => {
                let id = self.next_write;
                self.next_write += 1;
                self.writes.insert(id);
                let tag = Tag::Write {
                    id,
                    sync: writethrough,
                };
                if let Err(Refused { req, error, .. }) =
                    self.ring
                        .write_from_readable(req, offset, HEADER_SIZE, len, align, tag)
                {
                    let r = match error {
                        GuestIoError::Unaligned => core
                            .disk
                            .bounced(&req, offset, len, self.scratch.bounce.as_mut(), true)
                            .and_then(|()| sync_if(core, writethrough)),
                        GuestIoError::Io(_) => {
                            // No room on the ring: served here (see the read above).
                            self.serve(core, req, header, writethrough);
                            self.writes.remove(&id);
                            return;
                        }
                        e => Err(e.into()),
                    };
                    complete(core, req, r.map(|()| 0));
                    self.writes.remove(&id);
                }
            }
            Some(Plan::Flush) => {
                let horizon = self.next_write;
                if self.writes.first().is_some_and(|&w| w < horizon) {
                    self.flushes.push_back((horizon, req));
                } else {
                    self.flush(core, req);
                }
            }
            None => {
                let ranges = match header {
                    Some(h) if self.ring.supports_fallocate() => core.disk.range_plan(&req, h),
                    _ => None,
                };
                match (header, ranges) {
                    (Some(h), Some(ranges)) => {
                        let discard = h.request_type == VIRTIO_BLK_T_DISCARD;
                        self.start_ranges(core, req, h, ranges.segments(), discard, writethrough)
                    }
                    _ => self.serve(core, req, header, writethrough),
                }
            }
        }
    }

    /// Queues a DISCARD (`discard`) or WRITE_ZEROES over its checked `segments` as
    /// `fallocate` operations, numbered as a write; served at once if the ring refuses.
    fn start_ranges(
        &mut self,
        core: &Core,
        req: Request,
        header: Header,
        segments: &[(u64, u64, u32)],
        discard: bool,
        writethrough: bool,
    ) {
        if segments.is_empty() {
            // Every segment empty: nothing to do but the sync a writethrough write does.
            return complete(core, req, sync_if(core, writethrough).map(|()| 0));
        }
        let mode = if discard {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        let mut ranges = [FallocRange {
            offset: 0,
            len: 0,
            mode: 0,
        }; MAX_RANGE_SEGMENTS as usize];
        for (r, &(offset, len, _)) in ranges.iter_mut().zip(segments) {
            *r = FallocRange { offset, len, mode };
        }
        let id = self.next_write;
        self.next_write += 1;
        self.writes.insert(id);
        let tag = Tag::Ranges {
            id,
            discard,
            sync: writethrough,
            header,
        };
        let n = segments.len().min(ranges.len());
        if let Err(Refused { req, .. }) = self.ring.fallocate(req, &ranges[..n], tag) {
            self.serve(core, req, Some(header), writethrough);
            self.writes.remove(&id);
        }
    }

    /// Serves `req` at once on this thread, as [`Aio::Sync`](crate::Aio::Sync) does. A panic
    /// serving it answers VIRTIO_BLK_S_IOERR and leaves the queue working, as on an I/O
    /// thread.
    fn serve(&mut self, core: &Core, req: Request, header: Option<Header>, writethrough: bool) {
        let scratch = &mut self.scratch;
        let len = core.caught(&req, || core.serve(scratch, &req, header, writethrough));
        req.complete(len);
    }

    /// Forgets the queue's writes and flushes of the generation before a reset: a write of
    /// that generation that never completes (storage stalled past the stop's timeout) must
    /// not hold back the flushes of the next one. Its completion, if it comes, is dropped.
    pub(crate) fn reset(&mut self) {
        self.writes.clear();
        for (_, req) in self.flushes.drain(..) {
            req.complete(0);
        }
    }

    /// Sends what [`start`](Self::start) queued.
    pub(crate) fn submit(&mut self) {
        if let Err(e) = self.ring.submit() {
            log::warn!("io_uring submission failed: {e}");
        }
    }

    /// Takes the ring's completions: completes their requests (or queues a write's sync),
    /// lets flushes go whose writes are done, and submits what that queued.
    pub(crate) fn reap(&mut self, core: &Core) {
        self.reap_with(core, GuestUring::reap);
    }

    /// [`reap`](Self::reap) without a system call when nothing completed (after a
    /// submission, for what the kernel served inline).
    pub(crate) fn reap_ready(&mut self, core: &Core) {
        self.reap_with(core, GuestUring::reap_ready);
    }

    fn reap_with(
        &mut self,
        core: &Core,
        take: fn(&mut GuestUring<Tag>, &mut Vec<Reaped<Tag>>) -> usize,
    ) {
        let mut reaped = std::mem::take(&mut self.reaped);
        let mut take = take;
        while take(&mut self.ring, &mut reaped) > 0 {
            // Later rounds look only at what is there.
            take = GuestUring::reap_ready;
            for Reaped {
                req,
                tag,
                result,
                not_submitted,
            } in reaped.drain(..)
            {
                let result = result.map_err(RequestError::from);
                match tag {
                    Tag::Read(len) => complete(core, req, result.map(|()| len)),
                    Tag::Write { id, sync: true } | Tag::Ranges { id, sync: true, .. }
                        if result.is_ok() =>
                    {
                        if let Err(Refused { req, .. }) =
                            self.ring.sync_data(req, Tag::WriteSync(id))
                        {
                            complete(core, req, sync_if(core, true).map(|()| 0));
                            self.writes.remove(&id);
                        }
                    }
                    Tag::Ranges {
                        id,
                        discard,
                        sync,
                        header,
                    } => {
                        match result {
                            // Never reached the kernel (a submission refused for good): the
                            // errno is the submission's, not the file system's.
                            r if not_submitted => complete(core, req, r.map(|()| 0)),
                            // Discard is a hint: a file system that cannot deallocate
                            // still succeeds (as `Aio::Sync` has it).
                            Err(RequestError::Io(e))
                                if discard && e.raw_os_error() == Some(libc::EOPNOTSUPP) =>
                            {
                                complete(core, req, sync_if(core, sync).map(|()| 0));
                            }
                            // A file system that cannot zero a range so: served at once,
                            // which punches holes or writes zeros.
                            Err(RequestError::Io(e)) if !discard && fallocate_unsupported(&e) => {
                                self.serve(core, req, Some(header), sync);
                            }
                            r => complete(core, req, r.map(|()| 0)),
                        }
                        self.writes.remove(&id);
                    }
                    Tag::Write { id, .. } | Tag::WriteSync(id) => {
                        // Completed before the flushes after it may go.
                        complete(core, req, result.map(|()| 0));
                        self.writes.remove(&id);
                    }
                    Tag::Flush => complete(core, req, result.map(|()| 0)),
                }
            }
            while let Some(&(horizon, _)) = self.flushes.front() {
                if self.writes.first().is_some_and(|&w| w < horizon) {
                    break;
                }
                if let Some((_, req)) = self.flushes.pop_front() {
                    self.flush(core, req);
                }
            }
            self.submit();
        }
        self.reaped = reaped;
    }

    /// Queues a flush's `fdatasync` (runs it at once if the ring refuses).
    fn flush(&mut self, core: &Core, req: Request) {
        if let Err(Refused { req, .. }) = self.ring.sync_data(req, Tag::Flush) {
            complete(core, req, sync_if(core, true).map(|()| 0));
        }
    }
}

impl Drop for UringQueue {
    fn drop(&mut self) {
        for (_, req) in self.flushes.drain(..) {
            req.complete(0);
        }
    }
}

/// Gives the rings of `queues` one drop deadline: the longest drop timeout from now.
pub(crate) fn set_drop_deadline(queues: &[std::sync::Mutex<UringQueue>]) {
    let lock = |q: &std::sync::Mutex<UringQueue>| {
        q.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drop_timeout()
    };
    let Some(timeout) = queues.iter().map(lock).max() else {
        return;
    };
    let deadline = Instant::now() + timeout;
    for q in queues {
        q.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .set_drop_deadline(deadline);
    }
}

fn complete(core: &Core, req: Request, result: Result<u32, RequestError>) {
    let len = core.finish(&req, result);
    req.complete(len);
}

/// Whether a `fallocate` failed because the file system lacks the mode (as
/// `file_ops::write_zeroes` sees it).
fn fallocate_unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL | libc::ENODEV)
    )
}

fn sync_if(core: &Core, sync: bool) -> Result<(), RequestError> {
    if sync {
        core.disk.sync_data()?;
    }
    Ok(())
}
