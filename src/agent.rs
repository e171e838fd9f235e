//! Wires the agent together: the runtime (or the dry-run simulator), the pod
//! sources, the relist loop and containerd's exit events, the pod manager
//! and the local endpoint. Every task is owned here and stops with `run`.

use crate::metrics::Metrics;
use crate::runtime::instrumented::Instrumented;
use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use crate::watchdog::{self, Beat, Watched};
use crate::tasks::Tasks;

use crate::config::Settings;
use crate::cluster::{self, events::ApiRecorder, node::NodeFacts};
use crate::pods::admission::NodeResources;
use crate::pods::events::{EventRecorder, LogRecorder};
use crate::pods::manager::PodManager;
use crate::pods::source::{SourceName, file::FileSource, http::HttpSource};
use crate::pods::store::StatusStore;
use crate::pods::worker::WorkerContext;
use crate::pods::{NodeContext, dns, pleg};
use crate::runtime::dry_run::DryRunRuntime;
use crate::runtime::remote::{RemoteRuntime, socket_path};
use crate::runtime::{Runtime, RuntimeError, RuntimeHealth, containerd, cri};
use crate::server;

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

/// How often the runtime's Status (runtime and network readiness) is read.
const HEALTH_PERIOD: Duration = Duration::from_secs(5);

/// Connects to the CRI runtime and checks that it answers Version and
/// Status as a CRI v1 runtime.
pub async fn connect_runtime(endpoint: &str, timeout: Duration) -> Result<(RemoteRuntime, cri::VersionResponse), AgentError> {
    let rt = RemoteRuntime::connect(endpoint, timeout)
        .await
        .map_err(|reason| AgentError::Runtime { endpoint: endpoint.into(), reason })?;
    let version = rt.version().await.map_err(|e| match e {
        RuntimeError::Call { code: tonic::Code::Unimplemented, .. } => AgentError::NotCri {
            endpoint: endpoint.into(),
            detail: "it does not serve runtime.v1.RuntimeService".into(),
        },
        // containerd's CRI plugin while it starts: a runtime, not yet ready.
        e @ RuntimeError::Call { .. } if matches!(&e, RuntimeError::Call { message, .. } if message.contains("not initialized")) => {
            AgentError::Runtime { endpoint: endpoint.into(), reason: e }
        }
        RuntimeError::Call { code, message, .. } if code == tonic::Code::Unknown || code == tonic::Code::Internal => {
            AgentError::NotCri { endpoint: endpoint.into(), detail: format!("Version answered {code:?}: {message}") }
        }
        reason => AgentError::Runtime { endpoint: endpoint.into(), reason },
    })?;
    if !version.runtime_api_version.starts_with("v1") || version.runtime_api_version.starts_with("v1alpha") {
        return Err(AgentError::NotCri {
            endpoint: endpoint.into(),
            detail: format!("it reports runtime API version {:?}", version.runtime_api_version),
        });
    }
    let status = rt.status().await.map_err(|reason| AgentError::Runtime { endpoint: endpoint.into(), reason })?;
    let health = RuntimeHealth::from_status(&status);
    tracing::info!(
        runtime = %version.runtime_name,
        version = %version.runtime_version,
        api = %version.runtime_api_version,
        runtime_ready = health.runtime_ready,
        network_ready = health.network_ready,
        "container runtime connected"
    );
    if !health.runtime_ready || !health.network_ready {
        tracing::warn!(conditions = %health.message, "the container runtime is not fully ready yet");
    }
    Ok((rt, version))
}

/// How long a starting agent waits for a runtime that is itself starting
/// (containerd restarted beside it, or started by the same boot).
pub const RUNTIME_START_WAIT: Duration = Duration::from_secs(60);

/// Whether a runtime error says the runtime is starting (or restarting):
/// its socket is there but refuses connections, or it answers "not
/// initialized". A missing socket, or a server that answers but not as
/// CRI, is a configuration error and fails at once.
fn starting(e: &AgentError) -> bool {
    match e {
        AgentError::Runtime { reason: RuntimeError::Connect { reason, .. }, .. } => reason.to_lowercase().contains("connection refused"),
        AgentError::Runtime { reason: RuntimeError::Call { message, code, .. }, .. } => {
            message.contains("not initialized") || *code == tonic::Code::Unavailable && message.to_lowercase().contains("connection refused")
        }
        _ => false,
    }
}

