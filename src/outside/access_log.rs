//! A container's access log as evidence: the share of its requests that answered 5xx.
//!
//! Reads what the serving container writes to stdout (through [`Engine::follow_stdout`]) and
//! picks out Common and Combined Log Format lines, httpd's default and what Apache writes
//! (the project's Apache test image links its access log to stdout, as the official `httpd`
//! image does). Anything else on stdout is ignored: busybox `httpd` writes no access log, so a
//! container of it is never judged this way. Decides only whether the 5xx share of the last
//! [`WINDOW`] exceeds `[health] max_5xx_share` over at least `max_5xx_min_requests` requests;
//! what to do about it (revert, vote) is the caller's.
//!
//! The parser ([`parse_line`]) and the window ([`FiveXxShare`]) are pure and table-tested;
//! [`watch_5xx`] is the I/O around them.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::config::FiveXxLimits;
use crate::outside::docker::{Engine, EngineError};

/// How far back the share is counted: long enough to hold a few dozen requests of a quiet blog,
/// short enough that a release failing after a good first minute is not diluted by it.
pub const WINDOW: Duration = Duration::from_secs(60);

/// Longest line kept while waiting for its end: an access log line is a few hundred bytes; a
/// container writing megabytes without a newline is not writing one.
const MAX_LINE: usize = 64 * 1024;

/// One request of an access log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The request line as logged (`GET /posts/ HTTP/1.1`), escapes kept.
    pub request: &'a str,
    /// The final status (`%>s`).
    pub status: u16,
}

/// Parses a Common Log Format line (`%h %l %u %t "%r" %>s %b`), with or without Combined's
/// `"%{Referer}i" "%{User-Agent}i"` or a leading virtual host (`%v:%p`). `None` for anything
/// else (an error log line, a startup message).
pub fn parse_line(line: &str) -> Option<Request<'_>> {
    let line = line.trim_end_matches(['\n', '\r']);
    // The timestamp: `[10/Oct/2000:13:55:36 -0700]`, after host, ident and user.
    let open = line.find(" [")? + 2;
    let close = open + line[open..].find(']')?;
    let time = &line[open..close];
    if time.len() < 20 || !time.contains('/') || !time.contains(':') {
        return None;
    }
    // The request line, quoted, with `\"` and `\\` escaped (Apache's `%r`).
    let rest = line[close + 1..].strip_prefix(" \"")?;
    let mut end = None;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let end = end?;
    let request = &rest[..end];
    let mut fields = rest[end + 1..].split_whitespace();
    let status = fields.next()?;
    let bytes = fields.next()?;
    let status: u16 = status.parse().ok().filter(|s| (100..=599).contains(s) && status.len() == 3)?;
    if bytes != "-" && !bytes.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Request { request, status })
}

/// Requests and 5xx answers of one second of the window.
#[derive(Debug, Clone, Copy)]
struct Second {
    at: u64,
    requests: u64,
    errors: u64,
}

/// The share of 5xx among the requests of the last [`WINDOW`], in one-second buckets (at most
/// 60 of them, whatever the request rate). Pure: the caller says what time it is.
#[derive(Debug, Clone)]
pub struct FiveXxShare {
    limits: FiveXxLimits,
    start: Instant,
    seconds: VecDeque<Second>,
}

/// What tripped the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tripped {
    /// Requests in the window when it tripped.
    pub requests: u64,
    /// Of them, answered 5xx.
    pub errors: u64,
    /// `errors / requests`.
    pub share: f64,
    /// The limits it exceeded.
    pub limits: FiveXxLimits,
}

impl fmt::Display for Tripped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} requests in the last {} answered 5xx ({:.1}%, more than [health] max_5xx_share {}% over at least \
             {} requests)",
            self.errors,
            self.requests,
            humantime::format_duration(WINDOW),
            self.share * 100.0,
            percent(self.limits.max_share),
            self.limits.min_requests
        )
    }
}

