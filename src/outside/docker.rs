//! Docker Engine API through bollard: inspect, pull, create, start, stop, rename, remove.
//!
//! The API version is negotiated, so Debian's Docker 20.10 (API 1.41) works. A 404 is an
//! answer (`None`), not an error. Every call has a timeout; a pull has its own, longer one.
//! Errors name the container or image involved.
//!
//! Reads and writes: the Engine's containers and images. Decides nothing: what runs is the
//! pass's ([`ContainerInfo::observed`], its view of a container, is written in
//! [`crate::pass::snapshot`] for that reason).

use std::collections::HashMap;
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigLogConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, EventsOptions, ListContainersOptions, ListImagesOptions, LogsOptions,
    RemoveContainerOptions, RemoveImageOptions, RenameContainerOptions, StopContainerOptions,
};
use bollard::Docker;
use futures_util::{Stream, StreamExt};

use crate::config::ContainerBounds;
use crate::outside::registry::RegistryCredentials;
use crate::spec::{ContainerSpec, LABEL_MANAGED};

/// Bound on a single non-pull API call. Docker answers these in milliseconds; a stop waits for
/// the container's grace period, which is below this.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("Docker Engine unreachable ({detail}): is dockerd running and is the socket (DOCKER_HOST or /var/run/docker.sock) accessible?")]
    Unreachable { detail: String },
    #[error("Docker {op} {target}: {detail}")]
    Api { op: &'static str, target: String, detail: String },
    #[error("Docker {op} {target}: no answer within {secs} s")]
    Timeout { op: &'static str, target: String, secs: u64 },
    #[error("pulling {image}: {detail}")]
    Pull { image: String, detail: String },
    /// Docker's data root filled up during a pull ("no space left on device" in its stream).
    #[error("pulling {image}: Docker ran out of disk space: {detail}")]
    NoSpace { image: String, detail: String },
    /// The container is gone (removed by hand, or by a concurrent `docker rm -f`).
    #[error("Docker {op} {target}: no such container")]
    NotFound { op: &'static str, target: String },
}

impl EngineError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, EngineError::NotFound { .. })
    }

    /// Docker's runtime could not run the image's command at all: runc's "unable to start
    /// container process: exec: ..." (the entrypoint is missing from the image, or not on its
    /// `PATH`). That is the image's fault and fails the same way on every host, unlike a host
    /// port taken or a daemon in trouble, so a deploy counts it as the release failing.
    pub fn is_command_unrunnable(&self) -> bool {
        let EngineError::Api { op: "start container", detail, .. } = self else { return false };
        detail.contains("unable to start container process: exec")
            || (detail.contains("executable file") && detail.contains("not found"))
    }
}

/// What a container is created for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs the site: restart policy, and the host ports when the spec publishes them.
    Serving,
    /// A throwaway copy of a new version, probed over the bridge before cut-over.
    Candidate,
}

impl Role {
    /// The value of the role label.
    pub fn label(self) -> &'static str {
        match self {
            Role::Serving => "serving",
            Role::Candidate => "candidate",
        }
    }
}

/// A container as Docker reports it.
#[derive(Debug, Clone)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub running: bool,
    pub status: String,
    pub exit_code: Option<i64>,
    pub labels: HashMap<String, String>,
    /// Address on the default bridge network, for probing a container with no published port.
    pub ip: Option<String>,
    pub started_at: Option<String>,
    /// Restarts done by Docker's restart policy; a climbing count is a crash loop.
    pub restart_count: i64,
    /// The kernel's OOM killer ended its last run (Docker's `State.OOMKilled`).
    pub oom_killed: bool,
}

/// A container's bounds as Docker reports them (`HostConfig`): what `status` shows, whatever
/// the configuration now says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedBounds {
    pub log_driver: String,
    /// The log driver's options (`max-size`, `max-file`).
    pub log_options: std::collections::BTreeMap<String, String>,
    pub security_opt: Vec<String>,
    pub cap_drop: Vec<String>,
    pub cap_add: Vec<String>,
    /// `None`: no limit (Docker says 0, -1 or nothing).
    pub pids_limit: Option<i64>,
    pub memory: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub read_only: bool,
    pub tmpfs: Vec<String>,
}

