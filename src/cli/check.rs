//! `blog-agent check`: preflight doctor. One line per check, `ok` or `FAIL` with the fix;
//! exit 0 only when all pass. Changes nothing (the registry check asks for a manifest; no pull).
//!
//! Reads: the configuration, instance metadata, AWS credentials, the release object and its
//! halt (through one S3 client), the registry, Docker, netfilter, the host ports and the
//! launch hook; the clock's offset from AWS's, measured from those answers. Decides: `ok` or
//! `FAIL` for each check.

use std::net::{IpAddr, Ipv4Addr, TcpListener};

use aws_credential_types::provider::ProvideCredentials;
use clap::Args;

use super::{exit, Cli, Failure};
use crate::config::{Settings, TrafficMode};
use crate::environment::{self, EnvSource};
use crate::outside::docker::Engine;
use crate::outside::halts::HaltMarkers;
use crate::outside::imds::Imds;
use crate::outside::netfilter::{Mapping, Netfilter};
use crate::outside::registry::{CredentialSource, Ecr};
use crate::outside::release::{ReleaseError, S3Releases};
use crate::outside::s3::S3Client;
use crate::pass::desired::{self, release_location, Desired, HaltRead, Published};
use crate::runtime::clock;

#[derive(Debug, Args)]
pub struct CheckArgs {}

struct Report {
    failed: usize,
}

impl Report {
    fn ok(&mut self, name: &str, detail: impl std::fmt::Display) {
        println!("ok   {name}: {detail}");
    }
    fn fail(&mut self, name: &str, detail: impl std::fmt::Display) {
        self.failed += 1;
        println!("FAIL {name}: {detail}");
    }
    fn skip(&mut self, name: &str, why: &str) {
        println!("skip {name}: {why}");
    }
    /// Works, but not as it should on a production host: said, not counted as a failure (so
    /// `check && systemctl start blog-agent` still starts it).
    fn warn(&mut self, name: &str, detail: impl std::fmt::Display) {
        println!("WARN {name}: {detail}");
    }
}

