//! One reconcile pass, in three parts that never mix:
//!
//! - [`snapshot`]: observe the host once (Docker, state file, pause);
//! - [`decide`]: a pure function from (wanted release, snapshot, quarantine, rollout wave,
//!   halt marker, now) to a [`Decision`](decide::Decision): which release, why, and the
//!   ordered steps;
//! - [`execute`] and [`deploy`]: carry the steps out, safely, through [`traffic::Traffic`] (the
//!   cut-over, revert and retire of each traffic mode); [`bake`] watches the new version after
//!   a cut-over with the previous container kept. They choose nothing.
//!
//! `sync` and `sync --dry-run` both go through [`execute::observe_and_decide`], so the dry run
//! prints exactly what a real pass would do; the `run` loop observes, notes crash loops, then
//! calls the same [`decide::decide`]. All of them carry out through
//! [`execute::execute_decision`].
//!
//! This module reads, writes and decides nothing itself: it names the [`Services`] a pass
//! talks to, built once per command by [`RealServices::connect`] (one AWS setup, one S3
//! client for the release object and the halt markers), and the [`PassError`] it ends with.

pub mod bake;
pub mod decide;
pub mod deploy;
pub mod desired;
pub mod execute;
pub mod named;
pub mod once;
pub mod plan;
pub mod routes;
pub mod snapshot;
pub mod switch;
pub mod traffic;

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
    /// The new version an interrupted deploy left under the name failed its proof, and the
    /// previous one serves again: a failed deploy of `release`, judged and counted as one. The
    /// pass ends here rather than deploying it again at once.
    #[error(
        "the new version {} that an interrupted deploy left failed its proof ({}); the previous version was put back",
        release.short(),
        failed.probe
    )]
    Interrupted {
        release: Sha,
        /// The release that served before that deploy (`-previous`), if it carries one.
        previous: Option<Sha>,
        failed: deploy::FailedProof,
    },
    /// The new version tripped its bake (`sync` bakes what it cut over to before it returns).
    #[error("{} was reverted during its bake: {trip}; {restored}", sha.short())]
    Reverted { sha: Sha, trip: bake::Trip, restored: String },
    #[error("container {container} runs the desired version but is not healthy: {detail}")]
    Unhealthy { container: String, detail: String },
    #[error("{0}")]
    Blocked(String),
    #[error("{0}")]
    NothingToRun(decide::Why),
    #[error(
        "{sha} is not a signed release of {environment} ([release] public_key): no verified version of the release object names it with its digest; signed releases: {}; nothing was changed",
        if signed.is_empty() { "none known".to_owned() } else { signed.join(", ") }
    )]
    Unverified { sha: Sha, environment: String, signed: Vec<String> },
    #[error(transparent)]
    Name(#[from] named::NameError),
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
            ProbeEnd::Died(exit) => Failure::BridgeProbe {
                died: true,
                exit_code: exit.code,
                oom_killed: exit.oom_killed,
                detail: probe.to_string(),
            },
            ProbeEnd::Deadline => {
                Failure::BridgeProbe { died: false, exit_code: None, oom_killed: false, detail: probe.to_string() }
            }
        };
        match self {
            PassError::Deploy(DeployError::CandidateUnhealthy { probe, .. }) => Some(probed(probe)),
            PassError::Deploy(DeployError::CutoverUnhealthy { probe, bridge_ok: true, .. })
            | PassError::Interrupted { failed: deploy::FailedProof { probe, bridge_ok: true }, .. } => {
                Some(Failure::HostPathProbe { detail: probe.to_string() })
            }
            PassError::Deploy(DeployError::CutoverUnhealthy { probe, .. })
            | PassError::Interrupted { failed: deploy::FailedProof { probe, .. }, .. } => Some(probed(probe)),
            PassError::Deploy(DeployError::CutoverFailed { source, .. }) => {
                Some(Failure::Engine { detail: source.to_string() })
            }
            // Another agent's chains: this host's configuration, which no retry changes and no
            // release is to blame for.
            PassError::Deploy(DeployError::Route(switch::RouteError::Taken(_))) => None,
            // The state dir refused the record (a full disk): no release is to blame, and the
            // cut-over did not happen; retried with backoff like the other trouble of this host.
            PassError::Deploy(DeployError::Route(switch::RouteError::Unrecorded { .. })) => None,
            PassError::Deploy(DeployError::Route(e)) => Some(Failure::Netfilter { detail: e.to_string() }),
            PassError::Reverted { trip, .. } => Some(trip.failure()),
            _ => None,
        }
    }

    /// For a failed proof of what an interrupted deploy left ([`PassError::Interrupted`]): the
    /// release that failed, and the one that served before it. The failure is that release's,
    /// whatever the pass's target was.
    pub fn interrupted(&self) -> Option<(&Sha, Option<&Sha>)> {
        match self {
            PassError::Interrupted { release, previous, .. } => Some((release, previous.as_ref())),
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
    /// The container that served before a cut-over, kept for the bake as `<name>-previous`
    /// (running in switch mode, stopped in publish mode): [`bake`] watches the new one, then
    /// retires it or reverts to it.
    pub kept: Option<crate::outside::docker::ContainerInfo>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::verdict::{judge, History, Rule};
    use crate::outside::health::{Exit, ProbeEnd, ProbeFailed};

    fn candidate(end: ProbeEnd) -> PassError {
        let probe = ProbeFailed { url: "http://172.17.0.9:80/".into(), last: "connect: refused".into(), end };
        PassError::Deploy(DeployError::CandidateUnhealthy { image: "blog:aaaaaaa".into(), probe })
    }

    /// Issue 22, item 3: how the candidate ended during its probe reaches the judgement. Killed
    /// from outside (SIGKILL, the OOM killer) is this host's; its own exit is the release's.
    #[test]
    fn how_a_candidate_ended_during_its_probe_reaches_the_judgement() {
        let cases = [
            ("SIGKILL from outside", Exit { code: Some(137), oom_killed: false }, Rule::KilledFromOutside),
            ("the OOM killer", Exit { code: Some(137), oom_killed: true }, Rule::KilledFromOutside),
            ("its own exit", Exit { code: Some(1), oom_killed: false }, Rule::CrashedBeforeServing),
            ("gone, exit unknown", Exit::default(), Rule::CrashedBeforeServing),
        ];
        for (what, exit, rule) in cases {
            let facts = candidate(ProbeEnd::Died(exit)).failure().expect("a failed probe is counted");
            assert_eq!(judge(&facts, &History::default()).rule, rule, "{what}: {facts:?}");
        }
        let facts = candidate(ProbeEnd::Deadline).failure().unwrap();
        assert_eq!(judge(&facts, &History::default()).rule, Rule::NeverAnswered);
    }

    /// Issue 22, item 4: the failed proof of what an interrupted deploy left is a failed deploy
    /// of that release (not of the pass's target), judged as the candidate's or the cut-over's.
    #[test]
    fn a_failed_proof_of_an_interrupted_deploy_is_its_release_s_failure() {
        let (new, old) = (Sha::parse(&"b".repeat(40)).unwrap(), Sha::parse(&"a".repeat(40)).unwrap());
        let interrupted = |end, bridge_ok| {
            let probe = ProbeFailed { url: "http://172.17.0.9:80/".into(), last: "HTTP 500".into(), end };
            PassError::Interrupted {
                release: new.clone(),
                previous: Some(old.clone()),
                failed: deploy::FailedProof { probe, bridge_ok },
            }
        };
        let e = interrupted(ProbeEnd::Deadline, false);
        assert_eq!(e.interrupted(), Some((&new, Some(&old))));
        assert!(e.to_string().contains("interrupted deploy"), "{e}");
        let cases = [
            (interrupted(ProbeEnd::Deadline, false), Rule::NeverAnswered),
            (interrupted(ProbeEnd::Died(Exit { code: Some(1), oom_killed: false }), false), Rule::CrashedBeforeServing),
            (interrupted(ProbeEnd::Died(Exit { code: Some(137), oom_killed: true }), false), Rule::KilledFromOutside),
            (interrupted(ProbeEnd::Deadline, true), Rule::HostPath),
        ];
        for (e, rule) in cases {
            let facts = e.failure().expect("counted as a failed deploy");
            assert_eq!(judge(&facts, &History::default()).rule, rule, "{e}");
        }
        assert_eq!(candidate(ProbeEnd::Deadline).interrupted(), None);
    }

    /// A candidate that failed one of several checks is the release's fault, and the verdict's
    /// evidence (what a vote carries) names the check, its status and the head of the body.
    #[test]
    fn a_failed_check_is_the_release_s_and_its_evidence_names_the_check() {
        let probe = ProbeFailed {
            url: "http://172.17.0.9:80/posts/".into(),
            last: "last: [[health.check]] \"/posts/\": HTTP 404, expected 2xx; body \"<title>404</title>\"".into(),
            end: ProbeEnd::Deadline,
        };
        let e = PassError::Deploy(DeployError::CandidateUnhealthy { image: "blog:aaaaaaa".into(), probe });
        let verdict = judge(&e.failure().unwrap(), &History::default());
        assert_eq!(verdict.rule, Rule::NeverAnswered);
        assert!(verdict.is_release());
        for part in ["[[health.check]] \"/posts/\"", "HTTP 404", "<title>404</title>"] {
            assert!(verdict.evidence.contains(part), "{part}: {verdict}");
        }
    }
}
