//! The halt markers and votes of [`crate::fleet::halt`] as S3 objects in the release bucket.
//!
//! A marker is written with `If-None-Match: *`, so the first one wins: a second failing host
//! (or an operator) does not overwrite the first one's reason and rollback target; a vote
//! likewise, once per voter. One read is one `ListObjectsV2` on `<prefix><sha>`, plus a GET for
//! each object it lists (none in the common case). Every call is bounded by [`CALL_TIMEOUT`].
//!
//! IAM: hosts need `s3:PutObject` and `s3:GetObject` on `arn:aws:s3:::<bucket>/<prefix>*`
//! (the policy may narrow `s3:PutObject` to their own vote keys) and `s3:ListBucket` on the
//! bucket with an `s3:prefix` condition on the halt prefix; they never delete there. Only the
//! operator's `unhalt` needs `s3:DeleteObject`. A role without the list permission gets 403
//! for the list: the read falls back to a GET of the marker alone (votes then never count;
//! logged), where S3's 403 for a missing key means "no marker" (see [`HaltMarkers::get`]).
//!
//! [`HaltSource`] is the halt markers as the decision and the loop use them, so that their unit
//! tests run against `MemoryHalts`; [`HaltMarkers`] is the real one.
//!
//! **Bake records** ([`crate::fleet::bake`]) live under the same prefix, in `bake/`:
//! [`HaltMarkers::record_bake`] writes one host's record once per outcome (`If-None-Match: *`,
//! through [`BakeRecorder`] so the agent's unit tests use `MemoryHalts`);
//! [`HaltMarkers::bake_records`] reads a SHA's (one `ListObjectsV2` on `<prefix>bake/<sha>/`,
//! a GET per record); [`HaltMarkers::bake_counts`] counts every SHA's records and votes from
//! one listing of the prefix, reading no body (`releases`). Hosts write them with
//! `s3:PutObject` on `<prefix>bake/<sha>/baked/${aws:userid}` and `.../reverted/...`.
//!
//! Reads and writes: the marker, vote and bake record objects. Decides nothing: what they mean
//! is [`crate::fleet::halt`]'s ([`Reading::halt`](crate::fleet::halt::Reading::halt)) and
//! [`crate::fleet::bake`]'s.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::ProvideErrorMetadata;

use crate::fleet::bake::{self, BakeRecord, Counts, Listed};
use crate::fleet::halt::{marker_key, parse_marker, safe_voter, vote_key, Marker, Reading, Vote, MAX_MARKER_BYTES};
use crate::outside::aws::{describe, describe_call, Aws, RegionUnknown};
use crate::outside::release::ObjectLocation;
use crate::outside::s3::{read_at_most, S3Client};
use crate::sha::{safe_quote, safe_text, Sha};

/// Bound on one marker read, write or removal, response and body together; the same reasoning
/// as [`crate::outside::release::FETCH_TIMEOUT`] (the SDK's own 30 s, plus time for a small body).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(35);

/// Objects one read lists under a SHA: the marker and up to this many votes. A halt needs a
/// few; the bound keeps a read cheap whatever is in the bucket.
const MAX_LISTED: i32 = 100;

/// Why a read or write of the halt objects failed, naming the object.
#[derive(Debug, thiserror::Error)]
pub enum HaltError {
    #[error("bucket {bucket:?} does not exist ({action} {location}): check [release] bucket")]
    NoBucket { bucket: String, action: &'static str, location: ObjectLocation },
    #[error(
        "access denied {action} {location}: the instance role needs s3:PutObject and s3:GetObject on the halt \
         prefix, an operator's unhalt s3:DeleteObject too ({detail})"
    )]
    AccessDenied { action: &'static str, location: ObjectLocation, detail: String },
    #[error("cannot {verb} {location}: {detail}", verb = verb(action))]
    Unavailable { action: &'static str, location: ObjectLocation, detail: String },
    #[error("cannot {verb} {location}: {source}", verb = verb(action))]
    RegionUnknown { action: &'static str, location: ObjectLocation, source: RegionUnknown },
    #[error("{action} {location} timed out: no complete answer within {after:?}")]
    TimedOut { action: &'static str, location: ObjectLocation, after: Duration },
    #[error(
        "refusing to vote under {location}/: the caller identity {voter:?} is not a safe S3 key segment \
         (letters, digits and -_.:+=,@ only)"
    )]
    UnsafeVoter { voter: String, location: ObjectLocation },
    #[error(
        "refusing to write a bake record under {location}: the caller identity {voter:?} is not a safe S3 key \
         segment (letters, digits and -_.:+=,@ only), or the release {sha:?} is not a SHA"
    )]
    UnsafeRecord { voter: String, sha: String, location: ObjectLocation },
}

