//! Carries out a [`Plan`](crate::reconcile::Plan) on Docker without ever leaving the host
//! with less than it had.
//!
//! A deploy goes: image on disk (pull if missing) -> candidate container with no published
//! ports, probed over the Docker bridge -> only then cut-over: stop the old container, move it
//! aside as `<name>-previous`, start the new one under `<name>` with the real ports, probe the
//! health URL. Any failure before cut-over changes nothing the site depends on; a failure after
//! it removes the new container and puts the previous one back, running.

use std::time::Duration;

use crate::config::Settings;
use crate::engine::{ContainerInfo, Engine, EngineError, ImageInfo};
use crate::health::{self, ProbeFailed};
use crate::registry::{CredentialSource, RegistryError};
use crate::shutdown::{Cancelled, Shutdown};
use crate::spec::DesiredContainer;

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(
        "new version {image} failed its health probe before cut-over; the running version was not touched: {probe}"
    )]
    CandidateUnhealthy { image: String, probe: ProbeFailed },
    #[error("new version {image} failed its health probe after cut-over: {probe}; {restored}")]
    CutoverUnhealthy { image: String, probe: ProbeFailed, restored: String },
    #[error("container {container} did not come back healthy after a start: {probe}")]
    RestartUnhealthy { container: String, probe: ProbeFailed },
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

/// Suffixes of the transient containers a deploy uses next to `<name>`.
const CANDIDATE: &str = "candidate";
const NEXT: &str = "next";
const PREVIOUS: &str = "previous";

fn aside(name: &str, suffix: &str) -> String {
    format!("{name}-{suffix}")
}

/// Repairs what an interrupted deploy left behind, before anything is observed:
/// stray candidates and un-started new containers are removed; a `-previous` with no
/// `<name>` is the last serving version caught mid-cut-over, and is put back.
/// Only containers carrying our label are touched.
pub async fn recover_interrupted(engine: &Engine, settings: &Settings, name: &str) -> Result<(), EngineError> {
    for suffix in [CANDIDATE, NEXT] {
        if let Some(c) = engine.container(&aside(name, suffix)).await?.filter(ContainerInfo::is_managed) {
            tracing::info!(container = %c.name, "removing leftover from an interrupted deploy");
            engine.remove(&c.id).await?;
        }
    }
    let Some(prev) = engine.container(&aside(name, PREVIOUS)).await?.filter(ContainerInfo::is_managed) else {
        return Ok(());
    };
    match engine.container(name).await? {
        None => {
            tracing::warn!(container = %name, "restoring the previous version left aside by an interrupted deploy");
            engine.rename(&prev.id, name).await?;
            if !prev.running {
                engine.start(&prev.id).await?;
            }
        }
        Some(new) => {
            // Interrupted between starting the new version and proving it: prove it now.
            let url = &settings.health.url;
            let healthy = health::wait_healthy(&url.host, url.port, &url.path, settings.health.timeout, || {
                still_running(engine, &new.id, new.restart_count)
            })
            .await;
            match healthy {
                Ok(_) => engine.remove(&prev.id).await?,
                Err(probe) => {
                    tracing::warn!(container = %name, %probe, "the new version left by an interrupted deploy is unhealthy; restoring the previous one");
                    let restored = roll_back(engine, name, &new.id, Some(&prev)).await;
                    tracing::warn!(container = %name, "{restored}");
                }
            }
        }
    }
    Ok(())
}

/// Makes sure the image is on disk, pulling it with fresh registry credentials if not.
/// Returns the image and whether it was pulled.
pub async fn ensure_image(
    engine: &Engine,
    settings: &Settings,
    desired: &DesiredContainer,
    creds: &impl CredentialSource,
    shutdown: &Shutdown,
) -> Result<(ImageInfo, bool), DeployError> {
    let repo = settings.image.repository.to_string();
    if let Some(image) = engine.image(&desired.image, &repo).await? {
        return Ok((image, false));
    }
    tracing::info!(image = %desired.image, "pulling {}", desired.image);
    let creds_source = creds;
    let creds = shutdown.race(creds_source.credentials()).await??;
    let pull = engine.pull(
        &repo,
        desired.sha.as_str(),
        &settings.image.repository.registry,
        &creds,
        settings.image.pull_timeout,
    );
    let image = match shutdown.race(pull).await? {
        Ok(image) => image,
        Err(e) => {
            let text = e.to_string().to_lowercase();
            if text.contains("unauthorized") || text.contains("authentication required") || text.contains("denied") {
                // A refused token is not reused for hours: the next attempt asks ECR again.
                creds_source.invalidate();
            }
            return Err(e.into());
        }
    };
    tracing::info!(image = %desired.image, digest = image.digest.as_deref().unwrap_or("unknown"), "pulled {}", desired.image);
    Ok((image, true))
}

