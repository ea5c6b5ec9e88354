//! Trust by construction, on the local stack with signatures on (minisign keys made by the
//! test): every path that picks a release runs only a release a signed version of the release
//! object names, an older signed release copied over the current one is a replay, and every
//! command (`sync`, `status`, `check`, `rollback`, `publish`) goes by the same verified answer.
//! Each test plays someone with a host's credentials or write access to the bucket.

mod common;

use common::release::*;
use common::*;

/// A host whose config requires releases signed with a key made here; CI's signing key is in
/// its environment. Versioning is on: the release object keeps its history.
fn signed_host(name: &str) -> Host {
    let mut host = Host::new(name);
    let (public, secret) = key_pair(&host, "ci");
    require_signatures(&host, &public);
    host.extra_env.push(("BLOG_AGENT_SIGNING_KEY".into(), secret.display().to_string()));
    versioning_on(&host);
    host
}

fn require_signatures(host: &Host, public: &str) {
    let config = std::fs::read_to_string(&host.config).unwrap();
    let config = match config.find("public_key = ") {
        Some(_) => config.lines().filter(|l| !l.starts_with("public_key = ")).collect::<Vec<_>>().join("\n") + "\n",
        None => config,
    };
    let config = config.replacen("[release]\n", &format!("[release]\npublic_key = \"{public}\"\n"), 1);
    std::fs::write(&host.config, config).unwrap();
}

/// A second, empty host of the same environment: it shares the first one's bucket,
/// repository and key, and has nothing serving.
fn new_instance(of: &Host, name: &str) -> Host {
    let mut host = Host::new(name);
    host.share_release_with(of);
    let config = std::fs::read_to_string(&of.config).unwrap();
    let public = config.lines().find_map(|l| l.strip_prefix("public_key = \"")).unwrap().trim_end_matches('"');
    require_signatures(&host, public);
    host
}

/// Writes a halt marker for `sha` by hand, as anyone with `s3:PutObject` on the halt folder
/// could.
fn write_marker(host: &Host, sha: &str, reason: &str, rolled_back_to: Option<&str>) {
    let marker = serde_json::json!({
        "sha": sha, "environment": "staging", "instance_id": "i-0attacker", "reason": reason, "at": 1,
        "rolled_back_to": rolled_back_to,
    });
    host.put_object(&format!("staging/halted/{sha}"), marker.to_string().into_bytes());
}

fn publish_ok(host: &Host, sha: &str) {
    let run = publish(host, "staging", sha);
    assert_eq!(run.code, 0, "publish {sha}: {}", run.output());
}

fn status(host: &Host) -> serde_json::Value {
    let run = host.agent(&["--env", "staging", "status", "--json"]);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("status --json: {e}: {}", run.output()))
}

/// Why 1: a halt whose rollback target names a tag that was pushed but never published is not
/// run by a new instance: only a verified release of the history is a rollback target.
#[test]
fn a_halt_cannot_make_new_instances_run_an_unpublished_image() {
    let host = signed_host("trust-halt-target");
    let (v1, _) = build_and_push(&host, "good");
    let (v2, _) = build_and_push(&host, "good");
    let (pushed_only, _) = build_and_push(&host, "good");
    publish_ok(&host, &v1);
    publish_ok(&host, &v2);
    write_marker(&host, &v2, "forged", Some(&pushed_only));

    let fresh = new_instance(&host, "trust-halt-target-new");
    let run = fresh.sync();
    assert_eq!(run.code, 0, "{}", run.output());
    fresh.assert_serves(&v1);
    let s = status(&fresh);
    assert_eq!(s["target"]["sha"], v1.as_str(), "{s}");
    assert_eq!(s["target"]["source"], "halted", "{s}");
}

