//! The node's local endpoints.
//!
//! - The health port (`healthzBindAddress:healthzPort`, by default
//!   127.0.0.1:10248) serves health only, as kubelet's: `/healthz`,
//!   `/healthz/ping` and `/healthz/syncloop`. Anyone who can reach it may call
//!   it, so it says nothing about pods.
//! - The status socket (`<root-dir>/nodelet/status.sock`, in a directory only
//!   root may enter) serves what `nodelet pods` and `nodelet explain` show:
//!   `/pods` (each pod's metadata and status, which include its annotations),
//!   `/pulls` and `/explain/{namespace}/{name}`. Specs are not served.

pub mod auth;
pub mod cadvisor;
pub mod exec_reaper;
pub mod logs;
pub mod node_api;
pub mod node_logs;
pub mod stats;
pub mod stream;
pub mod tls;
pub mod volume_stats;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;
use tokio::sync::watch;

use crate::pods::store::StatusStore;

/// kubelet reports unhealthy when the relist has not run for this long.
pub const RELIST_STALE: Duration = Duration::from_secs(180);

#[derive(Clone)]
pub struct LocalApi {
    pub statuses: StatusStore,
    /// When the runtime was last relisted successfully.
    pub relisted: watch::Receiver<Option<Instant>>,
    /// Each pod's decision trail, for `/explain`.
    pub trails: std::sync::Arc<crate::explain::Trails>,
    /// Pulls in flight, for `/pulls` and `/explain`.
    pub pulls: std::sync::Arc<crate::pulls::Puller>,
    /// Where pods' logs are (`podLogsDir`).
    pub pod_logs_dir: std::path::PathBuf,
    /// The resource managers, for `/explain`: what each pod was given.
    pub managers: Option<(crate::cpus::CpuManager, crate::memory::MemoryManager, crate::devices::Devices, crate::dra::Dra)>,
    /// kubelet's metrics, for `/metrics` (as the node API serves them, to
    /// root on the node without a token).
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
}

async fn healthz(State(relisted): State<watch::Receiver<Option<Instant>>>) -> impl IntoResponse {
    match *relisted.borrow() {
        Some(t) if t.elapsed() < RELIST_STALE => (StatusCode::OK, "ok".to_string()),
        Some(t) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("pleg is not healthy: the runtime was last relisted {}s ago", t.elapsed().as_secs()),
        ),
        None => (StatusCode::INTERNAL_SERVER_ERROR, "pleg has yet to be successful".to_string()),
    }
}

async fn pods(State(api): State<LocalApi>) -> impl IntoResponse {
    let items: Vec<_> = api
        .statuses
        .snapshot()
        .values()
        .map(|r| {
            let spec = r.pod.spec.as_ref();
            json!({
                "metadata": {
                    "name": r.pod.metadata.name,
                    "namespace": r.pod.metadata.namespace,
                    "uid": r.pod.metadata.uid,
                    "annotations": r.pod.metadata.annotations,
                },
                "spec": {
                    "nodeName": spec.and_then(|s| s.node_name.clone()),
                    "restartPolicy": spec.and_then(|s| s.restart_policy.clone()),
                },
                "status": r.status,
            })
        })
        .collect();
    Json(json!({"kind": "PodList", "apiVersion": "v1", "items": items}))
}

async fn pulls(State(api): State<LocalApi>) -> impl IntoResponse {
    Json(api.pulls.in_flight())
}

/// `/explain/{namespace}/{name}`; a static pod may be named without its
/// node suffix, and `-` as namespace means any.
async fn explain(State(api): State<LocalApi>, axum::extract::Path((namespace, name)): axum::extract::Path<(String, String)>) -> axum::response::Response {
    let all = api.statuses.snapshot();
    let matches = |r: &&std::sync::Arc<crate::pods::store::PodRecord>, exact: bool| {
        let m = &r.pod.metadata;
        let ns_ok = namespace == "-" || m.namespace.as_deref() == Some(namespace.as_str());
        let n = m.name.as_deref().unwrap_or_default();
        ns_ok && if exact { n == name } else { n.strip_prefix(name.as_str()).is_some_and(|rest| rest.starts_with('-')) }
    };
    let found = all.values().find(|r| matches(r, true)).or_else(|| {
        let mut it = all.values().filter(|r| matches(r, false));
        let first = it.next();
        if it.next().is_some() { None } else { first }
    });
    let Some(record) = found else {
        return (StatusCode::NOT_FOUND, format!("no pod {namespace}/{name} on this node\n")).into_response();
    };
    let m = &record.pod.metadata;
    let (ns, n, uid) = (m.namespace.clone().unwrap_or_default(), m.name.clone().unwrap_or_default(), m.uid.clone().unwrap_or_default());
    let log_directory = api.pod_logs_dir.join(format!("{ns}_{n}_{uid}")).display().to_string();
    let mut e = crate::explain::explain(record, api.trails.get(&uid), api.pulls.in_flight(), log_directory);
    if let Some((cpus, memory, devices, dra)) = &api.managers {
        e.resources = crate::explain::resources(&record.pod, cpus, memory, devices, dra);
    }
    Json(e).into_response()
}

