//! Capped, jittered exponential backoff, and the jittered poll interval.
//!
//! Jitter keeps a fleet from retrying (or polling) in lockstep after a shared outage.

use std::time::Duration;

/// Delays of `base * 2^n`, capped at `cap`, each scaled by a random factor in [0.8, 1.2].
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff { base, cap, attempt: 0 }
    }

    /// The un-jittered delay for the current attempt.
    pub fn nominal(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next delay; each call doubles the following one until the cap.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.nominal();
        self.attempt = self.attempt.saturating_add(1);
        d.mul_f64(0.8 + 0.4 * fastrand::f64())
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Changes the cap (the poll interval can change on reload).
    pub fn set_cap(&mut self, cap: Duration) {
        self.cap = cap;
    }
}

/// `interval` shifted by a random amount in [-jitter, +jitter] (never below a second).
pub fn jittered(interval: Duration, jitter: Duration) -> Duration {
    let shift = jitter.mul_f64(fastrand::f64() * 2.0);
    (interval + shift).saturating_sub(jitter).max(Duration::from_secs(1).min(interval))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        let nominal: Vec<u64> = (0..8)
            .map(|_| {
                let n = b.nominal();
                let d = b.next_delay();
                assert!(d >= n.mul_f64(0.8) && d <= n.mul_f64(1.2), "{d:?} vs {n:?}");
                n.as_secs()
            })
            .collect();
        assert_eq!(nominal, [1, 2, 4, 8, 16, 30, 30, 30]);
        b.reset();
        assert_eq!(b.nominal(), Duration::from_secs(1));
    }

    #[test]
    fn never_overflows() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(72));
        }
    }

    #[test]
    fn jitter_stays_in_bounds() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(30), Duration::from_secs(3));
            assert!(d >= Duration::from_secs(27) && d <= Duration::from_secs(33), "{d:?}");
        }
        assert_eq!(jittered(Duration::from_secs(5), Duration::ZERO), Duration::from_secs(5));
    }
}
