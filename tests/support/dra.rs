//! A DRA driver for the tests, as a real driver's kubelet plugin runs: it
//! publishes a ResourceSlice of its devices for the node (pool = node name),
//! registers through the node's plugin-registration directory (type
//! `DRAPlugin`, `v1.DRAPlugin`), and serves kubelet's DRA gRPC API on its own
//! socket. NodePrepareResources reads each claim from the apiserver (as
//! drivers do, with their own credentials), and for each device of its own in
//! the allocation writes a CDI spec (`dra.example.com/gpu`) into the node's
//! CDI directory: a device node it made (`mknod`, char 1:3) at
//! `/dev/dra-<device>` and an env `DRA_<DEVICE>=<claim>`; it answers with the
//! CDI device IDs. NodeUnprepareResources removes the spec. Every call is
//! recorded; preparing can be made to fail on command. While it serves, it
//! publishes its ResourceSlice again whenever it is gone (as the kubelet
//! plugin helper's slice controller does: the node deletes them at start).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use kube::api::{Api, PostParams};
use nodelet::csi::proto::registration as reg;
use nodelet::dra::proto::v1 as pb;
use tonic::{Request, Response, Status};

pub const CDI_KIND: &str = "dra.example.com/gpu";

#[derive(Default)]
struct Shared {
    calls: Mutex<Vec<String>>,
    registered: Mutex<Option<reg::RegistrationStatus>>,
    fail_prepare: Mutex<Option<String>>,
}

#[derive(Clone)]
struct Server {
    name: String,
    slice: ResourceSlice,
    endpoint: PathBuf,
    work: PathBuf,
    cdi: PathBuf,
    client: kube::Client,
    shared: Arc<Shared>,
}

fn spec_file(cdi: &Path, claim_uid: &str) -> PathBuf {
    cdi.join(format!("dra.example.com-{claim_uid}.json"))
}

#[tonic::async_trait]
impl reg::registration_server::Registration for Server {
    async fn get_info(&self, _: Request<reg::InfoRequest>) -> Result<Response<reg::PluginInfo>, Status> {
        Ok(Response::new(reg::PluginInfo {
            r#type: "DRAPlugin".into(),
            name: self.name.clone(),
            endpoint: self.endpoint.display().to_string(),
            supported_versions: vec!["v1.DRAPlugin".into()],
        }))
    }
    async fn notify_registration_status(&self, r: Request<reg::RegistrationStatus>) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        *self.shared.registered.lock().unwrap() = Some(r.into_inner());
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}

impl Server {
    async fn prepare_one(&self, c: &pb::Claim) -> Result<Vec<pb::Device>, String> {
        if let Some(why) = self.shared.fail_prepare.lock().unwrap().clone() {
            return Err(why);
        }
        let claims: Api<ResourceClaim> = Api::namespaced(self.client.clone(), &c.namespace);
        let claim = claims.get(&c.name).await.map_err(|e| format!("get claim {}: {e}", c.name))?;
        if claim.metadata.uid.as_deref() != Some(c.uid.as_str()) {
            return Err(format!("claim {} has UID {:?}, not {}", c.name, claim.metadata.uid, c.uid));
        }
        let results = claim.status.and_then(|s| s.allocation).and_then(|a| a.devices).and_then(|d| d.results).unwrap_or_default();
        let mut devices = Vec::new();
        let mut cdi_devices = Vec::new();
        for r in results.iter().filter(|r| r.driver == self.name) {
            let id = format!("{}-{}", c.uid, r.device);
            let env = format!("DRA_{}={}", r.device.to_uppercase().replace('-', "_"), c.name);
            cdi_devices.push(serde_json::json!({
                "name": id,
                "containerEdits": {
                    "env": [env],
                    "deviceNodes": [{"path": format!("/dev/dra-{}", r.device), "hostPath": self.work.join(format!("{}.dev", r.device)).display().to_string()}]
                }
            }));
            devices.push(pb::Device { request_names: vec![r.request.clone()], pool_name: r.pool.clone(), device_name: r.device.clone(), cdi_device_ids: vec![format!("{CDI_KIND}={id}")] });
        }
        let spec = serde_json::json!({"cdiVersion": "0.5.0", "kind": CDI_KIND, "devices": cdi_devices});
        let path = spec_file(&self.cdi, &c.uid);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&spec).unwrap()).map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &path).map_err(|e| e.to_string())?;
        Ok(devices)
    }
}

#[tonic::async_trait]
impl pb::dra_plugin_server::DraPlugin for Server {
    async fn node_prepare_resources(&self, r: Request<pb::NodePrepareResourcesRequest>) -> Result<Response<pb::NodePrepareResourcesResponse>, Status> {
        let mut out = pb::NodePrepareResourcesResponse::default();
        for c in r.into_inner().claims {
            self.shared.calls.lock().unwrap().push(format!("NodePrepareResources {}", c.name));
            let result = match self.prepare_one(&c).await {
                Ok(devices) => pb::NodePrepareResourceResponse { devices, error: String::new() },
                Err(e) => pb::NodePrepareResourceResponse { devices: Vec::new(), error: e },
            };
            out.claims.insert(c.uid.clone(), result);
        }
        Ok(Response::new(out))
    }

