//! Do: the Docker steps of a [`Decision`](super::decide::Decision), each of which never leaves
//! the host with less than it had. Nothing here chooses a release.
//!
//! A deploy goes: image on disk (pull if missing) -> candidate container with no published
//! ports, probed over the Docker bridge -> only then cut-over: stop the old container, move it
//! aside as `<name>-previous`, start the new one under `<name>` with the real ports, probe the
//! health URL. Any failure before cut-over changes nothing the site depends on; a failure after
//! it removes the new container and puts the previous one back, running.

use std::time::Duration;

use crate::config::{HealthSettings, Settings};
use crate::outside::docker::{ContainerInfo, Engine, EngineError, ImageInfo, Role};
use crate::outside::health::{self, ProbeFailed, Stopped};
use crate::outside::registry::{CredentialSource, RegistryError};
use crate::runtime::shutdown::{Cancelled, Shutdown};
use crate::spec::ContainerSpec;

use super::snapshot::{aside, CANDIDATE, FAILED, NEXT, PREVIOUS};

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
    /// `bridge_ok`: the new version answered 2xx over the Docker bridge, so what failed is the
    /// path through this host's rules or published port (see [`crate::fleet::verdict`]).
    #[error("new version {image} failed its health probe after cut-over: {probe}; {restored}")]
    CutoverUnhealthy { image: String, probe: ProbeFailed, restored: String, bridge_ok: bool },
    /// Docker could not stop the old container or start the new one (its host port taken,
    /// say): this host's problem, not the release's, so it is never halted fleet-wide.
    #[error("could not start new version {image} here: {source}; {restored}")]
    CutoverFailed { image: String, source: EngineError, restored: String },
    #[error(transparent)]
    Route(#[from] super::routes::RouteError),
    #[error("container {container} did not come back healthy after a start: {probe}")]
    RestartUnhealthy { container: String, probe: ProbeFailed },
    #[error(
        "{image} is {got} on this host, but it was published as {published}: the tag was pushed again after it was \
         published; not running it (publish the new content under its own SHA, or roll back)"
    )]
    DigestMismatch { image: String, published: String, got: String },
    /// Not enough disk space for the image: the pull was refused or filled the disk.
    #[error(transparent)]
    Disk(#[from] crate::outside::disk::NoRoom),
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
}

/// Refuses `image` (the pulled or local image of `desired`) unless it is exactly the one
/// published: a tag moved after publish changes nothing on any host.
pub fn check_digest(desired: &ContainerSpec, image: &ImageInfo, published: &str) -> Result<(), DeployError> {
    match image.digest.as_deref() {
        Some(got) if got == published => Ok(()),
        got => Err(DeployError::DigestMismatch {
            image: desired.image.clone(),
            published: published.to_owned(),
            got: got.unwrap_or("without a registry digest").to_owned(),
        }),
    }
}

/// Removes a leftover of an interrupted deploy (the decision checked it is ours).
pub async fn remove_leftover(engine: &Engine, container: &str, id: &str) -> Result<(), EngineError> {
    tracing::info!(container = %container, "removing leftover from an interrupted deploy");
    engine.remove(id).await
}

/// Puts `-previous` back under `name` (nothing else holds the name), started if it was not.
pub async fn restore_previous(engine: &Engine, name: &str, id: &str, start: bool) -> Result<(), EngineError> {
    tracing::warn!(container = %name, "restoring the previous version left aside by an interrupted deploy");
    engine.rename(id, name).await?;
    if start {
        engine.start(id).await?;
    }
    Ok(())
}

/// The proof of a new version an interrupted deploy left under the name failed, and the
/// previous version was put back: a failed deploy of that release, judged and counted as one.
#[derive(Debug)]
pub struct FailedProof {
    pub probe: ProbeFailed,
    /// It answered 2xx over the bridge: only this host's path to it failed.
    pub bridge_ok: bool,
}

