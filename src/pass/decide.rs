//! Decide purely: which release this host runs, why, and the ordered steps to get there.
//!
//! Every rule about *which* release runs lives here, in one function with one table of cases:
//! S3's SHA or an operator's `sync --sha`; a pause (run what the container carries, else the
//! pinned SHA, else last-known-good); S3 unreadable (last-known-good); a quarantined release
//! (crash loop or repeated failed cut-overs: the last good one instead); the rescue when the
//! target cannot be had and nothing serves; and the repair of an interrupted deploy's
//! leftovers; and the fleet's say over S3's release: its staged rollout (not before this host's
//! wave, [`crate::fleet::rollout`]) and its halt ([`crate::fleet::halt`]); and trust: nothing
//! outside the [`Catalog`] of verified releases is deployed ([`crate::pass::desired`]), and a
//! refused release object leaves what runs. It reads a
//! [`Snapshot`] and never touches Docker, S3 or the clock: `now` is an argument. `sync`,
//! `sync --dry-run` and `run` all carry out (or print) the same [`Decision`].

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::plan::{self, Plan};
use super::snapshot::{aside, Snapshot, PREVIOUS};
use crate::config::{Settings, TrafficMode};
use crate::fleet::halt::Marker;
use crate::fleet::rollout::{self, Gate};
use crate::outside::docker::ContainerInfo;
use crate::pass::desired::{Catalog, Desired, Published};
use crate::sha::Sha;
use crate::spec::ContainerSpec;

/// What the outside asks this host to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wanted {
    /// The SHA the environment's S3 object names.
    Published(Sha),
    /// `sync --sha`: an operator's explicit choice. It pauses updates itself, so a pause does
    /// not hold it back.
    Operator(Sha),
    /// The SHA the S3 object names, refused (unsigned, bad signature, a replay): it never
    /// runs; `newest` is the newest verified release of the object's history, for a host with
    /// nothing serving.
    Refused { release: Sha, reason: String, newest: Option<Sha> },
    /// S3 has not been read successfully yet.
    Unknown,
}

impl From<&Desired> for Wanted {
    /// What the decision is asked to run: the published release when it is verified, else its
    /// refusal and the newest verified release of the history.
    fn from(desired: &Desired) -> Wanted {
        match &desired.published {
            Published::Verified(v) => Wanted::Published(v.sha.clone()),
            Published::Refused { sha, refusal } => {
                Wanted::Refused { release: sha.clone(), reason: refusal.to_string(), newest: desired.newest_verified() }
            }
        }
    }
}

/// Everything [`decide`] looks at.
pub struct Inputs<'a> {
    pub settings: &'a Settings,
    pub environment: &'a str,
    pub wanted: &'a Wanted,
    pub snapshot: &'a Snapshot,
    /// Releases held back (crash loop, repeated failed cut-overs) until the given instant.
    pub quarantine: &'a HashMap<Sha, Instant>,
    pub now: Instant,
    /// The published release's staged rollout; `None`: no wave to wait for (a manual `sync`,
    /// `[rollout] spread` zero, or S3 gave no publication time).
    pub rollout: Option<RolloutGate>,
    /// The halt marker of the published SHA, when it is halted for this environment, with
    /// its rollback target verified ([`crate::pass::desired::resolve_rollback_target`]).
    pub halted: Option<&'a Marker>,
    /// The published SHA's halt has not been read since this host's wave opened (a canary may
    /// have halted it meanwhile): a host that serves something keeps it until a read.
    pub halt_unconfirmed: bool,
    /// The releases that may be deployed, and the digest each is pulled by.
    pub catalog: &'a Catalog,
}

/// When this host's wave of a published release opens: see [`rollout::gate`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RolloutGate {
    /// This host's seed, in [0, 1).
    pub seed: f64,
    pub spread: Duration,
    /// The release object's Last-Modified.
    pub published_at: SystemTime,
    /// The wall clock now.
    pub now: SystemTime,
}

/// Why the target was chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// S3 names it.
    Published,
    /// An operator named it with `sync --sha`.
    Operator,
    /// S3 is unreadable and this is the last version that served here.
    LastGood,
    /// Automatic updates are paused: the host stays on what it runs (or was pinned to).
    Paused { by: String, reason: Option<String>, published: Option<Sha> },
    /// `release` is quarantined for `retry_in`; the target is the last good version instead
    /// (`None` target: nothing good to fall back to, so nothing changes).
    Quarantined { release: Sha, retry_in: Duration },
    /// S3 unreadable and nothing ever served here: nothing to run yet.
    NothingKnown,
    /// S3 names `release`, which may not run (`reason`: unsigned, bad signature, replay): the
    /// host keeps what it runs, or with nothing takes the newest verified release.
    Refused { release: Sha, reason: String },
    /// The target `release` is not a verified release of the environment (signatures are
    /// required): nothing is deployed.
    Unverified { release: Sha },
    /// S3 names `release` and this host's wave is open, but the release's halt has not been
    /// read since: the host keeps what it runs until the next read.
    Confirming { release: Sha },
    /// S3 names `release`, but this host's rollout wave opens only at `until` (`remaining`
    /// from now): the host stays on what it runs meanwhile.
    Waiting { release: Sha, until: SystemTime, remaining: Duration },
    /// S3 names `release`, which is halted for this environment: the host stays on what it
    /// runs, or with nothing of ours under the name takes the SHA the halting host rolled back
    /// to (else the last good one).
    Halted { release: Sha, reason: String, rolled_back_to: Option<Sha> },
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Published => f.write_str("the release S3 names"),
            Why::Operator => f.write_str("named by the operator (sync --sha)"),
            Why::LastGood => f.write_str("S3 unreadable: the last-known-good version"),
            Why::Paused { by, reason, published } => {
                write!(f, "automatic updates paused by {by}")?;
                if let Some(reason) = reason {
                    write!(f, " ({reason})")?;
                }
                if let Some(published) = published {
                    write!(f, "; S3 has {}", published.short())?;
                }
                Ok(())
            }
            Why::Quarantined { release, retry_in } => write!(
                f,
                "release {} is quarantined (crash loop or failed cut-overs); next try in {} s",
                release.short(),
                retry_in.as_secs()
            ),
            Why::NothingKnown => f.write_str("no release known yet: S3 unreadable and nothing has served here"),
            Why::Refused { release, reason } => write!(f, "release {} is refused: {reason}", release.short()),
            Why::Unverified { release } => write!(
                f,
                "{} is not a signed release of this environment ([release] public_key): not deploying it",
                release.short()
            ),
            Why::Confirming { release } => write!(
                f,
                "this host's wave of {} is open; its halt is read again before it is applied",
                release.short()
            ),
            Why::Waiting { release, until, remaining } => write!(
                f,
                "release {} rolls out in waves: this host's turn is at {} (in {} s)",
                release.short(),
                humantime::format_rfc3339_seconds(*until),
                remaining.as_secs_f64().ceil() as u64
            ),
            Why::Halted { release, reason, .. } => write!(
                f,
                "release {} is halted for this environment ({reason}); `blog-agent unhalt {release}` lets it go on",
                release.short()
            ),
        }
    }
}

