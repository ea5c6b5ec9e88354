//! The agent's AWS calls against the real local stack: the region when nothing configures it
//! and instance metadata is slow, the region an ECR token is asked in, and the bound on an S3
//! read whose body never finishes. Run `scripts/stack-up.sh` first (`make test` does).

mod common;

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http::{read_request, Request};
use common::imds::FakeImds;
use common::*;

const FAST: &str = "[reconcile]\ninterval = \"1s\"\njitter = \"0s\"\n";

/// Leaves the agent no region but instance metadata's (and, for an ECR repository, its host's).
fn without_configured_region(cmd: &mut Command) {
    cmd.env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/nonexistent/blog-agent-test/config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/blog-agent-test/credentials");
}

/// An HTTP/1.1 server on loopback that records each request and lets `respond` write the
/// answer (one request per connection).
struct Recorder {
    port: u16,
    seen: Arc<Mutex<Vec<Request>>>,
}

impl Recorder {
    fn start(respond: fn(&mut TcpStream)) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let Some(request) = read_request(&mut reader) else { return };
                    log.lock().unwrap().push(request);
                    let mut stream = stream;
                    respond(&mut stream);
                });
            }
        });
        Recorder { port, seen }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

/// Runs `cmd` to its end, or fails the test if it is still running after `limit` (so a hang
/// cannot hang the test). Returns the exit code and the combined output.
fn run_bounded(mut cmd: Command, limit: Duration) -> (i32, String) {
    let log = std::env::temp_dir().join(format!("blog-agent-test-{}.log", unique_sha("bounded")));
    cmd.stdout(std::fs::File::create(&log).unwrap()).stderr(std::fs::File::options().append(true).open(&log).unwrap());
    let mut child = cmd.spawn().expect("start blog-agent");
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    let status = status.unwrap_or_else(|| panic!("blog-agent still running after {limit:?}:\n{output}"));
    assert_no_secret(&output);
    (status.code().unwrap_or(-1), output)
}

/// Item 1 of issue 10: no `AWS_REGION`, a local registry (no region in its host) and an
/// instance metadata service that gives the region only 5 s after start. A region looked up
/// once at start would be missing for good ("a region must be set" on every S3 call); the
/// agent must keep asking and converge.
#[test]
fn region_from_slow_instance_metadata_is_picked_up_and_the_host_converges() {
    let mut host = Host::new("region_slow_imds");
    let imds = FakeImds::start(&[]);
    host.imds_endpoint = Some(imds.endpoint.clone());
    host.write_config(FAST);
    let v1 = host.release("good");
    imds.set_region("us-east-1", Duration::from_secs(5));
    let mut agent = host.start_agent_with(&[], without_configured_region);
    host.wait_deployed(&v1, Duration::from_secs(90));
    agent.assert_alive();
    let logs = agent.logs();
    assert!(logs.contains("from instance metadata"), "{logs}");
}

/// Item 2: a host in eu-west-1 whose repository is in us-east-1 asks ECR for the token in
/// us-east-1 (a registry accepts only its own region's tokens). The ECR endpoint here records
/// the call and refuses it, so nothing is pulled (the repository host is not reachable from a
/// test); the SigV4 credential scope shows the region the call was signed for.
#[test]
fn ecr_token_is_asked_in_the_repository_region_not_the_host_region() {
    let mut host = Host::new("region_ecr_token");
    host.registry = "123456789012.dkr.ecr.us-east-1.amazonaws.com".into();
    host.write_config("");
    host.put_release("staging", &unique_sha(&host.id));
    let ecr = Recorder::start(|stream| {
        let body = r#"{"__type":"AccessDeniedException","message":"recorded by the test"}"#;
        let _ = write!(
            stream,
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    });
    let endpoint = ecr.endpoint();
    for (k, v) in
        [("AWS_REGION", "eu-west-1"), ("AWS_DEFAULT_REGION", "eu-west-1"), ("AWS_ENDPOINT_URL_ECR", &endpoint)]
    {
        host.extra_env.push((k.into(), v.into()));
    }
    let run = host.sync();
    assert_ne!(run.code, 0, "{}", run.output());
    let calls: Vec<Request> = ecr
        .requests()
        .into_iter()
        .filter(|r| r.header("x-amz-target").is_some_and(|t| t.contains("GetAuthorizationToken")))
        .collect();
    assert!(!calls.is_empty(), "no GetAuthorizationToken call: {:?}\n{}", ecr.requests(), run.output());
    for call in &calls {
        let auth = call.header("authorization").unwrap_or_default();
        assert!(
            auth.contains("/us-east-1/ecr/aws4_request"),
            "signed for the wrong region: {auth} ({} {})",
            call.method,
            call.path
        );
    }
    assert!(run.output().contains("GetAuthorizationToken was denied"), "{}", run.output());
}

/// Item 3: S3 answers the release read with headers and then sends the body a few bytes at a
/// time, never finishing (fast enough for the SDK's stalled-stream check, which only catches a
/// body that stops completely). The read is bounded as a whole: `sync` fails with a timeout
/// naming the object instead of holding the lock for as long as S3 trickles.
#[test]
fn s3_body_that_never_finishes_fails_the_sync_with_a_timeout() {
    let mut host = Host::new("region_s3_trickle");
    host.write_config("");
    let s3 = Recorder::start(|stream| {
        let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100000\r\nETag: \"trickle\"\r\n\r\n";
        if stream.write_all(head.as_bytes()).is_err() {
            return;
        }
        // 8 bytes a second: 1 KiB (where the agent stops reading) would take over 2 minutes.
        for _ in 0..2000 {
            if stream.write_all(b"0000").and_then(|_| stream.flush()).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    host.s3_endpoint = s3.endpoint();
    let (code, output) = run_bounded(host.command(&["--env", "staging", "sync"]), Duration::from_secs(60));
    assert_ne!(code, 0, "{output}");
    assert!(output.contains("timed out"), "{output}");
    assert!(output.contains(&format!("s3://{}/staging/stagebuild.txt", host.bucket)), "{output}");
    assert!(s3.requests().iter().any(|r| r.method == "GET"), "{:?}", s3.requests());
}
