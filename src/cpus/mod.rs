//! The CPU manager's `static` policy, as kubelet's: a container of a
//! Guaranteed pod whose CPU request is a whole number of CPUs gets that many
//! CPUs of its own; every other container runs on the shared pool (every CPU
//! no container holds, the reserved ones included). The CPUs are chosen by
//! topology (whole sockets, then whole cores, then single CPUs, packing onto
//! the socket already in use), with `reservedSystemCPUs` (or kubelet's
//! count from the cpu reservations) never handed out; `full-pcpus-only`
//! refuses requests that are not whole physical cores.
//!
//! CPUs are chosen at admission (`SMTAlignmentError` or
//! `UnexpectedAdmissionError` when they cannot be, with nothing taken), set
//! as the container's `cpuset_cpus` at its creation, and kept in
//! `<root-dir>/cpu_manager_state` (kubelet's layout, written atomically) so a
//! restart keeps them; a reconcile loop brings running containers to their
//! cpusets (the shared pool grows and shrinks as exclusive CPUs are taken
//! and given back) through CRI UpdateContainerResources.
//!
//! The topology is read from sysfs; the policy core is pure and tested on
//! synthetic topologies.

pub mod state;
pub mod topology;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;

pub use self::topology::Topology;

/// A set of CPUs.
pub type CpuSet = BTreeSet<u32>;

/// kubelet's list form: `0-2,4`.
pub fn format(set: &CpuSet) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut it = set.iter().copied().peekable();
    while let Some(start) = it.next() {
        let mut end = start;
        while it.peek() == Some(&(end + 1)) {
            end += 1;
            it.next();
        }
        out.push(if start == end { start.to_string() } else { format!("{start}-{end}") });
    }
    out.join(",")
}

pub fn parse(text: &str) -> Result<CpuSet, String> {
    crate::config::allocatable::parse_cpu_list(text).map(|v| v.into_iter().collect())
}

/// The static policy's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticConfig {
    /// `reservedSystemCPUs`, else empty (then `reserved_count` CPUs are
    /// taken by topology, as kubelet does from the cpu reservations).
    pub reserved: CpuSet,
    pub reserved_count: u32,
    /// `cpuManagerPolicyOptions: {full-pcpus-only: "true"}`.
    pub full_pcpus_only: bool,
    /// `cpuManagerReconcilePeriod` (10 s).
    pub reconcile_period: Duration,
}

/// Why a pod cannot have its CPUs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub message: String,
}

/// The policy's state: pure, no I/O.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Assignments {
    pub reserved: CpuSet,
    pub all: CpuSet,
    /// pod uid → container → its CPUs.
    pub entries: BTreeMap<String, BTreeMap<String, CpuSet>>,
}

impl Assignments {
    /// The shared pool: every CPU no container holds.
    pub fn default_set(&self) -> CpuSet {
        let held: CpuSet = self.entries.values().flat_map(|c| c.values().flatten().copied()).collect();
        self.all.difference(&held).copied().collect()
    }

    /// The cpuset a container runs on.
    pub fn cpuset_for(&self, uid: &str, container: &str) -> CpuSet {
        self.entries.get(uid).and_then(|c| c.get(container)).cloned().unwrap_or_else(|| self.default_set())
    }
}

/// How many exclusive CPUs a container of `pod` gets: its CPU request when
/// the pod is Guaranteed and the request a whole number, else 0.
pub fn exclusive_cpus(pod: &Pod, c: &k8s_openapi::api::core::v1::Container) -> u32 {
    let Some(spec) = pod.spec.as_ref() else { return 0 };
    if crate::pods::qos::qos_class(spec) != crate::pods::qos::QosClass::Guaranteed {
        return 0;
    }
    let Some(q) = c.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("cpu")) else { return 0 };
    let Ok(cores) = crate::resources::parse(&q.0) else { return 0 };
    if cores <= 0.0 || cores.fract() != 0.0 || cores > f64::from(u32::MAX) {
        return 0;
    }
    cores as u32
}

/// The policy: chooses CPUs for every container of `pod` that gets
/// exclusive ones (kept when already chosen), or refuses it with nothing
/// taken. Init containers that run to completion hand theirs on to the
/// containers after them, as kubelet's.
pub fn allocate(a: &mut Assignments, topo: &Topology, cfg: &StaticConfig, pod: &Pod) -> Result<bool, Refusal> {
    allocate_aligned(a, topo, cfg, pod, None, &|_| None)
}

