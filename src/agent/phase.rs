//! The loop's state, as a type: what `STATUS=` says and what a repeated problem is.
//!
//! `Starting` until the first pass ends; then `Converged` (serving the target, nothing
//! failing), `Degraded` (a blog of ours serves, but something failed: S3, ECR, a quarantined
//! release), `Unconverged` (nothing of ours serves), and `Stopping`. Problems are compared by
//! [`ProblemKind`], so a retry of the same failure (with a new request id in its text) is not
//! logged as new.

use std::mem::{discriminant, Discriminant};

use crate::environment::EnvironmentError;
use crate::outside::docker::EngineError;
use crate::outside::registry::RegistryError;
use crate::outside::release::ReleaseError;
use crate::pass::deploy::DeployError;
use crate::pass::PassError;

/// What kind of failure a problem is; two problems of one kind are "the same problem".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    Environment(Discriminant<EnvironmentError>),
    Release(Discriminant<ReleaseError>),
    Registry(Discriminant<RegistryError>),
    Engine(Discriminant<EngineError>),
    Lock,
    /// A release that fails its own probe (before or after cut-over), by image.
    ReleaseUnhealthy(String),
    /// The serving container does not come back healthy.
    Unhealthy,
    /// A container blog-agent did not create is in the way.
    Blocked,
    /// The traffic switch's netfilter rules could not be read or written.
    Route,
    /// Not enough disk space to pull the release's image.
    Disk,
    /// A release held back (crash loop, failed cut-overs).
    Quarantined(String),
    /// A release that may not run here (unsigned, bad signature, replay, unverified).
    Refused(String),
    NothingToRun,
    /// An operator's SHA that names no single release (`sync --sha`; the loop names none).
    Name,
    State,
    Cancelled,
}

/// A failure the loop reports and retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub kind: ProblemKind,
    pub text: String,
}

impl Problem {
    pub fn quarantined(sha: &str, text: String) -> Problem {
        Problem { kind: ProblemKind::Quarantined(sha.to_owned()), text }
    }

    pub fn refused(sha: &str, text: String) -> Problem {
        Problem { kind: ProblemKind::Refused(sha.to_owned()), text }
    }

    /// Same kind of failure as `other`.
    pub fn same_as(&self, other: &Problem) -> bool {
        self.kind == other.kind
    }
}

impl From<&PassError> for Problem {
    fn from(e: &PassError) -> Problem {
        let kind = match e {
            PassError::Environment(e) => ProblemKind::Environment(discriminant(e)),
            PassError::Release(e) => ProblemKind::Release(discriminant(e)),
            PassError::Lock(_) => ProblemKind::Lock,
            PassError::Unverified { sha, .. } => ProblemKind::Refused(sha.to_string()),
            PassError::Engine(e)
            | PassError::Deploy(DeployError::Engine(e))
            | PassError::Deploy(DeployError::CutoverFailed { source: e, .. }) => ProblemKind::Engine(discriminant(e)),
            PassError::Deploy(DeployError::Registry(e)) => ProblemKind::Registry(discriminant(e)),
            PassError::Deploy(DeployError::CandidateUnhealthy { image, .. })
            | PassError::Deploy(DeployError::CutoverUnhealthy { image, .. })
            | PassError::Deploy(DeployError::DigestMismatch { image, .. }) => {
                ProblemKind::ReleaseUnhealthy(image.clone())
            }
            PassError::Deploy(DeployError::RestartUnhealthy { .. }) | PassError::Unhealthy { .. } => {
                ProblemKind::Unhealthy
            }
            PassError::Interrupted { release, .. } | PassError::Reverted { sha: release, .. } => {
                ProblemKind::ReleaseUnhealthy(release.to_string())
            }
            PassError::Blocked(_) => ProblemKind::Blocked,
            PassError::Deploy(DeployError::Route(_)) => ProblemKind::Route,
            PassError::Deploy(DeployError::Disk(_)) => ProblemKind::Disk,
            PassError::NothingToRun(_) => ProblemKind::NothingToRun,
            PassError::Name(_) => ProblemKind::Name,
            PassError::State(_) => ProblemKind::State,
            PassError::Cancelled(_) | PassError::Deploy(DeployError::Cancelled(_)) => ProblemKind::Cancelled,
        };
        Problem { kind, text: e.to_string() }
    }
}

