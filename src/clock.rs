//! Time arithmetic on values nodelet does not choose: grace periods and
//! timeouts from pods (the apiserver accepts any int64 of seconds) and from
//! the config. Nothing here overflows or panics: a wait longer than nodelet
//! can express is treated as the longest it can, which is longer than any
//! machine runs.
//!
//! - [`MAX_WAIT_SECS`]: 9,223,372,036 s (292 years), the most whole seconds a
//!   Go `time.Duration` holds. containerd turns a CRI StopContainer timeout
//!   into one, so a larger grace period is sent as this (kubelet sends it
//!   as given, and containerd's conversion wraps).
//! - [`MAX_GRPC_TIMEOUT`]: gRPC carries a deadline in at most eight digits
//!   of hours (tonic panics beyond); a call's deadline is capped there.
#![deny(clippy::arithmetic_side_effects)]

use std::time::{Duration, Instant};

/// The longest wait in seconds (Go's time.Duration limit).
pub const MAX_WAIT_SECS: i64 = i64::MAX / 1_000_000_000;

/// The longest deadline a gRPC call can carry: 99,999,999 hours.
pub const MAX_GRPC_TIMEOUT: Duration = Duration::from_secs(99_999_999 * 3600);

/// Seconds from the API or config, as a count nodelet can wait: negative is
/// zero, beyond [`MAX_WAIT_SECS`] is that.
pub fn clamp_secs(secs: i64) -> i64 {
    secs.clamp(0, MAX_WAIT_SECS)
}

/// Seconds from the API or config as a duration (see [`clamp_secs`]).
pub fn secs(secs: i64) -> Duration {
    Duration::from_secs(clamp_secs(secs).unsigned_abs())
}

/// `from + wait`, or the furthest instant this clock can hold.
pub fn deadline(from: Instant, wait: Duration) -> Instant {
    from.checked_add(wait.min(secs(MAX_WAIT_SECS))).or_else(|| from.checked_add(secs(MAX_WAIT_SECS))).unwrap_or(from)
}

/// A call's deadline: `timeout + extra`, capped at what gRPC can carry.
pub fn grpc_timeout(timeout: Duration, extra: Duration) -> Duration {
    timeout.saturating_add(extra).min(MAX_GRPC_TIMEOUT)
}

/// A wall-clock time as the agent keeps its own: nanoseconds since the Unix
/// epoch, the unit CRI uses for `created_at`, `started_at` and `finished_at`
/// (a runtime's value converts with `UnixNanos(ns)`). The agent's wake-ups,
/// retry times, back-off and deadlines are of this type rather than bare
/// integers; its arithmetic saturates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixNanos(pub i64);

impl UnixNanos {
    /// The present, from the system clock (the epoch if the clock is before it).
    pub fn now() -> Self {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        UnixNanos(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
    }

    /// Whole seconds since the epoch.
    pub fn secs(self) -> i64 {
        self.0.div_euclid(1_000_000_000)
    }

    /// Whole milliseconds since the epoch.
    pub fn millis(self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    /// `d` later (saturating).
    pub fn after(self, d: Duration) -> Self {
        UnixNanos(self.0.saturating_add(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)))
    }

    /// How long from `earlier` to this time; zero when `earlier` is later.
    pub fn since(self, earlier: UnixNanos) -> Duration {
        Duration::from_nanos(u64::try_from(self.0.saturating_sub(earlier.0)).unwrap_or(0))
    }
}

impl std::fmt::Display for UnixNanos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}ns", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_nanos_saturate_and_convert() {
        let t = UnixNanos(1_700_000_000_123_456_789);
        assert_eq!(t.secs(), 1_700_000_000);
        assert_eq!(t.millis(), 1_700_000_000_123);
        assert_eq!(t.after(Duration::from_secs(2)).0, 1_700_000_002_123_456_789);
        assert_eq!(UnixNanos(i64::MAX - 1).after(Duration::MAX), UnixNanos(i64::MAX));
        assert_eq!(t.after(Duration::from_millis(5)).since(t), Duration::from_millis(5));
        assert_eq!(t.since(t.after(Duration::from_secs(1))), Duration::ZERO, "an earlier time is no time ago");
        assert_eq!(UnixNanos(-5).secs(), -1, "before the epoch rounds down");
        assert!(UnixNanos::now() > t);
    }

    #[test]
    fn extreme_values_clamp() {
        assert_eq!(clamp_secs(i64::MAX), MAX_WAIT_SECS);
        assert_eq!(clamp_secs(-5), 0);
        assert_eq!(clamp_secs(30), 30);
        assert_eq!(secs(i64::MAX), Duration::from_secs(9_223_372_036));
        let now = Instant::now();
        assert!(deadline(now, Duration::MAX) > now);
        assert_eq!(deadline(now, Duration::from_secs(2)), now + Duration::from_secs(2));
        assert_eq!(grpc_timeout(Duration::MAX, Duration::MAX), MAX_GRPC_TIMEOUT);
        assert_eq!(grpc_timeout(Duration::from_secs(2), Duration::from_secs(3)), Duration::from_secs(5));
        // What tonic accepts: it must not panic on the cap.
        let mut r = tonic::Request::new(());
        r.set_timeout(MAX_GRPC_TIMEOUT);
    }
}
