//! The CI half of the pipeline, from the same binary and config as the hosts: `publish` a
//! release, list what was published (`releases`), `rollback` and `promote`.
//!
//! A publish checks that `<repository>:<sha>` exists in ECR and reads its manifest digest
//! (DescribeImages), refuses a SHA halted for the environment, and writes the release object
//! as a conditional write (`If-Match` the ETag it read, `If-None-Match: *` for the first), so
//! two pipelines publishing at once cannot silently overwrite each other: one wins, the other
//! fails and says so. The body stays the bare SHA (every reader, old or new, understands it);
//! the digest, who, when and which pipeline go in the object's user metadata
//! ([`Provenance`]). Hosts then run exactly that digest. Any failure leaves the object as it
//! was.
//!
//! History is the release object's own S3 versions (the bucket's versioning on): `releases`
//! lists them, `rollback` publishes the one before the current, `promote` publishes to one
//! environment the exact digest another one has, after a soak time there and on the evidence
//! of its hosts: no host of it reverted the release or voted against it (unless `--force`),
//! and, with `--baked-by N`, at least N of them finished a bake of it
//! ([`crate::fleet::bake::judge_promotion`]). `releases` shows per release how many hosts baked
//! it, reverted it and voted against it (one listing of the halt prefix).
//!
//! Reads: ECR, the release objects and their versions, halt markers, votes and bake records
//! (one S3 client for all). Writes: one release object per command. Decides: whether a
//! publish, rollback or promote is refused (not in ECR, halted, a digest that moved, unsigned,
//! still soaking, reverted or voted against, too few bakes).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::Settings;
use crate::fleet::bake::{judge_promotion, Evidence, Refusal};
use crate::outside::aws::Aws;
use crate::outside::halts::{HaltError, HaltMarkers};
use crate::outside::registry::{Ecr, RegistryError};
use crate::outside::release::{
    Expect, Fetched, Historic, ObjectLocation, Provenance, ReleaseError, ReleaseSource, S3Releases, WriteError,
};
use crate::outside::s3::S3Client;
use crate::pass::desired::Trust;
use crate::pass::named::{Known, NameError};
use crate::sha::Sha;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("{image} is not in ECR: push it first (a typo, or a push that failed?); nothing was written")]
    NotInEcr { image: String },
    #[error("{0}; nothing was written")]
    Registry(#[from] RegistryError),
    #[error(
        "{image} is {now} in ECR, but it was published as {published}: the tag was pushed again after it was \
         published; nothing was written (publish the new content under its own SHA)"
    )]
    DigestMoved { image: String, published: String, now: String },
    #[error(
        "{sha} is halted for {environment} by {by}: {reason}; `blog-agent --env {environment} unhalt {sha}` \
         first if it is fit after all; nothing was written"
    )]
    Halted { sha: Sha, environment: String, by: String, reason: String },
    #[error("cannot read the halts of {sha} ({0}); nothing was written", sha = .1)]
    HaltUnknown(Box<HaltError>, Sha),
    #[error("{0}; nothing was written")]
    Read(ReleaseError),
    #[error("{0}; nothing was written")]
    Clock(#[from] crate::runtime::clock::ClockOff),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(
        "hosts require signed releases ([release] public_key), and BLOG_AGENT_SIGNING_KEY names no minisign \
         secret key to sign with; nothing was written"
    )]
    Unsigned,
    #[error("{0}; nothing was written")]
    Signing(String),
    #[error("{environment} has no release key in [release.keys] of the configuration")]
    UnknownEnvironment { environment: String },
    #[error(
        "{sha} is not a signed release of {environment}: no version of {location} names it with a signature that \
         verifies with [release] public_key; signed releases there: {signed}; nothing was written"
    )]
    Unverified { sha: Sha, environment: String, location: ObjectLocation, signed: String },
    /// `hosts`: each host and what it did, for the operator to look at before `--force`.
    #[error(
        "{sha} was reverted or voted against by {count} host(s) of {environment}: {hosts}; if it is fit after all, \
         promote it with --force; nothing was written"
    )]
    Against { sha: Sha, environment: String, count: usize, hosts: String },
    #[error(
        "{sha} finished a bake on {baked} host(s) of {environment}{hosts}, and --baked-by asks for {wanted}: wait \
         for more hosts to bake it (`blog-agent --env {environment} releases` counts them), or lower --baked-by; \
         nothing was written"
    )]
    TooFewBakes { sha: Sha, environment: String, baked: usize, wanted: u32, hosts: String },
    #[error("cannot read the bake records of {sha} ({0}); nothing was written", sha = .1)]
    EvidenceUnknown(Box<HaltError>, Sha),
    #[error("{sha} was never published to {environment} ({location} and its versions): nothing to {what}")]
    NeverPublished { sha: Sha, environment: String, location: ObjectLocation, what: &'static str },
    /// `detail`: when it was published there, how long ago, and when it may be promoted.
    #[error("{sha} has not soaked in {environment} yet: {detail}; nothing was written")]
    Soaking { sha: Sha, environment: String, detail: String },
    #[error(
        "{location} has no earlier release that is not halted (the bucket keeps {count} versions of it{hint}); \
         name one with --to"
    )]
    NothingToRollBackTo { location: ObjectLocation, count: usize, hint: &'static str },
    /// A SHA as typed names no single release of the environment's history.
    #[error("{0}")]
    Name(#[from] NameError),
}

impl PublishError {
    fn halted(sha: &Sha, environment: &str, halt: &crate::fleet::halt::Marker) -> PublishError {
        PublishError::Halted {
            sha: sha.clone(),
            environment: environment.to_owned(),
            by: halt.who(),
            reason: crate::sha::safe_text(&halt.reason),
        }
    }

    /// A refusal of what was asked (as opposed to AWS trouble): the pipeline should stop, not
    /// retry. Both kinds exit 1 (a pipeline stops on either); the split is for messages and
    /// tests.
    pub fn is_refusal(&self) -> bool {
        !matches!(
            self,
            PublishError::Registry(_)
                | PublishError::Read(_)
                | PublishError::HaltUnknown(..)
                | PublishError::EvidenceUnknown(..)
        )
    }
}

/// Whether a release object that already names the SHA and digest is written again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rewrite {
    /// `publish`: written only when it names another release, or its signature does not
    /// verify (a key rotation): a pipeline that runs twice writes once.
    IfChanged,
    /// `rollback`, `promote`: an operator's decision, signed with a fresh time, so hosts
    /// follow it even over a replayed copy of the same release.
    Always,
}

