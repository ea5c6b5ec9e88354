//! Configuration: one TOML file, parsed, defaulted and validated once into typed [`Settings`].
//!
//! Reads the file named by `--config`, `BLOG_AGENT_CONFIG` or [`DEFAULT_PATH`]. Unknown keys
//! are errors, because a typo that is silently ignored is a setting that silently does not
//! apply. Every error names the file, the key, the value and what would be accepted; the
//! caller exits 78 (`EX_CONFIG`) so systemd does not restart-loop on it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::sha::safe_quote;

/// Where the config lives on a host when neither `--config` nor `BLOG_AGENT_CONFIG` says.
pub const DEFAULT_PATH: &str = "/etc/blog-agent/config.toml";

/// A configuration problem. Each variant renders as one line naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} not found: create it (see packaging/config.example.toml) or pass --config PATH", path.display())]
    Missing { path: PathBuf },
    #[error("config file {}: cannot read it: {source}", path.display())]
    Unreadable { path: PathBuf, source: std::io::Error },
    #[error("config file {}, line {line}: {message}", path.display())]
    Syntax { path: PathBuf, line: usize, message: String },
    #[error("config file {}: {key} = {value}: {problem}", path.display())]
    Invalid { path: PathBuf, key: String, value: String, problem: String },
    #[error("config file {}: {key} is required: {hint}", path.display())]
    Required { path: PathBuf, key: String, hint: &'static str },
}

/// Validated settings. Nothing downstream parses strings from the config again.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The file these settings came from, for messages.
    pub source: PathBuf,
    pub environment: EnvironmentSettings,
    pub release: ReleaseSettings,
    pub image: ImageSettings,
    pub container: ContainerSettings,
    pub health: HealthSettings,
    pub agent: AgentSettings,
    pub reconcile: ReconcileSettings,
    pub traffic: TrafficSettings,
    pub rollout: RolloutSettings,
    pub metrics: MetricsSettings,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EnvironmentSettings {
    /// Fixed environment; when unset the EC2 instance tag decides.
    pub name: Option<String>,
    /// Instance tag read over IMDS when no name is given.
    pub tag: String,
    /// Environments this host may serve; anything else is refused.
    pub allowed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseSettings {
    pub bucket: String,
    /// Environment name -> S3 key of the object holding the desired SHA.
    pub keys: BTreeMap<String, String>,
    /// The KMS key `publish` encrypts the release object with (SSE-KMS); `None`: the bucket's
    /// default encryption.
    pub kms_key: Option<String>,
    /// Minisign public key (base64): hosts deploy only releases signed with its secret key
    /// ([`crate::signature`]); `None`: releases are deployed without a signature check.
    pub public_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ImageSettings {
    pub repository: Repository,
    /// Upper bound on one pull, so a stalled registry cannot hold the lock forever.
    pub pull_timeout: Duration,
}

/// An image repository split into the registry host (where credentials apply) and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    pub registry: String,
    pub path: String,
}

impl Repository {
    /// `registry/path:tag`, the reference Docker pulls and containers record.
    pub fn reference(&self, tag: &str) -> String {
        format!("{self}:{tag}")
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.path)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSettings {
    pub name: String,
    pub ports: Vec<PortMapping>,
    /// The container's environment variables (`[container] env`).
    pub variables: BTreeMap<String, String>,
    /// Extra labels for the operator's own tooling (and the tests' cleanup by label).
    pub labels: BTreeMap<String, String>,
    /// Grace period between SIGTERM and SIGKILL when the old version is stopped at cut-over.
    /// It is part of the swap gap, so it is short: a static site has no long requests.
    pub stop_timeout: Duration,
    /// What the container may use and do (logs, privileges, processes, memory, CPU, writes).
    pub bounds: ContainerBounds,
}

/// The bounds the blog container runs within. Docker's defaults are unbounded logs, every
/// default capability, no pids, memory or CPU limit and a writable root: a web server needs
/// none of that, and the host agent that creates the container is the one place to say so.
/// Part of the spec: a change replaces the container on the next pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerBounds {
    pub log: LogSettings,
    /// `no-new-privileges`: no setuid binary or file capability raises a process's privileges.
    pub no_new_privileges: bool,
    /// Capability names without the `CAP_` prefix, upper case; `ALL` is every capability.
    pub cap_drop: Vec<String>,
    pub cap_add: Vec<String>,
    /// Most processes (threads count) the container may run; `None`: no limit.
    pub pids_limit: Option<u32>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// CPU limit in billionths of a CPU (Docker's `NanoCpus`): `cpus = 1.5` is 1_500_000_000.
    pub nano_cpus: Option<u64>,
    /// Read-only root filesystem, with `tmpfs` as its writable paths.
    pub read_only: bool,
    /// Absolute paths mounted as small in-memory filesystems; used only with `read_only`.
    pub tmpfs: Vec<String>,
}

/// The container's log rotation: Docker keeps at most `max_files` files of `max_size` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    pub driver: LogDriver,
    pub max_size: u64,
    pub max_files: u32,
}

/// Docker log drivers that keep `docker logs` working and rotate on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDriver {
    /// JSON lines under /var/lib/docker/containers: what log shippers (CloudWatch agent,
    /// Fluent Bit) tail.
    JsonFile,
    /// Docker's compact, compressed format: smaller on disk, readable only through Docker.
    Local,
}

impl LogDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            LogDriver::JsonFile => "json-file",
            LogDriver::Local => "local",
        }
    }
}

impl fmt::Display for LogDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Capabilities Apache httpd needs, checked with the project's Apache image (Debian apache2,
/// mod_cgid) and the busybox one (tests/container_limits.rs). Docker's defaults add AUDIT_WRITE,
/// FOWNER, FSETID, MKNOD, NET_RAW, SETFCAP, SETPCAP and SYS_CHROOT, which a web server never uses.
/// - NET_BIND_SERVICE: bind port 80 as root (engines that do not set the container's
///   `ip_unprivileged_port_start` to 0 refuse it without);
/// - SETUID, SETGID: the parent starts as root and its children switch to the server's user;
/// - DAC_OVERRIDE, CHOWN: the root parent binds the CGI daemon's socket in the server user's
///   directory and hands the socket to that user (without them the CGI daemon does not start);
/// - KILL: the root parent signals the CGI daemon, which runs as the server's user, when it
///   stops (without it a graceful stop hangs until Docker's SIGKILL).
pub const DEFAULT_CAP_ADD: [&str; 6] = ["CHOWN", "DAC_OVERRIDE", "KILL", "NET_BIND_SERVICE", "SETGID", "SETUID"];

/// Writable paths of a read-only container: the runtime directories servers keep pid files,
/// sockets and locks in (`/run`, and `/run/lock`, which Debian's `/var/lock` points to), `/tmp`,
/// and the official httpd image's `logs` directory (its pid file and cgid socket).
pub const DEFAULT_TMPFS: [&str; 4] = ["/run", "/run/lock", "/tmp", "/usr/local/apache2/logs"];

/// Every Linux capability name Docker accepts (capabilities(7)), without `CAP_`.
const CAPABILITIES: [&str; 41] = [
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// Docker refuses a memory limit below 6 MiB.
const MIN_MEMORY: u64 = 6 << 20;

/// One published port: `[host_ip:]host_port:container_port`, TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortMapping {
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub container_port: u16,
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}:{}", self.host_port, self.container_port),
            Some(ip) => write!(f, "{ip}:{}:{}", self.host_port, self.container_port),
            None => write!(f, "{}:{}", self.host_port, self.container_port),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    pub url: HealthUrl,
    pub timeout: Duration,
    /// Text the body of `url` must contain (`[health] contains`): a page that answers 200 but
    /// rendered an empty theme is not the blog.
    pub contains: Option<String>,
    /// More pages on the host port of `url` (`[[health.check]]`), each checked like `url`.
    pub checks: Vec<HealthCheck>,
    /// When the container's access log counts as failing (`[health] max_5xx_share`,
    /// `max_5xx_min_requests`): read by [`crate::outside::access_log`].
    pub max_5xx: FiveXxLimits,
    /// How long a new release is watched after its cut-over with the previous container kept
    /// warm beside it ([`crate::pass::bake`]); zero: the previous one is retired at cut-over.
    pub bake: Duration,
}

impl HealthSettings {
    /// Every check, `url` (with `contains`) first, then `[[health.check]]` in file order.
    pub fn all_checks(&self) -> Vec<HealthCheck> {
        let first = HealthCheck { path: self.url.path.clone(), status: None, contains: self.contains.clone() };
        std::iter::once(first).chain(self.checks.iter().cloned()).collect()
    }
}

/// One page that must answer as expected (`[[health.check]]`, or `[health] url` itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Path and query on the host port of `[health] url`, starting with `/`.
    pub path: String,
    /// The exact status expected; `None`: any 2xx.
    pub status: Option<u16>,
    /// Text the body must contain.
    pub contains: Option<String>,
}

/// The share of 5xx answers in a container's access log that fails a release, judged only over
/// enough requests that one unlucky answer does not.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FiveXxLimits {
    /// Fails when the share of 5xx answers exceeds this (0.0-1.0; 1.0 never fails).
    pub max_share: f64,
    /// Judged only once the window holds at least this many requests.
    pub min_requests: u32,
}

/// The page that proves the blog serves. Plain HTTP: it is probed on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthUrl {
    pub host: String,
    pub port: u16,
    /// Path and query, always starting with `/`.
    pub path: String,
}

impl fmt::Display for HealthUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "http://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "http://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentSettings {
    pub state_dir: PathBuf,
    /// How long a second `sync` waits for the first to finish before giving up.
    pub lock_timeout: Duration,
}

/// The traffic mode when the config does not say.
pub const DEFAULT_TRAFFIC_MODE: TrafficMode = TrafficMode::Switch;

/// How host ports reach the serving container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrafficMode {
    /// The agent DNATs each host port to the serving container's bridge address (its own
    /// netfilter chains); a release swap moves new connections in one atomic rule change.
    Switch,
    /// Docker publishes the ports (`-p`); a swap stops the old container before the new one
    /// can bind them. For hosts where the agent may not touch netfilter.
    Publish,
}

impl fmt::Display for TrafficMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TrafficMode::Switch => "switch",
            TrafficMode::Publish => "publish",
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct TrafficSettings {
    pub mode: TrafficMode,
    /// Prefix of the agent's netfilter chains (`<prefix>-DNAT`, ...): a second agent on one
    /// host (or a test) needs its own.
    pub chains: String,
}

/// Hosts that must judge a release bad before it is halted for all: two, so that no single
/// host's own trouble stops the fleet, while a broken release is still stopped after two
/// tries (ECS's circuit breaker needs a few failed tasks in the same way).
pub const DEFAULT_HALT_AFTER: u32 = 2;
/// A larger quorum is a fleet that never halts; a vote read lists at most 100 objects.
const MAX_HALT_AFTER: i64 = 50;

