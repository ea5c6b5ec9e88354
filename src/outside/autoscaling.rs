//! Amazon EC2 Auto Scaling: which group this instance belongs to and in what lifecycle state,
//! the launch hook's timeouts, and the lifecycle action's heartbeat and completion. Used by
//! the launch gate ([`crate::agent::launch_gate`]) only.
//!
//! IAM: `autoscaling:DescribeAutoScalingInstances` and `autoscaling:DescribeLifecycleHooks`
//! (describe actions take no resource-level permissions: `"Resource": "*"`), and
//! `autoscaling:CompleteLifecycleAction` and `autoscaling:RecordLifecycleActionHeartbeat` on
//! the group's ARN only (docs/iam.md).
//!
//! Reads and writes: the Auto Scaling API, through the SDK (endpoint from the standard
//! `AWS_ENDPOINT_URL_AUTO_SCALING` / `AWS_ENDPOINT_URL` variables). Decides: nothing.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_autoscaling::error::ProvideErrorMetadata;

use crate::outside::aws::{describe_call, Aws, RegionUnknown, Regional};

/// Bound on one call: the SDK's own 30 s operation timeout (with its retries), plus slack.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(35);

/// The instance's place in its Auto Scaling group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub group: String,
    /// Auto Scaling's lifecycle state, as it spells it (`Pending:Wait`, `Warmed:Pending:Wait`,
    /// `InService`, ...).
    pub state: String,
}

/// A lifecycle hook's settings that matter to the instance waiting on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// `autoscaling:EC2_INSTANCE_LAUNCHING` for a launch hook.
    pub transition: String,
    /// How long the action waits for a heartbeat or completion before `default_result`.
    pub heartbeat_timeout: Duration,
    /// The longest the action can be kept waiting by heartbeats, when Auto Scaling says it.
    pub global_timeout: Option<Duration>,
    /// `CONTINUE` or `ABANDON`: what happens when the timeout passes.
    pub default_result: String,
}

/// The transition of a hook that holds launching instances.
pub const LAUNCHING: &str = "autoscaling:EC2_INSTANCE_LAUNCHING";

/// `found`, the hook named `name` on `group` as [`AutoScaling::hook`] gave it, when it can gate
/// launches; else why not, with the fix (for the gate's log and `check`).
pub fn launch_hook(group: &str, name: &str, found: Option<Hook>) -> Result<Hook, String> {
    match found {
        None => Err(format!(
            "group {group:?} has no lifecycle hook named {name:?}: check [rollout] lifecycle_hook \
             (`aws autoscaling describe-lifecycle-hooks --auto-scaling-group-name {group}`)"
        )),
        Some(hook) if hook.transition != LAUNCHING => Err(format!(
            "lifecycle hook {name:?} of group {group:?} is for {}, not {LAUNCHING}: check [rollout] lifecycle_hook",
            hook.transition
        )),
        Some(hook) => Ok(hook),
    }
}

/// The lifecycle action an instance completes: one hook of one group, for one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub group: String,
    pub hook: String,
    pub instance_id: String,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lifecycle hook {:?} of group {:?} for {}", self.hook, self.group, self.instance_id)
    }
}

