//! This host's clock against AWS's: the offset measured from the `Date` header of the answers
//! the agent already gets from S3, ECR and STS ([`crate::outside::aws::ClockWatch`]), and the
//! one clock the agent's own time decisions read ([`now`], [`decision_now`]).
//!
//! A host whose time sync is broken still talks to AWS (the SDK corrects its signing time from
//! the same header), so nothing else would notice; but the agent compares its clock with times
//! AWS stamped (a release's Last-Modified opens a rollout wave; a signed time orders releases;
//! `promote --soak` measures from a publication). Those comparisons use AWS's time: the host's
//! clock plus the latest measured offset. Beyond [`FAIL_OFFSET`] either clock may be the wrong
//! one (a host stepping its clock, an S3-compatible endpoint or proxy answering with its own
//! time), so a decision that must not be taken on a wrong time refuses instead and says why.
//!
//! Reads: the host's clock. Writes: nothing (one sample per process, in memory). Decides: the
//! offset of one answer ([`measure`]), the corrected time ([`corrected_now`]) and the judgement
//! `ok` / `WARN` / `FAIL` ([`judge`]), each a pure function.

use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// Above this offset the clock is a WARN. The `Date` header has one-second resolution and the
/// round trip adds at most half of itself, so a host kept in sync (chrony with the Amazon Time
/// Sync Service holds EC2 hosts within a millisecond) measures well under 2 s; 5 s means its
/// time sync is not working, though nothing the agent decides is off by enough to matter.
pub const WARN_OFFSET: Duration = Duration::from_secs(5);

/// Above this offset the clock is a FAIL and [`decision_now`] refuses. Five minutes is a third
/// of the 15 minutes within which AWS accepts a signed request, and more than a free-running
/// clock drifts in months: a clock this far off has no working time sync, or was set by hand,
/// or the endpoint's clock is the wrong one.
pub const FAIL_OFFSET: Duration = Duration::from_secs(5 * 60);

/// An answer that took longer than this gives no sample: half of its round trip is the error
/// of the measurement, which would then exceed [`WARN_OFFSET`].
pub const MAX_SAMPLE_RTT: Duration = Duration::from_secs(10);

/// Half of the `Date` header's resolution: the server's time is somewhere in the second it
/// names, on average half-way through it.
const DATE_RESOLUTION_HALF: Duration = Duration::from_millis(500);

/// One measurement of this host's clock against an AWS answer's `Date`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// This host's clock minus AWS's, in milliseconds: positive when the host is ahead (fast).
    pub offset_ms: i64,
    /// The request's round trip, measured on the monotonic clock.
    pub rtt: Duration,
    /// When the answer came, on this host's clock.
    pub taken: SystemTime,
}

impl Sample {
    /// The measurement's error bound: half the round trip plus half the header's resolution.
    pub fn uncertainty(&self) -> Duration {
        self.rtt / 2 + DATE_RESOLUTION_HALF
    }

    /// The offset's size, whichever way.
    pub fn magnitude(&self) -> Duration {
        Duration::from_millis(self.offset_ms.unsigned_abs())
    }
}

/// The offset of one answer: sent at `sent` (host clock), answered after `rtt`, stamped
/// `server` by AWS. The server stamped it half-way through the round trip (the NTP estimate,
/// RFC 5905 section 8), half-way through the second its header names. `None` when the round
/// trip was too long to say anything ([`MAX_SAMPLE_RTT`]).
pub fn measure(sent: SystemTime, rtt: Duration, server: SystemTime) -> Option<Sample> {
    if rtt > MAX_SAMPLE_RTT {
        return None;
    }
    let host = sent + rtt / 2;
    let server = server + DATE_RESOLUTION_HALF;
    let offset_ms = match host.duration_since(server) {
        Ok(ahead) => i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX),
        Err(behind) => -i64::try_from(behind.duration().as_millis()).unwrap_or(i64::MAX),
    };
    Some(Sample { offset_ms, rtt, taken: sent + rtt })
}

/// AWS's time when this host's clock reads `host_now`: the host's time minus the offset of
/// `sample`; the host's own time when nothing was measured.
pub fn corrected_now(host_now: SystemTime, sample: Option<&Sample>) -> SystemTime {
    let Some(sample) = sample else { return host_now };
    let shift = sample.magnitude();
    let corrected = if sample.offset_ms >= 0 { host_now.checked_sub(shift) } else { host_now.checked_add(shift) };
    corrected.unwrap_or(host_now)
}

/// How the clock stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// No AWS answer measured yet (nothing asked, or no answer carried a usable `Date`).
    Unknown,
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Unknown => "unknown",
            Level::Ok => "ok",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        })
    }
}

/// The judgement of `sample`: the offset less the measurement's error against [`WARN_OFFSET`]
/// and [`FAIL_OFFSET`] (a slow answer does not make a good clock look bad).
pub fn judge(sample: Option<&Sample>) -> Level {
    let Some(sample) = sample else { return Level::Unknown };
    let at_least = sample.magnitude().saturating_sub(sample.uncertainty());
    if at_least > FAIL_OFFSET {
        Level::Fail
    } else if at_least > WARN_OFFSET {
        Level::Warn
    } else {
        Level::Ok
    }
}