/// Staged rollout and fleet halt (see [`crate::fleet`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSettings {
    /// A host applies a new release no earlier than its S3 Last-Modified + seed x spread.
    /// Zero (the default): at once, every host together.
    pub spread: Duration,
    /// Where halt markers live, `{environment}` standing for the environment's name; `None`:
    /// `halted/` beside the release key (see [`crate::fleet::halt::prefix_for`]).
    pub halt_prefix: Option<String>,
    /// The Auto Scaling launch lifecycle hook this host completes once it serves (see
    /// [`crate::agent::launch_gate`]); `None`: no launch gate.
    pub lifecycle_hook: Option<String>,
    /// Hosts whose votes halt a release fleet-wide (see [`crate::fleet::halt`]); 1: the first
    /// failing host halts it on its own evidence.
    pub halt_after: u32,
}

impl RolloutSettings {
    /// The marker folder for `environment`, whose release key is `release_key`.
    pub fn halt_prefix_for(&self, release_key: &str, environment: &str) -> String {
        crate::fleet::halt::prefix_for(release_key, self.halt_prefix.as_deref(), environment)
    }
}

/// The node_exporter textfile (see [`crate::fleet::metrics`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSettings {
    /// Absolute path of the `*.prom` file written after every pass; `None`: no metrics.
    pub textfile: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReconcileSettings {
    pub interval: Duration,
    pub jitter: Duration,
    pub keep_images: usize,
    /// Bytes that must stay free on Docker's data root after a pull (beyond the image's own
    /// size): a pull that would cut into it is not started ([`crate::outside::disk`]).
    pub min_free_disk: u64,
}

