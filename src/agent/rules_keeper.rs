//! The data plane's own keeper (switch mode): every [`CHECK_EVERY`] it points the traffic
//! rules at the proven container ([`crate::state::Proven`]) if they do not already, whatever
//! the reconcile loop is doing (a 10-minute pull, a wait for the reconcile lock, a backoff).
//!
//! It reads the proven container from the state file and its address from Docker on every
//! tick, so a flush, a dockerd restart or a new address is repaired within about two seconds.
//! It takes no reconcile lock; rule writes are serialised with every other writer (a pass, a
//! `sync` in another process) by the rules lock ([`crate::lock::rules`]), held for the check
//! and the write only. It never chooses a container: what is proven is the passes' business.
//!
//! Cost: one state file read, one container inspect and two `iptables -S` a second.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::outside::docker::Engine;
use crate::pass::switch::{self, Routes};
use crate::state::State;

/// How often the rules are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Starts the keeper. Abort the handle to stop it (on SIGHUP a new one takes the new settings).
pub fn start(engine: Engine, routes: Arc<dyn Routes>, settings: Settings) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_error: Option<String> = None;
        loop {
            tick.tick().await;
            let result = keep(&engine, routes.as_ref(), &settings).await;
            match result {
                Ok(_) => {}
                Err(e) if last_error.as_deref() != Some(e.as_str()) => {
                    tracing::warn!("cannot keep the traffic rules: {e}");
                    last_error = Some(e);
                    continue;
                }
                Err(_) => continue,
            }
            last_error = None;
        }
    })
}

/// One check: `Ok(true)` when it had to rewrite the rules.
async fn keep(engine: &Engine, routes: &dyn Routes, settings: &Settings) -> Result<bool, String> {
    let dir = &settings.agent.state_dir;
    let _lock = crate::lock::rules(dir).await.map_err(|e| e.to_string())?;
    let Some(proven) = State::load(dir).proven else { return Ok(false) };
    let container = match engine.container(&proven.container_id).await {
        Ok(Some(c)) if c.running => c,
        // Gone or stopped: the loop's Docker events deal with that; nothing to point at.
        Ok(_) => return Ok(false),
        Err(e) => return Err(e.to_string()),
    };
    let Some(to) = switch::address(&container) else { return Ok(false) };
    let ports = &settings.container.ports;
    if routes.in_place(ports, to).await.map_err(|e| e.to_string())? {
        return Ok(false);
    }
    tracing::warn!(
        container = %container.name, to = %to,
        "the traffic rules were changed outside blog-agent; re-asserting them for the proven container {}",
        container.name
    );
    routes.point(ports, to).await.map_err(|e| e.to_string())?;
    Ok(true)
}
