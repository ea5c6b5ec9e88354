//! What should this host run: the release object, its signature, its history and the halt of
//! the published release, read and verified once into one typed answer that every command
//! goes by (`run`, `sync`, `sync --dry-run`, `status`, `check`).
//!
//! Reads: the release object and its S3 versions ([`ReleaseSource`]), the halt folder
//! ([`HaltSource`]), `accepted.json` in the state directory. Writes: `accepted.json` (the
//! newest signed publication this host took as desired, for the replay rule). Decides:
//! which releases are *verified*; which of them runs is [`crate::pass::decide`]'s.
//!
//! With `[release] public_key` set, a SHA is verified only when a version of the release
//! object names it with its digest and a signature over environment, SHA, digest and the
//! publication time that verifies with the key. That one rule covers every path that picks a
//! release: the published one, a halt's rollback target and the history fallback (only
//! verified versions are candidates), an operator's `sync --sha` (it must name a verified
//! SHA), last-known-good (recorded with the digest it was verified with). The [`Catalog`] is
//! that set; the decision runs nothing outside it. Without a key every SHA is verified (the
//! bucket is trusted), and digests still pin what is pulled.
//!
//! **Replays.** Anyone who can write the release object can copy an older version over it
//! (`copy-object` with a version id): its signature still verifies. The current version is
//! refused ([`Refusal::Replay`]) when its signed publication time is older than the newest
//! this host already accepted, or older than a later version in the object's history. A
//! refused release changes nothing here: the host keeps what it runs, and a host with nothing
//! runs the newest verified release of the history.
//!
//! S3 cost: an unchanged object is one conditional GET. A changed one is read whole; with a
//! key its history is read once too (one `ListObjectVersions` and a GET per version, at most
//! [`crate::outside::release::HISTORY_DEPTH`]), for the replay rule. Without a key the
//! history is read only when a halt needs a rollback target. A history read that fails is
//! retried at the next read, never remembered as "no history".

use std::path::Path;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::fleet::halt::Marker;
use crate::outside::halts::{HaltError, HaltSource};
use crate::outside::release::{Historic, ObjectLocation, Provenance, Release, ReleaseError, ReleaseSource};
use crate::sha::{safe_text, Sha};
use crate::signature::{SignatureError, Signed};
use crate::state::{write_atomically, GoodRelease, Pause, StateError};

/// A release that may run here: its signature verified (when a key is configured).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub sha: Sha,
    /// The image digest it runs as (`sha256:...`); `None` only without a key, for an object
    /// written by hand.
    pub digest: Option<String>,
    /// The signed publication time (Unix seconds); `None` without a key or for an untimed
    /// signature, which orders as the oldest.
    pub signed_at: Option<u64>,
    /// S3's Last-Modified of the version: the start of its staged rollout.
    pub published_at: Option<SystemTime>,
    pub provenance: Provenance,
}

/// Why a version of the release object may not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    Signature(#[from] SignatureError),
    #[error(
        "release {} for {} was signed as published at {}, before {} (signed at {}) that {}: an older release \
         copied over the release object (a replay); not deploying it (to go back on purpose, `blog-agent \
         rollback` signs it anew)",
        .0.sha, .0.environment, .0.signed, .0.newer_sha, .0.newer_signed, .0.seen
    )]
    Replay(Box<Replay>),
    #[error(
        "release {sha} for {environment} is signed as published at {signed}, more than {ahead} ahead of this \
         host's clock: taking it would make every release published before that time a replay here; not \
         deploying it (check the publisher's clock and this host's: `timedatectl`)"
    )]
    FromTheFuture { environment: String, sha: Sha, signed: String, ahead: String },
}

/// What a replay refusal names: the release, when it was signed, and the newer one it is older
/// than.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    pub environment: String,
    pub sha: Sha,
    pub signed: String,
    pub newer_sha: Sha,
    pub newer_signed: String,
    pub seen: &'static str,
}

/// How far ahead of this host's clock a signed publication time may be: clocks drift, but a
/// release signed hours ahead (a compromised or misconfigured publisher) would otherwise
/// freeze the environment, every genuine release after it counting as older.
pub const MAX_SIGNED_AHEAD: std::time::Duration = std::time::Duration::from_secs(3600);

/// Checks releases against `[release] public_key` for one environment.
#[derive(Debug, Clone, Copy)]
pub struct Trust<'a> {
    pub public_key: Option<&'a str>,
    pub environment: &'a str,
}