/// The CPUs of a container's exclusive request, by topology manager hint
/// too: `numa` (the container's NUMA nodes, when the topology manager chose
/// some) is where its CPUs are taken from first; `upto` stops after that
/// container (the topology manager's container scope decides one at a time).
pub fn allocate_aligned(
    a: &mut Assignments,
    topo: &Topology,
    cfg: &StaticConfig,
    pod: &Pod,
    upto: Option<&str>,
    numa: &dyn Fn(&str) -> Option<crate::topology::Mask>,
) -> Result<bool, Refusal> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let Some(spec) = pod.spec.as_ref() else { return Ok(false) };
    let mut mine = a.entries.get(&uid).cloned().unwrap_or_default();
    let others: CpuSet = a.entries.iter().filter(|(u, _)| **u != uid).flat_map(|(_, c)| c.values().flatten().copied()).collect();
    let mut reusable = CpuSet::new();
    let mut changed = false;
    let inits = spec.init_containers.iter().flatten().map(|c| (c, c.restart_policy.as_deref() != Some("Always")));
    for (c, runs_to_completion) in inits.chain(spec.containers.iter().map(|c| (c, false))) {
        let n = exclusive_cpus(pod, c);
        let last = upto == Some(c.name.as_str());
        if n == 0 {
            if last {
                break;
            }
            continue;
        }
        if let Some(have) = mine.get(&c.name).filter(|s| s.len() == n as usize) {
            if runs_to_completion {
                reusable.extend(have.iter().copied());
            }
            if last {
                break;
            }
            continue;
        }
        let threads = topo.threads_per_core().max(1);
        if cfg.full_pcpus_only && n % threads != 0 {
            return Err(Refusal {
                reason: "SMTAlignmentError".into(),
                message: format!("SMT Alignment Error: requested {n} cpus not multiple cpus per core = {threads}"),
            });
        }
        let held_here: CpuSet = mine.values().flatten().copied().collect();
        let free: CpuSet =
            a.all.iter().copied().filter(|cpu| !a.reserved.contains(cpu) && !others.contains(cpu) && (!held_here.contains(cpu) || reusable.contains(cpu))).collect();
        // Reused CPUs first, then by topology from the rest.
        let mut take: CpuSet = reusable.iter().copied().take(n as usize).collect();
        // The topology manager's NUMA nodes first, as many as they have.
        if take.len() < n as usize
            && let Some(mask) = numa(&c.name)
        {
            let aligned: CpuSet = free.difference(&take).copied().filter(|cpu| topo.cpus.get(cpu).is_some_and(|i| i.numa < 64 && mask & (1u64 << i.numa) != 0)).collect();
            let k = aligned.len().min(n as usize - take.len());
            if let Some(more) = topo.take(&aligned, k, cfg.full_pcpus_only).or_else(|| topo.take(&aligned, k, false)) {
                take.extend(more);
            }
        }
        if take.len() < n as usize {
            let rest: CpuSet = free.difference(&take).copied().collect();
            match topo.take(&rest, n as usize - take.len(), cfg.full_pcpus_only) {
                Some(more) => take.extend(more),
                None => {
                    return Err(Refusal {
                        reason: "UnexpectedAdmissionError".into(),
                        message: format!("not enough cpus available to satisfy request: requested={n}, available={}", free.len()),
                    });
                }
            }
        }
        reusable.retain(|cpu| !take.contains(cpu));
        if runs_to_completion {
            reusable.extend(take.iter().copied());
        }
        mine.insert(c.name.clone(), take);
        changed = true;
        if last {
            break;
        }
    }
    if changed {
        a.entries.insert(uid, mine);
    }
    Ok(changed)
}

/// The pod's exclusive CPUs as one request (the topology manager's pod
/// scope): its app and sidecar containers' together, or its largest init
/// container's if more, as kubelet counts them.
pub fn pod_exclusive_cpus(pod: &Pod) -> u32 {
    let Some(spec) = pod.spec.as_ref() else { return 0 };
    let inits = spec.init_containers.iter().flatten();
    let sidecars: u32 = inits.clone().filter(|c| c.restart_policy.as_deref() == Some("Always")).map(|c| exclusive_cpus(pod, c)).sum();
    let apps: u32 = spec.containers.iter().map(|c| exclusive_cpus(pod, c)).sum::<u32>().saturating_add(sidecars);
    let max_init = inits.filter(|c| c.restart_policy.as_deref() != Some("Always")).map(|c| exclusive_cpus(pod, c)).max().unwrap_or(0);
    apps.max(max_init)
}

