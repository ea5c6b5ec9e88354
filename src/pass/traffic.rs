//! The cut-over as one type: [`Traffic`], a variant per `[traffic] mode`, with the operations a
//! release swap is made of. [`super::execute`] asks it what to do and never branches on the
//! mode itself; [`super::bake`] reverts and retires through it.
//!
//! - [`Traffic::Switch`] ([`super::switch`]): the agent's DNAT rules send the host ports to one
//!   container's bridge address; a cut-over starts the new version beside the old one, proves
//!   it over the bridge and moves the rules in one atomic change. The previous container stays
//!   running, not routed, for the bake; a revert is one rule change back to it.
//! - [`Traffic::Publish`] ([`super::deploy`]): Docker publishes the ports; a cut-over proves a
//!   throwaway candidate, then stops the old container and starts the new one under the name.
//!   The previous container is kept stopped for the bake; a revert starts it again.
//!
//! The steps both share (image, candidate probe, moving a container aside, rolling back) are
//! in [`super::deploy`].

use super::deploy::{self, DeployError, FailedProof};
use super::switch::{self, Routes};
use crate::config::{PortMapping, Settings, TrafficMode};
use crate::outside::docker::{ContainerInfo, Engine};
use crate::outside::health::ProbeFailed;
use crate::runtime::shutdown::Shutdown;
use crate::spec::ContainerSpec;

