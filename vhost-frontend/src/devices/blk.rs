//! virtio-blk requests: a 16-byte header {type, reserved, sector} (device-readable), the data
//! buffers, and one status byte (device-writable).
//!
//! [`BlkRequests`] owns `depth` request slots in guest memory (header, data buffer, status
//! byte each), so a benchmark can keep up to `depth` requests in flight without allocating:
//! [`submit`](BlkRequests::submit) a [`BlkRequest`] then [`complete`](BlkRequests::complete).
//! The synchronous helpers ([`read`](BlkRequests::read), [`write`](BlkRequests::write), ...)
//! run one request at queue depth 1 and turn a non-OK status into [`DeviceError::Status`].

use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};
use zerocopy::IntoBytes;

use super::{DeviceError, Result};
use crate::session::{Session, SessionError};
use crate::virtqueue::Buffer;

pub use virtio_defs::blk::{
    RangeSegment, RequestHeader, ID_BYTES, NUM_QUEUES_OFFSET, SECTOR_SIZE,
    VIRTIO_BLK_S_IOERR as S_IOERR, VIRTIO_BLK_S_OK as S_OK, VIRTIO_BLK_S_UNSUPP as S_UNSUPP,
    VIRTIO_BLK_T_DISCARD as T_DISCARD, VIRTIO_BLK_T_FLUSH as T_FLUSH,
    VIRTIO_BLK_T_GET_ID as T_GET_ID, VIRTIO_BLK_T_IN as T_IN, VIRTIO_BLK_T_OUT as T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES as T_WRITE_ZEROES,
};

/// Status byte value before the device wrote it.
pub const S_UNWRITTEN: u8 = 0xff;

/// The fields of the virtio-blk configuration space the helpers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkConfig {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Largest segment size (VIRTIO_BLK_F_SIZE_MAX).
    pub size_max: u32,
    /// Most segments per request (VIRTIO_BLK_F_SEG_MAX).
    pub seg_max: u32,
    /// Logical block size (VIRTIO_BLK_F_BLK_SIZE).
    pub blk_size: u32,
    /// Number of queues (VIRTIO_BLK_F_MQ), when the bytes reach that far.
    pub num_queues: Option<u16>,
}

impl BlkConfig {
    /// Reads the fields from configuration bytes starting at offset 0; `None` when fewer than
    /// 24 bytes came.
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let u32_at = |o: usize| Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?));
        let capacity = u64::from_le_bytes(bytes.get(0..8)?.try_into().ok()?);
        let num_queues = bytes
            .get(NUM_QUEUES_OFFSET..NUM_QUEUES_OFFSET + 2)
            .and_then(|b| b.try_into().ok())
            .map(u16::from_le_bytes);
        Some(BlkConfig {
            capacity,
            size_max: u32_at(8)?,
            seg_max: u32_at(12)?,
            blk_size: u32_at(20)?,
            num_queues,
        })
    }
}

/// A finished request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// The slot the request used (its data buffer holds what the device wrote).
    pub slot: usize,
    /// The status byte.
    pub status: u8,
    /// Bytes the device reported writing (data plus status).
    pub len: u32,
}

/// What one request asks for: its type (`T_IN`, `T_OUT`, ...), the sector in its header
/// and how many data bytes its chain carries (0: no data descriptor). The slot methods
/// ([`add`](BlkRequests::add), [`submit`](BlkRequests::submit),
/// [`submit_prepared`](BlkRequests::submit_prepared)) take one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlkRequest {
    /// Request type (`T_IN`, `T_OUT`, `T_FLUSH`, ...).
    pub kind: u32,
    /// First sector (512 bytes) the request addresses.
    pub sector: u64,
    /// Data bytes in the chain; 0 leaves the data descriptor out.
    pub len: u32,
}

impl BlkRequest {
    /// A request of type `kind` at `sector` with `len` data bytes.
    pub const fn new(kind: u32, sector: u64, len: u32) -> Self {
        BlkRequest { kind, sector, len }
    }

    /// An IN (read) of `len` bytes starting at `sector`.
    pub const fn read(sector: u64, len: u32) -> Self {
        Self::new(T_IN, sector, len)
    }

    /// An OUT (write) of `len` bytes starting at `sector`.
    pub const fn write(sector: u64, len: u32) -> Self {
        Self::new(T_OUT, sector, len)
    }
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    header: GuestAddress,
    data: GuestAddress,
    status: GuestAddress,
    kind: u32,
}

/// Request slots on one queue. See the [module docs](self).
#[derive(Debug)]
pub struct BlkRequests {
    queue: usize,
    max_data: u32,
    slots: Vec<Slot>,
    free: Vec<usize>,
    by_head: Vec<Option<usize>>,
}

