//! The agent: decides which roles run on this node and joins them. Each
//! role is built by a module of its own from `Settings` and the handles the
//! roles share, and gives back what it runs (its tasks go into one `Tasks`,
//! which stops with `run`):
//!
//! - `runtime`: the CRI runtime (or the dry-run simulator) and its health;
//! - `machine`: the machine's capacity, Node Allocatable and limits;
//! - `pod_sync`: the pod sources, managers and workers (built, then started
//!   once the node role has plugged in);
//! - `node` (cluster mode): registration, node status, Lease, the bound-pod
//!   watch and the pod status writer;
//! - `proxy` (cluster mode): the Service proxy;
//! - `node_api`: the node API and the local endpoints;
//! - `supervise`: systemd readiness and watchdog, and the wait for the end.

mod machine;
mod node;
mod node_api;
mod pod_sync;
mod proxy;
mod runtime;
mod supervise;

use std::sync::Arc;

use crate::runtime::RuntimeError;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("container runtime at {endpoint}: {reason}")]
    Runtime { endpoint: String, reason: RuntimeError },
    #[error("container runtime at {endpoint} does not speak CRI v1: {detail}")]
    NotCri { endpoint: String, detail: String },
    #[error("cannot serve the local endpoint on {addr}: {reason}")]
    Bind { addr: std::net::SocketAddr, reason: std::io::Error },
    #[error("joining the cluster: {0}")]
    Cluster(crate::cluster::ClusterError),
    #[error("{0}")]
    Fault(String),
    #[error("dry run: the inputs have problems:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

impl From<crate::cluster::ClusterError> for AgentError {
    fn from(e: crate::cluster::ClusterError) -> Self {
        AgentError::Cluster(e)
    }
}
/// Runs the node agent until `shutdown`; `proxy`, in cluster mode, runs the
/// Service proxy beside it. Pods keep running after it returns, as with
/// kubelet.
pub async fn run(
    mut s: crate::config::Settings,
    proxy: Option<crate::proxy::run::ProxySettings>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    machine::preflight(&s)?;
    // The Node says whose Service proxy it runs, for kube-proxy's DaemonSet
    // to keep off (other.rs).
    if let (Some(cs), Some(p)) = (s.cluster.as_mut(), proxy.as_ref().filter(|p| p.mode != crate::proxy::run::Mode::None)) {
        cs.node_labels.entry(crate::proxy::other::LABEL.to_string()).or_insert_with(|| p.mode.as_str().to_string());
    }
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let mut tasks = crate::tasks::Tasks::default();
    let mut watched = Vec::new();
    // The runtime first: no pod runs without it.
    let rt = runtime::build(&s, &metrics, &mut tasks).await?;
    let (driver, note) = runtime::choose_cgroup_driver(s.cgroup_driver, rt.cgroup_driver);
    if let Some(note) = note {
        tracing::warn!("{note}");
    }
    s.cgroup_driver = driver;
    // Credentials next: TLS bootstrap blocks until a certificate is issued.
    let joined = match &s.cluster {
        Some(cs) => Some(crate::cluster::join(cs, &s.node_name, s.dry_run).await?),
        None => None,
    };
    let machine = machine::context(&s, rt.version.runtime_name.clone())?;
    let mut pods = pod_sync::PodSync::build(&s, &machine, &rt, &metrics, joined.as_ref().map(|j| &j.client), &mut tasks)?;

    // Cluster mode: the proxy, the node API and the node role.
    let mut proxy_synced = None;
    let mut admission = None;
    if let (Some(joined), Some(cs)) = (joined, &s.cluster) {
        if let Some(p) = proxy.filter(|p| p.mode != crate::proxy::run::Mode::None) {
            proxy_synced = Some(proxy::start(p, &joined.client, &pods.statuses, pods.trails.clone(), &mut tasks, &mut watched).await?);
        }
        if s.node_api.port != 0 && !s.dry_run {
            tasks.spawn("node API", node_api::build(&s, cs, &joined.client, &pods.ctx).await?);
        }
        admission = Some(node::start(&s, cs, joined, &rt, &mut pods, &metrics, &mut tasks));
    }

    let (statuses, trails, pulls) = (pods.statuses.clone(), pods.trails.clone(), pods.pulls.clone());
    let managers = Some((pods.ctx.cpus.clone(), pods.ctx.memory.clone(), pods.ctx.devices.clone(), pods.ctx.dra.clone()));
    let started = pods.start(&s, &metrics, admission, &mut tasks, &mut watched)?;
    let local = crate::server::LocalApi { statuses: statuses.clone(), relisted: started.relisted.clone(), trails, pulls, pod_logs_dir: s.pod_logs_dir.clone(), managers, metrics: metrics.clone() };
    node_api::serve_local(&s, started.relisted.clone(), local, &mut tasks).await?;
    supervise::notify_and_watch(&s, &started.relisted, &statuses, watched, &mut tasks);
    tracing::info!(node = %s.node_name, dry_run = s.dry_run, "nodelet is running");
    match started.planned {
        Some(planned) => supervise::one_shot_dry_run(tasks, planned, proxy_synced, shutdown).await,
        None => supervise::until_shutdown(tasks, shutdown).await,
    }
}
