//! The bake: for `[health] bake` after a cut-over, the new version is watched while the
//! previous container is kept beside it (running and not routed in switch mode, stopped in
//! publish mode, as `<name>-previous`). A failure in that time reverts to it; a clean end
//! retires it.
//!
//! What watches the new version ([`watch`], one `select!`):
//! - the health check through the host path every [`PROBE_EVERY`], behind one function
//!   ([`Watchers::probe`]); [`FAILURES_IN_A_ROW`] failures in a row trip the bake, one does not;
//! - Docker's events on the container: its process ending (`die`, whatever restarts it after)
//!   trips the bake at once;
//! - [`Watchers::tripped`]: any other watcher (an access-log 5xx share, more checks), a future
//!   that resolves with why it tripped (`std::future::pending()` when there is none).
//!
//! Reads and writes: Docker (inspect, events, logs, stop, remove, rename), the traffic rules
//! through [`Traffic`], and `bake.json` in the state dir ([`BakeRecord`]): the bake in
//! progress, so `status` can show it and an agent started again mid-bake resumes it with the
//! previous container it kept. Decides only whether the bake tripped; who is to blame is
//! [`crate::fleet::verdict`]'s, through [`Trip::failure`].

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, MissedTickBehavior};

use super::traffic::Traffic;
use crate::config::Settings;
use crate::fleet::bake::{self as fleet_bake, BakeOutcome};
use crate::fleet::verdict::{Blame, Failure};
use crate::outside::access_log;
use crate::outside::docker::{ContainerInfo, Engine};
use crate::outside::halts::BakeRecorder;
use crate::outside::health::{self, Exit};
use crate::outside::sts::CallerSource;
use crate::runtime::shutdown::Shutdown;
use crate::sha::Sha;
use crate::spec::LABEL_SHA;
use crate::state::{now_unix, State};

/// How often the health check goes through the host path during a bake: often enough that
/// a release answering 5xx is reverted within a few seconds, rarely enough to be no load.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// Failed checks in a row that trip a bake: one slow answer or dropped connection on a busy
/// host is not a bad release; three seconds of failures are.
pub const FAILURES_IN_A_ROW: u32 = 3;
/// Lines of the reverted container's log kept in the journal.
pub const LOG_LINES: usize = 20;

const FILE: &str = "bake.json";

/// The bake in progress, as written to `bake.json` in the state dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BakeRecord {
    /// The release being baked.
    pub sha: String,
    /// Its container, under `<name>`.
    pub container_id: String,
    /// The container kept for the bake, `<name>-previous`.
    pub previous_id: String,
    /// The release the kept container runs.
    pub previous_sha: Option<String>,
    /// Unix seconds: when the bake started and when it ends.
    pub started: u64,
    pub until: u64,
}

impl BakeRecord {
    /// A bake of `new` (just cut over to) with `kept` beside it, for `settings`' `[health] bake`.
    pub fn new(settings: &Settings, new_id: &str, sha: &Sha, kept: &ContainerInfo) -> BakeRecord {
        let started = now_unix();
        BakeRecord {
            sha: sha.to_string(),
            container_id: new_id.to_owned(),
            previous_id: kept.id.clone(),
            previous_sha: kept.labels.get(LABEL_SHA).cloned(),
            started,
            until: started + settings.health.bake.as_secs().max(1),
        }
    }

