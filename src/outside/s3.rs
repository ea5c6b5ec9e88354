//! The one S3 client of the agent: the release object ([`crate::outside::release`]) and the
//! halt markers and votes ([`crate::outside::halts`]) are read and written through it.
//!
//! Reads an object's body up to a bound ([`read_at_most`]), for whoever made the call. Decides
//! how the client is built (the shared AWS setup of
//! [`crate::outside::aws`], path-style addressing with a custom endpoint) and when: on the
//! first call after the host's region is known, once for every holder of a clone.

use std::future::Future;
use std::sync::Arc;

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::outside::aws::{custom_s3_endpoint, Aws, RegionUnknown, Regional};

/// An S3 client in the host's region. Clones share one client, built on first use.
#[derive(Clone)]
pub struct S3Client {
    client: Arc<Regional<aws_sdk_s3::Client>>,
}

impl S3Client {
    /// A client in the host's region, resolved by `aws` (and re-resolved while unknown).
    pub fn with_aws(aws: &Arc<Aws>) -> S3Client {
        S3Client { client: Arc::new(Regional::new(aws.clone(), "S3", build)) }
    }

    /// The client, once the region is known.
    pub async fn get(&self) -> Result<&aws_sdk_s3::Client, RegionUnknown> {
        self.client.get().await
    }

    /// Sends one S3 call through S3's push-back gate ([`Regional::send`]).
    pub async fn send<O, E, F, Fut>(&self, call: F) -> Result<O, SdkError<E, HttpResponse>>
    where
        E: ProvideErrorMetadata,
        F: Fn() -> Fut,
        Fut: Future<Output = Result<O, SdkError<E, HttpResponse>>>,
    {
        self.client.send(call).await
    }
}

/// Reads `body` until it ends or holds more than `limit` bytes: the caller learns that an object
/// is too large without holding all of it in memory.
pub async fn read_at_most(
    mut body: aws_sdk_s3::primitives::ByteStream,
    limit: usize,
) -> Result<Vec<u8>, aws_sdk_s3::primitives::ByteStreamError> {
    let mut bytes = Vec::new();
    while bytes.len() <= limit {
        match body.try_next().await? {
            Some(chunk) => bytes.extend_from_slice(&chunk),
            None => break,
        }
    }
    Ok(bytes)
}

/// Path-style addressing whenever an endpoint is set: an S3-compatible server (or moto in the
/// tests) rarely serves virtual-hosted bucket names.
fn build(sdk: &aws_config::SdkConfig, region: aws_config::Region) -> aws_sdk_s3::Client {
    let path_style = custom_s3_endpoint() || sdk.endpoint_url().is_some();
    let config = aws_sdk_s3::config::Builder::from(sdk)
        .region(region)
        .interceptor(crate::outside::aws::ClockWatch)
        .force_path_style(path_style)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}
