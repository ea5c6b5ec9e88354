//! One reconcile pass (`blog-agent sync`): environment -> desired SHA -> lock -> observe ->
//! plan -> deploy. Everything that can be refused (environment, SHA) is checked before the lock
//! is taken or Docker is touched, so bad input changes nothing.

use std::fmt;

use serde::Serialize;

use crate::config::Settings;
use crate::deploy::{self, DeployError};
use crate::engine::{Engine, EngineError};
use crate::environment::{self, Environment, EnvironmentError};
use crate::imds::TagSource;
use crate::lock::{self, LockError};
use crate::reconcile::{self, Plan};
use crate::registry::CredentialSource;
use crate::release::{Fetched, ObjectLocation, ReleaseError, ReleaseSource};
use crate::sha::Sha;
use crate::shutdown::{Cancelled, Shutdown};
use crate::spec::{DesiredContainer, LABEL_DIGEST};
use crate::state::{now_unix, GoodRelease, Pause, State};

/// What the operator asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    /// `--env`: overrides config and tag.
    pub environment: Option<String>,
    /// `--sha`: skips S3, and pauses automatic updates so `run` does not undo it.
    pub sha: Option<Sha>,
    /// `--dry-run`: plan only; take no lock, change nothing.
    pub dry_run: bool,
    /// Who is asking, recorded in the pause `--sha` creates.
    pub operator: String,
}

/// The services a pass talks to. Generic so each can be replaced in tests.
pub struct Services<T, R, C> {
    pub tags: T,
    pub releases: R,
    pub credentials: C,
    pub engine: Engine,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Environment(#[from] EnvironmentError),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Deploy(#[from] DeployError),
    #[error("container {container} runs the desired version but is not healthy: {detail}")]
    Unhealthy { container: String, detail: String },
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
    #[error("{0}")]
    State(String),
}

impl SyncError {
    pub fn is_cancelled(&self) -> bool {
        matches!(self, SyncError::Cancelled(_) | SyncError::Deploy(DeployError::Cancelled(_)))
    }
}

/// Result of [`apply`].
#[derive(Debug, Clone)]
pub struct Applied {
    pub action: Action,
    pub container_id: String,
    pub digest: String,
}

/// What a pass did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Already running the desired version; nothing was touched.
    Unchanged,
    /// The stopped container was started again.
    Restarted,
    /// A new container replaced the old one (or was the first).
    Deployed { reason: String, pulled: bool },
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Unchanged => f.write_str("already running; nothing changed"),
            Action::Restarted => f.write_str("restarted the stopped container"),
            Action::Deployed { reason, pulled: true } => write!(f, "pulled and deployed ({reason})"),
            Action::Deployed { reason, pulled: false } => write!(f, "deployed ({reason})"),
        }
    }
}

/// The result of a converged pass, printed by `sync` (as JSON with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub environment: String,
    pub environment_source: String,
    pub sha: String,
    pub image: String,
    pub container: String,
    pub container_id: String,
    pub action: Action,
    /// Set when automatic updates are paused: what that changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// `--dry-run`: the steps a real run would take.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Vec<String>>,
}

/// Where the release file for `env` lives.
pub fn release_location(settings: &Settings, env: &str) -> ObjectLocation {
    ObjectLocation {
        bucket: settings.release.bucket.clone(),
        // Allowed environments are validated to have a key.
        key: settings.release_key(env).unwrap_or_default().to_owned(),
    }
}

/// Runs one pass.
pub async fn sync_once<T: TagSource, R: ReleaseSource, C: CredentialSource>(
    settings: &Settings,
    request: &SyncRequest,
    services: &Services<T, R, C>,
    shutdown: &Shutdown,
) -> Result<SyncReport, SyncError> {
    let env: Environment =
        shutdown.race(environment::resolve(request.environment.as_deref(), settings, &services.tags)).await??;
    if let (Some(pinned), false) = (&request.sha, request.dry_run) {
        // Before the lock: a `run` waiting for it must already see the pause when it gets it.
        let pause = Pause {
            by: request.operator.clone(),
            reason: Some(format!("pinned to {} by blog-agent sync --sha", pinned.short())),
            at: now_unix(),
            pinned_sha: Some(pinned.to_string()),
        };
        pause.save(&settings.agent.state_dir).map_err(|e| SyncError::State(e.to_string()))?;
        tracing::warn!(sha = %pinned, "automatic updates paused; `blog-agent resume` follows S3 again");
    }
    let _lock = if request.dry_run {
        None
    } else {
        Some(shutdown.race(lock::acquire(&settings.agent.state_dir, settings.agent.lock_timeout)).await??)
    };
    // Read S3 only now: after waiting for the lock, the object may have moved on.
    let sha = match &request.sha {
        Some(sha) => sha.clone(),
        None => {
            let location = release_location(settings, &env.name);
            match shutdown.race(services.releases.fetch(&location, None)).await?? {
                Fetched::Changed(release) => release.sha,
                // Only possible with an ETag, which an unconditional GET does not send.
                Fetched::Unchanged => unreachable!("unconditional GET answered 304"),
            }
        }
    };
    let (sha, paused) = if request.sha.is_some() {
        (sha, None)
    } else {
        hold_if_paused(settings, &services.engine, &env.name, sha).await?
    };
    let span = tracing::info_span!("sync", env = %env.name, sha = %sha);
    let _entered = span.enter();
    tracing::info!(env_source = %env.source, "desired release {sha} for {} (environment from {})", env.name, env.source);
    let desired = DesiredContainer::new(settings, &env.name, &sha);
    let report = |action, container_id, plan| SyncReport {
        environment: env.name.clone(),
        environment_source: env.source.to_string(),
        sha: sha.to_string(),
        image: desired.image.clone(),
        container: desired.name.clone(),
        container_id,
        action,
        paused: paused.clone(),
        plan,
    };
    if request.dry_run {
        let (action, id, steps) = dry_run(settings, &desired, &services.engine).await?;
        return Ok(report(action, id, Some(steps)));
    }
    let applied = apply(settings, &desired, services, shutdown, true).await?;
    Ok(report(applied.action, applied.container_id, None))
}

