//! Fleet halt: what a halt is, where it lives and when it is in force, for every host of an
//! environment to read before it applies a new SHA. The S3 calls that read and write it are
//! [`crate::outside::halts`]; this module is what they mean.
//!
//! A host whose deploy of a SHA fails verification votes on it; an operator halts it with
//! `blog-agent halt` (a marker at `<prefix><sha>`) and lets it go on with `blog-agent unhalt`.
//! The prefix is the release key's folder plus `halted/` (`staging/stagebuild.txt` ->
//! `staging/halted/`; a key with no folder -> `halted/`) unless `[rollout] halt_prefix` names
//! another one ([`prefix_for`]). The body is a small JSON [`Marker`]: who halted it, why, when,
//! and the SHA the host rolled back to. Any object at the marker's key halts, whatever its
//! body ([`parse_marker`]).
//!
//! **Votes.** A host does not halt a release on its own evidence: it writes a [`Vote`] at
//! `<prefix><sha>/<voter>` (JSON: environment, the voter, the instance id, the
//! [`crate::fleet::verdict`] rule, the evidence, when, what it rolled back to), and the release
//! counts as halted once `[rollout] halt_after` distinct voters of the environment voted
//! ([`Reading::halt`]). An operator's `blog-agent halt` writes the marker `<prefix><sha>`
//! itself: one decisive vote. A marker or vote of another environment never counts (two
//! environments sharing a prefix are refused by the configuration as well).
//!
//! **A vote is its writer's.** The voter is the writer's AWS caller identity, the `UserId` of
//! `sts:GetCallerIdentity` ([`crate::outside::sts`]; `AROA...:i-0abc...` for an instance
//! profile), exactly as IAM spells `${aws:userid}`: a bucket policy can then let each host
//! write only `<prefix>*/${aws:userid}`. Votes are counted by the voter their *key* names; a
//! vote whose body names another voter than its key is ignored (logged by the reader), so one
//! host's credentials cannot cast a second vote under another key. A voter with a character
//! outside `[A-Za-z0-9-_.:+=,@]` (or `.`, `..`) is refused, never rewritten: a rewritten key
//! would no longer match `${aws:userid}` ([`vote_key`]).
//!
//! Reads and writes nothing (the loop and the decision reach the objects through
//! [`crate::outside::halts::HaltSource`]). Decides the keys, the wire format and whether a
//! [`Reading`] halts a release ([`Reading::halt`]).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::sha::{safe_quote, Sha};

/// A marker is a few hundred bytes; a larger object is not read into memory (it still halts).
pub const MAX_MARKER_BYTES: usize = 64 * 1024;

/// The folder markers go in when the configuration names none: `halted/` beside the release
/// key (`staging/stagebuild.txt` -> `staging/halted/`; `build.txt` -> `halted/`).
pub fn default_prefix(release_key: &str) -> String {
    match release_key.rfind('/') {
        Some(slash) => format!("{}halted/", &release_key[..=slash]),
        None => "halted/".to_owned(),
    }
}

/// The marker folder for `environment`: `configured` (`[rollout] halt_prefix`, where
/// `{environment}` stands for the environment's name) when set, else [`default_prefix`] of
/// the release key. A configured prefix gets a trailing `/` if it has none, and loses a
/// leading one (S3 keys have none).
pub fn prefix_for(release_key: &str, configured: Option<&str>, environment: &str) -> String {
    match configured {
        None => default_prefix(release_key),
        Some(prefix) => {
            let prefix = prefix.replace("{environment}", environment);
            let prefix = prefix.trim_start_matches('/');
            match prefix {
                "" => String::new(),
                p if p.ends_with('/') => p.to_owned(),
                p => format!("{p}/"),
            }
        }
    }
}

/// The key of `sha`'s marker under `prefix` (as [`prefix_for`] gives it).
pub fn marker_key(prefix: &str, sha: &Sha) -> String {
    format!("{prefix}{sha}")
}

