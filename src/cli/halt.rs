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
use crate::fleet::rollout::this_host;
use crate::outside::aws::Aws;
use crate::outside::halts::{HaltError, HaltMarkers};
use crate::outside::imds::Imds;
use crate::outside::release::{ObjectLocation, S3Releases};
use crate::outside::s3::S3Client;
use crate::pass::named::Known;
use crate::sha::Sha;
use crate::state::now_unix;

/// A reason is a line or two for `status` and the journal, not a document.
const MAX_REASON_CHARS: usize = 1000;

#[derive(Debug, Args)]
pub struct HaltArgs {
    /// The release to halt: its SHA, or a unique prefix (7+ hex digits) of one the
    /// environment's release history holds.
    #[arg(value_name = "SHA")]
    pub sha: String,
    /// Why, for every host's `status` and journal and for whoever runs `unhalt`.
    #[arg(long, value_name = "TEXT")]
    pub reason: String,
    /// The release a host with nothing serving runs instead (the rollback target). Without it,
    /// the rollback target is the newest verified release before the halted one, never the
    /// halted one.
    #[arg(long, value_name = "SHA")]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub struct UnhaltArgs {
    /// The halted release to let go on: its SHA, or a unique prefix (7+ hex digits) of one the
    /// environment's release history holds.
    #[arg(value_name = "SHA")]
    pub sha: String,
}

/// Everything both commands need: the environment, where its markers live, and one read of
/// its release object and history that SHAs are resolved against.
struct Target {
    environment: String,
    prefix: String,
    markers: HaltMarkers,
    bucket: String,
    known: Known,
    settings: crate::config::Settings,
}

impl Target {
    fn location(&self, sha: &Sha) -> ObjectLocation {
        ObjectLocation { bucket: self.bucket.clone(), key: format!("{}{sha}", self.prefix) }
    }

    /// The full SHA `typed` names here ([`crate::pass::named`]).
    fn resolve(&self, typed: &Sha, what: &str) -> Result<Sha, Failure> {
        self.known.resolve(typed.as_str()).map_err(|e| Failure {
            code: if e.is_usage() { exit::USAGE } else { exit::FAILED },
            message: format!("{what} {e}"),
        })
    }
}

fn parse_sha(raw: &str, what: &str) -> Result<Sha, Failure> {
    Sha::parse(raw).map_err(|e| Failure { code: exit::USAGE, message: format!("{what} {e}") })
}

/// Resolves the environment as every command does (`--env`, `[environment] name`, the
/// instance tag), after the caller validated its own arguments and `--env`, and reads the
/// release object and its history once.
async fn target(cli: &Cli, settings: crate::config::Settings) -> Result<Target, Failure> {
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
    let location = crate::pass::desired::release_location(&settings, &environment);
    let known = Known::read(&releases, &environment, location).await;
    Ok(Target { environment, prefix, markers, bucket, known, settings })
}

fn failed(e: HaltError) -> Failure {
    Failure { code: exit::FAILED, message: e.to_string() }
}

/// `halt`. A shorter SHA must name one release of the history: a marker under a prefix would
/// halt nothing, hosts look markers up by the full SHA S3 names. A full SHA that no version
/// of the release object names is halted as typed: an operator may stop a release before CI
/// publishes it (the bad commit is known while the pipeline still runs), and hosts honour the
/// marker the moment S3 names that SHA.
pub async fn halt(cli: &Cli, args: &HaltArgs) -> Result<(), Failure> {
    let reason = args.reason.trim();
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS {
        let message =
            format!("--reason {}: say why in 1 to {MAX_REASON_CHARS} characters", crate::sha::safe_quote(&args.reason));
        return Err(Failure { code: exit::USAGE, message });
    }
    let settings = super::load_settings(cli)?;
    let typed = parse_sha(&args.sha, "SHA")?;
    let typed_to = args.to.as_deref().map(|raw| parse_sha(raw, "--to SHA")).transpose()?;
    // Never the halted release itself: a host with nothing serving would deploy what was halted.
    let itself = |to: &Sha| Failure {
        code: exit::USAGE,
        message: format!("--to {to}: the rollback target must be another release than the halted one"),
    };
    if let Some(to) = typed_to.as_ref().filter(|to| **to == typed) {
        return Err(itself(to));
    }
    super::check_env_flag(cli, &settings)?;
    let target = target(cli, settings).await?;
    let sha = target.resolve(&typed, "SHA")?;
    let to = match &typed_to {
        Some(typed_to) => {
            let to = target.resolve(typed_to, "--to")?;
            if to == sha {
                return Err(itself(&to));
            }
            Some(to)
        }
        None => {
            let (known, markers) = (&target.known, &target.markers);
            let (settings, env) = (&target.settings, target.environment.as_str());
            match crate::pass::desired::rollback_target(known, markers, settings, env, &sha).await {
                Ok(to) => to,
                Err(e) => {
                    eprintln!("blog-agent: no rollback target recorded ({e}); hosts look for one themselves");
                    None
                }
            }
        }
    };
    let identity = this_host().await;
    let marker = Marker {
        sha: sha.to_string(),
        environment: target.environment.clone(),
        instance_id: identity.value,
        reason: reason.to_owned(),
        at: now_unix(),
        rolled_back_to: to.map(|t| t.to_string()),
        by: Some(crate::runtime::operator::operator()),
    };
    let location = target.location(&sha);
    if target.markers.mark(&target.prefix, &marker).await.map_err(failed)? {
        let fallback = match &marker.rolled_back_to {
            Some(to) => format!("a host with nothing serving runs {to}"),
            None => {
                let versions = match target.known.versions() {
                    Ok([]) => ", or turn on the bucket's versioning for a history",
                    _ => "",
                };
                format!(
                    "no rollback target: no verified release before it in the history of {} that is not halted; a \
                     host with nothing serving runs its own last-known-good version, if any (name one with --to{versions})",
                    target.known.location()
                )
            }
        };
        eprintln!(
            "blog-agent: {sha} halted in {} ({location}): no host applies it until `blog-agent unhalt {sha}`; {fallback}",
            target.environment
        );
        return Ok(());
    }
    // Already halted: the first marker (often a failing host's, with its rollback target) is kept.
    match target.markers.get(&target.prefix, &sha).await.map_err(failed)? {
        Some(first) => eprintln!(
            "blog-agent: {sha} was already halted in {} ({location}) by {} at {}: {}; that marker is kept",
            target.environment,
            first.who(),
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(first.at)),
            crate::sha::safe_text(&first.reason)
        ),
        None => eprintln!(
            "blog-agent: {sha} was already halted in {} ({location}); that marker is kept",
            target.environment
        ),
    }
    Ok(())
}

/// `unhalt`. A full SHA goes as typed, in the history or not: a marker can outlive the history
/// (a halt placed before a publish that never came, a release older than the versions read),
/// and removing it must stay possible.
pub async fn unhalt(cli: &Cli, args: &UnhaltArgs) -> Result<(), Failure> {
    let settings = super::load_settings(cli)?;
    let typed = parse_sha(&args.sha, "SHA")?;
    super::check_env_flag(cli, &settings)?;
    let target = target(cli, settings).await?;
    let sha = target.resolve(&typed, "SHA")?;
    let location = target.location(&sha);
    let marker = target.markers.clear(&target.prefix, &sha).await.map_err(failed)?;
    let votes = target.markers.clear_votes(&target.prefix, &sha).await.map_err(failed)?;
    let (sha, env) = (&sha, &target.environment);
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
