//! One task per pod. A worker reads its pod's runtime state, asks the pure
//! planner what to do, does it through the runtime, publishes the pod's
//! status, and sleeps until something changes: the desired pod, the runtime
//! (woken by the relist loop), a back-off expiring, or a periodic resync.
//!
//! Termination (the pod left its source, or an orphan was found) stops the
//! containers with the grace period, then the sandbox, removes them all,
//! and cleans up the pod's log directory, pod directory and cgroup.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodStatus};
use k8s_openapi::jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::backoff::Backoff;
use super::events::{EventRecorder, EventType};
use super::plan::{self, Action, PlanInput, Waiting};
use super::status::{PodFailure, StatusInput, pod_status};
use super::store::{PodRecord, StatusStore};
use super::{DesiredPod, logs, sandbox};

mod execute;
mod publish;
mod resize;
mod start;
mod stop;
mod volume_setup;
use crate::runtime::labels::PodIdentity;
use crate::runtime::observe::PodInspector;
use crate::clock::UnixNanos;
use crate::runtime::{Runtime, RuntimeError, RuntimeHealth, RuntimePod, cri};

use super::NodeContext;
use super::probing::{PodProbes, ProbeView};
use crate::probes::{ProbeEvent, ProbeUpdate};
use crate::volumes::objects::{ApiObjects, ObjectKey};
use crate::volumes::{self, PodVolumes, VolumeContext};

/// How often a quiet pod is re-checked anyway (kubelet's syncFrequency).
pub const RESYNC: Duration = Duration::from_secs(60);
/// Rounds of back-to-back actions before a dry-run worker pauses.
const MAX_BUSY_ROUNDS: u32 = 20;
/// After acting, a worker looks again this soon even without news.
const AFTER_ACTING: Duration = Duration::from_secs(1);

/// What every worker shares.
pub struct WorkerContext {
    /// Device plugins: each container's devices and their plugins' answers.
    pub devices: crate::devices::Devices,
    /// The CPU manager: each container's cpuset (static policy).
    pub cpus: crate::cpus::CpuManager,
    /// The memory manager: each Guaranteed container's NUMA nodes (static policy).
    pub memory: crate::memory::MemoryManager,
    /// DRA: the pods' ResourceClaims prepared by their drivers.
    pub dra: crate::dra::Dra,
    /// The topology manager (policy `none`: off).
    pub topology: crate::topology::Manager,
    pub runtime: Arc<dyn Runtime>,
    pub node: Arc<NodeContext>,
    pub events: Arc<dyn EventRecorder>,
    pub statuses: StatusStore,
    pub health: watch::Receiver<RuntimeHealth>,
    pub resync: Duration,
    /// A dry run: re-plan right after acting instead of waiting for the
    /// relist (the simulated runtime changes at once), and run no probes
    /// (there is nothing to probe).
    pub dry_run: bool,
    /// Where stopped apiserver pods are reported (cluster mode).
    pub terminated: Option<mpsc::UnboundedSender<Terminated>>,
    /// ConfigMaps, Secrets, Services and tokens (cluster mode).
    pub objects: Option<Arc<dyn ApiObjects>>,
    /// Probe runs by result, for `/metrics/probes`.
    pub probe_counts: Arc<crate::probes::metrics::ProbeCounts>,
    /// Pod start durations and container starts, for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Image pulls: credentials, limits, progress.
    pub pulls: Arc<crate::pulls::Puller>,
    /// The registered CSI drivers.
    pub csi: crate::csi::Drivers,
    /// The volumesInUse handshake with the attach-detach controller.
    pub in_use: crate::csi::InUse,
    /// The pods' volumes, for the stats collector.
    pub mounted: crate::volumes::Mounted,
    /// The Node's labels as the apiserver has them (cluster mode).
    pub node_labels: watch::Receiver<BTreeMap<String, String>>,
    /// In-place resize: what each pod was admitted with (the manager's) and
    /// what its running containers were last given (the workers').
    pub allocated: super::allocation::Checkpoint,
    pub actuated: super::allocation::Checkpoint,
}

#[derive(Debug)]
pub enum WorkerMsg {
    /// A new version of the desired pod, with its allocated resources.
    Update(DesiredPod),
    /// A resize the node cannot make now (kubelet's PodResizePending:
    /// reason Infeasible or Deferred, and why), or none.
    ResizePending(Option<ResizePending>),
    /// The runtime state of the pod changed.
    Changed,
    /// Stop and remove the pod; `grace` overrides the pod's grace period
    /// (an apiserver deletion's deletionGracePeriodSeconds).
    Terminate { grace: Option<i64> },
    /// The node ends the pod (an eviction): it is stopped within `grace`
    /// and stays Failed with `failure`'s reason and message.
    End { failure: PodFailure, grace: i64 },
}

