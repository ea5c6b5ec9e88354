//! `blog-agent status`: what this host should run, what it runs, and why, gathered read-only
//! (no lock held, nothing changed). The JSON form is a stable, versioned interface: fields are
//! only ever added; see docs/status.md.

use serde::Serialize;

use crate::config::{Settings, TrafficMode};
use crate::environment;
use crate::outside::docker::Engine;
use crate::outside::imds::TagSource;
use crate::outside::netfilter::Netfilter;
use crate::outside::release::{Fetched, ReleaseSource};
use crate::pass::once::release_location;
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
pub async fn gather(
    settings: &Settings,
    env_flag: Option<&str>,
    tags: &impl TagSource,
    releases: &impl ReleaseSource,
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
    };
    let mut last_good = None;
    match environment::resolve(env_flag, settings, tags).await {
        Ok(env) => {
            let location = release_location(settings, &env.name);
            match releases.fetch(&location, None).await {
                Ok(Fetched::Changed(release)) => {
                    status.desired = Some(PublishedStatus {
                        sha: release.sha.to_string(),
                        uri: location.to_string(),
                        etag: release.etag,
                        read_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                    })
                }
                Ok(Fetched::Unchanged) => {}
                Err(e) => status.desired_error = Some(e.to_string()),
            }
            if let Ok(state) = &state {
                last_good = state.last_good_in(&env.name).map(|g| g.sha.clone());
            }
            status.environment = Some(EnvironmentStatus { name: env.name, source: env.source.to_string() });
        }
        Err(e) => status.environment_error = Some(e.to_string()),
    }
    if let Some(engine) = engine {
        match engine.container(&settings.container.name).await {
            Ok(Some(c)) => {
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
    let mut serving_address = None;
    if let Some(engine) = engine {
        if let Ok(Some(c)) = engine.container(&settings.container.name).await {
            serving_address = c.ip.clone().map(|ip| (ip, c.name.clone()));
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
    status.target = meant_to_run(
        status.desired.as_ref().map(|d| d.sha.as_str()),
        status.paused.as_ref(),
        running,
        last_good.as_deref(),
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
/// says so).
fn meant_to_run(
    desired: Option<&str>,
    pause: Option<&Pause>,
    running: Option<&str>,
    last_good: Option<&str>,
) -> Option<TargetStatus> {
    let (sha, source) = match pause {
        None => (desired?, TargetSource::S3),
        Some(Pause { pinned_sha: Some(pinned), .. }) => (pinned.as_str(), TargetSource::Pinned),
        Some(_) => (running.or(last_good)?, TargetSource::Paused),
    };
    Some(TargetStatus { sha: sha.to_owned(), source })
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
            (Some(d), _) => {
                format!("{} ({}, etag {}, read {})", d.sha, d.uri, d.etag.as_deref().unwrap_or("-"), d.read_at)
            }
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
    if let Some(t) = s.target.as_ref().filter(|t| t.source != TargetSource::S3) {
        let why = match t.source {
            TargetSource::Pinned => "pinned by `blog-agent sync --sha`",
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
            assert_eq!(meant_to_run(desired, pause.as_ref(), running, last_good), want, "{name}");
        }
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
        }
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