impl AppliedBounds {
    fn from_host_config(h: HostConfig) -> AppliedBounds {
        let positive = |n: Option<i64>| n.filter(|n| *n > 0);
        let (log_driver, log_options) = match h.log_config {
            Some(l) => (l.typ.unwrap_or_default(), l.config.unwrap_or_default().into_iter().collect()),
            None => Default::default(),
        };
        let mut tmpfs: Vec<String> = h.tmpfs.unwrap_or_default().into_keys().collect();
        tmpfs.sort();
        AppliedBounds {
            log_driver,
            log_options,
            security_opt: h.security_opt.unwrap_or_default(),
            cap_drop: h.cap_drop.unwrap_or_default(),
            cap_add: h.cap_add.unwrap_or_default(),
            pids_limit: positive(h.pids_limit),
            memory: positive(h.memory),
            nano_cpus: positive(h.nano_cpus),
            read_only: h.readonly_rootfs.unwrap_or(false),
            tmpfs,
        }
    }
}

impl ContainerInfo {
    /// How it last ended, as evidence for the judgement ([`crate::fleet::verdict`]).
    pub fn exit(&self) -> crate::outside::health::Exit {
        crate::outside::health::Exit { code: self.exit_code, oom_killed: self.oom_killed }
    }

    /// Carries blog-agent's `managed` label: ours to replace, restore or remove.
    pub fn is_managed(&self) -> bool {
        self.labels.get(LABEL_MANAGED).is_some_and(|v| v == "true")
    }
}

/// An image present on the host.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub id: String,
    /// `sha256:...` manifest digest from the registry, when Docker knows it.
    pub digest: Option<String>,
}

/// A connected Docker Engine.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    /// Draw pull progress on stderr (a person at a terminal ran `sync`).
    show_progress: bool,
    /// Told of every item of a pull's stream (the launch gate's proof that a pull is moving).
    activity: Option<crate::outside::pull_progress::PullActivity>,
}

/// Mount options of each tmpfs of a read-only container: room for pid files, sockets and locks
/// (64 MiB), nothing executable. It is memory, counted in the container's limit, so it is small.
const TMPFS_OPTIONS: &str = "rw,noexec,nosuid,nodev,size=64m";

/// The host config fields that bound the container ([`ContainerBounds`]).
fn bounded_host_config(b: &ContainerBounds) -> HostConfig {
    let log_options = HashMap::from([
        // In bytes: Docker reads a unit suffix as a power of 1000 in one driver and of 1024 in
        // another, a bare number as bytes in both.
        ("max-size".to_owned(), b.log.max_size.to_string()),
        ("max-file".to_owned(), b.log.max_files.to_string()),
    ]);
    HostConfig {
        log_config: Some(HostConfigLogConfig { typ: Some(b.log.driver.to_string()), config: Some(log_options) }),
        security_opt: b.no_new_privileges.then(|| vec!["no-new-privileges".to_owned()]),
        cap_drop: Some(b.cap_drop.clone()),
        cap_add: Some(b.cap_add.clone()),
        pids_limit: b.pids_limit.map(i64::from),
        memory: b.memory.and_then(|m| i64::try_from(m).ok()),
        nano_cpus: b.nano_cpus.and_then(|n| i64::try_from(n).ok()),
        readonly_rootfs: Some(b.read_only),
        tmpfs: b.read_only.then(|| b.tmpfs.iter().map(|p| (p.clone(), TMPFS_OPTIONS.to_owned())).collect()),
        ..Default::default()
    }
}

/// Registry credentials in the form the Engine API takes (sent as a header, never logged).
fn docker_auth(registry: &str, creds: &RegistryCredentials) -> DockerCredentials {
    DockerCredentials {
        username: Some(creds.username.clone()),
        password: Some(creds.password.expose().to_owned()),
        serveraddress: Some(registry.to_owned()),
        ..Default::default()
    }
}

fn is_not_found(e: &BollardError) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code: 404, .. })
}