/// Runs the new version as a throwaway container with no published ports and probes it over
/// the bridge network. The serving container is not touched.
pub async fn verify_candidate(
    engine: &Engine,
    settings: &Settings,
    desired: &DesiredContainer,
    digest: &str,
    shutdown: &Shutdown,
) -> Result<(), DeployError> {
    let name = aside(&desired.name, CANDIDATE);
    if let Some(stale) = engine.container(&name).await?.filter(ContainerInfo::is_managed) {
        engine.remove(&stale.id).await?;
    }
    let id = engine.create(&name, desired, digest, "candidate", false).await?;
    let result = shutdown.race(probe_candidate(engine, settings, desired, &id)).await.unwrap_or_else(|c| Err(c.into()));
    if let Err(e) = engine.remove(&id).await {
        tracing::warn!(container = %name, error = %e, "could not remove candidate container");
    }
    result
}

async fn probe_candidate(
    engine: &Engine,
    settings: &Settings,
    desired: &DesiredContainer,
    id: &str,
) -> Result<(), DeployError> {
    engine.start(id).await?;
    let info = engine.container(id).await?;
    let path = &settings.health.url.path;
    let Some(ip) = info.as_ref().and_then(|c| c.ip.clone()) else {
        let status = info.map(|c| format!("{} (exit code {})", c.status, c.exit_code.unwrap_or(-1)));
        let probe = ProbeFailed {
            url: format!("candidate port {}{path}", desired.probe_port()),
            last: format!("the container has no bridge address; it is {}", status.as_deref().unwrap_or("gone")),
        };
        return Err(DeployError::CandidateUnhealthy { image: desired.image.clone(), probe });
    };
    health::wait_healthy(&ip, desired.probe_port(), path, settings.health.timeout, || still_running(engine, id, 0))
        .await
        .map(|code| tracing::info!(image = %desired.image, status = code, "candidate answered"))
        .map_err(|probe| DeployError::CandidateUnhealthy { image: desired.image.clone(), probe })
}

/// `Err` with the exit status when the container is no longer running, or has crashed since
/// `restarts_before`: under `unless-stopped` Docker reports a crash-looping container as
/// running, so a rising restart count is how a crash shows during a probe.
async fn still_running(engine: &Engine, id: &str, restarts_before: i64) -> Result<(), String> {
    match engine.container(id).await {
        Ok(Some(c)) if c.status == "restarting" || c.restart_count > restarts_before => Err(format!(
            "the container keeps crashing (Docker restarted it {} times, exit code {})",
            c.restart_count - restarts_before,
            c.exit_code.unwrap_or(-1)
        )),
        Ok(Some(c)) if c.running => Ok(()),
        Ok(Some(c)) => Err(format!("the container is {} (exit code {})", c.status, c.exit_code.unwrap_or(-1))),
        Ok(None) => Err("container disappeared".into()),
        Err(_) => Ok(()), // cannot tell: keep probing until the deadline
    }
}

/// Replaces `old` (if any) with a new container of `desired`. On failure after the old one was
/// stopped, the new one is removed and the old one is put back and started.
pub async fn cut_over(
    engine: &Engine,
    settings: &Settings,
    desired: &DesiredContainer,
    digest: &str,
    old: Option<&ContainerInfo>,
    shutdown: &Shutdown,
) -> Result<String, DeployError> {
    let name = &desired.name;
    let next_name = aside(name, NEXT);
    if let Some(stale) = engine.container(&next_name).await?.filter(ContainerInfo::is_managed) {
        engine.remove(&stale.id).await?;
    }
    // Created before the old one stops, so the gap is only stop + rename + start.
    let new_id = engine.create(&next_name, desired, digest, "serving", true).await?;
    let previous_name = aside(name, PREVIOUS);
    if let Some(old) = old {
        if let Some(stale) = engine.container(&previous_name).await?.filter(|c| c.id != old.id) {
            engine.remove(&stale.id).await?;
        }
    }
    let started = async {
        if let Some(old) = old {
            engine.stop(&old.id, settings.container.stop_timeout).await?;
            engine.rename(&old.id, &previous_name).await?;
        }
        engine.rename(&new_id, name).await?;
        engine.start(&new_id).await?;
        Ok::<(), EngineError>(())
    }
    .await;
    let probe = match started {
        Ok(()) => {
            let url = &settings.health.url;
            let probe = health::wait_healthy(&url.host, url.port, &url.path, settings.health.timeout, || {
                still_running(engine, &new_id, 0)
            });
            // On shutdown mid-probe the new version is unproven: put the old one back.
            shutdown
                .race(probe)
                .await
                .unwrap_or_else(|_| Err(ProbeFailed { url: url.to_string(), last: "interrupted by shutdown".into() }))
        }
        Err(e) => Err(ProbeFailed { url: settings.health.url.to_string(), last: e.to_string() }),
    };
    match probe {
        Ok(_) => {
            if let Some(old) = old {
                if let Err(e) = engine.remove(&old.id).await {
                    tracing::warn!(container = %previous_name, error = %e, "could not remove the previous container");
                }
            }
            Ok(new_id)
        }
        Err(probe) => {
            let restored = roll_back(engine, name, &new_id, old).await;
            if shutdown.is_requested() {
                tracing::warn!(container = %name, "shutdown during cut-over: {restored}");
                return Err(Cancelled.into());
            }
            Err(DeployError::CutoverUnhealthy { image: desired.image.clone(), probe, restored })
        }
    }
}

