//! Bake records: what each host of an environment made of a release after its bake, so that
//! `promote` goes on evidence from the hosts that ran it rather than on time alone. The S3
//! calls that write and read them are [`crate::outside::halts`] (`record_bake`,
//! `bake_records`, `bake_counts`); this module is what they mean.
//!
//! A host that finishes the bake of a release writes one small JSON [`BakeRecord`] beside its
//! halt votes, under the environment's halt prefix ([`crate::fleet::halt::prefix_for`]):
//!
//! - `<prefix>bake/<sha>/baked/<voter>`: the bake ran its whole time and the release stays;
//! - `<prefix>bake/<sha>/reverted/<voter>`: the bake failed and the host went back to the
//!   previous release (with the reason and the [`Blame`] of the one judgement).
//!
//! The voter is the writer's AWS caller identity, exactly as for votes
//! ([`crate::fleet::halt::safe_voter`], [`crate::outside::sts`]): an IAM policy lets each host
//! write only the two keys ending in its own `${aws:userid}`. The records sit in their own
//! folder (`bake/`, never a SHA: `k` is not a hex digit) so they never enter the bounded listing
//! of a SHA's halt votes, and an `unhalt` (which removes a SHA's votes) leaves them alone. Each
//! key is written once (`If-None-Match: *`); a host that baked a release and reverted it on a
//! later deploy has both.
//!
//! **What counts.** Evidence *for* a release must be exact; evidence *against* it counts
//! however it is written ([`read_record`]):
//! - a baked record counts only when its body is a record of this environment and SHA whose
//!   voter is the one its key names;
//! - a reverted record counts whatever its body (empty, not JSON, another voter in the body:
//!   an object at the key is a revert, as any object at a marker's key halts), unless the body
//!   is a record of another environment.
//!
//! `promote` also counts the halt votes on the release ([`crate::fleet::halt::Vote`], with the
//! same identity rule as [`crate::fleet::halt::Reading::halt`]): a host that voted against it
//! refuses it as a revert does ([`judge_promotion`]). `releases` counts keys from one listing
//! of the prefix, reading no bodies ([`count_keys`]).
//!
//! Pure: no I/O, no clock. Table-tested below.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::fleet::halt::{safe_voter, Vote, MAX_MARKER_BYTES};
use crate::fleet::verdict::Blame;
use crate::sha::{safe_quote, safe_text, Sha};

/// A record is a few hundred bytes; a larger one is not read into memory (a reverted one still
/// counts).
pub const MAX_RECORD_BYTES: usize = MAX_MARKER_BYTES;

/// The folder of the records under a halt prefix. Not a SHA (`k` is no hex digit), so a
/// marker or vote key never starts with it.
pub const FOLDER: &str = "bake/";

/// How a bake ended. Its name is the key's folder and the body's `outcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum BakeOutcome {
    /// The bake ran its whole time: the release stays on the host and the previous one is
    /// retired.
    Baked,
    /// The bake failed and the host went back to the previous release.
    Reverted {
        /// What failed, short (the check, the exit, the share of 5xx).
        reason: String,
        /// The one judgement's blame ([`crate::fleet::verdict`]): only a revert blamed on the
        /// release refuses a promotion; one blamed on the host is that host's own trouble (it
        /// counts as no bake either).
        blame: Blame,
    },
}

/// The two outcomes as the key names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Baked,
    Reverted,
}

impl Kind {
    /// The key's folder: `baked` or `reverted`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Baked => "baked",
            Kind::Reverted => "reverted",
        }
    }

    fn parse(name: &str) -> Option<Kind> {
        match name {
            "baked" => Some(Kind::Baked),
            "reverted" => Some(Kind::Reverted),
            _ => None,
        }
    }
}

impl BakeOutcome {
    pub fn kind(&self) -> Kind {
        match self {
            BakeOutcome::Baked => Kind::Baked,
            BakeOutcome::Reverted { .. } => Kind::Reverted,
        }
    }
}