/// Why 2: the history fallback skips a version written into the bucket without a signature.
#[test]
fn the_history_fallback_runs_only_a_signed_version() {
    let host = signed_host("trust-history");
    let (v1, _) = build_and_push(&host, "good");
    let (unsigned, _) = build_and_push(&host, "good");
    let (v3, _) = build_and_push(&host, "good");
    publish_ok(&host, &v1);
    host.put_release("staging", &unsigned);
    publish_ok(&host, &v3);
    write_marker(&host, &v3, "bad release", None);

    let fresh = new_instance(&host, "trust-history-new");
    let run = fresh.sync();
    assert_eq!(run.code, 0, "{}", run.output());
    fresh.assert_serves(&v1);
}

/// Why 3: an older signed release copied over the current one (`copy-object` with its version
/// id) is a replay: a host that took the newer one keeps it, a new host runs the newest
/// verified one, and `status` and `check` say why.
#[test]
fn an_old_signed_release_copied_over_the_current_one_is_refused_as_a_replay() {
    let host = signed_host("trust-replay");
    let (v1, _) = build_and_push(&host, "good");
    let (v2, _) = build_and_push(&host, "good");
    publish_ok(&host, &v1);
    // The signed time has a resolution of one second: the next release is signed later.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    publish_ok(&host, &v2);
    assert_eq!(host.sync().code, 0);
    host.assert_serves(&v2);

    let key = default_key("staging");
    let (bucket_key, v1_version) = (key.clone(), {
        let key = key.clone();
        host.s3(|c, b| async move {
            let listed = c.list_object_versions().bucket(b).prefix(key).send().await.unwrap();
            let mut versions: Vec<_> = listed.versions().to_vec();
            versions.sort_by_key(|v| v.last_modified().cloned());
            versions[0].version_id().unwrap().to_owned()
        })
    });
    host.s3(|c, b| async move {
        let source = format!("{b}/{bucket_key}?versionId={v1_version}");
        c.copy_object().bucket(b).key(bucket_key).copy_source(source).send().await.unwrap();
    });
    assert_eq!(release_object(&host, "staging").unwrap().0, format!("{v1}\n"), "the replay is in place");

    let run = host.sync();
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(run.stderr.contains("a replay") && run.stderr.contains(&v2), "{}", run.stderr);
    host.assert_serves(&v2);

    let fresh = new_instance(&host, "trust-replay-new");
    let run = fresh.sync();
    assert_eq!(run.code, 1, "{}", run.output());
    fresh.assert_serves(&v2);
    let s = status(&fresh);
    assert_eq!(s["desired"]["verified"], false, "{s}");
    assert!(s["desired"]["refused"].as_str().unwrap().contains("a replay"), "{s}");
    assert_eq!((s["target"]["sha"].as_str(), s["target"]["source"].as_str()), (Some(v2.as_str()), Some("refused")));
    let check = fresh.agent(&["--env", "staging", "check"]);
    assert!(
        check.stdout.lines().any(|l| l.starts_with("FAIL release signature:") && l.contains("a replay")),
        "{}",
        check.output()
    );
    // Going back on purpose is a rollback: signed anew, and followed.
    let run = host.agent(&["--env", "staging", "rollback", "--to", &v1]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert_eq!(host.sync().code, 0);
    host.assert_serves(&v1);
}

/// Why 4: `rollback` lends CI's signature only to versions that were signed: it skips an
/// unsigned one, and `--to` one is refused naming the signed ones.
#[test]
fn rollback_chooses_only_among_signed_versions() {
    let host = signed_host("trust-rollback");
    let (v1, _) = build_and_push(&host, "good");
    let (unsigned, _) = build_and_push(&host, "good");
    let (v3, _) = build_and_push(&host, "good");
    publish_ok(&host, &v1);
    host.put_release("staging", &unsigned);
    publish_ok(&host, &v3);

    let refused = host.agent(&["--env", "staging", "rollback", "--to", &unsigned]);
    assert_eq!(refused.code, 1, "{}", refused.output());
    assert!(refused.stderr.contains("is not a signed release of staging"), "{}", refused.stderr);
    assert!(refused.stderr.contains(&v1) && refused.stderr.contains(&v3), "{}", refused.stderr);
    assert_eq!(release_object(&host, "staging").unwrap().0, format!("{v3}\n"), "nothing written");

    let run = host.agent(&["--env", "staging", "rollback"]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains(&format!("published {v1}")), "{}", run.stderr);
    let releases = host.agent(&["--env", "staging", "releases"]);
    assert!(releases.stdout.lines().any(|l| l.contains(&unsigned) && l.contains("UNSIGNED")), "{}", releases.stdout);
}

/// Why 5: after a key rotation, publishing the current release again signs it with the new
/// key (it was "already the release, nothing written", and hosts with the new key refused
/// it); a garbage signature pre-seeded with the right SHA and digest is replaced the same way.
#[test]
fn publish_signs_the_current_release_again_when_its_signature_does_not_verify() {
    let mut host = signed_host("trust-rotation");
    let (v1, d1) = build_and_push(&host, "good");
    publish_ok(&host, &v1);
    let (public2, secret2) = key_pair(&host, "rotated");
    require_signatures(&host, &public2);
    host.extra_env.retain(|(k, _)| k != "BLOG_AGENT_SIGNING_KEY");
    host.extra_env.push(("BLOG_AGENT_SIGNING_KEY".into(), secret2.display().to_string()));
    let refused = host.sync();
    assert_eq!(refused.code, 1, "hosts with the new key refuse the old signature: {}", refused.output());

    let run = publish(&host, "staging", &v1);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(!run.stderr.contains("nothing was written"), "{}", run.stderr);
    assert_eq!(host.sync().code, 0);
    host.assert_serves(&v1);

    // Someone with bucket write seeds the next SHA with its digest and a garbage signature.
    let (v2, d2) = build_and_push(&host, "good");
    assert_ne!(d1, d2);
    let key = default_key("staging");
    let body = format!("{v2}\n");
    host.s3(|c, b| async move {
        c.put_object()
            .bucket(b)
            .key(key)
            .body(body.into_bytes().into())
            .metadata("blog-digest", d2)
            .metadata("blog-signature", "Z2FyYmFnZQ==")
            .send()
            .await
            .unwrap();
    });
    let run = publish(&host, "staging", &v2);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(!run.stderr.contains("nothing was written"), "{}", run.stderr);
    assert_eq!(host.sync().code, 0);
    host.assert_serves(&v2);
}

/// Why 7: `check` fails whenever the agent would refuse the release; `status` reports the
/// decision's own target, also for a paused host.
#[test]
fn check_and_status_say_what_the_agent_does() {
    let host = signed_host("trust-check");
    let (v1, _) = build_and_push(&host, "good");
    publish_ok(&host, &v1);
    assert_eq!(host.sync().code, 0);
    let check = host.agent(&["--env", "staging", "check"]);
    assert!(check.stdout.lines().any(|l| l.starts_with("ok   release signature:")), "{}", check.output());

    let (unsigned, _) = build_and_push(&host, "good");
    host.put_release("staging", &unsigned);
    let check = host.agent(&["--env", "staging", "check"]);
    assert_eq!(check.code, 1, "{}", check.output());
    assert!(
        check.stdout.lines().any(|l| l.starts_with("FAIL release signature:") && l.contains("carries no signature")),
        "{}",
        check.output()
    );
    let s = status(&host);
    assert_eq!((s["target"]["sha"].as_str(), s["converged"].as_bool()), (Some(v1.as_str()), Some(true)), "{s}");

    // A pause whose pin names another release while this one runs: the agent keeps what
    // runs (the decision), and status says the same.
    let (v2, _) = build_and_push(&host, "good");
    publish_ok(&host, &v2);
    let pause = serde_json::json!({"by": "alice", "reason": "hand-edited", "at": 1, "pinned_sha": v2});
    std::fs::write(host.state_dir().join("pause.json"), pause.to_string()).unwrap();
    let dry = host.agent(&["--env", "staging", "sync", "--dry-run"]);
    assert!(dry.stdout.contains("nothing to do") && dry.stdout.contains(&v1), "{}", dry.output());
    let s = status(&host);
    assert_eq!((s["target"]["sha"].as_str(), s["target"]["source"].as_str()), (Some(v1.as_str()), Some("paused")));
    assert_eq!(s["converged"], true, "{s}");
}

/// An operator's `sync --sha` pins only a verified release, before anything is written.
#[test]
fn a_pin_must_name_a_signed_release() {
    let host = signed_host("trust-pin");
    let (v1, _) = build_and_push(&host, "good");
    let (unsigned, _) = build_and_push(&host, "good");
    publish_ok(&host, &v1);
    let run = host.agent(&["--env", "staging", "sync", "--sha", &unsigned]);
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(run.stderr.contains("is not a signed release of staging") && run.stderr.contains(&v1), "{}", run.stderr);
    assert!(!host.state_dir().join("pause.json").exists(), "no pause was written");
    assert!(host.page().is_none(), "nothing was started");
    let run = host.agent(&["--env", "staging", "sync", "--sha", &v1]);
    assert_eq!(run.code, 0, "{}", run.output());
    host.assert_serves(&v1);
}

/// Why 8: a halt's reason is text from the bucket; `sync` escapes it like every other output.
#[test]
fn sync_escapes_a_halt_reason() {
    let host = Host::new("trust-escape");
    let (v1, _) = build_and_push(&host, "good");
    let (v2, _) = build_and_push(&host, "good");
    assert_eq!(publish(&host, "staging", &v1).code, 0);
    assert_eq!(host.sync().code, 0);
    assert_eq!(publish(&host, "staging", &v2).code, 0);
    write_marker(&host, &v2, "bad \u{1b}[2J\u{1b}]0;pwned\u{7} release", None);
    let run = host.sync();
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains("is halted"), "{}", run.stderr);
    assert!(!run.output().contains('\u{1b}') && !run.output().contains('\u{7}'), "{:?}", run.output());
    host.assert_serves(&v1);
}

