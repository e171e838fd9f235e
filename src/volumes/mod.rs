//! Pod volumes, set up before the sandbox as kubelet's volume manager does,
//! under `<root-dir>/pods/<uid>/volumes/kubernetes.io~<plugin>/<name>`:
//!
//! - emptyDir: a directory (0777), or with `medium: Memory` a tmpfs of
//!   `sizeLimit` (else the pod's memory limit); removed with the pod.
//! - hostPath: the node's path, after its `type` check (creating it for
//!   DirectoryOrCreate and FileOrCreate); never removed.
//! - configMap, secret, downwardAPI, projected (configMap, secret,
//!   downwardAPI and serviceAccountToken sources): files written by the
//!   atomic writer, with `items`, `defaultMode`/`mode` and `optional`;
//!   secret and projected volumes sit on tmpfs so their data never reaches
//!   a disk. They are rewritten whenever their sources change, and the
//!   token before it is 80 % through its life.
//!
//! - persistentVolumeClaim: the claim must exist, be Bound and not be
//!   being deleted, and its PersistentVolume must name it in `claimRef`;
//!   a `hostPath` PV is used in place, a `local` PV (its node affinity
//!   checked against this node) is bind-mounted at
//!   `kubernetes.io~local-volume/<pv>` and unmounted with the pod. Until
//!   then the pod waits with FailedMount and retries.
//!
//! fsGroup gives volumes to the group as kubelet's SetVolumeOwnership does.
//! Container mounts come from `volumeMounts` with readOnly, subPath or
//! subPathExpr (kept inside the volume) and mountPropagation; the pod's
//! managed /etc/hosts is mounted into each container too.

pub mod atomic;
pub mod csi;
pub mod hosts;
pub mod objects;
pub mod subpath;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, DownwardAPIVolumeFile, KeyToPath, Pod, PodSpec, Volume};

use self::atomic::{FileProjection, Payload};
use self::objects::{ApiObjects, ObjectKey, ObjectKind, TokenSpec};
use crate::downward::{self, PodFacts};
use crate::node::NodeContext;
use crate::resources as quantity;
use crate::runtime::cri;

/// The default file mode of configMap, secret, downwardAPI and projected
/// volumes (the API's default, 0644).
pub const DEFAULT_MODE: i32 = 0o644;

/// A volume that failed to set up, with kubelet's wording.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("MountVolume.SetUp failed for volume {volume:?} : {message}")]
pub struct VolumeError {
    pub volume: String,
    pub message: String,
}

/// A volume ready to be mounted into containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mountable {
    pub host_path: PathBuf,
    /// configMap, secret, downwardAPI and projected volumes are always
    /// mounted read-only.
    pub read_only: bool,
}

/// A block volume (`volumeMode: Block`): the host's device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    pub device: PathBuf,
    pub read_only: bool,
}

/// How a volume is measured for `/stats/summary`: what kubelet's metrics
/// provider for its kind does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Measure {
    /// Not measured (hostPath: kubelet's MetricsNil).
    #[default]
    Nothing,
    /// What the directory holds (`du`) and its filesystem's figures: the
    /// volumes the node writes (emptyDir, configMap, secret, downwardAPI,
    /// projected).
    Du,
    /// The filesystem's figures only (local and NFS volumes: a walk of a
    /// shared or large filesystem costs too much).
    StatFs,
    /// The size of a block device (a local PV with volumeMode Block).
    BlockSize,
    /// The driver's NodeGetVolumeStats, when it has GET_VOLUME_STATS.
    Csi { driver: String, handle: String, staging: Option<PathBuf> },
}

/// How one volume of a pod is measured, and the claim behind it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Measurement {
    pub measure: Measure,
    /// The claim behind it (`pvcRef`), in the pod's namespace.
    pub claim: Option<String>,
}

/// One volume of a pod as the stats collector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measured {
    /// The published path (a directory, or a block device's path).
    pub path: PathBuf,
    pub measure: Measure,
    pub claim: Option<String>,
}

/// A pod's volumes after a set-up round.
#[derive(Debug, Clone, Default)]
pub struct PodVolumes {
    pub volumes: BTreeMap<String, Mountable>,
    /// Block volumes by volume name, for `volumeDevices`.
    pub devices: BTreeMap<String, BlockDevice>,
    /// How each volume is measured, by volume name.
    pub measures: BTreeMap<String, Measurement>,
    /// The API objects the volumes read, whose changes call for a refresh.
    pub uses: BTreeSet<ObjectKey>,
    /// When a token must be renewed (Unix seconds).
    pub refresh_at: Option<i64>,
}

impl PodVolumes {
    /// The volumes to measure, by name, at the paths they are published at.
    pub fn measured(&self) -> Vec<(&String, Measured)> {
        self.measures
            .iter()
            .filter(|(_, m)| m.measure != Measure::Nothing)
            .filter_map(|(name, m)| {
                let path = self.volumes.get(name).map(|v| &v.host_path).or_else(|| self.devices.get(name).map(|d| &d.device))?;
                Some((name, Measured { path: path.clone(), measure: m.measure.clone(), claim: m.claim.clone() }))
            })
            .collect()
    }
}

/// The pods' volumes as last set up, by pod UID: written by the pod workers,
/// read by the stats collector (kubelet's actual state of the world).
#[derive(Debug, Clone, Default)]
pub struct Mounted(std::sync::Arc<std::sync::RwLock<std::collections::HashMap<String, std::sync::Arc<PodVolumes>>>>);

impl Mounted {
    pub fn set(&self, uid: &str, v: &PodVolumes) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert(uid.to_string(), std::sync::Arc::new(v.clone()));
    }

    pub fn remove(&self, uid: &str) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(uid);
    }

    pub fn get(&self, uid: &str) -> Option<std::sync::Arc<PodVolumes>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).get(uid).cloned()
    }

    /// Every path a pod's volume is measured at.
    pub fn paths(&self) -> BTreeSet<PathBuf> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).values().flat_map(|v| v.measured().into_iter().map(|(_, m)| m.path)).collect()
    }
}

/// What setting up volumes needs.
pub struct VolumeContext<'a> {
    pub node: &'a NodeContext,
    pub objects: Option<&'a dyn ApiObjects>,
    /// Plan only: compute the paths, write nothing, request no token.
    pub dry_run: bool,
    /// The registered CSI drivers (none: CSI volumes cannot be set up).
    pub csi: Option<&'a crate::csi::Drivers>,
    /// The Node's labels as the apiserver has them (a PV's node affinity is
    /// checked against them).
    pub node_labels: Option<&'a tokio::sync::watch::Receiver<BTreeMap<String, String>>>,
}

/// `<pod dir>/volumes/kubernetes.io~<plugin>/<name>`; the UID and the name
/// (a volume's or a PV's) must each be one plain path component.
fn plugin_dir(node: &NodeContext, uid: &str, plugin: &str, name: &str) -> Result<PathBuf, String> {
    let plugin_root = node.pod_dir(uid).map_err(|e| e.to_string())?.join("volumes").join(format!("kubernetes.io~{plugin}"));
    crate::files::child(&plugin_root, name, "name").map_err(|e| e.to_string())
}

fn err(volume: &str, message: impl Into<String>) -> VolumeError {
    VolumeError { volume: volume.to_string(), message: message.into() }
}

