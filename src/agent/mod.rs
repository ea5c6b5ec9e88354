//! `blog-agent run`: the long-running reconcile loop.
//!
//! [`driver`] owns time (schedule, backoff, event debounce, watchdog, SIGHUP, shutdown);
//! [`Agent`] is one pass: environment (cached after the first success) -> desired SHA by
//! conditional GET (a 304 keeps the cached SHA; a local pass after a Docker event skips S3)
//! -> the published SHA's halt marker, when that can matter ([`fleet`]) -> lock -> observe
//! once -> crash-loop check -> [`decide`](crate::pass::decide) (with this host's rollout wave)
//! -> execute -> a release that failed here is halted fleet-wide -> metrics textfile.
//! [`phase`] is the loop's state as a type, from which `STATUS=` is derived; [`memory`] is what
//! it knows between passes; [`quarantine`] remembers bad releases. A cut-over that kept the
//! previous container starts a bake ([`crate::pass::bake`]) in a task of its own, which holds
//! the lock until it retires the previous container or reverts to it: while it runs, a pass
//! changes nothing (a bake is a state of the loop, `Phase::Baking`), and the pass after it
//! takes the outcome in (quarantine, judgement, vote). SIGTERM leaves both containers and
//! `bake.json`; the next start resumes the bake with the container it kept. Nothing here ever stops the serving container because a remote
//! service failed.

pub mod driver;
pub mod events;
pub mod fleet;
pub mod launch_gate;
pub mod memory;
pub mod phase;
pub mod quarantine;
pub mod rules_keeper;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{Settings, TrafficMode};
use crate::environment::{self, Environment};
use crate::fleet::verdict::{self, Failure, History, Verdict};
use crate::lock;
use crate::outside::docker::ContainerInfo;
use crate::outside::imds::TagSource;
use crate::outside::registry::CredentialSource;
use crate::outside::release::{Fetched, ReleaseSource};
use crate::pass::bake::{self, BakeRecord};
use crate::pass::decide::{self, Inputs, Wanted, Why};
use crate::pass::desired::{self, Accepted, Catalog, Desired, Published, Trust};
use crate::pass::execute::{self, Options};
use crate::pass::snapshot;
use crate::pass::{Action, PassError, Services};
use crate::runtime::shutdown::Shutdown;
use crate::runtime::signals::Signals;
use crate::runtime::systemd::Notifier;
use crate::sha::Sha;
use crate::state::LastPass;
use driver::{PassKind, Reconciler, Wakeups};
use fleet::Fleet;
use launch_gate::{LaunchGate, Stage};
use memory::{Baking, Failed, Memory};
use phase::{Phase, Problem};
use quarantine::Cause;

/// Slack on top of the sum of a pass's own bounds before it counts as hung.
const PASS_SLACK: Duration = Duration::from_secs(180);

/// What a pass leaves on the host.
enum Outcome {
    /// What serves afterwards, and the problem to report (if any).
    Served { serving: Option<Sha>, problem: Option<Problem> },
    /// A warm-pool instance: the release's image is on disk and nothing was started.
    Warmed { image: String },
    /// A bake is in progress: nothing else is changed until it ends.
    Baking(BakeRecord),
}

/// One `run` loop: its settings, the services it talks to, its tasks, and its [`Memory`].
pub struct Agent<T, R, C> {
    settings: Settings,
    config_path: PathBuf,
    env_flag: Option<String>,
    services: Services<T, R, C>,
    environment: Option<Environment>,
    phase: Phase,
    triggers: mpsc::Sender<&'static str>,
    events: Option<JoinHandle<()>>,
    rules: Option<JoinHandle<()>>,
    /// The chains of a `[traffic] chains` changed by SIGHUP, removed after the next pass.
    retired_routes: Option<Arc<dyn crate::pass::switch::Routes>>,
    /// Identity and seed, halt knowledge, metrics.
    fleet: Fleet,
    /// The Auto Scaling launch hook this host completes once it serves.
    launch: LaunchGate,
    /// The `[container] name` before a reload changed it: the container under it is renamed
    /// at the next pass, not orphaned (in publish mode it would keep the host ports).
    renamed_from: Option<String>,
    /// The last pass could not pull for lack of disk space: for the metrics and the launch gate.
    no_room: Option<crate::outside::disk::NoRoom>,
    /// What the loop knows between passes.
    memory: Memory,
}