impl<'a> Trust<'a> {
    pub fn new(settings: &'a Settings, environment: &'a str) -> Trust<'a> {
        Trust { public_key: settings.release.public_key.as_deref(), environment }
    }

    /// Signatures are required.
    pub fn required(&self) -> bool {
        self.public_key.is_some()
    }

    /// `sha` with `provenance` (one version of the release object), verified.
    pub fn verify(
        &self,
        sha: &Sha,
        provenance: &Provenance,
        published_at: Option<SystemTime>,
    ) -> Result<Verified, Refusal> {
        let signed_at = match self.public_key {
            None => None,
            Some(key) => {
                let p = provenance;
                let signed = crate::signature::verify(
                    key,
                    self.environment,
                    sha,
                    p.digest.as_deref(),
                    p.at.as_deref(),
                    p.signature.as_deref(),
                )?;
                match signed {
                    Signed::At(_) => signed.unix(),
                    Signed::Untimed => None,
                }
            }
        };
        Ok(Verified {
            sha: sha.clone(),
            digest: provenance.digest.clone(),
            signed_at,
            published_at,
            provenance: provenance.clone(),
        })
    }

    /// The versions of `history` (newest first) that verify, in the same order.
    pub fn verified_history(&self, history: &[Historic]) -> Vec<Verified> {
        history.iter().filter_map(|h| self.verify(&h.sha, &h.provenance, h.published_at).ok()).collect()
    }

    /// The replay rule (see the module docs): `Err` when `current` was signed before what this
    /// host `accepted`, or before a version of `history` (newest first; the current version
    /// itself may be in it). Without a key there is no signed time to go by.
    pub fn check_replay(
        &self,
        current: &Verified,
        accepted: Option<&Accepted>,
        history: &[Verified],
        now: SystemTime,
    ) -> Result<(), Refusal> {
        let Some(key) = self.public_key else { return Ok(()) };
        let now_unix = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let believable = |at: Option<u64>| at.is_none_or(|at| at <= now_unix + MAX_SIGNED_AHEAD.as_secs());
        if !believable(current.signed_at) {
            return Err(Refusal::FromTheFuture {
                environment: self.environment.to_owned(),
                sha: current.sha.clone(),
                signed: fmt_signed(current.signed_at),
                ahead: humantime::format_duration(MAX_SIGNED_AHEAD).to_string(),
            });
        }
        let replay = |newer_sha: &Sha, newer: Option<u64>, seen: &'static str| {
            Refusal::Replay(Box::new(Replay {
                environment: self.environment.to_owned(),
                sha: current.sha.clone(),
                signed: fmt_signed(current.signed_at),
                newer_sha: newer_sha.clone(),
                newer_signed: fmt_signed(newer),
                seen,
            }))
        };
        // A record made under another key does not count: after a key rotation, the new key's
        // releases start the order afresh.
        if let Some(accepted) = accepted.filter(|a| a.environment == self.environment && a.key == key) {
            if let Ok(sha) = Sha::parse(&accepted.sha) {
                if current.signed_at < Some(accepted.signed_at) {
                    return Err(replay(&sha, Some(accepted.signed_at), "this host accepted already"));
                }
            }
        }
        let newer = history.iter().filter(|h| believable(h.signed_at) && h.signed_at > current.signed_at);
        match newer.max_by_key(|h| h.signed_at) {
            Some(newer) => Err(replay(&newer.sha, newer.signed_at, "a later version of the release object names")),
            None => Ok(()),
        }
    }
}

fn fmt_signed(at: Option<u64>) -> String {
    match at {
        Some(secs) => {
            humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)).to_string()
        }
        None => "no time (an untimed signature)".to_owned(),
    }
}

/// The newest signed publication this host took as desired, per environment: a release
/// signed before it is a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub environment: String,
    pub sha: String,
    /// Unix seconds of its signed publication time.
    pub signed_at: u64,
    /// The `[release] public_key` it verified with.
    #[serde(default)]
    pub key: String,
}

const ACCEPTED_FILE: &str = "accepted.json";

impl Accepted {
    /// What this host accepted for `environment`; `None` when nothing (or the file is
    /// unreadable: then only the history guards against replays, and it is logged).
    pub fn load(dir: &Path, environment: &str) -> Option<Accepted> {
        Accepted::read_all(dir).into_iter().find(|a| a.environment == environment)
    }

