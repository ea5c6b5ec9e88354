//! Incident tools: `sync --sha` pins and pauses, `pause`/`resume`, `sync --dry-run`.

mod common;

use std::time::Duration;

use common::*;

const FAST: &str = "[reconcile]\ninterval = \"1s\"\njitter = \"0s\"\n";

#[test]
fn sync_sha_deploys_and_pauses_until_resume() {
    let host = Host::new("op_pin");
    host.write_config(FAST);
    let v1 = host.release("good");
    let pinned = host.publish("good");
    let mut agent = host.start_agent(&[]);
    host.wait_deployed(&v1, Duration::from_secs(30));

    let run = host.agent(&["--env", "staging", "sync", "--sha", &pinned]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains("paused"), "{}", run.stderr);
    host.assert_serves(&pinned);

    // S3 moves on; the paused service stays on the pinned version, and repairs it.
    let v3 = host.release("good");
    agent.wait_log("paused", Duration::from_secs(15));
    docker_ok(&["rm", "-f", &host.container]);
    host.wait_deployed(&pinned, Duration::from_secs(15));
    host.assert_serves(&pinned);
    agent.assert_alive();

    // The pause survives an agent restart.
    agent.stop_with("TERM");
    let agent = host.start_agent(&[]);
    agent.wait_log("paused", Duration::from_secs(15));
    host.assert_serves(&pinned);

    let run = host.agent(&["resume"]);
    assert_eq!(run.code, 0, "{}", run.output());
    host.wait_deployed(&v3, Duration::from_secs(30));
}

#[test]
fn pause_freezes_and_resume_follows_s3_again() {
    let host = Host::new("op_pause");
    host.write_config(FAST);
    let v1 = host.release("good");
    assert_eq!(host.sync().code, 0);
    let run = host.agent(&["pause", "--reason", "INC-1 investigating"]);
    assert_eq!(run.code, 0, "{}", run.output());
    let v2 = host.release("good");
    let run = host.sync();
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains("INC-1 investigating") && run.stderr.contains("staying on"), "{}", run.stderr);
    host.assert_serves(&v1);
    assert_eq!(host.agent(&["resume"]).code, 0);
    assert_eq!(host.sync().code, 0);
    host.assert_serves(&v2);
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let host = Host::new("op_dry_run");
    let v1 = host.release("good");
    assert_eq!(host.sync().code, 0);
    let before = host.container_state().unwrap();
    let filter = format!("reference={}/{}:*", host.registry, host.repo);
    let images_before = docker_ok(&["images", "-q", "--filter", &filter]);
    let v2 = host.release("good");
    let run = host.agent(&["--env", "staging", "sync", "--dry-run"]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(
        run.stdout.contains("dry run") && run.stdout.contains(&format!("pull {}", host.image(&v2))),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains(&format!("running {v1}")), "{}", run.stdout);
    assert_eq!(host.container_state().unwrap(), before, "container untouched");
    assert_eq!(docker_ok(&["images", "-q", "--filter", &filter]), images_before, "no image pulled or removed");
    host.assert_serves(&v1);
    assert!(!host.state_dir().join("pause.json").exists());
}

fn status_json(host: &Host) -> (i32, serde_json::Value) {
    let run = host.agent(&["--env", "staging", "status", "--json"]);
    let value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.output()));
    (run.code, value)
}

