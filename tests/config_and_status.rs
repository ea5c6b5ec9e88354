//! What `check`, `status`, `pause` and the config validation tell an operator: configs that
//! would fail later are refused up front, `status` says what it could not see (a non-root user
//! and the 0700 state dir) and compares a pinned host with its pin, `check` keeps every line
//! and names the right cause.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use common::*;

/// The uid and gid a non-root operator runs as (`nobody`).
const NOBODY: u32 = 65534;

/// Runs `cmd` through `setpriv` as uid/gid [`NOBODY`], in `groups` only (e.g. Docker's).
fn as_nobody(cmd: &Command, groups: &[u32]) -> Run {
    let mut wrapped = Command::new("setpriv");
    wrapped.arg(format!("--reuid={NOBODY}")).arg(format!("--regid={NOBODY}"));
    if groups.is_empty() {
        wrapped.arg("--clear-groups");
    } else {
        let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
        wrapped.arg(format!("--groups={}", groups.join(",")));
    }
    wrapped.arg("--").arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    // Root's home is not readable by nobody; nothing there is needed.
    wrapped.env("HOME", "/nonexistent").env_remove("SUDO_USER").env("USER", "nobody");
    let out = wrapped.output().expect("run setpriv");
    Run::of(out)
}

/// The group that may use the Docker socket, so a non-root `status` still sees the container.
fn docker_group() -> u32 {
    std::fs::metadata("/var/run/docker.sock").expect("docker socket").gid()
}

fn output_of(cmd: &mut Command) -> Run {
    let out = cmd.output().expect("run blog-agent");
    Run::of(out)
}

/// The line of `check` output for `name`.
fn check_line<'a>(run: &'a Run, name: &str) -> &'a str {
    run.stdout
        .lines()
        .find(|l| l.get(5..).is_some_and(|rest| rest.starts_with(&format!("{name}:"))))
        .unwrap_or_else(|| panic!("no `{name}` line in:\n{}", run.output()))
}

/// The host's config with `[health] url` removed, so the default (`http://127.0.0.1:80/`)
/// applies while the container publishes only `127.0.0.1:<port>:80`: the review's case.
fn write_default_health_url(host: &Host) {
    host.write_config("");
    let text = std::fs::read_to_string(&host.config).unwrap();
    let line = format!("url = \"http://127.0.0.1:{}/\"\n", host.port);
    assert!(text.contains(&line));
    std::fs::write(&host.config, text.replace(&line, "")).unwrap();
}

#[test]
fn health_url_on_a_port_the_container_does_not_publish_is_a_config_error() {
    let host = Host::new("cfg_health_port");
    write_default_health_url(&host);
    for args in [&["--env", "staging", "sync"][..], &["--env", "staging", "check"]] {
        let run = host.agent(args);
        assert_eq!(run.code, 78, "{args:?}: {}", run.output());
        let want = format!(
            "[health] url = \"http://127.0.0.1:80/\": port 80 is not a host port the container publishes \
             ([container] ports = [\"127.0.0.1:{port}:80\"]); probe a published one, e.g. \"http://127.0.0.1:{port}/\"",
            port = host.port
        );
        assert!(run.output().contains(&want), "{args:?}: {}", run.output());
    }
    // `run` refuses to start (78: systemd does not restart-loop on it).
    let mut agent = host.start_agent(&[]);
    assert_eq!(agent.wait_exit(Duration::from_secs(10)), 78, "{}", agent.logs());
    assert!(agent.logs().contains("port 80 is not a host port the container publishes"), "{}", agent.logs());
    assert!(host.containers().is_empty(), "nothing was started");
}

/// SIGHUP with such a config: refused, the old settings and the serving container stay (it
/// used to stop the old container, fail the probe and roll back, every pass).
#[test]
fn sighup_with_an_unreachable_health_url_keeps_the_old_config_and_the_container() {
    let host = Host::new("cfg_health_hup");
    host.write_config("[reconcile]\ninterval = \"1s\"\njitter = \"0s\"\n");
    let v1 = host.release("good");
    let mut agent = host.start_agent(&[]);
    host.wait_deployed(&v1, Duration::from_secs(60));
    let (id, _, _) = host.container_state().unwrap();

    write_default_health_url(&host);
    agent.signal("HUP");
    agent.wait_log("port 80 is not a host port the container publishes", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(3));
    agent.assert_alive();
    assert_eq!(host.container_state().unwrap().0, id, "the serving container was left alone");
    host.assert_serves(&v1);
    agent.stop_with("TERM");
}

