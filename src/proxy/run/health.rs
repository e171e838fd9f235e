//! What the proxy serves besides rules: `/healthz` and `/livez` (10256),
//! the metrics under kube-proxy's names (10249), and the health-check node
//! ports of externalTrafficPolicy Local Services.

use super::*;

/// Prometheus figures under kube-proxy's names.
#[derive(Default)]
pub struct Metrics {
    pub(super) sync_count: AtomicU64,
    pub(super) sync_micros_total: AtomicU64,
    pub(super) buckets: [AtomicU64; BUCKETS.len()],
    pub(super) last_sync_unix_ms: AtomicU64,
    pub(super) last_queued_unix_ms: AtomicU64,
    pub(super) service_changes: AtomicU64,
    pub(super) endpoint_changes: AtomicU64,
    pub(super) restore_failures: AtomicU64,
    pub(super) invalid_objects: AtomicU64,
    pub(super) address_conflicts: AtomicU64,
    pub(super) refused_objects: AtomicU64,
    pub(super) refusals_total: AtomicU64,
}

pub(super) const BUCKETS: [f64; 12] = [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048];

pub(super) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Metrics {
    pub(super) fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sync_count.fetch_add(1, Ordering::Relaxed);
        self.sync_micros_total.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.last_sync_unix_ms.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
    }

    pub fn render(&self, mode: Mode) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        out.push_str("# HELP kubeproxy_sync_proxy_rules_duration_seconds SyncProxyRules latency in seconds\n");
        out.push_str("# TYPE kubeproxy_sync_proxy_rules_duration_seconds histogram\n");
        for (i, le) in BUCKETS.iter().enumerate() {
            out.push_str(&format!("kubeproxy_sync_proxy_rules_duration_seconds_bucket{{le=\"{le}\"}} {}\n", g(&self.buckets[i])));
        }
        let count = g(&self.sync_count);
        out.push_str(&format!("kubeproxy_sync_proxy_rules_duration_seconds_bucket{{le=\"+Inf\"}} {count}\n"));
        out.push_str(&format!("kubeproxy_sync_proxy_rules_duration_seconds_sum {}\n", g(&self.sync_micros_total) as f64 / 1e6));
        out.push_str(&format!("kubeproxy_sync_proxy_rules_duration_seconds_count {count}\n"));
        let gauge = |out: &mut String, name: &str, help: &str, kind: &str, v: String| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"));
        };
        gauge(&mut out, "kubeproxy_sync_proxy_rules_last_timestamp_seconds", "The last time proxy rules were successfully synced", "gauge", format!("{}", g(&self.last_sync_unix_ms) as f64 / 1e3));
        gauge(&mut out, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds", "The last time a sync of proxy rules was queued", "gauge", format!("{}", g(&self.last_queued_unix_ms) as f64 / 1e3));
        gauge(&mut out, "kubeproxy_sync_proxy_rules_service_changes_total", "Cumulative proxy rules Service changes", "counter", g(&self.service_changes).to_string());
        gauge(&mut out, "kubeproxy_sync_proxy_rules_endpoint_changes_total", "Cumulative proxy rules Endpoint changes", "counter", g(&self.endpoint_changes).to_string());
        let failures = match mode {
            Mode::Nftables => "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
            _ => "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
        };
        gauge(&mut out, failures, "Cumulative proxy rules restore failures", "counter", g(&self.restore_failures).to_string());
        gauge(&mut out, "nodelet_proxy_invalid_objects", "Services and EndpointSlices skipped as invalid at the last sync", "gauge", g(&self.invalid_objects).to_string());
        gauge(&mut out, "nodelet_proxy_address_conflicts", "Service address claims not programmed because another Service holds the address, port and protocol", "gauge", g(&self.address_conflicts).to_string());
        gauge(&mut out, "nodelet_proxy_refused_objects", "Service ports (IPVS: virtual services) the kernel refuses now (held, retried with back-off)", "gauge", g(&self.refused_objects).to_string());
        gauge(&mut out, "nodelet_proxy_kernel_refusals_total", "Operations the kernel refused", "counter", g(&self.refusals_total).to_string());
        out
    }
}

/// What `/healthz` reads.
#[derive(Default)]
pub(super) struct Health {
    pub(super) last_ok: Mutex<Option<SystemTime>>,
    /// The oldest change not yet applied.
    pub(super) pending_since: Mutex<Option<Instant>>,
}