/// While automatic updates are paused, stays on the version the container carries (or the
/// pinned or last good one) instead of `wanted`. Returns the SHA to use and, when it differs
/// from `wanted`, a note saying so.
pub async fn hold_if_paused(
    settings: &Settings,
    engine: &Engine,
    env: &str,
    wanted: Sha,
) -> Result<(Sha, Option<String>), SyncError> {
    let Some(pause) = Pause::load(&settings.agent.state_dir) else { return Ok((wanted, None)) };
    let running = engine
        .container(&settings.container.name)
        .await?
        .filter(|c| c.is_managed())
        .and_then(|c| c.labels.get(crate::spec::LABEL_SHA).cloned());
    let state = State::load(&settings.agent.state_dir);
    let last_good = state.last_good_in(env).map(|g| g.sha.as_str());
    let held = reconcile::paused_target(running.as_deref(), pause.pinned_sha.as_deref(), last_good)
        .and_then(|s| Sha::parse(s).ok());
    match held {
        Some(held) if held != wanted => {
            let note = format!(
                "automatic updates paused by {}{}: staying on {} (S3 has {}); `blog-agent resume` to follow S3",
                pause.by,
                pause.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(),
                held.short(),
                wanted.short()
            );
            Ok((held, Some(note)))
        }
        _ => Ok((wanted, None)),
    }
}

/// `--dry-run`: observes and plans, and describes the steps without taking any.
async fn dry_run(
    settings: &Settings,
    desired: &DesiredContainer,
    engine: &Engine,
) -> Result<(Action, String, Vec<String>), SyncError> {
    let current = engine.container(&desired.name).await?;
    let plan =
        reconcile::plan(desired.sha.as_str(), &desired.spec_hash(), current.as_ref().map(|c| c.observed()).as_ref());
    let id = current.as_ref().map(|c| c.id.clone()).unwrap_or_default();
    let mut steps = Vec::new();
    let action = match plan {
        Plan::Converged => {
            steps.push(format!("nothing to do: {} already runs {}", desired.name, desired.sha));
            Action::Unchanged
        }
        Plan::Restart { .. } => {
            steps.push(format!(
                "start the stopped container {} ({}) and probe {}",
                desired.name, desired.sha, settings.health.url
            ));
            Action::Restarted
        }
        Plan::Deploy { reason, .. } => {
            let repo = settings.image.repository.to_string();
            let present = engine.image(&desired.image, &repo).await?.is_some();
            steps.push(format!("why: {reason}"));
            steps.push(if present {
                format!("image {} is already on this host: no pull", desired.image)
            } else {
                format!("get an ECR token and pull {}", desired.image)
            });
            if current.is_some() {
                steps.push(format!(
                    "run {}-candidate (no published ports) and probe port {} path {} over the Docker bridge",
                    desired.name,
                    desired.probe_port(),
                    settings.health.url.path
                ));
            }
            let ports: Vec<String> = desired.ports.iter().map(|p| p.to_string()).collect();
            if let Some(old) = &current {
                let old_sha = old.labels.get(crate::spec::LABEL_SHA).map(String::as_str).unwrap_or("unknown");
                steps.push(format!(
                    "stop {} (running {old_sha}) and keep it aside as {}-previous",
                    old.name, desired.name
                ));
            }
            steps.push(format!(
                "start {} from {} on ports {} and probe {}",
                desired.name,
                desired.image,
                ports.join(", "),
                settings.health.url
            ));
            if current.is_some() {
                steps.push(format!(
                    "remove {}-previous once the new version is healthy (put it back if not)",
                    desired.name
                ));
            }
            steps.push(format!(
                "remove images of {repo} beyond the newest {} not in use",
                settings.reconcile.keep_images
            ));
            Action::Deployed { reason: reason.to_string(), pulled: !present }
        }
    };
    Ok((action, id, steps))
}

