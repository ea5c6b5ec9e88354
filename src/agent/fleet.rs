//! The loop's part in the fleet ([`crate::fleet`]): this host's identity and rollout seed, what
//! it knows of the published release's halt marker, halting a release that failed here, and
//! the metrics textfile.
//!
//! S3 cost: the published SHA's marker is read when the loop first sees the SHA, and once more
//! when this host's rollout wave opens (a canary may have halted it meanwhile), never on an
//! idle poll. A host already running the published SHA reads nothing. While the published SHA
//! is halted, its marker is read again on each full pass, so an `unhalt` is noticed within an
//! interval. A marker read that fails is retried on the next full pass. A host that serves
//! something applies a new release only after a successful read since its wave opened
//! ([`Fleet::halt_confirmed`], the decision's `halt_unconfirmed`): a local pass (a Docker
//! event) in between, or a read that failed, keeps it waiting. (With no spread there is no wave: the read at first sight is the
//! one, and if it failed the release counts as not halted; it still has to pass its own probes
//! here.) A host that voted against the published SHA reads the votes on each full pass until
//! the release is halted: it holds the release back meanwhile, possibly for its whole
//! quarantine, and without those reads it would only learn of the halt the other hosts' votes
//! made when the quarantine ran out and it tried the release again. A vote is written once per
//! failure, under this host's AWS caller identity ([`crate::outside::sts`], asked on the first
//! vote and kept): while STS cannot say who this host is, no vote is written (the next failure
//! asks again), never one under a key guessed from the instance id.
//!
//! Reads and writes: halt markers and votes (through [`crate::pass::desired::read_halt_at`] and
//! [`HaltSource`]), the metrics textfile. Decides: when to read; what the halt means is
//! [`crate::pass::decide`]'s, from [`Fleet::halt_of`] and [`Fleet::halt_confirmed`].

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;

use crate::fleet::halt::{vote_key, Marker, Vote};
use crate::fleet::metrics::Metrics;
use crate::fleet::rollout::{self, Gate, Identity};
use crate::fleet::verdict::Verdict;
use crate::outside::halts::HaltSource;
use crate::outside::sts::CallerSource;
use crate::pass::decide::RolloutGate;
use crate::sha::{safe_quote, safe_text, Sha};

/// Longest reason written into a marker (the error that failed the release).
const MAX_REASON_CHARS: usize = 500;

/// This host's identity: resolved in the background at start, so the first pass does not wait
/// on instance metadata (off EC2 it takes up to a few seconds to give up).
enum IdentityState {
    Pending(JoinHandle<Identity>),
    Known(Identity),
}

/// What this host knows of the published SHA's halt marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaltKnown {
    /// Not read yet, or the last read failed: read on the next full pass.
    Unknown,
    /// No marker. `rechecked`: read (again) once this host's wave was open, right before it
    /// may apply the release; or no read is needed (this host already runs it).
    Clear {
        rechecked: bool,
    },
    Halted(Marker),
}

/// The loop's fleet memory.
pub struct Fleet {
    identity: IdentityState,
    /// The published SHA the halt knowledge is about.
    halt: Option<(Sha, HaltKnown)>,
    pub metrics: Arc<Metrics>,
    /// The last error writing the metrics textfile: logged when it changes, not every pass.
    metrics_error: Option<String>,
    /// ECR calls already added to the metrics.
    ecr_calls_seen: u64,
    /// The release this host voted to halt (its vote is in S3): its votes are read on each full
    /// pass while it is the published SHA and not halted yet.
    voted: Option<Sha>,
}

impl Fleet {
    /// Starts resolving this host's identity (instance metadata, else machine id, else
    /// hostname) in the background.
    pub fn start() -> Fleet {
        let task = tokio::spawn(async {
            let instance_id = crate::outside::imds::Imds::new().instance_id().await;
            if let Err(why) = &instance_id {
                tracing::debug!("no EC2 instance id ({why}): the rollout seed comes from the machine id or hostname");
            }
            rollout::resolve_identity(instance_id.ok())
        });
        Fleet::with(IdentityState::Pending(task))
    }

