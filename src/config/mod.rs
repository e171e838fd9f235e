//! Configuration: kubelet-style flags over a KubeletConfiguration file over
//! kubelet's defaults, resolved once at start into [`Settings`].

pub mod allocatable;
mod configz;
pub mod duration;
pub mod eviction;
pub mod features;
pub mod fields;
pub mod kubelet;
pub mod node_api;
pub mod proxy;
mod resolve;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {message}")]
    Read { file: String, message: String },
    #[error("{file}: {field}: {message}")]
    Field { file: String, field: String, message: String },
    #[error("{flag}: {message}")]
    Flag { flag: String, message: String },
}

/// How pod cgroups are made: by nodelet in cgroupfs, or by systemd as slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupDriver {
    Cgroupfs,
    Systemd,
}

/// kubelet's `memorySwap.swapBehavior`: whether containers may use the
/// node's swap. `LimitedSwap` gives Burstable containers a share in
/// proportion to their memory request (cgroup v2 only); everything else runs
/// without swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SwapBehavior {
    #[default]
    NoSwap,
    LimitedSwap,
}

impl SwapBehavior {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "NoSwap" => Some(Self::NoSwap),
            "LimitedSwap" => Some(Self::LimitedSwap),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoSwap => "NoSwap",
            Self::LimitedSwap => "LimitedSwap",
        }
    }
}

/// Crash-loop back-off settings (see `pods::backoff`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    pub initial: Duration,
    pub max: Duration,
    /// A run at least this long forgives earlier crashes.
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self { initial: Duration::from_secs(10), max: Duration::from_secs(300), reset_after: Duration::from_secs(600) }
    }
}

/// Everything the agent runs with, after flags, file and defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub node_name: String,
    pub dry_run: bool,
    /// A dry run that keeps following its inputs instead of exiting once
    /// it has planned them.
    pub dry_run_watch: bool,
    pub runtime_endpoint: String,
    pub runtime_request_timeout: Duration,
    pub root_dir: PathBuf,
    pub pod_logs_dir: PathBuf,
    pub container_logs_dir: PathBuf,
    pub static_pod_path: Option<PathBuf>,
    pub static_pod_url: Option<String>,
    pub static_pod_url_headers: Vec<(String, String)>,
    pub file_check_frequency: Duration,
    pub http_check_frequency: Duration,
    pub sync_frequency: Duration,
    pub cluster_dns: Vec<String>,
    pub cluster_domain: String,
    pub resolv_conf: PathBuf,
    pub cgroup_driver: CgroupDriver,
    pub cgroup_root: String,
    pub cgroups_per_qos: bool,
    pub healthz: Option<SocketAddr>,
    pub max_pods: u32,
    /// The CPU manager's static policy (None: `none`).
    pub cpu_manager: Option<crate::cpus::StaticConfig>,
    /// The topology manager's policy and scope (policy `none`: off).
    pub topology_manager: crate::topology::Config,
    /// The memory manager's static policy (None: `None`).
    pub memory_manager: Option<crate::memory::StaticConfig>,
    /// kubelet's `allowedUnsafeSysctls`: patterns, already checked.
    pub allowed_unsafe_sysctls: Vec<String>,
    pub oom_score_adj: i32,
    /// `seccompDefault`: RuntimeDefault for containers that name no profile.
    pub seccomp_default: bool,
    /// `failSwapOn`: refuse to start while the node has swap on.
    pub fail_swap_on: bool,
    /// `--pod-infra-container-image` (deprecated in kubelet, which still
    /// keeps the image from garbage collection; kubeadm up to v1.34 passes it).
    pub pod_infra_container_image: Option<String>,
    /// `memorySwap.swapBehavior`.
    pub swap_behavior: SwapBehavior,
    pub node_ips: Vec<String>,
    pub backoff: BackoffConfig,
    /// Cluster mode; `None` runs standalone on static pods.
    pub cluster: Option<ClusterSettings>,
    /// Container log rotation.
    pub log_rotation: LogRotation,
    pub image_gc: ImageGcPolicy,
    /// How images are pulled.
    pub pulls: PullPolicy,
    /// `--image-credential-provider-config` and `--image-credential-provider-bin-dir`.
    pub credential_providers: Option<(PathBuf, PathBuf)>,
    pub container_gc: ContainerGcPolicy,
    pub eviction: eviction::EvictionConfig,
    /// Node Allocatable: reservations, their enforcement, podPidsLimit.
    pub allocatable: allocatable::AllocatableConfig,
    /// `featureGates` with `--feature-gates` over it.
    pub feature_gates: features::FeatureGates,
    /// Graceful node shutdown: the whole period and the part kept for
    /// critical pods (`shutdownGracePeriod`, `shutdownGracePeriodCriticalPods`);
    /// `None` when off (a zero period).
    pub shutdown: Option<ShutdownPeriods>,
    /// The node API on :10250 (cluster mode only).
    pub node_api: node_api::NodeApiSettings,
}

