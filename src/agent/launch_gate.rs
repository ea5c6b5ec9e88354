//! The launch gate: a new instance of an Auto Scaling group is put in service only once the
//! blog serves on it.
//!
//! With `[rollout] lifecycle_hook` set, the group's launch hook holds a new instance in
//! `Pending:Wait`. The agent learns that at its first pass (instance id from instance metadata,
//! then `DescribeAutoScalingInstances` and `DescribeLifecycleHooks`), and then:
//! - completes the action with `CONTINUE` after the first pass that leaves a verified release
//!   serving, and one more probe of the health URL through the host's own port (what the load
//!   balancer will reach);
//! - keeps the action alive with a heartbeat, shortly before it would time out, while a pull is
//!   moving (Docker reported progress within [`PULL_MOVING`]): a large first image on a slow
//!   link is a reason to wait, not to give the instance up;
//! - completes it with `ABANDON` when it would time out and nothing is moving: whatever fails
//!   (S3, ECR, the release's own probe) has had the hook's whole timeout, and an explicit
//!   `ABANDON` lets the group replace the instance now, whatever the hook's default result
//!   (a default of `CONTINUE` would put a host that does not serve in service).
//!
//! Warm pools: an instance prepared for a warm pool waits in `Warmed:Pending:Wait`. The agent
//! then pulls the release's image without starting the blog, completes the action with
//! `CONTINUE` (Auto Scaling stops or hibernates the instance, or keeps it running warm), and
//! while the instance's target lifecycle state (instance metadata) stays `Warmed:*` it only
//! keeps the image current. When the instance leaves the pool it goes through `Pending:Wait`
//! like a new one, with its image already on disk.
//!
//! The hook's timer starts at launch, before the agent runs, and Auto Scaling does not say
//! when: the agent sends one heartbeat when it arms the gate, so the timeout it counts from is
//! the real one.
//!
//! Reads and writes: the Auto Scaling API ([`AutoScaling`]), the target lifecycle state in
//! instance metadata. Decides: [`next_step`] (pure).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::Settings;
use crate::fleet::rollout::{Identity, IdentitySource};
use crate::outside::autoscaling::{launch_hook, Action, AutoScaling, AutoScalingError, Outcome, CALL_TIMEOUT};
use crate::outside::imds::Imds;
use crate::outside::pull_progress::PullActivity;

/// A pull that reported progress within this long, or ended within this long (its container
/// is being started and probed), is moving: worth a heartbeat.
pub const PULL_MOVING: Duration = Duration::from_secs(15);
/// How often the gate looks at the clock while armed.
const TICK: Duration = Duration::from_millis(500);
/// Auto Scaling's own bound on how long heartbeats can keep an action waiting.
const MAX_GLOBAL_TIMEOUT: Duration = Duration::from_secs(48 * 3600);

/// The lifecycle state of an instance held by a launch hook.
pub const PENDING_WAIT: &str = "Pending:Wait";
/// The lifecycle state of an instance being prepared for a warm pool, held by the hook.
pub const WARMED_PENDING_WAIT: &str = "Warmed:Pending:Wait";

/// What the waiting instance is being prepared for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Service: the blog must serve before `CONTINUE`.
    Launch,
    /// A warm pool: the image must be on disk before `CONTINUE`; the blog is not started.
    Warm,
}

/// A lifecycle action this host has to complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Armed {
    pub action: Action,
    pub stage: Stage,
    pub heartbeat_timeout: Duration,
    /// When the action times out unless a heartbeat or completion comes first.
    pub expires: Instant,
    /// When heartbeats can no longer keep it (the hook's global timeout).
    pub gives_up: Instant,
}

/// What the gate should do now, before the host is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Wait,
    Heartbeat,
    Abandon,
}

/// How close to the timeout the gate acts: a fifth of the heartbeat timeout, between 2 s and
/// 30 s (a few ticks, and time for a call that needs a retry to land before the action
/// expires; Auto Scaling's shortest heartbeat timeout, 30 s, gets 6 s).
pub fn margin(heartbeat_timeout: Duration) -> Duration {
    (heartbeat_timeout / 5).clamp(Duration::from_secs(2), Duration::from_secs(30))
}

/// The gate's decision while the host is not ready: nothing until the action is about to time
/// out; then a heartbeat if a pull is moving and a heartbeat can still extend the action, else
/// `ABANDON`.
pub fn next_step(armed: &Armed, now: Instant, pull_moving: bool) -> Step {
    if now + margin(armed.heartbeat_timeout) < armed.expires {
        Step::Wait
    } else if pull_moving && now + armed.heartbeat_timeout <= armed.gives_up {
        Step::Heartbeat
    } else {
        Step::Abandon
    }
}

