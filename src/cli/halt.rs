//! `blog-agent halt SHA --reason TEXT` and `blog-agent unhalt SHA`: stop, or let go on, the
//! rollout of a release for this host's environment, fleet-wide (a marker in the release
//! bucket; see [`crate::fleet::halt`]).

use clap::Args;

use super::{exit, Cli, Failure};
use crate::environment::EnvironmentError;
use crate::fleet::halt::{HaltError, HaltMarkers, Marker};
use crate::fleet::rollout::resolve_identity;
use crate::outside::aws::Aws;
use crate::outside::imds::Imds;
use crate::outside::release::ObjectLocation;
use crate::sha::Sha;
use crate::state::now_unix;

/// A reason is a line or two for `status` and the journal, not a document.
const MAX_REASON_CHARS: usize = 1000;

#[derive(Debug, Args)]
pub struct HaltArgs {
    /// The release to halt (7 to 40 lowercase hex digits, as in the release file).
    #[arg(value_name = "SHA")]
    pub sha: String,
    /// Why, for every host's `status` and journal and for whoever runs `unhalt`.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
}

#[derive(Debug, Args)]
pub struct UnhaltArgs {
    /// The halted release to let go on.
    #[arg(value_name = "SHA")]
    pub sha: String,
}

/// Everything both commands need: validated input, the environment, where its markers live.
struct Target {
    sha: Sha,
    environment: String,
    prefix: String,
    markers: HaltMarkers,
    bucket: String,
}

impl Target {
    fn location(&self) -> ObjectLocation {
        ObjectLocation { bucket: self.bucket.clone(), key: format!("{}{}", self.prefix, self.sha) }
    }
}

/// Validates the SHA and `--env` before contacting anything, then resolves the environment
/// as every command does (`--env`, `[environment] name`, the instance tag).
async fn target(cli: &Cli, raw_sha: &str) -> Result<Target, Failure> {
    let settings = super::load_settings(cli)?;
    let sha = Sha::parse(raw_sha).map_err(|e| Failure { code: exit::USAGE, message: format!("SHA {e}") })?;
    super::check_env_flag(cli, &settings)?;
    let environment = crate::environment::resolve(cli.environment.as_deref(), &settings, &Imds::new())
        .await
        .map_err(|e: EnvironmentError| Failure {
            code: if e.is_usage() { exit::USAGE } else { exit::FAILED },
            message: e.to_string(),
        })?
        .name;
    // Config validation gives every allowed environment a release key.
    let release_key = settings.release_key(&environment).unwrap_or_default();
    let prefix = settings.rollout.halt_prefix_for(release_key, &environment);
    let aws = Aws::load(&settings.image.repository.registry).await;
    let bucket = settings.release.bucket.clone();
    let markers = HaltMarkers::with_aws(&aws, bucket.clone());
    Ok(Target { sha, environment, prefix, markers, bucket })
}

fn failed(e: HaltError) -> Failure {
    Failure { code: exit::FAILED, message: e.to_string() }
}

pub async fn halt(cli: &Cli, args: &HaltArgs) -> Result<(), Failure> {
    let reason = args.reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        let message =
            format!("--reason {}: say why in 1 to {MAX_REASON_CHARS} characters", crate::sha::safe_quote(&args.reason));
        return Err(Failure { code: exit::USAGE, message });
    }
    let target = target(cli, &args.sha).await?;
    let identity = resolve_identity(Imds::new().instance_id().await.ok());
    let marker = Marker {
        sha: target.sha.to_string(),
        environment: target.environment.clone(),
        instance_id: identity.value,
        reason: reason.to_owned(),
        at: now_unix(),
        rolled_back_to: None,
        by: Some(super::operator()),
    };
    let location = target.location();
    if target.markers.mark(&target.prefix, &marker).await.map_err(failed)? {
        eprintln!(
            "blog-agent: {} halted in {} ({location}): no host applies it until `blog-agent unhalt {}`",
            target.sha, target.environment, target.sha
        );
        return Ok(());
    }
    // Already halted: the first marker (often a failing host's, with its rollback target) is kept.
    match target.markers.get(&target.prefix, &target.sha).await.map_err(failed)? {
        Some(first) => eprintln!(
            "blog-agent: {} was already halted in {} ({location}) by {} at {}: {}; that marker is kept",
            target.sha,
            target.environment,
            first.by.as_deref().unwrap_or(&first.instance_id),
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(first.at)),
            first.reason
        ),
        None => eprintln!(
            "blog-agent: {} was already halted in {} ({location}); that marker is kept",
            target.sha, target.environment
        ),
    }
    Ok(())
}

pub async fn unhalt(cli: &Cli, args: &UnhaltArgs) -> Result<(), Failure> {
    let target = target(cli, &args.sha).await?;
    let location = target.location();
    if target.markers.clear(&target.prefix, &target.sha).await.map_err(failed)? {
        eprintln!(
            "blog-agent: {} unhalted in {} (removed {location}): hosts apply it again if S3 names it",
            target.sha, target.environment
        );
    } else {
        eprintln!("blog-agent: {} was not halted in {} (no {location})", target.sha, target.environment);
    }
    Ok(())
}
