//! Per-volume figures for `/stats/summary` (kubelet's `volume` entries of a
//! pod): what the volume's directory holds (as `du` counts it: allocated
//! blocks and inodes) and what its filesystem has left (statfs). Walking a
//! volume costs I/O, so each one is measured at most once a minute
//! (kubelet's `volumeStatsAggPeriod`).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// kubelet's volumeStatsAggPeriod.
pub const REFRESH: Duration = Duration::from_secs(60);

/// One volume of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeUsage {
    pub name: String,
    /// nanoseconds since the epoch of the measurement.
    pub time: i64,
    pub used_bytes: u64,
    pub inodes_used: u64,
    pub capacity_bytes: u64,
    pub available_bytes: u64,
    pub inodes: u64,
    pub inodes_free: u64,
    /// On the same filesystem as the root dir (counts as the pod's
    /// ephemeral storage; a memory-backed emptyDir does not).
    pub on_node_disk: bool,
}

/// Allocated bytes and inodes under `dir`, not crossing into other
/// filesystems (as `du -x`).
pub fn du(dir: &Path) -> (u64, u64) {
    let Ok(top) = std::fs::symlink_metadata(dir) else { return (0, 0) };
    let dev = top.dev();
    let (mut bytes, mut inodes) = (top.blocks().saturating_mul(512), 1u64);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.dev() != dev {
                continue;
            }
            bytes = bytes.saturating_add(m.blocks().saturating_mul(512));
            inodes = inodes.saturating_add(1);
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (bytes, inodes)
}

// statvfs' field types differ between platforms: the casts are not useless
// everywhere.
#[allow(clippy::unnecessary_cast)]
fn measure(name: &str, dir: &Path, root_dev: Option<u64>) -> VolumeUsage {
    let (used_bytes, inodes_used) = du(dir);
    let mut u = VolumeUsage { name: name.to_string(), time: crate::runtime::unix_nanos(), used_bytes, inodes_used, ..Default::default() };
    if let Ok(s) = nix::sys::statvfs::statvfs(dir) {
        let f = s.fragment_size() as u64;
        u.capacity_bytes = s.blocks() as u64 * f;
        u.available_bytes = s.blocks_available() as u64 * f;
        u.inodes = s.files() as u64;
        u.inodes_free = s.files_free() as u64;
    }
    u.on_node_disk = root_dev.is_some_and(|d| std::fs::metadata(dir).is_ok_and(|m| m.dev() == d));
    u
}

/// The volumes of the pods under `<root-dir>/pods/<uid>/volumes/<plugin>/<name>`,
/// each remeasured once it is older than [`REFRESH`].
pub struct VolumeStats {
    root_dir: PathBuf,
    cache: Mutex<HashMap<PathBuf, (Instant, VolumeUsage)>>,
}

impl VolumeStats {
    pub fn new(root_dir: PathBuf) -> Self {
        Self { root_dir, cache: Mutex::new(HashMap::new()) }
    }

    /// The volumes of pod `uid`, by name.
    pub fn of_pod(&self, uid: &str) -> Vec<VolumeUsage> {
        let base = self.root_dir.join("pods").join(uid).join("volumes");
        let root_dev = std::fs::metadata(&self.root_dir).ok().map(|m| m.dev());
        let mut out = Vec::new();
        let Ok(plugins) = std::fs::read_dir(&base) else { return out };
        for plugin in plugins.flatten() {
            let Ok(volumes) = std::fs::read_dir(plugin.path()) else { continue };
            let csi = plugin.file_name() == "kubernetes.io~csi";
            for v in volumes.flatten() {
                // A CSI volume is its driver's mount below the record
                // directory (the directory itself is on the node's disk).
                let path = if csi { v.path().join("mount") } else { v.path() };
                let name = v.file_name().to_string_lossy().into_owned();
                let fresh = {
                    let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                    cache.get(&path).filter(|(at, _)| at.elapsed() < REFRESH).map(|(_, u)| u.clone())
                };
                let u = match fresh {
                    Some(u) => u,
                    None => {
                        let u = measure(&name, &path, root_dev);
                        self.cache.lock().unwrap_or_else(|e| e.into_inner()).insert(path, (Instant::now(), u.clone()));
                        u
                    }
                };
                out.push(u);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Forgets volumes of pods that are gone.
    pub fn retain(&self, live_uids: &dyn Fn(&str) -> bool) {
        let base = self.root_dir.join("pods");
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.retain(|p, _| p.strip_prefix(&base).ok().and_then(|r| r.iter().next()).and_then(|u| u.to_str()).is_some_and(live_uids));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_csi_volume_is_measured_at_its_mount() {
        let root = tempfile::tempdir().unwrap();
        let rec = root.path().join("pods/u2/volumes/kubernetes.io~csi/pv-1");
        std::fs::create_dir_all(rec.join("mount")).unwrap();
        std::fs::write(rec.join("vol_data.json"), b"{}").unwrap();
        std::fs::write(rec.join("mount/f"), vec![7u8; 50_000]).unwrap();
        let v = VolumeStats::new(root.path().to_path_buf()).of_pod("u2");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].name, "pv-1");
        assert_eq!(v[0].inodes_used, 2, "the mount and f, not the record beside it: {v:?}");
    }

    #[test]
    fn a_volume_counts_what_it_holds() {
        let root = tempfile::tempdir().unwrap();
        let vol = root.path().join("pods/u1/volumes/kubernetes.io~empty-dir/data");
        std::fs::create_dir_all(vol.join("sub")).unwrap();
        std::fs::write(vol.join("sub/f"), vec![7u8; 100_000]).unwrap();
        let stats = VolumeStats::new(root.path().to_path_buf());
        let v = stats.of_pod("u1");
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].name, "data");
        assert!(v[0].used_bytes >= 100_000, "{v:?}");
        assert_eq!(v[0].inodes_used, 3, "the volume, sub and f");
        assert!(v[0].capacity_bytes >= v[0].available_bytes && v[0].inodes > 0);
        assert!(v[0].on_node_disk);
        // Cached until it is a minute old.
        std::fs::write(vol.join("g"), vec![1u8; 100_000]).unwrap();
        assert_eq!(stats.of_pod("u1")[0].used_bytes, v[0].used_bytes);
        stats.retain(&|_| false);
        assert!(stats.of_pod("u1")[0].used_bytes >= 200_000);
        assert!(stats.of_pod("u2").is_empty());
    }
}
