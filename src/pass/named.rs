//! A release as an operator names it. `halt`, `unhalt`, `sync --sha`, `rollback --to` and
//! `promote` take the short SHA people copy from `git log --oneline` or `releases`; this module
//! says which full SHA it means, before the command writes anything.
//!
//! Reads: the environment's release object and its S3 versions (the history), once per
//! command ([`Known::read`]). A [`Known`] is itself a [`ReleaseSource`] that answers from that
//! read, so the rest of the command (a halt's rollback target, a pin's catalog, a rollback's
//! candidates) goes by the very read the name was resolved against. Writes: nothing.
//! Decides: which SHA a typed value names ([`Known::resolve`], over the pure [`pick`]).
//!
//! A value of 7 to 39 hex digits names the one SHA of the current object or the history that it
//! equals or begins; none or several is refused, listing what there is. An unresolved short
//! name would be worse than a refusal: a halt marker keyed by `f51a30f` halts nothing, because
//! hosts look up the full SHA S3 names. A full 40-digit SHA is taken as typed, known or not;
//! whether a release outside the history may be named is each command's own rule (`halt` and
//! `unhalt` allow it, `sync --sha` asks its catalog, `rollback --to` and `promote` refuse it).

use crate::outside::release::{Fetched, Historic, ObjectLocation, Release, ReleaseError, ReleaseSource};
use crate::sha::{InvalidSha, Sha};

/// Hex digits of a full git SHA (SHA-1): a value this long is complete, not a prefix.
pub const FULL_LEN: usize = 40;

/// Why a typed value names no single release.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Not 7 to 40 lowercase hex digits: a usage error.
    #[error("{0}")]
    Malformed(#[from] InvalidSha),
    /// `releases`: every SHA the read found, current first.
    #[error(
        "{} names no release of {}: {} {}; nothing was written",
        .0.typed, .0.environment, .0.location, held(&.0.releases, .0.unread.as_deref())
    )]
    Unknown(Box<Refused>),
    /// `releases`: the ones it begins, in the read's order.
    #[error(
        "{} is ambiguous in {}: {} releases of {} begin with it: {}; type more digits; nothing was written",
        .0.typed, .0.environment, .0.releases.len(), .0.location, list(&.0.releases)
    )]
    Ambiguous(Box<Refused>),
}

/// What a refusal names: the value, where it was looked up, and the releases it lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub typed: String,
    pub environment: String,
    pub location: ObjectLocation,
    pub releases: Vec<Sha>,
    /// What could not be read (the history, the object), when something could not: the list
    /// may then be incomplete.
    pub unread: Option<String>,
}

impl NameError {
    /// The value itself is wrong (exit 2), as opposed to naming nothing or too much (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, NameError::Malformed(_))
    }
}

fn list(shas: &[Sha]) -> String {
    shas.iter().map(Sha::as_str).collect::<Vec<_>>().join(", ")
}

fn held(known: &[Sha], unread: Option<&str>) -> String {
    let shas = if known.is_empty() { "no release".to_owned() } else { list(known) };
    match unread {
        None => format!("and its versions hold {shas}"),
        Some(why) => format!("holds {shas} as far as it could be read ({why})"),
    }
}

/// What a typed SHA names among known ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    Named(Sha),
    Unknown,
    /// Each candidate once, in the order given.
    Ambiguous(Vec<Sha>),
}

/// Which of `known` `typed` names: a full SHA names itself (known or not); a shorter value
/// names the known SHA it equals (a release object written by hand may hold a short SHA, and
/// hosts then key its halt by exactly that), else the one known SHA it begins.
pub fn pick(typed: &Sha, known: &[Sha]) -> Pick {
    if typed.as_str().len() == FULL_LEN || known.contains(typed) {
        return Pick::Named(typed.clone());
    }
    let mut matches: Vec<Sha> = Vec::new();
    for sha in known.iter().filter(|s| s.as_str().starts_with(typed.as_str())) {
        if !matches.contains(sha) {
            matches.push(sha.clone());
        }
    }
    match matches.len() {
        0 => Pick::Unknown,
        1 => Pick::Named(matches.remove(0)),
        _ => Pick::Ambiguous(matches),
    }
}

/// One read of an environment's release object and its history: what names are resolved
/// against, and what the command reads afterwards (see the module docs).
#[derive(Debug, Clone)]
pub struct Known {
    environment: String,
    location: ObjectLocation,
    current: Result<Release, ReleaseError>,
    /// Newest first, at most [`crate::outside::release::HISTORY_DEPTH`] versions; empty when
    /// the bucket keeps none.
    history: Result<Vec<Historic>, ReleaseError>,
}

