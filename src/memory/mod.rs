//! The memory manager's `Static` policy, as kubelet's: each container of a
//! Guaranteed pod has its memory request reserved on a set of NUMA nodes
//! (one when it fits, else the narrowest group that does), and its
//! `cpuset.mems` set to them at creation, so its memory is allocated there.
//!
//! - Each NUMA node's memory is read from sysfs; `reservedMemory` (per NUMA
//!   node) is what the system keeps, and must add up to the node's memory
//!   reservations (kubeReserved + systemReserved + the hard eviction
//!   threshold), as kubelet checks at start.
//! - A node's memory is either used alone or by one group of nodes for
//!   multi-node allocations (kubelet's `cells`): a container is never placed
//!   across a node that single-node containers use, nor across part of a
//!   group.
//! - Hints for the topology manager: every set of NUMA nodes with enough free
//!   memory that breaks no group, preferred when as narrow as the node's
//!   allocatable memory allows. The chosen NUMA nodes are extended to the
//!   narrowest valid set that has enough free memory when they do not.
//! - Memory of init containers that run to completion is reused by the
//!   containers after them; everything is given back when the pod is gone.
//! - The state is `<root-dir>/memory_manager_state` in kubelet's layout
//!   (`machineState` per NUMA node, `entries` per container), written
//!   atomically; a restart keeps it; a state of another policy or machine
//!   stops the agent naming the file.
//!
//! Only the `memory` resource is pinned: hugepages requests are not (their
//! pages come from the pod's hugetlb limits as without the manager).

pub mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::topology::{Hint, Hints, Mask, mask_of, nodes_of};

/// One NUMA node's memory, kubelet's `memoryMap["memory"]` and more.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeState {
    pub total: u64,
    pub system_reserved: u64,
    pub allocatable: u64,
    pub reserved: u64,
    pub free: u64,
    pub assignments: u32,
    /// The group this node's memory is used with (itself alone by default).
    pub cells: BTreeSet<u32>,
}

/// Memory reserved for a container on a set of NUMA nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub numa: BTreeSet<u32>,
    pub size: u64,
}

/// Why a pod cannot have its memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub message: String,
}

/// The policy's state: pure, no I/O.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Assignments {
    pub machine: BTreeMap<u32, NodeState>,
    /// pod uid → container → its blocks.
    pub entries: BTreeMap<String, BTreeMap<String, Vec<Block>>>,
}

/// The machine's NUMA nodes and their memory, less `reserved` per node.
pub fn machine_state(totals: &BTreeMap<u32, u64>, reserved: &BTreeMap<u32, u64>, hugepages: &BTreeMap<u32, u64>) -> BTreeMap<u32, NodeState> {
    totals
        .iter()
        .map(|(id, total)| {
            let system_reserved = reserved.get(id).copied().unwrap_or(0).min(*total);
            // As kubelet: the node's pre-allocated hugepages are not
            // regular memory a container can be given.
            let allocatable = (total - system_reserved).saturating_sub(hugepages.get(id).copied().unwrap_or(0));
            (*id, NodeState { total: *total, system_reserved, allocatable, reserved: 0, free: allocatable, assignments: 0, cells: [*id].into() })
        })
        .collect()
}

/// Each NUMA node's memory (bytes), from `<sys>/devices/system/node/node*/meminfo`;
/// a machine without them is one node with `/proc/meminfo`'s total.
pub fn read_totals(sys: &Path) -> Result<BTreeMap<u32, u64>, String> {
    let mut out = BTreeMap::new();
    if let Ok(nodes) = std::fs::read_dir(sys.join("devices/system/node")) {
        for n in nodes.flatten() {
            let name = n.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_prefix("node").and_then(|s| s.parse::<u32>().ok()) else { continue };
            let path = n.path().join("meminfo");
            let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let kb = text
                .lines()
                .find_map(|l| {
                    let rest = l.split_once("MemTotal:")?.1;
                    rest.split_whitespace().next()?.parse::<u64>().ok()
                })
                .ok_or_else(|| format!("{}: no MemTotal", path.display()))?;
            out.insert(id, kb.saturating_mul(1024));
        }
    }
    if out.is_empty() {
        let text = std::fs::read_to_string("/proc/meminfo").map_err(|e| format!("/proc/meminfo: {e}"))?;
        let kb = text.lines().find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<u64>().ok()).ok_or("/proc/meminfo: no MemTotal")?;
        out.insert(0, kb.saturating_mul(1024));
    }
    Ok(out)
}

