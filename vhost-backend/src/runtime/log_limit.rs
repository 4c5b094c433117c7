//! Rate-limited logging for failures a guest or front-end can repeat at will.
//!
//! A guest sets the request rate, so one log line per failed request (an image returning
//! EIO, a ring it keeps corrupting) would let it flood the host's log. A [`LogLimiter`]
//! logs the first [`BURST`] occurrences of a kind of failure in full, then counts the rest
//! and logs one summary line per [`PERIOD`] in which some were suppressed (at the next
//! occurrence after the period, and when the limiter is reset at the end of a connection).

use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use log::Level;

/// Occurrences logged in full per period.
pub const BURST: u32 = 5;
/// Length of a period.
pub const PERIOD: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct State {
    started: Option<Instant>,
    logged: u32,
    suppressed: u64,
}

/// See the [module docs](self). One per kind of failure and connection (or ring).
#[derive(Debug, Default)]
pub struct LogLimiter {
    what: &'static str,
    state: Mutex<State>,
}

impl LogLimiter {
    /// A limiter for failures described as `what` in its summary lines.
    pub const fn new(what: &'static str) -> Self {
        LogLimiter {
            what,
            state: Mutex::new(State {
                started: None,
                logged: 0,
                suppressed: 0,
            }),
        }
    }

    /// Logs `args` at `level` unless [`BURST`] messages were logged in the current period.
    /// Returns whether it was logged.
    pub fn log(&self, level: Level, args: fmt::Arguments<'_>) -> bool {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if st.started.is_none_or(|t| now.duration_since(t) >= PERIOD) {
            self.summarise(&mut st, level);
            st.started = Some(now);
            st.logged = 0;
        }
        if st.logged < BURST {
            st.logged += 1;
            log::log!(level, "{args}");
            if st.logged == BURST {
                log::log!(
                    level,
                    "further {} in the next {PERIOD:?} are counted, not logged",
                    self.what
                );
            }
            true
        } else {
            st.suppressed += 1;
            false
        }
    }

    /// Logs a warning (see [`log`](Self::log)).
    pub fn warn(&self, args: fmt::Arguments<'_>) -> bool {
        self.log(Level::Warn, args)
    }

    /// Ends the current period: logs the summary of what was suppressed, if anything, and
    /// starts afresh (at the end of a connection).
    pub fn reset(&self) {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        self.summarise(&mut st, Level::Warn);
        *st = State::default();
    }

    /// Occurrences suppressed in the current period.
    pub fn suppressed(&self) -> u64 {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .suppressed
    }

    fn summarise(&self, st: &mut State, level: Level) {
        if st.suppressed > 0 {
            let since = st.started.map(|t| t.elapsed()).unwrap_or_default();
            log::log!(
                level,
                "{} more {} in the last {:.1?} (not logged one by one)",
                st.suppressed,
                self.what,
                since
            );
            st.suppressed = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_a_burst_then_counts_and_reset_starts_afresh() {
        let l = LogLimiter::new("test failures");
        let logged = (0..100)
            .filter(|i| l.warn(format_args!("failure {i}")))
            .count();
        assert_eq!(logged, BURST as usize);
        assert_eq!(l.suppressed(), 100 - u64::from(BURST));
        l.reset();
        assert_eq!(l.suppressed(), 0);
        assert!(l.warn(format_args!("after reset")));
    }
}