    async fn node_unprepare_resources(&self, r: Request<pb::NodeUnprepareResourcesRequest>) -> Result<Response<pb::NodeUnprepareResourcesResponse>, Status> {
        let mut out = pb::NodeUnprepareResourcesResponse::default();
        for c in r.into_inner().claims {
            self.shared.calls.lock().unwrap().push(format!("NodeUnprepareResources {}", c.name));
            let _ = std::fs::remove_file(spec_file(&self.cdi, &c.uid));
            out.claims.insert(c.uid.clone(), pb::NodeUnprepareResourceResponse { error: String::new() });
        }
        Ok(Response::new(out))
    }
}

/// A running test DRA driver.
pub struct DraDriver {
    pub name: String,
    pub registration_socket: PathBuf,
    server: Server,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for DraDriver {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl DraDriver {
    /// Publishes `devices` on `node` and serves the driver: its plugin on
    /// `work/dra.sock`, its registration in `registry` (the node's
    /// `<root-dir>/plugins_registry`), CDI specs in `cdi`.
    pub async fn start(name: &str, node: &str, devices: &[&str], client: kube::Client, registry: &Path, work: &Path, cdi: &Path) -> DraDriver {
        std::fs::create_dir_all(registry).unwrap();
        std::fs::create_dir_all(work).unwrap();
        std::fs::create_dir_all(cdi).unwrap();
        for d in devices {
            let dev = work.join(format!("{d}.dev"));
            let _ = std::fs::remove_file(&dev);
            nix::sys::stat::mknod(&dev, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::from_bits_truncate(0o666), nix::sys::stat::makedev(1, 3)).unwrap();
        }
        let slices: Api<ResourceSlice> = Api::all(client.clone());
        let slice: ResourceSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("{node}-{name}")},
            "spec": {"driver": name, "nodeName": node, "pool": {"name": node, "generation": 1, "resourceSliceCount": 1},
                     "devices": devices.iter().map(|d| serde_json::json!({"name": d})).collect::<Vec<_>>()}
        }))
        .unwrap();
        slices.create(&PostParams::default(), &slice).await.unwrap();
        let endpoint = work.join("dra.sock");
        let registration_socket = registry.join(format!("{name}-reg.sock"));
        let _ = std::fs::remove_file(&endpoint);
        let _ = std::fs::remove_file(&registration_socket);
        let server = Server { name: name.into(), slice, endpoint: endpoint.clone(), work: work.to_path_buf(), cdi: cdi.to_path_buf(), client, shared: Arc::default() };
        let mut d = DraDriver { name: name.into(), registration_socket, server, tasks: Vec::new() };
        d.serve();
        d
    }

    fn serve(&mut self) {
        let bind = |path: &Path, router: tonic::transport::server::Router| {
            let _ = std::fs::remove_file(path);
            let l = tokio::net::UnixListener::bind(path).unwrap();
            tokio::spawn(async move {
                let _ = router.serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(l)).await;
            })
        };
        let s = self.server.clone();
        let plugin = tonic::transport::Server::builder().add_service(pb::dra_plugin_server::DraPluginServer::new(s.clone()));
        let registration = tonic::transport::Server::builder().add_service(reg::registration_server::RegistrationServer::new(s.clone()));
        self.tasks.push(bind(&s.endpoint, plugin));
        self.tasks.push(bind(&self.registration_socket, registration));
        self.tasks.push(tokio::spawn(async move {
            let slices: Api<ResourceSlice> = Api::all(s.client.clone());
            let name = s.slice.metadata.name.clone().unwrap_or_default();
            loop {
                if let Ok(None) = slices.get_opt(&name).await {
                    let mut fresh = s.slice.clone();
                    fresh.metadata.resource_version = None;
                    let _ = slices.create(&PostParams::default(), &fresh).await;
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }));
    }

    /// Whether its ResourceSlice is on the apiserver.
    pub async fn slice_published(&self) -> bool {
        let slices: Api<ResourceSlice> = Api::all(self.server.client.clone());
        slices.get_opt(self.server.slice.metadata.name.as_deref().unwrap_or_default()).await.unwrap().is_some()
    }

    /// Stops serving and removes its sockets (the driver's pod is gone).
    pub fn stop(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let _ = std::fs::remove_file(&self.registration_socket);
        let _ = std::fs::remove_file(&self.server.endpoint);
    }

    /// Serves again after [`DraDriver::stop`] (registers anew).
    pub fn restart(&mut self) {
        self.stop();
        self.serve();
    }

    pub fn calls(&self) -> Vec<String> {
        self.server.shared.calls.lock().unwrap().clone()
    }

    pub fn registered(&self) -> Option<reg::RegistrationStatus> {
        self.server.shared.registered.lock().unwrap().clone()
    }

    /// Makes NodePrepareResources fail with `why` (None: work again).
    pub fn fail_prepare(&self, why: Option<&str>) {
        *self.server.shared.fail_prepare.lock().unwrap() = why.map(str::to_string);
    }

    /// The CDI spec files it has written and not removed.
    pub fn specs(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&self.server.cdi)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("dra.example.com-") && n.ends_with(".json"))
            .collect();
        v.sort();
        v
    }
}