    /// A fleet memory with a known identity (tests).
    pub fn with_identity(identity: Identity) -> Fleet {
        Fleet::with(IdentityState::Known(identity))
    }

    fn with(identity: IdentityState) -> Fleet {
        Fleet {
            identity,
            halt: None,
            metrics: Arc::new(Metrics::new()),
            metrics_error: None,
            ecr_calls_seen: 0,
            voted: None,
        }
    }

    /// This host's identity, waiting for it if it is still being resolved.
    pub async fn identity(&mut self) -> &Identity {
        if let IdentityState::Pending(task) = &mut self.identity {
            let identity = task.await.unwrap_or_else(|_| rollout::resolve_identity(None));
            tracing::info!(
                identity = %identity.value, source = %identity.source, seed = identity.seed(),
                "rollout identity: {identity} (seed {:.3})", identity.seed()
            );
            self.identity = IdentityState::Known(identity);
        }
        match &self.identity {
            IdentityState::Known(identity) => identity,
            IdentityState::Pending(_) => unreachable!("resolved above"),
        }
    }

    /// Takes (and logs) the identity if its resolution has finished, without waiting.
    pub async fn note_identity(&mut self) {
        if matches!(&self.identity, IdentityState::Pending(task) if task.is_finished()) {
            self.identity().await;
        }
    }

    /// The rollout gate of a release published at `published_at`, or `None` when there is no
    /// wave to wait for (`spread` zero, or no publication time).
    pub async fn gate(&mut self, spread: Duration, published_at: Option<SystemTime>) -> Option<RolloutGate> {
        let published_at = published_at.filter(|_| !spread.is_zero())?;
        let seed = self.identity().await.seed();
        Some(RolloutGate { seed, spread, published_at, now: crate::runtime::clock::now() })
    }

    /// Forgets what it knows of halts (the configuration, and so the prefix, changed).
    pub fn forget_halt(&mut self) {
        self.halt = None;
    }

    /// The published SHA's marker, when this host knows it is halted.
    pub fn halt_of(&self, sha: &Sha) -> Option<&Marker> {
        match &self.halt {
            Some((halted, HaltKnown::Halted(marker))) if halted == sha => Some(marker),
            _ => None,
        }
    }

    /// Whether `sha`'s halt was read since this host's wave of it opened (or no read is
    /// needed: the host runs it already).
    pub fn halt_confirmed(&self, sha: &Sha) -> bool {
        self.halt_known(sha) == (HaltKnown::Clear { rechecked: true })
    }

    /// What this host knows of `sha`'s halt.
    pub fn halt_known(&self, sha: &Sha) -> HaltKnown {
        match &self.halt {
            Some((known, state)) if known == sha => state.clone(),
            _ => HaltKnown::Unknown,
        }
    }

    /// After a read of S3 (a full pass): brings what this host knows of `published`'s halt up
    /// to date, reading its marker only when that can change what the host does (see the
    /// module docs). `running`: what served after the last pass; `wave_open`: this host may
    /// apply `published` now as far as its rollout wave goes.
    #[allow(clippy::too_many_arguments)]
    pub async fn check_halt(
        &mut self,
        halts: &impl HaltSource,
        prefix: &str,
        environment: &str,
        halt_after: u32,
        published: &Sha,
        running: Option<&Sha>,
        wave_open: bool,
    ) {
        let current = self.halt_known(published);
        if running == Some(published) && !matches!(current, HaltKnown::Halted(_)) {
            // Applied already: a halt would change nothing here.
            self.halt = Some((published.clone(), HaltKnown::Clear { rechecked: true }));
            return;
        }
        let read = match &current {
            HaltKnown::Unknown | HaltKnown::Halted(_) => true,
            HaltKnown::Clear { rechecked } => (!rechecked && wave_open) || self.voted.as_ref() == Some(published),
        };
        if !read {
            return;
        }
        self.metrics.add_s3_request();
        let next = match crate::pass::desired::read_halt_at(halts, prefix, environment, halt_after, published).await {
            Ok(Some(marker)) => {
                if !matches!(current, HaltKnown::Halted(_)) {
                    let who = marker.who();
                    let reason = safe_text(&marker.reason);
                    tracing::warn!(
                        sha = %published, by = %who, reason = %reason,
                        "release {} is halted for this environment by {who} at {}: {}; not applying it \
                         (`blog-agent unhalt {published}` lets it go on)",
                        published.short(), fmt_unix(marker.at), reason
                    );
                }
                HaltKnown::Halted(marker)
            }
            Ok(None) => {
                if matches!(current, HaltKnown::Halted(_)) {
                    tracing::info!(sha = %published, "release {} is no longer halted", published.short());
                }
                HaltKnown::Clear { rechecked: wave_open }
            }
            Err(e) => {
                tracing::warn!(sha = %published, "cannot read the halt marker of {}: {e}; trying again at the next poll", published.short());
                match current {
                    halted @ HaltKnown::Halted(_) => halted,
                    _ => HaltKnown::Unknown,
                }
            }
        };
        self.halt = Some((published.clone(), next));
    }

