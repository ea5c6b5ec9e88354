//! Log output: journald under systemd, human text on a terminal, JSON for log shippers.
//!
//! Diagnostics go to stderr (or the journal); stdout is kept for data (`--json`).

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;

use clap::ValueEnum;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

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

/// Installs the global subscriber. `RUST_LOG` overrides the level; `debug` raises only the
/// agent's own level, so third-party crates never print request headers (registry auth).
pub fn init(format: LogFormat, target: LogTarget, debug: bool) {
    let default = if debug { "warn,blog_agent=debug" } else { "warn,blog_agent=info" };
    let mut filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Whatever RUST_LOG says: at trace level these crates print HTTP bodies and headers, and
    // those carry the ECR token (GetAuthorizationToken) and the registry auth header.
    for cap in
        ["aws_smithy_runtime=info", "aws_smithy_http_client=info", "hyper=info", "hyper_util=info", "bollard=info"]
    {
        filter = filter.add_directive(cap.parse().expect("static directive"));
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
