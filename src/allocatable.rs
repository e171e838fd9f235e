//! Node Allocatable, as kubelet computes and enforces it.
//!
//! Allocatable = capacity − kubeReserved − systemReserved − the hard
//! eviction thresholds (memory.available for memory, nodefs.available for
//! ephemeral storage, pid.available for PIDs), never below zero; memory
//! also loses what huge pages hold. The Node reports it, pods are admitted
//! against it, and the downward API's default limits are it. With
//! `enforceNodeAllocatable: [pods]` (the default) the pods' top-level
//! cgroup (`kubepods`) is limited to capacity − the reservations (the
//! eviction thresholds are left for the eviction manager to defend, as
//! kubelet does); `kube-reserved` / `system-reserved` limit the named
//! cgroups to their reservations.
#![deny(clippy::arithmetic_side_effects)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::allocatable::{AllocatableConfig, Enforce, Reservation};
use crate::config::eviction::{Signal, Threshold};

/// What the machine has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capacity {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub ephemeral_storage_bytes: i64,
    /// The most processes the kernel allows (`kernel.pid_max`).
    pub pids: i64,
    /// `hugepages-2Mi` → bytes the pool holds.
    pub hugepages: BTreeMap<String, i64>,
}

/// What pods may be given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocatable {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub ephemeral_storage_bytes: i64,
    pub pids: i64,
    pub hugepages: BTreeMap<String, i64>,
}

fn sum(a: &Reservation, b: &Reservation) -> Reservation {
    Reservation {
        cpu_millis: a.cpu_millis.saturating_add(b.cpu_millis),
        memory_bytes: a.memory_bytes.saturating_add(b.memory_bytes),
        ephemeral_storage_bytes: a.ephemeral_storage_bytes.saturating_add(b.ephemeral_storage_bytes),
        pids: a.pids.saturating_add(b.pids),
    }
}

/// What the hard eviction thresholds keep free, against `cap`.
pub fn hard_eviction(thresholds: &[Threshold], cap: &Capacity) -> Reservation {
    let mut r = Reservation::default();
    for t in thresholds.iter().filter(|t| t.grace.is_none()) {
        match t.signal {
            Signal::MemoryAvailable => r.memory_bytes = r.memory_bytes.max(t.value.of(cap.memory_bytes)),
            Signal::NodefsAvailable => r.ephemeral_storage_bytes = r.ephemeral_storage_bytes.max(t.value.of(cap.ephemeral_storage_bytes)),
            Signal::PidAvailable => r.pids = r.pids.max(t.value.of(cap.pids)),
            _ => {}
        }
    }
    r
}

fn less(cap: i64, by: i64) -> i64 {
    cap.saturating_sub(by).max(0)
}

/// Node Allocatable.
pub fn allocatable(cap: &Capacity, cfg: &AllocatableConfig, thresholds: &[Threshold]) -> Allocatable {
    let r = sum(&sum(&cfg.kube_reserved, &cfg.system_reserved), &hard_eviction(thresholds, cap));
    let huge: i64 = cap.hugepages.values().fold(0i64, |a, b| a.saturating_add(*b));
    Allocatable {
        cpu_millis: less(cap.cpu_millis, r.cpu_millis),
        memory_bytes: less(less(cap.memory_bytes, r.memory_bytes), huge),
        ephemeral_storage_bytes: less(cap.ephemeral_storage_bytes, r.ephemeral_storage_bytes),
        pids: less(cap.pids, r.pids),
        hugepages: cap.hugepages.clone(),
    }
}

/// Limits for one cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub cpu_shares: i64,
    pub memory_bytes: Option<i64>,
    pub pids: Option<i64>,
}

