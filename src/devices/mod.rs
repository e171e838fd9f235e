//! Device plugins, as kubelet's device manager runs them (API v1beta1), so
//! existing plugins (GPUs, FPGAs, SR-IOV NICs, ...) work unchanged:
//!
//! - the Registration service on `<root-dir>/device-plugins/kubelet.sock`,
//!   made anew at every start so that plugins (which watch for it) register
//!   again; a plugin names its extended resource and a socket in the same
//!   directory;
//! - for each plugin, ListAndWatch: the resource's capacity is its devices,
//!   its allocatable the healthy ones; a plugin that goes away has its
//!   devices unhealthy at once and its capacity dropped to 0 after five
//!   minutes without registering again (kubelet's grace period);
//! - admission: a pod asking for more of a resource than the node has
//!   allocatable is refused `OutOf<resource>` (pods/admission.rs); then the
//!   devices of each container are chosen (devices of init containers are
//!   reused by the containers after them, as kubelet does) or the pod is
//!   refused `UnexpectedAdmissionError`, never started half-way;
//! - at container creation the plugin's Allocate (and PreStartContainer when
//!   it asks for it) gives the envs, mounts, device nodes, annotations and
//!   CDI devices passed to CRI;
//! - the assignments and Allocate answers are checkpointed
//!   (`kubelet_internal_checkpoint`, written atomically) so an agent restart
//!   keeps every container's devices; they are released when the pod is gone.
//!
//! The pod-resources API (`podresources`) reads the same state.

pub mod checkpoint;
pub mod podresources;
mod registration;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

pub mod proto {
    pub mod v1beta1 {
        tonic::include_proto!("v1beta1");
    }
    pub mod podresources {
        tonic::include_proto!("v1");
    }
}

use proto::v1beta1;

/// The device plugin API version spoken.
pub const VERSION: &str = "v1beta1";
/// The registration socket, in the device-plugins directory.
pub const SOCKET: &str = "kubelet.sock";
/// How long a plugin that went away keeps its capacity.
const GRACE: Duration = Duration::from_secs(5 * 60);
const HEALTHY: &str = "Healthy";

/// The extended resources of the device plugins, for the Node status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extended {
    pub capacity: BTreeMap<String, i64>,
    pub allocatable: BTreeMap<String, i64>,
}

/// Why a pod cannot have its devices (kubelet's reason and message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub message: String,
}

/// One device as its plugin reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub healthy: bool,
    /// NUMA nodes (TopologyInfo), for the pod-resources API.
    pub numa: Vec<i64>,
}

/// A registered (or formerly registered) plugin.
struct Plugin {
    endpoint: PathBuf,
    options: v1beta1::DevicePluginOptions,
    channel: Option<tonic::transport::Channel>,
    devices: BTreeMap<String, Device>,
    /// Bumped at each registration: a stream of an older one stops.
    generation: u64,
    /// Gone for good (after the grace period): capacity 0.
    removed: bool,
}

/// A container's devices of one resource.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Assigned {
    pub ids: Vec<String>,
    /// The plugin's Allocate answer, once asked.
    pub response: Option<v1beta1::ContainerAllocateResponse>,
}

/// What the device manager knows of a pod admitted here.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PodEntry {
    pub namespace: String,
    pub name: String,
    pub containers: Vec<String>,
    /// (container, resource) → devices.
    pub devices: BTreeMap<(String, String), Assigned>,
}

#[derive(Default)]
struct State {
    plugins: BTreeMap<String, Plugin>,
    pods: BTreeMap<String, PodEntry>,
    generation: u64,
}

/// What a container gets from its devices' plugins, for CRI.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunOptions {
    pub envs: Vec<(String, String)>,
    pub mounts: Vec<v1beta1::Mount>,
    pub devices: Vec<v1beta1::DeviceSpec>,
    pub annotations: BTreeMap<String, String>,
    pub cdi_devices: Vec<String>,
}

impl RunOptions {
    pub fn is_empty(&self) -> bool {
        *self == RunOptions::default()
    }

