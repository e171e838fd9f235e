//! The kubelet core: pod sources, the pure planner and status function, and
//! the per-pod workers that carry plans out against a [`Runtime`].
//!
//! [`Runtime`]: crate::runtime::Runtime

pub mod admission;
pub mod allocation;
pub mod apparmor;
pub mod backoff;
pub mod cgroups;
pub mod container;
pub mod dns;
pub mod env;
pub mod events;
pub mod eviction;
pub mod housekeeping;
pub mod log_rotation;
pub mod logs;
pub mod manager;
pub mod manifest;
pub mod plan;
pub mod pleg;
pub mod probing;
pub mod qos;
pub mod sandbox;
pub mod shutdown;
pub mod source;
pub mod status;
pub mod store;
pub mod swap;
#[cfg(test)]
mod testing;
pub mod validation;
pub mod worker;

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::runtime::labels::PodIdentity;

pub use crate::config::CgroupDriver;

pub use crate::node::NodeContext;

/// Whether a status is final: Succeeded or Failed.
pub fn is_terminal(s: &k8s_openapi::api::core::v1::PodStatus) -> bool {
    matches!(s.phase.as_deref(), Some("Succeeded" | "Failed"))
}

/// kubelet's critical pods: static pods and pods of priority 2000000000
/// (system-cluster-critical) and up. Eviction spares them; a node shutdown
/// stops them last; pressure does not keep them out.
pub fn is_critical(pod: &Pod) -> bool {
    !from_api(pod) || pod.spec.as_ref().and_then(|s| s.priority).is_some_and(|p| p >= 2_000_000_000)
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