/// The pods' top-level cgroup: capacity less the reservations when pods
/// are enforced, else capacity (kubelet sets it either way: the default
/// CPU weight of a new cgroup would starve the pods).
pub fn pods_limits(cap: &Capacity, cfg: &AllocatableConfig) -> Limits {
    let r = if cfg.enforce.contains(&Enforce::Pods) { sum(&cfg.kube_reserved, &cfg.system_reserved) } else { Reservation::default() };
    Limits {
        cpu_shares: crate::resources::cpu_shares(crate::resources::Amount::new(less(cap.cpu_millis, r.cpu_millis))),
        memory_bytes: Some(less(cap.memory_bytes, r.memory_bytes)),
        pids: Some(less(cap.pids, r.pids)),
    }
}

/// A reservation as limits on its cgroup (what it does not name stays
/// unlimited).
pub fn reserved_limits(r: &Reservation) -> Limits {
    Limits {
        cpu_shares: if r.cpu_millis > 0 { crate::resources::cpu_shares(crate::resources::Amount::new(r.cpu_millis)) } else { 1024 },
        memory_bytes: (r.memory_bytes > 0).then_some(r.memory_bytes),
        pids: (r.pids > 0).then_some(r.pids),
    }
}

/// This machine's capacity: `cpu_millis` and `memory_bytes` as the agent
/// found them, the filesystem of `root_dir`, `kernel.pid_max`, the huge
/// page pools.
pub fn capacity(cpu_millis: i64, memory_bytes: i64, root_dir: &Path) -> Capacity {
    let storage = nix::sys::statvfs::statvfs(root_dir)
        .or_else(|_| nix::sys::statvfs::statvfs("/"))
        .map(|s| (s.blocks() as i64).saturating_mul(s.fragment_size() as i64))
        .unwrap_or(0);
    let pids = std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(32768);
    Capacity { cpu_millis, memory_bytes, ephemeral_storage_bytes: storage, pids, hugepages: hugepages(Path::new("/sys/kernel/mm/hugepages")) }
}

/// The huge page pools: `hugepages-2048kB/nr_hugepages` → `hugepages-2Mi`.
/// kubelet reports every page size the machine supports, empty or not.
pub fn hugepages(dir: &Path) -> BTreeMap<String, i64> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return out };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(kb) = name.strip_prefix("hugepages-").and_then(|s| s.strip_suffix("kB")).and_then(|s| s.parse::<i64>().ok()) else { continue };
        let pages: i64 = std::fs::read_to_string(e.path().join("nr_hugepages")).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        let size = if kb % (1 << 20) == 0 { format!("{}Gi", kb >> 20) } else if kb % 1024 == 0 { format!("{}Mi", kb >> 10) } else { format!("{kb}Ki") };
        out.insert(format!("hugepages-{size}"), pages.saturating_mul(kb.saturating_mul(1024)));
    }
    out
}

/// Quantity text for bytes: `Ki` when whole, else bytes.
pub fn bytes_quantity(b: i64) -> String {
    if b % 1024 == 0 { format!("{}Ki", b / 1024) } else { b.to_string() }
}

/// Quantity text for millicores: whole cores when whole.
pub fn cpu_quantity(m: i64) -> String {
    if m % 1000 == 0 { (m / 1000).to_string() } else { format!("{m}m") }
}

/// The directories of cgroup `rel` (cgroupfs naming) for the controllers
/// that carry limits: (cpu, memory, pids) on v1, the one directory on v2.
fn dirs(root: &Path, rel: &str) -> Option<(PathBuf, PathBuf, PathBuf)> {
    if !crate::names::is_cgroup_name(rel) {
        return None;
    }
    let rel = rel.trim_start_matches('/');
    if root.join("cgroup.controllers").exists() {
        let d = root.join(rel);
        return Some((d.clone(), d.clone(), d));
    }
    Some((root.join("cpu").join(rel), root.join("memory").join(rel), root.join("pids").join(rel)))
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("{}: {e}", path.display()))
}

