//! The traffic switch (`[traffic] mode = "switch"`): a release swap that drops no request.
//!
//! Blog containers publish no host ports. The host's ports are DNATed by the agent's own
//! netfilter rules ([`Routes`]) to the serving container's bridge address. A cut-over starts
//! the new version beside the old one, proves it over the bridge, moves the rules to it in one
//! atomic change (new connections go to the new version; conntrack keeps established ones on
//! the old), then stops the old one with its image's stop signal and grace (httpd: SIGWINCH,
//! a graceful stop that finishes in-flight requests) and removes it. The agent is never in the
//! data path: the rules are kernel state, so its stop or crash drops nothing.
//!
//! Names during a switch: the old container is renamed `<name>-previous` first (a rename does
//! not touch its traffic: the rules name its address), the new one is created as `<name>`. An
//! interrupted switch is therefore repaired by the same recovery as a published cut-over.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::deploy::{self, DeployError, FailedProof};
pub use super::routes::{RouteError, RouteFuture, Routes};
use crate::config::{PortMapping, Settings};
use crate::outside::docker::{ContainerInfo, Engine, EngineError, Role};
use crate::outside::health::{self, ProbeFailed};
use crate::outside::netfilter::{Mapping, Netfilter, NetfilterError, OwnerLookup, Target};
use crate::runtime::shutdown::Shutdown;
use crate::spec::ContainerSpec;
use crate::state::{Proven, State};

/// After the switch, the health URL (through the new rules) must answer within this long, or
/// the switch is undone. The new version was already proven over the bridge, so this only
/// checks the path through the rules.
const THROUGH_RULES_TIMEOUT: Duration = Duration::from_secs(5);

/// The real routes of `settings`: chains `[traffic] chains`, rules marked with `[container]
/// name`, and Docker (`engine`) to tell whether another owner named in them is still on this
/// host.
pub fn netfilter(settings: &Settings, engine: &Engine) -> Result<Netfilter, NetfilterError> {
    let lookup: Arc<dyn OwnerLookup> = Arc::new(engine.clone());
    Netfilter::with_prefix(&settings.traffic.chains)?.with_owner(&settings.container.name, Some(lookup))
}

/// Another agent is on this host while a container of its own is, under its name or one of the
/// names a deploy puts aside (`-previous`, `-next`, `-candidate`). When Docker cannot answer,
/// it counts as present: its rules are left alone.
impl OwnerLookup for Engine {
    fn is_present<'a>(&'a self, container: &'a str) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
        use super::snapshot::{aside, CANDIDATE, NEXT, PREVIOUS};
        Box::pin(async move {
            let names =
                [container.to_owned(), aside(container, PREVIOUS), aside(container, NEXT), aside(container, CANDIDATE)];
            for name in names {
                match self.container(&name).await {
                    Ok(Some(c)) if c.is_managed() => return true,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(container = %name, error = %e, "cannot tell whether the other rules' owner is here");
                        return true;
                    }
                }
            }
            false
        })
    }
}

/// The config's port mappings as netfilter's (IPv4 only: the config refuses others in switch
/// mode).
pub fn mappings(ports: &[PortMapping]) -> Vec<Mapping> {
    ports
        .iter()
        .map(|p| {
            let ip = match p.host_ip {
                Some(IpAddr::V4(ip)) => Some(ip),
                _ => None,
            };
            Mapping::new(ip, p.host_port, p.container_port)
        })
        .collect()
}

impl Routes for Netfilter {
    fn point<'a>(&'a self, ports: &'a [PortMapping], to: Ipv4Addr) -> RouteFuture<'a, ()> {
        Box::pin(async move { Ok(self.apply(&mappings(ports), Target::new(to)).await?) })
    }
    fn in_place<'a>(&'a self, ports: &'a [PortMapping], to: Ipv4Addr) -> RouteFuture<'a, bool> {
        Box::pin(async move { Ok(Netfilter::in_place(self, &mappings(ports), Target::new(to)).await?) })
    }
    fn withhold<'a>(&'a self, ports: &'a [PortMapping]) -> RouteFuture<'a, ()> {
        Box::pin(async move { Ok(Netfilter::withhold(self, &mappings(ports)).await?) })
    }
    fn current(&self) -> RouteFuture<'_, Option<Ipv4Addr>> {
        Box::pin(async move { Ok(Netfilter::current(self).await?.map(|t| t.addr)) })
    }
    fn remove(&self) -> RouteFuture<'_, ()> {
        Box::pin(async move { Ok(Netfilter::remove(self).await?) })
    }
    fn check_owner(&self) -> RouteFuture<'_, ()> {
        Box::pin(async move { Ok(Netfilter::check_owner(self).await?) })
    }
}

