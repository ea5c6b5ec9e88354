//! `outside::netfilter` against the real kernel and Docker: traffic switched between two
//! containers with no published ports while clients keep asking, on every path a client takes:
//! (a) the host's loopback, (b) a client in its own network namespace over a veth pair
//! (PREROUTING, then FORWARD through Docker's DOCKER-USER), (c) a keep-alive connection and a
//! request in flight across the switch (real Apache httpd, scripts/build-apache-image.sh).
//! Then repair (a flushed chain, a flushed DOCKER-USER), idempotence and removal, and both
//! iptables backends in a network namespace laid out like a Docker host.
//!
//! Traffic goes only to loopback, to the test containers' bridge addresses, and to addresses
//! inside namespaces these tests create. Every chain (prefix `BA-T<pid>-<n>`), namespace
//! (`ba-<pid>-<n>-*`) and veth (`bah<pid>x<n>`) is removed by name when the test ends, panicking
//! or not ([`Env`]'s Drop); leftovers of a killed run are swept by the next one. Tests that
//! touch the host's netfilter state run one at a time (an abstract-socket lock): they share
//! docker0's `route_localnet`, which [`Netfilter::remove`] may reset.
//!
//! Needs root, dockerd and the local registry (`scripts/stack-up.sh`).

mod common;

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::unix::net::UnixListener;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blog_agent::outside::netfilter::{Backend, Mapping, Netfilter, NetfilterError, OwnerLookup, Target};
use common::*;

/// Requests per client in a switching run, one every 10 ms (as the measurement).
const REQUESTS: usize = 300;
/// Switches per run; one every `REQUESTS / (SWITCHES + 1)` requests.
const SWITCHES: usize = 5;
const PAUSE: Duration = Duration::from_millis(10);
/// Client timeout per request (the measurement used 1 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

// ---- plumbing -----------------------------------------------------------------------------

fn sh(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("run {cmd}: {e}"))
}

fn sh_ok(cmd: &str, args: &[&str]) -> String {
    let out = sh(cmd, args);
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs one test at a time across processes (nextest runs each test in its own): a bound
/// abstract unix socket, released by the kernel however the process ends.
fn serial() -> UnixListener {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(b"blog-agent-tests-netfilter").unwrap();
    wait_for("the netfilter test lock", Duration::from_secs(900), || UnixListener::bind_addr(&addr).ok())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn pid_alive(pid: &str) -> bool {
    std::path::Path::new("/proc").join(pid).exists()
}

/// Removes chains, namespaces, veths, containers and images that a killed earlier run left
/// (its pid is gone).
fn sweep_leftovers() {
    let mut prefixes = std::collections::BTreeSet::new();
    for table in ["nat", "filter"] {
        for line in sh_ok("iptables", &["-w", "5", "-t", table, "-S"]).lines() {
            let Some(chain) = line.strip_prefix("-N BA-T") else { continue };
            let mut parts = chain.splitn(3, '-');
            if let (Some(pid), Some(n)) = (parts.next(), parts.next()) {
                if !pid_alive(pid) {
                    prefixes.insert(format!("BA-T{pid}-{n}"));
                }
            }
        }
    }
    for prefix in prefixes {
        eprintln!("sweeping leftover chains {prefix}-*");
        if let Err(e) = remove_chains(&prefix) {
            eprintln!("sweep {prefix}: {e}");
        }
    }
    // Containers and images: the label value and the repository name carry the pid.
    let labels = docker_ok(&[
        "ps",
        "-a",
        "--filter",
        &format!("label={TEST_LABEL}"),
        "--format",
        &format!("{{{{.Label \"{TEST_LABEL}\"}}}}"),
    ]);
    for value in labels.lines() {
        if let Some(pid) = value.strip_prefix("nf-").and_then(|r| r.split('-').next()) {
            if !pid_alive(pid) {
                remove_labelled(value);
            }
        }
    }
    for image in docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]).lines() {
        if let Some(pid) = image.split_once("/t/nf-").and_then(|(_, r)| r.split('-').next()) {
            if !pid_alive(pid) {
                let _ = docker(&["rmi", image]);
            }
        }
    }
    for ns in sh_ok("ip", &["netns", "list"]).lines().filter_map(|l| l.split_whitespace().next()) {
        if let Some(pid) = ns.strip_prefix("ba-").and_then(|r| r.split('-').next()) {
            if !pid_alive(pid) {
                let _ = sh("ip", &["netns", "del", ns]);
            }
        }
    }
    for line in sh_ok("ip", &["-o", "link", "show", "type", "veth"]).lines() {
        let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n)) else { continue };
        if let Some(pid) = name.strip_prefix("bah").and_then(|r| r.split('x').next()) {
            if !pid_alive(pid) {
                let _ = sh("ip", &["link", "del", name]);
            }
        }
    }
}

/// One test's resources, all removed by name on drop.
struct Env {
    id: String,
    n: usize,
    nf: Netfilter,
    rt: tokio::runtime::Runtime,
    netns: Vec<String>,
    links: Vec<String>,
    images: Vec<String>,
    children: Vec<Child>,
    /// DOCKER-USER rules (not ours) to put back if a test flushed the chain.
    docker_user: Vec<String>,
    _lock: Option<UnixListener>,
}

