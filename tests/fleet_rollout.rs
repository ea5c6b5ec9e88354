//! A local fleet: six `blog-agent run` processes on this machine, each its own host (container
//! name, host port, state dir, label, EC2 instance id through its own instance metadata
//! stand-in, and the credentials of its own instance-profile session `<role id>:<instance id>`,
//! which key its halt votes), all reading one release key in one bucket and pulling from one repository, with
//! `[rollout] spread = "20s"` and a 1 s poll interval. Proves, in one run:
//!
//! 1. a good release is applied in the order of the hosts' seeds, none before its wave, and
//!    reaches every host within spread + a few intervals;
//! 2. a crashing release is tried by at most `[rollout] halt_after` (2, the default) hosts + 1
//!    (the others never create a container of it) and is halted by their votes: one object per
//!    voting host in the bucket, at its caller identity, each with its verdict and the SHA the
//!    host rolled back to;
//! 3. a host started during the halt serves that rolled-back-to SHA;
//! 4. a release halted by an operator is applied by no host, and `blog-agent unhalt` lets it go
//!    on to every host.
//!
//! Containers are watched through a `docker events` stream of creations (a failed candidate is
//! removed again, so `docker ps -a` afterwards would not show it).

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use blog_agent::fleet::rollout::seed;
use common::imds::FakeImds;
use common::{wait_for, AgentProcess, Host};

const SPREAD: Duration = Duration::from_secs(20);
/// Slack on top of the spread for polls (1 s), a pull and a probe on a 2-core machine running
/// six agents.
const SLACK: Duration = Duration::from_secs(40);
const HOSTS: usize = 5;

/// Instance ids whose seeds fall in distinct fifths of [0, 1), each near the start of its
/// fifth (so consecutive waves are at least ~2.8 s apart with a 20 s spread): the order of
/// applying must follow them.
fn spread_out_ids() -> Vec<(String, f64)> {
    let mut ids = Vec::new();
    let mut n: u64 = 0;
    for fifth in 0..HOSTS {
        let (low, high) = (fifth as f64 / 5.0 + 0.01, fifth as f64 / 5.0 + 0.07);
        loop {
            n += 1;
            let id = format!("i-0f1ee7{n:011x}");
            let s = seed(&id);
            if (low..high).contains(&s) {
                ids.push((id, s));
                break;
            }
        }
    }
    ids
}

/// One host of the fleet: the harness host, its metadata stand-in, its agent.
struct Member {
    /// First, so it is dropped first: a failing test prints its log before the host's
    /// directory (which holds the log) is removed.
    agent: Option<AgentProcess>,
    host: Host,
    _imds: FakeImds,
    instance_id: String,
    seed: f64,
}

impl Member {
    fn new(name: &str, leader: Option<&Host>, instance_id: &str) -> Member {
        let mut host = Host::new(name);
        if let Some(leader) = leader {
            host.share_release_with(leader);
        }
        let imds = FakeImds::start(&[("Environment", "staging")]);
        imds.set_instance_id(instance_id);
        host.imds_endpoint = Some(imds.endpoint.clone());
        host.assume_instance_role(instance_id);
        host.write_config(&format!(
            "[reconcile]\ninterval = \"1s\"\n[rollout]\nspread = \"{}s\"\n[metrics]\ntextfile = \"{}\"\n",
            SPREAD.as_secs(),
            host.path().join("metrics/blog_agent.prom").display()
        ));
        Member { agent: None, host, _imds: imds, instance_id: instance_id.to_owned(), seed: seed(instance_id) }
    }

    fn start(&mut self) {
        self.agent = Some(self.host.start_agent(&[]));
    }

    fn metrics(&self) -> String {
        std::fs::read_to_string(self.host.path().join("metrics/blog_agent.prom")).unwrap_or_default()
    }

    /// The host's metrics say it knows `sha` is halted and keeps what it runs.
    fn knows_halted(&self, sha: &str) -> bool {
        let text = self.metrics();
        text.contains(&format!("blog_agent_halted{{sha=\"{sha}\"}} 1")) && text.contains("state=\"halted\"")
    }

    fn log(&self) -> String {
        self.agent.as_ref().map(AgentProcess::logs).unwrap_or_default()
    }
}

