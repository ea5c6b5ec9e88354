//! `blog-agent status`: what this host should run, what it runs, and why, gathered read-only
//! (no lock held, nothing changed). The JSON form is a stable, versioned interface: fields are
//! only ever added; see docs/status.md.

use std::future::Future;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::{Settings, TrafficMode};
use crate::environment;
use crate::fleet::halt::{HaltSource, Marker};
use crate::fleet::rollout::{self, Gate, IdentitySource};
use crate::outside::docker::Engine;
use crate::outside::imds::TagSource;
use crate::outside::netfilter::Netfilter;
use crate::outside::release::{Fetched, ReleaseSource};
use crate::pass::once::release_location;
use crate::sha::Sha;
use crate::spec::{LABEL_DIGEST, LABEL_SHA};
use crate::state::{LastPass, Pause, State, StateReadError};

/// Bumped only on an incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub schema_version: u32,
    pub environment: Option<EnvironmentStatus>,
    pub environment_error: Option<String>,
    pub desired: Option<PublishedStatus>,
    pub desired_error: Option<String>,
    pub container: Option<ContainerStatus>,
    pub container_error: Option<String>,
    pub paused: Option<Pause>,
    pub last_good_sha: Option<String>,
    pub last_pass: Option<LastPass>,
    /// The state dir could not be read (typically: not root), so `paused`, `last_good_sha`
    /// and `last_pass` are unknown, not absent.
    pub state_error: Option<String>,
    /// The version this host is meant to run, and why: S3's, or the pinned or held one
    /// while updates are paused.
    pub target: Option<TargetStatus>,
    /// The container runs the target SHA and answers its health probe.
    pub converged: bool,
    /// How the host ports reach the container, and (switch mode) where each points now.
    pub traffic: TrafficStatus,
    /// This host's place in every staged rollout, and its wave of the desired release.
    pub rollout: RolloutStatus,
    /// The desired release is halted for this environment (its marker).
    pub halt: Option<HaltStatus>,
    /// The halt marker could not be read.
    pub halt_error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RolloutStatus {
    /// What the seed is computed from: the EC2 instance id, else the machine id or hostname.
    pub identity: String,
    /// `instance-id`, `machine-id`, `hostname` or `none`.
    pub identity_source: String,
    /// This host's seed in [0, 1): its wave opens at Last-Modified + seed x spread.
    pub seed: f64,
    /// `[rollout] spread` in seconds; 0: every release at once.
    pub spread_seconds: f64,
    /// RFC 3339: when this host may apply the desired release (its wave); null with no spread
    /// or no publication time.
    pub applies_at: Option<String>,
    /// The host keeps what it runs until `applies_at` (the desired release is new here).
    pub waiting: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct HaltStatus {
    pub sha: String,
    /// Where the marker is.
    pub uri: String,
    pub reason: String,
    /// The host that halted it (instance id, machine id or hostname).
    pub instance_id: String,
    /// The operator, when `blog-agent halt` wrote it.
    pub by: Option<String>,
    /// Unix seconds.
    pub at: u64,
    /// What the halting host rolled back to; a host with nothing serving takes it.
    pub rolled_back_to: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrafficStatus {
    /// `switch` or `publish`.
    pub mode: String,
    /// Switch mode: each host port's DNAT target as the kernel has it.
    pub ports: Vec<PortTarget>,
    /// Switch mode: the rules could not be read (not root, or no iptables).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PortTarget {
    /// `IP:PORT` or `*:PORT`.
    pub host: String,
    /// `CONTAINER_ADDRESS:PORT`.
    pub to: String,
    /// The container at that address, when it is ours and under the configured name.
    pub container: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetStatus {
    pub sha: String,
    pub source: TargetSource,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetSource {
    /// Not paused: the SHA in S3.
    S3,
    /// Paused by `sync --sha`: the pinned SHA.
    Pinned,
    /// Paused: the version the container carries (else the last good one).
    Paused,
    /// S3's release is new and this host's rollout wave has not opened: what it runs.
    Rollout,
    /// S3's release is halted: what the host runs, else the halting host's rollback target,
    /// else the last good one.
    Halted,
}

#[derive(Debug, Clone, Serialize)]
pub struct EnvironmentStatus {
    pub name: String,
    pub source: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PublishedStatus {
    pub sha: String,
    pub uri: String,
    pub etag: Option<String>,
    /// RFC 3339, when this command read it.
    pub read_at: String,
    /// RFC 3339: the object's Last-Modified, when CI published it (the rollout's start).
    pub published_at: Option<String>,
    /// The image digest `blog-agent publish` recorded: hosts run exactly this image.
    pub digest: Option<String>,
    /// Who published it, and from which pipeline run.
    pub published_by: Option<String>,
    pub pipeline: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerStatus {
    pub name: String,
    pub id: String,
    pub managed: bool,
    pub sha: Option<String>,
    pub digest: Option<String>,
    pub state: String,
    pub started_at: Option<String>,
    pub health: HealthStatus,
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthStatus {
    pub url: String,
    pub ok: bool,
    pub detail: String,
}

/// Gathers the status. Every part is best-effort: a failing part is reported, not fatal.
/// `instance_id`: the EC2 instance id read (for the rollout identity), run beside the rest.
#[allow(clippy::too_many_arguments)]
pub async fn gather(
    settings: &Settings,
    env_flag: Option<&str>,
    tags: &impl TagSource,
    releases: &impl ReleaseSource,
    halts: &impl HaltSource,
    instance_id: impl Future<Output = Option<String>>,
    engine: Option<&Engine>,
    engine_error: Option<String>,
) -> Status {
    let dir = &settings.agent.state_dir;
    // Read, not load: the agent may read an unreadable file as "no pause", but a report must
    // not say "automatic" when it could not look.
    let (pause, state, last_pass) = (Pause::read(dir), State::read(dir), LastPass::read(dir));
    let state_error = [pause.as_ref().err(), state.as_ref().err(), last_pass.as_ref().err()]
        .into_iter()
        .flatten()
        .next()
        .map(describe_state_error);
    let mut status = Status {
        schema_version: SCHEMA_VERSION,
        environment: None,
        environment_error: None,
        desired: None,
        desired_error: None,
        container: None,
        container_error: engine_error,
        paused: pause.ok().flatten(),
        last_good_sha: None,
        last_pass: last_pass.ok().flatten(),
        state_error,
        target: None,
        converged: false,
        traffic: TrafficStatus { mode: settings.traffic.mode.to_string(), ports: Vec::new(), error: None },
        rollout: RolloutStatus {
            identity: String::new(),
            identity_source: String::new(),
            seed: 0.0,
            spread_seconds: settings.rollout.spread.as_secs_f64(),
            applies_at: None,
            waiting: false,
        },
        halt: None,
        halt_error: None,
    };
    let mut last_good = None;
    let mut published_at = None;
    let env_and_release = async {
        let env = environment::resolve(env_flag, settings, tags).await;
        let release = match &env {
            Ok(env) => {
                let location = release_location(settings, &env.name);
                let fetched = releases.fetch(&location, None).await;
                let marker = match &fetched {
                    Ok(Fetched::Changed(release)) => {
                        let prefix = settings.halt_prefix(&env.name);
                        let uri = crate::outside::release::ObjectLocation {
                            bucket: settings.release.bucket.clone(),
                            key: crate::fleet::halt::marker_key(&prefix, &release.sha),
                        };
                        let halt = crate::pass::once::halt_in_force(
                            releases,
                            halts,
                            settings,
                            &env.name,
                            &location,
                            &release.sha,
                        )
                        .await;
                        Some((halt, uri))
                    }
                    _ => None,
                };
                Some((location, fetched, marker))
            }
            Err(_) => None,
        };
        (env, release)
    };
    let (instance_id, (env, release)) = tokio::join!(instance_id, env_and_release);
    let identity = rollout::resolve_identity(instance_id);
    status.rollout.identity = identity.value.clone();
    status.rollout.identity_source = match identity.source {
        IdentitySource::InstanceId => "instance-id",
        IdentitySource::MachineId => "machine-id",
        IdentitySource::Hostname => "hostname",
        IdentitySource::Unknown => "none",
    }
    .to_owned();
    status.rollout.seed = identity.seed();
    match env {
        Ok(env) => {
            if let Some((location, fetched, marker)) = release {
                match fetched {
                    Ok(Fetched::Changed(release)) => {
                        published_at = release.published_at;
                        status.desired = Some(PublishedStatus {
                            sha: release.sha.to_string(),
                            uri: location.to_string(),
                            etag: release.etag,
                            read_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                            published_at: release.published_at.map(rfc3339),
                            digest: release.provenance.digest.clone(),
                            published_by: release.provenance.by.clone(),
                            pipeline: release.provenance.pipeline.clone(),
                        })
                    }
                    Ok(Fetched::Unchanged) => {}
                    Err(e) => status.desired_error = Some(e.to_string()),
                }
                match marker {
                    Some((Ok(Some(marker)), uri)) => status.halt = Some(halt_status(marker, uri.to_string())),
                    Some((Err(e), _)) => status.halt_error = Some(e.to_string()),
                    _ => {}
                }
            }
            if let Ok(state) = &state {
                last_good = state.last_good_in(&env.name).map(|g| g.sha.clone());
            }
            status.environment = Some(EnvironmentStatus { name: env.name, source: env.source.to_string() });
        }
        Err(e) => status.environment_error = Some(e.to_string()),
    }
    // The container's bridge address, for the traffic lines below (one inspect serves both).
    let mut serving_address = None;
    if let Some(engine) = engine {
        match engine.container(&settings.container.name).await {
            Ok(Some(c)) => {
                serving_address = c.ip.clone().map(|ip| (ip, c.name.clone()));
                let url = &settings.health.url;
                let health = match crate::outside::health::get_status(&url.host, url.port, &url.path).await {
                    Ok(code) => HealthStatus {
                        url: url.to_string(),
                        ok: (200..300).contains(&code),
                        detail: format!("HTTP {code}"),
                    },
                    Err(e) => HealthStatus { url: url.to_string(), ok: false, detail: e },
                };
                status.container = Some(ContainerStatus {
                    name: c.name.clone(),
                    id: c.id.clone(),
                    managed: c.is_managed(),
                    sha: c.labels.get(LABEL_SHA).cloned(),
                    digest: c.labels.get(LABEL_DIGEST).cloned(),
                    state: c.status.clone(),
                    started_at: c.started_at.clone(),
                    health,
                });
            }
            Ok(None) => {}
            Err(e) => status.container_error = Some(e.to_string()),
        }
    }
    if settings.traffic.mode == TrafficMode::Switch {
        match Netfilter::with_prefix(&settings.traffic.chains) {
            Ok(netfilter) => match netfilter.current_rules().await {
                Ok(rules) => {
                    status.traffic.ports = rules
                        .iter()
                        .map(|r| PortTarget {
                            host: format!(
                                "{}:{}",
                                r.host_ip.map(|ip| ip.to_string()).unwrap_or_else(|| "*".into()),
                                r.host_port
                            ),
                            to: r.to.to_string(),
                            container: serving_address
                                .as_ref()
                                .filter(|(ip, _)| *ip == r.to.ip().to_string())
                                .map(|(_, name)| name.clone()),
                        })
                        .collect()
                }
                Err(e) => status.traffic.error = Some(e.to_string()),
            },
            Err(e) => status.traffic.error = Some(e.to_string()),
        }
    }
    status.last_good_sha = state.ok().and_then(|s| s.last_good).map(|g| g.sha);
    let running = status.container.as_ref().filter(|c| c.managed).and_then(|c| c.sha.as_deref());
    if let (Some(desired), Some(at)) = (&status.desired, published_at.filter(|_| !settings.rollout.spread.is_zero())) {
        let spread = settings.rollout.spread;
        status.rollout.applies_at = Some(rfc3339(rollout::apply_at(at, identity.seed(), spread)));
        let new_here = running != Some(desired.sha.as_str());
        status.rollout.waiting = new_here
            && matches!(
                rollout::gate(at, identity.seed(), spread, SystemTime::now(), running.is_none()),
                Gate::Wait { .. }
            );
    }
    let halted = status.halt.as_ref().map(|h| h.rolled_back_to.as_deref().filter(|r| Sha::parse(r).is_ok()));
    status.target = meant_to_run(
        status.desired.as_ref().map(|d| d.sha.as_str()),
        status.paused.as_ref(),
        running,
        last_good.as_deref(),
        halted,
        status.rollout.waiting,
    );
    status.converged = match (&status.target, &status.container) {
        (Some(t), Some(c)) => running == Some(t.sha.as_str()) && c.health.ok,
        _ => false,
    };
    status
}

/// The version the host is meant to run: S3's, unless updates are paused; then the pinned
/// one (`sync --sha`: what the operator asked for), else the one the container carries, else
/// the last good one. While the state cannot be read, S3's is the best guess (`state_error`
/// says so). Not paused, the fleet may hold S3's back, as the agent's decision does:
/// `halted` (Some, with the marker's rollback target) keeps what runs, else takes the rollback
/// target, else the last good one; `waiting` (this host's wave is not open) keeps what runs.
fn meant_to_run(
    desired: Option<&str>,
    pause: Option<&Pause>,
    running: Option<&str>,
    last_good: Option<&str>,
    halted: Option<Option<&str>>,
    waiting: bool,
) -> Option<TargetStatus> {
    let (sha, source) = match (pause, halted) {
        (None, Some(rolled_back_to)) => {
            let desired = desired?;
            let other = |s: &&str| *s != desired;
            (running.or(rolled_back_to.filter(other)).or(last_good.filter(other))?, TargetSource::Halted)
        }
        (None, None) if waiting => (running?, TargetSource::Rollout),
        (None, None) => (desired?, TargetSource::S3),
        (Some(Pause { pinned_sha: Some(pinned), .. }), _) => (pinned.as_str(), TargetSource::Pinned),
        (Some(_), _) => (running.or(last_good)?, TargetSource::Paused),
    };
    Some(TargetStatus { sha: sha.to_owned(), source })
}

fn halt_status(marker: Marker, uri: String) -> HaltStatus {
    HaltStatus {
        sha: marker.sha,
        uri,
        reason: marker.reason,
        instance_id: marker.instance_id,
        by: marker.by,
        at: marker.at,
        rolled_back_to: marker.rolled_back_to,
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// One line for a state file `status` could not read, with what to do about it.
fn describe_state_error(e: &StateReadError) -> String {
    if e.is_permission_denied() {
        format!(
            "cannot read state (permission denied on {}): run as root, e.g. `sudo blog-agent status`",
            e.path.display()
        )
    } else {
        format!("cannot read state: {e}")
    }
}

/// The human form: one aligned line per fact, problems spelled out.
pub fn render_text(s: &Status) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<14} {v}\n"));
    line(
        "environment",
        match (&s.environment, &s.environment_error) {
            (Some(e), _) => format!("{} (from {})", e.name, e.source),
            (None, Some(err)) => format!("UNKNOWN: {err}"),
            _ => "unknown".into(),
        },
    );
    line(
        "desired",
        match (&s.desired, &s.desired_error) {
            (Some(d), _) => format!(
                "{} ({}, etag {}, read {}){}",
                d.sha,
                d.uri,
                d.etag.as_deref().unwrap_or("-"),
                d.read_at,
                d.digest.as_deref().map(|digest| format!("; published as {digest}")).unwrap_or_default()
            ),
            (None, Some(err)) => format!("UNKNOWN: {err}"),
            _ => "unknown".into(),
        },
    );
    match (&s.container, &s.container_error) {
        (Some(c), _) => {
            line("container", format!("{} {} ({})", c.name, &c.id[..c.id.len().min(12)], c.state));
            line("running sha", c.sha.clone().unwrap_or_else(|| "none: not managed by blog-agent".into()));
            line("digest", c.digest.clone().unwrap_or_else(|| "-".into()));
            line("started at", c.started_at.clone().unwrap_or_else(|| "-".into()));
            line(
                "health",
                format!("{} {} ({})", if c.health.ok { "ok" } else { "FAIL" }, c.health.url, c.health.detail),
            );
        }
        (None, Some(err)) => line("container", format!("UNKNOWN: {err}")),
        (None, None) => line("container", "none".into()),
    }
    match (&s.traffic.error, s.traffic.mode.as_str()) {
        (Some(err), _) => line("traffic", format!("switch: UNKNOWN: {err}")),
        (None, "switch") if s.traffic.ports.is_empty() => {
            line("traffic", "switch: NO RULES (nothing reaches the blog)".into())
        }
        (None, "switch") => {
            for p in &s.traffic.ports {
                line(
                    "traffic",
                    format!(
                        "switch: {} -> {} ({})",
                        p.host,
                        p.to,
                        p.container.as_deref().unwrap_or("NOT the serving container")
                    ),
                );
            }
        }
        (None, mode) => line("traffic", format!("{mode}: Docker publishes the ports")),
    }
    line(
        "updates",
        match (&s.paused, &s.state_error) {
            (Some(p), _) => format!(
                "PAUSED by {} at {}{} (`blog-agent resume` to follow S3)",
                p.by,
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(p.at)),
                p.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
            ),
            (None, Some(err)) => format!("UNKNOWN: {err}"),
            (None, None) => "automatic".into(),
        },
    );
    line("identity", identity_text(&s.rollout));
    line("rollout", rollout_text(s, SystemTime::now()));
    match (&s.halt, &s.halt_error) {
        (Some(h), _) => line(
            "halted",
            format!(
                "{} by {} at {}: {}{}; `blog-agent unhalt {}` lets it go on",
                h.sha,
                crate::sha::safe_text(h.by.as_deref().unwrap_or(&h.instance_id)),
                fmt_unix(h.at),
                crate::sha::safe_text(&h.reason),
                h.rolled_back_to.as_deref().map(|r| format!(" (rolled back to {r})")).unwrap_or_default(),
                h.sha
            ),
        ),
        (None, Some(err)) => line("halted", format!("UNKNOWN: {err}")),
        (None, None) => {}
    }
    if s.target.is_none() && s.halt.is_some() {
        line(
            "target",
            "none: S3's release is halted, and there is no rollback target, no earlier release in the release \
             object's history and no last-known-good version here (`blog-agent halt <sha> --to <good sha>` names one)"
                .into(),
        );
    }
    if let Some(t) = s.target.as_ref().filter(|t| t.source != TargetSource::S3) {
        let why = match t.source {
            TargetSource::Pinned => "pinned by `blog-agent sync --sha`",
            TargetSource::Rollout => "keeping this version until this host's rollout wave",
            TargetSource::Halted => "S3's release is halted",
            _ => "paused: holding this version",
        };
        line("target", format!("{} ({why})", t.sha));
    }
    let unknown = || if s.state_error.is_some() { "unknown (state unreadable)".into() } else { "-".into() };
    line("last good", s.last_good_sha.clone().unwrap_or_else(unknown));
    if let Some(p) = &s.last_pass {
        line("last success", p.last_success.map(fmt_unix).unwrap_or_else(|| "never".into()));
        if let Some((at, err)) = &p.last_error {
            line("last error", format!("{} {err}", fmt_unix(*at)));
        }
    }
    line("converged", if s.converged { "yes".into() } else { "NO".into() });
    out
}

/// `instance id i-0abc (seed 0.41)`.
fn identity_text(r: &RolloutStatus) -> String {
    let source = match r.identity_source.as_str() {
        "instance-id" => "instance id",
        "machine-id" => "machine id",
        "none" => return format!("none readable (seed {:.2}, shared by every such host)", r.seed),
        other => other,
    };
    format!("{source} {} (seed {:.2})", r.identity, r.seed)
}

/// `B applies at 12:03:10 UTC (seed 0.41, spread 15m)` while waiting.
fn rollout_text(s: &Status, now: SystemTime) -> String {
    let r = &s.rollout;
    if r.spread_seconds == 0.0 {
        return "every release at once ([rollout] spread 0s)".into();
    }
    let spread = humantime::format_duration(Duration::from_secs_f64(r.spread_seconds.round()));
    let at = r.applies_at.as_deref().and_then(|a| humantime::parse_rfc3339(a).ok());
    let sha = s.desired.as_ref().map(|d| d.sha.as_str()).unwrap_or("-");
    let short = &sha[..sha.len().min(12)];
    match at {
        Some(at) if r.waiting => {
            let remaining = at.duration_since(now).unwrap_or_default();
            // Today's time of day is enough within a day; beyond, the whole date.
            let when = if remaining < Duration::from_secs(12 * 3600) {
                format!("{} UTC", &rfc3339(at)[11..19])
            } else {
                rfc3339(at)
            };
            format!(
                "{short} applies at {when} (seed {:.2}, spread {spread}; in {})",
                r.seed,
                humantime::format_duration(Duration::from_secs(remaining.as_secs()))
            )
        }
        Some(at) => {
            format!("{short}: this host's wave opened at {} (seed {:.2}, spread {spread})", rfc3339(at), r.seed)
        }
        None => format!("spread {spread} (seed {:.2})", r.seed),
    }
}

fn fmt_unix(secs: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pause(pinned: Option<&str>) -> Pause {
        Pause { by: "alice (uid 1000)".into(), reason: None, at: 0, pinned_sha: pinned.map(str::to_owned) }
    }

    /// A pinned host must be compared with its pin, not with S3 (it showed "converged: false"
    /// and `status` exited 1 on a host doing exactly what the operator asked).
    #[test]
    fn paused_or_pinned_hosts_are_compared_with_what_they_are_meant_to_run() {
        let target = |sha: &str, source| Some(TargetStatus { sha: sha.into(), source });
        let (s3, pin, run, good) = (Some("aaaaaaa"), Some("bbbbbbb"), Some("ccccccc"), Some("ddddddd"));
        let cases = [
            ("not paused: S3", s3, None, run, good, target("aaaaaaa", TargetSource::S3)),
            ("not paused, S3 unknown", None, None, run, good, None),
            (
                "pinned: the pin, whatever S3 and the container say",
                s3,
                Some(pause(pin)),
                run,
                good,
                target("bbbbbbb", TargetSource::Pinned),
            ),
            ("pinned, S3 unreadable", None, Some(pause(pin)), run, good, target("bbbbbbb", TargetSource::Pinned)),
            ("paused: what runs", s3, Some(pause(None)), run, good, target("ccccccc", TargetSource::Paused)),
            (
                "paused, nothing runs: last good",
                s3,
                Some(pause(None)),
                None,
                good,
                target("ddddddd", TargetSource::Paused),
            ),
            ("paused, nothing to go on", s3, Some(pause(None)), None, None, None),
        ];
        for (name, desired, pause, running, last_good, want) in cases {
            assert_eq!(meant_to_run(desired, pause.as_ref(), running, last_good, None, false), want, "{name}");
        }
    }

    /// The fleet holds S3's release back as the agent's decision does: `status` must not call
    /// a waiting or halted host unconverged.
    #[test]
    fn waiting_and_halted_hosts_are_compared_with_what_they_keep() {
        let target = |sha: &str, source| Some(TargetStatus { sha: sha.into(), source });
        let (s3, run, good, back) = (Some("aaaaaaa"), Some("ccccccc"), Some("ddddddd"), Some("bbbbbbb"));
        type Case<'a> = (&'a str, Option<Pause>, Option<&'a str>, Option<Option<&'a str>>, bool, Option<TargetStatus>);
        let cases: Vec<Case> = vec![
            ("waiting: what runs", None, run, None, true, target("ccccccc", TargetSource::Rollout)),
            ("waiting, nothing runs (cannot happen: no wait)", None, None, None, true, None),
            ("halted: what runs", None, run, Some(back), false, target("ccccccc", TargetSource::Halted)),
            (
                "halted, nothing runs: the rollback target",
                None,
                None,
                Some(back),
                false,
                target("bbbbbbb", TargetSource::Halted),
            ),
            (
                "halted, nothing runs, no target: last good",
                None,
                None,
                Some(None),
                false,
                target("ddddddd", TargetSource::Halted),
            ),
            ("halted beats waiting", None, run, Some(None), true, target("ccccccc", TargetSource::Halted)),
            ("paused beats both", Some(pause(None)), run, Some(back), true, target("ccccccc", TargetSource::Paused)),
            (
                "pinned beats both",
                Some(pause(Some("eeeeeee"))),
                run,
                Some(back),
                true,
                target("eeeeeee", TargetSource::Pinned),
            ),
        ];
        for (name, pause, running, halted, waiting, want) in cases {
            assert_eq!(meant_to_run(s3, pause.as_ref(), running, good, halted, waiting), want, "{name}");
        }
        assert_eq!(
            meant_to_run(s3, None, None, Some("aaaaaaa"), Some(Some("aaaaaaa")), false),
            None,
            "never the halted one"
        );
    }

    fn status() -> Status {
        Status {
            schema_version: SCHEMA_VERSION,
            environment: None,
            environment_error: None,
            desired: None,
            desired_error: None,
            container: None,
            container_error: None,
            paused: None,
            last_good_sha: None,
            last_pass: None,
            state_error: None,
            target: None,
            converged: false,
            traffic: TrafficStatus { mode: "publish".into(), ports: Vec::new(), error: None },
            rollout: RolloutStatus {
                identity: "i-0abc".into(),
                identity_source: "instance-id".into(),
                seed: 0.41,
                spread_seconds: 0.0,
                applies_at: None,
                waiting: false,
            },
            halt: None,
            halt_error: None,
        }
    }

    #[test]
    fn rollout_identity_and_halt_lines() {
        let mut s = status();
        let text = render_text(&s);
        assert!(text.contains("identity       instance id i-0abc (seed 0.41)"), "{text}");
        assert!(text.contains("rollout        every release at once ([rollout] spread 0s)"), "{text}");
        assert!(!text.contains("halted"), "{text}");
        s.rollout.spread_seconds = 900.0;
        s.rollout.waiting = true;
        s.rollout.applies_at = Some("2025-06-15T12:03:10Z".into());
        s.desired = Some(PublishedStatus {
            sha: "bbbbbbb".into(),
            uri: "s3://b/staging/stagebuild.txt".into(),
            etag: None,
            read_at: "2025-06-15T12:00:00Z".into(),
            published_at: Some("2025-06-15T11:57:00Z".into()),
            digest: Some(format!("sha256:{}", "ab".repeat(32))),
            published_by: Some("ci@build".into()),
            pipeline: None,
        });
        let now = humantime::parse_rfc3339("2025-06-15T12:00:00Z").unwrap();
        assert_eq!(rollout_text(&s, now), "bbbbbbb applies at 12:03:10 UTC (seed 0.41, spread 15m; in 3m 10s)");
        s.rollout.waiting = false;
        assert_eq!(
            rollout_text(&s, now),
            "bbbbbbb: this host's wave opened at 2025-06-15T12:03:10Z (seed 0.41, spread 15m)"
        );
        s.rollout.identity_source = "hostname".into();
        s.rollout.identity = "web-1".into();
        assert!(render_text(&s).contains("identity       hostname web-1 (seed 0.41)"));
        s.halt = Some(HaltStatus {
            sha: "bbbbbbb".into(),
            uri: "s3://b/staging/halted/bbbbbbb".into(),
            reason: "candidate probe: HTTP 500".into(),
            instance_id: "i-0abc".into(),
            by: None,
            at: 1_750_000_000,
            rolled_back_to: Some("aaaaaaa".into()),
        });
        s.target = Some(TargetStatus { sha: "aaaaaaa".into(), source: TargetSource::Halted });
        let text = render_text(&s);
        assert!(
            text.contains(
                "halted         bbbbbbb by i-0abc at 2025-06-15T15:06:40Z: candidate probe: HTTP 500 (rolled back to aaaaaaa); \
                 `blog-agent unhalt bbbbbbb` lets it go on"
            ),
            "{text}"
        );
        assert!(text.contains("target         aaaaaaa (S3's release is halted)"), "{text}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["target"]["source"], "halted");
        assert_eq!(json["halt"]["rolled_back_to"], "aaaaaaa");
        assert_eq!(json["rollout"]["identity_source"], "hostname");
        assert_eq!(json["rollout"]["spread_seconds"], 900.0);
        assert_eq!(json["desired"]["published_at"], "2025-06-15T11:57:00Z");
    }

    #[test]
    fn switch_mode_shows_each_port_s_target() {
        let mut s = status();
        s.traffic = TrafficStatus {
            mode: "switch".into(),
            ports: vec![PortTarget { host: "*:80".into(), to: "172.17.0.3:80".into(), container: Some("blog".into()) }],
            error: None,
        };
        assert!(render_text(&s).contains("traffic        switch: *:80 -> 172.17.0.3:80 (blog)"), "{}", render_text(&s));
        s.traffic.ports.clear();
        assert!(render_text(&s).contains("NO RULES"), "{}", render_text(&s));
    }

    /// Not root, 0700 state dir: the pause could not be read, so the report must not say
    /// "automatic".
    #[test]
    fn unreadable_state_is_reported_not_shown_as_automatic_updates() {
        let err = StateReadError {
            path: "/var/lib/blog-agent/pause.json".into(),
            source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
        };
        let text = render_text(&Status { state_error: Some(describe_state_error(&err)), ..status() });
        assert!(
            text.contains(
                "updates        UNKNOWN: cannot read state (permission denied on /var/lib/blog-agent/pause.json): \
                 run as root, e.g. `sudo blog-agent status`"
            ),
            "{text}"
        );
        assert!(!text.contains("automatic"), "{text}");
        assert!(text.contains("last good      unknown (state unreadable)"), "{text}");
        assert!(render_text(&status()).contains("updates        automatic"));
    }

    #[test]
    fn a_pinned_target_is_shown() {
        let s =
            Status { target: Some(TargetStatus { sha: "bbbbbbb".into(), source: TargetSource::Pinned }), ..status() };
        assert!(
            render_text(&s).contains("target         bbbbbbb (pinned by `blog-agent sync --sha`)"),
            "{}",
            render_text(&s)
        );
        assert_eq!(
            serde_json::to_value(&s).unwrap()["target"],
            serde_json::json!({"sha": "bbbbbbb", "source": "pinned"})
        );
    }
}