impl<T: TagSource, R: ReleaseSource, C: CredentialSource> Agent<T, R, C> {
    /// Runs until shutdown. Returns normally on SIGTERM/SIGINT: the blog container keeps running.
    pub async fn run(
        settings: Settings,
        config_path: PathBuf,
        env_flag: Option<String>,
        services: Services<T, R, C>,
        notifier: Notifier,
        signals: Signals,
    ) {
        let (triggers, trigger_rx) = mpsc::channel::<&'static str>(1);
        let activity = crate::outside::pull_progress::PullActivity::default();
        let mut services = services;
        services.engine = services.engine.clone().with_pull_activity(activity.clone());
        let launch = LaunchGate::new(&settings, services.autoscaling.clone(), activity);
        let mut agent = Agent {
            settings,
            config_path,
            env_flag,
            services,
            environment: None,
            phase: Phase::Starting,
            triggers,
            events: None,
            rules: None,
            retired_routes: None,
            fleet: Fleet::start(),
            launch,
            renamed_from: None,
            no_room: None,
            memory: Memory::default(),
        };
        agent.watch_events();
        agent.watch_rules();
        let wake = Wakeups { triggers: trigger_rx, reload: signals.reload, shutdown: signals.shutdown };
        driver::drive(&mut agent, wake, &notifier).await;
        if let Some(baking) = agent.memory.bake.take() {
            // It saw the same shutdown: it leaves both containers and the record for the next
            // start to resume.
            let _ = baking.task.await;
        }
        for task in [agent.events.take(), agent.rules.take()].into_iter().flatten() {
            task.abort();
        }
        tracing::info!("stopped; the blog container keeps running");
    }

    fn watch_events(&mut self) {
        if let Some(old) = self.events.take() {
            old.abort();
        }
        let engine = self.services.engine.clone();
        self.events = Some(events::watch(engine, self.settings.container.name.clone(), self.triggers.clone()));
    }

    /// Switch mode: starts (or restarts, after a reload) the keeper of the traffic rules
    /// ([`rules_keeper`]), which repairs them within about two seconds on its own.
    fn watch_rules(&mut self) {
        if let Some(old) = self.rules.take() {
            old.abort();
        }
        if self.settings.traffic.mode != TrafficMode::Switch {
            return;
        }
        let (engine, routes) = (self.services.engine.clone(), self.services.routes.clone());
        self.rules = Some(rules_keeper::start(engine, routes, self.settings.clone()));
    }

    /// Switch mode, first pass: after a reboot the rules are gone (kernel state) while dockerd
    /// has already restarted the blog container. Point them at the proven container before
    /// anything that waits on the network (IMDS, S3) or the lock, so the site is back as soon
    /// as the agent runs. Only the proven one: after a crash mid-deploy `<name>` may be a new
    /// version nobody proved, with the proven one aside as `<name>-previous` (the pass's
    /// recovery then proves or undoes the new one).
    async fn restore_route(&self) {
        if self.settings.traffic.mode != TrafficMode::Switch {
            return;
        }
        let name = &self.settings.container.name;
        let engine = &self.services.engine;
        for candidate in [name.clone(), crate::pass::snapshot::aside(name, crate::pass::snapshot::PREVIOUS)] {
            let Ok(Some(c)) = engine.container(&candidate).await else { continue };
            if !(c.is_managed() && c.running && crate::pass::switch::is_proven(&self.settings, &c)) {
                continue;
            }
            let routes = self.services.routes.as_ref();
            let ports = &self.settings.container.ports;
            match crate::pass::switch::serve_from(routes, &self.settings, ports, &c).await {
                Ok(_) => tracing::debug!(container = %c.name, "traffic rules point at the proven container"),
                Err(e) => {
                    tracing::warn!(container = %c.name, "cannot point the traffic rules at the proven container: {e}")
                }
            }
            return;
        }
        tracing::info!(container = %name, "no proven container runs: the rules keeper sends no traffic to any container until one is proven");
    }

    /// After a reload renamed `[container] name`: the container of ours under the old name takes
    /// the new one (the name is not part of its spec, so it is converged as it is, and its
    /// traffic never stops), unless something already holds the new name. Call under the lock.
    async fn adopt_renamed(&mut self) {
        let Some(old) = self.renamed_from.take() else { return };
        let new = &self.settings.container.name;
        let engine = &self.services.engine;
        let (Ok(Some(c)), Ok(taken)) = (engine.container(&old).await, engine.container(new).await) else { return };
        if !c.is_managed() {
            return;
        }
        if let Some(taken) = taken {
            tracing::warn!(container = %old, "[container] name changed to {new}, but {} already holds that name: {old} is left as it is; remove it when the new one serves", taken.name);
            return;
        }
        match engine.rename(&c.id, new).await {
            Ok(()) => tracing::info!(container = %new, "[container] name changed: renamed {old} to {new}"),
            Err(e) => {
                tracing::warn!(container = %old, "[container] name changed, but renaming {old} to {new} failed: {e}")
            }
        }
    }

    /// The running container of ours under the configured name, as Docker has it now.
    async fn serving_container(&self) -> Option<ContainerInfo> {
        let main = self.services.engine.container(&self.settings.container.name).await.ok()??;
        (main.is_managed() && main.running).then_some(main)
    }

