//! Signed releases (`[release] public_key`): hosts deploy only a release object whose
//! signature, made with the key CI holds, covers its environment, SHA, image digest and the
//! time it was published.
//!
//! Threat model (docs/iam.md): someone with write access to the release bucket alone (a leaked
//! host or CI role, a bucket policy mistake) can write any SHA into a release object; with a
//! public key configured, hosts refuse it, because only the holder of the secret key can sign.
//! The signature covers the environment, so a staging signature cannot be replayed into
//! production; the digest, so a re-pushed tag is refused as well; and the publication time
//! (`blog-published-at`), so an older signed release copied over a newer one is recognised as
//! a replay ([`crate::pass::desired`]). A signature without a time (message `v1`) verifies
//! and counts as older than any timed one.
//!
//! Format: minisign's, in its legacy mode (`minisign -S -l`: Ed25519 over the message itself,
//! plus minisign's global signature over the signature and its trusted comment), so Debian's
//! `minisign` CLI makes and checks the same signatures. `publish` signs with that CLI
//! (`BLOG_AGENT_SIGNING_KEY`, the secret key file; `BLOG_AGENT_SIGNING_PASSWORD` when it is
//! encrypted); hosts verify with the Ed25519 of the TLS stack already in the binary (aws-lc-rs):
//! the message is a few dozen bytes, so minisign's prehashed mode (BLAKE2b first, for large
//! files) would only add a hash to the binary. The signature file travels base64-encoded in the
//! release object's metadata (`blog-signature`).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine as _;

use crate::sha::Sha;

/// The bytes a release's signature covers. `published_at`: the RFC 3339 time the publisher
/// recorded (`blog-published-at`), signed as it is written; `None` gives the untimed `v1`
/// message older publishers signed.
pub fn message(environment: &str, sha: &Sha, digest: &str, published_at: Option<&str>) -> Vec<u8> {
    match published_at {
        Some(at) => {
            format!("blog-agent release v2\nenvironment {environment}\nsha {sha}\ndigest {digest}\npublished-at {at}\n")
                .into_bytes()
        }
        None => format!("blog-agent release v1\nenvironment {environment}\nsha {sha}\ndigest {digest}\n").into_bytes(),
    }
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
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
/// `public_key` (minisign's base64 public key, validated with the config). The signature is
/// checked over the timed message when the release records a time, else over the untimed one:
/// the answer says which, since only a timed signature can order two releases.
pub fn verify(
    public_key: &str,
    environment: &str,
    sha: &Sha,
    digest: Option<&str>,
    published_at: Option<&str>,
    signature: Option<&str>,
) -> Result<Signed, SignatureError> {
    let (Some(digest), Some(signature)) = (digest, signature) else {
        return Err(SignatureError::Missing { environment: environment.to_owned(), sha: sha.to_string() });
    };
    let invalid =
        |detail: String| SignatureError::Invalid { environment: environment.to_owned(), sha: sha.to_string(), detail };
    let key =
        PublicKey::parse(public_key).ok_or_else(|| invalid("[release] public_key is not a minisign key".into()))?;
    let text = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| invalid("the signature is not base64 of a minisign signature file".into()))?;
    let signature = SignatureFile::parse(&text).map_err(|e| invalid(e.to_owned()))?;
    if let Some(at) = published_at {
        if key.verify(&message(environment, sha, digest, Some(at)), &signature).is_ok() {
            return Ok(Signed::At(at.to_owned()));
        }
    }
    key.verify(&message(environment, sha, digest, None), &signature).map_err(|e| invalid(e.to_owned()))?;
    Ok(Signed::Untimed)
}

/// What a verified signature covers besides environment, SHA and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signed {
    /// The publication time, as recorded (RFC 3339).
    At(String),
    /// No time: an older publisher's signature; older than any timed one.
    Untimed,
}

impl Signed {
    /// Unix seconds of the signed time; `None` for an untimed signature or a time that does
    /// not parse (which then orders as untimed).
    pub fn unix(&self) -> Option<u64> {
        match self {
            Signed::At(at) => humantime::parse_rfc3339(at)
                .ok()
                .and_then(|t| t.duration_since(std::time::SystemTime::UNIX_EPOCH).ok())
                .map(|d| d.as_secs()),
            Signed::Untimed => None,
        }
    }
}

/// A minisign public key: algorithm `Ed`, 8 bytes of key id, 32 bytes of Ed25519 key.
struct PublicKey {
    id: [u8; 8],
    key: [u8; 32],
}