/// The body of a halt marker. Field names are the wire format (docs and tools read them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The halted SHA.
    pub sha: String,
    /// The environment it is halted for.
    pub environment: String,
    /// The host that halted it: its EC2 instance id (else machine id or hostname).
    pub instance_id: String,
    /// Why: the failed check, or the operator's text.
    pub reason: String,
    /// Unix seconds when it was halted.
    pub at: u64,
    /// The SHA the failing host rolled back to; a host with nothing serving takes it instead.
    #[serde(default)]
    pub rolled_back_to: Option<String>,
    /// The operator who ran `blog-agent halt`; `null` when the agent halted it itself.
    #[serde(default)]
    pub by: Option<String>,
}

impl Marker {
    /// Who halted the release, safe to print: the operator when one ran `halt`, else the host
    /// whose agent halted it. Marker fields come from S3, so they are escaped.
    pub fn who(&self) -> String {
        crate::sha::safe_text(self.by.as_deref().unwrap_or(&self.instance_id))
    }
}

/// One host's vote that a release failed here by its own fault (a [`crate::fleet::verdict`]
/// blaming the release). Field names are the wire format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    pub sha: String,
    pub environment: String,
    /// The writer's AWS caller identity (`UserId`), which is also its key's last segment. A
    /// body without one (an agent that keyed votes by instance id) never counts.
    #[serde(default)]
    pub voter: String,
    /// The voting host (its EC2 instance id, else machine id or hostname): for people.
    pub instance_id: String,
    /// The rule of the judgement that blamed the release (`never-answered`, ...).
    pub verdict: String,
    /// What the host saw.
    pub evidence: String,
    /// Unix seconds.
    pub at: u64,
    /// What the host serves again after the failure, if anything.
    #[serde(default)]
    pub rolled_back_to: Option<String>,
    /// The voter the key this vote was read from names (its last segment); set by the reader,
    /// never written. `None` for a vote not read from a key: it does not count.
    #[serde(skip)]
    pub key_voter: Option<String>,
}

/// Can `voter` be a vote key's last segment as it is? The characters of IAM user ids and role
/// session names (`:` joins them), all of which S3 keys and `${aws:userid}` take literally; no
/// `/` (it would make a folder), no `.` or `..` alone (path tools collapse them).
pub fn safe_voter(voter: &str) -> bool {
    !voter.is_empty()
        && voter != "."
        && voter != ".."
        && voter
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '+' | '=' | ',' | '@'))
}

/// The key of `voter`'s vote on `sha` under `prefix`: `<prefix><sha>/<voter>`, the voter
/// unchanged. `None` when [`safe_voter`] refuses it.
pub fn vote_key(prefix: &str, sha: &Sha, voter: &str) -> Option<String> {
    safe_voter(voter).then(|| format!("{prefix}{sha}/{voter}"))
}

/// What one read of a SHA's halt objects found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reading {
    /// The decisive marker (an operator's `halt`, or an older agent's).
    pub marker: Option<Marker>,
    /// The hosts' votes, each with [`Vote::key_voter`] set.
    pub votes: Vec<Vote>,
}