/// Each NUMA node's pre-allocated hugepages (bytes, every page size), from
/// `<sys>/devices/system/node/node*/hugepages/hugepages-<size>kB/nr_hugepages`.
pub fn read_hugepages(sys: &Path) -> BTreeMap<u32, u64> {
    let mut out = BTreeMap::new();
    let Ok(nodes) = std::fs::read_dir(sys.join("devices/system/node")) else { return out };
    for n in nodes.flatten() {
        let name = n.file_name().to_string_lossy().into_owned();
        let Some(id) = name.strip_prefix("node").and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(sizes) = std::fs::read_dir(n.path().join("hugepages")) else { continue };
        for size in sizes.flatten() {
            let dir = size.file_name().to_string_lossy().into_owned();
            let Some(kb) = dir.strip_prefix("hugepages-").and_then(|s| s.strip_suffix("kB")).and_then(|s| s.parse::<u64>().ok()) else { continue };
            let pages = std::fs::read_to_string(size.path().join("nr_hugepages")).ok().and_then(|t| t.trim().parse::<u64>().ok()).unwrap_or(0);
            *out.entry(id).or_insert(0) += pages.saturating_mul(kb).saturating_mul(1024);
        }
    }
    out
}

/// The memory a container of `pod` has pinned: its memory request when the
/// pod is Guaranteed, else none.
pub fn container_memory(pod: &Pod, c: &Container) -> u64 {
    let Some(spec) = pod.spec.as_ref() else { return 0 };
    if crate::pods::qos::qos_class(spec) != crate::pods::qos::QosClass::Guaranteed {
        return 0;
    }
    let Some(q) = c.resources.as_ref().and_then(|r| r.requests.as_ref()).and_then(|r| r.get("memory")) else { return 0 };
    match crate::resources::parse(&q.0) {
        Ok(v) if v > 0.0 && v < u64::MAX as f64 => v.ceil() as u64,
        _ => 0,
    }
}

/// The pod's pinned memory as one request (the topology manager's pod
/// scope): its app and sidecar containers' together, or its largest init
/// container's if more.
pub fn pod_memory(pod: &Pod) -> u64 {
    let Some(spec) = pod.spec.as_ref() else { return 0 };
    let inits = spec.init_containers.iter().flatten();
    let sidecars: u64 = inits.clone().filter(|c| c.restart_policy.as_deref() == Some("Always")).map(|c| container_memory(pod, c)).sum();
    let apps = spec.containers.iter().map(|c| container_memory(pod, c)).sum::<u64>().saturating_add(sidecars);
    let max_init = inits.filter(|c| c.restart_policy.as_deref() != Some("Always")).map(|c| container_memory(pod, c)).max().unwrap_or(0);
    apps.max(max_init)
}

impl Assignments {
    fn machine_mask(&self) -> Mask {
        mask_of(self.machine.keys().copied())
    }

    /// Whether `mask` can take an allocation: each node in it that is used
    /// already is used with exactly this group.
    fn valid(&self, mask: Mask) -> bool {
        let want = nodes_of(mask);
        want.iter().all(|n| self.machine.get(n).is_some_and(|s| s.assignments == 0 || s.cells == want))
    }

    fn free_in(&self, mask: Mask) -> u64 {
        nodes_of(mask).iter().filter_map(|n| self.machine.get(n)).map(|s| s.free).sum()
    }

    fn allocatable_in(&self, mask: Mask) -> u64 {
        nodes_of(mask).iter().filter_map(|n| self.machine.get(n)).map(|s| s.allocatable).sum()
    }

    /// Every NUMA node set, narrowest first.
    fn masks(&self) -> Vec<Mask> {
        crate::topology::masks(self.machine_mask())
    }

