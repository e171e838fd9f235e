//! A device plugin for the tests, speaking kubelet's real v1beta1 API over
//! its own socket in the node's device-plugins directory, as a GPU or NIC
//! plugin does: it registers on kubelet.sock (and again whenever that socket
//! is made anew, as plugins watch for it), lists its devices with
//! ListAndWatch (a device turns unhealthy on command), and answers Allocate
//! with an env naming the devices, a read-only mount of a file it made per
//! device, and a device node it made (`mknod`, char 1:3, the null device)
//! per device; it asks for PreStartContainer, can offer
//! GetPreferredAllocation with an order of its own, and records every call.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nodelet::devices::proto::v1beta1::{self, device_plugin_server, registration_client::RegistrationClient};
use tokio::sync::watch;

#[derive(Default)]
pub struct Calls {
    pub allocate: Vec<Vec<String>>,
    pub pre_start: Vec<Vec<String>>,
    /// GetPreferredAllocation: (available, must include, size).
    pub preferred: Vec<(Vec<String>, Vec<String>, i32)>,
    pub registrations: usize,
}

pub struct TestPlugin {
    pub resource: String,
    health: watch::Sender<BTreeMap<String, bool>>,
    pub calls: Arc<Mutex<Calls>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for TestPlugin {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Plugin {
    work: PathBuf,
    numa: i64,
    /// Offers GetPreferredAllocation, preferring devices in this order.
    prefer: Option<Vec<String>>,
    health: watch::Receiver<BTreeMap<String, bool>>,
    calls: Arc<Mutex<Calls>>,
}

fn list(h: &BTreeMap<String, bool>, numa: i64) -> v1beta1::ListAndWatchResponse {
    v1beta1::ListAndWatchResponse {
        devices: h
            .iter()
            .map(|(id, ok)| v1beta1::Device {
                id: id.clone(),
                health: if *ok { "Healthy" } else { "Unhealthy" }.into(),
                topology: Some(v1beta1::TopologyInfo { nodes: vec![v1beta1::NumaNode { id: numa }] }),
            })
            .collect(),
    }
}

type Stream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<v1beta1::ListAndWatchResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl device_plugin_server::DevicePlugin for Plugin {
    type ListAndWatchStream = Stream;

    async fn get_device_plugin_options(&self, _: tonic::Request<v1beta1::Empty>) -> Result<tonic::Response<v1beta1::DevicePluginOptions>, tonic::Status> {
        Ok(tonic::Response::new(options(self.prefer.is_some())))
    }

    async fn list_and_watch(&self, _: tonic::Request<v1beta1::Empty>) -> Result<tonic::Response<Stream>, tonic::Status> {
        use tokio_stream::StreamExt;
        let numa = self.numa;
        let s = tokio_stream::wrappers::WatchStream::new(self.health.clone()).map(move |h| Ok(list(&h, numa)));
        Ok(tonic::Response::new(Box::pin(s)))
    }

    async fn get_preferred_allocation(
        &self,
        req: tonic::Request<v1beta1::PreferredAllocationRequest>,
    ) -> Result<tonic::Response<v1beta1::PreferredAllocationResponse>, tonic::Status> {
        let Some(prefer) = &self.prefer else { return Err(tonic::Status::unimplemented("no preferred allocation")) };
        // Offered but broken: an empty preference always fails.
        if prefer.is_empty() {
            return Err(tonic::Status::unavailable("the preference service is down"));
        }
        let mut out = Vec::new();
        for c in req.into_inner().container_requests {
            self.calls.lock().unwrap().preferred.push((c.available_device_i_ds.clone(), c.must_include_device_i_ds.clone(), c.allocation_size));
            // What must be included, then this plugin's order among the
            // available ones.
            let mut ids = c.must_include_device_i_ds.clone();
            for id in prefer.iter().filter(|id| c.available_device_i_ds.contains(id)) {
                if ids.len() < c.allocation_size as usize && !ids.contains(id) {
                    ids.push(id.clone());
                }
            }
            out.push(v1beta1::ContainerPreferredAllocationResponse { device_i_ds: ids });
        }
        Ok(tonic::Response::new(v1beta1::PreferredAllocationResponse { container_responses: out }))
    }

    async fn allocate(&self, req: tonic::Request<v1beta1::AllocateRequest>) -> Result<tonic::Response<v1beta1::AllocateResponse>, tonic::Status> {
        let mut out = Vec::new();
        for c in req.into_inner().container_requests {
            self.calls.lock().unwrap().allocate.push(c.devices_ids.clone());
            let mut r = v1beta1::ContainerAllocateResponse::default();
            r.envs.insert("TEST_DEVICES".into(), c.devices_ids.join(","));
            r.annotations.insert("example.com/devices".into(), c.devices_ids.join(","));
            for id in &c.devices_ids {
                if !self.health.borrow().contains_key(id) {
                    return Err(tonic::Status::invalid_argument(format!("no device {id}")));
                }
                r.mounts.push(v1beta1::Mount {
                    container_path: format!("/run/devices/{id}.info"),
                    host_path: self.work.join(format!("{id}.info")).display().to_string(),
                    read_only: true,
                });
                r.devices.push(v1beta1::DeviceSpec {
                    container_path: format!("/dev/test-{id}"),
                    host_path: self.work.join(format!("{id}.dev")).display().to_string(),
                    permissions: "rw".into(),
                });
            }
            out.push(r);
        }
        Ok(tonic::Response::new(v1beta1::AllocateResponse { container_responses: out }))
    }

    async fn pre_start_container(
        &self,
        req: tonic::Request<v1beta1::PreStartContainerRequest>,
    ) -> Result<tonic::Response<v1beta1::PreStartContainerResponse>, tonic::Status> {
        self.calls.lock().unwrap().pre_start.push(req.into_inner().devices_ids);
        Ok(tonic::Response::new(v1beta1::PreStartContainerResponse {}))
    }
}

fn options(preferred: bool) -> v1beta1::DevicePluginOptions {
    v1beta1::DevicePluginOptions { pre_start_required: true, get_preferred_allocation_available: preferred }
}

async fn register(dir: &Path, endpoint: &str, resource: &str, preferred: bool) -> Result<(), String> {
    let ch = nodelet::csi::channel(&dir.join("kubelet.sock")).await?;
    RegistrationClient::new(ch)
        .register(v1beta1::RegisterRequest { version: "v1beta1".into(), endpoint: endpoint.into(), resource_name: resource.into(), options: Some(options(preferred)) })
        .await
        .map_err(|e| e.message().to_string())?;
    Ok(())
}

/// Which kubelet.sock this is: inode and change time (an inode number can
/// come back at once for a socket made anew; real plugins watch for its
/// creation with inotify).
fn identity(p: &Path) -> Option<(u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(p).ok()?;
    Some((m.ino(), m.ctime(), m.ctime_nsec()))
}

impl TestPlugin {
    /// Serves `resource` with `ids` from `dir` (the node's device-plugins
    /// directory), its files and device nodes in `work`.
    pub async fn start(dir: &Path, resource: &str, ids: &[&str], work: &Path) -> TestPlugin {
        Self::start_on_numa(dir, resource, ids, work, 0).await
    }

    /// [`TestPlugin::start`] with its devices on NUMA node `numa`.
    pub async fn start_on_numa(dir: &Path, resource: &str, ids: &[&str], work: &Path, numa: i64) -> TestPlugin {
        Self::launch(dir, resource, ids, work, numa, None).await
    }

    /// [`TestPlugin::start`] offering GetPreferredAllocation, preferring
    /// its devices in the order of `prefer` (empty: every call fails).
    pub async fn start_preferring(dir: &Path, resource: &str, ids: &[&str], work: &Path, prefer: &[&str]) -> TestPlugin {
        Self::launch(dir, resource, ids, work, 0, Some(prefer.iter().map(|s| s.to_string()).collect())).await
    }

    async fn launch(dir: &Path, resource: &str, ids: &[&str], work: &Path, numa: i64, prefer: Option<Vec<String>>) -> TestPlugin {
        std::fs::create_dir_all(work).unwrap();
        for id in ids {
            std::fs::write(work.join(format!("{id}.info")), format!("device {id}\n")).unwrap();
            let dev = work.join(format!("{id}.dev"));
            let _ = std::fs::remove_file(&dev);
            nix::sys::stat::mknod(&dev, nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::from_bits_truncate(0o666), nix::sys::stat::makedev(1, 3)).unwrap();
        }
        let (health, rx) = watch::channel(ids.iter().map(|id| (id.to_string(), true)).collect::<BTreeMap<_, _>>());
        let calls = Arc::new(Mutex::new(Calls::default()));
        let endpoint = format!("test-{}.sock", resource.replace(['/', '.'], "-"));
        let socket = dir.join(&endpoint);
        let _ = std::fs::remove_file(&socket);
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        let preferred = prefer.is_some();
        let plugin = Plugin { work: work.to_path_buf(), numa, prefer, health: rx, calls: calls.clone() };
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(device_plugin_server::DevicePluginServer::new(plugin))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await;
        });
        // Register, and again whenever kubelet.sock is made anew.
        let (d, r, c) = (dir.to_path_buf(), resource.to_string(), calls.clone());
        let registrar = tokio::spawn(async move {
            let mut registered_at: Option<(u64, i64, i64)> = None;
            loop {
                let now = identity(&d.join("kubelet.sock"));
                if now.is_some() && now != registered_at && register(&d, &endpoint, &r, preferred).await.is_ok() {
                    registered_at = now;
                    c.lock().unwrap().registrations += 1;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        TestPlugin { resource: resource.to_string(), health, calls, tasks: vec![server, registrar] }
    }

    pub fn set_healthy(&self, id: &str, healthy: bool) {
        self.health.send_modify(|h| {
            h.insert(id.to_string(), healthy);
        });
    }

    pub fn registrations(&self) -> usize {
        self.calls.lock().unwrap().registrations
    }
}