/// What a publish did.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    pub environment: String,
    pub sha: String,
    pub digest: String,
    pub location: String,
    /// The release it replaced, if any.
    pub replaced: Option<String>,
    /// It was published already, with this digest: nothing was written.
    pub unchanged: bool,
}

/// One published release, for `releases`.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseEntry {
    pub sha: String,
    pub digest: Option<String>,
    /// RFC 3339, S3's time of the write.
    pub published_at: Option<String>,
    pub published_by: Option<String>,
    pub pipeline: Option<String>,
    pub halted: bool,
    /// Its signature verifies with `[release] public_key` (always, without a key): hosts may
    /// run it.
    pub verified: bool,
    /// The release the environment's hosts follow now (the newest).
    pub current: bool,
    /// Hosts of the environment that finished a bake of it, reverted it, voted against it:
    /// one per record or vote key ([`crate::fleet::bake::count_keys`]). `null` when the
    /// halt prefix cannot be listed.
    pub baked: Option<usize>,
    pub reverted: Option<usize>,
    pub votes: Option<usize>,
}

/// What `promote` asks of `--from` besides a signed, unhalted release.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromoteRules {
    /// How long it must have been published there (`--soak`).
    pub soak: Duration,
    /// Promote it even though hosts there reverted it or voted against it (`--force`).
    pub force: bool,
    /// At least this many hosts there finished a bake of it (`--baked-by`; 0: none needed).
    pub baked_by: u32,
}

/// The history of one environment's release object.
#[derive(Debug, Clone, Serialize)]
pub struct History {
    pub environment: String,
    pub location: String,
    /// Newest first.
    pub releases: Vec<ReleaseEntry>,
    /// The bucket keeps no versions of the object: only the current release is known.
    pub versioning_off: bool,
}

/// The clients the pipeline commands use.
pub struct Pipeline {
    settings: Settings,
    releases: S3Releases,
    ecr: Ecr,
    halts: HaltMarkers,
}

