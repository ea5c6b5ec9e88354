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
    /// Environment to act on; overrides [environment] name and the instance tag. Required by
    /// publish, releases and rollback; refused by pause, resume and promote.
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

/// Commands that act on an environment's release object, never on this host: `--env` names it
/// and is required (CI names it explicitly). Their usage lines say so.
pub const ENV_REQUIRED: [&str; 3] = ["publish", "releases", "rollback"];

/// Commands that act on this host's own state (`pause`, `resume`) or name both environments
/// themselves (`promote --from --to`): `--env` would be ignored, so it is refused.
pub const ENV_REFUSED: [&str; 3] = ["pause", "resume", "promote"];

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Converge once: read the desired SHA, pull, verify, cut over; then exit.
    ///
    /// It does not wait for this host's rollout wave ([rollout] spread), and says so when it
    /// skips one; a release halted fleet-wide is not applied (`--sha` applies it anyway).
    #[command(after_help = "Examples:
  blog-agent sync --env staging
  blog-agent sync --sha 3f2a9c1    # roll back or forward now, and pause updates
  blog-agent sync --dry-run")]
    Sync(sync::SyncArgs),
    /// Show what this host should run, what it runs, and why (read-only).
    ///
    /// The environment, the desired and the running version, health, pause and the last
    /// reconcile, this host's rollout wave and a halt. Safe while the service runs. Exit 0 when
    /// converged, 1 otherwise.
    #[command(after_help = "Examples:
  blog-agent status
  blog-agent status --json | jq .converged")]
    Status(status::StatusArgs),
    /// Preflight doctor: one line per dependency, changes nothing.
    ///
    /// Lines, in order: config; imds and environment tag (or environment); aws region; aws
    /// credentials; s3 object; release sha; release signature; release halt; ecr token; clock
    /// (this host's offset from AWS's time); registry (a manifest request, no pull); docker;
    /// docker live-restore; disk (free space on Docker's data root against the release's size
    /// and [reconcile] min_free_disk); host port (one per mapping); in switch mode traffic
    /// switch, traffic chains and route_localnet; with
    /// [rollout] lifecycle_hook, launch gate. Exit 0 only when no line is FAIL (WARN and skip
    /// lines do not count).
    ///
    /// Run it as root, as the service runs: as another user the docker line fails without
    /// access to the Docker socket, the traffic switch line fails (iptables needs root), and
    /// host ports below 1024 are skipped.
    #[command(after_help = "Examples:
  sudo blog-agent check && sudo systemctl start blog-agent")]
    Check(check::CheckArgs),
    /// Freeze automatic updates on this host until `resume`; survives reboots.
    ///
    /// The service keeps repairing the running version but does not move to a new SHA from
    /// S3. It acts on this host's state only, so `--env` is refused.
    #[command(after_help = "Examples:
  blog-agent pause --reason \"INC-123: bad release, investigating\"")]
    Pause(pause::PauseArgs),
    /// Unfreeze automatic updates on this host: follow the SHA in S3 again.
    ///
    /// It acts on this host's state only, so `--env` is refused.
    #[command(after_help = "Examples:
  blog-agent resume")]
    Resume,
    /// Halt a release fleet-wide: no host of the environment applies it until `unhalt`.
    ///
    /// The marker goes beside the release key in S3 (`<folder>/halted/<sha>`); one that is
    /// already there (a failing host's, with its rollback target) is kept.
    #[command(after_help = "Examples:
  blog-agent halt 3f2a9c1 --reason \"INC-123: 500s on /feed\"")]
    Halt(halt::HaltArgs),
    /// Lift a halt: hosts of the environment may apply the release again when S3 names it.
    #[command(after_help = "Examples:
  blog-agent unhalt 3f2a9c1")]
    Unhalt(halt::UnhaltArgs),
    /// Run as a service: converge now, then keep converging until SIGTERM.
    ///
    /// S3 polls and Docker events trigger passes; SIGHUP reloads the configuration. Stopping
    /// the agent never stops the blog.
    #[command(after_help = "Examples:
  blog-agent run    # normally started by systemd: blog-agent.service")]
    Run(run::RunArgs),
    /// Publish a release to an environment (CI); requires --env.
    ///
    /// Checks `<repository>:SHA` is in ECR and reads its digest, refuses a SHA halted for the
    /// environment, then writes SHA (and the digest hosts must run) to the environment's
    /// release object as a conditional write: two publishes at once cannot silently overwrite
    /// each other. Exit 1 with one line, and nothing written, on any failure.
    #[command(
        override_usage = "blog-agent --env <NAME> publish [OPTIONS] <SHA>",
        after_help = "Examples:
  blog-agent --env staging publish 3f2a9c1d0e"
    )]
    Publish(publish::PublishArgs),
    /// List what was published to an environment, newest first; requires --env.
    ///
    /// The release object's S3 versions: SHA, digest, time, publisher, pipeline, how many hosts
    /// baked it, reverted it and voted against it, halted.
    #[command(
        override_usage = "blog-agent --env <NAME> releases [OPTIONS]",
        after_help = "Examples:
  blog-agent --env production releases --json"
    )]
    Releases(publish::ReleasesArgs),
    /// Publish again the release before the current one (or --to SHA); requires --env.
    ///
    /// With the digest it was published with, through the same checks as `publish`.
    #[command(
        override_usage = "blog-agent --env <NAME> rollback [OPTIONS]",
        after_help = "Examples:
  blog-agent --env production rollback
  blog-agent --env production rollback --to 3f2a9c1"
    )]
    Rollback(publish::RollbackArgs),
    /// Publish to --to the exact digest --from has for SHA, after --soak there.
    ///
    /// Refuses a release halted in --from or never published there, and one that a host of
    /// --from reverted after its bake or voted against (unless --force); with --baked-by N, one
    /// that fewer than N hosts of --from finished a bake of. The environments are --from and
    /// --to, so `--env` is refused.
    #[command(after_help = "Examples:
  blog-agent promote 3f2a9c1d0e --from staging --to production --soak 30m
  blog-agent promote 3f2a9c1d0e --from staging --to production --baked-by 2
  blog-agent promote 3f2a9c1d0e --from staging --to production --force")]
    Promote(publish::PromoteArgs),
    /// Write the man pages and shell completions into a directory (used by packaging).
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

