//! blog-agent: makes an EC2 host serve the blog version named in S3, and keeps it that way.
//!
//! One module per external system (`imds`, `release` for S3, `registry` for ECR, `engine` for
//! Docker); `reconcile` is the pure decision; `deploy` carries a plan out safely; `sync` is one
//! pass; `cli` maps it all to commands and exit codes.

pub mod agent;
pub mod aws;
pub mod cli;
pub mod config;
pub mod engine;
pub mod environment;
pub mod health;
pub mod host_status;
pub mod imds;
pub mod lock;
pub mod pass;
pub mod progress;
pub mod registry;
pub mod release;
pub mod runtime;
pub mod sha;
pub mod spec;
pub mod state;
