//! Probe counts for `/metrics/probes` (kubelet's `prober_probe_total`): how
//! often each container's probes succeeded, failed or could not run. Kept by
//! container ID; the node API labels them with the container's pod when it
//! renders them, so this module knows nothing of pods.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::ProbeKind;

/// A probe run's result as kubelet's metric names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Result {
    Successful,
    Failed,
    Unknown,
}

impl Result {
    pub fn as_str(self) -> &'static str {
        match self {
            Result::Successful => "successful",
            Result::Failed => "failed",
            Result::Unknown => "unknown",
        }
    }
}

/// The counters, shared by every probe worker.
#[derive(Debug, Default)]
pub struct ProbeCounts {
    counts: Mutex<BTreeMap<(String, ProbeKind, Result), u64>>,
}

impl ProbeCounts {
    pub fn record(&self, container_id: &str, kind: ProbeKind, result: Result) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *c.entry((container_id.to_string(), kind, result)).or_default() += 1;
    }

    /// Every counter; those of containers not in `live` are dropped first.
    pub fn snapshot(&self, live: &dyn Fn(&str) -> bool) -> Vec<(String, ProbeKind, Result, u64)> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.retain(|(id, _, _), _| live(id));
        c.iter().map(|((id, k, r), n)| (id.clone(), *k, *r, *n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_gone_containers_drop_out() {
        let p = ProbeCounts::default();
        p.record("a", ProbeKind::Readiness, Result::Successful);
        p.record("a", ProbeKind::Readiness, Result::Successful);
        p.record("a", ProbeKind::Liveness, Result::Failed);
        p.record("b", ProbeKind::Startup, Result::Unknown);
        let all = p.snapshot(&|_| true);
        assert!(all.contains(&("a".into(), ProbeKind::Readiness, Result::Successful, 2)));
        assert_eq!(all.len(), 3);
        let only_a = p.snapshot(&|id| id == "a");
        assert_eq!(only_a.len(), 2);
        assert_eq!(p.snapshot(&|_| true).len(), 2, "b is gone for good");
    }
}