/// Why a pod's resize waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResizePending {
    pub reason: String,
    pub message: String,
}

/// A pod from the apiserver that has been stopped and removed, with its
/// final status, for the deletion handshake.
#[derive(Debug, Clone)]
pub struct Terminated {
    pub pod: DesiredPod,
    pub status: PodStatus,
}

/// The next changed API object; `None` when some were missed (look at
/// everything). Never resolves without a source of changes.
async fn next_change(rx: &mut Option<tokio::sync::broadcast::Receiver<ObjectKey>>) -> Option<ObjectKey> {
    let Some(r) = rx else { return std::future::pending().await };
    match r.recv().await {
        Ok(k) => Some(k),
        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => None,
        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
            *rx = None;
            std::future::pending().await
        }
    }
}

/// kubelet never gives StopContainer less than this.
const MIN_GRACE: i64 = 2;

/// The pod's grace period, from its spec or (for an orphan) as recorded on
/// its containers.
fn grace_of(pod: Option<&Pod>, obs: &RuntimePod) -> i64 {
    pod.and_then(|p| p.spec.as_ref()?.termination_grace_period_seconds)
        .or_else(|| obs.containers.iter().find_map(|c| c.grace_period()))
        .unwrap_or(30)
        .max(MIN_GRACE)
}

/// The pod's IPs: its sandbox's, or with hostNetwork the node's (as the
/// status reports them, so `fieldRef: status.podIP`, hooks and probes agree).
fn pod_ips(pod: Option<&Pod>, node: &NodeContext, sandbox_ips: &[String]) -> Vec<String> {
    if pod.and_then(|p| p.spec.as_ref()).and_then(|s| s.host_network) == Some(true) {
        node.host_ips.clone()
    } else {
        crate::runtime::observe::order_pod_ips(&node.host_ips, sandbox_ips)
    }
}

fn soonest(at: UnixNanos, wake: &mut Option<UnixNanos>) {
    *wake = Some(wake.map_or(at, |w| w.min(at)));
}

/// A failed step: the reason is already recorded; retry at `retry_at`.
struct Failed {
    retry_at: UnixNanos,
}

/// The sandbox the current round works in.
struct SandboxInUse {
    id: String,
    config: cri::PodSandboxConfig,
    ips: Vec<String>,
}

pub struct Worker {
    ctx: Arc<WorkerContext>,
    identity: PodIdentity,
    pod: Option<DesiredPod>,
    inspector: PodInspector,
    crash_backoff: Backoff,
    pull_backoff: Backoff,
    /// Last pull failure per image: when, and the registry's words.
    pull_failures: BTreeMap<String, (UnixNanos, String)>,
    /// Why containers could not be started, by container name.
    errors: BTreeMap<String, Waiting>,
    /// Containers already reported as in back-off (one BackOff event each).
    backoff_reported: BTreeSet<String>,
    warned_dns: bool,
    /// A pod-level hold after a failed sandbox or kill action.
    retry_at: Option<UnixNanos>,
    /// Containers whose last start failed, held until the time given; the
    /// rest of the pod carries on.
    held: BTreeMap<String, UnixNanos>,
    start_time: Timestamp,
    /// When this worker first had the pod (kubelet_pod_start_duration_seconds).
    first_seen: std::time::Instant,
    last_status: Option<PodStatus>,
    probes: PodProbes,
    /// The grace period an apiserver deletion asked for.
    grace_override: Option<i64>,
    /// The node ended the pod (activeDeadlineSeconds): it stays Failed.
    failure: Option<PodFailure>,
    /// The pod's volumes as last set up.
    volumes: Option<PodVolumes>,
    /// The pod ended and its volumes were let go of: it starts nothing again.
    volumes_released: bool,
    /// When to try letting go of an ended pod's volumes again, and the
    /// back-off after the last failure.
    release_retry: Option<(UnixNanos, Duration)>,
    /// Volume failures already reported (one FailedMount event each).
    mount_errors: BTreeSet<String>,
    /// Objects a pod whose volumes never set up waits for.
    pending_uses: BTreeSet<ObjectKey>,
    /// API objects that changed (to refresh volumes that use them).
    changes: Option<tokio::sync::broadcast::Receiver<ObjectKey>>,
    /// A resize the manager could not allocate (PodResizePending).
    resize_pending: Option<ResizePending>,
    /// The last failure to resize a running container (PodResizeInProgress
    /// with reason Error), cleared by a success.
    resize_error: Option<String>,
    /// The pod's ResourceClaims were prepared in this run of the agent.
    claims_prepared: bool,
    /// The last failure to prepare them (one event per new reason), and the
    /// back-off before the next try.
    claims_error: Option<String>,
    claims_retry: Option<(UnixNanos, Duration)>,
}

