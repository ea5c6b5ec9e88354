//! The loop around the passes: it owns time, wake-ups, reloads, the watchdog and shutdown,
//! and nothing else. What a pass does is the [`Reconciler`]'s business, so the loop's timing
//! is unit-tested with a fake reconciler and tokio's paused clock.
//!
//! Wake-ups: the scheduled *full* pass (reads S3) at the jittered poll interval, or at the
//! retry backoff after a failure; a Docker event on the managed container (debounced) runs a
//! *local* pass at once, whatever the state, which repairs from what the host knows without
//! waiting on S3; SIGHUP reloads the config and runs a full pass.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::phase::Phase;
use crate::runtime::backoff::{jittered, Backoff};
use crate::runtime::shutdown::Shutdown;
use crate::runtime::systemd::Notifier;

/// First retry after a failed pass; doubles up to the poll interval.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Events come in bursts (die, stop, destroy): wait this long and reconcile once.
pub const EVENT_DEBOUNCE: Duration = Duration::from_millis(250);

/// Which pass to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassKind {
    /// Read S3 (conditional GET), then reconcile.
    Full,
    /// Reconcile from what is already known (last read of S3, last-known-good): after a
    /// Docker event, so a removed or stopped container is repaired even while S3 is down.
    Local,
}

/// One pass and what the loop needs to know around it.
pub trait Reconciler {
    fn pass(&mut self, kind: PassKind, shutdown: &Shutdown) -> impl std::future::Future<Output = Phase>;
    /// Re-reads the configuration (SIGHUP).
    fn reload(&mut self);
    /// Poll interval and its jitter.
    fn interval(&self) -> (Duration, Duration);
    /// Longest a pass can take before it counts as hung.
    fn pass_deadline(&self) -> Duration;
    /// The `STATUS=` line for `phase`.
    fn status_line(&self, phase: &Phase) -> String;
}

/// When the next full pass is due.
#[derive(Debug)]
pub struct Schedule {
    retry: Backoff,
    next_full: Instant,
}

impl Schedule {
    pub fn new(now: Instant, interval: Duration) -> Schedule {
        Schedule { retry: Backoff::new(RETRY_FIRST, interval), next_full: now }
    }

    pub fn next_full(&self) -> Instant {
        self.next_full
    }

    /// After a pass of `kind` that ended in `phase`.
    pub fn after(&mut self, kind: PassKind, phase: &Phase, now: Instant, interval: Duration, jitter: Duration) {
        self.retry.set_cap(interval);
        match (kind, phase.is_converged()) {
            (PassKind::Full, true) => {
                self.retry.reset();
                self.next_full = now + jittered(interval, jitter);
            }
            (PassKind::Full, false) => self.next_full = now + self.retry.next_delay(),
            // A local repair does not reset the S3 schedule either way; a failed one brings
            // the next try forward.
            (PassKind::Local, true) => {}
            (PassKind::Local, false) => self.next_full = self.next_full.min(now + self.retry.next_delay()),
        }
    }

    /// The next full pass runs now (SIGHUP).
    pub fn now(&mut self, now: Instant) {
        self.next_full = now;
    }
}

/// What wakes the loop besides its schedule.
pub struct Wakeups {
    pub triggers: mpsc::Receiver<&'static str>,
    pub reload: mpsc::UnboundedReceiver<()>,
    pub shutdown: Shutdown,
}

