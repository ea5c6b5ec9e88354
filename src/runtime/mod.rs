//! Process plumbing every command shares: backoff and jitter, the shutdown request, Unix
//! signals, the systemd notify protocol, and logging.

pub mod backoff;
pub mod logging;
pub mod shutdown;
pub mod signals;
pub mod systemd;
