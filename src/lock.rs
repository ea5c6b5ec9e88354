//! The reconcile lock: one file in the state dir, held with `flock` for a whole pass, so a
//! `blog-agent sync` typed during an incident and the `run` service never race.
//!
//! The kernel drops the lock when the process dies, so a crash never leaves a stale lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open lock file {}: {source}: check [agent] state_dir and that blog-agent runs as root", path.display())]
    Open { path: PathBuf, source: std::io::Error },
    #[error("another blog-agent holds {} and did not finish within {secs} s: wait for it, or check `ps` for a stuck one", path.display())]
    Busy { path: PathBuf, secs: u64 },
}

/// Held until dropped.
#[derive(Debug)]
pub struct ReconcileLock {
    _file: File,
}

/// Polling interval while another process holds the lock.
const POLL: Duration = Duration::from_millis(100);

/// Serialises writes of the traffic rules and of the proven container between every process
/// and task that makes them (a pass, `sync`, the rules keeper), without the reconcile lock: a
/// rule repair must never wait for a pull. Held for milliseconds.
#[derive(Debug)]
pub struct RulesLock {
    _file: File,
}

/// Longest a rule writer waits for another (each holds it for one iptables-restore).
const RULES_WAIT: Duration = Duration::from_secs(10);

/// Takes the rules lock in `state_dir`.
pub async fn rules(state_dir: &Path) -> Result<RulesLock, LockError> {
    let path = state_dir.join("rules.lock");
    let open_err = |source| LockError::Open { path: path.clone(), source };
    std::fs::create_dir_all(state_dir).map_err(open_err)?;
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(open_err)?;
    let deadline = Instant::now() + RULES_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(RulesLock { _file: file }),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            Err(TryLockError::WouldBlock) => return Err(LockError::Busy { path, secs: RULES_WAIT.as_secs() }),
            Err(TryLockError::Error(e)) => return Err(open_err(e)),
        }
    }
}

/// Takes the lock in `state_dir`, waiting up to `wait`. Creates the directory if needed.
pub async fn acquire(state_dir: &Path, wait: Duration) -> Result<ReconcileLock, LockError> {
    let path = state_dir.join("reconcile.lock");
    let open_err = |source| LockError::Open { path: path.clone(), source };
    std::fs::create_dir_all(state_dir).map_err(open_err)?;
    let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(open_err)?;
    let deadline = Instant::now() + wait;
    let mut announced = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(ReconcileLock { _file: file }),
            Err(TryLockError::WouldBlock) => {
                if Instant::now() >= deadline {
                    return Err(LockError::Busy { path, secs: wait.as_secs() });
                }
                if !announced {
                    tracing::info!(lock = %path.display(), "another blog-agent is reconciling; waiting for it");
                    announced = true;
                }
                tokio::time::sleep(POLL).await;
            }
            Err(TryLockError::Error(e)) => return Err(open_err(e)),
        }
    }
}