    /// One pass: what it leaves on the host (see [`Outcome`]).
    async fn try_pass(&mut self, kind: PassKind, shutdown: &Shutdown) -> Result<Outcome, PassError> {
        if self.phase == Phase::Starting {
            self.restore_route().await;
        }
        let env = match &self.environment {
            Some(env) => env.clone(),
            None => {
                let resolve = environment::resolve(self.env_flag.as_deref(), &self.settings, &self.services.tags);
                let env = shutdown.race(resolve).await??;
                tracing::info!(env = %env.name, source = %env.source, "environment {} (from {})", env.name, env.source);
                self.environment = Some(env.clone());
                env
            }
        };

        if let Some(record) = self.tick_bake(&env.name, shutdown).await? {
            return Ok(Outcome::Baking(record));
        }
        self.memory.last_decision = None;
        if self.launch.configured(&self.settings) {
            let identity = shutdown.race(self.fleet.identity()).await?.clone();
            shutdown.race(self.launch.prepare(&self.settings, &identity)).await?;
        }
        let mut problem = None;
        if kind == PassKind::Full {
            problem = self.read_release(&env, shutdown).await?;
        }
        let spread = self.settings.rollout.spread;
        let published = self.memory.desired.as_ref().and_then(|d| d.published.verified()).cloned();
        let (gate, halted, halt_unconfirmed) = match published {
            Some(published) => {
                let gate = shutdown.race(self.fleet.gate(spread, published.published_at)).await?;
                if kind == PassKind::Full {
                    let halts = self.services.halts.in_bucket(&self.settings.release.bucket);
                    let prefix = self.settings.halt_prefix(&env.name);
                    let running = self.phase.serving().and_then(|s| Sha::parse(s).ok());
                    let open = fleet::wave_open(gate.as_ref());
                    let halt_after = self.settings.rollout.halt_after;
                    let check = self.fleet.check_halt(
                        &halts,
                        &prefix,
                        &env.name,
                        halt_after,
                        &published.sha,
                        running.as_ref(),
                        open,
                    );
                    shutdown.race(check).await?;
                }
                // An open wave counts only after a fresh read of the halt (a canary may have
                // halted the release meanwhile): the decision holds what runs until then.
                let unconfirmed =
                    gate.is_some() && fleet::wave_open(gate.as_ref()) && !self.fleet.halt_confirmed(&published.sha);
                let mut halted = self.fleet.halt_of(&published.sha).cloned();
                if let Some(marker) = halted.as_mut() {
                    shutdown.race(self.resolve_rollback_target(&env.name, marker)).await?;
                }
                (gate, halted, unconfirmed)
            }
            None => (None, None, false),
        };
        let wanted = match &self.memory.desired {
            Some(desired) => Wanted::from(desired),
            None => Wanted::Unknown,
        };

        // Everything from here on decides what runs: under the lock, so a `sync --sha` or a
        // `pause` that happened meanwhile is seen.
        let lock =
            shutdown.race(lock::acquire(&self.settings.agent.state_dir, self.settings.agent.lock_timeout)).await??;
        self.adopt_renamed().await;
        let engine = &self.services.engine;
        let snapshot = snapshot::observe(engine, &self.settings).await?;
        self.memory.paused_by = snapshot.pause.as_ref().map(|p| p.by.clone());
        if let Some((sha, Cause::CrashLoop { restarts })) =
            self.memory.quarantine.note_container(snapshot.main.as_ref(), Instant::now())
        {
            let wait = self.memory.quarantine.remaining(&sha, Instant::now()).unwrap_or_default();
            let main = snapshot.main.as_ref();
            let failure = Failure::CrashLoop {
                restarts,
                exit_code: main.and_then(|c| c.exit_code),
                oom_killed: main.is_some_and(|c| c.oom_killed),
            };
            let verdict = verdict::judge(&failure, &self.history(&sha, None));
            tracing::warn!(
                env = %env.name, sha = %sha, container = %self.settings.container.name, restarts, verdict = %verdict.rule,
                "crash loop: Docker restarted the container {restarts} times; rolling back to the previous good version, next try in {}; {verdict}",
                humantime::format_duration(Duration::from_secs(wait.as_secs()))
            );
            self.judged(&sha, verdict);
        }
        let held = self.memory.quarantine.held(Instant::now());
        let (settings, environment) = (&self.settings, env.name.as_str());
        let trust = Trust::new(settings, environment);
        let (last_good, pause) = (snapshot.state.last_good_in(environment), snapshot.pause.as_ref());
        let catalog = Catalog::for_host(self.memory.desired.as_ref(), trust, last_good, pause);
        let decide_on = |snapshot: &snapshot::Snapshot| {
            decide::decide(&Inputs {
                settings,
                environment,
                wanted: &wanted,
                snapshot,
                quarantine: &held,
                now: Instant::now(),
                rollout: gate,
                halted: halted.as_ref(),
                halt_unconfirmed,
                catalog: &catalog,
            })
        };
        let decision = decide_on(&snapshot);
        self.memory.last_decision = Some(decision.why.clone());
        // Why the host runs something other than S3's release is logged when it starts.
        let why = std::mem::discriminant(&decision.why);
        if self.memory.last_why != Some(why) && !matches!(decision.why, Why::Published | Why::Operator) {
            let target = decision.target.as_ref().map(Sha::short).unwrap_or("nothing");
            tracing::info!(env = %env.name, "{}: staying on {target}", decision.why);
        }
        self.memory.last_why = Some(why);
        match &decision.why {
            Why::Quarantined { release, .. } => {
                problem = Some(Problem::quarantined(release.as_str(), decision.why.to_string()))
            }
            Why::Refused { release, .. } | Why::Unverified { release } => {
                problem = Some(Problem::refused(release.as_str(), decision.why.to_string()))
            }
            _ => {}
        }
        let Some(target) = decision.target.clone() else {
            return match problem {
                Some(problem) => Ok(Outcome::Served {
                    serving: snapshot.serving_sha().and_then(|s| Sha::parse(s).ok()),
                    problem: Some(problem),
                }),
                None => Err(PassError::NothingToRun(decision.why)),
            };
        };
        if self.launch.holds_blog_back().await {
            return self.warm_up(environment, &target, catalog.digest(&target), shutdown).await;
        }
        let options = Options { probe_converged: false, rescue: true, catalog: Some(&catalog) };
        let served_before = snapshot.serving_sha().and_then(|s| Sha::parse(s).ok());
        let result = execute::execute_decision(
            settings,
            &self.services,
            environment,
            snapshot,
            decision,
            decide_on,
            shutdown,
            options,
        )
        .await;
        if let Ok(done) = &result {
            self.memory.last_decision = Some(done.decision.why.clone());
        }
        match result {
            Ok(done) => {
                if let Some(applied) = &done.applied {
                    if matches!(applied.action, Action::Deployed { .. }) {
                        self.fleet.metrics.record_deploy(true);
                    }
                    if let Some(kept) = &applied.kept {
                        let record = BakeRecord::new(settings, &applied.container_id, &applied.sha, kept);
                        self.start_bake(record.clone(), lock, served_before, environment, shutdown);
                        if Some(&applied.sha) == done.decision.target.as_ref() {
                            self.memory.quarantine.record_success(&applied.sha);
                        }
                        tracing::info!(env = %env.name, sha = %applied.sha, container = %self.settings.container.name, "{}", applied.action);
                        return Ok(Outcome::Baking(record));
                    }
                    if applied.action != Action::Unchanged {
                        tracing::info!(env = %env.name, sha = %applied.sha, container = %settings.container.name, "{}", applied.action);
                    }
                    if Some(&applied.sha) == done.decision.target.as_ref() {
                        self.memory.quarantine.record_success(&applied.sha);
                    }
                }
                if let Some(failure) = &done.rescued_from {
                    self.count_failure(&target, served_before.as_ref(), failure);
                    problem = Some(Problem::from(failure));
                }
                Ok(Outcome::Served { serving: done.applied.map(|a| a.sha), problem })
            }
            Err(e) => {
                // A failed proof of what an interrupted deploy left is that release's failure.
                let (sha, before) = e.interrupted().unwrap_or((&target, served_before.as_ref()));
                self.count_failure(sha, before, &e);
                Err(e)
            }
        }
    }

