//! A small CSI node plugin that speaks the real CSI (Identity, Node) and
//! kubelet plugin registration gRPC APIs over unix sockets, as a driver and
//! its node-driver-registrar would: its registration socket goes into the
//! node's `plugins_registry`, and it really stages (formats an ext4
//! filesystem on the block device named by the volume context's `device`
//! when it has none, and mounts it at the staging path) and publishes (bind
//! mounts the staging path, or for an ephemeral inline volume a directory of
//! its own holding a `greeting` file, at the target path). It checks what the
//! CSI spec asks of the CO (absolute paths, the staging path existing, the
//! target's parent existing, a capability given) and answers
//! InvalidArgument / FailedPrecondition otherwise, and it is idempotent
//! where the spec says so. Every call is recorded.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use nodelet::csi::proto::csi;
use nodelet::csi::proto::registration as reg;
use tonic::{Request, Response, Status};

pub const TOPOLOGY_KEY: &str = "topology.csi.nodelet.test/zone";

#[derive(Default)]
struct Shared {
    calls: Mutex<Vec<String>>,
    /// NodeGetVolumeStats calls answered, by volume id (apart from `calls`:
    /// the CO asks for them whenever it likes).
    stats_calls: Mutex<Vec<String>>,
    registered: Mutex<Option<reg::RegistrationStatus>>,
    /// NodeUnpublishVolume answers Internal until then (a driver whose
    /// unmount keeps failing: a busy device, a hung server).
    refuse_unpublish_until: Mutex<Option<std::time::Instant>>,
    /// The next NodePublishVolume answers OK without mounting (a buggy
    /// driver): recorded as "NodePublishVolume unmounted".
    publish_without_mount: Mutex<bool>,
    /// The next block NodeStageVolume times out without staging: recorded
    /// as "NodeStageVolume timed-out".
    time_out_block_stage: Mutex<bool>,
    /// With a client and the node's name: each NodeStageVolume first reads
    /// the Node and notes a volume not yet in its volumesInUse.
    check_in_use: Mutex<Option<(kube::Client, String)>>,
    staged_before_in_use: Mutex<Vec<String>>,
}

#[derive(Clone)]
struct Driver {
    name: String,
    endpoint: PathBuf,
    work: PathBuf,
    shared: Arc<Shared>,
}

fn record(d: &Driver, call: &str, volume: &str) {
    d.shared.calls.lock().unwrap().push(format!("{call} {volume}"));
}

fn is_mounted(path: &str) -> bool {
    let canon = std::fs::canonicalize(path).map(|p| p.display().to_string()).unwrap_or_else(|_| path.to_string());
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines().any(|l| l.split(' ').nth(4) == Some(canon.as_str()))
}

fn run(cmd: &str, args: &[&str]) -> Result<String, Status> {
    let out = std::process::Command::new(cmd).args(args).output().map_err(|e| Status::internal(format!("{cmd}: {e}")))?;
    if !out.status.success() {
        return Err(Status::internal(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn is_block(c: Option<&csi::VolumeCapability>) -> bool {
    matches!(c.and_then(|c| c.access_type.as_ref()), Some(csi::volume_capability::AccessType::Block(_)))
}

fn absolute(field: &str, p: &str) -> Result<(), Status> {
    if p.is_empty() || !Path::new(p).is_absolute() {
        return Err(Status::invalid_argument(format!("{field} must be an absolute path, got {p:?}")));
    }
    Ok(())
}

#[tonic::async_trait]
impl csi::identity_server::Identity for Driver {
    async fn get_plugin_info(&self, _: Request<csi::GetPluginInfoRequest>) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse { name: self.name.clone(), vendor_version: "0.1.0".into(), manifest: Default::default() }))
    }
    async fn get_plugin_capabilities(&self, _: Request<csi::GetPluginCapabilitiesRequest>) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(csi::GetPluginCapabilitiesResponse { capabilities: vec![] }))
    }
    async fn probe(&self, _: Request<csi::ProbeRequest>) -> Result<Response<csi::ProbeResponse>, Status> {
        Ok(Response::new(csi::ProbeResponse { ready: Some(true) }))
    }
}

