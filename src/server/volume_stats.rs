//! Per-volume figures for `/stats/summary` (kubelet's `volume` entries of a
//! pod, named by the pod's volume names, with `pvcRef` for claims), each
//! measured the way kubelet's metrics provider for its kind does: the
//! volumes the node writes by what their directory holds (as `du` counts
//! it: allocated blocks and inodes) and what their filesystem has left
//! (statfs); local and NFS volumes by their filesystem alone; a local block
//! device by its size; CSI volumes by the driver's NodeGetVolumeStats when it
//! has GET_VOLUME_STATS; hostPath volumes not at all. Measuring costs I/O
//! (or a call to a driver), so each volume is measured at most once a minute
//! (kubelet's `volumeStatsAggPeriod`).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::csi::proto::csi as proto;
use crate::volumes::{Measure, Measured, PodVolumes};

/// kubelet's volumeStatsAggPeriod.
pub const REFRESH: Duration = Duration::from_secs(60);

/// How long a driver may take to answer NodeGetVolumeStats.
const CSI_STATS_TIMEOUT: Duration = Duration::from_secs(10);

/// One volume of one pod.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VolumeUsage {
    pub name: String,
    /// The claim behind the volume, in the pod's namespace (`pvcRef`).
    pub claim: Option<String>,
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

/// The filesystem's figures (kubelet's MetricsStatFS); used is what the
/// filesystem has allocated.
// statvfs' field types differ between platforms: the casts are not useless
// everywhere.
#[allow(clippy::unnecessary_cast)]
fn statfs(dir: &Path, u: &mut VolumeUsage) -> Result<(), String> {
    let s = nix::sys::statvfs::statvfs(dir).map_err(|e| format!("statfs {}: {e}", dir.display()))?;
    let f = s.fragment_size() as u64;
    u.capacity_bytes = (s.blocks() as u64).saturating_mul(f);
    u.available_bytes = (s.blocks_available() as u64).saturating_mul(f);
    u.used_bytes = (s.blocks() as u64).saturating_sub(s.blocks_free() as u64).saturating_mul(f);
    u.inodes = s.files() as u64;
    u.inodes_free = s.files_free() as u64;
    u.inodes_used = u.inodes.saturating_sub(u.inodes_free);
    Ok(())
}

/// A block device's size (kubelet's MetricsBlock: capacity only).
fn block_size(path: &Path) -> Result<u64, String> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.seek(SeekFrom::End(0)).map_err(|e| format!("{}: {e}", path.display()))
}

/// Measures one volume that needs no driver (blocking I/O).
fn measure_local(m: &Measured, root_dev: Option<u64>) -> Result<VolumeUsage, String> {
    let mut u = VolumeUsage { time: crate::clock::UnixNanos::now().0, ..Default::default() };
    match &m.measure {
        Measure::Du => {
            let (used_bytes, inodes_used) = du(&m.path);
            statfs(&m.path, &mut u)?;
            (u.used_bytes, u.inodes_used) = (used_bytes, inodes_used);
            u.on_node_disk = root_dev.is_some_and(|d| std::fs::metadata(&m.path).is_ok_and(|md| md.dev() == d));
        }
        Measure::StatFs => statfs(&m.path, &mut u)?,
        Measure::BlockSize => u.capacity_bytes = block_size(&m.path)?,
        Measure::Nothing | Measure::Csi { .. } => return Err("not measured here".into()),
    }
    Ok(u)
}

