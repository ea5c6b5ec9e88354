//! Unix signals: SIGTERM and SIGINT request shutdown; SIGHUP requests a config reload.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::runtime::shutdown::Shutdown;

pub struct Signals {
    pub shutdown: Shutdown,
    /// One message per SIGHUP.
    pub reload: mpsc::UnboundedReceiver<()>,
}

/// Installs the handlers on the current runtime.
pub fn install() -> std::io::Result<Signals> {
    let (trigger, shutdown) = Shutdown::new();
    let (reload_tx, reload) = mpsc::unbounded_channel();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: stopping"); trigger.trigger(); }
                _ = int.recv() => { tracing::info!("SIGINT: stopping"); trigger.trigger(); }
                _ = hup.recv() => { tracing::info!("SIGHUP: reloading configuration"); let _ = reload_tx.send(()); }
            }
        }
    });
    Ok(Signals { shutdown, reload })
}
