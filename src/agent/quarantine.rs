//! The loop's memory of bad releases: which are held back, until when, and why.
//!
//! A release is quarantined when its container crash-loops under Docker's restart policy
//! ([`CRASH_LOOP_RESTARTS`] restarts within [`CRASH_LOOP_WINDOW`]), or when its cut-over (or
//! candidate probe) fails [`FAILED_DEPLOYS`] times in a row: retrying such a release at every
//! backoff costs a pull, a container start and, after cut-over, an outage each time. A held
//! release is tried again after a backoff that doubles each time it fails again. The decision
//! ([`crate::pass::decide`]) sees only "held until"; time is tokio's clock, so the rules are
//! tested with paused time.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::outside::docker::ContainerInfo;
use crate::runtime::backoff::Backoff;
use crate::sha::Sha;
use crate::spec::LABEL_SHA;

/// Docker restarts (by its restart policy) of one container before the release is declared
/// crash-looping and rolled back. Three rules out a one-off crash without waiting long.
pub const CRASH_LOOP_RESTARTS: i64 = 3;
/// Restarts must happen within this window of each other to count as a crash loop.
pub const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(10 * 60);
/// Failed deploys of one release in a row before it is held back like a crash loop. Three
/// rides out a flaky probe or registry without retrying a broken release forever.
pub const FAILED_DEPLOYS: u32 = 3;
/// First wait before a quarantined release is tried again; doubles up to the cap.
pub const QUARANTINE_FIRST: Duration = Duration::from_secs(60);
pub const QUARANTINE_CAP: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone)]
struct Hold {
    until: Instant,
    backoff: Backoff,
    /// Its time is up and it is being tried again: one more failure holds it twice as long.
    on_trial: bool,
}

/// Why a release was just quarantined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    CrashLoop {
        restarts: i64,
    },
    FailedDeploys {
        times: u32,
    },
    /// Its bake tripped and it was reverted ([`crate::pass::bake`]).
    Reverted,
}

#[derive(Debug, Default)]
pub struct Quarantine {
    holds: HashMap<Sha, Hold>,
    /// Container id -> (Docker restart count, when first seen at that count).
    restarts: HashMap<String, (i64, Instant)>,
    /// Consecutive failed deploys per release.
    failures: HashMap<Sha, u32>,
}

impl Quarantine {
    /// Releases held back now, and until when. Holds whose time is up go on trial (and are
    /// not returned), so the release is deployed once more.
    pub fn held(&mut self, now: Instant) -> HashMap<Sha, Instant> {
        for (sha, hold) in self.holds.iter_mut() {
            if !hold.on_trial && now >= hold.until {
                hold.on_trial = true;
                tracing::info!(sha = %sha, "trying the quarantined release {} again", sha.short());
            }
        }
        self.holds.iter().filter(|(_, h)| !h.on_trial).map(|(s, h)| (s.clone(), h.until)).collect()
    }

    /// Looks at the container under the managed name: a release of ours whose container
    /// Docker restarted [`CRASH_LOOP_RESTARTS`] times within the window is quarantined.
    /// Returns it when that just happened.
    pub fn note_container(&mut self, main: Option<&ContainerInfo>, now: Instant) -> Option<(Sha, Cause)> {
        let c = main.filter(|c| c.is_managed())?;
        // Docker's RestartCount is lifetime: count only restarts within the window of a
        // baseline, so three crashes spread over weeks are not a crash loop.
        let baseline = self.restarts.entry(c.id.clone()).or_insert((c.restart_count, now));
        if now.duration_since(baseline.1) > CRASH_LOOP_WINDOW {
            *baseline = (c.restart_count, now);
        }
        let recent = c.restart_count - baseline.0;
        let id = c.id.clone();
        self.restarts.retain(|k, _| *k == id);
        let sha = c.labels.get(LABEL_SHA).and_then(|s| Sha::parse(s).ok())?;
        let watching = self.holds.get(&sha).is_none_or(|h| h.on_trial);
        if recent < CRASH_LOOP_RESTARTS || !watching {
            return None;
        }
        // Counted once: the next loop needs fresh restarts.
        self.restarts.insert(id, (c.restart_count, now));
        self.hold(&sha, now);
        Some((sha, Cause::CrashLoop { restarts: recent }))
    }

    /// A deploy of `sha` failed because of the release itself (its probe). Returns the cause
    /// when this quarantined it.
    pub fn record_failure(&mut self, sha: &Sha, now: Instant) -> Option<Cause> {
        let on_trial = self.holds.get(sha).is_some_and(|h| h.on_trial);
        let times = self.failures.entry(sha.clone()).or_insert(0);
        *times += 1;
        let times = *times;
        if times < FAILED_DEPLOYS && !on_trial {
            return None;
        }
        self.failures.remove(sha);
        self.hold(sha, now);
        Some(Cause::FailedDeploys { times })
    }

    /// `sha` was reverted during its bake: held back at once (the release object still names
    /// it, and deploying it again at the next pass would trip the same way), with the same
    /// doubling backoff as a crash loop.
    pub fn record_revert(&mut self, sha: &Sha, now: Instant) -> Cause {
        self.failures.remove(sha);
        self.hold(sha, now);
        Cause::Reverted
    }