/// Observes Docker, plans, and carries the plan out; on success records the version as
/// last-known-good and prunes old images. Call with the lock held. `probe_converged` also
/// probes the health URL when nothing had to change (a one-off `sync` reports health; the
/// loop relies on Docker events instead).
pub async fn apply<T, R, C: CredentialSource>(
    settings: &Settings,
    desired: &DesiredContainer,
    services: &Services<T, R, C>,
    shutdown: &Shutdown,
    probe_converged: bool,
) -> Result<Applied, SyncError> {
    let applied = carry_out(settings, desired, services, shutdown, probe_converged).await?;
    let mut state = State::load(&settings.agent.state_dir);
    let good = GoodRelease {
        sha: desired.sha.to_string(),
        digest: applied.digest.clone(),
        environment: desired.environment.clone(),
        at: now_unix(),
    };
    if state.record_good(good) {
        if let Err(e) = state.save(&settings.agent.state_dir) {
            tracing::warn!(error = %e, "could not record the last-known-good version");
        }
    }
    if matches!(applied.action, Action::Deployed { .. }) {
        let protect = state.previous_good.as_ref().map(|g| g.sha.as_str());
        deploy::prune_images(&services.engine, settings, protect).await;
    }
    Ok(applied)
}

async fn carry_out<T, R, C: CredentialSource>(
    settings: &Settings,
    desired: &DesiredContainer,
    services: &Services<T, R, C>,
    shutdown: &Shutdown,
    probe_converged: bool,
) -> Result<Applied, SyncError> {
    let engine = &services.engine;
    deploy::recover_interrupted(engine, settings, &desired.name).await?;
    let mut current = engine.container(&desired.name).await?;
    // Caught mid `docker rm -f`: wait for the removal to finish rather than act on a ghost.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while current.as_ref().is_some_and(|c| c.status == "removing") && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        current = engine.container(&desired.name).await?;
    }
    let plan =
        reconcile::plan(desired.sha.as_str(), &desired.spec_hash(), current.as_ref().map(|c| c.observed()).as_ref());
    tracing::debug!(?plan, "plan");
    match plan {
        Plan::Converged => {
            let current = current.expect("converged implies a container");
            if probe_converged {
                deploy::check_serving(settings, settings.health.timeout)
                    .await
                    .map_err(|p| SyncError::Unhealthy { container: desired.name.clone(), detail: p.to_string() })?;
                tracing::info!(container = %desired.name, "already running the desired version");
            } else {
                tracing::debug!(container = %desired.name, "already running the desired version");
            }
            let digest = current.labels.get(LABEL_DIGEST).cloned().unwrap_or_default();
            Ok(Applied { action: Action::Unchanged, container_id: current.id, digest })
        }
        Plan::Restart { .. } => {
            let current = current.expect("restart implies a container");
            tracing::info!(container = %desired.name, status = %current.status, "container is not running; starting it");
            deploy::restart(engine, settings, &current, shutdown).await?;
            let digest = current.labels.get(LABEL_DIGEST).cloned().unwrap_or_default();
            Ok(Applied { action: Action::Restarted, container_id: current.id, digest })
        }
        Plan::Deploy { reason, .. } => {
            tracing::info!(container = %desired.name, %reason, "deploying {} as {}: {reason}", desired.sha, desired.name);
            let prepared = async {
                let (image, pulled) =
                    deploy::ensure_image(engine, settings, desired, &services.credentials, shutdown).await?;
                let digest = image.digest.clone().unwrap_or_else(|| image.id.clone());
                // The candidate protects a serving version from a bad release. With nothing
                // under the name there is nothing to protect: the real container is probed
                // after it starts instead, and removed if it fails, which saves a whole
                // container start on a cold host.
                if current.is_some() {
                    deploy::verify_candidate(engine, settings, desired, &digest, shutdown).await?;
                }
                Ok::<_, DeployError>((digest, pulled))
            }
            .await;
            let (digest, pulled) = match prepared {
                Ok(ok) => ok,
                Err(e) => {
                    // The new version cannot be had; a stopped old one of ours is still better
                    // than nothing.
                    if let Some(old) = current.as_ref().filter(|c| !c.running && c.is_managed()) {
                        tracing::warn!(container = %old.name, "new version unavailable; starting the stopped previous one");
                        if let Err(start) = engine.start(&old.id).await {
                            tracing::warn!(container = %old.name, error = %start, "could not start it");
                        }
                    }
                    return Err(e.into());
                }
            };
            let id = deploy::cut_over(engine, settings, desired, &digest, current.as_ref(), shutdown).await?;
            tracing::info!(container = %desired.name, digest = %digest, "deployed and serving: {} {}", desired.name, desired.sha);
            Ok(Applied { action: Action::Deployed { reason: reason.to_string(), pulled }, container_id: id, digest })
        }
    }
}