// ---- raw file shape -------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    environment: RawEnvironment,
    release: RawRelease,
    image: RawImage,
    container: RawContainer,
    health: RawHealth,
    agent: RawAgent,
    reconcile: RawReconcile,
    traffic: RawTraffic,
    rollout: RawRollout,
    metrics: RawMetrics,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRollout {
    spread: Option<String>,
    halt_prefix: Option<String>,
    lifecycle_hook: Option<String>,
    halt_after: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMetrics {
    textfile: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTraffic {
    mode: Option<String>,
    chains: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEnvironment {
    name: Option<String>,
    tag: Option<String>,
    allowed: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawRelease {
    bucket: Option<String>,
    keys: Option<BTreeMap<String, String>>,
    kms_key: Option<String>,
    public_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawImage {
    repository: Option<String>,
    pull_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawContainer {
    name: Option<String>,
    ports: Option<Vec<String>>,
    env: Option<BTreeMap<String, String>>,
    labels: Option<BTreeMap<String, String>>,
    stop_timeout: Option<String>,
    log_driver: Option<String>,
    // Sizes and numbers are read as any TOML value so that a wrong type or sign is refused
    // with the key and the fix, not serde's "expected u32".
    log_max_size: Option<toml::Value>,
    log_max_files: Option<toml::Value>,
    no_new_privileges: Option<toml::Value>,
    cap_drop: Option<Vec<String>>,
    cap_add: Option<Vec<String>>,
    pids_limit: Option<toml::Value>,
    memory: Option<toml::Value>,
    cpus: Option<toml::Value>,
    read_only: Option<toml::Value>,
    tmpfs: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHealth {
    url: Option<String>,
    timeout: Option<String>,
    contains: Option<String>,
    check: Option<Vec<RawHealthCheck>>,
    max_5xx_share: Option<RawShare>,
    max_5xx_min_requests: Option<i64>,
    bake: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHealthCheck {
    path: Option<String>,
    status: Option<i64>,
    contains: Option<String>,
}

/// A share as an operator writes it: `"5%"` or `0.05`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawShare {
    Text(String),
    Number(f64),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAgent {
    state_dir: Option<String>,
    lock_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawReconcile {
    interval: Option<String>,
    jitter: Option<String>,
    keep_images: Option<usize>,
    min_free_disk: Option<String>,
}

/// A release fails when more than this share of the requests its access log shows answered
/// 5xx: a blog serves static pages, so even a few percent of 5xx is a broken release, while
/// one failed request among twenty (a client cut off mid-request) is not.
pub const DEFAULT_MAX_5XX_SHARE: f64 = 0.05;

/// Requests the access-log window must hold before its 5xx share is judged: below this, one
/// 5xx would be a large share of nothing.
pub const DEFAULT_MAX_5XX_MIN_REQUESTS: u32 = 20;

/// Label prefix the agent owns on its containers; users may not set keys under it.
pub const LABEL_PREFIX: &str = "io.blog-agent.";

impl Settings {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ConfigError::Missing { path: path.to_owned() }
            } else {
                ConfigError::Unreadable { path: path.to_owned(), source }
            }
        })?;
        Settings::parse(&text, path)
    }

    /// Validates TOML text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Settings, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            line: e.span().map(|s| text[..s.start].matches('\n').count() + 1).unwrap_or(1),
            message: e.message().trim().replace('\n', " "),
        })?;
        Validator { path }.settings(raw)
    }

    /// The S3 key holding the desired SHA for `env`.
    pub fn release_key(&self, env: &str) -> Option<&str> {
        self.release.keys.get(env).map(String::as_str)
    }

    /// Where `env`'s halt markers and votes live: beside its release key, or under
    /// `[rollout] halt_prefix`. (Validation gives every allowed environment a release key.)
    pub fn halt_prefix(&self, env: &str) -> String {
        self.rollout.halt_prefix_for(self.release_key(env).unwrap_or_default(), env)
    }
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, key: &str, value: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            key: key.to_owned(),
            value: safe_quote(value),
            problem: problem.into(),
        }
    }

    fn required(&self, key: &str, hint: &'static str) -> ConfigError {
        ConfigError::Required { path: self.path.to_owned(), key: key.to_owned(), hint }
    }

    fn duration(&self, key: &str, raw: Option<String>, default: Duration) -> Result<Duration, ConfigError> {
        let Some(raw) = raw else { return Ok(default) };
        humantime::parse_duration(raw.trim()).map_err(|_| {
            self.invalid(key, &raw, "expected a duration such as \"500ms\", \"30s\", \"2m\" or \"1h 30m\"")
        })
    }

    /// A timeout: a zero one would fail every attempt at once, so it is refused.
    fn timeout(
        &self,
        key: &str,
        raw: Option<String>,
        default: Duration,
        example: &str,
    ) -> Result<Duration, ConfigError> {
        let value = self.duration(key, raw, default)?;
        if value.is_zero() {
            return Err(self.invalid(key, "0s", format!("must be longer than zero, e.g. \"{example}\"")));
        }
        Ok(value)
    }

    fn settings(&self, raw: RawConfig) -> Result<Settings, ConfigError> {
        let environment = self.environment(raw.environment)?;
        let release = self.release(raw.release, &environment)?;
        let image = ImageSettings {
            repository: self.repository(raw.image.repository)?,
            pull_timeout: self.timeout(
                "[image] pull_timeout",
                raw.image.pull_timeout,
                Duration::from_secs(600),
                "10m",
            )?,
        };
        let container = self.container(raw.container)?;
        let health = self.health(raw.health, &container.ports)?;
        let agent = AgentSettings {
            state_dir: PathBuf::from(raw.agent.state_dir.unwrap_or_else(|| "/var/lib/blog-agent".into())),
            lock_timeout: self.timeout(
                "[agent] lock_timeout",
                raw.agent.lock_timeout,
                Duration::from_secs(300),
                "5m",
            )?,
        };
        if !agent.state_dir.is_absolute() {
            return Err(self.invalid(
                "[agent] state_dir",
                &agent.state_dir.display().to_string(),
                "expected an absolute path such as \"/var/lib/blog-agent\"",
            ));
        }
        let reconcile = self.reconcile(raw.reconcile)?;
        let traffic = self.traffic(raw.traffic, &container.ports)?;
        let rollout = self.rollout(raw.rollout)?;
        self.separate_halts(&release, &rollout)?;
        let metrics = self.metrics(raw.metrics)?;
        Ok(Settings {
            source: self.path.to_owned(),
            environment,
            release,
            image,
            container,
            health,
            agent,
            reconcile,
            traffic,
            rollout,
            metrics,
        })
    }

    /// Two environments whose halt markers land in one folder would halt each other's
    /// releases: refused, naming both keys and the setting that separates them.
    fn separate_halts(&self, release: &ReleaseSettings, rollout: &RolloutSettings) -> Result<(), ConfigError> {
        let prefixes: Vec<(&String, &String, String)> =
            release.keys.iter().map(|(env, key)| (env, key, rollout.halt_prefix_for(key, env))).collect();
        for (i, (env_a, key_a, prefix)) in prefixes.iter().enumerate() {
            if let Some((env_b, key_b, _)) = prefixes[i + 1..].iter().find(|(_, _, p)| p == prefix) {
                let suggestion = match key_a.rfind('/') {
                    Some(slash) => format!("{}halted/{{environment}}/", &key_a[..=slash]),
                    None => "halted/{environment}/".to_owned(),
                };
                return Err(self.invalid(
                    "[rollout] halt_prefix",
                    rollout.halt_prefix.as_deref().unwrap_or(prefix),
                    format!(
                        "[release.keys] {env_a} = {key_a:?} and [release.keys] {env_b} = {key_b:?} would keep their \
                         halts in the same folder {prefix:?}, so one environment would halt the other's releases; \
                         set [rollout] halt_prefix = {suggestion:?}, or give the release keys folders of their own"
                    ),
                ));
            }
        }
        Ok(())
    }

    fn rollout(&self, raw: RawRollout) -> Result<RolloutSettings, ConfigError> {
        use crate::fleet::rollout::MAX_SPREAD;
        let spread = self.duration("[rollout] spread", raw.spread, Duration::ZERO)?;
        if spread > MAX_SPREAD {
            return Err(self.invalid(
                "[rollout] spread",
                &humantime::format_duration(spread).to_string(),
                format!(
                    "must be at most {} (a fleet running two versions for longer is not a rollout); \
                     \"0s\" applies every release at once",
                    humantime::format_duration(MAX_SPREAD)
                ),
            ));
        }
        if let Some(prefix) = &raw.halt_prefix {
            if !prefix.contains("{environment}") {
                return Err(self.invalid(
                    "[rollout] halt_prefix",
                    prefix,
                    "must contain {environment}, so each environment halts its own releases \
                     (e.g. \"halts/{environment}/\"); leave it unset for halted/ beside the release key",
                ));
            }
            if prefix.chars().any(|c| c.is_control()) || prefix.contains("..") {
                return Err(self.invalid(
                    "[rollout] halt_prefix",
                    prefix,
                    "expected an S3 key prefix such as \"halts/{environment}/\" (no control characters, no \"..\")",
                ));
            }
        }
        if let Some(hook) = &raw.lifecycle_hook {
            // Auto Scaling's own rule for hook names: 1-255 of [A-Za-z0-9-_/].
            let valid = (1..=255).contains(&hook.len())
                && hook.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/'));
            if !valid {
                return Err(self.invalid(
                    "[rollout] lifecycle_hook",
                    hook,
                    "expected the name of the group's launch lifecycle hook (1-255 letters, digits, '-', '_', '/'), \
                     as `aws autoscaling describe-lifecycle-hooks` shows it; leave it unset for no launch gate",
                ));
            }
        }
        let halt_after = match raw.halt_after {
            None => DEFAULT_HALT_AFTER,
            Some(n) if (1..=MAX_HALT_AFTER).contains(&n) => n as u32,
            Some(n) => {
                return Err(self.invalid(
                    "[rollout] halt_after",
                    &n.to_string(),
                    format!(
                        "expected the number of hosts whose failures halt a release for the fleet, 1 to \
                         {MAX_HALT_AFTER} (default {DEFAULT_HALT_AFTER}; 1 lets one host halt it)"
                    ),
                ))
            }
        };
        Ok(RolloutSettings { spread, halt_prefix: raw.halt_prefix, lifecycle_hook: raw.lifecycle_hook, halt_after })
    }

    fn metrics(&self, raw: RawMetrics) -> Result<MetricsSettings, ConfigError> {
        const KEY: &str = "[metrics] textfile";
        let Some(raw) = raw.textfile else { return Ok(MetricsSettings { textfile: None }) };
        let path = PathBuf::from(&raw);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !path.is_absolute() {
            return Err(self.invalid(
                KEY,
                &raw,
                "expected an absolute path such as \"/var/lib/node_exporter/textfile_collector/blog_agent.prom\"",
            ));
        }
        if !name.ends_with(".prom") || name.len() <= ".prom".len() || raw.ends_with('/') {
            return Err(self.invalid(
                KEY,
                &raw,
                "the file name must end in .prom, the only files node_exporter's textfile collector reads \
                 (e.g. \"/var/lib/node_exporter/textfile_collector/blog_agent.prom\")",
            ));
        }
        Ok(MetricsSettings { textfile: Some(path) })
    }

    fn traffic(&self, raw: RawTraffic, ports: &[PortMapping]) -> Result<TrafficSettings, ConfigError> {
        const KEY: &str = "[traffic] mode";
        let mode = match raw.mode.as_deref() {
            None => DEFAULT_TRAFFIC_MODE,
            Some("switch") => TrafficMode::Switch,
            Some("publish") => TrafficMode::Publish,
            Some(other) => {
                return Err(self.invalid(KEY, &safe_quote(other), "expected \"switch\" or \"publish\""));
            }
        };
        if mode == TrafficMode::Switch {
            // The switch DNATs with iptables (IPv4); an IPv6 host address would silently not be
            // served, so it is refused where it is written.
            if let Some(p) = ports.iter().find(|p| p.host_ip.is_some_and(|ip| ip.is_ipv6())) {
                return Err(self.invalid(
                    "[container] ports",
                    &p.to_string(),
                    "IPv6 host addresses are not supported with [traffic] mode = \"switch\": use an IPv4 \
                     address (or none, for all), or set [traffic] mode = \"publish\"",
                ));
            }
        }
        let chains = raw.chains.unwrap_or_else(|| crate::outside::netfilter::DEFAULT_PREFIX.to_owned());
        if let Err(e) = crate::outside::netfilter::Netfilter::with_prefix(&chains) {
            return Err(self.invalid("[traffic] chains", &safe_quote(&chains), e.to_string()));
        }
        Ok(TrafficSettings { mode, chains })
    }

    fn environment(&self, raw: RawEnvironment) -> Result<EnvironmentSettings, ConfigError> {
        let allowed = raw.allowed.unwrap_or_else(|| vec!["staging".into(), "production".into()]);
        if allowed.is_empty() {
            return Err(self.invalid(
                "[environment] allowed",
                "[]",
                "list at least one environment, e.g. [\"staging\", \"production\"]",
            ));
        }
        for name in &allowed {
            if !valid_env_name(name) {
                return Err(self.invalid(
                    "[environment] allowed",
                    name,
                    "environment names are lowercase letters, digits, '-' and '_'",
                ));
            }
        }
        let tag = raw.tag.unwrap_or_else(|| "Environment".into());
        if !valid_imds_tag_key(&tag) {
            return Err(self.invalid(
                "[environment] tag",
                &tag,
                "expected an EC2 tag key readable over instance metadata, such as \"Environment\": \
                 1-128 letters, digits and + - = . , _ : @ (no spaces or /, not \".\", \"..\" or \"_index\")",
            ));
        }
        if let Some(name) = &raw.name {
            if !allowed.contains(name) {
                return Err(self.invalid(
                    "[environment] name",
                    name,
                    format!("not in [environment] allowed ({})", allowed.join(", ")),
                ));
            }
        }
        Ok(EnvironmentSettings { name: raw.name, tag, allowed })
    }

    fn release(&self, raw: RawRelease, env: &EnvironmentSettings) -> Result<ReleaseSettings, ConfigError> {
        let bucket = raw
            .bucket
            .ok_or_else(|| self.required("[release] bucket", "the S3 bucket CI writes the release SHA to"))?;
        if bucket.trim().is_empty() || bucket.contains('/') || bucket.starts_with("s3:") {
            return Err(self.invalid(
                "[release] bucket",
                &bucket,
                "expected a bare bucket name such as \"blog-artifacts\"",
            ));
        }
        let mut keys: BTreeMap<String, String> = [
            ("staging".to_owned(), "staging/stagebuild.txt".to_owned()),
            ("production".to_owned(), "production/prodbuild.txt".to_owned()),
        ]
        .into();
        keys.extend(raw.keys.unwrap_or_default());
        for (name, key) in &keys {
            if key.trim().is_empty() || key.starts_with('/') {
                return Err(self.invalid(
                    &format!("[release.keys] {name}"),
                    key,
                    "expected an S3 key such as \"staging/stagebuild.txt\"",
                ));
            }
        }
        if let Some(missing) = env.allowed.iter().find(|e| !keys.contains_key(*e)) {
            return Err(self.required(
                &format!("[release.keys] {missing}"),
                "every allowed environment needs the S3 key of its release file",
            ));
        }
        if let Some(key) = &raw.kms_key {
            if key.trim().is_empty() || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(self.invalid(
                    "[release] kms_key",
                    key,
                    "expected a KMS key id, ARN or alias such as \"alias/blog-releases\"; leave it unset for the \
                     bucket's default encryption",
                ));
            }
        }
        if let Some(key) = &raw.public_key {
            if !crate::signature::valid_public_key(key.trim()) {
                return Err(self.invalid(
                    "[release] public_key",
                    key,
                    "expected a minisign public key: the base64 line of the .pub file (`minisign -G` makes one), \
                     e.g. \"RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3\"",
                ));
            }
        }
        let public_key = raw.public_key.map(|k| k.trim().to_owned());
        Ok(ReleaseSettings { bucket, keys, kms_key: raw.kms_key, public_key })
    }

    fn repository(&self, raw: Option<String>) -> Result<Repository, ConfigError> {
        const KEY: &str = "[image] repository";
        const SHAPE: &str =
            "expected REGISTRY/NAME without a tag, e.g. \"123456789012.dkr.ecr.us-east-1.amazonaws.com/blog\"";
        let raw = raw.ok_or_else(|| self.required(KEY, "the ECR repository holding the blog images"))?;
        let Some((registry, path)) = raw.split_once('/') else {
            return Err(self.invalid(KEY, &raw, SHAPE));
        };
        let registry_ok = (registry.contains('.') || registry.contains(':') || registry == "localhost")
            && registry.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
        let path_ok = !path.is_empty()
            && path.split('/').all(|part| {
                !part.is_empty()
                    && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            });
        if !registry_ok || !path_ok {
            return Err(self.invalid(KEY, &raw, SHAPE));
        }
        Ok(Repository { registry: registry.to_owned(), path: path.to_owned() })
    }

    fn container(&self, raw: RawContainer) -> Result<ContainerSettings, ConfigError> {
        let bounds = self.bounds(&raw)?;
        let name = raw.name.unwrap_or_else(|| "blog".into());
        let mut chars = name.chars();
        let name_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            && name.len() <= 100;
        if !name_ok {
            return Err(self.invalid(
                "[container] name",
                &name,
                "expected a Docker container name: letters, digits, '_', '.', '-'",
            ));
        }
        if name.len() < 2 {
            return Err(self.invalid(
                "[container] name",
                &name,
                "Docker container names are at least 2 characters, e.g. \"blog\"",
            ));
        }
        if name.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(self.invalid(
                "[container] name",
                &name,
                "a name of hex digits only (0-9, a-f) can match another container's ID prefix when Docker \
                 looks it up; include a character outside 0-9a-f, e.g. \"blog\"",
            ));
        }
        let raw_ports = raw.ports.unwrap_or_else(|| vec!["80:80".into()]);
        if raw_ports.is_empty() {
            return Err(self.invalid("[container] ports", "[]", "publish at least one port, e.g. [\"80:80\"]"));
        }
        let mut ports = Vec::new();
        for (i, p) in raw_ports.iter().enumerate() {
            let port = parse_port_mapping(p).ok_or_else(|| {
                self.invalid(&format!("[container] ports[{i}]"), p, "expected \"HOST_PORT:CONTAINER_PORT\" or \"IP:HOST_PORT:CONTAINER_PORT\", e.g. \"80:80\" or \"127.0.0.1:8080:80\"")
            })?;
            if let Some(earlier) = ports.iter().find(|q| same_host_socket(q, &port)) {
                return Err(self.invalid(
                    &format!("[container] ports[{i}]"),
                    p,
                    format!(
                        "host port {} is already published by \"{earlier}\"; each host address and port can be \
                         published once",
                        port.host_port
                    ),
                ));
            }
            ports.push(port);
        }
        let env = raw.env.unwrap_or_default();
        for k in env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(self.invalid("[container] env", k, "variable names cannot be empty or contain '='"));
            }
        }
        let labels = raw.labels.unwrap_or_default();
        for k in labels.keys() {
            if k.is_empty() || k.starts_with(LABEL_PREFIX) {
                return Err(self.invalid(
                    "[container] labels",
                    k,
                    format!("label keys cannot be empty or start with \"{LABEL_PREFIX}\" (the agent's own)"),
                ));
            }
        }
        // Docker takes whole seconds: "500ms" would silently become 0, an immediate SIGKILL.
        // "0s" says so on purpose (e.g. for a server that ignores SIGTERM) and is kept.
        let stop_timeout = self.duration("[container] stop_timeout", raw.stop_timeout, Duration::from_secs(3))?;
        if stop_timeout.subsec_nanos() != 0 {
            return Err(self.invalid(
                "[container] stop_timeout",
                &humantime::format_duration(stop_timeout).to_string(),
                "must be a whole number of seconds (Docker counts seconds), e.g. \"3s\"; \"0s\" sends SIGKILL \
                 at once",
            ));
        }
        Ok(ContainerSettings { name, ports, variables: env, labels, stop_timeout, bounds })
    }

    fn bounds(&self, raw: &RawContainer) -> Result<ContainerBounds, ConfigError> {
        let driver = match raw.log_driver.as_deref().map(str::trim) {
            None | Some("json-file") => LogDriver::JsonFile,
            Some("local") => LogDriver::Local,
            Some(other) => {
                return Err(self.invalid(
                    "[container] log_driver",
                    other,
                    "expected \"json-file\" (what log shippers read) or \"local\" (compressed, read through \
                     `docker logs` only)",
                ))
            }
        };
        let max_size =
            self.size("[container] log_max_size", raw.log_max_size.as_ref(), "\"10MiB\"")?.unwrap_or(10 << 20);
        if max_size < 1024 {
            return Err(self.invalid(
                "[container] log_max_size",
                &format_size(max_size),
                "must be at least 1KiB, e.g. \"10MiB\"",
            ));
        }
        let max_files = match self.whole("[container] log_max_files", raw.log_max_files.as_ref(), "3")? {
            None => 3,
            Some(n @ 1..=100) => n as u32,
            Some(n) => {
                return Err(self.invalid(
                    "[container] log_max_files",
                    &n.to_string(),
                    "expected 1 to 100 files kept, e.g. 3 (the disk holds at most log_max_files x log_max_size)",
                ))
            }
        };
        let cap_drop = self.capabilities("[container] cap_drop", raw.cap_drop.as_deref(), &["ALL"])?;
        let cap_add = self.capabilities("[container] cap_add", raw.cap_add.as_deref(), &DEFAULT_CAP_ADD)?;
        let pids_limit = match self.whole("[container] pids_limit", raw.pids_limit.as_ref(), "256")? {
            None => Some(256),
            Some(0) => None,
            Some(n @ 1..=4_194_304) => Some(n as u32),
            Some(n) => {
                return Err(self.invalid(
                    "[container] pids_limit",
                    &n.to_string(),
                    "expected the most processes the container may run, e.g. 256, or 0 for no limit",
                ))
            }
        };
        let memory = self.size("[container] memory", raw.memory.as_ref(), "\"512MiB\"")?;
        if let Some(bytes) = memory.filter(|b| *b < MIN_MEMORY) {
            return Err(self.invalid(
                "[container] memory",
                &format_size(bytes),
                "Docker refuses less than 6MiB; a web server wants tens of MiB, e.g. \"256MiB\"",
            ));
        }
        let nano_cpus = self.cpus(raw.cpus.as_ref())?;
        let read_only = self.flag("[container] read_only", raw.read_only.as_ref(), false)?;
        let tmpfs = match &raw.tmpfs {
            None => DEFAULT_TMPFS.iter().map(|p| (*p).to_owned()).collect(),
            Some(paths) if !read_only => {
                return Err(self.invalid(
                    "[container] tmpfs",
                    &paths.join(", "),
                    "tmpfs paths are the writable parts of a read-only root filesystem: set read_only = true, \
                     or remove tmpfs",
                ))
            }
            Some(paths) => {
                let mut seen: Vec<String> = Vec::new();
                for (i, p) in paths.iter().enumerate() {
                    let path = p.trim().trim_end_matches('/');
                    let ok = path.starts_with('/')
                        && !path.split('/').any(|part| part == "..")
                        && !path.contains(|c: char| c == ':' || c == ',' || c.is_whitespace() || c.is_control());
                    if !ok {
                        return Err(self.invalid(
                            &format!("[container] tmpfs[{i}]"),
                            p,
                            "expected an absolute path inside the container, e.g. \"/run\"",
                        ));
                    }
                    if !seen.iter().any(|s| s == path) {
                        seen.push(path.to_owned());
                    }
                }
                seen.sort();
                seen
            }
        };
        Ok(ContainerBounds {
            log: LogSettings { driver, max_size, max_files },
            no_new_privileges: self.flag("[container] no_new_privileges", raw.no_new_privileges.as_ref(), true)?,
            cap_drop,
            cap_add,
            pids_limit,
            memory,
            nano_cpus,
            read_only,
            tmpfs,
        })
    }

    /// A size: a string with a unit ([`parse_size`]) or a whole number of bytes.
    fn size(&self, key: &str, raw: Option<&toml::Value>, example: &str) -> Result<Option<u64>, ConfigError> {
        let refuse = |value: &str| {
            self.invalid(
                key,
                value,
                format!(
                    "expected a size such as {example}: KB, MB, GB, TB are powers of 1000, KiB, MiB, GiB, TiB \
                     powers of 1024"
                ),
            )
        };
        match raw {
            None => Ok(None),
            Some(toml::Value::String(text)) => parse_size(text).map(Some).ok_or_else(|| refuse(text)),
            Some(toml::Value::Integer(n)) => u64::try_from(*n).map(Some).map_err(|_| refuse(&n.to_string())),
            Some(other) => Err(refuse(&shown(other))),
        }
    }

    /// `true` or `false`.
    fn flag(&self, key: &str, raw: Option<&toml::Value>, default: bool) -> Result<bool, ConfigError> {
        match raw {
            None => Ok(default),
            Some(toml::Value::Boolean(b)) => Ok(*b),
            Some(other) => Err(self.invalid(key, &shown(other), "expected true or false (no quotes)")),
        }
    }

    /// A whole number, of any sign (the caller bounds it).
    fn whole(&self, key: &str, raw: Option<&toml::Value>, example: &str) -> Result<Option<i64>, ConfigError> {
        match raw {
            None => Ok(None),
            Some(toml::Value::Integer(n)) => Ok(Some(*n)),
            Some(other) => Err(self.invalid(key, &shown(other), format!("expected a whole number, e.g. {example}"))),
        }
    }

    /// `cpus`: a number of CPUs, fractions allowed (`0.5`, `1.5`, `2`), as Docker's `--cpus`.
    fn cpus(&self, raw: Option<&toml::Value>) -> Result<Option<u64>, ConfigError> {
        const KEY: &str = "[container] cpus";
        let (text, cpus) = match raw {
            None => return Ok(None),
            Some(toml::Value::Integer(n)) => (n.to_string(), *n as f64),
            Some(toml::Value::Float(x)) => (x.to_string(), *x),
            Some(toml::Value::String(s)) => (s.clone(), s.trim().parse::<f64>().unwrap_or(f64::NAN)),
            Some(other) => (shown(other), f64::NAN),
        };
        // Docker's own bounds: a hundredth of a CPU at least; 1024 is far beyond any host.
        if !(0.01..=1024.0).contains(&cpus) {
            return Err(self.invalid(
                KEY,
                &text,
                "expected a number of CPUs from 0.01 up, e.g. 1 or 0.5 (a fraction of one CPU's time)",
            ));
        }
        Ok(Some((cpus * 1e9).round() as u64))
    }

    /// Capability names, `CAP_` prefix and case optional; `default` when unset.
    fn capabilities(&self, key: &str, raw: Option<&[String]>, default: &[&str]) -> Result<Vec<String>, ConfigError> {
        let Some(raw) = raw else { return Ok(default.iter().map(|c| (*c).to_owned()).collect()) };
        let mut caps: Vec<String> = Vec::new();
        for (i, name) in raw.iter().enumerate() {
            let upper = name.trim().to_ascii_uppercase();
            let cap = upper.strip_prefix("CAP_").unwrap_or(&upper);
            if cap != "ALL" && !CAPABILITIES.contains(&cap) {
                return Err(self.invalid(
                    &format!("{key}[{i}]"),
                    name,
                    "expected a Linux capability name such as \"NET_BIND_SERVICE\" or \"SETUID\" \
                     (capabilities(7), with or without CAP_), or \"ALL\"",
                ));
            }
            if !caps.iter().any(|c| c == cap) {
                caps.push(cap.to_owned());
            }
        }
        // One order for one set: a reordered list is the same spec, not a change to swap for.
        caps.sort();
        Ok(caps)
    }

    fn health(&self, raw: RawHealth, ports: &[PortMapping]) -> Result<HealthSettings, ConfigError> {
        const KEY: &str = "[health] url";
        let url_raw = raw.url.unwrap_or_else(|| "http://127.0.0.1:80/".into());
        let url = parse_health_url(&url_raw).ok_or_else(|| {
            self.invalid(KEY, &url_raw, "expected an http:// URL on this host, e.g. \"http://127.0.0.1:80/\"")
        })?;
        // The probe after cut-over goes to this URL: if it cannot reach the container, every
        // release fails its probe and is rolled back, with an outage each time.
        let published: Vec<&PortMapping> = ports.iter().filter(|p| p.host_port == url.port).collect();
        let suggestion = |p: &PortMapping| {
            let host = match p.host_ip {
                Some(ip) if !ip.is_unspecified() => ip,
                Some(IpAddr::V6(_)) => IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
                _ => IpAddr::from([127, 0, 0, 1]),
            };
            HealthUrl { host: host.to_string(), port: p.host_port, path: url.path.clone() }.to_string()
        };
        if published.is_empty() {
            let all = ports.iter().map(|p| format!("\"{p}\"")).collect::<Vec<_>>().join(", ");
            return Err(self.invalid(
                KEY,
                &url_raw,
                format!(
                    "port {} is not a host port the container publishes ([container] ports = [{all}]); \
                     probe a published one, e.g. \"{}\"",
                    url.port,
                    suggestion(&ports[0])
                ),
            ));
        }
        if !published.iter().any(|p| reaches(p.host_ip, &url.host)) {
            return Err(self.invalid(
                KEY,
                &url_raw,
                format!(
                    "host {} does not reach port {} as published (\"{}\"): use loopback or the published \
                     address, e.g. \"{}\"",
                    url.host,
                    url.port,
                    published[0],
                    suggestion(published[0])
                ),
            ));
        }
        let timeout = self.timeout("[health] timeout", raw.timeout, Duration::from_secs(30), "30s")?;
        let contains = self.contains("[health] contains", raw.contains)?;
        let checks = raw
            .check
            .unwrap_or_default()
            .into_iter()
            .enumerate()
            .map(|(i, check)| self.health_check(i + 1, check))
            .collect::<Result<Vec<_>, _>>()?;
        let max_5xx = self.five_xx(raw.max_5xx_share, raw.max_5xx_min_requests)?;
        let bake = self.duration("[health] bake", raw.bake, Duration::from_secs(60))?;
        Ok(HealthSettings { url, timeout, contains, checks, max_5xx, bake })
    }

    /// Text a body must contain: an empty one would pass every page, so it is refused.
    fn contains(&self, key: &str, raw: Option<String>) -> Result<Option<String>, ConfigError> {
        match raw {
            Some(text) if text.is_empty() => Err(self.invalid(
                key,
                &text,
                "must not be empty (it would match every page); name a text the page always shows, e.g. \"<title>\", \
                 or leave the key out",
            )),
            other => Ok(other),
        }
    }

    /// `[[health.check]]` number `n` (1-based, in file order).
    fn health_check(&self, n: usize, raw: RawHealthCheck) -> Result<HealthCheck, ConfigError> {
        let key = |k: &str| format!("[[health.check]] #{n} {k}");
        let Some(path) = raw.path else {
            return Err(
                self.required(&key("path"), "the page to check on the host port of [health] url, e.g. \"/posts/\"")
            );
        };
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.invalid(
                &key("path"),
                &path,
                "expected a path on the host port of [health] url, starting with \"/\" and without spaces, e.g. \
                 \"/posts/\"",
            ));
        }
        let status = match raw.status {
            None => None,
            Some(code @ 100..=599) => Some(code as u16),
            Some(code) => {
                return Err(self.invalid(
                    &key("status"),
                    &code.to_string(),
                    "expected an HTTP status from 100 to 599, e.g. 200 (leave it out for any 2xx)",
                ))
            }
        };
        let contains = self.contains(&key("contains"), raw.contains)?;
        Ok(HealthCheck { path, status, contains })
    }

    fn five_xx(&self, share: Option<RawShare>, min_requests: Option<i64>) -> Result<FiveXxLimits, ConfigError> {
        const SHARE: &str = "[health] max_5xx_share";
        const EXPECTED: &str =
            "expected a share from \"0%\" to \"100%\" (or 0.0 to 1.0), e.g. \"5%\"; \"100%\" never fails";
        let max_share = match share {
            None => DEFAULT_MAX_5XX_SHARE,
            Some(RawShare::Number(n)) if (0.0..=1.0).contains(&n) => n,
            Some(RawShare::Number(n)) => return Err(self.invalid(SHARE, &n.to_string(), EXPECTED)),
            Some(RawShare::Text(text)) => text
                .trim()
                .strip_suffix('%')
                .and_then(|n| n.trim().parse::<f64>().ok())
                .filter(|n| (0.0..=100.0).contains(n))
                .map(|n| n / 100.0)
                .ok_or_else(|| self.invalid(SHARE, &text, EXPECTED))?,
        };
        let min_requests = match min_requests {
            None => DEFAULT_MAX_5XX_MIN_REQUESTS,
            Some(n @ 1..=1_000_000) => n as u32,
            Some(n) => {
                return Err(self.invalid(
                    "[health] max_5xx_min_requests",
                    &n.to_string(),
                    "expected a number of requests from 1 to 1000000, e.g. 20",
                ))
            }
        };
        Ok(FiveXxLimits { max_share, min_requests })
    }

    fn reconcile(&self, raw: RawReconcile) -> Result<ReconcileSettings, ConfigError> {
        let interval = self.duration("[reconcile] interval", raw.interval, Duration::from_secs(30))?;
        if interval < Duration::from_secs(1) {
            return Err(self.invalid(
                "[reconcile] interval",
                &humantime::format_duration(interval).to_string(),
                "must be at least 1s",
            ));
        }
        let jitter = self.duration("[reconcile] jitter", raw.jitter, interval / 10)?;
        if jitter > interval {
            return Err(self.invalid(
                "[reconcile] jitter",
                &humantime::format_duration(jitter).to_string(),
                format!(
                    "must not exceed [reconcile] interval ({}); the default is a tenth of it",
                    humantime::format_duration(interval)
                ),
            ));
        }
        let min_free_disk = match raw.min_free_disk {
            None => DEFAULT_MIN_FREE_DISK,
            Some(text) => parse_size(&text).ok_or_else(|| {
                self.invalid(
                    "[reconcile] min_free_disk",
                    &text,
                    "expected a size such as \"2GiB\", \"500MB\" or \"1073741824\" (bytes): KB, MB, GB, TB are \
                     powers of 1000, KiB, MiB, GiB, TiB powers of 1024",
                )
            })?,
        };
        Ok(ReconcileSettings { interval, jitter, keep_images: raw.keep_images.unwrap_or(2), min_free_disk })
    }
}

