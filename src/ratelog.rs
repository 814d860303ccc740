//! Refused handshakes and admin calls, logged at a bounded rate.
//!
//! A flood of bad tokens must not turn into a flood of log lines: writing
//! them (stderr, a pipe to a collector) would cost the shards more than the
//! refusals themselves, and could block them on a slow reader. At most
//! [`LINES_PER_SECOND`] refusal lines go out each second; the rest are
//! counted, and the count is logged with the first line of the next second.
//! Deciding takes two atomic operations and never a lock.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Instant;

/// Refusal lines logged per second at most.
pub const LINES_PER_SECOND: u64 = 5;

/// One rate-limited log stream.
pub struct RateLog {
    /// The current one-second window (seconds since `epoch`) in the high
    /// 32 bits, lines logged in it in the low 32.
    window: AtomicU64,
    /// Lines suppressed since the last one logged.
    suppressed: AtomicU64,
    epoch: OnceLock<Instant>,
}

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Log it; `suppressed` lines were dropped before it.
    Log {
        suppressed: u64,
    },
    Drop,
}

impl RateLog {
    pub const fn new() -> RateLog {
        RateLog {
            window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
            epoch: OnceLock::new(),
        }
    }

    /// Logs `args` at `info` unless this second's lines are spent.
    pub fn info(&self, args: fmt::Arguments<'_>) {
        let epoch = *self.epoch.get_or_init(Instant::now);
        let second = epoch.elapsed().as_secs();
        match self.verdict(second) {
            Verdict::Log { suppressed: 0 } => log::info!("{args}"),
            Verdict::Log { suppressed } => {
                log::info!("{args} ({suppressed} similar lines suppressed)")
            }
            Verdict::Drop => {}
        }
    }

    fn verdict(&self, second: u64) -> Verdict {
        let mut cur = self.window.load(Relaxed);
        loop {
            let (win, used) = (cur >> 32, cur & 0xffff_ffff);
            let next = if win == second {
                if used >= LINES_PER_SECOND {
                    self.suppressed.fetch_add(1, Relaxed);
                    return Verdict::Drop;
                }
                cur + 1
            } else {
                (second << 32) | 1
            };
            match self
                .window
                .compare_exchange_weak(cur, next, Relaxed, Relaxed)
            {
                Ok(_) => {
                    return Verdict::Log {
                        suppressed: self.suppressed.swap(0, Relaxed),
                    }
                }
                Err(actual) => cur = actual,
            }
        }
    }
}

impl Default for RateLog {
    fn default() -> RateLog {
        RateLog::new()
    }
}

/// The stream of refused upgrades, refreshes and admin calls.
pub static REFUSALS: RateLog = RateLog::new();

/// Logs a refusal at `info`, at most [`LINES_PER_SECOND`] a second.
macro_rules! refusal {
    ($($arg:tt)*) => {
        $crate::ratelog::REFUSALS.info(format_args!($($arg)*))
    };
}
pub(crate) use refusal;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_the_rate_per_second_then_the_count_of_the_dropped() {
        let log = RateLog::new();
        let verdicts: Vec<Verdict> = (0..8).map(|_| log.verdict(7)).collect();
        let logged = verdicts.iter().filter(|v| **v != Verdict::Drop).count() as u64;
        assert_eq!(logged, LINES_PER_SECOND);
        assert_eq!(verdicts[0], Verdict::Log { suppressed: 0 });
        // The next second's first line carries the count.
        assert_eq!(log.verdict(8), Verdict::Log { suppressed: 3 });
        assert_eq!(log.verdict(8), Verdict::Log { suppressed: 0 });
    }
}
