//! Reconnect delays (docs/PROTOCOL.md §6): `min(base·2^min(attempt, 6) + jitter, cap)`
//! with `jitter` drawn uniformly from `0..jitter_max` (1 s by default).
//!
//! The arithmetic is a pure function, [`backoff_delay`], so it can be tested
//! exactly; [`jittered_delay`] draws the jitter from an RNG. The jitter is what
//! keeps a thousand clients that lost the same server at the same instant
//! from all coming back in the same millisecond.

use std::time::Duration;

use rand::Rng;

/// The exponent stops growing here: `base·2^6` (64 s at the default base) is
/// already past the default cap, and stopping avoids overflow.
pub const MAX_EXPONENT: u32 = 6;

/// The delay before reconnect attempt `attempt` (0 for the first retry after
/// a connection was lost or failed): `min(base·2^min(attempt, 6) +
/// jitter_sample, cap)`. Saturating: never panics, whatever the inputs.
pub fn backoff_delay(
    attempt: u32,
    base: Duration,
    cap: Duration,
    jitter_sample: Duration,
) -> Duration {
    let exp = attempt.min(MAX_EXPONENT);
    base.saturating_mul(1u32 << exp)
        .saturating_add(jitter_sample)
        .min(cap)
}

/// A jitter sample, uniform in `0..jitter_max` (zero when `jitter_max` is zero).
pub fn jitter_sample(rng: &mut impl Rng, jitter_max: Duration) -> Duration {
    let max = jitter_max.as_nanos().min(u64::MAX as u128) as u64;
    if max == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rng.random_range(0..max))
}

/// [`backoff_delay`] with a fresh jitter sample from `rng`.
pub fn jittered_delay(
    rng: &mut impl Rng,
    attempt: u32,
    base: Duration,
    cap: Duration,
    jitter_max: Duration,
) -> Duration {
    backoff_delay(attempt, base, cap, jitter_sample(rng, jitter_max))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    const CAP: Duration = Duration::from_secs(30);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_from_the_base_then_stops_at_the_cap() {
        let got: Vec<u64> = (0..10)
            .map(|a| backoff_delay(a, S, CAP, Duration::ZERO).as_millis() as u64)
            .collect();
        // 1, 2, 4, 8, 16, 30 (32 capped), then 2^6 = 64 s capped forever.
        assert_eq!(
            got,
            [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000, 30000]
        );
    }

    #[test]
    fn the_jitter_is_added_before_the_cap() {
        assert_eq!(backoff_delay(0, S, CAP, ms(999)), ms(1999));
        assert_eq!(backoff_delay(3, S, CAP, ms(500)), ms(8500));
        assert_eq!(backoff_delay(4, S, CAP, ms(999)), ms(16999));
        // 16 s + 999 ms jitter fits, 32 s does not.
        assert_eq!(backoff_delay(5, S, CAP, ms(999)), CAP);
        // A small cap wins even over the base.
        assert_eq!(backoff_delay(0, S, ms(300), ms(10)), ms(300));
    }

    #[test]
    fn the_exponent_stops_at_six() {
        let huge = Duration::from_secs(1_000_000);
        assert_eq!(
            backoff_delay(6, S, huge, Duration::ZERO),
            Duration::from_secs(64)
        );
        assert_eq!(
            backoff_delay(7, S, huge, Duration::ZERO),
            Duration::from_secs(64)
        );
        assert_eq!(
            backoff_delay(u32::MAX, S, huge, Duration::ZERO),
            Duration::from_secs(64)
        );
    }

    #[test]
    fn never_overflows() {
        let d = backoff_delay(u32::MAX, Duration::MAX, Duration::MAX, Duration::MAX);
        assert_eq!(d, Duration::MAX);
    }

    #[test]
    fn jitter_samples_stay_in_range_and_vary() {
        let mut rng = rand::rng();
        let samples: Vec<Duration> = (0..1000).map(|_| jitter_sample(&mut rng, S)).collect();
        assert!(samples.iter().all(|d| *d < S));
        let min = samples.iter().min().copied().unwrap_or_default();
        let max = samples.iter().max().copied().unwrap_or_default();
        assert!(min < ms(50), "min {min:?}");
        assert!(max > ms(950), "max {max:?}");
        assert_eq!(jitter_sample(&mut rng, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn jittered_delays_lie_between_the_bare_delay_and_one_jitter_more() {
        let mut rng = rand::rng();
        for attempt in 0..8 {
            for _ in 0..100 {
                let d = jittered_delay(&mut rng, attempt, ms(50), ms(2000), ms(50));
                let bare = backoff_delay(attempt, ms(50), ms(2000), Duration::ZERO);
                let upper = bare + ms(50);
                assert!(d >= bare, "attempt {attempt}: {d:?} < {bare:?}");
                assert!(d < upper || d == ms(2000), "attempt {attempt}: {d:?}");
            }
        }
    }
}
