//! A virtio-rng (entropy, virtio device id 4) back-end for the vhost-user device runtime.
//!
//! The device has one request queue and no configuration space. For every chain the driver
//! makes available it fills the chain's device-writable buffers, in order, with random bytes
//! written straight into guest memory (getrandom(2), or `read(2)` from a `--source` file)
//! and returns the chain with the number of bytes written:
//!
//! - device-readable buffers are skipped; a chain without a writable buffer is returned
//!   with length 0;
//! - a buffer outside guest memory ends the chain with what was written so far;
//! - a file source at its end gives what it had (eventually 0 bytes per request).
//!
//! With a [`RateLimit`] the device gives at most `max_bytes` per `period`. A request over
//! the budget is delayed, not dropped: the device fills what the budget allows, then pauses
//! the queue ([`Processed::Paused`]) and arms a timerfd that its worker watches; the queue
//! resumes when the next period begins.
//!
//! ```no_run
//! use vhost_backend::runtime::DeviceBackend;
//! use vhost_device_rng::{RngConfig, RngDevice};
//!
//! let device = RngDevice::new(&RngConfig::default())?;
//! let backend = DeviceBackend::new(device)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod rate_limit;
mod source;

use std::path::PathBuf;
use std::time::Instant;

use vhost_backend::runtime::{DeviceError, DeviceFd, Processed, QueueContext, VirtioDevice};
use virtio_queue::DescriptorChain;
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

pub use rate_limit::{RateLimit, MAX_PERIOD};
pub use source::EntropySource;

use rate_limit::Limiter;

/// The virtio device id of an entropy device.
pub const VIRTIO_ID_RNG: u32 = 4;

/// Default and largest queue size the device offers.
pub const MAX_QUEUE_SIZE: u16 = 1024;

/// Token of the rate-limit timer among the worker's descriptors.
const TIMER_TOKEN: u32 = 1;

/// What the device serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RngConfig {
    /// A file to read random bytes from (e.g. `/dev/urandom`); `None`: getrandom(2).
    pub source: Option<PathBuf>,
    /// At most so many bytes per period; `None`: unlimited.
    pub rate_limit: Option<RateLimit>,
    /// Largest queue size the driver may choose (a power of two, at most 32768).
    pub queue_size: u16,
}

impl Default for RngConfig {
    fn default() -> Self {
        RngConfig {
            source: None,
            rate_limit: None,
            queue_size: MAX_QUEUE_SIZE,
        }
    }
}