    /// `sha` was deployed and proven: its failure count starts again. A hold on trial keeps
    /// its backoff, so a crash loop later still waits longer than the last time.
    pub fn record_success(&mut self, sha: &Sha) {
        self.failures.remove(sha);
    }

    fn hold(&mut self, sha: &Sha, now: Instant) {
        let mut backoff =
            self.holds.remove(sha).map(|h| h.backoff).unwrap_or_else(|| Backoff::new(QUARANTINE_FIRST, QUARANTINE_CAP));
        let wait = backoff.next_delay();
        self.holds.insert(sha.clone(), Hold { until: now + wait, backoff, on_trial: false });
    }

    /// How long until `sha` is tried again, if it is held.
    pub fn remaining(&self, sha: &Sha, now: Instant) -> Option<Duration> {
        self.holds.get(sha).filter(|h| !h.on_trial).map(|h| h.until.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap as Map;

    use super::*;
    use crate::spec::LABEL_MANAGED;

    fn sha(c: char) -> Sha {
        Sha::parse(&c.to_string().repeat(40)).unwrap()
    }

    fn container(id: &str, s: &Sha, restarts: i64) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            name: "blog".into(),
            running: true,
            status: "running".into(),
            exit_code: None,
            labels: Map::from([(LABEL_MANAGED.into(), "true".into()), (LABEL_SHA.into(), s.to_string())]),
            ip: None,
            started_at: None,
            restart_count: restarts,
            oom_killed: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn three_restarts_within_the_window_quarantine_the_release() {
        let a = sha('a');
        let mut q = Quarantine::default();
        assert_eq!(q.note_container(Some(&container("c1", &a, 0)), Instant::now()), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(q.note_container(Some(&container("c1", &a, 2)), Instant::now()), None);
        tokio::time::advance(Duration::from_secs(5)).await;
        let got = q.note_container(Some(&container("c1", &a, 3)), Instant::now());
        assert_eq!(got, Some((a.clone(), Cause::CrashLoop { restarts: 3 })));
        let held = q.held(Instant::now());
        let until = held[&a];
        // First hold: about QUARANTINE_FIRST (jittered 0.8-1.2).
        let wait = until - Instant::now();
        assert!(wait >= QUARANTINE_FIRST.mul_f64(0.79) && wait <= QUARANTINE_FIRST.mul_f64(1.21), "{wait:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn restarts_spread_over_more_than_the_window_are_not_a_crash_loop() {
        let a = sha('a');
        let mut q = Quarantine::default();
        q.note_container(Some(&container("c1", &a, 0)), Instant::now());
        tokio::time::advance(CRASH_LOOP_WINDOW + Duration::from_secs(1)).await;
        assert_eq!(q.note_container(Some(&container("c1", &a, 2)), Instant::now()), None);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(q.note_container(Some(&container("c1", &a, 4)), Instant::now()), None);
        assert!(q.held(Instant::now()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_failing_its_cut_over_three_times_in_a_row_is_held_back() {
        let a = sha('a');
        let mut q = Quarantine::default();
        assert_eq!(q.record_failure(&a, Instant::now()), None);
        assert_eq!(q.record_failure(&a, Instant::now()), None);
        assert_eq!(q.record_failure(&a, Instant::now()), Some(Cause::FailedDeploys { times: 3 }));
        assert!(q.held(Instant::now()).contains_key(&a));
        // A success in between resets the count.
        let b = sha('b');
        q.record_failure(&b, Instant::now());
        q.record_failure(&b, Instant::now());
        q.record_success(&b);
        assert_eq!(q.record_failure(&b, Instant::now()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_release_goes_on_trial_and_a_second_failure_holds_it_twice_as_long() {
        let a = sha('a');
        let mut q = Quarantine::default();
        for _ in 0..FAILED_DEPLOYS {
            q.record_failure(&a, Instant::now());
        }
        let first = q.remaining(&a, Instant::now()).unwrap();
        tokio::time::advance(first + Duration::from_secs(1)).await;
        assert!(q.held(Instant::now()).is_empty(), "on trial: deployed again");
        // On trial, one failure is enough.
        assert!(q.record_failure(&a, Instant::now()).is_some());
        let second = q.remaining(&a, Instant::now()).unwrap();
        assert!(second > first.mul_f64(1.3), "{first:?} then {second:?}");
    }

    /// One tripped bake holds the release back at once (S3 still names it), and a second one
    /// after its trial twice as long.
    #[tokio::test(start_paused = true)]
    async fn a_reverted_release_is_held_back_at_once() {
        let a = sha('a');
        let mut q = Quarantine::default();
        assert_eq!(q.record_revert(&a, Instant::now()), Cause::Reverted);
        assert!(q.held(Instant::now()).contains_key(&a));
        let first = q.remaining(&a, Instant::now()).unwrap();
        assert!(first >= QUARANTINE_FIRST.mul_f64(0.79), "{first:?}");
        tokio::time::advance(first + Duration::from_secs(1)).await;
        assert!(q.held(Instant::now()).is_empty(), "on trial: deployed again");
        q.record_revert(&a, Instant::now());
        let second = q.remaining(&a, Instant::now()).unwrap();
        assert!(second > first.mul_f64(1.3), "{first:?} then {second:?}");
    }
}
