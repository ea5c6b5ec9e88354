//! `[health]` checks on the real local stack (dockerd, the registry, moto): a release must pass
//! every check over the Docker bridge before cut-over, and a failure names the check, the status
//! and the head of the body; the access-log 5xx watch reads real Apache httpd log lines
//! (scripts/build-apache-image.sh). Run `scripts/stack-up.sh` first (`make test` does).

mod common;

use std::process::Command;
use std::time::Duration;

use blog_agent::config::FiveXxLimits;
use blog_agent::outside::access_log;
use blog_agent::outside::docker::Engine;
use common::*;

fn assert_code(run: &Run, code: i32) {
    assert_eq!(run.code, code, "exit code; output:\n{}", run.output());
}

/// `host`'s config with `[health]` keys added (`contains`, a shorter timeout: a refused release
/// is refused when the timeout passes) and `tables` (`[[health.check]]`) appended.
fn with_checks(host: &Host, health: &str, tables: &str) {
    host.write_config(tables);
    let text = std::fs::read_to_string(&host.config).unwrap();
    let text = text.replace("timeout = \"10s\"\n", &format!("timeout = \"3s\"\n{health}"));
    std::fs::write(&host.config, text).unwrap();
}

const POSTS_CHECK: &str = "[[health.check]]\npath = \"/posts/\"\n";

#[test]
fn a_release_missing_a_checked_page_is_refused_and_the_previous_keeps_serving() {
    let host = Host::new("check_missing_page");
    with_checks(&host, "", POSTS_CHECK);
    let good = host.release("posts");
    assert_code(&host.sync(), 0);
    host.assert_serves(&good);
    let before = host.container_state().unwrap();

    // A build that lost its /posts/ section: `/` still answers 200.
    let lost = host.release("good");
    let run = host.sync();
    assert_code(&run, 1);
    let err = &run.stderr;
    eprintln!("{err}");
    assert!(err.contains(&lost[..7]) && err.contains("before cut-over"), "{err}");
    assert!(err.contains("[[health.check]] \\\"/posts/\\\"") || err.contains("[[health.check]] \"/posts/\""), "{err}");
    assert!(err.contains("HTTP 404, expected 2xx"), "the status: {err}");
    assert!(err.contains("404 Not Found"), "the head of busybox's error page: {err}");
    assert_eq!(host.container_state().unwrap(), before, "the running container was not touched");
    host.assert_serves(&good);
    assert_eq!(http_get(host.port, "/posts/").map(|(s, _)| s), Some(200));
}

#[test]
fn a_release_whose_page_lacks_the_text_is_refused() {
    let host = Host::new("check_contains");
    with_checks(&host, "contains = \"Latest posts\"\n", "");
    let good = host.release("posts");
    assert_code(&host.sync(), 0);
    host.assert_serves(&good);
    let before = host.container_state().unwrap();

    // Answers 200 on `/`, but without the text: an empty theme.
    let empty = host.release("good");
    let run = host.sync();
    assert_code(&run, 1);
    let err = &run.stderr;
    eprintln!("{err}");
    assert!(err.contains(&empty[..7]), "{err}");
    assert!(err.contains("[health] url") && err.contains("HTTP 200 but the body lacks"), "{err}");
    assert!(err.contains("Latest posts"), "the text it lacked: {err}");
    assert!(err.contains("<h1>blog</h1>"), "the head of the body it got: {err}");
    assert_eq!(host.container_state().unwrap(), before);
    host.assert_serves(&good);
}

#[test]
fn a_release_passing_every_check_deploys() {
    let host = Host::new("check_all_pass");
    let tables = format!(
        "{POSTS_CHECK}contains = \"<h1>Posts</h1>\"\n[[health.check]]\npath = \"/no-such-page\"\nstatus = 404\n"
    );
    with_checks(&host, "contains = \"Latest posts\"\n", &tables);
    let first = host.release("posts");
    assert_code(&host.sync(), 0);
    host.assert_serves(&first);
    let second = host.release("posts");
    let run = host.sync();
    assert_code(&run, 0);
    host.assert_serves(&second);
    host.assert_only_the_serving_container();
    // `status` reports every check.
    let status = host.agent(&["--env", "staging", "status"]);
    assert!(status.output().contains("all 3 checks pass"), "{}", status.output());
}

