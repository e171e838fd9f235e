//! The KubeletConfiguration file (`--config`), as operators already have it
//! (kubelet.config.k8s.io/v1beta1). Fields nodelet uses are read and
//! checked; a wrong type or value is an error naming the file and the field.
//! A name one slip from a field (`evictonHard`) is an error that says which
//! field was meant; every other field is accepted with one warning that
//! says whether it is a kubelet field nodelet does not implement or no
//! KubeletConfiguration field at all, as kubelet's lenient decoding accepts
//! it (`--dry-run --strict` fails on them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use super::ConfigError;
use super::duration::parse_go_duration;

pub const API_VERSION: &str = "kubelet.config.k8s.io/v1beta1";
pub const KIND: &str = "KubeletConfiguration";

/// The KubeletConfiguration fields nodelet uses; `None` means unset.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KubeletConfig {
    /// Fields given that nodelet does not use (each warned about once;
    /// `--dry-run --strict` fails on them).
    pub ignored: Vec<String>,
    pub static_pod_path: Option<PathBuf>,
    pub static_pod_url: Option<String>,
    pub static_pod_url_header: BTreeMap<String, Vec<String>>,
    pub file_check_frequency: Option<Duration>,
    pub http_check_frequency: Option<Duration>,
    pub sync_frequency: Option<Duration>,
    pub cluster_dns: Option<Vec<String>>,
    pub cluster_domain: Option<String>,
    pub resolv_conf: Option<PathBuf>,
    pub cgroup_driver: Option<String>,
    pub cgroup_root: Option<String>,
    pub cgroups_per_qos: Option<bool>,
    pub container_runtime_endpoint: Option<String>,
    pub runtime_request_timeout: Option<Duration>,
    pub healthz_port: Option<u16>,
    pub healthz_bind_address: Option<String>,
    pub pod_logs_dir: Option<PathBuf>,
    pub max_pods: Option<u32>,
    /// `cpuManagerPolicy: static` (None: `none`).
    pub cpu_manager_static: bool,
    /// `cpuManagerPolicyOptions: {full-pcpus-only: "true"}`.
    pub cpu_full_pcpus_only: bool,
    pub cpu_manager_reconcile_period: Option<Duration>,
    /// `topologyManagerPolicy` and `topologyManagerScope`.
    pub topology_manager: crate::topology::Config,
    /// `memoryManagerPolicy: Static`.
    pub memory_manager_static: bool,
    /// `reservedMemory`: bytes of memory per NUMA node.
    pub reserved_memory: BTreeMap<u32, u64>,
    pub allowed_unsafe_sysctls: Option<Vec<String>>,
    pub oom_score_adj: Option<i32>,
    pub seccomp_default: Option<bool>,
    pub fail_swap_on: Option<bool>,
    pub swap_behavior: Option<super::SwapBehavior>,
    pub max_container_restart_period: Option<Duration>,
    pub node_status_update_frequency: Option<Duration>,
    pub node_status_report_frequency: Option<Duration>,
    pub node_lease_duration_seconds: Option<i32>,
    pub rotate_certificates: Option<bool>,
    pub register_with_taints: Option<Vec<k8s_openapi::api::core::v1::Taint>>,
    pub address: Option<String>,
    pub port: Option<u16>,
    pub read_only_port: Option<u16>,
    pub tls_cert_file: Option<PathBuf>,
    pub tls_private_key_file: Option<PathBuf>,
    pub tls_min_version: Option<String>,
    pub tls_cipher_suites: Option<Vec<String>>,
    pub streaming_connection_idle_timeout: Option<Duration>,
    pub server_tls_bootstrap: Option<bool>,
    pub enable_debugging_handlers: Option<bool>,
    pub enable_system_log_handler: Option<bool>,
    pub authentication: Authentication,
    pub authorization: Authorization,
    pub container_log_max_size: Option<u64>,
    pub container_log_max_files: Option<usize>,
    pub container_log_monitor_interval: Option<Duration>,
    pub image_gc_high_threshold_percent: Option<u8>,
    pub image_gc_low_threshold_percent: Option<u8>,
    pub image_minimum_gc_age: Option<Duration>,
    pub image_maximum_gc_age: Option<Duration>,
    pub node_status_max_images: Option<i32>,
    pub serialize_image_pulls: Option<bool>,
    pub max_parallel_image_pulls: Option<u32>,
    pub registry_pull_qps: Option<u32>,
    pub registry_burst: Option<u32>,
    pub image_pull_credentials_verify_policy: Option<super::VerifyPolicy>,
    pub preloaded_images_verification_allowlist: Option<Vec<String>>,
    pub eviction: super::eviction::EvictionConfig,
    /// kubeReserved, systemReserved, reservedSystemCPUs,
    /// enforceNodeAllocatable and its cgroups, podPidsLimit (checked).
    pub allocatable: super::allocatable::AllocatableFields,
    /// `featureGates` (checked).
    pub feature_gates: Option<BTreeMap<String, bool>>,
    /// kubeAPIQPS, kubeAPIBurst, eventRecordQPS, eventBurst.
    pub kube_api_qps: Option<u32>,
    pub kube_api_burst: Option<u32>,
    pub event_record_qps: Option<u32>,
    pub event_burst: Option<u32>,
    pub shutdown_grace_period: Option<Duration>,
    pub shutdown_grace_period_critical_pods: Option<Duration>,
}

