//! What the agent remembers across restarts that Docker cannot tell it: the last version that
//! was serving healthily and the one before it. Used when S3 or ECR is unreachable at boot
//! (start the last-known-good image if it is on disk) and to roll back from a crash loop.
//!
//! One JSON file in the state dir, written atomically (temp file, fsync, rename, fsync dir) so
//! a power cut leaves either the old file or the new one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const FILE: &str = "state.json";

/// A version that was serving and healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoodRelease {
    pub sha: String,
    pub digest: String,
    pub environment: String,
    /// Unix seconds when it was last seen healthy.
    pub at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub last_good: Option<GoodRelease>,
    pub previous_good: Option<GoodRelease>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write state file {}: {source}", path.display())]
pub struct StateError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl State {
    /// Loads the state; a missing or unreadable file is an empty state (logged), never a
    /// reason to stop serving.
    pub fn load(dir: &Path) -> State {
        let path = dir.join(FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable state file");
                State::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable state file");
                State::default()
            }
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        write_atomically(dir, FILE, &serde_json::to_vec_pretty(self).expect("state serializes"))
    }

    /// The last-known-good version if it was recorded for `environment`: a host moved to
    /// another environment must not fall back to the old one's release.
    pub fn last_good_in(&self, environment: &str) -> Option<&GoodRelease> {
        self.last_good.as_ref().filter(|g| g.environment == environment)
    }

    /// Records `release` as serving healthily. Returns whether anything changed.
    pub fn record_good(&mut self, release: GoodRelease) -> bool {
        match &mut self.last_good {
            Some(last) if last.sha == release.sha && last.environment == release.environment => {
                let changed = last.digest != release.digest;
                *last = release;
                changed
            }
            _ => {
                self.previous_good = self.last_good.take();
                self.last_good = Some(release);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good(sha: &str) -> GoodRelease {
        GoodRelease { sha: sha.into(), digest: format!("sha256:{sha}"), environment: "staging".into(), at: 1 }
    }

    #[test]
    fn remembers_the_last_two_good_versions() {
        let mut s = State::default();
        assert!(s.record_good(good("aaaaaaa")));
        assert!(!s.record_good(good("aaaaaaa")), "same version again is no change");
        assert!(s.record_good(good("bbbbbbb")));
        assert_eq!(s.last_good.as_ref().unwrap().sha, "bbbbbbb");
        assert_eq!(s.previous_good.as_ref().unwrap().sha, "aaaaaaa");
    }

    #[test]
    fn last_good_counts_only_in_its_environment() {
        let mut s = State::default();
        s.record_good(good("aaaaaaa"));
        let env = s.last_good.as_ref().unwrap().environment.clone();
        assert_eq!(s.last_good_in(&env).map(|g| g.sha.as_str()), Some("aaaaaaa"));
        assert!(s.last_good_in("some-other-env").is_none());
    }

    #[test]
    fn round_trips_atomically() {
        let dir = std::env::temp_dir().join(format!("blog-agent-state-{}", std::process::id()));
        let mut s = State::default();
        s.record_good(good("aaaaaaa"));
        s.save(&dir).unwrap();
        assert_eq!(State::load(&dir), s);
        std::fs::write(dir.join(FILE), b"{not json").unwrap();
        assert_eq!(State::load(&dir), State::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Automatic updates frozen by an operator (`blog-agent pause`, `sync --sha`). Kept in its own
/// file so the operator's command and the running loop never overwrite each other's writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// Who paused: the login user (`SUDO_USER`/`USER`) or "blog-agent sync --sha".
    pub by: String,
    pub reason: Option<String>,
    /// Unix seconds.
    pub at: u64,
    /// The version pinned by `sync --sha`, if that is what paused.
    pub pinned_sha: Option<String>,
}

const PAUSE_FILE: &str = "pause.json";

impl Pause {
    pub fn load(dir: &Path) -> Option<Pause> {
        let bytes = std::fs::read(dir.join(PAUSE_FILE)).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(p) => Some(p),
            Err(e) => {
                // Unreadable but present: stay paused, the safe reading of an operator's intent.
                tracing::warn!(error = %e, "pause file unreadable; treating updates as paused");
                Some(Pause {
                    by: "unknown".into(),
                    reason: Some("unreadable pause file".into()),
                    at: 0,
                    pinned_sha: None,
                })
            }
        }
    }

    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        write_atomically(dir, PAUSE_FILE, &serde_json::to_vec_pretty(self).expect("pause serializes"))
    }

    /// Removes the pause; returns whether there was one.
    pub fn clear(dir: &Path) -> Result<bool, StateError> {
        let path = dir.join(PAUSE_FILE);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(StateError { path, source }),
        }
    }
}

/// Writes `dir/name` atomically: temp file, fsync, rename, fsync the directory.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StateError> {
    let path = dir.join(name);
    let err = |source| StateError { path: path.clone(), source };
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, &path).map_err(err)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

/// Unix seconds now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The outcome of the latest reconcile passes, for `status`. Its own file: written after
/// every pass by `run` and `sync`, read by `status`; last writer wins, which is what a
/// "last" field means.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastPass {
    /// Unix seconds of the last pass that converged.
    pub last_success: Option<u64>,
    /// Unix seconds and message of the last failure (kept after a later success).
    pub last_error: Option<(u64, String)>,
}

const LAST_PASS_FILE: &str = "last-pass.json";

impl LastPass {
    pub fn load(dir: &Path) -> Option<LastPass> {
        serde_json::from_slice(&std::fs::read(dir.join(LAST_PASS_FILE)).ok()?).ok()
    }

    /// Records one pass outcome; failures to write are logged, never fatal.
    pub fn record(dir: &Path, error: Option<&str>) {
        let mut last = LastPass::load(dir).unwrap_or_default();
        match error {
            None => last.last_success = Some(now_unix()),
            Some(e) => last.last_error = Some((now_unix(), e.to_owned())),
        }
        let bytes = serde_json::to_vec_pretty(&last).expect("last pass serializes");
        if let Err(e) = write_atomically(dir, LAST_PASS_FILE, &bytes) {
            tracing::debug!(error = %e, "could not record the pass outcome");
        }
    }
}
