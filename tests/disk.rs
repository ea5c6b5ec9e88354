//! The disk watched (issue 24, point 5): before a pull, free space on Docker's data root is
//! compared with the image's size (its manifest) plus `[reconcile] min_free_disk`. Short, the
//! images this host does not need go first; still short, the pull is not started and the
//! running version keeps serving, and `sync`, `status` and `check` say why with the numbers.
//!
//! "Short" is made with a `min_free_disk` larger than any disk here ("100TB"): the real stack,
//! the real registry, no disk actually filled.

mod common;

use std::time::Duration;

use common::autoscaling::FakeAutoScaling;
use common::imds::FakeImds;
use common::{docker, docker_ok, wait_for, Host, Run};

/// The line of `check`'s output for `name`.
fn check_line(run: &Run, name: &str) -> String {
    run.stdout
        .lines()
        .find(|l| l.get(5..).is_some_and(|rest| rest.starts_with(&format!("{name}:"))))
        .unwrap_or_else(|| panic!("no {name} line in:\n{}", run.stdout))
        .to_owned()
}

fn image_present(reference: &str) -> bool {
    docker(&["image", "inspect", reference]).status.success()
}

#[test]
fn a_release_that_does_not_fit_is_not_pulled_and_the_running_version_keeps_serving() {
    let host = Host::new("disk_short");
    let first = host.release("good");
    let run = host.sync();
    assert_eq!(run.code, 0, "{}", run.output());
    host.wait_deployed(&first, Duration::from_secs(30));

    // An image of the repository this host does not need: pulled by hand, used by nothing.
    let unneeded = host.publish("good");
    docker_ok(&["pull", "-q", &host.image(&unneeded)]);
    assert!(image_present(&host.image(&unneeded)));

    let second = host.release("good");
    host.write_config("[reconcile]\nmin_free_disk = \"100TB\"\n");
    let run = host.sync();
    assert_eq!(run.code, 1, "a sync that could not pull fails: {}", run.output());
    let message = run.stderr.lines().find(|l| l.contains("not enough disk space")).unwrap_or_else(|| {
        panic!("no disk message:\n{}", run.output());
    });
    for want in [
        &format!("to pull {}", host.image(&second)) as &str,
        "Docker's data root",
        "free, the pull needs",
        "for the image (from its manifest) and 100TB of [reconcile] min_free_disk",
        "1 image(s) this host does not need were removed first",
        "pull was not started and the running version keeps serving",
        "lower [reconcile] min_free_disk",
    ] {
        assert!(message.contains(want), "{want:?} not in: {message}");
    }
    // Nothing changed for the site, and the unneeded image went while the running one stayed.
    host.assert_serves(&first);
    assert_eq!(host.label("io.blog-agent.sha"), first);
    host.assert_only_the_serving_container();
    assert!(!image_present(&host.image(&second)), "the pull was not started");
    assert!(!image_present(&host.image(&unneeded)), "the image nothing needs was removed to make room");
    assert!(image_present(&host.image(&first)), "the running version's image stays");

    let status = host.agent(&["--env", "staging", "status"]);
    let disk = status.stdout.lines().find(|l| l.starts_with("disk ")).unwrap_or_else(|| panic!("{}", status.stdout));
    assert!(disk.contains("free, below [reconcile] min_free_disk 100TB") && disk.contains("SHORT"), "{disk}");
    assert!(disk.contains("lower [reconcile] min_free_disk"), "{disk}");
    let last_error = status.stdout.lines().find(|l| l.starts_with("last error")).unwrap_or_default();
    assert!(last_error.contains("not enough disk space"), "{}", status.stdout);
    let json = host.agent(&["--env", "staging", "status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(json["disk"]["ok"], false, "{json}");
    assert_eq!(json["disk"]["min_free_bytes"], 100_000_000_000_000u64, "{json}");
    assert!(json["disk"]["free_bytes"].as_u64().unwrap() > 0, "{json}");

    let check = host.agent(&["--env", "staging", "check"]);
    let line = check_line(&check, "disk");
    assert!(line.starts_with("FAIL disk: "), "{line}");
    for want in
        [&format!("pulling {}", host.image(&second)) as &str, "for the image (from its manifest)", "100TB", "short"]
    {
        assert!(line.contains(want), "{want:?} not in: {line}");
    }

    // With room again, the next sync pulls and deploys it.
    host.write_config("");
    let run = host.sync();
    assert_eq!(run.code, 0, "{}", run.output());
    host.wait_deployed(&second, Duration::from_secs(30));
    let check = host.agent(&["--env", "staging", "check"]);
    let line = check_line(&check, "disk");
    assert!(line.starts_with("ok   disk: ") && line.contains("min_free_disk 2GiB"), "{line}");
}

#[test]
fn a_first_deploy_that_does_not_fit_leaves_nothing_half_done() {
    let host = Host::new("disk_first");
    let sha = host.release("good");
    host.write_config("[reconcile]\nmin_free_disk = \"100TB\"\n");
    let run = host.sync();
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(run.stderr.contains("not enough disk space to pull"), "{}", run.output());
    assert!(run.stderr.contains("no image this host does not need was left to remove"), "{}", run.output());
    assert!(host.containers().is_empty(), "no container was created: {:?}", host.containers());
    assert!(!image_present(&host.image(&sha)));
}

#[test]
fn a_bad_min_free_disk_is_a_config_error_naming_the_key_and_the_units() {
    let host = Host::new("disk_config");
    host.write_config("[reconcile]\nmin_free_disk = \"2G\"\n");
    let run = host.sync();
    assert_eq!(run.code, 78, "{}", run.output());
    let line = run.stderr.lines().find(|l| l.contains("min_free_disk")).unwrap_or_default();
    assert!(
        line.contains("[reconcile] min_free_disk = \"2G\"") && line.contains("KiB, MiB, GiB, TiB"),
        "{}",
        run.stderr
    );
}

/// The service: a release that does not fit is not pulled, the running version keeps serving,
/// and the metrics say why; with room again (a reload) it is deployed.
#[test]
fn the_service_keeps_serving_and_its_metrics_say_the_disk_is_short() {
    let host = Host::new("disk_run");
    let first = host.release("good");
    assert_eq!(host.sync().code, 0);
    host.wait_deployed(&first, Duration::from_secs(30));
    let second = host.release("good");
    let prom = host.path().join("metrics/blog_agent.prom");
    let metrics = || std::fs::read_to_string(&prom).unwrap_or_default();
    let config =
        |extra: &str| format!("[reconcile]\ninterval = \"1s\"\n{extra}[metrics]\ntextfile = \"{}\"\n", prom.display());
    host.write_config(&config("min_free_disk = \"100TB\"\n"));
    let mut agent = host.start_agent(&[]);
    agent.wait_log("not enough disk space to pull", Duration::from_secs(30));
    common::wait_for("the metrics to say the disk is short", Duration::from_secs(30), || {
        let text = metrics();
        (text.contains("\nblog_agent_disk_short 1\n") && text.contains("\nblog_agent_disk_needed_bytes 1000"))
            .then_some(())
    });
    let text = metrics();
    assert!(text.contains("\nblog_agent_disk_min_free_bytes 100000000000000\n"), "{text}");
    assert!(text.contains("\nblog_agent_disk_free_bytes "), "{text}");
    host.assert_serves(&first);
    agent.assert_alive();

    host.write_config(&config(""));
    agent.signal("HUP");
    host.wait_deployed(&second, Duration::from_secs(60));
    common::wait_for("the metrics to say the disk is fine", Duration::from_secs(30), || {
        metrics().contains("\nblog_agent_disk_short 0\n").then_some(())
    });
    assert!(metrics().contains("\nblog_agent_disk_min_free_bytes 2147483648\n"), "{}", metrics());
    agent.stop_with("TERM");
}

/// A size that cannot be learnt (the registry refuses the manifest request) is said, and
/// `min_free_disk` alone decides.
#[test]
fn a_size_that_cannot_be_learnt_is_said_and_min_free_disk_alone_decides() {
    let mut host = Host::new("disk_unknown");
    host.registry = common::badauth_registry();
    host.write_config("[reconcile]\nmin_free_disk = \"100TB\"\n");
    host.put_release("staging", &common::unique_sha("disk_unknown"));
    let run = host.sync();
    assert_eq!(run.code, 1, "{}", run.output());
    let said = run.stderr.lines().find(|l| l.contains("cannot learn the size of")).unwrap_or_default();
    assert!(
        said.contains("HTTP 401") && said.contains("requiring [reconcile] min_free_disk (100TB) free alone"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("the image's size is unknown, so [reconcile] min_free_disk = 100TB alone"),
        "{}",
        run.stderr
    );
    assert!(host.containers().is_empty());
}

/// The launch gate: a new instance that cannot pull its release is not put in service, says
/// why at once, and is abandoned at the hook's timeout with that reason (the hook's default,
/// CONTINUE, would put it in service).
#[test]
fn a_launching_instance_that_cannot_pull_is_not_put_in_service_and_the_gate_says_why() {
    let asg = FakeAutoScaling::start("blog-staging", "blog-launch", Duration::from_secs(8), "CONTINUE");
    let id = "i-0d15c00000000001";
    let mut host = Host::new("disk_gate");
    let imds = FakeImds::start(&[("Environment", "staging")]);
    imds.set_instance_id(id);
    host.imds_endpoint = Some(imds.endpoint.clone());
    host.extra_env.push(("AWS_ENDPOINT_URL_AUTO_SCALING".into(), asg.endpoint.clone()));
    host.write_config(
        "[reconcile]\ninterval = \"1s\"\nmin_free_disk = \"100TB\"\n[rollout]\nlifecycle_hook = \"blog-launch\"\n",
    );
    asg.probe_at_continue(host.port);
    host.release("good");
    asg.set_state(id, "Pending:Wait");
    let agent = host.start_agent_raw(&[], |_| {});

    agent
        .wait_log("launch gate: this instance cannot pull its release (not enough disk space", Duration::from_secs(30));
    let completes = wait_for("ABANDON", Duration::from_secs(30), || {
        let completes = asg.calls_of("CompleteLifecycleAction");
        (!completes.is_empty()).then_some(completes)
    });
    assert_eq!(completes[0].result.as_deref(), Some("ABANDON"), "{completes:?}");
    assert!(asg.calls_of("Expired").is_empty(), "{:?}", asg.calls());
    let logs = agent.logs();
    let abandon = logs.lines().find(|l| l.contains("ABANDON sent")).unwrap_or_default();
    assert!(abandon.contains("it cannot pull its release: not enough disk space"), "{logs}");
    assert!(host.page().is_none(), "nothing serves");
}