/// Mounts an NFS export at `target` as kubelet's nfs plugin does: `mount -t
/// nfs [-o options] server:path target` (the node needs `mount.nfs`, Debian's
/// nfs-common), the PV's `mountOptions` and `ro` for a read-only volume. An
/// IPv6 server is bracketed. Already mounted: nothing to do.
async fn mount_nfs(server: &str, path: &str, target: &Path, read_only: bool, options: &[String]) -> Result<(), String> {
    if is_mounted(target) {
        return Ok(());
    }
    make_dir(target, 0o750)?;
    let source = if server.contains(':') { format!("[{server}]:{path}") } else { format!("{server}:{path}") };
    let mut opts: Vec<String> = options.to_vec();
    if read_only {
        opts.push("ro".into());
    }
    let mut args: Vec<String> = vec!["-t".into(), "nfs".into()];
    if !opts.is_empty() {
        args.push("-o".into());
        args.push(opts.join(","));
    }
    args.push(source.clone());
    args.push(target.display().to_string());
    let out = tokio::process::Command::new("mount")
        .args(&args)
        .output()
        .await
        .map_err(|e| format!("mount failed: {e}\nMounting command: mount\nMounting arguments: {}", args.join(" ")))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir(target);
        return Err(format!(
            "mount failed: {}\nMounting command: mount\nMounting arguments: {}\nOutput: {}",
            out.status,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    tracing::info!(source = %source, target = %target.display(), "NFS volume mounted");
    Ok(())
}

/// Whether `path` is a mount point (a different device from its parent).
pub fn is_mount_point(path: &Path) -> bool {
    let (Ok(me), Some(parent)) = (std::fs::metadata(path), path.parent()) else { return false };
    std::fs::metadata(parent).is_ok_and(|p| p.dev() != me.dev())
}

fn mount_tmpfs(path: &Path, size: Option<i64>) -> Result<(), String> {
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

fn make_dir(path: &Path, mode: u32) -> Result<(), String> {
    std::fs::DirBuilder::new().recursive(true).mode(mode).create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {e}", path.display()))
}

/// The sum of the containers' memory limits, if every container has one.
fn pod_memory_limit(spec: &PodSpec) -> Option<i64> {
    let mut total = quantity::Amount::ZERO;
    for c in &spec.containers {
        let q = c.resources.as_ref()?.limits.as_ref()?.get("memory")?;
        total = total.saturating_add(quantity::Amount::new(quantity::value(q).ok()?));
    }
    Some(total.get())
}

/// The user all of a pod's containers run as, if it is one and the same.
fn common_run_as_user(spec: &PodSpec) -> Option<u32> {
    let pod_user = spec.security_context.as_ref().and_then(|s| s.run_as_user);
    let mut users = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .map(|c| c.security_context.as_ref().and_then(|s| s.run_as_user).or(pod_user));
    let first = users.next()??;
    users.all(|u| u == Some(first)).then_some(first as u32)
}

fn mode_of(m: Option<i32>, default: Option<i32>) -> u32 {
    (m.or(default).unwrap_or(DEFAULT_MODE) & 0o7777) as u32
}

/// Files from a ConfigMap's or Secret's data, per `items`.
fn from_data(
    data: Option<&objects::Data>,
    items: Option<&Vec<KeyToPath>>,
    default_mode: Option<i32>,
    optional: bool,
    key: &ObjectKey,
    out: &mut Payload,
) -> Result<(), String> {
    let Some(data) = data else {
        if optional {
            return Ok(());
        }
        return Err(format!("{} {:?} not found", key.kind.as_str(), key.name));
    };
    match items.filter(|i| !i.is_empty()) {
        None => {
            for (k, v) in data {
                out.insert(k.clone(), FileProjection { data: v.clone(), mode: mode_of(None, default_mode), uid: None });
            }
        }
        Some(items) => {
            for it in items {
                match data.get(&it.key) {
                    Some(v) => {
                        out.insert(it.path.clone(), FileProjection { data: v.clone(), mode: mode_of(it.mode, default_mode), uid: None });
                    }
                    None if optional => {}
                    None => {
                        let what = if key.kind == ObjectKind::Secret { "secret" } else { "config" };
                        return Err(format!("{} references non-existent {what} key: {}", key.kind.as_str(), it.key));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Quotes a label or annotation value as the downward API files do.
fn quote(v: &str) -> String {
    let mut out = String::from("\"");
    for ch in v.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn map_lines(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter().flatten().map(|(k, v)| format!("{k}={}", quote(v))).collect::<Vec<_>>().join("\n")
}

/// Files of a downwardAPI volume or source.
fn downward_files(items: &[DownwardAPIVolumeFile], default_mode: Option<i32>, facts: &PodFacts<'_>, out: &mut Payload) -> Result<(), String> {
    let md = &facts.pod.metadata;
    for it in items {
        let value = if let Some(f) = &it.field_ref {
            match f.field_path.as_str() {
                "metadata.labels" => map_lines(md.labels.as_ref()),
                "metadata.annotations" => map_lines(md.annotations.as_ref()),
                _ => downward::field_value(f, facts, &it.path).map_err(|e| e.to_string())?,
            }
        } else if let Some(r) = &it.resource_field_ref {
            let cname = r.container_name.clone().unwrap_or_default();
            let spec = facts.pod.spec.as_ref();
            let c = spec
                .into_iter()
                .flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()))
                .find(|c| c.name == cname)
                .ok_or_else(|| format!("{}: container {cname:?} not found", it.path))?;
            downward::resource_value(r, c, facts, &it.path).map_err(|e| e.to_string())?
        } else {
            String::new()
        };
        out.insert(it.path.clone(), FileProjection { data: value.into_bytes(), mode: mode_of(it.mode, default_mode), uid: None });
    }
    Ok(())
}

/// The kinds of volume this node can set up, or what it cannot.
pub fn unsupported(v: &Volume) -> Option<&'static str> {
    let supported = v.empty_dir.is_some()
        || v.host_path.is_some()
        || v.persistent_volume_claim.is_some()
        || v.ephemeral.is_some()
        || v.config_map.is_some()
        || v.secret.is_some()
        || v.downward_api.is_some()
        || v.projected.is_some()
        || v.csi.is_some()
        || v.nfs.is_some();
    if supported {
        if let Some(p) = &v.projected
            && p.sources.iter().flatten().any(|s| s.cluster_trust_bundle.is_some() || s.pod_certificate.is_some())
        {
            return Some("projected clusterTrustBundle and podCertificate sources");
        }
        if v.empty_dir.as_ref().and_then(|e| e.medium.as_deref()).is_some_and(|m| !m.is_empty() && m != "Memory") {
            return Some("emptyDir media other than Memory");
        }
        return None;
    }
    Some(if v.image.is_some() {
        "image volumes"
    } else {
        "volumes without a known source"
    })
}

/// What a claim gives a pod: a directory to mount or a device.
enum Claimed {
    Mount(Mountable),
    Block(BlockDevice),
}

struct Round<'a, 'b> {
    ctx: &'a VolumeContext<'b>,
    pod: &'a Pod,
    uid: String,
    namespace: String,
    fs_group: Option<u32>,
    out: PodVolumes,
}

impl Round<'_, '_> {
    async fn object(&mut self, kind: ObjectKind, name: &str) -> Result<Option<std::sync::Arc<objects::Data>>, String> {
        let key = ObjectKey { kind, namespace: self.namespace.clone(), name: name.to_string() };
        let Some(objects) = self.ctx.objects else {
            return Err(format!("{key}: no apiserver to read it from (static pods cannot use API objects)"));
        };
        self.out.uses.insert(key.clone());
        objects.get(&key, &self.uid).await.map_err(|e| e.to_string())
    }

    fn write(&self, dir: &Path, payload: &Payload, tmpfs: bool) -> Result<(), String> {
        if self.ctx.dry_run {
            return Ok(());
        }
        make_dir(dir, 0o755)?;
        if tmpfs {
            mount_tmpfs(dir, None)?;
        }
        atomic::write(dir, payload, self.fs_group).map_err(|e| e.to_string())?;
        if let Some(g) = self.fs_group {
            std::os::unix::fs::chown(dir, None, Some(g)).map_err(|e| format!("{}: {e}", dir.display()))?;
            let mode = atomic::with_fs_group(0o755, true, Some(g));
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        Ok(())
    }

    async fn one(&mut self, v: &Volume, facts: &PodFacts<'_>) -> Result<Mountable, String> {
        let node = self.ctx.node;
        if let Some(what) = unsupported(v) {
            return Err(format!("{what} are not supported by this node"));
        }
        if let Some(c) = &v.csi {
            return self.csi_inline(&v.name, c).await;
        }
        if let Some(n) = &v.nfs {
            let target = plugin_dir(node, &self.uid, "nfs", &v.name)?;
            let read_only = n.read_only == Some(true);
            if !self.ctx.dry_run {
                mount_nfs(&n.server, &n.path, &target, read_only, &[]).await?;
            }
            return Ok(Mountable { host_path: target, read_only });
        }
        if let Some(ed) = &v.empty_dir {
            let dir = plugin_dir(node, &self.uid, "empty-dir", &v.name)?;
            if !self.ctx.dry_run {
                make_dir(&dir, 0o777)?;
                if ed.medium.as_deref() == Some("Memory") {
                    let size = match &ed.size_limit {
                        Some(q) => Some(quantity::value(q).map_err(|e| format!("sizeLimit: {e}"))?),
                        None => self.pod.spec.as_ref().and_then(pod_memory_limit),
                    };
                    mount_tmpfs(&dir, size)?;
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).map_err(|e| e.to_string())?;
                }
                if let Some(g) = self.fs_group {
                    std::os::unix::fs::chown(&dir, None, Some(g)).map_err(|e| format!("{}: {e}", dir.display()))?;
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2777)).map_err(|e| e.to_string())?;
                }
            }
            return Ok(Mountable { host_path: dir, read_only: false });
        }
        if let Some(hp) = &v.host_path {
            let path = PathBuf::from(&hp.path);
            if !self.ctx.dry_run {
                check_host_path(&path, hp.type_.as_deref().unwrap_or(""))?;
            }
            return Ok(Mountable { host_path: path, read_only: false });
        }
        if let Some(cm) = &v.config_map {
            let data = self.object(ObjectKind::ConfigMap, &cm.name).await?;
            let key = ObjectKey { kind: ObjectKind::ConfigMap, namespace: self.namespace.clone(), name: cm.name.clone() };
            let mut payload = Payload::new();
            from_data(data.as_deref(), cm.items.as_ref(), cm.default_mode, cm.optional == Some(true), &key, &mut payload)?;
            let dir = plugin_dir(node, &self.uid, "configmap", &v.name)?;
            self.write(&dir, &payload, false)?;
            return Ok(Mountable { host_path: dir, read_only: true });
        }
        if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let data = self.object(ObjectKind::Secret, &name).await?;
            let key = ObjectKey { kind: ObjectKind::Secret, namespace: self.namespace.clone(), name };
            let mut payload = Payload::new();
            from_data(data.as_deref(), s.items.as_ref(), s.default_mode, s.optional == Some(true), &key, &mut payload)?;
            let dir = plugin_dir(node, &self.uid, "secret", &v.name)?;
            self.write(&dir, &payload, true)?;
            return Ok(Mountable { host_path: dir, read_only: true });
        }
        if let Some(d) = &v.downward_api {
            let mut payload = Payload::new();
            downward_files(d.items.as_deref().unwrap_or(&[]), d.default_mode, facts, &mut payload)?;
            let dir = plugin_dir(node, &self.uid, "downward-api", &v.name)?;
            self.write(&dir, &payload, false)?;
            return Ok(Mountable { host_path: dir, read_only: true });
        }
        let p = v.projected.as_ref().expect("unsupported() let only supported kinds through");
        let mut payload = Payload::new();
        for src in p.sources.iter().flatten() {
            if let Some(cm) = &src.config_map {
                let data = self.object(ObjectKind::ConfigMap, &cm.name).await?;
                let key = ObjectKey { kind: ObjectKind::ConfigMap, namespace: self.namespace.clone(), name: cm.name.clone() };
                from_data(data.as_deref(), cm.items.as_ref(), p.default_mode, cm.optional == Some(true), &key, &mut payload)?;
            }
            if let Some(s) = &src.secret {
                let data = self.object(ObjectKind::Secret, &s.name).await?;
                let key = ObjectKey { kind: ObjectKind::Secret, namespace: self.namespace.clone(), name: s.name.clone() };
                from_data(data.as_deref(), s.items.as_ref(), p.default_mode, s.optional == Some(true), &key, &mut payload)?;
            }
            if let Some(d) = &src.downward_api {
                downward_files(d.items.as_deref().unwrap_or(&[]), p.default_mode, facts, &mut payload)?;
            }
            if let Some(t) = &src.service_account_token {
                let data = self.token(t).await?;
                let spec = self.pod.spec.clone().unwrap_or_default();
                // A token readable by exactly the user the pod runs as, when
                // there is one, as kubelet does.
                let uid = common_run_as_user(&spec);
                let mode = if uid.is_some() || self.fs_group.is_some() { 0o600 } else { mode_of(None, p.default_mode) };
                payload.insert(t.path.clone(), FileProjection { data, mode, uid });
            }
        }
        let dir = plugin_dir(node, &self.uid, "projected", &v.name)?;
        self.write(&dir, &payload, true)?;
        Ok(Mountable { host_path: dir, read_only: true })
    }

    /// A claim's volume, as kubelet's volume manager resolves it.
    async fn claim(&mut self, src: &k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource, owner: Option<&str>) -> Result<(Claimed, Measure), String> {
        let Some(objects) = self.ctx.objects else {
            return Err("a persistentVolumeClaim needs an apiserver (static pods cannot use one)".into());
        };
        let (ns, name) = (self.namespace.clone(), src.claim_name.clone());
        let claim = objects
            .claim(&ns, &name)
            .await
            .map_err(|e| format!("error processing PVC {ns}/{name}: failed to fetch PVC from API server: {e}"))?
            .ok_or_else(|| format!("error processing PVC {ns}/{name}: failed to fetch PVC from API server: persistentvolumeclaims {name:?} not found"))?;
        if claim.metadata.deletion_timestamp.is_some() {
            return Err(format!("error processing PVC {ns}/{name}: PVC is being deleted"));
        }
        if let Some(pod_uid) = owner {
            let owned = claim.metadata.owner_references.iter().flatten().any(|o| o.kind == "Pod" && o.uid == pod_uid && o.controller == Some(true));
            if !owned {
                return Err(format!("error processing PVC {ns}/{name}: PVC was not created for pod (pod is not owner)"));
            }
        }
        let phase = claim.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        let volume_name = claim.spec.as_ref().and_then(|s| s.volume_name.clone()).unwrap_or_default();
        if phase != "Bound" || volume_name.is_empty() {
            return Err(format!("error processing PVC {ns}/{name}: PVC {ns}/{name} has non-bound phase ({phase:?}) or empty pvc.Spec.VolumeName ({volume_name:?})"));
        }
        let pv_name = volume_name;
        let pv = objects
            .persistent_volume(&pv_name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("error processing PVC {ns}/{name}: persistentvolume {pv_name:?} not found"))?;
        let spec = pv.spec.unwrap_or_default();
        let claim_uid = claim.metadata.uid.clone().unwrap_or_default();
        // kubelet's getPVSpec: the PV's claimRef carries this claim's UID.
        let bound_to_claim = !claim_uid.is_empty() && spec.claim_ref.as_ref().is_some_and(|r| r.uid.as_deref() == Some(claim_uid.as_str()));
        if !bound_to_claim {
            return Err(format!("error processing PVC {ns}/{name}: persistentvolume {pv_name:?} is not bound to it (claimRef)"));
        }
        // kubelet's checkNodeAffinity: the PV's required terms against the
        // Node's labels as the apiserver has them (labels only, as there).
        if let Some(terms) = spec.node_affinity.as_ref().and_then(|a| a.required.as_ref()).map(|r| &r.node_selector_terms) {
            let labels = self.ctx.node_labels.map(|l| l.borrow().clone()).unwrap_or_default();
            if !crate::node_selector::matches(terms, &labels, "") {
                return Err(format!("MountVolume.NodeAffinity check failed for volume {pv_name:?} : no matching NodeSelectorTerms"));
            }
        }
        let once_pod = claim.spec.as_ref().and_then(|s| s.access_modes.as_ref()).is_some_and(|m| m.iter().any(|a| a == "ReadWriteOncePod"));
        // Taken last of the checks, once the volume is known to be usable here.
        let take = |objects: &dyn ApiObjects, uid: &str| -> Result<(), String> {
            if once_pod && let Err(holder) = objects.take_claim(&ns, &name, uid) {
                return Err(format!("volume uses the ReadWriteOncePod access mode and is already in use by another pod ({holder})"));
            }
            Ok(())
        };
        let read_only = src.read_only == Some(true);
        let block = spec.volume_mode.as_deref() == Some("Block");
        let claim_block = claim.spec.as_ref().and_then(|s| s.volume_mode.as_deref()) == Some("Block");
        if block != claim_block {
            return Err(format!("error processing PVC {ns}/{name}: its volumeMode does not match persistentvolume {pv_name:?}'s"));
        }
        if block && let Some(c) = &spec.csi {
            let modes = spec.access_modes.clone().unwrap_or_default();
            let mode = modes.first().cloned().unwrap_or_default();
            take(objects, &self.uid)?;
            let device = self.csi_persistent(&pv_name, c, read_only, &mode, &modes, Vec::new(), true).await?;
            let measure = Measure::Csi { driver: c.driver.clone(), handle: c.volume_handle.clone(), staging: None };
            return Ok((Claimed::Block(BlockDevice { device, read_only }), measure));
        }
        if block {
            use std::os::unix::fs::FileTypeExt;
            let device = spec
                .local
                .as_ref()
                .map(|l| PathBuf::from(&l.path))
                .ok_or_else(|| format!("persistentvolume {pv_name:?}: block volumes need a local PV on a block device with this nodelet"))?;
            if !self.ctx.dry_run {
                let md = std::fs::metadata(&device).map_err(|e| format!("block device {}: {e}", device.display()))?;
                if !md.file_type().is_block_device() {
                    return Err(format!("{} is not a block device (volumeMode Block)", device.display()));
                }
            }
            take(objects, &self.uid)?;
            return Ok((Claimed::Block(BlockDevice { device, read_only }), Measure::BlockSize));
        }
        if let Some(hp) = &spec.host_path {
            let path = PathBuf::from(&hp.path);
            if !self.ctx.dry_run {
                check_host_path(&path, hp.type_.as_deref().unwrap_or(""))?;
            }
            take(objects, &self.uid)?;
            return Ok((Claimed::Mount(Mountable { host_path: path, read_only }), Measure::Nothing));
        }
        if let Some(n) = &spec.nfs {
            let target = plugin_dir(self.ctx.node, &self.uid, "nfs", &pv_name)?;
            let read_only = read_only || n.read_only == Some(true);
            if !self.ctx.dry_run {
                take(objects, &self.uid)?;
                mount_nfs(&n.server, &n.path, &target, read_only, spec.mount_options.as_deref().unwrap_or(&[])).await?;
            }
            return Ok((Claimed::Mount(Mountable { host_path: target, read_only }), Measure::StatFs));
        }
        if let Some(c) = &spec.csi {
            let modes = spec.access_modes.clone().unwrap_or_default();
            let mode = if modes.len() == 1 { modes[0].clone() } else { modes.first().cloned().unwrap_or_default() };
            take(objects, &self.uid)?;
            let flags = spec.mount_options.clone().unwrap_or_default();
            // The claim's readOnly is what NodePublish gets; the PV's
            // csi.readOnly is the controller's (ControllerPublish).
            let path = self.csi_persistent(&pv_name, c, read_only, &mode, &modes, flags, false).await?;
            let staging = Some(csi::staging_path(self.ctx.node, &c.driver, &c.volume_handle)?);
            let measure = Measure::Csi { driver: c.driver.clone(), handle: c.volume_handle.clone(), staging };
            return Ok((Claimed::Mount(Mountable { host_path: path, read_only }), measure));
        }
        let Some(local) = &spec.local else {
            return Err(format!("persistentvolume {pv_name:?}: only hostPath and local persistent volumes are implemented by this nodelet yet"));
        };
        let source = PathBuf::from(&local.path);
        let target = plugin_dir(self.ctx.node, &self.uid, "local-volume", &pv_name)?;
        if self.ctx.dry_run {
            return Ok((Claimed::Mount(Mountable { host_path: target, read_only }), Measure::StatFs));
        }
        take(objects, &self.uid)?;
        let md = std::fs::metadata(&source).map_err(|e| format!("local volume path {}: {e}", source.display()))?;
        if !md.is_dir() {
            return Err(format!("local volume path {} is not a directory (block devices are not implemented by this nodelet yet)", source.display()));
        }
        if !is_mounted(&target) {
            make_dir(&target, 0o750)?;
            use nix::mount::MsFlags;
            nix::mount::mount(Some(&source), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
                .map_err(|e| format!("bind mount {} on {}: {e}", source.display(), target.display()))?;
            if read_only {
                let ro = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
                if let Err(e) = nix::mount::mount(None::<&str>, &target, None::<&str>, ro, None::<&str>) {
                    let _ = nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH);
                    return Err(format!("remount {} read-only: {e}", target.display()));
                }
            }
            tracing::info!(pv = %pv_name, path = %source.display(), target = %target.display(), "local volume mounted");
            if let Some(g) = self.fs_group {
                let policy = self.pod.spec.as_ref().and_then(|s| s.security_context.as_ref()).and_then(|s| s.fs_group_change_policy.clone());
                set_volume_ownership(&target, g, read_only, policy.as_deref() == Some("OnRootMismatch"))?;
            }
        }
        Ok((Claimed::Mount(Mountable { host_path: target, read_only }), Measure::StatFs))
    }

    /// The registered driver and its CSIDriver object's settings.
    async fn csi_driver(&mut self, name: &str) -> Result<(crate::csi::Driver, k8s_openapi::api::storage::v1::CSIDriverSpec), String> {
        let driver = self
            .ctx
            .csi
            .and_then(|d| d.get(name))
            .ok_or_else(|| format!("kubernetes.io/csi: mounter.SetUpAt failed to get CSI client: driver name {name} not found in the list of registered CSI drivers"))?;
        let spec = match self.ctx.objects {
            Some(o) => o.csi_driver(name).await.map_err(|e| e.to_string())?.map(|d| d.spec).unwrap_or_default(),
            None => Default::default(),
        };
        Ok((driver, spec))
    }

    /// A secret a CSI volume names, as strings.
    async fn csi_secret(&mut self, r: Option<(&str, &str)>) -> Result<std::collections::HashMap<String, String>, String> {
        let Some((namespace, name)) = r else { return Ok(Default::default()) };
        let Some(objects) = self.ctx.objects else { return Err("CSI secrets need an apiserver".into()) };
        let key = ObjectKey { kind: ObjectKind::Secret, namespace: namespace.to_string(), name: name.to_string() };
        self.out.uses.insert(key.clone());
        let data = objects.get(&key, &self.uid).await.map_err(|e| e.to_string())?;
        let data = data.ok_or_else(|| format!("secret {namespace}/{name} not found"))?;
        csi::secret_strings(Some(&data)).map_err(|e| format!("secret {namespace}/{name}: {e}"))
    }

    /// fsGroup on a published CSI volume, by the driver's fsGroupPolicy
    /// (kubelet's default ReadWriteOnceWithFSType: only a ReadWriteOnce
    /// volume with an fsType).
    fn csi_fs_group(&self, target: &Path, policy: Option<&str>, fs_type: &str, access_modes: &[String], read_only: bool) -> Result<(), String> {
        let Some(g) = self.fs_group else { return Ok(()) };
        // kubelet's supportsFSGroup: never on a read-only volume; by default
        // only with an fsType and a ReadWriteOnce access mode among them.
        let applies = !read_only
            && match policy.unwrap_or("ReadWriteOnceWithFSType") {
                "File" => true,
                "None" => false,
                _ => !fs_type.is_empty() && access_modes.iter().any(|m| m == "ReadWriteOnce"),
            };
        if applies {
            let change = self.pod.spec.as_ref().and_then(|s| s.security_context.as_ref()).and_then(|s| s.fs_group_change_policy.clone());
            set_volume_ownership(target, g, read_only, change.as_deref() == Some("OnRootMismatch"))?;
        }
        Ok(())
    }

    /// A CSI persistent volume: attached (when the driver needs it), staged
    /// and published.
    async fn csi_persistent(
        &mut self,
        pv_name: &str,
        c: &k8s_openapi::api::core::v1::CSIPersistentVolumeSource,
        read_only: bool,
        mode: &str,
        modes: &[String],
        mount_flags: Vec<String>,
        block: bool,
    ) -> Result<PathBuf, String> {
        let target = if block {
            self.ctx.node.root_dir.join("plugins/kubernetes.io/csi/volumeDevices/publish").join(pv_name).join(&self.uid)
        } else {
            plugin_dir(self.ctx.node, &self.uid, "csi", pv_name)?.join("mount")
        };
        if self.ctx.dry_run {
            return Ok(target);
        }
        let (driver, dspec) = self.csi_driver(&c.driver).await?;
        if dspec.volume_lifecycle_modes.as_ref().is_some_and(|m| !m.iter().any(|x| x == "Persistent")) {
            return Err(format!("volume mode \"Persistent\" not supported by driver {}", c.driver));
        }
        let mut publish_context = std::collections::HashMap::new();
        let mut attachment_id = String::new();
        if dspec.attach_required != Some(false) {
            // The attach-detach controller and the driver's attacher make the
            // VolumeAttachment; the node waits for the controller's record in
            // its Node status (kubelet's VerifyControllerAttachedVolume), then
            // for the attachment to say attached (the CSI attacher's wait).
            let name = csi::attachment_name(&c.volume_handle, &c.driver, &self.ctx.node.node_name);
            let objects = self.ctx.objects.ok_or("an attachable CSI volume needs an apiserver")?;
            let unique = format!("kubernetes.io/csi/{}^{}", c.driver, c.volume_handle);
            if !objects.node_volumes_attached(&self.ctx.node.node_name).await.map_err(|e| e.to_string())?.contains(&unique) {
                return Err(format!("Volume not attached according to node status for volume {unique:?}"));
            }
            let va = objects
                .volume_attachment(&name)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("MountVolume.WaitForAttach failed for volume {pv_name:?} : volume attachment {name} is not there yet"))?;
            if va.metadata.deletion_timestamp.is_some() {
                return Err(format!("MountVolume.WaitForAttach failed for volume {pv_name:?} : volume attachment {name} is being deleted"));
            }
            attachment_id = name.clone();
            let status = va.status.unwrap_or_default();
            if !status.attached {
                let why = status.attach_error.and_then(|e| e.message).map(|m| format!(": {m}")).unwrap_or_default();
                return Err(format!("MountVolume.WaitForAttach failed for volume {pv_name:?} : volume attachment {name} is not attached yet{why}"));
            }
            publish_context = status.attachment_metadata.unwrap_or_default().into_iter().collect();
        }
        let mut volume_context: std::collections::HashMap<String, String> = c.volume_attributes.clone().unwrap_or_default().into_iter().collect();
        if dspec.pod_info_on_mount == Some(true) {
            volume_context.extend(csi::pod_info(self.pod, false));
        }
        // The stage secret only when there is staging to do.
        let staging = csi::staging_path(self.ctx.node, &c.driver, &c.volume_handle)?;
        let stage_secrets = if driver.stage_unstage && !is_mounted(&staging) {
            self.csi_secret(c.node_stage_secret_ref.as_ref().map(|r| (r.namespace.as_deref().unwrap_or(""), r.name.as_deref().unwrap_or("")))).await?
        } else {
            Default::default()
        };
        let publish_secrets =
            self.csi_secret(c.node_publish_secret_ref.as_ref().map(|r| (r.namespace.as_deref().unwrap_or(""), r.name.as_deref().unwrap_or("")))).await?;
        let fs_type = c.fs_type.clone().unwrap_or_default();
        let req = csi::Publish {
            driver: &driver,
            handle: c.volume_handle.clone(),
            spec_name: pv_name.to_string(),
            ephemeral: false,
            fs_type: fs_type.clone(),
            mount_flags,
            read_only,
            access_mode: mode.to_string(),
            volume_context,
            publish_context,
            stage_secrets,
            publish_secrets,
            attachment_id,
            block,
        };
        if block {
            return csi::publish_block(self.ctx.node, &self.uid, &req).await;
        }
        let target = csi::publish(self.ctx.node, &self.uid, &req).await?;
        self.csi_fs_group(&target, dspec.fs_group_policy.as_deref(), &fs_type, modes, read_only)?;
        Ok(target)
    }

    /// A CSI ephemeral inline volume: published only, its handle made from
    /// the pod and the volume.
    async fn csi_inline(&mut self, volume: &str, c: &k8s_openapi::api::core::v1::CSIVolumeSource) -> Result<Mountable, String> {
        let read_only = c.read_only == Some(true);
        let target = plugin_dir(self.ctx.node, &self.uid, "csi", volume)?.join("mount");
        if self.ctx.dry_run {
            return Ok(Mountable { host_path: target, read_only });
        }
        let (driver, dspec) = self.csi_driver(&c.driver).await?;
        let modes = dspec.volume_lifecycle_modes.clone().unwrap_or_else(|| vec!["Persistent".into()]);
        if !modes.iter().any(|m| m == "Ephemeral") {
            return Err(format!("volume mode \"Ephemeral\" not supported by driver {} (only supports {modes:?})", c.driver));
        }
        let mut volume_context: std::collections::HashMap<String, String> = c.volume_attributes.clone().unwrap_or_default().into_iter().collect();
        if dspec.pod_info_on_mount == Some(true) {
            volume_context.extend(csi::pod_info(self.pod, true));
        }
        let ns = self.namespace.clone();
        let publish_secrets = self.csi_secret(c.node_publish_secret_ref.as_ref().map(|r| r.name.as_str()).filter(|n| !n.is_empty()).map(|n| (ns.as_str(), n))).await?;
        let fs_type = c.fs_type.clone().unwrap_or_default();
        let req = csi::Publish {
            driver: &driver,
            handle: csi::ephemeral_handle(&self.uid, volume),
            spec_name: volume.to_string(),
            ephemeral: true,
            fs_type: fs_type.clone(),
            mount_flags: Vec::new(),
            read_only,
            access_mode: "ReadWriteOnce".into(),
            volume_context,
            publish_context: Default::default(),
            stage_secrets: Default::default(),
            publish_secrets,
            attachment_id: String::new(),
            block: false,
        };
        let target = csi::publish(self.ctx.node, &self.uid, &req).await?;
        self.csi_fs_group(&target, dspec.fs_group_policy.as_deref(), &fs_type, &["ReadWriteOnce".to_string()], read_only)?;
        Ok(Mountable { host_path: target, read_only })
    }

    async fn token(&mut self, t: &k8s_openapi::api::core::v1::ServiceAccountTokenProjection) -> Result<Vec<u8>, String> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let sa = spec.service_account_name.clone().filter(|s| !s.is_empty()).unwrap_or_else(|| "default".into());
        let Some(objects) = self.ctx.objects else {
            return Err("a service account token needs an apiserver (static pods cannot use one)".into());
        };
        if self.ctx.dry_run {
            return Ok(Vec::new());
        }
        let req = TokenSpec {
            namespace: self.namespace.clone(),
            service_account: sa,
            audience: t.audience.clone().filter(|a| !a.is_empty()),
            expiration_seconds: t.expiration_seconds.unwrap_or(3600),
            pod_name: self.pod.metadata.name.clone().unwrap_or_default(),
            pod_uid: self.uid.clone(),
        };
        let token = objects.token(&req).await.map_err(|e| e.to_string())?;
        let at = token.refresh_at();
        self.out.refresh_at = Some(self.out.refresh_at.map_or(at, |r| r.min(at)));
        Ok(token.token.into_bytes())
    }
}

/// kubelet's SetVolumeOwnership: every file and directory of the volume
/// given to group `gid` with group read (and write, unless read-only)
/// access, directories also searchable and setgid, symlinks only chowned.
/// With `OnRootMismatch`, nothing is done when the root is already so.
fn set_volume_ownership(root: &Path, gid: u32, read_only: bool, on_root_mismatch: bool) -> Result<(), String> {
    let mask = |dir: bool| {
        let base = if read_only { 0o440 } else { 0o660 };
        if dir { base | 0o110 | 0o2000 } else { base }
    };
    if on_root_mismatch
        && let Ok(md) = std::fs::metadata(root)
        && md.gid() == gid
        && md.mode() & 0o7777 & mask(true) == mask(true)
    {
        return Ok(());
    }
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let md = std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        std::os::unix::fs::lchown(&path, None, Some(gid)).map_err(|e| format!("setting the fsGroup on {}: {e}", path.display()))?;
        if md.file_type().is_symlink() {
            continue;
        }
        let mode = md.mode() & 0o7777;
        let want = mode | mask(md.is_dir());
        if want != mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(want)).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        if md.is_dir() {
            for e in std::fs::read_dir(&path).map_err(|e| format!("{}: {e}", path.display()))?.flatten() {
                stack.push(e.path());
            }
        }
    }
    Ok(())
}

