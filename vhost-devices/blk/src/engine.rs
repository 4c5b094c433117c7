//! Where requests run: on the queue's worker that popped them ([`Aio::Sync`]), on a pool
//! of threads ([`Aio::Threads`]) or on one io_uring per queue ([`Aio::IoUring`], module
//! `uring`), so that a disk sees as many requests at once as the guest keeps in flight.
//! This module is the pool. The worker pops requests and hands them to the pool; each pool thread
//! runs one request at a time with its own scratch space and completes it, and the runtime
//! publishes the completions.
//!
//! Ordering: a FLUSH completes only after every write (OUT, DISCARD, WRITE_ZEROES) popped
//! before it has completed, and its `fdatasync` runs after them, so it makes them stable.
//! Other requests may complete in any order, as virtio allows.

use std::collections::BTreeSet;
use std::sync::{mpsc, Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use vhost_backend::runtime::Request;

use crate::request::{
    read_header, Header, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use crate::{Core, Scratch};

/// How requests are executed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aio {
    /// On the queue's worker, one at a time: the least work per request, best on the page
    /// cache.
    Sync,
    /// On a pool of this many threads shared by all queues: many requests in flight, for
    /// disks (`O_DIRECT`), where io_uring is not available.
    Threads(u16),
    /// On one io_uring per queue (module `uring`): many requests in flight without a thread
    /// each, submitted in batches and reaped by the queue's worker.
    IoUring,
}

/// Whether io_uring works here ([`Aio::IoUring`]): `Err` says why not (an old kernel,
/// `kernel.io_uring_disabled`, a seccomp filter, ...).
pub fn io_uring_available() -> std::io::Result<()> {
    vhost_backend::runtime::uring::probe()
}

/// Writes in flight, so a flush can wait for those popped before it.
#[derive(Debug, Default)]
struct WriteBarrier {
    state: Mutex<Writes>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct Writes {
    next: u64,
    in_flight: BTreeSet<u64>,
}

impl WriteBarrier {
    fn begin(&self) -> u64 {
        let mut w = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let id = w.next;
        w.next += 1;
        w.in_flight.insert(id);
        id
    }

    fn end(&self, id: u64) {
        let mut w = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        w.in_flight.remove(&id);
        drop(w);
        self.done.notify_all();
    }

    /// Every write begun so far is before this horizon.
    fn horizon(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next
    }

    /// Waits until no write begun before `horizon` is in flight.
    fn wait_before(&self, horizon: u64) {
        let mut w = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        while w.in_flight.first().is_some_and(|&id| id < horizon) {
            w = self.done.wait(w).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

#[derive(Debug)]
enum Kind {
    /// Write `id` of the barrier.
    Write(u64),
    /// A flush after every write before this horizon.
    Flush(u64),
    Other,
}

/// What a request is to the barrier, before it is numbered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Write,
    Flush,
    Other,
}

/// Ends a write in the barrier when dropped: also when serving it panicked.
struct EndWrite<'a>(&'a WriteBarrier, Option<u64>);

impl Drop for EndWrite<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.1 {
            self.0.end(id);
        }
    }
}

struct Job {
    req: Request,
    /// The header as read to classify the request: served as read, not read again.
    header: Option<Header>,
    writethrough: bool,
    kind: Kind,
}

/// The pool of [`Aio::Threads`].
#[derive(Debug)]
pub(crate) struct Pool {
    /// Numbering a write or flush and queueing it happen under this lock, so the channel's
    /// order is the barrier's order: a flush never waits for a write queued behind it.
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    threads: Vec<JoinHandle<()>>,
    barrier: Arc<WriteBarrier>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("kind", &self.kind).finish()
    }
}

