//! The desired release: the git SHA CI wrote to `s3://<bucket>/<key>` for this environment.
//!
//! Reads at most [`MAX_OBJECT_BYTES`] of the object and validates it as a [`Sha`]; anything else
//! is an error naming the S3 URI and quoting a safe form of the content. SSE-KMS objects are
//! decrypted by S3 transparently, but a role without `kms:Decrypt` sees `AccessDenied`, and the
//! error says so. Supports conditional GET (`If-None-Match`), so an idle poll costs one small
//! request. The whole read, response and body, is bounded by [`FETCH_TIMEOUT`].
//!
//! Reads: the release object and its versions, through the agent's one [`S3Client`]. Writes:
//! the release object ([`S3Releases::write`], for the pipeline). Decides: whether an object
//! holds a SHA; which release runs is [`crate::pass::desired`]'s and [`crate::pass::decide`]'s.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::operation::get_object::GetObjectError;

use crate::outside::aws::{describe, describe_call, Aws, RegionUnknown};
use crate::outside::s3::{read_at_most, S3Client};
use crate::sha::{safe_quote, InvalidSha, Sha};

/// A SHA file holds 7-40 hex digits and a newline; anything much larger is not one, and is not
/// read into memory.
const MAX_OBJECT_BYTES: usize = 1024;

/// Bound on one read, response headers and body together. The SDK's own limit (30 s with its
/// retries, see [`crate::outside::aws`]) ends at the response headers, and its stalled-stream check only
/// catches a body that stops completely: one that trickles would hold the lock, and the loop,
/// for as long as it trickles. A SHA file is under a kilobyte; 5 s more than the SDK's limit is
/// plenty for its body.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(35);

/// Where a release file lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectLocation {
    pub bucket: String,
    pub key: String,
}

impl fmt::Display for ObjectLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.key)
    }
}

/// The desired SHA as read from S3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub sha: Sha,
    pub etag: Option<String>,
    /// When the object was written (its `Last-Modified`, S3's clock): the start of the
    /// release's staged rollout ([`crate::fleet::rollout::gate`]). `None` if S3 did not say.
    pub published_at: Option<SystemTime>,
    /// What `blog-agent publish` recorded beside the SHA; empty for an object written by hand.
    pub provenance: Provenance,
}

/// What `blog-agent publish` records with a release, as S3 user metadata of the release
/// object (`x-amz-meta-blog-*`), so the body stays the bare SHA every reader understands
/// (older agents, the user-data scripts of old): an older agent ignores the metadata, a
/// newer one runs exactly `digest`. An object written by hand (`aws s3 cp`) has none, and is
/// deployed by its tag.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Provenance {
    /// The image's manifest digest in ECR (`sha256:...`) when it was published.
    pub digest: Option<String>,
    /// Who published it (the CI role's session, or the operator).
    pub by: Option<String>,
    /// The pipeline run that published it (CI's build URL or id).
    pub pipeline: Option<String>,
    /// RFC 3339 time of the publish, as the publisher's clock had it.
    pub at: Option<String>,
    /// Base64 of the minisign signature over environment, SHA and digest
    /// ([`crate::signature`]), when the publisher signs.
    pub signature: Option<String>,
}

/// The metadata keys of [`Provenance`] (S3 lowercases user metadata keys).
pub const META_DIGEST: &str = "blog-digest";
pub const META_BY: &str = "blog-published-by";
pub const META_PIPELINE: &str = "blog-pipeline";
pub const META_AT: &str = "blog-published-at";
pub const META_SIGNATURE: &str = "blog-signature";