pub async fn run(cli: &Cli, _args: &CheckArgs) -> Result<(), Failure> {
    let mut r = Report { failed: 0 };
    let settings = match Settings::load(&cli.config) {
        Ok(s) => {
            r.ok("config", cli.config.display());
            s
        }
        Err(e) => {
            r.fail("config", &e);
            return Err(Failure { code: exit::CONFIG, message: "configuration invalid; nothing else checked".into() });
        }
    };
    super::check_env_flag(cli, &settings)?;

    let env = match environment::resolve(cli.environment.as_deref(), &settings, &Imds::new()).await {
        Ok(env) => {
            if env.source == EnvSource::Tag {
                r.ok("imds", "reachable, IMDSv2 token accepted");
                r.ok("environment tag", format!("{} = {} (allowed)", settings.environment.tag, env.name));
            } else {
                r.skip("imds", &format!("environment comes from the {}", env.source));
                r.ok("environment", format!("{} (from {})", env.name, env.source));
            }
            Some(env)
        }
        Err(e) => {
            let name = match &e {
                environment::EnvironmentError::Imds(crate::outside::imds::ImdsError::TagMissing { .. }) => {
                    r.ok("imds", "reachable, IMDSv2 token accepted");
                    "environment tag"
                }
                environment::EnvironmentError::Imds(_) => "imds",
                environment::EnvironmentError::NotAllowed { .. } => "environment tag",
            };
            r.fail(name, &e);
            None
        }
    };

    let aws = crate::outside::aws::Aws::load(&settings.image.repository.registry).await;
    match aws.region().await {
        Ok(region) => r.ok("aws region", region),
        Err(e) => r.fail("aws region", e),
    }
    match aws.base().credentials_provider() {
        Some(p) => match p.provide_credentials().await {
            Ok(_) => r.ok("aws credentials", "resolved"),
            Err(e) => r.fail(
                "aws credentials",
                format!("{}: attach an instance role (or set AWS credentials)", crate::outside::aws::describe(&e)),
            ),
        },
        None => r.fail("aws credentials", "no provider: attach an instance role"),
    }

    // One connection serves the registry check (Docker asks the registry for us) and the
    // Docker and port checks below.
    let engine = Engine::connect().await;
    // The release as the agent goes by it: read and verified once ([`crate::pass::desired`]).
    let (sha, digest) = match &env {
        Some(env) => {
            let location = release_location(&settings, &env.name);
            let s3 = S3Client::with_aws(&aws);
            let releases = S3Releases::new(&s3);
            let halts = HaltMarkers::new(&s3, settings.release.bucket.clone());
            match desired::read_once(&releases, &halts, &settings, &env.name).await {
                Ok((desired, halt)) => {
                    r.ok("s3 object", &location);
                    let sha = desired.published.sha().clone();
                    r.ok("release sha", &sha);
                    check_verified(&mut r, &settings, &desired);
                    check_halt(&mut r, &settings, &env.name, &sha, &halt);
                    let digest = desired.published.verified().and_then(|v| v.digest.clone());
                    (Some(sha.to_string()), digest)
                }
                Err(e @ ReleaseError::Invalid { .. }) => {
                    r.ok("s3 object", &location);
                    r.fail("release sha", e);
                    (None, None)
                }
                Err(e) => {
                    r.fail("s3 object", s3_failure(&e));
                    (None, None)
                }
            }
        }
        None => {
            r.skip("s3 object", "environment unknown");
            (None, None)
        }
    };
    // The ECR token does not depend on S3: it is checked whatever S3 said. The registry line
    // needs the SHA to look for, and says so rather than vanishing.
    let creds = match Ecr::for_registry(&aws, &settings.image.repository.registry).credentials().await {
        Ok(c) => {
            r.ok("ecr token", "obtained");
            Some(c)
        }
        Err(e) => {
            r.fail("ecr token", e);
            None
        }
    };
    check_clock(&mut r);
    match (&sha, &creds, engine.as_ref()) {
        (None, _, _) => r.skip("registry", "needs S3: no release SHA to look for (see the s3 lines above)"),
        (Some(_), None, _) => r.skip("registry", "needs an ECR token (see above)"),
        (Some(_), Some(_), Err(_)) => r.skip("registry", "Docker unreachable (it asks the registry on our behalf)"),
        (Some(sha), Some(creds), Ok(engine)) => {
            // Hosts pull a published release by its digest.
            let reference = match &digest {
                Some(digest) => format!("{}@{digest}", settings.image.repository),
                None => settings.image.repository.reference(sha),
            };
            match engine.registry_has(&reference, &settings.image.repository.registry, creds).await {
                Ok(digest) => r.ok("registry", format!("{reference} present ({digest})")),
                Err(e) => {
                    r.fail("registry", format!("{e}: has CI pushed this tag, and may the instance role pull it?"))
                }
            }
        }
    }

    match &engine {
        Ok(engine) => {
            r.ok("docker", format!("reachable, API {}", engine.api_version()));
            check_live_restore(&mut r, engine).await;
            let release = sha.as_deref().map(|sha| (sha, digest.as_deref()));
            check_disk(&mut r, &settings, engine, release, creds.as_ref()).await;
            check_ports(&mut r, &settings, Some(engine)).await;
        }
        Err(e) => {
            r.fail("docker", e);
            r.skip(LIVE_RESTORE, "Docker unreachable");
            r.skip(DISK, "Docker unreachable (its data root is where a pull lands)");
            check_ports(&mut r, &settings, None).await;
        }
    }
    if settings.traffic.mode == TrafficMode::Switch {
        check_traffic_switch(&mut r, &settings, engine.as_ref().ok()).await;
    }
    if let Some(hook) = &settings.rollout.lifecycle_hook {
        check_launch_gate(&mut r, &aws, hook).await;
    }

    if r.failed == 0 {
        Ok(())
    } else {
        Err(Failure { code: exit::FAILED, message: format!("{} check(s) failed", r.failed) })
    }
}

