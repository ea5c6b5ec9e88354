//! `blog-agent run`: the service. Reconciles now, then keeps the host converged until SIGTERM.

use std::time::Duration;

use clap::Args;

use super::{exit, Cli, Failure};
use crate::agent::Agent;
use crate::outside::docker::Engine;
use crate::pass::Services;
use crate::runtime::backoff::Backoff;
use crate::runtime::shutdown::Shutdown;
use crate::runtime::systemd::Notifier;

#[derive(Debug, Args)]
pub struct RunArgs {}

pub async fn run(cli: &Cli, _args: &RunArgs) -> Result<(), Failure> {
    let settings = super::load_settings(cli)?;
    super::check_env_flag(cli, &settings)?;
    let signals = crate::runtime::signals::install()
        .map_err(|e| Failure { code: exit::FAILED, message: format!("cannot install signal handlers: {e}") })?;
    let notifier = Notifier::from_env();
    let Some(engine) = wait_for_docker(&signals.shutdown, &notifier).await else {
        notifier.stopping();
        return Ok(());
    };
    // The region is resolved on the first S3 or ECR call, and again while it is unknown.
    // The loop retries a pass; a call AWS asked to wait for fails at once meanwhile.
    crate::outside::aws::loop_owns_retries();
    let services = Services::connect(&settings, engine).await;
    tracing::info!(config = %cli.config.display(), interval = ?settings.reconcile.interval, "blog-agent running");
    Agent::run(settings, cli.config.clone(), cli.environment.clone(), services, notifier, signals).await;
    Ok(())
}

/// At boot dockerd may start after us: retry with backoff (pinging the watchdog meanwhile).
/// `None` when shutdown came first.
async fn wait_for_docker(shutdown: &Shutdown, notifier: &Notifier) -> Option<Engine> {
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        match Engine::connect().await {
            Ok(engine) => return Some(engine),
            Err(e) => {
                if backoff.attempts() == 0 {
                    tracing::warn!("{e}; waiting for it");
                    notifier.status(&format!("waiting for Docker: {e}"));
                    // Not converged, but boot must not wait on us.
                    notifier.ready();
                }
                notifier.watchdog();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = shutdown.requested() => return None,
        }
    }
}
