//! The pod manager: merges the sources into the desired set, runs one
//! worker per pod, routes runtime changes to the right worker, and takes
//! orphans (runtime pods no source wants) down once every source has
//! reported, as kubelet's pod cleanup does.

mod admit;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::pleg::RelistEvent;
use super::source::{SourceName, SourceUpdate};
use super::admission::{self, NodeResources, Rejection};
use super::events::EventType;
use super::store::PodRecord;
use super::allocation;
use super::worker::{ResizePending, Terminated, Worker, WorkerContext, WorkerMsg};
use super::{DesiredPod, from_api, identity, is_critical, is_terminal};
use k8s_openapi::api::core::v1::{Pod, PodStatus};
use crate::runtime::labels::PodIdentity;

struct Handle {
    id: PodIdentity,
    tx: mpsc::UnboundedSender<WorkerMsg>,
    idle: watch::Receiver<u64>,
    /// The pod the worker was last given (`None` for an orphan).
    pod: Option<DesiredPod>,
    terminating: bool,
}

pub struct PodManager {
    ctx: Arc<WorkerContext>,
    expected: BTreeSet<SourceName>,
    /// Dry runs act on one pod at a time, in name order, so their output is
    /// deterministic.
    serial: bool,
    per_source: BTreeMap<SourceName, Vec<DesiredPod>>,
    /// Every source that has reported, with its current errors.
    reported: BTreeMap<SourceName, Vec<String>>,
    plan_report: Option<oneshot::Sender<Vec<String>>>,
    /// Beaten on every turn of the loop (at least once a second).
    heartbeat: Option<crate::watchdog::Beat>,
    /// Pods the eviction manager ends, and the node's pressure (admission
    /// turns pods away under it).
    evictions: Option<mpsc::Receiver<super::eviction::Eviction>>,
    pressure: Option<watch::Receiver<super::eviction::Pressure>>,
    /// A graceful node shutdown is under way: no pod is admitted.
    shutting_down: Option<watch::Receiver<bool>>,
    /// `NODELET_TEST_WEDGE_POD_SYNC`: when this file exists the loop stops
    /// (the watchdog's test; only with the `test-hooks` feature).
    wedge_file: Option<std::path::PathBuf>,
    runtime_pods: BTreeMap<String, PodIdentity>,
    workers: HashMap<String, Handle>,
    tasks: JoinSet<String>,
    task_uids: HashMap<tokio::task::Id, String>,
    /// Conflicts between sources already reported.
    conflicts: HashSet<String>,
    /// Workers that failed are started again no sooner than this.
    restart_after: HashMap<String, Instant>,
    /// What this node offers, for admitting apiserver pods (cluster mode),
    /// and the Node's labels as the apiserver has them.
    admission: Option<(NodeResources, watch::Receiver<BTreeMap<String, String>>, watch::Receiver<Vec<k8s_openapi::api::core::v1::Taint>>)>,
    /// Apiserver pods admission turned away, with the reason.
    rejected: HashMap<String, Rejection>,
    /// Apiserver pods being deleted that have been stopped and reported;
    /// they are not started again while their object lingers.
    finished: HashSet<String>,
    /// Whether the runtime has been listed once: until then nothing is
    /// known about what already runs, so no deletion is reported, no
    /// finished pod is judged and nothing is admitted.
    relisted: bool,
    /// Set once every source has reported and the runtime has been listed
    /// (kubelet's sourcesReady): housekeeping calls nothing an orphan before.
    sources_ready_tx: Option<watch::Sender<bool>>,
    /// The sysctls pods may set (kubelet's sysctl admission, for every pod).
    sysctls: crate::sysctls::Allowlist,
    /// Whether the kernel enforces AppArmor (kubelet's AppArmor admission).
    apparmor_enabled: bool,
    /// Resizes that wait, by pod UID (retried on every turn).
    resize_pending: HashMap<String, ResizePending>,
}

async fn next_eviction(rx: &mut Option<mpsc::Receiver<super::eviction::Eviction>>) -> Option<super::eviction::Eviction> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// How long a failed worker's pod waits before a new worker takes it.
const WORKER_RESTART_DELAY: Duration = Duration::from_secs(5);

