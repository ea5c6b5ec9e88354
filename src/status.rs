//! `blog-agent status`: what this host should run, what it runs, and why, gathered read-only
//! (no lock held, nothing changed). The JSON form is a stable, versioned interface: fields are
//! only ever added; see docs/status.md.

use serde::Serialize;

use crate::config::Settings;
use crate::engine::Engine;
use crate::environment;
use crate::imds::TagSource;
use crate::release::{Fetched, ReleaseSource};
use crate::spec::{LABEL_DIGEST, LABEL_SHA};
use crate::state::{LastPass, Pause, State};
use crate::sync::release_location;

/// Bumped only on an incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub schema_version: u32,
    pub environment: Option<EnvironmentStatus>,
    pub environment_error: Option<String>,
    pub desired: Option<DesiredStatus>,
    pub desired_error: Option<String>,
    pub container: Option<ContainerStatus>,
    pub container_error: Option<String>,
    pub paused: Option<Pause>,
    pub last_good_sha: Option<String>,
    pub last_pass: Option<LastPass>,
    /// The container runs the desired SHA and answers its health probe.
    pub converged: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct EnvironmentStatus {
    pub name: String,
    pub source: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DesiredStatus {
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
    let state = State::load(&settings.agent.state_dir);
    let mut status = Status {
        schema_version: SCHEMA_VERSION,
        environment: None,
        environment_error: None,
        desired: None,
        desired_error: None,
        container: None,
        container_error: engine_error,
        paused: Pause::load(&settings.agent.state_dir),
        last_good_sha: state.last_good.map(|g| g.sha),
        last_pass: LastPass::load(&settings.agent.state_dir),
        converged: false,
    };
    match environment::resolve(env_flag, settings, tags).await {
        Ok(env) => {
            let location = release_location(settings, &env.name);
            match releases.fetch(&location, None).await {
                Ok(Fetched::Changed(release)) => {
                    status.desired = Some(DesiredStatus {
                        sha: release.sha.to_string(),
                        uri: location.to_string(),
                        etag: release.etag,
                        read_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
                    })
                }
                Ok(Fetched::Unchanged) => {}
                Err(e) => status.desired_error = Some(e.to_string()),
            }
            status.environment = Some(EnvironmentStatus { name: env.name, source: env.source.to_string() });
        }
        Err(e) => status.environment_error = Some(e.to_string()),
    }
    if let Some(engine) = engine {
        match engine.container(&settings.container.name).await {
            Ok(Some(c)) => {
                let url = &settings.health.url;
                let health = match crate::health::get_status(&url.host, url.port, &url.path).await {
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
    status.converged = match (&status.desired, &status.container) {
        (Some(d), Some(c)) => c.sha.as_deref() == Some(d.sha.as_str()) && c.health.ok,
        _ => false,
    };
    status
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
    line(
        "updates",
        match &s.paused {
            Some(p) => format!(
                "PAUSED by {} at {}{} (`blog-agent resume` to follow S3)",
                p.by,
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(p.at)),
                p.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default()
            ),
            None => "automatic".into(),
        },
    );
    line("last good", s.last_good_sha.clone().unwrap_or_else(|| "-".into()));
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
