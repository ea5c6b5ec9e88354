//! dockerd restarted under a running agent. It disturbs every container on the machine, so
//! `scripts/test.sh` runs this binary on its own, after the others.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn docker_answers() -> bool {
    Command::new("docker").arg("info").output().map(|o| o.status.success()).unwrap_or(false)
}

#[test]
fn agent_reconnects_after_dockerd_restarts() {
    let host = Host::new("dockerd_restart");
    // Only Docker events can bring the container back within the test's deadlines.
    host.write_config("[reconcile]\ninterval = \"5m\"\njitter = \"0s\"\n");
    let v1 = host.release("good");
    let mut agent = host.start_agent(&[]);
    host.wait_deployed(&v1, Duration::from_secs(30));

    let status = Command::new("pkill").args(["-TERM", "-x", "dockerd"]).status().unwrap();
    assert!(status.success(), "no dockerd process to restart");
    let dockerd_running = || Command::new("pgrep").args(["-x", "dockerd"]).output().unwrap().status.success();
    wait_for("dockerd to exit", Duration::from_secs(60), || (!docker_answers() && !dockerd_running()).then_some(()));
    let up = Command::new("bash").arg(repo_root().join("scripts/stack-up.sh")).output().unwrap();
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));

    agent.wait_log("Docker is back", Duration::from_secs(60));
    agent.assert_alive();
    host.wait_deployed(&v1, Duration::from_secs(30));
    // Events flow again: a removed container is repaired long before the 5 minute poll.
    docker_ok(&["rm", "-f", &host.container]);
    host.wait_deployed(&v1, Duration::from_secs(15));
}
