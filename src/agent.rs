//! `blog-agent run`: the long-running reconcile loop.
//!
//! Each pass: environment (cached after the first success) -> desired SHA by conditional GET
//! (a 304 keeps the cached SHA) -> crash-loop check -> lock -> [`sync::apply`]. Between passes
//! it waits for the jittered poll interval, a Docker event on the managed container (debounced),
//! SIGHUP (reload config) or shutdown. A failing pass is retried with capped, jittered
//! exponential backoff; each problem is logged once when it starts and once when it clears.
//! Nothing here ever stops the serving container because a remote service failed.
//!
//! States, as shown in the systemd `STATUS=` line: `converged`, `degraded` (serving, but
//! something failed: the detail follows), `unconverged` (no healthy container yet).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::backoff::{jittered, Backoff};
use crate::config::Settings;
use crate::engine::Engine;
use crate::environment::{self, Environment};
use crate::imds::TagSource;
use crate::lock;
use crate::registry::CredentialSource;
use crate::release::{Fetched, ObjectLocation, ReleaseSource};
use crate::sha::Sha;
use crate::shutdown::Shutdown;
use crate::signals::Signals;
use crate::spec::{DesiredContainer, LABEL_SHA};
use crate::state::{LastPass, Pause, State};
use crate::sync::{self, Action, Services, SyncError};
use crate::systemd::Notifier;

/// Docker restarts (by its restart policy) of one container before the release is declared
/// crash-looping and rolled back. Three rules out a one-off crash without waiting long.
pub const CRASH_LOOP_RESTARTS: i64 = 3;
/// Restarts must happen within this window of each other to count as a crash loop.
const CRASH_LOOP_WINDOW: Duration = Duration::from_secs(10 * 60);
/// First wait before a crash-looping release is tried again; doubles up to the cap.
const QUARANTINE_FIRST: Duration = Duration::from_secs(60);
const QUARANTINE_CAP: Duration = Duration::from_secs(30 * 60);
/// First retry after a failed pass; doubles up to the poll interval.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Events come in bursts (die, stop, destroy): wait this long and reconcile once.
const EVENT_DEBOUNCE: Duration = Duration::from_millis(250);

/// The desired release as last read from S3.
#[derive(Debug, Clone)]
struct Desired {
    location: ObjectLocation,
    sha: Sha,
    etag: Option<String>,
}

/// A release that crash-looped: not deployed again before `until`; then deployed "on trial",
/// and quarantined for twice as long if it crash-loops again.
#[derive(Debug, Clone)]
struct Quarantine {
    until: Instant,
    backoff: Backoff,
    on_trial: bool,
}

/// The loop's memory between passes.
pub struct Agent<T, R, C> {
    settings: Settings,
    config_path: PathBuf,
    env_flag: Option<String>,
    services: Services<T, R, C>,
    env: Option<Environment>,
    desired: Option<Desired>,
    quarantine: HashMap<Sha, Quarantine>,
    retry: Backoff,
    /// The problem last logged, so each is logged once per change, not on every retry.
    problem: Option<String>,
    /// What is serving, for the status line.
    serving: Option<String>,
    /// Who paused automatic updates, if they are paused.
    paused: Option<String>,
    /// Container id -> (Docker restart count, when first seen at that count).
    restarts: HashMap<String, (i64, Instant)>,
}

/// How a pass ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Converged,
    /// Something failed; the text says what.
    Problem(String),
    Stopped,
}

impl<T: TagSource, R: ReleaseSource, C: CredentialSource> Agent<T, R, C> {
    pub fn new(
        settings: Settings,
        config_path: PathBuf,
        env_flag: Option<String>,
        services: Services<T, R, C>,
    ) -> Self {
        let retry = Backoff::new(RETRY_FIRST, settings.reconcile.interval);
        Agent {
            settings,
            config_path,
            env_flag,
            services,
            env: None,
            desired: None,
            quarantine: HashMap::new(),
            retry,
            problem: None,
            serving: None,
            paused: None,
            restarts: HashMap::new(),
        }
    }