impl Provenance {
    /// From an object's user metadata; a digest that is not `sha256:<64 hex>` is dropped (the
    /// bucket is not trusted with what a host pulls).
    ///
    /// The time and the signature are kept exactly as written, never cut or escaped: the
    /// signature is checked over them. They are printable ASCII when a publisher wrote them
    /// (RFC 3339, base64); anything else is dropped (the signature then fails to verify).
    pub fn from_metadata(meta: Option<&std::collections::HashMap<String, String>>) -> Provenance {
        let raw = |k: &str| meta.and_then(|m| m.get(k)).map(|v| v.trim().to_owned());
        let get = |k: &str| raw(k).map(|v| crate::sha::safe_text(&v));
        let printable = |v: &String| v.bytes().all(|b| b.is_ascii_graphic());
        Provenance {
            digest: get(META_DIGEST).filter(|d| is_digest(d)),
            by: get(META_BY),
            pipeline: get(META_PIPELINE),
            at: raw(META_AT).filter(printable),
            signature: raw(META_SIGNATURE).filter(printable),
        }
    }

    /// The user metadata that records it.
    pub fn to_metadata(&self) -> Vec<(&'static str, String)> {
        [
            (META_DIGEST, &self.digest),
            (META_BY, &self.by),
            (META_PIPELINE, &self.pipeline),
            (META_AT, &self.at),
            (META_SIGNATURE, &self.signature),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k, v)))
        .collect()
    }
}

/// `sha256:` and 64 lowercase hex digits: an image manifest digest.
pub fn is_digest(value: &str) -> bool {
    value
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// Outcome of a (possibly conditional) read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    Changed(Release),
    /// The object still has the ETag we sent (HTTP 304).
    Unchanged,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ReleaseError {
    #[error("{location} does not exist: has CI published a release for this environment? (check [release] bucket and [release.keys])")]
    NotFound { location: ObjectLocation },
    #[error("bucket {bucket:?} does not exist (reading {location}): check [release] bucket")]
    NoBucket { bucket: String, location: ObjectLocation },
    #[error(
        "access denied reading {location}: either the object is missing (without s3:ListBucket S3 answers 403, not 404) \
         or the instance role lacks s3:GetObject on it or kms:Decrypt on its KMS key ({detail})"
    )]
    AccessDenied { location: ObjectLocation, detail: String },
    #[error("{location} holds {quoted}, which is not a git SHA: {reason}; fix the object (CI writes it); nothing was changed")]
    Invalid { location: ObjectLocation, quoted: String, reason: String },
    #[error("cannot read {location}: {detail}")]
    Unavailable { location: ObjectLocation, detail: String },
    #[error("cannot read {location}: {source}")]
    RegionUnknown { location: ObjectLocation, source: RegionUnknown },
    #[error(
        "reading {location} timed out: no complete answer within {after:?} (S3 stopped sending, or sends too slowly)"
    )]
    TimedOut { location: ObjectLocation, after: Duration },
    #[error(
        "S3 answered 304 Not Modified for {location} to a read without If-None-Match: the endpoint is misbehaving"
    )]
    UnexpectedNotModified { location: ObjectLocation },
}

impl ReleaseError {
    fn invalid(location: &ObjectLocation, err: InvalidSha) -> ReleaseError {
        ReleaseError::Invalid { location: location.clone(), quoted: err.value, reason: err.reason.to_owned() }
    }
}

/// One earlier version of a release object (S3 bucket versioning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Historic {
    pub sha: Sha,
    /// When that version was written.
    pub published_at: Option<SystemTime>,
    pub version_id: String,
    pub provenance: Provenance,
}

/// Versions of the release object read for its history, newest first: enough to step back
/// over a few bad releases, few enough to stay a handful of small requests.
pub const HISTORY_DEPTH: usize = 10;

/// Where the desired SHA comes from; a trait so the loop can be unit-tested with a fake.
pub trait ReleaseSource {
    fn fetch(
        &self,
        location: &ObjectLocation,
        if_none_match: Option<&str>,
    ) -> impl std::future::Future<Output = Result<Fetched, ReleaseError>> + Send;

    /// What the object held before, newest first (at most [`HISTORY_DEPTH`] versions): empty
    /// when the bucket keeps no versions. A source without history has none.
    fn history(
        &self,
        _location: &ObjectLocation,
    ) -> impl std::future::Future<Output = Result<Vec<Historic>, ReleaseError>> + Send {
        async { Ok(Vec::new()) }
    }
}