/// Where the loop is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    Starting,
    /// Serving `serving` (a SHA), the target, with nothing failing.
    Converged {
        serving: String,
    },
    /// Serving `serving`, just cut over to, during its bake (`[health] bake`): the previous
    /// release's container (`previous`, a SHA when known) is kept until Unix second `until`,
    /// and nothing else is changed meanwhile.
    Baking {
        serving: String,
        previous: Option<String>,
        until: u64,
    },
    /// Serving `serving`, but `problem` needs a retry.
    Degraded {
        serving: String,
        problem: Problem,
    },
    /// Nothing of ours serves.
    Unconverged {
        problem: Problem,
    },
    /// A warm-pool instance: the release's image is on disk and the blog is not started; it
    /// starts when Auto Scaling moves the instance out of the pool.
    Warm {
        image: String,
    },
    Stopping,
}

impl Phase {
    /// After a pass: what serves (a SHA of ours, running) and what failed.
    pub fn after_pass(serving: Option<String>, problem: Option<Problem>) -> Phase {
        match (serving, problem) {
            (Some(serving), None) => Phase::Converged { serving },
            (Some(serving), Some(problem)) => Phase::Degraded { serving, problem },
            (None, Some(problem)) => Phase::Unconverged { problem },
            (None, None) => Phase::Unconverged {
                problem: Problem { kind: ProblemKind::NothingToRun, text: "nothing serves".into() },
            },
        }
    }

    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Phase::Degraded { problem, .. } | Phase::Unconverged { problem } => Some(problem),
            _ => None,
        }
    }

    /// The SHA serving after the pass, if any.
    pub fn serving(&self) -> Option<&str> {
        match self {
            Phase::Converged { serving } | Phase::Degraded { serving, .. } | Phase::Baking { serving, .. } => {
                Some(serving)
            }
            _ => None,
        }
    }

    /// Serving the target with nothing failing (a bake included: it serves the target, and the
    /// loop polls at its interval meanwhile).
    pub fn is_converged(&self) -> bool {
        matches!(self, Phase::Converged { .. } | Phase::Baking { .. })
    }

    /// The one-line `STATUS=`: `<env>: serving <sha>[ (updates paused by X)]; <state>`.
    pub fn status_line(&self, env: Option<&str>, paused_by: Option<&str>) -> String {
        let env = env.unwrap_or("unknown");
        let serving = |sha: &str| {
            let short = &sha[..sha.len().min(12)];
            match paused_by {
                Some(by) => format!("{short} (updates paused by {by})"),
                None => short.to_owned(),
            }
        };
        match self {
            Phase::Starting => format!("{env}: starting"),
            Phase::Converged { serving: s } => format!("{env}: serving {}; converged", serving(s)),
            Phase::Baking { serving: s, previous, until } => format!(
                "{env}: serving {}; baking until {} ({} left), {} kept warm to revert to",
                serving(s),
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(*until)),
                humantime::format_duration(std::time::Duration::from_secs(
                    until.saturating_sub(crate::state::now_unix())
                )),
                previous.as_deref().map(|p| &p[..p.len().min(12)]).unwrap_or("the previous version")
            ),
            Phase::Degraded { serving: s, problem } => {
                format!("{env}: serving {}; degraded: {}", serving(s), problem.text)
            }
            Phase::Unconverged { problem } => format!("{env}: unconverged: {}", problem.text),
            Phase::Warm { image } => {
                format!("{env}: warm pool: {image} pulled; the blog starts when the instance leaves the pool")
            }
            Phase::Stopping => format!("{env}: stopping"),
        }
    }
}

