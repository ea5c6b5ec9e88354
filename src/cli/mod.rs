//! Command line: global options, subcommands, and the mapping from errors to exit codes.

mod assets;
mod check;
mod halt;
mod pause;
mod publish;
mod run;
mod status;
mod sync;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{ConfigError, Settings, DEFAULT_PATH};
use crate::runtime::logging::{LogFormat, LogTarget};

/// Exit codes, as systemd and scripts see them.
pub mod exit {
    /// Converged and healthy.
    pub const OK: u8 = 0;
    /// Could not converge; the cause is on stderr. Retrying may help.
    pub const FAILED: u8 = 1;
    /// Bad command line.
    pub const USAGE: u8 = 2;
    /// Configuration error (`EX_CONFIG`): retrying cannot help, so systemd must not restart.
    pub const CONFIG: u8 = 78;
}

#[derive(Debug, Parser)]
#[command(
    name = "blog-agent",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("BLOG_AGENT_GIT_COMMIT"), ")"),
    about = "Keeps this host serving the right version of the blog container."
)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, global = true, env = "BLOG_AGENT_CONFIG", default_value = DEFAULT_PATH)]
    pub config: PathBuf,
    /// Environment to serve; overrides [environment] name and the instance tag.
    #[arg(long = "env", global = true, value_name = "NAME")]
    pub environment: Option<String>,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Where logs go: auto picks journald when run by systemd.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    pub log_target: LogTarget,
    /// Verbose logs from blog-agent itself (secrets stay hidden).
    #[arg(long, global = true)]
    pub debug: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Converge once: read the desired SHA, pull, verify, cut over; then exit.
    ///
    /// It does not wait for this host's rollout wave ([rollout] spread), and says so when it
    /// skips one; a release halted fleet-wide is not applied (`--sha` applies it anyway).
    ///
    /// Example: blog-agent sync --env staging
    ///          blog-agent sync --sha 3f2a9c1      (roll back/forward now, and pause updates)
    ///          blog-agent sync --dry-run
    Sync(sync::SyncArgs),
    /// Show the environment, the desired and the running version, health, pause and the
    /// last reconcile, this host's rollout wave and a halt. Read-only; safe while the service
    /// runs.
    ///
    /// Example: blog-agent status        blog-agent status --json | jq .converged
    Status(status::StatusArgs),
    /// Preflight doctor: config, IMDS and tag, AWS region and credentials, S3 object and SHA,
    /// its halt, ECR token, registry tag (no pull), Docker, host ports. One line each; changes
    /// nothing.
    ///
    /// Example: blog-agent check && systemctl start blog-agent
    Check(check::CheckArgs),
    /// Freeze automatic updates: the service keeps repairing the running version but does not
    /// move to a new SHA from S3 until `resume`. Survives reboots.
    ///
    /// Example: blog-agent pause --reason "INC-123: bad release, investigating"
    Pause(pause::PauseArgs),
    /// Unfreeze automatic updates: follow the SHA in S3 again.
    ///
    /// Example: blog-agent resume
    Resume,
    /// Halt a release fleet-wide: no host of this environment applies SHA until `unhalt`.
    ///
    /// The marker goes beside the release key in S3 (`<folder>/halted/<sha>`); one that is
    /// already there (a failing host's, with its rollback target) is kept.
    ///
    /// Example: blog-agent halt 3f2a9c1 --reason "INC-123: 500s on /feed"
    Halt(halt::HaltArgs),
    /// Lift a halt: hosts of this environment may apply SHA again when S3 names it.
    ///
    /// Example: blog-agent unhalt 3f2a9c1
    Unhalt(halt::UnhaltArgs),
    /// Run as a service: converge now, then keep converging (S3 polls, Docker events) until
    /// SIGTERM. SIGHUP reloads the configuration. Stopping the agent never stops the blog.
    ///
    /// Example: blog-agent run   (normally started by systemd: blog-agent.service)
    Run(run::RunArgs),
    /// Publish a release (CI): check `<repository>:SHA` is in ECR and read its digest, refuse a
    /// SHA halted for the environment, then write SHA (and the digest hosts must run) to the
    /// environment's release object as a conditional write: two publishes at once cannot
    /// silently overwrite each other. Exit 1 with one line, and nothing written, on any failure.
    ///
    /// Example: blog-agent --env staging publish 3f2a9c1d0e
    Publish(publish::PublishArgs),
    /// List what was published to an environment, newest first (the release object's S3
    /// versions): SHA, digest, time, publisher, pipeline, halted.
    ///
    /// Example: blog-agent --env production releases --json
    Releases(publish::ReleasesArgs),
    /// Publish again the release before the current one (or --to SHA), with the digest it was
    /// published with, through the same checks as `publish`.
    ///
    /// Example: blog-agent --env production rollback
    Rollback(publish::RollbackArgs),
    /// Publish to --to the exact digest --from has for SHA, once it has been published there
    /// for --soak; refuses a release halted in --from or never published there.
    ///
    /// Example: blog-agent promote 3f2a9c1d0e --from staging --to production --soak 30m
    Promote(publish::PromoteArgs),
    /// Write the man page and shell completions into a directory (used by packaging).
    #[command(hide = true)]
    GenerateAssets(assets::AssetsArgs),
}

/// A failure on its way to the exit code: printed once, on one line.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Failure {
        Failure { code: exit::CONFIG, message: e.to_string() }
    }
}

/// Loads settings, mapping problems to exit 78.
pub fn load_settings(cli: &Cli) -> Result<Settings, Failure> {
    Ok(Settings::load(&cli.config)?)
}

/// Refuses a `--env` that is not in `[environment] allowed` before anything is contacted.
pub fn check_env_flag(cli: &Cli, settings: &Settings) -> Result<(), Failure> {
    match &cli.environment {
        Some(env) if !settings.environment.allowed.contains(env) => {
            let allowed = settings.environment.allowed.join(", ");
            let message = format!(
                "--env {}: not an allowed environment (expected one of {allowed})",
                crate::sha::safe_quote(env)
            );
            Err(Failure { code: exit::USAGE, message })
        }
        _ => Ok(()),
    }
}

/// Runs the parsed command and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    crate::runtime::logging::init(cli.log_format, cli.log_target, cli.debug);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("blog-agent: error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Sync(args) => sync::run(&cli, args).await,
            Command::Run(args) => run::run(&cli, args).await,
            Command::Pause(args) => pause::pause(&cli, args),
            Command::Status(args) => status::run(&cli, args).await,
            Command::Check(args) => check::run(&cli, args).await,
            Command::Resume => pause::resume(&cli),
            Command::Halt(args) => halt::halt(&cli, args).await,
            Command::Unhalt(args) => halt::unhalt(&cli, args).await,
            Command::Publish(args) => publish::publish(&cli, args).await,
            Command::Releases(args) => publish::releases(&cli, args).await,
            Command::Rollback(args) => publish::rollback(&cli, args).await,
            Command::Promote(args) => publish::promote(&cli, args).await,
            Command::GenerateAssets(args) => assets::run(args),
        }
    });
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(failure) => {
            eprintln!("blog-agent: error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}