impl Known {
    /// Reads the object, then its versions. A failed read is kept, not returned: a full SHA
    /// needs neither, and a short one is resolved against what could be read.
    pub async fn read(releases: &impl ReleaseSource, environment: &str, location: ObjectLocation) -> Known {
        let current = match releases.fetch(&location, None).await {
            Ok(Fetched::Changed(release)) => Ok(release),
            Ok(Fetched::Unchanged) => Err(ReleaseError::UnexpectedNotModified { location: location.clone() }),
            Err(e) => Err(e),
        };
        // An S3 that did not answer for the object in time will not for its versions either:
        // not waiting out a second timeout keeps a command as quick to fail as one read.
        let history = match &current {
            Err(e @ (ReleaseError::TimedOut { .. } | ReleaseError::RegionUnknown { .. })) => Err(e.clone()),
            _ => releases.history(&location).await,
        };
        Known { environment: environment.to_owned(), location, current, history }
    }

    pub fn location(&self) -> &ObjectLocation {
        &self.location
    }

    /// The current version of the release object, as read.
    pub fn current(&self) -> Result<&Release, &ReleaseError> {
        self.current.as_ref()
    }

    /// The object's versions (its history), newest first, as read.
    pub fn versions(&self) -> Result<&[Historic], &ReleaseError> {
        self.history.as_deref()
    }

    /// Every SHA the read found, current first, each once.
    pub fn shas(&self) -> Vec<Sha> {
        let mut shas: Vec<Sha> = Vec::new();
        let current = self.current.as_ref().ok().map(|r| &r.sha);
        let history = self.history.as_deref().unwrap_or_default().iter().map(|h| &h.sha);
        for sha in current.into_iter().chain(history) {
            if !shas.contains(sha) {
                shas.push(sha.clone());
            }
        }
        shas
    }

    /// What could not be read, for a refusal that must say its list may be incomplete. A
    /// missing object or one that is not a SHA was read: it names no release.
    fn unread(&self) -> Option<String> {
        let current = match &self.current {
            Err(ReleaseError::NotFound { .. } | ReleaseError::Invalid { .. }) | Ok(_) => None,
            Err(e) => Some(e.to_string()),
        };
        let history = self.history.as_ref().err().map(|e| format!("its versions: {e}"));
        let both: Vec<String> = current.into_iter().chain(history).collect();
        (!both.is_empty()).then(|| both.join("; "))
    }

    /// The full SHA `typed` names in this environment ([`pick`] over [`Known::shas`]).
    pub fn resolve(&self, typed: &str) -> Result<Sha, NameError> {
        let typed = Sha::parse(typed)?;
        let known = self.shas();
        let refused = |releases: Vec<Sha>, unread: Option<String>| {
            Box::new(Refused {
                typed: typed.to_string(),
                environment: self.environment.clone(),
                location: self.location.clone(),
                releases,
                unread,
            })
        };
        match pick(&typed, &known) {
            Pick::Named(sha) => Ok(sha),
            Pick::Unknown => Err(NameError::Unknown(refused(known, self.unread()))),
            Pick::Ambiguous(candidates) => Err(NameError::Ambiguous(refused(candidates, None))),
        }
    }
}

/// Answers from the read, so that what follows a resolution sees the same object and history.
/// Another location was not read: asking for it is a bug, answered as unavailable.
impl ReleaseSource for Known {
    async fn fetch(&self, location: &ObjectLocation, if_none_match: Option<&str>) -> Result<Fetched, ReleaseError> {
        self.same(location)?;
        let release = self.current.clone()?;
        match if_none_match {
            Some(etag) if release.etag.as_deref() == Some(etag) => Ok(Fetched::Unchanged),
            _ => Ok(Fetched::Changed(release)),
        }
    }

    async fn history(&self, location: &ObjectLocation) -> Result<Vec<Historic>, ReleaseError> {
        self.same(location)?;
        self.history.clone()
    }
}

