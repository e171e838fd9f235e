//! Pod volumes, set up before the sandbox as kubelet's volume manager does,
//! under `<root-dir>/pods/<uid>/volumes/kubernetes.io~<plugin>/<name>`. One
//! file per kind of volume:
//!
//! - empty_dir.rs: emptyDir, a directory or a tmpfs (`medium: Memory`);
//! - host_path.rs: hostPath, with its `type` check; never removed;
//! - projection.rs: configMap, secret, downwardAPI and projected volumes
//!   (written by atomic.rs, refreshed when their sources change, tokens
//!   before 80 % of their life); secret and projected ones on tmpfs;
//! - nfs.rs: NFS mounts; claim.rs: persistentVolumeClaim and generic
//!   ephemeral volumes (local, hostPath, NFS and CSI PVs); csi_setup.rs and
//!   csi.rs: CSI volumes, persistent and inline;
//! - ownership.rs: fsGroup, walked by descriptor; subpath.rs: subPath and
//!   subPathExpr bound from a descriptor opened beneath the volume;
//! - hosts.rs: the pod's /etc/hosts.
//!
//! This file holds what the kinds share: the records of what is set up
//! (`PodVolumes`, `Mounted`), the round that sets a pod's volumes up, the
//! container mounts and devices, and teardown, which unmounts everything
//! below the pod directory and fails closed (see crate::mounts).
//!
//! Every path component taken from an object (UID, volume, PV, container,
//! driver name) goes through `crate::files::child`.

pub mod atomic;
mod claim;
pub mod csi;
mod csi_setup;
mod empty_dir;
mod host_path;
pub mod hosts;
mod nfs;
pub mod objects;
mod ownership;
mod projection;
pub mod subpath;

pub use empty_dir::is_mount_point;
pub use hosts::write_etc_hosts;
use empty_dir::{mount_tmpfs, pod_memory_limit};
use host_path::check_host_path;
use nfs::mount_nfs;
use ownership::set_volume_ownership;
use projection::{common_run_as_user, downward_files, from_data, mode_of};

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
    /// The volumesInUse handshake (none: nothing to wait for).
    pub in_use: Option<&'a crate::csi::InUse>,
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

fn make_dir(path: &Path, mode: u32) -> Result<(), String> {
    std::fs::DirBuilder::new().recursive(true).mode(mode).create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {e}", path.display()))
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
mod tests;
