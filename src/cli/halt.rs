//! `blog-agent halt SHA --reason TEXT` and `blog-agent unhalt SHA`: stop, or let go on, the
//! rollout of a release for this host's environment, fleet-wide (a marker in the release
//! bucket; see [`crate::fleet::halt`]).
//!
//! Reads: the environment (`--env`, the config, the instance tag), the release object's
//! history (for a default `--to`) and the halt marker, through one S3 client. Writes: the
//! marker (`halt`); removes it and the votes (`unhalt`). Decides: only whether its input is
//! valid.

use clap::Args;

use super::{exit, Cli, Failure};
use crate::environment::EnvironmentError;
use crate::fleet::halt::Marker;
use crate::fleet::rollout::resolve_identity;
use crate::outside::aws::Aws;
use crate::outside::halts::{HaltError, HaltMarkers};
use crate::outside::imds::Imds;
use crate::outside::release::{ObjectLocation, S3Releases};
use crate::outside::s3::S3Client;
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
    /// The release a host with nothing serving runs instead (the rollback target); without
    /// it, such a host falls back to its own last-known-good version.
    #[arg(long, value_name = "SHA")]
    pub to: Option<String>,
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
    releases: S3Releases,
    settings: crate::config::Settings,
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
    let prefix = settings.halt_prefix(&environment);
    // Config validation gives every allowed environment a release key.
    let aws = Aws::load(&settings.image.repository.registry).await;
    let bucket = settings.release.bucket.clone();
    let s3 = S3Client::with_aws(&aws);
    let markers = HaltMarkers::new(&s3, bucket.clone());
    let releases = S3Releases::new(&s3);
    Ok(Target { sha, environment, prefix, markers, bucket, releases, settings })
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
    let to = match &args.to {
        None => None,
        Some(raw) => match Sha::parse(raw) {
            Ok(to) if to.as_str() == args.sha => {
                let message = format!("--to {to}: the rollback target must be another release than the halted one");
                return Err(Failure { code: exit::USAGE, message });
            }
            Ok(to) => Some(to),
            Err(e) => return Err(Failure { code: exit::USAGE, message: format!("--to SHA {e}") }),
        },
    };
    let target = target(cli, &args.sha).await?;
    // Without --to: the release before it in the release object's history, so that a new
    // instance with nothing serving is not dark.
    let to = match to {
        Some(to) => Some(to),
        None => {
            let (releases, markers) = (&target.releases, &target.markers);
            let (settings, env) = (&target.settings, target.environment.as_str());
            match crate::pass::desired::rollback_target(releases, markers, settings, env, &target.sha).await {
                Ok(to) => to,
                Err(e) => {
                    eprintln!("blog-agent: no rollback target recorded ({e}); hosts look for one themselves");
                    None
                }
            }
        }
    };
    let identity = resolve_identity(Imds::new().instance_id().await.ok());
    let marker = Marker {
        sha: target.sha.to_string(),
        environment: target.environment.clone(),
        instance_id: identity.value,
        reason: reason.to_owned(),
        at: now_unix(),
        rolled_back_to: to.map(|t| t.to_string()),
        by: Some(crate::runtime::operator::operator()),
    };
    let location = target.location();
    if target.markers.mark(&target.prefix, &marker).await.map_err(failed)? {
        let fallback = match &marker.rolled_back_to {
            Some(to) => format!("a host with nothing serving runs {to}"),
            None => "no rollback target: a host with nothing serving runs its own last-known-good version, if any \
                     (name one with --to, or turn on the bucket's versioning for a history)"
                .to_owned(),
        };
        eprintln!(
            "blog-agent: {} halted in {} ({location}): no host applies it until `blog-agent unhalt {}`; {fallback}",
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
            crate::sha::safe_text(first.by.as_deref().unwrap_or(&first.instance_id)),
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(first.at)),
            crate::sha::safe_text(&first.reason)
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
    let marker = target.markers.clear(&target.prefix, &target.sha).await.map_err(failed)?;
    let votes = target.markers.clear_votes(&target.prefix, &target.sha).await.map_err(failed)?;
    let (sha, env) = (&target.sha, &target.environment);
    let votes_text = match votes {
        0 => String::new(),
        1 => " and 1 host's halt vote".to_owned(),
        n => format!(" and {n} hosts' halt votes"),
    };
    match marker {
        Some(false) if votes == 0 => eprintln!("blog-agent: {sha} was not halted in {env} (no {location}, no votes)"),
        Some(true) => eprintln!(
            "blog-agent: {sha} unhalted in {env} (removed {location}{votes_text}): hosts apply it again if S3 names it"
        ),
        Some(false) => eprintln!(
            "blog-agent: {sha} unhalted in {env} (removed{}): hosts apply it again if S3 names it",
            votes_text.trim_start_matches(" and")
        ),
        None => eprintln!(
            "blog-agent: {sha}: sent the removal of {location}{votes_text} in {env}; whether a marker was there \
             could not be read (403 to HEAD: the role lacks s3:GetObject on the halt prefix)"
        ),
    }
    Ok(())
}
