//! Requests: a descriptor chain from the moment it is popped to the moment its used entry
//! is published.
//!
//! [`QueueContext::pop`] walks the next available chain (indirect tables included) into a
//! [`Request`]: its ring, its head, its buffers — device-readable ones first, then
//! device-writable ones, each checked against guest memory — and a reference to the guest
//! memory it was popped from, which keeps those mappings alive until the request is gone,
//! even if SET_MEM_TABLE or REM_MEM_REG replace the table meanwhile.
//!
//! The device completes a request with [`Request::complete`] and the number of bytes it
//! wrote, at once or later, from any thread; the runtime publishes the used entry. A request
//! dropped without being completed is completed with a used length of 0 and logged as a
//! device bug: the driver gets its buffers back and a stop of the ring does not wait for it
//! in vain.
//!
//! A device that serves a request on the spot, before `process_queue` returns, can take it
//! with [`QueueContext::serve_next`] instead: the request ([`RequestOf`]) then borrows the
//! ring and the memory map from the worker instead of holding references of its own, and its
//! completion goes straight into the ring's state, under the lock the worker already holds —
//! no reference count moves and no lock is taken per request.
//!
//! Guest I/O goes through the request: [`Request::read_readable`],
//! [`Request::write_writable`], [`Request::read_obj`] and, for files,
//! [`FileIo`](super::guest_io::FileIo). Writes are recorded once the data lands
//! ([`Request::mark_written`], the one call any other write path must make too) and marked
//! in the dirty log when the request completes, before its used entry is published, after
//! one fenced check for the whole request.

use std::cell::Cell;
use std::sync::Arc;

use vm_memory::{
    ByteValued, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, VolatileMemory,
};
use zerocopy::{FromBytes, IntoBytes};

use virtio_queue::desc::split::Descriptor;

use super::guest_io::GuestIoError;
use super::vring::{RingState, Vring};

/// Most buffers a request records. The rest of a longer chain is walked (its last
/// device-writable byte stays reachable through [`Request::write_last_byte`], so a status
/// can still be reported) and the request carries [`ChainFault::TooManyBuffers`].
pub const MAX_REQUEST_BUFFERS: usize = 2048;

/// One non-empty buffer of a chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Guest-physical address.
    pub addr: GuestAddress,
    /// Length in bytes (never 0).
    pub len: u32,
}

/// What is wrong with a chain the driver offered. The request is still handed to the device,
/// which answers it as its specification says (blk: an error status); buffers that are
/// outside guest memory make every access to them fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainFault {
    /// A buffer whose `addr + len` overflows.
    #[error("buffer at {addr:#x} len {len} overflows the address space")]
    AddressOverflow {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// A buffer that is not entirely inside guest memory. Reported only when nothing else is
    /// wrong with the chain; accessing the buffer fails.
    #[error("buffer at {addr:#x} len {len} is outside guest memory")]
    OutsideMemory {
        /// Guest address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// A device-readable buffer after a device-writable one (virtio 1.2, 2.7.4.2).
    #[error("device-readable buffer after a device-writable one")]
    ReadableAfterWritable,
    /// More than [`MAX_REQUEST_BUFFERS`] non-empty buffers.
    #[error("chain has more than {MAX_REQUEST_BUFFERS} buffers")]
    TooManyBuffers,
    /// An indirect table entry that points to another table (virtio 1.2, 2.7.5.3.1 and
    /// 2.8.19: the driver must not nest them). The entry is not used as a buffer.
    #[error("indirect table inside an indirect table")]
    NestedIndirect,
}

/// A request popped from a ring, as the device keeps it: it holds its ring and memory map
/// itself, so it may be completed later or on another thread. See the [module docs](self).
pub type Request = RequestOf<'static>;

/// A request popped from a ring, holding its ring and memory map for `'m`: `'static` for a
/// [`Request`] (references of its own), the worker's borrow for one served on the spot
/// ([`QueueContext::serve_next`]). Code that reads or writes a request's buffers takes a
/// `&RequestOf<'_>`, so it serves both.
///
/// A [`Request`] is `Send` (it may be completed on another thread) but not `Sync`: one
/// thread at a time reads and writes its buffers, because it records the bytes written
/// until it marks them in the dirty log at completion.
pub struct RequestOf<'m> {
    held: Held<'m>,
    generation: u64,
    head: u16,
    /// Readable buffers, then writable ones.
    bufs: Vec<Buffer>,
    readable: u32,
    /// The chain's last writable buffer when it lies past [`MAX_REQUEST_BUFFERS`].
    /// (Length 0: none; a recorded buffer is never empty. Kept unwrapped so that a request,
    /// which a pool hands back by value, stays small.)
    tail: Buffer,
    readable_len: u64,
    writable_len: u64,
    fault: Option<ChainFault>,
    done: bool,
    /// Writable bytes `[start, end)` written and not yet marked in the dirty log
    /// ([`mark_written`](Self::mark_written)), none when equal: marked with the status byte,
    /// after one fenced check, when the request completes. (A chain holds less than 4 GiB.)
    unmarked: Cell<(u32, u32)>,
    /// The status byte was written and is not yet marked ([`write_last_byte`](
    /// Self::write_last_byte)).
    status_unmarked: Cell<bool>,
}