/// In switch mode the candidate is the new container itself, proven over the bridge before the
/// rules move: a release missing a page never takes traffic.
#[test]
fn a_release_missing_a_page_in_switch_mode_never_takes_traffic() {
    let _lock = netfilter_lock();
    let chains = format!("BAH-{}", std::process::id());
    let host = Host::new("check_switch");
    let cleanup = Chains(chains.clone(), host.id.clone());
    with_checks(&host, "", &format!("{POSTS_CHECK}[traffic]\nmode = \"switch\"\nchains = \"{chains}\"\n"));
    let good = host.release("posts");
    assert_code(&host.sync(), 0);
    host.assert_serves(&good);
    host.release("good");
    let run = host.sync();
    assert_code(&run, 1);
    assert!(run.stderr.contains("[[health.check]] \"/posts/\": HTTP 404, expected 2xx"), "{}", run.stderr);
    host.assert_serves(&good);
    host.assert_only_the_serving_container();
    drop(cleanup);
}

/// Removes a test's chains by name and its containers by label when dropped.
struct Chains(String, String);

impl Drop for Chains {
    fn drop(&mut self) {
        remove_labelled(&self.1);
        if let Err(e) = remove_chains(&self.0) {
            eprintln!("removing chains {}: {e}", self.0);
        }
    }
}

fn apache_image() -> String {
    let out = Command::new("bash").arg(repo_root().join("scripts/build-apache-image.sh")).output().unwrap();
    assert!(out.status.success(), "build-apache-image.sh: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The 5xx watch on real Apache log lines: 200s and 404s (a client's errors) and one 500 do not
/// trip 5% over 20 requests; the second 500 does, and what tripped counts them all.
#[test]
fn the_5xx_watch_trips_on_real_apache_access_log_lines() {
    let image = apache_image();
    let id = format!("access-log-{}", &unique_sha("access_log")[..8]);
    remove_labelled(&id);
    let port = free_port();
    let label = format!("{TEST_LABEL}={id}");
    let publish = format!("127.0.0.1:{port}:80");
    docker_ok(&["run", "-d", "--name", &id, "--label", &label, "-p", &publish, &image]);
    let cleanup = Cleanup(id.clone());
    wait_for("Apache to answer", Duration::from_secs(30), || http_get(port, "/").filter(|(s, _)| *s == 200));
    // A CGI that exits without a header: Apache answers 500 and logs it.
    docker_ok(&[
        "exec",
        &id,
        "sh",
        "-c",
        "printf '#!/bin/sh\\nexit 1\\n' >/usr/lib/cgi-bin/fail && chmod 755 /usr/lib/cgi-bin/fail",
    ]);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let tripped = rt.block_on(async {
        let engine = Engine::connect().await.expect("Docker");
        let limits = FiveXxLimits { max_share: 0.05, min_requests: 20 };
        let container = id.clone();
        let watch = tokio::spawn(async move { access_log::watch_5xx(&engine, &container, limits).await });
        // On this one-thread runtime the watch runs up to its first wait (and fixes the second it
        // reads the log from) before any request below is sent.
        tokio::task::yield_now().await;
        let get = |path: &'static str| async move {
            tokio::task::spawn_blocking(move || http_get(port, path).map(|(s, _)| s)).await.unwrap()
        };
        for i in 0..30 {
            let (path, want) = if i % 3 == 0 { ("/missing", 404) } else { ("/", 200) };
            assert_eq!(get(path).await, Some(want), "{path}");
        }
        // One 500 in at least 31 requests is at most 3.2%: under the limit. The second is over.
        assert_eq!(get("/cgi-bin/fail").await, Some(500));
        assert_eq!(get("/cgi-bin/fail").await, Some(500));
        tokio::time::timeout(Duration::from_secs(30), watch)
            .await
            .expect("the watch trips once the log shows the second 500")
            .unwrap()
    });
    let tripped = tripped.expect("tripped, not ended");
    eprintln!("{tripped}");
    // Tripped at the second 500, not the first: the requests before it (30 of ours, and the
    // readiness polls of the same second) did not trip it.
    assert_eq!(tripped.errors, 2, "{tripped}");
    assert!(tripped.requests >= 32 && tripped.share > 0.05, "{tripped}");
    drop(cleanup);
}

/// Removes the test's container by label when dropped, also after a failed assertion.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        remove_labelled(&self.0);
    }
}