    /// A plugin's Allocate answer added (its envs in name order).
    fn add(&mut self, response: v1beta1::ContainerAllocateResponse) {
        let mut envs: Vec<(String, String)> = response.envs.into_iter().collect();
        envs.sort();
        self.envs.extend(envs);
        self.mounts.extend(response.mounts);
        self.devices.extend(response.devices);
        self.annotations.extend(response.annotations);
        self.cdi_devices.extend(response.cdi_devices.into_iter().map(|d| d.name));
    }
}

/// The device manager: cheap to clone, one per agent.
#[derive(Clone)]
pub struct Devices {
    state: Arc<Mutex<State>>,
    published: Arc<watch::Sender<Extended>>,
    /// `<root-dir>/device-plugins`; None in a dry run (nothing written).
    dir: Option<PathBuf>,
}

impl Default for Devices {
    fn default() -> Self {
        Devices::new(None)
    }
}

/// kubelet's IsExtendedResourceName: a qualified name outside the
/// `kubernetes.io` namespace (and not a quota's `requests.` name).
pub fn is_extended(name: &str) -> bool {
    let Some((domain, local)) = name.split_once('/') else { return false };
    if name.starts_with("requests.") || domain == "kubernetes.io" || domain.ends_with(".kubernetes.io") {
        return false;
    }
    let label = |s: &str, max: usize| {
        !s.is_empty()
            && s.len() <= max
            && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    label(domain, 253) && !domain.contains('_') && label(local, 63)
}

/// How many of `resource` a container asks for: its limit (extended
/// resources cannot be overcommitted, so requests equal limits), else its
/// request.
fn wanted(c: &k8s_openapi::api::core::v1::Container, resource: &str) -> usize {
    let r = c.resources.as_ref();
    let q = r.and_then(|r| r.limits.as_ref()).and_then(|l| l.get(resource)).or_else(|| r.and_then(|r| r.requests.as_ref()).and_then(|l| l.get(resource)));
    q.and_then(|q| q.0.trim().parse::<u64>().ok()).map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

impl Devices {
    /// A manager writing its checkpoint in `dir` (restored from it now).
    pub fn new(dir: Option<PathBuf>) -> Devices {
        Self::open(dir, false)
    }

    /// A dry run's manager: the checkpoint in `dir` read, never written.
    pub fn read_only(dir: PathBuf) -> Devices {
        Self::open(Some(dir), true)
    }

    fn open(dir: Option<PathBuf>, dry_run: bool) -> Devices {
        let mut state = State::default();
        if let Some(d) = dir.as_ref().filter(|d| !dry_run || crate::files::dry_run_can_read(&d.join(checkpoint::FILE))) {
            match checkpoint::read(&d.join(checkpoint::FILE)) {
                Ok((pods, registered)) => {
                    state.pods = pods;
                    // Resources known before the restart are advertised with
                    // their devices unhealthy until the plugin registers
                    // again, as kubelet does. A dry run reaches no plugin: it
                    // plans as if each had registered again, all healthy.
                    for (resource, ids) in registered {
                        let devices = ids.into_iter().map(|id| (id, Device { healthy: dry_run, numa: Vec::new() })).collect();
                        state.plugins.insert(resource, Plugin { endpoint: PathBuf::new(), options: Default::default(), channel: None, devices, generation: 0, removed: false });
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the device checkpoint cannot be read; starting without device assignments"),
            }
        }
        let (tx, _) = watch::channel(Extended::default());
        let d = Devices { state: Arc::new(Mutex::new(state)), published: Arc::new(tx), dir: dir.filter(|_| !dry_run) };
        d.publish();
        d
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The extended resources as they change.
    pub fn subscribe(&self) -> watch::Receiver<Extended> {
        self.published.subscribe()
    }

    /// Allocatable now, by resource.
    pub fn allocatable(&self) -> BTreeMap<String, i64> {
        self.published.borrow().allocatable.clone()
    }

    fn publish(&self) {
        let e = {
            let s = self.lock();
            let mut e = Extended::default();
            for (name, p) in &s.plugins {
                let (cap, alloc) = if p.removed { (0, 0) } else { (p.devices.len(), p.devices.values().filter(|d| d.healthy).count()) };
                e.capacity.insert(name.clone(), i64::try_from(cap).unwrap_or(i64::MAX));
                e.allocatable.insert(name.clone(), i64::try_from(alloc).unwrap_or(i64::MAX));
            }
            e
        };
        self.published.send_if_modified(|old| {
            let changed = *old != e;
            *old = e;
            changed
        });
    }

    fn save(&self) {
        let Some(dir) = &self.dir else { return };
        let bytes = {
            let s = self.lock();
            let registered: BTreeMap<String, Vec<String>> = s.plugins.iter().filter(|(_, p)| !p.removed).map(|(r, p)| (r.clone(), p.devices.keys().cloned().collect())).collect();
            checkpoint::encode(&s.pods, &registered)
        };
        if let Err(e) = crate::files::write_atomic(&dir.join(checkpoint::FILE), &bytes, 0o600) {
            tracing::error!(error = %e, path = %dir.join(checkpoint::FILE).display(), "cannot write the device checkpoint");
        }
    }

    /// Whether `resource` is one a device plugin serves (or served).
    pub fn is_device_resource(&self, resource: &str) -> bool {
        self.lock().plugins.contains_key(resource)
    }

    /// Chooses the devices of every container of `pod` (already chosen ones
    /// are kept: a restart, or the pod seen again), or refuses the pod with
    /// nothing chosen. Devices of init containers that run to completion are
    /// free again for the containers after them; a restartable (sidecar)
    /// init container keeps its own.
    pub async fn admit(&self, pod: &Pod) -> Result<(), Refusal> {
        self.admit_aligned(pod, None, &|_| None).await
    }

    /// The topology manager's hints for a container (`Some(name)`) or the
    /// whole pod, one per device resource it asks for (kubelet's
    /// GetTopologyHints): None for a resource whose devices have no NUMA
    /// node; the NUMA nodes of the devices it already holds; none when not
    /// enough are free; else every set of NUMA nodes with enough free
    /// healthy devices, the narrowest preferred.
    pub fn hints(&self, pod: &Pod, container: Option<&str>, machine: crate::topology::Mask) -> Vec<crate::topology::Hints> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let Some(spec) = pod.spec.as_ref() else { return Vec::new() };
        let s = self.lock();
        let inits = spec.init_containers.as_deref().unwrap_or(&[]);
        let in_scope: Vec<&k8s_openapi::api::core::v1::Container> = inits.iter().chain(&spec.containers).filter(|c| container.is_none_or(|n| c.name == n)).collect();
        let entry = s.pods.get(&uid);
        let mut out = Vec::new();
        for (resource, plugin) in &s.plugins {
            let per: Vec<(bool, usize)> = in_scope.iter().map(|c| (inits.iter().any(|i| i.name == c.name && i.restart_policy.as_deref() != Some("Always")), wanted(c, resource))).collect();
            // The pod's request: its app and sidecar containers' together,
            // or its largest init container's.
            let n = match container {
                Some(_) => per.iter().map(|(_, n)| *n).sum(),
                None => per.iter().filter(|(init, _)| !*init).map(|(_, n)| *n).sum::<usize>().max(per.iter().filter(|(init, _)| *init).map(|(_, n)| *n).max().unwrap_or(0)),
            };
            if n == 0 {
                continue;
            }
            let numa = |d: &Device| crate::topology::mask_of(d.numa.iter().filter_map(|n| u32::try_from(*n).ok()));
            if !plugin.devices.values().any(|d| !d.numa.is_empty()) {
                out.push(None);
                continue;
            }
            let held: Vec<String> = entry
                .into_iter()
                .flat_map(|e| e.devices.iter())
                .filter(|((c, r), _)| r == resource && container.is_none_or(|n| c == n))
                .flat_map(|(_, a)| a.ids.iter().cloned())
                .collect();
            if !held.is_empty() {
                let masks: Vec<crate::topology::Mask> = held.iter().filter_map(|id| plugin.devices.get(id)).map(numa).collect();
                out.push(Some(crate::topology::generate(machine, n, &masks, &masks)));
                continue;
            }
            let taken: BTreeSet<&String> =
                s.pods.iter().filter(|(u, _)| **u != uid).flat_map(|(_, e)| e.devices.iter().filter(|((_, r), _)| r == resource).flat_map(|(_, a)| a.ids.iter())).collect();
            let available: Vec<crate::topology::Mask> = plugin.devices.iter().filter(|(id, d)| d.healthy && !taken.contains(id)).map(|(_, d)| numa(d)).collect();
            if available.len() < n {
                out.push(Some(Vec::new()));
                continue;
            }
            let every: Vec<crate::topology::Mask> = plugin.devices.values().map(numa).collect();
            out.push(Some(crate::topology::generate(machine, n, &available, &every)));
        }
        out
    }

    /// [`Devices::admit`] with the topology manager's NUMA nodes per
    /// container (devices there first), up to one container (None: all).
    /// A plugin that offers GetPreferredAllocation is asked which devices it
    /// prefers (kubelet's devicesToAllocate); admissions are made one at a
    /// time (the pod manager's loop), so nothing else chooses devices while
    /// the plugin answers.
    pub async fn admit_aligned(&self, pod: &Pod, upto: Option<&str>, numa: &(dyn Fn(&str) -> Option<crate::topology::Mask> + Sync)) -> Result<(), Refusal> {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let inits = spec.init_containers.as_deref().unwrap_or(&[]);
        let (mut entry, resources, new_pod) = {
            let s = self.lock();
            let mut entry = s.pods.get(&uid).cloned().unwrap_or_default();
            entry.namespace = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
            entry.name = pod.metadata.name.clone().unwrap_or_default();
            entry.containers = inits.iter().chain(&spec.containers).map(|c| c.name.clone()).collect();
            let resources: BTreeSet<String> = inits
                .iter()
                .chain(&spec.containers)
                .flat_map(|c| c.resources.iter().flat_map(|r| r.limits.iter().flatten().chain(r.requests.iter().flatten())).map(|(k, _)| k.clone()))
                .filter(|r| s.plugins.contains_key(r))
                .collect();
            (entry, resources, !s.pods.contains_key(&uid))
        };
        let refuse = |why: String| Refusal { reason: "UnexpectedAdmissionError".into(), message: format!("Allocate failed due to {why}, which is unexpected") };
        let position = |name: &str| inits.iter().chain(&spec.containers).position(|x| x.name == name);
        let mut changed = false;
        for resource in &resources {
            let mut reusable: Vec<String> = Vec::new();
            let containers = inits.iter().map(|c| (c, c.restart_policy.as_deref() != Some("Always"))).chain(spec.containers.iter().map(|c| (c, false)));
            for (c, runs_to_completion) in containers {
                if upto.is_some_and(|u| position(u) < position(&c.name)) {
                    break;
                }
                let n = wanted(c, resource);
                let key = (c.name.clone(), resource.clone());
                if n == 0 {
                    continue;
                }
                if let Some(a) = entry.devices.get(&key).filter(|a| a.ids.len() == n) {
                    if runs_to_completion {
                        reusable.extend(a.ids.iter().cloned());
                    }
                    continue;
                }
                let (plan, ask) = {
                    let s = self.lock();
                    // Devices other pods hold, and this pod's other containers.
                    let unavailable: BTreeSet<String> = s
                        .pods
                        .iter()
                        .filter(|(u, _)| **u != uid)
                        .map(|(_, e)| e)
                        .chain(std::iter::once(&entry))
                        .flat_map(|e| e.devices.iter().filter(|((_, r), _)| r == resource).flat_map(|(_, a)| a.ids.iter().cloned()))
                        .collect();
                    let plugin = &s.plugins[resource];
                    let plan = Plan::new(resource, n, &reusable, &plugin.devices, &unavailable, numa(&c.name)).map_err(refuse)?;
                    let ask = plan.asks().filter(|_| plugin.options.get_preferred_allocation_available).and_then(|offer| Some((plugin.channel.clone()?, offer)));
                    (plan, ask)
                };
                let preferred = match ask {
                    Some((channel, (available, must_include))) => Some(preferred_allocation(channel, available, must_include, n).await.map_err(refuse)?),
                    None => None,
                };
                let ids = plan.finish(preferred).map_err(refuse)?;
                reusable.retain(|id| !ids.contains(id));
                if runs_to_completion {
                    reusable.extend(ids.iter().cloned());
                }
                tracing::info!(pod = %format!("{}/{}", entry.namespace, entry.name), container = %c.name, resource = %resource, devices = ?ids, "devices assigned");
                entry.devices.insert(key, Assigned { ids, response: None });
                changed = true;
            }
        }
        self.lock().pods.insert(uid, entry);
        if changed || new_pod {
            self.save();
        }
        Ok(())
    }

    /// The pod is gone: its devices are free.
    pub fn release(&self, uid: &str) {
        let had = {
            let mut s = self.lock();
            s.pods.remove(uid).is_some_and(|e| !e.devices.is_empty())
        };
        if had {
            self.save();
        }
    }

    /// Keeps the pods `keep` says are still here (after a restart, those
    /// the runtime and the sources no longer have are released).
    pub fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        let dropped = {
            let mut s = self.lock();
            let before = s.pods.len();
            s.pods.retain(|uid, _| keep(uid));
            before != s.pods.len()
        };
        if dropped {
            self.save();
        }
    }

    /// The pods the manager knows by uid, for the pod-resources API.
    pub fn pods(&self) -> Vec<(String, PodEntry)> {
        self.lock().pods.iter().map(|(u, e)| (u.clone(), e.clone())).collect()
    }

    /// Every device by resource, for the pod-resources API's allocatable
    /// listing (the healthy ones) and `nodelet explain`.
    pub fn devices(&self) -> BTreeMap<String, BTreeMap<String, Device>> {
        self.lock().plugins.iter().filter(|(_, p)| !p.removed).map(|(r, p)| (r.clone(), p.devices.clone())).collect()
    }

    /// The devices chosen for a container, by resource.
    pub fn assigned(&self, uid: &str, container: &str) -> BTreeMap<String, Vec<String>> {
        let s = self.lock();
        s.pods
            .get(uid)
            .map(|e| e.devices.iter().filter(|((c, _), _)| c == container).map(|((_, r), a)| (r.clone(), a.ids.clone())).collect())
            .unwrap_or_default()
    }

    /// What the container's devices need at its creation: the plugins'
    /// Allocate answers (asked once, then kept in the checkpoint), and
    /// PreStartContainer for plugins that ask for it. An error names the
    /// resource and the plugin's words; the container is not created.
    pub async fn run_options(&self, uid: &str, container: &str) -> Result<RunOptions, String> {
        let wanted: Vec<(String, Assigned)> = {
            let s = self.lock();
            s.pods.get(uid).map(|e| e.devices.iter().filter(|((c, _), _)| c == container).map(|((_, r), a)| (r.clone(), a.clone())).collect()).unwrap_or_default()
        };
        let mut out = RunOptions::default();
        for (resource, assigned) in wanted {
            let (channel, options) = {
                let s = self.lock();
                match s.plugins.get(&resource) {
                    Some(p) if !p.removed => (p.channel.clone(), p.options),
                    _ => (None, Default::default()),
                }
            };
            let response = match assigned.response.clone() {
                Some(r) => r,
                None => {
                    let ch = channel.clone().ok_or_else(|| format!("the device plugin of {resource} is not registered"))?;
                    let mut client = v1beta1::device_plugin_client::DevicePluginClient::new(ch);
                    let req = v1beta1::AllocateRequest { container_requests: vec![v1beta1::ContainerAllocateRequest { devices_ids: assigned.ids.clone() }] };
                    let answer = tokio::time::timeout(Duration::from_secs(30), client.allocate(req))
                        .await
                        .map_err(|_| format!("Allocate of {resource}: no answer in 30 s"))?
                        .map_err(|e| format!("Allocate of {resource} {:?}: {}", assigned.ids, e.message()))?
                        .into_inner();
                    let r = answer.container_responses.into_iter().next().ok_or_else(|| format!("Allocate of {resource}: the plugin answered for no container"))?;
                    {
                        let mut s = self.lock();
                        if let Some(a) = s.pods.get_mut(uid).and_then(|e| e.devices.get_mut(&(container.to_string(), resource.clone()))) {
                            a.response = Some(r.clone());
                        }
                    }
                    self.save();
                    r
                }
            };
            if options.pre_start_required
                && let Some(ch) = channel
            {
                let mut client = v1beta1::device_plugin_client::DevicePluginClient::new(ch);
                tokio::time::timeout(Duration::from_secs(30), client.pre_start_container(v1beta1::PreStartContainerRequest { devices_ids: assigned.ids.clone() }))
                    .await
                    .map_err(|_| format!("PreStartContainer of {resource}: no answer in 30 s"))?
                    .map_err(|e| format!("PreStartContainer of {resource} {:?}: {}", assigned.ids, e.message()))?;
            }
            out.add(response);
        }
        Ok(out)
    }

    /// A dry run's [`Devices::run_options`]: the Allocate answers the
    /// checkpoint holds, no plugin called; and the devices without one, by
    /// resource (their plugin would be asked).
    pub fn planned_options(&self, uid: &str, container: &str) -> (RunOptions, Vec<(String, Vec<String>)>) {
        let s = self.lock();
        let mut out = RunOptions::default();
        let mut unasked = Vec::new();
        for ((_, resource), a) in s.pods.get(uid).into_iter().flat_map(|e| e.devices.iter()).filter(|((c, _), _)| c == container) {
            match &a.response {
                Some(r) => out.add(r.clone()),
                None => unasked.push((resource.clone(), a.ids.clone())),
            }
        }
        (out, unasked)
    }

    /// Serves Registration on `<dir>/kubelet.sock` until the process ends.
    pub async fn serve(self, dir: PathBuf) {
        registration::serve(self, dir).await
    }

    /// Records a plugin's registration (replacing an earlier one of the same
    /// resource); its generation.
    fn register(&self, resource: &str, endpoint: PathBuf, options: v1beta1::DevicePluginOptions, channel: tonic::transport::Channel) -> u64 {
        let mut s = self.lock();
        s.generation += 1;
        let generation = s.generation;
        let p = s.plugins.entry(resource.to_string()).or_insert_with(|| Plugin {
            endpoint: PathBuf::new(),
            options: Default::default(),
            channel: None,
            devices: BTreeMap::new(),
            generation: 0,
            removed: false,
        });
        p.endpoint = endpoint;
        p.options = options;
        p.channel = Some(channel);
        p.generation = generation;
        p.removed = false;
        generation
    }

    /// A ListAndWatch answer: the resource's devices now.
    fn update(&self, resource: &str, generation: u64, devices: BTreeMap<String, Device>) -> bool {
        {
            let mut s = self.lock();
            let Some(p) = s.plugins.get_mut(resource).filter(|p| p.generation == generation) else { return false };
            p.devices = devices;
        }
        self.publish();
        self.save();
        true
    }

    /// The plugin's stream ended: its devices are unhealthy now, and after
    /// the grace period, unless it registered again, its capacity goes.
    fn disconnected(&self, resource: &str, generation: u64) {
        {
            let mut s = self.lock();
            let Some(p) = s.plugins.get_mut(resource).filter(|p| p.generation == generation) else { return };
            p.channel = None;
            for d in p.devices.values_mut() {
                d.healthy = false;
            }
        }
        self.publish();
        let me = self.clone();
        let resource = resource.to_string();
        tokio::spawn(async move {
            tokio::time::sleep(GRACE).await;
            let gone = {
                let mut s = me.lock();
                match s.plugins.get_mut(&resource).filter(|p| p.generation == generation) {
                    Some(p) => {
                        p.removed = true;
                        p.devices.clear();
                        true
                    }
                    None => false,
                }
            };
            if gone {
                tracing::warn!(resource = %resource, "the device plugin did not come back: its resource is removed");
                me.publish();
                me.save();
            }
        });
    }
}

/// Where a container's new devices come from, in kubelet's order
/// (devicesToAllocate): the devices of finished init containers first; then,
/// when the topology manager's NUMA nodes have more free devices than are
/// needed, the plugin's preference among them, else all of them and the
/// plugin's preference among the rest; then the other NUMA nodes' devices,
/// then those without a NUMA node.
#[derive(Debug, Clone, PartialEq)]
struct Plan {
    wanted: usize,
    chosen: Vec<String>,
    /// What the plugin's preference may add (empty: nothing to ask).
    within: Vec<String>,
    /// What is taken, in order, after the plugin's preference.
    then: Vec<String>,
}

impl Plan {
    fn new(resource: &str, n: usize, reusable: &[String], devices: &BTreeMap<String, Device>, unavailable: &BTreeSet<String>, hint: Option<crate::topology::Mask>) -> Result<Plan, String> {
        let mut chosen: Vec<String> = reusable.iter().take(n).cloned().collect();
        let needed = n - chosen.len();
        if needed == 0 {
            return Ok(Plan { wanted: n, chosen, within: Vec::new(), then: Vec::new() });
        }
        let available: Vec<(&String, &Device)> = devices.iter().filter(|(id, d)| d.healthy && !unavailable.contains(*id) && !chosen.contains(id)).collect();
        if available.len() < needed {
            return Err(format!("requested number of devices unavailable for {resource}. Requested: {needed}, Available: {}", available.len()));
        }
        // kubelet's filterByAffinity: without a hint, or for a resource
        // whose devices have no NUMA node, nothing is aligned.
        let (mut aligned, mut unaligned, mut no_affinity) = (Vec::new(), Vec::new(), Vec::new());
        let hint = hint.filter(|_| devices.values().any(|d| !d.numa.is_empty()));
        for (id, d) in &available {
            let mask = crate::topology::mask_of(d.numa.iter().filter_map(|n| u32::try_from(*n).ok()));
            match hint {
                Some(want) if mask & want != 0 => aligned.push((*id).clone()),
                Some(_) if mask != 0 => unaligned.push((*id).clone()),
                _ => no_affinity.push((*id).clone()),
            }
        }
        if needed < aligned.len() {
            return Ok(Plan { wanted: n, chosen, within: aligned.clone(), then: aligned });
        }
        chosen.extend(aligned);
        let within = if chosen.len() == n { Vec::new() } else { available.iter().map(|(id, _)| (*id).clone()).collect() };
        unaligned.extend(no_affinity);
        Ok(Plan { wanted: n, chosen, within, then: unaligned })
    }

    /// What the plugin is asked (available, must include), if anything.
    fn asks(&self) -> Option<(Vec<String>, Vec<String>)> {
        if self.within.is_empty() {
            return None;
        }
        let mut available = self.chosen.clone();
        available.extend(self.within.iter().filter(|id| !self.chosen.contains(id)).cloned());
        Some((available, self.chosen.clone()))
    }

    /// The devices: the plugin's preferred ones it may add, then the rest
    /// in order.
    fn finish(mut self, preferred: Option<Vec<String>>) -> Result<Vec<String>, String> {
        let preferred: Vec<String> = preferred.unwrap_or_default().into_iter().filter(|id| self.within.contains(id)).collect();
        for id in preferred.into_iter().chain(std::mem::take(&mut self.then)) {
            if self.chosen.len() == self.wanted {
                break;
            }
            if !self.chosen.contains(&id) {
                self.chosen.push(id);
            }
        }
        if self.chosen.len() < self.wanted {
            return Err(format!("unexpectedly allocated less resources than required. Requested: {}, Got: {}", self.wanted, self.chosen.len()));
        }
        Ok(self.chosen)
    }
}

/// GetPreferredAllocation: the devices the plugin would rather give.
async fn preferred_allocation(channel: tonic::transport::Channel, available: Vec<String>, must_include: Vec<String>, size: usize) -> Result<Vec<String>, String> {
    let mut client = v1beta1::device_plugin_client::DevicePluginClient::new(channel);
    let req = v1beta1::PreferredAllocationRequest {
        container_requests: vec![v1beta1::ContainerPreferredAllocationRequest {
            available_device_i_ds: available,
            must_include_device_i_ds: must_include,
            allocation_size: i32::try_from(size).unwrap_or(i32::MAX),
        }],
    };
    let answer = tokio::time::timeout(Duration::from_secs(30), client.get_preferred_allocation(req))
        .await
        .map_err(|_| "device plugin GetPreferredAllocation rpc failed with err: no answer in 30 s".to_string())?
        .map_err(|e| format!("device plugin GetPreferredAllocation rpc failed with err: {}", e.message()))?
        .into_inner();
    Ok(answer.container_responses.into_iter().next().map(|r| r.device_i_ds).unwrap_or_default())
}

/// A plugin's endpoint below the device-plugins directory: a plain file
/// name, never a path out of it.
fn endpoint_in(dir: &Path, endpoint: &str) -> Result<PathBuf, String> {
    crate::files::component(endpoint, "endpoint").map_err(|e| e.to_string())?;
    Ok(dir.join(endpoint))
}

#[cfg(test)]
mod tests;
