//! Capped, jittered exponential backoff, the jittered poll interval, and the pause an AWS
//! service's push-back (throttling, 5xx) imposes on this host's next call to it ([`Pushback`]).
//!
//! Jitter keeps a fleet from retrying (or polling) in lockstep after a shared outage.

use std::time::Duration;

use tokio::time::Instant;

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

/// First nominal pause after a push-back. With the loop retrying a failed pass within about
/// two seconds, a 2 s start keeps a host to about six calls in 40 s of throttling (bench figures
/// in docs/BENCHMARKS.md) while a one-off throttle costs a second or so.
pub const PUSHBACK_FIRST: Duration = Duration::from_secs(2);
/// Longest nominal pause: a throttle that lasts keeps each host to a call every 2.5 minutes on
/// average (full jitter halves the nominal), and a host hears the end of it within 5 minutes.
pub const PUSHBACK_CAP: Duration = Duration::from_secs(5 * 60);

/// "Full jitter" (AWS Architecture Blog, *Exponential Backoff And Jitter*): a pause drawn
/// uniformly from [0, `nominal`], `draw` in [0, 1). Spreads a fleet's retries over the whole
/// window instead of bunching them at its end.
pub fn full_jitter(nominal: Duration, draw: f64) -> Duration {
    nominal.mul_f64(draw.clamp(0.0, 1.0))
}

/// The nominal pause after `in_a_row` push-backs in a row (1 for the first): `first * 2^(n-1)`,
/// at most `cap`.
pub fn pushback_nominal(first: Duration, cap: Duration, in_a_row: u32) -> Duration {
    let factor = 1u32.checked_shl(in_a_row.saturating_sub(1).min(20)).unwrap_or(u32::MAX);
    first.saturating_mul(factor).min(cap)
}

/// One AWS service's push-back as this host knows it: after the service pushed back
/// (throttling, 5xx) `in_a_row` times, no call goes to it before `until`. The pauses double up
/// to the cap, each drawn with full jitter from a generator seeded per host, so hosts that were
/// throttled together spread their next calls apart, and a host's own sequence is reproducible.
#[derive(Debug, Clone)]
pub struct Pushback {
    first: Duration,
    cap: Duration,
    in_a_row: u32,
    until: Option<Instant>,
    rng: fastrand::Rng,
}

impl Pushback {
    /// The policy of every AWS service: [`PUSHBACK_FIRST`] doubling to [`PUSHBACK_CAP`].
    pub fn new(seed: u64) -> Pushback {
        Pushback::with(PUSHBACK_FIRST, PUSHBACK_CAP, seed)
    }

    pub fn with(first: Duration, cap: Duration, seed: u64) -> Pushback {
        Pushback { first, cap, in_a_row: 0, until: None, rng: fastrand::Rng::with_seed(seed) }
    }

    /// `Ok` when a call may go at `now`; else how long it must still wait.
    pub fn admit(&self, now: Instant) -> Result<(), Duration> {
        match self.until {
            Some(until) if now < until => Err(until - now),
            _ => Ok(()),
        }
    }

    /// The service pushed back at `now`: returns the pause before the next call.
    pub fn pushed_back(&mut self, now: Instant) -> Duration {
        self.in_a_row = self.in_a_row.saturating_add(1);
        let pause = full_jitter(pushback_nominal(self.first, self.cap, self.in_a_row), self.rng.f64());
        self.until = Some(now + pause);
        pause
    }

    /// The service answered (anything but a push-back): the next call goes at once.
    pub fn answered(&mut self) {
        self.in_a_row = 0;
        self.until = None;
    }

    /// Push-backs in a row so far (0: none).
    pub fn in_a_row(&self) -> u32 {
        self.in_a_row
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushback_pauses_double_to_the_cap() {
        let (first, cap) = (PUSHBACK_FIRST, PUSHBACK_CAP);
        let table: &[(u32, u64)] = &[(0, 2), (1, 2), (2, 4), (3, 8), (4, 16), (5, 32), (8, 256), (9, 300), (40, 300)];
        for &(n, secs) in table {
            assert_eq!(pushback_nominal(first, cap, n), Duration::from_secs(secs), "{n} in a row");
        }
    }

    #[test]
    fn full_jitter_spans_zero_to_the_nominal() {
        let nominal = Duration::from_secs(8);
        let table: &[(f64, u64)] =
            &[(0.0, 0), (0.25, 2000), (0.5, 4000), (0.999, 7992), (1.0, 8000), (-1.0, 0), (7.0, 8000)];
        for &(draw, millis) in table {
            assert_eq!(full_jitter(nominal, draw), Duration::from_millis(millis), "draw {draw}");
        }
    }

    #[test]
    fn pushback_holds_calls_back_until_its_pause_ends_and_an_answer_resets_it() {
        let now = Instant::now();
        let mut p = Pushback::new(42);
        assert_eq!(p.admit(now), Ok(()));
        let mut previous_nominal = Duration::ZERO;
        for n in 1..=12u32 {
            let pause = p.pushed_back(now);
            let nominal = pushback_nominal(PUSHBACK_FIRST, PUSHBACK_CAP, n);
            assert!(pause <= nominal, "{n}: {pause:?} > {nominal:?}");
            assert!(nominal >= previous_nominal);
            previous_nominal = nominal;
            assert_eq!(p.in_a_row(), n);
            if !pause.is_zero() {
                assert_eq!(p.admit(now), Err(pause));
            }
            assert_eq!(p.admit(now + pause), Ok(()));
        }
        p.answered();
        assert_eq!((p.in_a_row(), p.admit(now)), (0, Ok(())));
    }

    #[test]
    fn pushback_is_reproducible_per_seed_and_differs_between_hosts() {
        let now = Instant::now();
        let pauses = |seed: u64| {
            let mut p = Pushback::new(seed);
            (0..6).map(|_| p.pushed_back(now)).collect::<Vec<_>>()
        };
        assert_eq!(pauses(7), pauses(7));
        assert_ne!(pauses(7), pauses(8));
    }

    /// The bound: a host whose loop retries every 2 s makes at most 8 calls in 40 s of
    /// throttling, over many seeds (the loop's own retry pauses: 1 s, then about 2 s).
    #[test]
    fn a_throttled_host_makes_few_calls_in_forty_seconds() {
        let start = Instant::now();
        let mut worst = 0;
        for seed in 0..2000u64 {
            let mut p = Pushback::new(seed);
            let (mut at, mut calls, mut retry) = (Duration::ZERO, 0, Duration::from_millis(800));
            while at < Duration::from_secs(40) {
                if p.admit(start + at).is_ok() {
                    calls += 1;
                    p.pushed_back(start + at);
                }
                at += retry;
                retry = Duration::from_millis(1600);
            }
            worst = worst.max(calls);
        }
        assert!(worst <= 8, "{worst} calls");
    }

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
