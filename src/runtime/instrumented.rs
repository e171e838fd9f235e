//! A [`Runtime`] that records every call it passes on (count, duration,
//! errors) under kubelet's `kubelet_runtime_operations*` names and
//! operation types, as kubelet's instrumented runtime service does, and
//! tells the relist loop when a call changed the runtime's pods (so the
//! agent's own changes are seen at once, not at the next periodic relist).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{Result, Runtime, cri};
use crate::metrics::Metrics;

pub struct Instrumented {
    inner: Arc<dyn Runtime>,
    metrics: Arc<Metrics>,
    changed: Arc<tokio::sync::Notify>,
}

/// The operations that change the runtime's sandboxes or containers.
const CHANGES: &[&str] = &["run_podsandbox", "stop_podsandbox", "remove_podsandbox", "create_container", "start_container", "stop_container", "remove_container"];

impl Instrumented {
    /// `changed` is notified after every call that changes the runtime's
    /// sandboxes or containers (whatever its outcome).
    pub fn new(inner: Arc<dyn Runtime>, metrics: Arc<Metrics>, changed: Arc<tokio::sync::Notify>) -> Self {
        Self { inner, metrics, changed }
    }

    async fn record<T>(&self, operation: &'static str, call: impl Future<Output = Result<T>>) -> Result<T> {
        let started = Instant::now();
        let r = call.await;
        self.metrics.runtime_call(operation, started.elapsed().as_secs_f64(), r.is_err());
        if CHANGES.contains(&operation) {
            self.changed.notify_one();
        }
        r
    }
}

#[async_trait]
impl Runtime for Instrumented {
    async fn version(&self) -> Result<cri::VersionResponse> {
        self.record("version", self.inner.version()).await
    }
    async fn status(&self) -> Result<cri::StatusResponse> {
        self.record("status", self.inner.status()).await
    }
    async fn run_pod_sandbox(&self, config: &cri::PodSandboxConfig, handler: &str) -> Result<String> {
        self.record("run_podsandbox", self.inner.run_pod_sandbox(config, handler)).await
    }
    async fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        self.record("stop_podsandbox", self.inner.stop_pod_sandbox(id)).await
    }
    async fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        self.record("remove_podsandbox", self.inner.remove_pod_sandbox(id)).await
    }
    async fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus> {
        self.record("podsandbox_status", self.inner.pod_sandbox_status(id)).await
    }
    async fn list_pod_sandbox(&self, filter: Option<cri::PodSandboxFilter>) -> Result<Vec<cri::PodSandbox>> {
        self.record("list_podsandbox", self.inner.list_pod_sandbox(filter)).await
    }
    async fn create_container(&self, sandbox_id: &str, config: &cri::ContainerConfig, sandbox_config: &cri::PodSandboxConfig) -> Result<String> {
        self.record("create_container", self.inner.create_container(sandbox_id, config, sandbox_config)).await
    }
    async fn start_container(&self, id: &str) -> Result<()> {
        self.record("start_container", self.inner.start_container(id)).await
    }
    async fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<()> {
        self.record("stop_container", self.inner.stop_container(id, timeout_secs)).await
    }
    async fn remove_container(&self, id: &str) -> Result<()> {
        self.record("remove_container", self.inner.remove_container(id)).await
    }
    async fn list_containers(&self, filter: Option<cri::ContainerFilter>) -> Result<Vec<cri::Container>> {
        self.record("list_containers", self.inner.list_containers(filter)).await
    }
    async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus> {
        self.record("container_status", self.inner.container_status(id)).await
    }
    async fn container_pid(&self, id: &str) -> Result<Option<u32>> {
        self.record("container_status", self.inner.container_pid(id)).await
    }
    async fn exec_sync(&self, id: &str, cmd: &[String], timeout_secs: i64) -> Result<cri::ExecSyncResponse> {
        self.record("exec_sync", self.inner.exec_sync(id, cmd, timeout_secs)).await
    }
    async fn exec(&self, req: cri::ExecRequest) -> Result<String> {
        self.record("exec", self.inner.exec(req)).await
    }
    async fn attach(&self, req: cri::AttachRequest) -> Result<String> {
        self.record("attach", self.inner.attach(req)).await
    }
    async fn port_forward(&self, req: cri::PortForwardRequest) -> Result<String> {
        self.record("port_forward", self.inner.port_forward(req)).await
    }
    async fn reopen_container_log(&self, id: &str) -> Result<()> {
        self.record("reopen_container_log", self.inner.reopen_container_log(id)).await
    }
    async fn update_container_resources(&self, id: &str, linux: &cri::LinuxContainerResources) -> Result<()> {
        self.record("update_container", self.inner.update_container_resources(id, linux)).await
    }
    async fn list_container_stats(&self, filter: Option<cri::ContainerStatsFilter>) -> Result<Vec<cri::ContainerStats>> {
        self.record("list_container_stats", self.inner.list_container_stats(filter)).await
    }
    async fn list_pod_sandbox_stats(&self, filter: Option<cri::PodSandboxStatsFilter>) -> Result<Vec<cri::PodSandboxStats>> {
        self.record("list_podsandbox_stats", self.inner.list_pod_sandbox_stats(filter)).await
    }
    async fn image_status(&self, image: &str) -> Result<Option<cri::Image>> {
        self.record("image_status", self.inner.image_status(image)).await
    }
    async fn sandbox_image(&self) -> Result<Option<String>> {
        self.inner.sandbox_image().await
    }
    async fn list_images(&self) -> Result<Vec<cri::Image>> {
        self.record("list_images", self.inner.list_images()).await
    }
    async fn remove_image(&self, image: &str) -> Result<()> {
        self.record("remove_image", self.inner.remove_image(image)).await
    }
    async fn image_fs_info(&self) -> Result<Vec<cri::FilesystemUsage>> {
        self.record("image_fs_info", self.inner.image_fs_info()).await
    }
    async fn pull_image(&self, image: &str, auth: Option<cri::AuthConfig>, sandbox_config: &cri::PodSandboxConfig) -> Result<String> {
        self.record("pull_image", self.inner.pull_image(image, auth, sandbox_config)).await
    }
}