/// Whether a PV's required node affinity admits this node. nodelet knows
/// its own name (the `kubernetes.io/hostname` label); a term on other labels
/// is taken as met (the scheduler placed the pod with all of them).
/// A container's `volumeDevices` as CRI devices.
pub fn container_devices(c: &Container, volumes: &PodVolumes) -> Result<Vec<cri::Device>, String> {
    let mut out = Vec::new();
    for d in c.volume_devices.iter().flatten() {
        let Some(b) = volumes.devices.get(&d.name) else {
            return Err(format!("volumeDevices {:?}: the volume is not a block volume (volumeMode Block) of this pod", d.name));
        };
        let permissions = if b.read_only { "r" } else { "mrw" };
        out.push(cri::Device { container_path: d.device_path.clone(), host_path: b.device.display().to_string(), permissions: permissions.into() });
    }
    Ok(out)
}

/// The `type` check of a hostPath volume.
fn check_host_path(path: &Path, kind: &str) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let md = std::fs::metadata(path);
    let p = path.display();
    let want = |ok: bool, what: &str| if ok { Ok(()) } else { Err(format!("hostPath type check failed: {p} is not a {what}")) };
    match kind {
        "" => Ok(()),
        "DirectoryOrCreate" => match md {
            Ok(m) => want(m.is_dir(), "directory"),
            Err(_) => make_dir(path, 0o755),
        },
        "FileOrCreate" => match md {
            Ok(m) => want(m.is_file(), "file"),
            Err(_) => std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .map(|_| ())
                .map_err(|e| format!("hostPath type check failed: cannot create {p}: {e}")),
        },
        _ => {
            let m = md.map_err(|_| format!("hostPath type check failed: {p} does not exist"))?;
            let t = m.file_type();
            match kind {
                "Directory" => want(t.is_dir(), "directory"),
                "File" => want(t.is_file(), "file"),
                "Socket" => want(t.is_socket(), "socket"),
                "CharDevice" => want(t.is_char_device(), "character device"),
                "BlockDevice" => want(t.is_block_device(), "block device"),
                other => Err(format!("hostPath type {other:?} is not supported")),
            }
        }
    }
}