impl Reading {
    /// The halt in force for `environment`, if any: the decisive marker of this environment
    /// (or one written by hand without an environment), else `halt_after` distinct voters of
    /// this environment. A voter is the identity a vote's key names, and a vote counts only
    /// when its body names the same one (see the module docs); one voter's first vote in the
    /// list is the one used. Votes agree on a rollback target when the most named one is named
    /// by a majority of the voters that name one.
    pub fn halt(&self, sha: &Sha, environment: &str, halt_after: u32) -> Option<Marker> {
        if let Some(marker) = self.marker.as_ref().filter(|m| m.environment.is_empty() || m.environment == environment)
        {
            return Some(marker.clone());
        }
        let mut voters: Vec<(&str, &Vote)> = Vec::new();
        for vote in self.votes.iter().filter(|v| v.environment == environment && v.sha == sha.as_str()) {
            let Some(voter) = vote.key_voter.as_deref().filter(|k| *k == vote.voter && safe_voter(k)) else {
                continue;
            };
            if !voters.iter().any(|(v, _)| *v == voter) {
                voters.push((voter, vote));
            }
        }
        let voters: Vec<&Vote> = voters.into_iter().map(|(_, vote)| vote).collect();
        if voters.is_empty() || (voters.len() as u32) < halt_after.max(1) {
            return None;
        }
        let mut targets: Vec<(&str, usize)> = Vec::new();
        for to in voters.iter().filter_map(|v| v.rolled_back_to.as_deref()).filter(|t| Sha::parse(t).is_ok()) {
            match targets.iter_mut().find(|(t, _)| *t == to) {
                Some((_, n)) => *n += 1,
                None => targets.push((to, 1)),
            }
        }
        let named: usize = targets.iter().map(|(_, n)| n).sum();
        let agreed = targets.iter().max_by_key(|(_, n)| *n).filter(|(_, n)| n * 2 > named).map(|(t, _)| t.to_string());
        let ids: Vec<&str> = voters.iter().map(|v| v.instance_id.as_str()).collect();
        let first = voters.iter().min_by_key(|v| v.at).expect("at least one voter");
        Some(Marker {
            sha: sha.to_string(),
            environment: environment.to_owned(),
            instance_id: ids.join(","),
            reason: format!("{} hosts failed it ({}): {}", voters.len(), first.verdict, first.evidence),
            at: voters.iter().map(|v| v.at).max().unwrap_or(0),
            rolled_back_to: agreed,
            by: None,
        })
    }
}

impl Marker {
    /// [`Marker::rolled_back_to`] when it is a valid SHA (the body comes from a bucket
    /// anyone with `s3:PutObject` on the prefix can write: it is validated before it is used).
    pub fn rolled_back_to_sha(&self) -> Option<Sha> {
        self.rolled_back_to.as_deref().and_then(|s| Sha::parse(s).ok())
    }
}

/// The marker in `bytes`, read from `location`; a body that is not one still halts `sha`, with
/// a reason naming `location`.
pub fn parse_marker(bytes: &[u8], sha: &Sha, location: &impl fmt::Display) -> Marker {
    let unreadable = |what: String| Marker {
        sha: sha.to_string(),
        environment: String::new(),
        instance_id: String::new(),
        reason: format!("halt marker {location} is not a blog-agent marker ({what}); it halts all the same"),
        at: 0,
        rolled_back_to: None,
        by: None,
    };
    if bytes.len() > MAX_MARKER_BYTES {
        return unreadable(format!("over {MAX_MARKER_BYTES} bytes"));
    }
    match serde_json::from_slice::<Marker>(bytes) {
        // The key names the SHA; a body naming another one was copied by hand.
        Ok(marker) => Marker { sha: sha.to_string(), ..marker },
        Err(e) => unreadable(format!("{}: {e}", safe_quote(&String::from_utf8_lossy(bytes)))),
    }
}