/// What a lifecycle state (as `DescribeAutoScalingInstances` says it) means for the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A lifecycle action waits on this host, for `Stage`.
    Waits(Stage),
    /// On its way to a wait state (`Pending`, `Warmed:Pending`): ask again at the next pass.
    NotYet,
    /// In a warm pool past its warm action (`Warmed:Running`, ...): start nothing.
    Warm,
    /// In service, or leaving: nothing to gate for this launch.
    Past,
}

/// The gate's reading of a lifecycle state.
pub fn seen(state: &str) -> Seen {
    match state {
        PENDING_WAIT => Seen::Waits(Stage::Launch),
        WARMED_PENDING_WAIT => Seen::Waits(Stage::Warm),
        "Pending" | "Warmed:Pending" => Seen::NotYet,
        s if s.starts_with("Warmed:") => Seen::Warm,
        _ => Seen::Past,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Not learned yet (or the last attempt failed): tried again at the next pass.
    Unknown,
    /// Nothing to gate: no launch hook configured, not on EC2, not in a group.
    Open,
    /// `completing`: a completion call is on its way (by the loop or the ticker); the other
    /// one waits for its outcome.
    Armed { armed: Armed, completing: bool },
    /// A warm-pool instance past its warm action: it keeps the image current and starts
    /// nothing until it leaves the pool.
    Warmed,
    /// The action was completed (or had ended) for this launch.
    Done,
}

/// How many times the gate reads the instance id itself when the host's identity did not
/// come from instance metadata (a slow metadata service at boot), before it gives up.
const INSTANCE_ID_ATTEMPTS: u32 = 5;

/// The loop's launch gate.
pub struct LaunchGate {
    hook: Option<String>,
    api: Arc<AutoScaling>,
    imds: Imds,
    activity: PullActivity,
    state: Arc<Mutex<State>>,
    ticker: Option<JoinHandle<()>>,
    /// Instance id reads the gate made itself (see [`INSTANCE_ID_ATTEMPTS`]).
    id_reads: u32,
    /// The last arming failure logged, so a lasting one is logged once.
    last_error: Option<String>,
    /// Why this host cannot pull its release (not enough disk space), while it cannot: said
    /// when the gate holds the instance out of service and when it abandons it.
    cannot_pull: Arc<std::sync::Mutex<Option<String>>>,
}

impl Drop for LaunchGate {
    fn drop(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
    }
}

impl LaunchGate {
    /// A gate for `[rollout] lifecycle_hook` (none: always open). `activity` is the Engine's.
    pub fn new(settings: &Settings, api: Arc<AutoScaling>, activity: PullActivity) -> LaunchGate {
        let hook = settings.rollout.lifecycle_hook.clone();
        let state = if hook.is_some() { State::Unknown } else { State::Open };
        LaunchGate {
            hook,
            api,
            imds: Imds::new(),
            activity,
            state: Arc::new(Mutex::new(state)),
            ticker: None,
            id_reads: 0,
            last_error: None,
            cannot_pull: Arc::default(),
        }
    }

    /// After a pass: why the release's image cannot be pulled here (`None`: it can, or it is
    /// on disk). A waiting instance that cannot pull is not put in service: no `CONTINUE`
    /// without a serving release, and the `ABANDON` at the hook's timeout names this reason
    /// (a heartbeat keeps an action only while a pull is moving, which a refused one is not).
    pub async fn cannot_pull(&mut self, why: Option<String>) {
        let armed = matches!(*self.state.lock().await, State::Armed { .. });
        let mut current = self.cannot_pull.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(why), None) = (&why, current.as_ref()) {
            if armed {
                tracing::error!(
                    "launch gate: this instance cannot pull its release ({why}): it is not put in service; the \
                     lifecycle action is abandoned when the hook times out unless space is freed first"
                );
            }
        }
        *current = why;
    }

    /// Whether `[rollout] lifecycle_hook` is set (or was: an action armed under an earlier
    /// configuration is still completed, under its own hook's name).
    pub fn configured(&self, settings: &Settings) -> bool {
        settings.rollout.lifecycle_hook.is_some() || self.hook.is_some()
    }

    /// The longest the gate can add to a pass: arming (instance id, three Auto Scaling calls)
    /// and completing (the proof and one call). For the loop's hung-pass deadline.
    pub fn worst_case(settings: &Settings) -> Duration {
        if settings.rollout.lifecycle_hook.is_none() {
            return Duration::ZERO;
        }
        Duration::from_secs(5) + CALL_TIMEOUT * 4 + proof_window(settings)
    }

    /// A changed `[rollout] lifecycle_hook` (SIGHUP): a gate not armed yet starts over with the
    /// new name; an armed action is still completed (it carries its hook's name).
    async fn follow(&mut self, settings: &Settings) {
        if settings.rollout.lifecycle_hook == self.hook {
            return;
        }
        self.hook = settings.rollout.lifecycle_hook.clone();
        self.id_reads = 0;
        let mut state = self.state.lock().await;
        if matches!(*state, State::Unknown | State::Open) {
            *state = if self.hook.is_some() { State::Unknown } else { State::Open };
        }
    }

    /// Whether this pass must not start the blog: the instance is in (or entering) a warm pool.
    pub async fn holds_blog_back(&self) -> bool {
        match &*self.state.lock().await {
            State::Warmed => true,
            State::Armed { armed, .. } => armed.stage == Stage::Warm,
            _ => false,
        }
    }

    /// Before a pass: learns whether a lifecycle action waits on this host (until known), and
    /// whether a warmed instance has left its warm pool. `identity` is this host's.
    pub async fn prepare(&mut self, settings: &Settings, identity: &Identity) {
        self.follow(settings).await;
        let Some(hook) = self.hook.clone() else { return };
        let mut state = self.state.lock().await;
        if *state == State::Warmed {
            match self.imds.target_lifecycle_state().await {
                Ok(target) if target.starts_with("Warmed:") => return,
                Ok(target) => {
                    tracing::info!(target = %target, "the instance is leaving the warm pool (target state {target})");
                }
                Err(e) => tracing::debug!("no target lifecycle state in instance metadata ({e}); asking Auto Scaling"),
            }
            *state = State::Unknown;
        }
        if *state != State::Unknown {
            return;
        }
        let instance_id = match identity.source {
            IdentitySource::InstanceId => identity.value.clone(),
            _ => match self.imds.instance_id().await {
                Ok(id) => id,
                Err(why) => {
                    self.id_reads += 1;
                    if self.id_reads >= INSTANCE_ID_ATTEMPTS {
                        tracing::warn!(
                            "[rollout] lifecycle_hook is set but this host has no EC2 instance id ({why}, \
                             {INSTANCE_ID_ATTEMPTS} reads): no launch gate"
                        );
                        *state = State::Open;
                    }
                    return;
                }
            },
        };
        match self.arm(&hook, &instance_id).await {
            Ok(next) => {
                self.last_error = None;
                if let State::Armed { armed, .. } = &next {
                    // One ticker per armed action: a ticker of an earlier action (a warm-pool
                    // action, or before a SIGHUP) would stop at the first look at this one.
                    if let Some(old) = self.ticker.take() {
                        old.abort();
                    }
                    self.ticker = Some(self.tick(armed.action.clone()));
                }
                *state = next;
            }
            Err(e @ AutoScalingError::AccessDenied { .. }) => {
                tracing::error!("launch gate: {e}; no launch gate (the hook's default result applies)");
                *state = State::Open;
            }
            Err(e) => {
                let text = e.to_string();
                if self.last_error.as_deref() != Some(text.as_str()) {
                    tracing::warn!("launch gate: {text}; trying again at the next pass");
                } else {
                    tracing::debug!("launch gate: still failing: {text}");
                }
                self.last_error = Some(text);
            }
        }
    }

    /// Finds the waiting action, if any, and restarts its timer.
    async fn arm(&self, hook: &str, instance_id: &str) -> Result<State, AutoScalingError> {
        let Some(membership) = self.api.membership(instance_id).await? else {
            tracing::info!(instance = instance_id, "not in an Auto Scaling group: no launch gate");
            return Ok(State::Open);
        };
        let stage = match seen(&membership.state) {
            Seen::Waits(stage) => stage,
            Seen::NotYet => {
                tracing::debug!(state = %membership.state, "not waiting on the hook yet; asking again at the next pass");
                return Ok(State::Unknown);
            }
            Seen::Warm => {
                tracing::info!(group = %membership.group, state = %membership.state, "{instance_id} is {} in a warm pool: the blog starts when it leaves the pool", membership.state);
                return Ok(State::Warmed);
            }
            Seen::Past => {
                tracing::info!(
                    group = %membership.group, state = %membership.state,
                    "{instance_id} is {} in group {}: no lifecycle action to complete", membership.state, membership.group
                );
                return Ok(State::Done);
            }
        };
        let found = match launch_hook(&membership.group, hook, self.api.hook(&membership.group, hook).await?) {
            Ok(found) => found,
            Err(problem) => {
                tracing::error!(group = %membership.group, "{problem}; no launch gate");
                return Ok(State::Open);
            }
        };
        let action =
            Action { group: membership.group.clone(), hook: hook.to_owned(), instance_id: instance_id.to_owned() };
        match self.api.heartbeat(&action).await {
            Ok(()) => {}
            Err(AutoScalingError::NoAction { .. }) => return Ok(State::Done),
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        let global = found.global_timeout.unwrap_or(found.heartbeat_timeout * 100).min(MAX_GLOBAL_TIMEOUT);
        tracing::info!(
            group = %action.group, hook = %action.hook, state = %membership.state,
            "launch gate: {} waits in {}; CONTINUE once {}, ABANDON if that cannot happen within {} s \
             (heartbeats while a pull is moving; default result {})",
            instance_id, membership.state,
            if stage == Stage::Launch { "the blog serves" } else { "the image is pulled" },
            found.heartbeat_timeout.as_secs(), found.default_result
        );
        let armed = Armed {
            action,
            stage,
            heartbeat_timeout: found.heartbeat_timeout,
            expires: now + found.heartbeat_timeout,
            gives_up: now + global.saturating_sub(found.heartbeat_timeout).max(found.heartbeat_timeout),
        };
        Ok(State::Armed { armed, completing: false })
    }

    /// Heartbeats and `ABANDON` on time, beside the passes (a pull can outlast the timeout).
    /// The lock is never held across a call: the loop's pass must not wait on Auto Scaling.
    fn tick(&self, action: Action) -> JoinHandle<()> {
        let (state, api, activity) = (self.state.clone(), self.api.clone(), self.activity.clone());
        let cannot_pull = self.cannot_pull.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let (armed, step) = {
                    let mut guard = state.lock().await;
                    let State::Armed { armed, completing } = &mut *guard else { return };
                    if armed.action != action {
                        return;
                    }
                    if *completing {
                        continue;
                    }
                    let step = next_step(armed, Instant::now(), activity.moving(PULL_MOVING));
                    if step == Step::Abandon {
                        *completing = true;
                    }
                    (armed.clone(), step)
                };
                match step {
                    Step::Wait => {}
                    Step::Heartbeat => {
                        let result = api.heartbeat(&armed.action).await;
                        let mut guard = state.lock().await;
                        let State::Armed { armed: current, .. } = &mut *guard else { return };
                        match result {
                            Ok(()) => {
                                current.expires = Instant::now() + armed.heartbeat_timeout;
                                tracing::info!(group = %armed.action.group, "launch gate: pull in progress; heartbeat sent to {}", armed.action);
                            }
                            Err(AutoScalingError::NoAction { detail, .. }) => {
                                tracing::warn!(
                                    "launch gate: the lifecycle action ended before the host was ready ({detail})"
                                );
                                *guard = State::Done;
                                return;
                            }
                            Err(e) => tracing::warn!("launch gate: heartbeat failed: {e}; trying again"),
                        }
                    }
                    Step::Abandon => {
                        let result = api.complete(&armed.action, Outcome::Abandon).await;
                        let mut guard = state.lock().await;
                        let what = if armed.stage == Stage::Launch { "serve" } else { "pull its image" };
                        let why = cannot_pull.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        let why = why.map(|w| format!(" (it cannot pull its release: {w})")).unwrap_or_default();
                        match result {
                            Ok(()) => {
                                tracing::error!(
                                    group = %armed.action.group,
                                    "launch gate: this host could not {what} within the hook's {} s timeout and no pull \
                                     is moving{why}: ABANDON sent; Auto Scaling replaces the instance",
                                    armed.heartbeat_timeout.as_secs()
                                );
                                *guard = State::Done;
                                return;
                            }
                            Err(AutoScalingError::NoAction { detail, .. }) => {
                                tracing::error!(
                                    group = %armed.action.group,
                                    "launch gate: this host could not {what} in time, and the lifecycle action had \
                                     already ended ({detail}): the hook's default result applied"
                                );
                                *guard = State::Done;
                                return;
                            }
                            Err(e) => {
                                tracing::warn!("launch gate: ABANDON failed: {e}; trying again");
                                if let State::Armed { completing, .. } = &mut *guard {
                                    *completing = false;
                                }
                            }
                        }
                    }
                }
            }
        })
    }

    /// After a pass that left the host ready for its stage (serving a verified release, or in
    /// a warm pool, the release's image on disk): completes the action with `CONTINUE`.
    /// `prove`: one more probe through the host's port, for a launch. The lock is not held
    /// across the proof or the call, so the ticker keeps its heartbeats on time meanwhile.
    pub async fn ready<F, Fut>(&mut self, stage_done: Stage, prove: F)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let armed = match &*self.state.lock().await {
            State::Armed { armed, completing: false } if armed.stage == stage_done => armed.clone(),
            _ => return,
        };
        if armed.stage == Stage::Launch {
            if let Err(e) = prove().await {
                tracing::warn!(
                    "launch gate: the blog does not answer through the host's port yet ({e}); not completing"
                );
                return;
            }
        }
        {
            let mut guard = self.state.lock().await;
            match &mut *guard {
                State::Armed { armed: current, completing } if current.action == armed.action && !*completing => {
                    *completing = true
                }
                _ => return,
            }
        }
        let result = self.api.complete(&armed.action, Outcome::Continue).await;
        let mut guard = self.state.lock().await;
        let after = if armed.stage == Stage::Warm { State::Warmed } else { State::Done };
        match result {
            Ok(()) => {
                tracing::info!(
                    group = %armed.action.group, hook = %armed.action.hook,
                    "launch gate: CONTINUE sent for {}: {}", armed.action,
                    if armed.stage == Stage::Launch { "the blog serves; the instance goes in service" }
                    else { "image pulled; the instance is warmed without starting the blog" }
                );
                *guard = after;
            }
            Err(AutoScalingError::NoAction { detail, .. }) => {
                tracing::warn!("launch gate: the lifecycle action had already ended ({detail})");
                *guard = after;
            }
            Err(e) => {
                tracing::warn!("launch gate: CONTINUE failed: {e}; trying again after the next pass");
                if let State::Armed { completing, .. } = &mut *guard {
                    *completing = false;
                }
            }
        }
    }
}

