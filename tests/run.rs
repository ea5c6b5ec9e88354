//! `blog-agent run` as a child process against the real local stack: drift repair, outages,
//! crash loops, signals and the systemd notify protocol. Deadlines and polling, no fixed
//! sleeps. Run `scripts/stack-up.sh` first (`make test` does).

mod common;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use common::imds::FakeImds;
use common::services::{CountingProxy, HangingRegistry, PrivateMoto, PrivateRegistry};
use common::*;

const FAST: &str = "[reconcile]\ninterval = \"1s\"\njitter = \"0s\"\n";
/// An interval no test waits for: anything that happens sooner was driven by Docker events.
const SLOW: &str = "[reconcile]\ninterval = \"5m\"\njitter = \"0s\"\n";
const SERVE: Duration = Duration::from_secs(30);
/// FAST, where one host's vote halts a release (as before votes): a test of one host shows
/// whether it voted, and a vote that must not be written would show at once.
const FAST_ONE_VOTE: &str = "[reconcile]\ninterval = \"1s\"\njitter = \"0s\"\n[rollout]\nhalt_after = 1\n";

fn assert_keeps_serving(host: &Host, sha: &str, window: Duration) {
    let end = Instant::now() + window;
    while Instant::now() < end {
        host.assert_serves(sha);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn new_sha_in_s3_is_served_within_an_interval() {
    let host = Host::new("run_new_sha");
    host.write_config(FAST);
    let v1 = host.release("good");
    let mut agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);
    let v2 = host.release("good");
    host.wait_deployed(&v2, SERVE);
    agent.assert_alive();
    host.assert_only_the_serving_container();
}

#[test]
fn removed_container_is_back_within_seconds() {
    let host = Host::new("run_rm_f");
    host.write_config(SLOW);
    let v1 = host.release("good");
    let mut agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);
    docker_ok(&["rm", "-f", &host.container]);
    host.wait_deployed(&v1, Duration::from_secs(10));
    agent.wait_log("container event", Duration::from_secs(5));
    agent.assert_alive();
}

#[test]
fn stopped_container_is_started_again() {
    let host = Host::new("run_stop");
    host.write_config(SLOW);
    let v1 = host.release("good");
    let _agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);
    let (id, ..) = host.container_state().unwrap();
    docker_ok(&["stop", "-t", "1", &host.container]);
    wait_for("container running again", Duration::from_secs(15), || {
        host.container_state().filter(|(i, running, _)| *i == id && *running).map(drop)
    });
    host.wait_deployed(&v1, Duration::from_secs(5));
}

/// Deploys a release with `run`, then stops the agent with `signal`: it must exit 0 and leave
/// the blog serving. Returns the version it serves.
fn deploy_then_stop_with(host: &Host, signal: &str) -> String {
    let v1 = host.release("good");
    let mut agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);
    agent.stop_with(signal);
    host.assert_serves(&v1);
    v1
}

#[test]
fn sigterm_leaves_the_site_up_and_a_foreign_container_is_replaced() {
    let host = Host::new("run_foreign");
    host.write_config(SLOW);
    let v1 = deploy_then_stop_with(&host, "TERM");

    // Someone runs the blog by hand under the agent's name: same image, none of our labels.
    docker_ok(&["rm", "-f", &host.container]);
    let port = format!("127.0.0.1:{}:80", host.port);
    let label = format!("{TEST_LABEL}={}", host.id);
    docker_ok(&["pull", "-q", &host.image(&v1)]);
    docker_ok(&["run", "-d", "--name", &host.container, "-p", &port, "--label", &label, &host.image(&v1)]);
    assert_eq!(host.label("io.blog-agent.managed"), "");
    let _agent = host.start_agent(&[]);
    wait_for("foreign container replaced", SERVE, || (host.label("io.blog-agent.managed") == "true").then_some(()));
    host.wait_deployed(&v1, SERVE);
}

