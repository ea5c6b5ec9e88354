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
use crate::spec::DesiredContainer;

/// What the operator asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    /// `--env`: overrides config and tag.
    pub environment: Option<String>,
    /// `--sha`: skips S3.
    pub sha: Option<Sha>,
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
) -> Result<SyncReport, SyncError> {
    let env: Environment = environment::resolve(request.environment.as_deref(), settings, &services.tags).await?;
    let sha = match &request.sha {
        Some(sha) => sha.clone(),
        None => {
            let location = release_location(settings, &env.name);
            match services.releases.fetch(&location, None).await? {
                Fetched::Changed(release) => release.sha,
                // Only possible with an ETag, which an unconditional GET does not send.
                Fetched::Unchanged => unreachable!("unconditional GET answered 304"),
            }
        }
    };
    let span = tracing::info_span!("sync", env = %env.name, sha = %sha);
    let _entered = span.enter();
    tracing::info!(env_source = %env.source, "desired release");
    let desired = DesiredContainer::new(settings, &env.name, &sha);

    let _lock = lock::acquire(&settings.agent.state_dir, settings.agent.lock_timeout).await?;
    apply(settings, &desired, services).await.map(|(action, container_id)| SyncReport {
        environment: env.name.clone(),
        environment_source: env.source.to_string(),
        sha: sha.to_string(),
        image: desired.image.clone(),
        container: desired.name.clone(),
        container_id,
        action,
    })
}

/// Observes Docker, plans, and carries the plan out. Call with the lock held.
pub async fn apply<T, R, C: CredentialSource>(
    settings: &Settings,
    desired: &DesiredContainer,
    services: &Services<T, R, C>,
) -> Result<(Action, String), SyncError> {
    let engine = &services.engine;
    deploy::recover_interrupted(engine, &desired.name).await?;
    let current = engine.container(&desired.name).await?;
    let plan =
        reconcile::plan(desired.sha.as_str(), &desired.spec_hash(), current.as_ref().map(|c| c.observed()).as_ref());
    tracing::debug!(?plan, "plan");
    match plan {
        Plan::Converged => {
            let current = current.expect("converged implies a container");
            deploy::check_serving(settings, settings.health.timeout)
                .await
                .map_err(|p| SyncError::Unhealthy { container: desired.name.clone(), detail: p.to_string() })?;
            tracing::info!(container = %desired.name, "already running the desired version");
            Ok((Action::Unchanged, current.id))
        }
        Plan::Restart { .. } => {
            let current = current.expect("restart implies a container");
            tracing::info!(container = %desired.name, status = %current.status, "container is not running; starting it");
            deploy::restart(engine, settings, &current).await?;
            Ok((Action::Restarted, current.id))
        }
        Plan::Deploy { reason, .. } => {
            tracing::info!(container = %desired.name, %reason, "deploying");
            let (image, pulled) = deploy::ensure_image(engine, settings, desired, &services.credentials).await?;
            let digest = image.digest.clone().unwrap_or_else(|| image.id.clone());
            deploy::verify_candidate(engine, settings, desired, &digest).await?;
            let id = deploy::cut_over(engine, settings, desired, &digest, current.as_ref()).await?;
            tracing::info!(container = %desired.name, digest = %digest, "deployed and serving");
            Ok((Action::Deployed { reason: reason.to_string(), pulled }, id))
        }
    }
}