/// `[reconcile] min_free_disk` unset: room for Docker's own bookkeeping, a day of container
/// logs and the unpacked layers (a pull unpacks to about twice the compressed size the
/// manifest gives), on the 8 GB root volumes small instances boot with.
pub const DEFAULT_MIN_FREE_DISK: u64 = 2 * 1024 * 1024 * 1024;

/// A TOML value as a message quotes it: a string's text, anything else as written.
fn shown(value: &toml::Value) -> String {
    match value {
        toml::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A size in bytes: a whole or decimal number with an optional unit, `KB`/`MB`/`GB`/`TB`
/// (powers of 1000), `KiB`/`MiB`/`GiB`/`TiB` (powers of 1024) or `B`, case-insensitive, with
/// or without a space (`"2GiB"`, `"1.5 GB"`, `"1073741824"`). `None` for anything else, a
/// negative number, or more than `u64` holds.
pub fn parse_size(raw: &str) -> Option<u64> {
    let text = raw.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = (&text[..split], text[split..].trim_start());
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1000,
        "mb" => 1000u64.pow(2),
        "gb" => 1000u64.pow(3),
        "tb" => 1000u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => return None,
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let mut bytes = whole.checked_mul(scale)?;
    if !fraction.is_empty() {
        // Exact decimal arithmetic: "1.5GB" is 1500000000, not a float's neighbour of it.
        let digits = fraction.len().min(18) as u32;
        let numerator: u128 = fraction[..digits as usize].parse().ok()?;
        let part = numerator * u128::from(scale) / 10u128.pow(digits);
        bytes = bytes.checked_add(u64::try_from(part).ok()?)?;
    }
    Some(bytes)
}

/// `bytes` in the largest unit that states it exactly (`"2GiB"`, `"100TB"`, `"1000B"` stays
/// `"1KB"`), as `[reconcile] min_free_disk` would be written: what messages and the documents
/// show of a configured size.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(u64, &str); 8] = [
        (1 << 40, "TiB"),
        (1_000_000_000_000, "TB"),
        (1 << 30, "GiB"),
        (1_000_000_000, "GB"),
        (1 << 20, "MiB"),
        (1_000_000, "MB"),
        (1 << 10, "KiB"),
        (1000, "KB"),
    ];
    UNITS
        .iter()
        .find(|(unit, _)| bytes > 0 && bytes.is_multiple_of(*unit))
        .map(|(unit, name)| format!("{}{name}", bytes / unit))
        .unwrap_or_else(|| format!("{bytes}B"))
}