/// This host's clock against AWS's, from the `Date` of the S3, ECR and STS answers above:
/// `FAIL` beyond [`clock::FAIL_OFFSET`] (time decisions are refused), `WARN` beyond
/// [`clock::WARN_OFFSET`], `skip` when no answer was measured.
fn check_clock(r: &mut Report) {
    let sample = clock::latest();
    let detail = clock::describe(sample.as_ref());
    match clock::judge(sample.as_ref()) {
        clock::Level::Ok => r.ok("clock", detail),
        clock::Level::Warn => r.warn("clock", detail),
        clock::Level::Fail => r.fail("clock", detail),
        clock::Level::Unknown => r.skip("clock", &detail),
    }
}

/// The release's signature and the replay rule: a release the agent refuses fails the check,
/// with why and the fix (`[release] public_key` unset: nothing to verify).
fn check_verified(r: &mut Report, settings: &Settings, desired: &Desired) {
    const NAME: &str = "release signature";
    match (&desired.published, &settings.release.public_key) {
        (Published::Verified(_), None) => r.skip(NAME, "[release] public_key is not set: releases are not verified"),
        (Published::Verified(v), Some(_)) => r.ok(
            NAME,
            match v.signed_at {
                Some(at) => format!(
                    "{} verifies with [release] public_key (signed as published at {})",
                    v.sha.short(),
                    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(at))
                ),
                None => format!("{} verifies with [release] public_key (an untimed signature)", v.sha.short()),
            },
        ),
        (Published::Refused { refusal, .. }, _) => r.fail(
            NAME,
            format!(
                "{}; hosts keep what they run and new ones run the newest verified release ({}): publish it again \
                 with `blog-agent publish` and BLOG_AGENT_SIGNING_KEY",
                crate::sha::safe_text(&refusal.to_string()),
                desired.newest_verified().map(|s| s.to_string()).unwrap_or_else(|| "none known".into())
            ),
        ),
    }
}

/// The release's halt: a halt is reported (hosts keep what they run), not a failure of this
/// host; a halt folder that cannot be read is.
fn check_halt(r: &mut Report, settings: &Settings, env: &str, sha: &crate::sha::Sha, halt: &HaltRead) {
    let prefix = settings.halt_prefix(env);
    let location = format!("s3://{}/{}", settings.release.bucket, crate::fleet::halt::marker_key(&prefix, sha));
    match halt {
        HaltRead::NotNeeded => r.skip("release halt", "the release is refused: its halt does not matter"),
        HaltRead::Clear => r.ok("release halt", format!("{} is not halted (no {location})", sha.short())),
        HaltRead::Halted(m) => r.ok(
            "release halt",
            format!(
                "{} is HALTED for {env} by {}: {}; no host applies it until `blog-agent unhalt {sha}` ({location})",
                sha.short(),
                m.who(),
                crate::sha::safe_text(&m.reason)
            ),
        ),
        HaltRead::Unreadable(e) => r.fail("release halt", e),
    }
}

/// `[rollout] lifecycle_hook`: this instance's group has that hook, for launches, and the role
/// may look it up. Off EC2 or outside a group the gate is off, which is not a failure.
async fn check_launch_gate(r: &mut Report, aws: &std::sync::Arc<crate::outside::aws::Aws>, hook: &str) {
    const NAME: &str = "launch gate";
    let instance_id = match Imds::new().instance_id().await {
        Ok(id) => id,
        Err(why) => return r.skip(NAME, &format!("no EC2 instance id ({why}): the gate is off on this host")),
    };
    let api = crate::outside::autoscaling::AutoScaling::with_aws(aws);
    let membership = match api.membership(&instance_id).await {
        Ok(Some(m)) => m,
        Ok(None) => {
            return r.ok(NAME, format!("{instance_id} is in no Auto Scaling group: the gate is off on this host"))
        }
        Err(e) => return r.fail(NAME, e),
    };
    let found = match api.hook(&membership.group, hook).await {
        Ok(found) => found,
        Err(e) => return r.fail(NAME, e),
    };
    match crate::outside::autoscaling::launch_hook(&membership.group, hook, found) {
        Ok(h) => r.ok(
            NAME,
            format!(
                "hook {hook:?} of group {:?} (launching; heartbeat timeout {} s, default {}); {instance_id} is {}",
                membership.group,
                h.heartbeat_timeout.as_secs(),
                h.default_result,
                membership.state
            ),
        ),
        Err(problem) => r.fail(NAME, problem),
    }
}

