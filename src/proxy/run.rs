//! The proxy's loop: watches of Services and EndpointSlices, a
//! bounded-frequency sync (at most one per minSyncPeriod, at least one per
//! syncPeriod), the backend, stale UDP conntrack entries, `/healthz` and
//! `/livez` (10256), the metrics (10249) and the health-check node ports of
//! externalTrafficPolicy Local Services.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher;
use tokio::sync::Notify;

use super::model::{self, ProxyState};
use super::refusals::Refusals;
use super::{Context, ProxyError, conntrack, iptables, ipvs, nftables};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Iptables,
    Nftables,
    Ipvs,
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
            Mode::Ipvs => "ipvs",
            Mode::None => "none",
        }
    }
}

/// How the proxy runs.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub mode: Mode,
    pub ctx: Context,
    pub node_name: String,
    pub min_sync_period: Duration,
    pub sync_period: Duration,
    /// The proxy's own kubeconfig (KubeProxyConfiguration
    /// `clientConnection.kubeconfig`); without one it uses the node's identity.
    pub kubeconfig: Option<std::path::PathBuf>,
    /// `ipvs.*` (IPVS mode only).
    pub ipvs: ipvs::IpvsSettings,
    pub healthz: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    pub dry_run: bool,
}

enum Backend {
    Iptables(iptables::Iptables),
    Nftables(nftables::Nftables),
    Ipvs(Box<ipvs::Ipvs>),
}

impl Backend {
    fn sync(&mut self, state: &ProxyState, ctx: &Context, full: bool) -> Result<usize, ProxyError> {
        match self {
            Backend::Iptables(b) => b.sync(state, ctx, full).map(|s| s.changed_chains),
            Backend::Nftables(b) => b.sync(state, ctx, full).map(|s| s.changed_chains),
            Backend::Ipvs(b) => b.sync(state, ctx, full).map(|s| s.changed_chains),
        }
    }

    /// How soon the backend wants to look at the kernel again regardless of
    /// changes (IPVS: servers draining).
    fn recheck(&self) -> Option<Duration> {
        match self {
            Backend::Ipvs(b) => b.recheck(),
            _ => None,
        }
    }

    /// Refusals by the kernel to report as events, since the last call.
    fn take_reports(&mut self) -> Vec<ipvs::Report> {
        match self {
            Backend::Ipvs(b) => b.take_reports(),
            _ => Vec::new(),
        }
    }

    /// How soon an object the kernel refused is due to be tried again.
    fn retry_in(&self) -> Option<Duration> {
        match self {
            Backend::Ipvs(b) => b.retry_in(),
            _ => None,
        }
    }

    /// Objects the kernel refuses now, and refusals since the start.
    fn refusals(&self) -> (u64, u64) {
        match self {
            Backend::Ipvs(b) => (b.refused_now() as u64, b.refusals_total),
            _ => (0, 0),
        }
    }

    /// Whether the kernel would take the whole ruleset for `state`, asked
    /// without committing (iptables, nftables; IPVS holds its refusals
    /// per operation).
    fn check(&self, state: &ProxyState, ctx: &Context) -> Option<Result<(), String>> {
        match self {
            Backend::Iptables(_) => Some(iptables::check(state, ctx).map_err(|e| e.to_string())),
            Backend::Nftables(_) => Some(nftables::check(state, ctx).map_err(|e| e.to_string())),
            Backend::Ipvs(_) => None,
        }
    }

    /// That look: no replanning.
    fn drain(&mut self) -> Result<usize, ProxyError> {
        match self {
            Backend::Ipvs(b) => b.drain(),
            _ => Ok(0),
        }
    }

    fn render(&self, state: &ProxyState, ctx: &Context, s: &ProxySettings) -> String {
        match self {
            Backend::Iptables(_) => iptables::render_full_text(state, ctx),
            Backend::Nftables(_) => nftables::render_full_text(state, ctx),
            Backend::Ipvs(_) => ipvs::render_full_text(state, ctx, &s.ipvs),
        }
    }
}