/// One host's record of one bake. Field names are the wire format (docs and tools read them);
/// the outcome's fields are flattened in: `"outcome": "baked"`, or `"outcome": "reverted",
/// "reason": ..., "blame": "release"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BakeRecord {
    pub sha: String,
    pub environment: String,
    /// The writer's AWS caller identity (`UserId`), which is also its key's last segment.
    pub voter: String,
    /// The host (its EC2 instance id, else machine id or hostname): for people.
    pub instance_id: String,
    #[serde(flatten)]
    pub outcome: BakeOutcome,
    /// Unix seconds when the bake ended.
    pub at: u64,
}

impl BakeRecord {
    /// Who wrote it, for people: the instance id, else the voter.
    pub fn host(&self) -> &str {
        if self.instance_id.is_empty() {
            &self.voter
        } else {
            &self.instance_id
        }
    }
}

/// The key of `record` under `prefix`: `<prefix>bake/<sha>/<baked|reverted>/<voter>`, the
/// voter unchanged. `None` when the SHA is not one or [`safe_voter`] refuses the voter.
pub fn record_key(prefix: &str, record: &BakeRecord) -> Option<String> {
    let sha = Sha::parse(&record.sha).ok()?;
    safe_voter(&record.voter)
        .then(|| format!("{prefix}{FOLDER}{sha}/{}/{}", record.outcome.kind().name(), record.voter))
}

/// The folder of `sha`'s records under `prefix`, for one listing.
pub fn sha_folder(prefix: &str, sha: &Sha) -> String {
    format!("{prefix}{FOLDER}{sha}/")
}

/// What a listed key under a halt prefix is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    /// `<prefix><sha>`: a halt marker.
    Marker { sha: String },
    /// `<prefix><sha>/<voter>`: a halt vote.
    Vote { sha: String, voter: String },
    /// `<prefix>bake/<sha>/<kind>/<voter>`: a bake record.
    Record { sha: String, kind: Kind, voter: String },
}

/// What `key` (listed under `prefix`) is, or `None` for anything else (another tool's object,
/// an unsafe voter, a folder of its own).
pub fn parse_key(prefix: &str, key: &str) -> Option<Listed> {
    let rest = key.strip_prefix(prefix)?;
    if let Some(rest) = rest.strip_prefix(FOLDER) {
        let mut parts = rest.splitn(3, '/');
        let (sha, kind, voter) = (parts.next()?, parts.next()?, parts.next()?);
        let (sha, kind) = (Sha::parse(sha).ok()?, Kind::parse(kind)?);
        return safe_voter(voter).then(|| Listed::Record { sha: sha.to_string(), kind, voter: voter.to_owned() });
    }
    match rest.split_once('/') {
        None => Some(Listed::Marker { sha: Sha::parse(rest).ok()?.to_string() }),
        Some((sha, voter)) => {
            let sha = Sha::parse(sha).ok()?;
            safe_voter(voter).then(|| Listed::Vote { sha: sha.to_string(), voter: voter.to_owned() })
        }
    }
}

/// How many distinct hosts baked, reverted and voted against one release, counted from keys.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub baked: usize,
    pub reverted: usize,
    pub votes: usize,
}

/// The [`Counts`] of every SHA that has a record or a vote among `keys` (one listing of
/// `prefix`): one per key, as an IAM policy lets each host write only its own keys. Bodies
/// are not read (see the module docs for what `promote` reads).
pub fn count_keys<'k>(prefix: &str, keys: impl IntoIterator<Item = &'k str>) -> BTreeMap<String, Counts> {
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    for key in keys {
        match parse_key(prefix, key) {
            Some(Listed::Record { sha, kind: Kind::Baked, .. }) => counts.entry(sha).or_default().baked += 1,
            Some(Listed::Record { sha, kind: Kind::Reverted, .. }) => counts.entry(sha).or_default().reverted += 1,
            Some(Listed::Vote { sha, .. }) => counts.entry(sha).or_default().votes += 1,
            Some(Listed::Marker { .. }) | None => {}
        }
    }
    counts
}

