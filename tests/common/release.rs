//! The CI half on the local stack: images pushed to the registry hosts pull from, with their
//! exact manifests registered in moto's ECR (which `publish` asks for digests), release objects
//! read back, and minisign keys made as CI makes them.

use std::process::Command;

use super::*;

/// Creates the host's repository in moto's ECR (once) and registers `sha` there with the exact
/// manifest the registry serves for it, so ECR's digest is the one hosts pull.
pub fn push_to_ecr(host: &Host, sha: &str) -> String {
    let user = std::env::var("ECR_TOKEN_USER").unwrap_or_else(|_| "AWS".into());
    let password = std::env::var("ECR_TOKEN_PASSWORD").unwrap_or_else(|_| "123456789012-auth-token".into());
    let url = format!("http://{}/v2/{}/manifests/{sha}", host.registry, host.repo);
    let media = "application/vnd.docker.distribution.manifest.v2+json";
    let out = Command::new("curl")
        .args(["-sf", "-u", &format!("{user}:{password}"), "-H", &format!("Accept: {media}"), &url])
        .output()
        .expect("curl");
    assert!(out.status.success(), "GET {url}: {}", String::from_utf8_lossy(&out.stderr));
    // The registry's digest is the SHA-256 of these exact bytes; ECR is told the same.
    let digest = {
        use sha2::Digest as _;
        let hash = sha2::Sha256::digest(&out.stdout);
        format!("sha256:{}", hash.iter().map(|b| format!("{b:02x}")).collect::<String>())
    };
    let manifest = String::from_utf8(out.stdout).unwrap();
    let repo = host.repo.clone();
    let tag = sha.to_owned();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
        let ecr = aws_sdk_ecr::Client::new(&config);
        let _ = ecr.create_repository().repository_name(&repo).send().await;
        let put = ecr
            .put_image()
            .repository_name(&repo)
            .image_manifest(manifest)
            .image_manifest_media_type(media)
            .image_tag(&tag)
            .image_digest(&digest)
            .send()
            .await
            .unwrap_or_else(|e| panic!("ECR PutImage {repo}:{tag}: {e:?}"));
        let got = put.image().and_then(|i| i.image_id()).and_then(|i| i.image_digest()).expect("a digest").to_owned();
        assert_eq!(got, digest, "ECR's digest is the registry's");
        got
    })
}

/// Builds an image of `kind`, pushes it to the registry and to ECR: CI's build-and-push job.
pub fn build_and_push(host: &Host, kind: &str) -> (String, String) {
    let sha = host.publish(kind);
    let digest = push_to_ecr(host, &sha);
    (sha, digest)
}

/// Pushes other content under an existing tag (a re-push after publish).
pub fn repush(host: &Host, sha: &str) -> String {
    publish_image(sha, "slow", &host.registry, &host.repo);
    push_to_ecr(host, sha)
}

pub fn versioning_on(host: &Host) {
    host.s3(|c, b| async move {
        let on = aws_sdk_s3::types::VersioningConfiguration::builder()
            .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
            .build();
        c.put_bucket_versioning().bucket(b).versioning_configuration(on).send().await.unwrap();
    });
}

/// The release object of `env`: its body and its user metadata.
pub fn release_object(host: &Host, env: &str) -> Option<(String, std::collections::HashMap<String, String>)> {
    let key = default_key(env);
    host.s3(|c, b| async move {
        let out = c.get_object().bucket(b).key(key).send().await.ok()?;
        let meta = out.metadata().cloned().unwrap_or_default();
        let body = String::from_utf8(out.body.collect().await.ok()?.to_vec()).ok()?;
        Some((body, meta))
    })
}

/// `publish SHA` for `env`, as CI runs it.
pub fn publish(host: &Host, env: &str, sha: &str) -> Run {
    host.agent(&["--env", env, "publish", sha])
}

/// A minisign key pair made with Debian's CLI, as CI would: (public key line, secret key file).
pub fn key_pair(host: &Host, name: &str) -> (String, std::path::PathBuf) {
    let (public, secret) = (host.path().join(format!("{name}.pub")), host.path().join(format!("{name}.key")));
    let out = Command::new("minisign")
        .args(["-G", "-W", "-f", "-p"])
        .arg(&public)
        .arg("-s")
        .arg(&secret)
        .output()
        .expect("minisign (scripts/install-deps.sh installs it)");
    assert!(out.status.success(), "minisign -G: {}", String::from_utf8_lossy(&out.stderr));
    let key = std::fs::read_to_string(&public).unwrap().lines().nth(1).unwrap().trim().to_owned();
    (key, secret)
}