    /// The bake in progress on this host, if any (an unreadable file counts as none).
    pub fn load(dir: &Path) -> Option<BakeRecord> {
        let text = std::fs::read(dir.join(FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    pub fn save(&self, dir: &Path) {
        let text = serde_json::to_vec_pretty(self).expect("a bake record serialises");
        if let Err(e) = crate::state::write_atomically(dir, FILE, &text) {
            tracing::warn!("cannot record the bake in progress ({e}): `status` will not show it");
        }
    }

    /// The bake is over (baked, reverted, or ended by a pass's recovery).
    pub fn clear(dir: &Path) {
        match std::fs::remove_file(dir.join(FILE)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove {}: {e}", dir.join(FILE).display()),
        }
    }

    /// Time left at Unix second `now`.
    pub fn remaining(&self, now: u64) -> Duration {
        Duration::from_secs(self.until.saturating_sub(now))
    }

    pub fn short(&self) -> &str {
        &self.sha[..self.sha.len().min(12)]
    }
}

/// What watches the new version besides Docker's events: the seam where more watchers plug in.
pub struct Watchers<P, T> {
    /// One health check of the new version through the host path; `Err` with what it saw.
    /// Called every [`PROBE_EVERY`].
    pub probe: P,
    /// Resolves, with why, when another watcher trips (an access-log 5xx share, more
    /// checks); `std::future::pending()` when there is none.
    pub tripped: T,
}

/// One run of the checks: `Err` with what the failing check saw.
pub type ProbeRun = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// Every health check of `settings` (`url` with `contains`, then each `[[health.check]]`)
/// through the host path, once: the default [`Watchers::probe`]. Each request is bounded so a
/// hung server counts as a failure at the next tick instead of stalling the watch.
pub fn host_path_probe(settings: &Settings) -> impl FnMut() -> ProbeRun {
    let health = settings.health.clone();
    move || {
        let health = health.clone();
        Box::pin(async move {
            let (host, port) = (health.url.host.clone(), health.url.port);
            health::check_all(&health, &host, port, CHECK_TIMEOUT).await.map_err(|failure| failure.to_string())
        })
    }
}

/// One check request's bound during the bake: well under [`PROBE_EVERY`] x the failures
/// that trip it, so three slow answers trip in seconds, not minutes.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The watchers of a bake: every check through the host path ([`host_path_probe`]) and, for a
/// container that writes an access log to stdout, its share of 5xx answers
/// ([`access_log::watch_5xx`], `[health] max_5xx_share`). A container without an access log
/// (busybox httpd) never trips the second; its exit is Docker's event, judged as such.
pub fn watchers(
    settings: &Settings,
    engine: &Engine,
    container: &str,
) -> Watchers<impl FnMut() -> ProbeRun, impl Future<Output = String> + Send + 'static> {
    let (engine, container, limits) = (engine.clone(), container.to_owned(), settings.health.max_5xx);
    let tripped = async move {
        match access_log::watch_5xx(&engine, &container, limits).await {
            Ok(tripped) => format!("its access log: {tripped}"),
            // The container ended (Docker's event judges that) or its log cannot be read: this
            // watcher has nothing more to say.
            Err(e) => {
                tracing::debug!("the access-log watch of {container} ended: {e}");
                std::future::pending().await
            }
        }
    };
    Watchers { probe: host_path_probe(settings), tripped }
}

/// Why a bake tripped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trip {
    /// The health check failed this many times in a row; the last failure.
    Unhealthy { failures: u32, last: String },
    /// The container's process ended (Docker's `die` event), as Docker tells it.
    Exited { exit: Exit, detail: String },
    /// Another watcher tripped ([`Watchers::tripped`]).
    Tripped { detail: String },
}

impl Trip {
    /// The facts for the judgement: a late failure of the new version.
    pub fn failure(&self) -> Failure {
        match self {
            Trip::Unhealthy { .. } | Trip::Tripped { .. } => Failure::LateUnhealthy { detail: self.to_string() },
            Trip::Exited { exit, .. } => {
                Failure::LateExit { exit_code: exit.code, oom_killed: exit.oom_killed, detail: self.to_string() }
            }
        }
    }
}

impl std::fmt::Display for Trip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Trip::Unhealthy { failures, last } => {
                write!(f, "the health check failed {failures} times in a row ({last})")
            }
            Trip::Exited { detail, .. } => write!(f, "the container's process ended ({detail})"),
            Trip::Tripped { detail } => f.write_str(detail),
        }
    }
}

/// How the watch of a bake ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Nothing tripped until the end.
    Clean,
    Tripped(Trip),
    /// Shutdown came first: nothing is decided.
    Interrupted,
}

