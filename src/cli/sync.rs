//! `blog-agent sync`: one reconcile pass, then exit.

use clap::Args;

use super::{exit, Cli, Failure};
use crate::engine::Engine;
use crate::imds::Imds;
use crate::registry::Ecr;
use crate::release::S3Releases;
use crate::sha::Sha;
use crate::sync::{sync_once, Services, SyncError, SyncRequest};

#[derive(Debug, Args)]
pub struct SyncArgs {
    /// Deploy this SHA instead of the one in S3 (validated the same way).
    #[arg(long, value_name = "SHA")]
    pub sha: Option<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(cli: &Cli, args: &SyncArgs) -> Result<(), Failure> {
    let settings = super::load_settings(cli)?;
    let sha = match &args.sha {
        Some(raw) => Some(Sha::parse(raw).map_err(|e| Failure { code: exit::USAGE, message: format!("--sha {e}") })?),
        None => None,
    };
    super::check_env_flag(cli, &settings)?;
    let request = SyncRequest { environment: cli.environment.clone(), sha };
    let failed = |e: SyncError| {
        let code = match &e {
            SyncError::Environment(env) if env.is_usage() => exit::USAGE,
            _ => exit::FAILED,
        };
        let message = if e.is_cancelled() {
            "interrupted; whatever was serving before is still serving".to_owned()
        } else {
            e.to_string()
        };
        Failure { code, message }
    };
    let engine = Engine::connect().await.map_err(|e| failed(e.into()))?;
    let sdk = crate::aws::load().await;
    let services = Services { tags: Imds::new(), releases: S3Releases::new(&sdk), credentials: Ecr::new(&sdk), engine };
    let signals = crate::signals::install()
        .map_err(|e| Failure { code: exit::FAILED, message: format!("cannot install signal handlers: {e}") })?;
    let report = sync_once(&settings, &request, &services, &signals.shutdown).await.map_err(failed)?;
    if args.json {
        println!("{}", serde_json::to_string(&report).expect("report serializes"));
    } else {
        eprintln!("blog-agent: {} {} in {}: {}", report.container, report.sha, report.environment, report.action);
    }
    Ok(())
}
