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