#[tonic::async_trait]
impl csi::node_server::Node for Driver {
    async fn node_stage_volume(&self, r: Request<csi::NodeStageVolumeRequest>) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        let r = r.into_inner();
        let check = self.shared.check_in_use.lock().unwrap().clone();
        if let Some((client, node)) = check {
            let unique = format!("kubernetes.io/csi/{}^{}", self.name, r.volume_id);
            let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
            let listed = nodes.get(&node).await.ok().and_then(|n| n.status?.volumes_in_use).unwrap_or_default();
            if !listed.contains(&unique) {
                self.shared.staged_before_in_use.lock().unwrap().push(r.volume_id.clone());
            }
        }
        record(self, "NodeStageVolume", &r.volume_id);
        if r.volume_id.is_empty() || r.volume_capability.is_none() {
            return Err(Status::invalid_argument("volume_id and volume_capability are required"));
        }
        absolute("staging_target_path", &r.staging_target_path)?;
        if !Path::new(&r.staging_target_path).is_dir() {
            return Err(Status::failed_precondition(format!("staging path {} does not exist (the CO makes it)", r.staging_target_path)));
        }
        let device = r.volume_context.get("device").ok_or_else(|| Status::invalid_argument("volume_context has no device"))?;
        if is_block(r.volume_capability.as_ref()) {
            // A raw device: nothing to format or mount; the driver notes it
            // staged the volume (publish refuses an unstaged one).
            if !Path::new(device).exists() {
                return Err(Status::not_found(format!("device {device} is not there")));
            }
            if std::mem::take(&mut *self.shared.time_out_block_stage.lock().unwrap()) {
                self.shared.calls.lock().unwrap().pop();
                record(self, "NodeStageVolume timed-out", &r.volume_id);
                return Err(Status::deadline_exceeded("stage timed out"));
            }
            let marks = self.work.join("block-staged");
            std::fs::create_dir_all(&marks).map_err(|e| Status::internal(e.to_string()))?;
            std::fs::write(marks.join(&r.volume_id), "").map_err(|e| Status::internal(e.to_string()))?;
            return Ok(Response::new(csi::NodeStageVolumeResponse {}));
        }
        // A volume that names a stage secret needs it (as a driver that
        // unlocks or logs in with it would).
        if let Some(key) = r.volume_context.get("stageSecretKey")
            && r.secrets.get(key).is_none_or(|v| v.is_empty())
        {
            return Err(Status::permission_denied(format!("the stage secret has no {key:?}")));
        }
        if is_mounted(&r.staging_target_path) {
            return Ok(Response::new(csi::NodeStageVolumeResponse {}));
        }
        let fs = std::process::Command::new("blkid").args(["-o", "value", "-s", "TYPE", device]).output().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
        if fs.is_empty() {
            run("mkfs.ext4", &["-q", device])?;
        }
        run("mount", &["-t", "ext4", device, &r.staging_target_path])?;
        Ok(Response::new(csi::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(&self, r: Request<csi::NodeUnstageVolumeRequest>) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        let r = r.into_inner();
        record(self, "NodeUnstageVolume", &r.volume_id);
        absolute("staging_target_path", &r.staging_target_path)?;
        if is_mounted(&r.staging_target_path) {
            run("umount", &[&r.staging_target_path])?;
        }
        let _ = std::fs::remove_file(self.work.join("block-staged").join(&r.volume_id));
        Ok(Response::new(csi::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(&self, r: Request<csi::NodePublishVolumeRequest>) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let r = r.into_inner();
        record(self, "NodePublishVolume", &r.volume_id);
        if r.volume_id.is_empty() || r.volume_capability.is_none() {
            return Err(Status::invalid_argument("volume_id and volume_capability are required"));
        }
        absolute("target_path", &r.target_path)?;
        let target = Path::new(&r.target_path);
        if !target.parent().is_some_and(Path::is_dir) {
            return Err(Status::failed_precondition(format!("the parent of target path {} does not exist (the CO makes it)", r.target_path)));
        }
        if is_mounted(&r.target_path) {
            return Ok(Response::new(csi::NodePublishVolumeResponse {}));
        }
        if std::mem::take(&mut *self.shared.publish_without_mount.lock().unwrap()) {
            self.shared.calls.lock().unwrap().pop();
            record(self, "NodePublishVolume unmounted", &r.volume_id);
            return Ok(Response::new(csi::NodePublishVolumeResponse {}));
        }
        if is_block(r.volume_capability.as_ref()) {
            if !r.staging_target_path.is_empty() && !self.work.join("block-staged").join(&r.volume_id).exists() {
                return Err(Status::failed_precondition("the block volume is not staged"));
            }
            // The CO made the parent; the target is a file the driver
            // creates and binds the device onto.
            let device = r.volume_context.get("device").ok_or_else(|| Status::invalid_argument("volume_context has no device"))?;
            std::fs::File::create(target).map_err(|e| Status::internal(e.to_string()))?;
            run("mount", &["--bind", device, &r.target_path])?;
            return Ok(Response::new(csi::NodePublishVolumeResponse {}));
        }
        let ephemeral = r.volume_context.get("csi.storage.k8s.io/ephemeral").map(String::as_str) == Some("true") || r.staging_target_path.is_empty();
        let source = if ephemeral {
            let dir = self.work.join("ephemeral").join(&r.volume_id);
            std::fs::create_dir_all(&dir).map_err(|e| Status::internal(e.to_string()))?;
            let greeting = r.volume_context.get("greeting").cloned().unwrap_or_default();
            std::fs::write(dir.join("greeting"), greeting).map_err(|e| Status::internal(e.to_string()))?;
            dir.display().to_string()
        } else {
            absolute("staging_target_path", &r.staging_target_path)?;
            if !is_mounted(&r.staging_target_path) {
                return Err(Status::failed_precondition("the volume is not staged"));
            }
            r.staging_target_path.clone()
        };
        std::fs::create_dir_all(target).map_err(|e| Status::internal(e.to_string()))?;
        run("mount", &["--bind", &source, &r.target_path])?;
        if r.readonly {
            run("mount", &["-o", "remount,bind,ro", &r.target_path])?;
        }
        Ok(Response::new(csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(&self, r: Request<csi::NodeUnpublishVolumeRequest>) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let r = r.into_inner();
        if self.shared.refuse_unpublish_until.lock().unwrap().is_some_and(|t| std::time::Instant::now() < t) {
            record(self, "NodeUnpublishVolume refused", &r.volume_id);
            return Err(Status::internal("unmount failed: target is busy"));
        }
        record(self, "NodeUnpublishVolume", &r.volume_id);
        absolute("target_path", &r.target_path)?;
        if is_mounted(&r.target_path) {
            run("umount", &[&r.target_path])?;
        }
        if Path::new(&r.target_path).is_file() {
            let _ = std::fs::remove_file(&r.target_path);
        }
        let _ = std::fs::remove_dir(&r.target_path);
        let eph = self.work.join("ephemeral").join(&r.volume_id);
        let _ = std::fs::remove_dir_all(eph);
        Ok(Response::new(csi::NodeUnpublishVolumeResponse {}))
    }

    /// The published volume's figures: its filesystem's (statvfs) for a
    /// mounted volume, the device's size for a block one; NotFound for a
    /// path that is not published (as the spec asks).
    async fn node_get_volume_stats(&self, r: Request<csi::NodeGetVolumeStatsRequest>) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        use std::io::{Seek, SeekFrom};
        let r = r.into_inner();
        if r.volume_id.is_empty() {
            return Err(Status::invalid_argument("volume_id is empty"));
        }
        absolute("volume_path", &r.volume_path)?;
        if !is_mounted(&r.volume_path) {
            return Err(Status::not_found(format!("{} is not a published volume", r.volume_path)));
        }
        self.shared.stats_calls.lock().unwrap().push(r.volume_id.clone());
        let bytes = csi::volume_usage::Unit::Bytes as i32;
        let md = std::fs::metadata(&r.volume_path).map_err(|e| Status::not_found(e.to_string()))?;
        let usage = if md.is_dir() {
            let s = nix::sys::statvfs::statvfs(r.volume_path.as_str()).map_err(|e| Status::internal(e.to_string()))?;
            let f = s.fragment_size() as i64;
            let (blocks, free, avail) = (s.blocks() as i64, s.blocks_free() as i64, s.blocks_available() as i64);
            let (files, ffree) = (s.files() as i64, s.files_free() as i64);
            vec![
                csi::VolumeUsage { available: avail * f, total: blocks * f, used: (blocks - free) * f, unit: bytes },
                csi::VolumeUsage { available: ffree, total: files, used: files - ffree, unit: csi::volume_usage::Unit::Inodes as i32 },
            ]
        } else {
            let size = std::fs::File::open(&r.volume_path).and_then(|mut f| f.seek(SeekFrom::End(0))).map_err(|e| Status::internal(e.to_string()))?;
            vec![csi::VolumeUsage { available: 0, total: size as i64, used: 0, unit: bytes }]
        };
        Ok(Response::new(csi::NodeGetVolumeStatsResponse { usage, volume_condition: None }))
    }

    async fn node_expand_volume(&self, _: Request<csi::NodeExpandVolumeRequest>) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented("NodeExpandVolume"))
    }

    async fn node_get_capabilities(&self, _: Request<csi::NodeGetCapabilitiesRequest>) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        use csi::node_service_capability::{Rpc, Type, rpc};
        let cap = |t: rpc::Type| csi::NodeServiceCapability { r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })) };
        Ok(Response::new(csi::NodeGetCapabilitiesResponse { capabilities: vec![cap(rpc::Type::StageUnstageVolume), cap(rpc::Type::GetVolumeStats)] }))
    }

    async fn node_get_info(&self, _: Request<csi::NodeGetInfoRequest>) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: format!("{}-node", self.name),
            max_volumes_per_node: 16,
            accessible_topology: Some(csi::Topology { segments: [(TOPOLOGY_KEY.to_string(), "zone-1".to_string())].into_iter().collect() }),
        }))
    }
}

