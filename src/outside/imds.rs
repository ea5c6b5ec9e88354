//! EC2 instance metadata (IMDSv2): reads one instance tag, the host's environment, and the
//! instance's region (see [`crate::outside::aws`]).
//!
//! Uses aws-config's IMDS client, which does the token PUT, retries, and honours
//! `AWS_EC2_METADATA_SERVICE_ENDPOINT` (tests point it at a local stand-in). A 404 on the tag
//! path has two usual causes, the tag is absent or instance metadata tags are not enabled, and
//! the error names both with their fix.

use std::future::Future;
use std::time::Duration;

use aws_config::imds::client::error::ImdsError as SdkImdsError;

/// Total time allowed for one tag read, retries included. IMDS answers in milliseconds on a
/// healthy instance; a slow boot gets a few retries inside this bound.
const TAG_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Total time allowed for one region read; [`crate::outside::aws`] retries with backoff around it.
const REGION_READ_TIMEOUT: Duration = Duration::from_secs(5);
const REGION_PATH: &str = "/latest/meta-data/placement/region";
/// Total time allowed for one instance id (or lifecycle state) read. Off EC2 nothing answers,
/// and the caller falls back to the machine id (see
/// [`crate::fleet::rollout::resolve_identity`]): keep it short.
const INSTANCE_ID_READ_TIMEOUT: Duration = Duration::from_secs(5);
const INSTANCE_ID_PATH: &str = "/latest/meta-data/instance-id";
const LIFECYCLE_PATH: &str = "/latest/meta-data/autoscaling/target-lifecycle-state";

#[derive(Debug, thiserror::Error)]
pub enum ImdsError {
    #[error(
        "EC2 instance tag {tag:?} not found in instance metadata: tag the instance (launch template tag \
         specifications) and enable instance metadata tags (InstanceMetadataTags=enabled), \
         or set [environment] name / pass --env"
    )]
    TagMissing { tag: String },
    #[error("instance metadata answered HTTP {status} for tag {tag:?}: check the instance metadata options (HttpTokens, hop limit)")]
    Refused { tag: String, status: u16 },
    #[error("instance metadata unreachable while reading tag {tag:?}: {detail}: is this an EC2 instance with IMDS enabled? Otherwise set [environment] name or pass --env")]
    Unreachable { tag: String, detail: String },
}

/// Where the environment tag comes from; a trait so environment resolution is unit-tested.
pub trait TagSource {
    fn instance_tag(&self, tag: &str) -> impl std::future::Future<Output = Result<String, ImdsError>> + Send;
}

/// The real IMDS client.
pub struct Imds {
    client: aws_config::imds::Client,
}

impl Default for Imds {
    fn default() -> Self {
        Imds::new()
    }
}

impl Imds {
    pub fn new() -> Imds {
        let client = aws_config::imds::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(2))
            .max_attempts(4)
            .build();
        Imds { client }
    }

    /// A client of the stand-in at `endpoint` (unit tests).
    #[cfg(test)]
    pub(crate) fn with_endpoint(endpoint: &str) -> Imds {
        let client = aws_config::imds::Client::builder()
            .endpoint(endpoint)
            .expect("valid IMDS endpoint")
            .connect_timeout(Duration::from_secs(1))
            .read_timeout(Duration::from_secs(2))
            .max_attempts(1)
            .build();
        Imds { client }
    }

    /// The instance's region (`placement/region`); `Err` says why there is none, for
    /// [`crate::outside::aws::RegionUnknown`].
    pub fn region(&self) -> impl Future<Output = Result<String, String>> + '_ {
        self.value(REGION_PATH, REGION_READ_TIMEOUT)
    }

    /// The EC2 instance id (`i-...`), the host's identity for the rollout seed and in halt
    /// markers; `Err` says why there is none (as [`Imds::region`] does).
    pub fn instance_id(&self) -> impl Future<Output = Result<String, String>> + '_ {
        self.value(INSTANCE_ID_PATH, INSTANCE_ID_READ_TIMEOUT)
    }

    /// The lifecycle state Auto Scaling is moving this instance to (`InService`,
    /// `Warmed:Running`, ...): a local read, so a warm-pool instance can watch for the moment
    /// it leaves the pool without calling the Auto Scaling API on every poll.
    pub fn target_lifecycle_state(&self) -> impl Future<Output = Result<String, String>> + '_ {
        self.value(LIFECYCLE_PATH, INSTANCE_ID_READ_TIMEOUT)
    }

    /// The trimmed value at `path`, read within `timeout`; `Err` says why there is none (no
    /// answer, an HTTP status, an empty value, or the client's error) in words fit for a log.
    ///
    /// The public readers return this future itself rather than awaiting it in an `async fn` of
    /// their own: the S3 and ECR calls already nest deep futures (the region is resolved inside
    /// them), and one more layer takes a release build's layout computation past rustc's
    /// default recursion limit.
    async fn value(&self, path: &'static str, timeout: Duration) -> Result<String, String> {
        match tokio::time::timeout(timeout, self.client.get(path)).await {
            Err(_) => Err(format!("no answer within {timeout:?}")),
            Ok(Ok(value)) => match value.as_ref().trim() {
                "" => Err(format!("{path} is empty")),
                value => Ok(value.to_owned()),
            },
            Ok(Err(SdkImdsError::ErrorResponse(resp))) => {
                Err(format!("HTTP {} for {path}", resp.response().status().as_u16()))
            }
            Ok(Err(other)) => Err(crate::outside::describe(&other)),
        }
    }
}

impl TagSource for Imds {
    async fn instance_tag(&self, tag: &str) -> Result<String, ImdsError> {
        let path = format!("/latest/meta-data/tags/instance/{tag}");
        let result = tokio::time::timeout(TAG_READ_TIMEOUT, self.client.get(path)).await;
        let unreachable = |detail: String| ImdsError::Unreachable { tag: tag.to_owned(), detail };
        match result {
            Err(_) => Err(unreachable(format!("no answer within {TAG_READ_TIMEOUT:?}"))),
            Ok(Ok(value)) => Ok(value.as_ref().trim().to_owned()),
            Ok(Err(SdkImdsError::ErrorResponse(resp))) => match resp.response().status().as_u16() {
                404 => Err(ImdsError::TagMissing { tag: tag.to_owned() }),
                status => Err(ImdsError::Refused { tag: tag.to_owned(), status }),
            },
            Ok(Err(other)) => Err(unreachable(crate::outside::describe(&other))),
        }
    }
}