fn mem_err(e: crate::guest_memory::Error) -> DeviceError {
    DeviceError::Session(SessionError::Memory(e))
}

impl BlkRequests {
    /// Allocates `depth` slots with `max_data`-byte data buffers (4 KiB aligned) in the
    /// session's guest memory, for queue `queue`.
    pub fn new(session: &Session, queue: usize, depth: usize, max_data: u32) -> Result<Self> {
        let qsize = session
            .driver(queue)
            .ok_or(SessionError::NoSuchQueue {
                index: queue,
                queues: session.num_queues(),
            })?
            .size();
        let mem = session.memory();
        let mut slots = Vec::with_capacity(depth);
        for _ in 0..depth {
            slots.push(Slot {
                header: mem.alloc(16, 16).map_err(mem_err)?,
                data: mem
                    .alloc(u64::from(max_data.max(1)), 4096)
                    .map_err(mem_err)?,
                status: mem.alloc(1, 1).map_err(mem_err)?,
                kind: T_IN,
            });
        }
        Ok(BlkRequests {
            queue,
            max_data,
            slots,
            free: (0..depth).rev().collect(),
            by_head: vec![None; usize::from(qsize)],
        })
    }

    /// The queue these slots submit to.
    pub fn queue(&self) -> usize {
        self.queue
    }

    /// Guest-physical address of a slot's data buffer.
    pub fn data_addr(&self, slot: usize) -> Option<GuestAddress> {
        self.slots.get(slot).map(|s| s.data)
    }

    /// Copies `bytes` into a slot's data buffer (before submitting a write).
    pub fn write_data(&self, session: &Session, slot: usize, bytes: &[u8]) -> Result<()> {
        let s = self.slot(slot, bytes.len())?;
        Ok(session.memory().mem().write_slice(bytes, s.data)?)
    }

    /// Copies a slot's data buffer into `out` (after a read completed).
    pub fn read_data(&self, session: &Session, slot: usize, out: &mut [u8]) -> Result<()> {
        let s = self.slot(slot, out.len())?;
        Ok(session.memory().mem().read_slice(out, s.data)?)
    }

    fn slot(&self, slot: usize, len: usize) -> Result<Slot> {
        if len > self.max_data as usize {
            return Err(DeviceError::TooLong {
                len,
                max: self.max_data,
            });
        }
        self.slots
            .get(slot)
            .copied()
            .ok_or(DeviceError::NoFreeSlot {
                depth: self.slots.len(),
            })
    }

    /// Takes a free slot, writes `req`'s header, marks the status unwritten and adds the
    /// chain (header, `req.len` data bytes unless 0, status) to the queue without publishing
    /// it. The data buffer is device-writable for IN and GET_ID, device-readable otherwise.
    /// Fill it first with [`write_data`](Self::write_data) for OUT, DISCARD, WRITE_ZEROES:
    /// use [`submit_prepared`](Self::submit_prepared) for that.
    pub fn add(&mut self, session: &mut Session, req: BlkRequest) -> Result<usize> {
        let slot = *self.free.last().ok_or(DeviceError::NoFreeSlot {
            depth: self.slots.len(),
        })?;
        self.add_in(session, slot, req)?;
        self.free.pop();
        Ok(slot)
    }

    /// Like [`add`](Self::add) for a slot chosen by the caller (whose data buffer was
    /// already filled), then publishes and kicks if needed.
    pub fn submit_prepared(
        &mut self,
        session: &mut Session,
        slot: usize,
        req: BlkRequest,
    ) -> Result<()> {
        let pos = self
            .free
            .iter()
            .position(|&s| s == slot)
            .ok_or(DeviceError::NoFreeSlot {
                depth: self.slots.len(),
            })?;
        self.add_in(session, slot, req)?;
        self.free.swap_remove(pos);
        session.publish(self.queue)?;
        Ok(())
    }

    /// [`add`](Self::add), then publish and kick if needed.
    pub fn submit(&mut self, session: &mut Session, req: BlkRequest) -> Result<usize> {
        let slot = self.add(session, req)?;
        session.publish(self.queue)?;
        Ok(slot)
    }

    /// A free slot, for filling its data buffer before [`submit_prepared`](Self::submit_prepared).
    pub fn free_slot(&self) -> Option<usize> {
        self.free.last().copied()
    }

