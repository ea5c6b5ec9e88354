//! Services a single test owns, so it can stop and start them without disturbing the tests
//! running beside it: a private moto_server, a private registry, a counting proxy in front of
//! S3, and a registry that accepts connections and never answers (a hung pull).

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// What a [`CountingProxy`] answers instead of forwarding: (status, S3 error code, only requests
/// whose path contains this).
type Failure = Mutex<Option<(u16, String, Option<String>)>>;

/// An HTTP/1.1 proxy that records every request line and its headers, then forwards the bytes
/// unchanged. Pointing `AWS_ENDPOINT_URL` at it shows exactly which S3 and ECR calls an agent
/// makes.
pub struct CountingProxy {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Request>>>,
    /// When set, every request (or, with a third part, every request whose path contains it)
    /// is answered with this (status, S3 error code) instead of being forwarded: S3
    /// throttling, 5xx, or KMS access denied, on demand.
    pub fail_with: Arc<Failure>,
}

impl CountingProxy {
    pub fn start(upstream: u16) -> CountingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let fail_with = Arc::new(Mutex::new(None));
        let (log, fail) = (seen.clone(), fail_with.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (log, fail) = (log.clone(), fail.clone());
                std::thread::spawn(move || proxy(client, upstream, &log, &fail));
            }
        });
        CountingProxy { port, seen, fail_with }
    }

    /// Answers every request with `status` and S3 error `code` until [`Self::heal`].
    pub fn fail(&self, status: u16, code: &str) {
        *self.fail_with.lock().unwrap() = Some((status, code.to_owned(), None));
    }

    /// Answers the requests whose path contains `path` (e.g. `versions`: ListObjectVersions)
    /// with `status` and S3 error `code` until [`Self::heal`]; the rest go through.
    pub fn fail_only(&self, path: &str, status: u16, code: &str) {
        *self.fail_with.lock().unwrap() = Some((status, code.to_owned(), Some(path.to_owned())));
    }

    pub fn heal(&self) {
        *self.fail_with.lock().unwrap() = None;
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.seen.lock().unwrap().clone()
    }
}

fn proxy(client: TcpStream, upstream: u16, log: &Mutex<Vec<Request>>, fail: &Failure) {
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
        log.lock().unwrap().push(request.clone());
        let failing = fail
            .lock()
            .unwrap()
            .clone()
            .filter(|(_, _, only)| only.as_ref().is_none_or(|p| request.path.contains(p.as_str())));
        if let Some((status, code, _)) = failing {
            let xml = format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test</Message><RequestId>{}</RequestId></Error>", log.lock().unwrap().len());
            let response = format!(
                "HTTP/1.1 {status} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nx-amz-request-id: {}\r\n\r\n{xml}",
                xml.len(),
                log.lock().unwrap().len()
            );
            if direct.write_all(response.as_bytes()).is_err() {
                return;
            }
            continue;
        }
        if server.write_all(&request.head).and_then(|_| server.write_all(&request.body)).is_err() {
            return;
        }
    }
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
