//! Proves a container serves: every `[health]` check (the URL, its `contains`, each
//! `[[health.check]]`) until all pass or a deadline, and [`check_all`], one run of them, for
//! whoever watches a container on a cadence.
//!
//! A hand-written HTTP/1.0 GET over a TCP socket: a check needs the status line and a bounded
//! piece of the body, and pulling in an HTTP client stack for that would cost more binary than
//! the rest of the agent.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::{HealthCheck, HealthSettings};

/// Bound on one probe attempt (connect + request + answer) of one check.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts: short, because a container is usually up in well under a second
/// and every millisecond of probing is a millisecond of swap gap.
const RETRY_EVERY: Duration = Duration::from_millis(50);
/// Most of a body read for `contains`: a blog's page is tens of kilobytes; a text further in
/// than this is reported as missing rather than buffered without bound.
const MAX_BODY: usize = 1 << 20;
/// Bytes of the body a failure quotes: enough to recognise an error page or an empty theme.
const BODY_HEAD: usize = 120;
/// The last thing a probe saw, for the error message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url} failed its health check ({last})")]
pub struct ProbeFailed {
    pub url: String,
    /// What the last attempt saw, and why probing stopped.
    pub last: String,
    /// How probing ended: evidence for [`crate::fleet::verdict`].
    pub end: ProbeEnd,
}

/// Why a probe stopped without a 2xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeEnd {
    /// The deadline passed while the container kept running.
    Deadline,
    /// The container exited, crashed or disappeared during the probe, and how it last ended
    /// (whether it exited on its own or was killed from outside is the judgement's business).
    Died(Exit),
    /// Docker could not run the container's command at all.
    CannotRun,
}

/// How a container last ended, as Docker reports it (`State.ExitCode`, `State.OOMKilled`);
/// unknown when it is gone or cannot be inspected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i64>,
    pub oom_killed: bool,
}

/// A probed container that no longer runs, as the probe's `still_alive` saw it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{why}")]
pub struct Stopped {
    /// Its state in words, for the error message.
    pub why: String,
    pub exit: Exit,
}

/// One check that did not pass: which, where, what was expected and what came back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{check} {url}: {problem}")]
pub struct CheckFailure {
    /// The check as the config names it: `[health] url` or `[[health.check]] "/posts/"`.
    pub check: String,
    /// The URL it requested.
    pub url: String,
    /// What was wrong, in words: the status against the one expected, the missing text, or
    /// why there was no answer; with the body's first bytes (escaped) when there was one.
    pub problem: String,
    /// The status it answered, if it answered.
    pub status: Option<u16>,
    /// The first bytes of the body, escaped for a log line; empty without an answer.
    pub body_head: String,
}

/// An HTTP answer as far as a check reads it.
struct Answer {
    status: u16,
    /// The body, or its first part: all of it up to [`MAX_BODY`] when `contains` needs it.
    body: Vec<u8>,
}

/// One GET of `path`; the body is read whole (up to [`MAX_BODY`]) when `whole_body`, else only
/// its first [`BODY_HEAD`] bytes.
async fn get(host: &str, port: u16, path: &str, whole_body: bool) -> Result<Answer, String> {
    let mut stream = TcpStream::connect((host, port)).await.map_err(|e| format!("connect: {e}"))?;
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: blog-agent\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let mut header_end = None;
    loop {
        let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if header_end.is_none() {
            header_end = find(&buf, b"\r\n\r\n").map(|i| i + 4).or_else(|| find(&buf, b"\n\n").map(|i| i + 2));
            if header_end.is_none() && buf.len() > 16 * 1024 {
                return Err("no end of the HTTP headers in the first 16 KiB".into());
            }
        }
        if let Some(end) = header_end {
            let wanted = if whole_body { MAX_BODY } else { BODY_HEAD };
            if buf.len() - end >= wanted {
                break;
            }
        }
    }
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    let line = String::from_utf8_lossy(&buf[..line_end]);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|_| line.starts_with("HTTP/"))
        .ok_or_else(|| "no HTTP status line in the answer".to_owned())?;
    let body = buf.split_off(header_end.unwrap_or(buf.len()).min(buf.len()));
    Ok(Answer { status, body })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The first [`BODY_HEAD`] bytes of `body` as one safe line: control characters escaped, cut
/// with `...` when there is more.
fn body_head(body: &[u8]) -> String {
    let head = String::from_utf8_lossy(&body[..body.len().min(BODY_HEAD)]);
    let mut out: String = head.chars().flat_map(char::escape_debug).collect();
    if body.len() > BODY_HEAD {
        out.push_str("...");
    }
    out
}

