//! The probes of one pod: which probe loops run (a startup probe first,
//! holding liveness and readiness back until it succeeds; none for a
//! container that is not running), and what their results mean for the
//! planner (kill the unhealthy) and the status (ready, started).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

use super::plan::{self, KillReason};
use crate::probes::{ProbeConfig, ProbeEvent, ProbeKind, ProbeUpdate, worker};
use crate::runtime::{ContainerPhase, Runtime, RuntimePod};

fn probe_of(c: &Container, kind: ProbeKind) -> Option<&Probe> {
    match kind {
        ProbeKind::Startup => c.startup_probe.as_ref(),
        ProbeKind::Liveness => c.liveness_probe.as_ref(),
        ProbeKind::Readiness => c.readiness_probe.as_ref(),
    }
}

fn field(kind: ProbeKind) -> &'static str {
    match kind {
        ProbeKind::Startup => "startupProbe",
        ProbeKind::Liveness => "livenessProbe",
        ProbeKind::Readiness => "readinessProbe",
    }
}

pub struct PodProbes {
    tx: mpsc::Sender<ProbeUpdate>,
    pub rx: mpsc::Receiver<ProbeUpdate>,
    tasks: JoinSet<()>,
    running: HashMap<(String, ProbeKind), AbortHandle>,
    /// The latest result of each probe of each container instance.
    results: HashMap<(String, ProbeKind), bool>,
}

impl Default for PodProbes {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(64);
        Self { tx, rx, tasks: JoinSet::new(), running: HashMap::new(), results: HashMap::new() }
    }
}

/// What the probes say about a pod's containers, by container ID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeView {
    pub ready: BTreeMap<String, bool>,
    pub started: BTreeMap<String, bool>,
    pub unhealthy: BTreeMap<String, KillReason>,
}

impl PodProbes {
    /// Records an update; true when a result changed.
    pub fn record(&mut self, u: &ProbeUpdate) -> bool {
        let ProbeEvent::Result(ok) = u.event else { return false };
        let key = (u.container_id.clone(), u.kind);
        if self.results.get(&key) == Some(&ok) {
            return false;
        }
        self.results.insert(key.clone(), ok);
        if u.kind == ProbeKind::Startup || !ok && u.kind == ProbeKind::Liveness {
            self.running.remove(&key);
        }
        true
    }

    fn result(&self, id: &str, kind: ProbeKind) -> Option<bool> {
        self.results.get(&(id.to_string(), kind)).copied()
    }

    /// Starts and stops probe loops to match the running containers.
    /// Returns probe configuration errors, to be reported.
    pub fn reconcile(&mut self, pod: &Pod, obs: &RuntimePod, rt: &Arc<dyn Runtime>, counts: &Arc<crate::probes::metrics::ProbeCounts>) -> Vec<String> {
        let mut errors = Vec::new();
        let spec = pod.spec.clone().unwrap_or_default();
        let current = obs.latest_sandbox().filter(|s| s.ready);
        let pod_ip = current.and_then(|s| s.ips.first().cloned()).unwrap_or_default();
        let mut wanted: Vec<(String, ProbeKind)> = Vec::new();
        for x in obs.containers.iter().filter(|x| x.phase == ContainerPhase::Running) {
            if current.is_none_or(|s| s.id != x.sandbox_id) {
                continue;
            }
            let Some((c, _)) = plan::containers(&spec).into_iter().find(|(c, _)| c.name == x.name) else { continue };
            let started = c.startup_probe.is_none() || self.result(&x.id, ProbeKind::Startup) == Some(true);
            let kinds: &[ProbeKind] = if started { &[ProbeKind::Liveness, ProbeKind::Readiness] } else { &[ProbeKind::Startup] };
            for &kind in kinds {
                let Some(p) = probe_of(c, kind) else { continue };
                // A probe that has reported a failure that kills stays stopped.
                if kind != ProbeKind::Readiness && self.result(&x.id, kind) == Some(false) {
                    continue;
                }
                let key = (x.id.clone(), kind);
                wanted.push(key.clone());
                if self.running.contains_key(&key) {
                    continue;
                }
                let cfg = match ProbeConfig::new(kind, p, c, &pod_ip, &format!("{}.{}", c.name, field(kind))) {
                    Ok(cfg) => cfg,
                    Err(e) => {
                        errors.push(e.to_string());
                        continue;
                    }
                };
                let handle = self.tasks.spawn(worker::run(cfg, x.id.clone(), x.started_at, rt.clone(), self.tx.clone(), counts.clone()));
                self.running.insert(key, handle);
            }
        }
        self.running.retain(|key, handle| {
            let keep = wanted.contains(key);
            if !keep {
                handle.abort();
            }
            keep
        });
        let live: Vec<&str> = obs.containers.iter().map(|c| c.id.as_str()).collect();
        self.results.retain(|(id, _), _| live.contains(&id.as_str()));
        errors
    }

    /// Readiness, startup and liveness as the planner and status need them.
    pub fn view(&self, pod: &Pod, obs: &RuntimePod) -> ProbeView {
        let spec = pod.spec.clone().unwrap_or_default();
        let mut v = ProbeView::default();
        for x in obs.containers.iter().filter(|x| x.phase == ContainerPhase::Running) {
            let Some((c, _)) = plan::containers(&spec).into_iter().find(|(c, _)| c.name == x.name) else { continue };
            let started = c.startup_probe.is_none() || self.result(&x.id, ProbeKind::Startup) == Some(true);
            let ready = started && (c.readiness_probe.is_none() || self.result(&x.id, ProbeKind::Readiness) == Some(true));
            v.started.insert(x.id.clone(), started);
            v.ready.insert(x.id.clone(), ready);
            if self.result(&x.id, ProbeKind::Liveness) == Some(false) {
                v.unhealthy.insert(x.id.clone(), KillReason::LivenessFailed);
            } else if self.result(&x.id, ProbeKind::Startup) == Some(false) {
                v.unhealthy.insert(x.id.clone(), KillReason::StartupFailed);
            }
        }
        v
    }

    /// The grace period for killing a container its probe failed: the
    /// probe's own terminationGracePeriodSeconds when set.
    pub fn grace_override(pod: &Pod, name: &str, reason: KillReason) -> Option<i64> {
        let spec = pod.spec.as_ref()?;
        let (c, _) = plan::containers(spec).into_iter().find(|(c, _)| c.name == name)?;
        let kind = match reason {
            KillReason::LivenessFailed => ProbeKind::Liveness,
            KillReason::StartupFailed => ProbeKind::Startup,
            _ => return None,
        };
        probe_of(c, kind)?.termination_grace_period_seconds
    }
}
