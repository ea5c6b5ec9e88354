//! One reconcile pass (`blog-agent sync`): environment -> lock -> the verified desired release
//! and its halt ([`crate::pass::desired`]) -> observe -> decide -> execute (see
//! [`crate::pass`]). A manual sync does not wait for this host's rollout wave: it deploys
//! now, and says so when the host would have waited. Everything that can be refused
//! (environment, a pin that is not a verified release) is checked before the lock is taken or
//! Docker is touched, so bad input changes nothing.

use std::collections::HashMap;

use std::time::Duration;

use serde::Serialize;

use crate::config::Settings;
use crate::environment::{self, Environment};
use crate::fleet::rollout::{self, Gate};
use crate::lock;
use crate::outside::imds::TagSource;
use crate::outside::registry::CredentialSource;
use crate::outside::release::ReleaseSource;
use crate::pass::decide::{self, Wanted, Why};
use crate::pass::desired::{self, release_location, Accepted, Catalog, HaltRead, Trust};
use crate::pass::execute::{self, FleetInputs, Options};
use crate::pass::named::Known;
use crate::pass::plan::Plan;
use crate::pass::{Action, PassError, Services};
use crate::runtime::shutdown::Shutdown;
use crate::sha::Sha;
use crate::spec::ContainerSpec;
use crate::state::{now_unix, Pause};

/// What the operator asked for on the command line.
#[derive(Debug, Clone, Default)]
pub struct SyncRequest {
    /// `--env`: overrides config and tag.
    pub environment: Option<String>,
    /// `--sha`, as typed (a full SHA, or a unique prefix of one the release object's history
    /// holds; [`crate::pass::named`]): deploys it instead of S3's release, and pauses automatic
    /// updates so `run` does not undo it.
    pub sha: Option<Sha>,
    /// `--dry-run`: plan only; take no lock, change nothing.
    pub dry_run: bool,
    /// Who is asking, recorded in the pause `--sha` creates.
    pub operator: String,
}

/// The result of a converged pass, printed by `sync` (as JSON with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    pub environment: String,
    pub environment_source: String,
    pub sha: String,
    pub image: String,
    pub container: String,
    pub container_id: String,
    pub action: Action,
    /// Set when automatic updates are paused: what that changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<String>,
    /// `--dry-run`: the steps a real run would take.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plan: Option<Vec<String>>,
    /// Set when `run` would still wait for this host's rollout wave: the wait this sync skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    /// Set when S3's release is halted for the environment: what that changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
    /// Set when S3's release is refused here (unsigned, a bad signature, a replay): why, and
    /// what stays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// Runs one pass. A `--sha` pin that is not applied (the image cannot be pulled, the pass
/// fails or is interrupted) leaves the pause as it was before: a mistyped SHA must not leave
/// the host pinned to a release that does not exist.
pub async fn sync_once<T: TagSource, R: ReleaseSource, C: CredentialSource>(
    settings: &Settings,
    request: &SyncRequest,
    services: &Services<T, R, C>,
    shutdown: &Shutdown,
) -> Result<SyncReport, PassError> {
    let dir = &settings.agent.state_dir;
    let before = match (&request.sha, request.dry_run) {
        (Some(_), false) => Some(Pause::load(dir)),
        _ => None,
    };
    let result = sync_pass(settings, request, services, shutdown).await;
    if let (Some(before), Err(e), Some(pinned)) = (before, &result, &request.sha) {
        let restored = match &before {
            Some(pause) => pause.save(dir).map(drop),
            None => Pause::clear(dir).map(drop),
        };
        match restored {
            Ok(()) => {
                tracing::warn!(sha = %pinned, "the pin to {} was not applied ({e}); automatic updates are as they were before", pinned.short())
            }
            Err(err) => {
                tracing::error!(sha = %pinned, "the pin to {} was not applied, and the pause could not be put back: {err}", pinned.short())
            }
        }
    }
    result
}