fn detail(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError { status_code, message } => {
            format!("HTTP {status_code}: {}", message.trim())
        }
        other => other.to_string(),
    }
}

async fn bounded<T>(
    op: &'static str,
    target: &str,
    fut: impl std::future::Future<Output = Result<T, BollardError>>,
) -> Result<Result<T, BollardError>, EngineError> {
    tokio::time::timeout(CALL_TIMEOUT, fut).await.map_err(|_| EngineError::Timeout {
        op,
        target: target.to_owned(),
        secs: CALL_TIMEOUT.as_secs(),
    })
}

/// A pull's error: a full disk (ENOSPC, as Docker words it) is told apart, because no retry
/// helps until space is freed.
fn pull_failed(image: &str, detail: String) -> EngineError {
    if detail.to_ascii_lowercase().contains("no space left on device") {
        EngineError::NoSpace { image: image.to_owned(), detail }
    } else {
        EngineError::Pull { image: image.to_owned(), detail }
    }
}

fn api<'a>(op: &'static str, target: &'a str) -> impl FnOnce(BollardError) -> EngineError + 'a {
    move |e| EngineError::Api { op, target: target.to_owned(), detail: detail(&e) }
}

impl Engine {
    /// Connects to `DOCKER_HOST` (unix) or the default socket and negotiates the API version.
    pub async fn connect() -> Result<Engine, EngineError> {
        let unreachable = |e: BollardError| EngineError::Unreachable { detail: e.to_string() };
        let docker = Docker::connect_with_local_defaults().map_err(unreachable)?;
        let docker = tokio::time::timeout(Duration::from_secs(10), docker.negotiate_version())
            .await
            .map_err(|_| EngineError::Unreachable { detail: "no answer within 10 s".into() })?
            .map_err(unreachable)?;
        Ok(Engine { docker, show_progress: false, activity: None })
    }

    /// Asks the daemon to look `reference` up in its registry with `creds` (a manifest request,
    /// no pull). Returns the manifest digest.
    pub async fn registry_has(
        &self,
        reference: &str,
        registry: &str,
        creds: &RegistryCredentials,
    ) -> Result<String, EngineError> {
        let auth = docker_auth(registry, creds);
        bounded("inspect registry image", reference, self.docker.inspect_registry_image(reference, Some(auth)))
            .await?
            .map(|d| d.descriptor.digest.unwrap_or_default())
            .map_err(api("inspect registry image", reference))
    }

    /// Notes every pull stream item in `activity` from now on.
    pub fn with_pull_activity(mut self, activity: crate::outside::pull_progress::PullActivity) -> Engine {
        self.activity = Some(activity);
        self
    }

    /// Shows pull progress on stderr from now on.
    pub fn with_progress(mut self, show: bool) -> Engine {
        self.show_progress = show;
        self
    }

    /// Cheap liveness check (`GET /_ping`).
    pub async fn ping(&self) -> Result<(), EngineError> {
        bounded("ping", "daemon", self.docker.ping())
            .await?
            .map(drop)
            .map_err(|e| EngineError::Unreachable { detail: detail(&e) })
    }

    /// Whether dockerd runs with `live-restore` (`GET /info`): containers then keep running
    /// while the daemon itself stops, restarts or is upgraded.
    pub async fn live_restore(&self) -> Result<bool, EngineError> {
        bounded("info", "daemon", self.docker.info())
            .await?
            .map(|info| info.live_restore_enabled.unwrap_or(false))
            .map_err(api("info", "daemon"))
    }

    /// Where dockerd keeps images and containers (`GET /info` `DockerRootDir`), whose free
    /// space a pull needs ([`crate::outside::disk`]).
    pub async fn data_root(&self) -> Result<std::path::PathBuf, EngineError> {
        bounded("info", "daemon", self.docker.info())
            .await?
            .map_err(api("info", "daemon"))?
            .docker_root_dir
            .filter(|d| !d.is_empty())
            .map(std::path::PathBuf::from)
            .ok_or_else(|| EngineError::Api { op: "info", target: "daemon".into(), detail: "no DockerRootDir".into() })
    }

    /// The negotiated API version, for diagnostics.
    pub fn api_version(&self) -> String {
        self.docker.client_version().to_string()
    }