impl PublicKey {
    fn parse(base64: &str) -> Option<PublicKey> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(base64.trim()).ok()?;
        if bytes.len() != 42 || &bytes[..2] != b"Ed" {
            return None;
        }
        Some(PublicKey { id: bytes[2..10].try_into().ok()?, key: bytes[10..].try_into().ok()? })
    }

    fn verify(&self, message: &[u8], sig: &SignatureFile) -> Result<(), &'static str> {
        use aws_lc_rs::signature::{UnparsedPublicKey, ED25519};
        if sig.id != self.id {
            return Err("it was made with another key (its key id differs)");
        }
        let key = UnparsedPublicKey::new(&ED25519, &self.key);
        key.verify(message, &sig.signature).map_err(|_| "the signature does not match")?;
        // minisign's global signature binds the trusted comment to the signature.
        let mut global = sig.signature.to_vec();
        global.extend_from_slice(sig.trusted_comment.as_bytes());
        key.verify(&global, &sig.global).map_err(|_| "the trusted comment's signature does not match")
    }
}

/// A minisign signature file (four lines): untrusted comment, `Ed` + key id + signature,
/// `trusted comment: ...`, the global signature.
struct SignatureFile {
    id: [u8; 8],
    signature: [u8; 64],
    trusted_comment: String,
    global: [u8; 64],
}

impl SignatureFile {
    fn parse(text: &str) -> Result<SignatureFile, &'static str> {
        let b64 = |line: &str| base64::engine::general_purpose::STANDARD.decode(line.trim()).ok();
        let mut lines = text.lines();
        let (_untrusted, sig, trusted, global) = (lines.next(), lines.next(), lines.next(), lines.next());
        let sig = sig.and_then(b64).filter(|b| b.len() == 74).ok_or("not a minisign signature")?;
        match &sig[..2] {
            b"Ed" => {}
            b"ED" => return Err("a prehashed signature: sign with `minisign -S -l`, as `blog-agent publish` does"),
            _ => return Err("an unknown signature algorithm"),
        }
        let trusted_comment =
            trusted.and_then(|t| t.strip_prefix("trusted comment: ")).ok_or("no trusted comment line")?.to_owned();
        let global = global.and_then(b64).filter(|b| b.len() == 64).ok_or("no global signature")?;
        Ok(SignatureFile {
            id: sig[2..10].try_into().map_err(|_| "not a minisign signature")?,
            signature: sig[10..74].try_into().map_err(|_| "not a minisign signature")?,
            trusted_comment,
            global: global.try_into().map_err(|_| "no global signature")?,
        })
    }
}

/// Whether `public_key` is a minisign public key (for the config's validation).
pub fn valid_public_key(public_key: &str) -> bool {
    PublicKey::parse(public_key).is_some()
}

/// Signs the release, published at `published_at` (RFC 3339, as written into the object's
/// metadata), with the minisign CLI and the secret key file `key`: base64 of the signature
/// file, for the release object's metadata.
pub fn sign(
    key: &Path,
    password: Option<&str>,
    environment: &str,
    sha: &Sha,
    digest: &str,
    published_at: &str,
) -> Result<String, String> {
    let dir = std::env::temp_dir().join(format!("blog-agent-sign-{}-{}", std::process::id(), fastrand::u64(..)));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let result = (|| {
        let file = dir.join("release");
        std::fs::write(&file, message(environment, sha, digest, Some(published_at))).map_err(|e| e.to_string())?;
        let sig = dir.join("release.minisig");
        let mut child = Command::new("minisign")
            .args(["-S", "-l"])
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
            message("staging", &sha, "sha256:ab", None),
            b"blog-agent release v1\nenvironment staging\nsha 3f2a9c1\ndigest sha256:ab\n".to_vec()
        );
        assert_eq!(
            message("staging", &sha, "sha256:ab", Some("2026-12-07T20:00:00Z")),
            b"blog-agent release v2\nenvironment staging\nsha 3f2a9c1\ndigest sha256:ab\npublished-at 2026-12-07T20:00:00Z\n"
                .to_vec()
        );
    }

    #[test]
    fn no_signature_or_no_digest_is_missing_and_garbage_is_invalid() {
        let sha = Sha::parse("3f2a9c1").unwrap();
        let key = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
        assert!(valid_public_key(key));
        assert!(!valid_public_key("not a key"));
        assert!(matches!(verify(key, "staging", &sha, None, None, Some("x")), Err(SignatureError::Missing { .. })));
        assert!(matches!(
            verify(key, "staging", &sha, Some("sha256:ab"), None, None),
            Err(SignatureError::Missing { .. })
        ));
        assert!(matches!(
            verify(key, "staging", &sha, Some("sha256:ab"), None, Some("!!")),
            Err(SignatureError::Invalid { .. })
        ));
    }
}
