//! The proxy's loop: watches of Services and EndpointSlices, a
//! bounded-frequency sync (at most one per minSyncPeriod, at least one per
//! syncPeriod), the backend, stale UDP conntrack entries, `/healthz` and
//! `/livez` (10256), the metrics (10249) and the health-check node ports of
//! externalTrafficPolicy Local Services.

mod health;
mod watch;

pub use self::health::Metrics;
use self::health::*;
use self::watch::*;
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

use super::model::{self, Family, ProxyState};
use super::other::{self, KubeProxy};
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
    /// One per family served, IPv4 first.
    pub contexts: Vec<Context>,
    /// `nodePortAddresses` as configured (resolved into `contexts` again
    /// at each sync, as addresses come and go) and the node's IPs for its
    /// `primary` keyword.
    pub node_port_addresses: Vec<String>,
    pub node_ips: Vec<std::net::IpAddr>,
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

/// The backend of each family served (`contexts`, in the same order).
enum Backend {
    Iptables(Vec<iptables::Iptables>),
    Nftables(Vec<nftables::Nftables>),
    Ipvs(Vec<ipvs::Ipvs>),
}

impl Backend {
    fn new(mode: Mode, contexts: &[Context], dry_run: bool) -> Option<Backend> {
        match mode {
            Mode::Iptables => Some(Backend::Iptables(contexts.iter().map(|c| iptables::Iptables::new(c.family, dry_run)).collect())),
            Mode::Nftables => Some(Backend::Nftables(contexts.iter().map(|c| nftables::Nftables::new(c.family, dry_run)).collect())),
            _ => None,
        }
    }