/// Watches container `new_id` (under `name`) until `until`, with `watchers`.
pub async fn watch<P, Fut, T>(
    engine: &Engine,
    name: &str,
    new_id: &str,
    until: Instant,
    watchers: Watchers<P, T>,
    shutdown: &Shutdown,
) -> Ending
where
    P: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
    T: Future<Output = String>,
{
    let Watchers { mut probe, tripped } = watchers;
    tokio::pin!(tripped);
    let mut events = Box::pin(engine.container_ends(name));
    let mut events_up = true;
    let mut oom = false;
    let mut ticks = tokio::time::interval(PROBE_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut probing: Option<Pin<Box<Fut>>> = None;
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return Ending::Clean,
            _ = shutdown.requested() => return Ending::Interrupted,
            detail = &mut tripped => return Ending::Tripped(Trip::Tripped { detail }),
            event = events.next(), if events_up => match event {
                Some(Ok((action, _))) if action == "oom" => oom = true,
                Some(Ok((action, code))) => {
                    let mut trip = exited(engine, new_id).await;
                    if let Trip::Exited { exit, detail } = &mut trip {
                        // The event's own exit code: Docker may have restarted it already.
                        if let Some(code) = code.filter(|_| action == "die") {
                            exit.code = Some(code);
                            *detail = format!("exit code {code}{}", if oom || exit.oom_killed { ", OOM-killed" } else { "" });
                        }
                        exit.oom_killed |= oom;
                    }
                    return Ending::Tripped(trip);
                }
                Some(Err(e)) => {
                    tracing::warn!(container = %name, error = %e, "lost Docker's events during the bake: its exits are seen by inspecting it every {}", humantime::format_duration(PROBE_EVERY));
                    events_up = false;
                }
                None => events_up = false,
            },
            result = async { probing.as_mut().expect("guarded").await }, if probing.is_some() => {
                probing = None;
                match result {
                    Ok(()) => failures = 0,
                    Err(last) => {
                        failures += 1;
                        tracing::info!(container = %name, failures, "health check failed during the bake: {last}");
                        if failures >= FAILURES_IN_A_ROW {
                            return Ending::Tripped(Trip::Unhealthy { failures, last });
                        }
                    }
                }
            }
            _ = ticks.tick() => {
                if !events_up && !matches!(engine.container(new_id).await, Ok(Some(ref c)) if c.running && c.status != "restarting") {
                    return Ending::Tripped(exited(engine, new_id).await);
                }
                if probing.is_none() {
                    probing = Some(Box::pin(probe()));
                }
            }
        }
    }
}

/// The container's end as Docker has it, right after its `die`.
async fn exited(engine: &Engine, id: &str) -> Trip {
    match engine.container(id).await {
        Ok(Some(c)) => {
            let detail = format!(
                "exit code {}{}",
                c.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "unknown".into()),
                if c.oom_killed { ", OOM-killed" } else { "" },
            );
            Trip::Exited { exit: c.exit(), detail }
        }
        Ok(None) => Trip::Exited { exit: Exit::default(), detail: "the container was removed".into() },
        Err(e) => Trip::Exited { exit: Exit::default(), detail: format!("cannot inspect it: {e}") },
    }
}

/// How a bake ended on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing tripped: the previous container is retired; the release is baked here.
    Baked { sha: Sha },
    /// It tripped: the traffic went back to the kept container; the new one is retired.
    Reverted { sha: Sha, to: Option<Sha>, trip: Trip, restored: String },
    /// It tripped, but the kept container could not take the traffic back: the new one is left
    /// serving, and the next pass decides (the release is quarantined here all the same).
    Unreverted { sha: Sha, trip: Trip, why: String },
    /// Shutdown came first: both containers are left as they are and `bake.json` stays, so
    /// the next start resumes the bake for the time left.
    Interrupted,
}

