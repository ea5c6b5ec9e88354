//! `blog-agent status`: what this host should run, what it runs, and why, gathered read-only
//! (no lock held, nothing changed). The JSON form is a stable, versioned interface: fields are
//! only ever added; see docs/status.md.

use std::future::Future;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::{format_size, ContainerBounds, Settings, TrafficMode};
use crate::environment;
use crate::fleet::halt::Marker;
use crate::fleet::rollout::{self, Gate, IdentitySource};
use crate::outside::docker::{AppliedBounds, Engine};
use crate::outside::halts::HaltSource;
use crate::outside::imds::TagSource;
use crate::outside::netfilter::Netfilter;
use crate::outside::release::{Provenance, ReleaseSource};
use crate::pass::decide::{self, RolloutGate, Wanted, Why};
use crate::pass::desired::{Catalog, HaltRead, Published, Trust};
use crate::pass::snapshot::Snapshot;
use crate::runtime::clock::{self, ClockStatus};
use crate::sha::safe_text;
use crate::spec::{LABEL_DIGEST, LABEL_SHA};
use crate::state::{LastPass, Pause, State, StateReadError};

/// Bumped only on an incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub schema_version: u32,
    /// The agent answering: during an upgrade hosts run different versions.
    pub agent: AgentVersion,
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
    /// This host's clock against AWS's, measured from the answers `status` itself got.
    pub clock: ClockStatus,
    /// Free space on Docker's data root against `[reconcile] min_free_disk`.
    pub disk: Option<DiskStatus>,
    /// Docker's data root could not be measured.
    pub disk_error: Option<String>,
    /// The bake in progress (`[health] bake`): the release just cut over to is watched, with
    /// the previous container kept to revert to.
    pub bake: Option<BakeStatus>,
}

/// Docker's data root, where a pull lands ([`crate::outside::disk`]).
#[derive(Debug, Clone, Serialize)]
pub struct DiskStatus {
    /// `DockerRootDir`, e.g. `/var/lib/docker`.
    pub root: String,
    /// Bytes available there now (as `df` counts them).
    pub free_bytes: u64,
    /// `[reconcile] min_free_disk` in bytes, and as it would be written.
    pub min_free_bytes: u64,
    pub min_free: String,
    /// At least `min_free_disk` is free: a pull of any image that fits beside it is started.
    /// False: no pull is started (the running version keeps serving) until space is freed.
    pub ok: bool,
}

/// Which blog-agent build this is: [`crate::VERSION`] and [`crate::COMMIT`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentVersion {
    pub version: String,
    pub commit: String,
}

impl AgentVersion {
    pub fn this_binary() -> AgentVersion {
        AgentVersion { version: crate::VERSION.to_owned(), commit: crate::COMMIT.to_owned() }
    }
}

/// A bake in progress, from `bake.json` in the state dir.
#[derive(Debug, Clone, Serialize)]
pub struct BakeStatus {
    pub sha: String,
    pub container_id: String,
    /// The release and container kept to revert to (`<name>-previous`).
    pub previous_sha: Option<String>,
    pub previous_container_id: String,
    pub started_at: String,
    pub ends_at: String,
    pub remaining_seconds: u64,
}

impl BakeStatus {
    fn from_record(r: &crate::pass::bake::BakeRecord, now: u64) -> BakeStatus {
        let at = |secs: u64| rfc3339(std::time::UNIX_EPOCH + Duration::from_secs(secs));
        BakeStatus {
            sha: r.sha.clone(),
            container_id: r.container_id.clone(),
            previous_sha: r.previous_sha.clone(),
            previous_container_id: r.previous_id.clone(),
            started_at: at(r.started),
            ends_at: at(r.until),
            remaining_seconds: r.remaining(now).as_secs(),
        }
    }
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
    /// The decision's own reason ([`crate::pass::decide::Why`]), in words.
    pub reason: String,
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
    /// S3's release is refused here (unsigned, a bad signature, a replay): what the host runs,
    /// else the newest verified release.
    Refused,
    /// S3 is unreadable: the last-known-good version.
    #[serde(rename = "last-good")]
    LastGood,
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
    /// It passed verification (`[release] public_key`: signature, no replay; always without a
    /// key): hosts may run it.
    pub verified: bool,
    /// Why hosts refuse it, when they do, with the fix.
    pub refused: Option<String>,
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
    /// The bounds it runs within, as Docker has them (`[container]` logs, capabilities and
    /// limits); null when Docker would not say.
    pub bounds: Option<BoundsStatus>,
}