/// The newest release in `history` other than `not`: what a host with nothing serving runs
/// when `not` is halted and nobody named a rollback target. When `not` is in the history, the
/// answer is older than its newest appearance (the release it replaced).
pub fn release_before(history: &[Historic], not: &Sha) -> Option<Sha> {
    releases_before(history, not).into_iter().next()
}

/// Every release [`release_before`] could answer, best first, each once: the caller skips
/// those that are halted too.
pub fn releases_before(history: &[Historic], not: &Sha) -> Vec<Sha> {
    let start = history.iter().position(|h| h.sha == *not).unwrap_or(0);
    let mut out: Vec<Sha> = Vec::new();
    for sha in history[start..].iter().map(|h| &h.sha).filter(|sha| *sha != not) {
        if !out.contains(sha) {
            out.push(sha.clone());
        }
    }
    out
}

/// The real S3 reader. Its client is built on the first read after the region is known.
#[derive(Clone)]
pub struct S3Releases {
    client: S3Client,
}

impl S3Releases {
    /// A reader through `client` (shared with the halt markers).
    pub fn new(client: &S3Client) -> S3Releases {
        S3Releases { client: client.clone() }
    }

    /// A reader with a client of its own in the host's region, resolved by `aws` (and
    /// re-resolved while unknown).
    pub fn with_aws(aws: &Arc<Aws>) -> S3Releases {
        S3Releases::new(&S3Client::with_aws(aws))
    }
}

impl ReleaseSource for S3Releases {
    async fn fetch(&self, location: &ObjectLocation, if_none_match: Option<&str>) -> Result<Fetched, ReleaseError> {
        let client = self
            .client
            .get()
            .await
            .map_err(|source| ReleaseError::RegionUnknown { location: location.clone(), source })?;
        tokio::time::timeout(FETCH_TIMEOUT, read(&self.client, client, location, if_none_match, None))
            .await
            .unwrap_or_else(|_| Err(ReleaseError::TimedOut { location: location.clone(), after: FETCH_TIMEOUT }))
    }

    async fn history(&self, location: &ObjectLocation) -> Result<Vec<Historic>, ReleaseError> {
        let client = self
            .client
            .get()
            .await
            .map_err(|source| ReleaseError::RegionUnknown { location: location.clone(), source })?;
        Box::pin(tokio::time::timeout(FETCH_TIMEOUT * 2, versions(&self.client, client, location)))
            .await
            .unwrap_or_else(|_| Err(ReleaseError::TimedOut { location: location.clone(), after: FETCH_TIMEOUT * 2 }))
    }
}

/// What a write of the release object expects to find, so that two publishers never overwrite
/// each other silently (S3 conditional writes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// No object yet (`If-None-Match: *`).
    Absent,
    /// The object as read, by its ETag (`If-Match`).
    ETag(String),
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(
        "{location} changed since it was read (another publish at the same time?): nothing was written; \
         run the command again to publish over the new release, or check `blog-agent releases`"
    )]
    Conflict { location: ObjectLocation },
    #[error("bucket {bucket:?} does not exist (writing {location}): check [release] bucket")]
    NoBucket { bucket: String, location: ObjectLocation },
    #[error(
        "access denied writing {location}: the publisher role needs s3:PutObject on it and kms:GenerateDataKey \
         on its KMS key ({detail})"
    )]
    AccessDenied { location: ObjectLocation, detail: String },
    #[error("cannot write {location}: {detail}")]
    Unavailable { location: ObjectLocation, detail: String },
    #[error("cannot write {location}: {source}")]
    RegionUnknown { location: ObjectLocation, source: RegionUnknown },
    #[error("writing {location} timed out after {after:?}")]
    TimedOut { location: ObjectLocation, after: Duration },
}