/// Runs passes until shutdown. Returns after the pass in flight (if any) has stopped.
pub async fn drive<R: Reconciler>(reconciler: &mut R, mut wake: Wakeups, notifier: &Notifier) {
    let shutdown = wake.shutdown.clone();
    let (interval, _) = reconciler.interval();
    let mut schedule = Schedule::new(Instant::now(), interval);
    let mut watchdog = notifier.watchdog_interval().map(tokio::time::interval);
    let mut ready = false;
    let mut last_status = String::new();
    let mut kind = PassKind::Full;
    loop {
        // A pass is bounded by its own timeouts; past this deadline it is hung, the watchdog
        // pings stop, and systemd restarts the agent.
        let hung_after = Instant::now() + reconciler.pass_deadline();
        let deadline = reconciler.pass_deadline();
        let phase = {
            let pass = reconciler.pass(kind, &shutdown);
            tokio::pin!(pass);
            loop {
                tokio::select! {
                    out = &mut pass => break out,
                    _ = tick(&mut watchdog) => if Instant::now() < hung_after {
                        notifier.watchdog();
                    } else {
                        tracing::error!(?deadline, "reconcile pass hung; withholding the watchdog ping so systemd restarts the agent");
                    },
                }
            }
        };
        if phase == Phase::Stopping || shutdown.is_requested() {
            break;
        }
        let (interval, jitter) = reconciler.interval();
        schedule.after(kind, &phase, Instant::now(), interval, jitter);
        let status = reconciler.status_line(&phase);
        if status != last_status {
            notifier.status(&status);
            last_status = status;
        }
        if !ready {
            notifier.ready();
            ready = true;
        }
        tracing::debug!(next_full_in = ?schedule.next_full().saturating_duration_since(Instant::now()), "waiting");
        kind = loop {
            tokio::select! {
                _ = tokio::time::sleep_until(schedule.next_full()) => break PassKind::Full,
                Some(why) = wake.triggers.recv() => {
                    tokio::time::sleep(EVENT_DEBOUNCE).await;
                    while wake.triggers.try_recv().is_ok() {}
                    tracing::debug!(why, "reconciling now");
                    break PassKind::Local;
                }
                Some(()) = wake.reload.recv() => {
                    reconciler.reload();
                    schedule.now(Instant::now());
                    break PassKind::Full;
                }
                _ = shutdown.requested() => return stopping(reconciler, notifier),
                _ = tick(&mut watchdog) => notifier.watchdog(),
            }
        };
    }
    stopping(reconciler, notifier)
}

fn stopping<R: Reconciler>(reconciler: &R, notifier: &Notifier) {
    notifier.status(&reconciler.status_line(&Phase::Stopping));
    notifier.stopping();
}