/// `0.07` as `7`, `0.125` as `12.5`: a configured share as the operator wrote it.
fn percent(share: f64) -> String {
    let text = format!("{:.2}", share * 100.0);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

impl FiveXxShare {
    /// An empty window; `start` is the first instant [`record`](Self::record) will be told.
    pub fn new(limits: FiveXxLimits, start: Instant) -> FiveXxShare {
        FiveXxShare { limits, start, seconds: VecDeque::with_capacity(WINDOW.as_secs() as usize + 1) }
    }

    /// Counts one request answered `status` at `now`; `Some` when the window trips: at least
    /// `min_requests` requests in it and a 5xx share above `max_share`.
    pub fn record(&mut self, status: u16, now: Instant) -> Option<Tripped> {
        let at = now.saturating_duration_since(self.start).as_secs();
        self.forget_before(at);
        match self.seconds.back_mut() {
            Some(last) if last.at == at => last.requests += 1,
            _ => self.seconds.push_back(Second { at, requests: 1, errors: 0 }),
        }
        if (500..600).contains(&status) {
            self.seconds.back_mut().expect("just pushed").errors += 1;
        }
        let (requests, errors) = self.counts();
        let share = errors as f64 / requests as f64;
        (requests >= u64::from(self.limits.min_requests) && share > self.limits.max_share).then_some(Tripped {
            requests,
            errors,
            share,
            limits: self.limits,
        })
    }

    /// Requests and 5xx answers now in the window (as of the last [`record`](Self::record)).
    pub fn counts(&self) -> (u64, u64) {
        self.seconds.iter().fold((0, 0), |(r, e), s| (r + s.requests, e + s.errors))
    }

    /// Drops the seconds that fell out of the window ending in second `at`.
    fn forget_before(&mut self, at: u64) {
        let window = WINDOW.as_secs();
        while self.seconds.front().is_some_and(|s| s.at + window <= at) {
            self.seconds.pop_front();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("reading the access log of {container}: {source}")]
    Engine { container: String, source: EngineError },
    /// The log stream ended: the container stopped (its exit is for Docker's events to tell).
    #[error("the access log of {container} ended (the container stopped)")]
    Ended { container: String },
}

/// Follows `container`'s stdout from the second this is first polled (lines Docker already
/// has from that second on count, so none written after the call is missed while the stream
/// connects) and completes only when its 5xx share trips `limits` (see [`FiveXxShare`]), with
/// what tripped. Lines that are not Common or Combined Log Format are ignored, so a container
/// that writes no access log keeps this pending for ever: race it against the end of the
/// watch. `Err` when the stream ends (the container stopped) or Docker fails.
pub async fn watch_5xx(engine: &Engine, container: &str, limits: FiveXxLimits) -> Result<Tripped, AccessLogError> {
    let mut window = FiveXxShare::new(limits, Instant::now());
    let mut lines = Lines::default();
    let mut logs = std::pin::pin!(engine.follow_stdout(container, std::time::SystemTime::now()));
    while let Some(piece) = logs.next().await {
        let piece = piece.map_err(|source| AccessLogError::Engine { container: container.to_owned(), source })?;
        for line in lines.push(&piece) {
            let Some(status) = parse_line(&line).map(|r| r.status) else { continue };
            if let Some(tripped) = window.record(status, Instant::now()) {
                tracing::warn!(
                    container = %container, requests = tripped.requests, errors = tripped.errors,
                    share = tripped.share, "access log: {tripped}"
                );
                return Ok(tripped);
            }
        }
    }
    Err(AccessLogError::Ended { container: container.to_owned() })
}

/// Whole lines out of the pieces a log stream arrives in (Docker usually sends a line per
/// piece, but need not).
#[derive(Debug, Default)]
struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// Adds `piece`; returns the lines it completed, without their line ends. A line longer
    /// than [`MAX_LINE`] is dropped rather than buffered.
    fn push(&mut self, piece: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(piece);
        let mut lines = Vec::new();
        while let Some(newline) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=newline).collect();
            lines.push(String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_owned());
        }
        if self.pending.len() > MAX_LINE {
            self.pending.clear();
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_log_lines() {
        /// (what, line, the request line and status it holds).
        type Case<'a> = (&'a str, &'a str, Option<(&'a str, u16)>);
        let cases: &[Case] = &[
            (
                "common",
                "127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] \"GET /apache_pb.gif HTTP/1.0\" 200 2326",
                Some(("GET /apache_pb.gif HTTP/1.0", 200)),
            ),
            (
                "combined, Apache on Debian (%O)",
                "172.17.0.1 - - [07/Dec/2026:23:10:01 +0000] \"GET /posts/ HTTP/1.0\" 404 437 \"-\" \"blog-agent\"\n",
                Some(("GET /posts/ HTTP/1.0", 404)),
            ),
            (
                "no body (%b is -)",
                "::1 - - [07/Dec/2026:23:10:01 +0000] \"HEAD / HTTP/1.1\" 500 - \"-\" \"curl/8.0\"\r\n",
                Some(("HEAD / HTTP/1.1", 500)),
            ),
            (
                "escaped quote in the request",
                "10.0.0.1 - - [07/Dec/2026:23:10:01 +0000] \"GET /a\\\"b HTTP/1.1\" 503 12 \"-\" \"x\"",
                Some(("GET /a\\\"b HTTP/1.1", 503)),
            ),
            (
                "vhost_combined",
                "blog:80 10.0.0.1 - - [07/Dec/2026:23:10:01 +0000] \"GET / HTTP/1.1\" 200 99 \"-\" \"x\"",
                Some(("GET / HTTP/1.1", 200)),
            ),
            (
                "garbage request line",
                "10.0.0.1 - - [07/Dec/2026:23:10:01 +0000] \"\\x16\\x03\\x01\" 400 0 \"-\" \"-\"",
                Some(("\\x16\\x03\\x01", 400)),
            ),
            (
                "Apache's startup notice",
                "[Mon Dec 07 23:10:01.123 2026] [mpm_event:notice] [pid 1:tid 1] AH00489: Apache/2.4.62 configured",
                None,
            ),
            ("busybox httpd -v", "172.17.0.1:40000: response:404", None),
            ("empty", "", None),
            ("status not a number", "1.2.3.4 - - [07/Dec/2026:23:10:01 +0000] \"GET / HTTP/1.1\" abc 1", None),
            ("status out of range", "1.2.3.4 - - [07/Dec/2026:23:10:01 +0000] \"GET / HTTP/1.1\" 999 1", None),
            ("bytes not a number", "1.2.3.4 - - [07/Dec/2026:23:10:01 +0000] \"GET / HTTP/1.1\" 200 x", None),
            ("unterminated request", "1.2.3.4 - - [07/Dec/2026:23:10:01 +0000] \"GET / HTTP/1.1 200 1", None),
            ("no bytes field", "1.2.3.4 - - [07/Dec/2026:23:10:01 +0000] \"GET / HTTP/1.1\" 200", None),
        ];
        for (what, line, want) in cases {
            let got = parse_line(line).map(|r| (r.request, r.status));
            assert_eq!(got, *want, "{what}: {line:?}");
        }
    }

    #[test]
    fn lines_out_of_pieces() {
        let mut lines = Lines::default();
        assert_eq!(lines.push(b"a - - [x] \"GET / HT"), Vec::<String>::new());
        assert_eq!(lines.push(b"TP/1.1\" 200 1\r\nsecond\nthi"), ["a - - [x] \"GET / HTTP/1.1\" 200 1", "second"]);
        assert_eq!(lines.push(b"rd\n"), ["third"]);
        assert_eq!(lines.push(&vec![b'x'; MAX_LINE + 1]), Vec::<String>::new());
        assert_eq!(lines.push(b"end\n"), ["end"], "an overlong line is dropped, not glued to the next");
    }

    const LIMITS: FiveXxLimits = FiveXxLimits { max_share: 0.05, min_requests: 20 };

    /// Feeds `(second, status, count)` runs to a fresh window; returns the first trip and the
    /// counts at the end.
    fn feed(limits: FiveXxLimits, runs: &[(u64, u16, u64)]) -> (Option<Tripped>, (u64, u64)) {
        let start = Instant::now();
        let mut window = FiveXxShare::new(limits, start);
        let mut tripped = None;
        for &(second, status, count) in runs {
            for _ in 0..count {
                let t = window.record(status, start + Duration::from_secs(second));
                tripped = tripped.or(t);
            }
        }
        (tripped, window.counts())
    }

    #[test]
    fn the_5xx_share_window() {
        /// (what, limits, runs of (second, status, count), what tripped as (requests, 5xx), counts
        /// at the end).
        type Case<'a> = (&'a str, FiveXxLimits, &'a [(u64, u16, u64)], Option<(u64, u64)>, (u64, u64));
        let cases: &[Case] = &[
            ("all good", LIMITS, &[(0, 200, 100)], None, (100, 0)),
            ("5xx below the minimum count", LIMITS, &[(0, 500, 19)], None, (19, 19)),
            ("5xx at the minimum count", LIMITS, &[(0, 500, 20)], Some((20, 20)), (20, 20)),
            ("exactly the share does not exceed it", LIMITS, &[(0, 200, 19), (1, 500, 1)], None, (20, 1)),
            ("just over the share", LIMITS, &[(0, 200, 19), (1, 500, 2)], Some((21, 2)), (21, 2)),
            ("4xx are the client's", LIMITS, &[(0, 404, 50), (0, 400, 50)], None, (100, 0)),
            ("599 is 5xx, 600 would not parse", LIMITS, &[(0, 599, 20)], Some((20, 20)), (20, 20)),
            (
                "old good requests fall out of the window",
                LIMITS,
                &[(0, 200, 1000), (61, 200, 19), (61, 503, 2)],
                Some((21, 2)),
                (21, 2),
            ),
            ("within the window they dilute", LIMITS, &[(0, 200, 1000), (59, 200, 19), (59, 503, 2)], None, (1021, 2)),
            ("old 5xx fall out too", LIMITS, &[(0, 500, 10), (60, 200, 30)], None, (30, 0)),
            ("100% never trips", FiveXxLimits { max_share: 1.0, min_requests: 1 }, &[(0, 500, 50)], None, (50, 50)),
            (
                "0% trips on one 5xx",
                FiveXxLimits { max_share: 0.0, min_requests: 1 },
                &[(0, 500, 1)],
                Some((1, 1)),
                (1, 1),
            ),
        ];
        for (what, limits, runs, trip, counts) in cases {
            let (tripped, end) = feed(*limits, runs);
            assert_eq!(tripped.map(|t| (t.requests, t.errors)), *trip, "{what}");
            assert_eq!(end, *counts, "{what}");
        }
    }

    #[test]
    fn what_tripped_reads_as_a_sentence() {
        let (tripped, _) = feed(LIMITS, &[(0, 200, 18), (0, 500, 2)]);
        assert_eq!(
            tripped.unwrap().to_string(),
            "2 of 20 requests in the last 1m answered 5xx (10.0%, more than [health] max_5xx_share 5% over at least \
             20 requests)"
        );
    }
}