/// The watched objects, each decoded on its own: one that does not decode
/// is skipped with a log line and disturbs nothing else.
#[derive(Default)]
struct Objects {
    services: BTreeMap<(String, String), Service>,
    slices: BTreeMap<(String, String), EndpointSlice>,
    services_listed: bool,
    slices_listed: bool,
}

/// How often iptables rules are rewritten in full.
const FULL_RESYNC: Duration = Duration::from_secs(3600);

/// Prometheus figures under kube-proxy's names.
#[derive(Default)]
pub struct Metrics {
    sync_count: AtomicU64,
    sync_micros_total: AtomicU64,
    buckets: [AtomicU64; BUCKETS.len()],
    last_sync_unix_ms: AtomicU64,
    last_queued_unix_ms: AtomicU64,
    service_changes: AtomicU64,
    endpoint_changes: AtomicU64,
    restore_failures: AtomicU64,
    invalid_objects: AtomicU64,
    address_conflicts: AtomicU64,
    refused_objects: AtomicU64,
    refusals_total: AtomicU64,
}

const BUCKETS: [f64; 12] = [0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048];

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Metrics {
    fn observe(&self, d: Duration) {
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
struct Health {
    last_ok: Mutex<Option<SystemTime>>,
    /// The oldest change not yet applied.
    pending_since: Mutex<Option<Instant>>,
}

fn decode<T: serde::de::DeserializeOwned>(obj: &DynamicObject, kind: &str) -> Result<T, String> {
    let value = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let ns = obj.metadata.namespace.as_deref().unwrap_or("");
        let name = obj.metadata.name.as_deref().unwrap_or("");
        format!("{kind} {ns}/{name}: {}: {}", e.path(), e.inner())
    })
}

fn key_of(obj: &DynamicObject) -> (String, String) {
    (obj.metadata.namespace.clone().unwrap_or_default(), obj.metadata.name.clone().unwrap_or_default())
}

/// Follows one kind into `objects`; `put` stores a decoded object.
/// Where `follow` keeps one kind: its objects and whether they were listed.
type Slot<T> = fn(&mut Objects) -> (&mut BTreeMap<(String, String), T>, &mut bool);

async fn follow<T>(
    client: kube::Client,
    kind: &'static str,
    objects: Arc<Mutex<Objects>>,
    changed: Arc<Notify>,
    metrics: Arc<Metrics>,
    pick: Slot<T>,
    counter: fn(&Metrics) -> &AtomicU64,
) where
    T: kube::Resource<DynamicType = ()> + serde::de::DeserializeOwned + Clone + Send + 'static,
{
    let ar = ApiResource::erase::<T>(&());
    let api: Api<DynamicObject> = Api::all_with(client, &ar);
    // As kube-proxy: Services that name another proxy, and headless ones,
    // are not watched (nor their slices).
    let config = watcher::Config::default().labels("!service.kubernetes.io/service-proxy-name,!service.kubernetes.io/headless");
    let mut stream = crate::kubeapi::backed_off(watcher::watcher(api, config)).boxed();
    let mut fresh: Option<BTreeMap<(String, String), T>> = None;
    let mut logged: HashMap<(String, String), String> = HashMap::new();
    let mut decode_logged = |obj: &DynamicObject| -> Option<T> {
        match decode::<T>(obj, kind) {
            Ok(t) => {
                logged.remove(&key_of(obj));
                Some(t)
            }
            Err(e) => {
                if logged.get(&key_of(obj)) != Some(&e) {
                    tracing::error!("skipping {e}");
                    logged.insert(key_of(obj), e);
                }
                None
            }
        }
    };
    let mut outage = crate::kubeapi::Outage::default();
    let what = format!("the {kind} watch");
    while let Some(ev) = stream.next().await {
        if crate::kubeapi::answered(&ev) {
            outage.works(&what);
        }
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                outage.failed(&what, &e);
                continue;
            }
        };
        let mut o = objects.lock().unwrap_or_else(|e| e.into_inner());
        match ev {
            watcher::Event::Init => fresh = Some(BTreeMap::new()),
            watcher::Event::InitApply(obj) => {
                if let (Some(f), Some(t)) = (fresh.as_mut(), decode_logged(&obj)) {
                    f.insert(key_of(&obj), t);
                }
            }
            watcher::Event::InitDone => {
                let (map, listed) = pick(&mut o);
                if let Some(f) = fresh.take() {
                    *map = f;
                }
                *listed = true;
                counter(&metrics).fetch_add(1, Ordering::Relaxed);
                changed.notify_one();
            }
            watcher::Event::Apply(obj) => {
                let (map, _) = pick(&mut o);
                match decode_logged(&obj) {
                    Some(t) => map.insert(key_of(&obj), t),
                    None => map.remove(&key_of(&obj)),
                };
                counter(&metrics).fetch_add(1, Ordering::Relaxed);
                changed.notify_one();
            }
            watcher::Event::Delete(obj) => {
                let (map, _) = pick(&mut o);
                map.remove(&key_of(&obj));
                counter(&metrics).fetch_add(1, Ordering::Relaxed);
                changed.notify_one();
            }
        }
    }
}