#[tonic::async_trait]
impl reg::registration_server::Registration for Driver {
    async fn get_info(&self, _: Request<reg::InfoRequest>) -> Result<Response<reg::PluginInfo>, Status> {
        Ok(Response::new(reg::PluginInfo {
            r#type: "CSIPlugin".into(),
            name: self.name.clone(),
            endpoint: self.endpoint.display().to_string(),
            supported_versions: vec!["1.0.0".into()],
        }))
    }
    async fn notify_registration_status(&self, r: Request<reg::RegistrationStatus>) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        *self.shared.registered.lock().unwrap() = Some(r.into_inner());
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}

/// A running test driver.
pub struct CsiDriver {
    pub name: String,
    pub registration_socket: PathBuf,
    driver: Driver,
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl CsiDriver {
    /// Serves the driver on `work/csi.sock` and its registration socket in
    /// `registry` (the node's `<root-dir>/plugins_registry`).
    pub async fn start(name: &str, registry: &Path, work: &Path) -> CsiDriver {
        std::fs::create_dir_all(registry).unwrap();
        std::fs::create_dir_all(work).unwrap();
        let endpoint = work.join("csi.sock");
        let registration_socket = registry.join(format!("{name}-reg.sock"));
        let _ = std::fs::remove_file(&endpoint);
        let _ = std::fs::remove_file(&registration_socket);
        let shared = Arc::new(Shared::default());
        let d = Driver { name: name.into(), endpoint: endpoint.clone(), work: work.to_path_buf(), shared: shared.clone() };
        let serve = |path: &Path, router: tonic::transport::server::Router| {
            let l = tokio::net::UnixListener::bind(path).unwrap();
            tokio::spawn(async move {
                let _ = router.serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(l)).await;
            })
        };
        let csi_router = tonic::transport::Server::builder()
            .add_service(csi::identity_server::IdentityServer::new(d.clone()))
            .add_service(csi::node_server::NodeServer::new(d.clone()));
        let reg_router = tonic::transport::Server::builder().add_service(reg::registration_server::RegistrationServer::new(d.clone()));
        let tasks = vec![serve(&endpoint, csi_router), serve(&registration_socket, reg_router)];
        CsiDriver { name: name.into(), registration_socket, driver: d, shared, tasks }
    }

