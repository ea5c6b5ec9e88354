//! The one judgement of blame: when something fails on this host, is it *the release* (the
//! same failure would happen on every host, so the fleet should stop it) or *this host* (its
//! Docker, netfilter, sysctl, disk, ports, memory, an external kill: the fleet must not be
//! stopped for it)?
//!
//! Every failure the agent can count is first described as facts ([`Failure`], with
//! [`History`]: what this host knows of the release), then [`judge`] turns them into a
//! [`Verdict`] naming its [`Rule`]. Only [`Blame::Release`] verdicts become halt votes
//! ([`crate::fleet::halt`]); both kinds count towards the local quarantine, which holds a
//! release back on this host only. docs/fleet.md lists the rules with the same names.
//!
//! The bias is deliberate: when in doubt, the host is blamed. A wrong host verdict costs one
//! host a rollback and a retry later; a wrong release verdict (a vote) costs nothing until
//! `[rollout] halt_after` hosts agree, but a halt stops the whole fleet.
//!
//! Pure: no I/O, no clock. Table-tested below.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A release the environment has published for at least this long, and no host has halted,
/// is serving on other hosts: a crash loop of it here is this host's (its memory, its
/// kernel), not the release's. An hour is well past any staged rollout that still finds bugs
/// at start-up ([`crate::fleet::rollout::MAX_SPREAD`] bounds how long one takes) without
/// waiting for weeks.
pub const FLEET_SERVES_AFTER: Duration = Duration::from_secs(60 * 60);

/// A release that served on this host this long before its crash loop started was working
/// here; what changed is the host. Same window as a crash loop itself.
pub const SERVED_HERE_AFTER: Duration = Duration::from_secs(10 * 60);

/// Who is to blame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Blame {
    /// The release itself: every host would see the same. Counts towards a fleet halt.
    Release,
    /// This host: never stops or steers another host.
    Host,
}

/// Every rule of the judgement, by name (the names are the wire format of votes and the
/// headings of docs/fleet.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// The new version never passed its `[health]` checks (2xx, a `[[health.check]]`'s status
    /// or `contains` text) over the Docker bridge within `[health] timeout`.
    NeverAnswered,
    /// Docker's runtime could not run the image's command (missing entrypoint).
    CommandCannotRun,
    /// The new version exited or crashed before it ever answered.
    CrashedBeforeServing,
    /// The new version crash-looped right after its first deploy here, and the fleet does not
    /// serve it yet.
    CrashLoopAfterDeploy,
    /// The probe failed for the release that already served here before the pass: what
    /// changed is this host's container spec (its config), not the release.
    SpecChangedHere,
    /// The new version answered over the bridge, but not through the host's rules or ports:
    /// route_localnet, netfilter, a port, a firewall of this host.
    HostPath,
    /// Docker could not create, start, stop or rename a container here (port taken, disk,
    /// daemon trouble).
    DockerHere,
    /// The traffic rules could not be written here (iptables, netfilter).
    NetfilterHere,
    /// The container was killed from outside (SIGKILL, the OOM killer), not by its own exit:
    /// during its probe, or in a crash loop.
    KilledFromOutside,
    /// The release crash-loops here after serving here for a while.
    ServedHereBefore,
    /// The release crash-loops here while the fleet has served it for a long time.
    FleetServesIt,
    /// The new version passed its proof and took the traffic, then failed its health check
    /// through the host path several times in a row (or an access-log or extra check tripped)
    /// during its bake: reverted to the warm previous version.
    UnhealthyInBake,
    /// The new version exited on its own during its bake (Docker's `die` event): reverted to
    /// the warm previous version.
    ExitedInBake,
}