#[test]
fn settings_that_would_fail_later_exit_78_naming_file_key_and_value() {
    let host = Host::new("cfg_invalid");
    // (text in the base config, its replacement, what the error says)
    let cases = [
        (
            "stop_timeout = \"1s\"",
            "stop_timeout = \"500ms\"",
            "[container] stop_timeout = \"500ms\": must be a whole number of seconds",
        ),
        (
            "[reconcile]\n",
            "[reconcile]\ninterval = \"5s\"\njitter = \"6s\"\n",
            "[reconcile] jitter = \"6s\": must not exceed [reconcile] interval (5s)",
        ),
        ("[image]\n", "[image]\npull_timeout = \"0s\"\n", "[image] pull_timeout = \"0s\": must be longer than zero"),
        (
            "[environment]\n",
            "[environment]\ntag = \"Env?x=1\"\n",
            "[environment] tag = \"Env?x=1\": expected an EC2 tag key readable over instance metadata",
        ),
        ("[environment]\n", "[environment]\ntag = \"My Env\"\n", "[environment] tag = \"My Env\""),
    ];
    for (from, to, want) in cases {
        host.write_config("[reconcile]\n");
        let text = std::fs::read_to_string(&host.config).unwrap();
        assert!(text.contains(from), "{from:?} not in\n{text}");
        std::fs::write(&host.config, text.replacen(from, to, 1)).unwrap();
        let run = host.agent(&["--env", "staging", "check"]);
        assert_eq!(run.code, 78, "{}", run.output());
        let line = check_line(&run, "config");
        assert!(line.starts_with("FAIL config: config file "), "{line}");
        assert!(line.contains(&host.config.display().to_string()) && line.contains(want), "{line}\nwant: {want}");
    }
    // Container names: one character, or hex digits only (Docker matches those against
    // other containers' ID prefixes).
    for name in ["b", "cafe"] {
        host.write_config("");
        let text = std::fs::read_to_string(&host.config).unwrap();
        let text = text.replace(&format!("name = \"{}\"", host.container), &format!("name = \"{name}\""));
        std::fs::write(&host.config, text).unwrap();
        let run = host.agent(&["--env", "staging", "sync"]);
        assert_eq!(run.code, 78, "{}", run.output());
        assert!(run.stderr.contains(&format!("[container] name = \"{name}\"")), "{}", run.stderr);
    }
}

#[test]
fn status_as_a_non_root_user_says_it_cannot_read_the_state() {
    let host = Host::new("status_nonroot");
    let v1 = host.release("good");
    assert_eq!(host.sync().code, 0);
    assert_eq!(host.agent(&["pause", "--reason", "INC-8"]).code, 0);
    host.release("good"); // S3 moves on; the paused host stays on v1.
    std::fs::set_permissions(host.state_dir(), std::fs::Permissions::from_mode(0o700)).unwrap();

    let status = host.command(&["--env", "staging", "status"]);
    let run = as_nobody(&status, &[docker_group()]);
    assert!(
        run.stdout.contains("cannot read state (permission denied on ") && run.stdout.contains("run as root"),
        "{}",
        run.output()
    );
    assert!(!run.stdout.contains("automatic"), "a paused host shown as following S3:\n{}", run.stdout);
    assert!(run.stdout.contains(&v1), "the container is still shown: {}", run.stdout);
    assert_eq!(run.code, 1, "{}", run.output());

    let json = as_nobody(&host.command(&["--env", "staging", "status", "--json"]), &[docker_group()]);
    let s: serde_json::Value = serde_json::from_str(&json.stdout).unwrap_or_else(|e| panic!("{e}: {}", json.output()));
    assert!(s["state_error"].as_str().unwrap().contains("permission denied"), "{s}");
    assert!(s["paused"].is_null() && s["last_pass"].is_null(), "{s}");
    assert_eq!(s["converged"], false);

    // Root reads it: paused, held on v1, converged.
    let run = host.agent(&["--env", "staging", "status", "--json"]);
    let s: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(s["paused"]["reason"], "INC-8");
    assert!(s["state_error"].is_null(), "{s}");
    assert_eq!((s["target"]["sha"].as_str(), s["target"]["source"].as_str()), (Some(v1.as_str()), Some("paused")));
    assert_eq!((run.code, &s["converged"]), (0, &serde_json::json!(true)), "{s}");
}