const LIVE_RESTORE: &str = "docker live-restore";
const DISK: &str = "disk";

/// Free space on Docker's data root against what a pull of the release needs: its size from
/// the registry's manifest plus `[reconcile] min_free_disk` ([`crate::outside::disk`]). A
/// release already on disk needs no pull; the margin is then only said, not failed.
async fn check_disk(
    r: &mut Report,
    settings: &Settings,
    engine: &Engine,
    release: Option<(&str, Option<&str>)>,
    creds: Option<&crate::outside::registry::RegistryCredentials>,
) {
    use crate::outside::disk::{self, enough_space, human, Verdict};
    let reading = match disk::measure(engine).await {
        Ok(reading) => reading,
        Err(e) => return r.fail(DISK, format!("cannot measure Docker's data root: {e}")),
    };
    let min_free = settings.reconcile.min_free_disk;
    let (root, free) = (reading.root.display(), human(reading.free));
    let margin = format!("[reconcile] min_free_disk {}", crate::config::format_size(min_free));
    let fix = "free space there (`docker system df` shows what Docker holds), grow the volume, or lower \
                       [reconcile] min_free_disk";
    let repo = &settings.image.repository;
    let Some((sha, digest)) = release else {
        return match enough_space(reading.free, None, min_free) {
            Verdict::Enough => r.ok(DISK, format!("{root}: {free} free ({margin})")),
            Verdict::Short { missing, .. } => r.fail(
                DISK,
                format!("{root}: {free} free, {} below {margin}: no release can be pulled; {fix}", human(missing)),
            ),
        };
    };
    let reference = digest.unwrap_or(sha);
    let image = match digest {
        Some(digest) => format!("{repo}@{digest}"),
        None => repo.reference(sha),
    };
    if let Ok(Some(_)) = engine.image(&image, &repo.to_string()).await {
        return match enough_space(reading.free, None, min_free) {
            Verdict::Enough => r.ok(DISK, format!("{root}: {free} free ({margin}); the release's image is on disk")),
            Verdict::Short { missing, .. } => r.warn(
                DISK,
                format!(
                    "{root}: {free} free, {} below {margin}: the release's image is on disk, but the next \
                     release will not be pulled; {fix}",
                    human(missing)
                ),
            ),
        };
    }
    let (size, size_note) = match creds {
        Some(creds) => match crate::outside::manifest::image_size(&repo.registry, &repo.path, reference, creds).await {
            Ok(size) => (Some(size), format!("{} for the image (from its manifest)", human(size))),
            Err(e) => (None, format!("the image's size is unknown ({e}), so {margin} alone")),
        },
        None => (None, format!("the image's size is unknown (no ECR token), so {margin} alone")),
    };
    match enough_space(reading.free, size, min_free) {
        Verdict::Enough => r.ok(
            DISK,
            format!(
                "{root}: {free} free; pulling {image} needs {} ({size_note} + {margin})",
                human(size.unwrap_or(0) + min_free)
            ),
        ),
        Verdict::Short { need, missing } => r.fail(
            DISK,
            format!(
                "{root}: {free} free, but pulling {image} needs {} ({size_note}{}), {} short: the agent removes the \
                 images this host does not need, and if that is not enough it does not pull (the running version \
                 keeps serving); {fix}",
                human(need),
                if size.is_some() { format!(" + {margin}") } else { String::new() },
                human(missing)
            ),
        ),
    }
}