    /// Votes to halt `sha` for `environment` after a verdict blamed the release here, with
    /// `rolled_back_to` what serves now. The release is halted once `[rollout] halt_after`
    /// hosts voted ([`crate::fleet::halt::Reading::halt`]); this host holds it back meanwhile
    /// through its own quarantine. Logged once; a vote already there (this host's earlier one)
    /// is kept. What this host knows of the published SHA's halt is read again at the next
    /// full pass, which then counts this vote too.
    ///
    /// The vote's key and its `voter` are `caller`'s `UserId`. When `caller` cannot say, or
    /// names an identity that is no safe key segment, nothing is written (logged).
    #[allow(clippy::too_many_arguments)]
    pub async fn vote(
        &mut self,
        halts: &impl HaltSource,
        caller: &impl CallerSource,
        prefix: &str,
        environment: &str,
        sha: &Sha,
        verdict: &Verdict,
        rolled_back_to: Option<&Sha>,
        published: Option<&Sha>,
    ) {
        let voter = match caller.caller_identity().await {
            Ok(identity) => identity.user_id,
            Err(e) => {
                tracing::warn!(
                    sha = %sha,
                    "not voting to halt {}: this host's AWS identity, which names its vote, is unknown ({e}); \
                     asking again at the next failure",
                    sha.short()
                );
                return;
            }
        };
        let Some(key) = vote_key(prefix, sha, &voter) else {
            tracing::warn!(
                sha = %sha, voter = %safe_text(&voter),
                "not voting to halt {}: the AWS caller identity {} is not a safe S3 key segment (letters, digits \
                 and -_.:+=,@ only), and a rewritten key would not be this host's",
                sha.short(), safe_quote(&voter)
            );
            return;
        };
        let instance_id = self.identity().await.value.clone();
        let evidence: String = verdict.evidence.chars().take(MAX_REASON_CHARS).collect();
        let vote = Vote {
            sha: sha.to_string(),
            environment: environment.to_owned(),
            voter,
            instance_id,
            verdict: verdict.rule.name().to_owned(),
            evidence,
            at: crate::state::now_unix(),
            rolled_back_to: rolled_back_to.filter(|r| *r != sha).map(Sha::to_string),
            key_voter: None,
        };
        self.metrics.add_s3_request();
        let written = halts.vote(prefix, &vote).await;
        if written.is_ok() {
            self.voted = Some(sha.clone());
        }
        match written {
            Ok(true) => tracing::warn!(
                sha = %sha, env = environment, key = %key, verdict = %verdict.rule,
                "voted to halt {} for {environment} ({key}): {verdict}; {}; it is halted for every host once \
                 [rollout] halt_after hosts voted",
                sha.short(),
                match rolled_back_to.filter(|r| *r != sha) {
                    Some(to) => format!("this host serves {} again", to.short()),
                    None => "nothing serves here".to_owned(),
                }
            ),
            Ok(false) => {
                tracing::info!(sha = %sha, key = %key, "this host voted to halt {} already ({key})", sha.short())
            }
            Err(e) => tracing::warn!(sha = %sha, "could not vote to halt {}: {e}", sha.short()),
        }
        if published == Some(sha) && !matches!(self.halt_known(sha), HaltKnown::Halted(_)) {
            self.halt = Some((sha.clone(), HaltKnown::Unknown));
        }
    }

