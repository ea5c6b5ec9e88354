//! blog-agent: makes an EC2 host serve the blog version named in S3, and keeps it that way.
//!
//! - [`outside`]: one module per external system (AWS setup, IMDS, S3, ECR, Docker, HTTP probe).
//! - [`pass`]: one reconcile pass: observe once ([`pass::snapshot`]), decide purely
//!   ([`pass::decide`]), then do ([`pass::execute`], through [`pass::traffic::Traffic`], one
//!   variant per traffic mode), then watch the new release with the previous one kept to revert
//!   to ([`pass::bake`]); [`pass::once`] is the `sync` command's pass.
//! - [`agent`]: the `run` service: the loop ([`agent::driver`]), its state ([`agent::phase`]),
//!   what it knows between passes ([`agent::memory`]), Docker events and the memory of bad
//!   releases ([`agent::quarantine`]).
//! - [`config`] (validated settings), [`spec`] (the container a release runs as), [`sha`],
//!   [`environment`] (which environment this host serves), [`state`] and [`lock`] (what the
//!   host remembers, and who may change it), [`host_status`] (what `status` reports).
//! - [`pipeline`]: the CI half: `publish`, `releases`, `rollback`, `promote`.
//! - [`runtime`]: process plumbing (backoff, shutdown, signals, systemd notify, logging).
//! - [`cli`]: commands and exit codes; `main.rs` only parses arguments and calls it.

pub mod agent;
pub mod cli;
pub mod config;
pub mod environment;
pub mod fleet;
pub mod host_status;
pub mod lock;
pub mod outside;
pub mod pass;
pub mod pipeline;
pub mod runtime;
pub mod sha;
pub mod signature;
pub mod spec;
pub mod state;

/// This binary's package version (Cargo.toml), shown by `status` and the metrics so that a
/// fleet's mix of agent versions is visible during an upgrade (an instance refresh).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit this binary was built from (`git rev-parse --short=12 HEAD` in build.rs, or
/// `BLOG_AGENT_GIT_COMMIT`; "unknown" outside a checkout).
pub const COMMIT: &str = env!("BLOG_AGENT_GIT_COMMIT");