/// Environment names end up in S3 keys, labels and log fields: keep them plain.
pub fn valid_env_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// Instance tags are read at `/latest/meta-data/tags/instance/<key>`; EC2 only exposes keys of
/// these characters there, and anything else (`?`, `#`, spaces, `/`) would change the path.
pub fn valid_imds_tag_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 128
        && !matches!(key, "." | ".." | "_index")
        && key.chars().all(|c| c.is_ascii_alphanumeric() || "+-=.,_:@".contains(c))
}

/// Whether two mappings claim the same host socket: Docker would fail to bind the second.
/// No address (or an unspecified one) covers every address of its family.
fn same_host_socket(a: &PortMapping, b: &PortMapping) -> bool {
    if a.host_port != b.host_port {
        return false;
    }
    match (a.host_ip, b.host_ip) {
        (None, _) | (_, None) => true,
        (Some(x), Some(y)) => x == y || ((x.is_unspecified() || y.is_unspecified()) && x.is_ipv4() == y.is_ipv4()),
    }
}

/// Whether a probe of `host` reaches a port published on `host_ip`. Published on every address
/// (the default), any address of this host does; published on one address, only that one
/// (or `localhost` for a loopback address).
fn reaches(host_ip: Option<IpAddr>, host: &str) -> bool {
    let literal = host.parse::<IpAddr>().ok();
    match (host_ip, literal) {
        (None, _) => true,
        (Some(ip), Some(h)) if ip.is_unspecified() => ip.is_ipv4() == h.is_ipv4(),
        (Some(ip), None) if ip.is_unspecified() => true,
        (Some(ip), Some(h)) => ip == h,
        (Some(ip), None) => {
            host.eq_ignore_ascii_case("localhost")
                && (ip == IpAddr::from([127, 0, 0, 1]) || ip == IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]))
        }
    }
}

fn parse_port_mapping(raw: &str) -> Option<PortMapping> {
    let raw = raw.trim().strip_suffix("/tcp").unwrap_or(raw.trim());
    let (host_ip, rest) = match raw.rsplitn(3, ':').collect::<Vec<_>>().as_slice() {
        [container, host] => (None, (*host, *container)),
        [container, host, ip] => {
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            (Some(ip.parse::<IpAddr>().ok()?), (*host, *container))
        }
        _ => return None,
    };
    let host_port: u16 = rest.0.parse().ok().filter(|p| *p > 0)?;
    let container_port: u16 = rest.1.parse().ok().filter(|p| *p > 0)?;
    Some(PortMapping { host_ip, host_port, container_port })
}

fn parse_health_url(raw: &str) -> Option<HealthUrl> {
    let rest = raw.trim().strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (h, p.parse::<u16>().ok()?),
        _ => (authority, 80),
    };
    if host.is_empty() || path.contains(char::is_whitespace) {
        return None;
    }
    Some(HealthUrl { host: host.trim_start_matches('[').trim_end_matches(']').to_owned(), port, path: path.to_owned() })
}

