//! Configuration: kubelet-style flags over a KubeletConfiguration file over
//! kubelet's defaults, resolved once at start into [`Settings`].

pub mod allocatable;
pub mod duration;
pub mod eviction;
pub mod features;
pub mod kubelet;
pub mod node_api;
pub mod proxy;

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
    /// kubelet's `allowedUnsafeSysctls`: patterns, already checked.
    pub allowed_unsafe_sysctls: Vec<String>,
    pub oom_score_adj: i32,
    /// `seccompDefault`: RuntimeDefault for containers that name no profile.
    pub seccomp_default: bool,
    /// `failSwapOn`: refuse to start while the node has swap on.
    pub fail_swap_on: bool,
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

fn go_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

impl Settings {
    /// The effective configuration as KubeletConfiguration fields, for
    /// `/configz`. Nothing secret: the manifest URL's headers are left out.
    pub fn kubelet_configuration(&self) -> serde_json::Value {
        let na = &self.node_api;
        let mode = match na.authorization {
            node_api::AuthorizationMode::Webhook => "Webhook",
            node_api::AuthorizationMode::AlwaysAllow => "AlwaysAllow",
        };
        let mut v = serde_json::json!({
            "kind": "KubeletConfiguration",
            "apiVersion": kubelet::API_VERSION,
            "staticPodPath": self.static_pod_path,
            "staticPodURL": self.static_pod_url,
            "fileCheckFrequency": go_duration(self.file_check_frequency),
            "httpCheckFrequency": go_duration(self.http_check_frequency),
            "syncFrequency": go_duration(self.sync_frequency),
            "clusterDNS": self.cluster_dns,
            "clusterDomain": self.cluster_domain,
            "resolvConf": self.resolv_conf,
            "cgroupDriver": match self.cgroup_driver { CgroupDriver::Cgroupfs => "cgroupfs", CgroupDriver::Systemd => "systemd" },
            "cgroupRoot": self.cgroup_root,
            "cgroupsPerQOS": self.cgroups_per_qos,
            "containerRuntimeEndpoint": self.runtime_endpoint,
            "runtimeRequestTimeout": go_duration(self.runtime_request_timeout),
            "podLogsDir": self.pod_logs_dir,
            "maxPods": self.max_pods,
            "oomScoreAdj": self.oom_score_adj,
            "address": na.address.to_string(),
            "port": na.port,
            "readOnlyPort": na.read_only_port,
            "serverTLSBootstrap": na.server_tls_bootstrap,
            "enableDebuggingHandlers": na.debugging_handlers,
            "enableSystemLogHandler": na.system_log_handler,
            "streamingConnectionIdleTimeout": go_duration(na.streaming_idle_timeout),
            "tlsCertFile": na.tls_cert_file,
            "tlsPrivateKeyFile": na.tls_private_key_file,
            "authentication": {
                "x509": {"clientCAFile": na.client_ca_file},
                "webhook": {"enabled": na.webhook_authentication, "cacheTTL": go_duration(na.authentication_cache_ttl)},
                "anonymous": {"enabled": na.anonymous},
            },
            "authorization": {"mode": mode, "webhook": {"cacheAuthorizedTTL": go_duration(na.authorized_ttl), "cacheUnauthorizedTTL": go_duration(na.unauthorized_ttl)}},
            "containerLogMaxSize": self.log_rotation.max_size.to_string(),
            "containerLogMaxFiles": self.log_rotation.max_files,
            "containerLogMonitorInterval": go_duration(self.log_rotation.interval),
            "imageGCHighThresholdPercent": self.image_gc.high_percent,
            "imageGCLowThresholdPercent": self.image_gc.low_percent,
            "imageMinimumGCAge": go_duration(self.image_gc.min_age),
            "imageMaximumGCAge": go_duration(self.image_gc.max_age.unwrap_or_default()),
            "nodeStatusMaxImages": self.image_gc.status_max_images.map_or(-1, |n| n as i64),
            "nodeStatusUpdateFrequency": self.cluster.as_ref().map(|c| go_duration(c.status_update)),
            "nodeStatusReportFrequency": self.cluster.as_ref().map(|c| go_duration(c.status_report)),
            "nodeLeaseDurationSeconds": self.cluster.as_ref().map(|c| c.lease_duration_seconds),
            "rotateCertificates": self.cluster.as_ref().map(|c| c.rotate_certificates),
        });
        if let Some(m) = v.as_object_mut() {
            m.insert("seccompDefault".into(), self.seccomp_default.into());
            let min = match self.node_api.tls_min_version {
                node_api::TlsMinVersion::Tls12 => "VersionTLS12",
                node_api::TlsMinVersion::Tls13 => "VersionTLS13",
            };
            m.insert("tlsMinVersion".into(), min.into());
            m.insert("tlsCipherSuites".into(), serde_json::json!(self.node_api.tls_cipher_suites));
            m.insert("failSwapOn".into(), self.fail_swap_on.into());
            m.insert("memorySwap".into(), serde_json::json!({"swapBehavior": self.swap_behavior.as_str()}));
            m.insert("serializeImagePulls".into(), self.pulls.serialize.into());
            m.insert("maxParallelImagePulls".into(), serde_json::json!(self.pulls.max_parallel));
            m.insert("registryPullQPS".into(), serde_json::json!(self.pulls.qps));
            m.insert("registryBurst".into(), self.pulls.burst.into());
            m.insert("imagePullCredentialsVerificationPolicy".into(), format!("{:?}", self.pulls.verify).into());
            if let Some(c) = &self.cluster {
                m.insert("kubeAPIQPS".into(), c.api_rate.qps.into());
                m.insert("kubeAPIBurst".into(), c.api_rate.burst.into());
                m.insert("eventRecordQPS".into(), c.event_rate.map_or(0, |r| r.qps).into());
                m.insert("eventBurst".into(), c.event_rate.map_or(0, |r| r.burst).into());
            }
            let a = &self.allocatable;
            let reserved = |r: &allocatable::Reservation| {
                let mut out = serde_json::Map::new();
                for (k, v, text) in [
                    ("cpu", r.cpu_millis, format!("{}m", r.cpu_millis)),
                    ("memory", r.memory_bytes, r.memory_bytes.to_string()),
                    ("ephemeral-storage", r.ephemeral_storage_bytes, r.ephemeral_storage_bytes.to_string()),
                    ("pid", r.pids, r.pids.to_string()),
                ] {
                    if v > 0 {
                        out.insert(k.into(), text.into());
                    }
                }
                serde_json::Value::Object(out)
            };
            m.insert("kubeReserved".into(), reserved(&a.kube_reserved));
            m.insert("systemReserved".into(), reserved(&a.system_reserved));
            let enforce: Vec<&str> = a
                .enforce
                .iter()
                .map(|e| match e {
                    allocatable::Enforce::Pods => "pods",
                    allocatable::Enforce::KubeReserved => "kube-reserved",
                    allocatable::Enforce::SystemReserved => "system-reserved",
                    allocatable::Enforce::KubeReservedCompressible => "kube-reserved-compressible",
                    allocatable::Enforce::SystemReservedCompressible => "system-reserved-compressible",
                })
                .collect();
            m.insert("enforceNodeAllocatable".into(), serde_json::json!(enforce));
            m.insert("kubeReservedCgroup".into(), serde_json::json!(a.kube_reserved_cgroup));
            m.insert("systemReservedCgroup".into(), serde_json::json!(a.system_reserved_cgroup));
            m.insert("podPidsLimit".into(), a.pod_pids_limit.unwrap_or(-1).into());
            m.insert("featureGates".into(), serde_json::json!(self.feature_gates.as_map()));
        }
        v
    }
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
/// default InternalIP); found without sending anything.
pub fn default_node_ip() -> Option<String> {
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    sock.connect("192.0.2.1:9").ok()?;
    let ip = sock.local_addr().ok()?.ip();
    (!ip.is_unspecified() && !ip.is_loopback()).then(|| ip.to_string())
}

impl Settings {
    /// Flags over `file` over kubelet's defaults.
    pub fn resolve(o: Overrides, file: kubelet::KubeletConfig) -> Result<Self, ConfigError> {
        let node_name = o.hostname_override.clone().unwrap_or_else(default_node_name).trim().to_lowercase();
        if node_name.is_empty() {
            return Err(flag_err("--hostname-override", "the node name is empty"));
        }
        let cgroup_driver = match o.cgroup_driver.clone().or(file.cgroup_driver.clone()).as_deref() {
            None | Some("cgroupfs") => CgroupDriver::Cgroupfs,
            Some("systemd") => CgroupDriver::Systemd,
            Some(other) => return Err(flag_err("--cgroup-driver", format!("unsupported value {other:?}: use cgroupfs or systemd"))),
        };
        let port = o.healthz_port.or(file.healthz_port).unwrap_or(10248);
        let bind = o.healthz_bind_address.clone().or(file.healthz_bind_address.clone()).unwrap_or_else(|| "127.0.0.1".into());
        let healthz = if port == 0 {
            None
        } else {
            let ip: IpAddr = bind.parse().map_err(|_| flag_err("--healthz-bind-address", format!("{bind:?} is not an IP address")))?;
            Some(SocketAddr::new(ip, port))
        };
        let mut headers = Vec::new();
        for (k, vs) in &file.static_pod_url_header {
            for v in vs {
                headers.push((k.clone(), v.clone()));
            }
        }
        for h in &o.manifest_url_header {
            let (k, v) = h.split_once(':').ok_or_else(|| flag_err("--manifest-url-header", format!("{h:?} is not 'key:value'")))?;
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let node_ips = match &o.node_ip {
            Some(list) => {
                let ips: Vec<String> = list.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
                for ip in &ips {
                    ip.parse::<IpAddr>().map_err(|_| flag_err("--node-ip", format!("{ip:?} is not an IP address")))?;
                }
                ips
            }
            None => default_node_ip().into_iter().collect(),
        };
        let max = o.crash_loop_backoff_max.or(file.max_container_restart_period).unwrap_or(Duration::from_secs(300));
        let initial = o.crash_loop_backoff_initial.unwrap_or(Duration::from_secs(10)).min(max);
        if initial.is_zero() {
            return Err(flag_err("--crash-loop-backoff-initial", "must be greater than zero"));
        }
        if let Err(e) = crate::sysctls::Allowlist::new(&o.allowed_unsafe_sysctls) {
            return Err(flag_err("--allowed-unsafe-sysctls", &e));
        }
        let positive = |name: &str, d: Option<Duration>, default: u64| -> Result<Duration, ConfigError> {
            let d = d.unwrap_or(Duration::from_secs(default));
            if d.is_zero() {
                return Err(flag_err(name, "must be greater than zero"));
            }
            Ok(d)
        };
        let file_check_frequency = positive("fileCheckFrequency", o.file_check_frequency.or(file.file_check_frequency), 20)?;
        let http_check_frequency = positive("httpCheckFrequency", o.http_check_frequency.or(file.http_check_frequency), 20)?;
        let sync_frequency = positive("syncFrequency", o.sync_frequency.or(file.sync_frequency), 60)?;
        let runtime_request_timeout =
            positive("runtimeRequestTimeout", o.runtime_request_timeout.or(file.runtime_request_timeout), 120)?;
        let root_dir: PathBuf = o.root_dir.clone().unwrap_or_else(|| "/var/lib/kubelet".into());
        let cluster = match (&o.kubeconfig, &o.bootstrap_kubeconfig) {
            (None, None) => None,
            (None, Some(_)) => return Err(flag_err("--bootstrap-kubeconfig", "needs --kubeconfig: the path to write the node's kubeconfig to")),
            (Some(kc), boot) => {
                let mut taints = file.register_with_taints.clone().unwrap_or_default();
                for t in &o.register_with_taints {
                    taints.push(parse_taint(t)?);
                }
                Some(ClusterSettings {
                    kubeconfig: kc.clone(),
                    bootstrap_kubeconfig: boot.clone(),
                    cert_dir: o.cert_dir.clone().unwrap_or_else(|| root_dir.join("pki")),
                    node_labels: parse_labels(o.node_labels.as_deref().unwrap_or(""))?,
                    register_with_taints: taints,
                    status_update: positive("nodeStatusUpdateFrequency", o.node_status_update_frequency.or(file.node_status_update_frequency), 10)?,
                    status_report: positive("nodeStatusReportFrequency", file.node_status_report_frequency, 300)?,
                    lease_duration_seconds: file.node_lease_duration_seconds.unwrap_or(40),
                    rotate_certificates: o.rotate_certificates.or(file.rotate_certificates).unwrap_or(true),
                    // client-go's: a zero QPS or burst is its default (5, 10).
                    api_rate: Rate {
                        qps: match o.kube_api_qps.or(file.kube_api_qps).unwrap_or(50) {
                            0 => 5,
                            n => n,
                        },
                        burst: match o.kube_api_burst.or(file.kube_api_burst).unwrap_or(100) {
                            0 => 10,
                            n => n,
                        },
                    },
                    // kubelet's: zero QPS is no limit.
                    event_rate: match o.event_qps.or(file.event_record_qps).unwrap_or(50) {
                        0 => None,
                        qps => Some(Rate { qps, burst: o.event_burst.or(file.event_burst).unwrap_or(100).max(1) }),
                    },
                })
            }
        };
        let mut gates = file.feature_gates.clone().unwrap_or_default();
        gates.extend(o.feature_gates.clone());
        let feature_gates = features::FeatureGates::resolve(&gates, "--feature-gates", "featureGates")?;
        let mut node_api = node_api::NodeApiSettings::resolve(&o.node_api, &file)?;
        node_api.fine_grained_authz = feature_gates.enabled("KubeletFineGrainedAuthz");
        let log_rotation = LogRotation {
            max_size: file.container_log_max_size.unwrap_or(10 << 20),
            max_files: file.container_log_max_files.unwrap_or(5),
            interval: file.container_log_monitor_interval.unwrap_or(Duration::from_secs(10)),
        };
        let image_gc = ImageGcPolicy {
            high_percent: o.image_gc_high_threshold.or(file.image_gc_high_threshold_percent).unwrap_or(85),
            low_percent: o.image_gc_low_threshold.or(file.image_gc_low_threshold_percent).unwrap_or(80),
            min_age: o.minimum_image_ttl_duration.or(file.image_minimum_gc_age).unwrap_or(Duration::from_secs(120)),
            max_age: file.image_maximum_gc_age.filter(|d| !d.is_zero()),
            period: o.image_gc_period.unwrap_or(Duration::from_secs(300)),
            status_max_images: match file.node_status_max_images.unwrap_or(50) {
                -1 => None,
                n => Some(usize::try_from(n).unwrap_or(0)),
            },
        };
        if image_gc.low_percent > image_gc.high_percent || image_gc.high_percent > 100 {
            return Err(flag_err(
                "imageGCLowThresholdPercent",
                format!("{} must be at most imageGCHighThresholdPercent ({}), both at most 100", image_gc.low_percent, image_gc.high_percent),
            ));
        }
        // kubelet's defaulting: serial unless maxParallelImagePulls is 2 or more.
        let parallel_asked = file.max_parallel_image_pulls.is_some_and(|n| n >= 2);
        let pulls = PullPolicy {
            serialize: file.serialize_image_pulls.unwrap_or(!parallel_asked),
            max_parallel: file.max_parallel_image_pulls,
            qps: file.registry_pull_qps.unwrap_or(5),
            burst: file.registry_burst.unwrap_or(10),
            verify: file.image_pull_credentials_verify_policy.unwrap_or_default(),
            allowlist: file.preloaded_images_verification_allowlist.clone().unwrap_or_default(),
        };
        if pulls.serialize && parallel_asked {
            return Err(flag_err(
                "maxParallelImagePulls",
                format!("{} cannot be larger than 1 unless serializeImagePulls is false", pulls.max_parallel.unwrap_or(0)),
            ));
        }
        let credential_providers = match (o.image_credential_provider_config.clone(), o.image_credential_provider_bin_dir.clone()) {
            (Some(c), Some(b)) => Some((c, b)),
            (None, None) => None,
            (Some(_), None) => return Err(flag_err("--image-credential-provider-bin-dir", "required with --image-credential-provider-config")),
            (None, Some(_)) => return Err(flag_err("--image-credential-provider-config", "required with --image-credential-provider-bin-dir")),
        };
        let cluster_dns = if o.cluster_dns.is_empty() { file.cluster_dns.clone().unwrap_or_default() } else { o.cluster_dns.clone() };
        for ip in &cluster_dns {
            ip.parse::<IpAddr>().map_err(|_| flag_err("clusterDNS", format!("{ip:?} is not an IP address")))?;
        }
        let cgroups_per_qos = o.cgroups_per_qos.or(file.cgroups_per_qos).unwrap_or(true);
        let allocatable = allocatable::AllocatableConfig::resolve(&file.allocatable.overlay(&o.allocatable), "the command line")?;
        if !cgroups_per_qos && !allocatable.enforce.is_empty() {
            return Err(flag_err(
                "enforceNodeAllocatable",
                "is not supported unless cgroupsPerQOS (--cgroups-per-qos) is on; set it to [] (or --enforce-node-allocatable=none)",
            ));
        }
        Ok(Settings {
            node_name,
            dry_run: o.dry_run,
            dry_run_watch: o.dry_run && o.dry_run_watch,
            runtime_endpoint: o
                .container_runtime_endpoint
                .or(file.container_runtime_endpoint)
                .unwrap_or_else(|| "unix:///run/containerd/containerd.sock".into()),
            runtime_request_timeout,
            root_dir,
            pod_logs_dir: file.pod_logs_dir.unwrap_or_else(|| "/var/log/pods".into()),
            container_logs_dir: o.container_logs_dir.unwrap_or_else(|| "/var/log/containers".into()),
            static_pod_path: o.pod_manifest_path.or(file.static_pod_path).filter(|p| !p.as_os_str().is_empty()),
            static_pod_url: o.manifest_url.or(file.static_pod_url).filter(|u| !u.is_empty()),
            static_pod_url_headers: headers,
            file_check_frequency,
            http_check_frequency,
            sync_frequency,
            cluster_dns,
            cluster_domain: o.cluster_domain.or(file.cluster_domain).unwrap_or_default(),
            resolv_conf: o.resolv_conf.or(file.resolv_conf).unwrap_or_else(|| "/etc/resolv.conf".into()),
            cgroup_driver,
            cgroup_root: o.cgroup_root.or(file.cgroup_root).unwrap_or_else(|| "/".into()),
            cgroups_per_qos,
            healthz,
            max_pods: o.max_pods.or(file.max_pods).unwrap_or(110),
            allowed_unsafe_sysctls: if o.allowed_unsafe_sysctls.is_empty() { file.allowed_unsafe_sysctls.clone().unwrap_or_default() } else { o.allowed_unsafe_sysctls.clone() },
            oom_score_adj: o.oom_score_adj.or(file.oom_score_adj).unwrap_or(-999),
            seccomp_default: o.seccomp_default.or(file.seccomp_default).unwrap_or(false),
            fail_swap_on: o.fail_swap_on.or(file.fail_swap_on).unwrap_or(true),
            swap_behavior: file.swap_behavior.unwrap_or_default(),
            node_ips,
            backoff: BackoffConfig { initial, max, ..BackoffConfig::default() },
            cluster,
            log_rotation,
            image_gc,
            pulls,
            credential_providers,
            eviction: file.eviction.clone(),
            allocatable,
            feature_gates,
            container_gc: ContainerGcPolicy {
                min_age: o.minimum_container_ttl_duration.unwrap_or(Duration::ZERO),
                max_per_pod_container: o.maximum_dead_containers_per_container.unwrap_or(1),
                max_containers: o.maximum_dead_containers.unwrap_or(-1),
            },
            shutdown: file.shutdown_grace_period.filter(|d| !d.is_zero()).map(|total| ShutdownPeriods {
                total,
                critical: file.shutdown_grace_period_critical_pods.unwrap_or_default().min(total),
            }),
            node_api,
        })
    }
}

#[cfg(test)]
mod tests;
