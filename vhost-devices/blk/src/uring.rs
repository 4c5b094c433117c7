//! The io_uring engine ([`Aio::IoUring`](crate::Aio::IoUring)): one ring per queue, driven
//! by the queue's worker. Reads and writes go to the kernel as vectored operations straight
//! into and out of guest memory (the runtime's [`GuestUring`]); every request popped in one
//! wake-up is submitted with one system call; completions arrive on the ring's eventfd,
//! which the worker watches, and are reaped in bursts (the runtime then publishes them with
//! one used-ring update and at most one notification).
//!
//! What is not a plain read or write (GET_ID, DISCARD, WRITE_ZEROES, requests that fail a
//! check, guest buffers `O_DIRECT` cannot take as they are, and what the ring has no room
//! for) is served at once on the worker, as [`Aio::Sync`](crate::Aio::Sync) does. A device
//! reset forgets the previous generation's writes, so a write that never completes (storage
//! stalled past a stop's timeout) does not hold back later flushes.
//!
//! Ordering: a FLUSH's `fdatasync` is submitted only once every write submitted on this
//! queue before the flush completed (its used entry queued, its own sync in writethrough
//! mode done), so the flush makes them stable and completes after them. virtio asks this for
//! the writes completed before the flush was made available; those of other queues are
//! complete before it already.

use std::collections::{BTreeSet, VecDeque};
use std::os::fd::RawFd;

use vhost_backend::runtime::{GuestIoError, GuestUring, Reaped, Refused, Request};

use crate::disk::Plan;
use crate::request::{read_header, Header, RequestError, HEADER_SIZE};
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

    /// Requests whose I/O is in flight or waiting for earlier writes.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.ring.in_flight() + self.flushes.len()
    }

    /// Starts `req`: queued on the ring (sent by [`submit`](Self::submit)), or served and
    /// completed at once.
    pub(crate) fn start(&mut self, core: &Core, req: Request, writethrough: bool) {
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
            None => self.serve(core, req, header, writethrough),
        }
    }

    /// Serves `req` at once on this thread, as [`Aio::Sync`](crate::Aio::Sync) does. A panic
    /// serving it returns it with length 0 and leaves the queue working, as on an I/O thread.
    fn serve(&mut self, core: &Core, req: Request, header: Option<Header>, writethrough: bool) {
        let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            core.serve(&mut self.scratch, &req, header, writethrough)
        }));
        let len = served.unwrap_or_else(|_| {
            log::error!("serving a request panicked; returned with length 0");
            0
        });
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
            for Reaped { req, tag, result } in reaped.drain(..) {
                let result = result.map_err(RequestError::from);
                match tag {
                    Tag::Read(len) => complete(core, req, result.map(|()| len)),
                    Tag::Write { id, sync: true } if result.is_ok() => {
                        if let Err(Refused { req, .. }) =
                            self.ring.sync_data(req, Tag::WriteSync(id))
                        {
                            complete(core, req, sync_if(core, true).map(|()| 0));
                            self.writes.remove(&id);
                        }
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

fn complete(core: &Core, req: Request, result: Result<u32, RequestError>) {
    let len = core.finish(&req, result);
    req.complete(len);
}

fn sync_if(core: &Core, sync: bool) -> Result<(), RequestError> {
    if sync {
        core.disk.sync_data()?;
    }
    Ok(())
}
