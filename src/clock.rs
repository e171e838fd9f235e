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

#[cfg(test)]
mod tests {
    use super::*;

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