/// `authentication`: how the node API tells who is calling.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    #[serde(default)]
    pub x509: X509Authentication,
    #[serde(default)]
    pub webhook: WebhookAuthentication,
    #[serde(default)]
    pub anonymous: AnonymousAuthentication,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Authentication {
    #[serde(rename = "clientCAFile")]
    pub client_ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookAuthentication {
    pub enabled: Option<bool>,
    #[serde(rename = "cacheTTL", default, deserialize_with = "defaulted_duration")]
    pub cache_ttl: Option<Duration>,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct AnonymousAuthentication {
    pub enabled: Option<bool>,
}

/// `authorization`: what the node API lets a caller do.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    pub mode: Option<String>,
    #[serde(default)]
    pub webhook: WebhookAuthorization,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct WebhookAuthorization {
    #[serde(rename = "cacheAuthorizedTTL", default, deserialize_with = "defaulted_duration")]
    pub cache_authorized_ttl: Option<Duration>,
    #[serde(rename = "cacheUnauthorizedTTL", default, deserialize_with = "defaulted_duration")]
    pub cache_unauthorized_ttl: Option<Duration>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct MemorySwap {
    #[serde(default)]
    swap_behavior: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CrashLoopBackOff {
    #[serde(default, deserialize_with = "opt_duration")]
    max_container_restart_period: Option<Duration>,
}

/// A config file's object after its `kind` and `apiVersion` are checked.
pub(super) fn config_object(bytes: &[u8], file: &str, kind: &str, api_version: &str) -> Result<serde_json::Map<String, Value>, ConfigError> {
    let doc: Value = crate::decode::document(bytes).map_err(|e| ConfigError::Read {
        file: file.into(),
        message: match e {
            crate::decode::DecodeError::Syntax(m) => format!("not valid YAML: {m}"),
            other => other.to_string(),
        },
    })?;
    let Value::Object(map) = doc else {
        return Err(ConfigError::Read { file: file.into(), message: format!("expected a {kind} object") });
    };
    let bad = |f: &str, m: String| ConfigError::Field { file: file.into(), field: f.into(), message: m };
    match map.get("kind").and_then(Value::as_str) {
        Some(k) if k == kind => {}
        other => return Err(bad("kind", format!("must be {kind:?}, got {other:?}"))),
    }
    match map.get("apiVersion").and_then(Value::as_str) {
        Some(v) if v == api_version => {}
        other => return Err(bad("apiVersion", format!("must be {api_version:?}, got {other:?}"))),
    }
    Ok(map)
}

/// A period whose zero kubelet's defaulting replaces (see `defaulted`).
fn defaulted_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    Ok(opt_duration(d)?.and_then(defaulted))
}

fn opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    s.map(|s| parse_go_duration(&s).map_err(serde::de::Error::custom)).transpose()
}

pub(super) fn field<T: DeserializeOwned>(file: &str, name: &str, v: &Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let sub = e.path().to_string();
        let path = if sub == "." { name.to_string() } else { format!("{name}.{sub}") };
        ConfigError::Field { file: file.into(), field: path, message: e.inner().to_string() }
    })
}

/// A whole number of at least `min` that fits a u32.
fn count(file: &str, name: &str, v: &Value, min: u32) -> Result<u32, ConfigError> {
    let n: i64 = field(file, name, v)?;
    let want = if min == 0 { "greater than or equal to 0".to_string() } else { format!("{min} or more") };
    u32::try_from(n).ok().filter(|n| *n >= min).ok_or_else(|| ConfigError::Field {
        file: file.into(),
        field: name.into(),
        message: format!("Invalid value: {n}: must be {want}"),
    })
}

/// A period kubelet's defaulting replaces when it is zero (`0s`, as kubeadm
/// writes every period it leaves to the default): `None`, so the default
/// applies. A zero given as a flag stays an error, as with kubelet.
fn defaulted(d: Duration) -> Option<Duration> {
    Some(d).filter(|d| !d.is_zero())
}