/// The record at a key of `sha`'s folder as it counts for `environment` (see the module docs),
/// or why it does not count (for the reader's log).
pub fn read_record(
    sha: &Sha,
    kind: Kind,
    voter: &str,
    bytes: &[u8],
    environment: &str,
    location: &impl fmt::Display,
) -> Result<BakeRecord, String> {
    let parsed = match bytes.len() > MAX_RECORD_BYTES {
        true => Err(format!("over {MAX_RECORD_BYTES} bytes")),
        false => serde_json::from_slice::<BakeRecord>(bytes)
            .map_err(|e| format!("{}: {e}", safe_quote(&String::from_utf8_lossy(&bytes[..bytes.len().min(200)])))),
    };
    match (kind, parsed) {
        (_, Ok(record)) if record.environment != environment => {
            Err(format!("{location} is a record of environment {}, not {environment}", safe_quote(&record.environment)))
        }
        (Kind::Baked, Ok(record)) if record.voter != voter => Err(format!(
            "{location}: its body names voter {}, its key {voter}; a record counts only at its writer's own key",
            safe_quote(&record.voter)
        )),
        (Kind::Baked, Ok(record)) if record.sha != sha.as_str() => {
            Err(format!("{location}: its body names release {}", safe_quote(&record.sha)))
        }
        (Kind::Baked, Ok(record)) if record.outcome != BakeOutcome::Baked => {
            Err(format!("{location}: its body says {}, not baked", record.outcome.kind().name()))
        }
        (Kind::Baked, Ok(record)) => Ok(record),
        (Kind::Baked, Err(what)) => Err(format!("{location} is not a blog-agent bake record ({what})")),
        // Evidence against a release counts however it is written.
        (Kind::Reverted, Ok(record)) => {
            let outcome = match record.outcome {
                BakeOutcome::Baked => BakeOutcome::Reverted {
                    reason: format!("{location} says baked under reverted/"),
                    blame: Blame::Release,
                },
                reverted => reverted,
            };
            Ok(BakeRecord { sha: sha.to_string(), voter: voter.to_owned(), outcome, ..record })
        }
        (Kind::Reverted, Err(what)) => Ok(BakeRecord {
            sha: sha.to_string(),
            environment: environment.to_owned(),
            voter: voter.to_owned(),
            instance_id: String::new(),
            outcome: BakeOutcome::Reverted {
                reason: format!(
                    "{location} is not a blog-agent bake record ({what}); it counts as a revert all the same"
                ),
                blame: Blame::Release,
            },
            at: 0,
        }),
    }
}

/// One host's evidence against a release: its revert, or its halt vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Against {
    /// The voter (caller identity) its key names.
    pub voter: String,
    /// For people: the instance id, else the voter.
    pub host: String,
    /// `reverted (release): 5xx share 40%` or `voted (never-answered): HTTP 500`.
    pub what: String,
}

/// What `promote` needs from `from`: every host's bake records of the release and its halt
/// votes (as read, each vote with its key's voter).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Evidence {
    pub records: Vec<BakeRecord>,
    pub votes: Vec<Vote>,
}

impl Evidence {
    /// The distinct voters that finished a bake of `sha` in `environment`.
    pub fn baked_by(&self, sha: &Sha, environment: &str) -> Vec<&BakeRecord> {
        let mut seen: Vec<&BakeRecord> = Vec::new();
        for record in self.records.iter().filter(|r| {
            r.outcome == BakeOutcome::Baked
                && r.sha == sha.as_str()
                && r.environment == environment
                && safe_voter(&r.voter)
        }) {
            if !seen.iter().any(|s| s.voter == record.voter) {
                seen.push(record);
            }
        }
        seen
    }

