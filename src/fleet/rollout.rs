//! Staged rollout with no coordinator: when may this host apply a release CI just published?
//!
//! Each host has a stable seed in [0, 1), a hash of its identity (the EC2 instance id, else
//! `/etc/machine-id`, else the hostname). A release published at `T` (the S3 object's
//! Last-Modified) opens to a host at `T + seed x spread`, so the same hosts lead every release
//! (the canaries) and the whole fleet has it by `T + spread` (plus one poll interval). Like
//! Bottlerocket's update waves, the answer is a pure function of (seed, release time, now):
//! nothing here reads a clock or a file except [`resolve_identity`], which takes its readers as
//! arguments in [`resolve_identity_with`].
//!
//! Reads: nothing (the caller passes the identity sources). Writes: nothing. Decides: the seed,
//! and whether a release may be applied now ([`gate`]).

use std::fmt;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

/// The longest spread the arithmetic accepts; longer ones are cut to it. A release that takes
/// more than a week to reach the fleet is a fleet that runs two versions for a week, which no
/// one wants; the bound also keeps `published_at + spread` far from `SystemTime`'s limits. The
/// configuration should refuse a longer spread with this number in its message.
pub const MAX_SPREAD: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Where this host's identity for the seed came from, shown by `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    /// The EC2 instance id, from instance metadata.
    InstanceId,
    /// `/etc/machine-id` (off EC2, or instance metadata unreachable).
    MachineId,
    /// The hostname (no machine id either).
    Hostname,
    /// Nothing readable: every such host shares one seed, that of the empty identity.
    Unknown,
}

impl fmt::Display for IdentitySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdentitySource::InstanceId => "instance id",
            IdentitySource::MachineId => "machine id",
            IdentitySource::Hostname => "hostname",
            IdentitySource::Unknown => "no identity",
        })
    }
}

/// The identity a host's seed is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub value: String,
    pub source: IdentitySource,
}

impl Identity {
    /// This identity's seed; see [`seed`].
    pub fn seed(&self) -> f64 {
        seed(&self.value)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source {
            IdentitySource::Unknown => f.write_str("no identity"),
            source => write!(f, "{source} {}", self.value),
        }
    }
}

