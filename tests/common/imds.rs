//! A small IMDSv2 stand-in: token PUT with TTL header, 401 without a token, instance tags
//! under `/latest/meta-data/tags/instance/`, 404 for a missing tag, and the region under
//! `/latest/meta-data/placement/region` once [`FakeImds::set_region`] gives one (404 before),
//! and the instance id under `/latest/meta-data/instance-id` once [`FakeImds::set_instance_id`]
//! gives one, and the Auto Scaling target lifecycle state once
//! [`FakeImds::set_target_lifecycle_state`] gives one (404 before, as every other path).
//! moto serves IMDS tokens but answers 500 on tag paths, so the tests bring their own.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "test-imds-token";

pub struct FakeImds {
    pub endpoint: String,
    tags: Arc<Mutex<HashMap<String, String>>>,
    pub tag_reads: Arc<AtomicUsize>,
    /// How long every answer is held back: an instance whose metadata service is slow at boot.
    delay: Arc<Mutex<Duration>>,
    /// The region, and from when it is answered: a region read before then is held until then.
    region: Arc<Mutex<Option<(String, Instant)>>>,
    pub region_reads: Arc<AtomicUsize>,
    instance_id: Arc<Mutex<Option<String>>>,
    target_lifecycle_state: Arc<Mutex<Option<String>>>,
}

/// What the server threads share.
#[derive(Clone)]
struct Shared {
    tags: Arc<Mutex<HashMap<String, String>>>,
    tag_reads: Arc<AtomicUsize>,
    delay: Arc<Mutex<Duration>>,
    region: Arc<Mutex<Option<(String, Instant)>>>,
    region_reads: Arc<AtomicUsize>,
    instance_id: Arc<Mutex<Option<String>>>,
    target_lifecycle_state: Arc<Mutex<Option<String>>>,
}

impl FakeImds {
    pub fn start(tags: &[(&str, &str)]) -> FakeImds {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let tags = Arc::new(Mutex::new(tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()));
        let tag_reads = Arc::new(AtomicUsize::new(0));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let region = Arc::new(Mutex::new(None));
        let region_reads = Arc::new(AtomicUsize::new(0));
        let instance_id = Arc::new(Mutex::new(None));
        let target_lifecycle_state = Arc::new(Mutex::new(None));
        let shared = Shared {
            tags: tags.clone(),
            tag_reads: tag_reads.clone(),
            delay: delay.clone(),
            region: region.clone(),
            region_reads: region_reads.clone(),
            instance_id: instance_id.clone(),
            target_lifecycle_state: target_lifecycle_state.clone(),
        };
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        FakeImds { endpoint, tags, tag_reads, delay, region, region_reads, instance_id, target_lifecycle_state }
    }

    /// Answers `state` on `autoscaling/target-lifecycle-state` (an Auto Scaling instance).
    pub fn set_target_lifecycle_state(&self, state: &str) {
        *self.target_lifecycle_state.lock().unwrap() = Some(state.to_owned());
    }

    /// Answers `id` on the instance id path (an EC2 host's identity for the rollout seed).
    pub fn set_instance_id(&self, id: &str) {
        *self.instance_id.lock().unwrap() = Some(id.to_owned());
    }

    /// Answers `region` on the region path, but only from `after` from now: a read before then
    /// is held until then (a metadata service slow at boot; the client's read timeout ends it).
    pub fn set_region(&self, region: &str, after: Duration) {
        *self.region.lock().unwrap() = Some((region.to_owned(), Instant::now() + after));
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    pub fn set_tag(&self, key: &str, value: &str) {
        self.tags.lock().unwrap().insert(key.into(), value.into());
    }
}

fn serve(stream: TcpStream, shared: &Shared) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    while let Some(request) = super::http::read_request(&mut reader) {
        let (method, path, headers) = (request.method.as_str(), request.path.as_str(), &request.headers);
        let (status, extra, body) = if method == "PUT" && path == "/latest/api/token" {
            match headers.get("x-aws-ec2-metadata-token-ttl-seconds") {
                Some(ttl) => (200, format!("X-aws-ec2-metadata-token-ttl-seconds: {ttl}\r\n"), TOKEN.to_owned()),
                None => (400, String::new(), String::new()),
            }
        } else if headers.get("x-aws-ec2-metadata-token").map(String::as_str) != Some(TOKEN) {
            (401, String::new(), String::new())
        } else if let Some(tag) = path.strip_prefix("/latest/meta-data/tags/instance/") {
            shared.tag_reads.fetch_add(1, Ordering::SeqCst);
            match shared.tags.lock().unwrap().get(tag) {
                Some(v) => (200, String::new(), v.clone()),
                None => (404, String::new(), String::new()),
            }
        } else if path == "/latest/meta-data/instance-id" {
            match shared.instance_id.lock().unwrap().clone() {
                Some(id) => (200, String::new(), id),
                None => (404, String::new(), String::new()),
            }
        } else if path == "/latest/meta-data/autoscaling/target-lifecycle-state" {
            match shared.target_lifecycle_state.lock().unwrap().clone() {
                Some(state) => (200, String::new(), state),
                None => (404, String::new(), String::new()),
            }
        } else if path == "/latest/meta-data/placement/region" {
            shared.region_reads.fetch_add(1, Ordering::SeqCst);
            let region = shared.region.lock().unwrap().clone();
            match region {
                Some((region, from)) => {
                    std::thread::sleep(from.saturating_duration_since(Instant::now()));
                    (200, String::new(), region)
                }
                None => (404, String::new(), String::new()),
            }
        } else {
            (404, String::new(), String::new())
        };
        let hold = *shared.delay.lock().unwrap();
        std::thread::sleep(hold);
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            _ => "Not Found",
        };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            body.len()
        );
        if out.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}
