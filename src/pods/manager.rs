//! The pod manager: merges the sources into the desired set, runs one
//! worker per pod, routes runtime changes to the right worker, and takes
//! orphans (runtime pods no source wants) down once every source has
//! reported, as kubelet's pod cleanup does.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::pleg::RelistEvent;
use super::source::{SourceName, SourceUpdate};
use super::worker::{Worker, WorkerContext, WorkerMsg};
use super::{DesiredPod, identity};
use crate::runtime::labels::PodIdentity;

struct Handle {
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
    runtime_pods: BTreeMap<String, PodIdentity>,
    workers: HashMap<String, Handle>,
    tasks: JoinSet<String>,
    task_uids: HashMap<tokio::task::Id, String>,
    conflicts: HashSet<String>,
}

impl PodManager {
    pub fn new(ctx: Arc<WorkerContext>, expected: BTreeSet<SourceName>, serial: bool) -> Self {
        Self {
            ctx,
            expected,
            serial,
            per_source: BTreeMap::new(),
            runtime_pods: BTreeMap::new(),
            workers: HashMap::new(),
            tasks: JoinSet::new(),
            task_uids: HashMap::new(),
            conflicts: HashSet::new(),
        }
    }

    fn sources_ready(&self) -> bool {
        self.expected.iter().all(|s| self.per_source.contains_key(s))
    }

    /// The union of all sources; a namespace/name taken by an earlier source
    /// is not taken again.
    fn desired(&mut self) -> BTreeMap<String, DesiredPod> {
        let mut by_name: BTreeMap<(String, String), (SourceName, DesiredPod)> = BTreeMap::new();
        for (source, pods) in &self.per_source {
            for pod in pods {
                let id = identity(pod);
                let key = (id.namespace.clone(), id.name.clone());
                if let Some((first, _)) = by_name.get(&key) {
                    let msg = format!("pod {id} from source {} conflicts with the one from source {}; ignored", source.as_str(), first.as_str());
                    if self.conflicts.insert(msg.clone()) {
                        tracing::error!("{msg}");
                    }
                    continue;
                }
                by_name.insert(key, (*source, pod.clone()));
            }
        }
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
        let (tx, rx) = mpsc::unbounded_channel();
        let (idle_tx, idle_rx) = watch::channel(0u64);
        let uid = id.uid.clone();
        let worker = Worker::new(self.ctx.clone(), id, pod.clone());
        let ret = uid.clone();
        let task = self.tasks.spawn(async move {
            worker.run(rx, idle_tx).await;
            ret
        });
        self.task_uids.insert(task.id(), uid.clone());
        self.workers.insert(uid.clone(), Handle { tx, idle: idle_rx, terminating: pod.is_none(), pod });
        self.settle(&uid, 0).await;
    }

    async fn send(&mut self, uid: &str, msg: WorkerMsg) {
        let Some(h) = self.workers.get_mut(uid) else { return };
        let before = *h.idle.borrow();
        if matches!(msg, WorkerMsg::Terminate) {
            h.terminating = true;
        }
        if h.tx.send(msg).is_ok() {
            self.settle(uid, before).await;
        }
    }

    async fn reconcile(&mut self) {
        let desired = self.desired();
        let mut ordered: Vec<&DesiredPod> = desired.values().collect();
        ordered.sort_by_key(|p| identity(p));
        for pod in ordered {
            let id = identity(pod);
            match self.workers.get(&id.uid) {
                None => {
                    tracing::info!(pod = %id, uid = %id.uid, "pod added");
                    self.spawn(id, Some(pod.clone())).await;
                }
                Some(h) if !h.terminating && h.pod.as_ref().is_none_or(|old| **old != **pod) => {
                    if let Some(h) = self.workers.get_mut(&id.uid) {
                        h.pod = Some(pod.clone());
                    }
                    self.send(&id.uid, WorkerMsg::Update(pod.clone())).await;
                }
                _ => {}
            }
        }
        let mut gone: Vec<String> =
            self.workers.iter().filter(|(uid, h)| !h.terminating && !desired.contains_key(*uid)).map(|(uid, _)| uid.clone()).collect();
        gone.sort();
        for uid in gone {
            if let Some(pod) = self.workers.get(&uid).and_then(|h| h.pod.clone()) {
                tracing::info!(pod = %identity(&pod), %uid, "pod removed from its source; terminating");
            }
            self.send(&uid, WorkerMsg::Terminate).await;
        }
        if self.sources_ready() {
            let orphans: Vec<PodIdentity> = self
                .runtime_pods
                .iter()
                .filter(|(uid, _)| !desired.contains_key(*uid) && !self.workers.contains_key(*uid))
                .map(|(_, id)| id.clone())
                .collect();
            for id in orphans {
                tracing::info!(pod = %id, uid = %id.uid, "found a pod no source wants; removing it");
                self.spawn(id, None).await;
            }
        }
    }

    /// Runs until every source and the relist loop have gone away.
    pub async fn run(mut self, mut sources: mpsc::Receiver<SourceUpdate>, mut relist: mpsc::Receiver<RelistEvent>) {
        let mut sources_open = true;
        loop {
            tokio::select! {
                update = sources.recv(), if sources_open => match update {
                    Some(u) => {
                        self.per_source.insert(u.source, u.pods);
                        self.reconcile().await;
                    }
                    None => sources_open = false,
                },
                event = relist.recv() => match event {
                    Some(ev) => {
                        self.runtime_pods = ev.present;
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
                        if let Some(e) = outcome {
                            tracing::error!(%uid, error = %e, "pod worker failed; it will be started again");
                        }
                        self.workers.remove(&uid);
                        self.runtime_pods.remove(&uid);
                    }
                    self.reconcile().await;
                }
            }
        }
    }
}
