//! Removing a pod's cgroup once its containers are gone. The runtime removes
//! each container's cgroup but leaves the pod-level directory that runc made
//! as the containers' parent.
#![deny(clippy::arithmetic_side_effects)]

use std::path::{Path, PathBuf};

const CGROUP_MOUNT: &str = "/sys/fs/cgroup";

/// Every directory the cgroupfs-driver parent `parent` has across the
/// mounted hierarchies (v1 controllers, or the v2 unified tree).
fn directories(root: &Path, parent: &str) -> Vec<PathBuf> {
    let rel = parent.trim_start_matches('/');
    if rel.is_empty() {
        return Vec::new();
    }
    if root.join("cgroup.controllers").exists() {
        return vec![root.join(rel)];
    }
    let Ok(entries) = std::fs::read_dir(root) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path().join(rel))
        .collect()
}

/// Removes the pod cgroup `parent` (cgroupfs driver), child cgroups the
/// runtime left first. An error names the directory that stays (still in
/// use); the caller retries.
pub fn remove_pod_cgroup(parent: &str) -> Result<(), String> {
    for dir in directories(Path::new(CGROUP_MOUNT), parent) {
        if !dir.exists() {
            continue;
        }
        if let Ok(children) = std::fs::read_dir(&dir) {
            for child in children.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
                let _ = std::fs::remove_dir(child.path());
            }
        }
        match std::fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("removing the pod cgroup {}: {e}", dir.display())),
        }
    }
    Ok(())
}

/// The pod-level limits kubelet puts on a pod's cgroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLimits {
    pub cpu_shares: i64,
    /// CFS quota in µs per period, when every container limits CPU.
    pub cpu_quota: Option<i64>,
    /// When every container limits memory.
    pub memory: Option<i64>,
}

impl PodLimits {
    /// The larger of two (no limit is the largest): what a pod cgroup holds
    /// while a resize moves its containers from one to the other.
    pub fn max(&self, other: &PodLimits) -> PodLimits {
        let both = |a: Option<i64>, b: Option<i64>| a.zip(b).map(|(a, b)| a.max(b));
        PodLimits { cpu_shares: self.cpu_shares.max(other.cpu_shares), cpu_quota: both(self.cpu_quota, other.cpu_quota), memory: both(self.memory, other.memory) }
    }
}