/// What a request holds its ring and memory map by.
enum Held<'m> {
    /// References of its own.
    Own(Arc<Vring>, Arc<GuestMemoryMmap>),
    /// Borrows of the worker's, for a request served before the worker's borrow ends.
    Lent(&'m Vring, &'m GuestMemoryMmap),
}

impl std::fmt::Debug for RequestOf<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("queue", &self.ring().index)
            .field("head", &self.head)
            .field("readable", &self.readable())
            .field("writable", &self.writable())
            .field("fault", &self.fault)
            .finish()
    }
}

impl RequestOf<'_> {
    /// The ring the request came from.
    #[inline]
    fn ring(&self) -> &Vring {
        match &self.held {
            Held::Own(r, _) => r,
            Held::Lent(r, _) => r,
        }
    }

    /// The memory map the request was popped from.
    #[inline]
    fn mem(&self) -> &GuestMemoryMmap {
        match &self.held {
            Held::Own(_, m) => m,
            Held::Lent(_, m) => m,
        }
    }

    /// The queue the request came from.
    pub fn queue(&self) -> u16 {
        self.ring().index
    }

    /// The chain's head descriptor index.
    pub fn head(&self) -> u16 {
        self.head
    }

    /// The device-readable buffers, in chain order.
    pub fn readable(&self) -> &[Buffer] {
        &self.bufs[..self.readable as usize]
    }

    /// The device-writable buffers, in chain order (the first ones only, when the chain
    /// has more than [`MAX_REQUEST_BUFFERS`]).
    pub fn writable(&self) -> &[Buffer] {
        &self.bufs[self.readable as usize..]
    }

    /// The guest address of the chain's last device-writable byte (where virtio-blk and
    /// virtio-scsi put their status), also when the chain was too long to record whole.
    /// `None` without a writable byte.
    pub fn last_writable_byte(&self) -> Option<GuestAddress> {
        let tail = Some(self.tail).filter(|t| t.len != 0);
        let b = tail.or_else(|| self.writable().last().copied())?;
        b.addr.0.checked_add(u64::from(b.len) - 1).map(GuestAddress)
    }

    /// Writes `value` into the chain's [last writable byte](Self::last_writable_byte).
    pub fn write_last_byte(&self, value: u8) -> Result<(), GuestIoError> {
        self.check_current()?;
        let at = self
            .last_writable_byte()
            .ok_or(GuestIoError::Short { wanted: 1, got: 0 })?;
        // One region lookup and one store (`write_obj` goes through the generic copy).
        let outside = GuestIoError::OutsideMemory { addr: at.0, len: 1 };
        let slice = self.mem().get_slice(at, 1).map_err(|_| outside)?;
        slice
            .get_ref::<u8>(0)
            .map_err(|_| GuestIoError::OutsideMemory { addr: at.0, len: 1 })?
            .store(value);
        // Marked at completion, with the data, after one fenced check.
        self.status_unmarked.set(true);
        Ok(())
    }

    /// Fails once the ring the request came from has stopped or reset without it (a stop
    /// that gave up waiting): its buffers may belong to someone else by now.
    pub(crate) fn check_current(&self) -> Result<(), GuestIoError> {
        if self.generation == self.ring().generation() {
            Ok(())
        } else {
            Err(GuestIoError::Stale)
        }
    }

    /// Total device-readable bytes.
    pub fn readable_len(&self) -> u64 {
        self.readable_len
    }

    /// Total device-writable bytes.
    pub fn writable_len(&self) -> u64 {
        self.writable_len
    }

    /// The first thing found wrong with the chain, if any.
    pub fn fault(&self) -> Option<ChainFault> {
        self.fault
    }

    /// The guest memory the request was popped from (kept mapped while the request lives).
    pub fn memory(&self) -> &GuestMemoryMmap {
        self.mem()
    }

    /// Copies readable bytes `[skip, skip + out.len())` into `out`.
    pub fn read_readable(&self, skip: u64, out: &mut [u8]) -> Result<(), GuestIoError> {
        self.check_current()?;
        let mut done = 0usize;
        for (addr, n) in Pieces::new(self.readable(), skip, out.len() as u64) {
            let n = n as usize;
            self.mem()
                .read_slice(&mut out[done..done + n], addr)
                .map_err(|_| GuestIoError::OutsideMemory {
                    addr: addr.0,
                    len: n as u64,
                })?;
            done += n;
        }
        whole(out.len(), done)
    }

    /// Reads a `T` from the readable bytes at `skip` (a header, a descriptor of the
    /// device's protocol).
    pub fn read_obj<T: FromBytes + IntoBytes>(&self, skip: u64) -> Result<T, GuestIoError> {
        let mut v = T::new_zeroed();
        self.read_readable(skip, v.as_mut_bytes())?;
        Ok(v)
    }

    /// Reads `N` readable bytes at `skip` (a device's header): one region lookup and one
    /// load when they lie in one buffer within one memory region, as the driver nearly
    /// always lays a header out; otherwise (across buffers, or a buffer crossing into the
    /// next region) as [`read_readable`](Self::read_readable).
    pub fn read_array<const N: usize>(&self, skip: u64) -> Result<[u8; N], GuestIoError>
    where
        [u8; N]: ByteValued,
    {
        self.check_current()?;
        let mut pieces = Pieces::new(self.readable(), skip, N as u64);
        if let Some((addr, n)) = pieces.next() {
            if n == N as u64 {
                if let Ok(slice) = self.mem().get_slice(addr, N) {
                    if let Ok(value) = slice.get_ref::<[u8; N]>(0) {
                        return Ok(value.load());
                    }
                }
            }
        }
        let mut out = [0u8; N];
        self.read_readable(skip, &mut out)?;
        Ok(out)
    }

    /// Copies `data` into the writable bytes from `skip` on, marking the pages dirty.
    pub fn write_writable(&self, skip: u64, data: &[u8]) -> Result<(), GuestIoError> {
        self.check_current()?;
        let mut done = 0usize;
        let mut failed = None;
        for (addr, n) in Pieces::new(self.writable(), skip, data.len() as u64) {
            let n = n as usize;
            if self.mem().write_slice(&data[done..done + n], addr).is_err() {
                failed = Some(GuestIoError::OutsideMemory {
                    addr: addr.0,
                    len: n as u64,
                });
                break;
            }
            done += n;
        }
        self.mark_written(skip, done as u64);
        if let Some(e) = failed {
            return Err(e);
        }
        whole(data.len(), done)
    }

    /// Records that writable bytes `[skip, skip + len)` of the request were written: their
    /// guest pages are marked in the dirty log while the front-end logs writes (migration).
    /// The marks are made when the request completes, for every write it recorded at once,
    /// after one fenced check (a fence and one relaxed load, and nothing else while logging
    /// is off): a read and its status byte cost one fence, not two.
    ///
    /// This is the one call for "these guest bytes were written". [`write_writable`](
    /// Self::write_writable), [`write_last_byte`](Self::write_last_byte) and
    /// [`FileIo::read_to_writable`](super::FileIo::read_to_writable) make it themselves; any
    /// other path that puts data into a request's buffers (an asynchronous engine's
    /// completion, a device writing through [`memory`](Self::memory)) must make it after
    /// the data has landed and before [`complete`](Self::complete), so the front-end never
    /// sees the used entry without the page marked. Marking more than was written is
    /// harmless (the page is sent again); marking less loses data on migration.
    pub fn mark_written(&self, skip: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (Ok(start), Ok(end)) = (u32::try_from(skip), u32::try_from(skip.saturating_add(len)))
        else {
            // Past 4 GiB of writable bytes (more than a chain may hold): marked now.
            let log = &self.ring().dirty;
            if log.active_after_writes() {
                log.mark_all(Pieces::new(self.writable(), skip, len).map(|(addr, n)| (addr.0, n)));
            }
            return;
        };
        // One range covering every write: marking the bytes between is harmless.
        let (s, e) = self.unmarked.get();
        let range = if s == e {
            (start, end)
        } else {
            (s.min(start), e.max(end))
        };
        self.unmarked.set(range);
    }

    /// Marks what [`mark_written`](Self::mark_written) and [`write_last_byte`](
    /// Self::write_last_byte) recorded, after the fenced check: the writes made before
    /// cannot be reordered after it. Made before the request's used entry can be published.
    fn mark_recorded(&self) {
        let (start, end) = self.unmarked.take();
        let status = self.status_unmarked.replace(false);
        if start == end && !status {
            return;
        }
        let log = &self.ring().dirty;
        if !log.active_after_writes() {
            return;
        }
        let data = Pieces::new(
            self.writable(),
            u64::from(start),
            u64::from(end.saturating_sub(start)),
        )
        .map(|(addr, n)| (addr.0, n));
        let status = status
            .then(|| self.last_writable_byte())
            .flatten()
            .map(|at| (at.0, 1));
        log.mark_all(data.chain(status));
    }

    /// Byte ranges of the writable buffers `[skip, skip + len)`.
    pub(crate) fn writable_pieces(
        &self,
        skip: u64,
        len: u64,
    ) -> impl Iterator<Item = (GuestAddress, u64)> + '_ {
        Pieces::new(self.writable(), skip, len)
    }

    /// Byte ranges of the readable buffers `[skip, skip + len)`.
    pub(crate) fn readable_pieces(
        &self,
        skip: u64,
        len: u64,
    ) -> impl Iterator<Item = (GuestAddress, u64)> + '_ {
        Pieces::new(self.readable(), skip, len)
    }
}