/// How kubelet measures a volume that is not a claim.
fn measure_of(v: &Volume, uid: &str) -> Measure {
    if let Some(c) = &v.csi {
        return Measure::Csi { driver: c.driver.clone(), handle: csi::ephemeral_handle(uid, &v.name), staging: None };
    }
    if v.nfs.is_some() {
        return Measure::StatFs;
    }
    if v.host_path.is_some() {
        return Measure::Nothing;
    }
    Measure::Du
}

/// Removes a pod's volume directories once [`tear_down`] has unmounted them,
/// as kubelet's TearDown does: the contents of the kinds the node writes
/// (emptyDir, configMap, secret, downwardAPI, projected) go; a mount point of
/// the other kinds is removed only when empty, never recursively (a mount
/// that appeared since is left alone). What cannot be removed stays for the
/// pod's deletion.
pub fn remove_volume_dirs(pod_dir: &Path) {
    const WRITTEN: [&str; 5] = ["empty-dir", "configmap", "secret", "downward-api", "projected"];
    let base = pod_dir.join("volumes");
    let Ok(plugins) = std::fs::read_dir(&base) else { return };
    for plugin in plugins.flatten() {
        let written = plugin.file_name().to_str().and_then(|n| n.strip_prefix("kubernetes.io~")).is_some_and(|k| WRITTEN.contains(&k));
        let Ok(volumes) = std::fs::read_dir(plugin.path()) else { continue };
        for v in volumes.flatten() {
            let p = v.path();
            let removed = if written { crate::mounts::remove_all_one_filesystem(&p).map_err(|e| e.to_string()) } else { std::fs::remove_dir(&p).map_err(|e| e.to_string()) };
            if let Err(e) = removed {
                tracing::debug!(dir = %p.display(), error = %e, "volume directory left for the pod's deletion");
            }
        }
        let _ = std::fs::remove_dir(plugin.path());
    }
    let _ = std::fs::remove_dir(&base);
}