    /// Every environment's record; none when the file is absent, unreadable (logged: then
    /// only the history guards against replays) or not a list of records.
    fn read_all(dir: &Path) -> Vec<Accepted> {
        let path = dir.join(ACCEPTED_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot read {}: {e}; replays are judged by the history alone", ACCEPTED_FILE);
                Vec::new()
            }
        }
    }

    /// Records `release` as accepted for `environment` when it was signed later than what is
    /// recorded. Returns whether the file changed.
    pub fn record(dir: &Path, trust: Trust<'_>, release: &Verified) -> Result<bool, StateError> {
        let (Some(signed_at), Some(key)) = (release.signed_at, trust.public_key) else { return Ok(false) };
        let environment = trust.environment;
        let mut all = Accepted::read_all(dir);
        if all.iter().any(|a| a.environment == environment && a.key == key && a.signed_at >= signed_at) {
            return Ok(false);
        }
        all.retain(|a| a.environment != environment);
        let (sha, key) = (release.sha.to_string(), key.to_owned());
        all.push(Accepted { environment: environment.to_owned(), sha, signed_at, key });
        write_atomically(dir, ACCEPTED_FILE, &serde_json::to_vec_pretty(&all).expect("accepted serializes"))?;
        Ok(true)
    }
}

/// The release object's current version, as this host may take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    Verified(Verified),
    /// Named by the object but not to be run: why.
    Refused {
        sha: Sha,
        refusal: Refusal,
    },
}

impl Published {
    pub fn sha(&self) -> &Sha {
        match self {
            Published::Verified(v) => &v.sha,
            Published::Refused { sha, .. } => sha,
        }
    }

    pub fn verified(&self) -> Option<&Verified> {
        match self {
            Published::Verified(v) => Some(v),
            Published::Refused { .. } => None,
        }
    }
}

/// One read of the release object, verified: what [`crate::pass::decide`] is asked to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    pub location: ObjectLocation,
    /// The object's ETag, for the next conditional GET.
    pub etag: Option<String>,
    pub published: Published,
    /// The verified versions of the object's history, newest first (the current one
    /// included); `None` when not read yet or the read failed (read again when needed).
    pub history: Option<Vec<Verified>>,
}

impl Desired {
    /// Verifies `release` (just read from `location`): its signature, then the replay rule
    /// against what this host `accepted` and the object's history (read here when a key is
    /// configured or the release is refused: a host with nothing serving needs the newest
    /// verified one).
    pub async fn verify(
        releases: &impl ReleaseSource,
        trust: Trust<'_>,
        location: ObjectLocation,
        release: Release,
        accepted: Option<&Accepted>,
    ) -> Desired {
        let etag = release.etag.clone();
        let checked = trust.verify(&release.sha, &release.provenance, release.published_at);
        let history =
            if trust.required() || checked.is_err() { read_history(releases, trust, &location).await } else { None };
        let published = match checked {
            Ok(verified) => {
                match trust.check_replay(
                    &verified,
                    accepted,
                    history.as_deref().unwrap_or_default(),
                    crate::runtime::clock::now(),
                ) {
                    Ok(()) => Published::Verified(verified),
                    Err(refusal) => Published::Refused { sha: release.sha, refusal },
                }
            }
            Err(refusal) => Published::Refused { sha: release.sha, refusal },
        };
        Desired { location, etag, published, history }
    }

    /// The history, read now if it is not known yet (a failure leaves it unknown, to be read
    /// again next time).
    pub async fn ensure_history(&mut self, releases: &impl ReleaseSource, trust: Trust<'_>) -> Option<&[Verified]> {
        if self.history.is_none() {
            self.history = read_history(releases, trust, &self.location).await;
        }
        self.history.as_deref()
    }

    /// The newest verified release of the history other than a refused current one: what a
    /// host with nothing serving runs while the current version is refused.
    pub fn newest_verified(&self) -> Option<Sha> {
        let refused = match &self.published {
            Published::Refused { sha, .. } => Some(sha),
            Published::Verified(_) => None,
        };
        let history = self.history.as_deref().unwrap_or_default();
        // The newest by signed time, so a replayed old version never outranks the release it
        // was copied over.
        let mut candidates: Vec<&Verified> = history.iter().filter(|h| Some(&h.sha) != refused).collect();
        candidates.sort_by_key(|h| std::cmp::Reverse(h.signed_at));
        candidates.first().map(|h| h.sha.clone())
    }