    /// The container whose name is exactly `name_or_id`, or whose full ID it is. Docker's
    /// inspect also matches an ID *prefix* when no name matches, so a container named `abc123`
    /// that does not exist would otherwise resolve to someone else's container: such a match
    /// is treated as absent.
    pub async fn container(&self, name_or_id: &str) -> Result<Option<ContainerInfo>, EngineError> {
        let name = name_or_id;
        match bounded("inspect container", name, self.docker.inspect_container(name, None)).await? {
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(api("inspect container", name)(e)),
            Ok(c)
                if c.id.as_deref().is_none_or(|id| id != name)
                    && c.name.as_deref().map(|n| n.trim_start_matches('/')) != Some(name) =>
            {
                Ok(None)
            }
            Ok(c) => {
                let state = c.state.unwrap_or_default();
                let ip = c
                    .network_settings
                    .and_then(|n| n.networks)
                    .and_then(|nets| nets.values().find_map(|n| n.ip_address.clone().filter(|ip| !ip.is_empty())));
                Ok(Some(ContainerInfo {
                    id: c.id.unwrap_or_default(),
                    name: c.name.unwrap_or_default().trim_start_matches('/').to_owned(),
                    running: state.running.unwrap_or(false),
                    status: state.status.map(|s| s.to_string()).unwrap_or_default(),
                    exit_code: state.exit_code,
                    labels: c.config.and_then(|c| c.labels).unwrap_or_default(),
                    ip,
                    started_at: state.started_at,
                    restart_count: c.restart_count.unwrap_or(0),
                    oom_killed: state.oom_killed.unwrap_or(false),
                }))
            }
        }
    }

    /// The bounds container `name` runs within, as Docker has them; `None` when there is no
    /// such container.
    pub async fn bounds(&self, name: &str) -> Result<Option<AppliedBounds>, EngineError> {
        match bounded("inspect container", name, self.docker.inspect_container(name, None)).await? {
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(api("inspect container", name)(e)),
            Ok(c) => Ok(Some(c.host_config.map(AppliedBounds::from_host_config).unwrap_or_default())),
        }
    }

    /// The local image for `reference`, with its digest from the repository `repository`.
    pub async fn image(&self, reference: &str, repository: &str) -> Result<Option<ImageInfo>, EngineError> {
        match bounded("inspect image", reference, self.docker.inspect_image(reference)).await? {
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(api("inspect image", reference)(e)),
            Ok(img) => {
                let prefix = format!("{repository}@");
                let digest = img
                    .repo_digests
                    .unwrap_or_default()
                    .into_iter()
                    .find_map(|d| d.strip_prefix(&prefix).map(str::to_owned));
                Ok(Some(ImageInfo { id: img.id.unwrap_or_default(), digest }))
            }
        }
    }

    /// Pulls `repository:tag`, or `repository@tag` when `tag` is a digest (`sha256:...`), with
    /// registry credentials. Each stream item can carry an error (bad credentials, unknown tag,
    /// registry gone mid-pull); the first one ends the pull.
    pub async fn pull(
        &self,
        repository: &str,
        tag: &str,
        registry: &str,
        creds: &RegistryCredentials,
        timeout: Duration,
    ) -> Result<ImageInfo, EngineError> {
        let reference = match tag.starts_with("sha256:") {
            true => format!("{repository}@{tag}"),
            false => format!("{repository}:{tag}"),
        };
        let auth = docker_auth(registry, creds);
        let options = CreateImageOptions {
            from_image: Some(repository.to_owned()),
            tag: Some(tag.to_owned()),
            ..Default::default()
        };
        let pull = async {
            let _running = self.activity.as_ref().map(|a| a.begin());
            let mut stream = self.docker.create_image(Some(options), None, Some(auth));
            let mut progress = self.show_progress.then(crate::outside::pull_progress::PullProgress::default);
            while let Some(item) = stream.next().await {
                match item {
                    Ok(info) => {
                        if let Some(activity) = &self.activity {
                            activity.touch();
                        }
                        if let Some(err) = info.error_detail.and_then(|d| d.message) {
                            return Err(pull_failed(&reference, err));
                        }
                        if let (Some(p), Some(status)) = (progress.as_mut(), info.status.as_deref()) {
                            let (cur, tot) = info.progress_detail.map(|d| (d.current, d.total)).unwrap_or_default();
                            p.update(info.id.as_deref(), status, cur, tot);
                            p.draw(&reference);
                        }
                    }
                    Err(e) => return Err(pull_failed(&reference, detail(&e))),
                }
            }
            if let Some(p) = progress.as_mut() {
                p.finish(&reference);
            }
            Ok(())
        };
        tokio::time::timeout(timeout, pull).await.map_err(|_| EngineError::Pull {
            image: reference.clone(),
            detail: format!("not finished within {} s ([image] pull_timeout)", timeout.as_secs()),
        })??;
        self.image(&reference, repository).await?.ok_or_else(|| EngineError::Pull {
            image: reference.clone(),
            detail: "pull reported success but the image is not present".into(),
        })
    }

