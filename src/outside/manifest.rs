//! An image's size before it is pulled: the registry's manifest (Registry HTTP API v2), read
//! with the credentials the pull uses.
//!
//! `GET /v2/<path>/manifests/<tag or digest>` with HTTP Basic authentication: ECR takes its
//! token as `AWS:<password>` that way, as does a registry with an htpasswd file. A manifest
//! list or OCI index (a multi-platform image) names one manifest per platform: the one for
//! this host's (linux and its architecture) is read next. The size is the sum of the config's
//! and the layers' sizes as the manifest gives them: compressed, as they are downloaded.
//!
//! The registry is asked over HTTPS, except a loopback one (`localhost`, `127.0.0.1`, `[::1]`),
//! which Docker itself reaches over plain HTTP. The HTTP client is the AWS SDK's (hyper and
//! rustls, already in the binary). Every request is bounded by [`TIMEOUT`].
//!
//! Reads: one or two manifests. Writes nothing. Decides nothing: an unknown size is the
//! caller's to handle ([`crate::outside::disk`]).

use std::time::Duration;

use aws_smithy_runtime_api::client::http::HttpConnector;
use aws_smithy_types::body::SdkBody;
use base64::Engine as _;
use serde::Deserialize;

use crate::outside::registry::RegistryCredentials;

/// Bound on reading one manifest (connect, TLS, request, body): a manifest is a few KB, and a
/// registry that does not answer this quickly is not worth delaying the pull for.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A manifest larger than this is not a manifest (registries cap theirs at 4 MiB).
const MAX_MANIFEST: usize = 4 << 20;

const ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
                      application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json, \
                      application/vnd.oci.image.index.v1+json";

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("GET {url}: {detail}")]
    Request { url: String, detail: String },
    #[error("GET {url}: no answer within {} s", TIMEOUT.as_secs())]
    Timeout { url: String },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: not an image manifest ({detail})")]
    Malformed { url: String, detail: String },
    #[error("{url} lists no image for linux/{arch}")]
    NoPlatform { url: String, arch: &'static str },
}

/// An image manifest, or an index of them; only the fields that carry sizes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    /// A manifest list / OCI index.
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

#[derive(Debug, Deserialize)]
struct Descriptor {
    #[serde(default)]
    size: u64,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

/// What a manifest body says: a size, or the digest of this platform's manifest to read next.
#[derive(Debug, PartialEq, Eq)]
enum Read {
    Size(u64),
    Next(String),
}

/// This host's architecture as registries name it.
pub fn registry_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        other => other,
    }
}

/// The size of `path:reference` (a tag, or a `sha256:` digest) in the registry at `registry`
/// (`host[:port]`), in bytes as downloaded.
pub async fn image_size(
    registry: &str,
    path: &str,
    reference: &str,
    creds: &RegistryCredentials,
) -> Result<u64, ManifestError> {
    let client = aws_smithy_http_client::Connector::builder()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .build();
    let base = format!("{}://{registry}/v2/{path}/manifests/", scheme(registry));
    let url = format!("{base}{reference}");
    let body = get(&client, &url, creds).await?;
    match read(&body, registry_arch()).map_err(|detail| ManifestError::Malformed { url: url.clone(), detail })? {
        Read::Size(size) => Ok(size),
        Read::Next(digest) if digest.is_empty() => Err(ManifestError::NoPlatform { url, arch: registry_arch() }),
        Read::Next(digest) => {
            let url = format!("{base}{digest}");
            let body = get(&client, &url, creds).await?;
            match read(&body, registry_arch())
                .map_err(|detail| ManifestError::Malformed { url: url.clone(), detail })?
            {
                Read::Size(size) => Ok(size),
                Read::Next(_) => Err(ManifestError::Malformed { url, detail: "an index inside an index".into() }),
            }
        }
    }
}

/// `http` for a loopback registry (Docker's own default for those), else `https`.
fn scheme(registry: &str) -> &'static str {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback =
        host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        "http"
    } else {
        "https"
    }
}

