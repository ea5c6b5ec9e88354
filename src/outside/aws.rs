//! Shared AWS SDK setup: credentials from the standard provider chain, endpoints from the
//! standard `AWS_ENDPOINT_URL*` variables, the timeouts and retries every AWS call in the agent
//! runs under, and the region.
//!
//! Retries have one owner. The SDK makes one attempt per call; every call goes through its
//! service's [`Regional::send`], which, once the service pushed back (throttling such as S3
//! `SlowDown` or ECR `ThrottlingException`, HTTP 429 or 5xx: KMS and STS trouble reaches the
//! agent this way too), sends nothing to it before a pause ([`Pushback`]: doubling from 2 s to
//! 5 minutes, full jitter, seeded per host). In `run` a call during the pause fails at once
//! ([`HeldBack`]) and the loop goes on serving what it serves; a one-off command (`sync`,
//! `publish`, `check`...) waits the pause out instead, for at most [`ONE_OFF_ATTEMPTS`]
//! attempts, then fails with the service's own error.
//!
//! The region is resolved lazily, on the first S3 or ECR call, and again on every later call
//! until it is known: from `AWS_REGION` / `AWS_DEFAULT_REGION` / the AWS config profile, then
//! from the ECR repository host (`<account>.dkr.ecr.<region>.amazonaws.com`), then from
//! instance metadata (`/latest/meta-data/placement/region`) with retries and backoff. While
//! none is known, a call fails with [`RegionUnknown`]; the next one tries again. (A region
//! resolved once at start would leave a host whose metadata service was slow at boot unable
//! to reach S3 or ECR for good.)

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_config::environment::EnvironmentVariableRegionProvider;
use aws_config::meta::region::RegionProviderChain;
use aws_config::profile::ProfileFileRegionProvider;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, ConfigLoader, Region, SdkConfig};
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use tokio::sync::OnceCell;

use crate::outside::imds::Imds;
use crate::runtime::backoff::{Backoff, Pushback, PUSHBACK_CAP, PUSHBACK_FIRST};

/// Instance metadata is asked this many times per resolution before the call at hand fails;
/// the next S3 or ECR call asks again.
const IMDS_REGION_ATTEMPTS: u32 = 3;
/// First pause between two instance metadata attempts; it doubles.
const IMDS_REGION_BACKOFF: Duration = Duration::from_millis(500);

/// Attempts of one call in a one-off command, the pauses between them set by the service's
/// [`Pushback`] (at most 2 s, then 4 s): a command an operator or CI runs fails within seconds
/// with the service's own error rather than hanging on a throttle.
pub const ONE_OFF_ATTEMPTS: u32 = 3;

/// Set by `run`: calls held back by a push-back fail at once (the loop retries the pass)
/// instead of waiting. One process runs one command, so a process-wide switch is enough.
static LOOP_RETRIES: AtomicBool = AtomicBool::new(false);

/// Makes every call of this process fail at once while its service's push-back pause lasts:
/// the reconcile loop owns the retry (`run` calls this before its first pass).
pub fn loop_owns_retries() {
    LOOP_RETRIES.store(true, Ordering::Relaxed);
}

/// The AWS error codes that mean "slow down" (the SDK's own list, aws-runtime's
/// `THROTTLING_ERRORS`).
const THROTTLING_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "TransactionInProgressException",
    "RequestLimitExceeded",
    "BandwidthLimitExceeded",
    "LimitExceededException",
    "RequestThrottled",
    "SlowDown",
    "PriorRequestNotComplete",
    "EC2ThrottledException",
];

/// Why a call's answer is a push-back: its throttling code, or `HTTP <status>` for a 429 or
/// 5xx. `None` for anything else (success, a refusal, a network failure: the loop's ordinary
/// retry covers those).
pub fn pushback_cause<O, E: ProvideErrorMetadata>(result: &Result<O, SdkError<E, HttpResponse>>) -> Option<String> {
    let err = result.as_ref().err()?;
    let status = err.raw_response().map(|r| r.status().as_u16());
    let code = err.as_service_error().and_then(|e| e.code());
    // KMS's own throttling reaches S3's readers as `KMS.ThrottlingException`.
    let throttling = |code: &str| THROTTLING_CODES.contains(&code.strip_prefix("KMS.").unwrap_or(code));
    match (code, status) {
        (Some(code), _) if throttling(code) => Some(code.to_owned()),
        (code, Some(status)) if status == 429 || status >= 500 => {
            Some(code.map(str::to_owned).unwrap_or_else(|| format!("HTTP {status}")))
        }
        _ => None,
    }
}