    /// Every release this host may run for the environment.
    pub fn catalog(&self, trust: Trust<'_>, last_good: Option<&GoodRelease>, pause: Option<&Pause>) -> Catalog {
        let mut catalog = Catalog::new(trust.required());
        if let Some(v) = self.published.verified() {
            catalog.add(&v.sha, v.digest.as_deref());
        }
        for v in self.history.as_deref().unwrap_or_default() {
            catalog.add(&v.sha, v.digest.as_deref());
        }
        catalog.add_local(trust, last_good, pause);
        catalog
    }
}

async fn read_history(
    releases: &impl ReleaseSource,
    trust: Trust<'_>,
    location: &ObjectLocation,
) -> Option<Vec<Verified>> {
    match releases.history(location).await {
        Ok(history) => Some(trust.verified_history(&history)),
        Err(e) => {
            tracing::warn!("cannot read the history of {location}: {e}; reading it again at the next pass");
            None
        }
    }
}

/// The releases this host may run, with the digest each is pulled by. With signatures
/// required, only SHAs a verified version of the release object names (and the local records
/// of such: last-known-good and an operator's pin, each with the digest it was verified with);
/// without, every SHA, pulled by digest where one is known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    required: bool,
    releases: Vec<(Sha, Option<String>)>,
}

impl Catalog {
    pub fn new(required: bool) -> Catalog {
        Catalog { required, releases: Vec::new() }
    }

    /// What this host may run: the verified read's catalog when there is one, else only this
    /// host's own records (last-known-good, a pin), each with the digest it was verified with.
    /// The loop and `status` decide on the same catalog, so they name the same target.
    pub fn for_host(
        desired: Option<&Desired>,
        trust: Trust<'_>,
        last_good: Option<&GoodRelease>,
        pause: Option<&Pause>,
    ) -> Catalog {
        match desired {
            Some(desired) => desired.catalog(trust, last_good, pause),
            None => {
                let mut catalog = Catalog::new(trust.required());
                catalog.add_local(trust, last_good, pause);
                catalog
            }
        }
    }

    /// A catalog that allows anything (no key configured, nothing known).
    pub fn open() -> Catalog {
        Catalog::new(false)
    }

    fn add(&mut self, sha: &Sha, digest: Option<&str>) {
        match self.releases.iter_mut().find(|(s, _)| s == sha) {
            Some((_, known @ None)) => *known = digest.map(str::to_owned),
            Some(_) => {}
            None => self.releases.push((sha.clone(), digest.map(str::to_owned))),
        }
    }

    /// Adds what this host recorded itself: last-known-good and an operator's pin, each only
    /// with the digest it was verified with when signatures are required.
    pub fn add_local(&mut self, trust: Trust<'_>, last_good: Option<&GoodRelease>, pause: Option<&Pause>) {
        let digest_ok = |d: Option<&str>| !trust.required() || d.is_some_and(crate::outside::release::is_digest);
        if let Some(good) = last_good.filter(|g| g.environment == trust.environment) {
            let digest = Some(good.digest.as_str()).filter(|d| !d.is_empty());
            if let (Ok(sha), true) = (Sha::parse(&good.sha), digest_ok(digest)) {
                self.add(&sha, digest.filter(|d| crate::outside::release::is_digest(d)));
            }
        }
        if let Some(pause) = pause {
            let digest = pause.pinned_digest.as_deref();
            if let (Some(Ok(sha)), true) = (pause.pinned_sha.as_deref().map(Sha::parse), digest_ok(digest)) {
                self.add(&sha, digest);
            }
        }
    }

    #[cfg(test)]
    pub fn add_for_tests(&mut self, sha: &Sha) {
        self.add(sha, Some(&format!("sha256:{}", "0".repeat(64))));
    }

    /// Whether `sha` may be deployed here.
    pub fn allows(&self, sha: &Sha) -> bool {
        !self.required || self.releases.iter().any(|(s, _)| s == sha)
    }

    /// The digest `sha` is pulled by, when known.
    pub fn digest(&self, sha: &Sha) -> Option<&str> {
        self.releases.iter().find(|(s, _)| s == sha).and_then(|(_, d)| d.as_deref())
    }

    pub fn required(&self) -> bool {
        self.required
    }

    /// The SHAs it holds, for an error that lists them.
    pub fn shas(&self) -> Vec<String> {
        self.releases.iter().map(|(s, _)| s.to_string()).collect()
    }
}

/// The halt in force for `sha` in `environment` (the operator's marker, or `[rollout]
/// halt_after` hosts' votes), without its rollback target resolved.
pub async fn read_halt(
    halts: &impl HaltSource,
    settings: &Settings,
    environment: &str,
    sha: &Sha,
) -> Result<Option<Marker>, HaltError> {
    read_halt_at(halts, &settings.halt_prefix(environment), environment, settings.rollout.halt_after, sha).await
}

