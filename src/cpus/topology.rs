//! The node's CPU topology from sysfs: every online CPU with its socket
//! (physical package), core and NUMA node; and kubelet's way of taking CPUs
//! by topology.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::CpuSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuInfo {
    pub socket: u32,
    /// The core's id within its socket.
    pub core: u32,
    pub numa: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Topology {
    pub cpus: BTreeMap<u32, CpuInfo>,
}

fn read_u32(p: &Path) -> Option<u32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

impl Topology {
    /// From `<root>/devices/system/cpu` and `.../node` (root: `/sys`).
    pub fn read(sys: &Path) -> Result<Topology, String> {
        let cpu_dir = sys.join("devices/system/cpu");
        let online = std::fs::read_to_string(cpu_dir.join("online")).map_err(|e| format!("{}: {e}", cpu_dir.join("online").display()))?;
        let online = super::parse(online.trim()).map_err(|e| format!("{}: {e}", cpu_dir.join("online").display()))?;
        let mut numa_of: BTreeMap<u32, u32> = BTreeMap::new();
        if let Ok(nodes) = std::fs::read_dir(sys.join("devices/system/node")) {
            for n in nodes.flatten() {
                let name = n.file_name().to_string_lossy().into_owned();
                let Some(id) = name.strip_prefix("node").and_then(|s| s.parse::<u32>().ok()) else { continue };
                if let Ok(list) = std::fs::read_to_string(n.path().join("cpulist")) {
                    for cpu in super::parse(list.trim()).unwrap_or_default() {
                        numa_of.insert(cpu, id);
                    }
                }
            }
        }
        let mut cpus = BTreeMap::new();
        for cpu in online {
            let t = cpu_dir.join(format!("cpu{cpu}/topology"));
            let socket = read_u32(&t.join("physical_package_id")).unwrap_or(0);
            let core = read_u32(&t.join("core_id")).unwrap_or(cpu);
            cpus.insert(cpu, CpuInfo { socket, core, numa: numa_of.get(&cpu).copied().unwrap_or(0) });
        }
        if cpus.is_empty() {
            return Err(format!("{}: no online CPU", cpu_dir.display()));
        }
        Ok(Topology { cpus })
    }

    /// A synthetic topology: `sockets` × `cores` × `threads`, CPUs numbered
    /// as Linux numbers them on most x86 machines (first threads of every
    /// core, then the second ones), one NUMA node per socket unless `numa`
    /// splits sockets further.
    pub fn synthetic(sockets: u32, cores: u32, threads: u32, numa_per_socket: u32) -> Topology {
        let mut cpus = BTreeMap::new();
        let per_thread = sockets * cores;
        for t in 0..threads {
            for s in 0..sockets {
                for c in 0..cores {
                    let id = t * per_thread + s * cores + c;
                    let numa = s * numa_per_socket + c * numa_per_socket / cores.max(1);
                    cpus.insert(id, CpuInfo { socket: s, core: c, numa });
                }
            }
        }
        Topology { cpus }
    }

    pub fn cpus(&self) -> CpuSet {
        self.cpus.keys().copied().collect()
    }

    fn cores(&self) -> BTreeMap<(u32, u32), CpuSet> {
        let mut m: BTreeMap<(u32, u32), CpuSet> = BTreeMap::new();
        for (cpu, i) in &self.cpus {
            m.entry((i.socket, i.core)).or_default().insert(*cpu);
        }
        m
    }

    pub fn threads_per_core(&self) -> u32 {
        self.cores().values().map(|s| s.len() as u32).max().unwrap_or(1)
    }

    /// `n` CPUs of `free` by topology, as kubelet's takeByTopology: whole
    /// sockets first, then whole cores (from the sockets with the fewest
    /// free CPUs, to pack), then single CPUs (those whose core is already
    /// partly used first); with `full_cores`, only whole cores. None when
    /// `free` cannot give them.
    pub fn take(&self, free: &CpuSet, n: usize, full_cores: bool) -> Option<CpuSet> {
        if n == 0 {
            return Some(CpuSet::new());
        }
        let mut taken = CpuSet::new();
        let mut left: CpuSet = free.clone();
        let mut sockets: BTreeMap<u32, CpuSet> = BTreeMap::new();
        for (cpu, i) in &self.cpus {
            sockets.entry(i.socket).or_default().insert(*cpu);
        }
        // Whole free sockets.
        for all in sockets.values() {
            if n - taken.len() >= all.len() && all.is_subset(&left) {
                taken.extend(all.iter().copied());
                left.retain(|c| !all.contains(c));
            }
        }
        // Whole free cores, packing onto the sockets with the fewest free CPUs.
        let free_in = |left: &CpuSet, s: u32| sockets.get(&s).map_or(0, |all| all.intersection(left).count());
        let mut cores: Vec<((u32, u32), CpuSet)> = self.cores().into_iter().collect();
        cores.sort_by_key(|((s, c), _)| (free_in(&left, *s), *s, *c));
        for (_, cpus) in &cores {
            if n - taken.len() >= cpus.len() && cpus.is_subset(&left) {
                taken.extend(cpus.iter().copied());
                left.retain(|c| !cpus.contains(c));
            }
        }
        if full_cores {
            return (taken.len() == n).then_some(taken);
        }
        // Single CPUs: of partly used cores first, then by socket and id.
        let mut singles: Vec<u32> = left.iter().copied().collect();
        let core_of = |cpu: u32| self.cpus.get(&cpu).map(|i| (i.socket, i.core));
        singles.sort_by_key(|cpu| {
            let partly = cores.iter().find(|(k, _)| Some(*k) == core_of(*cpu)).is_some_and(|(_, cpus)| !cpus.is_subset(free));
            (!partly, self.cpus.get(cpu).map_or(0, |i| i.socket), *cpu)
        });
        for cpu in singles {
            if taken.len() == n {
                break;
            }
            taken.insert(cpu);
        }
        (taken.len() == n).then_some(taken)
    }

    /// The NUMA nodes of `set`.
    pub fn numa_nodes(&self, set: &CpuSet) -> BTreeSet<u32> {
        set.iter().filter_map(|c| self.cpus.get(c).map(|i| i.numa)).collect()
    }
}