/// Repairs of what an interrupted deploy left behind, done before the main step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// A leftover of ours (`-candidate`, `-next`, `-failed`) that nothing needs.
    Remove { container: String, id: String },
    /// `-previous` with nothing under `<name>`: the last serving version caught mid-cut-over.
    RestorePrevious { id: String, start: bool },
    /// `-previous` beside a new `<name>`: interrupted before the new one was proven. Probe it;
    /// keep it (remove `-previous`) or roll back to `-previous`.
    ProveInterrupted { new_id: String, new_restarts: i64, previous_id: String },
}

/// What one pass will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The release to run; `None`: change nothing.
    pub target: Option<Sha>,
    pub why: Why,
    /// Done first, in order.
    pub recovery: Vec<Recovery>,
    /// The main step for `target` (after the recovery); `None` when there is no target.
    pub plan: Option<Plan>,
    /// Set when a container blog-agent did not create is in the way of the plan: the pass
    /// stops with this message instead of touching it.
    pub blocked: Option<String>,
    /// If the plan fails and nothing serves afterwards, deploy this instead (last-known-good).
    pub fallback: Option<Sha>,
}

impl Decision {
    /// True when the decision changes nothing on the host.
    pub fn is_noop(&self) -> bool {
        self.recovery.is_empty() && self.blocked.is_none() && matches!(self.plan, None | Some(Plan::Converged))
    }
}

/// The decision. Pure: same inputs, same answer.
pub fn decide(inputs: &Inputs<'_>) -> Decision {
    let snapshot = inputs.snapshot;
    let (recovery, main_after) = recover(snapshot);
    let main_sha = main_after.as_ref().filter(|c| c.is_managed()).and_then(|c| c.labels.get(crate::spec::LABEL_SHA));
    let last_good = snapshot.state.last_good_in(inputs.environment).and_then(|g| Sha::parse(&g.sha).ok());

    // 1. What the outside asks for, and the pause that may hold it back.
    let (mut target, mut why) = match inputs.wanted {
        Wanted::Operator(sha) => (Some(sha.clone()), Why::Operator),
        Wanted::Published(sha) => (Some(sha.clone()), Why::Published),
        Wanted::Refused { release, reason, newest } => (
            main_sha.and_then(|s| Sha::parse(s).ok()).or_else(|| newest.clone()).or_else(|| last_good.clone()),
            Why::Refused { release: release.clone(), reason: reason.clone() },
        ),
        Wanted::Unknown => match &last_good {
            Some(good) => (Some(good.clone()), Why::LastGood),
            None => (None, Why::NothingKnown),
        },
    };
    if let (Some(pause), false) = (&snapshot.pause, matches!(inputs.wanted, Wanted::Operator(_))) {
        let held = plan::paused_target(
            main_sha.map(String::as_str),
            pause.pinned_sha.as_deref(),
            last_good.as_ref().map(Sha::as_str),
        )
        .and_then(|s| Sha::parse(s).ok());
        if let Some(held) = held {
            if target.as_ref() != Some(&held) {
                let published = match inputs.wanted {
                    Wanted::Published(sha) => Some(sha.clone()),
                    _ => None,
                };
                why = Why::Paused { by: pause.by.clone(), reason: pause.reason.clone(), published };
                target = Some(held);
            }
        }
    }

    // 2. The fleet's say over S3's release (not over a pause, a pin or last-known-good): a
    //    halted release is never applied; a new one waits for this host's wave, unless
    //    nothing of ours is here to serve meanwhile.
    if let (Wanted::Published(published), Why::Published) = (inputs.wanted, &why) {
        let running = main_sha.and_then(|s| Sha::parse(s).ok());
        if let Some(marker) = inputs.halted.filter(|m| m.sha == published.as_str()) {
            let rolled_back_to = marker.rolled_back_to_sha().filter(|s| s != published);
            target =
                running.or_else(|| rolled_back_to.clone()).or_else(|| last_good.clone().filter(|g| g != published));
            why = Why::Halted {
                release: published.clone(),
                reason: crate::sha::safe_text(&marker.reason),
                rolled_back_to,
            };
        } else if let (Some(gate), Some(running)) = (inputs.rollout, running.filter(|r| r != published)) {
            match rollout::gate(gate.published_at, gate.seed, gate.spread, gate.now, false) {
                Gate::Wait { until, remaining } => {
                    why = Why::Waiting { release: published.clone(), until, remaining };
                    target = Some(running);
                }
                Gate::Now if inputs.halt_unconfirmed => {
                    why = Why::Confirming { release: published.clone() };
                    target = Some(running);
                }
                Gate::Now => {}
            }
        }
    }

    // 3. A quarantined release is not deployed before its time: the last good one instead.
    if let Some(bad) = target.clone() {
        if let Some(until) = inputs.quarantine.get(&bad).filter(|until| **until > inputs.now) {
            let good = [&snapshot.state.last_good, &snapshot.state.previous_good]
                .into_iter()
                .flatten()
                .find(|g| g.sha != bad.as_str() && g.environment == inputs.environment)
                .and_then(|g| Sha::parse(&g.sha).ok())
                // Held back too (its own cut-over kept failing here): change nothing, rather
                // than stop the running site for another try.
                .filter(|g| inputs.quarantine.get(g).is_none_or(|until| *until <= inputs.now));
            why = Why::Quarantined { release: bad, retry_in: *until - inputs.now };
            target = good;
        }
    }

    // 4. Nothing unverified is deployed: what runs may stay, anything else must be in the
    //    catalog of verified releases.
    let running = main_sha.and_then(|s| Sha::parse(s).ok());
    if let Some(unverified) = target.clone().filter(|t| Some(t) != running.as_ref() && !inputs.catalog.allows(t)) {
        why = Why::Unverified { release: unverified };
        target = None;
    }

    // 5. The main step, and what to fall back to if it fails on a dark host.
    let Some(target_sha) = target.clone() else {
        return Decision { target, why, recovery, plan: None, blocked: None, fallback: None };
    };
    let desired = ContainerSpec::new(inputs.settings, inputs.environment, &target_sha);
    let step =
        plan::plan(target_sha.as_str(), &desired.spec_hash(), main_after.as_ref().map(|c| c.observed()).as_ref());
    let blocked = match (&step, &snapshot.previous) {
        (Plan::Deploy { replace: Some(_), .. }, Some(prev)) if !prev.is_managed() => Some(format!(
            "a container named {} that blog-agent did not create is in the way of the cut-over: rename or remove it",
            aside(&snapshot.name, PREVIOUS)
        )),
        _ => None,
    };
    let quarantined = |sha: &Sha| inputs.quarantine.get(sha).is_some_and(|until| *until > inputs.now);
    let halted = |sha: &Sha| inputs.halted.is_some_and(|m| m.sha == sha.as_str());
    let fallback = match &step {
        Plan::Deploy { .. } => {
            last_good.filter(|g| *g != target_sha && !quarantined(g) && !halted(g) && inputs.catalog.allows(g))
        }
        _ => None,
    };
    Decision { target, why, recovery, plan: Some(step), blocked, fallback }
}

