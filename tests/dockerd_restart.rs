//! dockerd restarted under a running agent. It disturbs every container on the machine, so
//! `scripts/test.sh` runs this binary on its own, after the others; its tests take the
//! netfilter lock, so they also run one at a time among themselves.
//!
//! dockerd is stopped with SIGTERM to its pid (its pid file), and the next one started only once
//! it has exited, through `scripts/stack-up.sh` (`BLOG_AGENT_DOCKERD_FLAGS` for
//! `--live-restore`). Every test leaves the plain dockerd the rest of the suite expects.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

const DOCKER_PID_FILE: &str = "/var/run/docker.pid";

fn docker_answers() -> bool {
    Command::new("docker").arg("info").output().map(|o| o.status.success()).unwrap_or(false)
}

/// The running dockerd's pid, from its pid file.
fn dockerd_pid() -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(DOCKER_PID_FILE).ok()?.trim().parse().ok()?;
    process_alive(pid).then_some(pid)
}

/// Alive, and not a zombie waiting to be reaped.
fn process_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    state.is_some_and(|s| s != "Z" && s != "X")
}

fn live_restore_on() -> bool {
    docker_ok(&["info", "-f", "{{.LiveRestoreEnabled}}"]) == "true"
}

/// Stops dockerd with SIGTERM to its pid and waits until it has exited (without live-restore it
/// stops every container first, each within its grace).
fn stop_dockerd() {
    let pid = dockerd_pid().expect("a running dockerd (its pid file)");
    let status = Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(status.success(), "kill -TERM {pid}");
    wait_for("dockerd to exit", Duration::from_secs(90), || (!process_alive(pid) && !docker_answers()).then_some(()));
}

/// Starts dockerd with `flags` (empty: as the suite runs it) through scripts/stack-up.sh.
fn start_dockerd(flags: &str) {
    let up = Command::new("bash")
        .arg(repo_root().join("scripts/stack-up.sh"))
        .env("BLOG_AGENT_DOCKERD_FLAGS", flags)
        .output()
        .unwrap();
    assert!(up.status.success(), "stack-up.sh: {}", String::from_utf8_lossy(&up.stderr));
}

fn restart_dockerd(flags: &str) {
    stop_dockerd();
    start_dockerd(flags);
}

/// Puts the plain dockerd back when dropped, however the test ends. Declare it first, so it
/// drops last: after the test's hosts have removed their containers.
struct PlainDockerdAtEnd;

impl Drop for PlainDockerdAtEnd {
    fn drop(&mut self) {
        let plain = docker_answers()
            && !Command::new("docker")
                .args(["info", "-f", "{{.LiveRestoreEnabled}}"])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "true");
        if plain {
            return;
        }
        if dockerd_pid().is_some() {
            stop_dockerd();
        }
        start_dockerd("");
    }
}

#[test]
fn agent_reconnects_after_dockerd_restarts() {
    let _lock = netfilter_lock();
    let _plain = PlainDockerdAtEnd;
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

    restart_dockerd("");

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

/// Hits 127.0.0.1:`port` every 10 ms until `stop`; returns (requests, failures).
fn load(port: u16, stop: Arc<AtomicBool>, sent: Arc<AtomicUsize>) -> std::thread::JoinHandle<(usize, usize)> {
    std::thread::spawn(move || {
        let mut failed = 0;
        // Bounded: 60 s of requests at most, whatever the test does.
        while !stop.load(Ordering::SeqCst) && sent.load(Ordering::SeqCst) < 6000 {
            sent.fetch_add(1, Ordering::SeqCst);
            if !matches!(http_get(port, "/"), Some((200, _))) {
                failed += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (sent.load(Ordering::SeqCst), failed)
    })
}

/// What must not change across the restart: the container (id, start time, restarts) and the
/// rules.
fn container_facts(name: &str) -> String {
    docker_ok(&["inspect", "-f", "{{.Id}} {{.State.Running}} {{.State.StartedAt}} {{.RestartCount}}", name])
}

fn last_success(host: &Host) -> u64 {
    let text = std::fs::read_to_string(host.state_dir().join("last-pass.json")).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text).ok().and_then(|v| v["last_success"].as_u64()).unwrap_or(0)
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Issue 19, item 3: with dockerd's live-restore, a Docker upgrade or restart under `run` in
/// switch mode drops no request: the container keeps running, the rules (kernel state) keep
/// sending it traffic, and the agent reconnects (events, inspections) without taking the
/// restart for drift: no redeploy, no container restart, no rule change, converged afterwards.
#[test]
fn with_live_restore_a_dockerd_restart_drops_no_request_and_changes_nothing() {
    let _lock = netfilter_lock();
    let _plain = PlainDockerdAtEnd;
    restart_dockerd("--live-restore");
    assert!(live_restore_on(), "dockerd runs with --live-restore");

    let chains = format!("BAS-LR-{}", std::process::id());
    let _cleanup = RemoveChains(chains.clone());
    let host = Host::new("dockerd_live_restore");
    // A long poll: anything the agent does after the restart comes from reconnecting.
    host.write_config(&format!(
        "[reconcile]\ninterval = \"5m\"\njitter = \"0s\"\n[traffic]\nmode = \"switch\"\nchains = \"{chains}\"\n"
    ));
    let v1 = host.release("good");
    let mut agent = host.start_agent(&[]);
    host.wait_deployed(&v1, Duration::from_secs(30));
    let check = host.agent(&["--env", "staging", "check"]);
    assert!(check.stdout.contains("ok   docker live-restore: on"), "{}", check.output());

    let dnat = || {
        let out = Command::new("iptables").args(["-w", "5", "-t", "nat", "-S", &format!("{chains}-DNAT")]).output();
        String::from_utf8_lossy(&out.unwrap().stdout).into_owned()
    };
    let rules = dnat();
    let facts = container_facts(&host.container);
    assert!(rules.contains("-j DNAT"), "{rules}");

    let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let client = load(host.port, stop.clone(), sent.clone());
    wait_for("the client's first requests", Duration::from_secs(10), || {
        (sent.load(Ordering::SeqCst) >= 20).then_some(())
    });
    let log_before = agent.logs().len();
    let stopped = Instant::now();
    restart_dockerd("--live-restore");
    let back_after = stopped.elapsed();
    let back_at = now_unix();

    agent.wait_log("Docker is back", Duration::from_secs(60));
    wait_for("a converged pass after the restart", Duration::from_secs(60), || {
        (last_success(&host) >= back_at).then_some(())
    });
    // A little traffic after the agent's reconnect pass too.
    let after = sent.load(Ordering::SeqCst);
    wait_for("requests after the reconnect", Duration::from_secs(10), || {
        (sent.load(Ordering::SeqCst) >= after + 50).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    let (requests, failed) = client.join().unwrap();
    eprintln!("dockerd restarted in {back_after:?}; {requests} requests, {failed} failed");

    let logs = agent.logs();
    let since = &logs[log_before.min(logs.len())..];
    assert_eq!(failed, 0, "{failed} of {requests} requests failed across the dockerd restart\n{since}");
    assert_eq!(container_facts(&host.container), facts, "the same container, never restarted");
    assert_eq!(dnat(), rules, "the rules unchanged");
    for drift in ["deploying", "switched traffic", "re-asserting", "restarted the stopped container", "probing it"] {
        assert!(!since.contains(drift), "the restart was taken for drift ({drift:?}):\n{since}");
    }
    agent.assert_alive();
    host.assert_serves(&v1);
}