/// kubelet's container log rotation: a running container's log file is
/// rotated once it is over `max_size`, keeping at most `max_files` files,
/// checked every `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRotation {
    pub max_size: u64,
    pub max_files: usize,
    pub interval: Duration,
}

/// Image garbage collection (kubelet's image GC policy): when the image
/// filesystem is `high_percent` full, unused images go, least recently used
/// first, until it is `low_percent` full; none younger than `min_age`;
/// with `max_age`, an image unused that long goes whatever the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageGcPolicy {
    pub high_percent: u8,
    pub low_percent: u8,
    pub min_age: Duration,
    pub max_age: Option<Duration>,
    /// How often it runs (kubelet: every 5 minutes).
    pub period: Duration,
    /// `nodeStatusMaxImages`: images listed in the node status (None: all).
    pub status_max_images: Option<usize>,
}

/// kubelet's imagePullCredentialsVerificationPolicy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VerifyPolicy {
    /// Anything on the node may be used by any pod.
    NeverVerify,
    /// Images that nodelet never pulled (there before it) are free to use;
    /// the rest are checked.
    #[default]
    NeverVerifyPreloadedImages,
    /// Only the images in the allowlist are free; the rest are checked.
    NeverVerifyAllowlistedImages,
    /// Everything is checked.
    AlwaysVerify,
}

impl VerifyPolicy {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "NeverVerify" => Self::NeverVerify,
            "NeverVerifyPreloadedImages" => Self::NeverVerifyPreloadedImages,
            "NeverVerifyAllowlistedImages" => Self::NeverVerifyAllowlistedImages,
            "AlwaysVerify" => Self::AlwaysVerify,
            _ => return None,
        })
    }
}

/// How images are pulled (KubeletConfiguration's `serializeImagePulls`,
/// `maxParallelImagePulls`, `registryPullQPS`, `registryBurst`,
/// `imagePullCredentialsVerificationPolicy`, `preloadedImagesVerificationAllowlist`).
#[derive(Debug, Clone, PartialEq)]
pub struct PullPolicy {
    pub serialize: bool,
    pub max_parallel: Option<u32>,
    /// 0: no limit.
    pub qps: u32,
    pub burst: u32,
    pub verify: VerifyPolicy,
    pub allowlist: Vec<String>,
}

impl Default for PullPolicy {
    fn default() -> Self {
        Self { serialize: true, max_parallel: None, qps: 5, burst: 10, verify: Default::default(), allowlist: Vec::new() }
    }
}

/// kubelet's container GC policy (`--minimum-container-ttl-duration`,
/// `--maximum-dead-containers-per-container`, `--maximum-dead-containers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerGcPolicy {
    pub min_age: Duration,
    /// Dead instances kept per (pod, container); negative: no limit.
    pub max_per_pod_container: i64,
    /// Dead containers kept on the node; negative: no limit.
    pub max_containers: i64,
}

impl Default for ContainerGcPolicy {
    fn default() -> Self {
        Self { min_age: Duration::ZERO, max_per_pod_container: 1, max_containers: -1 }
    }
}

/// Graceful node shutdown's periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownPeriods {
    pub total: Duration,
    pub critical: Duration,
}

/// How the node joins and talks to its cluster.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub kubeconfig: PathBuf,
    pub bootstrap_kubeconfig: Option<PathBuf>,
    pub cert_dir: PathBuf,
    pub node_labels: BTreeMap<String, String>,
    pub register_with_taints: Vec<k8s_openapi::api::core::v1::Taint>,
    pub status_update: Duration,
    pub status_report: Duration,
    pub lease_duration_seconds: i32,
    pub rotate_certificates: bool,
    /// The apiserver client's rate (`kubeAPIQPS`, `kubeAPIBurst`; 50, 100).
    pub api_rate: Rate,
    /// Events' rate (`eventRecordQPS`, `eventBurst`; 50, 100); None: no limit.
    pub event_rate: Option<Rate>,
    /// `--cloud-provider=external`: the cloud's controller manager
    /// initializes the Node (its addresses, the uninitialized taint taken
    /// off); with it, `--node-ip` as given (the provided-node-ip annotation).
    pub external_cloud: Option<ExternalCloud>,
}

