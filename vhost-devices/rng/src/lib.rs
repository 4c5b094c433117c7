//! A virtio-rng (entropy, virtio device id 4) back-end for the vhost-user device runtime.
//!
//! The device has one request queue and no configuration space. For every chain the driver
//! makes available it fills the chain's device-writable buffers, in order, with random bytes
//! (getrandom(2), or `read(2)` from a `--source` file, through a 4 KiB buffer copied into
//! guest memory) and returns the chain with the number of bytes written:
//!
//! - device-readable buffers are skipped; a chain without a writable buffer is returned
//!   with length 0;
//! - a buffer outside guest memory (even partly) ends the chain with what was written to the
//!   buffers before it;
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
use std::time::{Duration, Instant};

use vhost_backend::runtime::{
    DeviceError, DeviceFd, LogLimiter, Processed, QueueContext, Request, VirtioDevice,
};

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
    /// Rate limit for source failures (one per request otherwise).
    errors: LogLimiter,
}

impl RngDevice {
    /// Opens the entropy source and sets up the rate limit of `config`.
    pub fn new(config: &RngConfig) -> Result<Self, RngError> {
        let qs = config.queue_size;
        if !vhost_backend::runtime::valid_queue_size(qs) {
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
            errors: LogLimiter::new("entropy source failures"),
        })
    }

    /// The entropy source.
    pub fn source(&self) -> &EntropySource {
        &self.source
    }

    /// Fills the writable buffers of `req` with at most `budget` bytes; returns how many
    /// were written.
    fn fill_request(&self, req: &Request, budget: u64) -> u32 {
        let want = req.writable_len().min(budget).min(u64::from(u32::MAX));
        let mut buf = [0u8; FILL_CHUNK];
        let mut done = 0u64;
        // Buffer by buffer, so one outside guest memory ends the chain after the ones before.
        let mut buffer_end = 0u64;
        for b in req.writable() {
            buffer_end += u64::from(b.len);
            while done < want.min(buffer_end) {
                let n = (want.min(buffer_end) - done).min(FILL_CHUNK as u64) as usize;
                let got = match self.source.fill_buf(&mut buf[..n]) {
                    Ok(got) => got,
                    Err(e) => {
                        self.errors
                            .warn(format_args!("rng: reading {}: {e}", self.source.describe()));
                        return done as u32;
                    }
                };
                if let Err(e) = req.write_writable(done, &buf[..got]) {
                    log::debug!("rng: {e}");
                    return done as u32;
                }
                done += got as u64;
                if got < n {
                    return done as u32;
                }
            }
        }
        // `done <= want <= u32::MAX`.
        done as u32
    }
}

/// Bytes read from the source per copy into guest memory.
const FILL_CHUNK: usize = 4096;

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

    // Filling a buffer with random bytes again is harmless: a request a killed daemon left
    // in flight is resubmitted by the next one (INFLIGHT_SHMFD).
    fn supports_inflight_tracking(&self) -> bool {
        true
    }

    fn process_queue(&self, ctx: &mut QueueContext<'_>) -> Result<Processed, DeviceError> {
        let Some(limiter) = &self.limiter else {
            while let Some(req) = ctx.pop() {
                let len = self.fill_request(&req, u64::MAX);
                req.complete(len);
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
            let Some(req) = ctx.pop() else {
                return Ok(Processed::Drained);
            };
            let len = self.fill_request(&req, available);
            budget.consume(u64::from(len));
            req.complete(len);
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
        self.errors.reset();
    }

    fn supports_state_transfer(&self) -> bool {
        true
    }

    /// The rate limiter's period: the bytes spent in it and how far into it the device is,
    /// so a migrated guest gets no fresh budget mid-period (see [`RngState`]).
    fn snapshot(&self) -> Result<Vec<u8>, DeviceError> {
        let state = match &self.limiter {
            Some(l) => {
                let (used, into) = l.save(Instant::now());
                RngState {
                    limited: true,
                    used,
                    into_period_ns: u64::try_from(into.as_nanos()).unwrap_or(u64::MAX),
                }
            }
            None => RngState::default(),
        };
        Ok(state.encode())
    }

    fn restore(&self, state: &[u8]) -> Result<(), DeviceError> {
        let st = RngState::decode(state).map_err(|e| DeviceError::Other(e.into()))?;
        // No limit on one side: nothing to carry over.
        if let (Some(l), true) = (&self.limiter, st.limited) {
            l.restore(
                st.used,
                Duration::from_nanos(st.into_period_ns),
                Instant::now(),
            );
        }
        Ok(())
    }
}

/// The rng device's migration state: 4 bytes `VRNG`, a version byte (1), a byte saying
/// whether a rate limit was in force, then the bytes spent in the current period and how
/// far into it the source was, in nanoseconds (u64 little-endian each): 22 bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RngState {
    /// A rate limit was in force.
    pub limited: bool,
    /// Bytes delivered in the current period.
    pub used: u64,
    /// Time since the current period began, in nanoseconds.
    pub into_period_ns: u64,
}

/// Why saved rng state was refused.
#[derive(Debug, thiserror::Error)]
#[error("rng state: {0}")]
pub struct BadRngState(&'static str);

impl RngState {
    const MAGIC: &'static [u8; 4] = b"VRNG";
    const VERSION: u8 = 1;
    /// Encoded length.
    pub const LEN: usize = 22;

    /// The state's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(Self::LEN);
        v.extend_from_slice(Self::MAGIC);
        v.push(Self::VERSION);
        v.push(u8::from(self.limited));
        v.extend_from_slice(&self.used.to_le_bytes());
        v.extend_from_slice(&self.into_period_ns.to_le_bytes());
        v
    }

    /// Parses state bytes, refusing anything [`encode`](Self::encode) would not produce.
    pub fn decode(b: &[u8]) -> Result<Self, BadRngState> {
        if b.len() != Self::LEN {
            return Err(BadRngState("wrong length"));
        }
        if &b[..4] != Self::MAGIC {
            return Err(BadRngState("not rng state"));
        }
        if b[4] != Self::VERSION {
            return Err(BadRngState("unknown version"));
        }
        let limited = match b[5] {
            0 => false,
            1 => true,
            _ => return Err(BadRngState("bad rate-limit flag")),
        };
        let u64_at = |o: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(a)
        };
        Ok(RngState {
            limited,
            used: u64_at(6),
            into_period_ns: u64_at(14),
        })
    }
}

#[cfg(test)]
mod tests;
