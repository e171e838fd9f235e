//! CSI volumes, as kubelet's csi plugin lays them out and calls the driver:
//! a persistent volume is staged once per node at
//! `<root-dir>/plugins/kubernetes.io/csi/<driver>/<sha256(volumeHandle)>/globalmount`
//! (when the driver has STAGE_UNSTAGE_VOLUME) and published per pod at
//! `<root-dir>/pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`; an inline
//! (ephemeral) volume is published only, with the handle
//! `csi-<sha256(pod uid + volume name)>`. Beside each target and staging
//! directory a `vol_data.json` records the driver and handle, so volumes are
//! unpublished and unstaged after a restart too, when nothing else is known.
//! Unstaging waits for the last pod on the node that publishes the volume.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::csi::proto::csi;
use crate::csi::{Driver, Drivers, node_client, request, status_text};
use crate::node::NodeContext;

/// What kubelet writes as vol_data.json (its field names), so a node taken
/// over from kubelet is read as kubelet left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolData {
    pub driver_name: String,
    pub volume_handle: String,
    #[serde(rename = "specVolID", default)]
    pub spec_volume_id: String,
    #[serde(default)]
    pub volume_lifecycle_mode: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_name: String,
    #[serde(rename = "attachmentID", default, skip_serializing_if = "String::is_empty")]
    pub attachment_id: String,
}

/// One lock per volume (driver and handle) on the node: stage and publish,
/// and unpublish and unstage, never interleave for one volume (the CSI
/// spec leaves that to the CO), so a pod leaving never unstages a volume
/// another pod is publishing.
fn volume_mutex(driver: &str, handle: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
    static LOCKS: std::sync::LazyLock<std::sync::Mutex<HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>> =
        std::sync::LazyLock::new(Default::default);
    let mut map = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    map.retain(|_, l| std::sync::Arc::strong_count(l) > 1 || l.try_lock().is_err());
    map.entry(format!("{driver}^{handle}")).or_default().clone()
}

async fn volume_lock(driver: &str, handle: &str) -> tokio::sync::OwnedMutexGuard<()> {
    volume_mutex(driver, handle).lock_owned().await
}

/// Written in a block volume's staged record once NodeStageVolume has
/// succeeded: a record without it (a stage that timed out) is staged again.
const STAGED_MARKER: &str = "staged";

/// Removes a volume directory's record and the directory itself, never
/// recursively (a mount the check missed keeps its data).
fn remove_volume_dir(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(STAGED_MARKER));
    let _ = std::fs::remove_file(dir.join("vol_data.json"));
    let _ = std::fs::remove_dir(dir.join("mount"));
    let _ = std::fs::remove_dir(dir.join("globalmount"));
    let _ = std::fs::remove_dir(dir);
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// The node-wide staging directory of a volume.
pub fn staging_path(node: &NodeContext, driver: &str, handle: &str) -> Result<PathBuf, String> {
    let dir = crate::files::child(&node.root_dir.join("plugins/kubernetes.io/csi"), driver, "driver").map_err(|e| e.to_string())?;
    Ok(dir.join(sha256_hex(handle)).join("globalmount"))
}

/// kubelet's VolumeAttachment name: `csi-<sha256(handle + driver + node)>`.
pub fn attachment_name(handle: &str, driver: &str, node_name: &str) -> String {
    format!("csi-{}", sha256_hex(&format!("{handle}{driver}{node_name}")))
}

/// kubelet's handle for an inline volume.
pub fn ephemeral_handle(pod_uid: &str, volume: &str) -> String {
    format!("csi-{}", sha256_hex(&format!("{pod_uid}{volume}")))
}

/// One volume to publish for a pod.
pub struct Publish<'a> {
    pub driver: &'a Driver,
    pub handle: String,
    /// The PV's name, or the inline volume's.
    pub spec_name: String,
    pub ephemeral: bool,
    pub fs_type: String,
    pub mount_flags: Vec<String>,
    pub read_only: bool,
    /// `ReadWriteOnce`, `ReadOnlyMany`, `ReadWriteMany`, `ReadWriteOncePod`.
    pub access_mode: String,
    pub volume_context: HashMap<String, String>,
    pub publish_context: HashMap<String, String>,
    pub stage_secrets: HashMap<String, String>,
    pub publish_secrets: HashMap<String, String>,
    /// The VolumeAttachment's name, for attachable drivers.
    pub attachment_id: String,
    /// `volumeMode: Block`: a raw device, not a filesystem.
    pub block: bool,
}

