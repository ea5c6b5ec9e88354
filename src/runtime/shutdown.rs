//! A shutdown request shared by everything that must stop promptly on SIGTERM/SIGINT.
//!
//! Long steps (a pull, a health probe) race against [`Shutdown::requested`] so the agent stops
//! within seconds, mid-pull included. Steps that must not be interrupted half-way (the few API
//! calls of a cut-over) simply do not look at it.

use tokio::sync::watch;

/// Cheap to clone; every clone sees the same request.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// The sending side, held by the signal handler.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown { rx })
    }

    pub fn is_requested(&self) -> bool {
        *self.rx.borrow()
    }

    /// Runs `step` unless shutdown is requested first; then `step` is dropped. Only for steps
    /// that may stop half-way: reads, waits, a pull, a probe.
    pub async fn race<T>(&self, step: impl std::future::Future<Output = T>) -> Result<T, Cancelled> {
        tokio::select! {
            biased;
            _ = self.requested() => Err(Cancelled),
            out = step => Ok(out),
        }
    }

    /// Resolves once shutdown is requested; never, if the trigger is dropped unused.
    pub async fn requested(&self) {
        let mut rx = self.rx.clone();
        if rx.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Returned by a step that stopped because shutdown was requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stopped: shutdown requested")]
pub struct Cancelled;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn trigger_wakes_every_clone() {
        let (trigger, shutdown) = Shutdown::new();
        let other = shutdown.clone();
        assert!(!other.is_requested());
        trigger.trigger();
        shutdown.requested().await;
        other.requested().await;
        assert!(other.is_requested());
    }
}
