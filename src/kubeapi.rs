//! What every apiserver user in nodelet shares, whichever role it serves:
//! the back-off its watches reconnect with, and which errors are worth
//! retrying.
//!
//! kube-rs' default watch back-off grows to 30 s and resets only after two
//! quiet minutes, so after a minute-long apiserver outage a watch came back
//! some 80 s after the apiserver did. kubelet's reflectors retry within about a
//! second of the apiserver answering; nodelet's watches retry first after
//! 0.25–0.5 s, double from there, never wait more than 5 s, and start again
//! from the bottom once they get an event.

use std::time::Duration;

use kube::runtime::watcher;

/// The first delay after a watch fails, before jitter.
pub const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(250);
/// The cap on the delay, before jitter. The jitter adds up to as much again,
/// so a failing watch waits between 2.5 and 5 s once at the cap.
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_millis(2500);

/// The back-off for every watch nodelet runs: exponential from 0.25 s,
/// jittered (each delay gets up to itself again), at most 5 s, reset by any
/// event (kube-rs' `StreamBackoff` resets on every `Ok`). Use with
/// `WatchStreamExt::backoff`.
pub fn watch_backoff() -> watcher::ExponentialBackoff {
    backon::ExponentialBuilder::default()
        .with_min_delay(WATCH_BACKOFF_MIN)
        .with_max_delay(WATCH_BACKOFF_MAX)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .into()
}

/// Whether a failed request may succeed if simply sent again: no answer
/// (connection refused or reset, a timeout), an overloaded or restarting
/// apiserver (429, 5xx), or a 403 — which a real apiserver answers for a few
/// seconds after it starts, while its authorizers fill their caches.
pub fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 403 || s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watch_backoff_starts_short_and_stays_under_about_five_seconds() {
        let delays: Vec<Duration> = watch_backoff().take(12).collect();
        assert!(delays[0] >= WATCH_BACKOFF_MIN && delays[0] <= 2 * WATCH_BACKOFF_MIN, "{delays:?}");
        for d in &delays {
            assert!(*d <= Duration::from_secs(5), "{delays:?}");
        }
        assert!(delays[8..].iter().all(|d| *d >= WATCH_BACKOFF_MAX), "it grows to the cap: {delays:?}");
        let total: Duration = delays.iter().sum();
        assert!(total < Duration::from_secs(75), "a minute of failures never costs the 80 s kube-rs' default did: {total:?}");
    }

    #[test]
    fn transient_errors_are_the_ones_an_outage_or_a_restart_gives() {
        let api = |code: u16| {
kube::Error::Api(kube::core::Status::failure("x", "y").with_code(code).boxed())
        };
        assert!(is_transient(&api(403)));
        assert!(is_transient(&api(503)));
        assert!(is_transient(&api(429)));
        assert!(!is_transient(&api(404)));
        assert!(!is_transient(&api(422)));
        assert!(!is_transient(&api(401)));
    }
}