/// `Ok` when `done` bytes of the `wanted` were copied, else the short copy.
fn whole(wanted: usize, done: usize) -> Result<(), GuestIoError> {
    if done == wanted {
        Ok(())
    } else {
        Err(GuestIoError::Short {
            wanted: wanted as u64,
            got: done as u64,
        })
    }
}

impl Request {
    /// Completes the request: `used_len` bytes were written into its writable buffers. May be
    /// called from any thread; the used entry is published by the ring's owner.
    pub fn complete(mut self, used_len: u32) {
        self.mark_recorded();
        self.done = true;
        let bufs = std::mem::take(&mut self.bufs);
        self.ring()
            .complete(self.generation, self.head, used_len, bufs);
    }
}

impl Drop for RequestOf<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.mark_recorded();
            self.ring().log.warn(format_args!(
                "queue {}: request {} dropped without completion (a device bug); returned \
                 with length 0",
                self.ring().index,
                self.head
            ));
            let bufs = std::mem::take(&mut self.bufs);
            self.ring().complete(self.generation, self.head, 0, bufs);
        }
    }
}

/// The guest ranges covering bytes `[skip, skip + len)` of a list of buffers (fewer bytes
/// when the buffers end first).
struct Pieces<'a> {
    bufs: std::slice::Iter<'a, Buffer>,
    skip: u64,
    left: u64,
}