/// Proves a new version an interrupted deploy left under `name` beside `-previous`: healthy,
/// `-previous` is removed; not, `-previous` is put back and the failed proof returned.
pub async fn prove_interrupted(
    engine: &Engine,
    settings: &Settings,
    name: &str,
    new_id: &str,
    new_restarts: i64,
    previous_id: &str,
) -> Result<Option<FailedProof>, EngineError> {
    let url = &settings.health.url;
    let healthy = health::wait_healthy(&url.host, url.port, &settings.health, settings.health.timeout, || {
        still_running(engine, new_id, new_restarts)
    })
    .await;
    match healthy {
        Ok(_) => {
            tracing::info!(container = %name, "the new version left by an interrupted deploy is healthy; removing the previous one");
            engine.remove(previous_id).await.map(|()| None)
        }
        Err(probe) => {
            tracing::warn!(container = %name, %probe, "the new version left by an interrupted deploy is unhealthy; restoring the previous one");
            // As after a cut-over: does it serve over the bridge, so only the port failed?
            let port = settings.container.ports.first().map(|p| p.container_port).unwrap_or(80);
            let bridge_ok = probe.end == health::ProbeEnd::Deadline
                && answers_on_bridge(engine, new_id, port, &settings.health).await;
            let previous = engine.container(previous_id).await?;
            let restored = roll_back(engine, name, new_id, previous.as_ref()).await;
            tracing::warn!(container = %name, "{restored}");
            Ok(Some(FailedProof { probe, bridge_ok }))
        }
    }
}

/// Makes sure the image is on disk, pulling it with fresh registry credentials if not.
/// Returns the image and whether it was pulled.
///
/// With the digest it was published with, the image is had by that digest
/// (`repository@sha256:...`) and tagged `repository:sha` here, so a tag pushed again after
/// publishing changes nothing: the host runs the published content, not the tag's new one.
pub async fn ensure_image(
    engine: &Engine,
    settings: &Settings,
    desired: &ContainerSpec,
    digest: Option<&str>,
    creds: &impl CredentialSource,
    shutdown: &Shutdown,
) -> Result<(ImageInfo, bool), DeployError> {
    let repo = settings.image.repository.to_string();
    let wanted = match digest {
        Some(digest) => format!("{repo}@{digest}"),
        None => desired.image.clone(),
    };
    if let Some(image) = engine.image(&wanted, &repo).await? {
        if digest.is_some() {
            engine.tag(&wanted, &repo, desired.sha.as_str()).await?;
        }
        return Ok((image, false));
    }
    tracing::info!(image = %wanted, "pulling {wanted}");
    let creds_source = creds;
    let creds = shutdown.race(creds_source.credentials()).await??;
    let reference = digest.unwrap_or(desired.sha.as_str());
    shutdown.race(crate::outside::disk::make_room(engine, settings, desired.sha.as_str(), reference, &creds)).await??;
    let pull = engine.pull(&repo, reference, &settings.image.repository.registry, &creds, settings.image.pull_timeout);
    let image = match shutdown.race(pull).await? {
        Ok(image) => image,
        Err(EngineError::NoSpace { image, detail }) => {
            return Err(crate::outside::disk::filled(engine, settings, &image, &detail).await.into())
        }
        Err(e) => {
            let text = e.to_string().to_lowercase();
            if text.contains("unauthorized") || text.contains("authentication required") || text.contains("denied") {
                // A refused token is not reused for hours: the next attempt asks ECR again.
                creds_source.invalidate();
            }
            return Err(e.into());
        }
    };
    if digest.is_some() {
        engine.tag(&wanted, &repo, desired.sha.as_str()).await?;
    }
    tracing::info!(image = %desired.image, digest = image.digest.as_deref().unwrap_or("unknown"), "pulled {wanted}");
    Ok((image, true))
}

