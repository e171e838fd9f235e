//! The pod sync role: everything that runs pods on this node. Built in two
//! steps, because the node role (cluster mode) plugs into it: `build` makes
//! the shared handles (statuses, events, pulls, CSI, the workers' context),
//! starts the static pod sources and the node-level managers (eviction,
//! graceful shutdown, image GC); `start` then starts the relist loop,
//! containerd's exit events, log rotation, housekeeping and the pod
//! manager, with admission when the node role gave it the Node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ContainerImage, Taint};
use tokio::sync::{mpsc, oneshot, watch};

use super::AgentError;
use super::runtime::RuntimeRole;
use crate::cluster::{self, events::ApiRecorder};
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::pods::admission::NodeResources;
use crate::pods::eviction::{Eviction, Pressure};
use crate::pods::events::{EventRecorder, LogRecorder};
use crate::pods::manager::PodManager;
use crate::pods::source::{SourceName, SourceUpdate, file::FileSource, http::HttpSource};
use crate::pods::store::StatusStore;
use crate::pods::worker::{Terminated, WorkerContext};
use crate::pods::{NodeContext, pleg};
use crate::runtime::containerd;
use crate::runtime::remote::socket_path;
use crate::tasks::Tasks;
use crate::watchdog::{self, Beat, Watched};

/// The pod sync role, built: the handles other roles share, and what
/// `start` still needs.
pub struct PodSync {
    pub ctx: Arc<WorkerContext>,
    pub statuses: StatusStore,
    pub trails: Arc<crate::explain::Trails>,
    pub pulls: Arc<crate::pulls::Puller>,
    /// Attachable volumes pods want (the node status reports them).
    pub in_use: crate::csi::InUse,
    /// Pod updates from every source; the node role adds the apiserver's.
    pub sources: mpsc::Sender<SourceUpdate>,
    updates: mpsc::Receiver<SourceUpdate>,
    expected: BTreeSet<SourceName>,
    pub pressure: watch::Receiver<Pressure>,
    evictions: mpsc::Receiver<Eviction>,
    reclaim_containers: mpsc::Receiver<oneshot::Sender<u64>>,
    pub shutting_down: watch::Receiver<bool>,
    /// The node's images, as image GC last listed them.
    pub images: watch::Receiver<Vec<ContainerImage>>,
    /// The device plugins' extended resources, for the Node status.
    pub extended: watch::Receiver<crate::devices::Extended>,
    /// Pods that ended, for the deletion handshake (cluster mode, writing).
    pub terminated: Option<mpsc::UnboundedReceiver<Terminated>>,
    /// The Node's labels and taints as the apiserver has them: the node
    /// role takes these senders, admission and PV node affinity read them.
    pub node_labels: Option<watch::Sender<BTreeMap<String, String>>>,
    pub node_taints: Option<watch::Sender<Vec<Taint>>>,
    node_labels_rx: watch::Receiver<BTreeMap<String, String>>,
    node_taints_rx: watch::Receiver<Vec<Taint>>,
    /// Told when the agent's own CRI calls changed the runtime's pods.
    runtime_changes: Arc<tokio::sync::Notify>,
}

