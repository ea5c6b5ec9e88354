//! The data plane's own keeper (switch mode): every [`CHECK_EVERY`] it points the traffic
//! rules at the proven container ([`crate::state::Proven`]) if they do not already, or nowhere
//! once that container is gone or stopped ([`switch::keep_rules`]), whatever the reconcile loop
//! is doing (a 10-minute pull, a wait for the reconcile lock, a backoff).
//!
//! It reads the proven container from the state file and its address from Docker on every
//! tick, so a flush, a dockerd restart or a new address is repaired within about two seconds,
//! and a removed container's address stops getting traffic as fast (Docker hands it to the next
//! container it starts, which nobody proved).
//! It takes no reconcile lock; rule writes are serialised with every other writer (a pass, a
//! `sync` in another process) by the rules lock ([`crate::lock::rules`]), held for the check
//! and the write only. It never chooses a container: what is proven is the passes' business.
//!
//! Cost: one state file read, one container inspect and two `iptables -S` a second.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::pass::switch::{self, Kept, Routes};

pub use crate::pass::switch::Addresses;

/// How often the rules are checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

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

/// One check ([`switch::keep_rules`]): `Ok(true)` when it had to rewrite the rules.
async fn keep(addresses: &impl Addresses, routes: &dyn Routes, settings: &Settings) -> Result<bool, String> {
    let kept = switch::keep_rules(addresses, routes, settings).await.map_err(|e| e.to_string())?;
    Ok(kept != Kept::Unchanged)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::sync::Mutex;

    use super::*;
    use crate::config::PortMapping;
    use crate::pass::switch::RouteFuture;
    use crate::state::{Proven, State};

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
        fn withhold<'a>(&'a self, _ports: &'a [PortMapping]) -> RouteFuture<'a, ()> {
            *self.to.lock().unwrap() = None;
            Box::pin(async { Ok(()) })
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
        // The proven container is gone: Docker may give its address to the next container
        // before anyone proved it, so the rules send the blog ports nowhere within a check...
        docker.0.lock().unwrap().remove("c2");
        tick().await;
        assert_eq!(*routes.to.lock().unwrap(), None, "no traffic to the gone container's address");
        // ...even when another container now holds that address.
        docker.0.lock().unwrap().insert("next".into(), a);
        tick().await;
        tick().await;
        assert_eq!(*routes.to.lock().unwrap(), None);
        // Once a container is proven again, the rules point at it.
        docker.0.lock().unwrap().insert("c3".into(), b);
        State::record_proven(&dir, proven("c3"));
        tick().await;
        assert_eq!(*routes.to.lock().unwrap(), Some(b));
        keeper.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