/// `2m 0s ahead of AWS` / `0.3 s behind AWS`: whole seconds from a minute up.
pub fn describe_offset(sample: &Sample) -> String {
    let magnitude = sample.magnitude();
    let size = if magnitude < Duration::from_secs(60) {
        format!("{:.1} s", magnitude.as_secs_f64())
    } else {
        humantime::format_duration(Duration::from_secs(magnitude.as_secs())).to_string()
    };
    let way = if sample.offset_ms >= 0 { "ahead of" } else { "behind" };
    format!("{size} {way} AWS")
}

/// The one line `check` and `status` print: the judgement, the offset and the bound it broke.
pub fn describe(sample: Option<&Sample>) -> String {
    let Some(s) = sample else {
        return "no AWS answer measured yet (the offset comes from the Date header of S3, ECR and STS answers)"
            .to_owned();
    };
    let offset = format!("this host's clock is {} (±{:.1} s)", describe_offset(s), s.uncertainty().as_secs_f64());
    match judge(sample) {
        Level::Fail => format!(
            "{offset}, beyond {}: which clock is wrong is unknown and promote --soak refuses; fix time sync \
             (`chronyc tracking`, docs/operations.md)",
            humantime::format_duration(FAIL_OFFSET)
        ),
        Level::Warn => format!(
            "{offset}, beyond {}: the agent decides on AWS's time; fix time sync (`chronyc tracking`)",
            humantime::format_duration(WARN_OFFSET)
        ),
        _ => offset,
    }
}

/// A time decision refused: the clock is beyond [`FAIL_OFFSET`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} not decided: {offset}, beyond {bound}, and which clock is wrong is unknown; fix time sync \
     (`chronyc tracking`; docs/operations.md, \"The clock is off\") and retry"
)]
pub struct ClockOff {
    pub what: &'static str,
    pub offset: String,
    pub bound: String,
}

/// The time for a decision `what` at host time `host_now`: AWS's time, or [`ClockOff`] when
/// `sample` is beyond [`FAIL_OFFSET`]. Without a sample, the host's own time.
pub fn decision_time(
    what: &'static str,
    host_now: SystemTime,
    sample: Option<&Sample>,
) -> Result<SystemTime, ClockOff> {
    match (judge(sample), sample) {
        (Level::Fail, Some(s)) => Err(ClockOff {
            what,
            offset: format!("this host's clock is {}", describe_offset(s)),
            bound: humantime::format_duration(FAIL_OFFSET).to_string(),
        }),
        _ => Ok(corrected_now(host_now, sample)),
    }
}

/// The latest sample of this process.
static LATEST: Mutex<Option<Sample>> = Mutex::new(None);

/// Keeps `sample` as the latest; says so in the log when the judgement changes.
pub fn record(sample: Sample) {
    let before = {
        let mut latest = LATEST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        latest.replace(sample)
    };
    let (was, is) = (judge(before.as_ref()), judge(Some(&sample)));
    if was != is {
        let text = describe(Some(&sample));
        let offset_ms = sample.offset_ms;
        match is {
            Level::Fail | Level::Warn => tracing::warn!(offset_ms, clock = %is, "clock {is}: {text}"),
            _ => tracing::info!(offset_ms, clock = %is, "clock {is}: {text}"),
        }
    }
}

/// The latest sample of this process, if any AWS answer was measured.
pub fn latest() -> Option<Sample> {
    *LATEST.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// AWS's time now, as well as this process knows it: what every time the agent records or
/// compares with an AWS-stamped time is read from.
pub fn now() -> SystemTime {
    corrected_now(SystemTime::now(), latest().as_ref())
}

/// [`now`] for a decision that must not be taken on a clock beyond [`FAIL_OFFSET`].
pub fn decision_now(what: &'static str) -> Result<SystemTime, ClockOff> {
    decision_time(what, SystemTime::now(), latest().as_ref())
}

/// The clock as `status` shows it (JSON) and the metrics export it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClockStatus {
    /// `ok`, `WARN`, `FAIL` or `unknown`.
    pub judgement: String,
    /// This host's clock minus AWS's, in seconds (positive: the host is fast).
    pub offset_seconds: Option<f64>,
    /// The measurement's error bound, in seconds.
    pub uncertainty_seconds: Option<f64>,
    /// The line `status` prints.
    pub detail: String,
}