/// What the answer `got` lacks against `check`, in words; `None` when it passes.
fn judge_answer(check: &HealthCheck, got: &Answer) -> Option<String> {
    let status_ok = match check.status {
        Some(want) => got.status == want,
        None => (200..300).contains(&got.status),
    };
    let expected = check.status.map(|s| s.to_string()).unwrap_or_else(|| "2xx".into());
    let problem = if !status_ok {
        format!("HTTP {}, expected {expected}", got.status)
    } else {
        let text = check.contains.as_deref()?;
        if find(&got.body, text.as_bytes()).is_some() {
            return None;
        }
        let read =
            if got.body.len() >= MAX_BODY { format!(" (in the first {} bytes)", MAX_BODY) } else { String::new() };
        format!("HTTP {} but the body lacks {}{read}", got.status, crate::sha::safe_quote(text))
    };
    Some(format!("{problem}; body \"{}\"", body_head(&got.body)))
}

/// How the config names check `index` of [`HealthSettings::all_checks`].
fn check_name(index: usize, check: &HealthCheck) -> String {
    if index == 0 {
        "[health] url".into()
    } else {
        format!("[[health.check]] {}", crate::sha::safe_quote(&check.path))
    }
}

fn url_of(host: &str, port: u16, path: &str) -> String {
    if host.contains(':') {
        format!("http://[{host}]:{port}{path}")
    } else {
        format!("http://{host}:{port}{path}")
    }
}

/// Runs `check` once, bounded by `timeout`. `Ok` with the status it answered.
async fn run_check(
    index: usize,
    check: &HealthCheck,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<u16, CheckFailure> {
    let fail = |problem: String, status: Option<u16>, body_head: String| CheckFailure {
        check: check_name(index, check),
        url: url_of(host, port, &check.path),
        problem,
        status,
        body_head,
    };
    let answer = tokio::time::timeout(timeout, get(host, port, &check.path, check.contains.is_some()))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}", humantime::format_duration(timeout))));
    match answer {
        Err(e) => Err(fail(e, None, String::new())),
        Ok(got) => match judge_answer(check, &got) {
            None => Ok(got.status),
            Some(problem) => Err(fail(problem, Some(got.status), body_head(&got.body))),
        },
    }
}

/// Runs every check of `settings` in order, each bounded by `per_check`; stops at the first
/// that fails. `Ok` with the status `[health] url` answered.
async fn run_checks(
    settings: &HealthSettings,
    host: &str,
    port: u16,
    per_check: Duration,
) -> Result<u16, CheckFailure> {
    let mut first = 0;
    for (i, check) in settings.all_checks().iter().enumerate() {
        let status = run_check(i, check, host, port, per_check).await?;
        if i == 0 {
            first = status;
        }
    }
    Ok(first)
}

