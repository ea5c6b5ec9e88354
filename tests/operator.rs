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
    host.wait_serves(&v1, Duration::from_secs(30));

    let run = host.agent(&["--env", "staging", "sync", "--sha", &pinned]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains("paused"), "{}", run.stderr);
    host.assert_serves(&pinned);

    // S3 moves on; the paused service stays on the pinned version, and repairs it.
    let v3 = host.release("good");
    agent.wait_log("paused", Duration::from_secs(15));
    docker_ok(&["rm", "-f", &host.container]);
    host.wait_serves(&pinned, Duration::from_secs(15));
    host.assert_serves(&pinned);
    agent.assert_alive();

    // The pause survives an agent restart.
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(5)), 0);
    let agent = host.start_agent(&[]);
    agent.wait_log("paused", Duration::from_secs(15));
    host.assert_serves(&pinned);

    let run = host.agent(&["resume"]);
    assert_eq!(run.code, 0, "{}", run.output());
    host.wait_serves(&v3, Duration::from_secs(30));
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
