//! Fleet foundations against the real local stack: halt markers in moto's S3 (the library and
//! the `halt`/`unhalt` commands end to end), and the metrics textfile checked by the
//! reference parser of the Prometheus text format.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::json;

use blog_agent::fleet::halt::{prefix_for, Marker, Vote};
use blog_agent::fleet::metrics::Metrics;
use blog_agent::outside::halts::{HaltError, HaltMarkers, HaltSource};
use blog_agent::sha::Sha;
use common::imds::FakeImds;
use common::{unique_sha, wait_for, AgentProcess, Host};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The object at `key`, as text; `None` when S3 says it does not exist.
fn object(host: &Host, key: &str) -> Option<String> {
    let key = key.to_owned();
    host.s3(|c, b| async move {
        match c.get_object().bucket(b).key(key).send().await {
            Ok(out) => Some(String::from_utf8(out.body.collect().await.unwrap().to_vec()).unwrap()),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => None,
            Err(e) => panic!("get object: {e:?}"),
        }
    })
}

fn marker(sha: &str, reason: &str) -> Marker {
    Marker {
        sha: sha.into(),
        environment: "staging".into(),
        instance_id: "i-0123456789abcdef0".into(),
        reason: reason.into(),
        at: 1_750_000_000,
        rolled_back_to: Some("1a2b3c4".into()),
        by: None,
    }
}

#[test]
fn halt_marker_is_written_read_and_cleared_beside_the_release_key() {
    let host = Host::new("halt-markers");
    let markers = HaltMarkers::with_aws(&host.aws(), host.bucket.clone());
    let sha = unique_sha("halted");
    let parsed = Sha::parse(&sha).unwrap();
    let prefix = prefix_for("staging/stagebuild.txt", None, "staging");
    assert_eq!(prefix, "staging/halted/");
    let key = format!("staging/halted/{sha}");
    runtime().block_on(async {
        assert_eq!(markers.get(&prefix, &parsed).await.unwrap(), None, "nothing halted yet");
        assert!(markers.mark(&prefix, &marker(&sha, "candidate probe: HTTP 500")).await.unwrap());
        let got = markers.get(&prefix, &parsed).await.unwrap().expect("halted");
        assert_eq!(got, marker(&sha, "candidate probe: HTTP 500"));
        assert_eq!(got.rolled_back_to_sha(), Some(Sha::parse("1a2b3c4").unwrap()));
        // Through the trait the loop uses: one list, then the marker.
        let reading = HaltSource::read(&markers, &prefix, &parsed).await.unwrap();
        assert_eq!((reading.marker.is_some(), reading.votes.len()), (true, 0));
        // Another environment's folder is another halt.
        assert_eq!(markers.get("production/halted/", &parsed).await.unwrap(), None);
    });
    let body: serde_json::Value = serde_json::from_str(&object(&host, &key).expect("marker object")).unwrap();
    assert_eq!(
        body,
        json!({
            "sha": sha, "environment": "staging", "instance_id": "i-0123456789abcdef0",
            "reason": "candidate probe: HTTP 500", "at": 1_750_000_000u64, "rolled_back_to": "1a2b3c4", "by": null
        })
    );
    runtime().block_on(async {
        // The first marker wins: a second failing host does not overwrite its reason.
        assert!(!markers.mark(&prefix, &marker(&sha, "second host")).await.unwrap());
        assert_eq!(markers.get(&prefix, &parsed).await.unwrap().unwrap().reason, "candidate probe: HTTP 500");
        assert_eq!(markers.clear(&prefix, &parsed).await.unwrap(), Some(true), "there was a marker");
        assert_eq!(markers.get(&prefix, &parsed).await.unwrap(), None);
        assert_eq!(markers.clear(&prefix, &parsed).await.unwrap(), Some(false), "nothing left to clear");
    });
    assert_eq!(object(&host, &key), None);
}