/// dockerd's `live-restore`: with it, a Docker upgrade or restart (a `dnf upgrade`,
/// unattended-upgrades) keeps the blog container running, and the traffic switch's rules
/// (kernel state) keep sending it requests; without it dockerd stops every container when it
/// stops, and every request fails until it has started them again.
async fn check_live_restore(r: &mut Report, engine: &Engine) {
    match engine.live_restore().await {
        Ok(true) => r.ok(LIVE_RESTORE, "on: a Docker upgrade or restart keeps the blog running"),
        Ok(false) => r.warn(
            LIVE_RESTORE,
            "off: when dockerd stops (a Docker package upgrade, a restart), it stops the blog too, and every \
             request fails until it has started it again (seconds); add \"live-restore\": true to \
             /etc/docker/daemon.json (keeping its other keys), then `systemctl reload docker` (no restart needed)",
        ),
        Err(e) => r.fail(LIVE_RESTORE, e),
    }
}

/// Switch mode: the agent can read and write netfilter, Docker's chains are where our FORWARD
/// accept goes, loopback clients can be DNATed out to docker0, and the chains hold no other
/// agent's rules.
async fn check_traffic_switch(r: &mut Report, settings: &Settings, engine: Option<&Engine>) {
    let netfilter = match Netfilter::with_prefix(&settings.traffic.chains) {
        Ok(n) => n,
        Err(e) => return r.fail("traffic switch", e),
    };
    match netfilter.docker_layout().await {
        Ok(layout) if layout.docker_user && layout.forward_jumps_to_docker_user => {
            let version = netfilter.version().await.unwrap_or_else(|_| "iptables".into());
            r.ok("traffic switch", format!("{version}; Docker's DOCKER-USER chain is in FORWARD"));
        }
        Ok(layout) if !layout.docker_user => r.fail(
            "traffic switch",
            "no DOCKER-USER chain in this iptables backend: dockerd uses the other one (iptables-legacy vs \
             iptables-nft); make `iptables` the alternative dockerd uses (update-alternatives --config iptables), \
             or set [traffic] mode = \"publish\"",
        ),
        Ok(_) => r.fail(
            "traffic switch",
            "FORWARD does not jump to DOCKER-USER: restart dockerd so it rebuilds its chains, or set [traffic] mode \
             = \"publish\"",
        ),
        Err(e) => r.fail(
            "traffic switch",
            format!("{e}: the agent needs CAP_NET_ADMIN and iptables (run check as root), or set [traffic] mode = \"publish\""),
        ),
    }
    check_chain_owner(r, settings, engine).await;
    // The same rule the switch uses to decide it needs route_localnet.
    let loopback = crate::pass::switch::mappings(&settings.container.ports).iter().any(Mapping::takes_loopback);
    if loopback {
        let bridge = netfilter.bridge();
        match netfilter.route_localnet().await {
            Some(true) => r.ok("route_localnet", format!("{bridge}: 1 (loopback clients are switched too)")),
            Some(false) => r.fail(
                "route_localnet",
                format!(
                    "{bridge}: 0: clients on 127.0.0.1 get nothing; the package's /usr/lib/sysctl.d/60-blog-agent.conf \
                     sets it: `sysctl -w net.ipv4.conf.{bridge}.route_localnet=1`"
                ),
            ),
            None if !std::path::Path::new("/proc/sys/net").exists() => r.skip(
                "route_localnet",
                &format!(
                    "{bridge}: /proc/sys is hidden here (the unit's ProcSubset=pid); the unit's ExecStartPre sets it at \
                     every start; run `blog-agent check` from a shell to read it"
                ),
            ),
            None => r.skip("route_localnet", &format!("cannot read it for {bridge}: is it up?")),
        }
    }
}

