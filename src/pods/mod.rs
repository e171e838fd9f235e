//! The kubelet core: pod sources, the pure planner and status function, and
//! the per-pod workers that carry plans out against a [`Runtime`].
//!
//! [`Runtime`]: crate::runtime::Runtime

pub mod admission;
pub mod backoff;
pub mod cgroups;
pub mod container;
pub mod dns;
pub mod env;
pub mod events;
pub mod log_rotation;
pub mod logs;
pub mod manager;
pub mod manifest;
pub mod plan;
pub mod pleg;
pub mod probing;
pub mod qos;
pub mod sandbox;
pub mod source;
pub mod status;
pub mod store;
#[cfg(test)]
mod testing;
pub mod validation;
pub mod worker;

use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::runtime::labels::PodIdentity;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

/// Facts about this node that shape how pods are run. Built once at start.
#[derive(Debug, Clone)]
pub struct NodeContext {
    pub node_name: String,
    /// `--root-dir`: per-pod directories live under `pods/<uid>`.
    pub root_dir: PathBuf,
    /// `podLogsDir`: `<ns>_<name>_<uid>/<container>/<n>.log` below it.
    pub pod_logs_dir: PathBuf,
    /// kubelet's legacy log symlinks (`/var/log/containers`).
    pub container_logs_dir: PathBuf,
    pub cgroup_driver: CgroupDriver,
    pub cgroup_root: String,
    pub cgroups_per_qos: bool,
    pub dns: dns::ClusterDns,
    /// Node capacity, for the Burstable oom_score_adj and downward API
    /// defaults.
    pub memory_capacity_bytes: i64,
    pub cpu_capacity_millis: i64,
    /// The lowest oom_score_adj this node lets processes have (-1000 unless
    /// the kernel refused nodelet a lower score).
    pub oom_score_adj_floor: i64,
    /// The node's own addresses (status.hostIP).
    pub host_ips: Vec<String>,
    pub backoff: backoff::BackoffConfig,
    /// Prefix of containerIDs in status (`containerd://...`).
    pub runtime_name: String,
}

impl NodeContext {
    /// A context with kubelet's defaults, for tests and dry runs.
    pub fn for_tests(node_name: &str) -> Self {
        Self {
            node_name: node_name.into(),
            root_dir: "/var/lib/kubelet".into(),
            pod_logs_dir: "/var/log/pods".into(),
            container_logs_dir: "/var/log/containers".into(),
            cgroup_driver: CgroupDriver::Cgroupfs,
            cgroup_root: "/".into(),
            cgroups_per_qos: true,
            dns: dns::ClusterDns::default(),
            memory_capacity_bytes: 8 << 30,
            cpu_capacity_millis: 4000,
            oom_score_adj_floor: -1000,
            host_ips: vec![],
            backoff: backoff::BackoffConfig::default(),
            runtime_name: "containerd".into(),
        }
    }
}

/// The identity of a desired pod.
pub fn identity(pod: &Pod) -> PodIdentity {
    PodIdentity {
        namespace: pod.metadata.namespace.clone().unwrap_or_default(),
        name: pod.metadata.name.clone().unwrap_or_default(),
        uid: pod.metadata.uid.clone().unwrap_or_default(),
    }
}

/// Whether a pod came from the apiserver (not a static pod).
pub fn from_api(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(manifest::ANNOTATION_CONFIG_SOURCE))
        .is_none_or(|s| s == "api")
}

/// A desired pod as the sources give it; shared, never mutated.
pub type DesiredPod = Arc<Pod>;

/// How a container takes part in the pod's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerKind {
    /// Runs to completion before the next one starts.
    Init,
    /// An init container with restartPolicy Always: started in order, kept
    /// running beside the app containers, stopped after them.
    Sidecar,
    App,
    /// A debugging container added to a running pod (`kubectl debug`):
    /// started once, never restarted, no probes, not part of readiness.
    Ephemeral,
}

impl ContainerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerKind::Init => "init",
            ContainerKind::Sidecar => "sidecar",
            ContainerKind::App => "app",
            ContainerKind::Ephemeral => "ephemeral",
        }
    }
}