impl S3Releases {
    /// The ETag of the object (HEAD); `None` when there is none.
    pub async fn etag(&self, location: &ObjectLocation) -> Result<Option<String>, ReleaseError> {
        let client = self
            .client
            .get()
            .await
            .map_err(|source| ReleaseError::RegionUnknown { location: location.clone(), source })?;
        let head = || client.head_object().bucket(&location.bucket).key(&location.key).send();
        match self.client.send(head).await {
            Ok(out) => Ok(out.e_tag().map(str::to_owned)),
            Err(err) if err.raw_response().is_some_and(|r| r.status().as_u16() == 404) => Ok(None),
            Err(err) => Err(ReleaseError::Unavailable { location: location.clone(), detail: describe_call(&err) }),
        }
    }

    /// Writes `sha` (the body: the SHA and a newline, what every reader expects) with its
    /// provenance as user metadata, encrypted with `kms_key` (SSE-KMS; `None`: the bucket's
    /// default), only if the object is still as `expect` says.
    pub async fn write(
        &self,
        location: &ObjectLocation,
        sha: &Sha,
        provenance: &Provenance,
        kms_key: Option<&str>,
        expect: &Expect,
    ) -> Result<(), WriteError> {
        let client = self
            .client
            .get()
            .await
            .map_err(|source| WriteError::RegionUnknown { location: location.clone(), source })?;
        let request = || {
            let mut request = client
                .put_object()
                .bucket(&location.bucket)
                .key(&location.key)
                .content_type("text/plain")
                .body(format!("{sha}\n").into_bytes().into());
            for (k, v) in provenance.to_metadata() {
                request = request.metadata(k, v);
            }
            if let Some(key) = kms_key {
                request =
                    request.server_side_encryption(aws_sdk_s3::types::ServerSideEncryption::AwsKms).ssekms_key_id(key);
            }
            request = match expect {
                Expect::Absent => request.if_none_match("*"),
                Expect::ETag(etag) => request.if_match(etag),
            };
            request.send()
        };
        let sent = tokio::time::timeout(FETCH_TIMEOUT, self.client.send(request))
            .await
            .map_err(|_| WriteError::TimedOut { location: location.clone(), after: FETCH_TIMEOUT })?;
        let Err(err) = sent else { return Ok(()) };
        let status = err.raw_response().map(|r| r.status().as_u16());
        let detail = describe_call(&err);
        let code = err.as_service_error().and_then(|e| e.code()).unwrap_or_default().to_owned();
        Err(match (code.as_str(), status) {
            ("PreconditionFailed" | "ConditionalRequestConflict", _) | (_, Some(412 | 409)) => {
                WriteError::Conflict { location: location.clone() }
            }
            ("NoSuchBucket", _) | (_, Some(404)) => {
                WriteError::NoBucket { bucket: location.bucket.clone(), location: location.clone() }
            }
            (code, status) if code == "AccessDenied" || code.starts_with("KMS") || status == Some(403) => {
                WriteError::AccessDenied { location: location.clone(), detail }
            }
            _ => WriteError::Unavailable { location: location.clone(), detail },
        })
    }
}