/// [`read_halt`] with the halt folder and `[rollout] halt_after` given (the `run` loop keeps
/// them from its settings).
pub async fn read_halt_at(
    halts: &impl HaltSource,
    prefix: &str,
    environment: &str,
    halt_after: u32,
    sha: &Sha,
) -> Result<Option<Marker>, HaltError> {
    let reading = halts.read(prefix, sha).await?;
    Ok(reading.halt(sha, environment, halt_after))
}

/// Fills in `marker`'s rollback target (what a host with nothing serving runs while its SHA
/// is halted) with a verified release: the one the marker names when the history verifies
/// it, else the newest verified release before the halted one that is not halted itself.
/// `Ok(None)` target when nothing fits; `Err` when the history or a candidate's halt could
/// not be read (nothing is remembered: the caller asks again next time).
pub async fn resolve_rollback_target(
    desired: &mut Desired,
    releases: &impl ReleaseSource,
    halts: &impl HaltSource,
    settings: &Settings,
    environment: &str,
    marker: &mut Marker,
) -> Result<(), String> {
    let trust = Trust::new(settings, environment);
    let halted = Sha::parse(&marker.sha).map_err(|e| e.to_string())?;
    let Some(history) = desired.ensure_history(releases, trust).await.map(<[Verified]>::to_vec) else {
        marker.rolled_back_to = None;
        return Err(format!("the history of {} could not be read", desired.location));
    };
    let catalog = desired.catalog(trust, None, None);
    if let Some(named) = marker.rolled_back_to_sha() {
        if named != halted && catalog.allows(&named) {
            marker.rolled_back_to = Some(named.to_string());
            return Ok(());
        }
        tracing::warn!(
            sha = %halted, named = %safe_text(&named.to_string()),
            "the halt of {} names {} as its rollback target, which no verified version of {} names: ignoring it",
            halted.short(), named.short(), desired.location
        );
    }
    marker.rolled_back_to =
        newest_unhalted_before(halts, settings, environment, &history, &halted).await?.map(|sha| sha.to_string());
    Ok(())
}

/// The newest release of `verified` (the release object's verified history, newest first)
/// before `halted` that is not halted itself. `Err` when a candidate's halt cannot be read.
async fn newest_unhalted_before(
    halts: &impl HaltSource,
    settings: &Settings,
    environment: &str,
    verified: &[Verified],
    halted: &Sha,
) -> Result<Option<Sha>, String> {
    let candidates: Vec<Historic> = verified
        .iter()
        .map(|v| Historic {
            sha: v.sha.clone(),
            published_at: v.published_at,
            version_id: String::new(),
            provenance: v.provenance.clone(),
        })
        .collect();
    // A caller that passed a prefix would otherwise find no place for it in the history, and
    // get the newest release: the halted one itself.
    let other = |candidate: &Sha| !candidate.as_str().starts_with(halted.as_str());
    for candidate in crate::outside::release::releases_before(&candidates, halted).into_iter().filter(other) {
        match read_halt(halts, settings, environment, &candidate).await {
            Ok(Some(_)) => continue,
            Ok(None) => return Ok(Some(candidate)),
            Err(e) => return Err(format!("cannot read the halt of {}: {e}", candidate.short())),
        }
    }
    Ok(None)
}

/// Where the release file for `env` lives.
pub fn release_location(settings: &Settings, env: &str) -> ObjectLocation {
    ObjectLocation {
        bucket: settings.release.bucket.clone(),
        // Allowed environments are validated to have a key.
        key: settings.release_key(env).unwrap_or_default().to_owned(),
    }
}

/// The rollback target an operator's `halt` records when it names none, by the one rule hosts
/// apply to a halt that names none: the newest verified release before `halted` in the
/// release object's history that is not halted itself, never `halted`. `halted` must be the
/// full SHA S3 names ([`crate::pass::named`]): only then is its place in the history found.
/// A SHA the history does not hold (halted before it was published) gets the newest verified
/// release: the one it would replace. `Ok(None)` when the history holds nothing else.
pub async fn rollback_target(
    releases: &impl ReleaseSource,
    halts: &impl HaltSource,
    settings: &Settings,
    environment: &str,
    halted: &Sha,
) -> Result<Option<Sha>, String> {
    let location = release_location(settings, environment);
    let history = releases.history(&location).await.map_err(|e| e.to_string())?;
    let verified = Trust::new(settings, environment).verified_history(&history);
    newest_unhalted_before(halts, settings, environment, &verified, halted).await
}

