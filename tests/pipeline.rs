//! The release pipeline end to end on the local stack, as the seed's pipeline runs: an image
//! is built and pushed (to the registry hosts pull from, and its manifest to moto's ECR, which
//! `publish` asks), `publish` writes the release object, hosts follow; history, rollback and
//! promote. Moto stands in for S3 and ECR through `AWS_ENDPOINT_URL`.

mod common;

use blog_agent::outside::aws::Aws;
use blog_agent::outside::release::{Expect, ObjectLocation, Provenance, S3Releases, WriteError};
use blog_agent::sha::Sha;
use common::release::*;
use common::*;

#[test]
fn publish_writes_the_sha_and_its_digest_and_a_host_runs_exactly_that_image() {
    let host = Host::new("pipe-follow");
    let (sha, digest) = build_and_push(&host, "good");
    let run = publish(&host, "staging", &sha);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains(&format!("published {sha} ({digest}) to staging")), "{}", run.stderr);
    let (body, meta) = release_object(&host, "staging").expect("the release object");
    assert_eq!(body, format!("{sha}\n"), "the body stays the bare SHA every reader understands");
    assert_eq!(meta.get("blog-digest"), Some(&digest), "{meta:?}");
    assert!(meta.contains_key("blog-published-by") && meta.contains_key("blog-published-at"), "{meta:?}");
    // Publishing the same release again writes nothing.
    let again = publish(&host, "staging", &sha);
    assert_eq!(again.code, 0, "{}", again.output());
    assert!(again.stderr.contains("nothing was written"), "{}", again.stderr);

    let run = host.sync();
    assert_eq!(run.code, 0, "{}", run.output());
    host.assert_serves(&sha);
    assert_eq!(host.label("io.blog-agent.digest"), digest);
    let status = host.agent(&["--env", "staging", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["desired"]["digest"], digest.as_str(), "{status}");
    assert_eq!(status["container"]["digest"], digest.as_str(), "{status}");
}

#[test]
fn publish_refuses_a_sha_that_was_never_pushed_and_changes_nothing() {
    let host = Host::new("pipe-typo");
    let (sha, _) = build_and_push(&host, "good");
    assert_eq!(publish(&host, "staging", &sha).code, 0);
    let before = release_object(&host, "staging");
    let never = unique_sha("never-pushed");
    let run = publish(&host, "staging", &never);
    assert_eq!(run.code, 1, "{}", run.output());
    assert_eq!(
        run.stderr.lines().filter(|l| l.starts_with("blog-agent: error")).count(),
        1,
        "one line: {}",
        run.stderr
    );
    assert!(run.stderr.contains("is not in ECR: push it first"), "{}", run.stderr);
    assert_eq!(release_object(&host, "staging"), before, "the object is unchanged");
    // A malformed SHA is a usage error, before anything is contacted.
    assert_eq!(publish(&host, "staging", "main").code, 2);
}

#[test]
fn a_tag_pushed_again_after_publish_changes_nothing_hosts_run() {
    let host = Host::new("pipe-moved");
    let (sha, digest) = build_and_push(&host, "good");
    assert_eq!(publish(&host, "staging", &sha).code, 0);
    let moved = repush(&host, &sha);
    assert_ne!(moved, digest);
    // A new host pulls the published digest, not the tag: it serves what was published.
    let run = host.sync();
    assert_eq!(run.code, 0, "{}", run.output());
    host.assert_serves(&sha);
    assert_eq!(host.label("io.blog-agent.digest"), digest);
    // And publishing it again under the same SHA is not how to fix it: publish says what is
    // there now (the new digest) only if asked to publish that.
    let rollback = host.agent(&["--env", "staging", "rollback", "--to", &sha]);
    assert_eq!(rollback.code, 1, "{}", rollback.output());
}

