//! Docker events on the managed container, turned into wake-ups for the loop.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::outside::docker::Engine;
use crate::runtime::backoff::Backoff;

/// Backoff while dockerd is away: first retry, and the cap.
const RECONNECT_FIRST: Duration = Duration::from_millis(500);
const RECONNECT_CAP: Duration = Duration::from_secs(30);

/// Subscribes to Docker events on the container named `name` and sends a trigger for each.
/// When dockerd goes away (restart, upgrade) it waits with backoff until it answers again,
/// re-subscribes, and triggers a pass, since events may have been missed meanwhile.
pub fn watch(engine: Engine, name: String, triggers: mpsc::Sender<&'static str>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_CAP);
        let mut lost = false;
        loop {
            if engine.ping().await.is_ok() {
                if lost {
                    tracing::info!("Docker is back; re-subscribed to container events");
                    let _ = triggers.try_send("docker reconnected");
                }
                backoff.reset();
                let mut stream = Box::pin(engine.container_events(&name));
                let why = loop {
                    match stream.next().await {
                        Some(Ok(action)) => {
                            tracing::debug!(container = %name, %action, "container event");
                            let _ = triggers.try_send("container event");
                        }
                        Some(Err(e)) => break e.to_string(),
                        None => break "the event stream ended".to_owned(),
                    }
                };
                tracing::warn!(reason = %why, "lost the Docker event stream; reconnecting");
                lost = true;
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    })
}
