//! Services a single test owns, so it can stop and start them without disturbing the tests
//! running beside it: a private moto_server, a private registry, a counting proxy in front of
//! S3 and ECR (which can also inject throttling and skew the `Date` header), and a registry
//! that accepts connections and never answers (a hung pull).

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::http::{read_request, Request};
use super::{free_port, repo_root, wait_for, ECR_PASSWORD};

fn stack_dir() -> PathBuf {
    std::env::var_os("BLOG_AGENT_STACK_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join(".stack"))
}

fn answers(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// A moto_server of the test's own. Its state is in memory: a restart loses every bucket.
pub struct PrivateMoto {
    pub port: u16,
    child: Option<Child>,
}

impl PrivateMoto {
    pub fn start() -> PrivateMoto {
        let mut moto = PrivateMoto { port: free_port(), child: None };
        moto.restart();
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        wait_for("moto to stop", Duration::from_secs(10), || (!answers(self.port)).then_some(()));
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(stack_dir().join("venv/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &self.port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server (run scripts/stack-up.sh first)");
        self.child = Some(child);
        wait_for("private moto", Duration::from_secs(30), || answers(self.port).then_some(()));
    }
}

impl Drop for PrivateMoto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A docker-registry of the test's own, with the htpasswd pair moto's ECR token decodes to.
/// Its storage survives a restart.
pub struct PrivateRegistry {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRegistry {
    pub fn start(dir: &Path) -> PrivateRegistry {
        let port = free_port();
        let dir = dir.join(format!("registry-{port}"));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let htpasswd = Command::new("htpasswd").args(["-Bbn", "AWS", ECR_PASSWORD]).output().expect("htpasswd");
        std::fs::write(dir.join("htpasswd"), htpasswd.stdout).unwrap();
        std::fs::write(
            dir.join("config.yml"),
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {data}\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n",
                data = dir.join("data").display(),
                htpasswd = dir.join("htpasswd").display()
            ),
        )
        .unwrap();
        let mut registry = PrivateRegistry { port, dir, child: None };
        registry.restart();
        registry
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        wait_for("registry to stop", Duration::from_secs(10), || (!answers(self.port)).then_some(()));
    }

    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        self.child = Some(child);
        wait_for("private registry", Duration::from_secs(30), || answers(self.port).then_some(()));
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Which requests a [`Fault`] answers.
#[derive(Clone, Debug)]
pub enum Matching {
    /// Every request.
    All,
    /// Requests whose path contains this (S3: a key, or `versions` for ListObjectVersions).
    Path(String),
    /// Requests whose `X-Amz-Target` contains this (JSON services: `AmazonEC2ContainerRegistry`,
    /// or one operation such as `GetAuthorizationToken`).
    Target(String),
}

impl Matching {
    fn matches(&self, request: &Request) -> bool {
        match self {
            Matching::All => true,
            Matching::Path(p) => request.path.contains(p.as_str()),
            Matching::Target(t) => request.header("x-amz-target").is_some_and(|v| v.contains(t.as_str())),
        }
    }
}

/// An answer a [`CountingProxy`] gives instead of forwarding: `status` with error `code` in
/// the body (S3's XML, or a JSON service's `__type` for [`Matching::Target`]), for the
/// requests `only` matches, until `until` (or [`CountingProxy::heal`]).
#[derive(Clone, Debug)]
pub struct Fault {
    pub status: u16,
    pub code: String,
    pub only: Matching,
    pub until: Option<Instant>,
}

impl Fault {
    /// The response bytes for request number `id`.
    fn response(&self, id: usize) -> String {
        let (content_type, extra, body) = match self.only {
            Matching::Target(_) => (
                "application/x-amz-json-1.1",
                format!("x-amzn-ErrorType: {}\r\nx-amzn-RequestId: {id}\r\n", self.code),
                format!("{{\"__type\":\"{}\",\"message\":\"Rate exceeded (injected by the test)\"}}", self.code),
            ),
            _ => (
                "application/xml",
                format!("x-amz-request-id: {id}\r\n"),
                format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{}</Code><Message>injected by the test</Message><RequestId>{id}</RequestId></Error>", self.code),
            ),
        };
        format!(
            "HTTP/1.1 {} Injected\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}\r\n{body}",
            self.status,
            body.len()
        )
    }
}

/// What a [`CountingProxy`] does besides forwarding: the faults it injects (the first that
/// matches a request answers it) and the offset it gives the `Date` header of upstream answers.
#[derive(Default)]
pub struct Behaviour {
    faults: Vec<Fault>,
    /// Seconds added to the `Date` of every forwarded answer (negative: AWS's clock behind
    /// the host's, as a host whose clock is fast sees it).
    date_offset: Option<i64>,
}

/// An HTTP/1.1 proxy that records every request line and its headers, then forwards the bytes
/// unchanged. Pointing `AWS_ENDPOINT_URL` at it shows exactly which S3 and ECR calls an agent
/// makes. It can answer with injected faults instead (S3 `SlowDown`, ECR
/// `ThrottlingException`, KMS access denied), for a time window or until healed, and skew the
/// `Date` header of the answers it forwards ([`CountingProxy::date_offset`]).
pub struct CountingProxy {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Request>>>,
    behaviour: Arc<Mutex<Behaviour>>,
}

impl CountingProxy {
    pub fn start(upstream: u16) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let (log, shared) = (seen.clone(), behaviour.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (log, shared) = (log.clone(), shared.clone());
                std::thread::spawn(move || proxy(client, upstream, &log, &shared));
            }
        });
        CountingProxy { port, seen, behaviour }
    }

    /// Builder option: every forwarded answer's `Date` is `offset` ahead of this machine's
    /// clock (AWS's clock ahead of the host's; the host is slow by `offset`).
    pub fn date_offset(self, offset: Duration) -> CountingProxy {
        self.set_date_offset_secs(offset.as_secs() as i64);
        self
    }

    /// Builder option: every forwarded answer's `Date` is `behind` before this machine's clock
    /// (the host is fast by `behind`).
    pub fn date_behind(self, behind: Duration) -> CountingProxy {
        self.set_date_offset_secs(-(behind.as_secs() as i64));
        self
    }

    /// Sets (or changes) the `Date` offset in seconds, positive ahead of this machine's clock.
    /// With an offset, each request goes upstream on a connection of its own, so its answer
    /// can be rewritten whole.
    pub fn set_date_offset_secs(&self, seconds: i64) {
        self.behaviour.lock().unwrap().date_offset = Some(seconds);
    }

    /// Injects `fault` (in front of those already injected).
    pub fn inject(&self, fault: Fault) {
        self.behaviour.lock().unwrap().faults.insert(0, fault);
    }

    /// Answers every request with `status` and S3 error `code` until [`Self::heal`].
    pub fn fail(&self, status: u16, code: &str) {
        self.inject(Fault { status, code: code.to_owned(), only: Matching::All, until: None });
    }

    /// Answers the requests whose path contains `path` (e.g. `versions`: ListObjectVersions)
    /// with `status` and S3 error `code` until [`Self::heal`]; the rest go through.
    pub fn fail_only(&self, path: &str, status: u16, code: &str) {
        self.inject(Fault { status, code: code.to_owned(), only: Matching::Path(path.to_owned()), until: None });
    }

    /// S3 `SlowDown` (503) on the requests whose path contains `path`, for `window`.
    pub fn slow_down_for(&self, path: &str, window: Duration) {
        let until = Some(Instant::now() + window);
        self.inject(Fault { status: 503, code: "SlowDown".into(), only: Matching::Path(path.to_owned()), until });
    }

    /// ECR `ThrottlingException` (400, JSON) on every ECR call, for `window`.
    pub fn throttle_ecr_for(&self, window: Duration) {
        let until = Some(Instant::now() + window);
        let only = Matching::Target("AmazonEC2ContainerRegistry".into());
        self.inject(Fault { status: 400, code: "ThrottlingException".into(), only, until });
    }

    /// Ends every injected fault.
    pub fn heal(&self) {
        self.behaviour.lock().unwrap().faults.clear();
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

fn proxy(client: TcpStream, upstream: u16, log: &Mutex<Vec<Request>>, behaviour: &Mutex<Behaviour>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { return };
    let (mut server_read, client_write) = (server.try_clone().unwrap(), client.try_clone().unwrap());
    let mut direct = client.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut client_write = client_write;
        let _ = std::io::copy(&mut server_read, &mut client_write);
        let _ = client_write.shutdown(std::net::Shutdown::Both);
    });
    let mut reader = BufReader::new(client);
    let mut server = server;
    loop {
        let Some(request) = read_request(&mut reader) else {
            let _ = server.shutdown(std::net::Shutdown::Write);
            return;
        };
        let id = {
            let mut log = log.lock().unwrap();
            log.push(request.clone());
            log.len()
        };
        let (fault, date_offset) = {
            let mut b = behaviour.lock().unwrap();
            let now = Instant::now();
            b.faults.retain(|f| f.until.is_none_or(|until| now < until));
            (b.faults.iter().find(|f| f.only.matches(&request)).cloned(), b.date_offset)
        };
        if let Some(fault) = fault {
            if direct.write_all(fault.response(id).as_bytes()).is_err() {
                return;
            }
            continue;
        }
        if let Some(offset) = date_offset {
            // The answer is read whole from a connection of its own, its Date rewritten, and
            // written back on the client's (kept-alive) connection.
            let Some(answer) = round_trip(upstream, &request, offset) else {
                let _ = server.shutdown(std::net::Shutdown::Write);
                return;
            };
            if direct.write_all(&answer).is_err() {
                return;
            }
            continue;
        }
        if server.write_all(&request.head).and_then(|_| server.write_all(&request.body)).is_err() {
            return;
        }
    }
}

/// Sends `request` upstream on a new connection (`Connection: close`), reads the answer to
/// its end, and returns it with `Date` set to now + `offset` seconds and a `Content-Length`.
fn round_trip(upstream: u16, request: &Request, offset: i64) -> Option<Vec<u8>> {
    let mut server = TcpStream::connect(("127.0.0.1", upstream)).ok()?;
    let text = String::from_utf8_lossy(&request.head);
    let mut lines = text.split("\r\n");
    let mut head = format!("{}\r\n", lines.next()?);
    for line in lines.filter(|l| !l.is_empty() && !l.to_ascii_lowercase().starts_with("connection:")) {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    server.write_all(head.as_bytes()).ok()?;
    server.write_all(&request.body).ok()?;
    let mut answer = Vec::new();
    server.read_to_end(&mut answer).ok()?;
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let (head, body) = (String::from_utf8_lossy(&answer[..split]).into_owned(), &answer[split + 4..]);
    let mut lines = head.split("\r\n");
    let mut out = format!("{}\r\n", lines.next()?);
    let mut has_length = false;
    for line in lines {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("date:") || lower.starts_with("connection:") {
            continue;
        }
        has_length |= lower.starts_with("content-length:") || lower.starts_with("transfer-encoding:");
        out.push_str(line);
        out.push_str("\r\n");
    }
    let head_request = request.method.eq_ignore_ascii_case("HEAD");
    if !has_length && !head_request {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok()?.as_secs() as i64;
    out.push_str(&format!("Date: {}\r\n\r\n", http_date(now + offset)));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    Some(bytes)
}

/// `seconds` since the epoch as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn http_date(seconds: i64) -> String {
    let (days, secs) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][days.rem_euclid(7) as usize];
    let name = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"][month as usize - 1];
    format!("{weekday}, {day:02} {name} {year} {:02}:{:02}:{:02} GMT", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// A "registry" that accepts connections and never answers: a pull from it hangs.
pub struct HangingRegistry {
    pub port: u16,
}

impl HangingRegistry {
    pub fn start() -> HangingRegistry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming().flatten() {
                held.push(conn);
            }
        });
        HangingRegistry { port }
    }
}

/// A TCP proxy in front of a local port that passes answers on at `bytes_per_second`: a
/// registry on a slow link, so a pull takes a while and keeps reporting progress.
pub struct SlowProxy {
    pub port: u16,
}

impl SlowProxy {
    pub fn start(upstream: u16, bytes_per_second: usize) -> SlowProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else { continue };
                let (mut client_read, mut server_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut client_read, &mut server_write);
                    let _ = server_write.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let (mut server, mut client) = (server, client);
                    let chunk = (bytes_per_second / 20).max(1);
                    let mut buf = vec![0; chunk];
                    loop {
                        match server.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if client.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                                std::thread::sleep(Duration::from_secs_f64(n as f64 / bytes_per_second as f64));
                            }
                        }
                    }
                    let _ = client.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        SlowProxy { port }
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}