impl Known {
    fn same(&self, location: &ObjectLocation) -> Result<(), ReleaseError> {
        if *location == self.location {
            return Ok(());
        }
        let detail = format!("only {} was read for this command", self.location);
        Err(ReleaseError::Unavailable { location: location.clone(), detail })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outside::release::Provenance;

    fn sha(s: &str) -> Sha {
        Sha::parse(s).unwrap()
    }

    fn location() -> ObjectLocation {
        ObjectLocation { bucket: "b".into(), key: "staging/stagebuild.txt".into() }
    }

    fn known(current: Option<&str>, history: Result<&[&str], ()>) -> Known {
        let current = match current {
            Some(s) => Ok(Release {
                sha: sha(s),
                etag: Some("\"e\"".into()),
                published_at: None,
                provenance: Default::default(),
            }),
            None => Err(ReleaseError::NotFound { location: location() }),
        };
        let history = match history {
            Ok(shas) => Ok(shas
                .iter()
                .map(|s| Historic {
                    sha: sha(s),
                    published_at: None,
                    version_id: s.to_string(),
                    provenance: Provenance::default(),
                })
                .collect()),
            Err(()) => Err(ReleaseError::AccessDenied { location: location(), detail: "403".into() }),
        };
        Known { environment: "staging".into(), location: location(), current, history }
    }

    // Two SHAs sharing their first 7 digits, and others.
    const A1: &str = "f51a30f0aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const A2: &str = "f51a30f1bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const B: &str = "3f2a9c1d0e0000000000000000000000000000ff";
    const C: &str = "0c0ffee000000000000000000000000000000000";
    const NEVER: &str = "deadbeef00000000000000000000000000000000";

    #[test]
    fn a_typed_sha_names_one_release_of_the_history_or_is_refused_listing_them() {
        enum Want {
            Sha(&'static str),
            Unknown(&'static [&'static str]),
            Ambiguous(&'static [&'static str]),
            Usage,
        }
        use Want::*;
        let history: &[&str] = &[B, A1, C, B];
        let with_twins: &[&str] = &[A2, A1, C];
        let cases: Vec<(&str, Known, &str, Want)> = vec![
            ("unique prefix of the current", known(Some(B), Ok(history)), "3f2a9c1", Sha(B)),
            ("unique prefix of an older version", known(Some(B), Ok(history)), "0c0ffee", Sha(C)),
            ("longer prefix", known(Some(A2), Ok(with_twins)), "f51a30f1", Sha(A2)),
            ("ambiguous", known(Some(A2), Ok(with_twins)), "f51a30f", Ambiguous(&[A2, A1])),
            ("unknown", known(Some(B), Ok(history)), "abcdef1", Unknown(&[B, A1, C])),
            ("full and known", known(Some(B), Ok(history)), A1, Sha(A1)),
            ("full and never published: taken as typed", known(Some(B), Ok(history)), NEVER, Sha(NEVER)),
            ("too short", known(Some(B), Ok(history)), "3f2a9c", Usage),
            ("uppercase", known(Some(B), Ok(history)), "3F2A9C1", Usage),
            ("the current object alone (no versions kept)", known(Some(B), Ok(&[])), "3f2a9c1", Sha(B)),
            ("the current object while the versions are unreadable", known(Some(B), Err(())), "3f2a9c1", Sha(B)),
            ("nothing published", known(None, Ok(&[])), "3f2a9c1", Unknown(&[])),
            ("an older version while the current object is gone", known(None, Ok(history)), "f51a30f", Sha(A1)),
            (
                "a short SHA written by hand is named exactly",
                known(Some("f51a30f"), Ok(with_twins)),
                "f51a30f",
                Sha("f51a30f"),
            ),
        ];
        for (what, known, typed, want) in cases {
            let got = known.resolve(typed);
            match (got, want) {
                (Ok(got), Sha(want)) => assert_eq!(got.as_str(), want, "{what}"),
                (Err(e @ NameError::Unknown(_)), Unknown(listed)) => {
                    let NameError::Unknown(refused) = &e else { unreachable!() };
                    assert_eq!(refused.releases.iter().map(|s| s.as_str()).collect::<Vec<_>>(), listed, "{what}");
                    let line = e.to_string();
                    assert!(!line.contains('\n') && line.contains(typed), "{what}: {line}");
                    assert!(
                        listed.iter().all(|s| line.contains(s)) && line.contains("nothing was written"),
                        "{what}: {line}"
                    );
                }
                (Err(e @ NameError::Ambiguous(_)), Ambiguous(listed)) => {
                    let NameError::Ambiguous(refused) = &e else { unreachable!() };
                    assert_eq!(refused.releases.iter().map(|s| s.as_str()).collect::<Vec<_>>(), listed, "{what}");
                    let line = e.to_string();
                    assert!(
                        listed.iter().all(|s| line.contains(s)) && line.contains("type more digits"),
                        "{what}: {line}"
                    );
                }
                (Err(e), Usage) => assert!(e.is_usage(), "{what}: {e}"),
                (got, _) => panic!("{what}: got {got:?}"),
            }
        }
    }

    #[test]
    fn an_unknown_prefix_says_what_could_not_be_read() {
        let e = known(Some(B), Err(())).resolve("abcdef1").unwrap_err();
        let line = e.to_string();
        assert!(line.contains(B) && line.contains("as far as it could be read") && line.contains("403"), "{line}");
    }

    #[tokio::test]
    async fn what_follows_a_resolution_reads_the_same_object_and_history() {
        let known = known(Some(B), Ok(&[B, C]));
        let at = location();
        let Ok(Fetched::Changed(current)) = known.fetch(&at, None).await else { panic!("the current object") };
        assert_eq!(current.sha, sha(B));
        assert!(matches!(known.fetch(&at, Some("\"e\"")).await, Ok(Fetched::Unchanged)));
        assert_eq!(known.history(&at).await.unwrap().len(), 2);
        let elsewhere = ObjectLocation { bucket: "b".into(), key: "production/prodbuild.txt".into() };
        assert!(known.history(&elsewhere).await.is_err(), "another object was not read");
    }
}