/// The static policy's topology hints (kubelet's GetTopologyHints) for one
/// container (`Some(name)`) or the whole pod: None when it gets no
/// exclusive CPUs; the NUMA nodes of the CPUs it already holds; else every
/// set of NUMA nodes with enough free CPUs, the narrowest preferred.
pub fn hints(a: &Assignments, topo: &Topology, pod: &Pod, container: Option<&str>) -> crate::topology::Hints {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let spec = pod.spec.as_ref()?;
    let all_containers = || spec.init_containers.iter().flatten().chain(&spec.containers);
    let n = match container {
        Some(name) => all_containers().find(|c| c.name == name).map_or(0, |c| exclusive_cpus(pod, c)),
        None => pod_exclusive_cpus(pod),
    };
    if n == 0 {
        return None;
    }
    let numa_of = |cpu: &u32| topo.cpus.get(cpu).map_or(0, |i| crate::topology::mask_of([i.numa]));
    let machine = crate::topology::mask_of(topo.cpus.values().map(|i| i.numa));
    let mine = a.entries.get(&uid).cloned().unwrap_or_default();
    let held: Option<CpuSet> = match container {
        Some(name) => mine.get(name).cloned(),
        None => (!mine.is_empty()).then(|| mine.values().flatten().copied().collect()),
    };
    if let Some(h) = held.filter(|h| h.len() >= n as usize) {
        let mask = h.iter().fold(0, |m, cpu| m | numa_of(cpu));
        return Some(vec![crate::topology::Hint { mask: Some(mask), preferred: true }]);
    }
    // Free: not reserved, not another pod's, not held by this pod's
    // containers that keep theirs (init containers that run to completion
    // hand theirs on).
    let keeps: CpuSet = all_containers()
        .filter(|c| !(spec.init_containers.iter().flatten().any(|i| i.name == c.name) && c.restart_policy.as_deref() != Some("Always")))
        .filter_map(|c| mine.get(&c.name))
        .flatten()
        .copied()
        .collect();
    let others: CpuSet = a.entries.iter().filter(|(u, _)| **u != uid).flat_map(|(_, c)| c.values().flatten().copied()).collect();
    let available: Vec<crate::topology::Mask> =
        a.all.iter().filter(|cpu| !a.reserved.contains(cpu) && !others.contains(cpu) && !keeps.contains(cpu)).map(numa_of).collect();
    let every: Vec<crate::topology::Mask> = a.all.iter().map(numa_of).collect();
    Some(crate::topology::generate(machine, n as usize, &available, &every))
}

struct Inner {
    cfg: StaticConfig,
    topo: Topology,
    a: Assignments,
    file: Option<PathBuf>,
}

/// The CPU manager of a node running the static policy (`inner` None: the
/// `none` policy, which does nothing).
#[derive(Clone, Default)]
pub struct CpuManager {
    inner: Option<Arc<Mutex<Inner>>>,
    /// Wakes the reconcile loop when assignments change.
    kick: Arc<tokio::sync::Notify>,
}

impl CpuManager {
    /// The static policy on `topo`: the reserved CPUs resolved, the state
    /// restored from `<root-dir>/cpu_manager_state` (a state of another
    /// policy, or one that holds CPUs this node does not have, is an error
    /// naming the file, as kubelet refuses to start on it).
    /// The static policy with its state in `root` (None: none); a dry run
    /// reads the state and never writes it.
    pub fn start(cfg: StaticConfig, topo: Topology, root: Option<&std::path::Path>, dry_run: bool) -> Result<CpuManager, String> {
        let all: CpuSet = topo.cpus();
        let reserved = if cfg.reserved.is_empty() {
            if cfg.reserved_count == 0 {
                return Err("cpuManagerPolicy static: the static policy requires systemReserved.cpu + kubeReserved.cpu (or reservedSystemCPUs) to be greater than zero".into());
            }
            topo.take(&all, cfg.reserved_count as usize, false).ok_or_else(|| format!("cpuManagerPolicy static: cannot reserve {} of {} CPUs", cfg.reserved_count, all.len()))?
        } else {
            if let Some(cpu) = cfg.reserved.iter().find(|c| !all.contains(c)) {
                return Err(format!("reservedSystemCPUs: CPU {cpu} is not online on this node ({})", format(&all)));
            }
            cfg.reserved.clone()
        };
        let mut a = Assignments { reserved: reserved.clone(), all: all.clone(), entries: BTreeMap::new() };
        let mut file = root.map(|r| r.join(state::FILE));
        if let Some(f) = file.as_ref().filter(|f| !dry_run || crate::files::dry_run_can_read(f)) {
            a.entries = state::read(f, &all)?;
        }
        if dry_run {
            file = None;
        }
        tracing::info!(reserved = %format(&reserved), cpus = %format(&all), "CPU manager: static policy");
        let m = CpuManager { inner: Some(Arc::new(Mutex::new(Inner { cfg, topo, a, file }))), kick: Default::default() };
        m.save();
        Ok(m)
    }