/// kubelet's asCSIAccessModeV1: the single-node multi/single writer pair
/// only for drivers that announce SINGLE_NODE_MULTI_WRITER.
fn access_mode(mode: &str, multi_writer: bool) -> i32 {
    use csi::volume_capability::access_mode::Mode;
    (match mode {
        "ReadOnlyMany" => Mode::MultiNodeReaderOnly,
        "ReadWriteMany" => Mode::MultiNodeMultiWriter,
        "ReadWriteOncePod" if multi_writer => Mode::SingleNodeSingleWriter,
        "ReadWriteOnce" if multi_writer => Mode::SingleNodeMultiWriter,
        _ => Mode::SingleNodeWriter,
    }) as i32
}

fn capability(p: &Publish<'_>) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode { mode: access_mode(&p.access_mode, p.driver.single_node_multi_writer) }),
        access_type: Some(if p.block {
            csi::volume_capability::AccessType::Block(csi::volume_capability::BlockVolume {})
        } else {
            csi::volume_capability::AccessType::Mount(csi::volume_capability::MountVolume {
                fs_type: p.fs_type.clone(),
                mount_flags: p.mount_flags.clone(),
                volume_mount_group: String::new(),
            })
        }),
    }
}

/// Block volumes, kubelet's layout: staged at
/// `plugins/kubernetes.io/csi/volumeDevices/staging/<pv>`, published per pod
/// as the file `plugins/kubernetes.io/csi/volumeDevices/publish/<pv>/<pod uid>`
/// (the driver puts the device there), recorded in
/// `plugins/kubernetes.io/csi/volumeDevices/<pv>/data/vol_data.json` while
/// staged and in `pods/<uid>/volumeDevices/kubernetes.io~csi/<pv>/vol_data.json`
/// while published.
fn block_dir(node: &NodeContext) -> PathBuf {
    node.root_dir.join("plugins/kubernetes.io/csi/volumeDevices")
}

fn checked(base: &Path, name: &str, field: &str) -> Result<PathBuf, String> {
    crate::files::child(base, name, field).map_err(|e| e.to_string())
}

fn block_staging(node: &NodeContext, pv: &str) -> Result<PathBuf, String> {
    checked(&block_dir(node).join("staging"), pv, "persistentVolume name")
}

pub(super) fn block_publish(node: &NodeContext, pv: &str, uid: &str) -> Result<PathBuf, String> {
    checked(&checked(&block_dir(node).join("publish"), pv, "persistentVolume name")?, uid, "metadata.uid")
}

/// The pod-side record directory of a block volume.
fn block_record(node: &NodeContext, uid: &str, pv: &str) -> Result<PathBuf, String> {
    checked(&node.pod_dir(uid).map_err(|e| e.to_string())?.join("volumeDevices/kubernetes.io~csi"), pv, "persistentVolume name")
}

/// Stages (once) and publishes a block volume for pod `uid`; the device
/// path to give the container.
pub async fn publish_block(node: &NodeContext, uid: &str, p: &Publish<'_>) -> Result<PathBuf, String> {
    let _lock = volume_lock(&p.driver.name, &p.handle).await;
    let target = block_publish(node, &p.spec_name, uid)?;
    let record = block_record(node, uid, &p.spec_name)?;
    let mut client = node_client(p.driver).await?;
    let data = |mode: &str| VolData {
        driver_name: p.driver.name.clone(),
        volume_handle: p.handle.clone(),
        spec_volume_id: p.spec_name.clone(),
        volume_lifecycle_mode: mode.into(),
        node_name: node.node_name.clone(),
        attachment_id: p.attachment_id.clone(),
    };
    let staging = block_staging(node, &p.spec_name)?;
    let staged_record = block_dir(node).join(&p.spec_name).join("data");
    // Staged until the driver has said so: a stage that timed out keeps its
    // record (it may have staged, so an unstage is owed) and is tried again.
    if p.driver.stage_unstage && !staged_record.join(STAGED_MARKER).exists() {
        super::make_dir(&staging, 0o750)?;
        super::make_dir(&staged_record, 0o750)?;
        write_vol_data(&staged_record, &data("Persistent"))?;
        let staged = client.node_stage_volume(request(stage_request(p, &staging))).await;
        if let Err(s) = staged {
            if !uncertain(&s) {
                remove_volume_dir(&staged_record);
            }
            return Err(format!("MapVolume.MapPodDevice failed for volume {:?} : {}", p.spec_name, status_text(&s)));
        }
        crate::files::write_atomic(&staged_record.join(STAGED_MARKER), b"", 0o600).map_err(|e| format!("{}: {e}", staged_record.display()))?;
        tracing::info!(driver = %p.driver.name, volume = %p.handle, staging = %staging.display(), "CSI block volume staged");
    }
    if record.join("vol_data.json").exists() && super::is_mounted(&target) {
        return Ok(target);
    }
    super::make_dir(target.parent().unwrap_or(&target), 0o750)?;
    super::make_dir(&record, 0o750)?;
    write_vol_data(&record, &data("Persistent"))?;
    client
        .node_publish_volume(request(publish_request(p, p.driver.stage_unstage.then_some(staging.as_path()), &target)))
        .await
        .map_err(|s| format!("MapVolume.MapPodDevice failed for volume {:?} : {}", p.spec_name, status_text(&s)))?;
    // The container gets what is at the target: it must be the device the
    // driver bound there, never the empty file the node made.
    if !super::is_mounted(&target) {
        return Err(format!("MapVolume.MapPodDevice failed for volume {:?} : the driver published it but {} is not a mount point", p.spec_name, target.display()));
    }
    tracing::info!(driver = %p.driver.name, volume = %p.handle, target = %target.display(), "CSI block volume published");
    Ok(target)
}