/// Sets up (or refreshes) every volume of a pod. Volumes that fail are
/// reported; the others are kept.
pub async fn set_up(ctx: &VolumeContext<'_>, pod: &Pod, pod_ips: &[String], previous: Option<&PodVolumes>) -> (PodVolumes, Vec<VolumeError>) {
    let spec = pod.spec.clone().unwrap_or_default();
    let fs_group = spec.security_context.as_ref().and_then(|s| s.fs_group).map(|g| g as u32);
    let mut round = Round {
        ctx,
        pod,
        uid: pod.metadata.uid.clone().unwrap_or_default(),
        namespace: pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
        fs_group,
        out: PodVolumes::default(),
    };
    let facts = PodFacts { pod, pod_ips, node: ctx.node };
    let mut errors = Vec::new();
    for v in spec.volumes.iter().flatten() {
        // A claim is resolved once, as kubelet's volume manager does: later
        // rounds keep what is mounted without asking the apiserver again.
        let claimed = v.persistent_volume_claim.is_some() || v.ephemeral.is_some() || v.csi.is_some() || v.nfs.is_some();
        let kept = previous.filter(|_| claimed).and_then(|p| {
            let measure = p.measures.get(&v.name).map(|m| m.measure.clone()).unwrap_or_default();
            p.volumes.get(&v.name).cloned().map(Claimed::Mount).or_else(|| p.devices.get(&v.name).cloned().map(Claimed::Block)).map(|c| (c, measure))
        });
        // A generic ephemeral volume: the claim the control plane made from
        // the template, `<pod>-<volume>`, which the pod must own.
        let claim_name = match (&v.persistent_volume_claim, &v.ephemeral) {
            (Some(c), _) => Some(c.claim_name.clone()),
            (None, Some(_)) => Some(format!("{}-{}", pod.metadata.name.clone().unwrap_or_default(), v.name)),
            (None, None) => None,
        };
        let set = match (kept, &v.persistent_volume_claim, &v.ephemeral) {
            (Some(k), _, _) => Ok(k),
            (None, Some(c), _) => round.claim(c, None).await,
            (None, None, Some(_)) => {
                let src = k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource { claim_name: claim_name.clone().unwrap_or_default(), read_only: None };
                round.claim(&src, Some(&round.uid.clone())).await
            }
            (None, None, None) => round.one(v, &facts).await.map(|m| (Claimed::Mount(m), measure_of(v, &round.uid))),
        };
        match set {
            Ok((claimed, measure)) => {
                round.out.measures.insert(v.name.clone(), Measurement { measure, claim: claim_name });
                match claimed {
                    Claimed::Mount(m) => {
                        round.out.volumes.insert(v.name.clone(), m);
                    }
                    Claimed::Block(b) => {
                        round.out.devices.insert(v.name.clone(), b);
                    }
                }
            }
            Err(message) => errors.push(err(&v.name, message)),
        }
    }
    // A block volume is used through volumeDevices, a filesystem one
    // through volumeMounts (kubelet refuses the mix before the sandbox).
    for c in spec.init_containers.iter().flatten().chain(spec.containers.iter()) {
        for m in c.volume_mounts.iter().flatten() {
            if round.out.devices.contains_key(&m.name) {
                errors.push(err(&m.name, format!("volume {:?} has volumeMode Block, but is specified in volumeMounts", m.name)));
            }
        }
        for d in c.volume_devices.iter().flatten() {
            if round.out.volumes.contains_key(&d.name) {
                errors.push(err(&d.name, format!("volume {:?} has volumeMode Filesystem, but is specified in volumeDevices", d.name)));
            }
        }
    }
    (round.out, errors)
}

