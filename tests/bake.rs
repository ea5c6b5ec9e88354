//! The bake after a cut-over (`[health] bake`), end to end under `run` on the real stack: a
//! release that fails late is reverted to the very container that served before it (same
//! container id: no pull, no create), with a vote; an exit is seen from Docker's events; a
//! clean bake retires the previous container. Switch-mode tests use chains of their own
//! (removed by name at the end) and run one at a time with the other netfilter tests.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

/// Short enough for a test, long enough to see a failure 10 s after the cut-over.
const BAKE: &str = "20s";
const DEPLOY: Duration = Duration::from_secs(60);
const POLL: &str = "[reconcile]\ninterval = \"2s\"\njitter = \"0s\"\n";

/// A host in switch mode with its own chains, removed when it drops.
struct SwitchHost {
    host: Host,
    chains: String,
    _lock: std::os::unix::net::UnixListener,
}

impl SwitchHost {
    fn new(name: &str) -> SwitchHost {
        let lock = netfilter_lock();
        static N: AtomicUsize = AtomicUsize::new(0);
        let chains = format!("BAB-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
        let host = Host::new(name);
        host.write_config_baking(BAKE, &format!("{POLL}[traffic]\nmode = \"switch\"\nchains = \"{chains}\"\n"));
        SwitchHost { host, chains, _lock: lock }
    }
}

impl Drop for SwitchHost {
    fn drop(&mut self) {
        remove_labelled(&self.host.id);
        if let Err(e) = remove_chains(&self.chains) {
            eprintln!("removing chains {}: {e}", self.chains);
        }
    }
}

/// The id of the container under `name`, if any.
fn id_of(name: &str) -> Option<String> {
    inspect(name, "{{.Id}}")
}

fn previous(host: &Host) -> String {
    format!("{}-previous", host.container)
}

/// Serves `v1`, then publishes `kind` as the next release, and waits until it has taken the
/// traffic with `v1`'s container kept as `-previous`. Returns (v1's container id, v2).
fn cut_over_to(host: &Host, agent: &AgentProcess, kind: &str) -> (String, String) {
    let v1 = host.release("good");
    host.wait_deployed(&v1, DEPLOY);
    let first = id_of(&host.container).expect("v1 serves");
    let v2 = host.release(kind);
    host.wait_serves(&v2, DEPLOY);
    agent.wait_log("baking", DEPLOY);
    assert_eq!(id_of(&previous(host)).as_deref(), Some(first.as_str()), "v1's container is kept as -previous");
    (first, v2)
}

/// Waits until the very container `id` serves `sha` under the name again, alone.
fn wait_reverted(host: &Host, id: &str, sha: &str) {
    let mut seen = String::new();
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(&format!("{sha} served again by container {id}, alone"), DEPLOY, || {
            let page = host.page();
            let serves = page.as_ref().is_some_and(|(status, body)| *status == 200 && body.contains(sha));
            let under_name = id_of(&host.container);
            let containers = host.containers();
            let localnet =
                std::fs::read_to_string("/proc/sys/net/ipv4/conf/docker0/route_localnet").unwrap_or_default();
            let ip = inspect(&host.container, "{{.NetworkSettings.IPAddress}}").unwrap_or_default();
            let direct = std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "2", &format!("http://{}/", ip.trim())])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            seen = format!(
                "page {page:?}, under the name {under_name:?} at {ip} (answers {direct} there), containers {containers:?}, \
                 docker0 route_localnet {}",
                localnet.trim()
            );
            (serves && under_name.as_deref() == Some(id) && containers == [host.container.clone()]).then_some(())
        })
    }));
    assert!(found.is_ok(), "not reverted to {id}: last seen {seen}");
}

/// A release that starts answering 500 ten seconds after it started (after its proof and its
/// cut-over) is reverted within the bake to the container that served before, which kept
/// running beside it; the host votes against it (the release's fault).
#[test]
fn a_release_failing_after_its_cut_over_is_reverted_to_the_warm_previous_container() {
    let h = SwitchHost::new("bake_late500");
    let host = &h.host;
    let agent = host.start_agent(&[]);
    let (first, v2) = cut_over_to(host, &agent, "late500");
    assert_eq!(host.label("io.blog-agent.sha"), v2, "the new version serves under the name during its bake");
    assert_eq!(inspect(&previous(host), "{{.State.Running}}").as_deref(), Some("true"), "kept warm");
    let v1 = docker_ok(&["inspect", "-f", "{{index .Config.Labels \"io.blog-agent.sha\"}}", &first]);

    wait_reverted(host, &first, &v1);
    agent.wait_log("tripped its bake", DEPLOY);
    let logs = agent.logs();
    assert!(logs.contains("the health check failed 3 times in a row"), "{logs}");
    assert!(logs.contains("traffic switched back to the previous version"), "{logs}");
    assert!(logs.contains(&format!("broken {v2}")) || logs.contains("reverted"), "{logs}");
    let votes = wait_for("a vote against the reverted release", DEPLOY, || {
        Some(host.staging_votes(&v2)).filter(|v| !v.is_empty())
    });
    assert!(votes[0].to_string().contains("unhealthy-in-bake"), "{votes:?}");
    // The revert is evidence for `promote`: a record beside the votes, under this host's identity.
    let records =
        wait_for("the revert's bake record", DEPLOY, || Some(host.staging_bake_records(&v2)).filter(|r| !r.is_empty()));
    assert!(records.iter().all(|k| k.contains(&format!("bake/{v2}/reverted/"))), "{records:?}");
    assert!(!host.state_dir().join("bake.json").exists(), "the bake is over");
    // Held back here: the next passes stay on the previous version.
    agent.wait_log("held back here", DEPLOY);
    host.assert_serves(&v1);
    assert_eq!(id_of(&host.container).as_deref(), Some(first.as_str()));
}