/// A container's bounds as Docker reports them. Limits are null when there is none.
#[derive(Debug, Clone, Serialize)]
pub struct BoundsStatus {
    pub log_driver: String,
    /// The log driver's options, e.g. `{"max-file": "3", "max-size": "10485760"}`.
    pub log_options: std::collections::BTreeMap<String, String>,
    pub no_new_privileges: bool,
    pub cap_drop: Vec<String>,
    pub cap_add: Vec<String>,
    pub pids_limit: Option<i64>,
    /// Bytes.
    pub memory: Option<i64>,
    pub cpus: Option<f64>,
    pub read_only: bool,
    pub tmpfs: Vec<String>,
}

impl From<AppliedBounds> for BoundsStatus {
    fn from(b: AppliedBounds) -> BoundsStatus {
        BoundsStatus {
            no_new_privileges: b.security_opt.iter().any(|o| {
                matches!(o.as_str(), "no-new-privileges" | "no-new-privileges:true" | "no-new-privileges=true")
            }),
            log_driver: b.log_driver,
            log_options: b.log_options,
            cap_drop: b.cap_drop,
            cap_add: b.cap_add,
            pids_limit: b.pids_limit,
            memory: b.memory,
            cpus: b.nano_cpus.map(|n| n as f64 / 1e9),
            read_only: b.read_only,
            tmpfs: b.tmpfs,
        }
    }
}

/// The configured bounds in the same form, for `check`.
impl From<&ContainerBounds> for BoundsStatus {
    fn from(b: &ContainerBounds) -> BoundsStatus {
        BoundsStatus {
            log_driver: b.log.driver.to_string(),
            log_options: [("max-size", b.log.max_size.to_string()), ("max-file", b.log.max_files.to_string())]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            no_new_privileges: b.no_new_privileges,
            cap_drop: b.cap_drop.clone(),
            cap_add: b.cap_add.clone(),
            pids_limit: b.pids_limit.map(i64::from),
            memory: b.memory.and_then(|m| i64::try_from(m).ok()),
            cpus: b.nano_cpus.map(|n| n as f64 / 1e9),
            read_only: b.read_only,
            tmpfs: if b.read_only { b.tmpfs.clone() } else { Vec::new() },
        }
    }
}