/// The CRI mounts of one container: its volumeMounts, then the pod's
/// /etc/hosts unless the container mounts its own.
///
/// A subPath is bound (see [`subpath`]) onto
/// `<pod_dir>/volume-subpaths/<volume>/<container>/<index>` and that path
/// is what CRI gets; a dry run only names it.
pub fn container_mounts(
    c: &Container,
    vols: &PodVolumes,
    env: &[(String, String)],
    etc_hosts: Option<&Path>,
    privileged: bool,
    pod_dir: &Path,
    dry_run: bool,
) -> Result<Vec<cri::Mount>, String> {
    let mut out = Vec::new();
    for (index, m) in c.volume_mounts.iter().flatten().enumerate() {
        let v = vols.volumes.get(&m.name).ok_or_else(|| format!("volume {:?} is not set up", m.name))?;
        let sub = match (&m.sub_path, &m.sub_path_expr) {
            (Some(s), _) if !s.is_empty() => Some(s.clone()),
            (_, Some(expr)) if !expr.is_empty() => {
                let map: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                Some(downward::expand(expr, &|k| map.get(k).map(|v| v.to_string())))
            }
            _ => None,
        };
        let host_path = match sub {
            Some(sub) => {
                let fail = |e: String| format!("failed to prepare subPath for volumeMount {:?} of container {:?}: {e}", m.name, c.name);
                let by_volume = crate::files::child(&pod_dir.join("volume-subpaths"), &m.name, "volumeMounts.name").map_err(|e| fail(e.to_string()))?;
                let target = crate::files::child(&by_volume, &c.name, "name").map_err(|e| fail(e.to_string()))?.join(index.to_string());
                if dry_run {
                    subpath::components(&sub).map_err(|e| fail(e.to_string()))?;
                    target
                } else {
                    subpath::bind(&v.host_path, &sub, &target).map_err(|e| fail(e.to_string()))?
                }
            }
            None => v.host_path.clone(),
        };
        use cri::MountPropagation as P;
        let propagation = match m.mount_propagation.as_deref() {
            Some("HostToContainer") => P::PropagationHostToContainer,
            Some("Bidirectional") if privileged => P::PropagationBidirectional,
            Some("Bidirectional") => return Err(format!("volumeMount {:?}: Bidirectional mount propagation needs a privileged container", m.name)),
            _ => P::PropagationPrivate,
        };
        out.push(cri::Mount {
            container_path: m.mount_path.clone(),
            host_path: host_path.display().to_string(),
            readonly: m.read_only == Some(true) || v.read_only,
            selinux_relabel: false,
            propagation: propagation as i32,
        });
    }
    if let Some(hosts) = etc_hosts
        && !out.iter().any(|m| m.container_path == "/etc/hosts")
    {
        out.push(cri::Mount {
            container_path: "/etc/hosts".into(),
            host_path: hosts.display().to_string(),
            readonly: false,
            selinux_relabel: false,
            propagation: cri::MountPropagation::PropagationPrivate as i32,
        });
    }
    Ok(out)
}

