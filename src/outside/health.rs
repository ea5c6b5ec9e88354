//! Proves a container serves: HTTP GET until a 2xx or a deadline.
//!
//! A hand-written HTTP/1.0 GET over a TCP socket: the probe only needs the status line, and
//! pulling in an HTTP client stack for that would cost more binary than the rest of the agent.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Bound on one probe attempt (connect + request + status line).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts: short, because a container is usually up in well under a second
/// and every millisecond of probing is a millisecond of swap gap.
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// The last thing a probe saw, for the error message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url} did not answer 2xx ({last})")]
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

/// One GET; returns the status code.
pub async fn get_status(host: &str, port: u16, path: &str) -> Result<u16, String> {
    let attempt = async {
        let mut stream = TcpStream::connect((host, port)).await.map_err(|e| format!("connect: {e}"))?;
        let request = format!(
            "GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: blog-agent\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
        let mut buf = Vec::with_capacity(64);
        let mut chunk = [0u8; 64];
        while !buf.contains(&b'\n') && buf.len() < 1024 {
            let n = stream.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        let line = String::from_utf8_lossy(&buf);
        line.split_whitespace()
            .nth(1)
            .and_then(|code| code.parse::<u16>().ok())
            .filter(|_| line.starts_with("HTTP/"))
            .ok_or_else(|| "no HTTP status line in the answer".to_owned())
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await.unwrap_or_else(|_| Err("timed out".into()))
}

/// Probes until a 2xx or `timeout`. `still_alive` is asked between attempts so a container
/// that has exited fails the probe at once instead of at the deadline, with how it ended.
pub async fn wait_healthy<F, Fut>(
    host: &str,
    port: u16,
    path: &str,
    timeout: Duration,
    mut still_alive: F,
) -> Result<u16, ProbeFailed>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Stopped>>,
{
    let deadline = Instant::now() + timeout;
    let url = format!("http://{host}:{port}{path}");
    loop {
        let last = match get_status(host, port, path).await {
            Ok(code) if (200..300).contains(&code) => return Ok(code),
            Ok(code) => format!("HTTP {code}"),
            Err(e) => e,
        };
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
