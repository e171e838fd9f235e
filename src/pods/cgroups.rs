//! Removing a pod's cgroup once its containers are gone. The runtime removes
//! each container's cgroup but leaves the pod-level directory that runc made
//! as the containers' parent.

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

/// Removes the pod cgroup `parent` (cgroupfs driver) where it is empty.
/// Best effort: a directory still in use stays, and is retried next time.
pub fn remove_pod_cgroup(parent: &str) {
    for dir in directories(Path::new(CGROUP_MOUNT), parent) {
        if !dir.exists() {
            continue;
        }
        // Child cgroups left behind by the runtime go first.
        if let Ok(children) = std::fs::read_dir(&dir) {
            for child in children.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())) {
                let _ = std::fs::remove_dir(child.path());
            }
        }
        if let Err(e) = std::fs::remove_dir(&dir) {
            tracing::debug!(cgroup = %dir.display(), error = %e, "pod cgroup not removed");
        }
    }
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

/// What a pod asks for as a whole: the larger of its app containers' sum
/// and its largest init container, as kubelet's ResourceConfigForPod does.
pub fn pod_limits(pod: &k8s_openapi::api::core::v1::Pod) -> PodLimits {
    use super::quantity;
    let spec = pod.spec.clone().unwrap_or_default();
    let get = |c: &k8s_openapi::api::core::v1::Container, field: &str, res: &str, milli: bool| -> Option<i64> {
        let r = c.resources.as_ref()?;
        let m = if field == "limits" { r.limits.as_ref()? } else { r.requests.as_ref()? };
        let q = m.get(res)?;
        if milli { quantity::milli(q).ok() } else { quantity::value(q).ok() }
    };
    let total = |field: &str, res: &str, milli: bool, all: bool| -> Option<i64> {
        let mut sum = 0i64;
        for c in &spec.containers {
            match get(c, field, res, milli).or_else(|| if field == "requests" { get(c, "limits", res, milli) } else { None }) {
                Some(v) => sum += v,
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
    let cpu_request = total("requests", "cpu", true, false).unwrap_or(0);
    let shares = if class == super::qos::QosClass::BestEffort {
        2
    } else {
        (cpu_request.saturating_mul(1024) / 1000).clamp(2, 262_144)
    };
    let quota = total("limits", "cpu", true, true).filter(|v| *v > 0).map(|m| (m * super::container::CPU_PERIOD_US / 1000).max(1000));
    PodLimits { cpu_shares: shares, cpu_quota: quota, memory: total("limits", "memory", false, true).filter(|v| *v > 0) }
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Creates the pod's cgroup (cgroupfs driver) with its limits before the
/// sandbox starts in it, and gives BestEffort pods' QoS level the minimum
/// CPU weight, as kubelet's QoS container manager does.
pub fn ensure_pod_cgroup(parent: &str, limits: &PodLimits) -> std::io::Result<()> {
    ensure_in(Path::new(CGROUP_MOUNT), parent, limits)
}

fn ensure_in(root: &Path, parent: &str, limits: &PodLimits) -> std::io::Result<()> {
    let rel = parent.trim_start_matches('/');
    if rel.is_empty() {
        return Ok(());
    }
    if root.join("cgroup.controllers").exists() {
        // cgroup v2: enable cpu and memory down the path, then set.
        let mut dir = root.to_path_buf();
        for part in Path::new(rel).components() {
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), "+cpu +memory");
            dir = dir.join(part);
            std::fs::create_dir_all(&dir)?;
        }
        let weight = 1 + ((limits.cpu_shares - 2) * 9999) / 262_142;
        write(&dir.join("cpu.weight"), &weight.to_string())?;
        let max = limits.cpu_quota.map_or("max".to_string(), |q| q.to_string());
        write(&dir.join("cpu.max"), &format!("{max} {}", super::container::CPU_PERIOD_US))?;
        write(&dir.join("memory.max"), &limits.memory.map_or("max".to_string(), |m| m.to_string()))?;
        return Ok(());
    }
    let cpu = root.join("cpu").join(rel);
    std::fs::create_dir_all(&cpu)?;
    if let Some(besteffort) = cpu.parent().filter(|p| p.ends_with("besteffort")) {
        write(&besteffort.join("cpu.shares"), "2")?;
    }
    write(&cpu.join("cpu.shares"), &limits.cpu_shares.to_string())?;
    write(&cpu.join("cpu.cfs_period_us"), &super::container::CPU_PERIOD_US.to_string())?;
    write(&cpu.join("cpu.cfs_quota_us"), &limits.cpu_quota.unwrap_or(-1).to_string())?;
    let mem = root.join("memory").join(rel);
    std::fs::create_dir_all(&mem)?;
    if let Some(m) = limits.memory {
        write(&mem.join("memory.limit_in_bytes"), &m.to_string())?;
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
    fn v1_files_are_written() {
        let tmp = tempfile::tempdir().unwrap();
        let l = PodLimits { cpu_shares: 512, cpu_quota: Some(50_000), memory: Some(1 << 27) };
        ensure_in(tmp.path(), "/root/kubepods/besteffort/podx", &l).unwrap();
        let read = |p: &str| std::fs::read_to_string(tmp.path().join(p)).unwrap();
        assert_eq!(read("cpu/root/kubepods/besteffort/podx/cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu/root/kubepods/besteffort/cpu.shares"), "2");
        assert_eq!(read("memory/root/kubepods/besteffort/podx/memory.limit_in_bytes"), (1 << 27).to_string());
    }
}