    /// The bake step of a pass. While a bake runs the pass changes nothing (its task holds the
    /// lock, and watches the new version on its own); once it has ended, its outcome is taken
    /// in (quarantine, judgement, the vote at the end of this pass) and the pass goes on. At
    /// the first pass, a bake an earlier run left (`bake.json`) is resumed with the container
    /// it kept, for the time it had left.
    async fn tick_bake(&mut self, environment: &str, shutdown: &Shutdown) -> Result<Option<BakeRecord>, PassError> {
        if self.phase == Phase::Starting && self.memory.bake.is_none() {
            self.resume_bake(environment, shutdown).await?;
        }
        let Some(baking) = &self.memory.bake else { return Ok(None) };
        if !baking.task.is_finished() {
            return Ok(Some(baking.record.clone()));
        }
        let Baking { record, served_before, environment, task } = self.memory.bake.take().expect("checked above");
        let outcome = match task.await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(sha = %record.sha, "the bake's task failed ({e}); the pass handles what it left");
                bake::Outcome::Interrupted
            }
        };
        self.bake_ended(&environment, served_before.as_ref(), &outcome).await;
        Ok(None)
    }

    /// Watches `record`'s bake in its own task, which holds `lock` until it has retired the
    /// previous container or reverted to it, then wakes the loop.
    fn start_bake(
        &mut self,
        record: BakeRecord,
        lock: lock::ReconcileLock,
        served_before: Option<Sha>,
        environment: &str,
        shutdown: &Shutdown,
    ) {
        record.save(&self.settings.agent.state_dir);
        let (engine, routes, settings) =
            (self.services.engine.clone(), self.services.routes.clone(), self.settings.clone());
        let (triggers, shutdown, watched) = (self.triggers.clone(), shutdown.clone(), record.clone());
        let task = tokio::spawn(async move {
            let traffic = crate::pass::traffic::Traffic::of(&settings, routes.as_ref());
            let watchers = bake::watchers(&settings, &engine, &watched.container_id);
            let outcome = bake::run(&engine, traffic, &settings, &watched, watchers, &shutdown).await;
            drop(lock);
            // A full channel already holds a wake-up: the pass it runs takes the outcome in.
            let _ = triggers.try_send("bake ended");
            outcome
        });
        self.memory.bake = Some(Baking { record, served_before, environment: environment.to_owned(), task });
    }

    /// Resumes the bake `bake.json` records when its two containers are still there: the new
    /// one serving under the name, the kept one as `-previous`. Anything else ends it: the
    /// pass's recovery proves what is under the name and retires or restores `-previous`.
    async fn resume_bake(&mut self, environment: &str, shutdown: &Shutdown) -> Result<(), PassError> {
        let dir = self.settings.agent.state_dir.clone();
        let Some(record) = BakeRecord::load(&dir) else { return Ok(()) };
        let lock = shutdown.race(lock::acquire(&dir, self.settings.agent.lock_timeout)).await??;
        let name = &self.settings.container.name;
        let engine = &self.services.engine;
        let main = engine.container(name).await?;
        let previous = engine.container(&snapshot::aside(name, snapshot::PREVIOUS)).await?;
        let serving = main.as_ref().is_some_and(|c| c.id == record.container_id && c.is_managed() && c.running);
        let kept = previous.as_ref().is_some_and(|c| c.id == record.previous_id && c.is_managed());
        if !(serving && kept) {
            tracing::info!(sha = %record.sha, "the bake of {} an earlier run left cannot go on (its containers changed); the pass takes care of what is left", record.short());
            BakeRecord::clear(&dir);
            return Ok(());
        }
        let left = record.remaining(crate::state::now_unix());
        tracing::info!(sha = %record.sha, "resuming the bake of {} an earlier run left, {} to go, with {name}-previous kept for it", record.short(), humantime::format_duration(left));
        let served_before = record.previous_sha.as_deref().and_then(|s| Sha::parse(s).ok());
        self.start_bake(record, lock, served_before, environment, shutdown);
        Ok(())
    }

    /// Takes in how a bake ended: a revert holds the release back here at once (the release
    /// object still names it) and is judged; the release's fault becomes a vote at the end of
    /// this pass.
    async fn bake_ended(&mut self, environment: &str, served_before: Option<&Sha>, outcome: &bake::Outcome) {
        // A revert is judged once: the blame goes into the bake record, the verdict to the vote.
        let verdict = match outcome {
            bake::Outcome::Interrupted => return,
            bake::Outcome::Baked { .. } => None,
            bake::Outcome::Reverted { sha, trip, .. } | bake::Outcome::Unreverted { sha, trip, .. } => {
                Some(verdict::judge(&trip.failure(), &self.history(sha, served_before)))
            }
        };
        let halts = self.services.halts.in_bucket(&self.settings.release.bucket);
        let prefix = self.settings.halt_prefix(environment);
        let instance_id = self.fleet.identity().await.value.clone();
        self.fleet.metrics.add_s3_request();
        let blame = verdict.as_ref().map(|v| v.blame());
        bake::report_bake_outcome(&halts, &*self.services.caller, &prefix, environment, &instance_id, outcome, blame)
            .await;
        match (outcome, verdict) {
            (bake::Outcome::Baked { sha }, _) => {
                self.fleet.metrics.record_bake(true);
                self.memory.quarantine.record_success(sha);
            }
            (
                bake::Outcome::Reverted { sha, trip, .. } | bake::Outcome::Unreverted { sha, trip, .. },
                Some(verdict),
            ) => {
                self.fleet.metrics.record_bake(false);
                self.memory.quarantine.record_revert(sha, Instant::now());
                let wait = self.memory.quarantine.remaining(sha, Instant::now()).unwrap_or_default();
                tracing::warn!(
                    env = %environment, sha = %sha, verdict = %verdict.rule,
                    "{} tripped its bake ({trip}); held back here for {}; {verdict}",
                    sha.short(), humantime::format_duration(Duration::from_secs(wait.as_secs()))
                );
                self.judged(sha, verdict);
            }
            _ => {}
        }
    }

    /// A warm-pool instance's pass: the target's image on disk, nothing started or removed.
    async fn warm_up(
        &self,
        environment: &str,
        sha: &Sha,
        digest: Option<&str>,
        shutdown: &Shutdown,
    ) -> Result<Outcome, PassError> {
        let spec = crate::spec::ContainerSpec::new(&self.settings, environment, sha);
        let (engine, credentials) = (&self.services.engine, &self.services.credentials);
        let (_, pulled) =
            crate::pass::deploy::ensure_image(engine, &self.settings, &spec, digest, credentials, shutdown)
                .await
                .map_err(PassError::Deploy)?;
        if pulled {
            tracing::info!(env = environment, sha = %sha, "warm pool: pulled {} without starting the blog", spec.image);
            // A warm instance can sit in the pool through many releases: prune as a deploy
            // does, keeping the release it would start.
            crate::pass::deploy::prune_images(&self.services.engine, &self.settings, Some(sha.as_str())).await;
        }
        Ok(Outcome::Warmed { image: spec.image })
    }

    /// Fills in the rollback target of the published release's halt (what a host with nothing
    /// serving runs): a verified release, resolved once per halted SHA
    /// ([`desired::resolve_rollback_target`]); a resolution that failed is tried again at the
    /// next pass.
    async fn resolve_rollback_target(&mut self, environment: &str, marker: &mut crate::fleet::halt::Marker) {
        if let Some((sha, target)) = &self.memory.rollback_target {
            if sha.as_str() == marker.sha {
                marker.rolled_back_to = target.clone();
                return;
            }
        }
        let Some(desired) = self.memory.desired.as_mut() else { return };
        self.fleet.metrics.add_s3_request();
        let halts = self.services.halts.in_bucket(&self.settings.release.bucket);
        let releases = &self.services.releases;
        let resolved =
            desired::resolve_rollback_target(desired, releases, &halts, &self.settings, environment, marker).await;
        let Ok(halted) = Sha::parse(&marker.sha) else { return };
        let location = &desired.location;
        match (&resolved, &marker.rolled_back_to) {
            (Ok(()), Some(to)) => {
                tracing::info!(sha = %halted, "{} is halted: a host with nothing serving runs {to}, a verified release of {location}", halted.short())
            }
            (Ok(()), None) => {
                tracing::warn!(sha = %halted, "{} is halted and {location} has no earlier verified release that is not halted (turn on bucket versioning, docs/fleet.md): a host with nothing serving has nothing to run", halted.short())
            }
            (Err(e), _) => {
                tracing::warn!(sha = %halted, "{} is halted; its rollback target is unknown for now ({e}): trying again at the next pass", halted.short());
                return;
            }
        }
        self.memory.rollback_target = Some((halted, marker.rolled_back_to.clone()));
    }

    /// Reads S3 (conditional GET) and verifies what changed ([`Desired::verify`]). Returns the
    /// problem to report when S3 cannot be read; the last release read stays the desired one
    /// meanwhile. A history that could not be read is read again: the next read is
    /// unconditional.
    async fn read_release(&mut self, env: &Environment, shutdown: &Shutdown) -> Result<Option<Problem>, PassError> {
        let location = crate::pass::desired::release_location(&self.settings, &env.name);
        let trust = Trust::new(&self.settings, &env.name);
        let etag = self
            .memory
            .desired
            .as_ref()
            .filter(|d| d.location == location && (d.history.is_some() || !trust.required()))
            .and_then(|d| d.etag.clone());
        let fetch = self.services.releases.fetch(&location, etag.as_deref());
        self.fleet.metrics.add_s3_request();
        match shutdown.race(fetch).await? {
            Ok(Fetched::Changed(release)) => {
                let dir = &self.settings.agent.state_dir;
                let accepted = Accepted::load(dir, &env.name);
                let releases = &self.services.releases;
                let desired = Desired::verify(releases, trust, location, release, accepted.as_ref()).await;
                let before = self.memory.desired.as_ref().map(|d| &d.published);
                match &desired.published {
                    Published::Verified(v) => {
                        if before.and_then(|p| p.verified()).map(|b| &b.sha) != Some(&v.sha) {
                            tracing::info!(env = %env.name, sha = %v.sha, "desired release {} for {}", v.sha, env.name);
                        }
                        if let Err(e) = Accepted::record(dir, trust, v) {
                            tracing::warn!("cannot record the accepted release: {e}");
                        }
                    }
                    refused @ Published::Refused { sha, refusal } => {
                        if before != Some(refused) {
                            tracing::warn!(env = %env.name, sha = %sha, "{refusal}");
                        }
                    }
                }
                self.memory.desired = Some(desired);
                Ok(None)
            }
            Ok(Fetched::Unchanged) => {
                tracing::debug!("release unchanged (304)");
                Ok(None)
            }
            Err(e) => Ok(Some(Problem::from(&PassError::Release(e)))),
        }
    }

    /// A failure the agent counts ([`PassError::failure`]) is judged
    /// ([`crate::fleet::verdict`]), counts towards the release's quarantine here whoever is to
    /// blame, and becomes a halt vote at the end of the pass only when the release is.
    fn count_failure(&mut self, sha: &Sha, served_before: Option<&Sha>, failure: &PassError) {
        let Some(facts) = failure.failure() else { return };
        let verdict = verdict::judge(&facts, &self.history(sha, served_before));
        self.fleet.metrics.record_deploy(false);
        self.judged(sha, verdict);
        if let Some(Cause::FailedDeploys { times }) = self.memory.quarantine.record_failure(sha, Instant::now()) {
            let wait = self.memory.quarantine.remaining(sha, Instant::now()).unwrap_or_default();
            tracing::warn!(sha = %sha, "release {} failed to deploy {times} times in a row; holding it back for {} s", sha.short(), wait.as_secs());
        }
    }

    /// Acts on a verdict: the release's is voted against after the pass; this host's is only
    /// said (it stays on this host).
    fn judged(&mut self, sha: &Sha, verdict: Verdict) {
        if verdict.is_release() {
            self.memory.failed = Some(Failed { sha: sha.clone(), verdict });
        } else {
            tracing::warn!(sha = %sha, verdict = %verdict.rule, "{} failed here, and the judgement is {verdict}: no halt vote, other hosts are not affected", sha.short());
        }
    }

    /// What this host knows of `sha`, as evidence for the judgement.
    fn history(&self, sha: &Sha, served_before: Option<&Sha>) -> History {
        let state = crate::state::State::load(&self.settings.agent.state_dir);
        let served_here_for =
            state.last_good.as_ref().filter(|g| g.sha == sha.as_str()).map(|g| g.served_for(crate::state::now_unix()));
        let published_for = self
            .memory
            .desired
            .as_ref()
            .and_then(|d| d.published.verified())
            .filter(|p| p.sha == *sha)
            .and_then(|p| p.published_at)
            .and_then(|at| crate::runtime::clock::now().duration_since(at).ok());
        History { served_before_pass: served_before == Some(sha), served_here_for, published_for }
    }

    /// After a pass: votes against a release the judgement blamed here (with what serves now), and
    /// updates and writes the metrics.
    async fn after_pass(&mut self, phase: &Phase) {
        let serving = phase.serving().and_then(|s| Sha::parse(s).ok());
        let env = self.environment.as_ref().map(|e| e.name.clone());
        if let (Some(failed), Some(env)) = (self.memory.failed.take(), env.as_deref()) {
            if serving.as_ref().is_some_and(|s| *s != failed.sha) {
                self.fleet.metrics.record_rollback();
            }
            let halts = self.services.halts.in_bucket(&self.settings.release.bucket);
            let prefix = self.settings.halt_prefix(env);
            let published = self.memory.desired.as_ref().map(|d| d.published.sha().clone());
            self.fleet
                .vote(
                    &halts,
                    &*self.services.caller,
                    &prefix,
                    env,
                    &failed.sha,
                    &failed.verdict,
                    serving.as_ref(),
                    published.as_ref(),
                )
                .await;
        }
        self.fleet.note_identity().await;
        self.fleet.count_ecr_calls(self.services.credentials.api_calls());
        let metrics = self.fleet.metrics.clone();
        let why = self.memory.last_decision.as_ref();
        let state = match phase {
            Phase::Baking { .. } => "baking",
            Phase::Degraded { .. } => "degraded",
            Phase::Warm { .. } => "warm",
            Phase::Unconverged { .. } => "unconverged",
            _ => match why {
                Some(Why::Waiting { .. }) => "waiting",
                Some(Why::Halted { .. }) => "halted",
                Some(Why::Paused { .. }) => "paused",
                _ => "converged",
            },
        };
        let sha = serving.as_ref().map(Sha::as_str).unwrap_or("none");
        metrics.set_release(env.as_deref().unwrap_or("unknown"), sha, state);
        let proven = crate::state::State::load(&self.settings.agent.state_dir).proven;
        metrics.set_digest(proven.filter(|p| p.sha == sha && !p.digest.is_empty()).map(|p| (p.sha, p.digest)));
        metrics.record_pass(phase.is_converged(), SystemTime::now());
        metrics.set_clock(crate::runtime::clock::latest());
        let published = self.memory.desired.as_ref().map(|d| d.published.sha());
        let halted = published.filter(|sha| self.fleet.halt_of(sha).is_some());
        metrics.set_halted(halted.map(Sha::to_string).into_iter().collect());
        metrics.set_bake(self.memory.bake.as_ref().map(|b| (b.record.sha.clone(), b.record.until)));
        metrics.set_rollout_wait(match why {
            Some(Why::Waiting { remaining, .. }) => *remaining,
            _ => Duration::ZERO,
        });
        if let Some(path) = &self.settings.metrics.textfile {
            let no_room = self.no_room.as_ref();
            let free = match no_room.and_then(|n| n.free()) {
                Some(free) => Some(free),
                None => crate::outside::disk::measure(&self.services.engine).await.ok().map(|r| r.free),
            };
            metrics.set_disk(crate::fleet::metrics::DiskGauges {
                free,
                min_free: self.settings.reconcile.min_free_disk,
                short: no_room.is_some(),
                need: no_room.and_then(|n| n.need()),
            });
            self.fleet.write_metrics(path);
        }
    }

    /// Completes the launch hook's action once the host is ready for it.
    async fn complete_launch(&mut self, phase: &Phase) {
        let stage = match phase {
            Phase::Warm { .. } => Stage::Warm,
            Phase::Converged { .. } => Stage::Launch,
            // S3's release is refused (a replay, a bad signature) and this host serves the
            // newest verified one: the trouble is the bucket's, not this instance's, and
            // holding it out of service would only shrink the group.
            Phase::Degraded { problem, .. } if matches!(problem.kind, phase::ProblemKind::Refused(_)) => Stage::Launch,
            _ => return,
        };
        let health = self.settings.health.clone();
        let window = launch_gate::proof_window(&self.settings);
        let prove = || async move {
            let url = &health.url;
            crate::outside::health::wait_healthy(&url.host, url.port, &health, window, || async { Ok(()) })
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        self.launch.ready(stage, prove).await;
    }

    /// Logs `next` if it differs from the current problem; logs recovery when it clears.
    fn note(&self, next: Option<&Problem>) {
        let env = self.environment.as_ref().map(|e| e.name.as_str()).unwrap_or("");
        match (self.phase.problem(), next) {
            (None, None) => {}
            (Some(old), None) => tracing::info!(env, resolved = %old.text, "recovered"),
            (old, Some(new)) if !old.is_some_and(|old| old.same_as(new)) => {
                tracing::warn!(env, "{} (retrying with backoff)", new.text)
            }
            (_, Some(new)) => tracing::debug!(problem = %new.text, "still failing"),
        }
    }
}