impl Env {
    /// A test that changes the host's own netfilter state (serialized).
    fn host(name: &str) -> Env {
        let lock = serial();
        sweep_leftovers();
        let mut env = Env::bare(name);
        env._lock = Some(lock);
        remove_labelled(&env.id);
        env
    }

    fn bare(name: &str) -> Env {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let id = format!("nf-{pid}-{name}-{}", &unique_sha(name)[..8]);
        Env {
            nf: Netfilter::with_prefix(&format!("BA-T{pid}-{n}")).unwrap(),
            id,
            n,
            rt: runtime(),
            netns: vec![],
            links: vec![],
            images: vec![],
            children: vec![],
            docker_user: vec![],
            _lock: None,
        }
    }

    fn apply(&self, mappings: &[Mapping], target: Target) -> Duration {
        let started = Instant::now();
        self.rt.block_on(self.nf.apply(mappings, target)).unwrap_or_else(|e| panic!("apply: {e}"));
        started.elapsed()
    }

    fn current(&self) -> Option<Target> {
        self.rt.block_on(self.nf.current()).unwrap()
    }

    fn in_place(&self, mappings: &[Mapping], target: Target) -> bool {
        self.rt.block_on(self.nf.in_place(mappings, target)).unwrap()
    }

    /// A busybox blog image (scripts/publish-image.sh), pulled from the local registry.
    fn busybox_image(&mut self) -> (String, String) {
        let sha = unique_sha(&self.id);
        let repo = format!("t/{}", self.id);
        publish_image(&sha, "good", &registry(), &repo);
        let image = format!("{}/{repo}:{sha}", registry());
        docker_ok(&["pull", "-q", &image]);
        self.images.push(image.clone());
        (image, sha)
    }

    /// Starts a labelled container with no published port; waits until it serves on its bridge
    /// address and returns that address.
    fn container(&self, name: &str, image: &str, env: &[&str]) -> Ipv4Addr {
        let name = format!("{}-{name}", self.id);
        let label = format!("{TEST_LABEL}={}", self.id);
        let mut args = vec!["run", "-d", "--name", &name, "--label", &label];
        for e in env {
            args.extend(["-e", e]);
        }
        args.push(image);
        docker_ok(&args);
        let ip: Ipv4Addr = docker_ok(&["inspect", "-f", "{{.NetworkSettings.IPAddress}}", &name]).parse().unwrap();
        wait_for(&format!("{name} to serve on {ip}:80"), Duration::from_secs(30), || {
            get(SocketAddrV4::new(ip, 80), "/").ok().filter(|(s, _)| *s == 200)
        });
        ip
    }

