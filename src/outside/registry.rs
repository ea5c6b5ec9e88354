//! Registry credentials from ECR: `GetAuthorizationToken`, base64 `user:password`.
//!
//! The password is wrapped in [`Secret`], whose `Debug` and `Display` print `***`, so it cannot
//! reach a log line, an error or `--debug` output by accident. Tokens are cached until shortly
//! before `expiresAt`; a token that arrives already expired (moto's is dated 2015) is used for
//! the pull at hand and cached for a short floor, so it cannot cause a request storm. A token
//! the registry refuses is dropped ([`CredentialSource::invalidate`]): the next pull asks again.
//! A failed call caches nothing; while ECR pushes back (throttling), ECR's gate in
//! [`crate::outside::aws`] spaces this host's calls (2 s doubling to 5 minutes, full jitter).
//!
//! The token is asked for in the repository's region when the repository host is an ECR host
//! (a registry only accepts tokens from its own region), else in the host's.
//!
//! Reads: ECR tokens and image digests. Writes nothing. Decides: how long a token is reused.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_config::Region;
use base64::Engine as _;

use crate::outside::aws::{describe_call, ecr_host_region, Aws, RegionUnknown, Regional};

/// Renew this long before the token's stated expiry, so a pull never starts on a dying token.
const RENEW_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);
/// Shortest time a token is reused, even if its stated expiry is nearer or already past.
const MIN_CACHE: Duration = Duration::from_secs(60);

/// A string that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Secret {
        Secret(value)
    }
    /// The only way to the value: call sites that hand it to Docker say so explicitly.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Credentials for one registry.
#[derive(Debug, Clone)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: Secret,
    pub expires_at: Option<SystemTime>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("ECR GetAuthorizationToken was denied: the instance role needs ecr:GetAuthorizationToken ({detail})")]
    AccessDenied { detail: String },
    #[error("ECR GetAuthorizationToken failed: {detail}")]
    Unavailable { detail: String },
    #[error("ECR returned an authorization token that is not base64 \"user:password\"")]
    Malformed,
    #[error("cannot ask ECR for a registry token: {0}")]
    RegionUnknown(#[from] RegionUnknown),
    #[error("ECR repository {repository:?} does not exist (check [image] repository)")]
    NoRepository { repository: String },
    #[error("ECR DescribeImages on {repository:?} was denied: the role needs ecr:DescribeImages on it ({detail})")]
    DescribeDenied { repository: String, detail: String },
    #[error("ECR DescribeImages on {repository:?} failed: {detail}")]
    DescribeFailed { repository: String, detail: String },
}

/// Where registry credentials come from.
pub trait CredentialSource {
    fn credentials(&self) -> impl std::future::Future<Output = Result<RegistryCredentials, RegistryError>> + Send;
    /// Forgets cached credentials (the registry refused them).
    fn invalidate(&self);
    /// API calls made so far (GetAuthorizationToken requests sent; cache hits and calls held
    /// back by a push-back pause not counted), for the metrics.
    fn api_calls(&self) -> u64 {
        0
    }
}

/// The region a token for `registry_host` must come from, when the host fixes it: an ECR
/// registry accepts only tokens from its own region. `None`: any registry that is not ECR's
/// (a token from the host's region).
pub fn token_region(registry_host: &str) -> Option<Region> {
    ecr_host_region(registry_host)
}

/// ECR token source with a cache.
pub struct Ecr {
    client: Regional<aws_sdk_ecr::Client>,
    cache: Mutex<Option<(RegistryCredentials, SystemTime)>>,
    calls: AtomicU64,
}

impl Ecr {
    /// Tokens for the registry at `registry_host` (`[image] repository`'s host): from its
    /// region if it is an ECR host, else from the host's region as `aws` resolves it.
    pub fn for_registry(aws: &Arc<Aws>, registry_host: &str) -> Ecr {
        let client = Regional::pinned(aws.clone(), "ECR", token_region(registry_host), |sdk, region| {
            aws_sdk_ecr::Client::from_conf(
                aws_sdk_ecr::config::Builder::from(sdk)
                    .region(region)
                    .interceptor(crate::outside::aws::ClockWatch)
                    .build(),
            )
        });
        Ecr { client, cache: Mutex::new(None), calls: AtomicU64::new(0) }
    }

    async fn fetch(&self) -> Result<RegistryCredentials, RegistryError> {
        let client = self.client.get().await?;
        let sent = self
            .client
            .send(|| {
                self.calls.fetch_add(1, Ordering::Relaxed);
                client.get_authorization_token().send()
            })
            .await;
        let output = sent.map_err(|err| {
            use aws_sdk_ecr::error::ProvideErrorMetadata;
            let detail = describe_call(&err);
            match err.code() {
                Some("AccessDeniedException") => RegistryError::AccessDenied { detail },
                _ => RegistryError::Unavailable { detail },
            }
        })?;
        let data = output.authorization_data().first().ok_or(RegistryError::Malformed)?;
        let token = data.authorization_token().ok_or(RegistryError::Malformed)?;
        let mut creds = decode_token(token)?;
        creds.expires_at = data.expires_at().and_then(|t| SystemTime::try_from(*t).ok());
        Ok(creds)
    }
}