impl PodSync {
    /// Builds the shared handles and starts the static pod sources and the
    /// node-level managers. `api` is the cluster client (cluster mode).
    pub fn build(s: &Settings, node: &Arc<NodeContext>, rt: &RuntimeRole, metrics: &Arc<Metrics>, api: Option<&kube::Client>, tasks: &mut Tasks) -> Result<PodSync, AgentError> {
        let runtime = &rt.runtime;
        let statuses = StatusStore::default();
        let writes = api.is_some() && !s.dry_run;
        let events: Arc<dyn EventRecorder> = match api {
            Some(client) if writes => Arc::new(ApiRecorder::start(client.clone(), &s.node_name, s.cluster.as_ref().and_then(|c| c.event_rate))),
            _ => Arc::new(LogRecorder),
        };
        let trails = Arc::new(crate::explain::Trails::default());
        let events: Arc<dyn EventRecorder> = Arc::new(crate::explain::TrailRecorder { trails: trails.clone(), inner: events });
        let (terminated_tx, terminated_rx) = mpsc::unbounded_channel();
        let objects: Option<Arc<dyn crate::volumes::objects::ApiObjects>> = match api {
            Some(c) => Some(crate::volumes::objects::KubeObjects::start(c.clone())),
            None => None,
        };
        let providers = match &s.credential_providers {
            Some((config, bin_dir)) => {
                let ps = crate::credentials::provider::load(config, bin_dir).map_err(|e| AgentError::Fault(e.to_string()))?;
                tracing::info!(config = %config.display(), providers = ps.len(), "image credential provider plugins");
                ps
            }
            None => Vec::new(),
        };
        let mut puller = crate::pulls::Puller::new(runtime.clone(), &s.root_dir, s.pulls.clone(), crate::credentials::provider::Providers::new(providers));
        if s.dry_run {
            puller = puller.read_only();
        } else if let Ok(socket) = socket_path(&s.runtime_endpoint) {
            puller = puller.with_containerd(socket);
        }
        let pulls = Arc::new(puller);
        // CSI node plugins register through <root-dir>/plugins_registry.
        let csi = crate::csi::Drivers::default();
        // With a node status to post (cluster mode), attachable volumes wait
        // until it lists them in volumesInUse.
        let in_use = if writes { crate::csi::InUse::enforced() } else { crate::csi::InUse::default() };
        // DRA drivers register there too; the claims prepared are kept in
        // <root-dir>/dra_manager_state (one the agent cannot trust stops it).
        let dra = crate::dra::Dra::new(Some(s.root_dir.as_path()), api.cloned(), writes.then(|| s.node_name.clone()), s.dry_run).map_err(AgentError::Fault)?;
        if writes {
            // No driver has registered yet: the node offers no DRA devices
            // until they do (they publish their slices again).
            // (A one-off: not a supervised task, which must never end.)
            let d = dra.clone();
            tokio::spawn(async move { d.wipe(None).await });
        }
        if !s.dry_run {
            let publisher = api.filter(|_| writes).map(|c| crate::csi::registry::Publisher { client: c.clone(), node_name: s.node_name.clone() });
            tasks.spawn("plugin registration (CSI, DRA)", crate::csi::registry::watch(s.root_dir.join("plugins_registry"), csi.clone(), Some(dra.clone()), publisher));
        }
        // Device plugins register through <root-dir>/device-plugins; the
        // pod-resources API reads what they were given.
        // A dry run plans against the managers' real state files, read only.
        let devices = if s.dry_run { crate::devices::Devices::read_only(s.root_dir.join("device-plugins")) } else { crate::devices::Devices::new(Some(s.root_dir.join("device-plugins"))) };
        // The CPU manager (static policy): a state it cannot trust stops the
        // agent, as kubelet refuses to start on it.
        // The CPU topology from sysfs, read once, when a manager needs it.
        let topo = if s.cpu_manager.is_some() || s.topology_manager.policy != crate::topology::Policy::None {
            Some(crate::cpus::Topology::read(std::path::Path::new("/sys")).map_err(AgentError::Fault)?)
        } else {
            None
        };
        let cpus = match (&s.cpu_manager, &topo) {
            (Some(cfg), Some(topo)) => crate::cpus::CpuManager::start(cfg.clone(), topo.clone(), Some(s.root_dir.as_path()), s.dry_run).map_err(AgentError::Fault)?,
            _ => crate::cpus::CpuManager::default(),
        };
        // The memory manager (static policy): the NUMA nodes' memory from
        // sysfs; reservedMemory must add up to the memory reservations.
        let memory = match &s.memory_manager {
            Some(cfg) => {
                let totals = crate::memory::read_totals(std::path::Path::new("/sys")).map_err(AgentError::Fault)?;
                let capacity = crate::allocatable::Capacity { memory_bytes: super::machine::node_memory_bytes(), ..Default::default() };
                let hard = crate::allocatable::hard_eviction(&s.eviction.thresholds, &capacity).memory_bytes;
                let expected = s.allocatable.kube_reserved.memory_bytes.saturating_add(s.allocatable.system_reserved.memory_bytes).saturating_add(hard).max(0).unsigned_abs();
                let sum: u64 = cfg.reserved.values().sum();
                if sum != expected {
                    return Err(AgentError::Fault(format!(
                        "reservedMemory: the memory reserved on the NUMA nodes adds up to {sum} bytes, kubeReserved + systemReserved + the hard eviction threshold memory.available come to {expected}: they must be equal (memoryManagerPolicy: Static)"
                    )));
                }
                crate::memory::MemoryManager::start(cfg, &totals, &crate::memory::read_hugepages(std::path::Path::new("/sys")), Some(s.root_dir.as_path()), s.dry_run).map_err(AgentError::Fault)?
            }
            None => crate::memory::MemoryManager::default(),
        };
        // The topology manager: the machine's NUMA nodes from sysfs.
        let topology = match topo.as_ref().filter(|_| s.topology_manager.policy != crate::topology::Policy::None) {
            None => crate::topology::Manager::default(),
            Some(topo) => {
                let machine = crate::topology::mask_of(topo.cpus.values().map(|i| i.numa));
                tracing::info!(policy = s.topology_manager.policy.name(), scope = ?s.topology_manager.scope, numa_nodes = ?crate::topology::nodes_of(machine), "topology manager");
                crate::topology::Manager { config: s.topology_manager, machine }
            }
        };
        if !s.dry_run {
            tasks.spawn("device plugin registration", devices.clone().serve(s.root_dir.join("device-plugins")));
            tasks.spawn(
                "pod-resources API",
                crate::devices::podresources::serve(devices.clone(), cpus.clone(), memory.clone(), dra.clone(), s.root_dir.join("pod-resources").join(crate::devices::podresources::SOCKET)),
            );
            if cpus.is_static() {
                tasks.spawn("CPU manager reconcile", cpus.clone().reconcile(runtime.clone()));
            }
        }
        let (node_labels, node_labels_rx) = watch::channel(BTreeMap::new());
        let (node_taints, node_taints_rx) = watch::channel(Vec::new());
        let extended = devices.subscribe();
        let ctx = Arc::new(WorkerContext {
            devices,
            cpus,
            memory: memory.clone(),
            dra,
            topology,
            csi,
            in_use: in_use.clone(),
            mounted: Default::default(),
            node_labels: node_labels_rx.clone(),
            allocated: crate::pods::allocation::Checkpoint::open((!s.dry_run).then_some(s.root_dir.as_path()), "allocated_pods_state"),
            actuated: crate::pods::allocation::Checkpoint::open((!s.dry_run).then_some(s.root_dir.as_path()), "actuated_pods_state"),
            pulls: pulls.clone(),
            runtime: runtime.clone(),
            node: node.clone(),
            events,
            statuses: statuses.clone(),
            health: rt.health.clone(),
            resync: s.sync_frequency,
            dry_run: s.dry_run,
            terminated: writes.then_some(terminated_tx),
            objects,
            probe_counts: Default::default(),
            metrics: metrics.clone(),
        });

        let (sources, updates) = mpsc::channel(16);
        let mut expected = BTreeSet::new();
        if let Some(dir) = &s.static_pod_path {
            expected.insert(SourceName::File);
            tracing::info!(path = %dir.display(), "watching static pod manifests");
            let source = FileSource::new(dir.clone(), s.node_name.clone(), s.file_check_frequency);
            let source = if s.dry_run { source.missing_is_error() } else { source };
            tasks.spawn("file source", source.run(sources.clone()));
        }
        if let Some(url) = &s.static_pod_url {
            expected.insert(SourceName::Http);
            tracing::info!(%url, "polling the static pod manifest URL");
            let src = HttpSource::new(url.clone(), s.static_pod_url_headers.clone(), s.node_name.clone(), s.http_check_frequency);
            tasks.spawn("URL source", src.run(sources.clone()));
        }
        let (pressure_tx, pressure) = watch::channel(Pressure::default());
        let (evictions_tx, evictions) = mpsc::channel(4);
        let (reclaim_tx, reclaim_rx) = mpsc::channel(1);
        let (reclaim_containers_tx, reclaim_containers) = mpsc::channel(1);
        let (shutting_down_tx, shutting_down) = watch::channel(false);
        let (images_tx, images) = watch::channel(Vec::new());
        if !s.dry_run {
            let m = crate::pods::eviction::Manager {
                config: s.eviction.clone(),
                sources: crate::pods::eviction::Sources { cgroup_root: s.cgroup_root.clone().into(), nodefs: s.root_dir.clone() },
                runtime: runtime.clone(),
                statuses: statuses.clone(),
                pressure: pressure_tx,
                evictions: evictions_tx.clone(),
                reclaim: Some(reclaim_tx),
                reclaim_containers: Some(reclaim_containers_tx),
            };
            tasks.spawn("eviction manager", m.run());
            if let Some(periods) = s.shutdown {
                let m = crate::pods::shutdown::Manager { periods, statuses: statuses.clone(), pods: evictions_tx, shutting_down: shutting_down_tx };
                tasks.spawn("graceful node shutdown", m.run());
            }
            tasks.spawn("image GC", crate::images::ImageGc::new(runtime.clone(), s.image_gc, images_tx).with_reclaim(reclaim_rx).with_pinned(s.pod_infra_container_image.clone()).run());
        }
        Ok(PodSync {
            runtime_changes: rt.changes.clone(),
            ctx,
            statuses,
            trails,
            pulls,
            in_use,
            sources,
            updates,
            expected,
            pressure,
            evictions,
            reclaim_containers,
            shutting_down,
            images,
            extended,
            terminated: writes.then_some(terminated_rx),
            node_labels: Some(node_labels),
            node_taints: Some(node_taints),
            node_labels_rx,
            node_taints_rx,
        })
    }