    /// The distinct voters that reverted `sha` or voted against it in `environment`; a host
    /// that did both is named once, with its revert. A vote counts as
    /// [`crate::fleet::halt::Reading::halt`] counts it: its body's voter is its key's.
    pub fn against(&self, sha: &Sha, environment: &str) -> Vec<Against> {
        let mut against: Vec<Against> = Vec::new();
        let mut add = |voter: &str, host: &str, what: String| {
            if !against.iter().any(|a| a.voter == voter) {
                against.push(Against { voter: voter.to_owned(), host: host.to_owned(), what });
            }
        };
        // A revert the one judgement blamed on the host (an OOM kill, a kill from outside, a
        // spec changed here) is that host's own trouble: like its failure, which casts no vote,
        // it never stops the release elsewhere. It is no bake either.
        for record in self.records.iter().filter(|r| r.sha == sha.as_str() && r.environment == environment) {
            if let BakeOutcome::Reverted { reason, blame: Blame::Release } = &record.outcome {
                add(&record.voter, record.host(), format!("reverted (release): {}", safe_text(reason)));
            }
        }
        for vote in self.votes.iter().filter(|v| v.environment == environment && v.sha == sha.as_str()) {
            let Some(voter) = vote.key_voter.as_deref().filter(|k| *k == vote.voter && safe_voter(k)) else {
                continue;
            };
            let host = if vote.instance_id.is_empty() { voter } else { vote.instance_id.as_str() };
            add(voter, host, format!("voted ({}): {}", safe_text(&vote.verdict), safe_text(&vote.evidence)));
        }
        against
    }
}

/// Why `promote` refuses a release on its evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Hosts of `from` reverted it or voted against it (overridden by `--force`).
    Against(Vec<Against>),
    /// Fewer than `--baked-by` hosts of `from` finished a bake of it (`--force` does not
    /// override an explicit ask).
    TooFewBakes { baked: Vec<String>, wanted: u32 },
}

/// Whether `promote` may publish `sha` on the evidence of `environment` (the `--from`): no
/// host against it unless `force`, and at least `baked_by` hosts that baked it.
pub fn judge_promotion(
    evidence: &Evidence,
    sha: &Sha,
    environment: &str,
    force: bool,
    baked_by: u32,
) -> Result<(), Refusal> {
    let against = evidence.against(sha, environment);
    if !against.is_empty() && !force {
        return Err(Refusal::Against(against));
    }
    let baked = evidence.baked_by(sha, environment);
    if (baked.len() as u64) < u64::from(baked_by) {
        return Err(Refusal::TooFewBakes {
            baked: baked.iter().map(|r| r.host().to_owned()).collect(),
            wanted: baked_by,
        });
    }
    Ok(())
}