/// Writes `limits` on cgroup `rel` under `root`, creating it when `create`.
pub fn apply(root: &Path, rel: &str, limits: &Limits, create: bool) -> Result<(), String> {
    let (cpu, mem, pids) = dirs(root, rel).ok_or_else(|| format!("no cgroup {rel}"))?;
    let v2 = root.join("cgroup.controllers").exists();
    for d in [&cpu, &mem, &pids] {
        if create {
            if v2 {
                // Enable the controllers down the path.
                let mut at = root.to_path_buf();
                for part in Path::new(rel.trim_start_matches('/')).components() {
                    let _ = std::fs::write(at.join("cgroup.subtree_control"), "+cpu +memory +pids");
                    at = at.join(part);
                }
            }
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        } else if !d.is_dir() {
            return Err(format!("the cgroup {} does not exist", d.display()));
        }
    }
    // A limit the reservation does not name is not written: the cgroup
    // keeps what its owner set (kubelet updates only the fields it has).
    let files: Vec<(PathBuf, Option<String>)> = if v2 {
        vec![
            (cpu.join("cpu.weight"), Some(crate::resources::cpu_weight(limits.cpu_shares).to_string())),
            (mem.join("memory.max"), limits.memory_bytes.map(|n| n.to_string())),
            (pids.join("pids.max"), limits.pids.map(|n| n.to_string())),
        ]
    } else {
        vec![
            (cpu.join("cpu.shares"), Some(limits.cpu_shares.to_string())),
            (mem.join("memory.limit_in_bytes"), limits.memory_bytes.map(|n| n.to_string())),
            (pids.join("pids.max"), limits.pids.map(|n| n.to_string())),
        ]
    };
    for (file, value) in files {
        let Some(value) = value else { continue };
        if v2 && !file.exists() {
            // A controller the parent does not delegate has no file here:
            // said, not fatal (kubelet needs them enabled on cgroup v2 too).
            tracing::warn!(file = %file.display(), "the cgroup controller is not enabled here; this limit is not set");
            continue;
        }
        write(&file, &value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::allocatable::AllocatableFields;
    use crate::config::eviction::{Amount, EvictionConfig, EvictionFields};

    fn cap() -> Capacity {
        Capacity {
            cpu_millis: 4000,
            memory_bytes: 16 << 30,
            ephemeral_storage_bytes: 100 << 30,
            pids: 4_194_304,
            hugepages: BTreeMap::from([("hugepages-2Mi".into(), 512 << 20), ("hugepages-1Gi".into(), 0)]),
        }
    }

    #[test]
    fn allocatable_is_capacity_less_reservations_and_hard_thresholds() {
        let cfg = AllocatableConfig::resolve(
            &AllocatableFields {
                kube_reserved: Some(BTreeMap::from([("cpu".into(), "100m".into()), ("memory".into(), "1Gi".into()), ("pid".into(), "1000".into())])),
                system_reserved: Some(BTreeMap::from([("cpu".into(), "400m".into()), ("memory".into(), "512Mi".into()), ("ephemeral-storage".into(), "10Gi".into())])),
                ..Default::default()
            },
            "k",
        )
        .unwrap();
        let hard = EvictionConfig::resolve(&EvictionFields::default(), "k").unwrap().thresholds;
        let a = allocatable(&cap(), &cfg, &hard);
        assert_eq!(a.cpu_millis, 3500);
        // 16Gi − 1Gi − 512Mi − 100Mi (memory.available) − 512Mi of huge pages.
        assert_eq!(a.memory_bytes, (16 << 30) - (1 << 30) - (512 << 20) - (100 << 20) - (512 << 20));
        // 100Gi − 10Gi − 10 % (nodefs.available).
        assert_eq!(a.ephemeral_storage_bytes, (100i64 << 30) - (10 << 30) - (10 << 30));
        assert_eq!(a.pids, 4_194_304 - 1000);
        // A soft threshold takes nothing; pid.available does.
        let t = vec![
            Threshold { signal: Signal::PidAvailable, value: Amount::Percent(10.0), grace: None, min_reclaim: None },
            Threshold { signal: Signal::MemoryAvailable, value: Amount::Quantity(4 << 30), grace: Some(std::time::Duration::from_secs(60)), min_reclaim: None },
        ];
        let a = allocatable(&cap(), &AllocatableConfig::default(), &t);
        assert_eq!(a.pids, 4_194_304 - 419_430);
        assert_eq!(a.memory_bytes, (16 << 30) - (512 << 20));
        // Never below zero.
        let huge = AllocatableConfig { kube_reserved: Reservation { cpu_millis: 9000, memory_bytes: 1 << 40, ..Default::default() }, ..Default::default() };
        let a = allocatable(&cap(), &huge, &[]);
        assert_eq!((a.cpu_millis, a.memory_bytes), (0, 0));
    }

    #[test]
    fn the_pods_cgroup_gets_capacity_less_reservations_only_when_enforced() {
        let cfg = AllocatableConfig {
            kube_reserved: Reservation { cpu_millis: 1000, memory_bytes: 1 << 30, pids: 100, ..Default::default() },
            ..Default::default()
        };
        let l = pods_limits(&cap(), &cfg);
        assert_eq!(l, Limits { cpu_shares: 3072, memory_bytes: Some(15 << 30), pids: Some(4_194_304 - 100) });
        let open = AllocatableConfig { enforce: Default::default(), ..cfg.clone() };
        assert_eq!(pods_limits(&cap(), &open).memory_bytes, Some(16 << 30));
        assert_eq!(reserved_limits(&cfg.kube_reserved), Limits { cpu_shares: 1024, memory_bytes: Some(1 << 30), pids: Some(100) });
        assert_eq!(reserved_limits(&Reservation::default()).memory_bytes, None);
    }

    #[test]
    fn quantities_and_hugepage_pools() {
        assert_eq!(bytes_quantity(16 << 30), "16777216Ki");
        assert_eq!(bytes_quantity(1000), "1000");
        assert_eq!((cpu_quantity(4000), cpu_quantity(3500)), ("4".to_string(), "3500m".to_string()));
        let dir = tempfile::tempdir().unwrap();
        for (name, n) in [("hugepages-2048kB", "3"), ("hugepages-1048576kB", "0")] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("nr_hugepages"), n).unwrap();
        }
        assert_eq!(hugepages(dir.path()), BTreeMap::from([("hugepages-1Gi".to_string(), 0), ("hugepages-2Mi".to_string(), 3 << 21)]));
    }

    #[test]
    fn limits_are_written_to_a_cgroup_tree() {
        let root = tempfile::tempdir().unwrap();
        let l = Limits { cpu_shares: 3072, memory_bytes: Some(15 << 30), pids: None };
        apply(root.path(), "/test/kubepods", &l, true).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.path().join(p)).unwrap();
        assert_eq!(read("cpu/test/kubepods/cpu.shares"), "3072");
        assert_eq!(read("memory/test/kubepods/memory.limit_in_bytes"), (15i64 << 30).to_string());
        assert!(!root.path().join("pids/test/kubepods/pids.max").exists(), "a limit not named is not written");
        let err = apply(root.path(), "/system.slice", &l, false).unwrap_err();
        assert!(err.contains("does not exist"), "{err}");
        // A name that climbs out of the cgroup mount is refused, whatever exists.
        std::fs::create_dir_all(root.path().join("cpu/x")).unwrap();
        let err = apply(root.path(), "/x/../../cpu/x", &l, false).unwrap_err();
        assert!(err.contains("no cgroup"), "{err}");
        // A reserved cgroup the operator limited keeps what the reservation
        // does not name (the -compressible forms name only CPU).
        for c in ["cpu", "memory", "pids"] {
            std::fs::create_dir_all(root.path().join(c).join("system.slice")).unwrap();
        }
        std::fs::write(root.path().join("memory/system.slice/memory.limit_in_bytes"), "4294967296").unwrap();
        apply(root.path(), "/system.slice", &Limits { cpu_shares: 512, memory_bytes: None, pids: None }, false).unwrap();
        assert_eq!(read("cpu/system.slice/cpu.shares"), "512");
        assert_eq!(read("memory/system.slice/memory.limit_in_bytes"), "4294967296");
    }
}