impl<'a> Pieces<'a> {
    fn new(bufs: &'a [Buffer], skip: u64, len: u64) -> Self {
        Pieces {
            bufs: bufs.iter(),
            skip,
            left: len,
        }
    }
}

impl Iterator for Pieces<'_> {
    type Item = (GuestAddress, u64);

    fn next(&mut self) -> Option<Self::Item> {
        while self.left > 0 {
            let b = self.bufs.next()?;
            let len = u64::from(b.len);
            if self.skip >= len {
                self.skip -= len;
                continue;
            }
            // A buffer whose end overflows the address space yields nothing from where it
            // would wrap on: the caller sees fewer bytes than it asked for.
            let Some(addr) = b.addr.0.checked_add(self.skip).map(GuestAddress) else {
                self.left = 0;
                return None;
            };
            let n = (len - self.skip).min(self.left);
            self.skip = 0;
            self.left -= n;
            return Some((addr, n));
        }
        None
    }
}

/// One queue while its owner runs the device on it: where requests are popped from.
///
/// A device gets work from a ring in two ways: [`pop`](Self::pop) hands out a [`Request`]
/// it completes when it likes, from any thread; [`serve_next`](Self::serve_next) has a
/// closure serve the next chain on the spot. The runtime publishes completions and sends
/// the used-buffer notification (at most one per batch, EVENT_IDX honoured) after
/// [`VirtioDevice::process_queue`](super::VirtioDevice::process_queue) returns, and later
/// for requests completed from elsewhere.
pub struct QueueContext<'a> {
    pub(crate) ring: &'a Arc<Vring>,
    pub(crate) state: &'a mut RingState,
    pub(crate) mem: &'a Arc<GuestMemoryMmap>,
    /// Chains taken in this round of the drain.
    pub(crate) taken: u32,
}