/// `docker events` for container creations of managed containers, from now on.
struct Creations {
    child: Child,
    path: std::path::PathBuf,
}

/// One creation: when (ns since the epoch), the container's name, its release and its host.
#[derive(Debug, Clone)]
#[allow(dead_code)] // `name` is for the failure messages.
struct Created {
    at: u128,
    name: String,
    sha: String,
    host: String,
}

impl Creations {
    fn start(dir: &std::path::Path) -> Creations {
        let path = dir.join("creations.log");
        let out = std::fs::File::create(&path).unwrap();
        // From a second ago, replayed from dockerd's buffer: no gap while the stream connects.
        let since = (SystemTime::now() - Duration::from_secs(1)).duration_since(SystemTime::UNIX_EPOCH).unwrap();
        let since = since.as_secs().to_string();
        let child = Command::new("docker")
            .args([
                "events",
                "--since",
                &since,
                "--filter",
                "type=container",
                "--filter",
                "event=create",
                "--filter",
                "label=io.blog-agent.sha",
                "--format",
                "{{.TimeNano}} {{.Actor.Attributes.name}} {{index .Actor.Attributes \"io.blog-agent.sha\"}} {{index .Actor.Attributes \"blog-agent-test\"}}",
            ])
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .expect("docker events");
        Creations { child, path }
    }

    fn all(&self) -> Vec<Created> {
        let file = std::fs::File::open(&self.path).unwrap();
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                Some(Created {
                    at: parts.next()?.parse().ok()?,
                    name: parts.next()?.to_owned(),
                    sha: parts.next()?.to_owned(),
                    host: parts.next().unwrap_or_default().to_owned(),
                })
            })
            .collect()
    }

    /// Creations of containers of `sha`.
    fn of(&self, sha: &str) -> Vec<Created> {
        self.all().into_iter().filter(|c| c.sha == sha).collect()
    }
}