    fn inner(&self) -> Option<std::sync::MutexGuard<'_, Inner>> {
        self.inner.as_ref().map(|m| m.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn is_static(&self) -> bool {
        self.inner.is_some()
    }

    fn save(&self) {
        self.kick.notify_one();
        let Some(i) = self.inner() else { return };
        let Some(f) = &i.file else { return };
        let bytes = state::encode(&i.a);
        if let Err(e) = crate::files::write_atomic(f, &bytes, 0o600) {
            tracing::error!(error = %e, path = %f.display(), "cannot write the CPU manager state");
        }
    }

    /// Admission: the pod's exclusive CPUs, or why not.
    pub fn admit(&self, pod: &Pod) -> Result<(), Refusal> {
        self.admit_aligned(pod, None, &|_| None)
    }

    /// The topology manager's hints for a container (or the pod).
    pub fn hints(&self, pod: &Pod, container: Option<&str>) -> crate::topology::Hints {
        let i = self.inner()?;
        hints(&i.a, &i.topo, pod, container)
    }

    /// Admission with the topology manager's NUMA nodes per container, up
    /// to one container (None: all).
    pub fn admit_aligned(&self, pod: &Pod, upto: Option<&str>, numa: &dyn Fn(&str) -> Option<crate::topology::Mask>) -> Result<(), Refusal> {
        let changed = {
            let Some(mut guard) = self.inner() else { return Ok(()) };
            let i = &mut *guard;
            let changed = allocate_aligned(&mut i.a, &i.topo, &i.cfg, pod, upto, numa)?;
            if changed {
                let uid = pod.metadata.uid.as_deref().unwrap_or_default();
                tracing::info!(pod = %format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or("default"), pod.metadata.name.as_deref().unwrap_or_default()),
                    cpus = ?i.a.entries.get(uid).map(|c| c.iter().map(|(n, s)| format!("{n}={}", format(s))).collect::<Vec<_>>()), "exclusive CPUs assigned");
            }
            changed
        };
        if changed {
            self.save();
        }
        Ok(())
    }

    /// The cpuset for a container's creation (None without the static policy).
    pub fn cpuset_for(&self, uid: &str, container: &str) -> Option<String> {
        self.inner().map(|i| format(&i.a.cpuset_for(uid, container)))
    }

    /// The exclusive CPUs of a pod's containers, for the pod-resources API.
    pub fn exclusive(&self, uid: &str) -> BTreeMap<String, CpuSet> {
        self.inner().and_then(|i| i.a.entries.get(uid).cloned()).unwrap_or_default()
    }

    /// The CPUs the node can hand out exclusively.
    pub fn allocatable(&self) -> CpuSet {
        self.inner().map(|i| i.a.all.difference(&i.a.reserved).copied().collect()).unwrap_or_default()
    }

    pub fn release(&self, uid: &str) {
        let had = self.inner().is_some_and(|mut i| i.a.entries.remove(uid).is_some());
        if had {
            self.save();
        }
    }

    pub fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        let dropped = self.inner().is_some_and(|mut i| {
            let before = i.a.entries.len();
            i.a.entries.retain(|uid, _| keep(uid));
            before != i.a.entries.len()
        });
        if dropped {
            self.save();
        }
    }

    /// Brings every running container of a pod the manager knows to its
    /// cpuset, every reconcile period (and at once when `kick` fires).
    pub async fn reconcile(self, runtime: Arc<dyn crate::runtime::Runtime>) {
        let kick = self.kick.clone();
        let Some(period) = self.inner().map(|i| i.cfg.reconcile_period) else { return };
        let mut applied: BTreeMap<String, String> = BTreeMap::new();
        loop {
            match runtime.list_containers(None).await {
                Ok(list) => {
                    let mut seen = BTreeSet::new();
                    for c in list.into_iter().filter(|c| c.state == crate::runtime::cri::ContainerState::ContainerRunning as i32) {
                        let (Some(uid), Some(name)) = (c.labels.get(crate::runtime::labels::POD_UID), c.labels.get(crate::runtime::labels::CONTAINER_NAME)) else { continue };
                        let Some(want) = self.cpuset_for(uid, name) else { return };
                        seen.insert(c.id.clone());
                        if applied.get(&c.id) == Some(&want) {
                            continue;
                        }
                        let r = crate::runtime::cri::LinuxContainerResources { cpuset_cpus: want.clone(), ..Default::default() };
                        match runtime.update_container_resources(&c.id, &r).await {
                            Ok(()) => {
                                tracing::debug!(container = %c.id, cpuset = %want, "cpuset reconciled");
                                applied.insert(c.id.clone(), want);
                            }
                            Err(e) => tracing::warn!(container = %c.id, error = %e, "cannot set the container's cpuset"),
                        }
                    }
                    applied.retain(|id, _| seen.contains(id));
                }
                Err(e) => tracing::warn!(error = %e, "CPU manager: cannot list containers to reconcile"),
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = kick.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
