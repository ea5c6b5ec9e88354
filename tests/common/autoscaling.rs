//! A small Auto Scaling stand-in: the real Query protocol (form-encoded POST, XML answers and
//! errors), so the agent drives it through the real `aws-sdk-autoscaling` client. moto has no
//! `CompleteLifecycleAction`, no `RecordLifecycleActionHeartbeat` and no `Pending:Wait`.
//!
//! One group with one launch hook. Instances are put in a lifecycle state by the test; one in
//! `Pending:Wait` or `Warmed:Pending:Wait` waits on the hook like on AWS: a heartbeat restarts
//! its timeout, a completion moves it on (`CONTINUE`: `InService`, or from a warm pool
//! `Warmed:Running`; `ABANDON`: `Terminating`), and a timeout that passes applies the hook's
//! default result (recorded as an `Expired` call). A completion or heartbeat for an instance
//! that is not waiting is refused with Auto Scaling's `ValidationError`. Every call is recorded;
//! at a `CONTINUE` the stand-in GETs the blog's port, as the load balancer is about to.

use std::collections::HashMap;
use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One call the stand-in answered (or a timeout it applied).
#[derive(Debug, Clone)]
pub struct Call {
    pub action: String,
    pub instance_id: Option<String>,
    /// `CONTINUE` / `ABANDON` of a completion (or the default result of an `Expired`).
    pub result: Option<String>,
    /// Whether the call was accepted (a refused one got a `ValidationError`).
    pub accepted: bool,
    /// At a `CONTINUE`: what a GET of the blog's port answered (status, body).
    pub page: Option<(u16, String)>,
    pub at: Instant,
}

struct Waiting {
    state: String,
    expires: Option<Instant>,
}

struct Shared {
    group: String,
    hook: String,
    heartbeat_timeout: Duration,
    default_result: String,
    instances: HashMap<String, Waiting>,
    calls: Vec<Call>,
    /// The blog's port, probed at every `CONTINUE`.
    probe_port: Option<u16>,
}

pub struct FakeAutoScaling {
    pub endpoint: String,
    pub group: String,
    pub hook: String,
    shared: Arc<Mutex<Shared>>,
}

impl FakeAutoScaling {
    /// A group `group` whose launch hook `hook` times out after `heartbeat_timeout` with
    /// `default_result`.
    pub fn start(group: &str, hook: &str, heartbeat_timeout: Duration, default_result: &str) -> FakeAutoScaling {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Mutex::new(Shared {
            group: group.into(),
            hook: hook.into(),
            heartbeat_timeout,
            default_result: default_result.into(),
            instances: HashMap::new(),
            calls: Vec::new(),
            probe_port: None,
        }));
        let server = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = server.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        FakeAutoScaling { endpoint, group: group.into(), hook: hook.into(), shared }
    }

    /// Puts `instance_id` in the group in `state`; a waiting state starts the hook's timer.
    pub fn set_state(&self, instance_id: &str, state: &str) {
        let mut shared = self.shared.lock().unwrap();
        let expires = is_waiting(state).then(|| Instant::now() + shared.heartbeat_timeout);
        shared.instances.insert(instance_id.into(), Waiting { state: state.into(), expires });
    }

    /// GETs `port` at every `CONTINUE`.
    pub fn probe_at_continue(&self, port: u16) {
        self.shared.lock().unwrap().probe_port = Some(port);
    }

    pub fn state(&self, instance_id: &str) -> Option<String> {
        let mut shared = self.shared.lock().unwrap();
        expire(&mut shared);
        shared.instances.get(instance_id).map(|w| w.state.clone())
    }

    pub fn calls(&self) -> Vec<Call> {
        let mut shared = self.shared.lock().unwrap();
        expire(&mut shared);
        shared.calls.clone()
    }

    /// The recorded calls of `action`.
    pub fn calls_of(&self, action: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.action == action).collect()
    }
}

fn is_waiting(state: &str) -> bool {
    state == "Pending:Wait" || state == "Warmed:Pending:Wait"
}

/// Applies the default result to every action whose timeout has passed.
fn expire(shared: &mut Shared) {
    let now = Instant::now();
    let default = shared.default_result.clone();
    let mut expired = Vec::new();
    for (id, waiting) in shared.instances.iter_mut() {
        if waiting.expires.is_some_and(|at| at <= now) {
            waiting.state = after(&waiting.state, &default);
            waiting.expires = None;
            expired.push(id.clone());
        }
    }
    for id in expired {
        shared.calls.push(Call {
            action: "Expired".into(),
            instance_id: Some(id),
            result: Some(default.clone()),
            accepted: true,
            page: None,
            at: now,
        });
    }
}

/// The state a waiting instance moves to with `result`.
fn after(state: &str, result: &str) -> String {
    match (state, result) {
        (_, "ABANDON") => "Terminating".into(),
        ("Warmed:Pending:Wait", _) => "Warmed:Running".into(),
        _ => "InService".into(),
    }
}

/// `application/x-www-form-urlencoded` -> pairs.
fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body).into_owned().collect()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

const NS: &str = "http://autoscaling.amazonaws.com/doc/2011-01-01/";