impl PodManager {
    pub fn new(ctx: Arc<WorkerContext>, expected: BTreeSet<SourceName>, serial: bool) -> Self {
        Self {
            ctx,
            expected,
            serial,
            per_source: BTreeMap::new(),
            reported: BTreeMap::new(),
            plan_report: None,
            heartbeat: None,
            evictions: None,
            pressure: None,
            shutting_down: None,
            wedge_file: wedge_file(),
            runtime_pods: BTreeMap::new(),
            workers: HashMap::new(),
            tasks: JoinSet::new(),
            task_uids: HashMap::new(),
            conflicts: HashSet::new(),
            restart_after: HashMap::new(),
            admission: None,
            rejected: HashMap::new(),
            finished: HashSet::new(),
            relisted: false,
            sources_ready_tx: None,
            sysctls: Default::default(),
            apparmor_enabled: super::apparmor::host_enabled(),
            resize_pending: HashMap::new(),
        }
    }

    /// The sysctls pods may set: the safe ones and the operator's.
    pub fn with_sysctls(mut self, allowlist: crate::sysctls::Allowlist) -> Self {
        self.sysctls = allowlist;
        self
    }

    /// Tells `tx` once every source has reported and the runtime has been
    /// listed.
    pub fn with_sources_ready(mut self, tx: watch::Sender<bool>) -> Self {
        self.sources_ready_tx = Some(tx);
        self
    }

    /// Admits apiserver pods against `node`, with `labels` and `taints`
    /// following the Node object, before running them.
    pub fn with_admission(
        mut self,
        node: NodeResources,
        labels: watch::Receiver<BTreeMap<String, String>>,
        taints: watch::Receiver<Vec<k8s_openapi::api::core::v1::Taint>>,
    ) -> Self {
        self.admission = Some((node, labels, taints));
        self
    }

    /// A one-shot dry run: once every source has reported and the runtime
    /// has been listed, every pod has been planned (a serial manager waits
    /// for each worker's first sync); the sources' errors and conflicts go
    /// back to the caller.
    pub fn with_plan_report(mut self, tx: oneshot::Sender<Vec<String>>) -> Self {
        self.plan_report = Some(tx);
        self
    }

    /// Takes pods to end from the eviction manager, and admits against the
    /// node's pressure.
    pub fn with_eviction(mut self, evictions: mpsc::Receiver<super::eviction::Eviction>, pressure: watch::Receiver<super::eviction::Pressure>) -> Self {
        self.evictions = Some(evictions);
        self.pressure = Some(pressure);
        self
    }

    /// Admits nothing while a graceful node shutdown is under way.
    pub fn with_shutdown(mut self, shutting_down: watch::Receiver<bool>) -> Self {
        self.shutting_down = Some(shutting_down);
        self
    }

    /// Beats `beat` on every turn of the loop, for the watchdog.
    pub fn with_heartbeat(mut self, beat: crate::watchdog::Beat) -> Self {
        self.heartbeat = Some(beat);
        self
    }

    fn report_plan(&mut self) {
        if !self.relisted || !self.expected.iter().all(|s| self.reported.contains_key(s)) {
            return;
        }
        let Some(tx) = self.plan_report.take() else { return };
        let mut problems: Vec<String> = self.reported.values().flatten().cloned().collect();
        let mut conflicts: Vec<String> = self.conflicts.iter().cloned().collect();
        conflicts.sort();
        problems.extend(conflicts);
        let _ = tx.send(problems);
    }

    fn sources_ready(&self) -> bool {
        self.expected.iter().all(|s| self.per_source.contains_key(s))
    }

    /// The union of all sources; a namespace/name taken by an earlier source
    /// is not taken again.
    fn desired(&mut self) -> BTreeMap<String, DesiredPod> {
        let mut by_name: BTreeMap<(String, String), (SourceName, DesiredPod)> = BTreeMap::new();
        let mut conflicts = HashSet::new();
        for (source, pods) in &self.per_source {
            for pod in pods {
                let id = identity(pod);
                let key = (id.namespace.clone(), id.name.clone());
                if let Some((first, _)) = by_name.get(&key) {
                    let msg = format!("pod {id} from source {} conflicts with the one from source {}; ignored", source.as_str(), first.as_str());
                    if !self.conflicts.contains(&msg) {
                        tracing::error!("{msg}");
                    }
                    conflicts.insert(msg);
                    continue;
                }
                by_name.insert(key, (*source, pod.clone()));
            }
        }
        self.conflicts = conflicts;
        by_name.into_values().map(|(_, p)| (identity(&p).uid, p)).collect()
    }

    async fn settle(&self, uid: &str, before: u64) {
        if !self.serial {
            return;
        }
        let Some(h) = self.workers.get(uid) else { return };
        let mut idle = h.idle.clone();
        let _ = tokio::time::timeout(Duration::from_secs(60), idle.wait_for(|n| *n > before)).await;
    }