async fn sync_pass<T: TagSource, R: ReleaseSource, C: CredentialSource>(
    settings: &Settings,
    request: &SyncRequest,
    services: &Services<T, R, C>,
    shutdown: &Shutdown,
) -> Result<SyncReport, PassError> {
    let env: Environment =
        shutdown.race(environment::resolve(request.environment.as_deref(), settings, &services.tags)).await??;
    let dir = &settings.agent.state_dir;
    let trust = Trust::new(settings, &env.name);
    let halts = services.halts.in_bucket(&settings.release.bucket);
    // A pin must name a verified release by its full SHA: resolved and checked before anything
    // is written.
    let (pinned, pin_catalog) = match &request.sha {
        Some(typed) => {
            let (pinned, catalog) = pin_catalog(settings, services, &env.name, typed, shutdown).await?;
            (Some(pinned), Some(catalog))
        }
        None => (None, None),
    };
    if let (Some(pinned), Some(catalog), false) = (&pinned, &pin_catalog, request.dry_run) {
        // Before the lock: a `run` waiting for it must already see the pause when it gets it.
        let pause = Pause {
            by: request.operator.clone(),
            reason: Some(format!("pinned to {} by blog-agent sync --sha", pinned.short())),
            at: now_unix(),
            pinned_sha: Some(pinned.to_string()),
            pinned_digest: catalog.digest(pinned).map(str::to_owned),
        };
        pause.save(dir).map_err(|e| PassError::State(e.to_string()))?;
        tracing::warn!(sha = %pinned, "automatic updates paused; `blog-agent resume` follows S3 again");
    }
    let _lock = if request.dry_run {
        None
    } else {
        Some(shutdown.race(lock::acquire(dir, settings.agent.lock_timeout)).await??)
    };
    // Read S3 only now: after waiting for the lock, the object may have moved on.
    let (wanted, desired, halt) = match (&pinned, pin_catalog) {
        (Some(sha), Some(catalog)) => (Wanted::Operator(sha.clone()), Err(catalog), None),
        _ => {
            let read = desired::read_once(&services.releases, &halts, settings, &env.name);
            let (desired, halt) = shutdown.race(read).await??;
            if let (Some(verified), false) = (desired.published.verified(), request.dry_run) {
                if let Err(e) = Accepted::record(dir, trust, verified) {
                    tracing::warn!("cannot record the accepted release: {e}");
                }
            }
            let halt = match halt {
                HaltRead::Halted(marker) => Some(marker),
                HaltRead::Unreadable(e) => {
                    let sha = desired.published.sha();
                    tracing::warn!(sha = %sha, "cannot read the halt of {}: {e}; going on as if it were not halted", sha.short());
                    None
                }
                HaltRead::Clear | HaltRead::NotNeeded => None,
            };
            (Wanted::from(&desired), Ok(desired), halt)
        }
    };
    let local = crate::state::State::load(dir);
    let pause = Pause::load(dir);
    let catalog = match &desired {
        Ok(desired) => desired.catalog(trust, local.last_good_in(&env.name), pause.as_ref()),
        Err(catalog) => catalog.clone(),
    };
    let published_at = match &desired {
        Ok(d) => d.published.verified().and_then(|v| v.published_at),
        Err(_) => None,
    };
    let no_quarantine = HashMap::new();
    let fleet = FleetInputs { rollout: None, halted: halt.as_ref(), halt_unconfirmed: false };
    let (snapshot, decision) =
        execute::observe_and_decide(settings, &services.engine, &env.name, &wanted, &no_quarantine, fleet, &catalog)
            .await?;
    let rollout = match (&wanted, published_at) {
        (Wanted::Published(sha), Some(at)) => skipped_wave(settings, sha, at, snapshot.main_sha(), shutdown).await?,
        _ => None,
    };
    if let Some(note) = &rollout {
        tracing::info!("{note}");
    }
    if let Why::Refused { .. } = &decision.why {
        tracing::warn!(env = %env.name, "{}", decision.why);
    }
    let Some(sha) = decision.target.clone() else { return Err(PassError::NothingToRun(decision.why)) };
    let span = tracing::info_span!("sync", env = %env.name, sha = %sha);
    let _entered = span.enter();
    tracing::info!(env_source = %env.source, "desired release {sha} for {} (environment from {})", env.name, env.source);
    let (decision, applied) = if request.dry_run {
        (decision, None)
    } else {
        let redecide = |snapshot: &crate::pass::snapshot::Snapshot| {
            decide::decide(&decide::Inputs {
                settings,
                environment: &env.name,
                wanted: &wanted,
                snapshot,
                quarantine: &no_quarantine,
                now: tokio::time::Instant::now(),
                rollout: None,
                halted: halt.as_ref(),
                halt_unconfirmed: false,
                catalog: &catalog,
            })
        };
        let options = Options { probe_converged: true, rescue: false, catalog: Some(&catalog) };
        let done =
            execute::execute_decision(settings, services, &env.name, snapshot, decision, redecide, shutdown, options)
                .await?;
        if let Some(applied) = &done.applied {
            bake_by_hand(settings, services, &env.name, applied, shutdown).await?;
        }
        (done.decision, done.applied)
    };
    let desired = ContainerSpec::new(settings, &env.name, &sha);
    let paused = match &decision.why {
        Why::Paused { .. } => {
            Some(format!("{}: staying on {}; `blog-agent resume` to follow S3", decision.why, sha.short()))
        }
        _ => None,
    };
    let halted = match &decision.why {
        Why::Halted { release, .. } => Some(format!(
            "{}: staying on {} (`blog-agent sync --sha {release}` deploys it anyway)",
            decision.why,
            sha.short()
        )),
        _ => None,
    };
    let refused = match &decision.why {
        Why::Refused { .. } => Some(format!("{}: staying on {}", decision.why, sha.short())),
        _ => None,
    };
    let (action, container_id, plan) = match applied {
        Some(applied) => (applied.action, applied.container_id, None),
        None => {
            let present =
                services.engine.image(&desired.image, &settings.image.repository.to_string()).await?.is_some();
            let steps = decide::describe(&decision, settings, &env.name, present);
            let action = match &decision.plan {
                Some(Plan::Deploy { reason, .. }) => Action::Deployed { reason: reason.to_string(), pulled: !present },
                Some(Plan::Restart { .. }) => Action::Restarted,
                _ => Action::Unchanged,
            };
            let id = match &decision.plan {
                Some(Plan::Restart { id }) => id.clone(),
                Some(Plan::Deploy { replace: Some(id), .. }) => id.clone(),
                _ => services.engine.container(&desired.name).await?.map(|c| c.id).unwrap_or_default(),
            };
            (action, id, Some(steps))
        }
    };
    Ok(SyncReport {
        environment: env.name.clone(),
        environment_source: env.source.to_string(),
        sha: sha.to_string(),
        image: desired.image.clone(),
        container: desired.name.clone(),
        container_id,
        action,
        paused,
        plan,
        rollout,
        halted,
        refused,
    })
}