/// Why a device could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RngError {
    /// The `--source` file could not be opened.
    #[error("opening the entropy source {}: {source}", path.display())]
    OpenSource {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// getrandom(2) is not usable on this system.
    #[error("getrandom(2) is not usable: {0}")]
    Getrandom(#[source] std::io::Error),
    /// The rate limit has a zero period, a period over [`MAX_PERIOD`], or a zero byte
    /// budget.
    #[error("invalid rate limit: {0}")]
    InvalidRateLimit(&'static str),
    /// The queue size is not a power of two between 1 and 32768.
    #[error("invalid queue size {0}: a power of two between 1 and 32768 is needed")]
    InvalidQueueSize(u16),
    /// The rate-limit timer could not be created.
    #[error("creating the rate-limit timer: {0}")]
    Timer(#[source] std::io::Error),
}

/// The virtio-rng device. See the [crate docs](crate).
#[derive(Debug)]
pub struct RngDevice {
    source: EntropySource,
    limiter: Option<Limiter>,
    queue_size: u16,
}

impl RngDevice {
    /// Opens the entropy source and sets up the rate limit of `config`.
    pub fn new(config: &RngConfig) -> Result<Self, RngError> {
        let qs = config.queue_size;
        if !qs.is_power_of_two() || qs > 32768 {
            return Err(RngError::InvalidQueueSize(qs));
        }
        let source = match &config.source {
            Some(path) => EntropySource::open(path).map_err(|source| RngError::OpenSource {
                path: path.clone(),
                source,
            })?,
            None => EntropySource::os().map_err(RngError::Getrandom)?,
        };
        let limiter = match config.rate_limit {
            Some(l) if l.period.is_zero() => {
                return Err(RngError::InvalidRateLimit("the period is zero"))
            }
            Some(l) if l.period > MAX_PERIOD => {
                return Err(RngError::InvalidRateLimit(
                    "the period is longer than one hour",
                ))
            }
            Some(l) if l.max_bytes == 0 => {
                return Err(RngError::InvalidRateLimit("the byte budget is zero"))
            }
            Some(l) => Some(Limiter::new(l).map_err(RngError::Timer)?),
            None => None,
        };
        Ok(RngDevice {
            source,
            limiter,
            queue_size: qs,
        })
    }

    /// The entropy source.
    pub fn source(&self) -> &EntropySource {
        &self.source
    }

    /// Fills the writable buffers of `chain` with at most `budget` bytes; returns how many
    /// were written.
    fn fill_chain(
        &self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
        budget: u64,
    ) -> u32 {
        let mut left = budget.min(u64::from(u32::MAX));
        let mut written = 0u32;
        for desc in chain.writable() {
            if left == 0 {
                break;
            }
            // `want <= left <= u32::MAX`, and `written + want <= budget <= u32::MAX`.
            let want = u64::from(desc.len()).min(left);
            let (n, complete) = self.fill_guest(mem, desc.addr(), want as usize);
            written += n as u32;
            left -= n as u64;
            if !complete {
                break;
            }
        }
        written
    }

    /// Fills `len` bytes of guest memory at `addr`, region by region. Returns the bytes
    /// written and whether that was all of them.
    fn fill_guest(&self, mem: &GuestMemoryMmap, addr: GuestAddress, len: usize) -> (usize, bool) {
        let mut done = 0usize;
        while done < len {
            let Some(at) = addr.0.checked_add(done as u64).map(GuestAddress) else {
                return (done, false);
            };
            let Some((region, offset)) = mem.to_region_addr(at) else {
                log::debug!("rng: buffer at {:#x} is outside guest memory", at.0);
                return (done, false);
            };
            let room = region.len().saturating_sub(offset.0);
            let n = (len - done).min(usize::try_from(room).unwrap_or(usize::MAX));
            let slice = match region.get_slice(offset, n) {
                Ok(s) => s,
                Err(e) => {
                    log::debug!("rng: buffer at {:#x}: {e}", at.0);
                    return (done, false);
                }
            };
            match self.source.fill(&slice) {
                Ok(got) => {
                    done += got;
                    if got < n {
                        return (done, false);
                    }
                }
                Err(e) => {
                    log::warn!("rng: reading {}: {e}", self.source.describe());
                    return (done, false);
                }
            }
        }
        (done, true)
    }
}

impl VirtioDevice for RngDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn num_queues(&self) -> usize {
        1
    }

    fn max_queue_size(&self) -> u16 {
        self.queue_size
    }

    fn features(&self) -> u64 {
        0
    }

    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        let mem = ctx.memory();
        let Some(limiter) = &self.limiter else {
            while let Some(chain) = ctx.pop_chain() {
                let head = chain.head_index();
                let len = self.fill_chain(mem, chain, u64::MAX);
                ctx.add_used(head, len)?;
            }
            return Ok(Processed::Drained);
        };
        let mut budget = limiter.lock();
        loop {
            let now = Instant::now();
            let available = budget.available(now);
            if available == 0 {
                // Over budget: leave the rest in the ring until the next period.
                budget.arm(now)?;
                return Ok(Processed::Paused);
            }
            let Some(chain) = ctx.pop_chain() else {
                return Ok(Processed::Drained);
            };
            let head = chain.head_index();
            let len = self.fill_chain(mem, chain, available);
            budget.consume(u64::from(len));
            ctx.add_used(head, len)?;
        }
    }

    fn worker_fds(&self, _worker: usize) -> Vec<DeviceFd> {
        match &self.limiter {
            Some(l) => vec![DeviceFd {
                fd: l.timer_fd(),
                token: TIMER_TOKEN,
            }],
            None => Vec::new(),
        }
    }

    fn handle_event(&self, _worker: usize, token: u32) -> Result<bool, DeviceError> {
        match (&self.limiter, token) {
            (Some(l), TIMER_TOKEN) => {
                l.timer_fired()?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn reset(&self) {
        if let Some(l) = &self.limiter {
            l.reset();
        }
    }
}

#[cfg(test)]
mod tests;