    /// The hints for `request` bytes (kubelet's calculateHints).
    pub fn hints_for(&self, request: u64) -> Vec<Hint> {
        let mut min_size = self.machine.len() as u32;
        let mut hints = Vec::new();
        for m in self.masks() {
            if self.allocatable_in(m) >= request && m.count_ones() < min_size {
                min_size = m.count_ones();
            }
            if self.valid(m) && self.free_in(m) >= request {
                hints.push(Hint { mask: Some(m), preferred: false });
            }
        }
        for h in &mut hints {
            h.preferred = h.mask.is_some_and(|m| m.count_ones() == min_size);
        }
        hints
    }

    /// Reserves `size` on the nodes of `mask` (kubelet's updateMachineState).
    fn reserve(&mut self, mask: Mask, size: u64) {
        let group = nodes_of(mask);
        let mut left = size;
        for n in &group {
            let Some(s) = self.machine.get_mut(n) else { continue };
            s.assignments = s.assignments.saturating_add(1);
            s.cells = group.clone();
            let take = left.min(s.free);
            s.free -= take;
            s.reserved += take;
            left -= take;
        }
    }

    /// Gives back a block (kubelet's removeContainer).
    fn give_back(&mut self, b: &Block) {
        let mut left = b.size;
        for n in &b.numa {
            let Some(s) = self.machine.get_mut(n) else { continue };
            s.assignments = s.assignments.saturating_sub(1);
            if s.assignments == 0 {
                s.cells = [*n].into();
            }
            let back = left.min(s.reserved);
            s.reserved -= back;
            s.free += back;
            left -= back;
        }
    }

    /// The pod is gone: its memory is free.
    pub fn release(&mut self, uid: &str) -> bool {
        let Some(containers) = self.entries.remove(uid) else { return false };
        for b in containers.values().flatten() {
            self.give_back(b);
        }
        true
    }

    /// The NUMA nodes of a container's memory, if pinned.
    pub fn numa_of(&self, uid: &str, container: &str) -> Option<BTreeSet<u32>> {
        let blocks = self.entries.get(uid)?.get(container)?;
        let set: BTreeSet<u32> = blocks.iter().flat_map(|b| b.numa.iter().copied()).collect();
        (!set.is_empty()).then_some(set)
    }
}

/// The topology manager's hints for a container (`Some(name)`) or the pod:
/// None when nothing is pinned; the NUMA nodes it already has; else
/// [`Assignments::hints_for`].
pub fn hints(a: &Assignments, pod: &Pod, container: Option<&str>) -> Hints {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let spec = pod.spec.as_ref()?;
    let n = match container {
        Some(name) => spec.init_containers.iter().flatten().chain(&spec.containers).find(|c| c.name == name).map_or(0, |c| container_memory(pod, c)),
        None => pod_memory(pod),
    };
    if n == 0 {
        return None;
    }
    let held: Option<BTreeSet<u32>> = match container {
        Some(name) => a.numa_of(&uid, name),
        None => a.entries.get(&uid).map(|cs| cs.values().flatten().flat_map(|b| b.numa.iter().copied()).collect()).filter(|s: &BTreeSet<u32>| !s.is_empty()),
    };
    if let Some(nodes) = held {
        return Some(vec![Hint { mask: Some(mask_of(nodes)), preferred: true }]);
    }
    Some(a.hints_for(n))
}

