//! Observe once: everything a pass decides on, read from Docker and the state dir in one go.
//!
//! Reads the managed container `<name>` and the transient ones a deploy uses beside it
//! (`-candidate`, `-next`, `-previous`, `-failed`), the state file (last-known-good) and the
//! pause file. Writes nothing. The decision ([`super::decide`]) is a pure function of this.

use std::time::Duration;

use crate::config::Settings;
use crate::outside::docker::{ContainerInfo, Engine, EngineError};
use crate::spec::LABEL_SHA;
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

/// Reads the host. Inspects `<name>` and its four leftover names (a 404 is an answer), loads
/// the state and pause files.
pub async fn observe(engine: &Engine, settings: &Settings) -> Result<Snapshot, EngineError> {
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