/// The bridge address of a container, as the rules want it.
pub fn address(container: &ContainerInfo) -> Option<Ipv4Addr> {
    container.ip.as_deref().and_then(|ip| ip.parse().ok())
}

/// Where a container is now: Docker, or a fake in unit tests.
pub trait Addresses: Send + Sync + 'static {
    /// The bridge address of running container `id`; `None` when it is gone or stopped.
    fn address_of(&self, id: &str) -> impl Future<Output = Result<Option<Ipv4Addr>, String>> + Send;
}

impl Addresses for Engine {
    async fn address_of(&self, id: &str) -> Result<Option<Ipv4Addr>, String> {
        match self.container(id).await {
            Ok(Some(c)) if c.running => Ok(address(&c)),
            Ok(_) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// What [`keep_rules`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Nothing: the rules were as the record wants them, or nothing is recorded as proven.
    Unchanged,
    /// The rules point at the proven container's address again.
    Pointed(Ipv4Addr),
    /// The proven container is gone or stopped: the rules send the host ports nowhere.
    Withheld,
}

/// Makes the rules follow the proven container the state file records, under the rules lock
/// ([`crate::lock::rules`]): at its address while it runs (after a flush, a dockerd restart, a
/// restart that gave it a new address), and nowhere once it is gone or stopped, because Docker
/// may give that address to the next container before anyone proved it. Traffic comes back
/// when a container is proven again ([`serve_from`]). With nothing recorded the rules are left
/// as they are: this never chooses a container. When Docker cannot answer, nothing changes.
pub async fn keep_rules(
    addresses: &impl Addresses,
    routes: &dyn Routes,
    settings: &Settings,
) -> Result<Kept, RouteError> {
    let dir = &settings.agent.state_dir;
    let _lock = crate::lock::rules(dir).await.map_err(|e| RouteError::Failed(e.to_string()))?;
    let Some(proven) = State::load(dir).proven else { return Ok(Kept::Unchanged) };
    let short = &proven.container_id[..proven.container_id.len().min(12)];
    let ports = &settings.container.ports;
    match addresses.address_of(&proven.container_id).await.map_err(RouteError::Failed)? {
        Some(to) => {
            if routes.in_place(ports, to).await? {
                return Ok(Kept::Unchanged);
            }
            tracing::warn!(
                container = %proven.container_id, to = %to,
                "the traffic rules were changed outside blog-agent; re-asserting them for the proven container {short}"
            );
            routes.point(ports, to).await?;
            Ok(Kept::Pointed(to))
        }
        None => {
            let Some(from) = routes.current().await? else { return Ok(Kept::Unchanged) };
            tracing::warn!(
                container = %proven.container_id, from = %from,
                "the proven container {short} is gone or stopped: the traffic rules send {} nowhere until a container is proven (its address {from} may go to another container)",
                ports_text(ports)
            );
            routes.withhold(ports).await?;
            Ok(Kept::Withheld)
        }
    }
}

/// Replaces `old` (if any) with a new container of `spec`, moving traffic only once the new one
/// is proven. Returns the new container's id, and the old one when it is kept running beside
/// it as `<name>-previous`, not routed, for the bake (`[health] bake`, [`super::bake`]);
/// without a bake it is retired here. On failure before the switch, the new container is
/// removed and the old one keeps its name and its traffic.
#[allow(clippy::too_many_arguments)]
pub async fn switch_over(
    engine: &Engine,
    routes: &dyn Routes,
    settings: &Settings,
    spec: &ContainerSpec,
    digest: &str,
    old: Option<&ContainerInfo>,
    shutdown: &Shutdown,
) -> Result<(String, Option<ContainerInfo>), DeployError> {
    let name = &spec.name;
    // Chains another agent's rules are in would refuse the switch at its end: refuse before a
    // container is started for nothing.
    routes.check_owner().await?;
    // The rules may still send traffic to the address of a proven container that is gone; the
    // new container may get that address from Docker, and must get no traffic before its proof.
    keep_rules(engine, routes, settings).await?;
    let mut old = old;
    if let Some(current) = old {
        deploy::clear_stale_previous(engine, name, current).await?;
        old = deploy::move_aside(engine, name, current).await?;
    }
    let new_id = match engine.create(name, spec, digest, Role::Serving).await {
        Ok(id) => id,
        Err(e) => {
            put_back(engine, name, old).await;
            return Err(e.into());
        }
    };
    let proven = shutdown.race(deploy::probe_candidate(engine, settings, spec, &new_id)).await;
    let to = match proven {
        Ok(Ok(ip)) => ip.parse::<Ipv4Addr>().map_err(|_| ProbeFailed {
            url: format!("container {name}"),
            last: format!("its bridge address {ip} is not IPv4"),
            end: health::ProbeEnd::Deadline,
        }),
        Ok(Err(DeployError::CandidateUnhealthy { probe, .. })) => Err(probe),
        // Docker could not start or inspect it for another reason than the image's command
        // (which probe_candidate reports as a failed probe): this host's problem, as in publish
        // mode's candidate, not the release failing its probe, so not a reason for a fleet halt.
        Ok(Err(e)) => {
            abandon(engine, name, &new_id, old).await;
            return Err(e);
        }
        Err(cancelled) => {
            abandon(engine, name, &new_id, old).await;
            return Err(cancelled.into());
        }
    };
    let to = match to {
        Ok(to) => to,
        Err(probe) => {
            abandon(engine, name, &new_id, old).await;
            return Err(DeployError::CandidateUnhealthy { image: spec.image.clone(), probe });
        }
    };
    let from = old.and_then(address);
    let new = match engine.container(&new_id).await {
        Ok(Some(new)) => new,
        Ok(None) => {
            put_back(engine, name, old).await;
            return Err(EngineError::NotFound { op: "inspect container", target: name.clone() }.into());
        }
        Err(e) => {
            abandon(engine, name, &new_id, old).await;
            return Err(e.into());
        }
    };
    // Proven over the bridge a moment ago: recorded as the proven container, then traffic.
    if let Err(e) = serve_from(routes, settings, &spec.ports, &new).await {
        abandon(engine, name, &new_id, old).await;
        if let Some(old) = old {
            let _ = serve_from(routes, settings, &spec.ports, old).await;
        }
        return Err(DeployError::Route(e));
    }
    tracing::info!(
        container = %name, from = %from.map(|a| a.to_string()).unwrap_or_else(|| "nothing".into()), to = %to,
        "switched traffic for {} from {} to {to}",
        ports_text(&spec.ports),
        from.map(|a| a.to_string()).unwrap_or_else(|| "nothing".into())
    );
    // The path through the rules (loopback included) must work too; if not, move back.
    let url = &settings.health.url;
    let through = health::wait_healthy(&url.host, url.port, &settings.health, THROUGH_RULES_TIMEOUT, || {
        deploy::still_running(engine, &new_id, 0)
    })
    .await;
    if let Err(mut probe) = through {
        // The new version answered over the bridge: what failed is this host's path. The usual
        // cause on loopback is the bridge's route_localnet, which the agent cannot see under
        // its unit; say where to look (this reaches STATUS= and the journal).
        if mappings(&spec.ports).iter().any(Mapping::takes_loopback) {
            probe.last.push_str(
                "; the new version answers over the bridge, so this host's path is at fault: loopback clients need \
                 net.ipv4.conf.docker0.route_localnet = 1 (`blog-agent check`)",
            );
        }
        let restored = match old.filter(|_| from.is_some()) {
            Some(back) => match serve_from(routes, settings, &spec.ports, back).await {
                Ok(_) => "traffic moved back to the previous version".to_owned(),
                Err(e) => format!("moving traffic back failed too: {e}"),
            },
            None => "there was no previous version".to_owned(),
        };
        abandon(engine, name, &new_id, old).await;
        // It answered over the bridge a moment ago: the path through the rules failed.
        let bridge_ok = !matches!(probe.end, health::ProbeEnd::Died(_));
        return Err(DeployError::CutoverUnhealthy { image: spec.image.clone(), probe, restored, bridge_ok });
    }
    match old {
        Some(old) if !settings.health.bake.is_zero() => {
            let kept = ContainerInfo { name: super::snapshot::aside(name, super::snapshot::PREVIOUS), ..old.clone() };
            return Ok((new_id, Some(kept)));
        }
        Some(old) => retire(engine, settings, old).await,
        None => {}
    }
    Ok((new_id, None))
}

/// Stops the old version with its own stop signal and grace (in-flight requests finish), then
/// removes it. Failures are logged: the new version serves already.
pub async fn retire(engine: &Engine, settings: &Settings, old: &ContainerInfo) {
    if let Err(e) = engine.stop(&old.id, settings.container.stop_timeout).await {
        tracing::warn!(container = %old.name, error = %e, "could not stop the previous version");
    }
    if let Err(e) = engine.remove(&old.id).await {
        tracing::warn!(container = %old.name, error = %e, "could not remove the previous version");
    }
}

/// Undoes a switch that did not happen: the new container goes, the old one gets its name back.
async fn abandon(engine: &Engine, name: &str, new_id: &str, old: Option<&ContainerInfo>) {
    if let Err(e) = engine.remove(new_id).await {
        tracing::error!(container = %name, error = %e, "could not remove the new container");
    }
    put_back(engine, name, old).await;
}

async fn put_back(engine: &Engine, name: &str, old: Option<&ContainerInfo>) {
    let Some(old) = old else { return };
    let restored = async {
        engine.rename(&old.id, name).await?;
        if !old.running {
            engine.start(&old.id).await?;
        }
        Ok::<(), EngineError>(())
    };
    if let Err(e) = restored.await {
        tracing::error!(container = %name, error = %e, "could not give the previous version its name back");
    }
}

/// Records `container` as the proven one and points the rules at it if they point elsewhere
/// (after a restart gave it a new address, a dockerd restart, or someone flushing the rules),
/// under the rules lock ([`crate::lock::rules`]): the one way traffic moves to a container.
/// Call it only for a container that just answered 2xx over the bridge, or that is the proven
/// one already ([`is_proven`]). Returns whether it changed the rules.
///
/// The record comes first: when it cannot be written ([`RouteError::Unrecorded`]) the rules
/// stay where they are, so they never name another container than the state file does (the
/// keeper, following the file, would move traffic back, or to a container since removed).
/// Pointing at the container already recorded needs no write.
pub async fn serve_from(
    routes: &dyn Routes,
    settings: &Settings,
    ports: &[PortMapping],
    container: &ContainerInfo,
) -> Result<bool, RouteError> {
    let Some(to) = address(container) else {
        return Err(RouteError::Failed(format!("container {} has no IPv4 bridge address", container.name)));
    };
    let dir = &settings.agent.state_dir;
    let _lock = crate::lock::rules(dir).await.map_err(|e| RouteError::Failed(e.to_string()))?;
    State::write_proven(dir, proven(container))
        .map_err(|e| RouteError::Unrecorded { container: container.name.clone(), source: Arc::new(e) })?;
    if routes.in_place(ports, to).await? {
        return Ok(false);
    }
    routes.point(ports, to).await?;
    tracing::info!(container = %container.name, to = %to, "traffic rules re-asserted: {} to {to}", ports_text(ports));
    Ok(true)
}

/// The proven-container record of `container`, as of now.
pub fn proven(container: &ContainerInfo) -> Proven {
    let label = |key: &str| container.labels.get(key).cloned().unwrap_or_default();
    Proven {
        container_id: container.id.clone(),
        sha: label(crate::spec::LABEL_SHA),
        digest: label(crate::spec::LABEL_DIGEST),
        at: crate::state::now_unix(),
    }
}

/// Whether `container` is the one the state records as proven.
pub fn is_proven(settings: &Settings, container: &ContainerInfo) -> bool {
    let label = |key: &str| container.labels.get(key).map(String::as_str);
    State::load(&settings.agent.state_dir).is_proven(
        &container.id,
        label(crate::spec::LABEL_SHA),
        label(crate::spec::LABEL_DIGEST),
    )
}

/// Probes `container` over the bridge once it runs (it is not the proven one: a deploy
/// interrupted mid-probe left it, or dockerd started it), so it can be proven before traffic.
pub async fn prove_over_bridge(
    engine: &Engine,
    settings: &Settings,
    container: &ContainerInfo,
) -> Result<(), ProbeFailed> {
    let port = settings.container.ports.first().map(|p| p.container_port).unwrap_or(80);
    let Some(ip) = address(container) else {
        return Err(ProbeFailed {
            url: format!("container {}", container.name),
            last: "it has no bridge address".into(),
            end: health::ProbeEnd::Died(container.exit()),
        });
    };
    health::wait_healthy(&ip.to_string(), port, &settings.health, settings.health.timeout, || {
        deploy::still_running(engine, &container.id, container.restart_count)
    })
    .await
    .map(|code| tracing::info!(container = %container.name, status = code, "proved the unproven container over the bridge"))
}

/// Proves a new version an interrupted switch left under `<name>` beside `-previous`, over the
/// bridge. Healthy: traffic to it, `-previous` retired. Not: it goes, `-previous` gets its
/// name and traffic back, and the failed proof is returned (a failed deploy of that release).
pub async fn prove_interrupted(
    engine: &Engine,
    routes: &dyn Routes,
    settings: &Settings,
    new_id: &str,
    previous_id: &str,
) -> Result<Option<FailedProof>, DeployError> {
    let name = &settings.container.name;
    let ports = &settings.container.ports;
    let new = engine.container(new_id).await?;
    let previous = engine.container(previous_id).await?;
    let probe_port = ports.first().map(|p| p.container_port).unwrap_or(80);
    let healthy = match new.as_ref().and_then(address) {
        Some(ip) => {
            health::wait_healthy(&ip.to_string(), probe_port, &settings.health, settings.health.timeout, || {
                deploy::still_running(engine, new_id, new.as_ref().map(|c| c.restart_count).unwrap_or(0))
            })
            .await
            .map(|_| ip)
        }
        None => Err(ProbeFailed {
            url: format!("container {name}"),
            last: "it has no bridge address".into(),
            end: health::ProbeEnd::Died(new.as_ref().map(ContainerInfo::exit).unwrap_or_default()),
        }),
    };
    match healthy {
        Ok(ip) => {
            if let Some(new) = &new {
                serve_from(routes, settings, ports, new).await?;
            }
            tracing::info!(container = %name, to = %ip, "the new version left by an interrupted switch is healthy: traffic to it, retiring the previous one");
            if let Some(previous) = previous {
                retire(engine, settings, &previous).await;
            }
            Ok(None)
        }
        Err(probe) => {
            tracing::warn!(container = %name, "the new version left by an interrupted switch is unhealthy ({probe}); restoring the previous one");
            abandon(engine, name, new_id, previous.as_ref()).await;
            if let Some(back) = previous.as_ref().filter(|p| address(p).is_some()) {
                serve_from(routes, settings, ports, back).await?;
            }
            // Probed over the bridge, before any traffic: as a candidate's probe.
            Ok(Some(FailedProof { probe, bridge_ok: false }))
        }
    }
}

/// Starts a stopped container of the right spec, proves it over the bridge unless it is the
/// proven one, points the rules at its (possibly new) address, and waits until it serves
/// through them.
pub async fn restart(
    engine: &Engine,
    routes: &dyn Routes,
    settings: &Settings,
    ports: &[PortMapping],
    container: &ContainerInfo,
    shutdown: &Shutdown,
) -> Result<(), DeployError> {
    engine.start(&container.id).await?;
    let started = engine
        .container(&container.id)
        .await?
        .ok_or_else(|| EngineError::NotFound { op: "inspect container", target: container.name.clone() })?;
    if !is_proven(settings, &started) {
        shutdown.race(prove_over_bridge(engine, settings, &started)).await?.map_err(|probe| {
            DeployError::CandidateUnhealthy {
                image: container.labels.get(crate::spec::LABEL_SHA).cloned().unwrap_or_default(),
                probe,
            }
        })?;
    }
    serve_from(routes, settings, ports, &started).await?;
    deploy::wait_restarted(engine, settings, container, shutdown).await
}

fn ports_text(ports: &[PortMapping]) -> String {
    ports.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
}

/// `Routes` for hosts where the agent does not touch netfilter (`publish` mode): nothing to
/// read, and any attempt to route is an error.
pub struct NoRoutes;

impl Routes for NoRoutes {
    fn point<'a>(&'a self, _ports: &'a [PortMapping], _to: Ipv4Addr) -> RouteFuture<'a, ()> {
        Box::pin(async { Err(RouteError::Failed("traffic switching is not available on this host".into())) })
    }
    fn in_place<'a>(&'a self, _ports: &'a [PortMapping], _to: Ipv4Addr) -> RouteFuture<'a, bool> {
        Box::pin(async { Ok(false) })
    }
    /// There are no rules to send anywhere.
    fn withhold<'a>(&'a self, _ports: &'a [PortMapping]) -> RouteFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
    fn current(&self) -> RouteFuture<'_, Option<Ipv4Addr>> {
        Box::pin(async { Ok(None) })
    }
    fn remove(&self) -> RouteFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::spec::{LABEL_DIGEST, LABEL_SHA};

    /// Rules in memory: where they point.
    #[derive(Default)]
    struct MemoryRoutes(Mutex<Option<Ipv4Addr>>);

    impl Routes for MemoryRoutes {
        fn point<'a>(&'a self, _ports: &'a [PortMapping], to: Ipv4Addr) -> RouteFuture<'a, ()> {
            *self.0.lock().unwrap() = Some(to);
            Box::pin(async { Ok(()) })
        }
        fn in_place<'a>(&'a self, _ports: &'a [PortMapping], to: Ipv4Addr) -> RouteFuture<'a, bool> {
            let here = *self.0.lock().unwrap() == Some(to);
            Box::pin(async move { Ok(here) })
        }
        fn withhold<'a>(&'a self, _ports: &'a [PortMapping]) -> RouteFuture<'a, ()> {
            *self.0.lock().unwrap() = None;
            Box::pin(async { Ok(()) })
        }
        fn current(&self) -> RouteFuture<'_, Option<Ipv4Addr>> {
            let to = *self.0.lock().unwrap();
            Box::pin(async move { Ok(to) })
        }
        fn remove(&self) -> RouteFuture<'_, ()> {
            *self.0.lock().unwrap() = None;
            Box::pin(async { Ok(()) })
        }
    }

    /// Both containers run, at their own addresses.
    struct Running(HashMap<String, Ipv4Addr>);

    impl Addresses for Running {
        async fn address_of(&self, id: &str) -> Result<Option<Ipv4Addr>, String> {
            Ok(self.0.get(id).copied())
        }
    }

    fn container(id: &str, ip: &str) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            name: "blog".into(),
            running: true,
            status: "running".into(),
            exit_code: None,
            labels: HashMap::from([(LABEL_SHA.into(), "aaaaaaa".into()), (LABEL_DIGEST.into(), "d".into())]),
            ip: Some(ip.into()),
            started_at: None,
            restart_count: 0,
            oom_killed: false,
        }
    }

    fn settings(dir: &std::path::Path) -> Settings {
        let text = format!(
            "[release]\nbucket = \"b\"\n[image]\nrepository = \"123456789012.dkr.ecr.us-east-1.amazonaws.com/blog\"\n\
             [agent]\nstate_dir = \"{}\"\n[traffic]\nmode = \"switch\"\n",
            dir.display()
        );
        Settings::parse(&text, std::path::Path::new("/etc/blog-agent/config.toml")).unwrap()
    }

    /// Issue 22, item 2: the rules follow what is recorded, or the cut-over does not happen. A
    /// state file that cannot be written leaves the old container proven and serving (the
    /// keeper, which follows the record, then has nothing to move back); once it can be
    /// written, the new one is recorded and gets the traffic.
    #[tokio::test]
    async fn a_failed_record_of_the_proven_container_moves_no_traffic() {
        let dir = std::env::temp_dir().join(format!("blog-agent-switch-record-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let settings = settings(&dir);
        let (old, new) = (container("old", "172.17.0.2"), container("new", "172.17.0.3"));
        let routes = MemoryRoutes::default();
        let ports = settings.container.ports.clone();
        serve_from(&routes, &settings, &ports, &old).await.unwrap();
        assert_eq!(*routes.0.lock().unwrap(), address(&old));

        crate::state::fail_writes_in(&dir, true);
        let err = serve_from(&routes, &settings, &ports, &new).await.unwrap_err();
        assert!(matches!(err, RouteError::Unrecorded { .. }), "{err}");
        assert!(err.to_string().contains("cannot write state file"), "{err}");
        assert_eq!(*routes.0.lock().unwrap(), address(&old), "the traffic stays with the recorded container");
        assert!(is_proven(&settings, &old) && !is_proven(&settings, &new));
        let docker =
            Running(HashMap::from([("old".into(), address(&old).unwrap()), ("new".into(), address(&new).unwrap())]));
        assert_eq!(keep_rules(&docker, &routes, &settings).await.unwrap(), Kept::Unchanged, "record and rules agree");
        // Moving back to the recorded container needs no write: it always works.
        assert!(!serve_from(&routes, &settings, &ports, &old).await.unwrap());

        crate::state::fail_writes_in(&dir, false);
        serve_from(&routes, &settings, &ports, &new).await.unwrap();
        assert_eq!(*routes.0.lock().unwrap(), address(&new));
        assert!(is_proven(&settings, &new));
        assert_eq!(keep_rules(&docker, &routes, &settings).await.unwrap(), Kept::Unchanged);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