/// A call not sent because its service pushed back and the pause is not over.
#[derive(Debug, Clone, thiserror::Error)]
#[error("not sent: {service} answered {cause} {in_a_row} time(s) in a row; this host's next {service} call waits {wait_secs:.1} s more")]
pub struct HeldBack {
    pub service: &'static str,
    pub cause: String,
    pub in_a_row: u32,
    pub wait_secs: f64,
}

/// One service's push-back state and the last cause, shared by every call to it.
struct Gate {
    pushback: Option<Pushback>,
    cause: String,
    /// First and longest nominal pause ([`PUSHBACK_FIRST`], [`PUSHBACK_CAP`]; shorter in tests).
    pauses: (Duration, Duration),
}

impl Default for Gate {
    fn default() -> Gate {
        Gate { pushback: None, cause: String::new(), pauses: (PUSHBACK_FIRST, PUSHBACK_CAP) }
    }
}

/// The loader every AWS configuration starts from.
///
/// Timeouts: S3 and ECR answer in well under a second; 3 s to connect and 10 s per attempt
/// cover a congested network without letting a dead endpoint hang a sync. One attempt per
/// call: retries are [`Regional::send`]'s (see the module's doc).
fn loader() -> ConfigLoader {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(10))
        .operation_timeout(Duration::from_secs(30))
        .build();
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts)
        .retry_config(RetryConfig::standard().with_max_attempts(1))
}

/// No region could be found yet.
#[derive(Debug, Clone, thiserror::Error)]
#[error("AWS region unknown: set AWS_REGION, or instance metadata did not give it ({detail})")]
pub struct RegionUnknown {
    pub detail: String,
}

/// The AWS setup the S3 and ECR clients share: the SDK configuration (credentials, endpoints,
/// timeouts) and the region, resolved on first use and cached once known.
pub struct Aws {
    /// As loaded; its region is the configured one (environment or profile), if any.
    base: SdkConfig,
    /// The region named by the ECR repository host, if it is one.
    repository_region: Option<Region>,
    imds: Imds,
    region: OnceCell<Region>,
    /// Seeds the push-back jitter: this host's identity, resolved on the first push-back.
    identity: OnceCell<String>,
}

impl Aws {
    /// Loads the SDK configuration without asking instance metadata for the region (that is
    /// done by [`Aws::region`], on first use). `repository_host` is `[image] repository`'s
    /// registry host: an ECR host names its region.
    pub async fn load(repository_host: &str) -> Arc<Aws> {
        let configured = RegionProviderChain::first_try(EnvironmentVariableRegionProvider::new())
            .or_else(ProfileFileRegionProvider::new());
        let base = loader().region(configured).load().await;
        Arc::new(Aws::new(base, ecr_host_region(repository_host), Imds::new()))
    }

    /// An already loaded configuration; when it has no region, [`Aws::region`] asks instance
    /// metadata.
    pub fn from_sdk(sdk: &SdkConfig) -> Arc<Aws> {
        Arc::new(Aws::new(sdk.clone(), None, Imds::new()))
    }

    fn new(base: SdkConfig, repository_region: Option<Region>, imds: Imds) -> Aws {
        Aws { base, repository_region, imds, region: OnceCell::new(), identity: OnceCell::new() }
    }

    /// The configuration clients are built from (its region may be unset: use [`Aws::region`]).
    pub fn base(&self) -> &SdkConfig {
        &self.base
    }

    /// The host's region, resolved now if it is not known yet. Concurrent callers wait for one
    /// resolution; a failed one is not cached.
    pub async fn region(&self) -> Result<Region, RegionUnknown> {
        self.region.get_or_try_init(|| self.resolve()).await.cloned()
    }