#[test]
fn status_on_a_pinned_host_compares_with_the_pinned_sha() {
    let host = Host::new("status_pinned");
    let v1 = host.release("good");
    assert_eq!(host.sync().code, 0);
    let pinned = host.publish("good");
    let run = host.agent(&["--env", "staging", "sync", "--sha", &pinned]);
    assert_eq!(run.code, 0, "{}", run.output());
    host.assert_serves(&pinned);

    let run = host.agent(&["--env", "staging", "status", "--json"]);
    let s: serde_json::Value = serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.output()));
    assert_eq!(s["desired"]["sha"], v1.as_str(), "S3 still says v1");
    assert_eq!(s["paused"]["pinned_sha"], pinned.as_str());
    assert_eq!((s["target"]["sha"].as_str(), s["target"]["source"].as_str()), (Some(pinned.as_str()), Some("pinned")));
    assert_eq!(s["converged"], true, "{s}");
    assert_eq!(run.code, 0, "{}", run.output());
    // Which agent answers: a fleet mid-upgrade runs several (docs/operations.md).
    let commit = s["agent"]["commit"].as_str().unwrap_or_default().to_owned();
    assert_eq!(s["agent"]["version"], env!("CARGO_PKG_VERSION"), "{s}");
    assert!(!commit.is_empty(), "{s}");

    let run = host.agent(&["--env", "staging", "status"]);
    let agent_line = format!("agent          blog-agent {} (commit {commit})\n", env!("CARGO_PKG_VERSION"));
    assert!(run.stdout.starts_with(&agent_line), "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!("target         {pinned} (pinned by `blog-agent sync --sha`)")),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("converged      yes"), "{}", run.stdout);
}

/// The pause record names the person: it recorded the process id, labelled "uid".
#[test]
fn pause_records_the_real_uid_and_the_user_name() {
    let host = Host::new("pause_uid");
    let by = |run: &Run| {
        assert_eq!(run.code, 0, "{}", run.output());
        let text = std::fs::read_to_string(host.state_dir().join("pause.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["by"].as_str().unwrap().to_owned()
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let name_of = |uid: u32| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.get(2) == Some(&uid.to_string().as_str())).then(|| f[0].to_owned())
        })
    };
    let uid = std::fs::metadata("/proc/self").unwrap().uid();

    // No login variables at all: the uid is still the real one.
    let mut cmd = host.command(&["pause"]);
    cmd.env_remove("USER").env_remove("LOGNAME").env_remove("SUDO_USER").env_remove("SUDO_UID");
    let recorded = by(&output_of(&mut cmd));
    let want = match name_of(uid) {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    };
    assert_eq!(recorded, want);

    if uid == 0 {
        // sudo: the person behind it.
        let mut cmd = host.command(&["pause"]);
        cmd.env("SUDO_USER", "alice").env("SUDO_UID", "1000");
        assert_eq!(by(&output_of(&mut cmd)), "alice via sudo (uid 1000)");

        // Another user, who owns the state dir.
        std::os::unix::fs::chown(host.state_dir(), Some(NOBODY), Some(NOBODY)).unwrap();
        std::fs::remove_file(host.state_dir().join("pause.json")).unwrap();
        let recorded = by(&as_nobody(&host.command(&["pause"]), &[]));
        let name = name_of(NOBODY).map(|n| format!("{n} ")).unwrap_or_default();
        assert_eq!(recorded, format!("{name}(uid {NOBODY})"));
    }
}

#[test]
fn check_keeps_the_ecr_and_registry_lines_when_s3_fails() {
    let host = Host::new("check_no_s3");
    // No release object: the S3 line fails.
    let run = host.agent(&["--env", "staging", "check"]);
    assert_eq!(run.code, 1, "{}", run.output());
    assert!(check_line(&run, "s3 object").starts_with("FAIL"), "{}", run.stdout);
    assert_eq!(check_line(&run, "ecr token"), "ok   ecr token: obtained", "{}", run.stdout);
    assert!(check_line(&run, "registry").starts_with("skip registry: needs S3"), "{}", run.stdout);
}

