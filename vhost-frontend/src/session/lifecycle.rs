//! Starting and stopping the device in the order QEMU 7.2 sends the messages.

use vhost_proto::{virtio, ProtocolFeatures};

use super::{borrow, status, Result, Sequence, Session, SessionError};

impl Session {
    /// Starts the device as QEMU 7.2 does when the driver sets DRIVER_OK, in the order of
    /// the session's [`Sequence`]:
    ///
    /// - [`Sequence::Generic`]: SET_VRING_CALL per queue, SET_FEATURES, (GET_STATUS and
    ///   SET_STATUS adding FEATURES_OK), the memory, per queue SET_VRING_NUM,
    ///   SET_VRING_BASE, SET_VRING_ADDR and SET_VRING_KICK, SET_VRING_ENABLE 1 per queue,
    ///   (GET_STATUS and SET_STATUS adding ACKNOWLEDGE, DRIVER and DRIVER_OK), then
    ///   SET_VRING_CALL per queue again;
    /// - [`Sequence::Blk`]: SET_FEATURES, (status FEATURES_OK), SET_VRING_CALL per queue,
    ///   SET_FEATURES again, (status FEATURES_OK), then as above up to the DRIVER_OK status,
    ///   without the second round of SET_VRING_CALL.
    ///
    /// The parts in parentheses need STATUS acked; SET_STATUS is only sent when GET_STATUS
    /// shows a bit missing. SET_VRING_ENABLE needs bit 30 acked. The memory is SET_MEM_TABLE
    /// at every start, or ADD_MEM_REG per region the first time only with
    /// CONFIGURE_MEM_SLOTS. Every queue starts at the avail index its driver is at (0 the
    /// first time). May be called again once the device was stopped.
    pub fn start(&mut self) -> Result<()> {
        let blk = self.sequence == Sequence::Blk;
        if blk {
            self.send_features()?;
        }
        // A back-end may have dropped the call fds when the rings last stopped
        // (libvhost-user closes them at GET_VRING_BASE); QEMU sends them again at each start.
        for i in 0..self.queues.len() {
            self.send_call(i)?;
        }
        self.send_features()?;
        self.send_memory()?;
        for i in 0..self.queues.len() {
            let base = self.queues[i].driver.vring_base();
            self.setup_queue(i, base)?;
        }
        for i in 0..self.queues.len() {
            self.enable(i, true)?;
        }
        self.set_driver_ok()?;
        if !blk {
            for i in 0..self.queues.len() {
                self.send_call(i)?;
            }
        }
        Ok(())
    }

    /// Stops the device as QEMU 7.2 does when the driver resets it: (SET_STATUS 0, with
    /// STATUS acked), SET_VRING_ENABLE 0 per queue (with bit 30 acked), GET_VRING_BASE per
    /// queue, and with [`Sequence::Generic`] SET_VRING_CALL per queue. Returns each queue's
    /// next avail index, as the back-end reports it.
    pub fn stop(&mut self) -> Result<Vec<u32>> {
        self.reset_status()?;
        for i in 0..self.queues.len() {
            self.enable(i, false)?;
        }
        let mut bases = Vec::with_capacity(self.queues.len());
        for i in 0..self.queues.len() {
            bases.push(self.frontend.get_vring_base(i as u32)?);
        }
        if self.sequence == Sequence::Generic {
            for i in 0..self.queues.len() {
                self.send_call(i)?;
            }
        }
        Ok(bases)
    }

    /// Stops queue `i` with the messages [`Session::stop`] sends for it: (SET_STATUS 0,
    /// with STATUS acked, when the device is still running: the first queue stopped stops
    /// the device), SET_VRING_ENABLE 0, GET_VRING_BASE, and with [`Sequence::Generic`]
    /// SET_VRING_CALL. Returns the back-end's next avail index. Completions the back-end
    /// finished while stopping are left in the used ring for [`Session::pop_used`].
    pub fn stop_queue(&mut self, i: usize) -> Result<u32> {
        self.check(i)?;
        self.reset_status()?;
        self.enable(i, false)?;
        let base = self.frontend.get_vring_base(i as u32)?;
        if self.sequence == Sequence::Generic {
            self.send_call(i)?;
        }
        Ok(base)
    }

    /// Restarts queue `i` at `base` (the rings are reset to it: nothing may be in flight;
    /// a split ring's index is 16 bits, a larger `base` is refused; a packed ring's base is
    /// the packed encoding of both positions): SET_VRING_CALL,
    /// SET_VRING_NUM, SET_VRING_BASE, SET_VRING_ADDR, SET_VRING_KICK, SET_VRING_ENABLE 1,
    /// (GET_STATUS and SET_STATUS adding ACKNOWLEDGE, DRIVER, FEATURES_OK and DRIVER_OK,
    /// with STATUS acked, when a stop reset the status), and with [`Sequence::Generic`] SET_VRING_CALL
    /// again.
    pub fn restart_queue(&mut self, i: usize, base: u32) -> Result<()> {
        self.check(i)?;
        if !self.queues[i].driver.is_packed() && base > u32::from(u16::MAX) {
            return Err(SessionError::Options(format!(
                "vring base {base:#x} does not fit a split ring"
            )));
        }
        self.send_call(i)?;
        self.setup_queue(i, base)?;
        self.enable(i, true)?;
        if !self.driver_ok {
            use status::*;
            self.add_status(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK)?;
            self.driver_ok = true;
        }
        if self.sequence == Sequence::Generic {
            self.send_call(i)?;
        }
        Ok(())
    }

    pub(super) fn check(&self, index: usize) -> Result<()> {
        if index < self.queues.len() {
            Ok(())
        } else {
            Err(SessionError::NoSuchQueue {
                index,
                queues: self.queues.len(),
            })
        }
    }

    fn with_status(&self) -> bool {
        self.frontend
            .acked_protocol()
            .contains(ProtocolFeatures::STATUS)
    }

    /// SET_FEATURES, then (STATUS) FEATURES_OK added to the device status.
    fn send_features(&mut self) -> Result<()> {
        self.frontend.set_features(self.features)?;
        self.add_status(status::FEATURES_OK)
    }

    /// (STATUS) ACKNOWLEDGE, DRIVER and DRIVER_OK added to the device status.
    fn set_driver_ok(&mut self) -> Result<()> {
        use status::*;
        self.add_status(ACKNOWLEDGE | DRIVER | DRIVER_OK)?;
        self.driver_ok = true;
        Ok(())
    }

    /// With STATUS acked: GET_STATUS, then SET_STATUS with `bits` added if any is missing.
    fn add_status(&mut self, bits: u64) -> Result<()> {
        if !self.with_status() {
            return Ok(());
        }
        let current = self.frontend.get_status()?;
        if current & bits != bits {
            self.frontend.set_status(current | bits)?;
        }
        Ok(())
    }

    /// With STATUS acked and the device running: SET_STATUS 0.
    fn reset_status(&mut self) -> Result<()> {
        if self.with_status() && self.driver_ok {
            self.frontend.set_status(0)?;
        }
        self.driver_ok = false;
        Ok(())
    }

    fn send_call(&mut self, i: usize) -> Result<()> {
        let call = borrow(&self.queues[i].call);
        Ok(self.frontend.set_vring_call(i as u32, Some(call))?)
    }

    fn enable(&mut self, i: usize, on: bool) -> Result<()> {
        if self.features & virtio::bit(virtio::PROTOCOL_FEATURES) != 0 {
            self.frontend.set_vring_enable(i as u32, on)?;
        }
        Ok(())
    }
}