impl Ecr {
    /// The manifest digest ECR holds for `path:tag` in the registry whose host is `registry`
    /// (DescribeImages); `Ok(None)` when the repository has no such tag.
    pub async fn image_digest(&self, registry: &str, path: &str, tag: &str) -> Result<Option<String>, RegistryError> {
        use aws_sdk_ecr::error::ProvideErrorMetadata;
        let client = self.client.get().await?;
        let name = path.to_owned();
        let id = aws_sdk_ecr::types::ImageIdentifier::builder().image_tag(tag).build();
        let described = self
            .client
            .send(|| {
                client
                    .describe_images()
                    .repository_name(&name)
                    .set_registry_id(registry_account(registry))
                    .image_ids(id.clone())
                    .send()
            })
            .await;
        match described {
            Ok(out) => Ok(out.image_details().iter().find_map(|d| d.image_digest().map(str::to_owned))),
            Err(err) => match err.code() {
                Some("ImageNotFoundException") => Ok(None),
                Some("RepositoryNotFoundException") => Err(RegistryError::NoRepository { repository: name }),
                Some("AccessDeniedException") => {
                    Err(RegistryError::DescribeDenied { repository: name, detail: describe_call(&err) })
                }
                _ => Err(RegistryError::DescribeFailed { repository: name, detail: describe_call(&err) }),
            },
        }
    }
}

/// The AWS account of an ECR registry host (`123456789012.dkr.ecr.<region>...`); `None` for
/// any other registry (the caller's own account).
pub fn registry_account(registry_host: &str) -> Option<String> {
    let (account, rest) = registry_host.split_once('.')?;
    (rest.starts_with("dkr.ecr") && account.len() == 12 && account.bytes().all(|b| b.is_ascii_digit()))
        .then(|| account.to_owned())
}

impl CredentialSource for Ecr {
    async fn credentials(&self) -> Result<RegistryCredentials, RegistryError> {
        // The token's expiry is ECR's time.
        let now = crate::runtime::clock::now();
        if let Some((creds, valid_until)) = self.cache.lock().unwrap().as_ref() {
            if now < *valid_until {
                return Ok(creds.clone());
            }
        }
        let creds = self.fetch().await?;
        let valid_until = cache_until(now, creds.expires_at);
        tracing::debug!(username = %creds.username, ?valid_until, "got ECR authorization token");
        *self.cache.lock().unwrap() = Some((creds.clone(), valid_until));
        Ok(creds)
    }

    fn invalidate(&self) {
        *self.cache.lock().unwrap() = None;
    }

    fn api_calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// How long a token fetched at `now` is reused.
pub fn cache_until(now: SystemTime, expires_at: Option<SystemTime>) -> SystemTime {
    let by_expiry = expires_at.and_then(|e| e.checked_sub(RENEW_BEFORE_EXPIRY)).unwrap_or(now);
    by_expiry.max(now + MIN_CACHE)
}

/// Decodes ECR's base64 `user:password` token.
pub fn decode_token(token: &str) -> Result<RegistryCredentials, RegistryError> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(token.trim()).map_err(|_| RegistryError::Malformed)?;
    let text = String::from_utf8(bytes).map_err(|_| RegistryError::Malformed)?;
    let (user, password) = text.split_once(':').ok_or(RegistryError::Malformed)?;
    if user.is_empty() || password.is_empty() {
        return Err(RegistryError::Malformed);
    }
    Ok(RegistryCredentials { username: user.to_owned(), password: Secret::new(password.to_owned()), expires_at: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_hides_the_password() {
        let token = base64::engine::general_purpose::STANDARD.encode("AWS:s3cr3t-pass");
        let creds = decode_token(&token).unwrap();
        assert_eq!(creds.username, "AWS");
        assert_eq!(creds.password.expose(), "s3cr3t-pass");
        let shown = format!("{creds:?} {}", creds.password);
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }

    #[test]
    fn rejects_malformed_tokens() {
        for bad in ["", "!!!", &base64::engine::general_purpose::STANDARD.encode("nocolon")] {
            assert!(matches!(decode_token(bad), Err(RegistryError::Malformed)), "{bad}");
        }
    }

    #[test]
    fn token_comes_from_the_repository_region_not_the_host_region() {
        let region = |host: &str| token_region(host).map(|r| r.as_ref().to_owned());
        // A host in eu-west-1 pulling from a us-east-1 repository: us-east-1.
        assert_eq!(region("123456789012.dkr.ecr.us-east-1.amazonaws.com").as_deref(), Some("us-east-1"));
        assert_eq!(region("123456789012.dkr.ecr-fips.us-gov-west-1.amazonaws.com").as_deref(), Some("us-gov-west-1"));
        assert_eq!(region("123456789012.dkr.ecr.cn-north-1.amazonaws.com.cn").as_deref(), Some("cn-north-1"));
        // Any other registry: the host's region.
        assert_eq!(region("127.0.0.1:5000"), None);
        assert_eq!(region("registry.example.com"), None);
    }

    #[test]
    fn the_registry_account_is_read_from_an_ecr_host_only() {
        assert_eq!(registry_account("123456789012.dkr.ecr.us-east-1.amazonaws.com").as_deref(), Some("123456789012"));
        assert_eq!(registry_account("127.0.0.1:5000"), None);
        assert_eq!(registry_account("registry.example.com"), None);
    }

    #[test]
    fn cache_lifetime() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hours = |h: u64| Duration::from_secs(h * 3600);
        // 12 h token: renewed 5 minutes early.
        assert_eq!(cache_until(now, Some(now + hours(12))), now + hours(12) - RENEW_BEFORE_EXPIRY);
        // Already expired (moto) or unknown: a short floor, never zero.
        assert_eq!(cache_until(now, Some(now - hours(1))), now + MIN_CACHE);
        assert_eq!(cache_until(now, None), now + MIN_CACHE);
    }
}