    /// Tags the local image `source` as `repository:tag` (moving the tag if it named another
    /// image).
    pub async fn tag(&self, source: &str, repository: &str, tag: &str) -> Result<(), EngineError> {
        let options =
            bollard::query_parameters::TagImageOptions { repo: Some(repository.to_owned()), tag: Some(tag.to_owned()) };
        bounded("tag image", source, self.docker.tag_image(source, Some(options)))
            .await?
            .map_err(api("tag image", source))
    }

    /// Creates a container of `spec` named `name`. A serving container gets the restart policy
    /// and, when the spec publishes them, the host ports; a candidate gets neither (its ports
    /// would collide with the serving container's, and it is thrown away).
    pub async fn create(
        &self,
        name: &str,
        spec: &ContainerSpec,
        digest: &str,
        role: Role,
    ) -> Result<String, EngineError> {
        let serving = role == Role::Serving;
        let publish = serving && spec.publish;
        let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        if publish {
            for p in &spec.ports {
                port_bindings
                    .entry(format!("{}/tcp", p.container_port))
                    .or_default()
                    .get_or_insert_with(Vec::new)
                    .push(PortBinding {
                        host_ip: p.host_ip.map(|ip| ip.to_string()),
                        host_port: Some(p.host_port.to_string()),
                    });
            }
        }
        let mut exposed: Vec<String> = spec.ports.iter().map(|p| format!("{}/tcp", p.container_port)).collect();
        exposed.dedup();
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            env: Some(spec.variables_list()),
            labels: Some(spec.container_labels(digest, role.label())),
            // The Engine ignores a port binding unless the port is also exposed.
            exposed_ports: Some(exposed),
            host_config: Some(HostConfig {
                port_bindings: publish.then_some(port_bindings),
                restart_policy: Some(RestartPolicy {
                    name: Some(if serving { RestartPolicyNameEnum::UNLESS_STOPPED } else { RestartPolicyNameEnum::NO }),
                    maximum_retry_count: None,
                }),
                // The candidate runs within the same bounds: a version that cannot serve within
                // them is refused before cut-over, not found out after it.
                ..bounded_host_config(&spec.bounds)
            }),
            ..Default::default()
        };
        let options = CreateContainerOptions { name: Some(name.to_owned()), ..Default::default() };
        let created = bounded("create container", name, self.docker.create_container(Some(options), body))
            .await?
            .map_err(api("create container", name))?;
        Ok(created.id)
    }

    pub async fn start(&self, id: &str) -> Result<(), EngineError> {
        match bounded("start container", id, self.docker.start_container(id, None)).await? {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Err(EngineError::NotFound { op: "start container", target: id.to_owned() }),
            Err(e) => Err(api("start container", id)(e)),
        }
    }

    /// Stops with a grace period. Stopping a stopped or missing container is not an error.
    pub async fn stop(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        // Docker takes whole seconds; rounding down would turn a 0.5 s grace into an
        // immediate SIGKILL.
        let secs = grace.as_secs_f64().ceil() as i32;
        let options = StopContainerOptions { t: Some(secs), signal: None };
        // Docker itself waits out the grace period before it answers.
        let stop = tokio::time::timeout(grace + CALL_TIMEOUT, self.docker.stop_container(id, Some(options)));
        let result = stop.await.map_err(|_| EngineError::Timeout {
            op: "stop container",
            target: id.to_owned(),
            secs: (grace + CALL_TIMEOUT).as_secs(),
        })?;
        match result {
            Ok(()) => Ok(()),
            Err(BollardError::DockerResponseServerError { status_code: 304 | 404, .. }) => Ok(()),
            Err(e) => Err(api("stop container", id)(e)),
        }
    }

    /// Force-removes; a container already gone is not an error.
    pub async fn remove(&self, id: &str) -> Result<(), EngineError> {
        let options = RemoveContainerOptions { force: true, ..Default::default() };
        match bounded("remove container", id, self.docker.remove_container(id, Some(options))).await? {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(api("remove container", id)(e)),
        }
    }

    pub async fn rename(&self, id: &str, new_name: &str) -> Result<(), EngineError> {
        let options = RenameContainerOptions { name: new_name.to_owned() };
        match bounded("rename container", id, self.docker.rename_container(id, options)).await? {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) => Err(EngineError::NotFound { op: "rename container", target: id.to_owned() }),
            Err(e) => Err(api("rename container", id)(e)),
        }
    }
}

