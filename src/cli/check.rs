//! `blog-agent check`: preflight doctor. One line per check, `ok` or `FAIL` with the fix;
//! exit 0 only when all pass. Changes nothing (the registry check asks for a manifest; no pull).

use std::net::{IpAddr, Ipv4Addr, TcpListener};

use aws_credential_types::provider::ProvideCredentials;
use clap::Args;

use super::{exit, Cli, Failure};
use crate::config::Settings;
use crate::engine::Engine;
use crate::environment::{self, EnvSource};
use crate::imds::Imds;
use crate::registry::{CredentialSource, Ecr};
use crate::release::{Fetched, ReleaseError, ReleaseSource, S3Releases};
use crate::sync::release_location;

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
                environment::EnvironmentError::Imds(crate::imds::ImdsError::TagMissing { .. }) => {
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

    let sdk = crate::aws::load().await;
    match sdk.region() {
        Some(region) => r.ok("aws region", region),
        None => r.fail("aws region", "none resolved: set AWS_REGION, or run on EC2 with IMDS reachable"),
    }
    match sdk.credentials_provider() {
        Some(p) => match p.provide_credentials().await {
            Ok(_) => r.ok("aws credentials", "resolved"),
            Err(e) => r.fail(
                "aws credentials",
                format!("{}: attach an instance role (or set AWS credentials)", crate::aws::describe(&e)),
            ),
        },
        None => r.fail("aws credentials", "no provider: attach an instance role"),
    }

    // One connection serves the registry check (Docker asks the registry for us) and the
    // Docker and port checks below.
    let engine = Engine::connect().await;
    if let Some(env) = &env {
        let location = release_location(&settings, &env.name);
        match S3Releases::new(&sdk).fetch(&location, None).await {
            Ok(Fetched::Changed(release)) => {
                r.ok("s3 object", &location);
                r.ok("release sha", &release.sha);
                check_registry(&mut r, &settings, &sdk, engine.as_ref().ok(), &release.sha.to_string()).await;
            }
            Ok(Fetched::Unchanged) => r.ok("s3 object", &location),
            Err(e @ ReleaseError::Invalid { .. }) => {
                r.ok("s3 object", &location);
                r.fail("release sha", e);
            }
            Err(e) => r.fail("s3 object", e),
        }
    } else {
        r.skip("s3 object", "environment unknown");
    }

    match &engine {
        Ok(engine) => {
            r.ok("docker", format!("reachable, API {}", engine.api_version()));
            check_ports(&mut r, &settings, Some(engine)).await;
        }
        Err(e) => {
            r.fail("docker", e);
            check_ports(&mut r, &settings, None).await;
        }
    }

    if r.failed == 0 {
        Ok(())
    } else {
        Err(Failure { code: exit::FAILED, message: format!("{} check(s) failed", r.failed) })
    }
}

async fn check_registry(
    r: &mut Report,
    settings: &Settings,
    sdk: &aws_config::SdkConfig,
    engine: Option<&Engine>,
    sha: &str,
) {
    let creds = match Ecr::new(sdk).credentials().await {
        Ok(c) => {
            r.ok("ecr token", "obtained");
            c
        }
        Err(e) => return r.fail("ecr token", e),
    };
    let Some(engine) = engine else {
        return r.skip("registry", "Docker unreachable (it asks the registry on our behalf)");
    };
    let reference = settings.image.repository.reference(sha);
    match engine.registry_has(&reference, &settings.image.repository.registry, &creds).await {
        Ok(digest) => r.ok("registry", format!("{reference} present ({digest})")),
        Err(e) => r.fail("registry", format!("{e}: has CI pushed this tag, and may the instance role pull it?")),
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
            Err(e) => r.fail(
                &name,
                format!("{e}: another process holds it; find it with `ss -ltnp 'sport = :{}'`", p.host_port),
            ),
        }
    }
}
