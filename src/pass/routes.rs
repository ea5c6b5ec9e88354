//! Where the host ports send traffic (`[traffic] mode = "switch"`): the operations the traffic
//! switch needs of netfilter ([`Routes`]) and their error ([`RouteError`]). Kept apart from the
//! switch itself so that the cut-over's shared steps ([`crate::pass::deploy`]) can name the
//! error without depending on the switch that uses them.
//!
//! Reads and writes nothing itself; the real implementation is
//! [`crate::outside::netfilter::Netfilter`].

use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::PortMapping;
use crate::outside::netfilter::NetfilterError;
use crate::state::StateError;

/// A boxed future, so [`Routes`] can be used as `dyn Routes` (one real implementation, and a
/// stand-in for hosts that do not switch).
pub type RouteFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, RouteError>> + Send + 'a>>;

/// Where the host ports send traffic. Our own operations, not netfilter's API: the real
/// implementation is [`crate::outside::netfilter::Netfilter`].
pub trait Routes: Send + Sync {
    /// Points every mapping's host port at `to` (the container port stays the mapping's), in
    /// one atomic change; creates the chains and jumps if they are missing.
    fn point<'a>(&'a self, ports: &'a [PortMapping], to: Ipv4Addr) -> RouteFuture<'a, ()>;
    /// Whether every rule for `ports` to `to` is in place (nothing flushed, nothing stale).
    fn in_place<'a>(&'a self, ports: &'a [PortMapping], to: Ipv4Addr) -> RouteFuture<'a, bool>;
    /// Sends `ports` nowhere (no DNAT), in one atomic change that keeps the chains and jumps:
    /// for a proven container that is gone, whose address Docker may give to another.
    fn withhold<'a>(&'a self, ports: &'a [PortMapping]) -> RouteFuture<'a, ()>;
    /// The address the rules point at now (`None`: no rules, or withheld).
    fn current(&self) -> RouteFuture<'_, Option<Ipv4Addr>>;
    /// Removes every rule, chain and jump of ours (switching to `publish`).
    fn remove(&self) -> RouteFuture<'_, ()>;
    /// Fails ([`RouteError::Taken`]) when the chains hold another agent's rules: checked before
    /// a deploy starts a container that could never get traffic.
    fn check_owner(&self) -> RouteFuture<'_, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// A netfilter operation failed, or was refused; the text names the command and what it said,
/// or the other owner.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error("traffic switch: {0}")]
    Failed(String),
    /// `[traffic] chains` hold another agent's rules ([`NetfilterError::Owned`]): this host's
    /// configuration, which neither a retry nor another release changes.
    #[error("traffic switch: {0}")]
    Taken(String),
    /// The state file could not record `container` as the proven one: the rules are not moved
    /// to a container the record does not name (the keeper follows the record, and a later
    /// pass would take it for unproven).
    #[error(
        "traffic switch: not moving traffic to container {container}, which could not be recorded as proven: {source}"
    )]
    Unrecorded {
        container: String,
        #[source]
        source: Arc<StateError>,
    },
}

impl From<NetfilterError> for RouteError {
    fn from(e: NetfilterError) -> RouteError {
        match e {
            NetfilterError::Owned { .. } => RouteError::Taken(e.to_string()),
            e => RouteError::Failed(e.to_string()),
        }
    }
}