impl Drop for Creations {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hosts that created containers in `creations`, in the order of their first creation.
fn hosts_in_order(creations: &[Created]) -> Vec<String> {
    let mut hosts: Vec<String> = Vec::new();
    for c in creations {
        if !hosts.contains(&c.host) {
            hosts.push(c.host.clone());
        }
    }
    hosts
}

/// The release object's Last-Modified, as the agents read it: the start of every wave.
fn published_at(leader: &Host) -> SystemTime {
    leader.s3(|c, b| async move {
        let head = c.head_object().bucket(b).key(common::default_key("staging")).send().await.unwrap();
        SystemTime::try_from(*head.last_modified().unwrap()).unwrap()
    })
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos()
}

/// The decisive halt marker of `sha` (an operator's), if there is one.
fn marker(leader: &Host, sha: &str) -> Option<serde_json::Value> {
    let key = format!("staging/halted/{sha}");
    leader.s3(|c, b| async move {
        match c.get_object().bucket(b).key(key).send().await {
            Ok(out) => Some(serde_json::from_slice(&out.body.collect().await.unwrap().to_vec()).unwrap()),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => None,
            Err(e) => panic!("get marker: {e:?}"),
        }
    })
}

/// Waits until every member has finished deploying `sha`.
fn wait_all_deployed(members: &[Member], sha: &str, deadline: Instant) {
    for m in members {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        m.host.wait_deployed(sha, left);
    }
}

#[test]
fn a_fleet_rolls_out_in_seed_order_and_halts_a_bad_release_once_two_hosts_voted() {
    let started = Instant::now();
    let ids = spread_out_ids();
    let mut members: Vec<Member> = Vec::new();
    for (i, (id, _)) in ids.iter().enumerate() {
        let leader = members.first().map(|m| &m.host);
        let member = Member::new(&format!("fleet-{i}"), leader, id);
        members.push(member);
    }
    let leader = &members[0].host;
    let creations = Creations::start(leader.path());

    // A fleet from nothing: no host has anything to serve, so none waits for its wave.
    let first = leader.release("good");
    for m in members.iter_mut() {
        m.start();
    }
    wait_all_deployed(&members, &first, Instant::now() + SLACK * 2);
    for m in &members {
        m.host.assert_serves(&first);
        assert!(
            m.log().contains(&format!("rollout identity: instance id {} (seed {:.3})", m.instance_id, m.seed)),
            "{}: identity not logged:\n{}",
            m.instance_id,
            m.log()
        );
    }

    // 1. A good release goes out in waves, in the order of the seeds.
    let leader = &members[0].host;
    let good = leader.publish("good");
    leader.put_release("staging", &good);
    let t0 = published_at(leader);
    // The last host's status shows its wave while it waits.
    let last = members.iter().max_by(|a, b| a.seed.total_cmp(&b.seed)).unwrap();
    let run = last.host.agent(&["--env", "staging", "status"]);
    assert_eq!(run.code, 0, "a waiting host is converged: {}", run.output());
    assert!(
        run.stdout.contains(&format!("{} applies at ", &good[..12]))
            && run.stdout.contains(&format!("seed {:.2}, spread 20s", last.seed))
            && run.stdout.contains(&format!("identity       instance id {}", last.instance_id))
            && run.stdout.contains("rolls out in waves: this host's turn is at"),
        "{}",
        run.stdout
    );
    let json = last.host.agent(&["--env", "staging", "status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(json["rollout"]["waiting"], true, "{json}");
    assert_eq!(
        (json["target"]["sha"].as_str(), json["target"]["source"].as_str()),
        (Some(first.as_str()), Some("rollout")),
        "{json}"
    );
    wait_all_deployed(&members, &good, Instant::now() + SPREAD + SLACK);
    let created = creations.of(&good);
    let mut applied: Vec<(u128, &Member)> = members
        .iter()
        .map(|m| {
            let at = created.iter().filter(|c| c.host == m.host.id).map(|c| c.at).min();
            (at.unwrap_or_else(|| panic!("{} created no container of {good}: {created:?}", m.instance_id)), m)
        })
        .collect();
    for (at, m) in &applied {
        // Not before its wave (S3's Last-Modified is whole seconds, as the agent reads it).
        let wave = nanos(t0) + SPREAD.mul_f64(m.seed).as_nanos();
        assert!(
            *at + 200_000_000 >= wave,
            "{} (seed {:.3}) applied {} ms before its wave",
            m.instance_id,
            m.seed,
            (wave - at) / 1_000_000
        );
    }
    applied.sort_by_key(|(at, _)| *at);
    for (at, m) in &applied {
        eprintln!(
            "{} seed {:.3}: wave at +{:.1} s, created at +{:.1} s",
            m.instance_id,
            m.seed,
            SPREAD.mul_f64(m.seed).as_secs_f64(),
            (*at - nanos(t0)) as f64 / 1e9
        );
    }
    let order: Vec<&str> = applied.iter().map(|(_, m)| m.instance_id.as_str()).collect();
    let by_seed: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(order, by_seed, "applied in seed order (seeds {ids:?})");

    // 2. A crashing release is tried by at most halt_after + 1 hosts and halted by their votes.
    let crash = leader.publish("crash");
    leader.put_release("staging", &crash);
    let t1 = published_at(leader);
    let voted = wait_for("two hosts' halt votes on the crashing release", SPREAD + SLACK, || {
        let votes = leader.staging_votes(&crash);
        (votes.len() >= 2).then_some(votes)
    });
    // Every host sees the halt, and every wave opens (plus a few polls) without another try.
    wait_for("every host to know the release is halted", SPREAD + SLACK, || {
        members.iter().all(|m| m.knows_halted(&crash)).then_some(())
    });
    let all_open = t1 + SPREAD.mul_f64(last.seed) + Duration::from_secs(3);
    wait_for("every host's wave to have opened", SPREAD + SLACK, || (SystemTime::now() >= all_open).then_some(()));
    let tried = hosts_in_order(&creations.of(&crash));
    eprintln!("crashing release {crash}: tried by {tried:?}; votes {voted:?}");
    assert!((2..=3).contains(&tried.len()), "the crashing release reached {tried:?}");
    assert_eq!(tried[0], members[0].host.id, "the first wave is the first to try it");
    assert_eq!(marker(leader, &crash), None, "hosts vote; only an operator writes the marker");
    for vote in &voted {
        let voter = vote["instance_id"].as_str().unwrap();
        assert!(vote["voter"].as_str().unwrap().ends_with(&format!(":{voter}")), "keyed by its session: {vote}");
        assert!(
            members.iter().filter(|m| tried.contains(&m.host.id)).any(|m| m.instance_id == voter),
            "a vote names a host that tried it: {vote}"
        );
        assert_eq!(vote["rolled_back_to"], good.as_str(), "{vote}");
        assert_eq!((vote["sha"].as_str(), vote["environment"].as_str()), (Some(crash.as_str()), Some("staging")));
        assert_eq!(vote["verdict"], "crashed-before-serving", "{vote}");
        assert!(vote["evidence"].as_str().unwrap().contains("failed its health check"), "{vote}");
    }
    for m in &members {
        m.host.assert_serves(&good);
    }
    let canary = members[0].metrics();
    assert_metrics_parse(&canary);
    let samples = |name: &str| -> f64 {
        let line =
            canary.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name}: {canary}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    // The first host tries it again at its polls (its own quarantine holds it back after three
    // failures) until the second host's vote halts it; each failure is a rollback.
    let failures = samples("blog_agent_deploys_total{result=\"failure\"}");
    assert!(failures >= 1.0, "{canary}");
    assert_eq!(samples("blog_agent_rollbacks_total"), failures, "{canary}");
    // Three pulls on this host, with a token from ECR (reused for a minute at most).
    assert!(samples("blog_agent_ecr_calls_total") >= 1.0, "{canary}");
    // At least one poll a second since the start, plus the halt marker reads and the write.
    assert!(samples("blog_agent_s3_requests_total") >= 10.0, "{canary}");
    assert!(samples("blog_agent_deploys_total{result=\"success\"}") >= 2.0, "{canary}");
    assert!(
        canary
            .contains(&format!("blog_agent_release_info{{environment=\"staging\",sha=\"{good}\",state=\"halted\"}} 1")),
        "{canary}"
    );

    // 3. A host launched during the halt serves what the halting host rolled back to.
    let mut newcomer = Member::new("fleet-new", Some(&members[0].host), "i-0f1ee7de4c0e00001");
    newcomer.start();
    newcomer.host.wait_deployed(&good, SLACK);
    wait_for("the newcomer to know the release is halted", SLACK, || newcomer.knows_halted(&crash).then_some(()));
    assert!(creations.of(&crash).iter().all(|c| c.host != newcomer.host.id), "the newcomer never tried it");
    let status = newcomer.host.agent(&["--env", "staging", "status", "--json"]);
    assert_eq!(status.code, 0, "{}", status.output());
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["halt"]["sha"], crash.as_str(), "{status}");
    assert_eq!(
        (status["target"]["sha"].as_str(), status["target"]["source"].as_str()),
        (Some(good.as_str()), Some("halted")),
        "{status}"
    );
    members.push(newcomer);

    // 4. An operator's halt holds a good release everywhere; `unhalt` lets it go on.
    let leader = &members[0].host;
    let held = leader.publish("good");
    let run = leader.agent(&["--env", "staging", "halt", &held, "--reason", "hold for the fleet test"]);
    assert_eq!(run.code, 0, "{}", run.output());
    leader.put_release("staging", &held);
    let t2 = published_at(leader);
    wait_for("every host to know the release is halted", SLACK, || {
        members.iter().all(|m| m.knows_halted(&held)).then_some(())
    });
    // The first hosts' waves open: still nothing.
    let first_open = t2 + SPREAD.mul_f64(members[1].seed) + Duration::from_secs(2);
    wait_for("the first two waves to have opened", SLACK, || (SystemTime::now() >= first_open).then_some(()));
    assert!(creations.of(&held).is_empty(), "no host applies a halted release: {:?}", creations.of(&held));
    let run = leader.agent(&["--env", "staging", "unhalt", &held]);
    assert_eq!(run.code, 0, "{}", run.output());
    let deadline = t2 + SPREAD + SLACK;
    wait_all_deployed(&members, &held, Instant::now() + deadline.duration_since(SystemTime::now()).unwrap_or_default());
    for m in &members {
        m.host.assert_serves(&held);
    }
    let per_host: BTreeMap<String, usize> = creations.of(&crash).iter().fold(BTreeMap::new(), |mut acc, c| {
        *acc.entry(c.host.clone()).or_default() += 1;
        acc
    });
    assert_eq!(per_host.len(), tried.len(), "the crashing release was never tried elsewhere: {per_host:?}");
    eprintln!("fleet test took {:?}", started.elapsed());
}

/// Parses a metrics textfile with prometheus_client's parser (the venv scripts/install-deps.sh
/// fills), failing the test on anything it refuses.
fn assert_metrics_parse(text: &str) {
    use std::io::Write;
    let stack = std::env::var_os("BLOG_AGENT_STACK_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| common::repo_root().join(".stack"));
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families\n\
                  n = sum(len(f.samples) for f in text_string_to_metric_families(sys.stdin.read()))\nprint(n)\n";
    let mut child = Command::new(stack.join("venv/bin/python"))
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the venv's python (run scripts/install-deps.sh)");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the parser refused the textfile: {}\n{text}", String::from_utf8_lossy(&out.stderr));
}

/// An instance id whose seed is at least `low`: its wave opens late in any spread.
fn late_id(low: f64) -> String {
    (0u64..).map(|n| format!("i-0a7e{n:013x}")).find(|id| seed(id) >= low).unwrap()
}

#[test]
fn a_manual_sync_deploys_now_and_says_it_skips_this_host_s_wave() {
    let id = late_id(0.5);
    let member = Member::new("fleet-sync-now", None, &id);
    // An hour-long spread: `run` would wait at least half an hour.
    member.host.write_config("[rollout]\nspread = \"1h\"\n");
    let v1 = member.host.release("good");
    let run = member.host.sync();
    assert_eq!(run.code, 0, "{}", run.output());
    assert!(!run.stderr.contains("does not wait"), "nothing served: no wave to skip: {}", run.stderr);
    let v2 = member.host.release("good");
    let run = member.host.sync();
    assert_eq!(run.code, 0, "{}", run.output());
    member.host.assert_serves(&v2);
    assert!(
        run.stderr.contains(&format!("rollout: this host's wave for {} opens at ", &v2[..12]))
            && run.stderr.contains(&format!(
                "seed {:.2} from its instance id, spread 1h); a manual sync does not wait for it",
                seed(&id)
            )),
        "{}",
        run.stderr
    );
    // The dry run says the same, and JSON carries it.
    member.host.put_release("staging", &v1);
    let run = member.host.agent(&["--env", "staging", "sync", "--dry-run", "--json"]);
    assert_eq!(run.code, 0, "{}", run.output());
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(report["rollout"].as_str().unwrap().contains("a manual sync does not wait"), "{report}");
    assert!(report.get("halted").is_none(), "{report}");
}

#[test]
fn a_manual_sync_does_not_apply_a_halted_release_but_sync_sha_does() {
    let member = Member::new("fleet-sync-halted", None, "i-0a7e000000000beef");
    let host = &member.host;
    let v1 = host.release("good");
    assert_eq!(host.sync().code, 0);
    let v2 = host.publish("good");
    let run = host.agent(&["--env", "staging", "halt", &v2, "--reason", "INC-9"]);
    assert_eq!(run.code, 0, "{}", run.output());
    host.put_release("staging", &v2);
    let run = host.sync();
    assert_eq!(run.code, 0, "{}", run.output());
    host.assert_serves(&v1);
    assert!(
        run.stderr.contains(&format!("release {} is halted for this environment (INC-9)", &v2[..12]))
            && run.stderr.contains(&format!("staying on {}", &v1[..12]))
            && run.stderr.contains(&format!("`blog-agent sync --sha {v2}` deploys it anyway")),
        "{}",
        run.stderr
    );
    let status = host.agent(&["--env", "staging", "status"]);
    assert_eq!(status.code, 0, "halted: converged on what it keeps: {}", status.output());
    assert!(status.stdout.contains(&format!("halted         {v2} by ")), "{}", status.stdout);
    assert!(status.stdout.contains("INC-9"), "{}", status.stdout);
    let check = host.agent(&["--env", "staging", "check"]);
    let line = check.stdout.lines().find(|l| l.starts_with("ok   release halt")).unwrap_or_default();
    assert!(line.contains("is HALTED for staging") && line.contains("INC-9"), "{}", check.stdout);
    // An operator's pin overrides the halt.
    let run = host.agent(&["--env", "staging", "sync", "--sha", &v2]);
    assert_eq!(run.code, 0, "{}", run.output());
    host.assert_serves(&v2);
    assert_eq!(host.agent(&["resume"]).code, 0);
}