/// What `STATUS=` adds after the phase when the host serves on purpose something other than
/// S3's release: a staged rollout's wave still to come, or a fleet halt. The wave's time, not
/// a countdown, so the line changes only when the situation does.
pub fn rollout_note(phase: &Phase, why: Option<&crate::pass::decide::Why>) -> Option<String> {
    use crate::pass::decide::Why;
    if !matches!(phase, Phase::Converged { .. } | Phase::Degraded { .. }) {
        return None;
    }
    match why? {
        Why::Waiting { release, until, .. } => Some(format!(
            "{} waits for this host's rollout wave at {}",
            release.short(),
            humantime::format_rfc3339_seconds(*until)
        )),
        Why::Halted { release, .. } => Some(format!("{} is halted fleet-wide", release.short())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outside::release::ObjectLocation;

    fn s3_down(request: &str) -> PassError {
        PassError::Release(ReleaseError::Unavailable {
            location: ObjectLocation { bucket: "b".into(), key: "k".into() },
            detail: format!("service error (InternalError) {{ aws_request_id: \"{request}\" }}"),
        })
    }

    #[test]
    fn a_retry_of_the_same_failure_is_the_same_problem() {
        let a = Problem::from(&s3_down("1"));
        let b = Problem::from(&s3_down("2"));
        assert_ne!(a.text, b.text);
        assert!(a.same_as(&b));
        let lock = Problem::from(&PassError::Blocked("x".into()));
        assert!(!a.same_as(&lock));
    }

    #[test]
    fn status_lines() {
        let p = Problem::from(&PassError::Blocked("in the way".into()));
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let cases = [
            (Phase::Starting, None, "staging: starting"),
            (Phase::Converged { serving: sha.into() }, None, "staging: serving 0123456789ab; converged"),
            (
                Phase::Converged { serving: sha.into() },
                Some("alice"),
                "staging: serving 0123456789ab (updates paused by alice); converged",
            ),
            (
                Phase::Degraded { serving: sha.into(), problem: p.clone() },
                None,
                "staging: serving 0123456789ab; degraded: in the way",
            ),
            (Phase::Unconverged { problem: p.clone() }, None, "staging: unconverged: in the way"),
            (
                Phase::Warm { image: "blog:0123456789ab".into() },
                None,
                "staging: warm pool: blog:0123456789ab pulled; the blog starts when the instance leaves the pool",
            ),
            (Phase::Stopping, None, "staging: stopping"),
            (
                Phase::Baking { serving: sha.into(), previous: Some("f".repeat(40)), until: 1_700_000_000 },
                None,
                "staging: serving 0123456789ab; baking until 2023-11-14T22:13:20Z (0s left), ffffffffffff kept warm to revert to",
            ),
        ];
        for (phase, paused, want) in cases {
            assert_eq!(phase.status_line(Some("staging"), paused), want);
        }
    }

    #[test]
    fn status_names_a_rollout_wave_or_a_halt() {
        use crate::pass::decide::Why;
        use crate::sha::Sha;
        let release = Sha::parse("fedcba9876543210fedcba9876543210fedcba98").unwrap();
        let until = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let waiting = Why::Waiting { release: release.clone(), until, remaining: std::time::Duration::from_secs(5) };
        let halted = Why::Halted { release, reason: "probe".into(), rolled_back_to: None };
        let serving = Phase::Converged { serving: "0123456789abcdef0123456789abcdef01234567".into() };
        assert_eq!(
            rollout_note(&serving, Some(&waiting)).as_deref(),
            Some("fedcba987654 waits for this host's rollout wave at 2027-01-15T08:00:00Z")
        );
        assert_eq!(rollout_note(&serving, Some(&halted)).as_deref(), Some("fedcba987654 is halted fleet-wide"));
        assert_eq!(rollout_note(&serving, Some(&Why::Published)), None);
        assert_eq!(rollout_note(&Phase::Starting, Some(&halted)), None);
    }

    #[test]
    fn after_a_failed_pass_the_phase_follows_what_serves() {
        let p = Problem::from(&PassError::Blocked("x".into()));
        assert!(matches!(Phase::after_pass(Some("a".into()), None), Phase::Converged { .. }));
        assert!(matches!(Phase::after_pass(Some("a".into()), Some(p.clone())), Phase::Degraded { .. }));
        assert!(matches!(Phase::after_pass(None, Some(p)), Phase::Unconverged { .. }));
    }
}