/// NodeGetVolumeStats of the volume's driver (kubelet's MetricsCsi).
async fn measure_csi(drivers: &crate::csi::Drivers, m: &Measured) -> Result<VolumeUsage, String> {
    let Measure::Csi { driver, handle, staging } = &m.measure else { return Err("not a CSI volume".into()) };
    let d = drivers.get(driver).ok_or_else(|| format!("CSI driver {driver} is not registered"))?;
    if !d.volume_stats {
        return Err(format!("CSI driver {driver} does not report volume stats (no GET_VOLUME_STATS)"));
    }
    let mut client = crate::csi::node_client(&d).await?;
    let mut req = tonic::Request::new(proto::NodeGetVolumeStatsRequest {
        volume_id: handle.clone(),
        volume_path: m.path.display().to_string(),
        staging_target_path: staging.as_ref().filter(|_| d.stage_unstage).map(|p| p.display().to_string()).unwrap_or_default(),
    });
    req.set_timeout(CSI_STATS_TIMEOUT);
    let answer = client.node_get_volume_stats(req).await.map_err(|s| format!("NodeGetVolumeStats: {}", crate::csi::status_text(&s)))?.into_inner();
    let mut u = VolumeUsage { time: crate::clock::UnixNanos::now().0, ..Default::default() };
    let n = |x: i64| u64::try_from(x).unwrap_or(0);
    for usage in &answer.usage {
        match proto::volume_usage::Unit::try_from(usage.unit) {
            Ok(proto::volume_usage::Unit::Bytes) => {
                (u.available_bytes, u.capacity_bytes, u.used_bytes) = (n(usage.available), n(usage.total), n(usage.used));
            }
            Ok(proto::volume_usage::Unit::Inodes) => (u.inodes_free, u.inodes, u.inodes_used) = (n(usage.available), n(usage.total), n(usage.used)),
            _ => {}
        }
    }
    Ok(u)
}

/// How long a scrape waits for measurements in flight; a volume that takes
/// longer (a hung NFS server, a slow driver) is reported with its last
/// figures, or left out, while its measurement goes on in the background.
const SCRAPE_WAIT: Duration = Duration::from_secs(5);

/// One volume's last measurement, and whether one is in flight.
#[derive(Default)]
struct Entry {
    at: Option<Instant>,
    last: Option<Result<VolumeUsage, String>>,
    busy: bool,
}

type Cache = Arc<Mutex<HashMap<PathBuf, Entry>>>;

/// The pods' volumes, each remeasured once it is older than [`REFRESH`]; at
/// most one measurement of a volume at a time, however many scrapes ask.
pub struct VolumeStats {
    root_dir: PathBuf,
    csi: crate::csi::Drivers,
    cache: Cache,
}

fn lock(cache: &Cache) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Entry>> {
    cache.lock().unwrap_or_else(|e| e.into_inner())
}