/// Refuses `--env` for a command that would ignore it ([`ENV_REFUSED`]), saying what it acts on.
pub fn refuse_env_flag(cli: &Cli, command: &str, acts_on: &str) -> Result<(), Failure> {
    match &cli.environment {
        Some(env) => Err(Failure {
            code: exit::USAGE,
            message: format!(
                "--env {}: {command} does not take --env; it acts on {acts_on}",
                crate::sha::safe_quote(env)
            ),
        }),
        None => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn visible() -> Vec<clap::Command> {
        let mut cli = Cli::command();
        cli.build();
        cli.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help").cloned().collect()
    }

    #[test]
    fn every_summary_is_one_short_line() {
        for sub in visible() {
            let about = sub.get_about().map(ToString::to_string).unwrap_or_default();
            assert!(!about.is_empty() && !about.contains('\n'), "{}: {about:?}", sub.get_name());
            // `  <name>  <summary>` fits a 100-column terminal.
            assert!(about.chars().count() <= 84, "{}: {} characters: {about}", sub.get_name(), about.len());
        }
    }

    #[test]
    fn examples_are_one_per_line() {
        for sub in visible() {
            let name = sub.get_name().to_owned();
            let after = sub.get_after_help().map(ToString::to_string).unwrap_or_default();
            let mut lines = after.lines();
            assert_eq!(lines.next(), Some("Examples:"), "{name}");
            let examples: Vec<&str> = lines.collect();
            assert!(!examples.is_empty(), "{name}: no example");
            for line in examples {
                assert!(line.starts_with("  ") && line.contains(&format!(" {name}")), "{name}: {line:?}");
                assert_eq!(line.matches("blog-agent ").count(), 1, "{name}: two examples on one line: {line:?}");
            }
            let long = sub.get_long_about().map(ToString::to_string).unwrap_or_default();
            assert!(!long.contains("Example:"), "{name}: an example left in the description");
        }
    }

    #[test]
    fn usage_shows_required_flags() {
        for sub in visible() {
            let name = sub.get_name().to_owned();
            let usage = sub.clone().render_usage().to_string();
            if ENV_REQUIRED.contains(&name.as_str()) {
                assert!(usage.contains("--env <NAME>"), "{name}: {usage}");
            }
            for arg in sub.get_arguments().filter(|a| a.is_required_set() && a.get_long().is_some()) {
                let flag = format!("--{}", arg.get_long().unwrap());
                assert!(usage.contains(&flag), "{name}: {usage} lacks {flag}");
            }
        }
    }

    #[test]
    fn env_is_refused_where_it_would_be_ignored() {
        for name in ENV_REFUSED {
            let mut args = vec!["blog-agent", "--config", "/nonexistent/config.toml", "--env", "staging", name];
            if name == "promote" {
                args.extend(["3f2a9c1", "--from", "staging", "--to", "production"]);
            }
            let cli = Cli::try_parse_from(&args).unwrap();
            let failure = match &cli.command {
                Command::Pause(a) => pause::pause(&cli, a).unwrap_err(),
                Command::Resume => pause::resume(&cli).unwrap_err(),
                Command::Promote(a) => {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    rt.block_on(publish::promote(&cli, a)).unwrap_err()
                }
                other => panic!("{other:?}"),
            };
            // Refused before the configuration is read: not exit 78 for the missing file.
            assert_eq!(failure.code, exit::USAGE, "{name}: {}", failure.message);
            assert!(failure.message.contains(&format!("{name} does not take --env")), "{}", failure.message);
            let sub = visible().into_iter().find(|s| s.get_name() == name).unwrap();
            let long = sub.get_long_about().map(ToString::to_string).unwrap_or_default();
            assert!(long.contains("`--env` is refused"), "{name}'s help does not say so: {long}");
        }
    }
}
