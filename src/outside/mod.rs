//! One module per external system, each with its own error type naming what it touched:
//! AWS SDK setup and region (`aws`), instance metadata (`imds`), the one S3 client (`s3`)
//! through which the release object (`release`) and the halt markers and votes (`halts`) are
//! read and written, ECR credentials (`registry`), the caller's AWS identity (`sts`), the Docker
//! Engine (`docker`, with `pull_progress` for a terminal), the disk a pull lands on (`disk`) and
//! the registry's manifests that size it (`manifest`), the HTTP health checks (`health`), a
//! container's access log read through Docker (`access_log`), netfilter (`netfilter`) and the
//! Auto Scaling group's lifecycle hooks (`autoscaling`).
//! Unit tests share one loopback HTTP stand-in (`loopback`).

pub mod access_log;
pub mod autoscaling;
pub mod aws;
pub mod disk;
pub mod docker;
pub mod halts;
pub mod health;
pub mod imds;
#[cfg(test)]
pub(crate) mod loopback;
pub mod manifest;
pub mod netfilter;
pub mod pull_progress;
pub mod registry;
pub mod release;
pub mod s3;
pub mod sts;

/// Renders an SDK error with its whole chain on one line (the SDK's own `Display` says only
/// "service error"). Every module that talks to AWS shows its errors through it.
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    aws_smithy_types::error::display::DisplayErrorContext(err).to_string().replace('\n', " ")
}