/// The leftover repairs, and `<name>` as it will be after them.
fn recover(snapshot: &Snapshot) -> (Vec<Recovery>, Option<ContainerInfo>) {
    let mut steps = Vec::new();
    let ours = |c: &Option<ContainerInfo>| c.clone().filter(ContainerInfo::is_managed);
    for leftover in [ours(&snapshot.candidate), ours(&snapshot.next), ours(&snapshot.failed)].into_iter().flatten() {
        steps.push(Recovery::Remove { container: leftover.name.clone(), id: leftover.id.clone() });
    }
    let mut main = snapshot.main.clone();
    if let Some(prev) = ours(&snapshot.previous) {
        match &snapshot.main {
            None => {
                steps.push(Recovery::RestorePrevious { id: prev.id.clone(), start: !prev.running });
                main = Some(ContainerInfo { name: snapshot.name.clone(), running: true, ..prev });
            }
            Some(new) if new.is_managed() => steps.push(Recovery::ProveInterrupted {
                new_id: new.id.clone(),
                new_restarts: new.restart_count,
                previous_id: prev.id.clone(),
            }),
            // Someone else's container took the name: ours is replaced anyway; the cut-over
            // clears the stale `-previous`.
            Some(_) => {}
        }
    }
    (steps, main)
}

/// The steps of `decision` in words, for `sync --dry-run`. `image_present`: the target's image
/// is already on the host (no pull).
pub fn describe(decision: &Decision, settings: &Settings, environment: &str, image_present: bool) -> Vec<String> {
    let mut lines = Vec::new();
    let name = &settings.container.name;
    for step in &decision.recovery {
        lines.push(match step {
            Recovery::Remove { container, .. } => format!("remove {container}, left over from an interrupted deploy"),
            Recovery::RestorePrevious { .. } => {
                format!("put {name}-previous back as {name}: an interrupted deploy left nothing under {name}")
            }
            Recovery::ProveInterrupted { .. } => format!(
                "probe {name}, left unproven by an interrupted deploy: keep it and remove {name}-previous, or restore {name}-previous"
            ),
        });
    }
    let Some(target) = &decision.target else {
        lines.push(format!("change nothing: {}", decision.why));
        return lines;
    };
    if !matches!(decision.why, Why::Published | Why::Operator) {
        lines.push(format!("target {}: {}", target.short(), decision.why));
    }
    if let Some(blocked) = &decision.blocked {
        lines.push(format!("stop: {blocked}"));
        return lines;
    }
    let desired = ContainerSpec::new(settings, environment, target);
    match &decision.plan {
        None | Some(Plan::Converged) => lines.push(format!("nothing to do: {name} already runs {target}")),
        Some(Plan::Restart { .. }) => {
            lines.push(format!("start the stopped container {name} ({target}) and probe {}", settings.health.url))
        }
        Some(Plan::Deploy { reason, replace }) => {
            lines.push(format!("why: {reason}"));
            lines.push(if image_present {
                format!("image {} is already on this host: no pull", desired.image)
            } else {
                format!("get an ECR token and pull {}", desired.image)
            });
            let ports: Vec<String> = desired.ports.iter().map(|p| p.to_string()).collect();
            if settings.traffic.mode == TrafficMode::Switch {
                if replace.is_some() {
                    lines.push(format!("rename {name} to {name}-previous (it keeps serving)"));
                }
                lines.push(format!(
                    "start {name} from {} (no published ports) and probe port {} path {} over the Docker bridge",
                    desired.image,
                    desired.probe_port(),
                    settings.health.url.path
                ));
                lines.push(format!(
                    "switch traffic: point host ports {} at the new container's address (one atomic rule change), then probe {}",
                    ports.join(", "),
                    settings.health.url
                ));
                if replace.is_some() {
                    lines.push(format!(
                        "stop {name}-previous with its image's stop signal (in-flight requests finish) and remove it"
                    ));
                }
            } else {
                if replace.is_some() {
                    lines.push(format!(
                        "run {name}-candidate (no published ports) and probe port {} path {} over the Docker bridge",
                        desired.probe_port(),
                        settings.health.url.path
                    ));
                    lines.push(format!("stop {name} and keep it aside as {name}-previous"));
                }
                lines.push(format!(
                    "start {name} from {} on ports {} and probe {}",
                    desired.image,
                    ports.join(", "),
                    settings.health.url
                ));
                if replace.is_some() {
                    lines.push(format!("remove {name}-previous once the new version is healthy (put it back if not)"));
                }
            }
            if let Some(fallback) = &decision.fallback {
                lines.push(format!("if that fails and nothing serves: start the last-known-good {}", fallback.short()));
            }
            lines.push(format!(
                "remove images of {} beyond the newest {} not in use",
                settings.image.repository, settings.reconcile.keep_images
            ));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap as Map;
    use std::path::Path;

    use super::*;
    use crate::pass::plan::Reason;
    use crate::spec::{LABEL_MANAGED, LABEL_SHA, LABEL_SPEC_HASH};
    use crate::state::{GoodRelease, Pause, State};

    const ENV: &str = "staging";

    fn settings() -> Settings {
        Settings::parse(
            "[release]\nbucket = \"b\"\n[image]\nrepository = \"127.0.0.1:5000/blog\"\n[environment]\nname = \"staging\"\n",
            Path::new("test.toml"),
        )
        .expect("test config")
    }

    fn sha(c: char) -> Sha {
        Sha::parse(&c.to_string().repeat(40)).unwrap()
    }

    /// A container of ours running `sha` with the spec the test settings give it.
    fn ours(name: &str, id: &str, s: &Sha, running: bool) -> ContainerInfo {
        let spec = ContainerSpec::new(&settings(), ENV, s).spec_hash();
        ContainerInfo {
            id: id.into(),
            name: name.into(),
            running,
            status: if running { "running" } else { "exited" }.into(),
            exit_code: None,
            labels: Map::from([
                (LABEL_MANAGED.into(), "true".into()),
                (LABEL_SHA.into(), s.to_string()),
                (LABEL_SPEC_HASH.into(), spec),
            ]),
            ip: None,
            started_at: None,
            restart_count: 0,
            oom_killed: false,
        }
    }

    fn foreign(name: &str, id: &str) -> ContainerInfo {
        ContainerInfo { labels: Map::new(), ..ours(name, id, &sha('f'), true) }
    }

    fn good(s: &Sha, env: &str) -> GoodRelease {
        GoodRelease { sha: s.to_string(), digest: "d".into(), environment: env.into(), at: 0, since: None }
    }

    fn pause(pinned: Option<&Sha>) -> Pause {
        Pause {
            by: "alice".into(),
            reason: None,
            at: 0,
            pinned_sha: pinned.map(|s| s.to_string()),
            pinned_digest: None,
        }
    }

    fn snap() -> Snapshot {
        Snapshot { name: "blog".into(), ..Default::default() }
    }

    struct Case {
        name: &'static str,
        wanted: Wanted,
        snapshot: Snapshot,
        quarantined: Vec<Sha>,
        target: Option<Sha>,
        why: &'static str,
        recovery: Vec<&'static str>,
        plan: Option<&'static str>,
        blocked: bool,
        fallback: Option<Sha>,
        rollout: Option<RolloutGate>,
        halted: Option<Marker>,
        halt_unconfirmed: bool,
        catalog: Catalog,
    }

    fn case(name: &'static str, wanted: Wanted, snapshot: Snapshot) -> Case {
        Case {
            name,
            wanted,
            snapshot,
            quarantined: vec![],
            target: None,
            why: "",
            recovery: vec![],
            plan: None,
            blocked: false,
            fallback: None,
            rollout: None,
            halted: None,
            halt_unconfirmed: false,
            catalog: Catalog::open(),
        }
    }

    /// Published at T0; this host's seed 0.5 of a 10 minute spread opens its wave at T0 + 300 s.
    const T0: u64 = 1_750_000_000;

    fn gate_at(now: u64) -> RolloutGate {
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        RolloutGate { seed: 0.5, spread: Duration::from_secs(600), published_at: at(T0), now: at(now) }
    }

    fn marker(halted: &Sha, rolled_back_to: Option<&Sha>) -> Marker {
        Marker {
            sha: halted.to_string(),
            environment: ENV.into(),
            instance_id: "i-0123456789abcdef0".into(),
            reason: "candidate probe: HTTP 500".into(),
            at: T0,
            rolled_back_to: rolled_back_to.map(Sha::to_string),
            by: None,
        }
    }

    impl Case {
        fn expect(mut self, target: Option<Sha>, why: &'static str, plan: Option<&'static str>) -> Case {
            self.target = target;
            self.why = why;
            self.plan = plan;
            self
        }
        fn recovery(mut self, steps: &[&'static str]) -> Case {
            self.recovery = steps.to_vec();
            self
        }
        fn fallback(mut self, s: Sha) -> Case {
            self.fallback = Some(s);
            self
        }
        fn quarantine(mut self, s: Sha) -> Case {
            self.quarantined.push(s);
            self
        }
        fn blocked(mut self) -> Case {
            self.blocked = true;
            self
        }
        /// Just published: this host's wave is 300 s away.
        fn before_wave(mut self) -> Case {
            self.rollout = Some(gate_at(T0 + 10));
            self
        }
        /// Published long enough ago: this host's wave is open.
        fn wave_open(mut self) -> Case {
            self.rollout = Some(gate_at(T0 + 300));
            self
        }
        fn halted(mut self, marker: Marker) -> Case {
            self.halted = Some(marker);
            self
        }
        /// The halt was not read since the wave opened.
        fn unconfirmed(mut self) -> Case {
            self.halt_unconfirmed = true;
            self
        }
        /// Signatures required; only `verified` may be deployed.
        fn verified(mut self, verified: &[&Sha]) -> Case {
            let mut catalog = Catalog::new(true);
            for sha in verified {
                catalog.add_for_tests(sha);
            }
            self.catalog = catalog;
            self
        }
    }

    fn why_name(why: &Why) -> &'static str {
        match why {
            Why::Published => "published",
            Why::Operator => "operator",
            Why::LastGood => "last-good",
            Why::Paused { .. } => "paused",
            Why::Quarantined { .. } => "quarantined",
            Why::NothingKnown => "nothing-known",
            Why::Waiting { .. } => "waiting",
            Why::Halted { .. } => "halted",
            Why::Refused { .. } => "refused",
            Why::Unverified { .. } => "unverified",
            Why::Confirming { .. } => "confirming",
        }
    }

    fn plan_name(plan: &Plan) -> &'static str {
        match plan {
            Plan::Converged => "converged",
            Plan::Restart { .. } => "restart",
            Plan::Deploy { reason: Reason::NoContainer, .. } => "deploy:none",
            Plan::Deploy { reason: Reason::NewRelease { .. }, .. } => "deploy:new",
            Plan::Deploy { reason: Reason::SpecChanged, .. } => "deploy:spec",
            Plan::Deploy { reason: Reason::Foreign, .. } => "deploy:foreign",
        }
    }

    fn recovery_name(r: &Recovery) -> &'static str {
        match r {
            Recovery::Remove { .. } => "remove",
            Recovery::RestorePrevious { start: true, .. } => "restore+start",
            Recovery::RestorePrevious { start: false, .. } => "restore",
            Recovery::ProveInterrupted { .. } => "prove",
        }
    }

    #[test]
    fn table() {
        let (a, b, c) = (sha('a'), sha('b'), sha('c'));
        let with = |f: &dyn Fn(&mut Snapshot)| {
            let mut s = snap();
            f(&mut s);
            s
        };
        let state = |last: Option<(&Sha, &str)>, prev: Option<(&Sha, &str)>| State {
            last_good: last.map(|(s, e)| good(s, e)),
            previous_good: prev.map(|(s, e)| good(s, e)),
            proven: None,
        };
        let pub_a = Wanted::Published(a.clone());
        let refused_a = Wanted::Refused { release: a.clone(), reason: "unsigned".into(), newest: Some(c.clone()) };
        let cases = vec![
            // The plain cases.
            case("empty host, S3 names a", pub_a.clone(), snap()).expect(
                Some(a.clone()),
                "published",
                Some("deploy:none"),
            ),
            case("converged", pub_a.clone(), with(&|s| s.main = Some(ours("blog", "c1", &a, true)))).expect(
                Some(a.clone()),
                "published",
                Some("converged"),
            ),
            case("stopped, same release", pub_a.clone(), with(&|s| s.main = Some(ours("blog", "c1", &a, false))))
                .expect(Some(a.clone()), "published", Some("restart")),
            case("new release", pub_a.clone(), with(&|s| s.main = Some(ours("blog", "c1", &b, true)))).expect(
                Some(a.clone()),
                "published",
                Some("deploy:new"),
            ),
            case(
                "new release, old one stopped",
                pub_a.clone(),
                with(&|s| s.main = Some(ours("blog", "c1", &b, false))),
            )
            .expect(Some(a.clone()), "published", Some("deploy:new")),
            case(
                "spec changed",
                pub_a.clone(),
                with(&|s| {
                    let mut c = ours("blog", "c1", &a, true);
                    c.labels.insert(LABEL_SPEC_HASH.into(), "other".into());
                    s.main = Some(c)
                }),
            )
            .expect(Some(a.clone()), "published", Some("deploy:spec")),
            case("hand-made container under the name", pub_a.clone(), with(&|s| s.main = Some(foreign("blog", "x1"))))
                .expect(Some(a.clone()), "published", Some("deploy:foreign")),
            // S3 unreadable.
            case("S3 unknown, nothing ever served", Wanted::Unknown, snap()).expect(None, "nothing-known", None),
            case("S3 unknown, last good known", Wanted::Unknown, with(&|s| s.state = state(Some((&b, ENV)), None)))
                .expect(Some(b.clone()), "last-good", Some("deploy:none")),
            case(
                "S3 unknown, last good of another environment",
                Wanted::Unknown,
                with(&|s| s.state = state(Some((&b, "production")), None)),
            )
            .expect(None, "nothing-known", None),
            case(
                "S3 unknown, last good already serving",
                Wanted::Unknown,
                with(&|s| {
                    s.state = state(Some((&b, ENV)), None);
                    s.main = Some(ours("blog", "c1", &b, true))
                }),
            )
            .expect(Some(b.clone()), "last-good", Some("converged")),
            // Pause and pin.
            case(
                "paused: stays on what runs",
                pub_a.clone(),
                with(&|s| {
                    s.pause = Some(pause(None));
                    s.main = Some(ours("blog", "c1", &b, true))
                }),
            )
            .expect(Some(b.clone()), "paused", Some("converged")),
            case(
                "paused: a stopped container is repaired with its own release",
                pub_a.clone(),
                with(&|s| {
                    s.pause = Some(pause(None));
                    s.main = Some(ours("blog", "c1", &b, false))
                }),
            )
            .expect(Some(b.clone()), "paused", Some("restart")),
            case("paused and removed: the pinned release", pub_a.clone(), with(&|s| s.pause = Some(pause(Some(&c)))))
                .expect(Some(c.clone()), "paused", Some("deploy:none")),
            case(
                "paused and removed, no pin: last good",
                pub_a.clone(),
                with(&|s| {
                    s.pause = Some(pause(None));
                    s.state = state(Some((&b, ENV)), None)
                }),
            )
            .expect(Some(b.clone()), "paused", Some("deploy:none")),
            case("paused with nothing to go on: S3's release", pub_a.clone(), with(&|s| s.pause = Some(pause(None))))
                .expect(Some(a.clone()), "published", Some("deploy:none")),
            case(
                "paused, S3 unknown: what runs",
                Wanted::Unknown,
                with(&|s| {
                    s.pause = Some(pause(None));
                    s.main = Some(ours("blog", "c1", &b, true))
                }),
            )
            .expect(Some(b.clone()), "paused", Some("converged")),
            case(
                "operator's sha overrides the pause",
                Wanted::Operator(c.clone()),
                with(&|s| {
                    s.pause = Some(pause(Some(&b)));
                    s.main = Some(ours("blog", "c1", &b, true))
                }),
            )
            .expect(Some(c.clone()), "operator", Some("deploy:new")),
            case(
                "paused on the release S3 names: plain published",
                pub_a.clone(),
                with(&|s| {
                    s.pause = Some(pause(None));
                    s.main = Some(ours("blog", "c1", &a, true))
                }),
            )
            .expect(Some(a.clone()), "published", Some("converged")),
            // Quarantine.
            case(
                "quarantined release: back to last good",
                pub_a.clone(),
                with(&|s| {
                    s.state = state(Some((&a, ENV)), Some((&b, ENV)));
                    s.main = Some(ours("blog", "c1", &a, true))
                }),
            )
            .quarantine(a.clone())
            .expect(Some(b.clone()), "quarantined", Some("deploy:new")),
            case(
                "quarantined release, previous good already serving",
                pub_a.clone(),
                with(&|s| {
                    s.state = state(Some((&b, ENV)), None);
                    s.main = Some(ours("blog", "c1", &b, true))
                }),
            )
            .quarantine(a.clone())
            .expect(Some(b.clone()), "quarantined", Some("converged")),
            case(
                "quarantined release, nothing good to go back to: change nothing",
                pub_a.clone(),
                with(&|s| s.main = Some(ours("blog", "c1", &a, true))),
            )
            .quarantine(a.clone())
            .expect(None, "quarantined", None),
            case(
                "quarantined release, and the last good one held back too: change nothing",
                pub_a.clone(),
                with(&|s| {
                    s.state = state(Some((&b, ENV)), None);
                    s.main = Some(ours("blog", "c1", &b, true))
                }),
            )
            .quarantine(a.clone())
            .quarantine(b.clone())
            .expect(None, "quarantined", None),
            case(
                "quarantined release, good versions only of another environment",
                pub_a.clone(),
                with(&|s| s.state = state(Some((&b, "production")), None)),
            )
            .quarantine(a.clone())
            .expect(None, "quarantined", None),
            case("quarantine of another release does not matter", pub_a.clone(), snap()).quarantine(b.clone()).expect(
                Some(a.clone()),
                "published",
                Some("deploy:none"),
            ),
            // Rescue when the target cannot be had.
            case(
                "new release with a last good to fall back on",
                pub_a.clone(),
                with(&|s| {
                    s.state = state(Some((&b, ENV)), None);
                    s.main = Some(ours("blog", "c1", &b, true))
                }),
            )
            .expect(Some(a.clone()), "published", Some("deploy:new"))
            .fallback(b.clone()),
            case(
                "removed container, S3 names the last good: no other fallback",
                pub_a.clone(),
                with(&|s| s.state = state(Some((&a, ENV)), None)),
            )
            .expect(Some(a.clone()), "published", Some("deploy:none")),
            // Leftovers of an interrupted deploy.
            case(
                "stray candidate and next are removed",
                pub_a.clone(),
                with(&|s| {
                    s.main = Some(ours("blog", "c1", &a, true));
                    s.candidate = Some(ours("blog-candidate", "c2", &a, true));
                    s.next = Some(ours("blog-next", "c3", &a, false))
                }),
            )
            .recovery(&["remove", "remove"])
            .expect(Some(a.clone()), "published", Some("converged")),
            case(
                "a failed leftover of ours is removed",
                pub_a.clone(),
                with(&|s| {
                    s.main = Some(ours("blog", "c1", &a, true));
                    s.failed = Some(ours("blog-failed", "c2", &c, false))
                }),
            )
            .recovery(&["remove"])
            .expect(Some(a.clone()), "published", Some("converged")),
            case(
                "someone else's leftovers are never touched",
                pub_a.clone(),
                with(&|s| {
                    s.main = Some(ours("blog", "c1", &a, true));
                    s.candidate = Some(foreign("blog-candidate", "x2"));
                    s.failed = Some(foreign("blog-failed", "x3"))
                }),
            )
            .expect(Some(a.clone()), "published", Some("converged")),
            case(
                "previous with nothing under the name is put back, then updated",
                pub_a.clone(),
                with(&|s| s.previous = Some(ours("blog-previous", "c9", &b, false))),
            )
            .recovery(&["restore+start"])
            .expect(Some(a.clone()), "published", Some("deploy:new")),
            case(
                "previous put back is already the target",
                pub_a.clone(),
                with(&|s| s.previous = Some(ours("blog-previous", "c9", &a, true))),
            )
            .recovery(&["restore"])
            .expect(Some(a.clone()), "published", Some("converged")),
            case(
                "previous beside an unproven new one: prove it",
                pub_a.clone(),
                with(&|s| {
                    s.main = Some(ours("blog", "c1", &a, true));
                    s.previous = Some(ours("blog-previous", "c9", &b, false))
                }),
            )
            .recovery(&["prove"])
            .expect(Some(a.clone()), "published", Some("converged")),
            case(
                "someone else's -previous blocks a cut-over",
                pub_a.clone(),
                with(&|s| {
                    s.main = Some(ours("blog", "c1", &b, true));
                    s.previous = Some(foreign("blog-previous", "x9"))
                }),
            )
            .expect(Some(a.clone()), "published", Some("deploy:new"))
            .blocked(),
            case(
                "someone else's -previous does not block a first deploy",
                pub_a.clone(),
                with(&|s| s.previous = Some(foreign("blog-previous", "x9"))),
            )
            .expect(Some(a.clone()), "published", Some("deploy:none")),
            // Staged rollout: a new release waits for this host's wave.
            case(
                "rollout: before this host's wave, it stays on what it runs",
                pub_a.clone(),
                with(&|s| s.main = Some(ours("blog", "c1", &b, true))),
            )
            .before_wave()
            .expect(Some(b.clone()), "waiting", Some("converged")),
            case(
                "rollout: waiting, a stopped container is repaired with its own release",
                pub_a.clone(),
                with(&|s| s.main = Some(ours("blog", "c1", &b, false))),
            )
            .before_wave()
            .expect(Some(b.clone()), "waiting", Some("restart")),
            case(
                "rollout: waiting, leftovers are still cleaned up",
                pub_a.clone(),
                with(&|s| {
                    s.main = Some(ours("blog", "c1", &b, true));
                    s.candidate = Some(ours("blog-candidate", "c2", &a, false))
                }),
            )
            .before_wave()
            .recovery(&["remove"])
            .expect(Some(b.clone()), "waiting", Some("converged")),
            case("rollout: the wave is open", pub_a.clone(), with(&|s| s.main = Some(ours("blog", "c1", &b, true))))
                .wave_open()
                .expect(Some(a.clone()), "published", Some("deploy:new")),
            case("rollout: nothing of ours here: no wait", pub_a.clone(), snap()).before_wave().expect(
                Some(a.clone()),
                "published",
                Some("deploy:none"),
            ),
            case(
                "rollout: nothing here but a last good: the new release, no wait",
                pub_a.clone(),
                with(&|s| s.state = state(Some((&b, ENV)), None)),
            )
            .before_wave()
            .expect(Some(a.clone()), "published", Some("deploy:none"))
            .fallback(b.clone()),
            case(
                "rollout: a hand-made container is not ours to keep: no wait",
                pub_a.clone(),
                with(&|s| s.main = Some(foreign("blog", "x1"))),
            )
            .before_wave()
            .expect(Some(a.clone()), "published", Some("deploy:foreign")),
            case(
                "rollout: already on the published release",
                pub_a.clone(),
                with(&|s| s.main = Some(ours("blog", "c1", &a, true))),
            )
            .before_wave()
            .expect(Some(a.clone()), "published", Some("converged")),
            case(
                "rollout: a pause is a pause, wave or not",
                pub_a.clone(),
                with(&|s| {
                    s.pause = Some(pause(None));
                    s.main = Some(ours("blog", "c1", &b, true))
                }),
            )
            .wave_open()
            .expect(Some(b.clone()), "paused", Some("converged")),
            case(
                "rollout: an operator's sha is not gated",
                Wanted::Operator(c.clone()),
                with(&|s| s.main = Some(ours("blog", "c1", &b, true))),
            )
            .before_wave()
            .expect(Some(c.clone()), "operator", Some("deploy:new")),
            case(
                "rollout: S3 unreadable: last good, no wave to wait for",
                Wanted::Unknown,
                with(&|s| s.state = state(Some((&b, ENV)), None)),
            )
            .before_wave()
            .expect(Some(b.clone()), "last-good", Some("deploy:none")),
            case(
                "rollout: the release it waits for is quarantined: last good",
                pub_a.clone(),
                with(&|s| {
                    s.state = state(Some((&c, ENV)), Some((&b, ENV)));
                    s.main = Some(ours("blog", "c1", &b, true))
                }),
            )
            .before_wave()
            .quarantine(b.clone())
            .expect(Some(c.clone()), "quarantined", Some("deploy:new")),
            // Fleet halt: a halted release is never applied.
            case("halted: stays on what runs", pub_a.clone(), with(&|s| s.main = Some(ours("blog", "c1", &b, true))))
                .halted(marker(&a, Some(&c)))
                .expect(Some(b.clone()), "halted", Some("converged")),
            case(
                "halted: a stopped container is restarted with its own release",
                pub_a.clone(),
                with(&|s| s.main = Some(ours("blog", "c1", &b, false))),
            )
            .halted(marker(&a, Some(&c)))
            .expect(Some(b.clone()), "halted", Some("restart")),
            case(
                "halted, its wave open: still not applied",
                pub_a.clone(),
                with(&|s| s.main = Some(ours("blog", "c1", &b, true))),
            )
            .wave_open()
            .halted(marker(&a, None))
            .expect(Some(b.clone()), "halted", Some("converged")),
            case(
                "halted, already running it: stays (a halt stops a rollout, it does not roll back)",
                pub_a.clone(),
                with(&|s| s.main = Some(ours("blog", "c1", &a, true))),
            )
            .halted(marker(&a, Some(&b)))
            .expect(Some(a.clone()), "halted", Some("converged")),
            case(
                "halted, nothing serving: the release the halting host rolled back to",
                pub_a.clone(),
                with(&|s| s.state = state(Some((&b, ENV)), None)),
            )
            .halted(marker(&a, Some(&c)))
            .expect(Some(c.clone()), "halted", Some("deploy:none"))
            .fallback(b.clone()),
            case(
                "halted, nothing serving, no rollback target: last good",
                pub_a.clone(),
                with(&|s| s.state = state(Some((&b, ENV)), None)),
            )
            .halted(marker(&a, None))
            .expect(Some(b.clone()), "halted", Some("deploy:none")),
            case(
                "halted, nothing serving, the last good is the halted release: never its fallback",
                pub_a.clone(),
                with(&|s| s.state = state(Some((&a, ENV)), None)),
            )
            .halted(marker(&a, Some(&c)))
            .expect(Some(c.clone()), "halted", Some("deploy:none")),
            case(
                "halted, nothing serving and nothing to go back to: change nothing",
                pub_a.clone(),
                with(&|s| s.state = state(Some((&a, ENV)), None)),
            )
            .halted(marker(&a, None))
            .expect(None, "halted", None),
            case(
                "halted, a rollback target naming the halted release itself is ignored",
                pub_a.clone(),
                with(&|s| s.state = state(Some((&b, ENV)), None)),
            )
            .halted(marker(&a, Some(&a)))
            .expect(Some(b.clone()), "halted", Some("deploy:none")),
            case(
                "halted, paused with nothing to hold: still not applied",
                pub_a.clone(),
                with(&|s| s.pause = Some(pause(None))),
            )
            .halted(marker(&a, Some(&c)))
            .expect(Some(c.clone()), "halted", Some("deploy:none")),
            case("a halt of another release does not matter", pub_a.clone(), snap())
                .halted(marker(&c, Some(&b)))
                .expect(Some(a.clone()), "published", Some("deploy:none")),
            case(
                "an operator's sha is applied even when halted",
                Wanted::Operator(a.clone()),
                with(&|s| s.main = Some(ours("blog", "c1", &b, true))),
            )
            .halted(marker(&a, Some(&b)))
            .expect(Some(a.clone()), "operator", Some("deploy:new")),
            case(
                "halted and paused: the pause holds, as it did",
                pub_a.clone(),
                with(&|s| {
                    s.pause = Some(pause(None));
                    s.main = Some(ours("blog", "c1", &b, true))
                }),
            )
            .halted(marker(&a, Some(&c)))
            .expect(Some(b.clone()), "paused", Some("converged")),
            // The wave is open but the halt was not read since: keep what runs until a read.
            case(
                "wave open, halt unconfirmed: stays on what runs",
                pub_a.clone(),
                with(&|s| s.main = Some(ours("blog", "c1", &b, true))),
            )
            .wave_open()
            .unconfirmed()
            .expect(Some(b.clone()), "confirming", Some("converged")),
            case("wave open, halt unconfirmed, nothing serving: no wait", pub_a.clone(), snap())
                .wave_open()
                .unconfirmed()
                .expect(Some(a.clone()), "published", Some("deploy:none")),
            case(
                "no wave (no spread), halt unconfirmed: applied",
                pub_a.clone(),
                with(&|s| s.main = Some(ours("blog", "c1", &b, true))),
            )
            .unconfirmed()
            .expect(Some(a.clone()), "published", Some("deploy:new")),
            // Trust: a refused release object never runs; what runs stays.
            case(
                "refused: stays on what runs",
                refused_a.clone(),
                with(&|s| s.main = Some(ours("blog", "c1", &b, true))),
            )
            .verified(&[&b, &c])
            .expect(Some(b.clone()), "refused", Some("converged")),
            case("refused, nothing serving: the newest verified release", refused_a.clone(), snap())
                .verified(&[&b, &c])
                .expect(Some(c.clone()), "refused", Some("deploy:none")),
            case(
                "refused, nothing serving, no verified history: last good when it was verified",
                Wanted::Refused { release: a.clone(), reason: "unsigned".into(), newest: None },
                with(&|s| s.state = state(Some((&b, ENV)), None)),
            )
            .verified(&[&b])
            .expect(Some(b.clone()), "refused", Some("deploy:none")),
            case(
                "refused, nothing serving, the last good was never verified: nothing runs",
                Wanted::Refused { release: a.clone(), reason: "unsigned".into(), newest: None },
                with(&|s| s.state = state(Some((&b, ENV)), None)),
            )
            .verified(&[])
            .expect(None, "unverified", None),
            // Nothing outside the catalog is deployed, on any path.
            case(
                "halted, nothing serving: an unverified rollback target is not run",
                pub_a.clone(),
                with(&|s| s.state = state(Some((&b, ENV)), None)),
            )
            .halted(marker(&a, Some(&c)))
            .verified(&[&a, &b])
            .expect(None, "unverified", None),
            case(
                "an operator's unverified sha is not deployed",
                Wanted::Operator(c.clone()),
                with(&|s| s.main = Some(ours("blog", "c1", &b, true))),
            )
            .verified(&[&a, &b])
            .expect(None, "unverified", None),
            case(
                "a pin that was never verified is not deployed",
                pub_a.clone(),
                with(&|s| s.pause = Some(pause(Some(&c)))),
            )
            .verified(&[&a])
            .expect(None, "unverified", None),
            case(
                "an unverified container that runs is kept (never lose the running site)",
                pub_a.clone(),
                with(&|s| {
                    s.pause = Some(pause(None));
                    s.main = Some(ours("blog", "c1", &c, true))
                }),
            )
            .verified(&[&a])
            .expect(Some(c.clone()), "paused", Some("converged")),
            case(
                "a failed deploy's fallback must be verified too",
                pub_a.clone(),
                with(&|s| s.state = state(Some((&b, ENV)), None)),
            )
            .verified(&[&a])
            .expect(Some(a.clone()), "published", Some("deploy:none")),
        ];
        assert!(cases.len() >= 55, "the table covers every rule");
        let now = Instant::now();
        let settings = settings();
        for case in cases {
            let quarantine: HashMap<Sha, Instant> =
                case.quarantined.iter().map(|s| (s.clone(), now + Duration::from_secs(60))).collect();
            let d = decide(&Inputs {
                settings: &settings,
                environment: ENV,
                wanted: &case.wanted,
                snapshot: &case.snapshot,
                quarantine: &quarantine,
                now,
                rollout: case.rollout,
                halted: case.halted.as_ref(),
                halt_unconfirmed: case.halt_unconfirmed,
                catalog: &case.catalog,
            });
            let name = case.name;
            assert_eq!(d.target, case.target, "{name}: target");
            assert_eq!(why_name(&d.why), case.why, "{name}: why ({})", d.why);
            assert_eq!(d.plan.as_ref().map(plan_name), case.plan, "{name}: plan");
            assert_eq!(d.recovery.iter().map(recovery_name).collect::<Vec<_>>(), case.recovery, "{name}: recovery");
            assert_eq!(d.blocked.is_some(), case.blocked, "{name}: blocked {:?}", d.blocked);
            assert_eq!(d.fallback, case.fallback, "{name}: fallback");
        }
    }

    #[test]
    fn an_expired_quarantine_lets_the_release_through() {
        let (a, b) = (sha('a'), sha('b'));
        let mut s = snap();
        s.state = State { last_good: Some(good(&b, ENV)), previous_good: None, proven: None };
        let now = Instant::now();
        let quarantine = HashMap::from([(a.clone(), now)]);
        let settings = settings();
        let wanted = Wanted::Published(a.clone());
        let d = decide(&Inputs {
            settings: &settings,
            environment: ENV,
            wanted: &wanted,
            snapshot: &s,
            quarantine: &quarantine,
            now,
            rollout: None,
            halted: None,
            halt_unconfirmed: false,
            catalog: &Catalog::open(),
        });
        assert_eq!(d.target, Some(a));
        assert_eq!(d.why, Why::Published);
    }

    #[test]
    fn waiting_and_halted_say_when_and_why() {
        let (a, b) = (sha('a'), sha('b'));
        let mut s = snap();
        s.main = Some(ours("blog", "c1", &b, true));
        let settings = settings();
        let wanted = Wanted::Published(a.clone());
        let none = HashMap::new();
        let open = Catalog::open();
        let inputs = |rollout, halted| Inputs {
            settings: &settings,
            environment: ENV,
            wanted: &wanted,
            snapshot: &s,
            quarantine: &none,
            now: Instant::now(),
            rollout,
            halted,
            halt_unconfirmed: false,
            catalog: &open,
        };
        let d = decide(&inputs(Some(gate_at(T0 + 10)), None));
        assert_eq!(
            d.why,
            Why::Waiting {
                release: a.clone(),
                until: SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + 300),
                remaining: Duration::from_secs(290)
            }
        );
        let text = describe(&d, &settings, ENV, true).join("\n");
        assert!(
            text.contains("target bbbbbbbbbbbb: release aaaaaaaaaaaa rolls out in waves: this host's turn is at 2025-06-15T15:11:40Z (in 290 s)"),
            "{text}"
        );
        assert!(text.contains("nothing to do"), "{text}");
        let m = marker(&a, Some(&b));
        let d = decide(&inputs(None, Some(&m)));
        let text = describe(&d, &settings, ENV, true).join("\n");
        assert!(
            text.contains("release aaaaaaaaaaaa is halted for this environment (candidate probe: HTTP 500)"),
            "{text}"
        );
        assert!(text.contains(&format!("`blog-agent unhalt {a}`")), "{text}");
    }

    #[test]
    fn dry_run_words_name_every_step() {
        let (a, b) = (sha('a'), sha('b'));
        let mut s = snap();
        s.main = Some(ours("blog", "c1", &b, true));
        s.candidate = Some(ours("blog-candidate", "c2", &a, true));
        s.state = State { last_good: Some(good(&b, ENV)), previous_good: None, proven: None };
        let settings = settings();
        let wanted = Wanted::Published(a.clone());
        let d = decide(&Inputs {
            settings: &settings,
            environment: ENV,
            wanted: &wanted,
            snapshot: &s,
            quarantine: &HashMap::new(),
            now: Instant::now(),
            rollout: None,
            halted: None,
            halt_unconfirmed: false,
            catalog: &Catalog::open(),
        });
        let text = describe(&d, &settings, ENV, false).join("\n");
        for needle in ["remove blog-candidate", "pull", "blog-previous", "last-known-good"] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }
}
