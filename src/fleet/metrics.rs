//! Fleet visibility: the agent's metrics as a node_exporter textfile (`[metrics] textfile`).
//!
//! node_exporter's textfile collector reads every `*.prom` file in its directory on each
//! scrape, in the Prometheus text exposition format (version 0.0.4). The file is replaced
//! whole, atomically ([`crate::state::write_atomically`]: temp file in the same directory,
//! fsync, rename), so a scrape never sees half a file; the temp file's name does not end in
//! `.prom`, so the collector never reads it.
//!
//! [`Metrics`] is shared (`Arc`) between the loop and the S3/ECR callers: counters are atomic,
//! the rest sits behind a mutex held only to copy a value. Counters start at 0 with the
//! process; Prometheus' `rate()` and `increase()` handle the reset at a restart.
//!
//! Reads: nothing. Writes: the textfile. Decides: nothing.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// The release a host is on, as one `blog_agent_release_info` sample.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReleaseInfo {
    environment: String,
    sha: String,
    state: String,
}

#[derive(Debug, Default)]
struct Gauges {
    release: Option<ReleaseInfo>,
    /// The serving release's image digest: (SHA, digest).
    digest: Option<(String, String)>,
    converged: Option<bool>,
    last_pass: Option<SystemTime>,
    halted: BTreeSet<String>,
    rollout_wait: Duration,
    clock: Option<crate::runtime::clock::Sample>,
    disk: Option<DiskGauges>,
    /// The release being baked and when its bake ends (Unix seconds).
    bake: Option<(String, u64)>,
}

/// Docker's data root as the last pass saw it ([`crate::outside::disk`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskGauges {
    /// Bytes free there; `None`: not measured.
    pub free: Option<u64>,
    /// `[reconcile] min_free_disk`.
    pub min_free: u64,
    /// The last pass could not pull for lack of space (refused before the pull, or the pull
    /// filled the disk).
    pub short: bool,
    /// What the refused pull needed free (image and margin), when known.
    pub need: Option<u64>,
}