    async fn spawn(&mut self, id: PodIdentity, pod: Option<DesiredPod>) {
        self.spawn_with(id, pod, None).await
    }

    /// Starts a worker; `first` is handled before it does anything else.
    async fn spawn_with(&mut self, id: PodIdentity, pod: Option<DesiredPod>, first: Option<WorkerMsg>) {
        // The UID names the pod's directories: a worker is only ever given
        // one that is a plain path component (sources refuse others; a
        // runtime pod labelled otherwise was not made by a kubelet).
        if let Err(e) = crate::files::component(&id.uid, "metadata.uid") {
            tracing::error!(pod = %id, error = %e, "refusing the pod: its UID cannot name a directory");
            return;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let terminating = pod.is_none() || matches!(first, Some(WorkerMsg::Terminate { .. }));
        if let Some(m) = first {
            let _ = tx.send(m);
        }
        let (idle_tx, idle_rx) = watch::channel(0u64);
        let uid = id.uid.clone();
        let id_copy = id.clone();
        let worker = Worker::new(self.ctx.clone(), id, pod.clone());
        let ret = uid.clone();
        let task = self.tasks.spawn(async move {
            worker.run(rx, idle_tx).await;
            ret
        });
        self.task_uids.insert(task.id(), uid.clone());
        self.workers.insert(uid.clone(), Handle { id: id_copy, tx, idle: idle_rx, terminating, pod });
        self.settle(&uid, 0).await;
    }

    async fn send(&mut self, uid: &str, msg: WorkerMsg) {
        let Some(h) = self.workers.get_mut(uid) else { return };
        let before = *h.idle.borrow();
        if matches!(msg, WorkerMsg::Terminate { .. }) {
            h.terminating = true;
        }
        if h.tx.send(msg).is_ok() {
            self.settle(uid, before).await;
        }
    }

    async fn reconcile(&mut self) {
        let desired = self.desired();
        let now = Instant::now();
        self.restart_after.retain(|_, t| *t > now);
        self.finished.retain(|uid| desired.contains_key(uid));
        let gone_rejected: Vec<String> = self.rejected.keys().filter(|uid| !desired.contains_key(*uid)).cloned().collect();
        for uid in gone_rejected {
            self.rejected.remove(&uid);
            self.ctx.statuses.remove(&uid);
        }

        let mut gone: Vec<String> =
            self.workers.iter().filter(|(uid, h)| !h.terminating && !desired.contains_key(*uid)).map(|(uid, _)| uid.clone()).collect();
        gone.sort();
        for uid in gone {
            if let Some(h) = self.workers.get(&uid) {
                tracing::info!(pod = %h.id, %uid, "pod removed from its source; terminating");
            }
            self.send(&uid, WorkerMsg::Terminate { grace: None }).await;
        }

        // Pods that already run here first, then by creation time, as
        // kubelet admits them, so a restart never turns away a running pod
        // in favour of a newer one.
        let mut ordered: Vec<&DesiredPod> = desired.values().collect();
        ordered.sort_by_cached_key(|p| {
            let id = identity(p);
            (!self.runtime_pods.contains_key(&id.uid), p.metadata.creation_timestamp.clone().map(|t| t.0), id)
        });
        for pod in ordered {
            let id = identity(pod);
            if pod.metadata.deletion_timestamp.is_some() {
                self.delete(pod, &id).await;
                continue;
            }
            if self.rejected.contains_key(&id.uid) || self.finished.contains(&id.uid) {
                continue;
            }
            match self.workers.get(&id.uid) {
                None => {
                    if self.restart_after.contains_key(&id.uid) {
                        continue;
                    }
                    if from_api(pod) && self.admission.is_some() && !self.relisted {
                        continue;
                    }
                    // A pod the apiserver already has as Succeeded or Failed
                    // never runs again (after a reboot, or once its
                    // containers were collected): a Job must not run twice.
                    if from_api(pod)
                        && pod.status.as_ref().is_some_and(is_terminal)
                        && !self.runtime_pods.contains_key(&id.uid)
                    {
                        if self.relisted {
                            self.finished.insert(id.uid.clone());
                        }
                        continue;
                    }
                    // An edited static pod is a new UID under the same name:
                    // like kubelet, start it only once the old one is gone,
                    // so the two never hold the same ports or files.
                    let previous = self.workers.values().any(|h| h.id.namespace == id.namespace && h.id.name == id.name);
                    if previous {
                        continue;
                    }
                    // kubelet admits a pod at its allocation (after a restart,
                    // the resize it was given, not yet the one it asks for).
                    let at_allocation = Arc::new(self.effective(&id.uid, pod));
                    if let Err(r) = self.admit(&at_allocation).await {
                        tracing::warn!(pod = %id, reason = %r.reason, "{}", r.message);
                        if self.ctx.dry_run {
                            // The plan says why a pod would not run here.
                            crate::runtime::dry_run::print_line(&format!("ADMIT rejected pod={id} reason={} message={:?}", r.reason, r.message));
                        }
                        self.ctx.events.record(&id, EventType::Warning, &r.reason, &r.message);
                        self.publish_rejection(pod, &r);
                        self.rejected.insert(id.uid.clone(), r);
                        continue;
                    }
                    tracing::info!(pod = %id, uid = %id.uid, "pod added");
                    if self.ctx.allocated.get(&id.uid).is_none() {
                        self.ctx.allocated.set(&id.uid, allocation::of_pod(pod));
                    }
                    let uid = id.uid.clone();
                    self.spawn(id, Some(at_allocation)).await;
                    if let Some(h) = self.workers.get_mut(&uid) {
                        h.pod = Some(pod.clone());
                    }
                    self.resize_and_update(&uid, pod, false).await;
                }
                Some(h) if !h.terminating && h.pod.as_ref().is_none_or(|old| **old != **pod) => {
                    if let Some(h) = self.workers.get_mut(&id.uid) {
                        h.pod = Some(pod.clone());
                    }
                    self.resize_and_update(&id.uid, pod, true).await;
                }
                // A resize that waits is tried again on every turn (kubelet:
                // when pods leave, and every 3 minutes).
                Some(h) if !h.terminating && self.resize_pending.get(&id.uid).is_some_and(|p| p.reason == "Deferred") => {
                    let pod = pod.clone();
                    self.resize_and_update(&id.uid, &pod, false).await;
                }
                _ => {}
            }
        }
        if self.sources_ready()
            && self.relisted
            && let Some(tx) = &self.sources_ready_tx
        {
            tx.send_if_modified(|ready| !std::mem::replace(ready, true));
        }
        if self.sources_ready() && self.relisted {
            // Resource checkpoints of pods that are gone (deleted while the
            // agent was down) go too, as kubelet's RemoveOrphanedPods.
            let keep = |uid: &str| desired.contains_key(uid) || self.runtime_pods.contains_key(uid) || self.workers.contains_key(uid);
            self.ctx.allocated.retain(&keep);
            self.ctx.actuated.retain(&keep);
            self.ctx.devices.retain(&keep);
            self.ctx.cpus.retain(&keep);
            self.ctx.memory.retain(&keep);
            // DRA claims of pods that are gone are unprepared (in the
            // background: it calls the drivers).
            self.ctx.dra.reconcile(&keep);
        }
        if self.sources_ready() {
            let orphans: Vec<PodIdentity> = self
                .runtime_pods
                .iter()
                .filter(|(uid, _)| (!desired.contains_key(*uid) || self.rejected.contains_key(*uid)) && !self.workers.contains_key(*uid))
                .map(|(_, id)| id.clone())
                .collect();
            for id in orphans {
                tracing::info!(pod = %id, uid = %id.uid, "found a pod no source wants; removing it");
                self.spawn(id, None).await;
            }
        }
    }

    /// An apiserver pod marked for deletion: stop it within the deletion's
    /// grace period; once stopped (or if it never ran here), report it so
    /// the object can be removed.
    async fn delete(&mut self, pod: &DesiredPod, id: &PodIdentity) {
        let grace = pod.metadata.deletion_grace_period_seconds;
        match self.workers.get_mut(&id.uid) {
            Some(h) if !h.terminating => {
                tracing::info!(pod = %id, uid = %id.uid, grace = ?grace, "pod deleted in the API; stopping it");
                h.pod = Some(pod.clone());
                self.send(&id.uid, WorkerMsg::Terminate { grace }).await;
            }
            Some(h) => {
                if h.pod.is_some() {
                    h.pod = Some(pod.clone());
                }
            }
            None if self.finished.contains(&id.uid) => {}
            // Nothing is known yet about what runs: wait for the relist
            // rather than report a pod stopped that may still run.
            None if !self.relisted => {}
            None if self.runtime_pods.contains_key(&id.uid) && !self.restart_after.contains_key(&id.uid) => {
                tracing::info!(pod = %id, uid = %id.uid, grace = ?grace, "pod deleted in the API still has containers here; stopping it");
                self.spawn_with(id.clone(), Some(pod.clone()), Some(WorkerMsg::Terminate { grace })).await;
            }
            None if self.runtime_pods.contains_key(&id.uid) => {}
            // Nothing runs, but the pod left volumes or files on this node
            // (it was deleted while nodelet was down): it is reported gone
            // only once they are reclaimed, so a volume is never attached
            // elsewhere while still mounted here.
            None if !self.rejected.contains_key(&id.uid) && self.ctx.node.pod_dir(&id.uid).is_ok_and(|d| d.exists()) => {
                tracing::info!(pod = %id, uid = %id.uid, "pod deleted in the API left files here; reclaiming them first");
                self.spawn_with(id.clone(), Some(pod.clone()), Some(WorkerMsg::Terminate { grace })).await;
            }
            None => {
                self.finished.insert(id.uid.clone());
                let status = self.rejected.get(&id.uid).map_or_else(
                    || PodStatus { phase: Some("Failed".into()), ..pod.status.clone().unwrap_or_default() },
                    |r| PodStatus { phase: Some("Failed".into()), reason: Some(r.reason.clone()), message: Some(r.message.clone()), ..Default::default() },
                );
                if let Some(tx) = &self.ctx.terminated {
                    let _ = tx.send(Terminated { pod: pod.clone(), status });
                }
            }
        }
    }

    /// Runs until every source and the relist loop have gone away.
    pub async fn run(mut self, mut sources: mpsc::Receiver<SourceUpdate>, mut relist: mpsc::Receiver<RelistEvent>) {
        let mut sources_open = true;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if let Some(b) = &self.heartbeat {
                b.beat();
            }
            self.report_plan();
            tokio::select! {
                _ = tick.tick() => {
                    // A test hook: a wedged pod sync loop, for the watchdog's test.
                    if let Some(f) = &self.wedge_file
                        && f.exists()
                    {
                        tracing::warn!("test hook: the pod sync loop wedges now");
                        std::future::pending::<()>().await;
                    }
                    if !self.restart_after.is_empty() {
                        self.reconcile().await;
                    }
                }
                update = sources.recv(), if sources_open => match update {
                    Some(u) => {
                        self.reported.insert(u.source, u.errors);
                        if let Some(pods) = u.pods {
                            self.per_source.insert(u.source, pods);
                            self.reconcile().await;
                        }
                    }
                    None => sources_open = false,
                },
                Some(e) = next_eviction(&mut self.evictions) => {
                    if self.workers.contains_key(&e.uid) {
                        self.send(&e.uid, WorkerMsg::End { failure: e.failure, grace: e.grace }).await;
                    }
                }
                event = relist.recv() => match event {
                    Some(ev) => {
                        self.runtime_pods = ev.present;
                        self.relisted = true;
                        for id in ev.changed {
                            if self.workers.contains_key(&id.uid) {
                                self.send(&id.uid, WorkerMsg::Changed).await;
                            }
                        }
                        self.reconcile().await;
                    }
                    None => return,
                },
                Some(done) = self.tasks.join_next_with_id() => {
                    let (task, outcome) = match done {
                        Ok((task, _)) => (task, None),
                        Err(e) => (e.id(), Some(e.to_string())),
                    };
                    if let Some(uid) = self.task_uids.remove(&task) {
                        let was_deleted = self.workers.get(&uid).and_then(|h| h.pod.as_ref()).is_some_and(|p| p.metadata.deletion_timestamp.is_some());
                        if was_deleted && outcome.is_none() {
                            self.finished.insert(uid.clone());
                        }
                        if let Some(e) = outcome {
                            tracing::error!(%uid, error = %e, "pod worker failed; a new one takes the pod in {}s", WORKER_RESTART_DELAY.as_secs());
                            self.restart_after.insert(uid.clone(), Instant::now() + WORKER_RESTART_DELAY);
                        }
                        self.workers.remove(&uid);
                        self.runtime_pods.remove(&uid);
                        self.resize_pending.remove(&uid);
                        self.ctx.allocated.remove(&uid);
                        self.ctx.actuated.remove(&uid);
                        self.ctx.devices.release(&uid);
                        self.ctx.cpus.release(&uid);
                        self.ctx.memory.release(&uid);
                    }
                    self.reconcile().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// The test hook's file: read only in a build with `test-hooks`.
#[cfg(feature = "test-hooks")]
fn wedge_file() -> Option<std::path::PathBuf> {
    std::env::var_os("NODELET_TEST_WEDGE_POD_SYNC").map(Into::into)
}

#[cfg(not(feature = "test-hooks"))]
fn wedge_file() -> Option<std::path::PathBuf> {
    None
}