    /// The apiserver is a source too (cluster mode).
    pub fn expect_api(&mut self) {
        self.expected.insert(SourceName::Api);
    }

    /// Starts the pod lifecycle: the relist loop and containerd's exit
    /// events, log rotation, housekeeping and the pod manager (admitting
    /// apiserver pods against `admission` when given). Returns the relist
    /// times (for /healthz and the watchdog) and, for a one-shot dry run,
    /// the plan report to wait for.
    pub fn start(self, s: &Settings, metrics: &Arc<Metrics>, admission: Option<NodeResources>, tasks: &mut Tasks, watched: &mut Vec<Watched>) -> Result<Started, AgentError> {
        let PodSync { ctx, statuses, sources, updates, expected, pressure, evictions, reclaim_containers, shutting_down, node_labels_rx, node_taints_rx, runtime_changes, .. } = self;
        // The manager's sources close when every source has gone.
        drop(sources);
        let runtime = ctx.runtime.clone();
        let (relist_tx, relist_rx) = mpsc::channel(16);
        let (relisted_tx, relisted) = watch::channel::<Option<Instant>>(None);
        let (exit_ids_tx, exit_ids_rx) = mpsc::channel(64);
        let (live_tx, live) = watch::channel(false);
        let changed = runtime_changes.clone();
        tasks.spawn("relist", pleg::run(runtime.clone(), pleg::RELIST_PERIOD, exit_ids_rx, changed.clone(), live, relist_tx, relisted_tx, metrics.clone()));
        if !s.dry_run && let Ok(socket) = socket_path(&s.runtime_endpoint) {
            let (event_tx, mut event_rx) = mpsc::channel(64);
            tasks.spawn("containerd events", containerd::watch_events(socket, event_tx, live_tx));
            tasks.spawn("runtime events", async move {
                while let Some(ev) = event_rx.recv().await {
                    match ev {
                        containerd::RuntimeEvent::Exit(exit) => {
                            tracing::debug!(container = %exit.container_id, status = exit.exit_status, "container exited");
                            if exit_ids_tx.send(exit.container_id).await.is_err() {
                                return;
                            }
                        }
                        containerd::RuntimeEvent::Changed => changed.notify_one(),
                    }
                }
            });
        }

        let (sources_ready_tx, sources_ready_rx) = watch::channel(false);
        if !s.dry_run {
            tasks.spawn("container log rotation", crate::pods::log_rotation::run(runtime.clone(), s.log_rotation));
            tasks.spawn(
                "housekeeping",
                crate::pods::housekeeping::run(ctx.node.clone(), runtime.clone(), statuses.clone(), s.container_gc, Some(reclaim_containers), ctx.csi.clone(), sources_ready_rx),
            );
        }

        // The manager turns at least once a second; quiet for twice the
        // watchdog interval (at least 10 s), it is wedged.
        let sync_beat = Beat::default();
        let sync_allowance = watchdog::interval().map_or(Duration::from_secs(30), |i| (2 * i).max(Duration::from_secs(10)));
        watched.push(Watched { name: "pod sync loop", beat: sync_beat.clone(), allowance: sync_allowance });
        let mut manager = PodManager::new(ctx, expected, s.dry_run)
            .with_heartbeat(sync_beat)
            .with_eviction(evictions, pressure)
            .with_shutdown(shutting_down)
            .with_sources_ready(sources_ready_tx)
            .with_sysctls(crate::sysctls::Allowlist::new(&s.allowed_unsafe_sysctls).map_err(|e| AgentError::Fault(format!("allowedUnsafeSysctls: {e}")))?);
        if let Some(node) = admission {
            manager = manager.with_admission(node, node_labels_rx, node_taints_rx);
        }
        let mut planned = None;
        if s.dry_run && !s.dry_run_watch {
            let (tx, rx) = oneshot::channel();
            manager = manager.with_plan_report(tx);
            planned = Some(rx);
        }
        tasks.spawn("pod manager", manager.run(updates, relist_rx));
        Ok(Started { relisted, planned })
    }
}

/// What the started pod sync gives back.
pub struct Started {
    /// When the runtime was last relisted.
    pub relisted: watch::Receiver<Option<Instant>>,
    /// A one-shot dry run: the problems found once every pod was planned.
    pub planned: Option<oneshot::Receiver<Vec<String>>>,
}

/// The node role's admission facts from the Node it registers.
pub fn admission(name: &str, facts: &cluster::node::NodeFacts, node: &NodeContext, max_pods: u32) -> NodeResources {
    NodeResources {
        name: name.to_string(),
        labels: facts.labels.clone(),
        taints: Vec::new(),
        cpu_millis: node.allocatable.cpu_millis,
        memory_bytes: node.allocatable.memory_bytes,
        ephemeral_storage_bytes: node.allocatable.ephemeral_storage_bytes,
        hugepages: node.allocatable.hugepages.clone(),
        // Read live at each admission (the device plugins' healthy devices).
        extended: BTreeMap::new(),
        max_pods,
    }
}
