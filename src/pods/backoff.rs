//! Crash-loop back-off, with kubelet's semantics: the first restart after an
//! exit is immediate; each later one waits the current delay (counted from
//! the exit), which starts at `initial` and doubles up to `max`. A container
//! that ran for `reset_after` (ten minutes) before failing starts over at the
//! initial delay, and so does one whose previous failure is more than
//! `2 × max` old.

use std::collections::HashMap;
use std::time::Duration;

use crate::clock::UnixNanos;
pub use crate::config::BackoffConfig;

/// One failure: when the failed attempt started and when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub started: UnixNanos,
    pub at: UnixNanos,
}

impl Failure {
    /// A failure with no run time (a failed image pull).
    pub fn instant(at: UnixNanos) -> Self {
        Self { started: at, at }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    delay: Duration,
    /// The event time (an exit) the delay counts from.
    last: UnixNanos,
}

/// Back-off state per key (a container name plus its spec hash, or an image).
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    config: BackoffConfig,
    entries: HashMap<String, Entry>,
}

impl Backoff {
    pub fn new(config: BackoffConfig) -> Self {
        Self { config, entries: HashMap::new() }
    }

    fn expired(&self, e: &Entry, f: Failure) -> bool {
        f.at.since(e.last) > self.config.max.saturating_mul(2) || f.at >= f.started && f.at.since(f.started) >= self.config.reset_after
    }

    /// When `key` may next be retried after failure `f`: `None` if it may
    /// be retried now.
    pub fn blocked_until(&self, key: &str, f: Failure, now: UnixNanos) -> Option<UnixNanos> {
        let e = self.entries.get(key)?;
        if self.expired(e, f) {
            return None;
        }
        let until = f.at.after(e.delay);
        (now < until).then_some(until)
    }

    /// The delay `key` is on, if any.
    pub fn delay(&self, key: &str) -> Option<Duration> {
        self.entries.get(key).map(|e| e.delay)
    }

    /// Records a retry of `key` after failure `f`, growing its delay.
    /// Recording the same failure again changes nothing.
    pub fn next(&mut self, key: &str, f: Failure) {
        let fresh = Entry { delay: self.config.initial, last: f.at };
        match self.entries.get(key).copied() {
            Some(e) if e.last == f.at => {}
            Some(e) if !self.expired(&e, f) => {
                let delay = e.delay.saturating_mul(2).min(self.config.max);
                self.entries.insert(key.to_string(), Entry { delay, last: f.at });
            }
            _ => {
                self.entries.insert(key.to_string(), fresh);
            }
        }
    }

    /// Forgets keys for which `keep` is false.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn cfg() -> BackoffConfig {
        BackoffConfig::default()
    }

    /// A container that ran for one second and failed at `at`.
    fn crash(at: i64) -> Failure {
        Failure { started: UnixNanos(at - S), at: UnixNanos(at) }
    }

    fn t(ns: i64) -> UnixNanos {
        UnixNanos(ns)
    }

    #[test]
    fn first_restart_is_immediate_then_doubles_to_the_cap() {
        let mut b = Backoff::new(cfg());
        // exit 1 at t=10: nothing recorded yet, restart now
        assert_eq!(b.blocked_until("c", crash(10 * S), t(10 * S)), None);
        b.next("c", crash(10 * S));
        // exit 2 at t=12: blocked 10 s from that exit
        assert_eq!(b.blocked_until("c", crash(12 * S), t(12 * S)), Some(t(22 * S)));
        assert_eq!(b.blocked_until("c", crash(12 * S), t(22 * S)), None);
        b.next("c", crash(12 * S));
        assert_eq!(b.delay("c"), Some(Duration::from_secs(20)));
        let mut at = 12 * S;
        let mut delays = vec![];
        for _ in 0..8 {
            at += 2 * S;
            b.next("c", crash(at));
            delays.push(b.delay("c").unwrap().as_secs());
        }
        assert_eq!(delays, vec![40, 80, 160, 300, 300, 300, 300, 300]);
    }

    #[test]
    fn recording_the_same_exit_twice_does_not_double() {
        let mut b = Backoff::new(cfg());
        b.next("c", crash(5 * S));
        b.next("c", crash(5 * S));
        assert_eq!(b.delay("c"), Some(Duration::from_secs(10)));
    }

    #[test]
    fn ten_minutes_of_running_resets_it() {
        let mut b = Backoff::new(cfg());
        for at in [10, 12, 14] {
            b.next("c", crash(at * S));
        }
        assert_eq!(b.delay("c"), Some(Duration::from_secs(40)));
        let long_run = Failure { started: t(20 * S), at: t(20 * S + 600 * S) };
        assert_eq!(b.blocked_until("c", long_run, long_run.at), None);
        b.next("c", long_run);
        assert_eq!(b.delay("c"), Some(Duration::from_secs(10)));
        let short_run = Failure { started: t(20 * S), at: t(20 * S + 599 * S) };
        let mut b2 = Backoff::new(cfg());
        b2.next("c", crash(19 * S));
        b2.next("c", short_run);
        assert_eq!(b2.delay("c"), Some(Duration::from_secs(20)), "nine minutes are not enough");
    }

    #[test]
    fn an_old_entry_is_forgotten() {
        let mut b = Backoff::new(cfg());
        b.next("c", crash(10 * S));
        b.next("c", crash(12 * S));
        let much_later = crash(12 * S + 601 * S);
        assert_eq!(b.blocked_until("c", much_later, much_later.at), None);
    }
}