/// "reading" -> "read", for "cannot read ...".
fn verb(action: &str) -> &str {
    match action {
        "reading" => "read",
        "listing" => "list",
        "writing" => "write",
        "removing" => "remove",
        other => other,
    }
}

/// The halt markers the decision and the loop use; a trait so they are unit-tested with a
/// fake (`MemoryHalts`).
pub trait HaltSource {
    /// The marker and votes of `sha` under `key_prefix`.
    fn read(&self, key_prefix: &str, sha: &Sha) -> impl Future<Output = Result<Reading, HaltError>> + Send;
    /// Records a vote at its voter's key ([`vote_key`] of [`Vote::voter`]), once per voter (a
    /// second one is kept as it was): `true` when this call wrote it.
    fn vote(&self, key_prefix: &str, vote: &Vote) -> impl Future<Output = Result<bool, HaltError>> + Send;
}

/// The markers in the release bucket, through the agent's one [`S3Client`].
#[derive(Clone)]
pub struct HaltMarkers {
    client: S3Client,
    bucket: String,
}

/// How S3 answered a failed call, reduced to what the halt markers tell apart.
enum Failed {
    NotFound,
    /// 412: `If-None-Match: *` found an object; 409: another writer's conditional write of the
    /// same key is in flight. Either way a marker is (being) there.
    Exists,
    Error(HaltError),
}

fn classify<E>(
    err: aws_sdk_s3::error::SdkError<E, HttpResponse>,
    action: &'static str,
    location: &ObjectLocation,
) -> Failed
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = err.raw_response().map(|r| r.status().as_u16());
    let detail = describe_call(&err);
    let code = err.as_service_error().and_then(|e| e.code()).unwrap_or_default().to_owned();
    match (code.as_str(), status) {
        ("NoSuchBucket", _) => {
            Failed::Error(HaltError::NoBucket { bucket: location.bucket.clone(), action, location: location.clone() })
        }
        ("NoSuchKey" | "NotFound", _) | (_, Some(404)) => Failed::NotFound,
        ("PreconditionFailed" | "ConditionalRequestConflict", _) | (_, Some(412 | 409)) => Failed::Exists,
        ("AccessDenied", _) | (_, Some(403)) => {
            Failed::Error(HaltError::AccessDenied { action, location: location.clone(), detail })
        }
        _ => Failed::Error(HaltError::Unavailable { action, location: location.clone(), detail }),
    }
}

impl HaltMarkers {
    /// Markers in `bucket` through `client` (shared with the release reader).
    pub fn new(client: &S3Client, bucket: impl Into<String>) -> HaltMarkers {
        HaltMarkers { client: client.clone(), bucket: bucket.into() }
    }

    /// Markers in `bucket` with a client of their own, in the host's region as resolved by
    /// `aws`.
    pub fn with_aws(aws: &std::sync::Arc<Aws>, bucket: impl Into<String>) -> HaltMarkers {
        HaltMarkers::new(&S3Client::with_aws(aws), bucket)
    }

    /// The same client, for markers in `bucket` (the configured bucket after a reload).
    pub fn in_bucket(&self, bucket: &str) -> HaltMarkers {
        HaltMarkers { client: self.client.clone(), bucket: bucket.to_owned() }
    }

    /// Where the marker of `sha` under `key_prefix` lives.
    pub fn location(&self, key_prefix: &str, sha: &str) -> ObjectLocation {
        ObjectLocation { bucket: self.bucket.clone(), key: format!("{key_prefix}{sha}") }
    }

