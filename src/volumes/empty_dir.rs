//! emptyDir: a directory under the pod's, or with `medium: Memory` a tmpfs of
//! `sizeLimit` (else the pod's memory limit). Secret and projected volumes
//! use the same tmpfs so that their data never reaches a disk.

use super::*;

/// Whether `path` is a mount point (a different device from its parent).
pub fn is_mount_point(path: &Path) -> bool {
    let (Ok(me), Some(parent)) = (std::fs::metadata(path), path.parent()) else { return false };
    std::fs::metadata(parent).is_ok_and(|p| p.dev() != me.dev())
}

pub(super) fn mount_tmpfs(path: &Path, size: Option<i64>) -> Result<(), String> {
    if is_mount_point(path) {
        return Ok(());
    }
    let mut opts = String::from("mode=0755");
    if let Some(s) = size.filter(|s| *s > 0) {
        opts.push_str(&format!(",size={s}"));
    }
    nix::mount::mount(Some("tmpfs"), path, Some("tmpfs"), nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV, Some(opts.as_str()))
        .map_err(|e| format!("mount tmpfs on {}: {e}", path.display()))
}


/// The sum of the containers' memory limits, if every container has one.
pub(super) fn pod_memory_limit(spec: &PodSpec) -> Option<i64> {
    let mut total = quantity::Amount::ZERO;
    for c in &spec.containers {
        let q = c.resources.as_ref()?.limits.as_ref()?.get("memory")?;
        total = total.saturating_add(quantity::Amount::new(quantity::value(q).ok()?));
    }
    Some(total.get())
}