/// Writes the pod's /etc/hosts if it changed; returns its path. None when
/// kubelet would not manage it (no pod IP yet on a pod network).
pub fn write_etc_hosts(pod: &Pod, node: &NodeContext, ips: &[String], dry_run: bool) -> Result<Option<PathBuf>, String> {
    let host_network = pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    if !host_network && ips.is_empty() {
        return Ok(None);
    }
    let text = if host_network {
        hosts::host_network(pod, &std::fs::read_to_string("/etc/hosts").unwrap_or_default())
    } else {
        hosts::managed(pod, ips, &node.dns.domain)
    };
    let path = node.pod_dir(pod.metadata.uid.as_deref().unwrap_or_default()).map_err(|e| e.to_string())?.join("etc-hosts");
    if dry_run {
        return Ok(Some(path));
    }
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        crate::files::write_atomic(&path, text.as_bytes(), 0o644).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(Some(path))
}

/// Whether `path` itself is a mount point, by the kernel's mount table
/// (a bind mount of a directory on the same filesystem has the same device).
/// A table that cannot be read says "mounted": callers then leave it alone.
fn is_mounted(path: &Path) -> bool {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    crate::mounts::table().map_or(true, |t| crate::mounts::under(&canonical, &t).contains(&canonical))
}

/// Unmounts everything below a pod's directory (tmpfs, bind and subPath
/// mounts, NFS), deepest first, so the directory can then be removed without
/// reaching into a mount. Fails closed: without a readable mount table
/// nothing is unmounted and the caller removes nothing.
pub fn tear_down(pod_dir: &Path) -> Result<(), String> {
    let table = crate::mounts::table().map_err(|e| e.to_string())?;
    for m in crate::mounts::under(pod_dir, &table) {
        nix::mount::umount2(&m, nix::mount::MntFlags::MNT_DETACH).map_err(|e| format!("unmounting {}: {e}", m.display()))?;
    }
    let table = crate::mounts::table().map_err(|e| e.to_string())?;
    let left = crate::mounts::under(pod_dir, &table);
    if !left.is_empty() {
        return Err(format!("still mounted: {}", left.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downward_labels_are_sorted_and_quoted() {
        let m = BTreeMap::from([("b".to_string(), "x\"y".to_string()), ("a".to_string(), "1".to_string())]);
        assert_eq!(map_lines(Some(&m)), "a=\"1\"\nb=\"x\\\"y\"");
    }

    #[test]
    fn items_modes_and_missing_keys() {
        let key = ObjectKey { kind: ObjectKind::ConfigMap, namespace: "ns".into(), name: "cfg".into() };
        let data = objects::Data::from([("k".to_string(), b"v".to_vec())]);
        let items = vec![KeyToPath { key: "k".into(), path: "dir/f".into(), mode: Some(0o600) }];
        let mut p = Payload::new();
        from_data(Some(&data), Some(&items), None, false, &key, &mut p).unwrap();
        assert_eq!(p["dir/f"].mode, 0o600);
        let bad = vec![KeyToPath { key: "nope".into(), path: "x".into(), mode: None }];
        let e = from_data(Some(&data), Some(&bad), None, false, &key, &mut p).unwrap_err();
        assert_eq!(e, "configmap references non-existent config key: nope");
        assert_eq!(from_data(None, None, None, false, &key, &mut p).unwrap_err(), "configmap \"cfg\" not found");
        assert!(from_data(None, None, None, true, &key, &mut p).is_ok(), "optional");
        let mut q = Payload::new();
        from_data(Some(&data), None, Some(0o400), false, &key, &mut q).unwrap();
        assert_eq!(q["k"].mode, 0o400);
    }

    #[test]
    fn mounts_are_found_through_a_symlinked_root_and_tear_down_leaves_none() {
        // A symlinked root directory (/var/lib/kubelet -> /data/kubelet) must
        // not hide a bind mount: the pod directory is then removed
        // recursively, and a local PV's data would go with it.
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        let data = tmp.path().join("pv");
        std::fs::create_dir_all(real.join("pods/u/volumes/v")).unwrap();
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("keep"), "x").unwrap();
        std::os::unix::fs::symlink(&real, tmp.path().join("link")).unwrap();
        let target = real.join("pods/u/volumes/v");
        if nix::mount::mount(Some(&data), &target, None::<&str>, nix::mount::MsFlags::MS_BIND, None::<&str>).is_err() {
            eprintln!("skipped: no privilege to mount");
            return;
        }
        let via_link = tmp.path().join("link/pods/u");
        assert!(is_mounted(&tmp.path().join("link/pods/u/volumes/v")));
        assert_eq!(crate::mounts::under(&via_link, &crate::mounts::table().unwrap()).len(), 1);
        tear_down(&via_link).unwrap();
        assert!(crate::mounts::under(&via_link, &crate::mounts::table().unwrap()).is_empty());
        crate::mounts::remove_all_one_filesystem(&via_link).unwrap();
        assert!(data.join("keep").exists(), "the volume's data survives the pod directory's removal");
    }

    #[test]
    fn volume_dirs_go_but_never_recursively_into_a_mount_kind() {
        let pod = tempfile::tempdir().unwrap();
        let v = pod.path().join("volumes");
        for d in ["kubernetes.io~empty-dir/scratch/sub", "kubernetes.io~secret/s", "kubernetes.io~local-volume/pv-a", "kubernetes.io~nfs/pv-b"] {
            std::fs::create_dir_all(v.join(d)).unwrap();
        }
        std::fs::write(v.join("kubernetes.io~empty-dir/scratch/sub/f"), "x").unwrap();
        // A local volume's mount point that is not empty: its data, as if
        // mounted again behind nodelet's back.
        std::fs::write(v.join("kubernetes.io~local-volume/pv-a/data"), "keep").unwrap();
        remove_volume_dirs(pod.path());
        assert!(!v.join("kubernetes.io~empty-dir").exists() && !v.join("kubernetes.io~secret").exists() && !v.join("kubernetes.io~nfs").exists());
        assert_eq!(std::fs::read_to_string(v.join("kubernetes.io~local-volume/pv-a/data")).unwrap(), "keep");
    }

    #[test]
    fn host_path_types() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path().join("d");
        check_host_path(&d, "DirectoryOrCreate").unwrap();
        assert!(d.is_dir());
        check_host_path(&d, "Directory").unwrap();
        assert!(check_host_path(&d, "File").unwrap_err().contains("is not a file"));
        let f = tmp.path().join("f");
        check_host_path(&f, "FileOrCreate").unwrap();
        assert!(f.is_file());
        assert!(check_host_path(&tmp.path().join("none"), "Socket").unwrap_err().contains("does not exist"));
    }
}