impl Worker {
    pub fn new(ctx: Arc<WorkerContext>, identity: PodIdentity, pod: Option<DesiredPod>) -> Self {
        let backoff = ctx.node.backoff;
        Self {
            ctx,
            identity,
            pod,
            inspector: PodInspector::default(),
            crash_backoff: Backoff::new(backoff),
            pull_backoff: Backoff::new(backoff),
            pull_failures: BTreeMap::new(),
            errors: BTreeMap::new(),
            backoff_reported: BTreeSet::new(),
            warned_dns: false,
            retry_at: None,
            held: BTreeMap::new(),
            start_time: Timestamp::now(),
            first_seen: std::time::Instant::now(),
            last_status: None,
            probes: PodProbes::default(),
            grace_override: None,
            failure: None,
            volumes: None,
            volumes_released: false,
            release_retry: None,
            mount_errors: BTreeSet::new(),
            pending_uses: BTreeSet::new(),
            changes: None,
            resize_pending: None,
            resize_error: None,
            claims_prepared: false,
            claims_error: None,
            claims_retry: None,
        }
    }

    fn event(&self, kind: EventType, reason: &str, message: &str) {
        self.ctx.events.record(&self.identity, kind, reason, message);
    }

    fn retry_later(&self) -> Failed {
        Failed { retry_at: UnixNanos::now().after(self.ctx.node.backoff.initial) }
    }