/// Serves kube-proxy's health endpoints.
async fn serve_health(addr: SocketAddr, health: Arc<Health>, timeout: Duration, node_name: String) {
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

async fn serve_metrics(addr: SocketAddr, metrics: Arc<Metrics>, mode: Mode) {
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
struct HealthCheckPort {
    state: Arc<Mutex<(String, String, usize, bool)>>,
    task: tokio::task::JoinHandle<()>,
}

fn start_health_check_port(port: u16, state: Arc<Mutex<(String, String, usize, bool)>>) -> tokio::task::JoinHandle<()> {
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
        let addr = SocketAddr::from(([0, 0, 0, 0], port));
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                let _ = axum::serve(l, app).await;
            }
            Err(e) => tracing::error!(port, error = %e, "cannot serve a health-check node port"),
        }
    })
}

fn update_health_check_ports(ports: &mut BTreeMap<u16, HealthCheckPort>, state: &ProxyState, healthy: bool) {
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

/// Runs the proxy until the process ends.
/// Runs the proxy; `first_sync` hears once the first complete set of rules
/// has been applied (printed, in a dry run).
pub async fn run(
    client: kube::Client,
    s: ProxySettings,
    mut first_sync: Option<tokio::sync::oneshot::Sender<()>>,
    beat: crate::watchdog::Beat,
) {
    let health = Arc::new(Health::default());
    if s.mode != Mode::None
        && let Some(addr) = s.healthz.filter(|_| !s.dry_run)
    {
        tokio::spawn(serve_health(addr, health.clone(), 2 * s.sync_period, s.node_name.clone()));
    }
    let mut backend = match s.mode {
        Mode::Iptables => Backend::Iptables(iptables::Iptables::new(s.dry_run)),
        Mode::Nftables => Backend::Nftables(nftables::Nftables::new(s.dry_run)),
        Mode::Ipvs => {
            // No silent fallback to another mode: until IPVS opens, the
            // proxy programs nothing, /healthz fails and the log says why;
            // it tries again every syncPeriod (the module may be loaded
            // later) and its loop keeps beating meanwhile, so the watchdog
            // does not restart the whole node agent over it.
            let mut logged = false;
            loop {
                beat.beat();
                let opened = tokio::task::spawn_blocking({
                    let (settings, dry_run) = (s.ipvs.clone(), s.dry_run);
                    move || ipvs::Ipvs::new(settings, dry_run)
                })
                .await
                .expect("opening IPVS does not panic");
                match opened {
                    Ok(b) => break Backend::Ipvs(Box::new(b)),
                    Err(e) if !logged => {
                        tracing::error!(error = %e, retry_in = ?s.sync_period, "the Service proxy cannot run in IPVS mode");
                        logged = true;
                    }
                    Err(e) => tracing::debug!(error = %e, "IPVS still unavailable"),
                }
                tokio::time::sleep(s.sync_period).await;
            }
        }
        Mode::None => return std::future::pending().await,
    };
    tracing::info!(mode = s.mode.as_str(), cluster_cidr = ?s.ctx.cluster_cidr, dry_run = s.dry_run, "starting the Service proxy");
    let objects = Arc::new(Mutex::new(Objects::default()));
    let changed = Arc::new(Notify::new());
    let metrics = Arc::new(Metrics::default());
    tokio::spawn(follow::<Service>(
        client.clone(),
        "Service",
        objects.clone(),
        changed.clone(),
        metrics.clone(),
        |o| (&mut o.services, &mut o.services_listed),
        |m| &m.service_changes,
    ));
    let events = kube::runtime::events::Recorder::new(
        client.clone(),
        kube::runtime::events::Reporter { controller: "kube-proxy".into(), instance: Some(s.node_name.clone()) },
    );
    tokio::spawn(follow::<EndpointSlice>(
        client,
        "EndpointSlice",
        objects.clone(),
        changed.clone(),
        metrics.clone(),
        |o| (&mut o.slices, &mut o.slices_listed),
        |m| &m.endpoint_changes,
    ));
    if let Some(addr) = s.metrics.filter(|_| !s.dry_run) {
        tokio::spawn(serve_metrics(addr, metrics.clone(), s.mode));
    }

    let mut applied = ProxyState::default();
    let mut last_sync: Option<Instant> = None;
    let mut last_full: Option<Instant> = None;
    let mut last_periodic = Instant::now();
    let mut failed = false;
    let mut logged: BTreeSet<String> = BTreeSet::new();
    let mut conflicting: BTreeSet<String> = BTreeSet::new();
    let mut refusals = Refusals::default();
    let mut hc_ports: BTreeMap<u16, HealthCheckPort> = BTreeMap::new();
    let mut printed: Option<String> = None;
    let mut dirty = true;
    loop {
        beat.beat();
        // Wait for a change or the periodic sync, then respect minSyncPeriod.
        let periodic = s.sync_period.saturating_sub(last_periodic.elapsed());
        let retry = if failed { Duration::from_secs(1) } else { periodic };
        let retry = backend.recheck().map_or(retry, |r| r.min(retry));
        // An object the kernel refused is tried again when its back-off is
        // over: a sync of its own.
        let refused_due = [backend.retry_in(), refusals.retry_in()].into_iter().flatten().min();
        let retry = refused_due.map_or(retry, |r| r.max(Duration::from_millis(100)).min(retry));
        if !dirty {
            tokio::select! {
                _ = changed.notified() => {
                    dirty = true;
                    let mut p = health.pending_since.lock().unwrap_or_else(|e| e.into_inner());
                    p.get_or_insert_with(Instant::now);
                    metrics.last_queued_unix_ms.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
                }
                _ = tokio::time::sleep(retry) => {
                    if backend.retry_in().is_some_and(|r| r.is_zero()) || refusals.retry_in().is_some_and(|r| r.is_zero()) {
                        dirty = true;
                    }
                }
            }
        }
        // Woken only to look at draining servers: that, and nothing else.
        if !dirty && !failed && last_sync.is_some() && last_periodic.elapsed() < s.sync_period && backend.recheck().is_some() {
            let (b, r) = tokio::task::spawn_blocking(move || {
                let r = backend.drain();
                (backend, r)
            })
            .await
            .expect("the proxy drain does not panic");
            backend = b;
            match r {
                Ok(n) if n > 0 => tracing::debug!(deleted = n, "drained IPVS servers deleted"),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %e, "deleting drained IPVS servers failed; the next sync reads the kernel again");
                    failed = true;
                }
            }
            continue;
        }
        if let Some(t) = last_sync {
            let wait = s.min_sync_period.saturating_sub(t.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let built = {
            let o = objects.lock().unwrap_or_else(|e| e.into_inner());
            // Never program a partial view: until both lists are in, the
            // rules of a previous run stay as they are.
            (o.services_listed && o.slices_listed).then(|| {
                let (mut errors, mut conflicts) = (Vec::new(), Vec::new());
                let state = model::build_reporting(o.services.values(), o.slices.values(), &s.node_name, &mut errors, &mut conflicts);
                (state, errors, conflicts)
            })
        };
        let Some((wanted, errors, conflicts)) = built else {
            // Still waiting for the lists; the loop turns now and then all
            // the same, so the watchdog sees it is not wedged.
            tokio::select! {
                _ = changed.notified() => {}
                _ = tokio::time::sleep(s.sync_period) => {}
            }
            continue;
        };
        dirty = false;
        let messages: BTreeSet<String> = errors.iter().map(ToString::to_string).collect();
        for m in messages.difference(&logged) {
            tracing::error!("skipping {m}");
        }
        metrics.invalid_objects.store(messages.len() as u64, Ordering::Relaxed);
        logged = messages;
        // Address conflicts: one line and one event on the Service that
        // lost, when it starts; one line when it ends.
        let now_conflicting: BTreeMap<String, &model::Conflict> = conflicts.iter().map(|c| (c.to_string(), c)).collect();
        for (text, c) in &now_conflicting {
            if !conflicting.contains(text) {
                tracing::warn!("{text}");
                post_event(&events, &objects, &s, &c.loser.namespace, &c.loser.name, "AddressInUse", text.clone());
            }
        }
        for text in conflicting.iter().filter(|t| !now_conflicting.contains_key(*t)) {
            tracing::info!("no longer in conflict: {text}");
        }
        conflicting = now_conflicting.into_keys().collect();
        metrics.address_conflicts.store(conflicting.len() as u64, Ordering::Relaxed);

        // Every syncPeriod the rules are synced (the difference, nothing when
        // nothing changed). iptables rules live in shared tables that other
        // programs edit, so they are also rewritten in full every hour, as
        // kube-proxy does; nodelet's nftables table is its own.
        // IPVS's table and kube-ipvs0 are shared kernel state too: read and
        // repaired hourly, as the iptables rules are rewritten.
        let periodic_full = matches!(s.mode, Mode::Iptables | Mode::Ipvs) && last_full.is_some_and(|t| t.elapsed() >= FULL_RESYNC);
        let full = failed || last_full.is_none() || periodic_full;
        let started = Instant::now();
        let ctx = s.ctx.clone();
        // Service ports the kernel refused stay as last applied until their
        // back-off is over.
        let (state, tried, wanted) = if refusals.is_empty() {
            (wanted, BTreeSet::new(), None)
        } else {
            let mut state = wanted.clone();
            let tried = refusals.hold(&mut state, &applied);
            (state, tried, Some(wanted))
        };
        let (b, mut result, state) = tokio::task::spawn_blocking(move || {
            let r = backend.sync(&state, &ctx, full);
            (backend, r, state)
        })
        .await
        .expect("the proxy sync does not panic");
        backend = b;
        // A failed sync in iptables or nftables mode: the ports at fault are
        // held and the rest programmed at once (refusals.rs).
        let mut state = state;
        if result.is_err() && !s.dry_run && matches!(s.mode, Mode::Iptables | Mode::Nftables) {
            let ctx = s.ctx.clone();
            let last = applied.clone();
            let (b, r, st, rf) = tokio::task::spawn_blocking(move || {
                let mut rf = refusals;
                let reduced = rf.isolate(&state, &last, &mut |x: &ProxyState| backend.check(x, &ctx).unwrap_or(Ok(())));
                match reduced {
                    Some(reduced) => {
                        let r = backend.sync(&reduced, &ctx, true);
                        (backend, Some(r), reduced, rf)
                    }
                    None => (backend, None, state, rf),
                }
            })
            .await
            .expect("the proxy isolation does not panic");
            backend = b;
            refusals = rf;
            state = st;
            if let Some(r) = r {
                result = r;
            }
        }
        if result.is_ok()
            && let Some(wanted) = &wanted
        {
            refusals.applied(&tried, wanted);
        }
        last_sync = Some(Instant::now());
        let (refused_now, refusals_total) = backend.refusals();
        metrics.refused_objects.store(refused_now + refusals.len() as u64, Ordering::Relaxed);
        metrics.refusals_total.store(refusals_total + refusals.total, Ordering::Relaxed);
        for report in backend.take_reports() {
            for (ns, name) in &report.services {
                let note = format!("the kernel refused {}; other Services are programmed, this one is retried with back-off", report.message);
                post_event(&events, &objects, &s, ns, name, "FailedToProgram", note);
            }
        }
        for refusal in refusals.take_reports() {
            let note = format!("the kernel refused {}; other Services are programmed, this one is retried with back-off", refusal.message);
            post_event(&events, &objects, &s, &refusal.key.namespace, &refusal.key.name, "FailedToProgram", note);
        }
        match result {
            Ok(changed_chains) => {
                metrics.observe(started.elapsed());
                tracing::debug!(full, changed_chains, services = state.services.len(), took = ?started.elapsed(), "proxy rules synced");
                if full {
                    last_full = Some(Instant::now());
                }
                last_periodic = Instant::now();
                failed = false;
                *health.last_ok.lock().unwrap_or_else(|e| e.into_inner()) = Some(SystemTime::now());
                *health.pending_since.lock().unwrap_or_else(|e| e.into_inner()) = None;
                if s.dry_run {
                    let text = backend.render(&state, &s.ctx, &s);
                    if printed.as_ref() != Some(&text) {
                        use std::io::Write;
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "# nodelet proxy ({}) ruleset: {} service ports", s.mode.as_str(), state.services.len());
                        let _ = out.write_all(text.as_bytes());
                        let _ = out.flush();
                        printed = Some(text);
                    }
                } else {
                    let stale = conntrack::stale(&applied, &state);
                    if !stale.is_empty() {
                        tokio::task::spawn_blocking(move || conntrack::clear(&stale));
                    }
                    update_health_check_ports(&mut hc_ports, &state, true);
                }
                if let Some(tx) = first_sync.take() {
                    let _ = tx.send(());
                }
                applied = state;
            }
            Err(e) => {
                metrics.restore_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "applying the proxy rules failed; the next sync rewrites everything");
                update_health_check_ports(&mut hc_ports, &applied, false);
                failed = true;
                dirty = true;
            }
        }
    }
}

/// Posts a Warning event on a Service, beside the loop (an apiserver away
/// never holds a sync); nothing in a dry run.
fn post_event(events: &kube::runtime::events::Recorder, objects: &Mutex<Objects>, s: &ProxySettings, ns: &str, name: &str, reason: &str, note: String) {
    if s.dry_run {
        return;
    }
    let uid = {
        let o = objects.lock().unwrap_or_else(|e| e.into_inner());
        o.services.get(&(ns.to_string(), name.to_string())).and_then(|svc| svc.metadata.uid.clone())
    };
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Service".into()),
        namespace: Some(ns.to_string()),
        name: Some(name.to_string()),
        uid,
        ..Default::default()
    };
    let ev = kube::runtime::events::Event {
        type_: kube::runtime::events::EventType::Warning,
        reason: reason.into(),
        note: Some(note),
        action: "SyncProxyRules".into(),
        secondary: None,
    };
    let events = events.clone();
    tokio::spawn(async move {
        if let Err(e) = events.publish(&ev, &reference).await {
            tracing::debug!(error = %e, "posting an event failed");
        }
    });
}
