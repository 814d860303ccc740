//! The rate sweep's search for the highest rate whose p99 stays within the
//! bound: which rate to try next, and when to stop.

/// The rate sweep: doubles the offered rate while p99 stays within the
/// bound, then bisects (geometrically) between the last rate that passed and
/// the first that failed; halves instead when the first step already fails.
/// At most `steps` steps, never above the measured ceiling.
pub struct Sweep {
    pass: Option<f64>,
    fail: Option<f64>,
    ceiling: f64,
    steps: usize,
    /// Steps recorded so far.
    pub done: usize,
    /// The slowest rate tried: the report's word when every step failed.
    pub lowest: f64,
    /// Slowest rate worth a step (a handful of requests per step).
    floor: f64,
}

impl Sweep {
    /// The sweep and its first rate: 1/16 of the ceiling measured by the
    /// throughput phase, else `--rate` or 10 requests/s.
    pub fn new(ceiling: f64, rate: Option<f64>, steps: usize, floor: f64) -> (Sweep, f64) {
        let first = if ceiling > 0.0 {
            ceiling / 16.0
        } else {
            rate.unwrap_or(10.0)
        };
        let sweep = Sweep {
            pass: None,
            fail: None,
            ceiling: if ceiling > 0.0 {
                ceiling
            } else {
                f64::INFINITY
            },
            steps,
            done: 0,
            lowest: first,
            floor,
        };
        (sweep, first)
    }

    /// Records a step; the next rate, or `None` when the sweep is over.
    pub fn next(&mut self, rate: f64, pass: bool) -> Option<f64> {
        self.done += 1;
        self.lowest = self.lowest.min(rate);
        if pass {
            self.pass = Some(self.pass.map_or(rate, |p| p.max(rate)));
        } else {
            self.fail = Some(self.fail.map_or(rate, |f| f.min(rate)));
        }
        if self.done >= self.steps {
            return None;
        }
        match (self.pass, self.fail) {
            (Some(p), None) if p < self.ceiling => Some((p * 2.0).min(self.ceiling)),
            (Some(_), None) => None,
            (None, Some(f)) if f / 4.0 >= self.floor => Some(f / 4.0),
            (None, _) => None,
            (Some(p), Some(f)) if f / p > 1.15 => Some((p * f).sqrt()),
            (Some(_), Some(_)) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_doubles_then_bisects() {
        let (mut s, first) = Sweep::new(1600.0, None, 10, 1.0);
        assert_eq!(first, 100.0);
        assert_eq!(s.next(100.0, true), Some(200.0));
        assert_eq!(s.next(200.0, true), Some(400.0));
        assert_eq!(s.next(400.0, false), Some((200.0f64 * 400.0).sqrt()));
        let mid = (200.0f64 * 400.0).sqrt();
        let n = s.next(mid, true).unwrap();
        assert!(n > mid && n < 400.0);
    }

    #[test]
    fn sweep_stops_at_the_ceiling_and_the_step_count() {
        let (mut s, first) = Sweep::new(100.0, None, 10, 1.0);
        let mut r = first;
        let mut steps = 0;
        while let Some(n) = s.next(r, true) {
            assert!(n <= 100.0);
            r = n;
            steps += 1;
            assert!(steps < 10);
        }
        assert_eq!(r, 100.0);
        let (mut s, _) = Sweep::new(0.0, Some(50.0), 4, 1.0);
        assert_eq!(s.next(50.0, false), Some(12.5));
        assert_eq!(s.next(12.5, false), Some(3.125));
        assert_eq!(s.next(3.125, false), None, "under the floor");
        assert_eq!(s.lowest, 3.125);
    }
}
