//! The probe loop for one probe of one container instance: wait out
//! initialDelaySeconds (from the container's start), then run the handler
//! every periodSeconds with timeoutSeconds, and report a result when
//! successThreshold successes or failureThreshold failures in a row change
//! it. A startup probe stops after its first success; liveness and startup
//! stop after reporting a failure (the container is about to be killed).
//! An `Unknown` outcome (the check could not run) changes nothing.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use tokio::sync::mpsc;

use super::ProbeKind;
use super::handler::{self, HandlerError, Outcome, Target};
use crate::clock::UnixNanos;
use crate::runtime::Runtime;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeConfig {
    pub kind: ProbeKind,
    pub target: Target,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

fn secs(v: Option<i32>, default: i32) -> Duration {
    Duration::from_secs(v.unwrap_or(default).max(0) as u64)
}

impl ProbeConfig {
    /// The probe's settings with kubelet's defaults.
    pub fn new(kind: ProbeKind, p: &Probe, c: &Container, pod_ip: &str, field: &str) -> Result<Self, HandlerError> {
        Ok(Self {
            kind,
            target: handler::probe_target(p, c, pod_ip, field)?,
            initial_delay: secs(p.initial_delay_seconds, 0),
            period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
            failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeEvent {
    /// The probe's result changed: true is success.
    Result(bool),
    /// One attempt failed (for the Unhealthy event), with its reason.
    Failed(String),
    /// One attempt succeeded with a warning.
    Warning(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeUpdate {
    pub container_id: String,
    pub kind: ProbeKind,
    pub event: ProbeEvent,
}

/// Counts consecutive outcomes against the thresholds (pure).
#[derive(Debug, Clone)]
pub struct Thresholds {
    success: u32,
    failure: u32,
    successes: u32,
    failures: u32,
    result: Option<bool>,
}

impl Thresholds {
    pub fn new(cfg: &ProbeConfig) -> Self {
        // Liveness starts out healthy; readiness and startup start unknown.
        let result = (cfg.kind == ProbeKind::Liveness).then_some(true);
        Self { success: cfg.success_threshold, failure: cfg.failure_threshold, successes: 0, failures: 0, result }
    }

    /// Records one outcome; the new result if it changed.
    pub fn record(&mut self, ok: Option<bool>) -> Option<bool> {
        match ok {
            None => return None,
            Some(true) => {
                self.successes += 1;
                self.failures = 0;
            }
            Some(false) => {
                self.failures += 1;
                self.successes = 0;
            }
        }
        let next = if self.successes >= self.success {
            Some(true)
        } else if self.failures >= self.failure {
            Some(false)
        } else {
            self.result
        };
        if next != self.result {
            self.result = next;
            return next;
        }
        None
    }
}

/// Runs one probe until it has nothing more to say or `tx` closes.
/// `started_at` is the container's start (ns since the epoch).
/// Each run is counted in `probe_counts` (`/metrics/probes`).
pub async fn run(
    cfg: ProbeConfig,
    container_id: String,
    started_at: i64,
    rt: Arc<dyn Runtime>,
    tx: mpsc::Sender<ProbeUpdate>,
    probe_counts: Arc<super::metrics::ProbeCounts>,
) {
    let since_start = UnixNanos::now().since(UnixNanos(started_at));
    if let Some(wait) = cfg.initial_delay.checked_sub(since_start) {
        tokio::time::sleep(wait).await;
    }
    let send = |event| ProbeUpdate { container_id: container_id.clone(), kind: cfg.kind, event };
    let mut counts = Thresholds::new(&cfg);
    let mut tick = tokio::time::interval(cfg.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let outcome = handler::run(&cfg.target, &container_id, rt.as_ref(), cfg.timeout).await;
        let counted = match &outcome {
            Outcome::Success | Outcome::Warning(_) => super::metrics::Result::Successful,
            Outcome::Failure(_) => super::metrics::Result::Failed,
            Outcome::Unknown(_) => super::metrics::Result::Unknown,
        };
        probe_counts.record(&container_id, cfg.kind, counted);
        let ok = match &outcome {
            Outcome::Success => Some(true),
            Outcome::Warning(w) => {
                if tx.send(send(ProbeEvent::Warning(w.clone()))).await.is_err() {
                    return;
                }
                Some(true)
            }
            Outcome::Failure(why) => {
                if tx.send(send(ProbeEvent::Failed(why.clone()))).await.is_err() {
                    return;
                }
                Some(false)
            }
            Outcome::Unknown(why) => {
                tracing::debug!(container = %container_id, probe = cfg.kind.as_str(), reason = %why, "probe could not run");
                None
            }
        };
        if let Some(result) = counts.record(ok) {
            if tx.send(send(ProbeEvent::Result(result))).await.is_err() {
                return;
            }
            let done = match cfg.kind {
                ProbeKind::Startup => true,
                ProbeKind::Liveness => !result,
                ProbeKind::Readiness => false,
            };
            if done {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(kind: ProbeKind, success: u32, failure: u32) -> ProbeConfig {
        ProbeConfig {
            kind,
            target: Target::Tcp { host: "x".into(), port: 1 },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            success_threshold: success,
            failure_threshold: failure,
        }
    }

    #[test]
    fn thresholds_need_runs_in_a_row() {
        let mut t = Thresholds::new(&cfg(ProbeKind::Readiness, 2, 3));
        assert_eq!(t.record(Some(true)), None, "one success is not two");
        assert_eq!(t.record(Some(true)), Some(true));
        assert_eq!(t.record(Some(false)), None);
        assert_eq!(t.record(Some(false)), None);
        assert_eq!(t.record(None), None, "unknown changes nothing");
        assert_eq!(t.record(Some(false)), Some(false));
        assert_eq!(t.record(Some(true)), None);
        assert_eq!(t.record(Some(false)), None, "the failure run restarted");
    }

    #[test]
    fn liveness_starts_healthy() {
        let mut t = Thresholds::new(&cfg(ProbeKind::Liveness, 1, 1));
        assert_eq!(t.record(Some(true)), None, "already healthy");
        assert_eq!(t.record(Some(false)), Some(false));
        let mut s = Thresholds::new(&cfg(ProbeKind::Startup, 1, 3));
        assert_eq!(s.record(Some(true)), Some(true));
    }
}
