//! SHAs as operators type them (issue 25): every command that names a release (`halt`,
//! `unhalt`, `sync --sha`, `rollback --to`, `promote`) takes a unique prefix of a release the
//! environment's history holds, acts on its full SHA, and refuses an unknown or ambiguous
//! prefix, listing the releases, before writing anything. On the local stack: moto's S3 with
//! versioning (the history), its ECR, the registry and Docker.

mod common;

use common::release::*;
use common::*;

/// The body of `key` in the host's bucket, if there is one.
fn object(host: &Host, key: &str) -> Option<String> {
    let key = key.to_owned();
    host.s3(|c, b| async move {
        let out = c.get_object().bucket(b).key(key).send().await.ok()?;
        String::from_utf8(out.body.collect().await.ok()?.to_vec()).ok()
    })
}

/// Every key under `prefix` in the host's bucket.
fn keys(host: &Host, prefix: &str) -> Vec<String> {
    let prefix = prefix.to_owned();
    host.s3(|c, b| async move {
        let listed = c.list_objects_v2().bucket(b).prefix(prefix).send().await.unwrap();
        listed.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect()
    })
}

fn marker(host: &Host, sha: &str) -> serde_json::Value {
    let body = object(host, &format!("staging/halted/{sha}")).unwrap_or_else(|| panic!("a marker for {sha}"));
    serde_json::from_str(&body).unwrap()
}

/// The bug: `halt f51a30f` answered "halted" and wrote `staging/halted/f51a30f`, which no host
/// looks up; `status` showed no halt and hosts kept applying the release. Its rollback target
/// was the halted release itself (the newest version of the history).
#[test]
fn a_seven_character_halt_halts_the_published_release_and_the_other_commands_take_prefixes_too() {
    let host = Host::new("short-halt");
    versioning_on(&host);
    let (v1, _) = build_and_push(&host, "good");
    let (v2, _) = build_and_push(&host, "good");
    assert_eq!(publish(&host, "staging", &v1).code, 0);
    assert_eq!(host.sync().code, 0);
    host.assert_serves(&v1);
    assert_eq!(publish(&host, "staging", &v2).code, 0);

    // Halted as `git log --oneline` shows it, before this host applied it.
    let run = host.agent(&["--env", "staging", "halt", &v2[..7], "--reason", "INC-25: 500s on /feed"]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains(&format!("{v2} halted in staging")), "{}", run.stderr);
    assert_eq!(keys(&host, "staging/halted/"), [format!("staging/halted/{v2}")], "the full SHA is the key");
    let body = marker(&host, &v2);
    assert_eq!(body["sha"], v2.as_str(), "and the body: {body}");
    // The history's newest version is the halted release: the target is the one before.
    assert_eq!(body["rolled_back_to"], v1.as_str(), "{body}");
    let status = host.agent(&["--env", "staging", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["halt"]["sha"], v2.as_str(), "{status}");
    let run = host.sync();
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains("halted"), "{}", run.stderr);
    host.assert_serves(&v1);

    // rollback --to, promote and sync --sha name releases the same way.
    let run = host.agent(&["--env", "staging", "rollback", "--to", &v1[..7]]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert_eq!(release_object(&host, "staging").unwrap().0, format!("{v1}\n"));
    let run = host.agent(&["promote", &v1[..9], "--from", "staging", "--to", "production", "--soak", "0s"]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert_eq!(release_object(&host, "production").unwrap().0, format!("{v1}\n"));
    let run = host.agent(&["--env", "staging", "sync", "--sha", &v1[..7]]);
    assert_eq!(run.code, 0, "{}", run.output());
    let pause: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(host.state_dir().join("pause.json")).unwrap()).unwrap();
    assert_eq!(pause["pinned_sha"], v1.as_str(), "{pause}");
    host.assert_serves(&v1);

    let run = host.agent(&["--env", "staging", "unhalt", &v2[..7]]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains(&format!("{v2} unhalted in staging")), "{}", run.stderr);
    assert!(keys(&host, "staging/halted/").is_empty());
}

/// A prefix that names two releases, or none, is refused by every command on one line that
/// lists the releases, with exit 1 and nothing written: no marker, no vote, no release object,
/// no pause.
#[test]
fn an_ambiguous_or_unknown_prefix_is_refused_listing_the_releases_and_writes_nothing() {
    let host = Host::new("short-refused");
    versioning_on(&host);
    // Two releases sharing their first 7 digits (any 40 hex digits make a SHA).
    let twin = |digit: char| format!("f51a30f{digit}{}", &unique_sha("twin")[8..]);
    let (a, b) = (twin('0'), twin('1'));
    host.put_release("staging", &a);
    host.put_release("staging", &b);
    let before = release_object(&host, "staging");

    for (typed, says) in [("f51a30f", "is ambiguous in staging"), ("abcdef0", "names no release of staging")] {
        let commands: [&[&str]; 5] = [
            &["--env", "staging", "halt", typed, "--reason", "INC-25"],
            &["--env", "staging", "unhalt", typed],
            &["--env", "staging", "sync", "--sha", typed],
            &["--env", "staging", "rollback", "--to", typed],
            &["promote", typed, "--from", "staging", "--to", "production"],
        ];
        for args in commands {
            let run = host.agent(args);
            assert_eq!(run.code, 1, "{args:?}: {}", run.output());
            let errors: Vec<&str> = run.stderr.lines().filter(|l| l.starts_with("blog-agent: error: ")).collect();
            assert_eq!(errors.len(), 1, "{args:?}: one line: {}", run.stderr);
            let line = errors[0];
            assert!(line.contains(says) && line.contains(&a) && line.contains(&b), "{args:?}: {line}");
            assert!(line.contains("nothing was written"), "{args:?}: {line}");
        }
    }
    // A halt by a longer, unique prefix of one of them is the full SHA's.
    let run = host.agent(&["--env", "staging", "halt", &b[..8], "--reason", "INC-25", "--to", &a[..8]]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert_eq!(keys(&host, "staging/halted/"), [format!("staging/halted/{b}")]);
    assert_eq!(marker(&host, &b)["rolled_back_to"], a.as_str());
    let run = host.agent(&["--env", "staging", "unhalt", &b]);
    assert_eq!(run.code, 0, "{}", run.output());

    assert!(keys(&host, "staging/halted/").is_empty(), "no marker or vote");
    assert_eq!(release_object(&host, "staging"), before, "the release object is unchanged");
    assert!(release_object(&host, "production").is_none(), "nothing promoted");
    assert!(!host.state_dir().join("pause.json").exists(), "no pin");
    // A malformed value stays a usage error, before anything is contacted.
    for args in [
        &["--env", "staging", "halt", "f51a30", "--reason", "x"][..],
        &["--env", "staging", "sync", "--sha", "F51A30F"],
    ] {
        assert_eq!(host.agent(args).code, 2, "{args:?}");
    }
}

/// `halt` without `--to` of the only release ever published records no rollback target, and
/// says so, rather than the halted release itself.
#[test]
fn a_halt_of_the_only_release_records_no_rollback_target_and_says_so() {
    let host = Host::new("short-alone");
    versioning_on(&host);
    let only = unique_sha("alone");
    host.put_release("staging", &only);
    let run = host.agent(&["--env", "staging", "halt", &only[..7], "--reason", "INC-25"]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains("no rollback target"), "{}", run.stderr);
    let body = marker(&host, &only);
    assert_eq!((body["sha"].as_str(), &body["rolled_back_to"]), (Some(only.as_str()), &serde_json::Value::Null));
}