/// A SIGHUP that renames `[container] name` (publish mode: the old container holds the host
/// port) moves the running container to the new name instead of orphaning it: no redeploy,
/// no second container, the site never stops.
#[test]
fn sighup_that_renames_the_container_moves_it_instead_of_orphaning_it() {
    let mut host = Host::new("run_rename");
    host.write_config(SLOW);
    let v1 = host.release("good");
    let mut agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);
    let (id, _, _) = host.container_state().unwrap();

    let old = host.container.clone();
    host.container = format!("{old}-renamed");
    host.write_config(SLOW);
    agent.signal("HUP");
    host.wait_deployed(&v1, SERVE);
    assert_eq!(host.container_state().unwrap().0, id, "the same container, renamed");
    assert!(!exists(&old), "{old} is gone");
    assert!(agent.logs().contains(&format!("renamed {old} to {}", host.container)), "{}", agent.logs());
    agent.assert_alive();
}

#[test]
fn sighup_applies_a_port_change_and_ignores_a_broken_config() {
    let mut host = Host::new("run_sighup");
    host.write_config(SLOW);
    let v1 = host.release("good");
    let mut agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);

    std::fs::write(&host.config, "[container]\nnmae = \"typo\"\n").unwrap();
    agent.signal("HUP");
    agent.wait_log("keeping the previous one", Duration::from_secs(10));
    agent.assert_alive();
    host.assert_serves(&v1);

    let old_port = host.port;
    host.port = free_port();
    host.write_config(SLOW);
    agent.signal("HUP");
    host.wait_deployed(&v1, SERVE);
    assert!(http_get(old_port, "/").is_none(), "old port released");
    host.assert_only_the_serving_container();
}

#[test]
fn s3_outage_keeps_the_site_up_and_the_agent_recovers() {
    let mut host = Host::new("run_s3_outage");
    let mut moto = PrivateMoto::start();
    host.use_s3(moto.endpoint());
    host.write_config(FAST);
    let v1 = host.release("good");
    let mut agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);

    moto.stop();
    agent.wait_log("cannot read s3://", Duration::from_secs(15));
    assert_keeps_serving(&host, &v1, Duration::from_secs(4));
    agent.assert_alive();
    let warnings = agent.logs().lines().filter(|l| l.contains("WARN") && l.contains("cannot read s3://")).count();
    assert_eq!(warnings, 1, "logged once per state change, not per retry:\n{}", agent.logs());

    moto.restart(); // empty: CI publishes again
    host.create_bucket();
    let v2 = host.release("good");
    host.wait_deployed(&v2, SERVE);
    agent.wait_log("recovered", Duration::from_secs(5));
}

#[test]
fn registry_outage_during_a_rollout_keeps_the_old_version_until_it_returns() {
    let mut host = Host::new("run_registry_outage");
    let mut registry = PrivateRegistry::start(host.path());
    host.registry = registry.address();
    host.write_config(FAST);
    let v1 = host.release("good");
    let v2 = host.publish("good");
    let _agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);

    registry.stop();
    host.put_release("staging", &v2);
    assert_keeps_serving(&host, &v1, Duration::from_secs(4));
    registry.restart();
    host.wait_deployed(&v2, SERVE);
}

#[test]
fn crash_looping_release_is_rolled_back_with_backoff() {
    let host = Host::new("run_crash_loop");
    host.write_config(FAST_ONE_VOTE);
    let v1 = host.release("good");
    let agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);
    // Serves long enough to pass both probes, then exits: Docker restarts it again and again.
    let bad = host.release("flaky");
    host.wait_serves(&bad, SERVE);
    agent.wait_log("crash loop", Duration::from_secs(60));
    host.wait_deployed(&v1, SERVE);
    let logs = agent.logs();
    assert!(logs.contains("next try in"), "{logs}");
    // Quarantined: the bad release is not redeployed on the next polls.
    assert_keeps_serving(&host, &v1, Duration::from_secs(3));
    // It crash-looped right after its first deploy here: the release's fault, so this host
    // votes to halt it, with the version it went back to.
    let votes = wait_for("the halt vote", SERVE, || Some(host.staging_votes(&bad)).filter(|v| !v.is_empty()));
    let vote = &votes[0];
    assert_eq!(vote["rolled_back_to"], v1.as_str(), "{vote}");
    assert_eq!(vote["verdict"], "crash-loop-after-deploy", "{vote}");
    assert!(vote["evidence"].as_str().unwrap().starts_with("Docker restarted it 3 times"), "{vote}");
    assert!(agent.logs().contains(&format!("voted to halt {} for staging", &bad[..12])), "{}", agent.logs());
}

