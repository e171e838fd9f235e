//! What every apiserver user in nodelet shares, whichever role it serves:
//! the back-off its watches reconnect with, and which errors are worth
//! retrying.
//!
//! kube-rs' default watch back-off grows to 30 s and resets only after two
//! quiet minutes, so after a minute-long apiserver outage a watch came back
//! some 80 s after the apiserver did. kubelet's reflectors retry within about a
//! second of the apiserver answering; nodelet's watches retry first after
//! 0.25–0.5 s, double from there, never wait more than 4 s, and start again
//! from the bottom once they get an event.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::utils::{Backoff, StreamBackoff};
use kube::runtime::{WatchStreamExt, watcher};

/// The first delay after a watch fails, before jitter.
pub const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(250);
/// The cap on the delay, before jitter. The jitter adds up to as much again,
/// so a failing watch waits between 2 and 4 s once at the cap.
pub const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The back-off for every watch nodelet runs: exponential from 0.25 s,
/// jittered (each delay gets up to itself again), at most 4 s, reset by any
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

/// A watch stream with nodelet's back-off: `watch_backoff`, except that
/// the first 410 Gone after a working stretch relists at once. A 410 after a
/// restart only says the watch must start over from a list, as client-go's
/// reflector does at once; waiting out a back-off there would keep the watch
/// away for twice the delay. A second 410 in a row backs off as any error.
///
/// Only an event that shows the apiserver answering resets the back-off:
/// the watcher's `Init`, which it emits before every list attempt (also
/// before one that then fails), does not, so a watch refused again and
/// again (a 403, the apiserver away) backs off to the cap instead of
/// retrying every 0.3 s.
pub fn backed_off<K, S>(stream: S) -> StreamBackoff<impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>, GoneAware>
where
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
{
    let gone = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicBool::new(false));
    let (flag, seen) = (gone.clone(), progress.clone());
    stream
        .inspect(move |r| {
            flag.store(matches!(r, Err(watcher::Error::WatchError(s)) if s.code == 410), Ordering::Relaxed);
            seen.store(answered(r), Ordering::Relaxed);
        })
        .backoff(GoneAware { inner: watch_backoff(), gone, answered: progress, free_used: false })
}

/// Whether a watch event shows the apiserver answering (anything but the
/// watcher's own `Init`, which comes before the list is even asked for).
pub fn answered<K>(r: &Result<watcher::Event<K>, watcher::Error>) -> bool {
    matches!(r, Ok(e) if !matches!(e, watcher::Event::Init))
}

/// `watch_backoff`, with one free retry after a 410 Gone (see `backed_off`).
pub struct GoneAware {
    inner: watcher::ExponentialBackoff,
    gone: Arc<AtomicBool>,
    /// The last item was an answer from the apiserver (not `Init`).
    answered: Arc<AtomicBool>,
    free_used: bool,
}

impl Iterator for GoneAware {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.gone.load(Ordering::Relaxed) && !self.free_used {
            self.free_used = true;
            return Some(Duration::ZERO);
        }
        self.inner.next()
    }
}

impl Backoff for GoneAware {
    fn reset(&mut self) {
        if self.answered.load(Ordering::Relaxed) {
            self.inner.reset();
            self.free_used = false;
        }
    }
}

/// How a connection that fails again and again is reported: one warning
/// when it first fails, a summary each minute while it stays failed (the
/// attempts in between at debug level), and one line when it works again.
#[derive(Debug, Default)]
pub struct Outage {
    since: Option<std::time::Instant>,
    attempts: u64,
    summarized: Option<std::time::Instant>,
}

/// How often a lasting failure is summarized.
pub const OUTAGE_SUMMARY_EVERY: Duration = Duration::from_secs(60);

