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

/// What kubelet writes as vol_data.json (its field names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolData {
    pub driver_name: String,
    pub volume_handle: String,
    #[serde(rename = "specVolumeID")]
    pub spec_volume_id: String,
    pub volume_lifecycle_mode: String,
    /// Set when the volume was staged (nodelet's addition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staging_path: Option<String>,
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// The node-wide staging directory of a volume.
pub fn staging_path(node: &NodeContext, driver: &str, handle: &str) -> PathBuf {
    node.root_dir.join("plugins/kubernetes.io/csi").join(driver).join(sha256_hex(handle)).join("globalmount")
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
}

fn access_mode(mode: &str) -> i32 {
    use csi::volume_capability::access_mode::Mode;
    (match mode {
        "ReadOnlyMany" => Mode::MultiNodeReaderOnly,
        "ReadWriteMany" => Mode::MultiNodeMultiWriter,
        "ReadWriteOncePod" => Mode::SingleNodeSingleWriter,
        _ => Mode::SingleNodeWriter,
    }) as i32
}

fn capability(p: &Publish<'_>) -> csi::VolumeCapability {
    csi::VolumeCapability {
        access_mode: Some(csi::volume_capability::AccessMode { mode: access_mode(&p.access_mode) }),
        access_type: Some(csi::volume_capability::AccessType::Mount(csi::volume_capability::MountVolume {
            fs_type: p.fs_type.clone(),
            mount_flags: p.mount_flags.clone(),
            volume_mount_group: String::new(),
        })),
    }
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
    let dir = super::plugin_dir(node, uid, "csi", &p.spec_name);
    let target = dir.join("mount");
    let mut client = node_client(p.driver).await?;
    let staging = (p.driver.stage_unstage && !p.ephemeral).then(|| staging_path(node, &p.driver.name, &p.handle));
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
                staging_path: None,
            },
        )?;
        client
            .node_stage_volume(request(csi::NodeStageVolumeRequest {
                volume_id: p.handle.clone(),
                publish_context: p.publish_context.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(capability(p)),
                secrets: p.stage_secrets.clone(),
                volume_context: p.volume_context.clone(),
            }))
            .await
            .map_err(|s| format!("MountVolume.MountDevice failed for volume {:?} : {}", p.spec_name, status_text(&s)))?;
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
            staging_path: staging.as_ref().map(|s| s.display().to_string()),
        },
    )?;
    client
        .node_publish_volume(request(csi::NodePublishVolumeRequest {
            volume_id: p.handle.clone(),
            publish_context: p.publish_context.clone(),
            staging_target_path: staging.as_ref().map(|s| s.display().to_string()).unwrap_or_default(),
            target_path: target.display().to_string(),
            volume_capability: Some(capability(p)),
            readonly: p.read_only,
            secrets: p.publish_secrets.clone(),
            volume_context: p.volume_context.clone(),
        }))
        .await
        .map_err(|s| format!("rpc error publishing {:?}: {}", p.spec_name, status_text(&s)))?;
    tracing::info!(driver = %p.driver.name, volume = %p.handle, target = %target.display(), "CSI volume published");
    Ok(target)
}

/// Whether any pod directory still publishes `handle` of `driver`.
fn published_anywhere(node: &NodeContext, driver: &str, handle: &str) -> bool {
    let pods = node.root_dir.join("pods");
    for pod in std::fs::read_dir(pods).into_iter().flatten().flatten() {
        let csi_dir = pod.path().join("volumes/kubernetes.io~csi");
        for v in std::fs::read_dir(csi_dir).into_iter().flatten().flatten() {
            if read_vol_data(&v.path()).is_some_and(|d| d.driver_name == driver && d.volume_handle == handle) {
                return true;
            }
        }
    }
    false
}