/// How host ports reach the serving container, with the rules this host keeps.
#[derive(Clone, Copy)]
pub enum Traffic<'a> {
    /// `[traffic] mode = "switch"`.
    Switch(&'a dyn Routes),
    /// `[traffic] mode = "publish"`. The routes are there only to remove the switch's rules
    /// a host that changed modes still has.
    Publish(&'a dyn Routes),
}

/// What a cut-over left: the new container, and the previous one when it is kept for the bake
/// (running and not routed in switch mode, stopped in publish mode, as `<name>-previous`).
#[derive(Debug)]
pub struct CutOver {
    pub id: String,
    pub kept: Option<ContainerInfo>,
}

impl<'a> Traffic<'a> {
    /// The mode `settings` configure, over `routes`.
    pub fn of(settings: &Settings, routes: &'a dyn Routes) -> Traffic<'a> {
        match settings.traffic.mode {
            TrafficMode::Switch => Traffic::Switch(routes),
            TrafficMode::Publish => Traffic::Publish(routes),
        }
    }

    /// Whether a throwaway candidate is proven before the cut-over. In switch mode the new
    /// container is its own candidate: it gets no traffic until it is proven over the bridge.
    pub fn verifies_candidate(self) -> bool {
        matches!(self, Traffic::Publish(_))
    }

    /// Proves a container under the name that no record says proved it serves (a deploy
    /// interrupted mid-probe left it), before it counts as converged.
    pub async fn prove_unproven(
        self,
        engine: &Engine,
        settings: &Settings,
        current: &ContainerInfo,
    ) -> Result<(), ProbeFailed> {
        match self {
            Traffic::Switch(_) => switch::prove_over_bridge(engine, settings, current).await,
            Traffic::Publish(_) => deploy::check_serving(settings, settings.health.timeout).await.map(drop),
        }
    }

    /// Re-asserts what sends traffic to the converged `current`: the rules are kernel state
    /// others can change (a flush, a dockerd restart, a restart that gave it a new address).
    /// Docker's published ports need nothing.
    pub async fn reassert(
        self,
        settings: &Settings,
        ports: &[PortMapping],
        current: &ContainerInfo,
    ) -> Result<(), DeployError> {
        match self {
            Traffic::Switch(routes) => switch::serve_from(routes, settings, ports, current).await.map(drop)?,
            Traffic::Publish(_) => {}
        }
        Ok(())
    }

    /// Starts the stopped `current` of the right spec and waits until it serves.
    pub async fn restart(
        self,
        engine: &Engine,
        settings: &Settings,
        ports: &[PortMapping],
        current: &ContainerInfo,
        shutdown: &Shutdown,
    ) -> Result<(), DeployError> {
        match self {
            Traffic::Switch(routes) => switch::restart(engine, routes, settings, ports, current, shutdown).await,
            Traffic::Publish(_) => deploy::restart(engine, settings, current, shutdown).await,
        }
    }

    /// Replaces `current` (if any) with a new container of `desired` (image `digest`, on disk).
    pub async fn cut_over(
        self,
        engine: &Engine,
        settings: &Settings,
        desired: &ContainerSpec,
        digest: &str,
        current: Option<&ContainerInfo>,
        shutdown: &Shutdown,
    ) -> Result<CutOver, DeployError> {
        let (id, kept) = match self {
            Traffic::Switch(routes) => {
                switch::switch_over(engine, routes, settings, desired, digest, current, shutdown).await?
            }
            Traffic::Publish(routes) => {
                // From switch mode to publish: our rules would keep sending the host ports to
                // the old container's address. They go first; this one swap has publish
                // mode's usual gap.
                if routes.current().await.ok().flatten().is_some() {
                    tracing::info!("[traffic] mode is publish: removing the traffic switch's rules");
                    routes.remove().await?;
                }
                deploy::cut_over(engine, settings, desired, digest, current, shutdown).await?
            }
        };
        Ok(CutOver { id, kept })
    }

    /// Proves the new version an interrupted deploy left under the name beside `-previous`:
    /// kept (and `-previous` retired) or undone. `Some` with the failed proof when undone.
    pub async fn prove_interrupted(
        self,
        engine: &Engine,
        settings: &Settings,
        new_id: &str,
        new_restarts: i64,
        previous_id: &str,
    ) -> Result<Option<FailedProof>, DeployError> {
        match self {
            Traffic::Switch(routes) => switch::prove_interrupted(engine, routes, settings, new_id, previous_id).await,
            Traffic::Publish(_) => {
                let name = &settings.container.name;
                Ok(deploy::prove_interrupted(engine, settings, name, new_id, new_restarts, previous_id).await?)
            }
        }
    }

    /// Sends the traffic back to the previous container kept for the bake, then retires the
    /// new one (`new_id`) and gives the previous one its name back. Switch mode: one rule
    /// change to a container that runs already (no pull, no create, no start), then the new
    /// one is stopped with its grace. Publish mode: the new one stops and the kept one starts.
    /// Returns a sentence for the journal.
    pub async fn revert(
        self,
        engine: &Engine,
        settings: &Settings,
        new_id: &str,
        previous: &ContainerInfo,
    ) -> Result<String, DeployError> {
        let name = &settings.container.name;
        match self {
            Traffic::Switch(routes) => {
                switch::serve_from(routes, settings, &settings.container.ports, previous).await?;
                tracing::warn!(container = %previous.name, to = ?switch::address(previous), "traffic switched back to the previous version");
                if let Err(e) = engine.stop(new_id, settings.container.stop_timeout).await {
                    tracing::warn!(container = %name, error = %e, "could not stop the reverted version");
                }
                engine.remove(new_id).await?;
                engine.rename(&previous.id, name).await?;
                Ok("traffic switched back to the previous version, which kept running".into())
            }
            Traffic::Publish(_) => {
                let restored = deploy::roll_back(engine, name, new_id, Some(previous)).await;
                let back = engine.container(&previous.id).await?.filter(|c| c.running && c.name == *name);
                if let Some(back) = back {
                    crate::state::State::record_proven(&settings.agent.state_dir, switch::proven(&back));
                }
                Ok(restored)
            }
        }
    }

    /// Retires the previous container after a clean bake (or when nothing bakes): stopped
    /// with its own stop signal and grace, then removed. Failures are logged: the new version
    /// serves already.
    pub async fn retire(self, engine: &Engine, settings: &Settings, previous: &ContainerInfo) {
        switch::retire(engine, settings, previous).await;
    }
}