/// How a lifecycle action ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Put the instance in service (or, in a warm pool, let it be stopped as warmed).
    Continue,
    /// Give the instance up: Auto Scaling terminates it and launches another.
    Abandon,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Continue => "CONTINUE",
            Outcome::Abandon => "ABANDON",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AutoScalingError {
    #[error(
        "access denied calling autoscaling:{action}: the instance role needs it ({scope}) ({detail})",
        scope = scope(action)
    )]
    AccessDenied { action: &'static str, detail: String },
    /// Auto Scaling knows no waiting action for this instance: it was completed already, it
    /// timed out, or the instance never waited on the hook.
    #[error("no lifecycle action is waiting on {action}: it completed or timed out ({detail})")]
    NoAction { action: Action, detail: String },
    #[error("cannot call autoscaling:{action}: {detail}")]
    Unavailable { action: &'static str, detail: String },
    #[error("cannot call autoscaling:{action}: {source}")]
    RegionUnknown { action: &'static str, source: RegionUnknown },
    #[error("autoscaling:{action} timed out: no answer within {after:?}")]
    TimedOut { action: &'static str, after: Duration },
}

/// Where the IAM docs scope an action.
fn scope(action: &str) -> &'static str {
    match action {
        "CompleteLifecycleAction" | "RecordLifecycleActionHeartbeat" => "on the Auto Scaling group's ARN",
        _ => "with \"Resource\": \"*\"",
    }
}

/// The Auto Scaling API in the host's region.
pub struct AutoScaling {
    client: Regional<aws_sdk_autoscaling::Client>,
}

fn build(sdk: &aws_config::SdkConfig, region: aws_config::Region) -> aws_sdk_autoscaling::Client {
    let config = aws_sdk_autoscaling::config::Builder::from(sdk)
        .region(region)
        .interceptor(crate::outside::aws::ClockWatch)
        .build();
    aws_sdk_autoscaling::Client::from_conf(config)
}

/// Classifies an SDK error of `action`; `no_action` is set for the two calls on an action.
fn classify<E>(
    action: &'static str,
    err: aws_sdk_autoscaling::error::SdkError<E, aws_sdk_autoscaling::config::http::HttpResponse>,
    no_action: Option<&Action>,
) -> AutoScalingError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let code = err.code().unwrap_or_default().to_owned();
    let message = err.message().unwrap_or_default().to_owned();
    let detail = describe_call(&err);
    match (code.as_str(), no_action) {
        ("AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation", _) => {
            AutoScalingError::AccessDenied { action, detail }
        }
        ("ValidationError", Some(target)) if message.contains("No active Lifecycle Action") => {
            AutoScalingError::NoAction { action: target.clone(), detail: message }
        }
        _ => AutoScalingError::Unavailable { action, detail },
    }
}

impl AutoScaling {
    pub fn with_aws(aws: &Arc<Aws>) -> AutoScaling {
        AutoScaling { client: Regional::new(aws.clone(), "Auto Scaling", build) }
    }

    async fn client(&self, action: &'static str) -> Result<&aws_sdk_autoscaling::Client, AutoScalingError> {
        self.client.get().await.map_err(|source| AutoScalingError::RegionUnknown { action, source })
    }

    /// The group `instance_id` belongs to and its lifecycle state; `None` when it belongs to
    /// none (launched by hand, or detached).
    pub async fn membership(&self, instance_id: &str) -> Result<Option<Membership>, AutoScalingError> {
        const ACTION: &str = "DescribeAutoScalingInstances";
        let client = self.client(ACTION).await?;
        let call = self.client.send(|| client.describe_auto_scaling_instances().instance_ids(instance_id).send());
        let out = bounded(ACTION, call).await?.map_err(|e| classify(ACTION, e, None))?;
        Ok(out.auto_scaling_instances().iter().find(|i| i.instance_id() == Some(instance_id)).map(|i| Membership {
            group: i.auto_scaling_group_name().unwrap_or_default().to_owned(),
            state: i.lifecycle_state().unwrap_or_default().to_owned(),
        }))
    }

    /// The hook `name` of `group`; `None` when the group has no such hook.
    pub async fn hook(&self, group: &str, name: &str) -> Result<Option<Hook>, AutoScalingError> {
        const ACTION: &str = "DescribeLifecycleHooks";
        let client = self.client(ACTION).await?;
        let call = self.client.send(|| {
            client.describe_lifecycle_hooks().auto_scaling_group_name(group).lifecycle_hook_names(name).send()
        });
        let out = bounded(ACTION, call).await?.map_err(|e| classify(ACTION, e, None))?;
        let seconds = |s: Option<i32>| s.map(|s| Duration::from_secs(s.max(0) as u64));
        Ok(out.lifecycle_hooks().iter().find(|h| h.lifecycle_hook_name() == Some(name)).map(|h| Hook {
            transition: h.lifecycle_transition().unwrap_or_default().to_owned(),
            // Auto Scaling's default when a hook is created without one.
            heartbeat_timeout: seconds(h.heartbeat_timeout()).unwrap_or(Duration::from_secs(3600)),
            global_timeout: seconds(h.global_timeout()),
            default_result: h.default_result().unwrap_or("ABANDON").to_owned(),
        }))
    }

    /// Restarts the action's heartbeat timeout.
    pub async fn heartbeat(&self, target: &Action) -> Result<(), AutoScalingError> {
        const ACTION: &str = "RecordLifecycleActionHeartbeat";
        let client = self.client(ACTION).await?;
        let call = self.client.send(|| {
            client
                .record_lifecycle_action_heartbeat()
                .auto_scaling_group_name(&target.group)
                .lifecycle_hook_name(&target.hook)
                .instance_id(&target.instance_id)
                .send()
        });
        bounded(ACTION, call).await?.map_err(|e| classify(ACTION, e, Some(target)))?;
        Ok(())
    }

    /// Ends the action with `outcome`.
    pub async fn complete(&self, target: &Action, outcome: Outcome) -> Result<(), AutoScalingError> {
        const ACTION: &str = "CompleteLifecycleAction";
        let client = self.client(ACTION).await?;
        let call = self.client.send(|| {
            client
                .complete_lifecycle_action()
                .auto_scaling_group_name(&target.group)
                .lifecycle_hook_name(&target.hook)
                .instance_id(&target.instance_id)
                .lifecycle_action_result(outcome.as_str())
                .send()
        });
        bounded(ACTION, call).await?.map_err(|e| classify(ACTION, e, Some(target)))?;
        Ok(())
    }
}

async fn bounded<T>(action: &'static str, call: impl std::future::Future<Output = T>) -> Result<T, AutoScalingError> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| AutoScalingError::TimedOut { action, after: CALL_TIMEOUT })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(transition: &str) -> Hook {
        Hook {
            transition: transition.into(),
            heartbeat_timeout: Duration::from_secs(300),
            global_timeout: None,
            default_result: "ABANDON".into(),
        }
    }

    #[test]
    fn only_an_existing_launch_hook_can_gate_launches() {
        assert_eq!(launch_hook("g", "h", Some(hook(LAUNCHING))), Ok(hook(LAUNCHING)));
        let missing = launch_hook("g", "h", None).unwrap_err();
        assert!(
            missing.starts_with("group \"g\" has no lifecycle hook named \"h\": check [rollout] lifecycle_hook"),
            "{missing}"
        );
        let wrong = launch_hook("g", "h", Some(hook("autoscaling:EC2_INSTANCE_TERMINATING"))).unwrap_err();
        assert!(
            wrong.starts_with("lifecycle hook \"h\" of group \"g\" is for autoscaling:EC2_INSTANCE_TERMINATING, not"),
            "{wrong}"
        );
    }
}
