//! Dirty-page logging, driven as QEMU drives it for live migration.
//!
//! [`DirtyLogArea`] is the front-end's log: a memfd holding one bit per 4 KiB page of
//! guest-physical memory (bit `p % 8` of byte `p / 8` for page `p`), sized as QEMU sizes it
//! (whole 64-bit words). [`Session::start_logging`] turns logging on in QEMU's order
//! (SET_LOG_BASE, SET_FEATURES with `VHOST_F_LOG_ALL`, then SET_VRING_ADDR per queue with
//! `VHOST_VRING_F_LOG` and the used ring's guest-physical address as `log`);
//! [`Session::stop_logging`] turns it off in the reverse order.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;

use nix::sys::memfd::{memfd_create, MFdFlags};
use vhost_proto::{virtio, LogBase, ProtocolFeatures};

use super::{Result, Session, SessionError};

/// Guest bytes one bit of the log stands for.
pub const LOG_PAGE: u64 = 4096;

/// A dirty log the back-end marks: a memfd with one bit per 4 KiB page of guest-physical
/// memory (bit `p % 8` of byte `p / 8` for page `p`), sized in whole 64-bit words as QEMU
/// sizes it. [`Session::start_logging`] hands it to the back-end.
#[derive(Debug)]
pub struct DirtyLogArea {
    file: File,
    size: u64,
}

impl DirtyLogArea {
    /// A zeroed log covering guest-physical `[0, memory_end)`: one bit per page, in whole
    /// 64-bit words (QEMU's `vhost_get_log_size`).
    pub fn new(memory_end: u64) -> Result<Self> {
        let pages = memory_end.div_ceil(LOG_PAGE);
        Self::with_size(pages.div_ceil(64).max(1) * 8)
    }

    /// A zeroed log of exactly `size` bytes (too small ones are for testing refusals).
    pub fn with_size(size: u64) -> Result<Self> {
        let err = |e: std::io::Error| SessionError::Options(format!("dirty log memfd: {e}"));
        let fd = memfd_create(
            c"vhost-log",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(|e| err(e.into()))?;
        let file = File::from(fd);
        file.set_len(size).map_err(err)?;
        Ok(DirtyLogArea { file, size })
    }

    /// The log's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The log's memfd.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// A copy of the log.
    pub fn read(&self) -> Result<Vec<u8>> {
        let mut v = vec![0u8; self.size as usize];
        self.file
            .read_exact_at(&mut v, 0)
            .map_err(|e| SessionError::Options(format!("reading the dirty log: {e}")))?;
        Ok(v)
    }

    /// The marked pages, in order.
    pub fn dirty_pages(&self) -> Result<Vec<u64>> {
        let log = self.read()?;
        let mut pages = Vec::new();
        for (i, &b) in log.iter().enumerate() {
            for bit in 0..8 {
                if b & (1 << bit) != 0 {
                    pages.push(i as u64 * 8 + bit);
                }
            }
        }
        Ok(pages)
    }

    /// Clears every bit (do it while the back-end does not log, as QEMU's log sync does
    /// with an atomic exchange).
    pub fn clear(&self) -> Result<()> {
        self.file
            .write_all_at(&vec![0u8; self.size as usize], 0)
            .map_err(|e| SessionError::Options(format!("clearing the dirty log: {e}")))
    }
}

impl Session {
    /// Turns dirty logging on as QEMU does when migration starts: SET_LOG_BASE with `log`,
    /// SET_FEATURES with `VHOST_F_LOG_ALL` added, and SET_VRING_ADDR per queue with
    /// `VHOST_VRING_F_LOG` (the rings keep running). Later starts keep logging on.
    pub fn start_logging(&mut self, log: &DirtyLogArea) -> Result<()> {
        let bit = virtio::bit(virtio::LOG_ALL);
        if self.offered_features & bit == 0
            || !self
                .frontend
                .acked_protocol()
                .contains(ProtocolFeatures::LOG_SHMFD)
        {
            return Err(SessionError::Options(
                "the back-end offers no VHOST_F_LOG_ALL or LOG_SHMFD".into(),
            ));
        }
        self.frontend.set_log_base(
            &LogBase {
                mmap_size: log.size,
                mmap_offset: 0,
            },
            log.file.as_fd(),
        )?;
        // The session's state changes only once the back-end took each step: a failed
        // SET_FEATURES leaves it as it was, a failed SET_VRING_ADDR turns logging back off
        // (best effort) on the rings already switched and in the features.
        let features = self.features | bit;
        self.frontend.set_features(features)?;
        self.features = features;
        self.logging = true;
        for i in 0..self.queues.len() {
            if let Err(e) = self.send_vring_addr(i) {
                self.logging = false;
                for j in 0..i {
                    let _ = self.send_vring_addr(j);
                }
                self.features &= !bit;
                let _ = self.frontend.set_features(self.features);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Turns dirty logging off in the reverse order: SET_VRING_ADDR per queue without
    /// `VHOST_VRING_F_LOG`, then SET_FEATURES without `VHOST_F_LOG_ALL`.
    pub fn stop_logging(&mut self) -> Result<()> {
        self.logging = false;
        for i in 0..self.queues.len() {
            self.send_vring_addr(i)?;
        }
        let features = self.features & !virtio::bit(virtio::LOG_ALL);
        self.frontend.set_features(features)?;
        self.features = features;
        Ok(())
    }

    /// Whether [`start_logging`](Self::start_logging) turned logging on.
    pub fn logging(&self) -> bool {
        self.logging
    }
}