    /// Runs one call under [`CALL_TIMEOUT`] with the client, once the region is known.
    async fn call<T, F, Fut>(&self, action: &'static str, location: &ObjectLocation, f: F) -> Result<T, HaltError>
    where
        F: FnOnce(aws_sdk_s3::Client, S3Client) -> Fut,
        Fut: Future<Output = Result<T, HaltError>>,
    {
        let client = self
            .client
            .get()
            .await
            .map_err(|source| HaltError::RegionUnknown { action, location: location.clone(), source })?
            .clone();
        tokio::time::timeout(CALL_TIMEOUT, f(client, self.client.clone()))
            .await
            .unwrap_or_else(|_| Err(HaltError::TimedOut { action, location: location.clone(), after: CALL_TIMEOUT }))
    }

    /// Halts `marker.sha` for good unless a marker is already there (the first one wins).
    /// `Ok(true)`: written by this call; `Ok(false)`: one was there, and was kept.
    pub async fn mark(&self, key_prefix: &str, marker: &Marker) -> Result<bool, HaltError> {
        let location = self.location(key_prefix, &marker.sha);
        self.put_new(&location, serde_json::to_vec_pretty(marker).expect("a marker serializes")).await
    }

    /// Records `vote` at its voter's key unless that voter voted already (`If-None-Match: *`);
    /// a voter [`safe_voter`] refuses is an error, and nothing is written.
    pub async fn vote(&self, key_prefix: &str, vote: &Vote) -> Result<bool, HaltError> {
        let sha = Sha::parse(&vote.sha).map_err(|e| HaltError::Unavailable {
            action: "writing",
            location: self.location(key_prefix, &vote.sha),
            detail: e.to_string(),
        })?;
        let Some(key) = vote_key(key_prefix, &sha, &vote.voter) else {
            return Err(HaltError::UnsafeVoter {
                voter: vote.voter.clone(),
                location: self.location(key_prefix, &vote.sha),
            });
        };
        let location = ObjectLocation { bucket: self.bucket.clone(), key };
        self.put_new(&location, serde_json::to_vec_pretty(vote).expect("a vote serializes")).await
    }

    /// Writes `body` at `location` unless an object is there (`If-None-Match: *`): `Ok(true)`
    /// written, `Ok(false)` one was there and was kept.
    async fn put_new(&self, location: &ObjectLocation, body: Vec<u8>) -> Result<bool, HaltError> {
        const ACTION: &str = "writing";
        self.call(ACTION, location, |client, s3| async move {
            let sent = s3
                .send(|| {
                    client
                        .put_object()
                        .bucket(&location.bucket)
                        .key(&location.key)
                        .content_type("application/json")
                        .if_none_match("*")
                        .body(body.clone().into())
                        .send()
                })
                .await;
            match sent {
                Ok(_) => Ok(true),
                Err(err) => match classify(err, ACTION, location) {
                    Failed::Exists => Ok(false),
                    // A 404 to a PUT is the bucket's.
                    Failed::NotFound => Err(HaltError::NoBucket {
                        bucket: location.bucket.clone(),
                        action: ACTION,
                        location: location.clone(),
                    }),
                    Failed::Error(e) => Err(e),
                },
            }
        })
        .await
    }

    /// The keys under `<prefix><sha>`: the marker's and the votes' (at most [`MAX_LISTED`]).
    /// `Ok(None)` when the role may not list (403): see the module docs.
    async fn list(&self, key_prefix: &str, sha: &Sha) -> Result<Option<Vec<String>>, HaltError> {
        const ACTION: &str = "listing";
        let location = &self.location(key_prefix, sha.as_str());
        self.call(ACTION, location, |client, s3| async move {
            let listed = s3
                .send(|| {
                    client.list_objects_v2().bucket(&location.bucket).prefix(&location.key).max_keys(MAX_LISTED).send()
                })
                .await;
            match listed {
                Ok(out) => {
                    let vote_start = format!("{}/", location.key);
                    let keys = out
                        .contents()
                        .iter()
                        .filter_map(|o| o.key())
                        .filter(|k| *k == location.key || k.starts_with(&vote_start))
                        .map(str::to_owned)
                        .collect();
                    Ok(Some(keys))
                }
                Err(err) => match classify(err, ACTION, location) {
                    Failed::Error(HaltError::AccessDenied { detail, .. }) => {
                        tracing::debug!(%location, "403 listing the halt prefix: votes cannot be read ({detail})");
                        Ok(None)
                    }
                    Failed::NotFound => Err(HaltError::NoBucket {
                        bucket: location.bucket.clone(),
                        action: ACTION,
                        location: location.clone(),
                    }),
                    Failed::Exists => Ok(Some(Vec::new())),
                    Failed::Error(e) => Err(e),
                },
            }
        })
        .await
    }

    /// The marker and votes of `sha`: one list, then a GET of each object found. A role that
    /// may not list reads the marker alone: votes are only found by listing (logged once per
    /// process).
    pub async fn read(&self, key_prefix: &str, sha: &Sha) -> Result<Reading, HaltError> {
        // Boxed: a list and several GETs nest deep enough to pass rustc's layout recursion
        // limit in the callers' futures.
        Box::pin(self.read_objects(key_prefix, sha)).await
    }

    async fn read_objects(&self, key_prefix: &str, sha: &Sha) -> Result<Reading, HaltError> {
        static WARNED: std::sync::Once = std::sync::Once::new();
        let Some(keys) = self.list(key_prefix, sha).await? else {
            WARNED.call_once(|| {
                tracing::warn!(
                    "the instance role may not list the halt prefix (s3:ListBucket with an s3:prefix condition, \
                     see docs/iam.md): other hosts' halt votes are not counted, only markers"
                )
            });
            return Ok(Reading { marker: self.get(key_prefix, sha).await?, votes: Vec::new() });
        };
        let marker_key = marker_key(key_prefix, sha);
        let vote_start = format!("{marker_key}/");
        let mut reading = Reading::default();
        for key in keys {
            if key == marker_key {
                reading.marker = self.get(key_prefix, sha).await?;
                continue;
            }
            let Some(voter) = key.strip_prefix(&vote_start).filter(|v| safe_voter(v)) else {
                tracing::debug!(key = %safe_text(&key), "ignoring an object whose key names no voter");
                continue;
            };
            let Some(bytes) = self.body(&key).await? else { continue };
            match serde_json::from_slice::<Vote>(&bytes) {
                Ok(vote) if vote.voter == voter => {
                    reading.votes.push(Vote { key_voter: Some(voter.to_owned()), ..vote })
                }
                Ok(vote) if vote.voter.is_empty() => {
                    tracing::debug!(
                        key,
                        "ignoring a halt vote that names no voter (an agent that keyed votes by host id)"
                    )
                }
                Ok(vote) => tracing::warn!(
                    key, voter, body_voter = %safe_text(&vote.voter),
                    "ignoring the halt vote at {key}: its body names voter {}, its key {voter}; a vote counts only \
                     at its writer's own key",
                    safe_quote(&vote.voter)
                ),
                Err(e) => tracing::debug!(key, "ignoring an object that is not a vote: {e}"),
            }
        }
        Ok(reading)
    }

    /// The body of `key` (at most [`MAX_MARKER_BYTES`] + a chunk); `None` when it is gone (or
    /// a 403: see [`HaltMarkers::get`]).
    async fn body(&self, key: &str) -> Result<Option<Vec<u8>>, HaltError> {
        const ACTION: &str = "reading";
        let location = &ObjectLocation { bucket: self.bucket.clone(), key: key.to_owned() };
        self.call(ACTION, location, |client, s3| async move {
            let get = || client.get_object().bucket(&location.bucket).key(&location.key).send();
            let output = match s3.send(get).await {
                Ok(output) => output,
                Err(err) => {
                    return match classify(err, ACTION, location) {
                        Failed::NotFound | Failed::Exists => Ok(None),
                        Failed::Error(HaltError::AccessDenied { detail, .. }) => {
                            tracing::debug!(%location, "403 reading {location}: no such object ({detail})");
                            Ok(None)
                        }
                        Failed::Error(e) => Err(e),
                    }
                }
            };
            let bytes = read_at_most(output.body, MAX_MARKER_BYTES).await.map_err(|err| HaltError::Unavailable {
                action: ACTION,
                location: location.clone(),
                detail: describe(&err),
            })?;
            Ok(Some(bytes))
        })
        .await
    }

    /// Removes the votes on `sha` (an `unhalt`). Returns how many there were; none when the
    /// role may not list.
    pub async fn clear_votes(&self, key_prefix: &str, sha: &Sha) -> Result<usize, HaltError> {
        let Some(keys) = self.list(key_prefix, sha).await? else { return Ok(0) };
        let marker_key = marker_key(key_prefix, sha);
        let mut removed = 0;
        for key in keys.into_iter().filter(|k| *k != marker_key) {
            self.delete(&ObjectLocation { bucket: self.bucket.clone(), key }).await?;
            removed += 1;
        }
        Ok(removed)
    }

    /// The marker of `sha`, or `None` when there is none.
    ///
    /// `None` also for a 403: with the policy this agent documents (no `s3:ListBucket`), S3
    /// answers 403 for a missing key, and the role may read everything under the prefix, so
    /// a 403 there is S3's "no such key". (A role that lacks `s3:GetObject` on the prefix
    /// looks the same: its halts are then ignored, since the two cannot be told apart.)
    ///
    /// A marker whose body is not a marker (empty, not JSON, too large: an operator's
    /// `aws s3 cp /dev/null ...`) still halts: its existence is what counts, and the reason
    /// says what was found.
    pub async fn get(&self, key_prefix: &str, sha: &Sha) -> Result<Option<Marker>, HaltError> {
        let location = self.location(key_prefix, sha.as_str());
        Ok(self.body(&location.key).await?.map(|bytes| parse_marker(&bytes, sha, &location)))
    }

    /// Removes the marker of `sha`. `Some(true)` when there was one, `Some(false)` when there
    /// was none, `None` when S3 would not say (a 403 to the HEAD: a role that may delete but
    /// not read). The removal is sent in any case (S3 answers a DELETE of a missing key with
    /// success too), so an `unhalt` by a role that cannot read the marker still removes it.
    pub async fn clear(&self, key_prefix: &str, sha: &Sha) -> Result<Option<bool>, HaltError> {
        let location = &self.location(key_prefix, sha.as_str());
        let existed = self
            .call("reading", location, |client, s3| async move {
                let head = || client.head_object().bucket(&location.bucket).key(&location.key).send();
                match s3.send(head).await {
                    Ok(_) => Ok(Some(true)),
                    Err(err) => match classify(err, "reading", location) {
                        Failed::NotFound => Ok(Some(false)),
                        Failed::Error(HaltError::AccessDenied { .. }) => Ok(None),
                        Failed::Exists => Ok(Some(true)),
                        Failed::Error(e) => Err(e),
                    },
                }
            })
            .await?;
        self.delete(location).await?;
        Ok(existed)
    }

    /// Deletes `location`; one already gone is no error.
    async fn delete(&self, location: &ObjectLocation) -> Result<(), HaltError> {
        self.call("removing", location, |client, s3| async move {
            let delete = || client.delete_object().bucket(&location.bucket).key(&location.key).send();
            match s3.send(delete).await {
                Ok(_) => Ok(()),
                Err(err) => match classify(err, "removing", location) {
                    Failed::NotFound | Failed::Exists => Ok(()),
                    Failed::Error(e) => Err(e),
                },
            }
        })
        .await
    }
}

/// Pages of 1000 keys [`HaltMarkers::bake_records`] lists under one SHA (a record per host and
/// outcome). Beyond them the read fails rather than miss a revert: `reverted/` sorts after
/// `baked/`, so a cut listing would drop the evidence against a release first.
const MAX_RECORD_PAGES: usize = 10;

/// Pages [`HaltMarkers::bake_counts`] lists under a halt prefix (1000 keys each): bounds one
/// `releases` however much the prefix holds; beyond it the counts are of what was listed.
const MAX_COUNT_PAGES: usize = 20;

/// Where the agent writes what its bakes found; a trait so the loop's unit tests use
/// `MemoryHalts`.
pub trait BakeRecorder {
    /// Records `record` at its key ([`bake::record_key`]), once per voter and outcome (a second
    /// one is kept as it was): `true` when this call wrote it.
    fn record_bake(
        &self,
        key_prefix: &str,
        record: &BakeRecord,
    ) -> impl Future<Output = Result<bool, HaltError>> + Send;
}

impl HaltMarkers {
    /// Records `record` at `<prefix>bake/<sha>/<baked|reverted>/<voter>` unless that voter
    /// recorded that outcome of the release already (`If-None-Match: *`): `Ok(true)` written,
    /// `Ok(false)` one was there and was kept. A voter [`crate::fleet::halt::safe_voter`]
    /// refuses, or a `sha` that is not one, is an error, and nothing is written.
    pub async fn record_bake(&self, key_prefix: &str, record: &BakeRecord) -> Result<bool, HaltError> {
        let Some(key) = bake::record_key(key_prefix, record) else {
            return Err(HaltError::UnsafeRecord {
                voter: record.voter.clone(),
                sha: record.sha.clone(),
                location: ObjectLocation { bucket: self.bucket.clone(), key: format!("{key_prefix}{}", bake::FOLDER) },
            });
        };
        let location = ObjectLocation { bucket: self.bucket.clone(), key };
        self.put_new(&location, serde_json::to_vec_pretty(record).expect("a record serializes")).await
    }