    /// Runs until shutdown. Returns normally on SIGTERM/SIGINT: the blog container keeps running.
    pub async fn run(mut self, notifier: Notifier, mut signals: Signals) {
        let shutdown = signals.shutdown.clone();
        let (trigger_tx, mut trigger_rx) = mpsc::channel::<&'static str>(1);
        let mut events =
            watch_events(self.services.engine.clone(), self.settings.container.name.clone(), trigger_tx.clone());
        let mut watchdog = notifier.watchdog_interval().map(tokio::time::interval);
        let mut ready = false;
        let mut last_status = String::new();
        'outer: loop {
            // A pass is bounded by its own timeouts; past this deadline it is hung, the watchdog
            // pings stop, and systemd restarts the agent.
            let hung_after = Instant::now() + self.pass_deadline();
            let outcome = {
                let pass = self.pass(&shutdown);
                tokio::pin!(pass);
                loop {
                    tokio::select! {
                        out = &mut pass => break out,
                        _ = tick(&mut watchdog) => if Instant::now() < hung_after {
                            notifier.watchdog();
                        } else {
                            tracing::error!("reconcile pass hung; withholding the watchdog ping so systemd restarts the agent");
                        },
                    }
                }
            };
            if outcome == Outcome::Stopped || shutdown.is_requested() {
                break;
            }
            // Events caused by the pass itself (our own create/stop/rename) are not drift.
            while trigger_rx.try_recv().is_ok() {}
            let events_wake = outcome == Outcome::Converged;
            let status = self.status_line(&outcome);
            if status != last_status {
                notifier.status(&status);
                last_status = status;
            }
            if !ready {
                notifier.ready();
                ready = true;
            }
            let delay = self.next_delay(&outcome);
            tracing::debug!(?delay, "next pass");
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    // After a failure the backoff decides when to retry, not the events.
                    Some(why) = trigger_rx.recv(), if events_wake => {
                        tokio::time::sleep(EVENT_DEBOUNCE).await;
                        while trigger_rx.try_recv().is_ok() {}
                        tracing::debug!(why, "reconciling now");
                        break;
                    }
                    Some(()) = signals.reload.recv() => {
                        let old_name = self.settings.container.name.clone();
                        self.reload();
                        if self.settings.container.name != old_name {
                            events.abort();
                            events = watch_events(self.services.engine.clone(), self.settings.container.name.clone(), trigger_tx.clone());
                        }
                        break;
                    }
                    _ = shutdown.requested() => break 'outer,
                    _ = tick(&mut watchdog) => notifier.watchdog(),
                }
            }
        }
        notifier.stopping();
        events.abort();
        tracing::info!("stopped; the blog container keeps running");
    }

    /// Longest a healthy pass can take: every step's own bound, plus slack.
    fn pass_deadline(&self) -> Duration {
        let s = &self.settings;
        s.agent.lock_timeout
            + s.image.pull_timeout
            + s.health.timeout * 3
            + s.container.stop_timeout
            + Duration::from_secs(180)
    }

    /// Re-reads the config file. An invalid file keeps the current settings.
    fn reload(&mut self) {
        match Settings::load(&self.config_path) {
            Ok(settings) if settings == self.settings => tracing::info!("configuration unchanged"),
            Ok(settings) => {
                tracing::info!(config = %self.config_path.display(), "configuration reloaded");
                self.retry.set_cap(settings.reconcile.interval);
                self.settings = settings;
                self.env = None;
                self.desired = None;
            }
            Err(e) => tracing::error!("configuration reload failed, keeping the previous one: {e}"),
        }
    }

    fn next_delay(&mut self, outcome: &Outcome) -> Duration {
        match outcome {
            Outcome::Converged => {
                self.retry.reset();
                jittered(self.settings.reconcile.interval, self.settings.reconcile.jitter)
            }
            _ => self.retry.next_delay(),
        }
    }

    fn status_line(&self, outcome: &Outcome) -> String {
        let env = self.env.as_ref().map(|e| e.name.as_str()).unwrap_or("unknown");
        let serving = self.serving.as_deref().map(|s| &s[..s.len().min(12)]).unwrap_or("nothing");
        let serving = match &self.paused {
            Some(by) => format!("{serving} (updates paused by {by})"),
            None => serving.to_owned(),
        };
        match outcome {
            Outcome::Converged => format!("{env}: serving {serving}; converged"),
            Outcome::Problem(p) if self.serving.is_some() => format!("{env}: serving {serving}; degraded: {p}"),
            Outcome::Problem(p) => format!("{env}: unconverged: {p}"),
            Outcome::Stopped => format!("{env}: stopping"),
        }
    }

    /// Logs `problem` if it differs from the last one; logs recovery when it clears.
    /// Problems are compared by [`problem_key`], so request IDs in AWS errors do not make
    /// every retry look new.
    fn note(&mut self, problem: Option<String>) {
        match (&self.problem, &problem) {
            (None, None) => {}
            (Some(old), None) => tracing::info!(resolved = %old, "recovered"),
            (old, Some(new)) if old.as_deref().map(problem_key) != Some(problem_key(new)) => {
                tracing::warn!(
                    env = self.env.as_ref().map(|e| e.name.as_str()).unwrap_or(""),
                    "{new} (retrying with backoff)"
                )
            }
            _ => tracing::debug!(problem = problem.as_deref().unwrap_or(""), "still failing"),
        }
        self.problem = problem;
    }

    async fn pass(&mut self, shutdown: &Shutdown) -> Outcome {
        let outcome = self.pass_inner(shutdown).await;
        match &outcome {
            Outcome::Converged => LastPass::record(&self.settings.agent.state_dir, None),
            Outcome::Problem(p) => LastPass::record(&self.settings.agent.state_dir, Some(p)),
            Outcome::Stopped => {}
        }
        outcome
    }

    async fn pass_inner(&mut self, shutdown: &Shutdown) -> Outcome {
        match self.try_pass(shutdown).await {
            Ok(problem) => {
                let outcome = match &problem {
                    None => Outcome::Converged,
                    Some(p) => Outcome::Problem(p.clone()),
                };
                self.note(problem);
                outcome
            }
            Err(e) if e.is_cancelled() => Outcome::Stopped,
            Err(e) => {
                let text = e.to_string();
                self.note(Some(text.clone()));
                if shutdown.is_requested() {
                    Outcome::Stopped
                } else {
                    Outcome::Problem(text)
                }
            }
        }
    }

    /// One pass. `Ok(Some(problem))`: the host is serving, but something (S3, a quarantined
    /// release) needs a retry.
    async fn try_pass(&mut self, shutdown: &Shutdown) -> Result<Option<String>, SyncError> {
        let env = match &self.env {
            Some(env) => env.clone(),
            None => {
                let resolve = environment::resolve(self.env_flag.as_deref(), &self.settings, &self.services.tags);
                let env = shutdown.race(resolve).await??;
                tracing::info!(env = %env.name, source = %env.source, "environment {} (from {})", env.name, env.source);
                self.env = Some(env.clone());
                env
            }
        };

        let mut problem = None;
        let location = sync::release_location(&self.settings, &env.name);
        let etag = self.desired.as_ref().filter(|d| d.location == location).and_then(|d| d.etag.clone());
        let fetch = self.services.releases.fetch(&location, etag.as_deref());
        match shutdown.race(fetch).await?.map_err(SyncError::from) {
            Ok(Fetched::Changed(release)) => {
                if self.desired.as_ref().map(|d| &d.sha) != Some(&release.sha) {
                    tracing::info!(env = %env.name, sha = %release.sha, "desired release {} for {}", release.sha, env.name);
                }
                self.desired = Some(Desired { location, sha: release.sha, etag: release.etag });
            }
            Ok(Fetched::Unchanged) => tracing::debug!("release unchanged (304)"),
            Err(e) => problem = Some(e.to_string()),
        }

        // Everything from here on decides what runs: under the lock, so a `sync --sha` or a
        // `pause` that happened meanwhile is seen.
        let _lock =
            shutdown.race(lock::acquire(&self.settings.agent.state_dir, self.settings.agent.lock_timeout)).await??;
        let state = State::load(&self.settings.agent.state_dir);
        let target = match &self.desired {
            Some(d) => d.sha.clone(),
            // S3 unreachable (or bad) before we ever read it: keep serving the last-known-good.
            None => match state.last_good_in(&env.name) {
                Some(good) => {
                    let sha = Sha::parse(&good.sha).map_err(|e| SyncError::Unhealthy {
                        container: self.settings.container.name.clone(),
                        detail: format!("state file holds a bad SHA: {e}"),
                    })?;
                    tracing::info!(sha = %sha, "desired release unknown; using the last-known-good version");
                    sha
                }
                None => return Err(SyncError::Release(self.release_error(problem))),
            },
        };
        let (target, paused) = sync::hold_if_paused(&self.settings, &self.services.engine, &env.name, target).await?;
        if let Some(note) = &paused {
            tracing::debug!("{note}");
        }
        let (target, quarantine_note) = self.avoid_crash_loops(&env, target, &state).await?;
        let Some(target) = target else {
            return Ok(Some(quarantine_note.unwrap_or_default()));
        };
        self.paused = Pause::load(&self.settings.agent.state_dir).map(|p| p.by);

        let desired = DesiredContainer::new(&self.settings, &env.name, &target);
        let applied = match sync::apply(&self.settings, &desired, &self.services, shutdown, false).await {
            Ok(applied) => applied,
            Err(e) if e.is_cancelled() => return Err(e),
            Err(e) => return self.serve_last_good_if_dark(&env, &target, &state, shutdown, e).await,
        };
        if applied.action != Action::Unchanged {
            tracing::info!(env = %env.name, sha = %target, container = %desired.name, "{}", applied.action);
        }
        self.serving = Some(target.to_string());
        Ok(problem.or(quarantine_note))
    }

    /// The desired version could not be deployed (ECR or the registry down, a bad release).
    /// If that leaves the host with nothing serving (a boot, a removed container), the
    /// last-known-good version is started instead, from the local image if it is there.
    /// Returns the original failure as the pass's problem either way, so it is retried.
    async fn serve_last_good_if_dark(
        &mut self,
        env: &Environment,
        target: &Sha,
        state: &State,
        shutdown: &Shutdown,
        failure: SyncError,
    ) -> Result<Option<String>, SyncError> {
        let dark = match self.services.engine.container(&self.settings.container.name).await {
            Ok(current) => current.is_none_or(|c| !c.running),
            Err(_) => false,
        };
        let fallback =
            state.last_good_in(&env.name).filter(|g| g.sha != target.as_str()).and_then(|g| Sha::parse(&g.sha).ok());
        let (true, Some(fallback)) = (dark, fallback) else { return Err(failure) };
        tracing::warn!(env = %env.name, sha = %fallback, "cannot deploy {target} and nothing serves: starting the last-known-good version ({failure})");
        let desired = DesiredContainer::new(&self.settings, &env.name, &fallback);
        sync::apply(&self.settings, &desired, &self.services, shutdown, false).await?;
        self.serving = Some(fallback.to_string());
        Ok(Some(failure.to_string()))
    }

    /// Turns a remembered S3 problem back into the error to report when nothing can be served.
    fn release_error(&self, problem: Option<String>) -> crate::release::ReleaseError {
        let location = sync::release_location(&self.settings, self.env.as_ref().map(|e| e.name.as_str()).unwrap_or(""));
        crate::release::ReleaseError::Unavailable {
            location,
            detail: problem.unwrap_or_else(|| "no release known yet".into()),
        }
    }

    /// Detects a crash-looping release and steers away from it: a release whose container
    /// Docker has restarted [`CRASH_LOOP_RESTARTS`] times is quarantined with exponential
    /// backoff, and the previous good version is deployed meanwhile. Returns the SHA to deploy
    /// (None: leave things as they are) and a note for the status line.
    async fn avoid_crash_loops(
        &mut self,
        env: &Environment,
        target: Sha,
        state: &State,
    ) -> Result<(Option<Sha>, Option<String>), SyncError> {
        let now = Instant::now();
        let current = self.services.engine.container(&self.settings.container.name).await?;
        if let Some(c) = &current {
            let runs_target = c.labels.get(LABEL_SHA).map(String::as_str) == Some(target.as_str());
            let watching = self.quarantine.get(&target).is_none_or(|q| q.on_trial);
            // Docker's RestartCount is lifetime: count only restarts within CRASH_LOOP_WINDOW
            // of a baseline, so three crashes spread over weeks are not a crash loop.
            let baseline = self.restarts.entry(c.id.clone()).or_insert((c.restart_count, now));
            if now.duration_since(baseline.1) > CRASH_LOOP_WINDOW {
                *baseline = (c.restart_count, now);
            }
            let recent_restarts = c.restart_count - baseline.0;
            let current_id = c.id.clone();
            self.restarts.retain(|id, _| *id == current_id);
            if runs_target && recent_restarts >= CRASH_LOOP_RESTARTS && watching {
                let mut backoff = self
                    .quarantine
                    .remove(&target)
                    .map(|q| q.backoff)
                    .unwrap_or_else(|| Backoff::new(QUARANTINE_FIRST, QUARANTINE_CAP));
                let wait = backoff.next_delay();
                tracing::warn!(
                    env = %env.name, sha = %target, container = %c.name, restarts = c.restart_count,
                    "crash loop: Docker restarted the container {} times; rolling back to the previous good version, next try in {}",
                    c.restart_count, humantime::format_duration(Duration::from_secs(wait.as_secs()))
                );
                self.quarantine.insert(target.clone(), Quarantine { until: now + wait, backoff, on_trial: false });
            }
        }
        let Some(q) = self.quarantine.get_mut(&target) else { return Ok((Some(target), None)) };
        if q.on_trial {
            return Ok((Some(target), None));
        }
        if now >= q.until {
            // Try again. The entry keeps its backoff, so another crash loop waits twice as long.
            q.on_trial = true;
            tracing::info!(sha = %target, "trying the crash-looping release again");
            return Ok((Some(target), None));
        }
        let note = format!("release {} is crash-looping; next try in {} s", target.short(), (q.until - now).as_secs());
        let fallback = [&state.last_good, &state.previous_good]
            .into_iter()
            .flatten()
            .find(|g| g.sha != target.as_str() && g.environment == env.name)
            .and_then(|g| Sha::parse(&g.sha).ok());
        Ok((fallback, Some(note)))
    }
}