/// The object's versions, newest first: one ListObjectVersions, then a GET of each version
/// (a version that is not a valid SHA is skipped: it was never deployable).
async fn versions(
    s3: &S3Client,
    client: &aws_sdk_s3::Client,
    location: &ObjectLocation,
) -> Result<Vec<Historic>, ReleaseError> {
    let list = || client.list_object_versions().bucket(&location.bucket).prefix(&location.key).max_keys(100).send();
    let listed = s3.send(list).await.map_err(|err| {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let detail = describe_call(&err);
        match status {
            Some(403) => ReleaseError::AccessDenied { location: location.clone(), detail },
            _ => ReleaseError::Unavailable { location: location.clone(), detail },
        }
    })?;
    let mut versions: Vec<(String, Option<SystemTime>)> = listed
        .versions()
        .iter()
        .filter(|v| v.key() == Some(location.key.as_str()))
        .filter_map(|v| {
            let id = v.version_id().filter(|id| *id != "null")?;
            Some((id.to_owned(), v.last_modified().and_then(|t| SystemTime::try_from(*t).ok())))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.1));
    let mut history = Vec::new();
    for (version_id, published_at) in versions.into_iter().take(HISTORY_DEPTH) {
        match read(s3, client, location, None, Some(&version_id)).await {
            Ok(Fetched::Changed(release)) => {
                history.push(Historic { sha: release.sha, published_at, version_id, provenance: release.provenance })
            }
            Ok(Fetched::Unchanged) | Err(ReleaseError::Invalid { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(history)
}

/// One GET (of `version`, when given), response and body.
async fn read(
    s3: &S3Client,
    client: &aws_sdk_s3::Client,
    location: &ObjectLocation,
    if_none_match: Option<&str>,
    version: Option<&str>,
) -> Result<Fetched, ReleaseError> {
    let mut request = client.get_object().bucket(&location.bucket).key(&location.key);
    if let Some(etag) = if_none_match {
        request = request.if_none_match(etag);
    }
    if let Some(version) = version {
        request = request.version_id(version);
    }
    let output = match s3.send(|| request.clone().send()).await {
        Ok(output) => output,
        Err(err) => {
            let status = err.raw_response().map(|r| r.status().as_u16());
            let detail = describe_call(&err);
            let service = err.into_service_error();
            let code = service.code().unwrap_or_default().to_owned();
            return match (&service, code.as_str(), status) {
                // Only an answer to If-None-Match; to a plain GET it is the endpoint's bug.
                (_, _, Some(304)) | (_, "NotModified", _) if if_none_match.is_none() => {
                    Err(ReleaseError::UnexpectedNotModified { location: location.clone() })
                }
                (_, _, Some(304)) | (_, "NotModified", _) => Ok(Fetched::Unchanged),
                (GetObjectError::NoSuchKey(_), _, _) | (_, "NoSuchKey", _) => {
                    Err(ReleaseError::NotFound { location: location.clone() })
                }
                (_, "NoSuchBucket", _) => {
                    Err(ReleaseError::NoBucket { bucket: location.bucket.clone(), location: location.clone() })
                }
                (_, code, status) if code == "AccessDenied" || code.starts_with("KMS") || status == Some(403) => {
                    Err(ReleaseError::AccessDenied { location: location.clone(), detail })
                }
                _ => Err(ReleaseError::Unavailable { location: location.clone(), detail }),
            };
        }
    };
    let etag = output.e_tag().map(str::to_owned);
    let published_at = output.last_modified().and_then(|t| SystemTime::try_from(*t).ok());
    let provenance = Provenance::from_metadata(output.metadata());
    let declared = output.content_length().unwrap_or(0).max(0) as usize;
    let bytes = read_at_most(output.body, MAX_OBJECT_BYTES)
        .await
        .map_err(|err| ReleaseError::Unavailable { location: location.clone(), detail: describe(&err) })?;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_OBJECT_BYTES)]).into_owned();
    let size = declared.max(bytes.len());
    if size > MAX_OBJECT_BYTES {
        return Err(ReleaseError::Invalid {
            location: location.clone(),
            quoted: safe_quote(text.trim()),
            reason: format!("the object is {size} bytes; a SHA file is under {MAX_OBJECT_BYTES}"),
        });
    }
    let sha = Sha::parse(&text).map_err(|e| ReleaseError::invalid(location, e))?;
    Ok(Fetched::Changed(Release { sha, etag, published_at, provenance }))
}

#[cfg(test)]
mod history_tests {
    use super::*;

    fn h(sha: char) -> Historic {
        Historic {
            sha: Sha::parse(&sha.to_string().repeat(7)).unwrap(),
            published_at: None,
            version_id: "v".into(),
            provenance: Provenance::default(),
        }
    }

    #[test]
    fn the_release_before_a_halted_one_comes_from_its_history() {
        let sha = |c: char| Sha::parse(&c.to_string().repeat(7)).unwrap();
        let cases: &[(&str, &[char], char, Option<char>)] = &[
            ("halted is the newest: the one it replaced", &['c', 'b', 'a'], 'c', Some('b')),
            ("published twice: before its newest appearance", &['c', 'c', 'b'], 'c', Some('b')),
            ("rolled back since: the newest other", &['b', 'c', 'a'], 'c', Some('a')),
            ("not in the history: the newest", &['b', 'a'], 'c', Some('b')),
            ("only itself", &['c'], 'c', None),
            ("no history", &[], 'c', None),
        ];
        for (what, history, halted, want) in cases {
            let history: Vec<Historic> = history.iter().map(|c| h(*c)).collect();
            assert_eq!(release_before(&history, &sha(*halted)), want.map(sha), "{what}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An "S3" on loopback that answers every request with `response`.
    async fn answering(response: &'static str) -> aws_config::SdkConfig {
        crate::outside::loopback::sdk_config(crate::outside::loopback::serve(move |_| response.to_owned()).await)
    }

    /// An "S3" on loopback that answers every request 304 Not Modified, as a misbehaving
    /// S3-compatible endpoint might.
    async fn always_not_modified() -> aws_config::SdkConfig {
        answering("HTTP/1.1 304 Not Modified\r\nETag: \"abc\"\r\nConnection: close\r\n\r\n").await
    }

    /// Issue 22, 8: the signature and the time are verified as they were written: a long
    /// signature (a minisign file with a long trusted comment) is kept whole, never cut as
    /// display text is, and anything that is not printable ASCII is dropped, not escaped into
    /// something else.
    #[test]
    fn the_signature_and_time_are_kept_exactly_as_written() {
        let long = "A".repeat(2 * crate::sha::TEXT_LIMIT);
        let meta = std::collections::HashMap::from([
            (META_SIGNATURE.to_owned(), format!(" {long}\n")),
            (META_AT.to_owned(), "2026-12-07T20:00:00Z".to_owned()),
            (META_BY.to_owned(), "ci\u{1b}[2J".to_owned()),
        ]);
        let p = Provenance::from_metadata(Some(&meta));
        assert_eq!(p.signature.as_deref(), Some(long.as_str()), "kept whole");
        assert_eq!(p.at.as_deref(), Some("2026-12-07T20:00:00Z"));
        assert_eq!(p.by.as_deref(), Some("ci\\u{1b}[2J"), "display text is escaped");
        let meta = std::collections::HashMap::from([(META_SIGNATURE.to_owned(), "sig\u{1b}nature".to_owned())]);
        assert_eq!(Provenance::from_metadata(Some(&meta)).signature, None, "not printable: dropped, fails to verify");
    }

    #[tokio::test]
    async fn the_release_carries_its_last_modified_time() {
        let sdk = answering(
            "HTTP/1.1 200 OK\r\nETag: \"e1\"\r\nLast-Modified: Sun, 15 Jun 2025 15:06:40 GMT\r\n\
             Content-Length: 8\r\nConnection: close\r\n\r\n3f2a9c1\n",
        )
        .await;
        let releases = S3Releases::with_aws(&Aws::from_sdk(&sdk));
        let location = ObjectLocation { bucket: "releases".into(), key: "staging/stagebuild.txt".into() };
        let Fetched::Changed(release) = releases.fetch(&location, None).await.unwrap() else { panic!("unchanged") };
        assert_eq!(release.sha, Sha::parse("3f2a9c1").unwrap());
        assert_eq!(release.etag.as_deref(), Some("\"e1\""));
        assert_eq!(release.published_at, Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000)));
    }

    #[tokio::test]
    async fn not_modified_to_an_unconditional_get_is_an_error_not_unchanged() {
        let releases = S3Releases::with_aws(&Aws::from_sdk(&always_not_modified().await));
        let location = ObjectLocation { bucket: "releases".into(), key: "staging/stagebuild.txt".into() };
        match releases.fetch(&location, None).await {
            Err(e @ ReleaseError::UnexpectedNotModified { .. }) => {
                assert!(e.to_string().contains("s3://releases/staging/stagebuild.txt"), "{e}")
            }
            other => panic!("expected UnexpectedNotModified, got {other:?}"),
        }
        // To a conditional GET, 304 is the ordinary "unchanged".
        assert_eq!(releases.fetch(&location, Some("\"abc\"")).await.unwrap(), Fetched::Unchanged);
    }
}
