//! Do: observe, decide, then carry the [`Decision`] out. Call with the lock held.
//!
//! The order is fixed: the recovery steps first (an interrupted deploy's leftovers), then, if
//! any ran, the host is observed and decided on again (a proof may have kept or rolled back
//! the new version); then the main step. On success the version is recorded as
//! last-known-good and old images are pruned. When the main step fails and nothing serves,
//! the decision's fallback (last-known-good) is deployed if the caller asked for rescue.

use std::collections::HashMap;

use tokio::time::Instant;

use super::decide::{self, Decision, Inputs, Recovery, RolloutGate, Wanted};
use super::deploy::{self, DeployError};
use super::plan::Plan;
use super::snapshot::{self, Snapshot};
use super::switch;
use super::traffic::Traffic;
use super::{Action, Applied, PassError, Services};
use crate::config::Settings;
use crate::fleet::halt::Marker;
use crate::outside::docker::{Engine, EngineError};
use crate::outside::registry::CredentialSource;
use crate::pass::desired::Catalog;
use crate::runtime::shutdown::Shutdown;
use crate::sha::Sha;
use crate::spec::{ContainerSpec, LABEL_DIGEST};
use crate::state::{now_unix, GoodRelease, Proven, State};

/// What [`execute`] was asked to do beyond the decision itself.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options<'a> {
    /// Probe the health URL even when nothing had to change (a one-off `sync` reports health;
    /// the loop relies on Docker events instead).
    pub probe_converged: bool,
    /// When the main step fails and nothing serves, deploy the decision's fallback.
    pub rescue: bool,
    /// The verified releases with the digest each was published with: a release with a known
    /// digest is pulled by it and runs only as exactly that image.
    pub catalog: Option<&'a Catalog>,
}

/// How a pass ended when it did not fail outright.
#[derive(Debug)]
pub struct Done {
    pub decision: Decision,
    /// What now runs, when the pass reached a target (the decision's, or its fallback).
    pub applied: Option<Applied>,
    /// The main step failed and the fallback was deployed instead: the original failure.
    pub rescued_from: Option<PassError>,
}

/// What the fleet says about the published release: its rollout wave and its halt marker.
#[derive(Debug, Clone, Copy, Default)]
pub struct FleetInputs<'a> {
    pub rollout: Option<RolloutGate>,
    pub halted: Option<&'a Marker>,
    /// See [`Inputs::halt_unconfirmed`].
    pub halt_unconfirmed: bool,
}

/// Reads the host and decides. Shared by the real pass and `--dry-run`.
pub async fn observe_and_decide(
    settings: &Settings,
    engine: &Engine,
    environment: &str,
    wanted: &Wanted,
    quarantine: &HashMap<Sha, Instant>,
    fleet: FleetInputs<'_>,
    catalog: &Catalog,
) -> Result<(Snapshot, Decision), EngineError> {
    let snapshot = snapshot::observe(engine, settings).await?;
    let decision = decide::decide(&Inputs {
        settings,
        environment,
        wanted,
        snapshot: &snapshot,
        quarantine,
        now: Instant::now(),
        rollout: fleet.rollout,
        halted: fleet.halted,
        halt_unconfirmed: fleet.halt_unconfirmed,
        catalog,
    });
    Ok((snapshot, decision))
}

