//! Netfilter: sends a host port's traffic to the serving container by DNAT, and moves it to
//! another container in one atomic step.
//!
//! **What it writes.** Four chains of its own, named from a prefix (`BLOG-AGENT` in production):
//!
//! | table  | chain            | jumped to from                         | holds |
//! |--------|------------------|----------------------------------------|-------|
//! | nat    | `PREFIX-DNAT`    | `PREROUTING`, `OUTPUT` (`--dst-type LOCAL`) | one DNAT per mapping, to the target container |
//! | nat    | `PREFIX-POST`    | `POSTROUTING`                          | MASQUERADE of DNATed loopback clients going out to the bridge |
//! | filter | `PREFIX-FWD`     | `DOCKER-USER`                          | ACCEPT of forwarded DNATed flows (Docker's `FORWARD` policy is DROP) |
//! | filter | `PREFIX-IN`      | `INPUT`                                | DROP of new packets from the bridge to 127.0.0.0/8 (see below) |
//!
//! and, when a mapping takes loopback clients, `net.ipv4.conf.<bridge>.route_localnet = 1`
//! (a packet with a 127.x source may then leave through the bridge; without it the kernel drops
//! the DNATed loopback connection as a martian). `route_localnet` also lets a container with
//! `CAP_NET_RAW` (Docker grants it by default) send packets to the host's 127.0.0.1 services:
//! the `PREFIX-IN` rule drops those, as kube-proxy does since CVE-2020-8558.
//!
//! **What it reads.** `iptables -S` of the nat and filter tables (to insert each jump from a
//! built-in chain only when it is absent, to delete duplicates and stale jumps, and to tell
//! whether the rules are in place), and the `route_localnet` sysctl.
//!
//! **What it decides** (pure, [`Netfilter::render`]): the whole desired rule set from the
//! mappings and the one target address, as `iptables-restore --noflush` input, one `COMMIT` per
//! table. Each apply declares the own chains (which flushes them) and refills them in the same
//! transaction, so a switch is atomic: every new connection goes to the old target or to the
//! new one, never to neither. Established connections keep their conntrack entry, hence their
//! old target, until they end: the old container drains. Like kube-proxy, nothing is edited
//! rule by rule, and a rule that someone flushed is simply re-asserted by the next apply.
//! The filter table is committed before the nat table, so traffic is never DNATed before its
//! FORWARD accept exists.
//!
//! **Whose rules they are.** With an owner ([`Netfilter::with_owner`], the agent's
//! `[container] name`), every rule in the own chains carries the comment `blog-agent:NAME`
//! (`-m comment`; the jumps from the built-in chains carry none: they are the same for whoever
//! owns the chains). Before it writes or removes anything, or says the rules are in place, the
//! agent reads the comments in its chains ([`Netfilter::other_owners`], pure): rules of another
//! agent (a second blog on this host left on the same `[traffic] chains`) are refused with
//! [`NetfilterError::Owned`] instead of being rewritten, which would start two agents rewriting
//! each other's rules forever. Rules with no comment (an agent from before the mark) are taken
//! over silently. Whether a named owner is still there is asked of [`OwnerLookup`] (Docker: does
//! its container exist?): the rules of an agent whose container is gone (renamed by
//! `[container] name`, removed) are taken over, with one log line. Two agents applying to empty
//! chains at the same instant both see no owner; the later write wins and the other agent refuses
//! from its next check on.
//!
//! **Why iptables-restore, not `nft` or netlink.**
//! - *Atomic per table*: one `COMMIT` is one kernel transaction on both backends (one nf_tables
//!   netlink batch, or one legacy table replace).
//! - *Coexists with Docker 20.10's rules on either backend*: Docker manages its chains by running
//!   the `iptables` binary, whichever backend it is; running the same binary puts our rules in
//!   the same tables. That matters for the FORWARD accept: in nf_tables an `accept` in one base
//!   chain does not stop other base chains on the same hook, so an accept in a table of our own
//!   could never override Docker's `FORWARD` DROP policy; it has to live in Docker's
//!   `DOCKER-USER` chain, which exists only in the backend Docker uses (and `nft` cannot reach
//!   legacy tables at all). dockerd never deletes or changes rules it finds in `DOCKER-USER`
//!   (it creates the chain if absent, appends its `RETURN` if absent, and keeps `FORWARD`'s
//!   jump to it first), and at start it re-creates only its own rules; anything of ours that
//!   does go missing is re-asserted by the next apply.
//! - *Present wherever Docker is*: Debian's `docker.io` depends on `iptables`; `nft` is not even
//!   installed on a stock host, and raw netlink (or libiptc for legacy) would mean speaking two
//!   kernel protocols ourselves.
//!
//! **Backends.** [`Backend::System`] (the default) runs `iptables`/`iptables-restore` from
//! `PATH`: the alternative Docker 20.10 itself runs, so both always share a backend.
//! [`Backend::Nft`] and [`Backend::Legacy`] name one explicitly. Both were tested (the rendered
//! text and `iptables -S` output are identical, iptables 1.8.9): nf_tables against the host's
//! real Docker, and legacy (which a running dockerd on nf_tables cannot be switched to without
//! a restart) in a network namespace with Docker's chain layout. Mixing them does not work: an
//! agent on legacy with Docker on nf_tables would create a `DOCKER-USER` of its own that no
//! `FORWARD` jumps to, and no accept there overrides Docker's DROP.
//! [`Netfilter::docker_layout`] lets `check` see that (`forward_jumps_to_docker_user: false`).
//!
//! **Privileges** (checked with `setpriv` on iptables 1.8.9): nf_tables needs `CAP_NET_ADMIN`
//! and `AF_NETLINK` sockets; legacy needs `CAP_NET_ADMIN` and `CAP_NET_RAW` (a raw socket) and
//! must open `/run/xtables.lock` (on a read-only `/run` it works only if the file exists).
//! Writing `route_localnet` needs a writable `/proc/sys/net/ipv4/conf/<bridge>/`.
//!
//! **Not covered.** IPv6 (mappings are IPv4; the config must refuse others), hairpin traffic
//! from a container on the bridge to a host port, UDP.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Chain-name prefix of the production agent.
pub const DEFAULT_PREFIX: &str = "BLOG-AGENT";
/// Docker's default bridge: where containers without a `--network` live.
pub const DEFAULT_BRIDGE: &str = "docker0";
/// Docker's chain for user rules in the filter table: evaluated first in `FORWARD`, never
/// flushed by dockerd (it creates it if absent, so creating it first is fine).
pub const DOCKER_USER: &str = "DOCKER-USER";

/// The comment that marks a rule as the agent's whose container is named after the colon.
pub const OWNER_MARK: &str = "blog-agent:";

/// iptables chain names hold at most 28 characters (29 with the NUL); the longest suffix we add
/// is five ("-DNAT", "-POST").
const MAX_PREFIX_LEN: usize = 23;
/// Linux interface names hold at most 15 characters (IFNAMSIZ 16 with the NUL).
const MAX_IFNAME_LEN: usize = 15;
/// How long a legacy iptables waits for the xtables lock (`/run/xtables.lock`), which dockerd
/// holds while it rebuilds its chains. The nf_tables backend takes no lock and ignores `-w`.
const LOCK_WAIT_SECONDS: &str = "5";
/// A whole command (`iptables -S` or `iptables-restore` of a few rules takes ~10 ms) may take at
/// most this long: the lock wait above plus a margin. A hung one is killed, so the agent's loop
/// (systemd watchdog 60 s) never hangs on it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
const LOOPBACK_NET: &str = "127.0.0.0/8";
/// Per-interface IPv4 sysctls, of the network namespace of the process that opens them.
const SYSCTL_CONF: &str = "/proc/sys/net/ipv4/conf";
/// An owner is a Docker container name (`[container] name`: at most 100 characters); the
/// comment match holds 255.
const MAX_OWNER_LEN: usize = 100;

/// One host port sent to a container port: `[container] ports` entry `HOST_IP:HOST_PORT:PORT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mapping {
    /// `None` (or 0.0.0.0): every address of the host, loopback included.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
}

impl Mapping {
    pub fn new(host_ip: Option<Ipv4Addr>, host_port: u16, container_port: u16) -> Mapping {
        Mapping { host_ip, host_port, container_port }
    }

    /// The bound address, `None` for all of them.
    fn bound(&self) -> Option<Ipv4Addr> {
        self.host_ip.filter(|ip| !ip.is_unspecified())
    }

    /// Clients on the host itself (127.0.0.1) reach it: needs the masquerade and route_localnet.
    pub fn takes_loopback(&self) -> bool {
        self.bound().is_none_or(|ip| ip.is_loopback())
    }