impl ClockStatus {
    pub fn of(sample: Option<&Sample>) -> ClockStatus {
        ClockStatus {
            judgement: judge(sample).to_string(),
            offset_seconds: sample.map(|s| s.offset_ms as f64 / 1000.0),
            uncertainty_seconds: sample.map(|s| s.uncertainty().as_secs_f64()),
            detail: describe(sample),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_750_000_000;

    fn at_ms(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    fn sample(offset_ms: i64, rtt_ms: u64) -> Sample {
        Sample { offset_ms, rtt: Duration::from_millis(rtt_ms), taken: at_ms(T0 * 1000) }
    }

    #[test]
    fn measure_takes_the_midpoint_and_the_middle_of_the_dated_second() {
        let s = |sent_ms: u64, rtt_ms: u64, server_s: u64| {
            measure(at_ms(sent_ms), Duration::from_millis(rtt_ms), at_ms(server_s * 1000)).map(|s| s.offset_ms)
        };
        // (what, sent ms, rtt ms, Date seconds, offset ms)
        let cases: &[(&str, u64, u64, u64, Option<i64>)] = &[
            ("in sync: sent at .3, 400 ms there and back, dated the same second", T0 * 1000 + 300, 400, T0, Some(0)),
            ("host 20 min fast", (T0 + 1200) * 1000 + 300, 400, T0, Some(1_200_000)),
            ("host 20 min slow", (T0 - 1200) * 1000 + 300, 400, T0, Some(-1_200_000)),
            ("host 2.5 s behind", T0 * 1000 - 2000, 0, T0, Some(-2500)),
            ("a 10 s round trip still counts", T0 * 1000 - 4500, 10_000, T0, Some(0)),
            ("a longer one does not", T0 * 1000, 10_001, T0, None),
        ];
        for (what, sent, rtt, server, want) in cases {
            assert_eq!(s(*sent, *rtt, *server), *want, "{what}");
        }
        let m = measure(at_ms(1000), Duration::from_millis(250), at_ms(0)).unwrap();
        assert_eq!(m.taken, at_ms(1250), "taken when the answer came");
    }

    #[test]
    fn judgement_goes_by_the_offset_less_its_error() {
        // (what, (offset ms, rtt ms) measured, level)
        type Case = (&'static str, Option<(i64, u64)>, Level);
        let cases: &[Case] = &[
            ("nothing measured", None, Level::Unknown),
            ("in sync", Some((0, 50)), Level::Ok),
            ("a second off", Some((-1000, 50)), Level::Ok),
            ("5 s plus the error is still ok", Some((5_525, 50)), Level::Ok),
            ("just beyond 5 s plus the error", Some((5_526, 50)), Level::Warn),
            ("behind counts the same", Some((-6_000, 50)), Level::Warn),
            ("a slow answer widens the error", Some((6_000, 2_000)), Level::Ok),
            ("5 min off", Some((300_000, 0)), Level::Warn),
            ("20 min fast", Some((1_200_000, 50)), Level::Fail),
            ("20 min slow", Some((-1_200_000, 50)), Level::Fail),
        ];
        for (what, s, want) in cases {
            let s = s.map(|(offset, rtt)| sample(offset, rtt));
            assert_eq!(judge(s.as_ref()), *want, "{what}");
        }
    }

    #[test]
    fn corrected_time_is_the_host_s_less_the_offset() {
        let host = at_ms(T0 * 1000);
        // (what, sample, corrected)
        let cases: &[(&str, Option<Sample>, SystemTime)] = &[
            ("nothing measured: the host's", None, host),
            ("in sync", Some(sample(0, 10)), host),
            ("host 20 min fast", Some(sample(1_200_000, 10)), at_ms((T0 - 1200) * 1000)),
            ("host 2.5 s slow", Some(sample(-2_500, 10)), at_ms(T0 * 1000 + 2_500)),
        ];
        for (what, s, want) in cases {
            assert_eq!(corrected_now(host, s.as_ref()), *want, "{what}");
        }
    }

    #[test]
    fn a_decision_takes_aws_time_or_refuses_beyond_the_bound() {
        let host = at_ms(T0 * 1000);
        assert_eq!(decision_time("x", host, None), Ok(host));
        assert_eq!(decision_time("x", host, Some(&sample(120_000, 10))), Ok(at_ms((T0 - 120) * 1000)));
        let off = decision_time("promote --soak", host, Some(&sample(1_200_000, 10))).unwrap_err();
        let text = off.to_string();
        assert!(
            text.starts_with("promote --soak not decided: this host's clock is 20m ahead of AWS, beyond 5m"),
            "{text}"
        );
        assert!(text.contains("chronyc tracking"), "{text}");
    }

    #[test]
    fn lines_name_the_offset_and_the_bound() {
        assert!(describe(None).starts_with("no AWS answer measured yet"));
        assert_eq!(describe(Some(&sample(300, 200))), "this host's clock is 0.3 s ahead of AWS (±0.6 s)");
        let warn = describe(Some(&sample(-125_000, 0)));
        assert!(warn.starts_with("this host's clock is 2m 5s behind AWS (±0.5 s), beyond 5s"), "{warn}");
        let fail = describe(Some(&sample(1_200_400, 0)));
        assert!(fail.starts_with("this host's clock is 20m ahead of AWS (±0.5 s), beyond 5m"), "{fail}");
        let status = ClockStatus::of(Some(&sample(1_200_000, 0)));
        assert_eq!((status.judgement.as_str(), status.offset_seconds), ("FAIL", Some(1200.0)));
    }
}