    /// Runs the worker until its pod has been terminated. `idle` counts the
    /// times the worker went quiet (used to serialise dry runs).
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<WorkerMsg>, idle: watch::Sender<u64>) {
        let span = tracing::info_span!("pod", pod = %self.identity, uid = %self.identity.uid);
        self.changes = self.ctx.objects.as_ref().map(|o| o.changes());
        async move {
            let mut terminating = self.pod.is_none();
            // A worker may be born to stop its pod (a deleted pod found
            // running after a restart): read what it was sent first.
            while let Ok(m) = rx.try_recv() {
                self.handle(m, &mut terminating);
            }
            let mut busy = 0;
            let mut health = self.ctx.health.clone();
            loop {
                if terminating {
                    self.terminate().await;
                    idle.send_modify(|n| *n += 1);
                    return;
                }
                let (progressed, wake_at) = self.sync().await;
                // Dry runs re-plan at once so a pod's whole start prints in
                // one go; otherwise the relist reports what the actions did.
                if progressed && self.ctx.dry_run && busy < MAX_BUSY_ROUNDS {
                    busy += 1;
                    while let Ok(m) = rx.try_recv() {
                        self.handle(m, &mut terminating);
                    }
                    continue;
                }
                busy = 0;
                let mut deadline = [wake_at, self.retry_at].into_iter().flatten().min();
                if progressed {
                    // Look again soon even if the relist reports nothing.
                    let soon = UnixNanos::now().after(AFTER_ACTING);
                    deadline = Some(deadline.map_or(soon, |d| d.min(soon)));
                }
                idle.send_modify(|n| *n += 1);
                let sleep_for = deadline
                    .map(|d| d.since(UnixNanos::now()))
                    .unwrap_or(self.ctx.resync)
                    .min(self.ctx.resync);
                let sleep = tokio::time::sleep(sleep_for);
                tokio::pin!(sleep);
                loop {
                    tokio::select! {
                        m = rx.recv() => match m {
                            Some(m) => self.handle(m, &mut terminating),
                            None => return,
                        },
                        Some(u) = self.probes.rx.recv() => self.on_probe(u),
                        _ = &mut sleep => {}
                        Ok(()) = health.changed() => {}
                        changed = next_change(&mut self.changes) => {
                            // Only objects this pod's volumes read matter.
                            let ours = changed.is_none_or(|k| {
                                self.pending_uses.contains(&k) || self.volumes.as_ref().is_some_and(|v| v.uses.contains(&k))
                            });
                            if !ours {
                                continue;
                            }
                        }
                    }
                    break;
                }
                while let Ok(m) = rx.try_recv() {
                    self.handle(m, &mut terminating);
                }
                while let Ok(u) = self.probes.rx.try_recv() {
                    self.on_probe(u);
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Prepares the pod's ResourceClaims; Err: when to try again (the
    /// failure reported once per new reason, as FailedPrepareDynamicResources).
    async fn prepare_claims(&mut self, pod: &Pod, now: UnixNanos) -> Result<(), UnixNanos> {
        if let Some((at, _)) = self.claims_retry
            && at > now
        {
            return Err(at);
        }
        match self.ctx.dra.prepare(pod).await {
            Ok(()) => {
                if self.claims_error.take().is_some() {
                    tracing::info!("the pod's resource claims are prepared");
                }
                self.claims_prepared = true;
                self.claims_retry = None;
                Ok(())
            }
            Err(e) => {
                if self.claims_error.as_deref() != Some(e.as_str()) {
                    tracing::warn!(error = %e, "cannot prepare the pod's resource claims");
                    self.event(EventType::Warning, "FailedPrepareDynamicResources", &format!("Failed to prepare dynamic resources: {e}"));
                }
                self.claims_error = Some(e);
                // The pod back-off: from its initial delay, doubling to its maximum.
                let b = self.ctx.node.backoff;
                let delay = self.claims_retry.map_or(b.initial, |(_, d)| d.saturating_mul(2).min(b.max));
                let at = now.after(delay);
                self.claims_retry = Some((at, delay));
                Err(at)
            }
        }
    }

    /// A probe spoke: events for failed attempts; a changed result is
    /// acted on by the next round.
    fn on_probe(&mut self, u: ProbeUpdate) {
        match &u.event {
            ProbeEvent::Failed(why) => {
                self.event(EventType::Warning, "Unhealthy", &format!("{} probe failed: {why}", u.kind.as_str()));
            }
            ProbeEvent::Warning(w) => {
                self.event(EventType::Warning, "ProbeWarning", &format!("{} probe warning: {w}", u.kind.as_str()));
            }
            ProbeEvent::Result(ok) => {
                tracing::debug!(container = %u.container_id, probe = u.kind.as_str(), ok, "probe result changed");
            }
        }
        self.probes.record(&u);
    }

    fn handle(&mut self, msg: WorkerMsg, terminating: &mut bool) {
        match msg {
            WorkerMsg::Update(pod) => self.pod = Some(pod),
            WorkerMsg::ResizePending(p) => self.resize_pending = p,
            WorkerMsg::Changed => {}
            WorkerMsg::Terminate { grace } => {
                *terminating = true;
                if grace.is_some() {
                    self.grace_override = grace;
                }
            }
            WorkerMsg::End { failure, grace } => {
                if self.failure.is_none() {
                    self.event(EventType::Warning, &failure.reason, &failure.message);
                    self.grace_override = Some(grace);
                    self.failure = Some(failure);
                }
            }
        }
    }

    /// One round: observe, plan, act. Returns whether anything was done and
    /// when to look again.
    async fn sync(&mut self) -> (bool, Option<UnixNanos>) {
        let Some(pod) = self.pod.clone() else { return (false, None) };
        let obs = match self.inspector.inspect(self.ctx.runtime.as_ref(), &self.identity).await {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the pod's runtime state");
                return (false, Some(UnixNanos::now().after(Duration::from_secs(1))));
            }
        };
        let now = UnixNanos::now();
        if self.retry_at.is_some_and(|r| r <= now) {
            self.retry_at = None;
        }
        self.held.retain(|_, until| *until > now);
        if !self.ctx.dry_run {
            for e in self.probes.reconcile(&pod, &obs, &self.ctx.runtime, &self.ctx.probe_counts) {
                self.event(EventType::Warning, "Unhealthy", &format!("probe cannot run: {e}"));
            }
        }
        let view = self.probes.view(&pod, &obs);
        let resize_restart = if self.failure.is_none() { self.resize_in_place(&pod, &obs).await } else { BTreeSet::new() };
        let network_ready = self.ctx.health.borrow().network_ready;
        let deadline = self.check_deadline(&pod, now);
        let mut p = match &self.failure {
            Some(_) => plan::end(&obs),
            None => plan::plan(&PlanInput {
                pod: &pod,
                observed: &obs,
                backoff: &self.crash_backoff,
                now,
                network_ready,
                unhealthy: &view.unhealthy,
                resize_restart: &resize_restart,
            }),
        };
        if let Some(at) = deadline {
            soonest(at, &mut p.wake_at);
        }
        self.forget_old_backoffs(&pod);
        self.report_backoff(&p.waiting);
        let mut waiting = p.waiting.clone();
        for (name, w) in &self.errors {
            waiting.insert(name.clone(), w.clone());
        }
        self.publish(&pod, &obs, &waiting, &view);
        let mut wake = p.wake_at;
        // A pod that has ended (Succeeded or Failed, nothing running) lets
        // go of its volumes, as kubelet's volume manager does for terminated
        // pods: a claim's volume is free for a pod elsewhere (CSI volumes are
        // unpublished, and leave volumesInUse) long before the pod is deleted.
        // Only once its sandbox is down too (a VM runtime shares volumes at
        // the sandbox); failures are retried with kubelet's back-off (to 2 min).
        let ended = self.last_status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed");
        if ended && !self.volumes_released && !self.ctx.dry_run && !plan::anything_running(&obs) {
            match self.release_retry {
                Some((at, _)) if at > now => soonest(at, &mut wake),
                _ => match self.release_volumes().await {
                    Ok(()) => {
                        self.volumes_released = true;
                        self.release_retry = None;
                    }
                    Err(e) => {
                        let delay = self.release_retry.map_or(stop::RECLAIM_FIRST_RETRY, |(_, d)| d.saturating_mul(2).min(stop::RECLAIM_MAX_RETRY));
                        tracing::warn!(error = %e, retry_in = ?delay, "the ended pod's volumes cannot be let go of yet");
                        if self.release_retry.is_none() {
                            self.event(EventType::Warning, "FailedUnMount", &format!("The ended pod's volumes are not released yet: {e}"));
                        }
                        let at = now.after(delay);
                        self.release_retry = Some((at, delay));
                        soonest(at, &mut wake);
                    }
                },
            }
        }
        if let Some(r) = self.retry_at {
            soonest(r, &mut wake);
            return (false, wake);
        }
        // Volumes come before the sandbox, and are refreshed on every
        // round once set up (new ConfigMap or Secret data, labels, tokens).
        // A pod found running (nodelet restarted) has its volumes adopted
        // the same way: what is mounted stays, and is refreshed from then on.
        let mut actions = p.actions;
        let starts = |a: &Action| matches!(a, Action::CreateSandbox { .. } | Action::StartContainer { .. });
        if self.volumes_released {
            // Ended for good (even if its dead containers are collected and
            // the plan would start it again): nothing starts, nothing mounts.
            actions.retain(|a| !starts(a));
        }
        if actions.iter().any(starts) || self.volumes.is_some() || obs.running().next().is_some() {
            let ips = pod_ips(Some(&pod), &self.ctx.node, &obs.latest_sandbox().map(|s| s.ips.clone()).unwrap_or_default());
            match self.set_up_volumes(&pod, &ips).await {
                Ok(refresh) => {
                    if let Some(at) = refresh {
                        soonest(at, &mut wake);
                    }
                }
                Err(retry_at) => {
                    actions.retain(|a| !starts(a));
                    soonest(retry_at, &mut wake);
                }
            }
        }
        // DRA: the pod's claims are prepared by their drivers before
        // anything of it starts (kubelet's PrepareDynamicResources), and
        // once in each run of the agent for a pod found running.
        // Not for a pod that has ended (its claims are let go of), nor when
        // everything is prepared already in this run (a container restart
        // then needs neither the apiserver nor the driver).
        let done = ended || self.volumes_released;
        if crate::dra::uses_claims(&pod) && !done && (actions.iter().any(starts) || !self.claims_prepared) && !self.ctx.dra.prepared_for(&pod) {
            if let Err(retry_at) = self.prepare_claims(&pod, now).await {
                actions.retain(|a| !starts(a));
                soonest(retry_at, &mut wake);
            }
        }
        let mut sandbox = obs.latest_sandbox().filter(|s| s.ready).map(|s| SandboxInUse {
            id: s.id.clone(),
            config: sandbox::sandbox_config(&pod, s.attempt, &self.ctx.node).0,
            ips: pod_ips(Some(&pod), &self.ctx.node, &s.ips),
        });
        let mut acted = false;
        for action in actions {
            let container = match &action {
                Action::StartContainer { name, .. } => Some(name.clone()),
                _ => None,
            };
            if let Some(until) = container.as_ref().and_then(|n| self.held.get(n)) {
                soonest(*until, &mut wake);
                continue;
            }
            acted = true;
            if let Err(f) = self.execute(&pod, &obs, &mut sandbox, action).await {
                soonest(f.retry_at, &mut wake);
                match container {
                    // One container failing to start does not hold the others.
                    Some(name) => {
                        self.held.insert(name, f.retry_at);
                    }
                    None => {
                        self.retry_at = Some(f.retry_at);
                        break;
                    }
                }
            }
        }
        (acted, wake)
    }

}
