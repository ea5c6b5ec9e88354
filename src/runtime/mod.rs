//! Process plumbing every command shares: backoff and jitter, the clock (this host's offset
//! from AWS's), the shutdown request, Unix signals, the systemd notify protocol, logging, and
//! who runs a command.

pub mod backoff;
pub mod clock;
pub mod logging;
pub mod operator;
pub mod shutdown;
pub mod signals;
pub mod systemd;