/// Runs the new version as a throwaway container with no published ports and probes it over
/// the bridge network. The serving container is not touched.
pub async fn verify_candidate(
    engine: &Engine,
    settings: &Settings,
    desired: &ContainerSpec,
    digest: &str,
    shutdown: &Shutdown,
) -> Result<(), DeployError> {
    let name = aside(&desired.name, CANDIDATE);
    if let Some(stale) = engine.container(&name).await?.filter(ContainerInfo::is_managed) {
        engine.remove(&stale.id).await?;
    }
    let id = engine.create(&name, desired, digest, Role::Candidate).await?;
    let result = shutdown
        .race(probe_candidate(engine, settings, desired, &id))
        .await
        .unwrap_or_else(|c| Err(c.into()))
        .map(drop);
    if let Err(e) = engine.remove(&id).await {
        tracing::warn!(container = %name, error = %e, "could not remove candidate container");
    }
    result
}

/// Starts container `id` and probes it over the bridge. Returns its bridge address.
pub async fn probe_candidate(
    engine: &Engine,
    settings: &Settings,
    desired: &ContainerSpec,
    id: &str,
) -> Result<String, DeployError> {
    let path = &settings.health.url.path;
    if let Err(e) = engine.start(id).await {
        let url = || format!("candidate port {}{path}", desired.probe_port());
        return Err(match cannot_run(&e, url) {
            Some(probe) => DeployError::CandidateUnhealthy { image: desired.image.clone(), probe },
            None => e.into(),
        });
    }
    let info = engine.container(id).await?;
    let Some(ip) = info.as_ref().and_then(|c| c.ip.clone()) else {
        let status = info.as_ref().map(|c| format!("{} (exit code {})", c.status, c.exit_code.unwrap_or(-1)));
        let probe = ProbeFailed {
            url: format!("candidate port {}{path}", desired.probe_port()),
            last: format!("the container has no bridge address; it is {}", status.as_deref().unwrap_or("gone")),
            end: health::ProbeEnd::Died(info.map(|c| c.exit()).unwrap_or_default()),
        };
        return Err(DeployError::CandidateUnhealthy { image: desired.image.clone(), probe });
    };
    health::wait_healthy(&ip, desired.probe_port(), &settings.health, settings.health.timeout, || {
        still_running(engine, id, 0)
    })
    .await
    .map(|code| tracing::info!(image = %desired.image, status = code, "candidate answered"))
    .map_err(|probe| DeployError::CandidateUnhealthy { image: desired.image.clone(), probe })?;
    Ok(ip)
}

/// A start Docker refused because the image's command cannot run, as the probe failure it
/// amounts to: the release fails its verification (and is halted fleet-wide) rather than
/// being retried on every host as if Docker were in trouble.
fn cannot_run(e: &EngineError, url: impl FnOnce() -> String) -> Option<ProbeFailed> {
    e.is_command_unrunnable().then(|| ProbeFailed {
        url: url(),
        last: format!("the container cannot run its command: {e}"),
        end: health::ProbeEnd::CannotRun,
    })
}

/// `Err` with the exit status when the container is no longer running, or has crashed since
/// `restarts_before`: under `unless-stopped` Docker reports a crash-looping container as
/// running, so a rising restart count is how a crash shows during a probe. The exit code and
/// `OOMKilled` go with it: a kill from outside is this host's, not the release's.
pub async fn still_running(engine: &Engine, id: &str, restarts_before: i64) -> Result<(), Stopped> {
    let exit = |c: &ContainerInfo| {
        format!("exit code {}{}", c.exit_code.unwrap_or(-1), if c.oom_killed { ", OOM-killed" } else { "" })
    };
    match engine.container(id).await {
        Ok(Some(c)) if c.status == "restarting" || c.restart_count > restarts_before => Err(Stopped {
            why: format!(
                "the container keeps crashing (Docker restarted it {} times, {})",
                c.restart_count - restarts_before,
                exit(&c)
            ),
            exit: c.exit(),
        }),
        Ok(Some(c)) if c.running => Ok(()),
        Ok(Some(c)) => Err(Stopped { why: format!("the container is {} ({})", c.status, exit(&c)), exit: c.exit() }),
        Ok(None) => Err(Stopped { why: "container disappeared".into(), exit: Default::default() }),
        Err(_) => Ok(()), // cannot tell: keep probing until the deadline
    }
}

