//! The blog container's bounds (`[container]` logs, privileges, capabilities, pids, memory, CPU,
//! read-only root) on the real stack: `docker inspect` of what the agent deployed shows them,
//! the project's real Apache image and the busybox one serve within the defaults, a changed
//! bound swaps the container on the next sync, and a bad value is a config error (exit 78).

mod common;

use std::process::Command;

use common::*;

/// The capabilities the defaults give back after dropping all of them.
const DEFAULT_CAP_ADD: &str = "CHOWN DAC_OVERRIDE KILL NET_BIND_SERVICE SETGID SETUID";

/// Writes the host's config with `keys` added to its `[container]` table (the harness's
/// `write_config` appends whole tables, and `[container]` is already one of them).
fn write_container_keys(host: &Host, keys: &str) {
    host.write_config("");
    let text = std::fs::read_to_string(&host.config).unwrap();
    let anchor = "stop_timeout = \"1s\"\n";
    assert!(text.contains(anchor), "the harness's [container] table changed: {text}");
    std::fs::write(&host.config, text.replacen(anchor, &format!("{anchor}{keys}\n"), 1)).unwrap();
}

/// `docker inspect -f FORMAT` of the serving container.
fn host_config(host: &Host, format: &str) -> String {
    inspect_present(&host.container, format)
}

fn sync_ok(host: &Host) {
    let run = host.sync();
    assert_eq!(run.code, 0, "sync: {}", run.output());
}