/// An image of the managed repository on disk.
#[derive(Debug, Clone)]
pub struct RepoImage {
    pub id: String,
    pub tags: Vec<String>,
    pub created: i64,
}

impl Engine {
    /// Lifecycle events (create, start, die, stop, destroy, rename) of the container named
    /// exactly `name` (Docker's own name filter matches prefixes, so `blog` would also match
    /// `blog-candidate`: those are dropped here). Yields the action. The stream ends or errors
    /// when dockerd goes away; the caller re-subscribes.
    pub fn container_events(&self, name: &str) -> impl Stream<Item = Result<String, EngineError>> + use<> {
        let exact = name.to_owned();
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("container".to_owned(), vec![name.to_owned()]),
            (
                "event".to_owned(),
                ["create", "start", "die", "stop", "destroy", "rename"].iter().map(|s| s.to_string()).collect(),
            ),
        ]);
        self.docker.events(Some(EventsOptions { filters: Some(filters), ..Default::default() })).filter_map(
            move |item| {
                let keep = match &item {
                    Ok(event) => {
                        let attrs = event.actor.as_ref().and_then(|a| a.attributes.as_ref());
                        let named =
                            |key: &str| attrs.and_then(|a| a.get(key)).map(|n| n.trim_start_matches('/') == exact);
                        named("name").unwrap_or(false) || named("oldName").unwrap_or(false)
                    }
                    Err(_) => true,
                };
                let item = item
                    .map(|event| event.action.unwrap_or_default())
                    .map_err(|e| EngineError::Unreachable { detail: format!("event stream: {}", detail(&e)) });
                std::future::ready(keep.then_some(item))
            },
        )
    }

    /// What `container` writes to stdout from the second of `since` on (Docker counts whole
    /// seconds), in the pieces Docker sends (usually one line each). Follows until the
    /// container stops, when the stream ends; an error when dockerd goes away. Unbounded in
    /// time by design: the caller races it.
    pub fn follow_stdout(
        &self,
        container: &str,
        since: std::time::SystemTime,
    ) -> impl Stream<Item = Result<Vec<u8>, EngineError>> + use<> {
        let target = container.to_owned();
        let since = since.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let options = LogsOptions {
            follow: true,
            stdout: true,
            since: i32::try_from(since).unwrap_or(i32::MAX),
            ..Default::default()
        };
        self.docker.logs(container, Some(options)).filter_map(move |item| {
            let item = match item {
                Ok(LogOutput::StdOut { message }) => Some(Ok(message.to_vec())),
                Ok(_) => None,
                Err(e) if is_not_found(&e) => {
                    Some(Err(EngineError::NotFound { op: "follow logs", target: target.clone() }))
                }
                Err(e) => Some(Err(api("follow logs", &target)(e))),
            };
            std::future::ready(item)
        })
    }

    /// Images tagged in `repository`, newest first.
    pub async fn repo_images(&self, repository: &str) -> Result<Vec<RepoImage>, EngineError> {
        let filters = HashMap::from([("reference".to_owned(), vec![format!("{repository}:*")])]);
        let options = ListImagesOptions { filters: Some(filters), ..Default::default() };
        let mut images: Vec<RepoImage> = bounded("list images", repository, self.docker.list_images(Some(options)))
            .await?
            .map_err(api("list images", repository))?
            .into_iter()
            .map(|i| RepoImage { id: i.id, tags: i.repo_tags, created: i.created })
            .collect();
        images.sort_by_key(|i| std::cmp::Reverse(i.created));
        Ok(images)
    }

    /// Image IDs used by any container, running or not.
    pub async fn images_in_use(&self) -> Result<Vec<String>, EngineError> {
        let options = ListContainersOptions { all: true, ..Default::default() };
        let containers = bounded("list containers", "all", self.docker.list_containers(Some(options)))
            .await?
            .map_err(api("list containers", "all"))?;
        Ok(containers.into_iter().filter_map(|c| c.image_id).collect())
    }

    /// Removes an image by ID without force: Docker refuses if a container uses it.
    pub async fn remove_image(&self, id: &str) -> Result<(), EngineError> {
        let options = RemoveImageOptions { force: false, noprune: false, ..Default::default() };
        match bounded("remove image", id, self.docker.remove_image(id, Some(options), None)).await? {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(api("remove image", id)(e)),
        }
    }
}