/// The agent's metrics. Every method takes `&self`.
#[derive(Debug, Default)]
pub struct Metrics {
    gauges: Mutex<Gauges>,
    deploys_success: AtomicU64,
    deploys_failure: AtomicU64,
    rollbacks: AtomicU64,
    bakes_baked: AtomicU64,
    bakes_reverted: AtomicU64,
    s3_requests: AtomicU64,
    ecr_calls: AtomicU64,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics::default()
    }

    fn gauges(&self) -> std::sync::MutexGuard<'_, Gauges> {
        // A panic while holding the lock left plain values, never a broken invariant.
        self.gauges.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A pass ended at `when`; `converged` as `status` would say.
    pub fn record_pass(&self, converged: bool, when: SystemTime) {
        let mut g = self.gauges();
        g.converged = Some(converged);
        g.last_pass = Some(when);
    }

    /// A deploy (pull, verify, cut over) finished: verified, or failed its verification.
    pub fn record_deploy(&self, success: bool) {
        let counter = if success { &self.deploys_success } else { &self.deploys_failure };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A rollback to an earlier release happened.
    pub fn record_rollback(&self) {
        self.rollbacks.fetch_add(1, Ordering::Relaxed);
    }

    /// The release the host is on: one `blog_agent_release_info` sample with these labels (the
    /// previous one goes, so a dashboard counting hosts per SHA counts each host once).
    pub fn set_release(&self, environment: &str, sha: &str, state: &str) {
        self.gauges().release =
            Some(ReleaseInfo { environment: environment.to_owned(), sha: sha.to_owned(), state: state.to_owned() });
    }

    /// The image digest the serving release runs as (from the proven container's record).
    pub fn set_digest(&self, serving: Option<(String, String)>) {
        self.gauges().digest = serving;
    }

    /// The halted SHAs this host knows of (replaces the previous set).
    pub fn set_halted(&self, shas: Vec<String>) {
        self.gauges().halted = shas.into_iter().collect();
    }

    /// How long until this host may apply the published release; zero when it is not waiting.
    pub fn set_rollout_wait(&self, wait: Duration) {
        self.gauges().rollout_wait = wait;
    }

    /// The latest measurement of this host's clock against AWS's.
    pub fn set_clock(&self, sample: Option<crate::runtime::clock::Sample>) {
        self.gauges().clock = sample;
    }

    /// Docker's data root after a pass.
    pub fn set_disk(&self, disk: DiskGauges) {
        self.gauges().disk = Some(disk);
    }

    /// The bake in progress: its SHA and when it ends (Unix seconds); `None` when none is.
    pub fn set_bake(&self, bake: Option<(String, u64)>) {
        self.gauges().bake = bake;
    }

    /// A bake ended: baked (the previous container retired) or reverted to it.
    pub fn record_bake(&self, baked: bool) {
        let counter = if baked { &self.bakes_baked } else { &self.bakes_reverted };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// One request sent to S3 (a poll, a halt marker read or write).
    pub fn add_s3_request(&self) {
        self.s3_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// One ECR API call (GetAuthorizationToken).
    pub fn add_ecr_call(&self) {
        self.add_ecr_calls(1);
    }

    /// `n` ECR API calls.
    pub fn add_ecr_calls(&self, n: u64) {
        self.ecr_calls.fetch_add(n, Ordering::Relaxed);
    }

    /// The whole file, in the text exposition format: each metric with `# HELP` and `# TYPE`,
    /// always in the same order; a gauge with nothing known yet (no pass so far) has no sample.
    pub fn render(&self) -> String {
        let g = self.gauges();
        let counter = |c: &AtomicU64| c.load(Ordering::Relaxed).to_string();
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str, samples: &[(Vec<(&str, &str)>, String)]| {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, value) in samples {
                out.push_str(name);
                if !labels.is_empty() {
                    out.push('{');
                    for (i, (label, value)) in labels.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{label}=\"{}\"", escape_label_value(value));
                    }
                    out.push('}');
                }
                let _ = writeln!(out, " {value}");
            }
        };
        // The build's version and commit, always: during an upgrade (an instance refresh) the
        // fleet's mix of agent versions is `count by (version) (blog_agent_build_info)`.
        family(
            "blog_agent_build_info",
            "gauge",
            "The blog-agent build writing this file (value 1): package version and git commit.",
            &[(vec![("version", crate::VERSION), ("commit", crate::COMMIT)], "1".to_owned())],
        );
        let release: Vec<_> = g
            .release
            .iter()
            .map(|r| {
                let labels =
                    vec![("environment", r.environment.as_str()), ("sha", r.sha.as_str()), ("state", r.state.as_str())];
                (labels, "1".to_owned())
            })
            .collect();
        family(
            "blog_agent_release_info",
            "gauge",
            "The release this host is on (value 1): environment, SHA and state.",
            &release,
        );
        let digest: Vec<_> = g
            .digest
            .iter()
            .map(|(sha, digest)| (vec![("sha", sha.as_str()), ("digest", digest.as_str())], "1".to_owned()))
            .collect();
        family(
            "blog_agent_release_digest_info",
            "gauge",
            "The image digest the serving release runs as (value 1): SHA and manifest digest.",
            &digest,
        );
        let converged: Vec<_> = g.converged.iter().map(|c| (vec![], u8::from(*c).to_string())).collect();
        family(
            "blog_agent_converged",
            "gauge",
            "1 when the last pass left the host running what it is meant to run, else 0.",
            &converged,
        );
        let last: Vec<_> = g.last_pass.iter().map(|t| (vec![], seconds(*t))).collect();
        family("blog_agent_last_pass_timestamp_seconds", "gauge", "Unix time the last reconcile pass ended.", &last);
        family(
            "blog_agent_deploys_total",
            "counter",
            "Deploys since the agent started, by result (success: verified and serving; failure: failed verification).",
            &[
                (vec![("result", "success")], counter(&self.deploys_success)),
                (vec![("result", "failure")], counter(&self.deploys_failure)),
            ],
        );
        family(
            "blog_agent_rollbacks_total",
            "counter",
            "Rollbacks to an earlier release since the agent started.",
            &[(vec![], counter(&self.rollbacks))],
        );
        let halted: Vec<_> = g.halted.iter().map(|sha| (vec![("sha", sha.as_str())], "1".to_owned())).collect();
        family("blog_agent_halted", "gauge", "1 for each SHA this host knows is halted for its environment.", &halted);
        family(
            "blog_agent_rollout_wait_seconds",
            "gauge",
            "Seconds until this host may apply the published release (its rollout wave); 0 when not waiting.",
            &[(vec![], g.rollout_wait.as_secs_f64().to_string())],
        );
        let offset: Vec<_> = g.clock.iter().map(|s| (vec![], (s.offset_ms as f64 / 1000.0).to_string())).collect();
        family(
            "blog_agent_clock_offset_seconds",
            "gauge",
            "This host's clock minus AWS's (from the Date of AWS answers), in seconds; beyond 5 the agent warns, \
             beyond 300 it refuses its time decisions.",
            &offset,
        );
        let disk = g.disk.unwrap_or_default();
        let known = |v: Option<u64>| v.map(|v| (vec![], v.to_string())).into_iter().collect::<Vec<_>>();
        family(
            "blog_agent_disk_free_bytes",
            "gauge",
            "Bytes free on Docker's data root (where a pull lands) after the last pass.",
            &known(disk.free),
        );
        family(
            "blog_agent_disk_min_free_bytes",
            "gauge",
            "[reconcile] min_free_disk: bytes a pull must leave free on Docker's data root.",
            &known(g.disk.map(|d| d.min_free)),
        );
        family(
            "blog_agent_disk_short",
            "gauge",
            "1 when the last pass could not pull the release's image for lack of disk space (the running version keeps serving), else 0.",
            &known(g.disk.map(|d| u64::from(d.short))),
        );
        family(
            "blog_agent_disk_needed_bytes",
            "gauge",
            "Bytes the refused pull needed free on Docker's data root (image size plus min_free_disk); no sample unless short.",
            &known(disk.need.filter(|_| disk.short)),
        );
        let bake: Vec<_> = g.bake.iter().map(|(sha, _)| (vec![("sha", sha.as_str())], "1".to_owned())).collect();
        family("blog_agent_baking", "gauge", "1 while the release of this SHA bakes ([health] bake).", &bake);
        let left = g.bake.as_ref().map(|(_, until)| until.saturating_sub(crate::state::now_unix())).unwrap_or(0);
        family(
            "blog_agent_bake_remaining_seconds",
            "gauge",
            "Seconds left of the bake in progress when the file was written; 0 when none is.",
            &[(vec![], left.to_string())],
        );
        let ends: Vec<_> = g.bake.iter().map(|(_, until)| (vec![], until.to_string())).collect();
        family(
            "blog_agent_bake_ends_timestamp_seconds",
            "gauge",
            "Unix time the bake in progress ends; no sample when none is.",
            &ends,
        );
        family(
            "blog_agent_bakes_total",
            "counter",
            "Bakes ended since the agent started, by outcome (baked: previous retired; reverted: back to it).",
            &[
                (vec![("outcome", "baked")], counter(&self.bakes_baked)),
                (vec![("outcome", "reverted")], counter(&self.bakes_reverted)),
            ],
        );
        family(
            "blog_agent_s3_requests_total",
            "counter",
            "Requests sent to S3 since the agent started.",
            &[(vec![], counter(&self.s3_requests))],
        );
        family(
            "blog_agent_ecr_calls_total",
            "counter",
            "ECR API calls since the agent started.",
            &[(vec![], counter(&self.ecr_calls))],
        );
        out
    }

    /// Writes [`Metrics::render`] to `path` atomically. The name must end in `.prom`, the only
    /// files the textfile collector reads: anything else is refused (`InvalidInput`) rather
    /// than written where it would silently never be scraped.
    pub fn write(&self, path: &Path) -> io::Result<()> {
        let name = path.file_name().and_then(|n| n.to_str()).filter(|n| n.ends_with(".prom") && n.len() > 5);
        let Some(name) = name else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: a textfile collector file name must end in .prom", path.display()),
            ));
        };
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        // 0644: node_exporter runs as its own user and must read it.
        crate::state::write_atomically_as(dir, name, self.render().as_bytes(), Some(TEXTFILE_MODE))
            .map_err(|e| io::Error::new(e.source.kind(), e.to_string()))
    }
}