/// The policy: reserves memory for every pinned container of `pod` (kept
/// when already done), on the NUMA nodes the topology manager chose for it
/// (`numa`; extended to the narrowest valid set with enough free memory
/// when they have too little), or on the best of its own hints; `upto`
/// stops after that container. Refused with nothing reserved.
pub fn allocate(a: &mut Assignments, pod: &Pod, upto: Option<&str>, numa: &dyn Fn(&str) -> Option<Mask>) -> Result<bool, Refusal> {
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let Some(spec) = pod.spec.as_ref() else { return Ok(false) };
    let before = a.clone();
    let mut changed = false;
    for c in spec.init_containers.iter().flatten().chain(&spec.containers) {
        let last = upto == Some(c.name.as_str());
        let n = container_memory(pod, c);
        let has = a.entries.get(&uid).is_some_and(|cs| cs.contains_key(&c.name));
        if n > 0 && !has {
            // Memory of init containers before it that ran to completion,
            // on the same nodes, is used again first.
            let wanted = numa(&c.name);
            let mask = match wanted.filter(|m| a.valid(*m) && a.free_in(*m) + reusable(a, &uid, spec, *m) >= n) {
                Some(m) => m,
                None => {
                    let fits = |m: &Mask| a.valid(*m) && a.free_in(*m) + reusable(a, &uid, spec, *m) >= n && wanted.is_none_or(|w| m & w == w);
                    // The narrowest that fits (masks come narrowest first).
                    match a.masks().into_iter().find(|m| fits(m)) {
                        Some(m) => m,
                        None => {
                            *a = before;
                            return Err(Refusal {
                                reason: "UnexpectedAdmissionError".into(),
                                message: format!(
                                    "Allocate failed due to [memorymanager] failed to find NUMA nodes with {n} bytes of free memory for container {}, which is unexpected",
                                    c.name
                                ),
                            });
                        }
                    }
                }
            };
            // Reused memory counts once: on this container's block.
            let reused = take_reusable(a, &uid, spec, mask, n);
            a.reserve(mask, n - reused);
            a.entries.entry(uid.clone()).or_default().insert(c.name.clone(), vec![Block { numa: nodes_of(mask), size: n }]);
            changed = true;
        }
        if last {
            break;
        }
    }
    Ok(changed)
}

/// The memory of this pod's init containers that run to completion, on
/// exactly the nodes of `mask`, not yet handed on.
fn reusable(a: &Assignments, uid: &str, spec: &k8s_openapi::api::core::v1::PodSpec, mask: Mask) -> u64 {
    let nodes = nodes_of(mask);
    let Some(cs) = a.entries.get(uid) else { return 0 };
    spec.init_containers
        .iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() != Some("Always"))
        .filter_map(|c| cs.get(&c.name))
        .flatten()
        .filter(|b| b.numa == nodes)
        .map(|b| b.size)
        .sum()
}

/// Hands up to `n` bytes of reusable init memory on `mask` on: the init
/// containers' blocks shrink by what is taken (so every byte reserved is in
/// exactly one block). Returns what was taken.
fn take_reusable(a: &mut Assignments, uid: &str, spec: &k8s_openapi::api::core::v1::PodSpec, mask: Mask, n: u64) -> u64 {
    let nodes = nodes_of(mask);
    let inits: Vec<String> = spec.init_containers.iter().flatten().filter(|c| c.restart_policy.as_deref() != Some("Always")).map(|c| c.name.clone()).collect();
    let mut taken = 0;
    if let Some(cs) = a.entries.get_mut(uid) {
        for name in &inits {
            for b in cs.get_mut(name).into_iter().flatten().filter(|b| b.numa == nodes) {
                let t = b.size.min(n - taken);
                b.size -= t;
                taken += t;
            }
        }
    }
    taken
}

/// The static policy's settings: what each NUMA node keeps for the system.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StaticConfig {
    pub reserved: BTreeMap<u32, u64>,
}

struct Inner {
    a: Assignments,
    file: Option<PathBuf>,
}

/// The memory manager of a node running the static policy (`inner` None:
/// the `None` policy, which does nothing).
#[derive(Clone, Default)]
pub struct MemoryManager {
    inner: Option<Arc<Mutex<Inner>>>,
}