impl<'a> QueueContext<'a> {
    /// The queue index.
    pub fn index(&self) -> u16 {
        self.ring.index
    }

    /// Requests popped from this ring and not yet returned to the used ring.
    pub fn outstanding(&self) -> u16 {
        self.state.outstanding()
    }

    /// The ring size the driver chose.
    pub fn size(&self) -> u16 {
        self.state.size()
    }

    /// The next available chain as a [`Request`], or `None` when the ring is empty, the ring
    /// is being stopped (only resubmitted requests, below, are handed out then), or a ring's
    /// worth of chains was taken since the runtime last called the device (it calls again for
    /// the rest: a driver that keeps the ring full, or a ring laid over its own used ring,
    /// cannot keep the device in one call for ever).
    ///
    /// A chain whose head is out of range, or already outstanding (a driver offering it
    /// twice), is skipped with a warning and never handed out.
    ///
    /// After a back-end restart with inflight tracking, the requests the previous back-end
    /// left in flight come first, rebuilt from the descriptor table; the device cannot tell
    /// them from the others.
    pub fn pop(&mut self) -> Option<Request> {
        let (ring, mem) = (self.ring, self.mem);
        self.take_next(|| Held::Own(Arc::clone(ring), Arc::clone(mem)))
    }

    /// Takes the next chain as [`pop`](Self::pop) does and has `serve` serve it on the spot:
    /// `serve` gets the request and returns its used length (the bytes it wrote into the
    /// writable buffers), and the request is completed with it. `false` (and `serve` is not
    /// called) when `pop` would give `None`.
    ///
    /// For a device that serves requests synchronously, this is `pop` followed by
    /// [`Request::complete`] without their cost: the request borrows the ring and the
    /// memory map from this context instead of holding references of its own, and its
    /// completion is recorded under the ring lock the worker holds, to be published with the
    /// batch when the device returns, instead of going through the queue other threads
    /// complete into. If `serve` panics, the request is completed with length 0 as a dropped
    /// request is.
    pub fn serve_next(&mut self, serve: impl FnOnce(&RequestOf<'_>) -> u32) -> bool {
        let (ring, mem): (&'a Vring, &'a GuestMemoryMmap) = (self.ring, self.mem);
        let Some(mut req) = self.take_next(|| Held::Lent(ring, mem)) else {
            return false;
        };
        let len = serve(&req);
        req.mark_recorded();
        req.done = true;
        let bufs = std::mem::take(&mut req.bufs);
        self.state.complete_here(req.head, len, bufs);
        true
    }

    /// The next chain as a request holding its ring and memory map as `hold` gives them
    /// (called once a chain is taken).
    fn take_next<'m>(&mut self, hold: impl FnOnce() -> Held<'m>) -> Option<RequestOf<'m>> {
        let size = u32::from(self.state.size());
        // The map outlives this context: copying the reference out leaves `self` free for
        // the walk, with no reference count moved per chain.
        let mem: &GuestMemoryMmap = self.mem;
        while self.taken < size {
            // Inflight tracking: resubmitted heads before new available entries, also while
            // a stop waits (it waits for them).
            if let Some((head, mut chain)) = self.state.next_resubmit(mem) {
                self.taken += 1;
                if !self.state.take_head(head) {
                    self.state.recycle_chain(chain);
                    continue;
                }
                let req = self.request(hold, head, &mut chain);
                self.state.recycle_chain(chain);
                return Some(req);
            }
            if self.ring.is_stopping() {
                return None;
            }
            let (head, mut chain) = self.state.pop_chain(mem)?;
            self.taken += 1;
            if !self.state.take_head(head) {
                self.state.recycle_chain(chain);
                self.ring.log.warn(format_args!(
                    "queue {}: the driver offered head {head}, which is out of range or \
                     already outstanding; skipped",
                    self.ring.index
                ));
                continue;
            }
            self.state.mark_inflight(head);
            let req = self.request(hold, head, &mut chain);
            self.state.recycle_chain(chain);
            return Some(req);
        }
        None
    }

    /// The request for the chain of `head`, already taken.
    fn request<'m>(
        &mut self,
        hold: impl FnOnce() -> Held<'m>,
        head: u16,
        chain: impl IntoIterator<Item = Descriptor>,
    ) -> RequestOf<'m> {
        let mut req = RequestOf {
            held: hold(),
            generation: self.ring.generation(),
            head,
            bufs: self.state.buffer_list(),
            readable: 0,
            tail: Buffer {
                addr: GuestAddress(0),
                len: 0,
            },
            readable_len: 0,
            writable_len: 0,
            fault: None,
            done: false,
            unmarked: Cell::new((0, 0)),
            status_unmarked: Cell::new(false),
        };
        walk(&mut req, self.mem, chain);
        req
    }
}