/// Watches the bake `record` to its end, then retires the kept container or reverts to it.
pub async fn run<P, Fut, T>(
    engine: &Engine,
    traffic: Traffic<'_>,
    settings: &Settings,
    record: &BakeRecord,
    watchers: Watchers<P, T>,
    shutdown: &Shutdown,
) -> Outcome
where
    P: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
    T: Future<Output = String>,
{
    let dir = &settings.agent.state_dir;
    let name = &settings.container.name;
    let left = record.remaining(now_unix());
    tracing::info!(
        container = %name, sha = %record.sha, previous = record.previous_sha.as_deref().unwrap_or("unknown"),
        bake_left_s = left.as_secs(),
        "baking {} for {}: the previous version is kept as {name}-previous until then",
        record.short(), humantime::format_duration(left)
    );
    let sha = Sha::parse(&record.sha).expect("a bake record names a full SHA");
    let ending = watch(engine, name, &record.container_id, Instant::now() + left, watchers, shutdown).await;
    let outcome = finish(engine, traffic, settings, record, &sha, ending).await;
    if outcome != Outcome::Interrupted {
        BakeRecord::clear(dir);
    }
    outcome
}

async fn finish(
    engine: &Engine,
    traffic: Traffic<'_>,
    settings: &Settings,
    record: &BakeRecord,
    sha: &Sha,
    ending: Ending,
) -> Outcome {
    let name = &settings.container.name;
    let previous = engine.container(&record.previous_id).await.ok().flatten().filter(ContainerInfo::is_managed);
    match ending {
        Ending::Interrupted => {
            tracing::warn!(container = %name, sha = %sha, "shutdown during the bake of {}: it keeps serving and {name}-previous is kept; the next start resumes the bake for the time left", sha.short());
            Outcome::Interrupted
        }
        Ending::Clean => {
            if let Some(previous) = &previous {
                traffic.retire(engine, settings, previous).await;
            }
            tracing::info!(container = %name, sha = %sha, "baked {}: nothing tripped in {}; retired the previous version", sha.short(), humantime::format_duration(settings.health.bake));
            Outcome::Baked { sha: sha.clone() }
        }
        Ending::Tripped(trip) => {
            tracing::warn!(container = %name, sha = %sha, "the bake of {} tripped: {trip}; reverting to the previous version", sha.short());
            let Some(previous) = previous else {
                let why = format!("{name}-previous is gone (removed by hand?)");
                tracing::error!(container = %name, sha = %sha, "cannot revert {}: {why}; it keeps serving", sha.short());
                return Outcome::Unreverted { sha: sha.clone(), trip, why };
            };
            let lines = engine.logs_tail(&record.container_id, LOG_LINES).await;
            for line in &lines {
                tracing::warn!(container = %name, sha = %sha, "reverted {}: {line}", sha.short());
            }
            match traffic.revert(engine, settings, &record.container_id, &previous).await {
                Ok(restored) => {
                    forget_good(&settings.agent.state_dir, sha);
                    let to = record.previous_sha.as_deref().and_then(|s| Sha::parse(s).ok());
                    tracing::warn!(container = %name, sha = %sha, to = record.previous_sha.as_deref().unwrap_or("unknown"), "reverted {}: {restored}", sha.short());
                    Outcome::Reverted { sha: sha.clone(), to, trip, restored }
                }
                Err(e) => {
                    let why = e.to_string();
                    tracing::error!(container = %name, sha = %sha, "reverting {} failed: {why}", sha.short());
                    Outcome::Unreverted { sha: sha.clone(), trip, why }
                }
            }
        }
    }
}

/// After a revert, `sha` is no longer this host's last-known-good: the one before it is again.
fn forget_good(dir: &Path, sha: &Sha) {
    let mut state = State::load(dir);
    if state.last_good.as_ref().is_none_or(|g| g.sha != sha.as_str()) {
        return;
    }
    state.last_good = state.previous_good.take();
    if let Err(e) = state.save(dir) {
        tracing::warn!("cannot record the last-known-good version after the revert: {e}");
    }
}

