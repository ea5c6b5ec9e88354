//! Test harness for integration tests against the real local stack (dockerd, registries,
//! moto), started by `scripts/stack-up.sh`.
//!
//! Each [`Host`] is one simulated EC2 host: its own container name, bucket, host port, state
//! dir and label. Its containers are removed by label when it is created and when it drops,
//! so a leftover from a crashed run can never hold a port.

#![allow(dead_code)]

pub mod autoscaling;
pub mod http;
pub mod imds;
pub mod release;
pub mod services;
pub mod sts;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Label every test container carries; its value identifies the owning test host.
pub const TEST_LABEL: &str = "blog-agent-test";
/// The password moto's ECR token decodes to; it must never appear in agent output.
pub const ECR_PASSWORD: &str = "123456789012-auth-token";
/// The key id the seed pipeline uploads with; moto does not check it exists.
pub const KMS_KEY_ID: &str = "ec0a605d-17e9-4ac8-a2e3-e299c1ee1a93";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_owned())
}

pub fn registry() -> String {
    env_or("BLOG_AGENT_TEST_REGISTRY", "127.0.0.1:5000")
}

pub fn badauth_registry() -> String {
    env_or("BLOG_AGENT_TEST_BADAUTH_REGISTRY", "127.0.0.1:5002")
}

pub fn moto() -> String {
    env_or("AWS_ENDPOINT_URL", "http://127.0.0.1:5001")
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh SHA no other test uses.
pub fn unique_sha(hint: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let seed = format!("{hint}-{}-{}-{:?}", std::process::id(), N.fetch_add(1, Ordering::SeqCst), Instant::now());
    Sha256::digest(seed.as_bytes()).iter().take(20).map(|b| format!("{b:02x}")).collect()
}

/// Builds and pushes a test image (see scripts/publish-image.sh); the local tag is removed so
/// the agent has to pull it.
pub fn publish_image(sha: &str, kind: &str, registry: &str, repo: &str) {
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/publish-image.sh"))
        .args([sha, kind, registry, repo])
        .output()
        .expect("run publish-image.sh");
    assert!(out.status.success(), "publish-image.sh failed: {}", String::from_utf8_lossy(&out.stderr));
}

pub fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("run docker")
}

pub fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// How long a container name may be away before a poll by name calls it missing: a cut-over
/// moves it aside (the old container renamed `-previous`, the new one not yet named) for well
/// under a second.
pub const NAME_ASIDE_FOR: Duration = Duration::from_secs(10);