/// Reads and verifies the release object once (an unconditional GET), with the halt of the
/// published release and its rollback target: what `sync`, `status` and `check` go by.
/// `run` reads the same way through its own cache ([`Desired::verify`], [`read_halt`],
/// [`resolve_rollback_target`]).
pub async fn read_once(
    releases: &impl ReleaseSource,
    halts: &impl HaltSource,
    settings: &Settings,
    environment: &str,
) -> Result<(Desired, HaltRead), ReleaseError> {
    let mut desired = read_verified(releases, settings, environment).await?;
    let halt = match desired.published.verified().map(|v| v.sha.clone()) {
        None => HaltRead::NotNeeded,
        Some(sha) => match read_halt(halts, settings, environment, &sha).await {
            Ok(None) => HaltRead::Clear,
            Ok(Some(mut marker)) => {
                let target =
                    resolve_rollback_target(&mut desired, releases, halts, settings, environment, &mut marker).await;
                if let Err(e) = target {
                    tracing::warn!(sha = %sha, "{} is halted; no rollback target for now: {e}", sha.short());
                }
                HaltRead::Halted(marker)
            }
            Err(e) => HaltRead::Unreadable(e.to_string()),
        },
    };
    Ok((desired, halt))
}

/// Reads the release object once (an unconditional GET) and verifies it, without its halt:
/// what a pin is checked against ([`read_once`] adds the halt).
pub async fn read_verified(
    releases: &impl ReleaseSource,
    settings: &Settings,
    environment: &str,
) -> Result<Desired, ReleaseError> {
    let location = release_location(settings, environment);
    let release = match releases.fetch(&location, None).await? {
        crate::outside::release::Fetched::Changed(release) => release,
        crate::outside::release::Fetched::Unchanged => {
            return Err(ReleaseError::UnexpectedNotModified { location });
        }
    };
    let trust = Trust::new(settings, environment);
    let accepted = Accepted::load(&settings.agent.state_dir, environment);
    Ok(Desired::verify(releases, trust, location, release, accepted.as_ref()).await)
}

/// What one read of the published release's halt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaltRead {
    /// The published release is refused: its halt does not matter.
    NotNeeded,
    Clear,
    /// Halted, with its verified rollback target filled in (or none).
    Halted(Marker),
    /// The halt folder could not be read: why.
    Unreadable(String),
}