impl<T: TagSource, R: ReleaseSource, C: CredentialSource> Reconciler for Agent<T, R, C> {
    async fn pass(&mut self, kind: PassKind, shutdown: &Shutdown) -> Phase {
        let result = self.try_pass(kind, shutdown).await;
        if result.as_ref().is_err_and(|e| e.is_cancelled() || shutdown.is_requested()) {
            return Phase::Stopping;
        }
        self.no_room = match &result {
            Err(PassError::Deploy(crate::pass::deploy::DeployError::Disk(no_room))) => Some(no_room.clone()),
            _ => None,
        };
        // What serves now, from Docker (not from what the pass hoped), after a failed pass.
        let serving = if result.is_err() { self.serving_container().await } else { None };
        let phase = match result {
            Ok(Outcome::Warmed { image }) => Phase::Warm { image },
            Ok(Outcome::Baking(record)) => {
                Phase::Baking { serving: record.sha, previous: record.previous_sha, until: record.until }
            }
            Ok(Outcome::Served { serving: sha, problem }) => Phase::after_pass(sha.map(|s| s.to_string()), problem),
            Err(e) => {
                let sha = serving.as_ref().and_then(|c| c.labels.get(crate::spec::LABEL_SHA));
                let sha = sha.and_then(|s| Sha::parse(s).ok()).map(|s| s.to_string());
                Phase::after_pass(sha, Some(Problem::from(&e)))
            }
        };
        self.note(phase.problem());
        self.after_pass(&phase).await;
        self.launch.cannot_pull(self.no_room.as_ref().map(|n| n.to_string())).await;
        self.complete_launch(&phase).await;
        LastPass::record(&self.settings.agent.state_dir, phase.problem().map(|p| p.text.as_str()));
        self.phase = phase.clone();
        phase
    }

