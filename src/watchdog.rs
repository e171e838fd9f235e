//! systemd integration beyond READY: the service watchdog and STATUS lines.
//!
//! With `WatchdogSec=` in the unit, systemd restarts nodelet when it stops
//! sending `WATCHDOG=1`. nodelet sends it only while the loops that keep the
//! node right are making progress (kubelet's watchdog does the same with its
//! syncLoop and PLEG health checks): the pod manager's loop, the runtime
//! relist, and the Service proxy's loop. Each beats a [`Beat`]; a loop quiet
//! for longer than its allowance is stalled, and the pings stop. A `STATUS=`
//! line says what nodelet is doing, for `systemctl status`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A loop's sign of life: the time of its last turn.
#[derive(Debug, Clone)]
pub struct Beat {
    origin: Instant,
    /// Milliseconds since `origin` of the last beat.
    last_ms: Arc<AtomicU64>,
}

impl Default for Beat {
    fn default() -> Self {
        Self { origin: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) }
    }
}

impl Beat {
    pub fn beat(&self) {
        let ms = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the last beat (or since it was made).
    pub fn quiet_for(&self) -> Duration {
        self.origin.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// One watched loop.
#[derive(Debug, Clone)]
pub struct Watched {
    pub name: &'static str,
    pub beat: Beat,
    /// Quiet longer than this: stalled.
    pub allowance: Duration,
}

/// The loops that are stalled now, with how long each has been quiet.
pub fn stalled(watched: &[Watched]) -> Vec<(&'static str, Duration)> {
    watched.iter().filter_map(|w| {
        let quiet = w.beat.quiet_for();
        (quiet > w.allowance).then_some((w.name, quiet))
    }).collect()
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this
/// process if `WATCHDOG_PID` is set), as sd_watchdog_enabled(3) reads it.
pub fn interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Whether a service manager listens (`NOTIFY_SOCKET`).
pub fn supervised() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// Pings the watchdog at half its interval while nothing is stalled, and
/// keeps the STATUS line current. Runs until dropped.
pub async fn run(interval: Option<Duration>, watched: Vec<Watched>, status: impl Fn() -> String + Send + 'static) {
    use sd_notify::NotifyState;
    let period = interval.map_or(Duration::from_secs(10), |i| (i / 2).max(Duration::from_millis(100)));
    let mut reported: Vec<&'static str> = Vec::new();
    let mut last_status = String::new();
    loop {
        let stalled_now = stalled(&watched);
        let names: Vec<&'static str> = stalled_now.iter().map(|(n, _)| *n).collect();
        if names != reported {
            for (name, quiet) in &stalled_now {
                if !reported.contains(name) {
                    tracing::error!(
                        "the {name} has made no progress for {}s; not telling the service manager's watchdog that nodelet is alive",
                        quiet.as_secs()
                    );
                }
            }
            if names.is_empty() {
                tracing::info!("every watched loop makes progress again");
            }
            reported = names;
        }
        let text = if reported.is_empty() { status() } else { format!("stalled: {}", reported.join(", ")) };
        let mut states = Vec::new();
        if text != last_status {
            states.push(NotifyState::Status(&text));
        }
        if interval.is_some() && reported.is_empty() {
            states.push(NotifyState::Watchdog);
        }
        if !states.is_empty()
            && let Err(e) = sd_notify::notify(false, &states)
        {
            tracing::debug!(error = %e, "sd_notify failed");
        }
        last_status = text;
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_loop_is_stalled_and_a_beating_one_is_not() {
        let alive = Beat::default();
        let quiet = Beat { origin: Instant::now() - Duration::from_secs(30), last_ms: Arc::new(AtomicU64::new(0)) };
        alive.beat();
        let w = vec![
            Watched { name: "pod sync loop", beat: alive, allowance: Duration::from_secs(10) },
            Watched { name: "Service proxy loop", beat: quiet.clone(), allowance: Duration::from_secs(10) },
        ];
        let s = stalled(&w);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].0, "Service proxy loop");
        assert!(s[0].1 >= Duration::from_secs(29));
        quiet.beat();
        assert!(stalled(&w).is_empty());
    }
}