/// Serves kube-proxy's health endpoints.
pub(super) async fn serve_health(addr: SocketAddr, health: Arc<Health>, timeout: Duration, node_name: String) {
    use axum::{Router, http::StatusCode, routing::get};
    let handler = move || {
        let health = health.clone();
        let node_name = node_name.clone();
        async move {
            let last = *health.last_ok.lock().unwrap_or_else(|e| e.into_inner());
            let pending = *health.pending_since.lock().unwrap_or_else(|e| e.into_inner());
            let healthy = last.is_some() && pending.is_none_or(|p| p.elapsed() < timeout);
            let stamp = |t: SystemTime| {
                jiff::Timestamp::try_from(t).map(|t| t.to_string()).unwrap_or_default()
            };
            let body = serde_json::json!({
                "lastUpdated": last.map(stamp).unwrap_or_default(),
                "currentTime": stamp(SystemTime::now()),
                "nodeName": node_name,
                "nodeEligible": true,
            });
            let code = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            (code, [("Content-Type", "application/json"), ("X-Content-Type-Options", "nosniff")], body.to_string())
        }
    };
    let app = Router::new().route("/healthz", get(handler.clone())).route("/livez", get(handler));
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            tracing::info!(%addr, "serving proxy /healthz and /livez");
            if let Err(e) = axum::serve(l, app).await {
                tracing::error!(%addr, error = %e, "proxy health server stopped");
            }
        }
        Err(e) => tracing::error!(%addr, error = %e, "cannot serve proxy /healthz"),
    }
    std::future::pending::<()>().await
}

pub(super) async fn serve_metrics(addr: SocketAddr, metrics: Arc<Metrics>, mode: Mode) {
    use axum::{Router, routing::get};
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move { ([("Content-Type", "text/plain; version=0.0.4")], metrics.render(mode)) }
        }),
    );
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            tracing::info!(%addr, "serving proxy metrics");
            if let Err(e) = axum::serve(l, app).await {
                tracing::error!(%addr, error = %e, "proxy metrics server stopped");
            }
        }
        Err(e) => tracing::error!(%addr, error = %e, "cannot serve proxy metrics"),
    }
    std::future::pending::<()>().await
}

/// One health-check node port: 200 with the local endpoint count while
/// there are local endpoints, 503 otherwise (what cloud load balancers
/// probe for externalTrafficPolicy Local).
pub(super) struct HealthCheckPort {
    pub(super) state: Arc<Mutex<(String, String, usize, bool)>>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

pub(super) fn start_health_check_port(port: u16, state: Arc<Mutex<(String, String, usize, bool)>>) -> tokio::task::JoinHandle<()> {
    use axum::{Router, http::StatusCode};
    let app = Router::new().fallback(move || {
        let state = state.clone();
        async move {
            let (ns, name, count, healthy) = state.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let body = serde_json::json!({
                "service": {"namespace": ns, "name": name},
                "localEndpoints": count,
                "serviceProxyHealthy": healthy,
            });
            let code = if count > 0 && healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            (
                code,
                [
                    ("Content-Type", "application/json".to_string()),
                    ("X-Content-Type-Options", "nosniff".to_string()),
                    ("X-Load-Balancing-Endpoint-Weight", count.to_string()),
                ],
                body.to_string(),
            )
        }
    });
    tokio::spawn(async move {
        // Both families where the host has IPv6 (a `::` socket takes IPv4
        // too), load balancers of either family check it; else IPv4.
        let bound = match dual_stack_listener(port) {
            Ok(l) => Ok(l),
            Err(_) => tokio::net::TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await,
        };
        match bound {
            Ok(l) => {
                let _ = axum::serve(l, app).await;
            }
            Err(e) => tracing::error!(port, error = %e, "cannot serve a health-check node port"),
        }
    })
}

pub(super) fn update_health_check_ports(ports: &mut BTreeMap<u16, HealthCheckPort>, state: &ProxyState, healthy: bool) {
    let mut want: BTreeMap<u16, (String, String, usize, bool)> = BTreeMap::new();
    let empty = Vec::new();
    for (key, svc) in &state.services {
        let Some(port) = svc.health_check_node_port else { continue };
        let sel = model::select(svc, state.endpoints.get(key).unwrap_or(&empty));
        let e = want.entry(port).or_insert_with(|| (key.namespace.clone(), key.name.clone(), 0, healthy));
        e.2 = e.2.max(sel.local_count);
    }
    ports.retain(|port, hc| {
        // A port that could not be bound is tried again.
        let keep = want.contains_key(port) && !hc.task.is_finished();
        if !keep {
            hc.task.abort();
        }
        keep
    });
    for (port, value) in want {
        match ports.get(&port) {
            Some(hc) => *hc.state.lock().unwrap_or_else(|e| e.into_inner()) = value,
            None => {
                let state = Arc::new(Mutex::new(value));
                let task = start_health_check_port(port, state.clone());
                ports.insert(port, HealthCheckPort { state, task });
            }
        }
    }
}

/// A listener on `[::]:port` that takes IPv4 too whatever
/// `net.ipv6.bindv6only` says (IPV6_V6ONLY off, set before the bind).
fn dual_stack_listener(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    use std::os::fd::AsRawFd;
    let s = tokio::net::TcpSocket::new_v6()?;
    let off: libc::c_int = 0;
    // SAFETY: a valid socket and an int of the size given.
    let rc = unsafe { libc::setsockopt(s.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, (&off as *const libc::c_int).cast(), size_of::<libc::c_int>() as u32) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    s.set_reuseaddr(true)?;
    s.bind(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)))?;
    s.listen(1024)
}
