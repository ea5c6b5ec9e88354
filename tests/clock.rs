//! The clock watched, on the local stack: the agent runs under libfaketime (Debian `faketime`)
//! with the host's clock set off by minutes or hours while moto, standing in for AWS, keeps the
//! real time in its `Date` header and its Last-Modified. `check` and `status` say how far off
//! the clock is, and the time decisions (`promote --soak`, the replay rule's "signed in the
//! future") go by AWS's time or refuse.

mod common;

use common::release::*;
use common::*;

/// libfaketime's preload library, wherever the architecture puts it.
fn libfaketime() -> String {
    let found = std::fs::read_dir("/usr/lib")
        .unwrap()
        .filter_map(Result::ok)
        .map(|d| d.path().join("faketime/libfaketime.so.1"))
        .find(|p| p.exists());
    found.expect("libfaketime (Debian faketime; scripts/install-deps.sh installs it)").display().to_string()
}

/// The agent with this host's clock `skew` off (libfaketime's `+20m`, `-2h`); the monotonic
/// clock stays real, as a stepped wall clock leaves it.
fn agent_skewed(host: &Host, skew: &str, args: &[&str]) -> Run {
    let out = host
        .command(args)
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME", skew)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .output()
        .expect("run blog-agent");
    Run::of(out)
}

fn clock_line(check: &Run) -> String {
    let line = check.stdout.lines().find(|l| l.ends_with(" clock") || l.contains(" clock: "));
    line.unwrap_or_else(|| panic!("no clock line: {}", check.output())).to_owned()
}

fn status_clock(host: &Host, skew: &str) -> serde_json::Value {
    let run = agent_skewed(host, skew, &["--env", "staging", "status", "--json"]);
    let status: serde_json::Value =
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("status --json: {e}: {}", run.output()));
    status["clock"].clone()
}

/// A host 20 minutes fast: `check` fails its clock line with the number, `status` shows it, and
/// `promote --soak` refuses to decide (by the host's clock the release would have soaked).
/// 2 minutes fast: a WARN, and `promote --soak` measures on AWS's time.
#[test]
fn a_fast_clock_is_reported_and_promote_soak_goes_by_aws_time_or_refuses() {
    let host = Host::new("clock-fast");
    versioning_on(&host);
    let (sha, _) = build_and_push(&host, "good");
    let run = publish(&host, "staging", &sha);
    assert_eq!(run.code, 0, "{}", run.output());

    let check = host.agent(&["--env", "staging", "check"]);
    let line = clock_line(&check);
    assert!(line.starts_with("ok   clock: this host's clock is "), "{line}");

    let check = agent_skewed(&host, "+20m", &["--env", "staging", "check"]);
    assert_eq!(check.code, 1, "{}", check.output());
    let line = clock_line(&check);
    assert!(line.starts_with("FAIL clock: this host's clock is "), "{line}");
    assert!(line.contains(" ahead of AWS (±") && line.contains("beyond 5m"), "{line}");
    assert!(line.contains("chronyc tracking"), "{line}");
    let clock = status_clock(&host, "+20m");
    assert_eq!(clock["judgement"], "FAIL", "{clock}");
    let offset = clock["offset_seconds"].as_f64().unwrap();
    assert!((1195.0..1205.0).contains(&offset), "{clock}");
    let text = agent_skewed(&host, "+20m", &["--env", "staging", "status"]);
    assert!(text.stdout.contains("\nclock          FAIL: this host's clock is "), "{}", text.output());

    let promote = ["promote", &sha, "--from", "staging", "--to", "production", "--soak", "1m"];
    let refused = agent_skewed(&host, "+20m", &promote);
    assert_eq!(refused.code, 1, "{}", refused.output());
    assert!(
        refused.stderr.contains("promote --soak not decided: this host's clock is ")
            && refused.stderr.contains("ahead of AWS, beyond 5m"),
        "{}",
        refused.stderr
    );
    assert!(release_object(&host, "production").is_none(), "nothing was written");

    // 2 minutes fast: the release was published seconds ago on AWS's clock, not 2 minutes.
    let check = agent_skewed(&host, "+2m", &["--env", "staging", "check"]);
    let line = clock_line(&check);
    assert!(line.starts_with("WARN clock: this host's clock is "), "{line}");
    assert_eq!(status_clock(&host, "+2m")["judgement"], "WARN");
    let soaking = agent_skewed(&host, "+2m", &promote);
    assert_eq!(soaking.code, 1, "{}", soaking.output());
    assert!(soaking.stderr.contains("has not soaked in staging yet"), "{}", soaking.stderr);
    assert!(release_object(&host, "production").is_none());
}

/// A host 2 hours slow takes a release CI signed just now: by its own clock the signature is
/// dated ahead by more than `MAX_SIGNED_AHEAD` (1 hour), by AWS's it is seconds old.
#[test]
fn a_slow_clock_does_not_make_a_fresh_signature_look_from_the_future() {
    let host = Host::new("clock-slow");
    let (public, secret) = key_pair(&host, "ci");
    let config = std::fs::read_to_string(&host.config).unwrap();
    std::fs::write(&host.config, config.replacen("[release]\n", &format!("[release]\npublic_key = \"{public}\"\n"), 1))
        .unwrap();
    let mut host = host;
    host.extra_env.push(("BLOG_AGENT_SIGNING_KEY".into(), secret.display().to_string()));
    versioning_on(&host);
    let (sha, _) = build_and_push(&host, "good");
    let run = publish(&host, "staging", &sha);
    assert_eq!(run.code, 0, "{}", run.output());

    let run = agent_skewed(&host, "-2h", &["--env", "staging", "sync"]);
    assert_eq!(run.code, 0, "{}", run.output());
    host.assert_serves(&sha);
    let clock = status_clock(&host, "-2h");
    assert_eq!(clock["judgement"], "FAIL", "{clock}");
    let offset = clock["offset_seconds"].as_f64().unwrap();
    assert!((-7205.0..-7195.0).contains(&offset), "{clock}");
    remove_labelled(&host.id);
}

/// The service 2 minutes fast: it logs the clock's WARN once, and the metrics textfile carries
/// the offset.
#[test]
fn the_service_logs_the_clock_and_exports_the_offset() {
    let host = Host::new("clock-metrics");
    let textfile = host.path().join("blog_agent.prom");
    host.write_config(&format!("[metrics]\ntextfile = \"{}\"\n", textfile.display()));
    let sha = host.release("good");
    let agent = host.start_agent_with(&[], |cmd| {
        cmd.env("LD_PRELOAD", libfaketime()).env("FAKETIME", "+2m").env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    });
    agent.wait_log("clock WARN: this host's clock is ", std::time::Duration::from_secs(30));
    let offset = wait_for("the clock offset in the metrics", std::time::Duration::from_secs(60), || {
        let text = std::fs::read_to_string(&textfile).ok()?;
        let value = text.lines().find_map(|l| l.strip_prefix("blog_agent_clock_offset_seconds "))?;
        value.parse::<f64>().ok()
    });
    assert!((115.0..125.0).contains(&offset), "{offset}");
    host.assert_serves(&sha);
    drop(agent);
    remove_labelled(&host.id);
}