    /// The bake records of `sha` that count for `environment` ([`bake::read_record`]): one
    /// listing of `<prefix>bake/<sha>/`, then a GET of each record. Unlike the vote read, a
    /// role that may not list gets the error: `promote` must not pass a release on evidence
    /// it could not read.
    pub async fn bake_records(
        &self,
        key_prefix: &str,
        sha: &Sha,
        environment: &str,
    ) -> Result<Vec<BakeRecord>, HaltError> {
        Box::pin(self.read_records(key_prefix, sha, environment)).await
    }

    async fn read_records(&self, key_prefix: &str, sha: &Sha, environment: &str) -> Result<Vec<BakeRecord>, HaltError> {
        let folder = bake::sha_folder(key_prefix, sha);
        let (keys, complete) = self.list_keys(&folder, 1000, MAX_RECORD_PAGES).await?;
        if !complete {
            return Err(HaltError::Unavailable {
                action: "listing",
                location: ObjectLocation { bucket: self.bucket.clone(), key: folder },
                detail: format!("over {} bake records: not all could be read", MAX_RECORD_PAGES * 1000),
            });
        }
        let mut records = Vec::new();
        for key in keys {
            let Some(Listed::Record { kind, voter, .. }) = bake::parse_key(key_prefix, &key) else {
                tracing::debug!(key = %safe_text(&key), "ignoring an object that is not a bake record");
                continue;
            };
            let Some(bytes) = self.body(&key).await? else { continue };
            let location = ObjectLocation { bucket: self.bucket.clone(), key };
            match bake::read_record(sha, kind, &voter, &bytes, environment, &location) {
                Ok(record) => records.push(record),
                Err(why) => tracing::warn!(%location, "ignoring a bake record: {why}"),
            }
        }
        Ok(records)
    }