impl VolumeStats {
    pub fn new(root_dir: PathBuf, csi: crate::csi::Drivers) -> Self {
        Self { root_dir, csi, cache: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// Starts measuring `m` in the background, unless that is under way;
    /// the result lands in the cache.
    fn start(&self, name: &str, m: &Measured, root_dev: Option<u64>) -> Option<tokio::task::JoinHandle<()>> {
        {
            let mut cache = lock(&self.cache);
            let e = cache.entry(m.path.clone()).or_default();
            if e.busy {
                return None;
            }
            e.busy = true;
        }
        let (cache, csi, m, name) = (self.cache.clone(), self.csi.clone(), m.clone(), name.to_string());
        Some(tokio::spawn(async move {
            let u = match &m.measure {
                Measure::Csi { .. } => measure_csi(&csi, &m).await,
                _ => {
                    let m = m.clone();
                    tokio::task::spawn_blocking(move || measure_local(&m, root_dev)).await.map_err(|e| e.to_string()).and_then(|r| r)
                }
            };
            if let Err(e) = &u {
                tracing::debug!(volume = %name, error = %e, "volume not measured");
            }
            // A failure is remembered as long as a figure would be: a driver
            // without stats is not asked on every scrape.
            let mut cache = lock(&cache);
            let e = cache.entry(m.path.clone()).or_default();
            (e.at, e.last, e.busy) = (Some(Instant::now()), Some(u), false);
        }))
    }

    /// The volumes of one pod as its worker set them up, by name. A volume
    /// that cannot be measured is left out (as kubelet does).
    pub async fn of_pod(&self, vols: &PodVolumes) -> Vec<VolumeUsage> {
        let root_dev = std::fs::metadata(&self.root_dir).ok().map(|m| m.dev());
        let measured = vols.measured();
        let stale: Vec<&(&String, Measured)> = {
            let cache = lock(&self.cache);
            measured.iter().filter(|(_, m)| cache.get(&m.path).and_then(|e| e.at).is_none_or(|at| at.elapsed() >= REFRESH)).collect()
        };
        let started: Vec<_> = stale.iter().filter_map(|(name, m)| self.start(name, m, root_dev)).collect();
        if !started.is_empty() {
            let _ = tokio::time::timeout(SCRAPE_WAIT, futures::future::join_all(started)).await;
        }
        let cache = lock(&self.cache);
        measured
            .into_iter()
            .filter_map(|(name, m)| {
                let mut u = cache.get(&m.path)?.last.clone()?.ok()?;
                u.name = name.clone();
                u.claim = m.claim;
                Some(u)
            })
            .collect()
    }

    /// Forgets volumes no live pod has.
    pub fn retain(&self, live: &dyn Fn(&Path) -> bool) {
        lock(&self.cache).retain(|p, e| e.busy || live(p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_volumes(v: &[(&str, &Path, Measure, Option<&str>)]) -> PodVolumes {
        let mut out = PodVolumes::default();
        for (name, path, measure, claim) in v {
            out.volumes.insert(name.to_string(), crate::volumes::Mountable { host_path: path.to_path_buf(), read_only: false });
            out.measures.insert(name.to_string(), crate::volumes::Measurement { measure: measure.clone(), claim: claim.map(str::to_string) });
        }
        out
    }

    #[tokio::test]
    async fn each_kind_is_measured_as_kubelet_does() {
        let root = tempfile::tempdir().unwrap();
        let written = root.path().join("pods/u1/volumes/kubernetes.io~empty-dir/data");
        std::fs::create_dir_all(written.join("sub")).unwrap();
        std::fs::write(written.join("sub/f"), vec![7u8; 100_000]).unwrap();
        let device = root.path().join("disk.img");
        std::fs::write(&device, vec![0u8; 1 << 20]).unwrap();
        let vols = pod_volumes(&[
            ("data", &written, Measure::Du, None),
            ("db", root.path(), Measure::StatFs, Some("db-claim")),
            ("raw", &device, Measure::BlockSize, Some("raw-claim")),
            ("host", root.path(), Measure::Nothing, None),
        ]);
        let stats = VolumeStats::new(root.path().to_path_buf(), Default::default());
        let v = stats.of_pod(&vols).await;
        let names: Vec<&str> = v.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["data", "db", "raw"], "hostPath volumes are not measured: {v:?}");

        let data = &v[0];
        assert!(data.used_bytes >= 100_000, "{data:?}");
        assert_eq!(data.inodes_used, 3, "the volume, sub and f");
        assert!(data.capacity_bytes >= data.available_bytes && data.inodes > 0);
        assert!(data.on_node_disk && data.claim.is_none());

        let db = &v[1];
        let fs = nix::sys::statvfs::statvfs(root.path()).unwrap();
        assert_eq!(db.claim.as_deref(), Some("db-claim"));
        assert_eq!(db.inodes, fs.files() as u64);
        // The filesystem's own figure, not a walk (others write to it too).
        let used = db.capacity_bytes - (fs.blocks_free() as u64) * fs.fragment_size() as u64;
        assert!(db.used_bytes.abs_diff(used) < 64 << 20, "{} vs {used}", db.used_bytes);
        assert!(db.used_bytes + db.available_bytes <= db.capacity_bytes && db.inodes_used == db.inodes - db.inodes_free);
        assert!(!db.on_node_disk, "a persistent volume is not the pod's ephemeral storage");

        assert_eq!(v[2].capacity_bytes, 1 << 20);

        // Cached until it is a minute old, forgotten once no pod has it.
        std::fs::write(written.join("g"), vec![1u8; 100_000]).unwrap();
        assert_eq!(stats.of_pod(&vols).await[0].used_bytes, data.used_bytes);
        stats.retain(&|_| false);
        assert!(stats.of_pod(&vols).await[0].used_bytes >= data.used_bytes + 100_000);
    }

    #[tokio::test]
    async fn a_volume_that_cannot_be_measured_is_left_out() {
        let root = tempfile::tempdir().unwrap();
        let csi = Measure::Csi { driver: "gone.csi.test".into(), handle: "h".into(), staging: None };
        let vols = pod_volumes(&[("gone", &root.path().join("nowhere"), Measure::StatFs, None), ("csi", root.path(), csi, Some("c"))]);
        let stats = VolumeStats::new(root.path().to_path_buf(), Default::default());
        assert!(stats.of_pod(&vols).await.is_empty());
    }
}