/// A `sync` that cut over bakes before it returns, under its lock, as `run` does: the
/// previous container is retired after a clean bake, or takes the traffic back. Interrupted
/// (Ctrl-C), both containers stay and the next pass of `run` (or `sync`) ends the bake.
async fn bake_by_hand<T, R, C>(
    settings: &Settings,
    services: &Services<T, R, C>,
    environment: &str,
    applied: &super::Applied,
    shutdown: &Shutdown,
) -> Result<(), PassError> {
    use super::bake::{self, BakeRecord, Outcome};
    let Some(kept) = &applied.kept else { return Ok(()) };
    let record = BakeRecord::new(settings, &applied.container_id, &applied.sha, kept);
    record.save(&settings.agent.state_dir);
    eprintln!(
        "blog-agent: baking {} for {} ([health] bake) with {} kept to revert to; Ctrl-C leaves both containers",
        applied.sha.short(),
        humantime::format_duration(settings.health.bake),
        kept.name
    );
    let traffic = super::traffic::Traffic::of(settings, services.routes.as_ref());
    let watchers = bake::watchers(settings, &services.engine, &record.container_id);
    let outcome = bake::run(&services.engine, traffic, settings, &record, watchers, shutdown).await;
    // A bake by hand is evidence like the service's: the same record, under the same identity.
    // Its blame is the judgement's with nothing known of the release's history here.
    let blame = match &outcome {
        Outcome::Reverted { trip, .. } | Outcome::Unreverted { trip, .. } => {
            Some(crate::fleet::verdict::judge(&trip.failure(), &Default::default()).blame())
        }
        _ => None,
    };
    let instance_id = rollout::this_host().await.value;
    let halts = services.halts.in_bucket(&settings.release.bucket);
    let prefix = settings.halt_prefix(environment);
    bake::report_bake_outcome(&halts, &*services.caller, &prefix, environment, &instance_id, &outcome, blame).await;
    match outcome {
        Outcome::Baked { .. } => Ok(()),
        Outcome::Reverted { sha, trip, restored, .. } | Outcome::Unreverted { sha, trip, why: restored } => {
            Err(PassError::Reverted { sha, trip, restored })
        }
        Outcome::Interrupted => Err(crate::runtime::shutdown::Cancelled.into()),
    }
}