/// Puts `old` back under `name`, running. Returns a sentence for the error message.
async fn roll_back(engine: &Engine, name: &str, new_id: &str, old: Option<&ContainerInfo>) -> String {
    // Free the name first (a rename is quicker and surer than a removal), restore, then clean up.
    let failed_name = aside(name, "failed");
    let _ = engine.stop(new_id, Duration::from_secs(1)).await;
    if let Err(e) = engine.rename(new_id, &failed_name).await {
        tracing::warn!(container = %name, error = %e, "could not move the failed new container aside");
    }
    let restore = async {
        let Some(old) = old else { return Ok(false) };
        // It was moved aside to -previous only if the cut-over got that far: ask Docker.
        if let Some(current) = engine.container(&old.id).await? {
            if current.name != name {
                engine.rename(&old.id, name).await?;
            }
        }
        engine.start(&old.id).await?;
        Ok::<bool, EngineError>(true)
    };
    let restored = restore.await;
    if let Err(e) = engine.remove(new_id).await {
        tracing::error!(container = %failed_name, error = %e, "could not remove the failed new container");
    }
    let Some(old) = old else {
        return "there was no previous container to restore".into();
    };
    match restored {
        Ok(_) => {
            tracing::warn!(container = %name, sha = old.labels.get(crate::spec::LABEL_SHA).map(String::as_str).unwrap_or("unknown"), "previous version restored");
            "the previous version was restored and is running".into()
        }
        Err(e) => format!("restoring the previous version failed too: {e}"),
    }
}

/// Starts a stopped container of the right spec and waits until it serves.
pub async fn restart(
    engine: &Engine,
    settings: &Settings,
    container: &ContainerInfo,
    shutdown: &Shutdown,
) -> Result<(), DeployError> {
    engine.start(&container.id).await?;
    let url = &settings.health.url;
    let probe = health::wait_healthy(&url.host, url.port, &url.path, settings.health.timeout, || {
        still_running(engine, &container.id, container.restart_count)
    });
    shutdown
        .race(probe)
        .await?
        .map(drop)
        .map_err(|probe| DeployError::RestartUnhealthy { container: container.name.clone(), probe })
}

/// Probes the serving container once more (a converged host must also be a healthy one).
pub async fn check_serving(settings: &Settings, timeout: Duration) -> Result<u16, ProbeFailed> {
    let url = &settings.health.url;
    health::wait_healthy(&url.host, url.port, &url.path, timeout, || async { Ok(()) }).await
}

/// After a deploy: keeps the images containers use plus the `keep` newest others of the
/// repository, and `protect` (the previous good version, for rollback) whatever its age;
/// removes the rest. Failures are logged, never fatal: disk hygiene must not fail a deploy.
pub async fn prune_images(engine: &Engine, settings: &Settings, protect: Option<&str>) {
    let repo = settings.image.repository.to_string();
    let result = async {
        let in_use = engine.images_in_use().await?;
        let protected_tag = protect.map(|sha| settings.image.repository.reference(sha));
        let mut kept = 0;
        for image in engine.repo_images(&repo).await? {
            let is_protected = protected_tag.as_ref().is_some_and(|t| image.tags.contains(t));
            if in_use.contains(&image.id) {
                continue;
            }
            // The previous good version counts as one of the kept, but is kept in any case.
            if is_protected || kept < settings.reconcile.keep_images {
                kept += 1;
                continue;
            }
            tracing::info!(image = %image.tags.join(","), "removing old image");
            if let Err(e) = engine.remove_image(&image.id).await {
                tracing::info!(image = %image.id, error = %e, "could not remove old image");
            }
        }
        Ok::<(), EngineError>(())
    };
    if let Err(e) = result.await {
        tracing::warn!(error = %e, "image cleanup failed");
    }
}