/// Unpublishes every CSI volume of the pod whose directory is `pod_dir`,
/// and unstages those no other pod publishes. An error (a driver that is
/// not registered, a call that failed) leaves the volume for the next try.
pub async fn unpublish_pod(node: &NodeContext, drivers: &Drivers, pod_dir: &Path) -> Result<(), String> {
    let csi_dir = pod_dir.join("volumes/kubernetes.io~csi");
    let mut errors = Vec::new();
    for v in std::fs::read_dir(&csi_dir).into_iter().flatten().flatten() {
        let dir = v.path();
        let Some(data) = read_vol_data(&dir) else {
            // Never published (the call failed before): nothing to undo.
            if !super::is_mounted(&dir.join("mount")) {
                let _ = std::fs::remove_dir_all(&dir);
            }
            continue;
        };
        let Some(driver) = drivers.get(&data.driver_name) else {
            errors.push(format!("volume {:?}: CSI driver {} is not registered; cannot unpublish", data.spec_volume_id, data.driver_name));
            continue;
        };
        let target = dir.join("mount");
        let result = async {
            let mut client = node_client(&driver).await?;
            client
                .node_unpublish_volume(request(csi::NodeUnpublishVolumeRequest {
                    volume_id: data.volume_handle.clone(),
                    target_path: target.display().to_string(),
                }))
                .await
                .map_err(|s| format!("UnmountVolume.TearDown failed for volume {:?}: {}", data.spec_volume_id, status_text(&s)))?;
            if super::is_mounted(&target) {
                return Err(format!("volume {:?}: the driver unpublished it but {} is still mounted", data.spec_volume_id, target.display()));
            }
            tracing::info!(driver = %driver.name, volume = %data.volume_handle, target = %target.display(), "CSI volume unpublished");
            let _ = std::fs::remove_dir_all(&dir);
            if let Some(staging) = &data.staging_path
                && !published_anywhere(node, &data.driver_name, &data.volume_handle)
            {
                let staging = PathBuf::from(staging);
                client
                    .node_unstage_volume(request(csi::NodeUnstageVolumeRequest {
                        volume_id: data.volume_handle.clone(),
                        staging_target_path: staging.display().to_string(),
                    }))
                    .await
                    .map_err(|s| format!("UnmountDevice failed for volume {:?}: {}", data.spec_volume_id, status_text(&s)))?;
                tracing::info!(driver = %driver.name, volume = %data.volume_handle, staging = %staging.display(), "CSI volume unstaged");
                if let Some(parent) = staging.parent()
                    && !super::is_mounted(&staging)
                {
                    let _ = std::fs::remove_dir_all(parent);
                }
            }
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
    for pod in std::fs::read_dir(root_dir.join("pods")).into_iter().flatten().flatten() {
        for v in std::fs::read_dir(pod.path().join("volumes/kubernetes.io~csi")).into_iter().flatten().flatten() {
            if let Some(d) = read_vol_data(&v.path()).filter(|d| d.volume_lifecycle_mode == "Persistent") {
                out.insert(format!("kubernetes.io/csi/{}^{}", d.driver_name, d.volume_handle));
            }
        }
    }
    out.into_iter().collect()
}

/// The data of a secret a CSI volume names, as the strings CSI carries.
pub fn secret_strings(data: Option<&crate::volumes::objects::Data>) -> HashMap<String, String> {
    data.map(|d| d.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect()).unwrap_or_default()
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
mod tests {
    use super::*;

    #[test]
    fn names_follow_kubelet() {
        // sha256("vol-1" + "csi.example.com" + "node-a")
        assert_eq!(attachment_name("vol-1", "csi.example.com", "node-a"), format!("csi-{}", sha256_hex("vol-1csi.example.comnode-a")));
        assert_eq!(attachment_name("vol-1", "csi.example.com", "node-a").len(), 4 + 64);
        assert_eq!(ephemeral_handle("uid", "data"), format!("csi-{}", sha256_hex("uiddata")));
        let d = VolData {
            driver_name: "d".into(),
            volume_handle: "h".into(),
            spec_volume_id: "pv".into(),
            volume_lifecycle_mode: "Persistent".into(),
            staging_path: None,
        };
        assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"driverName":"d","volumeHandle":"h","specVolumeID":"pv","volumeLifecycleMode":"Persistent"}"#);
    }
}