/// Why 2 of issue 17: a release this host serves, whose process is killed from outside three
/// times (what the OOM killer does), is rolled back here and held back, but that is this
/// host's trouble: no vote, even where one vote would halt it for every host.
#[test]
fn a_crash_loop_of_kills_from_outside_is_this_host_s_and_halts_nothing() {
    let host = Host::new("run_killed");
    host.write_config(FAST_ONE_VOTE);
    let v1 = host.release("good");
    let agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);
    let v2 = host.release("good");
    host.wait_deployed(&v2, SERVE);
    for n in 1..=3 {
        let pid = wait_for("the container's process", SERVE, || {
            let pid = inspect(&host.container, "{{.State.Pid}}")?;
            pid.parse::<u32>().ok().filter(|p| *p > 0)
        });
        let killed = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
        assert!(killed.success());
        // Docker's restart policy brings it back, as after the OOM killer.
        wait_for("Docker to restart it", SERVE, || {
            let count = inspect(&host.container, "{{.RestartCount}} {{.State.Running}}")?;
            (count == format!("{n} true")).then_some(())
        });
        eprintln!("kill {n}: pid {pid} killed, restarted by Docker");
    }
    agent.wait_log("crash loop", Duration::from_secs(60));
    host.wait_deployed(&v1, SERVE);
    let logs = agent.logs();
    assert!(logs.contains("this host (killed-from-outside)"), "{logs}");
    assert!(logs.contains("no halt vote, other hosts are not affected"), "{logs}");
    assert_eq!(host.staging_halt_markers(), 0, "{v2} was voted against for kills from outside:\n{logs}");
}

/// Issue 22, item 3: the candidate of a new release killed from outside during its probe (what
/// the OOM killer does) is this host's trouble, as a crash loop of kills is: no halt vote, even
/// where one vote would halt the release for every host; the next try deploys it.
#[test]
fn a_candidate_killed_during_its_probe_is_this_host_s_and_halts_nothing() {
    let host = Host::new("run_cand_killed");
    host.write_config(FAST_ONE_VOTE);
    let v1 = host.release("good");
    let agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);
    // Answers only 4 s after it starts: time to kill its candidate mid-probe.
    let v2 = host.release("slow");
    let candidate = format!("{}-candidate", host.container);
    let pid = wait_for("the candidate's process", SERVE, || {
        inspect(&candidate, "{{.State.Pid}}")?.parse::<u32>().ok().filter(|p| *p > 0)
    });
    let killed = std::process::Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
    assert!(killed.success());
    agent.wait_log("this host (killed-from-outside)", SERVE);
    let logs = agent.logs();
    assert!(logs.contains("no halt vote, other hosts are not affected"), "{logs}");
    assert!(host.staging_votes(&v2).is_empty(), "{v2} was voted against for a kill from outside:\n{logs}");
    host.wait_deployed(&v2, SERVE);
    assert_eq!(host.staging_halt_markers(), 0, "{}", agent.logs());
}

#[test]
fn sigterm_during_a_pull_exits_promptly_and_leaves_the_site_up() {
    let mut host = Host::new("run_term_pull");
    host.write_config(FAST);
    let v1 = host.release("good");
    let mut agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);

    let hanging = HangingRegistry::start();
    host.registry = format!("127.0.0.1:{}", hanging.port);
    host.write_config(FAST);
    agent.signal("HUP");
    agent.wait_log("pulling", SERVE);
    let sent = Instant::now();
    agent.stop_with("TERM");
    assert!(sent.elapsed() < Duration::from_secs(5));
    host.assert_serves(&v1);
}