impl MemoryManager {
    /// The static policy on a machine of `totals` (bytes per NUMA node), the
    /// state restored from `<root-dir>/memory_manager_state`.
    /// The Static policy with its state in `root` (None: none); a dry run
    /// reads the state and never writes it.
    pub fn start(cfg: &StaticConfig, totals: &BTreeMap<u32, u64>, hugepages: &BTreeMap<u32, u64>, root: Option<&Path>, dry_run: bool) -> Result<MemoryManager, String> {
        if let Some(n) = cfg.reserved.keys().find(|n| !totals.contains_key(n)) {
            return Err(format!("reservedMemory: NUMA node {n} does not exist on this machine (it has {:?})", totals.keys().collect::<Vec<_>>()));
        }
        // kubelet's static policy will not run without memory set aside
        // for the system.
        if cfg.reserved.values().sum::<u64>() == 0 {
            return Err("reservedMemory: memoryManagerPolicy Static needs memory reserved for the system (kubeReserved, systemReserved or the hard memory.available threshold, and reservedMemory to match), as kubelet does; none is".into());
        }
        let fresh = machine_state(totals, &cfg.reserved, hugepages);
        let mut file = root.map(|r| r.join(state::FILE));
        let a = match file.as_ref().filter(|f| !dry_run || crate::files::dry_run_can_read(f)) {
            Some(f) => state::read(f, &fresh)?,
            None => Assignments { machine: fresh, entries: BTreeMap::new() },
        };
        if dry_run {
            file = None;
        }
        for (id, s) in &a.machine {
            tracing::info!(numa = id, total = s.total, reserved_for_system = s.system_reserved, allocatable = s.allocatable, free = s.free, "memory manager: static policy");
        }
        let m = MemoryManager { inner: Some(Arc::new(Mutex::new(Inner { a, file }))) };
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
        let Some(i) = self.inner() else { return };
        let Some(f) = &i.file else { return };
        if let Err(e) = crate::files::write_atomic(f, &state::encode(&i.a), 0o600) {
            tracing::error!(error = %e, path = %f.display(), "cannot write the memory manager state");
        }
    }

    pub fn hints(&self, pod: &Pod, container: Option<&str>) -> Hints {
        let i = self.inner()?;
        hints(&i.a, pod, container)
    }

    /// Admission with the topology manager's NUMA nodes per container, up
    /// to one container (None: all).
    pub fn admit_aligned(&self, pod: &Pod, upto: Option<&str>, numa: &dyn Fn(&str) -> Option<Mask>) -> Result<(), Refusal> {
        let changed = {
            let Some(mut i) = self.inner() else { return Ok(()) };
            let changed = allocate(&mut i.a, pod, upto, numa)?;
            if changed {
                let uid = pod.metadata.uid.as_deref().unwrap_or_default();
                tracing::info!(pod = %format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or("default"), pod.metadata.name.as_deref().unwrap_or_default()),
                    memory = ?i.a.entries.get(uid), "memory pinned to NUMA nodes");
            }
            changed
        };
        if changed {
            self.save();
        }
        Ok(())
    }

    /// The `cpuset_mems` for a container's creation (None: not pinned).
    pub fn cpuset_mems(&self, uid: &str, container: &str) -> Option<String> {
        let i = self.inner()?;
        let nodes = i.a.numa_of(uid, container)?;
        Some(crate::cpus::format(&nodes))
    }

    /// The pinned memory of a pod's containers, for the pod-resources API
    /// and `nodelet explain`: container → (bytes, NUMA nodes).
    pub fn pinned(&self, uid: &str) -> BTreeMap<String, (u64, BTreeSet<u32>)> {
        let Some(i) = self.inner() else { return BTreeMap::new() };
        i.a.entries
            .get(uid)
            .map(|cs| cs.iter().map(|(c, bs)| (c.clone(), (bs.iter().map(|b| b.size).sum(), bs.iter().flat_map(|b| b.numa.iter().copied()).collect()))).collect())
            .unwrap_or_default()
    }

    /// Each NUMA node's allocatable memory, for the pod-resources API.
    pub fn allocatable(&self) -> BTreeMap<u32, u64> {
        self.inner().map(|i| i.a.machine.iter().map(|(n, s)| (*n, s.allocatable)).collect()).unwrap_or_default()
    }

    pub fn release(&self, uid: &str) {
        let had = self.inner().is_some_and(|mut i| i.a.release(uid));
        if had {
            self.save();
        }
    }

    pub fn retain(&self, keep: &dyn Fn(&str) -> bool) {
        let gone: Vec<String> = self.inner().map(|i| i.a.entries.keys().filter(|u| !keep(u)).cloned().collect()).unwrap_or_default();
        for uid in gone {
            self.release(&uid);
        }
    }
}