/// Why 8: one failed read of the release object's history was remembered as "no rollback
/// target" for the life of `run`: an empty host under a halt stayed dark after S3 answered
/// again. It is read again at the next pass.
#[test]
fn a_failed_history_read_is_retried_and_an_empty_host_under_a_halt_serves() {
    let leader = Host::new("trust-history-retry");
    versioning_on(&leader);
    let (v1, _) = build_and_push(&leader, "good");
    let (v2, _) = build_and_push(&leader, "good");
    assert_eq!(publish(&leader, "staging", &v1).code, 0);
    assert_eq!(publish(&leader, "staging", &v2).code, 0);
    write_marker(&leader, &v2, "bad release", None);

    let proxy = services::CountingProxy::start(moto().rsplit(':').next().unwrap().parse().unwrap());
    proxy.fail_only("versions", 503, "SlowDown");
    let mut empty = Host::new("trust-history-retry-new");
    empty.share_release_with(&leader);
    empty.s3_endpoint = proxy.endpoint();
    empty.write_config("[reconcile]\ninterval = \"1s\"\njitter = \"0s\"\n");
    let agent = empty.start_agent(&[]);
    wait_for("a history read refused", std::time::Duration::from_secs(30), || {
        proxy.requests().iter().any(|r| r.path.contains("versions")).then_some(())
    });
    agent.wait_log("its rollback target is unknown for now", std::time::Duration::from_secs(30));
    assert!(empty.page().is_none(), "nothing to run yet");
    proxy.heal();
    empty.wait_deployed(&v1, std::time::Duration::from_secs(30));
}