/// Replaces `old` (if any) with a new container of `desired`. On failure after the old one was
/// stopped, the new one is removed and the old one is put back and started. Returns the new
/// container's id, and the old one when it is kept stopped as `<name>-previous` for the bake
/// (`[health] bake`, [`super::bake`]); without a bake it is removed here.
pub async fn cut_over(
    engine: &Engine,
    settings: &Settings,
    desired: &ContainerSpec,
    digest: &str,
    old: Option<&ContainerInfo>,
    shutdown: &Shutdown,
) -> Result<(String, Option<ContainerInfo>), DeployError> {
    let name = &desired.name;
    let next_name = aside(name, NEXT);
    if let Some(stale) = engine.container(&next_name).await?.filter(ContainerInfo::is_managed) {
        engine.remove(&stale.id).await?;
    }
    // Created before the old one stops, so the gap is only stop + rename + start.
    let new_id = engine.create(&next_name, desired, digest, Role::Serving).await?;
    let previous_name = aside(name, PREVIOUS);
    if let Some(old) = old {
        clear_stale_previous(engine, name, old).await?;
    }
    let mut old = old;
    let started = async {
        if let Some(current) = old {
            engine.stop(&current.id, settings.container.stop_timeout).await?;
            old = move_aside(engine, name, current).await?;
        }
        engine.rename(&new_id, name).await?;
        engine.start(&new_id).await?;
        Ok::<(), EngineError>(())
    }
    .await;
    let probe = match started {
        Ok(()) => {
            let url = &settings.health.url;
            let probe = health::wait_healthy(&url.host, url.port, &settings.health, settings.health.timeout, || {
                still_running(engine, &new_id, 0)
            });
            match shutdown.race(probe).await {
                Ok(probe) => probe,
                Err(cancelled) => {
                    // Shutdown mid-probe: leave the new version serving and the old one aside
                    // as -previous. The next start proves the new one (or restores the old),
                    // which costs no extra swap, where a rollback now and a redeploy then
                    // would cost two.
                    tracing::warn!(container = %name, "shutdown while proving the new version: left in place; the next start proves it or restores {previous_name}");
                    return Err(cancelled.into());
                }
            }
        }
        Err(source) => {
            let restored = roll_back(engine, name, &new_id, old).await;
            let image = desired.image.clone();
            return Err(match cannot_run(&source, || settings.health.url.to_string()) {
                Some(probe) => DeployError::CutoverUnhealthy { image, probe, restored, bridge_ok: false },
                None => DeployError::CutoverFailed { image, source, restored },
            });
        }
    };
    match probe {
        Ok(_) => {
            match old {
                Some(old) if !settings.health.bake.is_zero() => {
                    let kept = ContainerInfo { name: previous_name, running: false, ..old.clone() };
                    return Ok((new_id, Some(kept)));
                }
                Some(old) => {
                    if let Err(e) = engine.remove(&old.id).await {
                        tracing::warn!(container = %previous_name, error = %e, "could not remove the previous container");
                    }
                }
                None => {}
            }
            Ok((new_id, None))
        }
        Err(probe) => {
            // Evidence for the judgement: does the new version serve over the bridge, so that
            // only the published port failed (this host), or not at all (the release)?
            let bridge_ok = probe.end == health::ProbeEnd::Deadline
                && answers_on_bridge(engine, &new_id, desired.probe_port(), &settings.health).await;
            let restored = roll_back(engine, name, &new_id, old).await;
            if shutdown.is_requested() {
                tracing::warn!(container = %name, "shutdown during cut-over: {restored}");
                return Err(Cancelled.into());
            }
            Err(DeployError::CutoverUnhealthy { image: desired.image.clone(), probe, restored, bridge_ok })
        }
    }
}

