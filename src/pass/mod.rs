//! One reconcile pass, in three parts that never mix:
//!
//! - [`snapshot`]: observe the host once (Docker, state file, pause);
//! - [`decide`]: a pure function from (wanted release, snapshot, quarantine, rollout wave,
//!   halt marker, now) to a [`Decision`](decide::Decision): which release, why, and the
//!   ordered steps;
//! - [`execute`] and [`deploy`]: carry the steps out, safely. They choose nothing.
//!
//! `sync` and `sync --dry-run` both go through [`execute::observe_and_decide`], so the dry run
//! prints exactly what a real pass would do; the `run` loop observes, notes crash loops, then
//! calls the same [`decide::decide`]. All of them carry out through
//! [`execute::execute_decision`].
//!
//! This module reads, writes and decides nothing itself: it names the [`Services`] a pass
//! talks to, built once per command by [`RealServices::connect`] (one AWS setup, one S3
//! client for the release object and the halt markers), and the [`PassError`] it ends with.

pub mod decide;
pub mod deploy;
pub mod desired;
pub mod execute;
pub mod once;
pub mod plan;
pub mod snapshot;
pub mod switch;

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::config::Settings;
use crate::environment::EnvironmentError;
use crate::fleet::verdict::Failure;
use crate::lock::LockError;
use crate::outside::aws::Aws;
use crate::outside::docker::{Engine, EngineError};
use crate::outside::halts::HaltMarkers;
use crate::outside::imds::Imds;
use crate::outside::registry::Ecr;
use crate::outside::release::{ReleaseError, S3Releases};
use crate::outside::s3::S3Client;
use crate::runtime::shutdown::Cancelled;
use crate::sha::Sha;
use deploy::DeployError;
use switch::Routes;

/// The services a pass talks to. Generic so each can be replaced in tests.
pub struct Services<T, R, C> {
    pub tags: T,
    pub releases: R,
    pub credentials: C,
    pub engine: Engine,
    /// The host ports' DNAT rules (`[traffic] mode = "switch"`).
    pub routes: Arc<dyn Routes>,
    /// Halt markers, in `[release] bucket` as it was when the services were built (use
    /// [`HaltMarkers::in_bucket`] for the current one).
    pub halts: HaltMarkers,
    /// The Auto Scaling group's lifecycle hooks (the launch gate of `run`).
    pub autoscaling: Arc<crate::outside::autoscaling::AutoScaling>,
    /// Who this host is to AWS: its halt votes' key (asked on the first vote, then kept).
    pub caller: Arc<crate::outside::sts::Sts>,
}

/// The real services.
pub type RealServices = Services<Imds, S3Releases, Ecr>;

impl RealServices {
    /// Builds the real services the same way for every command: one AWS setup whose region is
    /// resolved on first use (and again while unknown), one S3 client in that region for the
    /// release object and the halt markers, ECR in the repository's region.
    pub async fn connect(settings: &Settings, engine: Engine) -> RealServices {
        let registry = &settings.image.repository.registry;
        let aws = Aws::load(registry).await;
        let s3 = S3Client::with_aws(&aws);
        let routes = Arc::new(
            switch::netfilter(settings, &engine)
                .expect("[traffic] chains and [container] name are validated with the config"),
        );
        Services {
            tags: Imds::new(),
            releases: S3Releases::new(&s3),
            credentials: Ecr::for_registry(&aws, registry),
            engine,
            routes,
            halts: HaltMarkers::new(&s3, settings.release.bucket.clone()),
            autoscaling: Arc::new(crate::outside::autoscaling::AutoScaling::with_aws(&aws)),
            caller: Arc::new(crate::outside::sts::Sts::with_aws(&aws)),
        }
    }
}

/// Why a pass failed.
#[derive(Debug, thiserror::Error)]
pub enum PassError {
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
    #[error("{0}")]
    Blocked(String),
    #[error("{0}")]
    NothingToRun(decide::Why),
    #[error(
        "{sha} is not a signed release of {environment} ([release] public_key): no verified version of the release          object names it with its digest; signed releases: {}; nothing was changed",
        if signed.is_empty() { "none known".to_owned() } else { signed.join(", ") }
    )]
    Unverified { sha: Sha, environment: String, signed: Vec<String> },
    #[error(transparent)]
    Cancelled(#[from] Cancelled),
    #[error("{0}")]
    State(String),
}

impl PassError {
    pub fn is_cancelled(&self) -> bool {
        matches!(self, PassError::Cancelled(_) | PassError::Deploy(DeployError::Cancelled(_)))
    }

    /// The facts of a failure the agent counts (towards the release's local quarantine, and,
    /// when [`crate::fleet::verdict::judge`] blames the release, a fleet halt vote): a new
    /// version that failed its probe, could not run its command, or a cut-over Docker or
    /// netfilter could not carry out here. `None` for trouble that is retried with backoff
    /// and counts against nothing (S3, ECR, the registry, Docker outside a cut-over, the lock).
    pub fn failure(&self) -> Option<Failure> {
        use crate::outside::health::{ProbeEnd, ProbeFailed};
        let probed = |probe: &ProbeFailed| match probe.end {
            ProbeEnd::CannotRun => Failure::CommandCannotRun { detail: probe.to_string() },
            end => Failure::BridgeProbe { died: end == ProbeEnd::Died, detail: probe.to_string() },
        };
        match self {
            PassError::Deploy(DeployError::CandidateUnhealthy { probe, .. }) => Some(probed(probe)),
            PassError::Deploy(DeployError::CutoverUnhealthy { probe, bridge_ok: true, .. }) => {
                Some(Failure::HostPathProbe { detail: probe.to_string() })
            }
            PassError::Deploy(DeployError::CutoverUnhealthy { probe, .. }) => Some(probed(probe)),
            PassError::Deploy(DeployError::CutoverFailed { source, .. }) => {
                Some(Failure::Engine { detail: source.to_string() })
            }
            // Another agent's chains: this host's configuration, which no retry changes and no
            // release is to blame for.
            PassError::Deploy(DeployError::Route(switch::RouteError::Taken(_))) => None,
            PassError::Deploy(DeployError::Route(e)) => Some(Failure::Netfilter { detail: e.to_string() }),
            _ => None,
        }
    }
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

/// The result of a pass that reached its target.
#[derive(Debug, Clone)]
pub struct Applied {
    pub sha: Sha,
    pub action: Action,
    pub container_id: String,
    pub digest: String,
}
