//! What the agent remembers across restarts that Docker cannot tell it: the last version that
//! was serving healthily and the one before it. Used when S3 or ECR is unreachable at boot
//! (start the last-known-good image if it is on disk) and to roll back from a crash loop.
//!
//! One JSON file in the state dir, written atomically (temp file, fsync, rename, fsync dir) so
//! a power cut leaves either the old file or the new one.
//!
//! Each file has two readers: `load`, for the agent, which never stops serving over a state
//! file (a missing or unreadable one reads as empty, logged), and `read`, for `status`, which
//! must tell "absent" from "cannot read" (the dir is 0700 root: a non-root `status` would
//! otherwise report a paused host as following S3).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Unix seconds when it first became the last-known-good here (kept while it stays so):
    /// how long a release has served on this host, evidence for [`crate::fleet::verdict`].
    /// Files from before this field read it as `at`.
    #[serde(default)]
    pub since: Option<u64>,
}

impl GoodRelease {
    /// How long it has served here, as of `now` (Unix seconds).
    pub fn served_for(&self, now: u64) -> std::time::Duration {
        std::time::Duration::from_secs(now.saturating_sub(self.since.unwrap_or(self.at)))
    }
}

/// The container that last proved it serves (2xx over the Docker bridge, or through the
/// host's port in publish mode), and so the only one the traffic rules may point at: after a
/// crash mid-deploy, a reboot or a dockerd restart, the container under the name may be one
/// nobody proved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proven {
    pub container_id: String,
    pub sha: String,
    pub digest: String,
    /// Unix seconds when it was proven.
    pub at: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub last_good: Option<GoodRelease>,
    pub previous_good: Option<GoodRelease>,
    /// Absent in files written before it existed: see [`State::is_proven`].
    #[serde(default)]
    pub proven: Option<Proven>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write state file {}: {source}", path.display())]
pub struct StateError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

#[cfg(test)]
thread_local! {
    /// State dirs whose state file [`State::save`] refuses to write (this thread only).
    static FAIL_WRITES: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Makes [`State::save`] into `dir` fail (or work again) on this thread: what a full disk or a
/// read-only state dir does to a write, for tests of what a failed write leaves. Reading is
/// unaffected. Root ignores file modes, so the tests cannot get there with `chmod`.
#[cfg(test)]
pub fn fail_writes_in(dir: &Path, fail: bool) {
    FAIL_WRITES.with(|dirs| {
        let mut dirs = dirs.borrow_mut();
        dirs.retain(|d| d != dir);
        if fail {
            dirs.push(dir.to_owned());
        }
    });
}

/// A state file that exists (or may) but could not be read: permissions, I/O. "Absent" is
/// not an error; see the `read` functions.
#[derive(Debug, thiserror::Error)]
#[error("cannot read state file {}: {source}", path.display())]
pub struct StateReadError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl StateReadError {
    /// The usual cause: a non-root user and the 0700 state dir.
    pub fn is_permission_denied(&self) -> bool {
        self.source.kind() == std::io::ErrorKind::PermissionDenied
    }
}

/// The bytes of `dir/name`; `None` when it does not exist.
fn read_file(dir: &Path, name: &str) -> Result<Option<Vec<u8>>, StateReadError> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateReadError { path, source }),
    }
}

impl State {
    /// Loads the state; a missing or unreadable file is an empty state (logged), never a
    /// reason to stop serving.
    pub fn load(dir: &Path) -> State {
        State::read(dir).unwrap_or_else(|e| {
            tracing::warn!(path = %e.path.display(), error = %e.source, "ignoring unreadable state file");
            State::default()
        })
    }