/// The full SHA an operator's `sync --sha` pins (`typed` resolved by
/// [`crate::pass::named`]), and the verified releases it may pin: the release object's
/// verified versions, and what this host recorded itself. With signatures required, a SHA
/// outside them is refused naming the ones that are signed; without, a full SHA goes as typed
/// (S3 is read for the digests it knows, and an unreadable S3 stops nothing).
async fn pin_catalog<T, R: ReleaseSource, C>(
    settings: &Settings,
    services: &Services<T, R, C>,
    environment: &str,
    typed: &Sha,
    shutdown: &Shutdown,
) -> Result<(Sha, Catalog), PassError> {
    let trust = Trust::new(settings, environment);
    let local = crate::state::State::load(&settings.agent.state_dir);
    // One read of the object and its history: the name is resolved against it, and the catalog
    // is built from it.
    let location = release_location(settings, environment);
    let known = shutdown.race(Known::read(&services.releases, environment, location)).await?;
    let pinned = known.resolve(typed.as_str())?;
    let read = shutdown.race(desired::read_verified(&known, settings, environment)).await?;
    let catalog = match read {
        Ok(mut desired) => {
            desired.ensure_history(&known, trust).await;
            desired.catalog(trust, local.last_good_in(environment), None)
        }
        Err(e) if trust.required() => {
            let location = known.location();
            tracing::warn!("cannot read {location}: {e}; only this host's own records can verify the pin");
            let mut catalog = Catalog::new(true);
            catalog.add_local(trust, local.last_good_in(environment), None);
            catalog
        }
        Err(_) => Catalog::open(),
    };
    if !catalog.allows(&pinned) {
        let signed = catalog.shas();
        return Err(PassError::Unverified { sha: pinned, environment: environment.to_owned(), signed });
    }
    Ok((pinned, catalog))
}

/// When `run` would still wait for this host's wave of `sha` (published at `published_at`):
/// the note that this sync deploys now instead. `None` with no spread, once the wave is open,
/// or when the host has nothing of ours to serve meanwhile (it would not wait either).
async fn skipped_wave(
    settings: &Settings,
    sha: &Sha,
    published_at: std::time::SystemTime,
    running: Option<&str>,
    shutdown: &Shutdown,
) -> Result<Option<String>, PassError> {
    let spread = settings.rollout.spread;
    if spread.is_zero() || running == Some(sha.as_str()) {
        return Ok(None);
    }
    let identity = shutdown.race(crate::outside::imds::Imds::new().instance_id()).await?.ok();
    let identity = rollout::resolve_identity(identity);
    let now = crate::runtime::clock::now();
    match rollout::gate(published_at, identity.seed(), spread, now, running.is_none()) {
        Gate::Now => Ok(None),
        Gate::Wait { until, remaining } => Ok(Some(format!(
            "rollout: this host's wave for {} opens at {} (in {}; seed {:.2} from its {}, spread {}); \
             a manual sync does not wait for it",
            sha.short(),
            humantime::format_rfc3339_seconds(until),
            humantime::format_duration(Duration::from_secs(remaining.as_secs())),
            identity.seed(),
            identity.source,
            humantime::format_duration(spread)
        ))),
    }
}