#[test]
fn two_publishes_from_the_same_read_cannot_both_win() {
    let host = Host::new("pipe-race");
    let location = ObjectLocation { bucket: host.bucket.clone(), key: default_key("staging") };
    let (a, b) = (Sha::parse(&unique_sha("a")).unwrap(), Sha::parse(&unique_sha("b")).unwrap());
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let aws = Aws::load("127.0.0.1:5000").await;
        let s3 = S3Releases::with_aws(&aws);
        let meta = Provenance::default();
        // Both publishers saw no object: the first write wins, the second is refused.
        s3.write(&location, &a, &meta, None, &Expect::Absent).await.unwrap();
        let second = s3.write(&location, &b, &meta, None, &Expect::Absent).await;
        assert!(matches!(second, Err(WriteError::Conflict { .. })), "{second:?}");
        // Both saw the same ETag: the same.
        let etag = s3.etag(&location).await.unwrap().unwrap();
        s3.write(&location, &b, &meta, None, &Expect::ETag(etag.clone())).await.unwrap();
        let stale = s3.write(&location, &a, &meta, None, &Expect::ETag(etag)).await;
        let err = stale.unwrap_err();
        assert!(matches!(err, WriteError::Conflict { .. }), "{err:?}");
        assert!(err.to_string().contains("nothing was written"), "{err}");
    });
    assert_eq!(release_object(&host, "staging").unwrap().0, format!("{b}\n"));
}

#[test]
fn releases_lists_the_history_and_rollback_moves_the_hosts_back() {
    let host = Host::new("pipe-history");
    versioning_on(&host);
    let (v1, d1) = build_and_push(&host, "good");
    let (v2, _) = build_and_push(&host, "good");
    assert_eq!(publish(&host, "staging", &v1).code, 0);
    assert_eq!(host.sync().code, 0);
    assert_eq!(publish(&host, "staging", &v2).code, 0);
    assert_eq!(host.sync().code, 0);
    host.assert_serves(&v2);

    let run = host.agent(&["--env", "staging", "releases", "--json"]);
    assert_eq!(run.code, 0, "{}", run.output());
    let history: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let shas: Vec<&str> = history["releases"].as_array().unwrap().iter().map(|r| r["sha"].as_str().unwrap()).collect();
    assert_eq!(shas, [v2.as_str(), v1.as_str()], "{history}");
    assert_eq!(history["releases"][0]["current"], true);
    assert_eq!(history["releases"][1]["digest"], d1.as_str());
    assert_eq!(history["versioning_off"], false);
    let text = host.agent(&["--env", "staging", "releases"]);
    assert!(text.stdout.contains(&format!("* {v2}")), "{}", text.stdout);

    let run = host.agent(&["--env", "staging", "rollback"]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains(&format!("published {v1}")), "{}", run.stderr);
    assert_eq!(host.sync().code, 0);
    host.assert_serves(&v1);
}

#[test]
fn releases_says_how_to_turn_versioning_on() {
    let host = Host::new("pipe-noversions");
    let (v1, _) = build_and_push(&host, "good");
    assert_eq!(publish(&host, "staging", &v1).code, 0);
    let run = host.agent(&["--env", "staging", "releases"]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains("put-bucket-versioning"), "{}", run.stderr);
    let rollback = host.agent(&["--env", "staging", "rollback"]);
    assert_eq!(rollback.code, 1, "{}", rollback.output());
    assert!(rollback.stderr.contains("turn on the bucket's versioning"), "{}", rollback.stderr);
}