/// A release whose process exits during its bake is reverted as soon as Docker says so, to the
/// same warm container.
#[test]
fn an_exit_during_the_bake_is_reverted_to_the_same_container() {
    let h = SwitchHost::new("bake_exit");
    let host = &h.host;
    let agent = host.start_agent(&[]);
    let (first, v2) = cut_over_to(host, &agent, "lateexit");
    let v1 = docker_ok(&["inspect", "-f", "{{index .Config.Labels \"io.blog-agent.sha\"}}", &first]);
    wait_reverted(host, &first, &v1);
    agent.wait_log("tripped its bake", DEPLOY);
    let logs = agent.logs();
    assert!(logs.contains("the container's process ended (exit code 1"), "{logs}");
    let votes = wait_for("a vote against the reverted release", DEPLOY, || {
        Some(host.staging_votes(&v2)).filter(|v| !v.is_empty())
    });
    assert!(votes[0].to_string().contains("exited-in-bake"), "{votes:?}");
}

/// A clean bake retires the previous container (publish mode: it was kept stopped); the new
/// version stays.
#[test]
fn a_clean_bake_retires_the_previous_container() {
    let host = Host::new("bake_clean");
    host.write_config_baking("5s", POLL);
    let agent = host.start_agent(&[]);
    let v1 = host.release("good");
    host.wait_deployed(&v1, DEPLOY);
    let v2 = host.release("good");
    host.wait_serves(&v2, DEPLOY);
    agent.wait_log("baking", DEPLOY);
    assert_eq!(inspect(&previous(&host), "{{.State.Running}}").as_deref(), Some("false"), "kept stopped");
    let status = host.agent(&["--env", "staging", "status"]);
    assert!(status.stdout.contains("baking") || status.stdout.contains("bake"), "{}", status.output());
    host.wait_deployed(&v2, DEPLOY);
    agent.wait_log("baked", DEPLOY);
    assert!(!host.state_dir().join("bake.json").exists(), "the bake is over");
    assert!(host.staging_votes(&v2).is_empty());
    let records =
        wait_for("the bake record", DEPLOY, || Some(host.staging_bake_records(&v2)).filter(|r| !r.is_empty()));
    assert!(records.iter().all(|k| k.contains(&format!("bake/{v2}/baked/"))), "{records:?}");
}

/// Publish mode: the kept container is started again on a late failure.
#[test]
fn publish_mode_starts_the_kept_container_again_on_a_late_failure() {
    let host = Host::new("bake_publish");
    host.write_config_baking(BAKE, POLL);
    let agent = host.start_agent(&[]);
    let (first, _v2) = cut_over_to(&host, &agent, "late500");
    assert_eq!(inspect(&previous(&host), "{{.State.Running}}").as_deref(), Some("false"), "kept stopped");
    let v1 = docker_ok(&["inspect", "-f", "{{index .Config.Labels \"io.blog-agent.sha\"}}", &first]);
    wait_reverted(&host, &first, &v1);
    agent.wait_log("tripped its bake", DEPLOY);
}

/// An agent killed mid-bake and started again resumes the bake with the container it kept,
/// and still reverts to it.
#[test]
fn an_agent_started_again_mid_bake_resumes_it_with_the_kept_container() {
    let h = SwitchHost::new("bake_resume");
    let host = &h.host;
    let mut agent = host.start_agent(&[]);
    let (first, v2) = cut_over_to(host, &agent, "late500");
    agent.signal("KILL");
    agent.wait_exit(Duration::from_secs(5));
    assert!(host.state_dir().join("bake.json").exists(), "the bake is recorded for the next start");
    host.assert_serves(&v2);
    let again = host.start_agent(&[]);
    again.wait_log("resuming the bake", DEPLOY);
    let v1 = docker_ok(&["inspect", "-f", "{{index .Config.Labels \"io.blog-agent.sha\"}}", &first]);
    wait_reverted(host, &first, &v1);
    again.wait_log("tripped its bake", DEPLOY);
}

/// `sync` bakes what it cut over to before it returns: after a clean bake only the new
/// container is left.
#[test]
fn sync_bakes_before_it_returns() {
    let host = Host::new("bake_sync");
    host.write_config_baking("3s", "");
    host.release("good");
    assert_eq!(host.sync().code, 0);
    let v2 = host.release("good");
    let run = host.sync();
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains("baking"), "{}", run.output());
    host.assert_serves(&v2);
    host.assert_only_the_serving_container();
    assert!(!host.state_dir().join("bake.json").exists(), "the bake is over");
}