/// Where the outcome of a bake leaves this host: its record beside the votes (per environment,
/// SHA and host, [`crate::fleet::bake`]), which `promote` reads as evidence. Written under this
/// host's AWS caller identity, as its votes are; a record that cannot be written is logged and
/// the bake's outcome on this host stands.
#[allow(clippy::too_many_arguments)]
pub async fn report_bake_outcome(
    halts: &impl BakeRecorder,
    caller: &impl CallerSource,
    prefix: &str,
    environment: &str,
    instance_id: &str,
    outcome: &Outcome,
    blame: Option<Blame>,
) {
    let (sha, fleet_outcome) = match outcome {
        Outcome::Baked { sha } => (sha, BakeOutcome::Baked),
        Outcome::Reverted { sha, trip, .. } | Outcome::Unreverted { sha, trip, .. } => {
            let reason: String = trip.to_string().chars().take(MAX_REASON_CHARS).collect();
            (sha, BakeOutcome::Reverted { reason, blame: blame.unwrap_or(Blame::Release) })
        }
        Outcome::Interrupted => return,
    };
    let voter = match caller.caller_identity().await {
        Ok(identity) => identity.user_id,
        Err(e) => {
            tracing::warn!(sha = %sha, "no bake record for {}: this host's AWS identity, which names it, is unknown ({e})", sha.short());
            return;
        }
    };
    let record = fleet_bake::BakeRecord {
        sha: sha.to_string(),
        environment: environment.to_owned(),
        voter,
        instance_id: instance_id.to_owned(),
        outcome: fleet_outcome,
        at: crate::state::now_unix(),
    };
    match halts.record_bake(prefix, &record).await {
        Ok(true) => {
            tracing::info!(sha = %sha, env = environment, outcome = record.outcome.kind().name(), "bake record written: {} {} here", sha.short(), record.outcome.kind().name())
        }
        Ok(false) => tracing::info!(sha = %sha, "this host's bake record of {} was there already", sha.short()),
        Err(e) => tracing::warn!(sha = %sha, "could not write the bake record of {}: {e}", sha.short()),
    }
}

/// A revert's reason in its record: the trip's first words are what a person needs.
const MAX_REASON_CHARS: usize = 300;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trip_is_a_late_failure_for_the_judgement() {
        use crate::fleet::verdict::{judge, History, Rule};
        let cases = [
            (Trip::Unhealthy { failures: 3, last: "HTTP 500".into() }, Rule::UnhealthyInBake),
            (Trip::Tripped { detail: "5xx share 40% of 50 requests".into() }, Rule::UnhealthyInBake),
            (Trip::Exited { exit: Exit { code: Some(1), oom_killed: false }, detail: "x".into() }, Rule::ExitedInBake),
            (
                Trip::Exited { exit: Exit { code: Some(137), oom_killed: true }, detail: "x".into() },
                Rule::KilledFromOutside,
            ),
            (
                Trip::Exited { exit: Exit { code: Some(137), oom_killed: false }, detail: "x".into() },
                Rule::KilledFromOutside,
            ),
        ];
        for (trip, rule) in cases {
            assert_eq!(judge(&trip.failure(), &History::default()).rule, rule, "{trip}");
        }
    }

    #[test]
    fn a_bake_record_says_the_time_left() {
        let record = BakeRecord {
            sha: "a".repeat(40),
            container_id: "new".into(),
            previous_id: "old".into(),
            previous_sha: None,
            started: 1000,
            until: 1060,
        };
        assert_eq!(record.remaining(1000), Duration::from_secs(60));
        assert_eq!(record.remaining(1059), Duration::from_secs(1));
        assert_eq!(record.remaining(2000), Duration::ZERO);
        let dir = std::env::temp_dir().join(format!("blog-agent-bake-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        record.save(&dir);
        assert_eq!(BakeRecord::load(&dir), Some(record));
        BakeRecord::clear(&dir);
        assert_eq!(BakeRecord::load(&dir), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