async fn get(
    client: &aws_smithy_http_client::Connector,
    url: &str,
    creds: &RegistryCredentials,
) -> Result<Vec<u8>, ManifestError> {
    let failed = |detail: String| ManifestError::Request { url: url.to_owned(), detail };
    let mut request = aws_smithy_runtime_api::http::Request::new(SdkBody::empty());
    request.set_uri(url).map_err(|e| failed(e.to_string()))?;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", creds.username, creds.password.expose()));
    let headers = request.headers_mut();
    headers.insert("authorization", format!("Basic {basic}"));
    headers.insert("accept", ACCEPT);
    let exchange = async {
        let response = client.call(request).await.map_err(|e| failed(crate::outside::describe(&e)))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(ManifestError::Status { url: url.to_owned(), status });
        }
        let bytes = aws_smithy_types::byte_stream::ByteStream::new(response.into_body())
            .collect()
            .await
            .map_err(|e| failed(crate::outside::describe(&e)))?
            .into_bytes();
        if bytes.len() > MAX_MANIFEST {
            return Err(ManifestError::Malformed { url: url.to_owned(), detail: format!("{} bytes", bytes.len()) });
        }
        Ok(bytes.to_vec())
    };
    tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| ManifestError::Timeout { url: url.to_owned() })?
}

/// Reads a manifest body: the image's size, or (an index) the digest of `arch`'s manifest,
/// empty when it lists none.
fn read(body: &[u8], arch: &str) -> Result<Read, String> {
    let manifest: Manifest = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if let Some(manifests) = manifest.manifests {
        let ours =
            manifests.iter().find(|m| m.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == arch));
        return Ok(Read::Next(ours.map(|m| m.digest.clone()).unwrap_or_default()));
    }
    let layers = manifest.layers.ok_or("no layers")?;
    let config = manifest.config.map(|c| c.size).unwrap_or(0);
    Ok(Read::Size(layers.iter().fold(config, |sum, l| sum.saturating_add(l.size))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manifest_s_size_is_its_config_and_layers() {
        let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
            "config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":1469,"digest":"sha256:c"},
            "layers":[{"size":1000000,"digest":"sha256:a"},{"size":2500,"digest":"sha256:b"}]}"#;
        assert_eq!(read(manifest, "amd64"), Ok(Read::Size(1_003_969)));
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
            {"digest":"sha256:arm","size":500,"platform":{"architecture":"arm64","os":"linux"}},
            {"digest":"sha256:amd","size":500,"platform":{"architecture":"amd64","os":"linux"}}]}"#;
        assert_eq!(read(index, "amd64"), Ok(Read::Next("sha256:amd".into())));
        assert_eq!(read(index, "s390x"), Ok(Read::Next(String::new())));
        assert!(read(b"<html>", "amd64").is_err());
        assert!(read(br#"{"schemaVersion":1,"fsLayers":[]}"#, "amd64").is_err());
    }

    /// The HTTPS client builds (system roots, rustls) and a registry that cannot be reached
    /// is an error naming the URL, not a panic or a hang.
    #[tokio::test]
    async fn an_unreachable_registry_is_an_error_naming_the_url() {
        let creds = RegistryCredentials {
            username: "AWS".into(),
            password: crate::outside::registry::Secret::new("s3cr3t".into()),
            expires_at: None,
        };
        let err = image_size("registry.blog-agent.invalid", "blog", "abc", &creds).await.unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("GET https://registry.blog-agent.invalid/v2/blog/manifests/abc: "), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        let refused = image_size("127.0.0.1:9", "blog", "abc", &creds).await.unwrap_err().to_string();
        assert!(refused.starts_with("GET http://127.0.0.1:9/v2/blog/manifests/abc: "), "{refused}");
    }

    #[test]
    fn only_a_loopback_registry_is_asked_over_plain_http() {
        for (registry, want) in [
            ("127.0.0.1:5000", "http"),
            ("localhost:5000", "http"),
            ("[::1]:5000", "http"),
            ("localhost", "http"),
            ("123456789012.dkr.ecr.us-east-1.amazonaws.com", "https"),
            ("registry.example.com:5000", "https"),
            ("10.0.0.5:5000", "https"),
        ] {
            assert_eq!(scheme(registry), want, "{registry}");
        }
    }
}
