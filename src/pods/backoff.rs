//! Crash-loop back-off, with kubelet's semantics: the first restart after an
//! exit is immediate; each later one waits the current delay (counted from
//! the exit), which starts at `initial` and doubles up to `max`. An entry
//! whose last exit is more than `2 × max` old is forgotten, so a container
//! that ran for ten minutes (with the default 300 s cap) starts over at the
//! initial delay.

use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self { initial: Duration::from_secs(10), max: Duration::from_secs(300) }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    delay: Duration,
    /// The event time (an exit, in ns since the epoch) the delay counts from.
    last: i64,
}

/// Back-off state per key (a container name plus its spec hash, or an image).
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    config: BackoffConfig,
    entries: HashMap<String, Entry>,
}

fn nanos(d: Duration) -> i64 {
    d.as_nanos().min(i64::MAX as u128) as i64
}

impl Backoff {
    pub fn new(config: BackoffConfig) -> Self {
        Self { config, entries: HashMap::new() }
    }

    fn expired(&self, e: &Entry, event: i64) -> bool {
        event.saturating_sub(e.last) > nanos(self.config.max).saturating_mul(2)
    }

    /// When `key` may next be retried if its last failure happened at
    /// `event`: `None` if it may be retried now.
    pub fn blocked_until(&self, key: &str, event: i64, now: i64) -> Option<i64> {
        let e = self.entries.get(key)?;
        if self.expired(e, event) {
            return None;
        }
        let until = event.saturating_add(nanos(e.delay));
        (now < until).then_some(until)
    }

    /// The delay `key` is on, if any.
    pub fn delay(&self, key: &str) -> Option<Duration> {
        self.entries.get(key).map(|e| e.delay)
    }

    /// Records a retry of `key` after a failure at `event`, growing its delay.
    /// Recording the same failure again changes nothing.
    pub fn next(&mut self, key: &str, event: i64) {
        let fresh = Entry { delay: self.config.initial, last: event };
        match self.entries.get(key).copied() {
            Some(e) if e.last == event => {}
            Some(e) if !self.expired(&e, event) => {
                let delay = e.delay.saturating_mul(2).min(self.config.max);
                self.entries.insert(key.to_string(), Entry { delay, last: event });
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
        BackoffConfig { initial: Duration::from_secs(10), max: Duration::from_secs(300) }
    }

    #[test]
    fn first_restart_is_immediate_then_doubles_to_the_cap() {
        let mut b = Backoff::new(cfg());
        // exit 1 at t=0: nothing recorded yet, restart now
        assert_eq!(b.blocked_until("c", 0, 0), None);
        b.next("c", 0);
        // exit 2 at t=1: blocked 10 s from that exit
        assert_eq!(b.blocked_until("c", S, S), Some(11 * S));
        assert_eq!(b.blocked_until("c", S, 11 * S), None);
        b.next("c", S);
        assert_eq!(b.delay("c"), Some(Duration::from_secs(20)));
        let mut t = S;
        let mut delays = vec![];
        for _ in 0..8 {
            t += 1;
            b.next("c", t);
            delays.push(b.delay("c").unwrap().as_secs());
        }
        assert_eq!(delays, vec![40, 80, 160, 300, 300, 300, 300, 300]);
    }

    #[test]
    fn recording_the_same_exit_twice_does_not_double() {
        let mut b = Backoff::new(cfg());
        b.next("c", 5);
        b.next("c", 5);
        assert_eq!(b.delay("c"), Some(Duration::from_secs(10)));
    }

    #[test]
    fn resets_after_twice_the_cap() {
        let mut b = Backoff::new(cfg());
        b.next("c", 0);
        b.next("c", S);
        b.next("c", 2 * S);
        assert_eq!(b.delay("c"), Some(Duration::from_secs(40)));
        let later = 2 * S + 601 * S;
        assert_eq!(b.blocked_until("c", later, later), None, "ten minutes of running resets it");
        b.next("c", later);
        assert_eq!(b.delay("c"), Some(Duration::from_secs(10)));
    }
}