impl Pool {
    /// Starts `n` threads executing requests on `core`, each with scratch space from
    /// `scratch`.
    pub(crate) fn start(
        n: u16,
        core: Arc<Core>,
        scratch: impl Fn() -> Scratch,
    ) -> std::io::Result<Pool> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let barrier = Arc::new(WriteBarrier::default());
        let mut threads = Vec::with_capacity(usize::from(n));
        for i in 0..n {
            let (rx, core, barrier) = (Arc::clone(&rx), Arc::clone(&core), Arc::clone(&barrier));
            let mut scratch = scratch();
            let t = std::thread::Builder::new()
                .name(format!("vhost-blk-io-{i}"))
                .spawn(move || loop {
                    let job = rx.lock().unwrap_or_else(PoisonError::into_inner).recv();
                    let Ok(job) = job else {
                        return;
                    };
                    if let Kind::Flush(horizon) = job.kind {
                        barrier.wait_before(horizon);
                    }
                    let write = match job.kind {
                        Kind::Write(id) => Some(id),
                        _ => None,
                    };
                    let end = EndWrite(&barrier, write);
                    let (req, header, sync) = (&job.req, job.header, job.writethrough);
                    let len = core.caught(req, || core.serve(&mut scratch, req, header, sync));
                    // Completed before the barrier lets a later flush go: a flush's
                    // completion never precedes the writes before it.
                    job.req.complete(len);
                    drop(end);
                })?;
            threads.push(t);
        }
        Ok(Pool {
            tx: Mutex::new(Some(tx)),
            threads,
            barrier,
        })
    }

    /// Hands `req` to the pool; gives it back if the pool is gone.
    pub(crate) fn submit(&self, req: Request, writethrough: bool) -> Result<(), Request> {
        let header = read_header(&req).ok();
        self.queue(req, class_of(header), header, writethrough)
    }

    /// Numbers `req` as `class` in the barrier and queues it, under one lock (tests drive the
    /// two steps of [`submit`](Self::submit) apart with it and [`classify`]).
    #[cfg(test)]
    pub(crate) fn send(
        &self,
        req: Request,
        class: Class,
        writethrough: bool,
    ) -> Result<(), Request> {
        self.queue(req, class, None, writethrough)
    }

    /// Stops taking requests, as when every I/O thread is gone: `submit` hands them back.
    #[cfg(test)]
    pub(crate) fn close(&self) {
        self.tx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    fn queue(
        &self,
        req: Request,
        class: Class,
        header: Option<Header>,
        writethrough: bool,
    ) -> Result<(), Request> {
        let tx = self.tx.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(tx) = tx.as_ref() else {
            return Err(req);
        };
        let kind = match class {
            Class::Write => Kind::Write(self.barrier.begin()),
            Class::Flush => Kind::Flush(self.barrier.horizon()),
            Class::Other => Kind::Other,
        };
        tx.send(Job {
            req,
            header,
            writethrough,
            kind,
        })
        .map_err(|mpsc::SendError(job)| {
            if let Kind::Write(id) = job.kind {
                self.barrier.end(id);
            }
            job.req
        })
    }
}

/// What `req` is to the barrier (from its header; unreadable: neither write nor flush).
#[cfg(test)]
pub(crate) fn classify(req: &Request) -> Class {
    class_of(read_header(req).ok())
}

fn class_of(header: Option<Header>) -> Class {
    match header.map(|h| h.request_type) {
        Some(VIRTIO_BLK_T_OUT | VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES) => Class::Write,
        Some(VIRTIO_BLK_T_FLUSH) => Class::Flush,
        _ => Class::Other,
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Queued requests still run; then every thread sees the channel closed.
        drop(
            self.tx
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                log::error!("an I/O thread panicked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_flush_waits_for_the_writes_begun_before_it_and_only_those() {
        let b = Arc::new(WriteBarrier::default());
        let before = b.begin();
        let horizon = b.horizon();
        let after = b.begin();
        let (tx, rx) = mpsc::channel();
        let b2 = Arc::clone(&b);
        let t = std::thread::spawn(move || {
            b2.wait_before(horizon);
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(100)).is_err(),
            "the flush went ahead of a write begun before it"
        );
        b.end(before);
        rx.recv_timeout(Duration::from_secs(5))
            .expect("the flush waits for the earlier write only");
        b.end(after);
        t.join().unwrap();
    }
}