    /// The seed of `service`'s push-back jitter: this host's rollout identity (the EC2 instance
    /// id, else the machine id or hostname; [`crate::fleet::rollout::resolve_identity`]) with
    /// the service's name, so hosts throttled together draw different pauses.
    async fn jitter_seed(&self, service: &str) -> u64 {
        let identity = self
            .identity
            .get_or_init(|| async {
                let instance_id = self.imds.instance_id().await.ok();
                crate::fleet::rollout::resolve_identity(instance_id).value
            })
            .await;
        (crate::fleet::rollout::seed(&format!("{identity}/{service}")) * (1u64 << 53) as f64) as u64
    }

    async fn resolve(&self) -> Result<Region, RegionUnknown> {
        if let Some(region) = self.base.region() {
            tracing::info!(%region, "AWS region {region} (from the environment or the AWS config)");
            return Ok(region.clone());
        }
        if let Some(region) = &self.repository_region {
            tracing::info!(%region, "AWS region {region} (from the ECR repository host)");
            return Ok(region.clone());
        }
        let mut backoff = Backoff::new(IMDS_REGION_BACKOFF, IMDS_REGION_BACKOFF * 4);
        let mut last = String::new();
        for attempt in 1..=IMDS_REGION_ATTEMPTS {
            match self.imds.region().await {
                Ok(region) => {
                    tracing::info!(%region, "AWS region {region} (from instance metadata)");
                    return Ok(Region::new(region));
                }
                Err(detail) => {
                    tracing::debug!(attempt, "instance metadata did not give the region: {detail}");
                    last = detail;
                }
            }
            if attempt < IMDS_REGION_ATTEMPTS {
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
        Err(RegionUnknown { detail: format!("{IMDS_REGION_ATTEMPTS} attempts; last: {last}") })
    }
}

/// A client for one AWS service, built once the region it needs is known: until then each
/// [`Regional::get`] tries to resolve the region again.
pub struct Regional<T> {
    aws: Arc<Aws>,
    /// The service's name in log lines and errors (`S3`, `ECR`...).
    service: &'static str,
    gate: Mutex<Gate>,
    /// The region this client must use whatever the host's is (an ECR repository's own).
    pinned: Option<Region>,
    build: fn(&SdkConfig, Region) -> T,
    client: OnceCell<T>,
}

impl<T> Regional<T> {
    /// A client in the host's region.
    pub fn new(aws: Arc<Aws>, service: &'static str, build: fn(&SdkConfig, Region) -> T) -> Regional<T> {
        Regional::pinned(aws, service, None, build)
    }

    /// A client in `pinned` when it is set, else in the host's region.
    pub fn pinned(
        aws: Arc<Aws>,
        service: &'static str,
        pinned: Option<Region>,
        build: fn(&SdkConfig, Region) -> T,
    ) -> Regional<T> {
        Regional { aws, service, gate: Mutex::new(Gate::default()), pinned, build, client: OnceCell::new() }
    }

    /// Sends one call (`call` makes its request; it is called again for a one-off command's
    /// next attempt) unless the service's push-back pause is running: then, in `run`, fails at
    /// once with [`HeldBack`] as a construction failure; in a one-off command, waits the pause
    /// out. Records the answer: a push-back starts or lengthens the pause, any other answer
    /// ends it.
    pub async fn send<O, E, F, Fut>(&self, call: F) -> Result<O, SdkError<E, HttpResponse>>
    where
        E: ProvideErrorMetadata,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<O, SdkError<E, HttpResponse>>>,
    {
        self.send_with(!LOOP_RETRIES.load(Ordering::Relaxed), call).await
    }

    /// [`Regional::send`], waiting out a pause (`one_off`) or failing at once.
    async fn send_with<O, E, F, Fut>(&self, one_off: bool, call: F) -> Result<O, SdkError<E, HttpResponse>>
    where
        E: ProvideErrorMetadata,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<O, SdkError<E, HttpResponse>>>,
    {
        let mut attempt = 1;
        loop {
            let held = {
                let gate = self.gate.lock().unwrap();
                match gate.pushback.as_ref().map(|p| (p.admit(tokio::time::Instant::now()), p.in_a_row())) {
                    Some((Err(wait), in_a_row)) => Some((wait, gate.cause.clone(), in_a_row)),
                    _ => None,
                }
            };
            if let Some((wait, cause, in_a_row)) = held {
                if !one_off {
                    let wait_secs = wait.as_secs_f64();
                    return Err(SdkError::construction_failure(HeldBack {
                        service: self.service,
                        cause,
                        in_a_row,
                        wait_secs,
                    }));
                }
                tokio::time::sleep(wait).await;
            }
            let result = call().await;
            let Some(cause) = pushback_cause(&result) else {
                let mut gate = self.gate.lock().unwrap();
                if let Some(p) = gate.pushback.as_mut().filter(|p| p.in_a_row() > 0) {
                    tracing::info!(
                        service = self.service,
                        pushed_back = p.in_a_row(),
                        "{} answers again after {} push-back(s) in a row",
                        self.service,
                        p.in_a_row()
                    );
                    p.answered();
                }
                return result;
            };
            let seed = self.aws.jitter_seed(self.service).await;
            let (pause, in_a_row) = {
                let mut gate = self.gate.lock().unwrap();
                let (first, cap) = gate.pauses;
                let p = gate.pushback.get_or_insert_with(|| Pushback::with(first, cap, seed));
                let pause = p.pushed_back(tokio::time::Instant::now());
                let in_a_row = p.in_a_row();
                gate.cause = cause.clone();
                (pause, in_a_row)
            };
            tracing::info!(
                service = self.service, cause = %cause, in_a_row, pause_ms = pause.as_millis() as u64,
                "{} answered {cause} ({in_a_row} in a row): its next call waits {:.1} s", self.service, pause.as_secs_f64()
            );
            if !one_off || attempt >= ONE_OFF_ATTEMPTS {
                return result;
            }
            attempt += 1;
        }
    }

    /// The client, built now if this is the first call since the region became known.
    pub async fn get(&self) -> Result<&T, RegionUnknown> {
        self.client
            .get_or_try_init(|| async {
                let region = match &self.pinned {
                    Some(region) => region.clone(),
                    None => self.aws.region().await?,
                };
                Ok((self.build)(self.aws.base(), region))
            })
            .await
    }
}

/// The region an ECR registry host names: `<account>.dkr.ecr.<region>.amazonaws.com`, its
/// FIPS form `<account>.dkr.ecr-fips.<region>.amazonaws.com`, and the China partition's
/// `.amazonaws.com.cn`; a port is ignored. `None` for any other host.
pub fn ecr_host_region(host: &str) -> Option<Region> {
    let host = host.split(':').next()?.to_ascii_lowercase();
    let rest = host.strip_suffix(".amazonaws.com").or_else(|| host.strip_suffix(".amazonaws.com.cn"))?;
    let labels: Vec<&str> = rest.split('.').collect();
    match labels.as_slice() {
        [account, "dkr", "ecr" | "ecr-fips", region]
            if !account.is_empty()
                && account.bytes().all(|b| b.is_ascii_digit())
                && !region.is_empty()
                && region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') =>
        {
            Some(Region::new(region.to_string()))
        }
        _ => None,
    }
}

/// A custom S3 endpoint (an S3-compatible server, or moto in tests) rarely serves
/// virtual-hosted bucket names, so path-style addressing is used whenever one is set.
pub fn custom_s3_endpoint() -> bool {
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"].iter().any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

pub use super::{describe, describe_call};

/// Measures this host's clock against the `Date` of every AWS answer (S3, ECR, STS, Auto
/// Scaling) into [`crate::runtime::clock`]: each client's configuration adds it
/// (`.interceptor(ClockWatch)`). An answer from a cache (`Age`) is not measured.
#[derive(Debug, Clone, Copy)]
pub struct ClockWatch;

/// When the attempt was sent: the host's clock for the offset, the monotonic one for the round
/// trip (which a clock step does not bend).
#[derive(Debug, Clone, Copy)]
struct Sent(SystemTime, Instant);

impl aws_smithy_types::config_bag::Storable for Sent {
    type Storer = aws_smithy_types::config_bag::StoreReplace<Sent>;
}

impl aws_sdk_s3::config::Intercept for ClockWatch {
    fn name(&self) -> &'static str {
        "ClockWatch"
    }

    fn read_before_transmit(
        &self,
        _: &aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_sdk_s3::config::RuntimeComponents,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        cfg.interceptor_state().store_put(Sent(SystemTime::now(), Instant::now()));
        Ok(())
    }

    fn read_before_deserialization(
        &self,
        ctx: &aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef<'_>,
        _: &aws_sdk_s3::config::RuntimeComponents,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let headers = ctx.response().headers();
        let (Some(Sent(sent, started)), Some(date), None) =
            (cfg.load::<Sent>(), headers.get("date"), headers.get("age"))
        else {
            return Ok(());
        };
        let format = aws_smithy_types::date_time::Format::HttpDate;
        let server = aws_smithy_types::DateTime::from_str(date, format).ok().and_then(|d| SystemTime::try_from(d).ok());
        if let Some(sample) = server.and_then(|server| crate::runtime::clock::measure(*sent, started.elapsed(), server))
        {
            crate::runtime::clock::record(sample);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::*;

    /// An IMDSv2 stand-in on loopback: a token for any PUT, the region once `ready` is set
    /// (404 before), 404 for anything else. Counts region reads.
    struct FakeImds {
        endpoint: String,
        ready: Arc<AtomicBool>,
        region_reads: Arc<AtomicUsize>,
    }

    async fn fake_imds() -> FakeImds {
        let (ready, region_reads) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
        let (r, n) = (ready.clone(), region_reads.clone());
        let endpoint = crate::outside::loopback::serve(move |head| {
            let mut line = head.split_whitespace();
            let (status, extra, body) = match (line.next(), line.next()) {
                (Some("PUT"), _) => ("200 OK", "X-aws-ec2-metadata-token-ttl-seconds: 21600\r\n", "token"),
                (_, Some("/latest/meta-data/placement/region")) => {
                    n.fetch_add(1, Ordering::SeqCst);
                    match r.load(Ordering::SeqCst) {
                        true => ("200 OK", "", "eu-central-1"),
                        false => ("404 Not Found", "", ""),
                    }
                }
                _ => ("404 Not Found", "", ""),
            };
            format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}", body.len())
        })
        .await;
        FakeImds { endpoint, ready, region_reads }
    }

    fn aws(configured: Option<&str>, repository_host: &str, imds: &FakeImds) -> Arc<Aws> {
        let mut base = SdkConfig::builder().behavior_version(BehaviorVersion::latest());
        base.set_region(configured.map(|r| Region::new(r.to_owned())));
        Arc::new(Aws::new(base.build(), ecr_host_region(repository_host), Imds::with_endpoint(&imds.endpoint)))
    }

    #[tokio::test]
    async fn region_unknown_at_first_is_resolved_on_a_later_call() {
        let imds = fake_imds().await;
        let aws = aws(None, "127.0.0.1:5000", &imds);
        let s3 = Regional::new(aws.clone(), "S3", |_, region| region);
        let err = s3.get().await.unwrap_err();
        assert!(err.to_string().starts_with("AWS region unknown: set AWS_REGION"), "{err}");
        assert!(err.to_string().contains("HTTP 404"), "{err}");
        assert_eq!(imds.region_reads.load(Ordering::SeqCst), IMDS_REGION_ATTEMPTS as usize, "retried");
        // Not stuck: the metadata service answers now, and the next call uses it.
        imds.ready.store(true, Ordering::SeqCst);
        assert_eq!(s3.get().await.unwrap().as_ref(), "eu-central-1");
        assert_eq!(aws.region().await.unwrap().as_ref(), "eu-central-1");
        // Cached once known.
        let reads = imds.region_reads.load(Ordering::SeqCst);
        assert_eq!(s3.get().await.unwrap().as_ref(), "eu-central-1");
        assert_eq!(imds.region_reads.load(Ordering::SeqCst), reads);
    }

    #[tokio::test]
    async fn region_comes_from_configuration_then_repository_host_then_instance_metadata() {
        let imds = fake_imds().await;
        imds.ready.store(true, Ordering::SeqCst);
        let ecr = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";
        assert_eq!(aws(Some("us-west-2"), ecr, &imds).region().await.unwrap().as_ref(), "us-west-2");
        assert_eq!(aws(None, ecr, &imds).region().await.unwrap().as_ref(), "eu-west-1");
        assert_eq!(imds.region_reads.load(Ordering::SeqCst), 0, "instance metadata not asked");
        assert_eq!(aws(None, "127.0.0.1:5000", &imds).region().await.unwrap().as_ref(), "eu-central-1");
    }

    #[tokio::test]
    async fn pinned_client_needs_no_host_region() {
        let imds = fake_imds().await;
        let ecr = Regional::pinned(aws(None, "127.0.0.1:5000", &imds), "ECR", Some(Region::new("us-east-1")), |_, r| r);
        assert_eq!(ecr.get().await.unwrap().as_ref(), "us-east-1");
        assert_eq!(imds.region_reads.load(Ordering::SeqCst), 0);
    }

    /// An S3 stand-in that answers every request 503 SlowDown; counts them.
    async fn slow_down() -> (String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let n = calls.clone();
        let endpoint = crate::outside::loopback::serve(move |_| {
            n.fetch_add(1, Ordering::SeqCst);
            let body = "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
            format!("HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())
        })
        .await;
        (endpoint, calls)
    }

    /// An S3 client through a gate whose pauses are 20 ms doubling to 80 ms.
    async fn gated_s3(endpoint: String) -> Regional<aws_sdk_s3::Client> {
        let imds = fake_imds().await;
        let sdk =
            crate::outside::loopback::sdk_config(endpoint).to_builder().retry_config(RetryConfig::disabled()).build();
        let aws = Arc::new(Aws::new(sdk, None, Imds::with_endpoint(&imds.endpoint)));
        let s3 = Regional::new(aws, "S3", |sdk, region| {
            aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(sdk).region(region).force_path_style(true).build(),
            )
        });
        s3.gate.lock().unwrap().pauses = (Duration::from_millis(20), Duration::from_millis(80));
        s3
    }

    /// Which answers are a push-back: throttling codes (S3, ECR, STS, KMS through S3), 429 and
    /// 5xx; not a refusal or a missing object.
    #[test]
    #[allow(clippy::result_large_err)] // the SDK's own error type, as its calls return it
    fn pushback_causes() {
        use aws_sdk_s3::operation::get_object::GetObjectError;
        use aws_smithy_types::body::SdkBody;
        use aws_smithy_types::error::ErrorMetadata;
        let answer = |status: u16, code: Option<&str>| {
            let mut meta = ErrorMetadata::builder();
            if let Some(code) = code {
                meta = meta.code(code);
            }
            let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
            Err::<(), _>(SdkError::service_error(GetObjectError::generic(meta.build()), raw))
        };
        let table: &[(u16, Option<&str>, Option<&str>)] = &[
            (503, Some("SlowDown"), Some("SlowDown")),
            (400, Some("ThrottlingException"), Some("ThrottlingException")),
            (400, Some("Throttling"), Some("Throttling")),
            (400, Some("KMS.ThrottlingException"), Some("KMS.ThrottlingException")),
            (500, Some("InternalError"), Some("InternalError")),
            (503, None, Some("HTTP 503")),
            (429, None, Some("HTTP 429")),
            (403, Some("AccessDenied"), None),
            (404, Some("NoSuchKey"), None),
            (400, Some("KMS.DisabledException"), None),
            (304, None, None),
        ];
        for &(status, code, cause) in table {
            assert_eq!(pushback_cause(&answer(status, code)).as_deref(), cause, "{status} {code:?}");
        }
        assert_eq!(pushback_cause::<(), GetObjectError>(&Ok(())), None);
    }

    #[tokio::test]
    async fn in_the_loop_a_pushback_holds_the_next_call_back_without_sending_it() {
        let (endpoint, calls) = slow_down().await;
        let s3 = gated_s3(endpoint).await;
        let client = s3.get().await.unwrap();
        let head = || client.head_object().bucket("b").key("k").send();
        let err = s3.send_with(false, head).await.unwrap_err();
        assert_eq!(pushback_cause::<(), _>(&Err(err)).as_deref(), Some("HTTP 503"));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // At once: held back, not sent, and said so in one line.
        let err = s3.send_with(false, head).await.unwrap_err();
        let line = describe_call(&err);
        assert!(
            line.starts_with("not sent: S3 answered HTTP 503 1 time(s) in a row; this host's next S3 call waits"),
            "{line}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // After the pause (at most the first nominal, 20 ms), the next call goes.
        tokio::time::sleep(Duration::from_millis(25)).await;
        let get = || client.get_object().bucket("b").key("k").send();
        let err = s3.send_with(false, get).await.unwrap_err();
        assert_eq!(describe_call(&err), "SlowDown: Please reduce your request rate. (HTTP 503)");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert_eq!(s3.gate.lock().unwrap().pushback.as_ref().map(Pushback::in_a_row), Some(2));
    }

    #[tokio::test]
    async fn a_one_off_command_waits_out_the_pauses_for_a_few_attempts_then_fails() {
        let (endpoint, calls) = slow_down().await;
        let s3 = gated_s3(endpoint).await;
        let client = s3.get().await.unwrap();
        let err = s3.send_with(true, || client.get_object().bucket("b").key("k").send()).await.unwrap_err();
        assert_eq!(describe_call(&err), "SlowDown: Please reduce your request rate. (HTTP 503)");
        assert_eq!(calls.load(Ordering::SeqCst), ONE_OFF_ATTEMPTS as usize);
    }

    /// An answer's `Date` 20 minutes behind this host's clock is measured as the host 20 minutes
    /// ahead; the same from a cache (`Age`) is not measured.
    #[tokio::test]
    async fn clock_watch_measures_the_date_of_an_answer_but_not_a_cached_one() {
        use aws_smithy_types::date_time::{DateTime, Format};
        let date = DateTime::from(SystemTime::now() - Duration::from_secs(1200)).fmt(Format::HttpDate).unwrap();
        let endpoint = crate::outside::loopback::serve(move |head| {
            let age = if head.starts_with("HEAD /cached") { "Age: 30\r\n" } else { "" };
            format!("HTTP/1.1 200 OK\r\nDate: {date}\r\n{age}Content-Length: 0\r\nConnection: close\r\n\r\n")
        })
        .await;
        let sdk = crate::outside::loopback::sdk_config(endpoint);
        let config = aws_sdk_s3::config::Builder::from(&sdk).force_path_style(true).interceptor(ClockWatch).build();
        let s3 = aws_sdk_s3::Client::from_conf(config);
        s3.head_bucket().bucket("cached").send().await.unwrap();
        assert_eq!(crate::runtime::clock::latest(), None, "a cached answer's Date is not this moment's");
        s3.head_bucket().bucket("fresh").send().await.unwrap();
        let sample = crate::runtime::clock::latest().expect("measured");
        assert!((1_199_000..1_201_000).contains(&sample.offset_ms), "{sample:?}");
        assert_eq!(crate::runtime::clock::judge(Some(&sample)), crate::runtime::clock::Level::Fail);
    }

    #[test]
    fn ecr_host_names_its_region() {
        let region = |host: &str| ecr_host_region(host).map(|r| r.as_ref().to_owned());
        assert_eq!(region("123456789012.dkr.ecr.eu-west-1.amazonaws.com").as_deref(), Some("eu-west-1"));
        assert_eq!(region("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn").as_deref(), Some("cn-north-1"));
        assert_eq!(region("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com").as_deref(), Some("us-east-1"));
        assert_eq!(region("123456789012.DKR.ECR.us-gov-west-1.amazonaws.com:443").as_deref(), Some("us-gov-west-1"));
        for other in [
            "127.0.0.1:5000",
            "localhost:5000",
            "registry.example.com",
            "ghcr.io",
            "public.ecr.aws",
            "dkr.ecr.eu-west-1.amazonaws.com",
            "123456789012.dkr.ecr.amazonaws.com",
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com.evil.example",
            "acct.dkr.ecr.eu-west-1.amazonaws.com",
            "123456789012.s3.eu-west-1.amazonaws.com",
            "[::1]:5000",
            "",
        ] {
            assert_eq!(region(other), None, "{other}");
        }
    }
}