impl Rule {
    /// The name docs, logs and votes use.
    pub fn name(self) -> &'static str {
        match self {
            Rule::NeverAnswered => "never-answered",
            Rule::CommandCannotRun => "command-cannot-run",
            Rule::CrashedBeforeServing => "crashed-before-serving",
            Rule::CrashLoopAfterDeploy => "crash-loop-after-deploy",
            Rule::SpecChangedHere => "spec-changed-here",
            Rule::HostPath => "host-path",
            Rule::DockerHere => "docker-here",
            Rule::NetfilterHere => "netfilter-here",
            Rule::KilledFromOutside => "killed-from-outside",
            Rule::ServedHereBefore => "served-here-before",
            Rule::FleetServesIt => "fleet-serves-it",
            Rule::UnhealthyInBake => "unhealthy-in-bake",
            Rule::ExitedInBake => "exited-in-bake",
        }
    }

    /// Who the rule blames.
    pub fn blame(self) -> Blame {
        match self {
            Rule::NeverAnswered
            | Rule::CommandCannotRun
            | Rule::CrashedBeforeServing
            | Rule::CrashLoopAfterDeploy
            | Rule::UnhealthyInBake
            | Rule::ExitedInBake => Blame::Release,
            Rule::SpecChangedHere
            | Rule::HostPath
            | Rule::DockerHere
            | Rule::NetfilterHere
            | Rule::KilledFromOutside
            | Rule::ServedHereBefore
            | Rule::FleetServesIt => Blame::Host,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What went wrong, as facts (no blame yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The new version was probed over the Docker bridge (the candidate, the switch's new
    /// container, or a publish-mode first deploy checked over the bridge after its port
    /// failed) and never passed its checks; `detail` names the last check that failed, its status
    /// and the head of its body. `died`: it exited or crashed during the probe, with Docker's
    /// exit code and `OOMKilled` of that end.
    BridgeProbe { died: bool, exit_code: Option<i64>, oom_killed: bool, detail: String },
    /// Docker refused to start the image's command.
    CommandCannotRun { detail: String },
    /// The new version answered 2xx over the bridge but not through the host's rules or
    /// published port.
    HostPathProbe { detail: String },
    /// Docker could not carry out a container operation here.
    Engine { detail: String },
    /// The traffic rules could not be written here.
    Netfilter { detail: String },
    /// Docker restarted the serving container [`crate::agent::quarantine::CRASH_LOOP_RESTARTS`]
    /// times within the window.
    CrashLoop { restarts: i64, exit_code: Option<i64>, oom_killed: bool },
    /// During the bake after its cut-over, the new version failed what watches it: its health
    /// check through the host path several times in a row, or a tripped watcher (access-log
    /// 5xx share, an extra check). It had served: the failure came late.
    LateUnhealthy { detail: String },
    /// During the bake after its cut-over, the new version's process ended (Docker's `die`),
    /// with Docker's exit code and `OOMKilled`.
    LateExit { exit_code: Option<i64>, oom_killed: bool, detail: String },
}

/// What this host knows of the release that failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct History {
    /// It is the release that served here before the pass (the container spec changed).
    pub served_before_pass: bool,
    /// How long it has been this host's proven release (across its containers), if it is.
    pub served_here_for: Option<Duration>,
    /// How long the environment has published it (S3's Last-Modified), if it is published.
    pub published_for: Option<Duration>,
}

/// The judgement: who is to blame, by which rule, and the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub rule: Rule,
    pub evidence: String,
}

impl Verdict {
    pub fn blame(&self) -> Blame {
        self.rule.blame()
    }

    /// Counts towards a fleet halt.
    pub fn is_release(&self) -> bool {
        self.blame() == Blame::Release
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whose = match self.blame() {
            Blame::Release => "the release",
            Blame::Host => "this host",
        };
        write!(f, "{whose} ({}): {}", self.rule, self.evidence)
    }
}

/// Exit code of a process killed by SIGKILL (128 + 9): the OOM killer, `kill -9`.
const SIGKILL_EXIT: i64 = 137;

/// Whether a process ended by a kill from outside: the OOM killer (`OOMKilled`), or SIGKILL
/// (`kill -9`, which the OOM killer also sends). A release's own exit never looks like this.
fn killed_from_outside(exit_code: Option<i64>, oom_killed: bool) -> bool {
    oom_killed || exit_code == Some(SIGKILL_EXIT)
}

/// Judges `failure` of a release with `history` on this host.
pub fn judge(failure: &Failure, history: &History) -> Verdict {
    let verdict = |rule: Rule, evidence: &str| Verdict { rule, evidence: evidence.to_owned() };
    match failure {
        // Killed during its probe (the candidate, the switch's new container): what ended it
        // was this host's memory or someone on it, as for a crash loop of kills.
        Failure::BridgeProbe { died: true, exit_code, oom_killed, detail }
            if killed_from_outside(*exit_code, *oom_killed) =>
        {
            verdict(Rule::KilledFromOutside, detail)
        }
        // What fails for the release that served here a moment ago is this host's new spec.
        Failure::BridgeProbe { detail, .. } | Failure::CommandCannotRun { detail } if history.served_before_pass => {
            verdict(Rule::SpecChangedHere, detail)
        }
        Failure::BridgeProbe { died: true, detail, .. } => verdict(Rule::CrashedBeforeServing, detail),
        Failure::BridgeProbe { died: false, detail, .. } => verdict(Rule::NeverAnswered, detail),
        Failure::CommandCannotRun { detail } => verdict(Rule::CommandCannotRun, detail),
        Failure::HostPathProbe { detail } => verdict(Rule::HostPath, detail),
        Failure::Engine { detail } => verdict(Rule::DockerHere, detail),
        Failure::Netfilter { detail } => verdict(Rule::NetfilterHere, detail),
        // A late end by a kill from outside is this host's, as during a probe.
        Failure::LateExit { exit_code, oom_killed, detail } if killed_from_outside(*exit_code, *oom_killed) => {
            verdict(Rule::KilledFromOutside, detail)
        }
        // The release that served here before the pass, failing after a new spec: the spec.
        Failure::LateExit { detail, .. } | Failure::LateUnhealthy { detail } if history.served_before_pass => {
            verdict(Rule::SpecChangedHere, detail)
        }
        Failure::LateExit { detail, .. } => verdict(Rule::ExitedInBake, detail),
        Failure::LateUnhealthy { detail } => verdict(Rule::UnhealthyInBake, detail),
        Failure::CrashLoop { restarts, exit_code, oom_killed } => {
            let evidence = format!(
                "Docker restarted it {restarts} times; last exit code {}{}",
                exit_code.map(|c| c.to_string()).unwrap_or_else(|| "unknown".into()),
                if *oom_killed { " (OOM-killed)" } else { "" }
            );
            let rule = if killed_from_outside(*exit_code, *oom_killed) {
                Rule::KilledFromOutside
            } else if history.served_before_pass || history.served_here_for.is_some_and(|d| d >= SERVED_HERE_AFTER) {
                Rule::ServedHereBefore
            } else if history.published_for.is_some_and(|d| d >= FLEET_SERVES_AFTER) {
                Rule::FleetServesIt
            } else {
                Rule::CrashLoopAfterDeploy
            };
            Verdict { rule, evidence }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn bridge(died: bool) -> Failure {
        Failure::BridgeProbe { died, exit_code: died.then_some(1), oom_killed: false, detail: "probe".into() }
    }

    /// The new version ended during its probe with `exit_code` / `OOMKilled`.
    fn ended(exit_code: Option<i64>, oom_killed: bool) -> Failure {
        Failure::BridgeProbe { died: true, exit_code, oom_killed, detail: "probe".into() }
    }

    fn late_unhealthy() -> Failure {
        Failure::LateUnhealthy { detail: "HTTP 500 three times in a row".into() }
    }

    fn late_exit(exit_code: Option<i64>, oom_killed: bool) -> Failure {
        Failure::LateExit { exit_code, oom_killed, detail: "exited".into() }
    }

    fn crash(exit_code: Option<i64>, oom_killed: bool) -> Failure {
        Failure::CrashLoop { restarts: 3, exit_code, oom_killed }
    }

    /// Every rule, with the facts that lead to it and the blame it carries.
    #[test]
    fn every_rule_of_the_judgement() {
        let fresh = History::default();
        let served_before = History { served_before_pass: true, ..fresh };
        let served_long = History { served_here_for: Some(11 * MIN), ..fresh };
        let served_briefly = History { served_here_for: Some(MIN), published_for: Some(2 * MIN), ..fresh };
        let fleet_serves = History { published_for: Some(61 * MIN), ..fresh };
        let cases: &[(&str, Failure, History, Rule, Blame)] = &[
            ("never answered over the bridge", bridge(false), fresh, Rule::NeverAnswered, Blame::Release),
            ("exited during its probe", bridge(true), fresh, Rule::CrashedBeforeServing, Blame::Release),
            ("exit unknown during its probe", ended(None, false), fresh, Rule::CrashedBeforeServing, Blame::Release),
            ("SIGKILLed during its probe", ended(Some(137), false), fresh, Rule::KilledFromOutside, Blame::Host),
            ("OOM-killed during its probe", ended(Some(137), true), fresh, Rule::KilledFromOutside, Blame::Host),
            ("OOM-killed, exit unknown", ended(None, true), fresh, Rule::KilledFromOutside, Blame::Host),
            (
                "the release that served before, SIGKILLed during its probe",
                ended(Some(137), false),
                served_before,
                Rule::KilledFromOutside,
                Blame::Host,
            ),
            (
                "command cannot run",
                Failure::CommandCannotRun { detail: "exec".into() },
                fresh,
                Rule::CommandCannotRun,
                Blame::Release,
            ),
            (
                "probe of the release that served before",
                bridge(false),
                served_before,
                Rule::SpecChangedHere,
                Blame::Host,
            ),
            (
                "command of the release that served before",
                Failure::CommandCannotRun { detail: "exec".into() },
                served_before,
                Rule::SpecChangedHere,
                Blame::Host,
            ),
            (
                "bridge ok, host path not",
                Failure::HostPathProbe { detail: "127.0.0.1 timed out".into() },
                fresh,
                Rule::HostPath,
                Blame::Host,
            ),
            (
                "port taken",
                Failure::Engine { detail: "port is already allocated".into() },
                fresh,
                Rule::DockerHere,
                Blame::Host,
            ),
            (
                "iptables",
                Failure::Netfilter { detail: "iptables-restore".into() },
                fresh,
                Rule::NetfilterHere,
                Blame::Host,
            ),
            ("SIGKILL", crash(Some(137), false), fresh, Rule::KilledFromOutside, Blame::Host),
            ("OOM", crash(Some(1), true), fresh, Rule::KilledFromOutside, Blame::Host),
            (
                "crash loop of what served before the pass",
                crash(Some(1), false),
                served_before,
                Rule::ServedHereBefore,
                Blame::Host,
            ),
            (
                "crash loop after serving here a while",
                crash(Some(1), false),
                served_long,
                Rule::ServedHereBefore,
                Blame::Host,
            ),
            (
                "crash loop of a release the fleet serves",
                crash(Some(1), false),
                fleet_serves,
                Rule::FleetServesIt,
                Blame::Host,
            ),
            (
                "crash loop right after a new deploy",
                crash(Some(1), false),
                served_briefly,
                Rule::CrashLoopAfterDeploy,
                Blame::Release,
            ),
            ("crash loop, exit unknown, new", crash(None, false), fresh, Rule::CrashLoopAfterDeploy, Blame::Release),
            ("late 5xx in the bake", late_unhealthy(), fresh, Rule::UnhealthyInBake, Blame::Release),
            ("late exit in the bake", late_exit(Some(1), false), fresh, Rule::ExitedInBake, Blame::Release),
            ("late exit, code unknown", late_exit(None, false), fresh, Rule::ExitedInBake, Blame::Release),
            ("OOM-killed in the bake", late_exit(Some(137), true), fresh, Rule::KilledFromOutside, Blame::Host),
            ("SIGKILLed in the bake", late_exit(Some(137), false), fresh, Rule::KilledFromOutside, Blame::Host),
            (
                "late 5xx of the release that served before",
                late_unhealthy(),
                served_before,
                Rule::SpecChangedHere,
                Blame::Host,
            ),
            (
                "late exit of the release that served before",
                late_exit(Some(1), false),
                served_before,
                Rule::SpecChangedHere,
                Blame::Host,
            ),
        ];
        for (what, failure, history, rule, blame) in cases {
            let v = judge(failure, history);
            assert_eq!((v.rule, v.blame()), (*rule, *blame), "{what}");
            assert_eq!(rule.blame(), *blame, "{what}");
        }
    }

    #[test]
    fn rule_names_are_the_wire_format() {
        for rule in [
            Rule::NeverAnswered,
            Rule::CommandCannotRun,
            Rule::CrashedBeforeServing,
            Rule::CrashLoopAfterDeploy,
            Rule::SpecChangedHere,
            Rule::HostPath,
            Rule::DockerHere,
            Rule::NetfilterHere,
            Rule::KilledFromOutside,
            Rule::ServedHereBefore,
            Rule::FleetServesIt,
            Rule::UnhealthyInBake,
            Rule::ExitedInBake,
        ] {
            assert_eq!(serde_json::to_value(rule).unwrap(), serde_json::json!(rule.name()));
        }
        let v = judge(&crash(Some(137), false), &History::default());
        assert_eq!(v.to_string(), "this host (killed-from-outside): Docker restarted it 3 times; last exit code 137");
    }
}
