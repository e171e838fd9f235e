//! nodelet: one daemon per Kubernetes worker node in place of kubelet and
//! kube-proxy. This library holds everything; `main.rs` only parses flags.
//!
//! Layout (see ../shared/DESIGN.md): `pods` is the kubelet core (sources,
//! a pure planner and status function, per-pod workers); `runtime` is the
//! CRI shell; `config` resolves flags and files; `server` serves the local
//! endpoints; `agent` wires them together.

/// The Kubernetes release whose API and node behaviour nodelet follows (its
/// k8s-openapi types are this release's). A macro so that `concat!` can
/// use it.
#[macro_export]
macro_rules! kubernetes_version {
    () => {
        "v1.34.0"
    };
}

/// The kubelet version nodelet reports (Node `kubeletVersion`, `kubelet
/// --version`): the Kubernetes release with nodelet's own as semver build
/// metadata (`v1.34.0+nodelet.0.1.0`, as k3s does), so version checks
/// (kubeadm's skew rules, `kubectl`) rank it exactly as kubelet v1.34.0;
/// a pre-release suffix (`-nodelet`) would rank below v1.34.0.
#[macro_export]
macro_rules! kubelet_version {
    () => {
        concat!($crate::kubernetes_version!(), "+nodelet.", env!("CARGO_PKG_VERSION"))
    };
}

pub mod allocatable;
pub mod agent;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod cpus;
pub mod topology;
pub mod csi;
pub mod devices;
pub mod dra;
pub mod credentials;
pub mod decode;
pub mod downward;
pub mod explain;
pub mod files;
pub mod fuzz;
pub mod images;
pub mod memory;
pub mod kubeapi;
pub mod metrics;
pub mod mounts;
pub mod names;
pub mod node;
pub mod node_selector;
pub mod pods;
pub mod probes;
pub mod proxy;
pub mod reference;
pub mod pulls;
pub mod resources;
pub mod runtime;
pub mod server;
pub mod sysctls;
pub mod tasks;
pub mod view;
pub mod volumes;
pub mod watchdog;