/// What `--cloud-provider=external` changes in the Node nodelet registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalCloud {
    /// `--node-ip` as the flag gave it, if it did.
    pub provided_node_ip: Option<String>,
}

/// A request rate: per second, and the burst above it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub qps: u32,
    pub burst: u32,
}

/// `key=value:Effect` or `key:Effect`, as kubelet's --register-with-taints.
pub fn parse_taint(s: &str) -> Result<k8s_openapi::api::core::v1::Taint, ConfigError> {
    let err = |m: &str| flag_err("--register-with-taints", format!("{s:?}: {m}"));
    let (kv, effect) = s.rsplit_once(':').ok_or_else(|| err("expected key=value:Effect"))?;
    if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        return Err(err("the effect must be NoSchedule, PreferNoSchedule or NoExecute"));
    }
    let (key, value) = match kv.split_once('=') {
        Some((k, v)) => (k, Some(v.to_string())),
        None => (kv, None),
    };
    if key.is_empty() {
        return Err(err("the key is empty"));
    }
    Ok(k8s_openapi::api::core::v1::Taint { key: key.into(), value, effect: effect.into(), time_added: None })
}

/// `k=v,k2=v2`, as kubelet's --node-labels.
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').ok_or_else(|| flag_err("--node-labels", format!("{pair:?} is not key=value")))?;
        let mut errs = Vec::new();
        crate::names::label_key(k, "--node-labels", &mut errs);
        crate::names::label_value(v, "--node-labels", &mut errs);
        if let Some(e) = errs.first() {
            return Err(flag_err("--node-labels", e.message.clone()));
        }
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Flag values that override the file; `None` when the flag was not given.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub hostname_override: Option<String>,
    pub dry_run: bool,
    pub dry_run_watch: bool,
    pub container_runtime_endpoint: Option<String>,
    pub runtime_request_timeout: Option<Duration>,
    pub root_dir: Option<PathBuf>,
    pub container_logs_dir: Option<PathBuf>,
    pub pod_manifest_path: Option<PathBuf>,
    pub manifest_url: Option<String>,
    pub manifest_url_header: Vec<String>,
    pub file_check_frequency: Option<Duration>,
    pub http_check_frequency: Option<Duration>,
    pub sync_frequency: Option<Duration>,
    pub cluster_dns: Vec<String>,
    pub cluster_domain: Option<String>,
    pub resolv_conf: Option<PathBuf>,
    pub cgroup_driver: Option<String>,
    pub cgroup_root: Option<String>,
    pub cgroups_per_qos: Option<bool>,
    pub healthz_port: Option<u16>,
    pub healthz_bind_address: Option<String>,
    pub max_pods: Option<u32>,
    pub allowed_unsafe_sysctls: Vec<String>,
    pub oom_score_adj: Option<i32>,
    pub seccomp_default: Option<bool>,
    pub fail_swap_on: Option<bool>,
    pub pod_infra_container_image: Option<String>,
    pub cloud_provider: Option<String>,
    pub node_ip: Option<String>,
    pub crash_loop_backoff_initial: Option<Duration>,
    pub image_gc_high_threshold: Option<u8>,
    pub image_gc_low_threshold: Option<u8>,
    pub minimum_image_ttl_duration: Option<Duration>,
    pub image_gc_period: Option<Duration>,
    pub minimum_container_ttl_duration: Option<Duration>,
    pub maximum_dead_containers_per_container: Option<i64>,
    pub maximum_dead_containers: Option<i64>,
    pub crash_loop_backoff_max: Option<Duration>,
    pub kubeconfig: Option<PathBuf>,
    pub bootstrap_kubeconfig: Option<PathBuf>,
    pub cert_dir: Option<PathBuf>,
    pub node_labels: Option<String>,
    pub register_with_taints: Vec<String>,
    pub node_status_update_frequency: Option<Duration>,
    pub rotate_certificates: Option<bool>,
    pub node_api: node_api::NodeApiFlags,
    pub image_credential_provider_config: Option<PathBuf>,
    pub image_credential_provider_bin_dir: Option<PathBuf>,
    /// --kube-reserved, --system-reserved, --reserved-cpus,
    /// --enforce-node-allocatable, --kube-reserved-cgroup,
    /// --system-reserved-cgroup, --pod-max-pids.
    pub allocatable: allocatable::AllocatableFields,
    pub kube_api_qps: Option<u32>,
    pub kube_api_burst: Option<u32>,
    pub event_qps: Option<u32>,
    pub event_burst: Option<u32>,
    /// `--feature-gates`: each entry over the file's.
    pub feature_gates: BTreeMap<String, bool>,
}