    /// The bake records and votes of every SHA under `key_prefix`, counted from the keys of
    /// one listing (paged, at most [`MAX_COUNT_PAGES`]); no body is read. `None` when the role
    /// may not list the prefix.
    pub async fn bake_counts(&self, key_prefix: &str) -> Result<Option<BTreeMap<String, Counts>>, HaltError> {
        match self.list_keys(key_prefix, 1000, MAX_COUNT_PAGES).await {
            Ok((keys, complete)) => {
                if !complete {
                    tracing::warn!(
                        prefix = key_prefix,
                        "over {} objects under the halt prefix: bakes and votes are counted among the first ones",
                        MAX_COUNT_PAGES * 1000
                    );
                }
                Ok(Some(bake::count_keys(key_prefix, keys.iter().map(String::as_str))))
            }
            Err(HaltError::AccessDenied { detail, location, .. }) => {
                tracing::debug!(%location, "403 listing the halt prefix: no bake counts ({detail})");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The keys under `prefix`, `page` per request and at most `pages` requests, and whether
    /// that was all of them.
    async fn list_keys(&self, prefix: &str, page: i32, pages: usize) -> Result<(Vec<String>, bool), HaltError> {
        const ACTION: &str = "listing";
        let location = &ObjectLocation { bucket: self.bucket.clone(), key: prefix.to_owned() };
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..pages {
            let listed = self
                .call(ACTION, location, |client, s3| {
                    let token = token.clone();
                    async move {
                        s3.send(|| {
                            client
                                .list_objects_v2()
                                .bucket(&location.bucket)
                                .prefix(&location.key)
                                .max_keys(page)
                                .set_continuation_token(token.clone())
                                .send()
                        })
                        .await
                        .map_err(|err| match classify(err, ACTION, location) {
                            Failed::Error(e) => e,
                            Failed::NotFound | Failed::Exists => HaltError::NoBucket {
                                bucket: location.bucket.clone(),
                                action: ACTION,
                                location: location.clone(),
                            },
                        })
                    }
                })
                .await?;
            keys.extend(listed.contents().iter().filter_map(|o| o.key()).map(str::to_owned));
            token = listed.next_continuation_token().map(str::to_owned).filter(|_| listed.is_truncated() == Some(true));
            if token.is_none() {
                return Ok((keys, true));
            }
        }
        Ok((keys, false))
    }
}

impl BakeRecorder for HaltMarkers {
    async fn record_bake(&self, key_prefix: &str, record: &BakeRecord) -> Result<bool, HaltError> {
        HaltMarkers::record_bake(self, key_prefix, record).await
    }
}

impl HaltSource for HaltMarkers {
    async fn read(&self, key_prefix: &str, sha: &Sha) -> Result<Reading, HaltError> {
        HaltMarkers::read(self, key_prefix, sha).await
    }

    async fn vote(&self, key_prefix: &str, vote: &Vote) -> Result<bool, HaltError> {
        HaltMarkers::vote(self, key_prefix, vote).await
    }
}

/// Halt markers in memory, for unit tests of the modules that read and write them.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct MemoryHalts {
    pub(crate) markers: std::sync::Mutex<std::collections::BTreeMap<String, Marker>>,
    pub(crate) votes: std::sync::Mutex<std::collections::BTreeMap<String, Vote>>,
    /// Bake records by key ([`bake::record_key`]).
    pub(crate) records: std::sync::Mutex<std::collections::BTreeMap<String, BakeRecord>>,
}

#[cfg(test)]
impl BakeRecorder for MemoryHalts {
    async fn record_bake(&self, key_prefix: &str, record: &BakeRecord) -> Result<bool, HaltError> {
        let Some(key) = bake::record_key(key_prefix, record) else {
            let location = ObjectLocation { bucket: "memory".into(), key: format!("{key_prefix}{}", bake::FOLDER) };
            return Err(HaltError::UnsafeRecord { voter: record.voter.clone(), sha: record.sha.clone(), location });
        };
        Ok(insert_new(&mut self.records.lock().unwrap(), key, record))
    }
}

#[cfg(test)]
impl MemoryHalts {
    pub(crate) async fn get(&self, key_prefix: &str, sha: &Sha) -> Result<Option<Marker>, HaltError> {
        Ok(self.markers.lock().unwrap().get(&marker_key(key_prefix, sha)).cloned())
    }

    pub(crate) async fn mark(&self, key_prefix: &str, marker: &Marker) -> Result<bool, HaltError> {
        let key = format!("{key_prefix}{}", marker.sha);
        Ok(insert_new(&mut self.markers.lock().unwrap(), key, marker))
    }
}

#[cfg(test)]
impl HaltSource for MemoryHalts {
    async fn read(&self, key_prefix: &str, sha: &Sha) -> Result<Reading, HaltError> {
        let marker = self.markers.lock().unwrap().get(&marker_key(key_prefix, sha)).cloned();
        let start = format!("{}/", marker_key(key_prefix, sha));
        let votes = self
            .votes
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(k, v)| Some(Vote { key_voter: Some(k.strip_prefix(&start)?.to_owned()), ..v.clone() }))
            .collect();
        Ok(Reading { marker, votes })
    }

    async fn vote(&self, key_prefix: &str, vote: &Vote) -> Result<bool, HaltError> {
        let sha = Sha::parse(&vote.sha).expect("a vote names a valid SHA");
        let Some(key) = vote_key(key_prefix, &sha, &vote.voter) else {
            let location = ObjectLocation { bucket: "memory".into(), key: marker_key(key_prefix, &sha) };
            return Err(HaltError::UnsafeVoter { voter: vote.voter.clone(), location });
        };
        Ok(insert_new(&mut self.votes.lock().unwrap(), key, vote))
    }
}

/// Inserts `value` at `key` unless something is there, as `If-None-Match: *` writes: `true`
/// when it was inserted.
#[cfg(test)]
fn insert_new<T: Clone>(map: &mut std::collections::BTreeMap<String, T>, key: String, value: &T) -> bool {
    match map.entry(key) {
        std::collections::btree_map::Entry::Vacant(slot) => {
            slot.insert(value.clone());
            true
        }
        std::collections::btree_map::Entry::Occupied(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::halt::cast;

    fn sha(s: &str) -> Sha {
        Sha::parse(s).unwrap()
    }

    /// `unhalt` by a role that may delete but not read: S3 answers the HEAD 403 and the DELETE
    /// 204. The marker may well have been there: "not halted" would be a lie.
    #[tokio::test]
    async fn a_removal_whose_head_is_refused_does_not_claim_there_was_nothing() {
        let endpoint = crate::outside::loopback::serve(|head| {
            if head.starts_with("HEAD ") {
                "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
            } else {
                "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_owned()
            }
        })
        .await;
        let sdk = crate::outside::loopback::sdk_config(endpoint);
        let markers = HaltMarkers::with_aws(&Aws::from_sdk(&sdk), "b");
        assert_eq!(markers.clear("staging/halted/", &sha("3f2a9c1")).await.unwrap(), None);
    }

    #[tokio::test]
    async fn memory_halts_key_votes_by_voter() {
        let halts = MemoryHalts::default();
        assert!(halts.vote("staging/halted/", &cast(None, "AROAEXAMPLE:i-0aaa", "i-0aaa")).await.unwrap());
        assert!(!halts.vote("staging/halted/", &cast(None, "AROAEXAMPLE:i-0aaa", "i-0other")).await.unwrap());
        let err = halts.vote("staging/halted/", &cast(None, "a/b", "i-0aaa")).await.unwrap_err();
        assert!(matches!(err, HaltError::UnsafeVoter { .. }), "{err}");
        let reading = halts.read("staging/halted/", &sha("3f2a9c1")).await.unwrap();
        assert_eq!(reading.votes.len(), 1);
        assert_eq!(reading.votes[0].key_voter.as_deref(), Some("AROAEXAMPLE:i-0aaa"));
    }

    /// A `ListObjectsV2` answer holding `keys`, cut after them (`next` token) or complete.
    fn listing(keys: &[&str], next: Option<&str>) -> String {
        let contents: String =
            keys.iter().map(|k| format!("<Contents><Key>{k}</Key><Size>2</Size></Contents>")).collect();
        let more = match next {
            Some(token) => {
                format!("<IsTruncated>true</IsTruncated><NextContinuationToken>{token}</NextContinuationToken>")
            }
            None => "<IsTruncated>false</IsTruncated>".to_owned(),
        };
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <Name>b</Name><KeyCount>{}</KeyCount>{more}{contents}</ListBucketResult>",
            keys.len()
        );
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    /// `releases` counts every page of the listing; `promote`'s read fails rather than miss the
    /// records beyond its bound (a cut listing would drop `reverted/`, which sorts last).
    #[tokio::test]
    async fn counts_follow_every_page_and_a_cut_record_listing_fails() {
        let endpoint = crate::outside::loopback::serve(|head| {
            let first = head.lines().next().unwrap_or_default();
            match (first.contains("continuation-token=page2"), first.contains("prefix=staging%2Fhalted%2Fbake%2F")) {
                // The SHA's folder: a listing that never ends.
                (_, true) => listing(&["staging/halted/bake/3f2a9c1/baked/AROA:i-1"], Some("again")),
                (false, false) => listing(
                    &["staging/halted/3f2a9c1/AROA:i-1", "staging/halted/bake/3f2a9c1/baked/AROA:i-2"],
                    Some("page2"),
                ),
                (true, false) => listing(&["staging/halted/bake/3f2a9c1/reverted/AROA:i-1"], None),
            }
        })
        .await;
        let markers = HaltMarkers::with_aws(&Aws::from_sdk(&crate::outside::loopback::sdk_config(endpoint)), "b");
        let counts = markers.bake_counts("staging/halted/").await.unwrap().unwrap();
        assert_eq!(counts["3f2a9c1"], Counts { baked: 1, reverted: 1, votes: 1 }, "{counts:?}");
        let err = markers.bake_records("staging/halted/", &sha("3f2a9c1"), "staging").await.unwrap_err();
        assert!(err.to_string().contains("over 10000 bake records"), "{err}");
    }

    #[tokio::test]
    async fn memory_halts_keep_one_record_per_voter_and_outcome() {
        use crate::fleet::bake::{record, BakeOutcome};
        use crate::fleet::verdict::Blame;
        let halts = MemoryHalts::default();
        let baked = record("AROAEXAMPLE:i-0aaa", "i-0aaa", BakeOutcome::Baked);
        let back =
            record("AROAEXAMPLE:i-0aaa", "i-0aaa", BakeOutcome::Reverted { reason: "exit".into(), blame: Blame::Host });
        assert!(halts.record_bake("staging/halted/", &baked).await.unwrap());
        assert!(!halts.record_bake("staging/halted/", &baked).await.unwrap());
        assert!(halts.record_bake("staging/halted/", &back).await.unwrap());
        let keys: Vec<String> = halts.records.lock().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "staging/halted/bake/3f2a9c1/baked/AROAEXAMPLE:i-0aaa",
                "staging/halted/bake/3f2a9c1/reverted/AROAEXAMPLE:i-0aaa"
            ]
        );
        let unsafe_voter = record("a/b", "i-0aaa", BakeOutcome::Baked);
        let err = halts.record_bake("staging/halted/", &unsafe_voter).await.unwrap_err();
        assert!(matches!(err, HaltError::UnsafeRecord { .. }), "{err}");
    }

    #[tokio::test]
    async fn memory_halts_keep_the_first_marker() {
        let halts = MemoryHalts::default();
        let marker = |reason: &str| Marker {
            sha: "3f2a9c1".into(),
            environment: "staging".into(),
            instance_id: "i-1".into(),
            reason: reason.into(),
            at: 1,
            rolled_back_to: None,
            by: None,
        };
        assert_eq!(halts.get("staging/halted/", &sha("3f2a9c1")).await.unwrap(), None);
        assert!(halts.mark("staging/halted/", &marker("first")).await.unwrap());
        assert!(!halts.mark("staging/halted/", &marker("second")).await.unwrap());
        assert_eq!(halts.get("staging/halted/", &sha("3f2a9c1")).await.unwrap().unwrap().reason, "first");
        assert_eq!(halts.get("production/halted/", &sha("3f2a9c1")).await.unwrap(), None);
    }
}
