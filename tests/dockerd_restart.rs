//! dockerd restarted under a running agent. It disturbs every container on the machine, so
//! `scripts/test.sh` runs this binary on its own, after the others.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Removes a switch-mode host's chains by name when the test ends, however it ends.
struct RemoveChains(String);

impl Drop for RemoveChains {
    fn drop(&mut self) {
        if let Err(e) = remove_chains(&self.0) {
            eprintln!("removing chains {}: {e}", self.0);
        }
    }
}

fn docker_answers() -> bool {
    Command::new("docker").arg("info").output().map(|o| o.status.success()).unwrap_or(false)
}

#[test]
fn agent_reconnects_after_dockerd_restarts() {
    let _lock = netfilter_lock();
    let host = Host::new("dockerd_restart");
    // Only Docker events can bring the container back within the test's deadlines.
    host.write_config("[reconcile]\ninterval = \"5m\"\njitter = \"0s\"\n");
    let v1 = host.release("good");
    let mut agent = host.start_agent(&[]);
    host.wait_deployed(&v1, Duration::from_secs(30));
    // A second host in switch mode through the same restart: dockerd rebuilds its own chains
    // and restarts the container (maybe at a new address); the rules must follow.
    let chains = format!("BAS-DR-{}", std::process::id());
    let _cleanup = RemoveChains(chains.clone());
    let sw = Host::new("dockerd_restart_sw");
    sw.write_config(&format!(
        "[reconcile]\ninterval = \"5m\"\njitter = \"0s\"\n[traffic]\nmode = \"switch\"\nchains = \"{chains}\"\n"
    ));
    let s1 = sw.release("good");
    let sw_agent = sw.start_agent(&[]);
    sw.wait_deployed(&s1, Duration::from_secs(30));

    let status = Command::new("pkill").args(["-TERM", "-x", "dockerd"]).status().unwrap();
    assert!(status.success(), "no dockerd process to restart");
    let dockerd_running = || Command::new("pgrep").args(["-x", "dockerd"]).output().unwrap().status.success();
    wait_for("dockerd to exit", Duration::from_secs(60), || (!docker_answers() && !dockerd_running()).then_some(()));
    let up = Command::new("bash").arg(repo_root().join("scripts/stack-up.sh")).output().unwrap();
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));

    agent.wait_log("Docker is back", Duration::from_secs(60));
    agent.assert_alive();
    host.wait_deployed(&v1, Duration::from_secs(30));
    sw_agent.wait_log("Docker is back", Duration::from_secs(60));
    sw.wait_deployed(&s1, Duration::from_secs(30));
    let ip = docker_ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &sw.container]);
    let rules =
        Command::new("iptables").args(["-w", "5", "-t", "nat", "-S", &format!("{chains}-DNAT")]).output().unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(rules.contains(&format!("--to-destination {ip}:80")), "rules follow the container to {ip}: {rules}");
    // Events flow again: a removed container is repaired long before the 5 minute poll.
    docker_ok(&["rm", "-f", &host.container]);
    host.wait_deployed(&v1, Duration::from_secs(15));
}
