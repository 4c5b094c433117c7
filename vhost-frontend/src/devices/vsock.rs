//! virtio-vsock: the guest side of the three queues — rx buffers kept posted, tx packets
//! sent as Linux sends them (header and payload in separate descriptors), event buffers —
//! and the packet header. Connection state (credit, ports) is the caller's.

use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use zerocopy::{FromBytes, IntoBytes};

use super::{DeviceError, Result};
use crate::session::{Session, SessionError};
use crate::virtqueue::Buffer;

/// The rx queue (device → driver packets).
pub const RX: usize = 0;
/// The tx queue (driver → device packets).
pub const TX: usize = 1;
/// The event queue.
pub const EVENT: usize = 2;
pub use virtio_defs::vsock::{op, Header as VsockHeader, HEADER_LEN, HOST_CID};

/// Largest payload the driver sends in one packet.
pub const MAX_PAYLOAD: usize = virtio_defs::vsock::MAX_PAYLOAD as usize;

/// A packet the device put in an rx buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Its header.
    pub hdr: VsockHeader,
    /// Its payload (`hdr.len` bytes, cut to what the device wrote).
    pub data: Vec<u8>,
}

/// The guest side of a vsock device's queues. See the [module docs](self).
#[derive(Debug)]
pub struct VsockDriver {
    rx: Slots,
    rx_len: u32,
    tx: Slots,
    tx_free: Vec<usize>,
    event: Slots,
}

/// Guest buffers by head id.
#[derive(Debug)]
struct Slots {
    bufs: Vec<GuestAddress>,
    by_head: Vec<Option<usize>>,
}

impl Slots {
    fn new(s: &Session, n: usize, len: u64) -> Result<Self> {
        let bufs = (0..n)
            .map(|_| s.memory().alloc(len, 8))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(SessionError::from)?;
        Ok(Slots {
            bufs,
            by_head: vec![None; usize::from(u16::MAX) + 1],
        })
    }

    fn post(&mut self, s: &mut Session, queue: usize, slot: usize, len: u32) -> Result<()> {
        let head = s.add_chain(queue, &[(self.bufs[slot], len, true)])?;
        self.by_head[usize::from(head)] = Some(slot);
        Ok(())
    }

    fn take(&mut self, head: u16) -> Result<usize> {
        self.by_head[usize::from(head)]
            .take()
            .ok_or(DeviceError::UnknownCompletion { head })
    }
}

impl VsockDriver {
    /// Posts `rx_buffers` rx buffers of `rx_len` bytes (header included) and 4 event
    /// buffers, and sets up `tx_slots` tx buffers of a header and [`MAX_PAYLOAD`] bytes. The
    /// session has the three queues, started.
    pub fn new(s: &mut Session, rx_buffers: usize, rx_len: u32, tx_slots: usize) -> Result<Self> {
        let mut rx = Slots::new(s, rx_buffers, u64::from(rx_len))?;
        for i in 0..rx_buffers {
            rx.post(s, RX, i, rx_len)?;
        }
        s.publish(RX)?;
        let mut event = Slots::new(s, 4, 4)?;
        for i in 0..4 {
            event.post(s, EVENT, i, 4)?;
        }
        s.publish(EVENT)?;
        let tx = Slots::new(s, tx_slots, (HEADER_LEN + MAX_PAYLOAD) as u64)?;
        Ok(VsockDriver {
            rx,
            rx_len,
            tx,
            tx_free: (0..tx_slots).rev().collect(),
            event,
        })
    }

    /// Takes back tx buffers the device is done with.
    fn reclaim_tx(&mut self, s: &mut Session) -> Result<()> {
        while let Some(used) = s.pop_used(TX)? {
            if let Some(slot) = self.tx.by_head[usize::from(used.id)].take() {
                self.tx_free.push(slot);
            }
        }
        Ok(())
    }