/// Runs every `[health]` check once against `host:port` (a container's bridge address and
/// container port, or the host's own published address): `[health] url`'s path with its
/// `contains`, then each `[[health.check]]` in file order. Returns the first that fails,
/// naming the check, the status and the first bytes of the body.
///
/// One run, no retry: callers that wait for a container to come up retry it themselves
/// ([`wait_healthy`]); a watcher calling it on a cadence decides how many failures in a row
/// count. Each check's request is bounded by `timeout` (connect, request and answer), so a
/// run takes at most `timeout` times the number of checks.
pub async fn check_all(
    settings: &HealthSettings,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<(), CheckFailure> {
    run_checks(settings, host, port, timeout).await.map(drop)
}

/// One GET of `path`; returns the status code.
pub async fn get_status(host: &str, port: u16, path: &str) -> Result<u16, String> {
    tokio::time::timeout(ATTEMPT_TIMEOUT, get(host, port, path, false))
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
        .map(|answer| answer.status)
}

/// Runs every check of `checks` (see [`check_all`]) against `host:port` until all pass in one
/// round or `timeout` passes; returns the status `[health] url` answered. `still_alive` is
/// asked between attempts so a container that has exited fails the probe at once instead of at
/// the deadline, with how it ended. A failure names the last check that failed.
pub async fn wait_healthy<F, Fut>(
    host: &str,
    port: u16,
    checks: &HealthSettings,
    timeout: Duration,
    mut still_alive: F,
) -> Result<u16, ProbeFailed>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Stopped>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let failed = match run_checks(checks, host, port, ATTEMPT_TIMEOUT).await {
            Ok(code) => return Ok(code),
            Err(failed) => failed,
        };
        let url = failed.url.clone();
        let last = format!("{}: {}", failed.check, failed.problem);
        if let Err(gone) = still_alive().await {
            return Err(ProbeFailed { url, last: format!("{last}; {gone}"), end: ProbeEnd::Died(gone.exit) });
        }
        if Instant::now() + RETRY_EVERY >= deadline {
            let last =
                format!("last: {last}; gave up after {} ([health] timeout)", humantime::format_duration(timeout));
            return Err(ProbeFailed { url, last, end: ProbeEnd::Deadline });
        }
        tokio::time::sleep(RETRY_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FiveXxLimits, HealthUrl};

    fn check(path: &str, status: Option<u16>, contains: Option<&str>) -> HealthCheck {
        HealthCheck { path: path.into(), status, contains: contains.map(str::to_owned) }
    }

    #[test]
    fn an_answer_against_its_check() {
        let cases: &[(&str, HealthCheck, u16, &str, Option<&str>)] = &[
            ("any 2xx", check("/", None, None), 204, "", None),
            ("not 2xx", check("/", None, None), 404, "gone", Some("HTTP 404, expected 2xx; body \"gone\"")),
            ("exact status", check("/old", Some(301), None), 301, "", None),
            ("exact status missed", check("/old", Some(301), None), 200, "x", Some("HTTP 200, expected 301")),
            ("text found", check("/", None, Some("Latest posts")), 200, "<h2>Latest posts</h2>", None),
            (
                "text missing",
                check("/", None, Some("Latest posts")),
                200,
                "<html></html>",
                Some("HTTP 200 but the body lacks \"Latest posts\"; body \"<html></html>\""),
            ),
            ("status before text", check("/", None, Some("x")), 500, "x", Some("HTTP 500, expected 2xx")),
            ("control bytes escaped", check("/", None, None), 500, "a\nb\u{1b}[31m", Some("body \"a\\nb\\u{1b}[31m\"")),
        ];
        for (what, check, status, body, want) in cases {
            let got = judge_answer(check, &Answer { status: *status, body: body.as_bytes().to_vec() });
            match (want, &got) {
                (None, None) => {}
                (Some(want), Some(got)) => assert!(got.contains(want), "{what}: {got}"),
                _ => panic!("{what}: expected {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn the_body_head_is_bounded() {
        let long = "x".repeat(5000);
        let head = body_head(long.as_bytes());
        assert_eq!(head.len(), BODY_HEAD + 3, "{head}");
        assert!(head.ends_with("..."));
        assert_eq!(body_head(b"\xff\xfeok"), "\u{fffd}\u{fffd}ok");
    }

    fn settings(port: u16, contains: Option<&str>, checks: Vec<HealthCheck>) -> HealthSettings {
        HealthSettings {
            url: HealthUrl { host: "127.0.0.1".into(), port, path: "/".into() },
            timeout: Duration::from_secs(5),
            contains: contains.map(str::to_owned),
            checks,
            max_5xx: FiveXxLimits { max_share: 0.05, min_requests: 20 },
            bake: Duration::ZERO,
        }
    }

    /// A loopback server answering `/` with "<h1>blog</h1>" and every other path 404.
    async fn blog_server() -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 1024];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let answer = if request.starts_with("GET / ") {
                        "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n<h1>blog</h1>\n"
                    } else {
                        "HTTP/1.0 404 Not Found\r\n\r\n<title>404 Not Found</title>\n"
                    };
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn check_all_names_the_failing_check_with_its_status_and_body() {
        let port = blog_server().await;
        let bound = Duration::from_secs(2);
        check_all(&settings(port, Some("<h1>blog"), vec![]), "127.0.0.1", port, bound).await.unwrap();

        let missing = settings(port, None, vec![check("/posts/", None, None)]);
        let failed = check_all(&missing, "127.0.0.1", port, bound).await.unwrap_err();
        assert_eq!(failed.check, "[[health.check]] \"/posts/\"");
        assert_eq!(failed.status, Some(404));
        assert_eq!(failed.body_head, "<title>404 Not Found</title>\\n");
        assert_eq!(failed.url, format!("http://127.0.0.1:{port}/posts/"));

        let content = settings(port, Some("Latest posts"), vec![]);
        let failed = check_all(&content, "127.0.0.1", port, bound).await.unwrap_err();
        assert_eq!((failed.check.as_str(), failed.status), ("[health] url", Some(200)));
        assert!(failed.problem.contains("lacks \"Latest posts\""), "{failed}");

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let failed = check_all(&settings(closed, None, vec![]), "127.0.0.1", closed, bound).await.unwrap_err();
        assert!(failed.problem.starts_with("connect:") && failed.status.is_none(), "{failed}");
    }

    /// The probe before cut-over gives up naming the check: the evidence a vote carries.
    #[tokio::test]
    async fn a_failed_probe_names_the_check() {
        let port = blog_server().await;
        let missing = settings(port, None, vec![check("/posts/", None, None)]);
        let failed = wait_healthy("127.0.0.1", port, &missing, Duration::from_millis(200), || async { Ok(()) })
            .await
            .unwrap_err();
        let text = failed.to_string();
        assert_eq!(failed.end, ProbeEnd::Deadline);
        assert!(text.contains("[[health.check]] \"/posts/\": HTTP 404, expected 2xx"), "{text}");
        assert!(text.contains("404 Not Found"), "{text}");
    }
}