impl Engine {
    /// The last `lines` lines the container wrote (stdout and stderr), oldest first: what a
    /// retired release said before it went, for the journal. Best effort: empty when Docker
    /// cannot give them (the log driver keeps none, the container is gone).
    pub async fn logs_tail(&self, id: &str, lines: usize) -> Vec<String> {
        let options = bollard::query_parameters::LogsOptions {
            stdout: true,
            stderr: true,
            tail: lines.to_string(),
            ..Default::default()
        };
        let read = self.docker.logs(id, Some(options)).collect::<Vec<_>>();
        let Ok(items) = tokio::time::timeout(CALL_TIMEOUT, read).await else { return Vec::new() };
        let text: String = items.into_iter().filter_map(Result::ok).map(|item| item.to_string()).collect();
        let all: Vec<String> = text.lines().map(str::to_owned).collect();
        all[all.len().saturating_sub(lines)..].to_vec()
    }
}

impl Engine {
    /// The ends of the container named exactly `name`: `die` with the exit code Docker gives
    /// it (an inspect after a restart policy has started it again no longer has it), `oom`
    /// (the kernel's OOM killer hit it; a `die` follows) and `destroy`. The stream ends or
    /// errors when dockerd goes away.
    pub fn container_ends(&self, name: &str) -> impl Stream<Item = Result<(String, Option<i64>), EngineError>> + use<> {
        let exact = name.to_owned();
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("container".to_owned(), vec![name.to_owned()]),
            ("event".to_owned(), ["die", "oom", "destroy"].iter().map(|s| s.to_string()).collect()),
        ]);
        self.docker.events(Some(EventsOptions { filters: Some(filters), ..Default::default() })).filter_map(
            move |item| {
                let item = match item {
                    Ok(event) => {
                        let attrs = event.actor.as_ref().and_then(|a| a.attributes.as_ref());
                        let named =
                            attrs.and_then(|a| a.get("name")).is_some_and(|n| n.trim_start_matches('/') == exact);
                        let code = attrs.and_then(|a| a.get("exitCode")).and_then(|c| c.parse().ok());
                        named.then(|| Ok((event.action.unwrap_or_default(), code)))
                    }
                    Err(e) => Some(Err(EngineError::Unreachable { detail: format!("event stream: {}", detail(&e)) })),
                };
                std::future::ready(item)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::EngineError;

    /// A full disk is told apart from other pull failures: no retry helps until space is freed.
    #[test]
    fn a_pull_that_fills_the_disk_is_a_no_space_error() {
        let full = [
            "write /var/lib/docker/tmp/GetImageBlob123: no space left on device",
            "failed to register layer: Error processing tar file(exit status 1): write /x: No space left on device",
        ];
        for detail in full {
            assert!(matches!(super::pull_failed("r/b:1", detail.into()), EngineError::NoSpace { .. }), "{detail}");
        }
        let other = super::pull_failed("r/b:1", "manifest unknown".into());
        assert!(matches!(other, EngineError::Pull { .. }), "{other}");
        let text = super::pull_failed("r/b:1", full[0].into()).to_string();
        assert!(text.starts_with("pulling r/b:1: Docker ran out of disk space: "), "{text}");
    }

    fn start_failed(detail: &str) -> EngineError {
        EngineError::Api { op: "start container", target: "c".into(), detail: detail.into() }
    }

    /// What Docker 20.10 with runc answers, word for word, against what it says when the
    /// host is at fault.
    #[test]
    fn a_command_the_image_lacks_is_told_apart_from_a_host_problem() {
        let unrunnable = [
            r#"failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: "/nope": stat /nope: no such file or directory: unknown"#,
            r#"OCI runtime create failed: container_linux.go:380: starting container process caused: exec: "httpd": executable file not found in $PATH: unknown"#,
        ];
        for detail in unrunnable {
            assert!(start_failed(detail).is_command_unrunnable(), "{detail}");
        }
        let host_problems = [
            "driver failed programming external connectivity on endpoint blog (abc): Bind for 0.0.0.0:8080 failed: port is already allocated",
            "driver failed programming external connectivity on endpoint blog (abc): Error starting userland proxy: listen tcp4 0.0.0.0:8080: bind: address already in use",
            "failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: error during container init: error mounting \"/srv\" to rootfs: no such file or directory: unknown",
        ];
        for detail in host_problems {
            assert!(!start_failed(detail).is_command_unrunnable(), "{detail}");
        }
        // Only a start says so: the same words from another call are not the image's fault.
        let create = EngineError::Api {
            op: "create container",
            target: "c".into(),
            detail: "unable to start container process: exec: x".into(),
        };
        assert!(!create.is_command_unrunnable());
        assert!(!EngineError::Timeout { op: "start container", target: "c".into(), secs: 30 }.is_command_unrunnable());
    }

    #[test]
    fn the_host_config_carries_every_bound() {
        use crate::config::{ContainerBounds, LogDriver, LogSettings};
        let base = ContainerBounds {
            log: LogSettings { driver: LogDriver::JsonFile, max_size: 10 << 20, max_files: 3 },
            no_new_privileges: true,
            cap_drop: vec!["ALL".into()],
            cap_add: vec!["SETUID".into()],
            pids_limit: Some(256),
            memory: None,
            nano_cpus: None,
            read_only: false,
            tmpfs: vec!["/run".into()],
        };
        let h = super::bounded_host_config(&base);
        let log = h.log_config.unwrap();
        assert_eq!(log.typ.as_deref(), Some("json-file"));
        let options = log.config.unwrap();
        assert_eq!((options["max-size"].as_str(), options["max-file"].as_str()), ("10485760", "3"));
        assert_eq!(h.security_opt, Some(vec!["no-new-privileges".to_owned()]));
        assert_eq!((h.cap_drop, h.cap_add), (Some(vec!["ALL".to_owned()]), Some(vec!["SETUID".to_owned()])));
        assert_eq!((h.pids_limit, h.memory, h.nano_cpus), (Some(256), None, None));
        // tmpfs paths exist only on a read-only root.
        assert_eq!((h.readonly_rootfs, h.tmpfs), (Some(false), None));

        let set = ContainerBounds {
            no_new_privileges: false,
            pids_limit: None,
            memory: Some(64 << 20),
            nano_cpus: Some(500_000_000),
            read_only: true,
            ..base
        };
        let h = super::bounded_host_config(&set);
        assert_eq!(h.security_opt, None);
        assert_eq!((h.pids_limit, h.memory, h.nano_cpus), (None, Some(64 << 20), Some(500_000_000)));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.tmpfs.unwrap()["/run"], super::TMPFS_OPTIONS);
    }
}
