//! `blog-agent status`: read-only report, a table on a terminal or JSON on stdout.
//!
//! Reads what [`crate::host_status::gather`] reads (the release object and its halt through
//! one S3 client, Docker, the state directory). Writes nothing. Decides the exit code only.

use clap::Args;

use super::{exit, Cli, Failure};
use crate::outside::docker::Engine;
use crate::outside::halts::HaltMarkers;
use crate::outside::imds::Imds;
use crate::outside::release::S3Releases;
use crate::outside::s3::S3Client;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the stable JSON object (docs/status.md) instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Exit 0 when converged (running what the host is meant to run: S3's version, or the pinned or
/// held one while paused), 1 otherwise, so scripts can use it as a check too.
pub async fn run(cli: &Cli, args: &StatusArgs) -> Result<(), Failure> {
    let settings = super::load_settings(cli)?;
    super::check_env_flag(cli, &settings)?;
    let (engine, engine_error) = match Engine::connect().await {
        Ok(e) => (Some(e), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let aws = crate::outside::aws::Aws::load(&settings.image.repository.registry).await;
    let s3 = S3Client::with_aws(&aws);
    let releases = S3Releases::new(&s3);
    let halts = HaltMarkers::new(&s3, settings.release.bucket.clone());
    let instance_id = async { Imds::new().instance_id().await.ok() };
    let status = crate::host_status::gather(
        &settings,
        cli.environment.as_deref(),
        &Imds::new(),
        &releases,
        &halts,
        instance_id,
        engine.as_ref(),
        engine_error,
    )
    .await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&status).expect("status serializes"));
    } else {
        print!("{}", crate::host_status::render_text(&status));
    }
    if status.converged {
        Ok(())
    } else {
        let message = match &status.state_error {
            Some(_) => "not converged as far as this user can tell (the state is unreadable; see above)",
            None => "not converged (see above)",
        };
        Err(Failure { code: exit::FAILED, message: message.into() })
    }
}