/// The health port: health and nothing else.
pub fn health_router(relisted: watch::Receiver<Option<Instant>>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/healthz/syncloop", get(healthz))
        .route("/healthz/ping", get(|| async { "ok" }))
        .with_state(relisted)
}

async fn metrics(State(api): State<LocalApi>) -> impl IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], api.metrics.render())
}

/// The status socket: health, pods, pulls, explanations and metrics.
pub fn local_router(api: LocalApi) -> Router {
    Router::new()
        .route("/pods", get(pods))
        .route("/metrics", get(metrics))
        .route("/pulls", get(pulls))
        .route("/explain/{namespace}/{name}", get(explain))
        .with_state(api.clone())
        .merge(health_router(api.relisted))
}

/// Binds first, so a taken port is an error at start rather than later.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

pub async fn serve(listener: tokio::net::TcpListener, relisted: watch::Receiver<Option<Instant>>) {
    if let Err(e) = axum::serve(listener, health_router(relisted)).await {
        tracing::error!(error = %e, "the health endpoint stopped");
    }
}

/// Where the status socket is under `root_dir`.
pub fn status_socket(root_dir: &Path) -> PathBuf {
    root_dir.join("nodelet").join("status.sock")
}

/// Binds the status socket: its directory is made (or made again) root's
/// alone, 0700, before the socket exists, so no other user can connect even
/// in the moment before the socket's own mode is tightened; a directory
/// that is a symbolic link, or a socket path held by anything but a stale
/// socket, is an error naming the path.
pub fn bind_local(socket: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    let named = |what: &str, p: &Path, e: std::io::Error| std::io::Error::new(e.kind(), format!("{what} {}: {e}", p.display()));
    let dir = socket.parent().ok_or_else(|| std::io::Error::other(format!("{} has no directory", socket.display())))?;
    match std::fs::DirBuilder::new().recursive(false).mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir.parent().unwrap_or(dir)).map_err(|e| named("cannot create", dir, e))?;
            std::fs::DirBuilder::new().mode(0o700).create(dir).map_err(|e| named("cannot create", dir, e))?;
        }
        Err(e) => return Err(named("cannot create", dir, e)),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| named("cannot read", dir, e))?;
    if !meta.file_type().is_dir() {
        return Err(std::io::Error::other(format!("{} is not a directory (a symbolic link or a file is in its place)", dir.display())));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| named("cannot set the mode of", dir, e))?;
    match std::fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(socket).map_err(|e| named("cannot remove the stale socket", socket, e))?,
        Ok(_) => return Err(std::io::Error::other(format!("{} exists and is not a socket", socket.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(named("cannot read", socket, e)),
    }
    let listener = tokio::net::UnixListener::bind(socket).map_err(|e| named("cannot bind", socket, e))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600)).map_err(|e| named("cannot set the mode of", socket, e))?;
    Ok(listener)
}

pub async fn serve_local(listener: tokio::net::UnixListener, api: LocalApi) {
    if let Err(e) = axum::serve(listener, local_router(api)).await {
        tracing::error!(error = %e, "the status socket stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn the_status_socket_is_roots_alone_and_never_follows_a_link() {
        let t = tempfile::tempdir().unwrap();
        let sock = status_socket(t.path());
        let _l = bind_local(&sock).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(sock.parent().unwrap()), 0o700);
        assert_eq!(mode(&sock), 0o600);
        drop(_l);
        // A stale socket is replaced; a loose directory tightened.
        std::fs::set_permissions(sock.parent().unwrap(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let _l = bind_local(&sock).unwrap();
        assert_eq!(mode(sock.parent().unwrap()), 0o700);
        drop(_l);
        // A file in the socket's place is not removed.
        std::fs::remove_file(&sock).unwrap();
        std::fs::write(&sock, "keep").unwrap();
        let e = bind_local(&sock).unwrap_err().to_string();
        assert!(e.contains("is not a socket") && e.contains("status.sock"), "{e}");
        assert_eq!(std::fs::read_to_string(&sock).unwrap(), "keep");
        // A link in the directory's place is refused, its target untouched.
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o755)).unwrap();
        let other = t.path().join("other");
        std::os::unix::fs::symlink(&elsewhere, &other).unwrap();
        let e = bind_local(&other.join("status.sock")).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        assert_eq!(mode(&elsewhere), 0o755);
        assert!(std::fs::read_dir(&elsewhere).unwrap().next().is_none());
    }
}
