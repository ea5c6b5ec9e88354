//! The container the host should run, derived from settings + environment + SHA, and the
//! labels that record it on the container.
//!
//! Docker labels are the source of truth for what is running: the SHA, the image digest, the
//! environment and a hash of everything else in the spec (image, ports, env, user labels,
//! restart policy, and the bounds it runs within: logs, privileges, processes, memory, CPU,
//! read-only root). A container whose labels do not match the desired spec was changed by hand,
//! or by a config change, and is replaced.

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};

use crate::config::{ContainerBounds, PortMapping, Settings, TrafficMode};
use crate::sha::Sha;

pub const LABEL_MANAGED: &str = "io.blog-agent.managed";
pub const LABEL_SHA: &str = "io.blog-agent.sha";
pub const LABEL_DIGEST: &str = "io.blog-agent.digest";
pub const LABEL_ENVIRONMENT: &str = "io.blog-agent.environment";
pub const LABEL_SPEC_HASH: &str = "io.blog-agent.spec-hash";
/// `serving` for the real container, `candidate` for the throwaway one a new version is
/// probed in before cut-over.
pub const LABEL_ROLE: &str = "io.blog-agent.role";

/// What should be running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub sha: Sha,
    pub environment: String,
    pub ports: Vec<PortMapping>,
    pub variables: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    /// Docker publishes `ports` (`[traffic] mode = "publish"`); otherwise the agent's DNAT
    /// rules carry the host ports to the container's bridge address.
    pub publish: bool,
    /// What the container may use and do (`[container]` log, capability and limit keys).
    pub bounds: ContainerBounds,
}

impl ContainerSpec {
    pub fn new(settings: &Settings, environment: &str, sha: &Sha) -> ContainerSpec {
        ContainerSpec {
            name: settings.container.name.clone(),
            image: settings.image.repository.reference(sha.as_str()),
            sha: sha.clone(),
            environment: environment.to_owned(),
            ports: settings.container.ports.clone(),
            variables: settings.container.variables.clone(),
            labels: settings.container.labels.clone(),
            publish: settings.traffic.mode == TrafficMode::Publish,
            bounds: settings.container.bounds.clone(),
        }
    }

    /// A short, stable hash of everything that defines the container besides its digest.
    /// Changing any of it (a port, an env var, a label, a bound) makes the running container
    /// stale: the next pass replaces it as it would for a new release.
    pub fn spec_hash(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |k: &str, v: &str| {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        };
        field("image", &self.image);
        field("environment", &self.environment);
        field("restart", "unless-stopped");
        // Switching modes changes how the container is created (published ports or not).
        if !self.publish {
            field("traffic", "switch");
        }
        for p in &self.ports {
            field("port", &p.to_string());
        }
        for (k, v) in &self.variables {
            field("env", &format!("{k}={v}"));
        }
        for (k, v) in &self.labels {
            field("label", &format!("{k}={v}"));
        }
        let b = &self.bounds;
        field("log", &format!("{} max-size={} max-file={}", b.log.driver, b.log.max_size, b.log.max_files));
        field("no-new-privileges", &b.no_new_privileges.to_string());
        for c in &b.cap_drop {
            field("cap-drop", c);
        }
        for c in &b.cap_add {
            field("cap-add", c);
        }
        field("pids-limit", &b.pids_limit.map(|n| n.to_string()).unwrap_or_default());
        field("memory", &b.memory.map(|n| n.to_string()).unwrap_or_default());
        field("nano-cpus", &b.nano_cpus.map(|n| n.to_string()).unwrap_or_default());
        // The tmpfs paths only exist on a read-only container, so only then are they its spec.
        if b.read_only {
            field("read-only", "true");
            for p in &b.tmpfs {
                field("tmpfs", p);
            }
        }
        h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
    }