fn vote(sha: &str, env: &str, host: &str) -> Vote {
    Vote {
        sha: sha.into(),
        environment: env.into(),
        voter: host.into(),
        instance_id: host.into(),
        verdict: "never-answered".into(),
        evidence: "http://172.17.0.9:80/ did not answer 2xx (HTTP 500)".into(),
        at: 1_750_000_000,
        rolled_back_to: Some("1a2b3c4".into()),
        key_voter: None,
    }
}

/// Votes on real S3: one object per host beside the marker key, listed in one call, counted
/// per environment, and removed by an unhalt.
#[test]
fn halt_votes_are_one_object_per_host_and_halt_once_enough_hosts_agree() {
    let host = Host::new("halt-votes");
    let markers = HaltMarkers::with_aws(&host.aws(), host.bucket.clone());
    let sha = unique_sha("voted");
    let parsed = Sha::parse(&sha).unwrap();
    let prefix = prefix_for("staging/stagebuild.txt", None, "staging");
    runtime().block_on(async {
        assert!(markers.vote(&prefix, &vote(&sha, "staging", "i-0aaa")).await.unwrap());
        assert!(!markers.vote(&prefix, &vote(&sha, "staging", "i-0aaa")).await.unwrap(), "one vote per host");
        // A short SHA whose key is a prefix of this one's is another release.
        let short = Sha::parse(&sha[..7]).unwrap();
        assert!(markers.vote(&prefix, &vote(short.as_str(), "staging", "i-0ccc")).await.unwrap());
        assert_eq!(markers.read(&prefix, &short).await.unwrap().votes.len(), 1);
        let reading = markers.read(&prefix, &parsed).await.unwrap();
        assert_eq!(reading.votes.len(), 1, "{reading:?}");
        assert_eq!(reading.halt(&parsed, "staging", 2), None, "one host is not enough");
        assert!(reading.halt(&parsed, "staging", 1).is_some(), "halt_after = 1: one host halts");
        assert!(markers.vote(&prefix, &vote(&sha, "production", "i-0bbb")).await.unwrap());
        let reading = markers.read(&prefix, &parsed).await.unwrap();
        assert_eq!(reading.halt(&parsed, "staging", 2), None, "another environment's vote does not count");
        assert!(markers.vote(&prefix, &vote(&sha, "staging", "i-0bbb-2")).await.unwrap());
        let halt = markers.read(&prefix, &parsed).await.unwrap().halt(&parsed, "staging", 2).expect("two hosts");
        assert_eq!(halt.rolled_back_to_sha(), Some(Sha::parse("1a2b3c4").unwrap()));
        assert_eq!(markers.clear_votes(&prefix, &parsed).await.unwrap(), 3);
        assert_eq!(markers.read(&prefix, &parsed).await.unwrap(), Default::default());
    });
    assert!(object(&host, &format!("staging/halted/{sha}/i-0aaa")).is_none());
    assert!(object(&host, &format!("staging/halted/{}/i-0ccc", &sha[..7])).is_some(), "another release's votes stay");
}

#[test]
fn halt_marker_for_a_release_key_with_no_folder_goes_under_halted() {
    let host = Host::new("halt-root-key");
    let markers = HaltMarkers::with_aws(&host.aws(), host.bucket.clone());
    let sha = unique_sha("root");
    let prefix = prefix_for("build.txt", None, "staging");
    assert_eq!(prefix, "halted/");
    runtime().block_on(async {
        assert!(markers.mark(&prefix, &marker(&sha, "r")).await.unwrap());
        assert!(markers.get(&prefix, &Sha::parse(&sha).unwrap()).await.unwrap().is_some());
    });
    assert!(object(&host, &format!("halted/{sha}")).is_some());
}