/// How long the proof before `CONTINUE` may take: the pass has just seen the blog serve, so
/// this is short; a blog that stopped answering meanwhile is not let into service.
pub fn proof_window(settings: &Settings) -> Duration {
    settings.health.timeout.min(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn armed(now: Instant, expires_in: u64, gives_up_in: u64) -> Armed {
        Armed {
            action: Action { group: "g".into(), hook: "h".into(), instance_id: "i-1".into() },
            stage: Stage::Launch,
            heartbeat_timeout: Duration::from_secs(300),
            expires: now + Duration::from_secs(expires_in),
            gives_up: now + Duration::from_secs(gives_up_in),
        }
    }

    #[test]
    fn the_gate_acts_only_near_the_timeout_and_abandons_only_when_nothing_moves() {
        let now = Instant::now();
        // (expires in, gives up in, pull moving) -> step; the margin for 300 s is 30 s.
        let cases = [
            (300, 30_000, false, Step::Wait),
            (300, 30_000, true, Step::Wait),
            (31, 30_000, false, Step::Wait),
            (30, 30_000, false, Step::Abandon),
            (30, 30_000, true, Step::Heartbeat),
            (0, 30_000, true, Step::Heartbeat),
            // Heartbeats can no longer extend the action: give it up even while pulling.
            (30, 200, true, Step::Abandon),
            (30, 300, true, Step::Heartbeat),
        ];
        for (expires_in, gives_up_in, moving, want) in cases {
            let got = next_step(&armed(now, expires_in, gives_up_in), now, moving);
            assert_eq!(got, want, "expires in {expires_in} s, gives up in {gives_up_in} s, pull moving {moving}");
        }
    }

    #[test]
    fn lifecycle_states_arm_wait_or_end_the_gate() {
        let cases = [
            ("Pending:Wait", Seen::Waits(Stage::Launch)),
            ("Warmed:Pending:Wait", Seen::Waits(Stage::Warm)),
            ("Pending", Seen::NotYet),
            ("Warmed:Pending", Seen::NotYet),
            ("Warmed:Running", Seen::Warm),
            ("Warmed:Stopped", Seen::Warm),
            ("Warmed:Hibernated", Seen::Warm),
            ("Warmed:Pending:Proceed", Seen::Warm),
            ("Pending:Proceed", Seen::Past),
            ("InService", Seen::Past),
            ("Terminating:Wait", Seen::Past),
            ("Standby", Seen::Past),
        ];
        for (state, want) in cases {
            assert_eq!(seen(state), want, "{state}");
        }
    }

    #[test]
    fn the_margin_leaves_time_for_a_call_to_land() {
        assert_eq!(margin(Duration::from_secs(5)), Duration::from_secs(2));
        assert_eq!(margin(Duration::from_secs(30)), Duration::from_secs(6));
        assert_eq!(margin(Duration::from_secs(60)), Duration::from_secs(12));
        assert_eq!(margin(Duration::from_secs(3600)), Duration::from_secs(30));
    }
}