/// A vote on 3f2a9c1 for staging read from the key naming `key` (`None`: not read from a
/// key), whose body names `voter`: for the unit tests here and in [`crate::outside::halts`].
#[cfg(test)]
pub(crate) fn cast(key: Option<&str>, voter: &str, instance_id: &str) -> Vote {
    Vote {
        sha: "3f2a9c1".into(),
        environment: "staging".into(),
        voter: voter.into(),
        instance_id: instance_id.into(),
        verdict: "never-answered".into(),
        evidence: "HTTP 500".into(),
        at: 1,
        rolled_back_to: None,
        key_voter: key.map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(s: &str) -> Sha {
        Sha::parse(s).unwrap()
    }

    #[test]
    fn markers_live_beside_the_release_key() {
        let cases: &[(&str, Option<&str>, &str, &str)] = &[
            ("staging/stagebuild.txt", None, "staging", "staging/halted/"),
            ("production/prodbuild.txt", None, "production", "production/halted/"),
            ("a/b/c/build.txt", None, "staging", "a/b/c/halted/"),
            ("build.txt", None, "staging", "halted/"),
            ("/build.txt", None, "staging", "/halted/"),
            ("staging/stagebuild.txt", Some("ops/halts/{environment}/"), "staging", "ops/halts/staging/"),
            ("staging/stagebuild.txt", Some("ops/halts/{environment}"), "staging", "ops/halts/staging/"),
            ("staging/stagebuild.txt", Some("/halts"), "staging", "halts/"),
            ("staging/stagebuild.txt", Some("halts-{environment}-"), "qa", "halts-qa-/"),
            ("staging/stagebuild.txt", Some(""), "staging", ""),
        ];
        for (key, configured, env, want) in cases {
            assert_eq!(prefix_for(key, *configured, env), *want, "{key} {configured:?}");
        }
        assert_eq!(marker_key("staging/halted/", &sha("3f2a9c1")), "staging/halted/3f2a9c1");
        assert_eq!(marker_key("halted/", &sha("3f2a9c1")), "halted/3f2a9c1");
    }

    #[test]
    fn marker_json_is_the_documented_shape() {
        let marker = Marker {
            sha: "3f2a9c1".into(),
            environment: "staging".into(),
            instance_id: "i-0abc".into(),
            reason: "candidate probe: HTTP 500".into(),
            at: 1_750_000_000,
            rolled_back_to: Some("1a2b3c4".into()),
            by: None,
        };
        let json: serde_json::Value = serde_json::to_value(&marker).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "sha": "3f2a9c1", "environment": "staging", "instance_id": "i-0abc",
                "reason": "candidate probe: HTTP 500", "at": 1_750_000_000u64,
                "rolled_back_to": "1a2b3c4", "by": null
            })
        );
        // Optional fields may be absent (a marker written by hand).
        let minimal: Marker = serde_json::from_str(
            r#"{"sha":"3f2a9c1","environment":"staging","instance_id":"ops","reason":"r","at":1}"#,
        )
        .unwrap();
        assert_eq!((minimal.rolled_back_to, minimal.by), (None, None));
    }

    #[test]
    fn any_object_at_the_key_halts() {
        let location = "s3://b/staging/halted/3f2a9c1";
        let good = br#"{"sha":"0000000","environment":"staging","instance_id":"i-1","reason":"probe","at":5,"rolled_back_to":"1a2b3c4"}"#;
        let m = parse_marker(good, &sha("3f2a9c1"), &location);
        assert_eq!(m.sha, "3f2a9c1", "the key names the SHA");
        assert_eq!(m.rolled_back_to_sha(), Some(sha("1a2b3c4")));
        for (body, says) in [
            (&b""[..], "not a blog-agent marker"),
            (&b"halt!\n"[..], "\"halt!\\n\""),
            (&br#"{"sha":"3f2a9c1"}"#[..], "missing field"),
        ] {
            let m = parse_marker(body, &sha("3f2a9c1"), &location);
            assert_eq!(m.sha, "3f2a9c1");
            assert!(m.reason.contains(says) && m.reason.contains("s3://b/staging/halted/3f2a9c1"), "{}", m.reason);
            assert_eq!(m.rolled_back_to_sha(), None);
        }
        let big = vec![b' '; MAX_MARKER_BYTES + 1];
        assert!(parse_marker(&big, &sha("3f2a9c1"), &location).reason.contains("over 65536 bytes"));
        // A rollback target that is not a SHA is never used.
        let bad = br#"{"sha":"3f2a9c1","environment":"staging","instance_id":"i-1","reason":"r","at":5,"rolled_back_to":"latest; rm -rf"}"#;
        assert_eq!(parse_marker(bad, &sha("3f2a9c1"), &location).rolled_back_to_sha(), None);
    }

    #[test]
    fn votes_are_counted_by_the_voter_their_key_names() {
        const A: &str = "AROAEXAMPLE:i-0aaa";
        const B: &str = "AROAEXAMPLE:i-0bbb";
        let cases: &[(&str, Vec<Vote>, u32, Option<usize>)] = &[
            ("two voters", vec![cast(Some(A), A, "i-0aaa"), cast(Some(B), B, "i-0bbb")], 2, Some(2)),
            ("one voter listed twice", vec![cast(Some(A), A, "i-0aaa"), cast(Some(A), A, "i-0aaa")], 2, None),
            (
                "a forged second vote: A's body under B's key",
                vec![cast(Some(A), A, "i-0aaa"), cast(Some(B), A, "i-0aaa")],
                2,
                None,
            ),
            ("a forged vote alone", vec![cast(Some(B), A, "i-0aaa")], 1, None),
            (
                "the body's instance id does not make the voter",
                vec![cast(Some(A), A, "i-0same"), cast(Some(B), B, "i-0same")],
                2,
                Some(2),
            ),
            (
                "a body naming no voter (keyed by host id)",
                vec![cast(Some(A), A, "i-0aaa"), cast(Some("i-0bbb"), "", "i-0bbb")],
                2,
                None,
            ),
            ("a vote not read from a key", vec![cast(Some(A), A, "i-0aaa"), cast(None, B, "i-0bbb")], 2, None),
            ("an unsafe key voter", vec![cast(Some(A), A, "i-0aaa"), cast(Some("x/y"), "x/y", "i-0bbb")], 2, None),
            ("an empty key voter", vec![cast(Some(""), "", "i-0aaa")], 1, None),
            ("one voter is enough at halt_after 1", vec![cast(Some(A), A, "i-0aaa")], 1, Some(1)),
            ("halt_after 0 still needs a voter", vec![cast(Some(B), A, "i-0aaa")], 0, None),
        ];
        for (what, votes, halt_after, want) in cases {
            let reading = Reading { marker: None, votes: votes.clone() };
            let halt = reading.halt(&sha("3f2a9c1"), "staging", *halt_after);
            let voters = halt.as_ref().map(|m| m.reason.split(' ').next().unwrap().parse::<usize>().unwrap());
            assert_eq!(voters, *want, "{what}: {halt:?}");
        }
        // The decisive marker halts whatever the votes.
        let marker = Marker {
            sha: "3f2a9c1".into(),
            environment: "staging".into(),
            instance_id: "ops".into(),
            reason: "operator".into(),
            at: 1,
            rolled_back_to: None,
            by: Some("ops".into()),
        };
        let reading = Reading { marker: Some(marker.clone()), votes: vec![cast(Some(B), A, "i-0aaa")] };
        assert_eq!(reading.halt(&sha("3f2a9c1"), "staging", 2), Some(marker));
    }

    #[test]
    fn a_vote_key_ends_in_the_voter_as_it_is_or_is_refused() {
        let s = sha("3f2a9c1");
        let cases: &[(&str, Option<&str>)] = &[
            ("AROAEXAMPLEID:i-0abc123", Some("staging/halted/3f2a9c1/AROAEXAMPLEID:i-0abc123")),
            ("AIDAEXAMPLEUSER", Some("staging/halted/3f2a9c1/AIDAEXAMPLEUSER")),
            ("123456789012:ops+1=a,b@example.com", Some("staging/halted/3f2a9c1/123456789012:ops+1=a,b@example.com")),
            ("AROA:a/b", None),
            ("", None),
            (".", None),
            ("..", None),
            ("AROA:i 0abc", None),
            ("AROA:i-0abc\n", None),
            ("AROA:i-0äbc", None),
            ("AROA:%2F", None),
        ];
        for (voter, want) in cases {
            assert_eq!(vote_key("staging/halted/", &s, voter).as_deref(), *want, "{voter:?}");
        }
    }

    #[test]
    fn vote_json_names_the_voter_and_never_the_key() {
        let vote = cast(Some("AROAEXAMPLE:i-0aaa"), "AROAEXAMPLE:i-0aaa", "i-0aaa");
        let json = serde_json::to_value(&vote).unwrap();
        assert_eq!(json["voter"], "AROAEXAMPLE:i-0aaa");
        assert!(json.get("key_voter").is_none(), "{json}");
        let back: Vote = serde_json::from_value(json).unwrap();
        assert_eq!(back, Vote { key_voter: None, ..vote });
    }
}
