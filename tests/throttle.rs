//! AWS's bad days: throttling and 5xx from S3 and ECR, injected by a proxy in front of moto
//! (tests/common/services.rs `CountingProxy`). The site keeps serving, the calls a host makes
//! stay few (counted at the proxy), the agent converges once the throttle ends, and every
//! error it logs is one readable line.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::http::Request;
use common::services::{http_date, CountingProxy, PrivateMoto};
use common::{default_key, moto, AgentProcess, Host};

/// The worst case: a pass every 2 s while a new release waits.
const TWO_SECONDS: &str = "[reconcile]\ninterval = \"2s\"\njitter = \"0s\"\n";
const SERVE: Duration = Duration::from_secs(60);
/// A throttle's end is heard within the pause the host drew last (at most 64 s nominal after
/// 40 s of throttling), plus a pass and a deploy.
const AFTER_THROTTLE: Duration = Duration::from_secs(150);

/// A host whose agent reaches S3 and ECR through a counting, fault-injecting proxy in front of
/// the shared moto; the test itself writes to moto directly (its writes are not counted, and
/// not throttled).
fn host_behind_proxy(name: &str) -> (Host, CountingProxy) {
    let mut host = Host::new(name);
    let moto_port = moto().rsplit(':').next().unwrap().parse().unwrap();
    let proxy = CountingProxy::start(moto_port);
    host.extra_env.push(("AWS_ENDPOINT_URL".into(), proxy.endpoint()));
    host.write_config(TWO_SECONDS);
    (host, proxy)
}

fn is_ecr(r: &Request) -> bool {
    r.header("x-amz-target").is_some_and(|t| t.contains("AmazonEC2ContainerRegistry"))
}

fn is_release_read(r: &Request) -> bool {
    r.method == "GET" && r.path.contains(&default_key("staging")) && !r.path.contains("versions")
}

/// Keeps checking that `sha` serves until `until`.
fn keeps_serving(host: &Host, sha: &str, until: Instant) {
    while Instant::now() < until {
        host.assert_serves(sha);
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Issue 24: every AWS error the agent logs is one readable line, never the SDK's Debug dump.
fn assert_readable(logs: &str) {
    for line in logs.lines() {
        for dump in ["ServiceError(", "Response {", "Unhandled(", "ErrorMetadata {"] {
            assert!(!line.contains(dump), "a log line holds {dump:?}: {line}");
        }
    }
}

/// 40 s of ECR `ThrottlingException` while a new release waits, with a pass every 2 s: the
/// old version keeps serving, the host makes at most 8 ECR calls, the new release is deployed
/// once the throttle ends, and the errors logged are readable.
#[test]
fn ecr_throttling_costs_few_calls_and_the_site_keeps_serving() {
    let (host, proxy) = host_behind_proxy("throttle_ecr");
    let v1 = host.release("good");
    {
        let _first = host.start_agent(&[]);
        host.wait_deployed(&v1, SERVE);
    }
    // A new agent (no cached token) while ECR throttles and a new release waits.
    let window = Duration::from_secs(40);
    proxy.throttle_ecr_for(window);
    let from = proxy.requests().len();
    let throttle_ends = Instant::now() + window;
    let v2 = host.release("good");
    let agent: AgentProcess = host.start_agent(&[]);
    agent.wait_log("ThrottlingException", SERVE);
    keeps_serving(&host, &v1, throttle_ends);
    let during: Vec<Request> = proxy.requests().into_iter().skip(from).collect();
    let ecr = during.iter().filter(|r| is_ecr(r)).count();
    assert!((1..=8).contains(&ecr), "{ecr} ECR calls in 40 s of throttling:\n{}", agent.logs());
    eprintln!("{ecr} ECR calls in 40 s of ECR throttling");
    host.wait_deployed(&v2, AFTER_THROTTLE);
    let logs = agent.logs();
    assert_readable(&logs);
    assert!(logs.contains("ThrottlingException: Rate exceeded (injected by the test) (HTTP 400"), "{logs}");
}

/// 30 s of S3 `SlowDown` on the release object, with a pass every 2 s: at most 8 reads of it,
/// the site keeps serving, and a release written meanwhile is deployed once S3 answers again.
#[test]
fn s3_slow_down_costs_few_reads_and_the_site_keeps_serving() {
    let (host, proxy) = host_behind_proxy("throttle_s3");
    let v1 = host.release("good");
    let agent = host.start_agent(&[]);
    host.wait_deployed(&v1, SERVE);
    let window = Duration::from_secs(30);
    let key = default_key("staging");
    proxy.slow_down_for(&key, window);
    let from = proxy.requests().len();
    let throttle_ends = Instant::now() + window;
    let v2 = host.release("good");
    agent.wait_log("SlowDown", SERVE);
    keeps_serving(&host, &v1, throttle_ends);
    let during: Vec<Request> = proxy.requests().into_iter().skip(from).collect();
    let reads = during.iter().filter(|r| is_release_read(r)).count();
    assert!((1..=8).contains(&reads), "{reads} reads of {key} in 30 s of SlowDown:\n{}", agent.logs());
    eprintln!("{reads} reads of {key} in 30 s of SlowDown");
    host.wait_deployed(&v2, AFTER_THROTTLE);
    let logs = agent.logs();
    assert_readable(&logs);
    assert!(logs.contains("SlowDown: injected by the test (HTTP 503"), "{logs}");
}

/// `sync` run by an operator during a throttle: a few attempts, then a one-line error naming
/// the service's answer, and a non-zero exit.
#[test]
fn sync_during_a_throttle_fails_soon_with_one_readable_line() {
    let (host, proxy) = host_behind_proxy("throttle_sync");
    host.release("good");
    proxy.throttle_ecr_for(Duration::from_secs(120));
    let run = host.sync();
    eprintln!("sync during ECR throttling, exit {}:\n{}", run.code, run.stderr);
    assert_ne!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains("ThrottlingException: Rate exceeded"), "{}", run.stderr);
    assert_readable(&run.output());
    let ecr = proxy.requests().iter().filter(|r| is_ecr(r)).count();
    assert_eq!(ecr, 3, "one call and two retries: {}", run.output());
}

/// The proxy's own behaviour: a `Date` offset is applied to forwarded answers (the clock
/// tests rely on it), and an HTTP date is formatted as RFC 9110 says.
#[test]
fn the_proxy_skews_the_date_header() {
    assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    assert_eq!(http_date(1_798_761_600), "Fri, 01 Jan 2027 00:00:00 GMT");
    let moto = PrivateMoto::start();
    let proxy = CountingProxy::start(moto.port).date_behind(Duration::from_secs(20 * 60));
    let mut conn = TcpStream::connect(("127.0.0.1", proxy.port)).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    // Two requests on one kept-alive connection: each answer is whole and skewed.
    for _ in 0..2 {
        conn.write_all(b"GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let head = read_answer(&mut conn);
        let date = head.lines().find_map(|l| l.strip_prefix("Date: ")).unwrap_or_else(|| panic!("{head}"));
        let expected = [http_date(now - 1200), http_date(now - 1199), http_date(now - 1201)];
        assert!(expected.contains(&date.to_owned()), "{date} not 20 minutes behind: {head}");
    }
    assert_eq!(proxy.requests().len(), 2);
}

/// Reads one answer (head and a Content-Length body) from `conn`; returns the head.
fn read_answer(conn: &mut TcpStream) -> String {
    let mut bytes = Vec::new();
    let mut byte = [0u8];
    while !bytes.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).unwrap();
        bytes.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&bytes).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    conn.read_exact(&mut body).unwrap();
    head
}
