//! The local status endpoint (`healthzBindAddress:healthzPort`, by default
//! 127.0.0.1:10248): `/healthz` as kubelet serves it, and `/pods` with each
//! pod's metadata and status for `nodelet pods`. Specs are not served: they
//! may carry values a local user should not read.

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
}

async fn healthz(State(api): State<LocalApi>) -> impl IntoResponse {
    match *api.relisted.borrow() {
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
    Json(crate::explain::explain(record, api.trails.get(&uid), api.pulls.in_flight(), log_directory)).into_response()
}

pub fn router(api: LocalApi) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/pods", get(pods))
        .route("/pulls", get(pulls))
        .route("/explain/{namespace}/{name}", get(explain))
        .with_state(api)
}

/// Binds first, so a taken port is an error at start rather than later.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

pub async fn serve(listener: tokio::net::TcpListener, api: LocalApi) {
    if let Err(e) = axum::serve(listener, router(api)).await {
        tracing::error!(error = %e, "the local status endpoint stopped");
    }
}