/// One run of every check against container `id` over the Docker bridge: whether it passes
/// them there.
pub async fn answers_on_bridge(engine: &Engine, id: &str, port: u16, checks: &HealthSettings) -> bool {
    let Ok(Some(ip)) = engine.container(id).await.map(|c| c.and_then(|c| c.ip)) else { return false };
    health::check_all(checks, &ip, port, Duration::from_secs(2)).await.is_ok()
}

/// Removes a `<name>-previous` of ours left by an earlier cut-over, so `old` can take the name.
/// Only ours: the decision refuses to cut over when someone else's container holds it.
pub async fn clear_stale_previous(engine: &Engine, name: &str, old: &ContainerInfo) -> Result<(), EngineError> {
    let stale = engine.container(&aside(name, PREVIOUS)).await?.filter(|c| c.id != old.id && c.is_managed());
    if let Some(stale) = stale {
        engine.remove(&stale.id).await?;
    }
    Ok(())
}

/// Renames `old` to `<name>-previous`. `None` when it was removed under our feet (`docker rm -f`
/// racing the cut-over): the name is free, so the cut-over carries on with the new version
/// rather than fail and go dark.
pub async fn move_aside<'a>(
    engine: &Engine,
    name: &str,
    old: &'a ContainerInfo,
) -> Result<Option<&'a ContainerInfo>, EngineError> {
    match engine.rename(&old.id, &aside(name, PREVIOUS)).await {
        Err(e) if e.is_not_found() => {
            tracing::warn!(container = %name, "the old container was removed during the cut-over; carrying on");
            Ok(None)
        }
        other => other.map(|()| Some(old)),
    }
}

/// Puts `old` back under `name`, running. Returns a sentence for the error message.
pub async fn roll_back(engine: &Engine, name: &str, new_id: &str, old: Option<&ContainerInfo>) -> String {
    // Free the name first (a rename is quicker and surer than a removal), restore, then clean up.
    let failed_name = aside(name, FAILED);
    if let Ok(Some(stale)) = engine.container(&failed_name).await {
        if stale.is_managed() && stale.id != new_id {
            let _ = engine.remove(&stale.id).await;
        }
    }
    let _ = engine.stop(new_id, Duration::from_secs(1)).await;
    if let Err(e) = engine.rename(new_id, &failed_name).await {
        tracing::warn!(container = %name, error = %e, "could not move the failed new container aside; removing it");
        let _ = engine.remove(new_id).await;
    }
    let restore = async {
        let Some(old) = old else { return Ok(false) };
        // It was moved aside to -previous only if the cut-over got that far: ask Docker.
        let Some(current) = engine.container(&old.id).await? else {
            return Err(EngineError::NotFound { op: "restore", target: old.name.clone() });
        };
        if current.name != name {
            engine.rename(&old.id, name).await?;
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
        Err(e) if e.is_not_found() => {
            "the previous container is gone (removed by hand?): the next pass deploys again".into()
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
    wait_restarted(engine, settings, container, shutdown).await
}

/// Waits until `container`, just started again, answers the health URL (and fails fast if it
/// crashes meanwhile).
pub async fn wait_restarted(
    engine: &Engine,
    settings: &Settings,
    container: &ContainerInfo,
    shutdown: &Shutdown,
) -> Result<(), DeployError> {
    let url = &settings.health.url;
    let probe = health::wait_healthy(&url.host, url.port, &settings.health, settings.health.timeout, || {
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
    health::wait_healthy(&url.host, url.port, &settings.health, timeout, || async { Ok(()) }).await
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
