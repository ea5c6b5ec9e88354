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

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::outside::docker::Engine;
use crate::pass::switch::{self, Routes};
use crate::state::State;

/// How often the rules are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Where a container is now: Docker, or a fake in the keeper's unit tests.
pub trait Addresses: Send + Sync + 'static {
    /// The bridge address of running container `id`; `None` when it is gone or stopped.
    fn address_of(&self, id: &str) -> impl std::future::Future<Output = Result<Option<Ipv4Addr>, String>> + Send;
}

impl Addresses for Engine {
    async fn address_of(&self, id: &str) -> Result<Option<Ipv4Addr>, String> {
        match self.container(id).await {
            Ok(Some(c)) if c.running => Ok(switch::address(&c)),
            Ok(_) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Starts the keeper. Abort the handle to stop it (on SIGHUP a new one takes the new settings).
pub fn start(engine: impl Addresses, routes: Arc<dyn Routes>, settings: Settings) -> JoinHandle<()> {
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
async fn keep(addresses: &impl Addresses, routes: &dyn Routes, settings: &Settings) -> Result<bool, String> {
    let dir = &settings.agent.state_dir;
    let _lock = crate::lock::rules(dir).await.map_err(|e| e.to_string())?;
    let Some(proven) = State::load(dir).proven else { return Ok(false) };
    // Gone or stopped: the loop's Docker events deal with that; nothing to point at.
    let Some(to) = addresses.address_of(&proven.container_id).await? else { return Ok(false) };
    let ports = &settings.container.ports;
    if routes.in_place(ports, to).await.map_err(|e| e.to_string())? {
        return Ok(false);
    }
    tracing::warn!(
        container = %proven.container_id, to = %to,
        "the traffic rules were changed outside blog-agent; re-asserting them for the proven container {}",
        &proven.container_id[..proven.container_id.len().min(12)]
    );
    routes.point(ports, to).await.map_err(|e| e.to_string())?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::config::PortMapping;
    use crate::pass::switch::RouteFuture;
    use crate::state::Proven;

    /// Rules in memory: where they point, and how many writes.
    #[derive(Default)]
    struct MemoryRoutes {
        to: Mutex<Option<Ipv4Addr>>,
        writes: Mutex<Vec<Ipv4Addr>>,
    }

    impl Routes for MemoryRoutes {
        fn point<'a>(&'a self, _ports: &'a [PortMapping], to: Ipv4Addr) -> RouteFuture<'a, ()> {
            *self.to.lock().unwrap() = Some(to);
            self.writes.lock().unwrap().push(to);
            Box::pin(async { Ok(()) })
        }
        fn in_place<'a>(&'a self, _ports: &'a [PortMapping], to: Ipv4Addr) -> RouteFuture<'a, bool> {
            let here = *self.to.lock().unwrap() == Some(to);
            Box::pin(async move { Ok(here) })
        }
        fn current(&self) -> RouteFuture<'_, Option<Ipv4Addr>> {
            let to = *self.to.lock().unwrap();
            Box::pin(async move { Ok(to) })
        }
        fn remove(&self) -> RouteFuture<'_, ()> {
            *self.to.lock().unwrap() = None;
            Box::pin(async { Ok(()) })
        }
    }

    /// Containers' addresses, set by the test.
    #[derive(Clone, Default)]
    struct FakeDocker(Arc<Mutex<std::collections::HashMap<String, Ipv4Addr>>>);

    impl Addresses for FakeDocker {
        async fn address_of(&self, id: &str) -> Result<Option<Ipv4Addr>, String> {
            Ok(self.0.lock().unwrap().get(id).copied())
        }
    }

    fn settings(dir: &std::path::Path) -> Settings {
        let text = format!(
            "[release]\nbucket = \"b\"\n[image]\nrepository = \"123456789012.dkr.ecr.us-east-1.amazonaws.com/blog\"\n\
             [agent]\nstate_dir = \"{}\"\n",
            dir.display()
        );
        Settings::parse(&text, std::path::Path::new("/etc/blog-agent/config.toml")).unwrap()
    }

    /// Ticks the paused clock past one check, letting the keeper's task run.
    async fn tick() {
        tokio::time::sleep(CHECK_EVERY + Duration::from_millis(10)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_rules_follow_the_proven_container_within_a_check_whatever_changes_them() {
        let dir = std::env::temp_dir().join(format!("blog-agent-keeper-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (a, b) = (Ipv4Addr::new(172, 17, 0, 2), Ipv4Addr::new(172, 17, 0, 9));
        let docker = FakeDocker::default();
        docker.0.lock().unwrap().insert("c1".into(), a);
        let routes = Arc::new(MemoryRoutes::default());
        let keeper = start(docker.clone(), routes.clone(), settings(&dir));

        // Nothing proven yet: the keeper points nowhere.
        tick().await;
        assert!(routes.writes.lock().unwrap().is_empty());
        let proven = |id: &str| Proven { container_id: id.into(), sha: "aaaaaaa".into(), digest: "d".into(), at: 1 };
        State::record_proven(&dir, proven("c1"));
        tick().await;
        assert_eq!(*routes.writes.lock().unwrap(), [a], "pointed at the proven container");
        // Idle: nothing rewritten.
        tick().await;
        tick().await;
        assert_eq!(routes.writes.lock().unwrap().len(), 1);
        // Someone flushes the rules: back within one check.
        routes.remove().await.unwrap();
        tick().await;
        assert_eq!(*routes.to.lock().unwrap(), Some(a));
        // A dockerd restart gives the container a new address: the rules follow it.
        docker.0.lock().unwrap().insert("c1".into(), b);
        tick().await;
        assert_eq!(*routes.to.lock().unwrap(), Some(b));
        // Another container is proven (a pass switched): the keeper follows the record, and an
        // unproven container never gets traffic from it.
        docker.0.lock().unwrap().insert("unproven".into(), Ipv4Addr::new(172, 17, 0, 66));
        docker.0.lock().unwrap().insert("c2".into(), a);
        State::record_proven(&dir, proven("c2"));
        tick().await;
        assert_eq!(*routes.to.lock().unwrap(), Some(a));
        assert!(!routes.writes.lock().unwrap().contains(&Ipv4Addr::new(172, 17, 0, 66)));
        // The proven container is gone: nothing to point at, the rules are left alone.
        docker.0.lock().unwrap().remove("c2");
        let writes = routes.writes.lock().unwrap().len();
        tick().await;
        assert_eq!(routes.writes.lock().unwrap().len(), writes);
        keeper.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