/// `docker inspect -f FORMAT NAME`, trimmed; `None` while no container has that name (to a
/// poller, "not yet": a cut-over moves the name aside for a moment). Any other error panics.
pub fn inspect(name: &str, format: &str) -> Option<String> {
    let out = docker(&["inspect", "-f", format, name]);
    if out.status.success() {
        return Some(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No such object") || err.contains("No such container"), "docker inspect {name}: {err}");
    None
}

/// [`inspect`] of a name that must be there: waits while it is moved aside for a moment, and
/// panics only when it stays away for [`NAME_ASIDE_FOR`].
pub fn inspect_present(name: &str, format: &str) -> String {
    wait_for(&format!("a container named {name}"), NAME_ASIDE_FOR, || inspect(name, format))
}

/// Removes every container carrying `label=value`. Logs rather than panics: cleanup must not
/// hide the real failure.
pub fn remove_labelled(value: &str) {
    let filter = format!("label={TEST_LABEL}={value}");
    let ids = docker(&["ps", "-aq", "--filter", &filter]);
    let ids = String::from_utf8_lossy(&ids.stdout);
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f"];
        args.extend(ids);
        let out = docker(&args);
        if !out.status.success() {
            eprintln!("cleanup: docker rm failed: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `check` until it returns `Some` or the deadline passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes the netfilter chains `<prefix>-*` (and the jumps into them) that a switch-mode test
/// created, by name.
pub fn remove_chains(prefix: &str) -> Result<(), blog_agent::outside::netfilter::NetfilterError> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(blog_agent::outside::netfilter::Netfilter::with_prefix(prefix).unwrap().remove())
}

/// Fails if `text` holds the ECR password, plain or as the base64 token it arrives in.
pub fn assert_no_secret(text: &str) {
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("AWS:{ECR_PASSWORD}"));
    assert!(!text.contains(ECR_PASSWORD) && !text.contains(&token), "ECR password leaked into output:\n{text}");
}

/// Result of one agent run.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// A finished blog-agent process, checked for secrets (no ECR password in any output).
    pub fn of(out: Output) -> Run {
        let run = Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        assert_no_secret(&run.output());
        run
    }

    pub fn output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// HTTP GET; `None` when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// One simulated host.
pub struct Host {
    pub id: String,
    pub container: String,
    pub bucket: String,
    pub port: u16,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub imds_endpoint: Option<String>,
    pub registry: String,
    /// Repository path inside the registry; per host, so one host's image pruning never
    /// touches another test's images.
    pub repo: String,
    /// S3 endpoint (moto, a private moto, or a counting proxy in front of one).
    pub s3_endpoint: String,
    pub extra_env: Vec<(String, String)>,
}

impl Host {
    /// A host for test `name` with an empty bucket and no container.
    pub fn new(name: &str) -> Host {
        let suffix = &unique_sha(name)[..8];
        let id = format!("{}-{suffix}", name.replace('_', "-"));
        let id = id[id.len().saturating_sub(40)..].trim_start_matches('-').to_owned();
        remove_labelled(&id);
        let dir = std::env::temp_dir().join(format!("blog-agent-test-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let host = Host {
            container: format!("bat-{id}"),
            bucket: format!("bat-{id}").to_lowercase(),
            port: free_port(),
            config: dir.join("config.toml"),
            dir,
            imds_endpoint: None,
            registry: registry(),
            repo: format!("t/{id}"),
            s3_endpoint: moto(),
            extra_env: Vec::new(),
            id,
        };
        host.write_config("");
        host.s3(|c, b| async move { c.create_bucket().bucket(b).send().await.map(drop).map_err(|e| format!("{e:?}")) })
            .expect("create bucket");
        host
    }

    /// Switches S3 to `endpoint` (a private moto or a proxy) and creates the bucket there.
    pub fn use_s3(&mut self, endpoint: String) {
        self.s3_endpoint = endpoint;
        self.create_bucket();
    }

    pub fn create_bucket(&self) {
        self.s3(|c, b| async move { c.create_bucket().bucket(b).send().await.map(drop).map_err(|e| format!("{e:?}")) })
            .expect("create bucket");
    }

    /// Writes the config; `extra` is appended (TOML tables it names must not repeat the base).
    /// No bake (`[health] bake = "0s"`): the previous container is retired at cut-over, which
    /// is what the tests written before the bake expect; tests/bake.rs asks for one with
    /// [`Host::write_config_baking`].
    pub fn write_config(&self, extra: &str) {
        self.write_config_baking("0s", extra);
    }

    /// [`Host::write_config`] with `[health] bake = "<bake>"`.
    pub fn write_config_baking(&self, bake: &str, extra: &str) {
        let base = format!(
            "[environment]\nallowed = [\"staging\", \"production\"]\n\
             [release]\nbucket = \"{bucket}\"\n\
             [image]\nrepository = \"{registry}/{repo}\"\n\
             [container]\nname = \"{name}\"\nports = [\"127.0.0.1:{port}:80\"]\nlabels = {{ \"{TEST_LABEL}\" = \"{id}\" }}\nstop_timeout = \"1s\"\n\
             [health]\nurl = \"http://127.0.0.1:{port}/\"\ntimeout = \"10s\"\nbake = \"{bake}\"\n\
             [agent]\nstate_dir = \"{state}\"\n{traffic}",
            bucket = self.bucket,
            registry = self.registry,
            repo = self.repo,
            name = self.container,
            port = self.port,
            id = self.id,
            state = self.dir.join("state").display(),
            // Docker-published ports unless the test asks for the traffic switch: tests run in
            // parallel, and switch-mode ones need chains of their own (tests/switch.rs).
            traffic = if extra.contains("[traffic]") { "" } else { "[traffic]\nmode = \"publish\"\n" },
        );
        std::fs::write(&self.config, format!("{base}{extra}")).unwrap();
    }

    /// Runs an async S3 operation against moto.
    pub fn s3<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce(aws_sdk_s3::Client, String) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let creds = aws_sdk_s3::config::Credentials::new("testing", "testing", None, None, "test");
            let config = aws_sdk_s3::config::Builder::new()
                .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                .region(aws_sdk_s3::config::Region::new("us-east-1"))
                .endpoint_url(self.s3_endpoint.clone())
                .credentials_provider(creds)
                .force_path_style(true)
                .build();
            f(aws_sdk_s3::Client::from_conf(config), self.bucket.clone()).await
        })
    }

    /// Writes `content` to the environment's release key, SSE-KMS like CI does.
    pub fn put_object(&self, key: &str, content: Vec<u8>) {
        let key = key.to_owned();
        self.s3(|c, b| async move {
            c.put_object()
                .bucket(b)
                .key(key)
                .body(content.into())
                .server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms)
                .ssekms_key_id(KMS_KEY_ID)
                .send()
                .await
                .map(drop)
                .map_err(|e| format!("{e:?}"))
        })
        .expect("put object");
    }

    pub fn put_release(&self, env: &str, sha: &str) {
        self.put_object(&default_key(env), format!("{sha}\n").into_bytes());
    }

    /// Publishes an image of `kind` to this host's repository; returns its SHA.
    pub fn publish(&self, kind: &str) -> String {
        let sha = unique_sha(&self.id);
        publish_image(&sha, kind, &self.registry, &self.repo);
        sha
    }

    /// Publishes an image and writes its SHA to staging's release key; returns the SHA.
    pub fn release(&self, kind: &str) -> String {
        let sha = self.publish(kind);
        self.put_release("staging", &sha);
        sha
    }

    /// The image reference of `sha` in this host's repository.
    pub fn image(&self, sha: &str) -> String {
        format!("{}/{}:{sha}", self.registry, self.repo)
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_blog-agent"));
        cmd.arg("--config").arg(&self.config).args(args);
        cmd.env("AWS_ENDPOINT_URL", &self.s3_endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env_remove("JOURNAL_STREAM")
            .env_remove("RUST_LOG")
            // Nothing answers here unless a test starts its IMDS stand-in.
            .env(
                "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                self.imds_endpoint.clone().unwrap_or("http://127.0.0.1:9".into()),
            );
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    pub fn agent(&self, args: &[&str]) -> Run {
        Run::of(self.command(args).output().expect("run blog-agent"))
    }

    /// `sync --env staging`, the common case.
    pub fn sync(&self) -> Run {
        self.agent(&["--env", "staging", "sync"])
    }

    /// The serving container's (id, running, started at), if any.
    pub fn container_state(&self) -> Option<(String, bool, String)> {
        let out = docker(&["inspect", "-f", "{{.Id}} {{.State.Running}} {{.State.StartedAt}}", &self.container]);
        if !out.status.success() {
            return None;
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut parts = text.split_whitespace();
        Some((parts.next()?.to_owned(), parts.next()? == "true", parts.next()?.to_owned()))
    }

    /// A label of the container under the name, waiting while a cut-over has the name aside.
    pub fn label(&self, key: &str) -> String {
        inspect_present(&self.container, &format!("{{{{index .Config.Labels \"{key}\"}}}}"))
    }

    /// The page on the host port.
    pub fn page(&self) -> Option<(u16, String)> {
        http_get(self.port, "/")
    }

    /// Asserts the host serves the page of `sha`.
    pub fn assert_serves(&self, sha: &str) {
        let (status, body) = self.page().unwrap_or_else(|| panic!("nothing serves on port {}", self.port));
        assert_eq!(status, 200, "{body}");
        assert!(body.contains(sha), "expected version {sha}, got: {body}");
    }

    /// Containers of this host (all states), by name.
    pub fn containers(&self) -> Vec<String> {
        let filter = format!("label={TEST_LABEL}={}", self.id);
        let names = docker_ok(&["ps", "-a", "--filter", &filter, "--format", "{{.Names}}"]);
        let mut names: Vec<String> = names.lines().map(str::to_owned).collect();
        names.sort();
        names
    }

    /// No candidate, `-next` or `-previous` container is left behind.
    pub fn assert_only_the_serving_container(&self) {
        assert_eq!(self.containers(), vec![self.container.clone()]);
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

pub fn default_key(env: &str) -> String {
    match env {
        "staging" => "staging/stagebuild.txt".into(),
        "production" => "production/prodbuild.txt".into(),
        other => format!("{other}/build.txt"),
    }
}

/// A `blog-agent run` child process whose stderr goes to a file the test can read.
pub struct AgentProcess {
    pub child: std::process::Child,
    pub log: PathBuf,
}

impl Host {
    /// Starts `blog-agent --env staging run` (plus `args` before `run`).
    pub fn start_agent(&self, args: &[&str]) -> AgentProcess {
        self.start_agent_with(args, |_| {})
    }

    pub fn start_agent_with(&self, args: &[&str], configure: impl FnOnce(&mut Command)) -> AgentProcess {
        let mut full = vec!["--env", "staging"];
        full.extend_from_slice(args);
        self.start_agent_raw(&full, configure)
    }

    /// Starts `blog-agent --debug ARGS run` with nothing else added.
    pub fn start_agent_raw(&self, args: &[&str], configure: impl FnOnce(&mut Command)) -> AgentProcess {
        static N: AtomicUsize = AtomicUsize::new(0);
        let log = self.dir.join(format!("agent-{}.log", N.fetch_add(1, Ordering::SeqCst)));
        let mut full = vec!["--debug"];
        full.extend_from_slice(args);
        full.push("run");
        let mut cmd = self.command(&full);
        cmd.stdout(Stdio::null()).stderr(std::fs::File::create(&log).unwrap());
        configure(&mut cmd);
        AgentProcess { child: cmd.spawn().expect("start blog-agent run"), log }
    }
}

impl AgentProcess {
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([&format!("-{signal}"), &self.pid().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> i32 {
        let status = wait_for("agent exit", timeout, || self.child.try_wait().unwrap());
        status.code().unwrap_or(-1)
    }

    /// Waits until the log contains `text`.
    pub fn wait_log(&self, text: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.logs().contains(text) {
            assert!(Instant::now() < deadline, "no {text:?} in the agent log within {timeout:?}:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends `signal` and asserts the agent exits 0 within 5 s, as systemd expects of a stop.
    pub fn stop_with(&mut self, signal: &str) {
        self.signal(signal);
        assert_eq!(self.wait_exit(Duration::from_secs(5)), 0, "{}", self.logs());
    }

    pub fn assert_alive(&mut self) {
        assert!(self.child.try_wait().unwrap().is_none(), "agent exited:\n{}", self.logs());
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            assert_no_secret(&self.logs());
        }
        if std::thread::panicking() {
            eprintln!("---- agent log {} ----\n{}", self.log.display(), self.logs());
        }
    }
}

impl Host {
    /// Waits until the host port serves the page of `sha`.
    pub fn wait_serves(&self, sha: &str, timeout: Duration) {
        wait_for(&format!("port {} to serve {sha}", self.port), timeout, || {
            self.page().filter(|(status, body)| *status == 200 && body.contains(sha)).map(drop)
        });
    }
}

impl Host {
    /// Waits until the deploy of `sha` has *finished*, not just until the page answers: the
    /// port serves it, no candidate or `-previous` container is left, and the state file
    /// records it as last-known-good. The new container serves while the agent still probes
    /// it, so a test that signals, removes or reconfigures right after the first 200 would
    /// race the end of the pass (CI showed both: a SIGTERM that interrupted the probe, and a
    /// `-previous` container still present).
    pub fn wait_deployed(&self, sha: &str, timeout: Duration) {
        let state = self.state_dir().join("state.json");
        wait_for(&format!("{sha} deployed on port {} (serving, alone, recorded)", self.port), timeout, || {
            let serves = self.page().is_some_and(|(status, body)| status == 200 && body.contains(sha));
            let alone = self.containers() == [self.container.clone()];
            let recorded = std::fs::read_to_string(&state)
                .ok()
                .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                .is_some_and(|v| v["last_good"]["sha"] == sha);
            (serves && alone && recorded).then_some(())
        });
    }
}

impl Host {
    /// Moves the blog's host port (and the health URL with it) in the config to a port another
    /// process holds, and returns the holder: Docker cannot start a container publishing it.
    pub fn point_at_a_held_port(&self) -> TcpListener {
        let holder = TcpListener::bind("127.0.0.1:0").unwrap();
        let held = holder.local_addr().unwrap().port();
        let text = std::fs::read_to_string(&self.config)
            .unwrap()
            .replace(&format!("\"127.0.0.1:{}:80\"", self.port), &format!("\"127.0.0.1:{held}:80\""))
            .replace(
                &format!("url = \"http://127.0.0.1:{}/\"", self.port),
                &format!("url = \"http://127.0.0.1:{held}/\""),
            );
        std::fs::write(&self.config, text).unwrap();
        holder
    }

    /// How many halt markers staging's default halt prefix holds.
    /// The halt votes on `sha` in the staging prefix (one object per host under
    /// `staging/halted/<sha>/`), as JSON.
    pub fn staging_votes(&self, sha: &str) -> Vec<serde_json::Value> {
        let prefix = format!("staging/halted/{sha}/");
        self.s3(|c, b| async move {
            let listed = c.list_objects_v2().bucket(&b).prefix(prefix).send().await.unwrap();
            let mut votes = Vec::new();
            for key in listed.contents().iter().filter_map(|o| o.key()) {
                let out = c.get_object().bucket(&b).key(key).send().await.unwrap();
                votes.push(serde_json::from_slice(&out.body.collect().await.unwrap().to_vec()).unwrap());
            }
            votes
        })
    }

    /// The keys of this host's bake records of `sha` in staging (`staging/halted/bake/<sha>/`).
    pub fn staging_bake_records(&self, sha: &str) -> Vec<String> {
        let prefix = format!("staging/halted/bake/{sha}/");
        self.s3(|c, b| async move {
            let listed = c.list_objects_v2().bucket(&b).prefix(prefix).send().await.unwrap();
            listed.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect()
        })
    }

    /// The agent's AWS setup pointed at this host's S3 (moto), as the binary builds it from the
    /// environment there.
    pub fn aws(&self) -> std::sync::Arc<blog_agent::outside::aws::Aws> {
        let creds = aws_credential_types::Credentials::new("testing", "testing", None, None, "test");
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(self.s3_endpoint.clone())
            .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(creds))
            .build();
        blog_agent::outside::aws::Aws::from_sdk(&sdk)
    }

    pub fn staging_halt_markers(&self) -> i32 {
        self.s3(|c, b| async move {
            c.list_objects_v2().bucket(b).prefix("staging/halted/").send().await.unwrap().key_count().unwrap_or(0)
        })
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        remove_labelled(&self.id);
        // Any registry: a test may have pointed the host at another one (a private or hanging
        // registry) after pulling from the shared one.
        let filter = format!("reference=*/{}:*", self.repo);
        let images = docker(&["images", "-q", "--filter", &filter]);
        for id in String::from_utf8_lossy(&images.stdout).split_whitespace() {
            let _ = docker(&["rmi", "-f", id]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs tests that change the host's netfilter state one at a time, across test processes
/// (nextest runs each test in its own): a bound abstract unix socket, released by the kernel
/// however the process ends. They share docker0's `route_localnet` and Docker's DOCKER-USER.
pub fn netfilter_lock() -> std::os::unix::net::UnixListener {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(b"blog-agent-tests-netfilter").unwrap();
    wait_for("the netfilter test lock", Duration::from_secs(900), || {
        std::os::unix::net::UnixListener::bind_addr(&addr).ok()
    })
}

impl Host {
    /// Points this host at `leader`'s bucket and image repository, as hosts of one fleet share
    /// the release bucket and the ECR repository: one release written to `leader` reaches them
    /// all. The host keeps its own container name, port, state dir and label; its own bucket
    /// stays (empty). Call before starting the agent.
    pub fn share_release_with(&mut self, leader: &Host) {
        self.bucket = leader.bucket.clone();
        self.s3_endpoint = leader.s3_endpoint.clone();
        self.registry = leader.registry.clone();
        self.repo = leader.repo.clone();
        self.write_config("");
    }
}
