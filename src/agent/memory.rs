//! What the `run` loop knows between passes, in one place, apart from how it talks to the
//! world ([`super::Agent`] holds the settings, services and tasks): the published release as
//! last read and verified, the rollback target of its halt, the vote a pass owes, the bake in
//! progress, the local quarantine, and why the last pass chose what it did.
//!
//! A pass is one step of the state the memory is in: with a bake in progress
//! ([`Memory::bake`]) the step is the bake's ([`super::Agent`]'s `tick_bake`: nothing on the
//! host changes until it ends, then its outcome is taken in); otherwise it is a reconcile pass
//! (read S3, the halt, decide, execute), which may start a bake.

use std::mem::Discriminant;

use tokio::task::JoinHandle;

use super::quarantine::Quarantine;
use crate::fleet::verdict::Verdict;
use crate::pass::bake::{self, BakeRecord};
use crate::pass::decide::Why;
use crate::pass::desired::Desired;
use crate::sha::Sha;

/// The loop's memory between passes.
#[derive(Default)]
pub struct Memory {
    /// The release object as last read, verified ([`crate::pass::desired`]).
    pub desired: Option<Desired>,
    /// A halted SHA and its verified rollback target, once resolved (a resolution that failed
    /// is not kept: it is tried again at the next pass).
    pub rollback_target: Option<(Sha, Option<String>)>,
    /// Set by the pass that saw a release fail here (its probe, a crash loop, a tripped bake):
    /// voted against at the end of the pass.
    pub failed: Option<Failed>,
    /// The bake in progress, if any.
    pub bake: Option<Baking>,
    /// Releases held back on this host.
    pub quarantine: Quarantine,
    /// Who paused automatic updates, if they are paused.
    pub paused_by: Option<String>,
    /// Why the last pass chose its target, for the metrics and `STATUS=`.
    pub last_decision: Option<Why>,
    /// The kind of [`Memory::last_decision`]: a change away from S3's release (pause, pin,
    /// last-known-good, quarantine) is logged once when it starts, not on every pass.
    pub last_why: Option<Discriminant<Why>>,
}

/// A release the judgement blamed for a failure here during a pass: voted against once the
/// pass knows what serves.
#[derive(Debug, Clone)]
pub struct Failed {
    pub sha: Sha,
    pub verdict: Verdict,
}

/// The loop's bake state: the release just cut over to is watched by its own task, which
/// holds the reconcile lock until it has retired the previous container or reverted to it
/// (a `sync` typed meanwhile waits for it, and no pass starts another cut-over).
pub struct Baking {
    pub record: BakeRecord,
    /// The release that served before the cut-over: evidence for the judgement.
    pub served_before: Option<Sha>,
    pub environment: String,
    pub task: JoinHandle<bake::Outcome>,
}
