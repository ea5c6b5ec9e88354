//! The launch gate (`[rollout] lifecycle_hook`) against an Auto Scaling stand-in that speaks the
//! real Query protocol, driven through the real SDK client, beside an instance metadata
//! stand-in naming the instance, and the real Docker, registry and moto.

mod common;

use std::time::Duration;

use common::autoscaling::{Call, FakeAutoScaling};
use common::imds::FakeImds;
use common::services::SlowProxy;
use common::{docker, wait_for, AgentProcess, Host};

const HOOK: &str = "blog-launch";
const GROUP: &str = "blog-staging";

/// A host whose instance metadata names `instance_id`, whose agent talks to `asg`, and whose
/// config names the launch hook, polling every second.
fn gated_host(name: &str, instance_id: &str, asg: &FakeAutoScaling) -> (Host, FakeImds) {
    let mut host = Host::new(name);
    let imds = FakeImds::start(&[("Environment", "staging")]);
    imds.set_instance_id(instance_id);
    host.imds_endpoint = Some(imds.endpoint.clone());
    host.extra_env.push(("AWS_ENDPOINT_URL_AUTO_SCALING".into(), asg.endpoint.clone()));
    host.write_config(&gated_config());
    asg.probe_at_continue(host.port);
    (host, imds)
}

/// Polls every second and names the launch hook.
fn gated_config() -> String {
    format!("[reconcile]\ninterval = \"1s\"\n[rollout]\nlifecycle_hook = \"{HOOK}\"\n")
}

/// Waits until `asg` has recorded at least `n` completions of a lifecycle action.
fn wait_completions(asg: &FakeAutoScaling, n: usize, what: &str, within: Duration) -> Vec<Call> {
    wait_for(what, within, || {
        let completes = asg.calls_of("CompleteLifecycleAction");
        (completes.len() >= n).then_some(completes)
    })
}

fn start(host: &Host) -> AgentProcess {
    host.start_agent_raw(&[], |_| {})
}

fn image_present(host: &Host, sha: &str) -> bool {
    docker(&["image", "inspect", &host.image(sha)]).status.success()
}

