//! The decision: given what should run and what Docker says runs, what must change.
//!
//! A pure function with table-driven tests. It never touches Docker, S3 or the clock; the
//! caller observes, calls [`plan`], and carries the plan out.

use std::fmt;

/// What Docker reports about the container under the managed name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub id: String,
    /// Carries our `managed` label: created by blog-agent.
    pub managed: bool,
    pub sha: Option<String>,
    pub spec_hash: Option<String>,
    pub running: bool,
}

/// Why a new container is deployed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Nothing runs under the name.
    NoContainer,
    /// A container of ours runs another release.
    NewRelease { from: String },
    /// Same release, but ports, env or labels differ from the config.
    SpecChanged,
    /// Someone else's container holds the name (a hand-made `docker run`).
    Foreign,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoContainer => f.write_str("no container"),
            Reason::NewRelease { from } => write!(f, "new release (running {from})"),
            Reason::SpecChanged => f.write_str("container spec changed"),
            Reason::Foreign => f.write_str("container was not created by blog-agent"),
        }
    }
}

/// What must change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Exactly the desired container runs: change nothing (no restart).
    Converged,
    /// The desired container exists but is stopped: start it again.
    Restart { id: String },
    /// Pull (if missing), verify a candidate, then replace `replace` (if any).
    Deploy { reason: Reason, replace: Option<String> },
}

/// Decides what must change to run `desired_sha` with `desired_spec_hash`.
pub fn plan(desired_sha: &str, desired_spec_hash: &str, observed: Option<&Observed>) -> Plan {
    let Some(c) = observed else {
        return Plan::Deploy { reason: Reason::NoContainer, replace: None };
    };
    let replace = Some(c.id.clone());
    if !c.managed {
        return Plan::Deploy { reason: Reason::Foreign, replace };
    }
    if c.sha.as_deref() != Some(desired_sha) {
        let from = c.sha.clone().unwrap_or_else(|| "unknown".into());
        return Plan::Deploy { reason: Reason::NewRelease { from }, replace };
    }
    if c.spec_hash.as_deref() != Some(desired_spec_hash) {
        return Plan::Deploy { reason: Reason::SpecChanged, replace };
    }
    if c.running {
        Plan::Converged
    } else {
        Plan::Restart { id: c.id.clone() }
    }
}

/// The version to run while automatic updates are paused: the one the container already
/// carries (a dead or stopped container is repaired with the same SHA), else the version
/// `sync --sha` pinned, else the last known good one. `None`: nothing to go on, change nothing.
pub fn paused_target<'a>(
    running: Option<&'a str>,
    pinned: Option<&'a str>,
    last_good: Option<&'a str>,
) -> Option<&'a str> {
    running.or(pinned).or(last_good)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paused_target_freezes_what_runs() {
        let cases = [
            ((Some("aaaaaaa"), Some("bbbbbbb"), Some("ccccccc")), Some("aaaaaaa")),
            ((None, Some("bbbbbbb"), Some("ccccccc")), Some("bbbbbbb")),
            ((None, None, Some("ccccccc")), Some("ccccccc")),
            ((None, None, None), None),
        ];
        for ((running, pinned, good), want) in cases {
            assert_eq!(paused_target(running, pinned, good), want, "{running:?} {pinned:?} {good:?}");
        }
    }

    fn ours(sha: &str, spec: &str, running: bool) -> Observed {
        Observed { id: "c1".into(), managed: true, sha: Some(sha.into()), spec_hash: Some(spec.into()), running }
    }

    #[test]
    fn table() {
        let foreign = Observed { id: "c1".into(), managed: false, sha: None, spec_hash: None, running: true };
        let deploy = |reason| Plan::Deploy { reason, replace: Some("c1".into()) };
        let cases: Vec<(&str, Option<Observed>, Plan)> = vec![
            ("nothing runs", None, Plan::Deploy { reason: Reason::NoContainer, replace: None }),
            ("converged", Some(ours("aaaaaaa", "h1", true)), Plan::Converged),
            ("stopped, same spec", Some(ours("aaaaaaa", "h1", false)), Plan::Restart { id: "c1".into() }),
            ("new sha", Some(ours("bbbbbbb", "h1", true)), deploy(Reason::NewRelease { from: "bbbbbbb".into() })),
            (
                "new sha, stopped",
                Some(ours("bbbbbbb", "h1", false)),
                deploy(Reason::NewRelease { from: "bbbbbbb".into() }),
            ),
            ("spec changed", Some(ours("aaaaaaa", "h2", true)), deploy(Reason::SpecChanged)),
            ("foreign under the name", Some(foreign), deploy(Reason::Foreign)),
        ];
        for (name, observed, want) in cases {
            assert_eq!(plan("aaaaaaa", "h1", observed.as_ref()), want, "{name}");
        }
    }
}
