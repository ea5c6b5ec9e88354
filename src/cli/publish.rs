//! `blog-agent publish`, `releases`, `rollback` and `promote`: the CI half of the pipeline
//! ([`crate::pipeline`]), run by CI (or an operator) with the same config file and AWS
//! provider chain as the hosts.

use std::time::Duration;

use clap::Args;

use super::{exit, Cli, Failure};
use crate::pipeline::{Pipeline, PromoteRules, PublishError, Published};
use crate::sha::Sha;

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The release to publish: its image `<repository>:<SHA>` must be in ECR.
    #[arg(value_name = "SHA")]
    pub sha: String,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReleasesArgs {
    /// Print the history as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// Publish this release again instead of the one before the current (its SHA, or a unique
    /// prefix of 7+ digits of one in the history).
    #[arg(long, value_name = "SHA")]
    pub to: Option<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PromoteArgs {
    /// The release to promote (its SHA, or a unique prefix of 7+ digits of one in --from's
    /// history).
    #[arg(value_name = "SHA")]
    pub sha: String,
    /// The environment it was proven in.
    #[arg(long, value_name = "ENV")]
    pub from: String,
    /// The environment to publish it to.
    #[arg(long, value_name = "ENV")]
    pub to: String,
    /// How long it must have been published in --from first (e.g. 30m, 2h).
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = humantime::parse_duration)]
    pub soak: Duration,
    /// At least N hosts of --from must have finished a bake of it (their bake records).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub baked_by: u32,
    /// Promote it even though hosts of --from reverted it or voted against it.
    #[arg(long)]
    pub force: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

fn parse_sha(raw: &str, what: &str) -> Result<Sha, Failure> {
    Sha::parse(raw).map_err(|e| Failure { code: exit::USAGE, message: format!("{what} {e}") })
}

/// The environment a pipeline command acts on: `--env`, required (CI names it explicitly).
fn environment(cli: &Cli, settings: &crate::config::Settings, command: &str) -> Result<String, Failure> {
    super::check_env_flag(cli, settings)?;
    cli.environment.clone().ok_or_else(|| Failure {
        code: exit::USAGE,
        message: format!("{command} needs --env ENV (one of {})", settings.environment.allowed.join(", ")),
    })
}

fn allowed(settings: &crate::config::Settings, env: &str, flag: &str) -> Result<(), Failure> {
    if settings.environment.allowed.iter().any(|e| e == env) {
        return Ok(());
    }
    let message = format!(
        "{flag} {}: not an allowed environment (expected one of {})",
        crate::sha::safe_quote(env),
        settings.environment.allowed.join(", ")
    );
    Err(Failure { code: exit::USAGE, message })
}

fn failed(e: PublishError) -> Failure {
    Failure { code: exit::FAILED, message: e.to_string() }
}

fn report(done: &Published, json: bool) {
    if json {
        println!("{}", serde_json::to_string(done).expect("a report serializes"));
    }
    if done.unchanged {
        eprintln!(
            "blog-agent: {} ({}) is already the release of {} ({}); nothing was written",
            done.sha, done.digest, done.environment, done.location
        );
    } else {
        eprintln!(
            "blog-agent: published {} ({}) to {} ({}){}",
            done.sha,
            done.digest,
            done.environment,
            done.location,
            done.replaced.as_deref().map(|r| format!(", replacing {r}")).unwrap_or_default()
        );
    }
}

pub async fn publish(cli: &Cli, args: &PublishArgs) -> Result<(), Failure> {
    let settings = super::load_settings(cli)?;
    let sha = parse_sha(&args.sha, "SHA")?;
    let env = environment(cli, &settings, "publish")?;
    let pipeline = Pipeline::connect(settings).await;
    let done = pipeline.publish(&env, &sha, None).await.map_err(failed)?;
    report(&done, args.json);
    Ok(())
}

pub async fn releases(cli: &Cli, args: &ReleasesArgs) -> Result<(), Failure> {
    let settings = super::load_settings(cli)?;
    let env = environment(cli, &settings, "releases")?;
    let bucket = settings.release.bucket.clone();
    let pipeline = Pipeline::connect(settings).await;
    let history = pipeline.history(&env).await.map_err(failed)?;
    if args.json {
        println!("{}", serde_json::to_string(&history).expect("history serializes"));
    } else {
        println!("releases of {} ({}), newest first:", history.environment, history.location);
        for r in &history.releases {
            println!(
                "{} {}  {}  {}  {}{}  {}{}{}",
                if r.current { "*" } else { " " },
                r.sha,
                r.digest.as_deref().unwrap_or("(no digest: written by hand)"),
                r.published_at.as_deref().unwrap_or("?"),
                r.published_by.as_deref().unwrap_or("?"),
                r.pipeline.as_deref().map(|p| format!("  {p}")).unwrap_or_default(),
                evidence(r),
                if r.halted { "  HALTED" } else { "" },
                if r.verified { "" } else { "  UNSIGNED (hosts refuse it)" }
            );
        }
    }
    if history.versioning_off {
        eprintln!(
            "blog-agent: the bucket keeps no versions of {}: only the current release is known. Turn versioning on \
             for a history, rollback and promote: aws s3api put-bucket-versioning --bucket {bucket} \
             --versioning-configuration Status=Enabled",
            history.location
        );
    }
    Ok(())
}

/// `baked 3, reverted 1, votes 1`, or `baked ?` when the halt prefix cannot be listed.
fn evidence(r: &crate::pipeline::ReleaseEntry) -> String {
    match (r.baked, r.reverted, r.votes) {
        (Some(baked), Some(reverted), Some(votes)) => format!("baked {baked}, reverted {reverted}, votes {votes}"),
        _ => "baked ?, reverted ?, votes ? (cannot list the halt prefix)".to_owned(),
    }
}

pub async fn rollback(cli: &Cli, args: &RollbackArgs) -> Result<(), Failure> {
    let settings = super::load_settings(cli)?;
    let to = args.to.as_deref().map(|raw| parse_sha(raw, "--to")).transpose()?;
    let env = environment(cli, &settings, "rollback")?;
    let pipeline = Pipeline::connect(settings).await;
    let done = pipeline.rollback(&env, to.as_ref()).await.map_err(failed)?;
    report(&done, args.json);
    Ok(())
}

pub async fn promote(cli: &Cli, args: &PromoteArgs) -> Result<(), Failure> {
    super::refuse_env_flag(cli, "promote", "the environments named by --from and --to")?;
    let settings = super::load_settings(cli)?;
    let sha = parse_sha(&args.sha, "SHA")?;
    allowed(&settings, &args.from, "--from")?;
    allowed(&settings, &args.to, "--to")?;
    if args.from == args.to {
        return Err(Failure { code: exit::USAGE, message: format!("--from and --to are both {}", args.to) });
    }
    let pipeline = Pipeline::connect(settings).await;
    let rules = PromoteRules { soak: args.soak, force: args.force, baked_by: args.baked_by };
    let done = pipeline.promote(&sha, &args.from, &args.to, rules).await.map_err(failed)?;
    report(&done, args.json);
    Ok(())
}