#[test]
fn any_object_at_a_marker_key_halts_and_a_missing_bucket_is_named() {
    let host = Host::new("halt-foreign");
    let sha = unique_sha("foreign");
    host.put_object(&format!("staging/halted/{sha}"), b"halt!\n".to_vec());
    let markers = HaltMarkers::with_aws(&host.aws(), host.bucket.clone());
    let got = runtime()
        .block_on(markers.get("staging/halted/", &Sha::parse(&sha).unwrap()))
        .unwrap()
        .expect("an object by hand halts too");
    assert!(got.reason.contains("not a blog-agent marker"), "{}", got.reason);
    assert_eq!((got.sha.as_str(), got.rolled_back_to_sha()), (sha.as_str(), None));

    let missing = format!("{}-gone", host.bucket);
    let markers = HaltMarkers::with_aws(&host.aws(), missing.clone());
    match runtime().block_on(markers.get("staging/halted/", &Sha::parse(&sha).unwrap())) {
        Err(e @ HaltError::NoBucket { .. }) => assert!(e.to_string().contains(&missing), "{e}"),
        other => panic!("expected NoBucket, got {other:?}"),
    }
}

/// An IMDSv2 stand-in that knows the instance id and the Environment tag (the shared one in
/// tests/common has no instance id).
fn imds_with_instance_id(instance_id: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut out = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        if header.trim().is_empty() {
                            break;
                        }
                        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    let _ = reader.read_exact(&mut body);
                    let mut parts = line.split_whitespace();
                    let (status, extra, body) = match (parts.next(), parts.next()) {
                        (Some("PUT"), _) => ("200 OK", "X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n", "token"),
                        (_, Some("/latest/meta-data/instance-id")) => ("200 OK", "", instance_id),
                        (_, Some("/latest/meta-data/tags/instance/Environment")) => ("200 OK", "", "staging"),
                        _ => ("404 Not Found", "", ""),
                    };
                    let response = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n{extra}\r\n{body}", body.len());
                    if out.write_all(response.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    endpoint
}

#[test]
fn halt_and_unhalt_commands_write_and_remove_the_marker() {
    let host = Host::new("halt-cli");
    let sha = unique_sha("cli");
    let key = format!("staging/halted/{sha}");
    let reason = "INC-7: \"500\" on /feed\\rss";
    let before = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    let run = host.agent(&["--env", "staging", "halt", &sha, "--reason", reason]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains(&format!("{sha} halted in staging")) && run.stderr.contains(&key), "{}", run.stderr);
    let body: serde_json::Value = serde_json::from_str(&object(&host, &key).expect("marker written")).unwrap();
    assert_eq!(body["sha"], sha.as_str());
    assert_eq!(body["environment"], "staging");
    assert_eq!(body["reason"], reason);
    assert_eq!(body["rolled_back_to"], serde_json::Value::Null);
    let at = body["at"].as_u64().unwrap();
    assert!(at >= before && at <= before + 120, "at {at}, started {before}");
    // Off EC2 (nothing answers instance metadata here): the machine id, else the hostname.
    let identity = body["instance_id"].as_str().unwrap();
    assert!(!identity.is_empty(), "{body}");
    if let Ok(machine_id) = std::fs::read_to_string("/etc/machine-id") {
        if !machine_id.trim().is_empty() && machine_id.trim() != "uninitialized" {
            assert_eq!(identity, machine_id.trim());
        }
    }
    assert!(body["by"].as_str().unwrap().contains("uid "), "{body}");

    // Halting again keeps the first marker and says whose it is.
    let run = host.agent(&["--env", "staging", "halt", &sha, "--reason", "again"]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains("already halted") && run.stderr.contains(reason), "{}", run.stderr);
    let body: serde_json::Value = serde_json::from_str(&object(&host, &key).unwrap()).unwrap();
    assert_eq!(body["reason"], reason);

    let run = host.agent(&["--env", "staging", "unhalt", &sha]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains(&format!("{sha} unhalted in staging")), "{}", run.stderr);
    assert_eq!(object(&host, &key), None);
    let run = host.agent(&["--env", "staging", "unhalt", &sha]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains("was not halted"), "{}", run.stderr);
}

#[test]
fn halt_on_ec2_records_the_instance_id_and_the_tagged_environment() {
    let mut host = Host::new("halt-ec2");
    host.imds_endpoint = Some(imds_with_instance_id("i-0f1ee7ba5eba11000"));
    let sha = unique_sha("ec2");
    let run = host.agent(&["halt", &sha, "--reason", "canary failed"]);
    assert_eq!(run.code, 0, "{}", run.output());
    let body: serde_json::Value =
        serde_json::from_str(&object(&host, &format!("staging/halted/{sha}")).expect("marker")).unwrap();
    assert_eq!(body["instance_id"], "i-0f1ee7ba5eba11000");
    assert_eq!(body["environment"], "staging");
}

#[test]
fn halt_refuses_a_bad_sha_a_bad_env_and_an_empty_reason_before_touching_s3() {
    let host = Host::new("halt-usage");
    let cases: &[(&[&str], &str)] = &[
        (&["--env", "staging", "halt", "3F2A9C1", "--reason", "x"], "SHA \"3F2A9C1\" is not a git SHA"),
        (&["--env", "staging", "halt", "latest", "--reason", "x"], "SHA \"latest\" is not a git SHA"),
        (&["--env", "staging", "unhalt", "abc"], "SHA \"abc\" is not a git SHA: it is too short"),
        (&["--env", "qa", "halt", "3f2a9c1", "--reason", "x"], "--env \"qa\": not an allowed environment"),
        (&["--env", "staging", "halt", "3f2a9c1", "--reason", "  "], "--reason \"  \": say why"),
    ];
    for (args, says) in cases {
        let run = host.agent(args);
        assert_eq!(run.code, 2, "{args:?}: {}", run.output());
        let lines: Vec<&str> = run.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{args:?}: one line: {}", run.stderr);
        assert!(lines[0].starts_with("blog-agent: error: ") && lines[0].contains(says), "{args:?}: {}", run.stderr);
    }
    // A missing --reason is clap's usage error.
    let run = host.agent(&["--env", "staging", "halt", "3f2a9c1"]);
    assert_eq!(run.code, 2, "{}", run.output());
    assert!(run.stderr.contains("--reason"), "{}", run.stderr);
    let listed = host.s3(|c, b| async move { c.list_objects_v2().bucket(b).send().await.unwrap().key_count() });
    assert_eq!(listed, Some(0), "nothing was written");
}

#[test]
fn halt_and_unhalt_help_have_a_purpose_and_an_example_and_man_pages() {
    // The same bar as tests/operator.rs sets for the other subcommands.
    let host = Host::new("halt-help");
    for sub in ["halt", "unhalt"] {
        let run = host.agent(&[sub, "--help"]);
        assert_eq!(run.code, 0, "{sub}: {}", run.output());
        let first = run.stdout.lines().next().unwrap_or_default();
        assert!(!first.is_empty() && first.len() < 200, "{sub}: one-line purpose first: {first:?}");
        assert!(run.stdout.contains(&format!("Examples:\n  blog-agent {sub} ")), "{sub}:\n{}", run.stdout);
        for global in ["--config", "--env"] {
            assert!(run.stdout.contains(global), "{sub} --help lacks {global}");
        }
    }
    let dir = host.path().join("assets");
    let run = host.agent(&["generate-assets", dir.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.output());
    for (file, text) in [
        ("blog-agent-halt.1", "halt"),
        ("blog-agent-unhalt.1", "unhalt"),
        ("blog-agent.1", "unhalt"),
        ("blog-agent.bash", "unhalt"),
        ("_blog-agent", "unhalt"),
        ("blog-agent.fish", "unhalt"),
    ] {
        let content = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(content.contains(text), "{file} lacks {text}");
    }
}

/// The virtualenv scripts/install-deps.sh fills (moto, prometheus_client).
fn venv_python() -> PathBuf {
    let stack = std::env::var_os("BLOG_AGENT_STACK_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo_root().join(".stack"));
    stack.join("venv/bin/python")
}

/// Parses `text` with prometheus_client's text-format parser; the families as JSON, or the
/// parser's error.
fn reference_parse(text: &str) -> Result<serde_json::Value, String> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = [
    {"name": f.name, "type": f.type, "help": f.documentation,
     "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in f.samples]}
    for f in text_string_to_metric_families(sys.stdin.read())
]
print(json.dumps(families))
"#;
    let python = venv_python();
    let mut child = Command::new(&python)
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/install-deps.sh)", python.display()));
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("No module named"), "{stderr} (run scripts/install-deps.sh)");
    if !out.status.success() {
        return Err(stderr);
    }
    Ok(serde_json::from_slice(&out.stdout).unwrap())
}

#[test]
fn metrics_textfile_is_valid_per_the_reference_parser() {
    let m = Metrics::new();
    // Label values with every character the format escapes.
    let environment = "stag\"ing\\with\nnewline";
    m.set_release(environment, "3f2a9c1", "serving");
    m.set_digest(Some(("3f2a9c1".into(), format!("sha256:{}", "ab".repeat(32)))));
    m.record_pass(true, SystemTime::UNIX_EPOCH + Duration::from_millis(1_750_000_000_250));
    m.record_deploy(true);
    m.record_deploy(false);
    m.record_rollback();
    m.set_halted(vec!["1a2b3c4".into(), "quote\"d".into()]);
    m.set_rollout_wait(Duration::from_millis(12_500));
    // A bake whose end has passed: 0 s left, whenever the test runs.
    m.set_bake(Some(("3f2a9c1".into(), 1_700_000_000)));
    m.record_bake(false);
    m.add_s3_request();
    m.add_s3_request();
    m.add_ecr_call();
    m.set_disk(blog_agent::fleet::metrics::DiskGauges {
        free: Some(5 << 30),
        min_free: 2 << 30,
        short: true,
        need: Some(3 << 30),
    });
    let dir = std::env::temp_dir().join(format!("blog-agent-fleet-metrics-{}", std::process::id()));
    let path = dir.join("blog_agent.prom");
    m.write(&path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    let families = reference_parse(&text).unwrap_or_else(|e| panic!("the parser refused the file: {e}\n{text}"));
    let families = families.as_array().unwrap();
    let expected_types = [
        ("blog_agent_build_info", "gauge"),
        ("blog_agent_release_info", "gauge"),
        ("blog_agent_release_digest_info", "gauge"),
        ("blog_agent_converged", "gauge"),
        ("blog_agent_last_pass_timestamp_seconds", "gauge"),
        // The parser names a counter family without its `_total`; its samples keep it.
        ("blog_agent_deploys", "counter"),
        ("blog_agent_rollbacks", "counter"),
        ("blog_agent_halted", "gauge"),
        ("blog_agent_rollout_wait_seconds", "gauge"),
        ("blog_agent_clock_offset_seconds", "gauge"),
        ("blog_agent_disk_free_bytes", "gauge"),
        ("blog_agent_disk_min_free_bytes", "gauge"),
        ("blog_agent_disk_short", "gauge"),
        ("blog_agent_disk_needed_bytes", "gauge"),
        ("blog_agent_baking", "gauge"),
        ("blog_agent_bake_remaining_seconds", "gauge"),
        ("blog_agent_bake_ends_timestamp_seconds", "gauge"),
        ("blog_agent_bakes", "counter"),
        ("blog_agent_s3_requests", "counter"),
        ("blog_agent_ecr_calls", "counter"),
    ];
    let got_types: Vec<(&str, &str)> =
        families.iter().map(|f| (f["name"].as_str().unwrap(), f["type"].as_str().unwrap())).collect();
    assert_eq!(got_types, expected_types, "{text}");
    for f in families {
        assert!(!f["help"].as_str().unwrap().is_empty(), "{} has no HELP", f["name"]);
    }
    let samples: Vec<(String, serde_json::Value, f64)> = families
        .iter()
        .flat_map(|f| f["samples"].as_array().unwrap().iter())
        .map(|s| (s["name"].as_str().unwrap().to_owned(), s["labels"].clone(), s["value"].as_f64().unwrap()))
        .collect();
    let want = vec![
        ("blog_agent_build_info", json!({"version": blog_agent::VERSION, "commit": blog_agent::COMMIT}), 1.0),
        ("blog_agent_release_info", json!({"environment": environment, "sha": "3f2a9c1", "state": "serving"}), 1.0),
        (
            "blog_agent_release_digest_info",
            json!({"sha": "3f2a9c1", "digest": format!("sha256:{}", "ab".repeat(32))}),
            1.0,
        ),
        ("blog_agent_converged", json!({}), 1.0),
        ("blog_agent_last_pass_timestamp_seconds", json!({}), 1_750_000_000.25),
        ("blog_agent_deploys_total", json!({"result": "success"}), 1.0),
        ("blog_agent_deploys_total", json!({"result": "failure"}), 1.0),
        ("blog_agent_rollbacks_total", json!({}), 1.0),
        ("blog_agent_halted", json!({"sha": "1a2b3c4"}), 1.0),
        ("blog_agent_halted", json!({"sha": "quote\"d"}), 1.0),
        ("blog_agent_rollout_wait_seconds", json!({}), 12.5),
        ("blog_agent_disk_free_bytes", json!({}), 5_368_709_120.0),
        ("blog_agent_disk_min_free_bytes", json!({}), 2_147_483_648.0),
        ("blog_agent_disk_short", json!({}), 1.0),
        ("blog_agent_disk_needed_bytes", json!({}), 3_221_225_472.0),
        ("blog_agent_baking", json!({"sha": "3f2a9c1"}), 1.0),
        ("blog_agent_bake_remaining_seconds", json!({}), 0.0),
        ("blog_agent_bake_ends_timestamp_seconds", json!({}), 1_700_000_000.0),
        ("blog_agent_bakes_total", json!({"outcome": "baked"}), 0.0),
        ("blog_agent_bakes_total", json!({"outcome": "reverted"}), 1.0),
        ("blog_agent_s3_requests_total", json!({}), 2.0),
        ("blog_agent_ecr_calls_total", json!({}), 1.0),
    ];
    let want: Vec<(String, serde_json::Value, f64)> = want.into_iter().map(|(n, l, v)| (n.to_owned(), l, v)).collect();
    assert_eq!(samples, want, "{text}");

    // The parser is strict enough to catch what the escaping prevents: the same line with the
    // label value written raw is refused.
    let raw = text.replace("stag\\\"ing\\\\with\\nnewline", "stag\"ing\\with\nnewline");
    assert_ne!(raw, text);
    assert!(reference_parse(&raw).is_err(), "the parser accepted an unescaped label value:\n{raw}");
}

/// Why 4 of issue 17: an operator halts the release every host runs. With the bucket's
/// versioning on, `halt` (no `--to`) records the release before it in the release object's
/// history, and a new instance serves that instead of staying dark. A halt with no rollback
/// target at all (a marker written by hand) is resolved by the agent from the same history.
#[test]
fn a_halt_of_the_release_every_host_runs_leaves_no_new_instance_dark() {
    let leader = Host::new("halt-history");
    leader.s3(|c, b| async move {
        let on = aws_sdk_s3::types::VersioningConfiguration::builder()
            .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
            .build();
        c.put_bucket_versioning().bucket(b).versioning_configuration(on).send().await.unwrap();
    });
    let v1 = leader.release("good");
    let v2 = leader.release("good");
    let run = leader.agent(&["--env", "staging", "halt", &v2, "--reason", "INC-7: wrong page"]);
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains(&format!("a host with nothing serving runs {v1}")), "{}", run.stderr);
    let marker = object(&leader, &format!("staging/halted/{v2}")).expect("marker");
    let marker: serde_json::Value = serde_json::from_str(&marker).unwrap();
    assert_eq!(marker["rolled_back_to"], v1.as_str(), "{marker}");

    // A new instance with nothing serving: v1, not nothing.
    let mut newcomer = Host::new("halt-history-new");
    newcomer.share_release_with(&leader);
    let run = newcomer.sync();
    assert_eq!(run.code, 0, "{}", run.output());
    newcomer.assert_serves(&v1);

    // A marker with no rollback target (written by hand) on a newer release: the agent looks
    // the release before it up in the history itself, passing over v2, which is halted too.
    let v3 = leader.release("good");
    leader.put_object(
        &format!("staging/halted/{v3}"),
        format!(r#"{{"sha":"{v3}","environment":"staging","instance_id":"ops","reason":"by hand","at":1}}"#)
            .into_bytes(),
    );
    let mut empty = Host::new("halt-history-empty");
    empty.share_release_with(&leader);
    empty.write_config("[reconcile]\ninterval = \"1s\"\njitter = \"0s\"\n");
    let agent = empty.start_agent(&[]);
    empty.wait_deployed(&v1, Duration::from_secs(30));
    assert!(
        agent.logs().contains("a host with nothing serving runs") && agent.logs().contains("a verified release of"),
        "{}",
        agent.logs()
    );
}

/// Marker text comes from a bucket anyone with write access to the prefix can fill: `status`
/// and the journal print it with control characters escaped, never raw (terminal escapes).
#[test]
fn a_marker_s_text_cannot_drive_the_terminal() {
    let host = Host::new("halt-escapes");
    let sha = host.release("good");
    let body = format!(
        r#"{{"sha":"{sha}","environment":"staging","instance_id":"i-1\u001b]0;owned\u0007","reason":"bad \u001b[2J\u001b[31mred","at":1,"by":"ops\u001b[1m"}}"#
    );
    host.put_object(&format!("staging/halted/{sha}"), body.into_bytes());
    let run = host.agent(&["--env", "staging", "status"]);
    assert!(run.stdout.contains("halted"), "{}", run.stdout);
    assert!(!run.output().contains('\u{1b}') && !run.output().contains('\u{7}'), "{:?}", run.output());
    assert!(run.stdout.contains("bad \\u{1b}[2J"), "{}", run.stdout);
}

/// The keys under `start`, sorted.
fn keys_under(host: &Host, start: &str) -> Vec<String> {
    let start = start.to_owned();
    let mut keys: Vec<String> = host.s3(|c, b| async move {
        let listed = c.list_objects_v2().bucket(b).prefix(start).send().await.unwrap();
        listed.contents().iter().filter_map(|o| o.key()).map(str::to_owned).collect()
    });
    keys.sort();
    keys
}

/// Issue 22, point 4: a vote is its host's by construction. Two hosts, each with the
/// credentials of its own instance-profile session (`<role id>:i-...`), run the real binary
/// and vote against a crashing release: each vote lands at `<prefix><sha>/<its UserId>` and
/// names that UserId. Then one host's credentials write a second vote under another key, its
/// body naming the writer (and another instance id): with `halt_after = 3` that is still two
/// voters, not three.
#[test]
fn each_host_votes_under_its_own_caller_identity_and_a_forged_key_is_no_second_vote() {
    const HALT_AFTER: u32 = 3;
    let leader = Host::new("votes-by-key");
    let config = format!("[reconcile]\ninterval = \"1s\"\njitter = \"0s\"\n[rollout]\nhalt_after = {HALT_AFTER}\n");
    let mut hosts = Vec::new();
    for name in ["votes-by-key-a", "votes-by-key-b"] {
        let mut host = Host::new(name);
        host.share_release_with(&leader);
        host.write_config(&config);
        let instance_id = format!("i-0{}", &unique_sha(name)[..16]);
        let imds = FakeImds::start(&[("Environment", "staging")]);
        imds.set_instance_id(&instance_id);
        host.imds_endpoint = Some(imds.endpoint.clone());
        let assumed = host.assume_instance_role(&instance_id);
        assert!(assumed.user_id.starts_with("AROA") && assumed.user_id.ends_with(&format!(":{instance_id}")));
        hosts.push((host, imds, instance_id, assumed));
    }
    let good = leader.release("good");
    let agents: Vec<AgentProcess> = hosts.iter().map(|(host, ..)| host.start_agent(&[])).collect();
    for (host, ..) in &hosts {
        host.wait_deployed(&good, Duration::from_secs(60));
    }
    let crash = leader.release("crash");
    let parsed = Sha::parse(&crash).unwrap();
    let prefix = "staging/halted/";
    let vote_start = format!("{prefix}{crash}/");
    let keys = wait_for("both hosts' votes", Duration::from_secs(90), || {
        Some(keys_under(&leader, &vote_start)).filter(|keys| keys.len() >= 2)
    });

    // Each vote is at its writer's UserId, unchanged (`:` and all), and names it.
    let mut want: Vec<String> = hosts.iter().map(|(.., a)| format!("{vote_start}{}", a.user_id)).collect();
    want.sort();
    assert_eq!(keys, want, "one vote per host, at the key its credentials name");
    for ((_, _, instance_id, assumed), agent) in hosts.iter().zip(&agents) {
        let body = object(&leader, &format!("{vote_start}{}", assumed.user_id)).unwrap();
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!((&body["voter"], &body["instance_id"]), (&json!(assumed.user_id), &json!(instance_id)), "{body}");
        assert!(agent.logs().contains(&format!("AWS caller identity {}", assumed.user_id)), "{}", agent.logs());
    }

    // Host A's credentials cast a second vote under a key of their choosing, the body naming A
    // (its own vote, with another instance id).
    let (_, _, _, a) = &hosts[0];
    let genuine = object(&leader, &format!("{vote_start}{}", a.user_id)).unwrap();
    let mut forged: serde_json::Value = serde_json::from_str(&genuine).unwrap();
    forged["instance_id"] = json!("i-0f0f0f0f0f0f0f0f0");
    let role_id = a.user_id.split_once(':').unwrap().0;
    let forged_key = format!("{vote_start}{role_id}:i-0f0f0f0f0f0f0f0f0");
    let creds = aws_sdk_s3::config::Credentials::new(
        &a.access_key_id,
        &a.secret_access_key,
        Some(a.session_token.clone()),
        None,
        "host-a",
    );
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(leader.s3_endpoint.clone())
        .credentials_provider(creds)
        .force_path_style(true)
        .build();
    runtime().block_on(async {
        aws_sdk_s3::Client::from_conf(config)
            .put_object()
            .bucket(&leader.bucket)
            .key(&forged_key)
            .body(serde_json::to_vec(&forged).unwrap().into())
            .send()
            .await
            .unwrap();
    });
    assert_eq!(keys_under(&leader, &vote_start).len(), 3);

    // The read the hosts make counts two voters: the forged key is ignored.
    let markers = HaltMarkers::with_aws(&leader.aws(), leader.bucket.clone());
    let reading = runtime().block_on(markers.read(prefix, &parsed)).unwrap();
    assert_eq!(reading.halt(&parsed, "staging", HALT_AFTER), None, "a forged key made a third voter: {reading:?}");
    let halt = reading.halt(&parsed, "staging", 2).expect("the hosts' own two votes count");
    assert!(halt.reason.starts_with("2 hosts failed it"), "{}", halt.reason);
    for (host, ..) in &hosts {
        host.assert_serves(&good);
    }
}
