//! Observe once: everything a pass decides on, read from Docker and the state dir in one go.
//!
//! Reads the managed container `<name>` and the transient ones a deploy uses beside it
//! (`-candidate`, `-next`, `-previous`, `-failed`), the state file (last-known-good) and the
//! pause file. Writes nothing. The decision ([`super::decide`]) is a pure function of this.

use std::time::Duration;

use crate::config::Settings;
use crate::outside::docker::{ContainerInfo, Engine, EngineError};
use crate::pass::plan::Observed;
use crate::spec::{LABEL_SHA, LABEL_SPEC_HASH};
use crate::state::{Pause, State};

/// Suffixes of the transient containers a deploy uses next to `<name>`.
pub const CANDIDATE: &str = "candidate";
pub const NEXT: &str = "next";
pub const PREVIOUS: &str = "previous";
pub const FAILED: &str = "failed";

/// `<name>-<suffix>`.
pub fn aside(name: &str, suffix: &str) -> String {
    format!("{name}-{suffix}")
}

/// A `docker rm -f` caught half-way shows the container as `removing`: wait this long for it
/// to finish rather than act on a ghost.
const REMOVAL_WAIT: Duration = Duration::from_secs(10);
const REMOVAL_POLL: Duration = Duration::from_millis(50);

/// Written here rather than beside [`ContainerInfo`] so that the Docker adapter does not
/// import the pass that reads it.
impl ContainerInfo {
    /// The reconcile view of this container.
    pub fn observed(&self) -> Observed {
        Observed {
            id: self.id.clone(),
            managed: self.is_managed(),
            sha: self.labels.get(LABEL_SHA).cloned(),
            spec_hash: self.labels.get(LABEL_SPEC_HASH).cloned(),
            running: self.running,
        }
    }
}

/// What the host looks like at the start of a pass.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The configured container name.
    pub name: String,
    /// Whatever holds `<name>` (ours or not).
    pub main: Option<ContainerInfo>,
    /// Leftovers of an interrupted deploy, by suffix (ours or not: the decision checks).
    pub candidate: Option<ContainerInfo>,
    pub next: Option<ContainerInfo>,
    pub previous: Option<ContainerInfo>,
    pub failed: Option<ContainerInfo>,
    /// Last-known-good and the one before it.
    pub state: State,
    /// Automatic updates frozen by an operator.
    pub pause: Option<Pause>,
}

impl Snapshot {
    /// The SHA the managed container under `<name>` carries, running or not.
    pub fn main_sha(&self) -> Option<&str> {
        self.main.as_ref().filter(|c| c.is_managed()).and_then(|c| c.labels.get(LABEL_SHA)).map(String::as_str)
    }

    /// The SHA serving right now: a running container of ours under `<name>`.
    pub fn serving_sha(&self) -> Option<&str> {
        self.main
            .as_ref()
            .filter(|c| c.is_managed() && c.running)
            .and_then(|c| c.labels.get(LABEL_SHA))
            .map(String::as_str)
    }
}

/// The one Docker operation observing needs: a narrow seam, so the observation is unit-tested
/// without Docker (the real one is [`Engine`]; integration tests use it).
pub trait Inspect {
    /// The container named exactly `name`; `None` when there is none.
    fn container(&self, name: &str) -> impl std::future::Future<Output = Result<Option<ContainerInfo>, EngineError>>;
}

impl Inspect for Engine {
    fn container(&self, name: &str) -> impl std::future::Future<Output = Result<Option<ContainerInfo>, EngineError>> {
        Engine::container(self, name)
    }
}

/// Reads the host. Inspects `<name>` and its four leftover names (a 404 is an answer), loads
/// the state and pause files.
pub async fn observe(engine: &impl Inspect, settings: &Settings) -> Result<Snapshot, EngineError> {
    let name = &settings.container.name;
    let mut main = engine.container(name).await?;
    let deadline = tokio::time::Instant::now() + REMOVAL_WAIT;
    while main.as_ref().is_some_and(|c| c.status == "removing") && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(REMOVAL_POLL).await;
        main = engine.container(name).await?;
    }
    let names = [CANDIDATE, NEXT, PREVIOUS, FAILED].map(|suffix| aside(name, suffix));
    let (candidate, next, previous, failed) = tokio::try_join!(
        engine.container(&names[0]),
        engine.container(&names[1]),
        engine.container(&names[2]),
        engine.container(&names[3]),
    )?;
    Ok(Snapshot {
        name: name.clone(),
        main,
        candidate,
        next,
        previous,
        failed,
        state: State::load(&settings.agent.state_dir),
        pause: Pause::load(&settings.agent.state_dir),
    })
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;

    /// Containers by name; `removing` answers "removing" for the first N inspections of `<name>`.
    struct FakeDocker {
        containers: HashMap<String, ContainerInfo>,
        removing: RefCell<u32>,
        inspected: RefCell<Vec<String>>,
    }

    impl Inspect for FakeDocker {
        async fn container(&self, name: &str) -> Result<Option<ContainerInfo>, EngineError> {
            self.inspected.borrow_mut().push(name.to_owned());
            if name == "blog" && *self.removing.borrow() > 0 {
                *self.removing.borrow_mut() -= 1;
                return Ok(Some(info(name, "removing")));
            }
            Ok(self.containers.get(name).cloned())
        }
    }

    fn info(name: &str, status: &str) -> ContainerInfo {
        ContainerInfo {
            id: format!("id-{name}"),
            name: name.into(),
            running: status == "running",
            status: status.into(),
            exit_code: None,
            labels: HashMap::new(),
            ip: None,
            started_at: None,
            restart_count: 0,
            oom_killed: false,
        }
    }

    fn settings() -> Settings {
        let dir = std::env::temp_dir().join(format!("blog-agent-snapshot-{}", std::process::id()));
        Settings::parse(
            &format!(
                "[release]\nbucket = \"b\"\n[image]\nrepository = \"127.0.0.1:5000/blog\"\n[agent]\nstate_dir = \"{}\"\n",
                dir.display()
            ),
            Path::new("test.toml"),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn one_observation_reads_the_name_and_every_leftover() {
        let docker = FakeDocker {
            containers: [info("blog", "running"), info("blog-previous", "exited"), info("blog-failed", "exited")]
                .into_iter()
                .map(|c| (c.name.clone(), c))
                .collect(),
            removing: RefCell::new(0),
            inspected: RefCell::new(Vec::new()),
        };
        let snap = observe(&docker, &settings()).await.unwrap();
        assert_eq!(snap.main.as_ref().map(|c| c.status.as_str()), Some("running"));
        assert!(snap.previous.is_some() && snap.failed.is_some());
        assert!(snap.candidate.is_none() && snap.next.is_none());
        let mut seen = docker.inspected.borrow().clone();
        seen.sort();
        assert_eq!(seen, ["blog", "blog-candidate", "blog-failed", "blog-next", "blog-previous"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_container_caught_mid_removal_is_waited_out() {
        let docker =
            FakeDocker { containers: HashMap::new(), removing: RefCell::new(5), inspected: RefCell::new(Vec::new()) };
        let snap = observe(&docker, &settings()).await.unwrap();
        assert!(snap.main.is_none(), "acted on what is left once the removal finished");
    }
}