    fn add_in(&mut self, session: &mut Session, slot: usize, req: BlkRequest) -> Result<()> {
        let BlkRequest { kind, sector, len } = req;
        let s = self.slot(slot, len as usize)?;
        let header = RequestHeader {
            request_type: kind.into(),
            reserved: 0.into(),
            sector: sector.into(),
        };
        let mem = session.memory().mem();
        mem.write_slice(header.as_bytes(), s.header)?;
        mem.write_obj(S_UNWRITTEN, s.status)?;
        let data_writable = matches!(kind, T_IN | T_GET_ID);
        let chain: [Buffer; 3] = [
            (s.header, 16, false),
            (s.data, len, data_writable),
            (s.status, 1, true),
        ];
        let bufs: &[Buffer] = if len == 0 {
            &[chain[0], chain[2]]
        } else {
            &chain
        };
        let head = session.add_chain(self.queue, bufs)?;
        self.slots[slot].kind = kind;
        match self.by_head.get_mut(usize::from(head)) {
            Some(entry) => *entry = Some(slot),
            None => return Err(DeviceError::UnknownCompletion { head }),
        }
        Ok(())
    }

    /// Waits up to `timeout` for the next completion on the queue and frees its slot.
    pub fn complete(&mut self, session: &mut Session, timeout: Duration) -> Result<Completion> {
        let used = session.wait_used(self.queue, timeout)?;
        let slot = self
            .by_head
            .get_mut(usize::from(used.id))
            .and_then(Option::take)
            .ok_or(DeviceError::UnknownCompletion { head: used.id })?;
        let status: u8 = session.memory().mem().read_obj(self.slots[slot].status)?;
        self.free.push(slot);
        Ok(Completion {
            slot,
            status,
            len: used.len,
        })
    }

    fn run(
        &mut self,
        session: &mut Session,
        slot: usize,
        req: BlkRequest,
        timeout: Duration,
    ) -> Result<Completion> {
        self.submit_prepared(session, slot, req)?;
        let c = self.complete(session, timeout)?;
        if c.status != S_OK {
            return Err(DeviceError::Status {
                kind: self.slots[c.slot].kind,
                status: c.status,
            });
        }
        Ok(c)
    }

    fn any_free(&self) -> Result<usize> {
        self.free_slot().ok_or(DeviceError::NoFreeSlot {
            depth: self.slots.len(),
        })
    }

    /// Reads `out.len()` bytes (a multiple of 512) starting at `sector`.
    pub fn read(
        &mut self,
        session: &mut Session,
        sector: u64,
        out: &mut [u8],
        timeout: Duration,
    ) -> Result<()> {
        let slot = self.any_free()?;
        let len = self.len_of(out.len())?;
        let c = self.run(session, slot, BlkRequest::read(sector, len), timeout)?;
        self.read_data(session, c.slot, out)
    }

    /// Writes `data` (a multiple of 512 bytes) starting at `sector`.
    pub fn write(
        &mut self,
        session: &mut Session,
        sector: u64,
        data: &[u8],
        timeout: Duration,
    ) -> Result<()> {
        let slot = self.any_free()?;
        let len = self.len_of(data.len())?;
        self.write_data(session, slot, data)?;
        self.run(session, slot, BlkRequest::write(sector, len), timeout)
            .map(|_| ())
    }

    /// Flushes the device's write cache.
    pub fn flush(&mut self, session: &mut Session, timeout: Duration) -> Result<()> {
        let slot = self.any_free()?;
        self.run(session, slot, BlkRequest::new(T_FLUSH, 0, 0), timeout)
            .map(|_| ())
    }

    /// Reads the device id (up to 20 bytes, NUL-padded).
    pub fn get_id(&mut self, session: &mut Session, timeout: Duration) -> Result<[u8; ID_BYTES]> {
        let slot = self.any_free()?;
        let len = self.len_of(ID_BYTES)?;
        let c = self.run(session, slot, BlkRequest::new(T_GET_ID, 0, len), timeout)?;
        let mut id = [0u8; ID_BYTES];
        self.read_data(session, c.slot, &mut id)?;
        Ok(id)
    }

    /// DISCARD (`zeroes` false) or WRITE_ZEROES (`zeroes` true) of one range.
    pub fn discard(
        &mut self,
        session: &mut Session,
        sector: u64,
        num_sectors: u32,
        zeroes: bool,
        timeout: Duration,
    ) -> Result<()> {
        let slot = self.any_free()?;
        let range = RangeSegment {
            sector: sector.into(),
            num_sectors: num_sectors.into(),
            flags: 0.into(),
        };
        self.write_data(session, slot, range.as_bytes())?;
        let kind = if zeroes { T_WRITE_ZEROES } else { T_DISCARD };
        self.run(session, slot, BlkRequest::new(kind, 0, 16), timeout)
            .map(|_| ())
    }

    fn len_of(&self, len: usize) -> Result<u32> {
        u32::try_from(len)
            .ok()
            .filter(|&l| l <= self.max_data)
            .ok_or(DeviceError::TooLong {
                len,
                max: self.max_data,
            })
    }
}