/// The seed of `identity`, in [0, 1): the first 8 bytes of SHA-256(identity) as a big-endian
/// integer, its top 53 bits (an f64's precision) over 2^53. Stable across versions, platforms
/// and restarts, so a host keeps its place in every rollout; an operator can recompute it:
/// `printf %s i-0abc | sha256sum`, the first 16 hex digits / 2^64.
pub fn seed(identity: &str) -> f64 {
    let digest = Sha256::digest(identity.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// The host's identity: the EC2 instance id when instance metadata gave one, else
/// `/etc/machine-id`, else the hostname (`/proc/sys/kernel/hostname`).
pub fn resolve_identity(imds_instance_id: Option<String>) -> Identity {
    resolve_identity_with(
        imds_instance_id,
        || std::fs::read_to_string("/etc/machine-id").ok(),
        || std::fs::read_to_string("/proc/sys/kernel/hostname").ok(),
    )
}

/// This host's identity with the instance id asked of instance metadata (IMDSv2): what a
/// command records as the host it ran on.
pub async fn this_host() -> Identity {
    resolve_identity(crate::outside::imds::Imds::new().instance_id().await.ok())
}

/// [`resolve_identity`] with its readers passed in. Values are trimmed; an empty one is
/// skipped, and so is systemd's `uninitialized` machine id (written during a first boot, the
/// same on every host).
pub fn resolve_identity_with(
    imds_instance_id: Option<String>,
    machine_id: impl FnOnce() -> Option<String>,
    hostname: impl FnOnce() -> Option<String>,
) -> Identity {
    let usable = |value: Option<String>| value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if let Some(value) = usable(imds_instance_id) {
        return Identity { value, source: IdentitySource::InstanceId };
    }
    if let Some(value) = usable(machine_id()).filter(|v| v != "uninitialized") {
        return Identity { value, source: IdentitySource::MachineId };
    }
    if let Some(value) = usable(hostname()) {
        return Identity { value, source: IdentitySource::Hostname };
    }
    Identity { value: String::new(), source: IdentitySource::Unknown }
}

/// When a host with `seed` may apply a release published at `published_at`:
/// `published_at + seed x spread`. A seed outside [0, 1) (or NaN) is clamped into it and a
/// spread longer than [`MAX_SPREAD`] cut to it, so this never panics.
pub fn apply_at(published_at: SystemTime, seed: f64, spread: Duration) -> SystemTime {
    let seed = if seed.is_nan() { 0.0 } else { seed.clamp(0.0, 1.0) };
    let offset = spread.min(MAX_SPREAD).mul_f64(seed);
    // Overflows only for a `published_at` within a week of `SystemTime`'s limit, which no
    // S3 answer carries; then the release opens at its publication.
    published_at.checked_add(offset).unwrap_or(published_at)
}

/// May this host apply the release now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    Now,
    /// Not before `until`, `remaining` from `now`.
    Wait {
        until: SystemTime,
        remaining: Duration,
    },
}

/// The rollout gate for one release: [`Gate::Now`] once `now` reaches [`apply_at`] (the
/// boundary itself included), and at once for a host with nothing serving (a new instance
/// helps no one by staying empty) or when `spread` is zero (no staged rollout).
///
/// `now` is compared with `published_at`, which is S3's clock: on the host's own clock a host
/// behind S3's would wait that much longer and one ahead apply that much earlier, so callers
/// pass AWS's time ([`crate::runtime::clock::now`]: the host's clock corrected by the offset
/// measured from S3's answers).
pub fn gate(published_at: SystemTime, seed: f64, spread: Duration, now: SystemTime, nothing_serving: bool) -> Gate {
    if nothing_serving || spread.is_zero() {
        return Gate::Now;
    }
    let until = apply_at(published_at, seed, spread);
    match until.duration_since(now) {
        Ok(remaining) if !remaining.is_zero() => Gate::Wait { until, remaining },
        _ => Gate::Now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_750_000_000;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn seed_is_stable() {
        // Pinned values: a change here moves every host's place in every rollout. Each is the
        // first 16 hex digits of `printf %s ID | sha256sum` over 2^64 (computed outside Rust).
        let cases: &[(&str, &str, &str)] = &[
            ("i-0123456789abcdef0", "57df73291f7c5399", "0.343253324"),
            ("i-0fedcba9876543210", "87098db20d88ae24", "0.527489525"),
            ("3f1c0e9a8b7d4c2e9f0a1b2c3d4e5f60", "360a768233d24d41", "0.211097152"),
            ("web-1", "c4719afa76fa448b", "0.767358481"),
            ("", "e3b0c44298fc1c14", "0.889415995"),
        ];
        for (id, hex, want) in cases {
            let digest = Sha256::digest(id.as_bytes());
            let first: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(&first, hex, "{id:?}");
            let got = seed(id);
            assert_eq!(format!("{got:.9}"), *want, "{id:?}");
            assert!((0.0..1.0).contains(&got), "{id:?}: {got}");
            assert_eq!(seed(id), got, "same identity, same seed");
        }
        // The largest hash still gives a seed below 1.
        assert!(((u64::MAX >> 11) as f64 / (1u64 << 53) as f64) < 1.0);
    }

    #[test]
    fn seeds_of_many_hosts_spread_evenly() {
        let mut buckets = [0u32; 10];
        for n in 0..1000 {
            let s = seed(&format!("i-{n:017x}"));
            assert!((0.0..1.0).contains(&s), "{s}");
            buckets[(s * 10.0) as usize] += 1;
        }
        // 100 expected per tenth; a uniform hash stays within ~4 standard deviations (9.5).
        for (tenth, count) in buckets.iter().enumerate() {
            assert!((60..=140).contains(count), "tenth {tenth} has {count} of 1000: {buckets:?}");
        }
        // Neighbouring ids do not sit next to each other.
        assert!((seed("i-00000000000000001") - seed("i-00000000000000002")).abs() > 1e-6);
    }

    #[test]
    fn identity_prefers_instance_id_then_machine_id_then_hostname() {
        type Case = (Option<&'static str>, Option<&'static str>, Option<&'static str>, &'static str, IdentitySource);
        let cases: &[Case] = &[
            (Some("i-0abc"), Some("m1"), Some("h1"), "i-0abc", IdentitySource::InstanceId),
            (Some(" i-0abc\n"), None, None, "i-0abc", IdentitySource::InstanceId),
            (None, Some("4c1f0e\n"), Some("h1"), "4c1f0e", IdentitySource::MachineId),
            (Some(""), Some("4c1f0e"), Some("h1"), "4c1f0e", IdentitySource::MachineId),
            (None, Some("uninitialized\n"), Some("web-1\n"), "web-1", IdentitySource::Hostname),
            (None, Some("  \n"), Some("web-1"), "web-1", IdentitySource::Hostname),
            (None, None, Some("web-1"), "web-1", IdentitySource::Hostname),
            (None, None, None, "", IdentitySource::Unknown),
            (Some("\n"), Some(""), Some(" "), "", IdentitySource::Unknown),
        ];
        for (imds, machine, host, value, source) in cases {
            let got = resolve_identity_with(
                imds.map(str::to_owned),
                || machine.map(str::to_owned),
                || host.map(str::to_owned),
            );
            assert_eq!((got.value.as_str(), got.source), (*value, *source), "{imds:?} {machine:?} {host:?}");
        }
        let id = Identity { value: "i-0abc".into(), source: IdentitySource::InstanceId };
        assert_eq!(id.to_string(), "instance id i-0abc");
        assert_eq!(id.seed(), seed("i-0abc"));
        // The real readers on this machine: some identity, never a panic.
        let here = resolve_identity(None);
        assert_ne!(here.source, IdentitySource::InstanceId);
    }

    #[test]
    fn machine_id_is_not_read_when_the_instance_id_is_known() {
        let got = resolve_identity_with(Some("i-1".into()), || panic!("machine id read"), || panic!("hostname read"));
        assert_eq!(got.source, IdentitySource::InstanceId);
    }

    #[test]
    fn apply_at_is_published_plus_seed_times_spread() {
        let spread = Duration::from_secs(900);
        let cases: &[(f64, Duration, Duration)] = &[
            (0.0, spread, Duration::ZERO),
            (0.5, spread, Duration::from_secs(450)),
            (0.41, spread, Duration::from_secs(369)),
            (0.999_999, spread, Duration::from_micros(899_999_100)),
            (0.5, Duration::ZERO, Duration::ZERO),
            // Out of range seeds are clamped, never a panic.
            (-0.3, spread, Duration::ZERO),
            (f64::NAN, spread, Duration::ZERO),
            (1.7, spread, spread),
            // A spread over the limit is cut to it.
            (0.5, Duration::from_secs(30 * 24 * 3600), MAX_SPREAD / 2),
            (0.5, Duration::MAX, MAX_SPREAD / 2),
        ];
        for (seed, spread, offset) in cases {
            let got = apply_at(at(T0), *seed, *spread).duration_since(at(T0)).unwrap();
            let diff = got.abs_diff(*offset);
            assert!(diff < Duration::from_micros(1), "seed {seed} spread {spread:?}: {got:?}, want {offset:?}");
        }
    }

    #[test]
    fn gate_table() {
        let spread = Duration::from_secs(900); // 15 min
        let s = 0.4; // opens at T0 + 360 s
        let wait = |until: u64, now: u64| Gate::Wait { until: at(until), remaining: Duration::from_secs(until - now) };
        // (seed, spread, now, nothing serving, expected)
        let cases: &[(f64, Duration, u64, bool, Gate)] = &[
            // Just published: wait for this host's wave.
            (s, spread, T0, false, wait(T0 + 360, T0)),
            (s, spread, T0 + 100, false, wait(T0 + 360, T0 + 100)),
            // One second before the boundary; at it; after it.
            (s, spread, T0 + 359, false, wait(T0 + 360, T0 + 359)),
            (s, spread, T0 + 360, false, Gate::Now),
            (s, spread, T0 + 361, false, Gate::Now),
            // Long after the whole fleet's window.
            (s, spread, T0 + 86_400, false, Gate::Now),
            // The first canary (seed 0) never waits; the last one waits almost all the spread.
            (0.0, spread, T0, false, Gate::Now),
            (
                0.999,
                spread,
                T0,
                false,
                Gate::Wait { until: at(T0) + spread.mul_f64(0.999), remaining: spread.mul_f64(0.999) },
            ),
            // Spread 0 is no staged rollout: no one waits.
            (s, Duration::ZERO, T0, false, Gate::Now),
            (0.999, Duration::ZERO, T0 - 10, false, Gate::Now),
            // Nothing serving: a new instance does not stay empty for a wave.
            (s, spread, T0, true, Gate::Now),
            (0.999, spread, T0 - 3600, true, Gate::Now),
            // Clock skew: this host's clock is behind S3's, so "now" is before the publication;
            // the host waits for its wave measured on its own clock (the skew included).
            (s, spread, T0 - 60, false, wait(T0 + 360, T0 - 60)),
            (0.0, spread, T0 - 60, false, wait(T0, T0 - 60)),
            // Ahead of S3's clock: the wave opens earlier by the skew.
            (s, spread, T0 + 400, false, Gate::Now),
        ];
        for (i, (seed, spread, now, nothing_serving, want)) in cases.iter().enumerate() {
            let got = gate(at(T0), *seed, *spread, at(*now), *nothing_serving);
            assert_eq!(
                got,
                *want,
                "case {i}: seed {seed} spread {spread:?} now T0{:+} empty {nothing_serving}",
                *now as i64 - T0 as i64
            );
        }
    }

    #[test]
    fn the_same_hosts_lead_every_release_and_all_finish_within_the_spread() {
        let spread = Duration::from_secs(600);
        let hosts: Vec<String> = (0..50).map(|n| format!("i-{n:017x}")).collect();
        let order = |published: u64| {
            let mut opens: Vec<(SystemTime, &str)> =
                hosts.iter().map(|h| (apply_at(at(published), seed(h), spread), h.as_str())).collect();
            opens.sort();
            for (open, _) in &opens {
                assert!(open.duration_since(at(published)).unwrap() < spread);
            }
            opens.into_iter().map(|(_, h)| h).collect::<Vec<_>>()
        };
        assert_eq!(order(T0), order(T0 + 7 * 86_400), "canaries are the same hosts for every release");
    }
}