fn stage_request(p: &Publish<'_>, staging: &Path) -> csi::NodeStageVolumeRequest {
    csi::NodeStageVolumeRequest {
        volume_id: p.handle.clone(),
        publish_context: p.publish_context.clone(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(capability(p)),
        secrets: p.stage_secrets.clone(),
        volume_context: p.volume_context.clone(),
    }
}

fn publish_request(p: &Publish<'_>, staging: Option<&Path>, target: &Path) -> csi::NodePublishVolumeRequest {
    csi::NodePublishVolumeRequest {
        volume_id: p.handle.clone(),
        publish_context: p.publish_context.clone(),
        staging_target_path: staging.map(|s| s.display().to_string()).unwrap_or_default(),
        target_path: target.display().to_string(),
        volume_capability: Some(capability(p)),
        readonly: p.read_only,
        secrets: p.publish_secrets.clone(),
        volume_context: p.volume_context.clone(),
    }
}

/// A stage that may have happened (a timeout, the driver gone mid-call):
/// its record stays, so the volume is unstaged later.
fn uncertain(s: &tonic::Status) -> bool {
    matches!(s.code(), tonic::Code::DeadlineExceeded | tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Aborted)
}

fn write_vol_data(dir: &Path, data: &VolData) -> Result<(), String> {
    let json = serde_json::to_vec(data).map_err(|e| e.to_string())?;
    crate::files::write_atomic(&dir.join("vol_data.json"), &json, 0o644).map_err(|e| format!("{}: {e}", dir.display()))
}

fn read_vol_data(dir: &Path) -> Option<VolData> {
    serde_json::from_slice(&std::fs::read(dir.join("vol_data.json")).ok()?).ok()
}

/// Stages (once per node) and publishes a volume for pod `uid`; the path
/// to mount into its containers.
pub async fn publish(node: &NodeContext, uid: &str, p: &Publish<'_>) -> Result<PathBuf, String> {
    let _lock = volume_lock(&p.driver.name, &p.handle).await;
    let dir = super::plugin_dir(node, uid, "csi", &p.spec_name)?;
    let target = dir.join("mount");
    let mut client = node_client(p.driver).await?;
    let staging = (p.driver.stage_unstage && !p.ephemeral).then(|| staging_path(node, &p.driver.name, &p.handle)).transpose()?;
    if let Some(staging) = &staging
        && !super::is_mounted(staging)
    {
        super::make_dir(staging, 0o750)?;
        let parent = staging.parent().unwrap_or(staging);
        write_vol_data(
            parent,
            &VolData {
                driver_name: p.driver.name.clone(),
                volume_handle: p.handle.clone(),
                spec_volume_id: p.spec_name.clone(),
                volume_lifecycle_mode: "Persistent".into(),
                node_name: node.node_name.clone(),
                attachment_id: p.attachment_id.clone(),
            },
        )?;
        let staged = client.node_stage_volume(request(stage_request(p, &staging))).await;
        if let Err(s) = staged {
            // A final error leaves nothing staged: its record goes, so no
            // unstage is owed. A timeout may have staged: the record stays,
            // and the volume is unstaged when no pod publishes it.
            if !uncertain(&s) && !super::is_mounted(staging)
            {
                remove_volume_dir(parent);
            }
            return Err(format!("MountVolume.MountDevice failed for volume {:?} : {}", p.spec_name, status_text(&s)));
        }
        tracing::info!(driver = %p.driver.name, volume = %p.handle, staging = %staging.display(), "CSI volume staged");
    }
    if super::is_mounted(&target) {
        return Ok(target);
    }
    super::make_dir(&dir, 0o750)?;
    write_vol_data(
        &dir,
        &VolData {
            driver_name: p.driver.name.clone(),
            volume_handle: p.handle.clone(),
            spec_volume_id: p.spec_name.clone(),
            volume_lifecycle_mode: if p.ephemeral { "Ephemeral" } else { "Persistent" }.into(),
            node_name: node.node_name.clone(),
            attachment_id: p.attachment_id.clone(),
        },
    )?;
    client
        .node_publish_volume(request(publish_request(p, staging.as_deref(), &target)))
        .await
        .map_err(|s| format!("rpc error publishing {:?}: {}", p.spec_name, status_text(&s)))?;
    // A success that mounted nothing would give the container the node's
    // own empty directory: its writes would land on the node's disk, not
    // on the volume.
    if !super::is_mounted(&target) {
        return Err(format!("the driver published volume {:?} but {} is not a mount point", p.spec_name, target.display()));
    }
    tracing::info!(driver = %p.driver.name, volume = %p.handle, target = %target.display(), "CSI volume published");
    Ok(target)
}

/// A published volume's record directory: (record dir, target, staging
/// path, staged record dir), for filesystem and block volumes.
struct Published {
    record: PathBuf,
    target: PathBuf,
    staging: PathBuf,
    staged_record: PathBuf,
}

/// Every published volume of a pod, by its records.
fn published(node: &NodeContext, pod_dir: &Path) -> Vec<(Published, Option<VolData>)> {
    let uid = pod_dir.file_name().map(|u| u.to_string_lossy().into_owned()).unwrap_or_default();
    let mut out = Vec::new();
    for v in std::fs::read_dir(pod_dir.join("volumes/kubernetes.io~csi")).into_iter().flatten().flatten() {
        let record = v.path();
        let data = read_vol_data(&record);
        // A record whose driver name cannot name a directory was not
        // written by nodelet: left alone (and reported by the caller).
        let (staging, staged_record) = match data.as_ref().map(|d| staging_path(node, &d.driver_name, &d.volume_handle)) {
            Some(Ok(s)) => {
                let r = s.parent().map(Path::to_path_buf).unwrap_or_default();
                (s, r)
            }
            Some(Err(_)) => continue,
            None => (PathBuf::new(), PathBuf::new()),
        };
        out.push((Published { target: record.join("mount"), record, staging, staged_record }, data));
    }
    for v in std::fs::read_dir(pod_dir.join("volumeDevices/kubernetes.io~csi")).into_iter().flatten().flatten() {
        let record = v.path();
        let pv = v.file_name().to_string_lossy().into_owned();
        let data = read_vol_data(&record);
        let (Ok(target), Ok(staging)) = (block_publish(node, &pv, &uid), block_staging(node, &pv)) else { continue };
        out.push((
            Published {
                target,
                staging,
                staged_record: block_dir(node).join(&pv).join("data"),
                record,
            },
            data,
        ));
    }
    out
}

/// Whether a pod directory other than `except` publishes `handle` of `driver`.
fn published_elsewhere(node: &NodeContext, driver: &str, handle: &str, except: &Path) -> bool {
    let pods = node.root_dir.join("pods");
    for pod in std::fs::read_dir(pods).into_iter().flatten().flatten() {
        for (p, d) in published(node, &pod.path()) {
            if p.record != except && d.is_some_and(|d| d.driver_name == driver && d.volume_handle == handle) {
                return true;
            }
        }
    }
    false
}

/// A node-wide staged volume's record: (its record dir, staging path).
fn staged(node: &NodeContext) -> Vec<(PathBuf, PathBuf, VolData)> {
    let mut out = Vec::new();
    let root = node.root_dir.join("plugins/kubernetes.io/csi");
    for driver in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        if driver.file_name() == "volumeDevices" {
            continue;
        }
        for v in std::fs::read_dir(driver.path()).into_iter().flatten().flatten() {
            if let Some(d) = read_vol_data(&v.path()) {
                out.push((v.path(), v.path().join("globalmount"), d));
            }
        }
    }
    for v in std::fs::read_dir(block_dir(node)).into_iter().flatten().flatten() {
        let record = v.path().join("data");
        if let (Some(d), Ok(staging)) = (read_vol_data(&record), block_staging(node, &v.file_name().to_string_lossy())) {
            out.push((record, staging, d));
        }
    }
    out
}

