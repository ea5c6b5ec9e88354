//! A small IMDSv2 stand-in: token PUT with TTL header, 401 without a token, instance tags
//! under `/latest/meta-data/tags/instance/`, 404 for a missing tag. moto serves IMDS tokens
//! but answers 500 on tag paths, so the tests bring their own.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TOKEN: &str = "test-imds-token";

pub struct FakeImds {
    pub endpoint: String,
    tags: Arc<Mutex<HashMap<String, String>>>,
    pub tag_reads: Arc<AtomicUsize>,
    /// How long every answer is held back: an instance whose metadata service is slow at boot.
    delay: Arc<Mutex<Duration>>,
}

impl FakeImds {
    pub fn start(tags: &[(&str, &str)]) -> FakeImds {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let tags = Arc::new(Mutex::new(tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()));
        let tag_reads = Arc::new(AtomicUsize::new(0));
        let delay = Arc::new(Mutex::new(Duration::ZERO));
        let (t, r, d) = (tags.clone(), tag_reads.clone(), delay.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (t, r, d) = (t.clone(), r.clone(), d.clone());
                std::thread::spawn(move || serve(stream, &t, &r, &d));
            }
        });
        FakeImds { endpoint, tags, tag_reads, delay }
    }

    pub fn set_delay(&self, delay: Duration) {
        *self.delay.lock().unwrap() = delay;
    }

    pub fn set_tag(&self, key: &str, value: &str) {
        self.tags.lock().unwrap().insert(key.into(), value.into());
    }
}

fn serve(stream: TcpStream, tags: &Mutex<HashMap<String, String>>, tag_reads: &AtomicUsize, delay: &Mutex<Duration>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        if let Some(len) = headers.get("content-length").and_then(|l| l.parse::<usize>().ok()) {
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (status, extra, body) = if method == "PUT" && path == "/latest/api/token" {
            match headers.get("x-aws-ec2-metadata-token-ttl-seconds") {
                Some(ttl) => (200, format!("X-aws-ec2-metadata-token-ttl-seconds: {ttl}\r\n"), TOKEN.to_owned()),
                None => (400, String::new(), String::new()),
            }
        } else if headers.get("x-aws-ec2-metadata-token").map(String::as_str) != Some(TOKEN) {
            (401, String::new(), String::new())
        } else if let Some(tag) = path.strip_prefix("/latest/meta-data/tags/instance/") {
            tag_reads.fetch_add(1, Ordering::SeqCst);
            match tags.lock().unwrap().get(tag) {
                Some(v) => (200, String::new(), v.clone()),
                None => (404, String::new(), String::new()),
            }
        } else {
            (404, String::new(), String::new())
        };
        let hold = *delay.lock().unwrap();
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