/// Carries out `decision`, made on `snapshot`. After recovery steps the host is observed
/// again and `redecide` (the same rules) gives the decision for the main step.
#[allow(clippy::too_many_arguments)]
pub async fn execute_decision<T, R, C: CredentialSource>(
    settings: &Settings,
    services: &Services<T, R, C>,
    environment: &str,
    snapshot: Snapshot,
    decision: Decision,
    redecide: impl Fn(&Snapshot) -> Decision,
    shutdown: &Shutdown,
    options: Options<'_>,
) -> Result<Done, PassError> {
    let engine = &services.engine;
    let (mut snapshot, mut decision) = (snapshot, decision);
    if !decision.recovery.is_empty() {
        let traffic = Traffic::of(settings, services.routes.as_ref());
        let failed = recover(settings, engine, traffic, &decision.recovery).await?;
        // The new version an interrupted deploy left failed its proof: a failed deploy of its
        // release, which ends the pass as one does (judged, counted towards its quarantine)
        // instead of deploying it again at once. One of unknown release changes nothing.
        let sha_of = |c: &Option<crate::outside::docker::ContainerInfo>| {
            c.as_ref().and_then(|c| c.labels.get(crate::spec::LABEL_SHA)).and_then(|s| Sha::parse(s).ok())
        };
        if let (Some(failed), Some(release)) = (failed, sha_of(&snapshot.main)) {
            return Err(PassError::Interrupted { release, previous: sha_of(&snapshot.previous), failed });
        }
        snapshot = snapshot::observe(engine, settings).await?;
        decision = redecide(&snapshot);
    }
    tracing::debug!(?decision, "decision");
    if let Some(blocked) = &decision.blocked {
        return Err(PassError::Blocked(blocked.clone()));
    }
    let (Some(target), Some(plan)) = (decision.target.clone(), decision.plan.clone()) else {
        return Ok(Done { decision, applied: None, rescued_from: None });
    };
    let desired = ContainerSpec::new(settings, environment, &target);
    let failure = match apply(settings, services, &desired, &plan, snapshot.main.as_ref(), shutdown, options).await {
        Ok(applied) => return Ok(Done { decision, applied: Some(applied), rescued_from: None }),
        Err(e) => e,
    };
    let Some(fallback) = decision.fallback.clone().filter(|_| options.rescue && !failure.is_cancelled()) else {
        return Err(failure);
    };
    let now = snapshot::observe(engine, settings).await?;
    if now.serving_sha().is_some() {
        return Err(failure);
    }
    tracing::warn!(env = %environment, sha = %fallback, "cannot deploy {target} and nothing serves: starting the last-known-good version ({failure})");
    let desired = ContainerSpec::new(settings, environment, &fallback);
    let current = now.main.as_ref();
    let plan = super::plan::plan(fallback.as_str(), &desired.spec_hash(), current.map(|c| c.observed()).as_ref());
    let applied = apply(settings, services, &desired, &plan, current, shutdown, options).await?;
    Ok(Done { decision, applied: Some(applied), rescued_from: Some(failure) })
}

/// Carries out the recovery steps, in order. Returns the failed proof of a new version an
/// interrupted deploy left, when the previous one was put back instead.
async fn recover(
    settings: &Settings,
    engine: &Engine,
    traffic: Traffic<'_>,
    steps: &[Recovery],
) -> Result<Option<deploy::FailedProof>, PassError> {
    let name = &settings.container.name;
    let mut failed = None;
    for step in steps {
        match step {
            Recovery::Remove { container, id } => deploy::remove_leftover(engine, container, id).await?,
            Recovery::RestorePrevious { id, start } => deploy::restore_previous(engine, name, id, *start).await?,
            Recovery::ProveInterrupted { new_id, new_restarts, previous_id } => {
                failed = traffic.prove_interrupted(engine, settings, new_id, *new_restarts, previous_id).await?;
                // A bake left behind by an agent that stopped mid-way ends here: what was
                // kept for it is retired or serves again.
                super::bake::BakeRecord::clear(&settings.agent.state_dir);
            }
        }
    }
    Ok(failed)
}