#[test]
fn status_json_on_a_converged_host() {
    let host = Host::new("status_converged");
    let sha = host.release("good");
    assert_eq!(host.sync().code, 0);
    let (code, s) = status_json(&host);
    assert_eq!(code, 0, "{s}");
    assert_eq!(s["schema_version"], 1);
    assert_eq!(s["environment"]["name"], "staging");
    assert_eq!(s["environment"]["source"], "flag");
    assert_eq!(s["desired"]["sha"], sha.as_str());
    assert_eq!(s["desired"]["uri"], format!("s3://{}/staging/stagebuild.txt", host.bucket));
    assert!(s["desired"]["etag"].is_string());
    assert_eq!(s["container"]["name"], host.container.as_str());
    assert_eq!(s["container"]["sha"], sha.as_str());
    assert_eq!(s["container"]["managed"], true);
    assert_eq!(s["container"]["state"], "running");
    assert!(s["container"]["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(s["container"]["health"]["ok"], true);
    assert!(s["paused"].is_null());
    assert_eq!(s["last_good_sha"], sha.as_str());
    assert!(s["last_pass"]["last_success"].is_u64());
    assert_eq!(s["converged"], true);
    // The table names the same facts for a person.
    let run = host.agent(&["--env", "staging", "status"]);
    assert!(run.stdout.contains("converged      yes") && run.stdout.contains(&sha), "{}", run.stdout);
}

#[test]
fn status_json_on_a_paused_host() {
    let host = Host::new("status_paused");
    host.release("good");
    assert_eq!(host.sync().code, 0);
    assert_eq!(host.agent(&["pause", "--reason", "INC-7"]).code, 0);
    let (_, s) = status_json(&host);
    assert_eq!(s["paused"]["reason"], "INC-7");
    assert!(s["paused"]["by"].is_string() && s["paused"]["at"].is_u64(), "{s}");
}

#[test]
fn status_json_when_the_s3_object_is_bad() {
    let host = Host::new("status_bad_s3");
    let sha = host.release("good");
    assert_eq!(host.sync().code, 0);
    host.put_object("staging/stagebuild.txt", b"latest".to_vec());
    let (code, s) = status_json(&host);
    assert_eq!(code, 1);
    assert!(s["desired"].is_null());
    assert!(s["desired_error"].as_str().unwrap().contains("\"latest\""), "{s}");
    assert_eq!(s["container"]["sha"], sha.as_str());
    assert_eq!(s["converged"], false);
}

#[test]
fn status_json_with_no_container() {
    let host = Host::new("status_empty");
    let sha = host.release("good");
    let (code, s) = status_json(&host);
    assert_eq!(code, 1);
    assert_eq!(s["desired"]["sha"], sha.as_str());
    assert!(s["container"].is_null() && s["container_error"].is_null(), "{s}");
    assert!(s["last_good_sha"].is_null() && s["last_pass"].is_null());
    assert_eq!(s["converged"], false);
}

fn check(host: &Host, args: &[&str]) -> Run {
    let mut full: Vec<&str> = args.to_vec();
    full.push("check");
    host.agent(&full)
}

fn assert_check_line(run: &Run, prefix: &str, contains: &str) {
    let line = run
        .stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} line:\n{}", run.stdout));
    assert!(line.contains(contains), "{line}");
}

#[test]
fn check_passes_on_a_healthy_host() {
    let host = Host::new("check_healthy");
    host.release("good");
    assert_eq!(host.sync().code, 0);
    let run = check(&host, &["--env", "staging"]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(!run.stdout.contains("FAIL"), "{}", run.stdout);
    for line in [
        "ok   config",
        "ok   s3 object",
        "ok   release sha",
        "ok   release halt",
        "ok   ecr token",
        "ok   registry",
        "ok   docker",
    ] {
        assert!(run.stdout.contains(line), "{line}:\n{}", run.stdout);
    }
    assert_check_line(&run, "ok   host port", "held by our container");
    assert_check_line(&run, "ok   release halt", "is not halted (no s3://");
}

#[test]
fn check_names_each_failure() {
    let mut host = Host::new("check_failures");
    // IMDS down (nothing listens at the default test endpoint).
    let run = check(&host, &[]);
    assert_eq!(run.code, 1);
    assert_check_line(&run, "FAIL imds", "instance metadata unreachable");
    // Tag missing.
    let imds = common::imds::FakeImds::start(&[]);
    host.imds_endpoint = Some(imds.endpoint.clone());
    let run = check(&host, &[]);
    assert_check_line(&run, "FAIL environment tag", "InstanceMetadataTags=enabled");
    // S3 key missing.
    imds.set_tag("Environment", "staging");
    let run = check(&host, &[]);
    assert_check_line(&run, "ok   environment tag", "Environment = staging");
    assert_check_line(&run, "FAIL s3 object", "does not exist");
    // Bad SHA.
    host.put_object("staging/stagebuild.txt", b"latest".to_vec());
    let run = check(&host, &[]);
    assert_check_line(&run, "FAIL release sha", "\"latest\"");
    // Registry tag missing.
    host.put_release("staging", &unique_sha("never-pushed"));
    let run = check(&host, &[]);
    assert_check_line(&run, "FAIL registry", "has CI pushed this tag");
    // Port taken by another process.
    let _squatter = std::net::TcpListener::bind(("127.0.0.1", host.port)).unwrap();
    let run = check(&host, &[]);
    assert_check_line(&run, "FAIL host port", "another process holds it");
    // Docker socket absent.
    host.extra_env.push(("DOCKER_HOST".into(), "unix:///nonexistent/docker.sock".into()));
    let run = check(&host, &[]);
    assert_check_line(&run, "FAIL docker", "Docker Engine unreachable");
    assert_eq!(run.code, 1);
    assert!(host.containers().is_empty(), "check changed nothing");
}

#[test]
fn every_subcommand_help_has_a_purpose_and_an_example() {
    let host = Host::new("help");
    for sub in ["sync", "run", "status", "check", "pause", "resume"] {
        let run = host.agent(&[sub, "--help"]);
        assert_eq!(run.code, 0, "{sub}: {}", run.output());
        let first = run.stdout.lines().next().unwrap_or_default();
        assert!(!first.is_empty() && first.len() < 200, "{sub}: one-line purpose first: {first:?}");
        assert!(run.stdout.contains("Examples:\n  "), "{sub} --help lacks an example:\n{}", run.stdout);
        for global in ["--config", "--env"] {
            assert!(run.stdout.contains(global), "{sub} --help lacks {global}");
        }
    }
}

#[test]
fn man_pages_and_completions_are_generated() {
    let host = Host::new("assets");
    let dir = host.path().join("assets");
    let run = host.agent(&["generate-assets", dir.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.output());
    for f in
        ["blog-agent.1", "blog-agent-sync.1", "blog-agent-check.1", "blog-agent.bash", "_blog-agent", "blog-agent.fish"]
    {
        let text = std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(text.contains("blog-agent"), "{f}");
    }
}