fn ok(action: &str, result: &str) -> (u16, String) {
    (
        200,
        format!(
            "<{action}Response xmlns=\"{NS}\"><{action}Result>{result}</{action}Result>\
             <ResponseMetadata><RequestId>stand-in</RequestId></ResponseMetadata></{action}Response>"
        ),
    )
}

fn refused(message: &str) -> (u16, String) {
    (
        400,
        format!(
            "<ErrorResponse xmlns=\"{NS}\"><Error><Type>Sender</Type><Code>ValidationError</Code>\
             <Message>{}</Message></Error><RequestId>stand-in</RequestId></ErrorResponse>",
            escape(message)
        ),
    )
}

fn answer(params: &HashMap<String, String>, shared: &Mutex<Shared>) -> (u16, String) {
    let action = params.get("Action").cloned().unwrap_or_default();
    // What the blog's port answers at a CONTINUE, read before taking the lock (a slow answer
    // must not hold up other calls).
    let continuing = action == "CompleteLifecycleAction"
        && params.get("LifecycleActionResult").map(String::as_str) == Some("CONTINUE");
    let probe = shared.lock().unwrap().probe_port;
    let page = probe.filter(|_| continuing).and_then(|port| super::http_get(port, "/"));
    let mut guard = shared.lock().unwrap();
    expire(&mut guard);
    let instance = params.get("InstanceId").or_else(|| params.get("InstanceIds.member.1")).cloned();
    let mut call = Call {
        action: action.clone(),
        instance_id: instance.clone(),
        result: params.get("LifecycleActionResult").cloned(),
        accepted: true,
        page: None,
        at: Instant::now(),
    };
    let right_hook = params.get("AutoScalingGroupName") == Some(&guard.group)
        && params.get("LifecycleHookName") == Some(&guard.hook);
    let response = match action.as_str() {
        "DescribeAutoScalingInstances" => {
            let members: String = instance
                .iter()
                .filter_map(|id| guard.instances.get(id).map(|w| (id, w)))
                .map(|(id, w)| {
                    format!(
                        "<member><InstanceId>{id}</InstanceId><InstanceType>t3.micro</InstanceType>\
                         <AutoScalingGroupName>{}</AutoScalingGroupName><AvailabilityZone>us-east-1a</AvailabilityZone>\
                         <LifecycleState>{}</LifecycleState><HealthStatus>HEALTHY</HealthStatus>\
                         <ProtectedFromScaleIn>false</ProtectedFromScaleIn></member>",
                        guard.group, w.state
                    )
                })
                .collect();
            ok(&action, &format!("<AutoScalingInstances>{members}</AutoScalingInstances>"))
        }
        "DescribeLifecycleHooks" => {
            let named = params.get("LifecycleHookNames.member.1");
            let hooks =
                if params.get("AutoScalingGroupName") == Some(&guard.group) && named.is_none_or(|n| *n == guard.hook) {
                    format!(
                    "<member><LifecycleHookName>{}</LifecycleHookName><AutoScalingGroupName>{}</AutoScalingGroupName>\
                     <LifecycleTransition>autoscaling:EC2_INSTANCE_LAUNCHING</LifecycleTransition>\
                     <HeartbeatTimeout>{}</HeartbeatTimeout><GlobalTimeout>{}</GlobalTimeout>\
                     <DefaultResult>{}</DefaultResult></member>",
                    guard.hook,
                    guard.group,
                    guard.heartbeat_timeout.as_secs(),
                    guard.heartbeat_timeout.as_secs() * 100,
                    guard.default_result
                )
                } else {
                    String::new()
                };
            ok(&action, &format!("<LifecycleHooks>{hooks}</LifecycleHooks>"))
        }
        "RecordLifecycleActionHeartbeat" | "CompleteLifecycleAction" => {
            let timeout = guard.heartbeat_timeout;
            let waiting = instance.as_ref().and_then(|id| guard.instances.get_mut(id)).filter(|w| is_waiting(&w.state));
            match (waiting, right_hook) {
                (Some(waiting), true) => {
                    if action == "RecordLifecycleActionHeartbeat" {
                        waiting.expires = Some(Instant::now() + timeout);
                    } else {
                        let result = call.result.clone().unwrap_or_default();
                        if result == "CONTINUE" {
                            call.page = page.clone();
                        }
                        waiting.state = after(&waiting.state, &result);
                        waiting.expires = None;
                    }
                    ok(&action, "")
                }
                _ => {
                    call.accepted = false;
                    refused(&format!(
                        "No active Lifecycle Action found with instance ID {}",
                        instance.clone().unwrap_or_default()
                    ))
                }
            }
        }
        _ => {
            call.accepted = false;
            refused(&format!("the stand-in does not serve {action}"))
        }
    };
    guard.calls.push(call);
    response
}

fn serve(stream: TcpStream, shared: &Mutex<Shared>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut out = stream;
    while let Some(request) = super::http::read_request(&mut reader) {
        let (status, xml) = answer(&form(&request.body), shared);
        let reason = if status == 200 { "OK" } else { "Bad Request" };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: text/xml\r\nx-amzn-RequestId: stand-in\r\nContent-Length: {}\r\n\r\n{xml}",
            xml.len()
        );
        if out.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}