    /// Labels for a container of this spec. `role` is `serving` or `candidate`.
    pub fn container_labels(&self, digest: &str, role: &str) -> HashMap<String, String> {
        let mut labels: HashMap<String, String> = self.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        labels.insert(LABEL_MANAGED.into(), "true".into());
        labels.insert(LABEL_SHA.into(), self.sha.to_string());
        labels.insert(LABEL_DIGEST.into(), digest.into());
        labels.insert(LABEL_ENVIRONMENT.into(), self.environment.clone());
        labels.insert(LABEL_SPEC_HASH.into(), self.spec_hash());
        labels.insert(LABEL_ROLE.into(), role.into());
        labels
    }

    /// `KEY=VALUE` pairs as Docker wants them.
    pub fn variables_list(&self) -> Vec<String> {
        self.variables.iter().map(|(k, v)| format!("{k}={v}")).collect()
    }

    /// Container port the candidate is probed on: the first mapping's.
    pub fn probe_port(&self) -> u16 {
        self.ports.first().map(|p| p.container_port).unwrap_or(80)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn desired(extra: &str) -> ContainerSpec {
        let text = format!("[release]\nbucket = \"b\"\n[image]\nrepository = \"r.example/blog\"\n{extra}");
        let settings = Settings::parse(&text, Path::new("c.toml")).unwrap();
        ContainerSpec::new(&settings, "staging", &Sha::parse("abcdef1").unwrap())
    }

    #[test]
    fn spec_hash_changes_with_every_part_of_the_spec() {
        let base = desired("").spec_hash();
        assert_eq!(base, desired("").spec_hash(), "stable");
        for extra in [
            "[container]\nports = [\"8080:80\"]\n[health]\nurl = \"http://127.0.0.1:8080/\"\n",
            "[container]\nenv = { A = \"1\" }\n",
            "[container]\nlabels = { team = \"web\" }\n",
            "[container]\nlog_driver = \"local\"\n",
            "[container]\nlog_max_size = \"20MiB\"\n",
            "[container]\nlog_max_files = 5\n",
            "[container]\nno_new_privileges = false\n",
            "[container]\ncap_drop = []\n",
            "[container]\ncap_add = [\"NET_BIND_SERVICE\"]\n",
            "[container]\npids_limit = 100\n",
            "[container]\npids_limit = 0\n",
            "[container]\nmemory = \"256MiB\"\n",
            "[container]\ncpus = 0.5\n",
            "[container]\nread_only = true\n",
        ] {
            assert_ne!(base, desired(extra).spec_hash(), "{extra}");
        }
        let mut other = desired("");
        other.sha = Sha::parse("abcdef2").unwrap();
        other.image = "r.example/blog:abcdef2".into();
        assert_ne!(base, other.spec_hash());
        let read_only = desired("[container]\nread_only = true\n").spec_hash();
        assert_ne!(read_only, desired("[container]\nread_only = true\ntmpfs = [\"/run\"]\n").spec_hash());
    }

    #[test]
    fn an_unchanged_bound_written_out_keeps_the_hash() {
        // Writing a default out, in another spelling, is no change: no swap for it.
        let base = desired("").spec_hash();
        for same in [
            "[container]\nlog_max_size = \"10 MiB\"\nlog_max_files = 3\npids_limit = 256\n",
            "[container]\ncap_drop = [\"all\"]\ncap_add = [\"CAP_CHOWN\", \"dac_override\", \"KILL\", \"NET_BIND_SERVICE\", \"SETGID\", \"SETUID\"]\n",
            "[container]\nread_only = false\nno_new_privileges = true\nlog_driver = \"json-file\"\n",
        ] {
            assert_eq!(base, desired(same).spec_hash(), "{same}");
        }
    }

    #[test]
    fn labels_record_the_release() {
        let d = desired("[container]\nlabels = { team = \"web\" }\n");
        let labels = d.container_labels("sha256:1234", "serving");
        assert_eq!(labels[LABEL_SHA], "abcdef1");
        assert_eq!(labels[LABEL_DIGEST], "sha256:1234");
        assert_eq!(labels[LABEL_ENVIRONMENT], "staging");
        assert_eq!(labels[LABEL_SPEC_HASH], d.spec_hash());
        assert_eq!(labels["team"], "web");
    }
}