#[test]
fn notify_socket_gets_ready_status_watchdog_and_stopping() {
    let host = Host::new("run_notify");
    host.write_config(FAST);
    let v1 = host.release("good");
    let path = host.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut agent = host.start_agent_with(&[], |cmd| {
        cmd.env("NOTIFY_SOCKET", &path).env("WATCHDOG_USEC", "400000");
    });
    let mut seen: Vec<String> = Vec::new();
    let receive_until = |want: &dyn Fn(&[String]) -> bool, seen: &mut Vec<String>| {
        let deadline = Instant::now() + SERVE;
        let mut buf = [0u8; 4096];
        while !want(seen) {
            assert!(Instant::now() < deadline, "notify messages so far: {seen:?}");
            if let Ok(n) = socket.recv(&mut buf) {
                seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
    };
    receive_until(
        &|s: &[String]| {
            s.iter().any(|m| m == "READY=1")
                && s.iter().any(|m| m.starts_with("STATUS=staging: serving") && m.contains("converged"))
                && s.iter().filter(|m| *m == "WATCHDOG=1").count() >= 2
        },
        &mut seen,
    );
    let status = seen.iter().find(|m| m.starts_with("STATUS=staging: serving")).unwrap();
    assert!(status.contains(&v1[..12]), "{status}");
    agent.signal("TERM");
    receive_until(&|s: &[String]| s.iter().any(|m| m == "STOPPING=1"), &mut seen);
    assert_eq!(agent.wait_exit(Duration::from_secs(5)), 0);
}

/// A host whose S3 is a private moto seen through a counting proxy (which can also fail on
/// demand), with one release in it. The moto is returned so it lives as long as the test.
fn host_with_counted_s3(name: &str) -> (Host, PrivateMoto, CountingProxy, String) {
    let mut host = Host::new(name);
    let moto = PrivateMoto::start();
    host.use_s3(moto.endpoint());
    let v1 = host.release("good");
    let proxy = CountingProxy::start(moto.port);
    host.s3_endpoint = proxy.endpoint();
    host.write_config(FAST);
    (host, moto, proxy, v1)
}

#[test]
fn idle_agent_makes_only_conditional_s3_gets_and_no_ecr_calls() {
    let (host, _moto, proxy, v1) = host_with_counted_s3("run_idle");
    let _agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);
    let is_ecr =
        |r: &common::http::Request| r.header("x-amz-target").is_some_and(|t| t.contains("GetAuthorizationToken"));
    let converged_at = proxy.requests().len();
    let ecr_before = proxy.requests().iter().filter(|r| is_ecr(r)).count();
    assert_eq!(ecr_before, 1, "one token for the first pull");
    // Several idle polls.
    wait_for("5 idle polls", SERVE, || (proxy.requests().len() >= converged_at + 5).then_some(()));
    let idle: Vec<_> = proxy.requests().into_iter().skip(converged_at).collect();
    for r in &idle {
        assert!(!is_ecr(r), "ECR call while idle: {r:?}");
        assert_eq!(r.method, "GET", "{r:?}");
        assert!(r.path.contains("staging/stagebuild.txt"), "{r:?}");
        assert!(r.header("if-none-match").is_some(), "unconditional GET while idle: {r:?}");
    }
}

#[test]
fn restart_with_s3_down_starts_the_last_known_good_version() {
    let mut host = Host::new("run_last_good");
    let mut moto = PrivateMoto::start();
    host.use_s3(moto.endpoint());
    host.write_config(FAST);
    let v1 = deploy_then_stop_with(&host, "TERM");

    docker_ok(&["rm", "-f", &host.container]);
    moto.stop();
    let agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);
    assert!(agent.logs().contains("last-known-good"), "{}", agent.logs());
}