#[cfg(test)]
mod documented;

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str =
        "[release]\nbucket = \"b\"\n[image]\nrepository = \"123456789012.dkr.ecr.us-east-1.amazonaws.com/blog\"\n";

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::parse(text, Path::new("/etc/blog-agent/config.toml"))
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.environment.tag, "Environment");
        assert_eq!(s.environment.allowed, ["staging", "production"]);
        assert_eq!(s.release_key("staging"), Some("staging/stagebuild.txt"));
        assert_eq!(s.release_key("production"), Some("production/prodbuild.txt"));
        assert_eq!(s.image.repository.registry, "123456789012.dkr.ecr.us-east-1.amazonaws.com");
        assert_eq!(
            s.image.repository.reference("abc1234"),
            "123456789012.dkr.ecr.us-east-1.amazonaws.com/blog:abc1234"
        );
        assert_eq!(s.container.name, "blog");
        assert_eq!(s.container.ports, [PortMapping { host_ip: None, host_port: 80, container_port: 80 }]);
        assert_eq!(s.health.url.to_string(), "http://127.0.0.1:80/");
        assert_eq!(s.health.timeout, Duration::from_secs(30));
        assert_eq!(s.agent.state_dir, PathBuf::from("/var/lib/blog-agent"));
        assert_eq!(s.reconcile.interval, Duration::from_secs(30));
        assert_eq!(s.reconcile.jitter, Duration::from_secs(3));
        assert_eq!(s.reconcile.keep_images, 2);
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../packaging/config.example.toml");
        parse(text).unwrap();
    }

    #[test]
    fn port_forms() {
        let cases: &[(&str, Option<&str>)] = &[
            ("80:80", Some("80:80")),
            ("127.0.0.1:8080:80", Some("127.0.0.1:8080:80")),
            ("8080:80/tcp", Some("8080:80")),
            ("80", None),
            ("0:80", None),
            ("a:80", None),
            ("1.2.3:80:80", None),
            ("70000:80", None),
        ];
        for (input, want) in cases {
            assert_eq!(parse_port_mapping(input).map(|p| p.to_string()).as_deref(), *want, "{input}");
        }
    }

    #[test]
    fn health_url_forms() {
        let u = parse_health_url("http://127.0.0.1:8080/healthz?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("127.0.0.1", 8080, "/healthz?x=1"));
        let u = parse_health_url("http://localhost").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("localhost", 80, "/"));
        assert!(parse_health_url("https://127.0.0.1/").is_none());
        assert!(parse_health_url("127.0.0.1/").is_none());
    }

    /// Each bad input is refused with a message naming the key and what is accepted.
    #[test]
    fn invalid_configs_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("[release]\nbucket = \"b\"\nbuckett = \"c\"\n", "unknown field `buckett`"),
            ("[nope]\n", "unknown field `nope`"),
            ("[image]\nrepository = \"r.example/blog\"\n", "[release] bucket is required"),
            ("[release]\nbucket = \"b\"\n", "[image] repository is required"),
            ("[release]\nbucket = \"b\"\n[image]\nrepository = \"blog\"\n", "[image] repository = \"blog\""),
            ("[release]\nbucket = \"b\"\n[image]\nrepository = \"r.example/blog:latest\"\n", "expected REGISTRY/NAME"),
            (
                &format!("{MINIMAL}[health]\ntimeout = \"30 parsecs\"\n"),
                "[health] timeout = \"30 parsecs\": expected a duration",
            ),
            (&format!("{MINIMAL}[health]\nurl = \"https://x/\"\n"), "[health] url"),
            (&format!("{MINIMAL}[container]\nports = [\"80\"]\n"), "[container] ports[0] = \"80\""),
            (&format!("{MINIMAL}[container]\nname = \"-bad\"\n"), "[container] name"),
            (&format!("{MINIMAL}[container]\nlabels = {{ \"io.blog-agent.sha\" = \"x\" }}\n"), "[container] labels"),
            (
                &format!("{MINIMAL}[environment]\nname = \"qa\"\n"),
                "[environment] name = \"qa\": not in [environment] allowed",
            ),
            (&format!("{MINIMAL}[environment]\nallowed = [\"qa\"]\n"), "[release.keys] qa is required"),
            (&format!("{MINIMAL}[agent]\nstate_dir = \"relative\"\n"), "[agent] state_dir"),
            ("[release\n", "line 1"),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "for {text:?}\n got: {err}\nwant: {want}");
            assert!(err.starts_with("config file /etc/blog-agent/config.toml"), "{err}");
            assert!(!err.contains('\n'), "one line: {err:?}");
        }
    }

    /// Asserts `text` is refused with one line naming the file, `key = value` and `accepted`.
    fn assert_refused(text: &str, key_value: &str, accepted: &str) {
        let err = parse(text).map(|_| ()).unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err:?}");
        let err = err.to_string();
        assert!(err.starts_with("config file /etc/blog-agent/config.toml: "), "{err}");
        assert!(err.contains(key_value), "for {text:?}\n got: {err}\nwant: {key_value}");
        assert!(err.contains(accepted), "for {text:?}\n got: {err}\nwant: {accepted}");
        assert!(!err.contains('\n'), "one line: {err:?}");
    }

    #[test]
    fn health_checks_are_parsed_in_order() {
        let s = parse(&format!(
            "{MINIMAL}[health]\ncontains = \"<h1>blog\"\nmax_5xx_share = 0.1\nmax_5xx_min_requests = 50\n\
             [[health.check]]\npath = \"/posts/\"\n[[health.check]]\npath = \"/old\"\nstatus = 301\ncontains = \"moved\"\n"
        ))
        .unwrap();
        let all = s.health.all_checks();
        let got: Vec<(&str, Option<u16>, Option<&str>)> =
            all.iter().map(|c| (c.path.as_str(), c.status, c.contains.as_deref())).collect();
        assert_eq!(got, [("/", None, Some("<h1>blog")), ("/posts/", None, None), ("/old", Some(301), Some("moved"))]);
        assert_eq!(s.health.max_5xx, FiveXxLimits { max_share: 0.1, min_requests: 50 });
        let defaults = parse(MINIMAL).unwrap().health;
        assert_eq!((defaults.contains, defaults.checks.len()), (None, 0));
        assert_eq!(defaults.max_5xx, FiveXxLimits { max_share: 0.05, min_requests: 20 });
        for (text, share) in [("\"5%\"", 0.05), ("\"0%\"", 0.0), ("\"100%\"", 1.0), ("\" 12.5 %\"", 0.125), ("1", 1.0)]
        {
            let s = parse(&format!("{MINIMAL}[health]\nmax_5xx_share = {text}\n")).unwrap();
            assert_eq!(s.health.max_5xx.max_share, share, "{text}");
        }
    }

    #[test]
    fn bad_health_checks_are_refused_naming_the_key() {
        let check = |body: &str| format!("{MINIMAL}[[health.check]]\n{body}\n");
        let cases: &[(String, &str, &str)] = &[
            (check("path = \"posts\""), "[[health.check]] #1 path = \"posts\"", "starting with \"/\""),
            (check("path = \"/a b\""), "[[health.check]] #1 path", "without spaces"),
            (check("path = \"/\"\nstatus = 99"), "[[health.check]] #1 status = \"99\"", "from 100 to 599"),
            (check("path = \"/\"\ncontains = \"\""), "[[health.check]] #1 contains = \"\"", "must not be empty"),
            (format!("{MINIMAL}[health]\ncontains = \"\"\n"), "[health] contains = \"\"", "must not be empty"),
            (format!("{MINIMAL}[health]\nmax_5xx_share = \"5\"\n"), "[health] max_5xx_share = \"5\"", "e.g. \"5%\""),
            (format!("{MINIMAL}[health]\nmax_5xx_share = \"120%\"\n"), "[health] max_5xx_share", "\"100%\""),
            (format!("{MINIMAL}[health]\nmax_5xx_share = 1.5\n"), "[health] max_5xx_share = \"1.5\"", "0.0 to 1.0"),
            (
                format!("{MINIMAL}[health]\nmax_5xx_min_requests = 0\n"),
                "[health] max_5xx_min_requests = \"0\"",
                "from 1",
            ),
        ];
        for (text, key, accepted) in cases {
            assert_refused(text, key, accepted);
        }
        // The second table is numbered as the operator counts them.
        assert_refused(
            &format!("{MINIMAL}[[health.check]]\npath = \"/a\"\n[[health.check]]\npath = \"b\"\n"),
            "[[health.check]] #2 path",
            "e.g.",
        );
        let err = parse(&check("status = 200")).unwrap_err();
        assert!(matches!(err, ConfigError::Required { .. }), "{err:?}");
        assert!(err.to_string().contains("[[health.check]] #1 path is required"), "{err}");
        let err = parse(&check("path = \"/\"\nstatuz = 200")).unwrap_err().to_string();
        assert!(err.contains("statuz"), "an unknown key is named: {err}");
    }

    #[test]
    fn health_url_on_an_unpublished_port_is_refused() {
        // The review's case: a loopback-only port 8080 and the default health URL (port 80).
        assert_refused(
            &format!("{MINIMAL}[container]\nports = [\"127.0.0.1:8080:80\"]\n"),
            "[health] url = \"http://127.0.0.1:80/\"",
            "port 80 is not a host port the container publishes ([container] ports = [\"127.0.0.1:8080:80\"]); \
             probe a published one, e.g. \"http://127.0.0.1:8080/\"",
        );
        assert_refused(
            &format!("{MINIMAL}[container]\nports = [\"80:80\"]\n[health]\nurl = \"http://127.0.0.1:8080/healthz\"\n"),
            "[health] url = \"http://127.0.0.1:8080/healthz\"",
            "e.g. \"http://127.0.0.1:80/healthz\"",
        );
    }

    #[test]
    fn health_host_that_does_not_reach_the_published_address_is_refused() {
        let cases = [
            ("127.0.0.1:8080:80", "http://127.0.0.2:8080/", "e.g. \"http://127.0.0.1:8080/\""),
            ("10.0.0.5:8080:80", "http://127.0.0.1:8080/", "e.g. \"http://10.0.0.5:8080/\""),
            ("10.0.0.5:8080:80", "http://localhost:8080/", "host localhost does not reach port 8080"),
            ("0.0.0.0:8080:80", "http://[::1]:8080/", "host ::1 does not reach"),
            ("[::1]:8080:80", "http://127.0.0.1:8080/", "e.g. \"http://[::1]:8080/\""),
            ("[::]:8080:80", "http://127.0.0.1:8080/", "e.g. \"http://[::1]:8080/\""),
        ];
        for (port, url, want) in cases {
            assert_refused(
                &format!("{MINIMAL}[container]\nports = [\"{port}\"]\n[health]\nurl = \"{url}\"\n"),
                &format!("[health] url = \"{url}\""),
                want,
            );
        }
    }

    #[test]
    fn health_url_that_reaches_a_published_port_is_accepted() {
        let cases = [
            ("127.0.0.1:8080:80", "http://127.0.0.1:8080/"),
            ("127.0.0.1:8080:80", "http://localhost:8080/x"),
            ("8080:80", "http://127.0.0.1:8080/"),
            ("8080:80", "http://[::1]:8080/"),
            ("8080:80", "http://10.1.2.3:8080/"),
            ("0.0.0.0:8080:80", "http://127.0.0.1:8080/"),
            ("10.0.0.5:8080:80", "http://10.0.0.5:8080/"),
            ("[::1]:8080:80", "http://[::1]:8080/"),
        ];
        for (port, url) in cases {
            // IPv6 host addresses need Docker's publishing.
            let traffic = if port.starts_with('[') { "[traffic]\nmode = \"publish\"\n" } else { "" };
            let s = parse(&format!("{MINIMAL}[container]\nports = [\"{port}\"]\n[health]\nurl = \"{url}\"\n{traffic}"))
                .unwrap_or_else(|e| panic!("{port} {url}: {e}"));
            assert_eq!(s.health.url.to_string().trim_end_matches('x'), url.trim_end_matches('x'));
        }
        // A second mapping may serve the probe.
        parse(&format!(
            "{MINIMAL}[container]\nports = [\"443:443\", \"127.0.0.1:8080:80\"]\n[health]\nurl = \"http://127.0.0.1:8080/\"\n"
        ))
        .unwrap();
    }

    #[test]
    fn ipv6_host_addresses_need_publish_mode() {
        assert_refused(
            &format!("{MINIMAL}[container]\nports = [\"[::1]:8080:80\"]\n[health]\nurl = \"http://[::1]:8080/\"\n"),
            "[container] ports = \"[::1]:8080:80\"",
            "IPv6 host addresses are not supported with [traffic] mode = \"switch\"",
        );
        let s = parse(&format!(
            "{MINIMAL}[container]\nports = [\"[::1]:8080:80\"]\n[health]\nurl = \"http://[::1]:8080/\"\n[traffic]\nmode = \"publish\"\n"
        ))
        .unwrap();
        assert_eq!(s.traffic.mode, TrafficMode::Publish);
        assert_refused(
            &format!("{MINIMAL}[traffic]\nmode = \"dnat\"\n"),
            "[traffic] mode",
            "\"switch\" or \"publish\"",
        );
        assert_refused(&format!("{MINIMAL}[traffic]\nchains = \"DOCKER-X\"\n"), "[traffic] chains", "dockerd");
        assert_eq!(
            parse(MINIMAL).unwrap().traffic,
            TrafficSettings { mode: TrafficMode::Switch, chains: "BLOG-AGENT".into() }
        );
    }

    #[test]
    fn duplicate_host_ports_are_refused() {
        let cases = [
            (r#"["80:80", "80:8080"]"#, "[container] ports[1] = \"80:8080\"", "already published by \"80:80\""),
            (
                r#"["127.0.0.1:80:80", "127.0.0.1:80:81"]"#,
                "[container] ports[1] = \"127.0.0.1:80:81\"",
                "host port 80 is already published by \"127.0.0.1:80:80\"",
            ),
            (r#"["80:80", "127.0.0.1:80:80"]"#, "[container] ports[1]", "already published"),
            (r#"["0.0.0.0:80:80", "127.0.0.1:80:80"]"#, "[container] ports[1]", "already published"),
        ];
        for (ports, key_value, want) in cases {
            assert_refused(&format!("{MINIMAL}[container]\nports = {ports}\n"), key_value, want);
        }
        // Distinct addresses, or the other family's wildcard, are distinct sockets.
        for ports in [r#"["127.0.0.1:80:80", "127.0.0.2:80:80"]"#, r#"["0.0.0.0:80:80", "[::]:80:80"]"#] {
            parse(&format!("{MINIMAL}[container]\nports = {ports}\n[traffic]\nmode = \"publish\"\n"))
                .unwrap_or_else(|e| panic!("{ports}: {e}"));
        }
    }

    #[test]
    fn sub_second_stop_timeout_is_refused_not_rounded_to_sigkill() {
        for value in ["500ms", "999ms", "1500ms"] {
            assert_refused(
                &format!("{MINIMAL}[container]\nstop_timeout = \"{value}\"\n"),
                "[container] stop_timeout = \"",
                "must be a whole number of seconds",
            );
        }
        for (value, secs) in [("1s", 1), ("0s", 0), ("2m", 120)] {
            let s = parse(&format!("{MINIMAL}[container]\nstop_timeout = \"{value}\"\n")).unwrap();
            assert_eq!(s.container.stop_timeout, Duration::from_secs(secs));
        }
    }

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("1073741824", Some(1 << 30)),
            ("512B", Some(512)),
            ("1KB", Some(1000)),
            ("1kb", Some(1000)),
            ("1KiB", Some(1024)),
            ("500MB", Some(500_000_000)),
            ("500MiB", Some(500 << 20)),
            ("2GB", Some(2_000_000_000)),
            ("2GiB", Some(2 << 30)),
            ("2 GiB", Some(2 << 30)),
            (" 2gib ", Some(2 << 30)),
            ("100TB", Some(100_000_000_000_000)),
            ("1TiB", Some(1 << 40)),
            ("1.5GB", Some(1_500_000_000)),
            ("1.5GiB", Some(3 << 29)),
            (".5KB", Some(500)),
            ("", None),
            ("GiB", None),
            ("-1GB", None),
            ("2 gigabytes", None),
            ("2G", None),
            ("1.2.3MB", None),
            ("1e9", None),
            ("99999999999TB", None),
            ("18446744073709551616", None),
        ];
        for (raw, want) in cases {
            assert_eq!(parse_size(raw), *want, "{raw:?}");
        }
        for (bytes, text) in [(2u64 << 30, "2GiB"), (100_000_000_000_000, "100TB"), (1000, "1KB"), (1500, "1500B")] {
            assert_eq!(format_size(bytes), text);
            assert_eq!(parse_size(text), Some(bytes), "{text} reads back");
        }
        assert_eq!(format_size(0), "0B");
    }

    #[test]
    fn min_free_disk_defaults_to_2gib_and_refuses_a_bad_size_naming_the_key_and_the_units() {
        assert_eq!(parse(MINIMAL).unwrap().reconcile.min_free_disk, 2 << 30);
        let s = parse(&format!("{MINIMAL}[reconcile]\nmin_free_disk = \"100TB\"\n")).unwrap();
        assert_eq!(s.reconcile.min_free_disk, 100_000_000_000_000);
        for bad in ["2G", "lots", "-5GB"] {
            assert_refused(
                &format!("{MINIMAL}[reconcile]\nmin_free_disk = \"{bad}\"\n"),
                &format!("[reconcile] min_free_disk = \"{bad}\""),
                "expected a size such as \"2GiB\"",
            );
        }
        // A number where a string is expected is refused too (a TOML type error, with its line).
        let err = parse(&format!("{MINIMAL}[reconcile]\nmin_free_disk = 5\n")).unwrap_err().to_string();
        assert!(err.contains("line") && !err.contains('\n'), "{err}");
    }

    #[test]
    fn jitter_longer_than_the_interval_is_refused() {
        assert_refused(
            &format!("{MINIMAL}[reconcile]\ninterval = \"10s\"\njitter = \"11s\"\n"),
            "[reconcile] jitter = \"11s\"",
            "must not exceed [reconcile] interval (10s)",
        );
        let s = parse(&format!("{MINIMAL}[reconcile]\ninterval = \"10s\"\njitter = \"10s\"\n")).unwrap();
        assert_eq!(s.reconcile.jitter, Duration::from_secs(10));
    }

    #[test]
    fn container_names_docker_would_refuse_or_mistake_for_an_id_are_refused() {
        assert_refused(
            &format!("{MINIMAL}[container]\nname = \"b\"\n"),
            "[container] name = \"b\"",
            "at least 2 characters",
        );
        for name in ["abc", "deadbeef", "0123", "CAFE"] {
            assert_refused(
                &format!("{MINIMAL}[container]\nname = \"{name}\"\n"),
                &format!("[container] name = \"{name}\""),
                "hex digits only",
            );
        }
        for name in ["blog", "bx", "cafe-1", "blog.v2", "x1"] {
            parse(&format!("{MINIMAL}[container]\nname = \"{name}\"\n")).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn zero_timeouts_are_refused() {
        for (table, key) in [("image", "pull_timeout"), ("agent", "lock_timeout"), ("health", "timeout")] {
            // MINIMAL already opens [image]; a key after it lands there.
            let text = match table {
                "image" => format!("{MINIMAL}{key} = \"0s\"\n"),
                _ => format!("{MINIMAL}[{table}]\n{key} = \"0s\"\n"),
            };
            assert_refused(&text, &format!("[{table}] {key} = \"0s\""), "must be longer than zero");
        }
    }

    #[test]
    fn tag_keys_that_are_not_an_imds_path_segment_are_refused() {
        for tag in ["Env?x", "Env#1", "My Env", "a/b", "", ".", "..", "_index", "Umgebung\u{e9}", &"x".repeat(129)] {
            assert_refused(
                &format!("{MINIMAL}[environment]\ntag = \"{tag}\"\n"),
                "[environment] tag = ",
                "1-128 letters, digits and + - = . , _ : @",
            );
        }
        for tag in ["Environment", "app:env", "team@blog", "a+b=c,d.e_f-g"] {
            let s = parse(&format!("{MINIMAL}[environment]\ntag = \"{tag}\"\n")).unwrap();
            assert_eq!(s.environment.tag, tag);
        }
    }

    #[test]
    fn rollout_and_metrics_default_to_today_s_behaviour() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(
            s.rollout,
            RolloutSettings { spread: Duration::ZERO, halt_prefix: None, lifecycle_hook: None, halt_after: 2 }
        );
        assert_eq!(s.metrics, MetricsSettings { textfile: None });
        assert_eq!(s.rollout.halt_prefix_for("staging/stagebuild.txt", "staging"), "staging/halted/");
        let s = parse(&format!(
            "{MINIMAL}[rollout]\nspread = \"15m\"\nhalt_prefix = \"ops/halts/{{environment}}/\"\n\
             [metrics]\ntextfile = \"/var/lib/node_exporter/textfile_collector/blog_agent.prom\"\n"
        ))
        .unwrap();
        assert_eq!(s.rollout.spread, Duration::from_secs(900));
        assert_eq!(s.rollout.halt_prefix_for("staging/stagebuild.txt", "production"), "ops/halts/production/");
        assert_eq!(
            s.metrics.textfile.as_deref(),
            Some(Path::new("/var/lib/node_exporter/textfile_collector/blog_agent.prom"))
        );
        // The longest spread accepted is the arithmetic's bound.
        let s = parse(&format!("{MINIMAL}[rollout]\nspread = \"7days\"\n")).unwrap();
        assert_eq!(s.rollout.spread, crate::fleet::rollout::MAX_SPREAD);
    }

    #[test]
    fn a_spread_longer_than_a_week_is_refused() {
        for value in ["8days", "1month", "7days 1s"] {
            assert_refused(
                &format!("{MINIMAL}[rollout]\nspread = \"{value}\"\n"),
                "[rollout] spread = \"",
                "must be at most 7days",
            );
        }
        assert_refused(
            &format!("{MINIMAL}[rollout]\nspread = \"soon\"\n"),
            "[rollout] spread = \"soon\"",
            "expected a duration",
        );
        let err = parse(&format!("{MINIMAL}[rollout]\nsprad = \"1m\"\n")).unwrap_err().to_string();
        assert!(err.contains("unknown field `sprad`"), "{err}");
    }

    #[test]
    fn a_lifecycle_hook_is_an_auto_scaling_hook_name() {
        let s = parse(&format!("{MINIMAL}[rollout]\nlifecycle_hook = \"blog-launch/v2_a\"\n")).unwrap();
        assert_eq!(s.rollout.lifecycle_hook.as_deref(), Some("blog-launch/v2_a"));
        for value in ["", "blog launch", "blog:launch", "h\u{e9}"] {
            assert_refused(
                &format!("{MINIMAL}[rollout]\nlifecycle_hook = \"{value}\"\n"),
                &format!("[rollout] lifecycle_hook = \"{value}\""),
                "launch lifecycle hook",
            );
        }
        assert_refused(
            &format!("{MINIMAL}[rollout]\nlifecycle_hook = \"{}\"\n", "h".repeat(256)),
            "[rollout] lifecycle_hook = ",
            "1-255 letters",
        );
    }

    #[test]
    fn halt_after_defaults_to_two_and_is_bounded() {
        assert_eq!(parse(MINIMAL).unwrap().rollout.halt_after, 2);
        assert_eq!(parse(&format!("{MINIMAL}[rollout]\nhalt_after = 1\n")).unwrap().rollout.halt_after, 1);
        for value in ["0", "-1", "51"] {
            let err = parse(&format!("{MINIMAL}[rollout]\nhalt_after = {value}\n")).unwrap_err().to_string();
            assert!(err.contains(&format!("[rollout] halt_after = \"{value}\"")) && err.contains("1 to 50"), "{err}");
        }
    }

    #[test]
    fn environments_whose_halts_would_share_a_folder_are_refused() {
        let shared = "[release.keys]\nstaging = \"releases/staging.txt\"\nproduction = \"releases/production.txt\"\n";
        let err = parse(&format!("{MINIMAL}{shared}")).unwrap_err();
        let text = err.to_string();
        for part in [
            "[rollout] halt_prefix",
            "[release.keys] production = \"releases/production.txt\"",
            "[release.keys] staging = \"releases/staging.txt\"",
            "\"releases/halted/\"",
            "halt_prefix = \"releases/halted/{environment}/\"",
        ] {
            assert!(text.contains(part), "{part} not in {text}");
        }
        let separated = format!("{MINIMAL}{shared}[rollout]\nhalt_prefix = \"releases/halted/{{environment}}/\"\n");
        assert!(parse(&separated).is_ok());
    }

    #[test]
    fn a_halt_prefix_without_the_environment_is_refused() {
        for value in ["halts/", "", "staging/halted/"] {
            assert_refused(
                &format!("{MINIMAL}[rollout]\nhalt_prefix = \"{value}\"\n"),
                &format!("[rollout] halt_prefix = \"{value}\""),
                "must contain {environment}",
            );
        }
        for value in ["../{environment}/", "halts/{environment}/\\n"] {
            assert_refused(
                &format!("{MINIMAL}[rollout]\nhalt_prefix = \"{value}\"\n"),
                "[rollout] halt_prefix = ",
                "expected an S3 key prefix",
            );
        }
    }

    #[test]
    fn a_metrics_textfile_must_be_an_absolute_prom_path() {
        let cases = [
            ("blog_agent.prom", "expected an absolute path"),
            ("textfile/blog_agent.prom", "expected an absolute path"),
            ("/var/lib/node_exporter/blog_agent.txt", "must end in .prom"),
            ("/var/lib/node_exporter/.prom", "must end in .prom"),
            ("/var/lib/node_exporter/blog_agent.prom/", "must end in .prom"),
            ("/var/lib/node_exporter/", "must end in .prom"),
        ];
        for (value, want) in cases {
            assert_refused(
                &format!("{MINIMAL}[metrics]\ntextfile = \"{value}\"\n"),
                &format!("[metrics] textfile = \"{value}\""),
                want,
            );
        }
    }

    #[test]
    fn syntax_errors_report_the_line() {
        let err = parse(&format!("{MINIMAL}\n[container]\nnme = \"x\"\n")).unwrap_err().to_string();
        assert!(err.contains("line 7"), "{err}");
    }

    #[test]
    fn the_container_is_bounded_by_default() {
        let b = parse(MINIMAL).unwrap().container.bounds;
        assert_eq!(b.log, LogSettings { driver: LogDriver::JsonFile, max_size: 10 << 20, max_files: 3 });
        assert!(b.no_new_privileges);
        assert_eq!(b.cap_drop, ["ALL"]);
        assert_eq!(b.cap_add, DEFAULT_CAP_ADD);
        assert_eq!(b.pids_limit, Some(256));
        assert_eq!((b.memory, b.nano_cpus, b.read_only), (None, None, false));
        assert_eq!(b.tmpfs, DEFAULT_TMPFS);
    }

    #[test]
    fn container_bounds_forms() {
        let bounds = |keys: &str| parse(&format!("{MINIMAL}[container]\n{keys}\n")).unwrap().container.bounds;
        type Holds = fn(&ContainerBounds) -> bool;
        let cases: &[(&str, Holds)] = &[
            ("log_driver = \"local\"", |b| b.log.driver == LogDriver::Local),
            ("log_max_size = \"50MB\"", |b| b.log.max_size == 50_000_000),
            ("log_max_size = \"1.5 GiB\"", |b| b.log.max_size == 3 << 29),
            ("log_max_size = 4096", |b| b.log.max_size == 4096),
            ("log_max_files = 1", |b| b.log.max_files == 1),
            ("no_new_privileges = false", |b| !b.no_new_privileges),
            ("cap_drop = []", |b| b.cap_drop.is_empty()),
            ("cap_drop = [\"net_raw\", \"CAP_MKNOD\", \"NET_RAW\"]", |b| b.cap_drop == ["MKNOD", "NET_RAW"]),
            ("cap_add = []", |b| b.cap_add.is_empty()),
            ("cap_add = [\"SETUID\", \"cap_setgid\"]", |b| b.cap_add == ["SETGID", "SETUID"]),
            ("pids_limit = 1", |b| b.pids_limit == Some(1)),
            ("pids_limit = 0", |b| b.pids_limit.is_none()),
            ("memory = \"256MiB\"", |b| b.memory == Some(256 << 20)),
            ("memory = \"1GB\"", |b| b.memory == Some(1_000_000_000)),
            ("memory = 67108864", |b| b.memory == Some(64 << 20)),
            ("cpus = 1", |b| b.nano_cpus == Some(1_000_000_000)),
            ("cpus = 0.5", |b| b.nano_cpus == Some(500_000_000)),
            ("cpus = \"1.25\"", |b| b.nano_cpus == Some(1_250_000_000)),
            ("cpus = 0.01", |b| b.nano_cpus == Some(10_000_000)),
            ("read_only = true", |b| b.read_only && b.tmpfs == DEFAULT_TMPFS),
            ("read_only = true\ntmpfs = []", |b| b.read_only && b.tmpfs.is_empty()),
            ("read_only = true\ntmpfs = [\"/var/cache/nginx/\", \"/run\", \"/run\"]", |b| {
                b.tmpfs == ["/run", "/var/cache/nginx"]
            }),
        ];
        for (keys, holds) in cases {
            let b = bounds(keys);
            assert!(holds(&b), "{keys}: {b:?}");
        }
    }

    #[test]
    fn bad_container_bounds_name_the_key_and_the_fix() {
        let cases: &[(&str, &str, &str)] = &[
            ("log_driver = \"syslog\"", "[container] log_driver = \"syslog\"", "\"json-file\""),
            ("log_max_size = \"lots\"", "[container] log_max_size = \"lots\"", "a size such as \"10MiB\""),
            ("log_max_size = \"10 MiBs\"", "[container] log_max_size = \"10 MiBs\"", "KiB"),
            ("log_max_size = -1", "[container] log_max_size = \"-1\"", "a size such as"),
            ("log_max_size = \"100B\"", "[container] log_max_size = \"100B\"", "at least 1KiB"),
            ("log_max_files = 0", "[container] log_max_files = \"0\"", "1 to 100"),
            ("log_max_files = \"3\"", "[container] log_max_files = \"3\"", "a whole number, e.g. 3"),
            ("cap_add = [\"NET_BIND\"]", "[container] cap_add[0] = \"NET_BIND\"", "NET_BIND_SERVICE"),
            ("cap_drop = [\"ALL\", \"\"]", "[container] cap_drop[1]", "capabilities(7)"),
            ("pids_limit = -3", "[container] pids_limit = \"-3\"", "e.g. 256, or 0 for no limit"),
            ("pids_limit = 1.5", "[container] pids_limit = \"1.5\"", "a whole number"),
            ("memory = \"lots\"", "[container] memory = \"lots\"", "a size such as \"512MiB\""),
            ("memory = \"1MiB\"", "[container] memory = \"1MiB\"", "less than 6MiB"),
            ("cpus = 0", "[container] cpus = \"0\"", "from 0.01 up"),
            ("cpus = -1.0", "[container] cpus = \"-1\"", "from 0.01 up"),
            ("cpus = \"two\"", "[container] cpus = \"two\"", "e.g. 1 or 0.5"),
            ("cpus = nan", "[container] cpus = \"NaN\"", "from 0.01 up"),
            ("tmpfs = [\"/run\"]", "[container] tmpfs = \"/run\"", "set read_only = true"),
            ("read_only = true\ntmpfs = [\"run\"]", "[container] tmpfs[0] = \"run\"", "an absolute path"),
            ("read_only = true\ntmpfs = [\"/a/../b\"]", "[container] tmpfs[0]", "an absolute path"),
            ("read_only = true\ntmpfs = [\"/run:exec\"]", "[container] tmpfs[0]", "an absolute path"),
            ("read_only = \"yes\"", "[container] read_only = \"yes\"", "true or false"),
            ("no_new_privileges = 1", "[container] no_new_privileges = \"1\"", "true or false"),
        ];
        for (keys, key_value, fix) in cases {
            assert_refused(&format!("{MINIMAL}[container]\n{keys}\n"), key_value, fix);
        }
    }
}