    /// Each family's rules: every family is synced even when another fails
    /// (one family's trouble never holds the other's changes back, as
    /// kube-proxy runs a proxier per family); the first failure is returned
    /// and the next sync is full in every family.
    fn sync(&mut self, state: &ProxyState, contexts: &[Context], full: bool) -> Result<usize, ProxyError> {
        let mut changed = 0;
        let mut first: Option<ProxyError> = None;
        let mut note = |r: Result<super::SyncStats, ProxyError>, family: Family| match r {
            Ok(st) => changed += st.changed_chains,
            Err(e) => {
                if first.is_some() {
                    tracing::error!(family = family.api_name(), error = %e, "the Service rules of this family failed too");
                } else {
                    first = Some(e);
                }
            }
        };
        match self {
            Backend::Iptables(bs) => {
                for (b, ctx) in bs.iter_mut().zip(contexts) {
                    note(b.sync(state, ctx, full), ctx.family);
                }
            }
            Backend::Nftables(bs) => {
                for (b, ctx) in bs.iter_mut().zip(contexts) {
                    note(b.sync(state, ctx, full), ctx.family);
                }
            }
            Backend::Ipvs(bs) => {
                for (b, ctx) in bs.iter_mut().zip(contexts) {
                    note(b.sync(state, ctx, full), ctx.family);
                }
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }

    /// How soon the backend wants to look at the kernel again regardless of
    /// changes (IPVS: servers draining).
    fn recheck(&self) -> Option<Duration> {
        match self {
            Backend::Ipvs(bs) => bs.iter().filter_map(|b| b.recheck()).min(),
            _ => None,
        }
    }

    /// Refusals by the kernel to report as events, since the last call.
    fn take_reports(&mut self) -> Vec<ipvs::Report> {
        match self {
            Backend::Ipvs(bs) => bs.iter_mut().flat_map(|b| b.take_reports()).collect(),
            _ => Vec::new(),
        }
    }

    /// How soon an object the kernel refused is due to be tried again.
    fn retry_in(&self) -> Option<Duration> {
        match self {
            Backend::Ipvs(bs) => bs.iter().filter_map(|b| b.retry_in()).min(),
            _ => None,
        }
    }

    /// Objects the kernel refuses now, and refusals since the start.
    fn refusals(&self) -> (u64, u64) {
        match self {
            Backend::Ipvs(bs) => bs.iter().fold((0, 0), |(now, total), b| (now + b.refused_now() as u64, total + b.refusals_total)),
            _ => (0, 0),
        }
    }

    /// Whether the kernel would take the whole ruleset for `state`, asked
    /// without committing (iptables, nftables; IPVS holds its refusals
    /// per operation).
    fn check(&self, state: &ProxyState, contexts: &[Context]) -> Option<Result<(), String>> {
        let check: fn(&ProxyState, &Context) -> Result<(), ProxyError> = match self {
            Backend::Iptables(_) => iptables::check,
            Backend::Nftables(_) => nftables::check,
            Backend::Ipvs(_) => return None,
        };
        Some(contexts.iter().try_for_each(|ctx| check(state, ctx)).map_err(|e| e.to_string()))
    }

    /// That look: no replanning.
    fn drain(&mut self) -> Result<usize, ProxyError> {
        match self {
            Backend::Ipvs(bs) => {
                let mut n = 0;
                for b in bs {
                    n += b.drain()?;
                }
                Ok(n)
            }
            _ => Ok(0),
        }
    }

    /// The whole ruleset, each family's under a line that names it.
    fn render(&self, state: &ProxyState, s: &ProxySettings) -> String {
        let ipvs_text = |state: &ProxyState, ctx: &Context| ipvs::render_full_text(state, ctx, &s.ipvs);
        let render: &dyn Fn(&ProxyState, &Context) -> String = match self {
            Backend::Iptables(_) => &iptables::render_full_text,
            Backend::Nftables(_) => &nftables::render_full_text,
            Backend::Ipvs(_) => &ipvs_text,
        };
        let mut text = String::new();
        for ctx in &s.contexts {
            let tool = match self {
                Backend::Iptables(_) => ctx.family.iptables().2.to_string(),
                Backend::Nftables(_) => format!("nft -f, table {} {}", ctx.family.nft(), nftables::TABLE),
                Backend::Ipvs(_) => format!("IPVS over netlink, {}, table {} {}", ipvs::link::NAME, ctx.family.nft(), ipvs::TABLE),
            };
            text.push_str(&format!("# {} ({tool}): {} service ports\n", ctx.family, state.services.keys().filter(|k| k.family == ctx.family).count()));
            text.push_str(&render(state, ctx));
        }
        text
    }
}

/// How often iptables rules are rewritten in full.
const FULL_RESYNC: Duration = Duration::from_secs(3600);

/// Runs the proxy until the process ends.
/// Runs the proxy; `first_sync` hears once the first complete set of rules
/// has been applied (printed, in a dry run).
/// What the node role tells the proxy of kube-proxy pods on the node (the
/// agent wires it from the pod store, so the proxy knows no pods): the one
/// bound here, if any, and where to note that the proxy stands by for it
/// (its uid and the message; the pod's trail, for `nodelet explain`).
pub struct KubeProxyPods {
    pub bound: tokio::sync::watch::Receiver<Option<KubeProxy>>,
    pub note: Box<dyn Fn(&str, &str) + Send + Sync>,
}

pub async fn run(
    client: kube::Client,
    mut s: ProxySettings,
    mut first_sync: Option<tokio::sync::oneshot::Sender<()>>,
    beat: crate::watchdog::Beat,
    kube_proxy_pods: Option<KubeProxyPods>,
) {
    let (mut pods, note) = match kube_proxy_pods {
        Some(k) => (Some(k.bound), Some(k.note)),
        None => (None, None),
    };
    let health = Arc::new(Health::default());
    let mut health_server = None;
    if s.mode != Mode::None
        && let Some(addr) = s.healthz.filter(|_| !s.dry_run)
    {
        health_server = Some(tokio::spawn(serve_health(addr, health.clone(), 2 * s.sync_period, s.node_name.clone())));
    }
    let mut backend = match s.mode {
        Mode::Iptables | Mode::Nftables => Backend::new(s.mode, &s.contexts, s.dry_run).expect("iptables and nftables backends"),
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
                    let families: Vec<Family> = s.contexts.iter().map(|c| c.family).collect();
                    move || families.into_iter().map(|f| ipvs::Ipvs::new(f, settings.clone(), dry_run)).collect::<Result<Vec<_>, _>>()
                })
                .await
                .expect("opening IPVS does not panic");
                match opened {
                    Ok(bs) => break Backend::Ipvs(bs),
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
    let families: Vec<&str> = s.contexts.iter().map(|c| c.family.api_name()).collect();
    let cluster_cidrs: Vec<String> = s.contexts.iter().filter_map(|c| c.cluster_cidr.map(|n| n.to_string())).collect();
    tracing::info!(mode = s.mode.as_str(), families = ?families, cluster_cidr = ?cluster_cidrs, dry_run = s.dry_run, "starting the Service proxy");
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
        client.clone(),
        "EndpointSlice",
        objects.clone(),
        changed.clone(),
        metrics.clone(),
        |o| (&mut o.slices, &mut o.slices_listed),
        |m| &m.endpoint_changes,
    ));
    tokio::spawn(follow_zone(client, s.node_name.clone(), objects.clone(), changed.clone()));
    let mut metrics_server = s.metrics.filter(|_| !s.dry_run).map(|addr| tokio::spawn(serve_metrics(addr, metrics.clone(), s.mode)));

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
    // One proxy per node: while kube-proxy is here, nodelet's stands by
    // (other.rs). A dry run only reports it.
    let mut standing_by: Option<KubeProxy> = None;
    let mut leftovers_checked = false;
    let mut process_scan: Option<(Instant, Option<KubeProxy>)> = None;
    loop {
        beat.beat();
        let found = {
            pods.as_mut().and_then(|rx| rx.borrow_and_update().clone())
        };
        // The process table is read every 2 s while standing by, every 10 s
        // otherwise (a pod is seen at once, before it runs).
        let scan_every = if standing_by.is_some() { Duration::from_secs(2) } else { Duration::from_secs(10) };
        if found.is_none() && process_scan.as_ref().is_none_or(|(at, _)| at.elapsed() >= scan_every) {
            process_scan = Some((Instant::now(), other::running_process(std::path::Path::new("/proc"))));
        }
        let found = found.or_else(|| process_scan.as_ref().and_then(|(_, p)| p.clone()));
        match (&standing_by, found) {
            (None, Some(k)) => {
                tracing::error!("{}", other::standby_message(&k));
                if let (KubeProxy::Pod(_, uid), Some(note)) = (&k, &note) {
                    note(uid, &other::standby_message(&k));
                }
                if !s.dry_run {
                    // Its ports are kube-proxy's too (10256, 10249).
                    for server in [health_server.take(), metrics_server.take()].into_iter().flatten() {
                        server.abort();
                    }
                    if last_sync.is_some() {
                        let mode = s.mode;
                        match tokio::task::spawn_blocking(move || other::stand_down(mode)).await.expect("standing down does not panic") {
                            Ok(()) => tracing::info!(mode = s.mode.as_str(), "nodelet's Service proxy rules removed for kube-proxy"),
                            Err(e) => tracing::error!(error = %e, "removing nodelet's Service proxy rules failed"),
                        }
                    }
                    applied = ProxyState::default();
                    update_health_check_ports(&mut hc_ports, &applied, false);
                    last_full = None;
                    leftovers_checked = false;
                }
                standing_by = Some(k);
            }
            (Some(_), None) => {
                tracing::info!("kube-proxy is gone from this node: nodelet's Service proxy takes the node over");
                standing_by = None;
                dirty = true;
                if !s.dry_run {
                    if let Some(addr) = s.healthz {
                        health_server = Some(tokio::spawn(serve_health(addr, health.clone(), 2 * s.sync_period, s.node_name.clone())));
                    }
                    metrics_server = s.metrics.map(|addr| tokio::spawn(serve_metrics(addr, metrics.clone(), s.mode)));
                }
            }
            (Some(old), Some(k)) if *old != k => standing_by = Some(k),
            _ => {}
        }
        if standing_by.is_some() && !s.dry_run {
            // Looked at again when the node's pods change, and every 2 s
            // for a process.
            let pods_changed = pods_changed(&mut pods);
            tokio::select! {
                _ = pods_changed => {}
                _ = changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
            continue;
        }
        // Before the first rules (and on taking over from kube-proxy): the
        // rules of the modes not run go, as kube-proxy removes them.
        if !leftovers_checked && !s.dry_run {
            leftovers_checked = true;
            let mode = s.mode;
            for e in tokio::task::spawn_blocking(move || other::remove_leftovers(mode)).await.expect("removing leftovers does not panic") {
                tracing::warn!(error = %e, "removing another proxy mode's rules failed");
            }
        }
        // Wait for a change or the periodic sync, then respect minSyncPeriod.
        let periodic = s.sync_period.saturating_sub(last_periodic.elapsed());
        let retry = if failed { Duration::from_secs(1) } else { periodic };
        let retry = backend.recheck().map_or(retry, |r| r.min(retry));
        // An object the kernel refused is tried again when its back-off is
        // over: a sync of its own.
        let refused_due = [backend.retry_in(), refusals.retry_in()].into_iter().flatten().min();
        let retry = refused_due.map_or(retry, |r| r.max(Duration::from_millis(100)).min(retry));
        if !dirty {
            let pods_changed = pods_changed(&mut pods);
            let scan_due = process_scan.as_ref().map_or(Duration::ZERO, |(at, _)| Duration::from_secs(10).saturating_sub(at.elapsed()));
            tokio::select! {
                // A kube-proxy pod may have come: looked at before any sync;
                // a kube-proxy process, every 10 s.
                _ = pods_changed => continue,
                _ = tokio::time::sleep(scan_due), if !s.dry_run => continue,
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
                let at = model::Topology { node: &s.node_name, zone: o.zone.as_deref() };
                let state = model::build_reporting(o.services.values(), o.slices.values(), &at, &mut errors, &mut conflicts);
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
        // nodePortAddresses: the node's addresses now.
        if !s.node_port_addresses.is_empty() && !s.dry_run {
            let local = super::local_ips();
            for c in s.contexts.iter_mut() {
                let now = super::node_port_ips(&s.node_port_addresses, &s.node_ips, c.family, &local);
                if now != c.node_port_ips {
                    let shown: Vec<String> = now.iter().flatten().map(ToString::to_string).collect();
                    tracing::info!(family = c.family.api_name(), addresses = ?shown, "node ports now served on these nodePortAddresses");
                    c.node_port_ips = now;
                }
            }
        }
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
        let ctx = s.contexts.clone();
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
            let ctx = s.contexts.clone();
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
                    let text = backend.render(&state, &s);
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

/// Resolves when the kube-proxy pod bound here changes; never when there is
/// no such signal (or it has ended).
async fn pods_changed(pods: &mut Option<tokio::sync::watch::Receiver<Option<KubeProxy>>>) {
    if let Some(rx) = pods.as_mut()
        && rx.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
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