impl BoundsStatus {
    /// One line: `json-file 10MiB x 3, no-new-privileges, caps -ALL +CHOWN ..., pids 256,
    /// memory unlimited, cpus unlimited, root writable`.
    pub fn text(&self) -> String {
        let size = |s: &str| s.parse::<u64>().map(format_size).unwrap_or_else(|_| s.to_owned());
        let logs = match (self.log_options.get("max-size"), self.log_options.get("max-file")) {
            (Some(max), files) => format!("{} {} x {}", self.log_driver, size(max), files.map_or("1", |f| f.as_str())),
            (None, _) if self.log_driver == "local" => "local (Docker's default rotation, 20MB x 5)".into(),
            (None, _) => format!("{} UNROTATED", self.log_driver),
        };
        let caps = match (self.cap_drop.is_empty(), self.cap_add.is_empty()) {
            (true, true) => "Docker's default capabilities".to_owned(),
            _ => {
                let drop = self.cap_drop.iter().map(|c| format!(" -{c}"));
                let add = self.cap_add.iter().map(|c| format!(" +{c}"));
                format!("caps{}", drop.chain(add).collect::<String>())
            }
        };
        let or_unlimited = |v: Option<String>| v.unwrap_or_else(|| "unlimited".into());
        format!(
            "{logs}, {}, {caps}, pids {}, memory {}, cpus {}, {}",
            if self.no_new_privileges { "no-new-privileges" } else { "new privileges allowed" },
            or_unlimited(self.pids_limit.map(|n| n.to_string())),
            or_unlimited(self.memory.map(|m| format_size(m as u64))),
            or_unlimited(self.cpus.map(|c| c.to_string())),
            if self.read_only {
                format!(
                    "root read-only, tmpfs {}",
                    if self.tmpfs.is_empty() { "none".into() } else { self.tmpfs.join(" ") }
                )
            } else {
                "root writable".into()
            }
        )
    }
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
        agent: AgentVersion::this_binary(),
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
        clock: ClockStatus::of(None),
        disk: None,
        disk_error: None,
        bake: crate::pass::bake::BakeRecord::load(dir).map(|r| BakeStatus::from_record(&r, crate::state::now_unix())),
    };
    let env_and_release = async {
        let env = environment::resolve(env_flag, settings, tags).await;
        let release = match &env {
            Ok(env) => Some(crate::pass::desired::read_once(releases, halts, settings, &env.name).await),
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
    status.clock = ClockStatus::of(clock::latest().as_ref());
    let mut desired = None;
    let mut marker = None;
    let env = match env {
        Ok(env) => {
            match release {
                Some(Ok((d, halt))) => {
                    let (p, verified) = match &d.published {
                        Published::Verified(v) => (&v.provenance, Some(v)),
                        Published::Refused { .. } => (&Provenance::default(), None),
                    };
                    let refused = match &d.published {
                        Published::Refused { refusal, .. } => Some(safe_text(&refusal.to_string())),
                        Published::Verified(_) => None,
                    };
                    let read = d.published.sha();
                    status.desired = Some(PublishedStatus {
                        sha: read.to_string(),
                        uri: d.location.to_string(),
                        etag: d.etag.clone(),
                        read_at: humantime::format_rfc3339_seconds(clock::now()).to_string(),
                        published_at: verified.and_then(|v| v.published_at).map(rfc3339),
                        digest: p.digest.clone(),
                        published_by: p.by.clone(),
                        pipeline: p.pipeline.clone(),
                        verified: verified.is_some(),
                        refused,
                    });
                    let prefix = settings.halt_prefix(&env.name);
                    let uri = crate::outside::release::ObjectLocation {
                        bucket: settings.release.bucket.clone(),
                        key: crate::fleet::halt::marker_key(&prefix, read),
                    };
                    match halt {
                        HaltRead::Halted(m) => {
                            status.halt = Some(halt_status(m.clone(), uri.to_string()));
                            marker = Some(m);
                        }
                        HaltRead::Unreadable(e) => status.halt_error = Some(e),
                        HaltRead::Clear | HaltRead::NotNeeded => {}
                    }
                    desired = Some(d);
                }
                Some(Err(e)) => status.desired_error = Some(e.to_string()),
                None => {}
            }
            status.environment = Some(EnvironmentStatus { name: env.name.clone(), source: env.source.to_string() });
            Some(env)
        }
        Err(e) => {
            status.environment_error = Some(e.to_string());
            None
        }
    };
    // The container's bridge address, for the traffic lines below (one inspect serves both).
    let mut serving_address = None;
    if let Some(engine) = engine {
        match engine.container(&settings.container.name).await {
            Ok(Some(c)) => {
                serving_address = c.ip.clone().map(|ip| (ip, c.name.clone()));
                let url = &settings.health.url;
                let checks = &settings.health;
                let bound = Duration::from_secs(2);
                let health = match crate::outside::health::check_all(checks, &url.host, url.port, bound).await {
                    Ok(()) => HealthStatus {
                        url: url.to_string(),
                        ok: true,
                        detail: match checks.all_checks().len() {
                            1 => "its check passes".to_owned(),
                            n => format!("all {n} checks pass"),
                        },
                    },
                    Err(failed) => HealthStatus { url: url.to_string(), ok: false, detail: failed.to_string() },
                };
                let bounds = engine.bounds(&c.id).await.ok().flatten().map(BoundsStatus::from);
                status.container = Some(ContainerStatus {
                    name: c.name.clone(),
                    id: c.id.clone(),
                    managed: c.is_managed(),
                    sha: c.labels.get(LABEL_SHA).cloned(),
                    digest: c.labels.get(LABEL_DIGEST).cloned(),
                    state: c.status.clone(),
                    started_at: c.started_at.clone(),
                    health,
                    bounds,
                });
            }
            Ok(None) => {}
            Err(e) => status.container_error = Some(e.to_string()),
        }
    }
    if let Some(engine) = engine {
        let min_free = settings.reconcile.min_free_disk;
        match crate::outside::disk::measure(engine).await {
            Ok(r) => {
                status.disk = Some(DiskStatus {
                    root: r.root.display().to_string(),
                    free_bytes: r.free,
                    min_free_bytes: min_free,
                    min_free: crate::config::format_size(min_free),
                    ok: crate::outside::disk::enough_space(r.free, None, min_free)
                        == crate::outside::disk::Verdict::Enough,
                })
            }
            Err(e) => status.disk_error = Some(e),
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
    status.last_good_sha = state.as_ref().ok().and_then(|s| s.last_good.clone()).map(|g| g.sha);
    let running = status.container.as_ref().filter(|c| c.managed).and_then(|c| c.sha.clone());
    let published = desired.as_ref().and_then(|d| d.published.verified());
    let published_at = published.and_then(|v| v.published_at).filter(|_| !settings.rollout.spread.is_zero());
    let spread = settings.rollout.spread;
    if let (Some(published), Some(at)) = (published, published_at) {
        status.rollout.applies_at = Some(rfc3339(rollout::apply_at(at, identity.seed(), spread)));
        let new_here = running.as_deref() != Some(published.sha.as_str());
        status.rollout.waiting = new_here
            && matches!(rollout::gate(at, identity.seed(), spread, clock::now(), running.is_none()), Gate::Wait { .. });
    }
    // What the host is meant to run is the decision's own answer, on what Docker and the state
    // directory show now; without Docker it is what a host with nothing serving would run.
    if let Some(env) = &env {
        let snapshot = match engine {
            Some(engine) => crate::pass::snapshot::observe(engine, settings).await.ok(),
            None => None,
        };
        let snapshot = snapshot.unwrap_or_else(|| Snapshot {
            name: settings.container.name.clone(),
            state: state.as_ref().ok().cloned().unwrap_or_default(),
            pause: status.paused.clone(),
            ..Default::default()
        });
        let trust = Trust::new(settings, &env.name);
        let (last_good, pause) = (snapshot.state.last_good_in(&env.name), snapshot.pause.as_ref());
        let catalog = Catalog::for_host(desired.as_ref(), trust, last_good, pause);
        let wanted = desired.as_ref().map(Wanted::from).unwrap_or(Wanted::Unknown);
        let gate =
            published_at.map(|at| RolloutGate { seed: identity.seed(), spread, published_at: at, now: clock::now() });
        let decision = decide::decide(&decide::Inputs {
            settings,
            environment: &env.name,
            wanted: &wanted,
            snapshot: &snapshot,
            quarantine: &Default::default(),
            now: tokio::time::Instant::now(),
            rollout: gate,
            halted: marker.as_ref(),
            halt_unconfirmed: false,
            catalog: &catalog,
        });
        let pinned = snapshot.pause.as_ref().and_then(|p| p.pinned_sha.as_deref());
        status.target = target_status(&decision, pinned);
    }
    // With the release object unreadable or invalid this host cannot know it runs what it
    // should: it keeps serving (the target says what), but it is not called converged.
    status.converged = match (&status.target, &status.container) {
        (Some(t), Some(c)) => {
            running.as_deref() == Some(t.sha.as_str()) && c.health.ok && status.desired_error.is_none()
        }
        _ => false,
    };
    status
}

/// The decision's target and reason, as `status` reports them.
fn target_status(decision: &decide::Decision, pinned: Option<&str>) -> Option<TargetStatus> {
    let target = decision.target.as_ref()?;
    let source = match &decision.why {
        Why::Published | Why::Operator => TargetSource::S3,
        Why::Paused { .. } if pinned == Some(target.as_str()) => TargetSource::Pinned,
        Why::Paused { .. } => TargetSource::Paused,
        Why::Waiting { .. } | Why::Confirming { .. } => TargetSource::Rollout,
        Why::Halted { .. } => TargetSource::Halted,
        Why::Refused { .. } => TargetSource::Refused,
        Why::LastGood | Why::NothingKnown | Why::Quarantined { .. } | Why::Unverified { .. } => TargetSource::LastGood,
    };
    Some(TargetStatus { sha: target.to_string(), source, reason: safe_text(&decision.why.to_string()) })
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
    line("agent", format!("blog-agent {} (commit {})", s.agent.version, s.agent.commit));
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
                format!(
                    "{} ({}, etag {}, read {}){}",
                    d.sha,
                    d.uri,
                    d.etag.as_deref().unwrap_or("-"),
                    d.read_at,
                    d.digest.as_deref().map(|digest| format!("; published as {digest}")).unwrap_or_default()
                ) + &d.refused.as_deref().map(|r| format!("; REFUSED: {r}")).unwrap_or_default()
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
            if let Some(b) = &c.bounds {
                line("bounds", b.text());
            }
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
    if let Some(b) = &s.bake {
        line(
            "bake",
            format!(
                "baking {} until {} ({} s left); {} kept as {} to revert to",
                &b.sha[..b.sha.len().min(12)],
                b.ends_at,
                b.remaining_seconds,
                b.previous_sha.as_deref().map(|p| &p[..p.len().min(12)]).unwrap_or("the previous version"),
                &b.previous_container_id[..b.previous_container_id.len().min(12)]
            ),
        );
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
    line("rollout", rollout_text(s, clock::now()));
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
    if let (None, Some(refused)) = (&s.target, s.desired.as_ref().and_then(|d| d.refused.as_deref())) {
        line("target", format!("none: S3's release is refused ({refused}), and no verified release is known here"));
    } else if s.target.is_none() && s.halt.is_some() {
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
            _ => t.reason.as_str(),
        };
        line("target", format!("{} ({why})", t.sha));
    }
    match (&s.disk, &s.disk_error) {
        (Some(d), _) => line("disk", disk_text(d)),
        (None, Some(err)) => line("disk", format!("UNKNOWN: {err}")),
        (None, None) => {}
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
    line("clock", format!("{}: {}", s.clock.judgement, s.clock.detail));
    out
}

/// `/var/lib/docker: 61.2 GiB free ([reconcile] min_free_disk 2GiB)`, or SHORT with the fix.
fn disk_text(d: &DiskStatus) -> String {
    let free = crate::outside::disk::human(d.free_bytes);
    if d.ok {
        format!("{}: {free} free ([reconcile] min_free_disk {})", d.root, d.min_free)
    } else {
        format!(
            "{}: {free} free, below [reconcile] min_free_disk {} ({} short): SHORT: no release is pulled until \
             there is room (the running version keeps serving); free space there (`docker system df`), grow the \
             volume, or lower [reconcile] min_free_disk",
            d.root,
            d.min_free,
            crate::outside::disk::human(d.min_free_bytes.saturating_sub(d.free_bytes))
        )
    }
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

    fn status() -> Status {
        Status {
            schema_version: SCHEMA_VERSION,
            agent: AgentVersion { version: "0.1.0".into(), commit: "3f8765b0c1d2".into() },
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
            clock: ClockStatus::of(None),
            disk: None,
            disk_error: None,
            bake: None,
        }
    }

    #[test]
    fn the_disk_line_names_the_numbers_and_the_fix_when_short() {
        let mut s = status();
        assert!(!render_text(&s).contains("disk "), "no Docker, no disk line");
        let mut disk = DiskStatus {
            root: "/var/lib/docker".into(),
            free_bytes: 5 << 30,
            min_free_bytes: 2 << 30,
            min_free: "2GiB".into(),
            ok: true,
        };
        s.disk = Some(disk.clone());
        let text = render_text(&s);
        assert!(
            text.contains("disk           /var/lib/docker: 5.0 GiB free ([reconcile] min_free_disk 2GiB)\n"),
            "{text}"
        );
        disk.min_free_bytes = 100_000_000_000_000;
        disk.min_free = "100TB".into();
        disk.ok = false;
        s.disk = Some(disk);
        let text = render_text(&s);
        let line = text.lines().find(|l| l.starts_with("disk ")).unwrap();
        for want in
            ["5.0 GiB free, below [reconcile] min_free_disk 100TB", "SHORT", "keeps serving", "docker system df"]
        {
            assert!(line.contains(want), "{want:?} not in {line}");
        }
        assert_eq!(serde_json::to_value(&s).unwrap()["disk"]["ok"], false);
        s.disk = None;
        s.disk_error = Some("Docker info daemon: no DockerRootDir".into());
        assert!(render_text(&s).contains("disk           UNKNOWN: Docker info daemon"));
    }

    #[test]
    fn a_bake_in_progress_is_shown_with_the_time_left() {
        let record = crate::pass::bake::BakeRecord {
            sha: "b".repeat(40),
            container_id: "c".repeat(64),
            previous_id: "d".repeat(64),
            previous_sha: Some("a".repeat(40)),
            started: 1_700_000_000,
            until: 1_700_000_060,
        };
        let s = Status { bake: Some(BakeStatus::from_record(&record, 1_700_000_015)), ..status() };
        let text = render_text(&s);
        assert!(
            text.contains(
                "bake           baking bbbbbbbbbbbb until 2023-11-14T22:14:20Z (45 s left); aaaaaaaaaaaa kept as dddddddddddd to revert to"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["bake"]["remaining_seconds"], 45);
        assert!(!render_text(&status()).contains("bake "));
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
            verified: true,
            refused: None,
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
        s.target = Some(TargetStatus {
            sha: "aaaaaaa".into(),
            source: TargetSource::Halted,
            reason: "release bbbbbbb is halted for this environment".into(),
        });
        let text = render_text(&s);
        assert!(
            text.contains(
                "halted         bbbbbbb by i-0abc at 2025-06-15T15:06:40Z: candidate probe: HTTP 500 (rolled back to aaaaaaa); \
                 `blog-agent unhalt bbbbbbb` lets it go on"
            ),
            "{text}"
        );
        assert!(text.contains("target         aaaaaaa (release bbbbbbb is halted for this environment)"), "{text}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["target"]["source"], "halted");
        assert_eq!(json["halt"]["rolled_back_to"], "aaaaaaa");
        assert_eq!(json["rollout"]["identity_source"], "hostname");
        assert_eq!(json["rollout"]["spread_seconds"], 900.0);
        assert_eq!(json["desired"]["published_at"], "2025-06-15T11:57:00Z");
    }

    /// During an upgrade hosts run different agents: each says which it is, in both forms.
    #[test]
    fn the_agent_s_version_and_commit_are_shown() {
        let s = status();
        assert!(
            render_text(&s).starts_with("agent          blog-agent 0.1.0 (commit 3f8765b0c1d2)\n"),
            "{}",
            render_text(&s)
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["agent"], serde_json::json!({"version": "0.1.0", "commit": "3f8765b0c1d2"}));
        let this = AgentVersion::this_binary();
        assert_eq!(
            (this.version.as_str(), this.commit.as_str()),
            (env!("CARGO_PKG_VERSION"), env!("BLOG_AGENT_GIT_COMMIT"))
        );
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
        let reason = "automatic updates paused by alice (pinned to bbbbbbb by blog-agent sync --sha)";
        let target = TargetStatus { sha: "bbbbbbb".into(), source: TargetSource::Pinned, reason: reason.into() };
        let s = Status { target: Some(target), ..status() };
        assert!(
            render_text(&s).contains("target         bbbbbbb (pinned by `blog-agent sync --sha`)"),
            "{}",
            render_text(&s)
        );
        assert_eq!(
            serde_json::to_value(&s).unwrap()["target"],
            serde_json::json!({"sha": "bbbbbbb", "source": "pinned", "reason": reason})
        );
    }

    #[test]
    fn bounds_in_one_line() {
        let settings = crate::config::Settings::parse(
            "[release]\nbucket = \"b\"\n[image]\nrepository = \"r.example/blog\"\n",
            std::path::Path::new("c.toml"),
        )
        .unwrap();
        let mut configured = settings.container.bounds;
        assert_eq!(
            BoundsStatus::from(&configured).text(),
            "json-file 10MiB x 3, no-new-privileges, caps -ALL +CHOWN +DAC_OVERRIDE +KILL +NET_BIND_SERVICE +SETGID \
             +SETUID, pids 256, memory unlimited, cpus unlimited, root writable"
        );
        configured.memory = Some(256 << 20);
        configured.nano_cpus = Some(1_500_000_000);
        configured.read_only = true;
        let text = BoundsStatus::from(&configured).text();
        assert!(
            text.ends_with(
                "memory 256MiB, cpus 1.5, root read-only, tmpfs /run /run/lock /tmp /usr/local/apache2/logs"
            ),
            "{text}"
        );
        // A container created with Docker's defaults says what it lacks.
        let unbounded = AppliedBounds { log_driver: "json-file".into(), ..Default::default() };
        assert_eq!(
            BoundsStatus::from(unbounded).text(),
            "json-file UNROTATED, new privileges allowed, Docker's default capabilities, pids unlimited, memory \
             unlimited, cpus unlimited, root writable"
        );
    }
}