/// A stand-in S3 that answers every request 403 with `code` and `message`, on loopback.
fn denying_s3(code: &'static str, message: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut client in listener.incoming().flatten() {
            let mut reader = BufReader::new(client.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let xml = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>{message}</Message>\
                 <RequestId>4442587FB7D0A2F9</RequestId></Error>"
            );
            let _ = write!(
                client,
                "HTTP/1.1 403 Forbidden\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
                 x-amz-request-id: 4442587FB7D0A2F9\r\nConnection: close\r\n\r\n{xml}",
                xml.len()
            );
        }
    });
    format!("http://127.0.0.1:{port}")
}

#[test]
fn check_names_kms_access_denied_apart_from_s3_access_denied() {
    let mut host = Host::new("check_kms");
    host.extra_env.push((
        "AWS_ENDPOINT_URL_S3".into(),
        denying_s3(
            "AccessDenied",
            "User: arn:aws:sts::123456789012:assumed-role/blog/i-0 is not authorized to perform: kms:Decrypt on \
             resource: arn:aws:kms:us-east-1:123456789012:key/ec0a605d because no identity-based policy allows the \
             kms:Decrypt action",
        ),
    ));
    let run = host.agent(&["--env", "staging", "check"]);
    let line = check_line(&run, "s3 object");
    assert!(line.starts_with("FAIL s3 object: KMS denied decrypting s3://"), "{}", run.output());
    assert!(line.contains("grant the role kms:Decrypt on that key"), "{line}");
    assert!(check_line(&run, "registry").starts_with("skip registry: needs S3"), "{}", run.stdout);

    host.extra_env.clear();
    host.extra_env.push(("AWS_ENDPOINT_URL_S3".into(), denying_s3("AccessDenied", "Access Denied")));
    let run = host.agent(&["--env", "staging", "check"]);
    let line = check_line(&run, "s3 object");
    assert!(line.starts_with("FAIL s3 object: S3 denied reading s3://"), "{}", run.output());
    assert!(line.contains("s3:GetObject") && !line.contains("kms:Decrypt"), "{line}");
}

#[test]
fn check_as_non_root_does_not_blame_another_process_for_a_privileged_port() {
    let host = Host::new("check_low_port");
    // A port below 1024 that nothing listens on: only the privilege stops nobody binding it.
    let low = (900..1000).find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok()).expect("a free port below 1024");
    host.write_config("");
    let text = std::fs::read_to_string(&host.config).unwrap().replace(&format!(":{}", host.port), &format!(":{low}"));
    std::fs::write(&host.config, text).unwrap();

    let run = as_nobody(&host.command(&["--env", "staging", "check"]), &[]);
    let line = check_line(&run, &format!("host port 127.0.0.1:{low}:80"));
    assert!(!line.contains("another process"), "{line}");
    assert!(line.starts_with("skip") && line.contains("ports below 1024 need root"), "{line}");
}

/// Why 5 of issue 17: two environments whose release keys share a folder would keep their
/// halts in one place, and a staging halt would act as production's. The configuration is
/// refused (exit 78) naming both keys and the setting that separates them.
#[test]
fn two_environments_whose_halts_share_a_folder_are_a_config_error() {
    let host = Host::new("cfg_shared_halts");
    host.write_config("[release.keys]\nstaging = \"releases/staging.txt\"\nproduction = \"releases/production.txt\"\n");
    let run = host.agent(&["--env", "staging", "status"]);
    assert_eq!(run.code, 78, "{}", run.output());
    for part in [
        "[rollout] halt_prefix",
        "[release.keys] production = \"releases/production.txt\"",
        "[release.keys] staging = \"releases/staging.txt\"",
        "halt_prefix = \"releases/halted/{environment}/\"",
    ] {
        assert!(run.stderr.contains(part), "{part} not in {}", run.stderr);
    }
    host.write_config(
        "[release.keys]\nstaging = \"releases/staging.txt\"\nproduction = \"releases/production.txt\"\n\
         [rollout]\nhalt_prefix = \"releases/halted/{environment}/\"\n",
    );
    assert_ne!(host.agent(&["--env", "staging", "status"]).code, 78);
}