/// Who is publishing: `BLOG_AGENT_PUBLISHER`, else the operator (user@host).
fn publisher() -> String {
    std::env::var("BLOG_AGENT_PUBLISHER")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(crate::runtime::operator::operator)
}

/// Which pipeline run is publishing: `BLOG_AGENT_PIPELINE`, else CircleCI's build URL, else
/// GitHub Actions' run URL.
fn pipeline_run() -> Option<String> {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
    var("BLOG_AGENT_PIPELINE").or_else(|| var("CIRCLE_BUILD_URL")).or_else(|| {
        Some(format!(
            "{}/{}/actions/runs/{}",
            var("GITHUB_SERVER_URL")?,
            var("GITHUB_REPOSITORY")?,
            var("GITHUB_RUN_ID")?
        ))
    })
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Pipeline {
    pub async fn connect(settings: Settings) -> Pipeline {
        let registry = settings.image.repository.registry.clone();
        let aws: Arc<Aws> = Aws::load(&registry).await;
        let s3 = S3Client::with_aws(&aws);
        Pipeline {
            releases: S3Releases::new(&s3),
            ecr: Ecr::for_registry(&aws, &registry),
            halts: HaltMarkers::new(&s3, settings.release.bucket.clone()),
            settings,
        }
    }

    fn location(&self, environment: &str) -> Result<ObjectLocation, PublishError> {
        let key = self
            .settings
            .release_key(environment)
            .ok_or_else(|| PublishError::UnknownEnvironment { environment: environment.to_owned() })?;
        Ok(ObjectLocation { bucket: self.settings.release.bucket.clone(), key: key.to_owned() })
    }

    /// The halt in force for `sha` in `environment`, if any.
    async fn halt_of(&self, environment: &str, sha: &Sha) -> Result<Option<crate::fleet::halt::Marker>, PublishError> {
        let reading = self.halt_reading(environment, sha).await?;
        Ok(reading.halt(sha, environment, self.settings.rollout.halt_after))
    }

    /// The halt marker and votes of `sha` in `environment`.
    async fn halt_reading(&self, environment: &str, sha: &Sha) -> Result<crate::fleet::halt::Reading, PublishError> {
        let prefix = self.settings.halt_prefix(environment);
        self.halts.read(&prefix, sha).await.map_err(|e| PublishError::HaltUnknown(Box::new(e), sha.clone()))
    }

    /// Publishes `sha` to `environment`. `digest`: the digest it must have (a rollback or a
    /// promotion carries the one published before); `None`: whatever ECR has for the tag.
    pub async fn publish(&self, environment: &str, sha: &Sha, digest: Option<&str>) -> Result<Published, PublishError> {
        self.write_release(environment, sha, digest, Rewrite::IfChanged).await
    }

    async fn write_release(
        &self,
        environment: &str,
        sha: &Sha,
        digest: Option<&str>,
        rewrite: Rewrite,
    ) -> Result<Published, PublishError> {
        let location = self.location(environment)?;
        let repository = &self.settings.image.repository;
        let image = repository.reference(sha.as_str());
        let now = self
            .ecr
            .image_digest(&repository.registry, &repository.path, sha.as_str())
            .await?
            .ok_or(PublishError::NotInEcr { image: image.clone() })?;
        if let Some(published) = digest.filter(|d| *d != now) {
            return Err(PublishError::DigestMoved { image, published: published.to_owned(), now });
        }
        if let Some(halt) = self.halt_of(environment, sha).await? {
            return Err(PublishError::halted(sha, environment, &halt));
        }
        let (expect, replaced) = match self.releases.fetch(&location, None).await {
            Ok(Fetched::Changed(current)) => {
                // Already the release, unless its signature does not verify with the key hosts
                // hold (a rotated key, or a signature written by someone else): then it is
                // signed anew, or the hosts would stay on a release they refuse.
                let trusted = Trust::new(&self.settings, environment)
                    .verify(&current.sha, &current.provenance, current.published_at)
                    .is_ok();
                let same = current.sha == *sha && current.provenance.digest.as_deref() == Some(now.as_str());
                if same && trusted && rewrite == Rewrite::IfChanged {
                    return Ok(Published {
                        environment: environment.to_owned(),
                        sha: sha.to_string(),
                        digest: now,
                        location: location.to_string(),
                        replaced: None,
                        unchanged: true,
                    });
                }
                let etag = current.etag.clone().unwrap_or_default();
                (Expect::ETag(etag), Some(current.sha.to_string()))
            }
            Ok(Fetched::Unchanged) => {
                return Err(PublishError::Read(ReleaseError::UnexpectedNotModified { location }));
            }
            Err(ReleaseError::NotFound { .. }) => (Expect::Absent, None),
            // An object that is not a SHA (written by hand) is replaced, but only as it is.
            Err(ReleaseError::Invalid { .. }) => (self.etag_of(&location).await?, None),
            Err(e) => return Err(PublishError::Read(e)),
        };
        // The signed time orders releases for the hosts' replay rule: every write (publish,
        // rollback, promote) is signed with a fresh one, so it is followed.
        let at = rfc3339(crate::runtime::clock::now());
        let provenance = Provenance {
            digest: Some(now.clone()),
            by: Some(publisher()),
            pipeline: pipeline_run(),
            signature: self.sign(environment, sha, &now, &at)?,
            at: Some(at),
        };
        let kms_key = self.settings.release.kms_key.as_deref();
        self.releases.write(&location, sha, &provenance, kms_key, &expect).await?;
        Ok(Published {
            environment: environment.to_owned(),
            sha: sha.to_string(),
            digest: now,
            location: location.to_string(),
            replaced,
            unchanged: false,
        })
    }

    /// Signs the release with `BLOG_AGENT_SIGNING_KEY` (a minisign secret key file;
    /// `BLOG_AGENT_SIGNING_PASSWORD` when it is encrypted). Without one: unsigned, unless hosts
    /// require signatures (`[release] public_key`), which is refused rather than published for
    /// hosts to reject.
    fn sign(&self, environment: &str, sha: &Sha, digest: &str, at: &str) -> Result<Option<String>, PublishError> {
        let key = std::env::var_os("BLOG_AGENT_SIGNING_KEY").filter(|k| !k.is_empty());
        let Some(key) = key else {
            if self.settings.release.public_key.is_some() {
                return Err(PublishError::Unsigned);
            }
            return Ok(None);
        };
        let password = std::env::var("BLOG_AGENT_SIGNING_PASSWORD").ok();
        let signature =
            crate::signature::sign(std::path::Path::new(&key), password.as_deref(), environment, sha, digest, at)
                .map_err(PublishError::Signing)?;
        if let Some(public_key) = &self.settings.release.public_key {
            // A key that does not match the hosts' would publish a release every host refuses.
            crate::signature::verify(public_key, environment, sha, Some(digest), Some(at), Some(&signature)).map_err(
                |e| PublishError::Signing(format!("the signature does not verify with [release] public_key: {e}")),
            )?;
        }
        Ok(Some(signature))
    }

    /// The ETag of an object whose body is not a SHA (read again through its history).
    async fn etag_of(&self, location: &ObjectLocation) -> Result<Expect, PublishError> {
        match self.releases.etag(location).await.map_err(PublishError::Read)? {
            Some(etag) => Ok(Expect::ETag(etag)),
            None => Ok(Expect::Absent),
        }
    }

    /// What was published to `environment`, newest first: the object's versions, or only the
    /// current object when the bucket keeps none; with the read they come from, which SHAs
    /// typed on the command line are resolved against.
    async fn published(&self, environment: &str) -> Result<(Known, Vec<Historic>, bool), PublishError> {
        let location = self.location(environment)?;
        let known = Known::read(&self.releases, environment, location).await;
        let history = known.versions().map_err(|e| PublishError::Read(e.clone()))?.to_vec();
        if !history.is_empty() {
            return Ok((known, history, false));
        }
        let only = match known.current() {
            Ok(current) => vec![Historic {
                sha: current.sha.clone(),
                published_at: current.published_at,
                version_id: "null".into(),
                provenance: current.provenance.clone(),
            }],
            Err(ReleaseError::NotFound { .. }) => Vec::new(),
            Err(e) => return Err(PublishError::Read(e.clone())),
        };
        Ok((known, only, true))
    }

    /// The versions of `history` that verify with `[release] public_key` for `environment`
    /// (all of them without a key), newest first.
    fn verified(&self, environment: &str, history: &[Historic]) -> Vec<Historic> {
        let trust = Trust::new(&self.settings, environment);
        history.iter().filter(|h| trust.verify(&h.sha, &h.provenance, h.published_at).is_ok()).cloned().collect()
    }

    fn unverified(
        &self,
        sha: &Sha,
        environment: &str,
        location: &ObjectLocation,
        verified: &[Historic],
    ) -> PublishError {
        let mut signed: Vec<String> = Vec::new();
        for h in verified {
            if !signed.contains(&h.sha.to_string()) {
                signed.push(h.sha.to_string());
            }
        }
        PublishError::Unverified {
            sha: sha.clone(),
            environment: environment.to_owned(),
            location: location.clone(),
            signed: if signed.is_empty() { "none".to_owned() } else { signed.join(", ") },
        }
    }

    /// `releases`: the history of `environment`, with each release's halt.
    pub async fn history(&self, environment: &str) -> Result<History, PublishError> {
        let (known, published, versioning_off) = self.published(environment).await?;
        let location = known.location();
        let mut releases = Vec::new();
        let trust = Trust::new(&self.settings, environment);
        // The counts are for people: a history without them is still worth printing.
        let counts = match self.halts.bake_counts(&self.settings.halt_prefix(environment)).await {
            Ok(counts) => counts,
            Err(e) => {
                tracing::warn!(environment, "cannot count the bakes, reverts and votes of the releases: {e}");
                None
            }
        };
        for (i, h) in published.iter().enumerate() {
            let count = counts.as_ref().map(|c| c.get(h.sha.as_str()).copied().unwrap_or_default());
            releases.push(ReleaseEntry {
                sha: h.sha.to_string(),
                digest: h.provenance.digest.clone(),
                published_at: h.published_at.map(rfc3339),
                published_by: h.provenance.by.clone(),
                pipeline: h.provenance.pipeline.clone(),
                halted: self.halt_of(environment, &h.sha).await?.is_some(),
                verified: trust.verify(&h.sha, &h.provenance, h.published_at).is_ok(),
                current: i == 0,
                baked: count.map(|c| c.baked),
                reverted: count.map(|c| c.reverted),
                votes: count.map(|c| c.votes),
            });
        }
        Ok(History { environment: environment.to_owned(), location: location.to_string(), releases, versioning_off })
    }

    /// `rollback`: publishes `to` (as typed: a full SHA or a unique prefix of one in the
    /// history, [`crate::pass::named`]), else the newest release before the current one that
    /// is not halted, with the digest it was published with.
    pub async fn rollback(&self, environment: &str, to: Option<&Sha>) -> Result<Published, PublishError> {
        let (known, all, versioning_off) = self.published(environment).await?;
        let location = known.location().clone();
        let to = to.map(|typed| known.resolve(typed.as_str())).transpose()?;
        let to = to.as_ref();
        // Only verified versions are candidates: a rollback is signed with CI's key, and must
        // never lend that signature to a version nobody signed.
        let published = self.verified(environment, &all);
        if let Some(to) = to.filter(|to| !published.iter().any(|h| h.sha == **to)) {
            return Err(self.unverified(to, environment, &location, &published));
        }
        let target = match to {
            Some(to) => to.clone(),
            None => {
                let current = published.first().map(|h| h.sha.clone());
                let mut found = None;
                if let Some(current) = &current {
                    for candidate in crate::outside::release::releases_before(&published, current) {
                        if self.halt_of(environment, &candidate).await?.is_none() {
                            found = Some(candidate);
                            break;
                        }
                    }
                }
                found.ok_or(PublishError::NothingToRollBackTo {
                    location: location.clone(),
                    count: published.len(),
                    hint: if versioning_off { ": turn on the bucket's versioning" } else { "" },
                })?
            }
        };
        let digest = published.iter().find(|h| h.sha == target).and_then(|h| h.provenance.digest.clone());
        // Always written, with a fresh signed time: the version rolled back to may be the
        // current object already (a replay of it), which hosts refuse until it is signed anew.
        self.write_release(environment, &target, digest.as_deref(), Rewrite::Always).await
    }

    /// `promote`: publishes `sha` (as typed: a full SHA or a unique prefix of one in `from`'s
    /// history, [`crate::pass::named`]) to `to` with the exact digest `from` has for it, once
    /// it has been there `rules.soak` and its hosts' evidence allows it
    /// ([`judge_promotion`]); refuses a release halted in `from` or never published there.
    pub async fn promote(
        &self,
        sha: &Sha,
        from: &str,
        to: &str,
        rules: PromoteRules,
    ) -> Result<Published, PublishError> {
        let soak = rules.soak;
        let (known, all, _) = self.published(from).await?;
        let location = known.location().clone();
        let sha = &known.resolve(sha.as_str())?;
        let published = self.verified(from, &all);
        if all.iter().any(|h| h.sha == *sha) && !published.iter().any(|h| h.sha == *sha) {
            return Err(self.unverified(sha, from, &location, &published));
        }
        let Some(entry) = published.iter().find(|h| h.sha == *sha) else {
            return Err(PublishError::NeverPublished {
                sha: sha.clone(),
                environment: from.to_owned(),
                location,
                what: "promote",
            });
        };
        let reading = self.halt_reading(from, sha).await?;
        if let Some(halt) = reading.halt(sha, from, self.settings.rollout.halt_after) {
            return Err(PublishError::halted(sha, from, &halt));
        }
        if let Some(at) = entry.published_at {
            let ago = crate::runtime::clock::decision_now("promote --soak")?.duration_since(at).unwrap_or_default();
            if ago < soak {
                let detail = format!(
                    "published there at {} ({} ago), --soak {}: promote it from {}",
                    rfc3339(at),
                    humantime::format_duration(Duration::from_secs(ago.as_secs())),
                    humantime::format_duration(soak),
                    rfc3339(at + soak)
                );
                return Err(PublishError::Soaking { sha: sha.clone(), environment: from.to_owned(), detail });
            }
        }
        self.judge_evidence(sha, from, reading.votes, rules).await?;
        self.write_release(to, sha, entry.provenance.digest.as_deref(), Rewrite::Always).await
    }

    /// Refuses `sha` when `from`'s hosts reverted it or voted against it (unless `--force`), or
    /// fewer than `--baked-by` of them baked it. With `--force` and no `--baked-by` the
    /// records are not read.
    async fn judge_evidence(
        &self,
        sha: &Sha,
        from: &str,
        votes: Vec<crate::fleet::halt::Vote>,
        rules: PromoteRules,
    ) -> Result<(), PublishError> {
        if rules.force && rules.baked_by == 0 {
            return Ok(());
        }
        let prefix = self.settings.halt_prefix(from);
        let records = self
            .halts
            .bake_records(&prefix, sha, from)
            .await
            .map_err(|e| PublishError::EvidenceUnknown(Box::new(e), sha.clone()))?;
        let evidence = Evidence { records, votes };
        match judge_promotion(&evidence, sha, from, rules.force, rules.baked_by) {
            Ok(()) => {
                let against = evidence.against(sha, from);
                if !against.is_empty() {
                    tracing::warn!(
                        %sha, environment = from, hosts = against.len(),
                        "promoting {sha} with --force: {} host(s) of {from} reverted it or voted against it",
                        against.len()
                    );
                }
                Ok(())
            }
            Err(Refusal::Against(against)) => {
                const NAMED: usize = 5;
                let mut hosts: Vec<String> = against
                    .iter()
                    .take(NAMED)
                    .map(|a| format!("{} {}", crate::sha::safe_text(&a.host), a.what))
                    .collect();
                if against.len() > NAMED {
                    hosts.push(format!("and {} more", against.len() - NAMED));
                }
                Err(PublishError::Against {
                    sha: sha.clone(),
                    environment: from.to_owned(),
                    count: against.len(),
                    hosts: hosts.join("; "),
                })
            }
            Err(Refusal::TooFewBakes { baked, wanted }) => Err(PublishError::TooFewBakes {
                sha: sha.clone(),
                environment: from.to_owned(),
                baked: baked.len(),
                wanted,
                hosts: match baked.is_empty() {
                    true => String::new(),
                    false => {
                        format!(" ({})", baked.iter().map(|h| crate::sha::safe_text(h)).collect::<Vec<_>>().join(", "))
                    }
                },
            }),
        }
    }
}
