//! Shared AWS SDK setup: region and credentials from the standard provider chain, endpoints
//! from the standard `AWS_ENDPOINT_URL*` variables, and the timeouts and retries every AWS call
//! in the agent runs under.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

/// Loads the SDK configuration once per process.
///
/// Timeouts: S3 and ECR answer in well under a second; 3 s to connect and 10 s per attempt
/// cover a congested network without letting a dead endpoint hang a sync. The standard retry
/// mode gives 3 attempts with jittered exponential backoff, bounded by the 30 s operation limit.
pub async fn load() -> SdkConfig {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(3))
        .operation_attempt_timeout(Duration::from_secs(10))
        .operation_timeout(Duration::from_secs(30))
        .build();
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts)
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .load()
        .await
}

/// A custom S3 endpoint (an S3-compatible server, or moto in tests) rarely serves
/// virtual-hosted bucket names, so path-style addressing is used whenever one is set.
pub fn custom_s3_endpoint() -> bool {
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"].iter().any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()))
}

/// Renders an SDK error with its whole chain on one line (the SDK's own `Display` says only
/// "service error").
pub fn describe(err: &(dyn std::error::Error + 'static)) -> String {
    aws_smithy_types::error::display::DisplayErrorContext(err).to_string().replace('\n', " ")
}