    /// Reads the state: missing is empty, and so is a corrupt file (as for [`State::load`]);
    /// a file that cannot be read is an error.
    pub fn read(dir: &Path) -> Result<State, StateReadError> {
        let Some(bytes) = read_file(dir, FILE)? else { return Ok(State::default()) };
        Ok(serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(path = %dir.join(FILE).display(), error = %e, "ignoring corrupt state file");
            State::default()
        }))
    }

    pub fn save(&self, dir: &Path) -> Result<(), StateError> {
        #[cfg(test)]
        if FAIL_WRITES.with(|dirs| dirs.borrow().iter().any(|d| d == dir)) {
            let source = std::io::Error::other("write refused by the test");
            return Err(StateError { path: dir.join(FILE), source });
        }
        write_atomically(dir, FILE, &serde_json::to_vec_pretty(self).expect("state serializes"))
    }

    /// The last-known-good version if it was recorded for `environment`: a host moved to
    /// another environment must not fall back to the old one's release.
    pub fn last_good_in(&self, environment: &str) -> Option<&GoodRelease> {
        self.last_good.as_ref().filter(|g| g.environment == environment)
    }

    /// Whether `container` (id, SHA label, digest label) is the proven one. A state file from
    /// before the record existed counts the last-known-good release's container as proven
    /// (the agent that wrote it recorded it only after proof).
    pub fn is_proven(&self, id: &str, sha: Option<&str>, digest: Option<&str>) -> bool {
        match &self.proven {
            Some(p) => p.container_id == id,
            None => self
                .last_good
                .as_ref()
                .is_some_and(|g| Some(g.sha.as_str()) == sha && Some(g.digest.as_str()) == digest),
        }
    }

    /// Records the proven container in `dir` (load, set, save: the caller holds the rules
    /// lock). Returns whether it wrote: proven once is proven, so the same container again
    /// keeps its first time and costs no write. Traffic moves to a container only after this
    /// succeeded ([`crate::pass::switch::serve_from`]): the keeper follows the record.
    pub fn write_proven(dir: &Path, proven: Proven) -> Result<bool, StateError> {
        let mut state = State::load(dir);
        if state.proven.as_ref().is_some_and(|p| p.container_id == proven.container_id) {
            return Ok(false);
        }
        state.proven = Some(proven);
        state.save(dir).map(|()| true)
    }

    /// [`State::write_proven`] where traffic does not depend on the record (publish mode: the
    /// container holds the host ports itself): a failed write is logged, and the next pass
    /// proves the container again before it counts.
    pub fn record_proven(dir: &Path, proven: Proven) {
        if let Err(e) = State::write_proven(dir, proven) {
            tracing::warn!(error = %e, "could not record the proven container");
        }
    }

    /// Records `release` as serving healthily. Returns whether anything changed.
    pub fn record_good(&mut self, release: GoodRelease) -> bool {
        match &mut self.last_good {
            Some(last) if last.sha == release.sha && last.environment == release.environment => {
                let changed = last.digest != release.digest || last.since.is_none();
                let since = last.since.or(Some(last.at));
                *last = GoodRelease { since, ..release };
                changed
            }
            _ => {
                self.previous_good = self.last_good.take();
                let since = release.since.or(Some(release.at));
                self.last_good = Some(GoodRelease { since, ..release });
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good(sha: &str) -> GoodRelease {
        GoodRelease {
            sha: sha.into(),
            digest: format!("sha256:{sha}"),
            environment: "staging".into(),
            at: 1,
            since: None,
        }
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
    fn the_proven_container_is_the_recorded_one_or_for_old_files_the_last_good() {
        let dir = scratch("proven");
        let mut s = State::default();
        s.record_good(good("aaaaaaa"));
        assert!(s.is_proven("c1", Some("aaaaaaa"), Some("sha256:aaaaaaa")), "old file: the last good release");
        assert!(!s.is_proven("c1", Some("bbbbbbb"), Some("sha256:bbbbbbb")));
        s.save(&dir).unwrap();
        let proven = Proven { container_id: "c2".into(), sha: "bbbbbbb".into(), digest: "d".into(), at: 5 };
        State::record_proven(&dir, proven.clone());
        let s = State::load(&dir);
        assert_eq!(s.proven, Some(proven));
        assert_eq!(s.last_good.as_ref().unwrap().sha, "aaaaaaa", "the rest is kept");
        assert!(s.is_proven("c2", None, None));
        assert!(!s.is_proven("c1", Some("aaaaaaa"), Some("sha256:aaaaaaa")), "once recorded, only by id");
        std::fs::remove_dir_all(&dir).unwrap();
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

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("blog-agent-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// `run` and a manual `sync` record the last pass at the same time: with one shared temp
    /// file name, one writer's rename took the other's temp file away (ENOENT) or published
    /// a file two writers had written into.
    #[test]
    fn concurrent_writers_never_fail_or_tear_the_file() {
        let dir = scratch("race");
        std::fs::create_dir_all(&dir).unwrap();
        // Each payload is valid JSON only whole; sizes differ so a mix of two is detectable.
        let payload =
            |w: usize, i: usize| format!("{{\"writer\":{w},\"i\":{i},\"pad\":\"{}\"}}", "x".repeat(w * 4096 + i));
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let mut reads = 0;
                while !done.load(Ordering::Relaxed) {
                    if let Ok(bytes) = std::fs::read(dir.join(LAST_PASS_FILE)) {
                        let v: serde_json::Value = serde_json::from_slice(&bytes)
                            .unwrap_or_else(|e| panic!("torn file ({e}), {} bytes", bytes.len()));
                        let (w, i) = (v["writer"].as_u64().unwrap() as usize, v["i"].as_u64().unwrap() as usize);
                        assert_eq!(String::from_utf8(bytes).unwrap(), payload(w, i));
                        reads += 1;
                    }
                }
                reads
            });
            let writers: Vec<_> = (0..8)
                .map(|w| {
                    let dir = &dir;
                    scope.spawn(move || {
                        for i in 0..40 {
                            write_atomically(dir, LAST_PASS_FILE, payload(w, i).as_bytes())
                                .unwrap_or_else(|e| panic!("writer {w}, write {i}: {e}"));
                        }
                    })
                })
                .collect();
            for w in writers {
                w.join().unwrap();
            }
            done.store(true, Ordering::Relaxed);
            assert!(reader.join().unwrap() > 0);
        });
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, [LAST_PASS_FILE], "no temp file left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// `status` must tell "no pause" from "cannot read the pause"; the agent keeps reading
    /// the latter as no pause.
    #[test]
    fn read_tells_absent_from_unreadable() {
        let dir = scratch("read");
        assert!(Pause::read(&dir).unwrap().is_none(), "no state dir: not paused");
        assert_eq!(State::read(&dir).unwrap(), State::default());
        assert!(LastPass::read(&dir).unwrap().is_none());

        // A state "dir" that is a file: reading under it fails (ENOTDIR), like EACCES does
        // for a non-root user and the 0700 dir (tests/config_and_status.rs covers that).
        std::fs::write(&dir, b"not a dir").unwrap();
        let err = Pause::read(&dir).unwrap_err();
        assert!(err.to_string().starts_with("cannot read state file "), "{err}");
        assert!(!err.is_permission_denied());
        assert!(State::read(&dir).is_err());
        assert!(LastPass::read(&dir).is_err());
        assert_eq!(Pause::load(&dir), None, "the agent's reading is unchanged");
        assert_eq!(State::load(&dir), State::default());
        std::fs::remove_file(&dir).unwrap();

        let pause = Pause { by: "alice (uid 1000)".into(), reason: None, at: 1, pinned_sha: None, pinned_digest: None };
        pause.save(&dir).unwrap();
        assert_eq!(Pause::read(&dir).unwrap(), Some(pause));
        std::fs::write(dir.join(PAUSE_FILE), b"{oops").unwrap();
        assert_eq!(Pause::read(&dir).unwrap().unwrap().by, "unknown", "a corrupt pause file still pauses");
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
    /// The digest the pinned version was verified with ([`crate::pass::desired::Catalog`]):
    /// with signatures required, a pin without one does not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_digest: Option<String>,
}

const PAUSE_FILE: &str = "pause.json";

impl Pause {
    /// The pause, if any, for the agent: a file that cannot be read counts as no pause
    /// (logged), as it always has.
    pub fn load(dir: &Path) -> Option<Pause> {
        Pause::read(dir).unwrap_or_else(|e| {
            tracing::warn!(path = %e.path.display(), error = %e.source, "cannot read the pause file; not paused");
            None
        })
    }

    /// The pause, if any: `Ok(None)` only when there is no pause file. A corrupt one is a
    /// pause (the safe reading of an operator's intent); one that cannot be read is an error.
    pub fn read(dir: &Path) -> Result<Option<Pause>, StateReadError> {
        let Some(bytes) = read_file(dir, PAUSE_FILE)? else { return Ok(None) };
        match serde_json::from_slice(&bytes) {
            Ok(p) => Ok(Some(p)),
            Err(e) => {
                tracing::warn!(error = %e, "pause file unreadable; treating updates as paused");
                Ok(Some(Pause {
                    by: "unknown".into(),
                    reason: Some("unreadable pause file".into()),
                    at: 0,
                    pinned_sha: None,
                    pinned_digest: None,
                }))
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
///
/// Writers may race (`run` and a manual `sync` both record the last pass): each write has its
/// own temp file (`.NAME.PID.N.tmp`, created exclusively), so one writer never renames or
/// truncates another's half-written file. The last rename wins, whole.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StateError> {
    write_atomically_as(dir, name, bytes, None)
}

/// [`write_atomically`], with the file's permission bits set to `mode` whatever the umask (the
/// unit's `UMask=0077` would make every file 0600: right for state, wrong for a file another
/// user's process reads, such as node_exporter's textfile).
pub fn write_atomically_as(dir: &Path, name: &str, bytes: &[u8], mode: Option<u32>) -> Result<(), StateError> {
    use std::os::unix::fs::PermissionsExt;
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(name);
    let err = |source| StateError { path: path.clone(), source };
    std::fs::create_dir_all(dir).map_err(err)?;
    let (tmp, mut file) = loop {
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => break (tmp, file),
            // A leftover of a crashed process that had this pid: take the next number.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(err(e)),
        }
    };
    let written = file
        .write_all(bytes)
        .and_then(|()| match mode {
            // fchmod, unlike open's mode, is not masked by the umask.
            Some(mode) => file.set_permissions(std::fs::Permissions::from_mode(mode)),
            None => Ok(()),
        })
        .and_then(|()| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}

/// Unix seconds now, on AWS's clock ([`crate::runtime::clock::now`]): the times recorded here
/// (a pause, a vote, a pass) sit beside times AWS stamped.
pub fn now_unix() -> u64 {
    crate::runtime::clock::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
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
        LastPass::read(dir).ok().flatten()
    }

    /// The last pass outcomes; `Ok(None)` when none is recorded (or the file is corrupt).
    pub fn read(dir: &Path) -> Result<Option<LastPass>, StateReadError> {
        Ok(read_file(dir, LAST_PASS_FILE)?.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
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
