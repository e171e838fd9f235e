//! The container runtime shell: the CRI v1 calls nodelet makes, behind one
//! trait so that the pod core can run against containerd (`remote`) or
//! against the printing simulator of `--dry-run` (`dry_run`).
//!
//! Nothing here knows about Pod specs; the runtime only sees CRI configs and
//! the labels kubelet puts on them.

pub mod containerd;
pub mod cri_log;
pub mod dry_run;
pub mod instrumented;
pub mod labels;
pub mod observe;
pub mod remote;

use async_trait::async_trait;

/// Code generated from proto/cri/v1/api.proto.
#[allow(clippy::all, missing_docs)]
pub mod cri {
    tonic::include_proto!("runtime.v1");
}

pub use observe::{ContainerPhase, ObservedContainer, ObservedSandbox, RuntimePod};

/// The errors a runtime call can give.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot connect: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error("{method}: {message}")]
    Call { method: &'static str, code: tonic::Code, message: String },
    #[error("{method}: {what} not found")]
    NotFound { method: &'static str, what: String },
}

impl RuntimeError {
    pub fn from_status(method: &'static str, what: &str, status: tonic::Status) -> Self {
        if status.code() == tonic::Code::NotFound {
            RuntimeError::NotFound { method, what: what.to_string() }
        } else {
            RuntimeError::Call { method, code: status.code(), message: status.message().to_string() }
        }
    }

    /// The gRPC status code, as Go names it (kubelet's metric label).
    pub fn code(&self) -> String {
        match self {
            RuntimeError::Connect { .. } => "Unavailable".into(),
            RuntimeError::Call { code, .. } => format!("{code:?}"),
            RuntimeError::NotFound { .. } => "NotFound".into(),
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::NotFound { .. })
    }
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Wall-clock time in nanoseconds since the epoch, the unit CRI timestamps
/// use.
/// The filter for running containers.
pub fn running_containers() -> cri::ContainerFilter {
    cri::ContainerFilter {
        state: Some(cri::ContainerStateValue { state: cri::ContainerState::ContainerRunning as i32 }),
        ..Default::default()
    }
}

/// The filter for ready pod sandboxes.
pub fn ready_sandboxes() -> cri::PodSandboxFilter {
    cri::PodSandboxFilter {
        state: Some(cri::PodSandboxStateValue { state: cri::PodSandboxState::SandboxReady as i32 }),
        ..Default::default()
    }
}

/// The CRI calls nodelet makes. Implementations are thin: no retries, no
/// policy, one call in, one call out.
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    async fn version(&self) -> Result<cri::VersionResponse>;
    async fn status(&self) -> Result<cri::StatusResponse>;

    async fn run_pod_sandbox(&self, config: &cri::PodSandboxConfig, handler: &str) -> Result<String>;
    async fn stop_pod_sandbox(&self, id: &str) -> Result<()>;
    async fn remove_pod_sandbox(&self, id: &str) -> Result<()>;
    async fn pod_sandbox_status(&self, id: &str) -> Result<cri::PodSandboxStatus>;
    async fn list_pod_sandbox(&self, filter: Option<cri::PodSandboxFilter>) -> Result<Vec<cri::PodSandbox>>;

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &cri::ContainerConfig,
        sandbox_config: &cri::PodSandboxConfig,
    ) -> Result<String>;
    async fn start_container(&self, id: &str) -> Result<()>;
    async fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<()>;
    async fn remove_container(&self, id: &str) -> Result<()>;
    async fn list_containers(&self, filter: Option<cri::ContainerFilter>) -> Result<Vec<cri::Container>>;
    async fn container_status(&self, id: &str) -> Result<cri::ContainerStatus>;
    /// The host PID of the container's first process, from the runtime's
    /// verbose status (`None` if it does not say, or nothing runs).
    async fn container_pid(&self, id: &str) -> Result<Option<u32>>;
    async fn exec_sync(&self, id: &str, cmd: &[String], timeout_secs: i64) -> Result<cri::ExecSyncResponse>;
    /// The streaming calls: each returns the runtime's streaming URL for the
    /// session, which the node API proxies the client's connection to.
    async fn exec(&self, req: cri::ExecRequest) -> Result<String>;
    async fn attach(&self, req: cri::AttachRequest) -> Result<String>;
    async fn port_forward(&self, req: cri::PortForwardRequest) -> Result<String>;
    /// Makes the runtime write the container's log to a new file at its log
    /// path (after the old one was renamed away).
    async fn reopen_container_log(&self, id: &str) -> Result<()>;
    /// In-place resize: the running container's cgroup limits.
    async fn update_container_resources(&self, id: &str, linux: &cri::LinuxContainerResources) -> Result<()>;
    /// CPU, memory and writable-layer figures of the containers.
    async fn list_container_stats(&self, filter: Option<cri::ContainerStatsFilter>) -> Result<Vec<cri::ContainerStats>>;
    /// The pods' own figures (network, processes) with their containers'.
    async fn list_pod_sandbox_stats(&self, filter: Option<cri::PodSandboxStatsFilter>) -> Result<Vec<cri::PodSandboxStats>>;

    /// `None` when the image is not present on the node.
    async fn image_status(&self, image: &str) -> Result<Option<cri::Image>>;
    /// Every image the runtime holds.
    async fn list_images(&self) -> Result<Vec<cri::Image>>;
    /// Removes an image (by ID); one that is already gone is no error.
    async fn remove_image(&self, image: &str) -> Result<()>;
    /// The filesystems holding images (their mountpoints and usage).
    async fn image_fs_info(&self) -> Result<Vec<cri::FilesystemUsage>>;
    /// The image the runtime makes sandboxes from (containerd's
    /// `sandbox_image`, from its verbose Status), when it says.
    async fn sandbox_image(&self) -> Result<Option<String>> {
        Ok(None)
    }
    /// Returns the image reference (ID) to create containers from.
    async fn pull_image(
        &self,
        image: &str,
        auth: Option<cri::AuthConfig>,
        sandbox_config: &cri::PodSandboxConfig,
    ) -> Result<String>;
}

/// The runtime's own view of its health, from the CRI Status call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeHealth {
    pub runtime_ready: bool,
    pub network_ready: bool,
    /// Why a required condition is false, for logs and status messages.
    pub message: String,
}

impl RuntimeHealth {
    pub fn from_status(status: &cri::StatusResponse) -> Self {
        let mut health = RuntimeHealth::default();
        let mut problems = Vec::new();
        for c in status.status.iter().flat_map(|s| s.conditions.iter()) {
            match c.r#type.as_str() {
                "RuntimeReady" => health.runtime_ready = c.status,
                "NetworkReady" => health.network_ready = c.status,
                _ => continue,
            }
            if !c.status {
                problems.push(format!("{}=false reason:{} message:{}", c.r#type, c.reason, c.message));
            }
        }
        health.message = problems.join("; ");
        health
    }
}