/// `[traffic] chains` hold no rules of another agent on this host (which the agent would refuse
/// to take over).
async fn check_chain_owner(r: &mut Report, settings: &Settings, engine: Option<&Engine>) {
    const NAME: &str = "traffic chains";
    let chains = &settings.traffic.chains;
    let netfilter = match engine {
        Some(engine) => crate::pass::switch::netfilter(settings, engine),
        None => Netfilter::with_prefix(chains).and_then(|n| n.with_owner(&settings.container.name, None)),
    };
    let netfilter = match netfilter {
        Ok(n) => n,
        Err(e) => return r.fail(NAME, e),
    };
    match netfilter.check_owner().await {
        Ok(()) => r.ok(
            NAME,
            format!("{chains}-* hold no other agent's rules (ours are marked blog-agent:{})", settings.container.name),
        ),
        Err(e @ crate::outside::netfilter::NetfilterError::Owned { .. }) => r.fail(NAME, e),
        // iptables itself failing is the `traffic switch` line's to report.
        Err(e) => r.skip(NAME, &format!("cannot read the chains: {e}")),
    }
}

async fn check_ports(r: &mut Report, settings: &Settings, engine: Option<&Engine>) {
    let ours = match engine {
        Some(engine) => {
            engine.container(&settings.container.name).await.ok().flatten().filter(|c| c.running && c.is_managed())
        }
        None => None,
    };
    for p in &settings.container.ports {
        let ip = p.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let name = format!("host port {p}");
        match TcpListener::bind((ip, p.host_port)) {
            Ok(_) => r.ok(&name, "free"),
            Err(_) if ours.is_some() => r.ok(&name, format!("held by our container {}", settings.container.name)),
            Err(e) => match port_problem(&e, ip, p.host_port) {
                PortProblem::CannotTell(why) => r.skip(&name, &why),
                PortProblem::Fails(why) => r.fail(&name, why),
            },
        }
    }
}

enum PortProblem {
    /// This user cannot test the port; that says nothing about the port.
    CannotTell(String),
    Fails(String),
}

/// Why binding `ip:port` failed, in the operator's terms. Only "address in use" means another
/// process holds it: a non-root `check` may not bind a port below 1024 at all (Docker, which
/// runs as root, can), and an address that is not this host's can never be published.
fn port_problem(e: &std::io::Error, ip: IpAddr, port: u16) -> PortProblem {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => PortProblem::CannotTell(format!(
            "cannot test it as this user ({e}): ports below 1024 need root to bind; Docker binds it for the \
             container, so run `sudo blog-agent check` to test it"
        )),
        std::io::ErrorKind::AddrInUse => PortProblem::Fails(format!(
            "{e}: another process holds it; find it with `ss -ltnp 'sport = :{port}'`, stop it or change \
             [container] ports"
        )),
        std::io::ErrorKind::AddrNotAvailable => {
            PortProblem::Fails(format!("{e}: {ip} is not an address of this host; fix [container] ports"))
        }
        _ => PortProblem::Fails(format!("cannot bind {ip}:{port}: {e}")),
    }
}

/// The `s3 object` line for a failed read. S3 reports a KMS key the role may not use as
/// `AccessDenied` too; the message (or a `KMS.*` code) tells them apart, and the fixes differ.
fn s3_failure(e: &ReleaseError) -> String {
    match e {
        ReleaseError::AccessDenied { location, detail } if mentions_kms(detail) => format!(
            "KMS denied decrypting {location}: S3 allowed the read, but the object is encrypted with a KMS key \
             the instance role may not use; grant the role kms:Decrypt on that key (in its IAM policy, and the \
             key policy must allow it) ({detail})"
        ),
        ReleaseError::AccessDenied { location, detail } => format!(
            "S3 denied reading {location}: the role lacks s3:GetObject on it, or the object is missing (without \
             s3:ListBucket S3 answers 403, not 404); check CI published it and the role's S3 policy ({detail})"
        ),
        other => other.to_string(),
    }
}