    /// Re-reads the config file. An invalid file keeps the current settings.
    fn reload(&mut self) {
        match Settings::load(&self.config_path) {
            Ok(settings) if settings == self.settings => tracing::info!("configuration unchanged"),
            Ok(settings) => {
                tracing::info!(config = %self.config_path.display(), "configuration reloaded");
                let renamed = settings.container.name != self.settings.container.name;
                if renamed {
                    self.renamed_from = Some(self.settings.container.name.clone());
                }
                if settings.traffic.chains != self.settings.traffic.chains {
                    // New chains from now on; the old ones are removed after the next pass
                    // has pointed the new ones at the container.
                    match crate::pass::switch::netfilter(&settings, &self.services.engine) {
                        Ok(netfilter) => {
                            let old = std::mem::replace(&mut self.services.routes, Arc::new(netfilter));
                            self.retired_routes = Some(old);
                        }
                        Err(e) => tracing::error!("[traffic] chains: {e}"),
                    }
                }
                self.settings = settings;
                self.environment = None;
                self.memory.desired = None;
                self.memory.rollback_target = None;
                self.fleet.forget_halt();
                if renamed {
                    self.watch_events();
                }
                self.watch_rules();
            }
            Err(e) => tracing::error!("configuration reload failed, keeping the previous one: {e}"),
        }
    }

    fn interval(&self) -> (Duration, Duration) {
        (self.settings.reconcile.interval, self.settings.reconcile.jitter)
    }

    /// Longest a healthy pass can take: every step's own bound, plus slack.
    fn pass_deadline(&self) -> Duration {
        let s = &self.settings;
        s.agent.lock_timeout
            + s.image.pull_timeout
            + s.health.timeout * 3
            + s.container.stop_timeout
            + LaunchGate::worst_case(s)
            + PASS_SLACK
    }

    fn status_line(&self, phase: &Phase) -> String {
        let line =
            phase.status_line(self.environment.as_ref().map(|e| e.name.as_str()), self.memory.paused_by.as_deref());
        match phase::rollout_note(phase, self.memory.last_decision.as_ref()) {
            Some(note) => format!("{line}; {note}"),
            None => line,
        }
    }
}
