//! `blog-agent sync`: one reconcile pass, then exit.

use clap::Args;

use super::{exit, Cli, Failure};
use crate::outside::docker::Engine;
use crate::pass::once::{sync_once, SyncRequest};
use crate::pass::{PassError, Services};
use crate::sha::Sha;

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Deploy this SHA now instead of the one in S3 (validated the same way), and pause
    /// automatic updates so the service does not undo it. A unique prefix (7+ digits) of a
    /// release in the environment's history names that release.
    #[arg(long, value_name = "SHA")]
    pub sha: Option<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print what would be pulled, created, stopped and removed, and why; change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub async fn run(cli: &Cli, args: &SyncArgs) -> Result<(), Failure> {
    let settings = super::load_settings(cli)?;
    let sha = match &args.sha {
        Some(raw) => Some(Sha::parse(raw).map_err(|e| Failure { code: exit::USAGE, message: format!("--sha {e}") })?),
        None => None,
    };
    super::check_env_flag(cli, &settings)?;
    let request = SyncRequest {
        environment: cli.environment.clone(),
        sha,
        dry_run: args.dry_run,
        operator: crate::runtime::operator::operator(),
    };
    let failed = |e: PassError| {
        let code = match &e {
            PassError::Environment(env) if env.is_usage() => exit::USAGE,
            PassError::Name(name) if name.is_usage() => exit::USAGE,
            _ => exit::FAILED,
        };
        let message = if e.is_cancelled() {
            "interrupted; whatever was serving before is still serving".to_owned()
        } else {
            e.to_string()
        };
        Failure { code, message }
    };
    use std::io::IsTerminal;
    let show_progress = std::io::stderr().is_terminal() && !args.json;
    let engine = Engine::connect().await.map_err(|e| failed(e.into()))?.with_progress(show_progress);
    // The region is resolved on the first S3 or ECR call, and again while it is unknown.
    let services = Services::connect(&settings, engine).await;
    let signals = crate::runtime::signals::install()
        .map_err(|e| Failure { code: exit::FAILED, message: format!("cannot install signal handlers: {e}") })?;
    let result = sync_once(&settings, &request, &services, &signals.shutdown).await;
    if !args.dry_run {
        let error = result.as_ref().err().map(|e| e.to_string());
        crate::state::LastPass::record(&settings.agent.state_dir, error.as_deref());
    }
    let report = result.map_err(failed)?;
    // The release S3 names was refused: whatever serves is the newest verified one, and the
    // command says it did not do what S3 asks.
    let refused = report.refused.clone().map(|why| Failure { code: exit::FAILED, message: why });
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("report serializes"));
        return refused.map_or(Ok(()), Err);
    }
    if let Some(plan) = &report.plan {
        println!("dry run: {} {} in {} (nothing was changed)", report.container, report.sha, report.environment);
        for step in plan {
            println!("  - {step}");
        }
    } else {
        eprintln!("blog-agent: {} {} in {}: {}", report.container, report.sha, report.environment, report.action);
    }
    for note in [&report.paused, &report.halted, &report.rollout].into_iter().flatten() {
        eprintln!("blog-agent: {note}");
    }
    if args.sha.is_some() && !args.dry_run {
        eprintln!("blog-agent: automatic updates are now paused; run `blog-agent resume` to follow S3 again");
    }
    refused.map_or(Ok(()), Err)
}
