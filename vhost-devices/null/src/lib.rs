//! An example device: a null virtio-blk disk. Reads return zeros, writes and flushes
//! succeed and are thrown away, like Linux's `null_blk`. Useful to measure the vhost-user
//! path without storage behind it, and small enough to read in one go as a template for a
//! new device.
//!
//! The device implements [`VirtioDevice`]: what the guest sees (type, queues, features,
//! configuration space) and [`process_queue`](VirtioDevice::process_queue), which pops each
//! request, does its I/O through the [`Request`](vhost_backend::runtime::Request) and
//! completes it. The runtime does everything else (memory, rings, workers, notifications).
#![warn(missing_docs)]

use vhost_backend::runtime::{
    read_config_bytes, DeviceError, Processed, QueueContext, VirtioDevice,
};

/// The virtio device id of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;
/// Size of `struct virtio_blk_config` (virtio 1.2, 5.2.4), which QEMU reads whole.
pub const CONFIG_SIZE: usize = 60;

// Request types and statuses (virtio 1.2, 5.2.6).
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
/// Status: success.
pub const S_OK: u8 = 0;
/// Status: I/O error (bad chain, range past the end of the disk).
pub const S_IOERR: u8 = 1;
/// Status: request type not supported.
pub const S_UNSUPP: u8 = 2;
/// Most data bytes one request may carry (as vhost-user-blk: 32 MiB).
pub const MAX_DATA: u64 = 32 << 20;

/// A disk of `sectors` 512-byte sectors that reads as zeros and ignores writes.
#[derive(Debug)]
pub struct NullBlk {
    sectors: u64,
}

impl NullBlk {
    /// A disk of `bytes` bytes (rounded down to whole sectors).
    pub fn new(bytes: u64) -> Self {
        NullBlk {
            sectors: bytes / 512,
        }
    }

    /// Serves one request: `Ok(written)` bytes of data before the status byte, or the
    /// error status.
    fn serve(&self, req: &vhost_backend::runtime::Request) -> Result<u32, u8> {
        // The driver-written header: type, reserved, sector (little-endian).
        let mut hdr = [0u8; 16];
        req.read_readable(0, &mut hdr).map_err(|_| S_IOERR)?;
        let kind = u32::from_le_bytes(hdr[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap());
        // The last writable byte is the status; the data comes before it.
        let data = match kind {
            T_IN => req.writable_len() - 1,
            T_OUT => req.readable_len() - 16,
            _ => 0,
        };
        let in_range = sector
            .checked_add(data.div_ceil(512))
            .is_some_and(|end| end <= self.sectors);
        match kind {
            // At most MAX_DATA bytes a request, checked before any byte is written.
            T_IN | T_OUT if !in_range || data > MAX_DATA => Err(S_IOERR),
            T_IN => {
                let zeros = [0u8; 4096];
                let mut done = 0;
                while done < data {
                    let n = (data - done).min(zeros.len() as u64);
                    req.write_writable(done, &zeros[..n as usize])
                        .map_err(|_| S_IOERR)?;
                    done += n;
                }
                // `data <= MAX_DATA` fits.
                Ok(data as u32)
            }
            T_OUT | T_FLUSH => Ok(0),
            T_GET_ID => {
                let mut id = [0u8; 20];
                id[..8].copy_from_slice(b"null-blk");
                let n = req.writable_len().saturating_sub(1).min(20) as usize;
                req.write_writable(0, &id[..n]).map_err(|_| S_IOERR)?;
                Ok(n as u32)
            }
            _ => Err(S_UNSUPP),
        }
    }
}

impl VirtioDevice for NullBlk {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }
    fn num_queues(&self) -> usize {
        1
    }
    fn max_queue_size(&self) -> u16 {
        256
    }
    fn features(&self) -> u64 {
        0 // no optional virtio-blk feature; the runtime adds its own (EVENT_IDX, ...)
    }
    fn config_size(&self) -> usize {
        CONFIG_SIZE
    }
    fn read_config(&self, offset: u32, data: &mut [u8]) -> Result<(), DeviceError> {
        // Only `capacity` (in 512-byte sectors, at offset 0) is set.
        let mut config = [0u8; CONFIG_SIZE];
        config[..8].copy_from_slice(&self.sectors.to_le_bytes());
        read_config_bytes(&config, offset, data)
    }
    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        while let Some(req) = ctx.pop() {
            if req.fault().is_some() || req.readable_len() < 16 || req.writable_len() == 0 {
                // No usable header or status byte: say so if there is a byte to say it in.
                let used = u32::from(req.write_last_byte(S_IOERR).is_ok());
                req.complete(used);
                continue;
            }
            let status = match self.serve(&req) {
                Ok(_) => S_OK,
                Err(s) => s,
            };
            // The status is the last writable byte, so the used length runs to it. A failed
            // status write leaves nothing to tell the driver.
            let used = match req.write_last_byte(status) {
                Ok(()) => u32::try_from(req.writable_len()).unwrap_or(u32::MAX),
                Err(_) => 0,
            };
            req.complete(used);
        }
        Ok(Processed::Drained)
    }
}