/// Whether an S3 error names KMS: a `kms:` action, a `KMS.*` error code, or the "ciphertext
/// refers to a customer master key" wording. Request ids are alphanumeric and base64, so
/// they cannot match `kms:`, `kms.` or `kms `.
fn mentions_kms(detail: &str) -> bool {
    let lower = detail.to_ascii_lowercase();
    ["kms:", "kms.", "kms ", "aws kms", "ciphertext", "customer master key"].iter().any(|m| lower.contains(m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outside::release::ObjectLocation;

    fn denied(detail: &str) -> ReleaseError {
        ReleaseError::AccessDenied {
            location: ObjectLocation { bucket: "blog-artifacts".into(), key: "staging/stagebuild.txt".into() },
            detail: detail.into(),
        }
    }

    #[test]
    fn kms_access_denied_is_named_apart_from_s3_access_denied() {
        let kms = [
            "service error: AccessDenied: User: arn:aws:sts::123456789012:assumed-role/blog/i-0 is not authorized \
             to perform: kms:Decrypt on resource: arn:aws:kms:us-east-1:123456789012:key/ec0a605d because no \
             identity-based policy allows the kms:Decrypt action",
            "service error: KMS.DisabledException: arn:aws:kms:us-east-1:1:key/x is disabled.",
            "service error: AccessDenied: The ciphertext refers to a customer master key that does not exist, \
             does not exist in this region, or you are not allowed to access.",
        ];
        for detail in kms {
            let line = s3_failure(&denied(detail));
            assert!(line.starts_with("KMS denied decrypting s3://blog-artifacts/staging/stagebuild.txt"), "{line}");
            assert!(line.contains("grant the role kms:Decrypt on that key"), "{line}");
        }
        let plain = s3_failure(&denied(
            "service error: AccessDenied: Access Denied (request id 4442587FB7D0A2F9, extended id \
             KMSx9Zb+kmsQ/aKmS1)",
        ));
        assert!(plain.starts_with("S3 denied reading s3://blog-artifacts/staging/stagebuild.txt"), "{plain}");
        assert!(plain.contains("s3:GetObject") && !plain.contains("kms:Decrypt"), "{plain}");
    }

    #[test]
    fn a_privileged_port_is_not_blamed_on_another_process() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let denied = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let PortProblem::CannotTell(why) = port_problem(&denied, ip, 80) else { panic!("a failure") };
        assert!(why.contains("ports below 1024 need root") && !why.contains("another process"), "{why}");
        let in_use = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let PortProblem::Fails(why) = port_problem(&in_use, ip, 80) else { panic!("not a failure") };
        assert!(why.contains("another process holds it") && why.contains("sport = :80"), "{why}");
        let elsewhere = std::io::Error::from(std::io::ErrorKind::AddrNotAvailable);
        let PortProblem::Fails(why) = port_problem(&elsewhere, "10.9.9.9".parse().unwrap(), 80) else { panic!() };
        assert!(why.contains("10.9.9.9 is not an address of this host"), "{why}");
    }

    /// The name of every line `check` can print, read from this file: the first string argument
    /// of each `r.ok`/`r.fail`/`r.skip`/`r.warn` call and each `&str` constant.
    fn line_names() -> Vec<String> {
        let source = include_str!("check.rs");
        let source = &source[..source.find("#[cfg(test)]").unwrap()];
        let mut names = vec!["host port".to_owned()];
        for marker in ["r.ok(", "r.fail(", "r.skip(", "r.warn(", ": &str = "] {
            for (at, _) in source.match_indices(marker) {
                let rest = source[at + marker.len()..].trim_start();
                if let Some(quoted) = rest.strip_prefix('"') {
                    let name = &quoted[..quoted.find('"').unwrap()];
                    if !names.iter().any(|n| n == name) {
                        names.push(name.to_owned());
                    }
                }
            }
        }
        names
    }

    #[test]
    fn help_and_runbook_name_every_line() {
        let names = line_names();
        for expected in ["config", "release signature", "launch gate", "traffic chains", "docker live-restore"] {
            assert!(names.iter().any(|n| n == expected), "the reader missed {expected}: {names:?}");
        }
        let mut cli = <crate::cli::Cli as clap::CommandFactory>::command();
        cli.build();
        let help = cli.find_subcommand("check").unwrap().get_long_about().unwrap().to_string();
        let runbook = include_str!("../../docs/operations.md");
        for name in &names {
            assert!(help.contains(name.as_str()), "check --help does not list the {name:?} line");
            assert!(runbook.contains(&format!("`{name}`")), "docs/operations.md does not list the {name:?} line");
        }
    }
}
