//! The rate limit: at most `max_bytes` bytes per `period`, on a fixed grid of periods.
//! Requests over the budget are delayed, not dropped: the device pauses its queue and a
//! timerfd, watched by the queue's worker, resumes it when the next period begins.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};

/// Longest period a [`RateLimit`] may have: one hour.
pub const MAX_PERIOD: Duration = Duration::from_secs(3600);

/// At most `max_bytes` bytes of entropy every `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Length of one period (non-zero, at most [`MAX_PERIOD`]).
    pub period: Duration,
    /// Bytes the guest may get per period (non-zero).
    pub max_bytes: u64,
}

/// The current period and what it has used.
#[derive(Debug)]
struct Window {
    start: Instant,
    used: u64,
}

/// A [`RateLimit`] in force: the period bookkeeping and the timer that ends a pause.
#[derive(Debug)]
pub(crate) struct Limiter {
    limit: RateLimit,
    window: Mutex<Window>,
    timer: TimerFd,
}

/// The limiter locked for one wake-up of the queue's worker.
pub(crate) struct Budget<'a> {
    limit: RateLimit,
    window: MutexGuard<'a, Window>,
    timer: &'a TimerFd,
}

impl Limiter {
    /// A limiter whose first period starts now, with its (non-blocking) timer unarmed.
    pub(crate) fn new(limit: RateLimit) -> io::Result<Self> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        Ok(Limiter {
            limit,
            window: Mutex::new(Window {
                start: Instant::now(),
                used: 0,
            }),
            timer,
        })
    }

    /// The timerfd the worker watches.
    pub(crate) fn timer_fd(&self) -> RawFd {
        self.timer.as_fd().as_raw_fd()
    }

    /// Locks the bookkeeping for one pass over the queue.
    pub(crate) fn lock(&self) -> Budget<'_> {
        Budget {
            limit: self.limit,
            window: self.window.lock().unwrap_or_else(PoisonError::into_inner),
            timer: &self.timer,
        }
    }

    /// The timer fired: consumes its expiration count.
    pub(crate) fn timer_fired(&self) -> io::Result<()> {
        let mut count = [0u8; 8];
        match nix::unistd::read(&self.timer, &mut count) {
            Ok(_) | Err(Errno::EAGAIN) | Err(Errno::EINTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The budget used in the current period and how far into the period `now` is (the
    /// window first moved to the period `now` falls in), for migration.
    pub(crate) fn save(&self, now: Instant) -> (u64, Duration) {
        let mut b = self.lock();
        b.available(now);
        (b.window.used, now.saturating_duration_since(b.window.start))
    }

    /// Takes over a period saved by [`save`](Self::save) elsewhere: `used` bytes of it spent
    /// (at most the budget), `into` of it elapsed (at most one period). The timer, if armed,
    /// fires at the next pass's period end anyway.
    pub(crate) fn restore(&self, used: u64, into: Duration, now: Instant) {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let into = into.min(self.limit.period);
        w.start = now.checked_sub(into).unwrap_or(now);
        w.used = used.min(self.limit.max_bytes);
    }

    /// Back to a fresh period starting now, timer disarmed.
    pub(crate) fn reset(&self) {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        *w = Window {
            start: Instant::now(),
            used: 0,
        };
        if let Err(e) = self.timer.unset() {
            log::warn!("disarming the rate-limit timer: {e}");
        }
        // A pending expiration would only cause one extra, harmless pass.
        let _ = self.timer_fired();
    }
}

impl Budget<'_> {
    /// Bytes still allowed in the period `now` falls in (moving to that period first).
    pub(crate) fn available(&mut self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.window.start);
        if elapsed >= self.limit.period {
            // Whole periods passed: move the window along the grid, so timer latency does
            // not stretch the periods.
            let periods = elapsed.as_nanos() / self.limit.period.as_nanos();
            let step = self.limit.period.as_nanos().saturating_mul(periods);
            let step = Duration::from_nanos(u64::try_from(step).unwrap_or(u64::MAX));
            self.window.start = self.window.start.checked_add(step).unwrap_or(now);
            self.window.used = 0;
        }
        self.limit.max_bytes.saturating_sub(self.window.used)
    }

    /// Counts `bytes` delivered in the current period.
    pub(crate) fn consume(&mut self, bytes: u64) {
        self.window.used = self.window.used.saturating_add(bytes);
    }

    /// Arms the timer for the start of the next period.
    pub(crate) fn arm(&self, now: Instant) -> io::Result<()> {
        // The period is bounded by `MAX_PERIOD`; should the end still not be representable,
        // the wait is one period from `now`, capped at that bound.
        let wait = match self.window.start.checked_add(self.limit.period) {
            Some(end) => end.saturating_duration_since(now),
            None => self.limit.period.min(MAX_PERIOD),
        };
        // A zero value would disarm the timer: wait at least a microsecond.
        let wait = wait.max(Duration::from_micros(1));
        self.timer
            .set(
                Expiration::OneShot(TimeSpec::from_duration(wait)),
                TimerSetTimeFlags::empty(),
            )
            .map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(ms: u64, max: u64) -> Limiter {
        Limiter::new(RateLimit {
            period: Duration::from_millis(ms),
            max_bytes: max,
        })
        .unwrap()
    }

    #[test]
    fn budget_is_spent_within_a_period_and_refilled_in_the_next() {
        let l = limiter(100, 1000);
        let t0 = l.window.lock().unwrap().start;
        let mut b = l.lock();
        assert_eq!(b.available(t0), 1000);
        b.consume(600);
        assert_eq!(b.available(t0 + Duration::from_millis(50)), 400);
        b.consume(400);
        assert_eq!(b.available(t0 + Duration::from_millis(99)), 0);
        assert_eq!(b.available(t0 + Duration::from_millis(100)), 1000);
    }

    #[test]
    fn window_moves_along_the_period_grid_after_a_late_wake_up() {
        let l = limiter(100, 10);
        let t0 = l.window.lock().unwrap().start;
        let mut b = l.lock();
        b.consume(10);
        assert_eq!(b.available(t0 + Duration::from_millis(350)), 10);
        assert_eq!(b.window.start, t0 + Duration::from_millis(300));
    }

    #[test]
    fn armed_timer_fires_at_the_end_of_the_period() {
        let l = limiter(20, 1);
        let now = Instant::now();
        {
            let mut b = l.lock();
            b.consume(1);
            assert_eq!(b.available(now), 0);
            b.arm(now).unwrap();
        }
        let mut fds = [nix::poll::PollFd::new(
            l.timer.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let ready = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(1000u16)).unwrap();
        assert_eq!(ready, 1, "the timer fired");
        l.timer_fired().unwrap();
        l.reset();
        assert_eq!(l.lock().available(Instant::now()), 1);
    }

    #[test]
    fn arming_with_a_period_past_the_clock_range_waits_at_most_the_bound() {
        let l = Limiter::new(RateLimit {
            period: Duration::MAX,
            max_bytes: 1,
        })
        .unwrap();
        let now = Instant::now();
        let mut b = l.lock();
        b.consume(1);
        assert_eq!(b.available(now), 0);
        b.arm(now).unwrap();
        let Expiration::OneShot(wait) = l.timer.get().unwrap().unwrap() else {
            panic!("one-shot timer expected");
        };
        assert!(Duration::from(wait) <= MAX_PERIOD, "{wait:?}");
    }
}
