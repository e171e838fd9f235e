//! The Registration service on `<root-dir>/device-plugins/kubelet.sock`, and
//! each registered plugin's ListAndWatch stream.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio_stream::wrappers::UnixListenerStream;

use super::proto::v1beta1::{self, registration_server};
use super::{Device, Devices, HEALTHY, SOCKET, VERSION, endpoint_in, is_extended};

struct Service {
    devices: Devices,
    dir: PathBuf,
}

#[tonic::async_trait]
impl registration_server::Registration for Service {
    async fn register(&self, req: tonic::Request<v1beta1::RegisterRequest>) -> Result<tonic::Response<v1beta1::Empty>, tonic::Status> {
        let r = req.into_inner();
        if r.version != VERSION {
            tracing::warn!(resource = %r.resource_name, version = %r.version, "a device plugin of an unsupported API version was refused");
            return Err(tonic::Status::invalid_argument(format!("Unsupported version {:?}: supported versions are [{VERSION:?}]", r.version)));
        }
        if !is_extended(&r.resource_name) {
            return Err(tonic::Status::invalid_argument(format!("invalid resource name {:?}: must be an extended resource name (domain/name, outside kubernetes.io)", r.resource_name)));
        }
        let endpoint = endpoint_in(&self.dir, &r.endpoint).map_err(|e| tonic::Status::invalid_argument(format!("device plugin {}: {e}", r.resource_name)))?;
        let options = r.options.unwrap_or_default();
        tracing::info!(resource = %r.resource_name, endpoint = %endpoint.display(), pre_start = options.pre_start_required, "a device plugin registers");
        // As kubelet: the registration is answered at once; the plugin's
        // socket is dialled and watched from here on.
        tokio::spawn(watch_plugin(self.devices.clone(), r.resource_name, endpoint, options));
        Ok(tonic::Response::new(v1beta1::Empty {}))
    }
}

/// Dials the plugin and follows its ListAndWatch stream until it ends.
async fn watch_plugin(devices: Devices, resource: String, endpoint: PathBuf, options: v1beta1::DevicePluginOptions) {
    let channel = match crate::csi::channel(&endpoint).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(resource = %resource, error = %e, "cannot reach the device plugin that registered");
            return;
        }
    };
    let generation = devices.register(&resource, endpoint, options, channel.clone());
    let mut client = v1beta1::device_plugin_client::DevicePluginClient::new(channel);
    match client.list_and_watch(v1beta1::Empty {}).await {
        Ok(stream) => {
            let mut stream = stream.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(list)) => {
                        let mut now = BTreeMap::new();
                        for d in list.devices {
                            if d.id.is_empty() || d.id.len() > 63 {
                                tracing::warn!(resource = %resource, id = %d.id, "a device ID that is empty or longer than 63 characters is ignored");
                                continue;
                            }
                            let numa = d.topology.map(|t| t.nodes.into_iter().map(|n| n.id).collect()).unwrap_or_default();
                            now.insert(d.id, Device { healthy: d.health == HEALTHY, numa });
                        }
                        let healthy = now.values().filter(|d| d.healthy).count();
                        let total = now.len();
                        if !devices.update(&resource, generation, now) {
                            return; // registered again: the newer stream rules
                        }
                        tracing::info!(resource = %resource, devices = total, healthy, "device plugin devices");
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(resource = %resource, error = %e.message(), "the device plugin's ListAndWatch stream failed");
                        break;
                    }
                }
            }
        }
        Err(e) => tracing::error!(resource = %resource, error = %e.message(), "ListAndWatch of the device plugin failed"),
    }
    tracing::warn!(resource = %resource, "the device plugin went away: its devices are unhealthy until it registers again");
    devices.disconnected(&resource, generation);
}

/// Serves Registration: the socket is made anew (a stale one removed), so
/// plugins watching for it register again after a restart.
pub(super) async fn serve(devices: Devices, dir: PathBuf) {
    let socket = dir.join(SOCKET);
    let listener = loop {
        match crate::server::bind_local(&socket) {
            Ok(l) => break l,
            Err(e) => {
                tracing::error!(error = %e, "cannot serve device plugin registration; trying again");
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
    };
    tracing::info!(socket = %socket.display(), "device plugin registration served");
    let service = Service { devices, dir };
    let result = tonic::transport::Server::builder()
        .add_service(registration_server::RegistrationServer::new(service))
        .serve_with_incoming(UnixListenerStream::new(listener))
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "device plugin registration stopped");
    }
}