/// Staged volumes that no pod publishes — the agent stopped between
/// NodeStageVolume and NodePublishVolume, or the pod went meanwhile — are
/// unstaged through their drivers and their records removed, as kubelet's
/// reconstruction does at start. A volume whose lock is held (a pod is
/// staging or publishing it) is left for the next round. Called by
/// housekeeping once every pod source has been seen.
pub async fn unstage_unpublished(node: &NodeContext, drivers: &Drivers) -> Result<(), String> {
    let mut errors = Vec::new();
    for (record, staging, data) in staged(node) {
        let Ok(_lock) = volume_mutex(&data.driver_name, &data.volume_handle).try_lock_owned() else { continue };
        if published_elsewhere(node, &data.driver_name, &data.volume_handle, Path::new("")) {
            continue;
        }
        let Some(driver) = drivers.get(&data.driver_name) else {
            errors.push(format!("volume {:?}: CSI driver {} is not registered; cannot unstage", data.spec_volume_id, data.driver_name));
            continue;
        };
        let result = async {
            let mut client = node_client(&driver).await?;
            unstage(&mut client, &data, &staging, &record).await
        }
        .await;
        if let Err(e) = result {
            errors.push(e);
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
}

/// NodeUnstageVolume, then the staging path checked unmounted, then the
/// node-wide record removed (and the directories above it, when empty).
async fn unstage(
    client: &mut csi::node_client::NodeClient<tonic::transport::Channel>,
    data: &VolData,
    staging: &Path,
    staged_record: &Path,
) -> Result<(), String> {
    client
        .node_unstage_volume(request(csi::NodeUnstageVolumeRequest {
            volume_id: data.volume_handle.clone(),
            staging_target_path: staging.display().to_string(),
        }))
        .await
        .map_err(|s| format!("UnmountDevice failed for volume {:?}: {}", data.spec_volume_id, status_text(&s)))?;
    if super::is_mounted(staging) {
        return Err(format!("volume {:?}: the driver unstaged it but {} is still mounted", data.spec_volume_id, staging.display()));
    }
    tracing::info!(driver = %data.driver_name, volume = %data.volume_handle, staging = %staging.display(), "CSI volume unstaged");
    remove_volume_dir(staged_record);
    let _ = std::fs::remove_dir(staging);
    if let Some(parent) = staged_record.parent() {
        let _ = std::fs::remove_dir(parent);
    }
    Ok(())
}

/// Whether a pod directory still holds CSI volumes to unpublish (then it
/// must not be removed: the record is what unpublishing needs).
pub fn has_volumes(pod_dir: &Path) -> bool {
    ["volumes/kubernetes.io~csi", "volumeDevices/kubernetes.io~csi"]
        .iter()
        .any(|d| std::fs::read_dir(pod_dir.join(d)).into_iter().flatten().flatten().any(|v| v.path().join("vol_data.json").exists()))
}

/// Unpublishes every CSI volume of the pod whose directory is `pod_dir`,
/// and unstages those no other pod publishes; a volume's record goes only
/// once both are done. An error (a driver that is not registered, a call
/// that failed) leaves the record for the next try.
pub async fn unpublish_pod(node: &NodeContext, drivers: &Drivers, pod_dir: &Path) -> Result<(), String> {
    let mut errors = Vec::new();
    for (p, data) in published(node, pod_dir) {
        let Some(data) = data else {
            // Never published (the call failed before): nothing to undo.
            if !super::is_mounted(&p.target) {
                remove_volume_dir(&p.record);
            } else {
                errors.push(format!("{} is mounted but has no vol_data.json", p.target.display()));
            }
            continue;
        };
        let Some(driver) = drivers.get(&data.driver_name) else {
            errors.push(format!("volume {:?}: CSI driver {} is not registered; cannot unpublish", data.spec_volume_id, data.driver_name));
            continue;
        };
        let _lock = volume_lock(&data.driver_name, &data.volume_handle).await;
        let result = async {
            let mut client = node_client(&driver).await?;
            client
                .node_unpublish_volume(request(csi::NodeUnpublishVolumeRequest {
                    volume_id: data.volume_handle.clone(),
                    target_path: p.target.display().to_string(),
                }))
                .await
                .map_err(|s| format!("UnmountVolume.TearDown failed for volume {:?}: {}", data.spec_volume_id, status_text(&s)))?;
            if super::is_mounted(&p.target) {
                return Err(format!("volume {:?}: the driver unpublished it but {} is still mounted", data.spec_volume_id, p.target.display()));
            }
            tracing::info!(driver = %driver.name, volume = %data.volume_handle, target = %p.target.display(), "CSI volume unpublished");
            // Staged when the node-wide record is there (kubelet's layout):
            // unstaged when no other pod publishes the volume.
            if p.staged_record.join("vol_data.json").exists() && !published_elsewhere(node, &data.driver_name, &data.volume_handle, &p.record) {
                unstage(&mut client, &data, &p.staging, &p.staged_record).await?;
            }
            // A block volume's publish file: the driver unmounted it.
            if p.target.is_file() {
                let _ = std::fs::remove_file(&p.target);
                if let Some(parent) = p.target.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
            }
            remove_volume_dir(&p.record);
            Ok::<(), String>(())
        }
        .await;
        if let Err(e) = result {
            errors.push(e);
        }
    }
    if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
}

/// The node's attachable volumes in use, by kubelet's unique names
/// (`kubernetes.io/csi/<driver>^<handle>`), sorted: every persistent CSI
/// volume published for a pod.
pub fn in_use(root_dir: &Path) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    // Staged ones too, whether or not a pod publishes them now.
    for driver in std::fs::read_dir(root_dir.join("plugins/kubernetes.io/csi")).into_iter().flatten().flatten() {
        for v in std::fs::read_dir(driver.path()).into_iter().flatten().flatten() {
            if let Some(d) = read_vol_data(&v.path()) {
                out.insert(format!("kubernetes.io/csi/{}^{}", d.driver_name, d.volume_handle));
            }
        }
    }
    for v in std::fs::read_dir(root_dir.join("plugins/kubernetes.io/csi/volumeDevices")).into_iter().flatten().flatten() {
        if let Some(d) = read_vol_data(&v.path().join("data")) {
            out.insert(format!("kubernetes.io/csi/{}^{}", d.driver_name, d.volume_handle));
        }
    }
    for pod in std::fs::read_dir(root_dir.join("pods")).into_iter().flatten().flatten() {
        for kind in ["volumes/kubernetes.io~csi", "volumeDevices/kubernetes.io~csi"] {
            for v in std::fs::read_dir(pod.path().join(kind)).into_iter().flatten().flatten() {
                if let Some(d) = read_vol_data(&v.path()).filter(|d| d.volume_lifecycle_mode == "Persistent") {
                    out.insert(format!("kubernetes.io/csi/{}^{}", d.driver_name, d.volume_handle));
                }
            }
        }
    }
    out.into_iter().collect()
}

/// The data of a secret a CSI volume names, as the strings CSI carries.
pub fn secret_strings(data: Option<&crate::volumes::objects::Data>) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (k, v) in data.into_iter().flatten() {
        let text = String::from_utf8(v.clone()).map_err(|_| format!("secret key {k:?} is not UTF-8 text (CSI carries secrets as strings)"))?;
        out.insert(k.clone(), text);
    }
    Ok(out)
}

/// The pod information kubelet adds to the volume context of drivers with
/// `podInfoOnMount`.
pub fn pod_info(pod: &k8s_openapi::api::core::v1::Pod, ephemeral: bool) -> BTreeMap<String, String> {
    let m = &pod.metadata;
    let sa = pod.spec.as_ref().and_then(|s| s.service_account_name.clone()).unwrap_or_else(|| "default".into());
    BTreeMap::from([
        ("csi.storage.k8s.io/pod.name".to_string(), m.name.clone().unwrap_or_default()),
        ("csi.storage.k8s.io/pod.namespace".to_string(), m.namespace.clone().unwrap_or_default()),
        ("csi.storage.k8s.io/pod.uid".to_string(), m.uid.clone().unwrap_or_default()),
        ("csi.storage.k8s.io/serviceAccount.name".to_string(), sa),
        ("csi.storage.k8s.io/ephemeral".to_string(), ephemeral.to_string()),
    ])
}

#[cfg(test)]
mod tests;