/// Fields of kubelet's that nodelet does not implement but whose value here
/// changes nothing: kubelet's default (or the zero its defaulting turns into
/// it), or settings of a manager that the policy in force leaves idle. Not
/// worth a warning (kubeadm writes all of them).
fn without_effect(name: &str, v: &Value) -> bool {
    let s = v.as_str().unwrap_or_default();
    match name {
        "volumeStatsAggPeriod" => matches!(s, "0s" | "1m" | "1m0s" | "60s"),
        // kubelet's log options; nodelet's verbosity and format are its
        // flags (--v, --logging-format), so only defaults go unremarked.
        "logging" => {
            let verbosity = v.get("verbosity").and_then(Value::as_i64).unwrap_or(0);
            let format = v.get("format").and_then(Value::as_str).unwrap_or("text");
            verbosity == 0 && format == "text"
        }
        _ => false,
    }
}

pub(super) fn duration(file: &str, name: &str, v: &Value) -> Result<Duration, ConfigError> {
    let s: String = field(file, name, v)?;
    parse_go_duration(&s).map_err(|e| ConfigError::Field { file: file.into(), field: name.into(), message: e.to_string() })
}

impl KubeletConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let bytes = crate::decode::read_file(path).map_err(|e| ConfigError::Read { file: file.clone(), message: e.to_string() })?;
        Self::parse(&bytes, &file)
    }

    pub fn parse(bytes: &[u8], file: &str) -> Result<Self, ConfigError> {
        let map = config_object(bytes, file, KIND, API_VERSION)?;
        let bad = |f: &str, m: String| ConfigError::Field { file: file.into(), field: f.into(), message: m };
        let mut c = KubeletConfig::default();
        let mut eviction = super::eviction::EvictionFields::default();
        for (k, v) in &map {
            if v.is_null() {
                continue;
            }
            match k.as_str() {
                "kind" | "apiVersion" => {}
                "staticPodPath" => c.static_pod_path = Some(field(file, k, v)?),
                "staticPodURL" => c.static_pod_url = Some(field(file, k, v)?),
                "staticPodURLHeader" => c.static_pod_url_header = field(file, k, v)?,
                "fileCheckFrequency" => c.file_check_frequency = defaulted(duration(file, k, v)?),
                "httpCheckFrequency" => c.http_check_frequency = defaulted(duration(file, k, v)?),
                "syncFrequency" => c.sync_frequency = defaulted(duration(file, k, v)?),
                "clusterDNS" => c.cluster_dns = Some(field(file, k, v)?),
                "clusterDomain" => c.cluster_domain = Some(field(file, k, v)?),
                "resolvConf" => c.resolv_conf = Some(field(file, k, v)?),
                "cgroupDriver" => {
                    let d: String = field(file, k, v)?;
                    if d != "cgroupfs" && d != "systemd" {
                        return Err(bad(k, format!("Unsupported value: {d:?}: supported values: \"cgroupfs\", \"systemd\"")));
                    }
                    c.cgroup_driver = Some(d);
                }
                "cgroupRoot" => c.cgroup_root = Some(field(file, k, v)?),
                "cgroupsPerQOS" => c.cgroups_per_qos = Some(field(file, k, v)?),
                "containerRuntimeEndpoint" => c.container_runtime_endpoint = Some(field::<String>(file, k, v)?).filter(|e| !e.is_empty()),
                "runtimeRequestTimeout" => c.runtime_request_timeout = defaulted(duration(file, k, v)?),
                "healthzPort" => c.healthz_port = Some(field(file, k, v)?),
                "healthzBindAddress" => c.healthz_bind_address = Some(field(file, k, v)?),
                "podLogsDir" => c.pod_logs_dir = Some(field(file, k, v)?),
                "maxPods" => c.max_pods = Some(field(file, k, v)?),
                "allowedUnsafeSysctls" => {
                    let list: Vec<String> = field(file, k, v)?;
                    crate::sysctls::Allowlist::new(&list).map_err(|e| bad(k, e))?;
                    c.allowed_unsafe_sysctls = Some(list);
                }
                "oomScoreAdj" => {
                    let n: i32 = field(file, k, v)?;
                    if !(-1000..=1000).contains(&n) {
                        return Err(bad(k, format!("Invalid value: {n}: must be between -1000 and 1000")));
                    }
                    c.oom_score_adj = Some(n);
                }
                "seccompDefault" => c.seccomp_default = Some(field(file, k, v)?),
                "failSwapOn" => c.fail_swap_on = Some(field(file, k, v)?),
                "memorySwap" => {
                    let m: MemorySwap = field(file, k, v)?;
                    let b = m.swap_behavior.unwrap_or_default();
                    c.swap_behavior = Some(super::SwapBehavior::parse(&b).ok_or_else(|| {
                        bad("memorySwap.swapBehavior", format!("Unsupported value: {b:?}: supported values: \"NoSwap\", \"LimitedSwap\""))
                    })?);
                }
                "nodeStatusUpdateFrequency" => c.node_status_update_frequency = defaulted(duration(file, k, v)?),
                "nodeStatusReportFrequency" => c.node_status_report_frequency = defaulted(duration(file, k, v)?),
                "nodeLeaseDurationSeconds" => {
                    let n: i32 = field(file, k, v)?;
                    if n <= 0 {
                        return Err(bad(k, format!("Invalid value: {n}: must be greater than 0")));
                    }
                    c.node_lease_duration_seconds = Some(n);
                }
                "rotateCertificates" => c.rotate_certificates = Some(field(file, k, v)?),
                "registerWithTaints" => c.register_with_taints = Some(field(file, k, v)?),
                "address" => c.address = Some(field(file, k, v)?),
                "port" => c.port = Some(field(file, k, v)?),
                "readOnlyPort" => c.read_only_port = Some(field(file, k, v)?),
                "tlsCertFile" => c.tls_cert_file = Some(field(file, k, v)?).filter(|p: &PathBuf| !p.as_os_str().is_empty()),
                "tlsPrivateKeyFile" => c.tls_private_key_file = Some(field(file, k, v)?).filter(|p: &PathBuf| !p.as_os_str().is_empty()),
                "tlsMinVersion" => {
                    let v: String = field(file, k, v)?;
                    super::node_api::parse_tls_min_version(&v).map_err(|e| bad(k, e))?;
                    c.tls_min_version = Some(v);
                }
                "tlsCipherSuites" => {
                    let list: Vec<String> = field(file, k, v)?;
                    super::node_api::parse_tls_cipher_suites(&list).map_err(|e| bad(k, e))?;
                    c.tls_cipher_suites = Some(list);
                }
                "streamingConnectionIdleTimeout" => c.streaming_connection_idle_timeout = defaulted(duration(file, k, v)?),
                "serverTLSBootstrap" => c.server_tls_bootstrap = Some(field(file, k, v)?),
                "enableDebuggingHandlers" => c.enable_debugging_handlers = Some(field(file, k, v)?),
                "enableSystemLogHandler" => c.enable_system_log_handler = Some(field(file, k, v)?),
                "containerLogMaxSize" => {
                    let q: String = field(file, k, v)?;
                    let n = crate::resources::parse(&q).map_err(|e| bad(k, e.to_string()))?;
                    if n < 1.0 {
                        return Err(bad(k, format!("Invalid value: {q:?}: must be greater than 0")));
                    }
                    c.container_log_max_size = Some(n as u64);
                }
                "containerLogMaxFiles" => {
                    let n: i64 = field(file, k, v)?;
                    if n < 2 {
                        return Err(bad(k, format!("Invalid value: {n}: must be greater than or equal to 2")));
                    }
                    c.container_log_max_files = Some(n.min(1000) as usize);
                }
                "containerLogMonitorInterval" => {
                    let d = duration(file, k, v)?;
                    if d < Duration::from_secs(3) {
                        return Err(bad(k, format!("Invalid value: {d:?}: must be at least 3s")));
                    }
                    c.container_log_monitor_interval = Some(d);
                }
                "imageGCHighThresholdPercent" | "imageGCLowThresholdPercent" => {
                    let n: i64 = field(file, k, v)?;
                    let pct = u8::try_from(n).ok().filter(|p| *p <= 100).ok_or_else(|| bad(k, format!("Invalid value: {n}: must be between 0 and 100")))?;
                    if k == "imageGCHighThresholdPercent" {
                        c.image_gc_high_threshold_percent = Some(pct);
                    } else {
                        c.image_gc_low_threshold_percent = Some(pct);
                    }
                }
                "imageMinimumGCAge" => c.image_minimum_gc_age = defaulted(duration(file, k, v)?),
                "imageMaximumGCAge" => c.image_maximum_gc_age = Some(duration(file, k, v)?),
                "nodeStatusMaxImages" => {
                    let n: i64 = field(file, k, v)?;
                    c.node_status_max_images =
                        Some(i32::try_from(n).ok().filter(|n| *n >= -1).ok_or_else(|| bad(k, format!("Invalid value: {n}: must be -1 (no limit) or more")))?);
                }
                "serializeImagePulls" => c.serialize_image_pulls = Some(field(file, k, v)?),
                "maxParallelImagePulls" => c.max_parallel_image_pulls = Some(count(file, k, v, 1)?),
                "registryPullQPS" => c.registry_pull_qps = Some(count(file, k, v, 0)?),
                "registryBurst" => c.registry_burst = Some(count(file, k, v, 0)?),
                "imagePullCredentialsVerificationPolicy" => {
                    let p: String = field(file, k, v)?;
                    c.image_pull_credentials_verify_policy = Some(super::VerifyPolicy::parse(&p).ok_or_else(|| {
                        bad(k, format!("Unsupported value: {p:?}: supported values: \"NeverVerify\", \"NeverVerifyPreloadedImages\", \"NeverVerifyAllowlistedImages\", \"AlwaysVerify\""))
                    })?);
                }
                "preloadedImagesVerificationAllowlist" => c.preloaded_images_verification_allowlist = Some(field(file, k, v)?),
                "shutdownGracePeriod" => c.shutdown_grace_period = Some(duration(file, k, v)?),
                "shutdownGracePeriodCriticalPods" => c.shutdown_grace_period_critical_pods = Some(duration(file, k, v)?),
                "featureGates" => {
                    let gates: BTreeMap<String, bool> = field(file, k, v)?;
                    super::features::FeatureGates::resolve(&gates, file, k)?;
                    c.feature_gates = Some(gates);
                }
                "kubeAPIQPS" => c.kube_api_qps = Some(count(file, k, v, 0)?),
                "kubeAPIBurst" => c.kube_api_burst = Some(count(file, k, v, 0)?),
                "eventRecordQPS" => c.event_record_qps = Some(count(file, k, v, 0)?),
                "eventBurst" => c.event_burst = Some(count(file, k, v, 0)?),
                "kubeReserved" => c.allocatable.kube_reserved = Some(field(file, k, v)?),
                "systemReserved" => c.allocatable.system_reserved = Some(field(file, k, v)?),
                "reservedSystemCPUs" => c.allocatable.reserved_system_cpus = Some(field(file, k, v)?),
                "enforceNodeAllocatable" => c.allocatable.enforce_node_allocatable = Some(field(file, k, v)?),
                "kubeReservedCgroup" => c.allocatable.kube_reserved_cgroup = Some(field(file, k, v)?),
                "systemReservedCgroup" => c.allocatable.system_reserved_cgroup = Some(field(file, k, v)?),
                "podPidsLimit" => c.allocatable.pod_pids_limit = Some(field(file, k, v)?),
                "evictionHard" => eviction.hard = Some(field(file, k, v)?),
                "evictionSoft" => eviction.soft = Some(field(file, k, v)?),
                "evictionSoftGracePeriod" => eviction.soft_grace = Some(field(file, k, v)?),
                "evictionMinimumReclaim" => eviction.minimum_reclaim = Some(field(file, k, v)?),
                "evictionMaxPodGracePeriod" => eviction.max_pod_grace_period = Some(field(file, k, v)?),
                "evictionPressureTransitionPeriod" => eviction.pressure_transition_period = defaulted(duration(file, k, v)?),
                "authentication" => c.authentication = field(file, k, v)?,
                "authorization" => {
                    c.authorization = field(file, k, v)?;
                    if let Some(m) = &c.authorization.mode
                        && m != "Webhook"
                        && m != "AlwaysAllow"
                    {
                        return Err(bad("authorization.mode", format!("Unsupported value: {m:?}: supported values: \"AlwaysAllow\", \"Webhook\"")));
                    }
                }
                // The resource managers nodelet does not have yet: their
                // default (off) is accepted, anything else refused rather
                // than silently not done (a pod expecting exclusive cores or
                // NUMA alignment would run without them).
                "cpuManagerPolicy" => {
                    let p: String = field(file, k, v)?;
                    match p.as_str() {
                        "" | "none" => c.cpu_manager_static = false,
                        "static" => c.cpu_manager_static = true,
                        other => return Err(bad(k, format!("Unsupported value: {other:?}: supported values: \"none\", \"static\""))),
                    }
                }
                "cpuManagerPolicyOptions" => {
                    let opts: BTreeMap<String, String> = field(file, k, v)?;
                    for (name, value) in opts {
                        match name.as_str() {
                            "full-pcpus-only" => {
                                c.cpu_full_pcpus_only = value.parse::<bool>().map_err(|_| bad(&format!("{k}.{name}"), format!("Invalid value: {value:?}: must be \"true\" or \"false\"")))?;
                            }
                            other => {
                                return Err(bad(
                                    &format!("{k}.{other}"),
                                    format!("Unsupported value: {other:?}: supported options: \"full-pcpus-only\" (nodelet refuses an option rather than run pods without it)"),
                                ));
                            }
                        }
                    }
                }
                "cpuManagerReconcilePeriod" => c.cpu_manager_reconcile_period = defaulted(duration(file, k, v)?),
                "topologyManagerPolicy" => {
                    let p: String = field(file, k, v)?;
                    c.topology_manager.policy = crate::topology::Policy::parse(&p).ok_or_else(|| {
                        bad(k, format!("Unsupported value: {p:?}: supported values: \"best-effort\", \"none\", \"restricted\", \"single-numa-node\""))
                    })?;
                }
                "topologyManagerScope" => {
                    let p: String = field(file, k, v)?;
                    c.topology_manager.scope = match p.as_str() {
                        "" | "container" => crate::topology::Scope::Container,
                        "pod" => crate::topology::Scope::Pod,
                        other => return Err(bad(k, format!("Unsupported value: {other:?}: supported values: \"container\", \"pod\""))),
                    };
                }
                "topologyManagerPolicyOptions" => {
                    let opts: BTreeMap<String, String> = field(file, k, v)?;
                    if let Some(name) = opts.keys().next() {
                        return Err(bad(
                            &format!("{k}.{name}"),
                            format!("Unsupported value: {name:?}: nodelet's topology manager has no policy options (it refuses one rather than run pods without it)"),
                        ));
                    }
                }
                "memoryManagerPolicy" => {
                    let p: String = field(file, k, v)?;
                    c.memory_manager_static = match p.as_str() {
                        "" | "None" => false,
                        "Static" => true,
                        other => return Err(bad(k, format!("Unsupported value: {other:?}: supported values: \"None\", \"Static\""))),
                    };
                }
                "reservedMemory" => {
                    #[derive(Deserialize)]
                    #[serde(rename_all = "camelCase", deny_unknown_fields)]
                    struct Reserved {
                        numa_node: i64,
                        #[serde(default)]
                        limits: BTreeMap<String, Value>,
                    }
                    let list: Vec<Reserved> = field(file, k, v)?;
                    for (i, r) in list.iter().enumerate() {
                        let node = u32::try_from(r.numa_node).map_err(|_| bad(&format!("{k}[{i}].numaNode"), format!("Invalid value: {}: must be a NUMA node id", r.numa_node)))?;
                        for (name, q) in &r.limits {
                            let at = format!("{k}[{i}].limits.{name}");
                            // A quantity is a string or a bare number.
                            let q = match q {
                                Value::String(s) => s.clone(),
                                Value::Number(n) => n.to_string(),
                                other => return Err(bad(&at, format!("Invalid value: {other}: must be a quantity"))),
                            };
                            let q = &q;
                            let bytes = crate::resources::parse(q).ok().filter(|b| *b >= 0.0 && *b < u64::MAX as f64).ok_or_else(|| bad(&at, format!("Invalid value: {q:?}: must be a quantity")))?;
                            match name.as_str() {
                                "memory" => {
                                    if c.reserved_memory.insert(node, bytes.ceil() as u64).is_some() {
                                        return Err(bad(&format!("{k}[{i}].numaNode"), format!("Duplicate value: {node}")));
                                    }
                                }
                                n if n.starts_with("hugepages-") => {}
                                other => return Err(bad(&at, format!("Unsupported value: {other:?}: memory or hugepages-<size>"))),
                            }
                        }
                    }
                }
                "crashLoopBackOff" => {
                    let b: CrashLoopBackOff = field(file, k, v)?;
                    c.max_container_restart_period = b.max_container_restart_period;
                }
                other => match super::fields::classify(other, super::fields::KUBELET) {
                    super::fields::Unused::Typo(meant) => {
                        return Err(bad(other, format!("unknown field: no KubeletConfiguration has it; did you mean {meant:?}?")));
                    }
                    super::fields::Unused::Known if without_effect(other, v) => {}
                    super::fields::Unused::Known => {
                        tracing::warn!(file, field = other, "a KubeletConfiguration field nodelet does not implement; ignored");
                        c.ignored.push(other.to_string());
                    }
                    super::fields::Unused::Foreign => {
                        tracing::warn!(file, field = other, "not a KubeletConfiguration field (kubelet.config.k8s.io/v1beta1); ignored");
                        c.ignored.push(other.to_string());
                    }
                },
            }
        }
        c.eviction = super::eviction::EvictionConfig::resolve(&eviction, file)?;
        super::allocatable::AllocatableConfig::resolve(&c.allocatable, file)?;
        if let (Some(total), Some(critical)) = (c.shutdown_grace_period, c.shutdown_grace_period_critical_pods)
            && critical > total
        {
            return Err(bad(
                "shutdownGracePeriodCriticalPods",
                format!("Invalid value: {critical:?}: must not be more than shutdownGracePeriod ({total:?})"),
            ));
        }
        let (high, low) = (c.image_gc_high_threshold_percent.unwrap_or(85), c.image_gc_low_threshold_percent.unwrap_or(80));
        if low > high {
            return Err(bad(
                "imageGCLowThresholdPercent",
                format!("Invalid value: {low}: must be less than or equal to imageGCHighThresholdPercent ({high})"),
            ));
        }
        if let (Some(min), Some(max)) = (c.image_minimum_gc_age, c.image_maximum_gc_age)
            && !max.is_zero()
            && max < min
        {
            return Err(bad("imageMaximumGCAge", format!("Invalid value: {max:?}: must be greater than imageMinimumGCAge ({min:?})")));
        }
        if c.pod_logs_dir.as_ref().is_some_and(|p| !p.is_absolute()) {
            return Err(bad("podLogsDir", "must be an absolute path".into()));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_it_uses() {
        let yaml = r#"
kind: KubeletConfiguration
apiVersion: kubelet.config.k8s.io/v1beta1
address: 0.0.0.0
port: 10250
readOnlyPort: 10255
cgroupDriver: cgroupfs
clusterDNS: [10.0.0.2]
clusterDomain: cluster.local
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {cacheTTL: 2m0s, enabled: true}
  x509: {clientCAFile: /opt/kubernetes/ssl/ca.pem}
authorization: {mode: Webhook}
evictionHard: {imagefs.available: 15%, memory.available: 100Mi}
maxOpenFiles: 1000000
maxPods: 110
staticPodPath: /etc/kubernetes/manifests
fileCheckFrequency: 20s
crashLoopBackOff: {maxContainerRestartPeriod: 1m}
seccompDefault: true
memorySwap: {swapBehavior: LimitedSwap}
"#;
        let c = KubeletConfig::parse(yaml.as_bytes(), "kubelet-config.yml").unwrap();
        assert_eq!(c.cluster_dns, Some(vec!["10.0.0.2".to_string()]));
        assert_eq!(c.max_pods, Some(110));
        assert_eq!(c.static_pod_path, Some(PathBuf::from("/etc/kubernetes/manifests")));
        assert_eq!(c.file_check_frequency, Some(Duration::from_secs(20)));
        assert_eq!(c.max_container_restart_period, Some(Duration::from_secs(60)));
        assert_eq!(c.port, Some(10250));
        assert_eq!(c.read_only_port, Some(10255));
        assert_eq!(c.authentication.anonymous.enabled, Some(false));
        assert_eq!(c.authentication.webhook.cache_ttl, Some(Duration::from_secs(120)));
        assert_eq!(c.authentication.x509.client_ca_file, Some(PathBuf::from("/opt/kubernetes/ssl/ca.pem")));
        assert_eq!(c.authorization.mode.as_deref(), Some("Webhook"));
        assert_eq!((c.fail_swap_on, c.seccomp_default, c.swap_behavior), (Some(false), Some(true), Some(super::super::SwapBehavior::LimitedSwap)));
    }

    fn err(body: &str) -> String {
        let yaml = format!("kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\n{body}");
        KubeletConfig::parse(yaml.as_bytes(), "k.yaml").unwrap_err().to_string()
    }

    #[test]
    fn bad_values_name_the_file_and_field() {
        assert_eq!(err("maxPods: lots\n"), "k.yaml: maxPods: invalid type: string \"lots\", expected u32");
        assert_eq!(
            err("allowedUnsafeSysctls: [kernel.msg*, vm.swappiness]\n"),
            "k.yaml: allowedUnsafeSysctls: Invalid value: \"vm.swappiness\": the sysctl is not known to be namespaced"
        );
        assert!(err("clusterDNS: 10.0.0.2\n").starts_with("k.yaml: clusterDNS: invalid type"));
        assert!(err("cgroupDriver: docker\n").starts_with("k.yaml: cgroupDriver: Unsupported value"));
        assert!(err("fileCheckFrequency: soon\n").starts_with("k.yaml: fileCheckFrequency: invalid duration"));
        assert!(err("staticPodURLHeader: {X: 1}\n").starts_with("k.yaml: staticPodURLHeader.X: invalid type"));
        assert!(err("authorization: {mode: ABAC}\n").starts_with("k.yaml: authorization.mode: Unsupported value"));
        assert!(err("authentication: {webhook: {cacheTTL: soon}}\n").starts_with("k.yaml: authentication.webhook.cacheTTL: "), "{}", err("authentication: {webhook: {cacheTTL: soon}}\n"));
        assert!(err("port: https\n").starts_with("k.yaml: port: invalid type"));
        assert_eq!(
            err("memorySwap: {swapBehavior: UnlimitedSwap}\n"),
            "k.yaml: memorySwap.swapBehavior: Unsupported value: \"UnlimitedSwap\": supported values: \"NoSwap\", \"LimitedSwap\""
        );
        assert!(err("failSwapOn: maybe\n").starts_with("k.yaml: failSwapOn: invalid type"));
        assert!(err("containerLogMaxFiles: 1\n").starts_with("k.yaml: containerLogMaxFiles: Invalid value: 1"));
        assert!(err("containerLogMaxSize: lots\n").starts_with("k.yaml: containerLogMaxSize: quantities must match"));
        assert!(err("containerLogMonitorInterval: 1s\n").starts_with("k.yaml: containerLogMonitorInterval: Invalid value"));
        // Beyond Go's duration (292 years) is refused, as kubelet's parser
        // does; it used to reach tonic and panic on every CRI call.
        let e = err("runtimeRequestTimeout: 100000000h\n");
        assert!(e.starts_with("k.yaml: runtimeRequestTimeout: invalid duration \"100000000h\""), "{e}");
        assert_eq!(err("memoryManagerPolicy: Dynamic\n"), "k.yaml: memoryManagerPolicy: Unsupported value: \"Dynamic\": supported values: \"None\", \"Static\"");
        assert!(err("reservedMemory: [{numaNode: -1, limits: {memory: 1Gi}}]\n").starts_with("k.yaml: reservedMemory[0].numaNode: Invalid value: -1"));
        assert!(err("reservedMemory: [{numaNode: 0, limits: {memory: lots}}]\n").starts_with("k.yaml: reservedMemory[0].limits.memory: Invalid value"));
        let c = KubeletConfig::parse(
            b"kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\nmemoryManagerPolicy: Static\nreservedMemory: [{numaNode: 0, limits: {memory: 1Gi}}, {numaNode: 1, limits: {memory: 512Mi, hugepages-2Mi: 0}}]\n",
            "k.yaml",
        )
        .unwrap();
        assert!(c.memory_manager_static);
        assert_eq!(c.reserved_memory, [(0, 1 << 30), (1, 512 << 20)].into());
        assert_eq!(err("topologyManagerPolicy: closest\n"), "k.yaml: topologyManagerPolicy: Unsupported value: \"closest\": supported values: \"best-effort\", \"none\", \"restricted\", \"single-numa-node\"");
        assert!(err("topologyManagerScope: node\n").starts_with("k.yaml: topologyManagerScope: Unsupported value: \"node\""));
        assert!(err("topologyManagerPolicyOptions: {prefer-closest-numa-nodes: \"true\"}\n").starts_with("k.yaml: topologyManagerPolicyOptions.prefer-closest-numa-nodes: Unsupported value"));
        let c = KubeletConfig::parse(b"kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\ntopologyManagerPolicy: single-numa-node\ntopologyManagerScope: pod\n", "k.yaml").unwrap();
        assert_eq!(c.topology_manager, crate::topology::Config { policy: crate::topology::Policy::SingleNumaNode, scope: crate::topology::Scope::Pod });
        assert_eq!(err("cpuManagerPolicy: dynamic\n"), "k.yaml: cpuManagerPolicy: Unsupported value: \"dynamic\": supported values: \"none\", \"static\"");
        let e = err("cpuManagerPolicy: static\ncpuManagerPolicyOptions: {distribute-cpus-across-numa: \"true\"}\n");
        assert!(e.starts_with("k.yaml: cpuManagerPolicyOptions.distribute-cpus-across-numa: Unsupported value"), "{e}");
        let yaml = "kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\ncpuManagerPolicy: static\ncpuManagerPolicyOptions: {full-pcpus-only: \"true\"}\ncpuManagerReconcilePeriod: 2s\n";
        let c = KubeletConfig::parse(yaml.as_bytes(), "k.yaml").unwrap();
        assert_eq!((c.cpu_manager_static, c.cpu_full_pcpus_only, c.cpu_manager_reconcile_period), (true, true, Some(Duration::from_secs(2))));
        for f in ["cpuManagerPolicy: none\n", "memoryManagerPolicy: None\n", "topologyManagerPolicy: none\n", "cpuManagerPolicy: \"\"\n"] {
            let yaml = format!("kind: KubeletConfiguration\napiVersion: kubelet.config.k8s.io/v1beta1\n{f}");
            let c = KubeletConfig::parse(yaml.as_bytes(), "k.yaml").unwrap();
            assert!(c.ignored.is_empty(), "the default is taken as what nodelet does: {f} {:?}", c.ignored);
        }
        let wrong = KubeletConfig::parse(b"kind: KubeProxyConfiguration\napiVersion: x\n", "k.yaml").unwrap_err().to_string();
        assert!(wrong.starts_with("k.yaml: kind: must be"), "{wrong}");
    }
}