#[test]
fn sync_by_hand_while_run_is_active() {
    let host = Host::new("run_and_sync");
    host.write_config(FAST);
    let v1 = host.release("good");
    let mut agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);
    let v2 = host.release("good");
    for _ in 0..3 {
        let run = host.sync();
        assert_eq!(run.code, 0, "{}", run.output());
    }
    host.wait_deployed(&v2, SERVE);
    agent.assert_alive();
    host.assert_only_the_serving_container();
}

#[test]
fn environment_tag_added_after_boot_is_picked_up() {
    let mut host = Host::new("run_late_tag");
    let imds = FakeImds::start(&[]);
    host.imds_endpoint = Some(imds.endpoint.clone());
    host.write_config(FAST);
    let v1 = host.release("good");
    let mut agent = host.start_agent_raw(&[], |_| {});
    agent.wait_log("not found in instance metadata", SERVE);
    agent.assert_alive();
    imds.set_tag("Environment", "staging");
    host.wait_deployed(&v1, SERVE);
}

#[test]
fn slow_instance_metadata_at_boot_is_waited_out() {
    let mut host = Host::new("run_slow_imds");
    // Every IMDS answer comes after the agent's read timeout: a metadata service still busy at boot.
    let imds = FakeImds::start(&[("Environment", "staging")]);
    imds.set_delay(Duration::from_secs(4));
    host.imds_endpoint = Some(imds.endpoint.clone());
    host.write_config(FAST);
    let v1 = host.release("good");
    let mut agent = host.start_agent_raw(&[], |_| {});
    agent.wait_log("instance metadata unreachable", SERVE);
    agent.assert_alive();
    assert!(host.containers().is_empty(), "nothing is deployed before the environment is known");
    imds.set_delay(Duration::ZERO);
    host.wait_deployed(&v1, SERVE);
    agent.assert_alive();
}

#[test]
fn sigint_stops_like_sigterm_and_leaves_the_site_up() {
    let host = Host::new("run_sigint");
    host.write_config(SLOW);
    deploy_then_stop_with(&host, "INT");
    host.assert_only_the_serving_container();
}

#[test]
fn old_images_are_pruned_keeping_the_previous_ones() {
    let host = Host::new("run_prune");
    host.write_config("[reconcile]\ninterval = \"1s\"\njitter = \"0s\"\nkeep_images = 1\n");
    let _agent = host.start_agent(&[]);
    let mut shas = Vec::new();
    for _ in 0..4 {
        let sha = host.release("good");
        host.wait_deployed(&sha, SERVE);
        shas.push(sha);
    }
    let filter = format!("reference={}/{}:*", host.registry, host.repo);
    let expected: Vec<String> = shas[2..].iter().rev().map(|s| host.image(s)).collect();
    wait_for("old images removed", SERVE, || {
        let listed = docker_ok(&["images", "--filter", &filter, "--format", "{{.Repository}}:{{.Tag}}"]);
        let mut listed: Vec<String> = listed.lines().map(str::to_owned).collect();
        listed.sort();
        let mut want = expected.clone();
        want.sort();
        (listed == want).then_some(())
    });
}

#[test]
fn ecr_down_with_nothing_serving_starts_the_last_known_good_version() {
    let host = Host::new("run_ecr_down");
    host.write_config(FAST);
    let v1 = deploy_then_stop_with(&host, "TERM");

    // A reboot-like start: no container, S3 names a version not on disk, ECR unreachable.
    docker_ok(&["rm", "-f", &host.container]);
    let v2 = host.release("good");
    let agent = host.start_agent_with(&[], |cmd| {
        cmd.env("AWS_ENDPOINT_URL_ECR", "http://127.0.0.1:9");
    });
    host.wait_deployed(&v1, SERVE);
    agent.wait_log("starting the last-known-good version", Duration::from_secs(5));
    assert!(!agent.logs().contains(&format!("deployed and serving: {} {v2}", host.container)));
}