/// Carries out the main step for `desired`, then records it as last-known-good and prunes.
async fn apply<T, R, C: CredentialSource>(
    settings: &Settings,
    services: &Services<T, R, C>,
    desired: &ContainerSpec,
    plan: &Plan,
    current: Option<&crate::outside::docker::ContainerInfo>,
    shutdown: &Shutdown,
    options: Options<'_>,
) -> Result<Applied, PassError> {
    let applied = carry_out(settings, services, desired, plan, current, shutdown, options).await?;
    // What serves now has proven it (switch mode recorded it before moving traffic; this
    // records publish mode's, and changes nothing when it is the same container).
    State::record_proven(
        &settings.agent.state_dir,
        Proven {
            container_id: applied.container_id.clone(),
            sha: desired.sha.to_string(),
            digest: applied.digest.clone(),
            at: now_unix(),
        },
    );
    let mut state = State::load(&settings.agent.state_dir);
    let good = GoodRelease {
        sha: desired.sha.to_string(),
        digest: applied.digest.clone(),
        environment: desired.environment.clone(),
        at: now_unix(),
        since: None,
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
    services: &Services<T, R, C>,
    desired: &ContainerSpec,
    plan: &Plan,
    current: Option<&crate::outside::docker::ContainerInfo>,
    shutdown: &Shutdown,
    options: Options<'_>,
) -> Result<Applied, PassError> {
    let engine = &services.engine;
    let traffic = Traffic::of(settings, services.routes.as_ref());
    let sha = desired.sha.clone();
    match plan {
        Plan::Converged => {
            let current = current.expect("converged implies a container");
            if !switch::is_proven(settings, current) {
                // Not the container that last proved it serves: a deploy interrupted mid-probe
                // (kill -9, a reboot, a package upgrade) left it. It is proven before it counts
                // as converged or last-known-good, and in switch mode before any traffic.
                tracing::info!(container = %desired.name, "the container under the name was never proven to serve; probing it");
                let proof = traffic.prove_unproven(engine, settings, current).await;
                proof.map_err(|probe| DeployError::CandidateUnhealthy { image: desired.image.clone(), probe })?;
            }
            traffic.reassert(settings, &desired.ports, current).await?;
            if options.probe_converged {
                deploy::check_serving(settings, settings.health.timeout)
                    .await
                    .map_err(|p| PassError::Unhealthy { container: desired.name.clone(), detail: p.to_string() })?;
                tracing::info!(container = %desired.name, "already running the desired version");
            } else {
                tracing::debug!(container = %desired.name, "already running the desired version");
            }
            let digest = current.labels.get(LABEL_DIGEST).cloned().unwrap_or_default();
            Ok(Applied { sha, action: Action::Unchanged, container_id: current.id.clone(), digest, kept: None })
        }
        Plan::Restart { .. } => {
            let current = current.expect("restart implies a container");
            tracing::info!(container = %desired.name, status = %current.status, "container is not running; starting it");
            traffic.restart(engine, settings, &desired.ports, current, shutdown).await?;
            let digest = current.labels.get(LABEL_DIGEST).cloned().unwrap_or_default();
            Ok(Applied { sha, action: Action::Restarted, container_id: current.id.clone(), digest, kept: None })
        }
        Plan::Deploy { reason, .. } => {
            tracing::info!(container = %desired.name, %reason, "deploying {} as {}: {reason}", desired.sha, desired.name);
            let prepared = async {
                let published = options.catalog.and_then(|c| c.digest(&desired.sha));
                let (image, pulled) =
                    deploy::ensure_image(engine, settings, desired, published, &services.credentials, shutdown).await?;
                if let Some(published) = published {
                    deploy::check_digest(desired, &image, published)?;
                }
                let digest = image.digest.clone().unwrap_or_else(|| image.id.clone());
                // The candidate protects a serving version from a bad release. With nothing
                // under the name there is nothing to protect: the real container is probed
                // after it starts instead, and removed if it fails, which saves a whole
                // container start on a cold host.
                // In switch mode the new container is its own candidate (see `switch`).
                if current.is_some() && traffic.verifies_candidate() {
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
                    if let Some(old) = current.filter(|c| !c.running && c.is_managed()) {
                        tracing::warn!(container = %old.name, "new version unavailable; starting the stopped previous one");
                        if let Err(start) = engine.start(&old.id).await {
                            tracing::warn!(container = %old.name, error = %start, "could not start it");
                        }
                    }
                    return Err(e.into());
                }
            };
            let cut = traffic.cut_over(engine, settings, desired, &digest, current, shutdown).await?;
            tracing::info!(container = %desired.name, digest = %digest, "deployed and serving: {} {}", desired.name, desired.sha);
            let action = Action::Deployed { reason: reason.to_string(), pulled };
            Ok(Applied { sha, action, container_id: cut.id, digest, kept: cut.kept })
        }
    }
}