#[test]
fn a_launching_instance_is_put_in_service_only_once_the_blog_serves() {
    let asg = FakeAutoScaling::start(GROUP, HOOK, Duration::from_secs(120), "ABANDON");
    let id = "i-0launch000000001";
    asg.set_state(id, "Pending:Wait");
    let (host, _imds) = gated_host("gate-continue", id, &asg);
    let sha = host.release("good");
    let agent = start(&host);

    wait_completions(&asg, 1, "CONTINUE", Duration::from_secs(60));
    host.wait_deployed(&sha, Duration::from_secs(30));
    let completes = asg.calls_of("CompleteLifecycleAction");
    assert_eq!(completes.len(), 1, "{completes:?}");
    let done = &completes[0];
    assert_eq!(done.result.as_deref(), Some("CONTINUE"));
    assert!(done.accepted, "{done:?}");
    let (status, body) = done.page.clone().expect("the blog's port answered at CONTINUE");
    assert!(status == 200 && body.contains(&sha), "at CONTINUE the port answered {status}: {body}");
    assert_eq!(asg.state(id).as_deref(), Some("InService"));
    // The gate armed itself with one heartbeat (the hook's timer started before the agent ran).
    let beats = asg.calls_of("RecordLifecycleActionHeartbeat");
    assert_eq!(beats.len(), 1, "{beats:?}");
    assert!(beats[0].at < done.at);
    assert!(agent.logs().contains("launch gate: CONTINUE sent"), "{}", agent.logs());

    // Later passes and a restarted agent complete nothing more: the instance is in service.
    drop(agent);
    let again = start(&host);
    again.wait_log("is InService in group", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(asg.calls_of("CompleteLifecycleAction").len(), 1);
}

#[test]
fn a_launch_that_cannot_serve_is_abandoned_before_the_hook_times_out() {
    // The hook's default is CONTINUE: without the agent's ABANDON, a host that does not serve
    // would be put in service when the timeout passes.
    let asg = FakeAutoScaling::start(GROUP, HOOK, Duration::from_secs(8), "CONTINUE");
    let id = "i-0launch000000002";
    let (host, _imds) = gated_host("gate-abandon", id, &asg);
    host.release("crash");
    // The hook's clock starts at launch: here, once the image is built and pushed.
    asg.set_state(id, "Pending:Wait");
    let agent = start(&host);

    let completes = wait_completions(&asg, 1, "ABANDON", Duration::from_secs(30));
    assert_eq!(completes.len(), 1, "{completes:?}");
    assert_eq!(completes[0].result.as_deref(), Some("ABANDON"));
    assert!(completes[0].accepted, "the ABANDON came after the hook timed out: {:?}", asg.calls());
    assert!(asg.calls_of("Expired").is_empty(), "{:?}", asg.calls());
    assert_eq!(asg.state(id).as_deref(), Some("Terminating"));
    assert!(host.page().is_none(), "nothing should serve");
    assert!(agent.logs().contains("ABANDON sent"), "{}", agent.logs());
}

#[test]
fn heartbeats_keep_a_launch_waiting_while_a_long_pull_moves() {
    // An 8 s hook and an image that takes ~24 s to pull through a slow link: only heartbeats
    // keep the instance from being abandoned by the timeout.
    let asg = FakeAutoScaling::start(GROUP, HOOK, Duration::from_secs(8), "ABANDON");
    let id = "i-0launch000000003";
    let (mut host, _imds) = gated_host("gate-heartbeat", id, &asg);
    let sha = host.release("large");
    asg.set_state(id, "Pending:Wait");
    let registry_port: u16 = host.registry.rsplit(':').next().unwrap().parse().unwrap();
    let slow = SlowProxy::start(registry_port, 128 * 1024);
    host.registry = slow.address();
    host.write_config(&gated_config());
    let agent = start(&host);

    wait_for("CONTINUE", Duration::from_secs(90), || {
        (!asg.calls_of("CompleteLifecycleAction").is_empty() || !asg.calls_of("Expired").is_empty()).then_some(())
    });
    assert!(asg.calls_of("Expired").is_empty(), "the hook timed out: {:?}\n{}", asg.calls(), agent.logs());
    let completes = asg.calls_of("CompleteLifecycleAction");
    assert_eq!(completes[0].result.as_deref(), Some("CONTINUE"));
    assert!(completes[0].accepted);
    let beats = asg.calls_of("RecordLifecycleActionHeartbeat");
    // One to arm the gate, then one about every 6 s (8 s timeout, 2 s margin) of a ~24 s pull.
    assert!(beats.len() >= 3, "heartbeats: {beats:?}");
    assert!(agent.logs().contains("pull in progress; heartbeat sent"), "{}", agent.logs());
    host.wait_deployed(&sha, Duration::from_secs(30));
}

#[test]
fn a_warm_pool_instance_pulls_the_image_and_starts_the_blog_only_when_it_leaves_the_pool() {
    let asg = FakeAutoScaling::start(GROUP, HOOK, Duration::from_secs(60), "ABANDON");
    let id = "i-0warm00000000004";
    asg.set_state(id, "Warmed:Pending:Wait");
    let (host, imds) = gated_host("gate-warm", id, &asg);
    imds.set_target_lifecycle_state("Warmed:Running");
    let sha = host.release("good");
    let agent = start(&host);

    let completes = wait_completions(&asg, 1, "warm CONTINUE", Duration::from_secs(60));
    assert_eq!(completes[0].result.as_deref(), Some("CONTINUE"));
    assert!(completes[0].accepted);
    assert!(image_present(&host, &sha), "the warm instance pulled the release's image");
    assert_eq!(asg.state(id).as_deref(), Some("Warmed:Running"));
    // Some passes later, still nothing started: the instance is warm, not in service.
    std::thread::sleep(Duration::from_secs(3));
    assert!(host.containers().is_empty(), "a warm instance started {:?}", host.containers());
    assert!(host.page().is_none());
    assert!(agent.logs().contains("pulling "), "{}", agent.logs());

    // An agent restarted in the pool (Warmed:Running) starts nothing either.
    drop(agent);
    let agent = start(&host);
    agent.wait_log("in a warm pool", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    assert!(host.containers().is_empty(), "a restarted agent in the warm pool started {:?}", host.containers());

    // Auto Scaling takes it out of the pool: it waits on the hook again, as a new instance.
    asg.set_state(id, "Pending:Wait");
    imds.set_target_lifecycle_state("InService");
    let completes = wait_completions(&asg, 2, "second CONTINUE", Duration::from_secs(60));
    assert_eq!(completes.len(), 2, "{completes:?}");
    let (status, body) = completes[1].page.clone().expect("the blog's port answered at CONTINUE");
    assert!(status == 200 && body.contains(&sha), "{status}: {body}");
    host.wait_deployed(&sha, Duration::from_secs(30));
    // The image came from the warm pull: no pull when the instance went in service.
    assert!(!agent.logs().contains("pulling "), "{}", agent.logs());
}

/// A warm instance can sit in the pool through many releases: it prunes the images it pulled
/// as a serving host does (`[reconcile] keep_images`), keeping the release it would start.
#[test]
fn a_warm_pool_instance_prunes_old_images() {
    let asg = FakeAutoScaling::start(GROUP, HOOK, Duration::from_secs(60), "ABANDON");
    let id = "i-0warm00000000006";
    asg.set_state(id, "Warmed:Pending:Wait");
    let (host, imds) = gated_host("gate-warm-prune", id, &asg);
    host.write_config(&format!(
        "[reconcile]\ninterval = \"1s\"\nkeep_images = 1\n[rollout]\nlifecycle_hook = \"{HOOK}\"\n"
    ));
    imds.set_target_lifecycle_state("Warmed:Running");
    let v1 = host.release("good");
    let agent = start(&host);
    wait_for("v1 pulled", Duration::from_secs(60), || image_present(&host, &v1).then_some(()));
    let v2 = host.release("good");
    wait_for("v2 pulled", Duration::from_secs(60), || image_present(&host, &v2).then_some(()));
    let v3 = host.release("good");
    wait_for("v3 pulled", Duration::from_secs(60), || image_present(&host, &v3).then_some(()));
    wait_for("the oldest image pruned", Duration::from_secs(30), || (!image_present(&host, &v1)).then_some(()));
    assert!(image_present(&host, &v3), "the release it would start is kept");
    assert!(host.containers().is_empty(), "a warm instance started {:?}", host.containers());
    drop(agent);
}

#[test]
fn an_instance_outside_any_group_deploys_with_no_gate() {
    let asg = FakeAutoScaling::start(GROUP, HOOK, Duration::from_secs(60), "ABANDON");
    let (host, _imds) = gated_host("gate-nogroup", "i-0lonely000000005", &asg);
    let sha = host.release("good");
    let agent = start(&host);
    host.wait_deployed(&sha, Duration::from_secs(60));
    agent.wait_log("not in an Auto Scaling group", Duration::from_secs(10));
    let calls: Vec<String> = asg.calls().into_iter().map(|c| c.action).collect();
    assert_eq!(calls, ["DescribeAutoScalingInstances"], "one lookup, nothing to complete");
}

#[test]
fn check_names_the_hook_and_fails_on_a_hook_the_group_does_not_have() {
    let asg = FakeAutoScaling::start(GROUP, HOOK, Duration::from_secs(300), "ABANDON");
    let id = "i-0check000000006";
    asg.set_state(id, "InService");
    let (host, _imds) = gated_host("gate-check", id, &asg);
    host.release("good");
    let out = host.agent(&["--env", "staging", "check"]).output();
    let line = out.lines().find(|l| l.contains("launch gate:")).unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.starts_with("ok   launch gate: hook \"blog-launch\" of group \"blog-staging\" (launching; heartbeat timeout 300 s, default ABANDON); i-0check000000006 is InService"),
        "{line}"
    );

    host.write_config("[rollout]\nlifecycle_hook = \"blog-lunch\"\n");
    let run = host.agent(&["--env", "staging", "check"]);
    let out = run.output();
    let line = out.lines().find(|l| l.contains("launch gate:")).unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.starts_with("FAIL launch gate: group \"blog-staging\" has no lifecycle hook named \"blog-lunch\""),
        "{line}"
    );
    assert_ne!(run.code, 0);
}