#[test]
fn s3_errors_and_kms_denial_keep_the_site_up_and_are_logged_once() {
    let (host, _moto, proxy, v1) = host_with_counted_s3("run_s3_errors");
    let mut agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);

    // Throttling / 5xx: every retry has a new request id, still one warning. S3 is asked
    // again only after its push-back pause (2 s doubling, full jitter): allow for three.
    proxy.fail(503, "SlowDown");
    let failing_from = proxy.requests().len();
    let paused = SERVE * 2;
    wait_for("several failed polls", paused, || (proxy.requests().len() >= failing_from + 4).then_some(()));
    host.assert_serves(&v1);
    let warnings = |text: &str| agent.logs().lines().filter(|l| l.contains("WARN") && l.contains(text)).count();
    assert_eq!(warnings("cannot read s3://"), 1, "{}", agent.logs());

    // KMS access denied (S3 reports it as AccessDenied): named, with the permission to add.
    proxy.fail(403, "AccessDenied");
    agent.wait_log("kms:Decrypt", paused);
    host.assert_serves(&v1);
    agent.assert_alive();

    proxy.heal();
    agent.wait_log("recovered", paused);
    let v2 = host.release("good");
    host.wait_deployed(&v2, SERVE);
}

/// Whether a container named `name` exists.
fn exists(name: &str) -> bool {
    docker(&["inspect", "-f", "{{.Id}}", name]).status.success()
}

#[test]
fn a_removed_container_is_repaired_at_once_while_s3_is_down() {
    let mut host = Host::new("run_rm_s3_down");
    let mut moto = PrivateMoto::start();
    host.use_s3(moto.endpoint());
    host.write_config(SLOW);
    let v1 = host.release("good");
    let mut agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);

    // S3 goes away; a SIGHUP makes the agent notice now rather than in 5 minutes. Its retries
    // back off (1, 2, 4, 8, 16 s): after 16 s the next one is about 15 s away.
    moto.stop();
    agent.signal("HUP");
    agent.wait_log("cannot read s3://", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(16));

    // The container event repairs the host from what it knows, without waiting on S3.
    docker_ok(&["rm", "-f", &host.container]);
    host.wait_serves(&v1, Duration::from_secs(5));
    agent.assert_alive();
}

#[test]
fn a_release_whose_cut_over_keeps_failing_is_held_back() {
    let host = Host::new("run_cutover_quarantine");
    host.write_config(FAST);
    let v1 = host.release("good");
    let mut agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);

    // The new spec's host port is held by another process: every cut-over stops the old
    // container, cannot start the new one, and rolls back. Three in a row, then no more.
    let holder = host.point_at_a_held_port();
    let text = std::fs::read_to_string(&host.config).unwrap().replace("timeout = \"10s\"", "timeout = \"2s\"");
    std::fs::write(&host.config, text).unwrap();
    agent.signal("HUP");
    agent.wait_log("holding it back", Duration::from_secs(60));
    let tries = |logs: &str| logs.lines().filter(|l| l.contains("INFO deploying ")).count();
    let after_hold = tries(&agent.logs());
    assert_keeps_serving(&host, &v1, Duration::from_secs(5));
    assert_eq!(tries(&agent.logs()), after_hold, "no more cut-overs while held:\n{}", agent.logs());
    // The first deploy, then three tries of the new spec.
    assert_eq!(after_hold, 1 + 3, "held after three failures:\n{}", agent.logs());
    // The release was not at fault (this host's new spec was): it is not halted fleet-wide.
    assert_eq!(host.staging_halt_markers(), 0, "a failed spec change halts nothing:\n{}", agent.logs());
    agent.assert_alive();
    drop(holder);
}