/// Records the buffers of `chain` in `req`, checked against `mem` (the map `req` holds).
fn walk(
    req: &mut RequestOf<'_>,
    mem: &GuestMemoryMmap,
    chain: impl IntoIterator<Item = Descriptor>,
) {
    let mut fault = None;
    let mut saw_writable = false;
    let mut last_writable_dropped = None;
    let mut count = 0usize;
    // Buffers of one request nearly always lie in one region: try it first.
    let mut region: Option<&GuestRegionMmap> = None;
    for desc in chain {
        if desc.refers_to_indirect_table() {
            // A table inside a table (a packed ring's expanded table, a split chain's).
            note(&mut fault, ChainFault::NestedIndirect);
            continue;
        }
        let len = desc.len();
        if len == 0 {
            continue;
        }
        let addr = desc.addr();
        let buf = Buffer { addr, len };
        if addr.0.checked_add(u64::from(len)).is_none() {
            note(
                &mut fault,
                ChainFault::AddressOverflow { addr: addr.0, len },
            );
        } else if !in_region(region, addr, len) {
            let found = mem.find_region(addr);
            if in_region(found, addr, len) {
                region = found;
            } else if !mem.check_range(addr, len as usize) {
                note(&mut fault, ChainFault::OutsideMemory { addr: addr.0, len });
            }
        }
        let writable = desc.is_write_only();
        count += 1;
        if count > MAX_REQUEST_BUFFERS {
            note(&mut fault, ChainFault::TooManyBuffers);
            if writable {
                last_writable_dropped = Some(buf);
            }
            continue;
        }
        if writable {
            saw_writable = true;
            req.writable_len += u64::from(len);
            req.bufs.push(buf);
        } else {
            if saw_writable {
                note(&mut fault, ChainFault::ReadableAfterWritable);
            }
            // Readable buffers stay ahead of the writable ones, in chain order.
            req.bufs.insert(req.readable as usize, buf);
            req.readable += 1;
            req.readable_len += u64::from(len);
        }
    }
    if let Some(t) = last_writable_dropped {
        req.tail = t;
    }
    req.fault = fault;
}

/// Whether `[addr, addr + len)` lies inside `region` (`addr + len` does not overflow).
fn in_region(region: Option<&GuestRegionMmap>, addr: GuestAddress, len: u32) -> bool {
    region.is_some_and(|r| {
        let start = r.start_addr().0;
        addr.0 >= start && addr.0 - start + u64::from(len) <= r.len()
    })
}

/// Records `new` unless an earlier fault is recorded; a fault in the chain's shape replaces
/// a buffer found outside guest memory (which its access reports anyway).
fn note(fault: &mut Option<ChainFault>, new: ChainFault) {
    let replace = match fault {
        None => true,
        Some(ChainFault::OutsideMemory { .. }) => !matches!(new, ChainFault::OutsideMemory { .. }),
        Some(_) => false,
    };
    if replace {
        *fault = Some(new);
    }
}