/// `connect_runtime`, waiting out a runtime that says it is still starting
/// (see `starting`): one warning, then retries with back-off for up to
/// [`RUNTIME_START_WAIT`]. Any other failure fails at once.
pub async fn wait_for_runtime(endpoint: &str, timeout: Duration) -> Result<(RemoteRuntime, cri::VersionResponse), AgentError> {
    let deadline = tokio::time::Instant::now() + RUNTIME_START_WAIT;
    let mut delay = Duration::from_millis(200);
    let mut waited = false;
    loop {
        match connect_runtime(endpoint, timeout).await {
            Ok(x) => {
                if waited {
                    tracing::info!(endpoint, "the container runtime answers now");
                }
                return Ok(x);
            }
            Err(e) if starting(&e) && tokio::time::Instant::now() + delay < deadline => {
                if !waited {
                    tracing::warn!(error = %e, wait_s = RUNTIME_START_WAIT.as_secs(), "the container runtime is not up yet; waiting for it");
                    waited = true;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Asks the kernel for `wanted` as this process's oom_score_adj. Without
/// CAP_SYS_RESOURCE a lower score than the current one is refused: then the
/// current score is the floor for every container too, logged once.
pub fn set_own_oom_score_adj(wanted: i32) -> i64 {
    let path = "/proc/self/oom_score_adj";
    let current = || std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<i64>().ok()).unwrap_or(0);
    match std::fs::OpenOptions::new().write(true).open(path).and_then(|mut f| f.write_all(wanted.to_string().as_bytes())) {
        Ok(()) => -1000,
        Err(e) => {
            let floor = current();
            tracing::warn!(
                wanted,
                current = floor,
                error = %e,
                "the kernel refused a lower oom_score_adj (no CAP_SYS_RESOURCE); container scores below {floor} are clamped to {floor}"
            );
            floor
        }
    }
}

/// Node Allocatable enforcement at start, as kubelet's container manager
/// does: the pods' top-level cgroup gets its limits (capacity less the
/// reservations with `enforceNodeAllocatable: [pods]`), and the named
/// kube/system reserved cgroups theirs; a named cgroup that does not exist
/// fails the start. A dry run says what it would write; the systemd driver's
/// kubepods.slice is left to systemd (logged).
fn enforce_node_allocatable(s: &Settings, capacity: &crate::allocatable::Capacity) -> Result<(), AgentError> {
    use crate::allocatable::{apply, pods_limits, reserved_limits};
    use crate::config::allocatable::Enforce;
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut plan: Vec<(String, crate::allocatable::Limits, bool)> = Vec::new();
    if s.cgroups_per_qos {
        match s.cgroup_driver {
            crate::pods::CgroupDriver::Cgroupfs => plan.push((format!("{}/kubepods", s.cgroup_root.trim_end_matches('/')), pods_limits(capacity, &s.allocatable), true)),
            crate::pods::CgroupDriver::Systemd => tracing::warn!("with the systemd cgroup driver nodelet does not set kubepods.slice's limits; Node Allocatable is reported and admitted against"),
        }
    }
    let a = &s.allocatable;
    if a.enforce.contains(&Enforce::KubeReserved) {
        plan.push((a.kube_reserved_cgroup.clone().unwrap_or_default(), reserved_limits(&a.kube_reserved), false));
    }
    if a.enforce.contains(&Enforce::SystemReserved) {
        plan.push((a.system_reserved_cgroup.clone().unwrap_or_default(), reserved_limits(&a.system_reserved), false));
    }
    // The -compressible forms: CPU only (throttling a daemon is safe; an
    // OOM kill of the runtime is not).
    let cpu_only = |l: crate::allocatable::Limits| crate::allocatable::Limits { memory_bytes: None, pids: None, ..l };
    if a.enforce.contains(&Enforce::KubeReservedCompressible) {
        plan.push((a.kube_reserved_cgroup.clone().unwrap_or_default(), cpu_only(reserved_limits(&a.kube_reserved)), false));
    }
    if a.enforce.contains(&Enforce::SystemReservedCompressible) {
        plan.push((a.system_reserved_cgroup.clone().unwrap_or_default(), cpu_only(reserved_limits(&a.system_reserved)), false));
    }
    for (cgroup, limits, create) in plan {
        if s.dry_run {
            tracing::info!(cgroup, ?limits, "dry run: would set the cgroup's limits (Node Allocatable)");
            continue;
        }
        apply(root, &cgroup, &limits, create).map_err(|e| AgentError::Fault(format!("enforcing Node Allocatable on the cgroup {cgroup}: {e}")))?;
        tracing::info!(cgroup, cpu_shares = limits.cpu_shares, memory = ?limits.memory_bytes, pids = ?limits.pids, "Node Allocatable enforced");
    }
    Ok(())
}

fn node_memory_bytes() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<i64>().ok()))
        .map_or(0, |kb| kb * 1024)
}

/// Where `/logs/` reads the node's own logs, as kubelet (fixed there too).
const NODE_LOG_DIR: &str = "/var/log";

/// The node API, ready to run: the serving certificate from the configured
/// files, or from the cluster's `kubelet-serving` signer (serverTLSBootstrap:
/// the port is served once one is issued, and it is renewed), or kubelet's
/// self-signed pair in the cert dir; TokenReview and SubjectAccessReview
/// through the node's client.
async fn node_api(
    s: &Settings,
    cs: &crate::config::ClusterSettings,
    client: &kube::Client,
    ctx: &WorkerContext,
) -> Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>, AgentError> {
    let na = s.node_api.clone();
    let mut names = vec![s.node_name.clone()];
    names.extend(s.node_ips.iter().cloned());
    let gate = server::auth::Gate::new(Some(client.clone()), &s.node_name, &na);
    let (runtime, statuses, probe_counts, metrics) = (ctx.runtime.clone(), ctx.statuses.clone(), ctx.probe_counts.clone(), ctx.metrics.clone());
    let stats = server::stats::Collector::new(
        runtime.clone(),
        statuses.clone(),
        s.node_name.clone(),
        s.root_dir.clone(),
        s.pod_logs_dir.clone(),
        ctx.mounted.clone(),
        ctx.csi.clone(),
    );
    let info = server::node_api::MachineInfo {
        num_cores: std::thread::available_parallelism().map_or(1, |n| n.get()) as i64,
        memory_capacity: node_memory_bytes(),
        config: s.kubelet_configuration(),
    };
    let api = Arc::new(server::node_api::NodeApi {
        runtime,
        statuses,
        gate,
        stats,
        info,
        probe_counts,
        metrics,
        debugging: na.debugging_handlers,
        system_logs: na.system_log_handler.then(|| std::path::PathBuf::from(NODE_LOG_DIR)),
        pod_logs_dir: s.pod_logs_dir.clone(),
        streaming_idle: na.streaming_idle_timeout,
        fine_grained_authz: na.fine_grained_authz,
    });
    let read_only = if na.read_only_port != 0 {
        let ro_addr = std::net::SocketAddr::new(na.address, na.read_only_port);
        let listener = server::bind(ro_addr).await.map_err(|reason| AgentError::Bind { addr: ro_addr, reason })?;
        tracing::warn!(addr = %ro_addr, "serving the read-only port: pods, stats and metrics over plain HTTP, without authentication");
        Some(server::node_api::serve_read_only(listener, api.clone()))
    } else {
        None
    };
    let main = node_api_main(s, cs, client, &names, na.clone(), api).await?;
    Ok(Box::pin(async move {
        match read_only {
            Some(ro) => {
                tokio::join!(main, ro);
            }
            None => main.await,
        }
    }))
}

/// The node API's HTTPS side (see `node_api`).
async fn node_api_main(
    s: &Settings,
    cs: &crate::config::ClusterSettings,
    client: &kube::Client,
    names: &[String],
    na: crate::config::node_api::NodeApiSettings,
    api: Arc<server::node_api::NodeApi>,
) -> Result<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>, AgentError> {
    let names = names.to_vec();
    let addr = std::net::SocketAddr::new(na.address, na.port);
    let tls_err = |e: server::tls::TlsError| AgentError::Fault(format!("the node API's TLS: {e}"));
    let tls_policy = server::tls::TlsPolicy { min_version: na.tls_min_version, cipher_suites: na.tls_cipher_suites.clone() };
    let static_cert = match (&na.tls_cert_file, &na.tls_private_key_file) {
        (Some(c), Some(k)) => Some(server::tls::from_files(c, k).map_err(tls_err)?),
        _ if na.server_tls_bootstrap => None,
        _ => Some(server::tls::self_signed(&cs.cert_dir, &names).map_err(tls_err)?),
    };
    if let Some(cert) = static_cert {
        let sources = server::tls::Sources {
            client_ca: na.client_ca_file.clone(),
            cert_files: na.tls_cert_file.clone().zip(na.tls_private_key_file.clone()),
        };
        let (tls, follow) = server::tls::reloading(Arc::new(server::tls::ServingCert::new(cert)), sources, tls_policy).map_err(tls_err)?;
        let listener = server::bind(addr).await.map_err(|reason| AgentError::Bind { addr, reason })?;
        tracing::info!(%addr, authorization = ?na.authorization, anonymous = na.anonymous, "serving the node API");
        return Ok(Box::pin(async move {
            tokio::join!(server::node_api::serve(listener, tls, api), follow);
        }));
    }
    let (client, node, cert_dir) = (client.clone(), s.node_name.clone(), cs.cert_dir.clone());
    Ok(Box::pin(async move {
        let (cert, key, validity) = crate::cluster::serving::obtain(&client, &node, &names, &cert_dir).await;
        let load = |c: &str, k: &str| server::tls::certified_key(c.as_bytes(), k.as_bytes(), &cert_dir.join(crate::cluster::serving::CURRENT));
        let serving = match load(&cert, &key) {
            Ok(ck) => Arc::new(server::tls::ServingCert::new(ck)),
            Err(e) => return tracing::error!(error = %e, "the issued serving certificate cannot be used"),
        };
        let sources = server::tls::Sources { client_ca: na.client_ca_file.clone(), cert_files: None };
        let (tls, follow) = match server::tls::reloading(serving.clone(), sources, tls_policy) {
            Ok(t) => t,
            Err(e) => return tracing::error!(error = %e, "the node API's TLS"),
        };
        let listener = match server::bind(addr).await {
            Ok(l) => l,
            Err(e) => return tracing::error!(%addr, error = %e, "cannot serve the node API"),
        };
        tracing::info!(%addr, authorization = ?na.authorization, anonymous = na.anonymous, "serving the node API with the cluster-signed certificate");
        let apply = |c: &str, k: &str| load(c, k).map(|ck| serving.set(ck)).map_err(|e| e.to_string());
        let metrics = api.metrics.clone();
        tokio::join!(
            server::node_api::serve(listener, tls, api),
            follow,
            crate::cluster::serving::rotate(client.clone(), node.clone(), names.clone(), cert_dir.clone(), validity, &metrics, apply)
        );
    }))
}

/// Runs the agent until `shutdown` resolves. Pods keep running after it
/// returns, as with kubelet.
/// Runs the node agent until `shutdown`; `proxy`, in cluster mode, runs the
/// Service proxy beside it.
pub async fn run(
    s: Settings,
    proxy: Option<crate::proxy::run::ProxySettings>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    // kubelet's first check: no swap unless the operator allows it.
    if s.fail_swap_on
        && let Err(e) = crate::pods::swap::check_fail_swap_on(&std::fs::read_to_string("/proc/swaps").unwrap_or_default())
    {
        return Err(AgentError::Fault(e));
    }
    let metrics = Arc::new(Metrics::new());
    let (runtime, version): (Arc<dyn Runtime>, cri::VersionResponse) = if s.dry_run {
        let real = RemoteRuntime::connect(&s.runtime_endpoint, s.runtime_request_timeout).await.ok();
        if real.is_none() {
            tracing::warn!(endpoint = %s.runtime_endpoint, "dry run: no runtime answers; planning against an empty one");
        }
        let sim = DryRunRuntime::new(real.map(|r| Box::new(r) as Box<dyn Runtime>), Box::new(std::io::stdout())).await;
        let v = sim.version().await.unwrap_or_default();
        (Arc::new(sim), cri::VersionResponse { runtime_name: "containerd".into(), ..v })
    } else {
        let (rt, v) = wait_for_runtime(&s.runtime_endpoint, s.runtime_request_timeout).await?;
        (Arc::new(Instrumented::new(Arc::new(rt), metrics.clone())), v)
    };
    let runtime_name = version.runtime_name.clone();
    // Credentials first: TLS bootstrap blocks until a certificate is issued.
    let joined = match &s.cluster {
        Some(cs) => Some(cluster::join(cs, &s.node_name, s.dry_run).await?),
        None => None,
    };

    if s.cluster_dns.is_empty() {
        tracing::warn!("{} (no clusterDNS in the config, no --cluster-dns)", dns::MISSING_CLUSTER_DNS_MESSAGE);
    }
    let oom_floor = if s.dry_run { -1000 } else { set_own_oom_score_adj(s.oom_score_adj) };
    let host = std::fs::read_to_string(&s.resolv_conf).unwrap_or_else(|e| {
        tracing::warn!(file = %s.resolv_conf.display(), error = %e, "cannot read resolvConf; pods with dnsPolicy Default get no nameservers");
        String::new()
    });
    let memory_capacity_bytes = node_memory_bytes();
    let cpu_capacity_millis = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64 * 1000;
    let capacity = crate::allocatable::capacity(cpu_capacity_millis, memory_capacity_bytes, &s.root_dir);
    let allocatable = crate::allocatable::allocatable(&capacity, &s.allocatable, &s.eviction.thresholds);
    tracing::info!(
        cpu = %crate::allocatable::cpu_quantity(allocatable.cpu_millis),
        memory = %crate::allocatable::bytes_quantity(allocatable.memory_bytes),
        ephemeral_storage = %crate::allocatable::bytes_quantity(allocatable.ephemeral_storage_bytes),
        "node allocatable (capacity less kubeReserved, systemReserved and the hard eviction thresholds)"
    );
    enforce_node_allocatable(&s, &capacity)?;
    let node = Arc::new(NodeContext {
        node_name: s.node_name.clone(),
        root_dir: s.root_dir.clone(),
        pod_logs_dir: s.pod_logs_dir.clone(),
        container_logs_dir: s.container_logs_dir.clone(),
        cgroup_driver: s.cgroup_driver,
        cgroup_root: s.cgroup_root.clone(),
        cgroups_per_qos: s.cgroups_per_qos,
        dns: dns::ClusterDns { servers: s.cluster_dns.clone(), domain: s.cluster_domain.clone(), host: dns::ResolvConf::parse(&host) },
        memory_capacity_bytes,
        cpu_capacity_millis,
        allocatable: allocatable.clone(),
        pod_pids_limit: s.allocatable.pod_pids_limit,
        oom_score_adj_floor: oom_floor,
        host_ips: s.node_ips.clone(),
        backoff: s.backoff,
        seccomp_default: s.seccomp_default,
        swap: crate::pods::swap::SwapFacts::detect(s.swap_behavior, std::path::Path::new("/sys/fs/cgroup")),
        runtime_name,
    });

    let mut tasks = Tasks::default();
    let (health_tx, health_rx) = watch::channel(RuntimeHealth { runtime_ready: true, network_ready: true, message: String::new() });
    if !s.dry_run {
        let rt = runtime.clone();
        tasks.spawn("runtime status", async move {
            loop {
                match rt.status().await {
                    Ok(st) => {
                        let h = RuntimeHealth::from_status(&st);
                        health_tx.send_if_modified(|old| {
                            if *old != h {
                                tracing::info!(runtime_ready = h.runtime_ready, network_ready = h.network_ready, conditions = %h.message, "runtime status changed");
                                *old = h;
                                return true;
                            }
                            false
                        });
                    }
                    Err(e) => tracing::warn!(error = %e, "runtime Status failed"),
                }
                tokio::time::sleep(HEALTH_PERIOD).await;
            }
        });
    }

    // kubelet's root directory is a shared mount, so that what CSI drivers
    // with Bidirectional propagation mount below it is seen by the node.
    if !s.dry_run {
        crate::mounts::make_rshared(&s.root_dir).map_err(|e| AgentError::Fault(format!("configuring the root directory {}: {e}", s.root_dir.display())))?;
    }
    let statuses = StatusStore::default();
    let statuses_for_status = statuses.clone();
    let writes = joined.is_some() && !s.dry_run;
    let events: Arc<dyn EventRecorder> = match &joined {
        Some(j) if writes => Arc::new(ApiRecorder::start(j.client.clone(), &s.node_name, s.cluster.as_ref().and_then(|c| c.event_rate))),
        _ => Arc::new(LogRecorder),
    };
    let trails = Arc::new(crate::explain::Trails::default());
    let events: Arc<dyn EventRecorder> = Arc::new(crate::explain::TrailRecorder { trails: trails.clone(), inner: events });
    let (terminated_tx, terminated_rx) = mpsc::unbounded_channel();
    let objects: Option<Arc<dyn crate::volumes::objects::ApiObjects>> = match &joined {
        Some(j) => Some(crate::volumes::objects::KubeObjects::start(j.client.clone())),
        None => None,
    };
    let providers = match &s.credential_providers {
        Some((config, bin_dir)) => {
            let ps = crate::credentials::provider::load(config, bin_dir).map_err(|e| AgentError::Fault(e.to_string()))?;
            tracing::info!(config = %config.display(), providers = ps.len(), "image credential provider plugins");
            ps
        }
        None => Vec::new(),
    };
    let mut puller = crate::pulls::Puller::new(runtime.clone(), &s.root_dir, s.pulls.clone(), crate::credentials::provider::Providers::new(providers));
    if s.dry_run {
        puller = puller.read_only();
    } else if let Ok(socket) = socket_path(&s.runtime_endpoint) {
        puller = puller.with_containerd(socket);
    }
    let pulls = Arc::new(puller);
    // CSI node plugins register through <root-dir>/plugins_registry.
    let csi = crate::csi::Drivers::default();
    // With a node status to post (cluster mode), attachable volumes wait
    // until it lists them in volumesInUse.
    let in_use = if writes { crate::csi::InUse::enforced() } else { crate::csi::InUse::default() };
    if !s.dry_run {
        let publisher = joined.as_ref().filter(|_| writes).map(|j| crate::csi::registry::Publisher { client: j.client.clone(), node_name: s.node_name.clone() });
        tasks.spawn("csi plugin registration", crate::csi::registry::watch(s.root_dir.join("plugins_registry"), csi.clone(), publisher));
    }
    // The Node's labels as the apiserver has them (cluster mode: the
    // registered ones, then the Node watch's): for admission and PVs' node
    // affinity.
    let (node_labels_tx, node_labels_rx) = watch::channel(std::collections::BTreeMap::new());
    let (node_taints_tx, node_taints_rx) = watch::channel(Vec::new());
    let ctx = Arc::new(WorkerContext {
        csi: csi.clone(),
        in_use: in_use.clone(),
        mounted: Default::default(),
        node_labels: node_labels_rx.clone(),
        allocated: crate::pods::allocation::Checkpoint::open((!s.dry_run).then_some(s.root_dir.as_path()), "allocated_pods_state"),
        actuated: crate::pods::allocation::Checkpoint::open((!s.dry_run).then_some(s.root_dir.as_path()), "actuated_pods_state"),
        pulls: pulls.clone(),
        runtime: runtime.clone(),
        node: node.clone(),
        events,
        statuses: statuses.clone(),
        health: health_rx.clone(),
        resync: s.sync_frequency,
        dry_run: s.dry_run,
        terminated: writes.then_some(terminated_tx),
        objects,
        probe_counts: Default::default(),
        metrics: metrics.clone(),
    });

    let (src_tx, src_rx) = mpsc::channel(16);
    let mut expected = BTreeSet::new();
    if let Some(dir) = &s.static_pod_path {
        expected.insert(SourceName::File);
        tracing::info!(path = %dir.display(), "watching static pod manifests");
        let source = FileSource::new(dir.clone(), s.node_name.clone(), s.file_check_frequency);
        let source = if s.dry_run { source.missing_is_error() } else { source };
        tasks.spawn("file source", source.run(src_tx.clone()));
    }
    if let Some(url) = &s.static_pod_url {
        expected.insert(SourceName::Http);
        tracing::info!(%url, "polling the static pod manifest URL");
        let src = HttpSource::new(url.clone(), s.static_pod_url_headers.clone(), s.node_name.clone(), s.http_check_frequency);
        tasks.spawn("URL source", src.run(src_tx.clone()));
    }
    let (pressure_tx, pressure_rx) = watch::channel(crate::pods::eviction::Pressure::default());
    let (evictions_tx, evictions_rx) = mpsc::channel(4);
    let (reclaim_tx, reclaim_rx) = mpsc::channel(1);
    let (reclaim_containers_tx, reclaim_containers_rx) = mpsc::channel(1);
    let (shutting_down_tx, shutting_down_rx) = watch::channel(false);
    if !s.dry_run {
        let m = crate::pods::eviction::Manager {
            config: s.eviction.clone(),
            sources: crate::pods::eviction::Sources { cgroup_root: s.cgroup_root.clone().into(), nodefs: s.root_dir.clone() },
            runtime: runtime.clone(),
            statuses: statuses.clone(),
            pressure: pressure_tx,
            evictions: evictions_tx.clone(),
            reclaim: Some(reclaim_tx),
            reclaim_containers: Some(reclaim_containers_tx),
        };
        tasks.spawn("eviction manager", m.run());
        if let Some(periods) = s.shutdown {
            let m = crate::pods::shutdown::Manager { periods, statuses: statuses.clone(), pods: evictions_tx, shutting_down: shutting_down_tx };
            tasks.spawn("graceful node shutdown", m.run());
        }
    }
    let (images_tx, images_rx) = watch::channel(Vec::new());
    if !s.dry_run {
        tasks.spawn("image GC", crate::images::ImageGc::new(runtime.clone(), s.image_gc, images_tx).with_reclaim(reclaim_rx).run());
    }
    let mut manager_admission = None;
    let mut proxy_synced = None;
    let mut watched: Vec<Watched> = Vec::new();
    let mut node_labels = None;
    if let (Some(joined), Some(cs)) = (joined, &s.cluster) {
        expected.insert(SourceName::Api);
        let runtime_version = format!("{}://{}", version.runtime_name, version.runtime_version);
        let mut facts = NodeFacts::gather(&node, cs, s.max_pods, &runtime_version);
        facts.port = i32::from(s.node_api.port);
        manager_admission = Some(NodeResources {
            name: s.node_name.clone(),
            labels: facts.labels.clone(),
            taints: Vec::new(),
            cpu_millis: node.allocatable.cpu_millis,
            memory_bytes: node.allocatable.memory_bytes,
            ephemeral_storage_bytes: node.allocatable.ephemeral_storage_bytes,
            hugepages: node.allocatable.hugepages.clone(),
            max_pods: s.max_pods,
        });
        node_labels_tx.send_replace(facts.labels.clone());
        node_labels = Some(node_labels_rx);
        let parts = cluster::ClusterParts {
            settings: cs.clone(),
            facts,
            health: health_rx,
            statuses: statuses.clone(),
            sources: src_tx.clone(),
            terminated: writes.then_some(terminated_rx),
            node_labels: node_labels_tx,
            node_taints: node_taints_tx,
            metrics: metrics.clone(),
            images: images_rx,
            pressure: pressure_rx.clone(),
            shutting_down: shutting_down_rx.clone(),
            root_dir: s.root_dir.clone(),
            in_use: in_use.clone(),
        };
        if let Some(p) = proxy.filter(|p| p.mode != crate::proxy::run::Mode::None) {
            let (client, grant) = cluster::proxy_client(p.kubeconfig.as_deref(), &joined.client).await?;
            let (synced_tx, synced_rx) = oneshot::channel();
            proxy_synced = Some(synced_rx);
            let beat = Beat::default();
            // The proxy's loop turns at least once per sync period.
            watched.push(Watched { name: "Service proxy loop", beat: beat.clone(), allowance: 2 * p.sync_period + Duration::from_secs(30) });
            tasks.spawn("service proxy", async move {
                let check = cluster::access::check(&client, "proxy", cluster::access::PROXY, grant);
                let _ = tokio::time::timeout(Duration::from_secs(10), check).await;
                crate::proxy::run::run(client, p, Some(synced_tx), beat).await
            });
        }
        if s.node_api.port != 0 && !s.dry_run {
            tasks.spawn("node API", node_api(&s, cs, &joined.client, &ctx).await?);
        }
        cluster::start(&mut tasks, joined, parts, s.dry_run);
    }
    drop(src_tx);

    let (relist_tx, relist_rx) = mpsc::channel(16);
    let (relisted_tx, relisted_rx) = watch::channel::<Option<Instant>>(None);
    let relisted_watch = relisted_rx.clone();
    let (exit_ids_tx, exit_ids_rx) = mpsc::channel(64);
    tasks.spawn("relist", pleg::run(runtime.clone(), pleg::RELIST_PERIOD, exit_ids_rx, relist_tx, relisted_tx, metrics.clone()));
    if !s.dry_run && let Ok(socket) = socket_path(&s.runtime_endpoint) {
        let (exit_tx, mut exit_rx) = mpsc::channel(64);
        tasks.spawn("containerd events", containerd::watch_task_exits(socket, exit_tx));
        tasks.spawn("exit events", async move {
            while let Some(ev) = exit_rx.recv().await {
                tracing::debug!(container = %ev.container_id, status = ev.exit_status, "container exited");
                if exit_ids_tx.send(ev.container_id).await.is_err() {
                    return;
                }
            }
        });
    }

    let (sources_ready_tx, sources_ready_rx) = watch::channel(false);
    if !s.dry_run {
        tasks.spawn("container log rotation", crate::pods::log_rotation::run(runtime.clone(), s.log_rotation));
        tasks.spawn(
            "housekeeping",
            crate::pods::housekeeping::run(
                node.clone(),
                runtime.clone(),
                statuses_for_status.clone(),
                s.container_gc,
                Some(reclaim_containers_rx),
                csi.clone(),
                sources_ready_rx,
            ),
        );
    }

    // The manager turns at least once a second; quiet for twice the
    // watchdog interval (at least 10 s), it is wedged.
    let sync_beat = Beat::default();
    let sync_allowance = watchdog::interval().map_or(Duration::from_secs(30), |i| (2 * i).max(Duration::from_secs(10)));
    watched.push(Watched { name: "pod sync loop", beat: sync_beat.clone(), allowance: sync_allowance });
    let mut manager = PodManager::new(ctx, expected, s.dry_run)
        .with_heartbeat(sync_beat)
        .with_eviction(evictions_rx, pressure_rx)
        .with_shutdown(shutting_down_rx)
        .with_sources_ready(sources_ready_tx)
        .with_sysctls(crate::sysctls::Allowlist::new(&s.allowed_unsafe_sysctls).map_err(|e| AgentError::Fault(format!("allowedUnsafeSysctls: {e}")))?);
    if let (Some(node), Some(labels)) = (manager_admission, node_labels) {
        manager = manager.with_admission(node, labels, node_taints_rx);
    }
    let one_shot = s.dry_run && !s.dry_run_watch;
    let mut planned = None;
    if one_shot {
        let (tx, rx) = oneshot::channel();
        manager = manager.with_plan_report(tx);
        planned = Some(rx);
    }
    tasks.spawn("pod manager", manager.run(src_rx, relist_rx));

    if let Some(addr) = s.healthz {
        match server::bind(addr).await {
            Ok(listener) => {
                tracing::info!(%addr, "serving /healthz");
                tasks.spawn("health endpoint", server::serve(listener, relisted_rx.clone()));
            }
            Err(e) if s.dry_run => tracing::warn!(%addr, error = %e, "dry run: the health endpoint is not served"),
            Err(reason) => return Err(AgentError::Bind { addr, reason }),
        }
    }
    // The status socket is a file under the root directory: a dry run,
    // which touches nothing, does not make it.
    if !s.dry_run {
        let socket = server::status_socket(&s.root_dir);
        let listener = server::bind_local(&socket).map_err(|e| AgentError::Fault(format!("the status socket: {e}")))?;
        tracing::info!(socket = %socket.display(), "serving /pods, /pulls and /explain to root");
        let api = server::LocalApi { statuses, relisted: relisted_rx, trails, pulls, pod_logs_dir: s.pod_logs_dir.clone() };
        tasks.spawn("status socket", server::serve_local(listener, api));
    }

    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
    if !s.dry_run && watchdog::supervised() {
        // PLEG's health as kubelet judges it: a relist within 3 minutes.
        let relist_beat = Beat::default();
        watched.push(Watched { name: "runtime relist", beat: relist_beat.clone(), allowance: Duration::from_secs(180) });
        let mut relisted = relisted_watch.clone();
        tasks.spawn("relist heartbeat", async move {
            while relisted.changed().await.is_ok() {
                relist_beat.beat();
            }
        });
        let interval = watchdog::interval();
        if let Some(i) = interval {
            tracing::info!(interval = ?i, loops = watched.len(), "systemd watchdog on: pinging while every watched loop makes progress");
        }
        let pods = statuses_for_status.clone();
        tasks.spawn("watchdog", watchdog::run(interval, watched, move || {
            let n = pods.snapshot().len();
            format!("running {n} pod{}", if n == 1 { "" } else { "s" })
        }));
    }
    tracing::info!(node = %s.node_name, dry_run = s.dry_run, "nodelet is running");
    if let Some(planned) = planned {
        return one_shot_dry_run(tasks, planned, proxy_synced, shutdown).await;
    }
    let fault = tokio::select! {
        _ = shutdown => None,
        why = tasks.first_exit() => Some(why),
    };
    if let Some(why) = &fault {
        tracing::error!("{why}; exiting so the service manager starts nodelet again (pods keep running)");
    } else {
        tracing::info!("shutting down; pods keep running");
    }
    tasks.shutdown().await;
    match fault {
        Some(why) => Err(AgentError::Fault(why)),
        None => Ok(()),
    }
}

/// A dry run without --watch: waits until every source has reported and
/// every pod has been planned (and the proxy's rules printed), then stops.
/// The sources' errors make it fail, so it can check manifests in CI.
async fn one_shot_dry_run(
    tasks: Tasks,
    planned: oneshot::Receiver<Vec<String>>,
    proxy_synced: Option<oneshot::Receiver<()>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), AgentError> {
    let mut tasks = tasks;
    let outcome = async {
        let problems = planned.await.unwrap_or_default();
        if let Some(rx) = proxy_synced {
            let _ = rx.await;
        }
        problems
    };
    let result = tokio::select! {
        problems = outcome => if problems.is_empty() { Ok(()) } else { Err(AgentError::Invalid(problems)) },
        _ = shutdown => Ok(()),
        why = tasks.first_exit() => Err(AgentError::Fault(why)),
    };
    tasks.shutdown().await;
    result
}
