//! kubelet's own metric families (`/metrics` on the node API), under
//! kubelet's names, labels and buckets so that dashboards and alerts written
//! for kubelet read nodelet unchanged. One [`Metrics`] is made at start and
//! shared (an `Arc`) with the parts that record into it: the instrumented
//! runtime, the relist loop, the pod workers and the certificate managers.
//! It is a leaf: it knows nothing of the parts that use it.

use std::sync::atomic::{AtomicI64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Operation {
    pub operation_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContainerType {
    pub container_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ContainerError {
    pub container_type: &'static str,
    pub code: String,
}

/// kubelet's `metrics.DefBuckets` (Prometheus' default buckets).
const DEFAULT_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// kubelet_pod_start_duration_seconds' buckets.
const POD_START_BUCKETS: [f64; 25] = [
    0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0, 240.0, 300.0, 360.0, 480.0, 600.0, 900.0,
    1200.0, 1800.0, 2700.0, 3600.0,
];

/// kubelet_runtime_operations_duration_seconds' buckets: 5 ms × 2.5^n.
fn runtime_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.5, 14))
}

type HistogramFamily = Family<Operation, Histogram, fn() -> Histogram>;

/// The families nodelet records. Counters only go up; the certificate TTLs
/// are computed from the recorded expiry when scraped.
pub struct Metrics {
    registry: Registry,
    pub runtime_operations: Family<Operation, Counter>,
    pub runtime_operation_errors: Family<Operation, Counter>,
    pub runtime_operation_duration: HistogramFamily,
    pub pleg_relist_duration: Histogram,
    pub pleg_relist_interval: Histogram,
    pleg_last_seen: Gauge<f64, std::sync::atomic::AtomicU64>,
    pub pod_start_duration: Histogram,
    pub started_pods: Counter,
    pub started_pods_errors: Counter,
    pub started_containers: Family<ContainerType, Counter>,
    pub started_containers_errors: Family<ContainerError, Counter>,
    client_ttl: Gauge<f64, std::sync::atomic::AtomicU64>,
    server_ttl: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// The client and serving certificates' notAfter (seconds since the
    /// epoch; 0 while there is none).
    client_not_after: AtomicI64,
    server_not_after: AtomicI64,
    pub client_renew_errors: Counter,
    pub server_renew_errors: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            runtime_operations: Family::default(),
            runtime_operation_errors: Family::default(),
            runtime_operation_duration: Family::new_with_constructor(runtime_histogram),
            pleg_relist_duration: Histogram::new(DEFAULT_BUCKETS),
            pleg_relist_interval: Histogram::new(DEFAULT_BUCKETS),
            pleg_last_seen: Gauge::default(),
            pod_start_duration: Histogram::new(POD_START_BUCKETS),
            started_pods: Counter::default(),
            started_pods_errors: Counter::default(),
            started_containers: Family::default(),
            started_containers_errors: Family::default(),
            client_ttl: Gauge::default(),
            server_ttl: Gauge::default(),
            client_not_after: AtomicI64::new(0),
            server_not_after: AtomicI64::new(0),
            client_renew_errors: Counter::default(),
            server_renew_errors: Counter::default(),
        };
        let r = &mut m.registry;
        // Counters get their `_total` suffix from the encoder.
        r.register("kubelet_runtime_operations", "[ALPHA] Cumulative number of runtime operations by operation type", m.runtime_operations.clone());
        r.register(
            "kubelet_runtime_operations_errors",
            "[ALPHA] Cumulative number of runtime operation errors by operation type",
            m.runtime_operation_errors.clone(),
        );
        r.register(
            "kubelet_runtime_operations_duration_seconds",
            "[ALPHA] Duration in seconds of runtime operations. Broken down by operation type",
            m.runtime_operation_duration.clone(),
        );
        r.register("kubelet_pleg_relist_duration_seconds", "[ALPHA] Duration in seconds for relisting pods in PLEG", m.pleg_relist_duration.clone());
        r.register(
            "kubelet_pleg_relist_interval_seconds",
            "[ALPHA] Interval in seconds between relisting in PLEG",
            m.pleg_relist_interval.clone(),
        );
        r.register(
            "kubelet_pleg_last_seen_seconds",
            "[ALPHA] Timestamp in seconds when PLEG was last seen active",
            m.pleg_last_seen.clone(),
        );
        r.register(
            "kubelet_pod_start_duration_seconds",
            "[ALPHA] Duration in seconds from kubelet seeing a pod for the first time to the pod starting to run",
            m.pod_start_duration.clone(),
        );
        r.register("kubelet_started_pods", "[ALPHA] Cumulative number of pods started", m.started_pods.clone());
        r.register("kubelet_started_pods_errors", "[ALPHA] Cumulative number of errors when starting pods", m.started_pods_errors.clone());
        r.register("kubelet_started_containers", "[ALPHA] Cumulative number of containers started", m.started_containers.clone());
        r.register(
            "kubelet_started_containers_errors",
            "[ALPHA] Cumulative number of errors when starting containers",
            m.started_containers_errors.clone(),
        );
        r.register(
            "kubelet_certificate_manager_client_ttl_seconds",
            "[ALPHA] Gauge of the TTL (time-to-live) of the Kubelet's client certificate. The value is in seconds until certificate expiry (negative if already expired). If client certificate is invalid or unused, the value will be +INF",
            m.client_ttl.clone(),
        );
        r.register(
            "kubelet_certificate_manager_client_expiration_renew_errors",
            "[ALPHA] Counter of certificate renewal errors",
            m.client_renew_errors.clone(),
        );
        r.register(
            "kubelet_certificate_manager_server_ttl_seconds",
            "[ALPHA] Gauge of the shortest TTL (time-to-live) of the Kubelet's serving certificate. The value is in seconds until certificate expiry (negative if already expired). If serving certificate is invalid or unused, the value will be +INF",
            m.server_ttl.clone(),
        );
        r.register("kubelet_server_expiration_renew_errors", "[BETA] Counter of certificate renewal errors", m.server_renew_errors.clone());
        m
    }

    /// Records one runtime call: its count, its time and whether it failed.
    pub fn runtime_call(&self, operation_type: &'static str, seconds: f64, failed: bool) {
        let op = Operation { operation_type };
        self.runtime_operations.get_or_create(&op).inc();
        self.runtime_operation_duration.get_or_create(&op).observe(seconds);
        if failed {
            self.runtime_operation_errors.get_or_create(&op).inc();
        }
    }

    /// A relist that took `seconds`, `interval` after the one before.
    pub fn relisted(&self, seconds: f64, interval: Option<f64>) {
        self.pleg_relist_duration.observe(seconds);
        if let Some(i) = interval {
            self.pleg_relist_interval.observe(i);
        }
        self.pleg_last_seen.set(now_secs() as f64);
    }

    /// A container start (kubelet's container_type: `container`,
    /// `init_container`, `ephemeral_container`); `error` is the reason it
    /// failed.
    pub fn container_started(&self, container_type: &'static str, error: Option<&str>) {
        self.started_containers.get_or_create(&ContainerType { container_type }).inc();
        if let Some(code) = error {
            self.started_containers_errors.get_or_create(&ContainerError { container_type, code: code.to_string() }).inc();
        }
    }

    /// The client (`server` false) or serving certificate now in use.
    pub fn certificate_in_use(&self, server: bool, not_after_secs: i64) {
        let slot = if server { &self.server_not_after } else { &self.client_not_after };
        slot.store(not_after_secs, Ordering::Relaxed);
    }

    /// The families in Prometheus' text format (0.0.4).
    pub fn render(&self) -> String {
        let now = now_secs();
        for (slot, gauge) in [(&self.client_not_after, &self.client_ttl), (&self.server_not_after, &self.server_ttl)] {
            let at = slot.load(Ordering::Relaxed);
            gauge.set(if at == 0 { f64::INFINITY } else { (at - now) as f64 });
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

fn now_secs() -> i64 {
    crate::clock::UnixNanos::now().secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_under_kubelets_names() {
        let m = Metrics::new();
        m.runtime_call("create_container", 0.02, false);
        m.runtime_call("create_container", 0.03, true);
        m.relisted(0.004, Some(1.0));
        m.pod_start_duration.observe(1.5);
        m.container_started("init_container", None);
        m.container_started("container", Some("CreateContainerError"));
        m.certificate_in_use(false, now_secs() + 3600);
        let text = m.render();
        for line in [
            "kubelet_runtime_operations_total{operation_type=\"create_container\"} 2",
            "kubelet_runtime_operations_errors_total{operation_type=\"create_container\"} 1",
            "kubelet_runtime_operations_duration_seconds_count{operation_type=\"create_container\"} 2",
            "kubelet_pleg_relist_duration_seconds_bucket{le=\"0.005\"} 1",
            "kubelet_pod_start_duration_seconds_bucket{le=\"2\"} 1",
            "kubelet_started_containers_total{container_type=\"init_container\"} 1",
            "kubelet_started_containers_errors_total{container_type=\"container\",code=\"CreateContainerError\"} 1",
            "kubelet_certificate_manager_server_ttl_seconds +Inf",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        let ttl = text.lines().find_map(|l| l.strip_prefix("kubelet_certificate_manager_client_ttl_seconds ")).unwrap();
        let ttl: f64 = ttl.parse().unwrap();
        assert!((3590.0..=3600.0).contains(&ttl), "{ttl}");
    }
}