/// The stable part of a problem's text: what comes before any parenthesis or brace, where
/// SDK errors put request IDs and other per-request detail.
pub fn problem_key(text: &str) -> &str {
    text.split(['(', '{']).next().unwrap_or(text).trim_end()
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

/// Subscribes to Docker events on the managed container and sends a trigger for each.
/// When dockerd goes away (restart, upgrade) it waits with backoff until it answers again,
/// re-subscribes, and triggers a pass, since events may have been missed meanwhile.
fn watch_events(engine: Engine, name: String, triggers: mpsc::Sender<&'static str>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut lost = false;
        loop {
            if engine.ping().await.is_ok() {
                if lost {
                    tracing::info!("Docker is back; re-subscribed to container events");
                    let _ = triggers.try_send("docker reconnected");
                }
                backoff.reset();
                let mut stream = Box::pin(engine.container_events(&name));
                let why = loop {
                    match stream.next().await {
                        Some(Ok(action)) => {
                            tracing::debug!(container = %name, %action, "container event");
                            let _ = triggers.try_send("container event");
                        }
                        Some(Err(e)) => break e.to_string(),
                        None => break "the event stream ended".to_owned(),
                    }
                };
                tracing::warn!(reason = %why, "lost the Docker event stream; reconnecting");
                lost = true;
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::problem_key;

    #[test]
    fn problem_key_ignores_per_request_detail() {
        let a = "cannot read s3://b/k: service error: unhandled error (InternalError): Error { aws_request_id: \"1\" }";
        let b = "cannot read s3://b/k: service error: unhandled error (InternalError): Error { aws_request_id: \"2\" }";
        assert_eq!(problem_key(a), problem_key(b));
        assert_ne!(problem_key(a), problem_key("s3://b/k does not exist: has CI published..."));
    }
}