/// The textfile's permission bits: readable by node_exporter's own user.
pub const TEXTFILE_MODE: u32 = 0o644;

/// Unix seconds with their fraction, as the format's float.
fn seconds(t: SystemTime) -> String {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0).to_string()
}

/// A label value in the text format: backslash, double quote and line feed escaped as `\\`,
/// `\"` and `\n`; everything else (UTF-8 included) as is.
pub fn escape_label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A `# HELP` text: backslash and line feed escaped (a quote needs none there).
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under the unit's `UMask=0077` the textfile must still be 0644. The umask is the
    /// process's, so the write happens in a child (this test binary again, run under
    /// `umask 077` by a shell) and the parent checks the mode.
    #[test]
    fn the_textfile_is_readable_by_other_users_under_a_strict_umask() {
        use std::os::unix::fs::PermissionsExt;
        const CHILD: &str = "BLOG_AGENT_TEST_UMASK_CHILD";
        if let Some(path) = std::env::var_os(CHILD) {
            Metrics::new().write(Path::new(&path)).unwrap();
            return;
        }
        let dir = std::env::temp_dir().join(format!("blog-agent-metrics-mode-{}", std::process::id()));
        let path = dir.join("blog_agent.prom");
        let status = std::process::Command::new("sh")
            .args(["-c", "umask 077 && exec \"$0\" \"$@\""])
            .arg(std::env::current_exe().unwrap())
            .args(["--exact", "fleet::metrics::tests::the_textfile_is_readable_by_other_users_under_a_strict_umask"])
            .env(CHILD, &path)
            .status()
            .unwrap();
        assert!(status.success());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mode, 0o644, "{mode:o}");
    }

    #[test]
    fn label_values_are_escaped() {
        let cases: &[(&str, &str)] = &[
            ("staging", "staging"),
            ("", ""),
            ("a\"b", "a\\\"b"),
            ("C:\\dir", "C:\\\\dir"),
            ("one\ntwo", "one\\ntwo"),
            ("\\\"\n", "\\\\\\\"\\n"),
            ("tab\tstays", "tab\tstays"),
            ("ünïcode", "ünïcode"),
            ("}{,=", "}{,="),
        ];
        for (raw, want) in cases {
            assert_eq!(escape_label_value(raw), *want, "{raw:?}");
        }
        assert_eq!(escape_help("a\\b\nc \"d\""), "a\\\\b\\nc \"d\"");
    }

    #[test]
    fn the_runbook_lists_every_family() {
        let runbook = include_str!("../../docs/operations.md");
        let text = Metrics::new().render();
        let families: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        assert!(families.len() >= 10, "{text}");
        for name in families {
            assert!(runbook.contains(&format!("| `{name}")), "docs/operations.md's metrics table lacks {name}");
        }
        // The states the agent reports in blog_agent_release_info (src/agent/mod.rs).
        for state in ["converged", "baking", "waiting", "halted", "paused", "degraded", "warm", "unconverged"] {
            assert!(runbook.contains(&format!("`{state}`")), "docs/operations.md lacks state {state:?}");
        }
    }

    #[test]
    fn fresh_metrics_have_every_family_and_no_unknown_gauge() {
        let text = Metrics::new().render();
        for name in [
            "blog_agent_build_info",
            "blog_agent_release_info",
            "blog_agent_release_digest_info",
            "blog_agent_converged",
            "blog_agent_last_pass_timestamp_seconds",
            "blog_agent_deploys_total",
            "blog_agent_rollbacks_total",
            "blog_agent_halted",
            "blog_agent_rollout_wait_seconds",
            "blog_agent_clock_offset_seconds",
            "blog_agent_baking",
            "blog_agent_bake_remaining_seconds",
            "blog_agent_bake_ends_timestamp_seconds",
            "blog_agent_bakes_total",
            "blog_agent_s3_requests_total",
            "blog_agent_ecr_calls_total",
        ] {
            assert_eq!(text.matches(&format!("# HELP {name} ")).count(), 1, "{name}:\n{text}");
            assert_eq!(text.matches(&format!("# TYPE {name} ")).count(), 1, "{name}:\n{text}");
        }
        assert!(!text.contains("blog_agent_converged 0"), "no pass yet, no sample:\n{text}");
        assert!(!text.contains("\nblog_agent_clock_offset_seconds "), "nothing measured, no sample:\n{text}");
        assert!(text.contains("blog_agent_deploys_total{result=\"failure\"} 0\n"), "{text}");
        let build = format!(
            "blog_agent_build_info{{version=\"{}\",commit=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION"),
            env!("BLOG_AGENT_GIT_COMMIT")
        );
        assert!(text.contains(&build), "the version, before any pass:\n{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn samples_follow_the_calls() {
        let m = Metrics::new();
        m.record_pass(false, SystemTime::UNIX_EPOCH + Duration::from_millis(1_750_000_000_250));
        m.record_pass(true, SystemTime::UNIX_EPOCH + Duration::from_millis(1_750_000_030_500));
        m.record_deploy(true);
        m.record_deploy(true);
        m.record_deploy(false);
        m.record_rollback();
        m.set_release("staging", "aaaaaaa", "pending");
        m.set_release("staging", "3f2a9c1", "serving");
        m.set_halted(vec!["bbbbbbb".into(), "ccccccc".into(), "bbbbbbb".into()]);
        m.set_rollout_wait(Duration::from_millis(12_500));
        let taken = SystemTime::UNIX_EPOCH;
        m.set_clock(Some(crate::runtime::clock::Sample { offset_ms: -1_200_250, rtt: Duration::ZERO, taken }));
        for _ in 0..3 {
            m.add_s3_request();
        }
        m.add_ecr_call();
        m.set_disk(DiskGauges { free: Some(5 << 30), min_free: 2 << 30, short: true, need: Some(3 << 30) });
        let text = m.render();
        for line in [
            "blog_agent_release_info{environment=\"staging\",sha=\"3f2a9c1\",state=\"serving\"} 1",
            "blog_agent_converged 1",
            "blog_agent_last_pass_timestamp_seconds 1750000030.5",
            "blog_agent_deploys_total{result=\"success\"} 2",
            "blog_agent_deploys_total{result=\"failure\"} 1",
            "blog_agent_rollbacks_total 1",
            "blog_agent_halted{sha=\"bbbbbbb\"} 1",
            "blog_agent_halted{sha=\"ccccccc\"} 1",
            "blog_agent_rollout_wait_seconds 12.5",
            "blog_agent_clock_offset_seconds -1200.25",
            "blog_agent_s3_requests_total 3",
            "blog_agent_ecr_calls_total 1",
            "blog_agent_disk_free_bytes 5368709120",
            "blog_agent_disk_min_free_bytes 2147483648",
            "blog_agent_disk_short 1",
            "blog_agent_disk_needed_bytes 3221225472",
        ] {
            assert_eq!(text.lines().filter(|l| *l == line).count(), 1, "{line}:\n{text}");
        }
        assert!(!text.contains("aaaaaaa"), "the previous release goes:\n{text}");
        m.set_halted(vec![]);
        m.set_rollout_wait(Duration::ZERO);
        let text = m.render();
        assert!(!text.contains("blog_agent_halted{"), "{text}");
        assert!(text.contains("\nblog_agent_rollout_wait_seconds 0\n"), "{text}");
        m.set_disk(DiskGauges { free: Some(5 << 30), min_free: 2 << 30, short: false, need: None });
        let text = m.render();
        assert!(
            text.contains("\nblog_agent_disk_short 0\n") && !text.contains("\nblog_agent_disk_needed_bytes "),
            "{text}"
        );
    }

    #[test]
    fn written_atomically_and_only_as_prom() {
        let dir = std::env::temp_dir().join(format!("blog-agent-metrics-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let m = Metrics::new();
        m.add_s3_request();
        let path = dir.join("textfile").join("blog_agent.prom");
        m.write(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), m.render());
        m.add_s3_request();
        m.write(&path).unwrap();
        assert!(std::fs::read_to_string(&path).unwrap().contains("blog_agent_s3_requests_total 2\n"));
        // Only the file itself is left: no temp file for the collector to trip over.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["blog_agent.prom"]);
        for bad in ["blog_agent.txt", "blog_agent", ".prom", "blog_agent.prom.tmp"] {
            let err = m.write(&dir.join(bad)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad}");
            assert!(err.to_string().contains(".prom"), "{err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
