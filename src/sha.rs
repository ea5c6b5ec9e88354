//! The release identifier: a git commit SHA, validated before it touches anything.
//!
//! The SHA comes from an S3 object that CI writes, or from an operator's `--sha`. It becomes an
//! image tag and a label, so anything that is not 7–40 lowercase hex digits is refused here,
//! and the error quotes a *safe* form of the value (printable, truncated) so a 10 MB object or
//! shell text cannot flood a log line or a terminal.

use std::fmt;

/// Longest value quoted back in an error, in characters.
const QUOTE_LIMIT: usize = 48;

/// A validated git commit SHA (7 to 40 lowercase hex digits).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha(String);

/// Why a value is not a SHA. `value` is already made safe to print.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value} is not a git SHA: {reason} (expected 7 to 40 lowercase hex digits)")]
pub struct InvalidSha {
    pub value: String,
    pub reason: &'static str,
}

impl Sha {
    /// Parses a SHA after trimming surrounding whitespace (CI writes it with a newline).
    pub fn parse(raw: &str) -> Result<Sha, InvalidSha> {
        let value = raw.trim();
        let reason = if value.is_empty() {
            Some("it is empty")
        } else if value.len() < 7 {
            Some("it is too short")
        } else if value.len() > 40 {
            Some("it is too long")
        } else if value.bytes().any(|b| b.is_ascii_uppercase()) && value.bytes().all(|b| b.is_ascii_hexdigit()) {
            Some("it has uppercase letters")
        } else if !value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            Some("it has characters other than 0-9 and a-f")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(InvalidSha { value: safe_quote(value), reason }),
            None => Ok(Sha(value.to_owned())),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 characters, for status lines.
    pub fn short(&self) -> &str {
        &self.0[..self.0.len().min(12)]
    }
}

impl fmt::Display for Sha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Sha {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha({})", self.0)
    }
}

/// Quotes an untrusted value for a one-line message: control characters escaped, cut to
/// [`QUOTE_LIMIT`] characters with the full length noted.
pub fn safe_quote(value: &str) -> String {
    let mut out = String::from("\"");
    let total = value.chars().count();
    for c in value.chars().take(QUOTE_LIMIT) {
        out.extend(c.escape_debug());
    }
    out.push('"');
    if total > QUOTE_LIMIT {
        out.push_str(&format!("... ({} characters)", total));
    }
    out
}

/// Text from outside (a halt marker's reason, an operator's name) made safe to print on a
/// terminal or in the journal: control characters (terminal escapes, newlines) are escaped,
/// the rest is kept as it is, and it is cut at [`TEXT_LIMIT`] characters.
pub fn safe_text(value: &str) -> String {
    let mut out = String::with_capacity(value.len().min(TEXT_LIMIT));
    for c in value.chars().take(TEXT_LIMIT) {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if value.chars().count() > TEXT_LIMIT {
        out.push_str("...");
    }
    out
}

/// Longest outside text [`safe_text`] keeps.
pub const TEXT_LIMIT: usize = 500;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_text_cannot_drive_the_terminal() {
        assert_eq!(
            safe_text("probe \u{1b}[2J\u{1b}]0;pwned\u{7}ok\nnext"),
            "probe \\u{1b}[2J\\u{1b}]0;pwned\\u{7}ok\\nnext"
        );
        assert_eq!(safe_text("Zoë: 500"), "Zoë: 500");
        assert_eq!(safe_text(&"x".repeat(600)).len(), TEXT_LIMIT + 3);
    }

    #[test]
    fn accepts_git_shas() {
        for ok in ["abcdef1", "0123456789abcdef0123456789abcdef01234567", "  deadbeef\n"] {
            assert!(Sha::parse(ok).is_ok(), "{ok:?}");
        }
        assert_eq!(Sha::parse("deadbeef\n").unwrap().as_str(), "deadbeef");
    }

    #[test]
    fn rejects_everything_else_with_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("   \n", "empty"),
            ("abc12", "too short"),
            ("latest", "too short"),
            ("0123456789abcdef0123456789abcdef012345678", "too long"),
            ("DEADBEEF", "uppercase"),
            ("deadbeef:1", "characters other"),
            ("blog/deadbeef", "characters other"),
            ("$(rm -rf /)", "characters other"),
            ("deadbeefg", "characters other"),
        ];
        for (input, reason) in cases {
            let err = Sha::parse(input).unwrap_err();
            assert!(err.reason.contains(reason), "{input:?}: {err}");
        }
    }

    #[test]
    fn quotes_untrusted_values_safely() {
        let huge = "x".repeat(10 * 1024 * 1024);
        let err = Sha::parse(&huge).unwrap_err();
        let msg = err.to_string();
        assert!(msg.len() < 200, "{msg}");
        assert!(msg.contains("10485760 characters"), "{msg}");
        let err = Sha::parse("a\u{1b}[31mb\nc").unwrap_err();
        assert!(!err.to_string().contains('\u{1b}'));
        assert!(!err.to_string().contains('\n'));
    }
}