impl Outage {
    /// One failed attempt at `what`.
    pub fn failed(&mut self, what: &str, error: &dyn std::fmt::Display) {
        self.attempts += 1;
        let now = std::time::Instant::now();
        match self.since {
            None => {
                self.since = Some(now);
                self.summarized = Some(now);
                tracing::warn!(%error, "{what} failed; retrying with back-off");
            }
            Some(since) if self.summarized.is_none_or(|t| now.duration_since(t) >= OUTAGE_SUMMARY_EVERY) => {
                self.summarized = Some(now);
                tracing::warn!(%error, failing_for_s = now.duration_since(since).as_secs(), attempts = self.attempts, "{what} still fails");
            }
            Some(_) => tracing::debug!(%error, attempts = self.attempts, "{what} failed again"),
        }
    }

    /// `what` got an answer: says so once if it had been failing.
    pub fn works(&mut self, what: &str) {
        if let Some(since) = self.since.take() {
            tracing::info!(after_s = since.elapsed().as_secs(), failed_attempts = self.attempts, "{what} works again");
        }
        self.attempts = 0;
        self.summarized = None;
    }

    pub fn is_failing(&self) -> bool {
        self.since.is_some()
    }
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
            assert!(*d <= 2 * WATCH_BACKOFF_MAX, "{delays:?}");
        }
        assert!(delays[8..].iter().all(|d| *d >= WATCH_BACKOFF_MAX), "it grows to the cap: {delays:?}");
        let total: Duration = delays.iter().sum();
        assert!(total < Duration::from_secs(75), "a minute of failures never costs the 80 s kube-rs' default did: {total:?}");
    }

    #[tokio::test]
    async fn a_410_relists_at_once_but_a_second_one_backs_off() {
        use kube::core::Status;
        let gone = || Err::<watcher::Event<()>, _>(watcher::Error::WatchError(Status::failure("too old", "Expired").with_code(410).boxed()));
        let refused = || Err::<watcher::Event<()>, _>(watcher::Error::WatchError(Status::failure("no", "Forbidden").with_code(403).boxed()));
        let timed = |items: Vec<Result<watcher::Event<()>, watcher::Error>>| async move {
            let started = tokio::time::Instant::now();
            let n = backed_off(futures::stream::iter(items)).count().await;
            (n, started.elapsed())
        };
        tokio::time::pause();
        let (n, took) = timed(vec![gone(), Ok(watcher::Event::InitDone)]).await;
        assert_eq!(n, 2);
        assert!(took < WATCH_BACKOFF_MIN / 10, "one 410 costs no wait (a timer tick at most): {took:?}");
        let (_, took) = timed(vec![gone(), gone(), Ok(watcher::Event::InitDone)]).await;
        assert!(took >= WATCH_BACKOFF_MIN, "a second 410 backs off: {took:?}");
        let (_, took) = timed(vec![refused(), Ok(watcher::Event::InitDone)]).await;
        assert!(took >= WATCH_BACKOFF_MIN, "other errors back off: {took:?}");
        let (_, took) = timed(vec![gone(), Ok(watcher::Event::InitDone), gone(), Ok(watcher::Event::InitDone)]).await;
        assert!(took < WATCH_BACKOFF_MIN / 10, "an event in between makes the next 410 free again: {took:?}");
    }

    #[tokio::test]
    async fn the_watchers_own_init_before_each_failed_list_does_not_reset_the_back_off() {
        use kube::core::Status;
        let refused = || Err::<watcher::Event<()>, _>(watcher::Error::WatchError(Status::failure("no", "Forbidden").with_code(403).boxed()));
        tokio::time::pause();
        // What a watch refused twelve times yields: Init, then the error.
        let items: Vec<_> = (0..12).flat_map(|_| [Ok(watcher::Event::Init), refused()]).collect();
        let started = tokio::time::Instant::now();
        backed_off(futures::stream::iter(items)).count().await;
        let took = started.elapsed();
        assert!(took >= 8 * WATCH_BACKOFF_MAX, "twelve refusals back off to the cap (it was ~0.3 s each): {took:?}");
        // An answer in between does reset it.
        let items: Vec<_> = (0..12).flat_map(|_| [Ok(watcher::Event::InitDone), refused()]).collect();
        let started = tokio::time::Instant::now();
        backed_off(futures::stream::iter(items)).count().await;
        assert!(started.elapsed() < 12 * 2 * WATCH_BACKOFF_MIN + WATCH_BACKOFF_MIN, "{:?}", started.elapsed());
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