#[test]
fn promote_moves_production_to_staging_s_digest_after_the_soak_and_refuses_the_rest() {
    let staging = Host::new("pipe-promote");
    versioning_on(&staging);
    let (v1, d1) = build_and_push(&staging, "good");
    assert_eq!(publish(&staging, "staging", &v1).code, 0);

    let soaking = staging.agent(&["promote", &v1, "--from", "staging", "--to", "production", "--soak", "1h"]);
    assert_eq!(soaking.code, 1, "{}", soaking.output());
    assert!(soaking.stderr.contains("has not soaked in staging yet"), "{}", soaking.stderr);
    assert!(release_object(&staging, "production").is_none());

    let run = staging.agent(&["promote", &v1, "--from", "staging", "--to", "production", "--soak", "0s"]);
    assert_eq!(run.code, 0, "{}", run.output());
    let (body, meta) = release_object(&staging, "production").expect("production's release");
    assert_eq!((body.as_str(), meta.get("blog-digest")), (format!("{v1}\n").as_str(), Some(&d1)));
    // A production host follows.
    let mut prod = Host::new("pipe-promote-prod");
    prod.share_release_with(&staging);
    let run = prod.agent(&["--env", "production", "sync"]);
    assert_eq!(run.code, 0, "{}", run.output());
    prod.assert_serves(&v1);

    // Never published to staging: refused.
    let (v2, _) = build_and_push(&staging, "good");
    let never = staging.agent(&["promote", &v2, "--from", "staging", "--to", "production"]);
    assert_eq!(never.code, 1, "{}", never.output());
    assert!(never.stderr.contains("was never published to staging"), "{}", never.stderr);
    // Halted in staging: refused.
    assert_eq!(publish(&staging, "staging", &v2).code, 0);
    let halt = staging.agent(&["--env", "staging", "halt", &v2, "--reason", "500s in staging"]);
    assert_eq!(halt.code, 0, "{}", halt.output());
    let halted = staging.agent(&["promote", &v2, "--from", "staging", "--to", "production"]);
    assert_eq!(halted.code, 1, "{}", halted.output());
    assert!(halted.stderr.contains("is halted for staging"), "{}", halted.stderr);
    assert_eq!(release_object(&staging, "production").unwrap().0, format!("{v1}\n"));
    // And publish refuses a halted SHA too.
    let refused = publish(&staging, "staging", &v2);
    assert_eq!(refused.code, 1, "{}", refused.output());
    assert!(refused.stderr.contains("is halted for staging"), "{}", refused.stderr);
}

/// Issue 18 item 5: with `[release] public_key`, hosts deploy only releases signed with its
/// secret key: a SHA written into the bucket by someone with write access alone is refused,
/// and so is a release signed with another key; publish signs with the key CI holds.
#[test]
fn with_a_public_key_hosts_run_only_signed_releases() {
    let mut host = Host::new("pipe-signed");
    let (public, secret) = key_pair(&host, "ci");
    let (_, other) = key_pair(&host, "intruder");
    host.write_config("");
    let config = std::fs::read_to_string(&host.config).unwrap();
    let config = config.replacen("[release]\n", &format!("[release]\npublic_key = \"{public}\"\n"), 1);
    std::fs::write(&host.config, config).unwrap();

    let (v1, _) = build_and_push(&host, "good");
    // Without the key, publish refuses rather than publish what hosts would reject.
    let unsigned = publish(&host, "staging", &v1);
    assert_eq!(unsigned.code, 1, "{}", unsigned.output());
    assert!(unsigned.stderr.contains("BLOG_AGENT_SIGNING_KEY"), "{}", unsigned.stderr);
    host.extra_env.push(("BLOG_AGENT_SIGNING_KEY".into(), secret.display().to_string()));
    let run = publish(&host, "staging", &v1);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(release_object(&host, "staging").unwrap().1.contains_key("blog-signature"));
    assert_eq!(host.sync().code, 0);
    host.assert_serves(&v1);

    // Someone with write access to the bucket only: a bare SHA, unsigned.
    let (v2, _) = build_and_push(&host, "good");
    host.put_release("staging", &v2);
    let run = host.sync();
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(run.stderr.contains("carries no signature"), "{}", run.stderr);
    host.assert_serves(&v1);

    // Signed with another key: refused too (publish itself checks its key against the hosts').
    host.extra_env.retain(|(k, _)| k != "BLOG_AGENT_SIGNING_KEY");
    host.extra_env.push(("BLOG_AGENT_SIGNING_KEY".into(), other.display().to_string()));
    let run = publish(&host, "staging", &v2);
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(run.stderr.contains("does not verify with [release] public_key"), "{}", run.stderr);
    host.assert_serves(&v1);
}
