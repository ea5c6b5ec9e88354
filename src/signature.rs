//! Signed releases (`[release] public_key`): hosts deploy only a release object whose
//! signature, made with the key CI holds, covers its environment, SHA and image digest.
//!
//! Threat model (docs/iam.md): someone with write access to the release bucket alone (a leaked
//! host or CI role, a bucket policy mistake) can write any SHA into a release object; with a
//! public key configured, hosts refuse it, because only the holder of the secret key can sign.
//! The signature covers the environment, so a staging signature cannot be replayed into
//! production, and the digest, so a re-pushed tag is refused as well.
//!
//! Format: minisign's (Ed25519, prehashed), so Debian's `minisign` CLI makes and checks the
//! same signatures. `publish` signs with that CLI (`BLOG_AGENT_SIGNING_KEY`, the secret key
//! file; `BLOG_AGENT_SIGNING_PASSWORD` when it is encrypted); hosts verify with the
//! dependency-free `minisign-verify`. The signature file travels base64-encoded in the release
//! object's metadata (`blog-signature`).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine as _;

use crate::sha::Sha;

/// The bytes a release's signature covers.
pub fn message(environment: &str, sha: &Sha, digest: &str) -> Vec<u8> {
    format!("blog-agent release v1\nenvironment {environment}\nsha {sha}\ndigest {digest}\n").into_bytes()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error(
        "release {sha} for {environment} carries no signature, and [release] public_key requires one: not \
         deploying it (publish it with `blog-agent publish` and BLOG_AGENT_SIGNING_KEY)"
    )]
    Missing { environment: String, sha: String },
    #[error(
        "release {sha} for {environment} has a signature that does not verify with [release] public_key \
         ({detail}): not deploying it (was it written by hand, or signed with another key?)"
    )]
    Invalid { environment: String, sha: String, detail: String },
}

/// Checks `signature` (base64 of a minisign signature file) over the release, with
/// `public_key` (minisign's base64 public key, validated with the config).
pub fn verify(
    public_key: &str,
    environment: &str,
    sha: &Sha,
    digest: Option<&str>,
    signature: Option<&str>,
) -> Result<(), SignatureError> {
    let (Some(digest), Some(signature)) = (digest, signature) else {
        return Err(SignatureError::Missing { environment: environment.to_owned(), sha: sha.to_string() });
    };
    let invalid =
        |detail: String| SignatureError::Invalid { environment: environment.to_owned(), sha: sha.to_string(), detail };
    let key = minisign_verify::PublicKey::from_base64(public_key).map_err(|e| invalid(format!("public key: {e}")))?;
    let text = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| invalid("the signature is not base64 of a minisign signature file".into()))?;
    let signature = minisign_verify::Signature::decode(&text).map_err(|e| invalid(e.to_string()))?;
    key.verify(&message(environment, sha, digest), &signature, false).map_err(|e| invalid(e.to_string()))
}

/// Whether `public_key` is a minisign public key (for the config's validation).
pub fn valid_public_key(public_key: &str) -> bool {
    minisign_verify::PublicKey::from_base64(public_key).is_ok()
}

/// Signs the release with the minisign CLI and the secret key file `key`: base64 of the
/// signature file, for the release object's metadata.
pub fn sign(key: &Path, password: Option<&str>, environment: &str, sha: &Sha, digest: &str) -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("blog-agent-sign-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = (|| {
        let file = dir.join("release");
        std::fs::write(&file, message(environment, sha, digest)).map_err(|e| e.to_string())?;
        let sig = dir.join("release.minisig");
        let mut child = Command::new("minisign")
            .arg("-S")
            .arg("-s")
            .arg(key)
            .arg("-m")
            .arg(&file)
            .arg("-x")
            .arg(&sig)
            .args(["-t", &format!("blog-agent release {environment} {sha}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run minisign (Debian/Ubuntu: apt-get install minisign): {e}"))?;
        if let (Some(password), Some(mut stdin)) = (password, child.stdin.take()) {
            let _ = writeln!(stdin, "{password}");
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            return Err(format!("minisign could not sign with {}: {}", key.display(), said.trim()));
        }
        let bytes = std::fs::read(&sig).map_err(|e| e.to_string())?;
        Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_environment_sha_and_digest() {
        let sha = Sha::parse("3f2a9c1").unwrap();
        assert_eq!(
            message("staging", &sha, "sha256:ab"),
            b"blog-agent release v1\nenvironment staging\nsha 3f2a9c1\ndigest sha256:ab\n".to_vec()
        );
    }

    #[test]
    fn no_signature_or_no_digest_is_missing_and_garbage_is_invalid() {
        let sha = Sha::parse("3f2a9c1").unwrap();
        let key = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
        assert!(valid_public_key(key));
        assert!(!valid_public_key("not a key"));
        assert!(matches!(verify(key, "staging", &sha, None, Some("x")), Err(SignatureError::Missing { .. })));
        assert!(matches!(verify(key, "staging", &sha, Some("sha256:ab"), None), Err(SignatureError::Missing { .. })));
        assert!(matches!(
            verify(key, "staging", &sha, Some("sha256:ab"), Some("!!")),
            Err(SignatureError::Invalid { .. })
        ));
    }
}
