//! The CRI v1 client: tonic over the runtime's unix socket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use super::cri::{self, image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient};
use super::{Result, Runtime, RuntimeError};

/// kubelet's limit for CRI messages (ListContainers on a busy node is large).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Turns `unix:///run/containerd/containerd.sock` (or a bare path) into the
/// socket path.
pub fn socket_path(endpoint: &str) -> Result<PathBuf> {
    let path = match endpoint.split_once("://") {
        Some(("unix", rest)) => rest,
        Some((scheme, _)) => {
            return Err(RuntimeError::Connect {
                endpoint: endpoint.to_string(),
                reason: format!("unsupported scheme {scheme:?}: only unix:// sockets are supported"),
            });
        }
        None => endpoint,
    };
    if path.is_empty() {
        return Err(RuntimeError::Connect { endpoint: endpoint.into(), reason: "empty socket path".into() });
    }
    Ok(PathBuf::from(path))
}

/// Opens a gRPC channel over a unix socket. Fails at once when nothing is
/// listening; later calls reconnect on their own if the runtime restarts.
pub async fn unix_channel(endpoint: &str) -> Result<Channel> {
    let path = socket_path(endpoint)?;
    if !Path::new(&path).exists() {
        return Err(RuntimeError::Connect {
            endpoint: endpoint.to_string(),
            reason: format!("socket {} does not exist", path.display()),
        });
    }
    let connect_path = path.clone();
    Endpoint::try_from("http://localhost")
        .expect("static URI parses")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_| {
            let path = connect_path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|e| RuntimeError::Connect { endpoint: endpoint.to_string(), reason: error_chain(&e) })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

/// A CRI v1 runtime reached over gRPC.
#[derive(Clone)]
pub struct RemoteRuntime {
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    request_timeout: Duration,
}

impl RemoteRuntime {
    pub async fn connect(endpoint: &str, request_timeout: Duration) -> Result<Self> {
        let channel = unix_channel(endpoint).await?;
        Ok(Self {
            runtime: RuntimeServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            images: ImageServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
            request_timeout,
        })
    }

    fn req<T>(&self, msg: T) -> tonic::Request<T> {
        self.req_with(msg, Duration::ZERO)
    }

    /// A request whose deadline is the request timeout plus `extra` (a
    /// grace period, an exec's own timeout), capped at what gRPC carries.
    fn req_with<T>(&self, msg: T, extra: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(crate::clock::grpc_timeout(self.request_timeout, extra));
        r
    }
}

impl RemoteRuntime {
    /// Status with `verbose`: the runtime's own configuration in `info`
    /// (containerd: `config`, its CRI plugin's settings as JSON).
    pub async fn status_info(&self) -> Result<std::collections::HashMap<String, String>> {
        let req = self.req(cri::StatusRequest { verbose: true });
        Ok(self.runtime.clone().status(req).await.map_err(|s| RuntimeError::from_status("Status", "", s))?.into_inner().info)
    }
}

#[async_trait]
impl Runtime for RemoteRuntime {
    async fn version(&self) -> Result<cri::VersionResponse> {
        let req = self.req(cri::VersionRequest { version: "v1".into() });
        Ok(self.runtime.clone().version(req).await.map_err(|s| RuntimeError::from_status("Version", "", s))?.into_inner())
    }

    async fn status(&self) -> Result<cri::StatusResponse> {
        let req = self.req(cri::StatusRequest { verbose: false });
        Ok(self.runtime.clone().status(req).await.map_err(|s| RuntimeError::from_status("Status", "", s))?.into_inner())
    }

    async fn run_pod_sandbox(&self, config: &cri::PodSandboxConfig, handler: &str) -> Result<String> {
        let req = self.req(cri::RunPodSandboxRequest { config: Some(config.clone()), runtime_handler: handler.into() });
        let resp = self.runtime.clone().run_pod_sandbox(req).await;
        Ok(resp.map_err(|s| RuntimeError::from_status("RunPodSandbox", "", s))?.into_inner().pod_sandbox_id)
    }

    async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let req = self.req(cri::StopPodSandboxRequest { pod_sandbox_id: id.into() });
        self.runtime.clone().stop_pod_sandbox(req).await.map_err(|s| RuntimeError::from_status("StopPodSandbox", id, s))?;
        Ok(())
    }

    async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let req = self.req(cri::RemovePodSandboxRequest { pod_sandbox_id: id.into() });
        self.runtime
            .clone()
            .remove_pod_sandbox(req)
            .await
            .map_err(|s| RuntimeError::from_status("RemovePodSandbox", id, s))?;
        Ok(())
    }

    async fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus> {
        let req = self.req(cri::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false });
        let resp = self.runtime.clone().pod_sandbox_status(req).await;
        resp.map_err(|s| RuntimeError::from_status("PodSandboxStatus", id, s))?
            .into_inner()
            .status
            .ok_or(RuntimeError::NotFound { method: "PodSandboxStatus", what: id.into() })
    }

    async fn list_pod_sandbox(&self, filter: Option<cri::PodSandboxFilter>) -> Result<Vec<cri::PodSandbox>> {
        let req = self.req(cri::ListPodSandboxRequest { filter });
        let resp = self.runtime.clone().list_pod_sandbox(req).await;
        Ok(resp.map_err(|s| RuntimeError::from_status("ListPodSandbox", "", s))?.into_inner().items)
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &cri::ContainerConfig,
        sandbox_config: &cri::PodSandboxConfig,
    ) -> Result<String> {
        let req = self.req(cri::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox_config.clone()),
        });
        let resp = self.runtime.clone().create_container(req).await;
        Ok(resp.map_err(|s| RuntimeError::from_status("CreateContainer", sandbox_id, s))?.into_inner().container_id)
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let req = self.req(cri::StartContainerRequest { container_id: id.into() });
        self.runtime.clone().start_container(req).await.map_err(|s| RuntimeError::from_status("StartContainer", id, s))?;
        Ok(())
    }

    async fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<()> {
        let grace = crate::clock::secs(timeout_secs);
        let req = self.req_with(cri::StopContainerRequest { container_id: id.into(), timeout: crate::clock::clamp_secs(timeout_secs) }, grace);
        self.runtime.clone().stop_container(req).await.map_err(|s| RuntimeError::from_status("StopContainer", id, s))?;
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        let req = self.req(cri::RemoveContainerRequest { container_id: id.into() });
        self.runtime
            .clone()
            .remove_container(req)
            .await
            .map_err(|s| RuntimeError::from_status("RemoveContainer", id, s))?;
        Ok(())
    }

    async fn list_containers(&self, filter: Option<cri::ContainerFilter>) -> Result<Vec<cri::Container>> {
        let req = self.req(cri::ListContainersRequest { filter });
        let resp = self.runtime.clone().list_containers(req).await;
        Ok(resp.map_err(|s| RuntimeError::from_status("ListContainers", "", s))?.into_inner().containers)
    }

    async fn container_pid(&self, id: &str) -> Result<Option<u32>> {
        let req = self.req(cri::ContainerStatusRequest { container_id: id.into(), verbose: true });
        let resp = self.runtime.clone().container_status(req).await;
        let info = resp.map_err(|s| RuntimeError::from_status("ContainerStatus", id, s))?.into_inner().info;
        let pid = info
            .get("info")
            .and_then(|i| serde_json::from_str::<serde_json::Value>(i).ok())
            .and_then(|v| v["pid"].as_u64())
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p > 0);
        Ok(pid)
    }

    async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus> {
        let req = self.req(cri::ContainerStatusRequest { container_id: id.into(), verbose: false });
        let resp = self.runtime.clone().container_status(req).await;
        resp.map_err(|s| RuntimeError::from_status("ContainerStatus", id, s))?
            .into_inner()
            .status
            .ok_or(RuntimeError::NotFound { method: "ContainerStatus", what: id.into() })
    }

    async fn exec_sync(&self, id: &str, cmd: &[String], timeout_secs: i64) -> Result<cri::ExecSyncResponse> {
        let grace = crate::clock::secs(timeout_secs);
        let req = self.req_with(
            cri::ExecSyncRequest { container_id: id.into(), cmd: cmd.to_vec(), timeout: crate::clock::clamp_secs(timeout_secs) },
            grace,
        );
        let resp = self.runtime.clone().exec_sync(req).await;
        Ok(resp.map_err(|s| RuntimeError::from_status("ExecSync", id, s))?.into_inner())
    }

    async fn exec(&self, req: cri::ExecRequest) -> Result<String> {
        let id = req.container_id.clone();
        let resp = self.runtime.clone().exec(self.req(req)).await;
        Ok(resp.map_err(|s| RuntimeError::from_status("Exec", &id, s))?.into_inner().url)
    }

    async fn attach(&self, req: cri::AttachRequest) -> Result<String> {
        let id = req.container_id.clone();
        let resp = self.runtime.clone().attach(self.req(req)).await;
        Ok(resp.map_err(|s| RuntimeError::from_status("Attach", &id, s))?.into_inner().url)
    }

    async fn port_forward(&self, req: cri::PortForwardRequest) -> Result<String> {
        let id = req.pod_sandbox_id.clone();
        let resp = self.runtime.clone().port_forward(self.req(req)).await;
        Ok(resp.map_err(|s| RuntimeError::from_status("PortForward", &id, s))?.into_inner().url)
    }

    async fn reopen_container_log(&self, id: &str) -> Result<()> {
        let resp = self.runtime.clone().reopen_container_log(self.req(cri::ReopenContainerLogRequest { container_id: id.into() })).await;
        resp.map_err(|s| RuntimeError::from_status("ReopenContainerLog", id, s))?;
        Ok(())
    }

    async fn update_container_resources(&self, id: &str, linux: &cri::LinuxContainerResources) -> Result<()> {
        let req = cri::UpdateContainerResourcesRequest { container_id: id.into(), linux: Some(linux.clone()), annotations: Default::default() };
        let resp = self.runtime.clone().update_container_resources(self.req(req)).await;
        resp.map_err(|s| RuntimeError::from_status("UpdateContainerResources", id, s))?;
        Ok(())
    }

    async fn list_container_stats(&self, filter: Option<cri::ContainerStatsFilter>) -> Result<Vec<cri::ContainerStats>> {
        let resp = self.runtime.clone().list_container_stats(self.req(cri::ListContainerStatsRequest { filter })).await;
        Ok(resp.map_err(|s| RuntimeError::from_status("ListContainerStats", "", s))?.into_inner().stats)
    }

    async fn list_pod_sandbox_stats(&self, filter: Option<cri::PodSandboxStatsFilter>) -> Result<Vec<cri::PodSandboxStats>> {
        let resp = self.runtime.clone().list_pod_sandbox_stats(self.req(cri::ListPodSandboxStatsRequest { filter })).await;
        Ok(resp.map_err(|s| RuntimeError::from_status("ListPodSandboxStats", "", s))?.into_inner().stats)
    }

    async fn image_status(&self, image: &str) -> Result<Option<cri::Image>> {
        let req = self.req(cri::ImageStatusRequest {
            image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
            verbose: false,
        });
        let resp = self.images.clone().image_status(req).await;
        Ok(resp.map_err(|s| RuntimeError::from_status("ImageStatus", image, s))?.into_inner().image)
    }

    async fn sandbox_image(&self) -> Result<Option<String>> {
        let req = self.req(cri::StatusRequest { verbose: true });
        let resp = self.runtime.clone().status(req).await.map_err(|s| RuntimeError::from_status("Status", "", s))?.into_inner();
        let config = resp.info.get("config").and_then(|c| serde_json::from_str::<serde_json::Value>(c).ok());
        Ok(config.and_then(|c| c["sandboxImage"].as_str().map(str::to_string)).filter(|s| !s.is_empty()))
    }

    async fn list_images(&self) -> Result<Vec<cri::Image>> {
        let resp = self.images.clone().list_images(self.req(cri::ListImagesRequest { filter: None })).await;
        Ok(resp.map_err(|s| RuntimeError::from_status("ListImages", "", s))?.into_inner().images)
    }

    async fn remove_image(&self, image: &str) -> Result<()> {
        let req = self.req(cri::RemoveImageRequest { image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }) });
        match self.images.clone().remove_image(req).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(()),
            Err(s) => Err(RuntimeError::from_status("RemoveImage", image, s)),
        }
    }

    async fn image_fs_info(&self) -> Result<Vec<cri::FilesystemUsage>> {
        let resp = self.images.clone().image_fs_info(self.req(cri::ImageFsInfoRequest {})).await;
        Ok(resp.map_err(|s| RuntimeError::from_status("ImageFsInfo", "", s))?.into_inner().image_filesystems)
    }

    async fn pull_image(
        &self,
        image: &str,
        auth: Option<cri::AuthConfig>,
        sandbox_config: &cri::PodSandboxConfig,
    ) -> Result<String> {
        // Pulls take as long as they take; kubelet sets no deadline either.
        let req = tonic::Request::new(cri::PullImageRequest {
            image: Some(cri::ImageSpec { image: image.into(), ..Default::default() }),
            auth,
            sandbox_config: Some(sandbox_config.clone()),
        });
        let resp = self.images.clone().pull_image(req).await;
        Ok(resp.map_err(|s| RuntimeError::from_status("PullImage", image, s))?.into_inner().image_ref)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_like_kubelet() {
        assert_eq!(socket_path("unix:///run/containerd/containerd.sock").unwrap(), PathBuf::from("/run/containerd/containerd.sock"));
        assert_eq!(socket_path("/tmp/x.sock").unwrap(), PathBuf::from("/tmp/x.sock"));
        assert!(socket_path("tcp://1.2.3.4:1").is_err());
        assert!(socket_path("unix://").is_err());
    }
}