/// A record of 3f2a9c1 for staging by `voter`: for the unit tests here and in
/// [`crate::outside::halts`].
#[cfg(test)]
pub(crate) fn record(voter: &str, instance_id: &str, outcome: BakeOutcome) -> BakeRecord {
    BakeRecord {
        sha: "3f2a9c1".into(),
        environment: "staging".into(),
        voter: voter.into(),
        instance_id: instance_id.into(),
        outcome,
        at: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::halt::cast;

    const A: &str = "AROAEXAMPLE:i-0aaa";
    const B: &str = "AROAEXAMPLE:i-0bbb";
    const C: &str = "AROAEXAMPLE:i-0ccc";

    fn sha(s: &str) -> Sha {
        Sha::parse(s).unwrap()
    }

    fn reverted(reason: &str, blame: Blame) -> BakeOutcome {
        BakeOutcome::Reverted { reason: reason.into(), blame }
    }

    #[test]
    fn record_json_is_the_documented_shape() {
        let baked = record(A, "i-0aaa", BakeOutcome::Baked);
        assert_eq!(
            serde_json::to_value(&baked).unwrap(),
            serde_json::json!({
                "sha": "3f2a9c1", "environment": "staging", "voter": A, "instance_id": "i-0aaa",
                "outcome": "baked", "at": 1
            })
        );
        let back = record(B, "i-0bbb", reverted("/posts/ answered 500 three times", Blame::Release));
        let json = serde_json::to_value(&back).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "sha": "3f2a9c1", "environment": "staging", "voter": B, "instance_id": "i-0bbb",
                "outcome": "reverted", "reason": "/posts/ answered 500 three times", "blame": "release", "at": 1
            })
        );
        assert_eq!(serde_json::from_value::<BakeRecord>(json).unwrap(), back);
    }

    #[test]
    fn a_record_key_ends_in_the_voter_as_it_is_or_is_refused() {
        let cases: &[(&str, &str, BakeOutcome, Option<&str>)] = &[
            ("3f2a9c1", A, BakeOutcome::Baked, Some("staging/halted/bake/3f2a9c1/baked/AROAEXAMPLE:i-0aaa")),
            ("3f2a9c1", A, reverted("x", Blame::Host), Some("staging/halted/bake/3f2a9c1/reverted/AROAEXAMPLE:i-0aaa")),
            ("3f2a9c1", "a/b", BakeOutcome::Baked, None),
            ("3f2a9c1", "", BakeOutcome::Baked, None),
            ("3f2a9c1", "..", BakeOutcome::Baked, None),
            ("main", A, BakeOutcome::Baked, None),
            ("../x", A, BakeOutcome::Baked, None),
        ];
        for (sha, voter, outcome, want) in cases {
            let r = BakeRecord { sha: (*sha).into(), ..record(voter, "i-0", outcome.clone()) };
            assert_eq!(record_key("staging/halted/", &r).as_deref(), *want, "{sha} {voter:?}");
        }
        assert_eq!(sha_folder("halted/", &sha("3f2a9c1")), "halted/bake/3f2a9c1/");
    }

    #[test]
    fn listed_keys_are_told_apart() {
        let p = "staging/halted/";
        let cases: &[(&str, Option<Listed>)] = &[
            ("staging/halted/3f2a9c1", Some(Listed::Marker { sha: "3f2a9c1".into() })),
            ("staging/halted/3f2a9c1/AROA:i-1", Some(Listed::Vote { sha: "3f2a9c1".into(), voter: "AROA:i-1".into() })),
            (
                "staging/halted/bake/3f2a9c1/baked/AROA:i-1",
                Some(Listed::Record { sha: "3f2a9c1".into(), kind: Kind::Baked, voter: "AROA:i-1".into() }),
            ),
            (
                "staging/halted/bake/3f2a9c1/reverted/AROA:i-1",
                Some(Listed::Record { sha: "3f2a9c1".into(), kind: Kind::Reverted, voter: "AROA:i-1".into() }),
            ),
            ("staging/halted/bake/3f2a9c1/other/AROA:i-1", None),
            ("staging/halted/bake/3f2a9c1/baked/a/b", None),
            ("staging/halted/bake/3f2a9c1/baked/", None),
            ("staging/halted/bake/3f2a9c1", None),
            ("staging/halted/bake/", None),
            ("staging/halted/3f2a9c1/a/b", None),
            ("staging/halted/README", None),
            ("production/halted/3f2a9c1", None),
        ];
        for (key, want) in cases {
            assert_eq!(parse_key(p, key), *want, "{key}");
        }
    }

    #[test]
    fn releases_counts_one_per_key() {
        let keys = [
            "staging/halted/3f2a9c1",
            "staging/halted/3f2a9c1/AROA:i-1",
            "staging/halted/bake/3f2a9c1/baked/AROA:i-2",
            "staging/halted/bake/3f2a9c1/baked/AROA:i-3",
            "staging/halted/bake/3f2a9c1/reverted/AROA:i-1",
            "staging/halted/bake/1a2b3c4/baked/AROA:i-2",
            "staging/halted/bake/1a2b3c4/junk/AROA:i-2",
            "staging/halted/notes.txt",
        ];
        let counts = count_keys("staging/halted/", keys);
        assert_eq!(counts.len(), 2, "{counts:?}");
        assert_eq!(counts["3f2a9c1"], Counts { baked: 2, reverted: 1, votes: 1 });
        assert_eq!(counts["1a2b3c4"], Counts { baked: 1, reverted: 0, votes: 0 });
    }

    #[test]
    fn evidence_for_a_release_must_be_exact_and_against_it_counts_however_written() {
        let s = sha("3f2a9c1");
        let json = |r: &BakeRecord| serde_json::to_vec(r).unwrap();
        let baked = json(&record(A, "i-0aaa", BakeOutcome::Baked));
        let back = json(&record(A, "i-0aaa", reverted("exit 1", Blame::Release)));
        let production =
            json(&BakeRecord { environment: "production".into(), ..record(A, "i-0aaa", BakeOutcome::Baked) });
        let other_sha = json(&BakeRecord { sha: "1a2b3c4".into(), ..record(A, "i-0aaa", BakeOutcome::Baked) });
        /// (what, the key's kind, the key's voter, the body, counts as: `None` ignored).
        type Case = (&'static str, Kind, &'static str, Vec<u8>, Option<Kind>);
        let cases: Vec<Case> = vec![
            ("a baked record", Kind::Baked, A, baked.clone(), Some(Kind::Baked)),
            ("a baked body under another voter's key", Kind::Baked, B, baked.clone(), None),
            ("a baked key whose body says reverted", Kind::Baked, A, back.clone(), None),
            ("a baked record of another environment", Kind::Baked, A, production.clone(), None),
            ("a baked record of another release", Kind::Baked, A, other_sha, None),
            ("an empty baked object", Kind::Baked, A, Vec::new(), None),
            ("junk under baked/", Kind::Baked, A, b"ok\n".to_vec(), None),
            ("a reverted record", Kind::Reverted, A, back.clone(), Some(Kind::Reverted)),
            ("a reverted body under another voter's key", Kind::Reverted, B, back, Some(Kind::Reverted)),
            ("a baked body under reverted/", Kind::Reverted, A, baked, Some(Kind::Reverted)),
            ("an empty reverted object", Kind::Reverted, A, Vec::new(), Some(Kind::Reverted)),
            ("junk under reverted/", Kind::Reverted, A, b"bad".to_vec(), Some(Kind::Reverted)),
            ("too large under reverted/", Kind::Reverted, A, vec![b' '; MAX_RECORD_BYTES + 1], Some(Kind::Reverted)),
            ("a reverted record of another environment", Kind::Reverted, A, production, None),
        ];
        let location = "s3://b/staging/halted/bake/3f2a9c1/x/y";
        for (what, kind, voter, body, want) in cases {
            let got = read_record(&s, kind, voter, &body, "staging", &location);
            assert_eq!(got.as_ref().ok().map(|r| r.outcome.kind()), want, "{what}: {got:?}");
            if let Ok(record) = got {
                assert_eq!((record.voter.as_str(), record.sha.as_str()), (voter, "3f2a9c1"), "{what}");
            }
        }
        let junk = read_record(&s, Kind::Reverted, A, b"bad", "staging", &location).unwrap();
        assert!(
            matches!(&junk.outcome, BakeOutcome::Reverted { reason, .. } if reason.contains(location) && reason.contains("\"bad\"")),
            "{junk:?}"
        );
    }

    #[test]
    fn promotion_is_refused_on_any_host_against_and_on_too_few_bakes() {
        let s = sha("3f2a9c1");
        let baked = |v: &str, id: &str| record(v, id, BakeOutcome::Baked);
        let back = |v: &str, id: &str, blame| record(v, id, reverted("exit 1", blame));
        type Case = (&'static str, Vec<BakeRecord>, Vec<Vote>, bool, u32, Result<(), &'static str>);
        let cases: Vec<Case> = vec![
            ("no evidence, nothing asked", vec![], vec![], false, 0, Ok(())),
            ("no evidence, one bake asked", vec![], vec![], false, 1, Err("0 of 1 baked: []")),
            ("one bake, one asked", vec![baked(A, "i-0aaa")], vec![], false, 1, Ok(())),
            ("one bake, two asked", vec![baked(A, "i-0aaa")], vec![], false, 2, Err("1 of 2 baked: [i-0aaa]")),
            ("two bakes, two asked", vec![baked(A, "i-0aaa"), baked(B, "i-0bbb")], vec![], false, 2, Ok(())),
            (
                "one host's two bakes count once",
                vec![baked(A, "i-0aaa"), baked(A, "i-0aaa")],
                vec![],
                false,
                2,
                Err("1 of 2 baked: [i-0aaa]"),
            ),
            (
                "a bake of another environment",
                vec![baked(A, "i-0aaa"), BakeRecord { environment: "production".into(), ..baked(B, "i-0bbb") }],
                vec![],
                false,
                2,
                Err("1 of 2 baked: [i-0aaa]"),
            ),
            (
                "a revert refuses",
                vec![baked(A, "i-0aaa"), back(B, "i-0bbb", Blame::Release)],
                vec![],
                false,
                0,
                Err("against: [i-0bbb]"),
            ),
            (
                "a revert blamed on the host is that host's own trouble",
                vec![back(B, "i-0bbb", Blame::Host)],
                vec![],
                false,
                0,
                Ok(()),
            ),
            ("... and no bake", vec![back(B, "i-0bbb", Blame::Host)], vec![], false, 1, Err("0 of 1 baked: []")),
            (
                "--force overrides a revert",
                vec![baked(A, "i-0aaa"), back(B, "i-0bbb", Blame::Release)],
                vec![],
                true,
                1,
                Ok(()),
            ),
            (
                "--force does not make bakes",
                vec![back(B, "i-0bbb", Blame::Release)],
                vec![],
                true,
                1,
                Err("0 of 1 baked: []"),
            ),
            (
                "one vote refuses",
                vec![baked(A, "i-0aaa")],
                vec![cast(Some(B), B, "i-0bbb")],
                false,
                1,
                Err("against: [i-0bbb]"),
            ),
            ("--force overrides a vote", vec![baked(A, "i-0aaa")], vec![cast(Some(B), B, "i-0bbb")], true, 1, Ok(())),
            ("a forged vote does not count", vec![], vec![cast(Some(B), A, "i-0aaa")], false, 0, Ok(())),
            ("a vote not read from a key does not count", vec![], vec![cast(None, A, "i-0aaa")], false, 0, Ok(())),
            (
                "a vote of another environment",
                vec![],
                vec![Vote { environment: "production".into(), ..cast(Some(A), A, "i-0aaa") }],
                false,
                0,
                Ok(()),
            ),
            (
                "a host that reverted and voted is named once",
                vec![back(A, "i-0aaa", Blame::Release)],
                vec![cast(Some(A), A, "i-0aaa"), cast(Some(C), C, "i-0ccc")],
                false,
                0,
                Err("against: [i-0aaa, i-0ccc]"),
            ),
        ];
        for (what, records, votes, force, baked_by, want) in cases {
            let evidence = Evidence { records, votes };
            let got = judge_promotion(&evidence, &s, "staging", force, baked_by).map_err(|r| match r {
                Refusal::Against(a) => {
                    format!("against: [{}]", a.iter().map(|a| a.host.as_str()).collect::<Vec<_>>().join(", "))
                }
                Refusal::TooFewBakes { baked, wanted } => {
                    format!("{} of {wanted} baked: [{}]", baked.len(), baked.join(", "))
                }
            });
            assert_eq!(got, want.map_err(str::to_owned), "{what}");
        }
        let against = Evidence { records: vec![back(A, "i-0aaa", Blame::Release)], votes: vec![cast(Some(B), B, "")] }
            .against(&s, "staging");
        assert_eq!(against[0].what, "reverted (release): exit 1");
        assert_eq!((against[1].host.as_str(), against[1].what.as_str()), (B, "voted (never-answered): HTTP 500"));
    }
}