/// Awaits the next watchdog tick, or forever when systemd did not ask for one.
async fn tick(watchdog: &mut Option<tokio::time::Interval>) {
    match watchdog {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::agent::phase::{Problem, ProblemKind};

    const INTERVAL: Duration = Duration::from_secs(30);

    /// Records each pass (kind, when) and answers with scripted phases.
    struct Fake {
        start: Instant,
        passes: Arc<Mutex<Vec<(PassKind, Duration)>>>,
        /// Phase per full pass (the last repeats); local passes converge.
        full_phases: Vec<Phase>,
        fulls: usize,
        reloads: usize,
    }

    fn converged() -> Phase {
        Phase::Converged { serving: "a".repeat(40) }
    }

    fn degraded() -> Phase {
        Phase::Degraded {
            serving: "a".repeat(40),
            problem: Problem { kind: ProblemKind::Lock, text: "S3 is down".into() },
        }
    }

    impl Reconciler for Fake {
        async fn pass(&mut self, kind: PassKind, _shutdown: &Shutdown) -> Phase {
            self.passes.lock().unwrap().push((kind, Instant::now() - self.start));
            match kind {
                PassKind::Full => {
                    let phase = self.full_phases[self.fulls.min(self.full_phases.len() - 1)].clone();
                    self.fulls += 1;
                    phase
                }
                PassKind::Local => converged(),
            }
        }
        fn reload(&mut self) {
            self.reloads += 1;
        }
        fn interval(&self) -> (Duration, Duration) {
            (INTERVAL, Duration::ZERO)
        }
        fn pass_deadline(&self) -> Duration {
            Duration::from_secs(600)
        }
        fn status_line(&self, phase: &Phase) -> String {
            format!("{phase:?}")
        }
    }

    struct Harness {
        passes: Arc<Mutex<Vec<(PassKind, Duration)>>>,
        triggers: mpsc::Sender<&'static str>,
        reload: mpsc::UnboundedSender<()>,
        stop: crate::runtime::shutdown::ShutdownTrigger,
        task: tokio::task::JoinHandle<Fake>,
    }

    fn start(full_phases: Vec<Phase>) -> Harness {
        let passes = Arc::new(Mutex::new(Vec::new()));
        let mut fake = Fake { start: Instant::now(), passes: passes.clone(), full_phases, fulls: 0, reloads: 0 };
        let (triggers, trigger_rx) = mpsc::channel(1);
        let (reload, reload_rx) = mpsc::unbounded_channel();
        let (stop, shutdown) = Shutdown::new();
        let task = tokio::spawn(async move {
            let wake = Wakeups { triggers: trigger_rx, reload: reload_rx, shutdown };
            drive(&mut fake, wake, &Notifier::disabled()).await;
            fake
        });
        Harness { passes, triggers, reload, stop, task }
    }

    impl Harness {
        fn passes(&self) -> Vec<(PassKind, Duration)> {
            self.passes.lock().unwrap().clone()
        }
        async fn finish(self) -> Fake {
            self.stop.trigger();
            self.task.await.unwrap()
        }
    }

    /// Lets the spawned loop run until it waits on time again.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_converged_host_is_polled_at_the_interval() {
        let h = start(vec![converged()]);
        tokio::time::sleep(INTERVAL * 2 + Duration::from_secs(1)).await;
        let kinds: Vec<_> = h.passes().iter().map(|(k, at)| (*k, at.as_secs())).collect();
        assert_eq!(kinds, [(PassKind::Full, 0), (PassKind::Full, 30), (PassKind::Full, 60)]);
        h.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_with_doubling_backoff_capped_at_the_interval() {
        let h = start(vec![degraded()]);
        tokio::time::sleep(Duration::from_secs(200)).await;
        let at: Vec<f64> = h.passes().iter().map(|(_, at)| at.as_secs_f64()).collect();
        let gaps: Vec<f64> = at.windows(2).map(|w| w[1] - w[0]).collect();
        // Nominal 1, 2, 4, 8, 16, 30, 30 ... each jittered by 0.8-1.2.
        for (i, gap) in gaps.iter().enumerate() {
            let nominal = (1u64 << i.min(20)).min(30) as f64;
            assert!(*gap >= nominal * 0.79 && *gap <= nominal * 1.21, "gap {i}: {gap} (nominal {nominal}) in {gaps:?}");
        }
        h.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_event_runs_a_local_pass_within_the_debounce_even_while_degraded() {
        let h = start(vec![degraded()]);
        tokio::time::sleep(Duration::from_millis(500)).await;
        settle().await;
        let before = h.passes().len();
        h.triggers.send("container event").await.unwrap();
        tokio::time::sleep(EVENT_DEBOUNCE + Duration::from_millis(10)).await;
        settle().await;
        let passes = h.passes();
        assert_eq!(passes.len(), before + 1, "{passes:?}");
        let (kind, at) = passes[before];
        assert_eq!(kind, PassKind::Local);
        assert!(at <= Duration::from_millis(500) + EVENT_DEBOUNCE + Duration::from_millis(10), "{at:?}");
        h.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_local_repair_keeps_the_s3_schedule() {
        let h = start(vec![converged()]);
        tokio::time::sleep(Duration::from_secs(10)).await;
        h.triggers.send("container event").await.unwrap();
        tokio::time::sleep(Duration::from_secs(21)).await;
        let kinds: Vec<_> = h.passes().iter().map(|(k, at)| (*k, at.as_secs())).collect();
        assert_eq!(kinds, [(PassKind::Full, 0), (PassKind::Local, 10), (PassKind::Full, 30)]);
        h.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_events_is_one_pass() {
        let h = start(vec![converged()]);
        tokio::time::sleep(Duration::from_secs(1)).await;
        for _ in 0..5 {
            let _ = h.triggers.try_send("container event");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let locals = h.passes().iter().filter(|(k, _)| *k == PassKind::Local).count();
        assert_eq!(locals, 1);
        h.finish().await;
    }

    #[tokio::test(start_paused = true)]
    async fn sighup_reloads_and_runs_a_full_pass_at_once() {
        let h = start(vec![converged()]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        h.reload.send(()).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        settle().await;
        let kinds: Vec<_> = h.passes().iter().map(|(k, at)| (*k, at.as_secs())).collect();
        assert_eq!(kinds, [(PassKind::Full, 0), (PassKind::Full, 5)]);
        let fake = h.finish().await;
        assert_eq!(fake.reloads, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_loop_while_it_waits() {
        let h = start(vec![converged()]);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let fake = h.finish().await;
        assert_eq!(fake.fulls, 1);
    }
}