/// What a pod asks for as a whole: the larger of its app containers' sum
/// and its largest init container, as kubelet's ResourceConfigForPod does.
pub fn pod_limits(pod: &k8s_openapi::api::core::v1::Pod) -> PodLimits {
    use crate::resources::{self as quantity, Amount};
    let spec = pod.spec.clone().unwrap_or_default();
    let get = |c: &k8s_openapi::api::core::v1::Container, field: &str, res: &str, milli: bool| -> Option<Amount> {
        let r = c.resources.as_ref()?;
        let m = if field == "limits" { r.limits.as_ref()? } else { r.requests.as_ref()? };
        let q = m.get(res)?;
        let v = if milli { quantity::milli(q).ok() } else { quantity::value(q).ok() };
        v.map(Amount::new)
    };
    // Sums saturate: two containers of 5Ei are more than any node has, not
    // a negative number that drops the limit.
    let total = |field: &str, res: &str, milli: bool, all: bool| -> Option<Amount> {
        let mut sum = Amount::ZERO;
        for c in &spec.containers {
            match get(c, field, res, milli).or_else(|| if field == "requests" { get(c, "limits", res, milli) } else { None }) {
                Some(v) => sum = sum.saturating_add(v),
                None if all => return None,
                None => {}
            }
        }
        let mut best = sum;
        for c in spec.init_containers.iter().flatten() {
            match get(c, field, res, milli) {
                Some(v) => best = best.max(v),
                None if all => return None,
                None => {}
            }
        }
        Some(best)
    };
    let class = super::qos::qos_class(&spec);
    // The RuntimeClass's overhead (spec.overhead, set by the apiserver's
    // admission) counts on top of the containers', as kubelet's
    // ResourceConfigForPod adds it.
    let overhead = |res: &str, milli: bool| super::admission::overhead(&spec, res, milli);
    let cpu_request = total("requests", "cpu", true, false).unwrap_or(Amount::ZERO).saturating_add(overhead("cpu", true));
    let shares = if class == super::qos::QosClass::BestEffort { 2 } else { quantity::cpu_shares(cpu_request) };
    let quota = total("limits", "cpu", true, true).map(|v| v.saturating_add(overhead("cpu", true))).and_then(quantity::cpu_quota);
    let memory = total("limits", "memory", false, true).map(|v| v.saturating_add(overhead("memory", false))).filter(|v| !v.is_zero()).map(Amount::get);
    PodLimits { cpu_shares: shares, cpu_quota: quota, memory }
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Creates the pod's cgroup (cgroupfs driver) with its limits before the
/// sandbox starts in it, and gives BestEffort pods' QoS level the minimum
/// CPU weight, as kubelet's QoS container manager does.
/// `pids` is `podPidsLimit` (None: no limit), as pids.max.
pub fn ensure_pod_cgroup(parent: &str, limits: &PodLimits, pids: Option<i64>) -> std::io::Result<()> {
    ensure_in(Path::new(CGROUP_MOUNT), parent, limits, pids)
}

fn ensure_in(root: &Path, parent: &str, limits: &PodLimits, pids: Option<i64>) -> std::io::Result<()> {
    let pids_max = pids.map_or("max".to_string(), |n| n.to_string());
    let rel = parent.trim_start_matches('/');
    if rel.is_empty() {
        return Ok(());
    }
    if root.join("cgroup.controllers").exists() {
        // cgroup v2: enable cpu and memory down the path, then set.
        let mut dir = root.to_path_buf();
        for part in Path::new(rel).components() {
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+cpu +memory +pids");
            dir = dir.join(part);
            std::fs::create_dir_all(&dir)?;
        }
        let weight = crate::resources::cpu_weight(limits.cpu_shares);
        write(&dir.join("cpu.weight"), &weight.to_string())?;
        let max = limits.cpu_quota.map_or("max".to_string(), |q| q.to_string());
        write(&dir.join("cpu.max"), &format!("{max} {}", crate::resources::CPU_PERIOD_US))?;
        write(&dir.join("memory.max"), &limits.memory.map_or("max".to_string(), |m| m.to_string()))?;
        write(&dir.join("pids.max"), &pids_max)?;
        return Ok(());
    }
    let cpu = root.join("cpu").join(rel);
    std::fs::create_dir_all(&cpu)?;
    if let Some(besteffort) = cpu.parent().filter(|p| p.ends_with("besteffort")) {
        write(&besteffort.join("cpu.shares"), "2")?;
    }
    write(&cpu.join("cpu.shares"), &limits.cpu_shares.to_string())?;
    write(&cpu.join("cpu.cfs_period_us"), &crate::resources::CPU_PERIOD_US.to_string())?;
    write(&cpu.join("cpu.cfs_quota_us"), &limits.cpu_quota.unwrap_or(-1).to_string())?;
    let mem = root.join("memory").join(rel);
    std::fs::create_dir_all(&mem)?;
    if let Some(m) = limits.memory {
        write(&mem.join("memory.limit_in_bytes"), &m.to_string())?;
    }
    let pid_dir = root.join("pids").join(rel);
    if pids.is_some() || root.join("pids").is_dir() {
        std::fs::create_dir_all(&pid_dir)?;
        write(&pid_dir.join("pids.max"), &pids_max)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(containers: serde_json::Value, init: serde_json::Value) -> k8s_openapi::api::core::v1::Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "p"}, "spec": {"containers": containers, "initContainers": init}})).unwrap()
    }

    #[test]
    fn pod_limits_sum_containers_and_respect_init() {
        let p = pod(
            serde_json::json!([
                {"name": "a", "resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "500m", "memory": "128Mi"}}},
                {"name": "b", "resources": {"limits": {"cpu": "1", "memory": "64Mi"}}}
            ]),
            serde_json::json!([{"name": "i", "resources": {"limits": {"cpu": "2", "memory": "32Mi"}}}]),
        );
        let l = pod_limits(&p);
        assert_eq!(l.cpu_shares, 1250 * 1024 / 1000, "250m + 1 (requests default to limits)");
        assert_eq!(l.cpu_quota, Some(200_000), "the init container's 2 CPUs beat the sum of 1.5");
        assert_eq!(l.memory, Some(192 << 20));
        let open = pod(serde_json::json!([{"name": "a", "resources": {"limits": {"memory": "1Gi"}}}, {"name": "b"}]), serde_json::json!([]));
        let l = pod_limits(&open);
        assert_eq!((l.cpu_quota, l.memory), (None, None), "one unlimited container leaves the pod unlimited");
        let be = pod(serde_json::json!([{"name": "a"}]), serde_json::json!([]));
        assert_eq!(pod_limits(&be).cpu_shares, 2);
    }

    #[test]
    fn huge_limits_mean_unlimited_never_a_small_number() {
        // limits: {cpu: 1e11}: the quota used to wrap and throttle the pod to 1 % of a CPU.
        let p = pod(serde_json::json!([{"name": "a", "resources": {"limits": {"cpu": "1e11"}}}]), serde_json::json!([]));
        let l = pod_limits(&p);
        assert_eq!(l.cpu_quota, None, "beyond what the kernel can enforce: no quota");
        assert_eq!(l.cpu_shares, 262_144);
        // Two containers of 5Ei: the sum used to wrap negative and drop the memory limit.
        let p = pod(
            serde_json::json!([{"name": "a", "resources": {"limits": {"memory": "5Ei"}}}, {"name": "b", "resources": {"limits": {"memory": "5Ei"}}}]),
            serde_json::json!([]),
        );
        assert_eq!(pod_limits(&p).memory, Some(i64::MAX), "saturated: more than any node has");
    }

    #[test]
    fn v1_files_are_written() {
        let tmp = tempfile::tempdir().unwrap();
        let l = PodLimits { cpu_shares: 512, cpu_quota: Some(50_000), memory: Some(1 << 27) };
        ensure_in(tmp.path(), "/root/kubepods/besteffort/podx", &l, Some(1024)).unwrap();
        let read = |p: &str| std::fs::read_to_string(tmp.path().join(p)).unwrap();
        assert_eq!(read("cpu/root/kubepods/besteffort/podx/cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu/root/kubepods/besteffort/cpu.shares"), "2");
        assert_eq!(read("memory/root/kubepods/besteffort/podx/memory.limit_in_bytes"), (1 << 27).to_string());
        assert_eq!(read("pids/root/kubepods/besteffort/podx/pids.max"), "1024", "podPidsLimit");
    }
}