    /// Clients from outside reach it (routed through FORWARD to the bridge).
    fn takes_forwarded(&self) -> bool {
        !self.bound().is_some_and(|ip| ip.is_loopback())
    }
}

/// Where the traffic goes: the serving container's address on the bridge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Target {
    pub addr: Ipv4Addr,
}

impl Target {
    pub fn new(addr: Ipv4Addr) -> Target {
        Target { addr }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr.fmt(f)
    }
}

/// One DNAT rule as read back from the kernel (for `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dnat {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub to: SocketAddrV4,
}

/// Which iptables binaries to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// `iptables` / `iptables-restore` from `PATH`: the same alternative Docker 20.10 runs.
    #[default]
    System,
    /// `iptables-nft` / `iptables-nft-restore`.
    Nft,
    /// `iptables-legacy` / `iptables-legacy-restore`.
    Legacy,
}

impl Backend {
    fn iptables(self) -> &'static str {
        match self {
            Backend::System => "iptables",
            Backend::Nft => "iptables-nft",
            Backend::Legacy => "iptables-legacy",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Backend::System => "iptables-restore",
            Backend::Nft => "iptables-nft-restore",
            Backend::Legacy => "iptables-legacy-restore",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Nat,
    Filter,
}

impl Table {
    pub fn name(self) -> &'static str {
        match self {
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    #[error("netfilter chain prefix {prefix:?} is not usable: {reason}")]
    BadPrefix { prefix: String, reason: &'static str },
    #[error("bridge interface name {name:?} is not usable: {reason}")]
    BadBridge { name: String, reason: &'static str },
    #[error("rule owner {name:?} is not usable: {reason}")]
    BadOwner { name: String, reason: &'static str },
    /// The own chains hold the rules of another agent that is still on this host.
    #[error(
        "[traffic] chains = \"{prefix}\": chains {prefix}-* hold the traffic rules of another blog-agent on this host \
         (comment \"blog-agent:{owner}\", container {owner}); not taking them over, or the two agents would rewrite \
         each other's rules forever: give each agent on a host its own [traffic] chains (if that agent is gone, \
         remove its container {owner} and this agent takes the chains over)"
    )]
    Owned { prefix: String, owner: String },
    #[error("could not run `{command}` (table {table}): {source}")]
    Spawn {
        command: String,
        table: Table,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` (table {table}) did not finish within {timeout:?} and was killed")]
    Timeout { command: String, table: Table, timeout: Duration },
    #[error("`{command}` (table {table}) failed ({status}): {stderr}")]
    Failed { command: String, table: Table, status: String, stderr: String },
    #[error("chain {chain} (table nat) sends traffic to more than one address: {found}")]
    MixedTargets { chain: String, found: String },
    #[error("could not write {value} to {}: {source}", path.display())]
    Sysctl {
        path: PathBuf,
        value: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The names of our four chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chains {
    /// nat: DNAT per mapping; jumped to from PREROUTING and OUTPUT.
    pub dnat: String,
    /// nat: masquerade of loopback clients; jumped to from POSTROUTING.
    pub post: String,
    /// filter: FORWARD accepts; jumped to from DOCKER-USER.
    pub forward: String,
    /// filter: the route_localnet guard; jumped to from INPUT.
    pub input: String,
}

impl Chains {
    fn new(prefix: &str) -> Chains {
        Chains {
            dnat: format!("{prefix}-DNAT"),
            post: format!("{prefix}-POST"),
            forward: format!("{prefix}-FWD"),
            input: format!("{prefix}-IN"),
        }
    }

    fn of(&self, table: Table) -> [&str; 2] {
        match table {
            Table::Nat => [&self.dnat, &self.post],
            Table::Filter => [&self.forward, &self.input],
        }
    }
}

/// One table as `iptables -t TABLE -S` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableState {
    /// Every chain, built-in (with its policy) or user-defined (policy `None`).
    pub chains: BTreeMap<String, Option<String>>,
    /// `-A CHAIN SPEC` lines, in order: (chain, spec).
    pub rules: Vec<(String, String)>,
}

impl TableState {
    /// Parses `iptables -S` output (comment lines such as iptables-nft's "legacy tables present"
    /// warning are skipped).
    pub fn parse(text: &str) -> TableState {
        let mut state = TableState::default();
        for line in text.lines().map(str::trim) {
            let mut words = line.splitn(3, ' ');
            match (words.next(), words.next(), words.next()) {
                (Some("-P"), Some(chain), policy) => {
                    state.chains.insert(chain.to_owned(), policy.map(str::to_owned));
                }
                (Some("-N"), Some(chain), _) => {
                    state.chains.insert(chain.to_owned(), None);
                }
                (Some("-A"), Some(chain), spec) => {
                    state.rules.push((chain.to_owned(), spec.unwrap_or("").to_owned()));
                }
                _ => {}
            }
        }
        state
    }

    fn has_chain(&self, chain: &str) -> bool {
        self.chains.contains_key(chain)
    }

    fn rules_in<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.rules.iter().filter(move |(c, _)| c == chain).map(|(_, s)| s.as_str())
    }
}

/// Both tables, as read before a change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub nat: TableState,
    pub filter: TableState,
}

impl Observed {
    fn table(&self, table: Table) -> &TableState {
        match table {
            Table::Nat => &self.nat,
            Table::Filter => &self.filter,
        }
    }
}

/// The `iptables-restore --noflush` input for each table; an empty string means the table is
/// already as desired (or, for a removal, holds nothing of ours).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub filter: String,
    pub nat: String,
}

impl Ruleset {
    /// Nothing to do: every rule, jump and chain is already in place.
    pub fn is_empty(&self) -> bool {
        self.filter.is_empty() && self.nat.is_empty()
    }

    fn text(&self, table: Table) -> &str {
        match table {
            Table::Nat => &self.nat,
            Table::Filter => &self.filter,
        }
    }
}

impl fmt::Display for Ruleset {
    /// Both tables, filter first (the order they are committed in): what `--dry-run` can show.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.filter, self.nat)
    }
}

/// Docker's chains as our backend sees them, for `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerLayout {
    /// `DOCKER-USER` exists in the filter table (dockerd is, or was, running on this backend).
    pub docker_user: bool,
    /// `FORWARD` jumps to `DOCKER-USER`.
    pub forward_jumps_to_docker_user: bool,
    /// The filter table's `FORWARD` policy (Docker sets DROP).
    pub forward_policy: Option<String>,
}

/// What one table should hold: our chains with their rules, the jumps into them, and foreign
/// chains that must exist for the jumps (DOCKER-USER before dockerd first ran).
struct Desired {
    table: Table,
    create: Vec<&'static str>,
    own: Vec<(String, Vec<String>)>,
    jumps: Vec<(&'static str, String)>,
}

/// Tells whether the agent named in rules of the own chains (by its container name) is still on
/// this host: while it is, its rules are its own. Docker in production (`pass::switch`).
pub trait OwnerLookup: Send + Sync {
    fn is_present<'a>(&'a self, container: &'a str) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>>;
}

/// Who the rules belong to: the container name in the mark, and how to tell whether another
/// owner is still there (none: every other owner counts as present).
#[derive(Clone)]
struct Owner {
    name: String,
    lookup: Option<Arc<dyn OwnerLookup>>,
}

impl fmt::Debug for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Owner").field("name", &self.name).field("lookup", &self.lookup.is_some()).finish()
    }
}

/// The agent's netfilter rules for one set of host ports.
#[derive(Debug, Clone)]
pub struct Netfilter {
    prefix: String,
    chains: Chains,
    bridge: String,
    backend: Backend,
    timeout: Duration,
    /// `None`: rules unmarked and anyone's taken over (tests, and readers such as `status`).
    owner: Option<Owner>,
}

impl Default for Netfilter {
    fn default() -> Self {
        Netfilter::new()
    }
}

impl Netfilter {
    /// Production: chains `BLOG-AGENT-*`, bridge `docker0`, the system's iptables.
    pub fn new() -> Netfilter {
        Netfilter {
            prefix: DEFAULT_PREFIX.to_owned(),
            chains: Chains::new(DEFAULT_PREFIX),
            bridge: DEFAULT_BRIDGE.to_owned(),
            backend: Backend::System,
            timeout: COMMAND_TIMEOUT,
            owner: None,
        }
    }

    /// Chains named `PREFIX-DNAT`, `PREFIX-POST`, `PREFIX-FWD`, `PREFIX-IN` (tests use a unique
    /// prefix each). At most 23 characters of `A-Z a-z 0-9 _ -`, not starting with `-`.
    pub fn with_prefix(prefix: &str) -> Result<Netfilter, NetfilterError> {
        let bad = |reason| NetfilterError::BadPrefix { prefix: prefix.to_owned(), reason };
        if prefix.is_empty() || prefix.len() > MAX_PREFIX_LEN {
            return Err(bad("it must be 1 to 23 characters long"));
        }
        if prefix.starts_with('-') || !prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(bad("only letters, digits, '-' and '_' are allowed, and it may not start with '-'"));
        }
        if prefix.starts_with("DOCKER") {
            return Err(bad("DOCKER* chains belong to dockerd"));
        }
        Ok(Netfilter { prefix: prefix.to_owned(), chains: Chains::new(prefix), ..Netfilter::new() })
    }

    /// The bridge the containers are on (Docker's default `docker0`).
    pub fn with_bridge(mut self, name: &str) -> Result<Netfilter, NetfilterError> {
        let bad = |reason| NetfilterError::BadBridge { name: name.to_owned(), reason };
        if name.is_empty() || name.len() > MAX_IFNAME_LEN {
            return Err(bad("an interface name is 1 to 15 characters long"));
        }
        if name == "." || name == ".." || name.chars().any(|c| c == '/' || c.is_whitespace() || c == '+') {
            return Err(bad("not an interface name"));
        }
        self.bridge = name.to_owned();
        Ok(self)
    }

    pub fn with_backend(mut self, backend: Backend) -> Netfilter {
        self.backend = backend;
        self
    }

    /// Marks every rule as written by the agent whose container is `container` (`[container]
    /// name`), and refuses chains holding another agent's rules ([`NetfilterError::Owned`]).
    /// `lookup` tells whether another owner is still on the host; without one, every owner
    /// named in the rules counts as present.
    pub fn with_owner(
        mut self,
        container: &str,
        lookup: Option<Arc<dyn OwnerLookup>>,
    ) -> Result<Netfilter, NetfilterError> {
        let bad = |reason| NetfilterError::BadOwner { name: container.to_owned(), reason };
        if container.is_empty() || container.len() > MAX_OWNER_LEN {
            return Err(bad("it must be 1 to 100 characters long"));
        }
        if !container.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
            return Err(bad("only letters, digits, '_', '.' and '-' are allowed (a Docker container name)"));
        }
        self.owner = Some(Owner { name: container.to_owned(), lookup });
        Ok(self)
    }

    /// The container name the rules are marked with, if any.
    pub fn owner(&self) -> Option<&str> {
        self.owner.as_ref().map(|o| o.name.as_str())
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn chains(&self) -> &Chains {
        &self.chains
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// `rule` (matches, then `-j ...`) with the owner's comment as its last match, written as
    /// `iptables -S` prints it.
    fn marked(&self, rule: String) -> String {
        let Some(owner) = &self.owner else { return rule };
        match rule.find("-j ") {
            Some(at) => format!("{}-m comment --comment \"{OWNER_MARK}{}\" {}", &rule[..at], owner.name, &rule[at..]),
            None => rule,
        }
    }

    fn desired(&self, mappings: &[Mapping], target: Option<Target>) -> [Desired; 2] {
        let [filter, nat] = self.desired_unmarked(mappings, target);
        let mark = |mut d: Desired| {
            for (_, rules) in &mut d.own {
                *rules = std::mem::take(rules).into_iter().map(|r| self.marked(r)).collect();
            }
            d
        };
        [mark(filter), mark(nat)]
    }

    /// `target` `None`: every chain and jump as for a target, with no DNAT at all (see
    /// [`Netfilter::withhold`]).
    fn desired_unmarked(&self, mappings: &[Mapping], target: Option<Target>) -> [Desired; 2] {
        let c = &self.chains;
        let bridge = &self.bridge;
        let loopback = mappings.iter().any(Mapping::takes_loopback);

        let mut forward = Vec::new();
        let mut input = Vec::new();
        for m in mappings.iter().filter(|m| m.takes_forwarded()) {
            // Matches the flow by its original destination, so it does not change when the
            // target does; established flows to the old container stay accepted.
            let orig = m.bound().map(|ip| format!(" --ctorigdst {ip}")).unwrap_or_default();
            forward.push(format!(
                "-o {bridge} -p tcp -m conntrack --ctstate DNAT{orig} --ctorigdstport {} -j ACCEPT",
                m.host_port
            ));
        }
        if loopback {
            input.push(format!(
                "-d {LOOPBACK_NET} -i {bridge} -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
            ));
        }
        let filter = Desired {
            table: Table::Filter,
            create: vec![DOCKER_USER],
            own: vec![(c.forward.clone(), forward), (c.input.clone(), input)],
            jumps: vec![(DOCKER_USER, format!("-j {}", c.forward)), ("INPUT", format!("-j {}", c.input))],
        };

        let mut dnat = Vec::new();
        let mut post = Vec::new();
        let targeted = mappings.iter().filter_map(|m| target.map(|t| (m, t)));
        for (m, target) in targeted {
            let dst = m.bound().map(|ip| format!("-d {ip}/32 ")).unwrap_or_default();
            dnat.push(format!(
                "{dst}-p tcp -m tcp --dport {} -j DNAT --to-destination {}:{}",
                m.host_port, target.addr, m.container_port
            ));
        }
        if loopback {
            post.push(format!("-s {LOOPBACK_NET} -o {bridge} -m conntrack --ctstate DNAT -j MASQUERADE"));
        }
        let local = format!("-m addrtype --dst-type LOCAL -j {}", c.dnat);
        let nat = Desired {
            table: Table::Nat,
            create: vec![],
            own: vec![(c.dnat.clone(), dnat), (c.post.clone(), post)],
            jumps: vec![("PREROUTING", local.clone()), ("OUTPUT", local), ("POSTROUTING", format!("-j {}", c.post))],
        };
        [filter, nat]
    }

    /// The whole desired rule set for `mappings` sent to `target`, given what the tables hold
    /// now: pure, no I/O. A table already exactly as desired renders as an empty string.
    ///
    /// Each non-empty table is: declarations of our chains (with `--noflush`, declaring an
    /// existing chain flushes it), `-D` of duplicate or stale jumps into our chains, `-I ... 1`
    /// of each missing jump, our rules, `COMMIT`. Rules are written in the canonical form
    /// `iptables -S` prints, so reading them back compares as text. To show the whole rule set
    /// whatever is in place (`--dry-run`), render against `Observed::default()` (a host with
    /// no rules: it then also declares `DOCKER-USER`).
    pub fn render(&self, mappings: &[Mapping], target: Target, observed: &Observed) -> Ruleset {
        self.render_to(mappings, Some(target), observed)
    }

    /// The rule set of [`Netfilter::withhold`]: as [`Netfilter::render`], with the DNAT chain
    /// declared (so flushed) and left empty. Pure.
    pub fn render_withheld(&self, mappings: &[Mapping], observed: &Observed) -> Ruleset {
        self.render_to(mappings, None, observed)
    }

    fn render_to(&self, mappings: &[Mapping], target: Option<Target>, observed: &Observed) -> Ruleset {
        let [filter, nat] = self.desired(mappings, target);
        Ruleset {
            filter: render_table(&filter, observed.table(Table::Filter)),
            nat: render_table(&nat, observed.table(Table::Nat)),
        }
    }

    /// The removal of every jump into our chains and of the chains themselves: pure. Empty for
    /// a table that holds nothing of ours.
    pub fn render_removal(&self, observed: &Observed) -> Ruleset {
        let table = |t: Table| {
            let state = observed.table(t);
            let own = self.chains.of(t);
            let mut out = String::new();
            for (chain, spec) in &state.rules {
                if !own.contains(&chain.as_str()) && own.iter().any(|c| jumps_to(spec, c)) {
                    out.push_str(&format!("-D {chain} {spec}\n"));
                }
            }
            for c in own.iter().filter(|c| state.has_chain(c)) {
                out.push_str(&format!("-F {c}\n"));
            }
            for c in own.iter().filter(|c| state.has_chain(c)) {
                out.push_str(&format!("-X {c}\n"));
            }
            if out.is_empty() {
                out
            } else {
                format!("*{t}\n{out}COMMIT\n")
            }
        };
        Ruleset { filter: table(Table::Filter), nat: table(Table::Nat) }
    }

    /// The DNAT rules in our nat chain (for `status`): pure.
    pub fn dnat_rules(&self, observed: &Observed) -> Vec<Dnat> {
        observed.nat.rules_in(&self.chains.dnat).filter_map(parse_dnat).collect()
    }

    /// The one address our DNAT rules send traffic to; `None` when there are none: pure.
    pub fn target_of(&self, observed: &Observed) -> Result<Option<Target>, NetfilterError> {
        let addrs: BTreeSet<Ipv4Addr> = self.dnat_rules(observed).iter().map(|d| *d.to.ip()).collect();
        match addrs.len() {
            0 => Ok(None),
            1 => Ok(addrs.into_iter().next().map(Target::new)),
            _ => Err(NetfilterError::MixedTargets {
                chain: self.chains.dnat.clone(),
                found: addrs.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(", "),
            }),
        }
    }

    /// The agents other than this one whose mark is on a rule in the own chains (their
    /// container names, sorted): pure. Unmarked rules (an agent from before the mark, or a
    /// rule added by hand) name no one.
    pub fn other_owners(&self, observed: &Observed) -> Vec<String> {
        let mine = self.owner();
        let mut found = BTreeSet::new();
        for table in [Table::Filter, Table::Nat] {
            let state = observed.table(table);
            for chain in self.chains.of(table) {
                for spec in state.rules_in(chain) {
                    if let Some(owner) = owner_of(spec).filter(|o| Some(*o) != mine) {
                        found.insert(owner.to_owned());
                    }
                }
            }
        }
        found.into_iter().collect()
    }

    /// Fails with [`NetfilterError::Owned`] when the own chains hold rules of another agent still
    /// on this host. Rules of an owner that is gone are taken over (logged once per apply).
    /// Without an owner of its own, this Netfilter claims nothing and refuses nothing.
    async fn claim(&self, observed: &Observed) -> Result<(), NetfilterError> {
        let Some(me) = &self.owner else { return Ok(()) };
        for other in self.other_owners(observed) {
            let present = match &me.lookup {
                Some(lookup) => lookup.is_present(&other).await,
                None => true,
            };
            if present {
                return Err(NetfilterError::Owned { prefix: self.prefix.clone(), owner: other });
            }
            tracing::info!(
                chains = %self.prefix, previous_owner = %other,
                "chains {}-* hold rules of {OWNER_MARK}{other}, whose container is gone from this host: taking them over",
                self.prefix
            );
        }
        Ok(())
    }

    /// Whether the chains are this agent's to write: `Err(Owned)` when another agent's rules
    /// are in them (see [`Netfilter::with_owner`]).
    pub async fn check_owner(&self) -> Result<(), NetfilterError> {
        if self.owner.is_none() {
            return Ok(());
        }
        let observed = self.observe().await?;
        self.claim(&observed).await
    }

    /// Reads both tables.
    pub async fn observe(&self) -> Result<Observed, NetfilterError> {
        let (filter, nat) = tokio::try_join!(self.observe_table(Table::Filter), self.observe_table(Table::Nat))?;
        Ok(Observed { filter, nat })
    }

    async fn observe_table(&self, table: Table) -> Result<TableState, NetfilterError> {
        let args = ["-w", LOCK_WAIT_SECONDS, "-t", table.name(), "-S"];
        let out = self.run(table, self.backend.iptables(), &args, None).await?;
        Ok(TableState::parse(&out))
    }

    /// Makes every new connection to `mappings`' host ports go to `target`, in one transaction
    /// per table (filter, then nat); established connections keep their old target. Idempotent:
    /// repeated calls never duplicate a jump, and a call with nothing to change changes nothing.
    /// Sets `route_localnet` on the bridge first when a mapping takes loopback clients (a bridge
    /// that does not exist yet is logged and skipped: apply again once dockerd has created it).
    pub async fn apply(&self, mappings: &[Mapping], target: Target) -> Result<(), NetfilterError> {
        self.apply_to(mappings, Some(target)).await
    }

    /// Sends the host ports of `mappings` nowhere: the DNAT chain is emptied in one transaction
    /// and every other chain and jump stays, so pointing them at a container later is again one
    /// atomic change. A new connection to a host port then reaches the host itself, where
    /// nothing listens on it in switch mode: it is refused at once. For a serving container
    /// that is gone, whose bridge address Docker may hand to a container nobody proved (the
    /// nat table cannot REJECT; a refused connection is what a REJECT would give). Established
    /// connections keep their conntrack entry.
    pub async fn withhold(&self, mappings: &[Mapping]) -> Result<(), NetfilterError> {
        self.apply_to(mappings, None).await
    }

    async fn apply_to(&self, mappings: &[Mapping], target: Option<Target>) -> Result<(), NetfilterError> {
        if mappings.iter().any(Mapping::takes_loopback) {
            self.ensure_route_localnet().await?;
        }
        let observed = self.observe().await?;
        self.claim(&observed).await?;
        self.write(&self.render_to(mappings, target, &observed)).await
    }

    /// Commits each non-empty table of `rules`, filter first.
    async fn write(&self, rules: &Ruleset) -> Result<(), NetfilterError> {
        for table in [Table::Filter, Table::Nat] {
            let text = rules.text(table);
            if !text.is_empty() {
                tracing::debug!(table = table.name(), rules = %text, "iptables-restore");
                self.restore(table, text).await?;
            }
        }
        Ok(())
    }

    /// Whether `apply(mappings, target)` would change nothing: every rule and jump in place, no
    /// duplicate, and `route_localnet` on where loopback needs it (when readable). For the
    /// re-assertion loop: cheap (two `iptables -S`), and true means leave the kernel alone.
    /// `Err(Owned)` when another agent's rules are in the chains, as for `apply`.
    ///
    /// Rules exactly as an agent from before the owner's mark wrote them (the same traffic, no
    /// comment) are in place: they are marked here, in one transaction that sends every
    /// connection where it went already, so an upgrade takes them over silently instead of
    /// reporting them as changed outside the agent.
    pub async fn in_place(&self, mappings: &[Mapping], target: Target) -> Result<bool, NetfilterError> {
        if mappings.iter().any(Mapping::takes_loopback) && self.route_localnet().await == Some(false) {
            return Ok(false);
        }
        let observed = self.observe().await?;
        self.claim(&observed).await?;
        let rules = self.render(mappings, target, &observed);
        if rules.is_empty() {
            return Ok(true);
        }
        if self.owner.is_some() && self.unmarked().render(mappings, target, &observed).is_empty() {
            tracing::debug!(chains = %self.prefix, "marking the rules an earlier blog-agent wrote as this agent's");
            self.write(&rules).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// This Netfilter without an owner: what an agent from before the mark renders.
    fn unmarked(&self) -> Netfilter {
        Netfilter { owner: None, ..self.clone() }
    }

    /// The address our DNAT rules currently send traffic to (`None`: no rules, e.g. someone
    /// flushed the chain, or never applied).
    pub async fn current(&self) -> Result<Option<Target>, NetfilterError> {
        let nat = self.observe_table(Table::Nat).await?;
        self.target_of(&Observed { nat, ..Observed::default() })
    }

    /// Every DNAT rule of ours, per host port (for `status`).
    pub async fn current_rules(&self) -> Result<Vec<Dnat>, NetfilterError> {
        let nat = self.observe_table(Table::Nat).await?;
        Ok(self.dnat_rules(&Observed { nat, ..Observed::default() }))
    }

    /// Deletes every jump into our chains, then the chains (nat first, so nothing is DNATed to
    /// a flow that would no longer be accepted). Idempotent. Resets the bridge's
    /// `route_localnet` to 0 unless another rule still masquerades loopback clients out of it
    /// (another prefix, or dockerd's own `userland-proxy=false` mode).
    pub async fn remove(&self) -> Result<(), NetfilterError> {
        let observed = self.observe().await?;
        self.claim(&observed).await?;
        let rules = self.render_removal(&observed);
        for table in [Table::Nat, Table::Filter] {
            let text = rules.text(table);
            if !text.is_empty() {
                self.restore(table, text).await?;
            }
        }
        let nat = self.observe_table(Table::Nat).await?;
        let bridge_out = format!("-o {} ", self.bridge);
        let others = nat.rules.iter().any(|(_, spec)| {
            spec.contains(&bridge_out)
                && spec.ends_with("-j MASQUERADE")
                && (spec.contains("-s 127.0.0.0/8 ") || spec.contains("--src-type LOCAL"))
        });
        if !others && self.route_localnet().await == Some(true) {
            self.write_route_localnet("0").await?;
        }
        Ok(())
    }

    /// Docker's filter chains as our backend sees them.
    pub async fn docker_layout(&self) -> Result<DockerLayout, NetfilterError> {
        let filter = self.observe_table(Table::Filter).await?;
        let jump = format!("-j {DOCKER_USER}");
        let forward_jumps_to_docker_user = filter.rules_in("FORWARD").any(|s| s == jump);
        Ok(DockerLayout {
            docker_user: filter.has_chain(DOCKER_USER),
            forward_jumps_to_docker_user,
            forward_policy: filter.chains.get("FORWARD").cloned().flatten(),
        })
    }

    /// `iptables -V` of our backend, e.g. "iptables v1.8.9 (nf_tables)".
    pub async fn version(&self) -> Result<String, NetfilterError> {
        Ok(self.run(Table::Filter, self.backend.iptables(), &["-V"], None).await?.trim().to_owned())
    }

    fn route_localnet_path(&self) -> PathBuf {
        PathBuf::from(SYSCTL_CONF).join(&self.bridge).join("route_localnet")
    }

    /// `Some(on)`, or `None` when it cannot be read (no such bridge yet, or /proc/sys hidden).
    pub async fn route_localnet(&self) -> Option<bool> {
        let text = tokio::fs::read_to_string(self.route_localnet_path()).await.ok()?;
        Some(text.trim() != "0")
    }

    async fn ensure_route_localnet(&self) -> Result<(), NetfilterError> {
        match self.route_localnet().await {
            Some(true) => Ok(()),
            Some(false) => self.write_route_localnet("1").await,
            // /proc/sys hidden (systemd ProcSubset=pid): the packaging's sysctl.d file has to
            // set it; nothing to check here.
            None if !std::path::Path::new(SYSCTL_CONF).exists() => {
                tracing::debug!(path = %self.route_localnet_path().display(), "route_localnet not visible");
                Ok(())
            }
            None => {
                tracing::warn!(
                    bridge = %self.bridge,
                    "no such interface yet: loopback clients are not served until apply runs again after dockerd creates it"
                );
                Ok(())
            }
        }
    }

    async fn write_route_localnet(&self, value: &'static str) -> Result<(), NetfilterError> {
        let path = self.route_localnet_path();
        tokio::fs::write(&path, value).await.map_err(|source| NetfilterError::Sysctl { path, value, source })
    }

    async fn restore(&self, table: Table, text: &str) -> Result<(), NetfilterError> {
        let args = ["-w", LOCK_WAIT_SECONDS, "--noflush"];
        self.run(table, self.backend.restore(), &args, Some(text.to_owned())).await.map(drop)
    }

    /// Runs one command off the async threads, bounded by the timeout; returns its stdout.
    async fn run(
        &self,
        table: Table,
        program: &'static str,
        args: &[&str],
        input: Option<String>,
    ) -> Result<String, NetfilterError> {
        let command = std::iter::once(program).chain(args.iter().copied()).collect::<Vec<_>>().join(" ");
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let timeout = self.timeout;
        let joined = tokio::task::spawn_blocking(move || run_bounded(program, &args, input, timeout)).await;
        let outcome = joined.unwrap_or_else(|e| Err(Failure::Spawn(io::Error::other(e))));
        outcome.map_err(|failure| match failure {
            Failure::Spawn(source) => NetfilterError::Spawn { command, table, source },
            Failure::Timeout => NetfilterError::Timeout { command, table, timeout },
            Failure::Exit { status, stderr } => NetfilterError::Failed { command, table, status, stderr },
        })
    }
}

fn render_table(desired: &Desired, state: &TableState) -> String {
    let own: Vec<&str> = desired.own.iter().map(|(c, _)| c.as_str()).collect();
    let mut head = format!("*{}\n", desired.table);
    let mut change = false;
    for chain in desired.create.iter().filter(|c| !state.has_chain(c)) {
        head.push_str(&format!(":{chain} - [0:0]\n"));
        change = true;
    }
    let mut body = String::new();
    // Stale jumps (into our chains, but not one we want) and copies of wanted ones go.
    let mut seen: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for (chain, spec) in &state.rules {
        if own.contains(&chain.as_str()) || !own.iter().any(|c| jumps_to(spec, c)) {
            continue;
        }
        let wanted = desired.jumps.iter().any(|(from, s)| from == chain && s == spec);
        let n = seen.entry((chain, spec)).or_default();
        *n += 1;
        if !wanted || *n > 1 {
            body.push_str(&format!("-D {chain} {spec}\n"));
            change = true;
        }
    }
    for (from, spec) in &desired.jumps {
        if !seen.contains_key(&(*from, spec.as_str())) {
            body.push_str(&format!("-I {from} {} {spec}\n", jump_position(from, state, &own)));
            change = true;
        }
    }
    for (chain, rules) in &desired.own {
        head.push_str(&format!(":{chain} - [0:0]\n"));
        if !state.has_chain(chain) || !state.rules_in(chain).eq(rules.iter().map(String::as_str)) {
            change = true;
        }
        for rule in rules {
            body.push_str(&format!("-A {chain} {rule}\n"));
        }
    }
    if change {
        format!("{head}{body}COMMIT\n")
    } else {
        String::new()
    }
}

/// Where a missing jump into our chains goes in `from`: first, except in `DOCKER-USER`, the
/// operator's own chain for forwarded traffic: there it goes after the operator's rules (a DROP
/// of an abusive client for the blog ports must win over our ACCEPT) and before Docker's closing
/// `-j RETURN`. Counted on the rules that stay (this change deletes stale jumps into our chains).
fn jump_position(from: &str, state: &TableState, own: &[&str]) -> usize {
    if from != DOCKER_USER {
        return 1;
    }
    let staying: Vec<&str> =
        state.rules_in(DOCKER_USER).filter(|spec| !own.iter().any(|c| jumps_to(spec, c))).collect();
    match staying.iter().position(|spec| *spec == "-j RETURN") {
        Some(at) => at + 1,
        None => staying.len() + 1,
    }
}

/// Whether a rule spec jumps (`-j`) or goes (`-g`) to `chain`.
fn jumps_to(spec: &str, chain: &str) -> bool {
    let words: Vec<&str> = spec.split_whitespace().collect();
    words.windows(2).any(|w| (w[0] == "-j" || w[0] == "-g") && w[1] == chain)
}

/// The container name in a rule's `blog-agent:NAME` comment, as `iptables -S` prints it
/// (`-m comment --comment "blog-agent:NAME"`).
fn owner_of(spec: &str) -> Option<&str> {
    let words: Vec<&str> = spec.split_whitespace().collect();
    let comment = words.windows(2).find(|w| w[0] == "--comment").map(|w| w[1])?;
    comment.trim_matches('"').strip_prefix(OWNER_MARK).filter(|name| !name.is_empty())
}

fn parse_dnat(spec: &str) -> Option<Dnat> {
    let words: Vec<&str> = spec.split_whitespace().collect();
    let value = |flag: &str| words.windows(2).find(|w| w[0] == flag).map(|w| w[1]);
    if value("-j") != Some("DNAT") {
        return None;
    }
    let host_ip = match value("-d") {
        Some(d) => Some(d.trim_end_matches("/32").parse().ok()?),
        None => None,
    };
    Some(Dnat { host_ip, host_port: value("--dport")?.parse().ok()?, to: value("--to-destination")?.parse().ok()? })
}

enum Failure {
    Spawn(io::Error),
    Timeout,
    Exit { status: String, stderr: String },
}

/// std::process with a deadline (tokio's `process` feature is not enabled in this crate):
/// stdin written and stdout/stderr read on their own threads so no pipe can fill up, the
/// child polled every few ms and killed at the deadline.
fn run_bounded(program: &str, args: &[String], input: Option<String>, timeout: Duration) -> Result<String, Failure> {
    let deadline = Instant::now() + timeout;
    let mut child = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Failure::Spawn)?;
    let writer = child.stdin.take().map(|mut stdin| {
        let input = input.unwrap_or_default();
        std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        })
    });
    let reader = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = reader(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = reader(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Failure::Timeout);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(Failure::Spawn(e)),
        }
    };
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if status.success() {
        Ok(stdout)
    } else {
        Err(Failure::Exit { status: status.to_string(), stderr: stderr.trim().to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADDR: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);

    fn nf() -> Netfilter {
        Netfilter::new()
    }

    /// `iptables -S` of a host where dockerd runs and we never applied (abridged).
    fn docker_host() -> Observed {
        Observed {
            filter: TableState::parse(
                "-P INPUT ACCEPT\n-P FORWARD DROP\n-P OUTPUT ACCEPT\n-N DOCKER\n-N DOCKER-USER\n\
                 -A FORWARD -j DOCKER-USER\n-A FORWARD -o docker0 -j DOCKER\n-A DOCKER-USER -j RETURN\n",
            ),
            nat: TableState::parse(
                "-P PREROUTING ACCEPT\n-P INPUT ACCEPT\n-P OUTPUT ACCEPT\n-P POSTROUTING ACCEPT\n-N DOCKER\n\
                 -A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER\n\
                 -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n",
            ),
        }
    }

    /// Appends `-S` lines (as iptables prints them) to the observed state.
    fn with(mut observed: Observed, table: Table, lines: &str) -> Observed {
        let extra = TableState::parse(lines);
        let state = match table {
            Table::Nat => &mut observed.nat,
            Table::Filter => &mut observed.filter,
        };
        state.chains.extend(extra.chains);
        state.rules.extend(extra.rules);
        observed
    }

    const JUMPS_FILTER: &str = "-I DOCKER-USER 1 -j BLOG-AGENT-FWD\n-I INPUT 1 -j BLOG-AGENT-IN\n";
    const JUMPS_NAT: &str = "-I PREROUTING 1 -m addrtype --dst-type LOCAL -j BLOG-AGENT-DNAT\n\
                             -I OUTPUT 1 -m addrtype --dst-type LOCAL -j BLOG-AGENT-DNAT\n\
                             -I POSTROUTING 1 -j BLOG-AGENT-POST\n";
    const HEAD_FILTER: &str = "*filter\n:BLOG-AGENT-FWD - [0:0]\n:BLOG-AGENT-IN - [0:0]\n";
    const HEAD_NAT: &str = "*nat\n:BLOG-AGENT-DNAT - [0:0]\n:BLOG-AGENT-POST - [0:0]\n";
    const GUARD: &str =
        "-A BLOG-AGENT-IN -d 127.0.0.0/8 -i docker0 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n";
    const MASQ: &str = "-A BLOG-AGENT-POST -s 127.0.0.0/8 -o docker0 -m conntrack --ctstate DNAT -j MASQUERADE\n";

    #[test]
    fn the_forward_jump_goes_after_the_operator_s_own_rules_and_before_docker_s_return() {
        let m = [Mapping::new(None, 80, 80)];
        let target = Target::new(Ipv4Addr::new(172, 17, 0, 2));
        let mut o = docker_host();
        // The operator blocks a client in DOCKER-USER, above Docker's RETURN.
        let drop = "-s 203.0.113.7/32 -p tcp -m tcp --dport 80 -j DROP".to_owned();
        let at = o.filter.rules.iter().position(|(c, s)| c == "DOCKER-USER" && s == "-j RETURN").unwrap();
        o.filter.rules.insert(at, ("DOCKER-USER".into(), drop));
        let got = nf().render(&m, target, &o);
        assert!(got.filter.contains("-I DOCKER-USER 2 -j BLOG-AGENT-FWD\n"), "{}", got.filter);
        // Only the RETURN in DOCKER-USER: the jump goes first.
        let plain = nf().render(&m, target, &docker_host());
        assert!(plain.filter.contains("-I DOCKER-USER 1 -j BLOG-AGENT-FWD\n"), "{}", plain.filter);
        // INPUT's jump stays first.
        assert!(got.filter.contains("-I INPUT 1 -j BLOG-AGENT-IN\n"), "{}", got.filter);
    }

    #[test]
    fn renders_the_whole_rule_set_for_each_kind_of_mapping() {
        let public = Ipv4Addr::new(192, 0, 2, 2);
        let cases: Vec<(&str, Vec<Mapping>, String, String)> = vec![
            (
                "all addresses (\"8080:80\")",
                vec![Mapping::new(None, 8080, 80)],
                format!(
                    "{HEAD_FILTER}{JUMPS_FILTER}\
                     -A BLOG-AGENT-FWD -o docker0 -p tcp -m conntrack --ctstate DNAT --ctorigdstport 8080 -j ACCEPT\n\
                     {GUARD}COMMIT\n"
                ),
                format!(
                    "{HEAD_NAT}{JUMPS_NAT}\
                     -A BLOG-AGENT-DNAT -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80\n\
                     {MASQ}COMMIT\n"
                ),
            ),
            (
                "one public address (\"192.0.2.2:80:8080\")",
                vec![Mapping::new(Some(public), 80, 8080)],
                format!(
                    "{HEAD_FILTER}{JUMPS_FILTER}\
                     -A BLOG-AGENT-FWD -o docker0 -p tcp -m conntrack --ctstate DNAT --ctorigdst 192.0.2.2 --ctorigdstport 80 -j ACCEPT\n\
                     COMMIT\n"
                ),
                format!(
                    "{HEAD_NAT}{JUMPS_NAT}\
                     -A BLOG-AGENT-DNAT -d 192.0.2.2/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 172.17.0.2:8080\n\
                     COMMIT\n"
                ),
            ),
            (
                "loopback only (\"127.0.0.1:8080:80\"): no FORWARD accept",
                vec![Mapping::new(Some(Ipv4Addr::LOCALHOST), 8080, 80)],
                format!("{HEAD_FILTER}{JUMPS_FILTER}{GUARD}COMMIT\n"),
                format!(
                    "{HEAD_NAT}{JUMPS_NAT}\
                     -A BLOG-AGENT-DNAT -d 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80\n\
                     {MASQ}COMMIT\n"
                ),
            ),
            (
                "two mappings; 0.0.0.0 is all addresses",
                vec![Mapping::new(Some(Ipv4Addr::UNSPECIFIED), 80, 80), Mapping::new(Some(public), 443, 8443)],
                format!(
                    "{HEAD_FILTER}{JUMPS_FILTER}\
                     -A BLOG-AGENT-FWD -o docker0 -p tcp -m conntrack --ctstate DNAT --ctorigdstport 80 -j ACCEPT\n\
                     -A BLOG-AGENT-FWD -o docker0 -p tcp -m conntrack --ctstate DNAT --ctorigdst 192.0.2.2 --ctorigdstport 443 -j ACCEPT\n\
                     {GUARD}COMMIT\n"
                ),
                format!(
                    "{HEAD_NAT}{JUMPS_NAT}\
                     -A BLOG-AGENT-DNAT -p tcp -m tcp --dport 80 -j DNAT --to-destination 172.17.0.2:80\n\
                     -A BLOG-AGENT-DNAT -d 192.0.2.2/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination 172.17.0.2:8443\n\
                     {MASQ}COMMIT\n"
                ),
            ),
            (
                "no mappings: the chains are emptied, the jumps stay",
                vec![],
                format!("{HEAD_FILTER}{JUMPS_FILTER}COMMIT\n"),
                format!("{HEAD_NAT}{JUMPS_NAT}COMMIT\n"),
            ),
        ];
        for (name, mappings, filter, nat) in cases {
            let got = nf().render(&mappings, Target::new(ADDR), &docker_host());
            assert_eq!(got.filter, filter, "{name}: filter");
            assert_eq!(got.nat, nat, "{name}: nat");
        }
    }

    /// The tables after the first case above was applied, as `iptables -S` prints them.
    fn applied(observed: Observed, to: &str) -> Observed {
        let o = with(
            observed,
            Table::Filter,
            "-N BLOG-AGENT-FWD\n-N BLOG-AGENT-IN\n-A INPUT -j BLOG-AGENT-IN\n\
             -A BLOG-AGENT-FWD -o docker0 -p tcp -m conntrack --ctstate DNAT --ctorigdstport 8080 -j ACCEPT\n\
             -A BLOG-AGENT-IN -d 127.0.0.0/8 -i docker0 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP\n",
        );
        let mut o = with(
            o,
            Table::Nat,
            &format!(
                "-N BLOG-AGENT-DNAT\n-N BLOG-AGENT-POST\n\
                 -A PREROUTING -m addrtype --dst-type LOCAL -j BLOG-AGENT-DNAT\n\
                 -A OUTPUT -m addrtype --dst-type LOCAL -j BLOG-AGENT-DNAT\n-A POSTROUTING -j BLOG-AGENT-POST\n\
                 -A BLOG-AGENT-DNAT -p tcp -m tcp --dport 8080 -j DNAT --to-destination {to}:80\n\
                 -A BLOG-AGENT-POST -s 127.0.0.0/8 -o docker0 -m conntrack --ctstate DNAT -j MASQUERADE\n"
            ),
        );
        // DOCKER-USER's jump sits above Docker's RETURN.
        o.filter.rules.insert(2, ("DOCKER-USER".into(), "-j BLOG-AGENT-FWD".into()));
        o
    }

    #[test]
    fn what_is_in_place_renders_as_nothing_and_a_switch_only_rewrites_the_nat_chain() {
        let m = [Mapping::new(None, 8080, 80)];
        let now = applied(docker_host(), "172.17.0.2");
        assert!(nf().render(&m, Target::new(ADDR), &now).is_empty());

        let switch = nf().render(&m, Target::new(Ipv4Addr::new(172, 17, 0, 3)), &now);
        assert_eq!(switch.filter, "", "the FORWARD accept does not depend on the target");
        assert_eq!(
            switch.nat,
            format!(
                "{HEAD_NAT}-A BLOG-AGENT-DNAT -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.3:80\n{MASQ}COMMIT\n"
            ),
            "no jump re-inserted"
        );
    }

    /// A proven container that is gone: its address may go to a container nobody proved.
    #[test]
    fn withholding_empties_only_the_dnat_chain_and_pointing_again_is_one_change() {
        let m = [Mapping::new(None, 8080, 80)];
        let now = applied(docker_host(), "172.17.0.2");
        let withheld = nf().render_withheld(&m, &now);
        assert_eq!(withheld.filter, "", "the FORWARD accept and the guard stay");
        assert_eq!(withheld.nat, format!("{HEAD_NAT}{MASQ}COMMIT\n"), "declared (flushed), no DNAT, no jump touched");

        // As the kernel has it afterwards: nothing more to do, and pointing again is one change.
        let mut after = now.clone();
        after.nat.rules.retain(|(c, _)| c != "BLOG-AGENT-DNAT");
        assert!(nf().render_withheld(&m, &after).is_empty());
        assert_eq!(nf().target_of(&after).unwrap(), None);
        let back = nf().render(&m, Target::new(Ipv4Addr::new(172, 17, 0, 3)), &after);
        assert_eq!(
            back.nat,
            format!(
                "{HEAD_NAT}-A BLOG-AGENT-DNAT -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.3:80\n{MASQ}COMMIT\n"
            )
        );
        assert_eq!(back.filter, "");
        // On a host with no rules of ours at all, it lays out the chains and jumps, with no DNAT.
        let fresh = nf().render_withheld(&m, &docker_host());
        assert_eq!(fresh.nat, format!("{HEAD_NAT}{JUMPS_NAT}{MASQ}COMMIT\n"));
    }

    #[test]
    fn repairs_flushed_chains_duplicates_stale_jumps_and_a_missing_docker_user() {
        let m = [Mapping::new(None, 8080, 80)];
        let target = Target::new(ADDR);
        let cases: Vec<(&str, Observed, &str, &str)> = vec![
            (
                "someone flushed our nat chain: refilled, no jump added",
                {
                    let mut o = applied(docker_host(), "172.17.0.2");
                    o.nat.rules.retain(|(c, _)| c != "BLOG-AGENT-DNAT");
                    o
                },
                "",
                "-A BLOG-AGENT-DNAT -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80\n",
            ),
            (
                "DOCKER-USER flushed (our jump gone): only that jump comes back",
                {
                    let mut o = applied(docker_host(), "172.17.0.2");
                    o.filter.rules.retain(|(c, _)| c != "DOCKER-USER");
                    o
                },
                "-I DOCKER-USER 1 -j BLOG-AGENT-FWD\n",
                "",
            ),
            (
                "a jump twice and a stale one: extra copies deleted",
                with(
                    applied(docker_host(), "172.17.0.2"),
                    Table::Nat,
                    "-A OUTPUT -m addrtype --dst-type LOCAL -j BLOG-AGENT-DNAT\n\
                     -A OUTPUT -d 127.0.0.1/32 -j BLOG-AGENT-DNAT\n",
                ),
                "",
                "-D OUTPUT -m addrtype --dst-type LOCAL -j BLOG-AGENT-DNAT\n-D OUTPUT -d 127.0.0.1/32 -j BLOG-AGENT-DNAT\n",
            ),
        ];
        for (name, observed, filter_change, nat_change) in cases {
            let got = nf().render(&m, target, &observed);
            assert_eq!(got.filter.is_empty(), filter_change.is_empty(), "{name}: filter {:?}", got.filter);
            assert_eq!(got.nat.is_empty(), nat_change.is_empty(), "{name}: nat {:?}", got.nat);
            for line in filter_change.lines() {
                assert!(got.filter.contains(line), "{name}: {line:?} not in {:?}", got.filter);
            }
            for line in nat_change.lines() {
                assert!(got.nat.contains(line), "{name}: {line:?} not in {:?}", got.nat);
            }
            assert_eq!(got.to_string().matches("-I ").count(), filter_change.matches("-I ").count(), "{name}");
        }

        // Before dockerd ever ran: DOCKER-USER is created (dockerd adopts it), not flushed.
        let bare = Observed {
            filter: TableState::parse("-P INPUT ACCEPT\n-P FORWARD ACCEPT\n-P OUTPUT ACCEPT\n"),
            nat: TableState::default(),
        };
        let got = nf().render(&m, target, &bare);
        assert!(got.filter.starts_with("*filter\n:DOCKER-USER - [0:0]\n"), "{}", got.filter);
        assert!(!nf().render(&m, target, &docker_host()).filter.contains(":DOCKER-USER"));
    }

    #[test]
    fn removal_deletes_every_jump_then_the_chains_and_nothing_else() {
        let now =
            with(applied(docker_host(), "172.17.0.2"), Table::Nat, "-A OUTPUT -d 127.0.0.1/32 -j BLOG-AGENT-DNAT\n");
        let got = nf().render_removal(&now);
        assert_eq!(
            got.nat,
            "*nat\n-D PREROUTING -m addrtype --dst-type LOCAL -j BLOG-AGENT-DNAT\n\
             -D OUTPUT -m addrtype --dst-type LOCAL -j BLOG-AGENT-DNAT\n-D POSTROUTING -j BLOG-AGENT-POST\n\
             -D OUTPUT -d 127.0.0.1/32 -j BLOG-AGENT-DNAT\n\
             -F BLOG-AGENT-DNAT\n-F BLOG-AGENT-POST\n-X BLOG-AGENT-DNAT\n-X BLOG-AGENT-POST\nCOMMIT\n"
        );
        assert_eq!(
            got.filter,
            "*filter\n-D DOCKER-USER -j BLOG-AGENT-FWD\n-D INPUT -j BLOG-AGENT-IN\n\
             -F BLOG-AGENT-FWD\n-F BLOG-AGENT-IN\n-X BLOG-AGENT-FWD\n-X BLOG-AGENT-IN\nCOMMIT\n"
        );
        assert!(nf().render_removal(&docker_host()).is_empty(), "nothing of ours: nothing to do");
        // Another prefix's chains are not ours.
        let other = Netfilter::with_prefix("BLOG-AGENT-2").unwrap();
        assert!(other.render_removal(&now).is_empty());
    }

    #[test]
    fn reads_the_target_back() {
        let nf = nf();
        assert_eq!(nf.target_of(&docker_host()).unwrap(), None);
        let now = applied(docker_host(), "172.17.0.9");
        assert_eq!(nf.target_of(&now).unwrap(), Some(Target::new(Ipv4Addr::new(172, 17, 0, 9))));
        assert_eq!(
            nf.dnat_rules(&now),
            vec![Dnat { host_ip: None, host_port: 8080, to: "172.17.0.9:80".parse().unwrap() }]
        );
        let mixed = with(
            now,
            Table::Nat,
            "-A BLOG-AGENT-DNAT -d 127.0.0.1/32 -p tcp -m tcp --dport 81 -j DNAT --to-destination 172.17.0.3:80\n",
        );
        assert_eq!(nf.dnat_rules(&mixed)[1].host_ip, Some(Ipv4Addr::LOCALHOST));
        assert!(matches!(nf.target_of(&mixed), Err(NetfilterError::MixedTargets { .. })));
    }

    const MARK_A: &str = "-m comment --comment \"blog-agent:blog-a\"";

    fn owned(name: &str) -> Netfilter {
        Netfilter::new().with_owner(name, None).unwrap()
    }

    /// A host where the agent of container `blog-a` applied the first case (8080:80).
    fn applied_by_a(to: &str) -> Observed {
        let m = [Mapping::new(None, 8080, 80)];
        let text = owned("blog-a").render(&m, Target::new(to.parse().unwrap()), &Observed::default());
        let mut o = applied(docker_host(), to);
        for table in [Table::Filter, Table::Nat] {
            let state = match table {
                Table::Nat => &mut o.nat,
                Table::Filter => &mut o.filter,
            };
            let own = Chains::new(DEFAULT_PREFIX);
            state.rules.retain(|(c, _)| !own.of(table).contains(&c.as_str()));
            let rendered = match table {
                Table::Nat => &text.nat,
                Table::Filter => &text.filter,
            };
            for line in rendered.lines().filter_map(|l| l.strip_prefix("-A ")) {
                let (chain, spec) = line.split_once(' ').unwrap();
                state.rules.push((chain.to_owned(), spec.to_owned()));
            }
        }
        o
    }

    #[test]
    fn an_owner_marks_every_rule_in_its_chains_and_no_jump() {
        let m = [Mapping::new(None, 8080, 80), Mapping::new(Some(Ipv4Addr::new(192, 0, 2, 2)), 443, 8443)];
        let got = owned("blog-a").render(&m, Target::new(ADDR), &docker_host());
        let text = got.to_string();
        let rules: Vec<&str> = text.lines().filter(|l| l.starts_with("-A ")).collect();
        assert_eq!(rules.len(), 6, "{got}");
        for rule in &rules {
            assert!(rule.contains(&format!(" {MARK_A} -j ")), "the mark is the last match: {rule}");
        }
        for jump in got.to_string().lines().filter(|l| l.starts_with("-I ")) {
            assert!(!jump.contains("--comment"), "jumps are the same for any owner: {jump}");
        }
        assert!(got.nat.contains(&format!(
            "-A BLOG-AGENT-DNAT -p tcp -m tcp --dport 8080 {MARK_A} -j DNAT --to-destination 172.17.0.2:80\n"
        )));
        // Read back, the DNAT rule still parses, and the marked rules are in place.
        let now = applied_by_a("172.17.0.2");
        assert!(owned("blog-a").render(&m[..1], Target::new(ADDR), &now).is_empty());
        assert_eq!(owned("blog-a").target_of(&now).unwrap(), Some(Target::new(ADDR)));
        assert!(owned("blog-a").render_removal(&now).nat.contains("-X BLOG-AGENT-DNAT"));
    }

    #[test]
    fn tells_whose_rules_are_in_the_chains() {
        let cases: Vec<(&str, Netfilter, Observed, Vec<&str>)> = vec![
            ("no rules at all", owned("blog-a"), docker_host(), vec![]),
            ("our own marked rules", owned("blog-a"), applied_by_a("172.17.0.2"), vec![]),
            (
                "unmarked rules of an agent from before the mark: no one's, taken over silently",
                owned("blog-b"),
                applied(docker_host(), "172.17.0.2"),
                vec![],
            ),
            ("another agent's rules", owned("blog-b"), applied_by_a("172.17.0.2"), vec!["blog-a"]),
            (
                "read without an owner of its own: every mark is another's",
                nf(),
                applied_by_a("172.17.0.2"),
                vec!["blog-a"],
            ),
            (
                "a second owner in one chain (the losing write of a race)",
                owned("blog-a"),
                with(
                    applied_by_a("172.17.0.2"),
                    Table::Filter,
                    "-A BLOG-AGENT-IN -m comment --comment \"blog-agent:blog-c\" -j DROP\n",
                ),
                vec!["blog-c"],
            ),
            (
                "another agent's mark in someone else's chains is not ours to judge",
                Netfilter::with_prefix("BLOG-B").unwrap().with_owner("blog-b", None).unwrap(),
                applied_by_a("172.17.0.2"),
                vec![],
            ),
            (
                "a comment that is not a blog-agent mark names no one",
                owned("blog-a"),
                with(
                    docker_host(),
                    Table::Nat,
                    "-N BLOG-AGENT-POST\n-A BLOG-AGENT-POST -m comment --comment \"by hand\" -j RETURN\n",
                ),
                vec![],
            ),
        ];
        for (name, nf, observed, want) in cases {
            assert_eq!(nf.other_owners(&observed), want, "{name}");
        }
        // Taking over (unmarked rules, or a gone owner's) is a plain rewrite of our chains.
        let m = [Mapping::new(None, 8080, 80)];
        let legacy = owned("blog-b").render(&m, Target::new(ADDR), &applied(docker_host(), "172.17.0.2"));
        assert!(legacy.nat.contains("--comment \"blog-agent:blog-b\""), "{legacy}");
        assert_eq!(legacy.to_string().matches("-I ").count(), 0, "no jump added: {legacy}");
    }

    /// A stand-in for Docker: the containers present on the host.
    struct Present(Vec<&'static str>);

    impl OwnerLookup for Present {
        fn is_present<'a>(&'a self, container: &'a str) -> Pin<Box<dyn Future<Output = bool> + Send + 'a>> {
            Box::pin(async move { self.0.contains(&container) })
        }
    }

    #[tokio::test]
    async fn refuses_a_present_owner_and_takes_over_a_gone_one() {
        let theirs = applied_by_a("172.17.0.2");
        let lookup = |names: Vec<&'static str>| Some(Arc::new(Present(names)) as Arc<dyn OwnerLookup>);
        let cases: Vec<(&str, Netfilter, &Observed, Result<(), &str>)> = vec![
            (
                "blog-a's container runs",
                Netfilter::new().with_owner("blog-b", lookup(vec!["blog-a"])).unwrap(),
                &theirs,
                Err("blog-a"),
            ),
            ("no way to ask: present", owned("blog-b"), &theirs, Err("blog-a")),
            (
                "blog-a is gone (renamed, removed)",
                Netfilter::new().with_owner("blog-b", lookup(vec![])).unwrap(),
                &theirs,
                Ok(()),
            ),
            ("our own rules", owned("blog-a"), &theirs, Ok(())),
            ("no owner of its own: claims nothing, refuses nothing (cleanup)", nf(), &theirs, Ok(())),
        ];
        for (name, nf, observed, want) in cases {
            match (nf.claim(observed).await, want) {
                (Ok(()), Ok(())) => {}
                (Err(NetfilterError::Owned { prefix, owner }), Err(other)) => {
                    assert_eq!((prefix.as_str(), owner.as_str()), ("BLOG-AGENT", other), "{name}");
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
        let e = NetfilterError::Owned { prefix: "BLOG-AGENT".into(), owner: "blog-a".into() }.to_string();
        assert!(
            e.starts_with(
                "[traffic] chains = \"BLOG-AGENT\": chains BLOG-AGENT-* hold the traffic rules of another \
                           blog-agent on this host (comment \"blog-agent:blog-a\", container blog-a)"
            ),
            "{e}"
        );
        assert!(e.contains("give each agent on a host its own [traffic] chains"), "{e}");
    }

    #[test]
    fn an_owner_is_a_container_name() {
        assert_eq!(owned("blog_1.x-y").owner(), Some("blog_1.x-y"));
        for bad in ["", "a b", "a\"b", "x;y", &"x".repeat(101)] {
            assert!(Netfilter::new().with_owner(bad, None).is_err(), "{bad:?}");
        }
        assert_eq!(owner_of("-j DNAT"), None);
        assert_eq!(owner_of("-m comment --comment \"blog-agent:x\" -j DROP"), Some("x"));
        assert_eq!(owner_of("-m comment --comment blog-agent:x -j DROP"), Some("x"));
        assert_eq!(owner_of("-m comment --comment \"blog-agent:\" -j DROP"), None);
    }

    #[test]
    fn parses_iptables_output_with_warnings_and_chains() {
        let state = TableState::parse(
            "# Warning: iptables-legacy tables present, use iptables-legacy to see them\n\
             -P FORWARD DROP\n-N DOCKER-USER\n-A DOCKER-USER -j RETURN\n",
        );
        assert_eq!(state.chains.get("FORWARD"), Some(&Some("DROP".to_owned())));
        assert_eq!(state.chains.get("DOCKER-USER"), Some(&None));
        assert_eq!(state.rules, vec![("DOCKER-USER".to_owned(), "-j RETURN".to_owned())]);
        assert!(jumps_to("-m addrtype --dst-type LOCAL -j X-DNAT", "X-DNAT"));
        assert!(!jumps_to("-j X-DNAT2", "X-DNAT"));
        assert!(!jumps_to("-j DNAT --to-destination 1.2.3.4:80", "X-DNAT"));
    }

    #[test]
    fn refuses_prefixes_and_bridges_iptables_or_proc_would_misread() {
        assert!(Netfilter::with_prefix("BA-T1234").is_ok());
        assert_eq!(Netfilter::with_prefix("BA-T1234").unwrap().chains().forward, "BA-T1234-FWD");
        for bad in ["", "-X", "A B", "DOCKER-X", "ABCDEFGHIJKLMNOPQRSTUVWX", "a/b"] {
            assert!(Netfilter::with_prefix(bad).is_err(), "{bad:?}");
        }
        assert!(Netfilter::new().with_bridge("br-0a1b2c3d4e5f").is_ok());
        for bad in ["", "..", "a/b", "docker+", "sixteen-chars-xx"] {
            assert!(Netfilter::new().with_bridge(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_command_that_hangs_is_killed_at_the_deadline() {
        let started = Instant::now();
        let got = run_bounded("sleep", &["5".to_owned()], None, Duration::from_millis(200));
        assert!(matches!(got, Err(Failure::Timeout)));
        assert!(started.elapsed() < Duration::from_secs(2));
        let got = run_bounded("cat", &[], Some("hello".to_owned()), Duration::from_secs(5));
        assert_eq!(got.ok().as_deref(), Some("hello"));
        let got =
            run_bounded("sh", &["-c".to_owned(), "echo oops >&2; exit 3".to_owned()], None, Duration::from_secs(5));
        assert!(matches!(got, Err(Failure::Exit { ref stderr, .. }) if stderr == "oops"));
    }
}