#[test]
fn the_default_bounds_are_applied_and_busybox_serves_within_them() {
    let host = Host::new("limits_defaults");
    let sha = host.release("good");
    sync_ok(&host);
    host.assert_serves(&sha);

    let log = host_config(&host, "{{.HostConfig.LogConfig.Type}} {{json .HostConfig.LogConfig.Config}}");
    assert_eq!(log, r#"json-file {"max-file":"3","max-size":"10485760"}"#);
    assert_eq!(host_config(&host, "{{json .HostConfig.SecurityOpt}}"), r#"["no-new-privileges"]"#);
    assert_eq!(host_config(&host, "{{json .HostConfig.CapDrop}}"), r#"["ALL"]"#);
    assert_eq!(host_config(&host, "{{range .HostConfig.CapAdd}}{{.}} {{end}}").trim(), DEFAULT_CAP_ADD);
    assert_eq!(host_config(&host, "{{.HostConfig.PidsLimit}}"), "256");
    assert_eq!(
        host_config(&host, "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.ReadonlyRootfs}}"),
        "0 0 false"
    );
    assert_eq!(host_config(&host, "{{json .HostConfig.Tmpfs}}"), "null");
    // The kernel's view: no capability beyond the six, and no new privileges, for PID 1.
    let pid = host_config(&host, "{{.State.Pid}}");
    let proc_status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        proc_status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or_default().to_owned()
    };
    // CHOWN 0, DAC_OVERRIDE 1, KILL 5, SETGID 6, SETUID 7, NET_BIND_SERVICE 10.
    assert_eq!(field("CapBnd:"), "00000000000004e3", "{proc_status}");
    assert_eq!(field("NoNewPrivs:"), "1");

    // `status` reports them as Docker has them, in both forms.
    let status = host.agent(&["--env", "staging", "status"]);
    let line = status.stdout.lines().find(|l| l.starts_with("bounds")).unwrap_or_default().to_owned();
    assert!(
        line.contains("json-file 10MiB x 3, no-new-privileges, caps -ALL +CHOWN")
            && line.contains("pids 256, memory unlimited, cpus unlimited, root writable"),
        "{}",
        status.output()
    );
    let json = host.agent(&["--env", "staging", "status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(&json.stdout).unwrap_or_else(|e| panic!("{e}: {json:?}"));
    let bounds = &json["container"]["bounds"];
    assert_eq!(bounds["log_options"]["max-size"], "10485760", "{json}");
    assert_eq!(bounds["pids_limit"], 256);
    assert_eq!(bounds["no_new_privileges"], true);
    assert_eq!(bounds["memory"], serde_json::Value::Null);
}

#[test]
fn a_changed_bound_swaps_the_container_on_the_next_sync() {
    let host = Host::new("limits_swap");
    let sha = host.release("good");
    sync_ok(&host);
    let before = host.container_state().expect("deployed").0;

    // Memory, CPU, a lower pids limit and a read-only root with the default tmpfs paths.
    write_container_keys(&host, "memory = \"64MiB\"\ncpus = 0.5\npids_limit = 64\nread_only = true\n");
    sync_ok(&host);
    let after = host.container_state().expect("deployed").0;
    assert_ne!(before, after, "a changed bound replaces the container");
    host.assert_serves(&sha);
    assert_eq!(host.label("io.blog-agent.sha"), sha, "the same release");
    assert_eq!(
        host_config(&host, "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.PidsLimit}}"),
        "67108864 500000000 64"
    );
    assert_eq!(host_config(&host, "{{.HostConfig.ReadonlyRootfs}}"), "true");
    let tmpfs = host_config(&host, "{{json .HostConfig.Tmpfs}}");
    let tmpfs: std::collections::BTreeMap<String, String> = serde_json::from_str(&tmpfs).unwrap();
    assert_eq!(
        tmpfs.keys().map(String::as_str).collect::<Vec<_>>(),
        ["/run", "/run/lock", "/tmp", "/usr/local/apache2/logs"]
    );
    assert!(tmpfs.values().all(|o| o == "rw,noexec,nosuid,nodev,size=64m"), "{tmpfs:?}");
    // The root is read-only indeed: busybox cannot write beside its pages, but can in /tmp.
    let write = |path: &str| docker(&["exec", &host.container, "/bin/busybox", "touch", path]).status.success();
    assert!(!write("/var/www/x"), "the root filesystem is writable");
    assert!(write("/tmp/x"), "the tmpfs is not writable");

    // Nothing changed: the next sync keeps the container.
    sync_ok(&host);
    assert_eq!(host.container_state().expect("deployed").0, after, "an unchanged spec is kept");

    // The log rotation is a bound too.
    write_container_keys(&host, "log_driver = \"local\"\nlog_max_size = \"1MiB\"\nlog_max_files = 2\n");
    sync_ok(&host);
    assert_ne!(host.container_state().expect("deployed").0, after);
    host.assert_serves(&sha);
    let log = host_config(&host, "{{.HostConfig.LogConfig.Type}} {{json .HostConfig.LogConfig.Config}}");
    assert_eq!(log, r#"local {"max-file":"2","max-size":"1048576"}"#);
    host.assert_only_the_serving_container();
}

#[test]
fn a_bad_bound_is_a_config_error_naming_the_key_and_the_fix() {
    let host = Host::new("limits_bad");
    let cases = [
        ("pids_limit = -3", "[container] pids_limit = \"-3\": expected the most processes", "or 0 for no limit"),
        ("memory = \"lots\"", "[container] memory = \"lots\": expected a size such as \"512MiB\"", "KiB"),
        ("cap_add = [\"NET_BIND\"]", "[container] cap_add[0] = \"NET_BIND\"", "NET_BIND_SERVICE"),
        ("tmpfs = [\"/run\"]", "[container] tmpfs = \"/run\"", "set read_only = true"),
    ];
    for (keys, names, fix) in cases {
        write_container_keys(&host, keys);
        for command in ["sync", "check"] {
            let run = host.agent(&["--env", "staging", command]);
            assert_eq!(run.code, 78, "{command} with {keys}: {}", run.output());
            let line = run.output().lines().find(|l| l.contains("[container]")).unwrap_or_default().to_owned();
            assert!(line.contains(names) && line.contains(fix), "{command} with {keys}: {}", run.output());
            assert!(line.contains(&host.config.display().to_string()), "names the file: {line}");
        }
    }
    assert!(host.containers().is_empty(), "nothing was deployed");
}

/// The project's Apache image (Debian apache2, scripts/build-apache-image.sh).
fn apache_image() -> String {
    let out = Command::new("bash").arg(repo_root().join("scripts/build-apache-image.sh")).output().unwrap();
    assert!(out.status.success(), "build-apache-image.sh: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Builds `dockerfile` (its `FROM` the Apache image) as this host's image of a new SHA and
/// pushes it, the local tag removed so the agent pulls it; returns the SHA.
fn push_apache(host: &Host, dockerfile: &str) -> String {
    let sha = unique_sha(&host.id);
    let reference = host.image(&sha);
    let ctx = host.path().join(format!("apache-{sha}"));
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile.replace("$SHA", &sha)).unwrap();
    let user = std::env::var("ECR_TOKEN_USER").unwrap_or_else(|_| "AWS".into());
    let password = std::env::var("ECR_TOKEN_PASSWORD").unwrap_or_else(|_| ECR_PASSWORD.into());
    let login =
        Command::new("docker").args(["login", "-u", &user, "--password", &password, &host.registry]).output().unwrap();
    assert!(login.status.success(), "docker login: {}", String::from_utf8_lossy(&login.stderr));
    docker_ok(&["build", "--no-cache", "-q", "-t", &reference, &ctx.display().to_string()]);
    docker_ok(&["push", "-q", &reference]);
    docker_ok(&["rmi", &reference]);
    sha
}

/// Removes the host's containers and its pulled images: Apache test images are tags of a
/// 227 MB image, not worth leaving behind on a shared machine.
fn forget_images(host: &Host) {
    remove_labelled(&host.id);
    let repository = format!("{}/{}", host.registry, host.repo);
    let tags = docker_ok(&["images", "--format", "{{.Repository}}:{{.Tag}}", &repository]);
    for tag in tags.lines() {
        let out = docker(&["rmi", tag]);
        if !out.status.success() {
            eprintln!("cleanup: docker rmi {tag}: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
}

/// Apache serves its page and its CGI (the cgid daemon is the part that needs CHOWN,
/// DAC_OVERRIDE and KILL), logs nothing worse than a notice, and stops gracefully: a parent
/// that cannot signal its CGI daemon waits until Docker's SIGKILL (exit 137, not 0).
fn assert_apache_serves(host: &Host, sha: &str) {
    host.assert_serves(sha);
    let (status, body) = http_get(host.port, "/cgi-bin/slow").expect("the CGI answers");
    assert_eq!((status, body.trim()), (200, format!("slow {sha}").as_str()), "CGI");
    for _ in 0..20 {
        assert_eq!(host.page().map(|(s, _)| s), Some(200));
    }
    let name = &host.container;
    let stopped = docker(&["stop", "-t", "10", name]);
    assert!(stopped.status.success(), "docker stop: {}", String::from_utf8_lossy(&stopped.stderr));
    assert_eq!(inspect_present(name, "{{.State.ExitCode}}"), "0", "Apache did not stop by itself");
    let logs = docker(&["logs", name]);
    let logs = format!("{}{}", String::from_utf8_lossy(&logs.stdout), String::from_utf8_lossy(&logs.stderr));
    let worse: Vec<&str> = logs
        .lines()
        .filter(|l| [":error]", ":crit]", ":alert]", ":emerg]", ":warn]"].iter().any(|level| l.contains(level)))
        .collect();
    assert!(worse.is_empty(), "Apache complained within the bounds:\n{}", worse.join("\n"));
    assert!(logs.contains("caught SIGWINCH, shutting down gracefully"), "{logs}");
}

#[test]
fn the_real_apache_image_serves_within_the_default_bounds() {
    let image = apache_image();
    let host = Host::new("limits_apache");
    // The image as it is; the page names the version from the container's environment.
    let sha = push_apache(&host, &format!("FROM {image}\n"));
    write_container_keys(&host, &format!("env = {{ BLOG_VERSION = \"{sha}\", SLOW_SECONDS = \"0\" }}"));
    host.put_release("staging", &sha);
    sync_ok(&host);
    assert_eq!(host_config(&host, "{{json .HostConfig.CapDrop}}"), r#"["ALL"]"#);
    assert_eq!(host_config(&host, "{{.HostConfig.PidsLimit}}"), "256");
    assert_apache_serves(&host, &sha);
    forget_images(&host);
}

#[test]
fn the_real_apache_image_serves_read_only_with_the_default_tmpfs() {
    let image = apache_image();
    let host = Host::new("limits_apache_ro");
    // A read-only image keeps its pages in the image, its logs on stdout (Debian's
    // other_vhosts_access.log is a file under /var/log/apache2: disabled) and starts as
    // apache2ctl does on a fresh /run: the run directory, its `socks` the user's, the lock dir.
    const READ_ONLY_READY: &str = r#"FROM $IMAGE
RUN printf '<html><body><h1>blog</h1><p>version %s</p></body></html>\n' $SHA >/var/www/html/index.html \
 && printf '%s\n' $SHA >/var/www/version && a2disconf -q other-vhosts-access-log
ENTRYPOINT ["/bin/sh", "-c", ". /etc/apache2/envvars && mkdir -p \"$APACHE_RUN_DIR/socks\" \"$APACHE_LOCK_DIR\" && chown \"$APACHE_RUN_USER\" \"$APACHE_RUN_DIR/socks\" && exec /usr/sbin/apache2 -DFOREGROUND"]
"#;
    let sha = push_apache(&host, &READ_ONLY_READY.replace("$IMAGE", &image));
    write_container_keys(&host, "env = { SLOW_SECONDS = \"0\" }\nread_only = true");
    host.put_release("staging", &sha);
    sync_ok(&host);
    assert_eq!(host_config(&host, "{{.HostConfig.ReadonlyRootfs}}"), "true");
    assert_apache_serves(&host, &sha);
    forget_images(&host);
}

#[test]
fn a_bound_the_image_cannot_serve_within_leaves_the_old_container_serving() {
    let image = apache_image();
    let host = Host::new("limits_refused");
    // The stock image writes its page at start: on a read-only root it exits at once.
    let sha = push_apache(&host, &format!("FROM {image}\n"));
    let env = format!("env = {{ BLOG_VERSION = \"{sha}\", SLOW_SECONDS = \"0\" }}");
    write_container_keys(&host, &env);
    host.put_release("staging", &sha);
    sync_ok(&host);
    let serving = host.container_state().expect("deployed").0;

    write_container_keys(&host, &format!("{env}\nread_only = true"));
    let run = host.sync();
    assert_ne!(run.code, 0, "{}", run.output());
    assert!(run.stderr.contains("before cut-over; the running version was not touched"), "{}", run.output());
    assert_eq!(host.container_state().expect("still there").0, serving, "{}", run.output());
    host.assert_serves(&sha);
    assert_eq!(host_config(&host, "{{.HostConfig.ReadonlyRootfs}}"), "false");
    host.assert_only_the_serving_container();
    forget_images(&host);
}