    /// The volumes NodeGetVolumeStats was answered for.
    pub fn stats_calls(&self) -> Vec<String> {
        self.shared.stats_calls.lock().unwrap().clone()
    }

    /// The calls so far, "Method volume_id" each.
    pub fn calls(&self) -> Vec<String> {
        self.shared.calls.lock().unwrap().clone()
    }

    /// Stages a volume on the driver directly (not through the node), as if
    /// a node agent had staged it and stopped before publishing it.
    pub async fn stage_directly(&self, volume_id: &str, staging: &Path, device: &str) {
        use csi::node_server::Node as _;
        let req = csi::NodeStageVolumeRequest {
            volume_id: volume_id.into(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(csi::VolumeCapability {
                access_mode: Some(csi::volume_capability::AccessMode { mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32 }),
                access_type: Some(csi::volume_capability::AccessType::Mount(csi::volume_capability::MountVolume { fs_type: "ext4".into(), ..Default::default() })),
            }),
            volume_context: [("device".to_string(), device.to_string())].into(),
            ..Default::default()
        };
        self.driver.node_stage_volume(Request::new(req)).await.unwrap();
    }

    /// From now on each NodeStageVolume checks that the Node's status
    /// already lists the volume in volumesInUse.
    pub fn check_in_use(&self, client: kube::Client, node: &str) {
        *self.shared.check_in_use.lock().unwrap() = Some((client, node.to_string()));
    }

    /// Volumes NodeStageVolume was called for before the Node's status
    /// listed them in volumesInUse.
    pub fn staged_before_in_use(&self) -> Vec<String> {
        self.shared.staged_before_in_use.lock().unwrap().clone()
    }

    /// The next NodePublishVolume succeeds without mounting anything.
    pub fn publish_without_mount_once(&self) {
        *self.shared.publish_without_mount.lock().unwrap() = true;
    }

    /// The next block NodeStageVolume times out without staging.
    pub fn time_out_next_block_stage(&self) {
        *self.shared.time_out_block_stage.lock().unwrap() = true;
    }

    /// Refuses NodeUnpublishVolume for the next `d`.
    pub fn refuse_unpublish_for(&self, d: std::time::Duration) {
        *self.shared.refuse_unpublish_until.lock().unwrap() = Some(std::time::Instant::now() + d);
    }

    /// What nodelet said about the registration.
    pub fn registration(&self) -> Option<(bool, String)> {
        self.shared.registered.lock().unwrap().as_ref().map(|r| (r.plugin_registered, r.error.clone()))
    }
}

impl Drop for CsiDriver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.registration_socket);
    }
}
