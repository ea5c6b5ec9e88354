//! Log output: journald under systemd, human text on a terminal, JSON for log shippers.
//!
//! Diagnostics go to stderr (or the journal); stdout is kept for data (`--json`).

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;

use clap::ValueEnum;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogTarget {
    /// journald when stderr is connected to the journal, else stderr.
    Auto,
    Stderr,
    Journald,
}

/// True when systemd connected our stderr to the journal: `JOURNAL_STREAM` holds the
/// `device:inode` of that stream, and it matches stderr only if nobody redirected it.
fn stderr_is_journal() -> bool {
    let Ok(expected) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(fd) = std::io::stderr().as_fd_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    expected == format!("{}:{}", meta.dev(), meta.ino())
}

trait AsFdOwned {
    fn as_fd_owned(&self) -> std::io::Result<std::os::fd::OwnedFd>;
}

impl AsFdOwned for std::io::Stderr {
    fn as_fd_owned(&self) -> std::io::Result<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.as_fd().try_clone_to_owned()
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the level: a comma-separated list of
/// `level` and `target=level` (e.g. `info,blog_agent=debug`); `debug` raises only the agent's
/// own level, so third-party crates never print request headers (registry auth).
pub fn init(format: LogFormat, target: LogTarget, debug: bool) {
    let default = if debug { "warn,blog_agent=debug" } else { "warn,blog_agent=info" };
    let mut filter = filter_from(std::env::var("RUST_LOG").ok().as_deref(), default);
    // Whatever RUST_LOG says: at trace level these crates print HTTP bodies and headers, and
    // those carry the ECR token (GetAuthorizationToken) and the registry auth header.
    for cap in ["aws_smithy_runtime", "aws_smithy_http_client", "hyper", "hyper_util", "bollard"] {
        filter = filter.with_target(cap, Level::INFO);
    }
    let journald = match target {
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
        LogTarget::Auto => stderr_is_journal(),
    };
    if journald {
        match tracing_journald::layer() {
            Ok(layer) => {
                tracing_subscriber::registry()
                    .with(filter)
                    .with(layer.with_syslog_identifier("blog-agent".into()))
                    .init();
                return;
            }
            Err(e) => eprintln!("blog-agent: journald unavailable ({e}); logging to stderr"),
        }
    }
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false);
    match format {
        LogFormat::Json => tracing_subscriber::registry().with(filter).with(fmt.json().flatten_event(true)).init(),
        LogFormat::Text => {
            tracing_subscriber::registry().with(filter).with(fmt.with_ansi(std::io::stderr().is_terminal())).init()
        }
    }
}

/// The filter `RUST_LOG` asks for, else `default`. A value that is not a `target=level` list
/// (span or field filters) is named once on stderr and the default is used, rather than
/// silencing or flooding the log.
fn filter_from(rust_log: Option<&str>, default: &str) -> Targets {
    let fallback = || default.parse().expect("static filter");
    match rust_log.map(str::trim).filter(|v| !v.is_empty()) {
        None => fallback(),
        Some(v) => v.parse().unwrap_or_else(|e| {
            eprintln!("blog-agent: RUST_LOG={v:?} is not a list of `level` or `target=level` ({e}); using {default:?}");
            fallback()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_sets_levels_per_target_and_a_bad_value_falls_back_to_the_default() {
        let default = "warn,blog_agent=info";
        let cases: &[(Option<&str>, &str, Level, bool)] = &[
            (None, "blog_agent::pass", Level::INFO, true),
            (None, "blog_agent::pass", Level::DEBUG, false),
            (None, "aws_config", Level::INFO, false),
            (Some("blog_agent=debug"), "blog_agent::agent", Level::DEBUG, true),
            (Some("debug"), "aws_config", Level::DEBUG, true),
            (Some(""), "blog_agent", Level::INFO, true),
            (Some("blog_agent[span]=debug"), "blog_agent", Level::DEBUG, false),
        ];
        for (rust_log, target, level, enabled) in cases {
            let filter = filter_from(*rust_log, default);
            assert_eq!(filter.would_enable(target, level), *enabled, "{rust_log:?} {target} {level}");
        }
    }
}