    /// Adds the ECR calls made since the last call (the credential source counts them).
    pub fn count_ecr_calls(&mut self, total: u64) {
        if total > self.ecr_calls_seen {
            self.metrics.add_ecr_calls(total - self.ecr_calls_seen);
        }
        self.ecr_calls_seen = total;
    }

    /// Writes the metrics textfile. A failure is logged (once until it changes or clears) and
    /// never fails the pass.
    pub fn write_metrics(&mut self, path: &std::path::Path) {
        match self.metrics.write(path) {
            Ok(()) => {
                if self.metrics_error.take().is_some() {
                    tracing::info!(path = %path.display(), "metrics textfile written again");
                }
            }
            Err(e) => {
                let text = e.to_string();
                if self.metrics_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!(path = %path.display(), "cannot write the metrics textfile: {text}");
                }
                self.metrics_error = Some(text);
            }
        }
    }
}

/// Is this host's wave of `gate`'s release open now? `true` with no gate.
pub fn wave_open(gate: Option<&RolloutGate>) -> bool {
    gate.is_none_or(|g| rollout::gate(g.published_at, g.seed, g.spread, g.now, false) == Gate::Now)
}

fn fmt_unix(secs: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::rollout::IdentitySource;
    use crate::outside::halts::{HaltError, MemoryHalts};
    use crate::outside::sts::{CallerIdentity, StsError};

    const PREFIX: &str = "staging/halted/";

    /// STS as a host sees it: its instance profile's `UserId`, or no answer (`None`).
    struct Caller(Option<&'static str>);

    const I_0ABC: Caller = Caller(Some("AROAEXAMPLE:i-0abc"));
    const I_0DEF: Caller = Caller(Some("AROAEXAMPLE:i-0def"));

    impl CallerSource for Caller {
        async fn caller_identity(&self) -> Result<CallerIdentity, StsError> {
            match self.0 {
                Some(id) => {
                    Ok(CallerIdentity { user_id: id.into(), arn: format!("arn:aws:sts::1:assumed-role/r/{id}") })
                }
                None => Err(StsError::Unavailable { detail: "connection refused".into() }),
            }
        }
    }

    fn sha(c: char) -> Sha {
        Sha::parse(&c.to_string().repeat(40)).unwrap()
    }

    fn fleet() -> Fleet {
        Fleet::with_identity(Identity { value: "i-0abc".into(), source: IdentitySource::InstanceId })
    }

    /// Counts reads, and can fail them.
    #[derive(Default)]
    struct Counting {
        inner: MemoryHalts,
        reads: std::sync::atomic::AtomicUsize,
        fail: std::sync::atomic::AtomicBool,
    }

    impl HaltSource for Counting {
        async fn read(&self, key_prefix: &str, sha: &Sha) -> Result<crate::fleet::halt::Reading, HaltError> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(HaltError::Unavailable {
                    action: "reading",
                    location: crate::outside::release::ObjectLocation { bucket: "b".into(), key: "k".into() },
                    detail: "503".into(),
                });
            }
            self.inner.read(key_prefix, sha).await
        }
        async fn vote(&self, key_prefix: &str, vote: &Vote) -> Result<bool, HaltError> {
            self.inner.vote(key_prefix, vote).await
        }
    }

    impl Counting {
        fn reads(&self) -> usize {
            self.reads.load(std::sync::atomic::Ordering::SeqCst)
        }
        fn put(&self, halted: &Sha) {
            let marker = Marker {
                sha: halted.to_string(),
                environment: "staging".into(),
                instance_id: "i-canary".into(),
                reason: "candidate probe: HTTP 500".into(),
                at: 1,
                rolled_back_to: None,
                by: None,
            };
            self.inner.markers.lock().unwrap().insert(format!("{PREFIX}{halted}"), marker);
        }
        fn remove(&self, halted: &Sha) {
            self.inner.markers.lock().unwrap().remove(&format!("{PREFIX}{halted}"));
        }
    }

    #[tokio::test]
    async fn a_new_sha_s_marker_is_read_once_and_again_when_the_wave_opens() {
        let (a, b) = (sha('a'), sha('b'));
        let halts = Counting::default();
        let mut f = fleet();
        // First seen before this host's wave: one read.
        f.check_halt(&halts, PREFIX, "staging", 2, &a, Some(&b), false).await;
        assert_eq!((halts.reads(), f.halt_known(&a)), (1, HaltKnown::Clear { rechecked: false }));
        // Idle polls while waiting: nothing read.
        for _ in 0..5 {
            f.check_halt(&halts, PREFIX, "staging", 2, &a, Some(&b), false).await;
        }
        assert_eq!(halts.reads(), 1);
        // A canary halts it meanwhile; the wave opens: read once more, and it is seen.
        halts.put(&a);
        f.check_halt(&halts, PREFIX, "staging", 2, &a, Some(&b), true).await;
        assert_eq!(halts.reads(), 2);
        assert_eq!(f.halt_of(&a).map(|m| m.instance_id.as_str()), Some("i-canary"));
        // While halted, every full pass looks again, so an unhalt is noticed.
        f.check_halt(&halts, PREFIX, "staging", 2, &a, Some(&b), true).await;
        assert_eq!(halts.reads(), 3);
        halts.remove(&a);
        f.check_halt(&halts, PREFIX, "staging", 2, &a, Some(&b), true).await;
        assert_eq!((halts.reads(), f.halt_of(&a)), (4, None));
        assert_eq!(f.halt_known(&a), HaltKnown::Clear { rechecked: true });
        // Then idle again.
        f.check_halt(&halts, PREFIX, "staging", 2, &a, Some(&b), true).await;
        assert_eq!(halts.reads(), 4);
        assert_eq!(
            f.metrics.render().lines().find(|l| l.starts_with("blog_agent_s3_requests_total ")),
            Some("blog_agent_s3_requests_total 4")
        );
    }

    #[tokio::test]
    async fn with_no_wave_to_wait_for_one_read_is_enough() {
        let (a, b) = (sha('a'), sha('b'));
        let halts = Counting::default();
        let mut f = fleet();
        for _ in 0..3 {
            f.check_halt(&halts, PREFIX, "staging", 2, &a, Some(&b), true).await;
        }
        assert_eq!(halts.reads(), 1);
        // A host already running the published SHA reads nothing.
        let mut f = fleet();
        f.check_halt(&halts, PREFIX, "staging", 2, &a, Some(&a), true).await;
        assert_eq!(halts.reads(), 1);
        // A new SHA is read again.
        f.check_halt(&halts, PREFIX, "staging", 2, &b, Some(&a), true).await;
        assert_eq!(halts.reads(), 2);
    }

    #[tokio::test]
    async fn a_failed_read_is_retried_and_a_known_halt_survives_it() {
        let (a, b) = (sha('a'), sha('b'));
        let halts = Counting::default();
        let mut f = fleet();
        halts.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        f.check_halt(&halts, PREFIX, "staging", 2, &a, Some(&b), true).await;
        assert_eq!(f.halt_known(&a), HaltKnown::Unknown);
        halts.fail.store(false, std::sync::atomic::Ordering::SeqCst);
        halts.put(&a);
        f.check_halt(&halts, PREFIX, "staging", 2, &a, Some(&b), true).await;
        assert!(f.halt_of(&a).is_some());
        halts.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        f.check_halt(&halts, PREFIX, "staging", 2, &a, Some(&b), true).await;
        assert!(f.halt_of(&a).is_some(), "an unreadable marker does not unhalt");
    }

    fn blamed(evidence: &str) -> Verdict {
        Verdict { rule: crate::fleet::verdict::Rule::NeverAnswered, evidence: evidence.into() }
    }

    #[tokio::test]
    async fn a_release_blamed_here_gets_this_host_s_vote_and_is_halted_once_enough_hosts_voted() {
        let (a, b) = (sha('a'), sha('b'));
        let halts = MemoryHalts::default();
        let mut f = fleet();
        f.vote(&halts, &I_0ABC, PREFIX, "staging", &a, &blamed("HTTP 500"), Some(&b), Some(&a)).await;
        let reading = halts.read(PREFIX, &a).await.unwrap();
        assert_eq!(reading.votes.len(), 1);
        let vote = &reading.votes[0];
        assert_eq!((vote.instance_id.as_str(), vote.environment.as_str()), ("i-0abc", "staging"));
        assert_eq!(
            (vote.voter.as_str(), vote.key_voter.as_deref()),
            ("AROAEXAMPLE:i-0abc", Some("AROAEXAMPLE:i-0abc"))
        );
        assert_eq!((vote.verdict.as_str(), vote.rolled_back_to.as_deref()), ("never-answered", Some(b.as_str())));
        assert_eq!(reading.marker, None, "a host never writes the decisive marker");
        // One vote of two: not halted; this host reads again at its next full pass.
        assert_eq!(f.halt_known(&a), HaltKnown::Unknown);
        f.check_halt(&halts, PREFIX, "staging", 2, &a, Some(&b), true).await;
        assert_eq!(f.halt_of(&a), None);
        // The same host voting again is still one vote.
        f.vote(&halts, &I_0ABC, PREFIX, "staging", &a, &blamed("again"), Some(&b), Some(&a)).await;
        f.check_halt(&halts, PREFIX, "staging", 2, &a, Some(&b), true).await;
        assert_eq!(f.halt_of(&a), None);
        // A second host: halted, with the rollback target they agree on.
        let mut other = Fleet::with_identity(Identity { value: "i-0def".into(), source: IdentitySource::InstanceId });
        other.vote(&halts, &I_0DEF, PREFIX, "staging", &a, &blamed(&"x".repeat(2000)), Some(&b), Some(&a)).await;
        other.check_halt(&halts, PREFIX, "staging", 2, &a, Some(&b), true).await;
        let halt = other.halt_of(&a).expect("two votes halt it");
        assert_eq!(halt.rolled_back_to_sha(), Some(b.clone()));
        assert!(halt.reason.starts_with("2 hosts failed it (never-answered)"), "{}", halt.reason);
        // The first voter learns it at its next full pass, though it read the votes since its
        // wave opened and holds the release back in its quarantine (it tries nothing).
        f.check_halt(&halts, PREFIX, "staging", 2, &a, Some(&b), true).await;
        assert!(f.halt_of(&a).is_some(), "a voter keeps reading the votes until the release is halted");
        // A host that did not vote and already read since its wave opened does not read again.
        let quiet = Counting::default();
        let mut g = fleet();
        g.check_halt(&quiet, PREFIX, "staging", 2, &a, Some(&b), true).await;
        g.check_halt(&quiet, PREFIX, "staging", 2, &a, Some(&b), true).await;
        assert_eq!(quiet.reads(), 1);
        // Evidence is bounded.
        let long = halts.votes.lock().unwrap().values().map(|v| v.evidence.len()).max().unwrap();
        assert_eq!(long, MAX_REASON_CHARS);
        // Another environment's host counts for nothing here, and the other way round.
        let c = sha('c');
        f.vote(&halts, &I_0ABC, PREFIX, "production", &c, &blamed("x"), None, None).await;
        other.vote(&halts, &I_0DEF, PREFIX, "production", &c, &blamed("x"), None, None).await;
        let mut g = fleet();
        g.check_halt(&halts, PREFIX, "staging", 2, &c, Some(&b), true).await;
        assert_eq!(g.halt_of(&c), None);
        let mut g = fleet();
        g.check_halt(&halts, PREFIX, "production", 2, &c, Some(&b), true).await;
        assert!(g.halt_of(&c).is_some());
        // With halt_after = 1 the first vote halts: one host's evidence is enough.
        let d = sha('d');
        f.vote(&halts, &I_0ABC, PREFIX, "staging", &d, &blamed("x"), Some(&d), None).await;
        let mut h = fleet();
        h.check_halt(&halts, PREFIX, "staging", 1, &d, Some(&b), true).await;
        assert!(h.halt_of(&d).is_some());
        // A rollback target that is the failed release itself is not one.
        assert_eq!(halts.read(PREFIX, &d).await.unwrap().votes[0].rolled_back_to, None);
    }

    #[tokio::test]
    async fn no_vote_is_written_while_sts_cannot_say_who_this_host_is() {
        let a = sha('a');
        let halts = MemoryHalts::default();
        let mut f = fleet();
        f.vote(&halts, &Caller(None), PREFIX, "staging", &a, &blamed("HTTP 500"), None, Some(&a)).await;
        assert!(halts.votes.lock().unwrap().is_empty(), "no vote under a guessed key");
        assert_eq!(f.voted, None);
        // An identity that is no safe key segment is refused, not rewritten.
        f.vote(&halts, &Caller(Some("AROAEXAMPLE:i/0abc")), PREFIX, "staging", &a, &blamed("x"), None, None).await;
        assert!(halts.votes.lock().unwrap().is_empty());
        // STS answers at the next failure: the vote is written under the identity.
        f.vote(&halts, &I_0ABC, PREFIX, "staging", &a, &blamed("HTTP 500"), None, Some(&a)).await;
        let keys: Vec<String> = halts.votes.lock().unwrap().keys().cloned().collect();
        assert_eq!(keys, [format!("{PREFIX}{a}/AROAEXAMPLE:i-0abc")]);
        assert_eq!(f.voted, Some(a));
    }

    #[tokio::test]
    async fn the_gate_needs_a_spread_and_a_publication_time() {
        let mut f = fleet();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_750_000_000);
        assert_eq!(f.gate(Duration::ZERO, Some(t)).await, None);
        assert_eq!(f.gate(Duration::from_secs(60), None).await, None);
        let gate = f.gate(Duration::from_secs(60), Some(t)).await.unwrap();
        assert_eq!(gate.seed, rollout::seed("i-0abc"));
        assert!(wave_open(Some(&gate)), "published long ago");
        assert!(wave_open(None));
        let fresh = RolloutGate { published_at: SystemTime::now(), now: SystemTime::now(), ..gate };
        assert_eq!(wave_open(Some(&fresh)), rollout::seed("i-0abc") == 0.0);
    }

    #[tokio::test]
    async fn an_open_wave_needs_a_fresh_read_of_the_marker() {
        let (a, b) = (sha('a'), sha('b'));
        let halts = Counting::default();
        let mut f = fleet();
        assert!(!f.halt_confirmed(&a), "never read");
        // Read before the wave: once open, it is unconfirmed until a fresh read.
        f.check_halt(&halts, PREFIX, "staging", 2, &a, Some(&b), false).await;
        assert!(!f.halt_confirmed(&a));
        f.check_halt(&halts, PREFIX, "staging", 2, &a, Some(&b), true).await;
        assert!(f.halt_confirmed(&a));
        // A failed read at the wave leaves it unconfirmed.
        let mut f = fleet();
        halts.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        f.check_halt(&halts, PREFIX, "staging", 2, &a, Some(&b), true).await;
        assert!(!f.halt_confirmed(&a));
    }

    #[test]
    fn ecr_calls_are_added_as_they_grow() {
        let mut f = fleet();
        f.count_ecr_calls(2);
        f.count_ecr_calls(2);
        f.count_ecr_calls(5);
        assert!(f.metrics.render().contains("\nblog_agent_ecr_calls_total 5\n"));
    }

    #[test]
    fn a_metrics_write_failure_is_kept_not_raised() {
        let mut f = fleet();
        let path = std::path::Path::new("/proc/blog-agent-no-such-dir/blog_agent.prom");
        f.write_metrics(path);
        f.write_metrics(path);
        assert!(f.metrics_error.is_some());
    }
}
