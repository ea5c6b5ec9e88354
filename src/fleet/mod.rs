//! The fleet: what one host does so that many hosts, sharing nothing but the release bucket,
//! roll a release out in waves and stop a bad one.
//!
//! - [`rollout`]: the host's seed and the rollout gate, pure functions of (seed, release
//!   time, now);
//! - [`halt`]: halt markers and votes beside the release key: their keys, their wire format
//!   and the counting of votes (the S3 calls are [`crate::outside::halts`]);
//! - [`bake`]: the hosts' bake records (baked, reverted) of a release beside the votes, and
//!   the rules `promote` judges them by;
//! - [`metrics`]: the node_exporter textfile the loop writes after every pass;
//! - [`verdict`]: the one judgement of blame (the release, or this host) for every failure.

pub mod bake;
pub mod halt;
pub mod metrics;
pub mod rollout;
pub mod verdict;