    /// A network namespace with a veth pair to the host: returns (namespace, host-end address).
    /// The /30 is one no interface or route on this host uses.
    fn client_namespace(&mut self) -> (String, Ipv4Addr) {
        let pid = std::process::id();
        let ns = format!("ba-{pid}-{}-cl", self.n);
        let link = format!("bah{pid}x{}", self.n);
        let used = format!("{}{}", sh_ok("ip", &["-4", "addr"]), sh_ok("ip", &["-4", "route"]));
        let k = (0..200)
            .map(|i| 20 + (pid as usize + self.n + i) % 200)
            .find(|k| !used.contains(&format!("10.213.{k}.")))
            .expect("a free 10.213.x.0/30");
        let (host, client) = (Ipv4Addr::new(10, 213, k as u8, 1), Ipv4Addr::new(10, 213, k as u8, 2));
        sh_ok("ip", &["netns", "add", &ns]);
        self.netns.push(ns.clone());
        sh_ok("ip", &["link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
        self.links.push(link.clone());
        sh_ok("ip", &["addr", "add", &format!("{host}/30"), "dev", &link]);
        sh_ok("ip", &["link", "set", &link, "up"]);
        sh_ok("ip", &["-n", &ns, "addr", "add", &format!("{client}/30"), "dev", "eth0"]);
        sh_ok("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        sh_ok("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        sh_ok("ip", &["-n", &ns, "route", "add", "default", "via", &host.to_string()]);
        (ns, host)
    }

    /// Flushes DOCKER-USER, remembering Docker's own rules there to put back on drop.
    fn flush_docker_user(&mut self) {
        let ours = format!("-j {}", self.nf.chains().forward);
        for line in sh_ok("iptables", &["-w", "5", "-S", "DOCKER-USER"]).lines() {
            if let Some(spec) = line.strip_prefix("-A DOCKER-USER ") {
                if spec != ours && !self.docker_user.iter().any(|s| s == spec) {
                    self.docker_user.push(spec.to_owned());
                }
            }
        }
        sh_ok("iptables", &["-w", "5", "-F", "DOCKER-USER"]);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Err(e) = self.rt.block_on(self.nf.remove()) {
            eprintln!("cleanup: remove {}: {e}", self.nf.prefix());
        }
        for spec in &self.docker_user {
            let words: Vec<&str> = spec.split_whitespace().collect();
            let mut check = vec!["-w", "5", "-C", "DOCKER-USER"];
            check.extend(&words);
            if !sh("iptables", &check).status.success() {
                let mut add = vec!["-w", "5", "-A", "DOCKER-USER"];
                add.extend(&words);
                let _ = sh("iptables", &add);
            }
        }
        remove_labelled(&self.id);
        for image in &self.images {
            let _ = docker(&["rmi", image]);
        }
        for link in &self.links {
            let _ = sh("ip", &["link", "del", link]);
        }
        for ns in &self.netns {
            let out = sh("ip", &["netns", "del", ns]);
            if !out.status.success() {
                eprintln!("cleanup: ip netns del {ns}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
    }
}

// ---- clients ------------------------------------------------------------------------------

/// One HTTP/1.0 GET (a new connection), bounded by [`REQUEST_TIMEOUT`].
fn get(addr: SocketAddrV4, path: &str) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect_timeout(&SocketAddr::V4(addr), REQUEST_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(REQUEST_TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: blog\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| format!("read: {e}"))?;
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(format!("no status in {text:?}"))?;
    Ok((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}

/// "version X" in a page -> X.
fn version_of(body: &str) -> Option<String> {
    let rest = body.split_once("version ")?.1;
    Some(rest.split(|c: char| c == '<' || c.is_whitespace()).next()?.to_owned())
}

#[derive(Debug, Default)]
struct Tally {
    ok: usize,
    failed: Vec<String>,
    versions: BTreeMap<String, usize>,
    slowest: Duration,
}

impl Tally {
    fn record(&mut self, outcome: Result<String, String>, took: Duration) {
        match outcome {
            Ok(version) => {
                self.ok += 1;
                *self.versions.entry(version).or_default() += 1;
            }
            Err(e) => self.failed.push(e),
        }
        self.slowest = self.slowest.max(took);
    }
}

/// A client of its own: `REQUESTS` sequential requests, one every 10 ms; progress counts them.
struct Load {
    name: &'static str,
    progress: Arc<AtomicUsize>,
    handle: JoinHandle<Tally>,
}

impl Load {
    /// (a) From the host itself, to `addr` (loopback).
    fn loopback(addr: SocketAddrV4) -> Load {
        let progress = Arc::new(AtomicUsize::new(0));
        let counter = progress.clone();
        let handle = std::thread::spawn(move || {
            let mut tally = Tally::default();
            let deadline = Instant::now() + Duration::from_secs(60);
            for _ in 0..REQUESTS {
                let started = Instant::now();
                let outcome = get(addr, "/").and_then(|(status, body)| match status {
                    200 => version_of(&body).ok_or(format!("no version in {body:?}")),
                    other => Err(format!("HTTP {other}")),
                });
                tally.record(outcome, started.elapsed());
                counter.fetch_add(1, Ordering::SeqCst);
                if Instant::now() > deadline {
                    break;
                }
                std::thread::sleep(PAUSE);
            }
            tally
        });
        Load { name: "loopback", progress, handle }
    }

    /// (b) From network namespace `ns` (curl in a bounded shell loop), to `url`.
    fn from_namespace(ns: &str, url: &str) -> Load {
        let script = format!(
            "for i in $(seq {REQUESTS}); do \
               s=$(date +%s%N); \
               if r=$(curl -fsS -m {t} {url} 2>&1); then echo \"OK $(( ($(date +%s%N) - s) / 1000000 )) $r\"; \
               else echo \"FAIL $(( ($(date +%s%N) - s) / 1000000 )) $r\"; fi; \
               sleep 0.01; done",
            t = REQUEST_TIMEOUT.as_secs()
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, "timeout", "90", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let progress = Arc::new(AtomicUsize::new(0));
        let counter = progress.clone();
        let handle = std::thread::spawn(move || {
            let mut tally = Tally::default();
            for line in BufReader::new(stdout).lines() {
                let line = line.unwrap_or_default();
                let mut words = line.splitn(3, ' ');
                let (kind, ms, rest) = (words.next(), words.next(), words.next().unwrap_or(""));
                let took = Duration::from_millis(ms.and_then(|m| m.parse().ok()).unwrap_or(0));
                let outcome = match kind {
                    Some("OK") => version_of(rest).ok_or(format!("no version in {rest:?}")),
                    _ => Err(line.clone()),
                };
                tally.record(outcome, took);
                counter.fetch_add(1, Ordering::SeqCst);
            }
            let _ = child.kill();
            let _ = child.wait();
            tally
        });
        Load { name: "namespace", progress, handle }
    }
}

/// Runs the loads while switching `SWITCHES` times between the two targets (starting from
/// `targets[0]`, already applied); asserts no request failed and both versions answered.
fn switch_under_load(env: &Env, mappings: &[Mapping], targets: [Target; 2], loads: Vec<Load>) {
    let every = REQUESTS / (SWITCHES + 1);
    let mut applies = vec![];
    for k in 1..=SWITCHES {
        wait_for(&format!("{} requests from every client", k * every), Duration::from_secs(60), || {
            loads.iter().all(|l| l.progress.load(Ordering::SeqCst) >= k * every).then_some(())
        });
        let to = targets[k % 2];
        applies.push(env.apply(mappings, to));
        assert_eq!(env.current(), Some(to));
    }
    for load in loads {
        let tally = load.handle.join().expect("client thread");
        eprintln!(
            "{} client: {} ok, {} failed, versions {:?}, slowest {:?}; applies took {:?}",
            load.name,
            tally.ok,
            tally.failed.len(),
            tally.versions,
            tally.slowest,
            applies
        );
        assert!(tally.failed.is_empty(), "{} client: failed requests: {:?}", load.name, tally.failed);
        assert_eq!(tally.ok, REQUESTS, "{} client: every request answered", load.name);
        assert_eq!(tally.versions.len(), 2, "{} client: both versions answered: {:?}", load.name, tally.versions);
    }
}

fn count_rules(table: &str, chain: &str, jump_to: &str) -> usize {
    let out = sh_ok("iptables", &["-w", "5", "-t", table, "-S", chain]);
    out.lines().filter(|l| l.ends_with(&format!("-j {jump_to}"))).count()
}

fn rules_mentioning(prefix: &str) -> Vec<String> {
    let mut found = vec![];
    for table in ["nat", "filter"] {
        let out = sh_ok("iptables", &["-w", "5", "-t", table, "-S"]);
        found.extend(out.lines().filter(|l| l.contains(&format!("{prefix}-"))).map(|l| format!("{table}: {l}")));
    }
    found
}

fn route_localnet(bridge: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{bridge}/route_localnet")).unwrap().trim().to_owned()
}

// ---- tests against the host's Docker (nf_tables backend here) -----------------------------

#[test]
fn loopback_clients_lose_no_request_across_five_switches() {
    let mut env = Env::host("loopback");
    let (image_a, sha_a) = env.busybox_image();
    let (image_b, sha_b) = env.busybox_image();
    let a = Target::new(env.container("a", &image_a, &[]));
    let b = Target::new(env.container("b", &image_b, &[]));
    let port = free_port();
    let mappings = [Mapping::new(None, port, 80)];
    env.apply(&mappings, a);
    assert_eq!(route_localnet("docker0"), "1");
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let (_, body) = get(addr, "/").unwrap();
    assert_eq!(version_of(&body).as_deref(), Some(sha_a.as_str()));

    switch_under_load(&env, &mappings, [a, b], vec![Load::loopback(addr)]);
    let (_, body) = get(addr, "/").unwrap();
    assert_eq!(version_of(&body).as_deref(), Some(sha_b.as_str()), "after an odd number of switches");
}

#[test]
fn namespace_clients_over_a_veth_lose_no_request_across_five_switches() {
    let mut env = Env::host("veth");
    let (image_a, _) = env.busybox_image();
    let (image_b, _) = env.busybox_image();
    let a = Target::new(env.container("a", &image_a, &[]));
    let b = Target::new(env.container("b", &image_b, &[]));
    let (ns, host) = env.client_namespace();
    let port = free_port();
    let mappings = [Mapping::new(None, port, 80)];
    env.apply(&mappings, a);
    let url = format!("http://{host}:{port}/");
    let probe = sh("ip", &["netns", "exec", &ns, "curl", "-fsS", "-m", "2", &url]);
    assert!(probe.status.success(), "from {ns}: {}", String::from_utf8_lossy(&probe.stderr));

    // Both paths at once, as a host behind a load balancer that also probes itself.
    let loopback = Load::loopback(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    switch_under_load(&env, &mappings, [a, b], vec![Load::from_namespace(&ns, &url), loopback]);
}

/// One keep-alive connection: requests on it keep their first target.
struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    fn open(addr: SocketAddrV4) -> KeepAlive {
        let s = TcpStream::connect_timeout(&SocketAddr::V4(addr), REQUEST_TIMEOUT).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        KeepAlive { reader: BufReader::new(s) }
    }

    /// GET on the open connection: (status, body), or why not (closed by the server).
    fn get(&mut self, path: &str) -> Result<(u16, String), String> {
        write!(self.reader.get_mut(), "GET {path} HTTP/1.1\r\nHost: blog\r\n\r\n")
            .map_err(|e| format!("write: {e}"))?;
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line).map_err(|e| format!("read: {e}"))? == 0 {
            return Err("connection closed".into());
        }
        let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or(status_line.clone())?;
        let mut length = 0;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).map_err(|e| format!("read: {e}"))?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
                assert!(!(k.eq_ignore_ascii_case("transfer-encoding")), "chunked answers are not expected");
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body).map_err(|e| format!("read body: {e}"))?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

fn apache_image() -> String {
    let out = Command::new("bash").arg(repo_root().join("scripts/build-apache-image.sh")).output().unwrap();
    assert!(out.status.success(), "build-apache-image.sh: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn keep_alive_and_in_flight_requests_stay_on_the_old_container_until_it_drains() {
    let image = apache_image();
    let env = Env::host("keepalive");
    let (va, vb) = (format!("a-{}", env.id), format!("b-{}", env.id));
    let a = Target::new(env.container("a", &image, &[&format!("BLOG_VERSION={va}")]));
    let b = Target::new(env.container("b", &image, &[&format!("BLOG_VERSION={vb}")]));
    let port = free_port();
    let mappings = [Mapping::new(Some(Ipv4Addr::LOCALHOST), port, 80)];
    env.apply(&mappings, a);
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);

    let mut kept = KeepAlive::open(addr);
    for _ in 0..3 {
        let (status, body) = kept.get("/").unwrap();
        assert_eq!((status, version_of(&body)), (200, Some(va.clone())));
    }
    // A slow request (2 s) whose connection exists before the switch.
    let (sent_tx, sent_rx) = std::sync::mpsc::channel();
    let slow = std::thread::spawn(move || {
        let mut s = KeepAlive::open(addr);
        sent_tx.send(()).unwrap();
        let started = Instant::now();
        (s.get("/cgi-bin/slow"), started.elapsed())
    });
    sent_rx.recv_timeout(Duration::from_secs(5)).unwrap();

    let took = env.apply(&mappings, b);
    eprintln!("switch took {took:?}");
    for _ in 0..10 {
        let (status, body) = kept.get("/").expect("the kept connection still answers");
        assert_eq!((status, version_of(&body)), (200, Some(va.clone())), "the kept connection stays on the old one");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (_, body) = get(addr, "/").unwrap();
    assert_eq!(version_of(&body), Some(vb.clone()), "a new connection goes to the new one");

    // The cut-over's last step: a graceful stop (SIGWINCH) of the old container while the slow
    // request is still running, with new connections arriving all along.
    let name_a = format!("{}-a", env.id);
    let stop = std::thread::spawn(move || {
        let started = Instant::now();
        (docker(&["stop", "-t", "10", &name_a]).status.success(), started.elapsed())
    });
    let mut during = Tally::default();
    while !stop.is_finished() && during.ok + during.failed.len() < 1000 {
        let started = Instant::now();
        let outcome = get(addr, "/").and_then(|(s, body)| {
            if s == 200 {
                Ok(version_of(&body).unwrap_or_default())
            } else {
                Err(format!("HTTP {s}"))
            }
        });
        during.record(outcome, started.elapsed());
        std::thread::sleep(PAUSE);
    }
    let (stopped, stop_took) = stop.join().unwrap();
    assert!(stopped, "docker stop");
    let (slow_result, slow_took) = slow.join().unwrap();
    eprintln!(
        "old container stopped in {stop_took:?}; in-flight request {slow_result:?} after {slow_took:?}; \
         new connections meanwhile: {} ok, {} failed, versions {:?}, slowest {:?}",
        during.ok,
        during.failed.len(),
        during.versions,
        during.slowest
    );
    let (status, body) = slow_result.expect("the in-flight request completes");
    assert_eq!((status, body.trim().to_owned()), (200, format!("slow {va}")));
    assert!(during.failed.is_empty(), "new connections during the drain: {:?}", during.failed);
    assert_eq!(during.versions.keys().collect::<Vec<_>>(), vec![&vb]);
    // The old server closed the kept connection when it stopped; a reconnect gets the new one.
    assert!(kept.get("/").is_err(), "the old container's connection ended with it");
    let mut fresh = KeepAlive::open(addr);
    let (status, body) = fresh.get("/").unwrap();
    assert_eq!((status, version_of(&body)), (200, Some(vb)));
}

#[test]
fn a_flushed_chain_is_restored_by_apply_and_jumps_are_never_duplicated() {
    let mut env = Env::host("reassert");
    let (image, sha) = env.busybox_image();
    let a = Target::new(env.container("a", &image, &[]));
    let port = free_port();
    let mappings = [Mapping::new(None, port, 80)];
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    assert!(!env.in_place(&mappings, a));
    env.apply(&mappings, a);
    assert!(env.in_place(&mappings, a));
    assert_eq!(env.current(), Some(a));

    let chains = env.nf.chains().clone();
    sh_ok("iptables", &["-w", "5", "-t", "nat", "-F", &chains.dnat]);
    assert_eq!(env.current(), None, "someone flushed our chain");
    assert!(!env.in_place(&mappings, a));
    assert!(get(addr, "/").is_err(), "nothing serves the port without the rule");

    env.apply(&mappings, a);
    assert_eq!(env.current(), Some(a));
    assert!(env.in_place(&mappings, a));
    let (_, body) = get(addr, "/").unwrap();
    assert_eq!(version_of(&body).as_deref(), Some(sha.as_str()));

    for _ in 0..3 {
        env.apply(&mappings, a);
    }
    for (table, chain, to) in [
        ("nat", "PREROUTING", &chains.dnat),
        ("nat", "OUTPUT", &chains.dnat),
        ("nat", "POSTROUTING", &chains.post),
        ("filter", "DOCKER-USER", &chains.forward),
        ("filter", "INPUT", &chains.input),
    ] {
        assert_eq!(count_rules(table, chain, to), 1, "{table} {chain} -> {to}");
    }
    // A duplicate someone added is taken out again.
    sh_ok(
        "iptables",
        &["-w", "5", "-t", "nat", "-A", "OUTPUT", "-m", "addrtype", "--dst-type", "LOCAL", "-j", &chains.dnat],
    );
    assert!(!env.in_place(&mappings, a));
    env.apply(&mappings, a);
    assert_eq!(count_rules("nat", "OUTPUT", &chains.dnat), 1);
}

#[test]
fn the_forward_accept_lives_in_docker_user_and_apply_recreates_it_after_a_flush() {
    let mut env = Env::host("dockeruser");
    let (image, _) = env.busybox_image();
    let a = Target::new(env.container("a", &image, &[]));
    let (ns, host) = env.client_namespace();
    let port = free_port();
    let mappings = [Mapping::new(Some(host), port, 80)];
    env.apply(&mappings, a);
    let url = format!("http://{host}:{port}/");
    let fetch = |ns: &str| sh("ip", &["netns", "exec", ns, "curl", "-fsS", "-m", "1", &url]).status.success();
    assert!(fetch(&ns));

    let forward = sh_ok("iptables", &["-w", "5", "-S", "FORWARD"]);
    assert_eq!(forward.lines().nth(1), Some("-A FORWARD -j DOCKER-USER"), "Docker's layout: {forward}");
    let chains = env.nf.chains().clone();
    assert_eq!(count_rules("filter", "DOCKER-USER", &chains.forward), 1);
    let fwd = sh_ok("iptables", &["-w", "5", "-S", &chains.forward]);
    assert!(
        fwd.contains(&format!("--ctstate DNAT --ctorigdst {host} --ctorigdstport {port} -j ACCEPT")),
        "the accept: {fwd}"
    );
    let layout = env.rt.block_on(env.nf.docker_layout()).unwrap();
    assert!(layout.docker_user && layout.forward_jumps_to_docker_user, "{layout:?}");
    assert_eq!(layout.forward_policy.as_deref(), Some("DROP"));

    // What a dockerd rebuild that loses DOCKER-USER's contents would do.
    env.flush_docker_user();
    assert!(!env.in_place(&mappings, a));
    assert!(!fetch(&ns), "without the accept, Docker's FORWARD policy drops the flow");
    env.apply(&mappings, a);
    assert_eq!(count_rules("filter", "DOCKER-USER", &chains.forward), 1);
    assert!(fetch(&ns), "apply put the accept back");
}

#[test]
fn remove_leaves_no_chain_or_jump_and_resets_route_localnet_when_last() {
    let mut env = Env::host("remove");
    let (image, _) = env.busybox_image();
    let a = Target::new(env.container("a", &image, &[]));
    let other = Env::bare("remove-other");
    let mappings = [Mapping::new(None, free_port(), 80), Mapping::new(Some(Ipv4Addr::LOCALHOST), free_port(), 80)];
    env.apply(&mappings, a);
    other.apply(&mappings[..1], a);
    assert!(rules_mentioning(env.nf.prefix()).len() >= 10, "{:?}", rules_mentioning(env.nf.prefix()));
    assert_eq!(route_localnet("docker0"), "1");

    env.rt.block_on(env.nf.remove()).unwrap();
    assert_eq!(rules_mentioning(env.nf.prefix()), Vec::<String>::new());
    assert_eq!(route_localnet("docker0"), "1", "another prefix still masquerades loopback clients");
    env.rt.block_on(env.nf.remove()).expect("remove is idempotent");
    assert_eq!(env.current(), None);

    other.rt.block_on(other.nf.remove()).unwrap();
    assert_eq!(rules_mentioning(other.nf.prefix()), Vec::<String>::new());
    // Another agent's chains on this host (a demo's, a benchmark's, the packaged agent's)
    // masquerade loopback clients too: then ours was not the last one out.
    let others = sh_ok("iptables", &["-w", "5", "-t", "nat", "-S"])
        .lines()
        .any(|l| l.contains("-o docker0") && l.contains("-s 127.0.0.0/8") && l.ends_with("-j MASQUERADE"));
    let want = if others { "1" } else { "0" };
    assert_eq!(route_localnet("docker0"), want, "the last one out resets it (others: {others})");
    drop(other);
}

/// Issue 19, item 4, on the real kernel: rules marked with their owner read back as in place;
/// unmarked ones (an agent from before the mark) are taken over silently; another owner's are
/// refused, left exactly as they are, and taken over once that owner is gone.
#[test]
fn marked_rules_are_in_place_unmarked_ones_are_taken_over_and_another_owners_are_refused() {
    struct Gone;
    impl OwnerLookup for Gone {
        fn is_present<'a>(&'a self, _: &'a str) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
            Box::pin(async { false })
        }
    }
    let mut env = Env::host("owner");
    let (image, sha) = env.busybox_image();
    let a = Target::new(env.container("a", &image, &[]));
    let port = free_port();
    let mappings = [Mapping::new(None, port, 80)];
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let serves = || get(addr, "/").ok().and_then(|(_, body)| version_of(&body)) == Some(sha.clone());
    let prefix = env.nf.prefix().to_owned();
    let owned = |name: &str, lookup: Option<Arc<dyn OwnerLookup>>| {
        Netfilter::with_prefix(&prefix).unwrap().with_owner(name, lookup).unwrap()
    };
    let dnat = || sh_ok("iptables", &["-w", "5", "-t", "nat", "-S", &format!("{prefix}-DNAT")]);

    // An agent from before the mark wrote the rules (no owner: nothing marked).
    env.apply(&mappings, a);
    assert!(!dnat().contains("--comment"), "{}", dnat());
    let one = owned("blog-one", None);
    assert!(
        env.rt.block_on(one.in_place(&mappings, a)).unwrap(),
        "unmarked rules with the same traffic are in place (and marked on the way: no re-assertion to report)"
    );
    assert!(dnat().contains("-m comment --comment \"blog-agent:blog-one\" -j DNAT"), "{}", dnat());
    assert!(env.rt.block_on(one.in_place(&mappings, a)).unwrap(), "marked rules read back as rendered");
    // Unmarked rules to another target are rewritten (marked) by apply, not refused.
    env.apply(&mappings, Target::new(Ipv4Addr::new(172, 17, 255, 254)));
    assert!(!env.rt.block_on(one.in_place(&mappings, a)).unwrap());
    env.rt.block_on(one.apply(&mappings, a)).unwrap();
    assert!(env.rt.block_on(one.in_place(&mappings, a)).unwrap());
    assert!(dnat().contains("-m comment --comment \"blog-agent:blog-one\" -j DNAT"), "{}", dnat());
    for chain in [&env.nf.chains().forward, &env.nf.chains().input] {
        let rules = sh_ok("iptables", &["-w", "5", "-S", chain]);
        assert!(rules.lines().skip(1).all(|l| l.contains("blog-agent:blog-one")), "{rules}");
    }
    assert!(serves());

    // A second agent on the same chains: refused on every operation, nothing changed.
    let before = rules_mentioning(&prefix);
    let two = owned("blog-two", None);
    for (what, got) in [
        ("apply", env.rt.block_on(two.apply(&mappings, a))),
        ("in_place", env.rt.block_on(two.in_place(&mappings, a)).map(drop)),
        ("remove", env.rt.block_on(two.remove())),
        ("check_owner", env.rt.block_on(two.check_owner())),
    ] {
        match got {
            Err(NetfilterError::Owned { owner, .. }) => assert_eq!(owner, "blog-one", "{what}"),
            other => panic!("{what}: {other:?}"),
        }
    }
    assert_eq!(rules_mentioning(&prefix), before, "the other agent's rules are untouched");
    assert!(serves());

    // Once the owner is gone (its container removed or renamed), they are taken over.
    let two = owned("blog-two", Some(Arc::new(Gone)));
    env.rt.block_on(two.apply(&mappings, a)).unwrap();
    assert!(dnat().contains("blog-agent:blog-two") && !dnat().contains("blog-agent:blog-one"), "{}", dnat());
    assert!(serves());
}

// ---- both backends, in a namespace laid out like a Docker host ----------------------------

/// A Docker-like host inside network namespaces: `h` with a bridge `bab0` (10.213.3.1/24, the
/// "docker0"), two "containers" `c1`/`c2` (busybox httpd at .2 and .3), a client `cl` over a
/// veth (10.213.4.2 -> h's 10.213.4.1), and Docker's filter layout (FORWARD policy DROP,
/// DOCKER-USER) written with the backend under test. The switching then runs inside `h`: this
/// test re-runs its own binary there (`inner_namespace_host`), so the agent code, its iptables
/// and its /proc/sys writes all act on `h`. Addresses exist only inside these namespaces.
fn namespace_host(backend: Backend, tool: &str) {
    let mut env = Env::bare(tool);
    let pid = std::process::id();
    let name = |role: &str| format!("ba-{pid}-{}-{role}", env.n);
    let (h, c1, c2, cl) = (name("h"), name("c1"), name("c2"), name("cl"));
    for ns in [&h, &c1, &c2, &cl] {
        sh_ok("ip", &["netns", "add", ns]);
        env.netns.push(ns.clone());
        sh_ok("ip", &["-n", ns, "link", "set", "lo", "up"]);
    }
    let ip_h = |args: &[&str]| sh_ok("ip", &[&["-n", h.as_str()], args].concat());
    ip_h(&["link", "add", "bab0", "type", "bridge"]);
    ip_h(&["addr", "add", "10.213.3.1/24", "dev", "bab0"]);
    ip_h(&["link", "set", "bab0", "up"]);
    let www = std::env::temp_dir().join(format!("ba-{pid}-{}-www", env.n));
    for (ns, addr, version) in [(&c1, "10.213.3.2", "one"), (&c2, "10.213.3.3", "two")] {
        ip_h(&[
            "link",
            "add",
            &format!("v{}", &ns[ns.len() - 2..]),
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns,
        ]);
        ip_h(&["link", "set", &format!("v{}", &ns[ns.len() - 2..]), "master", "bab0", "up"]);
        sh_ok("ip", &["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
        sh_ok("ip", &["-n", ns, "link", "set", "eth0", "up"]);
        sh_ok("ip", &["-n", ns, "route", "add", "default", "via", "10.213.3.1"]);
        let dir = www.join(version);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.html"), format!("<p>version {version}</p>\n")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "busybox", "httpd", "-f", "-p", "80", "-h"])
            .arg(&dir)
            .spawn()
            .unwrap();
        env.children.push(child);
    }
    ip_h(&["link", "add", "vcl", "type", "veth", "peer", "name", "eth0", "netns", &cl]);
    ip_h(&["addr", "add", "10.213.4.1/30", "dev", "vcl"]);
    ip_h(&["link", "set", "vcl", "up"]);
    sh_ok("ip", &["-n", &cl, "addr", "add", "10.213.4.2/30", "dev", "eth0"]);
    sh_ok("ip", &["-n", &cl, "link", "set", "eth0", "up"]);
    sh_ok("ip", &["-n", &cl, "route", "add", "default", "via", "10.213.4.1"]);
    sh_ok("ip", &["netns", "exec", &h, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);

    let docker_layout = "*filter\n:FORWARD DROP [0:0]\n:DOCKER-USER - [0:0]\n\
        -A FORWARD -j DOCKER-USER\n\
        -A FORWARD -o bab0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
        -A FORWARD -i bab0 ! -o bab0 -j ACCEPT\n-A FORWARD -i bab0 -o bab0 -j ACCEPT\n\
        -A DOCKER-USER -j RETURN\nCOMMIT\n\
        *nat\n:DOCKER - [0:0]\n-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
        -A POSTROUTING -s 10.213.3.0/24 ! -o bab0 -j MASQUERADE\nCOMMIT\n";
    let mut restore = Command::new("ip")
        .args(["netns", "exec", &h, &format!("{tool}-restore")])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    restore.stdin.take().unwrap().write_all(docker_layout.as_bytes()).unwrap();
    assert!(restore.wait().unwrap().success(), "{tool}-restore of Docker's layout");
    // Someone else's native nftables table hooked at forward and prerouting nat: must not get
    // in the way (its forward chain accepts; a drop there would win over any iptables accept).
    let nft = "table inet ba_other {\n chain other_forward { type filter hook forward priority 0; policy accept; counter; }\n \
               chain other_prerouting { type nat hook prerouting priority -110; policy accept; counter; }\n}\n";
    let mut child =
        Command::new("ip").args(["netns", "exec", &h, "nft", "-f", "-"]).stdin(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(nft.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success(), "nft table");

    for (addr, ns) in [("10.213.3.2", &h), ("10.213.3.3", &h)] {
        wait_for(&format!("httpd at {addr}"), Duration::from_secs(10), || {
            sh("ip", &["netns", "exec", ns, "curl", "-fsS", "-m", "1", &format!("http://{addr}/")])
                .status
                .success()
                .then_some(())
        });
    }

    let backend_name = match backend {
        Backend::Legacy => "legacy",
        Backend::Nft => "nft",
        Backend::System => "system",
    };
    let out = Command::new("ip")
        .args(["netns", "exec", &h])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "inner_namespace_host", "--ignored", "--nocapture", "--test-threads=1"])
        .env("BA_NS_INNER", "1")
        .env("BA_NS_BACKEND", backend_name)
        .env("BA_NS_PREFIX", format!("BA-T{pid}-{}", env.n))
        .env("BA_NS_CLIENT", &cl)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("{text}");
    assert!(out.status.success() && text.contains("1 passed"), "inner test in {h} failed");
    let counters = sh_ok("ip", &["netns", "exec", &h, "nft", "list", "table", "inet", "ba_other"]);
    assert!(!counters.contains("counter packets 0 "), "the other table saw the traffic too: {counters}");
    let _ = std::fs::remove_dir_all(&www);
}

#[test]
fn legacy_backend_switches_in_a_namespace_laid_out_like_docker() {
    namespace_host(Backend::Legacy, "iptables-legacy");
}

#[test]
fn nft_backend_switches_in_a_namespace_laid_out_like_docker() {
    namespace_host(Backend::Nft, "iptables-nft");
}

/// The body of the two tests above, run inside the namespace `h` by them.
#[test]
#[ignore = "run inside a namespace by the *_in_a_namespace_laid_out_like_docker tests"]
fn inner_namespace_host() {
    if std::env::var("BA_NS_INNER").is_err() {
        return;
    }
    let backend = match std::env::var("BA_NS_BACKEND").unwrap().as_str() {
        "legacy" => Backend::Legacy,
        "nft" => Backend::Nft,
        _ => Backend::System,
    };
    let nf = Netfilter::with_prefix(&std::env::var("BA_NS_PREFIX").unwrap())
        .unwrap()
        .with_bridge("bab0")
        .unwrap()
        .with_backend(backend)
        // Marked rules, so both backends show they print the mark as it is rendered.
        .with_owner("inner", None)
        .unwrap();
    let client_ns = std::env::var("BA_NS_CLIENT").unwrap();
    let mut env = Env::bare("inner");
    env.nf = nf;
    eprintln!("backend: {}", env.rt.block_on(env.nf.version()).unwrap());
    let (a, b) = (Target::new(Ipv4Addr::new(10, 213, 3, 2)), Target::new(Ipv4Addr::new(10, 213, 3, 3)));
    let mappings = [Mapping::new(None, 8080, 80)];
    env.apply(&mappings, a);
    assert!(env.in_place(&mappings, a));
    let layout = env.rt.block_on(env.nf.docker_layout()).unwrap();
    assert!(layout.docker_user && layout.forward_jumps_to_docker_user, "{layout:?}");
    assert_eq!(route_localnet("bab0"), "1");

    let loads = vec![
        Load::from_namespace(&client_ns, "http://10.213.4.1:8080/"),
        Load::loopback(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080)),
    ];
    switch_under_load(&env, &mappings, [a, b], loads);

    env.rt.block_on(env.nf.remove()).unwrap();
    let tool = match backend {
        Backend::Legacy => "iptables-legacy",
        _ => "iptables-nft",
    };
    for table in ["nat", "filter"] {
        let out = sh_ok(tool, &["-t", table, "-S"]);
        assert!(!out.contains(env.nf.prefix()), "{table} after remove: {out}");
    }
    assert_eq!(route_localnet("bab0"), "0");
}