impl HaltRead {
    pub fn marker(&self) -> Option<&Marker> {
        match self {
            HaltRead::Halted(m) => Some(m),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: &str = "staging";

    fn sha(c: char) -> Sha {
        Sha::parse(&c.to_string().repeat(40)).unwrap()
    }

    fn v(c: char, signed_at: Option<u64>) -> Verified {
        Verified {
            sha: sha(c),
            digest: Some(format!("sha256:{}", "0".repeat(64))),
            signed_at,
            published_at: None,
            provenance: Provenance::default(),
        }
    }

    const KEY: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";

    fn test_settings() -> Settings {
        Settings::parse(
            "[release]\nbucket = \"b\"\n[image]\nrepository = \"127.0.0.1:5000/blog\"\n[environment]\nname = \"staging\"\n",
            Path::new("test.toml"),
        )
        .unwrap()
    }

    /// One unsigned version of the release object naming `c`.
    fn historic(c: char) -> Historic {
        Historic { sha: sha(c), published_at: None, version_id: c.to_string(), provenance: Provenance::default() }
    }

    #[test]
    fn a_release_signed_before_one_already_accepted_or_a_later_version_is_a_replay() {
        let signed = Trust { public_key: Some(KEY), environment: ENV };
        let unsigned = Trust { public_key: None, environment: ENV };
        let accepted = |c: char, at: u64| Accepted {
            environment: ENV.into(),
            sha: sha(c).to_string(),
            signed_at: at,
            key: KEY.into(),
        };
        let other_env = Accepted { environment: "production".into(), ..accepted('c', 300) };
        let other_key = Accepted { key: "RWQ-an-earlier-key".into(), ..accepted('c', 300) };
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1000);
        type Case = (&'static str, Verified, Option<Accepted>, Vec<Verified>, Option<&'static str>);
        let cases: Vec<Case> = vec![
            (
                "newest signed: taken",
                v('c', Some(300)),
                Some(accepted('b', 200)),
                vec![v('c', Some(300)), v('b', Some(200))],
                None,
            ),
            ("re-read of the accepted one", v('b', Some(200)), Some(accepted('b', 200)), vec![], None),
            ("older than accepted", v('a', Some(100)), Some(accepted('b', 200)), vec![], Some("this host accepted")),
            (
                "copied over a newer version (new host)",
                v('a', Some(100)),
                None,
                vec![v('a', Some(100)), v('b', Some(200)), v('a', Some(100))],
                Some("a later version"),
            ),
            ("untimed after timed", v('a', None), None, vec![v('a', None), v('b', Some(200))], Some("a later version")),
            ("another environment's record does not count", v('a', Some(100)), Some(other_env), vec![], None),
            (
                "a record under an earlier key does not count (rotation)",
                v('a', Some(100)),
                Some(other_key),
                vec![],
                None,
            ),
            (
                "signed far ahead of this host's clock",
                v('a', Some(1000 + 3601)),
                None,
                vec![],
                Some("ahead of this host's clock"),
            ),
            (
                "a version signed far ahead does not make the current one a replay",
                v('a', Some(100)),
                None,
                vec![v('a', Some(100)), v('f', Some(1000 + 3601))],
                None,
            ),
            ("no history, nothing accepted", v('a', Some(100)), None, vec![], None),
        ];
        for (what, current, accepted, history, want) in cases {
            let got = signed.check_replay(&current, accepted.as_ref(), &history, now);
            match (got, want) {
                (Ok(()), None) => {}
                (Err(e), Some(needle)) => assert!(e.to_string().contains(needle), "{what}: {e}"),
                (got, want) => panic!("{what}: got {got:?}, want {want:?}"),
            }
            // Without a key there is no signed time: nothing is a replay.
            assert_eq!(unsigned.check_replay(&current, accepted.as_ref(), &history, now), Ok(()), "{what} (no key)");
        }
    }

    /// A release source whose history read fails as many times as asked, then answers.
    struct FlakyHistory {
        history: Vec<Historic>,
        failures: std::sync::atomic::AtomicUsize,
        reads: std::sync::atomic::AtomicUsize,
    }

    impl ReleaseSource for FlakyHistory {
        async fn fetch(
            &self,
            _location: &ObjectLocation,
            _if_none_match: Option<&str>,
        ) -> Result<crate::outside::release::Fetched, ReleaseError> {
            unreachable!("the history is all this test reads")
        }

        async fn history(&self, location: &ObjectLocation) -> Result<Vec<Historic>, ReleaseError> {
            use std::sync::atomic::Ordering::SeqCst;
            self.reads.fetch_add(1, SeqCst);
            if self.failures.load(SeqCst) > 0 {
                self.failures.fetch_sub(1, SeqCst);
                return Err(ReleaseError::Unavailable { location: location.clone(), detail: "503 SlowDown".into() });
            }
            Ok(self.history.clone())
        }
    }

    /// Issue 22, 8: one failed history read was remembered as "no rollback target" for the
    /// life of `run`, and an empty host under a halt stayed dark until the agent restarted.
    #[tokio::test]
    async fn a_failed_history_read_is_read_again_never_remembered_as_no_history() {
        use std::sync::atomic::Ordering::SeqCst;
        let settings = test_settings();
        let releases = FlakyHistory {
            history: vec![historic('b'), historic('a')],
            failures: std::sync::atomic::AtomicUsize::new(1),
            reads: Default::default(),
        };
        let halts = crate::outside::halts::MemoryHalts::default();
        let mut desired = Desired {
            location: ObjectLocation { bucket: "b".into(), key: "staging/stagebuild.txt".into() },
            etag: None,
            published: Published::Verified(v('b', None)),
            history: None,
        };
        let halted = |desired_marker: Option<&str>| Marker {
            sha: sha('b').to_string(),
            environment: ENV.into(),
            instance_id: "i-1".into(),
            reason: "bad".into(),
            at: 1,
            rolled_back_to: desired_marker.map(str::to_owned),
            by: None,
        };
        let mut marker = halted(None);
        let first = resolve_rollback_target(&mut desired, &releases, &halts, &settings, ENV, &mut marker).await;
        assert!(first.is_err(), "the failure is an error, not an answer");
        assert_eq!((marker.rolled_back_to.as_deref(), desired.history.as_ref()), (None, None));
        let mut marker = halted(None);
        resolve_rollback_target(&mut desired, &releases, &halts, &settings, ENV, &mut marker).await.unwrap();
        assert_eq!(marker.rolled_back_to, Some(sha('a').to_string()), "read again, and answered");
        assert_eq!(releases.reads.load(SeqCst), 2);
    }

    /// Issue 25: `halt` without `--to` recorded the halted release itself as its rollback
    /// target when the history's newest version was that release.
    #[tokio::test]
    async fn a_halts_rollback_target_is_the_newest_verified_release_before_it_never_itself() {
        let settings = test_settings();
        let source = |history: &str| FlakyHistory {
            history: history.chars().map(historic).collect(),
            failures: Default::default(),
            reads: Default::default(),
        };
        let halt = |c: char| Marker {
            sha: sha(c).to_string(),
            environment: ENV.into(),
            instance_id: "i-1".into(),
            reason: "bad".into(),
            at: 1,
            rolled_back_to: None,
            by: None,
        };
        // (what, history newest first, also halted, halted, target)
        let cases: &[(&str, &str, &str, char, Option<char>)] = &[
            ("the halted release is the newest version", "cba", "", 'c', Some('b')),
            ("an older release is halted", "cba", "", 'b', Some('a')),
            ("it was published again since (a rollback over it)", "cbcba", "", 'c', Some('b')),
            ("the one before is halted too", "cba", "b", 'c', Some('a')),
            ("nothing else was ever published", "c", "", 'c', None),
            ("everything before it is halted", "cb", "b", 'c', None),
            ("halted before it was published: the release it would replace", "ba", "", 'c', Some('b')),
            ("no history at all", "", "", 'c', None),
        ];
        for (what, history, also_halted, halted, want) in cases {
            let halts = crate::outside::halts::MemoryHalts::default();
            for c in also_halted.chars() {
                halts.mark(&settings.halt_prefix(ENV), &halt(c)).await.unwrap();
            }
            let got = rollback_target(&source(history), &halts, &settings, ENV, &sha(*halted)).await.unwrap();
            assert_eq!(got, want.map(sha), "{what}");
            assert_ne!(got, Some(sha(*halted)), "{what}: never the halted release");
        }
        // Named by a prefix the caller did not resolve: still never the halted release.
        let short = Sha::parse("ccccccc").unwrap();
        let none = crate::outside::halts::MemoryHalts::default();
        let got = rollback_target(&source("cba"), &none, &settings, ENV, &short).await.unwrap();
        assert_eq!(got, Some(sha('b')), "a prefix of the newest version");
    }

    #[test]
    fn the_catalog_holds_only_verified_releases_and_local_records_with_their_digest() {
        let trust = Trust { public_key: Some(KEY), environment: ENV };
        let desired = Desired {
            location: ObjectLocation { bucket: "b".into(), key: "staging/stagebuild.txt".into() },
            etag: None,
            published: Published::Refused {
                sha: sha('d'),
                refusal: Refusal::Signature(SignatureError::Missing { environment: ENV.into(), sha: "d".into() }),
            },
            history: Some(vec![v('c', Some(300)), v('b', Some(200))]),
        };
        let digest = format!("sha256:{}", "1".repeat(64));
        let good = |c: char, digest: &str| GoodRelease {
            sha: sha(c).to_string(),
            digest: digest.into(),
            environment: ENV.into(),
            at: 0,
            since: None,
        };
        let pin = |c: char, digest: Option<&str>| Pause {
            by: "alice".into(),
            reason: None,
            at: 0,
            pinned_sha: Some(sha(c).to_string()),
            pinned_digest: digest.map(str::to_owned),
        };
        let catalog = desired.catalog(trust, Some(&good('e', &digest)), Some(&pin('f', None)));
        assert!(catalog.allows(&sha('c')) && catalog.allows(&sha('b')), "verified history");
        assert!(!catalog.allows(&sha('d')), "the refused current version");
        assert!(catalog.allows(&sha('e')), "last-known-good recorded with its digest");
        assert_eq!(catalog.digest(&sha('e')), Some(digest.as_str()));
        assert!(!catalog.allows(&sha('f')), "a pin recorded without a digest");
        let catalog = desired.catalog(trust, Some(&good('e', "")), Some(&pin('f', Some(&digest))));
        assert!(!catalog.allows(&sha('e')), "last-known-good without a digest");
        assert!(catalog.allows(&sha('f')), "a pin with its digest");
        assert_eq!(desired.newest_verified(), Some(sha('c')));
        // Without a key anything goes, and known digests still pin the pull.
        let open = desired.catalog(Trust { public_key: None, environment: ENV }, None, None);
        assert!(open.allows(&sha('d')) && open.digest(&sha('c')).is_some());
    }
}