#[test]
fn a_release_that_cannot_start_because_of_this_host_is_not_halted_fleet_wide() {
    let host = Host::new("run_cutover_local");
    host.write_config(FAST);
    let v1 = host.release("good");
    let mut agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);

    // A new release arrives with a config whose host port another process holds: Docker
    // cannot start the new container. That is this host's problem, not the release's.
    let holder = host.point_at_a_held_port();
    let v2 = host.release("good");
    agent.signal("HUP");
    agent.wait_log("could not start new version", Duration::from_secs(60));
    // Each try stops v1 for a moment; after three the release is held back here, and then
    // v1's own spec change (the same taken port) is, after three more.
    common::wait_for("both held back", Duration::from_secs(90), || {
        (agent.logs().matches("holding it back").count() >= 2).then_some(())
    });
    assert_keeps_serving(&host, &v1, Duration::from_secs(3));
    assert_eq!(
        host.staging_halt_markers(),
        0,
        "{v2} was halted fleet-wide for a port taken on this host:\n{}",
        agent.logs()
    );
    agent.assert_alive();
    drop(holder);
}

#[test]
fn a_release_whose_command_cannot_run_is_halted_fleet_wide() {
    let host = Host::new("run_unrunnable");
    host.write_config(FAST_ONE_VOTE);
    let v1 = host.release("good");
    let mut agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);

    // The new image names an entrypoint it does not contain: Docker refuses to start it, on
    // this host as on every other. That is the release failing, not Docker: it is halted for
    // the fleet at once rather than retried on every host.
    let v2 = host.release("nocommand");
    agent.signal("HUP");
    wait_for("the halt marker", SERVE, || (host.staging_halt_markers() == 1).then_some(()));
    assert!(agent.logs().contains("cannot run its command"), "{}", agent.logs());
    assert_keeps_serving(&host, &v1, Duration::from_secs(3));
    let tries = agent.logs().matches(&format!("deploying {v2} as")).count();
    assert_eq!(tries, 1, "tried once, then halted:\n{}", agent.logs());
    let votes = host.staging_votes(&v2);
    assert_eq!(votes[0]["verdict"], "command-cannot-run", "{votes:?}");
    agent.assert_alive();
}

#[test]
fn sigterm_while_the_new_version_is_proven_leaves_it_for_the_next_start() {
    let host = Host::new("run_term_mid_probe");
    host.write_config(FAST);
    let v1 = host.release("good");
    let mut agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);

    // The new version needs 4 s to answer: stop the agent while it proves it after cut-over.
    let v2 = host.release("slow");
    let previous = format!("{}-previous", host.container);
    wait_for("the cut-over", Duration::from_secs(60), || exists(&previous).then_some(()));
    agent.stop_with("TERM");
    assert_eq!(host.label("io.blog-agent.sha"), v2, "the new version was not rolled back");
    assert!(exists(&previous), "the old version is kept aside until the new one is proven");

    // The next start proves it and finishes the deploy, with no second swap.
    let agent = host.start_agent(&[]);
    host.wait_deployed(&v2, SERVE);
    assert!(agent.logs().contains("is healthy; removing the previous one"), "{}", agent.logs());
}

#[test]
fn status_says_unconverged_when_the_site_is_lost_and_cannot_be_redeployed() {
    let mut host = Host::new("run_status_dark");
    let mut registry = PrivateRegistry::start(host.path());
    host.registry = registry.address();
    host.write_config(FAST);
    let v1 = host.release("good");
    let path = host.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let _agent = host.start_agent_with(&[], |cmd| {
        cmd.env("NOTIFY_SOCKET", &path);
    });
    host.wait_deployed(&v1, SERVE);

    // The container and its image are gone and the registry is down: nothing can serve.
    registry.stop();
    docker_ok(&["rm", "-f", &host.container]);
    docker_ok(&["rmi", "-f", &host.image(&v1)]);
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    wait_for("an unconverged STATUS=", SERVE, || {
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        seen.iter().any(|m: &String| m.starts_with("STATUS=staging: unconverged")).then_some(())
    });
    let last = seen.iter().rev().find(|m| m.starts_with("STATUS=")).unwrap();
    assert!(!last.contains("serving"), "STATUS must not claim a blog serves: {seen:?}");
}