fn flag_err(flag: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Flag { flag: flag.into(), message: message.into() }
}

/// The node's hostname, lowercased, as kubelet names the node by default.
pub fn default_node_name() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into()).to_lowercase()
}

/// The address of the interface holding the default route (kubelet's
/// default InternalIP): IPv4's, else IPv6's; found without sending anything.
pub fn default_node_ip() -> Option<String> {
    default_node_ip_of(false).or_else(|| default_node_ip_of(true))
}

/// The address of the interface holding the default route of one family.
pub fn default_node_ip_of(v6: bool) -> Option<String> {
    let (bind, probe) = if v6 { ("[::]:0", "[2001:db8::1]:9") } else { ("0.0.0.0:0", "192.0.2.1:9") };
    let sock = std::net::UdpSocket::bind(bind).ok()?;
    sock.connect(probe).ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then(|| ip.to_string())
}

/// `--node-ip` as kubelet reads it: one address, or a dual-stack pair (one
/// of each family, the first the primary); `0.0.0.0` or `::` alone means
/// the default route's address of that family; none given, IPv4's default
/// route, else IPv6's. Loopback, link-local, multicast and unspecified
/// addresses are refused, as kubelet's node IP validation refuses them.
pub fn node_ips(flag: Option<&str>) -> Result<Vec<String>, ConfigError> {
    let bad = |m: String| flag_err("--node-ip", m);
    let Some(list) = flag.map(str::trim).filter(|l| !l.is_empty()) else {
        return Ok(default_node_ip().into_iter().collect());
    };
    let mut ips = Vec::new();
    for text in list.split(',').map(str::trim) {
        let ip: IpAddr = text.parse().map_err(|_| bad(format!("{text:?} is not an IP address")))?;
        ips.push(ip);
    }
    if ips.len() > 2 || (ips.len() == 2 && ips[0].is_ipv6() == ips[1].is_ipv6()) {
        return Err(bad(format!("{list:?}: must contain either a single IP or a dual-stack pair of IPs")));
    }
    if ips.len() == 2 && ips.iter().any(IpAddr::is_unspecified) {
        return Err(bad(format!("{list:?}: a dual-stack node IP cannot include '0.0.0.0' or '::'")));
    }
    if let [ip] = ips[..]
        && ip.is_unspecified()
    {
        // The family asked for, found as the default one is.
        return default_node_ip_of(ip.is_ipv6())
            .map(|ip| vec![ip])
            .ok_or_else(|| bad(format!("{list:?}: no {} default route to take the node's address from", if ip.is_ipv6() { "IPv6" } else { "IPv4" })));
    }
    for ip in &ips {
        let why = if ip.is_loopback() {
            "can't be a loopback address"
        } else if ip.is_multicast() {
            "can't be a multicast address"
        } else if match ip {
            IpAddr::V4(a) => a.is_link_local(),
            IpAddr::V6(a) => a.is_unicast_link_local(),
        } {
            "can't be a link-local unicast address"
        } else {
            continue;
        };
        return Err(bad(format!("{ip}: the node IP {why}")));
    }
    Ok(ips.iter().map(ToString::to_string).collect())
}

/// Node IPs that no interface of this host holds (kubelet refuses to
/// report such a node's status: "node IP not found in the host's network
/// interfaces").
pub fn node_ips_not_local(ips: &[String]) -> Vec<String> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    let local: Vec<IpAddr> = addrs
        .filter_map(|a| {
            let s = a.address?;
            s.as_sockaddr_in().map(|v| IpAddr::V4(v.ip())).or_else(|| s.as_sockaddr_in6().map(|v| IpAddr::V6(v.ip())))
        })
        .collect();
    ips.iter().filter(|ip| ip.parse::<IpAddr>().is_ok_and(|ip| !local.contains(&ip))).cloned().collect()
}

#[cfg(test)]
mod tests;