    /// Sends one packet (header and payload in two descriptors), waiting up to `timeout`
    /// for a free tx buffer.
    pub fn send(
        &mut self,
        s: &mut Session,
        hdr: &VsockHeader,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<()> {
        if payload.len() > MAX_PAYLOAD {
            return Err(DeviceError::TooLong {
                len: payload.len(),
                max: MAX_PAYLOAD as u32,
            });
        }
        self.reclaim_tx(s)?;
        let deadline = Instant::now() + timeout;
        let slot = loop {
            if let Some(slot) = self.tx_free.pop() {
                break slot;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let used = s.wait_used(TX, left)?;
            if let Some(slot) = self.tx.by_head[usize::from(used.id)].take() {
                self.tx_free.push(slot);
            }
        };
        let base = self.tx.bufs[slot];
        let data = GuestAddress(base.0 + HEADER_LEN as u64);
        let mem = s.memory().mem();
        mem.write_slice(hdr.as_bytes(), base)?;
        mem.write_slice(payload, data)?;
        let mut chain: Vec<Buffer> = vec![(base, HEADER_LEN as u32, false)];
        if !payload.is_empty() {
            chain.push((data, payload.len() as u32, false));
        }
        let head = s.add_chain(TX, &chain)?;
        self.tx.by_head[usize::from(head)] = Some(slot);
        s.publish(TX)?;
        Ok(())
    }

    /// Sends a chain the caller built (hostile tests); its completion is taken back and
    /// ignored.
    pub fn send_raw(&mut self, s: &mut Session, bufs: &[Buffer]) -> Result<()> {
        self.reclaim_tx(s)?;
        s.add_chain(TX, bufs)?;
        s.publish(TX)?;
        Ok(())
    }

    /// The next packet the device sent, if one is there; its buffer is posted again.
    /// Buffers the device returned without a header are posted again and skipped.
    pub fn try_recv(&mut self, s: &mut Session) -> Result<Option<Packet>> {
        loop {
            let Some(used) = s.pop_used(RX)? else {
                return Ok(None);
            };
            if let Some(p) = self.take_rx(s, used.id, used.len)? {
                return Ok(Some(p));
            }
        }
    }

    /// Waits up to `timeout` for the next packet.
    pub fn recv(&mut self, s: &mut Session, timeout: Duration) -> Result<Packet> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(p) = self.try_recv(s)? {
                return Ok(p);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let used = s.wait_used(RX, left)?;
            if let Some(p) = self.take_rx(s, used.id, used.len)? {
                return Ok(p);
            }
        }
    }

    fn take_rx(&mut self, s: &mut Session, head: u16, len: u32) -> Result<Option<Packet>> {
        let slot = self.rx.take(head)?;
        let base = self.rx.bufs[slot];
        let mut packet = None;
        if len as usize >= HEADER_LEN && len <= self.rx_len {
            let mut raw = [0u8; HEADER_LEN];
            s.memory().mem().read_slice(&mut raw, base)?;
            let hdr = VsockHeader::read_from_bytes(&raw).unwrap_or_default();
            let n = (hdr.len.get() as usize).min(len as usize - HEADER_LEN);
            let mut data = vec![0u8; n];
            s.memory()
                .mem()
                .read_slice(&mut data, GuestAddress(base.0 + HEADER_LEN as u64))?;
            packet = Some(Packet { hdr, data });
        }
        self.rx.post(s, RX, slot, self.rx_len)?;
        s.publish(RX)?;
        Ok(packet)
    }

    /// The next event the device sent (its id), if one is there.
    pub fn try_event(&mut self, s: &mut Session) -> Result<Option<u32>> {
        match s.pop_used(EVENT)? {
            Some(used) => self.event_done(s, used.id).map(Some),
            None => Ok(None),
        }
    }

    /// Waits up to `timeout` for the next event.
    pub fn wait_event(&mut self, s: &mut Session, timeout: Duration) -> Result<u32> {
        if let Some(id) = self.try_event(s)? {
            return Ok(id);
        }
        let used = s.wait_used(EVENT, timeout)?;
        self.event_done(s, used.id)
    }

    fn event_done(&mut self, s: &mut Session, head: u16) -> Result<u32> {
        let slot = self.event.take(head)?;
        let id: u32 = s.memory().mem().read_obj(self.event.bufs[slot])?;
        self.event.post(s, EVENT, slot, 4)?;
        s.publish(EVENT)?;
        Ok(id)
    }
}
